"""Tests for jkt.data.batches: the resumable index stream and sharded global batches."""

import chex
import jax
import numpy as np
import pytest

from jkt import data, parallel


def _split(n, size=4, num_classes=3):
    images = np.zeros((n, size, size, 3), np.uint8)
    images[:, :, :, 0] = (np.arange(n) % 256)[:, None, None]
    images[:, :, :, 1] = (np.arange(n) // 256)[:, None, None]
    return data.Split(images, (np.arange(n) % num_classes).astype(np.int32))


def test_stream_is_deterministic_and_resumable():
    s = data.BatchStream(1000, 64, seed=5)
    a = [s.indices(i) for i in range(40)]
    b = data.BatchStream(1000, 64, seed=5)
    for i in reversed(range(40)):  # any order, fresh object: same batches
        np.testing.assert_array_equal(b.indices(i), a[i])
    c = data.BatchStream(1000, 64, seed=6)
    assert not np.array_equal(c.indices(0), a[0])
    assert s.steps_per_epoch == 16


def test_stream_covers_each_epoch_exactly_once():
    n, b = 1000, 64
    s = data.BatchStream(n, b, seed=0)
    flat = np.concatenate([s.indices(i) for i in range(3 * n // b + 1)])
    for e in range(3):
        np.testing.assert_array_equal(np.sort(flat[e * n : (e + 1) * n]), np.arange(n))
    assert all(len(s.indices(i)) == b for i in range(20))


def test_stream_smaller_than_batch_gives_full_balanced_batches():
    s = data.BatchStream(100, 128, seed=1)
    assert s.steps_per_epoch == 1
    flat = np.concatenate([s.indices(i) for i in range(25)])  # 3200 = 32 epochs exactly
    chex.assert_shape(s.indices(7), (128,))
    np.testing.assert_array_equal(np.bincount(flat, minlength=100), np.full(100, 32))
    # a batch spans at most ceil(B / N) + 1 = 3 epochs, so no example appears more often
    assert max(np.bincount(s.indices(i)).max() for i in range(25)) <= 3


def test_sharded_batch_equals_unsharded():
    split = _split(300)
    mesh8 = parallel.make_mesh()
    mesh1 = parallel.make_mesh(jax.devices()[:1])
    assert mesh8.devices.size == 8
    idx = data.BatchStream(len(split), 64, seed=0).indices(3)
    b8 = data.make_batch(split, idx, mesh8)
    b1 = data.make_batch(split, idx, mesh1)
    chex.assert_trees_all_equal(jax.device_get(b8), jax.device_get(b1))
    chex.assert_trees_all_equal(jax.device_get(b1["image"]), split.images[idx])
    chex.assert_shape(b8["image"], (64, 4, 4, 3))
    chex.assert_type([b8["image"], b8["label"]], [np.uint8, np.int32])
    assert b8["image"].sharding == parallel.batch_sharding(mesh8)
    assert {s.data.shape[0] for s in b8["image"].addressable_shards} == {8}
    # a jitted function sees the global batch
    total = jax.jit(lambda b: b["label"].sum())(b8)
    assert int(total) == int(split.labels[idx].sum())


def test_train_batches_resume():
    split = _split(50)
    mesh = parallel.make_mesh()
    stream = data.BatchStream(len(split), 16, seed=2)
    it = data.train_batches(split, stream, mesh, start_step=5)
    first = next(it)
    np.testing.assert_array_equal(np.asarray(first["label"]), split.labels[stream.indices(5)])


@pytest.mark.parametrize("n", [37, 48, 8])
def test_eval_batches_cover_split_once(n):
    split = _split(n)
    mesh = parallel.make_mesh()
    seen = []
    batches = list(data.eval_batches(split, 16, mesh))
    assert len(batches) == -(-n // 16)
    for b in batches:
        chex.assert_shape([b["image"], b["label"], b["mask"]], [(16, 4, 4, 3), (16,), (16,)])
        assert b["mask"].sharding == parallel.batch_sharding(mesh)
        img, mask = np.asarray(b["image"]), np.asarray(b["mask"])
        ids = img[:, 0, 0, 0].astype(int) + 256 * img[:, 0, 0, 1].astype(int)
        seen.extend(ids[mask].tolist())
    assert sorted(seen) == list(range(n))
    assert int(sum(np.asarray(b["mask"]).sum() for b in batches)) == n


def test_eval_batches_rejects_indivisible_batch():
    with pytest.raises(ValueError, match="multiple"):
        list(data.eval_batches(_split(10), 12, parallel.make_mesh()))
