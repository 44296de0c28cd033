"""``train_and_evaluate``: student runs, jitted and data-parallel, checkpointed, resumable.

Data flows one way: config -> batches -> state -> jitted step -> metrics / checkpoints.
One code path serves a single run and a fused group of ``R`` runs: their states are
packed (:func:`jkt.train.fused.pack_states`: stacked on a leading run axis, one run's
state as it is) and updated by one :func:`jkt.train.fused.make_fused_train_step`; each
run's checkpoint holds its own unstacked state. The step is jitted with the states
replicated and the batch split over the mesh's ``"data"`` axis; the states are donated.
It comes from a :class:`jkt.train.StepCache` (a grid passes one to all its runs), with the
learning-rate schedule's run-dependent boundaries as a jit argument, so that runs of one
structure share one compiled step, eval step and init.
The loop never waits for the device between steps: each step's metrics stay on the
device until the next log (or checkpoint) step, where all of them come back in one
transfer and are checked in order, so a non-finite loss stops the run at that point
naming the first bad step and term; a checkpoint is only written after every step
before it was checked.
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
import time
from pathlib import Path
from typing import Any, Literal

import jax
import numpy as np
from tqdm.auto import tqdm

from jkt import parallel, paths
from jkt.checkpoint import TrainCheckpointer, latest_saved_step
from jkt.data.batches import BatchStream, eval_batches, make_batch
from jkt.data.transforms import augmentation_name
from jkt.data.types import Split
from jkt.models import create as create_model
from jkt.train import fused
from jkt.train.events import open_event_writer, write_scalars
from jkt.train.objective import TERMS, Objective
from jkt.train.optim import (
    CIFAR_RECIPE,
    OptimConfig,
    ScheduledOptimizer,
    make_optimizer,
    schedule_arrays,
)
from jkt.train.state import TrainState, create_train_state
from jkt.train.step_cache import StepCache
from jkt.workdir import is_writer, write_file

RESULT_FILE = "result.json"
METRICS_FILE = "metrics.jsonl"


_STOP = threading.Event()


def request_stop() -> None:
    """Asks running loops to stop at the next step boundary: they check the steps so far,
    save a checkpoint at that step, wait for it and raise ``KeyboardInterrupt`` (the
    command line's first Ctrl-C calls this)."""
    _STOP.set()


def stop_requested() -> bool:
    return _STOP.is_set()


def clear_stop() -> None:
    _STOP.clear()


class NonFiniteLossError(FloatingPointError):
    """Raised when a loss term becomes NaN or inf; names the step and the term."""


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


@dataclasses.dataclass
class RunResult:
    """What a run produced: accuracies on the evaluated splits, the final step's metrics
    (every loss term, accuracy, agreement), step count and wall time (of this invocation)."""

    accuracy: dict[str, float]
    final_metrics: dict[str, float]
    steps: int
    wall_time: float
    resumed_from: int | None = None

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def read_result(path: Path) -> RunResult:
    """A finished run's ``result.json``; a damaged one is one line naming it and the fix."""
    try:
        return RunResult(**json.loads(paths.as_dir(path).read_text()))
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path} is damaged ({type(e).__name__}); delete it to evaluate the "
                         "run again from its last checkpoint") from None


def total_steps(cfg: TrainConfig, num_examples: int) -> int:
    """``epochs * ceil(N / B)``, or ``max_steps`` when set."""
    if cfg.max_steps is not None:
        return cfg.max_steps
    return cfg.optim.epochs * math.ceil(num_examples / cfg.optim.batch_size)


def evaluate(eval_fn, variables, split: Split, mesh, batch_size: int, *, sigma: float = 0.0,
             key: jax.Array | None = None) -> float:
    """Accuracy of ``eval_fn`` (a jitted :func:`make_eval_step`) over ``split``."""
    if len(split) == 0:
        raise ValueError("evaluate: the split is empty (no accuracy to report)")
    key = jax.random.key(0) if key is None else key
    correct = count = 0
    sums = []
    for i, batch in enumerate(eval_batches(split, batch_size, mesh)):
        sums.append(eval_fn(variables, batch, jax.random.fold_in(key, i), sigma))
    for s in jax.device_get(sums):
        correct += int(s["correct"])
        count += int(s["count"])
    return correct / max(count, 1)


