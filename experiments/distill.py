"""Table 1: distillation with Jacobian matching, one command.

    python -m experiments.distill                              # offline quick grid (digits)
    python -m experiments.distill --preset paper --dataset cifar100 --data-dir DIR
    python -m experiments.distill --preset cifar10 --dataset folder:PATH.tar.xz

Trains (or restores, ``--teacher DIR``) a teacher, then one student per method ×
points-per-class × seed. Everything goes under ``--workdir`` (default ``runs/distill``):
``results.csv`` (one row per run), ``results.md`` (the paper's table, mean ± std over
seeds, best per column in bold) and ``results.png`` (accuracy vs points per class).
Killed at any point, the same command resumes: finished runs are skipped, the
interrupted one continues from its last checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import time
from pathlib import Path

from tqdm.auto import tqdm

from experiments import cli
from experiments.configs.distill import FUSION_CHOICES, PRESETS, DistillPreset
from experiments.train_teacher import train_teacher
from jkt import checkpoint, data, parallel, report
from jkt.train import (
    ESTIMATORS,
    METHOD_LABELS,
    METHODS,
    NonFiniteLossError,
    TrainConfig,
    fusion_groups,
    method_objective,
    train_and_evaluate_fused,
)


def parse_args(argv=None) -> tuple[argparse.Namespace, DistillPreset]:
    p = argparse.ArgumentParser(description="Table 1 of Srinivas & Fleuret (2018).",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__)
    p.add_argument("--preset", default="quick", choices=sorted(PRESETS),
                   help="starting configuration (default: quick, offline on digits)")
    cli.add_data_args(p, default=None)
    p.add_argument("--workdir", default="runs/distill")
    p.add_argument("--teacher", default=None, help="teacher artifact dir (default: train one)")
    p.add_argument("--methods", default=None, help=f"comma list of {', '.join(METHODS)}")
    p.add_argument("--n-per-class", default=None, help="comma list, e.g. 1,5,10,full")
    p.add_argument("--seeds", default=None, help="comma list of seeds, e.g. 0,1,2")
    p.add_argument("--estimator", default=None, choices=ESTIMATORS)
    p.add_argument("--normalize", action="store_true", default=None,
                   help="match Jacobians in the eq.-10 normalised form")
    p.add_argument("--student", default=None)
    p.add_argument("--width-multiplier", type=float, default=None,
                   help="channel width of both networks (default: preset)")
    p.add_argument("--max-steps", type=int, default=None, help="cap on steps per student run")
    p.add_argument("--teacher-max-steps", type=int, default=None)
    p.add_argument("--checkpoint-every", type=int, default=None,
                   help="steps between checkpoints of a run (default: preset)")
    cli.add_optim_args(p, default=None)
    cli.add_optim_args(p, default=None, prefix="teacher-")
    p.add_argument("--fusion", default=None, choices=FUSION_CHOICES,
                   help="train the methods of one (n, seed) cell that need the same passes in "
                        "one jitted step (default: preset, unroll) or each on its own (off)")
    p.add_argument("--fusion-groups", default=None, choices=("passes", "all"),
                   help="which methods of a cell are fused: those needing the same passes "
                        "(default) or all of them in one step")
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16"),
                   help="compute dtype of the student steps (teacher trained in float32)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    pre = PRESETS[args.preset]()
    changes = {}
    if args.dataset:
        changes["dataset"] = args.dataset
    if args.methods:
        methods = cli.parse_list(args.methods)
        bad = [m for m in methods if m not in METHODS]
        if bad:
            p.error(f"unknown method(s) {bad}; valid: {', '.join(METHODS)}")
        changes["methods"] = methods
    if args.n_per_class:
        changes["n_per_class"] = cli.parse_points_per_class(p, "--n-per-class", args.n_per_class)
    if args.seeds:
        seeds = cli.parse_list(args.seeds, int)
        if not all(isinstance(s, int) for s in seeds):
            p.error(f"--seeds takes integers, got {args.seeds!r}")
        changes["seeds"] = seeds
    for flag, field in (("estimator", "estimator"), ("normalize", "normalize"),
                        ("student", "student"), ("max_steps", "max_steps"),
                        ("teacher_max_steps", "teacher_max_steps"),
                        ("checkpoint_every", "checkpoint_every"), ("fusion", "fusion"),
                        ("dtype", "dtype"), ("fusion_groups", "fusion_groups")):
        if getattr(args, flag) is not None:
            changes[field] = getattr(args, flag)
    if args.width_multiplier is not None:
        changes["student_options"] = {**pre.student_options,
                                      "width_multiplier": args.width_multiplier}
        changes["teacher_options"] = {**pre.teacher_options,
                                      "width_multiplier": args.width_multiplier}
    try:
        changes["optim"] = cli.optim_from_args(args, pre.optim)
        changes["teacher_optim"] = cli.optim_from_args(args, pre.teacher_optim, "teacher-")
    except ValueError as e:
        p.error(str(e))
    return args, dataclasses.replace(pre, **changes)


def run_grid(preset: DistillPreset, workdir: Path, *, teacher_dir: str | None = None,
             progress: bool = True, mesh=None, data_dir=None, val_fraction: float = 0.1,
             image_size: int | None = None) -> list[dict]:
    """Runs (or resumes) the whole grid and writes results.{csv,md,png}; returns the rows."""
    mesh = parallel.make_mesh() if mesh is None else mesh
    workdir.mkdir(parents=True, exist_ok=True)
    ds = data.load(preset.dataset, image_size=image_size or preset.image_size,
                   val_fraction=val_fraction, data_dir=data_dir)
    print(f"{ds.name}: {len(ds.train)} train / {len(ds.val)} val / {len(ds.test)} test, "
          f"{ds.num_classes} classes, {parallel.process_count_str(mesh)}")
    # Subsets are drawn before training so that a bad n fails at once, not hours in.
    subsets = {(n, s): data.subset_per_class(ds.train, n, s, class_names=ds.class_names,
                                             num_classes=ds.num_classes)
               for n in preset.n_per_class for s in preset.seeds}
    if teacher_dir:
        teacher = checkpoint.restore_teacher(teacher_dir)
        if teacher.meta.num_classes != ds.num_classes:
            raise ValueError(f"teacher at {teacher_dir} has {teacher.meta.num_classes} classes, "
                             f"{ds.name} has {ds.num_classes}")
    else:
        teacher = train_teacher(ds, workdir / "teacher", arch=preset.teacher,
                                model_options=preset.teacher_options, optim=preset.teacher_optim,
                                max_steps=preset.teacher_max_steps, progress=progress, mesh=mesh)
    t_acc = teacher.meta.extra.get("test_accuracy")
    student_options = dict(preset.student_options)
    if preset.dtype != "float32":  # only the compute dtype changes; weights stay float32
        teacher = dataclasses.replace(teacher, model=teacher.meta.create_model(dtype=preset.dtype))
        student_options["dtype"] = preset.dtype
    objectives = {m: method_objective(m, estimator=preset.estimator, normalize=preset.normalize)
                  for m in preset.methods}
    if preset.fusion == "off":
        groups = [[m] for m in preset.methods]
    elif preset.fusion_groups == "all":
        groups = [list(preset.methods)]
    else:
        groups = [[preset.methods[i] for i in g]
                  for g in fusion_groups([objectives[m] for m in preset.methods])]
    rows = []
    bar = tqdm(total=len(preset.methods) * len(preset.n_per_class) * len(preset.seeds),
               desc="grid", position=0, dynamic_ncols=True, disable=not progress)
    try:
        for n, seed, group in itertools.product(preset.n_per_class, preset.seeds, groups):
            names = [f"{m}/n{n}_seed{seed}" for m in group]
            bar.set_description(f"grid [{', '.join(names)}]")
            cfgs = [TrainConfig(
                model=preset.student, model_options=dict(student_options),
                objective=objectives[m], optim=preset.optim, seed=seed,
                max_steps=preset.max_steps, checkpoint_every=preset.checkpoint_every,
                progress=progress) for m in group]
            t0 = time.time()
            try:
                results = train_and_evaluate_fused(
                    cfgs, subsets[(n, seed)], {"val": ds.val, "test": ds.test},
                    num_classes=ds.num_classes, mean=ds.mean, std=ds.std,
                    workdirs=[workdir / "runs" / name for name in names],
                    teacher=teacher, mesh=mesh, descs=names,
                    mode="unroll" if preset.fusion == "off" else preset.fusion)
            except NonFiniteLossError as e:
                raise NonFiniteLossError(f"run {' / '.join(names)}: {e}") from e
            skipped = time.time() - t0 < 0.5
            for m, res in zip(group, results, strict=True):
                rows.append({
                    "method": m, "n_per_class": n, "seed": seed,
                    "val_accuracy": res.accuracy["val"],
                    "test_accuracy": res.accuracy["test"],
                    **{f"final_{k}": v for k, v in res.final_metrics.items()},
                    "steps": res.steps, "fused_runs": len(group),
                    "wall_time_s": round(res.wall_time, 2),
                    "resumed_from": res.resumed_from,
                    "skipped": skipped and res.wall_time > 0.5})
            write_results(rows, preset, workdir, t_acc)
            bar.update(len(group))
    finally:
        bar.close()
    return rows


def write_results(rows: list[dict], preset: DistillPreset, workdir: Path,
                  teacher_accuracy: float | None) -> str:
    """results.csv, results.md and results.png from the rows so far; returns the markdown."""
    report.write_csv(rows, workdir / "results.csv")
    cols = list(preset.n_per_class)
    common = dict(row_key="method", col_key="n_per_class", row_order=list(preset.methods),
                  col_order=cols, row_labels=METHOD_LABELS,
                  col_header="# of data points per class →")
    seeds = len(preset.seeds)
    teacher = f"{teacher_accuracy:.2%}" if teacher_accuracy is not None else "n/a"
    md = (f"# Distillation ({preset.dataset}: {preset.teacher} teacher → {preset.student} "
          f"student)\n\nTest accuracy (%), mean ± std over {seeds} seed(s); best per column "
          f"in bold. Teacher test accuracy: {teacher}. Jacobian estimator: "
          f"`{preset.estimator}`{' (eq. 10 normalised)' if preset.normalize else ''}.\n\n"
          + report.accuracy_tables(rows, **common) + "\n")
    (workdir / "results.md").write_text(md)
    report.accuracy_vs_n_plot(rows, workdir / "results.png", line_order=list(preset.methods),
                              x_order=cols, line_labels=METHOD_LABELS,
                              xlabel="data points per class (log; 'full' plotted at right)",
                              title=f"Distillation on {preset.dataset}")
    return md


def main(argv=None):
    args, preset = parse_args(argv)
    workdir = cli.prepare_workdir(args.workdir, preset)
    try:
        run_grid(preset, workdir, teacher_dir=args.teacher, progress=not args.no_progress,
                 data_dir=args.data_dir, val_fraction=args.val_fraction,
                 image_size=args.image_size)
    except (FileNotFoundError, ValueError, NonFiniteLossError) as e:
        cli.fail(str(e))
    print((workdir / "results.md").read_text())
    print(f"wrote {workdir / 'results.csv'}, {workdir / 'results.md'}, {workdir / 'results.png'}")


if __name__ == "__main__":
    main()
