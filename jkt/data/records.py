"""Record sources: random access to the images and labels of a split, each image read and
decoded when it is asked for (:mod:`jkt.data.stream` streams training batches of them).

* :class:`SplitRecords`: an in-memory :class:`jkt.data.Split`;
* :class:`FolderRecords`: an image folder (the layouts of :mod:`jkt.data.folder`), listed
  without decoding (:func:`folder_splits`, :func:`folder_records`);
* :class:`TfdsRecords`: a split of a tfds dataset prepared in ArrayRecord format
  (``tfds.data_source``), e.g. ``imagenet2012``;
* :class:`Subset`: the records of another source at given indices (``source.take``: the
  validation and test splits carved out of a training split).

Every source has ``len``, ``labels`` (int32 ``(N,)``, no image decoded), ``image_shape``
(``(H, W, 3)`` of every image, none decoded), ``source[i] -> (image uint8 (H, W, 3),
label)``, ``take(indices)`` (a :class:`Subset`) and ``fingerprint()`` (its identity by
content for run records, computed without decoding: see each source). All are picklable
(Grain's worker processes get a copy; an open tfds source stays in its process).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings

import numpy as np

from jkt.data import decode as decode_lib
from jkt.data.fingerprint import array_digest
from jkt.data.types import Split


class UnreadableImageError(ValueError):
    """A streamed image cannot be read or decoded (named)."""


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()


class _Source:
    """What every record source shares: :meth:`take` and a remembered fingerprint."""

    def take(self, indices) -> Subset:
        """The records at ``indices`` (in that order), read from this source."""
        return Subset(self, np.asarray(indices, np.int64))

    def fingerprint(self) -> str:
        """Identity by content (remembered: a source's listing does not change)."""
        cached = self.__dict__.get("_fingerprint")
        if cached is None:
            cached = self._fingerprint()
            object.__setattr__(self, "_fingerprint", cached)
        return cached


@dataclasses.dataclass(frozen=True, eq=False)
class SplitRecords(_Source):
    """Records of an in-memory split: ``(image uint8 (H, W, 3), label)``; fingerprint: the
    digests of its arrays."""

    split: Split

    def __len__(self) -> int:
        return len(self.split)

    @property
    def labels(self) -> np.ndarray:
        return self.split.labels

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.split.images.shape[1:])

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.split.images[i], int(self.split.labels[i])

    def _fingerprint(self) -> str:
        return _digest("split", array_digest(self.split.images), array_digest(self.split.labels))


@dataclasses.dataclass(frozen=True, eq=False)
class Subset(_Source):
    """The records of ``records`` at ``indices`` (int64), in that order; ``take`` of a
    subset indexes its parent (no chains)."""

    records: object
    indices: np.ndarray

    def __post_init__(self):
        object.__setattr__(self, "indices", np.asarray(self.indices, np.int64).reshape(-1))

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    @property
    def labels(self) -> np.ndarray:
        return np.asarray(self.records.labels)[self.indices]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.records.image_shape)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.records[int(self.indices[i])]

    def take(self, indices) -> Subset:
        return Subset(self.records, self.indices[np.asarray(indices, np.int64)])

    def _fingerprint(self) -> str:
        return _digest("subset", self.records.fingerprint(), array_digest(self.indices))


