"""Soft-discretization bottleneck: bridges against hand computations, the Gumbel-max theorem and
EMA k-means by brute force; every joint-embedding method trains with every encode method."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import yaml

from selfsup import pipelines
from selfsup.data.augment import channel_stats
from selfsup.data.base import DataInfo, ImageDataset
from selfsup.errors import ConfigError
from selfsup.methods import method_class
from selfsup.nets.bottleneck import (
    ContinuousBridge,
    SoftmaxBridge,
    VQBridge,
    build_bridge,
    build_embedder,
)
from selfsup.nets.conv64 import Conv64Encoder

METHODS = ("vicreg", "byol", "simclr", "barlowtwins", "mocosimclr")
ENCODE = ("continuous", "softmax", "gumbel", "vq")


def test_softmax_groups_sum_to_one_and_match_the_formula():
    g = torch.Generator().manual_seed(0)
    e = torch.randn(5, 3 * 4, generator=g)
    bridge = SoftmaxBridge(message_size=3, vocab_size=4, tau=0.7)
    m, aux = bridge(e)
    assert aux == {} and m.shape == (5, 12)
    groups = m.view(5, 3, 4)
    torch.testing.assert_close(groups.sum(-1), torch.ones(5, 3))
    for i in range(5):
        for grp in range(3):
            logits = [float(v) / 0.7 for v in e[i, 4 * grp : 4 * grp + 4]]
            z = sum(math.exp(v) for v in logits)
            expect = torch.tensor([math.exp(v) / z for v in logits])
            torch.testing.assert_close(groups[i, grp], expect, rtol=1e-5, atol=1e-6)
    code = bridge.code(e).view(5, 3, 4)
    assert torch.equal(code.argmax(-1), e.view(5, 3, 4).argmax(-1)) and torch.all(code.sum(-1) == 1)


def test_hard_is_one_hot_with_the_soft_gradient():
    g = torch.Generator().manual_seed(1)
    e = torch.randn(6, 2 * 5, generator=g)
    w = torch.randn(6, 10, generator=g)
    soft_e = e.clone().requires_grad_(True)
    hard_e = e.clone().requires_grad_(True)
    soft, _ = SoftmaxBridge(2, 5, tau=0.5)(soft_e)
    hard, _ = SoftmaxBridge(2, 5, tau=0.5, hard=True)(hard_e)
    groups = hard.detach().view(6, 2, 5)
    assert set(groups.unique().tolist()) == {0.0, 1.0}
    assert torch.all(groups.sum(-1) == 1)
    assert torch.equal(groups.argmax(-1), e.view(6, 2, 5).argmax(-1))
    (soft * w).sum().backward()
    (hard * w).sum().backward()
    assert hard_e.grad.abs().sum() > 0
    torch.testing.assert_close(hard_e.grad, soft_e.grad)


def test_gumbel_noise_statistics_and_gumbel_max_theorem():
    torch.manual_seed(0)
    # 1) log m_v - log m_w = (g_v - g_w) / tau with zero logits: Var(g_v - g_w) = pi^2 / 3.
    bridge = build_bridge("gumbel", 0, message_size=20000, vocab_size=2, tau=1.0)
    bridge.train()
    m, _ = bridge(torch.zeros(1, 40000))
    diff = torch.log(m.view(-1, 2)).diff(dim=1).squeeze(1)
    assert abs(float(diff.mean())) < 0.06
    assert abs(float(diff.var()) - math.pi**2 / 3) < 0.12
    # 2) Gumbel-max: P(argmax(e + g) = v) = softmax(e)_v; hard gumbel draws that one-hot.
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4])
    hard = build_bridge("gumbel", 0, message_size=20000, vocab_size=4, hard=True)
    hard.train()
    out, _ = hard(probs.log().repeat(20000)[None])
    freq = out.view(-1, 4).mean(0)
    torch.testing.assert_close(freq, probs, atol=0.015, rtol=0)
    # 3) default tau 1 (the released code passes 1.0); no noise in eval mode: softmax(e / tau)
    assert hard.tau == 1.0 and build_bridge("softmax", 0, vocab_size=9).tau == 1.0
    bridge = build_bridge("gumbel", 0, message_size=3, vocab_size=9, tau=3.0).eval()
    e = torch.randn(2, 27)
    torch.testing.assert_close(bridge(e)[0].view(2, 3, 9), torch.softmax(e.view(2, 3, 9) / 3, -1))


def _vq(codebook: list[list[float]], decay: float = 0.85, beta: float = 0.25) -> VQBridge:
    """Our EMA k-means VQ (nearest code) with the mean commitment."""
    v, d = len(codebook), len(codebook[0])
    bridge = VQBridge(message_size=2, vocab_size=v, code_dim=d, beta=beta, decay=decay,
                      update="kmeans", hard=True, commitment_scale="mean")
    bridge.codebook.copy_(torch.tensor(codebook))
    bridge.ema_sum.copy_(torch.tensor(codebook))
    return bridge


def test_vq_commitment_straight_through_and_code():
    bridge = _vq([[0.0, 0.0], [1.0, 1.0], [-2.0, 0.5]]).eval()
    e = torch.tensor([[0.1, -0.2, 0.9, 1.3], [-1.5, 0.2, 3.0, 3.0]], requires_grad=True)
    m, aux = bridge(e)
    nearest = [0, 1, 2, 1]  # by hand
    q = bridge.codebook[nearest].reshape(2, 4)
    torch.testing.assert_close(m.detach(), q)
    expect = 0.25 * float(((e.detach() - q) ** 2).mean())
    assert abs(float(aux["vq_commitment"]) - expect) < 1e-6
    (m * torch.arange(8.0).view(2, 4)).sum().backward()
    torch.testing.assert_close(e.grad, torch.arange(8.0).view(2, 4))  # straight-through
    code = bridge.code(e.detach()).view(2, 2, 3)
    assert code.argmax(-1).flatten().tolist() == nearest and torch.all(code.sum(-1) == 1)


def test_vq_ema_moves_codes_towards_their_vectors_as_computed_by_hand():
    codes = [[0.0, 0.0], [4.0, 4.0], [-3.0, 3.0]]
    bridge = _vq(codes).train()
    vectors = np.array([[1.0, 0.5], [0.5, -0.5], [3.0, 2.0], [2.5, 3.5]])
    bridge(torch.tensor(vectors, dtype=torch.float32).reshape(2, 4))
    # brute force assignment, then n_k, s_k, Laplace-smoothed counts, C_k = s_k / n~_k
    gamma, eps, v = 0.85, 1e-5, 3
    assign = [int(np.argmin([((x - np.array(c)) ** 2).sum() for c in codes])) for x in vectors]
    assert assign == [0, 0, 1, 1]
    n = [gamma * 1.0 + (1 - gamma) * assign.count(k) for k in range(v)]
    s = [gamma * np.array(codes[k]) + (1 - gamma) * sum(
        (x for x, a in zip(vectors, assign, strict=True) if a == k), np.zeros(2)) for k in range(v)]
    total = sum(n)
    expect = [s[k] / ((n[k] + eps) / (total + v * eps) * total) for k in range(v)]
    torch.testing.assert_close(bridge.codebook, torch.tensor(np.array(expect), dtype=torch.float32))
    for k in (0, 1):  # the used codes moved towards the mean of their vectors
        target = vectors[[i for i, a in enumerate(assign) if a == k]].mean(0)
        before = np.linalg.norm(np.array(codes[k]) - target)
        assert np.linalg.norm(bridge.codebook[k].numpy() - target) < before
    frozen = _vq(codes).eval()  # no update outside training
    frozen(torch.tensor(vectors, dtype=torch.float32).reshape(2, 4))
    torch.testing.assert_close(frozen.codebook, torch.tensor(codes))


def test_continuous_bridge_and_embedder():
    e = torch.randn(3, 7)
    out, aux = ContinuousBridge(7)(e)
    assert out is e and aux == {} and ContinuousBridge(7).code(e) is None
    emb = build_embedder(5, 12)
    assert emb[0].bias is None and isinstance(emb[1], torch.nn.BatchNorm1d)
    assert emb(torch.randn(4, 5)).shape == (4, 12)
    assert len(build_embedder(5, 12, [8])) == 5
    with pytest.raises(ConfigError, match="encode method"):
        build_bridge("argmax", 4)


def _tiny(method: str, encode: str, **model: object) -> dict:
    dims = [32, 16]
    extra = {"pred_hidden": 16} if method == "byol" else {}
    if method == "mocosimclr":
        extra = {"queue_size": 16}
    return {
        "model": {"width": 4, "proj_dims": dims, "encode_method": encode, "message_size": 3,
                  "vocab_size": 4, "code_dim": 2, **extra, **model},
        "trainer": {"epochs": 1, "progress_bar": False, "plots": False, "val_every": 0},
        "data": {"batch_size": 8},
    }


@pytest.mark.parametrize("encode", ENCODE)
@pytest.mark.parametrize("name", METHODS)
def test_every_method_trains_a_step_with_every_encode_method(name, encode):
    torch.manual_seed(0)
    config = pipelines.build_config(name, "digits", flags=_tiny(name, encode))
    method = method_class(name)(config, DataInfo("digits", (1, 8, 8), 10, True))
    images = torch.randint(0, 256, (8, 1, 8, 8), dtype=torch.uint8)
    opt = torch.optim.SGD(method.method_parameters(), lr=0.1)
    before = {k: v.clone() for k, v in method.state_dict().items()}
    terms = method.training_loss(images)
    assert torch.isfinite(terms["loss"]) and ("vq_commitment" in terms) == (encode == "vq")
    terms["loss"].backward()
    opt.step()
    changed = [k for k, v in method.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("backbone.") for k in changed)
    if encode != "continuous":
        assert any(k.startswith("embedder.") and "weight" in k for k in changed)
    method.eval()
    code = method.code(method.preprocess(images))
    if encode == "continuous":
        assert code is None and not any(k.startswith("embedder.") for k in before)
    else:
        assert code.shape == (8, 12) and code.dtype == torch.float32
        assert torch.all(code.view(8, 3, 4).sum(-1) == 1)


def test_byol_teacher_temperature_and_cli_style_flags():
    flags = {**_tiny("byol", "softmax"), "hard": True, "target_tau": 0.25, "tau": 2.0}
    config = pipelines.build_config("byol", "digits", flags=flags)
    assert config.model.hard and config.model.target_tau == 0.25
    method = method_class("byol")(config, DataInfo("digits", (1, 8, 8), 10, True))
    assert method.bridge.tau == 2.0 and method.target["bridge"].tau == 0.25
    assert method.bridge.hard and method.target["bridge"].hard
    with pytest.raises(ConfigError, match="encode_method"):
        pipelines.build_config("vicreg", "digits", flags={"encode_method": "binary"})
    with pytest.raises(ConfigError, match="tau"):
        pipelines.build_config("simclr", "digits", flags={"tau": 0.0})
    with pytest.raises(ConfigError, match="embedder"):
        pipelines.build_config("simclr", "digits",
                               flags={"encode_method": "vq", "embedder": "none"})


def test_conv64_backbone_shapes():
    net = Conv64Encoder((1, 64, 64), width=8, out_dim=12)
    pools = [m.output_size for m in net.modules() if isinstance(m, torch.nn.AdaptiveAvgPool2d)]
    assert pools == [16, 4, 1] and net.out_dim == 12
    assert net(torch.randn(2, 1, 64, 64)).shape == (2, 12)
    config = pipelines.build_config("byol", "digits", flags={"backbone": "conv64", "width": 4,
                                                             "feature_dim": 16})
    method = method_class("byol")(config, DataInfo("x", (3, 64, 64), 0, False))
    assert method.feature_dim == 16
    config = pipelines.build_config("byol", "digits", flags={"backbone": "conv64"})
    method = method_class("byol")(config, DataInfo("x", (1, 64, 64), 0, False))
    assert config.model.width == 64 and method.feature_dim == 128  # the released defaults
    with pytest.raises(ConfigError, match="width"):
        Conv64Encoder((1, 64, 64), width=0)


def test_channel_stats_and_normalize_from_the_train_split(tmp_path):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (37, 3, 5, 4), dtype=torch.uint8, generator=g)
    ds = ImageDataset(images, torch.zeros(37, dtype=torch.long), 1, "x", "train")
    mean, std = channel_stats(ds, chunk=10)
    arr = images.numpy().astype(np.float64) / 255
    np.testing.assert_allclose(mean, arr.mean(axis=(0, 2, 3)), rtol=1e-10)
    np.testing.assert_allclose(std, arr.std(axis=(0, 2, 3)), rtol=1e-8)

    class Streamed:  # a map-style streamed dataset gives the same figures
        def __len__(self) -> int:
            return 37

        def __getitem__(self, i: int):
            return images[i], 0

    np.testing.assert_allclose(channel_stats(Streamed(), chunk=8)[0], mean, rtol=1e-10)

    class Indexed(Streamed):  # a split of a larger grid read with get_batch(positions)
        images = torch.zeros(99, 5, 4, 3, dtype=torch.uint8)  # the whole grid, not the split

        def get_batch(self, positions):
            return images[positions]

    np.testing.assert_allclose(channel_stats(Indexed(), chunk=8)[1], std, rtol=1e-8)
    assert channel_stats(Indexed(), max_streamed=5)[0] != mean  # a subset of 5 images

    flags = _tiny("simclr", "continuous")
    flags["trainer"]["max_steps"] = 2
    config = pipelines.build_config("simclr", "digits", flags=flags,
                                    sets=["augment.normalize_stats=train"])
    pipelines.train(config, tmp_path / "run")
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["augment"]
    from selfsup.data import load_dataset

    pixels = load_dataset("digits", ".", "train").images.double() / 255
    assert saved["normalize"] is True
    assert abs(saved["mean"][0] - float(pixels.mean())) < 1e-9
    assert abs(saved["std"][0] - float(pixels.std(unbiased=False))) < 1e-9
    with pytest.raises(ConfigError, match="normalize_stats"):
        pipelines.build_config("simclr", "digits", sets=["augment.normalize=true"])
