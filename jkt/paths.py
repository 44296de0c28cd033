"""Work-directory paths, local or in object storage (``gs://bucket/runs``).

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

import os
from pathlib import Path


def is_uri(path) -> bool:
    """``True`` for ``gs://bucket/x`` and other ``scheme://`` paths."""
    return "://" in os.fspath(path)


def as_dir(value) -> Path:
    """``value`` as a path: :class:`pathlib.Path` for a local path, :class:`etils.epath.Path`
    for a URI. An unsupported scheme (``ftp://``) is a one-line ``ValueError``."""
    if not is_uri(value):
        return Path(value)
    from jkt.data import cache as cache_lib

    return cache_lib.as_path(os.fspath(value))


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


__all__ = ["as_dir", "is_uri", "open_append", "write_bytes", "write_text"]
