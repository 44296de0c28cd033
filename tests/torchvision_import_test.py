"""Tests for jkt.torchvision_import.

The conversion tests run on a ResNet-34 state dict written with numpy and
``safetensors.numpy`` under torchvision's key names and layouts, so they need no PyTorch.
The parity test runs a hand-written torchvision ResNet-34 in PyTorch (torchvision itself
is not needed) and is skipped where PyTorch is missing.
"""

import subprocess
import sys

import chex
import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

from jkt import checkpoint, models, torchvision_import

try:
    import torch
except ImportError:
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed")
NUM_CLASSES = 37


def _bn(prefix: str, c: int, rng) -> dict[str, np.ndarray]:
    return {
        f"{prefix}.weight": rng.uniform(0.5, 1.5, c).astype(np.float32),
        f"{prefix}.bias": rng.normal(0.0, 0.1, c).astype(np.float32),
        f"{prefix}.running_mean": rng.normal(0.0, 0.1, c).astype(np.float32),
        f"{prefix}.running_var": rng.uniform(0.5, 1.5, c).astype(np.float32),
        f"{prefix}.num_batches_tracked": np.array(0, np.int64),
    }


def _conv(o: int, i: int, k: int, rng) -> np.ndarray:
    """A conv weight in torch's OIHW layout, He-scaled."""
    return rng.normal(0.0, np.sqrt(2.0 / (i * k * k)), (o, i, k, k)).astype(np.float32)


def numpy_resnet34_state_dict(num_classes: int = NUM_CLASSES, seed: int = 0):
    """torchvision ``resnet34().state_dict()``: its key names, order, shapes and dtypes,
    filled with random numbers (BN running statistics too)."""
    rng = np.random.default_rng(seed)
    sd = {"conv1.weight": _conv(64, 3, 7, rng), **_bn("bn1", 64, rng)}
    inplanes = 64
    for i, n in enumerate((3, 4, 6, 3)):
        planes = 64 * 2**i
        for j in range(n):
            p = f"layer{i + 1}.{j}"
            cin = inplanes if j == 0 else planes
            sd[f"{p}.conv1.weight"] = _conv(planes, cin, 3, rng)
            sd.update(_bn(f"{p}.bn1", planes, rng))
            sd[f"{p}.conv2.weight"] = _conv(planes, planes, 3, rng)
            sd.update(_bn(f"{p}.bn2", planes, rng))
            if j == 0 and (i > 0 or inplanes != planes):
                sd[f"{p}.downsample.0.weight"] = _conv(planes, inplanes, 1, rng)
                sd.update(_bn(f"{p}.downsample.1", planes, rng))
        inplanes = planes
    sd["fc.weight"] = rng.normal(0.0, 0.05, (num_classes, 512)).astype(np.float32)
    sd["fc.bias"] = rng.normal(0.0, 0.05, num_classes).astype(np.float32)
    return sd


@pytest.fixture(scope="module")
def numpy_resnet(tmp_path_factory):
    """(state dict, path of the same saved with ``safetensors.numpy``)."""
    sd = numpy_resnet34_state_dict()
    path = tmp_path_factory.mktemp("np") / "resnet34.safetensors"
    save_file(sd, str(path))
    return sd, path


