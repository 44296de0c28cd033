"""The train step (one builder, for one run and for ``R`` fused runs), the eval step, and
the cache of their jitted, sharded forms.

``make_train_step(...)`` returns the pure

    train_step(states, batch, teacher_variables, learning_rate, weights) -> (states, metrics)

whose arguments are everything that differs between the runs of a grid: the packed
states (:func:`jkt.train.fused.pack_states`: one run's state, or ``R`` stacked), the
batch, the teacher's variables, the step's learning rate (the host evaluates optax's
schedule, :func:`jkt.train.optim.learning_rates`) and the ``(R, len(weight_terms))``
loss weights (:func:`jkt.train.fused.weight_matrix`, columns
:func:`jkt.train.fused.weight_terms`). Everything else, fixed when it is built,
is the program: model, the objectives' structure, optimiser, normalisation,
augmentation, teacher model, fusion layout. :class:`StepCache` jits it once per such
program over a mesh (states replicated and donated, batch split over ``"data"``); the
training loop, the benchmark and the multi-host test all take their step from it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jkt import parallel
from jkt.data import transforms
from jkt.train import fused
from jkt.train.objective import Objective, compose_losses
from jkt.train.optim import Optimizer
from jkt.train.state import TrainState, make_init


def make_train_step(
    model,
    objectives: Sequence[Objective],
    optimizer: Optimizer,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    augment: bool | str = "crop+flip",
    teacher_model=None,
    teacher_mean: Sequence[float] | None = None,
    teacher_std: Sequence[float] | None = None,
    mode: str = "unroll",
) -> Callable:
    """Builds ``train_step(states, batch, teacher_variables, learning_rate, weights)``.

    Args:
      model: the student (``jkt.models.create``), trained in training mode.
      objectives: one per run (``R = len(objectives)``); they may differ in their weights
        (and, with ``mode="unroll"``, their Jacobian estimators). Every term any of them
        weights is computed (:func:`jkt.train.fused.union_objective`); the weights
        themselves are the ``weights`` argument.
      optimizer: builds the optax transformation at the step's learning rate.
      mean, std: normalisation of the student's inputs. Inside the step the uint8 images
        are augmented (``augment``: ``"crop+flip"`` pad-4 crop + flip, ``"crop"``,
        ``"none"``; ``True``/``False``) and normalised; every Jacobian is taken w.r.t. that
        normalised input.
      teacher_model, teacher_mean, teacher_std: the frozen teacher (inference mode, no
        gradient) and its own normalisation; it sees the same input, renormalised.
      mode: how ``R > 1`` runs are laid out in the one program: ``"unroll"`` traces one
        update per run (XLA merges the runs' identical teacher computations; estimators
        may differ, the teacher's Jacobian is then computed once per estimator);
        ``"vmap"`` maps one update over the run axis (one estimator).

    The step takes ``states`` (:func:`jkt.train.fused.pack_states` of ``R`` runs),
    ``batch`` ``{"image": uint8 (B, H, W, C), "label": int32 (B,)}`` (shared by the runs),
    ``teacher_variables`` (``None`` without a teacher), ``learning_rate`` (float32 scalar)
    and ``weights`` (float32 ``(R, C)``, the columns :func:`jkt.train.fused.weight_terms`
    of ``objectives``). It returns the new states and metrics, each of shape ``(R,)``:
    ``loss`` (each run's weighted total), every computed term (unweighted batch means),
    ``accuracy`` and, with a teacher, ``agreement``. Augmentation, estimator probes and
    input noise (the noisy terms) come from run 0's key, dropout from each run's
    own: a run of a fused step equals the same run alone when their seeds are equal.
    """
    if mode not in fused.FUSION_MODES:
        raise ValueError(f"unknown fusion mode {mode!r}; valid: {fused.FUSION_MODES}")
    union = fused.union_objective(objectives, mixed_estimators=mode == "unroll")
    if union.needs_teacher and teacher_model is None:
        raise ValueError("an objective matches a teacher, but no teacher model was given")
    per_run = [dataclasses.replace(union, estimator=o.estimator) for o in objectives]
    columns = fused.weight_terms(objectives)  # of the ``weights`` argument
    runs = len(objectives)
    to_input = input_pipeline(mean, std, augment)
    to_teacher = transforms.renormalizer(mean, std, teacher_mean, teacher_std)

    def train_step(states: TrainState, batch, teacher_variables, learning_rate, weights):
        if states.step.shape != ((runs,) if runs > 1 else ()):
            raise ValueError(f"train step built for {runs} runs, got states with step shape "
                             f"{states.step.shape} (use jkt.train.fused.pack_states)")
        k_aug, _, k_est = step_keys(fused.unpack_state(states, 0, runs))
        x = to_input(k_aug, batch["image"])
        teacher_fn = frozen_teacher(teacher_model, teacher_variables, to_teacher,
                                    union.teacher_taps)
        tx = optimizer(lambda count: learning_rate)

        def update(state: TrainState, w, objective: Objective = union):
            _, k_drop, _ = step_keys(state)

            def loss_fn(params):
                def student_fn(z):
                    (out, feats), updates = model.apply(
                        {"params": params, "batch_stats": state.batch_stats}, z, train=True,
                        return_features=True, mutable=["batch_stats"],
                        rngs={"dropout": k_drop})
                    return (out, {k: feats[k] for k in objective.student_taps}), \
                        updates["batch_stats"]

                return compose_losses(objective, student_fn, teacher_fn, x, batch["label"],
                                      k_est, weights=dict(zip(columns, w, strict=True)))

            (total, (terms, stats, batch_stats)), grads = jax.value_and_grad(
                loss_fn, has_aux=True)(state.params)
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            new = state.replace(step=state.step + 1,
                                params=optax.apply_updates(state.params, updates),
                                batch_stats=batch_stats, opt_state=opt_state)
            return new, {"loss": total, **terms, **stats}

        if runs == 1:
            state, metrics = update(states, weights[0])
            return state, jax.tree.map(lambda v: v[None], metrics)
        if mode == "vmap":
            return jax.vmap(update)(states, weights)
        outs = [update(fused.unstack_state(states, r), weights[r], per_run[r])
                for r in range(runs)]
        return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)

    return train_step


def step_keys(state: TrainState) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(augmentation, dropout, estimator)`` keys of ``state``'s current step."""
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    k_aug, k_drop, k_est = jax.random.split(key, 3)
    return k_aug, k_drop, k_est


def input_pipeline(mean: Sequence[float], std: Sequence[float], augment: bool | str
                   ) -> Callable:
    """``(key, uint8 images (B, H, W, C)) -> normalised float32 inputs``: the augmentation
    ``augment`` names (:func:`jkt.data.transforms.augment_named`), then
    ``(x/255 - mean) / std``."""
    augment = transforms.augmentation_name(augment)

    def to_input(key, images):
        images = transforms.augment_named(key, images, augment)
        return transforms.normalize(images, mean, std)

    return to_input


def frozen_teacher(teacher_model, teacher_variables, to_teacher: Callable,
                   taps: Sequence[str]) -> Callable | None:
    """``x -> (logits, {tap: features})`` of the teacher in inference mode, its variables
    behind ``stop_gradient``; ``None`` without a teacher model."""
    if teacher_model is None:
        return None
    frozen = jax.lax.stop_gradient(teacher_variables)

    def teacher_fn(z):
        logits, feats = teacher_model.apply(frozen, to_teacher(z), train=False,
                                            return_features=True)
        return logits, {k: feats[k] for k in taps}

    return teacher_fn


def make_eval_step(model, *, mean: Sequence[float], std: Sequence[float],
                   head: str = "target") -> Callable:
    """Builds ``eval_step(variables, batch, key, sigma) -> {"correct", "count"}`` sums.

    Inference mode. ``sigma`` > 0 adds Gaussian noise of that std to the *normalised*
    images (Table 2). ``batch["mask"]`` (if present) excludes padding examples. For a
    two-head model ``head`` selects the output ("target" or "source").
    """

    def eval_step(variables, batch, key, sigma):
        x = transforms.normalize(batch["image"], mean, std)
        x = transforms.add_gaussian_noise(key, x, sigma)
        out = model.apply(variables, x, train=False)
        logits = out[head] if isinstance(out, dict) else out
        mask = batch.get("mask", jnp.ones(logits.shape[:1], bool))
        correct = (jnp.argmax(logits, -1) == batch["label"]) & mask
        return {"correct": jnp.sum(correct), "count": jnp.sum(mask)}

    return eval_step


def _floats(values) -> tuple[float, ...] | None:
    """``values`` (sequence or array, e.g. a mean per channel) as a hashable tuple."""
    return None if values is None else tuple(float(v) for v in np.ravel(values))


class StepCache:
    """The jitted train step, eval step and init, one per program they are built from.

    ``jax.jit`` compiles a function once per argument signature, but only for the *same*
    function object: a loop that built a fresh step per run would compile every run's
    step again. A grid makes one cache and passes it to every run, so runs whose steps
    are the same program (same model, objectives' structure, optimiser, normalisation,
    augmentation, layout, teacher and mesh) share one compiled step; what differs between
    them (seed, data, schedule, loss weights) is in the arguments. A key that cannot be
    hashed (a model option holding a list, say) gets a fresh function each time.
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

    def train_step(self, model, objectives: Sequence[Objective], optimizer: Optimizer, *,
                   mean, std, augment, mode: str, mesh, teacher_model=None, teacher_mean=None,
                   teacher_std=None) -> Callable:
        """:func:`make_train_step` of the objectives' structure
        (:func:`jkt.train.fused.structure`), jitted over ``mesh`` with the states donated
        and replicated outputs."""
        objectives = tuple(fused.structure(o) for o in objectives)
        key = ("train", model, objectives, optimizer, _floats(mean), _floats(std),
               transforms.augmentation_name(augment), mode, mesh, teacher_model,
               _floats(teacher_mean), _floats(teacher_std))

        def build():
            step = make_train_step(model, objectives, optimizer, mean=mean, std=std,
                                   augment=augment, teacher_model=teacher_model,
                                   teacher_mean=teacher_mean, teacher_std=teacher_std,
                                   mode=mode)
            rep = parallel.replicated(mesh)
            return jax.jit(step, donate_argnums=0, out_shardings=(rep, rep))

        return self.get(key, build)

    def eval_step(self, model, *, mean, std) -> Callable:
        """:func:`make_eval_step` of ``model``, jitted."""
        return self.get(("eval", model, _floats(mean), _floats(std)),
                        lambda: jax.jit(make_eval_step(model, mean=mean, std=std)))

    def init(self, model, optimizer: Optimizer, input_shape: tuple[int, ...], mesh) -> Callable:
        """:func:`jkt.train.state.make_init`, jitted with replicated outputs on ``mesh``."""
        input_shape = tuple(int(d) for d in input_shape)
        return self.get(("init", model, optimizer, input_shape, mesh),
                        lambda: jax.jit(make_init(model, optimizer, input_shape),
                                        out_shardings=parallel.replicated(mesh)))


__all__ = ["StepCache", "frozen_teacher", "input_pipeline", "make_eval_step",
           "make_train_step", "step_keys"]
