"""Presets of ``python -m experiments.distill`` (paper Table 1, and §4's Claim: ``kd*``,
``claim``).

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
# App. 10.3 read literally: "500 epochs" are 500 passes over the training images, each in
# batches of 128 with a short last one (docs/reproduction.md, "batching").
PAPER_OPTIM = dataclasses.replace(CIFAR_RECIPE, batching="epoch")
PAPER_DATA = DataConfig("cifar100", validation="unused", augment="none")


def quick() -> DistillConfig:
    """Offline default: scikit-learn's digits, quarter-width VGG-9 -> VGG-4.

        python -m experiments.distill

    Teacher 300 steps (Adam 1e-3, batch 64), then 6 methods × n ∈ {1, 5, 20} × 2 seeds of
    200 steps each (Adam 3e-3 -> 3e-4 at step 160, batch 32). Pad-4 crops, no flips (a
    flipped digit is not a digit); validation on 10 % of the train split held out from
    everything. Run time: docs/results.md.
    """
    return DistillConfig(
        data=DataConfig("digits", augment="crop"),
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

    The teacher and the "full" column train on the whole official train split (50,000
    images, 500 per class; no validation set); a run on n < 500 images per class draws
    them from the train split and is validated on 50 other images per class (5,000) that
    are not in its subset. Adam 1e-3 -> 1e-4 at epoch 400 of 500, batch 128, an epoch one
    pass over the run's images (``optim.batching=epoch``: the last batch of an epoch is
    short, e.g. one batch of 100 an epoch at n=1): 195,500 steps for the teacher and each
    "full" run (391 per epoch), 500 (n=1), 2,000 (n=5), 4,000 (n=10), 20,000 (n=50) and
    39,500 (n=100) per run; 6 methods × 3 seeds. The teacher is exactly
    ``python -m experiments.train_teacher --preset paper``'s. Jacobian rows with
    cross-entropy use the true-label output (§4.1, app. 10.2), "Match {activations +
    Jacobians}" the teacher's top output (no labels). No augmentation (the paper names
    none; ``--config.data.augment=crop+flip`` for the usual CIFAR one). results.md shows
    the paper's numbers beside ours.
    """
    return DistillConfig(workdir="runs/distill_paper", data=PAPER_DATA,
                         n_per_class=(1, 5, 10, 50, 100, "full"), seeds=(0, 1, 2),
                         optim=PAPER_OPTIM, teacher_optim=PAPER_OPTIM, compare_to_paper=True)


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


# Squared-error and soft-target distillation, each with and without Jacobians (§6.1: "We
# found that squared loss worked much better than the cross-entropy loss for distillation
# and it was much easier to tune."): with and without cross-entropy.
KD_METHODS = ("ce", "ce+act", "ce+act+jac", "ce+kd", "ce+kd+jac", "act", "act+jac", "kd",
              "kd+jac")
# The Claim (§3, prop. 1): Jacobian matching at weight σ² on all outputs, beside its
# stochastic counterpart, activation matching on inputs with Gaussian noise of std σ.
CLAIM_METHODS = ("ce+act", "ce+act+jac", "ce+act_noise", "act", "act+jac", "act_noise")


def kd() -> DistillConfig:
    """Soft targets vs squared error, quick (digits, as ``quick``): 9 methods (CE; CE +
    activations; CE + activations + Jacobians; CE + soft targets (KD, T = 4); CE + soft
    targets + eq. 2's Jacobian term; the same four without CE) × n ∈ {5, 20} × 2 seeds.

        python -m experiments.distill --preset kd
    """
    return dataclasses.replace(quick(), workdir="runs/distill_kd", methods=KD_METHODS,
                               n_per_class=(5, 20))


def kd_cifar10() -> DistillConfig:
    """Soft targets vs squared error on the CIFAR-10 JPEGs (the ``cifar10`` preset's
    recipe and sizes), 9 methods.

        python -m experiments.distill --preset kd-cifar10
    """
    return dataclasses.replace(cifar10(), workdir="runs/distill_kd_cifar10",
                               methods=KD_METHODS)


def kd_paper() -> DistillConfig:
    """Soft targets vs squared error at the paper's size: Table 1's protocol (CIFAR-100,
    VGG-9 -> VGG-4, app. 10.2-10.3), 9 methods, compared with the paper's rows where it has
    them.

        python -m experiments.distill --preset kd-paper --data-dir DIR
    """
    return dataclasses.replace(paper(), workdir="runs/distill_kd_paper", methods=KD_METHODS,
                               compare_to_paper=False)


def claim() -> DistillConfig:
    """The Claim measured (quick, digits as ``quick``): Jacobian matching in prop. 1's
    analytic form for input noise σ = 0.1 (weight σ² on all 10 outputs) beside activation
    matching on noisy inputs (one draw of σ = 0.1 per example and step), with and without
    CE, and plain activation matching; n ∈ {5, 20} × 2 seeds, each run trained alone
    (fusion off) so that wall times compare. results.md adds wall time and the final
    matched losses.

        python -m experiments.distill --preset claim
    """
    return dataclasses.replace(quick(), workdir="runs/distill_claim", methods=CLAIM_METHODS,
                               n_per_class=(5, 20), noise_sigma=0.1, jacobian_as_noise=True,
                               fusion="off")


PRESETS = {"quick": quick, "paper": paper, "cifar10": cifar10, "kd": kd,
           "kd-cifar10": kd_cifar10, "kd-paper": kd_paper, "claim": claim}


def get_config(name: str | None = None) -> DistillConfig:
    """The preset ``name`` (default ``quick``)."""
    from jkt.config import preset

    return preset(PRESETS, name, "quick")
