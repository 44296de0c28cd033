"""The benchmark report: Table-1 projection, markdown, and the files it is written to.

A report is the JSON-ready dict ``{"setting", "environment", "methods", "projection"}``
(:func:`build`); ``methods[name]`` holds the row's label, architectures, fused members
and the ``jkt`` / ``torch`` step statistics (``median_ms`` etc., ``torch`` ``None`` where
not run) and their ratio. ``--out DIR`` gets ``bench.md`` and ``bench.json``, and
``bench.partial.json`` after every method while the run goes on.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from jkt.bench import settings
from jkt.bench.methods import FUSED_LAYOUTS, TABLE1_PROXY, TEACHER_PROXY

PARTIAL_FILE = "bench.partial.json"


def project_table1(results: dict[str, dict], backend: str = "jkt",
                   layout: str | None = None) -> dict | None:
    """GPU-minutes of one seed of the whole Table 1 grid at the measured step speeds:
    each of the 6 methods separately (``layout=None``, what ``--fusion off`` runs), or
    the steps of one of ``FUSED_LAYOUTS`` per cell (e.g. ``"jkt-fused"``: one CE step,
    one fused act-group step and one fused Jacobian-group step, distill's default).

    ``{"minutes": None, "missing": [...]}`` when a needed row was not measured."""
    fused = layout is not None
    proxies = ({f"[{m}]": m for m in FUSED_LAYOUTS[layout]} if fused
               else dict(TABLE1_PROXY))
    needed = set(proxies.values()) | {TEACHER_PROXY}
    have = {name: r[backend]["median_ms"] for name, r in results.items()
            if r.get(backend) is not None}
    missing = sorted(needed - set(have))
    if missing:
        return {"minutes": None, "missing": missing}
    student_steps, teacher_steps = settings.table1_student_steps(), settings.teacher_steps()
    per_method = {m: student_steps * have[p] / 6e4 for m, p in proxies.items()}
    teacher_min = teacher_steps * have[TEACHER_PROXY] / 6e4
    return {"minutes": sum(per_method.values()) + teacher_min, "per_method_minutes": per_method,
            "teacher_minutes": teacher_min, "student_steps_per_method": student_steps,
            "teacher_steps": teacher_steps, "proxies": proxies, "missing": [],
            "fused": fused}


def build(setting: settings.BenchSetting, environment: dict, results: dict[str, dict],
          with_torch: bool) -> dict:
    """The report of the rows measured so far, with every Table-1 projection."""
    projection = {"jkt": project_table1(results, "jkt"),
                  **{k: project_table1(results, "jkt", layout=k) for k in FUSED_LAYOUTS}}
    if with_torch:
        projection["torch"] = project_table1(results, "torch")
    return {"setting": dataclasses.asdict(setting), "environment": environment,
            "methods": results, "projection": projection}


def _fmt(x, spec=".1f"):
    return "n/a" if x is None else format(x, spec)


def _mib(b):
    return "n/a" if b is None else f"{b / 2**20:.0f} MiB"


def markdown(report: dict) -> str:
    """``bench.md``: the setting, one table row per method, projections, fusion, goals."""
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
        "passes); their img/s counts images x runs; torch has no fused counterpart."
        + (f" Host memory: {env['host_allocator']}." if env.get("host_allocator") else ""),
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


# The performance goals: (description, numerator row, denominator row, (numerator side,
# denominator side), bound on the ratio of their median step times).
GOALS = (
    ("Jacobian step / activation step <= 1.8", "ce+act+jac:label", "ce+act", ("jkt", "jkt"),
     1.8),
    ("Jacobian step: jkt / eager torch <= 1/3", "ce+act+jac:label", "ce+act+jac:label",
     ("jkt", "torch"), 1 / 3),
    ("Jacobian-norm step: jkt / eager torch <= 1/3", "vgg9:ce+jac_norm", "vgg9:ce+jac_norm",
     ("jkt", "torch"), 1 / 3),
    ("full Jacobian: jkt / eager torch <= 1/4", "ce+act+jac:full", "ce+act+jac:full",
     ("jkt", "torch"), 1 / 4),
)
TABLE1_GOAL_MINUTES = 45  # one seed of the Table-1 grid, best jkt layout


def goal_lines(report: dict) -> list[str]:
    """The performance goals as measured ratios (met / missed / n/a)."""
    res = report["methods"]
    small = report["setting"]["small"]
    out = ["Performance goals" + (": SMALL CPU MODE, not the goal setting" if small else ":")]
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
    out.append(f"- Table 1 <= {TABLE1_GOAL_MINUTES} min per seed: " + (
        f"{best[0][0]:.0f} min with `{best[0][1]}` "
        f"({'met' if best[0][0] <= TABLE1_GOAL_MINUTES else 'missed'})" if best else "n/a"))
    return out


def projection_line(report: dict) -> str:
    """One line per projection: Table 1's wall time per seed, or which rows it needs."""
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


def nonfinite_warnings(report: dict) -> list[str]:
    """A warning per row whose final loss (either side) is NaN or infinite."""
    out = []
    for r in report["methods"].values():
        for side in ("jkt", "torch"):
            if r[side] is not None and not math.isfinite(r[side]["final_loss"]):
                out.append(f"warning: non-finite {side} loss in {r['label']}")
    return out


def write_partial(report: dict, out: Path) -> None:
    """``out/bench.partial.json``: what a killed run has measured so far."""
    out.mkdir(parents=True, exist_ok=True)
    (out / PARTIAL_FILE).write_text(json.dumps(report, indent=1))


def write(report: dict, out: Path, md: str | None = None) -> tuple[Path, Path]:
    """Writes ``out/bench.md`` (``md``, default :func:`markdown`) and ``out/bench.json``,
    removes ``bench.partial.json``; returns the two paths."""
    out.mkdir(parents=True, exist_ok=True)
    md_path, json_path = out / "bench.md", out / "bench.json"
    md_path.write_text(markdown(report) if md is None else md)
    json_path.write_text(json.dumps(report, indent=1))
    (out / PARTIAL_FILE).unlink(missing_ok=True)
    return md_path, json_path
