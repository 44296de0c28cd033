"""Tests of ``jkt.train.teacher``: the oracle's initialisation from a source-task network,
and the error cases of ``python -m experiments.train_teacher`` (teacher training itself
runs end to end in distill_test, transfer_test and disk_faults_test)."""

import jax
import numpy as np
import pytest
from train_fixtures import random_variables

from jkt import models
from jkt.train.teacher import oracle_variables

TINY_S = {"width_multiplier": 1 / 16}


def test_oracle_variables_copy_trunk_and_source_head_only():
    student = models.create("vgg9", 2, source_classes=3, **TINY_S)
    pretrained_model = models.create("vgg9", 3, **TINY_S)
    pre = random_variables(pretrained_model)
    fresh = models.abstract_variables(student, (32, 32, 3))
    got = oracle_variables(student, pre, (32, 32, 3), seed=0)
    for k in pre["params"]:
        if k != "fc":
            jax.tree.map(np.testing.assert_array_equal, got["params"][k], pre["params"][k])
    jax.tree.map(np.testing.assert_array_equal, got["params"]["fc_source"], pre["params"]["fc"])
    assert got["params"]["fc"]["kernel"].shape == fresh["params"]["fc"]["kernel"].shape
    head, pre_head = got["params"]["fc"]["kernel"], pre["params"]["fc"]["kernel"]
    assert not np.allclose(head, pre_head[:, :2])
    wider = models.create("vgg9", 2, source_classes=4, **TINY_S)
    with pytest.raises(ValueError, match="does not fit"):
        oracle_variables(wider, pre, (32, 32, 3))


# ---------------------------------------------------------------------------------------
# ``python -m experiments.train_teacher``: each way a launch can be wrong is one line and
# exit status 2, before any training (a disk failing during the run: disk_faults_test).

TINY_CLI = ["--dataset", "digits", "--arch", "vgg4", "--width-multiplier", "0.0625",
            "--max-steps", "2", "--batch-size", "8", "--no-progress"]


def _cli_error(argv, capsys) -> str:
    from experiments import train_teacher as cli_module

    with pytest.raises(SystemExit) as e:
        cli_module.main([*TINY_CLI, *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error:" in err[0], err
    return err[0]


@pytest.mark.parametrize("argv, words", [
    (["--dataset", "cifar10", "--data-dir", "{tmp}/no_such_dir"],
     "tfds dataset 'cifar10' is not prepared in {tmp}/no_such_dir"),
    (["--dataset", "folder:{tmp}/no_such_dir"], "'{tmp}/no_such_dir' does not exist"),
    (["--arch", "resnet99"], "unknown teacher architecture 'resnet99'; valid: vgg4, vgg9"),
    (["--max-steps", "abc"], "max_steps: 'abc' is not int"),
    (["--max-steps", "0"], "max_steps must be positive, got 0"),
    (["--lr", "fast"], "learning_rate"),
    (["--bogus-flag", "1"], "unrecognized arguments: --bogus-flag"),
], ids=["missing-data-dir", "missing-folder", "unknown-arch", "non-integer-steps",
        "zero-steps", "non-numeric-lr", "unknown-flag"])
def test_train_teacher_bad_launch_is_one_line(argv, words, tmp_path, capsys):
    argv = [a.format(tmp=tmp_path) for a in argv]
    line = _cli_error([*argv, "--workdir", str(tmp_path / "w")], capsys)
    assert words.format(tmp=tmp_path) in line, line
    assert not (tmp_path / "w" / "run").exists()  # nothing trained


def test_train_teacher_out_that_is_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "teacher").write_text("not a directory")
    for out in ("teacher", "teacher/sub"):
        line = _cli_error(["--out", str(tmp_path / out)], capsys)
        assert f"{tmp_path / 'teacher'} is a file, not a directory" in line


class _Stop(Exception):
    """Ends a launch once the teacher's record is written (no training needed here)."""


def test_train_teacher_existing_out_of_other_settings_is_one_line(tmp_path, capsys,
                                                                   monkeypatch):
    """An --out holding a teacher made with another architecture or seed is refused, not
    returned or overwritten; the launch's own config.json does not count as one."""
    from experiments import train_teacher as cli_module
    from jkt.train import teacher

    def stop(*a, **k):
        raise _Stop

    monkeypatch.setattr(teacher, "train_and_evaluate", stop)
    out = tmp_path / "t"
    with pytest.raises(_Stop):
        cli_module.main([*TINY_CLI, "--out", str(out)])
    with pytest.raises(_Stop):  # the same settings again: resumes
        cli_module.main([*TINY_CLI, "--out", str(out)])
    line = _cli_error(["--out", str(out), "--arch", "vgg9", "--seed", "3"], capsys)
    assert f"the teacher in {out} was made with other settings" in line
    assert "arch ('vgg4' -> 'vgg9')" in line and "seed (0 -> 3)" in line


def test_empty_workdir_is_one_line_and_writes_nothing_here(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = _cli_error(["--workdir", ""], capsys)
    assert "the work directory is empty; name one (--workdir DIR)" in line
    assert not list(tmp_path.iterdir())


def test_a_non_finite_teacher_loss_says_teacher(tmp_path, capsys, monkeypatch):
    """A NaN while the teacher trains is one line (exit status 1) that names the teacher,
    its directory, the step and the term."""
    import jax.numpy as jnp

    from experiments import train_teacher as cli_module
    from jkt.train import step

    real = step.make_train_step

    def nan_at_step_1(*args, **kwargs):
        good = real(*args, **kwargs)

        def bad(states, batch, teacher_variables, learning_rate, weights):
            new, metrics = good(states, batch, teacher_variables, learning_rate, weights)
            return new, {**metrics, "ce": jnp.where(states.step == 1, jnp.nan, metrics["ce"])}

        return bad

    monkeypatch.setattr(step, "make_train_step", nan_at_step_1)
    with pytest.raises(SystemExit) as e:
        cli_module.main([*TINY_CLI, "--workdir", str(tmp_path / "t")])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: teacher vgg4 in {tmp_path / 't'}: non-finite loss at step 1: "
                   "ce=nan"], err
