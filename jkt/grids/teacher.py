"""The teacher experiment: a network trained with cross-entropy on a whole training split,
saved as a teacher artifact (``python -m experiments.train_teacher``)."""

from __future__ import annotations

import dataclasses

from jkt import data, parallel
from jkt.data.stream import options_of
from jkt.data.types import DataConfig
from jkt.grids.validate import check_model, check_steps
from jkt.models.teacher import Teacher
from jkt.ranges import MAX_SEED, check_int
from jkt.train.optim import CIFAR_RECIPE, OptimConfig
from jkt.train.teacher import train_teacher


@dataclasses.dataclass(frozen=True)
class TeacherConfig:
    """A teacher trained with cross-entropy on a whole training split.

    Attributes:
      workdir: output directory (``artifact/`` and the resumable ``run/``).
      data: the dataset.
      arch: architecture; ``model_options`` its ``jkt.models.create`` options.
      optim: optimiser, schedule, epochs and batch size; ``max_steps`` an optional cap.
      seed: initialisation and data-order seed.
      checkpoint_every: steps between checkpoints.
      progress: show a progress bar.
      trust_teacher: use an artifact already in ``workdir`` that carries no checksum of its
        weights and meta (written by an older jkt) unverified, with a warning.
    """

    workdir: str = "runs/teacher"
    data: DataConfig = DataConfig()
    arch: str = "vgg9"
    model_options: dict = dataclasses.field(default_factory=dict)
    optim: OptimConfig = CIFAR_RECIPE
    max_steps: int | None = None
    seed: int = 0
    checkpoint_every: int = 1000
    progress: bool = True
    trust_teacher: bool = False

    def __post_init__(self):
        check_model(self.arch, self.model_options, "teacher", "model_options")
        check_steps(self, ("max_steps", "checkpoint_every"))
        check_int("seed", self.seed, 0, MAX_SEED)


def run(cfg: TeacherConfig, *, mesh=None, stop=None) -> Teacher:
    """Loads ``cfg.data`` and :func:`jkt.train.teacher.train_teacher` into ``cfg.workdir``."""
    ds = data.load_config(cfg.data)
    parallel.barrier("data loaded")  # before the first collective (a checkpoint read)
    return train_teacher(ds, cfg.workdir, arch=cfg.arch, model_options=cfg.model_options,
                         optim=cfg.optim, max_steps=cfg.max_steps, seed=cfg.seed,
                         checkpoint_every=cfg.checkpoint_every, progress=cfg.progress,
                         augment=cfg.data.augment, mesh=mesh, stop=stop,
                         stream_options=options_of(cfg.data),
                         trust_unverified=cfg.trust_teacher,
                         record_name="teacher.json")  # config.json: the launch's config


__all__ = ["TeacherConfig", "run"]
