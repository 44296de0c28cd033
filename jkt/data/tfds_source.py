"""CIFAR-10/100 through ``tfds.data_source`` (ArrayRecord files, no TensorFlow needed).

Nothing is ever downloaded here: the prepared dataset must already be in the data
directory. When it is not, :class:`DatasetNotFoundError` says how to prepare it, before
``tensorflow_datasets`` is even imported (which is lazy, so ``import jkt.data`` works
without it).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from jkt.data.types import DatasetNotFoundError, Split

TFDS_NAMES = ("cifar10", "cifar100")


def default_data_dir() -> Path:
    """``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets`` (tfds' own default)."""
    return Path(os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets").expanduser()


def _not_prepared(name: str, data_dir: Path, detail: str) -> DatasetNotFoundError:
    return DatasetNotFoundError(
        f"tfds dataset {name!r} is not prepared in {data_dir} ({detail}); this loader never "
        f"downloads. On a machine with internet run\n"
        f"    pip install tensorflow tensorflow-datasets array_record\n"
        f"    tfds build {name} --file_format=array_record\n"
        f"then copy the resulting directory ~/tensorflow_datasets/{name} (it holds "
        f"<version>/dataset_info.json and {name}-train.array_record-* files) to "
        f"{data_dir / name}, or to DATA_DIR/{name} and pass data_dir=DATA_DIR "
        f"(--data-dir DATA_DIR on the command line, or set TFDS_DATA_DIR)."
    )


def check_prepared(name: str, data_dir: Path) -> None:
    """Raises :class:`DatasetNotFoundError` unless ``data_dir/name`` holds a prepared version."""
    root = data_dir / name
    if not root.is_dir():
        raise _not_prepared(name, data_dir, f"no directory {root}")
    infos = sorted(root.glob("*/dataset_info.json")) + sorted(root.glob("*/*/dataset_info.json"))
    if not infos:
        raise _not_prepared(name, data_dir, f"no <version>/dataset_info.json under {root}")
    if not any(root.glob(f"**/{name}-train.array_record*")):
        other = [p.name for p in root.glob(f"**/{name}-train.*")][:1]
        detail = f"no {name}-train.array_record-* files under {root}"
        if other:
            detail += f" (found {other[0]}: rebuild with --file_format=array_record)"
        raise _not_prepared(name, data_dir, detail)


def _to_split(source) -> Split:
    n = len(source)
    first = source[0] if n else None
    if first is None:
        raise DatasetNotFoundError("empty tfds split")
    images = np.empty((n, *np.asarray(first["image"]).shape), np.uint8)
    labels = np.empty((n,), np.int32)
    for i in range(n):
        example = source[i]
        images[i] = example["image"]
        labels[i] = example["label"]
    return Split(images, labels)


def load_tfds(name: str, data_dir: str | os.PathLike | None = None):
    """Reads the official train and test splits into memory.

    Args:
      name: ``"cifar10"`` or ``"cifar100"`` (fine labels).
      data_dir: tfds data directory; defaults to :func:`default_data_dir`.

    Returns:
      ``(train, test, class_names)``.

    Raises:
      DatasetNotFoundError: the prepared files are missing (fails in well under a second).
    """
    if name not in TFDS_NAMES:
        raise ValueError(f"unknown tfds dataset {name!r}; expected one of {TFDS_NAMES}")
    data_dir = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    check_prepared(name, data_dir)
    import tensorflow_datasets as tfds  # lazy: not installed on every machine

    try:
        train_src, test_src = tfds.data_source(
            name,
            split=["train", "test"],
            data_dir=str(data_dir),
            download=False,
            try_gcs=False,
            builder_kwargs={"file_format": "array_record"},
        )
    except (KeyError, FileNotFoundError, AssertionError) as e:
        raise _not_prepared(name, data_dir, f"tfds could not open it: {e}") from e
    class_names = tuple(train_src.dataset_info.features["label"].names)
    return _to_split(train_src), _to_split(test_src), class_names
