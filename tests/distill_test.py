"""End-to-end tests of ``python -m experiments.distill`` on generated images.

Each invocation runs in a subprocess (as a user would run it) with one CPU device.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from child_env import child_env
from PIL import Image

from experiments import distill
from jkt.grids import distill as distill_grid

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """3 classes × 12 images of 32×32: class-coloured noise, so the task is learnable."""
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    colours = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200]])
    for c, name in enumerate(("red", "green", "blue")):
        (root / name).mkdir()
        for i in range(12):
            img = np.clip(colours[c] + rng.normal(0, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / name / f"{i}.png")
    return root


def _cmd(folder, workdir, *extra):
    return [sys.executable, "-m", "experiments.distill", "--dataset", f"folder:{folder}",
            "--workdir", str(workdir), "--methods", "ce,ce+jac,ce+act+jac", "--n-per-class", "1,2",
            "--seeds", "0", "--width-multiplier", "0.0625", "--max-steps", "4",
            "--teacher-max-steps", "4", "--batch-size", "8", "--teacher-batch-size", "8",
            "--val-fraction", "0.2", "--no-progress", *extra]


def _env(tmp_path, jax_cache_dir):
    env = child_env()
    env.update(JKT_CACHE=str(tmp_path / "cache"), PYTHONPATH=str(ROOT),
               JAX_COMPILATION_CACHE_DIR=jax_cache_dir,
               JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
    return env


def _rows(workdir):
    with (workdir / "results.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_end_to_end_writes_all_outputs_and_resumes_after_kill(image_folder, tmp_path,
                                                              jax_cache_dir):
    env = _env(tmp_path, jax_cache_dir)
    ref = tmp_path / "ref"
    out = subprocess.run(_cmd(image_folder, ref), env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = _rows(ref)
    assert {(r["method"], r["n_per_class"]) for r in rows} == {
        (m, n) for m in ("ce", "ce+jac", "ce+act+jac") for n in ("1", "2")}
    assert {r["method"]: r["fused_runs"] for r in rows} == {"ce": "1", "ce+jac": "2",
                                                           "ce+act+jac": "2"}
    for r in rows:
        assert 0.0 <= float(r["test_accuracy"]) <= 1.0
        assert int(r["steps"]) == 4
    assert all(r["final_jac"] != "" for r in rows if r["method"] == "ce+act+jac")
    md = (ref / "results.md").read_text()
    assert "CE + match {activations + Jacobians}" in md and "**" in md
    assert (ref / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Cross-Entropy (CE) training" in out.stdout
    assert (ref / "teacher" / "artifact").is_dir()

    # Same grid with checkpoints every step; kill -9 once the first fused student runs have
    # a checkpoint, rerun the same command, and get the same numbers as the reference.
    work = tmp_path / "killed"
    cmd = _cmd(image_folder, work, "--checkpoint-every", "1")
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    ckpt_dir = work / "runs" / "ce+act+jac" / "n1_seed0" / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if ckpt_dir.is_dir() and any(p.name.isdigit() for p in ckpt_dir.iterdir()):
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = {(r["method"], r["n_per_class"]): r for r in _rows(work)}
    for r in rows:
        g = got[(r["method"], r["n_per_class"])]
        assert g["test_accuracy"] == r["test_accuracy"]
        assert g["val_accuracy"] == r["val_accuracy"]
        np.testing.assert_allclose(float(g["final_loss"]), float(r["final_loss"]), rtol=1e-5)

    # A third invocation redoes nothing: every run is read back from its result.json.
    t0 = time.time()
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert [r["test_accuracy"] for r in _rows(work)] == [got[(r["method"], r["n_per_class"])][
        "test_accuracy"] for r in _rows(work)]
    assert time.time() - t0 < 60


@pytest.mark.slow
def test_fused_grid_matches_separate_runs(image_folder, tmp_path):
    """``--fusion unroll`` (default) and ``vmap``, and fusing all methods of a cell in one
    step, give the numbers of ``--fusion off``."""
    import dataclasses

    import jax

    from experiments.configs.distill import quick
    from jkt import parallel
    from jkt.data import DataConfig

    mesh = parallel.make_mesh(jax.devices()[:1])
    base = dataclasses.replace(
        quick(), data=DataConfig(f"folder:{image_folder}", val_fraction=0.2),
        methods=("ce+jac", "act+jac", "ce+act+jac"), label_free_estimator="label",
        n_per_class=(2,), seeds=(0,), max_steps=5, teacher_max_steps=4,
        student_options={"width_multiplier": 0.0625},
        teacher_options={"width_multiplier": 0.0625},
        optim=dataclasses.replace(quick().optim, batch_size=8),
        teacher_optim=dataclasses.replace(quick().teacher_optim, batch_size=8), progress=False)
    rows = {}
    for fusion in ("off", "unroll", "vmap", "all"):
        pre = (dataclasses.replace(base, fusion_groups="all", methods=(*base.methods, "ce"))
               if fusion == "all" else dataclasses.replace(base, fusion=fusion))
        pre = dataclasses.replace(
            pre, workdir=str(tmp_path / fusion),
            teacher_artifact=None if fusion == "off" else str(tmp_path / "off" / "teacher" /
                                                              "artifact"))
        rows[fusion] = distill_grid.run(pre, mesh=mesh)
    assert [r["fused_runs"] for r in rows["all"]] == [4, 4, 4, 4]
    for fusion in ("unroll", "vmap", "all"):
        assert [r["fused_runs"] for r in rows[fusion]][:3] in ([3, 3, 3], [4, 4, 4])
        for got, want in zip(rows[fusion], rows["off"], strict=False):
            assert got["method"] == want["method"]
            assert got["test_accuracy"] == want["test_accuracy"], (fusion, got["method"])
            for k in ("final_loss", "final_jac", "final_act"):
                if k in want:
                    np.testing.assert_allclose(got[k], want[k], rtol=1e-3, err_msg=k)
            assert set(got) - {"fused_runs"} == set(want) - {"fused_runs"}


@pytest.mark.parametrize("argv, message", [
    (["--methods", "ce,bogus"], "unknown method"),
    (["--n-per-class", "0"], "positive integers or 'full'"),
    (["--n-per-class", "x5"], "positive integers or 'full'"),
    (["--seeds", "a"], "seeds: expected an integer"),
    (["--lr", "-1"], "learning_rate must be positive"),
    (["--estimator", "nope"], "unknown estimator"),
    (["--methods", "ce,ce"], "lists an entry twice"),
    (["--seeds", "0,0"], "lists a seed twice"),
    (["--width-multiplier", "0"], "width_multiplier must be positive"),
    (["--width-multiplier", "-1"], "width_multiplier must be positive"),
    (["--width-multiplier", "inf"], "width_multiplier must be positive and finite, got inf"),
    (["--config.student_options.widht=0.5"], "unknown student_options widht for a vgg4; "
     "valid: conv_bias, conv_impl, dropout"),
    (["--config.teacher_options.stage_sizes=1,1"], "unknown teacher_options stage_sizes for "
     "a vgg9"),
    (["--student", "bogus"], "unknown student architecture"),
    (["--max-steps", "0"], "max_steps must be positive"),
    (["--config.optim.lr=3e-3"], "valid: optim.name, optim.learning_rate"),
    (["--fusion", "sideways"], "not one of unroll, vmap, off"),
])
def test_cli_errors_are_one_clear_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        distill.parse_config(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1]
    assert len(err) == 1


def test_too_many_points_per_class_fails_before_training(image_folder, tmp_path,
                                                         jax_cache_dir):
    env = _env(tmp_path, jax_cache_dir)
    cmd = _cmd(image_folder, tmp_path / "w")
    cmd[cmd.index("1,2")] = "1,500"
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 2
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "500" in last


def _inproc_argv(folder, workdir, *extra):
    return ["--dataset", f"folder:{folder}", "--workdir", str(workdir), "--methods", "ce",
            "--n-per-class", "1", "--seeds", "0", "--width-multiplier", "0.0625",
            "--max-steps", "2", "--teacher-max-steps", "2", "--batch-size", "8",
            "--teacher-batch-size", "8", "--val-fraction", "0.2", "--no-progress", *extra]


def _usage_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        distill.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:"), err
    return err[0]


@pytest.mark.slow
def test_rerun_with_other_settings_or_teacher_is_refused(image_folder, tmp_path, capsys,
                                                         monkeypatch):
    """A finished grid rerun with another learning rate, another teacher recipe or a
    teacher artifact of another architecture stops with one line; it never shows the old
    results as if they were the new ones."""
    monkeypatch.setenv("JKT_CACHE", str(tmp_path / "cache"))
    work = tmp_path / "w"
    rows = distill.main(_inproc_argv(image_folder, work))
    assert [r["method"] for r in rows] == ["ce"]
    capsys.readouterr()
    run = json.loads((work / "runs" / "ce" / "n1_seed0" / "config.json").read_text())
    assert run["train"]["optim"]["learning_rate"] == 3e-3 and run["teacher"]["arch"] == "vgg9"
    line = _usage_error(_inproc_argv(image_folder, work, "--lr", "0.5"), capsys)
    assert "run ce/n1_seed0" in line and "train.optim.learning_rate (0.003 -> 0.5)" in line
    line = _usage_error(_inproc_argv(image_folder, work, "--teacher-lr", "0.5"), capsys)
    assert "the teacher" in line and "optim.learning_rate" in line
    line = _usage_error(_inproc_argv(image_folder, tmp_path / "w2", "--teacher",
                                     str(work / "teacher" / "artifact"), "--config.teacher",
                                     "vgg4"), capsys)
    assert "holds a vgg9" in line and "teacher is a vgg4" in line
    # Changing only what does not change the numbers is fine.
    again = distill.main(_inproc_argv(image_folder, work, "--checkpoint-every", "7"))
    assert [{**r, "skipped": True} for r in rows] == again


def test_one_class_dataset_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("JKT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "only" / "cat").mkdir(parents=True)
    for i in range(12):
        Image.fromarray(np.full((32, 32, 3), i * 9, np.uint8)).save(
            tmp_path / "only" / "cat" / f"{i}.png")
    line = _usage_error(_inproc_argv(tmp_path / "only", tmp_path / "w"), capsys)
    assert "needs at least 2" in line


@pytest.mark.slow
def test_ctrl_c_exits_quietly_and_the_same_command_resumes(image_folder, tmp_path,
                                                          jax_cache_dir):
    env = _env(tmp_path, jax_cache_dir)
    work = tmp_path / "w"
    cmd = _cmd(image_folder, work, "--checkpoint-every", "1", "--teacher-max-steps", "40",
               "--methods", "ce", "--n-per-class", "1")
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    ckpt_dir = work / "teacher" / "run" / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if ckpt_dir.is_dir() and any(p.name.isdigit() for p in ckpt_dir.iterdir()):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("interrupted")
    assert not (work / ".lock").exists()
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    history = [json.loads(line)["step"] for line in
               (work / "teacher" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert history == sorted(set(history)) and history[-1] == 40
