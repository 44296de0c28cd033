"""A run's metrics: fetched from the device late, checked, written to ``metrics.jsonl``,
TensorBoard and the progress bar.

The training loop never waits for the device between steps: each step's metrics stay on
the device until the next log (or checkpoint) step, where all of them come back in one
transfer and are checked in step order, so a non-finite loss stops the run there naming
the first bad step and term (:class:`NonFiniteLossError`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from jkt import paths
from jkt.train.events import open_event_writer, write_scalars
from jkt.train.objective import TERMS, Objective
from jkt.workdir import is_writer

METRICS_FILE = "metrics.jsonl"


class NonFiniteLossError(FloatingPointError):
    """Raised when a loss term becomes NaN or inf; names the step and the term."""


def check_finite(metrics: dict[str, Any], step: int) -> None:
    """Raises :class:`NonFiniteLossError` naming ``step`` and every non-finite entry."""
    bad = [k for k, v in metrics.items() if not np.isfinite(v)]
    if bad:
        desc = ", ".join(f"{k}={metrics[k]}" for k in bad)
        raise NonFiniteLossError(f"non-finite loss at step {step}: {desc}")


def active_terms(objective: Objective) -> list[str]:
    """The terms ``objective`` weights (a fused step computes the union of its runs')."""
    return [t for t in TERMS if getattr(objective, t) > 0]


class MetricLog:
    """The metrics of ``R`` runs trained by one step (entries of shape ``(R,)``).

    :meth:`add` keeps a step's metrics on the device; :meth:`fetch` brings every pending
    step back in one transfer and checks it; :meth:`write` appends each run's means over
    the log window to its ``metrics.jsonl`` and TensorBoard file (:mod:`jkt.train.events`)
    and shows run 0's on the progress bar. Each run reports only its own terms.

    Args:
      workdirs, objectives, descs: one per run.
      total: steps of the run; ``start``: the step it starts (or resumes) at.
      epoch: ``step -> epochs done`` (written beside each line).
      progress: show a progress bar.
    """

    def __init__(self, workdirs: Sequence[Path], objectives: Sequence[Objective],
                 descs: Sequence[str], *, total: int, start: int, epoch, progress: bool):
        self.descs, self.epoch = list(descs), epoch
        self.keep = [set(active_terms(o)) | {"loss", "accuracy", "agreement"}
                     for o in objectives]
        self.pending: list[tuple[int, Any]] = []  # (step, device metrics) not yet fetched
        self.window: list[list[dict[str, float]]] = []  # fetched, not yet written
        self.last: list[dict[str, float]] = [{} for _ in objectives]  # the final step's
        self.files = [_open_history(w / METRICS_FILE, start) for w in workdirs]
        self.events = [open_event_writer(w, start) for w in workdirs]
        label = descs[0] if len(descs) == 1 else f"{len(descs)} fused runs: {', '.join(descs)}"
        self.bar = tqdm(total=total, initial=start, desc=label or "train", leave=False,
                        dynamic_ncols=True, disable=not progress)

    def add(self, step: int, metrics) -> None:
        self.pending.append((step, metrics))
        self.bar.update(1)

    def fetch(self) -> None:
        """One device->host transfer for every step since the last fetch."""
        if not self.pending:
            return
        hosts = jax.device_get([m for _, m in self.pending])
        for (step, _), host in zip(self.pending, hosts, strict=True):
            per_run = [{k: float(v[r]) for k, v in host.items() if k in keep}
                       for r, keep in enumerate(self.keep)]
            for m, desc in zip(per_run, self.descs, strict=True):
                try:
                    check_finite(m, step)
                except NonFiniteLossError as e:
                    prefix = f"{desc}: " if len(self.descs) > 1 and desc else ""
                    raise NonFiniteLossError(f"{prefix}{e}") from e
            self.window.append(per_run)
        self.pending.clear()

    def write(self, done: int) -> None:
        """Fetches, then writes each run's window means at step ``done``."""
        self.fetch()
        self.last = self.window[-1]
        for r, f in enumerate(self.files):
            rows = [w[r] for w in self.window]
            means = {k: float(np.mean([m[k] for m in rows])) for k in rows[0]}
            line = {"step": done, "epoch": self.epoch(done), **means}
            if f is not None:
                f.write(json.dumps(line) + "\n")
                f.flush()
            write_scalars(self.events[r], done, line)
            if r == 0:
                self.bar.set_postfix({k: f"{v:.3g}" for k, v in means.items()}, refresh=False)
        self.window = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for f in self.files:
            if f is not None:
                f.close()
        for w in self.events:
            if w is not None:
                w.close()
        self.bar.close()


def _open_history(path: Path, start: int):
    """``metrics.jsonl`` opened for appending, cut back to the lines of steps up to
    ``start`` (a resumed run repeats the steps after its checkpoint); ``None`` on every
    process but the one that writes files."""
    if not is_writer():
        return None
    if path.exists():
        kept = [line for line in path.read_text().splitlines()
                if line.strip() and _logged_step(line) <= start]
        paths.write_text(path, "".join(line + "\n" for line in kept))
    return paths.open_append(path)


def _logged_step(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 1 << 62  # a torn last line: dropped


__all__ = ["METRICS_FILE", "MetricLog", "NonFiniteLossError", "active_terms", "check_finite"]
