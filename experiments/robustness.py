"""Table 2: robustness to Gaussian input noise of Jacobian-norm-penalised networks.

    python -m experiments.robustness                          # offline quick run (digits)
    python -m experiments.robustness --preset paper --data-dir DIR
    python -m experiments.robustness --lambdas 0,1 --config.optim.learning_rate=1e-3

Trains one network per model row (Jacobian-norm penalty at each λ, ℓ2 and dropout
baselines; ``jkt.grids.robustness``), evaluates each under Gaussian noise on the
normalised test images and reports its mean clean input-gradient norm. Writes
``config.json``, ``robustness.csv``, ``robustness.md`` (Table 2 layout) and
``robustness.png`` under ``--workdir``. Resumable like distill.
"""

from __future__ import annotations

from experiments.configs import robustness as configs
from jkt import cli, paths, workdir
from jkt.grids import robustness
from jkt.train import NonFiniteLossError

FLAGS = (
    *cli.data_flags(),
    cli.Flag("--workdir", "workdir", "output directory (resumed if it exists)"),
    cli.Flag("--lambdas", "lambdas", "comma list of Jacobian-norm strengths λ, e.g. 0,0.1,1,10"),
    cli.Flag("--sigmas", "sigmas", "comma list of noise std. devs σ, e.g. 0,0.1,0.2"),
    cli.Flag("--noise-draws", "noise_draws", "noise draws per σ"),
    cli.Flag("--weight-decay", "weight_decay", "ℓ2 baseline γ (0: skip the baseline)"),
    cli.Flag("--dropout", "dropout", "dropout baseline p (0: skip the baseline)"),
    cli.Flag("--estimator", "estimator", "label | top | random | rademacher | sphere | jvp | full"),
    cli.Flag("--jac-norm-form", "jac_norm_form", "logit (prop. 2, default) | softmax (eq. 3): "
             "what the lambda rows penalise"),
    cli.Flag("--model", "model", "architecture (vgg4, vgg9, resnet34)"),
    cli.Flag("--width-multiplier", "model_options.width_multiplier", "channel width"),
    cli.Flag("--max-steps", "max_steps", "cap on steps per model"),
    cli.Flag("--checkpoint-every", "checkpoint_every", "steps between checkpoints"),
    cli.Flag("--seed", "seed", "initialisation and data-order seed"),
    *cli.optim_flags(),
    cli.Flag("--no-progress", "progress", "no progress bars", const=False),
)


def parse_config(argv=None) -> robustness.RobustnessConfig:
    return cli.parse(argv, configs, FLAGS, description="Table 2 of Srinivas & Fleuret (2018).",
                     epilog=__doc__)


def main(argv=None) -> list[dict]:
    cfg = parse_config(argv)
    rows = cli.main(cfg, robustness.run, errors=(NonFiniteLossError,))
    if not workdir.is_writer():
        return rows
    out = paths.as_dir(cfg.workdir)
    print((out / "robustness.md").read_text())
    print("wrote " + ", ".join(str(out / f) for f in robustness.report.FILES))
    return rows


if __name__ == "__main__":
    main()
