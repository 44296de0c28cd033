"""A work directory as a record you can trust: JAX's runtime set up for it, its config
recorded, one launch at a time, and every run's settings checked before it is resumed.

* :func:`prepare` sets up JAX (multi-host join, compilation cache), takes the
  directory's lock and writes the resolved config to ``config.json``.
* :class:`jkt.workdir_lock.WorkdirLock`: one launch at a time per work directory.
* :func:`check_record`: each run writes what determines it (``config.json`` beside its
  checkpoints); resuming or skipping a run recorded with other settings stops with one
  line naming the fields that differ.
* Only one process of a multi-host job writes files (:func:`is_writer`); Orbax's
  collective checkpoint saves stay collective.
* A write that fails while running (full disk, read-only or unmounted directory) is one
  :class:`WriteError` line naming the file or directory, the cause and the fix
  (:func:`write_error`, :func:`write_file`); what was written before it is left intact, so
  the same command resumes once the disk is fixed.
* A work directory may be a URI (``gs://bucket/runs``): :mod:`jkt.paths` keeps it one and
  hides what an object store lacks (append, rename, exclusive create).
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

from jkt import config as config_lib
from jkt import paths
from jkt.workdir_lock import WorkdirLock

CONFIG_FILE = "config.json"
# Fields of a run's record that may change between launches without changing its numbers.
RECORD_MAY_CHANGE = ("train.progress", "train.log_every", "train.checkpoint_every",
                     "data.cache_dir", "data.pipeline", "data.stream_workers")
# Config fields added after records were first written, with the value that gives the
# behaviour of before: a stored record without one reads as having that value. Keys are
# dotted field paths matched at the end of a record's path ("optim.batching" matches
# "train.optim.batching" and a teacher record's "optim.batching").
RECORD_ADDED: dict[str, object] = {
    "optim.batching": "cycle",
    "data.unreadable": "error",
    # Objective terms and options after the paper's six (jkt.train.objective): off, or
    # their defaults, in records written before them.
    "objective.kd": 0.0,
    "objective.kd_jac": 0.0,
    "objective.act_noise": 0.0,
    "objective.ce_noise": 0.0,
    "objective.temperature": 4.0,
    "objective.jac_norm_form": "logit",
    "objective.noise_sigma": 0.1,
    "objective.noise_draws": 1,
}


class SettingsChangedError(ValueError):
    """A run in the work directory was recorded with other settings."""


class WriteError(OSError):
    """A write to disk failed while running (full disk, read-only directory, ...): one line
    naming what could not be written, where, the cause and the fix; ``errno`` is the
    cause's."""

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        self.errno = code


DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)
_DISK_ERRNOS = (*DISK_FULL, *NOT_WRITABLE, errno.EIO)


