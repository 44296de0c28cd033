"""jkt.host_allocator: glibc keeps a freed large block mapped, so reusing it faults no pages."""

import json
import os
import platform
import subprocess
import sys

import pytest

from jkt import host_allocator

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Allocates, fills and frees a 48 MiB block (XLA:CPU's step buffer) 10 times; prints the
# minor page faults of the last 9 rounds. Run in a fresh process: mallopt is process-wide.
_PROBE = """
import ctypes, importlib.util, json, resource, sys
spec = importlib.util.spec_from_file_location("host_allocator", sys.argv[2])
host_allocator = sys.modules["host_allocator"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(host_allocator)  # alone: no JAX threads or allocations
line = host_allocator.configure() if sys.argv[1] == "configure" else "untouched"
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
n = 48 << 20
def round_():
    p = libc.malloc(n)
    ctypes.memset(p, 1, n)
    libc.free(p)
round_()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(9):
    round_()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"line": line, "faults": faults}))
"""


def _environ(**env) -> dict:
    """This process's environment without any malloc tuning, plus ``env``."""
    environ = {k: v for k, v in os.environ.items() if not (
        k.startswith("MALLOC_") or k in ("GLIBC_TUNABLES", "LD_PRELOAD", host_allocator.ENV))}
    return {**environ, **env}


def _probe(mode: str, **env) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode, host_allocator.__file__],
                         env=_environ(**env), check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="glibc malloc only")
def test_configured_heap_reuses_a_freed_large_block_without_page_faults():
    pages = (48 << 20) // 4096  # 12,288 pages per round
    default = _probe("untouched")
    tuned = _probe("configure")
    assert default["faults"] > 9 * pages // 2, default  # glibc maps and unmaps each round
    assert tuned["faults"] < pages // 10, tuned  # the same pages every round
    assert tuned["line"].startswith("glibc malloc: heap only"), tuned


@pytest.mark.skipif(not GLIBC, reason="glibc malloc only")
def test_opt_out_and_user_tuning_keep_glibc_defaults():
    off = _probe("configure", JKT_HOST_ALLOCATOR="default")
    assert off["line"] == "glibc malloc: defaults ($JKT_HOST_ALLOCATOR=default)"
    assert off["faults"] > 9 * (48 << 20) // 4096 // 2, off
    user = _probe("configure", MALLOC_ARENA_MAX="2")
    assert user["line"] == "glibc malloc: as set by $MALLOC_ARENA_MAX", user
    for env, name in (({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, "GLIBC_TUNABLES"),
                      ({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}, "LD_PRELOAD"),
                      ({"MALLOC_TOP_PAD_": "0"}, "MALLOC_TOP_PAD_")):
        assert host_allocator.configure(environ=env) == f"glibc malloc: as set by ${name}"
    # Tunables of other glibc parts are not malloc tuning.
    assert host_allocator.configure(
        environ={"GLIBC_TUNABLES": "glibc.cpu.hwcap_mask=0"}).startswith("glibc malloc: heap")


def test_unknown_choice_is_a_clear_error():
    with pytest.raises(ValueError, match=r"JKT_HOST_ALLOCATOR='fast': expected one of heap, "
                                         r"default"):
        host_allocator.configure(environ={"JKT_HOST_ALLOCATOR": "fast"})


def test_default_choice_touches_nothing():
    # No mallopt call: the line says so whatever the platform.
    assert host_allocator.configure(environ={"JKT_HOST_ALLOCATOR": " Default "}) == (
        "glibc malloc: defaults ($JKT_HOST_ALLOCATOR=default)")


def test_cpu_backend_expected_reads_the_platform_list_first():
    assert not host_allocator.cpu_backend_expected("cuda,cpu")
    assert host_allocator.cpu_backend_expected(" CPU")
    assert not host_allocator.cpu_backend_expected("tpu")
    # Unset: the CPU exactly when no accelerator plugin is installed.
    assert host_allocator.cpu_backend_expected("") == (not host_allocator.accelerator_plugins())


def _dispatch_after_configure_jax_cpu(**env) -> tuple[str, bool]:
    code = ("import json, jax\nfrom jkt import host_allocator\n"
            "line = host_allocator.configure_jax_cpu()\n"
            "print(json.dumps([line, jax.config.values['jax_cpu_enable_async_dispatch']]))")
    out = subprocess.run([sys.executable, "-c", code], env=_environ(**env), check=True,
                         capture_output=True, text=True).stdout
    return tuple(json.loads(out.strip().splitlines()[-1]))


@pytest.mark.skipif(not GLIBC, reason="glibc malloc only")
def test_configure_jax_cpu_runs_steps_on_the_calling_thread_only_when_applied():
    line, async_dispatch = _dispatch_after_configure_jax_cpu()
    assert line.startswith(host_allocator.APPLIED) and line.endswith(
        "CPU dispatch synchronous (jax_cpu_enable_async_dispatch=False)"), line
    assert async_dispatch is False
    line, async_dispatch = _dispatch_after_configure_jax_cpu(JKT_HOST_ALLOCATOR="default")
    assert line == "glibc malloc: defaults ($JKT_HOST_ALLOCATOR=default)"
    assert async_dispatch is True
