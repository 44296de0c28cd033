"""Command-line plumbing shared by the experiment entry points: JAX setup, data and
optimiser flags. One clear line on bad input (``argparse`` errors exit with code 2)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from jkt.train import OptimConfig


def setup_jax(workdir: Path) -> None:
    """Multi-host initialisation (when launched as one) and a persistent compilation cache
    (identical steps of later runs and resumed runs skip XLA compilation)."""
    from jkt import parallel

    parallel.initialize_distributed()
    import jax

    if not jax.config.jax_compilation_cache_dir:  # $JAX_COMPILATION_CACHE_DIR wins
        cache = Path(workdir).absolute() / ".jax_cache"
        jax.config.update("jax_compilation_cache_dir", str(cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def prepare_workdir(workdir, preset) -> Path:
    """JAX setup (:func:`setup_jax`), the work directory, and ``preset.json`` recording the
    exact configuration of the run (a dataclass)."""
    workdir = Path(workdir)
    setup_jax(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "preset.json").write_text(
        json.dumps(dataclasses.asdict(preset), indent=1, default=str))
    return workdir


def add_data_args(p: argparse.ArgumentParser, default: str | None = "digits") -> None:
    p.add_argument("--dataset", default=default,
                   help="digits | cifar10 | cifar100 | folder:PATH (folder or .zip/.tar.xz)")
    p.add_argument("--data-dir", default=None, help="tfds data directory (cifar10/cifar100)")
    p.add_argument("--image-size", type=int, default=None, help="resize images (default 32)")
    p.add_argument("--val-fraction", type=float, default=0.1)


def load_dataset(args, image_size: int = 32):
    from jkt import data

    return data.load(args.dataset, image_size=args.image_size or image_size,
                     val_fraction=args.val_fraction, data_dir=args.data_dir)


def add_optim_args(p: argparse.ArgumentParser, default: OptimConfig, prefix: str = "") -> None:
    g = p.add_argument_group(f"{prefix or 'student '}optimiser (default: preset)")
    d = prefix.replace("-", "_")
    g.add_argument(f"--{prefix}epochs", dest=f"{d}epochs", type=int, default=None)
    g.add_argument(f"--{prefix}batch-size", dest=f"{d}batch_size", type=int, default=None)
    g.add_argument(f"--{prefix}lr", dest=f"{d}lr", type=float, default=None)
    g.add_argument(f"--{prefix}optimizer", dest=f"{d}optimizer", choices=("adam", "sgd"),
                   default=None)


def optim_from_args(args, base: OptimConfig, prefix: str = "") -> OptimConfig:
    d = prefix.replace("-", "_")
    changes = {k: v for k, v in {
        "epochs": getattr(args, f"{d}epochs"), "batch_size": getattr(args, f"{d}batch_size"),
        "learning_rate": getattr(args, f"{d}lr"), "name": getattr(args, f"{d}optimizer"),
    }.items() if v is not None}
    return dataclasses.replace(base, **changes)


def parse_list(text: str, kind=str) -> tuple:
    """``"1,5,full"`` -> ``(1, 5, "full")`` with ``kind`` applied where it parses."""
    out = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        try:
            out.append(kind(item))
        except ValueError:
            out.append(item)
    return tuple(out)


def parse_points_per_class(p: argparse.ArgumentParser, flag: str, text: str) -> tuple:
    """``"1,5,full"`` -> ``(1, 5, "full")``; anything else is a one-line usage error."""
    ns = parse_list(text, int)
    if not ns or any(not ((isinstance(n, int) and n > 0) or n == "full") for n in ns):
        p.error(f"{flag} takes positive integers or 'full', got {text!r}")
    return ns


def fail(message: str) -> None:
    """Prints one clear line and exits with status 2."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)
