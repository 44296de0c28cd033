"""Streamed training batches: images read and decoded on host workers while the device
trains, for datasets too large to hold decoded (ImageNet: 1.28 M images).

The resident path (:mod:`jkt.data.batches`) decodes a whole dataset once and keeps it in
host memory; this one reads each batch's images when it is due, through a Grain pipeline
(``grain.MapDataset`` of training steps, decoded in worker threads or processes,
prefetched). It yields exactly the batches of the resident path: batch ``step`` holds
the examples :class:`jkt.data.batches.BatchStream` picks for that step (a pure function
of ``(seed, step)``), decoded by the same function (:func:`jkt.data.decode.decode`) as
the folder loader. So with augmentation off a streamed run equals a resident one number
for number, and the pipeline's whole state is the step it starts at: a killed run
resumes from its last checkpoint's step with the next unseen batch.

Each process of a multi-host job reads only its own rows of every global batch
(:func:`jkt.parallel.process_rows`: disjoint shards) and the rows are assembled into
global arrays on the mesh (``jax.make_array_from_process_local_data`` through
:func:`jkt.parallel.global_batch`).

Record sources (random access, picklable for worker processes: :mod:`jkt.data.records`,
re-exported here): :class:`SplitRecords`, :class:`FolderRecords`, :class:`TfdsRecords`,
:class:`Subset`. :func:`streamed_eval_batches` gives the evaluation batches of a source,
equal to :func:`jkt.data.batches.eval_batches` on the decoded records.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import queue
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
from jax.sharding import Mesh

from jkt import parallel
from jkt.data.batches import Batch, BatchStream
from jkt.data.records import (
    FolderRecords,
    SplitRecords,
    Subset,
    TfdsRecords,
    UnreadableImageError,
    folder_records,
    folder_splits,
)
from jkt.data.types import Split


def _stacked(items: list[tuple[np.ndarray, int]]) -> dict[str, np.ndarray]:
    return {"image": np.stack([im for im, _ in items]),
            "label": np.array([lab for _, lab in items], np.int32)}


class _LocalRows:
    """Grain map: a training step -> this process's rows of its global batch (``rows``:
    the rows of a batch of each of the stream's sizes)."""

    def __init__(self, records, stream: BatchStream, rows: Mapping[int, slice]):
        self.records, self.stream, self.rows = records, stream, dict(rows)

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        step = int(step)
        indices = self.stream.indices(step)[self.rows[self.stream.batch_size(step)]]
        return _stacked([self.records[int(i)] for i in indices])


class _EvalRows:
    """Grain map: an evaluation batch number -> this process's rows of it, as
    :func:`jkt.data.batches.eval_batches` (positions past the end read record 0, masked)."""

    def __init__(self, records, batch_size: int, rows: slice):
        self.records, self.batch_size, self.rows = records, batch_size, rows

    def __call__(self, k: int) -> dict[str, np.ndarray]:
        positions = int(k) * self.batch_size + np.arange(self.batch_size, dtype=np.int64)
        mask = positions < len(self.records)
        indices = np.where(mask, positions, 0)[self.rows]
        read = {int(i): self.records[int(i)] for i in np.unique(indices)}  # padding once
        return {**_stacked([read[int(i)] for i in indices]), "mask": mask[self.rows]}


@dataclasses.dataclass(frozen=True)
class StreamOptions:
    """How a stream reads: ``workers`` processes (0: threads of this process only),
    ``threads`` per reader, ``prefetch`` batches read ahead (at least ``threads``, or Grain
    uses fewer threads); a batch that takes longer than ``stall_timeout_s`` to arrive (a
    worker stuck on a file, unreachable storage) stops the run with
    :class:`StalledStreamError` instead of hanging."""

    workers: int = 0
    threads: int = 8
    prefetch: int = 8
    stall_timeout_s: float = 600.0


class StalledStreamError(TimeoutError):
    """No batch came from the input pipeline within ``StreamOptions.stall_timeout_s``."""


def options_of(data_cfg) -> StreamOptions:
    """The :class:`StreamOptions` of a :class:`jkt.data.DataConfig`."""
    return StreamOptions(workers=data_cfg.stream_workers)


