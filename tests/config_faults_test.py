"""Fault injection into launch settings: bad config files, out-of-range and non-finite
numbers, and a benchmark ``--out`` that would overwrite something.

Each fault must end as one ``error: ...`` line on stderr (``PROG: error: ...`` from the
parser) with exit status 2 for a usage error and 1 for a failure while running, never a
traceback. The in-process tests compile no JAX program; the few ``slow`` ones launch the
real command lines.
"""

import errno
import json
import re
import subprocess
import sys
from pathlib import Path

import jax
import pytest
from child_env import child_env

from experiments import bench, distill, robustness, train_teacher, transfer
from jkt import cli, ranges
from jkt import config as config_lib
from jkt.bench import BenchConfig, BenchSetting
from jkt.bench import report as bench_report
from jkt.data import DataConfig
from jkt.grids.distill import DistillConfig
from jkt.grids.robustness import RobustnessConfig
from jkt.grids.teacher import TeacherConfig
from jkt.grids.transfer import TransferConfig
from jkt.train import OptimConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "experiments" / "configs"
NAN, INF = float("nan"), float("inf")
COMMANDS = {"distill": distill, "robustness": robustness, "transfer": transfer,
            "train_teacher": train_teacher, "bench": bench}


def usage_error(parse, argv, capsys) -> str:
    """The one stderr line of ``parse(argv)``, which must exit with status 2."""
    with pytest.raises(SystemExit) as e:
        parse(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.match(r"^(\S+: )?error: ", err[0]), err
    assert "Traceback" not in err[0]
    return err[0]


# ---------------------------------------------------------------------------------------
# 1. Config files


BAD_FILES = {
    "raises": ("def get_config(arg):\n    raise RuntimeError('boom\\nsecond line')\n",
               "get_config(None) raised RuntimeError: boom second line"),
    "syntax": ("def get_config(arg)\n    return None\n", "has a syntax error at line 1"),
    "no_get_config": ("CONFIG = 1\n", "defines no get_config(arg)"),
    "not_callable": ("get_config = 3\n", "defines no get_config(arg)"),
    "import_fails": ("import no_such_module_jkt\n", "failed to load: ModuleNotFoundError"),
    "returns_dict": ("def get_config(arg):\n    return {'workdir': 'x'}\n",
                     "get_config(None) returned a dict, not a config"),
    "returns_none": ("def get_config(arg):\n    pass\n", "returned None, not a config"),
    "returns_class": ("from jkt.grids.distill import DistillConfig\n"
                      "def get_config(arg):\n    return DistillConfig\n",
                      "returned a type, not a config"),
    "invalid_value": ("from jkt.train import OptimConfig\nfrom jkt.grids.distill import "
                      "DistillConfig\ndef get_config(arg):\n    return DistillConfig("
                      "optim=OptimConfig(epochs=2.5))\n",
                      "epochs must be a positive integer, got 2.5"),
    "nan_in_options": ("from jkt.grids.distill import DistillConfig\ndef get_config(arg):\n"
                       "    return DistillConfig(student_options={'conv_impl': float('nan')})\n",
                       "student_options.conv_impl: nan is not a finite number"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_config_file_is_one_line_naming_the_file(case, tmp_path, capsys):
    text, words = BAD_FILES[case]
    path = tmp_path / f"{case}.py"
    path.write_text(text)
    line = usage_error(distill.parse_config, [f"--config={path}"], capsys)
    assert words in line and str(path) in line, line


def test_get_config_argument_is_named_when_it_fails(tmp_path, capsys):
    path = tmp_path / "presets.py"
    path.write_text("def get_config(arg):\n    return {'a': 1}[arg]\n")
    line = usage_error(distill.parse_config, [f"--config={path}:paper"], capsys)
    assert "get_config('paper') raised KeyError: 'paper'" in line


@pytest.mark.parametrize("spec, words", [
    ("", "config file not given"),
    ("{tmp}", "is a directory, not a .py file"),
    ("{tmp}/config.json", "is not a .py file"),
    ("{tmp}/missing.py:paper", "not found"),
])
def test_config_file_that_is_not_one(spec, words, tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    line = usage_error(distill.parse_config, [f"--config={spec.format(tmp=tmp_path)}"],
                       capsys)
    assert words in line, line


@pytest.mark.parametrize("command, file, got, owner", [
    ("distill", "robustness.py", "RobustnessConfig", "robustness"),
    ("robustness", "transfer.py:mit", "TransferConfig", "transfer"),
    ("transfer", "train_teacher.py", "TeacherConfig", "train_teacher"),
    ("train_teacher", "distill.py:paper", "DistillConfig", "distill"),
    ("distill", "bench.py:small", "BenchConfig", "bench"),
    ("bench", "distill.py", "DistillConfig", "distill"),
])
def test_another_commands_config_file_names_that_command(command, file, got, owner, capsys):
    module = COMMANDS[command]
    want = type(module.parse_config([])).__name__
    line = usage_error(module.parse_config, [f"--config=experiments/configs/{file}"], capsys)
    assert (f"config file experiments/configs/{file.partition(':')[0]} gives a {got} (the "
            f"config of python -m experiments.{owner}); this command takes a {want}") in line


def test_a_copied_config_file_is_recognised_by_its_type(tmp_path, capsys):
    path = tmp_path / "my_settings.py"
    path.write_text("from experiments.configs import robustness\n"
                    "def get_config(arg):\n    return robustness.quick()\n")
    line = usage_error(distill.parse_config, [f"--config={path}"], capsys)
    assert "gives a RobustnessConfig (the config of python -m experiments.robustness)" in line


def test_an_unknown_config_type_is_refused_without_an_owner(tmp_path, capsys):
    path = tmp_path / "own.py"
    path.write_text("import dataclasses\n@dataclasses.dataclass(frozen=True)\n"
                    "class Mine:\n    steps: int = 1\n"
                    "def get_config(arg):\n    return Mine()\n")
    line = usage_error(distill.parse_config, [f"--config={path}"], capsys)
    assert line.endswith("gives a Mine; this command takes a DistillConfig (see --help)")


def test_the_commands_own_config_file_still_loads():
    cfg = robustness.parse_config([f"--config={CONFIGS / 'robustness.py'}:paper"])
    assert cfg == robustness.parse_config(["--preset", "paper"])


# ---------------------------------------------------------------------------------------
# 2. Numbers


NUMBERS = [
    # (command, argv, words: the field and its range)
    ("distill", ["--lr", "nan"], "optim.learning_rate must be positive and finite, got nan"),
    ("distill", ["--teacher-lr", "inf"], "teacher_optim.learning_rate must be positive"),
    ("distill", ["--lr", "0"], "optim.learning_rate must be positive"),
    ("distill", ["--epochs", "2.5"], "optim.epochs: expected an integer, got '2.5'"),
    ("distill", ["--batch-size", "0"], "optim.batch_size must be positive, got 0"),
    ("distill", ["--config.optim.momentum=1"], "optim.momentum must be a finite number in "
     "[0, 1), got 1.0"),
    ("distill", ["--config.optim.momentum=-0.1"], "optim.momentum must be a finite number"),
    ("distill", ["--config.optim.weight_decay=nan"], "optim.weight_decay must be "
     "non-negative and finite, got nan"),
    ("distill", ["--config.optim.weight_decay=-1"], "optim.weight_decay must be non-negative"),
    ("distill", ["--config.optim.decay_factor=0"], "optim.decay_factor must be a finite "
     "number in (0, 1], got 0.0"),
    ("distill", ["--config.optim.decay_epochs=0.5,inf"], "optim.decay_epochs must be "
     "positive and finite, got inf"),
    ("distill", ["--config.optim.decay_epochs=-2"], "optim.decay_epochs must be positive"),
    ("distill", ["--val-fraction", "nan"], "data.val_fraction must be a finite number in "
     "[0, 1), got nan"),
    ("distill", ["--val-fraction", "1"], "data.val_fraction must be a finite number in [0, 1)"),
    ("distill", ["--image-size", "32.5"], "data.image_size: expected an integer"),
    ("distill", ["--seeds", "0,-1"], "seeds must be an integer in [0, 4294967295], got -1"),
    ("distill", ["--seeds", "4294967296"], "seeds must be an integer in [0, 4294967295]"),
    ("distill", ["--max-steps", "inf"], "max_steps: 'inf' is not int | None"),
    ("distill", ["--checkpoint-every", "0"], "checkpoint_every must be positive, got 0"),
    ("distill", ["--config.student_options.dropout=nan"], "student_options.dropout must be "
     "a finite number in [0, 1), got nan"),
    ("distill", ["--config.teacher_options.dropout=1"], "teacher_options.dropout must be a "
     "finite number in [0, 1)"),
    ("distill", ["--width-multiplier", "nan"], "width_multiplier must be positive and finite"),
    ("robustness", ["--lambdas", "0,nan"], "lambdas takes non-negative numbers (finite, >= 0)"),
    ("robustness", ["--sigmas", "0,inf"], "sigmas takes non-negative numbers (finite, >= 0)"),
    ("robustness", ["--weight-decay", "inf"], "weight_decay must be non-negative and finite"),
    ("robustness", ["--dropout", "nan"], "dropout out of range [0, 1): nan"),
    ("robustness", ["--noise-draws", "0"], "noise_draws must be >= 1"),
    ("robustness", ["--seed", "-3"], "seed must be an integer in [0, 4294967295], got -3"),
    ("transfer", ["--loss-weight", "inf"], "loss_weight must be positive and finite, got inf"),
    ("transfer", ["--loss-weight", "nan"], "loss_weight must be positive and finite, got nan"),
    ("transfer", ["--pool-fraction", "nan"], "pool window 'nan'"),
    ("transfer", ["--teacher-epochs", "-1"], "teacher_optim.epochs must be positive"),
    ("train_teacher", ["--seed", "-1"], "seed must be an integer in [0, 4294967295], got -1"),
    ("train_teacher", ["--lr=-inf"], "optim.learning_rate must be positive and finite"),
    ("bench", ["--max-seconds", "inf"], "setting.max_seconds must be positive and finite"),
    ("bench", ["--width-multiplier", "nan"], "setting.width_multiplier must be positive"),
    ("bench", ["--warmup", "-1"], "setting.warmup must be non-negative, got -1"),
    ("bench", ["--steps", "0"], "setting.steps must be positive, got 0"),
    ("bench", ["--batch-size", "2.5"], "setting.batch_size: expected an integer"),
    ("bench", ["--seed", "-1"], "seed must be an integer in [0, 4294967295], got -1"),
    ("bench", ["--torch-threads", "0"], "torch_threads must be positive, got 0"),
    ("bench", ["--out", ""], "out must be a directory (or none), got an empty path"),
]


@pytest.mark.parametrize("command, argv, words", NUMBERS,
                         ids=[f"{c}{''.join(a)}" for c, a, _ in NUMBERS])
def test_numbers_out_of_range_are_one_line_naming_field_and_range(command, argv, words,
                                                                    capsys):
    line = usage_error(COMMANDS[command].parse_config, argv, capsys)
    assert words in line, line


CONSTRUCTED = [
    # Python-level values, as a config file builds them: floats for ints, bools for
    # numbers, NaN and infinities.
    (lambda: OptimConfig(epochs=2.5), "epochs must be a positive integer, got 2.5"),
    (lambda: OptimConfig(batch_size=True), "batch_size must be a positive integer, got True"),
    (lambda: OptimConfig(learning_rate=NAN), "learning_rate must be positive and finite"),
    (lambda: OptimConfig(momentum=INF), "momentum must be a finite number in [0, 1)"),
    (lambda: OptimConfig(decay_epochs=(NAN,)), "decay_epochs must be positive and finite"),
    (lambda: DataConfig(image_size=32.0), "data.image_size must be a positive integer"),
    (lambda: DataConfig(val_fraction=INF), "data.val_fraction must be a finite number"),
    (lambda: DistillConfig(n_per_class=(True, 5)), "n_per_class takes positive integers"),
    (lambda: DistillConfig(max_steps=2.5), "max_steps must be a positive integer, got 2.5"),
    (lambda: DistillConfig(log_every=NAN), "log_every must be a positive integer, got nan"),
    (lambda: DistillConfig(seeds=(1.5,)), "seeds must be an integer in [0, 4294967295]"),
    (lambda: DistillConfig(student_options={"width_multiplier": True}),
     "student_options.width_multiplier must be positive and finite, got True"),
    (lambda: RobustnessConfig(noise_draws=2.0), "noise_draws must be >= 1 (an integer)"),
    (lambda: RobustnessConfig(dropout=True), "dropout out of range [0, 1): True"),
    (lambda: RobustnessConfig(lambdas=(0.0, NAN)), "lambdas takes non-negative numbers"),
    (lambda: RobustnessConfig(seed=True), "seed must be an integer in [0, 4294967295]"),
    (lambda: TransferConfig(loss_weight=INF), "loss_weight must be positive and finite"),
    (lambda: TransferConfig(ablation_n=2.0), "ablation_n takes positive integers"),
    (lambda: TeacherConfig(checkpoint_every=10.0), "checkpoint_every must be a positive "
     "integer"),
    (lambda: BenchSetting(steps=True), "steps must be a positive integer, got True"),
    (lambda: BenchSetting(max_seconds=NAN), "max_seconds must be positive and finite"),
    (lambda: BenchConfig(devices=1.5), "devices must be a positive integer, got 1.5"),
]


@pytest.mark.parametrize("make, words", CONSTRUCTED, ids=[w.split()[0] + str(i) for i, (_, w)
                                                         in enumerate(CONSTRUCTED)])
def test_constructed_configs_refuse_wrong_types_and_non_finite_numbers(make, words):
    with pytest.raises(ValueError) as e:
        make()
    assert words in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_no_nan_reaches_a_saved_config(tmp_path):
    """NaN and infinities are refused wherever they are: in JSON read back (``NaN`` is
    valid to Python's json), in a ``dict`` field no ``__post_init__`` looks into, or in a
    field whose config forgot to check it."""
    data = config_lib.to_dict(distill.parse_config([]))
    data["optim"]["learning_rate"] = NAN
    text = json.dumps(data)
    assert "NaN" in text
    with pytest.raises(config_lib.ConfigError, match=r"optim.learning_rate must be positive"):
        config_lib.from_dict(DistillConfig, json.loads(text))
    with pytest.raises(config_lib.ConfigError, match=r"teacher_options.conv_impl: inf is "
                                                     r"not a finite number"):
        config_lib.override(DistillConfig(), "teacher_options.conv_impl", "inf")

    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class Unchecked:
        rate: float = 1.0
        sizes: tuple[float, ...] = ()

    with pytest.raises(config_lib.ConfigError, match=r"^rate: nan is not a finite number$"):
        config_lib.override(Unchecked(), "rate", "nan")
    with pytest.raises(config_lib.ConfigError, match=r"^sizes: -inf is not a finite number$"):
        config_lib.override(Unchecked(), "sizes", "1,-inf")
    assert config_lib.override(Unchecked(), "rate", "2").rate == 2.0


def test_range_checks_reject_bools_and_name_the_range():
    ranges.check_int("n", 3)
    ranges.check_number("x", 0.5, 0, 1, high_open=True)
    for call, words in [
        (lambda: ranges.check_int("n", True), "n must be a positive integer, got True"),
        (lambda: ranges.check_int("n", 5, 0, 4), "n must be an integer in [0, 4], got 5"),
        (lambda: ranges.check_int("n", -1, 0), "n must be non-negative, got -1"),
        (lambda: ranges.check_number("x", False, 0),
         "x must be non-negative and finite, got False"),
        (lambda: ranges.check_number("x", 1, 0, 1, high_open=True),
         "x must be a finite number in [0, 1), got 1"),
        (lambda: ranges.check_number("x", "1", 0), "x must be non-negative and finite, "
                                                       "got '1'"),
    ]:
        with pytest.raises(ValueError) as e:
            call()
        assert str(e.value) == words


# ---------------------------------------------------------------------------------------
# 3. The benchmark's --out and its exit statuses


def _raise_exit(code):  # the real one ends the process without unwinding
    raise SystemExit(code)


@pytest.fixture
def bench_main(monkeypatch):
    """``experiments.bench.main`` that leaves this process's malloc and JAX settings
    alone and whose ``jkt.bench.run`` is ``fake`` (no program is compiled): returns
    ``main(argv, fake=None)``. ``jkt.cli``'s immediate exit raises ``SystemExit``."""
    monkeypatch.setattr(bench.host_allocator, "cpu_backend_expected", lambda: False)
    monkeypatch.setattr(cli, "_exit_now", _raise_exit)

    def main(argv, fake=None):
        if fake is not None:
            monkeypatch.setattr(bench.bench, "run", fake)
        return bench.main(["--no-torch", "--methods", "ce", *argv])

    return main


def _run_error(main, argv, capsys, status: int, fake=None) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv, fake)
    assert e.value.code == status
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(("error: ", "interrupted")), err
    return err[0]


def _never_runs(*args, **kwargs):
    raise AssertionError("the benchmark ran")


@pytest.mark.parametrize("earlier", ["bench.json", "bench.md", "bench.partial.json"])
def test_bench_refuses_an_out_holding_an_earlier_report(earlier, bench_main, tmp_path, capsys):
    out = tmp_path / "runs" / "bench"
    out.mkdir(parents=True)
    (out / earlier).write_text("earlier")
    line = _run_error(bench_main, ["--out", str(out)], capsys, 2, _never_runs)
    assert line == (f"error: --out {out} already holds {earlier} of an earlier benchmark; "
                    "pass another --out, or --overwrite to replace it")
    assert (out / earlier).read_text() == "earlier"
    assert sorted(p.name for p in out.iterdir()) == [earlier]  # no config.json written


@pytest.mark.parametrize("kind, words", [
    ("file", "is a file; pass a directory"),
    ("below_a_file", "cannot create the directory: Not a directory"),
    ("experiment", "holds a config.json that is not a benchmark's"),
])
def test_bench_refuses_an_out_it_cannot_use(kind, words, bench_main, tmp_path, capsys):
    (tmp_path / "f").write_text("keep")
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "config.json").write_text('{"workdir": "runs/distill"}')
    out = {"file": tmp_path / "f", "below_a_file": tmp_path / "f" / "sub",
           "experiment": tmp_path / "work"}[kind]
    line = _run_error(bench_main, ["--out", str(out), "--overwrite"], capsys, 2,
                      _never_runs)
    assert line.startswith(f"error: --out {out}") and words in line, line
    assert (tmp_path / "f").read_text() == "keep"
    assert (tmp_path / "work" / "config.json").read_text() == '{"workdir": "runs/distill"}'


def test_bench_out_accepts_overwrite_and_its_own_unfinished_config(tmp_path):
    out = tmp_path / "b"
    out.mkdir()
    (out / "bench.json").write_text("earlier")
    cfg = bench.parse_config(["--out", str(out), "--config.overwrite=true"])
    assert bench.check_out(cfg) == out
    fresh = tmp_path / "c"  # a run that failed before its first method: config.json only
    config_lib.write_json(bench.parse_config(["--out", str(fresh)]), fresh / "config.json")
    assert bench.check_out(bench.parse_config(["--out", str(fresh)])) == fresh
    assert bench.check_out(bench.parse_config([])) is None


def test_bench_too_many_devices_is_a_usage_error(bench_main, capsys):
    line = _run_error(bench_main, ["--devices", str(len(jax.devices()) + 1)], capsys, 2,
                      _never_runs)
    assert line == (f"error: --devices must be in [1, {len(jax.devices())}] (the devices "
                    f"here), got {len(jax.devices()) + 1}")


def test_bench_device_failure_exits_1(bench_main, capsys):
    def oom(*args, **kwargs):
        raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory\nwhile allocating")

    line = _run_error(bench_main, [], capsys, 1, oom)
    assert line == "error: RESOURCE_EXHAUSTED: Out of memory while allocating"


def test_bench_full_disk_exits_1_naming_out(bench_main, tmp_path, capsys, monkeypatch):
    def full(report, out):
        raise OSError(errno.ENOSPC, "No space left on device", str(out / "x"))

    def one_method(*args, on_method, **kwargs):
        on_method({"methods": {}})
        raise AssertionError("went on after a failed write")

    monkeypatch.setattr(bench_report, "write_partial", full)
    out = tmp_path / "b"
    line = _run_error(bench_main, ["--out", str(out)], capsys, 1, one_method)
    assert line == (f"error: cannot write the benchmark report into {out}: [Errno 28] No "
                    "space left on device — free space and rerun the same command with "
                    "--overwrite")


def test_bench_interrupted_keeps_what_it_measured(bench_main, tmp_path, capsys):
    def interrupted(*args, on_method, **kwargs):
        on_method({"methods": {"ce": {}}})
        raise KeyboardInterrupt

    out = tmp_path / "b"
    line = _run_error(bench_main, ["--out", str(out)], capsys, 130, interrupted)
    partial = out / bench_report.PARTIAL_FILE
    assert line == f"interrupted: {partial} holds the methods timed so far"
    assert json.loads(partial.read_text()) == {"methods": {"ce": {}}}


# ---------------------------------------------------------------------------------------
# The command lines themselves (one process each)


def _launch(args, cwd=ROOT):
    env = child_env(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=240)


def _one_error_line(result, status: int) -> str:
    assert result.returncode == status, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    err = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(err) == 1, result.stderr[-3000:]
    return err[0]


@pytest.mark.slow
def test_distill_command_refuses_robustness_config_file():
    result = _launch(["-m", "experiments.distill",
                      "--config=experiments/configs/robustness.py:paper"])
    line = _one_error_line(result, 2)
    assert line.startswith("distill.py: error: config file experiments/configs/robustness.py "
                           "gives a RobustnessConfig (the config of python -m "
                           "experiments.robustness); this command takes a DistillConfig")
    assert not result.stdout.strip()


@pytest.mark.slow
def test_bench_command_never_overwrites_an_earlier_report(tmp_path):
    out = tmp_path / "bench"
    out.mkdir()
    (out / "bench.md").write_text("earlier report")
    result = _launch(["-m", "experiments.bench", "--no-torch", "--out", str(out), "--steps",
                      "nan"])
    assert "setting.steps: expected an integer" in _one_error_line(result, 2)
    result = _launch(["-m", "experiments.bench", "--no-torch", "--out", str(out)])
    line = _one_error_line(result, 2)
    assert line.startswith(f"error: --out {out} already holds bench.md")
    assert [p.name for p in out.iterdir()] == ["bench.md"]
    assert (out / "bench.md").read_text() == "earlier report"
