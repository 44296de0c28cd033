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
from jkt import losses

ESTIMATORS = ("label", "top", "random", "rademacher", "jvp", "full")
TERMS = ("ce", "act", "jac", "jac_norm", "att", "att_jac")


@dataclasses.dataclass(frozen=True)
class Objective:
    """Weights and options of the composed loss.

    Attributes:
      ce, act, jac, jac_norm, att, att_jac: non-negative weights of the six terms.
      estimator: Jacobian estimator for ``jac`` and ``jac_norm`` (see ``jkt.jacobian``):
        ``label`` (paper default), ``top`` (teacher's top output), ``random`` /
        ``rademacher`` (unbiased output-space probes), ``jvp`` (unbiased input-space
        probe, forward mode), ``full`` (all K outputs).
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


# Named methods of Tables 1-3 (app. 10.2 weights; MIT runs scale all weights by 10).
METHODS: dict[str, Objective] = {
    "ce": Objective(ce=1),
    "ce+act": Objective(ce=1, act=1),
    "ce+jac": Objective(ce=1, jac=1),
    "ce+act+jac": Objective(ce=1, act=1, jac=1),
    "act": Objective(ce=0, act=1),
    "act+jac": Objective(ce=0, act=1, jac=1),
}
TABLE1_METHODS = tuple(METHODS)
METHOD_LABELS = {
    "ce": "Cross-Entropy (CE) training",
    "ce+act": "CE + match activations",
    "ce+jac": "CE + match Jacobians",
    "ce+act+jac": "CE + match {activations + Jacobians}",
    "act": "Match activations only",
    "act+jac": "Match {activations + Jacobians}",
}


def method_objective(name: str, **overrides) -> Objective:
    """The :class:`Objective` of a named method, with field overrides (e.g. ``estimator``)."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(METHODS)}")
    return dataclasses.replace(METHODS[name], **overrides)


def _split_heads(out):
    """(target logits, logits matched against the teacher) of a model output."""
    if isinstance(out, dict):
        return out["target"], out["source"]
    return out, out


