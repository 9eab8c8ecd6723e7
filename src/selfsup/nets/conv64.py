"""The 64x64 conv backbone of the soft-discretization experiments (dSprites, MPI3D).

The released network (lavoiems/SoftDiscrete_SSL ``src/models/byol/model.py:19-39``; identical in
moco-simclr and vq-byol): six 3x3 convolutions with bias and padding 1, in three stages; each
stage is ``Conv -> BatchNorm -> ReLU`` followed by a convolution *without* activation and an
adaptive average pooling:

    (C, H, W) -> Conv(C, w)-BN-ReLU -> Conv(w, 2w)  -> pool 16x16
              -> Conv(2w, 2w)-BN-ReLU -> Conv(2w, 2w) -> pool 4x4
              -> Conv(2w, 2w)-BN-ReLU -> Conv(2w, d)  -> pool 1x1 -> flatten (d)

``width`` w is the released ``h_dim`` (default 64), ``out_dim`` d its ``hidden_size`` (default
128; the launch scripts use 256). With C = 1, w = 64, d = 128 the network has 665,472
parameters. Adaptive pooling makes it accept any image size (the first two convolutions run at
full resolution, so their cost grows with the image area).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from selfsup.errors import ConfigError
from selfsup.nets.mlp import check_image_shape

POOL_SIDES = (16, 4, 1)


def _positive(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"The conv64 backbone {name} must be a positive integer, got {value!r}.")
    return value


class Conv64Encoder(nn.Module):
    """(N, C, H, W) -> (N, out_dim) features (see module doc)."""

    def __init__(self, image_shape: Sequence[int], width: int = 64, out_dim: int = 128) -> None:
        super().__init__()
        self.image_shape = check_image_shape(image_shape)
        w = _positive("width", width)
        self.out_dim = _positive("output size (model.feature_dim)", out_dim)
        c_in = self.image_shape[0]
        layers: list[nn.Module] = []
        # (channels in, channels after the activated conv, channels after the plain conv)
        stages = ((c_in, w, 2 * w), (2 * w, 2 * w, 2 * w), (2 * w, 2 * w, self.out_dim))
        for (c0, c1, c2), side in zip(stages, POOL_SIDES, strict=True):
            layers += [
                nn.Conv2d(c0, c1, 3, 1, 1), nn.BatchNorm2d(c1), nn.ReLU(inplace=True),
                nn.Conv2d(c1, c2, 3, 1, 1), nn.AdaptiveAvgPool2d(side),
            ]
        layers.append(nn.Flatten())
        self.body = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Return (N, out_dim)."""
        return self.body(x)
