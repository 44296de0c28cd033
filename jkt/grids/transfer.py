"""Tables 3-5: transfer learning with Jacobian matching (§5, §6.3), as a resumable grid.

A pretrained teacher of one architecture (ResNet-34 in the paper; an artifact, or trained
here on the source classes) and a two-head student of another (VGG-9: target classes +
the teacher's source classes). Per method × images per class × seed, one student run
(methods: ``jkt.train.methods.TRANSFER_METHODS``). Ablations: ``depth_pairs`` (Table 4:
where attention and its Jacobian are matched, with the Jacobian-loss reduction during
training) and ``pool_windows`` (Table 5). Everything goes under ``cfg.workdir``:
``transfer.{csv,md,png}`` and, when run, ``ablation_depth.*`` and ``ablation_pool.*``.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Literal

from tqdm.auto import tqdm

from jkt import checkpoint, data, models, parallel, paths, ranges
from jkt import config as config_lib
from jkt.data import Dataset
from jkt.data.classes import source_target_split
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
    describe_subsets,
    start,
)
from jkt.models.taps import auto_pairs, pair_name, parse_pair
from jkt.models.teacher import Teacher
from jkt.report import transfer as report
from jkt.train import NonFiniteLossError, Objective, StepCache, TrainConfig, train_and_evaluate
from jkt.train.methods import JACOBIAN_ROWS, TRANSFER_METHODS, transfer_objective
from jkt.train.optim import OptimConfig
from jkt.train.teacher import oracle_variables, train_teacher
from jkt.workdir import is_writer

# Table 5 columns: label -> pooling window as a fraction of the attention-map size.
POOL_WINDOWS = {"full": 1.0, "s/3": 1 / 3, "s/5": 0.2, "s/7": 1 / 7, "none": None}
# Seed of the source-pretrained student: not a student seed, so that no student run starts
# from the random init the oracle's weights were trained from.
SOURCE_STUDENT_SEED = 1000


def pool_fraction(label: str) -> float | None:
    """Table-5 label (``full``, ``s/3``, ``s/5``, ``s/7``, ``none``) or a number in (0, 1]."""
    key = str(label).strip().lower()
    if key in POOL_WINDOWS:
        return POOL_WINDOWS[key]
    try:
        f = float(key)
    except ValueError:
        f = -1.0
    if not 0 < f <= 1:
        raise ValueError(f"pool window {label!r}: use {', '.join(POOL_WINDOWS)} or a fraction "
                         "in (0, 1]")
    return f


@dataclasses.dataclass(frozen=True)
class TransferConfig:
    """A Table-3 grid (plus optional Table-4/5 ablations) of two-head students.

    Attributes:
      workdir: where everything is written (and resumed from).
      data: the dataset (``data.image_size`` 224 for the paper's MIT setting).
      teacher_artifact: teacher artifact directory; ``None`` trains one on the source
        classes.
      source_student: artifact of the source-pretrained student for ``oracle``; ``None``
        trains one on the source classes.
      trust_teacher: use teacher artifacts that carry no checksum of their weights and
        meta (written by hand or by an older jkt) unverified, with a warning; otherwise they
        are refused.
      source_classes: class names (or ids) of the dataset the teacher and the oracle's
        pretrained student are trained on; ``None`` when the teacher comes from elsewhere
        (e.g. ImageNet) and all of the dataset is the target.
      target_classes: the student's target classes; ``None``: every class not in
        ``source_classes``.
      student, teacher: model names; ``*_options`` their ``jkt.models.create`` options
        (the student's ``source_classes`` is set from the teacher).
      methods: names from ``TRANSFER_METHODS`` (may be empty when ablations run).
      n_per_class: target images per class (``"full"``: the whole training split).
      seeds: one run per seed (subset, init and data order).
      optim / teacher_optim: student / teacher (and source-pretrained student) optimiser.
      max_steps / teacher_max_steps: optional caps on steps.
      loss_weight: weight of every active term (app. 10.2: 1, or 10 for MIT).
      pool_window: attention-Jacobian pooling window (``POOL_WINDOWS`` label or a fraction
        of the feature size; ``s/5`` is the paper's).
      att_pairs: ``"teacher_tap:student_tap"`` pairs for attention matching; ``None``:
        every pair of equal spatial size (Zagoruyko & Komodakis).
      att_jac_pair: the pair for the attention-map Jacobian; ``None``: the shallowest
        equal-size pair ("feature level 1" of app. 10.2).
      jacobian_row: what Table 3's "CE + match {activations + Jacobians}" matches:
        ``"attention_map"`` (app. 10.2: the attention-map Jacobian at ``att_jac_pair``,
        eq. 10, no attention matching) or ``"output"`` (the output Jacobian of the
        teacher's top logit, prop. 1).
      depth_pairs: Table-4 ablation, one run per pair; ``("auto",)`` for every pair.
      depth_attention: Table-4 reading. ``"all_pairs"``: attention is matched at every
        pair of ``att_pairs`` (as Zagoruyko & Komodakis, §6.3.1 "we use the same
        approach") and only the attention-map Jacobian moves to the pair;
        ``"same_pair"``: attention and its Jacobian both move to the pair.
      pool_windows: Table-5 ablation, labels of ``POOL_WINDOWS`` (``("all",)``: all).
      ablation_n: points per class of the ablations (10 in the paper).
      checkpoint_every / log_every: steps between a run's checkpoints / metric lines.
      progress: show progress bars.
      compare_to_paper: results show the paper's Tables 3-5 beside ours (the ``mit``
        preset); otherwise the run is reported as an analogue.
    """

    workdir: str = "runs/transfer"
    data: DataConfig = DataConfig()
    teacher_artifact: str | None = None
    source_student: str | None = None
    trust_teacher: bool = False
    source_classes: tuple[str, ...] | None = ("0", "1", "2", "3", "4")
    target_classes: tuple[str, ...] | None = None
    student: str = "vgg9"
    student_options: dict = dataclasses.field(default_factory=dict)
    teacher: str = "resnet34"
    teacher_options: dict = dataclasses.field(default_factory=lambda: {"small_stem": True})
    methods: tuple[str, ...] = TRANSFER_METHODS
    n_per_class: tuple[int | str, ...] = (5, 10, 25, 50)
    seeds: tuple[int, ...] = (0, 1)
    optim: OptimConfig = OptimConfig("adam", 1e-3, (0.8,), epochs=200, batch_size=32)
    teacher_optim: OptimConfig = OptimConfig("adam", 1e-3, (0.8,), epochs=15, batch_size=128)
    max_steps: int | None = None
    teacher_max_steps: int | None = None
    loss_weight: float = 1.0
    pool_window: str = "s/5"
    att_pairs: tuple[str, ...] | None = None
    att_jac_pair: str | None = None
    jacobian_row: Literal["attention_map", "output"] = "attention_map"
    depth_pairs: tuple[str, ...] = ()
    depth_attention: Literal["all_pairs", "same_pair"] = "all_pairs"
    pool_windows: tuple[str, ...] = ()
    ablation_n: int | str = 10
    checkpoint_every: int = 1000
    log_every: int = 50
    progress: bool = True
    compare_to_paper: bool = False

    def __post_init__(self):
        if self.jacobian_row not in JACOBIAN_ROWS:
            raise ValueError(f"unknown jacobian_row {self.jacobian_row!r}; valid: "
                             f"{', '.join(JACOBIAN_ROWS)}")
        if self.depth_attention not in ("all_pairs", "same_pair"):
            raise ValueError(f"depth_attention must be all_pairs or same_pair, got "
                             f"{self.depth_attention!r}")
        if self.methods:
            check_names("methods", self.methods, TRANSFER_METHODS)
        check_points_per_class("n_per_class", self.n_per_class)
        check_points_per_class("ablation_n", (self.ablation_n,))
        check_seeds(self.seeds)
        check_model(self.student, self.student_options, "student")
        check_model(self.teacher, self.teacher_options, "teacher")
        if tuple(self.pool_windows) == ("all",):
            object.__setattr__(self, "pool_windows", tuple(POOL_WINDOWS))
        for label in (self.pool_window, *self.pool_windows):
            pool_fraction(label)
        ranges.check_number("loss_weight", self.loss_weight, 0, low_open=True)
        check_steps(self, ("max_steps", "teacher_max_steps", "checkpoint_every", "log_every"))
        if not self.methods and not self.depth_pairs and not self.pool_windows:
            raise ValueError("nothing to run: no methods and no ablations")


@dataclasses.dataclass(frozen=True)
class Run:
    """One student run of the grid."""

    kind: str  # "main", "depth" or "pool"
    method: str
    n: int | str
    seed: int
    objective: Objective
    column: str  # the table column: n for "main", the pair / window for ablations

    @property
    def name(self) -> str:
        if self.kind == "main":
            return f"{self.method}/n{self.n}_seed{self.seed}"
        col = self.column.replace(":", "-").replace("/", "")
        return f"{self.kind}_{col}/n{self.n}_seed{self.seed}"


def teacher_spec(cfg: TransferConfig, source: Dataset | None, image_shape):
    """(model, num_classes) of the teacher, without loading or training any weights."""
    if cfg.teacher_artifact:
        meta = checkpoint.read_teacher_meta(cfg.teacher_artifact,
                                            trust_unverified=cfg.trust_teacher)
        if tuple(meta.input_size) != tuple(image_shape):
            raise ValueError(f"teacher at {cfg.teacher_artifact} expects inputs "
                             f"{tuple(meta.input_size)}, the data has {tuple(image_shape)} "
                             "(use --image-size)")
        return meta.create_model(), meta.num_classes
    if source is None:
        raise ValueError("this preset has no source classes to train a teacher on: pass "
                         "--teacher DIR (e.g. from python -m experiments.import_torchvision)")
    return (models.create(cfg.teacher, source.num_classes, **cfg.teacher_options),
            source.num_classes)


def plan(cfg: TransferConfig, student, teacher_model, image_shape) -> list[Run]:
    """Every run of the grid, with its objective; all tap pairs checked (no training)."""
    s_shapes = models.feature_shapes(student, tuple(image_shape))
    t_shapes = models.feature_shapes(teacher_model, tuple(image_shape))
    auto = auto_pairs(s_shapes, t_shapes)
    if cfg.att_pairs is None:
        att_pairs = auto
    else:
        att_pairs = tuple(parse_pair(p, s_shapes, t_shapes, "--att-pairs")
                          for p in cfg.att_pairs)
    if cfg.att_jac_pair is None:
        jac_pair = auto[0] if auto else None
    else:
        jac_pair = parse_pair(cfg.att_jac_pair, s_shapes, t_shapes, "--att-jac-pair")
    needs_att = (any("att" in m for m in cfg.methods) or cfg.pool_windows
                 or ("ce+act+jac" in cfg.methods and cfg.jacobian_row == "attention_map"))
    if needs_att and (not att_pairs or jac_pair is None):
        raise ValueError(
            "no student and teacher taps of equal spatial size for attention matching; "
            f"student {s_shapes}, teacher {t_shapes}")
    w, pf = cfg.loss_weight, pool_fraction(cfg.pool_window)
    runs = [Run("main", m, n, s, transfer_objective(
                m, weight=w, att_pairs=att_pairs, att_jac_pair=jac_pair, pool_fraction=pf,
                jacobian_row=cfg.jacobian_row), str(n))
            for n in cfg.n_per_class for m in cfg.methods for s in cfg.seeds]
    if cfg.depth_pairs:
        pairs = (auto if tuple(cfg.depth_pairs) == ("auto",) else
                 [parse_pair(p, s_shapes, t_shapes, "--depth-pairs") for p in cfg.depth_pairs])
        if not pairs:
            raise ValueError(f"--depth-pairs auto: no taps of equal spatial size; student "
                             f"{s_shapes}, teacher {t_shapes}")
        runs += [Run("depth", "ce+act+att+attjac", cfg.ablation_n, s, transfer_objective(
                     "ce+act+att+attjac", weight=w, att_jac_pair=p, pool_fraction=pf,
                     att_pairs=att_pairs if cfg.depth_attention == "all_pairs" else (p,)),
                     pair_name(p))
                 for p in pairs for s in cfg.seeds]
    for label in cfg.pool_windows:
        runs += [Run("pool", "ce+act+att+attjac", cfg.ablation_n, s, transfer_objective(
                     "ce+act+att+attjac", weight=w, att_pairs=att_pairs, att_jac_pair=jac_pair,
                     pool_fraction=pool_fraction(label)), label)
                 for s in cfg.seeds]
    return runs


def check_source_student(cfg: TransferConfig, source: Dataset | None, t_classes: int) -> None:
    """Fails early when the oracle's source-pretrained student cannot be had."""
    if cfg.source_student:
        meta = checkpoint.read_teacher_meta(cfg.source_student,
                                            trust_unverified=cfg.trust_teacher)
        if meta.arch != cfg.student or meta.num_classes != t_classes:
            raise ValueError(f"--source-student {cfg.source_student} holds a {meta.arch} with "
                             f"{meta.num_classes} classes; the oracle needs a {cfg.student} "
                             f"with the teacher's {t_classes} classes")
    elif source is None:
        raise ValueError("the oracle needs a source-pretrained student: pass --source-student "
                         f"DIR (a {cfg.student} teacher artifact with the teacher's "
                         f"{t_classes} classes) or leave 'oracle' out of --methods")


def pretrained_student(cfg: TransferConfig, source: Dataset | None, t_classes: int, mesh,
                       stop=None) -> dict:
    """Variables of the student architecture pretrained with CE on the source task."""
    opts = {k: v for k, v in cfg.student_options.items() if k != "source_classes"}
    if cfg.source_student:
        art = checkpoint.restore_teacher(cfg.source_student, expect_arch=cfg.student,
                                         trust_unverified=cfg.trust_teacher)
    else:
        art = train_teacher(source, paths.as_dir(cfg.workdir) / "source_student", arch=cfg.student,
                            model_options=opts, optim=cfg.teacher_optim,
                            max_steps=cfg.teacher_max_steps, checkpoint_every=cfg.checkpoint_every,
                            progress=cfg.progress, mesh=mesh, seed=SOURCE_STUDENT_SEED,
                            augment=cfg.data.augment, stop=stop,
                            stream_options=options_of(cfg.data),
                            trust_unverified=cfg.trust_teacher)
    if art.meta.num_classes != t_classes:
        raise ValueError(f"source-pretrained student has {art.meta.num_classes} classes, the "
                         f"teacher {t_classes}")
    return art.variables


def load_teacher(cfg: TransferConfig, source: Dataset | None, mesh, stop=None) -> Teacher:
    if cfg.teacher_artifact:
        return checkpoint.restore_teacher(cfg.teacher_artifact,
                                          trust_unverified=cfg.trust_teacher)
    return train_teacher(source, paths.as_dir(cfg.workdir) / "teacher", arch=cfg.teacher,
                         model_options=cfg.teacher_options, optim=cfg.teacher_optim,
                         max_steps=cfg.teacher_max_steps, checkpoint_every=cfg.checkpoint_every,
                         progress=cfg.progress, augment=cfg.data.augment, mesh=mesh, stop=stop,
                         stream_options=options_of(cfg.data),
                         trust_unverified=cfg.trust_teacher)


def run(cfg: TransferConfig, *, mesh=None, stop=None) -> dict[str, list[dict]]:
    """Runs (or resumes) the whole grid and writes the tables and plots; returns the rows
    by kind (``main``, ``depth``, ``pool``). Everything that can be checked (classes, tap
    pairs, subset sizes, teacher shape) is checked before any training. ``stop``: polled
    after every training step (see :func:`jkt.train.train_and_evaluate`)."""
    import jax

    mesh, workdir, ds = start(cfg, mesh)
    source, target = source_target_split(ds, cfg.source_classes, cfg.target_classes)
    note = report.ANALOGUE_NOTE if source is not None else "teacher from --teacher"
    print(f"{ds.name}: target {target.class_names} ({len(target.train)} train / "
          f"{len(target.val)} val / {len(target.test)} test); source "
          f"{source.class_names if source else '(teacher artifact)'}; {note}; "
          f"{parallel.process_count_str(mesh)}")

    teacher_model, t_classes = teacher_spec(cfg, source, target.image_shape)
    s_opts = {**cfg.student_options, "source_classes": t_classes}
    student = models.create(cfg.student, target.num_classes, **s_opts)
    runs = plan(cfg, student, teacher_model, target.image_shape)
    subsets = {(r.n, r.seed): data.train_and_val(target, r.n, r.seed, cfg.data)
               for r in runs}
    describe_subsets(subsets, cfg.seeds[0], cfg.data, cfg.optim, cfg.max_steps)
    wants_oracle = any(r.method == "oracle" for r in runs)
    if wants_oracle:
        check_source_student(cfg, source, t_classes)
    teacher = load_teacher(cfg, source, mesh, stop)
    oracle_init = None
    if wants_oracle:
        pretrained = pretrained_student(cfg, source, t_classes, mesh, stop)
        oracle_init = jax.device_get(oracle_variables(student, pretrained, target.image_shape))

    info = {"teacher_accuracy": teacher.meta.extra.get("test_accuracy"),
            "teacher": f"{teacher.meta.arch} ({teacher.meta.dataset}, "
                       f"{teacher.meta.num_classes} classes)",
            "target": target.name, "analogue": source is not None}
    inputs = {"data": dataset_fingerprint(target),
              "teacher": record.teacher_fingerprint(teacher)}
    inputs_oracle = inputs if oracle_init is None else {
        **inputs, "init": record.variables_fingerprint(oracle_init)}
    record.check_runs((workdir / "runs" / r.name,
                       run_record(cfg, train_config(cfg, r, s_opts), r, info["teacher"],
                                  inputs_oracle if r.method == "oracle" else inputs),
                       f"run {r.name}", r.objective) for r in runs)
    rows = {"main": [], "depth": [], "pool": []}
    steps = StepCache()  # one compiled step per objective, not per run
    bar = tqdm(total=len(runs), desc="grid", position=0, dynamic_ncols=True,
               disable=not cfg.progress)
    try:
        for r in runs:
            bar.set_description(f"grid [{r.name}]")
            train_cfg = train_config(cfg, r, s_opts)
            run_dir = workdir / "runs" / r.name
            t0 = time.time()
            train, val = subsets[(r.n, r.seed)]
            try:
                res, = train_and_evaluate(
                    [train_cfg], train, {"val": val, "test": target.test},
                    num_classes=target.num_classes, mean=teacher.meta.mean,
                    std=teacher.meta.std, workdirs=[run_dir], teacher=teacher, mesh=mesh,
                    init_variables=oracle_init if r.method == "oracle" else None,
                    descs=[r.name], steps=steps, stop=stop, stream_options=options_of(cfg.data))
            except NonFiniteLossError as e:
                raise NonFiniteLossError(f"run {r.name}: {e}") from e
            rows[r.kind].append(result_row(r, res, run_dir,
                                           skipped=time.time() - t0 < 0.5))
            if is_writer():
                report.write(rows, cfg, workdir, info)
            bar.update(1)
    finally:
        bar.close()
    return rows


def train_config(cfg: TransferConfig, r: Run, student_options: dict) -> TrainConfig:
    """Run ``r``'s training config."""
    return TrainConfig(model=cfg.student, model_options=dict(student_options),
                       objective=r.objective, optim=cfg.optim, seed=r.seed,
                       max_steps=cfg.max_steps, log_every=cfg.log_every,
                       checkpoint_every=cfg.checkpoint_every, progress=cfg.progress,
                       augment=cfg.data.augment)


def run_record(cfg: TransferConfig, train_cfg: TrainConfig, r: Run, teacher: str,
               inputs: dict) -> dict:
    """Everything that determines run ``r`` (its ``config.json``): training config, data,
    subset, teacher, whether it starts from the source-pretrained student, and the
    fingerprints of the data, the teacher and that initialisation (``inputs``, see
    :mod:`jkt.grids.record`)."""
    return {"train": config_lib.to_dict(train_cfg), "data": config_lib.to_dict(cfg.data),
            "n_per_class": r.n, "teacher": teacher, "oracle": r.method == "oracle",
            record.INPUTS: inputs}


def result_row(r: Run, res, run_dir: Path, *, skipped: bool) -> dict:
    """One CSV row of a finished run (ablation columns and Jacobian-loss reduction)."""
    row = {"method": r.method, "n_per_class": r.n, "seed": r.seed}
    if r.kind == "depth":
        row["depth_pair"] = r.column
    if r.kind == "pool":
        row["pool_window"] = r.column
        row["pool_fraction"] = r.objective.pool_fraction
    if r.objective.att_jac > 0:
        row["att_jac_pair"] = pair_name(r.objective.att_jac_pair)
        red = report.jacobian_loss_reduction(run_dir)
        if red is not None:
            row.update(att_jac_first=red[0], att_jac_last=red[1], att_jac_reduction=red[2])
    row.update({"val_accuracy": res.accuracy.get("val"), "test_accuracy": res.accuracy["test"],
                **{f"final_{k}": v for k, v in res.final_metrics.items()},
                "steps": res.steps, "wall_time_s": round(res.wall_time, 2),
                "resumed_from": res.resumed_from, "skipped": skipped and res.wall_time > 0.5})
    return row


__all__ = ["POOL_WINDOWS", "Run", "TransferConfig", "plan", "pool_fraction", "run"]
