"""Test-wide setup: 8 fake CPU devices, set once before any JAX computation.

Multi-device tests build meshes over ``jax.devices()``; single-device tests pass
``jax.devices()[:1]`` explicitly.
"""
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import chex  # noqa: E402
import pytest  # noqa: E402

chex.set_n_cpu_devices(8)


@pytest.fixture(scope="session", autouse=True)
def _compilation_cache(tmp_path_factory):
    """One persistent XLA compilation cache for the session (as ``jkt.workdir.setup_jax``
    sets for the experiments): tests that build the same step reuse its executable
    instead of compiling it again. The cache only skips compilation; every program and
    number is unchanged."""
    import jax

    keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    old = {k: getattr(jax.config, k) for k in keys}
    jax.config.update("jax_compilation_cache_dir",
                      old["jax_compilation_cache_dir"] or str(tmp_path_factory.mktemp("xla")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
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
