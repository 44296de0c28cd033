"""Orbax checkpoints: resumable train state (keep-last-N) and frozen teacher artifacts.

* ``TrainCheckpointer`` saves ``{"state": pytree, "meta": json}`` per step through
  ``ocp.CheckpointManager``. Orbax writes each step into a temporary directory and renames
  it when complete, so a run killed at any moment resumes from the last complete step;
  leftover temporary directories are ignored and cleaned up.
* ``save_teacher`` / ``restore_teacher`` store a teacher's variables with a ``TeacherMeta``
  (architecture, input size, normalisation, ...), enough to rebuild the Flax module.
"""

import dataclasses
import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from jkt import models


def _path(p) -> epath.Path:
    """Absolute local path, or a remote one (``gs://...``) as is."""
    s = os.fspath(p)
    return epath.Path(s if "://" in s else os.path.abspath(s))


def _teacher_checkpointer() -> ocp.Checkpointer:
    """Synchronous checkpointer for the teacher's two items (atomic tmp-dir + rename)."""
    handler = ocp.CompositeCheckpointHandler(
        variables=ocp.StandardCheckpointHandler(), meta=ocp.JsonCheckpointHandler()
    )
    return ocp.Checkpointer(handler)


def _key_name(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _shape_table(tree) -> dict[str, tuple[int, ...]]:
    """``{"a/b/0/c": shape}`` for every leaf; dataclass fields and dict keys look alike."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(_key_name(k) for k in path): tuple(x.shape) for path, x in leaves}


def _check_compatible(stored, target, what: str, stored_name: str, target_name: str) -> None:
    """Raises ``ValueError`` listing leaves whose names or shapes differ."""
    have, want = _shape_table(stored), _shape_table(target)
    missing = sorted(set(want) - set(have))
    unexpected = sorted(set(have) - set(want))
    shapes = [
        f"{k}: {have[k]} (stored) vs {want[k]} (target)"
        for k in sorted(set(have) & set(want))
        if have[k] != want[k]
    ]
    if missing or unexpected or shapes:
        lines = [f"{what}: {stored_name} does not match {target_name}."]
        for title, items in (
            ("missing from the stored tree", missing),
            ("not in the target", unexpected),
            ("shape mismatches", shapes),
        ):
            if items:
                more = f" ... (+{len(items) - 10} more)" if len(items) > 10 else ""
                lines.append(f"  {title}: {items[:10]}{more}")
        raise ValueError("\n".join(lines))


def _abstract(tree):
    """Shapes, dtypes and shardings of ``tree`` (restored arrays take the target's sharding)."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class TrainCheckpointer:
    """Keep-last-N checkpoints of a train-state pytree plus a JSON ``meta`` dict.

    ``save_interval_steps`` skips saves at steps that are not multiples of it (unless
    ``force``). Saves are asynchronous; call ``wait()`` before reading them back from
    another process and ``close()`` at the end of a run.
    """

    def __init__(self, directory, max_to_keep: int | None = 3, save_interval_steps: int = 1):
        self.directory = _path(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            save_interval_steps=save_interval_steps,
            create=True,
            cleanup_tmp_directories=True,
        )
        handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_handlers=handlers
        )

    def save(self, step: int, state, meta: dict | None = None, force: bool = False) -> bool:
        """Saves ``state`` and ``meta`` (JSON-serialisable) at ``step``; True if it saved."""
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(dict(meta or {}))
        )
        return self._manager.save(int(step), args=args, force=force)

    def latest_step(self) -> int | None:
        """Most recent complete step, or None when there is none."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def restore(self, target_state, step: int | None = None) -> tuple[Any, dict]:
        """Restores ``(state, meta)`` at ``step`` (default: latest) into ``target_state``'s
        structure, dtypes and shardings. Raises ``FileNotFoundError`` if there is no
        checkpoint, ``ValueError`` if the stored tree does not match the target's."""
        step = self.latest_step() if step is None else int(step)
        if step is None or step not in self._manager.all_steps():
            raise FileNotFoundError(
                f"No complete checkpoint {'' if step is None else f'at step {step} '}"
                f"in {self.directory} (steps: {self.all_steps()})"
            )
        stored = self._manager.item_metadata(step)["state"]
        stored = getattr(stored, "tree", stored)
        _check_compatible(
            stored, _abstract(target_state), "Train-state checkpoint",
            f"checkpoint step {step} in {self.directory}", "the target state",
        )
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(_abstract(target_state)),
                meta=ocp.args.JsonRestore(),
            ),
        )
        return restored["state"], dict(restored["meta"] or {})

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are complete."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@dataclasses.dataclass(frozen=True)
class TeacherMeta:
    """What is needed to rebuild and feed a teacher.

    ``input_size`` is ``(H, W, C)``; ``mean``/``std`` are per-channel normalisation applied by
    the data pipeline; ``model_options`` are ``jkt.models.create`` options (JSON values,
    e.g. ``small_stem``, ``width_multiplier``, ``source_classes``); ``extra`` is free-form
    (e.g. test accuracy).
    """

    arch: str
    num_classes: int
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dataset: str
    model_options: dict = dataclasses.field(default_factory=dict)
    extra: dict = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_json(cls, d: dict) -> "TeacherMeta":
        d = dict(d)
        for k in ("input_size", "mean", "std"):
            d[k] = tuple(d[k])
        if "stage_sizes" in d.get("model_options", {}):
            d["model_options"] = {
                **d["model_options"], "stage_sizes": tuple(d["model_options"]["stage_sizes"])
            }
        return cls(**d)

    def create_model(self, **overrides):
        """The Flax module, ``jkt.models.create(arch, num_classes, **model_options)``."""
        return models.create(self.arch, self.num_classes, **{**self.model_options, **overrides})


