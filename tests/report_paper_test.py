"""Tests of ``jkt.report.paper`` (the paper's Tables 1-5) and of the results.md files that
show our numbers beside them. Fake result rows only: nothing is trained."""

import dataclasses
import re
from pathlib import Path

import pytest

from experiments.configs import distill as distill_presets
from experiments.configs import robustness as robustness_presets
from experiments.configs import transfer as transfer_presets
from jkt.grids.robustness import RobustnessConfig, model_rows
from jkt.grids.transfer import POOL_WINDOWS
from jkt.models.vgg import VGG9_CONFIG
from jkt.report import distill, paper, robustness, tables, transfer
from jkt.train.methods import (
    METHOD_LABELS,
    TABLE1_METHODS,
    TRANSFER_LABELS,
    TRANSFER_METHODS,
)

ROOT = Path(__file__).resolve().parents[1]
PAPER_MD = ROOT.parent / "shared" / "paper" / "jacobian-matching.md"


# ---------------------------------------------------------------------------------------
# The typed tables against the paper's text.


@pytest.fixture(scope="module")
def paper_lines():
    if not PAPER_MD.exists():
        pytest.skip(f"paper text not found at {PAPER_MD} (../shared/paper/ of the repo)")
    return PAPER_MD.read_text().splitlines()


def _block(lines, header_prefix: str, occurrence: int = 0):
    """The header's cells and ``[(label, cells)]`` of the tab-separated table whose header
    line starts with ``header_prefix`` (its ``occurrence``-th match)."""
    starts = [i for i, line in enumerate(lines) if line.startswith(header_prefix)]
    assert len(starts) > occurrence, f"no table {header_prefix!r} #{occurrence} in the paper"
    i = starts[occurrence]
    header = lines[i].split("\t")[1:]
    rows = []
    for line in lines[i + 1:]:
        if "\t" not in line:
            break
        label, *cells = line.split("\t")
        rows.append((re.sub(r"<[^>]+>", "", label).strip(), cells))
    return header, rows


def _number(cell: str) -> tuple[float, float | None]:
    """``"$61.9\\pm0.07$"`` -> ``(61.9, 0.07)``; ``"64.78"`` -> ``(64.78, None)``."""
    m = re.fullmatch(r"\$?\s*([\d.]+)\s*(?:\\pm\s*([\d.]+))?\s*\$?", cell.strip())
    assert m, f"not a number: {cell!r}"
    return float(m[1]), float(m[2]) if m[2] else None


def _check_all_cells(table, rows, row_keys, col_keys):
    assert len(rows) == len(row_keys)
    for key, (label, cells) in zip(row_keys, rows, strict=True):
        assert len(cells) == len(col_keys), label
        for col, cell in zip(col_keys, cells, strict=True):
            assert table.cell(key, col) == _number(cell), (table.number, label, col)


def test_table1_every_cell_as_printed(paper_lines):
    header, rows = _block(paper_lines, "# of Data points per class", 0)
    assert header == ["1", "5", "10", "50", "100", "500 (full)"]
    by_label = {v: k for k, v in METHOD_LABELS.items()}
    keys = [by_label[label] for label, _ in rows]  # the paper's labels are ours
    assert keys == list(paper.TABLE1.row_keys) == list(TABLE1_METHODS)
    _check_all_cells(paper.TABLE1, rows, keys, paper.TABLE1.col_keys)
    caption = next(line for line in paper_lines if line.startswith("Table 1."))
    assert f"{paper.TABLE1.teacher_accuracy}% accuracy" in caption


def test_table2_every_cell_and_std_as_printed(paper_lines):
    header, rows = _block(paper_lines, "Noise std. dev.")
    assert [float(h) for h in header] == list(paper.TABLE2.col_keys)

    def key(label):  # the paper's row label -> the grid's model name
        if m := re.search(r"\\lambda\s*=\s*([\d.]+)", label):
            return f"lambda={float(m[1]):g}"
        if m := re.search(r"\\gamma\s*=\s*([\de.\s-]+)", label):
            return f"l2={float(m[1].replace(' ', '')):g}"
        m = re.search(r"p\s*=\s*([\d.]+)", label)
        return f"dropout={float(m[1]):g}"

    keys = [key(label) for label, _ in rows]
    assert keys == list(paper.TABLE2.row_keys)
    _check_all_cells(paper.TABLE2, rows, keys, paper.TABLE2.col_keys)


def test_table3_every_cell_as_printed(paper_lines):
    header, rows = _block(paper_lines, "# of Data points per class", 1)
    assert header == ["5", "10", "25", "50", "Full"]
    by_label = {v: k for k, v in TRANSFER_LABELS.items()}
    keys = [by_label[label] for label, _ in rows]
    assert keys == list(paper.TABLE3.row_keys) == list(TRANSFER_METHODS)
    _check_all_cells(paper.TABLE3, rows, keys, paper.TABLE3.col_keys)


