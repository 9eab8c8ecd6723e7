"""Shared body of the joint-embedding methods (VICReg, BYOL, SimCLR, Barlow Twins, MoCo-SimCLR).

Pipeline for a uint8 batch x of N images:

    x_a, x_b = t_a(x), t_b(x)            two augmented views (SimCLR-style augmentations)
    h_v = f(x_v)                          backbone f: the representation (what probes see)
    z_v = g(h_v)                          projector g: (Linear-BN-ReLU) x (k-1) + Linear
    loss = L(views)                       the method's loss (the only thing subclasses change)

:meth:`JointEmbedding.forward_views` is the one place the views go through the networks: one view
at a time, so batch-norm statistics are per view as in the reference implementations, or, with
``concat_views: true``, both views as ONE batch (f, g and a target see ``cat(x_a, x_b)``:
batch-norm statistics over 2N samples, as augustwester/vicreg's ``model.py:41-43`` and the
soft-discretization MoCo-SimCLR's ``--pass_views_together``). It returns a :class:`Views`
record. A symmetric method implements ``pair_loss(z_a, z_b)``; an asymmetric one (BYOL,
MoCo-SimCLR) overrides ``views_loss(views)`` only. Methods with a target (momentum) network
declare its momentum in ``momentum_bounds()``: the target, a
:class:`~selfsup.nets.ema.MomentumTarget` of backbone, embedder, bridge and projector, is built
here, its projections z'_v are in ``views.target``, and it is updated after every optimizer step.

``backbone: auto`` is the small conv net of :mod:`selfsup.nets.conv` for images up to 64 px and a
ResNet-18 (with the CIFAR or STL stem) above; the CIFAR-10 / STL-10 presets name ``resnet18``;
``conv64`` is the released 64x64 conv net of the soft-discretization experiments
(:mod:`selfsup.nets.conv64`; ``width`` 64, ``feature_dim`` its hidden size).

Soft-discretization bottleneck (``encode_method``, see :mod:`selfsup.nets.bottleneck`): with
softmax, gumbel or vq the projector input is a message instead of h,

    e_v = E(h_v)                          embedder: Linear(h -> L*V, no bias)-BN (optional MLP;
                                          ``embed_bn`` false drops the BN)
    m_v, aux = B(e_v)                     bridge: group softmax / Gumbel softmax / VQ
    z_v = g(m_v)                          projector as above (``proj_last_bn``: no bias + BN)
    loss = L(views) + mean_v aux_v        (aux: the VQ commitment term, logged as vq_commitment)

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
    COMMITMENT_SCALES,
    ENCODE_METHODS,
    VQ_UPDATES,
    Bridge,
    build_bridge,
    build_embedder,
    embed_dim,
)
from selfsup.nets.ema import MomentumTarget
from selfsup.nets.factory import build_encoder
from selfsup.nets.heads import mlp_head

BACKBONES = ("auto", "conv", "conv64", "mlp", "resnet18", "resnet34", "resnet50")
EMBEDDERS = ("auto", "none", "linear", "mlp")
PREDICTORS = ("none", "linear", "mlp")
DEFAULT_WIDTH = {"conv64": 64}  # other conv backbones: 32


@dataclass
class JointEmbeddingConfig:
    """Backbone and projector of a joint-embedding method.

    ``backbone``: one of auto, conv, conv64, mlp, resnet18, resnet34, resnet50 (auto: conv up to
    64 px, resnet18 above). ``width``: channels of the first conv stage (0: the backbone's
    default, 64 for conv64 (the released h_dim), 32 for conv); ``feature_dim``: conv64's output
    size (the released hidden_size); ``hidden``: MLP backbone widths. ``proj_dims``: projector
    layer sizes, hidden sizes then output size; ``proj_last_bn``: last projector layer without
    bias, followed by BatchNorm. ``gather_distributed``: compute batch statistics of the loss
    over all devices. ``concat_views``: both views through the networks (and the target) as one
    concatenated batch (batch norm over the 2N views).

    Bottleneck: ``encode_method`` continuous | softmax | gumbel | vq; ``message_size`` L (groups),
    ``vocab_size`` V (symbols per group), ``tau`` (None: 1), ``hard`` (softmax / gumbel:
    straight-through one-hot; vq: nearest code, else the released stochastic VQ), vq:
    ``code_dim`` d, ``commitment`` beta, ``commitment_scale`` released | mean, ``vq_update``
    released | kmeans, ``vq_decay`` gamma. ``embedder``: auto (none for continuous, linear
    otherwise) | none | linear | mlp (hidden sizes ``embed_hidden``; ``embed_bn``: BatchNorm
    after the last layer); it outputs L*V (L*d for vq), or ``embed_dim`` for continuous (0: L*V).
    """

    backbone: str = "auto"
    width: int = 0
    feature_dim: int = 128
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
    commitment_scale: str = "released"
    vq_update: str = "released"
    vq_decay: float = 0.85
    embedder: str = "auto"
    embed_hidden: list[int] = field(default_factory=lambda: [1024])
    embed_dim: int = 0
    embed_bn: bool = True
    concat_views: bool = False

    def validate(self) -> None:
        if self.backbone not in BACKBONES:
            raise ConfigError(
                f"model.backbone {self.backbone!r} is unknown. Use one of {', '.join(BACKBONES)} "
                "('auto' picks a small conv net for images up to 64 px and resnet18 above)."
            )
        if self.width < 0 or self.feature_dim < 1 or any(h < 1 for h in self.hidden):
            raise ConfigError(
                f"model.width ({self.width}; 0: the backbone's default), model.feature_dim "
                f"({self.feature_dim}) and model.hidden ({list(self.hidden)}) must be positive "
                "layer sizes."
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
        if self.vq_update not in VQ_UPDATES or self.commitment_scale not in COMMITMENT_SCALES:
            raise ConfigError(
                f"model.vq_update ({self.vq_update!r}) must be one of {', '.join(VQ_UPDATES)} and "
                f"model.commitment_scale ({self.commitment_scale!r}) one of "
                f"{', '.join(COMMITMENT_SCALES)}."
            )
        if self.encode_method == "vq" and self.vq_update == "kmeans" and not self.hard:
            raise ConfigError(
                "model.vq_update kmeans quantizes to the nearest code: set model.hard true (the "
                "stochastic VQ, hard false, exists only with vq_update released)."
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


@dataclass
class Views:
    """Both augmented views after the networks: inputs ``x``, backbone features ``h``,
    projections ``z`` (float), the bridge's auxiliary terms ``aux`` per view, and the target
    network's projections ``target`` (no gradient; None for methods without a target)."""

    x: tuple[Tensor, Tensor]
    h: tuple[Tensor, Tensor]
    z: tuple[Tensor, Tensor]
    aux: tuple[dict[str, Tensor], dict[str, Tensor]]
    target: tuple[Tensor, Tensor] | None = None