def _check_finite(metrics: dict[str, Any], step: int) -> None:
    bad = [k for k, v in metrics.items() if not np.isfinite(v)]
    if bad:
        desc = ", ".join(f"{k}={metrics[k]}" for k in bad)
        raise NonFiniteLossError(f"non-finite loss at step {step}: {desc}")


def train_and_evaluate(
    cfg: TrainConfig,
    train: Split,
    eval_splits: dict[str, Split],
    *,
    num_classes: int,
    mean,
    std,
    workdir,
    teacher=None,
    mesh=None,
    init_variables=None,
    desc: str = "",
    step_cache: StepCache | None = None,
) -> RunResult:
    """Trains a student on ``train`` and reports accuracy on each of ``eval_splits``.

    Resumes from ``workdir/checkpoints`` if a checkpoint exists; returns the stored
    result at once if ``workdir/result.json`` says the run already finished. The run is
    a fused run of one (:func:`train_and_evaluate_fused`'s loop with ``R = 1``), which
    compiles :func:`jkt.train.step.make_train_step`'s program with the learning-rate
    schedule's boundaries as arguments (:func:`jkt.train.step.with_schedule`): the same
    numbers bit for bit.

    Args:
      cfg: the run's configuration.
      train: training images/labels (e.g. an n-per-class subset).
      eval_splits: name -> split evaluated at the end (e.g. ``{"val": ..., "test": ...}``).
      num_classes: classes of the target head.
      mean, std: normalisation of the student's inputs.
      workdir: directory for checkpoints, ``metrics.jsonl`` and ``result.json``.
      teacher: a ``jkt.checkpoint.Teacher`` (frozen) or ``None``.
      mesh: data mesh (default: all devices).
      init_variables: start from these variables instead of a random init.
      desc: progress-bar label.
      step_cache: a :class:`jkt.train.StepCache` shared by the runs of a grid, so that
        runs with the same model, objectives, normalisation, augmentation, teacher and
        mesh reuse one compiled train step, eval step and init (their seeds, data sizes
        and schedules are arguments); ``None``: a fresh one for this call.
    """
    workdir = paths.as_dir(workdir)
    result_path = workdir / RESULT_FILE
    if result_path.exists():
        return read_result(result_path)
    return _train_runs([cfg], train, eval_splits, num_classes=num_classes, mean=mean, std=std,
                       workdirs=[workdir], teacher=teacher, mesh=mesh,
                       init_variables=init_variables, descs=[desc], mode="unroll",
                       step_cache=step_cache)[0]


def train_and_evaluate_fused(
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
    descs: list[str] | None = None,
    mode: str = "unroll",
    step_cache: StepCache | None = None,
) -> list[RunResult]:
    """Trains several runs that differ only in their loss weights in one jitted step
    (:mod:`jkt.train.fused`): the batches, augmentation, estimator probes and the
    teacher's passes are shared, computed once per step.

    Each run keeps its own ``workdir`` (checkpoints, ``metrics.jsonl`` with its own active
    terms, ``result.json``), so fused and separate runs resume each other's checkpoints.
    Runs already finished are returned from their ``result.json``. If the unfinished runs'
    latest checkpoints are at different steps, they are trained one after the other with
    :func:`train_and_evaluate` instead. ``wall_time`` of every fused run is the group's.

    Args:
      cfgs: one config per run; all fields but ``objective`` must be equal, and the
        objectives may differ only in their weights.
      workdirs, descs: one per run.
      mode: ``"unroll"`` or ``"vmap"`` (see :func:`jkt.train.fused.make_fused_train_step`).
      step_cache: as in :func:`train_and_evaluate`; ``None``: one for this call's runs.
      Other arguments as in :func:`train_and_evaluate`.
    """
    if not cfgs or len(workdirs) != len(cfgs):
        raise ValueError(f"need one workdir per config, got {len(cfgs)} configs and "
                         f"{len(workdirs)} workdirs")
    descs = list(descs) if descs is not None else [""] * len(cfgs)
    _check_fusable(cfgs, mode)
    workdirs = [paths.as_dir(w) for w in workdirs]
    results: list[RunResult | None] = [
        read_result(w / RESULT_FILE) if (w / RESULT_FILE).exists() else None
        for w in workdirs]
    todo = [i for i, r in enumerate(results) if r is None]
    common = dict(num_classes=num_classes, mean=mean, std=std, teacher=teacher, mesh=mesh,
                  step_cache=StepCache() if step_cache is None else step_cache)
    # Listed, not opened: a second checkpoint manager on a directory would clean up the
    # temporary directories of a killed save concurrently with the loop's own.
    steps = {latest_saved_step(workdirs[i] / "checkpoints") for i in todo}
    if len(todo) == 1 or len(steps) > 1:
        for i in todo:
            results[i] = train_and_evaluate(cfgs[i], train, eval_splits, workdir=workdirs[i],
                                            desc=descs[i], **common)
    elif todo:
        done = _train_runs([cfgs[i] for i in todo], train, eval_splits,
                           workdirs=[workdirs[i] for i in todo], descs=[descs[i] for i in todo],
                           init_variables=None, mode=mode, **common)
        for i, r in zip(todo, done, strict=True):
            results[i] = r
    return results


