"""Convert torchvision ResNet-34 weights (``.pth``/``.pt`` or ``.safetensors``) to a teacher.

The paper's MIT-Scenes experiments (§5.2) distil from an ImageNet-pretrained ResNet-34.
``jkt.models.ResNet`` uses torchvision's names and torch-like padding, so the conversion is
a one-to-one renaming plus layout changes: conv OIHW -> HWIO, BN weight/bias/running_mean/
running_var -> scale/bias/mean/var, fc weight ``(out, in)`` -> kernel ``(in, out)``.
"""

from pathlib import Path

import jax
import numpy as np

from jkt import checkpoint, models

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_state_dict(path) -> dict[str, np.ndarray]:
    """Reads a state dict as numpy arrays: ``.safetensors`` without torch, ``.pth``/``.pt``
    with torch (imported lazily)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No weights file at {path}")
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        return dict(load_file(str(path)))
    if path.suffix in (".pth", ".pt"):
        try:
            import torch
        except ImportError as e:
            raise ImportError(
                f"Reading {path.name} needs PyTorch (pip install torch), "
                "or convert it to .safetensors first"
            ) from e
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
        if isinstance(sd, dict) and "state_dict" in sd:
            sd = sd["state_dict"]
        return {k: v.detach().cpu().numpy() for k, v in sd.items()}
    raise ValueError(f"Unsupported weights format {path.suffix!r}; use .pth, .pt or .safetensors")


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


def _to_flax(x: np.ndarray, kind: str) -> np.ndarray:
    if kind == "conv":
        return np.transpose(x, (2, 3, 1, 0))  # OIHW -> HWIO
    if kind == "dense":
        return np.transpose(x)  # (out, in) -> (in, out)
    return x


def convert_resnet_state_dict(sd: dict, small_stem: bool = False, stage_sizes=(3, 4, 6, 3)):
    """torchvision ResNet state dict -> ``{"params", "batch_stats"}`` for ``jkt.models.ResNet``.

    Every tensor must be used and have the expected shape (``num_batches_tracked`` is
    ignored); otherwise a ``ValueError`` lists missing, unexpected and mis-shaped keys.
    """
    sd = {k: np.asarray(v) for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    if "fc.weight" not in sd:
        raise ValueError("State dict has no 'fc.weight'; is it a torchvision ResNet?")
    num_classes = sd["fc.weight"].shape[0]
    model = models.ResNet(num_classes, stage_sizes=tuple(stage_sizes), small_stem=small_stem)
    target = models.abstract_variables(model, (64, 64, 3))
    flat = jax.tree_util.tree_flatten_with_path(target)[0]
    leaves, missing, shapes, used = [], [], [], set()
    for path, spec in flat:
        key, kind = _torch_name(tuple(k.key for k in path))
        used.add(key)
        if key not in sd:
            missing.append(key)
            leaves.append(None)
            continue
        value = _to_flax(sd[key], kind).astype(np.float32)
        if value.shape != spec.shape:
            shapes.append(f"{key}: {sd[key].shape} (converted {value.shape}, want {spec.shape})")
        leaves.append(value)
    unexpected = sorted(set(sd) - used)
    if missing or unexpected or shapes:
        raise ValueError(
            "State dict does not match torchvision ResNet"
            f"(stage_sizes={tuple(stage_sizes)}, small_stem={small_stem}):\n"
            f"  missing keys: {missing}\n  unexpected keys: {unexpected}\n"
            f"  shape mismatches: {shapes}"
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

    ``num_classes`` defaults to the fc layer's output size. Returns the artifact path.
    """
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
