"""2-D convolution as one matrix product over image patches (im2col), for XLA:CPU.

XLA:CPU's convolution kernels are slow on the small feature maps of the paper's CIFAR
models (a 3x3 convolution on a 2x2 map costs several times what the same arithmetic
costs as a matrix product), and Jacobian matching differentiates every convolution
twice. :func:`conv_general_dilated` computes ``lax.conv_general_dilated`` for NHWC
inputs and HWIO kernels as ``patches @ kernel``: the ``kh * kw`` shifted (and strided)
views of the padded input are concatenated along channels into ``(B, Ho, Wo, kh*kw*C)``
and multiplied by the kernel reshaped to ``(kh*kw*C, O)``. Its derivatives of every
order are slices, pads and matrix products. Values agree with XLA's convolution to
float rounding (the sum runs in another order).

:func:`resolve` picks the implementation a model uses: ``"auto"`` is this one when JAX's
default backend is the CPU and ``lax.conv_general_dilated`` elsewhere (cuDNN and the
TPU convolution units are faster than any rewrite).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

CONV_IMPLS = ("auto", "xla", "im2col")


def _explicit_padding(padding, in_sizes, kernel_sizes, strides) -> list[tuple[int, int]]:
    if not isinstance(padding, str):
        return [tuple(p) for p in padding]
    return list(lax.padtype_to_pads(in_sizes, kernel_sizes, strides, padding))


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision=None,
    preferred_element_type=None,
) -> jax.Array:
    """``lax.conv_general_dilated`` (same signature) computed as im2col + one dot.

    Args:
      lhs: input ``(B, H, W, C)`` (NHWC).
      rhs: kernel ``(kh, kw, C, O)`` (HWIO).
      window_strides: ``(sh, sw)``.
      padding: ``"SAME"``, ``"VALID"`` or ``((top, bottom), (left, right))``.

    Returns:
      ``(B, Ho, Wo, O)``. Dilations, grouped convolutions and other layouts are passed to
      ``lax.conv_general_dilated`` unchanged.
    """
    simple = (lhs.ndim == 4 and rhs.ndim == 4 and feature_group_count == 1
              and batch_group_count == 1
              and all(d == 1 for d in (lhs_dilation or (1, 1)))
              and all(d == 1 for d in (rhs_dilation or (1, 1)))
              and _is_nhwc_hwio(dimension_numbers, lhs.ndim))
    if not simple:
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count, batch_group_count=batch_group_count,
            precision=precision, preferred_element_type=preferred_element_type)
    b, h, w, c = lhs.shape
    kh, kw, c_in, o = rhs.shape
    if c_in != c:
        raise ValueError(f"kernel {rhs.shape} expects {c_in} input channels, input {lhs.shape} "
                         f"has {c}")
    sh, sw = window_strides
    (pt, pb), (pl, pr) = _explicit_padding(padding, (h, w), (kh, kw), (sh, sw))
    x = jnp.pad(lhs, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    ho = (h + pt + pb - kh) // sh + 1
    wo = (w + pl + pr - kw) // sw + 1
    views = [lax.slice(x, (0, i, j, 0), (b, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, c),
                       (1, sh, sw, 1))
             for i in range(kh) for j in range(kw)]
    patches = views[0] if len(views) == 1 else jnp.concatenate(views, axis=-1)
    out = jnp.dot(patches.reshape(b * ho * wo, kh * kw * c), rhs.reshape(kh * kw * c, o),
                  precision=precision, preferred_element_type=preferred_element_type)
    return out.reshape(b, ho, wo, o)


def _is_nhwc_hwio(dimension_numbers, ndim: int) -> bool:
    if dimension_numbers is None:  # lax's default is NCHW / OIHW
        return False
    dn = lax.conv_dimension_numbers((1,) * ndim, (1,) * ndim, dimension_numbers)
    return (tuple(dn.lhs_spec), tuple(dn.rhs_spec), tuple(dn.out_spec)) == (
        (0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))


def resolve(impl: str) -> Callable:
    """The convolution function for ``impl`` (one of ``CONV_IMPLS``)."""
    if impl not in CONV_IMPLS:
        raise ValueError(f"unknown convolution implementation {impl!r}; valid: "
                         f"{', '.join(CONV_IMPLS)}")
    if impl == "auto":
        impl = "im2col" if jax.default_backend() == "cpu" else "xla"
    return conv_general_dilated if impl == "im2col" else lax.conv_general_dilated
