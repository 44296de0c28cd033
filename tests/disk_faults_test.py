"""A disk that fills up or turns read-only during a run: one ``error:`` line naming the
file or directory, the cause and the fix, exit status 1, no traceback and no hang; what
was written before stays intact and the same command resumes once the disk is fixed.

The end-to-end tests run ``python -m experiments.train_teacher`` (tiny VGG-4 on digits)
in a subprocess whose fault is injected at one point of the run (:data:`DRIVER`):

* full disk: ``RLIMIT_FSIZE`` set to 0 (``SIGXFSZ`` ignored), so every later write to a
  regular file really fails (``EFBIG``, which the kernel reports like ``ENOSPC``);
* read-only: the checkpoint directory is made ``0o555``. Root ignores permissions, so as
  root the process runs without ``CAP_DAC_OVERRIDE`` (``setpriv --bounding-set
  -dac_override``).
"""

import errno
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from child_env import child_env

from jkt import checkpoint, cli, workdir

ROOT = Path(__file__).resolve().parents[1]

# ``python -c DRIVER FAULT ARGS...``: the train_teacher CLI with FAULT injected.
DRIVER = r'''
import os, resource, runpy, signal, sys
from jkt import checkpoint
from jkt.train import metrics, results

fault, argv = sys.argv[1], sys.argv[2:]
opened = []

def disk_full(*_, **__):
    for c in opened:  # saves still in flight are not the fault under test
        c.wait()
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))

def before(owner, name, act):
    real = getattr(owner, name)
    def wrapped(*a, **k):
        act(*a, **k)
        return real(*a, **k)
    setattr(owner, name, wrapped)

real_init, real_save = checkpoint.TrainCheckpointer.__init__, checkpoint.TrainCheckpointer.save

def init(self, *a, **k):
    real_init(self, *a, **k)
    opened.append(self)

def save(self, step, *a, **k):  # the fault after the first save is written
    saved = real_save(self, step, *a, **k)
    if saved and fault.startswith("checkpoint") and not getattr(save, "done", False):
        save.done = True
        self.wait()
        disk_full() if fault == "checkpoint-full" else os.chmod(self.directory, 0o555)
    return saved

checkpoint.TrainCheckpointer.__init__, checkpoint.TrainCheckpointer.save = init, save
if fault == "metrics":
    before(metrics.MetricLog, "write", disk_full)
elif fault == "result":
    before(results, "write_file", disk_full)
elif fault == "artifact":
    before(checkpoint, "save_teacher", disk_full)
sys.argv = ["train_teacher", *argv]
runpy.run_module("experiments.train_teacher", run_name="__main__")
'''

