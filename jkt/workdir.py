"""A work directory as a record you can trust: JAX's runtime set up for it, its config
recorded, one launch at a time, and every run's settings checked before it is resumed.

* :func:`prepare` sets up JAX (multi-host join, compilation cache), takes the
  directory's lock and writes the resolved config to ``config.json``.
* :class:`WorkdirLock`: a second launch on a busy work directory fails at once naming the
  owner's pid and host; the processes of one multi-host job share the lock (the job is
  identified by its coordinator address and process count), and a lock left by a dead
  process on this host is taken over with a warning.
* :func:`check_record`: each run writes what determines it (``config.json`` beside its
  checkpoints); resuming or skipping a run recorded with other settings stops with one
  line naming the fields that differ.
* Only one process of a multi-host job writes files (:func:`is_writer`); Orbax's
  collective checkpoint saves stay collective.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import time
from pathlib import Path

from jkt import config as config_lib

CONFIG_FILE = "config.json"
LOCK_FILE = ".lock"
# Fields of a run's record that may change between launches without changing its numbers.
RECORD_MAY_CHANGE = ("train.progress", "train.log_every", "train.checkpoint_every")


class WorkdirBusyError(RuntimeError):
    """Another launch holds the work directory."""


class SettingsChangedError(ValueError):
    """A run in the work directory was recorded with other settings."""


def is_writer() -> bool:
    """True on the one process that writes files (process 0 of a multi-host job)."""
    import jax

    return jax.process_index() == 0


def setup_jax(workdir) -> None:
    """Joins a multi-host job when launched as one (``jkt.parallel.initialize_distributed``)
    and enables the persistent compilation cache under ``workdir/.jax_cache`` (identical
    steps of later and resumed runs skip XLA compilation); ``$JAX_COMPILATION_CACHE_DIR``
    wins over that location."""
    from jkt import parallel

    parallel.initialize_distributed()
    import jax

    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", str(Path(workdir).absolute() / ".jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def _job_id() -> str:
    """Identifies one launch: processes of one multi-host job share it."""
    import jax

    if jax.process_count() > 1:
        coordinator = os.environ.get("JAX_COORDINATOR_ADDRESS", "distributed")
        return f"job:{coordinator}:{jax.process_count()}"
    return f"pid:{socket.gethostname()}:{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_HELD: list = []  # locks this process holds (released at exit, or by release_locks)


def release_locks() -> None:
    """Releases every work-directory lock this process holds (for an exit that skips
    ``atexit``)."""
    while _HELD:
        _HELD.pop().release()


class WorkdirLock:
    """An exclusive claim on ``workdir`` for this launch (``workdir/.lock``)."""

    def __init__(self, workdir):
        self.path = Path(workdir) / LOCK_FILE
        self.owner = {"job": _job_id(), "pid": os.getpid(), "host": socket.gethostname(),
                      "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        self.held = False

    def acquire(self) -> WorkdirLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder.get("job") == self.owner["job"]:
                    return self  # another process of this multi-host job took it
                if self._stale(holder):
                    print(f"warning: removing the stale lock of pid {holder.get('pid')} "
                          f"({self.path})")
                    self.path.unlink(missing_ok=True)
                    continue
                raise WorkdirBusyError(
                    f"{self.path.parent} is in use by pid {holder.get('pid', '?')} on "
                    f"{holder.get('host', '?')} (since {holder.get('since', '?')}); wait for it, "
                    f"use another --workdir, or delete {self.path} if that process is gone"
                ) from None
            with os.fdopen(fd, "w") as f:
                json.dump(self.owner, f)
            self.held = True
            _HELD.append(self)
            atexit.register(self.release)
            return self
        raise WorkdirBusyError(f"could not take the lock {self.path}")

    def _holder(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def _stale(self, holder: dict) -> bool:
        """Left by a process of this host that is gone (or unreadable: a crashed writer).
        A lock taken on another host cannot be checked from here."""
        if holder.get("host") != socket.gethostname() or "pid" not in holder:
            return not holder
        return not _alive(holder["pid"])

    def release(self) -> None:
        if self.held:
            self.held = False
            if self._holder().get("pid") == self.owner["pid"]:
                self.path.unlink(missing_ok=True)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def prepare(cfg, workdir=None, *, lock: bool = True) -> Path:
    """:func:`setup_jax`, creates ``workdir`` (default ``cfg.workdir``), takes its lock
    (released at exit) and writes the fully resolved ``cfg`` to ``workdir/config.json``;
    returns the directory. An unwritable directory is one ``OSError`` line."""
    raw = str(cfg.workdir if workdir is None else workdir)
    if "://" in raw:  # pathlib would silently turn gs://b/x into the local dir gs:/b/x
        raise ValueError(f"work directory {raw}: URIs are not supported for work directories "
                         "(a local lock file and atomic renames are needed); use a local or "
                         "mounted shared path")
    out = Path(raw)
    setup_jax(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        if lock:
            WorkdirLock(out).acquire()
        if is_writer():
            config_lib.write_json(cfg, out / CONFIG_FILE)
    except OSError as e:
        raise OSError(f"cannot write to the work directory {out}: {e.strerror or e}") from None
    return out


def check_record(path, record: dict, *, what: str, ignore: tuple[str, ...] = ()) -> None:
    """Compares ``record`` with the one stored at ``path`` (a run's ``config.json``) and
    writes it if there is none. Raises :class:`SettingsChangedError` naming the fields
    that differ (``ignore``: dotted prefixes that may change, e.g. progress bars)."""
    path = Path(path)
    fresh = json.loads(json.dumps(record, default=str))
    if path.exists():
        try:
            stored = json.loads(path.read_text())
        except ValueError:
            raise SettingsChangedError(f"{path} is not valid JSON; delete {path.parent} to "
                                       f"start {what} afresh") from None
        changed = [k for k in config_lib.diff(stored, fresh)
                   if not any(k == p or k.startswith(p + ".") for p in ignore)]
        if changed:
            flat_old, flat_new = config_lib.flatten(stored), config_lib.flatten(fresh)
            detail = ", ".join(f"{k} ({flat_old.get(k)!r} -> {flat_new.get(k)!r})"
                               for k in changed[:6])
            more = f" and {len(changed) - 6} more" if len(changed) > 6 else ""
            raise SettingsChangedError(
                f"{what} in {path.parent} was made with other settings: {detail}{more}; use "
                f"another --workdir, or delete {path.parent} to start it afresh")
        return
    if is_writer():
        config_lib.write_json(fresh, path)


__all__ = ["CONFIG_FILE", "RECORD_MAY_CHANGE", "SettingsChangedError", "WorkdirBusyError",
           "WorkdirLock", "check_record", "is_writer", "prepare", "release_locks", "setup_jax"]
