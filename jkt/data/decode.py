"""One image file's bytes -> an 8-bit RGB ``(S, S, 3)`` array, faithful to every mode and
bit depth Pillow opens (:func:`decode`), or refused with the reason.

16-bit, 32-bit and float grey are scaled by their bit depth, transparency is composited
over white, CMYK and YCbCr are converted with their exact formulas, the EXIF orientation
is applied; what cannot be decoded faithfully (LAB, HSV, out-of-range floats, ...) raises
``ValueError`` naming the mode, so that the folder loader refuses the file by name.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

# ---------------------------------------------------------------------------- decoding

# EXIF orientation (tag 0x0112) -> the transpose that shows the image upright.
_EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_ALPHA_MODES = ("LA", "PA", "RGBA")  # straight (not premultiplied) alpha
_PREMULTIPLIED_MODES = ("La", "RGBa")
_CONVERTIBLE_MODES = ("1", "L", "P", "RGB", "RGBX", "CMYK")  # Image.convert("RGB") is exact
_HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


class _Refused(ValueError):
    """An image Pillow opens but whose pixels cannot be decoded faithfully."""


def _rawmode(img: Image.Image) -> str:
    """Pillow's raw mode of the file's first tile (e.g. ``"L;2"``, ``"RGB;16B"``), or ``""``;
    read before ``load``/``draft``, which clear or change the tiles."""
    args = img.tile[0].args if img.tile else None
    arg = args[0] if isinstance(args, tuple) and args else args
    return arg if isinstance(arg, str) else ""


def _over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 colours ``rgb`` with straight ``(H, W)`` uint8 ``alpha`` composited
    over white, rounded to nearest: ``(c * a + 255 * (255 - a)) / 255``."""
    a = alpha.astype(np.uint32)[..., None]
    return ((rgb.astype(np.uint32) * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


def _ycbcr_to_rgb(ycc: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 full-range (JFIF, BT.601) YCbCr -> ``(H, W, 3)`` uint8 RGB."""
    y, cb, cr = (ycc[..., i].astype(np.float64) for i in range(3))
    cb, cr = cb - 128.0, cr - 128.0
    rgb = np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], -1)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _tiff_tag(img: Image.Image, tag: int, default: int) -> int:
    """The first value of a TIFF tag (BitsPerSample 258, SampleFormat 339, ...), or
    ``default`` (also for other formats)."""
    value = getattr(img, "tag_v2", {}).get(tag, default) if img.format == "TIFF" else default
    return int(value[0] if isinstance(value, tuple) else value)


def _white_level(img: Image.Image, values: np.ndarray) -> tuple[np.ndarray, float]:
    """``(values, white)`` of a one-band high-depth image: the samples (an unsigned 32-bit
    TIFF's reinterpreted as such) and the value that means white (the top of the bit depth;
    1.0 for floats). Raises :class:`_Refused` where that value is not known."""
    mode = img.mode
    if mode == "F":
        if not np.isfinite(values).all():
            raise _Refused("image mode 'F' (floating point) with NaN or infinite values")
        if values.min() < 0 or values.max() > 1:
            raise _Refused(f"image mode 'F' (floating point) with values from {values.min():g} "
                           f"to {values.max():g}, outside [0, 1]: its white level is unknown")
        return values, 1.0
    if img.format == "TIFF":
        bits, signed = _tiff_tag(img, 258, 16), _tiff_tag(img, 339, 1) == 2
        if mode == "I" and bits == 32 and not signed:
            values = values.view(np.uint32)  # Pillow reads them as int32
    elif mode == "I" and img.format != "PPM":  # Pillow scales PGM to 16 bits
        raise _Refused(f"image mode 'I' (32-bit integer) from a {img.format} file: its bit "
                       "depth, and so its white level, is unknown")
    else:
        bits, signed = 16, False
    if signed and values.size and values.min() < 0:
        raise _Refused(f"image mode {mode!r} (signed {bits}-bit) with negative values "
                       f"(down to {values.min()}): its black level is unknown")
    return values, float(2 ** (bits - signed) - 1)


def _high_depth_gray(img: Image.Image) -> Image.Image:
    """RGB of a one-band 16-bit, 32-bit or float image: each sample scaled by its white level
    to [0, 255] and rounded (``round(v / 65535 * 255)`` for 16 bits); TIFF WhiteIsZero
    inverted; a PNG transparent grey (tRNS) composited over white."""
    raw = np.asarray(img)
    values, white = _white_level(img, raw)
    levels = values.astype(np.float64)
    if _tiff_tag(img, 262, 1) == 0:  # PhotometricInterpretation WhiteIsZero
        levels = white - levels
    gray = np.rint(levels * (255.0 / white)).astype(np.uint8)
    key = img.info.get("transparency")
    if isinstance(key, int):
        gray[raw == key] = 255
    return Image.fromarray(np.repeat(gray[..., None], 3, axis=-1))


def _keyed(img: Image.Image, rgb: Image.Image, rawmode: str) -> Image.Image:
    """``rgb`` with the pixels of ``img``'s transparent colour (a PNG tRNS grey or RGB value,
    in the file's own bit depth) made white."""
    key = img.info["transparency"]
    if img.mode == "RGB":
        if rawmode.startswith("RGB;16"):
            raise _Refused("a 16-bit RGB PNG with a transparent colour (tRNS): Pillow keeps "
                           "8 bits per sample, too few to find that colour")
        mask = (np.asarray(rgb) == np.asarray(key)).all(axis=-1)
    else:  # "1" (key 0 or 255) or "L" (a 1-, 2- or 4-bit PNG's key is scaled like its pixels)
        bits = {"L;2": 2, "L;4": 4}.get(rawmode, 8)
        mask = np.asarray(img.convert("L")) == key * 255 // (2**bits - 1)
    out = np.array(rgb)
    out[mask] = 255
    return Image.fromarray(out)


def _to_rgb(img: Image.Image, rawmode: str) -> Image.Image:
    """``img`` as an 8-bit RGB image of the same size, per mode (see :func:`_decode`).

    Raises :class:`_Refused` (a ``ValueError`` naming the mode) for what cannot be decoded
    faithfully."""
    mode = img.mode
    if mode in _HIGH_DEPTH_MODES:
        return _high_depth_gray(img)
    if mode in _PREMULTIPLIED_MODES:  # colour already times alpha: c + (255 - a) over white
        arr = np.asarray(img).astype(np.int16)
        out = np.clip(arr[..., :-1] + (255 - arr[..., -1:]), 0, 255).astype(np.uint8)
        return Image.fromarray(np.broadcast_to(out, (*out.shape[:2], 3)).copy())
    palette_alpha = mode == "P" and (
        "transparency" in img.info or (img.palette is not None and img.palette.mode == "RGBA"))
    if mode in _ALPHA_MODES or palette_alpha:
        rgba = np.asarray(img.convert("RGBA"))
        return Image.fromarray(_over_white(rgba[..., :3], rgba[..., 3]))
    if mode == "YCbCr":
        return Image.fromarray(_ycbcr_to_rgb(np.asarray(img)))
    if mode not in _CONVERTIBLE_MODES:
        raise _Refused(f"image mode {mode!r} is not supported (it needs colour management or "
                       "has no defined RGB meaning)")
    rgb = img if mode == "RGB" else img.convert("RGB")
    if "transparency" in img.info and mode in ("1", "L", "RGB"):
        rgb = _keyed(img, rgb, rawmode)
    return rgb


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation (1-8) of ``img``; 1 (as stored) when absent or unreadable."""
    try:
        return int(img.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - a damaged EXIF block does not spoil the pixels
        return 1


def decode(data: bytes, image_size: int, resize: str = "stretch") -> np.ndarray | None:
    """``(image_size, image_size, 3)`` uint8 pixels of an encoded image, or ``None`` when it
    is not a readable image.

    ``resize="stretch"`` resizes the whole image to the square (aspect ratio not kept);
    ``"crop"`` resizes the shorter side to ``image_size`` and keeps the central square
    (bilinear, antialiased; after the steps below).

    Pixels, per Pillow mode:

    * ``1`` (bilevel) -> 0/255; ``L``, ``P`` (1- to 8-bit), ``RGB``, ``RGBX`` as stored;
      ``CMYK`` by ``R = 255 (1 - C/255)(1 - K/255)`` (likewise G, B); ``YCbCr`` by the JFIF
      (full-range BT.601) formulas, rounded. No colour management: embedded ICC profiles are
      ignored.
    * 16-bit, 32-bit integer and float grey (``I;16*``, ``I``, ``F``): scaled by the white
      level of the bit depth and rounded, ``round(v * 255 / (2**bits - 1))`` (TIFF: its
      BitsPerSample, e.g. 12; signed TIFF samples: ``2**(bits - 1) - 1``; PGM: 65535 as
      Pillow rescales it); floats must lie in [0, 1] (``round(255 v)``). TIFF WhiteIsZero
      is inverted.
    * 16-bit RGB(A), grey+alpha, CMYK and TIFF palettes: Pillow keeps only the high byte of
      each sample, which is at most 1 below the rounded value.
    * Transparency (an alpha channel, a palette's tRNS/GIF transparent index, a PNG's
      transparent grey or RGB colour) is composited over white:
      ``round((c * a + 255 * (255 - a)) / 255)``; premultiplied (TIFF associated) alpha as
      ``c + 255 - a`` (Pillow un-premultiplies RGB with such alpha as it reads it, which can
      be 1 off).
    * The EXIF orientation (JPEG, PNG, WebP, TIFF) is applied: pixels come out as an image
      viewer shows them.

    Raises:
      ValueError: Pillow opens the image but it cannot be decoded faithfully; the message
        names the mode: ``LAB``, ``HSV`` and any other mode not above, floats outside
        [0, 1], signed samples below zero, ``I`` from a format whose bit depth is not known,
        a 16-bit RGB PNG with a transparent colour.
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            rawmode = _rawmode(img)
            img.draft("RGB", (image_size, image_size))  # JPEG: cheap DCT downscale first
            rgb = _to_rgb(img, rawmode)
            transpose = _EXIF_TRANSPOSE.get(_orientation(img))
            if transpose is not None:
                rgb = rgb.transpose(transpose)
            return _resized(rgb, image_size, resize)
    except _Refused:
        raise
    except Exception:  # noqa: BLE001 - any decoder failure means "unreadable"
        return None


def _resized(img: Image.Image, image_size: int, resize: str) -> np.ndarray:
    """``(image_size, image_size, 3)`` uint8 pixels of an RGB image, per ``resize``."""
    if resize == "crop" and img.size[0] != img.size[1]:
        w, h = img.size
        side = min(w, h)
        box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
        img = img.resize((image_size, image_size), Image.Resampling.BILINEAR, box=box)
    if img.size != (image_size, image_size):
        img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(img, np.uint8)


def resized_array(image: np.ndarray, image_size: int, resize: str = "stretch") -> np.ndarray:
    """An 8-bit RGB ``(H, W, 3)`` array as an ``(image_size, image_size, 3)`` square, resized
    as :func:`decode` resizes a file's pixels."""
    return _resized(Image.fromarray(np.asarray(image, np.uint8)), image_size, resize)


__all__ = ["decode", "resized_array"]
