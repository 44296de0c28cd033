"""Tests for jkt.resources: memory estimates checked before the work starts.

A huge ``--image-size`` or ``--batch-size`` must be one ``error: ...`` line before any
image is decoded or any program compiled, not a kernel kill a minute later; the repo's own
settings must stay far below the limit. Nothing here compiles a program: shapes come from
``jax.eval_shape`` (a listener on JAX's compile event checks the loop's refusals).
"""

import io
import shutil
import tarfile
import tracemalloc
import types
import zipfile

import jax
import numpy as np
import pytest
from PIL import Image
from train_fixtures import MEAN, NUM_CLASSES, STD, make_split, one_line, tiny

from jkt import cli, models, parallel, paths, resources
from jkt.data import decode as decode_lib
from jkt.data import folder as folder_lib
from jkt.train import OptimConfig, loop, memory
from jkt.train.objective import Objective
from jkt.train.optim import Optimizer

GiB = 2**30
BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"
ADAM = Optimizer("adam")


# ---------------------------------------------------------------------------- one line


def test_check_fits_refuses_one_line_above_the_fraction():
    resources.check_fits("x", 80, 100, "fix it")  # exactly FRACTION: fits
    resources.check_fits("x", 10 * GiB, None, "fix it")  # unknown memory: nothing refused
    with pytest.raises(resources.ResourceError) as e:
        resources.check_fits("decoding 7 images at 9x9 px", 3 * GiB, 2 * GiB,
                             "lower --image-size (data.image_size)", where="host memory")
    msg = one_line(e)
    assert isinstance(e.value, ValueError)
    assert msg == ("decoding 7 images at 9x9 px needs about 3.0 GiB, more than 80% of the "
                   "2.0 GiB of host memory available; lower --image-size (data.image_size)")
    assert resources.format_bytes(5 * 2**20) == "5.0 MiB"


def test_the_command_line_prints_error_and_exits_2(capsys):
    def main(cfg):
        resources.check_fits("training", 2 * GiB, GiB, "lower --batch-size")

    with pytest.raises(SystemExit) as e:
        cli.run(main, None)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: training needs about 2.0 GiB") and err.count("\n") == 1


# ---------------------------------------------------------------------------- memory


