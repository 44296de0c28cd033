"""A distill grid compiles one train step per step structure, not one per run.

Compilations are counted with JAX's public monitoring hook: every program that ``jax.jit``
lowers is handed to XLA under the ``/jax/core/compile/backend_compile_duration`` event
(``jax._src.dispatch.BACKEND_COMPILE_EVENT``), named by the jitted function. The event
fires whether XLA then compiles the program or loads it from the persistent compilation
cache that ``tests/conftest.py`` sets for the session, so the count is the number of
programs the grid needed, independent of what earlier tests left in that cache.
"""

import collections

import jax
import numpy as np
import pytest
from distill_test import image_folder  # noqa: F401  (fixture: 3 classes of 32x32 images)
from robustness_test import folder  # noqa: F401  (fixture: 2 classes of 32x32 images)

from jkt import data, parallel
from jkt.data import DataConfig
from jkt.grids import distill as distill_grid
from jkt.train import OptimConfig, StepCache
from jkt.train.teacher import train_teacher

BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"
TINY = {"width_multiplier": 0.0625}


class CompileCounter:
    """Counts backend compilations by jitted function name while installed."""

    def __init__(self):
        self.names = collections.Counter()

    def __call__(self, event, duration, **kwargs):
        if event == BACKEND_COMPILE:  # fun_name: "jit(<name of the jitted function>)"
            name = kwargs.get("fun_name", "?")
            self.names[name.removeprefix("jit(").removesuffix(")")] += 1

    def __enter__(self):
        jax.monitoring.register_event_duration_secs_listener(self)
        return self

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self)


def test_counter_sees_every_jit_compilation():
    with CompileCounter() as counter:
        f = jax.jit(lambda x: x * 2)
        f(np.float32(1))
        f(np.float32(2))  # cached: no second compilation
        f(np.zeros(3, np.float32))  # a new shape: compiled again
    assert counter.names["<lambda>"] == 2


@pytest.fixture(scope="module")
def teacher_grid(request, tmp_path_factory):
    """``grid(workdir, **fields)``: a tiny distill grid config on the image folder whose
    teacher artifact is trained here once (so no teacher step is compiled in the grid)."""
    mesh = parallel.make_mesh(jax.devices()[:1])
    images = request.getfixturevalue("image_folder")
    data_cfg = DataConfig(f"folder:{images}", val_fraction=0.2)
    out = tmp_path_factory.mktemp("teacher")
    train_teacher(data.load_config(data_cfg), out, arch="vgg9", model_options=TINY,
                  optim=OptimConfig(batch_size=8), max_steps=2, progress=False,
                  augment=data_cfg.augment, mesh=mesh)

    def grid(workdir, **fields):
        return distill_grid.DistillConfig(
            workdir=str(workdir), data=data_cfg, teacher_artifact=str(out / "artifact"),
            teacher_options=TINY, student_options=TINY, progress=False,
            optim=OptimConfig("adam", 1e-3, (0.5,), epochs=2, batch_size=2), **fields)

    return grid, mesh


@pytest.mark.slow
def test_distill_grid_compiles_one_step_per_structure(teacher_grid, tmp_path):
    """Methods ``ce`` and ``ce+jac`` (two fusion groups, so two step structures) × n ∈ {1, 2}
    × 2 seeds: eight runs with different schedules (epochs, not a step cap, set the
    length, so the cells differ in steps per epoch, total steps and decay step) compile
    two train steps, one eval step and one init."""
    grid, mesh = teacher_grid
    cfg = grid(tmp_path, methods=("ce", "ce+jac"), n_per_class=(1, 2), seeds=(0, 1))
    with CompileCounter() as counter:
        rows = distill_grid.run(cfg, mesh=mesh)
    assert len(rows) == 8 and {r["fused_runs"] for r in rows} == {1}
    assert len({r["steps"] for r in rows}) == 2  # n=1: 4 steps, n=2: 6 steps
    names = dict(counter.names)
    assert names.get("train_step") == 2, names
    assert names.get("eval_step") == 1, names
    assert names.get("init") == 1, names


@pytest.mark.slow
def test_without_a_shared_cache_each_run_compiles(teacher_grid, tmp_path, monkeypatch):
    """The old behaviour (a fresh cache per call) compiles the step of every run: the
    count above measures the cache, not the grid's shape."""

    class NoReuse(StepCache):
        def get(self, key, build):
            return build()

    monkeypatch.setattr(distill_grid, "StepCache", NoReuse)
    grid, mesh = teacher_grid
    with CompileCounter() as counter:
        distill_grid.run(grid(tmp_path, methods=("ce",), n_per_class=(1, 2), seeds=(0,)),
                         mesh=mesh)
    assert counter.names["train_step"] == 2


@pytest.mark.slow
def test_table2_lambda_rows_share_one_train_step(folder, tmp_path):  # noqa: F811 (fixture)
    """Table 2's λ rows differ only in the Jacobian-norm weight, which the cached step takes
    as an argument: three λ compile one train step, and the rows share one eval step and
    one gradient-norm function for the noise evaluation. The weights still act: each row's
    final Jacobian-norm term is trained under its own λ."""
    from jkt.grids import robustness

    p = robustness.RobustnessConfig(
        workdir=str(tmp_path / "w"), data=DataConfig(f"folder:{folder}", val_fraction=0.2),
        progress=False, model="vgg4", model_options=TINY, lambdas=(0.1, 1.0, 10.0),
        weight_decay=0.0, dropout=0.0, sigmas=(0.0, 0.5), noise_draws=2,
        optim=OptimConfig("adam", 1e-3, (0.8,), epochs=1, batch_size=8), max_steps=4)
    with CompileCounter() as counter:
        rows = robustness.run(p, mesh=parallel.make_mesh(jax.devices()[:1]))
    names = dict(counter.names)
    assert sorted({r["model"] for r in rows}) == ["lambda=0.1", "lambda=1", "lambda=10"]
    assert names.get("train_step") == 1, names
    assert names.get("eval_step") == 1, names
    assert names.get("fn") == 1, names  # make_grad_norm_fn's jitted function
    losses = {r["model"]: (r["final_loss"], r["final_ce"], r["final_jac_norm"]) for r in rows}
    for name, (loss, ce, jac_norm) in losses.items():
        lam = float(name.split("=")[1])
        np.testing.assert_allclose(loss, ce + lam * jac_norm, rtol=1e-5)
