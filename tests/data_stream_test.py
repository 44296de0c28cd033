"""The streaming input path gives the resident path's batches: same examples, same order,
same pixels, for the same seed; it resumes at any step and each process reads only its own
rows."""

from pathlib import Path

import chex
import jax
import numpy as np
import pytest
from PIL import Image

from jkt import data, parallel
from jkt.data import folder as folder_lib
from jkt.data import stream as stream_lib
from jkt.data.batches import BatchStream, make_batch, train_batches
from jkt.data.types import Split

ROOT = Path(__file__).resolve().parents[1]
SHARED_TFDS = ROOT.parent / "shared" / "data" / "tfds"


def _split(n=40, side=8, seed=0):
    rng = np.random.default_rng(seed)
    return Split(rng.integers(0, 256, (n, side, side, 3), np.uint8), np.arange(n) % 4)


def _host(batch):
    return {k: np.asarray(jax.device_get(v)) for k, v in batch.items()}


def _assert_same_batches(a, b):
    for x, y in zip(a, b, strict=True):
        chex.assert_trees_all_equal(_host(x), _host(y))


def test_streamed_batches_equal_resident_batches():
    split, mesh = _split(), parallel.make_mesh()
    stream = BatchStream(len(split), 16, seed=3)  # 2.5 batches an epoch: boundaries crossed
    resident = train_batches(split, stream, mesh)
    streamed = stream_lib.streamed_batches(stream_lib.SplitRecords(split), stream, mesh,
                                           stop_step=7)
    _assert_same_batches([next(resident) for _ in range(7)], list(streamed))


def test_a_resumed_stream_continues_with_the_next_unseen_batch():
    split, mesh = _split(), parallel.make_mesh()
    stream = BatchStream(len(split), 8, seed=1)
    records = stream_lib.SplitRecords(split)
    whole = list(stream_lib.streamed_batches(records, stream, mesh, stop_step=9))
    resumed = list(stream_lib.streamed_batches(records, stream, mesh, start_step=5,
                                               stop_step=9))
    _assert_same_batches(whole[5:], resumed)


def test_processes_read_disjoint_rows_that_make_up_the_batch():
    split = _split()
    stream = BatchStream(len(split), 8, seed=2)
    records = stream_lib.SplitRecords(split)
    halves = [stream_lib._LocalRows(records, stream, rows)(4)
              for rows in (slice(0, 4), slice(4, 8))]
    want = split.take(stream.indices(4))
    got = np.concatenate([h["image"] for h in halves])
    np.testing.assert_array_equal(got, want.images)
    np.testing.assert_array_equal(np.concatenate([h["label"] for h in halves]), want.labels)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """train/ and test/ of 3 classes, PNGs of two sizes (resized on decoding)."""
    root = tmp_path_factory.mktemp("stream_imgs")
    rng = np.random.default_rng(0)
    for part, n in (("train", 6), ("test", 2)):
        for c in ("n01", "n02", "n03"):
            (root / part / c).mkdir(parents=True)
            for i in range(n):
                side = 12 if i % 2 else 20
                img = rng.integers(0, 256, (side, side, 3), np.uint8)
                Image.fromarray(img).save(root / part / c / f"{i}.png")
    return root


def test_folder_stream_equals_the_resident_folder_loader(image_folder, tmp_path):
    train, test, names = folder_lib.load_folder(image_folder, image_size=16,
                                                cache_dir=tmp_path / "cache")
    records = stream_lib.folder_records(image_folder, image_size=16)
    assert records.class_names == names and len(records) == len(train)
    np.testing.assert_array_equal(records.labels, train.labels)
    chex.assert_trees_all_equal(stream_lib.read_all(records).images, train.images)
    test_records = stream_lib.folder_records(image_folder, "test", image_size=16)
    np.testing.assert_array_equal(stream_lib.read_all(test_records).images, test.images)
    mesh = parallel.make_mesh()
    stream = BatchStream(len(train), 8, seed=0)
    resident = [make_batch(train, stream.indices(s), mesh) for s in range(4)]
    streamed = stream_lib.streamed_batches(records, stream, mesh, stop_step=4,
                                           options=stream_lib.StreamOptions(workers=2))
    _assert_same_batches(resident, list(streamed))


def test_an_unreadable_streamed_image_is_named(image_folder, tmp_path):
    root = tmp_path / "imgs"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "a" / "0.png")
    (root / "b" / "0.png").write_bytes(b"not a png")
    records = stream_lib.folder_records(root, image_size=8)
    with pytest.raises(stream_lib.UnreadableImageError, match=r"b/0.png"):
        records[1]
    with pytest.raises(ValueError, match="extract the archive"):
        stream_lib.folder_records(root / "a" / "0.png")


def test_tfds_records_read_the_prepared_arrayrecord_split(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    if not (SHARED_TFDS / "cifar10").is_dir():
        pytest.skip(f"no tfds directory {SHARED_TFDS}")
    ds = data.load("cifar10", data_dir=SHARED_TFDS, cache_dir=tmp_path / "c",
                   validation="none")
    records = stream_lib.TfdsRecords("cifar10", "train", str(SHARED_TFDS), image_size=32)
    assert len(records) == len(ds.train)
    picked = [0, 7, len(records) - 1]
    got = stream_lib.read_all(records, picked)
    np.testing.assert_array_equal(got.images, ds.train.images[picked])
    np.testing.assert_array_equal(got.labels, ds.train.labels[picked])
