"""The on-disk cache of decoded arrays (data paths: :mod:`jkt.paths`).

Decoding a dataset (PNG records, image files) costs far more than reading the decoded
``uint8`` arrays back, so each source stores what it decoded as one uncompressed ``.npz``
under the cache directory (default ``$JKT_CACHE`` or ``~/.cache/jkt``). The file name holds
a digest of the data's identity: its path plus the name, size and mtime of every file under
it, the source's own parameters and :data:`CACHE_VERSION`; changing any of them starts a new
entry. Entries are written atomically (temporary file, then rename), and the zip CRC of
every member is checked on reading: a damaged entry costs one warning and a rebuild.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import struct
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from etils import epath

from jkt.paths import scheme, storage_errors

log = logging.getLogger(__name__)

CACHE_VERSION = 4  # 4: folder images decoded per mode and bit depth (16-bit, alpha, EXIF)


def default_cache_dir() -> Path:
    """``$JKT_CACHE`` or ``~/.cache/jkt``."""
    return Path(os.environ.get("JKT_CACHE") or "~/.cache/jkt").expanduser()


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _list_local(top: str) -> list[tuple[str, int, int]]:
    out, stack = [], [("", top)]
    while stack:
        prefix, folder = stack.pop()
        with os.scandir(folder) as entries:
            for e in entries:
                if e.is_dir():
                    stack.append((f"{prefix}{e.name}/", e.path))
                else:
                    st = e.stat()
                    out.append((prefix + e.name, st.st_size, st.st_mtime_ns))
    return out


def list_files(path: epath.Path) -> list[tuple[str, int, int]]:
    """``(name relative to path, size, mtime)`` of every file under ``path`` (or of ``path``).

    Local mtimes are in nanoseconds, remote ones as precise as the backend reports.
    Sorted by name. Raises ``FileNotFoundError`` when ``path`` does not exist.
    """
    with storage_errors(path):
        if scheme(path) is None:
            if os.path.isdir(path):
                return sorted(_list_local(os.fspath(path)))
            st = os.stat(path)
            return [("", st.st_size, st.st_mtime_ns)]
        if not path.is_dir():
            st = path.stat()
            return [("", st.length, st.mtime)]
        out = []
        for root, _, files in path.walk():
            for f in files:
                st = (root / f).stat()
                rel = os.fspath(root / f)[len(os.fspath(path)):].lstrip("/")
                out.append((rel, st.length, st.mtime))
        return sorted(out)


def fingerprint(path: epath.Path, files: list[tuple[str, int, int]] | None = None) -> str:
    """Digest of ``path``'s identity: its absolute path and :func:`list_files` of it."""
    files = list_files(path) if files is None else files
    where = os.path.abspath(path) if scheme(path) is None else os.fspath(path)
    text = "\n".join(f"{name}\0{size}\0{mtime}" for name, size, mtime in files)
    return hashlib.sha1(f"{where}\n{text}".encode()).hexdigest()


# ---------------------------------------------------------------------------- cache


def cache_file(cache_dir: str | os.PathLike | None, label: str, *key) -> Path:
    """``cache_dir/label-DIGEST.npz`` where DIGEST covers ``key`` and :data:`CACHE_VERSION`.

    ``key`` must be JSON-serialisable; ``cache_dir=None`` means :func:`default_cache_dir`.
    """
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    digest = hashlib.sha1(json.dumps([CACHE_VERSION, *key], sort_keys=True).encode())
    return cache_dir / f"{label}-{digest.hexdigest()[:16]}.npz"


def _read_member(zf: zipfile.ZipFile, f, key: str) -> np.ndarray:
    """One array of an uncompressed ``.npz``, read straight into its buffer, CRC checked.

    Gives what ``np.load`` gives, with one ``readinto`` per array instead of copying the
    bytes through :mod:`zipfile` in small pieces: a cached load costs about as much as
    reading the arrays from ``.npy`` files.
    """
    info = zf.getinfo(f"{key}.npy")
    if info.compress_type != zipfile.ZIP_STORED:
        return np.lib.format.read_array(zf.open(info), allow_pickle=False)
    f.seek(info.header_offset)
    local = f.read(30)
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        raise ValueError(f"bad zip header of {key}")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    start = info.header_offset + 30 + name_len + extra_len
    f.seek(start)
    version = np.lib.format.read_magic(f)
    read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}[version]
    shape, fortran, dtype = read_header(f)
    if dtype.hasobject:
        raise ValueError(f"{key} holds Python objects")
    header_len = f.tell() - start
    f.seek(start)
    crc = zlib.crc32(f.read(header_len))
    arr = np.empty(shape, dtype, order="F" if fortran else "C")
    buf = memoryview(arr.reshape(-1, order="A")).cast("B")
    got = f.readinto(buf) if arr.nbytes else 0
    if got != arr.nbytes or header_len + arr.nbytes != info.file_size:
        raise ValueError(f"{key} is truncated")
    if zlib.crc32(buf, crc) != info.CRC:
        raise ValueError(f"bad CRC-32 for {key}")
    return arr


def load_arrays(file: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    """The arrays ``keys`` of a cache entry; ``None`` when it is absent or damaged.

    A damaged entry (bad CRC, truncated, missing arrays) is reported in one warning line;
    the caller decodes the data again and :func:`save_arrays` replaces the entry.
    """
    if not file.is_file():
        return None
    try:
        with zipfile.ZipFile(file) as zf, open(file, "rb") as f:
            return {k: _read_member(zf, f, k) for k in keys}
    except Exception as e:  # noqa: BLE001 - whatever is wrong with it, rebuild it
        log.warning("cache %s is damaged (%s); decoding the data again", file, _one_line(e))
        return None


def save_arrays(file: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Writes a cache entry atomically; a failure to write (read-only disk...) only warns."""
    tmp = file.with_name(f"{file.stem}.tmp{os.getpid()}.npz")
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        np.savez(tmp, **arrays)
        os.replace(tmp, file)
    except OSError as e:
        log.warning("could not write cache %s (%s); the data will be decoded again next time",
                    file, _one_line(e))
        with contextlib.suppress(OSError):
            tmp.unlink()
