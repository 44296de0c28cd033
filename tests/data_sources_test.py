"""Tests for jkt.data sources: image folders/archives, MIT Indoor layout, digits.

All image data is generated here with PIL; nothing touches the network. The tfds source
is tested in ``data_tfds_test.py``.
"""

import io
import logging
import os
import subprocess
import sys
import tarfile
import warnings
import zipfile
from pathlib import Path

import chex
import numpy as np
import pytest
from PIL import Image

from jkt import data
from jkt.data import folder as folder_lib

SIZE = 8
CLASSES = ("cat", "ant", "bee")  # deliberately unsorted


def _png(cls_id: int, uid: int, size=(SIZE, SIZE), mode="RGB") -> bytes:
    """A flat image: red channel = class, green/blue = unique id; exact after PNG."""
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    arr[..., 0] = 40 * (cls_id + 1)
    arr[..., 1] = uid % 256
    arr[..., 2] = uid // 256
    img = Image.fromarray(arr)
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _jpeg_truncated() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8)).save(
        buf, format="JPEG"
    )
    return buf.getvalue()[: len(buf.getvalue()) // 2]


def _write(root: Path, files: dict[str, bytes]) -> Path:
    for name, content in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content)
    return root


def _class_files(prefix="", per_class=10, start_uid=0, corrupt=True):
    files, uid = {}, start_uid
    for c, name in enumerate(CLASSES):
        for i in range(per_class):
            files[f"{prefix}{name}/{i:03d}.png"] = _png(c, uid)
            uid += 1
    if corrupt:
        files[f"{prefix}{CLASSES[0]}/broken.jpg"] = b"this is not an image"
        files[f"{prefix}{CLASSES[1]}/notes.txt"] = b"ignored: not an image extension"
    return files


def _ids(split):
    img = split.images
    return set((img[:, 0, 0, 1].astype(int) + 256 * img[:, 0, 0, 2].astype(int)).tolist())


def _check_labels(ds):
    """Every image's red channel encodes the (original) class: labels must agree."""
    for split in (ds.train, ds.val, ds.test):
        names = [ds.class_names[label] for label in split.labels]
        reds = split.images[:, 0, 0, 0] // 40 - 1
        assert [CLASSES[r] for r in reds] == names


