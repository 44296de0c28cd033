"""Paths, local or in object storage (``gs://bucket/runs``): data, work directories,
teacher artifacts.

A local path stays a :class:`pathlib.Path` (everything local behaves as it always did);
a URI becomes an :class:`etils.epath.Path`, whose backend (``gcsfs`` or TensorFlow for
``gs://``) serves every read and write, instead of ``pathlib`` turning ``gs://b/x`` into
the local directory ``gs:/b/x``. Object stores differ from a local disk in two ways that
matter here, and the helpers hide both:

* an object is written whole or not at all, so a file is written in place
  (:func:`write_text`, :func:`write_bytes`) where a local file goes to a temporary name
  that is renamed over it;
* objects cannot be appended to, so :func:`open_append` rewrites the object with every
  ``flush()`` (metrics files are small: one line per logging interval).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from etils import epath

URI_SCHEMES = ("gs", "s3", "az", "hf")  # the schemes etils.epath has backends for
_BACKENDS = {"gs": "gcsfs (or tensorflow)", "s3": "s3fs", "az": "adlfs", "hf": "huggingface_hub"}


def scheme(path: str | os.PathLike) -> str | None:
    """``"gs"`` for ``gs://bucket/x``; ``None`` for a local path."""
    head, sep, _ = os.fspath(path).partition("://")
    return head if sep else None


def as_path(value: str | os.PathLike) -> epath.Path:
    """A data path as :class:`etils.epath.Path`; ``~`` is expanded for local paths only.

    Raises:
      ValueError: a URI scheme that :mod:`etils.epath` has no backend for.
    """
    text = os.fspath(value)
    s = scheme(text)
    if s is None:
        return epath.Path(text).expanduser()
    if s not in URI_SCHEMES:
        supported = ", ".join(f"{u}://" for u in URI_SCHEMES)
        raise ValueError(f"unsupported storage scheme {s}:// in {text!r}: use a local path "
                         f"or one of {supported}")
    return epath.Path(text)


@contextlib.contextmanager
def storage_errors(path) -> Iterator[None]:
    """Turns a missing storage backend (``gs://`` without ``gcsfs``...) into one line."""
    try:
        yield
    except (ImportError, NotImplementedError) as e:
        s = scheme(path)
        hint = f"; pip install {_BACKENDS[s]} to read {s}:// paths" if s in _BACKENDS else ""
        raise ValueError(f"cannot read {path}: {' '.join(str(e).split()) or type(e).__name__}"
                         f"{hint}") from e


def absolute(path) -> epath.Path:
    """An absolute local path, or a URI as it is (:func:`as_path`): where checkpoints and
    teacher artifacts are read and written."""
    s = os.fspath(path)
    return as_path(s) if "://" in s else epath.Path(os.path.abspath(s))


def is_uri(path) -> bool:
    """``True`` for ``gs://bucket/x`` and other ``scheme://`` paths."""
    return "://" in os.fspath(path)


def as_dir(value) -> Path:
    """``value`` as a path: :class:`pathlib.Path` for a local path, :class:`etils.epath.Path`
    for a URI. An unsupported scheme (``ftp://``) is a one-line ``ValueError``."""
    if not is_uri(value):
        return Path(value)
    return as_path(os.fspath(value))


def _write(path, data, method: str) -> Path:
    path = as_dir(path)
    if is_uri(path):
        getattr(path, method)(data)
        return path
    tmp = path.with_name(path.name + ".tmp")
    try:
        getattr(tmp, method)(data)
        tmp.replace(path)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise
    return path


def write_bytes(path, data: bytes) -> Path:
    """Writes ``data`` to ``path`` so that a reader sees the old file or the new one, never
    a torn one: a temporary file renamed over it locally, one object write in a store."""
    return _write(path, data, "write_bytes")


def write_text(path, text: str) -> Path:
    """:func:`write_bytes` for text."""
    return _write(path, text, "write_text")


class _RewritingAppender:
    """A text file opened for appending in an object store: ``flush()`` rewrites the
    object with what it held plus every line written since."""

    def __init__(self, path):
        self.path = path
        self._text = path.read_text() if path.exists() else ""
        self._dirty = False

    def write(self, s: str) -> int:
        self._text += s
        self._dirty = True
        return len(s)

    def flush(self) -> None:
        if self._dirty:
            self.path.write_text(self._text)
            self._dirty = False

    def close(self) -> None:
        self.flush()


def open_append(path):
    """``path`` opened for appending text: a local file, or an object rewritten on every
    ``flush()``."""
    path = as_dir(path)
    return _RewritingAppender(path) if is_uri(path) else path.open("a")


__all__ = ["URI_SCHEMES", "absolute", "as_dir", "as_path", "is_uri", "open_append", "scheme",
           "storage_errors", "write_bytes", "write_text"]
