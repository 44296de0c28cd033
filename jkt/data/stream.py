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

Record sources (random access, picklable for worker processes):

* :class:`SplitRecords`: an in-memory :class:`jkt.data.Split`;
* :class:`FolderRecords`: an image folder (the layouts of :mod:`jkt.data.folder`), listed
  without decoding;
* :class:`TfdsRecords`: a split of a tfds dataset prepared in ArrayRecord format
  (``tfds.data_source``), e.g. ``imagenet2012``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence

import numpy as np
from jax.sharding import Mesh

from jkt import parallel
from jkt.data import decode as decode_lib
from jkt.data.batches import Batch, BatchStream
from jkt.data.types import Split


class UnreadableImageError(ValueError):
    """A streamed image cannot be read or decoded (named)."""


@dataclasses.dataclass(frozen=True)
class SplitRecords:
    """Records of an in-memory split: ``(image uint8 (H, W, 3), label)``."""

    split: Split

    def __len__(self) -> int:
        return len(self.split)

    @property
    def labels(self) -> np.ndarray:
        return self.split.labels

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.split.images[i], int(self.split.labels[i])


@dataclasses.dataclass(frozen=True)
class FolderRecords:
    """Images of a local folder, decoded when read: ``files[i]`` (an absolute path) has
    label ``labels[i]``, an index of ``class_names``; images become ``image_size`` squares
    as in :func:`jkt.data.folder.load_folder`."""

    files: tuple[str, ...]
    labels: np.ndarray
    class_names: tuple[str, ...]
    image_size: int
    resize: str = "stretch"

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        path = self.files[i]
        try:
            with open(path, "rb") as f:
                data = f.read()
            image = decode_lib.decode(data, self.image_size, self.resize)
        except (OSError, ValueError) as e:
            raise UnreadableImageError(f"{path}: {e}") from None
        if image is None:
            raise UnreadableImageError(f"{path}: not a readable image")
        return image, int(self.labels[i])


def folder_records(path, part: str = "train", *, image_size: int = 224,
                   resize: str = "stretch") -> FolderRecords:
    """The ``part`` (``"train"`` or ``"test"``) images of the local image folder ``path``,
    listed (not decoded) in the layouts :func:`jkt.data.folder.load_folder` reads; class
    names sorted, as there. A folder without a test part gives all its images as
    ``"train"``. Raises ``ValueError`` (one line) for an archive or an empty folder."""
    from jkt.data import folder as folder_lib

    root = os.path.abspath(os.fspath(path))
    if not os.path.isdir(root):
        raise ValueError(f"{path}: streaming reads a folder of images; extract the archive "
                         "or use the resident pipeline (data.pipeline=resident)")
    names = sorted(os.path.relpath(os.path.join(d, f), root).replace(os.sep, "/")
                   for d, _, fs in os.walk(root) for f in fs if folder_lib._is_image(f))
    assignment, _ = folder_lib._assign(names, None)
    if not assignment:
        raise ValueError(f"no labelled images found in {path}: expected <class>/<image> or "
                         "train/<class>/<image> (+ test/...)")
    folder_lib._check_same_classes(assignment, path)
    class_names = tuple(sorted({c for _, c in assignment.values()}))
    ids = {c: i for i, c in enumerate(class_names)}
    want = ("train", "all") if part == "train" else (part,)
    chosen = sorted(n for n, (p, _) in assignment.items() if p in want)
    return FolderRecords(tuple(os.path.join(root, n) for n in chosen),
                         np.array([ids[assignment[n][1]] for n in chosen], np.int32),
                         class_names, image_size, resize)


@dataclasses.dataclass(frozen=True)
class TfdsRecords:
    """One split of a tfds dataset prepared in ArrayRecord format, read at random through
    ``tfds.data_source`` (tensorflow-datasets and array_record, no TensorFlow): images
    resized to ``image_size`` squares when they are not already."""

    name: str
    split: str
    data_dir: str
    image_size: int
    resize: str = "stretch"

    def _source(self):
        source = getattr(self, "_cached", None)
        if source is None:
            import tensorflow_datasets as tfds

            source = tfds.data_source(self.name, split=self.split, data_dir=self.data_dir,
                                      download=False, try_gcs=False,
                                      builder_kwargs={"file_format": "array_record"})
            object.__setattr__(self, "_cached", source)
        return source

    def __getstate__(self):  # the open source stays in its process
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def __setstate__(self, state):
        for k, v in state.items():
            object.__setattr__(self, k, v)

    def __len__(self) -> int:
        return len(self._source())

    @property
    def labels(self) -> np.ndarray:
        source = self._source()
        return np.array([source[i]["label"] for i in range(len(source))], np.int32)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        example = self._source()[i]
        image = np.asarray(example["image"], np.uint8)
        if image.shape[:2] != (self.image_size, self.image_size):
            image = decode_lib.resized_array(image, self.image_size, self.resize)
        return image, int(example["label"])


class _LocalRows:
    """Grain map: a training step -> this process's rows of its global batch."""

    def __init__(self, records, stream: BatchStream, rows: slice):
        self.records, self.stream, self.rows = records, stream, rows

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        indices = self.stream.indices(int(step))[self.rows]
        items = [self.records[int(i)] for i in indices]
        return {"image": np.stack([im for im, _ in items]),
                "label": np.array([lab for _, lab in items], np.int32)}


@dataclasses.dataclass(frozen=True)
class StreamOptions:
    """How a stream reads: ``workers`` processes (0: threads of this process only),
    ``threads`` per reader, ``prefetch`` batches read ahead."""

    workers: int = 0
    threads: int = 8
    prefetch: int = 4


def streamed_batches(records, stream: BatchStream, mesh: Mesh, start_step: int = 0,
                     stop_step: int | None = None,
                     options: StreamOptions = StreamOptions()) -> Iterator[Batch]:
    """Global training batches ``start_step, start_step + 1, ...`` (up to ``stop_step``,
    endless without), equal to :func:`jkt.data.batches.train_batches` on the decoded
    records: ``{"image": uint8 (B, H, W, 3), "label": int32 (B,)}`` sharded over ``mesh``.
    This process reads only its rows; Grain reads them ahead on ``options.workers``
    processes (or threads)."""
    import grain

    b = stream.global_batch_size
    rows = parallel.process_rows(b, mesh)
    steps = grain.MapDataset.range(start_step, stop_step if stop_step is not None
                                   else np.iinfo(np.int64).max)
    ds = steps.map(_LocalRows(records, stream, rows)).to_iter_dataset(
        grain.ReadOptions(num_threads=options.threads, prefetch_buffer_size=options.prefetch))
    if options.workers > 0:
        _absl_flags_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=options.workers))
    it = iter(ds)
    try:
        for local in it:
            yield parallel.global_batch(local, mesh, b)
    finally:  # the worker processes end with the stream, however it is left
        close = getattr(it, "close", None)
        if close is not None:
            try:
                close()
            except Exception:  # noqa: BLE001 - Grain's shutdown of workers never started
                pass


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


__all__ = ["FolderRecords", "SplitRecords", "StreamOptions", "TfdsRecords",
           "UnreadableImageError", "folder_records", "read_all", "streamed_batches"]
