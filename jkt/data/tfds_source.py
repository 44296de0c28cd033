"""CIFAR-10/100 through ``tfds.data_source`` (ArrayRecord files, no TensorFlow needed).

Nothing is ever downloaded here: the prepared dataset must already be in the data
directory (``python -m experiments.prepare_data NAME`` prepares it on a machine with
internet). When it is not, :class:`DatasetNotFoundError` says how to prepare it, before
``tensorflow_datasets`` is even imported (which is lazy, so ``import jkt.data`` works
without it).

Records are read in batches (``__getitems__``: one call per few thousand records instead
of one per record, which matters most on remote storage) and the decoded arrays are cached
with :mod:`jkt.data.cache`, keyed by the dataset directory's files; a cached load imports
neither ``tensorflow_datasets`` nor decodes anything. The data directory may be a local
path or a URI such as ``gs://bucket/tensorflow_datasets``; it is only ever read.
"""

from __future__ import annotations

import json
import os
from pathlib import PurePosixPath

import numpy as np
from etils import epath

from jkt import paths
from jkt.data import cache as cache_lib
from jkt.data.types import DatasetNotFoundError, Split

TFDS_NAMES = ("cifar10", "cifar100")
STREAM_ONLY_TFDS = ("imagenet2012",)
"""tfds datasets read only streamed (too large to decode whole: :mod:`jkt.data.pipeline`)."""
READ_CHUNK = 4096  # records per __getitems__ call
_CACHE_KEYS = ("train_images", "train_labels", "test_images", "test_labels", "class_names")


