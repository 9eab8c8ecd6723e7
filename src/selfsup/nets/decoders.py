"""ResNet-style image decoders for SimVAE and AAVAE. Outputs are logits / means (no activation).

SimVAEResNetDecoder (SimVAE's released decoder layout): Linear(z, 512 s0^2) viewed (512, s0, s0)
with s0 = image_size / 16 (2 for 32x32, 4 for 64x64), four stages of transposed-conv residual
blocks 512->256, 256->128, 128->64 (each doubling the side) and 64->64 (same side), then
ConvTranspose2d(64, C, kernel 7, stride 2, padding 3, output_padding 1), which doubles the side
once more: 2 -> 4 -> 8 -> 16 -> 16 -> 32 and 4 -> 8 -> 16 -> 32 -> 32 -> 64.

AAVAEResNetDecoder (AAVAE's decoder layout, without BatchNorm): Linear(z, h) -> ReLU ->
Linear(h, h) -> ReLU, viewed (h / 16, 4, 4), resized (nearest) to the start side s0 if s0 != 4,
1x1 conv to 512 * expansion channels, four stages of residual blocks with planes 256, 128, 64, 32
(the first block of an upsampling stage applies nearest x2 upsampling before its convolutions; a
1x1 conv skip is used when the shape changes), then conv3x3 -> 64, ReLU, conv3x3 -> C.
How ``image_size`` picks the geometry: the number of upsampling stages n is the largest n <= 4
such that image_size is divisible by 2^n and image_size / 2^n >= 4; the first n stages upsample
and s0 = image_size / 2^n, so the output side is exactly s0 * 2^n = image_size:
64 -> (n=4, s0=4), 32 -> (3, 4), 96 -> (4, 6), 28 -> (2, 7), 8 -> (1, 4).
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


class TransposedResBlock(nn.Module):
    """ReLU(BN(tconv3x3(ReLU(BN(tconv3x3_s(x))))) + shortcut(x)); stride s in {1, 2} scales x s.

    The shortcut is identity when the shape is unchanged, else tconv1x1(stride s) + BN.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        op = stride - 1  # output_padding so that a stride-2 layer exactly doubles the side
        self.conv1 = nn.ConvTranspose2d(
            in_ch, out_ch, 3, stride=stride, padding=1, output_padding=op, bias=False
        )
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.ConvTranspose2d(out_ch, out_ch, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.ConvTranspose2d(in_ch, out_ch, 1, stride=stride, output_padding=op, bias=False),
                nn.BatchNorm2d(out_ch),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


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
        for in_ch, out_ch, stride in ((512, 256, 2), (256, 128, 2), (128, 64, 2), (64, 64, 1)):
            blocks = [TransposedResBlock(in_ch, in_ch, 1) for _ in range(blocks_per_stage - 1)]
            blocks.append(TransposedResBlock(in_ch, out_ch, stride))
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


def aavae_geometry(image_size: int, max_upsamplings: int = 4) -> tuple[int, int]:
    """Return (number of x2 upsampling stages n, start side s0) with s0 * 2^n = image_size."""
    n = 0
    while (
        n < max_upsamplings and image_size % 2 ** (n + 1) == 0 and image_size // 2 ** (n + 1) >= 4
    ):
        n += 1
    return n, image_size // 2**n


class _Upsample(nn.Module):
    """Nearest-neighbour x2 upsampling (identity when disabled)."""

    def __init__(self, enabled: bool) -> None:
        super().__init__()
        self.enabled = enabled

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="nearest") if self.enabled else x


class DecoderBasicBlock(nn.Module):
    """u = up(x); ReLU(conv3x3(ReLU(conv3x3(u))) + skip(u)), skip = conv1x1 if shapes change."""

    expansion = 1

    def __init__(self, in_ch: int, planes: int, upsample: bool = False) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        self.up = _Upsample(upsample)
        self.conv1 = nn.Conv2d(in_ch, planes, 3, padding=1)
        self.conv2 = nn.Conv2d(planes, out_ch, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        changes = upsample or in_ch != out_ch
        self.skip: nn.Module = nn.Conv2d(in_ch, out_ch, 1) if changes else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        u = self.up(x)
        out = self.conv2(self.relu(self.conv1(u)))
        return self.relu(out + self.skip(u))


class DecoderBottleneck(nn.Module):
    """u = up(x); ReLU(conv1x1(ReLU(conv3x3(ReLU(conv1x1(u))))) + skip(u)), 4x channel expansion."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, upsample: bool = False) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        self.up = _Upsample(upsample)
        self.conv1 = nn.Conv2d(in_ch, planes, 1)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1)
        self.conv3 = nn.Conv2d(planes, out_ch, 1)
        self.relu = nn.ReLU(inplace=True)
        changes = upsample or in_ch != out_ch
        self.skip: nn.Module = nn.Conv2d(in_ch, out_ch, 1) if changes else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        u = self.up(x)
        out = self.relu(self.conv1(u))
        out = self.relu(self.conv2(out))
        out = self.conv3(out)
        return self.relu(out + self.skip(u))


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
                f"{feat_dim}; AAVAE uses 512 (ResNet-18) or 2048 (ResNet-50)."
            )
        block_cls: type[DecoderBasicBlock] | type[DecoderBottleneck]
        if blocks == "basic":
            block_cls = DecoderBasicBlock
        elif blocks == "bottleneck":
            block_cls = DecoderBottleneck
        else:
            raise ConfigError(
                f"Unknown decoder block type {blocks!r}: expected 'basic' (ResNet-18 style) or "
                "'bottleneck' (ResNet-50 style)."
            )
        self.n_upsamplings, self.start_side = aavae_geometry(self.image_size)
        self.feat_dim = feat_dim
        self.mlp = nn.Sequential(
            nn.Linear(latent_dim, feat_dim),
            nn.ReLU(inplace=True),
            nn.Linear(feat_dim, feat_dim),
            nn.ReLU(inplace=True),
        )
        in_ch = 512 * block_cls.expansion
        self.stem = nn.Sequential(nn.Conv2d(feat_dim // 16, in_ch, 1), nn.ReLU(inplace=True))
        stages: list[nn.Module] = []
        for i, (planes, n_blocks) in enumerate(zip((256, 128, 64, 32), layers_l, strict=True)):
            stage: list[nn.Module] = [block_cls(in_ch, planes, upsample=i < self.n_upsamplings)]
            in_ch = planes * block_cls.expansion
            stage += [block_cls(in_ch, planes) for _ in range(n_blocks - 1)]
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)
        self.out = nn.Sequential(
            nn.Conv2d(in_ch, 64, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(64, out_channels, 3, padding=1),
        )

    def forward(self, z: Tensor) -> Tensor:
        """Return (N, C, image_size, image_size) means (no activation)."""
        h = self.mlp(z).view(z.shape[0], self.feat_dim // 16, 4, 4)
        if self.start_side != 4:
            h = F.interpolate(h, size=(self.start_side, self.start_side), mode="nearest")
        return self.out(self.stages(self.stem(h)))
