"""What one benchmark invocation times, and the Table-1 schedule it projects onto.

The presets (the reference setting and the reduced CPU setting) are configuration and
live in ``experiments/configs/bench.py``; this module holds the dataclass they return
and the constants of the paper's Table-1 schedule (app. 10.3) that turn a measured
step time into the wall time of the whole grid.
"""

from __future__ import annotations

import dataclasses
import math

from jkt.ranges import MAX_SEED, check_int, check_number

# Input normalisation of every benchmarked step (CIFAR-100 channel statistics): the
# benchmark feeds random uint8 images, so only the arithmetic matters, not the values.
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


@dataclasses.dataclass(frozen=True)
class BenchSetting:
    """What one benchmark invocation times.

    Attributes:
      batch_size: global batch ``B`` (images per step, per run of a fused step).
      num_classes: outputs ``K`` of teacher and student (the ``full`` estimator does K
        reverse passes per network).
      width_multiplier: channel width of every VGG.
      image_size: square input side ``S`` (inputs are ``(B, S, S, 3)`` uint8).
      steps: timed steps per method (after ``warmup``), fewer if ``max_seconds`` runs out.
      warmup: untimed steps after the compiling first call.
      max_seconds: stop timing a method after this many seconds of timed steps
        (at least ``min_steps`` are always timed).
      min_steps: lower bound on timed steps.
      dtype: ``"float32"`` or ``"bfloat16"`` (model compute dtype; losses stay float32).
      small: whether this is the reduced CPU setting (labelled in every output, since
        its numbers say nothing about the reference setting).
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
            check_int(f, getattr(self, f))
        check_int("warmup", self.warmup, 0)
        check_number("width_multiplier", self.width_multiplier, 0, low_open=True)
        check_number("max_seconds", self.max_seconds, 0, low_open=True)
        if self.min_steps > self.steps:  # fewer timed steps asked for
            object.__setattr__(self, "min_steps", self.steps)
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be float32 or bfloat16, got {self.dtype!r}")


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """One benchmark invocation: the setting, what to time and where to write it.

    Attributes:
      setting: sizes and timing (:class:`BenchSetting`).
      methods: names from ``jkt.bench.METHODS`` (empty: all of them).
      devices: use the first N devices (``None``: all).
      torch: time the eager PyTorch reference next to jkt (when installed and float32).
      torch_threads: ``torch.set_num_threads`` for a CPU reference.
      out: directory for ``bench.md``/``bench.json`` (``None``: print only).
      seed: seed of the models' initial weights and the batch.
      overwrite: replace the report of an earlier benchmark in ``out`` (otherwise the
        command refuses to write there).
    """

    setting: BenchSetting = BenchSetting()
    methods: tuple[str, ...] = ()
    devices: int | None = None
    torch: bool = True
    torch_threads: int | None = None
    out: str | None = None
    seed: int = 0
    overwrite: bool = False

    def __post_init__(self):
        from jkt.bench.methods import METHODS

        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {', '.join(unknown)}; valid: "
                             f"{', '.join(METHODS)}")
        for f in ("devices", "torch_threads"):
            if getattr(self, f) is not None:
                check_int(f, getattr(self, f))
        check_int("seed", self.seed, 0, MAX_SEED)
        if self.out is not None and not str(self.out).strip():
            raise ValueError("out must be a directory (or none), got an empty path")


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
