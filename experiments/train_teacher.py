"""Trains a teacher on a full training split and saves it as an Orbax teacher artifact.

    python -m experiments.train_teacher --dataset digits --arch vgg9 --out runs/teacher
    python -m experiments.train_teacher --dataset cifar100 --data-dir DIR --epochs 500

Resumable: rerunning the same command continues from the last checkpoint.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jkt import checkpoint, parallel
from jkt.data import Dataset
from jkt.train import CIFAR_RECIPE, Objective, OptimConfig, TrainConfig, train_and_evaluate
from jkt.train.loop import final_variables


def train_teacher(ds: Dataset, out: Path, *, arch: str = "vgg9", model_options: dict | None = None,
                  optim: OptimConfig = CIFAR_RECIPE, max_steps: int | None = None, seed: int = 0,
                  progress: bool = True, mesh=None) -> checkpoint.Teacher:
    """Trains ``arch`` with cross-entropy on ``ds.train`` and writes a teacher artifact to
    ``out/artifact`` (checkpoints under ``out/run``). Returns the restored teacher; an
    existing artifact is returned without training."""
    out = Path(out)
    artifact = out / "artifact"
    if artifact.exists():
        return checkpoint.restore_teacher(artifact, expect_arch=arch)
    cfg = TrainConfig(model=arch, model_options=dict(model_options or {}),
                      objective=Objective(ce=1.0), optim=optim, seed=seed, max_steps=max_steps,
                      progress=progress)
    result = train_and_evaluate(cfg, ds.train, {"val": ds.val, "test": ds.test},
                                num_classes=ds.num_classes, mean=ds.mean, std=ds.std,
                                workdir=out / "run", mesh=mesh, desc=f"teacher {arch}")
    _, variables = final_variables(out / "run", cfg, ds.num_classes, ds.image_shape, mesh=mesh)
    meta = checkpoint.TeacherMeta(
        arch=arch, num_classes=ds.num_classes, input_size=ds.image_shape, mean=tuple(ds.mean),
        std=tuple(ds.std), dataset=ds.name, model_options=dict(model_options or {}),
        extra={"val_accuracy": result.accuracy["val"], "test_accuracy": result.accuracy["test"],
               "steps": result.steps, "class_names": list(ds.class_names)})
    checkpoint.save_teacher(artifact, variables, meta)
    print(f"teacher {arch}: val {result.accuracy['val']:.2%}, test {result.accuracy['test']:.2%}"
          f" -> {artifact}")
    return checkpoint.restore_teacher(artifact, expect_arch=arch)


def main(argv=None):
    from experiments import cli

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    cli.add_data_args(p)
    p.add_argument("--arch", default="vgg9", help="teacher architecture (default: vgg9)")
    p.add_argument("--width-multiplier", type=float, default=1.0)
    p.add_argument("--out", default="runs/teacher", help="output directory")
    cli.add_optim_args(p, default=CIFAR_RECIPE)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    cli.setup_jax(Path(args.out))
    ds = cli.load_dataset(args)
    optim = cli.optim_from_args(args, CIFAR_RECIPE)
    opts = {"width_multiplier": args.width_multiplier} if args.width_multiplier != 1.0 else {}
    train_teacher(ds, Path(args.out), arch=args.arch, model_options=opts, optim=optim,
                  max_steps=args.max_steps, seed=args.seed, mesh=parallel.make_mesh())


if __name__ == "__main__":
    main()


__all__ = ["train_teacher"]
