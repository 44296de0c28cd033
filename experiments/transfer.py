"""Tables 3-5: transfer learning with Jacobian matching (§5, §6.3), one command.

    python -m experiments.transfer                     # offline quick grid (digits 0-4 -> 5-9)
    python -m experiments.transfer --preset cifar10 --dataset folder:PATH/train.tar.xz
    python -m experiments.transfer --preset mit --dataset folder:MIT --teacher DIR ...

A pretrained teacher of one architecture (ResNet-34 in the paper; ``--teacher DIR`` or
trained here on the source classes) and a two-head student of another (VGG-9: target
classes + the teacher's source classes). Per method × images per class × seed, one
student run:

* ``ce``: cross-entropy on the target head of an untrained student;
* ``oracle``: the same, starting from a VGG-9 pretrained with CE on the source data
  (trunk and source head; the target head is freshly initialised);
* ``ce+act`` (LwF): + the source head matches the teacher's logits;
* ``ce+act+jac``: + their Jacobians (top-output estimator) match;
* ``ce+act+att``: + attention maps (eq. 8-9) at every tap pair of equal spatial size;
* ``ce+act+att+attjac``: + the attention-map Jacobian (eq. 10) of the arg-max pixel of
  the (size/5)-pooled map, at the shallowest pair.

Ablations: ``--depth-pairs`` (Table 4: where attention and its Jacobian are matched, with
the Jacobian-loss reduction during training) and ``--pool-windows`` (Table 5).

The ``quick`` and ``cifar10`` presets are *analogues*: the source task is a subset of
the classes of one dataset, the target task the others; only ``mit`` is the paper's
ImageNet -> MIT Scenes setting. Everything goes under ``--workdir`` (default
``runs/transfer``): ``transfer.{csv,md,png}`` and, when run, ``ablation_depth.*`` and
``ablation_pool.*``. Killed at any point, the same command resumes: finished runs are
skipped, the interrupted one continues from its last checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from experiments import cli
from experiments.configs.transfer import POOL_WINDOWS, PRESETS, TRANSFER_METHODS, TransferPreset
from experiments.train_teacher import train_teacher
from jkt import checkpoint, data, models, parallel, report
from jkt import jacobian as jj
from jkt.data import Dataset
from jkt.train import NonFiniteLossError, Objective, TrainConfig, train_and_evaluate

METHOD_LABELS = {
    "ce": "Cross-Entropy (CE) training on untrained student network",
    "oracle": "CE on pre-trained student network (Oracle)",
    "ce+act": "CE + match activations (Li & Hoiem, 2016)",
    "ce+act+jac": "CE + match {activations + Jacobians}",
    "ce+act+att": "CE + match {activations + attention} (Zagoruyko & Komodakis, 2017)",
    "ce+act+att+attjac": "CE + match {activations + attention + Jacobians}",
}
# Seed of the source-pretrained student: not a student seed, so that no student run starts
# from the random init the oracle's weights were trained from.
SOURCE_STUDENT_SEED = 1000
ANALOGUE_NOTE = ("an *analogue* of the paper's ImageNet -> MIT Scenes transfer: source and "
                 "target tasks are disjoint class subsets of one dataset")


# ---------------------------------------------------------------------------------------
# Small pure pieces: class splits, tap pairing, objectives, oracle init, loss reduction.

def class_ids(ds: Dataset, classes) -> list[int]:
    """Label ids of ``classes`` (names of ``ds.class_names``, or integer ids)."""
    ids = []
    for c in classes:
        if c in ds.class_names:
            ids.append(ds.class_names.index(c))
        elif isinstance(c, int) or (isinstance(c, str) and c.isdigit()):
            if not 0 <= int(c) < ds.num_classes:
                raise ValueError(f"class id {c} out of range for {ds.name} "
                                 f"({ds.num_classes} classes)")
            ids.append(int(c))
        else:
            raise ValueError(f"unknown class {c!r} in {ds.name}; classes: "
                             f"{', '.join(ds.class_names)}")
    if len(set(ids)) != len(ids):
        raise ValueError(f"repeated class in {list(classes)}")
    return ids


def split_classes(ds: Dataset, classes) -> Dataset:
    """The examples of ``classes`` only (every split), labels remapped to ``0..k-1`` in
    the given order; mean/std recomputed on the new training split."""
    ids = class_ids(ds, classes)
    lut = np.full(ds.num_classes, -1, np.int32)
    lut[ids] = np.arange(len(ids), dtype=np.int32)

    def keep(split: data.Split) -> data.Split:
        idx = np.flatnonzero(lut[split.labels] >= 0)
        return data.Split(split.images[idx], lut[split.labels[idx]])

    train = keep(ds.train)
    mean, std = data.channel_stats(train.images)
    names = tuple(ds.class_names[i] for i in ids)
    return Dataset(name=f"{ds.name}[{','.join(names)}]", train=train, val=keep(ds.val),
                   test=keep(ds.test), class_names=names, mean=mean, std=std)


def source_target_split(ds: Dataset, source_classes, target_classes
                        ) -> tuple[Dataset | None, Dataset]:
    """``(source, target)`` datasets; no source when ``source_classes`` is ``None``."""
    if source_classes is None:
        return None, ds if target_classes is None else split_classes(ds, target_classes)
    src = class_ids(ds, source_classes)
    if target_classes is None:
        target_classes = [i for i in range(ds.num_classes) if i not in src]
    tgt = class_ids(ds, target_classes)
    if set(src) & set(tgt):
        raise ValueError("source and target classes overlap: "
                         f"{sorted(ds.class_names[i] for i in set(src) & set(tgt))}")
    if not src or not tgt:
        raise ValueError("source and target tasks each need at least one class")
    return split_classes(ds, src), split_classes(ds, tgt)


def auto_pairs(student_shapes: dict, teacher_shapes: dict) -> tuple[tuple[str, str], ...]:
    """``((student_tap, teacher_tap), ...)`` of equal spatial size, shallowest first.

    Taps come in network order (``jkt.models.feature_shapes``). Where several teacher taps
    share a size (a ResNet's ``stem`` and ``stage1``), the deepest one is used: the end of
    the residual block, as Zagoruyko & Komodakis match; likewise for the student.
    """
    def last_per_size(shapes):
        by_size = {}
        for name, shape in shapes.items():
            by_size[tuple(shape[:2])] = name
        return by_size

    s_by, t_by = last_per_size(student_shapes), last_per_size(teacher_shapes)
    pairs = [(s_by[hw], t) for t, shape in teacher_shapes.items()
             if (hw := tuple(shape[:2])) in s_by and t_by[hw] == t]
    return tuple(pairs)


def parse_pair(text: str, student_shapes: dict, teacher_shapes: dict,
               what: str = "pair") -> tuple[str, str]:
    """``"teacher_tap:student_tap"`` (either order) -> ``(student_tap, teacher_tap)``.

    Raises ``ValueError`` (one line) for unknown taps or unequal spatial sizes."""
    parts = [p.strip() for p in text.split(":")]
    if len(parts) != 2:
        raise ValueError(f"{what} {text!r}: expected TEACHER_TAP:STUDENT_TAP")
    a, b = parts
    if a in teacher_shapes and b in student_shapes:
        t, s = a, b
    elif b in teacher_shapes and a in student_shapes:
        t, s = b, a
    else:
        raise ValueError(f"{what} {text!r}: unknown tap; teacher taps: "
                         f"{', '.join(teacher_shapes)}; student taps: {', '.join(student_shapes)}")
    try:
        jj.check_same_spatial((1, *student_shapes[s]), (1, *teacher_shapes[t]))
    except ValueError as e:
        raise ValueError(f"{what} {t}:{s}: {e}") from None
    return s, t


def pair_name(pair: tuple[str, str]) -> str:
    """``(student_tap, teacher_tap)`` -> ``"teacher_tap:student_tap"`` (Table 4's (T, S))."""
    return f"{pair[1]}:{pair[0]}"


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


def transfer_objective(method: str, *, weight: float = 1.0, att_pairs=(), att_jac_pair=None,
                       pool_fraction: float | None = 0.2) -> Objective:
    """The :class:`Objective` of a Table-3 method; every active weight is ``weight``.

    ``att_pairs`` / ``att_jac_pair`` are ``(student_tap, teacher_tap)``. Jacobians use the
    "top" estimator: the teacher's label space differs from the target labels."""
    w = weight
    common = dict(ce=w, estimator="top", pool_fraction=pool_fraction)
    if method in ("ce", "oracle"):
        return Objective(**common)
    if method == "ce+act":
        return Objective(act=w, **common)
    if method == "ce+act+jac":
        return Objective(act=w, jac=w, **common)
    if method == "ce+act+att":
        return Objective(act=w, att=w, att_pairs=tuple(att_pairs), **common)
    if method == "ce+act+att+attjac":
        return Objective(act=w, att=w, att_jac=w, att_pairs=tuple(att_pairs),
                         att_jac_pair=att_jac_pair, **common)
    raise ValueError(f"unknown method {method!r}; valid: {', '.join(TRANSFER_METHODS)}")


def oracle_variables(student, pretrained: dict, image_shape, seed: int = 0) -> dict:
    """Two-head student variables initialised from a source-pretrained single-head model.

    The trunk (every variable but the heads) and BatchNorm statistics are copied; the
    pretrained ``fc`` becomes ``fc_source``; the target head ``fc`` is freshly
    initialised from ``seed`` (Flax's ``Dense`` init). Raises ``ValueError`` if the shapes
    do not fit."""
    import flax.linen as nn
    import jax

    want = models.abstract_variables(student, tuple(image_shape))
    fc = want["params"]["fc"]["kernel"]
    key = jax.random.split(jax.random.key(seed))[0]
    head = nn.Dense(fc.shape[1]).init(key, np.zeros((1, fc.shape[0]), np.float32))["params"]
    params = {k: v for k, v in pretrained["params"].items() if k != "fc"}
    params["fc_source"] = pretrained["params"]["fc"]
    params["fc"] = head
    out = {"params": params, "batch_stats": dict(pretrained.get("batch_stats", {}))}
    shapes = lambda tree: jax.tree.map(lambda x: tuple(x.shape), tree)  # noqa: E731
    if shapes(out) != shapes({k: dict(want.get(k, {})) for k in out}):
        raise ValueError("the source-pretrained student does not fit the two-head student "
                         "(different architecture, width or number of source classes)")
    return out


def jacobian_loss_reduction(run_dir, term: str = "att_jac") -> tuple[float, float, float] | None:
    """``(first, last, (first - last) / first)`` of ``term`` over a run's ``metrics.jsonl``
    (one line per log interval), or ``None`` when the run did not log it."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return None
    values = [rec[term] for line in path.read_text().splitlines() if line.strip()
              for rec in [json.loads(line)] if term in rec]
    if not values:
        return None
    first, last = values[0], values[-1]
    return first, last, (first - last) / first if first else 0.0


# ---------------------------------------------------------------------------------------
# The grid.

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


def _teacher_spec(preset: TransferPreset, teacher_dir, source: Dataset | None, image_shape):
    """(model, num_classes) of the teacher, without loading or training any weights."""
    if teacher_dir:
        meta = checkpoint.read_teacher_meta(teacher_dir)
        if tuple(meta.input_size) != tuple(image_shape):
            raise ValueError(f"teacher at {teacher_dir} expects inputs {tuple(meta.input_size)}, "
                             f"the data has {tuple(image_shape)} (use --image-size)")
        return meta.create_model(), meta.num_classes
    if source is None:
        raise ValueError("this preset has no source classes to train a teacher on: pass "
                         "--teacher DIR (e.g. from python -m experiments.import_torchvision)")
    return (models.create(preset.teacher, source.num_classes, **preset.teacher_options),
            source.num_classes)


def plan(preset: TransferPreset, student, teacher_model, image_shape) -> list[Run]:
    """Every run of the grid, with its objective; all tap pairs checked (no training)."""
    s_shapes = models.feature_shapes(student, tuple(image_shape))
    t_shapes = models.feature_shapes(teacher_model, tuple(image_shape))
    auto = auto_pairs(s_shapes, t_shapes)
    if preset.att_pairs is None:
        att_pairs = auto
    else:
        att_pairs = tuple(parse_pair(p, s_shapes, t_shapes, "--att-pairs")
                          for p in preset.att_pairs)
    if preset.att_jac_pair is None:
        jac_pair = auto[0] if auto else None
    else:
        jac_pair = parse_pair(preset.att_jac_pair, s_shapes, t_shapes, "--att-jac-pair")
    needs_att = any("att" in m for m in preset.methods) or preset.pool_windows
    if needs_att and (not att_pairs or jac_pair is None):
        raise ValueError(
            "no student and teacher taps of equal spatial size for attention matching; "
            f"student {s_shapes}, teacher {t_shapes}")
    w, pf = preset.loss_weight, preset.pool_fraction
    runs = [Run("main", m, n, s, transfer_objective(
                m, weight=w, att_pairs=att_pairs, att_jac_pair=jac_pair, pool_fraction=pf),
                str(n))
            for n in preset.n_per_class for m in preset.methods for s in preset.seeds]
    if preset.depth_pairs:
        pairs = (auto if tuple(preset.depth_pairs) == ("auto",) else
                 [parse_pair(p, s_shapes, t_shapes, "--depth-pairs") for p in preset.depth_pairs])
        if not pairs:
            raise ValueError(f"--depth-pairs auto: no taps of equal spatial size; student "
                             f"{s_shapes}, teacher {t_shapes}")
        runs += [Run("depth", "ce+act+att+attjac", preset.ablation_n, s, transfer_objective(
                     "ce+act+att+attjac", weight=w, att_pairs=(p,), att_jac_pair=p,
                     pool_fraction=pf), pair_name(p))
                 for p in pairs for s in preset.seeds]
    for label in preset.pool_windows:
        runs += [Run("pool", "ce+act+att+attjac", preset.ablation_n, s, transfer_objective(
                     "ce+act+att+attjac", weight=w, att_pairs=att_pairs, att_jac_pair=jac_pair,
                     pool_fraction=pool_fraction(label)), label)
                 for s in preset.seeds]
    return runs


def _check_source_student(preset, source_dir, source: Dataset | None, t_classes: int) -> None:
    """Fails early when the oracle's source-pretrained student cannot be had."""
    if source_dir:
        meta = checkpoint.read_teacher_meta(source_dir)
        if meta.arch != preset.student or meta.num_classes != t_classes:
            raise ValueError(f"--source-student {source_dir} holds a {meta.arch} with "
                             f"{meta.num_classes} classes; the oracle needs a {preset.student} "
                             f"with the teacher's {t_classes} classes")
    elif source is None:
        raise ValueError("the oracle needs a source-pretrained student: pass --source-student "
                         f"DIR (a {preset.student} teacher artifact with the teacher's "
                         f"{t_classes} classes) or leave 'oracle' out of --methods")


def _pretrained_student(preset, source_dir, source: Dataset | None, t_classes: int, workdir,
                        progress, mesh) -> dict:
    """Variables of the VGG-9 pretrained with CE on the source task (for the oracle)."""
    opts = {k: v for k, v in preset.student_options.items() if k != "source_classes"}
    if source_dir:
        art = checkpoint.restore_teacher(source_dir, expect_arch=preset.student)
    else:
        art = train_teacher(source, Path(workdir) / "source_student", arch=preset.student,
                            model_options=opts, optim=preset.teacher_optim,
                            max_steps=preset.teacher_max_steps, progress=progress, mesh=mesh,
                            seed=SOURCE_STUDENT_SEED)
    if art.meta.num_classes != t_classes:
        raise ValueError(f"source-pretrained student has {art.meta.num_classes} classes, the "
                         f"teacher {t_classes}")
    return art.variables


def run_grid(preset: TransferPreset, workdir: Path, *, teacher_dir: str | None = None,
             source_student_dir: str | None = None, progress: bool = True, mesh=None,
             data_dir=None, val_fraction: float = 0.1, image_size: int | None = None
             ) -> list[dict]:
    """Runs (or resumes) the whole grid and writes the tables and plots; returns the rows.

    Everything that can be checked (classes, tap pairs, subset sizes, teacher shape) is
    checked before any training."""
    import jax

    mesh = parallel.make_mesh() if mesh is None else mesh
    workdir.mkdir(parents=True, exist_ok=True)
    ds = data.load(preset.dataset, image_size=image_size or preset.image_size,
                   val_fraction=val_fraction, data_dir=data_dir)
    source, target = source_target_split(ds, preset.source_classes, preset.target_classes)
    note = ANALOGUE_NOTE if source is not None else "teacher from --teacher"
    print(f"{ds.name}: target {target.class_names} ({len(target.train)} train / "
          f"{len(target.val)} val / {len(target.test)} test); source "
          f"{source.class_names if source else '(teacher artifact)'}; {note}; "
          f"{parallel.process_count_str(mesh)}")

    teacher_model, t_classes = _teacher_spec(preset, teacher_dir, source, target.image_shape)
    s_opts = {**preset.student_options, "source_classes": t_classes}
    student = models.create(preset.student, target.num_classes, **s_opts)
    runs = plan(preset, student, teacher_model, target.image_shape)
    subsets = {(r.n, r.seed): data.subset_per_class(
                   target.train, r.n, r.seed, class_names=target.class_names,
                   num_classes=target.num_classes) for r in runs}
    wants_oracle = any(r.method == "oracle" for r in runs)
    if wants_oracle:
        _check_source_student(preset, source_student_dir, source, t_classes)

    if teacher_dir:
        teacher = checkpoint.restore_teacher(teacher_dir)
    else:
        teacher = train_teacher(source, workdir / "teacher", arch=preset.teacher,
                                model_options=preset.teacher_options, optim=preset.teacher_optim,
                                max_steps=preset.teacher_max_steps, progress=progress, mesh=mesh)
    oracle_init = None
    if wants_oracle:
        pretrained = _pretrained_student(preset, source_student_dir, source, t_classes, workdir,
                                         progress, mesh)
        oracle_init = jax.device_get(oracle_variables(student, pretrained, target.image_shape))

    info = {"teacher_accuracy": teacher.meta.extra.get("test_accuracy"),
            "teacher": f"{teacher.meta.arch} ({teacher.meta.dataset}, "
                       f"{teacher.meta.num_classes} classes)",
            "target": target.name, "analogue": source is not None}
    rows = {"main": [], "depth": [], "pool": []}
    bar = tqdm(total=len(runs), desc="grid", position=0, dynamic_ncols=True, disable=not progress)
    try:
        for r in runs:
            bar.set_description(f"grid [{r.name}]")
            cfg = TrainConfig(model=preset.student, model_options=dict(s_opts),
                              objective=r.objective, optim=preset.optim, seed=r.seed,
                              max_steps=preset.max_steps, log_every=preset.log_every,
                              checkpoint_every=preset.checkpoint_every, progress=progress)
            run_dir = workdir / "runs" / r.name
            t0 = time.time()
            try:
                res = train_and_evaluate(
                    cfg, subsets[(r.n, r.seed)], {"val": target.val, "test": target.test},
                    num_classes=target.num_classes, mean=teacher.meta.mean,
                    std=teacher.meta.std, workdir=run_dir, teacher=teacher, mesh=mesh,
                    init_variables=oracle_init if r.method == "oracle" else None, desc=r.name)
            except NonFiniteLossError as e:
                raise NonFiniteLossError(f"run {r.name}: {e}") from e
            row = {"method": r.method, "n_per_class": r.n, "seed": r.seed}
            if r.kind == "depth":
                row["depth_pair"] = r.column
            if r.kind == "pool":
                row["pool_window"] = r.column
                row["pool_fraction"] = r.objective.pool_fraction
            if r.objective.att_jac > 0:
                row["att_jac_pair"] = pair_name(r.objective.att_jac_pair)
                red = jacobian_loss_reduction(run_dir)
                if red is not None:
                    row.update(att_jac_first=red[0], att_jac_last=red[1],
                               att_jac_reduction=red[2])
            row.update({"val_accuracy": res.accuracy["val"], "test_accuracy": res.accuracy["test"],
                        **{f"final_{k}": v for k, v in res.final_metrics.items()},
                        "steps": res.steps, "wall_time_s": round(res.wall_time, 2),
                        "resumed_from": res.resumed_from,
                        "skipped": time.time() - t0 < 0.5 and res.wall_time > 0.5})
            rows[r.kind].append(row)
            write_results(rows, preset, workdir, info)
            bar.update(1)
    finally:
        bar.close()
    return rows


# ---------------------------------------------------------------------------------------
# Tables and plots.

def _header(preset: TransferPreset, info: dict, what: str) -> str:
    acc = info["teacher_accuracy"]
    acc = f"{acc:.2%} on its own test split" if acc is not None else "n/a"
    analogue = f"\n\nThis is {ANALOGUE_NOTE}." if info["analogue"] else ""
    return (f"# {what}\n\nTarget: `{info['target']}`; teacher: {info['teacher']}, test "
            f"accuracy {acc}; student: two-head {preset.student} (target head: CE; source "
            f"head: matched to the teacher's logits). Loss weights {preset.loss_weight:g}."
            f"{analogue}")


def write_results(rows: dict, preset: TransferPreset, workdir: Path, info: dict) -> None:
    """``transfer.*`` from the main rows, ``ablation_{depth,pool}.*`` from the others."""
    main = rows["main"]
    if main:
        report.write_csv(main, workdir / "transfer.csv")
        cols = list(preset.n_per_class)
        common = dict(row_key="method", col_key="n_per_class", row_order=list(preset.methods),
                      col_order=cols, row_labels=METHOD_LABELS,
                      col_header="# of data points per class →")
        md = (_header(preset, info, "Transfer learning (Table 3)")
              + f"\n\nTest accuracy (%), mean ± std over {len(preset.seeds)} seed(s); best per "
              "column in bold.\n\n" + report.accuracy_tables(main, **common) + "\n")
        (workdir / "transfer.md").write_text(md)
        report.accuracy_vs_n_plot(main, workdir / "transfer.png",
                                  line_order=list(preset.methods), x_order=cols,
                                  line_labels=METHOD_LABELS,
                                  xlabel="images per class (log; 'full' plotted at right)",
                                  title=f"Transfer to {info['target']}")
    for kind, key, title, xlabel in (
            ("depth", "depth_pair", "Feature-matching depth (Table 4)",
             "(teacher tap, student tap)"),
            ("pool", "pool_window", "Pooling window of the attention Jacobian (Table 5)",
             "average-pool window (s = attention-map size)")):
        if rows[kind]:
            write_ablation(rows[kind], key, workdir / f"ablation_{kind}", preset, info,
                           title, xlabel)


def write_ablation(rows: list[dict], key: str, stem: Path, preset, info, title: str,
                   xlabel: str) -> None:
    """``stem.{csv,md,png}``: accuracy and Jacobian-loss reduction per ablation column."""
    report.write_csv(rows, stem.with_suffix(".csv"))
    cols = list(dict.fromkeys(r[key] for r in rows))
    long = []
    for r in rows:
        long.append({"x": r[key], "metric": "Accuracy (%)", "value": r["test_accuracy"]})
        if "att_jac_reduction" in r:
            long.append({"x": r[key], "metric": "Jacobian loss reduction (%)",
                         "value": r["att_jac_reduction"]})
    metrics = ["Accuracy (%)", "Jacobian loss reduction (%)"]
    table = report.markdown_table(long, row_key="x", col_key="metric", value_key="value",
                                  row_order=cols, col_order=metrics, col_header=xlabel)
    n = rows[0]["n_per_class"]
    md = (_header(preset, info, title)
          + f"\n\n{n} images per class; method `ce+act+att+attjac`; mean ± std over "
          f"{len(preset.seeds)} seed(s); best per column in bold. Jacobian loss reduction = "
          "(first − last logged att_jac) / first, from each run's `metrics.jsonl`.\n\n"
          + table + "\n")
    stem.with_suffix(".md").write_text(md)
    report.line_plot(long, stem.with_suffix(".png"), line_key="metric", x_key="x",
                     y_key="value", line_order=metrics, x_order=cols,
                     x_positions={c: i for i, c in enumerate(cols)}, logx=False,
                     xlabel=xlabel + ": " + ", ".join(f"{i}={c}" for i, c in enumerate(cols)),
                     ylabel="%", title=title)


# ---------------------------------------------------------------------------------------
# Command line.

def parse_args(argv=None) -> tuple[argparse.Namespace, TransferPreset]:
    p = argparse.ArgumentParser(description="Tables 3-5 of Srinivas & Fleuret (2018).",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__)
    p.add_argument("--preset", default="quick", choices=sorted(PRESETS),
                   help="starting configuration (default: quick, offline on digits)")
    cli.add_data_args(p, default=None)
    p.add_argument("--source-classes", default=None,
                   help="comma list of class names/ids the teacher is trained on, or 'none'")
    p.add_argument("--target-classes", default=None,
                   help="comma list of the student's classes (default: all the others)")
    p.add_argument("--workdir", default="runs/transfer")
    p.add_argument("--teacher", default=None, help="teacher artifact dir (default: train one "
                   "on the source classes)")
    p.add_argument("--source-student", default=None,
                   help="artifact of the source-pretrained student for 'oracle' (default: "
                   "train one on the source classes)")
    p.add_argument("--methods", default=None,
                   help=f"comma list of {', '.join(TRANSFER_METHODS)}, or 'none'")
    p.add_argument("--n-per-class", default=None, help="comma list, e.g. 5,10,25,50,full")
    p.add_argument("--seeds", default=None, help="comma list of seeds, e.g. 0,1")
    p.add_argument("--att-pairs", default=None,
                   help="TEACHER_TAP:STUDENT_TAP,... for attention (default: all equal-size)")
    p.add_argument("--att-jac-pair", default=None,
                   help="TEACHER_TAP:STUDENT_TAP for the attention Jacobian (default: "
                   "shallowest equal-size pair)")
    p.add_argument("--pool-fraction", default=None,
                   help="attention-Jacobian pooling window: full, s/3, s/5, s/7, none or a "
                   "fraction (default: preset, s/5)")
    p.add_argument("--depth-pairs", default=None,
                   help="Table 4 ablation: TEACHER_TAP:STUDENT_TAP,... or 'auto'")
    p.add_argument("--pool-windows", default=None,
                   help="Table 5 ablation: comma list of full,s/3,s/5,s/7,none or 'all'")
    p.add_argument("--ablation-n", default=None, help="images per class of the ablations")
    p.add_argument("--loss-weight", type=float, default=None,
                   help="weight of every active term (app. 10.2: 1; 10 for MIT)")
    p.add_argument("--width-multiplier", type=float, default=None,
                   help="channel width of both networks (default: preset)")
    p.add_argument("--teacher-stage-sizes", default=None,
                   help="ResNet blocks per stage of a trained teacher, e.g. 1,1,1,1")
    p.add_argument("--max-steps", type=int, default=None, help="cap on steps per student run")
    p.add_argument("--teacher-max-steps", type=int, default=None)
    p.add_argument("--checkpoint-every", type=int, default=None)
    p.add_argument("--log-every", type=int, default=None)
    cli.add_optim_args(p, default=None)
    cli.add_optim_args(p, default=None, prefix="teacher-")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    pre = PRESETS[args.preset]()
    changes = {}
    if args.dataset:
        changes["dataset"] = args.dataset
    if args.source_classes:
        changes["source_classes"] = (None if args.source_classes.lower() == "none"
                                     else cli.parse_list(args.source_classes))
    if args.target_classes:
        changes["target_classes"] = cli.parse_list(args.target_classes)
    if args.methods:
        methods = () if args.methods.lower() == "none" else cli.parse_list(args.methods)
        bad = [m for m in methods if m not in TRANSFER_METHODS]
        if bad:
            p.error(f"unknown method(s) {bad}; valid: {', '.join(TRANSFER_METHODS)}")
        changes["methods"] = methods
    for flag, field in (("n_per_class", "n_per_class"), ("ablation_n", "ablation_n")):
        if getattr(args, flag):
            ns = cli.parse_points_per_class(p, f"--{flag.replace('_', '-')}",
                                            getattr(args, flag))
            changes[field] = ns if field == "n_per_class" else ns[0]
    if args.seeds:
        seeds = cli.parse_list(args.seeds, int)
        if not all(isinstance(s, int) for s in seeds):
            p.error(f"--seeds takes integers, got {args.seeds!r}")
        changes["seeds"] = seeds
    if args.att_pairs:
        changes["att_pairs"] = cli.parse_list(args.att_pairs)
    if args.att_jac_pair:
        changes["att_jac_pair"] = args.att_jac_pair
    if args.depth_pairs:
        changes["depth_pairs"] = cli.parse_list(args.depth_pairs)
    try:
        if args.pool_fraction:
            changes["pool_fraction"] = pool_fraction(args.pool_fraction)
        if args.pool_windows:
            labels = (tuple(POOL_WINDOWS) if args.pool_windows.lower() == "all"
                      else cli.parse_list(args.pool_windows))
            for label in labels:
                pool_fraction(label)
            changes["pool_windows"] = labels
    except ValueError as e:
        p.error(str(e))
    for flag in ("loss_weight", "max_steps", "teacher_max_steps", "checkpoint_every",
                 "log_every"):
        if getattr(args, flag) is not None:
            changes[flag] = getattr(args, flag)
    if args.width_multiplier is not None:
        changes["student_options"] = {**pre.student_options,
                                      "width_multiplier": args.width_multiplier}
        changes["teacher_options"] = {**pre.teacher_options,
                                      "width_multiplier": args.width_multiplier}
    if args.teacher_stage_sizes:
        sizes = cli.parse_list(args.teacher_stage_sizes, int)
        if not sizes or not all(isinstance(s, int) and s > 0 for s in sizes):
            p.error(f"--teacher-stage-sizes takes positive integers, got "
                    f"{args.teacher_stage_sizes!r}")
        changes["teacher_options"] = {**changes.get("teacher_options", pre.teacher_options),
                                      "stage_sizes": sizes}
    try:
        changes["optim"] = cli.optim_from_args(args, pre.optim)
        changes["teacher_optim"] = cli.optim_from_args(args, pre.teacher_optim, "teacher-")
        preset = dataclasses.replace(pre, **changes)
    except ValueError as e:
        p.error(str(e))
    if not preset.methods and not preset.depth_pairs and not preset.pool_windows:
        p.error("nothing to run: no methods and no ablations")
    return args, preset


def main(argv=None):
    args, preset = parse_args(argv)
    workdir = cli.prepare_workdir(args.workdir, preset)
    try:
        rows = run_grid(preset, workdir, teacher_dir=args.teacher,
                        source_student_dir=args.source_student, progress=not args.no_progress,
                        data_dir=args.data_dir, val_fraction=args.val_fraction,
                        image_size=args.image_size)
    except (FileNotFoundError, ValueError, NonFiniteLossError) as e:
        cli.fail(str(e).replace("\n", " "))
    written = []
    for stem, kind in (("transfer", "main"), ("ablation_depth", "depth"),
                       ("ablation_pool", "pool")):
        if rows[kind]:
            print((workdir / f"{stem}.md").read_text())
            written += [str(workdir / f"{stem}.{ext}") for ext in ("csv", "md", "png")]
    print("wrote " + ", ".join(written))
    return rows


if __name__ == "__main__":
    main()
