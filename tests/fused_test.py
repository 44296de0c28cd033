"""Tests for jkt.train.fused and fused runs of ``train_and_evaluate``: fused runs equal separate
runs, the teacher is computed once per step, resume and errors."""

import json
import re

import chex
import jax
import numpy as np
import pytest

from jkt import parallel
from jkt.data.batches import BatchStream, make_batch
from jkt.data.types import Split
from jkt.models import VGG
from jkt.train import fused, loop, optim, step
from jkt.train.methods import TABLE1_METHODS, method_objective
from jkt.train.objective import Objective
from jkt.train.state import create_train_state

IMAGE_SHAPE = (16, 16, 3)
K = 4
BATCH = 16
MEAN, STD = (0.5, 0.45, 0.4), (0.25, 0.25, 0.3)


def _split(n, seed=0):
    rng = np.random.default_rng(seed)
    return Split(rng.integers(0, 256, (n, *IMAGE_SHAPE), dtype=np.uint8),
                 rng.integers(0, K, n).astype(np.int32))


def _student():
    return VGG(config=(8, "M"), num_classes=K)


def _teacher_model():
    return VGG(config=(4, "M", 8, "M"), num_classes=K)


def _host(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))


ADAM = optim.Optimizer("adam")
RATE = np.float32(1e-2)


def _step(model, objectives, **kw):
    """The train step of ``objectives``' runs with the rate and their weights bound."""
    train_step = step.make_train_step(model, objectives, ADAM, mean=MEAN, std=STD, **kw)
    weights = fused.weight_matrix(objectives)
    return lambda states, batch, tv: train_step(states, batch, tv, RATE, weights)


@pytest.fixture(scope="module")
def teacher():
    model = _teacher_model()
    variables = jax.jit(model.init)(jax.random.key(1), np.zeros((1, *IMAGE_SHAPE), np.float32))
    return model, _host(variables)


def _separate(objective, teacher, split, steps, mesh):
    t_model, t_vars = teacher
    model = _student()
    one = jax.jit(_step(model, [objective],
                        teacher_model=t_model if objective.needs_teacher else None))
    state = create_train_state(model, ADAM, jax.random.key(0), IMAGE_SHAPE, mesh)
    stream = BatchStream(len(split), BATCH, seed=3)
    metrics = []
    for i in range(steps):
        state, m = one(state, make_batch(split, stream.indices(i), mesh), t_vars)
        metrics.append(_host(jax.tree.map(lambda v: v[0], m)))
    return _host(state.params), metrics


def _fused(objectives, teacher, split, steps, mesh, mode):
    t_model, t_vars = teacher
    model = _student()
    group = jax.jit(_step(model, objectives, teacher_model=t_model, mode=mode))
    one = create_train_state(model, ADAM, jax.random.key(0), IMAGE_SHAPE, mesh)
    states = fused.pack_states([one] * len(objectives))
    stream = BatchStream(len(split), BATCH, seed=3)
    metrics = []
    for i in range(steps):
        states, m = group(states, make_batch(split, stream.indices(i), mesh), t_vars)
        metrics.append(_host(m))
    return states, metrics


GROUPS = {
    "table1-jac/unroll": (["ce+jac", "ce+act+jac", "act+jac"], {}, "unroll"),
    "table1-jac/vmap": (["ce+jac", "ce+act+jac", "act+jac"], {}, "vmap"),
    "table1-act/unroll": (["ce+act", "act"], {}, "unroll"),
    "random-probe/unroll": (["ce+jac", "act+jac"], {"estimator": "random"}, "unroll"),
    # Table 1's default: the label-free row differentiates the teacher's top output.
    "table1-jac-mixed/unroll": (["ce+jac", "ce+act+jac", "act+jac"],
                                {"per_method": {"act+jac": {"estimator": "top"}}}, "unroll"),
}


def _objectives(methods, overrides):
    common = {k: v for k, v in overrides.items() if k != "per_method"}
    own = overrides.get("per_method", {})
    return [method_objective(m, **common, **own.get(m, {})) for m in methods]


