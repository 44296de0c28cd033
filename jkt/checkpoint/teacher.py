"""Teacher artifacts: a frozen teacher's variables and :class:`jkt.models.TeacherMeta`,
saved atomically with a content checksum of both (:mod:`jkt.checkpoint.integrity`) and
restored as a :class:`jkt.models.Teacher`.

* A damaged artifact (weights or meta that do not match the checksum, unreadable files)
  is one ``CheckpointError`` line; it advises deleting the directory only when the
  directory holds nothing but the artifact.
* A path that is not a teacher artifact (a file such as ``.pth`` weights, a work
  directory or training-checkpoint directory, a folder of other files) is one
  ``ValueError`` line saying what it is and what to pass instead.
* An artifact without a checksum of its weights and meta (written by hand or by an older
  jkt) is refused unless ``trust_unverified`` is set.
"""

import hashlib
import json
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


WEIGHT_FILES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt", ".h5", ".npz")
META_DIGEST_KEY = "meta_sha256"
"""Key of the checksum record that holds the SHA-256 of the artifact's meta JSON."""


def meta_digest(meta_json: dict) -> str:
    """SHA-256 of a meta JSON object (without the checksum record), keys sorted."""
    meta_json = {k: v for k, v in meta_json.items() if k != CHECKSUM_KEY}
    return hashlib.sha256(json.dumps(meta_json, sort_keys=True).encode()).hexdigest()


def _entries(path) -> set[str] | None:
    """Names in directory ``path`` (``None`` if it is not a directory)."""
    return {p.name for p in path.iterdir()} if path.is_dir() else None


def _teacher_fix(path) -> str:
    """What to do about a damaged artifact: delete it only if it holds nothing else."""
    names = _entries(path) or set()
    if names <= ARTIFACT_ENTRIES:
        return f"delete {path} and re-create it (train or import the teacher again)"
    return (f"re-create the teacher artifact elsewhere (train or import it again); {path} "
            "also holds other files, so it was left as it is")


def _not_an_artifact(path) -> str | None:
    """Why ``path`` (which exists) is not a teacher artifact, or ``None`` if it looks like
    one (a directory with a ``meta`` entry)."""
    names = _entries(path)
    if names is None:
        hint = ""
        if path.name.lower().endswith(WEIGHT_FILES):
            hint = (f"; convert weights with python -m experiments.import_torchvision --weights "
                    f"{path} --out DIR and pass DIR")
        return f"{path} is a file, not a teacher artifact directory{hint}"
    if "meta" in names:
        return None
    inner = [p for p in (path / "artifact", path / "teacher" / "artifact")
             if (p / "meta").exists()]
    if inner:
        return (f"{path} is not a teacher artifact itself; the one inside it is {inner[0]}: "
                "pass that")
    if (names & {"_CHECKPOINT_METADATA", "commit_success.txt"}
            or any(n.isdigit() for n in names) or "checkpoints" in names):
        return (f"{path} is a training checkpoint directory, not a teacher artifact; a trained "
                "teacher is saved in TEACHER_DIR/artifact (see python -m "
                "experiments.train_teacher)")
    return (f"{path} holds no teacher artifact (no meta/ in it); pass a directory written by "
            "python -m experiments.train_teacher or import_torchvision")