@dataclasses.dataclass(frozen=True)
class Teacher:
    """A frozen teacher: ``model.apply(variables, x, train=False)`` gives its logits.

    ``variables`` is ``{"params", "batch_stats"}``; pass it as a jit *argument* rather than
    closing over it so it is not baked into the compiled program as constants.
    """

    meta: TeacherMeta
    model: Any
    variables: Any

    def apply(self, x, return_features: bool = False, variables=None):
        """Inference-mode outputs for ``x`` of shape ``(B, H, W, C)``, no gradient to the
        variables (input gradients still flow, as Jacobian matching needs)."""
        v = jax.lax.stop_gradient(self.variables if variables is None else variables)
        return self.model.apply(v, x, train=False, return_features=return_features)


def _teacher_variables_target(meta: TeacherMeta, **overrides):
    model = meta.create_model(**overrides)
    return model, models.abstract_variables(model, tuple(meta.input_size))


def save_teacher(path, variables, meta: TeacherMeta, overwrite: bool = False) -> epath.Path:
    """Writes ``variables`` (``{"params", "batch_stats"}``) and ``meta`` to directory
    ``path`` atomically. Raises ``ValueError`` if the variables do not fit ``meta.arch``."""
    path = _path(path)
    variables = {k: variables[k] for k in ("params", "batch_stats") if k in variables}
    _, target = _teacher_variables_target(meta)
    _check_compatible(
        variables, target, "Teacher variables", "the given variables",
        f"architecture {meta.arch!r} with options {meta.model_options}",
    )
    with _teacher_checkpointer() as ckptr:
        ckptr.save(
            path,
            args=ocp.args.Composite(
                variables=ocp.args.StandardSave(variables),
                meta=ocp.args.JsonSave(meta.to_json()),
            ),
            force=overwrite,
        )
    return path


def read_teacher_meta(path) -> TeacherMeta:
    """The ``TeacherMeta`` of the artifact at ``path``, without loading its weights."""
    path = _path(path)
    if not (path / "meta").exists():
        raise FileNotFoundError(f"No teacher artifact at {path}")
    with _teacher_checkpointer() as ckptr:
        raw = ckptr.restore(path, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return TeacherMeta.from_json(raw["meta"])


def restore_teacher(
    path,
    expect_arch: str | None = None,
    model_overrides: dict | None = None,
    sharding: jax.sharding.Sharding | None = None,
) -> Teacher:
    """Loads the teacher artifact at ``path``.

    ``expect_arch`` (e.g. ``"resnet34"``) guards against loading the wrong teacher;
    ``model_overrides`` changes non-structural options such as ``dtype``; ``sharding``
    (e.g. replicated over a mesh) places every variable, default: the default device. Raises
    ``FileNotFoundError`` for a missing artifact and ``ValueError`` for an architecture or
    shape mismatch.
    """
    path = _path(path)
    meta = read_teacher_meta(path)
    if expect_arch is not None and meta.arch != expect_arch:
        raise ValueError(
            f"Teacher artifact at {path} holds architecture {meta.arch!r}, "
            f"but {expect_arch!r} was expected"
        )
    model, target = _teacher_variables_target(meta, **(model_overrides or {}))
    if sharding is not None:
        target = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), target
        )
    with _teacher_checkpointer() as ckptr:
        stored = ckptr.metadata(path).item_metadata["variables"]
        _check_compatible(
            getattr(stored, "tree", stored), target, "Teacher artifact",
            f"the weights at {path}", f"architecture {meta.arch!r} ({meta.model_options})",
        )
        raw = ckptr.restore(
            path, args=ocp.args.Composite(variables=ocp.args.StandardRestore(target))
        )
    return Teacher(meta=meta, model=model, variables=raw["variables"])
