"""Train-step speed of every method, against an eager PyTorch reference (issue 7).

    python -m experiments.bench --out runs/bench            # GPU: the reference setting
    python -m experiments.bench --small                     # CPU: ~1-2 minutes
    python -m experiments.bench --methods ce,ce+act+jac:label --steps 20 --no-torch

Times the project's own train step, built exactly as ``jkt.train.train_and_evaluate``
builds it: ``make_train_step(model, objective, mean, std, augment=True, teacher_model)``
jitted with ``jax.jit(step, donate_argnums=0, out_shardings=(rep, rep))`` over
``parallel.make_mesh()``, the state from ``create_train_state``, one uint8 batch from
``data.make_batch`` already on device and reused every step, the teacher's variables
replicated. The jitted step is compiled ahead of time (``.lower().compile()``, the same
executable a first call would build) so that XLA's memory analysis comes without a
second compile. Timing: the compiling first call is reported separately, ``warmup``
steps are dropped, then every step is timed to ``jax.block_until_ready`` and the median
is reported; the donated state is threaded through.

The PyTorch reference (``experiments/torch_reference.py``, optional) runs the same models
(the student's and teacher's initial weights are copied over) and losses eagerly, with
``torch.cuda.synchronize()`` per step on a GPU. On a CPU-only machine everything runs in
the small setting (``experiments/configs/bench.py``). Writes ``bench.md`` and
``bench.json`` under ``--out`` and prints the table and the projected wall time of the
whole Table 1 grid at the measured speed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

# JAX and torch share the GPU in one process: JAX must not preallocate 75% of it (this also
# makes JAX's peak_bytes_in_use the step's real peak). Set before JAX's backend starts.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from experiments.configs import bench as configs  # noqa: E402
from jkt import models, parallel  # noqa: E402
from jkt.data.batches import make_batch  # noqa: E402
from jkt.data.types import Split  # noqa: E402
from jkt.train import CIFAR_RECIPE, Objective, make_optimizer, method_objective  # noqa: E402
from jkt.train.fused import make_fused_train_step, stack_states, union_objective  # noqa: E402
from jkt.train.state import create_train_state  # noqa: E402
from jkt.train.step import make_train_step  # noqa: E402

CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
ATT_PAIRS = (("pool1", "pool1"), ("pool2", "pool2"))
ATT_JAC_PAIR = ("pool2", "pool2")


@dataclasses.dataclass(frozen=True)
class Method:
    """One benchmarked train step: a student architecture and an objective, or (``fused``
    non-empty) several objectives trained as fused runs in one step (``jkt.train.fused``;
    ``objective`` is then their union)."""

    name: str
    label: str
    student: str
    objective: Objective
    fused: tuple[Objective, ...] = ()
    fusion_mode: str = "unroll"
    members: tuple[str, ...] = ()  # Table-1 method names of the fused objectives

    @property
    def teacher(self) -> str | None:
        return "vgg9" if self.objective.needs_teacher else None

    @property
    def runs(self) -> int:
        return max(1, len(self.fused))


def _jac(estimator: str, normalize: bool = False) -> Objective:
    return method_objective("ce+act+jac", estimator=estimator, normalize=normalize)


def _fused(name: str, methods: tuple[str, ...], mode: str) -> Method:
    objectives = tuple(method_objective(m) for m in methods)
    return Method(name, f"fused ({mode}): {' | '.join(methods)}", "vgg4",
                  union_objective(objectives), objectives, mode, methods)


# The fusion groups of Table 1 (``jkt.train.fusion_groups``): what ``experiments.distill``
# trains in one step per (n, seed) cell by default.
FUSED_ACT = ("ce+act", "act")
FUSED_JAC = ("ce+jac", "ce+act+jac", "act+jac")
TABLE1_ALL = ("ce", "ce+act", "ce+jac", "ce+act+jac", "act", "act+jac")  # --fusion-groups all


METHODS: dict[str, Method] = {m.name: m for m in [
    Method("ce", "CE", "vgg4", method_objective("ce")),
    Method("ce+act", "CE + act", "vgg4", method_objective("ce+act")),
    *[Method(f"ce+act+jac:{e}", f"CE + act + Jacobian ({e})", "vgg4", _jac(e))
      for e in ("label", "top", "random", "rademacher", "jvp", "full")],
    Method("ce+act+jac:label:norm", "CE + act + Jacobian (label, eq.-10 normalised)", "vgg4",
           _jac("label", normalize=True)),
    Method("ce+act+att+att_jac:top", "CE + act + attention + attention-Jacobian (top)", "vgg4",
           Objective(ce=1, act=1, att=1, att_jac=1, att_pairs=ATT_PAIRS,
                     att_jac_pair=ATT_JAC_PAIR, estimator="top")),
    Method("vgg9:ce", "VGG-9 CE (teacher's step)", "vgg9", method_objective("ce")),
    Method("vgg9:ce+jac_norm", "VGG-9 CE + Jacobian norm", "vgg9",
           Objective(ce=1, jac_norm=1)),
    _fused("fused:act-group", FUSED_ACT, "unroll"),
    _fused("fused:jac-group", FUSED_JAC, "unroll"),
    _fused("fused-vmap:act-group", FUSED_ACT, "vmap"),
    _fused("fused-vmap:jac-group", FUSED_JAC, "vmap"),
    _fused("fused-vmap:table1", TABLE1_ALL, "vmap"),
]}

# Table-1 method -> the benchmarked step that costs the same (act-only drops the CE head's
# softmax; ce+jac / act+jac drop one cheap term of ce+act+jac: same passes, same cost).
TABLE1_PROXY = {"ce": "ce", "ce+act": "ce+act", "ce+jac": "ce+act+jac:label",
                "ce+act+jac": "ce+act+jac:label", "act": "ce+act",
                "act+jac": "ce+act+jac:label"}
TEACHER_PROXY = "vgg9:ce"
# Table 1 under each fusion layout of ``experiments.distill``: the steps one (n, seed) cell
# takes per training step. "jkt-fused" is distill's default (--fusion unroll).
FUSED_LAYOUTS = {
    "jkt-fused": ("ce", "fused:act-group", "fused:jac-group"),
    "jkt-fused-vmap": ("ce", "fused-vmap:act-group", "fused-vmap:jac-group"),
    "jkt-fused-all-vmap": ("fused-vmap:table1",),
}
TABLE1_FUSED = FUSED_LAYOUTS["jkt-fused"]


# ----------------------------------------------------------------------------------------
# Timing


def _summary(times_s: list[float], compile_s: float, batch_size: int) -> dict:
    med = statistics.median(times_s)
    return {"median_ms": 1e3 * med, "mean_ms": 1e3 * statistics.fmean(times_s),
            "min_ms": 1e3 * min(times_s), "steps_timed": len(times_s),
            "steps_per_s": 1.0 / med, "images_per_s": batch_size / med,
            "compile_s": compile_s}


def _timed_loop(step, setting: configs.BenchSetting) -> list[float]:
    """Runs ``step()`` (which must block) ``warmup`` times, then times it."""
    for _ in range(setting.warmup):
        step()
    times: list[float] = []
    while len(times) < setting.steps:
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
        if len(times) >= setting.min_steps and sum(times) > setting.max_seconds:
            break
    return times


def _device_peak_bytes(device) -> int | None:
    stats = device.memory_stats()
    if not stats:
        return None
    return stats.get("peak_bytes_in_use")


class JaxBench:
    """Shared pieces of the ``jkt`` benchmark: mesh, batch, teacher."""

    def __init__(self, setting: configs.BenchSetting, mesh, seed: int = 0):
        self.setting, self.mesh = setting, mesh
        parallel.check_batch_size(setting.batch_size, mesh)
        s, k = setting.image_size, setting.num_classes
        self.input_shape = (s, s, 3)
        rng = np.random.default_rng(seed)
        split = Split(rng.integers(0, 256, (setting.batch_size, *self.input_shape), np.uint8),
                      rng.integers(0, k, setting.batch_size).astype(np.int32))
        self.host_batch = {"image": split.images, "label": split.labels}
        self.batch = make_batch(split, np.arange(setting.batch_size), mesh)
        self.dtype = jnp.bfloat16 if setting.dtype == "bfloat16" else jnp.float32
        self.rep = parallel.replicated(mesh)
        self.seed = seed
        self._teacher = None

    def model(self, name: str):
        return models.create(name, self.setting.num_classes,
                             width_multiplier=self.setting.width_multiplier, dtype=self.dtype)

    def teacher(self):
        """``(model, replicated variables, host variables)`` of the VGG-9 teacher."""
        if self._teacher is None:
            model = self.model("vgg9")
            x = jnp.zeros((1, *self.input_shape), jnp.float32)
            variables = jax.jit(model.init)(jax.random.key(self.seed + 1), x)
            host = jax.device_get(variables)
            self._teacher = (model, jax.device_put(variables, self.rep), host)
        return self._teacher

    def check_taps(self, method: Method) -> None:
        """Clear error if an attention tap is missing or spatial sizes differ."""
        o = method.objective
        pairs = list(o.att_pairs) + ([o.att_jac_pair] if o.att_jac_pair else [])
        if not pairs:
            return
        s_taps = models.feature_shapes(self.model(method.student), self.input_shape)
        t_taps = models.feature_shapes(self.model("vgg9"), self.input_shape)
        for s, t in pairs:
            if s not in s_taps or t not in t_taps:
                raise ValueError(f"{method.name}: taps {s!r}/{t!r} not in student taps "
                                 f"{list(s_taps)} / teacher taps {list(t_taps)}")
            if s_taps[s][:2] != t_taps[t][:2]:
                raise ValueError(f"{method.name}: taps {s} {s_taps[s]} and {t} {t_taps[t]} "
                                 "differ in spatial size")

    def run(self, method: Method) -> tuple[dict, dict]:
        """Times ``method``'s jitted train step; returns ``(result, initial host variables)``."""
        setting = self.setting
        self.check_taps(method)
        model = self.model(method.student)
        tx = make_optimizer(CIFAR_RECIPE, steps_per_epoch=391)
        state = create_train_state(model, tx, jax.random.key(self.seed), self.input_shape,
                                   self.mesh)
        init_vars = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
        teacher_model = teacher_vars = None
        if method.teacher:
            teacher_model, teacher_vars, _ = self.teacher()
        if method.fused:  # as train_and_evaluate_fused builds it
            state = jax.device_put(stack_states([state] * method.runs), self.rep)
            step_fn = make_fused_train_step(model, method.fused, mean=CIFAR100_MEAN,
                                            std=CIFAR100_STD, augment=True,
                                            teacher_model=teacher_model,
                                            mode=method.fusion_mode)
        else:
            step_fn = make_train_step(model, method.objective, mean=CIFAR100_MEAN,
                                      std=CIFAR100_STD, augment=True,
                                      teacher_model=teacher_model)
        jitted = jax.jit(step_fn, donate_argnums=0, out_shardings=(self.rep, self.rep))

        t0 = time.perf_counter()
        compiled = jitted.lower(state, self.batch, teacher_vars).compile()
        state, metrics = compiled(state, self.batch, teacher_vars)
        jax.block_until_ready((state, metrics))
        compile_s = time.perf_counter() - t0

        def step():
            nonlocal state, metrics
            state, metrics = compiled(state, self.batch, teacher_vars)
            jax.block_until_ready((state, metrics))

        times = _timed_loop(step, setting)
        result = _summary(times, compile_s, setting.batch_size * method.runs)
        result["runs"] = method.runs
        result["ms_per_run_step"] = result["median_ms"] / method.runs
        result["final_loss"] = float(jnp.max(metrics["loss"]))
        mem = compiled.memory_analysis()
        result["xla_bytes"] = (None if mem is None else int(
            mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
            - mem.alias_size_in_bytes))
        result["peak_bytes"] = _device_peak_bytes(self.mesh.devices.flat[0])
        return result, init_vars


