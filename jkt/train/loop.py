"""``train_and_evaluate``: student runs, jitted and data-parallel, checkpointed, resumable.

One call trains ``R >= 1`` runs that share a batch stream (the methods of one Table-1
cell; ``R = 1`` everywhere else) through one jitted step (:mod:`jkt.train.step`), and
reads top to bottom: skip finished runs; build the model, the batch stream, the learning
rates and the step; restore each run's latest checkpoint or initialise; run the steps,
fetching metrics late (:mod:`jkt.train.metrics`) and checkpointing only states whose
losses were checked; evaluate and write each run's ``result.json``
(:mod:`jkt.train.results`). Each run keeps its own work directory, so fused and separate
runs resume each other's checkpoints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from typing import Literal

import jax
import numpy as np

from jkt import parallel, paths
from jkt.checkpoint import TrainCheckpointer, latest_saved_step
from jkt.data.batches import BatchStream, eval_batches, make_batch
from jkt.data.stream import StreamOptions, streamed_batches, streamed_eval_batches
from jkt.data.transforms import augmentation_name
from jkt.data.types import Split
from jkt.models import create as create_model
from jkt.train import fused, memory
from jkt.train.metrics import MetricLog, NonFiniteLossError
from jkt.train.objective import Objective
from jkt.train.optim import CIFAR_RECIPE, OptimConfig, Optimizer, learning_rates
from jkt.train.results import RunResult, read_result, write_result
from jkt.train.state import TrainState, create_train_state
from jkt.train.step import StepCache

CHECKPOINTS = "checkpoints"
# Checkpoint data-meta keys added later, with the value of the checkpoints written before.
DATA_META_ADDED = {"batching": "cycle"}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One student run.

    Attributes:
      model: model name for ``jkt.models.create``.
      model_options: options for it (e.g. ``{"dropout": 0.25}``).
      objective: the loss (see :class:`jkt.train.objective.Objective`).
      optim: optimiser, schedule, epochs and batch size.
      augment: on-device augmentation: ``"crop+flip"`` (pad-4 random crop + horizontal
        flip), ``"crop"`` or ``"none"`` (``True``/``False`` mean ``"crop+flip"``/``"none"``).
      seed: initialisation / augmentation / data-order seed.
      max_steps: stop after this many steps (default: ``epochs * ceil(N / B)``).
      log_every: steps between progress/metric logs.
      checkpoint_every: steps between checkpoints (one is always written at the end).
      eval_batch_size: global batch size for evaluation.
      progress: show a tqdm progress bar.
    """

    model: str = "vgg4"
    model_options: dict = dataclasses.field(default_factory=dict)
    objective: Objective = Objective()
    optim: OptimConfig = CIFAR_RECIPE
    augment: Literal["none", "crop", "crop+flip"] = "crop+flip"
    seed: int = 0
    max_steps: int | None = None
    log_every: int = 50
    checkpoint_every: int = 1000
    eval_batch_size: int = 256
    progress: bool = True

    def __post_init__(self):
        object.__setattr__(self, "augment", augmentation_name(self.augment))
        for f in ("log_every", "checkpoint_every", "eval_batch_size"):
            if getattr(self, f) <= 0:
                raise ValueError(f"{f} must be positive, got {getattr(self, f)}")
        if self.max_steps is not None and self.max_steps <= 0:
            raise ValueError(f"max_steps must be positive, got {self.max_steps}")


def batch_stream(cfg: TrainConfig, num_examples: int, data_devices: int = 1) -> BatchStream:
    """The run's training batches (:class:`jkt.data.BatchStream`: ``cfg.optim``'s batch
    size and batching, ``cfg.seed``) over a data mesh of ``data_devices`` devices."""
    return BatchStream(num_examples, cfg.optim.batch_size, seed=cfg.seed,
                       batching=cfg.optim.batching, multiple_of=data_devices)