def test_host_memory_reads_meminfo_and_the_tightest_cgroup_limit(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:  8000000 kB\nMemAvailable:    1000 kB\n")
    files = dict(meminfo=str(meminfo), cgroup_root=str(tmp_path / "cg"),
                 self_cgroup=str(tmp_path / "self"))
    assert resources.host_memory_available(**files) == 1000 * 1024  # no cgroup: MemAvailable

    (tmp_path / "self").write_text("0::/a/b\n")
    leaf, parent = tmp_path / "cg" / "a" / "b", tmp_path / "cg" / "a"
    leaf.mkdir(parents=True)
    (leaf / "memory.max").write_text("500000\n")
    (leaf / "memory.current").write_text("200000\n")
    (leaf / "memory.stat").write_text("anon 150000\ninactive_file 1000\n")
    (parent / "memory.max").write_text("max\n")
    (parent / "memory.current").write_text("900000\n")
    assert resources.host_memory_available(**files) == 500000 - 200000 + 1000
    (parent / "memory.max").write_text("1000000\n")  # an ancestor's limit leaves less
    assert resources.host_memory_available(**files) == 1000000 - 900000
    meminfo.write_text("MemAvailable:      50 kB\n")  # the host leaves even less
    assert resources.host_memory_available(**files) == 50 * 1024

    missing = dict(meminfo=str(tmp_path / "none"), cgroup_root=str(tmp_path / "none"),
                   self_cgroup=str(tmp_path / "none"))
    assert 0 < resources.host_memory_available(**missing) < 2**62  # os.sysconf
    assert 0 < resources.host_memory_available() < 2**50  # this host


def test_device_memory(monkeypatch):
    monkeypatch.setattr(resources, "host_memory_available", lambda: 12345)
    assert resources.device_memory(jax.devices()[0]) == 12345  # CPU: the host's memory

    def device(stats):
        def memory_stats():
            if isinstance(stats, Exception):
                raise stats
            return stats
        return types.SimpleNamespace(platform="gpu", device_kind="H200",
                                     memory_stats=memory_stats)

    assert resources.device_memory(device({"bytes_limit": 7 * GiB,
                                           "bytes_in_use": GiB})) == 7 * GiB
    assert resources.device_memory(device(None)) is None
    assert resources.device_memory(device(RuntimeError("unsupported"))) is None


# ---------------------------------------------------------------------------- decoding


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _folder(root, per_class: int = 3):
    """``root/<class>/<i>.png``: two classes of 8x8 PNGs, plus files that are no image."""
    for c, name in enumerate(("cat", "dog")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            (root / name / f"{i}.png").write_bytes(_png(40 * c + i))
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "x.png").write_bytes(_png(0))
    return root


def test_decode_bytes_known_case():
    # 10 images of 100x100: 2 copies of 300,000 bytes, 4 threads' PIL image (4 B/px) and
    # array (3 B/px), and the cache writer's copy of the arrays (under 16 MiB).
    assert resources.decode_bytes(10, 100, workers=4) == (
        2 * 10 * 100 * 100 * 3 + 4 * 100 * 100 * 7 + 10 * 100 * 100 * 3)
    assert resources.decode_bytes(2, 100, workers=32) == resources.decode_bytes(2, 100, 2)
    big = resources.decode_bytes(50_000, 224, workers=20)
    assert big == 2 * 50_000 * 224**2 * 3 + 20 * 224**2 * 7 + (16 << 20)


def test_decode_estimate_covers_the_arrays_load_folder_holds(tmp_path):
    """NumPy's allocations (which tracemalloc sees) while decoding and caching a folder:
    at least the two copies the estimate counts, and no more than the estimate."""
    root = _folder(tmp_path / "imgs", per_class=20)
    folder_lib.load_folder(root, image_size=16, cache_dir=tmp_path / "warm")  # imports
    size, n = 128, 40
    arrays = n * size * size * 3
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        folder_lib.load_folder(root, image_size=size, cache_dir=tmp_path / "c", workers=2)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert resources.DECODE_COPIES * arrays <= peak, peak
    assert peak <= resources.decode_bytes(n, size, workers=2), peak


@pytest.mark.parametrize("kind", ["folder", "zip", "tar", "tar.xz"])
def test_count_files_reads_only_the_listing(tmp_path, kind):
    root = _folder(tmp_path / "imgs")
    source = root if kind == "folder" else paths.as_path(shutil.make_archive(
        str(tmp_path / "imgs"), {"zip": "zip", "tar": "tar", "tar.xz": "xztar"}[kind], root))
    expected = None if kind == "tar.xz" else 6  # compressed tars are not listed
    assert resources.count_files(paths.as_path(source),
                                 folder_lib._is_image) == expected


def _no_decoding(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("an image was decoded")

    monkeypatch.setattr(decode_lib, "decode", fail)
    monkeypatch.setattr(folder_lib, "_decode_chunk", fail)
    monkeypatch.setattr(decode_lib.Image, "open", fail)


@pytest.mark.parametrize("kind, size, count", [("folder", 200_000, "6 images"),
                                               ("zip", 200_000, "6 images"),
                                               ("tar.xz", 1_000_000, "the images")])
def test_absurd_image_size_is_refused_before_decoding(tmp_path, monkeypatch, kind, size, count):
    root = _folder(tmp_path / "imgs")
    source = root if kind == "folder" else shutil.make_archive(
        str(tmp_path / "imgs"), "zip" if kind == "zip" else "xztar", root)
    _no_decoding(monkeypatch)
    with pytest.raises(resources.ResourceError) as e:
        folder_lib.load_folder(source, image_size=size, cache_dir=tmp_path / "c")
    msg = one_line(e)
    assert f"decoding {count}" in msg and f"{size}x{size} px" in msg, msg
    assert "GiB of host memory available" in msg and "--image-size (data.image_size)" in msg
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").rglob("*.npz"))


def test_a_small_image_size_is_decoded(tmp_path):
    train, test, names = folder_lib.load_folder(_folder(tmp_path / "imgs"), image_size=8,
                                                cache_dir=tmp_path / "c")
    assert train.images.shape == (6, 8, 8, 3) and test is None and names == ("cat", "dog")


def test_the_decode_check_uses_the_host_memory(tmp_path, monkeypatch):
    """A size that fits a big host is refused by a small one (the check reads the host)."""
    root = _folder(tmp_path / "imgs")
    need = resources.decode_bytes(6, 64, workers=4)
    enough = int(need / resources.FRACTION) + 1
    monkeypatch.setattr(resources, "host_memory_available", lambda: enough)
    folder_lib.load_folder(root, image_size=64, cache_dir=tmp_path / "a", workers=4)
    monkeypatch.setattr(resources, "host_memory_available", lambda: enough - 2)
    _no_decoding(monkeypatch)
    with pytest.raises(resources.ResourceError, match="--image-size"):
        folder_lib.load_folder(root, image_size=64, cache_dir=tmp_path / "b", workers=4)


# ---------------------------------------------------------------------------- the step


def test_profile_matches_counts_by_hand():
    """One-block VGG (conv 3->8, BatchNorm, 2x2 pool, global pool, Dense 8->4) on 16x16."""
    params = (3 * 3 * 3 * 8 + 2 * 8 + 8 * 4 + 4) * 4  # conv kernel, BN scale/bias, Dense
    stats = 2 * 8 * 4  # BN mean/var
    xla = memory.model_profile(tiny(conv_impl="xla"), (16, 16, 3), ADAM)
    assert xla.params == params and xla.variables == params + stats
    # Train state: variables, Adam's two moments, a few scalars (step, rng, counts).
    assert 0 <= xla.state - (params + stats + 2 * params) <= 64, xla.state
    # Module outputs: conv1 and bn1 (16x16x8 float32), fc and the model (4), plus the input.
    acts = 2 * 16 * 16 * 8 * 4 + 2 * 4 * 4 + 16 * 16 * 3 * 4
    assert (xla.activations, xla.largest, xla.outputs) == (acts, 16 * 16 * 8 * 4, 4)
    im2col = memory.model_profile(tiny(conv_impl="im2col"), (16, 16, 3), ADAM)
    patches = 16 * 16 * (3 * 3 * 3) * 4  # (H, W, kh*kw*C) float32
    assert (im2col.activations, im2col.largest) == (acts + patches, patches)
    frozen = memory.model_profile(tiny(conv_impl="xla"), (16, 16, 3),
                                     variables=models.abstract_variables(tiny(), (16, 16, 3)))
    assert (frozen.state, frozen.variables, frozen.activations) == (0, params + stats, acts)


def test_step_estimate_formula():
    model = tiny(conv_impl="xla")
    p = memory.model_profile(model, (16, 16, 3), ADAM)
    teacher = types.SimpleNamespace(model=tiny(conv_impl="xla"),
                                    variables=models.abstract_variables(tiny(), (16, 16, 3)))
    ce, jac = Objective(ce=1), Objective(ce=1, jac=1)
    one = memory.step_estimate(model, [ce], ADAM, (16, 16, 3), 8, teacher=teacher,
                                  per_device_eval_batch=32)
    assert one.activations == memory.CE_FACTOR * p.activations * 8 and one.teacher == 0
    assert (one.state, one.gradients) == (p.state, 2 * p.params)
    assert one.batch == 2 * 8 * (16 * 16 * 3 + 4)
    assert one.evaluation == 2 * p.largest * 32 + 32 * (16 * 16 * 3 + 5)
    two = memory.step_estimate(model, [ce, jac], ADAM, (16, 16, 3), 8, teacher=teacher)
    # Fused runs compute the union of their terms: both runs pay for the Jacobian.
    student = 2 * memory.JACOBIAN_FACTOR * p.activations * 8
    assert two.activations == student + 2 * p.activations * 8  # teacher: forward + 1 row
    assert (two.state, two.teacher) == (2 * p.state, p.variables)
    full = Objective(jac=1, estimator="full")
    assert memory.student_factor(full, NUM_CLASSES) == 3 * (1 + NUM_CLASSES)
    assert memory.teacher_factor([full], NUM_CLASSES) == 1 + NUM_CLASSES
    assert memory.teacher_factor([Objective(act=1)], NUM_CLASSES) == 1
    assert memory.teacher_factor([ce], NUM_CLASSES) == 0


class _Compiles:
    """Counts XLA compilations (JAX's compile event) while installed."""

    def __init__(self):
        self.count = 0

    def __call__(self, event, duration, **kwargs):
        self.count += event == BACKEND_COMPILE

    def __enter__(self):
        jax.monitoring.register_event_duration_secs_listener(self)
        return self

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self)


def _refused_before_compiling(tmp_path, monkeypatch, batch_size: int, devices: int) -> str:
    """``train_and_evaluate`` of the tiny model, failing if it initialises or compiles."""
    monkeypatch.setattr(loop, "create_model", lambda name, n, **o: tiny(n, **o))

    def no_init(*args, **kwargs):
        raise AssertionError("the model was initialised")

    monkeypatch.setattr(loop, "create_train_state", no_init)
    cfg = loop.TrainConfig(objective=Objective(ce=1), progress=False, eval_batch_size=8,
                           optim=OptimConfig(batch_size=batch_size, epochs=1), max_steps=3)
    mesh = parallel.make_mesh(jax.devices()[:devices])
    with _Compiles() as compiles, pytest.raises(resources.ResourceError) as e:
        loop.train_and_evaluate([cfg], make_split(16), {}, num_classes=NUM_CLASSES, mean=MEAN,
                                std=STD, workdirs=[tmp_path / "run"], mesh=mesh)
    assert compiles.count == 0
    assert not (tmp_path / "run" / loop.CHECKPOINTS).exists()
    return one_line(e)


def test_loop_refuses_an_absurd_batch_before_compiling(tmp_path, monkeypatch):
    msg = _refused_before_compiling(tmp_path, monkeypatch, batch_size=2**30, devices=1)
    assert msg.startswith(f"training 1 run at batch {2**30} ({2**30} per device)"), msg
    assert "--batch-size (optim.batch_size)" in msg and "--image-size" in msg, msg


def test_loop_refuses_what_the_memory_cannot_hold(tmp_path, monkeypatch):
    monkeypatch.setattr(resources, "host_memory_available", lambda: 2**16)
    msg = _refused_before_compiling(tmp_path / "host", monkeypatch, batch_size=8, devices=2)
    assert "(4 per device)" in msg and "of host memory (shared by 2 CPU devices)" in msg, msg
    monkeypatch.setattr(resources, "device_memory", lambda device: 2**16)
    msg = _refused_before_compiling(tmp_path / "dev", monkeypatch, batch_size=8, devices=1)
    assert "0.1 MiB of host memory available" in msg and "--batch-size" in msg, msg


def test_fused_runs_name_fusion_off():
    mesh = parallel.make_mesh(jax.devices()[:1])
    with pytest.raises(resources.ResourceError) as e:
        memory.check_step(tiny(), [Objective(ce=1), Objective(ce=1, jac_norm=1)], ADAM,
                             (16, 16, 3), 2**30, mesh)
    assert one_line(e).startswith("training 2 runs") and "--fusion off" in str(e.value)


# ---------------------------------------------------------------------------- defaults


def _teacher(model, shape):
    return types.SimpleNamespace(model=model, variables=models.abstract_variables(model, shape))


def _worst_distill(cfg, num_classes, **options):
    from jkt.grids import distill as grid

    shape = (cfg.data.image_size,) * 2 + (3,)
    student = models.create(cfg.student, num_classes, **cfg.student_options, **options)
    teacher = _teacher(models.create(cfg.teacher, num_classes, **cfg.teacher_options,
                                     **options), shape)
    objs = grid.objectives(cfg)
    return max(memory.step_estimate(
        student, [objs[m] for m in group], Optimizer.of(cfg.optim), shape, cfg.optim.batch_size,
        teacher=teacher, mode="unroll" if cfg.fusion == "off" else cfg.fusion,
        per_device_eval_batch=loop.TrainConfig.eval_batch_size).total
        for group in grid.method_groups(cfg, objs))


def _worst_transfer(cfg, teacher_model, num_classes, **options):
    from jkt.grids import transfer as grid

    shape = (cfg.data.image_size,) * 2 + (3,)
    student = models.create(cfg.student, num_classes, **cfg.student_options, **options,
                            source_classes=teacher_model.num_classes)
    teacher = _teacher(teacher_model, shape)
    return max(memory.step_estimate(
        student, [r.objective], Optimizer.of(cfg.optim), shape, cfg.optim.batch_size,
        teacher=teacher, per_device_eval_batch=loop.TrainConfig.eval_batch_size).total
        for r in grid.plan(cfg, student, teacher_model, shape))


def test_the_repo_presets_are_far_below_the_limit():
    """The quick presets (CPU, im2col convolutions) need under half a GiB, a TrainConfig's
    defaults under 1 GiB; the GPU presets (XLA convolutions) at most a fifth of an 80 GiB
    GPU's default limit."""
    from experiments.configs import distill, transfer

    im2col = {"conv_impl": "im2col"}
    quick = [_worst_distill(distill.quick(), 10, **im2col),
             _worst_transfer(transfer.quick(), models.create(
                 "resnet34", 5, **transfer.quick().teacher_options, **im2col), 5, **im2col)]
    assert max(quick) < 0.5 * GiB, [resources.format_bytes(q) for q in quick]
    cfg = loop.TrainConfig()
    default = memory.step_estimate(
        models.create(cfg.model, 10, **im2col), [cfg.objective], Optimizer.of(cfg.optim),
        (32, 32, 3), cfg.optim.batch_size, per_device_eval_batch=cfg.eval_batch_size).total
    assert default < GiB, resources.format_bytes(default)
    xla = {"conv_impl": "xla"}
    gpu = [_worst_distill(distill.cifar10(), 10, **xla),
           _worst_distill(distill.paper(), 100, **xla),
           _worst_transfer(transfer.cifar10(), models.create(
               "resnet34", 5, **transfer.cifar10().teacher_options, **xla), 5, **xla),
           _worst_transfer(transfer.mit(), models.create("resnet34", 1000, **xla), 67, **xla)]
    assert max(gpu) < 0.2 * 0.75 * 80 * GiB, [resources.format_bytes(g) for g in gpu]


def test_the_check_passes_the_default_config_on_this_host():
    mesh = parallel.make_mesh(jax.devices()[:1])
    cfg = loop.TrainConfig()
    est = memory.check_step(models.create(cfg.model, 10), [cfg.objective],
                               Optimizer.of(cfg.optim), (32, 32, 3), cfg.optim.batch_size,
                               mesh, eval_batch_size=cfg.eval_batch_size)
    assert est.total < GiB


def test_profiles_are_remembered_for_equal_models():
    memory.model_profile(tiny(width=6), (16, 16, 3), ADAM)
    n = len(memory._PROFILES)
    memory.model_profile(tiny(width=6), (16, 16, 3), ADAM)  # a new, equal module
    assert len(memory._PROFILES) == n


def test_archives_are_listed_not_read(tmp_path, monkeypatch):
    """Counting a zip reads its directory, not its members; a tar's headers, not data."""
    root = _folder(tmp_path / "imgs")
    z = paths.as_path(shutil.make_archive(str(tmp_path / "a"), "zip", root))
    t = paths.as_path(shutil.make_archive(str(tmp_path / "a"), "tar", root))

    def fail(*args, **kwargs):
        raise AssertionError("a member was read")

    monkeypatch.setattr(zipfile.ZipFile, "read", fail)
    monkeypatch.setattr(zipfile.ZipFile, "open", fail)
    monkeypatch.setattr(tarfile.TarFile, "extractfile", fail)
    assert resources.count_files(z, folder_lib._is_image) == 6
    assert resources.count_files(t, folder_lib._is_image) == 6
