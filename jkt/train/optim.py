"""Optimisers and learning-rate schedules of appendix 10.3, built from optax.

:func:`make_optimizer` bakes a run's schedule boundaries (which depend on its number of
examples and steps) into the transformation. :class:`ScheduledOptimizer` is the same
transformation with those boundaries left out: the training loop passes them to its
jitted step as small arrays (:func:`schedule_arrays`), so runs that differ only in their
data size or step count share one compiled step.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np
import optax


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Optimiser, schedule and batch size.

    Attributes:
      name: ``"adam"`` or ``"sgd"`` (with ``momentum``).
      learning_rate: initial learning rate.
      decay_epochs: epochs at which the rate is multiplied by ``decay_factor``; values in
        ``(0, 1)`` are fractions of ``epochs``.
      decay_factor: multiplier at each decay epoch.
      epochs: number of epochs (an epoch is ``ceil(N / batch_size)`` steps).
      batch_size: global batch size.
      momentum: SGD momentum.
      weight_decay: ℓ2 regularisation strength γ, added to the gradient as ``γ·w``
        (coupled, i.e. the gradient of ``γ/2 ‖w‖²``; Table 2's ℓ2 baseline).
    """

    name: str = "adam"
    learning_rate: float = 1e-3
    decay_epochs: tuple[float, ...] = (0.8,)
    decay_factor: float = 0.1
    epochs: int = 500
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 0.0

    def __post_init__(self):
        if self.name not in ("adam", "sgd"):
            raise ValueError(f"unknown optimiser {self.name!r}; valid: adam, sgd")
        for field in ("learning_rate", "epochs", "batch_size"):
            if not getattr(self, field) > 0:
                raise ValueError(f"{field} must be positive, got {getattr(self, field)!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")


# Appendix 10.3. CIFAR: Adam 1e-3 -> 1e-4 at 400 of 500 epochs, batch 128.
CIFAR_RECIPE = OptimConfig("adam", 1e-3, (0.8,), 0.1, epochs=500, batch_size=128)
# MIT Scenes: SGD momentum 0.9, 1e-3, /10 after epochs 40 and 60 of 75, batch 8.
MIT_RECIPE = OptimConfig("sgd", 1e-3, (40, 60), 0.1, epochs=75, batch_size=8, momentum=0.9)
RECIPES = {"cifar": CIFAR_RECIPE, "mit": MIT_RECIPE}


def decay_boundaries(cfg: OptimConfig, steps_per_epoch: int,
                     total_steps: int | None = None) -> list[int]:
    """Step numbers at which the learning rate decays.

    Fractional ``decay_epochs`` are fractions of the run's ``total_steps`` (default
    ``epochs * steps_per_epoch``; pass it when a step cap shortens the run); whole
    numbers are epochs.
    """
    total = cfg.epochs * steps_per_epoch if total_steps is None else total_steps
    return [int(round(e * total)) if 0 < e < 1 else int(round(e * steps_per_epoch))
            for e in cfg.decay_epochs]


def learning_rate_schedule(cfg: OptimConfig, steps_per_epoch: int,
                           total_steps: int | None = None) -> optax.Schedule:
    """Piecewise-constant schedule (``optax.piecewise_constant_schedule``)."""
    bounds = decay_boundaries(cfg, steps_per_epoch, total_steps)
    return optax.piecewise_constant_schedule(
        cfg.learning_rate, {b: cfg.decay_factor for b in bounds if b > 0})


def make_optimizer(cfg: OptimConfig, steps_per_epoch: int,
                   total_steps: int | None = None) -> optax.GradientTransformation:
    """The optax transformation for ``cfg`` (see :func:`decay_boundaries`)."""
    lr = learning_rate_schedule(cfg, steps_per_epoch, total_steps)
    return _chain(cfg.name, cfg.momentum, cfg.weight_decay, lr)


def _chain(name: str, momentum: float, weight_decay: float,
           lr: optax.Schedule) -> optax.GradientTransformation:
    """Optional coupled weight decay, then Adam or SGD with momentum at rate ``lr``."""
    parts = []
    if weight_decay > 0:
        parts.append(optax.add_decayed_weights(weight_decay))
    if name == "adam":
        parts.append(optax.adam(lr))
    else:
        parts.append(optax.sgd(lr, momentum=momentum))
    return optax.chain(*parts)


