"""The student's training state: a pytree, replicated over the mesh, donated each step."""

from __future__ import annotations

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
                       init_variables=None) -> TrainState:
    """Initialises a replicated :class:`TrainState` directly on the mesh.

    Args:
      model: a Flax module from ``jkt.models.create``.
      tx: optax transformation.
      key: PRNG key; split into the init key and the training key.
      input_shape: one example's ``(H, W, C)``.
      mesh: the data mesh (state is replicated over it).
      init_variables: optional ``{"params", "batch_stats"}`` to start from (e.g. the
        "oracle" initialised from pretrained weights) instead of a random init.
    """
    init_key, train_key = jax.random.split(key)

    def init(init_key, train_key, init_variables):
        if init_variables is None:
            x = jnp.zeros((1, *input_shape), jnp.float32)
            init_variables = model.init({"params": init_key}, x, train=False)
        params = init_variables["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          batch_stats=init_variables.get("batch_stats", {}),
                          opt_state=tx.init(params), rng=jax.random.key_data(train_key), tx=tx)

    return jax.jit(init, out_shardings=parallel.replicated(mesh))(
        init_key, train_key, init_variables)
