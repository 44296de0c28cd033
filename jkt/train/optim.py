"""Optimisers and learning-rate schedules of appendix 10.3, built from optax.

The schedule is optax's (:func:`learning_rate_schedule`); its boundaries depend on a run's
number of examples and steps. The training loop evaluates it on the host
(:func:`learning_rates`) and passes the current rate to its jitted step, which builds the
optax transformation at that rate (:class:`Optimizer`): runs that differ only in their
data size, step count or schedule share one compiled step. :func:`make_optimizer` is the
same transformation with the schedule inside, for a loop of your own.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import numpy as np
import optax

from jkt.data.batches import BATCHING
from jkt.ranges import check_int, check_number


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
      batching: how the ``N`` training images become batches
        (:class:`jkt.data.BatchStream`). ``"cycle"``: every batch holds ``batch_size``
        images of the concatenated per-epoch permutations, so batches cross epoch
        boundaries and a set smaller than a batch repeats images inside one (n = 1 of
        CIFAR-100: 128 of 100 images a step). ``"epoch"``: one pass over the images per
        epoch in a fresh permutation, the last batch short (``N mod batch_size``; at n =
        1 one batch of 100 an epoch), as an ordinary epoch loader; on a data-parallel
        mesh of ``D`` devices the short batch is rounded down to a multiple of ``D`` (the
        few images left over are skipped that epoch, different ones each epoch) and a set
        of fewer than ``D`` images is refused. Either way an epoch is
        ``ceil(N / batch_size)`` steps (one fewer when the rounding leaves no short batch).
    """

    name: str = "adam"
    learning_rate: float = 1e-3
    decay_epochs: tuple[float, ...] = (0.8,)
    decay_factor: float = 0.1
    epochs: int = 500
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 0.0
    batching: Literal["cycle", "epoch"] = "cycle"

    def __post_init__(self):
        if self.name not in ("adam", "sgd"):
            raise ValueError(f"unknown optimiser {self.name!r}; valid: adam, sgd")
        if self.batching not in BATCHING:
            raise ValueError(f"unknown batching {self.batching!r}; valid: "
                             f"{', '.join(BATCHING)}")
        check_number("learning_rate", self.learning_rate, 0, low_open=True)
        check_int("epochs", self.epochs)
        check_int("batch_size", self.batch_size)
        check_number("momentum", self.momentum, 0, 1, high_open=True)
        check_number("weight_decay", self.weight_decay, 0)
        check_number("decay_factor", self.decay_factor, 0, 1, low_open=True)
        if not isinstance(self.decay_epochs, tuple | list):
            raise ValueError(f"decay_epochs takes a tuple of epochs, got {self.decay_epochs!r}")
        for epoch in self.decay_epochs:  # (0, 1): a fraction of the run; else an epoch
            check_number("decay_epochs", epoch, 0, low_open=True)


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


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """The optax transformation of an :class:`OptimConfig` at a learning rate given when it
    is built: what a compiled train step is built from (equal and hashable for equal
    fields; the schedule stays on the host).

    ``Optimizer.of(cfg)(learning_rate)`` is optional coupled weight decay
    (``optax.add_decayed_weights``), then ``optax.adam`` or ``optax.sgd`` with momentum.
    ``learning_rate`` is a number, an optax schedule, or a traced scalar (the train step
    passes the current step's rate); a number is wrapped as a constant schedule, so the
    optimiser state has one structure, that of a scheduled optax optimiser, whatever is
    passed (checkpoints of every kind restore into each other).
    """

    name: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0

    @classmethod
    def of(cls, cfg: OptimConfig) -> Optimizer:
        return cls(cfg.name, cfg.momentum, cfg.weight_decay)

    def __call__(self, learning_rate) -> optax.GradientTransformation:
        lr = learning_rate if callable(learning_rate) else (lambda count: learning_rate)
        parts = []
        if self.weight_decay > 0:
            parts.append(optax.add_decayed_weights(self.weight_decay))
        if self.name == "adam":
            parts.append(optax.adam(lr))
        else:
            parts.append(optax.sgd(lr, momentum=self.momentum))
        return optax.chain(*parts)

    def init(self, params):
        """The optimiser state of ``params`` (independent of the learning rate)."""
        return self(0.0).init(params)


def make_optimizer(cfg: OptimConfig, steps_per_epoch: int,
                   total_steps: int | None = None) -> optax.GradientTransformation:
    """The optax transformation of ``cfg`` with its schedule inside (see
    :func:`decay_boundaries`)."""
    return Optimizer.of(cfg)(learning_rate_schedule(cfg, steps_per_epoch, total_steps))


def learning_rates(cfg: OptimConfig, steps_per_epoch: int, total_steps: int) -> np.ndarray:
    """float32 ``(total_steps,)``: :func:`learning_rate_schedule` at every step of a run.

    Evaluated once, on the host's default device, before the run's first step (a rate
    fetched step by step would wait for the step before it on an accelerator). Each rate
    is optax's, bit for bit: the schedule multiplies exact 0/1 indicators and scales.
    """
    schedule = learning_rate_schedule(cfg, steps_per_epoch, total_steps)
    steps = np.arange(total_steps, dtype=np.int32)
    return np.asarray(jax.vmap(schedule)(steps), np.float32).reshape(total_steps)


__all__ = ["BATCHING", "CIFAR_RECIPE", "MIT_RECIPE", "RECIPES", "OptimConfig", "Optimizer",
           "decay_boundaries", "learning_rate_schedule", "learning_rates", "make_optimizer"]
