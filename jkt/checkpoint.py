"""Orbax checkpoints: resumable train state (keep-last-N) and frozen teacher artifacts.

* ``TrainCheckpointer`` saves ``{"state": pytree, "meta": json}`` per step through
  ``ocp.CheckpointManager``. Orbax writes each step into a temporary directory and renames
  it when complete, so a run killed at any moment resumes from the last complete step;
  leftover temporary directories are ignored and cleaned up.
* ``save_teacher`` / ``restore_teacher`` store a teacher's variables with a ``TeacherMeta``
  (architecture, input size, normalisation, ...), enough to rebuild the Flax module.

Integrity. A complete directory is not yet a correct one: a bad disk, a partial copy or
a truncated file can leave bytes that Orbax reads back without error. So every train-state
checkpoint and every teacher artifact carries a SHA-256 content checksum (each array's
dtype, shape and bytes, arrays in a fixed order by tree path), computed on the host from
the values being saved and stored in the item's meta JSON under the reserved key
``"_checksum"``; the restored values are checked against it. A damaged train checkpoint
makes ``TrainCheckpointer.restore`` fall back to the previous kept step (with a warning,
setting the damaged step aside) or raise ``CheckpointError``; a damaged teacher artifact
raises ``CheckpointError``. Both messages are one line naming the directory (and step) and
the fix. Checkpoints written before checksums existed are restored unverified, with a
warning.

Failed writes. A save that cannot be written (full disk, read-only directory, ...),
whether it fails at once or later in Orbax's background threads, is raised by the next
``save``/``wait``/``close`` as one :class:`jkt.workdir.WriteError` line naming the step,
the directory, the cause and the step a rerun resumes from; the step being written is
left as a temporary directory (cleaned up by the next run) and the steps before it are
untouched. Orbax's own error logs and tracebacks of those threads are silenced, since the
same failure reaches the caller.
"""

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import sys
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from jkt import models, workdir

CHECKSUM_KEY = "_checksum"
"""Reserved key of the meta JSON that holds the content checksum."""


class CheckpointError(ValueError):
    """A checkpoint or teacher artifact is damaged (content checksum mismatch, unreadable or
    truncated files, missing metadata) or none usable is left; the message is one line
    naming the directory and what to do."""


class _Damaged(Exception):
    """Internal: why one checkpoint cannot be trusted (a short reason, no location)."""


def _path(p) -> epath.Path:
    """Absolute local path, or a remote one (``gs://...``) as is; an unsupported URI scheme
    is a one-line ``ValueError``."""
    s = os.fspath(p)
    if "://" in s:
        from jkt.data import cache as cache_lib

        return cache_lib.as_path(s)
    return epath.Path(os.path.abspath(s))


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


def _path_name(path) -> str:
    return "/".join(_key_name(k) for k in path)


