"""Per-example losses of Srinivas & Fleuret (2018). Every function returns shape ``(B,)``.

Callers reduce (mean over the batch) and weight the terms (appendix 10.2).

Notation: ``s``/``t`` are student/teacher quantities; a "Jacobian" argument is any
array whose leading axis is the batch, e.g. an input gradient ``(B, H, W, C)`` from
:func:`jkt.jacobian.vjp_input` or a full Jacobian ``(B, K, H, W, C)`` from
:func:`jkt.jacobian.full_jacobian`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

ATTENTION_LOSS_VARIANTS = ("paper", "at_code")


def _check_same_shape(name: str, a: jax.Array, b: jax.Array, what=("student", "teacher")):
    if a.shape != b.shape:
        raise ValueError(
            f"{name}: {what[0]} shape {tuple(a.shape)} does not match {what[1]} shape "
            f"{tuple(b.shape)}"
        )
    if a.ndim < 1:
        raise ValueError(f"{name}: expected a leading batch axis, got a scalar")


def _sum_non_batch(x: jax.Array) -> jax.Array:
    return jnp.sum(x, axis=tuple(range(1, x.ndim)))


def _safe_unit(x: jax.Array) -> jax.Array:
    """Each example of ``x`` divided by its L2 norm; 0 where the norm is 0 (finite grads)."""
    sq = _sum_non_batch(jnp.square(x))
    ok = sq > 0
    norm = jnp.sqrt(jnp.where(ok, sq, 1.0))
    shape = (-1,) + (1,) * (x.ndim - 1)
    return jnp.where(ok.reshape(shape), x / norm.reshape(shape), 0.0)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Softmax cross-entropy with integer labels.

    Args:
      logits: ``(B, K)``.
      labels: ``(B,)`` integers in ``[0, K)``.
    Returns:
      ``(B,)``: ``-log softmax(logits)[label]``.
    """
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(
            f"cross_entropy: expected logits (B, K) and labels (B,), got {tuple(logits.shape)} "
            f"and {tuple(labels.shape)}"
        )
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def match_activations(student_logits: jax.Array, teacher_logits: jax.Array) -> jax.Array:
    """Squared-error activation matching, prop. 1 first term: ``Σ_k (t_k - s_k)²``.

    Args:
      student_logits, teacher_logits: ``(B, K)`` pre-softmax activations.
    Returns:
      ``(B,)``.
    """
    _check_same_shape("match_activations", student_logits, teacher_logits)
    return _sum_non_batch(jnp.square(teacher_logits - student_logits))


def match_jacobians(
    student_jac: jax.Array, teacher_jac: jax.Array, normalize: bool = False
) -> jax.Array:
    """Jacobian matching, prop. 1 second term, or eq. 10 with ``normalize=True``.

    ``normalize=False``: ``Σ (t - s)²`` over all non-batch axes, i.e.
    ``Σ_i ‖∇_x T^i - ∇_x S^i‖²`` for a full Jacobian ``(B, K, *D)`` or the single-output
    estimate for an input gradient ``(B, *D)``.

    ``normalize=True`` (eq. 10): ``‖s/‖s‖ - t/‖t‖‖²`` per example (norms over all
    non-batch axes; an all-zero Jacobian stays zero instead of producing NaN).

    Args:
      student_jac, teacher_jac: same shape, leading batch axis.
    Returns:
      ``(B,)``.
    """
    _check_same_shape("match_jacobians", student_jac, teacher_jac)
    if normalize:
        student_jac, teacher_jac = _safe_unit(student_jac), _safe_unit(teacher_jac)
    return _sum_non_batch(jnp.square(teacher_jac - student_jac))


def jacobian_norm(jac: jax.Array) -> jax.Array:
    """Jacobian-norm penalty of prop. 2: ``Σ_i ‖∇_x S^i‖²`` (sum of squares over non-batch axes).

    Args:
      jac: ``(B, ...)`` input gradient(s).
    Returns:
      ``(B,)``.
    """
    if jac.ndim < 1:
        raise ValueError("jacobian_norm: expected a leading batch axis, got a scalar")
    return _sum_non_batch(jnp.square(jac))


