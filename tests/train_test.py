"""Tests for jkt.train: data-parallel parity, the loss composer, the loop (NaN guard,
config errors, resume) and the optimiser recipes.

JAX compilation on CPU dominates the runtime, so the models are library VGGs with a tiny
``config`` (one or two conv blocks) on 16x16 images, and the many-objective sweep compiles
with XLA's backend optimisation off (it checks maths, not speed).
"""

import dataclasses
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jkt import losses, parallel
from jkt.data.batches import BatchStream, make_batch
from jkt.data.types import Split
from jkt.models import VGG, param_count
from jkt.train import loop, optim
from jkt.train.objective import METHODS, Objective, compose_losses, method_objective
from jkt.train.state import create_train_state
from jkt.train.step import make_train_step

IMAGE_SHAPE = (16, 16, 3)
NUM_CLASSES = 4
BATCH = 16
MEAN, STD = (0.5, 0.45, 0.4), (0.25, 0.25, 0.3)
FAST = {"xla_backend_optimization_level": 0}  # compile options for the objective sweep


def _split(n: int, seed: int = 0, num_classes: int = NUM_CLASSES) -> Split:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, *IMAGE_SHAPE), dtype=np.uint8)
    return Split(images, rng.integers(0, num_classes, n).astype(np.int32))


def _tiny(num_classes: int = NUM_CLASSES, width: int = 8, **options) -> VGG:
    """A one-block VGG (conv-BN-ReLU, pool1, global pool, Dense): cheap to compile."""
    return VGG(config=(width, "M"), num_classes=num_classes, **options)


def _init(model, seed: int):
    x = jnp.zeros((1, *IMAGE_SHAPE), jnp.float32)
    return jax.jit(model.init)(jax.random.key(seed), x)


def _host(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))


def _one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert msg and "\n" not in msg, f"not a one-line message: {msg!r}"
    return msg


@pytest.fixture(scope="module")
def split():
    return _split(64)


@pytest.fixture(scope="module")
def teacher():
    model = _tiny(width=4)
    return model, _host(_init(model, seed=1))


# ---------------------------------------------------------------------------------------
# 1-2. An 8-device step equals the 1-device step, and compiles once.


@pytest.fixture(scope="module")
def parity_runs(split, teacher):
    """Three ce+act+jac steps (different batches) on a 1-device and an 8-device mesh."""
    t_model, t_vars = teacher
    model = _tiny()
    objective = method_objective("ce+act+jac")  # label estimator
    tx = optax.adam(1e-3)
    stream = BatchStream(len(split), BATCH, seed=1)
    chex.clear_trace_counter()
    runs = {}
    for n_dev in (1, 8):
        mesh = parallel.make_mesh(jax.devices()[:n_dev])
        rep = parallel.replicated(mesh)
        py_step = make_train_step(model, objective, mean=MEAN, std=STD, teacher_model=t_model)
        if n_dev == 8:  # the counter is keyed by call site: wrap only one of the two
            py_step = chex.assert_max_traces(py_step, n=1)
        step = jax.jit(py_step, donate_argnums=0, out_shardings=(rep, rep))
        state = create_train_state(model, tx, jax.random.key(0), IMAGE_SHAPE, mesh)
        tv = jax.device_put(t_vars, rep)
        # The state is donated to each step: keep host copies.
        run = {"mesh": mesh, "init_params": _host(state.params), "batches": [], "states": [],
               "metrics": [], "teacher_vars": tv}
        for i in range(3):
            batch = make_batch(split, stream.indices(i), mesh)
            run["batches"].append(batch)
            state, metrics = step(state, batch, tv)
            run["states"].append(_host(state))
            run["metrics"].append(_host(metrics))
        run.update(step=step, last_state=state, model=model, tx=tx)
        runs[n_dev] = run
    return runs


def test_eight_device_step_equals_one_device_step(parity_runs):
    one, eight = parity_runs[1], parity_runs[8]
    for i in range(3):  # after 1, 2 and 3 steps
        s1, s8 = one["states"][i], eight["states"][i]
        chex.assert_trees_all_close(s8.params, s1.params, rtol=1e-4, atol=1e-5)
        chex.assert_trees_all_close(s8.batch_stats, s1.batch_stats, rtol=1e-4, atol=1e-5)
        chex.assert_trees_all_close(eight["metrics"][i], one["metrics"][i], rtol=1e-4,
                                    atol=1e-5)
        assert int(s8.step) == int(s1.step) == i + 1
    assert set(one["metrics"][0]) == {"loss", "ce", "act", "jac", "accuracy", "agreement"}
    # The steps did something: parameters moved away from the initial state.
    assert not np.allclose(one["states"][1].params["fc"]["kernel"],
                           one["init_params"]["fc"]["kernel"])