def _torch_module():
    try:
        from experiments import torch_reference
    except ImportError:
        return None
    return torch_reference


def run_torch(tr, method: Method, bench: JaxBench, init_vars: dict) -> dict:
    """Times the eager PyTorch reference of ``method`` on the same weights and batch."""
    import torch

    setting = bench.setting
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes; autotuning ends in warm-up
        # The issue's reference is fp32 "with TF32 allowed", as XLA allows it for JAX's
        # default precision on GPUs; torch allows it for cuDNN only by default.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.cuda.reset_peak_memory_stats()
    k, w = setting.num_classes, setting.width_multiplier
    student = tr.load_flax_variables(tr.create(method.student, k, w), init_vars).to(device)
    teacher = None
    if method.teacher:
        teacher = tr.load_flax_variables(tr.create("vgg9", k, w), bench.teacher()[2]).to(device)
    opt = torch.optim.Adam(student.parameters(), lr=CIFAR_RECIPE.learning_rate)
    step_fn = tr.make_train_step(student, teacher, tr.supported(
        method.objective), opt, mean=CIFAR100_MEAN, std=CIFAR100_STD)
    images = torch.from_numpy(bench.host_batch["image"]).to(device)
    labels = torch.from_numpy(bench.host_batch["label"]).long().to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    loss = None

    def step():
        nonlocal loss
        loss = step_fn(images, labels)
        sync()

    t0 = time.perf_counter()
    step()
    first_s = time.perf_counter() - t0
    times = _timed_loop(step, setting)
    result = _summary(times, first_s, setting.batch_size)
    result["final_loss"] = float(loss)
    result["peak_bytes"] = (int(torch.cuda.max_memory_allocated()) if device.type == "cuda"
                            else None)
    result["device"] = str(device)
    return result


