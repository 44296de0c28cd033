"""A finished run's record: ``result.json`` in its work directory.

A run whose ``result.json`` exists is finished: the training loop returns the stored
result instead of training it again.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from jkt import paths
from jkt.workdir import is_writer, write_file

RESULT_FILE = "result.json"


@dataclasses.dataclass
class RunResult:
    """What a run produced: accuracies on the evaluated splits, the final step's metrics
    (every loss term, accuracy, agreement), step count and wall time (of this invocation)."""

    accuracy: dict[str, float]
    final_metrics: dict[str, float]
    steps: int
    wall_time: float
    resumed_from: int | None = None

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def read_result(workdir) -> RunResult | None:
    """The ``result.json`` of the run in ``workdir``, ``None`` if it has none (not finished);
    a damaged one is one line naming it and the fix."""
    path = paths.as_dir(workdir) / RESULT_FILE
    if not path.exists():
        return None
    try:
        return RunResult(**json.loads(path.read_text()))
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path} is damaged ({type(e).__name__}); delete it to evaluate the "
                         "run again from its last checkpoint") from None


def write_result(workdir: Path, result: RunResult) -> None:
    """Writes ``result`` atomically to ``workdir/result.json`` (the writing process only)."""
    if is_writer():
        write_file(paths.as_dir(workdir) / RESULT_FILE, json.dumps(result.to_json(), indent=1),
                   resume="to evaluate the run again from its last checkpoint")


__all__ = ["RESULT_FILE", "RunResult", "read_result", "write_result"]
