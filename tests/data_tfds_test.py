"""Tests for the tfds (ArrayRecord) source, its cache, URI data dirs and prepare_data.

Two kinds of data, neither from the network:

* the real tfds-built directories in ``<repo>/../shared/data/tfds`` (read-only; tests
  skip when that copy is absent), checked against the records read directly with
  ``array_record`` and decoded with PIL following the directory's ``features.json``;
* small datasets written here in the same layout (tfds' own features metadata, records
  as serialized ``tf.train.Example`` with PNG images), so the reading path is exercised
  even without the shared copy.
"""

import io
import json
import logging
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import chex
import numpy as np
import pytest
from child_env import child_env
from PIL import Image

from experiments import prepare_data
from jkt import data, paths
from jkt.data import tfds_source

ROOT = Path(__file__).resolve().parents[1]
SHARED_TFDS = ROOT.parent / "shared" / "data" / "tfds"
REAL_SIZES = {"cifar10": (200, 100), "cifar100": (500, 200)}  # (train, test), its README


def _shared(name: str) -> Path:
    if not (SHARED_TFDS / name).is_dir():
        pytest.skip(f"no real tfds directory {SHARED_TFDS / name} (the read-only shared/ "
                    f"copy beside the repository)")
    return SHARED_TFDS


def _snapshot(root: Path) -> dict:
    """Every path under ``root`` with its size and mtime: a write shows up as a difference."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for f in dirs + files:
            st = os.stat(os.path.join(dirpath, f))
            out[os.path.relpath(os.path.join(dirpath, f), root)] = (st.st_size, st.st_mtime_ns)
    return out


def _read_direct(version_dir: Path, name: str, split: str):
    """``(images, labels)`` of a split read with array_record and PIL, not through tfds."""
    from array_record.python import array_record_module
    from tensorflow_datasets.proto import tf_example_pb2

    spec = json.loads((version_dir / "features.json").read_text())["featuresDict"]["features"]
    shape = tuple(int(d) for d in spec["image"]["image"]["shape"]["dimensions"])
    num_classes = int(spec["label"]["classLabel"]["numClasses"])
    images, labels = [], []
    for f in sorted(version_dir.glob(f"{name}-{split}.array_record-*")):
        reader = array_record_module.ArrayRecordReader(str(f))
        for record in reader.read_all():
            feature = tf_example_pb2.Example.FromString(record).features.feature
            with Image.open(io.BytesIO(feature["image"].bytes_list.value[0])) as img:
                assert img.format == "PNG"
                images.append(np.asarray(img))
            labels.append(feature["label"].int64_list.value[0])
        reader.close()
    images, labels = np.stack(images), np.array(labels)
    assert images.shape[1:] == shape and images.dtype == np.uint8
    assert 0 <= labels.min() and labels.max() < num_classes
    return images, labels


def _rows(images, labels):
    """Examples as a sorted list, to compare splits regardless of order."""
    return sorted(zip(labels.tolist(), (img.tobytes() for img in images), strict=True))


# ---------------------------------------------------------------------------- writer


def write_tfds_dataset(data_dir: Path, name: str, splits: dict, version: str = "3.0.2"):
    """Writes ``data_dir/name/version`` as ``tfds build --file_format=array_record`` does.

    ``splits``: ``{split: (images (N, 32, 32, 3) uint8, labels (N,))}``. Label names are
    ``class_000``...; for ``cifar100`` the coarse label is ``label // 5``. Returns the
    version directory.
    """
    tfds = pytest.importorskip("tensorflow_datasets")
    array_record_module = pytest.importorskip("array_record.python.array_record_module")
    from tensorflow_datasets.proto import tf_example_pb2, tf_feature_pb2

    num_classes = {"cifar10": 10, "cifar100": 100}[name]
    version_dir = data_dir / name / version
    version_dir.mkdir(parents=True)
    features = {
        "id": tfds.features.Text(),
        "image": tfds.features.Image(shape=(32, 32, 3)),
        "label": tfds.features.ClassLabel(names=[f"class_{i:03d}" for i in range(num_classes)]),
    }
    if name == "cifar100":
        features["coarse_label"] = tfds.features.ClassLabel(
            names=[f"super_{i:02d}" for i in range(20)])
    features = tfds.features.FeaturesDict(features)
    features.save_config(str(version_dir))
    features.save_metadata(str(version_dir))

    def ints(v):
        return tf_feature_pb2.Feature(int64_list=tf_feature_pb2.Int64List(value=[int(v)]))

    def raw(v):
        return tf_feature_pb2.Feature(bytes_list=tf_feature_pb2.BytesList(value=[v]))

    info_splits = []
    for split, (images, labels) in splits.items():
        path = version_dir / f"{name}-{split}.array_record-00000-of-00001"
        writer = array_record_module.ArrayRecordWriter(str(path), "group_size:1")
        for i, (img, label) in enumerate(zip(images, labels, strict=True)):
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="PNG")
            feature = {"image": raw(buf.getvalue()), "label": ints(label),
                       "id": raw(f"{split}_{i:05d}".encode())}
            if name == "cifar100":
                feature["coarse_label"] = ints(label // 5)
            example = tf_example_pb2.Example(features=tf_feature_pb2.Features(feature=feature))
            writer.write(example.SerializeToString())
        writer.close()
        info_splits.append({
            "filepathTemplate": "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
            "name": split, "numBytes": str(path.stat().st_size),
            "shardLengths": [str(len(labels))]})
    info = {"fileFormat": "array_record", "name": name, "splits": info_splits,
            "moduleName": "tensorflow_datasets.image_classification.cifar", "version": version}
    (version_dir / "dataset_info.json").write_text(json.dumps(info, indent=2))
    return version_dir


def _random_split(rng, n, num_classes):
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    return images, np.arange(n) % num_classes


@pytest.fixture
def small(tmp_path):
    """A written cifar10 (30 train / 10 test) and cifar100 (200 / 100) in one data dir."""
    rng = np.random.default_rng(0)
    splits = {
        "cifar10": {"train": _random_split(rng, 30, 10), "test": _random_split(rng, 10, 10)},
        "cifar100": {"train": _random_split(rng, 200, 100), "test": _random_split(rng, 100, 100)},
    }
    data_dir = tmp_path / "tfds"
    for name, s in splits.items():
        write_tfds_dataset(data_dir, name, s)
    return data_dir, splits


def _no_reading(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("read the records again instead of using the cache")

    monkeypatch.setattr(tfds_source, "_open", fail)


# ---------------------------------------------------------------------------- real dirs


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_real_tfds_dirs_match_their_records(tmp_path, monkeypatch, name):
    shared = _shared(name)
    version_dir = shared / name / "3.0.2"
    before = _snapshot(shared)
    ds = data.load(name, data_dir=shared, cache_dir=tmp_path / "cache", val_fraction=0.1)
    n_train, n_test = REAL_SIZES[name]
    num_classes = {"cifar10": 10, "cifar100": 100}[name]
    assert len(ds.train) + len(ds.val) == n_train and len(ds.test) == n_test
    # stratified 10 %, at least one per class: 2 x 10 (cifar10), 1 x 100 (cifar100)
    assert len(ds.val) == {"cifar10": 20, "cifar100": 100}[name]
    assert ds.image_shape == (32, 32, 3) and ds.num_classes == num_classes
    chex.assert_type([ds.train.images, ds.train.labels, ds.test.images, ds.test.labels],
                     [np.uint8, np.int32, np.uint8, np.int32])
    labels_txt = (version_dir / "label.labels.txt").read_text().splitlines()
    assert ds.class_names == tuple(n for n in labels_txt if n)
    if name == "cifar10":
        assert ds.class_names[:3] == ("airplane", "automobile", "bird")

    train_images, train_labels = _read_direct(version_dir, name, "train")
    test_images, test_labels = _read_direct(version_dir, name, "test")
    np.testing.assert_array_equal(ds.test.images, test_images)  # test split: record order
    np.testing.assert_array_equal(ds.test.labels, test_labels)
    loaded = (np.concatenate([ds.train.images, ds.val.images]),
              np.concatenate([ds.train.labels, ds.val.labels]))
    assert _rows(*loaded) == _rows(train_images, train_labels)
    per_class = {"cifar10": (20, 10), "cifar100": (5, 2)}[name]
    np.testing.assert_array_equal(np.bincount(loaded[1], minlength=num_classes), per_class[0])
    np.testing.assert_array_equal(np.bincount(ds.test.labels, minlength=num_classes),
                                  per_class[1])
    assert ds.train.images.std() > 30  # real pixels, not a constant fill

    # The second load comes from the cache, unchanged.
    _no_reading(monkeypatch)
    again = data.load(name, data_dir=str(shared), cache_dir=tmp_path / "cache",
                      val_fraction=0.1)
    chex.assert_trees_all_equal((ds.train.images, ds.val.labels, ds.test.images),
                                (again.train.images, again.val.labels, again.test.images))
    assert again.class_names == ds.class_names
    assert _snapshot(shared) == before


def test_real_tfds_dirs_need_no_tensorflow(tmp_path):
    shared = _shared("cifar10")
    _shared("cifar100")
    before = _snapshot(shared)
    code = (
        "import sys; from jkt import data\n"
        "for name in ('cifar10', 'cifar100'):\n"
        "    data.load(name, data_dir=sys.argv[1], cache_dir=sys.argv[2])\n"
        "print('tensorflow' in sys.modules, 'tensorflow_datasets' in sys.modules)\n"
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-c", code, str(shared), str(tmp_path / "cache")]
    first = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.split() == ["False", "True"]  # read through tfds, without TensorFlow
    second = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.split() == ["False", "False"]  # from the cache: tfds not imported
    assert len(list((tmp_path / "cache").glob("tfds-cifar10*-*.npz"))) == 2
    assert _snapshot(shared) == before


@pytest.mark.slow
def test_distill_cli_on_real_cifar10(tmp_path, jax_cache_dir):
    shared = _shared("cifar10")
    before = _snapshot(shared)
    env = child_env()
    env.update(JKT_CACHE=str(tmp_path / "cache"), PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu",
               JAX_COMPILATION_CACHE_DIR=jax_cache_dir, TF_CPP_MIN_LOG_LEVEL="2")
    cmd = [sys.executable, "-X", "importtime", "-m", "experiments.distill",
           "--dataset", "cifar10", "--data-dir", str(shared), "--methods", "ce",
           "--n-per-class", "2", "--seeds", "0", "--width-multiplier", "0.0625",
           "--max-steps", "2", "--teacher-max-steps", "2", "--batch-size", "8",
           "--teacher-batch-size", "8", "--no-progress", "--workdir", str(tmp_path / "work")]
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "cifar10: 180 train / 20 val / 100 test, 10 classes" in out.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines()
                if line.startswith("import time:")}
    assert "tensorflow_datasets" in imported and "tensorflow" not in imported
    assert len(list((tmp_path / "cache").glob("tfds-cifar10-*.npz"))) == 1
    assert (tmp_path / "work" / "results.csv").is_file()
    assert _snapshot(shared) == before


# ---------------------------------------------------------------------------- written dirs


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_written_dataset_loads_exactly(small, tmp_path, name):
    data_dir, splits = small
    train, test, class_names = tfds_source.load_tfds(name, data_dir, cache_dir=tmp_path / "c")
    (train_images, train_labels), (test_images, test_labels) = (splits[name]["train"],
                                                                splits[name]["test"])
    chex.assert_trees_all_equal((train.images, train.labels, test.images, test.labels),
                                (train_images, train_labels.astype(np.int32), test_images,
                                 test_labels.astype(np.int32)))
    assert class_names[:2] == ("class_000", "class_001") and len(class_names) == len(
        set(train_labels))
    direct = _read_direct(data_dir / name / "3.0.2", name, "train")
    chex.assert_trees_all_equal((train.images, train.labels), (direct[0], direct[1]))


def test_written_dataset_through_load(small, tmp_path):
    """``data.load`` on a 12-example dataset: split sizes, classes, shapes, dtypes."""
    data_dir, _ = small
    (data_dir / "cifar10").rename(tmp_path / "cifar10-full")
    rng = np.random.default_rng(1)
    write_tfds_dataset(data_dir, "cifar10", {"train": _random_split(rng, 12, 10),
                                             "test": _random_split(rng, 12, 10)})
    ds = data.load("cifar10", data_dir=data_dir, val_fraction=0.25, cache_dir=tmp_path / "c")
    assert len(ds.train) + len(ds.val) == 12 and len(ds.test) == 12
    assert ds.num_classes == 10 and ds.image_shape == (32, 32, 3)
    chex.assert_type([ds.train.images, ds.train.labels], [np.uint8, np.int32])


def test_batched_reads(small, tmp_path, monkeypatch):
    """Records are fetched READ_CHUNK at a time (``__getitems__``), never one by one."""
    data_dir, splits = small
    calls = []
    orig_open = tfds_source._open

    def counting_open(*args):
        sources = orig_open(*args)
        for src in sources:
            def getitem(key):
                raise AssertionError("read one record at a time")

            def getitems(keys, _orig=src.__getitems__):
                calls.append(len(keys))
                return _orig(keys)

            src.__getitem__ = getitem
            src.__getitems__ = getitems
        return sources

    monkeypatch.setattr(tfds_source, "_open", counting_open)
    monkeypatch.setattr(tfds_source, "READ_CHUNK", 64)
    train, test, _ = tfds_source.load_tfds("cifar100", data_dir, cache_dir=tmp_path / "c")
    assert calls == [64, 64, 64, 8, 64, 36]
    np.testing.assert_array_equal(train.images, splits["cifar100"]["train"][0])


def _same(a, b):
    for x, y in zip(a[:2], b[:2], strict=True):
        np.testing.assert_array_equal(x.images, y.images)
        np.testing.assert_array_equal(x.labels, y.labels)
    assert a[2] == b[2]


def test_cache_hit_invalidation_and_damage(small, tmp_path, monkeypatch, caplog):
    data_dir, splits = small
    cache_dir = tmp_path / "cache"
    first = tfds_source.load_tfds("cifar10", data_dir, cache_dir=cache_dir)
    assert [p.name[:13] for p in cache_dir.iterdir()] == ["tfds-cifar10-"]  # no temp files

    with monkeypatch.context() as m:
        _no_reading(m)
        _same(tfds_source.load_tfds("cifar10", data_dir, cache_dir=cache_dir), first)
        # a changed file (here its mtime) is a different dataset: not the cached one
        (record,) = (data_dir / "cifar10" / "3.0.2").glob("cifar10-train.array_record-*")
        os.utime(record, ns=(time.time_ns(), time.time_ns() + 10**9))
        with pytest.raises(AssertionError, match="read the records again"):
            tfds_source.load_tfds("cifar10", data_dir, cache_dir=cache_dir)

    # damaged entries (a flipped byte, a truncated file): one warning line, then rebuilt
    tfds_source.load_tfds("cifar10", data_dir, cache_dir=cache_dir)
    entry = max(cache_dir.glob("tfds-cifar10-*.npz"), key=os.path.getmtime)
    good = entry.read_bytes()
    for damaged in (good[:4000] + bytes([good[4000] ^ 1]) + good[4001:], good[: len(good) // 2]):
        entry.write_bytes(damaged)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="jkt.data.cache"):
            _same(tfds_source.load_tfds("cifar10", data_dir, cache_dir=cache_dir), first)
        (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert "is damaged" in warning.getMessage() and "\n" not in warning.getMessage()
        assert str(entry) in warning.getMessage()
        assert entry.read_bytes() == good  # rebuilt
    with monkeypatch.context() as m:
        _no_reading(m)
        _same(tfds_source.load_tfds("cifar10", data_dir, cache_dir=cache_dir), first)


def test_unwritable_cache_only_warns(small, tmp_path, caplog):
    data_dir, splits = small
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with caplog.at_level(logging.WARNING, logger="jkt.data.cache"):
        train, _, _ = tfds_source.load_tfds("cifar10", data_dir, cache_dir=blocker / "cache")
    np.testing.assert_array_equal(train.images, splits["cifar10"]["train"][0])
    assert any("could not write cache" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------- bad inputs


def _one_line_error(exc_type, fn, *args, **kwargs) -> str:
    with pytest.raises(exc_type) as err:
        fn(*args, **kwargs)
    msg = str(err.value)
    assert "\n" not in msg, msg
    return msg


def test_wrong_dataset_name(tmp_path):
    msg = _one_line_error(ValueError, tfds_source.load_tfds, "cifar1000", tmp_path)
    assert "'cifar1000'" in msg and "cifar10" in msg and "cifar100" in msg
    msg = _one_line_error(ValueError, data.load, "cifar1000", data_dir=tmp_path)
    assert "valid names" in msg


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_tfds_offline_fails_fast_with_instructions(tmp_path, monkeypatch, name):
    _block_network(monkeypatch)
    start = time.perf_counter()
    with pytest.raises(data.DatasetNotFoundError) as err:
        data.load(name, data_dir=tmp_path)
    assert time.perf_counter() - start < 5
    assert isinstance(err.value, FileNotFoundError)
    msg = str(err.value)
    assert f"tfds build {name} --file_format=array_record" in msg
    assert str(tmp_path) in msg and "data_dir" in msg and "--data-dir" in msg
    assert f"python -m experiments.prepare_data {name}" in msg and "\n" not in msg
    assert "pip install tensorflow tensorflow-datasets array_record apache-beam mlcroissant" in msg


def test_tfds_default_dir_and_partial_preparation(tmp_path, monkeypatch):
    _block_network(monkeypatch)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    (tmp_path / "cifar100" / "3.0.2").mkdir(parents=True)
    (tmp_path / "cifar100" / "3.0.2" / "dataset_info.json").write_text("{}")
    (tmp_path / "cifar100" / "3.0.2" / "cifar100-train.tfrecord-00000-of-00001").write_text("")
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="rebuild with --file_format=array_record"):
        data.load("cifar100")
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize("missing", ["tensorflow_datasets", "array_record"])
def test_missing_reader_packages_are_named(small, tmp_path, monkeypatch, missing):
    data_dir, _ = small
    monkeypatch.setitem(sys.modules, missing, None)
    msg = _one_line_error(ImportError, data.load, "cifar10", data_dir=data_dir,
                          cache_dir=tmp_path / "c")
    assert "pip install tensorflow-datasets array_record" in msg


def test_damaged_dataset_info_names_the_file(small, tmp_path):
    data_dir, _ = small
    info = data_dir / "cifar10" / "3.0.2" / "dataset_info.json"
    info.write_text(info.read_text()[:50])
    msg = _one_line_error(ValueError, data.load, "cifar10", data_dir=data_dir,
                          cache_dir=tmp_path / "c")
    assert str(info) in msg and "damaged" in msg


def test_truncated_records_name_the_split(small, tmp_path):
    data_dir, _ = small
    (record,) = (data_dir / "cifar100" / "3.0.2").glob("cifar100-test.array_record-*")
    record.write_bytes(record.read_bytes()[: record.stat().st_size // 2])
    msg = _one_line_error(ValueError, data.load, "cifar100", data_dir=data_dir,
                          cache_dir=tmp_path / "c")
    assert "test split of cifar100" in msg and "cifar100-test.array_record" in msg
    assert "damaged or truncated" in msg
    assert not list((tmp_path / "c").glob("*.npz"))  # nothing cached from a bad read


def test_other_version_is_named(small, tmp_path):
    data_dir, _ = small
    (data_dir / "cifar10" / "3.0.2").rename(data_dir / "cifar10" / "3.0.1")
    msg = _one_line_error(data.DatasetNotFoundError, data.load, "cifar10", data_dir=data_dir,
                          cache_dir=tmp_path / "c")
    assert "found version(s) 3.0.1" in msg and "reads version 3.0.2" in msg


# ---------------------------------------------------------------------------- URIs


def _gs_as_local(bucket_dir: Path) -> dict:
    """``etils.epath.testing.mock_epath`` functions serving ``gs://bucket/...`` from a
    local folder; paths come back in ``gs://`` form, as a real backend returns them."""
    def local(p):
        p = os.fspath(p)
        if p.startswith(str(bucket_dir)):  # already local (a test's own delegation)
            return p
        assert p.startswith("gs://bucket"), p  # the URI arrived unmangled
        return str(bucket_dir) + p[len("gs://bucket"):]

    def back(p):
        return "gs://bucket" + os.fspath(p)[len(str(bucket_dir)):]

    def walk(orig, top, **kw):
        for root, dirs, files in orig(local(top), **kw):
            yield back(root), dirs, files

    return dict(
        exists=lambda orig, p: orig(local(p)), isdir=lambda orig, p: orig(local(p)),
        listdir=lambda orig, p: orig(local(p)), stat=lambda orig, p: orig(local(p)),
        open=lambda orig, p, mode: orig(local(p), mode),
        glob=lambda orig, p: [back(q) for q in orig(local(p))], walk=walk)


