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
from jkt.data.types import DataConfig
from jkt.grids.validate import (
    check_model,
    check_names,
    check_points_per_class,
    check_seeds,
    check_steps,
    check_teacher_artifact,
    start,
)
from jkt.report import distill as report
from jkt.train import (
    FUSION_MODES,
    NonFiniteLossError,
    TrainConfig,
    fusion_groups,
    train_and_evaluate_fused,
)
from jkt.train.methods import METHODS, TABLE1_METHODS, method_objective
from jkt.train.objective import ESTIMATORS
from jkt.train.optim import CIFAR_RECIPE, OptimConfig
from jkt.train.teacher import train_teacher
from jkt.workdir import CONFIG_FILE, RECORD_MAY_CHANGE, check_record, is_writer

FUSION_CHOICES = (*FUSION_MODES, "off")


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """A Table-1 grid: a teacher, a student, methods × points per class × seeds.

    Attributes:
      workdir: where everything is written (and resumed from).
      data: the dataset (:class:`jkt.data.DataConfig`).
      teacher_artifact: a teacher artifact directory to use; ``None`` trains one into
        ``workdir/teacher``.
      student, teacher: model names; ``*_options`` their ``jkt.models.create`` options.
      methods: names from ``jkt.train.METHODS``.
      n_per_class: points per class (``"full"`` for the whole training split).
      seeds: one run per seed; the seed picks the subset, the init and the data order.
      optim / teacher_optim: student / teacher optimiser, schedule, epochs, batch size.
      max_steps / teacher_max_steps: optional caps on steps.
      estimator: Jacobian estimator (app. 10.2 uses the true-label output).
      normalize: match Jacobians in the eq.-10 normalised form.
      checkpoint_every / log_every: steps between a run's checkpoints / metric lines.
      fusion: ``"unroll"`` or ``"vmap"`` trains the methods of one (n, seed) cell that
        need the same passes in one jitted step (``jkt.train.fused``: shared batches and
        teacher passes; same numbers as separate runs to float rounding); ``"off"``
        trains every run on its own.
      fusion_groups: ``"passes"`` fuses runs that need the same passes
        (``jkt.train.fusion_groups``: Table 1 -> [ce], [ce+act, act], [the 3 Jacobian
        methods]); ``"all"`` fuses every method of a cell into one step.
      dtype: compute dtype of the students and of the teacher inside the student steps
        (parameters, optimiser state, logits and losses stay float32). The teacher is
        trained in float32.
      progress: show progress bars.
    """

    workdir: str = "runs/distill"
    data: DataConfig = DataConfig()
    teacher_artifact: str | None = None
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
    normalize: bool = False
    checkpoint_every: int = 1000
    log_every: int = 50
    fusion: Literal["unroll", "vmap", "off"] = "unroll"
    fusion_groups: Literal["passes", "all"] = "passes"
    dtype: Literal["float32", "bfloat16"] = "float32"
    progress: bool = True

    def __post_init__(self):
        check_names("methods", self.methods, METHODS)
        check_points_per_class("n_per_class", self.n_per_class)
        check_seeds(self.seeds)
        check_model(self.student, self.student_options, "student")
        check_model(self.teacher, self.teacher_options, "teacher")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {self.estimator!r}; valid: "
                             f"{', '.join(ESTIMATORS)}")
        check_steps(self, ("max_steps", "teacher_max_steps", "checkpoint_every", "log_every"))


# ---------------------------------------------------------------------------------------
# The grid.


def load_teacher(cfg: DistillConfig, ds: data.Dataset, workdir: Path, mesh):
    """The artifact at ``cfg.teacher_artifact``, or a teacher trained into ``workdir``."""
    if cfg.teacher_artifact:
        check_teacher_artifact(cfg.teacher_artifact, cfg.teacher, ds.num_classes)
        return checkpoint.restore_teacher(cfg.teacher_artifact, expect_arch=cfg.teacher)
    return train_teacher(ds, workdir / "teacher", arch=cfg.teacher,
                         model_options=cfg.teacher_options, optim=cfg.teacher_optim,
                         max_steps=cfg.teacher_max_steps, checkpoint_every=cfg.checkpoint_every,
                         progress=cfg.progress, mesh=mesh)


def method_groups(cfg: DistillConfig, objectives: dict) -> list[list[str]]:
    """The methods of one cell, grouped into fused runs (``cfg.fusion``)."""
    if cfg.fusion == "off":
        return [[m] for m in cfg.methods]
    if cfg.fusion_groups == "all":
        return [list(cfg.methods)]
    return [[cfg.methods[i] for i in g]
            for g in fusion_groups([objectives[m] for m in cfg.methods])]


