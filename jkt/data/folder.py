"""Image folders and archives of them (``.zip``, ``.tar``, ``.tar.gz``, ``.tar.xz``).

Recognised layouts, after dropping a single wrapping top-level directory:

* ``<class>/<image>``: one sub-folder per class; the test split is carved out later.
* ``train/<class>/<image>`` and optionally ``test/<class>/<image>``.
* MIT Indoor 67: ``Images/<class>/<image>`` plus ``TrainImages.txt`` / ``TestImages.txt``
  listing ``<class>/<image>`` (inside the folder/archive or next to it): the official split.

Images are decoded in parallel threads (PIL releases the GIL while decoding), converted
to 8-bit RGB by mode and bit depth (16-bit and float grey scaled, transparency composited
over white, the EXIF orientation applied; see :mod:`jkt.data.decode`), resized to ``image_size``
square (bilinear, antialiased; ``resize="stretch"`` or, keeping the aspect ratio,
``"crop"`` to the central square), and the decoded arrays are cached with
:mod:`jkt.data.cache` under ``cache_dir`` (default ``$JKT_CACHE`` or ``~/.cache/jkt``),
keyed by the path, the names, sizes and mtimes of its files, ``image_size`` and the resize
policy. The path may be a URI (``gs://bucket/images.tar``), read through
:mod:`etils.epath`.
"""

from __future__ import annotations

import concurrent.futures
import logging
import lzma
import os
import tarfile
import time
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import numpy as np
from etils import epath

from jkt import paths
from jkt.data import cache as cache_lib
from jkt.data import decode as decode_lib
from jkt.data.cache import default_cache_dir
from jkt.data.types import RESIZE_POLICIES, Split

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".webp", ".tif", ".tiff")
MIT_LISTS = {"train": "TrainImages.txt", "test": "TestImages.txt"}
_ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2")
_CACHE_KEYS = ("train_images", "train_labels", "test_images", "test_labels", "has_test",
               "class_names")
# No image or list file is read whole beyond this size (a zip bomb, a stray video): one
# line names it instead of the process running out of memory.
MAX_FILE_BYTES = 256 << 20

__all__ = ["IMAGE_EXTENSIONS", "MAX_FILE_BYTES", "default_cache_dir", "load_folder"]


def _is_archive(path: epath.Path) -> bool:
    return path.is_file() and path.name.lower().endswith(_ARCHIVE_SUFFIXES)


def _hidden(name: str) -> bool:
    return any(p.startswith(".") or p == "__MACOSX" for p in PurePosixPath(name).parts)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not _hidden(name)


def _is_list(name: str) -> bool:
    return PurePosixPath(name).name in MIT_LISTS.values() and not _hidden(name)


# ---------------------------------------------------------------------------- reading


def _iter_files(path: epath.Path) -> Iterator[tuple[str, bytes]]:
    """``(posix relative name, bytes)`` of the images and MIT lists in a folder or archive;
    a file over :data:`MAX_FILE_BYTES` (its size as stored, before it is read) is one
    ``ValueError`` line naming it."""
    if path.is_dir() and paths.scheme(path) is None:  # local: plain os calls, faster
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for f in sorted(files):
                full = os.path.join(root, f)
                name = os.path.relpath(full, path).replace(os.sep, "/")
                if _is_image(name) or _is_list(name):
                    _check_size(path, name, os.path.getsize(full))
                    with open(full, "rb") as fobj:
                        yield name, fobj.read()
    elif path.is_dir():
        for root, dirs, files in path.walk():
            dirs.sort()
            for f in sorted(files):
                full = root / f
                name = full.relative_to(path).as_posix()
                if _is_image(name) or _is_list(name):
                    _check_size(path, name, full.stat().length)
                    yield name, full.read_bytes()
    elif path.name.lower().endswith(".zip"):
        with path.open("rb") as fobj, zipfile.ZipFile(fobj) as zf:
            for info in zf.infolist():
                if not info.is_dir() and (_is_image(info.filename) or _is_list(info.filename)):
                    _check_size(path, info.filename, info.file_size)
                    yield info.filename, zf.read(info)  # reads at most file_size bytes
    else:
        # Streaming mode ("r|*"): one sequential pass, no seeking in compressed data.
        with path.open("rb") as fobj, tarfile.open(fileobj=fobj, mode="r|*") as tf:
            for member in tf:
                if member.isfile() and (_is_image(member.name) or _is_list(member.name)):
                    _check_size(path, member.name, member.size)
                    f = tf.extractfile(member)
                    yield member.name, f.read()


