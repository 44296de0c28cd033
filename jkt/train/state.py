"""The student's training state: a pytree, replicated over the mesh, donated each step."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from jkt import parallel
from jkt.train.optim import Optimizer


class TrainState(flax.struct.PyTreeNode):
    """Everything that changes during training (and is checkpointed). The optimiser is
    not part of it: the train step builds it at the step's learning rate.

    Attributes:
      step: scalar int32, number of optimiser updates applied.
      params: the student's trainable variables.
      batch_stats: BatchNorm running statistics.
      opt_state: optax state (:meth:`jkt.train.optim.Optimizer.init`).
      rng: PRNG key data (``uint32[2]``) from which each step folds in ``step``.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array


def make_init(model, optimizer: Optimizer, input_shape: tuple[int, int, int]) -> Callable:
    """Builds ``init(init_key, train_key, init_variables) -> TrainState`` at step 0.

    ``init_variables`` (``{"params", "batch_stats"}`` or ``None``: a random init of
    ``model`` on a zero ``(1, *input_shape)`` input from ``init_key``) gives the
    variables; the optimiser state is ``optimizer.init(params)``; the state's ``rng`` is
    ``train_key``'s data.
    """

    def init(init_key, train_key, init_variables):
        if init_variables is None:
            x = jnp.zeros((1, *input_shape), jnp.float32)
            init_variables = model.init({"params": init_key}, x, train=False)
        params = init_variables["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          batch_stats=init_variables.get("batch_stats", {}),
                          opt_state=optimizer.init(params), rng=jax.random.key_data(train_key))

    return init


def create_train_state(model, optimizer: Optimizer, key: jax.Array,
                       input_shape: tuple[int, int, int], mesh, init_variables=None, *,
                       init_fn: Callable | None = None) -> TrainState:
    """Initialises a replicated :class:`TrainState` directly on the mesh.

    Args:
      model: a Flax module from ``jkt.models.create``.
      optimizer: the :class:`jkt.train.optim.Optimizer` whose state to create.
      key: PRNG key; split into the init key and the training key.
      input_shape: one example's ``(H, W, C)``.
      mesh: the data mesh (state is replicated over it).
      init_variables: optional ``{"params", "batch_stats"}`` to start from (e.g. the
        "oracle" initialised from pretrained weights) instead of a random init.
      init_fn: :func:`make_init` of the same ``model``, ``optimizer`` and ``input_shape``,
        jitted with replicated outputs (a :class:`jkt.train.step.StepCache` keeps one);
        default: jitted here.
    """
    init_key, train_key = jax.random.split(key)
    if init_fn is None:
        init_fn = jax.jit(make_init(model, optimizer, input_shape),
                          out_shardings=parallel.replicated(mesh))
    return init_fn(init_key, train_key, init_variables)
