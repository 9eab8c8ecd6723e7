"""Shared body of the joint-embedding methods (VICReg, BYOL, SimCLR, Barlow Twins, MoCo-SimCLR).

Pipeline for a uint8 batch x of N images:

    x_a, x_b = t_a(x), t_b(x)            two augmented views (SimCLR-style augmentations)
    h_v = f(x_v)                          backbone f: the representation (what probes see)
    z_v = g(h_v)                          projector g: (Linear-BN-ReLU) x (k-1) + Linear
    loss = L(z_a, z_b)                    the method's loss (the only thing subclasses change)

The views go through the networks one at a time, so batch-norm statistics are per view as in the
reference implementations; ``concat_views: true`` instead passes both views as ONE batch
(f and g see ``cat(x_a, x_b)``: batch-norm statistics over 2N samples, as augustwester/vicreg's
``model.py:41-43``). BYOL adds a predictor and an EMA target network on top of this.

``backbone: auto`` is the small conv net of :mod:`selfsup.nets.conv` for images up to 64 px and a
ResNet-18 (with the CIFAR or STL stem) above; the CIFAR-10 / STL-10 presets name ``resnet18``;
``conv64`` is the 64x64 conv net of the soft-discretization experiments (hidden size 128).

Soft-discretization bottleneck (``encode_method``, see :mod:`selfsup.nets.bottleneck`): with
softmax, gumbel or vq the projector input is a message instead of h,

    e_v = E(h_v)                          embedder: Linear(h -> L*V, no bias)-BN (optional MLP)
    m_v, aux = B(e_v)                     bridge: group softmax / Gumbel softmax / VQ
    z_v = g(m_v)                          projector as above (``proj_last_bn``: no bias + BN)
    loss = L(z_a, z_b) + mean_v aux_v     (aux: the VQ commitment term, logged as vq_commitment)

``continuous`` (the default) has no bridge and, with ``embedder: auto``, no embedder: exactly the
pipeline above. ``code(x)`` is the argmax one-hot per group of the bridge, (N, L*V).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from selfsup.data.base import DataInfo
from selfsup.errors import ConfigError
from selfsup.methods.base import Method
from selfsup.nets.bottleneck import (
    ENCODE_METHODS,
    Bridge,
    build_bridge,
    build_embedder,
    embed_dim,
)
from selfsup.nets.factory import build_encoder
from selfsup.nets.heads import mlp_head

BACKBONES = ("auto", "conv", "conv64", "mlp", "resnet18", "resnet34", "resnet50")
EMBEDDERS = ("auto", "none", "linear", "mlp")


@dataclass
class JointEmbeddingConfig:
    """Backbone and projector of a joint-embedding method.

    ``backbone``: one of auto, conv, conv64, mlp, resnet18, resnet34, resnet50 (auto: conv up to
    64 px, resnet18 above). ``width``: channels of the first conv stage (conv64: 32 gives hidden
    size 128); ``hidden``: MLP backbone widths. ``proj_dims``: projector layer sizes, hidden sizes
    then output size; ``proj_last_bn``: last projector layer without bias, followed by BatchNorm.
    ``gather_distributed``: compute batch statistics of the loss over all devices.
    ``concat_views``: both views through the networks as one concatenated batch (batch norm over
    the 2N views); methods with their own training step (BYOL, MoCo-SimCLR) refuse it.

    Bottleneck: ``encode_method`` continuous | softmax | gumbel | vq; ``message_size`` L (groups),
    ``vocab_size`` V (symbols per group), ``tau`` (None: 1 for softmax, sqrt(V) for gumbel),
    ``hard`` (straight-through one-hot), vq: ``code_dim`` d, ``commitment`` beta, ``vq_decay``
    (EMA k-means). ``embedder``: auto (none for continuous, linear otherwise) | none | linear |
    mlp (hidden sizes ``embed_hidden``); it outputs L*V (L*d for vq), or ``embed_dim`` for
    continuous (0: L*V).
    """

    backbone: str = "auto"
    width: int = 32
    hidden: list[int] = field(default_factory=lambda: [1024, 512])
    proj_dims: list[int] = field(default_factory=lambda: [1024, 1024, 1024])
    proj_last_bn: bool = False
    gather_distributed: bool = True
    encode_method: str = "continuous"
    message_size: int = 128
    vocab_size: int = 16
    tau: float | None = None
    hard: bool = False
    code_dim: int = 8
    commitment: float = 0.25
    vq_decay: float = 0.85
    embedder: str = "auto"
    embed_hidden: list[int] = field(default_factory=lambda: [1024])
    embed_dim: int = 0
    concat_views: bool = False

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
        self.validate_bottleneck()

    def validate_bottleneck(self) -> None:
        """Raise ConfigError for an unknown encode method / embedder or out-of-range sizes."""
        if self.encode_method not in ENCODE_METHODS:
            raise ConfigError(
                f"model.encode_method {self.encode_method!r} is unknown. Use one of "
                f"{', '.join(ENCODE_METHODS)} (--encode-method softmax for the soft bottleneck)."
            )
        if self.embedder not in EMBEDDERS:
            raise ConfigError(
                f"model.embedder {self.embedder!r} is unknown. Use one of {', '.join(EMBEDDERS)}."
            )
        if self.encode_method != "continuous" and self.embedder == "none":
            raise ConfigError(
                f"model.encode_method {self.encode_method} needs an embedder producing the "
                "message logits; set model.embedder to linear, mlp or auto."
            )
        if self.message_size < 1 or self.vocab_size < 2 or self.code_dim < 1:
            raise ConfigError(
                f"model.message_size ({self.message_size}) and model.code_dim ({self.code_dim}) "
                f"must be >= 1 and model.vocab_size ({self.vocab_size}) >= 2 (defaults 128, 8, 16)."
            )
        if self.tau is not None and not self.tau > 0:
            raise ConfigError(f"model.tau must be > 0 (or null for the default), got {self.tau}.")
        if self.commitment < 0 or not 0.0 <= self.vq_decay < 1.0:
            raise ConfigError(
                f"model.commitment must be >= 0 and model.vq_decay in [0, 1), got "
                f"{self.commitment} and {self.vq_decay} (defaults 0.25 and 0.85)."
            )
        if self.embed_dim < 0 or any(h < 1 for h in self.embed_hidden):
            raise ConfigError(
                f"model.embed_dim ({self.embed_dim}) must be >= 0 and model.embed_hidden "
                f"({list(self.embed_hidden)}) positive layer sizes."
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
    """Backbone (+ embedder and bridge) + projector on two views; subclasses implement
    :meth:`pair_loss`."""

    projector_last_bias: bool = True

    def __init__(self, config: Any, info: DataInfo) -> None:
        super().__init__(config, info)
        cfg = config.model
        cfg.backbone = resolve_backbone(cfg.backbone, info.image_shape)
        if cfg.concat_views and type(self).training_loss is not JointEmbedding.training_loss:
            raise ConfigError(
                f"model.concat_views is not supported by {self.name}, whose training step "
                "passes the views through separate networks; set it to false."
            )
        self.backbone, self.feature_dim = self.build_backbone()
        self.embedder, self.bridge = self.build_bottleneck(self.feature_dim)
        self.projector = self.build_projector(self.bridge.out_dim)
        self.init_online_probe(self.feature_dim)

    @classmethod
    def default_config(cls, info: DataInfo) -> dict[str, Any]:
        return {"augment": simclr_augmentations(info)}

    def build_backbone(self) -> tuple[nn.Module, int]:
        """(backbone f, feature size) for ``model.backbone`` (VICReg adds ResNet stem options)."""
        cfg = self.config.model
        return build_encoder(
            cfg.backbone, self.info.image_shape, None, list(cfg.hidden), cfg.width
        )

    def build_bottleneck(self, in_dim: int) -> tuple[nn.Module, Bridge]:
        """(embedder, bridge) for ``model.encode_method`` on backbone features of size in_dim."""
        cfg = self.config.model
        kind = cfg.embedder
        if kind == "auto":
            kind = "none" if cfg.encode_method == "continuous" else "linear"
        if cfg.encode_method == "continuous":
            width = cfg.embed_dim or cfg.message_size * cfg.vocab_size
        else:
            width = embed_dim(cfg.encode_method, cfg.message_size, cfg.vocab_size, cfg.code_dim)
        if kind == "none":
            embedder: nn.Module = nn.Identity()
            width = in_dim
        else:
            hidden = list(cfg.embed_hidden) if kind == "mlp" else []
            embedder = build_embedder(in_dim, width, hidden)
        bridge = build_bridge(
            cfg.encode_method, width, cfg.message_size, cfg.vocab_size,
            cfg.tau, cfg.hard, cfg.code_dim, cfg.commitment, cfg.vq_decay,
        )
        return embedder, bridge

    def build_projector(self, in_dim: int) -> nn.Module:
        """``(Linear-BN-ReLU)`` per hidden size of ``proj_dims``, then ``Linear(proj_dims[-1])``
        (without bias and followed by BatchNorm1d when ``proj_last_bn``)."""
        cfg = self.config.model
        dims = list(cfg.proj_dims)
        if cfg.proj_last_bn:
            return mlp_head(in_dim, dims[:-1], dims[-1], last_bn=True, last_bias=False,
                            last_bn_affine=True)
        return mlp_head(in_dim, dims[:-1], dims[-1], last_bias=self.projector_last_bias)

    def encode(self, x: Tensor) -> Tensor:
        return self.backbone(x).float()

    @torch.no_grad()
    def code(self, x: Tensor) -> Tensor | None:
        """Argmax one-hot per group of the bridge, float (N, L*V); None when continuous."""
        if not self.bridge.discrete:
            return None
        return self.bridge.code(self.embedder(self.backbone(x)).float())

    def project(self, h: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """z = g(B(E(h))) and the bridge's auxiliary loss terms."""
        message, aux = self.bridge(self.embedder(h))
        return self.projector(message), aux

    @staticmethod
    def add_aux(terms: dict[str, Tensor], *auxes: dict[str, Tensor]) -> dict[str, Tensor]:
        """Add the views' mean of each auxiliary term to ``loss`` and log it by name."""
        terms = dict(terms)
        for key in auxes[0] if auxes else {}:
            value = torch.stack([a[key].float() for a in auxes]).mean()
            terms["loss"] = terms["loss"] + value
            terms[key] = value
        return terms

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
        if self.config.model.concat_views:  # one batch: BN statistics over both views
            h = self.backbone(torch.cat([x_a, x_b]))
            z, aux = self.project(h)
            z_a, z_b = z.chunk(2)
            terms = self.add_aux(self.pair_loss(z_a.float(), z_b.float()), aux)
            return {**terms, "features": h[: x_a.shape[0]].detach()}
        h_a = self.backbone(x_a)
        h_b = self.backbone(x_b)
        z_a, aux_a = self.project(h_a)
        z_b, aux_b = self.project(h_b)
        terms = self.add_aux(self.pair_loss(z_a.float(), z_b.float()), aux_a, aux_b)
        return {**terms, "features": h_a.detach()}