def soft_target_kl(student_logits: jax.Array, teacher_logits: jax.Array,
                   temperature: float = 1.0) -> jax.Array:
    """Soft-target distillation (Hinton et al., 2015): ``T² · KL(p_T ‖ q_T)``.

    ``T² Σ_i p_T^i (log p_T^i - log q_T^i)`` with ``p_T = softmax(t/T)`` (teacher) and
    ``q_T = softmax(s/T)`` (student). The ``T²`` is the usual scaling that keeps the
    gradients' size independent of ``T`` (they scale as ``1/T²`` otherwise). KL and the soft
    cross-entropy ``-T² Σ_i p_T^i log q_T^i`` (:func:`soft_target_cross_entropy`) differ by
    ``T²`` times the teacher's entropy, a constant for the student: same gradients; the
    KL is 0 for a student that equals the teacher. Computed from log-softmaxes (no
    ``log 0``: an output the teacher gives probability 0 contributes 0).

    Args:
      student_logits, teacher_logits: ``(B, K)``.
      temperature: ``T > 0``.
    Returns:
      ``(B,)``.
    """
    _check_same_shape("soft_target_kl", student_logits, teacher_logits)
    log_p = jax.nn.log_softmax(teacher_logits / temperature, axis=-1)
    log_q = jax.nn.log_softmax(student_logits / temperature, axis=-1)
    kl = jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)
    return (temperature * temperature) * kl


def soft_target_cross_entropy(student_logits: jax.Array, teacher_logits: jax.Array,
                              temperature: float = 1.0) -> jax.Array:
    """Soft-target cross-entropy ``-T² Σ_i p_T^i log q_T^i`` (eq. 2's left side for
    ``T = 1``): :func:`soft_target_kl` plus ``T²`` times the teacher's entropy.

    Args:
      student_logits, teacher_logits: ``(B, K)``.
      temperature: ``T > 0``.
    Returns:
      ``(B,)``.
    """
    _check_same_shape("soft_target_cross_entropy", student_logits, teacher_logits)
    p = jax.nn.softmax(teacher_logits / temperature, axis=-1)
    log_q = jax.nn.log_softmax(student_logits / temperature, axis=-1)
    return -(temperature * temperature) * jnp.sum(p * log_q, axis=-1)


def kd_jacobian(teacher_prob_jac: jax.Array, student_log_prob_jac: jax.Array) -> jax.Array:
    """Eq. 2's Jacobian term from log-probability rows: ``-Σ_i ∇_x T_s^iᵀ ∇_x log S_s^i``.

    The same quantity as :func:`ce_noise_cross_term` (``∇ log S^i = ∇S^i / S^i``), from the
    rows of ``log S_s`` instead of ``S_s`` and ``S_s``: no division by a probability that
    may be (or underflow to) zero. Not a distance: it is unbounded below (it rewards
    aligning the student's log-probability gradients with the teacher's probability
    gradients, at any scale) and 0 when either network is locally constant.

    Args:
      teacher_prob_jac: ``(B, ...)`` input gradients of the teacher's softmax outputs
        (e.g. ``(B, K, *D)`` all rows, or ``(B, *D)`` one estimator row).
      student_log_prob_jac: the same rows of the student's log-softmax outputs.
    Returns:
      ``(B,)``.
    """
    _check_same_shape("kd_jacobian", student_log_prob_jac, teacher_prob_jac)
    return -_sum_non_batch(teacher_prob_jac * student_log_prob_jac)


