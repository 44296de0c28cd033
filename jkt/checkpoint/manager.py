"""The Orbax manager of a run's train-state checkpoints: keep-last-N, atomic, verified.

:class:`TrainCheckpointer` saves ``{"state": pytree, "meta": json}`` per step through
``ocp.CheckpointManager``. Orbax writes each step into a temporary directory and renames
it when complete, so a run killed at any moment resumes from the last complete step;
leftover temporary directories are ignored and cleaned up. Every step carries a content
checksum (:mod:`jkt.checkpoint.integrity`): a damaged latest step falls back to the
previous kept one (with a warning, setting the damaged step aside) or raises
``CheckpointError``; a step written before checksums existed restores unverified, with a
warning.

Failed writes. A save that cannot be written (full disk, read-only directory, ...),
whether it fails at once or later in Orbax's background threads, is raised by the next
``save``/``wait``/``close`` as one :class:`jkt.workdir.WriteError` line naming the step,
the directory, the cause and the step a rerun resumes from; the step being written is
left as a temporary directory (cleaned up by the next run) and the steps before it are
untouched. (The command line, :mod:`jkt.cli`, silences Orbax's own logs of that failure.)
"""

import contextlib
import warnings
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jkt import paths, workdir
from jkt.checkpoint.integrity import (
    CHECKSUM_KEY,
    CheckpointError,
    Damaged,
    abstract,
    as_recorded,
    cast_like,
    check_compatible,
    checksum,
    mismatch,
    reading,
    split_meta,
)


def latest_saved_step(directory) -> int | None:
    """The newest finished step in a :class:`TrainCheckpointer` directory, by listing it
    (no checkpoint manager is opened, so nothing is cleaned up or verified): Orbax writes a
    step into a temporary directory and renames it to the step number when it is
    complete. ``None`` when there is none."""
    path = paths.absolute(directory)
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
        self.directory = paths.absolute(directory)
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
        meta[CHECKSUM_KEY] = checksum(state)
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
            except Damaged as e:
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
            except Damaged as e:
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
            why = mismatch(record, state)
            if why:
                raise Damaged(why)
        except Damaged as e:
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} is damaged ({e})") from None
        return True

    def _read_meta(self, step: int) -> tuple[dict, Any]:
        with reading("meta JSON"):
            raw = self._manager.restore(
                step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        return split_meta(raw)

    def _read_stored_tree(self, step: int):
        with reading("state metadata"):
            stored = self._manager.item_metadata(step)["state"]
        stored = getattr(stored, "tree", stored)
        if stored is None:
            raise Damaged("its state metadata is missing")
        return stored

    def _read_state(self, step: int, abstract):
        with reading("arrays"):
            return self._manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
            )["state"]

    def _restore_step(self, target_state, step: int) -> tuple[Any, dict]:
        """``(state, meta)`` of one step, checked; ``Damaged`` if it cannot be trusted."""
        meta, record = self._read_meta(step)
        stored = self._read_stored_tree(step)
        target = abstract(target_state)
        check_compatible(
            stored, target, "Train-state checkpoint",
            f"checkpoint step {step} in {self.directory}", "the target state",
        )
        state = self._read_state(step, as_recorded(target, record))
        if record is None:
            warnings.warn(f"checkpoint step {step} in {self.directory} has no checksum "
                          "(written before checksums were recorded); restored unverified",
                          stacklevel=3)
        else:
            why = mismatch(record, state)
            if why:
                raise Damaged(why)
        return cast_like(state, target), meta

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


__all__ = ["TrainCheckpointer", "latest_saved_step"]
