"""SimVAE's slim, truncated ResNet-18 encoder.

Layout (as in the released SimVAE code): stem Conv(C -> 64, stride 1, no padding) -> BatchNorm ->
ReLU -> MaxPool(3, stride 2, padding 1), then three stages of two BasicBlocks with widths
32, 64, 128 (strides 1, 2, 2; the fourth ResNet stage, width 256, is dropped). The first block of
every stage has a 1x1-conv + BatchNorm projection shortcut (the shape always changes there).
The stem kernel is 3x3 (with bias) for images up to 32 pixels and 4x4 (no bias) above, so that
32x32 -> 30 -> 15 -> 15 -> 8 -> 4 gives 128 x 4 x 4 = 2048 features and 64x64 -> 61 -> 31 -> 31
-> 16 -> 8 gives 128 x 8 x 8 = 8192. The flattened size is measured with a dummy forward at
construction and exposed as ``feature_dim``; ``out_dim`` adds the Linear head (2 * latent_dim for
a VAE encoder), ``out_dim=None`` returns the flattened features.

Initialisation as released (src/model/resnet.py:139-144, src/model/models.py:138-147): every
convolution of the residual stages, shortcuts included, is drawn from kaiming_normal (fan_out,
ReLU gain): ``w ~ N(0, 2 / (C_out k^2))``; every BatchNorm starts at weight 1, bias 0. The stem
convolution keeps PyTorch's default initialisation (``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``),
because the released encoder replaces it after that initialisation loop; so does the Linear head.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from selfsup.errors import ConfigError
from selfsup.nets.mlp import check_image_shape, check_widths


class BasicBlock(nn.Module):
    """out = ReLU(BN(conv3x3(ReLU(BN(conv3x3_s(x))))) + shortcut(x)), shortcut = 1x1 conv + BN."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class SlimResNetEncoder(nn.Module):
    """Truncated slim ResNet-18: (N, C, H, W) -> (N, feature_dim) -> optional Linear(out_dim)."""

    def __init__(
        self,
        image_shape: Sequence[int] = (3, 32, 32),
        out_dim: int | None = None,
        widths: Sequence[int] = (32, 64, 128),
        blocks: Sequence[int] = (2, 2, 2),
        stem_width: int = 64,
    ) -> None:
        super().__init__()
        self.image_shape = check_image_shape(image_shape)
        widths_l = check_widths(widths, "widths")
        blocks_l = check_widths(blocks, "blocks")
        (stem_width,) = check_widths([stem_width], "stem_width")
        if len(widths_l) != len(blocks_l):
            raise ConfigError(
                f"widths {widths_l} and blocks {blocks_l} must have the same length (one entry "
                "per ResNet stage)."
            )
        c, h, w = self.image_shape
        if max(h, w) <= 32:
            stem = nn.Conv2d(c, stem_width, kernel_size=3, stride=1, padding=0, bias=True)
        else:
            stem = nn.Conv2d(c, stem_width, kernel_size=4, stride=1, padding=0, bias=False)
        if min(h, w) < stem.kernel_size[0]:
            raise ConfigError(
                f"Images of size {h}x{w} are too small for the slim ResNet encoder; use the "
                "'conv' or 'mlp' encoder for images smaller than 8x8."
            )
        self.stem = nn.Sequential(
            stem,
            nn.BatchNorm2d(stem_width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
        stages: list[nn.Module] = []
        in_ch = stem_width
        for i, (width, n_blocks) in enumerate(zip(widths_l, blocks_l, strict=True)):
            stride = 1 if i == 0 else 2
            stage = [BasicBlock(in_ch, width, stride)]
            stage += [BasicBlock(width, width, 1) for _ in range(n_blocks - 1)]
            stages.append(nn.Sequential(*stage))
            in_ch = width
        self.layers = nn.Sequential(*stages)
        for m in self.layers.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self.out_channels = in_ch
        self.feature_dim = self._measure_feature_dim()
        if out_dim is None:
            self.head: nn.Module = nn.Identity()
            self.out_dim = self.feature_dim
        else:
            if isinstance(out_dim, bool) or not isinstance(out_dim, int) or out_dim < 1:
                raise ConfigError(f"out_dim must be a positive integer or None, got {out_dim!r}.")
            self.head = nn.Linear(self.feature_dim, out_dim)
            self.out_dim = out_dim

    def _measure_feature_dim(self) -> int:
        """Flattened feature size from a dummy forward (eval mode: BN statistics untouched)."""
        was_training = self.training
        self.eval()
        with torch.no_grad():
            dummy = torch.zeros(1, *self.image_shape)
            n = self.layers(self.stem(dummy)).flatten(1).shape[1]
        self.train(was_training)
        return int(n)

    def features(self, x: Tensor) -> Tensor:
        """Return flattened (N, feature_dim) features (128 x 4 x 4 = 2048 on 32x32)."""
        return torch.flatten(self.layers(self.stem(x)), 1)

    def forward(self, x: Tensor) -> Tensor:
        """Return (N, out_dim)."""
        return self.head(self.features(x))
