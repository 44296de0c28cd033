"""``StepCache``: the jitted train, eval and init functions a grid's runs share.

``jax.jit`` compiles a function once per argument signature (shapes, dtypes, shardings,
pytree structure) but only for the *same* function object: a loop that builds a fresh
step per run traces and compiles (or loads from the persistent cache) that run's step
again, although every run of a grid cell pattern has the same program. A ``StepCache``
keeps one jitted function per *spec* (everything the program is built from: the model,
objectives, normalisation, augmentation, fusion mode, teacher, mesh) and hands it to
every run with that spec; what differs between such runs (seed, data, schedule
boundaries, see :class:`jkt.train.optim.ScheduledOptimizer`) is in the arguments.

A grid creates one and passes it to every ``train_and_evaluate(..., step_cache=)`` /
``train_and_evaluate_fused(..., step_cache=)`` call; without one, each call makes its
own. Nothing is global: the cache lives as long as the grid holds it.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import jax
import numpy as np

from jkt import parallel
from jkt.train import fused
from jkt.train.state import make_init
from jkt.train.step import make_eval_step, with_schedule


def _floats(values) -> tuple[float, ...] | None:
    """``values`` (sequence or array, e.g. a mean per channel) as a hashable tuple."""
    return None if values is None else tuple(float(v) for v in np.ravel(values))


class StepCache:
    """Jitted functions keyed by the spec they are built from (see the module doc).

    A spec that cannot be hashed (a model option holding a list, say) gets a fresh
    function each time: no reuse, same numbers.
    """

    def __init__(self):
        self._fns: dict[Hashable, Callable] = {}

    def __len__(self) -> int:
        return len(self._fns)

    def get(self, key: Hashable, build: Callable[[], Callable]) -> Callable:
        """The function stored under ``key``, built by ``build()`` on first use."""
        try:
            hash(key)
        except TypeError:
            return build()
        if key not in self._fns:
            self._fns[key] = build()
        return self._fns[key]

    def train_step(self, model, objectives: Sequence, *, mean, std, augment, mode: str, mesh,
                   teacher_model=None, teacher_mean=None, teacher_std=None) -> Callable:
        """``step(states, batch, teacher_variables, schedule, weights) -> (states, metrics)``:
        :func:`jkt.train.fused.make_fused_train_step` of the objectives' structure (loss
        weights as the ``weights`` argument, :func:`jkt.train.fused.weight_matrix`)
        wrapped by :func:`jkt.train.step.with_schedule`, jitted with the states donated and
        replicated outputs on ``mesh``. Runs whose objectives differ only in their weights
        (Table 2's λ) share it."""
        objectives = tuple(fused.structure(o) for o in objectives)
        key = ("train", model, objectives, _floats(mean), _floats(std), augment, mode,
               mesh, teacher_model, _floats(teacher_mean), _floats(teacher_std))

        def build():
            teacher_kw = ({} if teacher_model is None else
                          dict(teacher_model=teacher_model, teacher_mean=teacher_mean,
                               teacher_std=teacher_std))
            step = fused.make_fused_train_step(model, list(objectives), mean=mean, std=std,
                                               augment=augment, mode=mode,
                                               weights_as_argument=True, **teacher_kw)
            rep = parallel.replicated(mesh)
            return jax.jit(with_schedule(step), donate_argnums=0, out_shardings=(rep, rep))

        return self.get(key, build)

    def eval_step(self, model, *, mean, std) -> Callable:
        """:func:`jkt.train.step.make_eval_step` of ``model``, jitted."""
        return self.get(("eval", model, _floats(mean), _floats(std)),
                        lambda: jax.jit(make_eval_step(model, mean=mean, std=std)))

    def init(self, model, tx, input_shape: tuple[int, ...], mesh) -> Callable:
        """:func:`jkt.train.state.make_init` of these arguments, jitted with replicated
        outputs on ``mesh`` (``init_fn`` of :func:`jkt.train.state.create_train_state`)."""
        input_shape = tuple(int(d) for d in input_shape)
        return self.get(("init", model, tx, input_shape, mesh),
                        lambda: jax.jit(make_init(model, tx, input_shape),
                                        out_shardings=parallel.replicated(mesh)))


__all__ = ["StepCache"]
