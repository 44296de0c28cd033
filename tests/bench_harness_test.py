"""Tests for jkt.bench.harness: the timed loop and the shared benchmark pieces."""

import dataclasses

import jax
import pytest

from jkt import parallel
from jkt.bench import harness, methods
from jkt.bench.settings import CIFAR100_MEAN, CIFAR100_STD, BenchSetting
from jkt.data.types import Split
from jkt.models import Teacher, TeacherMeta
from jkt.train import CIFAR_RECIPE, StepCache, TrainConfig, train_and_evaluate

TINY = BenchSetting(batch_size=4, num_classes=5, width_multiplier=0.125, steps=2, warmup=0,
                    min_steps=1, small=True)


def test_timed_loop_counts_warmup_steps_and_budget():
    calls = []
    setting = BenchSetting(steps=5, warmup=2, min_steps=3, max_seconds=1e9)
    times = harness.timed_loop(lambda: calls.append(1), setting)
    assert len(calls) == 7 and len(times) == 5 and all(t >= 0 for t in times)
    # a spent budget stops after min_steps
    calls.clear()
    times = harness.timed_loop(lambda: calls.append(1),
                               dataclasses.replace(setting, max_seconds=1e-12))
    assert len(times) == 3 and len(calls) == 5


def test_summarize():
    s = harness.summarize([0.002, 0.001, 0.004], compile_s=3.0, images_per_step=8)
    assert s["median_ms"] == pytest.approx(2.0) and s["min_ms"] == pytest.approx(1.0)
    assert s["images_per_s"] == pytest.approx(4000) and s["steps_timed"] == 3
    assert s["compile_s"] == 3.0


def test_bench_batch_and_taps():
    bench = harness.JaxBench(TINY, parallel.make_mesh(jax.devices()[:1]))
    assert bench.host_batch["image"].shape == (4, 32, 32, 3)
    assert bench.batch["image"].shape == (4, 32, 32, 3)
    assert bench.batch["label"].dtype == "int32"
    bench.check_taps(methods.METHODS["ce+act+att+att_jac:top"])  # valid taps: no error
    bad = dataclasses.replace(
        methods.METHODS["ce+act+att+att_jac:top"],
        objective=dataclasses.replace(methods.METHODS["ce+act+att+att_jac:top"].objective,
                                      att_pairs=(("pool9", "pool1"),)))
    with pytest.raises(ValueError, match="pool9"):
        bench.check_taps(bad)


@pytest.mark.slow
def test_bench_times_one_step():
    bench = harness.JaxBench(TINY, parallel.make_mesh(jax.devices()[:1]))
    result, init_vars = bench.run(methods.METHODS["ce"])
    assert result["steps_timed"] == 2 and result["runs"] == 1
    assert result["median_ms"] > 0 and result["xla_bytes"] > 0
    assert set(init_vars) == {"params", "batch_stats"}


class _Recording(StepCache):
    """A step cache that remembers every train step it hands out."""

    def __init__(self):
        super().__init__()
        self.handed = []

    def train_step(self, *args, **kwargs):
        self.handed.append(super().train_step(*args, **kwargs))
        return self.handed[-1]


@pytest.mark.slow
def test_bench_times_the_step_the_loop_runs(tmp_path):
    """The training loop, given the bench's model, objectives, optimiser, data
    normalisation and teacher, runs the very program the bench times: the two jitted steps
    lower to the same text for the bench's arguments. (A fused row's step comes from the
    same builder and cache, with ``R`` objectives.)"""
    method = methods.METHODS["ce+act+jac:label"]
    mesh = parallel.make_mesh(jax.devices()[:1])
    bench = harness.JaxBench(TINY, mesh)
    bench_step, states, args, _ = bench.step(method)
    teacher_model, _, t_vars = bench.teacher()
    meta = TeacherMeta("vgg9", TINY.num_classes, bench.input_shape, CIFAR100_MEAN, CIFAR100_STD,
                       "random")
    cfgs = [TrainConfig(model=method.student,
                        model_options={"width_multiplier": TINY.width_multiplier},
                        objective=o, optim=dataclasses.replace(CIFAR_RECIPE, batch_size=4),
                        max_steps=1, progress=False, eval_batch_size=4)
            for o in method.fused or (method.objective,)]
    split = Split(bench.host_batch["image"], bench.host_batch["label"])
    steps = _Recording()
    train_and_evaluate(cfgs, split, {}, num_classes=TINY.num_classes, mean=CIFAR100_MEAN,
                       std=CIFAR100_STD, workdirs=[tmp_path / str(i) for i in range(len(cfgs))],
                       teacher=Teacher(meta, teacher_model, t_vars), mesh=mesh, steps=steps)
    (loop_step,) = steps.handed
    assert loop_step.lower(states, *args).as_text() == bench_step.lower(states, *args).as_text()