def ce_noise_penalty(student_prob_jac: jax.Array, student_probs: jax.Array,
                     targets: jax.Array) -> jax.Array:
    """Eq. 3 regulariser: ``Σ_i y_i ‖∇_x S_s^i‖² / (S_s^i)²`` (= ``Σ_i y_i ‖∇_x log S_s^i‖²``).

    The second-order term of cross-entropy under input noise (prop. 2's cross-entropy
    analogue). The paper found it unstable compared with the squared-error form and
    used squared error; it is offered for completeness. (A second-order expansion of
    ``log`` gives the coefficient ``σ²/2``; the paper writes ``σ²``; callers scale.)

    Args:
      student_prob_jac: ``(B, K, *D)`` input gradients of the student's softmax outputs.
      student_probs: ``(B, K)`` the student's softmax outputs.
      targets: ``(B, K)`` target distribution ``y`` (e.g. one-hot labels).
    Returns:
      ``(B,)``.
    """
    b, k = student_probs.shape
    if targets.shape != (b, k) or student_prob_jac.shape[:2] != (b, k):
        raise ValueError(
            f"ce_noise_penalty: expected jac (B, K, ...), probs (B, K), targets (B, K); got "
            f"{tuple(student_prob_jac.shape)}, {tuple(student_probs.shape)}, {tuple(targets.shape)}"
        )
    sq = jnp.sum(jnp.square(student_prob_jac), axis=tuple(range(2, student_prob_jac.ndim)))
    return jnp.sum(targets * sq / jnp.square(student_probs), axis=-1)


def ce_noise_cross_term(teacher_prob_jac: jax.Array, student_prob_jac: jax.Array,
                        student_probs: jax.Array) -> jax.Array:
    """Eq. 2 correction: ``-Σ_i ∇_x T_s^iᵀ ∇_x S_s^i / S_s^i``.

    The σ² term of soft-target cross-entropy under input noise (the paper found the
    cross-entropy forms unstable and used squared error). Multiply by σ² and add to
    the clean soft cross-entropy to approximate the noisy one.

    Args:
      teacher_prob_jac, student_prob_jac: ``(B, K, *D)`` input gradients of softmax outputs.
      student_probs: ``(B, K)``.
    Returns:
      ``(B,)``.
    """
    _check_same_shape("ce_noise_cross_term", student_prob_jac, teacher_prob_jac)
    if student_probs.shape != student_prob_jac.shape[:2]:
        raise ValueError(
            f"ce_noise_cross_term: probs {tuple(student_probs.shape)} do not match jac "
            f"{tuple(student_prob_jac.shape)}"
        )
    dot = jnp.sum(teacher_prob_jac * student_prob_jac,
                  axis=tuple(range(2, student_prob_jac.ndim)))
    return -jnp.sum(dot / student_probs, axis=-1)


def attention_map(features: jax.Array) -> jax.Array:
    """Attention map of eq. 8: ``A = Σ_c |Z_c|²``.

    Args:
      features: ``(B, H, W, C)``.
    Returns:
      ``(B, H, W)``.
    """
    if features.ndim != 4:
        raise ValueError(
            f"attention_map: expected (B, H, W, C) features, got {tuple(features.shape)}")
    return jnp.sum(jnp.square(features), axis=-1)


def match_attention(student_map: jax.Array, teacher_map: jax.Array,
                    variant: str = "paper") -> jax.Array:
    """Attention matching between maps of equal spatial size.

    ``variant="paper"`` (default, eq. 9): ``‖a_s/‖a_s‖ - a_t/‖a_t‖‖₂`` (not squared), maps
    flattened per example.

    ``variant="at_code"``: the attention-transfer reference code's form, the *mean* over
    pixels of the squared difference of the normalised maps. That code builds maps by a
    channel mean rather than a sum; after normalisation the two coincide, so both
    variants take maps from :func:`attention_map`.

    Both are invariant to the scale of either map and zero for equal maps.

    Args:
      student_map, teacher_map: ``(B, H, W)`` (any equal shapes with a batch axis).
    Returns:
      ``(B,)``.
    """
    if student_map.shape != teacher_map.shape:
        raise ValueError(
            f"match_attention: student attention map {tuple(student_map.shape)} and teacher "
            f"map {tuple(teacher_map.shape)} differ; match taps of equal spatial size"
        )
    diff = _safe_unit(student_map) - _safe_unit(teacher_map)
    sq = _sum_non_batch(jnp.square(diff))
    if variant == "paper":
        ok = sq > 0
        return jnp.where(ok, jnp.sqrt(jnp.where(ok, sq, 1.0)), 0.0)
    if variant == "at_code":
        return sq / (diff[0].size)
    raise ValueError(
        f"match_attention: unknown variant {variant!r}; valid: {ATTENTION_LOSS_VARIANTS}")
