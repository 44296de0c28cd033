"""The streaming input path gives the resident path's batches: same examples, same order,
same pixels, for the same seed; it resumes at any step and each process reads only its own
rows."""

import dataclasses
import threading
import time
from pathlib import Path

import chex
import jax
import numpy as np
import pytest
from PIL import Image

from jkt import data, parallel
from jkt.data import fingerprint as fingerprint_lib
from jkt.data import folder as folder_lib
from jkt.data import stream as stream_lib
from jkt.data.batches import BatchStream, eval_batches, make_batch, train_batches
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
    halves = [stream_lib._LocalRows(records, stream, {8: rows})(4)
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
    skipping = stream_lib.folder_splits(root, image_size=8, on_unreadable="skip")[0]
    with pytest.warns(UserWarning, match=r"b/0.png.*in its place: .*a/0.png; 1 unreadable"):
        image, label = skipping[1]
    want_image, want_label = records[0]
    np.testing.assert_array_equal(image, want_image)
    assert label == want_label
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


def test_epoch_batching_streams_the_short_batch_of_each_epoch():
    split, mesh = _split(), parallel.make_mesh()  # 8 devices
    stream = BatchStream(len(split), 16, seed=4, batching="epoch",
                         multiple_of=mesh.devices.size)
    assert stream.batch_sizes == (16, 8)  # 40 = 16 + 16 + 8 an epoch
    resident = [make_batch(split, stream.indices(s), mesh) for s in range(2, 8)]
    streamed = list(stream_lib.streamed_batches(stream_lib.SplitRecords(split), stream, mesh,
                                                start_step=2, stop_step=8))
    assert [b["label"].shape[0] for b in streamed] == [8, 16, 16, 8, 16, 16]
    _assert_same_batches(resident, streamed)


@pytest.mark.parametrize("n", [37, 48, 0])
def test_streamed_eval_batches_equal_the_resident_ones(n):
    split, mesh = _split(n=n), parallel.make_mesh()
    want = list(eval_batches(split, 16, mesh))
    got = list(stream_lib.streamed_eval_batches(stream_lib.SplitRecords(split), 16, mesh))
    assert len(got) == -(-n // 16)
    _assert_same_batches(want, got)


def test_subsets_index_their_source_and_fingerprint_without_decoding(image_folder):
    records = stream_lib.folder_records(image_folder, image_size=16)
    assert records.image_shape == (16, 16, 3)
    sub = records.take([5, 1, 9]).take([2, 0])  # a subset of a subset indexes the source
    assert sub.records is records and list(sub.indices) == [9, 5]
    np.testing.assert_array_equal(sub.labels, records.labels[[9, 5]])
    np.testing.assert_array_equal(sub[1][0], records[5][0])
    assert sub.image_shape == (16, 16, 3)
    with pytest.MonkeyPatch.context() as m:  # a fingerprint reads no image
        m.setattr(stream_lib.FolderRecords, "__getitem__", None)
        fp = records.fingerprint()
        assert stream_lib.folder_records(image_folder, image_size=16).fingerprint() == fp
        assert stream_lib.folder_records(image_folder, image_size=12).fingerprint() != fp
        assert sub.fingerprint() != records.take([9, 6]).fingerprint()
    split = _split(8)
    assert stream_lib.SplitRecords(split).fingerprint() == stream_lib.SplitRecords(
        Split(split.images.copy(), split.labels)).fingerprint()
    assert stream_lib.SplitRecords(split).image_shape == (8, 8, 3)


def _both(name, **kw):
    """The resident and the streamed dataset of one config."""
    cfg = data.DataConfig(name=name, **kw)
    return (data.load_config(cfg),
            data.load_config(dataclasses.replace(cfg, pipeline="stream")))


def _assert_same_dataset(resident, streamed):
    assert streamed.class_names == resident.class_names
    assert streamed.image_shape == resident.image_shape
    for part in ("train", "val", "test"):
        want, got = getattr(resident, part), getattr(streamed, part)
        assert isinstance(got, stream_lib.Subset | stream_lib.FolderRecords
                          | stream_lib.TfdsRecords), part
        np.testing.assert_array_equal(got.labels, want.labels)
        if len(want):
            np.testing.assert_array_equal(stream_lib.read_all(got).images, want.images)
    # Up to 2,000 train images the sample is all of them: the resident statistics exactly.
    assert streamed.mean == resident.mean and streamed.std == resident.std


@pytest.mark.parametrize("validation", ["held_out", "none", "unused"])
def test_a_streamed_folder_dataset_has_the_resident_splits(image_folder, tmp_path,
                                                           validation):
    resident, streamed = _both(f"folder:{image_folder}", image_size=16, val_fraction=0.2,
                               validation=validation, cache_dir=str(tmp_path))
    _assert_same_dataset(resident, streamed)
    again = data.load_config(data.DataConfig(
        name=f"folder:{image_folder}", image_size=16, val_fraction=0.2,
        validation=validation, pipeline="stream"))
    with pytest.MonkeyPatch.context() as m:  # a streamed dataset's fingerprint reads no image
        m.setattr(stream_lib.FolderRecords, "__getitem__", None)
        fp = fingerprint_lib.dataset_fingerprint(streamed)
        assert fingerprint_lib.dataset_fingerprint(again) == fp
    assert fp != fingerprint_lib.dataset_fingerprint(resident)


def test_a_folder_without_test_part_streams_the_resident_test_split(tmp_path):
    root = tmp_path / "classes"
    rng = np.random.default_rng(1)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(7):
            Image.fromarray(rng.integers(0, 256, (9, 11, 3), np.uint8)).save(root / c / f"{i}.png")
    resident, streamed = _both(f"folder:{root}", image_size=8, cache_dir=str(tmp_path / "c"))
    assert len(streamed.test) == 2 and len(streamed.val) == 2
    _assert_same_dataset(resident, streamed)


def test_auto_streams_when_the_decoded_train_split_exceeds_half_the_memory(
        image_folder, tmp_path, monkeypatch):
    from jkt import resources

    cfg = data.DataConfig(name=f"folder:{image_folder}", image_size=16, pipeline="auto",
                          cache_dir=str(tmp_path))
    need = resources.decode_bytes(18, 16)  # 18 train images
    monkeypatch.setattr(resources, "host_memory_available", lambda: 2 * need + 1)
    assert isinstance(data.load_config(cfg).train, Split)
    monkeypatch.setattr(resources, "host_memory_available", lambda: 2 * need - 1)
    assert isinstance(data.load_config(cfg).train, stream_lib.Subset)
    digits = dataclasses.replace(cfg, name="digits", image_size=8)
    assert isinstance(data.load_config(digits).train, Split)  # digits never stream
    for name, message in (("digits", "data.pipeline=resident"),
                          (f"folder:{tmp_path / 'x.zip'}", "does not exist")):
        with pytest.raises((ValueError, FileNotFoundError), match=message) as e:
            data.load_config(dataclasses.replace(cfg, name=name, pipeline="stream"))
        assert "\n" not in str(e.value)
    archive = tmp_path / "a.tar"
    archive.write_bytes(b"")
    with pytest.raises(ValueError, match="extract the archive"):
        data.load_config(dataclasses.replace(cfg, name=f"folder:{archive}", pipeline="stream"))


def test_a_streamed_tfds_dataset_has_the_resident_splits(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    if not (SHARED_TFDS / "cifar10").is_dir():
        pytest.skip(f"no tfds directory {SHARED_TFDS}")
    resident, streamed = _both("cifar10", data_dir=str(SHARED_TFDS), cache_dir=str(tmp_path))
    _assert_same_dataset(resident, streamed)
    assert any(tmp_path.glob("tfds-cifar10-train-labels-*.npz"))  # labels read once
    fp = fingerprint_lib.dataset_fingerprint(streamed)
    assert fp == fingerprint_lib.dataset_fingerprint(
        data.load_config(data.DataConfig("cifar10", data_dir=str(SHARED_TFDS),
                                         cache_dir=str(tmp_path), pipeline="stream")))


class _Stuck(stream_lib.SplitRecords):
    """Records whose example 5 never arrives (a worker stuck on a file)."""

    def __getitem__(self, i):
        if int(i) == 5:
            threading.Event().wait(30)
        return super().__getitem__(i)


def test_a_stalled_stream_is_reported_not_waited_for():
    split, mesh = _split(), parallel.make_mesh()
    stream = BatchStream(len(split), 8, seed=0)
    stuck_step = next(s for s in range(10) if 5 in stream.indices(s))
    batches = stream_lib.streamed_batches(
        _Stuck(split), stream, mesh, stop_step=10,
        options=stream_lib.StreamOptions(threads=1, prefetch=1, stall_timeout_s=0.5))
    t0 = time.perf_counter()
    with pytest.raises(stream_lib.StalledStreamError, match=f"no batch for 0.5 s .batch "
                       f"{stuck_step},"):
        for _ in batches:
            pass
    assert time.perf_counter() - t0 < 10
