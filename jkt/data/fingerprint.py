"""A dataset's identity by content, for run records: two loads of the same images, labels
and class names give the same fingerprint; any edit (an image changed, added or removed,
classes renamed or swapped) gives another."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json

import numpy as np

from jkt.data.types import Split


def array_digest(a: np.ndarray) -> str:
    """Digest of an array's dtype, shape and bytes."""
    h = hashlib.blake2b(f"{a.dtype}{tuple(a.shape)}".encode(), digest_size=20)
    h.update(np.ascontiguousarray(a).reshape(-1).view(np.uint8))  # drops the GIL
    return h.hexdigest()


def dataset_fingerprint(ds) -> str:
    """Content fingerprint of a :class:`jkt.data.Dataset`: its class names and the bytes,
    shapes and order of every split's images and labels (hashed in parallel threads). A
    streamed split (a record source, :mod:`jkt.data.records`) counts by its
    ``fingerprint()`` instead (its listing: no image is read), so a streamed dataset's
    fingerprint differs from the same images loaded resident."""
    splits = (ds.train, ds.val, ds.test)
    arrays = [a for split in splits if isinstance(split, Split)
              for a in (split.images, split.labels)]
    with concurrent.futures.ThreadPoolExecutor(max(len(arrays), 1)) as pool:
        digests = iter(list(pool.map(array_digest, arrays)))
    parts = [next(digests) + next(digests) if isinstance(split, Split)
             else f"records:{split.fingerprint()}" for split in splits]
    h = hashlib.sha256(json.dumps(list(ds.class_names)).encode())
    h.update("".join(parts).encode())
    return h.hexdigest()


__all__ = ["array_digest", "dataset_fingerprint"]
