"""Presets of ``python -m experiments.robustness`` (paper Table 2).

Each preset's docstring gives the exact command and the expected run time.
"""

from __future__ import annotations

import dataclasses

from jkt.train import CIFAR_RECIPE, OptimConfig


@dataclasses.dataclass(frozen=True)
class RobustnessPreset:
    """Jacobian-norm penalties vs ℓ2 and dropout under Gaussian input noise.

    Attributes:
      dataset: ``jkt.data.load`` name.
      model: architecture (VGG-9 in the paper); ``model_options`` its options.
      lambdas: Jacobian-norm strengths λ (prop. 2); 0 is plain cross-entropy.
      weight_decay: ℓ2 baseline strength γ (``None`` to skip the baseline).
      dropout: dropout baseline rate p (``None`` to skip).
      sigmas: noise std on the normalised test images.
      noise_draws: noise draws per σ (mean ± std reported).
      estimator: Jacobian estimator of the penalty (``label`` default; ``full``,
        ``random``, ``rademacher``, ``jvp`` selectable).
      optim, max_steps, seed, image_size: training schedule and data size.
    """

    dataset: str = "digits"
    model: str = "vgg9"
    model_options: dict = dataclasses.field(default_factory=dict)
    lambdas: tuple[float, ...] = (0.0, 0.1, 1.0, 10.0)
    weight_decay: float | None = 1e-3
    dropout: float | None = 0.25
    sigmas: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4)
    noise_draws: int = 5
    estimator: str = "label"
    optim: OptimConfig = CIFAR_RECIPE
    max_steps: int | None = None
    seed: int = 0
    image_size: int = 32
    checkpoint_every: int = 1000


def quick() -> RobustnessPreset:
    """Offline default: digits, quarter-width VGG-9, six models of 300 steps.

        python -m experiments.robustness

    Adam 3e-3 -> 3e-4 at step 240, batch 32; 5 noise draws per σ. 2 minutes on 2 CPU
    cores.
    """
    return RobustnessPreset(
        model_options={"width_multiplier": 0.25},
        optim=OptimConfig("adam", 3e-3, (0.8,), epochs=1, batch_size=32),
        max_steps=300,
    )


def paper() -> RobustnessPreset:
    """The paper's Table 2: CIFAR-100, VGG-9, 500 epochs of app. 10.3's recipe.

        python -m experiments.robustness --preset paper --dataset cifar100 --data-dir DIR

    Six models × 195,500 steps: hours on one modern GPU, not feasible on a CPU.
    """
    return RobustnessPreset(dataset="cifar100", noise_draws=5)


def cifar10() -> RobustnessPreset:
    """Real-data run for one GPU: the CIFAR-10 JPEGs, full-width VGG-9, 15 epochs.

        python -m experiments.robustness --preset cifar10 \\
            --dataset folder:../shared/data/cifar10/train.tar.xz

    Minutes on one GPU.
    """
    return RobustnessPreset(dataset="folder:../shared/data/cifar10/train.tar.xz",
                            optim=dataclasses.replace(CIFAR_RECIPE, epochs=15))


PRESETS = {"quick": quick, "paper": paper, "cifar10": cifar10}