def save_teacher(path, variables, meta: TeacherMeta, overwrite: bool = False) -> epath.Path:
    """Writes ``variables`` (``{"params", "batch_stats"}``) and ``meta`` to directory
    ``path`` atomically, with a content checksum of the variables and of the meta in the
    meta JSON (key ``"_checksum"``; the meta's under ``"meta_sha256"``). ``overwrite``
    replaces an existing teacher artifact or empty directory only
    (:func:`check_replaceable`). Raises ``ValueError`` if the variables do not fit
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
    meta_json = meta.to_json()
    meta_json[CHECKSUM_KEY] = {**checksum(variables), META_DIGEST_KEY: meta_digest(meta_json)}
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


def _read_teacher(path: epath.Path, trust_unverified: bool) -> tuple[TeacherMeta, Any]:
    """``(meta, checksum record or None)`` of the artifact at ``path``, its meta checked
    against the checksum record."""
    with paths.storage_errors(path):
        exists = path.exists()
        why_not = _not_an_artifact(path) if exists else None
    if not exists:
        raise FileNotFoundError(
            f"No teacher artifact at {path}; check the path, or create one "
            "(train or import a teacher)")
    if why_not:
        raise ValueError(why_not)
    meta_file = path / "meta" / "metadata"
    try:
        with reading("meta JSON"):
            with _teacher_checkpointer() as ckptr:
                raw = ckptr.restore(path, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
                raw = raw["meta"]
        meta, record = split_meta(raw)
        _check_meta_digest(path, meta, record, trust_unverified)
        with reading("meta JSON"):
            return TeacherMeta.from_json(meta), record
    except Damaged as e:
        raise CheckpointError(f"Teacher artifact at {path} is damaged: {e} (meta JSON file "
                              f"{meta_file}); {_teacher_fix(path)}") from None


def _check_meta_digest(path, meta: dict, record, trust_unverified: bool) -> None:
    """``Damaged`` if the meta JSON differs from the one checksummed at save time; an
    artifact without that checksum is refused (``ValueError``) unless ``trust_unverified``
    (then a warning)."""
    want = record.get(META_DIGEST_KEY) if isinstance(record, dict) else None
    if want is None:
        what = "a checksum" if record is None else "a checksum of its meta"
        if not trust_unverified:
            raise ValueError(
                f"Teacher artifact at {path} has no {what} (written by hand or by an older "
                "jkt), so its weights and settings cannot be verified; re-create it, or pass "
                "--trust-teacher to use it as it is")
        warnings.warn(f"Teacher artifact at {path} has no {what}; used unverified "
                      "(--trust-teacher)", stacklevel=4)
        return
    if meta_digest(meta) != want:
        raise Damaged("its meta JSON does not match its checksum (edited or damaged after "
                      "it was saved)")


def read_teacher_meta(path, *, trust_unverified: bool = False) -> TeacherMeta:
    """The ``TeacherMeta`` of the artifact at ``path``, without loading its weights.
    Raises ``FileNotFoundError`` if ``path`` does not exist, ``ValueError`` if it is not a
    teacher artifact (or, without ``trust_unverified``, one without a checksum) and
    ``CheckpointError`` (naming the meta JSON file) if its meta JSON is missing, garbled,
    incomplete or edited."""
    return _read_teacher(paths.absolute(path), trust_unverified)[0]


def restore_teacher(
    path,
    expect_arch: str | None = None,
    model_overrides: dict | None = None,
    sharding: jax.sharding.Sharding | None = None,
    *,
    trust_unverified: bool = False,
) -> Teacher:
    """Loads the teacher artifact at ``path``, checking its content checksum.

    ``expect_arch`` (e.g. ``"resnet34"``) guards against loading the wrong teacher;
    ``model_overrides`` changes non-structural options such as ``dtype``; ``sharding``
    (e.g. replicated over a mesh) places every variable, default: the default device. Raises
    ``FileNotFoundError`` for a missing artifact, ``CheckpointError`` (one line naming the
    path and the fix) for a damaged one (checksum mismatch, unreadable or truncated arrays,
    missing or garbled meta JSON) and ``ValueError`` for an architecture or shape mismatch.
    An artifact without a checksum of its weights and meta is refused (``ValueError``)
    unless ``trust_unverified``: then it is restored unverified, with a warning; ``path``
    that is not a teacher artifact at all is a ``ValueError`` saying what it is.
    """
    path = paths.absolute(path)
    meta, record = _read_teacher(path, trust_unverified)
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
        if record is not None:
            why = mismatch(record, variables)
            if why:
                raise Damaged(why)
    except Damaged as e:
        raise CheckpointError(
            f"Teacher artifact at {path} is damaged ({e}); {_teacher_fix(path)}") from None
    return Teacher(meta=meta, model=model, variables=cast_like(variables, target))


__all__ = ["ARTIFACT_ENTRIES", "META_DIGEST_KEY", "check_replaceable", "meta_digest",
           "read_teacher_meta", "restore_teacher", "save_teacher"]
