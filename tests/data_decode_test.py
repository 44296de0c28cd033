"""Image decoding of folder datasets (``jkt.data.decode.decode``), per Pillow mode and bit
depth, against float references computed from the generated arrays.

Every image is square and decoded at its own size, so no resize blurs the comparison:
lossless formats must match exactly, JPEG within a small tolerance. Files Pillow cannot
write (16-bit RGB PNGs, 2-bit grey with a transparent grey, 12-bit and unsigned 32-bit
TIFFs, premultiplied alpha) are built here byte by byte.
"""

import io
import struct
import zlib

import chex
import numpy as np
import pytest
from PIL import Image, features

from jkt.data import decode as decode_lib
from jkt.data import folder as folder_lib

N = 6  # side of the test images
RNG = np.random.default_rng(0)
WEBP = pytest.mark.skipif(not features.check("webp"), reason="Pillow built without WebP")


# ---------------------------------------------------------------------------- helpers


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _decode(data: bytes, side: int = N) -> np.ndarray:
    """``(side, side, 3)`` uint8: decoded at the native size (no resize)."""
    out = decode_lib.decode(data, side)
    assert out is not None, "decoded as unreadable"
    assert out.shape == (side, side, 3) and out.dtype == np.uint8
    return out


def _image(mode: str, arr: np.ndarray) -> Image.Image:
    """A Pillow image of ``mode`` holding the bytes of uint8 ``arr`` ``(H, W[, C])``."""
    return Image.frombytes(mode, (arr.shape[1], arr.shape[0]), arr.tobytes())


def _gray3(gray) -> np.ndarray:
    """``(H, W)`` reference levels -> ``(H, W, 3)`` float."""
    return np.repeat(np.asarray(gray, np.float64)[..., None], 3, axis=-1)


def _scaled(values, white: float) -> np.ndarray:
    """Float reference of a grey level: ``round(v / white * 255)``."""
    return np.round(np.asarray(values, np.float64) / white * 255.0)


def _over_white(rgb, alpha) -> np.ndarray:
    """Float reference of straight alpha over white: ``round(c a + 255 (1 - a))``, a in
    [0, 1]."""
    a = np.asarray(alpha, np.float64)[..., None] / 255.0
    return np.round(np.asarray(rgb, np.float64) * a + 255.0 * (1.0 - a))


def _assert_close(out: np.ndarray, ref: np.ndarray, atol: float = 0) -> None:
    assert out.shape == ref.shape
    err = np.abs(out.astype(np.float64) - ref)
    assert err.max() <= atol, f"max error {err.max()} > {atol}\n{out[..., 0]}\n{ref[..., 0]}"


def _smooth_rgb(channels: int = 3, side: int = 16) -> np.ndarray:
    """``(side, side, channels)`` uint8 gentle gradients (JPEG keeps them within a few
    levels)."""
    y, x = np.mgrid[0:side, 0:side] / (side - 1)
    planes = [40 + 170 * x, 60 + 150 * y, 50 + 100 * (x + y) / 2, 30 + 60 * (1 - x)]
    return np.round(np.stack(planes[:channels], -1)).astype(np.uint8)


