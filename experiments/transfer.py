"""Tables 3-5: transfer learning with Jacobian matching (§5, §6.3), one command.

    python -m experiments.transfer                     # offline quick grid (digits 0-4 -> 5-9)
    python -m experiments.transfer --preset cifar10
    python -m experiments.transfer --preset mit --dataset folder:MIT --teacher DIR ...
    python -m experiments.transfer --methods none --depth-pairs auto --pool-windows all

A pretrained teacher of one architecture and a two-head student of another; per method ×
images per class × seed, one student run (``jkt.grids.transfer``): ``ce``; ``oracle`` (CE
from a student pretrained on the source task); ``ce+act`` (LwF); ``ce+act+jac`` (+
Jacobians, teacher's top output); ``ce+act+att`` (+ attention maps, eq. 8-9);
``ce+act+att+attjac`` (+ the attention-map Jacobian, eq. 10). Ablations: ``--depth-pairs``
(Table 4) and ``--pool-windows`` (Table 5). The ``quick`` and ``cifar10`` presets are
*analogues* (source and target tasks are class subsets of one dataset); ``mit`` is the
paper's ImageNet -> MIT Scenes setting. Writes ``config.json``, ``transfer.{csv,md,png}``
and ``ablation_{depth,pool}.*`` under ``--workdir``; resumable like distill.
"""

from __future__ import annotations

from experiments.configs import transfer as configs
from jkt import cli, paths, workdir
from jkt.grids import transfer
from jkt.train import NonFiniteLossError

FLAGS = (
    *cli.data_flags(),
    cli.Flag("--workdir", "workdir", "output directory (resumed if it exists)"),
    cli.Flag("--source-classes", "source_classes",
             "comma list of class names/ids the teacher is trained on, or 'none'"),
    cli.Flag("--target-classes", "target_classes",
             "comma list of the student's classes (default: all the others)"),
    cli.Flag("--teacher", "teacher_artifact",
             "teacher artifact directory (default: train one on the source classes)"),
    cli.Flag("--source-student", "source_student",
             "artifact of the source-pretrained student for 'oracle' (default: train one)"),
    cli.Flag("--methods", "methods", "comma list of ce, oracle, ce+act, ce+act+jac, "
             "ce+act+att, ce+act+att+attjac, or 'none'"),
    cli.Flag("--n-per-class", "n_per_class", "comma list, e.g. 5,10,25,50,full"),
    cli.Flag("--seeds", "seeds", "comma list of seeds, e.g. 0,1"),
    cli.Flag("--att-pairs", "att_pairs",
             "TEACHER_TAP:STUDENT_TAP,... for attention (default: all equal-size pairs)"),
    cli.Flag("--att-jac-pair", "att_jac_pair", "TEACHER_TAP:STUDENT_TAP for the attention "
             "Jacobian (default: shallowest equal-size pair)"),
    cli.Flag("--pool-fraction", "pool_window", "attention-Jacobian pooling window: full, s/3, "
             "s/5, s/7, none or a fraction"),
    cli.Flag("--jacobian-row", "jacobian_row", "attention_map (app. 10.2) | output: what the "
             "ce+act+jac row matches"),
    cli.Flag("--depth-attention", "depth_attention", "Table 4: all_pairs (attention at every "
             "pair, only the Jacobian moves) | same_pair (both move)"),
    cli.Flag("--depth-pairs", "depth_pairs", "Table 4: TEACHER_TAP:STUDENT_TAP,... or 'auto'"),
    cli.Flag("--pool-windows", "pool_windows",
             "Table 5: comma list of full,s/3,s/5,s/7,none or 'all'"),
    cli.Flag("--ablation-n", "ablation_n", "images per class of the ablations"),
    cli.Flag("--loss-weight", "loss_weight", "weight of every active term (app. 10.2: 1; "
             "10 for MIT)"),
    cli.Flag("--width-multiplier", ("student_options.width_multiplier",
                                    "teacher_options.width_multiplier"),
             "channel width of both networks"),
    cli.Flag("--teacher-stage-sizes", "teacher_options.stage_sizes",
             "ResNet blocks per stage of a trained teacher, e.g. 1,1,1,1"),
    cli.Flag("--max-steps", "max_steps", "cap on steps per student run"),
    cli.Flag("--teacher-max-steps", "teacher_max_steps", "cap on teacher steps"),
    cli.Flag("--checkpoint-every", "checkpoint_every", "steps between checkpoints"),
    cli.Flag("--log-every", "log_every", "steps between metric lines"),
    *cli.optim_flags(),
    *cli.optim_flags("teacher-", "teacher_optim", "teacher"),
    cli.Flag("--trust-teacher", "trust_teacher", "use teacher artifacts without a checksum "
             "(hand-made or from an older jkt) unverified", const=True),
    cli.Flag("--no-progress", "progress", "no progress bars", const=False),
)


def parse_config(argv=None) -> transfer.TransferConfig:
    return cli.parse(argv, configs, FLAGS, description="Tables 3-5 of Srinivas & Fleuret (2018).",
                     epilog=__doc__)


def main(argv=None) -> dict[str, list[dict]]:
    cfg = parse_config(argv)
    rows = cli.main(cfg, transfer.run, errors=(NonFiniteLossError,))
    if not workdir.is_writer():
        return rows
    written, out = [], paths.as_dir(cfg.workdir)
    for kind, stem in transfer.report.STEMS.items():
        if rows[kind]:
            print((out / f"{stem}.md").read_text())
            written += [str(out / f"{stem}.{ext}") for ext in ("csv", "md", "png")]
    print("wrote " + ", ".join(written))
    return rows


if __name__ == "__main__":
    main()