def test_eight_device_batch_is_sharded_and_state_replicated(parity_runs):
    eight = parity_runs[8]
    mesh = eight["mesh"]
    assert mesh.devices.size == 8
    for batch in eight["batches"]:
        for x in jax.tree.leaves(batch):
            assert x.sharding.is_equivalent_to(parallel.batch_sharding(mesh), x.ndim)
            assert len(x.sharding.device_set) == 8
            shard_shapes = {s.data.shape[0] for s in x.addressable_shards}
            assert shard_shapes == {BATCH // 8}
    chex.assert_shape(eight["batches"][0]["image"], (BATCH, *IMAGE_SHAPE))
    for state in (eight["last_state"], eight["teacher_vars"]):
        for x in jax.tree.leaves(state):
            assert x.sharding.is_fully_replicated
            assert len(x.sharding.device_set) == 8


def test_teacher_variables_are_not_donated_or_changed(parity_runs, teacher):
    _, t_vars = teacher
    for run in parity_runs.values():  # three donating steps later
        assert not any(x.is_deleted() for x in jax.tree.leaves(run["teacher_vars"]))
        chex.assert_trees_all_equal(_host(run["teacher_vars"]), t_vars)


def test_step_compiles_once(parity_runs):
    # chex.assert_max_traces(n=1) would have raised inside the fixture on a retrace; three
    # different batches went through one executable.
    eight = parity_runs[8]
    assert len(eight["batches"]) == 3
    assert not np.array_equal(np.asarray(eight["batches"][0]["label"]),
                              np.asarray(eight["batches"][1]["label"]))
    assert eight["step"]._cache_size() == 1
    # A fresh state (same optimiser object: ``tx`` is static, part of the treedef) does
    # not retrace either.
    state = create_train_state(eight["model"], eight["tx"], jax.random.key(5), IMAGE_SHAPE,
                               eight["mesh"])
    eight["step"](state, eight["batches"][2], eight["teacher_vars"])
    assert eight["step"]._cache_size() == 1


# ---------------------------------------------------------------------------------------
# 3. Every objective composes and decreases its total loss on a fixed batch.

OBJECTIVES = {
    **METHODS,
    "jac_norm": Objective(ce=1, jac_norm=1),
    **{f"ce+act+jac/{e}": method_objective("ce+act+jac", estimator=e)
       for e in ("top", "random", "rademacher", "jvp", "full")},
    "ce+act+jac/normalize": method_objective("ce+act+jac", normalize=True),
    "attention": Objective(ce=1, act=1, att=1, att_jac=1, att_pairs=(("pool1", "pool1"),),
                           att_jac_pair=("pool1", "pool1"), estimator="top"),
}


@pytest.fixture(scope="module")
def fixed_batch(split):
    mesh = parallel.make_mesh(jax.devices()[:1])
    model = _tiny()
    state = create_train_state(model, optax.adam(1e-3), jax.random.key(0), IMAGE_SHAPE, mesh)
    return model, state, make_batch(split, np.arange(BATCH), mesh)


def _fast_step(model, objective, teacher_model):
    step = make_train_step(model, objective, mean=MEAN, std=STD, augment=False,
                           teacher_model=teacher_model if objective.needs_teacher else None)
    return jax.jit(step, compiler_options=FAST)


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_objective_composes_and_total_loss_decreases(name, fixed_batch, teacher):
    objective = OBJECTIVES[name]
    model, state, batch = fixed_batch
    t_model, t_vars = teacher
    step = _fast_step(model, objective, t_model)
    tv = t_vars if objective.needs_teacher else None
    history = []
    for _ in range(15):
        state, metrics = step(state, batch, tv)
        history.append(_host(metrics))
    chex.assert_tree_all_finite(history)
    active = {t for t in ("ce", "act", "jac", "jac_norm", "att", "att_jac")
              if getattr(objective, t) > 0}
    expected_keys = {"loss", "accuracy", *active} | ({"agreement"} if tv is not None else set())
    assert set(history[0]) == expected_keys
    for m in history:  # the total is the weighted sum of the logged terms
        np.testing.assert_allclose(m["loss"], sum(getattr(objective, t) * m[t] for t in active),
                                   rtol=1e-5, atol=1e-6)
    losses_ = [m["loss"] for m in history]
    first, last = np.mean(losses_[:2]), np.mean(losses_[-2:])
    assert last < first, f"{name}: total loss did not decrease: {losses_}"


# ---------------------------------------------------------------------------------------
# 4. The teacher is frozen: no gradient, not in the state.


def test_teacher_gets_no_gradient_and_is_not_in_state(fixed_batch, teacher):
    model, state, batch = fixed_batch
    t_model, t_vars = teacher
    objective = Objective(ce=1, act=1, jac=1, att=1, att_pairs=(("pool1", "pool1"),))
    step = make_train_step(model, objective, mean=MEAN, std=STD, augment=False,
                           teacher_model=t_model)
    tv = jax.tree.map(jnp.asarray, t_vars)

    def loss_wrt_teacher(tv):
        return step(state, batch, tv)[1]["loss"]

    loss, t_grads = jax.jit(jax.value_and_grad(loss_wrt_teacher), compiler_options=FAST)(tv)
    assert np.isfinite(loss) and loss > 0
    chex.assert_trees_all_equal(_host(t_grads), jax.tree.map(np.zeros_like, t_vars))
    new_state, _ = jax.eval_shape(step, state, batch, tv)
    # The state holds the student only: its leaves are the student's params, batch stats,
    # two Adam moments of the params, counters and the rng.
    student = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *IMAGE_SHAPE)))
    chex.assert_trees_all_equal_shapes(new_state.params, student["params"])
    chex.assert_trees_all_equal_shapes(new_state.batch_stats, student["batch_stats"])
    n_student = len(jax.tree.leaves(student["params"]))
    n_stats = len(jax.tree.leaves(student["batch_stats"]))
    assert len(jax.tree.leaves(new_state)) == 3 * n_student + n_stats + 1 + 1 + 1
    n_state_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(new_state.params))
    assert n_state_params == param_count(model, IMAGE_SHAPE)
    assert param_count(t_model, IMAGE_SHAPE) != n_state_params  # distinguishable sizes


