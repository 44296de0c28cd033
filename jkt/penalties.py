"""Jacobian penalties to add to your own loss, in your own jitted training step.

``jacobian_penalties(student, x, labels, teacher=..., estimator=...)`` runs the student
forward *once* at the batch ``x`` ``(B, *D)``, takes the Jacobian rows the estimator asks
for as pullbacks of that pass, and returns batch means of

- ``"jac"``: Jacobian matching against a frozen teacher, prop. 1's
  ``Σ_i ‖∇_x T^i - ∇_x S^i‖²`` (or its eq.-10 normalised form with ``normalize=True``);
- ``"jac_norm"``: the Jacobian-norm penalty of prop. 2, ``Σ_i ‖∇_x S^i‖²`` (no teacher:
  what input noise of variance σ² adds, times σ², to a squared-error loss);

together with the student's logits ``(B, K)`` of that same pass, so that your
cross-entropy needs no second forward pass. Every function here is pure and traceable:
call it inside your ``jax.jit`` / ``jax.value_and_grad`` (Linen, plain functions) or
``nnx.jit`` / ``nnx.value_and_grad`` (NNX).

The engine's loss composer computes its ``jac`` and ``jac_norm`` terms with the same core,
:func:`jacobian_terms`, on the same record of a network pass (:class:`jkt.jacobian.Pass`).

Students (differentiated, whatever mode you call them in):

- a function ``x -> logits (B, K)``, or ``x -> (logits, aux)`` with ``has_aux=True``;
- :class:`Linen` ``(module, variables, **apply_kwargs)``: ``module.apply(variables, x,
  **apply_kwargs)``; with ``mutable=[...]`` (BatchNorm in training mode) the updated
  collections come back as ``Penalties.aux``;
- an ``nnx.Module``, called as ``module(x)`` in its current mode (``.train()`` /
  ``.eval()``). Its state (BatchNorm statistics, RNG counts) is updated in place exactly
  once, by the one forward pass whose pullback gives the Jacobian rows; the ``jvp``
  estimator's forward-mode pass re-runs the network from the *same* starting state (same
  dropout masks, same batch statistics) and its state updates are discarded. (A plain
  ``jax.vjp`` through a module in training mode raises ``TraceContextError``: BatchNorm
  writes its statistics inside the transform. Here the module is split into a pure
  ``x -> (logits, new state)`` function of fresh copies of its variables, and the new
  state is written back after the transform.)

Teachers (frozen: no gradient reaches them; each runs forward once):

- a function ``x -> logits``, or :class:`Linen` without ``mutable`` (in the mode its
  apply options give; jkt models default to ``train=False``);
- an ``nnx.Module``: a copy in ``.eval()`` mode runs (BatchNorm on running averages, no
  dropout); the module itself is not touched;
- a teacher artifact, :class:`jkt.models.Teacher` (``jkt.checkpoint.restore_teacher``;
  inference mode). ``x`` is fed to it as is; pass
  ``input_mean``/``input_std`` (the normalisation of ``x``) to renormalise ``x`` to the
  teacher's own statistics, as the engine does.

With BatchNorm in training mode the examples of a batch are coupled through the batch
statistics; every "row" is then the input gradient of the summed objective (see
:mod:`jkt.jacobian`), exactly what the engine and the paper's PyTorch-style code compute.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jkt import jacobian as jj
from jkt import losses
from jkt.data.transforms import renormalizer
from jkt.models.teacher import Teacher

ESTIMATORS = ("label", "top", "random", "rademacher", "sphere", "jvp", "full")
KEYED_ESTIMATORS = ("random", "rademacher", "sphere", "jvp")
PENALTY_TERMS = ("jac", "jac_norm")


# Jacobian estimators: estimator -> (probe of the batch) -> (pass -> its Jacobian rows).
# Student and teacher rows come from the same probe, so their difference estimates
# prop. 1's Σ_i ‖∇_x T^i - ∇_x S^i‖² (all i for random, rademacher, sphere, jvp, full).


def _one_row(mode: str) -> Callable:
    """One reverse pass with the output-space cotangent ``v`` of ``mode``: rows ``Jᵀv``
    of shape ``(B, *D)``."""

    def rows_of(ref_logits, labels, key, x):
        v = jj.select_cotangent(ref_logits, mode, labels=labels, key=key)
        return lambda net, m=None: net.pull(v if m is None else _map(m, v, "bij,bi->bj"))

    return rows_of


def _map(m, rows, spec):
    """``rows(net, m)``: rows of ``m J``, ``m = ∂g/∂z`` (B, K, K) of an output map ``g``."""
    return rows if m is None else jnp.einsum(spec, m, rows)


def _forward_row(ref_logits, labels, key, x):
    """One forward-mode pass with the input-space probe ``u ~ N(0, I_D)``: ``J u`` (B, K)."""
    u = jj.input_tangent(key, x)
    return lambda net, m=None: _map(m, jj.jvp_input(net.logits_fn, x, u)[1], "bij,bj->bi")


def _all_rows(ref_logits, labels, key, x):
    """K reverse passes: the full Jacobian ``(B, K, *D)``."""
    return lambda net, m=None: _map(m, jj.jacobian_rows(net.pull, net.logits),
                                    "bij,bj...->bi...")


ESTIMATOR_ROWS: dict[str, Callable] = {
    **{mode: _one_row(mode) for mode in jj.COTANGENT_MODES},
    "jvp": _forward_row,
    "full": _all_rows,
}
assert tuple(ESTIMATOR_ROWS) == ESTIMATORS


def reverse_mode(estimator: str) -> bool:
    """Whether ``estimator``'s rows are pullbacks (every one but forward-mode ``jvp``)."""
    return estimator != "jvp"


