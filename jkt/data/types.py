"""Plain containers for in-memory image datasets."""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np

from jkt.ranges import check_int, check_number

VALIDATION_POLICIES = ("held_out", "unused", "none")
AUGMENTATIONS = ("none", "crop", "crop+flip")
RESIZE_POLICIES = ("stretch", "crop")
PIPELINES = ("resident", "stream", "auto")
UNREADABLE = ("error", "skip")
AUTO_STREAM_FRACTION = 0.5
"""``pipeline="auto"`` streams when the decoded train split would need more than this
fraction of the host memory available."""


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which dataset an experiment reads, and how (the arguments of :func:`jkt.data.load`).

    Attributes:
      name: ``digits``, ``cifar10``, ``cifar100`` or ``folder:PATH``.
      data_dir: tfds data directory (``cifar10``/``cifar100``); ``None``: tfds' default.
      image_size: side of the square images of ``digits`` and ``folder:`` sources.
      val_fraction: size of the validation set, as a stratified fraction of the official
        train split.
      validation: where validation images come from. ``"held_out"``: ``val_fraction`` of
        the train split is set aside before anything trains (teachers and subsets never
        see it; every run is validated on the same images). ``"unused"``: the whole
        official train split is training data (teacher, ``"full"`` runs); a run on a
        subset of ``n`` per class is validated on ``val_fraction`` of the train split
        drawn from the images *not* in its subset, and a run on all of it has no
        validation set. ``"none"``: whole train split, no validation.
      augment: on-device augmentation of training batches: ``"crop+flip"`` (pad-4 random
        crop + horizontal flip), ``"crop"`` (no flip: digits), ``"none"``.
      resize: how ``folder:`` images become ``image_size`` squares: ``"stretch"`` (resize,
        aspect ratio not kept) or ``"crop"`` (shorter side to ``image_size``, then the
        central square).
      cache_dir: cache of decoded arrays (``None``: ``$JKT_CACHE`` or ``~/.cache/jkt``).
      pipeline: how training and evaluation read the images (the batches, and so the
        numbers, are the same either way). ``"resident"``: decoded once into host memory
        (:func:`jkt.data.load`). ``"stream"``: each batch read and decoded when it is due
        (:mod:`jkt.data.stream`), for datasets too large to decode whole; reads a local
        ``folder:`` (not an archive) or a tfds name (also ``imagenet2012``, which only
        streams); mean/std over a fixed sample of the train split
        (:func:`jkt.data.pipeline.sample_stats`). ``"auto"``: ``"stream"`` when the
        decoded train split would exceed a budget of the host memory, i.e. when
        ``jkt.resources.decode_bytes(N, image_size)`` (``N``: the train split's images,
        counted from the folder listing or the tfds records, nothing decoded) exceeds
        :data:`AUTO_STREAM_FRACTION` (50 %) of ``jkt.resources.host_memory_available()``,
        and for a dataset that only streams; else ``"resident"`` (always for ``digits``,
        archives and URIs, which cannot stream).
      unreadable: what a streamed ``folder:`` does with an image it cannot read or decode:
        ``"error"`` (stop, naming the file) or ``"skip"`` (the next readable image of the
        listing takes its place, with a warning and a count). The resident loader skips
        unreadable files with a count when it decodes the folder.
      stream_workers: Grain worker processes that read and decode a streamed dataset's
        batches (0: reader threads of the training process only); the number to tune on a
        pod host (``python -m experiments.stream_bench`` measures it).
    """

    name: str = "digits"
    data_dir: str | None = None
    image_size: int = 32
    val_fraction: float = 0.1
    validation: Literal["held_out", "unused", "none"] = "held_out"
    augment: Literal["none", "crop", "crop+flip"] = "crop+flip"
    resize: Literal["stretch", "crop"] = "stretch"
    cache_dir: str | None = None
    pipeline: Literal["resident", "stream", "auto"] = "resident"
    unreadable: Literal["error", "skip"] = "error"
    stream_workers: int = 0

    def __post_init__(self):
        if not self.name:
            raise ValueError("data.name must name a dataset (digits, cifar10, cifar100, "
                             "folder:PATH)")
        check_int("data.image_size", self.image_size)
        check_number("data.val_fraction", self.val_fraction, 0, 1, high_open=True)
        for field, valid in (("validation", VALIDATION_POLICIES), ("augment", AUGMENTATIONS),
                             ("resize", RESIZE_POLICIES), ("pipeline", PIPELINES),
                             ("unreadable", UNREADABLE)):
            if getattr(self, field) not in valid:
                raise ValueError(f"data.{field} must be one of {', '.join(valid)}; got "
                                 f"{getattr(self, field)!r}")
        check_int("data.stream_workers", self.stream_workers, 0)


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not where the loader looked; the message says how to get them."""


@dataclasses.dataclass(frozen=True)
class Split:
    """Images and labels of one split, held in host memory.

    Attributes:
      images: ``uint8`` array of shape ``(N, H, W, 3)``.
      labels: ``int32`` array of shape ``(N,)``, values in ``[0, num_classes)``.
    """

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self):
        images = np.asarray(self.images)
        labels = np.asarray(self.labels)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(
                f"Split.images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}"
            )
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(
                f"Split.labels must have shape ({images.shape[0]},), got {labels.shape}"
            )
        object.__setattr__(self, "images", images)
        object.__setattr__(self, "labels", labels.astype(np.int32, copy=False))

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def take(self, indices: np.ndarray) -> Split:
        """The examples at ``indices`` (a copy), in that order."""
        indices = np.asarray(indices, dtype=np.int64)
        return Split(self.images[indices], self.labels[indices])


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A classification dataset: train/val/test splits plus metadata.

    Attributes:
      name: the source name it was loaded from (e.g. ``"cifar100"``).
      train, val, test: disjoint splits (``val`` is carved out of the original train set,
        or empty when the whole train split is training data: see
        :attr:`DataConfig.validation`); in-memory :class:`Split` s, or record sources
        (:mod:`jkt.data.records`) read when due with ``DataConfig.pipeline="stream"``.
      class_names: one name per label id.
      mean, std: per-channel statistics of ``train`` images scaled to ``[0, 1]``, for
        :func:`jkt.data.normalize`.
    """

    name: str
    train: Split  # or a record source (streamed)
    val: Split
    test: Split
    class_names: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def summary(self) -> str:
        """``"name: N train / N val / N test, K classes"``."""
        return (f"{self.name}: {len(self.train)} train / {len(self.val)} val / "
                f"{len(self.test)} test, {self.num_classes} classes")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, 3)`` of every image."""
        if isinstance(self.train, Split):
            return tuple(int(d) for d in self.train.images.shape[1:])
        return tuple(int(d) for d in self.train.image_shape)