# ---------------------------------------------------------------------------------------
# 5. Two-head (LwF) students: CE on the target head, matching on the source head.

D = 4 * 4 * 3  # hand-made linear "networks" on 4x4x3 inputs


def _linear_nets(seed=0, source=6, target=NUM_CLASSES):
    k = jax.random.split(jax.random.key(seed), 4)
    w_target = jax.random.normal(k[0], (D, target))
    w_source = jax.random.normal(k[1], (D, source))
    w_teacher = jax.random.normal(k[2], (D, source))
    x = jax.random.normal(k[3], (5, 4, 4, 3))

    def student_fn(z):
        flat = z.reshape(z.shape[0], -1)
        out = {"target": flat @ w_target, "source": flat @ w_source}
        return (out, {}), {"aux": jnp.ones(3)}

    def teacher_fn(z):
        return z.reshape(z.shape[0], -1) @ w_teacher, {}

    return w_target, w_source, w_teacher, x, student_fn, teacher_fn


@pytest.mark.parametrize("estimator", ["top", "full"])
def test_two_head_terms_use_the_right_heads(estimator):
    w_target, w_source, w_teacher, x, student_fn, teacher_fn = _linear_nets()
    labels = jnp.array([0, 1, 2, 3, 1])
    objective = Objective(ce=1, act=2, jac=3, estimator=estimator)
    composed = jax.jit(lambda x, labels: compose_losses(objective, student_fn, teacher_fn, x,
                                                        labels, jax.random.key(0)))
    total, (terms, stats, aux) = composed(x, labels)
    flat = x.reshape(5, -1)
    s_target, s_source, t = flat @ w_target, flat @ w_source, flat @ w_teacher
    ce = jnp.mean(losses.cross_entropy(s_target, labels))
    act = jnp.mean(losses.match_activations(s_source, t))
    if estimator == "top":
        top = jnp.argmax(t, -1)  # the Jacobian of a linear map is its weight column
        s_jac, t_jac = w_source[:, top].T, w_teacher[:, top].T
    else:  # full: (B, K, D)
        s_jac = jnp.broadcast_to(w_source.T, (5, 6, D))
        t_jac = jnp.broadcast_to(w_teacher.T, (5, 6, D))
    jac = jnp.mean(losses.match_jacobians(s_jac, t_jac))
    chex.assert_trees_all_close(terms, {"ce": ce, "act": act, "jac": jac}, rtol=1e-5)
    np.testing.assert_allclose(total, ce + 2 * act + 3 * jac, rtol=1e-5)
    chex.assert_trees_all_close(stats, {
        "accuracy": jnp.mean(jnp.argmax(s_target, -1) == labels),
        "agreement": jnp.mean(jnp.argmax(s_source, -1) == jnp.argmax(t, -1)),
    })
    chex.assert_trees_all_equal(aux, {"aux": jnp.ones(3)})


