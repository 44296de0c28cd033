"""Input-pipeline throughput: the resident path vs the streaming path (Grain workers), and
how many workers keep one device's train step fed.

    python -m experiments.stream_bench --data ../shared/data/cifar10/train.tar.xz \\
        --image-sizes 32,224 --workers 0,1,2 --out runs/stream_bench

For each image size: the resident path (:func:`jkt.data.folder.load_folder`: decode
everything once, then gather each batch from host memory) and the streamed one
(:func:`jkt.data.stream.streamed_batches`: each batch read and decoded when it is due,
with 0 = reader threads of this process, or N worker processes) deliver ``--steps``
global batches; images/s counts delivered batches only (after one warm-up batch). The
train step of ``--model`` (cross-entropy, this machine's first device, compiled before
timing) gives the rate a pipeline must reach: the smallest worker count at or above it
saturates the device. An archive is extracted (``--max-images`` of it) into ``--out``
first: streaming reads folders. Writes ``stream_bench.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import tarfile
import time
import zipfile
from pathlib import Path

import jax
import numpy as np

from jkt import cli, parallel, paths


def _extract(archive: Path, out: Path, max_images: int) -> Path:
    """The first ``max_images`` images of ``archive`` (class folders kept) under ``out``."""
    from jkt.data import folder as folder_lib

    out.mkdir(parents=True, exist_ok=True)
    if any(out.rglob("*.*")):
        return out
    count = 0
    if archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if count >= max_images:
                    break
                if not info.is_dir() and folder_lib._is_image(info.filename):
                    zf.extract(info, out)
                    count += 1
        return out
    with tarfile.open(archive, "r|*") as tf:
        for member in tf:
            if count >= max_images:
                break
            if member.isfile() and folder_lib._is_image(member.name):
                tf.extract(member, out, filter="data")
                count += 1
    return out


def _rate(batches, steps: int, batch_size: int) -> float:
    """Images/s of ``steps`` batches of an iterator, after one warm-up batch; each batch
    is waited for (``block_until_ready``) as a training step would."""
    try:
        jax.block_until_ready(next(batches))
        t0 = time.perf_counter()
        for _ in range(steps):
            jax.block_until_ready(next(batches))
        return steps * batch_size / (time.perf_counter() - t0)
    finally:
        getattr(batches, "close", lambda: None)()  # ends a stream's worker processes


def _step_rate(model_name: str, image_size: int, num_classes: int, batch_size: int,
               steps: int, mesh, width: float = 1.0) -> float:
    """Images/s of a cross-entropy train step of ``model_name`` at ``image_size``."""
    from jkt import models
    from jkt.train import fused
    from jkt.train.objective import Objective
    from jkt.train.optim import OptimConfig, Optimizer
    from jkt.train.step import StepCache

    cache = StepCache()
    model = models.create(model_name, num_classes, width_multiplier=width)
    optimizer = Optimizer.of(OptimConfig("sgd", 0.01, (), epochs=1, batch_size=batch_size))
    step = cache.train_step(model, [Objective(ce=1)], optimizer, mean=(0.5,) * 3,
                            std=(0.25,) * 3, augment="none", mode="unroll", mesh=mesh)
    init = cache.init(model, optimizer, (image_size, image_size, 3), mesh)
    state = init(jax.random.key(0), jax.random.key(1), None)
    rng = np.random.default_rng(0)
    batch = parallel.global_batch(
        {"image": rng.integers(0, 256, (batch_size, image_size, image_size, 3), np.uint8),
         "label": rng.integers(0, num_classes, batch_size).astype(np.int32)}, mesh, batch_size)
    lr, weights = np.float32(0.01), fused.weight_matrix([Objective(ce=1)])
    state, _ = step(state, batch, None, lr, weights)  # compiles
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    for _ in range(steps):
        state, _ = step(state, batch, None, lr, weights)
    jax.block_until_ready(state)
    return steps * batch_size / (time.perf_counter() - t0)


def measure(folder: Path, image_size: int, workers: list[int], batch_size: int, steps: int,
            model: str, cache_dir: Path, width: float = 1.0) -> dict:
    """One image size's row: resident and streamed images/s, the step's, and the workers
    that saturate it."""
    from jkt.data import folder as folder_lib
    from jkt.data import stream as stream_lib
    from jkt.data.batches import BatchStream, train_batches

    mesh = parallel.make_mesh(jax.devices()[:1])
    t0 = time.perf_counter()
    train, _, names = folder_lib.load_folder(folder, image_size=image_size, cache_dir=cache_dir)
    decode_s = time.perf_counter() - t0
    stream = BatchStream(len(train), batch_size, seed=0)
    row = {"image_size": image_size, "images": len(train), "batch_size": batch_size,
           "resident_decode_s": round(decode_s, 2),
           "resident_images_per_s": _rate(train_batches(train, stream, mesh), steps,
                                          batch_size)}
    records = stream_lib.folder_records(folder, image_size=image_size)
    for w in workers:
        batches = stream_lib.streamed_batches(
            records, stream, mesh, stop_step=steps + 1,
            options=stream_lib.StreamOptions(workers=w, threads=max(1, os.cpu_count() or 1)))
        row[f"stream_{w}_images_per_s"] = _rate(batches, steps, batch_size)
    row["step_images_per_s"] = _step_rate(model, image_size, len(names), batch_size,
                                          max(2, steps // 2), mesh, width)
    fed = [w for w in workers if row[f"stream_{w}_images_per_s"] >= row["step_images_per_s"]]
    row["workers_that_saturate"] = min(fed) if fed else None
    return row


def report(rows: list[dict], workers: list[int], model: str) -> str:
    head = (["image size", "images", "resident decode (s)", "resident img/s"]
            + [f"stream, {w} worker(s) img/s" if w else "stream, threads img/s"
               for w in workers] + [f"{model} CE step img/s", "workers that saturate it"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"{r['image_size']} px", f"{r['images']:,}", f"{r['resident_decode_s']:.1f}",
                 f"{r['resident_images_per_s']:,.0f}",
                 *(f"{r[f'stream_{w}_images_per_s']:,.0f}" for w in workers),
                 f"{r['step_images_per_s']:,.0f}",
                 "none measured" if r["workers_that_saturate"] is None
                 else str(r["workers_that_saturate"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="image folder, or a .tar[.xz]/.zip of one")
    p.add_argument("--image-sizes", default="32,224", help="comma list of image sides")
    p.add_argument("--workers", default="0,1,2", help="comma list of worker-process counts")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="batches timed per pipeline")
    p.add_argument("--max-images", type=int, default=10_000,
                   help="images extracted from an archive")
    p.add_argument("--model", default="vgg9", help="the step whose rate the pipelines feed")
    p.add_argument("--width-multiplier", type=float, default=1.0, help="of --model")
    p.add_argument("--out", default="runs/stream_bench")
    args = p.parse_args(argv)

    def run(a):
        out = paths.as_dir(a.out)
        sizes = [int(s) for s in a.image_sizes.split(",")]
        workers = [int(w) for w in a.workers.split(",")]
        if a.batch_size <= 0 or a.steps <= 0 or min(sizes) <= 0 or min(workers) < 0:
            raise ValueError("--batch-size, --steps and --image-sizes must be positive, "
                             "--workers non-negative")
        data = Path(a.data)
        if not data.exists():
            raise FileNotFoundError(f"--data {data} does not exist")
        folder = data if data.is_dir() else _extract(data, out / "images", a.max_images)
        rows = []
        for size in sizes:
            rows.append(measure(folder, size, workers, a.batch_size, a.steps, a.model,
                                out / "cache", a.width_multiplier))
            print(report(rows[-1:], workers, a.model), flush=True)
        md = (f"# Input pipelines ({jax.devices()[0].device_kind}, {os.cpu_count()} CPU "
              f"cores, {time.strftime('%Y-%m-%d')})\n\n" + report(rows, workers, a.model))
        paths.write_text(out / "stream_bench.md", md)
        paths.write_text(out / "stream_bench.json", json.dumps(rows, indent=1))
        print(f"wrote {out / 'stream_bench.md'}")
        return rows

    return cli.run(run, args)


if __name__ == "__main__":
    main()
