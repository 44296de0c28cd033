"""A frozen teacher: a model, its variables and how its inputs are normalised.

What :mod:`jkt.checkpoint` saves as a teacher artifact and what the penalties and the
train step feed: ``Teacher.apply(x)`` gives the logits of ``x`` ``(B, H, W, C)`` (already
normalised with ``meta.mean`` / ``meta.std``) in inference mode, with no gradient to the
variables.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax

from jkt.models.registry import create


@dataclasses.dataclass(frozen=True)
class TeacherMeta:
    """What is needed to rebuild and feed a teacher.

    ``input_size`` is ``(H, W, C)``; ``mean``/``std`` are per-channel normalisation applied by
    the data pipeline; ``model_options`` are ``jkt.models.create`` options (JSON values,
    e.g. ``small_stem``, ``width_multiplier``, ``source_classes``); ``extra`` is free-form
    (e.g. test accuracy).
    """

    arch: str
    num_classes: int
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dataset: str
    model_options: dict = dataclasses.field(default_factory=dict)
    extra: dict = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_json(cls, d: dict) -> TeacherMeta:
        d = dict(d)
        for k in ("input_size", "mean", "std"):
            d[k] = tuple(d[k])
        if "stage_sizes" in d.get("model_options", {}):
            d["model_options"] = {
                **d["model_options"], "stage_sizes": tuple(d["model_options"]["stage_sizes"])
            }
        return cls(**d)

    def create_model(self, **overrides):
        """The Flax module, ``jkt.models.create(arch, num_classes, **model_options)``."""
        return create(self.arch, self.num_classes, **{**self.model_options, **overrides})


@dataclasses.dataclass(frozen=True)
class Teacher:
    """A frozen teacher: ``model.apply(variables, x, train=False)`` gives its logits.

    ``variables`` is ``{"params", "batch_stats"}``; pass it as a jit *argument* rather than
    closing over it so it is not baked into the compiled program as constants.
    """

    meta: TeacherMeta
    model: Any
    variables: Any

    def apply(self, x, return_features: bool = False, variables=None):
        """Inference-mode outputs for ``x`` of shape ``(B, H, W, C)``, no gradient to the
        variables (input gradients still flow, as Jacobian matching needs)."""
        v = jax.lax.stop_gradient(self.variables if variables is None else variables)
        return self.model.apply(v, x, train=False, return_features=return_features)


__all__ = ["Teacher", "TeacherMeta"]