def test_gs_data_dir_reaches_tfds_unmangled(small, tmp_path, monkeypatch):
    from etils.epath import testing as epath_testing
    tfds = pytest.importorskip("tensorflow_datasets")

    data_dir, splits = small
    seen = []
    orig_source = tfds.data_source

    def data_source(name, *, data_dir, **kwargs):
        seen.append(data_dir)
        local = str(small[0]) + data_dir[len("gs://bucket/tfds"):]
        return orig_source(name, data_dir=local, **kwargs)

    monkeypatch.setattr(tfds, "data_source", data_source)
    with epath_testing.mock_epath(**_gs_as_local(data_dir.parent)):
        train, test, names = tfds_source.load_tfds("cifar10", "gs://bucket/tfds",
                                                   cache_dir=tmp_path / "c")
        assert seen == ["gs://bucket/tfds"]
        np.testing.assert_array_equal(train.images, splits["cifar10"]["train"][0])
        _no_reading(monkeypatch)  # same gs:// files: from the cache
        again = tfds_source.load_tfds("cifar10", "gs://bucket/tfds", cache_dir=tmp_path / "c")
    np.testing.assert_array_equal(again[1].images, test.images)


@pytest.mark.parametrize("kind", ["folder", "zip"])
def test_gs_image_folder_and_archive(tmp_path, kind):
    from etils.epath import testing as epath_testing

    bucket = tmp_path / "bucket"
    rng = np.random.default_rng(0)
    files = {}
    for c in ("cat", "dog"):
        for i in range(5):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, "PNG")
            files[f"{c}/{i}.png"] = buf.getvalue()
    if kind == "zip":
        import zipfile

        bucket.mkdir()
        with zipfile.ZipFile(bucket / "images.zip", "w") as zf:
            for n, b in files.items():
                zf.writestr(n, b)
        uri = "gs://bucket/images.zip"
    else:
        for n, b in files.items():
            (bucket / "images" / n).parent.mkdir(parents=True, exist_ok=True)
            (bucket / "images" / n).write_bytes(b)
        uri = "gs://bucket/images"
    with epath_testing.mock_epath(**_gs_as_local(bucket)):
        ds = data.load(f"folder:{uri}", image_size=8, cache_dir=tmp_path / "c")
    assert ds.class_names == ("cat", "dog")
    assert len(ds.train) + len(ds.val) + len(ds.test) == 10
    assert len(list((tmp_path / "c").glob("folder-images*-8px-*.npz"))) == 1