def jacobian_terms(estimator: str, student: jj.Pass, teacher: jj.Pass | None, x: jax.Array,
                   labels: jax.Array | None, key: jax.Array | None, *,
                   normalize: bool = False, match: bool = True,
                   norm: bool = False) -> dict[str, jax.Array]:
    """Per-example Jacobian terms: the one implementation, for this module and the engine.

    The estimator's probe is drawn once from the teacher's logits (the student's without a
    teacher); both networks' rows use it.

    Args:
      estimator: one of :data:`ESTIMATORS`.
      student, teacher: passes at ``x``; the teacher's may be ``None`` unless ``match``.
        Their ``pull`` must be set for every estimator but ``jvp``.
      x: ``(B, *D)``, the variable the Jacobians are taken in.
      labels: ``(B,)`` integers (estimator ``label``).
      key: PRNG key (``random``, ``rademacher``, ``sphere``, ``jvp``).
      normalize: match in eq. 10's normalised form.
      match, norm: compute ``"jac"`` (prop. 1 / eq. 10) / ``"jac_norm"`` (prop. 2).
    Returns:
      ``{"jac": (B,), "jac_norm": (B,)}`` (the requested ones). No gradient flows into the
      teacher's rows.
    """
    ref_logits = teacher.logits if teacher is not None else student.logits
    rows = ESTIMATOR_ROWS[estimator](ref_logits, labels, key, x)
    s_rows = rows(student)
    terms = {}
    if match:
        t_rows = jax.lax.stop_gradient(rows(teacher))
        terms["jac"] = losses.match_jacobians(s_rows, t_rows, normalize=normalize)
    if norm:
        terms["jac_norm"] = losses.jacobian_norm(s_rows)
    return terms


# ----------------------------------------------------------------------------------------
# The entry point for your own model and loop.


class Penalties(NamedTuple):
    """What :func:`jacobian_penalties` returns (a pytree: fine as ``has_aux`` output).

    Attributes:
      terms: ``{"jac": scalar, "jac_norm": scalar}`` (the requested ones), batch means,
        unweighted: add ``λ * terms["jac"]`` to your loss.
      logits: ``(B, K)`` student logits from the pass the Jacobians were taken of.
      teacher_logits: ``(B, K)`` (no gradient), or ``None`` without a teacher.
      aux: the student's aux output (``has_aux``), a :class:`Linen` student's mutated
        collections (``mutable=...``), otherwise ``None`` (an NNX student is updated in
        place).
    """

    terms: dict[str, jax.Array]
    logits: jax.Array
    teacher_logits: jax.Array | None = None
    aux: Any = None


