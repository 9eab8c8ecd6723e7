"""Optimizers, LR schedules, ResNet backbones and MLP heads."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from selfsup.errors import ConfigError
from selfsup.nets.heads import (
    barlow_projector,
    byol_predictor,
    byol_projector,
    mlp_head,
    simclr_projector,
    vicreg_projector,
)
from selfsup.nets.resnet import resnet_backbone
from selfsup.optim import LARS, OptimConfig, build_optimizer, build_scheduler

# ----------------------------------------------------------------------------------- LARS


def _norm(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


def test_lars_two_steps_match_hand_computation() -> None:
    w0 = [1.0, -2.0, 0.5, 3.0]
    b0 = [0.3, -0.1]
    gw = [[0.2, 0.1, -0.4, 0.3], [-0.1, 0.5, 0.2, 0.0]]  # gradients at steps 1 and 2
    gb = [[1.0, -2.0], [0.5, 0.5]]
    lr, mu, wd, eta = 0.5, 0.9, 0.1, 0.02
    w = torch.nn.Parameter(torch.tensor(w0, dtype=torch.float64).reshape(2, 2))
    b = torch.nn.Parameter(torch.tensor(b0, dtype=torch.float64))
    opt = LARS(
        [{"params": [w]}, {"params": [b], "lars_exclude": True}],
        lr=lr,
        momentum=mu,
        weight_decay=wd,
        eta=eta,
    )
    # hand computation with Python floats
    ww, bb = list(w0), list(b0)
    mw, mb = [0.0] * 4, [0.0] * 2
    for step in range(2):
        w.grad = torch.tensor(gw[step], dtype=torch.float64).reshape(2, 2)
        b.grad = torch.tensor(gb[step], dtype=torch.float64)
        opt.step()
        u = [g + wd * x for g, x in zip(gw[step], ww, strict=True)]
        q = eta * _norm(ww) / _norm(u)
        mw = [mu * m + q * ui for m, ui in zip(mw, u, strict=True)]
        ww = [x - lr * m for x, m in zip(ww, mw, strict=True)]
        mb = [mu * m + g for m, g in zip(mb, gb[step], strict=True)]  # excluded: no wd, no q
        bb = [x - lr * m for x, m in zip(bb, mb, strict=True)]
        torch.testing.assert_close(w.detach().flatten(), torch.tensor(ww, dtype=torch.float64))
        torch.testing.assert_close(b.detach(), torch.tensor(bb, dtype=torch.float64))


def test_lars_nesterov_and_zero_weight() -> None:
    lr, mu, eta = 0.1, 0.5, 0.01
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0], dtype=torch.float64))
    z = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))  # ||w|| = 0 -> trust ratio 1
    opt = LARS([w, z], lr=lr, momentum=mu, eta=eta, nesterov=True)
    g = torch.tensor([1.0, 0.0], dtype=torch.float64)
    w.grad, z.grad = g.clone(), g.clone()
    opt.step()
    q = eta * 5.0 / 1.0
    # first step: m = u; nesterov update = u + mu * m = (1 + mu) * u
    torch.testing.assert_close(
        w.detach(), torch.tensor([3.0, 4.0]).double() - lr * (1 + mu) * q * g
    )
    torch.testing.assert_close(z.detach(), -lr * (1 + mu) * g)


# ------------------------------------------------------------------------- build_optimizer


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2, bias=False))


def test_param_groups_and_lr_scaling() -> None:
    model = _model()
    model[0].bias.requires_grad_(False)
    cfg = OptimConfig(name="lars", lr=0.2, weight_decay=1e-4, scale_lr_by_batch=True)
    opt = build_optimizer(model, cfg, batch_size=512)
    assert isinstance(opt, LARS)
    decay, no_decay = opt.param_groups
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[2].weight)}
    assert {id(p) for p in no_decay["params"]} == {id(model[1].weight), id(model[1].bias)}
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    assert no_decay["lars_exclude"] and not decay["lars_exclude"]
    assert decay["lr"] == pytest.approx(0.2 * 512 / 256)

    cfg = OptimConfig(name="sgd", lr=0.2, weight_decay=1e-4, exclude_bias_and_norm=False)
    opt = build_optimizer(model, cfg, batch_size=512)
    assert isinstance(opt, torch.optim.SGD) and len(opt.param_groups) == 1
    assert opt.param_groups[0]["lr"] == 0.2 and len(opt.param_groups[0]["params"]) == 4


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd", "lars"])
@pytest.mark.parametrize("fused", [False, True])
def test_all_optimizers_step(name: str, fused: bool) -> None:
    model = _model()
    cfg = OptimConfig(name=name, lr=0.01, weight_decay=1e-3, fused=fused)
    opt = build_optimizer(model, cfg, batch_size=32)
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.randn(8, 3)).pow(2).sum().backward()
    opt.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_adam_options_forwarded() -> None:
    cfg = OptimConfig(name="adamw", lr=3e-4, betas=[0.8, 0.95], eps=1e-6, weight_decay=0.05)
    opt = build_optimizer(_model(), cfg, batch_size=64)
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.param_groups[0]["betas"] == (0.8, 0.95) and opt.param_groups[0]["eps"] == 1e-6


# ------------------------------------------------------------------------------ schedules


def _lrs(cfg: OptimConfig, steps_per_epoch: int, epochs: int) -> list[float]:
    model = _model()
    opt = build_optimizer(model, cfg, batch_size=256)
    sched = build_scheduler(opt, cfg, steps_per_epoch, epochs)
    out = []
    for _ in range(steps_per_epoch * epochs + 1):
        out.append(opt.param_groups[0]["lr"])
        assert all(g["lr"] == opt.param_groups[0]["lr"] for g in opt.param_groups)
        opt.step()
        sched.step()
    return out


def test_warmup_cosine_key_steps() -> None:
    base, min_lr = 0.4, 0.004
    cfg = OptimConfig(name="sgd", lr=base, schedule="warmup_cosine", warmup_epochs=2, min_lr=min_lr)
    lrs = _lrs(cfg, steps_per_epoch=5, epochs=10)  # warm-up 10 steps, total 50
    assert lrs[0] == pytest.approx(0.0, abs=1e-12)
    assert lrs[5] == pytest.approx(base * 5 / 10)
    assert lrs[10] == pytest.approx(base)
    assert lrs[30] == pytest.approx(min_lr + (base - min_lr) * 0.5)  # middle of the cosine
    k = 17
    want = min_lr + (base - min_lr) * 0.5 * (1 + math.cos(math.pi * (k - 10) / 40))
    assert lrs[k] == pytest.approx(want)
    assert lrs[50] == pytest.approx(min_lr)


def test_warmup_constant_and_start_factor() -> None:
    cfg = OptimConfig(
        name="adam",
        lr=0.01,
        schedule="warmup_constant",
        warmup_epochs=1.5,
        warmup_start_factor=0.2,
    )
    lrs = _lrs(cfg, steps_per_epoch=4, epochs=3)  # warm-up round(6) steps
    assert lrs[0] == pytest.approx(0.002)
    assert lrs[3] == pytest.approx(0.01 * (0.2 + 0.8 * 3 / 6))
    assert lrs[6] == pytest.approx(0.01) and lrs[12] == pytest.approx(0.01)


def test_constant_schedule() -> None:
    lrs = _lrs(OptimConfig(name="sgd", lr=0.05), steps_per_epoch=3, epochs=2)
    assert lrs == pytest.approx([0.05] * 7)


# --------------------------------------------------------------------------------- config

BAD = [
    {"name": "rmsprop"},
    {"lr": 0.0},
    {"lr": float("nan")},
    {"weight_decay": -1.0},
    {"momentum": 1.0},
    {"nesterov": True, "name": "adam"},
    {"betas": [0.9]},
    {"betas": [0.9, 1.0]},
    {"eps": 0.0},
    {"lars_eta": 0.0},
    {"schedule": "step"},
    {"warmup_epochs": -1.0, "schedule": "warmup_cosine"},
    {"warmup_epochs": 1.0, "schedule": "constant"},
    {"min_lr": -0.1},
    {"warmup_start_factor": 1.5},
]


@pytest.mark.parametrize("fields", BAD)
def test_bad_config_rejected(fields: dict) -> None:
    cfg = OptimConfig(**fields)
    with pytest.raises(ConfigError):
        cfg.validate()
    with pytest.raises(ConfigError):
        build_optimizer(_model(), cfg, batch_size=8)


def test_bad_scheduler_and_batch_arguments() -> None:
    cfg = OptimConfig(name="sgd", schedule="warmup_cosine", warmup_epochs=5)
    opt = build_optimizer(_model(), cfg, batch_size=8)
    with pytest.raises(ConfigError):
        build_scheduler(opt, cfg, steps_per_epoch=10, epochs=2)  # warm-up longer than training
    with pytest.raises(ConfigError):
        build_scheduler(opt, cfg, steps_per_epoch=0, epochs=10)
    with pytest.raises(ConfigError):
        build_optimizer(_model(), OptimConfig(scale_lr_by_batch=True), batch_size=0)
    frozen = _model().requires_grad_(False)
    with pytest.raises(ConfigError):
        build_optimizer(frozen, OptimConfig(), batch_size=8)


def test_optim_config_is_omegaconf_structured() -> None:
    base = OmegaConf.structured(OptimConfig)
    merged = OmegaConf.merge(base, {"name": "lars", "betas": [0.5, 0.6], "warmup_epochs": 2})
    cfg = OmegaConf.to_object(merged)
    assert isinstance(cfg, OptimConfig) and cfg.betas == [0.5, 0.6] and cfg.name == "lars"
    assert dataclasses.asdict(OptimConfig())["betas"] == [0.9, 0.999]


# ------------------------------------------------------------------------ backbones/heads


@pytest.mark.parametrize(
    ("name", "stem", "shape", "dim"),
    [
        ("resnet18", "cifar", (2, 1, 28, 28), 512),
        ("resnet18", "cifar", (2, 3, 32, 32), 512),
        ("resnet34", "stl", (2, 3, 96, 96), 512),
        ("resnet50", "cifar", (2, 3, 32, 32), 2048),
        ("resnet18", "imagenet", (2, 1, 28, 28), 512),
        ("resnet18", "stl", (2, 3, 96, 96), 512),
    ],
)
def test_resnet_backbone_shapes(name: str, stem: str, shape: tuple, dim: int) -> None:
    net, feat_dim = resnet_backbone(name, stem=stem, in_channels=shape[1])
    assert feat_dim == dim
    net.eval()
    with torch.no_grad():
        out = net(torch.randn(*shape))
    assert out.shape == (shape[0], dim)


def test_resnet_stems() -> None:
    net, _ = resnet_backbone("resnet18", stem="cifar", in_channels=1)
    conv = net.conv1
    assert (conv.kernel_size, conv.stride, conv.padding, conv.in_channels) == (
        (3, 3),
        (1, 1),
        (1, 1),
        1,
    )
    assert conv.bias is None and isinstance(net.maxpool, nn.Identity)
    net, _ = resnet_backbone("resnet18", stem="stl")
    assert (net.conv1.kernel_size, net.conv1.stride, net.conv1.padding) == ((7, 7), (2, 2), (3, 3))
    assert isinstance(net.maxpool, nn.Identity)
    net, _ = resnet_backbone("resnet18", stem="imagenet")
    assert isinstance(net.maxpool, nn.MaxPool2d) and isinstance(net.fc, nn.Identity)
    with pytest.raises(ConfigError):
        resnet_backbone("resnet101")
    with pytest.raises(ConfigError):
        resnet_backbone("resnet18", stem="tiny")
    with pytest.raises(ConfigError):
        resnet_backbone("resnet18", in_channels=0)


def test_heads() -> None:
    x = torch.randn(4, 16)
    head = mlp_head(16, [32, 8], 5, last_bn=True, last_bias=False)
    kinds = [type(m) for m in head]
    assert kinds == [
        nn.Linear,
        nn.BatchNorm1d,
        nn.ReLU,
        nn.Linear,
        nn.BatchNorm1d,
        nn.ReLU,
        nn.Linear,
        nn.BatchNorm1d,
    ]
    assert head[6].bias is None and not head[7].affine
    assert head(x).shape == (4, 5)
    assert len(mlp_head(16, [], 3)) == 1
    assert vicreg_projector(16, [32, 32, 24])(x).shape == (4, 24)
    assert vicreg_projector(16)(x).shape == (4, 1024)
    assert barlow_projector(16, [64, 40])(x).shape == (4, 40)
    proj = byol_projector(16, hidden=64, out=12)
    assert proj(x).shape == (4, 12) and proj[0].out_features == 64
    assert byol_predictor(12, hidden=20)(proj(x)).shape == (4, 12)
    assert byol_projector(16)(x).shape == (4, 256) and byol_predictor()[0].out_features == 4096
    assert simclr_projector(16)(x).shape == (4, 128)
    with pytest.raises(ConfigError):
        mlp_head(16, [0], 4)
    with pytest.raises(ConfigError):
        vicreg_projector(16, [])
