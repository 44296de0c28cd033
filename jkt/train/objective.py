"""The loss composer: one objective for every method of the paper (app. 10.2).

``total = ce·CE + act·MatchActivations + jac·MatchJacobians + jac_norm·‖J‖²
          + att·MatchAttention + att_jac·MatchAttentionJacobians
          + kd·SoftTargetKL + kd_jac·Eq2Jacobian + act_noise·NoisyMatchActivations
          + ce_noise·NoisyCE``

All terms are per-example (``jkt.losses``) and averaged over the batch. The student is
differentiated in training mode (BatchNorm on batch statistics, as in the paper's
PyTorch-style code); the teacher in inference mode with its variables frozen.

The last four terms are the soft-target and noisy-input sides of §4's Claim: ``kd``
(Hinton et al.'s soft targets), ``kd_jac`` (eq. 2's Jacobian term), ``act_noise`` /
``ce_noise`` (prop. 1's / eq. 3's left sides: the losses on inputs with Gaussian noise).
``jac_norm_form="softmax"`` makes ``jac_norm`` eq. 3's right side (prop. 2's otherwise).

Noisy passes and BatchNorm: each noisy copy ``x + ξ`` of the batch is one more
training-mode pass of the student, normalised by *its own* batch statistics (as a
noise-augmented training batch is) and differentiated through them; the running averages
it would write are discarded, so they move once per step, by the clean pass, and the
clean terms are computed as without noise. (One batch of clean and noisy copies would
change the clean terms' statistics; the clean batch's statistics for the noisy copies
would need the model to take them as an input.) The first BatchNorm then sees a variance
larger by about ``σ²‖w‖²`` per channel: an O(σ²) change of the function that prop. 1,
stated for a fixed function, does not have (BatchNorm-free networks have none).

Two-head (LwF) students return ``{"target": ..., "source": ...}``: CE uses the target
head and the true labels; activation and Jacobian matching use the source head against
the teacher's outputs (§5). Single-head students use their one output for everything.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jkt import jacobian as jj
from jkt import losses, penalties
from jkt.penalties import ESTIMATORS
from jkt.ranges import check_int, check_number

TERMS = ("ce", "act", "jac", "jac_norm", "att", "att_jac", "kd", "kd_jac", "act_noise",
         "ce_noise")
# The six terms of the paper's methods; every weight matrix has their columns (a step of
# theirs is the program it was before the later terms were added).
PAPER_TERMS = TERMS[:6]
# Terms added later: a weight matrix has a column for one only where a run weights it.
ADDED_TERMS = TERMS[6:]
# Terms computed on noisy copies of the batch.
NOISE_TERMS = ("act_noise", "ce_noise")
TEACHER_TERMS = ("act", "jac", "att", "att_jac", "kd", "kd_jac", "act_noise")
# Forms of the Jacobian-norm penalty: prop. 2 on the logits (Table 2), eq. 3 on softmax
# outputs; the estimators the softmax form takes (eq. 3 weights the label's row only).
JAC_NORM_FORMS = ("logit", "softmax")
SOFTMAX_NORM_ESTIMATORS = ("label", "top", "full")


@dataclasses.dataclass(frozen=True)
class Objective:
    """Weights and options of the composed loss.

    Attributes:
      ce, act, jac, jac_norm, att, att_jac: non-negative weights of the paper's six terms.
      estimator: Jacobian estimator for ``jac``, ``jac_norm`` and ``kd_jac`` (see
        ``jkt.jacobian``): ``label`` (paper default), ``top`` (teacher's top output),
        ``random`` / ``rademacher`` / ``sphere`` (unbiased output-space probes), ``jvp``
        (unbiased input-space probe, forward mode), ``full`` (all K outputs).
      normalize: match Jacobians in the eq.-10 normalised form.
      att_pairs: ``((student_tap, teacher_tap), ...)`` attention-matched feature pairs.
      att_variant: ``"paper"`` (eq. 9) or ``"at_code"``.
      att_jac_pair: ``(student_tap, teacher_tap)`` for the attention-map Jacobian (eq. 10).
      pool_fraction: pooling window as a fraction of the feature size (0.2 = size/5);
        ``None`` for no pooling, 1.0 for global pooling (Table 5).
      kd: weight of soft-target distillation (Hinton et al., 2015): per example ``T² Σ_i
        p_T^i (log p_T^i - log q_T^i)``, ``T²`` times the KL of the teacher's ``p_T =
        softmax(t/T)`` to the student's ``q_T = softmax(s/T)`` (matched outputs, as for
        ``act``; ``T²`` as usual keeps the gradients' size). The soft cross-entropy
        ``-T² Σ_i p_T^i log q_T^i`` differs by ``T²`` times the teacher's entropy, a
        constant (same gradients; the KL is 0 at a perfect match).
      kd_jac: weight of eq. 2's Jacobian term on the softened outputs ``T_s = softmax(t/T)``,
        ``S_s = softmax(s/T)``: per example ``-T² Σ_i ∇_x T_s^iᵀ ∇_x S_s^i / S_s^i``
        (without the σ², scaled by ``T²`` like ``kd``), over the ``estimator``'s outputs:
        all K (``full``), the true label (``label``), the teacher's arg-max (``top``), or
        unbiased probes of the full sum. Not a distance: it is unbounded below (it rewards
        aligning the two networks' output gradients, at any scale) and is meant beside
        ``kd``; the paper calls the cross-entropy forms "more unstable" than squared error.
      act_noise: weight of prop. 1's left side, activation matching on noisy inputs:
        per example the mean over ``noise_draws`` draws of ``Σ_i (T^i(x+ξ) - S^i(x+ξ))²``,
        ``ξ ~ N(0, σ² I)`` (``E[act_noise] = act + σ² · (full jac) + O(σ⁴)``).
      ce_noise: weight of eq. 3's left side, cross-entropy with the labels on noisy inputs
        (the same draws), mean over the draws.
      temperature: ``T > 0`` of ``kd`` and ``kd_jac`` (default 4).
      jac_norm_form: ``"logit"`` (default, Table 2: ``‖∇_x logit_y‖²`` for ``label``, prop.
        2) or ``"softmax"`` (eq. 3 at ``T = 1``: ``Σ_i y^i ‖∇_x S_s^i‖² / (S_s^i)² =
        ‖∇_x log softmax_y‖²`` for one-hot labels), with estimator ``label``, ``full`` (eq.
        3 weights the label's row alone) or ``top`` (the teacher's, else the student's,
        arg-max for the label); see :func:`softmax_jacobian_terms`.
      noise_sigma: ``σ >= 0`` of the noisy terms, in the units of the normalised input x
        (as Table 2's noise).
      noise_draws: ``M >= 1`` noisy copies of the batch per step (``M`` extra student, and
        for ``act_noise`` teacher, forward passes).
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
    kd: float = 0.0
    kd_jac: float = 0.0
    act_noise: float = 0.0
    ce_noise: float = 0.0
    temperature: float = 4.0
    jac_norm_form: str = "logit"
    noise_sigma: float = 0.1
    noise_draws: int = 1

    def __post_init__(self):
        for term in TERMS:
            w = getattr(self, term)
            if (not isinstance(w, int | float) or isinstance(w, bool) or not math.isfinite(w)
                    or not w >= 0):
                raise ValueError(f"loss weight {term}={w!r} must be a non-negative finite "
                                 "number")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"unknown Jacobian estimator {self.estimator!r}; valid: {ESTIMATORS}")
        if self.att_variant not in losses.ATTENTION_LOSS_VARIANTS:
            raise ValueError(f"unknown attention variant {self.att_variant!r}; valid: "
                             f"{losses.ATTENTION_LOSS_VARIANTS}")
        if self.att > 0 and not self.att_pairs:
            raise ValueError("att > 0 needs att_pairs (student_tap, teacher_tap)")
        if self.att_jac > 0 and self.att_jac_pair is None:
            raise ValueError("att_jac > 0 needs att_jac_pair (student_tap, teacher_tap)")
        check_number("objective temperature", self.temperature, 0, low_open=True)
        if self.jac_norm_form not in JAC_NORM_FORMS:
            raise ValueError(f"unknown jac_norm_form {self.jac_norm_form!r}; valid: "
                             f"{', '.join(JAC_NORM_FORMS)}")
        if (self.jac_norm > 0 and self.jac_norm_form == "softmax"
                and self.estimator not in SOFTMAX_NORM_ESTIMATORS):
            raise ValueError("jac_norm_form='softmax' (eq. 3) penalises the true label's output "
                             "only (label-free: the top output): use estimator label, top or "
                             f"full, not {self.estimator!r}")
        check_number("objective noise_sigma", self.noise_sigma, 0)
        check_int("objective noise_draws", self.noise_draws, 1)
        if all(getattr(self, t) == 0 for t in TERMS):
            raise ValueError("every loss weight is zero: nothing to train")

    @property
    def needs_teacher(self) -> bool:
        return any(getattr(self, t) > 0 for t in TEACHER_TERMS)

    @property
    def noisy(self) -> bool:
        """Whether a step runs the student on noisy copies of the batch."""
        return any(getattr(self, t) > 0 for t in NOISE_TERMS)

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
                    differentiate=((o.jac > 0 or o.jac_norm > 0 or o.kd_jac > 0) and reverse)
                    or o.att_jac > 0)
    if teacher_fn is None or not o.needs_teacher:
        return s, None
    t = _frozen(jj.run_once(_teacher_forward(o, teacher_fn, s), x,
                            differentiate=((o.jac > 0 or o.kd_jac > 0) and reverse)
                            or o.att_jac > 0))
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
    if o.kd > 0:
        terms["kd"] = losses.soft_target_kl(s.logits, t.logits, o.temperature)
    return terms


def _jacobian_terms(o: Objective, s: jj.Pass, t: jj.Pass | None, x, labels, key) -> dict:
    """``jac`` (prop. 1, or eq. 10 with ``normalize``) and ``jac_norm`` (prop. 2) by
    :func:`jkt.penalties.jacobian_terms`, the core of the public entry point too; the
    softmax-output terms (eq. 3's ``jac_norm``, eq. 2's ``kd_jac``) by
    :func:`softmax_jacobian_terms`, from the same estimator probe."""
    softmax_norm = o.jac_norm > 0 and o.jac_norm_form == "softmax"
    if not (o.jac > 0 or o.jac_norm > 0 or o.kd_jac > 0):
        return {}
    if ((o.estimator == "label" or (o.estimator == "full" and softmax_norm))
            and t is not None and t.logits.shape[1] != s.target.shape[1]):
        raise ValueError("the 'label' estimator needs student and teacher in the label "
                         "space of the labels; use 'top' for transfer (two-head) runs")
    terms = {}
    if o.jac > 0 or (o.jac_norm > 0 and not softmax_norm):
        terms = penalties.jacobian_terms(o.estimator, s, t, x, labels, key,
                                         normalize=o.normalize, match=o.jac > 0,
                                         norm=o.jac_norm > 0 and not softmax_norm)
    if softmax_norm or o.kd_jac > 0:
        terms.update(softmax_jacobian_terms(o.estimator, s, t, x, labels, key,
                                            norm=softmax_norm, soft_match=o.kd_jac > 0,
                                            temperature=o.temperature))
    return terms


def softmax_jacobian_terms(estimator: str, student: jj.Pass, teacher: jj.Pass | None, x,
                           labels, key, *, norm: bool = False, soft_match: bool = False,
                           temperature: float = 1.0) -> dict:
    """Per-example Jacobian terms of the softmax outputs, their rows pullbacks of the
    logits (:func:`jkt.jacobian.softmax_derivative`) from the estimator's probe of
    :func:`jkt.penalties.jacobian_terms` (the teacher's logits', else the student's).

    ``norm``: ``"jac_norm"`` in eq. 3's form, ``Σ_i y^i ‖∇_x S^i‖² / (S^i)² =
    ‖∇_x log softmax(s)_c‖²`` (T = 1) of one output ``c``: the label (``label``; ``full``,
    eq. 3's exact value for one-hot labels, is that one row) or the arg-max (``top``).

    ``soft_match``: ``"kd_jac"``, eq. 2's ``-T² Σ_i ∇_x T_s^iᵀ ∇_x S_s^i / S_s^i`` for
    ``T_s = softmax(t/T)``, ``S_s = softmax(s/T)``: all K outputs (``full``), the label's
    or the teacher's arg-max's alone (``label``, ``top``), or unbiased for the full sum
    (``random`` / ``rademacher`` / ``sphere``: ``⟨Σ_i v_i ∇T_s^i, Σ_i v_i ∇ log S_s^i⟩``;
    ``jvp``: ``Σ_i (∇T_s^i·u)(∇ log S_s^i·u)``). The rows of ``log S_s`` replace
    ``∇S_s^i / S_s^i`` (no division by a probability), and ``T²`` cancels the two ``1/T``
    of the derivatives: no ``T`` but the softmax's. No gradient reaches the teacher.
    """
    if norm and estimator not in SOFTMAX_NORM_ESTIMATORS:
        raise ValueError(f"eq. 3's norm takes estimator label, top or full, not {estimator!r}")
    ref_logits = teacher.logits if teacher is not None else student.logits
    rows = penalties.ESTIMATOR_ROWS[estimator](ref_logits, labels, key, x)
    terms = {}
    if norm:
        one = penalties.ESTIMATOR_ROWS["label"](ref_logits, labels, key, x) if (
            estimator == "full") else rows
        log_probs = one(student, jj.softmax_derivative(student.logits, log=True))
        terms["jac_norm"] = losses.jacobian_norm(log_probs)
    if soft_match:
        t_map = jj.softmax_derivative(jax.lax.stop_gradient(teacher.logits), temperature)
        s_map = jj.softmax_derivative(student.logits, temperature, log=True)
        t_probs = jax.lax.stop_gradient(rows(teacher, t_map))
        terms["kd_jac"] = losses.kd_jacobian(t_probs, rows(student, s_map))
    return terms


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


def _noise_terms(o: Objective, student_fn: Callable, teacher_fn: Callable | None, x, labels,
                 key) -> dict:
    """``act_noise`` (prop. 1's left side) and ``ce_noise`` (eq. 3's left side): the mean
    over ``o.noise_draws`` noisy copies ``x + ξ``, ``ξ ~ N(0, σ² I)``, of activation
    matching and cross-entropy. Each copy is one more training-mode pass of the student
    on its own batch statistics, whose new statistics are discarded (module docstring),
    and, for ``act_noise``, one inference-mode pass of the frozen teacher."""
    if not o.noisy:
        return {}

    def one_draw(k):
        z = x + o.noise_sigma * jax.random.normal(k, x.shape, x.dtype)
        (out, _), _ = student_fn(z)  # the noisy pass's new batch statistics are dropped
        target, match = _split_heads(out)
        terms = {}
        if o.act_noise > 0:
            t_logits = jax.lax.stop_gradient(teacher_fn(z)[0])
            terms["act_noise"] = losses.match_activations(match, t_logits)
        if o.ce_noise > 0:
            terms["ce_noise"] = losses.cross_entropy(target, labels)
        return terms

    keys = jax.random.split(key, o.noise_draws)
    if o.noise_draws == 1:
        return one_draw(keys[0])
    return jax.tree.map(lambda v: jnp.mean(v, axis=0), jax.vmap(one_draw)(keys))


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
        taps in ``objective.student_taps``; ``aux`` (e.g. new batch stats) of the clean
        pass at ``x`` is passed through untouched (the noisy terms call ``student_fn``
        again on noisy copies of ``x`` and drop their ``aux``).
      teacher_fn: ``x -> (logits, features)`` in inference mode, or ``None`` when the
        objective needs no teacher.
      x: ``(B, H, W, C)`` normalised inputs (the variable all Jacobians are taken in).
      labels: ``(B,)`` integer labels of the target head.
      key: PRNG key for random estimators and, split off it when a noisy term is active
        (the estimators then get the other half), the input noise.
      weights: optional ``{term: scalar}`` replacing the objective's weights in the total
        (may be traced, e.g. one row of a weight matrix under ``jax.vmap`` over runs);
        which terms are *computed* is still decided by ``objective``.
    Returns:
      ``(total, (terms, stats, aux))``: ``total`` scalar; ``terms`` dict of the batch-mean
      of every *active* term (unweighted); ``stats`` accuracy and, with a teacher,
      student-teacher top-1 agreement; ``aux`` from ``student_fn``.
    """
    o = objective
    if o.noisy:
        key, noise_key = jax.random.split(key)
    s, t = _networks(o, student_fn, teacher_fn, x)
    terms = {**_output_terms(o, s, t, labels), **_jacobian_terms(o, s, t, x, labels, key),
             **_attention_terms(o, s, t)}
    if o.noisy:
        terms.update(_noise_terms(o, student_fn, teacher_fn, x, labels, noise_key))
    terms = {k: jnp.mean(v) for k, v in terms.items()}
    w = {term: getattr(o, term) for term in TERMS} if weights is None else weights
    total = sum(w[k] * v for k, v in terms.items())
    stats = {"accuracy": jnp.mean(jnp.argmax(s.target, -1) == labels)}
    if t is not None:
        stats["agreement"] = jnp.mean(jnp.argmax(s.logits, -1) == jnp.argmax(t.logits, -1))
    return total, (terms, stats, s.aux)
