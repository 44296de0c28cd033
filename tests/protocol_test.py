"""Settings that must not differ from the paper without saying so.

* ``train_teacher --preset paper`` trains exactly the teacher ``distill --preset paper``
  trains (same data, validation, augmentation, model, optimiser, schedule, batching,
  seed), compared field by field on the calls both make;
* batching (``OptimConfig.batching``): ``"epoch"`` is one pass over the images an epoch
  with a short last batch (rounded to the data mesh), a pure function of the step; the
  loop's step count, learning-rate boundaries and resumption agree with it, and a short
  batch compiles the step once more, not once per epoch;
* the paper presets' choices;
* the oracle's recipe (docs/experiments.md): an ImageNet-layout folder -> ``train_teacher
  --preset imagenet-vgg9`` (streamed) -> ``transfer --preset mit --source-student`` (slow).
"""

import collections
import dataclasses
import inspect
from pathlib import Path

import chex
import jax
import numpy as np
import pytest
from train_fixtures import (
    MEAN,
    NUM_CLASSES,
    STD,
    host,
    make_split,
    one_line,
    random_variables,
    tiny,
)
from transfer_test import image_folder  # noqa: F401  (fixture: 5 classes of 32x32 images)

from experiments import distill as distill_cli
from experiments import train_teacher as train_teacher_cli
from experiments.configs import distill as distill_configs
from experiments.configs import robustness as robustness_configs
from experiments.configs import train_teacher as teacher_configs
from experiments.configs import transfer as transfer_configs
from jkt import data, parallel, workdir
from jkt.data import BatchStream
from jkt.grids import distill as distill_grid
from jkt.grids import teacher as teacher_grid
from jkt.train import loop, optim
from jkt.train import teacher as teacher_lib
from jkt.train.objective import Objective
from jkt.train.step import StepCache

# ---------------------------------------------------------------------------------------
# The paper's teacher, whichever command trains it.

# What determines a teacher: every train_teacher argument but where it goes and how it
# reports (out, checkpoint_every, progress, mesh, stop, record_name, trust_unverified).
TEACHER_ARGS = ("arch", "model_options", "optim", "max_steps", "seed", "augment")
# What determines the dataset it trains on (data_dir and cache_dir only say where it is).
DATA_FIELDS = ("name", "validation", "val_fraction", "augment", "image_size", "resize")


def _bound(kwargs: dict) -> dict:
    """``train_teacher``'s arguments with its defaults filled in."""
    args = inspect.signature(teacher_lib.train_teacher).bind(**kwargs)
    args.apply_defaults()
    return dict(args.arguments)


def _teacher_from_train_teacher(cfg, monkeypatch) -> dict:
    calls = []
    monkeypatch.setattr(data, "load_config", lambda c: ("dataset of", c))
    monkeypatch.setattr(teacher_grid, "train_teacher",
                        lambda ds, out, **kw: calls.append(_bound(dict(ds=ds, out=out, **kw))))
    teacher_grid.run(cfg)
    call, = calls
    return call


def _teacher_from_distill(cfg, monkeypatch, tmp_path) -> dict:
    calls = []
    monkeypatch.setattr(distill_grid, "train_teacher",
                        lambda ds, out, **kw: calls.append(_bound(dict(ds=ds, out=out, **kw))))
    distill_grid.load_teacher(cfg, ("dataset of", cfg.data), tmp_path, mesh=None)
    call, = calls
    return call