def _check_size(path, name: str, size: int) -> None:
    if size > MAX_FILE_BYTES:
        raise ValueError(f"{path}: {name} is {size / 2**20:,.0f} MiB uncompressed, more than "
                         f"an image file may be ({MAX_FILE_BYTES >> 20} MiB); remove it from "
                         "the dataset")


def _decode_chunk(chunk: list[tuple[str, bytes]], image_size: int, resize: str):
    """``(name, pixels or None, refusal or None)`` per file, in order: ``None`` pixels
    without a refusal mean unreadable."""
    out = []
    for name, data in chunk:
        try:
            out.append((name, decode_lib.decode(data, image_size, resize), None))
        except ValueError as e:
            out.append((name, None, str(e)))
    return out


def _checked(files: Iterator[tuple[str, bytes]], path) -> Iterator[tuple[str, bytes]]:
    """``files``, with a damaged archive (truncated, not an archive, bad compression) as one
    ``ValueError`` line naming it."""
    try:
        yield from files
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, lzma.LZMAError, zlib.error,
            OSError) as e:
        if isinstance(e, FileNotFoundError) or path.is_dir():
            raise
        raise ValueError(f"{path} is not a readable archive ({type(e).__name__}: {e}); "
                         "download or create it again") from None


def _read_all(path: epath.Path, image_size: int, workers: int | None, chunk_size: int = 256,
              resize: str = "stretch"):
    """Decodes every image in ``path``; returns ``(images by name, list texts, unreadable
    names)``; an image that cannot be decoded faithfully is one ``ValueError`` line.

    Reading (sequential; decompression releases the GIL) overlaps with decoding in a
    thread pool, which gets chunks of files to keep per-task overhead small.
    """
    workers = workers or min(32, (os.cpu_count() or 1) + 4)
    futures: list[concurrent.futures.Future] = []
    texts: dict[str, str] = {}
    chunk: list[tuple[str, bytes]] = []
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for name, data in _checked(_iter_files(path), path):
            name = name.removeprefix("./")
            if _is_list(name):
                texts[name] = data.decode("utf-8", errors="replace")
                continue
            chunk.append((name, data))
            if len(chunk) >= chunk_size:
                futures.append(pool.submit(_decode_chunk, chunk, image_size, resize))
                chunk = []
        if chunk:
            futures.append(pool.submit(_decode_chunk, chunk, image_size, resize))
        decoded = [item for f in futures for item in f.result()]
    _check_refused(decoded, path)
    bad = sorted(name for name, img, _ in decoded if img is None)
    images = {name: img for name, img, _ in decoded if img is not None}
    return images, texts, bad


def _check_refused(decoded: list[tuple[str, np.ndarray | None, str | None]], path) -> None:
    """One ``ValueError`` line naming the first image (by name) that Pillow opens but that
    cannot be decoded faithfully (:func:`_decode`), with the reason and how many more."""
    refused = sorted((name, why) for name, _, why in decoded if why is not None)
    if refused:
        name, why = refused[0]
        more = f" ({len(refused) - 1} more such file(s))" if len(refused) > 1 else ""
        raise ValueError(f"{path}: {name} cannot be decoded faithfully: {why}{more}; convert "
                         "it to 8-bit RGB (or 16-bit grey PNG) or remove it from the dataset")


# ---------------------------------------------------------------------------- layouts


def _strip_wrappers(names: list[str]) -> str:
    """The common wrapping prefix (``"a/b/"`` or ``""``) above the layout's root."""
    prefix = ""
    parts = [PurePosixPath(n).parts for n in names]
    depth = 0
    while parts and all(len(p) > depth + 2 for p in parts):
        tops = {p[depth] for p in parts}
        if len(tops) != 1:
            break
        top = next(iter(tops))
        if top.lower() in ("train", "test"):
            break
        prefix += top + "/"
        depth += 1
    return prefix


