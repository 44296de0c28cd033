"""The paper presets run the paper's protocol: data splits (subsets from the official
train split, validation from the images not in them, "full" = the whole split), the
augmentation switch, label-free rows that compute no function of the labels, and Table
3's Jacobian row as app. 10.2's attention-map Jacobian at feature level 1."""

import dataclasses
import hashlib
import types
from pathlib import Path

import chex
import jax
import numpy as np
import pytest
from PIL import Image
from train_fixtures import (  # noqa: F401  (fixtures)
    ADAM,
    BATCH,
    FAST,
    IMAGE_SHAPE,
    host,
    make_split,
    one_line,
    one_run_step,
    split_fixture,
    teacher_fixture,
    tiny,
)

from experiments.configs import distill as distill_configs
from experiments.configs import robustness as robustness_configs
from experiments.configs import transfer as transfer_configs
from jkt import data, models, parallel
from jkt.data import decode as decode_lib
from jkt.data import transforms
from jkt.data.batches import make_batch
from jkt.data.types import DataConfig
from jkt.grids import distill as distill_grid
from jkt.grids import transfer as transfer_grid
from jkt.models.taps import auto_pairs
from jkt.models.teacher import TeacherMeta
from jkt.train import RunResult, TrainConfig
from jkt.train.state import create_train_state

ROOT = Path(__file__).resolve().parents[1]
SHARED_TFDS = ROOT.parent / "shared" / "data" / "tfds"


def _digests(split) -> set[bytes]:
    return {hashlib.sha1(img.tobytes()).digest() for img in split.images}


# ---------------------------------------------------------------------------------------
# Data: subsets, validation from unused images, the whole split for "full".


def _dataset(n_train=60, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n_train, 8, 8, 3), dtype=np.uint8)
    labels = np.arange(n_train) % classes
    train = data.Split(images, labels)
    test = data.Split(images[:classes], np.arange(classes))
    return data.Dataset("toy", train, train.take(np.zeros(0, np.int64)), test,
                        tuple(map(str, range(classes))), (0.5,) * 3, (0.25,) * 3)


@pytest.mark.parametrize("n", [1, 5, 19])
def test_unused_validation_is_disjoint_from_the_subset_and_sized_like_held_out(n):
    ds = _dataset()  # 20 images per class
    cfg = DataConfig("toy", validation="unused", val_fraction=0.1)
    train, val = data.train_and_val(ds, n, 3, cfg)
    chex.assert_shape(train.images, (3 * n, 8, 8, 3))
    assert not _digests(train) & _digests(val)
    assert _digests(val) <= _digests(ds.train)
    # 10 % of each class's 20 images (2), or all that the subset left (n = 19: 1).
    np.testing.assert_array_equal(np.bincount(val.labels, minlength=3), [min(2, 20 - n)] * 3)
    # The same subset as held-out validation would train on, from the whole split.
    same = data.subset_per_class(ds.train, n, 3, num_classes=3)
    np.testing.assert_array_equal(train.images, same.images)
    # Deterministic in the seed, different for another seed.
    again = data.train_and_val(ds, n, 3, cfg)[1]
    np.testing.assert_array_equal(val.images, again.images)


def test_full_runs_train_on_the_whole_split_without_validation():
    ds = _dataset()
    for policy in ("unused", "none"):
        train, val = data.train_and_val(ds, "full", 0, DataConfig("toy", validation=policy))
        assert train is ds.train and len(val) == 0
    train, val = data.train_and_val(ds, 5, 0, DataConfig("toy", validation="none"))
    assert len(train) == 15 and len(val) == 0


def test_held_out_validation_is_unchanged():
    ds = _dataset()
    held = dataclasses.replace(ds, val=ds.train.take(np.arange(6)))
    train, val = data.train_and_val(held, 2, 0, DataConfig("toy"))
    assert val is held.val
    np.testing.assert_array_equal(
        train.images, data.subset_per_class(ds.train, 2, 0, num_classes=3).images)


def _shared_cifar100() -> str:
    if not (SHARED_TFDS / "cifar100").is_dir():
        pytest.skip(f"no real tfds directory {SHARED_TFDS / 'cifar100'} (the read-only "
                    "shared/ copy beside the repository)")
    return str(SHARED_TFDS)


