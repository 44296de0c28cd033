"""``train_and_evaluate``: one student run, jitted and data-parallel, checkpointed, resumable.

Data flows one way: config -> batches -> state -> jitted step -> metrics / checkpoints.
The step is jitted once with the state replicated and the batch split over the mesh's
``"data"`` axis; the state is donated. The loop never waits for the device between steps:
each step's metrics stay on the device until the next log (or checkpoint) step, where
all of them come back in one transfer and are checked in order, so a non-finite loss
stops the run at that point naming the first bad step and term; a checkpoint is only
written after every step before it was checked.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from jkt import parallel
from jkt.checkpoint import TrainCheckpointer
from jkt.data.batches import BatchStream, eval_batches, make_batch
from jkt.data.types import Split
from jkt.models import create as create_model
from jkt.train import fused
from jkt.train.objective import TERMS, Objective
from jkt.train.optim import CIFAR_RECIPE, OptimConfig, make_optimizer
from jkt.train.state import TrainState, create_train_state
from jkt.train.step import make_eval_step, make_train_step

RESULT_FILE = "result.json"


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
      augment: pad-4 random crop + horizontal flip on device.
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
    augment: bool = True
    seed: int = 0
    max_steps: int | None = None
    log_every: int = 50
    checkpoint_every: int = 1000
    eval_batch_size: int = 256
    progress: bool = True

    def __post_init__(self):
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


def total_steps(cfg: TrainConfig, num_examples: int) -> int:
    """``epochs * ceil(N / B)``, or ``max_steps`` when set."""
    if cfg.max_steps is not None:
        return cfg.max_steps
    return cfg.optim.epochs * math.ceil(num_examples / cfg.optim.batch_size)


def evaluate(eval_fn, variables, split: Split, mesh, batch_size: int, *, sigma: float = 0.0,
             key: jax.Array | None = None) -> float:
    """Accuracy of ``eval_fn`` (a jitted :func:`make_eval_step`) over ``split``."""
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
) -> RunResult:
    """Trains a student on ``train`` and reports accuracy on each of ``eval_splits``.

    Resumes from ``workdir/checkpoints`` if a checkpoint exists; returns the stored
    result at once if ``workdir/result.json`` says the run already finished.

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
    """
    workdir = Path(workdir)
    result_path = workdir / RESULT_FILE
    if result_path.exists():
        return RunResult(**json.loads(result_path.read_text()))
    return _train_runs([cfg], train, eval_splits, num_classes=num_classes, mean=mean, std=std,
                       workdirs=[workdir], teacher=teacher, mesh=mesh,
                       init_variables=init_variables, descs=[desc], fusion_mode=None)[0]


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
      Other arguments as in :func:`train_and_evaluate`.
    """
    if not cfgs or len(workdirs) != len(cfgs):
        raise ValueError(f"need one workdir per config, got {len(cfgs)} configs and "
                         f"{len(workdirs)} workdirs")
    descs = list(descs) if descs is not None else [""] * len(cfgs)
    for c in cfgs[1:]:
        diff = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "objective"
                and getattr(c, f.name) != getattr(cfgs[0], f.name)]
        if diff:
            raise ValueError(f"fused runs may differ only in their objective, not in {diff}")
    fused.union_objective([c.objective for c in cfgs])  # structure check, before any work
    if mode not in fused.FUSION_MODES:
        raise ValueError(f"unknown fusion mode {mode!r}; valid: {fused.FUSION_MODES}")
    workdirs = [Path(w) for w in workdirs]
    results: list[RunResult | None] = [
        RunResult(**json.loads((w / RESULT_FILE).read_text())) if (w / RESULT_FILE).exists()
        else None for w in workdirs]
    todo = [i for i, r in enumerate(results) if r is None]
    common = dict(num_classes=num_classes, mean=mean, std=std, teacher=teacher, mesh=mesh)
    steps = set()
    for i in todo:
        with TrainCheckpointer(workdirs[i] / "checkpoints") as ckpt:
            steps.add(ckpt.latest_step())
    if len(todo) == 1 or len(steps) > 1:
        for i in todo:
            results[i] = train_and_evaluate(cfgs[i], train, eval_splits, workdir=workdirs[i],
                                            desc=descs[i], **common)
    elif todo:
        done = _train_runs([cfgs[i] for i in todo], train, eval_splits,
                           workdirs=[workdirs[i] for i in todo], descs=[descs[i] for i in todo],
                           init_variables=None, fusion_mode=mode, **common)
        for i, r in zip(todo, done, strict=True):
            results[i] = r
    return results