def total_steps(cfg: TrainConfig, num_examples: int, data_devices: int = 1) -> int:
    """``epochs`` times the stream's steps per epoch (``ceil(N / B)``; see
    :attr:`jkt.data.BatchStream.steps_per_epoch` for epoch batching on a mesh of
    ``data_devices``), or ``max_steps`` when set."""
    if cfg.max_steps is not None:
        return cfg.max_steps
    return cfg.optim.epochs * batch_stream(cfg, num_examples, data_devices).steps_per_epoch


def train_and_evaluate(
    cfgs: list[TrainConfig],
    train: Split,
    eval_splits: dict[str, Split],
    *,
    num_classes: int,
    mean,
    std,
    workdirs: list,
    teacher=None,
    mesh=None,
    init_variables=None,
    descs: list[str] | None = None,
    mode: str = "unroll",
    steps: StepCache | None = None,
    stop: Callable[[], bool] | None = None,
    stream_options: StreamOptions | None = None,
) -> list[RunResult]:
    """Trains one run per config on ``train`` and reports accuracy on each of
    ``eval_splits``; returns one :class:`RunResult` per run.

    A run whose ``result.json`` exists is returned as stored; an unfinished one resumes
    from ``workdir/checkpoints``. Runs left at different checkpoint steps (a group whose
    members were once run one by one) are trained one after the other.

    Args:
      cfgs: one per run; all fields but ``objective`` must be equal, and the objectives
        may differ only in their weights (and, with ``mode="unroll"``, estimators).
      train: training images/labels (e.g. an n-per-class subset): an in-memory
        :class:`Split` (resident), or a record source (:mod:`jkt.data.records`) whose
        batches are read and decoded when due (:func:`jkt.data.stream.streamed_batches`:
        the same batches, so the same numbers; resumed at the checkpoint's step).
      eval_splits: name -> split evaluated at the end (e.g. ``{"val": ..., "test": ...}``);
        splits or record sources; empty ones are left out of ``accuracy``.
      num_classes: classes of the target head.
      mean, std: normalisation of the student's inputs.
      workdirs, descs: one per run: its directory (checkpoints, ``metrics.jsonl``,
        TensorBoard events, ``result.json``) and progress label.
      teacher: a frozen :class:`jkt.models.Teacher`, needed when an objective matches one.
      mesh: data mesh (default: all devices).
      init_variables: start from these variables instead of a random init.
      mode: ``"unroll"`` or ``"vmap"`` (see :func:`jkt.train.step.make_train_step`).
      steps: the :class:`jkt.train.step.StepCache` a grid shares between its calls (one
        compiled step per program); ``None``: a fresh one.
      stop: polled after every step; when it returns true the loop checks the steps so
        far, saves a checkpoint there, waits for it and raises ``KeyboardInterrupt`` (the
        command line's first Ctrl-C).
      stream_options: how record sources are read (:class:`jkt.data.stream.StreamOptions`;
        ``None``: its defaults); unused for in-memory splits.
    """
    workdirs = [paths.as_dir(w) for w in workdirs]
    descs = list(descs) if descs is not None else [""] * len(cfgs)
    _check_runs(cfgs, workdirs, descs, mode)
    results = [read_result(w) for w in workdirs]
    todo = [i for i, r in enumerate(results) if r is None]
    steps = StepCache() if steps is None else steps
    common = dict(num_classes=num_classes, mean=mean, std=std, teacher=teacher, mesh=mesh,
                  init_variables=init_variables, mode=mode, steps=steps, stop=stop,
                  stream_options=stream_options)
    # Listed, not opened: a second checkpoint manager on a directory would clean up the
    # temporary directories of a killed save concurrently with the loop's own.
    if len({latest_saved_step(workdirs[i] / CHECKPOINTS) for i in todo}) > 1:
        for i in todo:
            results[i], = train_and_evaluate([cfgs[i]], train, eval_splits,
                                             workdirs=[workdirs[i]], descs=[descs[i]], **common)
        return results
    if not todo:
        return results
    cfg, objectives = cfgs[todo[0]], [cfgs[i].objective for i in todo]
    run_dirs, n_runs = [workdirs[i] for i in todo], len(todo)

    # What the runs share: mesh, model, batch stream, learning rates, the compiled step.
    mesh = parallel.make_mesh() if mesh is None else mesh
    parallel.check_batch_size(cfg.optim.batch_size, mesh)
    parallel.check_batch_size(cfg.eval_batch_size, mesh)
    for w in run_dirs:
        w.mkdir(parents=True, exist_ok=True)
    model = create_model(cfg.model, num_classes, **cfg.model_options)
    image_shape = _image_shape(train)
    optimizer = Optimizer.of(cfg.optim)
    # A step that cannot fit in the device's memory is one line now, before any compilation.
    memory.check_step(model, objectives, optimizer, image_shape, cfg.optim.batch_size, mesh,
                         teacher=teacher, mode=mode, eval_batch_size=cfg.eval_batch_size)
    # A pure function of (seed, step): a resumed run sees the batches it would have seen.
    stream = batch_stream(cfg, len(train), mesh.devices.size)
    n_steps = total_steps(cfg, len(train), mesh.devices.size)
    rates = _OnMesh(learning_rates(cfg.optim, stream.steps_per_epoch, n_steps), mesh)
    teacher_kw, teacher_vars = _teacher_inputs(objectives, teacher, image_shape, mesh)
    train_step = steps.train_step(model, objectives, optimizer, mean=mean, std=std,
                                  augment=cfg.augment, mode=mode, mesh=mesh, **teacher_kw)
    weights = jax.device_put(fused.weight_matrix(objectives), parallel.replicated(mesh))
    data_meta = {"num_examples": len(train), "batch_size": cfg.optim.batch_size,
                 "seed": cfg.seed, "total_steps": n_steps, "batching": cfg.optim.batching}
    if cfg.optim.batching == "epoch":  # the short batch depends on the mesh's device count
        data_meta["images_per_epoch"] = stream.images_per_epoch

    ckpts = [TrainCheckpointer(w / CHECKPOINTS, max_to_keep=2) for w in run_dirs]
    t0 = time.time()
    try:
        state = create_train_state(model, optimizer, jax.random.key(cfg.seed), image_shape,
                                   mesh, init_variables=init_variables,
                                   init_fn=steps.init(model, optimizer, image_shape, mesh))
        states, resumed_from = _restore_or_init(ckpts, run_dirs, state, data_meta, mesh)
        start = resumed_from or 0
        batches = _train_batches(train, stream, mesh, start, n_steps, stream_options)
        with MetricLog(run_dirs, objectives, [descs[i] for i in todo], total=n_steps,
                       start=start, epoch=stream.epoch, progress=cfg.progress) as log, \
                contextlib.closing(batches):
            for step, batch in zip(range(start, n_steps), batches, strict=True):
                states, metrics = train_step(states, batch, teacher_vars, rates[step], weights)
                log.add(step, metrics)
                done = step + 1
                if done % cfg.log_every == 0 or done == n_steps:
                    log.write(done)
                if done % cfg.checkpoint_every == 0 and done < n_steps:
                    log.fetch()  # never checkpoint a state whose loss is unchecked
                    _save(ckpts, done, states, data_meta)
                if stop is not None and done < n_steps and stop():
                    log.fetch()
                    if done % cfg.checkpoint_every:  # not saved just above
                        _save(ckpts, done, states, data_meta, force=True)
                    for ckpt in ckpts:
                        ckpt.wait()
                    raise KeyboardInterrupt(f"stopped after step {done}")
            log.fetch()
            _save(ckpts, n_steps, states, data_meta, force=True)
        for ckpt in ckpts:
            ckpt.wait()
    except BaseException:
        for ckpt in ckpts:
            ckpt.close()  # finish pending async saves before the error propagates
        raise

    eval_step = steps.eval_step(model, mean=mean, std=std)
    for r, (i, ckpt) in enumerate(zip(todo, ckpts, strict=True)):
        st = fused.unpack_state(states, r, n_runs)
        variables = {"params": st.params, "batch_stats": st.batch_stats}
        accuracy = {name: evaluate(eval_step, variables, sp, mesh, cfg.eval_batch_size,
                                   stream_options=stream_options)
                    for name, sp in eval_splits.items() if len(sp)}
        results[i] = RunResult(accuracy=accuracy, final_metrics=log.last[r], steps=n_steps,
                               wall_time=time.time() - t0, resumed_from=resumed_from)
        ckpt.close()
        write_result(workdirs[i], results[i])
    return results


