"""VICReg (Bardes, Ponce & LeCun, 2022) on the shared joint-embedding pipeline.

With projections z_a, z_b (N, d) of two views (see :mod:`selfsup.losses.vicreg`):

    loss = lambda * mean (z_a - z_b)^2                       (invariance)
         + mu * (v(z_a) + v(z_b)) / 2,  v(z) = mean_k relu(gamma - sqrt(Var z_k + eps))
         + nu * (c(z_a) + c(z_b)),      c(z) = sum_{k != l} Cov(z)_kl^2 / d

with lambda = mu = 25, nu = 1, eps = 1e-4 (facebookresearch/vicreg's convention: the variance
term is the MEAN over the two views; recipes that SUM the views' hinges with weight w, such as
augustwester/vicreg and solo-learn, are ``var_weight = 2 w``) and an expander
(Linear-BN-ReLU) x 2 + Linear without last bias (``proj_last_bias`` adds it).

ResNet backbone variants of released recipes (ResNet backbones only): ``stem_padding``,
``stem_bias``, ``stem_init`` of the stem conv and ``backbone_fc`` (a Linear kept after the pooled
features; the representation h is then its output), see :mod:`selfsup.nets.resnet`.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from selfsup.errors import ConfigError
from selfsup.losses.vicreg import vicreg_loss
from selfsup.methods import register
from selfsup.methods.joint_embedding import JointEmbedding, JointEmbeddingConfig
from selfsup.nets.factory import build_encoder
from selfsup.nets.resnet import STEM_INITS


@dataclass
class VICRegConfig(JointEmbeddingConfig):
    """Loss weights: ``inv_weight`` (lambda), ``var_weight`` (mu, on the mean of the two views'
    hinges), ``cov_weight`` (nu); ``gamma`` the target std, ``var_eps`` the epsilon under the
    square root (0: the plain standard deviation). ``proj_last_bias``: bias on the last projector
    layer. ResNet options: ``stem_padding`` (null: the stem's standard padding), ``stem_bias``,
    ``stem_init`` (kaiming | pytorch), ``backbone_fc`` (0: none)."""

    inv_weight: float = 25.0
    var_weight: float = 25.0
    cov_weight: float = 1.0
    gamma: float = 1.0
    var_eps: float = 1e-4
    proj_last_bias: bool = False
    stem_padding: int | None = None
    stem_bias: bool = False
    stem_init: str = "kaiming"
    backbone_fc: int = 0

    def validate(self) -> None:
        super().validate()
        self.check_weights(inv_weight=self.inv_weight, var_weight=self.var_weight,
                           cov_weight=self.cov_weight, gamma=self.gamma, var_eps=self.var_eps)
        if self.stem_init not in STEM_INITS:
            raise ConfigError(
                f"model.stem_init {self.stem_init!r} is unknown; use one of "
                f"{', '.join(STEM_INITS)}."
            )
        if (self.stem_padding is not None and self.stem_padding < 0) or self.backbone_fc < 0:
            raise ConfigError(
                f"model.stem_padding ({self.stem_padding}) and model.backbone_fc "
                f"({self.backbone_fc}) must be >= 0 (null / 0 for the standard ResNet)."
            )

    def resnet_options(self) -> dict:
        """The options that differ from the standard ResNet backbone (empty when none do)."""
        options = {"stem_padding": self.stem_padding, "stem_bias": self.stem_bias,
                   "stem_init": self.stem_init, "fc_dim": self.backbone_fc}
        standard = {"stem_padding": None, "stem_bias": False, "stem_init": "kaiming", "fc_dim": 0}
        return {k: v for k, v in options.items() if v != standard[k]}


@register
class VICReg(JointEmbedding):
    """Variance-invariance-covariance regularisation of two views' embeddings."""

    name = "vicreg"
    config_class = VICRegConfig

    @property
    def projector_last_bias(self) -> bool:  # type: ignore[override]
        return bool(self.config.model.proj_last_bias)

    def build_backbone(self) -> tuple[nn.Module, int]:
        cfg = self.config.model
        options = cfg.resnet_options()
        if not options:
            return super().build_backbone()
        if not cfg.backbone.startswith("resnet"):
            names = ", ".join("model." + ("backbone_fc" if k == "fc_dim" else k) for k in options)
            raise ConfigError(
                f"{names} only apply to ResNet backbones, but model.backbone is "
                f"{cfg.backbone!r}. Use resnet18/34/50 or leave them at their defaults."
            )
        return build_encoder(cfg.backbone, self.info.image_shape, None, resnet_options=options)

    def pair_loss(self, z_a: Tensor, z_b: Tensor) -> dict[str, Tensor]:
        cfg = self.config.model
        return vicreg_loss(z_a, z_b, cfg.inv_weight, cfg.var_weight, cfg.cov_weight, cfg.gamma,
                           cfg.var_eps, gather_distributed=cfg.gather_distributed)