def _png(arr: np.ndarray, color_type: int, bits: int, trns: tuple[int, ...] = ()) -> bytes:
    """A PNG built byte by byte: ``arr`` ``(H, W[, C])`` samples of ``bits`` each (1, 2, 4
    packed; 16 big-endian), filter 0, optional tRNS values."""
    h, w = arr.shape[:2]

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))

    if bits < 8:
        per = 8 // bits
        rows = []
        for row in arr.reshape(h, w).astype(np.uint8):
            padded = np.zeros(-(-w // per) * per, np.uint8)
            padded[:w] = row
            packed = np.zeros(len(padded) // per, np.uint8)
            for i in range(per):
                packed |= (padded[i::per] << (8 - bits * (i + 1))).astype(np.uint8)
            rows.append(packed.tobytes())
    else:
        dtype = ">u2" if bits == 16 else "u1"
        rows = [row.astype(dtype).tobytes() for row in arr.reshape(h, w, -1)]
    raw = b"".join(b"\0" + row for row in rows)
    out = b"\x89PNG\r\n\x1a\n" + chunk(
        b"IHDR", struct.pack(">IIBBBBB", w, h, bits, color_type, 0, 0, 0))
    if trns:
        out += chunk(b"tRNS", struct.pack(f">{len(trns)}H", *trns))
    return out + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _patch_tiff(data: bytes, tag: int, old: int, new: int) -> bytes:
    """A little-endian TIFF with the one-SHORT entry ``tag`` changed from ``old`` to
    ``new``."""
    entry = struct.pack("<HHIH", tag, 3, 1, old)
    assert data.count(entry) == 1, f"TIFF tag {tag} = {old} not found once"
    return data.replace(entry, struct.pack("<HHIH", tag, 3, 1, new))


# ---------------------------------------------------------------------------- 8-bit modes


def _palette_image(bits: int = 8) -> tuple[Image.Image, np.ndarray]:
    """A ``P`` image with ``2**bits`` (at most 256) random colours, and its ``(N, N, 3)``
    reference pixels."""
    colours = min(2**bits, 256)
    palette = RNG.integers(0, 256, (colours, 3), dtype=np.uint8)
    idx = RNG.integers(0, colours, (N, N), dtype=np.uint8)
    idx.flat[:colours] = np.arange(colours)[: idx.size]  # low bit depths: every colour used
    img = _image("P", idx)
    img.putpalette(palette.tobytes())
    return img, palette[idx].astype(np.float64)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "BMP", "GIF"])
def test_bilevel_is_0_or_255(fmt):
    bits = RNG.integers(0, 2, (N, N)).astype(bool)
    img = _image("L", bits.astype(np.uint8) * 255).convert("1")
    _assert_close(_decode(_encode(img, fmt)), _gray3(bits * 255.0))


@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "BMP", "GIF",
                                 pytest.param("WEBP", marks=WEBP)])
def test_grey_8bit(fmt):
    gray = RNG.integers(0, 256, (N, N), dtype=np.uint8)
    kw = {"lossless": True} if fmt == "WEBP" else {}
    _assert_close(_decode(_encode(_image("L", gray), fmt, **kw)), _gray3(gray))


@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "BMP", pytest.param("WEBP", marks=WEBP)])
def test_rgb_8bit(fmt):
    rgb = RNG.integers(0, 256, (N, N, 3), dtype=np.uint8)
    kw = {"lossless": True} if fmt == "WEBP" else {}
    _assert_close(_decode(_encode(_image("RGB", rgb), fmt, **kw)), rgb.astype(np.float64))


@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "BMP", "GIF"])
def test_palette_8bit(fmt):
    img, ref = _palette_image()
    _assert_close(_decode(_encode(img, fmt)), ref)


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_palette_low_bit_png(bits):
    img, ref = _palette_image(bits)
    data = _encode(img, "PNG", bits=bits)
    assert data[24] == bits  # IHDR bit depth: really a 1/2/4-bit file
    _assert_close(_decode(data), ref)


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_grey_low_bit_png(bits):
    levels = RNG.integers(0, 2**bits, (N, N), dtype=np.uint8)
    levels.flat[0], levels.flat[1] = 0, 2**bits - 1
    _assert_close(_decode(_png(levels, 0, bits)), _gray3(_scaled(levels, 2**bits - 1)))


# ---------------------------------------------------------------------------- high depth


def _u16() -> np.ndarray:
    """``(N, N)`` uint16 covering both ends and the 8-bit-clipping range (255, 256)."""
    v = RNG.integers(0, 65536, (N, N)).astype(np.uint16)
    v.flat[:6] = [0, 1, 255, 256, 32768, 65535]
    return v


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_grey_16bit_scaled_not_clipped(fmt):
    v = _u16()
    data = _encode(Image.fromarray(v), fmt)
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    out = _decode(data)
    _assert_close(out, _gray3(_scaled(v, 65535)))
    assert out[0, 3, 0] == 1  # 256 / 65535 * 255 = 0.996: not the clipped 255


def test_grey_16bit_big_endian_tiff_and_pgm():
    v = _u16()
    tiff = _encode(Image.fromarray(v.astype(">u2")), "TIFF")
    pgm = b"P5 %d %d 65535\n" % (N, N) + v.astype(">u2").tobytes()
    assert Image.open(io.BytesIO(tiff)).mode == "I;16B"
    for data in (tiff, pgm):
        _assert_close(_decode(data), _gray3(_scaled(v, 65535)))


def test_grey_16bit_white_is_zero_tiff_inverted():
    v = _u16()
    data = _encode(Image.fromarray(v), "TIFF", tiffinfo={262: 0})
    _assert_close(_decode(data), _gray3(_scaled(65535 - v.astype(np.int64), 65535)))


