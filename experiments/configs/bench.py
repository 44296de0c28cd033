"""Settings of ``python -m experiments.bench`` (train-step speed).

``reference()`` is the reference setting (the paper's CIFAR-100 Table-1 step);
``small()`` is what a CPU-only machine runs (chosen automatically there). Both return
``jkt.bench.BenchSetting``.
"""

from __future__ import annotations

from jkt.bench.settings import BenchConfig, BenchSetting


def reference() -> BenchSetting:
    """The reference setting: batch 128, VGG-9 -> VGG-4 at full width, 32x32x3, 100
    classes, fp32, 30 timed steps per method (5 s cap per method and framework).

        python -m experiments.bench --out runs/bench

    Meant for a GPU; compilation dominates the run time, and the ``full`` estimator does
    100 reverse passes per network per step.
    """
    return BenchSetting()


def small() -> BenchSetting:
    """CPU setting (automatic when JAX's backend is the CPU, or ``--small``): batch 16,
    quarter width, 10 classes, 5 timed steps per method.

        python -m experiments.bench --small
    """
    return BenchSetting(batch_size=16, num_classes=10, width_multiplier=0.25, steps=5,
                        warmup=1, max_seconds=5.0, min_steps=2, small=True)


PRESETS = {"small": lambda: BenchConfig(small()), "reference": lambda: BenchConfig(reference())}


def get_config(name: str | None = None) -> BenchConfig:
    """The preset ``name``: ``small`` or ``reference`` (default: ``small`` when JAX's
    backend is the CPU, else ``reference``)."""
    from jkt.config import preset

    if name is None:
        import jax

        name = "small" if jax.default_backend() == "cpu" else "reference"
    return preset(PRESETS, name, "small")