def test_train_teacher_paper_preset_is_distill_paper_teacher(monkeypatch, tmp_path):
    """Both command lines' resolved paper configs, and the teacher each would train."""
    alone = train_teacher_cli.parse_config(["--preset", "paper"])
    grid = distill_cli.parse_config(["--preset", "paper"])
    a = _teacher_from_train_teacher(alone, monkeypatch)
    b = _teacher_from_distill(grid, monkeypatch, tmp_path)
    differ = [k for k in TEACHER_ARGS if a[k] != b[k]]
    differ += [f"optim.{f.name}" for f in dataclasses.fields(optim.OptimConfig)
               if getattr(a["optim"], f.name) != getattr(b["optim"], f.name)]
    data_a, data_b = a["ds"][1], b["ds"][1]  # the DataConfig each dataset is loaded from
    differ += [f"data.{f}" for f in DATA_FIELDS if getattr(data_a, f) != getattr(data_b, f)]
    assert not differ, f"train_teacher --preset paper and distill's teacher differ in {differ}"
    # What the paper presets say the teacher is (app. 10.3, §6.1 "the full CIFAR100").
    assert (data_a.name, data_a.validation, data_a.augment, data_a.image_size) == (
        "cifar100", "unused", "none", 32)
    assert (a["arch"], a["model_options"], a["seed"], a["max_steps"]) == ("vgg9", {}, 0, None)
    o = a["optim"]
    assert (o.name, o.learning_rate, o.decay_epochs, o.decay_factor, o.epochs, o.batch_size,
            o.batching) == ("adam", 1e-3, (0.8,), 0.1, 500, 128, "epoch")
    # The comparison sees a difference in any of these.
    other = dataclasses.replace(alone, data=dataclasses.replace(alone.data, augment="crop+flip"))
    c = _teacher_from_train_teacher(other, monkeypatch)
    assert c["augment"] != b["augment"] and c["ds"][1].augment != data_b.augment


# ---------------------------------------------------------------------------------------
# Batching.


def test_epoch_batching_is_one_pass_per_epoch_with_a_short_last_batch():
    s = BatchStream(100, 128, seed=1, batching="epoch")  # n = 1 of CIFAR-100
    assert (s.steps_per_epoch, s.batch_sizes, s.images_per_epoch) == (1, (100,), 100)
    epochs = [s.indices(e) for e in range(3)]
    for idx in epochs:
        np.testing.assert_array_equal(np.sort(idx), np.arange(100))  # no repeats
    assert not np.array_equal(epochs[0], epochs[1])  # a fresh permutation each epoch
    # Cycle batching, today's default: 128 images of 100 a step, repeats inside a batch.
    c = BatchStream(100, 128, seed=1)
    assert c.steps_per_epoch == 1 and len(c.indices(0)) == 128
    assert np.bincount(c.indices(0)).max() == 2

    s = BatchStream(300, 128, seed=2, batching="epoch")
    assert s.steps_per_epoch == 3 and s.batch_sizes == (128, 44)
    assert [s.batch_size(i) for i in range(6)] == [128, 128, 44] * 2
    for e in range(2):
        flat = np.concatenate([s.indices(3 * e + k) for k in range(3)])
        np.testing.assert_array_equal(np.sort(flat), np.arange(300))
    assert s.epoch(3) == 1.0 and s.epoch(4) == pytest.approx(4 / 3)


def test_epoch_batching_rounds_the_short_batch_to_the_mesh_and_is_pure():
    # 2 devices: 15 = 3 × 4 + 3 -> a short batch of 2, a different image skipped each epoch.
    s = BatchStream(15, 4, seed=3, batching="epoch", multiple_of=2)
    assert (s.steps_per_epoch, s.batch_sizes, s.images_per_epoch) == (4, (4, 2), 14)
    skipped = []
    for e in range(6):
        seen = np.concatenate([s.indices(4 * e + k) for k in range(4)])
        assert len(seen) == len(set(seen)) == 14
        skipped.append(int(np.setdiff1d(np.arange(15), seen)[0]))
    assert len(set(skipped)) > 1
    # A pure function of (seed, step): any order, a fresh object, the same batches.
    again = BatchStream(15, 4, seed=3, batching="epoch", multiple_of=2)
    for step in reversed(range(24)):
        np.testing.assert_array_equal(again.indices(step), s.indices(step))
    # Nothing short left after rounding: one batch fewer an epoch.
    s = BatchStream(9, 4, batching="epoch", multiple_of=2)
    assert (s.steps_per_epoch, s.batch_sizes) == (2, (4,))
    with pytest.raises(ValueError) as e:
        BatchStream(5, 8, batching="epoch", multiple_of=8)  # n·K < D
    assert "5 training images" in one_line(e) and "8 devices" in one_line(e)
    with pytest.raises(ValueError) as e:
        optim.OptimConfig(batching="drop")
    assert "unknown batching 'drop'; valid: cycle, epoch" in one_line(e)


