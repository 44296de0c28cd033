"""Tests for jkt.data.transforms: normalisation, augmentation, Gaussian noise."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jkt import data


def _images(b=16, h=8, w=8, dtype=np.uint8, seed=0):
    x = np.random.default_rng(seed).integers(0, 256, (b, h, w, 3))
    return jnp.asarray(x.astype(dtype))


def test_normalize():
    x = _images(4)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    y = jax.jit(data.normalize)(x, mean, std)
    chex.assert_type(y, jnp.float32)
    chex.assert_shape(y, x.shape)
    expected = (np.asarray(x, np.float32) / 255.0 - np.array(mean)) / np.array(std)
    chex.assert_trees_all_close(y, expected.astype(np.float32), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
@pytest.mark.parametrize("pad_mode", ["constant", "reflect"])
def test_augment_keeps_shape_and_dtype(dtype, pad_mode):
    x = _images(dtype=dtype)
    fn = jax.jit(lambda k, x: data.augment(k, x, pad_mode=pad_mode))
    y = fn(jax.random.key(0), x)
    chex.assert_shape(y, x.shape)
    chex.assert_type(y, x.dtype)
    assert not np.array_equal(np.asarray(y), np.asarray(x))
    # every output is a shifted (and maybe flipped) window of its own input
    y2 = fn(jax.random.key(0), x)
    chex.assert_trees_all_equal(y, y2)


def test_augment_identity_when_disabled():
    x = _images()
    y = jax.jit(lambda k, x: data.augment(k, x, pad=0, flip=False))(jax.random.key(1), x)
    chex.assert_trees_all_equal(y, x)


def test_augment_flip_only_flips_some_examples():
    x = _images(b=64)
    y = np.asarray(data.augment(jax.random.key(2), x, pad=0, flip=True))
    x = np.asarray(x)
    flipped = np.array([np.array_equal(a, b[:, ::-1]) for a, b in zip(y, x, strict=True)])
    same = np.array([np.array_equal(a, b) for a, b in zip(y, x, strict=True)])
    assert np.all(flipped | same)
    assert 10 < flipped.sum() < 54


def test_augment_crop_is_a_translation():
    x = jnp.ones((32, 8, 8, 3), jnp.uint8) * 7
    y = np.asarray(data.augment(jax.random.key(3), x, pad=2, flip=False))
    # zero padding shows up as a border of zeros for shifted crops, values otherwise kept
    assert set(np.unique(y)) <= {0, 7}
    assert (y == 0).any() and (y == 7).sum() >= 32 * 6 * 6 * 3


def test_gaussian_noise_statistics():
    x = jnp.full((64, 16, 16, 3), 0.5, jnp.float32)
    y = jax.jit(data.add_gaussian_noise)(jax.random.key(0), x, 0.3)
    chex.assert_type(y, jnp.float32)
    chex.assert_shape(y, x.shape)
    noise = np.asarray(y - x)
    assert abs(noise.mean()) < 0.01
    assert abs(noise.std() - 0.3) < 0.01
    z = data.add_gaussian_noise(jax.random.key(0), x, 0.0)
    chex.assert_trees_all_equal(z, x)
