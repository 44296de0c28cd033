"""The loss composer: one objective for every method of the paper (app. 10.2).

``total = ce·CE + act·MatchActivations + jac·MatchJacobians + jac_norm·‖J‖²
          + att·MatchAttention + att_jac·MatchAttentionJacobians``

All terms are per-example (``jkt.losses``) and averaged over the batch. The student is
differentiated in training mode (BatchNorm on batch statistics, as in the paper's
PyTorch-style code); the teacher in inference mode with its variables frozen.

Two-head (LwF) students return ``{"target": ..., "source": ...}``: CE uses the target
head and the true labels; activation and Jacobian matching use the source head against
the teacher's outputs (§5). Single-head students use their one output for everything.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jkt import jacobian as jj
from jkt import losses, penalties
from jkt.penalties import ESTIMATORS

TERMS = ("ce", "act", "jac", "jac_norm", "att", "att_jac")


@dataclasses.dataclass(frozen=True)
class Objective:
    """Weights and options of the composed loss.

    Attributes:
      ce, act, jac, jac_norm, att, att_jac: non-negative weights of the six terms.
      estimator: Jacobian estimator for ``jac`` and ``jac_norm`` (see ``jkt.jacobian``):
        ``label`` (paper default), ``top`` (teacher's top output), ``random`` /
        ``rademacher`` / ``sphere`` (unbiased output-space probes), ``jvp`` (unbiased
        input-space probe, forward mode), ``full`` (all K outputs).
      normalize: match Jacobians in the eq.-10 normalised form.
      att_pairs: ``((student_tap, teacher_tap), ...)`` attention-matched feature pairs.
      att_variant: ``"paper"`` (eq. 9) or ``"at_code"``.
      att_jac_pair: ``(student_tap, teacher_tap)`` for the attention-map Jacobian (eq. 10).
      pool_fraction: pooling window as a fraction of the feature size (0.2 = size/5);
        ``None`` for no pooling, 1.0 for global pooling (Table 5).
    """

    ce: float = 1.0
    act: float = 0.0
    jac: float = 0.0
    jac_norm: float = 0.0
    att: float = 0.0
    att_jac: float = 0.0
    estimator: str = "label"
    normalize: bool = False
    att_pairs: tuple[tuple[str, str], ...] = ()
    att_variant: str = "paper"
    att_jac_pair: tuple[str, str] | None = None
    pool_fraction: float | None = 0.2

    def __post_init__(self):
        for term in TERMS:
            w = getattr(self, term)
            if not isinstance(w, int | float) or not w >= 0:
                raise ValueError(f"loss weight {term}={w!r} must be a non-negative number")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"unknown Jacobian estimator {self.estimator!r}; valid: {ESTIMATORS}")
        if self.att_variant not in losses.ATTENTION_LOSS_VARIANTS:
            raise ValueError(f"unknown attention variant {self.att_variant!r}; valid: "
                             f"{losses.ATTENTION_LOSS_VARIANTS}")
        if self.att > 0 and not self.att_pairs:
            raise ValueError("att > 0 needs att_pairs (student_tap, teacher_tap)")
        if self.att_jac > 0 and self.att_jac_pair is None:
            raise ValueError("att_jac > 0 needs att_jac_pair (student_tap, teacher_tap)")
        if all(getattr(self, t) == 0 for t in TERMS):
            raise ValueError("every loss weight is zero: nothing to train")

    @property
    def needs_teacher(self) -> bool:
        return any(getattr(self, t) > 0 for t in ("act", "jac", "att", "att_jac"))

    @property
    def student_taps(self) -> tuple[str, ...]:
        taps = [s for s, _ in self.att_pairs]
        if self.att_jac_pair:
            taps.append(self.att_jac_pair[0])
        return tuple(dict.fromkeys(taps))

    @property
    def teacher_taps(self) -> tuple[str, ...]:
        taps = [t for _, t in self.att_pairs]
        if self.att_jac_pair:
            taps.append(self.att_jac_pair[1])
        return tuple(dict.fromkeys(taps))


def _split_heads(out):
    """(target logits, logits matched against the teacher) of a model output."""
    if isinstance(out, dict):
        return out["target"], out["source"]
    return out, out


def _pooled(features: jax.Array, fraction: float | None) -> jax.Array:
    return jj.pooled_attention(features, jj.pooling_window(features.shape[1:3], fraction))


def _student_forward(o: Objective, student_fn: Callable) -> Callable:
    def forward(z):
        (out, features), aux = student_fn(z)
        target, match = _split_heads(out)
        outs = {"logits": match}
        if o.att_jac > 0:
            outs["pooled"] = _pooled(features[o.att_jac_pair[0]], o.pool_fraction)
        return outs, (target, features, aux)

    return forward


def _teacher_forward(o: Objective, teacher_fn: Callable, student: jj.Pass) -> Callable:
    def forward(z):
        logits, features = teacher_fn(z)
        outs = {"logits": logits}
        if o.att_jac > 0:
            s_tap, t_tap = o.att_jac_pair
            jj.check_same_spatial(student.features[s_tap].shape, features[t_tap].shape)
            outs["pooled"] = _pooled(features[t_tap], o.pool_fraction)
        return outs, (logits, features, None)

    return forward


def _frozen(net: jj.Pass) -> jj.Pass:
    """The teacher's outputs behind ``stop_gradient`` (its Jacobian rows are stopped where
    they are taken: a stopped ``logits_fn`` would have a zero forward-mode derivative)."""
    return net._replace(logits=jax.lax.stop_gradient(net.logits),
                        features=jax.lax.stop_gradient(net.features),
                        pooled=jax.lax.stop_gradient(net.pooled))


def _networks(o: Objective, student_fn, teacher_fn, x) -> tuple[jj.Pass, jj.Pass | None]:
    """The student and (if the objective matches one) the frozen teacher at ``x``, each
    differentiated once if any of its Jacobians is needed."""
    if o.needs_teacher and teacher_fn is None:
        raise ValueError("this objective matches a teacher, but no teacher was given")
    reverse = penalties.reverse_mode(o.estimator)
    s = jj.run_once(_student_forward(o, student_fn), x,
                    differentiate=((o.jac > 0 or o.jac_norm > 0) and reverse) or o.att_jac > 0)
    if teacher_fn is None or not o.needs_teacher:
        return s, None
    t = _frozen(jj.run_once(_teacher_forward(o, teacher_fn, s), x,
                            differentiate=(o.jac > 0 and reverse) or o.att_jac > 0))
    if s.logits.shape != t.logits.shape:
        raise ValueError(
            f"student outputs matched against the teacher have shape {s.logits.shape}, "
            f"teacher logits {t.logits.shape}: for a different label space use a two-head "
            "student (source_classes=teacher classes)")
    return s, t


def _output_terms(o: Objective, s: jj.Pass, t: jj.Pass | None, labels) -> dict:
    terms = {}
    if o.ce > 0:
        terms["ce"] = losses.cross_entropy(s.target, labels)
    if o.act > 0:
        terms["act"] = losses.match_activations(s.logits, t.logits)
    return terms


def _jacobian_terms(o: Objective, s: jj.Pass, t: jj.Pass | None, x, labels, key) -> dict:
    """``jac`` (prop. 1, or eq. 10 with ``normalize``) and ``jac_norm`` (prop. 2), by
    :func:`jkt.penalties.jacobian_terms`, the core of the public entry point too."""
    if not (o.jac > 0 or o.jac_norm > 0):
        return {}
    if o.estimator == "label" and t is not None and t.logits.shape[1] != s.target.shape[1]:
        raise ValueError("the 'label' estimator needs student and teacher in the label "
                         "space of the labels; use 'top' for transfer (two-head) runs")
    return penalties.jacobian_terms(o.estimator, s, t, x, labels, key, normalize=o.normalize,
                                    match=o.jac > 0, norm=o.jac_norm > 0)


def _attention_terms(o: Objective, s: jj.Pass, t: jj.Pass | None) -> dict:
    """``att`` (eq. 9, summed over the pairs) and ``att_jac`` (eq. 10 on the input
    gradients of the teacher's arg-max pooled-attention pixel, §5.2.1)."""
    terms = {}
    if o.att > 0:
        att = 0.0
        for s_tap, t_tap in o.att_pairs:
            jj.check_same_spatial(s.features[s_tap].shape, t.features[t_tap].shape)
            att = att + losses.match_attention(
                losses.attention_map(s.features[s_tap]), losses.attention_map(t.features[t_tap]),
                o.att_variant)
        terms["att"] = att
    if o.att_jac > 0:
        pixel = jj.argmax_pixel(t.pooled)
        t_grad = jax.lax.stop_gradient(t.pulls["pooled"](pixel))
        terms["att_jac"] = losses.match_jacobians(s.pulls["pooled"](pixel), t_grad,
                                                  normalize=True)
    return terms


def compose_losses(
    objective: Objective,
    student_fn: Callable,
    teacher_fn: Callable | None,
    x: jax.Array,
    labels: jax.Array,
    key: jax.Array,
    weights=None,
):
    """Evaluates every weighted term of ``objective`` on one batch.

    Each network runs forward once (:func:`jkt.jacobian.run_once`); every Jacobian of it
    (estimator rows, the attention pixel's gradient) is a pullback of that pass.

    Args:
      objective: weights and options.
      student_fn: ``x -> ((outputs, features), aux)``, the student in training mode;
        ``outputs`` is logits ``(B, K)`` or the two-head dict, ``features`` a dict of the
        taps in ``objective.student_taps``; ``aux`` (e.g. new batch stats) is passed
        through untouched.
      teacher_fn: ``x -> (logits, features)`` in inference mode, or ``None`` when the
        objective needs no teacher.
      x: ``(B, H, W, C)`` normalised inputs (the variable all Jacobians are taken in).
      labels: ``(B,)`` integer labels of the target head.
      key: PRNG key for random estimators.
      weights: optional ``{term: scalar}`` replacing the objective's weights in the total
        (may be traced, e.g. one row of a weight matrix under ``jax.vmap`` over runs);
        which terms are *computed* is still decided by ``objective``.
    Returns:
      ``(total, (terms, stats, aux))``: ``total`` scalar; ``terms`` dict of the batch-mean
      of every *active* term (unweighted); ``stats`` accuracy and, with a teacher,
      student-teacher top-1 agreement; ``aux`` from ``student_fn``.
    """
    o = objective
    s, t = _networks(o, student_fn, teacher_fn, x)
    terms = {**_output_terms(o, s, t, labels), **_jacobian_terms(o, s, t, x, labels, key),
             **_attention_terms(o, s, t)}
    terms = {k: jnp.mean(v) for k, v in terms.items()}
    w = {term: getattr(o, term) for term in TERMS} if weights is None else weights
    total = sum(w[k] * v for k, v in terms.items())
    stats = {"accuracy": jnp.mean(jnp.argmax(s.target, -1) == labels)}
    if t is not None:
        stats["agreement"] = jnp.mean(jnp.argmax(s.logits, -1) == jnp.argmax(t.logits, -1))
    return total, (terms, stats, s.aux)
