"""Result tables and plots: CSV rows -> paper-style markdown (mean ± std, best in bold), a
table of our cells beside reference (paper) ones, and an accuracy-vs-data plot. Pure
functions of lists of row dicts."""

from __future__ import annotations

import csv
import io
import math
import time
from collections import defaultdict
from collections.abc import Sequence

from jkt import paths


def write_csv(rows: Sequence[dict], path) -> None:
    """Writes ``rows`` (dicts; the union of their keys are the columns) to ``path``."""
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    f = io.StringIO(newline="")
    w = csv.DictWriter(f, fieldnames=columns)
    w.writeheader()
    w.writerows(rows)
    paths.write_text(path, f.getvalue())


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and (population) standard deviation; std is 0 for one value."""
    m = sum(values) / len(values)
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / len(values))


def aggregate(rows: Sequence[dict], row_key: str, col_key: str, value_key: str):
    """``{(row, col): (mean, std, count)}`` of ``value_key`` over rows sharing the keys."""
    groups: dict = defaultdict(list)
    for r in rows:
        if r.get(value_key) not in (None, ""):
            groups[(r[row_key], r[col_key])].append(float(r[value_key]))
    return {k: (*mean_std(v), len(v)) for k, v in groups.items()}


def grid_table(agg: dict, cell, *, row_order: Sequence, col_order: Sequence,
               row_labels: dict | None = None, col_labels: dict | None = None,
               col_header: str = "") -> str:
    """A markdown table of ``agg`` (``{(row, col): value}``): one row per ``row_order`` value
    and one column per ``col_order`` value present in it, each cell ``cell(row, col,
    agg[(row, col)])`` ("–" where absent)."""
    rows_present = [r for r in row_order if any((r, c) in agg for c in col_order)]
    cols_present = [c for c in col_order if any((r, c) in agg for r in row_order)]
    header = [(col_labels or {}).get(c, str(c)) for c in cols_present]
    lines = [f"| {col_header} | " + " | ".join(header) + " |",
             "|" + "---|" * (len(cols_present) + 1)]
    for r in rows_present:
        cells = [cell(r, c, agg[(r, c)]) if (r, c) in agg else "–" for c in cols_present]
        label = (row_labels or {}).get(r, str(r))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def mean_std_text(mean: float, std: float, count: int, scale: float = 100.0) -> str:
    """``mean ± std`` (× ``scale``, two decimals); the mean alone for one value."""
    return f"{mean * scale:.2f}" + (f" ± {std * scale:.2f}" if count > 1 else "")


def markdown_table(rows: Sequence[dict], *, row_key: str, col_key: str, value_key: str,
                   row_order: Sequence, col_order: Sequence, row_labels: dict | None = None,
                   col_header: str = "", scale: float = 100.0, higher_is_better: bool = True
                   ) -> str:
    """A paper-style table: one row per ``row_key`` value, one column per ``col_key`` value,
    cells ``mean ± std`` (× ``scale``) over repeats, the best mean of each column in bold."""
    agg = aggregate(rows, row_key, col_key, value_key)
    pick = max if higher_is_better else min
    best = {c: pick([v[0] for (r, cc), v in agg.items() if cc == c and r in row_order],
                    default=None) for c in col_order}

    def cell(r, c, v):
        text = mean_std_text(*v, scale=scale)
        return f"**{text}**" if v[0] == best[c] else text

    return grid_table(agg, cell, row_order=row_order, col_order=col_order,
                      row_labels=row_labels, col_header=col_header)


def signed(d: float) -> str:
    """``+0.12`` / ``−0.12`` (a true minus sign), two decimals."""
    return f"{d:+.2f}".replace("-", "−")


def comparison_table(agg: dict, paper, *, row_order: Sequence, col_order: Sequence,
                     row_labels: dict | None = None, col_labels: dict | None = None,
                     col_header: str = "", scale: float = 100.0) -> str:
    """Our cells beside the paper's: :func:`grid_table` of ``agg`` (``{(row, col): (mean,
    std, count)}``, × ``scale``), each cell ``ours ± std (paper P ± S, Δ)`` where
    ``paper(row, col)`` gives ``(P, S or None)`` (already in %) or ``None`` (then
    ``(paper –)``) and Δ = ours − P. Then one line: mean Δ and mean |Δ| over the cells
    both have."""
    deltas = []

    def cell(r, c, v):
        ours = mean_std_text(*v, scale=scale)
        ref = paper(r, c)
        if ref is None:
            return f"{ours} (paper –)"
        p, ps = ref
        deltas.append(v[0] * scale - p)
        theirs = f"{p:.2f}" + (f" ± {ps:.2f}" if ps is not None else "")
        return f"{ours} (paper {theirs}, {signed(deltas[-1])})"

    table = grid_table(agg, cell, row_order=row_order, col_order=col_order,
                       row_labels=row_labels, col_labels=col_labels, col_header=col_header)
    if deltas:
        summary = (f"Over the {len(deltas)} cell(s) the paper has: mean Δ "
                   f"{signed(sum(deltas) / len(deltas))}, mean |Δ| "
                   f"{sum(abs(d) for d in deltas) / len(deltas):.2f} percentage points.")
    else:
        summary = "None of these cells is in the paper's table."
    return table + "\n\n" + summary


class PlotSchedule:
    """When a grid redraws its plot: after its last cell, and otherwise at most once per
    ``every_s`` seconds (the first cell included). Its tables are rewritten after every
    cell; a plot costs about half a second, which adds up over a grid of quick cells."""

    def __init__(self, every_s: float = 60.0):
        self.every_s = every_s
        self._last = -math.inf

    def due(self, final: bool) -> bool:
        """Whether to draw now (``final``: the grid's last cell)."""
        now = time.monotonic()
        if final or now - self._last >= self.every_s:
            self._last = now
            return True
        return False


def line_plot(rows: Sequence[dict], path, *, line_key: str, x_key: str, y_key: str,
              line_order: Sequence, x_order: Sequence, line_labels: dict | None = None,
              x_positions: dict | None = None, xlabel: str = "", ylabel: str = "",
              title: str = "", logx: bool = True, scale: float = 100.0) -> None:
    """One line per ``line_key`` value: mean of ``y_key`` vs ``x_key`` with ±std error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agg = aggregate(rows, line_key, x_key, y_key)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for line in line_order:
        xs = [x for x in x_order if (line, x) in agg]
        if not xs:
            continue
        pos = [(x_positions or {}).get(x, x) for x in xs]
        ax.errorbar(pos, [agg[(line, x)][0] * scale for x in xs],
                    yerr=[agg[(line, x)][1] * scale for x in xs], marker="o", capsize=3,
                    label=(line_labels or {}).get(line, str(line)))
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120)
    paths.write_bytes(path, png.getvalue())
    plt.close(fig)


def accuracy_tables(rows: Sequence[dict], **table_args) -> str:
    """Test-accuracy table, then the validation-accuracy table (what any model selection
    should use), both from :func:`markdown_table` with ``table_args``; where no run has a
    validation set, a line saying so instead of the second table."""
    test = markdown_table(rows, value_key="test_accuracy", **table_args)
    if not any(r.get("val_accuracy") not in (None, "") for r in rows):
        return (test + "\n\nNo run has a validation set (each trained on all of its "
                "training split, or `data.validation=none`).")
    return (test + "\n\nValidation accuracy (%) (what any selection should use):\n\n"
            + markdown_table(rows, value_key="val_accuracy", **table_args))


def accuracy_vs_n_plot(rows: Sequence[dict], path, *, line_order: Sequence, x_order: Sequence,
                       line_labels: dict, xlabel: str, title: str) -> None:
    """Test accuracy vs points per class (``n_per_class``, log x), one line per
    ``method``; ``"full"`` is plotted at 5x the largest integer n."""
    full = max([n for n in x_order if isinstance(n, int)], default=1) * 5
    line_plot(rows, path, line_key="method", x_key="n_per_class", y_key="test_accuracy",
              line_order=line_order, x_order=x_order, line_labels=line_labels,
              x_positions={"full": full}, xlabel=xlabel, ylabel="test accuracy (%)",
              title=title)
