"""Teacher artifacts: a frozen teacher's variables and :class:`jkt.models.TeacherMeta`,
saved atomically with a content checksum (:mod:`jkt.checkpoint.integrity`) and restored
as a :class:`jkt.models.Teacher`. A damaged artifact is one ``CheckpointError`` line.
"""

import warnings
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from jkt import models, paths, workdir
from jkt.checkpoint.integrity import (
    CHECKSUM_KEY,
    CheckpointError,
    Damaged,
    as_recorded,
    cast_like,
    check_compatible,
    checksum,
    mismatch,
    reading,
    split_meta,
)
from jkt.models.teacher import Teacher, TeacherMeta


def _teacher_checkpointer() -> ocp.Checkpointer:
    """Synchronous checkpointer for the teacher's two items (atomic tmp-dir + rename)."""
    handler = ocp.CompositeCheckpointHandler(
        variables=ocp.StandardCheckpointHandler(), meta=ocp.JsonCheckpointHandler()
    )
    return ocp.Checkpointer(handler)


# What a teacher artifact directory holds (Orbax's two items and its commit markers).
ARTIFACT_ENTRIES = frozenset({"meta", "variables", "_CHECKPOINT_METADATA", "commit_success.txt"})


def check_replaceable(path) -> None:
    """Raises ``ValueError`` (one line) unless ``path`` is missing, an empty directory or a
    teacher artifact: what ``overwrite=True`` may delete. Anything else (a file, a folder
    of other files) was not written by jkt and is left alone."""
    path = paths.absolute(path)
    with paths.storage_errors(path):
        if not path.exists():
            return
        names = {p.name for p in path.iterdir()} if path.is_dir() else None
    if names is not None and (not names or ("meta" in names and names <= ARTIFACT_ENTRIES)):
        return
    what = ("is a file" if names is None else
            f"holds {', '.join(sorted(names - ARTIFACT_ENTRIES)[:3]) or 'other files'}"
            + (" and more" if len(names - ARTIFACT_ENTRIES) > 3 else ""))
    raise ValueError(f"{path} {what}, not a teacher artifact: overwriting replaces only a "
                     "teacher artifact or an empty directory; choose another output directory "
                     "or move those files yourself")


def _teacher_variables_target(meta: TeacherMeta, **overrides):
    model = meta.create_model(**overrides)
    return model, models.abstract_variables(model, tuple(meta.input_size))


def _teacher_fix(path) -> str:
    return f"delete {path} and re-create it (train or import the teacher again)"


def save_teacher(path, variables, meta: TeacherMeta, overwrite: bool = False) -> epath.Path:
    """Writes ``variables`` (``{"params", "batch_stats"}``) and ``meta`` to directory
    ``path`` atomically, with a content checksum of the variables in the meta JSON (key
    ``"_checksum"``). ``overwrite`` replaces an existing teacher artifact or empty directory
    only (:func:`check_replaceable`). Raises ``ValueError`` if the variables do not fit
    ``meta.arch``."""
    path = paths.absolute(path)
    if overwrite:
        check_replaceable(path)
    variables = {k: variables[k] for k in ("params", "batch_stats") if k in variables}
    _, target = _teacher_variables_target(meta)
    check_compatible(
        variables, target, "Teacher variables", "the given variables",
        f"architecture {meta.arch!r} with options {meta.model_options}",
    )
    meta_json = {**meta.to_json(), CHECKSUM_KEY: checksum(variables)}
    try:
        with _teacher_checkpointer() as ckptr:
            ckptr.save(
                path,
                args=ocp.args.Composite(
                    variables=ocp.args.StandardSave(variables),
                    meta=ocp.args.JsonSave(meta_json),
                ),
                force=overwrite,
            )
    except Exception as e:
        cause = workdir.os_cause(e)
        if cause is None:
            raise
        raise workdir.write_error(f"the teacher artifact {path}", cause, path.parent,
                                  "to finish") from e
    return path


