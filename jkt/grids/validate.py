"""Checks shared by the experiments: each raises ``ValueError`` with one line, from a
config's ``__post_init__`` or right after the data is loaded, before any network is
trained; and :func:`start`, the common first step of every grid."""

from __future__ import annotations

import math

from jkt import models
from jkt.ranges import MAX_SEED, check_int, check_number


def check_names(field: str, names, valid) -> None:
    if not names:
        raise ValueError(f"{field} is empty; valid: {', '.join(valid)}")
    bad = [m for m in names if m not in valid]
    if bad:
        raise ValueError(f"unknown {field} {', '.join(map(str, bad))}; valid: {', '.join(valid)}")
    if len(set(names)) != len(names):
        raise ValueError(f"{field} lists an entry twice: {', '.join(map(str, names))}")


def check_points_per_class(field: str, ns) -> None:
    if not ns or any(not ((type(n) is int and n > 0) or n == "full") for n in ns):
        raise ValueError(f"{field} takes positive integers or 'full', got "
                         f"{','.join(map(str, ns)) or 'nothing'}")
    if len(set(ns)) != len(ns):
        raise ValueError(f"{field} lists an entry twice: {','.join(map(str, ns))}")


def check_seeds(seeds) -> None:
    if not seeds:
        raise ValueError("seeds is empty")
    for seed in seeds:
        check_int("seeds", seed, 0, MAX_SEED)
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds lists a seed twice: {','.join(map(str, seeds))}")


def check_non_negative(field: str, values) -> None:
    """``values`` (a tuple field: λs, σs) are distinct finite numbers >= 0, at least one."""
    if not values or any(isinstance(v, bool) or not isinstance(v, int | float)
                         or not math.isfinite(v) or v < 0 for v in values):
        raise ValueError(f"{field} takes non-negative numbers (finite, >= 0), got "
                         f"{','.join(map(str, values)) or 'nothing'}")
    if len(set(values)) != len(values):
        raise ValueError(f"{field} lists a value twice: {','.join(map(str, values))}")


def check_model(name: str, options: dict, who: str, field: str | None = None) -> None:
    """``name`` is a model and ``options`` (the config field ``field``, default
    ``{who}_options``) fit it."""
    field = field or f"{who}_options"
    if name not in models.MODELS:
        raise ValueError(f"unknown {who} architecture {name!r}; valid: "
                         f"{', '.join(models.MODELS)}")
    unknown = sorted(set(options) - set(models.registry.options(name)))
    if unknown:
        raise ValueError(f"unknown {field} {', '.join(unknown)} for a {name}; valid: "
                         f"{', '.join(models.registry.options(name))}")
    check_number(f"{field}.width_multiplier", options.get("width_multiplier", 1.0), 0,
                 low_open=True)
    if "dropout" in options:
        check_number(f"{field}.dropout", options["dropout"], 0, 1, high_open=True)
    sizes = options.get("stage_sizes")
    if sizes is not None and (not isinstance(sizes, tuple | list) or not sizes or not all(
            type(s) is int and s > 0 for s in sizes)):
        raise ValueError(f"{field}.stage_sizes takes positive integers, e.g. 3,4,6,3; "
                         f"got {sizes!r}")


def check_steps(cfg, fields) -> None:
    """Each field of ``fields`` is ``None`` or a positive integer."""
    for f in fields:
        if getattr(cfg, f) is not None:
            check_int(f, getattr(cfg, f))


def check_dataset(ds) -> None:
    """At least two classes, and examples in every split (a one-class task "trains" to
    100 %)."""
    if ds.num_classes < 2:
        raise ValueError(f"{ds.name} has {ds.num_classes} class(es) "
                         f"({', '.join(ds.class_names)}); classification needs at least 2")
    for name in ("train", "val", "test"):
        if len(getattr(ds, name)) == 0 and name != "val":
            raise ValueError(f"{ds.name} has no {name} examples")


def check_teacher_artifact(path, arch: str, ds, what: str = "teacher", *,
                           trust_unverified: bool = False) -> None:
    """The artifact at ``path`` holds ``arch`` with the classes of dataset ``ds`` (before
    any weights are read). A teacher trained on another dataset or other class names is
    used with a note."""
    from jkt import checkpoint

    num_classes = ds.num_classes
    meta = checkpoint.read_teacher_meta(path, trust_unverified=trust_unverified)
    if meta.arch != arch:
        raise ValueError(f"{what} artifact {path} holds a {meta.arch}, this config's {what} is "
                         f"a {arch}; pass --config.teacher={meta.arch} to use it")
    if meta.num_classes != num_classes:
        raise ValueError(f"{what} artifact {path} has {meta.num_classes} classes, the data has "
                         f"{num_classes}")
    names = meta.extra.get("class_names")
    if names is not None and list(names) != list(ds.class_names):
        print(f"note: {what} artifact {path} was trained on classes {_few(names)}, the data's "
              f"are {_few(ds.class_names)}: class i of the one is matched to class i of the "
              "other")
    elif meta.dataset != ds.name:
        print(f"note: {what} artifact {path} was trained on {meta.dataset!r}, the data is "
              f"{ds.name!r}")


def _few(names, k: int = 4) -> str:
    names = list(map(str, names))
    return ", ".join(names[:k]) + (f" ... ({len(names)})" if len(names) > k else "")


def describe_subsets(subsets: dict, seed: int, data_cfg, optim, max_steps) -> None:
    """Prints, per points-per-class ``n`` of ``subsets`` (``{(n, seed): (train, val)}``),
    how many images a run trains and validates on and how many steps it takes."""
    from jkt.train.loop import TrainConfig, total_steps

    run_cfg = TrainConfig(optim=optim, max_steps=max_steps)
    for (n, s), (train, val) in subsets.items():
        if s != seed:
            continue
        steps = total_steps(run_cfg, len(train))
        if not len(val):
            where = "no validation set"
        elif data_cfg.validation == "unused":
            where = f"{len(val)} validation images not in the subset"
        else:
            where = f"{len(val)} held-out validation images"
        print(f"  n={n}: {len(train)} training images, {where}, {steps:,} steps per run")


def start(cfg, mesh=None):
    """What every grid does first: the mesh (default: all devices), the work directory
    (created) and the checked dataset of ``cfg.data``. Returns ``(mesh, workdir, ds)``."""
    from jkt import data, parallel, paths

    mesh = parallel.make_mesh() if mesh is None else mesh
    workdir = paths.as_dir(cfg.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ds = data.load_config(cfg.data)
    check_dataset(ds)
    parallel.barrier("data loaded")  # before the first collective (a checkpoint read)
    return mesh, workdir, ds
