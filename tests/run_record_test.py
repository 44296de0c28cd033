"""A run's record ties it to what it learned from: the fields it depends on and the content
of its data and teacher. A resumed or reused run whose inputs changed is refused with one
line; a refused launch leaves the work directory's ``config.json`` as it was."""

import json
import shutil

import jax
import numpy as np
import pytest
from distill_test import _usage_error
from PIL import Image

from experiments import distill
from jkt import checkpoint, workdir
from jkt.data.fingerprint import dataset_fingerprint
from jkt.data.types import Dataset, Split
from jkt.grids import record
from jkt.train.methods import METHODS, method_objective


def _dataset(seed=0, n=6):
    rng = np.random.default_rng(seed)
    split = lambda k: Split(rng.integers(0, 256, (k, 4, 4, 3), np.uint8),  # noqa: E731
                            np.arange(k) % 2)
    return Dataset("toy", split(n), split(0), split(4), ("a", "b"), (0.5,) * 3, (0.2,) * 3)


def test_dataset_fingerprint_follows_content_not_identity():
    ds = _dataset()
    same = Dataset(ds.name, Split(ds.train.images.copy(), ds.train.labels.copy()), ds.val,
                   ds.test, ds.class_names, ds.mean, ds.std)
    assert dataset_fingerprint(ds) == dataset_fingerprint(same)
    one_pixel = ds.train.images.copy()
    one_pixel[2, 1, 1, 0] ^= 1
    swapped = ds.train.labels.copy()[::-1]
    changed = [
        Dataset(ds.name, Split(one_pixel, ds.train.labels), ds.val, ds.test, ds.class_names,
                ds.mean, ds.std),
        Dataset(ds.name, Split(ds.train.images, swapped), ds.val, ds.test, ds.class_names,
                ds.mean, ds.std),
        Dataset(ds.name, ds.train.take(np.arange(5)), ds.val, ds.test, ds.class_names,
                ds.mean, ds.std),
        Dataset(ds.name, ds.train, ds.val, ds.test, ("b", "a"), ds.mean, ds.std),
    ]
    prints = {dataset_fingerprint(d) for d in changed}
    assert len(prints) == len(changed) and dataset_fingerprint(ds) not in prints


def test_unused_fields_are_what_the_objective_does_not_read():
    assert set(record.unused_fields(METHODS["ce"])) >= {
        "train.objective.estimator", "train.objective.normalize", "teacher", "inputs.teacher"}
    used = record.unused_fields(method_objective("ce+jac", estimator="top"))
    assert "train.objective.estimator" not in used and "teacher" not in used
    assert "inputs.teacher" not in record.unused_fields(METHODS["act"])


def test_check_record_compares_inputs_only_when_recorded(tmp_path, monkeypatch):
    path = tmp_path / "run" / "config.json"
    old = {"train": {"lr": 1}}
    workdir.check_record(path, old, what="run r")
    # A record written before fingerprints existed: compared without them.
    workdir.check_record(path, {**old, "inputs": {"data": "a" * 64}}, what="run r",
                         optional=("inputs",))
    path.write_text(json.dumps({**old, "inputs": {"data": "a" * 64}}))
    with pytest.raises(workdir.SettingsChangedError) as e:
        workdir.check_record(path, {**old, "inputs": {"data": "b" * 64}}, what="run r",
                             optional=("inputs",))
    assert "inputs.data ('aaaaaaaaaaaa...' -> 'bbbbbbbbbbbb...')" in str(e.value)
    # A field added to configs later reads, in records without it, as its old behaviour.
    monkeypatch.setitem(workdir.RECORD_ADDED, "optim.batching", "cycle")
    path.write_text(json.dumps({"train": {"optim": {"lr": 1}}}))
    workdir.check_record(path, {"train": {"optim": {"lr": 1, "batching": "cycle"}}}, what="r")
    with pytest.raises(workdir.SettingsChangedError, match="batching .'cycle' -> 'epoch'."):
        workdir.check_record(path, {"train": {"optim": {"lr": 1, "batching": "epoch"}}},
                             what="r")
    path.write_text("[1, 2]")
    with pytest.raises(workdir.SettingsChangedError, match="not a run record"):
        workdir.check_record(path, old, what="run r")


# ---------------------------------------------------------------------------------------
# End to end, in process, on a folder of images.


