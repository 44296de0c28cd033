"""Tests for experiments.bench (the harness, not the speed) and its PyTorch reference.

The harness runs in-process on one fake CPU device with tiny settings; the reference is
checked to compute the same loss terms as ``jkt``'s own train step on copied weights.
"""

import importlib.util
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import bench
from experiments.configs import bench as configs
from jkt import models
from jkt.train import Objective
from jkt.train.step import make_train_step

HAS_TORCH = importlib.util.find_spec("torch") is not None


def test_table1_step_counts():
    assert configs.table1_student_steps() == 261_500
    assert configs.teacher_steps() == 500 * 391


def test_projection_from_fake_speeds():
    names = set(bench.TABLE1_PROXY.values()) | {bench.TEACHER_PROXY}
    results = {n: {"jkt": {"median_ms": 1.0}, "torch": None} for n in names}
    p = bench.project_table1(results, "jkt")
    expected = (6 * 261_500 + 195_500) * 1.0 / 6e4
    assert p["minutes"] == pytest.approx(expected)
    assert bench.project_table1(results, "torch")["minutes"] is None
    del results["vgg9:ce"]
    assert bench.project_table1(results, "jkt")["missing"] == ["vgg9:ce"]


def test_fused_projection_and_members():
    names = set(bench.TABLE1_FUSED) | {bench.TEACHER_PROXY}
    results = {n: {"jkt": {"median_ms": 2.0}, "torch": None} for n in names}
    p = bench.project_table1(results, "jkt", layout="jkt-fused")
    assert p["minutes"] == pytest.approx((3 * 261_500 + 195_500) * 2.0 / 6e4)
    assert bench.project_table1(results, "jkt")["minutes"] is None  # needs the 6 proxies
    m = bench.METHODS["fused:jac-group"]
    assert m.runs == 3 and m.members == ("ce+jac", "ce+act+jac", "act+jac")
    assert all(x in bench.TABLE1_PROXY for x in m.members)


def _fake_report(ms: dict[str, tuple[float, float | None]], small=False):
    methods = {n: {"jkt": {"median_ms": j}, "torch": None if t is None else {"median_ms": t},
                   "members": []} for n, (j, t) in ms.items()}
    return {"setting": {"small": small}, "methods": methods,
            "projection": {"jkt": {"minutes": 50.0}, "jkt-fused": {"minutes": 40.0}}}


def test_goal_lines_report_measured_ratios():
    lines = bench.goal_lines(_fake_report({
        "ce+act": (2.0, 4.0), "ce+act+jac:label": (3.0, 12.0),
        "vgg9:ce+jac_norm": (5.0, 10.0)}))
    assert "- Jacobian step / activation step <= 1.8: 1.50 (met)" in lines
    assert "- Jacobian step: jkt / eager torch <= 1/3: 0.25 (met)" in lines
    assert "- Jacobian-norm step: jkt / eager torch <= 1/3: 0.50 (missed)" in lines
    assert "- full Jacobian: jkt / eager torch <= 1/4: n/a" in lines
    assert "- Table 1 <= 45 min per seed: 40 min with `jkt-fused` (met)" in lines


def test_methods_are_valid():
    assert {"ce", "ce+act", "ce+act+jac:full", "vgg9:ce+jac_norm"} <= set(bench.METHODS)
    for m in bench.METHODS.values():
        assert m.student in models.MODELS
        assert (m.teacher is None) == (not m.objective.needs_teacher)


def test_bad_method_is_a_usage_error():
    with pytest.raises(SystemExit) as e:
        bench.parse_args(["--methods", "ce,nope"])
    assert e.value.code == 2


def test_harness_small_mode(tmp_path, capsys):
    methods = ["ce", "ce+act", "fused:act-group"]
    report = bench.main(["--methods", ",".join(methods), "--steps", "2", "--warmup", "0",
                         "--batch-size", "8", "--width-multiplier", "0.125", "--devices", "1",
                         "--out", str(tmp_path)])
    out = capsys.readouterr().out
    data = json.loads((tmp_path / "bench.json").read_text())
    md = (tmp_path / "bench.md").read_text()
    assert data["setting"]["small"] and data["setting"]["batch_size"] == 8
    assert list(data["methods"]) == methods == list(report["methods"])
    fused = data["methods"]["fused:act-group"]
    assert fused["torch"] is None and fused["members"] == ["ce+act", "act"]
    assert fused["jkt"]["ms_per_run_step"] == pytest.approx(fused["jkt"]["median_ms"] / 2)
    assert "separate jkt steps" in md  # fused vs its members' separate steps
    for name in methods[:2]:
        r = data["methods"][name]
        for side in ("jkt", "torch") if HAS_TORCH else ("jkt",):
            res = r[side]
            assert res["steps_timed"] == 2
            for key in ("median_ms", "images_per_s", "compile_s"):
                assert math.isfinite(res[key]) and res[key] > 0, (name, side, key)
            assert math.isfinite(res["final_loss"])
        if HAS_TORCH:
            assert r["ratio"] > 0
        else:
            assert r["torch"] is None and r["ratio"] is None
        assert f"| `{name}` |" in md
    assert "SMALL CPU MODE" in md and "| method | runs | jkt ms/step" in md
    assert "projected Table 1 wall time (jkt): n/a" in md  # needs ce+act and vgg9:ce
    assert md.strip() in out


