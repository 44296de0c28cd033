"""The paper's Tables 1-5, typed once, keyed like our grids; and the markdown that puts
our results beside them.

Srinivas & Fleuret, *Knowledge Transfer with Jacobian Matching* (ICML 2018), §6 (the text
is ``shared/paper/jacobian-matching.md``). Every number is as printed: test accuracy in %,
Table 4's Jacobian-loss reduction in %, Table 2's mean ± std. Row and column keys are the
ones our grids and CSVs use, so :meth:`PaperTable.cell` looks up the paper's value of one
of our cells:

* Table 1 (§6.1): rows ``jkt.train.methods.METHODS``, columns ``n_per_class`` 1, 5, 10,
  50, 100, ``"full"`` (the paper's "500 (full)" column).
* Table 2 (§6.2): rows the model names of ``jkt.grids.robustness.model_rows``
  (``lambda=0``, ``lambda=0.1``, ``lambda=1``, ``lambda=10``, ``l2=0.001``,
  ``dropout=0.25``), columns the noise σ 0, 0.1, 0.2, 0.3, 0.4.
* Table 3 (§6.3): rows ``jkt.train.methods.TRANSFER_METHODS``, columns 5, 10, 25, 50,
  ``"full"``.
* Table 4 (§6.3.1): rows our CSV columns ``test_accuracy`` and ``att_jac_reduction``,
  columns the depth pairs as ``jkt.models.taps.pair_name`` writes them
  (``"teacher_tap:student_tap"``). The paper's feature depths count weight layers:
  ResNet-34 depth 7 / 15 / 27 / 33 is the end of residual stage 1 / 2 / 3 / 4 (stem conv
  + 3, 4, 6, 3 blocks of two convs) and VGG-9 depth 2 / 4 / 6 / 8 the output of max-pool
  2 / 3 / 4 / 5 (after conv 2, 4, 6, 8 of ``jkt.models.vgg.VGG9_CONFIG``), hence
  ``stage1:pool2``, ``stage2:pool3``, ``stage3:pool4``, ``stage4:pool5``.
* Table 5 (§6.3.2): row ``test_accuracy``, columns the pool windows of
  ``jkt.grids.transfer.POOL_WINDOWS`` (``full``, ``s/3``, ``s/5``, ``s/7``, ``none``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable, Mapping, Sequence
from types import MappingProxyType

from jkt.report import tables

PAPER = "Srinivas & Fleuret, *Knowledge Transfer with Jacobian Matching* (ICML 2018)"


def key(x) -> str:
    """The form a row or column key is compared in: numbers (and numeric strings, as read
    back from a CSV) as ``f"{float(x):g}"``, other strings stripped and lower-cased."""
    if isinstance(x, int | float) and not isinstance(x, bool):
        return f"{float(x):g}"
    text = str(x).strip()
    try:
        return f"{float(text):g}"
    except ValueError:
        return text.lower()


def _frozen(d: Mapping) -> Mapping:
    return MappingProxyType({r: MappingProxyType(dict(v)) for r, v in d.items()})


@dataclasses.dataclass(frozen=True, eq=False)
class PaperTable:
    """One of the paper's tables.

    Attributes:
      number: the table's number in the paper.
      caption: what the table shows (a summary of the paper's caption).
      setting: what the paper ran (data, networks), for the analogue note.
      rows / columns: what the rows / columns are, and how they are keyed here.
      values: ``values[row][column]``, the printed number (%).
      stds: ``stds[row][column]``, the printed ± (Table 2 only; absent cells have none).
      col_labels: the paper's header of a column whose key differs from it.
      teacher_accuracy: the teacher's test accuracy (%) the caption gives, if any.
    """

    number: int
    caption: str
    setting: str
    rows: str
    columns: str
    values: Mapping[Hashable, Mapping[Hashable, float]]
    stds: Mapping[Hashable, Mapping[Hashable, float]] = dataclasses.field(default_factory=dict)
    col_labels: Mapping[Hashable, str] = dataclasses.field(default_factory=dict)
    teacher_accuracy: float | None = None

    def __post_init__(self):
        object.__setattr__(self, "values", _frozen(self.values))
        object.__setattr__(self, "stds", _frozen(self.stds))
        object.__setattr__(self, "col_labels", MappingProxyType(dict(self.col_labels)))

    @property
    def source(self) -> str:
        return f"{PAPER}, Table {self.number}"

    @property
    def row_keys(self) -> tuple:
        return tuple(self.values)

    @property
    def col_keys(self) -> tuple:
        return tuple(next(iter(self.values.values())))

    def cell(self, row, col) -> tuple[float, float | None] | None:
        """``(value, std or None)`` of the paper's cell for our keys, or ``None`` when the
        paper has no such cell (keys compared with :func:`key`)."""
        r = next((k for k in self.values if key(k) == key(row)), None)
        if r is None:
            return None
        c = next((k for k in self.values[r] if key(k) == key(col)), None)
        if c is None:
            return None
        return self.values[r][c], self.stds.get(r, {}).get(c)


TABLE1 = PaperTable(
    number=1,
    caption="Distillation performance on CIFAR-100 with few data points per class; test "
            "accuracy (%). Student VGG-4, teacher VGG-9 (64.78 %).",
    setting="CIFAR-100, VGG-9 teacher → VGG-4 student",
    rows="methods (`jkt.train.methods.METHODS` keys)",
    columns="data points per class (`n_per_class`; the paper's 500 is `\"full\"`)",
    values={
        "ce": {1: 5.69, 5: 13.9, 10: 20.03, 50: 37.6, 100: 44.92, "full": 54.28},
        "ce+act": {1: 12.13, 5: 26.97, 10: 33.92, 50: 46.47, 100: 50.92, "full": 56.65},
        "ce+jac": {1: 6.78, 5: 23.94, 10: 32.03, 50: 45.71, 100: 51.47, "full": 53.44},
        "ce+act+jac": {1: 13.78, 5: 33.39, 10: 39.55, 50: 49.49, 100: 52.43, "full": 54.57},
        "act": {1: 10.73, 5: 28.56, 10: 33.6, 50: 45.73, 100: 50.15, "full": 56.59},
        "act+jac": {1: 13.09, 5: 33.31, 10: 38.16, 50: 47.79, 100: 50.06, "full": 51.33},
    },
    col_labels={"full": "500 (full)"},
    teacher_accuracy=64.78,
)

TABLE2 = PaperTable(
    number=2,
    caption="Robustness of VGG-9 models to Gaussian noise added to the normalised CIFAR-100 "
            "test images; test accuracy (%). λ: Jacobian-norm penalty strength; γ: ℓ2 "
            "strength; p: dropout rate.",
    setting="CIFAR-100, VGG-9",
    rows="models (`jkt.grids.robustness.model_rows` names)",
    columns="noise std. dev. σ",
    values={
        "lambda=0": {0.0: 64.78, 0.1: 61.9, 0.2: 47.53, 0.3: 29.63, 0.4: 17.69},
        "lambda=0.1": {0.0: 65.62, 0.1: 63.36, 0.2: 53.57, 0.3: 37.38, 0.4: 23.99},
        "lambda=1": {0.0: 63.59, 0.1: 62.66, 0.2: 57.53, 0.3: 47.48, 0.4: 35.43},
        "lambda=10": {0.0: 61.37, 0.1: 60.78, 0.2: 58.28, 0.3: 52.82, 0.4: 44.96},
        "l2=0.001": {0.0: 66.92, 0.1: 60.41, 0.2: 39.93, 0.3: 23.32, 0.4: 13.76},
        "dropout=0.25": {0.0: 66.8, 0.1: 61.53, 0.2: 44.34, 0.3: 26.70, 0.4: 15.77},
    },
    stds={
        "lambda=0": {0.1: 0.07, 0.2: 0.23, 0.3: 0.16, 0.4: 0.17},
        "lambda=0.1": {0.1: 0.18, 0.2: 0.23, 0.3: 0.18, 0.4: 0.19},
        "lambda=1": {0.1: 0.13, 0.2: 0.17, 0.3: 0.14, 0.4: 0.11},
        "lambda=10": {0.1: 0.05, 0.2: 0.13, 0.3: 0.10, 0.4: 0.19},
        "l2=0.001": {0.1: 0.27, 0.2: 0.28, 0.3: 0.25, 0.4: 0.16},
        "dropout=0.25": {0.1: 0.10, 0.2: 0.19, 0.3: 0.24, 0.4: 0.11},
    },
)

TABLE3 = PaperTable(
    number=3,
    caption="Transfer learning from ImageNet to MIT Scenes; test accuracy (%), mean of two "
            "runs. Student VGG-9 (from scratch unless said), teacher pretrained ResNet-34.",
    setting="ImageNet ResNet-34 teacher → two-head VGG-9 student on MIT Scenes",
    rows="methods (`jkt.train.methods.TRANSFER_METHODS`)",
    columns="images per class (`n_per_class`; the paper's \"Full\" is `\"full\"`)",
    values={
        "ce": {5: 11.64, 10: 20.30, 25: 35.19, 50: 46.38, "full": 59.33},
        "oracle": {5: 25.93, 10: 43.81, 25: 57.65, 50: 64.18, "full": 71.42},
        "ce+act": {5: 17.08, 10: 27.13, 25: 45.08, 50: 55.22, "full": 65.22},
        "ce+act+jac": {5: 17.88, 10: 28.25, 25: 45.26, 50: 56.49, "full": 66.04},
        "ce+act+att": {5: 16.53, 10: 28.35, 25: 46.01, 50: 57.80, "full": 67.24},
        "ce+act+att+attjac": {5: 18.02, 10: 29.25, 25: 47.31, 50: 58.35, "full": 67.31},
    },
    col_labels={"full": "Full"},
)

# Table 4's (teacher, student) feature depths -> our tap pair names (see module docstring).
DEPTH_PAIRS = {"stage1:pool2": (7, 2), "stage2:pool3": (15, 4), "stage3:pool4": (27, 6),
               "stage4:pool5": (33, 8)}

TABLE4 = PaperTable(
    number=4,
    caption="Feature-matching depth (T, S) of ResNet-34 teacher and VGG-9 student, MIT "
            "Scenes, 10 images per class; test accuracy and training Jacobian-loss "
            "reduction (%), mean of two runs.",
    setting="ImageNet ResNet-34 teacher → two-head VGG-9 student on MIT Scenes, 10 images "
            "per class",
    rows="`test_accuracy` (Accuracy (%)), `att_jac_reduction` (Jacobian loss reduction (%))",
    columns="depth pairs as `teacher_tap:student_tap` (`DEPTH_PAIRS` maps them to the "
            "paper's (T, S) depths)",
    values={
        "test_accuracy": {"stage1:pool2": 22.39, "stage2:pool3": 21.98,
                          "stage3:pool4": 20.45, "stage4:pool5": 20.03},
        "att_jac_reduction": {"stage1:pool2": 25.88, "stage2:pool3": 15.59,
                              "stage3:pool4": 11.55, "stage4:pool5": 1.25},
    },
    col_labels={pair: f"({t}, {s})" for pair, (t, s) in DEPTH_PAIRS.items()},
)

TABLE5 = PaperTable(
    number=5,
    caption="Average-pool window of the attention-map Jacobian (s: attention-map size; "
            "Full: global average pooling; None: no pooling), MIT Scenes, 10 images per "
            "class; test accuracy (%), mean of two runs.",
    setting="ImageNet ResNet-34 teacher → two-head VGG-9 student on MIT Scenes, 10 images "
            "per class",
    rows="`test_accuracy` (Accuracy (%))",
    columns="pool windows (`jkt.grids.transfer.POOL_WINDOWS` labels)",
    values={"test_accuracy": {"full": 20.00, "s/3": 21.20, "s/5": 21.87, "s/7": 21.09,
                              "none": 19.74}},
    col_labels={"full": "Full", "none": "None"},
)

TABLES = MappingProxyType({t.number: t for t in (TABLE1, TABLE2, TABLE3, TABLE4, TABLE5)})


# ---------------------------------------------------------------------------------------
# Markdown: our numbers beside the paper's, or the note that a run is only an analogue.


def compare(cfg) -> bool:
    """Whether a grid config asks for the paper's numbers (``compare_to_paper``)."""
    return bool(getattr(cfg, "compare_to_paper", False))


def analogue_note(table: PaperTable, ours: str) -> str:
    """The line a report without the paper's numbers carries: which paper table the run
    is an analogue of, and on what (``ours``) it was run instead."""
    return (f"This run is an *analogue* of the paper's Table {table.number} "
            f"({table.setting}): {ours}. The paper's numbers are not shown beside ours "
            "(they are with `compare_to_paper=True`, as in the paper presets).")


def beside(table: PaperTable, agg: Mapping, *, row_order: Sequence, col_order: Sequence,
           row_labels: Mapping | None = None, col_labels: Mapping | None = None,
           col_header: str = "", lookup: Callable | None = None,
           what: str = "Test accuracy (%)") -> str:
    """A ``## Beside the paper`` section: the table's source, then
    :func:`jkt.report.tables.comparison_table` of ``agg`` (our ``{(row, col): (mean, std,
    count)}`` as fractions) against ``table`` (``lookup(row, col)`` when our orientation
    differs from the paper's; default ``table.cell``)."""
    body = tables.comparison_table(agg, lookup or table.cell, row_order=row_order,
                                   col_order=col_order, row_labels=row_labels,
                                   col_labels=col_labels, col_header=col_header)
    return (f"## Beside the paper (Table {table.number})\n\n{what}: ours, then in brackets "
            f"the paper's value and Δ = ours − paper in percentage points. Paper: "
            f"{table.source}: {table.caption}\n\n{body}\n")


def teacher_line(table: PaperTable, ours: float | None) -> str:
    """``Teacher test accuracy: 63.10 % (paper 64.78 %, −1.68).`` (``ours`` a fraction)."""
    if table.teacher_accuracy is None:
        return ""
    paper = f"{table.teacher_accuracy:.2f} %"
    if ours is None:
        return f"Teacher test accuracy: n/a (paper {paper})."
    return (f"Teacher test accuracy: {100 * ours:.2f} % (paper {paper}, "
            f"{tables.signed(100 * ours - table.teacher_accuracy)}).")


__all__ = ["DEPTH_PAIRS", "PAPER", "TABLE1", "TABLE2", "TABLE3", "TABLE4", "TABLE5", "TABLES",
           "PaperTable", "analogue_note", "beside", "compare", "key", "teacher_line"]
