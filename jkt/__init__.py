"""jkt: knowledge transfer with Jacobian matching (Srinivas & Fleuret, ICML 2018) in JAX.

Public modules:
  jkt.jacobian    input Jacobians: vjp_input, jvp_input, full_jacobian, select_cotangent,
                  attention-map Jacobians (eq. 10 / §5.2.1)
  jkt.losses      per-example losses (prop. 1-2, eq. 2-3, 8-10)
  jkt.models      Flax VGG-4/VGG-9/ResNet-34, ``create(name, num_classes, **options)``
  jkt.data        datasets (tfds, folders/archives, digits), subsets, device augmentation
  jkt.parallel    mesh, shardings, global batches, multi-host initialisation
  jkt.checkpoint  Orbax train-state checkpoints and teacher artifacts
  jkt.train       train/eval steps, loss composer, training loop
"""

__version__ = "0.1.0"

from jkt import checkpoint, data, jacobian, losses, models, parallel, report, train  # noqa: E402

__all__ = ["checkpoint", "data", "jacobian", "losses", "models", "parallel", "report", "train"]
