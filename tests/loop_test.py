"""Tests for jkt.train.loop: a single run is the fused step with one run, the NaN guard,
one metric transfer per log window, config errors, and resume after a kill."""

import dataclasses
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_fixtures import (  # noqa: F401  (fixtures)
    IMAGE_SHAPE,
    MEAN,
    NUM_CLASSES,
    STD,
    host,
    make_split,
    one_line,
    split_fixture,
    tiny,
)

from jkt import parallel
from jkt.data.batches import BatchStream, make_batch
from jkt.train import fused, loop, optim, step
from jkt.train.objective import Objective
from jkt.train.results import RESULT_FILE
from jkt.train.state import create_train_state


def _loop_cfg(**kw) -> loop.TrainConfig:
    base = dict(objective=Objective(ce=1), augment=True, max_steps=6, log_every=3,
                checkpoint_every=2, eval_batch_size=8, progress=False,
                optim=optim.OptimConfig(batch_size=8, epochs=1))
    return loop.TrainConfig(**{**base, **kw})


def _run(cfg, workdir, mesh, train):
    return loop.train_and_evaluate([cfg], train, {"val": make_split(12, seed=9)},
                                   num_classes=NUM_CLASSES, mean=MEAN, std=STD,
                                   workdirs=[workdir], mesh=mesh)[0]


def _tiny_loop_model(monkeypatch):
    monkeypatch.setattr(loop, "create_model", lambda name, n, **o: tiny(n, **o))


@pytest.fixture
def tiny_loop(monkeypatch):
    """``train_and_evaluate`` builds the one-block VGG instead of the named model."""
    _tiny_loop_model(monkeypatch)


@pytest.fixture(scope="module")
def nan_run(split, tmp_path_factory):
    """A loop run whose step 3 (0-based) makes the ``ce`` term and the parameters NaN."""
    workdir = tmp_path_factory.mktemp("nan_run")
    mesh = parallel.make_mesh(jax.devices()[:2])
    real = step.make_train_step

    def make_bad_step(*args, **kwargs):
        good_step = real(*args, **kwargs)

        def bad_step(state, batch, teacher_variables, learning_rate, weights):
            new, metrics = good_step(state, batch, teacher_variables, learning_rate, weights)
            bad = state.step == 3
            metrics = {**metrics, "ce": jnp.where(bad, jnp.nan, metrics["ce"])}
            params = jax.tree.map(lambda p: jnp.where(bad, jnp.nan, p), new.params)
            return new.replace(params=params), metrics

        return bad_step

    with pytest.MonkeyPatch.context() as m:
        _tiny_loop_model(m)
        m.setattr(step, "make_train_step", make_bad_step)
        with pytest.raises(loop.NonFiniteLossError) as excinfo:
            _run(_loop_cfg(log_every=100), workdir, mesh, split)
    return workdir, mesh, excinfo


def test_nan_loss_raises_naming_step_and_term(nan_run):
    workdir, _, excinfo = nan_run
    assert one_line(excinfo) == "non-finite loss at step 3: ce=nan"
    assert not (workdir / RESULT_FILE).exists()
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
        target = create_train_state(tiny(), optim.Optimizer.of(_loop_cfg().optim),
                                    jax.random.key(0), IMAGE_SHAPE, mesh)
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


def test_single_run_equals_the_step_with_optax_schedule_inside(tiny_loop, tmp_path, split):
    """A run of the loop, whose host evaluates optax's schedule and passes each step's
    rate, equals the train step called directly with that schedule evaluated inside the
    program at the state's step, bit for bit. The run's schedule decays mid-run;
    augmentation, dropout and a random estimator probe all draw from the run's key."""
    cfg = _loop_cfg(objective=Objective(ce=1, jac_norm=1, estimator="random"), max_steps=3,
                    model_options={"dropout": 0.5}, checkpoint_every=100, seed=3,
                    optim=optim.OptimConfig(batch_size=8, epochs=1, decay_epochs=(0.5,)))
    mesh = parallel.make_mesh(jax.devices()[:2])
    _run(cfg, tmp_path / "run", mesh, split)
    _, got = loop.final_variables(tmp_path / "run", cfg, NUM_CLASSES, IMAGE_SHAPE, mesh)

    model, rep = tiny(NUM_CLASSES, dropout=0.5), parallel.replicated(mesh)
    stream = BatchStream(len(split), cfg.optim.batch_size, seed=cfg.seed)
    schedule = optim.learning_rate_schedule(cfg.optim, stream.steps_per_epoch, 3)
    assert schedule(1) != schedule(2)  # the decay falls inside the run
    optimizer = optim.Optimizer.of(cfg.optim)
    state = create_train_state(model, optimizer, jax.random.key(cfg.seed), IMAGE_SHAPE, mesh)
    train_step = step.make_train_step(model, [cfg.objective], optimizer, mean=MEAN, std=STD)
    weights = fused.weight_matrix([cfg.objective])
    jitted = jax.jit(lambda s, b: train_step(s, b, None, schedule(s.step), weights),
                     donate_argnums=0, out_shardings=(rep, rep))
    for i in range(3):
        state, _ = jitted(state, make_batch(split, stream.indices(i), mesh))
    want = {"params": state.params, "batch_stats": state.batch_stats}
    chex.assert_trees_all_equal(host(got), host(want))


def test_config_errors_are_one_clear_line():
    cases = [
        (lambda: loop.TrainConfig(log_every=0), "log_every must be positive"),
        (lambda: loop.TrainConfig(max_steps=-1), "max_steps must be positive"),
    ]
    for make, fragment in cases:
        with pytest.raises(ValueError) as excinfo:
            make()
        assert fragment in one_line(excinfo), (fragment, str(excinfo.value))


class _Killed(BaseException):
    """Stands for the process being killed (not an ``Exception``: nothing may catch it)."""


@pytest.mark.slow
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
    assert not (workdir / RESULT_FILE).exists()
    wait_for_saves(workdir / "checkpoints")

    resumed = _run(cfg, workdir, mesh, train)
    assert resumed.resumed_from == 4
    assert resumed.steps == 6
    assert resumed.accuracy == reference.accuracy
    chex.assert_trees_all_close(resumed.final_metrics, reference.final_metrics, rtol=1e-6)

    _, want = loop.final_variables(tmp_path / "reference", cfg, NUM_CLASSES, IMAGE_SHAPE, mesh)
    _, got = loop.final_variables(workdir, cfg, NUM_CLASSES, IMAGE_SHAPE, mesh)
    chex.assert_trees_all_equal(host(got), host(want))  # bit-exact

    # A finished run returns its stored result without building anything.
    def no_model(*args, **kwargs):
        raise AssertionError("a finished run must not rebuild its model")

    monkeypatch.setattr(loop, "create_model", no_model)
    again = _run(cfg, workdir, mesh, train)
    assert dataclasses.asdict(again) == dataclasses.asdict(resumed)
