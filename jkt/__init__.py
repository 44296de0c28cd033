"""jkt: knowledge transfer with Jacobian matching (Srinivas & Fleuret, ICML 2018) in JAX.

Public modules:
  jkt.jacobian    input Jacobians: vjp_input, jvp_input, full_jacobian, select_cotangent,
                  attention-map Jacobians (eq. 10 / §5.2.1)
  jkt.losses      per-example losses (prop. 1-2, eq. 2-3, 8-10)
  jkt.penalties   Jacobian matching / Jacobian-norm penalties for your own model (a
                  function, Linen or NNX) in your own training step: jacobian_penalties
  jkt.models      Flax VGG-4/VGG-9/ResNet-34, ``create(name, num_classes, **options)``,
                  feature taps and their pairing across architectures
  jkt.data        datasets (tfds, folders/archives, digits), subsets, class splits,
                  device augmentation
  jkt.parallel    mesh, shardings, global batches, multi-host initialisation
  jkt.checkpoint  Orbax train-state checkpoints and teacher artifacts
  jkt.train       train/eval steps, loss composer, method registry, training loop,
                  teachers
  jkt.grids       the paper's experiments (Tables 1-5) as functions of typed configs
  jkt.report      result tables and plots
  jkt.config      typed configs: dotted-path overrides, JSON, diffs
  jkt.cli         the command line of every experiment (config file + overrides)
"""

__version__ = "0.1.0"

from jkt import (  # noqa: E402
    checkpoint,
    cli,
    config,
    data,
    grids,
    jacobian,
    losses,
    models,
    parallel,
    penalties,
    report,
    train,
)

__all__ = ["checkpoint", "cli", "config", "data", "grids", "jacobian", "losses", "models",
           "parallel", "penalties", "report", "train"]
