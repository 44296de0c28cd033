"""Tests for jkt.bench.report and jkt.bench.settings: projection, goal lines, files."""

import json

import pytest

from jkt.bench import methods, report, settings


def test_table1_step_counts():
    assert settings.table1_student_steps() == 261_500
    assert settings.teacher_steps() == 500 * 391


def test_projection_from_fake_speeds():
    names = set(methods.TABLE1_PROXY.values()) | {methods.TEACHER_PROXY}
    results = {n: {"jkt": {"median_ms": 1.0}, "torch": None} for n in names}
    p = report.project_table1(results, "jkt")
    expected = (6 * 261_500 + 195_500) * 1.0 / 6e4
    assert p["minutes"] == pytest.approx(expected)
    assert report.project_table1(results, "torch")["minutes"] is None
    del results["vgg9:ce"]
    assert report.project_table1(results, "jkt")["missing"] == ["vgg9:ce"]


def test_fused_projection_and_members():
    names = set(methods.TABLE1_FUSED) | {methods.TEACHER_PROXY}
    results = {n: {"jkt": {"median_ms": 2.0}, "torch": None} for n in names}
    p = report.project_table1(results, "jkt", layout="jkt-fused")
    assert p["minutes"] == pytest.approx((3 * 261_500 + 195_500) * 2.0 / 6e4)
    assert report.project_table1(results, "jkt")["minutes"] is None  # needs the 6 proxies
    m = methods.METHODS["fused:jac-group"]
    assert m.runs == 3 and m.members == ("ce+jac", "ce+act+jac", "act+jac")
    assert all(x in methods.TABLE1_PROXY for x in m.members)


def _fake_report(ms: dict[str, tuple[float, float | None]], small=False):
    rows = {n: {"jkt": {"median_ms": j}, "torch": None if t is None else {"median_ms": t},
                "members": []} for n, (j, t) in ms.items()}
    return {"setting": {"small": small}, "methods": rows,
            "projection": {"jkt": {"minutes": 50.0}, "jkt-fused": {"minutes": 40.0}}}


def test_goal_lines_report_measured_ratios():
    lines = report.goal_lines(_fake_report({
        "ce+act": (2.0, 4.0), "ce+act+jac:label": (3.0, 12.0),
        "vgg9:ce+jac_norm": (5.0, 10.0)}))
    assert "- Jacobian step / activation step <= 1.8: 1.50 (met)" in lines
    assert "- Jacobian step: jkt / eager torch <= 1/3: 0.25 (met)" in lines
    assert "- Jacobian-norm step: jkt / eager torch <= 1/3: 0.50 (missed)" in lines
    assert "- full Jacobian: jkt / eager torch <= 1/4: n/a" in lines
    assert "- Table 1 <= 45 min per seed: 40 min with `jkt-fused` (met)" in lines


def _step(ms: float, loss: float = 1.0) -> dict:
    return {"median_ms": ms, "images_per_s": 100.0, "compile_s": 1.0, "peak_bytes": None,
            "xla_bytes": 2**20, "final_loss": loss}


def test_markdown_files_and_warnings(tmp_path):
    results = {
        "ce+act": {"label": "CE + act", "members": [], "jkt": _step(2.0),
                   "torch": _step(4.0), "ratio": 0.5},
        "fused:act-group": {"label": "fused", "members": ["ce+act", "act"],
                            "jkt": {**_step(3.0, float("nan")), "runs": 2,
                                    "ms_per_run_step": 1.5}, "torch": None, "ratio": None},
    }
    env = {"jax_devices": "1 device(s) (cpu) in 1 process(es)", "torch_device": "cpu"}
    rep = report.build(settings.BenchSetting(small=True), env, results, with_torch=True)
    assert set(rep["projection"]) == {"jkt", *methods.FUSED_LAYOUTS, "torch"}
    md = report.markdown(rep)
    assert "| `ce+act` | 1 | 2.00 | 2.00 | 100 | 1.0 | n/a | 1 MiB | 4.00 | 100 | 0.50 |" in md
    # the fused act group vs its members' separate steps (ce+act and act, both timed as ce+act)
    assert ("- `fused:act-group` (3.00 ms for 2 runs) vs separate jkt steps 4.00 ms -> 1.33x; "
            "separate torch steps 8.00 ms -> 2.67x (members timed as ce+act, ce+act)") in md
    assert "Performance goals: SMALL CPU MODE" in md
    assert report.nonfinite_warnings(rep) == ["warning: non-finite jkt loss in fused"]

    report.write_partial(rep, tmp_path)
    assert json.loads((tmp_path / "bench.partial.json").read_text())["methods"].keys() == \
        results.keys()
    md_path, json_path = report.write(rep, tmp_path)
    assert md_path.read_text() == md and not (tmp_path / "bench.partial.json").exists()
    assert json.loads(json_path.read_text())["setting"]["small"] is True


def test_markdown_names_the_host_memory_settings_when_recorded():
    results = {"ce": {"label": "CE", "members": [], "jkt": _step(2.0), "torch": None,
                      "ratio": None}}
    env = {"jax_devices": "1 device(s) (cpu) in 1 process(es)"}
    plain = report.markdown(report.build(settings.BenchSetting(small=True), env, results,
                                         with_torch=False))
    assert "Host memory" not in plain
    env["host_allocator"] = "glibc malloc: heap only, …"
    md = report.markdown(report.build(settings.BenchSetting(small=True), env, results,
                                      with_torch=False))
    assert "torch has no fused counterpart. Host memory: glibc malloc: heap only, …." in md
