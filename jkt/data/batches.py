"""Global batches: a stateless, resumable index stream and sharded batch assembly.

The training stream is the concatenation of per-epoch permutations of
``range(num_examples)``; batch ``step`` is positions ``[step * B, (step + 1) * B)``
of it. Any step can be produced without replaying earlier ones (resuming is just
"start at step k"), a split smaller than the batch still gives full batches, and
no remainder is dropped.

Each process gathers only its own rows of every global batch
(:func:`jkt.parallel.process_rows`) and the rows are assembled into global arrays
sharded over the mesh's ``"data"`` axis (:func:`jkt.parallel.global_batch`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterator

import jax
import numpy as np
from jax.sharding import Mesh

from jkt import parallel
from jkt.data.types import Split

Batch = dict[str, jax.Array]


@functools.lru_cache(maxsize=8)
def _epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    perm = np.random.default_rng([int(seed), int(epoch)]).permutation(num_examples)
    perm.setflags(write=False)
    return perm


@dataclasses.dataclass(frozen=True)
class BatchStream:
    """Indices of the training batches: a pure function of ``(seed, step)``.

    Attributes:
      num_examples: size of the split sampled from (``N``).
      global_batch_size: examples per global batch (``B``).
      seed: selects the per-epoch permutations.
    """

    num_examples: int
    global_batch_size: int
    seed: int = 0

    def __post_init__(self):
        if self.num_examples <= 0:
            raise ValueError(f"num_examples must be positive, got {self.num_examples}")
        if self.global_batch_size <= 0:
            raise ValueError(f"global_batch_size must be positive, got {self.global_batch_size}")

    @property
    def steps_per_epoch(self) -> int:
        """``ceil(N / B)``."""
        return math.ceil(self.num_examples / self.global_batch_size)

    def epoch(self, step: int) -> float:
        """Epochs completed (fractional) after ``step`` batches."""
        return step * self.global_batch_size / self.num_examples

    def indices(self, step: int) -> np.ndarray:
        """Example indices of batch ``step``: int64 array of shape ``(B,)``."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        n, b = self.num_examples, self.global_batch_size
        positions = step * b + np.arange(b, dtype=np.int64)
        epochs, offsets = np.divmod(positions, n)
        out = np.empty(b, np.int64)
        for e in np.unique(epochs):
            sel = epochs == e
            out[sel] = _epoch_permutation(n, self.seed, int(e))[offsets[sel]]
        return out


def make_batch(split: Split, indices: np.ndarray, mesh: Mesh) -> Batch:
    """The global batch of ``split`` at ``indices``, sharded over ``mesh``'s data axis.

    Only the rows owned by this process are read from host memory.

    Args:
      split: source images and labels.
      indices: ``(B,)`` example indices of the whole global batch (same on every process).
      mesh: the data mesh; ``B`` must be a multiple of its size.

    Returns:
      ``{"image": uint8 (B, H, W, 3), "label": int32 (B,)}`` global ``jax.Array`` s.
    """
    indices = np.asarray(indices)
    b = int(indices.shape[0])
    rows = indices[parallel.process_rows(b, mesh)]
    local = {"image": split.images[rows], "label": split.labels[rows]}
    return parallel.global_batch(local, mesh, b)


def train_batches(
    split: Split, stream: BatchStream, mesh: Mesh, start_step: int = 0
) -> Iterator[Batch]:
    """Endless training batches from ``start_step`` on (resume by passing the saved step)."""
    step = start_step
    while True:
        yield make_batch(split, stream.indices(step), mesh)
        step += 1


def eval_batches(split: Split, global_batch_size: int, mesh: Mesh) -> Iterator[Batch]:
    """Batches covering ``split`` once, in order; the last one padded.

    Yields:
      ``{"image", "label", "mask"}`` where ``mask`` (bool ``(B,)``) is False on padding
      rows, so that metrics can ignore them (``sum(metric * mask) / sum(mask)``).
    """
    parallel.check_batch_size(global_batch_size, mesh)
    n = len(split)
    rows = parallel.process_rows(global_batch_size, mesh)
    for start in range(0, n, global_batch_size):
        positions = start + np.arange(global_batch_size, dtype=np.int64)
        mask = positions < n
        indices = np.where(mask, positions, 0)
        local = {
            "image": split.images[indices[rows]],
            "label": split.labels[indices[rows]],
            "mask": mask[rows],
        }
        yield parallel.global_batch(local, mesh, global_batch_size)
