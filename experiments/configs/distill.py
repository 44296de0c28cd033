"""Presets of ``python -m experiments.distill`` (paper Table 1).

Each preset's docstring gives the exact command and the expected run time.
"""

from __future__ import annotations

import dataclasses

from jkt.train import CIFAR_RECIPE, FUSION_MODES, TABLE1_METHODS, OptimConfig

FUSION_CHOICES = (*FUSION_MODES, "off")


@dataclasses.dataclass(frozen=True)
class DistillPreset:
    """A Table-1 grid: a teacher, a student, methods × points per class × seeds.

    Attributes:
      dataset: ``jkt.data.load`` name (``digits``, ``cifar100``, ``folder:PATH``, ...).
      student, teacher: model names; ``*_options`` their ``jkt.models.create`` options.
      methods: names from ``jkt.train.METHODS``.
      n_per_class: points per class (``"full"`` for the whole training split).
      seeds: one run per seed; the seed picks the subset, the init and the data order.
      optim / teacher_optim: student / teacher optimiser, schedule, epochs, batch size.
      max_steps / teacher_max_steps: optional caps on steps (for quick presets).
      estimator: Jacobian estimator (app. 10.2 uses the true-label output).
      image_size: images are resized to this square size.
      checkpoint_every: steps between a run's checkpoints.
      fusion: ``"unroll"`` (default) or ``"vmap"`` trains the methods of one (n, seed) cell
        that need the same passes in one jitted step (``jkt.train.fused``: shared
        batches and teacher passes; same numbers as separate runs to float rounding);
        ``"off"`` trains every run on its own.
      fusion_groups: ``"passes"`` (default) fuses runs that need the same passes
        (``jkt.train.fusion_groups``: Table 1 -> [ce], [ce+act, act], [the 3 Jacobian
        methods]); ``"all"`` fuses every method of a cell into one step (runs whose
        weight on a term is 0 still pay for computing it).
      dtype: compute dtype of the students and of the teacher inside the student steps
        (``"float32"`` or ``"bfloat16"``: convolutions and matmuls in bf16; parameters,
        optimiser state, logits and losses stay float32). The teacher is trained in float32.
    """

    dataset: str = "digits"
    student: str = "vgg4"
    student_options: dict = dataclasses.field(default_factory=dict)
    teacher: str = "vgg9"
    teacher_options: dict = dataclasses.field(default_factory=dict)
    methods: tuple[str, ...] = TABLE1_METHODS
    n_per_class: tuple = (1, 5, 10, 50, 100, "full")
    seeds: tuple[int, ...] = (0,)
    optim: OptimConfig = CIFAR_RECIPE
    teacher_optim: OptimConfig = CIFAR_RECIPE
    max_steps: int | None = None
    teacher_max_steps: int | None = None
    estimator: str = "label"
    normalize: bool = False
    image_size: int = 32
    checkpoint_every: int = 1000
    fusion: str = "unroll"
    dtype: str = "float32"
    fusion_groups: str = "passes"

    def __post_init__(self):
        if self.fusion_groups not in ("passes", "all"):
            raise ValueError(f"fusion_groups must be passes or all, got {self.fusion_groups!r}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be float32 or bfloat16, got {self.dtype!r}")
        if self.fusion not in FUSION_CHOICES:
            raise ValueError(f"fusion must be one of {FUSION_CHOICES}, got {self.fusion!r}")


def quick() -> DistillPreset:
    """Offline default: scikit-learn's digits, quarter-width VGG-9 -> VGG-4.

        python -m experiments.distill

    Teacher 300 steps (Adam 1e-3, batch 64), then 6 methods × n ∈ {1, 5, 20} × 2 seeds of
    200 steps each (Adam 3e-3 -> 3e-4 at step 160, batch 32). 3.7 minutes on 2 CPU cores
    (fused runs; 5.5 minutes with --fusion off).
    """
    return DistillPreset(
        dataset="digits",
        student_options={"width_multiplier": 0.25},
        teacher_options={"width_multiplier": 0.25},
        n_per_class=(1, 5, 20),
        seeds=(0, 1),
        optim=OptimConfig("adam", 3e-3, (0.8,), epochs=1, batch_size=32),
        teacher_optim=OptimConfig("adam", 1e-3, (0.8,), epochs=1, batch_size=64),
        max_steps=200,
        teacher_max_steps=300,
    )


def paper() -> DistillPreset:
    """The paper's Table 1: CIFAR-100, VGG-9 teacher, VGG-4 student, app. 10.2-10.3.

        python -m experiments.distill --preset paper --dataset cifar100 --data-dir DIR

    Adam 1e-3 -> 1e-4 at epoch 400 of 500, batch 128, true-label Jacobians, 3 seeds.
    About 261,500 steps per method and seed: days on a CPU, hours on one modern GPU.
    """
    return DistillPreset(dataset="cifar100", n_per_class=(1, 5, 10, 50, 100, "full"),
                         seeds=(0, 1, 2))


def cifar10() -> DistillPreset:
    """Real-data grid for one GPU: the CIFAR-10 JPEGs, full-width VGG-9 -> VGG-4.

        python -m experiments.distill --preset cifar10 \\
            --dataset folder:../shared/data/cifar10/train.tar.xz

    Teacher 15 epochs; students 30 epochs capped at 1,500 steps; n ∈ {1, 5, 10, 50, 100},
    2 seeds. Minutes on one GPU; impractical on 2 CPU cores.
    """
    return DistillPreset(
        dataset="folder:../shared/data/cifar10/train.tar.xz",
        n_per_class=(1, 5, 10, 50, 100),
        seeds=(0, 1),
        optim=dataclasses.replace(CIFAR_RECIPE, epochs=30),
        teacher_optim=dataclasses.replace(CIFAR_RECIPE, epochs=15),
        max_steps=1500,
    )


PRESETS = {"quick": quick, "paper": paper, "cifar10": cifar10}
