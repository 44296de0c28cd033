"""Typed configurations: frozen dataclasses, overridden field by field through dotted paths.

Every experiment is described by one frozen dataclass (nested dataclasses for the data and
the optimisers). This module is the one mechanism that changes, saves and compares them:

* :func:`override` / :func:`apply_overrides` set any field by its dotted path
  (``"optim.learning_rate"``, ``"student_options.width_multiplier"``) from a string (as
  typed on a command line) or a Python value, coerced to the field's annotated type and
  validated by the dataclass's own ``__post_init__``. An unknown or mistyped path fails
  with the list of valid fields (and the closest match).
* :func:`to_dict` / :func:`from_dict` turn a config into JSON-ready data and back
  (tuples stay tuples); :func:`diff` lists the dotted paths where two configs differ.
* No built config holds a NaN or an infinity (:func:`check_finite`: :func:`apply_overrides`
  and :func:`from_dict` refuse one wherever it is, also inside ``dict`` fields). The range
  checks of the configs' ``__post_init__`` are :mod:`jkt.ranges`; config files
  (``"path/to/config.py:arg"``) are read by :mod:`jkt.config_file`.

String values by annotated type: ``bool`` (``true/false/1/0/yes/no``), ``int``, ``float``,
``str``; ``X | None`` (``none``/``null`` is ``None``); ``tuple[X, ...]`` a comma list
(``"1,5,full"``; empty or ``none`` is ``()``); ``Literal[...]`` one of its values;
``dict`` fields take ``key=value`` through a deeper path or a JSON object.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import numbers
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

NONE_WORDS = ("none", "null")
TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")


class ConfigError(ValueError):
    """A configuration value or path is invalid; the message is one line saying why."""


# ---------------------------------------------------------------------------------------
# Type coercion


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_union(tp) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _type_name(tp) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _parse_scalar(text: str, tp, where: str):
    t = text.strip()
    if tp is bool:
        if t.lower() in TRUE_WORDS:
            return True
        if t.lower() in FALSE_WORDS:
            return False
        raise ConfigError(f"{where}: expected true or false, got {text!r}")
    if tp is int:
        try:
            return int(t)
        except ValueError:
            raise ConfigError(f"{where}: expected an integer, got {text!r}") from None
    if tp is float:
        try:
            return float(t)
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {text!r}") from None
    if tp is str:
        return t
    raise ConfigError(f"{where}: cannot parse {text!r} as {_type_name(tp)}")


def _literal_value(text: str) -> Any:
    """A value of unknown type (inside a ``dict`` field): number, bool, none, comma list
    (tuple) or string."""
    t = text.strip()
    if t.startswith(("{", "[")):
        try:
            return _tupled(json.loads(t))
        except json.JSONDecodeError:
            pass
    if "," in t:
        return tuple(_literal_value(p) for p in t.split(",") if p.strip())
    if t.lower() in NONE_WORDS:
        return None
    if t.lower() in ("true", "false"):
        return t.lower() == "true"
    for kind in (int, float):
        try:
            return kind(t)
        except ValueError:
            pass
    return t


def _tupled(value):
    if isinstance(value, list | tuple):
        return tuple(_tupled(v) for v in value)
    if isinstance(value, dict):
        return {k: _tupled(v) for k, v in value.items()}
    return value


def coerce(value: Any, tp, where: str = "value") -> Any:
    """``value`` (a command-line string or JSON-ready data) as an instance of ``tp``."""
    if tp is Any:
        return _literal_value(value) if isinstance(value, str) else _tupled(value)
    if _is_union(tp):
        members = typing.get_args(tp)
        if type(None) in members and (value is None or (
                isinstance(value, str) and value.strip().lower() in NONE_WORDS)):
            return None
        errors = []
        for m in members:
            if m is type(None):
                continue
            try:
                return coerce(value, m, where)
            except ConfigError as e:
                errors.append(str(e).split(": ", 1)[-1])
        raise ConfigError(f"{where}: {value!r} is not {_type_name(tp)} ({'; '.join(errors)})")
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        for c in choices:
            if value == c or (isinstance(value, str) and str(c) == value.strip()):
                return c
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, choices))}")
    if tp is tuple or origin is tuple:
        args = typing.get_args(tp)
        item = args[0] if args and (len(args) == 1 or args[1] is Ellipsis) else Any
        if isinstance(value, str):
            t = value.strip()
            if t.lower() in (*NONE_WORDS, "", "()"):
                return ()
            value = [p for p in t.strip("()").split(",") if p.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a comma list, got {value!r}")
        if args and len(args) > 1 and args[1] is not Ellipsis:  # fixed-length tuple
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} items, got {value!r}")
            return tuple(coerce(v, a, where) for v, a in zip(value, args, strict=True))
        return tuple(coerce(v, item, where) for v in value)
    if tp is dict or origin is dict:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise ConfigError(f"{where}: expected a JSON object, e.g. "
                                  f"'{{\"width_multiplier\": 0.5}}', got {value!r}") from None
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {str(k): _tupled(v) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, Mapping):
            return from_dict(tp, value, where)
        raise ConfigError(f"{where}: set the fields of {tp.__name__} one by one "
                          f"({where}.FIELD=VALUE)")
    if isinstance(value, str):
        return _parse_scalar(value, tp, where)
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp in (int, str, bool) and type(value) is tp:
        return value
    if tp is int and isinstance(value, float) and value.is_integer():
        return int(value)
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")


# ---------------------------------------------------------------------------------------
# Paths


def field_names(cfg_or_cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cfg_or_cls)]


def field_paths(cfg) -> list[str]:
    """Every dotted path of ``cfg``: nested dataclasses are expanded, ``dict`` fields listed
    with their current keys (``student_options.width_multiplier``) and as a whole."""
    out = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out += [f"{f.name}.{p}" for p in field_paths(value)]
        else:
            out.append(f.name)
            if isinstance(value, dict):
                out += [f"{f.name}.{k}" for k in value]
    return out


def _cls_name(cfg_or_cls) -> str:
    return getattr(cfg_or_cls, "__name__", type(cfg_or_cls).__name__)


def _unknown(name: str, cfg, prefix: str) -> ConfigError:
    valid = field_names(cfg)
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
    return ConfigError(f"unknown config field '{prefix}{name}' of {_cls_name(cfg)}{hint}; "
                       f"valid: {', '.join(prefix + v for v in valid)}")


def get(cfg, path: str) -> Any:
    """The value at dotted ``path``."""
    value = cfg
    for i, part in enumerate(path.split(".")):
        prefix = ".".join(path.split(".")[:i])
        prefix = prefix + "." if prefix else ""
        if dataclasses.is_dataclass(value):
            if part not in field_names(value):
                raise _unknown(part, value, prefix)
            value = getattr(value, part)
        elif isinstance(value, dict):
            if part not in value:
                raise ConfigError(f"{prefix}{part}: no such key; keys: {', '.join(value)}")
            value = value[part]
        else:
            raise ConfigError(f"{prefix.rstrip('.')} is a {type(value).__name__}, it has no "
                              f"field {part!r}")
    return value


def _tree(cfg) -> dict:
    """Field name -> value, nested dataclasses as dicts (values are not copied)."""
    return {f.name: _tree(v) if dataclasses.is_dataclass(v := getattr(cfg, f.name)) else v
            for f in dataclasses.fields(cfg)}


def _build(cls, tree: dict, where: str = ""):
    """The dataclass ``cls`` (at dotted path ``where``) from a :func:`_tree`; each
    ``__post_init__`` runs once."""
    hints = _hints(cls)
    kwargs = {k: _build(hints[k], v, f"{where}{k}.") if dataclasses.is_dataclass(hints[k])
              and isinstance(v, dict) else v for k, v in tree.items()}
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(_qualified(str(e), cls, where)) from None


def _qualified(message: str, cls, where: str, other: str = "") -> str:
    """``message`` on one line; a nested config's message that starts with one of its
    field names gets the config's path ``where`` (``learning_rate ...`` ->
    ``optim.learning_rate ...``), any other message the prefix ``other``."""
    message = " ".join(message.split())
    head = message.split(" ", 1)[0].rstrip(":")
    return (where if where and head in field_names(cls) else other) + message


def _set(tree: dict, cls, parts: list[str], value: Any, prefix: str) -> None:
    head, rest = parts[0], parts[1:]
    if head not in field_names(cls):
        raise _unknown(head, cls, prefix)
    where = prefix + head
    tp = _hints(cls)[head]
    if not rest:
        tree[head] = coerce(value, tp, where)
        if dataclasses.is_dataclass(tp):
            tree[head] = _tree(tree[head])
    elif dataclasses.is_dataclass(tp):
        _set(tree[head], tp, rest, value, where + ".")
    elif isinstance(tree[head], dict):
        tree[head] = _set_in_dict(tree[head], ".".join(rest), value, where)
    else:
        raise ConfigError(f"{where} is {_type_name(tp)}, it has no field {'.'.join(rest)!r}")


def _set_in_dict(d: dict, path: str, value: Any, where: str) -> dict:
    key, _, rest = path.partition(".")
    out = dict(d)
    if rest:
        inner = out.get(key, {})
        if not isinstance(inner, dict):
            raise ConfigError(f"{where}.{key} is not a mapping")
        out[key] = _set_in_dict(inner, rest, value, f"{where}.{key}")
    else:
        out[key] = _literal_value(value) if isinstance(value, str) else _tupled(value)
    return out


def apply_overrides(cfg, overrides: Iterable[tuple[str, Any]]):
    """A copy of dataclass ``cfg`` with the field at each dotted path set to its value, in
    order (coerced to the field's type; see the module docstring). The config is built
    and validated once, after the last override, so that overrides which are only valid
    together (``methods=()`` with an ablation) can be given in any order. Raises
    :class:`ConfigError` naming the path for an unknown field or a bad value."""
    tree = _tree(cfg)
    for path, value in overrides:
        _set(tree, type(cfg), path.strip().split("."), value, "")
    return check_finite(_build(type(cfg), tree))


def override(cfg, path: str, value: Any):
    """:func:`apply_overrides` with one ``(path, value)``."""
    return apply_overrides(cfg, [(path, value)])


# ---------------------------------------------------------------------------------------
# No NaN or infinity in a config


def check_finite(cfg, where: str = ""):
    """``cfg`` if no float in it (nested configs, ``dict`` and tuple fields) is a NaN or an
    infinity; otherwise a :class:`ConfigError` naming the path. Returns ``cfg``."""
    for path, value in _leaves(cfg, where.rstrip(".")):
        if isinstance(value, numbers.Real) and not math.isfinite(value):
            raise ConfigError(f"{path or 'value'}: {value!r} is not a finite number")
    return cfg


def _leaves(value, path: str):
    """``(dotted path, value)`` of every leaf of a config, dict or tuple (the items of a
    tuple are named by the tuple's path)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from _leaves(getattr(value, f.name), f"{path}.{f.name}" if path else f.name)
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _leaves(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _leaves(v, path)
    else:
        yield path, value


# ---------------------------------------------------------------------------------------
# Serialisation and comparison


def to_dict(cfg) -> dict:
    """JSON-ready nested dict of a dataclass config (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def from_dict(cls, data: Mapping, where: str = "") -> Any:
    """The dataclass ``cls`` from :func:`to_dict` output; missing fields keep defaults,
    unknown keys are refused."""
    hints = _hints(cls)
    valid = field_names(cls)
    unknown = [k for k in data if k not in valid]
    if unknown:
        names = ", ".join(f"{where}.{k}" if where else k for k in unknown)
        raise ConfigError(f"unknown config field(s) {names} of {cls.__name__}; valid: "
                          f"{', '.join(valid)}")
    kwargs = {k: coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    try:
        cfg = cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(_qualified(str(e), cls, f"{where}." if where else "",
                                     f"{where or cls.__name__}: ")) from None
    return check_finite(cfg, f"{where}." if where else "")


def flatten(data: Mapping, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (dicts are expanded, lists kept)."""
    out = {}
    for k, v in data.items():
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def diff(a, b) -> list[str]:
    """Dotted paths whose values differ between two configs (dataclasses or dicts)."""
    fa = flatten(a if isinstance(a, Mapping) else to_dict(a))
    fb = flatten(b if isinstance(b, Mapping) else to_dict(b))
    keys = [k for k in fa.keys() | fb.keys() if fa.get(k, None) != fb.get(k, None)]
    # An empty dict on one side and its keys on the other: report the keys only.
    return sorted(k for k in keys if not any(o.startswith(k + ".") for o in keys))


def write_json(cfg, path) -> Path:
    """Writes ``to_dict(cfg)`` (or a dict) to ``path`` atomically; returns the path."""
    from jkt import paths

    path = paths.as_dir(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = cfg if isinstance(cfg, Mapping) else to_dict(cfg)
    return paths.write_text(path, json.dumps(data, indent=1, sort_keys=False) + "\n")


def preset(presets: Mapping[str, Any], name: str | None, default: str):
    """``presets[name or default]()`` with a one-line error listing the valid names."""
    key = default if name in (None, "") else name
    if key not in presets:
        raise ConfigError(f"unknown preset {key!r}; valid: {', '.join(presets)}")
    return presets[key]()


__all__ = ["ConfigError", "apply_overrides", "check_finite", "coerce", "diff", "field_names",
           "field_paths", "flatten", "from_dict", "get", "override", "preset", "to_dict",
           "write_json"]
