"""Global batches: a stateless, resumable index stream and sharded batch assembly.

:class:`BatchStream` gives the example indices of training batch ``step`` as a pure
function of ``(seed, step)``: any step can be produced without replaying earlier ones
(resuming is just "start at step k"). Epoch ``e`` visits the examples in the permutation
``_epoch_permutation(N, seed, e)``. Two batching policies
(:attr:`jkt.train.OptimConfig.batching`):

* ``"cycle"``: the stream is the concatenation of the per-epoch permutations and batch
  ``step`` is positions ``[step * B, (step + 1) * B)`` of it: every batch is full, batches
  cross epoch boundaries, a split smaller than the batch repeats examples inside a batch,
  and no remainder is dropped.
* ``"epoch"``: each epoch is one pass over its permutation in ``ceil(N / B)`` batches, the
  last one short (``N mod B``), as an ordinary epoch loader. On a data-parallel mesh of
  ``D`` devices every batch must split evenly, so the short batch is rounded down to a
  multiple of ``D``: the ``(N mod B) mod D`` examples at the end of that epoch's
  permutation are skipped (different ones each epoch), and an epoch has one batch fewer
  when nothing is left. A split of fewer than ``D`` examples is refused.

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


BATCHING = ("cycle", "epoch")


@dataclasses.dataclass(frozen=True)
class BatchStream:
    """Indices of the training batches: a pure function of ``(seed, step)``.

    Attributes:
      num_examples: size of the split sampled from (``N``).
      global_batch_size: examples per (full) global batch (``B``).
      seed: selects the per-epoch permutations.
      batching: ``"cycle"`` or ``"epoch"`` (see the module docstring).
      multiple_of: every batch holds a multiple of this many examples (the data mesh's
        device count ``D``); only the short batch of ``"epoch"`` batching is affected.
    """

    num_examples: int
    global_batch_size: int
    seed: int = 0
    batching: str = "cycle"
    multiple_of: int = 1

    def __post_init__(self):
        if self.num_examples <= 0:
            raise ValueError(f"num_examples must be positive, got {self.num_examples}")
        if self.global_batch_size <= 0:
            raise ValueError(f"global_batch_size must be positive, got {self.global_batch_size}")
        if self.batching not in BATCHING:
            raise ValueError(f"unknown batching {self.batching!r}; valid: {', '.join(BATCHING)}")
        if self.multiple_of <= 0:
            raise ValueError(f"multiple_of must be positive, got {self.multiple_of}")
        if self.batching == "epoch" and self.num_examples < self.multiple_of:
            raise ValueError(
                f"epoch batching: {self.num_examples} training images cannot make a batch "
                f"that splits over the {self.multiple_of} devices of the data mesh; train on "
                f"at least {self.multiple_of} images, on fewer devices, or with "
                "optim.batching=cycle")

    @property
    def _short(self) -> int:
        """Size of the short last batch of an epoch (``"epoch"``; 0: none)."""
        rest = self.num_examples % self.global_batch_size
        return rest - rest % self.multiple_of

    @property
    def steps_per_epoch(self) -> int:
        """``ceil(N / B)`` (``"epoch"`` on a mesh: one fewer when the rounded short batch
        is empty)."""
        if self.batching == "cycle":
            return math.ceil(self.num_examples / self.global_batch_size)
        return self.num_examples // self.global_batch_size + (self._short > 0)

    @property
    def images_per_epoch(self) -> int:
        """Examples visited per epoch of steps: ``N`` (``"epoch"``, less the skipped
        rounding remainder) or ``steps_per_epoch * B`` (``"cycle"``)."""
        if self.batching == "cycle":
            return self.steps_per_epoch * self.global_batch_size
        return self.num_examples // self.global_batch_size * self.global_batch_size + self._short

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        """The distinct batch sizes of the stream, largest first (at most two, so a jitted
        step compiles at most two programs)."""
        full = [self.global_batch_size] if (
            self.batching == "cycle" or self.num_examples >= self.global_batch_size) else []
        short = [self._short] if self.batching == "epoch" and self._short else []
        return tuple(full + short)

    def batch_size(self, step: int) -> int:
        """Examples in batch ``step``."""
        if self.batching == "cycle":
            return self.global_batch_size
        last = step % self.steps_per_epoch == self.steps_per_epoch - 1
        return self._short if last and self._short else self.global_batch_size

    def epoch(self, step: int) -> float:
        """Epochs completed (fractional) after ``step`` batches."""
        if self.batching == "epoch":
            return step / self.steps_per_epoch
        return step * self.global_batch_size / self.num_examples

    def indices(self, step: int) -> np.ndarray:
        """Example indices of batch ``step``: int64 array of shape ``(batch_size(step),)``."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        n, b = self.num_examples, self.global_batch_size
        if self.batching == "epoch":
            epoch, k = divmod(step, self.steps_per_epoch)
            perm = _epoch_permutation(n, self.seed, int(epoch))
            return perm[k * b : k * b + self.batch_size(step)].astype(np.int64)
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
      indices: ``(B,)`` example indices of the whole global batch (same on every process;
        ``B`` may differ from batch to batch, e.g. the short last batch of an epoch).
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
