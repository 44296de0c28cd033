"""The learning-rate schedule's run-dependent boundaries as jit arguments
(``jkt.train.optim.schedule_arrays``, ``scheduled_learning_rate``,
``ScheduledOptimizer``): optax's rates and updates bit for bit, one program for every
schedule of a config, and the optimiser state of ``make_optimizer``."""

import dataclasses

import chex
import jax
import numpy as np
import pytest
from train_fixtures import host

from jkt.train import optim

# (config, steps per epoch, total steps or None): fractional and whole-epoch decays, a
# capped run, two decays at one step (optax's dict keeps one), a decay at step 0
# (dropped), no decay at all, SGD with momentum and weight decay.
SCHEDULES = [
    (optim.CIFAR_RECIPE, 7, None),
    (optim.CIFAR_RECIPE, 3, 40),
    (optim.MIT_RECIPE, 3, None),
    (optim.OptimConfig("adam", 3e-3, (0.5, 2), 0.1, epochs=4, batch_size=8), 1, None),
    (optim.OptimConfig("adam", 1e-3, (0.01,), 0.5, epochs=1, batch_size=8), 10, None),
    (optim.OptimConfig("adam", 1e-3, (), epochs=2, batch_size=8), 5, None),
    (optim.OptimConfig("sgd", 0.05, (0.3, 0.6), 0.2, epochs=3, batch_size=8,
                       momentum=0.9, weight_decay=1e-3), 4, None),
]


def _bits(x) -> np.ndarray:
    return np.asarray(x, np.float32).view(np.uint32)


@pytest.mark.parametrize("cfg, spe, total", SCHEDULES)
def test_schedule_arrays_give_optax_rates_bit_for_bit(cfg, spe, total):
    """At every step of the run (and past it), the rate read from the arrays inside a
    jitted program equals optax's ``piecewise_constant_schedule`` with Python constants."""
    arrays = optim.schedule_arrays(cfg, spe, total)
    assert arrays["boundaries"].shape == arrays["scales"].shape == (len(cfg.decay_epochs),)
    n = (total or cfg.epochs * spe) + 3
    counts = np.arange(n, dtype=np.int32)
    want = jax.jit(jax.vmap(optim.learning_rate_schedule(cfg, spe, total)))(counts)
    rate = jax.jit(jax.vmap(lambda c, a: optim.scheduled_learning_rate(cfg.learning_rate, a)(c),
                            in_axes=(0, None)))
    np.testing.assert_array_equal(_bits(rate(counts, arrays)), _bits(want))


def test_one_program_serves_every_schedule_of_a_config():
    """Runs of one config with different data sizes have different boundaries but one
    compiled schedule (boundaries and scales are arguments)."""
    cfg = optim.OptimConfig("adam", 3e-3, (0.8,), epochs=3, batch_size=8)
    traces = []

    @jax.jit
    def rate(count, arrays):
        traces.append(1)
        return optim.scheduled_learning_rate(cfg.learning_rate, arrays)(count)

    for spe in (1, 2, 5):
        arrays = optim.schedule_arrays(cfg, spe)
        schedule = jax.jit(optim.learning_rate_schedule(cfg, spe))
        for c in range(cfg.epochs * spe):
            count = np.int32(c)
            assert _bits(rate(count, arrays)) == _bits(schedule(count)), (spe, c)
    assert len(traces) == 1


@pytest.mark.parametrize("cfg, spe, total", [SCHEDULES[3], SCHEDULES[6]])
def test_scheduled_optimizer_updates_equal_make_optimizer(cfg, spe, total):
    """Same optimiser-state structure (checkpoints interchange) and the same updates,
    bit for bit, over a whole run with a decay inside it."""
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(3, 4)).astype(np.float32),
              "b": rng.normal(size=(4,)).astype(np.float32)}
    old = optim.make_optimizer(cfg, spe, total)
    new = optim.ScheduledOptimizer.of(cfg)
    assert new == optim.ScheduledOptimizer.of(dataclasses.replace(cfg, epochs=99))
    assert hash(new) == hash(optim.ScheduledOptimizer.of(cfg))
    s_old, s_new = old.init(params), new.init(params)
    assert jax.tree.structure(s_old) == jax.tree.structure(s_new)
    arrays = optim.schedule_arrays(cfg, spe, total)

    @jax.jit
    def step_old(p, s, g):
        u, s = old.update(g, s, p)
        return jax.tree.map(lambda a, b: a + b, p, u), s

    @jax.jit
    def step_new(p, s, g, a):
        u, s = new.bind(a).update(g, s, p)
        return jax.tree.map(lambda x, y: x + y, p, u), s

    p_old = p_new = params
    for _ in range((total or cfg.epochs * spe) + 1):
        g = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), params)
        p_old, s_old = step_old(p_old, s_old, g)
        p_new, s_new = step_new(p_new, s_new, g, arrays)
    chex.assert_trees_all_equal(host(p_new), host(p_old))
    chex.assert_trees_all_equal(host(s_new), host(s_old))
    with pytest.raises(TypeError, match="bind"):
        new.update(g, s_new, p_new)