def _read_ahead(read: Callable[[int], dict], start: int, stop: int,
                options: StreamOptions) -> Iterator[dict]:
    """``read(k)`` for ``k`` in ``[start, stop)``, in order, read ahead by Grain."""
    import grain

    ds = grain.MapDataset.range(start, stop).map(read).to_iter_dataset(
        grain.ReadOptions(num_threads=options.threads, prefetch_buffer_size=options.prefetch))
    if options.workers > 0:
        _absl_flags_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=options.workers))
    it = iter(ds)
    try:
        yield from _with_deadline(it, start, options)
    finally:  # the worker processes end with the stream, however it is left
        close = getattr(it, "close", None)
        if close is not None:
            try:
                close()
            except Exception:  # noqa: BLE001 - Grain's shutdown of workers never started
                pass


def _with_deadline(it: Iterator[dict], start: int, options: StreamOptions) -> Iterator[dict]:
    """The items of ``it``, pulled by a helper thread; one that takes longer than
    ``options.stall_timeout_s`` raises :class:`StalledStreamError` naming it."""
    items: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()

    def pump():
        try:
            for item in it:
                while not stop.is_set():
                    try:
                        items.put(("item", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            items.put(("end", None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            items.put(("error", e))

    threading.Thread(target=pump, daemon=True, name="jkt-stream").start()
    k = start
    try:
        while True:
            try:
                kind, item = items.get(timeout=options.stall_timeout_s)
            except queue.Empty:
                raise StalledStreamError(
                    f"the input pipeline gave no batch for {options.stall_timeout_s:g} s "
                    f"(batch {k}, {options.workers} worker process(es)): a worker is stuck "
                    "on a file or the storage does not answer; rerun the same command to "
                    "resume from the last checkpoint") from None
            if kind == "end":
                return
            if kind == "error":
                raise item
            yield item
            k += 1
    finally:
        stop.set()


def streamed_batches(records, stream: BatchStream, mesh: Mesh, start_step: int = 0,
                     stop_step: int | None = None,
                     options: StreamOptions = StreamOptions()) -> Iterator[Batch]:
    """Global training batches ``start_step, start_step + 1, ...`` (up to ``stop_step``,
    endless without), equal to :func:`jkt.data.batches.train_batches` on the decoded
    records: ``{"image": uint8 (B, H, W, 3), "label": int32 (B,)}`` sharded over ``mesh``,
    ``B = stream.batch_size(step)`` (epoch batching's short batch included). This process
    reads only its rows; Grain reads them ahead on ``options.workers`` processes (or
    threads)."""
    rows = {b: parallel.process_rows(b, mesh) for b in stream.batch_sizes}
    stop = stop_step if stop_step is not None else np.iinfo(np.int64).max
    local = _read_ahead(_LocalRows(records, stream, rows), start_step, stop, options)
    try:
        for step, batch in zip(itertools.count(start_step), local):
            yield parallel.global_batch(batch, mesh, stream.batch_size(step))
    finally:
        local.close()


def streamed_eval_batches(records, batch_size: int, mesh: Mesh,
                          options: StreamOptions = StreamOptions()) -> Iterator[Batch]:
    """Batches covering ``records`` once, in order, the last one padded: equal to
    :func:`jkt.data.batches.eval_batches` on the decoded records (``{"image", "label",
    "mask"}``, ``mask`` False on padding rows)."""
    parallel.check_batch_size(batch_size, mesh)
    n = len(records)
    if n == 0:
        return
    rows = parallel.process_rows(batch_size, mesh)
    local = _read_ahead(_EvalRows(records, batch_size, rows), 0, math.ceil(n / batch_size),
                        options)
    try:
        for batch in local:
            yield parallel.global_batch(batch, mesh, batch_size)
    finally:
        local.close()


def _absl_flags_parsed() -> None:
    """Grain's worker processes read absl flags (their defaults): a program not started by
    ``absl.app`` (every jkt command) has not parsed them, so mark them parsed."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def read_all(records, indices: Sequence[int] | None = None) -> Split:
    """The records (all, or at ``indices``) decoded into one in-memory split."""
    indices = range(len(records)) if indices is None else indices
    items = [records[int(i)] for i in indices]
    return Split(np.stack([im for im, _ in items]), np.array([lab for _, lab in items]))


__all__ = ["FolderRecords", "SplitRecords", "StalledStreamError", "StreamOptions", "Subset",
           "TfdsRecords",
           "UnreadableImageError", "folder_records", "folder_splits", "options_of", "read_all",
           "streamed_batches", "streamed_eval_batches"]