def test_two_head_label_estimator_and_single_head_mismatch_are_rejected():
    *_, x, student_fn, teacher_fn = _linear_nets()
    labels = jnp.zeros(5, jnp.int32)
    with pytest.raises(ValueError, match="'top'"):
        compose_losses(Objective(ce=1, jac=1), student_fn, teacher_fn, x, labels,
                       jax.random.key(0))

    def single_head(z):  # 4 outputs, teacher has 6
        (out, feats), aux = student_fn(z)
        return (out["target"], feats), aux

    with pytest.raises(ValueError, match="two-head"):
        compose_losses(Objective(ce=1, act=1), single_head, teacher_fn, x, labels,
                       jax.random.key(0))
    with pytest.raises(ValueError, match="no teacher"):
        compose_losses(Objective(ce=1, act=1), student_fn, None, x, labels, jax.random.key(0))


def test_two_head_student_trains_against_a_six_class_teacher(split):
    mesh = parallel.make_mesh(jax.devices()[:1])
    student = _tiny(source_classes=6)
    t_model = _tiny(num_classes=6, width=4)
    t_vars = _init(t_model, seed=3)
    state = create_train_state(student, optax.adam(1e-3), jax.random.key(0), IMAGE_SHAPE, mesh)
    assert state.params["fc"]["kernel"].shape[-1] == NUM_CLASSES
    assert state.params["fc_source"]["kernel"].shape[-1] == 6
    step = jax.jit(make_train_step(student, method_objective("ce+act+jac", estimator="top"),
                                   mean=MEAN, std=STD, teacher_model=t_model),
                   compiler_options=FAST)
    state, metrics = step(state, make_batch(split, np.arange(BATCH), mesh), t_vars)
    chex.assert_tree_all_finite(metrics)
    assert set(metrics) == {"loss", "ce", "act", "jac", "accuracy", "agreement"}


# ---------------------------------------------------------------------------------------
# 6-8. The loop: NaN guard, configuration errors, resume.


def _loop_cfg(**kw) -> loop.TrainConfig:
    base = dict(objective=Objective(ce=1), augment=True, max_steps=6, log_every=3,
                checkpoint_every=2, eval_batch_size=8, progress=False,
                optim=optim.OptimConfig(batch_size=8, epochs=1))
    return loop.TrainConfig(**{**base, **kw})


def _run(cfg, workdir, mesh, train):
    return loop.train_and_evaluate(cfg, train, {"val": _split(12, seed=9)},
                                   num_classes=NUM_CLASSES, mean=MEAN, std=STD,
                                   workdir=workdir, mesh=mesh)


def _tiny_loop_model(monkeypatch):
    monkeypatch.setattr(loop, "create_model", lambda name, n, **o: _tiny(n, **o))


@pytest.fixture
def tiny_loop(monkeypatch):
    """``train_and_evaluate`` builds the one-block VGG instead of the named model."""
    _tiny_loop_model(monkeypatch)


@pytest.fixture(scope="module")
def nan_run(split, tmp_path_factory):
    """A loop run whose step 3 (0-based) makes the ``ce`` term and the parameters NaN."""
    workdir = tmp_path_factory.mktemp("nan_run")
    mesh = parallel.make_mesh(jax.devices()[:2])
    real = loop.make_train_step

    def make_bad_step(*args, **kwargs):
        step = real(*args, **kwargs)

        def bad_step(state, batch, teacher_variables):
            new, metrics = step(state, batch, teacher_variables)
            bad = state.step == 3
            metrics = {**metrics, "ce": jnp.where(bad, jnp.nan, metrics["ce"])}
            params = jax.tree.map(lambda p: jnp.where(bad, jnp.nan, p), new.params)
            return new.replace(params=params), metrics

        return bad_step

    with pytest.MonkeyPatch.context() as m:
        _tiny_loop_model(m)
        m.setattr(loop, "make_train_step", make_bad_step)
        with pytest.raises(loop.NonFiniteLossError) as excinfo:
            _run(_loop_cfg(log_every=100), workdir, mesh, split)
    return workdir, mesh, excinfo