def _find_lists(texts: dict[str, str], path: epath.Path) -> dict[str, str] | None:
    """MIT Indoor split lists, from inside the folder/archive or beside it."""
    found = {}
    for split, fname in MIT_LISTS.items():
        inside = [t for n, t in texts.items() if PurePosixPath(n).name == fname]
        beside = path.parent / fname
        if inside:
            found[split] = inside[0]
        elif beside.is_file():
            found[split] = beside.read_bytes().decode("utf-8", errors="replace")
    return found if len(found) == len(MIT_LISTS) else None


def _assign(
    names: list[str], lists: dict[str, str] | None
) -> tuple[dict[str, tuple[str, str]], str]:
    """Maps image name -> ``(part, class)`` with part in {"train", "test", "all"}."""
    if lists is not None:
        by_key = {}
        for n in names:
            p = PurePosixPath(n).parts
            if len(p) >= 2:
                by_key.setdefault(f"{p[-2]}/{p[-1]}", n)
        out = {}
        for part, text in lists.items():
            for line in text.splitlines():
                key = line.strip().replace("\\", "/")
                if key and key in by_key:
                    out[by_key[key]] = (part, key.split("/")[0])
        if out:
            return out, "mit"
    prefix = _strip_wrappers(names)
    rel = [(n, PurePosixPath(n[len(prefix) :]).parts) for n in names if n.startswith(prefix)]
    tops = {p[0].lower() for _, p in rel if len(p) >= 3}
    out = {}
    if "train" in tops:
        for n, p in rel:
            if len(p) == 3 and p[0].lower() in ("train", "test"):
                out[n] = (p[0].lower(), p[1])
        return out, "train/test" if "test" in tops else "train"
    for n, p in rel:
        if len(p) == 2:
            out[n] = ("all", p[0])
    return out, "classes"


# ---------------------------------------------------------------------------- cache


def _check_same_classes(assignment: dict[str, tuple[str, str]], path) -> None:
    """With a test split of its own, train and test must have exactly the same class
    names: a test class never trained on (or one that differs only in case) would be
    scored as a class the model cannot predict. One ``ValueError`` line otherwise."""
    parts = {"train": set(), "test": set()}
    for part, cls in assignment.values():
        parts["test" if part == "test" else "train"].add(cls)
    train, test = parts["train"], parts["test"]
    if not test or train == test:
        return
    only_test, only_train = sorted(test - train), sorted(train - test)
    case = sorted(t for t in only_test if t.lower() in {c.lower() for c in only_train})
    detail = "; ".join(f"only in {where}: {', '.join(names[:5])}"
                       + (f" and {len(names) - 5} more" if len(names) > 5 else "")
                       for where, names in (("test", only_test), ("train", only_train))
                       if names)
    hint = f" ({', '.join(case)} differ from a train class only in case)" if case else ""
    raise ValueError(f"{path}: the train and test splits have different classes ({detail})"
                     f"{hint}; give both the same class folders")


def _cache_file(path: epath.Path, image_size: int, cache_dir, resize: str = "stretch",
                files: list[tuple[str, int, int]] | None = None) -> Path:
    """The cache entry of ``path`` decoded at ``image_size`` with the ``resize`` policy; MIT
    lists beside it count too (``files``: ``path``'s listing, if the caller has it)."""
    lists = []
    for fname in MIT_LISTS.values():
        beside = path.parent / fname
        if beside.is_file():
            lists.append(cache_lib.list_files(beside))
    key = (cache_lib.fingerprint(path, files), lists, image_size)
    if resize != "stretch":  # the stretch entries keep the key they always had
        key = (*key, resize)
    suffix = "" if resize == "stretch" else f"-{resize}"
    return cache_lib.cache_file(cache_dir, f"folder-{path.name}-{image_size}px{suffix}",
                                "folder", *key)


# ---------------------------------------------------------------------------- public


