"""Pure train and eval steps. The parallel transform (``jax.jit`` with shardings) is
applied where the loop is built (:mod:`jkt.train.loop`), not here."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from jkt.data import transforms
from jkt.train.objective import Objective, compose_losses
from jkt.train.state import TrainState


def teacher_renormalizer(mean, std, teacher_mean, teacher_std) -> Callable:
    """Maps student-normalised inputs to the teacher's normalisation (identity if equal)."""
    if teacher_mean is None or (tuple(teacher_mean) == tuple(mean)
                                and tuple(teacher_std) == tuple(std)):
        return lambda z: z
    m, s = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)
    tm, ts = jnp.asarray(teacher_mean, jnp.float32), jnp.asarray(teacher_std, jnp.float32)
    return lambda z: (z * s + m - tm) / ts


def make_train_step(
    model,
    objective: Objective,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    augment: bool | str = True,
    teacher_model=None,
    teacher_mean: Sequence[float] | None = None,
    teacher_std: Sequence[float] | None = None,
) -> Callable:
    """Builds ``train_step(state, batch, teacher_variables) -> (state, metrics)``.

    ``batch`` is ``{"image": uint8 (B, H, W, C), "label": int32 (B,)}``. Inside the step
    the images are augmented (``augment``: ``True``/``"crop+flip"`` pad-4 crop + flip,
    ``"crop"``, ``False``/``"none"``) and normalised with ``mean``/``std``;
    all Jacobians are taken w.r.t. that normalised input. The teacher (frozen, inference
    mode, no gradients) sees the same input, renormalised to its own statistics.
    ``teacher_variables`` is a jit *argument* (not a baked-in constant) and is ``None``
    when ``teacher_model`` is. ``metrics`` holds ``loss``, every active term of the
    objective (unweighted batch means), ``accuracy`` and, with a teacher, ``agreement``.
    """
    if objective.needs_teacher and teacher_model is None:
        raise ValueError("the objective matches a teacher, but no teacher model was given")
    to_input = input_pipeline(mean, std, augment)
    to_teacher = teacher_renormalizer(mean, std, teacher_mean, teacher_std)

    def train_step(state: TrainState, batch, teacher_variables):
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        k_aug, k_drop, k_est = jax.random.split(key, 3)
        x = to_input(k_aug, batch["image"])
        teacher_fn = frozen_teacher(teacher_model, teacher_variables, to_teacher,
                                    objective.teacher_taps)
        return update(model, objective, state, x, batch["label"], teacher_fn, k_drop, k_est)

    return train_step


def with_schedule(step_fn: Callable) -> Callable:
    """``step(state, batch, teacher_variables, *args)`` -> ``step(state, batch,
    teacher_variables, schedule, *args)`` for states whose ``tx`` is a
    :class:`jkt.train.optim.ScheduledOptimizer`.

    Inside the step the state's optimiser is bound to ``schedule``
    (:func:`jkt.train.optim.schedule_arrays`: int32 ``(K,)`` boundaries and float32
    ``(K,)`` scales, jit arguments) for the update, and the returned state carries the
    unbound optimiser again: in and out states are the same pytree type, whatever the
    run's schedule, so one jitted program serves runs of any length and data size.
    """

    def scheduled_train_step(state: TrainState, batch, teacher_variables, schedule, *args):
        spec = state.tx
        new, metrics = step_fn(state.replace(tx=spec.bind(schedule)), batch, teacher_variables,
                               *args)
        return new.replace(tx=spec), metrics

    return scheduled_train_step


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


def update(model, objective: Objective, state: TrainState, x, labels, teacher_fn, k_drop,
           k_est, weights=None) -> tuple[TrainState, dict]:
    """One optimiser update of ``state`` on the normalised batch ``x`` (B, H, W, C).

    ``weights`` optionally overrides the objective's term weights (see
    :func:`jkt.train.objective.compose_losses`). Returns ``(new state, metrics)``.
    """
    s_taps = objective.student_taps

    def loss_fn(params):
        def student_fn(z):
            (out, feats), updates = model.apply(
                {"params": params, "batch_stats": state.batch_stats}, z, train=True,
                return_features=True, mutable=["batch_stats"], rngs={"dropout": k_drop})
            return (out, {k: feats[k] for k in s_taps}), updates["batch_stats"]

        return compose_losses(objective, student_fn, teacher_fn, x, labels, k_est,
                              weights=weights)

    (total, (terms, stats, batch_stats)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params)
    return state.apply_gradients(grads, batch_stats), {"loss": total, **terms, **stats}


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
