"""A whole distillation grid as a two-process job (``jax.distributed`` on localhost, one
CPU device per process) into one shared work directory: killed with ``kill -9`` and
relaunched, it ends with the same results, metrics and run records as a one-process run
on two devices, and only one process wrote them."""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from child_env import child_env, xla_flags
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--methods", "ce,ce+jac", "--n-per-class", "2", "--seeds", "0",
        "--width-multiplier", "0.0625", "--max-steps", "6", "--teacher-max-steps", "4",
        "--batch-size", "8", "--teacher-batch-size", "8", "--val-fraction", "0.2",
        "--checkpoint-every", "1", "--no-progress"]
VARYING = {"wall_time_s", "skipped", "resumed_from", "wall_time"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for c, colour in enumerate(((200, 30, 30), (30, 200, 30), (30, 30, 200))):
        (root / f"c{c}").mkdir()
        for i in range(12):
            img = np.clip(np.array(colour) + rng.normal(0, 40, (32, 32, 3)), 0, 255)
            Image.fromarray(img.astype(np.uint8)).save(root / f"c{c}" / f"{i}.png")
    return root


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(tmp_path, **extra):
    env = child_env()
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2",
               JKT_CACHE=str(tmp_path / "cache"), **extra)
    return env


def _job(folder, workdir, tmp_path):
    port = _port()
    return [subprocess.Popen(
        [sys.executable, "-m", "experiments.distill", "--dataset", f"folder:{folder}",
         "--workdir", str(workdir), *ARGS], cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env=_env(tmp_path, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                 JAX_PROCESS_ID=str(i), JAX_COMPILATION_CACHE_DIR=str(tmp_path / f"xla{i}")))
        for i in range(2)]


def _rows(workdir):
    with (workdir / "results.csv").open() as f:
        return [{k: v for k, v in r.items() if k not in VARYING} for r in csv.DictReader(f)]


def _json(path):
    return {k: v for k, v in json.loads(path.read_text()).items() if k not in VARYING}


@pytest.mark.slow
def test_two_process_grid_killed_and_resumed_equals_one_process_run(folder, tmp_path):
    one = tmp_path / "one"
    ref = subprocess.run(
        [sys.executable, "-m", "experiments.distill", "--dataset", f"folder:{folder}",
         "--workdir", str(one), *ARGS], cwd=ROOT, capture_output=True, text=True, timeout=400,
        env=_env(tmp_path, XLA_FLAGS=xla_flags("--xla_force_host_platform_device_count=2"),
                 JAX_COMPILATION_CACHE_DIR=str(tmp_path / "xla_one")))
    assert ref.returncode == 0, ref.stderr[-3000:]

    two = tmp_path / "two"
    procs = _job(folder, two, tmp_path)
    ckpt = two / "runs" / "ce+jac" / "n2_seed0" / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and all(p.poll() is None for p in procs):
        if ckpt.is_dir() and any(p.name.isdigit() for p in ckpt.iterdir()):
            break
        time.sleep(0.05)
    for p in procs:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    assert not (two / "results.csv").exists() or len(_rows(two)) < 2  # really interrupted

    procs = _job(folder, two, tmp_path)  # a new job: the dead job's lock is taken over
    outs = [p.communicate(timeout=400)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(
        f"--- process {i} (exit {p.returncode}):\n{out[-4000:]}"
        for i, (p, out) in enumerate(zip(procs, outs, strict=True)))

    assert _rows(two) == _rows(one)
    assert (two / "results.md").read_text() == (one / "results.md").read_text()
    for run in ("ce/n2_seed0", "ce+jac/n2_seed0"):
        # metrics.jsonl lines average a logging window, which restarts at a resume: compare
        # the steps logged, not the window means.
        steps = [json.loads(line)["step"] for line in
                 (two / "runs" / run / "metrics.jsonl").read_text().splitlines()]
        assert steps == sorted(set(steps)) and steps[-1] == 6
        assert _json(two / "runs" / run / "result.json") == _json(one / "runs" / run /
                                                                  "result.json")
        assert _json(two / "runs" / run / "config.json") == _json(one / "runs" / run /
                                                                  "config.json")
    assert not list(two.rglob("*.tmp"))  # no torn files from the killed job
