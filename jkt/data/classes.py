"""Class subsets of a dataset: the source and target tasks of a transfer experiment (§5)."""

from __future__ import annotations

import numpy as np

from jkt.data.splits import channel_stats
from jkt.data.types import Dataset, Split


def class_ids(ds: Dataset, classes) -> list[int]:
    """Label ids of ``classes`` (names of ``ds.class_names``, or integer ids)."""
    ids = []
    for c in classes:
        if c in ds.class_names:
            ids.append(ds.class_names.index(c))
        elif isinstance(c, int) or (isinstance(c, str) and c.isdigit()):
            if not 0 <= int(c) < ds.num_classes:
                raise ValueError(f"class id {c} out of range for {ds.name} "
                                 f"({ds.num_classes} classes)")
            ids.append(int(c))
        else:
            raise ValueError(f"unknown class {c!r} in {ds.name}; classes: "
                             f"{', '.join(ds.class_names)}")
    if len(set(ids)) != len(ids):
        raise ValueError(f"repeated class in {list(classes)}")
    return ids


def split_classes(ds: Dataset, classes) -> Dataset:
    """The examples of ``classes`` only (every split), labels remapped to ``0..k-1`` in
    the given order; mean/std recomputed on the new training split."""
    ids = class_ids(ds, classes)
    if not isinstance(ds.train, Split):
        raise ValueError("class subsets (source/target classes) read the dataset resident: "
                         "use data.pipeline=resident (--pipeline resident)")
    lut = np.full(ds.num_classes, -1, np.int32)
    lut[ids] = np.arange(len(ids), dtype=np.int32)

    def keep(split: Split) -> Split:
        idx = np.flatnonzero(lut[split.labels] >= 0)
        return Split(split.images[idx], lut[split.labels[idx]])

    train = keep(ds.train)
    mean, std = channel_stats(train.images)
    names = tuple(ds.class_names[i] for i in ids)
    return Dataset(name=f"{ds.name}[{','.join(names)}]", train=train, val=keep(ds.val),
                   test=keep(ds.test), class_names=names, mean=mean, std=std)


def source_target_split(ds: Dataset, source_classes, target_classes
                        ) -> tuple[Dataset | None, Dataset]:
    """``(source, target)`` datasets; no source when ``source_classes`` is ``None``;
    ``target_classes=None`` means every class not in the source."""
    if source_classes is None:
        return None, ds if target_classes is None else split_classes(ds, target_classes)
    src = class_ids(ds, source_classes)
    if target_classes is None:
        target_classes = [i for i in range(ds.num_classes) if i not in src]
    tgt = class_ids(ds, target_classes)
    if set(src) & set(tgt):
        raise ValueError("source and target classes overlap: "
                         f"{sorted(ds.class_names[i] for i in set(src) & set(tgt))}")
    if not src or not tgt:
        raise ValueError("source and target tasks each need at least one class")
    return split_classes(ds, src), split_classes(ds, tgt)


__all__ = ["class_ids", "source_target_split", "split_classes"]
