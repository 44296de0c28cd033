"""Convert torchvision ResNet-34 weights (``.pth``/``.pt`` or ``.safetensors``) to a teacher.

The paper's MIT-Scenes experiments (§5.2) distil from an ImageNet-pretrained ResNet-34.
``jkt.models.ResNet`` uses torchvision's names and torch-like padding, so the conversion is
a one-to-one renaming plus layout changes: conv OIHW -> HWIO, BN weight/bias/running_mean/
running_var -> scale/bias/mean/var, fc weight ``(out, in)`` -> kernel ``(in, out)``.

Bad input fails early with one single-line error that names the problem: a missing file
(``FileNotFoundError``), an unknown extension, an unreadable file, missing, unexpected or
mis-shaped tensors (named with their expected and actual torch shapes), or an existing
output directory without ``overwrite`` (all ``ValueError``).
"""

import os
import pickle
from pathlib import Path

import jax
import numpy as np

from jkt import checkpoint, models, paths

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

SUFFIXES = (".pth", ".pt", ".safetensors")
_MAX_LISTED = 5  # keys listed per kind of mismatch; a wrong architecture mismatches hundreds


def load_state_dict(path) -> dict[str, np.ndarray]:
    """Reads a state dict as numpy arrays: ``.safetensors`` without torch, ``.pth``/``.pt``
    with torch (imported lazily, so the safetensors path works where torch is absent)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(
            f"Unsupported weights format {path.suffix!r} ({path}); use .pth, .pt or .safetensors"
        )
    if not path.is_file():
        raise FileNotFoundError(f"No weights file at {path}")
    if suffix == ".safetensors":
        from safetensors.numpy import load_file

        try:
            return dict(load_file(str(path)))
        except Exception as e:  # safetensors raises its own error types for bad headers
            raise ValueError(f"Cannot read {path} as .safetensors: {_one_line(e)}") from e
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            f"Reading {path.name} needs PyTorch (pip install torch), "
            "or convert it to .safetensors first"
        ) from e
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # objects the weights-only unpickler refuses
        raise ValueError(
            f"{path} holds pickled objects other than tensors ({_refusal(e)}); jkt reads plain "
            "state dicts only and runs no code from a weights file: re-save it as "
            "torch.save(model.state_dict(), ...) where you trust it, or convert it to "
            ".safetensors") from e
    except Exception as e:  # truncated or foreign files
        raise ValueError(f"Cannot read {path} as a PyTorch state dict: {_one_line(e)}") from e
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path} does not hold a state dict (a dict of tensors)")
    return {k: v.detach().cpu().numpy() for k, v in sd.items()}


def _refusal(e: Exception) -> str:
    """What the weights-only unpickler refused, without torch's advice to load the file
    with ``weights_only=False`` (which would run the code it holds)."""
    reasons = [p for p in str(e).split("\n\n") if p.strip() and not any(
        w in p for w in ("weights_only", "Weights only", "documentation of torch.load"))]
    return _one_line(Exception(" ".join(reasons) or type(e).__name__))


def _one_line(e: Exception) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= 200 else text[:197] + "..."


def _torch_name(flax_path: tuple[str, ...]) -> tuple[str, str]:
    """Flax variable path (collection, module..., leaf) -> (torch key, layout kind)."""
    collection, *modules, leaf = flax_path
    prefix = ".".join(
        m.replace("_", ".").replace("downsample.conv", "downsample.0").replace(
            "downsample.bn", "downsample.1"
        )
        for m in modules
    )
    if collection == "batch_stats":
        return f"{prefix}.running_{leaf}", "vector"
    if leaf == "kernel":
        return f"{prefix}.weight", "dense" if modules[-1] == "fc" else "conv"
    return f"{prefix}.{'weight' if leaf == 'scale' else leaf}", "vector"


_TO_FLAX = {"conv": (2, 3, 1, 0), "dense": (1, 0)}  # OIHW -> HWIO, (out, in) -> (in, out)


def _to_flax(x: np.ndarray, kind: str) -> np.ndarray:
    return np.transpose(x, _TO_FLAX[kind]) if kind in _TO_FLAX else x


def _torch_shape(flax_shape: tuple[int, ...], kind: str) -> tuple[int, ...]:
    """The torch-layout shape whose conversion has ``flax_shape``."""
    if kind not in _TO_FLAX:
        return tuple(flax_shape)
    inverse = np.argsort(_TO_FLAX[kind])
    return tuple(int(flax_shape[i]) for i in inverse)


def _listed(items: list[str]) -> str:
    more = len(items) - _MAX_LISTED
    return ", ".join(items[:_MAX_LISTED]) + (f" and {more} more" if more > 0 else "")


def convert_resnet_state_dict(sd: dict, small_stem: bool = False, stage_sizes=(3, 4, 6, 3)):
    """torchvision ResNet state dict -> ``{"params", "batch_stats"}`` for ``jkt.models.ResNet``.

    Every tensor must be used and have the expected shape (``num_batches_tracked`` is
    ignored); otherwise one single-line ``ValueError`` names the missing keys (with the
    shape expected), the unexpected keys and the mis-shaped keys (expected and actual).
    """
    sd = {k: np.asarray(v) for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    if "fc.weight" not in sd:
        raise ValueError("State dict has no 'fc.weight'; is it a torchvision ResNet?")
    if sd["fc.weight"].ndim != 2:
        raise ValueError(
            f"'fc.weight' has shape {sd['fc.weight'].shape}, expected (num_classes, features)"
        )
    num_classes = sd["fc.weight"].shape[0]
    model = models.ResNet(num_classes, stage_sizes=tuple(stage_sizes), small_stem=small_stem)
    target = models.abstract_variables(model, (64, 64, 3))
    flat = jax.tree_util.tree_flatten_with_path(target)[0]
    leaves, missing, shapes, used = [], [], [], set()
    for path, spec in flat:
        key, kind = _torch_name(tuple(k.key for k in path))
        used.add(key)
        want = _torch_shape(spec.shape, kind)
        if key not in sd:
            missing.append(f"{key} {want}")
            leaves.append(None)
        elif sd[key].shape != want:
            shapes.append(f"{key} is {sd[key].shape}, expected {want}")
            leaves.append(None)
        else:
            leaves.append(_to_flax(sd[key], kind).astype(np.float32))
    unexpected = [f"{k} {sd[k].shape}" for k in sorted(set(sd) - used)]
    if missing or unexpected or shapes:
        problems = [
            f"{label} ({len(items)}): {_listed(sorted(items))}"
            for label, items in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("wrong shapes", shapes),
            )
            if items
        ]
        raise ValueError(
            f"State dict does not match a torchvision ResNet (stage_sizes={tuple(stage_sizes)}, "
            f"small_stem={small_stem}, {num_classes} classes); " + "; ".join(problems)
        )
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(target), leaves)


def import_resnet34(
    weights_path,
    out_dir,
    num_classes: int | None = None,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    input_size=(224, 224, 3),
    dataset: str = "imagenet",
    overwrite: bool = False,
) -> Path:
    """Converts torchvision ResNet-34 weights into a teacher artifact at ``out_dir``.

    ``num_classes`` defaults to the fc layer's output size; given, it must equal it.
    An existing ``out_dir`` is replaced only with ``overwrite=True``, and only when it is a
    teacher artifact or empty (:func:`jkt.checkpoint.check_replaceable`); the check comes
    before the weights are read, so a wrong ``out_dir`` fails at once.
    Returns the artifact path.
    """
    out = os.fspath(out_dir)
    if overwrite:
        checkpoint.check_replaceable(out)
    elif paths.absolute(out).exists():
        raise ValueError(f"{out} already exists; pass overwrite=True (--overwrite) to replace it")
    sd = load_state_dict(weights_path)
    variables = convert_resnet_state_dict(sd)
    inferred = variables["params"]["fc"]["kernel"].shape[1]
    if num_classes is not None and num_classes != inferred:
        raise ValueError(f"num_classes={num_classes} but the fc layer has {inferred} outputs")
    meta = checkpoint.TeacherMeta(
        arch="resnet34",
        num_classes=inferred,
        input_size=tuple(input_size),
        mean=tuple(mean),
        std=tuple(std),
        dataset=dataset,
        model_options={},
        extra={"source": f"torchvision weights {Path(weights_path).name}"},
    )
    return checkpoint.save_teacher(out_dir, variables, meta, overwrite=overwrite)
