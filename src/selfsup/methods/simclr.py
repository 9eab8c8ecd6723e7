"""SimCLR (Chen et al., 2020) on the shared joint-embedding pipeline.

With L2-normalised projections u of the 2N views and temperature t (see
:mod:`selfsup.losses.simclr`):

    loss = mean_i [ -u_i . u_pos(i) / t + log sum_{j != i} exp(u_i . u_j / t) ]   (NT-Xent)

projector Linear-BN-ReLU-Linear (default 2048 -> 128).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from selfsup.errors import ConfigError
from selfsup.losses.simclr import nt_xent_loss
from selfsup.methods import register
from selfsup.methods.joint_embedding import JointEmbedding, JointEmbeddingConfig


@dataclass
class SimCLRConfig(JointEmbeddingConfig):
    """``temperature`` t of the NT-Xent loss (> 0)."""

    proj_dims: list[int] = field(default_factory=lambda: [2048, 128])
    temperature: float = 0.1

    def validate(self) -> None:
        super().validate()
        if not self.temperature > 0:
            raise ConfigError(
                f"model.temperature must be > 0, got {self.temperature}. Typical values are 0.1 "
                "to 0.5."
            )


@register
class SimCLR(JointEmbedding):
    """Contrastive learning: each view must pick its partner among the 2N - 1 other views."""

    name = "simclr"
    config_class = SimCLRConfig

    def pair_loss(self, z_a: Tensor, z_b: Tensor) -> dict[str, Tensor]:
        cfg = self.config.model
        return nt_xent_loss(z_a, z_b, cfg.temperature, cfg.gather_distributed)
