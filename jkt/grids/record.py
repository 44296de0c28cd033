"""What a run learned from, as its record: the fields it depends on and fingerprints of its
inputs, checked before a grid trains anything.

A grid writes each run's record (``config.json`` beside its checkpoints) and compares it
with the stored one before resuming or reusing the run (:func:`jkt.workdir.check_record`).
Besides the settings, the record holds ``inputs``: a content fingerprint of the dataset
(:func:`jkt.data.fingerprint.dataset_fingerprint`: every image, label and class
name) and, for a run that learns
from a teacher, of the teacher (:func:`teacher_fingerprint`: its weights and meta). A
resumed or reused run whose inputs changed (another teacher with the same settings, an
image folder edited since) is refused with one line. Only what a run depends on is
compared (:func:`unused_fields`): a Jacobian estimator does not concern a
cross-entropy-only run, nor does the teacher.
"""

from __future__ import annotations

import hashlib
import json

from jkt.train.objective import Objective
from jkt.workdir import RECORD_MAY_CHANGE, check_record

INPUTS = "inputs"
"""Record key of the input fingerprints (absent from records written before they existed:
such records are compared without them)."""


def variables_fingerprint(variables) -> str:
    """Content fingerprint of a pytree of arrays (its checkpoint checksum's digest)."""
    from jkt.checkpoint.integrity import checksum

    return checksum(variables)["digest"]


def teacher_fingerprint(teacher) -> str:
    """Content fingerprint of a :class:`jkt.models.Teacher`: the checksum of its variables
    and its meta (architecture, options, normalisation, classes)."""
    h = hashlib.sha256(variables_fingerprint(teacher.variables).encode())
    h.update(json.dumps(teacher.meta.to_json(), sort_keys=True).encode())
    return h.hexdigest()


def unused_fields(objective: Objective, prefix: str = "train.objective") -> tuple[str, ...]:
    """Dotted record fields a run with ``objective`` does not depend on: the options of
    the terms it does not weight (Jacobian estimator, attention pairs, temperature,
    noise, ...), and the teacher (``teacher``, ``inputs.teacher``) when no term uses
    it."""
    o, unused = objective, []
    if o.jac == 0 and o.jac_norm == 0 and o.kd_jac == 0:
        unused += ["estimator", "normalize"]
    if o.jac_norm == 0:
        unused += ["jac_norm_form"]
    if o.att == 0:
        unused += ["att_pairs", "att_variant"]
    if o.att_jac == 0:
        unused += ["att_jac_pair", "pool_fraction"]
    if o.kd == 0 and o.kd_jac == 0:
        unused += ["temperature"]
    if o.act_noise == 0 and o.ce_noise == 0:
        unused += ["noise_sigma", "noise_draws"]
    out = [f"{prefix}.{f}" for f in unused]
    if not o.needs_teacher:
        out += ["teacher", f"{INPUTS}.teacher"]
    return tuple(out)


def check_runs(records) -> None:
    """Checks every ``(run_dir, record, what, objective)`` of a grid against its stored
    record (writing those that are new) before anything trains; the first run recorded
    with other settings or inputs stops the launch with one line
    (:class:`jkt.workdir.SettingsChangedError`)."""
    from jkt.workdir import CONFIG_FILE

    for run_dir, record, what, objective in records:
        check_record(run_dir / CONFIG_FILE, record, what=what,
                     ignore=(*RECORD_MAY_CHANGE, *unused_fields(objective)),
                     optional=(INPUTS,))


__all__ = ["INPUTS", "check_runs", "teacher_fingerprint", "unused_fields",
           "variables_fingerprint"]
