"""Tests of ``jkt.train.teacher``: the oracle's initialisation from a source-task network
(teacher training itself runs end to end in distill_test and transfer_test)."""

import jax
import numpy as np
import pytest
from train_fixtures import random_variables

from jkt import models
from jkt.train.teacher import oracle_variables

TINY_S = {"width_multiplier": 1 / 16}


def test_oracle_variables_copy_trunk_and_source_head_only():
    student = models.create("vgg9", 2, source_classes=3, **TINY_S)
    pretrained_model = models.create("vgg9", 3, **TINY_S)
    pre = random_variables(pretrained_model)
    fresh = models.abstract_variables(student, (32, 32, 3))
    got = oracle_variables(student, pre, (32, 32, 3), seed=0)
    for k in pre["params"]:
        if k != "fc":
            jax.tree.map(np.testing.assert_array_equal, got["params"][k], pre["params"][k])
    jax.tree.map(np.testing.assert_array_equal, got["params"]["fc_source"], pre["params"]["fc"])
    assert got["params"]["fc"]["kernel"].shape == fresh["params"]["fc"]["kernel"].shape
    head, pre_head = got["params"]["fc"]["kernel"], pre["params"]["fc"]["kernel"]
    assert not np.allclose(head, pre_head[:, :2])
    wider = models.create("vgg9", 2, source_classes=4, **TINY_S)
    with pytest.raises(ValueError, match="does not fit"):
        oracle_variables(wider, pre, (32, 32, 3))