@pytest.mark.parametrize("name", list(GROUPS))
def test_fused_runs_equal_separate_runs(name, teacher):
    methods, overrides, mode = GROUPS[name]
    objectives = _objectives(methods, overrides)
    split, mesh = _split(48), parallel.make_mesh(jax.devices()[:2])
    states, f_metrics = _fused(objectives, teacher, split, 3, mesh, mode)
    for r, o in enumerate(objectives):
        params, metrics = _separate(o, teacher, split, 3, mesh)
        run_params = fused.unpack_state(states, r, len(objectives)).params
        chex.assert_trees_all_close(_host(run_params), params, rtol=2e-4, atol=2e-6)
        for fm, m in zip(f_metrics, metrics, strict=True):
            for k, v in m.items():  # the fused run reports the union's terms too
                np.testing.assert_allclose(fm[k][r], v, rtol=2e-4, atol=1e-6, err_msg=k)


def _count_convolutions(objectives, teacher, mode):
    """Convolutions in the compiled fused step, with the models' convolutions in XLA's
    form (``conv_impl="xla"``; the CPU default computes them as matrix products)."""
    t_model, t_vars = teacher
    t_model = t_model.clone(conv_impl="xla")
    model = _student().clone(conv_impl="xla")
    mesh = parallel.make_mesh(jax.devices()[:1])
    one = create_train_state(model, ADAM, jax.random.key(0), IMAGE_SHAPE, mesh)
    states = fused.pack_states([one] * len(objectives))
    split = _split(BATCH)
    group = _step(model, objectives, teacher_model=t_model, mode=mode)
    hlo = jax.jit(group).lower(states, make_batch(split, np.arange(BATCH), mesh),
                               t_vars).compile().as_text()
    return len(re.findall(r"\bconvolution\(", hlo))


def test_unrolled_fusion_computes_the_teacher_once(teacher):
    """Each extra run adds only the student's convolutions: the teacher's forward pass and
    input-Jacobian (2 conv layers -> 4 convolutions) appear once however many runs."""
    o = method_objective("ce+act+jac")
    c1, c2, c3 = (_count_convolutions([o] * r, teacher, "unroll") for r in (1, 2, 3))
    per_run = c2 - c1
    assert c3 - c2 == per_run
    assert c1 - per_run == 4, (c1, c2, c3)


def test_mixed_estimators_add_only_the_teacher_jacobian_of_the_other_output(teacher):
    """Fusing a run that differentiates the teacher's top output with runs that
    differentiate the true label costs one more teacher pullback (2 conv layers -> 2
    convolutions) and that run's own student convolutions, nothing else."""
    label, top = (method_objective("act+jac", estimator=e) for e in ("label", "top"))
    same = _count_convolutions([label, label, label], teacher, "unroll")
    mixed = _count_convolutions([label, label, top], teacher, "unroll")
    assert mixed - same == 2, (same, mixed)


def test_fusion_groups_of_table1():
    objectives = [method_objective(m) for m in TABLE1_METHODS]
    groups = fused.fusion_groups(objectives)
    named = [[TABLE1_METHODS[i] for i in g] for g in groups]
    assert named == [["ce"], ["ce+act", "act"], ["ce+jac", "ce+act+jac", "act+jac"]]
    label_free = [method_objective(m, estimator="top" if m == "act+jac" else "label")
                  for m in TABLE1_METHODS]
    assert fused.fusion_groups(label_free)[2:] == [[2, 3], [5]]  # one estimator per step
    assert fused.fusion_groups(label_free, mixed_estimators=True) == groups
    union = fused.union_objective([objectives[i] for i in groups[2]])
    assert (union.ce, union.act, union.jac) == (1.0, 1.0, 1.0)
    np.testing.assert_array_equal(fused.weight_matrix([objectives[1], objectives[4]])[:, :2],
                                  [[1, 1], [0, 1]])


