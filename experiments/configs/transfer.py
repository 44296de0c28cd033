"""Presets of ``python -m experiments.transfer`` (paper §5, §6.3, Tables 3-5).

Each preset's docstring gives the exact command and the expected run time.
"""

from __future__ import annotations

import dataclasses

from jkt.train import MIT_RECIPE, OptimConfig

# Table 3 rows, in the paper's order.
TRANSFER_METHODS = ("ce", "oracle", "ce+act", "ce+act+jac", "ce+act+att", "ce+act+att+attjac")
# Table 5 columns: label -> pooling window as a fraction of the attention-map size.
POOL_WINDOWS = {"full": 1.0, "s/3": 1 / 3, "s/5": 0.2, "s/7": 1 / 7, "none": None}


@dataclasses.dataclass(frozen=True)
class TransferPreset:
    """A Table-3 grid (plus optional Table-4/5 ablations) of two-head students.

    Attributes:
      dataset: ``jkt.data.load`` name (``digits``, ``folder:PATH``, ...).
      source_classes: class names (or ids) of ``dataset`` the teacher and the oracle's
        pretrained student are trained on; ``None`` when the teacher comes from elsewhere
        (``--teacher``, e.g. ImageNet) and all of ``dataset`` is the target.
      target_classes: the student's target classes; ``None``: every class not in
        ``source_classes``.
      student, teacher: model names; ``*_options`` their ``jkt.models.create`` options
        (the student's ``source_classes`` is set from the teacher).
      methods: names from ``TRANSFER_METHODS``.
      n_per_class: target images per class (``"full"``: the whole training split).
      seeds: one run per seed (subset, init and data order).
      optim / teacher_optim: student / teacher (and source-pretrained student) optimiser.
      max_steps / teacher_max_steps: optional caps on steps.
      loss_weight: weight of every active term (app. 10.2: 1, or 10 for MIT).
      pool_fraction: attention-Jacobian pooling window / feature size (0.2 = size/5).
      att_pairs: ``"teacher_tap:student_tap"`` pairs for attention matching; ``None``:
        every pair of equal spatial size (Zagoruyko & Komodakis).
      att_jac_pair: the pair for the attention-map Jacobian; ``None``: the shallowest
        equal-size pair ("feature level 1" of app. 10.2).
      depth_pairs: Table-4 ablation, one run per pair; ``("auto",)`` for every pair.
      pool_windows: Table-5 ablation, labels of ``POOL_WINDOWS``.
      ablation_n: points per class of the ablations (10 in the paper).
      image_size: images are resized to this square size.
      checkpoint_every / log_every: steps between a run's checkpoints / metric lines.
    """

    dataset: str = "digits"
    source_classes: tuple | None = ("0", "1", "2", "3", "4")
    target_classes: tuple | None = None
    student: str = "vgg9"
    student_options: dict = dataclasses.field(default_factory=dict)
    teacher: str = "resnet34"
    teacher_options: dict = dataclasses.field(default_factory=lambda: {"small_stem": True})
    methods: tuple[str, ...] = TRANSFER_METHODS
    n_per_class: tuple = (5, 10, 25, 50)
    seeds: tuple[int, ...] = (0, 1)
    optim: OptimConfig = OptimConfig("adam", 1e-3, (0.8,), epochs=200, batch_size=32)
    teacher_optim: OptimConfig = OptimConfig("adam", 1e-3, (0.8,), epochs=15, batch_size=128)
    max_steps: int | None = None
    teacher_max_steps: int | None = None
    loss_weight: float = 1.0
    pool_fraction: float | None = 0.2
    att_pairs: tuple[str, ...] | None = None
    att_jac_pair: str | None = None
    depth_pairs: tuple[str, ...] = ()
    pool_windows: tuple[str, ...] = ()
    ablation_n: int | str = 10
    image_size: int = 32
    checkpoint_every: int = 1000
    log_every: int = 50


def quick() -> TransferPreset:
    """Offline default, an analogue: scikit-learn's digits 0-4 are the "source" task,
    5-9 the target. Tiny ResNet teacher (small stem, one block per stage, 1/8 width) and
    1/8-width two-head VGG-9 student, 32x32 inputs.

        python -m experiments.transfer

    Teacher and source-pretrained VGG-9: 300 steps each (Adam 1e-3, batch 64); then the
    6 Table-3 methods × n ∈ {5, 10} × 1 seed, 150 steps each (Adam 3e-3, batch 32).
    About 5 minutes on 2 CPU cores (measured 5 min 6 s, most of it XLA compilation of the
    six objectives). Digits are easy: every method lands at 90-98 % test accuracy, so
    this preset checks the pipeline, not the paper's ordering of the methods.
    """
    return TransferPreset(
        dataset="digits",
        source_classes=("0", "1", "2", "3", "4"),
        student_options={"width_multiplier": 0.125},
        teacher_options={"small_stem": True, "stage_sizes": (1, 1, 1, 1),
                         "width_multiplier": 0.125},
        n_per_class=(5, 10),
        seeds=(0,),
        optim=OptimConfig("adam", 3e-3, (0.8,), epochs=1, batch_size=32),
        teacher_optim=OptimConfig("adam", 1e-3, (0.8,), epochs=1, batch_size=64),
        max_steps=150,
        teacher_max_steps=300,
        log_every=10,
    )