def test_tables4_and_5_as_printed(paper_lines):
    header, rows = _block(paper_lines, "Feature matching depth")
    depths = [tuple(int(d) for d in re.findall(r"\d+", h)) for h in header]
    assert depths == list(paper.DEPTH_PAIRS.values())
    assert [label for label, _ in rows] == ["Accuracy (%)", "Jacobian loss reduction (%)"]
    _check_all_cells(paper.TABLE4, rows, ["test_accuracy", "att_jac_reduction"],
                     list(paper.DEPTH_PAIRS))
    header, rows = _block(paper_lines, "Average Pool Window size")
    assert [h.lower() for h in header] == list(POOL_WINDOWS) == list(paper.TABLE5.col_keys)
    _check_all_cells(paper.TABLE5, rows, ["test_accuracy"], paper.TABLE5.col_keys)


# ---------------------------------------------------------------------------------------
# The typed tables against our grids (runs without the paper's text).


def test_keys_are_the_grids_keys():
    assert paper.TABLE1.row_keys == TABLE1_METHODS
    assert paper.TABLE1.col_keys == distill_presets.paper().n_per_class
    rob = RobustnessConfig()
    assert paper.TABLE2.row_keys == tuple(r.name for r in model_rows(rob))
    assert paper.TABLE2.col_keys == rob.sigmas
    assert paper.TABLE3.row_keys == TRANSFER_METHODS
    assert paper.TABLE3.col_keys == transfer_presets.mit().n_per_class
    assert paper.TABLE5.col_keys == tuple(POOL_WINDOWS)
    assert set(paper.TABLES) == {1, 2, 3, 4, 5}
    for t in paper.TABLES.values():
        assert t.source.endswith(f"Table {t.number}") and t.caption and t.setting
        assert {len(v) for v in t.values.values()} == {len(t.col_keys)}
    assert [len(v) for v in paper.TABLE2.stds.values()] == [4] * 6  # σ = 0 has no ±


def test_depth_pairs_are_the_papers_layer_depths():
    # Teacher ResNet-34 (stages of 3, 4, 6, 3 two-conv blocks after the stem conv): depth
    # at the end of stage k; student VGG-9: convs before max-pool k.
    stage_ends = {f"stage{k + 1}": 1 + 2 * sum((3, 4, 6, 3)[:k + 1]) for k in range(4)}
    convs_before_pool, n_conv, n_pool = {}, 0, 0
    for item in VGG9_CONFIG:
        if item == "M":
            n_pool += 1
            convs_before_pool[f"pool{n_pool}"] = n_conv
        else:
            n_conv += 1
    for pair, (t_depth, s_depth) in paper.DEPTH_PAIRS.items():
        t_tap, s_tap = pair.split(":")
        assert stage_ends[t_tap] == t_depth and convs_before_pool[s_tap] == s_depth


def test_cell_lookup_normalises_keys_and_is_read_only():
    assert paper.TABLE1.cell("ce+act+jac", 100) == (52.43, None)
    assert paper.TABLE1.cell("ce+act+jac", "100") == paper.TABLE1.cell("ce+act+jac", 100)
    assert paper.TABLE1.cell("ce", "full") == (54.28, None)
    assert paper.TABLE1.cell("ce", 20) is None and paper.TABLE1.cell("nope", 1) is None
    assert paper.TABLE2.cell("lambda=1", "0.1") == (62.66, 0.13)
    assert paper.TABLE2.cell("lambda=0", 0) == (64.78, None)
    assert paper.TABLE3.cell("oracle", "Full") == (71.42, None)
    assert paper.TABLE4.cell("att_jac_reduction", "stage4:pool5") == (1.25, None)
    assert paper.TABLE5.cell("test_accuracy", "S/5") == (21.87, None)
    with pytest.raises(TypeError):
        paper.TABLE1.values["ce"][1] = 0.0


# ---------------------------------------------------------------------------------------
# results.md beside the paper, or marked as an analogue.


def _cell(ours: float, table, row, col, std: float | None = None) -> str:
    """The comparison cell the report should write (``ours`` a fraction)."""
    p, ps = table.cell(row, col)
    d = f"{100 * ours - p:+.2f}".replace("-", "−")
    mine = f"{100 * ours:.2f}" + (f" ± {100 * std:.2f}" if std is not None else "")
    theirs = f"{p:.2f}" + (f" ± {ps:.2f}" if ps is not None else "")
    return f"{mine} (paper {theirs}, {d})"


