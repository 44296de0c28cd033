"""Trains a teacher on a full training split and saves it as an Orbax teacher artifact.

    python -m experiments.train_teacher --dataset digits --arch vgg9 --workdir runs/teacher
    python -m experiments.train_teacher --preset paper --data-dir DIR

Writes ``config.json``, the artifact (``WORKDIR/artifact``) and resumable checkpoints
(``WORKDIR/run``): rerunning the same command continues from the last checkpoint.
"""

from __future__ import annotations

from experiments.configs import train_teacher as configs
from jkt import cli
from jkt.grids import teacher as teacher_lib
from jkt.train import NonFiniteLossError

FLAGS = (
    *cli.data_flags(),
    cli.Flag("--workdir", "workdir", "output directory (artifact/ and run/)"),
    cli.Flag("--out", "workdir", "same as --workdir"),
    cli.Flag("--arch", "arch", "teacher architecture (vgg4, vgg9, resnet34)"),
    cli.Flag("--width-multiplier", "model_options.width_multiplier", "channel width"),
    *cli.optim_flags(who="teacher"),
    cli.Flag("--max-steps", "max_steps", "cap on training steps"),
    cli.Flag("--seed", "seed", "initialisation and data-order seed"),
    cli.Flag("--checkpoint-every", "checkpoint_every", "steps between checkpoints"),
    cli.Flag("--trust-teacher", "trust_teacher", "use an artifact in --workdir that has no "
             "checksum (from an older jkt) unverified", const=True),
    cli.Flag("--no-progress", "progress", "no progress bar", const=False),
)


def parse_config(argv=None) -> teacher_lib.TeacherConfig:
    return cli.parse(argv, configs, FLAGS, description=__doc__.split("\n")[0],
                     epilog=__doc__)


def main(argv=None):
    cfg = parse_config(argv)
    return cli.main(cfg, teacher_lib.run, errors=(NonFiniteLossError,))


if __name__ == "__main__":
    main()
