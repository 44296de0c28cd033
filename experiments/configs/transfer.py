"""Presets of ``python -m experiments.transfer`` (paper §5, §6.3, Tables 3-5).

``get_config(name)`` returns a :class:`jkt.grids.transfer.TransferConfig`; any field can
then be overridden on the command line. Each preset's docstring gives the command.
"""

from __future__ import annotations

import dataclasses

from jkt.data import DataConfig
from jkt.grids.transfer import TransferConfig
from jkt.train import MIT_RECIPE, OptimConfig


def quick() -> TransferConfig:
    """Offline default, an analogue: scikit-learn's digits 0-4 are the "source" task,
    5-9 the target. Tiny ResNet teacher (small stem, one block per stage, 1/8 width) and
    1/8-width two-head VGG-9 student, 32x32 inputs.

        python -m experiments.transfer

    Teacher and source-pretrained VGG-9: 300 steps each (Adam 1e-3, batch 64); then the
    6 Table-3 methods × n ∈ {5, 10} × 1 seed, 150 steps each (Adam 3e-3, batch 32).
    Pad-4 crops, no flips (a flipped digit is not a digit). Digits are easy: every method
    lands at 90-98 % test accuracy, so this preset checks the pipeline, not the paper's
    ordering of the methods.
    """
    return TransferConfig(
        data=DataConfig("digits", augment="crop"),
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


def cifar10() -> TransferConfig:
    """Split-CIFAR-10, an *analogue* of the paper's ImageNet -> MIT Scenes transfer.

        python -m experiments.transfer --preset cifar10 \\
            --dataset folder:../shared/data/cifar10/train.tar.xz

    A ResNet-34 (3x3 stem, no max-pool; full depth and width) is trained on airplane,
    automobile, bird, cat, deer (15 epochs, Adam 1e-3, batch 128) and is the teacher; the
    oracle's VGG-9 is pretrained on the same 5 classes. Students (two-head VGG-9, 5 target
    + 5 source outputs) learn dog, frog, horse, ship, truck from n ∈ {5, 10, 25, 50} images
    per class, 2 seeds, Adam 1e-3 for 200 epochs capped at 1,000 steps, batch 32.
    Add the ablations with ``--depth-pairs auto --pool-windows all``.
    Sized for one GPU (48 runs). A CPU-sized version:
    ``--width-multiplier 0.125 --teacher-stage-sizes 1,1,1,1 --max-steps 200
    --teacher-max-steps 400 --n-per-class 5,25 --seeds 0`` (results in docs/results.md).
    """
    return TransferConfig(
        workdir="runs/transfer_cifar10",
        data=DataConfig("folder:../shared/data/cifar10/train.tar.xz"),
        source_classes=("airplane", "automobile", "bird", "cat", "deer"),
        target_classes=("dog", "frog", "horse", "ship", "truck"),
        teacher_options={"small_stem": True},
        n_per_class=(5, 10, 25, 50),
        seeds=(0, 1),
        max_steps=1000,
        log_every=25,
    )


def mit() -> TransferConfig:
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
       ``jkt.models`` layout, 1000 classes) as a teacher artifact, passed as
       ``--source-student``; ``python -m experiments.train_teacher --arch vgg9 --dataset
       folder:IMAGENET_DIR --image-size 224 ...`` trains one (docs/experiments.md, "The
       oracle's ImageNet-pretrained VGG-9"). Without it, leave ``oracle`` out of
       ``--methods``.

    Then:

        python -m experiments.transfer --preset mit --dataset folder:PATH/TO/MIT \\
            --teacher teachers/resnet34 --source-student teachers/vgg9_imagenet
        # Tables 4 and 5 (10 images per class):
        python -m experiments.transfer --preset mit --dataset folder:PATH/TO/MIT \\
            --teacher teachers/resnet34 --methods none \\
            --depth-pairs auto --pool-windows all

    224x224 inputs (shorter side resized to 224, central square kept; no augmentation: the
    paper names none), SGD momentum 0.9, lr 1e-3 /10 after epochs 40 and 60 of 75, batch 8
    (app. 10.3), an epoch one pass over the run's images (``optim.batching=epoch``: at n=5,
    41 batches of 8 and one of 7); every loss weight 10 (app. 10.2); attention at every pair
    of equal spatial size (stage1:pool2, stage2:pool3, stage3:pool4, stage4:pool5), its
    Jacobian at stage1:pool2 (after the first residual block / second max-pool: feature
    level 1) with a size/5 pooling window. "CE + match {activations + Jacobians}" matches
    that attention-map Jacobian (eq. 10) without attention matching
    (``--config.jacobian_row=output`` for the output Jacobian instead); Table 4 matches
    attention at every pair and moves only the Jacobian
    (``--config.depth_attention=same_pair`` moves both); every ablation run is Table 3's
    ``ce+act+att+attjac`` at 10 images per class (docs/reproduction.md, "Tables 4-5
    setting"). n ∈ {5, 10, 25, 50, full}, 2 seeds; "full" trains on the whole official
    ``TrainImages.txt`` list (80 per class, 5,360 images) without validation, a run on n <
    80 is validated on 8 other images per class not in its subset. The full-data runs
    dominate the cost: 5,360 images × 75 epochs with double backprop through both networks
    per step. results.md shows the paper's numbers beside ours.
    """
    return TransferConfig(
        workdir="runs/transfer_mit",
        data=DataConfig("folder:MIT_Indoor_67", image_size=224, validation="unused",
                        augment="none", resize="crop"),
        source_classes=None,
        teacher_options={},
        n_per_class=(5, 10, 25, 50, "full"),
        seeds=(0, 1),
        optim=dataclasses.replace(MIT_RECIPE, batching="epoch"),
        loss_weight=10.0,
        log_every=50,
        compare_to_paper=True,
    )


PRESETS = {"quick": quick, "cifar10": cifar10, "mit": mit}


def get_config(name: str | None = None) -> TransferConfig:
    """The preset ``name`` (default ``quick``)."""
    from jkt.config import preset

    return preset(PRESETS, name, "quick")
