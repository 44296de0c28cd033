"""Deterministic, stratified splits and per-class subsets of a :class:`Split`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jkt.data.types import DataConfig, Dataset, Split

# Salts keep the streams for different purposes independent for the same seed.
_VAL_SALT = 0x7A1
_TEST_SALT = 0x7E57
_SUBSET_SALT = 0x5B5


def stratified_indices(
    labels: np.ndarray, fraction: float, seed: int, *, salt: int = _VAL_SALT
) -> tuple[np.ndarray, np.ndarray]:
    """Splits ``arange(len(labels))`` into ``(kept, carved)``, stratified by label.

    Each class gives ``round(fraction * n_c)`` examples to ``carved`` (at least one when
    ``fraction > 0`` and the class has two or more; never all of a class). The choice is
    a function of ``(seed, salt)`` only. Both outputs are sorted.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng([int(seed), int(salt)])
    carved = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        n = len(members)
        k = int(round(fraction * n))
        if fraction > 0 and n >= 2:
            k = max(k, 1)
        k = min(k, n - 1)
        if k > 0:
            carved.append(rng.permutation(members)[:k])
    carved = np.sort(np.concatenate(carved)) if carved else np.zeros((0,), np.int64)
    kept = np.setdiff1d(np.arange(len(labels)), carved, assume_unique=True)
    return kept, carved


def split_off(
    split: Split, fraction: float, seed: int, *, salt: int = _VAL_SALT
) -> tuple[Split, Split]:
    """``(rest, carved)``: a stratified ``fraction`` of ``split`` carved off (see above)."""
    kept, carved = stratified_indices(split.labels, fraction, seed, salt=salt)
    return split.take(kept), split.take(carved)


def split_off_test(split: Split, fraction: float, seed: int = 0) -> tuple[Split, Split]:
    """``(train, test)`` for sources without an official test split."""
    return split_off(split, fraction, seed, salt=_TEST_SALT)


def subset_per_class(
    split: Split,
    n: int | str | None,
    seed: int = 0,
    *,
    class_names: Sequence[str] | None = None,
    num_classes: int | None = None,
) -> Split:
    """Exactly ``n`` examples of every class, chosen by ``seed`` (paper §5.1: 1..500 per class).

    Args:
      split: the split to draw from.
      n: examples per class; ``None`` or ``"full"`` returns ``split`` unchanged.
      seed: selects the subset; the same seed always gives the same examples.
      class_names: used in error messages only.
      num_classes: when given, classes absent from ``split`` are an error too.

    Returns:
      A :class:`Split` with ``n * num_classes`` examples in their original order.

    Raises:
      ValueError: when a class has fewer than ``n`` examples.
    """
    idx = _subset_indices_checked(split, n, seed, class_names, num_classes)
    return split if idx is None else split.take(idx)


def _subset_indices_checked(split: Split, n, seed: int, class_names, num_classes
                            ) -> np.ndarray | None:
    """:func:`subset_indices` of ``split`` after :func:`subset_per_class`'s checks;
    ``None`` for ``n`` of ``None`` / ``"full"`` (the whole split)."""
    if n is None or (isinstance(n, str) and n.lower() == "full"):
        return None
    n = int(n)
    if n <= 0:
        raise ValueError(f"examples per class must be positive, got {n}")
    classes = np.unique(split.labels)
    if num_classes is not None:
        classes = np.arange(num_classes)
    counts = np.bincount(split.labels, minlength=int(classes.max(initial=-1)) + 1)
    short = [int(c) for c in classes if counts[c] < n]
    if short:
        c = short[0]
        name = f"{class_names[c]!r} (id {c})" if class_names is not None else f"id {c}"
        raise ValueError(
            f"subset_per_class: class {name} has only {counts[c]} examples, fewer than "
            f"the {n} requested ({len(short)} class(es) short)"
        )
    return subset_indices(split.labels, n, seed, classes)


def subset_indices(labels: np.ndarray, n: int, seed: int, classes: np.ndarray) -> np.ndarray:
    """Sorted indices of ``n`` examples of each of ``classes``, chosen by ``seed`` (every
    class must have ``n``; :func:`subset_per_class` checks)."""
    rng = np.random.default_rng([int(seed), _SUBSET_SALT])
    chosen = [rng.choice(np.flatnonzero(labels == c), n, replace=False) for c in classes]
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros((0,), np.int64)


def validation_from_unused(split: Split, used: np.ndarray, fraction: float, seed: int) -> Split:
    """A stratified validation set of images of ``split`` *not* in ``used``.

    Each class contributes ``round(fraction * n_c)`` of its ``n_c`` images in ``split``
    (the size ``"held_out"`` validation would have), or all of its unused images when
    fewer are left. Chosen by ``seed``; sorted.
    """
    rest = np.setdiff1d(np.arange(len(split)), np.asarray(used, np.int64))
    rng = np.random.default_rng([int(seed), _VAL_SALT])
    chosen = []
    for c in np.unique(split.labels):
        k = int(round(fraction * int(np.sum(split.labels == c))))
        members = rest[split.labels[rest] == c]
        chosen.append(rng.permutation(members)[:k])
    idx = np.sort(np.concatenate(chosen)) if chosen else np.zeros((0,), np.int64)
    return split.take(idx)


def train_and_val(ds: Dataset, n: int | str | None, seed: int, cfg: DataConfig
                  ) -> tuple[Split, Split]:
    """The training set and validation set of one run on ``n`` examples per class.

    ``cfg.validation`` (see :class:`DataConfig`): ``"held_out"`` -> the subset of
    ``ds.train`` and ``ds.val``; ``"unused"`` -> the subset of the whole official train
    split and a validation set drawn from the images not in it (none for ``"full"``);
    ``"none"`` -> the subset and an empty split.
    """
    used = _subset_indices_checked(ds.train, n, seed, ds.class_names, ds.num_classes)
    train = ds.train if used is None else ds.train.take(used)
    if cfg.validation == "held_out":
        return train, ds.val
    if cfg.validation == "none" or used is None:
        return train, ds.train.take(np.zeros((0,), np.int64))
    return train, validation_from_unused(ds.train, used, cfg.val_fraction, seed)


def channel_stats(
    images: np.ndarray, chunk: int = 8192
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel mean and standard deviation of uint8 ``images`` scaled to ``[0, 1]``.

    Computed exactly from per-channel histograms of the 256 pixel values.
    """
    images = np.asarray(images)
    if len(images) == 0:
        raise ValueError("channel_stats: no images")
    if images.dtype != np.uint8:
        raise ValueError(f"channel_stats expects uint8 images, got {images.dtype}")
    hist = np.zeros((3, 256), np.int64)
    for start in range(0, len(images), chunk):
        x = images[start : start + chunk].reshape(-1, 3)
        for c in range(3):
            hist[c] += np.bincount(x[:, c], minlength=256)
    values = np.arange(256, dtype=np.float64) / 255.0
    count = hist.sum(1)
    mean = hist @ values / count
    var = hist @ np.square(values) / count - np.square(mean)
    std = np.maximum(np.sqrt(np.maximum(var, 0.0)), 1e-6)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)