def run(cfg: DistillConfig, *, mesh=None) -> list[dict]:
    """Runs (or resumes) the whole grid and writes results.{csv,md,png}; returns the rows."""
    mesh, workdir, ds = start(cfg, mesh)
    print(f"{ds.summary()}, {parallel.process_count_str(mesh)}")
    # Subsets are drawn before training so that a bad n fails at once, not hours in.
    subsets = {(n, s): data.subset_per_class(ds.train, n, s, class_names=ds.class_names,
                                             num_classes=ds.num_classes)
               for n in cfg.n_per_class for s in cfg.seeds}
    teacher = load_teacher(cfg, ds, workdir, mesh)
    t_acc = teacher.meta.extra.get("test_accuracy")
    student_options = dict(cfg.student_options)
    if cfg.dtype != "float32":  # only the compute dtype changes; weights stay float32
        teacher = dataclasses.replace(teacher, model=teacher.meta.create_model(dtype=cfg.dtype))
        student_options["dtype"] = cfg.dtype
    objectives = {m: method_objective(m, estimator=cfg.estimator, normalize=cfg.normalize)
                  for m in cfg.methods}
    groups = method_groups(cfg, objectives)
    rows = []
    bar = tqdm(total=len(cfg.methods) * len(cfg.n_per_class) * len(cfg.seeds), desc="grid",
               position=0, dynamic_ncols=True, disable=not cfg.progress)
    try:
        for n, seed, group in itertools.product(cfg.n_per_class, cfg.seeds, groups):
            names = [f"{m}/n{n}_seed{seed}" for m in group]
            bar.set_description(f"grid [{', '.join(names)}]")
            cfgs = [TrainConfig(
                model=cfg.student, model_options=dict(student_options),
                objective=objectives[m], optim=cfg.optim, seed=seed, max_steps=cfg.max_steps,
                log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every,
                progress=cfg.progress) for m in group]
            run_dirs = [workdir / "runs" / name for name in names]
            for name, run_dir, c in zip(names, run_dirs, cfgs, strict=True):
                check_record(run_dir / CONFIG_FILE, run_record(cfg, c, n, teacher),
                             what=f"run {name}", ignore=RECORD_MAY_CHANGE)
            t0 = time.time()
            try:
                results = train_and_evaluate_fused(
                    cfgs, subsets[(n, seed)], {"val": ds.val, "test": ds.test},
                    num_classes=ds.num_classes, mean=ds.mean, std=ds.std, workdirs=run_dirs,
                    teacher=teacher, mesh=mesh, descs=names,
                    mode="unroll" if cfg.fusion == "off" else cfg.fusion)
            except NonFiniteLossError as e:
                raise NonFiniteLossError(f"run {' / '.join(names)}: {e}") from e
            skipped = time.time() - t0 < 0.5
            for m, res in zip(group, results, strict=True):
                rows.append(result_row(m, n, seed, res, fused=len(group), skipped=skipped))
            if is_writer():
                report.write(rows, workdir, cfg, t_acc)
            bar.update(len(group))
    finally:
        bar.close()
    return rows


def run_record(cfg: DistillConfig, train_cfg: TrainConfig, n, teacher) -> dict:
    """Everything that determines one run: its training config, the data, the subset and
    the teacher it learns from (written as the run's ``config.json``)."""
    return {"train": config_lib.to_dict(train_cfg), "data": config_lib.to_dict(cfg.data),
            "n_per_class": n, "dtype": cfg.dtype,
            "teacher": {"arch": teacher.meta.arch, "dataset": teacher.meta.dataset,
                        "num_classes": teacher.meta.num_classes,
                        "model_options": teacher.meta.model_options,
                        "test_accuracy": teacher.meta.extra.get("test_accuracy")}}


def result_row(method: str, n, seed: int, res, *, fused: int, skipped: bool) -> dict:
    """One ``results.csv`` row of a finished run."""
    return {"method": method, "n_per_class": n, "seed": seed,
            "val_accuracy": res.accuracy["val"], "test_accuracy": res.accuracy["test"],
            **{f"final_{k}": v for k, v in res.final_metrics.items()},
            "steps": res.steps, "fused_runs": fused, "wall_time_s": round(res.wall_time, 2),
            "resumed_from": res.resumed_from, "skipped": skipped and res.wall_time > 0.5}


__all__ = ["FUSION_CHOICES", "DistillConfig", "run"]