def test_total_steps_and_decay_boundaries_follow_the_epochs():
    cfg = loop.TrainConfig(optim=optim.OptimConfig(epochs=5, batch_size=128, batching="epoch",
                                                   decay_epochs=(2,)))
    # CIFAR-100 n = 1, 5 and the full split: the paper preset's step counts per run.
    assert [loop.total_steps(cfg, n) for n in (100, 500, 50_000)] == [5, 20, 5 * 391]
    # 8 batches and 4 images an epoch: on 8 devices the 4 are skipped, not a ninth batch.
    assert loop.total_steps(cfg, 8 * 128 + 4) == 5 * 9
    assert loop.total_steps(cfg, 8 * 128 + 4, data_devices=8) == 5 * 8
    stream = loop.batch_stream(cfg, 500)
    rates = optim.learning_rates(cfg.optim, stream.steps_per_epoch, loop.total_steps(cfg, 500))
    assert np.flatnonzero(np.diff(rates))[0] + 1 == 2 * 4  # decays as epoch 2 starts


def _recording(cache: StepCache, seen: list) -> StepCache:
    """``cache`` whose train steps record ``(batch size, learning rate)`` of every call."""
    real = cache.train_step

    def train_step(*args, **kwargs):
        fn = real(*args, **kwargs)

        def step(states, batch, teacher_vars, rate, weights):
            seen.append((int(batch["label"].shape[0]), float(rate)))
            return fn(states, batch, teacher_vars, rate, weights)

        return step

    cache.train_step = train_step
    return cache


class _Compiles:
    """Backend compilations by jitted function name (see tests/compile_count_test.py)."""

    def __init__(self):
        self.names = collections.Counter()

    def __call__(self, event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            self.names[kwargs.get("fun_name", "?").removeprefix("jit(").removesuffix(")")] += 1

    def __enter__(self):
        jax.monitoring.register_event_duration_secs_listener(self)
        return self

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self)


def test_loop_with_epoch_batching_compiles_once_per_shape_and_resumes_exactly(
        monkeypatch, tmp_path):
    """15 images, batch 4, 2 devices, 3 epochs: batches 4, 4, 4, 2 each epoch (one image
    skipped), 12 steps, the rate decaying as epoch 2 starts; the step compiles twice (two
    shapes) for three calls; a run stopped at step 6 resumes with the batches it would
    have seen and ends bit for bit where the uninterrupted run does; resuming on a mesh
    whose rounding differs is refused."""
    monkeypatch.setattr(loop, "create_model", lambda name, n, **o: tiny(n, **o))
    mesh = parallel.make_mesh(jax.devices()[:2])
    train = make_split(15, seed=4)
    cfg = loop.TrainConfig(objective=Objective(ce=1), augment="none", seed=1, log_every=2,
                           checkpoint_every=100, eval_batch_size=8, progress=False,
                           optim=optim.OptimConfig(epochs=3, batch_size=4, decay_epochs=(2,),
                                                   batching="epoch"))
    seen, indices = [], []
    real_make_batch = loop.make_batch
    monkeypatch.setattr(loop, "make_batch",
                        lambda split, idx, m: (indices.append(np.asarray(idx)),
                                               real_make_batch(split, idx, m))[1])
    cache = _recording(StepCache(), seen)

    def run(work, stop=None, mesh=mesh):
        return loop.train_and_evaluate([cfg], train, {"val": make_split(8, seed=9)},
                                       num_classes=NUM_CLASSES, mean=MEAN, std=STD,
                                       workdirs=[tmp_path / work], mesh=mesh, steps=cache,
                                       stop=stop)[0]

    with _Compiles() as compiles:
        ref = run("ref")
        ref_seen, ref_indices = list(seen), list(indices)
        assert ref.steps == 12
        assert [b for b, _ in ref_seen] == [4, 4, 4, 2] * 3
        rates = [r for _, r in ref_seen]
        assert rates[:8] == [pytest.approx(1e-3)] * 8 and rates[8:] == [pytest.approx(1e-4)] * 4
        seen.clear()
        indices.clear()
        with pytest.raises(KeyboardInterrupt):
            run("cut", stop=lambda: len(seen) >= 6)
        resumed = run("cut")
        assert compiles.names["train_step"] == 2
    assert resumed.resumed_from == 6 and resumed.steps == 12
    for got, want in zip(indices, ref_indices, strict=True):
        np.testing.assert_array_equal(got, want)
    _, want = loop.final_variables(tmp_path / "ref", cfg, NUM_CLASSES, train.images.shape[1:],
                                   mesh)
    _, got = loop.final_variables(tmp_path / "cut", cfg, NUM_CLASSES, train.images.shape[1:],
                                  mesh)
    chex.assert_trees_all_equal(host(got), host(want))

    # Checkpoint at step 6 of the 2-device run; one device would use all 15 images an
    # epoch (a short batch of 3), other batches than the checkpoint's: refused.
    with pytest.raises(KeyboardInterrupt):
        run("moved", stop=lambda: len(seen) >= 12 + 6)
    with pytest.raises(ValueError) as e:
        run("moved", mesh=parallel.make_mesh(jax.devices()[:1]))
    assert "'images_per_epoch': 14" in one_line(e) and "'images_per_epoch': 15" in one_line(e)