def test_gs_paths_without_backend_fail_in_one_line(tmp_path, monkeypatch):
    from etils.epath import testing as epath_testing

    def missing(orig, p):
        raise ImportError("Please install gcsfs to access Google Storage")

    with epath_testing.mock_epath(isdir=missing, exists=missing):
        msg = _one_line_error(ValueError, data.load, "cifar10", data_dir="gs://bucket/tfds")
        assert "gs://bucket/tfds/cifar10" in msg and "pip install gcsfs" in msg
        msg = _one_line_error(ValueError, data.load, "folder:gs://bucket/images.zip")
        assert "gs://bucket/images.zip" in msg and "pip install gcsfs" in msg
    monkeypatch.setenv("TFDS_DATA_DIR", "file:///data/tfds")
    msg = _one_line_error(ValueError, data.load, "cifar10")
    assert "unsupported storage scheme file://" in msg and "gs://" in msg


def test_uri_data_dir_is_not_mangled():
    assert str(paths.as_path("gs://bucket/tfds") / "cifar10") == "gs://bucket/tfds/cifar10"
    assert str(Path("gs://bucket/tfds")) == "gs:/bucket/tfds"  # why pathlib is not used
    assert str(paths.as_path("~/tfds")) == os.path.expanduser("~/tfds")


