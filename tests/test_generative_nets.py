"""Shapes, gradient flow and configuration checks for the encoder / decoder networks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from selfsup.errors import ConfigError
from selfsup.nets.conv import ConvDecoder, ConvEncoder, decoder_side_chain
from selfsup.nets.decoders import AAVAEResNetDecoder, SimVAEResNetDecoder
from selfsup.nets.mlp import MLPDecoder, MLPEncoder
from selfsup.nets.slim_resnet import SlimResNetEncoder

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32), (3, 64, 64)]
N = 2


def _assert_all_grads(module: nn.Module) -> None:
    """Every parameter received a finite gradient, and not all of them are zero."""
    grads = [p.grad for p in module.parameters()]
    assert all(g is not None for g in grads), "some parameters got no gradient"
    assert all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def _x(shape: tuple[int, int, int], seed: int = 0) -> torch.Tensor:
    return torch.rand(N, *shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("shape", SHAPES)
def test_mlp_encoder_decoder_shapes_and_grads(shape) -> None:
    enc = MLPEncoder(shape, hidden=[64, 32], out_dim=2 * 10)
    dec = MLPDecoder(10, hidden=[32, 64], image_shape=shape)
    x = _x(shape)
    h = enc(x)
    assert h.shape == (N, 20)
    out = dec(h[:, :10])
    assert out.shape == (N, *shape)
    out.pow(2).mean().backward()
    _assert_all_grads(enc)
    _assert_all_grads(dec)
    # backbone mode
    feat = MLPEncoder(shape, hidden=[16, 8])
    assert feat(x).shape == (N, 8) and feat.feature_dim == 8


def test_mlp_default_widths_match_simvae_mnist() -> None:
    enc = MLPEncoder((1, 28, 28), out_dim=20)
    linears = [m for m in enc.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (784, 2000),
        (2000, 500),
        (500, 500),
        (500, 20),
    ]
    dec = MLPDecoder(10, image_shape=(1, 28, 28))
    linears = [m for m in dec.modules() if isinstance(m, nn.Linear)]
    assert [m.out_features for m in linears] == [500, 500, 2000, 784]


@pytest.mark.parametrize("shape", SHAPES + [(3, 16, 16)])
def test_conv_encoder_decoder_shapes_and_grads(shape) -> None:
    enc = ConvEncoder(shape, out_dim=8, width=8)
    dec = ConvDecoder(4, shape, width=8)
    x = _x(shape, 1)
    h = enc(x)
    assert h.shape == (N, 8)
    assert max(enc.out_spatial) <= 4
    out = dec(h[:, :4])
    assert out.shape == (N, *shape)
    out.pow(2).mean().backward()
    _assert_all_grads(enc)
    _assert_all_grads(dec)


@pytest.mark.parametrize("shape", SHAPES)
def test_conv_encoder_as_backbone(shape) -> None:
    enc = ConvEncoder(shape, out_dim=None, width=8)
    feats = enc(_x(shape))
    assert feats.shape == (N, enc.feature_dim)
    assert enc.feature_dim == enc.out_channels * enc.out_spatial[0] * enc.out_spatial[1]
    pooled = ConvEncoder(shape, width=8, global_pool=True)
    assert pooled(_x(shape)).shape == (N, pooled.out_channels) == (N, pooled.feature_dim)


def test_conv_decoder_geometry_follows_the_documented_chain() -> None:
    assert decoder_side_chain(8) == [8, 4, 2]
    assert decoder_side_chain(16) == [16, 8, 4]
    assert decoder_side_chain(28) == [28, 14, 7]
    assert decoder_side_chain(32) == [32, 16, 8, 4]
    assert decoder_side_chain(64) == [64, 32, 16, 8, 4]
    # odd sides get no upsampling stage but still come out exact
    assert ConvDecoder(3, (2, 7, 7), width=4)(torch.zeros(1, 3)).shape == (1, 2, 7, 7)
    with pytest.raises(ConfigError):
        ConvDecoder(3, (1, 8, 16))
    with pytest.raises(ConfigError):
        ConvEncoder((1, 8), out_dim=3)


@pytest.mark.parametrize("shape", SHAPES)
def test_slim_resnet_shapes_and_grads(shape) -> None:
    enc = SlimResNetEncoder(shape, out_dim=6)
    if shape[1] != 32:  # shapes only (keeps the CPU test fast); gradients on 32x32
        with torch.no_grad():
            assert enc(_x(shape, 2)).shape == (N, 6)
        return
    out = enc(_x(shape, 2))
    assert out.shape == (N, 6)
    out.pow(2).mean().backward()
    _assert_all_grads(enc)


def test_slim_resnet_flattened_sizes() -> None:
    enc32 = SlimResNetEncoder((3, 32, 32), out_dim=128)
    # the construction-time dummy forward must not touch BatchNorm statistics
    bn = enc32.stem[1]
    assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
    assert int(bn.num_batches_tracked) == 0
    assert enc32.training
    assert enc32.feature_dim == 2048
    with torch.no_grad():
        assert enc32.features(torch.zeros(2, 3, 32, 32)).shape == (2, 2048)
    assert isinstance(enc32.head, nn.Linear) and enc32.head.in_features == 2048
    stem = enc32.stem[0]
    assert stem.kernel_size == (3, 3) and stem.padding == (0, 0) and stem.bias is not None
    enc64 = SlimResNetEncoder((3, 64, 64), out_dim=128)
    assert enc64.feature_dim == 8192 and enc64.stem[0].kernel_size == (4, 4)
    # widths 32-64-128 with two BasicBlocks each
    assert [len(stage) for stage in enc32.layers] == [2, 2, 2]
    assert [stage[-1].conv2.out_channels for stage in enc32.layers] == [32, 64, 128]


@pytest.mark.parametrize("size,channels", [(32, 3), (64, 1)])
def test_simvae_resnet_decoder(size, channels) -> None:
    dec = SimVAEResNetDecoder(16, image_size=size, out_channels=channels)
    assert dec.fc.out_features == (2048 if size == 32 else 8192)
    widths = [(s[-1].conv1.in_channels, s[-1].conv1.out_channels) for s in dec.stages]
    assert widths == [(512, 256), (256, 128), (128, 64), (64, 64)]
    if size == 64:  # shape only; gradients are checked on 32x32
        with torch.no_grad():
            assert dec(torch.randn(1, 16)).shape == (1, channels, size, size)
        return
    out = dec(torch.randn(N, 16))
    assert out.shape == (N, channels, size, size)
    out.pow(2).mean().backward()
    _assert_all_grads(dec)


def test_simvae_resnet_decoder_rejects_unsupported_size() -> None:
    with pytest.raises(ConfigError):
        SimVAEResNetDecoder(16, image_size=28)


@pytest.mark.parametrize(
    "size,channels,blocks,feat,grad,stem",
    [
        (16, 1, "basic", 64, True, "cifar"),
        (32, 3, "basic", 512, True, "cifar"),
        (64, 3, "basic", 64, False, "cifar"),
        (96, 3, "basic", 64, False, "stl"),
        (96, 3, "bottleneck", 64, True, "stl"),
        (224, 3, "basic", 64, False, "imagenet"),
        (32, 3, "bottleneck", 2048, False, "cifar"),
    ],
)
def test_aavae_resnet_decoder(size, channels, blocks, feat, grad, stem) -> None:
    layers = [2, 2, 2, 2] if size == 32 and blocks == "basic" else [1, 1, 1, 1]
    dec = AAVAEResNetDecoder(
        latent_dim=16,
        feat_dim=feat,
        image_size=size,
        out_channels=channels,
        blocks=blocks,
        layers=layers,
        stem=stem,
    )
    assert not any(isinstance(m, nn.BatchNorm2d) for m in dec.modules())
    if not grad:  # shape only (keeps the CPU test fast)
        with torch.no_grad():
            assert dec(torch.randn(1, 16)).shape == (1, channels, size, size)
        return
    out = dec(torch.randn(N, 16))
    assert out.shape == (N, channels, size, size)
    out.pow(2).mean().backward()
    _assert_all_grads(dec)


def test_aavae_decoder_config_errors() -> None:
    with pytest.raises(ConfigError):
        AAVAEResNetDecoder(feat_dim=500)
    with pytest.raises(ConfigError):
        AAVAEResNetDecoder(blocks="wide")
    with pytest.raises(ConfigError):
        AAVAEResNetDecoder(layers=[2, 2, 2])
    with pytest.raises(ConfigError, match="divisible by 8"):
        AAVAEResNetDecoder(image_size=28)  # the CIFAR stem downsamples by 8
    with pytest.raises(ConfigError, match="stem"):
        AAVAEResNetDecoder(stem="tiny")
