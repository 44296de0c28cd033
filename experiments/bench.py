"""Train-step speed of every method, against an eager PyTorch reference.

    python -m experiments.bench --out runs/bench            # GPU: the reference setting
    python -m experiments.bench --small                     # CPU: the small setting
    python -m experiments.bench --methods ce,ce+act+jac:label --steps 20 --no-torch

Times the project's own jitted train step, built as the training loop builds it, one
batch already on device (``jkt.bench.harness``); the PyTorch reference
(``experiments/torch_reference.py``, optional) runs the same models, from the same
initial weights, and losses eagerly. On a CPU-only machine everything runs in the small
setting (``experiments/configs/bench.py``). Prints and, with ``--out``, writes
``bench.md`` and ``bench.json`` (``bench.partial.json`` after every method): a table of
step times, the projected wall time of the whole Table-1 grid at the measured speed, and
the performance goals as measured ratios. An ``--out`` directory that already holds an
earlier report is refused (pass another one, or ``--overwrite`` to replace
it), as is one holding another command's ``config.json``.

Exit status: 2 for a usage error (a flag, a value, an ``--out`` that cannot be used), 1
for a failure while running (a device error, a disk that fills up), 130 after Ctrl-C
(the first stops after the method being timed; ``bench.partial.json`` keeps what was
measured).
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path

# JAX and torch share the GPU in one process: JAX must not preallocate 75% of it (this also
# makes JAX's peak_bytes_in_use the step's real peak). Set before JAX's backend starts.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402

from experiments.configs import bench as configs  # noqa: E402
from jkt import bench, cli, host_allocator, parallel, workdir  # noqa: E402
from jkt import config as config_lib  # noqa: E402
from jkt.bench import report as reports  # noqa: E402

PRESET_FLAGS = {"--small": "small", "--reference": "reference"}
FLAGS = (
    cli.Flag("--methods", "methods", f"comma list (default: all): {', '.join(bench.METHODS)}"),
    cli.Flag("--steps", "setting.steps", "timed steps per method"),
    cli.Flag("--warmup", "setting.warmup", "untimed steps after compile"),
    cli.Flag("--max-seconds", "setting.max_seconds",
             "cap on timed seconds per method and framework"),
    cli.Flag("--batch-size", "setting.batch_size", "global batch size"),
    cli.Flag("--classes", "setting.num_classes", "outputs of teacher and student"),
    cli.Flag("--width-multiplier", "setting.width_multiplier", "channel width of every VGG"),
    cli.Flag("--dtype", "setting.dtype",
             "float32 | bfloat16: jkt compute dtype (bfloat16 skips the fp32 torch reference)"),
    cli.Flag("--devices", "devices", "use the first N devices (default: all)"),
    cli.Flag("--no-torch", "torch", "skip the PyTorch reference", const=False),
    cli.Flag("--torch-threads", "torch_threads",
             "torch.set_num_threads(N) for a CPU reference (torch's OpenMP pool collapses on "
             "an oversubscribed machine; 1 is stable there)"),
    cli.Flag("--out", "out", "directory for bench.md, bench.json and config.json (one "
             "holding an earlier report is refused: --overwrite replaces it)"),
    cli.Flag("--overwrite", "overwrite", "replace an earlier report in --out", const=True),
    cli.Flag("--seed", "seed", "seed of the initial weights and the batch"),
)


def parse_config(argv=None) -> bench.BenchConfig:
    """The resolved config; ``--small`` / ``--reference`` pick the preset (default: small
    when JAX's backend is the CPU)."""
    return cli.parse(argv, configs, FLAGS, preset_flags=PRESET_FLAGS,
                     description="Train-step speed of jkt vs eager PyTorch.", epilog=__doc__)


def build_parser():
    """The command-line parser (what ``--help`` shows)."""
    return cli.build_parser(description="", epilog="", flags=FLAGS, presets=list(configs.PRESETS),
                            default_preset="small", default_cfg=parse_config([]),
                            preset_flags=PRESET_FLAGS)


def torch_reference(cfg: bench.BenchConfig):
    """``(experiments.torch_reference, None)``, or ``(None, why it does not run)``."""
    if not cfg.torch:
        return None, "disabled (--no-torch)"
    if cfg.setting.dtype != "float32":
        return None, f"skipped: reference is float32, jkt runs {cfg.setting.dtype}"
    try:
        from experiments import torch_reference as reference
    except ImportError:
        return None, "not installed"
    return reference, None


def main(argv=None) -> dict:
    """Runs the command line ``argv``; returns the report. Errors end the process with one
    line on stderr (see the module docstring for the exit statuses)."""
    # Before JAX starts (parsing asks for its backend). One process for both frameworks:
    # torch's CPU tensors get the same malloc settings.
    allocator = (host_allocator.configure_jax_cpu() if host_allocator.cpu_backend_expected()
                 else None)
    cfg = parse_config(argv)
    stop = threading.Event()  # set by the first Ctrl-C (jkt.cli.run)
    return cli.run(lambda c: benchmark(c, allocator, stop), cfg,
                   errors=(jax.errors.JaxRuntimeError,), stop=stop)


def benchmark(cfg: bench.BenchConfig, allocator: str | None = None,
              stop: threading.Event | None = None) -> dict:
    """Times ``cfg``, prints the report and writes it to ``cfg.out``; returns the report.
    Raises ``ValueError`` for settings that do not fit this machine or ``--out``; exits
    with status 130 once ``stop`` is set (checked after each method) or on a second
    Ctrl-C."""
    devices = jax.devices()
    if cfg.devices is not None and cfg.devices > len(devices):
        raise ValueError(f"--devices must be in [1, {len(devices)}] (the devices here), got "
                         f"{cfg.devices}")
    devices = devices[:cfg.devices]
    out = check_out(cfg)
    if out:
        _save(out, config_lib.write_json, cfg, out / workdir.CONFIG_FILE)
    reference, note = torch_reference(cfg)

    def on_method(partial):  # a killed run still leaves what it measured
        if out:
            _save(out, reports.write_partial, partial, out)
        if stop is not None and stop.is_set():
            raise KeyboardInterrupt

    try:
        report = bench.run(
            cfg.setting, list(cfg.methods or bench.METHODS), mesh=parallel.make_mesh(devices),
            torch_reference=reference, torch_note=note, seed=cfg.seed,
            torch_threads=cfg.torch_threads, on_method=on_method, host_allocator=allocator)
    except KeyboardInterrupt:
        partial = out / reports.PARTIAL_FILE if out else None
        kept = f": {partial} holds the methods timed so far" if partial and partial.exists() else ""
        print(f"interrupted{kept}", file=sys.stderr)
        raise SystemExit(130) from None
    md = reports.markdown(report)
    print()
    print(md)
    if out:
        md_path, json_path = _save(out, reports.write, report, out, md)
        print(f"wrote {md_path}, {json_path}")
    for line in reports.nonfinite_warnings(report):
        print(line)
    return report


REPORT_FILES = ("bench.md", "bench.json", reports.PARTIAL_FILE)


def check_out(cfg: bench.BenchConfig) -> Path | None:
    """The ``--out`` directory (created), or ``None`` without one. ``ValueError`` (a usage
    error) where it is a file, cannot be created or written, holds another command's
    ``config.json``, or holds an earlier report and ``cfg.overwrite`` is not set."""
    if cfg.out is None:
        return None
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; pass a directory (for bench.md, bench.json "
                         "and config.json)")
    config = out / workdir.CONFIG_FILE
    if config.exists() and not _is_bench_config(config):
        raise ValueError(f"--out {out} holds a config.json that is not a benchmark's "
                         "(another command's work directory?); pass another --out")
    held = [f for f in REPORT_FILES if (out / f).exists()]
    if held and not cfg.overwrite:
        raise ValueError(f"--out {out} already holds {', '.join(held)} of an earlier "
                         "benchmark; pass another --out, or --overwrite to "
                         "replace it")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--out {out}: cannot create the directory: "
                         f"{e.strerror or e}") from None
    if not os.access(out, os.W_OK):
        raise ValueError(f"--out {out} is not writable; pass another --out")
    return out


def _is_bench_config(path: Path) -> bool:
    """Whether ``path`` holds a benchmark's ``config.json``."""
    try:
        data = json.loads(path.read_text())
        return isinstance(data, dict) and bool(config_lib.from_dict(bench.BenchConfig, data))
    except (OSError, ValueError):
        return False


def _save(out: Path, write, *args):
    """``write(*args)``; a failed write (full disk, read-only directory) is one
    :class:`jkt.workdir.WriteError` naming ``out``, the cause and the fix."""
    try:
        return write(*args)
    except OSError as e:
        cause = workdir.os_cause(e)
        if cause is None or isinstance(e, workdir.WriteError):
            raise
        raise workdir.write_error(f"the benchmark report into {out}", cause, out,
                                  "with --overwrite") from None


if __name__ == "__main__":
    main()
