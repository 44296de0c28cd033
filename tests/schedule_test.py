"""The learning rate as a step argument: optax's schedule evaluated on the host
(``jkt.train.optim.learning_rates``) gives optax's rates bit for bit, and the optimiser
built at those rates (``Optimizer``) gives the updates of optax's scheduled optimiser
(``make_optimizer``) bit for bit, with one optimiser-state structure and one compiled
update for every schedule of a config."""

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
def test_host_rates_are_optax_rates_bit_for_bit(cfg, spe, total):
    """At every step of the run, the rate the host evaluates equals optax's
    ``piecewise_constant_schedule`` evaluated inside a jitted program and eagerly."""
    n = total or cfg.epochs * spe
    rates = optim.learning_rates(cfg, spe, n)
    assert rates.shape == (n,) and rates.dtype == np.float32
    schedule = optim.learning_rate_schedule(cfg, spe, n)
    counts = np.arange(n, dtype=np.int32)
    np.testing.assert_array_equal(_bits(rates), _bits(jax.jit(jax.vmap(schedule))(counts)))
    np.testing.assert_array_equal(_bits(rates), _bits([schedule(int(c)) for c in counts]))


@pytest.mark.parametrize("cfg, spe, total", [SCHEDULES[3], SCHEDULES[6]])
def test_optimizer_at_host_rates_updates_as_optax_scheduled_optimizer(cfg, spe, total):
    """Same optimiser-state structure (checkpoints interchange) and the same updates, bit
    for bit, over a whole run with a decay inside it; the update taking the rate as an
    argument compiles once for every rate (and for every config of equal optimiser)."""
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(3, 4)).astype(np.float32),
              "b": rng.normal(size=(4,)).astype(np.float32)}
    n = total or cfg.epochs * spe
    old = optim.make_optimizer(cfg, spe, total)
    new = optim.Optimizer.of(cfg)
    assert new == optim.Optimizer.of(dataclasses.replace(cfg, epochs=99, learning_rate=1.0))
    assert hash(new) == hash(optim.Optimizer.of(cfg))
    s_old, s_new = old.init(params), new.init(params)
    assert jax.tree.structure(s_old) == jax.tree.structure(s_new)
    rates = optim.learning_rates(cfg, spe, n)
    assert len(set(rates.tolist())) > 1  # the rate changes within the run
    traces = []

    @jax.jit
    def step_old(p, s, g):
        u, s = old.update(g, s, p)
        return jax.tree.map(lambda a, b: a + b, p, u), s

    @jax.jit
    def step_new(p, s, g, rate):
        traces.append(1)
        u, s = new(lambda count: rate).update(g, s, p)
        return jax.tree.map(lambda x, y: x + y, p, u), s

    p_old = p_new = params
    for i in range(n):
        g = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), params)
        p_old, s_old = step_old(p_old, s_old, g)
        p_new, s_new = step_new(p_new, s_new, g, rates[i])
    chex.assert_trees_all_equal(host(p_new), host(p_old))
    chex.assert_trees_all_equal(host(s_new), host(s_old))
    assert len(traces) == 1