def test_records_without_batching_read_as_cycle(tmp_path):
    """Run records and teacher records written before ``optim.batching`` existed."""
    assert workdir.RECORD_ADDED["optim.batching"] == "cycle"
    assert loop.DATA_META_ADDED["batching"] == "cycle"
    path = tmp_path / "config.json"
    old = {"train": {"optim": {"name": "adam"}}}
    workdir.check_record(path, old, what="run r")
    workdir.check_record(path, {"train": {"optim": {"name": "adam", "batching": "cycle"}}},
                         what="run r")
    with pytest.raises(workdir.SettingsChangedError, match="'cycle' -> 'epoch'"):
        workdir.check_record(path, {"train": {"optim": {"name": "adam", "batching": "epoch"}}},
                             what="run r")


# ---------------------------------------------------------------------------------------
# The presets' choices.


def test_paper_presets_batch_by_epoch_and_the_others_as_before():
    paper = [distill_configs.get_config("paper").optim,
             distill_configs.get_config("paper").teacher_optim,
             robustness_configs.get_config("paper").optim,
             transfer_configs.get_config("mit").optim,
             teacher_configs.get_config("paper").optim]
    assert {o.batching for o in paper} == {"epoch"}
    others = [getattr(m.get_config(p), f)
              for m, presets in ((distill_configs, ("quick", "cifar10")),
                                 (robustness_configs, ("quick", "cifar10")),
                                 (transfer_configs, ("quick", "cifar10")),
                                 (teacher_configs, ("default",)))
              for p in presets for f in ("optim", "teacher_optim")
              if hasattr(m.get_config(p), f)]
    assert others and {o.batching for o in others} == {"cycle"}
    assert optim.OptimConfig().batching == "cycle"
    # The flag reaches every optimiser of the command lines that have one.
    cfg = distill_cli.parse_config(["--batching", "epoch", "--teacher-batching", "epoch"])
    assert cfg.optim.batching == cfg.teacher_optim.batching == "epoch"
    assert train_teacher_cli.parse_config(["--batching", "epoch"]).optim.batching == "epoch"


# ---------------------------------------------------------------------------------------
# The oracle's recipe (docs/experiments.md): ImageNet-layout folder -> train_teacher ->
# transfer --preset mit --source-student.


