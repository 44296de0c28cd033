"""``results.{csv,md,png}`` of a distillation grid (Table 1): with ``compare_to_paper``, our
test accuracies and teacher beside the paper's (``jkt.report.paper.TABLE1``); without, a
line saying the run is an analogue of Table 1."""

from __future__ import annotations

from pathlib import Path

from jkt import paths
from jkt.report import paper, tables
from jkt.train.methods import METHOD_LABELS


def write(rows: list[dict], workdir: Path, cfg, teacher_accuracy: float | None, *,
          plot: bool = True) -> str:
    """Writes the rows so far as ``results.csv``, ``results.md`` (the paper's table, mean ±
    std over seeds, best per column in bold) and, with ``plot``, ``results.png`` (accuracy
    vs points per class) under ``workdir``; ``cfg`` is the grid's ``DistillConfig``.
    ``teacher_accuracy`` is a fraction. Returns the markdown."""
    workdir = paths.as_dir(workdir)
    tables.write_csv(rows, workdir / "results.csv")
    cols = list(cfg.n_per_class)
    common = dict(row_key="method", col_key="n_per_class", row_order=list(cfg.methods),
                  col_order=cols, row_labels=METHOD_LABELS,
                  col_header="# of data points per class →")
    teacher = f"{teacher_accuracy:.2%}" if teacher_accuracy is not None else "n/a"
    compare = paper.compare(cfg)
    note = "" if compare else paper.analogue_note(
        paper.TABLE1, f"{cfg.data.name}, {cfg.teacher} teacher → {cfg.student} student") + "\n\n"
    md = (f"# Distillation ({cfg.data.name}: {cfg.teacher} teacher → {cfg.student} "
          f"student)\n\nTest accuracy (%), mean ± std over {len(cfg.seeds)} seed(s); best per "
          f"column in bold. Teacher test accuracy: {teacher}. {_estimators(cfg)}"
          f"{' (eq. 10 normalised)' if cfg.normalize else ''}.\n\n"
          + note + tables.accuracy_tables(rows, **common) + "\n")
    if compare:
        agg = tables.aggregate(rows, "method", "n_per_class", "test_accuracy")
        md += ("\n" + paper.beside(paper.TABLE1, agg, row_order=list(cfg.methods),
                                   col_order=cols, row_labels=METHOD_LABELS,
                                   col_header=common["col_header"])
               + "\n" + paper.teacher_line(paper.TABLE1, teacher_accuracy) + "\n")
    paths.write_text(workdir / "results.md", md)
    if not plot:
        return md
    tables.accuracy_vs_n_plot(rows, workdir / "results.png", line_order=list(cfg.methods),
                              x_order=cols, line_labels=METHOD_LABELS,
                              xlabel="data points per class (log; 'full' plotted at right)",
                              title=f"Distillation on {cfg.data.name}")
    return md


def _estimators(cfg) -> str:
    """Which output each row's Jacobian is taken of."""
    label_free = getattr(cfg, "label_free_estimator", cfg.estimator)
    if "act+jac" not in cfg.methods or label_free == cfg.estimator:
        return f"Jacobian estimator: `{cfg.estimator}`"
    return (f"Jacobian estimator: `{cfg.estimator}` for the rows with cross-entropy, "
            f"`{label_free}` for \"{METHOD_LABELS['act+jac']}\" (no labels)")


FILES = ("results.csv", "results.md", "results.png")
