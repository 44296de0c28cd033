"""Tests for one compiled step per grid: a ``StepCache`` shared by the cells of a grid
changes no number. The parameters, metrics and accuracies of every run equal those of a
fresh step per run and of the old loop (optax schedule baked into a freshly jitted step),
also when a run resumes a checkpoint written by that old loop."""

import chex
import jax
import pytest
from train_fixtures import IMAGE_SHAPE, MEAN, NUM_CLASSES, STD, host, make_split, tiny

from jkt import parallel
from jkt.checkpoint import TrainCheckpointer
from jkt.data.batches import BatchStream, make_batch
from jkt.train import StepCache, loop, optim
from jkt.train.objective import Objective
from jkt.train.state import create_train_state
from jkt.train.step import make_train_step

GROUP = (Objective(ce=1), Objective(ce=1, jac_norm=0.5))  # one fused group of two runs
CELLS = (10, 17)  # examples per cell: other steps per epoch, steps and decay boundaries


def _cfg(objective, **kw) -> loop.TrainConfig:
    return loop.TrainConfig(objective=objective, augment="crop+flip", log_every=2,
                            checkpoint_every=100, eval_batch_size=8, progress=False,
                            optim=optim.OptimConfig("adam", 1e-2, (0.5,), epochs=2,
                                                    batch_size=8), **kw)


def _grid(workdir, mesh, cache_for):
    """Every cell of the grid: the fused group and a single run, each cell with its own
    data. ``cache_for(cell)`` is the step cache of that cell's calls."""
    results = {}
    for n in CELLS:
        train, cache = make_split(n, seed=n), cache_for(n)
        common = dict(num_classes=NUM_CLASSES, mean=MEAN, std=STD, mesh=mesh, step_cache=cache)
        evals = {"val": make_split(11, seed=99)}
        results[n, "group"] = loop.train_and_evaluate_fused(
            [_cfg(o) for o in GROUP], train, evals,
            workdirs=[workdir / f"n{n}" / f"g{i}" for i in range(len(GROUP))], **common)
        results[n, "single"] = [loop.train_and_evaluate(
            _cfg(Objective(ce=1), seed=1), train, evals, workdir=workdir / f"n{n}" / "single",
            **common)]
    return results


def _variables(workdir, cfg, mesh):
    return host(loop.final_variables(workdir, cfg, NUM_CLASSES, IMAGE_SHAPE, mesh)[1])


def _legacy_run(cfg, train, mesh, steps):
    """The old loop's numbers: the optax schedule baked into a freshly jitted
    ``make_train_step``; returns the state after ``steps`` steps and the stream."""
    model, rep = tiny(NUM_CLASSES), parallel.replicated(mesh)
    stream = BatchStream(len(train), cfg.optim.batch_size, seed=cfg.seed)
    n_steps = loop.total_steps(cfg, len(train))
    tx = optim.make_optimizer(cfg.optim, stream.steps_per_epoch, n_steps)
    state = create_train_state(model, tx, jax.random.key(cfg.seed), IMAGE_SHAPE, mesh)
    step = jax.jit(make_train_step(model, cfg.objective, mean=MEAN, std=STD,
                                   augment=cfg.augment),
                   donate_argnums=0, out_shardings=(rep, rep))
    for i in range(steps):
        state, _ = step(state, make_batch(train, stream.indices(i), mesh), None)
    return state, stream, n_steps


@pytest.mark.slow
def test_shared_cache_changes_no_number_of_a_grid(monkeypatch, tmp_path):
    monkeypatch.setattr(loop, "create_model", lambda name, n, **o: tiny(n, **o))
    mesh = parallel.make_mesh(jax.devices()[:2])
    shared = StepCache()
    got = _grid(tmp_path / "shared", mesh, lambda n: shared)
    want = _grid(tmp_path / "fresh", mesh, lambda n: None)
    # Train steps of the group (R = 2) and of a single run, one eval step, one init.
    assert len(shared) == 4
    steps = {loop.total_steps(_cfg(GROUP[0]), n) for n in CELLS}
    assert len(steps) == len(CELLS), "the cells must differ in their schedules"
    for key, res in got.items():
        for r, w in zip(res, want[key], strict=True):
            assert (r.accuracy, r.final_metrics, r.steps) == (w.accuracy, w.final_metrics,
                                                              w.steps), key
    for n in CELLS:
        for sub in ("g0", "g1", "single"):
            cfg = _cfg(GROUP[int(sub[1])]) if sub != "single" else _cfg(GROUP[0], seed=1)
            chex.assert_trees_all_equal(_variables(tmp_path / "shared" / f"n{n}" / sub, cfg,
                                                   mesh),
                                        _variables(tmp_path / "fresh" / f"n{n}" / sub, cfg,
                                                   mesh))
        # The single runs equal the old loop's (optax schedule as constants) bit for bit.
        cfg = _cfg(Objective(ce=1), seed=1)
        state, _, n_steps = _legacy_run(cfg, make_split(n, seed=n), mesh,
                                        loop.total_steps(cfg, n))
        chex.assert_trees_all_equal(
            _variables(tmp_path / "shared" / f"n{n}" / "single", cfg, mesh),
            host({"params": state.params, "batch_stats": state.batch_stats}))


@pytest.mark.slow
def test_resumes_a_checkpoint_of_the_old_loop(monkeypatch, tmp_path):
    """A checkpoint written from the old loop's state (optax transformation, schedule
    baked in) resumes with the schedule as an argument and ends where the old loop does."""
    monkeypatch.setattr(loop, "create_model", lambda name, n, **o: tiny(n, **o))
    mesh = parallel.make_mesh(jax.devices()[:1])
    cfg, train = _cfg(Objective(ce=1), seed=2), make_split(17, seed=5)
    state, stream, n_steps = _legacy_run(cfg, train, mesh, 3)
    meta = {"num_examples": len(train), "batch_size": cfg.optim.batch_size, "seed": cfg.seed,
            "total_steps": n_steps}
    with TrainCheckpointer(tmp_path / "run" / "checkpoints") as ckpt:
        ckpt.save(3, state, meta, force=True)
    res = loop.train_and_evaluate(cfg, train, {"val": make_split(11, seed=99)},
                                  num_classes=NUM_CLASSES, mean=MEAN, std=STD,
                                  workdir=tmp_path / "run", mesh=mesh)
    assert res.resumed_from == 3 and res.steps == n_steps
    final, _, _ = _legacy_run(cfg, train, mesh, n_steps)
    chex.assert_trees_all_equal(_variables(tmp_path / "run", cfg, mesh),
                                host({"params": final.params,
                                      "batch_stats": final.batch_stats}))
