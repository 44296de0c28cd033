"""Flax models of the paper: VGG-4 / VGG-9 (appendix 10.1) and ResNet-34 (§5.2).

Every model is called as ``model.apply(variables, x, train=False, return_features=False)``
on NHWC float inputs and returns logits ``(B, num_classes)`` (or ``(logits, features)``).
"""

from jkt.models.registry import (
    MODELS,
    abstract_variables,
    create,
    feature_shapes,
    param_count,
)
from jkt.models.resnet import BasicBlock, ResNet, ResNet34
from jkt.models.taps import auto_pairs, pair_name, parse_pair
from jkt.models.teacher import Teacher, TeacherMeta
from jkt.models.vgg import VGG, VGG4, VGG4_CONFIG, VGG9, VGG9_CONFIG

__all__ = [
    "MODELS",
    "Teacher",
    "TeacherMeta",
    "VGG",
    "VGG4",
    "VGG9",
    "VGG4_CONFIG",
    "VGG9_CONFIG",
    "BasicBlock",
    "ResNet",
    "ResNet34",
    "abstract_variables",
    "auto_pairs",
    "create",
    "feature_shapes",
    "pair_name",
    "param_count",
    "parse_pair",
]
