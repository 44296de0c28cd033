"""PyTorch eager reference of the benchmarked models and losses (optional; needs ``torch``).

``experiments.bench`` passes this module to ``jkt.bench`` (``jkt.bench.torch_runner``
lists the API it uses); ``jkt`` itself never imports torch. It is the kind of code the
paper's experiments were written in: eager PyTorch, NCHW, input Jacobians by double
backprop (``torch.autograd.grad(selected_output.sum(), x, create_graph=True)``), the full
Jacobian by a loop over the K outputs. Layer configuration, BatchNorm settings, losses
and the pad-4 crop + flip augmentation follow ``jkt`` exactly, so that ``jkt``/torch
timings compare the same computation; :func:`load_flax_variables` copies a ``jkt`` VGG's
variables into :class:`TorchVGG` so that the two can be checked to compute the same
loss values (``tests/bench_torch_test.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from jkt.jacobian import pooling_window
from jkt.models.vgg import VGG4_CONFIG, VGG9_CONFIG, scale_width
from jkt.train import Objective

CONFIGS = {"vgg4": VGG4_CONFIG, "vgg9": VGG9_CONFIG}


class TorchVGG(nn.Module):
    """``jkt.models.VGG`` in PyTorch: 3x3 conv (no bias) + BN + ReLU blocks, 2x2 max-pools,
    global average pooling, one Linear. ``forward`` returns logits ``(B, K)`` and the
    ``pool<i>`` features (NCHW)."""

    def __init__(self, config: Sequence[int | str], num_classes: int,
                 width_multiplier: float = 1.0, conv_bias: bool = False):
        super().__init__()
        self.config = tuple(config)
        convs, bns = [], []
        c_in = 3
        for item in self.config:
            if item == "M":
                continue
            c_out = scale_width(item, width_multiplier)
            convs.append(nn.Conv2d(c_in, c_out, 3, padding=1, bias=conv_bias))
            bns.append(nn.BatchNorm2d(c_out, eps=1e-5, momentum=0.1))
            c_in = c_out
        self.convs, self.bns = nn.ModuleList(convs), nn.ModuleList(bns)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x):
        feats = {}
        i = p = 0
        for item in self.config:
            if item == "M":
                p += 1
                x = F.max_pool2d(x, 2, 2)
                feats[f"pool{p}"] = x
                continue
            x = F.relu(self.bns[i](self.convs[i](x)))
            i += 1
        return self.fc(x.mean(dim=(2, 3))), feats


def create(name: str, num_classes: int, width_multiplier: float = 1.0) -> TorchVGG:
    return TorchVGG(CONFIGS[name], num_classes, width_multiplier)


def load_flax_variables(model: TorchVGG, variables) -> TorchVGG:
    """Copies ``jkt`` VGG variables (``{"params", "batch_stats"}``) into ``model`` in place.

    conv ``kernel`` HWIO -> ``weight`` OIHW; BN ``scale``/``bias``/``mean``/``var`` ->
    ``weight``/``bias``/``running_mean``/``running_var``; Dense ``kernel`` ``(in, out)``
    -> Linear ``weight`` ``(out, in)``.
    """
    params = variables["params"]
    stats = variables.get("batch_stats", {})

    def t(a):
        return torch.from_numpy(np.array(a, dtype=np.float32))

    with torch.no_grad():
        for i, (conv, bn) in enumerate(zip(model.convs, model.bns, strict=True), start=1):
            conv.weight.copy_(t(params[f"conv{i}"]["kernel"]).permute(3, 2, 0, 1))
            if conv.bias is not None:
                conv.bias.copy_(t(params[f"conv{i}"]["bias"]))
            bn.weight.copy_(t(params[f"bn{i}"]["scale"]))
            bn.bias.copy_(t(params[f"bn{i}"]["bias"]))
            if f"bn{i}" in stats:
                bn.running_mean.copy_(t(stats[f"bn{i}"]["mean"]))
                bn.running_var.copy_(t(stats[f"bn{i}"]["var"]))
        model.fc.weight.copy_(t(params["fc"]["kernel"]).T)
        model.fc.bias.copy_(t(params["fc"]["bias"]))
    return model


def supported(objective: Objective) -> Objective:
    """``objective`` itself, after checking the reference implements all of it."""
    if objective.att_variant != "paper":
        raise ValueError("the torch reference implements only the paper's attention loss")
    return objective


def augment(images: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Pad-``pad`` random crop + horizontal flip per example on NHWC images (any dtype)."""
    b, h, w, _ = images.shape
    dev = images.device
    padded = F.pad(images, (0, 0, pad, pad, pad, pad))
    off = torch.randint(0, 2 * pad + 1, (b, 2), device=dev)
    rows = off[:, :1] + torch.arange(h, device=dev)  # (B, H)
    cols = off[:, 1:] + torch.arange(w, device=dev)  # (B, W)
    out = padded[torch.arange(b, device=dev)[:, None, None], rows[:, :, None], cols[:, None, :]]
    flip = torch.rand(b, 1, 1, 1, device=dev) < 0.5
    return torch.where(flip, out.flip(2), out)


def normalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 NHWC -> float32 NCHW ``(x / 255 - mean) / std``."""
    dev = images.device
    m = torch.tensor(mean, dtype=torch.float32, device=dev)
    s = torch.tensor(std, dtype=torch.float32, device=dev)
    return ((images.float() / 255.0 - m) / s).permute(0, 3, 1, 2).contiguous()


def _sum_non_batch(x):
    return x.flatten(1).sum(1)


def _unit(x):
    n = x.flatten(1).norm(dim=1).clamp_min(1e-30)
    return x / n.view(-1, *([1] * (x.ndim - 1)))


def _match(s, t, normalize_):
    if normalize_:
        s, t = _unit(s), _unit(t)
    return _sum_non_batch((t - s) ** 2)


def _attention(f):
    return (f ** 2).sum(1)  # NCHW -> (B, H, W)


def _pooled_attention(f, fraction):
    a = _attention(f)
    kh, kw = pooling_window(tuple(a.shape[1:]), fraction)
    return F.avg_pool2d(a[:, None], (kh, kw), stride=1)[:, 0]


def _grad(y, x, create_graph):
    return torch.autograd.grad(y, x, create_graph=create_graph, retain_graph=True)[0]


def _jvp_by_double_backward(y, x, u, create_graph):
    """``J u`` of ``y(x)`` from two reverse passes (``v -> Jᵀv`` is linear in ``v``)."""
    v = torch.zeros_like(y, requires_grad=True)
    g = torch.autograd.grad(y, x, v, create_graph=True)[0]
    return torch.autograd.grad(g, v, u, create_graph=create_graph, retain_graph=True)[0]


def compute_losses(objective: Objective, student: nn.Module, teacher: nn.Module | None,
                   x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """``(total, terms)`` for normalised NCHW inputs ``x``: the ``jkt`` composer's maths.

    The student runs in its current mode (training mode in a train step), the teacher in
    eval mode with frozen parameters. Terms are batch means, unweighted.
    """
    o = objective
    need_s_grad = o.jac > 0 or o.jac_norm > 0 or o.att_jac > 0
    need_t_grad = o.jac > 0 or o.att_jac > 0
    x_s = x.detach().requires_grad_(need_s_grad)
    s_logits, s_feats = student(x_s)
    t_logits = t_feats = None
    if o.needs_teacher:
        x_t = x.detach().requires_grad_(need_t_grad)
        with torch.set_grad_enabled(need_t_grad):
            t_logits, t_feats = teacher(x_t)
    terms = {}
    if o.ce > 0:
        terms["ce"] = F.cross_entropy(s_logits, labels)
    if o.act > 0:
        terms["act"] = _sum_non_batch((t_logits.detach() - s_logits) ** 2).mean()
    if o.jac > 0 or o.jac_norm > 0:
        ref = (t_logits if t_logits is not None else s_logits).detach()
        k = ref.shape[1]
        t_jac = None
        if o.estimator == "full":
            s_rows, t_rows = [], []
            for i in range(k):
                s_rows.append(_grad(s_logits[:, i].sum(), x_s, True))
                if o.jac > 0:
                    t_rows.append(_grad(t_logits[:, i].sum(), x_t, False))
            s_jac = torch.stack(s_rows, 1)
            t_jac = torch.stack(t_rows, 1) if o.jac > 0 else None
        elif o.estimator == "jvp":
            u = torch.randn_like(x)
            s_jac = _jvp_by_double_backward(s_logits, x_s, u, True)
            if o.jac > 0:
                t_jac = _jvp_by_double_backward(t_logits, x_t, u, False)
        else:
            if o.estimator == "label":
                v = F.one_hot(labels, k).to(ref.dtype)
            elif o.estimator == "top":
                v = F.one_hot(ref.argmax(1), k).to(ref.dtype)
            elif o.estimator == "random":
                v = torch.randn_like(ref)
            elif o.estimator == "rademacher":
                v = torch.randint(0, 2, ref.shape, device=ref.device).to(ref.dtype) * 2 - 1
            else:
                raise ValueError(f"unknown estimator {o.estimator!r}")
            s_jac = _grad((s_logits * v).sum(), x_s, True)
            if o.jac > 0:
                t_jac = _grad((t_logits * v).sum(), x_t, False)
        if o.jac > 0:
            terms["jac"] = _match(s_jac, t_jac.detach(), o.normalize).mean()
        if o.jac_norm > 0:
            terms["jac_norm"] = _sum_non_batch(s_jac ** 2).mean()
    if o.att > 0:
        att = 0.0
        for s_name, t_name in o.att_pairs:
            a_s = _unit(_attention(s_feats[s_name]).flatten(1))
            a_t = _unit(_attention(t_feats[t_name]).flatten(1).detach())
            att = att + (a_s - a_t).norm(dim=1).mean()
        terms["att"] = att
    if o.att_jac > 0:
        s_name, t_name = o.att_jac_pair
        t_pooled = _pooled_attention(t_feats[t_name], o.pool_fraction)
        flat = t_pooled.detach().flatten(1)
        pixel = F.one_hot(flat.argmax(1), flat.shape[1]).to(flat.dtype).view_as(t_pooled)
        t_g = _grad((t_pooled * pixel).sum(), x_t, False).detach()
        s_pooled = _pooled_attention(s_feats[s_name], o.pool_fraction)
        s_g = _grad((s_pooled * pixel).sum(), x_s, True)
        terms["att_jac"] = _match(s_g, t_g, True).mean()
    total = sum(getattr(o, name) * value for name, value in terms.items())
    return total, terms


def make_train_step(student: nn.Module, teacher: nn.Module | None, objective: Objective,
                    optimizer: torch.optim.Optimizer, *, mean, std, augment_images: bool = True):
    """``step(images_uint8_nhwc, labels) -> total loss`` (a tensor; no host sync)."""
    if objective.needs_teacher and teacher is None:
        raise ValueError("the objective matches a teacher, but no teacher was given")
    student.train()
    if teacher is not None:
        teacher.eval()
        teacher.requires_grad_(False)

    def step(images, labels):
        if augment_images:
            images = augment(images)
        x = normalize(images, mean, std)
        total, _ = compute_losses(objective, student, teacher, x, labels)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        return total.detach()

    return step
