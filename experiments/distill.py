"""Table 1: distillation with Jacobian matching, one command.

    python -m experiments.distill                              # offline quick grid (digits)
    python -m experiments.distill --preset paper --data-dir DIR
    python -m experiments.distill --preset cifar10 --methods ce,ce+jac --lr 3e-3
    python -m experiments.distill --config=experiments/configs/distill.py:paper \\
        --config.optim.learning_rate=3e-3

Trains (or restores, ``--teacher DIR``) a teacher, then one student per method ×
points-per-class × seed (``jkt.grids.distill``). Everything goes under ``--workdir``:
``config.json`` (the resolved config), ``results.csv`` (one row per run), ``results.md``
(the paper's table, mean ± std over seeds, best per column in bold) and ``results.png``.
Killed at any point, the same command resumes: finished runs are skipped, the
interrupted one continues from its last checkpoint.
"""

from __future__ import annotations

from experiments.configs import distill as configs
from jkt import cli, paths, workdir
from jkt.grids import distill
from jkt.train import NonFiniteLossError

FLAGS = (
    *cli.data_flags(),
    cli.Flag("--workdir", "workdir", "output directory (resumed if it exists)"),
    cli.Flag("--teacher", "teacher_artifact", "teacher artifact directory (default: train one)"),
    cli.Flag("--methods", "methods", "comma list of ce, ce+act, ce+jac, ce+act+jac, act, act+jac "
             "(Table 1) and kd, ce+kd, ce+kd+jac, kd+jac, ce+act_noise, act_noise"),
    cli.Flag("--n-per-class", "n_per_class", "comma list of points per class, e.g. 1,5,10,full"),
    cli.Flag("--seeds", "seeds", "comma list of seeds, e.g. 0,1,2"),
    cli.Flag("--estimator", "estimator", "label | top | random | rademacher | sphere | jvp | full"),
    cli.Flag("--label-free-estimator", "label_free_estimator",
             "Jacobian estimator of the act+jac row (no labels; default top)"),
    cli.Flag("--normalize", "normalize", "match Jacobians in the eq.-10 normalised form",
             const=True),
    cli.Flag("--temperature", "temperature", "T of the soft-target rows (kd, kd+jac, ...)"),
    cli.Flag("--noise-sigma", "noise_sigma", "input-noise std of the act_noise rows (and of "
             "the analytic Jacobian rows with --jacobian-as-noise)"),
    cli.Flag("--noise-draws", "noise_draws", "noisy copies of each batch per step"),
    cli.Flag("--jacobian-as-noise", "jacobian_as_noise", "Jacobian rows in prop. 1's form for "
             "noise --noise-sigma: weight sigma^2 on all outputs", const=True),
    cli.Flag("--student", "student", "student architecture (vgg4, vgg9, resnet34)"),
    cli.Flag("--width-multiplier", ("student_options.width_multiplier",
                                    "teacher_options.width_multiplier"),
             "channel width of both networks"),
    cli.Flag("--max-steps", "max_steps", "cap on steps per student run"),
    cli.Flag("--teacher-max-steps", "teacher_max_steps", "cap on teacher steps"),
    cli.Flag("--checkpoint-every", "checkpoint_every", "steps between checkpoints of a run"),
    *cli.optim_flags(),
    *cli.optim_flags("teacher-", "teacher_optim", "teacher"),
    cli.Flag("--fusion", "fusion", "unroll | vmap: fuse the methods of one (n, seed) cell "
             "that need the same passes into one jitted step; off: one run at a time"),
    cli.Flag("--fusion-groups", "fusion_groups", "passes | all: which methods of a cell fuse"),
    cli.Flag("--dtype", "dtype", "float32 | bfloat16: compute dtype of the student steps"),
    cli.Flag("--trust-teacher", "trust_teacher", "use teacher artifacts without a checksum "
             "(hand-made or from an older jkt) unverified", const=True),
    cli.Flag("--no-progress", "progress", "no progress bars", const=False),
)


def parse_config(argv=None) -> distill.DistillConfig:
    return cli.parse(argv, configs, FLAGS, description="Table 1 of Srinivas & Fleuret (2018).",
                     epilog=__doc__)


def main(argv=None) -> list[dict]:
    cfg = parse_config(argv)
    rows = cli.main(cfg, distill.run, errors=(NonFiniteLossError,))
    if not workdir.is_writer():
        return rows
    out = paths.as_dir(cfg.workdir)
    print((out / "results.md").read_text())
    print("wrote " + ", ".join(str(out / f) for f in distill.report.FILES))
    return rows


if __name__ == "__main__":
    main()
