"""Tests of ``jkt.models.taps``: pairing feature taps of two architectures."""

import pytest

from jkt import models
from jkt.models.taps import auto_pairs, pair_name, parse_pair


def test_auto_pairs_reproduce_the_papers_224_pairing():
    """ResNet-34 (ImageNet stem) vs VGG-9 at 224x224: the pairs of §6.3.1 / Table 4."""
    t = models.feature_shapes(models.create("resnet34", 10, width_multiplier=1 / 16),
                              (224, 224, 3))
    s = models.feature_shapes(models.create("vgg9", 10, width_multiplier=1 / 16),
                              (224, 224, 3))
    pairs = auto_pairs(s, t)
    assert [pair_name(p) for p in pairs] == [
        "stage1:pool2", "stage2:pool3", "stage3:pool4", "stage4:pool5"]
    assert parse_pair("pool2:stage1", s, t) == ("pool2", "stage1")
    with pytest.raises(ValueError, match="unknown tap"):
        parse_pair("stage9:pool2", s, t)