@pytest.mark.slow
def test_safetensors_converts_without_torch(numpy_resnet, tmp_path):
    sd, path = numpy_resnet
    loaded = torchvision_import.load_state_dict(path)
    assert sorted(loaded) == sorted(sd)
    for k, v in sd.items():
        assert loaded[k].dtype == v.dtype, k
        np.testing.assert_array_equal(loaded[k], v)

    variables = torchvision_import.convert_resnet_state_dict(loaded)
    target = models.abstract_variables(models.create("resnet34", NUM_CLASSES), (64, 64, 3))
    assert jax.tree.map(lambda x: x.shape, variables) == jax.tree.map(lambda x: x.shape, target)
    params, stats = variables["params"], variables["batch_stats"]
    # conv OIHW -> HWIO, on an entry that a wrong transposition would move.
    kernel = params["layer1_0"]["conv1"]["kernel"]
    w = sd["layer1.0.conv1.weight"]
    assert kernel[0, 2, 5, 7] == w[7, 5, 0, 2]
    np.testing.assert_array_equal(kernel, w.transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(params["conv1"]["kernel"],
                                  sd["conv1.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(params["layer2_0"]["downsample_conv"]["kernel"],
                                  sd["layer2.0.downsample.0.weight"].transpose(2, 3, 1, 0))
    # BN: weight -> scale, running_mean/var -> batch_stats mean/var.
    np.testing.assert_array_equal(params["layer3_1"]["bn2"]["scale"], sd["layer3.1.bn2.weight"])
    np.testing.assert_array_equal(params["layer3_1"]["bn2"]["bias"], sd["layer3.1.bn2.bias"])
    np.testing.assert_array_equal(stats["layer3_1"]["bn2"]["var"],
                                  sd["layer3.1.bn2.running_var"])
    np.testing.assert_array_equal(stats["layer4_0"]["downsample_bn"]["mean"],
                                  sd["layer4.0.downsample.1.running_mean"])
    # fc (out, in) -> kernel (in, out).
    assert params["fc"]["kernel"][3, 11] == sd["fc.weight"][11, 3]
    np.testing.assert_array_equal(params["fc"]["kernel"], sd["fc.weight"].T)
    np.testing.assert_array_equal(params["fc"]["bias"], sd["fc.bias"])

    out = torchvision_import.import_resnet34(path, tmp_path / "teacher", dataset="mit67")
    teacher = checkpoint.restore_teacher(out, expect_arch="resnet34")
    assert teacher.meta.num_classes == NUM_CLASSES
    assert teacher.meta.input_size == (224, 224, 3)
    assert teacher.meta.mean == torchvision_import.IMAGENET_MEAN
    assert teacher.meta.std == torchvision_import.IMAGENET_STD
    assert teacher.meta.dataset == "mit67"
    assert "resnet34.safetensors" in teacher.meta.extra["source"]
    chex.assert_trees_all_equal(dict(teacher.variables), variables)
    x = np.random.default_rng(1).normal(size=(2, 64, 64, 3)).astype(np.float32)
    logits = np.asarray(jax.jit(teacher.apply)(x))
    assert logits.shape == (2, NUM_CLASSES) and np.all(np.isfinite(logits))


def test_safetensors_loader_needs_no_torch(numpy_resnet):
    _, path = numpy_resnet
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from jkt.torchvision_import import load_state_dict\n"
        f"sd = load_state_dict({str(path)!r})\n"
        "assert sd['fc.weight'].shape == (37, 512)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message, message
    return message


def test_key_and_shape_validation(numpy_resnet):
    sd, _ = numpy_resnet
    variables = torchvision_import.convert_resnet_state_dict(sd)
    target = models.abstract_variables(models.create("resnet34", 37), (64, 64, 3))
    assert jax.tree.map(lambda x: x.shape, variables) == jax.tree.map(lambda x: x.shape, target)
    np.testing.assert_array_equal(
        variables["params"]["layer2_0"]["downsample_conv"]["kernel"],
        sd["layer2.0.downsample.0.weight"].transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(variables["params"]["fc"]["kernel"], sd["fc.weight"].T)

    bad = {k: v for k, v in sd.items() if k != "layer3.1.bn2.running_var"}
    bad["extra.weight"] = np.zeros(3)
    with pytest.raises(ValueError, match=r"(?s)layer3\.1\.bn2\.running_var.*extra\.weight") as e:
        torchvision_import.convert_resnet_state_dict(bad)
    message = _one_line_error(e)
    assert "layer3.1.bn2.running_var (256,)" in message  # the shape it should have had
    assert "extra.weight (3,)" in message
    bad = dict(sd, **{"layer1.0.conv1.weight": np.zeros((64, 64, 5, 5), np.float32)})
    with pytest.raises(ValueError, match=r"layer1\.0\.conv1\.weight") as e:
        torchvision_import.convert_resnet_state_dict(bad)
    # Named in torch's layout: actual and expected shape.
    assert "layer1.0.conv1.weight is (64, 64, 5, 5), expected (64, 64, 3, 3)" in _one_line_error(e)
    # A tensor of the wrong rank is reported, not a transposition error.
    bad = dict(sd, **{"layer4.2.conv2.weight": np.zeros((512, 512), np.float32)})
    with pytest.raises(ValueError, match=r"layer4\.2\.conv2\.weight is \(512, 512\), expected "
                                         r"\(512, 512, 3, 3\)") as e:
        torchvision_import.convert_resnet_state_dict(bad)
    _one_line_error(e)
    bad = dict(sd, **{"fc.weight": np.zeros((37, 256), np.float32)})
    with pytest.raises(ValueError, match=r"fc\.weight is \(37, 256\), expected \(37, 512\)"):
        torchvision_import.convert_resnet_state_dict(bad)
    with pytest.raises(ValueError, match="fc.weight"):
        torchvision_import.convert_resnet_state_dict({})
    with pytest.raises(ValueError, match=r"fc\.weight.*shape \(37,\)"):
        torchvision_import.convert_resnet_state_dict(dict(sd, **{"fc.weight": np.zeros(37)}))
    # A ResNet-18 state dict: long lists are cut short, still one line.
    resnet18 = {k: v for k, v in sd.items()
                if not k.startswith(("layer1.2", "layer2.2", "layer2.3", "layer3.2", "layer3.3",
                                     "layer3.4", "layer3.5", "layer4.2"))}
    with pytest.raises(ValueError, match=r"missing keys \(\d+\): .* and \d+ more") as e:
        torchvision_import.convert_resnet_state_dict(resnet18)
    _one_line_error(e)


def test_missing_and_unsupported_files(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError):
        torchvision_import.load_state_dict(tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        torchvision_import.load_state_dict(tmp_path / "nope.safetensors")
    (tmp_path / "w.npz").write_bytes(b"")
    with pytest.raises(ValueError, match="npz"):
        torchvision_import.load_state_dict(tmp_path / "w.npz")
    (tmp_path / "dir.safetensors").mkdir()
    with pytest.raises(FileNotFoundError, match="dir.safetensors"):
        torchvision_import.load_state_dict(tmp_path / "dir.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="bad.safetensors") as e:
        torchvision_import.load_state_dict(tmp_path / "bad.safetensors")
    _one_line_error(e)
    # .pth needs torch: a clear ImportError where it is missing.
    (tmp_path / "w.pth").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match="w.pth needs PyTorch") as e:
        torchvision_import.load_state_dict(tmp_path / "w.pth")
    _one_line_error(e)


def test_existing_out_needs_overwrite(numpy_resnet, tmp_path):
    _, path = numpy_resnet
    out = tmp_path / "teacher"
    out.mkdir()
    with pytest.raises(ValueError, match="already exists.*overwrite") as e:
        torchvision_import.import_resnet34(path, out)
    _one_line_error(e)
    # The check comes first: nothing is read from a missing weights file.
    with pytest.raises(ValueError, match="already exists"):
        torchvision_import.import_resnet34(tmp_path / "nope.safetensors", out)
    torchvision_import.import_resnet34(path, out, overwrite=True)  # an empty directory
    assert checkpoint.read_teacher_meta(out).num_classes == NUM_CLASSES
    torchvision_import.import_resnet34(path, out, overwrite=True)  # a teacher artifact
    assert checkpoint.read_teacher_meta(out).num_classes == NUM_CLASSES
    with pytest.raises(ValueError, match="num_classes=10 but the fc layer has 37 outputs"):
        torchvision_import.import_resnet34(path, tmp_path / "t2", num_classes=10)


def test_overwrite_never_deletes_what_jkt_did_not_write(numpy_resnet, tmp_path, capsys):
    """``--overwrite`` on a folder of the user's files, or on a file, is refused in one line
    (exit status 2) before any weights are read, and every file is still there."""
    from experiments import import_torchvision

    _, path = numpy_resnet
    notes = tmp_path / "notes"
    (notes / "sub").mkdir(parents=True)
    (notes / "todo.txt").write_text("mine")
    (notes / "sub" / "draft.md").write_text("mine too")
    (tmp_path / "file").write_text("a file")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for out, words in ((notes, "holds sub, todo.txt, not a teacher artifact"),
                       (tmp_path / "file", "is a file, not a teacher artifact")):
        with pytest.raises(ValueError) as e:
            torchvision_import.import_resnet34(tmp_path / "nope.safetensors", out,
                                               overwrite=True)
        assert words in _one_line_error(e)
        with pytest.raises(SystemExit) as e:
            import_torchvision.main(["--weights", str(path), "--out", str(out),
                                     "--overwrite"])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert (notes / "todo.txt").read_text() == "mine"


def test_cli(numpy_resnet, tmp_path):
    _, path = numpy_resnet
    result = subprocess.run(
        [sys.executable, "-m", "experiments.import_torchvision",
         "--weights", str(path), "--out", str(tmp_path / "t")],
        check=True, capture_output=True, text=True,
    )
    assert str(tmp_path / "t") in result.stdout
    assert "21,303,653 parameters" in result.stdout  # ResNet-34 with a 37-way fc.


# PyTorch parity: a hand-written torchvision ResNet-34 in PyTorch.

if torch is not None:
    nn = torch.nn

    class BasicBlock(nn.Module):
        def __init__(self, inplanes, planes, stride=1):
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.downsample = None
            if stride != 1 or inplanes != planes:
                self.downsample = nn.Sequential(
                    nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
                )

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return self.relu(out + identity)

    class TorchResNet(nn.Module):
        """torchvision.models.resnet34's structure and attribute names."""

        def __init__(self, layers=(3, 4, 6, 3), num_classes=1000):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            inplanes = 64
            for i, n in enumerate(layers):
                planes = 64 * 2**i
                blocks = [BasicBlock(inplanes, planes, 1 if i == 0 else 2)]
                blocks += [BasicBlock(planes, planes) for _ in range(n - 1)]
                setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
                inplanes = planes
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(512, num_classes)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))


@pytest.fixture(scope="module")
def torch_resnet(tmp_path_factory):
    """Randomly initialised ResNet-34 (BN running stats too) saved as .pth and .safetensors."""
    if torch is None:
        pytest.skip("PyTorch is not installed")
    torch.manual_seed(0)
    net = TorchResNet(num_classes=37)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    net.eval()
    d = tmp_path_factory.mktemp("tv")
    torch.save(net.state_dict(), d / "resnet34.pth")
    from safetensors.torch import save_file as torch_save_file

    torch_save_file({k: v.contiguous() for k, v in net.state_dict().items()},
                    str(d / "resnet34.safetensors"))
    return net, d


def _rel_err(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@needs_torch
def test_numpy_fixture_matches_torch_layout(torch_resnet):
    net, _ = torch_resnet
    torch_sd = net.state_dict()
    sd = numpy_resnet34_state_dict()
    assert list(sd) == list(torch_sd)
    for k, v in torch_sd.items():
        assert sd[k].shape == tuple(v.shape), k
        assert str(sd[k].dtype) == str(v.dtype).removeprefix("torch."), k


@needs_torch
def test_pth_and_safetensors_load_identically(torch_resnet):
    _, d = torch_resnet
    a = torchvision_import.load_state_dict(d / "resnet34.pth")
    b = torchvision_import.load_state_dict(d / "resnet34.safetensors")
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


@needs_torch
def test_logits_match_torch(torch_resnet, tmp_path):
    net, d = torch_resnet
    out = torchvision_import.import_resnet34(d / "resnet34.pth", tmp_path / "teacher")
    teacher = checkpoint.restore_teacher(out, expect_arch="resnet34")
    assert teacher.meta.num_classes == 37
    assert teacher.meta.input_size == (224, 224, 3)
    assert teacher.meta.mean == torchvision_import.IMAGENET_MEAN
    x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    logits = np.asarray(jax.jit(teacher.apply)(x))
    assert np.std(expected) > 1e-3  # non-degenerate logits
    assert _rel_err(logits, expected) < 1e-4, _rel_err(logits, expected)


@needs_torch
def test_pth_that_is_not_a_state_dict(tmp_path):
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="does not hold a state dict"):
        torchvision_import.load_state_dict(tmp_path / "list.pth")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.pth") as e:
        torchvision_import.load_state_dict(tmp_path / "junk.pth")
    assert "\n" not in str(e.value)


class _Payload:
    """Unpickling this would run a shell command."""

    def __reduce__(self):
        import os

        return (os.system, ("echo ran > /dev/null",))


@needs_torch
def test_pickled_code_is_refused_without_advice_to_run_it(tmp_path):
    """A .pth that holds more than tensors (here, a call of ``os.system``) is refused in one
    line naming what was refused; the message never suggests ``weights_only=False``."""
    torch.save({"fc.weight": torch.zeros(2), "x": _Payload()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError) as e:
        torchvision_import.load_state_dict(tmp_path / "evil.pth")
    message = _one_line_error(e)
    assert "evil.pth holds pickled objects other than tensors" in message
    assert "system" in message  # what the unpickler refused
    assert "weights_only" not in message and "Re-running" not in message


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    from experiments import import_torchvision

    for argv, words in ((["--weights", str(tmp_path / "nope.safetensors")], "No weights file"),
                        (["--weights", str(tmp_path / "w.bin")], "Unsupported weights format")):
        with pytest.raises(SystemExit) as e:
            import_torchvision.main([*argv, "--out", str(tmp_path / "out")])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and words in err[0]