# ---------------------------------------------------------------------------- prepare_data


def test_prepare_data_arguments(capsys, monkeypatch):
    with pytest.raises(SystemExit) as err:
        prepare_data.parse_args(["imagenet"])
    assert err.value.code == 2 and "invalid choice" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        prepare_data.parse_args([])
    args = prepare_data.parse_args(["cifar100", "--data-dir", "gs://bucket/tfds"])
    assert (args.name, args.data_dir) == ("cifar100", "gs://bucket/tfds")
    assert prepare_data.parse_args(["cifar10"]).data_dir is None


def test_prepare_data_without_tensorflow_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # import tensorflow -> ImportError
    with pytest.raises(SystemExit) as err:
        prepare_data.main(["cifar10", "--data-dir", str(tmp_path)])
    msg = str(err.value.code)
    assert "\n" not in msg and msg.startswith("error: preparing cifar10 needs TensorFlow")
    assert msg.endswith("pip install tensorflow tensorflow-datasets array_record")
    assert list(tmp_path.iterdir()) == []


def test_prepare_data_runs_the_tfds_builder(monkeypatch, tmp_path, capsys):
    calls = []

    class Builder:
        def __init__(self, name, data_dir, file_format):
            calls.append((name, data_dir, file_format))
            self.data_dir = os.path.join(data_dir, name, "3.0.2")
            split = types.SimpleNamespace
            self.info = types.SimpleNamespace(
                splits={"train": split(num_examples=50000), "test": split(num_examples=10000)})

        def download_and_prepare(self):
            calls.append("download_and_prepare")

    fake_tfds = types.ModuleType("tensorflow_datasets")
    fake_tfds.builder = Builder
    for mod in ("tensorflow", "array_record"):
        monkeypatch.setitem(sys.modules, mod, types.ModuleType(mod))
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake_tfds)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "default"))
    version_dir = prepare_data.main(["cifar100"])
    assert calls == [("cifar100", str(tmp_path / "default"), "array_record"),
                     "download_and_prepare"]
    assert version_dir == str(tmp_path / "default" / "cifar100" / "3.0.2")
    out = capsys.readouterr().out
    assert "prepared cifar100 (50000 train, 10000 test)" in out
    assert f"--data-dir {tmp_path / 'default'}" in out and "DATA_DIR" in out
    assert str(tmp_path / "default" / "cifar100") in out


def _block_network(monkeypatch):
    import socket

    def refuse(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
