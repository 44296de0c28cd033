"""TensorBoard event files beside metrics.jsonl: every logged scalar at the same steps with
the same values, one curve after a kill and resume, and runs without tensorboardX."""

import json
import sys

import jax
import numpy as np
import pytest
from train_fixtures import (  # noqa: F401  (fixtures)
    IMAGE_SHAPE,
    MEAN,
    NUM_CLASSES,
    STD,
    make_split,
    split_fixture,
    teacher_fixture,
    tiny,
)

from jkt import parallel
from jkt.checkpoint import Teacher, TeacherMeta
from jkt.train import events, loop, optim
from jkt.train.metrics import METRICS_FILE
from jkt.train.objective import Objective


class _Killed(BaseException):
    """Stands for the process being killed."""


def _cfg(**kw):
    base = dict(objective=Objective(ce=1, act=1, jac=1), max_steps=6, log_every=1,
                checkpoint_every=2, eval_batch_size=8, progress=False,
                optim=optim.OptimConfig(batch_size=8, epochs=1))
    return loop.TrainConfig(**{**base, **kw})


def _run(cfg, workdir, train, teacher=None):
    return loop.train_and_evaluate([cfg], train, {"val": make_split(12, seed=9)},
                                   num_classes=NUM_CLASSES, mean=MEAN, std=STD,
                                   workdirs=[workdir], teacher=teacher,
                                   mesh=parallel.make_mesh(jax.devices()[:1]))[0]


def _artifact(teacher) -> Teacher:
    model, variables = teacher
    meta = TeacherMeta(arch="tiny", num_classes=NUM_CLASSES, input_size=IMAGE_SHAPE,
                       mean=MEAN, std=STD, dataset="synthetic")
    return Teacher(meta=meta, model=model, variables=variables)


def _scalars(workdir) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` as TensorBoard shows them (orphans purged)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(workdir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)]
            for tag in acc.Tags()["scalars"]}


@pytest.fixture
def tiny_loop(monkeypatch):
    monkeypatch.setattr(loop, "create_model", lambda name, n, **o: tiny(n, **o))


def test_event_files_hold_every_metric_once_after_a_resume(tiny_loop, monkeypatch, tmp_path,
                                                           split, teacher, wait_for_saves):
    """A run killed after logging step 5 (last checkpoint: step 4) and resumed: TensorBoard
    shows each of steps 1..6 once per scalar, equal to the metrics.jsonl lines."""
    pytest.importorskip("tensorboardX")
    pytest.importorskip("tensorboard")
    workdir, train = tmp_path / "run", split.take(np.arange(20))
    real_make_batch, calls = loop.make_batch, []

    def make_batch_then_die(*args, **kwargs):
        calls.append(args)
        if len(calls) == 6:  # steps 0-4 ran and were logged; checkpoints 2 and 4
            raise _Killed
        return real_make_batch(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(loop, "make_batch", make_batch_then_die)
        with pytest.raises(_Killed):
            _run(_cfg(), workdir, train, _artifact(teacher))
    wait_for_saves(workdir / "checkpoints")
    assert max(s for s, _ in _scalars(workdir)["train/loss"]) == 5
    assert _run(_cfg(), workdir, train, _artifact(teacher)).resumed_from == 4

    assert len(list(workdir.glob("events.out.tfevents.*"))) == 2  # one per launch
    lines = [json.loads(x) for x in (workdir / METRICS_FILE).read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4, 5, 6]
    names = set(lines[0]) - {"step"}
    assert {"loss", "ce", "act", "jac", "accuracy", "agreement", "epoch"} <= names
    got = _scalars(workdir)
    assert set(got) == {events.TAG_PREFIX + k for k in names}
    for k in names:
        want = [(r["step"], np.float32(r[k])) for r in lines]
        assert got[events.TAG_PREFIX + k] == want, k


def test_without_tensorboardx_one_warning_and_metrics_still_written(
        tiny_loop, monkeypatch, tmp_path, split, capsys):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import raises ImportError
    monkeypatch.setattr(events, "_warned_missing", False)
    cfg = _cfg(objective=Objective(ce=1), max_steps=2, checkpoint_every=100)
    _run(cfg, tmp_path / "a", split)
    assert events.open_event_writer(tmp_path / "b", 0) is None
    warnings = [x for x in capsys.readouterr().err.splitlines() if "tensorboardX" in x]
    assert len(warnings) == 1 and warnings[0].startswith("warning: "), warnings
    assert len((tmp_path / "a" / METRICS_FILE).read_text().splitlines()) == 2
    assert not list((tmp_path / "a").glob("events.out.tfevents.*"))


def test_only_the_writer_process_writes_events(monkeypatch, tmp_path):
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    assert events.open_event_writer(tmp_path, 0) is None
    events.write_scalars(None, 1, {"loss": 1.0})  # a no-op on the other processes
    assert not list(tmp_path.iterdir())


def test_events_are_on_disk_at_once_and_a_failing_disk_only_warns(monkeypatch, tmp_path,
                                                                   capsys):
    """Each write is flushed before it returns (a killed run keeps it, as metrics.jsonl
    does); a write that fails (full disk) warns once and stops the events, not the run."""
    pytest.importorskip("tensorboardX")
    pytest.importorskip("tensorboard")
    writer = events.open_event_writer(tmp_path, 0)
    writer.write(1, {"step": 1, "loss": 2.5, "epoch": 0})
    assert _scalars(tmp_path) == {"train/loss": [(1, 2.5)], "train/epoch": [(1, 0.0)]}

    def full(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer._file, "write_event", full)
    writer.write(2, {"loss": 2.0})
    writer.write(3, {"loss": 1.5})
    writer.close()
    err = capsys.readouterr().err.splitlines()
    assert err == ["warning: TensorBoard events stop here ([Errno 28] No space left on "
                   "device); metrics.jsonl goes on"]
    assert _scalars(tmp_path)["train/loss"] == [(1, 2.5)]
