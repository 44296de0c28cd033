"""The benchmarked train steps, by name.

Three kinds of row, all built from ``jkt.train``'s method registry where one exists:

* Table-1 steps: a method of ``jkt.train.METHODS`` (``method_objective``), optionally
  with another Jacobian estimator or the eq.-10 normalisation. ``ce+act+jac:label`` is
  the Table-1 method ``ce+act+jac`` with estimator ``label``, ``...:norm`` adds
  ``normalize=True``; ``vgg9:ce`` is Table 1's ``ce`` on the teacher's architecture
  (the teacher's own training step).
* Rows outside Table 1, whose objectives are spelled out here as data: attention +
  attention-Jacobian transfer, and the Jacobian-norm regulariser on VGG-9.
* Fused rows: several Table-1 methods trained as runs of one step
  (``jkt.train.make_train_step`` over R runs), the layouts ``experiments.distill`` uses.

``TABLE1_PROXY`` and ``FUSED_LAYOUTS`` say which rows stand for which part of the
Table-1 grid when ``jkt.bench.report`` projects its wall time.
"""

from __future__ import annotations

import dataclasses

from jkt.train import TABLE1_METHODS, Objective, method_objective
from jkt.train.fused import union_objective

TEACHER_ARCH = "vgg9"
STUDENT_ARCH = "vgg4"
ESTIMATORS = ("label", "top", "random", "rademacher", "jvp", "full")  # row order
ATT_PAIRS = (("pool1", "pool1"), ("pool2", "pool2"))
ATT_JAC_PAIR = ("pool2", "pool2")


@dataclasses.dataclass(frozen=True)
class Method:
    """One benchmarked train step.

    Attributes:
      name: the row's key (``--methods``, JSON, markdown).
      label: human-readable description.
      student: architecture of the trained network (``jkt.models.MODELS``).
      objective: the step's objective; for a fused row the union of ``fused``
        (every term any run uses).
      fused: the objectives of the runs of a fused step (empty: a plain step).
      fusion_mode: ``"unroll"`` or ``"vmap"`` (``jkt.train.make_train_step``).
      members: the Table-1 method names of ``fused``, in run order.
    """

    name: str
    label: str
    student: str
    objective: Objective
    fused: tuple[Objective, ...] = ()
    fusion_mode: str = "unroll"
    members: tuple[str, ...] = ()

    @property
    def teacher(self) -> str | None:
        """The teacher's architecture, or ``None`` if the objective needs no teacher."""
        return TEACHER_ARCH if self.objective.needs_teacher else None

    @property
    def runs(self) -> int:
        """Students trained per step (``R``; 1 for a plain step)."""
        return max(1, len(self.fused))


def table1_step(name: str, method: str, label: str, *, estimator: str | None = None,
                normalize: bool = False, student: str = STUDENT_ARCH) -> Method:
    """The step of the Table-1 ``method`` (``jkt.train.METHODS``), optionally with another
    Jacobian ``estimator`` or the eq.-10 normalisation."""
    overrides = {"normalize": True} if normalize else {}
    if estimator is not None:
        overrides["estimator"] = estimator
    return Method(name, label, student, method_objective(method, **overrides))


def fused_step(name: str, members: tuple[str, ...], mode: str) -> Method:
    """The Table-1 methods ``members`` as ``len(members)`` runs of one fused step."""
    objectives = tuple(method_objective(m) for m in members)
    return Method(name, f"fused ({mode}): {' | '.join(members)}", STUDENT_ARCH,
                  union_objective(objectives), objectives, mode, tuple(members))


# The fusion groups of Table 1 (``jkt.train.fusion_groups``): what ``experiments.distill``
# trains in one step per (n, seed) cell by default (methods needing the same passes).
FUSED_ACT = ("ce+act", "act")
FUSED_JAC = ("ce+jac", "ce+act+jac", "act+jac")
TABLE1_ALL = tuple(TABLE1_METHODS)  # every Table-1 method in one step (--fusion-groups all)


METHODS: dict[str, Method] = {m.name: m for m in [
    table1_step("ce", "ce", "CE"),
    table1_step("ce+act", "ce+act", "CE + act"),
    *[table1_step(f"ce+act+jac:{e}", "ce+act+jac", f"CE + act + Jacobian ({e})", estimator=e)
      for e in ESTIMATORS],
    table1_step("ce+act+jac:label:norm", "ce+act+jac",
                "CE + act + Jacobian (label, eq.-10 normalised)", estimator="label",
                normalize=True),
    Method("ce+act+att+att_jac:top", "CE + act + attention + attention-Jacobian (top)",
           STUDENT_ARCH, Objective(ce=1, act=1, att=1, att_jac=1, att_pairs=ATT_PAIRS,
                                   att_jac_pair=ATT_JAC_PAIR, estimator="top")),
    table1_step("vgg9:ce", "ce", "VGG-9 CE (teacher's step)", student=TEACHER_ARCH),
    Method("vgg9:ce+jac_norm", "VGG-9 CE + Jacobian norm", TEACHER_ARCH,
           Objective(ce=1, jac_norm=1)),
    fused_step("fused:act-group", FUSED_ACT, "unroll"),
    fused_step("fused:jac-group", FUSED_JAC, "unroll"),
    fused_step("fused-vmap:act-group", FUSED_ACT, "vmap"),
    fused_step("fused-vmap:jac-group", FUSED_JAC, "vmap"),
    fused_step("fused-vmap:table1", TABLE1_ALL, "vmap"),
]}

# Table-1 method -> the benchmarked step that costs the same (act-only drops the CE head's
# softmax; ce+jac / act+jac drop one cheap term of ce+act+jac: same passes, same cost).
TABLE1_PROXY = {"ce": "ce", "ce+act": "ce+act", "ce+jac": "ce+act+jac:label",
                "ce+act+jac": "ce+act+jac:label", "act": "ce+act",
                "act+jac": "ce+act+jac:label"}
TEACHER_PROXY = "vgg9:ce"
# Table 1 under each fusion layout of ``experiments.distill``: the steps one (n, seed) cell
# takes per training step. "jkt-fused" is distill's default (--fusion unroll).
FUSED_LAYOUTS = {
    "jkt-fused": ("ce", "fused:act-group", "fused:jac-group"),
    "jkt-fused-vmap": ("ce", "fused-vmap:act-group", "fused-vmap:jac-group"),
    "jkt-fused-all-vmap": ("fused-vmap:table1",),
}
TABLE1_FUSED = FUSED_LAYOUTS["jkt-fused"]
