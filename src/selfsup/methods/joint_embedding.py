"""Shared body of the joint-embedding methods (VICReg, BYOL, SimCLR, Barlow Twins).

Pipeline for a uint8 batch x of N images:

    x_a, x_b = t_a(x), t_b(x)            two augmented views (SimCLR-style augmentations)
    h_v = f(x_v)                          backbone f: the representation (what probes see)
    z_v = g(h_v)                          projector g: (Linear-BN-ReLU) x (k-1) + Linear
    loss = L(z_a, z_b)                    the method's loss (the only thing subclasses change)

The views go through the networks one at a time, so batch-norm statistics are per view as in the
reference implementations. BYOL adds a predictor and an EMA target network on top of this.

``backbone: auto`` is the small conv net of :mod:`selfsup.nets.conv` for images up to 64 px and a
ResNet-18 (with the CIFAR or STL stem) above; the CIFAR-10 / STL-10 presets name ``resnet18``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from selfsup.data.base import DataInfo
from selfsup.errors import ConfigError
from selfsup.methods.base import Method
from selfsup.nets.factory import build_encoder
from selfsup.nets.heads import mlp_head

BACKBONES = ("auto", "conv", "mlp", "resnet18", "resnet34", "resnet50")


@dataclass
class JointEmbeddingConfig:
    """Backbone and projector of a joint-embedding method.

    ``backbone``: one of auto, conv, mlp, resnet18, resnet34, resnet50 (auto: conv up to 64 px,
    resnet18 above). ``width``: channels of the first conv stage; ``hidden``: MLP backbone
    widths. ``proj_dims``: projector layer sizes, hidden sizes then output size.
    ``gather_distributed``: compute batch statistics of the loss over all devices.
    """

    backbone: str = "auto"
    width: int = 32
    hidden: list[int] = field(default_factory=lambda: [1024, 512])
    proj_dims: list[int] = field(default_factory=lambda: [1024, 1024, 1024])
    gather_distributed: bool = True

    def validate(self) -> None:
        if self.backbone not in BACKBONES:
            raise ConfigError(
                f"model.backbone {self.backbone!r} is unknown. Use one of {', '.join(BACKBONES)} "
                "('auto' picks a small conv net for images up to 64 px and resnet18 above)."
            )
        if self.width < 1 or any(h < 1 for h in self.hidden):
            raise ConfigError(
                f"model.width ({self.width}) and model.hidden ({list(self.hidden)}) must be "
                "positive layer sizes."
            )
        if not self.proj_dims or any(d < 1 for d in self.proj_dims):
            raise ConfigError(
                f"model.proj_dims must be a non-empty list of positive sizes (hidden sizes, then "
                f"the output size), got {list(self.proj_dims)}, e.g. [1024, 1024, 1024]."
            )

    def check_weights(self, **weights: float) -> None:
        """Raise ConfigError for a negative loss weight."""
        for name, value in weights.items():
            if value < 0:
                raise ConfigError(f"model.{name} must be >= 0, got {value}.")


def resolve_backbone(kind: str, image_shape: tuple[int, int, int]) -> str:
    """``auto`` -> ``conv`` for images up to 64 px, ``resnet18`` above; other names unchanged."""
    if kind != "auto":
        return kind
    return "conv" if max(image_shape[1:]) <= 64 else "resnet18"


def simclr_augmentations(info: DataInfo) -> dict[str, Any]:
    """SimCLR-style view augmentations fitted to the image size and channel count.

    Random resized crop with scale [s, 1] (s = 0.5 up to 16 px, 0.2 below 64 px, 0.08 from 64 px);
    for RGB: horizontal flip 0.5, colour jitter (0.4, 0.4, 0.2, 0.1) with p = 0.8 and grayscale
    0.2 (1-channel, digit-like data gets neither flips nor colour changes); Gaussian blur with
    p = 0.5, sigma in [0.1, 2] from 64 px.
    """
    c, h, w = info.image_shape
    side = max(h, w)
    rgb = c == 3
    low = 0.5 if side <= 16 else 0.2 if side < 64 else 0.08
    aug: dict[str, Any] = {"crop_scale": [low, 1.0], "hflip": 0.5 if rgb else 0.0}
    if rgb:
        aug.update(jitter=[0.4, 0.4, 0.2, 0.1], jitter_prob=0.8, grayscale=0.2)
    if side >= 64:
        aug.update(blur_prob=0.5, blur_sigma=[0.1, 2.0])
    return aug


class JointEmbedding(Method):
    """Backbone + projector on two views; subclasses implement :meth:`pair_loss`."""

    projector_last_bias: bool = True

    def __init__(self, config: Any, info: DataInfo) -> None:
        super().__init__(config, info)
        cfg = config.model
        cfg.backbone = resolve_backbone(cfg.backbone, info.image_shape)
        self.backbone, self.feature_dim = build_encoder(
            cfg.backbone, info.image_shape, None, list(cfg.hidden), cfg.width
        )
        self.projector = self.build_projector(self.feature_dim)
        self.init_online_probe(self.feature_dim)

    @classmethod
    def default_config(cls, info: DataInfo) -> dict[str, Any]:
        return {"augment": simclr_augmentations(info)}

    def build_projector(self, in_dim: int) -> nn.Module:
        """``(Linear-BN-ReLU)`` per hidden size of ``proj_dims``, then ``Linear(proj_dims[-1])``."""
        dims = list(self.config.model.proj_dims)
        return mlp_head(in_dim, dims[:-1], dims[-1], last_bias=self.projector_last_bias)

    def encode(self, x: Tensor) -> Tensor:
        return self.backbone(x).float()

    def two_views(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Two augmented views (N, C, H, W) each, from ``self.views`` (sample-major)."""
        views = self.views(images, 2)
        views = views.view(images.shape[0], 2, *views.shape[1:])
        return views[:, 0], views[:, 1]

    def pair_loss(self, z_a: Tensor, z_b: Tensor) -> dict[str, Tensor]:
        """The method's loss on the two projections; returns ``{"loss", <terms>}``."""
        raise NotImplementedError

    def training_loss(self, images: Tensor) -> dict[str, Tensor]:
        x_a, x_b = self.two_views(images)
        h_a = self.backbone(x_a)
        h_b = self.backbone(x_b)
        z_a = self.projector(h_a).float()
        z_b = self.projector(h_b).float()
        terms = self.pair_loss(z_a, z_b)
        return {**terms, "features": h_a.detach()}