class Linen:
    """A Linen module with its variables and apply options, as a network ``x -> logits``.

    ``Linen(model, {"params": params, "batch_stats": bs}, train=True,
    mutable=["batch_stats"], rngs={"dropout": key})`` calls
    ``model.apply(variables, x, train=True, mutable=[...], rngs=...)``; with ``mutable``
    the updated collections are returned as :attr:`Penalties.aux`.
    """

    def __init__(self, module, variables, **apply_kwargs):
        self.module, self.variables, self.apply_kwargs = module, variables, apply_kwargs

    @property
    def has_aux(self) -> bool:
        return bool(self.apply_kwargs.get("mutable", False))

    def __call__(self, x):
        return self.module.apply(self.variables, x, **self.apply_kwargs)


def jacobian_penalties(
    student,
    x: jax.Array,
    labels: jax.Array | None = None,
    *,
    teacher=None,
    estimator: str = "label",
    key: jax.Array | None = None,
    normalize: bool = False,
    terms: tuple[str, ...] | None = None,
    has_aux: bool = False,
    input_mean=None,
    input_std=None,
) -> Penalties:
    """Jacobian matching (prop. 1 / eq. 10) and the Jacobian-norm penalty (prop. 2).

    Args:
      student: a function ``x -> logits`` (``-> (logits, aux)`` with ``has_aux``), a
        :class:`Linen` network or an ``nnx.Module`` (see the module docstring).
      x: ``(B, *D)`` inputs, the variable the Jacobians are taken in (normalised images
        for the paper's experiments).
      labels: ``(B,)`` integer labels in ``[0, K)``; needed by estimator ``label`` only
        (an out-of-range label is a ``ValueError``, or under ``jit`` a NaN penalty).
      teacher: frozen teacher (function, :class:`Linen`, ``nnx.Module`` or
        :class:`jkt.models.Teacher`) with logits of the student's shape; needed by
        ``"jac"``.
      estimator: which rows are matched: ``label`` (true-label row, paper default),
        ``top`` (teacher's top row; the student's without a teacher), ``random`` /
        ``rademacher`` / ``sphere`` (output-space probes) or ``jvp`` (input-space
        probe), all four unbiased for the full loss, ``full`` (all K rows, exact). See
        :mod:`jkt.jacobian`.
      key: PRNG key for ``random``, ``rademacher``, ``sphere`` and ``jvp``.
      normalize: ``"jac"`` in eq. 10's normalised form ``‖s/‖s‖ - t/‖t‖‖²``.
      terms: any of ``("jac", "jac_norm")``; default ``("jac",)`` with a teacher,
        ``("jac_norm",)`` without.
      has_aux: ``student`` is a function returning ``(logits, aux)``.
      input_mean, input_std: the normalisation of ``x``, to renormalise it for a
        :class:`jkt.models.Teacher` (per channel, last axis).
    Returns:
      :class:`Penalties`: ``terms`` (batch means), ``logits``, ``teacher_logits``, ``aux``.
    Raises:
      ValueError: unknown estimator or term, a missing teacher / labels / key, shapes that
        do not fit (all at trace time).
    """
    labels = None if labels is None else jnp.asarray(labels)
    terms = _check_request(estimator, terms, teacher, x, labels, key)
    reverse = reverse_mode(estimator)
    forward, finish = _student_forward(student, has_aux)
    s = _run(forward, x, differentiate=reverse, who="student")
    t = None
    if teacher is not None:
        t_forward = _teacher_forward(teacher, input_mean, input_std)
        t = _run(t_forward, x, differentiate=reverse and "jac" in terms, who="teacher")
        t = t._replace(logits=jax.lax.stop_gradient(t.logits))
        if t.logits.shape != s.logits.shape:
            raise ValueError(
                f"jacobian_penalties: teacher logits {tuple(t.logits.shape)} and student "
                f"logits {tuple(s.logits.shape)} differ; Jacobians are matched output by "
                "output, so both must have K outputs (for a two-head student pass the head "
                "matched against the teacher, e.g. lambda z: model(z)['source'])")
    _check_labels(estimator, labels, s.logits)
    per_example = jacobian_terms(estimator, s, t, x, labels, key, normalize=normalize,
                                 match="jac" in terms, norm="jac_norm" in terms)
    if estimator == "label":  # a label outside [0, K) has no row: NaN, not a zero penalty
        valid = (labels >= 0) & (labels < s.logits.shape[1])
        per_example = {k: jnp.where(valid, v, jnp.nan) for k, v in per_example.items()}
    return Penalties(terms={k: jnp.mean(v) for k, v in per_example.items()},
                     logits=s.logits, teacher_logits=None if t is None else t.logits,
                     aux=finish(s.aux))