# ----------------------------------------------------------------------------------------
# Projection and reports


def project_table1(results: dict[str, dict], backend: str = "jkt",
                   layout: str | None = None) -> dict | None:
    """GPU-minutes of one seed of the whole Table 1 grid at the measured step speeds:
    each of the 6 methods separately (``layout=None``, what ``--fusion off`` runs), or
    the steps of one of ``FUSED_LAYOUTS`` per cell (e.g. ``"jkt-fused"``: one CE step,
    one fused act-group step and one fused Jacobian-group step, distill's default)."""
    fused = layout is not None
    proxies = ({f"[{m}]": m for m in FUSED_LAYOUTS[layout]} if fused
               else dict(TABLE1_PROXY))
    needed = set(proxies.values()) | {TEACHER_PROXY}
    have = {name: r[backend]["median_ms"] for name, r in results.items()
            if r.get(backend) is not None}
    missing = sorted(needed - set(have))
    if missing:
        return {"minutes": None, "missing": missing}
    student_steps, teacher_steps = configs.table1_student_steps(), configs.teacher_steps()
    per_method = {m: student_steps * have[p] / 6e4 for m, p in proxies.items()}
    teacher_min = teacher_steps * have[TEACHER_PROXY] / 6e4
    return {"minutes": sum(per_method.values()) + teacher_min, "per_method_minutes": per_method,
            "teacher_minutes": teacher_min, "student_steps_per_method": student_steps,
            "teacher_steps": teacher_steps, "proxies": proxies, "missing": [],
            "fused": fused}


