"""``train_and_evaluate``: one student run, jitted and data-parallel, checkpointed, resumable.

Data flows one way: config -> batches -> state -> jitted step -> metrics / checkpoints.
The step is jitted once with the state replicated and the batch split over the mesh's
``"data"`` axis; the state is donated. Metrics of step ``t`` are fetched while step
``t + 1`` runs, so the device never waits for the host, and a non-finite loss stops the
run one step later with the step and the term named (the last checkpoint is untouched).
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
from jkt.train.objective import Objective
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
    workdir.mkdir(parents=True, exist_ok=True)
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

    teacher_model = teacher_vars = None
    t_mean = t_std = None
    if cfg.objective.needs_teacher:
        if teacher is None:
            raise ValueError("the objective matches a teacher, but no teacher was given")
        teacher_model = teacher.model
        teacher_vars = jax.device_put(teacher.variables, parallel.replicated(mesh))
        t_mean, t_std = teacher.meta.mean, teacher.meta.std
        if tuple(teacher.meta.input_size) != image_shape:
            raise ValueError(f"teacher expects inputs {tuple(teacher.meta.input_size)}, "
                             f"the data has {image_shape}")

    step_fn = make_train_step(model, cfg.objective, mean=mean, std=std, augment=cfg.augment,
                              teacher_model=teacher_model, teacher_mean=t_mean, teacher_std=t_std)
    rep = parallel.replicated(mesh)
    train_step = jax.jit(step_fn, donate_argnums=0, out_shardings=(rep, rep))

    data_meta = {"num_examples": len(train), "batch_size": bs, "seed": cfg.seed,
                 "total_steps": n_steps}
    ckpt = TrainCheckpointer(workdir / "checkpoints", max_to_keep=2)
    start, resumed_from = 0, None
    if ckpt.latest_step() is not None:
        state, meta = ckpt.restore(state)
        stored = {k: meta.get(k) for k in data_meta}
        if stored != data_meta:
            raise ValueError(f"checkpoint in {workdir} was written for {stored}, this run is "
                             f"{data_meta}; use another workdir or delete it")
        start = resumed_from = int(jax.device_get(state.step))

    t0 = time.time()
    history_file = (workdir / "metrics.jsonl").open("a")
    bar = tqdm(total=n_steps, initial=start, desc=desc or "train", leave=False,
               dynamic_ncols=True, disable=not cfg.progress)
    window: list[dict] = []
    last: dict[str, float] = {}  # metrics of the final step (what result.json reports)
    pending = None  # (step, device metrics) of the previous step
    try:
        for step in range(start, n_steps):
            batch = make_batch(train, stream.indices(step), mesh)
            state, metrics = train_step(state, batch, teacher_vars)
            if pending is not None:
                host = {k: float(v) for k, v in jax.device_get(pending[1]).items()}
                _check_finite(host, pending[0])
                window.append(host)
            pending = (step, metrics)
            done = step + 1
            if done % cfg.log_every == 0 or done == n_steps:
                host = {k: float(v) for k, v in jax.device_get(metrics).items()}
                _check_finite(host, step)
                window.append(host)
                pending = None
                last = host
                means = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
                window = []
                history_file.write(json.dumps({"step": done, "epoch": stream.epoch(done),
                                               **means}) + "\n")
                history_file.flush()
                bar.set_postfix({k: f"{v:.3g}" for k, v in means.items()}, refresh=False)
            bar.update(1)
            if done % cfg.checkpoint_every == 0 and done < n_steps:
                if pending is not None:  # never checkpoint a state whose loss is unchecked
                    host = {k: float(v) for k, v in jax.device_get(pending[1]).items()}
                    _check_finite(host, pending[0])
                    window.append(host)
                    pending = None
                ckpt.save(done, state, data_meta)
        if pending is not None:
            _check_finite({k: float(v) for k, v in jax.device_get(pending[1]).items()},
                          pending[0])
        ckpt.save(n_steps, state, data_meta, force=True)
        ckpt.wait()
    except BaseException:
        ckpt.close()  # finish pending async saves before the error propagates
        raise
    finally:
        history_file.close()
        bar.close()

    variables = {"params": state.params, "batch_stats": state.batch_stats}
    eval_fn = jax.jit(make_eval_step(model, mean=mean, std=std))
    accuracy = {name: evaluate(eval_fn, variables, split, mesh, cfg.eval_batch_size)
                for name, split in eval_splits.items()}
    result = RunResult(accuracy=accuracy, final_metrics=last, steps=n_steps,
                       wall_time=time.time() - t0, resumed_from=resumed_from)
    ckpt.close()
    tmp = result_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result.to_json(), indent=1))
    tmp.replace(result_path)
    return result


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
           "final_variables", "total_steps", "train_and_evaluate"]
