"""On-device image transforms: pure functions of arrays (and a PRNG key), jittable.

Images are batches ``(B, H, W, C)``. The usual order inside a jitted step is
``augment`` on the uint8 batch, then ``normalize``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from jkt.data.types import AUGMENTATIONS


def normalize(images: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
    """``(images / 255 - mean) / std`` per channel, as float32.

    Args:
      images: ``(B, H, W, C)`` pixel values in ``[0, 255]`` (uint8 or float).
      mean, std: ``C`` per-channel statistics of images scaled to ``[0, 1]``.

    Returns:
      float32 array of the same shape.
    """
    x = jnp.asarray(images).astype(jnp.float32) / 255.0
    mean = jnp.asarray(mean, jnp.float32)
    std = jnp.asarray(std, jnp.float32)
    return (x - mean) / std


def renormalizer(mean: Sequence[float], std: Sequence[float],
                 to_mean: Sequence[float] | None, to_std: Sequence[float] | None) -> Callable:
    """``x -> (x * std + mean - to_mean) / to_std``: inputs normalised with ``mean``/``std``
    renormalised to ``to_mean``/``to_std`` (a teacher's own statistics); the identity when
    ``to_mean`` is ``None`` or both normalisations are equal."""
    if to_mean is None or (tuple(to_mean) == tuple(mean) and tuple(to_std) == tuple(std)):
        return lambda z: z
    m, s = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)
    tm, ts = jnp.asarray(to_mean, jnp.float32), jnp.asarray(to_std, jnp.float32)
    return lambda z: (z * s + m - tm) / ts


def augment(
    key: jax.Array,
    images: jax.Array,
    *,
    pad: int = 4,
    flip: bool = True,
    pad_mode: str = "constant",
) -> jax.Array:
    """Random crop after padding plus random horizontal flip, independently per example.

    The standard CIFAR augmentation: pad ``pad`` pixels on each side (zeros for
    ``pad_mode="constant"``, or ``"reflect"``), take a random ``H x W`` crop, flip
    left-right with probability 1/2.

    Args:
      key: PRNG key.
      images: ``(B, H, W, C)``, any dtype.
      pad: padding per side; ``0`` disables cropping.
      flip: whether to flip randomly.
      pad_mode: ``"constant"`` (zeros) or ``"reflect"``.

    Returns:
      An array of the same shape and dtype (``images`` itself when ``pad=0, flip=False``).
    """
    images = jnp.asarray(images)
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    if pad_mode not in ("constant", "reflect"):
        raise ValueError(f"pad_mode must be 'constant' or 'reflect', got {pad_mode!r}")
    if pad == 0 and not flip:
        return images
    b, h, w, c = images.shape
    crop_key, flip_key = jax.random.split(key)
    out = images
    if pad > 0:
        padded = jnp.pad(out, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode=pad_mode)
        offsets = jax.random.randint(crop_key, (b, 2), 0, 2 * pad + 1)

        def crop(img, off):
            return jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, c))

        out = jax.vmap(crop)(padded, offsets)
    if flip:
        do_flip = jax.random.bernoulli(flip_key, 0.5, (b, 1, 1, 1))
        out = jnp.where(do_flip, out[:, :, ::-1, :], out)
    return out.astype(images.dtype)


def augmentation_name(augment: bool | str) -> str:
    """The name in ``AUGMENTATIONS`` of an augmentation setting (``True`` is
    ``"crop+flip"``, ``False`` is ``"none"``)."""
    if augment is True or augment is False:
        return "crop+flip" if augment else "none"
    if augment not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {augment!r}; valid: {', '.join(AUGMENTATIONS)}")
    return augment


def augment_named(key: jax.Array, images: jax.Array, name: bool | str) -> jax.Array:
    """:func:`augment` as named by ``name`` (see :func:`augmentation_name`): ``"crop+flip"``
    (pad-4 crop + flip), ``"crop"`` (pad-4 crop, no flip: digits), ``"none"``."""
    name = augmentation_name(name)
    if name == "none":
        return images
    return augment(key, images, flip=name == "crop+flip")


def add_gaussian_noise(key: jax.Array, x: jax.Array, sigma: float | jax.Array) -> jax.Array:
    """``x + sigma * eps`` with ``eps ~ N(0, I)``: the robustness test of Table 2.

    Args:
      key: PRNG key.
      x: normalised images (float), any shape.
      sigma: noise standard deviation, in units of the normalised images.

    Returns:
      Noisy images, same shape and dtype as ``x``.
    """
    x = jnp.asarray(x)
    eps = jax.random.normal(key, x.shape, x.dtype)
    return x + jnp.asarray(sigma, x.dtype) * eps