def _check_fusable(cfgs: list[TrainConfig], mode: str) -> None:
    """Raises before any work unless ``cfgs`` differ only in their objectives' weights."""
    for c in cfgs[1:]:
        diff = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "objective"
                and getattr(c, f.name) != getattr(cfgs[0], f.name)]
        if diff:
            raise ValueError(f"fused runs may differ only in their objective, not in {diff}")
    if mode not in fused.FUSION_MODES:
        raise ValueError(f"unknown fusion mode {mode!r}; valid: {fused.FUSION_MODES}")
    fused.union_objective([c.objective for c in cfgs], mixed_estimators=mode == "unroll")


@dataclasses.dataclass(frozen=True)
class _Runs:
    """What ``R`` runs sharing one batch stream have in common, and each run's own parts."""

    cfg: TrainConfig  # the shared fields (every run's config but its objective)
    objectives: list[Objective]
    workdirs: list[Path]
    descs: list[str]
    mesh: Any
    model: Any
    stream: BatchStream
    n_steps: int
    data_meta: dict

    @property
    def size(self) -> int:
        return len(self.objectives)


def _train_runs(cfgs, train, eval_splits, *, num_classes, mean, std, workdirs, teacher, mesh,
                init_variables, descs, mode, step_cache) -> list[RunResult]:
    """The training loop of ``R >= 1`` runs, packed and updated by one fused step: restore
    or init, train (checkpointing), evaluate and write results. The jitted step, eval
    step and init come from ``step_cache`` (a fresh one when ``None``)."""
    cache = StepCache() if step_cache is None else step_cache
    runs = _plan(cfgs, train, num_classes, workdirs, descs, mesh)
    teacher_kw, teacher_vars = _teacher_inputs(runs, teacher, train)
    tx = ScheduledOptimizer.of(runs.cfg.optim)
    train_step = _scheduled_step(runs, cache.train_step(
        runs.model, runs.objectives, mean=mean, std=std, augment=runs.cfg.augment, mode=mode,
        mesh=runs.mesh, **teacher_kw))
    init_fn = cache.init(runs.model, tx, tuple(train.images.shape[1:]), runs.mesh)
    ckpts = [TrainCheckpointer(w / "checkpoints", max_to_keep=2) for w in runs.workdirs]
    t0 = time.time()
    try:
        states, resumed_from = _restore_or_init(runs, ckpts, tx, train, init_variables,
                                                init_fn)
        start = 0 if resumed_from is None else resumed_from
        with _MetricLog(runs, start) as log:
            states = _train_steps(runs, train_step, states, train, teacher_vars, ckpts, log,
                                  start)
        for ckpt in ckpts:
            ckpt.wait()
    except BaseException:
        for ckpt in ckpts:
            ckpt.close()  # finish pending async saves before the error propagates
        raise
    return _evaluate_and_write(runs, states, eval_splits, ckpts, log.last,
                               cache.eval_step(runs.model, mean=mean, std=std), t0=t0,
                               resumed_from=resumed_from)