def _shape_table(tree) -> dict[str, tuple[int, ...]]:
    """``{"a/b/0/c": shape}`` for every leaf; dataclass fields and dict keys look alike."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {_path_name(path): tuple(x.shape) for path, x in leaves}


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


# ---------------------------------------------------------------------------------------
# Content checksums.

_HASH_THREADS = min(8, os.cpu_count() or 1)
_SHORT = 16  # hex digits kept per array in the record: enough to name the damaged arrays


def _local_replica(x):
    """What this process hashes for leaf ``x``: a PRNG key array as its key data (the
    form Orbax stores), an array spread over several processes as its first local replica
    (every process then hashes the same bytes), ``None`` for an array sharded across
    processes (no process holds all of it, so it is left out of the checksum)."""
    if isinstance(x, jax.Array):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        if not x.is_fully_addressable:
            return x.addressable_data(0) if x.is_fully_replicated else None
    return x


def _leaf_digest(a: np.ndarray) -> str:
    h = hashlib.sha256(f"{a.dtype}{tuple(a.shape)}".encode())
    h.update(np.ascontiguousarray(a).reshape(-1).view(np.uint8))  # hashlib drops the GIL
    return h.hexdigest()


def _digests(tree) -> dict[str, tuple[str, list[int], str | None]]:
    """``{path: (dtype, shape, SHA-256 hex or None)}`` of every leaf of ``tree``, from one
    device-to-host copy; large trees are hashed in parallel threads."""
    named = [(_path_name(p), x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]]
    local = [_local_replica(x) for _, x in named]
    fetched = iter(jax.device_get([a for a in local if a is not None]))
    host = [None if a is None else np.asarray(next(fetched)) for a in local]
    arrays = [a for a in host if a is not None]
    if len(arrays) > 1 and sum(a.nbytes for a in arrays) > 1 << 22:
        with concurrent.futures.ThreadPoolExecutor(_HASH_THREADS) as pool:
            hashed = iter(list(pool.map(_leaf_digest, arrays)))
    else:
        hashed = iter([_leaf_digest(a) for a in arrays])
    out = {}
    for (name, x), a in zip(named, host, strict=True):
        ref = x if a is None else a
        out[name] = (str(ref.dtype), list(ref.shape), None if a is None else next(hashed))
    return out


def _combine(digests: dict[str, str | None]) -> str:
    """One SHA-256 over every leaf's path and digest, leaves sorted by path."""
    h = hashlib.sha256()
    for name in sorted(digests):
        h.update(f"{name}\0{digests[name] or '-'}\n".encode())
    return h.hexdigest()


def _checksum(tree) -> dict:
    """The content checksum record of ``tree``, JSON: ``{"algorithm": "sha256", "digest",
    "leaves": {path: {"dtype", "shape", "sha256"}}}``.

    ``digest`` covers every array's dtype, shape and bytes; ``leaves`` keeps a short digest
    per array (to name the damaged ones) and its dtype (to read it back as stored).
    """
    d = _digests(tree)
    return {
        "algorithm": "sha256",
        "digest": _combine({k: v[2] for k, v in d.items()}),
        "leaves": {k: {"dtype": t, "shape": s, "sha256": h and h[:_SHORT]}
                   for k, (t, s, h) in d.items()},
    }


def _mismatch(record, tree) -> str | None:
    """``None`` if ``tree`` matches the checksum ``record``, else why not (short)."""
    if (not isinstance(record, dict) or record.get("algorithm") != "sha256"
            or not isinstance(record.get("digest"), str)
            or not isinstance(record.get("leaves"), dict)):
        return "malformed checksum record"
    want = record["leaves"]
    skip = {k for k, v in want.items() if isinstance(v, dict) and v.get("sha256") is None}
    got = {k: (t, s, None if k in skip else h) for k, (t, s, h) in _digests(tree).items()}
    if _combine({k: v[2] for k, v in got.items()}) == record["digest"]:
        return None
    short = {k: {"dtype": t, "shape": s, "sha256": h and h[:_SHORT]}
             for k, (t, s, h) in got.items()}
    bad = sorted(k for k in set(want) | set(short) if want.get(k) != short.get(k))
    if not bad:
        return "checksum mismatch"
    more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
    return f"checksum mismatch in {', '.join(bad[:3])}{more}"


def _as_recorded(abstract, record):
    """``abstract`` with each leaf's dtype set to the one the checksum ``record`` holds,
    so that the bytes read back are the bytes hashed (PRNG keys keep theirs)."""
    leaves = record.get("leaves") if isinstance(record, dict) else None
    if not isinstance(leaves, dict):
        return abstract

    def fix(path, x):
        r = leaves.get(_path_name(path))
        if (not isinstance(r, dict) or not isinstance(x, jax.ShapeDtypeStruct)
                or jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)):
            return x
        try:
            dtype = jnp.dtype(r.get("dtype"))
        except TypeError:
            return x
        return x if dtype == x.dtype else jax.ShapeDtypeStruct(x.shape, dtype,
                                                               sharding=x.sharding)

    return jax.tree_util.tree_map_with_path(fix, abstract)


