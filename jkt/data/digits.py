"""scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes): offline real data."""

from __future__ import annotations

import numpy as np
from PIL import Image

from jkt.data.types import Split


def load_digits(image_size: int = 32) -> tuple[Split, tuple[str, ...]]:
    """All 1797 digits as RGB uint8 ``(N, image_size, image_size, 3)``.

    Pixel values 0..16 are scaled to 0..255, upsampled (bilinear) and replicated to
    three channels. There is no official test split; the caller carves one.

    Returns:
      ``(split, class_names)`` with class names ``"0"`` .. ``"9"``.
    """
    from sklearn.datasets import load_digits as sk_load_digits  # lazy: slow import

    bunch = sk_load_digits()
    gray = np.clip(np.round(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    if image_size != gray.shape[1]:
        gray = np.stack(
            [
                np.asarray(
                    Image.fromarray(g).resize((image_size, image_size), Image.Resampling.BILINEAR)
                )
                for g in gray
            ]
        )
    images = np.repeat(gray[..., None], 3, axis=-1)
    return Split(images, bunch.target.astype(np.int32)), tuple(str(c) for c in range(10))
