"""Tests for jkt.checkpoint: bit-exact resume, keep-last-N, atomicity, teacher artifacts."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import struct

from jkt import checkpoint, models

KEY = jax.random.key(0, impl="rbg")
X = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
TINY_VGG = dict(width_multiplier=1 / 16)


class State(struct.PyTreeNode):
    step: jax.Array
    params: dict
    batch_stats: dict
    opt_state: optax.OptState
    rng: jax.Array
    tx: optax.GradientTransformation = struct.field(pytree_node=False)


@pytest.fixture(scope="module")
def vgg4():
    model = models.create("vgg4", 10, **TINY_VGG)
    return model, jax.jit(model.init)({"params": KEY}, X)


def _state(variables, seed: int, step: int = 0) -> State:
    tx = optax.adam(1e-3)
    params = jax.tree.map(lambda p: p + seed, variables["params"])
    opt_state = tx.init(params)
    # A non-trivial optimizer state: one update step with fake gradients.
    _, opt_state = tx.update(jax.tree.map(jnp.ones_like, params), opt_state, params)
    return State(
        step=jnp.asarray(step, jnp.int32),
        params=params,
        batch_stats=variables["batch_stats"],
        opt_state=opt_state,
        rng=jax.random.key(seed),
        tx=tx,
    )


def _assert_bit_exact(a: State, b: State):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb, strict=True):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_bit_exact(tmp_path, vgg4):
    _, variables = vgg4
    state = _state(variables, seed=3, step=7)
    with checkpoint.TrainCheckpointer(tmp_path / "ckpt") as ckpt:
        assert ckpt.latest_step() is None
        assert ckpt.save(7, state, meta={"epoch": 2, "position": [1, 2]})
        ckpt.wait()
    # A fresh checkpointer (as after a restart) restores into a differently-valued target.
    ckpt = checkpoint.TrainCheckpointer(tmp_path / "ckpt")
    assert ckpt.latest_step() == 7
    restored, meta = ckpt.restore(_state(variables, seed=0))
    ckpt.close()
    assert meta == {"epoch": 2, "position": [1, 2]}
    _assert_bit_exact(restored, state)
    # The restored rng is a usable typed key.
    chex.assert_trees_all_equal(jax.random.key_data(restored.rng),
                                jax.random.key_data(jax.random.key(3)))


def test_restore_into_target_sharding(tmp_path):
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    state = {"w": jnp.arange(16.0).reshape(8, 2), "step": jnp.int32(5)}
    with checkpoint.TrainCheckpointer(tmp_path) as ckpt:
        ckpt.save(1, state)
    target = jax.device_put(jax.tree.map(jnp.zeros_like, state), replicated)
    with checkpoint.TrainCheckpointer(tmp_path) as ckpt:
        restored, meta = ckpt.restore(target)
    assert meta == {}
    assert restored["w"].sharding == replicated
    chex.assert_trees_all_equal(restored, state)


def test_keep_last_n_and_interval(tmp_path):
    state = {"w": jnp.zeros(3)}
    with checkpoint.TrainCheckpointer(tmp_path, max_to_keep=2) as ckpt:
        for step in range(1, 6):
            ckpt.save(step, {"w": state["w"] + step})
        ckpt.wait()
        assert ckpt.all_steps() == [4, 5]
        restored, _ = ckpt.restore(state, step=4)
        np.testing.assert_array_equal(restored["w"], np.full(3, 4.0))
    with checkpoint.TrainCheckpointer(tmp_path / "b", save_interval_steps=10) as ckpt:
        assert ckpt.save(10, state)
        assert not ckpt.save(13, state)
        assert ckpt.save(15, state, force=True)
        assert ckpt.save(20, state)
        ckpt.wait()
        assert ckpt.all_steps() == [10, 15, 20]


def test_unfinished_tmp_checkpoint_is_ignored(tmp_path):
    state = {"w": jnp.ones(4)}
    with checkpoint.TrainCheckpointer(tmp_path) as ckpt:
        ckpt.save(1, state)
    # What a run killed in the middle of writing step 2 leaves behind.
    leftover = tmp_path / "2.orbax-checkpoint-tmp-1234567"
    (leftover / "state").mkdir(parents=True)
    (leftover / "state" / "garbage").write_bytes(b"\0" * 10)
    with checkpoint.TrainCheckpointer(tmp_path) as ckpt:
        assert ckpt.latest_step() == 1
        restored, _ = ckpt.restore({"w": jnp.zeros(4)})
        np.testing.assert_array_equal(restored["w"], np.ones(4))
        assert ckpt.save(2, {"w": jnp.full(4, 2.0)})
        ckpt.wait()
        assert ckpt.latest_step() == 2


def test_restore_mismatch_and_missing(tmp_path):
    with checkpoint.TrainCheckpointer(tmp_path) as ckpt:
        with pytest.raises(FileNotFoundError):
            ckpt.restore({"w": jnp.zeros(3)})
        ckpt.save(1, {"w": jnp.zeros(3), "b": jnp.zeros(2)})
        ckpt.wait()
        with pytest.raises(ValueError, match=r"w: \(3,\) \(stored\) vs \(4,\)"):
            ckpt.restore({"w": jnp.zeros(4), "b": jnp.zeros(2)})
        with pytest.raises(ValueError, match="missing.*'c'"):
            ckpt.restore({"w": jnp.zeros(3), "b": jnp.zeros(2), "c": jnp.zeros(1)})
        with pytest.raises(FileNotFoundError, match="step 9"):
            ckpt.restore({"w": jnp.zeros(3), "b": jnp.zeros(2)}, step=9)


def _meta(**kw):
    base = dict(
        arch="vgg4", num_classes=10, input_size=(16, 16, 3), mean=(0.5, 0.4, 0.3),
        std=(0.2, 0.2, 0.2), dataset="cifar100", model_options=TINY_VGG,
        extra={"test_accuracy": 0.61},
    )
    return checkpoint.TeacherMeta(**{**base, **kw})


def test_teacher_round_trip(tmp_path, vgg4):
    model, variables = vgg4
    path = checkpoint.save_teacher(tmp_path / "teacher", variables, _meta())
    teacher = checkpoint.restore_teacher(path, expect_arch="vgg4")
    assert teacher.meta == _meta()
    assert teacher.model == model
    chex.assert_trees_all_equal(teacher.variables, variables)
    expected = model.apply(variables, X)
    chex.assert_trees_all_close(teacher.apply(X), expected)
    logits, feats = teacher.apply(X, return_features=True)
    assert set(feats) == {"pool1", "pool2", "pool3"}
    # The way a train step uses it: variables as jit arguments.
    step = jax.jit(lambda v, x: teacher.model.apply(v, x, train=False))
    chex.assert_trees_all_close(step(teacher.variables, X), expected, atol=1e-5)
    # Frozen: no gradient reaches the teacher's variables through ``apply``.
    grads = jax.grad(lambda v: teacher.apply(X, variables=v).sum())(teacher.variables)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads))
    with pytest.raises(Exception):  # noqa: B017 - overwrite protection, orbax's own error
        checkpoint.save_teacher(path, variables, _meta())
    checkpoint.save_teacher(path, variables, _meta(dataset="x"), overwrite=True)
    assert checkpoint.read_teacher_meta(path).dataset == "x"


def test_teacher_restore_sharded(tmp_path, vgg4):
    _, variables = vgg4
    path = checkpoint.save_teacher(tmp_path / "teacher", variables, _meta())
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    teacher = checkpoint.restore_teacher(path, sharding=replicated)
    assert all(v.sharding == replicated for v in jax.tree.leaves(teacher.variables))
    chex.assert_trees_all_equal(teacher.variables, variables)


def test_teacher_wrong_architecture(tmp_path, vgg4):
    _, variables = vgg4
    path = checkpoint.save_teacher(tmp_path / "teacher", variables, _meta())
    with pytest.raises(ValueError, match="'vgg4'.*'vgg9'"):
        checkpoint.restore_teacher(path, expect_arch="vgg9")
    # Variables that do not fit the declared architecture are refused at save time...
    with pytest.raises(ValueError, match="vgg9"):
        checkpoint.save_teacher(tmp_path / "bad", variables,
                                _meta(arch="vgg9", input_size=(32, 32, 3)))
    with pytest.raises(ValueError, match="resnet34"):
        checkpoint.save_teacher(tmp_path / "bad", variables, _meta(arch="resnet34"))
    # ... an edited meta is refused by its checksum ...
    _patch_meta(path, arch="vgg9", input_size=[32, 32, 3])  # VGG-9 needs >= 32x32
    with pytest.raises(checkpoint.CheckpointError, match="does not match its checksum"):
        checkpoint.restore_teacher(path)
    # ... and one whose checksum was rewritten to fit (a hand-made artifact) by its shapes.
    _patch_meta(path, redigest=True)
    with pytest.raises(ValueError, match=r"architecture 'vgg9'.*shape mismatches|missing"):
        checkpoint.restore_teacher(path)


def _patch_meta(path, redigest: bool = False, **changes):
    """Edits the artifact's meta JSON; ``redigest``: and its checksum of the meta."""
    import json

    from jkt.checkpoint import teacher as teacher_lib

    meta_file = path / "meta" / "metadata"
    d = json.loads(meta_file.read_text())
    d.update(changes)
    if redigest:
        d[checkpoint.CHECKSUM_KEY][teacher_lib.META_DIGEST_KEY] = teacher_lib.meta_digest(d)
    meta_file.write_text(json.dumps(d))


def test_teacher_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError):
        checkpoint.restore_teacher(tmp_path / "nope")


def test_teacher_meta_json_round_trip():
    meta = _meta(arch="resnet34", model_options={"stage_sizes": (1, 1, 1, 1), "small_stem": True})
    assert checkpoint.TeacherMeta.from_json(meta.to_json()) == meta