# 8 steps, a checkpoint every 2: the fault follows step 2's checkpoint.
TEACHER = ["--dataset", "digits", "--arch", "vgg4", "--width-multiplier", "0.0625",
           "--max-steps", "8", "--batch-size", "8", "--checkpoint-every", "2", "--no-progress"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """One CPU device and a compilation cache shared by this module's runs."""
    cache = tmp_path_factory.mktemp("jax_cache")
    env = child_env()
    env.update(PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
               JAX_COMPILATION_CACHE_DIR=str(cache),
               JKT_CACHE=str(tmp_path_factory.mktemp("data_cache")))
    return env


def _teacher(work: Path, env, fault: str | None = None, prefix: tuple[str, ...] = ()):
    """The train_teacher CLI into ``work`` (with ``fault`` injected); must end in 120 s."""
    head = ["-c", DRIVER, fault] if fault else ["-m", "experiments.train_teacher"]
    return subprocess.run([*prefix, sys.executable, *head, *TEACHER, "--workdir", str(work)],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)


def _one_error_line(out) -> str:
    """The run failed with status 1 and exactly one ``error:`` line, nothing else alarming."""
    assert out.returncode == 1, out.stderr[-3000:]
    assert "Traceback" not in out.stderr and "ERROR:absl" not in out.stderr, out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out.stderr[-3000:]
    return errors[0]


def _resumed(work: Path, env, from_step: int) -> None:
    """The same command, on a fixed disk, resumes from ``from_step`` and finishes."""
    out = _teacher(work, env)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((work / "run" / "result.json").read_text())
    assert result["resumed_from"] == from_step and result["steps"] == 8
    assert checkpoint.read_teacher_meta(work / "artifact").arch == "vgg4"


def permissions_apply() -> tuple[str, ...]:
    """A command prefix under which permissions apply to this user: none, or for root
    ``setpriv`` dropping ``CAP_DAC_OVERRIDE`` from the bounding set; skips if impossible."""
    if os.geteuid() != 0:
        return ()
    prefix = (shutil.which("setpriv") or "setpriv", "--bounding-set", "-dac_override")
    try:
        subprocess.run([*prefix, sys.executable, "-c", "pass"], check=True,
                       capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("root ignores permissions, and setpriv cannot drop CAP_DAC_OVERRIDE")
    return prefix


@pytest.fixture(scope="module")
def full_during_save(tmp_path_factory, env):
    """``(workdir, completed process)`` of a run whose disk fills up after step 2's
    checkpoint: step 4's save fails in Orbax's background threads, step 6's reports it."""
    work = tmp_path_factory.mktemp("full") / "w"
    return work, _teacher(work, env, "checkpoint-full")


@pytest.mark.slow
def test_full_disk_during_a_checkpoint_save(full_during_save):
    work, out = full_during_save
    ckpts = work / "run" / "checkpoints"
    assert _one_error_line(out) == (
        f"error: cannot write checkpoint step 4 to {ckpts}: [Errno 27] File too large — "
        "free space and rerun the same command to resume from step 2")
    assert checkpoint.latest_saved_step(ckpts) == 2  # step 4 is left as a temporary dir
    assert [p.name for p in ckpts.iterdir() if "tmp" in p.name]


@pytest.mark.slow
def test_rerun_after_a_full_disk_resumes(full_during_save, env):
    work, _ = full_during_save
    _resumed(work, env, from_step=2)  # step 2 restored, checksum checked
    assert not [p for p in (work / "run" / "checkpoints").iterdir() if "tmp" in p.name]


@pytest.mark.slow
def test_checkpoint_directory_turns_read_only_then_rerun_resumes(tmp_path, env):
    work = tmp_path / "w"
    out = _teacher(work, env, "checkpoint-read-only", prefix=permissions_apply())
    ckpts = work / "run" / "checkpoints"
    assert _one_error_line(out) == (
        f"error: cannot write checkpoint step 4 to {ckpts}: [Errno 13] Permission denied — "
        f"make {ckpts} writable and rerun the same command to resume from step 2")
    ckpts.chmod(0o755)
    _resumed(work, env, from_step=2)


@pytest.mark.slow
@pytest.mark.parametrize("fault, expected, from_step", [
    ("metrics", "error: [Errno 27] File too large (work directory {w}) — free space and rerun "
                "the same command to resume from the last checkpoint", 6),
    ("result", "error: cannot write {w}/run/result.json: [Errno 27] File too large — free "
               "space and rerun the same command to evaluate the run again from its last "
               "checkpoint", 8),
    ("artifact", "error: cannot write the teacher artifact {w}/artifact: [Errno 27] File too "
                 "large — free space and rerun the same command to finish", None),
])
def test_full_disk_writing_metrics_result_or_artifact(tmp_path, env, fault, expected,
                                                      from_step):
    work = tmp_path / "w"
    assert _one_error_line(_teacher(work, env, fault)) == expected.format(w=work)
    if from_step is None:  # the run had finished: only the artifact is written again
        out = _teacher(work, env)
        assert out.returncode == 0, out.stderr[-3000:]
        assert checkpoint.read_teacher_meta(work / "artifact").arch == "vgg4"
    else:
        _resumed(work, env, from_step=from_step)


# ---------------------------------------------------------------------------------------
# In-process: how a failure is recognised, worded and reported.

ENOSPC_TEXT = os.strerror(errno.ENOSPC)


@pytest.fixture
def ckpt(tmp_path):
    c = checkpoint.TrainCheckpointer(tmp_path / "ckpts", max_to_keep=2)
    yield c
    c.close()


STATE = {"w": jnp.arange(6.0), "b": jnp.ones(2)}


def test_failed_save_is_one_line_naming_step_directory_cause_and_resume(ckpt, monkeypatch):
    ckpt.save(2, STATE)
    ckpt.wait()

    def full(*a, **k):  # TensorStore reports a failed write as a ValueError quoting it
        raise ValueError(f"OUT_OF_RANGE: Error writing \"x\": Failed writing: "
                         f"{ENOSPC_TEXT} [tensorstore_spec='{{...}}']")

    monkeypatch.setattr(ckpt._manager, "save", full)
    with pytest.raises(workdir.WriteError) as e:
        ckpt.save(4, STATE)
    assert str(e.value) == (f"cannot write checkpoint step 4 to {ckpt.directory}: [Errno 28] "
                            f"{ENOSPC_TEXT} — free space and rerun the same command to "
                            "resume from step 2")
    assert e.value.errno == errno.ENOSPC and isinstance(e.value, OSError)


def test_background_failure_is_reported_once_under_its_step(ckpt, monkeypatch):
    ckpt.save(2, STATE)
    ckpt.wait()
    ckpt.save(4, STATE)
    real_wait = ckpt._manager.wait_until_finished

    def failed():
        real_wait()
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(ckpt._manager, "wait_until_finished", failed)
    with pytest.raises(workdir.WriteError, match=f"step 4 to {ckpt.directory}: "
                       r"\[Errno 30\] Read-only file system — make .* writable"):
        ckpt.save(6, STATE)
    ckpt.close()  # already reported: not raised again
    restored, _ = checkpoint.TrainCheckpointer(ckpt.directory).restore(STATE, step=2)
    np.testing.assert_array_equal(restored["w"], STATE["w"])


def test_other_save_errors_pass_through_and_saved_steps_are_not_rewritten(ckpt, monkeypatch):
    ckpt.save(2, STATE)
    ckpt.wait()
    assert not ckpt.save(2, STATE, force=True)  # a run resumed at its last step

    def bad(*a, **k):
        raise ValueError("not a disk problem")

    monkeypatch.setattr(ckpt._manager, "save", bad)
    with pytest.raises(ValueError, match="not a disk problem"):
        ckpt.save(4, STATE)


def test_os_cause_finds_the_operating_system_error():
    try:
        try:
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
        except OSError as inner:
            raise RuntimeError("commit failed") from inner
    except RuntimeError as e:
        chained = e
    assert workdir.os_cause(chained) == (errno.EDQUOT,
                                         f"[Errno {errno.EDQUOT}] {os.strerror(errno.EDQUOT)}")
    assert workdir.os_cause(ValueError(f"Failed writing: {ENOSPC_TEXT}"))[0] == errno.ENOSPC
    assert workdir.os_cause(ValueError("shape mismatch")) is None


def test_write_file_keeps_the_old_file_and_names_the_new_one(tmp_path, monkeypatch):
    path = tmp_path / "result.json"
    workdir.write_file(path, "old")

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, ENOSPC_TEXT)

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(workdir.WriteError) as e:
        workdir.write_file(path, "new", resume="to finish")
    assert str(e.value) == (f"cannot write {path}: [Errno 28] {ENOSPC_TEXT} — free space and "
                            "rerun the same command to finish")
    monkeypatch.undo()
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == [
        "result.json"]


class _Cfg:
    workdir = "runs/x"


@pytest.mark.parametrize("error, line", [
    (OSError(errno.ENOSPC, ENOSPC_TEXT),
     f"error: [Errno 28] {ENOSPC_TEXT} (work directory runs/x) — free space and rerun the "
     "same command to resume from the last checkpoint"),
    (PermissionError(errno.EACCES, "Permission denied", "runs/x/metrics.jsonl"),
     "error: [Errno 13] Permission denied: 'runs/x/metrics.jsonl' (work directory runs/x) — "
     "make runs/x writable and rerun the same command to resume from the last checkpoint"),
    (workdir.WriteError("cannot write checkpoint step 4 to d: ...", errno.ENOSPC),
     "error: cannot write checkpoint step 4 to d: ..."),
])
def test_cli_reports_a_disk_error_in_one_line_and_ends_at_once(error, line, capsys,
                                                               monkeypatch):
    ended = []

    def exit_now(code):  # the real one ends the process without waiting on threads
        ended.append(code)
        raise SystemExit(code)

    def fail(_):
        raise error

    monkeypatch.setattr(cli, "_exit_now", exit_now)
    with pytest.raises(SystemExit):
        cli.run(fail, _Cfg())
    assert ended == [1]
    assert capsys.readouterr().err.splitlines() == [line]


def test_orbax_background_tracebacks_of_a_failed_write_are_silenced():
    undo = cli.quiet_background_write_failures()
    (noise,) = [f for f in logging.getLogger("absl").filters
                if isinstance(f, cli._BackgroundWriteNoise)]

    def record(exc, path="/site-packages/orbax/checkpoint/_src/futures/future.py"):
        r = logging.LogRecord("absl", logging.ERROR, path, 1, "thread failed", (), None)
        r.exc_info = (type(exc), exc, None)
        return r

    assert noise in logging.getLogger("absl").filters
    assert not noise.filter(record(OSError(errno.EFBIG, os.strerror(errno.EFBIG))))
    assert not noise.filter(record(RuntimeError("cannot schedule new futures after shutdown")))
    assert noise.filter(record(ValueError("a bug, not a disk")))
    assert noise.filter(record(OSError(errno.ENOSPC, ENOSPC_TEXT), path="/mine.py"))
    undo()
    assert noise not in logging.getLogger("absl").filters