def _check_runs(cfgs, workdirs, descs, mode: str) -> None:
    """Raises before any work unless the runs can share one step: one workdir and label
    per config, configs that differ only in their objectives, objectives that fuse."""
    if not cfgs or len(workdirs) != len(cfgs) or len(descs) != len(cfgs):
        raise ValueError(f"need one workdir (and label) per config, got {len(cfgs)} configs, "
                         f"{len(workdirs)} workdirs and {len(descs)} labels")
    for c in cfgs[1:]:
        diff = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "objective"
                and getattr(c, f.name) != getattr(cfgs[0], f.name)]
        if diff:
            raise ValueError(f"fused runs may differ only in their objective, not in {diff}")
    if mode not in fused.FUSION_MODES:
        raise ValueError(f"unknown fusion mode {mode!r}; valid: {fused.FUSION_MODES}")
    fused.union_objective([c.objective for c in cfgs], mixed_estimators=mode == "unroll")


def _image_shape(train) -> tuple[int, ...]:
    """``(H, W, 3)`` of a split's or a record source's images (none decoded)."""
    if isinstance(train, Split):
        return tuple(train.images.shape[1:])
    return tuple(train.image_shape)


def _train_batches(train, stream: BatchStream, mesh, start: int, stop: int,
                   options: StreamOptions | None):
    """Batches ``start, ..., stop - 1``: gathered from host memory step by step (a
    :class:`Split`) or read ahead by Grain workers (a record source)."""
    if isinstance(train, Split):
        return (make_batch(train, stream.indices(step), mesh) for step in range(start, stop))
    return streamed_batches(train, stream, mesh, start_step=start, stop_step=stop,
                            options=options or StreamOptions())