def test_nan_loss_raises_naming_step_and_term(nan_run):
    workdir, _, excinfo = nan_run
    assert _one_line(excinfo) == "non-finite loss at step 3: ce=nan"
    assert not (workdir / loop.RESULT_FILE).exists()
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        assert all(np.isfinite(v) for v in json.loads(line).values())


def test_nan_loss_leaves_last_checkpoint_finite(nan_run, wait_for_saves):
    """A non-finite loss leaves the last checkpoint untouched: with checkpoint_every=2 and
    a NaN at step 3 (0-based), the loop checks that step's loss before it would save
    checkpoint 4, so the latest checkpoint stays the finite one at step 2."""
    from jkt.checkpoint import TrainCheckpointer

    workdir, mesh, _ = nan_run
    wait_for_saves(workdir / "checkpoints")
    with TrainCheckpointer(workdir / "checkpoints") as ckpt:
        latest = ckpt.latest_step()
        tx = optim.make_optimizer(_loop_cfg().optim, 1)
        target = create_train_state(_tiny(), tx, jax.random.key(0), IMAGE_SHAPE, mesh)
        restored, _ = ckpt.restore(target)
    assert latest <= 3, f"checkpoint {latest} was written from the non-finite step"
    chex.assert_tree_all_finite(restored.params)


def test_loop_fetches_metrics_once_per_log_window_not_per_step(tiny_loop, monkeypatch,
                                                              tmp_path, split):
    """No host sync per step: the metrics of a whole logging window come back in one
    ``jax.device_get`` (here 12 steps, log every 4, checkpoint at 6: fetches after steps
    4, 6 (before the checkpoint), 8 and 12)."""
    fetched = []
    real = jax.device_get

    def counting_device_get(tree):
        if isinstance(tree, list) and tree and isinstance(tree[0], dict) and "loss" in tree[0]:
            fetched.append(len(tree))
        return real(tree)

    monkeypatch.setattr(jax, "device_get", counting_device_get)
    cfg = _loop_cfg(max_steps=12, log_every=4, checkpoint_every=6)
    _run(cfg, tmp_path / "run", parallel.make_mesh(jax.devices()[:2]), split)
    assert fetched == [4, 2, 2, 4]


def test_config_errors_are_one_clear_line():
    cases = [
        (lambda: method_objective("bogus"), "unknown method 'bogus'"),
        (lambda: Objective(ce=-1), "ce=-1"),
        (lambda: Objective(ce=1, jac=1, estimator="hutchinson"), "estimator 'hutchinson'"),
        (lambda: Objective(ce=1, att=1), "att_pairs"),
        (lambda: Objective(ce=1, att_jac=1), "att_jac_pair"),
        (lambda: Objective(ce=0), "every loss weight is zero"),
        (lambda: optim.OptimConfig(name="rmsprop"), "unknown optimiser 'rmsprop'"),
        (lambda: optim.OptimConfig(learning_rate=0), "learning_rate"),
        (lambda: loop.TrainConfig(log_every=0), "log_every must be positive"),
        (lambda: loop.TrainConfig(max_steps=-1), "max_steps must be positive"),
        (lambda: parallel.check_batch_size(12, parallel.make_mesh()),
         "batch size 12 must be a positive multiple of the number of devices in the mesh (8)"),
        (lambda: make_train_step(_tiny(), Objective(ce=1, act=1), mean=MEAN, std=STD),
         "no teacher model"),
    ]
    for make, fragment in cases:
        with pytest.raises(ValueError) as excinfo:
            make()
        assert fragment in _one_line(excinfo), (fragment, str(excinfo.value))


class _Killed(BaseException):
    """Stands for the process being killed (not an ``Exception``: nothing may catch it)."""


