"""Test-wide setup, before any JAX computation: 8 fake CPU devices, and XLA's backend
optimisation off.

Multi-device tests build meshes over ``jax.devices()``; single-device tests pass
``jax.devices()[:1]`` explicitly.

Compilation is most of the suite's time, and the tests' programs run a few steps each:
with ``--xla_backend_optimization_level=0`` XLA still runs all of its HLO passes (fusion,
common subexpressions, layouts), only LLVM's code generation is not optimised, which
compiles about 35 % faster and runs a step a few times slower. Set the flag in
``XLA_FLAGS`` yourself (e.g. ``--xla_backend_optimization_level=2``) to test the
optimised build; the processes the tests launch inherit it (``child_env.py``).
"""
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = " ".join(
        [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0"]).strip()

import chex  # noqa: E402
import pytest  # noqa: E402

chex.set_n_cpu_devices(8)


@pytest.fixture(scope="session")
def jax_cache_dir(tmp_path_factory) -> str:
    """The session's persistent XLA compilation cache (one per pytest-xdist worker): the
    tests' own processes use it, and so do the command lines the end-to-end tests launch
    (``JAX_COMPILATION_CACHE_DIR``), as ``jkt.workdir.setup_jax`` sets one for the
    experiments. A program compiled once (a grid's steps, its init and eval steps) is then
    loaded, not compiled, by every later test that builds it. The cache only skips
    compilation; every program and number is unchanged."""
    import jax

    return jax.config.jax_compilation_cache_dir or str(tmp_path_factory.mktemp("xla"))


@pytest.fixture(scope="session", autouse=True)
def _compilation_cache(jax_cache_dir):
    """Installs :func:`jax_cache_dir` for the tests' own process."""
    import jax

    keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    old = {k: getattr(jax.config, k) for k in keys}
    jax.config.update("jax_compilation_cache_dir", jax_cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    yield
    for k, v in old.items():
        jax.config.update(k, v)


def _wait_for_abandoned_saves(directory, timeout: float = 30.0) -> None:
    """Waits until no Orbax temporary step directory is left in ``directory``.

    The training loop does not wait for its asynchronous checkpoint save when an
    exception leaves the loop: the save goes on in a background thread of this process.
    (A killed process would lose it instead; the next run would resume one checkpoint
    earlier.) Waiting makes resume tests deterministic.
    """
    deadline = time.monotonic() + timeout
    while any("tmp" in p.name for p in directory.iterdir()):
        assert time.monotonic() < deadline, f"checkpoint saves in {directory} never finished"
        time.sleep(0.05)


@pytest.fixture
def wait_for_saves():
    """The function ``wait_for_saves(checkpoint_dir)`` (see ``_wait_for_abandoned_saves``)."""
    return _wait_for_abandoned_saves