class _OnMesh:
    """``rates[step]``: the float32 rate of ``step``, replicated on ``mesh`` (each distinct
    rate put there once: a schedule has a few)."""

    def __init__(self, rates: np.ndarray, mesh):
        self.rates, self.sharding, self.placed = rates, parallel.replicated(mesh), {}

    def __getitem__(self, step: int):
        value = self.rates[step]
        if value not in self.placed:
            self.placed[value] = jax.device_put(value, self.sharding)
        return self.placed[value]


def _teacher_inputs(objectives, teacher, image_shape, mesh) -> tuple[dict, object]:
    """The step's teacher arguments and the replicated teacher variables (both empty /
    ``None`` when no run matches a teacher)."""
    if not any(o.needs_teacher for o in objectives):
        return {}, None
    if teacher is None:
        raise ValueError("the objective matches a teacher, but no teacher was given")
    if tuple(teacher.meta.input_size) != tuple(image_shape):
        raise ValueError(f"teacher expects inputs {tuple(teacher.meta.input_size)}, "
                         f"the data has {tuple(image_shape)}")
    kw = dict(teacher_model=teacher.model, teacher_mean=teacher.meta.mean,
              teacher_std=teacher.meta.std)
    return kw, jax.device_put(teacher.variables, parallel.replicated(mesh))


