"""Every command-line flag of every experiment changes the config saved in its workdir.

The flags are walked from each entry point's parser (what ``--help`` shows), so a flag
added without a field to set, or a field that no longer reaches the config, fails here.
"""

import json

import pytest

from experiments import bench, distill, robustness, train_teacher, transfer
from jkt import cli, workdir, workdir_lock
from jkt import config as config_lib

ENTRY_POINTS = {"distill": distill, "robustness": robustness, "transfer": transfer,
                "train_teacher": train_teacher, "bench": bench}

# A value for each flag that differs from every preset's default (per experiment where
# the defaults differ).
SAMPLES = {
    "--dataset": "folder:/data/images", "--data-dir": "/data/tfds", "--image-size": "16",
    "--val-fraction": "0.2", "--workdir": "/tmp/elsewhere", "--out": "/tmp/elsewhere",
    "--teacher": "/teachers/t", "--source-student": "/teachers/s",
    "--methods": {"distill": "ce,ce+jac", "transfer": "ce,oracle", "bench": "ce"},
    "--n-per-class": "2,full", "--seeds": "7", "--estimator": "top", "--normalize": None,
    "--student": {"distill": "vgg9", "transfer": "vgg4"}, "--width-multiplier": "0.5",
    "--max-steps": "7", "--teacher-max-steps": "9", "--checkpoint-every": "3",
    "--log-every": "5", "--epochs": "3", "--batch-size": {"bench": "8", None: "16"}, "--lr": "0.5",
    "--optimizer": "sgd", "--teacher-epochs": "3", "--teacher-batch-size": "16",
    "--teacher-lr": "0.5", "--teacher-optimizer": "sgd", "--batching": "epoch",
    "--teacher-batching": "epoch", "--fusion": "vmap",
    "--fusion-groups": "all", "--dtype": "bfloat16", "--no-progress": None,
    "--trust-teacher": None, "--temperature": "2", "--noise-sigma": "0.3",
    "--jacobian-as-noise": None, "--jac-norm-form": "softmax", "--overwrite": {"bench": None},
    "--lambdas": "0,2", "--sigmas": "0,0.5", "--noise-draws": "2", "--weight-decay": "0.01",
    "--dropout": "0.5", "--model": "vgg4", "--seed": "3", "--source-classes": "0,1",
    "--target-classes": "5,6", "--att-pairs": "stage1:pool2", "--att-jac-pair": "stage1:pool2",
    "--pool-fraction": "s/3", "--depth-pairs": "auto", "--pool-windows": "all",
    "--ablation-n": "5", "--loss-weight": "2", "--teacher-stage-sizes": "2,2,2,2",
    "--arch": "vgg4", "--steps": "2", "--warmup": "0", "--max-seconds": "1", "--classes": "3",
    "--devices": "1", "--no-torch": None, "--torch-threads": "1",
    "--validation": "unused", "--augment": "none", "--label-free-estimator": "random",
    "--jacobian-row": "output", "--depth-attention": "same_pair", "--pipeline": "stream",
}
STARTING = {"-h", "--help", "--preset", "--config", "--small", "--reference"}


def _parser(module):
    default = module.parse_config([])
    return cli.build_parser(description="", epilog="", flags=module.FLAGS, presets=[],
                            default_preset="", default_cfg=default)


def _saved(cfg, tmp_path, monkeypatch) -> dict:
    monkeypatch.setattr(workdir, "setup_jax", lambda _: None)
    out, lock = workdir.prepare(cfg, tmp_path / "w")
    lock.release()
    return json.loads((out / workdir.CONFIG_FILE).read_text())


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_every_flag_changes_the_saved_config(name, tmp_path, monkeypatch):
    module = ENTRY_POINTS[name]
    default = _saved(module.parse_config([]), tmp_path / "default", monkeypatch)
    shown = {s for a in _parser(module)._actions for s in a.option_strings
             if a.help != "==SUPPRESS=="}
    assert shown - STARTING == {f.name for f in module.FLAGS}
    for flag in module.FLAGS:
        sample = SAMPLES[flag.name]
        sample = sample.get(name, sample.get(None)) if isinstance(sample, dict) else sample
        argv = [flag.name] if flag.const is not None else [flag.name, sample]
        saved = _saved(module.parse_config(argv), tmp_path / flag.name, monkeypatch)
        changed = config_lib.diff(default, saved)
        assert changed, f"{name} {flag.name} changed nothing"
        for path in flag.paths:
            assert any(c == path or c.startswith(path + ".") for c in changed), (
                f"{name} {flag.name} did not change {path}: {changed}")


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_every_preset_and_every_field_round_trips_through_json(name, tmp_path, monkeypatch):
    module = ENTRY_POINTS[name]
    presets = _presets(name)
    configs = [module.parse_config(["--preset", p]) for p in presets]
    assert len({json.dumps(config_lib.to_dict(c)) for c in configs}) == len(presets)
    for c in configs:
        saved = _saved(c, tmp_path / "rt", monkeypatch)
        assert config_lib.from_dict(type(c), saved) == c


