"""ResNet backbones from torchvision (randomly initialised) with dataset-specific stems.

``resnet_backbone`` returns ``(module, feat_dim)``; the module maps images (N, C, H, W) to
globally average-pooled features (N, feat_dim) (the classifier ``fc`` is an Identity);
``feat_dim`` is 512 for resnet18/34 and 2048 for resnet50.

Stems:

* ``imagenet``: torchvision's 7x7 stride-2 conv + 3x3 stride-2 max-pool (4x downsampling);
* ``cifar``: 3x3 stride-1 conv (padding 1, no bias), no max-pool (for 28-32 px images);
* ``stl``: 7x7 stride-2 conv (padding 3, no bias), no max-pool (for 64-96 px images).

Variants used by released recipes (keyword options of :func:`resnet_backbone`):

* ``stem_padding``/``stem_bias``: the CIFAR stem conv of augustwester/vicreg is
  ``Conv2d(3, 64, 3, stride=1)`` (padding 0, with a bias: 32 px -> 30 px), solo-learn's is
  ``Conv2d(3, 64, 3, stride=1, padding=2, bias=False)`` (32 px -> 34 px);
* ``stem_init``: ``kaiming`` (torchvision's ResNet init, normal with std sqrt(2 / fan_out)) or
  ``pytorch`` (a conv created after the ResNet, as both recipes do: ``nn.Conv2d``'s own init,
  weight and bias uniform in [-1/sqrt(fan_in), 1/sqrt(fan_in)]);
* ``fc_dim``: keep torchvision's classifier as ``Linear(feat_dim, fc_dim)`` inside the backbone
  (augustwester/vicreg builds ``resnet18(num_classes=512)`` and its probe reads the fc output), so
  the module returns (N, fc_dim); 0 replaces it by an Identity.
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
_STEMS = {"imagenet": (7, 2, 3), "cifar": (3, 1, 1), "stl": (7, 2, 3)}  # kernel, stride, pad
STEM_INITS = ("kaiming", "pytorch")


def _stem_conv(
    in_channels: int, kernel: int, stride: int, padding: int, bias: bool = False,
    init: str = "kaiming",
) -> nn.Conv2d:
    """A 64-channel stem conv; ``init`` ``kaiming`` re-draws the weight as torchvision's ResNet
    does (normal, fan_out), ``pytorch`` keeps ``nn.Conv2d``'s default initialisation."""
    conv = nn.Conv2d(in_channels, 64, kernel, stride=stride, padding=padding, bias=bias)
    if init == "kaiming":
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)
    return conv


def resnet_backbone(
    name: str = "resnet18",
    stem: str = "imagenet",
    in_channels: int = 3,
    *,
    stem_padding: int | None = None,
    stem_bias: bool = False,
    stem_init: str = "kaiming",
    fc_dim: int = 0,
) -> tuple[nn.Module, int]:
    """Build a randomly initialised torchvision ResNet without its classifier (``fc_dim`` 0) or
    with a ``Linear(feat, fc_dim)`` classifier kept as the last layer.

    Returns ``(module, out_dim)`` with ``module(x)`` of shape (N, out_dim) for x (N, C, H, W);
    ``out_dim`` is ``fc_dim`` when positive, else the pooled feature size.
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
    if stem_init not in STEM_INITS:
        raise ConfigError(
            f"Unknown stem initialisation {stem_init!r}. Choose 'kaiming' (torchvision's) or "
            "'pytorch' (nn.Conv2d's default, as in recipes that replace the stem conv)."
        )
    if (stem_padding is not None and stem_padding < 0) or fc_dim < 0:
        raise ConfigError(
            f"stem_padding ({stem_padding}) and fc_dim ({fc_dim}) must be >= 0 (stem_padding "
            "null: the stem's standard padding; fc_dim 0: no classifier layer)."
        )
    model = _RESNETS[name](weights=None)
    feat_dim = model.fc.in_features
    kernel, stride, padding = _STEMS[stem]
    custom = stem_padding is not None or stem_bias or stem_init != "kaiming"
    if stem != "imagenet" or in_channels != 3 or custom:
        padding = padding if stem_padding is None else stem_padding
        model.conv1 = _stem_conv(in_channels, kernel, stride, padding, stem_bias, stem_init)
    if stem != "imagenet":
        model.maxpool = nn.Identity()
    if fc_dim:
        model.fc = nn.Linear(feat_dim, fc_dim)
        return model, fc_dim
    model.fc = nn.Identity()
    return model, feat_dim