def test_resume_after_kill_matches_uninterrupted_run(tiny_loop, monkeypatch, tmp_path, split,
                                                    wait_for_saves):
    mesh = parallel.make_mesh(jax.devices()[:2])
    train = split.take(np.arange(20))  # 20 examples, batch 8: epochs wrap mid-run
    cfg = _loop_cfg(log_every=2)  # the logging window restarts at a resume: align it
    reference = _run(cfg, tmp_path / "reference", mesh, train)
    assert reference.resumed_from is None and reference.steps == 6

    real_make_batch = loop.make_batch
    calls = []

    def make_batch_then_die(*args, **kwargs):
        calls.append(args)
        if len(calls) == 5:  # steps 0-3 ran, checkpoints 2 and 4 were written
            raise _Killed
        return real_make_batch(*args, **kwargs)

    workdir = tmp_path / "resumed"
    with monkeypatch.context() as m:
        m.setattr(loop, "make_batch", make_batch_then_die)
        with pytest.raises(_Killed):
            _run(cfg, workdir, mesh, train)
    assert not (workdir / loop.RESULT_FILE).exists()
    wait_for_saves(workdir / "checkpoints")

    resumed = _run(cfg, workdir, mesh, train)
    assert resumed.resumed_from == 4
    assert resumed.steps == 6
    assert resumed.accuracy == reference.accuracy
    chex.assert_trees_all_close(resumed.final_metrics, reference.final_metrics, rtol=1e-6)

    _, want = loop.final_variables(tmp_path / "reference", cfg, NUM_CLASSES, IMAGE_SHAPE, mesh)
    _, got = loop.final_variables(workdir, cfg, NUM_CLASSES, IMAGE_SHAPE, mesh)
    chex.assert_trees_all_equal(_host(got), _host(want))  # bit-exact

    # A finished run returns its stored result without building anything.
    def no_model(*args, **kwargs):
        raise AssertionError("a finished run must not rebuild its model")

    monkeypatch.setattr(loop, "create_model", no_model)
    again = _run(cfg, workdir, mesh, train)
    assert dataclasses.asdict(again) == dataclasses.asdict(resumed)


# ---------------------------------------------------------------------------------------
# 9. Optimiser recipes (appendix 10.3).


def test_cifar_recipe_decays_after_80_percent_of_steps():
    steps_per_epoch = 7
    cfg = optim.CIFAR_RECIPE
    total = cfg.epochs * steps_per_epoch
    assert optim.decay_boundaries(cfg, steps_per_epoch) == [int(0.8 * total)]
    lr = optim.learning_rate_schedule(cfg, steps_per_epoch)
    for s in (0, 1, int(0.8 * total) - 1):
        np.testing.assert_allclose(lr(s), 1e-3, rtol=1e-6)
    for s in (int(0.8 * total), total - 1):
        np.testing.assert_allclose(lr(s), 1e-4, rtol=1e-6)
    assert (cfg.name, cfg.batch_size, cfg.epochs) == ("adam", 128, 500)


def test_mit_recipe_decays_at_epochs_40_and_60():
    steps_per_epoch = 3
    cfg = optim.MIT_RECIPE
    assert optim.decay_boundaries(cfg, steps_per_epoch) == [120, 180]
    lr = optim.learning_rate_schedule(cfg, steps_per_epoch)
    for s, want in [(0, 1e-3), (119, 1e-3), (120, 1e-4), (179, 1e-4), (180, 1e-5),
                    (75 * 3 - 1, 1e-5)]:
        np.testing.assert_allclose(lr(s), want, rtol=1e-5)
    assert (cfg.name, cfg.momentum, cfg.batch_size, cfg.epochs) == ("sgd", 0.9, 8, 75)


def test_make_optimizer_applies_the_schedule_and_weight_decay():
    cfg = optim.OptimConfig("sgd", 0.5, (2,), 0.1, epochs=4, batch_size=1, momentum=0.0,
                            weight_decay=0.25)
    tx = optim.make_optimizer(cfg, steps_per_epoch=1)
    params = {"w": jnp.array([2.0])}
    opt_state = tx.init(params)
    grads = {"w": jnp.array([1.0])}
    steps = []
    for _ in range(3):
        updates, opt_state = tx.update(grads, opt_state, params)
        steps.append(float(updates["w"][0]))
    # SGD: -lr * (g + wd * w) with w held fixed at 2: lr 0.5, 0.5, then 0.05 from step 2.
    np.testing.assert_allclose(steps, [-0.75, -0.75, -0.075], rtol=1e-6)