def _folder(root, n=8):
    rng = np.random.default_rng(0)
    colours = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}
    for name, c in colours.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            img = np.clip(np.array(c) + rng.normal(0, 40, (32, 32, 3)), 0, 255)
            Image.fromarray(img.astype(np.uint8)).save(root / name / f"{i}.png")
    return root


def _argv(folder, work, *extra):
    return ["--dataset", f"folder:{folder}", "--workdir", str(work), "--image-size", "32",
            "--methods", "ce,ce+jac", "--n-per-class", "1", "--seeds", "0",
            "--width-multiplier", "0.0625", "--max-steps", "2", "--teacher-max-steps", "2",
            "--batch-size", "8", "--teacher-batch-size", "8", "--val-fraction", "0.2",
            "--no-progress", *extra]


@pytest.mark.slow
def test_changed_teacher_or_data_is_refused_and_unused_fields_are_not(tmp_path, capsys,
                                                                      monkeypatch):
    monkeypatch.setenv("JKT_CACHE", str(tmp_path / "cache"))
    folder = _folder(tmp_path / "imgs")
    work = tmp_path / "w"
    rows = distill.main(_argv(folder, work))
    assert [r["method"] for r in rows] == ["ce", "ce+jac"]
    launch = (work / "config.json").read_text()
    stored = json.loads((work / "runs" / "ce+jac" / "n1_seed0" / "config.json").read_text())
    assert set(stored["inputs"]) == {"data", "teacher"}

    # Same meta, other weights: a teacher the ce+jac run did not learn from.
    teacher = checkpoint.restore_teacher(work / "teacher" / "artifact")
    other = jax.tree.map(lambda x: x * 1.01, teacher.variables)
    checkpoint.save_teacher(tmp_path / "other", other, teacher.meta)
    line = _usage_error(_argv(folder, work, "--teacher", str(tmp_path / "other")), capsys)
    assert "run ce+jac/n1_seed0" in line and "inputs.teacher" in line
    assert (work / "config.json").read_text() == launch  # the refused launch left no trace
    # The ce row does not learn from the teacher: reused with the other one.
    again = distill.main(_argv(folder, work, "--teacher", str(tmp_path / "other"),
                               "--methods", "ce"))
    assert again[0]["test_accuracy"] == rows[0]["test_accuracy"] and again[0]["skipped"]

    # A field the ce row does not depend on changes: it is reused; the ce+jac row is not.
    again = distill.main(_argv(folder, work, "--estimator", "top", "--methods", "ce"))
    assert again[0]["skipped"]
    line = _usage_error(_argv(folder, work, "--estimator", "top"), capsys)
    assert "run ce+jac/n1_seed0" in line and "train.objective.estimator" in line

    # The image folder changes (two classes swapped, an image gone): every run is refused.
    shutil.move(folder / "red", folder / "tmp")
    shutil.move(folder / "green", folder / "red")
    shutil.move(folder / "tmp", folder / "green")
    (folder / "blue" / "3.png").unlink()
    launch = (work / "config.json").read_text()
    line = _usage_error(_argv(folder, work, "--methods", "ce"), capsys)
    assert "inputs.data" in line and ("the teacher" in line or "run ce/n1_seed0" in line)
    assert (work / "config.json").read_text() == launch


def test_teacher_from_another_dataset_is_used_with_a_note(tmp_path, capsys):
    from jkt import models
    from jkt.grids.validate import check_teacher_artifact
    from jkt.models.teacher import TeacherMeta

    model = models.create("vgg4", 2, width_multiplier=0.0625)
    variables = models.abstract_variables(model, (32, 32, 3))
    variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), variables)
    base = dict(arch="vgg4", num_classes=2, input_size=(32, 32, 3), mean=(0.5,) * 3,
                std=(0.2,) * 3, model_options={"width_multiplier": 0.0625})
    ds = _dataset()  # "toy", classes a, b
    for name, meta, note in [
        ("same", TeacherMeta(dataset="toy", extra={"class_names": ["a", "b"]}, **base), None),
        ("other_names", TeacherMeta(dataset="toy", extra={"class_names": ["cat", "dog"]},
                                    **base), "trained on classes cat, dog"),
        ("other_dataset", TeacherMeta(dataset="cifar10", **base), "trained on 'cifar10'"),
    ]:
        path = checkpoint.save_teacher(tmp_path / name, variables, meta)
        check_teacher_artifact(path, "vgg4", ds)
        out = capsys.readouterr().out.strip()
        if note is None:
            assert out == ""
        else:
            assert out.startswith("note:") and note in out and str(path) in out, out