def load_folder(
    path: str | os.PathLike,
    *,
    image_size: int = 32,
    cache_dir: str | os.PathLike | None = None,
    workers: int | None = None,
    resize: str = "stretch",
) -> tuple[Split, Split | None, tuple[str, ...]]:
    """Reads an image folder or archive.

    Args:
      path: folder, or ``.zip`` / ``.tar[.gz|.xz|.bz2]`` archive of one; local or a URI
        (``gs://...``, needs that scheme's :mod:`etils.epath` backend).
      image_size: output side length; images are resized to ``image_size`` square.
      cache_dir: where decoded arrays are cached; ``None`` means :func:`default_cache_dir`.
      workers: decoding threads (default: CPU count + 4, at most 32).
      resize: ``"stretch"`` (whole image to the square) or ``"crop"`` (shorter side to
        ``image_size``, central square kept).

    Returns:
      ``(train, test, class_names)``; ``test`` is ``None`` when the data has no test split
      (the caller carves one). Class names are sorted; labels index them.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ValueError: no labelled images were found; a URI whose backend is not installed; an
        image Pillow opens but that cannot be decoded faithfully (named, with its mode:
        e.g. CIELab, floats outside [0, 1]).
    """
    path = paths.as_path(path)
    with paths.storage_errors(path):
        exists = path.exists()
    if not exists:
        raise FileNotFoundError(
            f"image folder/archive {str(path)!r} does not exist (expected a folder with one "
            f"sub-folder per class, or a .zip/.tar/.tar.gz/.tar.xz archive of one)"
        )
    if not (path.is_dir() or _is_archive(path)):
        raise ValueError(f"{path} is neither a folder nor a .zip/.tar/.tar.gz/.tar.xz archive")
    if resize not in RESIZE_POLICIES:
        raise ValueError(f"resize must be one of {', '.join(RESIZE_POLICIES)}, got {resize!r}")
    files = cache_lib.list_files(path)  # the cache key, and a folder's count for the check
    cache_file = _cache_file(path, image_size, cache_dir, resize, files)
    z = cache_lib.load_arrays(cache_file, _CACHE_KEYS)
    if z is not None:
        train = Split(z["train_images"], z["train_labels"])
        test = Split(z["test_images"], z["test_labels"]) if z["has_test"] else None
        log.info("loaded %s from cache %s", path, cache_file)
        return train, test, tuple(str(c) for c in z["class_names"])

    # An image size whose decoded arrays cannot fit is one line now, not a kill later.
    from jkt import resources

    num_images = sum(_is_image(n) for n, _, _ in files) if path.is_dir() else None
    resources.check_decode(path, image_size, _is_image, workers, num_images=num_images)
    t0 = time.perf_counter()
    images, texts, bad = _read_all(path, image_size, workers, resize=resize)
    assignment, layout = _assign(sorted(images), _find_lists(texts, path))
    if bad:
        warnings.warn(
            f"{path}: skipped {len(bad)} unreadable image file(s) (e.g. {bad[0]})",
            stacklevel=2,
        )
    if not assignment:
        raise ValueError(
            f"no labelled images found in {path}: expected <class>/<image>, "
            f"train/<class>/<image> (+ test/...), or the MIT Indoor 67 layout"
        )
    _check_same_classes(assignment, path)
    class_names = tuple(sorted({cls for _, cls in assignment.values()}))
    class_id = {c: i for i, c in enumerate(class_names)}

    def gather(parts: tuple[str, ...]) -> Split:
        names = sorted(n for n, (part, _) in assignment.items() if part in parts)
        imgs = np.stack([images[n] for n in names]) if names else None
        if imgs is None:
            imgs = np.zeros((0, image_size, image_size, 3), np.uint8)
        labels = np.array([class_id[assignment[n][1]] for n in names], np.int32)
        return Split(imgs, labels)

    train = gather(("train", "all"))
    has_test = any(part == "test" for part, _ in assignment.values())
    test = gather(("test",)) if has_test else None
    log.info(
        "decoded %d images (%s layout, %d classes) from %s in %.1fs",
        len(train) + (len(test) if test else 0),
        layout,
        len(class_names),
        path,
        time.perf_counter() - t0,
    )

    empty = np.zeros((0, image_size, image_size, 3), np.uint8)
    cache_lib.save_arrays(cache_file, {
        "train_images": train.images,
        "train_labels": train.labels,
        "test_images": test.images if test else empty,
        "test_labels": test.labels if test else np.zeros((0,), np.int32),
        "has_test": np.array(has_test),
        "class_names": np.array(class_names),
    })
    return train, test, class_names
