"""ResNet-style image decoders for SimVAE and AAVAE. Outputs are logits / means (no activation).

SimVAEResNetDecoder (alicebizeul/simvae src/model/decoders.py, ``ResNetDec18``):
Linear(z, 512 s0^2) viewed (512, s0, s0) with s0 = image_size / 16 (2 for 32x32, 4 for 64x64),
four stages of two transposed-conv blocks 512->256, 256->128, 128->64 (each doubling the side in
its LAST block) and 64->64 (same side), then ConvTranspose2d(64, C, kernel 7, stride 2, padding 3,
output_padding 1), which doubles the side once more: 2 -> 4 -> 8 -> 16 -> 16 -> 32 and
4 -> 8 -> 16 -> 32 -> 32 -> 64. A block is ``ReLU(BN(tconv3x3(ReLU(BN(tconv3x3_s(x))))) + skip)``
where ONLY the upsampling blocks (stride 2) have a skip, ``BN(tconv1x1_s2(x))``; the other five
blocks have none (decoders.py:74-77: the identity is added only when ``upsample`` is set).

AAVAEResNetDecoder (Lightning-Universe/paper-AAVAE src/models/decoder.py, no BatchNorm):
Linear(z, h) -> ReLU -> Linear(h, h) -> ReLU, viewed (h / 16, 4, 4), conv1x1 -> h channels, ReLU,
four stages of residual blocks with planes 256, 128, 64, 32 (``decoder18``: 2, 2, 2, 2 basic
blocks; ``decoder34``: 3, 6, 4, 3 basic; ``decoder50``: 3, 6, 4, 3 bottlenecks). The first block
of each stage resizes (nearest): stage 1 to the side ``s1 = image_size / f``, stages 2-4 by 2,
and has a conv1x1 skip of the resized input; then, mirroring the encoder's stem, a x2 (nearest)
if the stem has a max-pool, conv3x3 -> 64, ReLU, a x2 (nearest) if the stem conv has stride 2,
conv3x3 -> C. ``f`` is the encoder's total downsampling: 8 for the CIFAR stem (3x3 stride 1, no
max-pool: sides 4/8/16/32 for 32x32), 16 for the STL stem (7x7 stride 2, no max-pool: 6/12/24/48
then x2 -> 96), 32 for the ImageNet stem (7x7 stride 2 + max-pool).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.errors import ConfigError
from selfsup.nets.mlp import check_widths


def _check_pos_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
    return value


# --------------------------------------------------------------------------------------------
# SimVAE decoder
# --------------------------------------------------------------------------------------------


class TransposedBlock(nn.Module):
    """``ReLU(BN(tconv3x3(ReLU(BN(tconv3x3_s(x))))) [+ BN(tconv1x1_s(x))])``.

    ``upsample`` (stride 2, output padding 1: the side doubles) is the only case with a skip;
    a block without upsampling has no residual connection at all, as in the released decoder.
    """

    def __init__(self, in_ch: int, out_ch: int, upsample: bool = False) -> None:
        super().__init__()
        stride, op = (2, 1) if upsample else (1, 0)
        self.conv1 = nn.ConvTranspose2d(
            in_ch, out_ch, 3, stride=stride, padding=1, output_padding=op, bias=False
        )
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.ConvTranspose2d(out_ch, out_ch, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.skip: nn.Module | None = None
        if upsample:
            self.skip = nn.Sequential(
                nn.ConvTranspose2d(in_ch, out_ch, 1, stride=2, output_padding=1, bias=False),
                nn.BatchNorm2d(out_ch),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.skip is not None:
            out = out + self.skip(x)
        return self.relu(out)


class SimVAEResNetDecoder(nn.Module):
    """z (N, latent_dim) -> (N, out_channels, image_size, image_size); see module docstring."""

    def __init__(
        self,
        latent_dim: int,
        image_size: int = 32,
        out_channels: int = 3,
        blocks_per_stage: int = 2,
    ) -> None:
        super().__init__()
        self.latent_dim = _check_pos_int(latent_dim, "latent_dim")
        image_size = _check_pos_int(image_size, "image_size")
        out_channels = _check_pos_int(out_channels, "out_channels")
        blocks_per_stage = _check_pos_int(blocks_per_stage, "blocks_per_stage")
        if image_size % 16 != 0:
            raise ConfigError(
                f"SimVAEResNetDecoder needs an image size divisible by 16 (32 or 64 as in the "
                f"paper), got {image_size}. Use the 'conv' decoder for other sizes."
            )
        self.image_size = image_size
        self.start_side = image_size // 16
        self.start_channels = 512
        self.fc = nn.Linear(latent_dim, self.start_channels * self.start_side**2)
        stages: list[nn.Module] = []
        for in_ch, out_ch in ((512, 256), (256, 128), (128, 64), (64, 64)):
            upsample = in_ch != out_ch  # the last stage keeps its side
            blocks = [TransposedBlock(in_ch, in_ch) for _ in range(blocks_per_stage - 1)]
            blocks.append(TransposedBlock(in_ch, out_ch, upsample=upsample))
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.out = nn.ConvTranspose2d(
            64, out_channels, kernel_size=7, stride=2, padding=3, output_padding=1
        )

    def forward(self, z: Tensor) -> Tensor:
        """Return (N, C, image_size, image_size) logits / means."""
        s = self.start_side
        h = self.fc(z).view(z.shape[0], self.start_channels, s, s)
        return self.out(self.stages(h))


# --------------------------------------------------------------------------------------------
# AAVAE decoder
# --------------------------------------------------------------------------------------------


STEMS = ("cifar", "stl", "imagenet")


def stem_downsampling(stem: str) -> int:
    """Total downsampling of a ResNet with this stem: 8 (cifar), 16 (stl), 32 (imagenet)."""
    if stem not in STEMS:
        raise ConfigError(f"Unknown ResNet stem {stem!r}; choose one of {', '.join(STEMS)}.")
    return {"cifar": 8, "stl": 16, "imagenet": 32}[stem]


class _Resize(nn.Module):
    """Nearest-neighbour resize to a fixed side (``side``) or by 2 (``side`` None)."""

    def __init__(self, side: int | None = None) -> None:
        super().__init__()
        self.side = side

    def forward(self, x: Tensor) -> Tensor:
        if self.side is None:
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        if x.shape[-1] == self.side and x.shape[-2] == self.side:
            return x
        return F.interpolate(x, size=(self.side, self.side), mode="nearest")


class DecoderBasicBlock(nn.Module):
    """``u = up(x)``; ``ReLU(conv3x3(ReLU(conv3x3(u))) + skip)``, skip = conv1x1(u) in the first
    block of a stage (which resizes), else x."""

    expansion = 1

    def __init__(self, in_ch: int, planes: int, resize: nn.Module | None = None) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        self.up = resize
        self.conv1 = nn.Conv2d(in_ch, planes, 3, padding=1)
        self.conv2 = nn.Conv2d(planes, out_ch, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.skip: nn.Module | None = None if resize is None else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        u = x if self.up is None else self.up(x)
        out = self.conv2(self.relu(self.conv1(u)))
        return self.relu(out + (u if self.skip is None else self.skip(u)))


class DecoderBottleneck(nn.Module):
    """``ReLU(conv1x1(ReLU(conv3x3(up(ReLU(conv1x1(x)))))) + skip)``, 4x channel expansion; the
    resize sits between the first 1x1 and the 3x3 conv, skip = conv1x1(up(x)) in the first block
    of a stage, else x."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, resize: nn.Module | None = None) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        self.up = resize
        self.conv1 = nn.Conv2d(in_ch, planes, 1)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1)
        self.conv3 = nn.Conv2d(planes, out_ch, 1)
        self.relu = nn.ReLU(inplace=True)
        self.skip: nn.Module | None = None if resize is None else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.conv1(x))
        if self.up is not None:
            out = self.up(out)
        out = self.relu(self.conv2(out))
        out = self.conv3(out)
        skip = x if self.skip is None else self.skip(x if self.up is None else self.up(x))
        return self.relu(out + skip)


