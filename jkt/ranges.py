"""Range checks of the configs' ``__post_init__``: one-line ``ValueError`` s naming the
field and the valid range (NaN, infinity and ``bool`` never pass as numbers)."""

from __future__ import annotations

import math

# Seeds reach numpy's and JAX's generators as 32-bit words: larger ones would alias smaller.
MAX_SEED = 2**32 - 1


def check_int(name: str, value, low: int = 1, high: int | None = None) -> None:
    """``value`` is an ``int`` (a ``bool`` is not) in ``[low, high]`` (``high=None``: no
    upper bound); otherwise a one-line ``ValueError`` naming ``name`` and the range."""
    if high is not None:
        kind = bound = f"an integer in [{low}, {high}]"
    elif low in (0, 1):
        bound = "positive" if low else "non-negative"
        kind = f"a {bound} integer"
    else:
        kind = f"an integer >= {low}"
        bound = f">= {low}"
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name} must be {bound}, got {value!r}")


def check_number(name: str, value, low: float | None = None, high: float | None = None, *,
                 low_open: bool = False, high_open: bool = False) -> None:
    """``value`` is a finite ``int`` or ``float`` (not a ``bool``, NaN or infinity) in the
    range from ``low`` to ``high`` (``None``: unbounded; ``*_open``: the bound itself
    excluded); otherwise a one-line ``ValueError`` naming ``name`` and the range."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if number and math.isfinite(value) and (
            low is None or (value > low if low_open else value >= low)) and (
            high is None or (value < high if high_open else value <= high)):
        return
    if low is not None and high is not None:
        valid = (f"a finite number in {'(' if low_open else '['}{low:g}, "
                 f"{high:g}{')' if high_open else ']'}")
    elif low == 0:
        valid = f"{'positive' if low_open else 'non-negative'} and finite"
    elif low is not None:
        valid = f"a finite number {'>' if low_open else '>='} {low:g}"
    elif high is not None:
        valid = f"a finite number {'<' if high_open else '<='} {high:g}"
    else:
        valid = "a finite number"
    raise ValueError(f"{name} must be {valid}, got {value!r}")


__all__ = ["MAX_SEED", "check_int", "check_number"]
