"""Presets of ``python -m experiments.train_teacher``: ``get_config(name)`` returns a
:class:`jkt.grids.teacher.TeacherConfig`."""

from __future__ import annotations

from jkt.data import DataConfig
from jkt.grids.teacher import TeacherConfig


def default() -> TeacherConfig:
    """A full-width VGG-9 with app. 10.3's CIFAR recipe on the offline digits data."""
    return TeacherConfig()


def paper() -> TeacherConfig:
    """The paper's teacher: VGG-9 on CIFAR-100, 500 epochs, Adam 1e-3 -> 1e-4 at epoch 400.

        python -m experiments.train_teacher --preset paper --data-dir DIR
    """
    return TeacherConfig(workdir="runs/teacher_cifar100", data=DataConfig("cifar100"))


PRESETS = {"default": default, "paper": paper}


def get_config(name: str | None = None) -> TeacherConfig:
    from jkt.config import preset

    return preset(PRESETS, name, "default")