def _cast_like(tree, abstract):
    """``tree`` with each leaf in ``abstract``'s dtype (and sharding), as Orbax would have
    restored it directly."""
    def cast(x, t):
        key = jax.dtypes.prng_key
        if (x.dtype == t.dtype or jax.dtypes.issubdtype(x.dtype, key)
                or jax.dtypes.issubdtype(t.dtype, key)):
            return x
        return jax.jit(lambda a: a.astype(t.dtype),
                       out_shardings=getattr(t, "sharding", None))(x)

    return jax.tree.map(cast, tree, abstract)


def _describe(e: BaseException) -> str:
    """``Type: first line`` of an exception, without TensorStore's spec dump."""
    text = (str(e).strip().splitlines() or [""])[0]
    for cut in (" See full TensorStore details", " [tensorstore_spec="):
        text = text.split(cut)[0]
    text = text if len(text) <= 200 else text[:197] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _is_resource_error(e: BaseException) -> bool:
    """Out of memory, a lost peer process and the like: a failure of this process or job,
    not of the checkpoint."""
    s = str(e)
    return (isinstance(e, MemoryError) or "RESOURCE_EXHAUSTED" in s or "out of memory" in s
            or "DEADLINE_EXCEEDED" in s or "CoordinationService" in s or "Gloo" in s)


@contextlib.contextmanager
def _reading(what: str):
    """Turns a failure to read ``what`` into ``_Damaged`` (resource errors pass through)."""
    try:
        yield
    except Exception as e:
        if _is_resource_error(e):
            raise
        raise _Damaged(f"cannot read its {what}: {_describe(e)}") from e


def _split_meta(raw) -> tuple[dict, Any]:
    """``(meta without the checksum, checksum record or None)`` of a stored meta JSON."""
    if raw is None:
        raise _Damaged("its meta JSON is missing")
    if not isinstance(raw, dict):
        raise _Damaged(f"its meta JSON is a {type(raw).__name__}, not an object")
    meta = dict(raw)
    return meta, meta.pop(CHECKSUM_KEY, None)


