"""The named methods of the paper's tables, as :class:`~jkt.train.objective.Objective` s.

Table 1 (distillation, §6.1) and Table 3 (transfer learning, §6.3) rows; loss weights of
appendix 10.2 (every active weight 1; the MIT Scenes runs scale them all by 10). Beside
Table 1's six (:data:`TABLE1_METHODS`), :data:`METHODS` holds the rows that test §4's
Claim (named in ``CLAIM_METHODS``: soft targets, eq. 2, noisy inputs).
"""

from __future__ import annotations

import dataclasses

from jkt.train.objective import Objective

# Table 1 rows, in the paper's order.
METHODS: dict[str, Objective] = {
    "ce": Objective(ce=1),
    "ce+act": Objective(ce=1, act=1),
    "ce+jac": Objective(ce=1, jac=1),
    "ce+act+jac": Objective(ce=1, act=1, jac=1),
    "act": Objective(ce=0, act=1),
    "act+jac": Objective(ce=0, act=1, jac=1),
}
TABLE1_METHODS = tuple(METHODS)
# Rows beyond Table 1 that test §4's Claim: soft-target distillation (Hinton et al., 2015,
# T = 4) with and without eq. 2's Jacobian term (true-label row, like Table 1's
# Jacobians), and the noisy-input counterparts of "ce+act+jac" / "act+jac": activation
# matching on inputs with Gaussian noise of std ``noise_sigma`` (0.1, one draw per step),
# whose expectation is ``act + σ² · (full-Jacobian matching)`` (prop. 1), i.e. Table 1's
# rows with the Jacobian weight σ² (and all K outputs instead of the label's).
METHODS.update({
    "kd": Objective(ce=0, kd=1),
    "ce+kd": Objective(ce=1, kd=1),
    "ce+kd+jac": Objective(ce=1, kd=1, kd_jac=1),
    "kd+jac": Objective(ce=0, kd=1, kd_jac=1),
    "ce+act_noise": Objective(ce=1, act_noise=1),
    "act_noise": Objective(ce=0, act_noise=1),
})
CLAIM_METHODS = tuple(m for m in METHODS if m not in TABLE1_METHODS)
METHOD_LABELS = {
    "ce": "Cross-Entropy (CE) training",
    "ce+act": "CE + match activations",
    "ce+jac": "CE + match Jacobians",
    "ce+act+jac": "CE + match {activations + Jacobians}",
    "act": "Match activations only",
    "act+jac": "Match {activations + Jacobians}",
    "kd": "Match soft targets (KD) only",
    "ce+kd": "CE + match soft targets (KD)",
    "ce+kd+jac": "CE + match {soft targets + eq. 2 Jacobians}",
    "kd+jac": "Match {soft targets + eq. 2 Jacobians}",
    "ce+act_noise": "CE + match activations on noisy inputs",
    "act_noise": "Match activations on noisy inputs only",
}


def method_objective(name: str, **overrides) -> Objective:
    """The :class:`Objective` of a method of :data:`METHODS` (Table 1's and the Claim's
    rows), with field overrides (e.g. ``estimator``, ``temperature``, ``noise_sigma``)."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(METHODS)}")
    return dataclasses.replace(METHODS[name], **overrides)


# Table 3 rows, in the paper's order. "oracle" trains like "ce", from a student
# pretrained on the source task.
TRANSFER_METHODS = ("ce", "oracle", "ce+act", "ce+act+jac", "ce+act+att", "ce+act+att+attjac")
TRANSFER_LABELS = {
    "ce": "Cross-Entropy (CE) training on untrained student network",
    "oracle": "CE on pre-trained student network (Oracle)",
    "ce+act": "CE + match activations (Li & Hoiem, 2016)",
    "ce+act+jac": "CE + match {activations + Jacobians}",
    "ce+act+att": "CE + match {activations + attention} (Zagoruyko & Komodakis, 2017)",
    "ce+act+att+attjac": "CE + match {activations + attention + Jacobians}",
}


# How Table 3's "CE + match {activations + Jacobians}" row matches Jacobians.
JACOBIAN_ROWS = ("attention_map", "output")


def transfer_objective(method: str, *, weight: float = 1.0, att_pairs=(), att_jac_pair=None,
                       pool_fraction: float | None = 0.2,
                       jacobian_row: str = "attention_map") -> Objective:
    """The :class:`Objective` of a Table-3 method; every active weight is ``weight``.

    ``att_pairs`` / ``att_jac_pair`` are ``(student_tap, teacher_tap)``. ``jacobian_row``
    picks what "CE + match {activations + Jacobians}" matches: ``"attention_map"`` (app.
    10.2: the Jacobian of the average-pooled attention map at ``att_jac_pair``, eq. 10,
    without attention matching) or ``"output"`` (the output Jacobian of the teacher's top
    logit, prop. 1; §5.1.1 reports the optimiser could not reduce that loss). Output
    Jacobians use the "top" estimator: the teacher's label space differs from the target
    labels."""
    if jacobian_row not in JACOBIAN_ROWS:
        raise ValueError(f"unknown jacobian_row {jacobian_row!r}; valid: "
                         f"{', '.join(JACOBIAN_ROWS)}")
    w = weight
    common = dict(ce=w, estimator="top", pool_fraction=pool_fraction)
    if method in ("ce", "oracle"):
        return Objective(**common)
    if method == "ce+act":
        return Objective(act=w, **common)
    if method == "ce+act+jac" and jacobian_row == "output":
        return Objective(act=w, jac=w, **common)
    if method == "ce+act+jac":
        return Objective(act=w, att_jac=w, att_jac_pair=att_jac_pair, **common)
    if method == "ce+act+att":
        return Objective(act=w, att=w, att_pairs=tuple(att_pairs), **common)
    if method == "ce+act+att+attjac":
        return Objective(act=w, att=w, att_jac=w, att_pairs=tuple(att_pairs),
                         att_jac_pair=att_jac_pair, **common)
    raise ValueError(f"unknown method {method!r}; valid: {', '.join(TRANSFER_METHODS)}")


__all__ = ["JACOBIAN_ROWS", "METHODS", "METHOD_LABELS", "TABLE1_METHODS", "TRANSFER_LABELS",
           "TRANSFER_METHODS", "method_objective", "transfer_objective"]
