"""The 64x64 conv backbone of the soft-discretization experiments (dSprites, MPI3D).

Three ``Conv3x3(padding 1, no bias) -> BatchNorm -> ReLU`` blocks, each followed by adaptive
average pooling, to 16x16, 4x4 and 1x1:

    (C, 64, 64) -> [w] -> pool 16 -> [2w] -> pool 4 -> [4w] -> pool 1 -> flatten (4w)

(``convs_per_stage`` > 1 stacks more blocks before each pooling.)
``width`` w = 32 gives the paper's hidden size 128. Adaptive pooling makes the network accept any
image size (the first stage runs at full resolution, so its cost grows with the image area).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from selfsup.errors import ConfigError
from selfsup.nets.mlp import check_image_shape

POOL_SIDES = (16, 4, 1)


def _block(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True)]


class Conv64Encoder(nn.Module):
    """(N, C, H, W) -> (N, 4 * width) features (see module doc)."""

    def __init__(self, image_shape: Sequence[int], width: int = 32, convs_per_stage: int = 1
                 ) -> None:
        super().__init__()
        self.image_shape = check_image_shape(image_shape)
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ConfigError(f"The conv64 backbone width must be a positive integer, got {width}.")
        layers: list[nn.Module] = []
        c_in = self.image_shape[0]
        for stage, side in enumerate(POOL_SIDES):
            c_out = width * 2**stage
            for _ in range(convs_per_stage):
                layers += _block(c_in, c_out)
                c_in = c_out
            layers.append(nn.AdaptiveAvgPool2d(side))
        layers.append(nn.Flatten())
        self.body = nn.Sequential(*layers)
        self.out_dim = c_in

    def forward(self, x: Tensor) -> Tensor:
        """Return (N, 4 * width)."""
        return self.body(x)
