"""Fused runs: several students that share one batch stream, as one group of ``R`` runs.

The runs of one Table-1 cell (same data subset, same seed, different loss weights) see
the same batches, the same augmentation and the same estimator probes; only their
students and weights differ. The train step (:func:`jkt.train.step.make_train_step`)
updates them together: states stacked on a leading *run* axis (:func:`pack_states`), a
weight matrix with a column per term (:func:`weight_matrix`, columns :func:`weight_terms`),
and everything that does not depend on the student (augmentation, the teacher's passes
and Jacobians, the attention arg-max pixel, the input noise) computed once per step
instead of once per run.

Terms are computed for the union of the runs' active terms (:func:`union_objective`); a
run with weight 0 on a term gets no gradient from it but pays for computing it, so runs
are grouped by the passes their objectives need (:func:`fusion_groups`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jkt.train.objective import ADDED_TERMS, PAPER_TERMS, TERMS, Objective
from jkt.train.state import TrainState

FUSION_MODES = ("unroll", "vmap")
_STRUCTURE = ("estimator", "normalize", "att_pairs", "att_variant", "att_jac_pair",
              "pool_fraction", "temperature", "jac_norm_form", "noise_sigma", "noise_draws")


def union_objective(objectives: Sequence[Objective], *, mixed_estimators: bool = False
                    ) -> Objective:
    """The objective that computes every term any of ``objectives`` uses (weight 1 where
    any run's weight is positive), with the first run's estimator. Raises if they differ in
    anything but weights (and, with ``mixed_estimators``, their Jacobian estimators)."""
    if not objectives:
        raise ValueError("no objectives to fuse")
    first = objectives[0]
    shared = _shared_structure(mixed_estimators)
    for o in objectives[1:]:
        diff = [f for f in shared if getattr(o, f) != getattr(first, f)]
        if diff:
            allowed = "loss weights and estimators" if mixed_estimators else "loss weights"
            raise ValueError(f"fused runs must share {diff}: {getattr(first, diff[0])!r} vs "
                             f"{getattr(o, diff[0])!r}; only {allowed} may differ")
    return dataclasses.replace(first, **{
        t: 1.0 if any(getattr(o, t) > 0 for o in objectives) else 0.0 for t in TERMS})


def _shared_structure(mixed_estimators: bool) -> tuple[str, ...]:
    return tuple(f for f in _STRUCTURE if not (mixed_estimators and f == "estimator"))


def structure(objective: Objective) -> Objective:
    """``objective`` with every active term's weight set to 1 (its :func:`union_objective`
    alone): what its step computes, whatever the weights (which the train step takes as an
    argument, so runs that differ only in weights, such as Table 2's λ, share one
    program)."""
    return union_objective([objective])


def weight_terms(objectives: Sequence[Objective]) -> tuple[str, ...]:
    """The columns of :func:`weight_matrix`: the paper's six terms (``PAPER_TERMS``), then
    each later term (``ADDED_TERMS``: ``kd``, ``kd_jac``, ``act_noise``, ``ce_noise``) that
    some run weights. A step of the paper's methods thus takes the ``(R, 6)`` matrix it
    always took (the same program as before those terms existed)."""
    return PAPER_TERMS + tuple(t for t in ADDED_TERMS
                               if any(getattr(o, t) > 0 for o in objectives))


def weight_matrix(objectives: Sequence[Objective]) -> np.ndarray:
    """``(R, len(weight_terms(objectives)))`` float32 weights, one row per run, columns in
    :func:`weight_terms` order."""
    columns = weight_terms(objectives)
    return np.array([[getattr(o, t) for t in columns] for o in objectives], np.float32)


def passes(objective: Objective) -> tuple[bool, bool, bool, int]:
    """What a step of ``objective`` costs beyond the student's forward/backward pass:
    ``(teacher forward, Jacobian passes of the logits or attention maps, Jacobian passes
    of the softmax outputs, noisy forward passes)``. The softmax rows (``kd_jac``, the
    eq.-3 ``jac_norm``) are pullbacks with other cotangents than the logits' rows: a run
    of one kind fused with a run of the other would pay for both."""
    o = objective
    softmax_norm = o.jac_norm > 0 and o.jac_norm_form == "softmax"
    logit_rows = o.jac > 0 or (o.jac_norm > 0 and not softmax_norm) or o.att_jac > 0
    return (o.needs_teacher, logit_rows, o.kd_jac > 0 or softmax_norm,
            o.noise_draws if o.noisy else 0)


def fusion_groups(objectives: Sequence[Objective], *, by_passes: bool = True,
                  mixed_estimators: bool = False) -> list[list[int]]:
    """Indices of ``objectives`` grouped so that each group can be fused: same structure
    (estimator, taps, ...; with ``mixed_estimators`` the estimators may differ, as the
    ``"unroll"`` layout allows) and, with ``by_passes``, the same :func:`passes` (cheap to
    fuse), in first-seen order.

    Table 1's six methods give ``[[ce], [ce+act, act], [ce+jac, ce+act+jac, act+jac]]``
    with one estimator, or with the label-free row's own estimator and
    ``mixed_estimators``; without ``by_passes``, one group. (``kd`` and ``ce+kd`` join
    ``[ce+act, act]``; ``ce+kd+jac``, ``kd+jac`` and the two noisy rows are groups of
    their own.)
    """
    shared = _shared_structure(mixed_estimators)
    groups: dict[tuple, list[int]] = {}
    for i, o in enumerate(objectives):
        key = ((passes(o) if by_passes else None), *(getattr(o, f) for f in shared))
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def stack_states(states: Sequence[TrainState]) -> TrainState:
    """One :class:`TrainState` whose leaves have a leading run axis ``R``. The states must
    be of one structure (one model, one optimiser)."""
    if len({jax.tree.structure(s) for s in states}) != 1:
        raise ValueError("stacked runs must share one optimiser and one model (states of one "
                         "structure)")
    return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


def unstack_state(states: TrainState, index: int) -> TrainState:
    """Run ``index`` of a stacked state."""
    return jax.tree.map(lambda x: x[index], states)


def pack_states(states: Sequence[TrainState]) -> TrainState:
    """The states of ``R`` runs as the train step takes them: stacked on a leading run axis
    (:func:`stack_states`), or for ``R = 1`` the state itself (a leading axis of size 1
    changes the layouts XLA picks and with them the rounding of the BatchNorm
    reductions)."""
    return states[0] if len(states) == 1 else stack_states(states)


def unpack_state(packed: TrainState, index: int, runs: int) -> TrainState:
    """Run ``index`` of :func:`pack_states` of ``runs`` states."""
    return packed if runs == 1 else unstack_state(packed, index)


__all__ = ["FUSION_MODES", "fusion_groups", "pack_states", "passes", "stack_states", "structure",
           "union_objective", "unpack_state", "unstack_state", "weight_matrix", "weight_terms"]
