"""Streamed datasets (``DataConfig.pipeline``): a :class:`jkt.data.Dataset` whose splits are
record sources (:mod:`jkt.data.records`), read and decoded batch by batch when due
(:mod:`jkt.data.stream`), never decoded whole.

The splits are the resident path's (:func:`jkt.data.load`), as indices into the listing:
the same images in the same order, so a streamed run sees the resident run's batches.
A folder without a test part gets the same fixed stratified test split, ``"held_out"``
validation the same stratified ``val_fraction`` (seed 0), ``"unused"``/``"none"`` an
empty validation split. Only mean/std differ when the train split is large: they are
:func:`jkt.data.splits.channel_stats` (the resident formula) over a fixed sample of at
most :data:`STATS_SAMPLE` train images (:func:`sample_stats`); for up to that many images
they are the resident values exactly.
"""

from __future__ import annotations

import concurrent.futures
import os

import numpy as np

from jkt.data import records as records_lib
from jkt.data import splits, tfds_source
from jkt.data.sources import FOLDER_PREFIX, load_resident
from jkt.data.tfds_source import STREAM_ONLY_TFDS
from jkt.data.types import AUTO_STREAM_FRACTION, DataConfig, Dataset, DatasetNotFoundError

STREAM_TFDS_NAMES = (*tfds_source.TFDS_NAMES, *STREAM_ONLY_TFDS)
TFDS_TEST_SPLIT = {"imagenet2012": "validation"}
"""The tfds split used as ``test`` where it is not named ``"test"``."""
TFDS_IMAGE_SIZE = {"cifar10": 32, "cifar100": 32}
"""Fixed image sides (as the resident loader reads them); others take ``image_size``."""
STATS_SAMPLE = 2000
"""mean/std of a streamed train split come from at most this many of its images."""
_STATS_SEED = 0x57A7


def sample_stats(records, size: int = STATS_SAMPLE, threads: int = 16):
    """``(mean, std)`` per channel of ``records`` by :func:`jkt.data.splits.channel_stats`
    over all of them (``len(records) <= size``: the resident values) or over ``size`` of
    them drawn without replacement by a fixed seed (the same images on every call)."""
    n = len(records)
    if n == 0:
        raise ValueError("cannot compute mean/std of an empty train split")
    picked = np.arange(n) if n <= size else np.sort(
        np.random.default_rng(_STATS_SEED).choice(n, size, replace=False))
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        images = list(pool.map(lambda i: records[int(i)][0], picked))
    return splits.channel_stats(np.stack(images))


def _too_big(num_images: int, image_size: int) -> bool:
    """``pipeline="auto"``'s rule (:class:`jkt.data.DataConfig`)."""
    from jkt import resources

    return (resources.decode_bytes(num_images, image_size)
            > AUTO_STREAM_FRACTION * resources.host_memory_available())


def _folder(cfg: DataConfig, path: str):
    """``(train, test or None, class names)`` of a local folder, or ``None`` where
    ``"auto"`` keeps it resident (an archive, a URI, a folder that fits)."""
    if cfg.pipeline == "auto" and ("://" in path or not os.path.isdir(path)):
        return None
    train, test = records_lib.folder_splits(path, image_size=cfg.image_size,
                                            resize=cfg.resize, on_unreadable=cfg.unreadable)
    if cfg.pipeline == "auto" and not _too_big(len(train), cfg.image_size):
        return None
    return train, test, train.class_names


def _tfds(cfg: DataConfig):
    """``(train, test, class names)`` of a prepared tfds dataset, or ``None`` where
    ``"auto"`` keeps it resident."""
    from jkt import paths

    data_dir = (paths.as_path(cfg.data_dir) if cfg.data_dir is not None
                else tfds_source.default_data_dir())
    try:
        tfds_source.check_prepared(cfg.name, data_dir)  # one line when it is not there
    except DatasetNotFoundError:
        if cfg.name not in STREAM_ONLY_TFDS:
            raise
        raise DatasetNotFoundError(
            f"tfds dataset {cfg.name!r} is not prepared in {data_dir}: it is built from "
            "ImageNet's own archives (ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar in a "
            f"manual directory): `tfds build {cfg.name} --file_format=array_record "
            "--manual_dir MANUAL_DIR`, then pass the directory holding "
            f"{cfg.name}/ as --data-dir; or stream the images as a folder "
            "(--dataset folder:IMAGENET_DIR)") from None
    size = TFDS_IMAGE_SIZE.get(cfg.name, cfg.image_size)
    make = lambda split: records_lib.TfdsRecords(  # noqa: E731
        cfg.name, split, os.fspath(data_dir), size, cfg.resize, cfg.cache_dir)
    train = make("train")
    if (cfg.pipeline == "auto" and cfg.name not in STREAM_ONLY_TFDS
            and not _too_big(len(train), size)):
        return None
    test = make(TFDS_TEST_SPLIT.get(cfg.name, "test"))
    names = tuple(train._source().dataset_info.features["label"].names)
    return train, test, names


def load_streamed(cfg: DataConfig, test_fraction: float = 0.1) -> Dataset | None:
    """The streamed :class:`jkt.data.Dataset` of ``cfg`` (``pipeline`` ``"stream"``, or
    ``"auto"`` when its rule streams; ``None`` when ``"auto"`` reads it resident).

    Raises:
      ValueError: one line for a source that cannot stream (``digits``, an archive, a
        URI folder) or an unknown name.
    """
    name = cfg.name
    if name.startswith(FOLDER_PREFIX):
        path = name[len(FOLDER_PREFIX):]
        if not path:
            raise ValueError("folder source needs a path: 'folder:/path/to/images'")
        got = _folder(cfg, path)
    elif name in STREAM_TFDS_NAMES:
        got = _tfds(cfg)
    elif cfg.pipeline == "auto":
        return None
    else:
        raise ValueError(f"data.pipeline=stream reads a local folder:PATH or a tfds dataset "
                         f"({', '.join(STREAM_TFDS_NAMES)}), not {name!r}; use "
                         "data.pipeline=resident")
    if got is None:
        return None
    train, test, class_names = got
    if test is None:  # the resident loader's fixed stratified test split
        kept, carved = splits.stratified_indices(train.labels, test_fraction, 0,
                                                 salt=splits._TEST_SALT)
        train, test = train.take(kept), train.take(carved)
    if cfg.validation == "held_out":
        kept, carved = splits.stratified_indices(train.labels, cfg.val_fraction, 0)
        train, val = train.take(kept), train.take(carved)
    else:
        val = train.take(np.zeros((0,), np.int64))
    mean, std = sample_stats(train)
    return Dataset(name=name, train=train, val=val, test=test,
                   class_names=tuple(class_names), mean=mean, std=std)


def load_config(cfg: DataConfig) -> Dataset:
    """The dataset of a :class:`DataConfig`: :func:`jkt.data.load` with its arguments
    (every split in host memory), or with ``cfg.pipeline`` ``"stream"`` (or ``"auto"``
    when its rule streams) the streamed dataset of :func:`load_streamed`."""
    if cfg.pipeline != "resident":
        streamed = load_streamed(cfg)
        if streamed is not None:
            return streamed
    return load_resident(cfg)


__all__ = ["STATS_SAMPLE", "STREAM_ONLY_TFDS", "STREAM_TFDS_NAMES", "load_config",
           "load_streamed", "sample_stats"]
