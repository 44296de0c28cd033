"""Fault injection for jkt.checkpoint: damaged train checkpoints fall back to the previous
step (or fail with one line), damaged teacher artifacts fail with one line; undamaged ones
restore bit-identically.

The damage is done to the files Orbax actually wrote, found by listing each step's
directory recursively (not by assuming TensorStore's layout): "the data file" is the
largest file under the step's array item.
"""

import json
import os
import re
from pathlib import Path

import checkpoint_test as base
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_fixtures import one_line

from jkt import checkpoint, models
from jkt.checkpoint import integrity

STEPS = (1, 2, 3)

# When one read of a damaged checkpoint fails, Orbax abandons the concurrent reads of the
# other arrays; Python reports those coroutines when it collects them.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(scope="module")
def variables():
    model = models.create("vgg4", 10, **base.TINY_VGG)
    return jax.jit(model.init)({"params": base.KEY}, base.X)


@pytest.fixture
def run(tmp_path, variables):
    """A checkpoint directory with a real TrainState at each of ``STEPS`` (each different),
    and those states."""
    states = {s: base._state(variables, seed=10 * s, step=s) for s in STEPS}
    directory = tmp_path / "ckpt"
    with checkpoint.TrainCheckpointer(directory, max_to_keep=len(STEPS)) as ckpt:
        for s in STEPS:
            assert ckpt.save(s, states[s], meta={"epoch": s})
    return directory, states


def _target(variables):
    return base._state(variables, seed=0)


def _files(root: Path) -> list[Path]:
    return sorted((Path(d) / f for d, _, fs in os.walk(root) for f in fs), key=lambda p: str(p))


# Files Orbax and TensorStore write beside the array data (metadata, manifests, markers).
NOT_DATA = {"_METADATA", "_sharding", "_CHECKPOINT_METADATA", "metadata", "commit_success.txt",
            "manifest.ocdbt", ".zarray", ".zattrs", ".zgroup", "zarr.json"}


def _data_file(item_dir: Path) -> Path:
    """The largest array data file TensorStore wrote under ``item_dir`` (an OCDBT data
    file or a zarr chunk, wherever it is)."""
    files = [p for p in _files(item_dir)
             if p.name not in NOT_DATA and "array_metadatas" not in p.parts]
    assert files, f"no array data file under {item_dir}: {_files(item_dir)}"
    return max(files, key=lambda p: p.stat().st_size)


def _named(step_dir: Path, name: str) -> Path:
    hits = [p for p in _files(step_dir) if p.name == name]
    assert len(hits) == 1, f"{name} in {step_dir}: {hits}"
    return hits[0]


