"""Tests for jkt.data.splits: stratified carving, per-class subsets, channel statistics."""

import chex
import numpy as np
import pytest

from jkt import data


def _split(counts, size=4):
    labels = np.concatenate([np.full(n, c, np.int32) for c, n in enumerate(counts)])
    ids = np.arange(len(labels))
    images = np.zeros((len(labels), size, size, 3), np.uint8)
    images[:, 0, 0, 0] = ids % 256  # unique id per example, to track identity
    images[:, 0, 0, 1] = ids // 256
    return data.Split(images, labels)


def _ids(split):
    ids = split.images[:, 0, 0, 0].astype(int) + 256 * split.images[:, 0, 0, 1].astype(int)
    return set(ids.tolist())


def test_split_validates_dtype_and_shape():
    with pytest.raises(ValueError, match="uint8"):
        data.Split(np.zeros((2, 4, 4, 3), np.float32), np.zeros(2, np.int32))
    with pytest.raises(ValueError, match="labels"):
        data.Split(np.zeros((2, 4, 4, 3), np.uint8), np.zeros(3, np.int32))
    s = data.Split(np.zeros((2, 4, 4, 3), np.uint8), np.zeros(2, np.int64))
    assert s.labels.dtype == np.int32 and len(s) == 2


def test_stratified_indices_disjoint_cover_and_deterministic():
    labels = np.repeat(np.arange(5), [100, 50, 20, 10, 3])
    kept, carved = data.stratified_indices(labels, 0.1, seed=3)
    assert not set(kept) & set(carved)
    np.testing.assert_array_equal(np.sort(np.concatenate([kept, carved])), np.arange(len(labels)))
    np.testing.assert_array_equal(np.bincount(labels[carved]), [10, 5, 2, 1, 1])
    kept2, carved2 = data.stratified_indices(labels, 0.1, seed=3)
    np.testing.assert_array_equal(carved, carved2)
    _, carved3 = data.stratified_indices(labels, 0.1, seed=4)
    assert not np.array_equal(carved, carved3)
    _, none = data.stratified_indices(labels, 0.0, seed=3)
    assert none.size == 0


def test_split_off_train_val_test_disjoint():
    split = _split([60, 40, 30])
    rest, test = data.split_off_test(split, 0.2)
    train, val = data.split_off(rest, 0.1, seed=1)
    assert len(train) + len(val) + len(test) == len(split)
    assert not (_ids(train) & _ids(val)) and not (_ids(train) & _ids(test))
    assert not (_ids(val) & _ids(test))
    # test carving does not depend on the run seed; val does.
    _, test_again = data.split_off_test(split, 0.2)
    np.testing.assert_array_equal(test.images, test_again.images)
    _, val_other = data.split_off(rest, 0.1, seed=2)
    assert _ids(val) != _ids(val_other)


def test_subset_per_class_counts_and_determinism():
    split = _split([30, 25, 40])
    sub = data.subset_per_class(split, 7, seed=0)
    np.testing.assert_array_equal(np.bincount(sub.labels), [7, 7, 7])
    chex.assert_shape(sub.images, (21, 4, 4, 3))
    assert _ids(sub) <= _ids(split)
    again = data.subset_per_class(split, 7, seed=0)
    chex.assert_trees_all_equal(sub.images, again.images)
    other = data.subset_per_class(split, 7, seed=1)
    assert _ids(sub) != _ids(other)
    # labels still match their images
    for img, lab in zip(sub.images, sub.labels, strict=True):
        i = int(img[0, 0, 0]) + 256 * int(img[0, 0, 1])
        assert split.labels[i] == lab


def test_subset_per_class_full_and_errors():
    split = _split([30, 5, 40])
    assert data.subset_per_class(split, None) is split
    assert data.subset_per_class(split, "full") is split
    with pytest.raises(ValueError, match=r"'bus' \(id 1\) has only 5 examples"):
        data.subset_per_class(split, 6, class_names=("car", "bus", "van"))
    with pytest.raises(ValueError, match="id 3 has only 0"):
        data.subset_per_class(split, 2, num_classes=4)


def test_channel_stats_matches_numpy():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (50, 6, 6, 3), dtype=np.uint8)
    mean, std = data.channel_stats(images, chunk=7)
    x = images.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(mean, x.mean(0), rtol=1e-10)
    np.testing.assert_allclose(std, x.std(0), rtol=1e-10)
