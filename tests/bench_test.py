"""Tests for the command line ``experiments.bench`` (the harness end to end, not the speed)
and its prepared device check ``experiments/gpu_bench.sh``.

The benchmark runs in-process on one fake CPU device with tiny settings. The library
parts have their own tests: bench_methods_test, bench_harness_test, bench_report_test,
bench_torch_test.
"""

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import bench
from jkt.bench import METHODS

ROOT = Path(__file__).resolve().parents[1]
HAS_TORCH = importlib.util.find_spec("torch") is not None


def test_bad_method_is_a_usage_error():
    with pytest.raises(SystemExit) as e:
        bench.parse_config(["--methods", "ce,nope"])
    assert e.value.code == 2


@pytest.mark.slow
def test_harness_small_mode(tmp_path, capsys):
    methods = ["ce", "ce+act", "fused:act-group"]
    report = bench.main(["--methods", ",".join(methods), "--steps", "2", "--warmup", "0",
                         "--batch-size", "8", "--width-multiplier", "0.125", "--devices", "1",
                         "--out", str(tmp_path)])
    out = capsys.readouterr().out
    data = json.loads((tmp_path / "bench.json").read_text())
    md = (tmp_path / "bench.md").read_text()
    assert data["setting"]["small"] and data["setting"]["batch_size"] == 8
    assert list(data["methods"]) == methods == list(report["methods"])
    fused = data["methods"]["fused:act-group"]
    assert fused["torch"] is None and fused["members"] == ["ce+act", "act"]
    assert fused["jkt"]["ms_per_run_step"] == pytest.approx(fused["jkt"]["median_ms"] / 2)
    assert "separate jkt steps" in md  # fused vs its members' separate steps
    for name in methods[:2]:
        r = data["methods"][name]
        for side in ("jkt", "torch") if HAS_TORCH else ("jkt",):
            res = r[side]
            assert res["steps_timed"] == 2
            for key in ("median_ms", "images_per_s", "compile_s"):
                assert math.isfinite(res[key]) and res[key] > 0, (name, side, key)
            assert math.isfinite(res["final_loss"])
        if HAS_TORCH:
            assert r["ratio"] > 0
        else:
            assert r["torch"] is None and r["ratio"] is None
        assert f"| `{name}` |" in md
    assert "SMALL CPU MODE" in md and "| method | runs | jkt ms/step" in md
    assert "projected Table 1 wall time (jkt): n/a" in md  # needs ce+act and vgg9:ce
    assert md.strip() in out
    assert not (tmp_path / "bench.partial.json").exists()
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["setting"]["steps"] == 2 and saved["methods"] == methods


def test_torch_reference_reasons(monkeypatch):
    cfg = bench.parse_config(["--no-torch"])
    assert bench.torch_reference(cfg) == (None, "disabled (--no-torch)")
    cfg = bench.parse_config(["--dtype", "bfloat16"])
    assert bench.torch_reference(cfg) == (
        None, "skipped: reference is float32, jkt runs bfloat16")
    import experiments

    monkeypatch.delattr(experiments, "torch_reference", raising=False)
    monkeypatch.setitem(sys.modules, "experiments.torch_reference", None)  # blocked import
    cfg = bench.parse_config([])
    assert bench.torch_reference(cfg) == (None, "not installed")


@pytest.mark.slow
def test_runs_without_tensorflow_datasets_and_torch_is_lazy(tmp_path):
    """The GPU machine has no tensorflow-datasets: nothing on the benchmark's path may
    import it; and ``import jkt.bench`` must not import torch."""
    argv = ["--methods", "ce", "--steps", "1", "--warmup", "0", "--batch-size", "4",
            "--width-multiplier", "0.125", "--devices", "1", "--no-torch", "--out", str(tmp_path)]
    code = (
        "import sys; sys.modules['tensorflow_datasets'] = None; "  # blocked: raises on import
        "import jkt.bench; assert 'torch' not in sys.modules, 'jkt.bench imported torch'; "
        f"from experiments import bench; bench.main({argv!r}); "
        "assert 'tensorflow' not in sys.modules"
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "bench.json").exists()


def test_gpu_script_names_valid_methods_and_flags():
    """``experiments/gpu_bench.sh`` (the prepared device check) must not rot: every
    method it names exists and every flag it passes to the benchmark parses."""
    text = (ROOT / "experiments" / "gpu_bench.sh").read_text()
    calls = re.findall(r"-m experiments\.bench (.*?)2>&1", text, flags=re.S)
    assert len(calls) == 2
    for call in calls:
        tokens = call.replace("\\\n", " ").split()
        flags = [t for t in tokens if t.startswith("--")]
        for m in re.findall(r"--methods (\S+)", " ".join(tokens)):
            assert set(m.split(",")) <= set(METHODS), m
        known = {s for a in bench.build_parser()._actions for s in a.option_strings}
        assert set(flags) <= known, set(flags) - known