def test_grey_12bit_tiff_scaled_by_its_bit_depth():
    v = RNG.integers(0, 4096, (N, N)).astype(np.uint16)
    v.flat[:2] = [0, 4095]
    data = _patch_tiff(_encode(Image.fromarray(v), "TIFF"), 258, 16, 12)
    packed = bytearray()  # two 12-bit samples in three bytes, most significant first
    for a, b in v.reshape(-1, 2).tolist():
        packed += bytes([a >> 4, ((a & 15) << 4) | (b >> 8), b & 255])
    offset = Image.open(io.BytesIO(data)).tag_v2[273][0]
    data = data[:offset] + bytes(packed) + data[offset + len(packed):]
    _assert_close(_decode(data), _gray3(_scaled(v, 4095)))


def test_signed_16bit_tiff():
    v = RNG.integers(0, 32768, (N, N)).astype(np.uint16)
    v.flat[:2] = [0, 32767]
    data = _encode(Image.fromarray(v), "TIFF", tiffinfo={339: 2})
    assert Image.open(io.BytesIO(data)).mode == "I"
    _assert_close(_decode(data), _gray3(_scaled(v, 32767)))


def test_int32_tiff_signed_and_unsigned():
    v = RNG.integers(0, 2**31, (N, N)).astype(np.int32)
    v.flat[:2] = [0, 2**31 - 1]
    data = _encode(Image.fromarray(v), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I"
    _assert_close(_decode(data), _gray3(_scaled(v, 2**31 - 1)))
    u = RNG.integers(0, 2**32, (N, N), dtype=np.uint64).astype(np.uint32)
    u.flat[:3] = [0, 2**31, 2**32 - 1]  # the top half reads as negative int32 in Pillow
    data = _patch_tiff(_encode(Image.fromarray(u.view(np.int32)), "TIFF"), 339, 2, 1)
    _assert_close(_decode(data), _gray3(_scaled(u, 2**32 - 1)))


def test_float_tiff_in_unit_range():
    v = RNG.random((N, N)).astype(np.float32)
    v.flat[:2] = [0.0, 1.0]
    data = _encode(Image.fromarray(v), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "F"
    _assert_close(_decode(data), _gray3(np.round(v.astype(np.float64) * 255.0)))


@pytest.mark.parametrize("color_type", [2, 6, 4])  # 16-bit RGB, RGBA, grey + alpha
def test_16bit_colour_png_keeps_high_byte(color_type):
    """Pillow keeps the high byte of 16-bit colour samples: exactly that, composited, and
    within 2 of the full-precision float reference."""
    channels = {2: 3, 6: 4, 4: 2}[color_type]
    v = RNG.integers(0, 65536, (N, N, channels)).astype(np.uint16)
    v[0, :, 0] = [0, 255, 256, 383, 32895, 65535]
    out = _decode(_png(v, color_type, 16))
    high, full = (v >> 8).astype(np.float64), v / 65535 * 255
    if channels in (1, 3):
        colour_high, colour_full = high, full
        alpha_high, alpha_full = np.full((N, N), 255.0), np.full((N, N), 255.0)
    else:
        colour_high, colour_full = high[..., :-1], full[..., :-1]
        alpha_high, alpha_full = high[..., -1], full[..., -1]
    if colour_high.shape[-1] == 1:
        colour_high, colour_full = (np.repeat(c, 3, -1) for c in (colour_high, colour_full))
    _assert_close(out, _over_white(colour_high, alpha_high))
    _assert_close(out, np.round(_over_white(colour_full, alpha_full)), atol=2)


# ---------------------------------------------------------------------------- alpha


def _rgba() -> np.ndarray:
    """``(N, N, 4)`` uint8 with alpha 0, 255 and partial values."""
    rgba = RNG.integers(0, 256, (N, N, 4), dtype=np.uint8)
    rgba[0, :, 3] = [0, 255, 1, 128, 254, 127]
    return rgba


@pytest.mark.parametrize("fmt", ["PNG", "TIFF", pytest.param("WEBP", marks=WEBP)])
def test_rgba_over_white(fmt):
    rgba = _rgba()
    kw = {"lossless": True, "exact": True} if fmt == "WEBP" else {}
    out = _decode(_encode(_image("RGBA", rgba), fmt, **kw))
    _assert_close(out, _over_white(rgba[..., :3], rgba[..., 3]))
    assert (out[0, 0] == 255).all()  # fully transparent: white, whatever colour it hides


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_grey_alpha_over_white(fmt):
    la = _rgba()[..., 2:]
    out = _decode(_encode(_image("LA", la), fmt))
    _assert_close(out, _over_white(_gray3(la[..., 0]), la[..., 1]))


def test_premultiplied_alpha_tiff():
    """TIFF associated alpha: ``La`` composited as ``c + 255 - a``; ``RGBa`` arrives as
    RGBA un-premultiplied by Pillow, at most 1 off."""
    alpha = _rgba()[..., 3]
    pre = np.floor(RNG.random((N, N, 3)) * (alpha[..., None] + 1)).astype(np.uint8)
    ref = pre.astype(np.float64) + 255.0 - alpha[..., None]
    la = np.stack([pre[..., 0], alpha], -1)
    data = _patch_tiff(_encode(_image("LA", la), "TIFF"), 338, 2, 1)
    assert Image.open(io.BytesIO(data)).mode == "La"
    _assert_close(_decode(data), np.repeat(ref[..., :1], 3, -1))
    rgba = np.concatenate([pre, alpha[..., None]], -1)
    data = _patch_tiff(_encode(_image("RGBA", rgba), "TIFF"), 338, 2, 1)
    _assert_close(_decode(data), ref, atol=1)


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_transparent_index_over_white(fmt):
    img, ref = _palette_image()
    idx = np.asarray(img)
    key = int(idx[0, 0])
    out = _decode(_encode(img, fmt, transparency=key))
    _assert_close(out, np.where((idx == key)[..., None], 255.0, ref))


def test_palette_partial_alpha_png_over_white():
    img, ref = _palette_image()
    alphas = RNG.integers(0, 256, 256, dtype=np.uint8)
    data = _encode(img, "PNG", transparency=alphas.tobytes())
    _assert_close(_decode(data), _over_white(ref, alphas[np.asarray(img)]))


def test_transparent_colour_png_over_white():
    rgb = RNG.integers(0, 256, (N, N, 3), dtype=np.uint8)
    key = tuple(int(c) for c in rgb[1, 1])
    data = _encode(_image("RGB", rgb), "PNG", transparency=key)
    mask = (rgb == key).all(-1)[..., None]
    _assert_close(_decode(data), np.where(mask, 255.0, rgb))


@pytest.mark.parametrize("bits", [1, 2, 4, 8, 16])
def test_transparent_grey_png_over_white(bits):
    """A tRNS grey is in the file's bit depth; the pixels that match it are white."""
    levels = RNG.integers(0, 2**bits, (N, N)).astype(np.uint16)
    levels.flat[:2] = [0, 2**bits - 1]
    key = int(levels[0, 0])
    data = _png(levels, 0, bits, trns=(key,))
    ref = np.where(levels == key, 255.0, _scaled(levels, 2**bits - 1))
    _assert_close(_decode(data), _gray3(ref))


# ---------------------------------------------------------------------------- colour spaces


def test_cmyk_tiff_exact_and_jpeg_close():
    cmyk = RNG.integers(0, 256, (N, N, 4), dtype=np.uint8)
    c = cmyk.astype(np.float64) / 255.0
    ref = np.round(255.0 * (1.0 - c[..., :3]) * (1.0 - c[..., 3:]))
    _assert_close(_decode(_encode(_image("CMYK", cmyk), "TIFF")), ref)
    smooth = _smooth_rgb(4)  # Adobe (inverted) CMYK JPEG as Pillow writes it
    s = smooth.astype(np.float64) / 255.0
    ref = 255.0 * (1.0 - s[..., :3]) * (1.0 - s[..., 3:])
    data = _encode(_image("CMYK", smooth), "JPEG", quality=95, subsampling=0)
    _assert_close(_decode(data, 16), ref, atol=6)


def _jfif_rgb(ycc: np.ndarray) -> np.ndarray:
    """Float reference of full-range (JFIF) YCbCr -> RGB, rounded and clipped."""
    y, cb, cr = (ycc[..., i].astype(np.float64) for i in range(3))
    rgb = np.stack([y + 1.402 * (cr - 128), y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128),
                    y + 1.772 * (cb - 128)], -1)
    return np.clip(np.round(rgb), 0, 255)


def test_ycbcr_tiff_exact_and_jpeg_close():
    ycc = RNG.integers(0, 256, (N, N, 3), dtype=np.uint8)
    data = _encode(_image("YCbCr", ycc), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "YCbCr"
    _assert_close(_decode(data), _jfif_rgb(ycc))
    smooth = _smooth_rgb(3)
    data = _encode(_image("YCbCr", smooth), "JPEG", quality=95, subsampling=0)
    _assert_close(_decode(data, 16), _jfif_rgb(smooth), atol=4)


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_jpeg_grey_and_rgb_close(mode):
    rgb = _smooth_rgb(3)
    arr = rgb[..., 0] if mode == "L" else rgb
    ref = _gray3(arr) if mode == "L" else rgb.astype(np.float64)
    data = _encode(_image(mode, arr), "JPEG", quality=95, subsampling=0)
    _assert_close(_decode(data, 16), ref, atol=4)


# ---------------------------------------------------------------------------- orientation


# EXIF orientation -> the stored array as a viewer shows it (EXIF 2.3, tag 0x0112: where
# the stored row 0 and column 0 go).
_UPRIGHT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # row 0 top, column 0 right
    3: lambda a: a[::-1, ::-1],  # bottom, right
    4: lambda a: a[::-1],  # bottom, left
    5: lambda a: a.swapaxes(0, 1),  # row 0 left, column 0 top
    6: lambda a: np.rot90(a, -1),  # right, top
    7: lambda a: np.rot90(a, -1)[::-1],  # right, bottom
    8: lambda a: np.rot90(a, 1),  # left, bottom
}


@pytest.mark.parametrize("orientation", sorted(_UPRIGHT))
def test_exif_orientation_applied(orientation):
    rgb = RNG.integers(0, 256, (N, N, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _encode(_image("RGB", rgb), "PNG", exif=exif)
    _assert_close(_decode(data), _UPRIGHT[orientation](rgb).astype(np.float64))


def test_exif_orientation_jpeg():
    rgb = _smooth_rgb(3)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _encode(_image("RGB", rgb), "JPEG", quality=95, subsampling=0, exif=exif)
    _assert_close(_decode(data, 16), _UPRIGHT[6](rgb).astype(np.float64), atol=4)


# ---------------------------------------------------------------------------- refusals


def _refused_files() -> dict[str, bytes]:
    lab = _encode(_image("LAB", RNG.integers(0, 256, (N, N, 3), dtype=np.uint8)), "TIFF")
    wide = RNG.random((N, N)).astype(np.float32) * 3 - 1
    nan = np.full((N, N), np.nan, np.float32)
    negative = RNG.integers(-(2**31), 2**31, (N, N)).astype(np.int32)
    keyed = _png(RNG.integers(0, 65536, (N, N, 3)).astype(np.uint16), 2, 16, trns=(1, 2, 3))
    return {
        "'LAB'": lab,
        "'F'.*outside": _encode(Image.fromarray(wide), "TIFF"),
        "'F'.*NaN": _encode(Image.fromarray(nan), "TIFF"),
        "'I'.*negative": _encode(Image.fromarray(negative), "TIFF"),
        "16-bit RGB PNG": keyed,
    }


@pytest.mark.parametrize("match", list(_refused_files()))
def test_refused_with_mode_named(match):
    with pytest.raises(ValueError, match=match):
        decode_lib.decode(_refused_files()[match], N)


def test_unreadable_is_none():
    png = _encode(_image("RGB", RNG.integers(0, 256, (N, N, 3), dtype=np.uint8)), "PNG")
    assert decode_lib.decode(b"not an image", N) is None
    assert decode_lib.decode(png[: len(png) // 2], N) is None


def _folder(root, extra: dict[str, bytes]):
    """``root/train/<class>/*`` with two 16-bit grey PNGs per class, plus ``extra``; returns
    the reference ``(4, N, N, 3)`` images by sorted name."""
    refs = {}
    for cls in ("ant", "bee"):
        for i in range(2):
            v = _u16()
            path = root / "train" / cls / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(_encode(Image.fromarray(v), "PNG"))
            refs[f"{cls}/{i}"] = _gray3(_scaled(v, 65535))
    for name, data in extra.items():
        (root / name).write_bytes(data)
    return np.stack([refs[k] for k in sorted(refs)])


def test_loader_decodes_16bit_and_names_refused_file(tmp_path):
    ref = _folder(tmp_path / "ok", {})
    train, test, classes = folder_lib.load_folder(tmp_path / "ok", image_size=N,
                                                  cache_dir=tmp_path / "cache")
    assert classes == ("ant", "bee") and test is None
    chex.assert_trees_all_equal(train.images, ref.astype(np.uint8))
    _folder(tmp_path / "bad", {"train/bee/scan.tif": _refused_files()["'F'.*outside"]})
    with pytest.raises(ValueError) as info:
        folder_lib.load_folder(tmp_path / "bad", image_size=N, cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert "train/bee/scan.tif" in message and "'F'" in message and "\n" not in message