def _imagenet_like(root: Path, wnids=("n01440764", "n01443537", "n01484850"), per_class=6):
    from PIL import Image

    rng = np.random.default_rng(0)
    for k, wnid in enumerate(wnids):
        (root / "train" / wnid).mkdir(parents=True)
        colour = np.array([200 if k == c else 30 for c in range(3)])
        for i in range(per_class):
            img = np.clip(colour + rng.normal(0, 40, (40, 48, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / "train" / wnid / f"{wnid}_{i}.JPEG")
    return root


@pytest.mark.slow
def test_oracle_recipe_end_to_end(image_folder, tmp_path, monkeypatch):  # noqa: F811
    from experiments import transfer as transfer_cli
    from jkt import checkpoint, models
    from jkt.data import stream as stream_lib
    from jkt.grids import transfer as transfer_grid
    from jkt.models.teacher import TeacherMeta

    monkeypatch.setenv("JKT_CACHE", str(tmp_path / "cache"))
    mesh = parallel.make_mesh(jax.devices()[:1])
    imagenet = _imagenet_like(tmp_path / "imagenet")
    # 1. The ImageNet-pretrained VGG-9 of the imagenet-vgg9 preset, streamed (here: 3
    # "ImageNet" classes, 32 px, 1/16 width, 3 steps: the epoch's short batch included).
    cfg = train_teacher_cli.parse_config([
        "--preset", "imagenet-vgg9", "--dataset", f"folder:{imagenet}", "--image-size", "32",
        "--width-multiplier", "0.0625", "--batch-size", "8", "--max-steps", "3",
        "--workdir", str(tmp_path / "vgg9_imagenet"), "--no-progress"])
    assert cfg.data.pipeline == "stream" and cfg.optim.name == "sgd"
    assert isinstance(data.load_config(cfg.data).train, stream_lib.Subset)  # 15 of 18
    source = teacher_grid.run(cfg, mesh=mesh)
    assert source.meta.num_classes == 3 and source.meta.arch == "vgg9"
    assert source.meta.extra["steps"] == 3
    # 2. The ResNet-34 teacher with the same classes (import_torchvision's stand-in).
    t_opts = {"stage_sizes": (1, 1, 1, 1), "width_multiplier": 0.0625}
    resnet = models.create("resnet34", 3, **t_opts)
    checkpoint.save_teacher(tmp_path / "resnet34", random_variables(resnet), TeacherMeta(
        arch="resnet34", num_classes=3, input_size=(32, 32, 3), mean=(0.5,) * 3,
        std=(0.25,) * 3, dataset="imagenet-like", model_options=t_opts))
    # 3. Table 3's oracle row from that artifact on an MIT-like target folder.
    work = tmp_path / "transfer"
    cfg = transfer_cli.parse_config([
        "--preset", "mit", "--dataset", f"folder:{image_folder}", "--image-size", "32",
        "--teacher", str(tmp_path / "resnet34"),
        "--source-student", str(tmp_path / "vgg9_imagenet" / "artifact"),
        "--methods", "oracle", "--n-per-class", "2", "--seeds", "0", "--max-steps", "2",
        "--batch-size", "10",  # the 10 images in one batch: one step program to compile
        "--width-multiplier", "0.0625", "--workdir", str(work), "--no-progress"])
    rows = transfer_grid.run(cfg, mesh=mesh)
    row, = rows["main"]
    assert row["method"] == "oracle" and row["steps"] == 2
    # The oracle started from the pretrained VGG-9: its source head, which the oracle's
    # target cross-entropy does not train, is the artifact's classifier; its trunk moved
    # by 2 SGD steps only.
    cfg_s = loop.TrainConfig(model="vgg9", optim=cfg.optim,
                             model_options={"width_multiplier": 0.0625, "source_classes": 3})
    _, got = loop.final_variables(work / "runs" / "oracle" / "n2_seed0", cfg_s, 5,
                                  (32, 32, 3), mesh=mesh)
    pre = source.variables["params"]
    np.testing.assert_array_equal(np.asarray(got["params"]["fc_source"]["kernel"]),
                                  np.asarray(pre["fc"]["kernel"]))
    for layer in ("conv1", "conv3", "conv6"):
        mine, theirs = (np.ravel(np.asarray(p[layer]["kernel"])) for p in (got["params"], pre))
        assert np.corrcoef(mine, theirs)[0, 1] > 0.9, layer
