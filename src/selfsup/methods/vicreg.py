"""VICReg (Bardes, Ponce & LeCun, 2022) on the shared joint-embedding pipeline.

With projections z_a, z_b (N, d) of two views (see :mod:`selfsup.losses.vicreg`):

    loss = lambda * mean (z_a - z_b)^2                       (invariance)
         + mu * (v(z_a) + v(z_b)) / 2,  v(z) = mean_k relu(gamma - sqrt(Var z_k + eps))
         + nu * (c(z_a) + c(z_b)),      c(z) = sum_{k != l} Cov(z)_kl^2 / d

with lambda = mu = 25, nu = 1 and an expander (Linear-BN-ReLU) x 2 + Linear without last bias.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from selfsup.losses.vicreg import vicreg_loss
from selfsup.methods import register
from selfsup.methods.joint_embedding import JointEmbedding, JointEmbeddingConfig


@dataclass
class VICRegConfig(JointEmbeddingConfig):
    """Loss weights: ``inv_weight`` (lambda), ``var_weight`` (mu), ``cov_weight`` (nu)."""

    inv_weight: float = 25.0
    var_weight: float = 25.0
    cov_weight: float = 1.0
    gamma: float = 1.0

    def validate(self) -> None:
        super().validate()
        self.check_weights(inv_weight=self.inv_weight, var_weight=self.var_weight,
                           cov_weight=self.cov_weight, gamma=self.gamma)


@register
class VICReg(JointEmbedding):
    """Variance-invariance-covariance regularisation of two views' embeddings."""

    name = "vicreg"
    config_class = VICRegConfig
    projector_last_bias = False

    def pair_loss(self, z_a: Tensor, z_b: Tensor) -> dict[str, Tensor]:
        cfg = self.config.model
        return vicreg_loss(z_a, z_b, cfg.inv_weight, cfg.var_weight, cfg.cov_weight, cfg.gamma,
                           gather_distributed=cfg.gather_distributed)
