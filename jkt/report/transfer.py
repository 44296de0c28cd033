"""``transfer.{csv,md,png}`` (Table 3) and ``ablation_{depth,pool}.*`` (Tables 4-5) of a
transfer grid, and the Jacobian-loss reduction read from a run's ``metrics.jsonl``. With
``compare_to_paper``, each markdown file shows our numbers beside the paper's
(``jkt.report.paper.TABLE3`` / ``TABLE4`` / ``TABLE5``); without, a line saying the run is
an analogue of that table."""

from __future__ import annotations

import json
from pathlib import Path

from jkt import paths
from jkt.report import paper, tables
from jkt.train.methods import TRANSFER_LABELS

SPLIT_NOTE = "source and target tasks are disjoint class subsets of one dataset"
ANALOGUE_NOTE = f"an *analogue* of the paper's ImageNet -> MIT Scenes transfer: {SPLIT_NOTE}"
# Ablation metrics: our markdown's column label -> the CSV column (the paper tables' rows).
METRICS = {"Accuracy (%)": "test_accuracy", "Jacobian loss reduction (%)": "att_jac_reduction"}
STEMS = {"main": "transfer", "depth": "ablation_depth", "pool": "ablation_pool"}


def jacobian_loss_reduction(run_dir, term: str = "att_jac") -> tuple[float, float, float] | None:
    """``(first, last, (first - last) / first)`` of ``term`` over a run's ``metrics.jsonl``
    (one line per log interval), or ``None`` when the run did not log it."""
    path = paths.as_dir(run_dir) / "metrics.jsonl"
    if not path.exists():
        return None
    values = [rec[term] for line in path.read_text().splitlines() if line.strip()
              for rec in [json.loads(line)] if term in rec]
    if not values:
        return None
    first, last = values[0], values[-1]
    return first, last, (first - last) / first if first else 0.0


def _header(cfg, info: dict, what: str, table: paper.PaperTable) -> str:
    acc = info["teacher_accuracy"]
    acc = f"{acc:.2%} on its own test split" if acc is not None else "n/a"
    if not paper.compare(cfg):
        ours = (f"target `{info['target']}`, {info['teacher']} teacher → two-head "
                f"{cfg.student} student" + (f"; {SPLIT_NOTE}" if info["analogue"] else ""))
        note = "\n\n" + paper.analogue_note(table, ours)
    else:
        note = f"\n\nThis is {ANALOGUE_NOTE}." if info["analogue"] else ""
    return (f"# {what}\n\nTarget: `{info['target']}`; teacher: {info['teacher']}, test "
            f"accuracy {acc}; student: two-head {cfg.student} (target head: CE; source "
            f"head: matched to the teacher's logits). Loss weights {cfg.loss_weight:g}."
            f"{note}")


def _jacobian_row(cfg) -> str:
    """What "CE + match {activations + Jacobians}" matched."""
    if getattr(cfg, "jacobian_row", "output") == "attention_map":
        return ("\"CE + match {activations + Jacobians}\" matches the Jacobian of the pooled "
                "attention map at feature level 1 (app. 10.2, eq. 10; no attention matching).")
    return ("\"CE + match {activations + Jacobians}\" matches the output Jacobian of the "
            "teacher's top logit (prop. 1).")


