"""A work directory is a record you can trust: one launch at a time, runs resumed only
under the settings they were made with, one writer per multi-host job."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from jkt import workdir, workdir_lock


def test_second_launch_on_a_busy_workdir_fails_naming_the_owner(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from jkt import workdir_lock; "
         f"workdir_lock.WorkdirLock({str(tmp_path)!r}).acquire(); print('locked', flush=True); "
         "time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(workdir_lock.WorkdirBusyError) as e:
            workdir_lock.WorkdirLock(tmp_path).acquire()
        msg = str(e.value)
        assert f"pid {holder.pid}" in msg and socket.gethostname() in msg and "\n" not in msg
    finally:
        holder.kill()
        holder.wait()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, capsys):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    (tmp_path / workdir_lock.LOCK_FILE).write_text(json.dumps(
        {"job": f"pid:{socket.gethostname()}:{dead}", "pid": int(dead),
         "host": socket.gethostname(), "since": "earlier"}))
    lock = workdir_lock.WorkdirLock(tmp_path).acquire()
    assert "stale lock" in capsys.readouterr().out
    assert json.loads((tmp_path / workdir_lock.LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / workdir_lock.LOCK_FILE).exists()


def test_the_same_process_may_take_its_own_lock_again(tmp_path):
    a = workdir_lock.WorkdirLock(tmp_path).acquire()
    workdir_lock.WorkdirLock(tmp_path).acquire()
    a.release()


def test_record_is_written_once_and_compared_after(tmp_path):
    path = tmp_path / "run" / "config.json"
    record = {"train": {"optim": {"learning_rate": 1e-3}, "progress": True}, "n": 5}
    workdir.check_record(path, record, what="run x")
    assert json.loads(path.read_text()) == record
    workdir.check_record(path, record, what="run x")  # same settings: fine
    workdir.check_record(path, {**record, "train": {**record["train"], "progress": False}},
                         what="run x", ignore=("train.progress",))
    changed = {"train": {"optim": {"learning_rate": 3e-3}, "progress": True}, "n": 5}
    with pytest.raises(workdir.SettingsChangedError) as e:
        workdir.check_record(path, changed, what="run x")
    msg = str(e.value)
    assert "train.optim.learning_rate (0.001 -> 0.003)" in msg and "delete" in msg
    path.write_text("{not json")
    with pytest.raises(workdir.SettingsChangedError, match="not valid JSON"):
        workdir.check_record(path, record, what="run x")


def test_only_process_zero_writes(tmp_path, monkeypatch):
    import jax

    from jkt.train import metrics

    monkeypatch.setattr(jax, "process_index", lambda: 1)
    assert not workdir.is_writer()
    workdir.check_record(tmp_path / "config.json", {"a": 1}, what="run")
    assert not (tmp_path / "config.json").exists()
    assert metrics._open_history(tmp_path / "metrics.jsonl", 0) is None


def test_resumed_history_is_cut_back_to_the_checkpoint(tmp_path):
    from jkt.train import metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (2, 4, 6))
                    + '{"step": 8, "lo')  # a line torn by a kill
    with metrics._open_history(path, 4) as f:
        f.write(json.dumps({"step": 6, "loss": 0.5}) + "\n")
    steps = [json.loads(line)["step"] for line in path.read_text().splitlines()]
    assert steps == [2, 4, 6]


def test_unwritable_workdir_is_one_line(tmp_path):
    """A work directory that cannot be written stops the launch at once: one line naming
    it, the cause and the fix, exit status 1 (as root, without CAP_DAC_OVERRIDE)."""
    from disk_faults_test import ROOT, permissions_apply

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([*permissions_apply(), sys.executable, "-m", "experiments.train_teacher",
                          "--workdir", str(ro / "w"), "--no-progress"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stderr[-2000:]
    assert [line for line in out.stderr.splitlines() if "error" in line.lower()] == [
        f"error: cannot write to the work directory {ro / 'w'}: [Errno 13] Permission denied "
        f"— make {ro} writable and rerun the same command"]


def test_lock_file_records_owner(tmp_path):
    lock = workdir_lock.WorkdirLock(tmp_path).acquire()
    owner = json.loads((tmp_path / workdir_lock.LOCK_FILE).read_text())
    assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
    assert time.strptime(owner["since"], "%Y-%m-%d %H:%M:%S")
    lock.release()


@pytest.mark.parametrize("hard_links", [True, False])
def test_lock_appears_with_its_owner_record(tmp_path, monkeypatch, hard_links):
    """The lock file never exists without its record (a second process of the same job
    reading it at once would take an empty lock for a stale one and remove it): written
    aside and hard-linked into place; an exclusive create where links are unsupported.
    No temporary file is left either way."""
    real_link, seen = os.link, []

    def link(src, dst):
        if not hard_links:
            raise PermissionError(1, "Operation not permitted")
        seen.append(json.loads(open(src).read()))  # complete before it becomes the lock
        return real_link(src, dst)

    monkeypatch.setattr(os, "link", link)
    lock = workdir_lock.WorkdirLock(tmp_path).acquire()
    assert json.loads((tmp_path / workdir_lock.LOCK_FILE).read_text())["pid"] == os.getpid()
    assert [o["pid"] for o in seen] == ([os.getpid()] if hard_links else [])
    assert sorted(p.name for p in tmp_path.iterdir()) == [workdir_lock.LOCK_FILE]
    with pytest.raises(workdir_lock.WorkdirBusyError):  # another job meets it at once
        other = workdir_lock.WorkdirLock(tmp_path)
        other.owner = {**other.owner, "job": "job:elsewhere", "host": "elsewhere"}
        other.acquire()
    lock.release()
