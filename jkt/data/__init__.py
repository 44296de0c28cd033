"""Datasets in host memory, subsets, on-device transforms and sharded global batches.

Typical use::

    ds = data.load("cifar100", data_dir=...)          # or "digits", "folder:PATH"
    train = data.subset_per_class(ds.train, 100, seed)  # paper §5.1
    stream = data.BatchStream(len(train), 128, seed)
    batch = data.make_batch(train, stream.indices(step), mesh)
    x = data.normalize(data.augment(key, batch["image"]), ds.mean, ds.std)  # inside jit
"""

from jkt.data.batches import (
    BatchStream,
    eval_batches,
    make_batch,
    train_batches,
)
from jkt.data.folder import load_folder
from jkt.data.pipeline import load_config
from jkt.data.sources import SOURCES, load
from jkt.data.splits import (
    channel_stats,
    split_off,
    split_off_test,
    stratified_indices,
    subset_indices,
    subset_per_class,
    train_and_val,
    validation_from_unused,
)
from jkt.data.transforms import add_gaussian_noise, augment, normalize
from jkt.data.types import DataConfig, Dataset, DatasetNotFoundError, Split

__all__ = [
    "SOURCES",
    "BatchStream",
    "DataConfig",
    "Dataset",
    "DatasetNotFoundError",
    "Split",
    "add_gaussian_noise",
    "augment",
    "channel_stats",
    "eval_batches",
    "load",
    "load_config",
    "load_folder",
    "make_batch",
    "normalize",
    "split_off",
    "split_off_test",
    "stratified_indices",
    "subset_indices",
    "subset_per_class",
    "train_and_val",
    "train_batches",
    "validation_from_unused",
]
