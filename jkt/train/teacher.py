"""Teachers and pretrained starting points: a CE-trained network saved as an Orbax teacher
artifact, and the oracle's two-head student initialised from a source-task network (§5)."""

from __future__ import annotations

import numpy as np

from jkt import checkpoint, models, paths
from jkt import config as config_lib
from jkt.data.fingerprint import dataset_fingerprint
from jkt.data.types import Dataset
from jkt.models.teacher import Teacher, TeacherMeta
from jkt.train.loop import TrainConfig, final_variables, train_and_evaluate
from jkt.train.metrics import NonFiniteLossError
from jkt.train.objective import Objective
from jkt.train.optim import CIFAR_RECIPE, OptimConfig
from jkt.workdir import check_record, is_writer


def train_teacher(ds: Dataset, out, *, arch: str = "vgg9", model_options: dict | None = None,
                  optim: OptimConfig = CIFAR_RECIPE, max_steps: int | None = None, seed: int = 0,
                  checkpoint_every: int = 1000, progress: bool = True,
                  augment: str = "crop+flip", mesh=None, stop=None,
                  record_name: str = "config.json", trust_unverified: bool = False,
                  stream_options=None) -> Teacher:
    """Trains ``arch`` with cross-entropy on ``ds.train`` (validated on ``ds.val`` when it
    has images) and writes a teacher artifact to ``out/artifact`` (resumable checkpoints
    under ``out/run``, checkpointed every ``checkpoint_every`` steps; ``augment`` as in
    :class:`jkt.train.TrainConfig`; ``stop`` as in :func:`jkt.train.loop.train_and_evaluate`).
    Returns the restored teacher; an existing artifact is returned without training
    (``trust_unverified``: as in :func:`jkt.checkpoint.restore_teacher`).
    ``out/<record_name>`` records what determines the teacher, with the content
    fingerprint of ``ds`` (:func:`jkt.data.fingerprint.dataset_fingerprint`); a later call
    with other settings or other data stops with one line naming them."""
    out = paths.as_dir(out)
    artifact = out / "artifact"
    record = {"arch": arch, "model_options": dict(model_options or {}),
              "optim": config_lib.to_dict(optim), "max_steps": max_steps, "seed": seed,
              "dataset": ds.name, "num_examples": len(ds.train), "classes": list(ds.class_names),
              "image_shape": list(ds.image_shape)}
    if augment != "crop+flip":  # records written before the setting existed stay valid
        record["augment"] = augment
    record["inputs"] = {"data": dataset_fingerprint(ds)}
    check_record(out / record_name, record, what="the teacher", optional=("inputs",))
    if artifact.exists():
        return checkpoint.restore_teacher(artifact, expect_arch=arch,
                                          trust_unverified=trust_unverified)
    cfg = TrainConfig(model=arch, model_options=dict(model_options or {}),
                      objective=Objective(ce=1.0), optim=optim, seed=seed, max_steps=max_steps,
                      checkpoint_every=checkpoint_every, progress=progress, augment=augment)
    try:
        result, = train_and_evaluate([cfg], ds.train, {"val": ds.val, "test": ds.test},
                                     num_classes=ds.num_classes, mean=ds.mean, std=ds.std,
                                     workdirs=[out / "run"], mesh=mesh,
                                     descs=[f"teacher {arch}"], stop=stop,
                                     stream_options=stream_options)
    except NonFiniteLossError as e:
        raise NonFiniteLossError(f"teacher {arch} in {out}: {e}") from e
    _, variables = final_variables(out / "run", cfg, ds.num_classes, ds.image_shape, mesh=mesh)
    meta = TeacherMeta(
        arch=arch, num_classes=ds.num_classes, input_size=ds.image_shape, mean=tuple(ds.mean),
        std=tuple(ds.std), dataset=ds.name, model_options=dict(model_options or {}),
        extra={"val_accuracy": result.accuracy.get("val"),
               "test_accuracy": result.accuracy["test"],
               "steps": result.steps, "class_names": list(ds.class_names)})
    checkpoint.save_teacher(artifact, variables, meta)
    if is_writer():
        val = result.accuracy.get("val")
        val = f"val {val:.2%}" if val is not None else "no validation set"
        print(f"teacher {arch} on {len(ds.train)} images: {val}, "
              f"test {result.accuracy['test']:.2%} -> {artifact}")
    return checkpoint.restore_teacher(artifact, expect_arch=arch)


def oracle_variables(student, pretrained: dict, image_shape, seed: int = 0) -> dict:
    """Two-head student variables initialised from a source-pretrained single-head model.

    The trunk (every variable but the heads) and BatchNorm statistics are copied; the
    pretrained ``fc`` becomes ``fc_source``; the target head ``fc`` is freshly
    initialised from ``seed`` (Flax's ``Dense`` init). Raises ``ValueError`` if the shapes
    do not fit."""
    import flax.linen as nn
    import jax

    want = models.abstract_variables(student, tuple(image_shape))
    fc = want["params"]["fc"]["kernel"]
    key = jax.random.split(jax.random.key(seed))[0]
    head = nn.Dense(fc.shape[1]).init(key, np.zeros((1, fc.shape[0]), np.float32))["params"]
    params = {k: v for k, v in pretrained["params"].items() if k != "fc"}
    params["fc_source"] = pretrained["params"]["fc"]
    params["fc"] = head
    out = {"params": params, "batch_stats": dict(pretrained.get("batch_stats", {}))}
    shapes = lambda tree: jax.tree.map(lambda x: tuple(x.shape), tree)  # noqa: E731
    if shapes(out) != shapes({k: dict(want.get(k, {})) for k in out}):
        raise ValueError("the source-pretrained student does not fit the two-head student "
                         "(different architecture, width or number of source classes)")
    return out


__all__ = ["oracle_variables", "train_teacher"]
