"""The training step's memory per device, estimated before anything is compiled
(:func:`check_step`, called by :func:`jkt.train.loop.train_and_evaluate`) and checked
against the device's memory (:func:`jkt.resources.device_memory`): a batch or image size
that cannot fit is one :class:`jkt.resources.ResourceError` line naming the setting to
change, instead of an out-of-memory kill minutes later.

The estimate counts the arrays that are surely allocated (train state, gradients,
batches, teacher variables) plus the per-example bytes of every module output of one
forward pass (from ``jax.eval_shape``: tracing, no compilation; remembered per model)
times the per-device batch and the documented factors below.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jkt import resources
from jkt.resources import check_fits

# Activation factors: the per-example bytes of every module output of one forward pass
# (:func:`model_profile`), times the per-device batch, times:
CE_FACTOR = 3
"""One forward and backward pass: the forward outputs kept for the backward pass (about
1x; ReLU outputs and other values that are not module outputs are part of the factor),
their gradients (1x) and the fusion and convolution temporaries of both passes (1x)."""
JACOBIAN_FACTOR = 6
"""With ``jac``, ``jac_norm`` or ``att_jac``: the student's Jacobian rows are pullbacks of
its forward pass (:func:`jkt.jacobian.run_once`) that the loss is then differentiated
through (double backprop): twice :data:`CE_FACTOR`. The ``full`` estimator takes one
pullback per output: ``CE_FACTOR * (1 + K)`` for ``K`` outputs."""
TEACHER_FACTOR = 1
"""The frozen teacher's forward pass (no gradient); +1 per Jacobian row it provides
(``jac`` or ``kd_jac`` with a reverse-mode estimator, ``att_jac``), +K for the ``full``
estimator, +1 per noisy forward pass (``act_noise``)."""
EVAL_FACTOR = 2
"""Inference: the input and the output of the largest layer, per example of the
evaluation batch (XLA frees each intermediate once it is used)."""
IN_FLIGHT_BATCHES = 2
"""Batches on the device at once: the step's and the next one, put there while the step
runs (dispatch is asynchronous)."""


def _nbytes(tree) -> int:
    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
               for x in jax.tree.leaves(tree))


@dataclasses.dataclass(frozen=True)
class ModelProfile:
    """What one model costs, from shapes only (:func:`model_profile`).

    Attributes:
      state: bytes of a :class:`jkt.train.state.TrainState` (parameters, BatchNorm
        statistics, optimiser state); ``0`` for a frozen model (teacher).
      params: bytes of the trainable parameters (a gradient and an update are this size).
      variables: bytes of ``{"params", "batch_stats"}``.
      activations: per-example bytes of every module output of one forward pass, plus the
        float32 input and the im2col patch matrices of convolutions computed that way
        (:mod:`jkt.models.conv`).
      largest: per-example bytes of the largest of them.
      outputs: size of the (largest) output head.
    """

    state: int
    params: int
    variables: int
    activations: int
    largest: int
    outputs: int


def _activation_bytes(intermediates, params, im2col: set) -> tuple[int, int, int]:
    """``(sum, largest, outputs)`` of the per-example intermediates; a convolution in
    ``im2col`` adds its ``(Ho, Wo, kh*kw*C)`` patch matrix."""
    sizes, outputs = [], 1
    for path, leaf in jax.tree_util.tree_leaves_with_path(intermediates):
        keys = [getattr(k, "key", None) for k in path]
        per_example = int(np.prod(leaf.shape[1:])) * np.dtype(leaf.dtype).itemsize
        sizes.append(per_example)
        module = tuple(keys[:keys.index("__call__")]) if "__call__" in keys else None
        if module == ():  # the model's own output(s)
            outputs = max(outputs, int(leaf.shape[-1]))
        if module in im2col:
            kernel = params
            for k in module:
                kernel = kernel[k]
            kh, kw, cin, cout = kernel["kernel"].shape
            sizes.append(per_example // cout * kh * kw * cin)
    return sum(sizes), max(sizes, default=0), outputs


_PROFILES: dict = {}


def model_profile(model, image_shape: Sequence[int], optimizer=None, variables=None
                  ) -> ModelProfile:
    """The :class:`ModelProfile` of ``model`` on ``image_shape`` ``(H, W, C)`` inputs, by
    ``jax.eval_shape`` (no compilation; remembered per model, shape and optimiser).

    With ``optimizer`` (a :class:`jkt.train.optim.Optimizer`): a student, its train state
    from :func:`jkt.train.state.make_init` and its activations in training mode. Without:
    a frozen model with ``variables`` (arrays or shapes), in inference mode.
    """
    from jkt.models import conv as conv_lib
    from jkt.train.state import make_init

    image_shape = tuple(int(d) for d in image_shape)
    leaves, treedef = jax.tree.flatten(variables)
    key = (model, image_shape, optimizer, treedef,
           tuple((tuple(x.shape), str(x.dtype)) for x in leaves))
    try:
        if key in _PROFILES:
            return _PROFILES[key]
    except TypeError:  # an unhashable model option: not remembered
        key = None
    im2col = set()

    def capture(module, method: str) -> bool:  # every module's output, as True would
        if method != "__call__":
            return False
        if getattr(module, "conv_general_dilated", None) is conv_lib.conv_general_dilated:
            im2col.add(tuple(module.path))
        return True

    def run(x, variables):
        train = optimizer is not None
        if train:
            state = make_init(model, optimizer, image_shape)(
                jax.random.key(0), jax.random.key(1), None)
            variables = {"params": state.params, "batch_stats": state.batch_stats}
        else:
            state = None
        _, out = model.apply(variables, x, train=train, capture_intermediates=capture,
                             mutable=["intermediates", "batch_stats"],
                             rngs={"dropout": jax.random.key(2)})
        return state, variables, out["intermediates"]

    x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    state, variables, intermediates = jax.eval_shape(run, x, variables)
    acts, largest, outputs = _activation_bytes(intermediates, variables["params"], im2col)
    acts += int(np.prod(image_shape)) * 4  # the normalised float32 input
    profile = ModelProfile(state=_nbytes(state), params=_nbytes(variables["params"]),
                           variables=_nbytes(variables), activations=acts,
                           largest=largest, outputs=outputs)
    if key is not None:
        _PROFILES[key] = profile
    return profile


def student_factor(objective, outputs: int) -> int:
    """The activation factor of one run of ``objective`` (:data:`CE_FACTOR`,
    :data:`JACOBIAN_FACTOR`, ``CE_FACTOR * (1 + K)`` for ``full`` Jacobian rows), plus
    :data:`CE_FACTOR` per noisy pass (``noise_draws`` with ``act_noise`` / ``ce_noise``).

    The softmax-output rows (``kd_jac``, ``jac_norm_form="softmax"``) are pullbacks of the
    logits like the logits' rows: alone they cost what ``jac`` costs (``K`` rows for
    ``kd_jac`` with ``full``; the softmax-form ``jac_norm`` takes one row for every
    estimator); beside logit rows, one pullback more (none with ``full``: the same K rows).
    """
    o = objective
    full = o.estimator == "full"
    softmax_norm = o.jac_norm > 0 and o.jac_norm_form == "softmax"
    logit_rows = o.jac > 0 or (o.jac_norm > 0 and not softmax_norm)
    soft_rows = o.kd_jac > 0 or softmax_norm
    if logit_rows and full:
        factor = CE_FACTOR * (1 + outputs) + (CE_FACTOR if o.att_jac > 0 else 0)
        factor += CE_FACTOR if softmax_norm else 0
    elif o.kd_jac > 0 and full:
        factor = CE_FACTOR * (1 + outputs) + (CE_FACTOR if o.att_jac > 0 or softmax_norm
                                              else 0)
    elif logit_rows or soft_rows or o.att_jac > 0:
        factor = JACOBIAN_FACTOR + (CE_FACTOR if logit_rows and soft_rows else 0)
    else:
        factor = CE_FACTOR
    return factor + (CE_FACTOR * o.noise_draws if o.noisy else 0)


def teacher_factor(objectives, outputs: int) -> int:
    """The teacher's activation factor for the fused ``objectives``
    (:data:`TEACHER_FACTOR`, +1 per noisy forward pass of ``act_noise``); ``0`` when none
    matches a teacher."""
    from jkt import penalties

    if not any(o.needs_teacher for o in objectives):
        return 0
    rows = 0
    for estimator in dict.fromkeys(o.estimator for o in objectives if o.jac > 0):
        if penalties.reverse_mode(estimator):
            rows += outputs if estimator == "full" else 1
    logit_full = any(o.jac > 0 and o.estimator == "full" for o in objectives)
    for estimator in dict.fromkeys(o.estimator for o in objectives if o.kd_jac > 0):
        if penalties.reverse_mode(estimator):  # softmax rows: other cotangents
            rows += (0 if logit_full else outputs) if estimator == "full" else 1
    if any(o.att_jac > 0 for o in objectives):
        rows += 1
    noisy = max((o.noise_draws for o in objectives if o.act_noise > 0), default=0)
    return TEACHER_FACTOR + rows + noisy


@dataclasses.dataclass(frozen=True)
class StepEstimate:
    """Bytes per device of ``R`` fused runs' training (and evaluation) step.

    Attributes:
      state: the ``R`` train states (replicated: each device holds all of them).
      gradients: a gradient and an optimiser update per run (``2 * params * R``).
      teacher: the teacher's variables (replicated), when an objective matches it.
      batch: :data:`IN_FLIGHT_BATCHES` uint8 image batches and their labels.
      activations: ``sum over runs of student_factor * activations * b`` plus
        ``teacher_factor * teacher activations * b`` (``b``: per-device batch).
      evaluation: ``EVAL_FACTOR * largest * eval b`` plus the evaluation batch.

    The training split is not counted: it stays in host memory (already loaded), and
    :func:`jkt.data.batches.make_batch` puts only each batch on the device.
    """

    state: int
    gradients: int
    teacher: int
    batch: int
    activations: int
    evaluation: int

    @property
    def total(self) -> int:
        """Resident bytes plus the larger of the training and evaluation transients."""
        return (self.state + self.gradients + self.teacher
                + max(self.batch + self.activations, self.evaluation))


def step_estimate(model, objectives, optimizer, image_shape: Sequence[int],
                  per_device_batch: int, *, teacher=None, mode: str = "unroll",
                  per_device_eval_batch: int = 0) -> StepEstimate:
    """The :class:`StepEstimate` of training ``len(objectives)`` fused runs of ``model``
    (:func:`jkt.train.step.make_train_step`) with ``per_device_batch`` examples per device.

    ``teacher`` (a :class:`jkt.models.Teacher`, or anything with ``model`` and
    ``variables``) counts when an objective matches one. ``mode="vmap"`` gives every run
    the fused objective's estimator, ``"unroll"`` each run its own.
    """
    from jkt.train import fused

    runs = len(objectives)
    union = fused.union_objective(objectives, mixed_estimators=mode == "unroll")
    per_run = [dataclasses.replace(union, estimator=o.estimator if mode == "unroll"
                                   else union.estimator) for o in objectives]
    s = model_profile(model, image_shape, optimizer)
    b, image = int(per_device_batch), int(np.prod(image_shape))
    acts = sum(student_factor(o, s.outputs) for o in per_run) * s.activations * b
    teacher_bytes = 0
    meta = getattr(teacher, "meta", None)  # a teacher for other inputs is refused elsewhere
    if (teacher is not None and union.needs_teacher
            and tuple(getattr(meta, "input_size", image_shape)) == tuple(image_shape)):
        t = model_profile(teacher.model, image_shape, variables=teacher.variables)
        teacher_bytes = t.variables
        acts += teacher_factor(per_run, t.outputs) * t.activations * b
    eval_b = int(per_device_eval_batch)
    return StepEstimate(
        state=s.state * runs, gradients=2 * s.params * runs, teacher=teacher_bytes,
        batch=IN_FLIGHT_BATCHES * b * (image + 4), activations=acts,
        evaluation=EVAL_FACTOR * s.largest * eval_b + eval_b * (image + 5))


def check_step(model, objectives, optimizer, image_shape: Sequence[int], batch_size: int,
               mesh, *, teacher=None, mode: str = "unroll",
               eval_batch_size: int = 0) -> StepEstimate:
    """Refuses (one :class:`jkt.resources.ResourceError` line naming ``--batch-size`` /
    ``--image-size``) a training step whose :func:`step_estimate` (global batches split
    over ``mesh``) exceeds :data:`jkt.resources.FRACTION` of the
    :func:`jkt.resources.device_memory` of the mesh's first device of this process. CPU
    devices share the host's memory: their estimates add up. Returns the estimate."""
    n_dev = mesh.devices.size
    devices = list(mesh.local_devices)
    est = step_estimate(model, objectives, optimizer, image_shape, batch_size // n_dev,
                        teacher=teacher, mode=mode,
                        per_device_eval_batch=eval_batch_size // n_dev)
    device = devices[0]
    have = resources.device_memory(device)
    shared = len(devices) if device.platform == "cpu" else 1
    where = (f"host memory (shared by {shared} CPU devices)" if shared > 1 else
             "host memory" if device.platform == "cpu" else f"{device.device_kind} memory")
    h, w = image_shape[:2]
    runs = len(objectives)
    fix = "lower --batch-size (optim.batch_size) or --image-size (data.image_size)"
    if runs > 1:
        fix += ", or train the fused runs one by one (--fusion off)"
    if est.evaluation > est.batch + est.activations:
        fix = "lower eval_batch_size (the evaluation batch) or --image-size (data.image_size)"
    what = (f"training {runs} run{'s' if runs > 1 else ''} at batch {batch_size} "
            f"({batch_size // n_dev} per device) on {h}x{w} images")
    check_fits(what, est.total * shared, have, fix, where=where)
    return est


__all__ = ["CE_FACTOR", "EVAL_FACTOR", "IN_FLIGHT_BATCHES", "JACOBIAN_FACTOR", "ModelProfile",
           "StepEstimate", "TEACHER_FACTOR", "check_step", "model_profile", "step_estimate",
           "student_factor", "teacher_factor"]
