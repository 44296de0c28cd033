"""Checkpoint integrity: content checksums, and what counts as a damaged checkpoint.

A complete directory is not yet a correct one: a bad disk, a partial copy or a truncated
file can leave bytes that Orbax reads back without error. So every train-state checkpoint
and every teacher artifact carries a SHA-256 content checksum (each array's dtype, shape
and bytes, arrays in a fixed order by tree path), computed on the host from the values
being saved and stored in the item's meta JSON under the reserved key ``"_checksum"``
(:func:`checksum`); the restored values are checked against it (:func:`mismatch`). What
cannot be trusted raises :class:`Damaged` inside this package and reaches the caller as
one :class:`CheckpointError` line naming the directory (and step) and the fix.
"""

import concurrent.futures
import contextlib
import hashlib
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

CHECKSUM_KEY = "_checksum"
"""Reserved key of the meta JSON that holds the content checksum."""


class CheckpointError(ValueError):
    """A checkpoint or teacher artifact is damaged (content checksum mismatch, unreadable or
    truncated files, missing metadata) or none usable is left; the message is one line
    naming the directory and what to do."""


class Damaged(Exception):
    """Internal: why one checkpoint cannot be trusted (a short reason, no location)."""



def _key_name(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _path_name(path) -> str:
    return "/".join(_key_name(k) for k in path)


def _shape_table(tree) -> dict[str, tuple[int, ...]]:
    """``{"a/b/0/c": shape}`` for every leaf; dataclass fields and dict keys look alike."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {_path_name(path): tuple(x.shape) for path, x in leaves}


def check_compatible(stored, target, what: str, stored_name: str, target_name: str) -> None:
    """Raises ``ValueError`` listing leaves whose names or shapes differ."""
    have, want = _shape_table(stored), _shape_table(target)
    missing = sorted(set(want) - set(have))
    unexpected = sorted(set(have) - set(want))
    shapes = [
        f"{k}: {have[k]} (stored) vs {want[k]} (target)"
        for k in sorted(set(have) & set(want))
        if have[k] != want[k]
    ]
    if missing or unexpected or shapes:
        lines = [f"{what}: {stored_name} does not match {target_name}."]
        for title, items in (
            ("missing from the stored tree", missing),
            ("not in the target", unexpected),
            ("shape mismatches", shapes),
        ):
            if items:
                more = f" ... (+{len(items) - 10} more)" if len(items) > 10 else ""
                lines.append(f"  {title}: {items[:10]}{more}")
        raise ValueError("\n".join(lines))


def abstract(tree):
    """Shapes, dtypes and shardings of ``tree`` (restored arrays take the target's sharding)."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


# ---------------------------------------------------------------------------------------
# Content checksums.

_HASH_THREADS = min(8, os.cpu_count() or 1)
_SHORT = 16  # hex digits kept per array in the record: enough to name the damaged arrays


def _local_replica(x):
    """What this process hashes for leaf ``x``: a PRNG key array as its key data (the
    form Orbax stores), an array spread over several processes as its first local replica
    (every process then hashes the same bytes), ``None`` for an array sharded across
    processes (no process holds all of it, so it is left out of the checksum)."""
    if isinstance(x, jax.Array):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        if not x.is_fully_addressable:
            return x.addressable_data(0) if x.is_fully_replicated else None
    return x


def _leaf_digest(a: np.ndarray) -> str:
    h = hashlib.sha256(f"{a.dtype}{tuple(a.shape)}".encode())
    h.update(np.ascontiguousarray(a).reshape(-1).view(np.uint8))  # hashlib drops the GIL
    return h.hexdigest()


def _digests(tree) -> dict[str, tuple[str, list[int], str | None]]:
    """``{path: (dtype, shape, SHA-256 hex or None)}`` of every leaf of ``tree``, from one
    device-to-host copy; large trees are hashed in parallel threads."""
    named = [(_path_name(p), x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]]
    local = [_local_replica(x) for _, x in named]
    fetched = iter(jax.device_get([a for a in local if a is not None]))
    host = [None if a is None else np.asarray(next(fetched)) for a in local]
    arrays = [a for a in host if a is not None]
    if len(arrays) > 1 and sum(a.nbytes for a in arrays) > 1 << 22:
        with concurrent.futures.ThreadPoolExecutor(_HASH_THREADS) as pool:
            hashed = iter(list(pool.map(_leaf_digest, arrays)))
    else:
        hashed = iter([_leaf_digest(a) for a in arrays])
    out = {}
    for (name, x), a in zip(named, host, strict=True):
        ref = x if a is None else a
        out[name] = (str(ref.dtype), list(ref.shape), None if a is None else next(hashed))
    return out


def _combine(digests: dict[str, str | None]) -> str:
    """One SHA-256 over every leaf's path and digest, leaves sorted by path."""
    h = hashlib.sha256()
    for name in sorted(digests):
        h.update(f"{name}\0{digests[name] or '-'}\n".encode())
    return h.hexdigest()


def checksum(tree) -> dict:
    """The content checksum record of ``tree``, JSON: ``{"algorithm": "sha256", "digest",
    "leaves": {path: {"dtype", "shape", "sha256"}}}``.

    ``digest`` covers every array's dtype, shape and bytes; ``leaves`` keeps a short digest
    per array (to name the damaged ones) and its dtype (to read it back as stored).
    """
    d = _digests(tree)
    return {
        "algorithm": "sha256",
        "digest": _combine({k: v[2] for k, v in d.items()}),
        "leaves": {k: {"dtype": t, "shape": s, "sha256": h and h[:_SHORT]}
                   for k, (t, s, h) in d.items()},
    }


def mismatch(record, tree) -> str | None:
    """``None`` if ``tree`` matches the checksum ``record``, else why not (short)."""
    if (not isinstance(record, dict) or record.get("algorithm") != "sha256"
            or not isinstance(record.get("digest"), str)
            or not isinstance(record.get("leaves"), dict)):
        return "malformed checksum record"
    want = record["leaves"]
    skip = {k for k, v in want.items() if isinstance(v, dict) and v.get("sha256") is None}
    got = {k: (t, s, None if k in skip else h) for k, (t, s, h) in _digests(tree).items()}
    if _combine({k: v[2] for k, v in got.items()}) == record["digest"]:
        return None
    short = {k: {"dtype": t, "shape": s, "sha256": h and h[:_SHORT]}
             for k, (t, s, h) in got.items()}
    bad = sorted(k for k in set(want) | set(short) if want.get(k) != short.get(k))
    if not bad:
        return "checksum mismatch"
    more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
    return f"checksum mismatch in {', '.join(bad[:3])}{more}"


def as_recorded(abstract, record):
    """``abstract`` with each leaf's dtype set to the one the checksum ``record`` holds,
    so that the bytes read back are the bytes hashed (PRNG keys keep theirs)."""
    leaves = record.get("leaves") if isinstance(record, dict) else None
    if not isinstance(leaves, dict):
        return abstract

    def fix(path, x):
        r = leaves.get(_path_name(path))
        if (not isinstance(r, dict) or not isinstance(x, jax.ShapeDtypeStruct)
                or jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)):
            return x
        try:
            dtype = jnp.dtype(r.get("dtype"))
        except TypeError:
            return x
        return x if dtype == x.dtype else jax.ShapeDtypeStruct(x.shape, dtype,
                                                               sharding=x.sharding)

    return jax.tree_util.tree_map_with_path(fix, abstract)


def cast_like(tree, abstract):
    """``tree`` with each leaf in ``abstract``'s dtype (and sharding), as Orbax would have
    restored it directly."""
    def cast(x, t):
        key = jax.dtypes.prng_key
        if (x.dtype == t.dtype or jax.dtypes.issubdtype(x.dtype, key)
                or jax.dtypes.issubdtype(t.dtype, key)):
            return x
        return jax.jit(lambda a: a.astype(t.dtype),
                       out_shardings=getattr(t, "sharding", None))(x)

    return jax.tree.map(cast, tree, abstract)


def describe(e: BaseException) -> str:
    """``Type: first line`` of an exception, without TensorStore's spec dump."""
    text = (str(e).strip().splitlines() or [""])[0]
    for cut in (" See full TensorStore details", " [tensorstore_spec="):
        text = text.split(cut)[0]
    text = text if len(text) <= 200 else text[:197] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def is_resource_error(e: BaseException) -> bool:
    """Out of memory, a lost peer process and the like: a failure of this process or job,
    not of the checkpoint."""
    s = str(e)
    return (isinstance(e, MemoryError) or "RESOURCE_EXHAUSTED" in s or "out of memory" in s
            or "DEADLINE_EXCEEDED" in s or "CoordinationService" in s or "Gloo" in s)


@contextlib.contextmanager
def reading(what: str):
    """Turns a failure to read ``what`` into ``Damaged`` (resource errors pass through)."""
    try:
        yield
    except Exception as e:
        if is_resource_error(e):
            raise
        raise Damaged(f"cannot read its {what}: {describe(e)}") from e


def split_meta(raw) -> tuple[dict, Any]:
    """``(meta without the checksum, checksum record or None)`` of a stored meta JSON."""
    if raw is None:
        raise Damaged("its meta JSON is missing")
    if not isinstance(raw, dict):
        raise Damaged(f"its meta JSON is a {type(raw).__name__}, not an object")
    meta = dict(raw)
    return meta, meta.pop(CHECKSUM_KEY, None)


__all__ = ["CHECKSUM_KEY", "CheckpointError", "Damaged", "abstract", "as_recorded", "cast_like",
           "check_compatible", "checksum", "describe", "is_resource_error", "mismatch",
           "reading", "split_meta"]
