"""Streaming end to end through ``train_and_evaluate``: a streamed run (record sources from
``DataConfig(pipeline="stream")``) equals the resident run on the same images bit for bit
(augmentation off: the same batches in the same order, epoch batching's short batch
included), and a streamed run stopped after a checkpoint resumes with the next unseen batch
to the uninterrupted run's numbers."""

import dataclasses

import chex
import jax
import numpy as np
import pytest
from PIL import Image
from train_fixtures import host, tiny

from jkt import data, parallel
from jkt.data import stream as stream_lib
from jkt.train import loop, optim
from jkt.train.objective import Objective
from jkt.train.step import StepCache

SIDE, CLASSES = 16, 4
STEPS = StepCache()  # one compiled step per program for the whole module


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """The resident and the streamed dataset of one folder: train/ (6 a class) and test/
    (2 a class) of 4 classes, PNGs of other sizes (resized on decoding)."""
    root = tmp_path_factory.mktemp("stream_loop")
    rng = np.random.default_rng(0)
    for part, n in (("train", 6), ("test", 2)):
        for c in range(CLASSES):
            (root / part / f"c{c}").mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 256, (20 + i % 3, 18, 3), np.uint8)
                img[..., c % 3] //= 2  # a little signal per class
                Image.fromarray(img).save(root / part / f"c{c}" / f"{i}.png")
    cfg = data.DataConfig(name=f"folder:{root}", image_size=SIDE, val_fraction=0.2,
                          augment="none", cache_dir=str(root.parent / "cache"))
    resident = data.load_config(cfg)
    streamed = data.load_config(dataclasses.replace(cfg, pipeline="stream"))
    assert isinstance(streamed.train, stream_lib.Subset) and len(streamed.train) == 20
    return resident, streamed


@pytest.fixture
def tiny_model(monkeypatch):
    monkeypatch.setattr(loop, "create_model", lambda name, n, **o: tiny(n, **o))


def _cfg(batching: str, **kw) -> loop.TrainConfig:
    base = dict(objective=Objective(ce=1), augment="none", max_steps=6, log_every=2,
                checkpoint_every=100, eval_batch_size=8, progress=False,
                optim=optim.OptimConfig(batch_size=8, epochs=1, batching=batching))
    return loop.TrainConfig(**{**base, **kw})


def _run(ds, cfg, workdir, mesh, **kw):
    res, = loop.train_and_evaluate([cfg], ds.train, {"val": ds.val, "test": ds.test},
                                   num_classes=ds.num_classes, mean=ds.mean, std=ds.std,
                                   workdirs=[workdir], mesh=mesh, steps=STEPS, **kw)
    return res


def _variables(workdir, cfg, mesh):
    return host(loop.final_variables(workdir, cfg, CLASSES, (SIDE, SIDE, 3), mesh)[1])


@pytest.mark.parametrize("batching,augment", [("cycle", "none"), ("epoch", "none"),
                                              ("cycle", "crop+flip")])
def test_a_streamed_run_equals_the_resident_run(datasets, tiny_model, tmp_path, batching,
                                                augment):
    """Same batches in the same order; with augmentation on too, as it runs inside the
    step on those batches with the run's own keys."""
    resident, streamed = datasets
    mesh = parallel.make_mesh(jax.devices()[:2])
    # 20 images, batch 8: epochs of 8 + 8 + 4 (epoch) cross step 3
    cfg = _cfg(batching, augment=augment)
    want = _run(resident, cfg, tmp_path / "resident", mesh)
    got = _run(streamed, cfg, tmp_path / "streamed", mesh)
    assert got.accuracy == want.accuracy and set(got.accuracy) == {"val", "test"}
    assert got.final_metrics == want.final_metrics
    chex.assert_trees_all_equal(_variables(tmp_path / "streamed", cfg, mesh),
                                _variables(tmp_path / "resident", cfg, mesh))
    mesh1 = parallel.make_mesh(jax.devices()[:1])
    eval_step = STEPS.eval_step(tiny(CLASSES), mean=resident.mean, std=resident.std)
    variables = _variables(tmp_path / "streamed", cfg, mesh1)
    assert (loop.evaluate(eval_step, variables, streamed.test, mesh1, 3)
            == loop.evaluate(eval_step, variables, resident.test, mesh1, 3))


def test_a_stopped_streamed_run_resumes_with_the_next_unseen_batch(datasets, tiny_model,
                                                                    tmp_path, wait_for_saves):
    _, streamed = datasets
    mesh = parallel.make_mesh(jax.devices()[:2])
    cfg = _cfg("epoch")
    reference = _run(streamed, cfg, tmp_path / "reference", mesh)
    polls = []

    def stop():  # after step 4: a checkpoint there, then KeyboardInterrupt
        polls.append(1)
        return len(polls) == 4

    workdir = tmp_path / "stopped"
    with pytest.raises(KeyboardInterrupt, match="after step 4"):
        _run(streamed, cfg, workdir, mesh, stop=stop)
    wait_for_saves(workdir / "checkpoints")
    read = []
    real = stream_lib._LocalRows.__call__

    def reading(self, step):
        read.append(int(step))
        return real(self, step)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(stream_lib._LocalRows, "__call__", reading)
        resumed = _run(streamed, cfg, workdir, mesh,
                       stream_options=stream_lib.StreamOptions(threads=2, prefetch=2))
    assert sorted(read) == [4, 5]  # the next unseen batches, nothing before them
    assert resumed.resumed_from == 4 and resumed.steps == 6
    assert resumed.accuracy == reference.accuracy
    assert resumed.final_metrics == reference.final_metrics
    chex.assert_trees_all_equal(_variables(workdir, cfg, mesh),
                                _variables(tmp_path / "reference", cfg, mesh))
