"""Small convolutional encoder / decoder for low-resolution images (8 to 64 pixels, any channels).

ConvEncoder: stages of Conv3x3(stride 2, padding 1) -> BatchNorm -> ReLU; each stage maps a side
s to ceil(s / 2) and channels go width, 2 width, 4 width, ... (capped at 8 width). Stages are
added until both sides are <= 4 (at least one stage), e.g. 28 -> 14 -> 7 -> 4, 32 -> 16 -> 8 -> 4,
8 -> 4. The final map is flattened (or globally average-pooled with ``global_pool=True``) into a
``feature_dim`` vector, followed by Linear(out_dim) unless ``out_dim`` is None, so the same class
is a VAE encoder body (out_dim = 2 * latent) and a small backbone returning (N, feature_dim).

ConvDecoder: Linear(latent) -> ReLU -> (c0, s0, s0) -> stages of ConvTranspose4x4(stride 2,
padding 1) -> BatchNorm -> ReLU, each doubling the side exactly, then Conv3x3 -> C channels with
no output activation (logits / means). The start side s0 is found by halving the image side while
it is even and (larger than 4, or fewer than two halvings were made): 8: 2 -> 4 -> 8,
16: 4 -> 8 -> 16, 28: 7 -> 14 -> 28, 32: 4 -> 8 -> 16 -> 32, 64: 4 -> ... -> 64. The output is
therefore exactly H x W for every square size (an odd side gets no upsampling stage at all).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from selfsup.errors import ConfigError
from selfsup.nets.mlp import check_image_shape


def _check_pos_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
    return value


def decoder_side_chain(side: int) -> list[int]:
    """Sides visited by ConvDecoder, from the image side down to the start side (see module doc)."""
    sides = [side]
    while sides[-1] % 2 == 0 and (sides[-1] > 4 or len(sides) < 3):
        sides.append(sides[-1] // 2)
    return sides


class ConvEncoder(nn.Module):
    """(N, C, H, W) -> conv stages to <= 4x4 -> flatten / pool -> optional Linear(out_dim)."""

    def __init__(
        self,
        image_shape: Sequence[int],
        out_dim: int | None = None,
        width: int = 32,
        global_pool: bool = False,
    ) -> None:
        super().__init__()
        self.image_shape = check_image_shape(image_shape)
        width = _check_pos_int(width, "width")
        c, h, w = self.image_shape
        layers: list[nn.Module] = []
        in_ch, ch = c, width
        while True:
            layers += [
                nn.Conv2d(in_ch, ch, kernel_size=3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(ch),
                nn.ReLU(inplace=True),
            ]
            h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
            in_ch, ch = ch, min(ch * 2, 8 * width)
            if h <= 4 and w <= 4:
                break
        self.body = nn.Sequential(*layers)
        self.out_channels = in_ch
        self.out_spatial = (h, w)
        self.global_pool = bool(global_pool)
        self.feature_dim = in_ch if self.global_pool else in_ch * h * w
        if out_dim is None:
            self.head: nn.Module = nn.Identity()
            self.out_dim = self.feature_dim
        else:
            self.out_dim = _check_pos_int(out_dim, "out_dim")
            self.head = nn.Linear(self.feature_dim, self.out_dim)

    def features(self, x: Tensor) -> Tensor:
        """Return the (N, feature_dim) flattened (or pooled) conv features."""
        f = self.body(x)
        if self.global_pool:
            return f.mean(dim=(2, 3))
        return torch.flatten(f, 1)

    def forward(self, x: Tensor) -> Tensor:
        """Return (N, out_dim) (= (N, feature_dim) when out_dim is None)."""
        return self.head(self.features(x))


class ConvDecoder(nn.Module):
    """z (N, latent_dim) -> Linear -> (c0, s0, s0) -> x2 transposed-conv stages -> (N, C, H, W)."""

    def __init__(self, latent_dim: int, image_shape: Sequence[int], width: int = 32) -> None:
        super().__init__()
        self.latent_dim = _check_pos_int(latent_dim, "latent_dim")
        self.image_shape = check_image_shape(image_shape)
        width = _check_pos_int(width, "width")
        c, h, w = self.image_shape
        if h != w:
            raise ConfigError(
                f"ConvDecoder needs square images, got {h}x{w}. Resize or crop the images to a "
                "square size (e.g. 32x32) in the data configuration."
            )
        sides = decoder_side_chain(h)
        n_stages = len(sides) - 1
        self.start_side = sides[-1]
        self.start_channels = min(width * 2**n_stages, 8 * width)
        self.fc = nn.Sequential(
            nn.Linear(latent_dim, self.start_channels * self.start_side**2), nn.ReLU(inplace=True)
        )
        layers: list[nn.Module] = []
        ch = self.start_channels
        for i in range(n_stages):
            out_ch = min(width * 2 ** (n_stages - 1 - i), 8 * width)
            layers += [
                nn.ConvTranspose2d(ch, out_ch, kernel_size=4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(out_ch),
                nn.ReLU(inplace=True),
            ]
            ch = out_ch
        layers.append(nn.Conv2d(ch, c, kernel_size=3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        """Return (N, C, H, W) logits / means (no activation)."""
        s = self.start_side
        return self.body(self.fc(z).view(z.shape[0], self.start_channels, s, s))
