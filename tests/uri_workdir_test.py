"""Work directories in object storage (``gs://bucket/runs``).

No bucket is reachable here, so ``etils.epath``'s own test hook serves ``gs://bucket``
from a local folder: every read and write of the work directory goes through epath with
the URI unmangled (the hook asserts it), as it would with ``gcsfs`` installed. Orbax
writes array data through tensorstore, which has its own ``gs://`` client that this hook
cannot reach; the checkpoint layer's path function is redirected instead, after recording
the URIs it was given."""

import dataclasses
import json
import os

import pytest
from compile_count_test import teacher_grid  # noqa: F401  (fixture: tiny grid + teacher)
from distill_test import image_folder  # noqa: F401  (fixture: 3 classes of 32x32 images)
from train_fixtures import one_line

from jkt import paths, workdir, workdir_lock
from jkt.grids import distill as distill_grid

VARYING = {"wall_time_s", "skipped", "resumed_from"}


def _gs_bucket(root) -> dict:
    """``mock_epath`` functions serving ``gs://bucket/...`` from the folder ``root`` (local
    paths, read through epath too, pass unchanged)."""
    root = str(root)

    def local(p):
        p = os.fspath(p)
        assert "gs:/b" not in p.replace("gs://b", ""), p  # no URI mangled into a local path
        return root + p[len("gs://bucket"):] if p.startswith("gs://bucket") else p

    def back(p, asked):  # results come back in the form they were asked for
        p = os.fspath(p)
        return "gs://bucket" + p[len(root):] if os.fspath(asked).startswith("gs://") else p

    def one(orig, p, *a, **k):
        return orig(local(p), *a, **k)

    def two(orig, src, dst, *a, **k):
        return orig(local(src), local(dst), *a, **k)

    def walk(orig, top, **kw):
        for r, dirs, files in orig(local(top), **kw):
            yield back(r, top), dirs, files

    return dict(exists=one, isdir=one, listdir=one, stat=one, open=one, makedirs=one,
                mkdir=one, remove=one, rmtree=one, rename=two, replace=two, copy=two,
                glob=lambda orig, p: [back(q, p) for q in orig(local(p))], walk=walk)


@pytest.fixture()
def bucket(tmp_path, monkeypatch):
    from etils.epath import testing as epath_testing

    root = tmp_path / "bucket"
    root.mkdir()
    seen = []
    orig = paths.absolute

    def checkpoint_path(p):
        s = os.fspath(p)
        if s.startswith("gs://"):
            seen.append(s)
            return orig(str(root) + s[len("gs://bucket"):])
        return orig(p)

    monkeypatch.setattr(paths, "absolute", checkpoint_path)
    monkeypatch.setattr(workdir_lock.WorkdirLock, "SETTLE_S", 0.0)
    with epath_testing.mock_epath(**_gs_bucket(root)):
        yield root, seen


def _rows(rows):
    return [{k: v for k, v in r.items() if k not in VARYING} for r in rows]


def test_paths_keep_uris_and_local_paths_apart(tmp_path):
    assert str(paths.as_dir("gs://bucket/runs") / "x") == "gs://bucket/runs/x"
    assert paths.as_dir(tmp_path) == tmp_path and type(paths.as_dir(tmp_path)) is type(tmp_path)
    with pytest.raises(ValueError, match="unsupported storage scheme ftp://"):
        paths.as_dir("ftp://host/runs")


