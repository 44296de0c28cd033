"""Tests for one compiled step per grid: a ``StepCache`` shared by the cells of a grid
changes no number. The parameters, metrics and accuracies of every run equal those of a
fresh step per run and of a loop of one's own that runs optax's scheduled optimiser (the
schedule inside the program), also when a run resumes a checkpoint written by that
loop."""

import chex
import jax
import pytest
from train_fixtures import IMAGE_SHAPE, MEAN, NUM_CLASSES, STD, host, make_split, tiny

from jkt import parallel
from jkt.checkpoint import TrainCheckpointer
from jkt.data.batches import BatchStream, make_batch
from jkt.train import StepCache, loop, optim
from jkt.train.fused import weight_matrix
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
        common = dict(num_classes=NUM_CLASSES, mean=MEAN, std=STD, mesh=mesh, steps=cache)
        evals = {"val": make_split(11, seed=99)}
        results[n, "group"] = loop.train_and_evaluate(
            [_cfg(o) for o in GROUP], train, evals,
            workdirs=[workdir / f"n{n}" / f"g{i}" for i in range(len(GROUP))], **common)
        results[n, "single"] = loop.train_and_evaluate(
            [_cfg(Objective(ce=1), seed=1)], train, evals,
            workdirs=[workdir / f"n{n}" / "single"], **common)
    return results


def _variables(workdir, cfg, mesh):
    return host(loop.final_variables(workdir, cfg, NUM_CLASSES, IMAGE_SHAPE, mesh)[1])


def _optax_run(cfg, train, mesh, steps):
    """A loop of one's own: the train step with optax's scheduled optimiser
    (``make_optimizer``: the schedule inside the program, driven by the optimiser state's
    count) in place of the loop's rate argument; returns the state after ``steps`` steps,
    the stream and the run's length."""
    model, rep = tiny(NUM_CLASSES), parallel.replicated(mesh)
    stream = BatchStream(len(train), cfg.optim.batch_size, seed=cfg.seed)
    n_steps = loop.total_steps(cfg, len(train))
    tx = optim.make_optimizer(cfg.optim, stream.steps_per_epoch, n_steps)
    state = create_train_state(model, optim.Optimizer.of(cfg.optim), jax.random.key(cfg.seed),
                               IMAGE_SHAPE, mesh)
    train_step = make_train_step(model, [cfg.objective], lambda rate: tx, mean=MEAN, std=STD,
                                 augment=cfg.augment)
    weights = weight_matrix([cfg.objective])
    step = jax.jit(lambda s, b: train_step(s, b, None, None, weights),
                   donate_argnums=0, out_shardings=(rep, rep))
    for i in range(steps):
        state, _ = step(state, make_batch(train, stream.indices(i), mesh))
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
        # The single runs equal a loop with optax's scheduled optimiser bit for bit.
        cfg = _cfg(Objective(ce=1), seed=1)
        state, _, n_steps = _optax_run(cfg, make_split(n, seed=n), mesh,
                                       loop.total_steps(cfg, n))
        chex.assert_trees_all_equal(
            _variables(tmp_path / "shared" / f"n{n}" / "single", cfg, mesh),
            host({"params": state.params, "batch_stats": state.batch_stats}))


@pytest.mark.slow
def test_resumes_a_checkpoint_of_optax_scheduled_optimizer(monkeypatch, tmp_path):
    """A checkpoint written from the state of a loop with optax's scheduled optimiser
    resumes in the loop (rates as arguments) and ends where that loop does."""
    monkeypatch.setattr(loop, "create_model", lambda name, n, **o: tiny(n, **o))
    mesh = parallel.make_mesh(jax.devices()[:1])
    cfg, train = _cfg(Objective(ce=1), seed=2), make_split(17, seed=5)
    state, stream, n_steps = _optax_run(cfg, train, mesh, 3)
    meta = {"num_examples": len(train), "batch_size": cfg.optim.batch_size, "seed": cfg.seed,
            "total_steps": n_steps}
    with TrainCheckpointer(tmp_path / "run" / "checkpoints") as ckpt:
        ckpt.save(3, state, meta, force=True)
    res, = loop.train_and_evaluate([cfg], train, {"val": make_split(11, seed=99)},
                                   num_classes=NUM_CLASSES, mean=MEAN, std=STD,
                                   workdirs=[tmp_path / "run"], mesh=mesh)
    assert res.resumed_from == 3 and res.steps == n_steps
    final, _, _ = _optax_run(cfg, train, mesh, n_steps)
    chex.assert_trees_all_equal(_variables(tmp_path / "run", cfg, mesh),
                                host({"params": final.params,
                                      "batch_stats": final.batch_stats}))
