"""Table 2: robustness to Gaussian input noise of Jacobian-norm-penalised networks.

    python -m experiments.robustness                          # offline quick run (digits)
    python -m experiments.robustness --preset paper --dataset cifar100 --data-dir DIR

Trains one network per model row — Jacobian-norm penalty (prop. 2) at each λ, an ℓ2
weight-decay baseline and a dropout baseline — then evaluates each on the test split
with Gaussian noise of std σ added to the *normalised* images (several draws, mean ±
std) and reports its average input-gradient norm ‖∇_x S^y(x)‖ on clean test data.
Writes ``robustness.csv``, ``robustness.md`` (Table 2 layout) and ``robustness.png``
(accuracy vs σ) under ``--workdir`` (default ``runs/robustness``). Resumable like distill.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from experiments import cli
from experiments.configs.robustness import PRESETS, RobustnessPreset
from jkt import data, jacobian, parallel, report
from jkt.data import transforms
from jkt.train import (
    ESTIMATORS,
    NonFiniteLossError,
    Objective,
    TrainConfig,
    evaluate,
    final_variables,
    make_eval_step,
    train_and_evaluate,
)

NOISE_FILE = "noise_eval.json"


@dataclasses.dataclass(frozen=True)
class ModelRow:
    """One row of Table 2: a name, its label, and how it is trained."""

    name: str
    label: str
    objective: Objective
    model_options: dict
    weight_decay: float = 0.0


def model_rows(p: RobustnessPreset) -> list[ModelRow]:
    rows = []
    for lam in p.lambdas:
        obj = Objective(ce=1.0, jac_norm=lam, estimator=p.estimator)
        rows.append(ModelRow(f"lambda={lam:g}", f"λ = {lam:g}", obj, dict(p.model_options)))
    if p.weight_decay is not None:
        label = f"ℓ2 regularization (γ = {p.weight_decay:g})"
        rows.append(ModelRow(f"l2={p.weight_decay:g}", label, Objective(ce=1.0),
                             dict(p.model_options), p.weight_decay))
    if p.dropout is not None:
        rows.append(ModelRow(f"dropout={p.dropout:g}", f"Dropout (p = {p.dropout:g})",
                             Objective(ce=1.0), {**p.model_options, "dropout": p.dropout}))
    return rows


def make_grad_norm_fn(model, mean, std):
    """``(variables, batch) -> Σ_b ‖∇_x S^{y_b}(x_b)‖`` over unmasked examples (inference
    mode, true-label output, inputs normalised)."""

    def fn(variables, batch):
        x = transforms.normalize(batch["image"], mean, std)
        f = lambda z: model.apply(variables, z, train=False)
        v = jacobian.select_cotangent(f(x), "label", labels=batch["label"])
        _, g = jacobian.vjp_input(f, x, v)
        norms = jnp.sqrt(jnp.sum(g.reshape(g.shape[0], -1) ** 2, -1))
        return jnp.sum(jnp.where(batch["mask"], norms, 0.0))

    return jax.jit(fn)


def noise_evaluation(model, variables, ds, p: RobustnessPreset, mesh, batch_size: int) -> dict:
    """Accuracy at every σ (mean and std over draws) and the mean clean gradient norm."""
    eval_fn = jax.jit(make_eval_step(model, mean=ds.mean, std=ds.std))
    out = {"sigmas": {}}
    for sigma in p.sigmas:
        draws = 1 if sigma == 0 else p.noise_draws
        accs = [evaluate(eval_fn, variables, ds.test, mesh, batch_size, sigma=float(sigma),
                         key=jax.random.key(1000 + d)) for d in range(draws)]
        out["sigmas"][f"{sigma:g}"] = {"mean": float(np.mean(accs)), "std": float(np.std(accs)),
                                       "draws": accs}
    grad_fn = make_grad_norm_fn(model, ds.mean, ds.std)
    total = sum(float(grad_fn(variables, b))
                for b in data.eval_batches(ds.test, batch_size, mesh))
    out["grad_norm"] = total / len(ds.test)
    return out


def run(p: RobustnessPreset, workdir: Path, *, progress: bool = True, mesh=None,
        data_dir=None, val_fraction: float = 0.1) -> list[dict]:
    """Trains and evaluates every model row (resumable); writes the outputs; returns rows."""
    mesh = parallel.make_mesh() if mesh is None else mesh
    workdir.mkdir(parents=True, exist_ok=True)
    ds = data.load(p.dataset, image_size=p.image_size, val_fraction=val_fraction,
                   data_dir=data_dir)
    print(f"{ds.name}: {len(ds.train)} train / {len(ds.val)} val / {len(ds.test)} test, "
          f"{ds.num_classes} classes, {parallel.process_count_str(mesh)}")
    specs = model_rows(p)
    rows = []
    bar = tqdm(total=len(specs), desc="models", position=0, dynamic_ncols=True,
               disable=not progress)
    try:
        for spec in specs:
            bar.set_description(f"models [{spec.name}]")
            cfg = TrainConfig(model=p.model, model_options=spec.model_options,
                              objective=spec.objective,
                              optim=dataclasses.replace(p.optim, weight_decay=spec.weight_decay),
                              seed=p.seed, max_steps=p.max_steps,
                              checkpoint_every=p.checkpoint_every, progress=progress)
            run_dir = workdir / "runs" / spec.name
            try:
                res = train_and_evaluate(cfg, ds.train, {"val": ds.val, "test": ds.test},
                                         num_classes=ds.num_classes, mean=ds.mean, std=ds.std,
                                         workdir=run_dir, mesh=mesh, desc=spec.name)
            except NonFiniteLossError as e:
                raise NonFiniteLossError(f"model {spec.name}: {e}") from e
            noise_path = run_dir / NOISE_FILE
            if noise_path.exists():
                noise = json.loads(noise_path.read_text())
            else:
                model, variables = final_variables(run_dir, cfg, ds.num_classes, ds.image_shape,
                                                   mesh=mesh)
                noise = noise_evaluation(model, variables, ds, p, mesh, cfg.eval_batch_size)
                noise_path.write_text(json.dumps(noise, indent=1))
            for sigma, acc in noise["sigmas"].items():
                rows.append({"model": spec.name, "sigma": float(sigma), "accuracy": acc["mean"],
                             "accuracy_std": acc["std"], "draws": len(acc["draws"]),
                             "clean_val_accuracy": res.accuracy["val"],
                             "grad_norm": noise["grad_norm"],
                             **{f"final_{k}": v for k, v in res.final_metrics.items()},
                             "steps": res.steps})
            write_results(rows, specs, p, workdir)
            bar.update(1)
    finally:
        bar.close()
    return rows


def write_results(rows: list[dict], specs: list[ModelRow], p: RobustnessPreset,
                  workdir: Path) -> str:
    """robustness.{csv,md,png} from the rows so far; returns the markdown."""
    report.write_csv(rows, workdir / "robustness.csv")
    labels = {s.name: s.label for s in specs}
    sigmas = [float(s) for s in p.sigmas]
    header = "| Noise std. dev. → | " + " | ".join(f"{s:g}" for s in sigmas) + \
        " | ‖∇ₓS^y‖ (clean) |"
    best = {s: max((r["accuracy"] for r in rows if r["sigma"] == s), default=None)
            for s in sigmas}
    lines = [header, "|" + "---|" * (len(sigmas) + 2)]
    for spec in specs:
        mine = {r["sigma"]: r for r in rows if r["model"] == spec.name}
        if not mine:
            continue
        cells = []
        for s in sigmas:
            r = mine.get(s)
            if r is None:
                cells.append("–")
                continue
            text = f"{100 * r['accuracy']:.2f}"
            if r["draws"] > 1:
                text += f" ± {100 * r['accuracy_std']:.2f}"
            cells.append(f"**{text}**" if r["accuracy"] == best[s] else text)
        grad = next(iter(mine.values()))["grad_norm"]
        lines.append(f"| {labels[spec.name]} | " + " | ".join(cells) + f" | {grad:.3g} |")
    md = (f"# Robustness to Gaussian input noise ({p.dataset}, {p.model})\n\n"
          f"Test accuracy (%) with noise of std σ added to the normalised images; mean ± std "
          f"over {p.noise_draws} draws; best per column in bold. Jacobian-norm estimator: "
          f"`{p.estimator}`.\n\n" + "\n".join(lines) + "\n")
    (workdir / "robustness.md").write_text(md)
    report.line_plot(rows, workdir / "robustness.png", line_key="model", x_key="sigma",
                     y_key="accuracy", line_order=[s.name for s in specs], x_order=sigmas,
                     line_labels=labels, xlabel="noise std. dev. σ (normalised units)",
                     ylabel="test accuracy (%)", title=f"Noise robustness on {p.dataset}",
                     logx=False)
    return md


def parse_args(argv=None) -> tuple[argparse.Namespace, RobustnessPreset]:
    p = argparse.ArgumentParser(description="Table 2 of Srinivas & Fleuret (2018).",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__)
    p.add_argument("--preset", default="quick", choices=sorted(PRESETS))
    cli.add_data_args(p, default=None)
    p.add_argument("--workdir", default="runs/robustness")
    p.add_argument("--lambdas", default=None, help="comma list of λ, e.g. 0,0.1,1,10")
    p.add_argument("--sigmas", default=None, help="comma list of σ, e.g. 0,0.1,0.2")
    p.add_argument("--noise-draws", type=int, default=None)
    p.add_argument("--weight-decay", type=float, default=None, help="ℓ2 baseline γ (0: skip)")
    p.add_argument("--dropout", type=float, default=None, help="dropout baseline p (0: skip)")
    p.add_argument("--estimator", default=None, choices=ESTIMATORS)
    p.add_argument("--width-multiplier", type=float, default=None)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--checkpoint-every", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    cli.add_optim_args(p, default=None)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    pre = PRESETS[args.preset]()
    changes = {}
    if args.dataset:
        changes["dataset"] = args.dataset
    for flag in ("lambdas", "sigmas"):
        text = getattr(args, flag)
        if text:
            vals = cli.parse_list(text, float)
            if not all(isinstance(v, float) and v >= 0 for v in vals):
                p.error(f"--{flag} takes non-negative numbers, got {text!r}")
            changes[flag] = vals
    if args.noise_draws is not None:
        if args.noise_draws < 1:
            p.error("--noise-draws must be >= 1")
        changes["noise_draws"] = args.noise_draws
    for flag in ("weight_decay", "dropout"):
        v = getattr(args, flag)
        if v is not None:
            if v < 0 or (flag == "dropout" and v >= 1):
                p.error(f"--{flag.replace('_', '-')} out of range: {v}")
            changes[flag] = v or None
    for flag in ("estimator", "max_steps", "checkpoint_every", "seed"):
        if getattr(args, flag) is not None:
            changes[flag] = getattr(args, flag)
    if args.width_multiplier is not None:
        changes["model_options"] = {**pre.model_options, "width_multiplier": args.width_multiplier}
    try:
        changes["optim"] = cli.optim_from_args(args, pre.optim)
    except ValueError as e:
        p.error(str(e))
    return args, dataclasses.replace(pre, **changes)


def main(argv=None):
    args, preset = parse_args(argv)
    workdir = cli.prepare_workdir(args.workdir, preset)
    try:
        run(preset, workdir, progress=not args.no_progress, data_dir=args.data_dir,
            val_fraction=args.val_fraction)
    except (FileNotFoundError, ValueError, NonFiniteLossError) as e:
        cli.fail(str(e))
    print((workdir / "robustness.md").read_text())
    print(f"wrote {workdir / 'robustness.csv'}, {workdir / 'robustness.md'}, "
          f"{workdir / 'robustness.png'}")


if __name__ == "__main__":
    main()
