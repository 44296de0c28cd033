"""Presets of ``python -m experiments.distill`` (paper Table 1).

``get_config(name)`` returns a :class:`jkt.grids.distill.DistillConfig`; any field can then
be overridden on the command line (``--config.optim.learning_rate=3e-3``). Each preset's
docstring gives the exact command.
"""

from __future__ import annotations

import dataclasses

from jkt.data import DataConfig
from jkt.grids.distill import DistillConfig
from jkt.train import CIFAR_RECIPE, OptimConfig

CIFAR10_JPEGS = "folder:../shared/data/cifar10/train.tar.xz"


def quick() -> DistillConfig:
    """Offline default: scikit-learn's digits, quarter-width VGG-9 -> VGG-4.

        python -m experiments.distill

    Teacher 300 steps (Adam 1e-3, batch 64), then 6 methods × n ∈ {1, 5, 20} × 2 seeds of
    200 steps each (Adam 3e-3 -> 3e-4 at step 160, batch 32). Run time: README, Results.
    """
    return DistillConfig(
        data=DataConfig("digits"),
        student_options={"width_multiplier": 0.25},
        teacher_options={"width_multiplier": 0.25},
        n_per_class=(1, 5, 20),
        seeds=(0, 1),
        optim=OptimConfig("adam", 3e-3, (0.8,), epochs=1, batch_size=32),
        teacher_optim=OptimConfig("adam", 1e-3, (0.8,), epochs=1, batch_size=64),
        max_steps=200,
        teacher_max_steps=300,
    )


def paper() -> DistillConfig:
    """The paper's Table 1: CIFAR-100, VGG-9 teacher, VGG-4 student, app. 10.2-10.3.

        python -m experiments.distill --preset paper --data-dir DIR

    Adam 1e-3 -> 1e-4 at epoch 400 of 500, batch 128, true-label Jacobians, 3 seeds.
    """
    return DistillConfig(workdir="runs/distill_paper", data=DataConfig("cifar100"),
                         n_per_class=(1, 5, 10, 50, 100, "full"), seeds=(0, 1, 2))


def cifar10() -> DistillConfig:
    """Real-data grid for one GPU: the CIFAR-10 JPEGs, full-width VGG-9 -> VGG-4.

        python -m experiments.distill --preset cifar10

    Teacher 15 epochs; students 30 epochs capped at 1,500 steps; n ∈ {1, 5, 10, 50, 100},
    2 seeds.
    """
    return DistillConfig(
        workdir="runs/distill_cifar10",
        data=DataConfig(CIFAR10_JPEGS),
        n_per_class=(1, 5, 10, 50, 100),
        seeds=(0, 1),
        optim=dataclasses.replace(CIFAR_RECIPE, epochs=30),
        teacher_optim=dataclasses.replace(CIFAR_RECIPE, epochs=15),
        max_steps=1500,
    )


PRESETS = {"quick": quick, "paper": paper, "cifar10": cifar10}


def get_config(name: str | None = None) -> DistillConfig:
    """The preset ``name`` (default ``quick``)."""
    from jkt.config import preset

    return preset(PRESETS, name, "quick")
