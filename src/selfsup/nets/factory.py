"""Pick encoders and decoders that fit a dataset's image size and channels.

``"auto"`` resolves by image size: MLPs for tiny images (<= 16 px, e.g. the embedded digits),
small conv nets for 28 px and up to 64 px; methods with a ResNet preset name it explicitly.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from selfsup.errors import ConfigError

ENCODERS = ("auto", "mlp", "conv", "conv64", "slim_resnet", "resnet18", "resnet34", "resnet50")
DECODERS = ("auto", "mlp", "conv", "resnet")


def resolve_kind(kind: str, image_shape: tuple[int, int, int]) -> str:
    """``auto`` -> ``mlp`` for images <= 16 px, else ``conv``."""
    if kind != "auto":
        return kind
    return "mlp" if max(image_shape[1:]) <= 16 else "conv"


def build_encoder(
    kind: str,
    image_shape: tuple[int, int, int],
    out_dim: int | None,
    hidden: list[int] | None = None,
    width: int = 32,
    resnet_options: dict[str, Any] | None = None,
) -> tuple[nn.Module, int]:
    """(encoder, output dim): maps (N, C, H, W) to (N, out_dim) (or features when out_dim None).

    ``resnet_options`` (stem_padding, stem_bias, stem_init, fc_dim) go to
    :func:`selfsup.nets.resnet.resnet_backbone` for ResNet encoders.
    """
    kind = resolve_kind(kind, image_shape)
    if kind == "mlp":
        from selfsup.nets.mlp import MLPEncoder

        enc = MLPEncoder(image_shape, hidden or [2000, 500, 500], out_dim)
        return enc, enc.out_dim
    if kind == "conv":
        from selfsup.nets.conv import ConvEncoder

        enc = ConvEncoder(image_shape, out_dim, width=width)
        return enc, enc.out_dim
    if kind == "conv64":
        from selfsup.nets.conv64 import Conv64Encoder

        enc64 = Conv64Encoder(image_shape, width=width)
        if out_dim is None:
            return enc64, enc64.out_dim
        return nn.Sequential(enc64, nn.Linear(enc64.out_dim, out_dim)), out_dim
    if kind == "slim_resnet":
        from selfsup.nets.slim_resnet import SlimResNetEncoder

        if out_dim is None:
            raise ConfigError("The slim ResNet encoder needs an output size (latent_dim).")
        return SlimResNetEncoder(image_shape, out_dim), out_dim
    if kind.startswith("resnet"):
        from selfsup.nets.resnet import resnet_backbone

        stem = "cifar" if image_shape[1] <= 64 else "stl" if image_shape[1] <= 128 else "imagenet"
        body, feat = resnet_backbone(
            kind, stem=stem, in_channels=image_shape[0], **(resnet_options or {})
        )
        if out_dim is None:
            return body, feat
        return nn.Sequential(body, nn.Linear(feat, out_dim)), out_dim
    raise ConfigError(f"Unknown encoder {kind!r}; choose one of {', '.join(ENCODERS)}.")


def build_decoder(
    kind: str,
    latent_dim: int,
    image_shape: tuple[int, int, int],
    hidden: list[int] | None = None,
    width: int = 32,
) -> nn.Module:
    """Decoder mapping (N, latent_dim) to (N, C, H, W) logits or means (no activation)."""
    kind = resolve_kind(kind, image_shape)
    if kind == "mlp":
        from selfsup.nets.mlp import MLPDecoder

        return MLPDecoder(latent_dim, hidden or [500, 500, 2000], image_shape=image_shape)
    if kind == "conv":
        from selfsup.nets.conv import ConvDecoder

        return ConvDecoder(latent_dim, image_shape, width=width)
    if kind == "resnet":
        from selfsup.nets.decoders import SimVAEResNetDecoder

        return SimVAEResNetDecoder(latent_dim, image_shape[1], out_channels=image_shape[0])
    raise ConfigError(f"Unknown decoder {kind!r}; choose one of {', '.join(DECODERS)}.")
