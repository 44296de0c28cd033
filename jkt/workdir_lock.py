"""One launch per work directory: :class:`WorkdirLock` (``WORKDIR/.lock``).

A second launch on a busy work directory fails at once naming the owner's pid and host;
the processes of one multi-host job share the lock (the job is identified by its
coordinator address and process count), and a lock left by a dead process on this host is
taken over with a warning. The command line releases it however a launch ends.
"""

from __future__ import annotations

import json
import os
import socket
import time

from jkt import paths

LOCK_FILE = ".lock"


class WorkdirBusyError(RuntimeError):
    """Another launch holds the work directory."""



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


class WorkdirLock:
    """An exclusive claim on ``workdir`` for this launch (``workdir/.lock``).

    In an object store (``gs://``), which has no exclusive create, the lock is written and
    read back after :attr:`SETTLE_S`: of two launches that start within that time, the
    one whose record is read back keeps it and the other stops as if the lock had been
    there (stores such as Cloud Storage read back the last completed write).
    """

    SETTLE_S = 2.0

    def __init__(self, workdir):
        self.path = paths.as_dir(workdir) / LOCK_FILE
        self.owner = {"job": _job_id(), "pid": os.getpid(), "host": socket.gethostname(),
                      "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        self.held = False

    def acquire(self) -> WorkdirLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                self._create()
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
            self.held = True
            return self
        raise WorkdirBusyError(f"could not take the lock {self.path}")

    def _create(self) -> None:
        """Creates the lock file with its owner record in one step (``FileExistsError`` if
        it exists): the record is written to a private file and hard-linked into place, so
        a process of the same job never sees an empty lock and takes it for a stale one.
        Where hard links are unsupported, an exclusive create and then the write."""
        if paths.is_uri(self.path):
            return self._create_in_store()
        tmp = self.path.with_name(f"{self.path.name}.{socket.gethostname()}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(self.owner))
            try:
                os.link(tmp, self.path)
                return
            except FileExistsError:
                raise
            except OSError:  # no hard links on this filesystem
                pass
        finally:
            tmp.unlink(missing_ok=True)
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        with os.fdopen(fd, "w") as f:
            json.dump(self.owner, f)

    def _create_in_store(self) -> None:
        if self.path.exists():
            raise FileExistsError(self.path)
        self.path.write_text(json.dumps(self.owner))
        time.sleep(self.SETTLE_S)
        if self._holder().get("job") != self.owner["job"]:
            raise FileExistsError(self.path)  # another launch wrote after this one

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
        """Removes the lock if this process holds it. Best effort: a lock that cannot be
        removed (a read-only disk) stays, and the next launch on this host takes it over
        as stale."""
        if self.held:
            self.held = False
            if self._holder().get("pid") == self.owner["pid"]:
                try:
                    self.path.unlink(missing_ok=True)
                except OSError:
                    pass

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


__all__ = ["LOCK_FILE", "WorkdirBusyError", "WorkdirLock"]
