"""``results.{csv,md,png}`` of a distillation grid (Table 1): with ``compare_to_paper``, our
test accuracies and teacher beside the paper's (``jkt.report.paper.TABLE1``); without, a
line saying the run is an analogue of Table 1."""

from __future__ import annotations

from pathlib import Path

from jkt import paths
from jkt.report import paper, tables
from jkt.train.methods import METHOD_LABELS, METHODS


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
    if any(METHODS[m].act_noise > 0 for m in cfg.methods):
        md += "\n" + claim_table(rows, cfg) + "\n"
    paths.write_text(workdir / "results.md", md)
    if not plot:
        return md
    tables.accuracy_vs_n_plot(rows, workdir / "results.png", line_order=list(cfg.methods),
                              x_order=cols, line_labels=METHOD_LABELS,
                              xlabel="data points per class (log; 'full' plotted at right)",
                              title=f"Distillation on {cfg.data.name}")
    return md


def matched_loss(row: dict, sigma: float, analytic: bool) -> float | None:
    """The final step's activation-matching loss under input noise ``σ``: the noisy term
    itself (``act_noise``), or prop. 1's analytic form ``act + σ² · jac`` (full
    Jacobian, ``analytic``), or the clean ``act``; ``None`` without activation matching."""
    if row.get("final_act_noise") is not None:
        return row["final_act_noise"]
    if row.get("final_act") is None:
        return None
    jac = row.get("final_jac") if analytic else None
    return row["final_act"] + (sigma ** 2 * jac if jac is not None else 0.0)


def claim_table(rows: list[dict], cfg) -> str:
    """Per method: test accuracy, wall time per run and the final matched loss (mean over
    runs), for the analytic (Jacobian) and stochastic (noisy-input) forms of §3's Claim."""
    sigma, analytic = cfg.noise_sigma, getattr(cfg, "jacobian_as_noise", False)
    lines = [f"Claim (prop. 1) at σ = {sigma:g}: mean over points per class and seeds of "
             "test accuracy, wall time per run (fused runs share theirs) and the final "
             "step's activation-matching loss under noise (noisy-input rows: measured on "
             "noisy inputs; Jacobian rows: act + σ²·jac"
             f"{'' if analytic else ' not applicable: --jacobian-as-noise is off'}).", "",
             "| method | test accuracy (%) | wall time per run (s) | final matched loss |",
             "|---|---|---|---|"]
    for m in cfg.methods:
        mine = [r for r in rows if r["method"] == m]
        if not mine:
            continue
        acc = sum(r["test_accuracy"] for r in mine) / len(mine)
        wall = sum(r["wall_time_s"] / max(r.get("fused_runs", 1), 1) for r in mine) / len(mine)
        losses = [v for v in (matched_loss(r, sigma, analytic) for r in mine) if v is not None]
        loss = f"{sum(losses) / len(losses):.4g}" if losses else "—"
        lines.append(f"| {METHOD_LABELS.get(m, m)} | {100 * acc:.2f} | {wall:.1f} | {loss} |")
    return "\n".join(lines)


def _estimators(cfg) -> str:
    """Which output each row's Jacobian is taken of."""
    label_free = getattr(cfg, "label_free_estimator", cfg.estimator)
    if "act+jac" not in cfg.methods or label_free == cfg.estimator:
        return f"Jacobian estimator: `{cfg.estimator}`"
    return (f"Jacobian estimator: `{cfg.estimator}` for the rows with cross-entropy, "
            f"`{label_free}` for \"{METHOD_LABELS['act+jac']}\" (no labels)")


FILES = ("results.csv", "results.md", "results.png")
