"""Tests for jkt.models: shapes, parameter counts (appendix 10.1), taps, heads, modes."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jkt import models

TINY = {
    "vgg4": dict(width_multiplier=1 / 16),
    "vgg9": dict(width_multiplier=1 / 16),
    "resnet34": dict(width_multiplier=1 / 16, stage_sizes=(1, 1, 1, 1)),
}
X = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
# XLA's RngBitGenerator compiles much faster on CPU than threefry; tests only need "random".
KEY = jax.random.key(0, impl="rbg")
_CACHE = {}


def _init(model, x=X):
    """Variables of ``model`` (cached: init is the slow part of these tests on CPU)."""
    if model not in _CACHE:
        _CACHE[model] = jax.jit(model.init)({"params": KEY}, x)
    return _CACHE[model]


@pytest.mark.parametrize(
    "name,classes,input_shape,expected",
    [
        ("vgg9", 100, (32, 32, 3), 9_274_532),
        ("vgg4", 100, (32, 32, 3), 717_988),
        ("resnet34", 1000, (224, 224, 3), 21_797_672),
    ],
)
def test_param_counts(name, classes, input_shape, expected):
    assert models.param_count(models.create(name, classes), input_shape) == expected


@pytest.mark.parametrize("name,extra", [("vgg9", 2_752), ("vgg4", 704)])
def test_conv_bias_param_counts(name, extra):
    base = models.param_count(models.create(name, 100), (32, 32, 3))
    with_bias = models.param_count(models.create(name, 100, conv_bias=True), (32, 32, 3))
    assert with_bias - base == extra


def test_resnet34_matches_torchvision_layout():
    variables = models.abstract_variables(models.create("resnet34", 1000), (224, 224, 3))
    params = variables["params"]
    assert set(variables) == {"params", "batch_stats"}
    chex.assert_shape(params["conv1"]["kernel"], (7, 7, 3, 64))
    assert "downsample_conv" not in params["layer1_0"]
    chex.assert_shape(params["layer2_0"]["downsample_conv"]["kernel"], (1, 1, 64, 128))
    assert [k for k in params if k.startswith("layer4")] == ["layer4_0", "layer4_1", "layer4_2"]
    chex.assert_shape(params["fc"]["kernel"], (512, 1000))


@pytest.mark.parametrize("name", sorted(TINY))
def test_output_and_feature_shapes(name):
    model = models.create(name, 7, **TINY[name])
    variables = _init(model)
    logits, feats = model.apply(variables, X, return_features=True)
    chex.assert_shape(logits, (2, 7))
    chex.assert_tree_all_finite(logits)
    shapes = models.feature_shapes(model, (32, 32, 3))
    assert {k: v.shape for k, v in feats.items()} == {k: (2, *v) for k, v in shapes.items()}
    assert list(shapes) == list(feats)


def test_feature_shapes_full_size():
    assert models.feature_shapes(models.create("vgg9", 100), (32, 32, 3)) == {
        "pool1": (16, 16, 64),
        "pool2": (8, 8, 128),
        "pool3": (4, 4, 256),
        "pool4": (2, 2, 512),
        "pool5": (1, 1, 512),
    }
    assert list(models.feature_shapes(models.create("vgg4", 100), (32, 32, 3))) == [
        "pool1", "pool2", "pool3",
    ]
    assert models.feature_shapes(models.create("resnet34", 1000), (224, 224, 3)) == {
        "stem": (56, 56, 64),
        "stage1": (56, 56, 64),
        "stage2": (28, 28, 128),
        "stage3": (14, 14, 256),
        "stage4": (7, 7, 512),
    }
    small = models.feature_shapes(models.create("resnet34", 100, small_stem=True), (32, 32, 3))
    assert small["stem"] == (32, 32, 64) and small["stage4"] == (4, 4, 512)


@pytest.mark.parametrize("name", sorted(TINY))
def test_two_head_student(name):
    model = models.create(name, 5, source_classes=9, **TINY[name])
    variables = _init(model)
    out = model.apply(variables, X)
    assert set(out) == {"target", "source"}
    chex.assert_shape(out["target"], (2, 5))
    chex.assert_shape(out["source"], (2, 9))
    out2, feats = model.apply(variables, X, return_features=True)
    chex.assert_trees_all_close(out, out2)
    assert feats


@pytest.mark.parametrize("name", sorted(TINY))
def test_train_and_eval_modes_differ(name):
    model = models.create(name, 7, **TINY[name])
    variables = _init(model)
    train_out, updates = model.apply(variables, X, train=True, mutable=["batch_stats"])
    eval_out = model.apply(variables, X, train=False)
    assert not np.allclose(train_out, eval_out)
    changed = jax.tree.map(lambda a, b: not np.allclose(a, b), updates["batch_stats"],
                           variables["batch_stats"])
    assert any(jax.tree.leaves(changed))


def test_dropout_only_in_train_mode():
    model = models.create("vgg4", 7, dropout=0.5, **TINY["vgg4"])
    variables = _init(model)
    no_drop = models.create("vgg4", 7, **TINY["vgg4"])
    chex.assert_trees_all_close(model.apply(variables, X), no_drop.apply(variables, X))

    def train(k):
        return model.apply(variables, X, train=True, mutable=["batch_stats"],
                           rngs={"dropout": jax.random.key(k, impl="rbg")})[0]

    ref, _ = no_drop.apply(variables, X, train=True, mutable=["batch_stats"])
    assert not np.allclose(train(0), ref)
    assert not np.allclose(train(0), train(1))
    chex.assert_trees_all_close(train(0), train(0))


def test_bfloat16_compute_float32_params():
    model = models.create("vgg4", 7, dtype=jnp.bfloat16, **TINY["vgg4"])
    variables = _init(model)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
    logits, feats = model.apply(variables, X, return_features=True)
    assert logits.dtype == jnp.float32
    assert feats["pool1"].dtype == jnp.bfloat16


def test_apply_under_jit_and_input_grad():
    model = models.create("resnet34", 3, **TINY["resnet34"])
    variables = _init(model)
    f = jax.jit(lambda v, x: model.apply(v, x).sum())
    g = jax.grad(f, argnums=1)(variables, X)
    chex.assert_shape(g, X.shape)
    chex.assert_tree_all_finite(g)


def test_create_errors():
    with pytest.raises(ValueError, match="resnet34.*vgg4.*vgg9|valid names"):
        models.create("vgg16", 10)
    with pytest.raises(TypeError, match="small_stem"):
        models.create("vgg9", 10, small_stem=True)
    with pytest.raises(TypeError, match="bogus"):
        models.create("resnet34", 10, bogus=1)


def test_vgg_rejects_inputs_too_small_for_its_pools():
    """VGG-9 pools five times: a 16x16 input would reach 0x0 and give NaN logits."""
    model = models.create("vgg9", 10, width_multiplier=0.125)
    with pytest.raises(ValueError, match="at least 32x32 pixels, got shape \\(1, 16, 16, 3\\)"):
        model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