def _zeros_like(tree):
    return jax.tree.map(jnp.zeros_like, tree)


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
    if o.needs_teacher and teacher_fn is None:
        raise ValueError("this objective matches a teacher, but no teacher was given")
    need_s_grad = ((o.jac > 0 or o.jac_norm > 0) and o.estimator != "jvp") or o.att_jac > 0
    need_t_grad = (o.jac > 0 and o.estimator != "jvp") or o.att_jac > 0

    if o.att_jac > 0:
        s_tap, t_tap = o.att_jac_pair

    def s_out(z):
        (out, feats), aux = student_fn(z)
        extra = {}
        if o.att_jac > 0:
            window = jj.pooling_window(feats[s_tap].shape[1:3], o.pool_fraction)
            extra["pooled"] = jj.pooled_attention(feats[s_tap], window)
        return (out, feats, extra), aux

    if need_s_grad:
        s_primal, s_pull, aux = jax.vjp(s_out, x, has_aux=True)
    else:
        s_primal, aux = s_out(x)
    out, s_feats, s_extra = s_primal
    target_logits, match_logits = _split_heads(out)

    t_logits = t_feats = None
    t_pull = None
    if teacher_fn is not None and o.needs_teacher:
        def t_out(z):
            logits, feats = teacher_fn(z)
            extra = {}
            if o.att_jac > 0:
                jj.check_same_spatial(s_feats[s_tap].shape, feats[t_tap].shape)
                window = jj.pooling_window(feats[t_tap].shape[1:3], o.pool_fraction)
                extra["pooled"] = jj.pooled_attention(feats[t_tap], window)
            return logits, feats, extra

        if need_t_grad:
            t_primal, t_pull = jax.vjp(t_out, x)
        else:
            t_primal = t_out(x)
        t_logits, t_feats, t_extra = jax.lax.stop_gradient(t_primal)
        if match_logits.shape != t_logits.shape:
            raise ValueError(
                f"student outputs matched against the teacher have shape {match_logits.shape}, "
                f"teacher logits {t_logits.shape}: for a different label space use a two-head "
                "student (source_classes=teacher classes)"
            )

    def s_vjp(cot_logits=None, cot_pooled=None):
        cot_out = _zeros_like(out)
        if cot_logits is not None:
            if isinstance(out, dict):
                cot_out = {**cot_out, "source": cot_logits}
            else:
                cot_out = cot_logits
        cot_extra = _zeros_like(s_extra)
        if cot_pooled is not None:
            cot_extra = {"pooled": cot_pooled}
        return s_pull((cot_out, _zeros_like(s_feats), cot_extra))[0]

    def t_vjp(cot_logits=None, cot_pooled=None):
        cot = (jnp.zeros_like(t_logits) if cot_logits is None else cot_logits,
               _zeros_like(t_feats), _zeros_like(t_extra))
        if cot_pooled is not None:
            cot = (cot[0], cot[1], {"pooled": cot_pooled})
        return jax.lax.stop_gradient(t_pull(cot)[0])

    terms = {}
    if o.ce > 0:
        terms["ce"] = losses.cross_entropy(target_logits, labels)
    if o.act > 0:
        terms["act"] = losses.match_activations(match_logits, t_logits)

    if o.jac > 0 or o.jac_norm > 0:
        ref_logits = t_logits if t_logits is not None else match_logits
        if o.estimator == "full":
            basis = jnp.broadcast_to(
                jnp.eye(match_logits.shape[1], dtype=match_logits.dtype)[:, None],
                (match_logits.shape[1], *match_logits.shape))
            s_jac = jnp.swapaxes(jax.vmap(lambda v: s_vjp(v))(basis), 0, 1)
            t_jac = (jnp.swapaxes(jax.vmap(lambda v: t_vjp(v))(basis), 0, 1)
                     if o.jac > 0 else None)
        elif o.estimator == "jvp":
            u = jj.input_tangent(key, x)
            s_jac = jax.jvp(lambda z: _split_heads(s_out(z)[0][0])[1], (x,), (u,))[1]
            t_jac = (jax.lax.stop_gradient(jax.jvp(lambda z: teacher_fn(z)[0], (x,), (u,))[1])
                     if o.jac > 0 else None)
        else:
            if o.estimator == "label" and t_logits is not None and \
                    t_logits.shape[1] != target_logits.shape[1]:
                raise ValueError("the 'label' estimator needs student and teacher in the label "
                                 "space of the labels; use 'top' for transfer (two-head) runs")
            v = jj.select_cotangent(ref_logits, o.estimator, labels=labels, key=key)
            s_jac = s_vjp(v)
            t_jac = t_vjp(v) if o.jac > 0 else None
        if o.jac > 0:
            terms["jac"] = losses.match_jacobians(s_jac, t_jac, normalize=o.normalize)
        if o.jac_norm > 0:
            terms["jac_norm"] = losses.jacobian_norm(s_jac)

    if o.att > 0:
        att = 0.0
        for s_name, t_name in o.att_pairs:
            jj.check_same_spatial(s_feats[s_name].shape, t_feats[t_name].shape)
            att = att + losses.match_attention(
                losses.attention_map(s_feats[s_name]), losses.attention_map(t_feats[t_name]),
                o.att_variant)
        terms["att"] = att
    if o.att_jac > 0:
        pixel = jj.argmax_pixel(t_extra["pooled"])
        s_g = s_vjp(cot_pooled=pixel)
        t_g = t_vjp(cot_pooled=pixel)
        terms["att_jac"] = losses.match_jacobians(s_g, t_g, normalize=True)

    terms = {k: jnp.mean(v) for k, v in terms.items()}
    w = {t: getattr(o, t) for t in TERMS} if weights is None else weights
    total = sum(w[k] * v for k, v in terms.items())
    stats = {"accuracy": jnp.mean(jnp.argmax(target_logits, -1) == labels)}
    if t_logits is not None:
        stats["agreement"] = jnp.mean(jnp.argmax(match_logits, -1) == jnp.argmax(t_logits, -1))
    return total, (terms, stats, aux)
