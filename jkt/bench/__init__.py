"""Train-step speed of every method, optionally next to an eager PyTorch reference.

``settings`` (what is timed, the Table-1 schedule), ``methods`` (the benchmarked steps),
``harness`` (times ``jkt``'s jitted step as the training loop builds it),
``torch_runner`` (times a PyTorch reference, importing torch lazily), ``report``
(Table-1 projection, markdown, output files), ``runner`` (:func:`run`: all of it).
The command line is ``python -m experiments.bench``.
"""

from jkt.bench.harness import JaxBench
from jkt.bench.methods import (
    FUSED_LAYOUTS,
    METHODS,
    TABLE1_FUSED,
    TABLE1_PROXY,
    TEACHER_PROXY,
    Method,
)
from jkt.bench.runner import run
from jkt.bench.settings import BenchConfig, BenchSetting

__all__ = ["BenchConfig", "BenchSetting", "FUSED_LAYOUTS", "JaxBench", "METHODS", "Method",
           "TABLE1_FUSED", "TABLE1_PROXY", "TEACHER_PROXY", "run"]
