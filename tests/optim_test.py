"""Tests for jkt.train.optim: the optimiser recipes of appendix 10.3."""

import jax.numpy as jnp
import numpy as np
import pytest
from train_fixtures import one_line

from jkt.train import optim


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


def test_config_errors_are_one_clear_line():
    cases = [
        (lambda: optim.OptimConfig(name="rmsprop"), "unknown optimiser 'rmsprop'"),
        (lambda: optim.OptimConfig(learning_rate=0), "learning_rate"),
    ]
    for make, fragment in cases:
        with pytest.raises(ValueError) as excinfo:
            make()
        assert fragment in one_line(excinfo), (fragment, str(excinfo.value))