def cifar10() -> TransferPreset:
    """Split-CIFAR-10, an *analogue* of the paper's ImageNet -> MIT Scenes transfer.

        python -m experiments.transfer --preset cifar10 \\
            --dataset folder:../shared/data/cifar10/train.tar.xz

    A ResNet-34 (3x3 stem, no max-pool; full depth and width) is trained on airplane,
    automobile, bird, cat, deer (15 epochs, Adam 1e-3, batch 128) and is the teacher; the
    oracle's VGG-9 is pretrained on the same 5 classes. Students (two-head VGG-9, 5 target
    + 5 source outputs) learn dog, frog, horse, ship, truck from n ∈ {5, 10, 25, 50} images
    per class, 2 seeds, Adam 1e-3 for 200 epochs capped at 1,000 steps, batch 32.
    Add the ablations with ``--depth-pairs auto --pool-windows all``.
    Estimated 30-60 minutes on one modern GPU (48 runs; not measured here); impractical on
    2 CPU cores. For a CPU-sized taste:
    ``--width-multiplier 0.125 --teacher-stage-sizes 1,1,1,1 --max-steps 200
    --teacher-max-steps 400 --n-per-class 5,25 --seeds 0`` (measured: 3 min 38 s; teacher
    64 % on its 5 classes, students 48-56 % at n=5, 58-64 % at n=25, oracle best).
    """
    return TransferPreset(
        dataset="folder:../shared/data/cifar10/train.tar.xz",
        source_classes=("airplane", "automobile", "bird", "cat", "deer"),
        target_classes=("dog", "frog", "horse", "ship", "truck"),
        teacher_options={"small_stem": True},
        n_per_class=(5, 10, 25, 50),
        seeds=(0, 1),
        max_steps=1000,
        log_every=25,
    )


def mit() -> TransferPreset:
    """The paper's Table 3: ImageNet ResNet-34 teacher -> two-head VGG-9 on MIT Indoor 67.

    What you need (nothing is downloaded):

    1. MIT Indoor 67 (``indoorCVPR_09.tar`` from the dataset's page, plus the official
       ``TrainImages.txt`` / ``TestImages.txt``): a folder (or the archive) holding
       ``Images/<class>/<image>.jpg`` with the two lists inside it or next to it; the
       loader then uses the official 80/20 split.
    2. torchvision's ImageNet ResNet-34 weights (``resnet34-b627a593.pth`` or a
       ``.safetensors`` copy), converted once (seconds):
       ``python -m experiments.import_torchvision --weights resnet34-b627a593.pth
       --out teachers/resnet34``
    3. Only for the ``oracle`` row: an ImageNet-pretrained VGG-9 (with BatchNorm,
       ``jkt.models`` layout, 1000 classes) saved as a teacher artifact
       (``jkt.checkpoint.save_teacher``, arch ``vgg9``), passed as ``--source-student``.
       Without it, leave ``oracle`` out of ``--methods``.

    Then:

        python -m experiments.transfer --preset mit --dataset folder:PATH/TO/MIT \\
            --teacher teachers/resnet34 --source-student teachers/vgg9_imagenet
        # Tables 4 and 5 (10 images per class):
        python -m experiments.transfer --preset mit --dataset folder:PATH/TO/MIT \\
            --teacher teachers/resnet34 --methods none \\
            --depth-pairs auto --pool-windows all

    224x224 inputs, SGD momentum 0.9, lr 1e-3 /10 after epochs 40 and 60 of 75, batch 8
    (app. 10.3); every loss weight 10 (app. 10.2); attention at every pair of equal
    spatial size (stage1:pool2, stage2:pool3, stage3:pool4, stage4:pool5), its Jacobian
    at stage1:pool2 (after the first residual block / second max-pool) with a size/5
    pooling window; n ∈ {5, 10, 25, 50, full}, 2 seeds. Days on a CPU; on one modern
    GPU roughly 1-3 days for the whole grid (the full-data runs dominate: ~4,700 images
    × 75 epochs with double backprop through both networks per step).
    """
    return TransferPreset(
        dataset="folder:MIT_Indoor_67",
        source_classes=None,
        teacher_options={},
        n_per_class=(5, 10, 25, 50, "full"),
        seeds=(0, 1),
        optim=MIT_RECIPE,
        loss_weight=10.0,
        image_size=224,
        log_every=50,
    )


PRESETS = {"quick": quick, "cifar10": cifar10, "mit": mit}
