"""Typed config overrides, serialisation and comparison (``jkt.config``)."""

import dataclasses
from typing import Literal

import pytest

from jkt import config as C


@dataclasses.dataclass(frozen=True)
class Inner:
    rate: float = 0.1
    name: str = "adam"

    def __post_init__(self):
        if self.rate <= 0:
            raise ValueError(f"rate must be positive, got {self.rate}")


@dataclasses.dataclass(frozen=True)
class Outer:
    inner: Inner = Inner()
    steps: int | None = None
    seeds: tuple[int, ...] = (0,)
    ns: tuple[int | str, ...] = (1, "full")
    classes: tuple[str, ...] | None = ("a",)
    options: dict = dataclasses.field(default_factory=dict)
    mode: Literal["on", "off"] = "on"
    flag: bool = False


def test_strings_are_coerced_to_the_annotated_types():
    cfg = C.apply_overrides(Outer(), [
        ("inner.rate", "3e-3"), ("steps", "7"), ("seeds", "1,2"), ("ns", "5,full"),
        ("classes", "none"), ("options.width_multiplier", "0.5"), ("options.sizes", "1,1"),
        ("mode", "off"), ("flag", "true")])
    assert cfg == Outer(Inner(3e-3), 7, (1, 2), (5, "full"), None,
                        {"width_multiplier": 0.5, "sizes": (1, 1)}, "off", True)
    assert C.override(cfg, "steps", "none").steps is None
    assert C.override(cfg, "seeds", "").seeds == ()
    assert C.override(cfg, "inner.rate", 2).inner.rate == 2.0  # python values too


@pytest.mark.parametrize("path, value, message", [
    ("inner.rat", "1", "unknown config field 'inner.rat' of Inner (did you mean inner.rate?)"),
    ("nope", "1", "valid: inner, steps, seeds"),
    ("steps", "x", "steps: 'x' is not int | None"),
    ("seeds", "1,b", "seeds: expected an integer, got 'b'"),
    ("mode", "maybe", "mode: 'maybe' is not one of on, off"),
    ("flag", "perhaps", "flag: expected true or false"),
    ("inner.rate", "-1", "rate must be positive, got -1.0"),
    ("steps.x", "1", "steps is int | None, it has no field 'x'"),
    ("inner", "3", "set the fields of Inner one by one"),
])
def test_bad_paths_and_values_are_one_line(path, value, message):
    with pytest.raises(C.ConfigError) as e:
        C.override(Outer(), path, value)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_validation_runs_once_after_all_overrides():
    @dataclasses.dataclass(frozen=True)
    class Pair:
        a: int = 1
        b: int = 1

        def __post_init__(self):
            if self.a != self.b:
                raise ValueError("a and b must be equal")

    assert C.apply_overrides(Pair(), [("a", "2"), ("b", "2")]) == Pair(2, 2)
    with pytest.raises(C.ConfigError, match="must be equal"):
        C.apply_overrides(Pair(), [("a", "2")])


def test_json_round_trip_keeps_tuples_and_nested_dataclasses(tmp_path):
    cfg = Outer(Inner(0.5, "sgd"), 3, (1, 2), (5, "full"), ("x", "y"), {"s": (1, 2)}, "off")
    path = C.write_json(cfg, tmp_path / "c.json")
    import json

    data = json.loads(path.read_text())
    assert C.from_dict(Outer, data) == cfg
    with pytest.raises(C.ConfigError, match="unknown config field"):
        C.from_dict(Outer, {**data, "extra": 1})


def test_diff_names_the_dotted_paths_that_differ():
    a = Outer()
    b = C.apply_overrides(a, [("inner.rate", "0.2"), ("options.w", "1")])
    assert C.diff(a, b) == ["inner.rate", "options.w"]
    assert C.diff(a, C.to_dict(a)) == []


def test_field_paths_and_get():
    cfg = Outer(options={"w": 1})
    assert C.field_paths(cfg)[:2] == ["inner.rate", "inner.name"]
    assert "options.w" in C.field_paths(cfg)
    assert C.get(cfg, "inner.name") == "adam" and C.get(cfg, "options.w") == 1
    with pytest.raises(C.ConfigError, match="did you mean"):
        C.get(cfg, "inner.nam")