def _zero_8_bytes(path: Path) -> None:
    """Zeroes 8 bytes in the middle of ``path`` (the first non-zero 8-byte window from the
    middle on, so that the file really changes)."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    at = next(i for i in range(mid, len(data) - 8) if any(data[i:i + 8]))
    data[at:at + 8] = bytes(8)
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {
    "zero8": lambda step_dir: _zero_8_bytes(_data_file(step_dir / "state")),
    "truncate": lambda step_dir: _truncate(_data_file(step_dir / "state")),
    "no_meta_json": lambda step_dir: _named(step_dir, "metadata").unlink(),
    "no_state_metadata": lambda step_dir: _named(step_dir / "state", "_METADATA").unlink(),
    "garbled_meta_json": lambda step_dir: _named(step_dir, "metadata").write_text('{"epo'),
}


# ---------------------------------------------------------------------------------------
# Train checkpoints.


def test_undamaged_restore_is_bit_identical(run, variables):
    directory, states = run
    with checkpoint.TrainCheckpointer(directory) as ckpt:
        restored, meta = ckpt.restore(_target(variables))
        assert meta == {"epoch": 3}  # the checksum is not part of the caller's meta
        base._assert_bit_exact(restored, states[3])
        for s in STEPS:
            assert ckpt.verify(s) is True
            restored, meta = ckpt.restore(_target(variables), step=s)
            base._assert_bit_exact(restored, states[s])
            assert meta == {"epoch": s}
    # The checksum lives in the step's meta JSON.
    stored = json.loads(_named(directory / "3", "metadata").read_text())
    record = stored[checkpoint.CHECKSUM_KEY]
    assert record["algorithm"] == "sha256" and len(record["digest"]) == 64
    assert record["leaves"]["params/conv1/kernel"]["dtype"] == "float32"
    assert record["leaves"]["rng"]["dtype"] == "uint32"  # a typed key, hashed as its key data
    assert len(record["leaves"]) == len(jax.tree.leaves(states[3]))


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_latest_falls_back(run, variables, damage):
    directory, states = run
    DAMAGE[damage](directory / "3")
    with checkpoint.TrainCheckpointer(directory) as ckpt:
        assert ckpt.latest_step() == 3
        with pytest.warns(UserWarning) as record:
            restored, meta = ckpt.restore(_target(variables))
        messages = [str(w.message) for w in record if "damaged" in str(w.message)]
        assert len(messages) == 1 and "\n" not in messages[0], messages
        assert re.search(rf"checkpoint step 3 in {re.escape(str(directory))} is damaged "
                         r"\(.+\); falling back to step 2$", messages[0]), messages[0]
        base._assert_bit_exact(restored, states[2])
        assert meta == {"epoch": 2}
        # The damaged step is set aside (kept for inspection) and the run can save it again.
        assert ckpt.all_steps() == [1, 2]
        assert (directory / "3.damaged").is_dir()
        assert ckpt.save(3, states[3], meta={"epoch": 3})
        ckpt.wait()
    with checkpoint.TrainCheckpointer(directory) as ckpt:
        assert ckpt.all_steps() == [1, 2, 3]
        restored, _ = ckpt.restore(_target(variables))
        base._assert_bit_exact(restored, states[3])


def test_falls_back_over_several_damaged_steps(run, variables):
    directory, states = run
    DAMAGE["zero8"](directory / "3")
    DAMAGE["truncate"](directory / "2")
    with checkpoint.TrainCheckpointer(directory) as ckpt:
        with pytest.warns(UserWarning) as record:
            restored, _ = ckpt.restore(_target(variables))
        messages = [str(w.message) for w in record if "damaged" in str(w.message)]
        assert len(messages) == 2
        assert "step 3" in messages[0] and messages[0].endswith("falling back to step 2")
        assert "step 2" in messages[1] and messages[1].endswith("falling back to step 1")
        base._assert_bit_exact(restored, states[1])
        assert ckpt.all_steps() == [1]


def test_every_step_damaged(run, variables):
    directory, _ = run
    for s, damage in zip(STEPS, ("zero8", "truncate", "no_meta_json"), strict=True):
        DAMAGE[damage](directory / str(s))
    with checkpoint.TrainCheckpointer(directory) as ckpt:
        with pytest.raises(checkpoint.CheckpointError) as excinfo:
            ckpt.restore(_target(variables))
        msg = one_line(excinfo)
        assert str(directory) in msg and f"delete {directory}" in msg
        assert all(f"step {s}:" in msg for s in STEPS), msg
        assert ckpt.all_steps() == list(STEPS)  # nothing is set aside without a good step
    assert isinstance(excinfo.value, ValueError)


def test_explicit_damaged_step(run, variables):
    directory, states = run
    DAMAGE["zero8"](directory / "2")
    with checkpoint.TrainCheckpointer(directory) as ckpt:
        with pytest.raises(checkpoint.CheckpointError) as excinfo:
            ckpt.restore(_target(variables), step=2)
        msg = one_line(excinfo)
        assert f"checkpoint step 2 in {directory} is damaged" in msg, msg
        assert "checksum mismatch" in msg
        with pytest.raises(checkpoint.CheckpointError, match="step 2"):
            ckpt.verify(2)
        # The undamaged steps are unaffected, and no fallback happens for an explicit step.
        restored, _ = ckpt.restore(_target(variables), step=3)
        base._assert_bit_exact(restored, states[3])
        assert ckpt.all_steps() == list(STEPS)


def test_shape_mismatch_is_not_damage(run, variables):
    """A target from another model is the caller's error: no fallback, no renaming."""
    directory, _ = run
    other = models.create("vgg4", 7, **base.TINY_VGG)
    other_vars = jax.jit(other.init)({"params": base.KEY}, base.X)
    with checkpoint.TrainCheckpointer(directory) as ckpt:
        with pytest.raises(ValueError, match="shape mismatches") as excinfo:
            ckpt.restore(_target(other_vars))
        assert not isinstance(excinfo.value, checkpoint.CheckpointError)
        assert ckpt.all_steps() == list(STEPS)


