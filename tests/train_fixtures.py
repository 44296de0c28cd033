"""Shared helpers and fixtures of the jkt.train tests (objective, step, loop).

JAX compilation on CPU dominates the runtime, so the models are library VGGs with a tiny
``config`` (one or two conv blocks) on 16x16 images, and sweeps over many objectives
compile with XLA's backend optimisation off (they check maths, not speed).

Test modules import the fixtures they use (``from train_fixtures import split_fixture``);
pytest finds them under their ``name`` (``split``, ``teacher``).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jkt.data.types import Split
from jkt.models import VGG
from jkt.train.fused import weight_matrix
from jkt.train.optim import Optimizer
from jkt.train.step import make_train_step

IMAGE_SHAPE = (16, 16, 3)
NUM_CLASSES = 4
BATCH = 16
MEAN, STD = (0.5, 0.45, 0.4), (0.25, 0.25, 0.3)
FAST = {"xla_backend_optimization_level": 0}  # compile options for objective sweeps
ADAM = Optimizer("adam")  # the optimiser of the tests' train states


def make_split(n: int, seed: int = 0, num_classes: int = NUM_CLASSES) -> Split:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, *IMAGE_SHAPE), dtype=np.uint8)
    return Split(images, rng.integers(0, num_classes, n).astype(np.int32))


def tiny(num_classes: int = NUM_CLASSES, width: int = 8, **options) -> VGG:
    """A one-block VGG (conv-BN-ReLU, pool1, global pool, Dense): cheap to compile."""
    return VGG(config=(width, "M"), num_classes=num_classes, **options)


def one_run_step(model, objective, *, learning_rate: float = 1e-3, optimizer=ADAM, mean=MEAN,
                 std=STD, **kw):
    """``step(state, batch, teacher_variables) -> (state, metrics)``: the train step of one
    run (:func:`jkt.train.step.make_train_step` of ``[objective]``) with the learning rate
    and the objective's weights bound, as the loop passes them; metrics have shape
    ``(1,)``."""
    step = make_train_step(model, [objective], optimizer, mean=mean, std=std, **kw)
    rate, weights = np.float32(learning_rate), weight_matrix([objective])
    return lambda state, batch, teacher_variables: step(state, batch, teacher_variables, rate,
                                                        weights)


def init(model, seed: int):
    x = jnp.zeros((1, *IMAGE_SHAPE), jnp.float32)
    return jax.jit(model.init)(jax.random.key(seed), x)


def random_variables(model, shape=(32, 32, 3), seed=0):
    """Random variables of ``model`` without compiling its init (cheap on CPU)."""
    from jkt import models

    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32),
                        models.abstract_variables(model, shape))


def host(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))


def one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert msg and "\n" not in msg, f"not a one-line message: {msg!r}"
    return msg


@pytest.fixture(scope="module", name="split")
def split_fixture():
    return make_split(64)


@pytest.fixture(scope="module", name="teacher")
def teacher_fixture():
    model = tiny(width=4)
    return model, host(init(model, seed=1))
