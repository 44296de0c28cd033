"""Settings of ``python -m experiments.bench`` (train-step speed, issue 7).

``reference()`` is the issue's reference setting (the paper's CIFAR-100 Table 1 step);
``small()`` is what a CPU-only machine runs (chosen automatically there).
"""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class BenchSetting:
    """What one benchmark invocation times.

    Attributes:
      batch_size: global batch (images per step).
      num_classes: outputs of teacher and student (the ``full`` estimator does K passes).
      width_multiplier: channel width of every VGG.
      image_size: square input side (inputs are ``(S, S, 3)`` uint8).
      steps: timed steps per method (after ``warmup``), fewer if ``max_seconds`` runs out.
      warmup: untimed steps after the compiling first call.
      max_seconds: stop timing a method after this many seconds of timed steps
        (at least ``min_steps`` are always timed).
      min_steps: lower bound on timed steps.
      dtype: ``"float32"`` or ``"bfloat16"`` (model compute dtype; losses stay float32).
      small: whether this is the reduced CPU setting (labelled in every output).
    """

    batch_size: int = 128
    num_classes: int = 100
    width_multiplier: float = 1.0
    image_size: int = 32
    steps: int = 30
    warmup: int = 3
    max_seconds: float = 5.0
    min_steps: int = 3
    dtype: str = "float32"
    small: bool = False

    def __post_init__(self):
        for f in ("batch_size", "num_classes", "image_size", "steps", "min_steps"):
            if getattr(self, f) <= 0:
                raise ValueError(f"{f} must be positive, got {getattr(self, f)}")
        if self.warmup < 0 or not self.width_multiplier > 0 or not self.max_seconds > 0:
            raise ValueError("warmup must be >= 0, width_multiplier and max_seconds > 0")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be float32 or bfloat16, got {self.dtype!r}")


def reference() -> BenchSetting:
    """The issue's reference: batch 128, VGG-9 -> VGG-4 at full width, 32x32x3, 100 classes,
    fp32, 30 timed steps per method (5 s cap per method and framework).

        python -m experiments.bench --out runs/bench

    A few minutes on one modern GPU (compilation dominates; the ``full`` estimator does
    100 reverse passes per network per step).
    """
    return BenchSetting()


def small() -> BenchSetting:
    """CPU setting (automatic when JAX's backend is the CPU, or ``--small``): batch 16,
    quarter width, 10 classes, 5 timed steps per method.

        python -m experiments.bench --small

    About 1-2 minutes on 2 CPU cores, torch reference included.
    """
    return BenchSetting(batch_size=16, num_classes=10, width_multiplier=0.25, steps=5,
                        warmup=1, max_seconds=5.0, min_steps=2, small=True)


# Table 1's schedule (app. 10.3): 500 epochs at batch 128; n points per class of 100 classes.
TABLE1_EPOCHS = 500
TABLE1_BATCH = 128
TABLE1_CLASSES = 100
TABLE1_N_PER_CLASS = (1, 5, 10, 50, 100, 500)
TEACHER_TRAIN_EXAMPLES = 50_000


def table1_student_steps() -> int:
    """Steps of one Table-1 method over all n per class: ``500 · Σ_n ceil(100 n / 128)``."""
    return TABLE1_EPOCHS * sum(math.ceil(TABLE1_CLASSES * n / TABLE1_BATCH)
                               for n in TABLE1_N_PER_CLASS)


def teacher_steps() -> int:
    """Steps of the VGG-9 teacher: ``500 · ceil(50000 / 128)``."""
    return TABLE1_EPOCHS * math.ceil(TEACHER_TRAIN_EXAMPLES / TABLE1_BATCH)
