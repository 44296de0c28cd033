"""Multi-host data parallelism for real: two JAX processes joined by ``jax.distributed``.

Two subprocesses (one CPU device each, coordinated over localhost) run
``tests/multihost_worker.py``: each joins the job through
``jkt.parallel.initialize_distributed`` (env vars ``JAX_COORDINATOR_ADDRESS`` /
``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``), loads only its half of every global batch
and takes three ce+act+jac train steps against a fixed teacher over the 2-device mesh.
The result must equal the same three steps on one device in this process.
"""

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import chex
import jax
import numpy as np
import pytest
from child_env import child_env

from jkt import parallel

pytestmark = pytest.mark.slow  # two JAX processes, each compiling its train steps

WORKER = Path(__file__).with_name("multihost_worker.py")
REPO = WORKER.parent.parent


def _worker_module():
    spec = importlib.util.spec_from_file_location("multihost_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker_env(**extra) -> dict[str, str]:
    """A clean environment: no 8-fake-device XLA flag, one CPU device per process."""
    env = {k: v for k, v in child_env().items() if not k.startswith("JAX_")}
    env.update(JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="1", TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])))
    env.update(extra)
    return env


def _run_two_processes(out_dir: Path):
    address = f"127.0.0.1:{_free_port()}"
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(out_dir)], cwd=REPO,
            env=_worker_env(JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES="2",
                            JAX_PROCESS_ID=str(i)),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)
    ]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=120)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return [p.returncode for p in procs], outputs


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("multihost")
    codes, outputs = _run_two_processes(out)
    worker = _worker_module()
    if worker.CANNOT_START in codes:
        pytest.skip("jax.distributed cannot start on this platform:\n" + "\n".join(outputs))
    for i, (code, text) in enumerate(zip(codes, outputs, strict=True)):
        assert code == 0, f"worker process {i} exited with {code}:\n{text[-4000:]}"
    infos = [json.loads((out / f"process{i}.json").read_text()) for i in range(2)]
    results = [dict(np.load(out / f"process{i}.npz")) for i in range(2)]
    return worker, infos, results


def test_two_processes_form_one_job(two_process_run):
    _, infos, _ = two_process_run
    for i, info in enumerate(infos):
        assert info["joined"] is True
        assert info["process_index"] == i
        assert info["process_count"] == 2
        assert info["global_devices"] == 2
        assert info["local_devices"] == 1


def test_each_process_loads_its_own_half_of_every_batch(two_process_run):
    worker, infos, _ = two_process_run
    half = worker.GLOBAL_BATCH // 2
    for i, info in enumerate(infos):
        assert len(info["rows"]) == worker.NUM_STEPS
        for start, stop in info["rows"]:
            assert (start, stop) == (i * half, (i + 1) * half)


def test_a_two_process_stream_reads_disjoint_shards(two_process_run):
    """Each process of a streamed run reads only its own rows of every global batch: the
    two read sets are disjoint, make up the batch, and each process's shard equals the
    resident path's."""
    from jkt.data.batches import BatchStream

    worker, infos, _ = two_process_run
    stream = BatchStream(24, worker.GLOBAL_BATCH, seed=3)
    half = worker.GLOBAL_BATCH // 2
    for i, info in enumerate(infos):
        want = [int(j) for s in range(worker.NUM_STEPS)
                for j in stream.indices(s)[i * half:(i + 1) * half]]
        assert info["streamed_reads"] == sorted(want), i
    assert all(info["streamed_equals_resident"] for info in infos)


def test_two_process_training_equals_one_device(two_process_run):
    worker, _, results = two_process_run
    # Both processes hold the same replicated state.
    chex.assert_trees_all_equal(results[0], results[1])
    # The same three steps on one device of this process.
    mesh = parallel.make_mesh(jax.devices()[:1])
    init_params, params, batch_stats, metrics, rows = worker.run_steps(mesh)
    assert rows == [(0, worker.GLOBAL_BATCH)] * worker.NUM_STEPS
    expected = {**worker.flatten(init_params, "init_params"), **worker.flatten(params, "params"),
                **worker.flatten(batch_stats, "batch_stats")}
    for i, m in enumerate(metrics):
        expected.update({f"metrics/{i}/{k}": v for k, v in m.items()})
    # Fused runs (stacked states on global arrays) too; run 0 is the plain run above.
    for r, p in enumerate(worker.run_fused_steps(mesh)):
        expected.update(worker.flatten(p, f"fused{r}"))
        if r == 0:
            chex.assert_trees_all_close(p, params, rtol=1e-4, atol=1e-6)
    assert set(results[0]) == set(expected)
    assert {"metrics/0/ce", "metrics/0/act", "metrics/0/jac"} <= set(expected)
    chex.assert_trees_all_close(results[0], expected, rtol=1e-5, atol=1e-5)
    # Training moved the parameters (this is not a comparison of two initial states).
    assert any(not np.allclose(results[0]["init_" + k], v)
               for k, v in expected.items() if k.startswith("params"))
