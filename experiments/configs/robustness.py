"""Presets of ``python -m experiments.robustness`` (paper Table 2).

``get_config(name)`` returns a :class:`jkt.grids.robustness.RobustnessConfig`; any field
can then be overridden on the command line. Each preset's docstring gives the command.
"""

from __future__ import annotations

import dataclasses

from jkt.data import DataConfig
from jkt.grids.robustness import RobustnessConfig
from jkt.train import CIFAR_RECIPE, OptimConfig


def quick() -> RobustnessConfig:
    """Offline default: digits, quarter-width VGG-9, six models of 300 steps.

        python -m experiments.robustness

    Adam 3e-3 -> 3e-4 at step 240, batch 32; pad-4 crops, no flips (a flipped digit is
    not a digit); 5 noise draws per σ.
    """
    return RobustnessConfig(
        data=DataConfig("digits", augment="crop"),
        model_options={"width_multiplier": 0.25},
        optim=OptimConfig("adam", 3e-3, (0.8,), epochs=1, batch_size=32),
        max_steps=300,
    )


def paper() -> RobustnessConfig:
    """The paper's Table 2: CIFAR-100, VGG-9, 500 epochs of app. 10.3's recipe.

        python -m experiments.robustness --preset paper --data-dir DIR

    Every model trains on the whole official train split (50,000 images; no validation
    set): Adam 1e-3 -> 1e-4 at epoch 400 of 500, batch 128, an epoch one pass over the
    images (``optim.batching=epoch``: 390 batches of 128 and one of 80), 195,500 steps
    per model; no augmentation (the paper names none). λ ∈ {0, 0.1, 1, 10} with the
    true-label Jacobian-norm penalty, ℓ2 γ = 1e-3, dropout p = 0.25; 5 noise draws per σ.
    results.md shows the paper's numbers beside ours.
    """
    return RobustnessConfig(workdir="runs/robustness_paper",
                            data=DataConfig("cifar100", validation="none", augment="none"),
                            optim=dataclasses.replace(CIFAR_RECIPE, batching="epoch"),
                            noise_draws=5, compare_to_paper=True)


def cifar10() -> RobustnessConfig:
    """Real-data run for one GPU: the CIFAR-10 JPEGs, full-width VGG-9, 15 epochs.

        python -m experiments.robustness --preset cifar10
    """
    return RobustnessConfig(workdir="runs/robustness_cifar10",
                            data=DataConfig("folder:../shared/data/cifar10/train.tar.xz"),
                            optim=dataclasses.replace(CIFAR_RECIPE, epochs=15))


PRESETS = {"quick": quick, "paper": paper, "cifar10": cifar10}


def get_config(name: str | None = None) -> RobustnessConfig:
    """The preset ``name`` (default ``quick``)."""
    from jkt.config import preset

    return preset(PRESETS, name, "quick")
