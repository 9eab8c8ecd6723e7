"""MoCo-SimCLR (lavoiems/SoftDiscrete_SSL ``src/models/moco-simclr``): InfoNCE against in-batch
negatives and a queue of EMA keys; without a queue, SimCLR.

Queries are the online projections after a predictor, q_v = P(g(B(E(f(x_v))))) (``predictor``
linear: Linear(d, d) without bias, as released; none: identity). With ``queue_size`` K > 0 the
keys come from the key encoder, the target network f', E', B', g' (EMA with ``momentum`` m after
every optimizer step); with K = 0 the keys are the online projections g(B(E(f(x_v)))). The loss
(:func:`selfsup.losses.moco.moco_loss`, temperature t) gives the query of view v of image i the
positive k_w[i] (the other view's key) and as negatives the other in-batch queries of view v, the
in-batch keys of view w and the queue:

    loss = 0.5 * (L(q_a, k_b) + L(q_b, k_a)),
    L(q, k) = mean_i [ -q_i . k_i / t
                       + log( sum_{j != i} e^{q_i . q_j / t} + sum_j e^{q_i . k_j / t}
                              + sum_m e^{q_i . w_m / t} ) ]   (unit vectors)

With K = 0, the identity predictor and k = q this is exactly SimCLR's NT-Xent.

Queue (released ``train.py:204-237, 292-300``): K = 2 * B * n keys (B the global batch); before
the first step it is filled with the key encoder's keys of both views of n training batches;
after every optimizer step the keys of both views of the (gathered) batch, [k_a; k_b], replace the
oldest 2B entries (FIFO), so K must be a multiple of 2B. The queue, its write position and the key
encoder are registered buffers/modules: checkpoints save them and resume restores them exactly.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.errors import ConfigError
from selfsup.losses.distributed import is_distributed, world_size
from selfsup.losses.moco import moco_loss
from selfsup.methods import register
from selfsup.methods.base import step_seed
from selfsup.methods.joint_embedding import JointEmbedding, JointEmbeddingConfig, Views


@dataclass
class MoCoSimCLRConfig(JointEmbeddingConfig):
    """``queue_size`` K (0: SimCLR, in-batch negatives only; else a multiple of twice the batch
    size), ``momentum`` m of the key encoder, ``temperature`` t of InfoNCE, ``predictor`` on the
    queries (linear | none | mlp with ``pred_hidden``). Defaults follow the released code
    (``moco-simclr/__init__.py``): t = 1, a linear predictor, an embedder without BatchNorm."""

    proj_dims: list[int] = field(default_factory=lambda: [2048, 128])
    temperature: float = 1.0
    queue_size: int = 4096
    momentum: float = 0.99
    predictor: str = "linear"
    pred_hidden: int = 1024
    embed_bn: bool = False

    def validate(self) -> None:
        super().validate()
        if not self.temperature > 0:
            raise ConfigError(
                f"model.temperature must be > 0, got {self.temperature} (released: 1.0; SimCLR "
                "uses 0.1 to 0.5)."
            )
        if self.queue_size < 0:
            raise ConfigError(
                f"model.queue_size must be >= 0 (0: in-batch negatives only, SimCLR), got "
                f"{self.queue_size}."
            )
        if not 0.0 <= self.momentum <= 1.0:
            raise ConfigError(f"model.momentum must lie in [0, 1], got {self.momentum} (0.99).")


@register
class MoCoSimCLR(JointEmbedding):
    """Contrastive learning against in-batch negatives and a queue of EMA keys."""

    name = "mocosimclr"
    config_class = MoCoSimCLRConfig

    def __init__(self, config: Any, info: Any) -> None:
        super().__init__(config, info)
        cfg = config.model
        step_keys = 2 * int(config.data.batch_size)
        if cfg.queue_size % step_keys:
            raise ConfigError(
                f"model.queue_size ({cfg.queue_size}) must be a multiple of twice "
                f"data.batch_size ({step_keys}): every step replaces the keys of both views of "
                f"one batch. Use e.g. --queue-size {step_keys * 16} (the released 16 batches), "
                "or 0 for in-batch negatives only (SimCLR)."
            )
        out = int(cfg.proj_dims[-1])
        self.predictor = self.build_predictor(cfg.predictor, out, cfg.pred_hidden)
        self.pending_keys: Tensor | None = None
        if cfg.queue_size > 0:
            self.register_buffer("queue", torch.zeros(cfg.queue_size, out))
            self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
            self.register_buffer("queue_filled", torch.zeros((), dtype=torch.bool))

    def momentum_bounds(self) -> tuple[float, float] | None:
        cfg = self.config.model
        return (cfg.momentum, cfg.momentum) if cfg.queue_size > 0 else None

    def views_loss(self, views: Views) -> dict[str, Tensor]:
        cfg = self.config.model
        q_a, q_b = (self.predictor(z).float() for z in views.z)
        if views.target is None:  # no queue: the keys are the online projections
            return moco_loss(q_a, q_b, *views.z, None, cfg.temperature, cfg.gather_distributed)
        k_a, k_b = views.target
        self.pending_keys = F.normalize(torch.cat([k_a, k_b]), dim=1)
        return moco_loss(q_a, q_b, k_a, k_b, self.queue.clone(), cfg.temperature,
                         cfg.gather_distributed)

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> int:
        """Write ``keys`` (gathered over devices) over the oldest queue entries (FIFO); returns
        the number of keys written."""
        if is_distributed() and world_size() > 1:
            parts = [torch.empty_like(keys) for _ in range(world_size())]
            torch.distributed.all_gather(parts, keys.contiguous())
            keys = torch.cat(parts)
        # The pointer stays a device tensor: no host-device synchronization per step.
        size = self.queue.shape[0]
        idx = (torch.arange(keys.shape[0], device=keys.device) + self.queue_ptr) % size
        self.queue[idx] = keys.to(self.queue.dtype)
        self.queue_ptr.copy_((self.queue_ptr + keys.shape[0]) % size)
        return int(keys.shape[0])

    @torch.no_grad()
    def fill_queue(self, batches: Iterable[Any]) -> None:
        """Fill the whole queue with the key encoder's keys [k_a; k_b] of both views of
        successive batches (uint8 images, or (images, labels) pairs), in training mode as
        released; the write position is back at 0 afterwards."""
        assert self.target is not None
        was_training = self.target.training
        self.target.train()
        written, size = 0, self.queue.shape[0]
        iterator = iter(batches)
        while written < size:
            try:
                batch = next(iterator)
            except StopIteration:
                iterator = iter(batches)
                batch = next(iterator)
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            x_a, x_b = self.two_views(images.to(self.queue.device))
            keys = torch.cat([self.target_projection(x_a), self.target_projection(x_b)])
            written += self.enqueue(F.normalize(keys, dim=1))
        self.queue_ptr.zero_()
        self.queue_filled.fill_(True)
        self.target.train(was_training)

    def on_train_start(self) -> None:
        """Before the first step of a new run: fill the queue from training batches (a resumed
        run restores its queue from the checkpoint)."""
        if self.target is None or bool(self.queue_filled):
            return
        seed = step_seed(self.config.seed, 0, self.global_rank) ^ 0x5EED
        self.step_generator.manual_seed(seed)
        torch.manual_seed(seed)
        self.fill_queue(self.trainer.train_dataloader)

    def after_step(self, step: int) -> None:
        """After the optimizer step: enqueue this step's keys, then the key encoder's EMA."""
        if self.pending_keys is not None:
            self.enqueue(self.pending_keys)
            self.pending_keys = None
        super().after_step(step)
