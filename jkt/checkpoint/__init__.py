"""Orbax checkpoints: resumable train states and frozen teacher artifacts, both verified.

* :mod:`jkt.checkpoint.manager`: :class:`TrainCheckpointer`, the Orbax manager of a run's
  train-state checkpoints (keep-last-N, atomic, falls back over damaged steps);
* :mod:`jkt.checkpoint.integrity`: content checksums and :class:`CheckpointError`;
* :mod:`jkt.checkpoint.teacher`: :func:`save_teacher` / :func:`restore_teacher` of
  :class:`jkt.models.Teacher` artifacts.
"""

from jkt.checkpoint.integrity import CHECKSUM_KEY, CheckpointError
from jkt.checkpoint.manager import TrainCheckpointer, latest_saved_step
from jkt.checkpoint.teacher import (
    check_replaceable,
    read_teacher_meta,
    restore_teacher,
    save_teacher,
)
from jkt.models.teacher import Teacher, TeacherMeta

__all__ = ["CHECKSUM_KEY", "CheckpointError", "Teacher", "TeacherMeta", "TrainCheckpointer",
           "check_replaceable", "latest_saved_step", "read_teacher_meta", "restore_teacher",
           "save_teacher"]