def _check_request(estimator, terms, teacher, x, labels, key) -> tuple[str, ...]:
    if estimator not in ESTIMATORS:
        raise ValueError(f"jacobian_penalties: unknown estimator {estimator!r}; valid: "
                         f"{', '.join(ESTIMATORS)}")
    terms = (("jac",) if teacher is not None else ("jac_norm",)) if terms is None else terms
    if isinstance(terms, str):
        terms = (terms,)
    terms = tuple(terms)
    bad = [t for t in terms if t not in PENALTY_TERMS]
    if bad or not terms:
        raise ValueError(f"jacobian_penalties: unknown terms {bad or terms!r}; valid: "
                         f"{', '.join(PENALTY_TERMS)}")
    if "jac" in terms and teacher is None:
        raise ValueError("jacobian_penalties: term 'jac' matches a teacher, but no teacher "
                         "was given (for the teacher-free penalty ask for terms=('jac_norm',))")
    if getattr(x, "ndim", 0) < 2:
        raise ValueError(f"jacobian_penalties: x must be a batch (B, ...) with at least 2 "
                         f"axes, got shape {getattr(x, 'shape', type(x).__name__)}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"jacobian_penalties: x must be floating point (the inputs the "
                         f"Jacobians are taken in), got {x.dtype}; e.g. normalise uint8 images")
    if estimator == "label" and labels is None:
        raise ValueError("jacobian_penalties: estimator 'label' needs labels (B,)")
    if estimator in KEYED_ESTIMATORS and key is None:
        raise ValueError(f"jacobian_penalties: estimator {estimator!r} needs a PRNG key "
                         f"(key=...); so do {', '.join(KEYED_ESTIMATORS)}")
    return terms


def _check_labels(estimator, labels, logits) -> None:
    if estimator != "label":
        return
    b, k = logits.shape
    if labels.shape != (b,) or not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"jacobian_penalties: labels must be integers of shape ({b},) "
                         f"for a batch of {b}, got {labels.dtype} {tuple(labels.shape)}")
    if not isinstance(labels, jax.core.Tracer):  # known now (under jit: a NaN penalty)
        bad = np.flatnonzero((np.asarray(labels) < 0) | (np.asarray(labels) >= k))
        if bad.size:
            raise ValueError(f"jacobian_penalties: labels must lie in [0, {k}) for {k} "
                             f"outputs, got {int(np.asarray(labels)[bad[0]])} at example "
                             f"{int(bad[0])}")


def _check_logits(who: str, logits, x) -> None:
    if isinstance(logits, dict):
        raise ValueError(f"jacobian_penalties: the {who} returns a dict {sorted(logits)}; "
                         "pass a function returning the (B, K) logits to match, e.g. "
                         "lambda z: model(z)['source']")
    if getattr(logits, "ndim", None) != 2 or logits.shape[0] != x.shape[0]:
        shape = getattr(logits, "shape", type(logits).__name__)
        raise ValueError(f"jacobian_penalties: the {who} must map x {tuple(x.shape)} to "
                         f"logits (B, K) = ({x.shape[0]}, K), got {shape}")