def _scheduled_step(runs: _Runs, step):
    """``step(states, batch, teacher_variables)``: the cached ``step`` (see
    :meth:`StepCache.train_step`) at this run's learning-rate schedule, whose boundaries
    (:func:`jkt.train.optim.schedule_arrays` of its steps per epoch and total steps) are
    put on the mesh once and passed as jit arguments, and with the runs' loss weights."""
    schedule, weights = jax.device_put(
        (schedule_arrays(runs.cfg.optim, runs.stream.steps_per_epoch, runs.n_steps),
         fused.weight_matrix(runs.objectives)), parallel.replicated(runs.mesh))

    def train_step(states, batch, teacher_variables):
        return step(states, batch, teacher_variables, schedule, weights)

    return train_step


def _plan(cfgs, train: Split, num_classes: int, workdirs, descs, mesh) -> _Runs:
    cfg = cfgs[0]
    for w in workdirs:
        w.mkdir(parents=True, exist_ok=True)
    mesh = parallel.make_mesh() if mesh is None else mesh
    parallel.check_batch_size(cfg.optim.batch_size, mesh)
    parallel.check_batch_size(cfg.eval_batch_size, mesh)
    stream = BatchStream(len(train), cfg.optim.batch_size, seed=cfg.seed)
    n_steps = total_steps(cfg, len(train))
    data_meta = {"num_examples": len(train), "batch_size": cfg.optim.batch_size,
                 "seed": cfg.seed, "total_steps": n_steps}
    return _Runs(cfg=cfg, objectives=[c.objective for c in cfgs], workdirs=list(workdirs),
                 descs=list(descs), mesh=mesh,
                 model=create_model(cfg.model, num_classes, **cfg.model_options),
                 stream=stream, n_steps=n_steps, data_meta=data_meta)


def _teacher_inputs(runs: _Runs, teacher, train: Split) -> tuple[dict, Any]:
    """The step builder's teacher arguments and the replicated teacher variables (both
    empty / ``None`` when no run matches a teacher)."""
    if not any(o.needs_teacher for o in runs.objectives):
        return {}, None
    if teacher is None:
        raise ValueError("the objective matches a teacher, but no teacher was given")
    image_shape = tuple(train.images.shape[1:])
    if tuple(teacher.meta.input_size) != image_shape:
        raise ValueError(f"teacher expects inputs {tuple(teacher.meta.input_size)}, "
                         f"the data has {image_shape}")
    kw = dict(teacher_model=teacher.model, teacher_mean=teacher.meta.mean,
              teacher_std=teacher.meta.std)
    return kw, jax.device_put(teacher.variables, parallel.replicated(runs.mesh))


def _restore_or_init(runs: _Runs, ckpts, tx, train: Split, init_variables,
                     init_fn) -> tuple[TrainState, int | None]:
    """The packed (:func:`jkt.train.fused.pack_states`), replicated states of the runs:
    each run's latest checkpoint (checked against this run's data), or the fresh state of
    ``cfg.seed`` for all of them (``init_fn``: a jitted :func:`jkt.train.state.make_init`).
    Returns ``(states, step resumed from or None)``."""
    image_shape = tuple(train.images.shape[1:])
    state = create_train_state(runs.model, tx, jax.random.key(runs.cfg.seed), image_shape,
                               runs.mesh, init_variables=init_variables, init_fn=init_fn)
    resumed_from = None
    states = [state] * runs.size
    if ckpts[0].latest_step() is not None:
        states = [_restore(ckpt, w, state, runs.data_meta)
                  for w, ckpt in zip(runs.workdirs, ckpts, strict=True)]
        steps = [int(jax.device_get(s.step)) for s in states]
        if len(set(steps)) > 1:  # a damaged step fell back in some runs, not in others
            states = [_restore(ckpt, w, state, runs.data_meta, step=min(steps))
                      for w, ckpt in zip(runs.workdirs, ckpts, strict=True)]
        resumed_from = min(steps)
    packed = fused.pack_states(states)
    return jax.device_put(packed, parallel.replicated(runs.mesh)), resumed_from


