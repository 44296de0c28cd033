"""glibc ``malloc`` settings that keep XLA:CPU's step buffers mapped between steps.

On a CPU backend XLA allocates a compiled step's temporary memory (every intermediate of
the step, one block) with the C allocator at each call and frees it when the step ends.
glibc serves a block above its mmap threshold (at most 32 MiB, however it is set) with a
fresh ``mmap`` and returns it with ``munmap`` on ``free``: every step then faults its
whole temporary block in again, one 4 KiB page at a time, and the kernel zeroes each page
(docs/results.md: what that costs).

:func:`configure` makes glibc serve every block from its heap (``M_MMAP_MAX = 0``) and
keep freed heap memory (``M_TRIM_THRESHOLD`` at its maximum, ``M_TOP_PAD`` 64 MiB), so
the next step reuses the pages of the last one. The process keeps up to its peak heap
use until it exits, as a caching device allocator does. Values and results are unchanged:
only where the bytes live changes. Not covered: a block over 64 MiB that a thread other
than the main one allocates (glibc maps those whatever the settings, as such a thread's
arena grows in heaps of at most 64 MiB). One arena for all threads (``arena_max=1``, set
before JAX starts its threads) would cover them, but costs more in lock contention (in
XLA's compiler most of all) than it saves on a small CPU, so it is not the default.

It applies to the whole process (``mallopt``) and is skipped, leaving glibc's defaults:

* on anything but Linux with glibc;
* when ``$JKT_HOST_ALLOCATOR`` is ``default``;
* when the user already tunes malloc (``GLIBC_TUNABLES`` naming ``glibc.malloc.``, any
  ``MALLOC_*`` variable) or replaces it (``LD_PRELOAD`` naming a ``malloc`` library such
  as jemalloc, tcmalloc or mimalloc): theirs wins.

The experiment commands call it, before JAX starts, when the backend will be the CPU
(:func:`cpu_backend_expected`; :func:`jkt.workdir.setup_jax`, ``experiments.bench``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import importlib.metadata
import importlib.util
import os
import platform
import sys
from collections.abc import Mapping

ENV = "JKT_HOST_ALLOCATOR"
CHOICES = ("heap", "default")
APPLIED = "glibc malloc: heap only"  # how configure's line starts when it applied

# mallopt parameters (glibc malloc.h).
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_MAX = -4
M_ARENA_MAX = -8


@dataclasses.dataclass(frozen=True)
class MallocSettings:
    """glibc ``mallopt`` values (bytes; ``mmap_max`` counts mappings).

    Attributes:
      mmap_max: most blocks glibc serves with their own ``mmap`` (0: none; the heap
        serves every block, and glibc still maps memory when the heap cannot grow).
      arena_max: most malloc arenas (1: every thread allocates from the main heap;
        ``None``: glibc's choice, 8 per core). Binds only threads that have not
        allocated yet.
      trim_threshold: free memory at the top of the heap kept before it is returned to
        the system (``mallopt`` takes a C ``int``: 2**31 - 1 is its largest value).
      top_pad: extra memory taken each time the heap grows.
    """

    mmap_max: int = 0
    arena_max: int | None = None
    trim_threshold: int = 2**31 - 1
    top_pad: int = 64 << 20


def _user_tuned(environ: Mapping[str, str]) -> str | None:
    """The variable through which the user already tunes malloc, if any."""
    if "glibc.malloc." in environ.get("GLIBC_TUNABLES", ""):
        return "GLIBC_TUNABLES"
    if "malloc" in environ.get("LD_PRELOAD", "").lower():
        return "LD_PRELOAD"
    return next((k for k in sorted(environ) if k.startswith("MALLOC_")), None)


def accelerator_plugins() -> list[str]:
    """Installed JAX backends other than the CPU: PJRT plugins (the ``jax_plugins``
    entry points and namespace package, e.g. ``jax-cuda12-plugin``) and ``libtpu``."""
    found = {ep.name for ep in importlib.metadata.entry_points(group="jax_plugins")}
    ns = sys.modules.get("jax_plugins")
    try:
        if ns is None and importlib.util.find_spec("jax_plugins") is not None:
            import jax_plugins as ns
    except ImportError:
        ns = None
    if ns is not None:
        import pkgutil

        found.update(m.name for m in pkgutil.iter_modules(getattr(ns, "__path__", [])))
    if importlib.util.find_spec("libtpu") is not None:
        found.add("libtpu")
    return sorted(found)


def cpu_backend_expected(platforms: str | None = None) -> bool:
    """Whether JAX will run on the CPU, decided without starting it.

    Args:
      platforms: JAX's platform list (default: ``jax_platforms`` once JAX is imported,
        else ``$JAX_PLATFORMS``). When non-empty, its first entry decides; when empty, the
        CPU is expected exactly when no accelerator plugin is installed
        (:func:`accelerator_plugins`).
    """
    if platforms is None:
        platforms = os.environ.get("JAX_PLATFORMS", "")
        if "jax" in sys.modules:
            platforms = sys.modules["jax"].config.jax_platforms or platforms
    if platforms:
        return platforms.split(",")[0].strip().lower() == "cpu"
    return not accelerator_plugins()


def configure(settings: MallocSettings = MallocSettings(),
              environ: Mapping[str, str] | None = None) -> str:
    """Applies ``settings`` to this process's glibc malloc unless skipped (module doc).

    Args:
      settings: the ``mallopt`` values.
      environ: the environment to read (default ``os.environ``).

    Returns:
      One line saying what was done: ``"glibc malloc: heap only, …"`` when the settings
      were applied, else why not (e.g. ``"glibc malloc: defaults
      ($JKT_HOST_ALLOCATOR=default)"``).

    Raises:
      ValueError: ``$JKT_HOST_ALLOCATOR`` is neither ``heap`` nor ``default``.
      OSError: glibc refused a value.
    """
    environ = os.environ if environ is None else environ
    choice = environ.get(ENV, "heap").strip().lower() or "heap"
    if choice not in CHOICES:
        raise ValueError(f"${ENV}={environ[ENV]!r}: expected one of {', '.join(CHOICES)}")
    if choice == "default":
        return f"glibc malloc: defaults (${ENV}=default)"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "host malloc: defaults (not Linux with glibc)"
    tuned = _user_tuned(environ)
    if tuned:
        return f"glibc malloc: as set by ${tuned}"
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    for param, value in ((M_MMAP_MAX, settings.mmap_max), (M_ARENA_MAX, settings.arena_max),
                         (M_TRIM_THRESHOLD, settings.trim_threshold),
                         (M_TOP_PAD, settings.top_pad)):
        if value is None:
            continue
        if libc.mallopt(ctypes.c_int(param), ctypes.c_int(value)) != 1:
            raise OSError(f"glibc mallopt({param}, {value}) failed")
    arenas = "" if settings.arena_max is None else f", {settings.arena_max} arena(s)"
    return (f"{APPLIED}{arenas}, trim threshold {settings.trim_threshold >> 20} MiB, "
            f"top pad {settings.top_pad >> 20} MiB (${ENV}=default keeps glibc's)")


def configure_jax_cpu(settings: MallocSettings = MallocSettings(),
                      environ: Mapping[str, str] | None = None) -> str:
    """:func:`configure`, then, when it applied, JAX's ``jax_cpu_enable_async_dispatch``
    off: XLA:CPU runs each step on the thread that calls it, whose heap the settings
    cover, instead of on its worker threads, whose arenas grow in heaps of at most 64 MiB
    (glibc maps a larger block for them afresh whatever the settings). Python then waits
    for each step before it prepares the next batch. Call it before JAX starts its
    backend: JAX reads the dispatch setting when it creates its CPU client. Returns
    :func:`configure`'s line, with the dispatch noted."""
    line = configure(settings, environ)
    if line.startswith(APPLIED):
        import jax

        jax.config.update("jax_cpu_enable_async_dispatch", False)
        line += "; CPU dispatch synchronous (jax_cpu_enable_async_dispatch=False)"
    return line


__all__ = ["APPLIED", "CHOICES", "ENV", "MallocSettings", "accelerator_plugins", "configure",
           "configure_jax_cpu", "cpu_backend_expected"]