def _distill_rows(cfg):
    return [{"method": m, "n_per_class": n, "seed": 0, "val_accuracy": 0.5,
             "test_accuracy": 0.01 * (i + 3 * j)}
            for i, m in enumerate(cfg.methods) for j, n in enumerate(cfg.n_per_class)]


def test_distill_results_beside_the_paper(tmp_path):
    cfg = dataclasses.replace(distill_presets.paper(), workdir=str(tmp_path), seeds=(0,))
    assert cfg.compare_to_paper  # the paper preset compares
    rows = _distill_rows(cfg)
    md = distill.write(rows, tmp_path, cfg, 0.631)
    assert md == (tmp_path / "results.md").read_text()
    assert "Beside the paper (Table 1)" in md and "analogue" not in md
    for r in rows:
        assert _cell(r["test_accuracy"], paper.TABLE1, r["method"], r["n_per_class"]) in md
    # ce+act+jac at 100 per class: ours 0.01 * (3 + 3 * 4) = 15 %, the paper 52.43 %.
    assert "15.00 (paper 52.43, −37.43)" in md
    assert "Teacher test accuracy: 63.10 % (paper 64.78 %, −1.68)." in md
    # Two seeds: mean ± std, Δ from the mean.
    two = dataclasses.replace(cfg, seeds=(0, 1))
    rows2 = [{"method": "ce", "n_per_class": 1, "seed": s, "test_accuracy": a}
             for s, a in ((0, 0.05), (1, 0.07))]
    assert "6.00 ± 1.00 (paper 5.69, +0.31)" in distill.write(rows2, tmp_path, two, None)


def test_distill_results_without_the_paper_say_analogue(tmp_path):
    for cfg in (dataclasses.replace(distill_presets.paper(), compare_to_paper=False),
                distill_presets.quick()):
        cfg = dataclasses.replace(cfg, seeds=(0,))
        md = distill.write(_distill_rows(cfg), tmp_path, cfg, 0.631)
        assert "*analogue* of the paper's Table 1 (CIFAR-100" in md
        assert f"{cfg.data.name}, vgg9 teacher → vgg4 student" in md
        assert "(paper " not in md and "Beside the paper" not in md
        assert "52.43" not in md and "64.78" not in md
        assert METHOD_LABELS["ce"] in md and "**" in md  # the tables as before


def _tables_well_formed(md: str) -> None:
    """Every markdown table of ``md``: a header, a separator and rows of as many cells."""
    for block in re.findall(r"(?:^\|.*\|$\n?)+", md, flags=re.M):
        lines = block.strip().splitlines()
        widths = {line.count("|") for line in lines}
        assert len(lines) >= 3 and len(widths) == 1, block


def test_distill_results_without_any_validation_set(tmp_path):
    """No run has a validation set (the paper preset on a small tfds directory, or
    validation=none): one line says so, no empty or malformed validation table; where only
    some runs have one (not the "full" column), the validation table shows their columns."""
    cfg = dataclasses.replace(distill_presets.paper(), seeds=(0,))
    rows = [{**r, "val_accuracy": None} for r in _distill_rows(cfg)]
    md = distill.write(rows, tmp_path, cfg, 0.631)
    assert "No run has a validation set" in md and "Validation accuracy" not in md
    _tables_well_formed(md)
    some = [{**r, "val_accuracy": None if r["n_per_class"] == "full" else 0.5}
            for r in _distill_rows(cfg)]
    md = distill.write(some, tmp_path, cfg, 0.631)
    assert "Validation accuracy (%)" in md and "No run has" not in md
    test, val = md.split("Validation accuracy (%)")
    assert "| 100 | full |" in test and "| 100 |\n" in val and "full" not in val.split("\n\n")[1]
    _tables_well_formed(md)


def test_distill_plot_is_redrawn_on_schedule(tmp_path, monkeypatch):
    cfg = dataclasses.replace(distill_presets.quick(), seeds=(0,))
    md = distill.write(_distill_rows(cfg), tmp_path, cfg, 0.631, plot=False)
    assert md == (tmp_path / "results.md").read_text() and (tmp_path / "results.csv").exists()
    assert not (tmp_path / "results.png").exists()
    distill.write(_distill_rows(cfg), tmp_path, cfg, 0.631)
    assert (tmp_path / "results.png").read_bytes()[:4] == b"\x89PNG"

    clock = [100.0]
    monkeypatch.setattr(tables.time, "monotonic", lambda: clock[0])
    plots = tables.PlotSchedule(every_s=60)
    due = []
    for t, final in ((100, False), (130, False), (161, False), (170, False), (171, True)):
        clock[0] = t
        due.append(plots.due(final))
    assert due == [True, False, True, False, True]  # first cell, 60 s later, last cell


