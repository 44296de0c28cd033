"""Runs the benchmark: every requested row in ``jkt`` and, optionally, in PyTorch.

JAX and torch may share one GPU in the process: run with
``XLA_PYTHON_CLIENT_PREALLOCATE=false`` set before JAX's backend starts (the command
line ``experiments.bench`` does), so that JAX does not take 75% of the memory up front
and its ``peak_bytes_in_use`` is the step's real peak.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Sequence

import jax

from jkt import parallel
from jkt.bench import report as reports
from jkt.bench import torch_runner
from jkt.bench.harness import JaxBench
from jkt.bench.methods import METHODS
from jkt.bench.settings import BenchSetting


def environment(mesh) -> dict:
    """JAX version, backend, devices, Python version and matmul precision."""
    return {"jax": jax.__version__, "backend": jax.default_backend(),
            "jax_devices": parallel.process_count_str(mesh),
            "device_kind": mesh.devices.flat[0].device_kind,
            "python": platform.python_version(),
            "jax_default_matmul_precision": str(jax.config.jax_default_matmul_precision)}


def run(setting: BenchSetting, method_names: Sequence[str], *, mesh=None,
        torch_reference=None, torch_note: str = "not run", seed: int = 0,
        torch_threads: int | None = None, log: Callable[[str], None] = print,
        on_method: Callable[[dict], None] | None = None,
        host_allocator: str | None = None) -> dict:
    """Benchmarks the rows ``method_names`` of ``jkt.bench.METHODS``.

    Args:
      setting: sizes and timing budget.
      method_names: keys of ``METHODS``, timed in this order.
      mesh: the data mesh (default: every device).
      torch_reference: the PyTorch reference implementation (see
        ``jkt.bench.torch_runner``), or ``None`` to time ``jkt`` only. Fused rows have no
        reference counterpart.
      torch_note: why no reference runs (the report's ``environment["torch"]``), when
        ``torch_reference`` is ``None``.
      seed: seeds the batch and the initial variables.
      torch_threads: ``torch.set_num_threads`` for a CPU reference.
      log: gets one progress line per row.
      on_method: called with the report so far after each row (e.g. to save progress).
      host_allocator: how the host's malloc is set up (``jkt.host_allocator.configure``'s
        line), recorded in the report's environment.

    Returns:
      The report (``jkt.bench.report.build``), the JSON ``--out`` writes.
    """
    mesh = parallel.make_mesh() if mesh is None else mesh
    with_torch = torch_reference is not None
    torch_env = torch_runner.environment(torch_threads) if with_torch else {}
    bench = JaxBench(setting, mesh, seed)
    env = environment(mesh)
    env.update(torch_env or {"torch": torch_note})
    if host_allocator is not None:
        env["host_allocator"] = host_allocator
    results = {}
    for name in method_names:
        method = METHODS[name]
        j, init_vars = bench.run(method)
        t = (torch_runner.run_torch(torch_reference, method, bench, init_vars)
             if with_torch and not method.fused else None)
        ratio = j["median_ms"] / t["median_ms"] if t is not None else None
        results[name] = {"label": method.label, "student": method.student,
                         "members": list(method.members),
                         "teacher": method.teacher, "objective": repr(method.objective),
                         "jkt": j, "torch": t, "ratio": ratio}
        log(f"{name:>24}: jkt {j['median_ms']:8.2f} ms/step"
            + (f" ({j['ms_per_run_step']:.2f} per run)" if method.fused else "")
            + f" (compile {j['compile_s']:.1f} s)"
            + (f", torch {t['median_ms']:8.2f} ms/step, jkt/torch {ratio:.2f}" if t else ""))
        if on_method is not None:
            on_method(reports.build(setting, env, results, with_torch))
    return reports.build(setting, env, results, with_torch)
