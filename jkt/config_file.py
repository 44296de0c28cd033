"""Config files: ``"path/to/config.py:arg"`` -> the file's ``get_config(arg)``, the
dataclass config it returns (the big_vision / Flax-examples convention). Anything wrong
with the file is one :class:`jkt.config.ConfigError` line naming it."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

from jkt.config import ConfigError, check_finite


def load_config_file(spec: str):
    """``"path/to/file.py"`` or ``"path/to/file.py:arg"`` -> ``get_config(arg)`` of that file
    (``arg`` is ``None`` without ``:``). Anything wrong with the file (missing, not Python,
    a syntax error, no ``get_config``, an error raised in it, a result that is not a
    dataclass config) is a one-line :class:`ConfigError` naming the file."""
    path, sep, arg = spec.partition(":")
    arg = arg if sep else None
    get_config = _get_config_of(path)
    try:
        cfg = get_config(arg)
    except ValueError as e:  # ConfigError (unknown preset) or a config's own validation
        raise ConfigError(f"config file {path}: {_one_line(e)}") from None
    except Exception as e:  # the file's own code: whatever it raises is the file's fault
        raise ConfigError(f"config file {path}: get_config({arg!r}) raised "
                          f"{type(e).__name__}: {_one_line(e)}") from None
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        got = "None" if cfg is None else _a(type(cfg).__name__)
        raise ConfigError(f"config file {path}: get_config({arg!r}) returned {got}, not a "
                          "config (a dataclass instance)")
    try:
        return check_finite(cfg)
    except ConfigError as e:
        raise ConfigError(f"config file {path}: {e}") from None


def _get_config_of(path: str):
    """The ``get_config`` function of the Python file at ``path``."""
    file = Path(path)
    if not path:
        raise ConfigError("config file not given: expected FILE.py or FILE.py:ARG")
    if file.is_dir():
        raise ConfigError(f"config file {path} is a directory, not a .py file")
    if not file.is_file():
        raise ConfigError(f"config file {path!r} not found")
    if file.suffix != ".py":
        raise ConfigError(f"config file {path} is not a .py file (a config file is Python "
                          "code defining get_config(arg))")
    module_spec = importlib.util.spec_from_file_location(f"_jkt_config_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ConfigError(f"config file {path} has a syntax error at line {e.lineno}: "
                          f"{e.msg}") from None
    except Exception as e:  # the file's own code: whatever it raises is the file's fault
        raise ConfigError(f"config file {path} failed to load: {type(e).__name__}: "
                          f"{_one_line(e)}") from None
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise ConfigError(f"config file {path} defines no get_config(arg)")
    return get_config


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _a(noun: str) -> str:
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


__all__ = ["load_config_file"]