@pytest.mark.slow
def test_distill_grid_in_a_gs_workdir_equals_a_local_one(teacher_grid, bucket, tmp_path,  # noqa: F811
                                                         monkeypatch):
    """A tiny Table-1 grid into ``gs://bucket/runs``: the same rows and report as in a
    local directory, every file of a local work directory present in the bucket (lock
    released, no temporary files), checkpoints handed to Orbax as ``gs://`` paths, and a
    second launch skips the finished runs; nothing is written to a local ``gs:`` folder."""
    grid, mesh = teacher_grid
    root, seen = bucket
    monkeypatch.chdir(tmp_path)
    local = grid(tmp_path / "local", methods=("ce", "ce+jac"), n_per_class=(1,), seeds=(0,))
    _, lock = workdir.prepare(local)
    want = distill_grid.run(local, mesh=mesh)
    lock.release()

    cfg = dataclasses.replace(local, workdir="gs://bucket/runs")
    out, lock = workdir.prepare(cfg)
    assert out == paths.as_dir("gs://bucket/runs")
    assert json.loads((root / "runs" / ".lock").read_text())["pid"] == os.getpid()
    got = distill_grid.run(cfg, mesh=mesh)
    lock.release()
    assert _rows(got) == _rows(want)

    out, ref = root / "runs", tmp_path / "local"
    assert (out / "results.md").read_text() == (ref / "results.md").read_text()
    assert (out / "results.csv").read_text().splitlines()[0] == \
        (ref / "results.csv").read_text().splitlines()[0]
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for run in ("ce/n1_seed0", "ce+jac/n1_seed0"):
        d = out / "runs" / run
        assert (d / "result.json").is_file() and (d / "config.json").is_file()
        steps = [json.loads(line)["step"] for line in (d / "metrics.jsonl").read_text()
                 .splitlines()]
        want_steps = [json.loads(line)["step"] for line in
                      (ref / "runs" / run / "metrics.jsonl").read_text().splitlines()]
        assert steps == want_steps
        assert list(d.glob("events.out.tfevents.*")), "no TensorBoard events in the bucket"
        assert any(s.startswith(f"gs://bucket/runs/runs/{run}/checkpoints") for s in seen)
    assert not (out / ".lock").exists()
    assert not [p for p in out.rglob("*.tmp")]
    assert not (tmp_path / "gs:").exists()

    _, lock = workdir.prepare(cfg)  # a second launch: every run is read back, none trained
    again = distill_grid.run(cfg, mesh=mesh)
    lock.release()
    assert all(r["skipped"] for r in again) and _rows(again) == _rows(want)


def test_busy_gs_workdir_names_the_owner(bucket):
    root, _ = bucket
    (root / "runs").mkdir()
    (root / "runs" / ".lock").write_text(json.dumps(
        {"job": "job:elsewhere", "pid": 4242, "host": "other-host", "since": "earlier"}))
    with pytest.raises(workdir_lock.WorkdirBusyError, match="pid 4242 on other-host"):
        workdir_lock.WorkdirLock("gs://bucket/runs").acquire()


def test_gs_lock_lost_to_a_later_writer_is_busy(bucket, monkeypatch):
    """Two launches that write the lock within the settle time: the one whose record is
    not read back stops."""
    root, _ = bucket
    lock = workdir_lock.WorkdirLock("gs://bucket/runs")
    (root / "runs").mkdir()
    real_sleep = workdir_lock.time.sleep

    def other_launch_writes(s):
        (root / "runs" / ".lock").write_text(json.dumps(
            {"job": "job:other", "pid": 4243, "host": "other-host", "since": "now"}))
        real_sleep(s)

    monkeypatch.setattr(workdir_lock.time, "sleep", other_launch_writes)
    with pytest.raises(workdir_lock.WorkdirBusyError, match="pid 4243 on other-host"):
        lock.acquire()


def test_gs_workdir_without_its_backend_is_one_line(monkeypatch, tmp_path):
    """Without ``gcsfs`` (or TensorFlow) nothing is created, locally or remotely: one line
    saying what to install."""
    import importlib.util

    from experiments import distill

    if importlib.util.find_spec("gcsfs") is not None:
        pytest.skip("gcsfs is installed here")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(os.environ, "NO_GCE_CHECK", "true")
    monkeypatch.setattr(workdir, "setup_jax", lambda _: None)
    cfg = distill.parse_config(["--workdir", "gs://bucket/runs"])
    with pytest.raises(ValueError) as e:
        workdir.prepare(cfg)
    assert "gs://bucket/runs" in one_line(e) and "pip install gcsfs" in one_line(e)
    assert not (tmp_path / "gs:").exists()
