"""Tests of ``jkt.data.classes``: source/target class subsets."""

import numpy as np
import pytest

from jkt import data
from jkt.data import Dataset, Split
from jkt.data.classes import source_target_split


def test_split_classes_filters_and_remaps():
    img = np.zeros((6, 4, 4, 3), np.uint8) + np.arange(6, dtype=np.uint8)[:, None, None, None]
    split = Split(img, np.array([0, 1, 2, 3, 2, 0]))
    ds = Dataset("x", split, split, split, ("a", "b", "c", "d"), (0, 0, 0), (1, 1, 1))
    src, tgt = source_target_split(ds, ("c", "a"), None)
    assert src.class_names == ("c", "a") and tgt.class_names == ("b", "d")
    np.testing.assert_array_equal(src.train.labels, [1, 0, 0, 1])
    np.testing.assert_array_equal(src.train.images[:, 0, 0, 0], [0, 2, 4, 5])
    np.testing.assert_array_equal(tgt.test.labels, [0, 1])
    assert src.mean == data.channel_stats(src.train.images)[0]
    with pytest.raises(ValueError, match="overlap"):
        source_target_split(ds, ("a",), ("a", "b"))
    with pytest.raises(ValueError, match="unknown class"):
        source_target_split(ds, ("zebra",), None)