def _presets(name):
    import importlib

    return list(importlib.import_module(f"experiments.configs.{name}").PRESETS)


def test_config_file_and_generic_overrides(capsys):
    cfg = distill.parse_config(["--config=experiments/configs/distill.py:paper",
                                "--config.optim.learning_rate=3e-3", "--config.seeds", "4,5",
                                "--config.student_options.width_multiplier=0.5"])
    assert cfg.data.name == "cifar100" and cfg.optim.learning_rate == 3e-3
    assert cfg.seeds == (4, 5) and cfg.student_options == {"width_multiplier": 0.5}
    # Short flags and --config.FIELD apply in command-line order.
    assert distill.parse_config(["--lr", "1", "--config.optim.learning_rate=2"]
                                ).optim.learning_rate == 2
    assert distill.parse_config(["--config.optim.learning_rate=2", "--lr", "1"]
                                ).optim.learning_rate == 1
    for argv, message in (
            (["--config.optim.lr=3e-3"], "unknown config field 'optim.lr'"),
            (["--config.optimm.learning_rate=3"], "did you mean optim?"),
            (["--config.optim.learning_rate"], "needs a value"),
            (["--config=experiments/configs/nope.py:paper"], "not found"),
            (["--config=experiments/configs/distill.py:nope"], "unknown preset 'nope'"),
            (["--preset", "paper", "--config", "experiments/configs/distill.py"],
             "not allowed with"),
    ):
        with pytest.raises(SystemExit) as e:
            distill.parse_config(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (argv, err)


def test_overrides_are_validated_together():
    """``--methods none`` alone is invalid (nothing to run), with an ablation it is not."""
    cfg = transfer.parse_config(["--methods", "none", "--pool-windows", "all"])
    assert cfg.methods == () and cfg.pool_windows == ("full", "s/3", "s/5", "s/7", "none")


def test_help_lists_every_field(capsys):
    with pytest.raises(SystemExit) as e:
        distill.parse_config(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for path in config_lib.field_paths(distill.parse_config([])):
        assert f"--config.{path}=" in out or path in ("student_options", "teacher_options")


@pytest.mark.parametrize("error, status, words", [
    (ValueError("bad n"), 2, "error: bad n"),
    (FileNotFoundError("no such dataset"), 2, "error: no such dataset"),
    (FloatingPointError("non-finite loss at step 3: ce=nan"), 1, "error: non-finite loss"),
    (OSError("No space left on device"), 1, "error: No space left"),
    (KeyboardInterrupt(), 130, "interrupted: the last checkpoint is kept"),
])
def test_run_turns_failures_into_one_line_and_a_status(error, status, words, capsys,
                                                        monkeypatch):
    def fail(_):
        raise error

    def exit_now(code):  # the real one ends the process without unwinding
        raise SystemExit(code)

    monkeypatch.setattr(cli, "_exit_now", exit_now)
    with pytest.raises(SystemExit) as e:
        cli.run(fail, None, errors=(FloatingPointError,))
    assert e.value.code == status
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(words)


def test_busy_workdir_is_a_failure_not_a_usage_error(tmp_path, capsys):
    def busy(_):
        raise workdir_lock.WorkdirBusyError(f"{tmp_path} is in use by pid 1 on host")

    with pytest.raises(SystemExit) as e:
        cli.run(busy, None)
    assert e.value.code == 1 and "in use by pid 1" in capsys.readouterr().err
