"""Presets of ``python -m experiments.train_teacher``: ``get_config(name)`` returns a
:class:`jkt.grids.teacher.TeacherConfig`."""

from __future__ import annotations

from experiments.configs import distill
from jkt.grids.teacher import TeacherConfig


def default() -> TeacherConfig:
    """A full-width VGG-9 with app. 10.3's CIFAR recipe on the offline digits data."""
    return TeacherConfig()


def paper() -> TeacherConfig:
    """The paper's teacher, exactly the one ``distill --preset paper`` trains: VGG-9 on
    the whole official CIFAR-100 train split (50,000 images, no validation set, no
    augmentation), 500 epochs of one pass each (``optim.batching=epoch``), Adam 1e-3 ->
    1e-4 at epoch 400, batch 128, seed 0 (``tests/protocol_test.py`` compares the two).

        python -m experiments.train_teacher --preset paper --data-dir DIR

    Its artifact (``runs/teacher_cifar100/artifact``) can be passed to ``distill --preset
    paper --teacher``.
    """
    grid = distill.paper()
    return TeacherConfig(workdir="runs/teacher_cifar100", data=grid.data, arch=grid.teacher,
                         model_options=dict(grid.teacher_options), optim=grid.teacher_optim,
                         max_steps=grid.teacher_max_steps)


PRESETS = {"default": default, "paper": paper}


def get_config(name: str | None = None) -> TeacherConfig:
    from jkt.config import preset

    return preset(PRESETS, name, "default")