def _load_quiet(name, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = data.load(name, image_size=SIZE, **kw)
    return ds, [w for w in caught if "unreadable" in str(w.message)]


def test_folder_classes_only(tmp_path):
    root = _write(tmp_path / "imgs", _class_files())
    _write(root, {"ant/gray.png": _png(1, 500, mode="L"), "bee/big.png": _png(2, 501, (20, 12))})
    ds, warned = _load_quiet(f"folder:{root}", cache_dir=tmp_path / "cache")
    assert len(warned) == 1 and "skipped 1 unreadable" in str(warned[0].message)
    assert ds.class_names == ("ant", "bee", "cat")
    assert ds.image_shape == (SIZE, SIZE, 3) and ds.num_classes == 3
    assert len(ds.train) + len(ds.val) + len(ds.test) == 32
    np.testing.assert_array_equal(np.bincount(ds.test.labels), [1, 1, 1])  # 10% stratified
    assert not (_ids(ds.train) & _ids(ds.test)) and not (_ids(ds.val) & _ids(ds.test))
    assert not (_ids(ds.train) & _ids(ds.val))
    chex.assert_type([ds.train.images, ds.train.labels], [np.uint8, np.int32])
    mean, std = data.channel_stats(ds.train.images)
    assert ds.mean == mean and ds.std == std


def test_folder_train_test_layout_with_wrapper(tmp_path):
    files = _class_files("wrap/train/") | _class_files("wrap/test/", 2, 100, corrupt=False)
    root = _write(tmp_path / "tt", files)
    ds, _ = _load_quiet(f"folder:{root}", cache_dir=tmp_path / "c", val_fraction=0.2)
    assert len(ds.test) == 6 and _ids(ds.test) == set(range(100, 106))
    assert len(ds.train) + len(ds.val) == 30 and len(ds.val) == 6
    _check_labels(ds)


@pytest.mark.parametrize("kind", ["zip", "tar.xz", "tar.gz", "tar"])
def test_archives_match_folder(tmp_path, kind):
    files = _class_files("top/")
    root = _write(tmp_path / "src", files)
    archive = tmp_path / f"data.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(archive, "w") as zf:
            for name, content in files.items():
                zf.writestr(name, content)
    else:
        mode = {"tar.xz": "w:xz", "tar.gz": "w:gz", "tar": "w"}[kind]
        with tarfile.open(archive, mode) as tf:
            tf.add(root / "top", arcname="top")
    ds_dir, _ = _load_quiet(f"folder:{root}", cache_dir=tmp_path / "c1")
    ds_arc, warned = _load_quiet(f"folder:{archive}", cache_dir=tmp_path / "c2")
    assert len(warned) == 1
    assert ds_arc.class_names == ds_dir.class_names == ("ant", "bee", "cat")
    for a, b in [
        (ds_arc.train, ds_dir.train),
        (ds_arc.val, ds_dir.val),
        (ds_arc.test, ds_dir.test),
    ]:
        chex.assert_trees_all_equal((a.images, a.labels), (b.images, b.labels))
    _check_labels(ds_arc)


def _mit_files(prefix=""):
    files, train_list, test_list, uid = {}, [], [], 0
    for c, name in enumerate(CLASSES):
        for i in range(6):
            rel = f"{name}/img_{i}.jpg"
            buf = io.BytesIO()
            arr = np.full((SIZE, SIZE, 3), 40 * (c + 1), np.uint8)
            Image.fromarray(arr).save(buf, format="PNG")  # PNG bytes, .jpg name: PIL sniffs
            files[f"{prefix}Images/{rel}"] = buf.getvalue()
            if i < 3:
                train_list.append(rel)
            elif i < 5:
                test_list.append(rel)  # img_5 is in neither list: unused
            uid += 1
    return files, "\r\n".join(train_list) + "\r\n", "\n".join(test_list)


def test_mit_indoor_layout_inside_archive(tmp_path):
    files, train_txt, test_txt = _mit_files("indoor/")
    files["indoor/TrainImages.txt"] = train_txt.encode()
    files["indoor/TestImages.txt"] = test_txt.encode()
    files["indoor/Images/ant/corrupt.jpg"] = _jpeg_truncated()
    archive = tmp_path / "mit.tar"
    with tarfile.open(archive, "w") as tf:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tf.addfile(info, io.BytesIO(content))
    ds, warned = _load_quiet(f"folder:{archive}", cache_dir=tmp_path / "c", val_fraction=0.0)
    assert len(warned) == 1
    assert ds.class_names == ("ant", "bee", "cat")
    assert len(ds.train) == 9 and len(ds.test) == 6 and len(ds.val) == 0
    np.testing.assert_array_equal(np.bincount(ds.test.labels), [2, 2, 2])
    _check_labels(ds)


def test_mit_indoor_lists_beside_folder(tmp_path):
    files, train_txt, test_txt = _mit_files()
    root = _write(tmp_path / "indoorCVPR_09", files)
    (tmp_path / "TrainImages.txt").write_text(train_txt)
    (tmp_path / "TestImages.txt").write_text(test_txt)
    ds, _ = _load_quiet(f"folder:{root}", cache_dir=tmp_path / "c", val_fraction=0.0)
    assert len(ds.train) == 9 and len(ds.test) == 6


def test_folder_cache_hit_and_invalidation(tmp_path, monkeypatch):
    root = _write(tmp_path / "imgs", _class_files(corrupt=False))
    monkeypatch.setenv("JKT_CACHE", str(tmp_path / "envcache"))
    first, _ = _load_quiet(f"folder:{root}")
    cached = list((tmp_path / "envcache").glob("*.npz"))
    assert len(cached) == 1

    def fail(*args, **kwargs):
        raise AssertionError("decoded again instead of using the cache")

    monkeypatch.setattr(folder_lib, "_read_all", fail)
    second, _ = _load_quiet(f"folder:{root}")
    chex.assert_trees_all_equal(
        (first.train.images, first.test.labels), (second.train.images, second.test.labels)
    )
    assert first.class_names == second.class_names
    # a new file changes the fingerprint: the cache is not used
    _write(root, {"ant/extra.png": _png(1, 999)})
    with pytest.raises(AssertionError, match="decoded again"):
        data.load(f"folder:{root}", image_size=SIZE)
    # a different image size is a different cache entry too
    with pytest.raises(AssertionError, match="decoded again"):
        data.load(f"folder:{root}", image_size=SIZE + 1)


def test_folder_damaged_cache_warns_and_rebuilds(tmp_path, caplog):
    root = _write(tmp_path / "imgs", _class_files(corrupt=False))
    first, _ = _load_quiet(f"folder:{root}", cache_dir=tmp_path / "c")
    (entry,) = (tmp_path / "c").glob("*.npz")
    good = entry.read_bytes()
    for damaged in (good[:-100], good[:500] + bytes([good[500] ^ 0xFF]) + good[501:]):
        entry.write_bytes(damaged)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="jkt.data.cache"):
            again, _ = _load_quiet(f"folder:{root}", cache_dir=tmp_path / "c")
        chex.assert_trees_all_equal((first.train.images, first.test.labels),
                                    (again.train.images, again.test.labels))
        (warning,) = caplog.records
        assert "is damaged" in warning.getMessage() and "\n" not in warning.getMessage()
        assert entry.read_bytes() == good


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        data.load(f"folder:{tmp_path / 'does-not-exist'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no labelled images"):
        data.load(f"folder:{tmp_path / 'empty'}", cache_dir=tmp_path / "c")


