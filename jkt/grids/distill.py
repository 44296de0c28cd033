"""Table 1: distillation with Jacobian matching, as a resumable grid of student runs.

A teacher (trained here, or restored from an artifact) and one student per method ×
points per class × seed. Everything goes under ``cfg.workdir``: the teacher, one
directory per run (checkpoints, ``metrics.jsonl``, ``result.json``, the run's own
``config.json``) and ``results.{csv,md,png}``. A killed grid resumes where it stopped:
finished runs are read back, the interrupted one continues from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from pathlib import Path
from typing import Literal

from tqdm.auto import tqdm

from jkt import checkpoint, data, parallel
from jkt import config as config_lib
from jkt.data.fingerprint import dataset_fingerprint
from jkt.data.stream import options_of
from jkt.data.types import DataConfig
from jkt.grids import record
from jkt.grids.validate import (
    check_model,
    check_names,
    check_points_per_class,
    check_seeds,
    check_steps,
    check_teacher_artifact,
    describe_subsets,
    start,
)
from jkt.ranges import check_int, check_number
from jkt.report import distill as report
from jkt.report import tables
from jkt.train import (
    FUSION_MODES,
    NonFiniteLossError,
    StepCache,
    TrainConfig,
    fusion_groups,
    train_and_evaluate,
)
from jkt.train.methods import METHODS, TABLE1_METHODS, method_objective
from jkt.train.objective import ESTIMATORS, Objective
from jkt.train.optim import CIFAR_RECIPE, OptimConfig
from jkt.train.teacher import train_teacher
from jkt.workdir import is_writer

FUSION_CHOICES = (*FUSION_MODES, "off")


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """A Table-1 grid: a teacher, a student, methods × points per class × seeds.

    Attributes:
      workdir: where everything is written (and resumed from).
      data: the dataset (:class:`jkt.data.DataConfig`).
      teacher_artifact: a teacher artifact directory to use; ``None`` trains one into
        ``workdir/teacher``.
      trust_teacher: use teacher artifacts that carry no checksum of their weights and
        meta (written by hand or by an older jkt) unverified, with a warning; otherwise they
        are refused.
      student, teacher: model names; ``*_options`` their ``jkt.models.create`` options.
      methods: names from ``jkt.train.METHODS``.
      n_per_class: points per class (``"full"`` for the whole training split).
      seeds: one run per seed; the seed picks the subset, the init and the data order.
      optim / teacher_optim: student / teacher optimiser, schedule, epochs, batch size.
      max_steps / teacher_max_steps: optional caps on steps.
      estimator: Jacobian estimator of the rows with cross-entropy (app. 10.2 and §4.1
        use the true-label output).
      label_free_estimator: Jacobian estimator of the row without cross-entropy
        (``act+jac``; with ``act``, it exists to do without labels): §4.1 "if we do not want
        to use the labels, we may instead use the output variable with the largest
        magnitude" (``top``, the teacher's largest logit). ``"label"`` makes them use the
        true labels like the other rows.
      normalize: match Jacobians in the eq.-10 normalised form.
      temperature: ``T`` of the soft-target rows (``kd``, eq. 2's ``kd_jac``).
      noise_sigma, noise_draws: ``σ`` (normalised-input units) and draws per step of the
        noisy-input rows (``act_noise``).
      jacobian_as_noise: the Jacobian-matching rows take prop. 1's analytic form of input
        noise ``σ = noise_sigma``: weight ``σ²`` on the full Jacobian (all K outputs, not
        normalised), the exact counterpart of the ``act_noise`` rows (the ``claim`` preset).
      checkpoint_every / log_every: steps between a run's checkpoints / metric lines.
      fusion: ``"unroll"`` or ``"vmap"`` trains the methods of one (n, seed) cell that
        need the same passes in one jitted step (``jkt.train.fused``: shared batches and
        teacher passes; same numbers as separate runs to float rounding); ``"off"``
        trains every run on its own.
      fusion_groups: ``"passes"`` fuses runs that need the same passes
        (``jkt.train.fusion_groups``: Table 1 -> [ce], [ce+act, act], [ce+jac,
        ce+act+jac, act+jac]; with ``"unroll"`` the label-free row keeps its own
        estimator inside the group, with ``"vmap"`` it gets a step of its own); ``"all"``
        fuses every method of a cell into one step (under ``"vmap"``: every method that
        shares the Jacobian estimator).
      dtype: compute dtype of the students and of the teacher inside the student steps
        (parameters, optimiser state, logits and losses stay float32). The teacher is
        trained in float32.
      progress: show progress bars.
      compare_to_paper: results.md shows the paper's Table 1 beside ours (the paper
        presets); otherwise the run is reported as an analogue.
    """

    workdir: str = "runs/distill"
    data: DataConfig = DataConfig()
    teacher_artifact: str | None = None
    trust_teacher: bool = False
    student: str = "vgg4"
    student_options: dict = dataclasses.field(default_factory=dict)
    teacher: str = "vgg9"
    teacher_options: dict = dataclasses.field(default_factory=dict)
    methods: tuple[str, ...] = TABLE1_METHODS
    n_per_class: tuple[int | str, ...] = (1, 5, 10, 50, 100, "full")
    seeds: tuple[int, ...] = (0,)
    optim: OptimConfig = CIFAR_RECIPE
    teacher_optim: OptimConfig = CIFAR_RECIPE
    max_steps: int | None = None
    teacher_max_steps: int | None = None
    estimator: str = "label"
    label_free_estimator: str = "top"
    normalize: bool = False
    temperature: float = 4.0
    noise_sigma: float = 0.1
    noise_draws: int = 1
    jacobian_as_noise: bool = False
    checkpoint_every: int = 1000
    log_every: int = 50
    fusion: Literal["unroll", "vmap", "off"] = "unroll"
    fusion_groups: Literal["passes", "all"] = "passes"
    dtype: Literal["float32", "bfloat16"] = "float32"
    progress: bool = True
    compare_to_paper: bool = False

    def __post_init__(self):
        check_names("methods", self.methods, METHODS)
        check_points_per_class("n_per_class", self.n_per_class)
        check_seeds(self.seeds)
        check_model(self.student, self.student_options, "student")
        check_model(self.teacher, self.teacher_options, "teacher")
        for field in ("estimator", "label_free_estimator"):
            if getattr(self, field) not in ESTIMATORS:
                raise ValueError(f"unknown {field} {getattr(self, field)!r}; valid: "
                                 f"{', '.join(ESTIMATORS)}")
        check_steps(self, ("max_steps", "teacher_max_steps", "checkpoint_every", "log_every"))
        check_number("temperature", self.temperature, 0, low_open=True)
        check_number("noise_sigma", self.noise_sigma, 0)
        check_int("noise_draws", self.noise_draws)


# ---------------------------------------------------------------------------------------
# The grid.


def load_teacher(cfg: DistillConfig, ds: data.Dataset, workdir: Path, mesh, stop=None):
    """The artifact at ``cfg.teacher_artifact``, or a teacher trained into ``workdir``."""
    if cfg.teacher_artifact:
        check_teacher_artifact(cfg.teacher_artifact, cfg.teacher, ds,
                               trust_unverified=cfg.trust_teacher)
        return checkpoint.restore_teacher(cfg.teacher_artifact, expect_arch=cfg.teacher,
                                          trust_unverified=cfg.trust_teacher)
    return train_teacher(ds, workdir / "teacher", arch=cfg.teacher,
                         model_options=cfg.teacher_options, optim=cfg.teacher_optim,
                         max_steps=cfg.teacher_max_steps, checkpoint_every=cfg.checkpoint_every,
                         progress=cfg.progress, augment=cfg.data.augment, mesh=mesh, stop=stop,
                         stream_options=options_of(cfg.data),
                         trust_unverified=cfg.trust_teacher)


def objectives(cfg: DistillConfig) -> dict[str, Objective]:
    """Each method's objective: Jacobians of the rows without cross-entropy use
    ``cfg.label_free_estimator`` (§4.1), all others ``cfg.estimator``; soft-target and
    noisy-input rows take the grid's temperature and noise; with
    ``cfg.jacobian_as_noise`` the Jacobian rows are prop. 1's analytic form of that
    noise."""
    def objective(m: str) -> Objective:
        base = METHODS[m]
        label_free = base.ce == 0 and (base.jac > 0 or base.kd_jac > 0)
        over = {"normalize": cfg.normalize,
                "estimator": cfg.label_free_estimator if label_free else cfg.estimator}
        if base.kd > 0 or base.kd_jac > 0:
            over["temperature"] = cfg.temperature
        if base.act_noise > 0 or base.ce_noise > 0:
            over.update(noise_sigma=cfg.noise_sigma, noise_draws=cfg.noise_draws)
        if cfg.jacobian_as_noise and base.jac > 0:
            over.update(jac=cfg.noise_sigma ** 2, estimator="full", normalize=False)
        return method_objective(m, **over)

    return {m: objective(m) for m in cfg.methods}


def method_groups(cfg: DistillConfig, objectives: dict) -> list[list[str]]:
    """The methods of one cell, grouped into fused runs (``cfg.fusion``)."""
    if cfg.fusion == "off":
        return [[m] for m in cfg.methods]
    groups = fusion_groups([objectives[m] for m in cfg.methods],
                           by_passes=cfg.fusion_groups == "passes",
                           mixed_estimators=cfg.fusion == "unroll")
    return [[cfg.methods[i] for i in g] for g in groups]


def run(cfg: DistillConfig, *, mesh=None, stop=None) -> list[dict]:
    """Runs (or resumes) the whole grid and writes results.{csv,md,png}; returns the rows.
    ``stop``: polled after every training step (see :func:`jkt.train.train_and_evaluate`)."""
    mesh, workdir, ds = start(cfg, mesh)
    print(f"{ds.summary()}, {parallel.process_count_str(mesh)}")
    # Subsets are drawn before training so that a bad n fails at once, not hours in.
    subsets = {(n, s): data.train_and_val(ds, n, s, cfg.data)
               for n in cfg.n_per_class for s in cfg.seeds}
    describe_subsets(subsets, cfg.seeds[0], cfg.data, cfg.optim, cfg.max_steps)
    teacher = load_teacher(cfg, ds, workdir, mesh, stop)
    t_acc = teacher.meta.extra.get("test_accuracy")
    student_options = dict(cfg.student_options)
    if cfg.dtype != "float32":  # only the compute dtype changes; weights stay float32
        teacher = dataclasses.replace(teacher, model=teacher.meta.create_model(dtype=cfg.dtype))
        student_options["dtype"] = cfg.dtype
    objs = objectives(cfg)
    groups = method_groups(cfg, objs)
    inputs = {"data": dataset_fingerprint(ds), "teacher": record.teacher_fingerprint(teacher)}
    record.check_runs(
        (workdir / "runs" / f"{m}/n{n}_seed{seed}",
         run_record(cfg, train_config(cfg, objs[m], seed, student_options), n, teacher, inputs),
         f"run {m}/n{n}_seed{seed}", objs[m])
        for n in cfg.n_per_class for seed in cfg.seeds for m in cfg.methods)
    steps = StepCache()  # one compiled step per method group, not per run
    rows = []
    bar = tqdm(total=len(cfg.methods) * len(cfg.n_per_class) * len(cfg.seeds), desc="grid",
               position=0, dynamic_ncols=True, disable=not cfg.progress)
    cells = list(itertools.product(cfg.n_per_class, cfg.seeds, groups))
    plots = tables.PlotSchedule()
    try:
        for i, (n, seed, group) in enumerate(cells):
            names = [f"{m}/n{n}_seed{seed}" for m in group]
            bar.set_description(f"grid [{', '.join(names)}]")
            cfgs = [train_config(cfg, objs[m], seed, student_options) for m in group]
            run_dirs = [workdir / "runs" / name for name in names]
            t0 = time.time()
            train, val = subsets[(n, seed)]
            try:
                results = train_and_evaluate(
                    cfgs, train, {"val": val, "test": ds.test},
                    num_classes=ds.num_classes, mean=ds.mean, std=ds.std, workdirs=run_dirs,
                    teacher=teacher, mesh=mesh, descs=names,
                    mode="unroll" if cfg.fusion == "off" else cfg.fusion, steps=steps,
                    stop=stop, stream_options=options_of(cfg.data))
            except NonFiniteLossError as e:
                raise NonFiniteLossError(f"run {' / '.join(names)}: {e}") from e
            skipped = time.time() - t0 < 0.5
            for m, res in zip(group, results, strict=True):
                rows.append(result_row(m, n, seed, res, fused=len(group), skipped=skipped))
            if is_writer():
                report.write(rows, workdir, cfg, t_acc, plot=plots.due(i == len(cells) - 1))
            bar.update(len(group))
    finally:
        bar.close()
    return rows


def train_config(cfg: DistillConfig, objective: Objective, seed: int,
                 student_options: dict) -> TrainConfig:
    """One student run's training config."""
    return TrainConfig(model=cfg.student, model_options=dict(student_options),
                       objective=objective, optim=cfg.optim, seed=seed, max_steps=cfg.max_steps,
                       log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every,
                       progress=cfg.progress, augment=cfg.data.augment)


