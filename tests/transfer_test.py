"""Tests of ``python -m experiments.transfer`` (Tables 3-5) on generated images.

The end-to-end grid runs in-process (8 fake CPU devices, batch 8) with 1/16-width
networks, one block per ResNet stage and 3 steps per run.
"""

import csv

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from train_fixtures import random_variables

from experiments import transfer as transfer_cli
from jkt import checkpoint, losses, models, parallel
from jkt.grids import transfer
from jkt.train import TrainConfig, compose_losses
from jkt.train.loop import final_variables
from jkt.train.methods import TRANSFER_LABELS, TRANSFER_METHODS, transfer_objective

TINY_T = {"small_stem": True, "stage_sizes": (1, 1, 1, 1), "width_multiplier": 1 / 16}
TINY_S = {"width_multiplier": 1 / 16}
SOURCE, TARGET = ("red", "green", "blue"), ("cyan", "magenta")


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """5 classes × 10 images of 32×32 class-coloured noise (learnable)."""
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    colours = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200),
               "cyan": (30, 200, 200), "magenta": (200, 30, 200)}
    for name, colour in colours.items():
        (root / name).mkdir()
        for i in range(10):
            img = np.clip(np.array(colour) + rng.normal(0, 40, (32, 32, 3)), 0, 255)
            Image.fromarray(img.astype(np.uint8)).save(root / name / f"{i}.png")
    return root


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    """Decoded-image cache in tmp; a persistent XLA cache so that each run's identical init
    and eval programs compile once (as ``jkt.workdir.setup_jax`` does for the CLI)."""
    monkeypatch.setenv("JKT_CACHE", str(tmp_path_factory.getbasetemp() / "jkt_cache"))
    old = {k: getattr(jax.config, k) for k in ("jax_compilation_cache_dir",
                                               "jax_persistent_cache_min_compile_time_secs")}
    jax.config.update("jax_compilation_cache_dir",
                      old["jax_compilation_cache_dir"]
                      or str(tmp_path_factory.getbasetemp() / "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    yield
    for k, v in old.items():
        jax.config.update(k, v)


def _argv(folder, workdir, *extra):
    return ["--dataset", f"folder:{folder}", "--source-classes", ",".join(SOURCE),
            "--target-classes", ",".join(TARGET), "--workdir", str(workdir),
            "--n-per-class", "2", "--seeds", "0", "--width-multiplier", "0.0625",
            "--teacher-stage-sizes", "1,1,1,1", "--max-steps", "3", "--teacher-max-steps", "3",
            "--batch-size", "8", "--teacher-batch-size", "8", "--log-every", "1",
            "--val-fraction", "0.2", "--no-progress", *extra]


def _csv(path):
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_grid_end_to_end_with_ablations_and_oracle(image_folder, tmp_path):
    # The CLI's parse, then the grid on one device (8 fake devices triple compile times).
    work = tmp_path / "w"
    cfg = transfer_cli.parse_config(_argv(
        image_folder, work, "--depth-pairs", "stage3:pool2", "--pool-windows", "s/5",
        "--ablation-n", "2"))
    transfer.run(cfg, mesh=parallel.make_mesh(jax.devices()[:1]))
    for stem in ("transfer", "ablation_depth", "ablation_pool"):
        assert (work / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (work / f"{stem}.md").read_text().count("**") >= 2
    md = (work / "transfer.md").read_text()
    assert "analogue" in md
    for label in TRANSFER_LABELS.values():
        assert label in md

    rows = {r["method"]: r for r in _csv(work / "transfer.csv")}
    assert set(rows) == set(TRANSFER_METHODS)
    for r in rows.values():
        assert 0.0 <= float(r["test_accuracy"]) <= 1.0 and int(r["steps"]) == 3
    # CE-only runs match nothing; the others match the 3-class teacher with the source head
    # (the 2-class target head could not even be compared with its logits).
    assert rows["ce"]["final_act"] == rows["oracle"]["final_act"] == ""
    for m in ("ce+act", "ce+act+jac", "ce+act+att", "ce+act+att+attjac"):
        assert float(rows[m]["final_act"]) > 0 and rows[m]["final_agreement"] != ""
    # "CE + match {activations + Jacobians}" matches the attention-map Jacobian at feature
    # level 1 (app. 10.2), not the output Jacobian (``--jacobian-row output``).
    assert rows["ce+act+jac"]["final_att_jac"] != "" and rows["ce+act"].get("final_jac", "") == ""
    assert rows["ce+act+jac"].get("final_jac", "") == rows["ce+act+jac"]["final_att"] == ""
    assert rows["ce+act+jac"]["att_jac_pair"] == "stage2:pool1"
    assert rows["ce+act+att+attjac"]["att_jac_pair"] == "stage2:pool1"  # shallowest pair

    depth = _csv(work / "ablation_depth.csv")
    assert [r["depth_pair"] for r in depth] == ["stage3:pool2"]
    assert all(r["att_jac_reduction"] != "" for r in depth)
    assert [r["pool_window"] for r in _csv(work / "ablation_pool.csv")] == ["s/5"]
    assert "Jacobian loss reduction" in (work / "ablation_depth.md").read_text()

    # The oracle started from the source-pretrained VGG-9: after 3 small Adam steps its
    # trunk and source head are still close to the pretrained ones; the CE run's are not.
    pre = checkpoint.restore_teacher(work / "source_student" / "artifact").variables["params"]
    cfg = TrainConfig(model="vgg9", model_options={**TINY_S, "source_classes": 3})

    def params(method):
        return final_variables(work / "runs" / method / "n2_seed0", cfg, 2, (32, 32, 3),
                               mesh=parallel.make_mesh(jax.devices()[:1]))[1]["params"]

    oracle, ce = params("oracle"), params("ce")
    gap = lambda a, b: float(jnp.max(jnp.abs(a - b)))  # noqa: E731
    assert gap(oracle["conv3"]["kernel"], pre["conv3"]["kernel"]) < 0.05
    assert gap(oracle["fc_source"]["kernel"], pre["fc"]["kernel"]) < 0.05
    assert gap(ce["conv3"]["kernel"], pre["conv3"]["kernel"]) > 0.2


def test_two_head_terms_use_the_right_head():
    """CE on the target head vs labels; act on the source head vs the teacher's logits."""
    student = models.create("vgg4", 2, source_classes=3, **TINY_S)
    teacher = models.create("resnet34", 3, **{**TINY_T, "stage_sizes": (1,)})
    x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
    labels = jnp.array([0, 1, 1, 0])
    sv, tv = random_variables(student, seed=1), random_variables(teacher, seed=2)
    tv["batch_stats"] = jax.tree.map(np.abs, tv["batch_stats"])  # positive variances

    def student_fn(z):
        (out, feats), upd = student.apply(sv, z, train=True, return_features=True,
                                          mutable=["batch_stats"])
        return (out, feats), upd["batch_stats"]

    def teacher_fn(z):
        return teacher.apply(tv, z, train=False, return_features=True)

    obj = transfer_objective("ce+act")

    @jax.jit
    def run(x):
        terms = compose_losses(obj, student_fn, teacher_fn, x, labels, jax.random.key(3))[1][0]
        out = student.apply(sv, x, train=True, mutable=["batch_stats"])[0]
        return terms, out, teacher.apply(tv, x, train=False)

    terms, out, t_logits = run(x)
    np.testing.assert_allclose(terms["act"], jnp.mean(losses.match_activations(
        out["source"], t_logits)), rtol=1e-5)
    np.testing.assert_allclose(terms["ce"], jnp.mean(losses.cross_entropy(
        out["target"], labels)), rtol=1e-5)
    assert out["source"].shape == (4, 3) and out["target"].shape == (4, 2)


@pytest.mark.parametrize("flag, value", [("--att-jac-pair", "stage1:pool1"),
                                         ("--att-pairs", "stage2:pool1,stage1:pool2"),
                                         ("--depth-pairs", "pool3:stage2")])
def test_unequal_spatial_sizes_are_refused_before_training(image_folder, tmp_path, capsys,
                                                           flag, value):
    work = tmp_path / "w"
    with pytest.raises(SystemExit) as e:
        transfer_cli.main(_argv(image_folder, work, flag, value))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")
    assert "equal spatial size" in err[0] and flag in err[0]
    assert not (work / "teacher").exists() and not (work / "runs").exists()


@pytest.mark.parametrize("argv, message", [
    (["--methods", "ce,bogus"], "unknown method"),
    (["--n-per-class", "0"], "positive integers or 'full'"),
    (["--pool-windows", "s/4"], "pool window"),
    (["--methods", "none"], "nothing to run"),
    (["--teacher-stage-sizes", "a"], "positive integers"),
    (["--loss-weight", "0"], "loss_weight must be positive"),
])
def test_cli_errors_are_one_clear_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        transfer_cli.parse_config(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]