def default_data_dir() -> epath.Path:
    """``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets`` (tfds' own default)."""
    return paths.as_path(os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets")


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _not_prepared(name: str, data_dir: epath.Path, detail: str) -> DatasetNotFoundError:
    return DatasetNotFoundError(
        f"tfds dataset {name!r} is not prepared in {data_dir} ({detail}). This loader never "
        f"downloads: on a machine with internet run `python -m experiments.prepare_data {name} "
        f"--data-dir DIR` (or `pip install tensorflow tensorflow-datasets array_record "
        f"apache-beam mlcroissant` and `tfds build {name} --file_format=array_record`, which "
        f"writes ~/tensorflow_datasets/{name}), then copy DIR/{name} to {data_dir / name}, or "
        f"pass the directory holding {name}/ as data_dir (--data-dir on the command line, or "
        f"$TFDS_DATA_DIR)."
    )


def _check_json(file: epath.Path, name: str) -> None:
    try:
        json.loads(file.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(
            f"{file} is damaged ({_one_line(e)}): copy the {name} directory again, or prepare "
            f"it again with `python -m experiments.prepare_data {name}`"
        ) from e


def check_prepared(name: str, data_dir: epath.Path) -> list[tuple[str, int, int]]:
    """Checks that ``data_dir/name`` holds a prepared ArrayRecord version; fast, no tfds.

    Returns:
      :func:`jkt.data.cache.list_files` of ``data_dir/name`` (the cache key's input).

    Raises:
      DatasetNotFoundError: the directory, ``dataset_info.json`` or the train records are
        missing (a TFRecord build is named as such).
      ValueError: a ``dataset_info.json`` or ``features.json`` is not valid JSON, or the
        storage backend of a URI is not installed.
    """
    root = data_dir / name
    with paths.storage_errors(root):
        present = root.is_dir()
    if not present:
        raise _not_prepared(name, data_dir, f"no directory {root}")
    files = cache_lib.list_files(root)
    names = [PurePosixPath(f) for f, _, _ in files]
    infos = [f for f in names if f.name == "dataset_info.json" and len(f.parts) in (2, 3)]
    if not infos:
        raise _not_prepared(name, data_dir, f"no <version>/dataset_info.json under {root}")
    for f in names:
        if f.name in ("dataset_info.json", "features.json"):
            _check_json(root / str(f), name)
    if not any(f.name.startswith(f"{name}-train.array_record") for f in names):
        other = [f.name for f in names if f.name.startswith(f"{name}-train.")][:1]
        detail = f"no {name}-train.array_record-* files under {root}"
        if other:
            detail += f" (found {other[0]}: rebuild with --file_format=array_record)"
        raise _not_prepared(name, data_dir, detail)
    return files


def _open(name: str, data_dir: epath.Path, files):
    try:  # lazy: not installed on every machine
        import array_record.python.array_record_data_source  # noqa: F401 - tfds reads with it
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError(f"reading {name} needs tensorflow-datasets and array_record ({e}): "
                          f"pip install tensorflow-datasets array_record (TensorFlow is not "
                          f"needed)") from e

    try:
        return tfds.data_source(
            name,
            split=["train", "test"],
            data_dir=os.fspath(data_dir),
            download=False,
            try_gcs=False,
            builder_kwargs={"file_format": "array_record"},
        )
    except Exception as e:  # noqa: BLE001 - tfds raises many kinds; all mean "cannot open"
        detail = f"tfds could not open it: {_one_line(e)}"
        with_info = {PurePosixPath(f).parts[0] for f, _, _ in files if f.endswith("info.json")}
        try:
            want = str(tfds.builder_cls(name).VERSION)
        except Exception:  # noqa: BLE001 - only refines the message
            want = None
        if want and want not in with_info:
            detail = (f"found version(s) {', '.join(sorted(with_info))}, but tensorflow-datasets "
                      f"{tfds.__version__} reads version {want}")
        raise _not_prepared(name, data_dir, detail) from e


def _read_split(source, name: str, split: str, data_dir: epath.Path) -> Split:
    """All examples of one split, in record order: images ``(N, 32, 32, 3)`` uint8."""
    n = len(source)
    if n == 0:
        raise ValueError(f"the {split} split of {name} in {data_dir} is empty")
    try:
        images = labels = None
        for start in range(0, n, READ_CHUNK):
            examples = source.__getitems__(list(range(start, min(n, start + READ_CHUNK))))
            if images is None:
                images = np.empty((n, *np.shape(examples[0]["image"])), np.uint8)
                labels = np.empty((n,), np.int32)
            images[start : start + len(examples)] = [e["image"] for e in examples]
            labels[start : start + len(examples)] = [e["label"] for e in examples]
    except Exception as e:  # noqa: BLE001 - a damaged file fails in the reader or decoder
        raise ValueError(
            f"cannot read the {split} split of {name} from "
            f"{data_dir / name}/*/{name}-{split}.array_record-* ({_one_line(e)}): a file is "
            f"damaged or truncated; copy the {name} directory again"
        ) from e
    return Split(images, labels)


def load_tfds(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[Split, Split, tuple[str, ...]]:
    """Reads the official train and test splits into memory (from the cache when valid).

    Args:
      name: ``"cifar10"`` or ``"cifar100"`` (fine labels).
      data_dir: tfds data directory, local or a URI (``gs://...``); defaults to
        :func:`default_data_dir`.
      cache_dir: where the decoded arrays are cached (see :mod:`jkt.data.cache`);
        ``None`` means ``$JKT_CACHE`` or ``~/.cache/jkt``.

    Returns:
      ``(train, test, class_names)`` with images ``(N, 32, 32, 3)`` uint8, labels int32 in
      record order, and the label names of ``label.labels.txt``.

    Raises:
      ValueError: unknown ``name``; a damaged file (named); a URI without its backend.
      DatasetNotFoundError: the prepared files are missing (fails in well under a second).
    """
    if name not in TFDS_NAMES:
        raise ValueError(f"unknown tfds dataset {name!r}; expected one of {TFDS_NAMES}")
    data_dir = paths.as_path(data_dir) if data_dir is not None else default_data_dir()
    files = check_prepared(name, data_dir)
    file = cache_lib.cache_file(cache_dir, f"tfds-{name}", "tfds", name,
                                cache_lib.fingerprint(data_dir / name, files))
    cached = cache_lib.load_arrays(file, _CACHE_KEYS)
    if cached is not None:
        return (Split(cached["train_images"], cached["train_labels"]),
                Split(cached["test_images"], cached["test_labels"]),
                tuple(str(c) for c in cached["class_names"]))

    train_src, test_src = _open(name, data_dir, files)
    class_names = tuple(train_src.dataset_info.features["label"].names)
    train = _read_split(train_src, name, "train", data_dir)
    test = _read_split(test_src, name, "test", data_dir)
    cache_lib.save_arrays(file, {
        "train_images": train.images, "train_labels": train.labels,
        "test_images": test.images, "test_labels": test.labels,
        "class_names": np.array(class_names),
    })
    return train, test, class_names
