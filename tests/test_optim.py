"""Optimizers, LR schedules, ResNet backbones and MLP heads."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from selfsup.errors import ConfigError
from selfsup.nets.heads import mlp_head
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


def _vicreg_lars_reference(params: list[torch.Tensor], grads: list[list[torch.Tensor]],
                           lr: float, wd: float, mu: float, eta: float) -> list[torch.Tensor]:
    """The LARS of VICReg's released code (facebookresearch/vicreg, main_vicreg.py, class LARS,
    with ``exclude_bias_and_norm`` = ``p.ndim == 1`` as both filters), written out per parameter:
    ``dp = g + wd p`` (not for 1-d p); ``q = eta ||p|| / ||dp||`` (1 if a norm is 0; not for 1-d
    p); ``mu_buf = mu mu_buf + q dp``; ``p -= lr mu_buf``."""
    ps = [p.clone() for p in params]
    bufs = [torch.zeros_like(p) for p in ps]
    for step_grads in grads:
        for i, (p, g) in enumerate(zip(ps, step_grads, strict=True)):
            dp = g if p.ndim == 1 else g + wd * p
            if p.ndim > 1:
                pn, un = float(p.norm()), float(dp.norm())
                dp = dp * (eta * pn / un if pn > 0 and un > 0 else 1.0)
            bufs[i] = mu * bufs[i] + dp
            ps[i] = p - lr * bufs[i]
    return ps


def test_lars_matches_vicreg_released_lars_on_a_network() -> None:
    """build_optimizer's LARS (foreach, two parameter groups) against the per-parameter loop of
    VICReg's released LARS, five steps of a real network's gradients."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).double()
    cfg = OptimConfig(name="lars", lr=0.3, weight_decay=1e-2, momentum=0.9, lars_eta=0.02)
    opt = build_optimizer(model, cfg, batch_size=256)
    start = [p.detach().clone() for p in model.parameters()]
    grads = []
    for _ in range(5):
        opt.zero_grad()
        x = torch.randn(16, 6, dtype=torch.float64)
        model(x).pow(2).mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        opt.step()
    # the reference replays the recorded gradients: any difference in an update shows up in the
    # weights it ends with
    want = _vicreg_lars_reference(start, grads, lr=0.3, wd=1e-2, mu=0.9, eta=0.02)
    for got, ref in zip(model.parameters(), want, strict=True):
        torch.testing.assert_close(got.detach(), ref, rtol=1e-12, atol=1e-12)


def test_lars_matches_lightly_where_the_two_definitions_agree() -> None:
    """lightly's LARS (from Lightning Bolts) uses the trust ratio ``eta ||w|| / (||g|| + wd ||w||)``
    where ours (VICReg, Barlow Twins) uses ``eta ||w|| / ||g + wd w||``; the two agree when the
    gradient points along w, as for the loss ``c ||w||^2 / 2`` (g = c w), and for excluded
    parameters (plain momentum SGD: lightly excludes the groups with weight decay 0)."""
    lightly_lars = pytest.importorskip("lightly.utils.lars").LARS
    torch.manual_seed(0)
    w0, b0 = torch.randn(4, 3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    ours_w, ours_b = nn.Parameter(w0.clone()), nn.Parameter(b0.clone())
    ref_w, ref_b = nn.Parameter(w0.clone()), nn.Parameter(b0.clone())
    kw = {"lr": 0.5, "momentum": 0.9}
    ours = LARS([{"params": [ours_w], "weight_decay": 0.1},
                 {"params": [ours_b], "weight_decay": 0.0, "lars_exclude": True}], eta=0.02, **kw)
    ref = lightly_lars([{"params": [ref_w], "weight_decay": 0.1},
                        {"params": [ref_b], "weight_decay": 0.0}], trust_coefficient=0.02,
                       eps=0.0, **kw)
    for step in range(4):
        for opt, w, b in ((ours, ours_w, ours_b), (ref, ref_w, ref_b)):
            opt.zero_grad()
            (1.5 * w.pow(2).sum() / 2 + (b * torch.linspace(-1, 1, 3)).sum() * step).backward()
            opt.step()
        torch.testing.assert_close(ours_w.detach(), ref_w.detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ours_b.detach(), ref_b.detach(), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(ours_w.detach(), w0)  # it moved


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


def test_schedule_follows_total_steps_when_max_steps_stops_earlier() -> None:
    """T = max_steps shortens the whole schedule: the warm-up keeps its share of training and
    the cosine ends at step T (solo-learn's warmup_epochs * stepping batches / max_epochs)."""
    base = 0.4
    cfg = OptimConfig(name="sgd", lr=base, schedule="warmup_cosine", warmup_epochs=1)
    opt = build_optimizer(_model(), cfg, batch_size=256)
    sched = build_scheduler(opt, cfg, steps_per_epoch=22, epochs=10, total_steps=22)
    lrs = []
    for _ in range(22):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    warmup = round(1 * 22 / 10)  # 2 of the 22 steps, as 1 of 10 epochs
    assert lrs[1] == pytest.approx(base * 1 / warmup)
    assert lrs[warmup] == pytest.approx(base)
    assert lrs[21] == pytest.approx(base * 0.5 * (1 + math.cos(math.pi * 19 / 20)))
    with pytest.raises(ConfigError, match="max_steps"):
        build_scheduler(opt, cfg, steps_per_epoch=22, epochs=10, total_steps=0)


def test_training_with_max_steps_ends_at_the_end_of_the_cosine(tmp_path) -> None:
    """Regression (issue 17): 10 epochs, trainer.max_steps 22 and one warm-up epoch. The LR
    schedule counted 10 x 22 steps and ignored max_steps, so the last step ran at the warm-up
    peak; it now ends where BYOL's momentum ends, at T = Method.total_steps() = 22."""
    from lightning.pytorch.callbacks import Callback

    from selfsup import engine, pipelines
    from selfsup.methods import method_class

    class RecordLR(Callback):
        lrs: list[float] = []

        def on_train_batch_start(self, trainer, *args) -> None:  # noqa: ANN001
            self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    base = 1e-3
    config = pipelines.build_config("vae", "digits", flags={
        "model": {"hidden": [16], "latent_dim": 2},
        "trainer": {"epochs": 10, "max_steps": 22, "progress_bar": False, "plots": False,
                    "val_every": 0, "online_probe": False},
        "data": {"batch_size": 64},
        "optim": {"lr": base, "schedule": "warmup_cosine", "warmup_epochs": 1},
    })
    train_set = pipelines.load_split(config, "train")
    method = method_class("vae")(config, engine.data_info(train_set))
    record = RecordLR()
    engine.fit(method, train_set, None, tmp_path / "run", extra_callbacks=[record])
    assert method.steps_per_epoch == 1438 // 64 and method.total_steps() == 22
    assert len(record.lrs) == 22 and max(record.lrs) == pytest.approx(base)
    assert record.lrs[-1] < 0.01 * base  # the end of the cosine, not the warm-up peak
    assert record.lrs[-1] == pytest.approx(base * 0.5 * (1 + math.cos(math.pi * 19 / 20)))


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
    with pytest.raises(ConfigError):
        mlp_head(16, [0], 4)