def write(rows: dict, cfg, workdir: Path, info: dict) -> None:
    """``transfer.*`` from the main rows, ``ablation_{depth,pool}.*`` from the others."""
    main = rows["main"]
    if main:
        tables.write_csv(main, workdir / "transfer.csv")
        cols = list(cfg.n_per_class)
        common = dict(row_key="method", col_key="n_per_class", row_order=list(cfg.methods),
                      col_order=cols, row_labels=TRANSFER_LABELS,
                      col_header="# of data points per class →")
        md = (_header(cfg, info, "Transfer learning (Table 3)", paper.TABLE3)
              + f"\n\nTest accuracy (%), mean ± std over {len(cfg.seeds)} seed(s); best per "
              f"column in bold. {_jacobian_row(cfg)}\n\n"
              + tables.accuracy_tables(main, **common) + "\n")
        if paper.compare(cfg):
            agg = tables.aggregate(main, "method", "n_per_class", "test_accuracy")
            md += "\n" + paper.beside(paper.TABLE3, agg, row_order=list(cfg.methods),
                                      col_order=cols, row_labels=TRANSFER_LABELS,
                                      col_header=common["col_header"])
        paths.write_text(workdir / "transfer.md", md)
        tables.accuracy_vs_n_plot(main, workdir / "transfer.png",
                                  line_order=list(cfg.methods), x_order=cols,
                                  line_labels=TRANSFER_LABELS,
                                  xlabel="images per class (log; 'full' plotted at right)",
                                  title=f"Transfer to {info['target']}")
    for kind, key, title, xlabel, table in (
            ("depth", "depth_pair", "Feature-matching depth (Table 4)",
             "(teacher tap, student tap)", paper.TABLE4),
            ("pool", "pool_window", "Pooling window of the attention Jacobian (Table 5)",
             "average-pool window (s = attention-map size)", paper.TABLE5)):
        if rows[kind]:
            write_ablation(rows[kind], key, workdir / f"ablation_{kind}", cfg, info,
                           title, xlabel, table)


def write_ablation(rows: list[dict], key: str, stem: Path, cfg, info, title: str,
                   xlabel: str, table: paper.PaperTable) -> None:
    """``stem.{csv,md,png}``: accuracy and Jacobian-loss reduction per ablation column;
    ``table`` is the paper's (Table 4 or 5), whose rows are our metrics and columns our
    ablation columns."""
    tables.write_csv(rows, stem.with_suffix(".csv"))
    cols = list(dict.fromkeys(r[key] for r in rows))
    long = []
    for r in rows:
        long.append({"x": r[key], "metric": "Accuracy (%)", "value": r["test_accuracy"]})
        if "att_jac_reduction" in r:
            long.append({"x": r[key], "metric": "Jacobian loss reduction (%)",
                         "value": r["att_jac_reduction"]})
    metrics = list(METRICS)
    ours = tables.markdown_table(long, row_key="x", col_key="metric", value_key="value",
                                 row_order=cols, col_order=metrics, col_header=xlabel)
    n = rows[0]["n_per_class"]
    md = (_header(cfg, info, title, table)
          + f"\n\n{n} images per class; method `ce+act+att+attjac`; mean ± std over "
          f"{len(cfg.seeds)} seed(s); best per column in bold. Jacobian loss reduction = "
          "(first − last logged att_jac) / first, from each run's `metrics.jsonl`.\n\n"
          + ours + "\n")
    if paper.compare(cfg):
        paper_names = {c: table.col_labels.get(c, c) for c in cols}
        labels = {c: c if paper.key(p) == paper.key(c) else f"{c} = paper {p}"
                  for c, p in paper_names.items()}
        shown = [m for m in metrics if METRICS[m] in table.values]  # Table 5: accuracy only
        md += "\n" + paper.beside(
            table, tables.aggregate(long, "x", "metric", "value"), row_order=cols,
            col_order=shown, row_labels=labels, col_header=xlabel,
            lookup=lambda col, metric: table.cell(METRICS[metric], col),
            what=" and ".join(shown))
    paths.write_text(stem.with_suffix(".md"), md)
    tables.line_plot(long, stem.with_suffix(".png"), line_key="metric", x_key="x",
                     y_key="value", line_order=metrics, x_order=cols,
                     x_positions={c: i for i, c in enumerate(cols)}, logx=False,
                     xlabel=xlabel + ": " + ", ".join(f"{i}={c}" for i, c in enumerate(cols)),
                     ylabel="%", title=title)
