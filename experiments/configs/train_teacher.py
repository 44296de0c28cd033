"""Presets of ``python -m experiments.train_teacher``: ``get_config(name)`` returns a
:class:`jkt.grids.teacher.TeacherConfig`."""

from __future__ import annotations

from experiments.configs import distill
from jkt.data.types import DataConfig
from jkt.grids.teacher import TeacherConfig
from jkt.train.optim import OptimConfig


def default() -> TeacherConfig:
    """A full-width VGG-9 with app. 10.3's CIFAR recipe on the offline digits data."""
    return TeacherConfig()


def paper() -> TeacherConfig:
    """The paper's teacher, exactly the one ``distill --preset paper`` trains: VGG-9 on
    the whole official CIFAR-100 train split (50,000 images, no validation set, no
    augmentation), 500 epochs of one pass each (``optim.batching=epoch``), Adam 1e-3 ->
    1e-4 at epoch 400, batch 128, seed 0 (``tests/protocol_test.py`` compares the two).

        python -m experiments.train_teacher --preset paper --data-dir DIR

    Its artifact (``runs/teacher_cifar100/artifact``) can be passed to ``distill --preset
    paper --teacher``.
    """
    grid = distill.paper()
    return TeacherConfig(workdir="runs/teacher_cifar100", data=grid.data, arch=grid.teacher,
                         model_options=dict(grid.teacher_options), optim=grid.teacher_optim,
                         max_steps=grid.teacher_max_steps)


def imagenet_vgg9() -> TeacherConfig:
    """The oracle's ImageNet-pretrained VGG-9 (Table 3; docs/experiments.md): a full-width
    VGG-9 with a 1,000-class head trained on ImageNet's 1.28 M training images, streamed
    (``data.pipeline=stream``: each batch read and decoded when due, never all of it).

        python -m experiments.train_teacher --preset imagenet-vgg9 \
            --dataset folder:IMAGENET_DIR
        python -m experiments.transfer --preset mit --dataset folder:PATH/TO/MIT \
            --teacher teachers/resnet34 --source-student runs/vgg9_imagenet/artifact

    ``IMAGENET_DIR`` holds ``train/<wnid>/*.JPEG`` and, for the test accuracy,
    ``test/<wnid>/*.JPEG`` (the official validation images sorted into class folders,
    e.g. ``ln -s val test`` after torchvision's ``valprep.sh``; a ``val/`` folder is not
    read, and without ``test/`` 10 % of train is set aside as the test split). tfds'
    ``imagenet2012`` prepared in ArrayRecord format works too (``--dataset imagenet2012
    --data-dir DIR``; its ``validation`` split is the test split).

    Recipe: the standard ImageNet ResNet recipe of He et al. 2016 ("Deep Residual Learning
    for Image Recognition", §3.4) as torchvision's reference scripts run it
    (``references/classification``, their defaults): SGD with momentum 0.9, learning rate
    0.1 for batch 256 (0.1 × batch / 256: scale ``--lr`` with ``--batch-size``), weight
    decay 1e-4 (coupled ℓ2 on every parameter, as ``torch.optim.SGD``'s), divided by 10
    at epochs 30 and 60, 90 epochs of one pass each (``optim.batching=epoch``, the last
    batch short, as a ``DataLoader`` without ``drop_last``). No validation set (the whole
    train split trains). Inputs: 224 × 224, the shorter side resized to 224 and the
    central square kept (``data.resize=crop``, train and test), normalised by the
    train split's mean/std (over a fixed sample of 2,000 images); augmentation is jkt's
    on-device ``crop+flip`` (pad-4 random crop and horizontal flip), not torchvision's
    RandomResizedCrop: the one difference from the reference recipe.
    """
    return TeacherConfig(
        workdir="runs/vgg9_imagenet",
        data=DataConfig(name="folder:IMAGENET_DIR", image_size=224, validation="none",
                        augment="crop+flip", resize="crop", pipeline="stream"),
        arch="vgg9",
        optim=OptimConfig("sgd", 0.1, (30, 60), 0.1, epochs=90, batch_size=256,
                          momentum=0.9, weight_decay=1e-4, batching="epoch"),
        checkpoint_every=5000,
    )


PRESETS = {"default": default, "paper": paper, "imagenet-vgg9": imagenet_vgg9}


def get_config(name: str | None = None) -> TeacherConfig:
    from jkt.config import preset

    return preset(PRESETS, name, "default")
