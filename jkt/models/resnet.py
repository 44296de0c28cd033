"""ResNet-34 with torchvision's structure and parameter names (He et al. 2016).

Used as the ImageNet teacher / MIT-Scenes student (paper §5.2). Parameter names follow
torchvision (``conv1``, ``bn1``, ``layer{s}_{b}/{conv1,bn1,conv2,bn2,downsample_conv,
downsample_bn}``, ``fc``) so ``jkt.torchvision_import`` maps a state dict one-to-one, and
padding is explicit and torch-like so converted weights give identical logits.
"""

from collections.abc import Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jkt.models import conv as conv_lib
from jkt.models.vgg import batch_norm, classifier_head, conv_init, scale_width

PAD1 = ((1, 1), (1, 1))
PAD3 = ((3, 3), (3, 3))


class BasicBlock(nn.Module):
    """Two 3x3 conv+BN layers with an identity (or 1x1 conv+BN) shortcut; NHWC in/out."""

    features: int
    stride: int = 1
    downsample: bool = False
    dtype: Any = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x, train: bool):
        conv = partial(nn.Conv, use_bias=False, kernel_init=conv_init, dtype=self.dtype,
                       conv_general_dilated=conv_lib.resolve(self.conv_impl))
        s = (self.stride, self.stride)
        y = conv(self.features, (3, 3), strides=s, padding=PAD1, name="conv1")(x)
        y = nn.relu(batch_norm(train, self.dtype, "bn1")(y))
        y = conv(self.features, (3, 3), padding=PAD1, name="conv2")(y)
        y = batch_norm(train, self.dtype, "bn2")(y)
        if self.downsample:
            x = conv(self.features, (1, 1), strides=s, padding="VALID", name="downsample_conv")(x)
            x = batch_norm(train, self.dtype, "downsample_bn")(x)
        return nn.relu(x + y)


class ResNet(nn.Module):
    """ResNet with BasicBlocks on NHWC inputs ``(B, H, W, C)``, already normalised.

    Returns logits ``(B, num_classes)`` (a ``{"target", "source"}`` dict when
    ``source_classes`` is set); with ``return_features=True`` returns ``(logits, features)``
    with taps ``"stem"`` (after the stem, incl. max-pool) and ``"stage1"``..``"stage4"``,
    each ``(B, H, W, C)``; ``stage1`` is the paper's Jacobian-matching layer (§10.2).
    ``small_stem=True`` uses a 3x3 stride-1 stem conv and no max-pool (32x32 inputs).
    ``conv_impl`` picks how convolutions are computed (see :mod:`jkt.models.conv`).
    """

    num_classes: int
    stage_sizes: Sequence[int] = (3, 4, 6, 3)
    small_stem: bool = False
    dropout: float = 0.0
    source_classes: int | None = None
    width_multiplier: float = 1.0
    dtype: Any = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        x = x.astype(self.dtype)
        width = scale_width(64, self.width_multiplier)
        conv = partial(nn.Conv, use_bias=False, kernel_init=conv_init, dtype=self.dtype,
                       conv_general_dilated=conv_lib.resolve(self.conv_impl))
        if self.small_stem:
            x = conv(width, (3, 3), padding=PAD1, name="conv1")(x)
        else:
            x = conv(width, (7, 7), strides=(2, 2), padding=PAD3, name="conv1")(x)
        x = nn.relu(batch_norm(train, self.dtype, "bn1")(x))
        if not self.small_stem:
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=PAD1)
        features = {"stem": x}
        for i, n_blocks in enumerate(self.stage_sizes):
            for b in range(n_blocks):
                stride = 2 if i > 0 and b == 0 else 1
                x = BasicBlock(
                    width * 2**i,
                    stride=stride,
                    downsample=stride != 1 or x.shape[-1] != width * 2**i,
                    dtype=self.dtype,
                    conv_impl=self.conv_impl,
                    name=f"layer{i + 1}_{b}",
                )(x, train)
            features[f"stage{i + 1}"] = x
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


ResNet34 = partial(ResNet, stage_sizes=(3, 4, 6, 3))
