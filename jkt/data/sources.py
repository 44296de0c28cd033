"""``load(name, ...)``: one entry point for every data source, chosen by a name string."""

from __future__ import annotations

import os

import numpy as np

from jkt.data import digits as digits_lib
from jkt.data import folder as folder_lib
from jkt.data import splits, tfds_source
from jkt.data.types import VALIDATION_POLICIES, DataConfig, Dataset

FOLDER_PREFIX = "folder:"
SOURCES = ("cifar10", "cifar100", "digits", "folder:PATH")


def load(
    name: str,
    *,
    image_size: int = 32,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    validation: str = "held_out",
    resize: str = "stretch",
) -> Dataset:
    """Loads a dataset into host memory with train/val/test splits.

    Args:
      name: ``"cifar10"``, ``"cifar100"`` (tfds ArrayRecord data in ``data_dir``; never
        downloaded), ``"digits"`` (scikit-learn's bundled 8x8 digits) or
        ``"folder:PATH"`` (image folder or archive, see :mod:`jkt.data.folder`).
      image_size: side of the square images for ``digits`` and ``folder:`` (CIFAR is
        always 32x32).
      val_fraction: stratified fraction of the train split held out as ``val``; chosen
        by ``seed`` (``validation="held_out"`` only).
      test_fraction: for sources without a test split, the stratified fraction of the
        data held out as ``test``; fixed (independent of ``seed``) so every run of a
        dataset is evaluated on the same test images.
      seed: selects the validation split.
      data_dir: tfds data directory, a local path or a URI such as ``gs://bucket/tfds``
        (default ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
      cache_dir: cache of decoded arrays for ``cifar10``/``cifar100`` and ``folder:``
        (default ``$JKT_CACHE`` or ``~/.cache/jkt``; see :mod:`jkt.data.cache`).
      validation: ``"held_out"`` carves ``val`` out of the train split; ``"unused"`` and
        ``"none"`` keep the whole official train split as ``train`` and return an empty
        ``val`` (runs on subsets draw theirs with :func:`jkt.data.train_and_val`).
      resize: ``folder:`` sources, ``"stretch"`` or ``"crop"`` (see
        :func:`jkt.data.load_folder`).

    Returns:
      A :class:`Dataset` whose ``mean``/``std`` come from its ``train`` split.

    Raises:
      ValueError: unknown ``name``; a damaged data file (named in the message).
      FileNotFoundError: missing data (``DatasetNotFoundError`` for tfds, with instructions).
    """
    if name in tfds_source.TFDS_NAMES:
        train, test, class_names = tfds_source.load_tfds(name, data_dir, cache_dir=cache_dir)
    elif name == "digits":
        full, class_names = digits_lib.load_digits(image_size)
        train, test = splits.split_off_test(full, test_fraction)
    elif name.startswith(FOLDER_PREFIX):
        path = name[len(FOLDER_PREFIX) :]
        if not path:
            raise ValueError("folder source needs a path: 'folder:/path/to/images'")
        train, test, class_names = folder_lib.load_folder(
            path, image_size=image_size, cache_dir=cache_dir, resize=resize
        )
        if test is None:
            train, test = splits.split_off_test(train, test_fraction)
    elif name in tfds_source.STREAM_ONLY_TFDS:
        raise ValueError(f"{name} is read only streamed: pass --pipeline stream "
                         "(data.pipeline=stream)")
    else:
        raise ValueError(f"unknown data source {name!r}; valid names: {', '.join(SOURCES)}")
    if validation not in VALIDATION_POLICIES:
        raise ValueError(f"validation must be one of {', '.join(VALIDATION_POLICIES)}, got "
                         f"{validation!r}")
    if validation == "held_out":
        train, val = splits.split_off(train, val_fraction, seed)
    else:
        val = train.take(np.zeros((0,), np.int64))
    mean, std = splits.channel_stats(train.images)
    return Dataset(
        name=name,
        train=train,
        val=val,
        test=test,
        class_names=tuple(class_names),
        mean=mean,
        std=std,
    )


def load_resident(cfg: DataConfig) -> Dataset:
    """:func:`load` with the arguments of a :class:`DataConfig` (every split in host
    memory; :func:`jkt.data.load_config` chooses by ``cfg.pipeline``)."""
    return load(cfg.name, image_size=cfg.image_size, val_fraction=cfg.val_fraction,
                data_dir=cfg.data_dir, cache_dir=cfg.cache_dir, validation=cfg.validation,
                resize=cfg.resize)
