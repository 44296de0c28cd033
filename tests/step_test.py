"""Tests for jkt.train.step: an 8-device step equals the 1-device step and compiles once,
the teacher is frozen, a two-head student trains against a teacher of another label
space, and clear config errors."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_fixtures import (  # noqa: F401  (fixtures)
    ADAM,
    BATCH,
    FAST,
    IMAGE_SHAPE,
    MEAN,
    NUM_CLASSES,
    STD,
    host,
    init,
    one_line,
    one_run_step,
    split_fixture,
    teacher_fixture,
    tiny,
)

from jkt import parallel
from jkt.data.batches import BatchStream, make_batch
from jkt.models import param_count
from jkt.train.methods import method_objective
from jkt.train.objective import Objective
from jkt.train.state import create_train_state
from jkt.train.step import make_train_step

# ---------------------------------------------------------------------------------------
# An 8-device step equals the 1-device step, and compiles once.


@pytest.fixture(scope="module")
def parity_runs(split, teacher):
    """Three ce+act+jac steps (different batches) on a 1-device and an 8-device mesh."""
    t_model, t_vars = teacher
    model = tiny()
    objective = method_objective("ce+act+jac")  # label estimator
    stream = BatchStream(len(split), BATCH, seed=1)
    chex.clear_trace_counter()
    runs = {}
    for n_dev in (1, 8):
        mesh = parallel.make_mesh(jax.devices()[:n_dev])
        rep = parallel.replicated(mesh)
        py_step = one_run_step(model, objective, teacher_model=t_model)
        if n_dev == 8:  # the counter is keyed by call site: wrap only one of the two
            py_step = chex.assert_max_traces(py_step, n=1)
        step = jax.jit(py_step, donate_argnums=0, out_shardings=(rep, rep))
        state = create_train_state(model, ADAM, jax.random.key(0), IMAGE_SHAPE, mesh)
        tv = jax.device_put(t_vars, rep)
        # The state is donated to each step: keep host copies.
        run = {"mesh": mesh, "init_params": host(state.params), "batches": [], "states": [],
               "metrics": [], "teacher_vars": tv}
        for i in range(3):
            batch = make_batch(split, stream.indices(i), mesh)
            run["batches"].append(batch)
            state, metrics = step(state, batch, tv)
            run["states"].append(host(state))
            run["metrics"].append(host(metrics))
        run.update(step=step, last_state=state, model=model)
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
        chex.assert_trees_all_equal(host(run["teacher_vars"]), t_vars)


def test_step_compiles_once(parity_runs):
    # chex.assert_max_traces(n=1) would have raised inside the fixture on a retrace; three
    # different batches went through one executable.
    eight = parity_runs[8]
    assert len(eight["batches"]) == 3
    assert not np.array_equal(np.asarray(eight["batches"][0]["label"]),
                              np.asarray(eight["batches"][1]["label"]))
    assert eight["step"]._cache_size() == 1
    # A fresh state (another seed) does not retrace either.
    state = create_train_state(eight["model"], ADAM, jax.random.key(5), IMAGE_SHAPE,
                               eight["mesh"])
    eight["step"](state, eight["batches"][2], eight["teacher_vars"])
    assert eight["step"]._cache_size() == 1


# ---------------------------------------------------------------------------------------
# The teacher is frozen: no gradient, not in the state.


@pytest.fixture(scope="module")
def fixed_batch(split):
    mesh = parallel.make_mesh(jax.devices()[:1])
    model = tiny()
    state = create_train_state(model, ADAM, jax.random.key(0), IMAGE_SHAPE, mesh)
    return model, state, make_batch(split, np.arange(BATCH), mesh)


def test_teacher_gets_no_gradient_and_is_not_in_state(fixed_batch, teacher):
    model, state, batch = fixed_batch
    t_model, t_vars = teacher
    objective = Objective(ce=1, act=1, jac=1, att=1, att_pairs=(("pool1", "pool1"),))
    step = one_run_step(model, objective, augment=False, teacher_model=t_model)
    tv = jax.tree.map(jnp.asarray, t_vars)

    def loss_wrt_teacher(tv):
        return step(state, batch, tv)[1]["loss"][0]

    loss, t_grads = jax.jit(jax.value_and_grad(loss_wrt_teacher), compiler_options=FAST)(tv)
    assert np.isfinite(loss) and loss > 0
    chex.assert_trees_all_equal(host(t_grads), jax.tree.map(np.zeros_like, t_vars))
    new_state, _ = jax.eval_shape(step, state, batch, tv)
    # The state holds the student only: its leaves are the student's params, batch stats,
    # two Adam moments of the params, the step, Adam's and the schedule's counts and the
    # rng.
    student = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *IMAGE_SHAPE)))
    chex.assert_trees_all_equal_shapes(new_state.params, student["params"])
    chex.assert_trees_all_equal_shapes(new_state.batch_stats, student["batch_stats"])
    n_student = len(jax.tree.leaves(student["params"]))
    n_stats = len(jax.tree.leaves(student["batch_stats"]))
    assert len(jax.tree.leaves(new_state)) == 3 * n_student + n_stats + 1 + 1 + 1 + 1
    n_state_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(new_state.params))
    assert n_state_params == param_count(model, IMAGE_SHAPE)
    assert param_count(t_model, IMAGE_SHAPE) != n_state_params  # distinguishable sizes


# ---------------------------------------------------------------------------------------
# Two-head (LwF) students train against a teacher of another label space.


def test_two_head_student_trains_against_a_six_class_teacher(split):
    mesh = parallel.make_mesh(jax.devices()[:1])
    student = tiny(source_classes=6)
    t_model = tiny(num_classes=6, width=4)
    t_vars = init(t_model, seed=3)
    state = create_train_state(student, ADAM, jax.random.key(0), IMAGE_SHAPE, mesh)
    assert state.params["fc"]["kernel"].shape[-1] == NUM_CLASSES
    assert state.params["fc_source"]["kernel"].shape[-1] == 6
    step = jax.jit(one_run_step(student, method_objective("ce+act+jac", estimator="top"),
                                teacher_model=t_model), compiler_options=FAST)
    state, metrics = step(state, make_batch(split, np.arange(BATCH), mesh), t_vars)
    chex.assert_tree_all_finite(metrics)
    assert set(metrics) == {"loss", "ce", "act", "jac", "accuracy", "agreement"}


# ---------------------------------------------------------------------------------------
# Configuration errors.


def test_config_errors_are_one_clear_line():
    cases = [
        (lambda: parallel.check_batch_size(12, parallel.make_mesh()),
         "batch size 12 must be a positive multiple of the number of devices in the mesh (8)"),
        (lambda: make_train_step(tiny(), [Objective(ce=1, act=1)], ADAM, mean=MEAN, std=STD),
         "no teacher model"),
    ]
    for make, fragment in cases:
        with pytest.raises(ValueError) as excinfo:
            make()
        assert fragment in one_line(excinfo), (fragment, str(excinfo.value))
