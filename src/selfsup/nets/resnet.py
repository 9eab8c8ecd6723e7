"""ResNet backbones from torchvision (randomly initialised) with dataset-specific stems.

``resnet_backbone`` returns ``(module, feat_dim)``; the module maps images (N, C, H, W) to
globally average-pooled features (N, feat_dim) (the classifier ``fc`` is an Identity);
``feat_dim`` is 512 for resnet18/34 and 2048 for resnet50.

Stems:

* ``imagenet``: torchvision's 7x7 stride-2 conv + 3x3 stride-2 max-pool (4x downsampling);
* ``cifar``: 3x3 stride-1 conv (padding 1, no bias), no max-pool (for 28-32 px images);
* ``stl``: 7x7 stride-2 conv (padding 3, no bias), no max-pool (for 64-96 px images).
"""

from __future__ import annotations

import torchvision
from torch import nn

from selfsup.errors import ConfigError

_RESNETS = {
    "resnet18": torchvision.models.resnet18,
    "resnet34": torchvision.models.resnet34,
    "resnet50": torchvision.models.resnet50,
}
_STEMS = ("imagenet", "cifar", "stl")


def _stem_conv(in_channels: int, kernel: int, stride: int, padding: int) -> nn.Conv2d:
    """A bias-free 64-channel stem conv with torchvision's Kaiming (fan_out) initialisation."""
    conv = nn.Conv2d(in_channels, 64, kernel, stride=stride, padding=padding, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


def resnet_backbone(
    name: str = "resnet18", stem: str = "imagenet", in_channels: int = 3
) -> tuple[nn.Module, int]:
    """Build a randomly initialised torchvision ResNet without its classifier.

    Returns ``(module, feat_dim)`` with ``module(x)`` of shape (N, feat_dim) for x (N, C, H, W).
    """
    if name not in _RESNETS:
        raise ConfigError(f"Unknown ResNet backbone '{name}'. Choose one of {sorted(_RESNETS)}.")
    if stem not in _STEMS:
        raise ConfigError(
            f"Unknown ResNet stem '{stem}'. Choose 'cifar' for 28-32 px images, 'stl' for "
            "64-96 px images or 'imagenet' for 224 px images."
        )
    if in_channels < 1:
        raise ConfigError(
            f"The backbone needs at least one input channel, got in_channels={in_channels}. "
            "Use 1 for grayscale and 3 for RGB images."
        )
    model = _RESNETS[name](weights=None)
    feat_dim = model.fc.in_features
    if stem == "cifar":
        model.conv1 = _stem_conv(in_channels, 3, 1, 1)
        model.maxpool = nn.Identity()
    elif stem == "stl":
        model.conv1 = _stem_conv(in_channels, 7, 2, 3)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = _stem_conv(in_channels, 7, 2, 3)
    model.fc = nn.Identity()
    return model, feat_dim
