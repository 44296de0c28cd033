"""Max-pooling whose derivatives are elementwise selects instead of window primitives.

``flax.linen.max_pool`` lowers to XLA's ``reduce_window``; its gradient is a
``select_and_scatter`` and its forward derivative (what Jacobian matching's double
backward and the ``jvp`` estimator differentiate through) a ``select_and_gather_add``
over packed value/tangent pairs. On a CPU those window primitives cost more than the
convolutions of the small models. For non-overlapping windows, :func:`max_pool` computes
the same function on a reshaped view ``(B, H/kh, kh, W/kw, kw, C)`` with a custom
forward derivative that routes each window's tangent from its *first* maximum in
row-major order, the element XLA's ``select_and_scatter`` (``ge`` select) picks: values,
gradients and second derivatives equal ``flax.linen.max_pool``'s, ties included. Other
windows (overlapping or padded, e.g. ResNet's 3x3 / stride 2 stem) use
``flax.linen.max_pool``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def _first_max_mask(windows: jax.Array, pooled: jax.Array) -> jax.Array:
    """One-hot mask of each window's first maximum (row-major), shape of ``windows``.

    ``windows``: ``(B, Ho, kh, Wo, kw, C)``; ``pooled``: ``(B, Ho, Wo, C)``, its max over
    axes 2 and 4.
    """
    kh, kw = windows.shape[2], windows.shape[4]
    taken = jnp.zeros(pooled.shape, bool)
    rows = []
    for i in range(kh):
        cols = []
        for j in range(kw):
            hit = (windows[:, :, i, :, j] == pooled) & ~taken
            taken = taken | hit
            cols.append(hit)
        rows.append(jnp.stack(cols, axis=-2))  # (B, Ho, Wo, kw, C)
    mask = jnp.stack(rows, axis=2)  # (B, Ho, kh, Wo, kw, C)
    return mask


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _pool_windows(x: jax.Array, window: tuple[int, int]) -> jax.Array:
    """Max over non-overlapping ``window`` s of ``x`` ``(B, H, W, C)`` with H, W divisible."""
    b, h, w, c = x.shape
    kh, kw = window
    return jnp.max(x.reshape(b, h // kh, kh, w // kw, kw, c), axis=(2, 4))


@_pool_windows.defjvp
def _pool_windows_jvp(window, primals, tangents):
    (x,), (t,) = primals, tangents
    b, h, w, c = x.shape
    kh, kw = window
    shape = (b, h // kh, kh, w // kw, kw, c)
    windows = x.reshape(shape)
    pooled = _pool_windows(x, window)  # not jnp.max: higher derivatives take this rule too
    mask = jax.lax.stop_gradient(_first_max_mask(windows, pooled))
    tangent = jnp.sum(jnp.where(mask, t.reshape(shape), jnp.zeros((), t.dtype)), axis=(2, 4))
    return pooled, tangent


def max_pool(x: jax.Array, window: Sequence[int], strides: Sequence[int] | None = None,
             padding: str | Sequence[tuple[int, int]] = "VALID") -> jax.Array:
    """``flax.linen.max_pool(x, window, strides, padding)`` on NHWC ``x`` ``(B, H, W, C)``.

    Returns ``(B, Ho, Wo, C)``. Non-overlapping windows (``strides == window``, no
    padding, H and W divisible) take the reshape path described in the module docstring;
    anything else is ``flax.linen.max_pool``.
    """
    window = tuple(window)
    strides = window if strides is None else tuple(strides)
    unpadded = padding == "VALID" or (not isinstance(padding, str)
                                      and all(tuple(p) == (0, 0) for p in padding))
    if (x.ndim == 4 and len(window) == 2 and strides == window and unpadded
            and x.shape[1] % window[0] == 0 and x.shape[2] % window[1] == 0):
        return _pool_windows(x, window)
    return nn.max_pool(x, window, strides=strides, padding=padding)