def _read_teacher(path: epath.Path) -> tuple[TeacherMeta, Any]:
    """``(meta, checksum record or None)`` of the artifact at ``path``."""
    with paths.storage_errors(path):
        exists = path.exists()
    if not exists:
        raise FileNotFoundError(
            f"No teacher artifact at {path}; check the path, or create one "
            "(train or import a teacher)")
    meta_file = path / "meta" / "metadata"
    try:
        with reading("meta JSON"):
            with _teacher_checkpointer() as ckptr:
                raw = ckptr.restore(path, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
                raw = raw["meta"]
        meta, record = split_meta(raw)
        with reading("meta JSON"):
            return TeacherMeta.from_json(meta), record
    except Damaged as e:
        raise CheckpointError(f"Teacher artifact at {path} is damaged: {e} (meta JSON file "
                              f"{meta_file}); {_teacher_fix(path)}") from None


def read_teacher_meta(path) -> TeacherMeta:
    """The ``TeacherMeta`` of the artifact at ``path``, without loading its weights.
    Raises ``FileNotFoundError`` if ``path`` does not exist and ``CheckpointError`` (naming
    the meta JSON file) if its meta JSON is missing, garbled or incomplete."""
    return _read_teacher(paths.absolute(path))[0]


def restore_teacher(
    path,
    expect_arch: str | None = None,
    model_overrides: dict | None = None,
    sharding: jax.sharding.Sharding | None = None,
) -> Teacher:
    """Loads the teacher artifact at ``path``, checking its content checksum.

    ``expect_arch`` (e.g. ``"resnet34"``) guards against loading the wrong teacher;
    ``model_overrides`` changes non-structural options such as ``dtype``; ``sharding``
    (e.g. replicated over a mesh) places every variable, default: the default device. Raises
    ``FileNotFoundError`` for a missing artifact, ``CheckpointError`` (one line naming the
    path and the fix) for a damaged one (checksum mismatch, unreadable or truncated arrays,
    missing or garbled meta JSON) and ``ValueError`` for an architecture or shape mismatch.
    An artifact saved before checksums existed is restored unverified, with a warning.
    """
    path = paths.absolute(path)
    meta, record = _read_teacher(path)
    if expect_arch is not None and meta.arch != expect_arch:
        raise ValueError(
            f"Teacher artifact at {path} holds architecture {meta.arch!r}, "
            f"but {expect_arch!r} was expected; pass a {expect_arch} teacher's artifact, or "
            f"delete {path} to have it re-created"
        )
    model, target = _teacher_variables_target(meta, **(model_overrides or {}))
    if sharding is not None:
        target = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), target
        )
    try:
        with _teacher_checkpointer() as ckptr:
            with reading("weights metadata"):
                stored = ckptr.metadata(path).item_metadata["variables"]
            stored = getattr(stored, "tree", stored)
            if stored is None:
                raise Damaged("its weights metadata is missing")
            check_compatible(
                stored, target, "Teacher artifact",
                f"the weights at {path}", f"architecture {meta.arch!r} ({meta.model_options})",
            )
            with reading("weights"):
                raw = ckptr.restore(path, args=ocp.args.Composite(
                    variables=ocp.args.StandardRestore(as_recorded(target, record))))
        variables = raw["variables"]
        if record is None:
            warnings.warn(f"Teacher artifact at {path} has no checksum (saved before checksums "
                          "were recorded); restored unverified", stacklevel=2)
        else:
            why = mismatch(record, variables)
            if why:
                raise Damaged(why)
    except Damaged as e:
        raise CheckpointError(
            f"Teacher artifact at {path} is damaged ({e}); {_teacher_fix(path)}") from None
    return Teacher(meta=meta, model=model, variables=cast_like(variables, target))


__all__ = ["ARTIFACT_ENTRIES", "check_replaceable", "read_teacher_meta", "restore_teacher",
           "save_teacher"]