def test_fusion_errors_are_clear(teacher):
    with pytest.raises(ValueError, match="must share \\['estimator'\\]"):
        fused.union_objective([method_objective("ce+jac"),
                               method_objective("ce+jac", estimator="top")])
    mixed = [method_objective("ce+jac"), method_objective("act+jac", estimator="top")]
    with pytest.raises(ValueError, match="must share \\['estimator'\\]"):
        step.make_train_step(_student(), mixed, ADAM, mean=MEAN, std=STD,
                             teacher_model=teacher[0], mode="vmap")
    assert fused.union_objective(mixed, mixed_estimators=True).estimator == "label"
    with pytest.raises(ValueError, match="no objectives"):
        fused.union_objective([])
    with pytest.raises(ValueError, match="unknown fusion mode 'pmap'"):
        step.make_train_step(_student(), [Objective()], ADAM, mean=MEAN, std=STD, mode="pmap")
    mesh = parallel.make_mesh(jax.devices()[:1])
    states = [create_train_state(_student(), o, jax.random.key(0), IMAGE_SHAPE, mesh)
              for o in (ADAM, optim.Optimizer("sgd"))]
    with pytest.raises(ValueError, match="share one optimiser"):
        fused.stack_states(states)
    three = _step(_student(), [Objective()] * 3)
    with pytest.raises(ValueError, match="built for 3 runs"):
        three(fused.stack_states([states[0]] * 2), make_batch(_split(BATCH), np.arange(BATCH),
                                                              mesh), None)


# ---------------------------------------------------------------------------------------
# The loop: fused == separate, resume after a kill, finished runs skipped.


class _Killed(BaseException):
    """Stands for the process being killed."""


@pytest.fixture
def tiny_models(monkeypatch):
    monkeypatch.setattr(loop, "create_model", lambda name, n, **o: _student())


def _teacher_artifact(teacher):
    """A frozen ``checkpoint.Teacher`` around the module-scoped tiny teacher."""
    from jkt.checkpoint import Teacher, TeacherMeta

    model, variables = teacher
    meta = TeacherMeta(arch="tiny", num_classes=K, input_size=IMAGE_SHAPE, mean=MEAN, std=STD,
                       dataset="synthetic")
    return Teacher(meta=meta, model=model, variables=variables)


LOOP_METHODS = ("ce+act", "act")


def _cfg(method):
    return loop.TrainConfig(objective=method_objective(method), max_steps=6, log_every=2,
                            checkpoint_every=2, eval_batch_size=8, progress=False,
                            optim=optim.OptimConfig(batch_size=8, epochs=1))


def _run_fused(workdir, teacher, train, mesh):
    return loop.train_and_evaluate(
        [_cfg(m) for m in LOOP_METHODS], train, {"val": _split(12, seed=9)}, num_classes=K,
        mean=MEAN, std=STD, workdirs=[workdir / m for m in LOOP_METHODS],
        teacher=_teacher_artifact(teacher), mesh=mesh, descs=list(LOOP_METHODS))


