"""Several student runs that share one batch stream, trained in one jitted step.

The runs of one Table-1 cell (same data subset, same seed, different loss weights) see
the same batches, the same augmentation and the same estimator probes; only their
students and weights differ. ``make_fused_train_step`` applies the per-run update to a
leading *run* axis of stacked states with a ``(R, 6)`` weight matrix.
Everything that does not depend on the student (augmentation, normalisation, the
teacher's forward pass, the teacher's Jacobians for the ``label``, ``top``, ``random``,
``rademacher``, ``jvp`` and ``full`` estimators, the attention arg-max pixel) is then
computed once per step instead of once per run.

Run ``r`` of a fused step equals a separate :func:`jkt.train.step.make_train_step` run
whose state has the same ``rng`` as run 0 (the grid gives every run of a cell the same
seed): augmentation and probes come from run 0's key, dropout from each run's own key.
How the runs are laid out (one traced update per run, or ``vmap``) is the ``mode``
argument. Terms are computed for the union of the runs' active terms; a run with weight 0
on a term gets no gradient from it but pays for computing it, so group runs whose
objectives need the same passes (:func:`fusion_groups`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jkt.train.objective import TERMS, Objective
from jkt.train.state import TrainState
from jkt.train.step import frozen_teacher, input_pipeline, teacher_renormalizer, update

FUSION_MODES = ("unroll", "vmap")
_STRUCTURE = ("estimator", "normalize", "att_pairs", "att_variant", "att_jac_pair",
              "pool_fraction")


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
    alone): what its step computes, whatever the weights (which a step built with
    ``weights_as_argument`` takes at run time, so runs that differ only in weights, such
    as Table 2's λ, share one program)."""
    return union_objective([objective])


def weight_matrix(objectives: Sequence[Objective]) -> np.ndarray:
    """``(R, len(TERMS))`` float32 weights, one row per run, columns in ``TERMS`` order."""
    return np.array([[getattr(o, t) for t in TERMS] for o in objectives], np.float32)


def passes(objective: Objective) -> tuple[bool, bool]:
    """What a step of ``objective`` costs beyond the student's forward/backward pass:
    ``(teacher forward, Jacobian passes)``."""
    o = objective
    return o.needs_teacher, (o.jac > 0 or o.jac_norm > 0 or o.att_jac > 0)


def fusion_groups(objectives: Sequence[Objective], *, by_passes: bool = True,
                  mixed_estimators: bool = False) -> list[list[int]]:
    """Indices of ``objectives`` grouped so that each group can be fused: same structure
    (estimator, taps, ...; with ``mixed_estimators`` the estimators may differ, as the
    ``"unroll"`` layout allows) and, with ``by_passes``, the same :func:`passes` (cheap to
    fuse), in first-seen order.

    Table 1's six methods give ``[[ce], [ce+act, act], [ce+jac, ce+act+jac, act+jac]]``
    with one estimator, or with the label-free row's own estimator and
    ``mixed_estimators``; without ``by_passes``, one group.
    """
    shared = _shared_structure(mixed_estimators)
    groups: dict[tuple, list[int]] = {}
    for i, o in enumerate(objectives):
        key = ((passes(o) if by_passes else None), *(getattr(o, f) for f in shared))
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def stack_states(states: Sequence[TrainState]) -> TrainState:
    """One :class:`TrainState` whose leaves have a leading run axis ``R``. The states must
    share their optimiser object ``tx`` (build it once for all runs)."""
    txs = {id(s.tx) for s in states}
    if len(txs) != 1:
        raise ValueError("stacked runs must share one optimiser (the same `tx` object)")
    return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


def unstack_state(states: TrainState, index: int) -> TrainState:
    """Run ``index`` of a stacked state."""
    return jax.tree.map(lambda x: x[index], states)


def pack_states(states: Sequence[TrainState]) -> TrainState:
    """The states of ``R`` runs as :func:`make_fused_train_step` takes them: stacked on a
    leading run axis (:func:`stack_states`), or for ``R = 1`` the state itself. A leading
    axis of size 1 changes the layouts XLA picks and with them the rounding of the
    BatchNorm reductions; unstacked, a single run compiles exactly the program of
    :func:`jkt.train.step.make_train_step` and reproduces its numbers bit for bit."""
    return states[0] if len(states) == 1 else stack_states(states)


def unpack_state(packed: TrainState, index: int, runs: int) -> TrainState:
    """Run ``index`` of :func:`pack_states` of ``runs`` states."""
    return packed if runs == 1 else unstack_state(packed, index)


