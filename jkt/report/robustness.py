"""``robustness.{csv,md,png}`` of a noise-robustness run (Table 2): with
``compare_to_paper``, our accuracies beside the paper's (``jkt.report.paper.TABLE2``);
without, a line saying the run is an analogue of Table 2."""

from __future__ import annotations

from pathlib import Path

from jkt import paths
from jkt.report import paper, tables

FILES = ("robustness.csv", "robustness.md", "robustness.png")
_FORMS = {"logit": "λ‖∇ₓ logit_y‖², prop. 2", "softmax": "λ‖∇ₓ log softmax_y‖², eq. 3"}


def markdown_rows(rows: list[dict], specs, sigmas: list[float]) -> list[str]:
    """Table-2 lines: one per model, accuracy ± std per σ (best in bold), clean grad norm."""
    header = "| Noise std. dev. → | " + " | ".join(f"{s:g}" for s in sigmas) + \
        " | ‖∇ₓS^y‖ (clean) |"
    best = {s: max((r["accuracy"] for r in rows if r["sigma"] == s), default=None)
            for s in sigmas}
    lines = [header, "|" + "---|" * (len(sigmas) + 2)]
    for spec in specs:
        mine = {r["sigma"]: r for r in rows if r["model"] == spec.name}
        if not mine:
            continue
        cells = []
        for s in sigmas:
            r = mine.get(s)
            if r is None:
                cells.append("–")
                continue
            text = f"{100 * r['accuracy']:.2f}"
            if r["draws"] > 1:
                text += f" ± {100 * r['accuracy_std']:.2f}"
            cells.append(f"**{text}**" if r["accuracy"] == best[s] else text)
        grad = next(iter(mine.values()))["grad_norm"]
        lines.append(f"| {spec.label} | " + " | ".join(cells) + f" | {grad:.3g} |")
    return lines


def write(rows: list[dict], specs, cfg, workdir: Path) -> str:
    """Writes the rows so far under ``workdir``; ``specs`` are the model rows, ``cfg`` the
    ``RobustnessConfig``. Returns the markdown."""
    workdir = paths.as_dir(workdir)
    tables.write_csv(rows, workdir / "robustness.csv")
    sigmas = [float(s) for s in cfg.sigmas]
    compare = paper.compare(cfg)
    note = "" if compare else paper.analogue_note(
        paper.TABLE2, f"{cfg.data.name}, {cfg.model}") + "\n\n"
    md = (f"# Robustness to Gaussian input noise ({cfg.data.name}, {cfg.model})\n\n"
          f"Test accuracy (%) with noise of std σ added to the normalised images; mean ± std "
          f"over {cfg.noise_draws} draws; best per column in bold. Jacobian-norm estimator: "
          f"`{cfg.estimator}`, form `{getattr(cfg, 'jac_norm_form', 'logit')}` "
          f"({_FORMS[getattr(cfg, 'jac_norm_form', 'logit')]}).\n\n" + note
          + "\n".join(markdown_rows(rows, specs, sigmas))
          + "\n")
    if compare:
        agg = {(r["model"], r["sigma"]): (r["accuracy"], r["accuracy_std"], r["draws"])
               for r in rows}
        md += "\n" + paper.beside(paper.TABLE2, agg, row_order=[s.name for s in specs],
                                  col_order=sigmas, row_labels={s.name: s.label for s in specs},
                                  col_labels={s: f"{s:g}" for s in sigmas},
                                  col_header="Noise std. dev. →")
    paths.write_text(workdir / "robustness.md", md)
    tables.line_plot(rows, workdir / "robustness.png", line_key="model", x_key="sigma",
                     y_key="accuracy", line_order=[s.name for s in specs], x_order=sigmas,
                     line_labels={s.name: s.label for s in specs},
                     xlabel="noise std. dev. σ (normalised units)", ylabel="test accuracy (%)",
                     title=f"Noise robustness on {cfg.data.name}", logx=False)
    return md