class _BackgroundWriteNoise(logging.Filter):
    """Drops Orbax's error logs (with tracebacks) of a failed write in its background
    threads: the same failure reaches the caller of ``save``/``wait``/``close``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or "orbax" not in record.pathname:
            return True
        exc = record.exc_info[1] if record.exc_info else None
        return exc is None or not _write_noise(exc)


def _write_noise(exc: BaseException) -> bool:
    """A write failure, or what it leaves behind in Orbax's threads (an event loop or an
    executor already shut down by the failed save)."""
    text = str(exc)
    return (workdir.os_cause(exc) is not None or "Event loop is closed" in text
            or "cannot schedule new futures after shutdown" in text)


_NOISE_FILTER = _BackgroundWriteNoise()


def _quiet_background_failures() -> None:
    """Installs (once) the filter of Orbax's background write-failure logs and an
    unraisable-exception hook that drops what TensorStore's callbacks raise into the event
    loop of a failed save after it closed; everything else passes to the previous hook."""
    logger = logging.getLogger("absl")
    if _NOISE_FILTER not in logger.filters:
        logger.addFilter(_NOISE_FILTER)
    previous = sys.unraisablehook
    if getattr(previous, "_drops_write_noise", False):
        return

    def hook(unraisable):
        if unraisable.exc_value is None or not _write_noise(unraisable.exc_value):
            previous(unraisable)

    hook._drops_write_noise = True
    sys.unraisablehook = hook


def latest_saved_step(directory) -> int | None:
    """The newest finished step in a :class:`TrainCheckpointer` directory, by listing it
    (no checkpoint manager is opened, so nothing is cleaned up or verified): Orbax writes a
    step into a temporary directory and renames it to the step number when it is
    complete. ``None`` when there is none."""
    path = _path(directory)
    if not path.exists():
        return None
    steps = [int(p.name) for p in path.iterdir() if p.name.isdigit() and p.is_dir()]
    return max(steps, default=None)


class TrainCheckpointer:
    """Keep-last-N checkpoints of a train-state pytree plus a JSON ``meta`` dict.

    ``save_interval_steps`` skips saves at steps that are not multiples of it (unless
    ``force``). Saves are asynchronous; call ``wait()`` before reading them back from
    another process and ``close()`` at the end of a run.

    Every saved step carries a content checksum of the state (see the module docstring) in
    its meta JSON; ``restore`` checks it. Computing it costs each save that is written (not
    the skipped ones) one device-to-host copy of the state and one SHA-256 pass over its
    bytes, on the calling thread before Orbax's asynchronous write starts: the values must
    be read before the training step donates their buffers. Arrays replicated over several
    processes are hashed from the local replica, so every process computes the same record
    and the save stays one collective Orbax save.
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
        self._pending: int | None = None  # last step handed to Orbax, not known written
        self._failed: workdir.WriteError | None = None  # a write failure already raised
        _quiet_background_failures()

    def save(self, step: int, state, meta: dict | None = None, force: bool = False) -> bool:
        """Saves ``state`` and ``meta`` (JSON-serialisable; the key ``"_checksum"`` is
        reserved) at ``step``; True if it saved. A step already saved is not written
        again (a run resumed at its last step, e.g. after its result could not be written).
        Raises :class:`jkt.workdir.WriteError` if this save, or the previous one still
        being written, cannot be written."""
        meta = dict(meta or {})
        if CHECKSUM_KEY in meta:
            raise ValueError(f"meta key {CHECKSUM_KEY!r} is reserved for the checksum")
        step = int(step)
        if step in self._manager.all_steps() or (not force
                                                 and not self._manager.should_save(step)):
            return False
        meta[CHECKSUM_KEY] = _checksum(state)
        self.wait()  # the previous save's failure, if any, is reported under its own step
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        with self._writing(step):
            saved = self._manager.save(step, args=args, force=force)
        if saved:
            self._pending = step
        return saved

    @contextlib.contextmanager
    def _writing(self, step: int | None):
        """Turns a failure to write ``step`` (an OS error, or TensorStore's report of one)
        into one :class:`jkt.workdir.WriteError` line; other errors pass through."""
        try:
            yield
        except Exception as e:
            cause = workdir.os_cause(e)
            if cause is None:
                raise
            self._failed = self._write_error(step, cause)
            raise self._failed from e

    def _write_error(self, step: int | None, cause: tuple[int, str]) -> workdir.WriteError:
        """The one-line error of a failed save of ``step``, naming the step a rerun resumes
        from (the newest complete one left in the directory)."""
        try:
            good = latest_saved_step(self.directory)
        except OSError:
            good = None
        resume = "to start afresh" if good is None else f"to resume from step {good}"
        what = "a checkpoint" if step is None else f"checkpoint step {step}"
        return workdir.write_error(f"{what} to {self.directory}", cause, self.directory, resume)

    def latest_step(self) -> int | None:
        """Most recent complete step, or None when there is none. Complete is not
        undamaged: ``restore`` checks, and may fall back to an earlier step."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def restore(self, target_state, step: int | None = None) -> tuple[Any, dict]:
        """Restores ``(state, meta)`` at ``step`` (default: latest) into ``target_state``'s
        structure, dtypes and shardings, checking the content checksum.

        Without ``step``, a damaged latest step (checksum mismatch, unreadable or truncated
        files, missing metadata) gives a one-line warning and the previous kept step is
        tried, and so on; the damaged steps newer than the one restored are then renamed
        to ``<step>.damaged`` inside the directory (kept for inspection, out of the way of
        the steps the resumed run saves again). Raises ``FileNotFoundError`` if there is no
        checkpoint (or no ``step``), ``CheckpointError`` if the requested step, or every
        step, is damaged, and ``ValueError`` if the stored tree does not match the
        target's (a different run, not damage: no fallback).
        """
        steps = sorted(self.all_steps(), reverse=True)
        if step is not None or not steps:
            if step is None or int(step) not in steps:
                raise FileNotFoundError(
                    f"No complete checkpoint {'' if step is None else f'at step {step} '}"
                    f"in {self.directory} (steps: {self.all_steps()})"
                )
            step = int(step)
            try:
                return self._restore_step(target_state, step)
            except _Damaged as e:
                others = [s for s in steps if s != step]
                other = f"restore another step (kept: {others}) or " if others else ""
                raise CheckpointError(
                    f"checkpoint step {step} in {self.directory} is damaged ({e}); {other}"
                    f"delete {self.directory} to start afresh"
                ) from None
        damaged: list[tuple[int, str]] = []
        for s in steps:
            try:
                restored = self._restore_step(target_state, s)
            except _Damaged as e:
                damaged.append((s, str(e)))
                continue
            tried = [d for d, _ in damaged] + [s]
            for (d, why), nxt in zip(damaged, tried[1:], strict=True):
                warnings.warn(f"checkpoint step {d} in {self.directory} is damaged ({why}); "
                              f"falling back to step {nxt}", stacklevel=2)
            if damaged:
                self._set_aside([d for d, _ in damaged])
            return restored
        why = "; ".join(f"step {d}: {r}" for d, r in damaged)
        raise CheckpointError(
            f"every checkpoint in {self.directory} is damaged ({why}); delete "
            f"{self.directory} to start this run afresh"
        )

    def verify(self, step: int | None = None) -> bool:
        """Checks ``step`` (default: latest) against its checksum without a target state,
        reading its arrays into host memory. True if it matches, False if the step has no
        checksum (written before checksums existed); raises ``CheckpointError`` if it is
        damaged and ``FileNotFoundError`` if there is no such step."""
        step = self.latest_step() if step is None else int(step)
        if step is None or step not in self.all_steps():
            raise FileNotFoundError(
                f"No complete checkpoint {'' if step is None else f'at step {step} '}"
                f"in {self.directory} (steps: {self.all_steps()})"
            )
        try:
            _, record = self._read_meta(step)
            stored = self._read_stored_tree(step)
            host = jax.tree.map(lambda a: np.empty(a.shape, a.dtype), stored)
            state = self._read_state(step, host)
            if record is None:
                return False
            why = _mismatch(record, state)
            if why:
                raise _Damaged(why)
        except _Damaged as e:
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} is damaged ({e})") from None
        return True

    def _read_meta(self, step: int) -> tuple[dict, Any]:
        with _reading("meta JSON"):
            raw = self._manager.restore(
                step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        return _split_meta(raw)

    def _read_stored_tree(self, step: int):
        with _reading("state metadata"):
            stored = self._manager.item_metadata(step)["state"]
        stored = getattr(stored, "tree", stored)
        if stored is None:
            raise _Damaged("its state metadata is missing")
        return stored

    def _read_state(self, step: int, abstract):
        with _reading("arrays"):
            return self._manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
            )["state"]

    def _restore_step(self, target_state, step: int) -> tuple[Any, dict]:
        """``(state, meta)`` of one step, checked; ``_Damaged`` if it cannot be trusted."""
        meta, record = self._read_meta(step)
        stored = self._read_stored_tree(step)
        target = _abstract(target_state)
        _check_compatible(
            stored, target, "Train-state checkpoint",
            f"checkpoint step {step} in {self.directory}", "the target state",
        )
        state = self._read_state(step, _as_recorded(target, record))
        if record is None:
            warnings.warn(f"checkpoint step {step} in {self.directory} has no checksum "
                          "(written before checksums were recorded); restored unverified",
                          stacklevel=3)
        else:
            why = _mismatch(record, state)
            if why:
                raise _Damaged(why)
        return _cast_like(state, target), meta

    def _set_aside(self, steps: list[int]) -> None:
        """Renames damaged steps to ``<step>.damaged[.k]`` (a name Orbax does not list): the
        primary process renames, every process then re-reads the step list, so that the
        resumed run can save those steps again."""
        self._manager.wait_until_finished()
        if jax.process_index() == 0:
            for s in steps:
                src = self.directory / str(s)
                dst, k = self.directory / f"{s}.damaged", 0
                while dst.exists():
                    k += 1
                    dst = self.directory / f"{s}.damaged.{k}"
                if src.exists():
                    src.rename(dst)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"jkt.checkpoint set aside {self.directory}")
        self._manager.reload()

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are complete; raises
        :class:`jkt.workdir.WriteError` if one could not be written."""
        with self._writing(self._pending):
            self._manager.wait_until_finished()
        self._pending = None

    def close(self) -> None:
        """Waits for pending saves and closes the manager. A write failure that ``save`` or
        ``wait`` already raised is not raised again."""
        reported = self._failed
        try:
            self.wait()
            with self._writing(self._pending):
                self._manager.close()
        except workdir.WriteError:
            if reported is None:
                raise

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