def _run(forward: Callable, x: jax.Array, *, differentiate: bool, who: str) -> jj.Pass:
    """The :class:`jkt.jacobian.Pass` of ``forward: z -> (logits, aux)`` run once at ``x``."""

    def outputs(z):
        logits, aux = forward(z)
        return {"logits": logits}, (logits, None, aux)

    p = jj.run_once(outputs, x, differentiate=differentiate)
    _check_logits(who, p.logits, x)
    return p


def _is_nnx(model) -> bool:
    from flax import nnx

    return isinstance(model, nnx.Module)


def _student_forward(student, has_aux: bool) -> tuple[Callable, Callable]:
    """``(z -> (logits, aux), finish: aux -> Penalties.aux)`` for any kind of student."""
    if _is_nnx(student):
        return _nnx_forward(student)
    _refuse_tuple(student, "student")
    if isinstance(student, Linen):
        has_aux = student.has_aux
    if not callable(student):
        raise TypeError(f"jacobian_penalties: the student must be a function, a "
                        f"jkt.penalties.Linen or an nnx.Module, got {type(student).__name__}")
    if has_aux:
        return student, lambda aux: aux
    return (lambda z: (student(z), None)), lambda aux: None


def _nnx_forward(module) -> tuple[Callable, Callable]:
    """A pure ``z -> (logits, new state)`` of an NNX module; ``finish`` writes the state
    of the one pass back into the module."""
    from flax import nnx

    graphdef, state = nnx.split(module)

    def forward(z):
        m = nnx.merge(graphdef, state, copy=True)  # fresh Variables inside the transform
        return m(z), nnx.state(m)

    def finish(new_state):
        nnx.update(module, new_state)

    return forward, finish


def _teacher_forward(teacher, input_mean, input_std) -> Callable:
    """``z -> (logits, None)`` of a frozen teacher of any kind."""
    if isinstance(teacher, Teacher):
        fn = _artifact_fn(teacher, input_mean, input_std)
    elif _is_nnx(teacher):
        fn = _nnx_teacher_fn(teacher)
    else:
        _refuse_tuple(teacher, "teacher")
        if isinstance(teacher, Linen) and teacher.has_aux:
            raise ValueError("jacobian_penalties: a frozen teacher mutates nothing; drop "
                             "mutable=... from its Linen(...) (and pass train=False)")
        if not callable(teacher):
            raise TypeError(f"jacobian_penalties: the teacher must be a function, a "
                            f"jkt.penalties.Linen, an nnx.Module or a jkt.checkpoint."
                            f"Teacher, got {type(teacher).__name__}")
        fn = teacher
    return lambda z: (fn(z), None)


def _artifact_fn(teacher, input_mean, input_std) -> Callable:
    if (input_mean is None) != (input_std is None):
        raise ValueError("jacobian_penalties: give both input_mean and input_std, or neither")
    if input_mean is None:
        return teacher.apply
    to_teacher = renormalizer(input_mean, input_std, teacher.meta.mean, teacher.meta.std)
    return lambda z: teacher.apply(to_teacher(z))


def _nnx_teacher_fn(module) -> Callable:
    """A copy of ``module`` in ``.eval()`` mode; the module itself is left untouched."""
    from flax import nnx

    graphdef, state = nnx.split(module)

    def fn(z):
        m = nnx.merge(graphdef, state, copy=True)
        m.eval()
        return m(z)

    return fn


def _refuse_tuple(model, who: str) -> None:
    if isinstance(model, tuple):
        raise TypeError(f"jacobian_penalties: the {who} is a tuple; wrap a Linen module and "
                        f"its variables as jkt.penalties.Linen(module, variables, "
                        f"**apply_kwargs)")


__all__ = ["ESTIMATORS", "ESTIMATOR_ROWS", "KEYED_ESTIMATORS", "Linen", "PENALTY_TERMS",
           "Penalties", "jacobian_penalties", "jacobian_terms", "reverse_mode"]