def os_cause(e: BaseException | None) -> tuple[int, str] | None:
    """``(errno, "[Errno N] text")`` of the operating-system error behind ``e``: ``e``
    itself, an exception it was raised from, or a library error quoting one (TensorStore
    reports a failed write as a ``ValueError`` naming the ``strerror``); ``None`` if there
    is none."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno is not None:
            return e.errno, f"[Errno {e.errno}] {e.strerror or os.strerror(e.errno)}"
        text = str(e)
        for code in _DISK_ERRNOS:
            if os.strerror(code) in text:
                return code, f"[Errno {code}] {os.strerror(code)}"
        e = e.__cause__ or e.__context__
    return None


def disk_fix(code: int | None, directory) -> str:
    """What to do about a failed write into ``directory`` with ``errno`` ``code``."""
    if code in DISK_FULL:
        return "free space"
    if code in NOT_WRITABLE:
        return f"make {directory} writable"
    return f"check the disk of {directory}"


def write_error(what: str, cause: tuple[int, str], directory, resume: str) -> WriteError:
    """``cannot write WHAT: [Errno N] text — FIX and rerun the same command RESUME``, where
    ``cause`` is :func:`os_cause`'s and FIX is :func:`disk_fix`'s."""
    code, text = cause
    return WriteError(f"cannot write {what}: {text} — {disk_fix(code, directory)} and rerun "
                      f"the same command{' ' + resume if resume else ''}", code)


def write_file(path, text: str, *, resume: str = "to resume from the last checkpoint") -> Path:
    """Writes ``text`` to ``path`` atomically (a temporary file renamed over it: a failed
    write leaves the old file, if any, as it was); a failure is one :class:`WriteError`
    line naming ``path``."""
    path = paths.as_dir(path)
    try:
        paths.write_text(path, text)
    except OSError as e:
        raise write_error(str(path), os_cause(e) or (e.errno, str(e)), path.parent,
                          resume) from e
    return path


def is_writer() -> bool:
    """True on the one process that writes files (process 0 of a multi-host job)."""
    import jax

    return jax.process_index() == 0


def setup_jax(workdir) -> None:
    """Joins a multi-host job when launched as one (``jkt.parallel.initialize_distributed``)
    and enables the persistent compilation cache under ``workdir/.jax_cache`` (identical
    steps of later and resumed runs skip XLA compilation); ``$JAX_COMPILATION_CACHE_DIR``
    wins over that location. When JAX will run on the CPU, first keeps XLA's step buffers
    mapped between steps (:func:`jkt.host_allocator.configure_jax_cpu`, before JAX
    starts)."""
    from jkt import host_allocator, parallel

    if host_allocator.cpu_backend_expected():
        host_allocator.configure_jax_cpu()
    parallel.initialize_distributed()
    import jax

    if not jax.config.jax_compilation_cache_dir:
        where = os.fspath(workdir) if paths.is_uri(workdir) else Path(workdir).absolute()
        jax.config.update("jax_compilation_cache_dir", f"{where}/.jax_cache")
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def prepare(cfg, workdir=None, *, lock: bool = True) -> tuple[Path, WorkdirLock | None]:
    """:func:`setup_jax`, creates ``workdir`` (default ``cfg.workdir``), takes its lock and
    writes the fully resolved ``cfg`` to ``workdir/config.json``. Returns the directory
    and the held lock (``None`` without ``lock``), which the caller releases (the command
    line does, however the launch ends). An unwritable directory is one :class:`WriteError`
    line; a path that is a file is a ``ValueError``."""
    raw = cfg.workdir if workdir is None else workdir
    if not str(raw).strip():
        raise ValueError("the work directory is empty; name one (--workdir DIR)")
    out = paths.as_dir(raw)  # a URI stays one (pathlib would make gs://b/x the dir gs:/b/x)
    _check_not_a_file(out)
    setup_jax(out)
    held = None
    try:
        out.mkdir(parents=True, exist_ok=True)
        if lock:
            held = WorkdirLock(out).acquire()
        if is_writer():
            config_lib.write_json(cfg, out / CONFIG_FILE)
    except OSError as e:
        if held is not None:
            held.release()
        existing = out if paths.is_uri(out) else next(
            (p for p in (out, *out.parents) if p.exists()), out)
        raise write_error(f"to the work directory {out}", os_cause(e) or (e.errno, str(e)),
                          existing, "") from None
    return out, held


def launch_record(workdir) -> str | None:
    """The text of ``workdir/config.json`` as it is before a launch (``None`` if there is
    none or it cannot be read), for :func:`restore_launch_record`."""
    if not str(workdir).strip():
        return None
    try:
        path = paths.as_dir(workdir) / CONFIG_FILE
        return path.read_text() if path.is_file() else None
    except (OSError, ValueError):
        return None


def restore_launch_record(workdir, text: str | None) -> None:
    """Puts ``workdir/config.json`` back as :func:`launch_record` found it (removes it if
    there was none): a refused launch leaves the record of the last launch that ran.
    Best effort; only the writing process writes."""
    if not is_writer():
        return
    path = paths.as_dir(workdir) / CONFIG_FILE
    try:
        if text is None:
            path.unlink(missing_ok=True)
        else:
            paths.write_text(path, text)
    except OSError:
        pass


def _check_not_a_file(out: Path) -> None:
    """``ValueError`` if ``out`` or a parent of it is an existing file (a mistyped
    ``--workdir``/``--out``): a bad setting, not a disk failure."""
    if paths.is_uri(out):
        with paths.storage_errors(out):  # gs:// without its backend: what to install
            is_file = out.exists() and not out.is_dir()
        if is_file:
            raise ValueError(f"work directory {out} is a file, not a directory; use another "
                             "--workdir")
        return
    for p in (out, *out.parents):
        try:
            if not p.exists():
                continue
            is_dir = p.is_dir()
        except OSError:  # unreadable: left to the write, which names the cause
            return
        if not is_dir:
            raise ValueError(f"work directory {out}: {p} is a file, not a directory; "
                             "use another --workdir")
        return


def check_record(path, record: dict, *, what: str, ignore: tuple[str, ...] = (),
                 optional: tuple[str, ...] = ()) -> None:
    """Compares ``record`` with the one stored at ``path`` (a run's ``config.json``) and
    writes it if there is none. Raises :class:`SettingsChangedError` naming the fields
    that differ (``ignore``: dotted prefixes that may change, e.g. progress bars;
    ``optional``: top-level keys compared only when the stored record has them, i.e.
    fields added to records after it was written)."""
    path = paths.as_dir(path)
    fresh = json.loads(json.dumps(record, default=str))
    if path.exists():
        try:
            stored = json.loads(path.read_text())
        except ValueError:
            raise SettingsChangedError(f"{path} is not valid JSON; delete {path.parent} to "
                                       f"start {what} afresh") from None
        if not isinstance(stored, dict):
            raise SettingsChangedError(f"{path} is not a run record; delete {path.parent} to "
                                       f"start {what} afresh")
        ignore = (*ignore, *(k for k in optional if k not in stored))
        stored = _with_added(stored, fresh)
        changed = [k for k in config_lib.diff(stored, fresh)
                   if not any(k == p or k.startswith(p + ".") for p in ignore)]
        if changed:
            flat_old, flat_new = config_lib.flatten(stored), config_lib.flatten(fresh)
            detail = ", ".join(f"{k} ({_short(flat_old.get(k))!r} -> {_short(flat_new.get(k))!r})"
                               for k in changed[:6])
            more = f" and {len(changed) - 6} more" if len(changed) > 6 else ""
            raise SettingsChangedError(
                f"{what} in {path.parent} was made with other settings: {detail}{more}; use "
                f"another --workdir, or delete {path.parent} to start it afresh")
        return
    if is_writer():
        config_lib.write_json(fresh, path)


def _with_added(stored: dict, fresh: dict) -> dict:
    """``stored`` with the :data:`RECORD_ADDED` fields it predates set to their values of
    before (only where ``fresh`` has the field)."""
    flat_stored = config_lib.flatten(stored)
    missing = {k: v for k, v in config_lib.flatten(fresh).items() if k not in flat_stored}
    fill = {k: RECORD_ADDED[f] for k in missing for f in RECORD_ADDED
            if k == f or k.endswith("." + f)}
    if not fill:
        return stored
    out = json.loads(json.dumps(stored))
    for k, v in fill.items():
        node = out
        *parents, leaf = k.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            node[leaf] = v
    return out


def _short(value):
    """A fingerprint (a long hex string) cut to 12 digits for a message."""
    if isinstance(value, str) and len(value) > 40 and all(c in "0123456789abcdef" for c in value):
        return value[:12] + "..."
    return value


__all__ = ["CONFIG_FILE", "DISK_FULL", "NOT_WRITABLE", "RECORD_ADDED", "RECORD_MAY_CHANGE",
           "SettingsChangedError", "WriteError",
           "check_record", "disk_fix", "is_writer", "launch_record", "os_cause", "prepare",
           "restore_launch_record", "setup_jax", "write_error", "write_file"]