def schedule_arrays(cfg: OptimConfig, steps_per_epoch: int,
                    total_steps: int | None = None) -> dict[str, np.ndarray]:
    """The run-dependent constants of :func:`learning_rate_schedule` as arrays.

    Returns ``{"boundaries": int32 (K,), "scales": float32 (K,)}`` with
    ``K = len(cfg.decay_epochs)``: the distinct positive :func:`decay_boundaries` in
    ascending order, each with scale ``decay_factor`` (what the optax schedule's
    ``{boundary: scale}`` dict holds), then padding entries (boundary 0, scale 1) that
    leave the rate unchanged, so that ``K`` depends on the config only.
    """
    if cfg.decay_factor < 0:
        raise ValueError(f"decay_factor must be >= 0, got {cfg.decay_factor}")
    bounds = sorted({b for b in decay_boundaries(cfg, steps_per_epoch, total_steps) if b > 0})
    pad = len(cfg.decay_epochs) - len(bounds)
    return {"boundaries": np.array(bounds + [0] * pad, np.int32),
            "scales": np.array([cfg.decay_factor] * len(bounds) + [1.0] * pad, np.float32)}


def scheduled_learning_rate(learning_rate: float, schedule: dict[str, Any]) -> optax.Schedule:
    """``count -> rate`` of :func:`schedule_arrays`' ``schedule`` (numpy or traced arrays).

    The arithmetic of ``optax.piecewise_constant_schedule``, operation for operation,
    with each boundary and scale read from the arrays instead of Python constants: the
    rates are bit for bit optax's. A padding entry (scale 1) returns ``v * 0 + 1 * v`` or
    ``v * 1 + 0 * v``, i.e. ``v`` exactly.
    """
    boundaries, scales = schedule["boundaries"], schedule["scales"]

    def lr(count):
        v = learning_rate
        for i in range(len(boundaries)):
            indicator = jnp.maximum(0.0, jnp.sign(jnp.asarray(boundaries[i]) - count))
            v = v * indicator + (1 - indicator) * jnp.asarray(scales[i]) * v
        return v

    return lr


@dataclasses.dataclass(frozen=True)
class ScheduledOptimizer:
    """:func:`make_optimizer`'s transformation without the run's schedule boundaries.

    Holds only what fixes the program and the optimiser state's structure (optimiser,
    initial rate, momentum, weight decay, number of decay points); the boundaries and
    scales come at update time (:meth:`bind` of :func:`schedule_arrays`). Equal and
    hashable for equal fields, so the train states of runs that differ in their number
    of examples, steps or epochs are the same pytree type to ``jax.jit`` and one compiled
    step serves all of them. Its optimiser state has the structure of
    :func:`make_optimizer`'s (checkpoints of either restore into the other).
    """

    name: str
    learning_rate: float
    momentum: float
    weight_decay: float
    num_boundaries: int

    @classmethod
    def of(cls, cfg: OptimConfig) -> ScheduledOptimizer:
        return cls(cfg.name, cfg.learning_rate, cfg.momentum, cfg.weight_decay,
                   len(cfg.decay_epochs))

    def bind(self, schedule: dict[str, Any]) -> optax.GradientTransformation:
        """The optax transformation at :func:`schedule_arrays`' ``schedule`` (may be
        traced): :func:`make_optimizer`'s, with the same updates bit for bit."""
        return _chain(self.name, self.momentum, self.weight_decay,
                      scheduled_learning_rate(self.learning_rate, schedule))

    def init(self, params):
        """The optimiser state of ``params`` (independent of the schedule)."""
        k = self.num_boundaries
        return self.bind({"boundaries": np.zeros(k, np.int32),
                          "scales": np.ones(k, np.float32)}).init(params)

    def update(self, updates, state, params=None):
        raise TypeError("a ScheduledOptimizer updates only once bound to its schedule: "
                        "use .bind(schedule_arrays(...)) (or jkt.train.step.with_schedule)")
