"""Memory estimates checked before the work starts: one line instead of the kernel's kill.

A huge ``--image-size`` or ``--batch-size`` used to run for a minute and then be killed by
the kernel's out-of-memory handler with no message. Two checks now refuse such settings
up front with one :class:`ResourceError` line (a ``ValueError``: the command line prints
``error: ...`` and exits with status 2) that names the size, the memory available and the
setting to change:

* :func:`check_decode` (from :func:`jkt.data.folder.load_folder`): the decoded arrays of an
  image folder against the host's available memory (:func:`host_memory_available`);
* :func:`jkt.train.memory.check_step` (from :func:`jkt.train.loop.train_and_evaluate`):
  the training step's memory per device against the device's (:func:`device_memory`).

Both are estimates meant to refuse the absurd (a 20,000-pixel image, a batch of a million),
not to pack memory tight: they count the arrays that are surely allocated, times the
documented factors below for what XLA and PIL add around them, and refuse only above
:data:`FRACTION` of what is available; the repo's presets need a small fraction of it.
They cost milliseconds: shapes come from ``jax.eval_shape`` (tracing, no compilation),
remembered per model.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

FRACTION = 0.8
"""A setting is refused when its estimate exceeds this fraction of the memory available."""

DECODE_COPIES = 2
"""Decoded image arrays alive at once in :func:`jkt.data.folder.load_folder`: the decoded
images by name and the train/test arrays stacked from them."""
PIL_BYTES_PER_PIXEL = 4 + 3
"""Per decoding thread: PIL's resized image (RGB is stored as 4 bytes a pixel) and its
NumPy copy (3 bytes a pixel)."""
CACHE_WRITE_CHUNK = 16 << 20
"""The largest copy ``np.savez`` makes while writing the decoded arrays to the cache."""

_UNKNOWN = sys.maxsize  # memory that cannot be read: nothing is refused


class ResourceError(ValueError):
    """A setting whose estimated memory does not fit: one line naming the size, the memory
    available and the setting to change."""


def format_bytes(n: float) -> str:
    """``"1.5 GiB"`` from 1 GiB on, ``"12.0 MiB"`` below it."""
    if n >= 2**30:
        return f"{n / 2**30:,.1f} GiB"
    return f"{n / 2**20:,.1f} MiB"


def check_fits(what: str, need: int, have: int | None, fix: str, *,
               where: str = "memory") -> None:
    """Raises :class:`ResourceError` (one line) when ``need > FRACTION * have``.

    Args:
      what: what needs the memory (``"decoding 5,360 images at 224x224 px"``).
      need, have: bytes; ``have`` ``None`` (unknown) passes.
      fix: the setting to change (``"lower --image-size (data.image_size)"``).
      where: which memory (``"host memory"``).
    """
    if have is None or need <= FRACTION * have:
        return
    raise ResourceError(f"{what} needs about {format_bytes(need)}, more than "
                        f"{FRACTION:.0%} of the {format_bytes(have)} of {where} available; "
                        f"{fix}")


# ---------------------------------------------------------------------------- memory


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _meminfo_available(meminfo: str) -> int | None:
    text = _read(meminfo)
    for line in (text or "").splitlines():
        if line.startswith("MemAvailable:"):
            value, *unit = line.split(":", 1)[1].split()
            return int(value) * (1024 if unit and unit[0].lower() == "kb" else 1)
    return None


def _cgroup_available(cgroup_root: str, self_cgroup: str) -> int | None:
    """The least ``memory.max - memory.current (+ inactive_file)`` of this process's
    cgroup v2 and its ancestors (a limit anywhere above it applies too); ``None`` without
    a limit."""
    own = ""
    for line in (_read(self_cgroup) or "").splitlines():
        if line.startswith("0::"):  # cgroup v2: "0::/path/of/the/cgroup"
            own = line[3:].strip().strip("/")
    parts = [p for p in own.split("/") if p]
    best = None
    for depth in range(len(parts), -1, -1):
        d = os.path.join(cgroup_root, *parts[:depth])
        limit = (_read(os.path.join(d, "memory.max")) or "max").strip()
        current = _read(os.path.join(d, "memory.current"))
        if limit == "max" or current is None:
            continue
        # The page cache counts in memory.current; its inactive part is reclaimed first.
        stat = dict(line.split()[:2] for line in
                    (_read(os.path.join(d, "memory.stat")) or "").splitlines()
                    if len(line.split()) >= 2)
        free = int(limit) - int(current) + int(stat.get("inactive_file", 0))
        best = max(free, 0) if best is None else min(best, max(free, 0))
    return best


def _sysconf_available() -> int | None:
    for pages in ("SC_AVPHYS_PAGES", "SC_PHYS_PAGES"):  # macOS has only the second
        try:
            return os.sysconf(pages) * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            continue
    return None


def host_memory_available(*, meminfo: str = "/proc/meminfo",
                          cgroup_root: str = "/sys/fs/cgroup",
                          self_cgroup: str = "/proc/self/cgroup") -> int:
    """Bytes of host memory this process can still allocate.

    Linux's ``MemAvailable`` (free memory plus the reclaimable caches), or less when this
    process's cgroup v2 (a container's limit) leaves less: ``memory.max - memory.current``
    (plus the cgroup's reclaimable ``inactive_file``). Without ``/proc/meminfo``:
    ``os.sysconf``'s available (else physical) pages; without any of them, ``sys.maxsize``
    (nothing is refused). The keyword arguments are the files read (for tests).
    """
    available = _meminfo_available(meminfo)
    if available is None:
        available = _sysconf_available()
    limited = _cgroup_available(cgroup_root, self_cgroup)
    if limited is not None and (available is None or limited < available):
        available = limited
    return _UNKNOWN if available is None else int(available)


def device_memory(device) -> int | None:
    """Bytes of memory of ``device``: ``memory_stats()["bytes_limit"]`` where the backend
    reports it (GPU, TPU: the allocator's limit, e.g. 75 % of the GPU by default), the
    host's available memory for a CPU device, ``None`` when unknown."""
    if device.platform == "cpu":
        return host_memory_available()
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - a backend without memory statistics
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    return None


# ---------------------------------------------------------------------------- decoding


def decode_bytes(num_images: int, image_size: int, workers: int = 1) -> int:
    """Host bytes of decoding ``num_images`` images to ``image_size`` squares.

    ``DECODE_COPIES * N * S * S * 3`` (the uint8 arrays by name and the train/test arrays
    stacked from them) ``+ min(N, workers) * S * S * PIL_BYTES_PER_PIXEL`` (each decoding
    thread's resized PIL image and its NumPy copy) ``+ min(N * S * S * 3,
    CACHE_WRITE_CHUNK)`` (the cache writer's copy). The source image before the resize is
    not counted (its size is not known before its header is read).
    """
    pixels, n = int(image_size) ** 2, int(num_images)
    arrays = n * pixels * 3
    in_flight = min(n, max(int(workers), 1))
    return (DECODE_COPIES * arrays + in_flight * pixels * PIL_BYTES_PER_PIXEL
            + min(arrays, CACHE_WRITE_CHUNK))


def count_files(path, keep: Callable[[str], bool]) -> int | None:
    """How many files of a folder or ``.zip`` / uncompressed ``.tar`` archive ``keep``
    (of their ``/``-separated path inside it) accepts, read from the listing only; ``None``
    for a compressed tar (counting would decompress all of it)."""
    import tarfile
    import zipfile

    from jkt import paths

    name = path.name.lower()
    if path.is_dir() and paths.scheme(path) is None:
        return sum(keep(os.path.relpath(os.path.join(root, f), path).replace(os.sep, "/"))
                   for root, _, files in os.walk(path) for f in files)
    if path.is_dir():
        return sum(keep((root / f).relative_to(path).as_posix())
                   for root, _, files in path.walk() for f in files)
    if name.endswith(".zip"):
        with path.open("rb") as fobj, zipfile.ZipFile(fobj) as zf:
            return sum(keep(i.filename) for i in zf.infolist() if not i.is_dir())
    if name.endswith(".tar") and paths.scheme(path) is None:
        with tarfile.open(path, "r:") as tf:  # seeks from header to header
            return sum(keep(m.name) for m in tf if m.isfile())
    return None


def check_decode(path, image_size: int, keep: Callable[[str], bool],
                 workers: int | None = None, *, num_images: int | None = None) -> None:
    """Refuses (one :class:`ResourceError` line naming ``--image-size``) to decode the
    images of ``path`` (``num_images`` when the caller has counted them, else those
    ``keep`` accepts, :func:`count_files`; at least one when they cannot be counted cheaply)
    at ``image_size`` when :func:`decode_bytes` exceeds :data:`FRACTION` of
    :func:`host_memory_available`. A folder or archive that cannot be listed is left to
    the reader, which names the problem."""
    import tarfile
    import zipfile

    n = num_images
    if n is None:
        try:
            n = count_files(path, keep)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, tarfile.TarError):
            return  # a damaged archive: its reader says so
    # The threads of jkt.data.folder._read_all's default pool.
    workers = workers or min(32, (os.cpu_count() or 1) + 4)
    what = (f"decoding {n:,} images of {path} at {image_size}x{image_size} px" if n
            else f"decoding the images of {path} at {image_size}x{image_size} px")
    check_fits(what, decode_bytes(max(n or 1, 1), image_size, workers),
               host_memory_available(),
               "lower --image-size (data.image_size)", where="host memory")


__all__ = ["CACHE_WRITE_CHUNK", "DECODE_COPIES", "FRACTION", "PIL_BYTES_PER_PIXEL",
           "ResourceError", "check_decode", "check_fits", "count_files", "decode_bytes",
           "device_memory", "format_bytes", "host_memory_available"]
