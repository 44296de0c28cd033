"""TensorBoard event files of a run's logged scalars, beside its ``metrics.jsonl``.

Written with ``tensorboardX``'s event-file writer and protos (no TensorFlow), imported
only when a run starts; without tensorboardX a run goes on with ``metrics.jsonl`` alone
after one warning line. Each launch writes a new event file in the run's directory that
starts with a restart marker at the restored step + 1 (what ``SummaryWriter(...,
purge_step=start + 1)`` writes): TensorBoard drops the earlier launch's points after the
checkpoint the run resumed from, as ``metrics.jsonl`` is cut back, so a resumed run shows
one curve. View with ``tensorboard --logdir WORKDIR``.

The writer is synchronous, unlike ``tensorboardX.SummaryWriter``, whose background thread
writes queued events after its ``flush()`` returns (a killed run could lose points that
``metrics.jsonl`` kept) and prints a traceback from that thread when the disk fills up.
Here every log line is on disk when :func:`write_scalars` returns, and a failed write (a
full or read-only disk) costs one warning line and the run's later events, never the run:
``metrics.jsonl`` stays the record.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

from jkt import paths
from jkt.workdir import is_writer

TAG_PREFIX = "train/"

_warned_missing = False


class EventWriter:
    """One launch's event file ``RUN_DIR/events.out.tfevents.<s>.<host>.<ns>``."""

    def __init__(self, run_dir: Path, start: int):
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto.event_pb2 import Event, SessionLog
        from tensorboardX.summary import scalar

        self._event, self._scalar = Event, scalar
        # In an object store (gs://), which cannot append, the file is written locally and
        # copied whole to the run's directory after every flush.
        self._store = paths.as_dir(run_dir) if paths.is_uri(run_dir) else None
        local = Path(tempfile.mkdtemp(prefix="jkt-events-")) if self._store else Path(run_dir)
        # Files are read in name order, which begins with the second of creation and the
        # host; the nanosecond suffix orders two launches within one second.
        self._file = self._guard(lambda: EventsWriter(str(local / "events"),
                                                      f".{time.time_ns()}"))
        if self._file is not None:
            self._write([Event(wall_time=time.time(), step=start + 1,
                               session_log=SessionLog(status=SessionLog.START))])

    def write(self, step: int, metrics: dict) -> None:
        """Every number of ``metrics`` but ``step`` as ``train/<name>`` at ``step``."""
        now = time.time()
        self._write([self._event(wall_time=now, step=step,
                                 summary=self._scalar(TAG_PREFIX + name, value))
                     for name, value in metrics.items()
                     if name != "step" and isinstance(value, int | float)
                     and not isinstance(value, bool)])

    def close(self) -> None:
        if self._file is not None:
            local_dir = Path(self._local_name).parent
            self._guard(self._file.close)
            self._file = None
            if self._store is not None:
                shutil.rmtree(local_dir, ignore_errors=True)

    def _write(self, events) -> None:
        if self._file is None:
            return

        def write_all():
            for e in events:
                self._file.write_event(e)
            self._file.flush()
            if self._store is not None:
                name = self._local_name
                paths.write_bytes(self._store / Path(name).name, Path(name).read_bytes())

        self._guard(write_all)

    @property
    def _local_name(self) -> str:
        return self._file._file_name  # tensorboardX's EventsWriter keeps its file's name

    def _guard(self, fn):
        """``fn()``; an ``OSError`` ends this file's writing with one warning line."""
        try:
            return fn()
        except OSError as e:
            print(f"warning: TensorBoard events stop here ({e}); metrics.jsonl goes on",
                  file=sys.stderr)
            self._file = None
            return None


def open_event_writer(run_dir: Path, start: int) -> EventWriter | None:
    """An :class:`EventWriter` on ``run_dir`` for a launch resuming at step ``start`` (0
    for a fresh run), or ``None`` on every process but the writer and when tensorboardX is
    not installed."""
    global _warned_missing
    if not is_writer():
        return None
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        if not _warned_missing:
            _warned_missing = True
            print("warning: tensorboardX is not installed; runs log metrics.jsonl only "
                  "(pip install tensorboardX for TensorBoard event files)", file=sys.stderr)
        return None
    return EventWriter(run_dir, start)


def write_scalars(writer: EventWriter | None, step: int, metrics: dict) -> None:
    """One ``metrics.jsonl`` line's numbers at ``step`` (a no-op without a writer)."""
    if writer is not None:
        writer.write(step, metrics)
