"""Tests for experiments/torch_reference.py (the eager PyTorch reference of the benchmark)
and jkt.bench.torch_runner: the reference computes the same loss terms as ``jkt``'s own
train step on copied weights.
"""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jkt import models
from jkt.train import Objective, Optimizer, make_train_step
from jkt.train.fused import weight_matrix

HAS_TORCH = importlib.util.find_spec("torch") is not None

IMAGE = (32, 32, 3)  # VGG-9 pools five times
FAST = {"xla_backend_optimization_level": 0}  # checks maths, not speed
K = 5
MEAN, STD = (0.5, 0.45, 0.4), (0.25, 0.25, 0.3)


def _jkt_terms(objective, student, s_vars, teacher, t_vars, images, labels):
    """jkt's own train step (no augmentation) on one batch: the pre-update loss terms."""
    from jkt.train import TrainState

    adam = Optimizer("adam")  # the state is built eagerly: only the step is compiled
    state = TrainState(step=jnp.zeros((), jnp.int32), params=s_vars["params"],
                       batch_stats=s_vars["batch_stats"], opt_state=adam.init(s_vars["params"]),
                       rng=jax.random.key_data(jax.random.key(0)))
    step = make_train_step(student, [objective], adam, mean=MEAN, std=STD, augment=False,
                           teacher_model=teacher)
    batch = {"image": images, "label": labels}
    _, metrics = jax.jit(step, compiler_options=FAST)(state, batch, t_vars, np.float32(1e-3),
                                                       weight_matrix([objective]))
    return {k: float(v[0]) for k, v in metrics.items()}


@pytest.mark.skipif(not HAS_TORCH, reason="torch not installed")
@pytest.mark.parametrize("objective,teacher_arch", [
    pytest.param(Objective(ce=1, act=1, jac=1, att=1, att_jac=1, estimator="top",
                           att_pairs=(("pool1", "pool1"), ("pool2", "pool2")),
                           att_jac_pair=("pool2", "pool2")), "vgg9",
                 id="top+att+att_jac", marks=pytest.mark.slow),
    pytest.param(Objective(ce=1, act=0.5, jac=1, jac_norm=0.1, estimator="full",
                           normalize=True), "vgg4", id="full+normalize+jac_norm"),
])
def test_torch_reference_matches_jkt(objective, teacher_arch):
    import torch

    from experiments import torch_reference as tr

    width = 0.125
    student = models.create("vgg4", K, width_multiplier=width)
    teacher = models.create(teacher_arch, K, width_multiplier=width)
    x0 = jnp.zeros((1, *IMAGE))
    s_vars = jax.device_get(student.init(jax.random.key(1), x0))
    t_vars = jax.device_get(teacher.init(jax.random.key(2), x0))
    # Non-trivial running statistics, so that the teacher's inference mode matters.
    t_vars["batch_stats"] = jax.tree.map(lambda a: a + 0.1, t_vars["batch_stats"])
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, *IMAGE), np.uint8)
    labels = rng.integers(0, K, 4).astype(np.int32)

    want = _jkt_terms(objective, student, s_vars, teacher, t_vars, images, labels)

    t_student = tr.load_flax_variables(tr.create("vgg4", K, width), s_vars).train()
    t_teacher = tr.load_flax_variables(tr.create(teacher_arch, K, width), t_vars).eval()
    x = tr.normalize(torch.from_numpy(images), MEAN, STD)
    total, terms = tr.compute_losses(tr.supported(objective), t_student,
                                     t_teacher, x, torch.from_numpy(labels).long())
    got = {k: float(v.detach()) for k, v in terms.items()}
    assert set(got) == set(want) - {"loss", "accuracy", "agreement"}
    for k, v in got.items():
        assert v == pytest.approx(want[k], rel=2e-3, abs=1e-6), k
    assert float(total.detach()) == pytest.approx(want["loss"], rel=2e-3)


@pytest.mark.skipif(not HAS_TORCH, reason="torch not installed")
def test_torch_augment_is_a_crop_and_flip():
    import torch

    from experiments import torch_reference as tr

    images = torch.arange(2 * 6 * 6 * 3, dtype=torch.int32).reshape(2, 6, 6, 3) % 251 + 1
    out = tr.augment(images.to(torch.uint8), pad=0)
    for b in range(2):
        assert torch.equal(out[b], images[b].to(torch.uint8)) or torch.equal(
            out[b], images[b].to(torch.uint8).flip(1))
    padded = tr.augment(images.to(torch.uint8), pad=2)
    assert padded.shape == images.shape and padded.dtype == torch.uint8


@pytest.mark.slow
@pytest.mark.skipif(not HAS_TORCH, reason="torch not installed")
def test_run_torch_times_the_reference_step():
    from experiments import torch_reference as tr
    from jkt import parallel
    from jkt.bench import harness, methods, torch_runner
    from jkt.bench.settings import BenchSetting

    setting = BenchSetting(batch_size=4, num_classes=K, width_multiplier=0.125, steps=2,
                           warmup=0, min_steps=1, small=True)
    bench = harness.JaxBench(setting, parallel.make_mesh(jax.devices()[:1]))
    method = methods.METHODS["ce+act"]
    init_vars = jax.device_get(bench.model(method.student).init(
        jax.random.key(0), jnp.zeros((1, *IMAGE))))
    result = torch_runner.run_torch(tr, method, bench, init_vars)
    assert result["steps_timed"] == 2 and result["device"] == "cpu"
    assert np.isfinite(result["final_loss"]) and result["median_ms"] > 0