def _robustness_rows(cfg):
    return [{"model": spec.name, "sigma": float(s), "accuracy": 0.2 + 0.05 * i - 0.03 * j,
             "accuracy_std": 0.004, "draws": 1 if s == 0 else cfg.noise_draws, "grad_norm": 1.0}
            for i, spec in enumerate(model_rows(cfg)) for j, s in enumerate(cfg.sigmas)]


def test_robustness_results_beside_the_paper(tmp_path):
    cfg = robustness_presets.paper()
    assert cfg.compare_to_paper
    rows = _robustness_rows(cfg)
    md = robustness.write(rows, model_rows(cfg), cfg, tmp_path)
    assert "Beside the paper (Table 2)" in md
    for r in rows:
        std = r["accuracy_std"] if r["draws"] > 1 else None
        assert _cell(r["accuracy"], paper.TABLE2, r["model"], r["sigma"], std) in md
    # λ = 0 at σ = 0.1: ours 0.2 - 0.03 = 17 %, the paper 61.9 ± 0.07.
    assert "17.00 ± 0.40 (paper 61.90 ± 0.07, −44.90)" in md

    off = dataclasses.replace(cfg, compare_to_paper=False)
    md = robustness.write(rows, model_rows(off), off, tmp_path)
    assert "*analogue* of the paper's Table 2" in md
    assert "(paper " not in md and "61.90" not in md


def _transfer_rows(cfg):
    main = [{"method": m, "n_per_class": n, "seed": 0, "test_accuracy": 0.1 + 0.01 * i}
            for i, m in enumerate(cfg.methods) for n in cfg.n_per_class]
    depth = [{"method": "ce+act+att+attjac", "n_per_class": 10, "seed": 0, "depth_pair": p,
              "test_accuracy": 0.2, "att_jac_reduction": 0.1} for p in paper.DEPTH_PAIRS]
    pool = [{"method": "ce+act+att+attjac", "n_per_class": 10, "seed": 0, "pool_window": w,
             "test_accuracy": 0.21, "att_jac_reduction": 0.1} for w in POOL_WINDOWS]
    return {"main": main, "depth": depth, "pool": pool}


INFO = {"teacher_accuracy": None, "teacher": "resnet34 (imagenet, 1000 classes)",
        "target": "mit67", "analogue": False}


def test_transfer_results_beside_the_paper(tmp_path):
    cfg = dataclasses.replace(transfer_presets.mit(), seeds=(0,))
    assert cfg.compare_to_paper
    rows = _transfer_rows(cfg)
    transfer.write(rows, cfg, tmp_path, INFO)
    md = (tmp_path / "transfer.md").read_text()
    assert "Beside the paper (Table 3)" in md and "analogue" not in md
    for r in rows["main"]:
        assert _cell(r["test_accuracy"], paper.TABLE3, r["method"], r["n_per_class"]) in md
    assert "10.00 (paper 59.33, −49.33)" in md  # ce, full
    md = (tmp_path / "ablation_depth.md").read_text()
    for pair, (t, s) in paper.DEPTH_PAIRS.items():
        acc = _cell(0.2, paper.TABLE4, "test_accuracy", pair)
        red = _cell(0.1, paper.TABLE4, "att_jac_reduction", pair)
        assert f"| {pair} = paper ({t}, {s}) | {acc} | {red} |" in md
    assert "10.00 (paper 1.25, +8.75)" in md
    md = (tmp_path / "ablation_pool.md").read_text()
    for w in POOL_WINDOWS:
        assert f"| {w} | {_cell(0.21, paper.TABLE5, 'test_accuracy', w)} |" in md
    assert "21.00 (paper 20.00, +1.00)" in md


def test_transfer_results_without_the_paper_say_analogue(tmp_path):
    cfg = dataclasses.replace(transfer_presets.mit(), seeds=(0,), compare_to_paper=False)
    for info in (INFO, {**INFO, "analogue": True}):
        transfer.write(_transfer_rows(cfg), cfg, tmp_path, info)
        for stem, number in (("transfer", 3), ("ablation_depth", 4), ("ablation_pool", 5)):
            md = (tmp_path / f"{stem}.md").read_text()
            assert f"*analogue* of the paper's Table {number} (ImageNet ResNet-34" in md
            assert (transfer.SPLIT_NOTE in md) == info["analogue"]
            assert "(paper " not in md and "Beside the paper" not in md
    # The paper's setting with the paper preset, but a split-dataset teacher: compared,
    # and still said to be an analogue.
    on = dataclasses.replace(cfg, compare_to_paper=True)
    transfer.write(_transfer_rows(on), on, tmp_path, {**INFO, "analogue": True})
    md = (tmp_path / "transfer.md").read_text()
    assert transfer.ANALOGUE_NOTE in md and "(paper 59.33" in md