def test_checkpoint_without_checksum_restores_with_warning(run, variables):
    """Checkpoints written before checksums existed stay usable (unverified)."""
    directory, states = run
    meta_file = _named(directory / "3", "metadata")
    meta = json.loads(meta_file.read_text())
    del meta[checkpoint.CHECKSUM_KEY]
    meta_file.write_text(json.dumps(meta))
    with checkpoint.TrainCheckpointer(directory) as ckpt:
        with pytest.warns(UserWarning, match="step 3 .* has no checksum"):
            restored, _ = ckpt.restore(_target(variables))
        base._assert_bit_exact(restored, states[3])
        assert ckpt.verify(3) is False


def test_restore_into_other_dtype_is_verified_then_cast(tmp_path):
    state = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "n": jnp.int32(4)}
    with checkpoint.TrainCheckpointer(tmp_path) as ckpt:
        ckpt.save(1, state)
    target = {"w": jnp.zeros((3, 4), jnp.bfloat16), "n": jnp.int32(0)}
    with checkpoint.TrainCheckpointer(tmp_path) as ckpt:
        restored, _ = ckpt.restore(target)
    assert restored["w"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(restored["w"]),
                                  np.asarray(state["w"].astype(jnp.bfloat16)))


def test_reserved_meta_key(tmp_path):
    with checkpoint.TrainCheckpointer(tmp_path) as ckpt:
        with pytest.raises(ValueError, match="reserved"):
            ckpt.save(1, {"w": jnp.zeros(2)}, meta={checkpoint.CHECKSUM_KEY: 1})


def test_checksum_names_changed_arrays():
    tree = {"a": np.arange(4.0), "b": {"c": np.ones(3, np.int32)}}
    record = integrity.checksum(tree)
    assert integrity.mismatch(record, tree) is None
    changed = {"a": np.arange(4.0), "b": {"c": np.array([1, 1, 2], np.int32)}}
    assert integrity.mismatch(record, changed) == "checksum mismatch in b/c"
    # dtype and shape are part of the checksum, not just the bytes.
    assert integrity.mismatch(record, {**tree, "a": np.arange(4.0).reshape(2, 2)})
    assert integrity.mismatch(record, {**tree, "a": np.arange(4.0).view(np.int64)})


# ---------------------------------------------------------------------------------------
# Teacher artifacts.


@pytest.fixture
def artifact(tmp_path, variables):
    return checkpoint.save_teacher(tmp_path / "teacher", variables, base._meta())


def _assert_teacher_error(path, excinfo, *words):
    msg = one_line(excinfo)
    assert str(path) in msg and f"delete {path} and re-create it" in msg, msg
    for w in words:
        assert w in msg, msg


@pytest.mark.parametrize("damage", ["zero8", "truncate"])
def test_teacher_damaged_weights(artifact, variables, damage):
    path = Path(artifact)
    (_zero_8_bytes if damage == "zero8" else _truncate)(_data_file(path / "variables"))
    with pytest.raises(checkpoint.CheckpointError) as excinfo:
        checkpoint.restore_teacher(path, expect_arch="vgg4")
    _assert_teacher_error(path, excinfo, "is damaged")
    assert checkpoint.read_teacher_meta(path) == base._meta()  # the meta is still fine


@pytest.mark.parametrize("damage", ["garbled", "missing", "incomplete"])
def test_teacher_damaged_meta_json(artifact, damage):
    path = Path(artifact)
    meta_file = _named(path, "metadata")
    if damage == "garbled":
        meta_file.write_text(meta_file.read_text()[:40])
    elif damage == "missing":
        meta_file.unlink()
    else:
        meta = json.loads(meta_file.read_text())
        del meta["num_classes"]
        meta_file.write_text(json.dumps(meta))
    for fn in (checkpoint.read_teacher_meta, checkpoint.restore_teacher):
        with pytest.raises(checkpoint.CheckpointError) as excinfo:
            fn(path)
        _assert_teacher_error(path, excinfo, "meta JSON")
        if damage != "missing":
            assert str(meta_file) in str(excinfo.value)


def test_teacher_missing_dir(tmp_path):
    path = tmp_path / "nope"
    for fn in (checkpoint.read_teacher_meta, checkpoint.restore_teacher):
        with pytest.raises(FileNotFoundError) as excinfo:
            fn(path)
        assert str(path) in one_line(excinfo)


def test_teacher_wrong_arch_one_line(artifact):
    with pytest.raises(ValueError) as excinfo:
        checkpoint.restore_teacher(artifact, expect_arch="resnet34")
    msg = one_line(excinfo)
    assert str(artifact) in msg and "'resnet34' was expected" in msg


