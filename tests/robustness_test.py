"""Tests of ``experiments.robustness`` (Table 2) on generated images with tiny models."""

import dataclasses
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from experiments import robustness as robustness_cli
from jkt import data, models, parallel
from jkt.data import DataConfig
from jkt.grids import robustness
from jkt.grids.robustness import RobustnessConfig
from jkt.train import OptimConfig


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("rob")
    rng = np.random.default_rng(0)
    for c in range(2):
        (root / f"c{c}").mkdir()
        for i in range(10):
            img = np.clip(80 + 100 * c + rng.normal(0, 30, (32, 32, 3)), 0, 255)
            Image.fromarray(img.astype(np.uint8)).save(root / f"c{c}" / f"{i}.png")
    return root


def tiny_preset(folder, workdir) -> RobustnessConfig:
    return RobustnessConfig(
        workdir=str(workdir), data=DataConfig(f"folder:{folder}", val_fraction=0.2),
        progress=False, model="vgg4", model_options={"width_multiplier": 0.0625},
        lambdas=(1.0,), weight_decay=1e-3, dropout=0.25, sigmas=(0.0, 0.5), noise_draws=2,
        optim=OptimConfig("adam", 1e-3, (0.8,), epochs=1, batch_size=8), max_steps=3)


def test_image_size_flag_reaches_the_data():
    p = robustness_cli.parse_config(["--image-size", "16"])
    assert p.data.image_size == 16


@pytest.mark.slow
def test_end_to_end_outputs_and_resume(folder, tmp_path, monkeypatch):
    monkeypatch.setenv("JKT_CACHE", str(tmp_path / "cache"))
    mesh = parallel.make_mesh(jax.devices()[:1])
    p = tiny_preset(folder, tmp_path / "w")
    rows = robustness.run(p, mesh=mesh)
    names = ["lambda=1", "l2=0.001", "dropout=0.25"]
    assert sorted({r["model"] for r in rows}) == sorted(names)
    assert len(rows) == len(names) * 2
    for r in rows:
        assert 0 <= r["accuracy"] <= 1 and r["grad_norm"] > 0
        assert r["draws"] == (1 if r["sigma"] == 0 else 2)
    # σ = 0 evaluation is the clean test accuracy the run itself reported.
    for name in names:
        res = json.loads((tmp_path / "w" / "runs" / name / "result.json").read_text())
        clean = next(r for r in rows if r["model"] == name and r["sigma"] == 0)
        assert clean["accuracy"] == pytest.approx(res["accuracy"]["test"])
    # The λ > 0 run logs the penalty; the baselines carry their options.
    lam = next(r for r in rows if r["model"] == "lambda=1")
    assert lam["final_jac_norm"] > 0
    md = (tmp_path / "w" / "robustness.md").read_text()
    for label in ("λ = 1 ", "ℓ2 regularization (γ = 0.001)", "Dropout (p = 0.25)"):
        assert label in md
    assert (tmp_path / "w" / "robustness.png").read_bytes()[:4] == b"\x89PNG"
    # Rerun: nothing is retrained or re-evaluated, the same rows come back.
    again = robustness.run(p, mesh=mesh)
    assert again == rows


def test_gradient_norm_matches_jacrev(folder, tmp_path, monkeypatch):
    monkeypatch.setenv("JKT_CACHE", str(tmp_path / "cache"))
    ds = data.load(f"folder:{folder}", val_fraction=0.2)
    model = models.create("vgg4", 2, width_multiplier=0.0625)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    mesh = parallel.make_mesh(jax.devices()[:1])
    fn = robustness.make_grad_norm_fn(model, ds.mean, ds.std)
    got = sum(float(fn(variables, b)) for b in data.eval_batches(ds.test, 8, mesh))
    x = data.normalize(ds.test.images, ds.mean, ds.std)
    jac_fn = jax.jit(jax.jacrev(lambda z: model.apply(variables, z[None], train=False)[0]))
    ref = 0.0
    for b in range(len(ds.test)):
        ref += float(jnp.linalg.norm(jac_fn(x[b])[ds.test.labels[b]].ravel()))
    np.testing.assert_allclose(got, ref, rtol=1e-4)


def test_noise_draws_differ_and_repeat():
    key = jax.random.key(3)
    x = jnp.zeros((4, 8, 8, 3))
    a = data.add_gaussian_noise(key, x, 0.3)
    chex.assert_trees_all_close(a, data.add_gaussian_noise(key, x, 0.3))
    assert not np.allclose(a, data.add_gaussian_noise(jax.random.key(4), x, 0.3))
    np.testing.assert_allclose(np.std(np.asarray(a)), 0.3, rtol=0.2)


@pytest.mark.parametrize("argv, message", [
    (["--lambdas", "0,-1"], "lambdas takes non-negative numbers"),
    (["--sigmas", "a"], "sigmas: expected a number"),
    (["--dropout", "1.5"], "dropout out of range"),
    (["--noise-draws", "0"], "noise_draws must be >= 1"),
    (["--estimator", "nope"], "unknown estimator"),
    (["--width-multiplier", "0"], "width_multiplier must be positive"),
])
def test_cli_errors_are_one_clear_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        robustness_cli.parse_config(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


def test_zero_baseline_flags_skip_rows():
    p = robustness_cli.parse_config(["--weight-decay", "0", "--dropout", "0", "--lambdas",
                                     "0,10"])
    assert [r.name for r in robustness.model_rows(p)] == ["lambda=0", "lambda=10"]
    assert dataclasses.replace(p).estimator == "label"