def test_unknown_source_lists_valid_names():
    with pytest.raises(ValueError, match="cifar10.*cifar100.*digits.*folder:PATH"):
        data.load("imagenet")


def test_digits():
    ds = data.load("digits", val_fraction=0.1, test_fraction=0.1, seed=0)
    assert len(ds.train) + len(ds.val) + len(ds.test) == 1797
    assert ds.num_classes == 10 and ds.image_shape == (32, 32, 3)
    chex.assert_type(ds.train.images, np.uint8)
    assert ds.train.images.max() > 200
    np.testing.assert_array_equal(ds.train.images[..., 0], ds.train.images[..., 2])
    assert abs(len(ds.test) - 180) <= 5
    again = data.load("digits", seed=0)
    chex.assert_trees_all_equal(ds.val.labels, again.val.labels)
    small = data.load("digits", image_size=8)
    assert small.image_shape == (8, 8, 3)


def test_import_does_not_load_tfds_or_sklearn():
    code = (
        "import sys, jkt.data; "
        "bad = [m for m in ('tensorflow_datasets', 'tensorflow', 'sklearn') if m in sys.modules]; "
        "sys.exit(1 if bad else 0)"
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=Path(__file__).parents[1])
    assert result.returncode == 0


@pytest.mark.parametrize("suffix", [".tar.xz", ".zip"])
def test_truncated_archive_is_one_line(tmp_path, monkeypatch, suffix):
    import shutil

    monkeypatch.setenv("JKT_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "imgs"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(root / c / f"{i}.png")
    fmt = "xztar" if suffix == ".tar.xz" else "zip"
    archive = Path(shutil.make_archive(str(tmp_path / "full"), fmt, root))
    truncated = tmp_path / f"truncated{suffix}"
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(ValueError) as e:
        data.load(f"folder:{truncated}")
    assert "is not a readable archive" in str(e.value) and str(truncated) in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("extra, words", [
    ({"test/dog/0.png": _png(0, 900)}, "only in test: dog"),
    ({"test/Bee/0.png": _png(1, 901)}, "Bee differ from a train class only in case"),
])
def test_train_and_test_with_other_classes_are_refused(tmp_path, extra, words):
    """A test class the train split lacks (or that differs only in case) would be scored
    as a class the model never saw: refused in one line naming it, for a folder and a zip
    of it."""
    import shutil

    files = _class_files("train/", corrupt=False) | _class_files("test/", 2, 100, corrupt=False)
    root = _write(tmp_path / "tt", files | extra)
    if "Bee" in words:
        for f in (root / "test" / "bee").iterdir():
            f.rename(root / "test" / "Bee" / f.name)
        (root / "test" / "bee").rmdir()
    archive = shutil.make_archive(str(tmp_path / "tt"), "zip", root)
    for source in (root, archive):
        with pytest.raises(ValueError) as e:
            data.load(f"folder:{source}", image_size=SIZE, cache_dir=tmp_path / "c")
        message = str(e.value)
        assert "\n" not in message and "different classes" in message, message
        assert words in message, message


@pytest.mark.parametrize("kind", ["folder", "zip", "tar.xz"])
def test_files_over_the_size_bound_are_refused_before_they_are_read(tmp_path, monkeypatch,
                                                                    kind):
    """No file is read whole beyond ``MAX_FILE_BYTES`` (a zip bomb, a stray video): the
    size stored in the folder or archive is checked first, one line names the file."""
    import shutil

    files = _class_files(corrupt=False)
    files["cat/huge.png"] = _png(2, 999, (256, 256)) + bytes(5000)
    root = _write(tmp_path / "imgs", files)
    source = root if kind == "folder" else shutil.make_archive(
        str(tmp_path / "imgs"), "zip" if kind == "zip" else "xztar", root)
    monkeypatch.setattr(folder_lib, "MAX_FILE_BYTES", 4096)
    read = []
    real_read = zipfile.ZipFile.read
    monkeypatch.setattr(zipfile.ZipFile, "read",
                        lambda self, info, *a: read.append(getattr(info, "filename", info))
                        or real_read(self, info, *a))
    with pytest.raises(ValueError) as e:
        data.load(f"folder:{source}", image_size=SIZE, cache_dir=tmp_path / "c")
    message = str(e.value)
    assert "\n" not in message and "cat/huge.png" in message, message
    assert "MiB uncompressed, more than an image file may be" in message
    assert not any(name.endswith("huge.png") for name in read)
