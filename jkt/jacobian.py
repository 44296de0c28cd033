"""Input Jacobians of batched networks, as pure functions of ``(fn, x, ...)``.

``fn`` maps a batch ``x`` of shape ``(B, *D)`` to outputs ``(B, K)``. For networks
whose examples are independent (inference-mode BatchNorm, per-example layers), row
``b`` of every result is example ``b``'s own Jacobian. In training mode BatchNorm
couples the examples of a batch through its statistics; the gradients are then those
of the summed objective, exactly as ``torch.autograd.grad`` computes them in the
paper's kind of code (the coupling is O(1/B)).

Estimators of the Jacobian-matching loss ``Σ_i ‖∇_x T^i - ∇_x S^i‖²`` (prop. 1):

==============  ===========================  ==============================================
estimator       cost per network             what it estimates
==============  ===========================  ==============================================
``label``       1 reverse pass               the true-label row only (§4.1, paper default)
``top``         1 reverse pass               the teacher's top output row (§4.1)
``random``      1 reverse pass               full loss, unbiased: v ~ N(0, I_K) in output space
``rademacher``  1 reverse pass               full loss, unbiased, lower variance (v ∈ {±1}^K)
``sphere``      1 reverse pass               full loss, unbiased, lower variance (‖v‖ = √K)
``jvp``         1 forward-mode pass          full loss, unbiased: u ~ N(0, I_D) in input space
``full``        K reverse passes             exact full loss
==============  ===========================  ==============================================

For Gaussian probes the output- and input-space estimators have the *same* variance,
``2 ‖A Aᵀ‖_F²`` with ``A = J_s - J_t`` (``vᵀAAᵀv`` and ``uᵀAᵀAu`` are Gaussian quadratic
forms of matrices with equal non-zero spectra); Rademacher probes remove the diagonal
part, ``2(‖AAᵀ‖_F² - Σ_i (AAᵀ)_ii²)``. Probes uniform on the sphere of radius ``√K``
(the default of facebookresearch/jacobian_regularizer) have ``E[(vᵀMv)²] =
K/(K+2)·(tr(M)² + 2 tr(M²))`` for ``M = AAᵀ``, hence variance
``2(K ‖AAᵀ‖_F² - tr(AAᵀ)²)/(K+2)``: always below the Gaussian's (the probe's length
no longer fluctuates), zero when ``AAᵀ`` is a multiple of ``I``. Neither of Rademacher
and sphere dominates the other in general. ``tests/jacobian_test.py`` measures all four.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jkt.losses import attention_map

COTANGENT_MODES = ("label", "top", "random", "rademacher", "sphere")

Fn = Callable[[jax.Array], jax.Array]


def _check_outputs(name: str, y, x: jax.Array) -> None:
    if getattr(y, "ndim", None) != 2 or y.shape[0] != x.shape[0]:
        shape = getattr(y, "shape", type(y).__name__)
        raise ValueError(
            f"{name}: fn must map x of shape (B, ...) = {tuple(x.shape)} to outputs (B, K); "
            f"got {shape}"
        )


def pullback(fn: Callable, x: jax.Array, *, has_aux: bool = False):
    """One forward pass of ``fn`` at ``x`` and the map from output cotangents to ``x``.

    Every reverse pass of this module (one output row, all K rows, an attention-map
    pixel) and of the loss composer is a call of such a ``pull``: the passes share the
    residuals of one ``jax.vjp`` instead of recomputing the network.

    Args:
      fn: ``x -> y`` (a pytree of arrays), or ``x -> (y, aux)`` with ``has_aux``.
      x: ``(B, *D)``.
    Returns:
      ``(y, pull)``, or ``(y, pull, aux)`` with ``has_aux``. ``pull(cotangent)`` takes a
      pytree shaped like ``y`` (cast to ``y``'s dtypes) and returns
      ``∂⟨y, cotangent⟩/∂x`` of shape ``(B, *D)``.
    """
    y, vjp_fn, *aux = jax.vjp(fn, x, has_aux=has_aux)

    def pull(cotangent):
        (g,) = vjp_fn(jax.tree.map(lambda c, o: c.astype(o.dtype), cotangent, y))
        return g

    return (y, pull, *aux)


def output_pullbacks(y: dict, pull: Callable) -> dict[str, Callable]:
    """Per-output pullbacks of a dict-valued ``fn`` (from :func:`pullback`).

    ``pulls[name](c)`` is ``∂⟨y[name], c⟩/∂x``: output ``name`` weighted by ``c``, every
    other output by zero. All of them share ``pull``'s forward pass.
    """
    zeros = jax.tree.map(jnp.zeros_like, y)
    return {name: functools.partial(_pull_one, pull, zeros, name) for name in y}


def _pull_one(pull: Callable, zeros: dict, name: str, cotangent) -> jax.Array:
    return pull({**zeros, name: cotangent})


class Pass(NamedTuple):
    """One network evaluated once at the batch ``x`` ``(B, *D)``: what its Jacobians are
    taken from (the one record of a network pass, for :mod:`jkt.penalties` and the loss
    composer alike).

    Attributes:
      logits: ``(B, K)`` outputs whose Jacobian rows are matched or penalised (a two-head
        student's source head).
      pulls: ``{"logits": c -> (B, *D)[, "pooled": ...]}``, the pullbacks of this very pass
        (:func:`output_pullbacks`); ``None`` when the pass was not differentiated.
      logits_fn: ``z -> logits``, run again by the forward-mode (``jvp``) estimator.
      target: ``(B, K_target)`` outputs scored against the labels (``logits`` for a
        single-head network).
      features: ``{tap: (B, H, W, C)}`` feature maps.
      pooled: ``(B, H', W')`` pooled attention map whose pixel is differentiated, or
        ``None``.
      aux: passed through from the network (new batch statistics, NNX state, ...).
    """

    logits: jax.Array
    pulls: dict[str, Callable] | None
    logits_fn: Callable
    target: jax.Array | None = None
    features: dict | None = None
    pooled: jax.Array | None = None
    aux: Any = None

    @property
    def pull(self) -> Callable | None:
        """``cotangent (B, K) -> (B, *D)``: the pullback of :attr:`logits`."""
        return None if self.pulls is None else self.pulls["logits"]


def run_once(forward: Callable, x: jax.Array, *, differentiate: bool) -> Pass:
    """Runs ``forward: z -> (outputs, (target, features, aux))`` once at ``x``.

    ``outputs`` is ``{"logits": (B, K)[, "pooled": (B, H', W')]}``; with ``differentiate``
    every output gets its pullback, all sharing this one forward pass (:func:`pullback`).
    """
    if differentiate:
        outs, pull, (target, features, aux) = pullback(forward, x, has_aux=True)
        pulls = output_pullbacks(outs, pull)
    else:
        (outs, (target, features, aux)), pulls = forward(x), None
    return Pass(outs["logits"], pulls, lambda z: forward(z)[0]["logits"], target, features,
                outs.get("pooled"), aux)


# Up to this many outputs, :func:`jacobian_rows` traces its pullbacks one by one on a CPU.
UNROLL_MAX_OUTPUTS = 32


def jacobian_rows(pull: Callable, y: jax.Array, *, unroll: bool | None = None) -> jax.Array:
    """All K rows of the per-example Jacobian of outputs ``y`` ``(B, K)``: ``(B, K, *D)``.

    ``J[b, k] = ∇_x y_b[k]``, the pullbacks of the K one-hot cotangents: K reverse passes
    over one shared forward pass. (``jax.jacrev`` of the batched function would build the
    ``(B, K, B, *D)`` cross-example blocks and need a diagonal extraction.)

    ``unroll``: ``True`` traces the K pullbacks one after another, ``False`` maps one
    pullback over the K cotangents with ``jax.vmap``; the same numbers either way.
    ``None`` (default) unrolls on a CPU backend for K ≤ :data:`UNROLL_MAX_OUTPUTS` and maps
    elsewhere. Mapped, the K cotangents are folded into the batch, and differentiating
    that again (a loss on ``J``) carries K copies of every activation through the
    second-order pass, which XLA:CPU runs slower and in more memory than K separate
    pullbacks (docs/results.md); an accelerator runs the one batched pass well, and a
    large K would make a long unrolled program.
    """
    b, k = y.shape
    if unroll is None:
        unroll = jax.default_backend() == "cpu" and k <= UNROLL_MAX_OUTPUTS
    if unroll:
        eye = jnp.eye(k, dtype=y.dtype)
        return jnp.stack([pull(jnp.broadcast_to(eye[i], (b, k))) for i in range(k)], axis=1)
    basis = jnp.broadcast_to(jnp.eye(k, dtype=y.dtype)[:, None, :], (k, b, k))
    return jnp.swapaxes(jax.vmap(pull)(basis), 0, 1)  # (K, B, *D) -> (B, K, *D)


def vjp_input(fn: Fn, x: jax.Array, cotangent: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Outputs and the input gradient of ``⟨fn(x), cotangent⟩``: one reverse pass.

    Args:
      fn: ``(B, *D) -> (B, K)``.
      x: ``(B, *D)`` inputs.
      cotangent: ``(B, K)`` output-space weights (e.g. from :func:`select_cotangent`).
    Returns:
      ``(y, g)``: ``y = fn(x)`` of shape ``(B, K)``; ``g = ∂⟨y, cotangent⟩/∂x`` of shape
      ``(B, *D)``. With a one-hot cotangent, row ``b`` of ``g`` is ``∇_x y_b[c_b]``.
    """
    y, pull = pullback(fn, x)
    _check_outputs("vjp_input", y, x)
    if cotangent.shape != y.shape:
        raise ValueError(
            f"vjp_input: cotangent shape {tuple(cotangent.shape)} must equal the output shape "
            f"{tuple(y.shape)}"
        )
    return y, pull(cotangent)


def jvp_input(fn: Fn, x: jax.Array, tangent: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Outputs and the Jacobian-vector product ``J·tangent`` from one forward-mode ``jax.jvp``.

    With ``tangent ~ N(0, I_D)`` per example, ``E‖(J_s - J_t) u‖² = ‖J_s - J_t‖_F²``, the
    full prop.-1 Jacobian loss over all K outputs (Sobolev training's stochastic variant).

    Args:
      fn: ``(B, *D) -> (B, K)``.
      x: ``(B, *D)``.
      tangent: ``(B, *D)`` input-space direction.
    Returns:
      ``(y, jv)``, both ``(B, K)``.
    """
    if tangent.shape != x.shape:
        raise ValueError(
            f"jvp_input: tangent shape {tuple(tangent.shape)} must equal x shape {tuple(x.shape)}"
        )
    y, jv = jax.jvp(fn, (x,), (tangent.astype(x.dtype),))
    _check_outputs("jvp_input", y, x)
    return y, jv


def full_jacobian(fn: Fn, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The per-example Jacobian of all K outputs: one forward pass, K pullbacks of it
    (:func:`jacobian_rows`).

    Args:
      fn: ``(B, *D) -> (B, K)``.
      x: ``(B, *D)``.
    Returns:
      ``(y, J)``: ``y`` of shape ``(B, K)``, ``J`` of shape ``(B, K, *D)`` with
      ``J[b, k] = ∇_x y_b[k]``.
    """
    y, pull = pullback(fn, x)
    _check_outputs("full_jacobian", y, x)
    return y, jacobian_rows(pull, y)


def select_cotangent(
    logits: jax.Array,
    mode: str,
    *,
    labels: jax.Array | None = None,
    key: jax.Array | None = None,
) -> jax.Array:
    """Output-space weights ``v`` for a single-pass Jacobian estimate ``Jᵀv`` (§4.1).

    Args:
      logits: ``(B, K)``. For ``"top"`` pass the *teacher's* logits, so student and
        teacher differentiate the same output.
      mode: ``"label"`` one-hot of ``labels``; ``"top"`` one-hot of ``argmax(logits)``;
        ``"random"`` standard Gaussian (``E[vvᵀ] = I``: the matching loss becomes an
        unbiased estimate of the full-Jacobian loss); ``"rademacher"`` uniform ``±1``
        (also ``E[vvᵀ] = I``, lower variance); ``"sphere"`` uniform on the sphere of
        radius ``√K``, ``v = √K·g/‖g‖`` with ``g ~ N(0, I_K)`` per example (also
        ``E[vvᵀ] = I``, always lower variance than ``"random"``; the default probe of
        facebookresearch/jacobian_regularizer, which draws the unit vector and scales
        the loss by ``K``: the same estimator).
      labels: ``(B,)`` integer labels, required for ``"label"``.
      key: PRNG key, required for ``"random"`` / ``"rademacher"`` / ``"sphere"``.
    Returns:
      ``(B, K)`` array in ``logits.dtype`` (no gradient flows through it).
    """
    if logits.ndim != 2:
        raise ValueError(f"select_cotangent: expected logits (B, K), got {tuple(logits.shape)}")
    b, k = logits.shape
    if mode == "label":
        if labels is None:
            raise ValueError("select_cotangent: mode 'label' needs labels")
        if labels.shape != (b,):
            raise ValueError(f"select_cotangent: labels must be ({b},), got {tuple(labels.shape)}")
        return jax.nn.one_hot(labels, k, dtype=logits.dtype)
    if mode == "top":
        return jax.nn.one_hot(jnp.argmax(jax.lax.stop_gradient(logits), -1), k, dtype=logits.dtype)
    if mode in ("random", "rademacher", "sphere"):
        if key is None:
            raise ValueError(f"select_cotangent: mode {mode!r} needs a PRNG key")
        if mode == "random":
            return jax.random.normal(key, (b, k), logits.dtype)
        if mode == "rademacher":
            return jax.random.rademacher(key, (b, k), logits.dtype)
        return _sphere(key, b, k).astype(logits.dtype)
    raise ValueError(f"select_cotangent: unknown mode {mode!r}; valid modes: {COTANGENT_MODES}")


def softmax_derivative(logits: jax.Array, temperature: float = 1.0, *,
                       log: bool = False) -> jax.Array:
    """``(B, K, K)`` derivatives of the tempered softmax with respect to the tempered
    logits ``u = z/T``: ``D[b, i, j] = ∂p_i/∂u_j = p_i (δ_ij - p_j)`` or, with ``log``,
    ``∂ log p_i/∂u_j = δ_ij - p_j``, for ``p = softmax(z/T)`` (no gradient is stopped).

    The input-gradient rows of the softmax outputs are then pullbacks of the *logits*:
    ``∇_x p_i = (1/T) Σ_j D_ij ∇_x z_j``, i.e. the cotangent ``Dᵀv / T`` on the logits for
    the rows ``Σ_i v_i ∇_x p_i`` (as :func:`jkt.train.objective.softmax_jacobian_terms`
    takes them). That is exactly the pullback of the cotangent ``v`` through the softmax
    (the chain rule), without a softmax output in the differentiated function, and it
    gives ``∇_x log p_i`` directly instead of dividing ``∇_x p_i`` by a ``p_i`` that may
    underflow.

    Args:
      logits: ``(B, K)``.
      temperature: ``T > 0``.
      log: derivatives of ``log p`` instead of ``p``.
    Returns:
      ``(B, K, K)`` in ``logits.dtype``.
    """
    if logits.ndim != 2:
        raise ValueError(f"softmax_derivative: expected logits (B, K), got {tuple(logits.shape)}")
    p = jax.nn.softmax(logits / temperature, axis=-1)
    eye = jnp.eye(logits.shape[1], dtype=p.dtype)
    if log:
        return eye[None] - p[:, None, :]
    return p[:, :, None] * (eye[None] - p[:, None, :])


def _sphere(key: jax.Array, b: int, k: int) -> jax.Array:
    """``(B, K)`` rows uniform on the sphere of radius ``√K`` (normalised in float32)."""
    g = jax.random.normal(key, (b, k), jnp.float32)
    return g * (jnp.sqrt(jnp.float32(k)) / jnp.linalg.norm(g, axis=-1, keepdims=True))


def input_tangent(key: jax.Array, x: jax.Array) -> jax.Array:
    """Standard Gaussian input-space probe ``u ~ N(0, I_D)`` per example, shape of ``x``."""
    return jax.random.normal(key, x.shape, x.dtype)


# ----------------------------------------------------------------------------------------
# Attention maps and their Jacobians (§5.2.1, §6.3.2, appendix 10.2)


def pooling_window(spatial: tuple[int, int], fraction: float | None = 0.2) -> tuple[int, int]:
    """Average-pool window for an attention map of spatial size ``(H, W)``.

    ``fraction=0.2`` is the paper's ``feature size / 5`` (Table 5); ``1.0`` is "Full"
    (global average pooling); ``None`` is "None" (no pooling, window 1).
    """
    h, w = spatial
    if fraction is None:
        return (1, 1)
    if not 0 < fraction <= 1:
        raise ValueError(f"pooling_window: fraction must be in (0, 1] or None, got {fraction}")
    return (max(1, round(h * fraction)), max(1, round(w * fraction)))


def pooled_attention(features: jax.Array, window: tuple[int, int]) -> jax.Array:
    """Attention map (eq. 8) average-pooled with stride 1, 'VALID' padding.

    Args:
      features: ``(B, H, W, C)``.
      window: ``(kh, kw)`` with ``1 <= kh <= H``, ``1 <= kw <= W``.
    Returns:
      ``(B, H - kh + 1, W - kw + 1)``.
    """
    a = attention_map(features)
    kh, kw = window
    if not (1 <= kh <= a.shape[1] and 1 <= kw <= a.shape[2]):
        raise ValueError(f"pooled_attention: window {window} does not fit a map of {a.shape[1:]}")
    summed = jax.lax.reduce_window(a, 0.0, jax.lax.add, (1, kh, kw), (1, 1, 1), "VALID")
    return summed / (kh * kw)


def argmax_pixel(pooled: jax.Array) -> jax.Array:
    """One-hot ``(B, H', W')`` selecting each example's largest pooled-attention pixel."""
    b = pooled.shape[0]
    flat = jax.lax.stop_gradient(pooled).reshape(b, -1)
    one_hot = jax.nn.one_hot(jnp.argmax(flat, -1), flat.shape[1], dtype=pooled.dtype)
    return one_hot.reshape(pooled.shape)


def check_same_spatial(student_shape, teacher_shape) -> None:
    """Raises ``ValueError`` unless two ``(B, H, W, C)`` feature shapes share ``B, H, W``."""
    if tuple(student_shape[:3]) != tuple(teacher_shape[:3]):
        raise ValueError(
            "attention matching needs taps of equal spatial size: student features "
            f"{tuple(student_shape)} vs teacher features {tuple(teacher_shape)} (B, H, W, C)"
        )


def attention_map_jacobian(
    feature_fn: Fn,
    x: jax.Array,
    window: tuple[int, int],
    pixel: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Input gradient of one pooled attention-map pixel per example (§5.2.1, app. 10.2).

    Call it for the teacher with ``pixel=None`` (its arg-max pixel is chosen), then for
    the student with the teacher's ``pixel``, and match the two gradients with
    ``jkt.losses.match_jacobians(..., normalize=True)`` (eq. 10).

    Args:
      feature_fn: ``(B, *D) -> (B, H, W, C)`` features at the matched tap.
      x: ``(B, *D)``.
      window: average-pool window (see :func:`pooling_window`).
      pixel: optional ``(B, H', W')`` one-hot selection (default: own arg-max).
    Returns:
      ``(pooled, pixel, grad)``: pooled map ``(B, H', W')``, the selection used, and
      ``∇_x pooled[b, i_b, j_b]`` of shape ``(B, *D)``.
    """
    pooled, pull = pullback(lambda z: pooled_attention(feature_fn(z), window), x)
    if pixel is None:
        pixel = argmax_pixel(pooled)
    elif pixel.shape != pooled.shape:
        raise ValueError(
            f"attention_map_jacobian: pixel selection {tuple(pixel.shape)} does not match the "
            f"pooled attention map {tuple(pooled.shape)}; student and teacher taps must have "
            "equal spatial size"
        )
    return pooled, pixel, pull(jax.lax.stop_gradient(pixel))
