"""Downloads and prepares CIFAR-10/100 for ``jkt.data.load`` (run on a machine with internet).

    python -m experiments.prepare_data cifar100 --data-dir DIR

runs ``tfds.builder(NAME, data_dir=DIR, file_format="array_record").download_and_prepare()``,
which writes ``DIR/NAME/<version>/`` (``dataset_info.json``, label names and the
``NAME-{train,test}.array_record-*`` records), then says where to copy it. Preparing needs
TensorFlow (tensorflow-datasets uses it to download and encode); reading the result with
``jkt.data.load`` does not. ``DIR`` defaults to ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``
and may be a URI (``gs://bucket/tensorflow_datasets``).
"""

from __future__ import annotations

import argparse
import os

from jkt import paths
from jkt.data import tfds_source

INSTALL = "pip install tensorflow tensorflow-datasets array_record"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.prepare_data",
        description="Download and prepare a tfds dataset in ArrayRecord format.")
    parser.add_argument("name", choices=tfds_source.TFDS_NAMES)
    parser.add_argument("--data-dir", default=None,
                        help="tfds data directory (default: $TFDS_DATA_DIR or "
                             "~/tensorflow_datasets)")
    return parser.parse_args(argv)


def prepare(name: str, data_dir: str) -> tuple[str, dict[str, int]]:
    """Downloads and prepares ``name`` under ``data_dir``.

    Returns:
      ``(version directory, {split: number of examples})``.

    Raises:
      SystemExit: TensorFlow, tensorflow-datasets or array_record is missing (one line
        saying what to install).
    """
    try:
        import array_record  # noqa: F401 - the ArrayRecord writer tfds uses
        import tensorflow  # noqa: F401 - tfds downloads and encodes with it
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise SystemExit(f"error: preparing {name} needs TensorFlow, tensorflow-datasets and "
                         f"array_record ({e}); run: {INSTALL}") from None
    builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare()
    sizes = {split: info.num_examples for split, info in builder.info.splits.items()}
    return os.fspath(builder.data_dir), sizes


def main(argv=None) -> str:
    args = parse_args(argv)
    data_dir = os.fspath(paths.as_path(args.data_dir) if args.data_dir is not None
                         else tfds_source.default_data_dir())
    version_dir, sizes = prepare(args.name, data_dir)
    counts = ", ".join(f"{n} {split}" for split, n in sorted(sizes.items(), reverse=True))
    print(f"prepared {args.name} ({counts}) in {version_dir}")
    print(f"To train here pass --data-dir {data_dir}. Elsewhere, copy the folder "
          f"{os.path.join(data_dir, args.name)} (all of it, keeping its name) into a directory "
          f"DATA_DIR there and pass --data-dir DATA_DIR (or data_dir=DATA_DIR to "
          f"jkt.data.load, or set TFDS_DATA_DIR=DATA_DIR).")
    return version_dir


if __name__ == "__main__":
    main()
