"""Pairing feature taps of two architectures for attention matching (eq. 8-10).

Taps are named by :func:`jkt.models.feature_shapes` (VGG ``pool1..``, ResNet ``stem,
stage1..4``); a student tap and a teacher tap can be matched only when their attention
maps have the same spatial size.
"""

from __future__ import annotations

from jkt.jacobian import check_same_spatial


def auto_pairs(student_shapes: dict, teacher_shapes: dict) -> tuple[tuple[str, str], ...]:
    """``((student_tap, teacher_tap), ...)`` of equal spatial size, shallowest first.

    Taps come in network order (``feature_shapes``). Where several teacher taps share a
    size (a ResNet's ``stem`` and ``stage1``), the deepest one is used: the end of the
    residual block, as Zagoruyko & Komodakis match; likewise for the student.
    """
    def last_per_size(shapes):
        by_size = {}
        for name, shape in shapes.items():
            by_size[tuple(shape[:2])] = name
        return by_size

    s_by, t_by = last_per_size(student_shapes), last_per_size(teacher_shapes)
    return tuple((s_by[hw], t) for t, shape in teacher_shapes.items()
                 if (hw := tuple(shape[:2])) in s_by and t_by[hw] == t)


def parse_pair(text: str, student_shapes: dict, teacher_shapes: dict,
               what: str = "pair") -> tuple[str, str]:
    """``"teacher_tap:student_tap"`` (either order) -> ``(student_tap, teacher_tap)``.

    Raises ``ValueError`` (one line) for unknown taps or unequal spatial sizes."""
    parts = [p.strip() for p in text.split(":")]
    if len(parts) != 2:
        raise ValueError(f"{what} {text!r}: expected TEACHER_TAP:STUDENT_TAP")
    a, b = parts
    if a in teacher_shapes and b in student_shapes:
        t, s = a, b
    elif b in teacher_shapes and a in student_shapes:
        t, s = b, a
    else:
        raise ValueError(f"{what} {text!r}: unknown tap; teacher taps: "
                         f"{', '.join(teacher_shapes)}; student taps: {', '.join(student_shapes)}")
    try:
        check_same_spatial((1, *student_shapes[s]), (1, *teacher_shapes[t]))
    except ValueError as e:
        raise ValueError(f"{what} {t}:{s}: {e}") from None
    return s, t


def pair_name(pair: tuple[str, str]) -> str:
    """``(student_tap, teacher_tap)`` -> ``"teacher_tap:student_tap"`` (Table 4's (T, S))."""
    return f"{pair[1]}:{pair[0]}"


__all__ = ["auto_pairs", "pair_name", "parse_pair"]