def make_fused_train_step(
    model,
    objectives: Sequence[Objective],
    *,
    mean: Sequence[float],
    std: Sequence[float],
    augment: bool | str = True,
    teacher_model=None,
    teacher_mean: Sequence[float] | None = None,
    teacher_std: Sequence[float] | None = None,
    mode: str = "unroll",
    weights_as_argument: bool = False,
) -> Callable:
    """Builds ``fused_step(states, batch, teacher_variables) -> (states, metrics)``.

    ``states`` is :func:`pack_states` of ``len(objectives)`` runs (leading axis ``R``; one
    run's state as it is for ``R = 1``); ``batch`` as in
    :func:`jkt.train.step.make_train_step` (shared by all runs). Every entry of
    ``metrics`` has shape ``(R,)``: ``loss`` (each run's own weighted total),
    every term of :func:`union_objective` (unweighted), ``accuracy`` and, with a teacher,
    ``agreement``.

    ``mode`` picks how the per-run updates are laid out in the one XLA program:
    ``"unroll"`` (default) traces one update per run; XLA's common-subexpression pass
    merges the runs' identical teacher computations, and each student keeps its own dense
    convolutions. ``"vmap"`` maps one update over the run axis: the teacher is unbatched
    by construction, and the students' convolutions become one grouped convolution per
    layer, so which mode is faster depends on the backend's grouped-convolution kernels.
    ``"unroll"`` also fuses runs with different Jacobian estimators (Table 1's
    label-free row, which differentiates the teacher's top output, beside the rows that
    differentiate the true label): each run uses its own, and the teacher's Jacobian is
    computed once per estimator; ``"vmap"`` needs one estimator.

    With ``R = 1`` the step is :func:`jkt.train.step.make_train_step`'s (same keys, same
    terms, same program): the training loop runs a single run through it.

    ``weights_as_argument``: the step is ``fused_step(states, batch, teacher_variables,
    weights)`` with ``weights`` a float32 ``(R, len(TERMS))`` array (:func:`weight_matrix`)
    instead of the objectives' weights compiled in; a term whose weight is 0 in every
    objective is still left out. Build it from the :func:`structure` of the objectives to
    share it between runs that differ only in their weights.
    """
    if mode not in FUSION_MODES:
        raise ValueError(f"unknown fusion mode {mode!r}; valid: {FUSION_MODES}")
    union = union_objective(objectives, mixed_estimators=mode == "unroll")
    # What each run computes: the union's terms with the run's own estimator.
    per_run = [dataclasses.replace(union, estimator=o.estimator) for o in objectives]
    if union.needs_teacher and teacher_model is None:
        raise ValueError("an objective matches a teacher, but no teacher model was given")
    weights = weight_matrix(objectives)
    to_input = input_pipeline(mean, std, augment)
    to_teacher = teacher_renormalizer(mean, std, teacher_mean, teacher_std)

    runs = len(objectives)

    def fused_step(states: TrainState, batch, teacher_variables, *weights_arg):
        if len(weights_arg) != int(weights_as_argument):
            raise TypeError("fused step takes the weight matrix as its 4th argument exactly "
                            "when built with weights_as_argument=True")
        w_all = weights_arg[0] if weights_as_argument else jnp.asarray(weights)
        if states.step.shape != ((runs,) if runs > 1 else ()):
            raise ValueError(f"fused step built for {runs} runs, got states with step shape "
                             f"{states.step.shape} (use pack_states)")
        # Shared randomness (augmentation, estimator probes) from run 0's key.
        first = unpack_state(states, 0, runs)
        key0 = jax.random.fold_in(jax.random.wrap_key_data(first.rng), first.step)
        k_aug, _, k_est = jax.random.split(key0, 3)
        x = to_input(k_aug, batch["image"])
        teacher_fn = frozen_teacher(teacher_model, teacher_variables, to_teacher,
                                    union.teacher_taps)

        def one(state, w, objective=union):
            key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
            k_drop = jax.random.split(key, 3)[1]
            return update(model, objective, state, x, batch["label"], teacher_fn, k_drop,
                          k_est, weights=dict(zip(TERMS, w, strict=True)))

        if runs == 1:
            state, metrics = one(states, w_all[0])
            return state, jax.tree.map(lambda v: v[None], metrics)
        if mode == "vmap":
            return jax.vmap(one)(states, w_all)
        outs = [one(unstack_state(states, r), w_all[r], per_run[r])
                for r in range(len(objectives))]
        return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)

    return fused_step


__all__ = ["FUSION_MODES", "fusion_groups", "make_fused_train_step", "pack_states", "passes",
           "stack_states", "structure", "union_objective", "unpack_state", "unstack_state",
           "weight_matrix"]
