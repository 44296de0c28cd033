"""The student's training state: a pytree, replicated over the mesh, donated each step."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from jkt import parallel


class TrainState(flax.struct.PyTreeNode):
    """Everything that changes during training (and is checkpointed).

    Attributes:
      step: scalar int32, number of optimiser updates applied.
      params: the student's trainable variables.
      batch_stats: BatchNorm running statistics.
      opt_state: optax state.
      rng: PRNG key data (``uint32[2]``) from which each step folds in ``step``.
      tx: the optax transformation (static, not checkpointed).
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array
    tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

    def apply_gradients(self, grads, batch_stats):
        updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
        return self.replace(step=self.step + 1, params=optax.apply_updates(self.params, updates),
                            batch_stats=batch_stats, opt_state=opt_state)


def create_train_state(model, tx, key: jax.Array, input_shape: tuple[int, int, int], mesh,
                       init_variables=None, *, init_fn: Callable | None = None) -> TrainState:
    """Initialises a replicated :class:`TrainState` directly on the mesh.

    Args:
      model: a Flax module from ``jkt.models.create``.
      tx: optax transformation (or a :class:`jkt.train.optim.ScheduledOptimizer`).
      key: PRNG key; split into the init key and the training key.
      input_shape: one example's ``(H, W, C)``.
      mesh: the data mesh (state is replicated over it).
      init_variables: optional ``{"params", "batch_stats"}`` to start from (e.g. the
        "oracle" initialised from pretrained weights) instead of a random init.
      init_fn: :func:`make_init` of the same ``model``, ``tx`` and ``input_shape``,
        jitted with replicated outputs (a :class:`jkt.train.StepCache` keeps one per
        model); default: jitted here.
    """
    init_key, train_key = jax.random.split(key)
    if init_fn is None:
        init_fn = jax.jit(make_init(model, tx, input_shape),
                          out_shardings=parallel.replicated(mesh))
    return init_fn(init_key, train_key, init_variables)


def make_init(model, tx, input_shape: tuple[int, int, int]) -> Callable:
    """Builds ``init(init_key, train_key, init_variables) -> TrainState`` at step 0.

    ``init_variables`` (``{"params", "batch_stats"}`` or ``None``: a random init of
    ``model`` on a zero ``(1, *input_shape)`` input from ``init_key``) gives the
    variables; the optimiser state is ``tx.init(params)``; the state's ``rng`` is
    ``train_key``'s data.
    """

    def init(init_key, train_key, init_variables):
        if init_variables is None:
            x = jnp.zeros((1, *input_shape), jnp.float32)
            init_variables = model.init({"params": init_key}, x, train=False)
        params = init_variables["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          batch_stats=init_variables.get("batch_stats", {}),
                          opt_state=tx.init(params), rng=jax.random.key_data(train_key), tx=tx)

    return init
