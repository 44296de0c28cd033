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
the performance goals as measured ratios.
"""

from __future__ import annotations

import os
from pathlib import Path

# JAX and torch share the GPU in one process: JAX must not preallocate 75% of it (this also
# makes JAX's peak_bytes_in_use the step's real peak). Set before JAX's backend starts.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402

from experiments.configs import bench as configs  # noqa: E402
from jkt import bench, cli, host_allocator, parallel  # noqa: E402
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
    cli.Flag("--out", "out", "directory for bench.md, bench.json and config.json"),
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
    # Before JAX starts (parsing asks for its backend). One process for both frameworks:
    # torch's CPU tensors get the same malloc settings.
    allocator = (host_allocator.configure_jax_cpu() if host_allocator.cpu_backend_expected()
                 else None)
    cfg = parse_config(argv)
    devices = jax.devices()
    if cfg.devices is not None:
        if cfg.devices > len(devices):
            raise SystemExit(f"error: --devices must be in [1, {len(devices)}]")
        devices = devices[:cfg.devices]
    out = Path(cfg.out) if cfg.out else None
    if out:
        config_lib.write_json(cfg, out / "config.json")
    reference, note = torch_reference(cfg)
    report = bench.run(
        cfg.setting, list(cfg.methods or bench.METHODS), mesh=parallel.make_mesh(devices),
        torch_reference=reference, torch_note=note, seed=cfg.seed,
        torch_threads=cfg.torch_threads,
        # A killed run still leaves what it measured.
        on_method=(lambda partial: reports.write_partial(partial, out)) if out else None,
        host_allocator=allocator)
    md = reports.markdown(report)
    print()
    print(md)
    if out:
        md_path, json_path = reports.write(report, out, md)
        print(f"wrote {md_path}, {json_path}")
    for line in reports.nonfinite_warnings(report):
        print(line)
    return report


if __name__ == "__main__":
    main()