def _restore(ckpt: TrainCheckpointer, workdir: Path, target: TrainState,
             data_meta: dict, step: int | None = None) -> TrainState:
    """The latest good checkpoint (or ``step``) of one run, checked against its data."""
    try:
        restored, meta = ckpt.restore(target, step=step)
    except FileNotFoundError:
        raise ValueError(f"the fused runs' checkpoints in {workdir} have no common step "
                         f"{step}; rerun with --fusion off to resume them one by one") from None
    stored = {k: meta.get(k) for k in data_meta}
    if stored != data_meta:
        raise ValueError(f"checkpoint in {workdir} was written for {stored}, this run is "
                         f"{data_meta}; use another workdir or delete it")
    return restored


def _train_steps(runs: _Runs, train_step, states, train: Split, teacher_vars, ckpts,
                 log: _MetricLog, start: int):
    """Steps ``start .. n_steps - 1``; logs every ``log_every`` steps, checkpoints every
    ``checkpoint_every`` steps and at the end, each only after the steps before it were
    checked for non-finite losses. Returns the final packed states."""
    cfg, n_steps = runs.cfg, runs.n_steps
    for step in range(start, n_steps):
        batch = make_batch(train, runs.stream.indices(step), runs.mesh)
        states, metrics = train_step(states, batch, teacher_vars)
        log.add(step, metrics)
        done = step + 1
        if done % cfg.log_every == 0 or done == n_steps:
            log.write(done)
        log.advance()
        if done % cfg.checkpoint_every == 0 and done < n_steps:
            log.fetch()  # never checkpoint a state whose loss is unchecked
            _save(ckpts, done, states, runs.data_meta)
        if stop_requested() and done < n_steps:
            log.fetch()
            if done % cfg.checkpoint_every:  # not saved just above
                _save(ckpts, done, states, runs.data_meta, force=True)
            for ckpt in ckpts:
                ckpt.wait()
            raise KeyboardInterrupt(f"stopped after step {done}")
    log.fetch()
    _save(ckpts, n_steps, states, runs.data_meta, force=True)
    return states


def _save(ckpts, step: int, states: TrainState, data_meta: dict, force: bool = False) -> None:
    """Each run's own (unstacked) state to its own checkpoint directory."""
    for r, ckpt in enumerate(ckpts):
        ckpt.save(step, fused.unpack_state(states, r, len(ckpts)), data_meta, force=force)


class _MetricLog:
    """Per-run metrics: kept on the device until a log or checkpoint step, then fetched in
    one transfer, checked in step order (naming the first non-finite step and term),
    averaged over the log window into each run's ``metrics.jsonl``, its TensorBoard event
    file (the same numbers, :mod:`jkt.train.events`) and the progress bar.
    Each run reports its own active terms (a fused step computes the union's)."""

    def __init__(self, runs: _Runs, start: int):
        self.runs = runs
        self.keep = [set(_active_terms(o)) | {"loss", "accuracy", "agreement"}
                     for o in runs.objectives]
        self.pending: list[tuple[int, Any]] = []  # (step, device metrics) not yet fetched
        self.window: list[list[dict[str, float]]] = []  # fetched, not yet written
        self.last: list[dict[str, float]] = [{} for _ in runs.objectives]  # final step's
        self.files = [_open_history(w / METRICS_FILE, start) for w in runs.workdirs]
        self.events = [open_event_writer(w, start) for w in runs.workdirs]
        label = (runs.descs[0] if runs.size == 1
                 else f"{runs.size} fused runs: {', '.join(runs.descs)}")
        self.bar = tqdm(total=runs.n_steps, initial=start, desc=label or "train", leave=False,
                        dynamic_ncols=True, disable=not runs.cfg.progress)

    def add(self, step: int, metrics) -> None:
        self.pending.append((step, metrics))

    def advance(self) -> None:
        self.bar.update(1)

    def fetch(self) -> None:
        """One device->host transfer for every step since the last fetch."""
        if not self.pending:
            return
        hosts = jax.device_get([m for _, m in self.pending])
        for (step, _), host in zip(self.pending, hosts, strict=True):
            per_run = [{k: float(v[r]) for k, v in host.items() if k in keep}
                       for r, keep in enumerate(self.keep)]
            self._check(per_run, step)
            self.window.append(per_run)
        self.pending.clear()

    def _check(self, per_run: list[dict[str, float]], step: int) -> None:
        for m, desc in zip(per_run, self.runs.descs, strict=True):
            try:
                _check_finite(m, step)
            except NonFiniteLossError as e:
                prefix = f"{desc}: " if self.runs.size > 1 and desc else ""
                raise NonFiniteLossError(f"{prefix}{e}") from e

    def write(self, done: int) -> None:
        """Fetches, then appends each run's window means as one ``metrics.jsonl`` line
        and as TensorBoard scalars at step ``done``."""
        self.fetch()
        self.last = self.window[-1]
        for r, f in enumerate(self.files):
            rows = [w[r] for w in self.window]
            means = {k: float(np.mean([m[k] for m in rows])) for k in rows[0]}
            line = {"step": done, "epoch": self.runs.stream.epoch(done), **means}
            if f is not None:
                f.write(json.dumps(line) + "\n")
                f.flush()
            write_scalars(self.events[r], done, line)
            if r == 0:
                self.bar.set_postfix({k: f"{v:.3g}" for k, v in means.items()}, refresh=False)
        self.window = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for f in self.files:
            if f is not None:
                f.close()
        for w in self.events:
            if w is not None:
                w.close()
        self.bar.close()