# ---------------------------------------------------------------------------------------
# The PyTorch reference computes jkt's losses.

IMAGE = (32, 32, 3)  # VGG-9 pools five times
FAST = {"xla_backend_optimization_level": 0}  # checks maths, not speed
K = 5
MEAN, STD = (0.5, 0.45, 0.4), (0.25, 0.25, 0.3)


def _jkt_terms(objective, student, s_vars, teacher, t_vars, images, labels):
    """jkt's own train step (no augmentation) on one batch: the pre-update loss terms."""
    import optax

    from jkt.train import TrainState

    tx = optax.adam(1e-3)  # the state is built eagerly: only the step is compiled
    state = TrainState(step=jnp.zeros((), jnp.int32), params=s_vars["params"],
                       batch_stats=s_vars["batch_stats"], opt_state=tx.init(s_vars["params"]),
                       rng=jax.random.key_data(jax.random.key(0)), tx=tx)
    step = make_train_step(student, objective, mean=MEAN, std=STD, augment=False,
                           teacher_model=teacher)
    batch = {"image": images, "label": labels}
    _, metrics = jax.jit(step, compiler_options=FAST)(state, batch, t_vars)
    return {k: float(v) for k, v in metrics.items()}


@pytest.mark.skipif(not HAS_TORCH, reason="torch not installed")
@pytest.mark.parametrize("objective,teacher_arch", [
    (Objective(ce=1, act=1, jac=1, att=1, att_jac=1, estimator="top",
               att_pairs=(("pool1", "pool1"), ("pool2", "pool2")),
               att_jac_pair=("pool2", "pool2")), "vgg9"),
    (Objective(ce=1, act=0.5, jac=1, jac_norm=0.1, estimator="full", normalize=True), "vgg4"),
], ids=["top+att+att_jac", "full+normalize+jac_norm"])
def test_torch_reference_matches_jkt(objective, teacher_arch):
    import torch

    from experiments import torch_reference as tr

    width = 0.125
    student = models.create("vgg4", K, width_multiplier=width)
    teacher = models.create(teacher_arch, K, width_multiplier=width)
    x0 = jnp.zeros((1, *IMAGE))
    s_vars = jax.device_get(student.init(jax.random.key(1), x0))
    t_vars = jax.device_get(teacher.init(jax.random.key(2), x0))
    # Non-trivial running statistics, so that the teacher's inference mode matters.
    t_vars["batch_stats"] = jax.tree.map(lambda a: a + 0.1, t_vars["batch_stats"])
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, *IMAGE), np.uint8)
    labels = rng.integers(0, K, 4).astype(np.int32)

    want = _jkt_terms(objective, student, s_vars, teacher, t_vars, images, labels)

    t_student = tr.load_flax_variables(tr.create("vgg4", K, width), s_vars).train()
    t_teacher = tr.load_flax_variables(tr.create(teacher_arch, K, width), t_vars).eval()
    x = tr.normalize(torch.from_numpy(images), MEAN, STD)
    total, terms = tr.compute_losses(tr.supported(objective), t_student,
                                     t_teacher, x, torch.from_numpy(labels).long())
    got = {k: float(v.detach()) for k, v in terms.items()}
    assert set(got) == set(want) - {"loss", "accuracy", "agreement"}
    for k, v in got.items():
        assert v == pytest.approx(want[k], rel=2e-3, abs=1e-6), k
    assert float(total.detach()) == pytest.approx(want["loss"], rel=2e-3)


@pytest.mark.skipif(not HAS_TORCH, reason="torch not installed")
def test_torch_augment_is_a_crop_and_flip():
    import torch

    from experiments import torch_reference as tr

    images = torch.arange(2 * 6 * 6 * 3, dtype=torch.int32).reshape(2, 6, 6, 3) % 251 + 1
    out = tr.augment(images.to(torch.uint8), pad=0)
    for b in range(2):
        assert torch.equal(out[b], images[b].to(torch.uint8)) or torch.equal(
            out[b], images[b].to(torch.uint8).flip(1))
    padded = tr.augment(images.to(torch.uint8), pad=2)
    assert padded.shape == images.shape and padded.dtype == torch.uint8


def test_gpu_script_names_valid_methods_and_flags():
    """``experiments/gpu_bench.sh`` (the prepared device check) must not rot: every
    method it names exists and every flag it passes to the benchmark parses."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "experiments" / "gpu_bench.sh").read_text()
    calls = re.findall(r"-m experiments\.bench (.*?)2>&1", text, flags=re.S)
    assert len(calls) == 2
    for call in calls:
        tokens = call.replace("\\\n", " ").split()
        flags = [t for t in tokens if t.startswith("--")]
        for m in re.findall(r"--methods (\S+)", " ".join(tokens)):
            assert set(m.split(",")) <= set(bench.METHODS), m
        known = {s for a in bench.build_parser()._actions for s in a.option_strings}
        assert set(flags) <= known, set(flags) - known
