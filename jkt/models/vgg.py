"""VGG-4 / VGG-9 of the paper's appendix 10.1, plus the classifier head shared by all models.

Blocks are 3x3 conv (stride 1, SAME) + BatchNorm + ReLU; ``"M"`` is a 2x2 max-pool with
stride 2; the convolutional trunk ends in global average pooling and one Dense layer.
"""

from collections.abc import Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jkt.models import conv as conv_lib
from jkt.models.pooling import max_pool

VGG9_CONFIG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")
VGG4_CONFIG = (64, "M", 128, "M", 512, "M")

# Kaiming-normal (fan_out), as torchvision and the original code initialise convolutions.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def scale_width(channels: int, width_multiplier: float) -> int:
    """Channel count scaled by ``width_multiplier`` (at least 1)."""
    return max(1, int(round(channels * width_multiplier)))


def batch_norm(train: bool, dtype: Any, name: str) -> nn.BatchNorm:
    """BatchNorm with torch's defaults (running-average momentum 0.1, epsilon 1e-5)."""
    return nn.BatchNorm(
        use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype, name=name
    )


def classifier_head(
    x: jax.Array,
    *,
    num_classes: int,
    source_classes: int | None,
    dropout: float,
    train: bool,
    dtype: Any,
) -> jax.Array | dict[str, jax.Array]:
    """Dropout + Dense head(s) on pooled features ``x`` of shape ``(B, D)``.

    Must be called inside a compact ``__call__``: the layers become children of the caller
    (``fc`` and, for the two-head LwF student, ``fc_source``). Returns float32 logits
    ``(B, num_classes)``, or ``{"target": (B, num_classes), "source": (B, source_classes)}``
    when ``source_classes`` is set.
    """
    if dropout > 0.0:
        x = nn.Dropout(rate=dropout, deterministic=not train, name="dropout")(x)
    target = nn.Dense(num_classes, dtype=dtype, name="fc")(x).astype(jnp.float32)
    if source_classes is None:
        return target
    source = nn.Dense(source_classes, dtype=dtype, name="fc_source")(x).astype(jnp.float32)
    return {"target": target, "source": source}


class VGG(nn.Module):
    """VGG network (appendix 10.1) on NHWC inputs ``(B, H, W, C)``, already normalised.

    Returns logits ``(B, num_classes)`` (a ``{"target", "source"}`` dict when
    ``source_classes`` is set); with ``return_features=True`` returns
    ``(logits, features)`` where ``features["pool<i>"]`` is the ``(B, H, W, C)`` output of
    the i-th max-pool (``pool2`` is the paper's Jacobian-matching layer for VGG, §10.2).
    ``conv_impl`` (``"auto"``, ``"xla"``, ``"im2col"``; see :mod:`jkt.models.conv`) picks
    how convolutions are computed; parameters and the function are the same for each.
    """

    config: Sequence[int | str]
    num_classes: int
    conv_bias: bool = False
    dropout: float = 0.0
    source_classes: int | None = None
    width_multiplier: float = 1.0
    dtype: Any = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        n_pools = sum(1 for item in self.config if item == "M")
        if x.ndim != 4 or min(x.shape[1:3]) < 2 ** n_pools:
            raise ValueError(f"VGG with {n_pools} 2x2 max-pools needs NHWC inputs of at least "
                             f"{2 ** n_pools}x{2 ** n_pools} pixels, got shape {x.shape}")
        x = x.astype(self.dtype)
        conv = conv_lib.resolve(self.conv_impl)
        features = {}
        n_conv = n_pool = 0
        for item in self.config:
            if item == "M":
                n_pool += 1
                x = max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
                features[f"pool{n_pool}"] = x
                continue
            n_conv += 1
            x = nn.Conv(
                scale_width(item, self.width_multiplier),
                (3, 3),
                padding="SAME",
                use_bias=self.conv_bias,
                kernel_init=conv_init,
                dtype=self.dtype,
                conv_general_dilated=conv,
                name=f"conv{n_conv}",
            )(x)
            x = batch_norm(train, self.dtype, f"bn{n_conv}")(x)
            x = nn.relu(x)
        x = jnp.mean(x, axis=(1, 2))
        logits = classifier_head(
            x,
            num_classes=self.num_classes,
            source_classes=self.source_classes,
            dropout=self.dropout,
            train=train,
            dtype=self.dtype,
        )
        return (logits, features) if return_features else logits


VGG9 = partial(VGG, config=VGG9_CONFIG)
VGG4 = partial(VGG, config=VGG4_CONFIG)
