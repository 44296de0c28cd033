"""Tests for jkt.torchvision_import: a hand-written torchvision ResNet-34 gives the same
logits after conversion (torchvision itself is not needed)."""

import subprocess
import sys

import jax
import numpy as np
import pytest

from jkt import checkpoint, models, torchvision_import

torch = pytest.importorskip("torch")
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
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in net.state_dict().items()},
              str(d / "resnet34.safetensors"))
    return net, d


def _rel_err(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_pth_and_safetensors_load_identically(torch_resnet):
    _, d = torch_resnet
    a = torchvision_import.load_state_dict(d / "resnet34.pth")
    b = torchvision_import.load_state_dict(d / "resnet34.safetensors")
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


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


def test_safetensors_loader_needs_no_torch(torch_resnet):
    _, d = torch_resnet
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from jkt.torchvision_import import load_state_dict\n"
        f"sd = load_state_dict({str(d / 'resnet34.safetensors')!r})\n"
        "assert sd['fc.weight'].shape == (37, 512)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_key_and_shape_validation(torch_resnet):
    net, _ = torch_resnet
    sd = {k: v.numpy() for k, v in net.state_dict().items()}
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
    with pytest.raises(ValueError, match=r"(?s)layer3\.1\.bn2\.running_var.*extra\.weight"):
        torchvision_import.convert_resnet_state_dict(bad)
    bad = dict(sd, **{"layer1.0.conv1.weight": np.zeros((64, 64, 5, 5), np.float32)})
    with pytest.raises(ValueError, match=r"layer1\.0\.conv1\.weight"):
        torchvision_import.convert_resnet_state_dict(bad)
    with pytest.raises(ValueError, match="fc.weight"):
        torchvision_import.convert_resnet_state_dict({})


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        torchvision_import.load_state_dict(tmp_path / "nope.pth")
    (tmp_path / "w.npz").write_bytes(b"")
    with pytest.raises(ValueError, match="npz"):
        torchvision_import.load_state_dict(tmp_path / "w.npz")


def test_cli(torch_resnet, tmp_path):
    _, d = torch_resnet
    result = subprocess.run(
        [sys.executable, "-m", "experiments.import_torchvision",
         "--weights", str(d / "resnet34.safetensors"), "--out", str(tmp_path / "t")],
        check=True, capture_output=True, text=True,
    )
    assert str(tmp_path / "t") in result.stdout
    assert "21,303,653 parameters" in result.stdout  # ResNet-34 with a 37-way fc.