def _teacher_fix(path) -> str:
    return f"delete {path} and re-create it (train or import the teacher again)"


def save_teacher(path, variables, meta: TeacherMeta, overwrite: bool = False) -> epath.Path:
    """Writes ``variables`` (``{"params", "batch_stats"}``) and ``meta`` to directory
    ``path`` atomically, with a content checksum of the variables in the meta JSON (key
    ``"_checksum"``). Raises ``ValueError`` if the variables do not fit ``meta.arch``."""
    path = _path(path)
    variables = {k: variables[k] for k in ("params", "batch_stats") if k in variables}
    _, target = _teacher_variables_target(meta)
    _check_compatible(
        variables, target, "Teacher variables", "the given variables",
        f"architecture {meta.arch!r} with options {meta.model_options}",
    )
    meta_json = {**meta.to_json(), CHECKSUM_KEY: _checksum(variables)}
    _quiet_background_failures()
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
    from jkt.data import cache as cache_lib

    with cache_lib.storage_errors(path):
        exists = path.exists()
    if not exists:
        raise FileNotFoundError(
            f"No teacher artifact at {path}; check the path, or create one "
            "(train or import a teacher)")
    meta_file = path / "meta" / "metadata"
    try:
        with _reading("meta JSON"):
            with _teacher_checkpointer() as ckptr:
                raw = ckptr.restore(path, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
                raw = raw["meta"]
        meta, record = _split_meta(raw)
        with _reading("meta JSON"):
            return TeacherMeta.from_json(meta), record
    except _Damaged as e:
        raise CheckpointError(f"Teacher artifact at {path} is damaged: {e} (meta JSON file "
                              f"{meta_file}); {_teacher_fix(path)}") from None


def read_teacher_meta(path) -> TeacherMeta:
    """The ``TeacherMeta`` of the artifact at ``path``, without loading its weights.
    Raises ``FileNotFoundError`` if ``path`` does not exist and ``CheckpointError`` (naming
    the meta JSON file) if its meta JSON is missing, garbled or incomplete."""
    return _read_teacher(_path(path))[0]


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
    path = _path(path)
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
            with _reading("weights metadata"):
                stored = ckptr.metadata(path).item_metadata["variables"]
            stored = getattr(stored, "tree", stored)
            if stored is None:
                raise _Damaged("its weights metadata is missing")
            _check_compatible(
                stored, target, "Teacher artifact",
                f"the weights at {path}", f"architecture {meta.arch!r} ({meta.model_options})",
            )
            with _reading("weights"):
                raw = ckptr.restore(path, args=ocp.args.Composite(
                    variables=ocp.args.StandardRestore(_as_recorded(target, record))))
        variables = raw["variables"]
        if record is None:
            warnings.warn(f"Teacher artifact at {path} has no checksum (saved before checksums "
                          "were recorded); restored unverified", stacklevel=2)
        else:
            why = _mismatch(record, variables)
            if why:
                raise _Damaged(why)
    except _Damaged as e:
        raise CheckpointError(
            f"Teacher artifact at {path} is damaged ({e}); {_teacher_fix(path)}") from None
    return Teacher(meta=meta, model=model, variables=_cast_like(variables, target))