def _fmt(x, spec=".1f"):
    return "n/a" if x is None else format(x, spec)


def _mib(b):
    return "n/a" if b is None else f"{b / 2**20:.0f} MiB"


def markdown(report: dict) -> str:
    st = report["setting"]
    env = report["environment"]
    mode = "SMALL CPU MODE (not the reference setting)" if st["small"] else "reference setting"
    lines = [
        f"# Train-step benchmark: {mode}",
        "",
        f"Batch {st['batch_size']}, {st['image_size']}x{st['image_size']}x3 uint8 inputs on "
        f"device, {st['num_classes']} classes, width x{st['width_multiplier']}, "
        f"{st['dtype']}; VGG-9 teacher -> VGG-4 student. jkt: {env['jax_devices']}; "
        f"torch: {env.get('torch_device', 'not run')}. Median of up to {st['steps']} timed "
        f"steps after {st['warmup']} warm-up step(s); compile = lower + compile + first step "
        "(torch: first step). Peak memory: device peak so far in the process (running max; "
        "n/a on CPU); XLA = the compiled step's argument + output + temp bytes. `fused` rows "
        "train `runs` students in one step (`jkt.train.fused`, shared batch and teacher "
        "passes); their img/s counts images x runs; torch has no fused counterpart.",
        "",
        "| method | runs | jkt ms/step | jkt ms/run-step | jkt img/s | compile s | peak mem "
        "| XLA mem | torch ms/step | torch img/s | jkt/torch |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in report["methods"].items():
        j, t = r["jkt"], r.get("torch")
        ratio = r.get("ratio")
        lines.append(
            f"| `{name}` | {j.get('runs', 1)} | {j['median_ms']:.2f} | "
            f"{j.get('ms_per_run_step', j['median_ms']):.2f} | {j['images_per_s']:.0f} | "
            f"{j['compile_s']:.1f} | {_mib(j['peak_bytes'])} | {_mib(j['xla_bytes'])} | "
            f"{_fmt(t and t['median_ms'], '.2f')} | {_fmt(t and t['images_per_s'], '.0f')} | "
            f"{_fmt(ratio, '.2f')} |")
    lines.append("")
    lines.append(projection_line(report))
    lines += ["", *fusion_lines(report), "", *goal_lines(report)]
    return "\n".join(lines) + "\n"


def fusion_lines(report: dict) -> list[str]:
    """Fused step vs the separate steps of its member methods (Table-1 proxies)."""
    res = report["methods"]
    out = []
    for name, r in res.items():
        members = r.get("members")
        if not members:
            continue
        proxies = [TABLE1_PROXY[m] for m in members]
        parts = []
        for side in ("jkt", "torch"):
            if all(res.get(p, {}).get(side) for p in proxies):
                total = sum(res[p][side]["median_ms"] for p in proxies)
                parts.append(f"separate {side} steps {total:.2f} ms -> "
                             f"{total / r['jkt']['median_ms']:.2f}x")
        if parts:
            out.append(f"- `{name}` ({r['jkt']['median_ms']:.2f} ms for {len(members)} runs) vs "
                       + "; ".join(parts) + f" (members timed as {', '.join(proxies)})")
    return (["Fusion (one step for several runs of a Table-1 cell):", *out] if out else [])


GOALS = (  # (description, numerator method, denominator method, side pair, bound)
    ("Jacobian step / activation step <= 1.8", "ce+act+jac:label", "ce+act", ("jkt", "jkt"),
     1.8),
    ("Jacobian step: jkt / eager torch <= 1/3", "ce+act+jac:label", "ce+act+jac:label",
     ("jkt", "torch"), 1 / 3),
    ("Jacobian-norm step: jkt / eager torch <= 1/3", "vgg9:ce+jac_norm", "vgg9:ce+jac_norm",
     ("jkt", "torch"), 1 / 3),
    ("full Jacobian: jkt / eager torch <= 1/4", "ce+act+jac:full", "ce+act+jac:full",
     ("jkt", "torch"), 1 / 4),
)


def goal_lines(report: dict) -> list[str]:
    """The issue's goals as measured ratios (met / missed / n/a)."""
    res = report["methods"]
    small = report["setting"]["small"]
    out = ["Goals (issue 7)" + (": SMALL CPU MODE, not the goal setting" if small else ":")]
    for desc, num, den, (sn, sd), bound in GOALS:
        a = (res.get(num) or {}).get(sn)
        b = (res.get(den) or {}).get(sd)
        if not a or not b:
            out.append(f"- {desc}: n/a")
            continue
        ratio = a["median_ms"] / b["median_ms"]
        out.append(f"- {desc}: {ratio:.2f} ({'met' if ratio <= bound else 'missed'})")
    best = sorted((p["minutes"], k) for k, p in report["projection"].items()
                  if k.startswith("jkt") and p and p["minutes"] is not None)
    out.append("- Table 1 <= 45 min per seed: " + (
        f"{best[0][0]:.0f} min with `{best[0][1]}` "
        f"({'met' if best[0][0] <= 45 else 'missed'})" if best else "n/a"))
    return out


def projection_line(report: dict) -> str:
    st = report["setting"]
    out = []
    for backend in ("jkt", *FUSED_LAYOUTS, "torch"):
        p = report["projection"].get(backend)
        if p is None:
            continue
        if p["minutes"] is None:
            out.append(f"projected Table 1 wall time ({backend}): n/a (needs methods "
                       f"{', '.join(p['missing'])})")
            continue
        what = ("per cell: " + " + ".join(p["proxies"].values()) + " steps"
                if p.get("fused") else "6 methods")
        label = (f" [SMALL CPU MODE: batch {st['batch_size']}, width x{st['width_multiplier']},"
                 f" {st['num_classes']} classes; a number from the small mode, not a GPU "
                 "estimate]" if st["small"] else "")
        out.append(f"projected Table 1 wall time at this speed ({backend}): "
                   f"{p['minutes']:.0f} min per seed ({p['minutes'] / 60:.1f} h: {what} x "
                   f"{p['student_steps_per_method']:,} steps + teacher {p['teacher_steps']:,} "
                   f"steps){label}")
    return "\n".join(out)


# ----------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train-step speed of jkt vs eager PyTorch.",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--small", action="store_true",
                      help="small setting (default when JAX's backend is the CPU)")
    size.add_argument("--reference", action="store_true",
                      help="reference setting even on a CPU (slow)")
    p.add_argument("--methods", default=None,
                   help=f"comma list (default: all): {', '.join(METHODS)}")
    p.add_argument("--steps", type=int, default=None, help="timed steps per method")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps after compile")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="cap on timed seconds per method and framework")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--classes", type=int, default=None)
    p.add_argument("--width-multiplier", type=float, default=None)
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16"),
                   help="jkt compute dtype (bfloat16 skips the fp32 torch reference)")
    p.add_argument("--devices", type=int, default=None,
                   help="use the first N devices (default: all)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
    p.add_argument("--torch-threads", type=int, default=None,
                   help="torch.set_num_threads(N) for a CPU reference (torch's OpenMP pool "
                        "collapses on an oversubscribed machine; 1 is stable there)")
    p.add_argument("--out", default=None, help="directory for bench.md and bench.json")
    p.add_argument("--seed", type=int, default=0)
    return p


def parse_args(argv=None) -> tuple[argparse.Namespace, configs.BenchSetting]:
    p = build_parser()
    args = p.parse_args(argv)
    small = args.small or (not args.reference and jax.default_backend() == "cpu")
    base = configs.small() if small else configs.reference()
    changes = {k: v for k, v in {
        "steps": args.steps, "warmup": args.warmup, "max_seconds": args.max_seconds,
        "batch_size": args.batch_size, "num_classes": args.classes,
        "width_multiplier": args.width_multiplier, "dtype": args.dtype}.items() if v is not None}
    if args.steps is not None:
        changes["min_steps"] = min(base.min_steps, args.steps)
    try:
        setting = dataclasses.replace(base, **changes)
    except ValueError as e:
        p.error(str(e))
    names = list(METHODS) if args.methods is None else [
        m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        p.error(f"unknown method(s) {unknown}; valid: {', '.join(METHODS)}")
    args.method_names = names
    return args, setting


def run(setting: configs.BenchSetting, method_names, *, mesh=None, use_torch: bool = True,
        seed: int = 0, torch_threads: int | None = None, log=print, on_method=None) -> dict:
    """Benchmarks ``method_names``; returns the report (the JSON written by ``main``).
    ``on_method(partial_report)`` is called after each method (e.g. to save progress)."""
    mesh = parallel.make_mesh() if mesh is None else mesh
    tr = None
    torch_note = "disabled (--no-torch)"
    if use_torch and setting.dtype != "float32":
        torch_note = f"skipped: reference is float32, jkt runs {setting.dtype}"
    elif use_torch:
        tr = _torch_module()
        torch_note = "not installed" if tr is None else None
        if tr is not None and torch_threads is not None:
            import torch
            torch.set_num_threads(torch_threads)
    bench = JaxBench(setting, mesh, seed)
    env = {"jax": jax.__version__, "backend": jax.default_backend(),
           "jax_devices": parallel.process_count_str(mesh),
           "device_kind": mesh.devices.flat[0].device_kind, "python": platform.python_version(),
           "jax_default_matmul_precision": str(jax.config.jax_default_matmul_precision)}
    if tr is not None:
        import torch
        env["torch"] = torch.__version__
        env["torch_device"] = (torch.cuda.get_device_name() if torch.cuda.is_available()
                               else f"cpu ({torch.get_num_threads()} threads)")
    else:
        env["torch"] = torch_note
    results = {}
    for name in method_names:
        method = METHODS[name]
        j, init_vars = bench.run(method)
        t = (run_torch(tr, method, bench, init_vars) if tr is not None and not method.fused
             else None)
        ratio = j["median_ms"] / t["median_ms"] if t is not None else None
        results[name] = {"label": method.label, "student": method.student,
                         "members": list(method.members),
                         "teacher": method.teacher, "objective": repr(method.objective),
                         "jkt": j, "torch": t, "ratio": ratio}
        log(f"{name:>24}: jkt {j['median_ms']:8.2f} ms/step"
            + (f" ({j['ms_per_run_step']:.2f} per run)" if method.fused else "")
            + f" (compile {j['compile_s']:.1f} s)"
            + (f", torch {t['median_ms']:8.2f} ms/step, jkt/torch {ratio:.2f}" if t else ""))
        if on_method is not None:
            on_method(_report(setting, env, results, tr is not None))
    return _report(setting, env, results, tr is not None)


def _report(setting, env, results, with_torch: bool) -> dict:
    projection = {"jkt": project_table1(results, "jkt"),
                  **{k: project_table1(results, "jkt", layout=k) for k in FUSED_LAYOUTS}}
    if with_torch:
        projection["torch"] = project_table1(results, "torch")
    return {"setting": dataclasses.asdict(setting), "environment": env, "methods": results,
            "projection": projection}


def main(argv=None) -> dict:
    args, setting = parse_args(argv)
    devices = jax.devices()
    if args.devices is not None:
        if not 0 < args.devices <= len(devices):
            raise SystemExit(f"error: --devices must be in [1, {len(devices)}]")
        devices = devices[:args.devices]
    out = Path(args.out) if args.out else None

    def save_partial(partial):  # a killed run still leaves what it measured
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench.partial.json").write_text(json.dumps(partial, indent=1))

    report = run(setting, args.method_names, mesh=parallel.make_mesh(devices),
                 use_torch=not args.no_torch, seed=args.seed,
                 torch_threads=args.torch_threads, on_method=save_partial if out else None)
    md = markdown(report)
    print()
    print(md)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench.md").write_text(md)
        (out / "bench.json").write_text(json.dumps(report, indent=1))
        (out / "bench.partial.json").unlink(missing_ok=True)
        print(f"wrote {out / 'bench.md'}, {out / 'bench.json'}")
    for r in report["methods"].values():
        for side in ("jkt", "torch"):
            if r[side] is not None and not math.isfinite(r[side]["final_loss"]):
                print(f"warning: non-finite {side} loss in {r['label']}")
    return report


if __name__ == "__main__":
    main()
