"""Worker for ``multihost_test.py``: a few data-parallel train steps, saved to an .npz.

Run as ``python tests/multihost_worker.py OUT_DIR``. When ``JAX_COORDINATOR_ADDRESS``,
``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` are set it joins that multi-process job
through :func:`jkt.parallel.initialize_distributed` and trains over the mesh of all
global devices; otherwise it trains on one local device. Each process writes
``OUT_DIR/process<i>.npz`` (the final, replicated parameters and metrics of every step)
and ``OUT_DIR/process<i>.json`` (its device counts and the rows of the batch it loaded).

``run_steps`` is also imported by the test to compute the single-device reference.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

CANNOT_START = 77  # exit status when jax.distributed cannot start here
GLOBAL_BATCH = 8
NUM_STEPS = 3
NUM_CLASSES = 4
IMAGE_SHAPE = (16, 16, 3)
MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)


def tiny_split():
    """24 deterministic uint8 images (the same in every process)."""
    from jkt.data.types import Split

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (24, *IMAGE_SHAPE), dtype=np.uint8)
    return Split(images, rng.integers(0, NUM_CLASSES, 24).astype(np.int32))


def local_numpy(tree):
    """Host copies of a replicated (possibly not fully addressable) pytree."""
    import jax

    return jax.tree.map(lambda x: np.asarray(x.addressable_shards[0].data), tree)


def flatten(tree, prefix: str) -> dict[str, np.ndarray]:
    import jax

    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {prefix + jax.tree_util.keystr(path): np.asarray(x) for path, x in leaves}


def run_steps(mesh):
    """``NUM_STEPS`` ce+act+jac steps of a tiny VGG student against a fixed teacher.

    Returns ``(init_params, params, batch_stats, metrics, rows)``: host copies of the
    initial and final state, the metrics of each step, and the ``process_rows`` slice of
    each batch.
    """
    import jax

    from jkt import parallel
    from jkt.data.batches import BatchStream, make_batch
    from jkt.models import VGG
    from jkt.train import Objective, Optimizer, StepCache, create_train_state
    from jkt.train.fused import weight_matrix

    split = tiny_split()
    student = VGG(config=(8, "M"), num_classes=NUM_CLASSES)
    teacher = VGG(config=(4, "M"), num_classes=NUM_CLASSES)
    # The teacher's variables are the same in every process (fixed key, host copy).
    t_vars = jax.jit(teacher.init)(jax.random.key(1), np.zeros((1, *IMAGE_SHAPE), np.float32))
    rep = parallel.replicated(mesh)
    t_vars = jax.device_put(t_vars, rep)  # as train_and_evaluate places the teacher

    adam = Optimizer("adam")
    state = create_train_state(student, adam, jax.random.key(0), IMAGE_SHAPE, mesh)
    init_params = local_numpy(state.params)
    objectives = [Objective(ce=1, act=1, jac=1)]
    # The loop's step: jitted over the mesh, states replicated and donated.
    step = StepCache().train_step(student, objectives, adam, mean=MEAN, std=STD,
                                  augment="crop+flip", mode="unroll", mesh=mesh,
                                  teacher_model=teacher)
    rate, weights = jax.device_put((np.float32(1e-2), weight_matrix(objectives)), rep)
    stream = BatchStream(len(split), GLOBAL_BATCH, seed=3)
    metrics, rows = [], []
    for i in range(NUM_STEPS):
        rows_i = parallel.process_rows(GLOBAL_BATCH, mesh)
        rows.append((rows_i.start, rows_i.stop))
        indices = stream.indices(i)
        batch = make_batch(split, indices, mesh)
        assert batch["image"].shape == (GLOBAL_BATCH, *IMAGE_SHAPE)
        # This process holds exactly its own rows of the global batch.
        local = np.concatenate([np.asarray(s.data) for s in sorted(
            batch["label"].addressable_shards, key=lambda s: s.index[0].start or 0)])
        np.testing.assert_array_equal(local, split.labels[indices[rows_i]])
        state, m = step(state, batch, t_vars, rate, weights)
        metrics.append(local_numpy(jax.tree.map(lambda v: v[0], m)))
    return init_params, local_numpy(state.params), local_numpy(state.batch_stats), metrics, rows


def run_fused_steps(mesh):
    """``NUM_STEPS`` fused steps of two runs (ce+act+jac, act+jac) sharing the batches, as
    ``train_and_evaluate`` runs them (stacking and unstacking global arrays). Returns host
    copies of each run's final parameters."""
    import jax

    from jkt import parallel
    from jkt.data.batches import BatchStream, make_batch
    from jkt.models import VGG
    from jkt.train import Objective, Optimizer, StepCache, create_train_state, fused

    split = tiny_split()
    student = VGG(config=(8, "M"), num_classes=NUM_CLASSES)
    teacher = VGG(config=(4, "M"), num_classes=NUM_CLASSES)
    t_vars = jax.jit(teacher.init)(jax.random.key(1), np.zeros((1, *IMAGE_SHAPE), np.float32))
    rep = parallel.replicated(mesh)
    t_vars = jax.device_put(t_vars, rep)
    adam = Optimizer("adam")
    one = create_train_state(student, adam, jax.random.key(0), IMAGE_SHAPE, mesh)
    states = jax.device_put(fused.stack_states([one, one]), rep)
    objectives = [Objective(ce=1, act=1, jac=1), Objective(ce=0, act=1, jac=1)]
    step = StepCache().train_step(student, objectives, adam, mean=MEAN, std=STD,
                                  augment="crop+flip", mode="unroll", mesh=mesh,
                                  teacher_model=teacher)
    rate, weights = jax.device_put((np.float32(1e-2), fused.weight_matrix(objectives)), rep)
    stream = BatchStream(len(split), GLOBAL_BATCH, seed=3)
    for i in range(NUM_STEPS):
        states, _ = step(states, make_batch(split, stream.indices(i), mesh), t_vars, rate,
                         weights)
    return [local_numpy(fused.unstack_state(states, r).params) for r in range(2)]


