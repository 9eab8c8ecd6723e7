"""BYOL (Grill et al., 2020) on the shared joint-embedding pipeline.

Online network: backbone f, projector g, predictor q; target network: EMA copies f', g' (the
shared :class:`~selfsup.nets.ema.MomentumTarget`). For views x_a, x_b with p_v = q(g(f(x_v)))
and z'_v = g'(f'(x_v)) (no gradient):

    loss = (2 - 2 cos(p_a, z'_b)) + (2 - 2 cos(p_b, z'_a))      (batch means, summed)

(``byol_loss: released``: ``-(cos(p_a, z'_b) + cos(p_b, z'_a)) / 2``, the soft-discretization
code's convention; the same minimiser with 4x smaller gradients). After every optimizer step k
the target moves towards the online weights with m_k rising from ``base_momentum`` to
``final_momentum`` on a cosine over the run (constant when equal).

With a bottleneck (``encode_method`` softmax / gumbel / vq) the online network is f, embedder E,
bridge B, projector g, predictor q, and the target holds EMA copies of f, E, B and g
(``target_tau`` sets a separate teacher temperature; None: the student's ``tau``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from selfsup.errors import ConfigError
from selfsup.losses.byol import CONVENTIONS, symmetric_byol_loss
from selfsup.methods import register
from selfsup.methods.joint_embedding import JointEmbedding, JointEmbeddingConfig, Views


@dataclass
class BYOLConfig(JointEmbeddingConfig):
    """``predictor`` mlp (hidden size ``pred_hidden``) | linear | none; target momentum from
    ``base_momentum`` to ``final_momentum`` on a cosine schedule; ``target_tau``: the target
    (teacher) bridge's temperature (None: ``tau``); ``byol_loss``: grill | released."""

    proj_dims: list[int] = field(default_factory=lambda: [4096, 256])
    predictor: str = "mlp"
    pred_hidden: int = 4096
    base_momentum: float = 0.99
    final_momentum: float = 1.0
    target_tau: float | None = None
    byol_loss: str = "grill"

    def validate(self) -> None:
        super().validate()
        if self.target_tau is not None and not self.target_tau > 0:
            raise ConfigError(f"model.target_tau must be > 0 (or null), got {self.target_tau}.")
        if self.pred_hidden < 1:
            raise ConfigError(f"model.pred_hidden must be >= 1, got {self.pred_hidden}.")
        if self.byol_loss not in CONVENTIONS:
            raise ConfigError(
                f"model.byol_loss {self.byol_loss!r} is unknown; use 'grill' (the paper: "
                "2 - 2 cos per direction, summed) or 'released' (-(cos_ab + cos_ba) / 2)."
            )
        if not 0.0 <= self.base_momentum <= self.final_momentum <= 1.0:
            raise ConfigError(
                f"BYOL needs 0 <= model.base_momentum <= model.final_momentum <= 1, got "
                f"{self.base_momentum} and {self.final_momentum}; the paper uses 0.99 and 1.0."
            )


@register
class BYOL(JointEmbedding):
    """Online network predicts the EMA target network's projection of the other view."""

    name = "byol"
    config_class = BYOLConfig

    def __init__(self, config: Any, info: Any) -> None:
        super().__init__(config, info)
        cfg = config.model
        self.predictor = self.build_predictor(cfg.predictor, int(cfg.proj_dims[-1]),
                                              cfg.pred_hidden)
        if cfg.target_tau is not None and hasattr(self.target["bridge"], "tau"):
            self.target["bridge"].tau = float(cfg.target_tau)  # teacher temperature

    def momentum_bounds(self) -> tuple[float, float]:
        cfg = self.config.model
        return cfg.base_momentum, cfg.final_momentum

    def views_loss(self, views: Views) -> dict[str, Tensor]:
        p_a, p_b = (self.predictor(z).float() for z in views.z)
        assert views.target is not None
        z_a, z_b = views.target
        return symmetric_byol_loss(p_a, p_b, z_a, z_b, self.config.model.byol_loss)
