"""A dataset's identity by content, for run records: two loads of the same images, labels
and class names give the same fingerprint; any edit (an image changed, added or removed,
classes renamed or swapped) gives another."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json

import numpy as np


def _array_digest(a: np.ndarray) -> str:
    h = hashlib.blake2b(f"{a.dtype}{tuple(a.shape)}".encode(), digest_size=20)
    h.update(np.ascontiguousarray(a).reshape(-1).view(np.uint8))  # drops the GIL
    return h.hexdigest()


def dataset_fingerprint(ds) -> str:
    """Content fingerprint of a :class:`jkt.data.Dataset`: its class names and the bytes,
    shapes and order of every split's images and labels (hashed in parallel threads)."""
    arrays = [a for split in (ds.train, ds.val, ds.test) for a in (split.images, split.labels)]
    with concurrent.futures.ThreadPoolExecutor(len(arrays)) as pool:
        digests = list(pool.map(_array_digest, arrays))
    h = hashlib.sha256(json.dumps(list(ds.class_names)).encode())
    h.update("".join(digests).encode())
    return h.hexdigest()


__all__ = ["dataset_fingerprint"]
