"""``python -m experiments.stream_bench`` measures both input paths on a tiny folder."""

import json

import numpy as np
from PIL import Image

from experiments import stream_bench


def test_stream_bench_writes_both_paths_and_the_step_rate(tmp_path):
    root = tmp_path / "imgs"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((40, 40, 3), 30 * i, np.uint8)).save(root / c / f"{i}.png")
    out = tmp_path / "out"
    rows = stream_bench.main(["--data", str(root), "--image-sizes", "32", "--workers", "0",
                              "--batch-size", "4", "--steps", "2", "--model", "vgg4",
                              "--width-multiplier", "0.0625", "--out", str(out)])
    row, = rows
    assert row["images"] == 8 and row["image_size"] == 32
    for key in ("resident_images_per_s", "stream_0_images_per_s", "step_images_per_s"):
        assert row[key] > 0, key
    assert json.loads((out / "stream_bench.json").read_text()) == rows
    assert "| 32 px | 8 |" in (out / "stream_bench.md").read_text()
