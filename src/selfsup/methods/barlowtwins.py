"""Barlow Twins (Zbontar et al., 2021) on the shared joint-embedding pipeline.

With batch-standardised projections zhat_a, zhat_b (N, d) and C = zhat_a^T zhat_b / N:

    loss = scale_loss * (sum_k (1 - C_kk)^2 + lambda_offdiag * sum_{k != l} C_kl^2)

(see :mod:`selfsup.losses.barlowtwins`); projector (Linear-BN-ReLU) x 2 + Linear, no last bias.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from selfsup.losses.barlowtwins import barlow_twins_loss
from selfsup.methods import register
from selfsup.methods.joint_embedding import JointEmbedding, JointEmbeddingConfig


@dataclass
class BarlowTwinsConfig(JointEmbeddingConfig):
    """``lambda_offdiag`` weighs the redundancy term; ``scale_loss`` scales the whole loss."""

    proj_dims: list[int] = field(default_factory=lambda: [2048, 2048, 2048])
    lambda_offdiag: float = 5e-3
    scale_loss: float = 1.0

    def validate(self) -> None:
        super().validate()
        self.check_weights(lambda_offdiag=self.lambda_offdiag, scale_loss=self.scale_loss)


@register
class BarlowTwins(JointEmbedding):
    """Cross-correlation of two views' embeddings pushed towards the identity."""

    name = "barlowtwins"
    config_class = BarlowTwinsConfig
    projector_last_bias = False

    def pair_loss(self, z_a: Tensor, z_b: Tensor) -> dict[str, Tensor]:
        cfg = self.config.model
        return barlow_twins_loss(z_a, z_b, cfg.lambda_offdiag, cfg.scale_loss,
                                 gather_distributed=cfg.gather_distributed)
