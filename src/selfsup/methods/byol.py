"""BYOL (Grill et al., 2020) on the shared joint-embedding pipeline.

Online network: backbone f, projector g, predictor q; target network: EMA copies f', g'.
For views x_a, x_b with p_v = q(g(f(x_v))) and z'_v = g'(f'(x_v)) (no gradient):

    loss = (2 - 2 cos(p_a, z'_b)) + (2 - 2 cos(p_b, z'_a))      (batch means, summed)

After every optimizer step k the target moves towards the online weights,
xi <- m_k xi + (1 - m_k) theta, with m_k = 1 - (1 - base) (cos(pi k / K) + 1) / 2 rising from
``base_momentum`` to ``final_momentum`` over the K = steps_per_epoch * epochs steps of the run.
The target is a registered (frozen) submodule, so it is saved and restored with the checkpoint.

With a bottleneck (``encode_method`` softmax / gumbel / vq) the online network is f, embedder E,
bridge B, projector g, predictor q, and the target holds EMA copies of f, E and g with its own
bridge B' (``target_tau`` sets a separate teacher temperature; None: the student's ``tau``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from selfsup.errors import ConfigError
from selfsup.losses.byol import cosine_momentum, ema_update, symmetric_byol_loss
from selfsup.methods import register
from selfsup.methods.joint_embedding import JointEmbedding, JointEmbeddingConfig
from selfsup.nets.heads import mlp_head


@dataclass
class BYOLConfig(JointEmbeddingConfig):
    """``pred_hidden``: predictor hidden size; target momentum from ``base_momentum`` to
    ``final_momentum`` on a cosine schedule; ``target_tau``: the target (teacher) bridge's
    temperature (None: ``tau``)."""

    proj_dims: list[int] = field(default_factory=lambda: [4096, 256])
    pred_hidden: int = 4096
    base_momentum: float = 0.99
    final_momentum: float = 1.0
    target_tau: float | None = None

    def validate(self) -> None:
        super().validate()
        if self.target_tau is not None and not self.target_tau > 0:
            raise ConfigError(f"model.target_tau must be > 0 (or null), got {self.target_tau}.")
        if self.pred_hidden < 1:
            raise ConfigError(f"model.pred_hidden must be >= 1, got {self.pred_hidden}.")
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
        out = int(config.model.proj_dims[-1])
        self.predictor = mlp_head(out, [config.model.pred_hidden], out)
        self.target_backbone = copy.deepcopy(self.backbone).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.target_embedder = copy.deepcopy(self.embedder).requires_grad_(False)
        self.target_bridge = copy.deepcopy(self.bridge)
        if config.model.target_tau is not None and hasattr(self.target_bridge, "tau"):
            self.target_bridge.tau = float(config.model.target_tau)  # teacher temperature
        if hasattr(self.target_bridge, "ema_updates"):
            self.target_bridge.ema_updates = False  # its codebook is copied from the online one

    def momentum(self, step: int) -> float:
        """m_k of the cosine schedule at optimizer step k, over the run's ``total_steps()``."""
        cfg = self.config.model
        return cosine_momentum(step, self.total_steps(), cfg.base_momentum, cfg.final_momentum)

    @torch.no_grad()
    def target_projection(self, x: Tensor) -> Tensor:
        """z' = g'(B'(E'(f'(x)))), without gradient."""
        message, _ = self.target_bridge(self.target_embedder(self.target_backbone(x)))
        return self.target_projector(message).float()

    def training_loss(self, images: Tensor) -> dict[str, Tensor]:
        x_a, x_b = self.two_views(images)
        h_a = self.backbone(x_a)
        z_a, aux_a = self.project(h_a)
        z_b, aux_b = self.project(self.backbone(x_b))
        p_a = self.predictor(z_a).float()
        p_b = self.predictor(z_b).float()
        terms = symmetric_byol_loss(p_a, p_b, self.target_projection(x_a),
                                    self.target_projection(x_b))
        terms = self.add_aux(terms, aux_a, aux_b)
        momentum = h_a.new_full((), self.momentum(self.global_step), dtype=torch.float32)
        return {**terms, "momentum": momentum, "features": h_a.detach()}

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any,
                       optimizer_closure: Any = None) -> None:
        """Optimizer step, then the EMA update of the target with m_k (k = the step just taken).

        Done here rather than in ``on_train_batch_end`` because Lightning runs callbacks' batch-end
        hooks (e.g. the interrupt checkpoint) before the module's, which would save a target one
        update behind the online network.
        """
        step = self.global_step
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        momentum = self.momentum(step)
        ema_update(self.target_backbone, self.backbone, momentum)
        ema_update(self.target_projector, self.projector, momentum)
        ema_update(self.target_embedder, self.embedder, momentum)
        ema_update(self.target_bridge, self.bridge, momentum)  # buffers only (VQ codebook)