@pytest.mark.slow
def test_fused_loop_equals_separate_loop_and_resumes(tiny_models, monkeypatch, tmp_path,
                                                     teacher, wait_for_saves):
    mesh = parallel.make_mesh(jax.devices()[:2])
    train = _split(20)
    separate = {m: loop.train_and_evaluate(
        [_cfg(m)], train, {"val": _split(12, seed=9)}, num_classes=K, mean=MEAN, std=STD,
        workdirs=[tmp_path / "separate" / m], teacher=_teacher_artifact(teacher), mesh=mesh)[0]
        for m in LOOP_METHODS}
    reference = _run_fused(tmp_path / "fused", teacher, train, mesh)
    for m, res in zip(LOOP_METHODS, reference, strict=True):
        assert res.accuracy == separate[m].accuracy
        assert set(res.final_metrics) == set(separate[m].final_metrics), m
        chex.assert_trees_all_close(res.final_metrics, separate[m].final_metrics, rtol=1e-4)
        _, got = loop.final_variables(tmp_path / "fused" / m, _cfg(m), K, IMAGE_SHAPE, mesh)
        _, want = loop.final_variables(tmp_path / "separate" / m, _cfg(m), K, IMAGE_SHAPE,
                                       mesh)
        chex.assert_trees_all_close(_host(got), _host(want), rtol=1e-4, atol=1e-6)
    act_log = [json.loads(x) for x in (tmp_path / "fused" / "act" / "metrics.jsonl")
               .read_text().splitlines()]
    assert [r["step"] for r in act_log] == [2, 4, 6] and "ce" not in act_log[0]

    real_make_batch, calls = loop.make_batch, []

    def make_batch_then_die(*args, **kwargs):
        calls.append(args)
        if len(calls) == 5:  # steps 0-3 ran, checkpoints 2 and 4 were written
            raise _Killed
        return real_make_batch(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(loop, "make_batch", make_batch_then_die)
        with pytest.raises(_Killed):
            _run_fused(tmp_path / "killed", teacher, train, mesh)
    for m in LOOP_METHODS:
        wait_for_saves(tmp_path / "killed" / m / "checkpoints")
    resumed = _run_fused(tmp_path / "killed", teacher, train, mesh)
    for m, res, ref in zip(LOOP_METHODS, resumed, reference, strict=True):
        assert res.resumed_from == 4 and res.accuracy == ref.accuracy
        _, got = loop.final_variables(tmp_path / "killed" / m, _cfg(m), K, IMAGE_SHAPE, mesh)
        _, want = loop.final_variables(tmp_path / "fused" / m, _cfg(m), K, IMAGE_SHAPE, mesh)
        chex.assert_trees_all_equal(_host(got), _host(want))  # bit-exact

    monkeypatch.setattr(loop, "create_model", lambda *a, **k: pytest.fail("rebuilt a model"))
    again = _run_fused(tmp_path / "killed", teacher, train, mesh)
    assert [r.accuracy for r in again] == [r.accuracy for r in resumed]


def test_fused_loop_rejects_runs_that_differ_beyond_the_objective(tmp_path):
    cfgs = [_cfg("ce+act"), loop.TrainConfig(objective=method_objective("act"), seed=1)]
    with pytest.raises(ValueError, match="differ only in their objective"):
        loop.train_and_evaluate(cfgs, _split(8), {}, num_classes=K, mean=MEAN, std=STD,
                                workdirs=[tmp_path / "a", tmp_path / "b"])


@pytest.mark.slow
def test_runs_checkpointed_at_different_steps_are_trained_one_by_one(
        tiny_models, monkeypatch, tmp_path, teacher, wait_for_saves):
    """A fused group whose members were left at different steps (e.g. one was started with
    ``--fusion off``) falls back to separate runs, each resuming its own checkpoint."""
    mesh = parallel.make_mesh(jax.devices()[:1])
    train = _split(20)
    real_make_batch, calls = loop.make_batch, []

    def make_batch_then_die(*args, **kwargs):
        calls.append(args)
        if len(calls) == 4:  # steps 0-2 ran, checkpoint 2 was written
            raise _Killed
        return real_make_batch(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(loop, "make_batch", make_batch_then_die)
        with pytest.raises(_Killed):
            loop.train_and_evaluate([_cfg("act")], train, {"val": _split(12, seed=9)},
                                    num_classes=K, mean=MEAN, std=STD,
                                    workdirs=[tmp_path / "act"],
                                    teacher=_teacher_artifact(teacher), mesh=mesh)
    wait_for_saves(tmp_path / "act" / "checkpoints")
    fused_calls = []
    real_step = step.make_train_step
    monkeypatch.setattr(step, "make_train_step",
                        lambda model, objectives, *a, **k: fused_calls.append(len(objectives))
                        or real_step(model, objectives, *a, **k))
    results = _run_fused(tmp_path, teacher, train, mesh)
    # No step fusing the two runs was built: each trained alone (a fused step of one run).
    assert fused_calls == [1, 1]
    assert [r.resumed_from for r in results] == [None, 2]
    assert [r.steps for r in results] == [6, 6]