class JointEmbedding(Method):
    """Backbone (+ embedder and bridge) + projector on two views; subclasses implement
    :meth:`pair_loss`, or :meth:`views_loss` (and :meth:`momentum_bounds` for a target)."""

    projector_last_bias: bool = True
    ONLINE = ("backbone", "embedder", "bridge", "projector")  # what a target network copies

    def __init__(self, config: Any, info: DataInfo) -> None:
        super().__init__(config, info)
        cfg = config.model
        cfg.backbone = resolve_backbone(cfg.backbone, info.image_shape)
        cfg.width = cfg.width or DEFAULT_WIDTH.get(cfg.backbone, 32)
        self.backbone, self.feature_dim = self.build_backbone()
        self.embedder, self.bridge = self.build_bottleneck(self.feature_dim)
        self.projector = self.build_projector(self.bridge.out_dim)
        bounds = self.momentum_bounds()
        self.target: MomentumTarget | None = None
        if bounds is not None:
            self.target = MomentumTarget(self.online_networks(), *bounds)
        self.init_online_probe(self.feature_dim)

    @classmethod
    def default_config(cls, info: DataInfo) -> dict[str, Any]:
        return {"augment": simclr_augmentations(info)}

    # ------------------------------------------------------------------------------- networks
    def build_backbone(self) -> tuple[nn.Module, int]:
        """(backbone f, feature size) for ``model.backbone`` (VICReg adds ResNet stem options)."""
        cfg = self.config.model
        return build_encoder(
            cfg.backbone, self.info.image_shape, None, list(cfg.hidden), cfg.width,
            feature_dim=cfg.feature_dim,
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
            embedder = build_embedder(in_dim, width, hidden, batch_norm=cfg.embed_bn)
        bridge = build_bridge(
            cfg.encode_method, width, cfg.message_size, cfg.vocab_size,
            cfg.tau, cfg.hard, cfg.code_dim, cfg.commitment, cfg.vq_decay, cfg.vq_update,
            cfg.commitment_scale,
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

    @staticmethod
    def build_predictor(kind: str, dim: int, hidden: int) -> nn.Module:
        """Predictor on the projections: ``none`` (identity), ``linear`` (Linear(d, d) without
        bias, the soft-discretization code's default) or ``mlp`` (Linear(d, hidden)-BN-ReLU-
        Linear(hidden, d), BYOL's)."""
        if kind not in PREDICTORS:
            raise ConfigError(
                f"model.predictor {kind!r} is unknown; use one of {', '.join(PREDICTORS)}."
            )
        if kind == "none":
            return nn.Identity()
        if kind == "linear":
            return nn.Linear(dim, dim, bias=False)
        return mlp_head(dim, [hidden], dim)

    def online_networks(self) -> dict[str, nn.Module]:
        """The online sub-networks a target network holds EMA copies of."""
        return {name: getattr(self, name) for name in self.ONLINE}

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

    # --------------------------------------------------------------------------- target network
    def momentum_bounds(self) -> tuple[float, float] | None:
        """(base, final) momentum of the target network (equal: constant), or None for methods
        without one (the default)."""
        return None

    def target_momentum(self, step: int) -> float:
        """m_k of the target network at optimizer step k."""
        assert self.target is not None
        return self.target.momentum(step, self.total_steps())

    @torch.no_grad()
    def target_projection(self, x: Tensor) -> Tensor:
        """z' = g'(B'(E'(f'(x)))) from the target network, without gradient."""
        assert self.target is not None
        t = self.target
        message, _ = t["bridge"](t["embedder"](t["backbone"](x)))
        return t["projector"](message).float()

    # ---------------------------------------------------------------------------------- loss
    @staticmethod
    def add_aux(terms: dict[str, Tensor], *auxes: dict[str, Tensor]) -> dict[str, Tensor]:
        """Add the views' mean of each auxiliary term to ``loss`` and log it by name."""
        terms = dict(terms)
        for key in auxes[0] if auxes else {}:
            value = torch.stack([a[key].float() for a in auxes]).mean()
            terms["loss"] = terms["loss"] + value
            terms[key] = value
        return terms

    def train_views(self) -> int:
        return 2

    def two_views(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Two augmented views (N, C, H, W) each, from ``self.views`` (sample-major)."""
        views = self.views(images, 2)
        views = views.view(images.shape[0], 2, *views.shape[1:])
        return views[:, 0], views[:, 1]

    def forward_views(self, x_a: Tensor, x_b: Tensor) -> Views:
        """Both views through the online network, one view at a time (per-view batch-norm
        statistics) or, with ``concat_views``, as one batch; then through the target network
        (the same way) when the method has one."""
        target = None
        if self.config.model.concat_views:  # one batch: BN statistics over both views
            h = self.backbone(torch.cat([x_a, x_b]))
            z, aux = self.project(h)
            (h_a, h_b), (z_a, z_b) = h.chunk(2), z.chunk(2)
            aux_a = aux_b = aux  # already the mean over both views
            if self.target is not None:
                target = self.target_projection(torch.cat([x_a, x_b])).chunk(2)
        else:
            h_a = self.backbone(x_a)
            z_a, aux_a = self.project(h_a)
            h_b = self.backbone(x_b)
            z_b, aux_b = self.project(h_b)
            if self.target is not None:
                target = (self.target_projection(x_a), self.target_projection(x_b))
        return Views((x_a, x_b), (h_a, h_b), (z_a.float(), z_b.float()), (aux_a, aux_b),
                     None if target is None else tuple(target))

    def pair_loss(self, z_a: Tensor, z_b: Tensor) -> dict[str, Tensor]:
        """The method's loss on the two projections; returns ``{"loss", <terms>}``."""
        raise NotImplementedError

    def views_loss(self, views: Views) -> dict[str, Tensor]:
        """The method's loss on both views (default: :meth:`pair_loss` of the projections)."""
        return self.pair_loss(*views.z)

    def training_loss(self, images: Tensor) -> dict[str, Tensor]:
        views = self.forward_views(*self.two_views(images))
        terms = self.add_aux(self.views_loss(views), *views.aux)
        if self.target is not None:
            terms["momentum"] = views.h[0].new_full(
                (), self.target_momentum(self.global_step), dtype=torch.float32)
        return {**terms, "features": views.h[0].detach()}

    # ------------------------------------------------------------------------- after each step
    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any,
                       optimizer_closure: Any = None) -> None:
        """Optimizer step k, then :meth:`after_step` (k).

        Done here rather than in ``on_train_batch_end`` because Lightning runs callbacks' batch-end
        hooks (e.g. the interrupt checkpoint) before the module's, which would save a target one
        update behind the online network.
        """
        step = self.global_step
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        self.after_step(step)

    def after_step(self, step: int) -> None:
        """After optimizer step k: the target's EMA update ``xi <- m_k xi + (1 - m_k) theta``."""
        if self.target is not None:
            self.target.move_towards(self.online_networks(), self.target_momentum(step))
