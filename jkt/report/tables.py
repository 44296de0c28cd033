"""Result tables and plots: CSV rows -> paper-style markdown (mean ± std, best in bold) and
an accuracy-vs-data plot. Pure functions of lists of row dicts."""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path


def write_csv(rows: Sequence[dict], path) -> None:
    """Writes ``rows`` (dicts; the union of their keys are the columns) to ``path``."""
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    with Path(path).open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)


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


def markdown_table(rows: Sequence[dict], *, row_key: str, col_key: str, value_key: str,
                   row_order: Sequence, col_order: Sequence, row_labels: dict | None = None,
                   col_header: str = "", scale: float = 100.0, higher_is_better: bool = True
                   ) -> str:
    """A paper-style table: one row per ``row_key`` value, one column per ``col_key`` value,
    cells ``mean ± std`` (× ``scale``) over repeats, the best mean of each column in bold."""
    agg = aggregate(rows, row_key, col_key, value_key)
    rows_present = [r for r in row_order if any((r, c) in agg for c in col_order)]
    cols_present = [c for c in col_order if any((r, c) in agg for r in row_order)]
    best = {}
    for c in cols_present:
        means = [agg[(r, c)][0] for r in rows_present if (r, c) in agg]
        best[c] = max(means) if higher_is_better else min(means)
    header = f"| {col_header} | " + " | ".join(str(c) for c in cols_present) + " |"
    lines = [header, "|" + "---|" * (len(cols_present) + 1)]
    for r in rows_present:
        cells = []
        for c in cols_present:
            if (r, c) not in agg:
                cells.append("–")
                continue
            m, s, n = agg[(r, c)]
            text = f"{m * scale:.2f}" + (f" ± {s * scale:.2f}" if n > 1 else "")
            cells.append(f"**{text}**" if m == best[c] else text)
        label = (row_labels or {}).get(r, str(r))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
    fig.savefig(path, dpi=120)
    plt.close(fig)


def accuracy_tables(rows: Sequence[dict], **table_args) -> str:
    """Test-accuracy table, then the validation-accuracy table (what any model selection
    should use), both from :func:`markdown_table` with ``table_args``."""
    return (markdown_table(rows, value_key="test_accuracy", **table_args)
            + "\n\nValidation accuracy (%) (what any selection should use):\n\n"
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
