"""Times ``jkt``'s own jitted train step: the very step the training loop runs.

The step comes from :meth:`jkt.train.StepCache.train_step` with the arguments the loop
passes for the same runs (one run, or a fused row's ``R`` runs over ``pack_states`` of
``R`` copies of the state): model, objectives, optimiser, normalisation, pad-4 crop + flip
augmentation, teacher with the students' normalisation, fusion layout, mesh. It is
called as the loop calls it, with the learning rate and the loss weights as arguments;
the state comes from ``create_train_state``, one uint8 batch from
``jkt.data.batches.make_batch`` already on device is reused every step and the teacher's
variables are replicated: the timing measures the step, not the input pipeline.

The jitted step is compiled ahead of time (``.lower().compile()``, the same executable a
first call would build) so that XLA's memory analysis comes without a second compile.
The compiling first call is reported separately, ``warmup`` steps are dropped, then every
step is timed to ``jax.block_until_ready`` and the median is reported; the donated state
is threaded through.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jkt import models, parallel
from jkt.bench.methods import TEACHER_ARCH, Method
from jkt.bench.settings import CIFAR100_MEAN, CIFAR100_STD, BenchSetting
from jkt.data.batches import make_batch
from jkt.data.types import Split
from jkt.train import CIFAR_RECIPE, Optimizer, StepCache, create_train_state
from jkt.train.fused import pack_states, weight_matrix


def summarize(times_s: list[float], compile_s: float, images_per_step: int) -> dict:
    """Step statistics (ms, steps/s, images/s) of per-step wall times ``times_s``."""
    med = statistics.median(times_s)
    return {"median_ms": 1e3 * med, "mean_ms": 1e3 * statistics.fmean(times_s),
            "min_ms": 1e3 * min(times_s), "steps_timed": len(times_s),
            "steps_per_s": 1.0 / med, "images_per_s": images_per_step / med,
            "compile_s": compile_s}


def timed_loop(step: Callable[[], None], setting: BenchSetting) -> list[float]:
    """Runs ``step()`` (which must block until its work is done) ``setting.warmup`` times,
    then times it ``setting.steps`` times, stopping early once ``min_steps`` are timed and
    their sum exceeds ``max_seconds``. Returns the per-step wall times in seconds."""
    for _ in range(setting.warmup):
        step()
    times: list[float] = []
    while len(times) < setting.steps:
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
        if len(times) >= setting.min_steps and sum(times) > setting.max_seconds:
            break
    return times


def device_peak_bytes(device) -> int | None:
    """The device's peak allocated bytes so far in the process (``None`` where the backend
    keeps no statistics, e.g. the CPU)."""
    stats = device.memory_stats()
    if not stats:
        return None
    return stats.get("peak_bytes_in_use")


class JaxBench:
    """What every timed ``jkt`` step shares: mesh, batch, teacher.

    Args:
      setting: the benchmark's sizes and timing budget.
      mesh: a data mesh (``jkt.parallel.make_mesh``); ``setting.batch_size`` must split
        evenly over it.
      seed: seeds the random batch, the students' and the teacher's initial variables.

    Attributes:
      host_batch: ``{"image": uint8 (B, S, S, 3), "label": int32 (B,)}`` numpy arrays.
      batch: the same batch as global ``jax.Array`` s sharded over the mesh.
    """

    def __init__(self, setting: BenchSetting, mesh, seed: int = 0):
        self.setting, self.mesh = setting, mesh
        parallel.check_batch_size(setting.batch_size, mesh)
        s, k = setting.image_size, setting.num_classes
        self.input_shape = (s, s, 3)
        rng = np.random.default_rng(seed)
        split = Split(rng.integers(0, 256, (setting.batch_size, *self.input_shape), np.uint8),
                      rng.integers(0, k, setting.batch_size).astype(np.int32))
        self.host_batch = {"image": split.images, "label": split.labels}
        self.batch = make_batch(split, np.arange(setting.batch_size), mesh)
        self.dtype = jnp.bfloat16 if setting.dtype == "bfloat16" else jnp.float32
        self.rep = parallel.replicated(mesh)
        self.seed = seed
        self.steps = StepCache()
        self._teacher = None

    def model(self, name: str):
        """The ``name`` architecture at the setting's classes, width and dtype."""
        return models.create(name, self.setting.num_classes,
                             width_multiplier=self.setting.width_multiplier, dtype=self.dtype)

    def teacher(self):
        """``(model, replicated variables, host variables)`` of the VGG-9 teacher (random
        weights: a trained teacher costs the same), built once."""
        if self._teacher is None:
            model = self.model(TEACHER_ARCH)
            x = jnp.zeros((1, *self.input_shape), jnp.float32)
            variables = jax.jit(model.init)(jax.random.key(self.seed + 1), x)
            host = jax.device_get(variables)
            self._teacher = (model, jax.device_put(variables, self.rep), host)
        return self._teacher

    def check_taps(self, method: Method) -> None:
        """Clear error if an attention tap is missing or spatial sizes differ."""
        o = method.objective
        pairs = list(o.att_pairs) + ([o.att_jac_pair] if o.att_jac_pair else [])
        if not pairs:
            return
        s_taps = models.feature_shapes(self.model(method.student), self.input_shape)
        t_taps = models.feature_shapes(self.model(TEACHER_ARCH), self.input_shape)
        for s, t in pairs:
            if s not in s_taps or t not in t_taps:
                raise ValueError(f"{method.name}: taps {s!r}/{t!r} not in student taps "
                                 f"{list(s_taps)} / teacher taps {list(t_taps)}")
            if s_taps[s][:2] != t_taps[t][:2]:
                raise ValueError(f"{method.name}: taps {s} {s_taps[s]} and {t} {t_taps[t]} "
                                 "differ in spatial size")

    def run(self, method: Method) -> tuple[dict, dict]:
        """Times ``method``'s jitted train step.

        Returns:
          ``(result, initial host variables)``: ``result`` holds the step statistics of
          :func:`summarize` (images count ``B x runs``), ``runs``, ``ms_per_run_step``,
          ``final_loss`` (max over runs), ``xla_bytes`` (the compiled step's argument +
          output + temp - aliased bytes) and ``peak_bytes`` (:func:`device_peak_bytes`);
          the variables ``{"params", "batch_stats"}`` are the student's before the first
          step (to start a reference implementation from the same weights).
        """
        setting = self.setting
        self.check_taps(method)
        jitted, state, args, init_vars = self.step(method)
        t0 = time.perf_counter()
        compiled = jitted.lower(state, *args).compile()
        state, metrics = compiled(state, *args)
        jax.block_until_ready((state, metrics))
        compile_s = time.perf_counter() - t0

        def step():
            nonlocal state, metrics
            state, metrics = compiled(state, *args)
            jax.block_until_ready((state, metrics))

        times = timed_loop(step, setting)
        result = summarize(times, compile_s, setting.batch_size * method.runs)
        result["runs"] = method.runs
        result["ms_per_run_step"] = result["median_ms"] / method.runs
        result["final_loss"] = float(jnp.max(metrics["loss"]))
        mem = compiled.memory_analysis()
        result["xla_bytes"] = (None if mem is None else int(
            mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
            - mem.alias_size_in_bytes))
        result["peak_bytes"] = device_peak_bytes(self.mesh.devices.flat[0])
        return result, init_vars

    def step(self, method: Method) -> tuple[Callable, object, tuple, dict]:
        """``(jitted step, packed states, (batch, teacher variables, learning rate,
        weights), initial host variables)`` of ``method``: the loop's step for its runs,
        at the CIFAR recipe's initial learning rate."""
        model = self.model(method.student)
        optimizer = Optimizer.of(CIFAR_RECIPE)
        state = create_train_state(model, optimizer, jax.random.key(self.seed),
                                   self.input_shape, self.mesh)
        init_vars = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
        objectives = method.fused or (method.objective,)
        teacher_kw, teacher_vars = {}, None
        if method.teacher:
            teacher_model, teacher_vars, _ = self.teacher()
            teacher_kw = dict(teacher_model=teacher_model, teacher_mean=CIFAR100_MEAN,
                              teacher_std=CIFAR100_STD)
        jitted = self.steps.train_step(model, objectives, optimizer, mean=CIFAR100_MEAN,
                                       std=CIFAR100_STD, augment="crop+flip",
                                       mode=method.fusion_mode, mesh=self.mesh, **teacher_kw)
        states = jax.device_put(pack_states([state] * len(objectives)), self.rep)
        rate = jax.device_put(np.float32(CIFAR_RECIPE.learning_rate), self.rep)
        weights = jax.device_put(weight_matrix(objectives), self.rep)
        return jitted, states, (self.batch, teacher_vars, rate, weights), init_vars