def test_teacher_undamaged_and_legacy(artifact, variables):
    """An artifact without a checksum (hand-made, or from before checksums existed) is
    refused with one line naming the flag; with it, restored unverified with a warning."""
    teacher = checkpoint.restore_teacher(artifact, expect_arch="vgg4")
    base._assert_bit_exact(teacher.variables, variables)
    meta_file = _named(Path(artifact), "metadata")
    meta = json.loads(meta_file.read_text())
    assert meta[checkpoint.CHECKSUM_KEY]["algorithm"] == "sha256"
    for legacy in ("no meta digest", "no checksum"):
        if legacy == "no meta digest":  # written by the jkt of before meta checksums
            del meta[checkpoint.CHECKSUM_KEY][checkpoint.teacher.META_DIGEST_KEY]
        else:
            del meta[checkpoint.CHECKSUM_KEY]
        meta_file.write_text(json.dumps(meta))
        for fn in (checkpoint.read_teacher_meta, checkpoint.restore_teacher):
            with pytest.raises(ValueError) as excinfo:
                fn(artifact)
            msg = one_line(excinfo)
            assert str(artifact) in msg and "--trust-teacher" in msg, msg
            assert "delete" not in msg, msg
        with pytest.warns(UserWarning, match="used unverified"):
            teacher = checkpoint.restore_teacher(artifact, trust_unverified=True)
        base._assert_bit_exact(teacher.variables, variables)


@pytest.mark.parametrize("edit", ["num_classes", "model_options", "mean"])
def test_teacher_meta_edited_after_saving_is_damage(artifact, edit):
    """The checksum covers the meta: an edited meta JSON (another class count, other model
    options, another normalisation) is refused, not silently used."""
    path = Path(artifact)
    meta_file = _named(path, "metadata")
    meta = json.loads(meta_file.read_text())
    if edit == "num_classes":
        meta["num_classes"] = 11
    elif edit == "model_options":
        meta["model_options"]["width_multiplier"] = 0.5
    else:
        meta["mean"][0] += 1e-3
    meta_file.write_text(json.dumps(meta))
    for fn in (checkpoint.read_teacher_meta, checkpoint.restore_teacher):
        with pytest.raises(checkpoint.CheckpointError) as excinfo:
            fn(path)
        _assert_teacher_error(path, excinfo, "does not match its checksum")


def test_teacher_path_that_is_not_an_artifact(tmp_path, artifact):
    """A weights file, a teacher's parent directory, a work directory, a training
    checkpoint directory or a folder of other files: one ``ValueError`` line saying what
    it is, never advice to delete it."""
    from jkt.train.loop import CHECKPOINTS

    pth = tmp_path / "resnet34.pth"
    pth.write_bytes(b"weights")
    parent = tmp_path / "teacher_parent"
    (parent / "run").mkdir(parents=True)
    Path(artifact).rename(parent / "artifact")
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "teacher").symlink_to(parent)
    train_ckpt = parent / "run" / CHECKPOINTS
    train_ckpt.mkdir()
    (train_ckpt / "3").mkdir()
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("keep")
    cases = {pth: "import_torchvision --weights", parent: str(parent / "artifact"),
             workdir: str(workdir / "teacher" / "artifact"),
             train_ckpt: "training checkpoint directory",
             parent / "run": "training checkpoint directory", notes: "no meta/"}
    for path, words in cases.items():
        for fn in (checkpoint.read_teacher_meta, checkpoint.restore_teacher):
            with pytest.raises(ValueError) as excinfo:
                fn(path)
            assert not isinstance(excinfo.value, checkpoint.CheckpointError)
            msg = one_line(excinfo)
            assert str(path) in msg and words in msg and "delete" not in msg, msg
    assert (notes / "todo.txt").read_text() == "keep"


def test_damaged_artifact_among_other_files_is_not_advised_deleted(artifact):
    """Advice to delete names only a directory that holds nothing but the artifact."""
    path = Path(artifact)
    (path / "README.txt").write_text("my notes")
    _truncate(_data_file(path / "variables"))
    with pytest.raises(checkpoint.CheckpointError) as excinfo:
        checkpoint.restore_teacher(path)
    msg = one_line(excinfo)
    assert "is damaged" in msg and f"delete {path}" not in msg and "left as it is" in msg, msg