def _train_runs(cfgs, train, eval_splits, *, num_classes, mean, std, workdirs, teacher, mesh,
                init_variables, descs, fusion_mode) -> list[RunResult]:
    """The training loop of one run (``fusion_mode=None``) or of fused runs."""
    cfg = cfgs[0]
    for w in workdirs:
        w.mkdir(parents=True, exist_ok=True)
    mesh = parallel.make_mesh() if mesh is None else mesh
    bs = cfg.optim.batch_size
    parallel.check_batch_size(bs, mesh)
    parallel.check_batch_size(cfg.eval_batch_size, mesh)

    image_shape = tuple(train.images.shape[1:])
    model = create_model(cfg.model, num_classes, **cfg.model_options)
    stream = BatchStream(len(train), bs, seed=cfg.seed)
    n_steps = total_steps(cfg, len(train))
    tx = make_optimizer(cfg.optim, stream.steps_per_epoch, n_steps)
    state = create_train_state(model, tx, jax.random.key(cfg.seed), image_shape, mesh,
                               init_variables=init_variables)
    objectives = [c.objective for c in cfgs]
    union = fused.union_objective(objectives)

    teacher_model = teacher_vars = None
    t_mean = t_std = None
    if union.needs_teacher:
        if teacher is None:
            raise ValueError("the objective matches a teacher, but no teacher was given")
        teacher_model = teacher.model
        teacher_vars = jax.device_put(teacher.variables, parallel.replicated(mesh))
        t_mean, t_std = teacher.meta.mean, teacher.meta.std
        if tuple(teacher.meta.input_size) != image_shape:
            raise ValueError(f"teacher expects inputs {tuple(teacher.meta.input_size)}, "
                             f"the data has {image_shape}")

    kw = dict(mean=mean, std=std, augment=cfg.augment, teacher_model=teacher_model,
              teacher_mean=t_mean, teacher_std=t_std)
    rep = parallel.replicated(mesh)
    data_meta = {"num_examples": len(train), "batch_size": bs, "seed": cfg.seed,
                 "total_steps": n_steps}
    ckpts = [TrainCheckpointer(w / "checkpoints", max_to_keep=2) for w in workdirs]
    start, resumed_from = 0, None
    if ckpts[0].latest_step() is not None:
        states = []
        for w, ckpt in zip(workdirs, ckpts, strict=True):
            restored, meta = ckpt.restore(state)
            stored = {k: meta.get(k) for k in data_meta}
            if stored != data_meta:
                raise ValueError(f"checkpoint in {w} was written for {stored}, this run is "
                                 f"{data_meta}; use another workdir or delete it")
            states.append(restored)
        start = resumed_from = int(jax.device_get(states[0].step))
    else:
        states = [state] * len(cfgs)

    if fusion_mode is None:
        step_fn = make_train_step(model, cfg.objective, **kw)
        state = states[0]
        run_state = lambda st, r: st  # noqa: E731
        split = lambda m: [m]  # noqa: E731
    else:
        step_fn = fused.make_fused_train_step(model, objectives, mode=fusion_mode, **kw)
        state = jax.device_put(fused.stack_states(states), rep)
        run_state = fused.unstack_state
        split = lambda m: [{k: v[r] for k, v in m.items()} for r in range(len(cfgs))]  # noqa: E731
    train_step = jax.jit(step_fn, donate_argnums=0, out_shardings=(rep, rep))
    # Each run reports (and checks) its own terms; fused runs compute the union.
    keep = [set(_active_terms(o)) | {"loss", "accuracy", "agreement"} for o in objectives]

    def per_run(metrics) -> list[dict[str, float]]:
        return [{k: float(v) for k, v in m.items() if k in kp} for m, kp in zip(
            split(metrics), keep, strict=True)]

    def check(runs_metrics, step):
        for m, d in zip(runs_metrics, descs, strict=True):
            try:
                _check_finite(m, step)
            except NonFiniteLossError as e:
                raise NonFiniteLossError(f"{d}: {e}" if len(cfgs) > 1 and d else str(e)) from e

    t0 = time.time()
    history = [(w / "metrics.jsonl").open("a") for w in workdirs]
    label = descs[0] if len(cfgs) == 1 else f"{len(cfgs)} fused runs: {', '.join(descs)}"
    bar = tqdm(total=n_steps, initial=start, desc=label or "train", leave=False,
               dynamic_ncols=True, disable=not cfg.progress)
    window: list[list[dict]] = []
    last: list[dict[str, float]] = [{} for _ in cfgs]  # metrics of the final step
    pending: list[tuple[int, Any]] = []  # (step, device metrics) not yet fetched

    def fetch_pending():
        """One device->host transfer for every step since the last fetch; checks each
        step's loss terms in order (naming the first bad step) and adds them to the
        logging window."""
        if pending:
            for (step, _), host in zip(pending, jax.device_get([m for _, m in pending]),
                                       strict=True):
                host = per_run(host)
                check(host, step)
                window.append(host)
            pending.clear()

    try:
        for step in range(start, n_steps):
            batch = make_batch(train, stream.indices(step), mesh)
            state, metrics = train_step(state, batch, teacher_vars)
            pending.append((step, metrics))
            done = step + 1
            if done % cfg.log_every == 0 or done == n_steps:
                fetch_pending()
                last = window[-1]
                for r, f in enumerate(history):
                    rows = [w[r] for w in window]
                    means = {k: float(np.mean([m[k] for m in rows])) for k in rows[0]}
                    f.write(json.dumps({"step": done, "epoch": stream.epoch(done), **means})
                            + "\n")
                    f.flush()
                    if r == 0:
                        bar.set_postfix({k: f"{v:.3g}" for k, v in means.items()},
                                        refresh=False)
                window = []
            bar.update(1)
            if done % cfg.checkpoint_every == 0 and done < n_steps:
                fetch_pending()  # never checkpoint a state whose loss is unchecked
                for r, ckpt in enumerate(ckpts):
                    ckpt.save(done, run_state(state, r), data_meta)
        fetch_pending()
        for r, ckpt in enumerate(ckpts):
            ckpt.save(n_steps, run_state(state, r), data_meta, force=True)
        for ckpt in ckpts:
            ckpt.wait()
    except BaseException:
        for ckpt in ckpts:
            ckpt.close()  # finish pending async saves before the error propagates
        raise
    finally:
        for f in history:
            f.close()
        bar.close()

    eval_fn = jax.jit(make_eval_step(model, mean=mean, std=std))
    results = []
    for r, (w, ckpt) in enumerate(zip(workdirs, ckpts, strict=True)):
        st = run_state(state, r)
        variables = {"params": st.params, "batch_stats": st.batch_stats}
        accuracy = {name: evaluate(eval_fn, variables, sp, mesh, cfg.eval_batch_size)
                    for name, sp in eval_splits.items()}
        result = RunResult(accuracy=accuracy, final_metrics=last[r], steps=n_steps,
                           wall_time=time.time() - t0, resumed_from=resumed_from)
        ckpt.close()
        tmp = (w / RESULT_FILE).with_suffix(".tmp")
        tmp.write_text(json.dumps(result.to_json(), indent=1))
        tmp.replace(w / RESULT_FILE)
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
    with TrainCheckpointer(Path(workdir) / "checkpoints") as ckpt:
        state, _ = ckpt.restore(target)
    return model, {"params": state.params, "batch_stats": state.batch_stats}


__all__ = ["NonFiniteLossError", "RunResult", "TrainConfig", "TrainState", "evaluate",
           "final_variables", "total_steps", "train_and_evaluate", "train_and_evaluate_fused"]