def run_record(cfg: DistillConfig, train_cfg: TrainConfig, n, teacher, inputs: dict) -> dict:
    """Everything that determines one run: its training config, the data, the subset, the
    teacher it learns from and the fingerprints of both (``inputs``, see
    :mod:`jkt.grids.record`), written as the run's ``config.json``."""
    return {"train": config_lib.to_dict(train_cfg), "data": config_lib.to_dict(cfg.data),
            "n_per_class": n, "dtype": cfg.dtype,
            "teacher": {"arch": teacher.meta.arch, "dataset": teacher.meta.dataset,
                        "num_classes": teacher.meta.num_classes,
                        "model_options": teacher.meta.model_options,
                        "test_accuracy": teacher.meta.extra.get("test_accuracy")},
            record.INPUTS: inputs}


def result_row(method: str, n, seed: int, res, *, fused: int, skipped: bool) -> dict:
    """One ``results.csv`` row of a finished run."""
    return {"method": method, "n_per_class": n, "seed": seed,
            "val_accuracy": res.accuracy.get("val"), "test_accuracy": res.accuracy["test"],
            **{f"final_{k}": v for k, v in res.final_metrics.items()},
            "steps": res.steps, "fused_runs": fused, "wall_time_s": round(res.wall_time, 2),
            "resumed_from": res.resumed_from, "skipped": skipped and res.wall_time > 0.5}


__all__ = ["FUSION_CHOICES", "DistillConfig", "run"]