class AAVAEResNetDecoder(nn.Module):
    """z (N, latent_dim) -> (N, out_channels, image_size, image_size); see module docstring."""

    def __init__(
        self,
        latent_dim: int = 128,
        feat_dim: int = 512,
        image_size: int = 32,
        out_channels: int = 3,
        blocks: str = "basic",
        layers: Sequence[int] = (2, 2, 2, 2),
        stem: str = "cifar",
    ) -> None:
        super().__init__()
        self.latent_dim = _check_pos_int(latent_dim, "latent_dim")
        feat_dim = _check_pos_int(feat_dim, "feat_dim")
        self.image_size = _check_pos_int(image_size, "image_size")
        out_channels = _check_pos_int(out_channels, "out_channels")
        layers_l = check_widths(layers, "layers")
        if len(layers_l) != 4:
            raise ConfigError(f"layers must list 4 block counts (one per stage), got {layers!r}.")
        if feat_dim % 16 != 0:
            raise ConfigError(
                f"feat_dim must be divisible by 16 (it is viewed as (feat_dim/16, 4, 4)), got "
                f"{feat_dim}; AAVAE uses 512 (ResNet-18/34) or 2048 (ResNet-50)."
            )
        block_cls: type[DecoderBasicBlock] | type[DecoderBottleneck]
        if blocks == "basic":
            block_cls = DecoderBasicBlock
        elif blocks == "bottleneck":
            block_cls = DecoderBottleneck
        else:
            raise ConfigError(
                f"Unknown decoder block type {blocks!r}: expected 'basic' (ResNet-18/34 style) or "
                "'bottleneck' (ResNet-50 style)."
            )
        factor = stem_downsampling(stem)
        if self.image_size % factor != 0:
            raise ConfigError(
                f"The AAVAE ResNet decoder for the {stem!r} encoder stem needs an image size "
                f"divisible by {factor} (the encoder's downsampling), got {self.image_size}. Use "
                "--decoder conv (and --encoder conv) for this image size."
            )
        self.stem_name = stem
        self.start_side = self.image_size // factor
        self.feat_dim = feat_dim
        self.mlp = nn.Sequential(
            nn.Linear(latent_dim, feat_dim),
            nn.ReLU(inplace=True),
            nn.Linear(feat_dim, feat_dim),
            nn.ReLU(inplace=True),
        )
        self.stem = nn.Sequential(nn.Conv2d(feat_dim // 16, feat_dim, 1), nn.ReLU(inplace=True))
        in_ch = feat_dim
        stages: list[nn.Module] = []
        for i, (planes, n_blocks) in enumerate(zip((256, 128, 64, 32), layers_l, strict=True)):
            resize = _Resize(self.start_side if i == 0 else None)
            stage: list[nn.Module] = [block_cls(in_ch, planes, resize)]
            in_ch = planes * block_cls.expansion
            stage += [block_cls(in_ch, planes) for _ in range(n_blocks - 1)]
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)
        self.conv = nn.Conv2d(in_ch, 64, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.final = nn.Conv2d(64, out_channels, 3, padding=1)

    def stage_sides(self) -> list[int]:
        """Side of each stage's output (e.g. [4, 8, 16, 32] for CIFAR, [6, 12, 24, 48] for STL)."""
        return [self.start_side * 2**i for i in range(4)]

    def forward(self, z: Tensor) -> Tensor:
        """Return (N, C, image_size, image_size) means (no activation)."""
        h = self.mlp(z).view(z.shape[0], self.feat_dim // 16, 4, 4)
        h = self.stages(self.stem(h))
        if self.stem_name == "imagenet":  # the encoder's max-pool
            h = F.interpolate(h, scale_factor=2.0, mode="nearest")
        h = self.relu(self.conv(h))
        if self.stem_name != "cifar":  # the encoder's stride-2 stem conv
            h = F.interpolate(h, scale_factor=2.0, mode="nearest")
        return self.final(h)
