"""``distill --preset kd`` and ``--preset claim`` in quick forms: every row trains, the
soft-target and noisy-input terms reach results.csv, and results.md holds the Claim's
table (analytic vs stochastic at matched σ)."""

import csv

import pytest

from experiments import distill
from experiments.configs import distill as configs


def _argv(preset, work, *extra):
    return ["--preset", preset, "--workdir", str(work), "--n-per-class", "2", "--seeds", "0",
            "--width-multiplier", "0.0625", "--max-steps", "3", "--teacher-max-steps", "3",
            "--batch-size", "8", "--teacher-batch-size", "8", "--no-progress", *extra]


def _rows(work):
    with (work / "results.csv").open() as f:
        return {r["method"]: r for r in csv.DictReader(f)}


@pytest.mark.slow
def test_kd_and_claim_presets_run_every_row(tmp_path, monkeypatch):
    monkeypatch.setenv("JKT_CACHE", str(tmp_path / "cache"))
    # The preset's soft-target rows and one squared-error row (the others are Table 1's).
    kd_rows = ("ce+act", "ce+kd", "ce+kd+jac", "kd+jac")
    assert set(kd_rows) <= set(configs.KD_METHODS)
    distill.main(_argv("kd", tmp_path / "kd", "--methods", ",".join(kd_rows)))
    rows = _rows(tmp_path / "kd")
    assert set(rows) == set(kd_rows)
    assert float(rows["ce+kd+jac"]["final_kd_jac"]) != 0 and float(rows["ce+kd"]["final_kd"]) >= 0
    assert "final_kd" not in rows["ce+act"] or rows["ce+act"]["final_kd"] == ""

    work = tmp_path / "claim"
    distill.main(_argv("claim", work, "--teacher", str(tmp_path / "kd" / "teacher" /
                                                        "artifact"),
                       "--methods", "act+jac,act_noise"))  # analytic vs stochastic
    rows = _rows(work)
    assert set(rows) == {"act+jac", "act_noise"}
    assert float(rows["act_noise"]["final_act_noise"]) > 0
    assert float(rows["act+jac"]["final_jac"]) > 0
    md = (work / "results.md").read_text()
    assert "Claim (prop. 1) at σ = 0.1" in md
    assert "| Match activations on noisy inputs only |" in md
