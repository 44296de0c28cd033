"""The model registry: models by name, and their shapes without compute."""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jkt.models.resnet import ResNet34
from jkt.models.vgg import VGG4, VGG9

MODELS = {"vgg4": VGG4, "vgg9": VGG9, "resnet34": ResNet34}
# Fields fixed by the preset (not user options).
_FIXED = {"parent", "name", "num_classes", "config"}


def options(name: str) -> list[str]:
    """The options ``create(name, ...)`` accepts (the module's fields but the fixed ones)."""
    cls = MODELS[name].func
    return sorted(f.name for f in dataclasses.fields(cls) if f.name not in _FIXED)


def create(name: str, num_classes: int, **opts: Any):
    """Builds model ``name`` ("vgg4", "vgg9", "resnet34") with ``num_classes`` outputs.

    ``opts`` are the module's fields (:func:`options`), e.g. ``dropout``, ``source_classes``,
    ``width_multiplier``, ``dtype``, ``conv_impl`` (``"auto"``: im2col convolutions on a
    CPU backend, XLA's elsewhere), ``conv_bias`` (VGG), ``small_stem`` / ``stage_sizes``
    (ResNet). Raises ``ValueError`` for an unknown name, ``TypeError`` for an unknown option.
    """
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}; valid names: {sorted(MODELS)}")
    unknown = sorted(set(opts) - set(options(name)))
    if unknown:
        raise TypeError(
            f"Unknown option(s) {unknown} for model {name!r}; valid options: {options(name)}"
        )
    return MODELS[name](num_classes=num_classes, **opts)


def abstract_variables(model, input_shape: tuple[int, int, int]):
    """``{"params", "batch_stats"}`` as ``jax.ShapeDtypeStruct`` leaves (no compute).

    ``input_shape`` is one example's ``(H, W, C)``.
    """
    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    return jax.eval_shape(lambda x: model.init({"params": jax.random.key(0)}, x), x)


def param_count(model, input_shape: tuple[int, int, int]) -> int:
    """Number of trainable parameters (``params`` only, not ``batch_stats``)."""
    params = abstract_variables(model, input_shape)["params"]
    return sum(int(p.size) for p in jax.tree.leaves(params))


def feature_shapes(model, input_shape: tuple[int, int, int]) -> dict[str, tuple[int, ...]]:
    """Per-example shapes ``(H, W, C)`` of the model's feature taps for ``(H, W, C)`` inputs.

    Uses ``jax.eval_shape`` (no compute); lets callers list spatial sizes and pair taps
    between teacher and student architectures.
    """
    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    order = []  # Taps in network order (eval_shape returns dicts with sorted keys).

    def run(x):
        variables = model.init({"params": jax.random.key(0)}, x)
        features = model.apply(variables, x, return_features=True)[1]
        order.extend(features)
        return features

    shapes = jax.eval_shape(run, x)
    return {k: tuple(shapes[k].shape[1:]) for k in order}