@dataclasses.dataclass(frozen=True, eq=False)
class FolderRecords(_Source):
    """Images of a local folder, decoded when read: ``files[i]`` (an absolute path) has
    label ``labels[i]``, an index of ``class_names``; images become ``image_size`` squares
    as in :func:`jkt.data.folder.load_folder`. Fingerprint: the files' names (relative to
    their common folder), sizes and mtimes, the labels, class names, ``image_size`` and
    ``resize`` (one ``stat`` a file, nothing read). ``on_unreadable``: ``"error"`` (an
    unreadable image stops the run, named) or ``"skip"`` (the next readable image of the
    listing, with its label, takes its place, with a warning naming it and counting the
    skips of this reader)."""

    files: tuple[str, ...]
    labels: np.ndarray
    class_names: tuple[str, ...]
    image_size: int
    resize: str = "stretch"
    on_unreadable: str = "error"

    def __len__(self) -> int:
        return len(self.files)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.image_size, self.image_size, 3)

    def _fingerprint(self) -> str:
        root = os.path.commonpath([os.path.dirname(f) for f in self.files]) if self.files else ""
        h = hashlib.sha256(_digest("folder", self.class_names, self.image_size, self.resize,
                                   array_digest(np.asarray(self.labels))).encode())
        for f in self.files:
            st = os.stat(f)
            h.update(f"{os.path.relpath(f, root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        try:
            return self._read(i)
        except UnreadableImageError as e:
            if self.on_unreadable != "skip":
                raise
            error = e
        skipped = self.__dict__.setdefault("_skipped", set())
        skipped.add(self.files[i])
        for k in range(1, len(self.files)):
            j = (i + k) % len(self.files)
            try:
                item = self._read(j)
            except UnreadableImageError:
                skipped.add(self.files[j])
                continue
            warnings.warn(f"skipped {error} (in its place: {self.files[j]}; {len(skipped)} "
                          "unreadable image(s) skipped by this reader so far)", stacklevel=2)
            return item
        raise error

    def _read(self, i: int) -> tuple[np.ndarray, int]:
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


def folder_splits(path, *, image_size: int = 224, resize: str = "stretch",
                  on_unreadable: str = "error") -> tuple[FolderRecords, FolderRecords | None]:
    """``(train, test)`` of the local image folder ``path``, listed (not decoded, one walk)
    in the layouts :func:`jkt.data.folder.load_folder` reads but the MIT lists: class names
    sorted, files in name order, as there; ``test`` is ``None`` for a folder without a test
    part (all its images are ``train``). Raises ``ValueError`` (one line) for an archive, a
    URI or a folder without labelled images, ``FileNotFoundError`` for a missing path."""
    from jkt.data import folder as folder_lib

    root = os.path.abspath(os.fspath(path))
    if not os.path.exists(root) and "://" not in os.fspath(path):
        raise FileNotFoundError(f"image folder {os.fspath(path)!r} does not exist")
    if not os.path.isdir(root):
        raise ValueError(f"{path}: streaming reads a local folder of images; extract the archive "
                         "(or copy the folder here) or use the resident pipeline "
                         "(data.pipeline=resident)")
    names = []
    for d, dirs, fs in os.walk(root):
        dirs.sort()
        rel = os.path.relpath(d, root).replace(os.sep, "/")
        names += [f if rel == "." else f"{rel}/{f}" for f in fs]
    names = sorted(n for n in names if folder_lib._is_image(n))
    assignment, _ = folder_lib._assign(names, None)
    if not assignment:
        raise ValueError(f"no labelled images found in {path}: expected <class>/<image> or "
                         "train/<class>/<image> (+ test/...)")
    folder_lib._check_same_classes(assignment, path)
    class_names = tuple(sorted({c for _, c in assignment.values()}))
    ids = {c: i for i, c in enumerate(class_names)}

    def part(want: tuple[str, ...]) -> FolderRecords:
        chosen = sorted(n for n, (p, _) in assignment.items() if p in want)
        return FolderRecords(tuple(os.path.join(root, n) for n in chosen),
                             np.array([ids[assignment[n][1]] for n in chosen], np.int32),
                             class_names, image_size, resize, on_unreadable)

    has_test = any(p == "test" for p, _ in assignment.values())
    return part(("train", "all")), part(("test",)) if has_test else None


def folder_records(path, part: str = "train", *, image_size: int = 224,
                   resize: str = "stretch") -> FolderRecords:
    """The ``part`` (``"train"`` or ``"test"``) images of :func:`folder_splits`; a folder
    without a test part gives all its images as ``"train"`` and none as ``"test"``."""
    train, test = folder_splits(path, image_size=image_size, resize=resize)
    if part == "train":
        return train
    return test if test is not None else dataclasses.replace(
        train, files=(), labels=np.zeros((0,), np.int32))


@dataclasses.dataclass(frozen=True, eq=False)
class TfdsRecords(_Source):
    """One split of a tfds dataset prepared in ArrayRecord format, read at random through
    ``tfds.data_source`` (tensorflow-datasets and array_record, no TensorFlow): images
    resized to ``image_size`` squares when they are not already. ``labels`` are read with
    the images' decoding skipped and cached under ``cache_dir`` (``None``: jkt's cache,
    :mod:`jkt.data.cache`) by the fingerprint: the name, split, data directory, number of
    records, the prepared dataset's info (version, splits' shard lengths and bytes,
    features), ``image_size`` and ``resize``."""

    name: str
    split: str
    data_dir: str
    image_size: int
    resize: str = "stretch"
    cache_dir: str | None = None

    def _open(self, decoders=None):
        import tensorflow_datasets as tfds

        return tfds.data_source(self.name, split=self.split, data_dir=self.data_dir,
                                download=False, try_gcs=False, decoders=decoders,
                                builder_kwargs={"file_format": "array_record"})

    def _source(self):
        source = self.__dict__.get("_cached")
        if source is None:
            source = self._open()
            object.__setattr__(self, "_cached", source)
        return source

    def __getstate__(self):  # the open source (and what was read) stays in its process
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def __setstate__(self, state):
        for k, v in state.items():
            object.__setattr__(self, k, v)

    def __len__(self) -> int:
        return len(self._source())

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.image_size, self.image_size, 3)

    def _fingerprint(self) -> str:
        info = self._source().dataset_info
        return _digest("tfds", self.name, self.split, str(self.data_dir), len(self),
                       info.as_json, self.image_size, self.resize)

    @property
    def labels(self) -> np.ndarray:
        labels = self.__dict__.get("_labels")
        if labels is None:
            labels = self._read_labels()
            object.__setattr__(self, "_labels", labels)
        return labels

    def _read_labels(self, chunk: int = 4096) -> np.ndarray:
        import tensorflow_datasets as tfds

        from jkt.data import cache as cache_lib

        file = cache_lib.cache_file(self.cache_dir, f"tfds-{self.name}-{self.split}-labels",
                                    "tfds-labels", self.fingerprint())
        cached = cache_lib.load_arrays(file, ("labels",))
        if cached is not None:
            return cached["labels"].astype(np.int32)
        source = self._open({"image": tfds.decode.SkipDecoding()})
        labels = np.empty((len(source),), np.int32)
        for start in range(0, len(source), chunk):
            got = source.__getitems__(list(range(start, min(len(source), start + chunk))))
            labels[start:start + len(got)] = [e["label"] for e in got]
        cache_lib.save_arrays(file, {"labels": labels})
        return labels

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        example = self._source()[i]
        image = np.asarray(example["image"], np.uint8)
        if image.shape[:2] != (self.image_size, self.image_size):
            image = decode_lib.resized_array(image, self.image_size, self.resize)
        return image, int(example["label"])


def is_records(split) -> bool:
    """Whether ``split`` is a record source (streamed) rather than an in-memory split."""
    return not isinstance(split, Split)


__all__ = ["FolderRecords", "SplitRecords", "Subset", "TfdsRecords", "UnreadableImageError",
           "folder_records", "folder_splits", "is_records"]