def test_real_cifar100_full_is_the_official_train_split_and_subsets_validate_elsewhere(
        tmp_path):
    """The tfds-built CIFAR-100 directory (500 train records, labels = index mod 100):
    with the paper presets' ``validation="unused"`` every record trains the "full" run
    and the teacher, and a subset's validation images are train records not in it."""
    data_dir = _shared_cifar100()
    cfg = DataConfig("cifar100", data_dir=data_dir, validation="unused", val_fraction=0.4,
                     cache_dir=str(tmp_path / "cache"))
    ds = data.load_config(cfg)
    held = data.load("cifar100", data_dir=data_dir, cache_dir=tmp_path / "cache")
    assert len(ds.train) == 500 and len(ds.val) == 0 and len(ds.test) == 200
    assert len(held.train) + len(held.val) == 500 and len(held.val) > 0
    assert _digests(ds.train) == _digests(held.train) | _digests(held.val)
    full, no_val = data.train_and_val(ds, "full", 0, cfg)
    assert full is ds.train and len(no_val) == 0
    for n, per_class in ((1, 2), (4, 1)):  # 5 per class: 40 % is 2, or the 1 left
        train, val = data.train_and_val(ds, n, 1, cfg)
        assert len(train) == 100 * n and len(val) == 100 * per_class
        assert not _digests(train) & _digests(val)
        assert _digests(val) <= _digests(ds.train)
        np.testing.assert_array_equal(np.bincount(val.labels, minlength=100), per_class)


def test_distill_grid_gives_each_run_its_subset_and_unused_validation(tmp_path, monkeypatch):
    """The grid's wiring, without training: what each fused call receives."""
    ds = _dataset()
    mesh = parallel.make_mesh(jax.devices()[:1])
    monkeypatch.setattr(distill_grid, "start",
                        lambda cfg, mesh_: (mesh, Path(cfg.workdir), ds))
    meta = TeacherMeta(arch="vgg9", num_classes=3, input_size=(32, 32, 3), mean=(0.5,) * 3,
                       std=(0.2,) * 3, dataset="toy", extra={"test_accuracy": 0.5})
    monkeypatch.setattr(distill_grid, "load_teacher", lambda *a: types.SimpleNamespace(
        meta=meta, variables={"params": {"w": np.zeros(2, np.float32)}}))
    seen = []

    def fake_train(cfgs, train, evals, **kw):
        seen.append((train, evals["val"], [c.augment for c in cfgs]))
        return [RunResult({"test": 0.5, **({"val": 0.5} if len(evals["val"]) else {})},
                          {}, 1, 0.0) for _ in cfgs]

    monkeypatch.setattr(distill_grid, "train_and_evaluate", fake_train)
    cfg = dataclasses.replace(
        distill_configs.get_config("paper"), workdir=str(tmp_path / "w"),
        data=DataConfig("toy", validation="unused", augment="none"), methods=("ce",),
        n_per_class=(2, "full"), seeds=(0,), progress=False)
    rows = distill_grid.run(cfg)
    (sub, sub_val, aug), (full, full_val, _) = seen
    assert len(sub) == 6 and not _digests(sub) & _digests(sub_val) and len(sub_val) == 6
    assert full is ds.train and len(full_val) == 0
    assert aug == ["none"]
    assert rows[1]["val_accuracy"] is None


def test_paper_presets_declare_the_papers_data_and_no_flips_on_digits():
    paper = distill_configs.get_config("paper").data
    assert (paper.name, paper.validation, paper.augment) == ("cifar100", "unused", "none")
    assert robustness_configs.get_config("paper").data.validation == "none"
    mit = transfer_configs.get_config("mit").data
    assert (mit.validation, mit.augment, mit.resize, mit.image_size) == (
        "unused", "none", "crop", 224)
    for module in (distill_configs, robustness_configs, transfer_configs):
        quick = module.get_config("quick")
        assert quick.data.name == "digits" and quick.data.augment == "crop"
    for module, name in ((distill_configs, "paper"), (robustness_configs, "paper"),
                         (transfer_configs, "mit")):
        assert module.get_config(name).compare_to_paper
        assert not module.get_config("quick").compare_to_paper


# ---------------------------------------------------------------------------------------
# Augmentation and resizing.


def test_crop_never_flips_and_none_is_the_identity():
    x = np.tile(np.arange(16, dtype=np.uint8)[None, None, :, None], (64, 16, 1, 3))
    for i in range(8):
        y = np.asarray(transforms.augment_named(jax.random.key(i), x, "crop"))
        # A horizontal translation of an increasing ramp stays non-decreasing (a flip
        # would make it decrease) apart from the zero padding at the edges.
        inner = y[:, 4:12, 4:12, 0].astype(int)
        assert (np.diff(inner, axis=-1) >= 0).all()
    np.testing.assert_array_equal(transforms.augment_named(jax.random.key(0), x, "none"), x)
    assert TrainConfig(augment=True).augment == "crop+flip"
    assert TrainConfig(augment=False).augment == "none"
    with pytest.raises(ValueError) as e:
        TrainConfig(augment="flip")
    assert "unknown augmentation 'flip'" in one_line(e)
    with pytest.raises(ValueError) as e:
        DataConfig(augment="rotate")
    assert "data.augment must be one of none, crop, crop+flip" in one_line(e)