class RecordingRecords:
    """The records of a split, remembering which examples this process read."""

    def __init__(self, split):
        from jkt.data import stream as stream_lib

        self.inner, self.read = stream_lib.SplitRecords(split), []

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        self.read.append(int(i))
        return self.inner[i]


def streamed_reads(mesh) -> tuple[list[int], bool]:
    """The examples this process reads (sorted) for ``NUM_STEPS`` streamed batches, and
    whether its shard of every streamed batch equals the resident path's."""
    from jkt.data import stream as stream_lib
    from jkt.data.batches import BatchStream, make_batch

    split = tiny_split()
    stream = BatchStream(len(split), GLOBAL_BATCH, seed=3)
    records = RecordingRecords(split)
    same = True
    batches = stream_lib.streamed_batches(records, stream, mesh, stop_step=NUM_STEPS)
    for i, batch in enumerate(batches):
        resident = make_batch(split, stream.indices(i), mesh)
        for k in ("image", "label"):
            same &= bool(np.array_equal(np.asarray(batch[k].addressable_data(0)),
                                        np.asarray(resident[k].addressable_data(0))))
    return sorted(records.read), same


def main(out_dir: str) -> None:
    import jax

    from jkt import parallel

    try:
        joined = parallel.initialize_distributed()
    except Exception as e:  # reported to the test, which skips
        print(f"jax.distributed cannot start: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(CANNOT_START)
    mesh = parallel.make_mesh()
    init_params, params, batch_stats, metrics, rows = run_steps(mesh)
    me = jax.process_index()
    arrays = {**flatten(init_params, "init_params"), **flatten(params, "params"),
              **flatten(batch_stats, "batch_stats")}
    for i, m in enumerate(metrics):
        arrays.update({f"metrics/{i}/{k}": v for k, v in m.items()})
    for r, p in enumerate(run_fused_steps(mesh)):
        arrays.update(flatten(p, f"fused{r}"))
    out = Path(out_dir)
    np.savez(out / f"process{me}.npz", **arrays)
    info = {"joined": joined, "process_index": me, "process_count": jax.process_count(),
            "global_devices": jax.device_count(), "local_devices": jax.local_device_count(),
            "rows": rows}
    info["streamed_reads"], info["streamed_equals_resident"] = streamed_reads(mesh)
    (out / f"process{me}.json").write_text(json.dumps(info))
    if joined:
        jax.distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