def _open_history(path: Path, start: int):
    """``metrics.jsonl`` opened for appending, cut back to the lines of steps up to
    ``start`` (a resumed run repeats the steps after its checkpoint); ``None`` on every
    process but the one that writes files."""
    if not is_writer():
        return None
    if path.exists():
        kept = [line for line in path.read_text().splitlines()
                if line.strip() and _logged_step(line) <= start]
        paths.write_text(path, "".join(line + "\n" for line in kept))
    return paths.open_append(path)


def _logged_step(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 1 << 62  # a torn last line: dropped


def _evaluate_and_write(runs: _Runs, states, eval_splits, ckpts, last, eval_fn, *, t0,
                        resumed_from) -> list[RunResult]:
    """Each run's accuracy on ``eval_splits`` (``eval_fn``: a jitted
    :func:`jkt.train.step.make_eval_step`), written atomically to its ``result.json``."""
    results = []
    for r, (w, ckpt) in enumerate(zip(runs.workdirs, ckpts, strict=True)):
        st = fused.unpack_state(states, r, runs.size)
        variables = {"params": st.params, "batch_stats": st.batch_stats}
        # An empty split (no validation images left: a run on all of the train split) is
        # left out of ``accuracy``; readers use ``accuracy.get("val")``.
        accuracy = {name: evaluate(eval_fn, variables, sp, runs.mesh, runs.cfg.eval_batch_size)
                    for name, sp in eval_splits.items() if len(sp)}
        result = RunResult(accuracy=accuracy, final_metrics=last[r], steps=runs.n_steps,
                           wall_time=time.time() - t0, resumed_from=resumed_from)
        ckpt.close()
        if is_writer():
            write_file(w / RESULT_FILE, json.dumps(result.to_json(), indent=1),
                       resume="to evaluate the run again from its last checkpoint")
        results.append(result)
    return results


def _active_terms(objective: Objective) -> list[str]:
    return [t for t in TERMS if getattr(objective, t) > 0]


def final_variables(workdir, cfg: TrainConfig, num_classes: int, image_shape, mesh=None):
    """The trained ``{"params", "batch_stats"}`` from a finished run's last checkpoint."""
    mesh = parallel.make_mesh() if mesh is None else mesh
    model = create_model(cfg.model, num_classes, **cfg.model_options)
    tx = make_optimizer(cfg.optim, 1)
    target = create_train_state(model, tx, jax.random.key(0), tuple(image_shape), mesh)
    with TrainCheckpointer(paths.as_dir(workdir) / "checkpoints") as ckpt:
        state, _ = ckpt.restore(target)
    return model, {"params": state.params, "batch_stats": state.batch_stats}


__all__ = ["NonFiniteLossError", "RunResult", "TrainConfig", "TrainState", "clear_stop",
           "evaluate", "final_variables", "read_result", "request_stop", "stop_requested",
           "total_steps", "train_and_evaluate", "train_and_evaluate_fused"]