def test_crop_resize_keeps_the_aspect_ratio():
    import io

    img = np.zeros((40, 80, 3), np.uint8)
    img[:, 20:60] = 255  # the central square is white, the sides black
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    cropped = decode_lib.decode(buf.getvalue(), 16, "crop")
    stretched = decode_lib.decode(buf.getvalue(), 16, "stretch")
    chex.assert_shape([cropped, stretched], (16, 16, 3))
    # Only the white centre is left (the filter's support reaches one pixel past it).
    assert cropped[:, 1:-1].min() >= 250 and cropped.min() >= 200
    assert stretched[:, 0].max() <= 5 and stretched[:, 8].min() >= 250


# ---------------------------------------------------------------------------------------
# Label-free rows.


def test_label_free_rows_compute_no_function_of_the_labels(split, teacher):
    """Change every label: the act and act+jac rows' losses and updates stay the same;
    a row with cross-entropy (and the true-label Jacobian) changes."""
    cfg = distill_configs.get_config("paper")
    objectives = distill_grid.objectives(cfg)
    assert objectives["act+jac"].estimator == "top"
    assert objectives["ce+act+jac"].estimator == "label"
    mesh = parallel.make_mesh(jax.devices()[:1])
    model = tiny()
    state = create_train_state(model, ADAM, jax.random.key(0), IMAGE_SHAPE, mesh)
    batch = make_batch(split, np.arange(BATCH), mesh)
    other = dict(batch, label=(batch["label"] + 1) % 4)
    t_model, t_vars = teacher
    for name in ("act", "act+jac", "ce+act+jac"):
        step = jax.jit(one_run_step(model, objectives[name], augment=False,
                                    teacher_model=t_model), compiler_options=FAST)
        (s1, m1), (s2, m2) = host(step(state, batch, t_vars)), host(step(state, other, t_vars))
        losses = {k: v for k, v in m1.items() if k not in ("accuracy", "agreement")}
        if name == "ce+act+jac":
            assert not np.allclose(m1["jac"], m2["jac"])
            continue
        chex.assert_trees_all_equal(losses, {k: m2[k] for k in losses})
        chex.assert_trees_all_equal(s1.params, s2.params)
    with pytest.raises(ValueError) as e:
        dataclasses.replace(cfg, label_free_estimator="bogus")
    assert "unknown label_free_estimator 'bogus'" in one_line(e)


# ---------------------------------------------------------------------------------------
# Table 3's Jacobian row and Table 4's readings.


def _transfer_plan(**overrides):
    cfg = dataclasses.replace(transfer_configs.get_config("mit"), **overrides)
    student = models.create("vgg9", 67, source_classes=1000, width_multiplier=0.125)
    teacher = models.create("resnet34", 1000, width_multiplier=0.125,
                            stage_sizes=(1, 1, 1, 1))
    shape = (224, 224, 3)
    pairs = auto_pairs(models.feature_shapes(student, shape),
                       models.feature_shapes(teacher, shape))
    return transfer_grid.plan(cfg, student, teacher, shape), pairs


def test_table3_jacobian_row_is_the_attention_map_jacobian_at_feature_level_1():
    runs, pairs = _transfer_plan(n_per_class=(10,), seeds=(0,))
    assert pairs[0] == ("pool2", "stage1")  # after the 2nd max-pool / 1st residual block
    o = next(r.objective for r in runs if r.method == "ce+act+jac")
    assert (o.ce, o.act, o.jac, o.att, o.att_jac) == (10, 10, 0, 0, 10)
    assert o.att_jac_pair == pairs[0] and o.pool_fraction == 0.2
    runs, _ = _transfer_plan(n_per_class=(10,), seeds=(0,), jacobian_row="output")
    o = next(r.objective for r in runs if r.method == "ce+act+jac")
    assert (o.jac, o.att_jac, o.estimator) == (10, 0, "top")


def test_table4_readings():
    runs, pairs = _transfer_plan(methods=(), depth_pairs=("auto",), seeds=(0,))
    depth = [r.objective for r in runs if r.kind == "depth"]
    assert [o.att_jac_pair for o in depth] == list(pairs)
    assert all(o.att_pairs == tuple(pairs) for o in depth)  # attention everywhere
    runs, _ = _transfer_plan(methods=(), depth_pairs=("auto",), seeds=(0,),
                             depth_attention="same_pair")
    depth = [r.objective for r in runs if r.kind == "depth"]
    assert all(o.att_pairs == (o.att_jac_pair,) for o in depth)
