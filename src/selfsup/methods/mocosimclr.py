"""MoCo-SimCLR: InfoNCE with an EMA key encoder and a queue of keys, or SimCLR without a queue.

Queries come from the online network, z_v = g(B(E(f(x_v)))) (embedder E and bridge B only with a
bottleneck). With ``queue_size`` K > 0 the keys come from a key encoder, an EMA copy
f', E', g' (with its own bridge B') updated after every optimizer step with
xi <- m xi + (1 - m) theta (``momentum`` m, default 0.99), and the negatives are the K keys of
earlier batches held in a FIFO queue; with K = 0 the keys are the online projections themselves
and the negatives are the other 2N - 2 views of the batch, which is exactly SimCLR's NT-Xent
(see :mod:`selfsup.losses.moco`):

    loss = mean_i [ -u_i . p_i / t + log( exp(u_i . p_i / t) + sum_neg exp(u_i . w / t) ) ]

Both views are queries (symmetric loss); after each step the first view's keys of the whole
(gathered) batch replace the oldest entries of the queue, so K must be a multiple of the global
batch size. The queue, its write position and the key encoder are registered buffers/modules:
checkpoints save them and resume restores them exactly.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.errors import ConfigError
from selfsup.losses.byol import ema_update
from selfsup.losses.distributed import is_distributed, world_size
from selfsup.losses.moco import moco_loss
from selfsup.methods import register
from selfsup.methods.joint_embedding import JointEmbedding, JointEmbeddingConfig


@dataclass
class MoCoSimCLRConfig(JointEmbeddingConfig):
    """``queue_size`` K (0: SimCLR, in-batch negatives; else a multiple of the batch size),
    ``momentum`` m of the key encoder, ``temperature`` t of InfoNCE."""

    proj_dims: list[int] = field(default_factory=lambda: [2048, 128])
    temperature: float = 0.1
    queue_size: int = 4096
    momentum: float = 0.99

    def validate(self) -> None:
        super().validate()
        if not self.temperature > 0:
            raise ConfigError(
                f"model.temperature must be > 0, got {self.temperature}. Typical values are 0.1 "
                "to 0.2."
            )
        if self.queue_size < 0:
            raise ConfigError(
                f"model.queue_size must be >= 0 (0: in-batch negatives as SimCLR), got "
                f"{self.queue_size}."
            )
        if not 0.0 <= self.momentum <= 1.0:
            raise ConfigError(f"model.momentum must lie in [0, 1], got {self.momentum} (0.99).")


@register
class MoCoSimCLR(JointEmbedding):
    """Contrastive learning against a queue of EMA keys (MoCo) or the batch (SimCLR)."""

    name = "mocosimclr"
    config_class = MoCoSimCLRConfig

    def __init__(self, config: Any, info: Any) -> None:
        super().__init__(config, info)
        cfg = config.model
        batch = int(config.data.batch_size)
        if cfg.queue_size % batch:
            raise ConfigError(
                f"model.queue_size ({cfg.queue_size}) must be a multiple of data.batch_size "
                f"({batch}): every step replaces one batch of keys in the queue. Use e.g. "
                f"--queue-size {max(1, round(cfg.queue_size / batch)) * batch}, or 0 for "
                "in-batch negatives (SimCLR)."
            )
        self.pending_keys: Tensor | None = None
        if cfg.queue_size > 0:
            self.key_backbone = copy.deepcopy(self.backbone).requires_grad_(False)
            self.key_embedder = copy.deepcopy(self.embedder).requires_grad_(False)
            self.key_bridge = copy.deepcopy(self.bridge).requires_grad_(False)
            if hasattr(self.key_bridge, "ema_updates"):
                self.key_bridge.ema_updates = False  # its codebook is copied from the online one
            self.key_projector = copy.deepcopy(self.projector).requires_grad_(False)
            out = int(cfg.proj_dims[-1])
            generator = torch.Generator().manual_seed(int(config.seed))
            queue = F.normalize(torch.randn(cfg.queue_size, out, generator=generator), dim=1)
            self.register_buffer("queue", queue)
            self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def key_projection(self, x: Tensor) -> Tensor:
        """k = g'(B'(E'(f'(x)))) from the key encoder, without gradient."""
        message, _ = self.key_bridge(self.key_embedder(self.key_backbone(x)))
        return self.key_projector(message).float()

    def training_loss(self, images: Tensor) -> dict[str, Tensor]:
        cfg = self.config.model
        x_a, x_b = self.two_views(images)
        h_a = self.backbone(x_a)
        z_a, aux_a = self.project(h_a)
        z_b, aux_b = self.project(self.backbone(x_b))
        z_a, z_b = z_a.float(), z_b.float()
        if cfg.queue_size == 0:
            terms = moco_loss(z_a, z_b, z_a, z_b, None, cfg.temperature, cfg.gather_distributed)
        else:
            k_a, k_b = self.key_projection(x_a), self.key_projection(x_b)
            terms = moco_loss(z_a, z_b, k_a, k_b, self.queue.clone(), cfg.temperature)
            self.pending_keys = F.normalize(k_a, dim=1)
        return {**self.add_aux(terms, aux_a, aux_b), "features": h_a.detach()}

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Write ``keys`` (gathered over devices) over the oldest queue entries (FIFO)."""
        if is_distributed() and world_size() > 1:
            parts = [torch.empty_like(keys) for _ in range(world_size())]
            torch.distributed.all_gather(parts, keys.contiguous())
            keys = torch.cat(parts)
        # The pointer stays a device tensor: no host-device synchronization per step.
        size = self.queue.shape[0]
        idx = (torch.arange(keys.shape[0], device=keys.device) + self.queue_ptr) % size
        self.queue[idx] = keys.to(self.queue.dtype)
        self.queue_ptr.copy_((self.queue_ptr + keys.shape[0]) % size)

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any,
                       optimizer_closure: Any = None) -> None:
        """Optimizer step, then the queue update and the key encoder's EMA update.

        Done here (not in ``on_train_batch_end``) so that an interrupt checkpoint written by a
        callback at the end of the batch already holds the updated queue and key encoder.
        """
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        if self.config.model.queue_size == 0:
            return
        if self.pending_keys is not None:
            self.enqueue(self.pending_keys)
            self.pending_keys = None
        m = float(self.config.model.momentum)
        ema_update(self.key_backbone, self.backbone, m)
        ema_update(self.key_embedder, self.embedder, m)
        ema_update(self.key_bridge, self.bridge, m)
        ema_update(self.key_projector, self.projector, m)