def _restore_or_init(ckpts, run_dirs, state: TrainState, data_meta: dict, mesh
                     ) -> tuple[TrainState, int | None]:
    """The packed (:func:`jkt.train.fused.pack_states`), replicated states of the runs:
    each run's latest good checkpoint (checked against this run's data), or ``state`` for
    all of them. Returns ``(states, step resumed from or None)``."""
    states, resumed_from = [state] * len(ckpts), None
    if ckpts[0].latest_step() is not None:
        states = [_restore(c, w, state, data_meta) for c, w in zip(ckpts, run_dirs, strict=True)]
        steps = [int(jax.device_get(s.step)) for s in states]
        if len(set(steps)) > 1:  # a damaged step fell back in some runs, not in others
            states = [_restore(c, w, state, data_meta, step=min(steps))
                      for c, w in zip(ckpts, run_dirs, strict=True)]
        resumed_from = min(steps)
    return jax.device_put(fused.pack_states(states), parallel.replicated(mesh)), resumed_from


def _restore(ckpt: TrainCheckpointer, workdir, target: TrainState, data_meta: dict,
             step: int | None = None) -> TrainState:
    """The latest good checkpoint (or ``step``) of one run, checked against its data."""
    try:
        restored, meta = ckpt.restore(target, step=step)
    except FileNotFoundError:
        raise ValueError(f"the fused runs' checkpoints in {workdir} have no common step "
                         f"{step}; rerun with --fusion off to resume them one by one") from None
    stored = {k: meta.get(k, DATA_META_ADDED.get(k)) for k in data_meta}
    if stored != data_meta:
        raise ValueError(f"checkpoint in {workdir} was written for {stored}, this run is "
                         f"{data_meta}; use another workdir or delete it")
    return restored


def _save(ckpts, step: int, states: TrainState, data_meta: dict, force: bool = False) -> None:
    """Each run's own (unstacked) state to its own checkpoint directory."""
    for r, ckpt in enumerate(ckpts):
        ckpt.save(step, fused.unpack_state(states, r, len(ckpts)), data_meta, force=force)


def evaluate(eval_fn, variables, split: Split, mesh, batch_size: int, *, sigma: float = 0.0,
             key: jax.Array | None = None, stream_options: StreamOptions | None = None
             ) -> float:
    """Accuracy of ``eval_fn`` (a jitted :func:`jkt.train.step.make_eval_step`) on
    ``split`` (or a record source, read by ``stream_options``), with Gaussian noise of std
    ``sigma`` on the normalised images."""
    if len(split) == 0:
        raise ValueError("evaluate: the split is empty (no accuracy to report)")
    key = jax.random.key(0) if key is None else key
    batches = (eval_batches(split, batch_size, mesh) if isinstance(split, Split) else
               streamed_eval_batches(split, batch_size, mesh, stream_options or StreamOptions()))
    sums = [eval_fn(variables, batch, jax.random.fold_in(key, i), sigma)
            for i, batch in enumerate(batches)]
    sums = jax.device_get(sums)
    correct, count = sum(int(s["correct"]) for s in sums), sum(int(s["count"]) for s in sums)
    return correct / max(count, 1)


def final_variables(workdir, cfg: TrainConfig, num_classes: int, image_shape, mesh=None):
    """``(model, {"params", "batch_stats"})`` from a finished run's last checkpoint."""
    mesh = parallel.make_mesh() if mesh is None else mesh
    model = create_model(cfg.model, num_classes, **cfg.model_options)
    target = create_train_state(model, Optimizer.of(cfg.optim), jax.random.key(0),
                                tuple(image_shape), mesh)
    with TrainCheckpointer(paths.as_dir(workdir) / CHECKPOINTS) as ckpt:
        state, _ = ckpt.restore(target)
    return model, {"params": state.params, "batch_stats": state.batch_stats}


__all__ = ["CHECKPOINTS", "DATA_META_ADDED", "NonFiniteLossError", "TrainConfig",
           "batch_stream", "evaluate", "final_variables", "total_steps", "train_and_evaluate"]
