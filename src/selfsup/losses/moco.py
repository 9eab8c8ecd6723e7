"""InfoNCE of MoCo-SimCLR (lavoiems/SoftDiscrete_SSL ``src/models/moco-simclr/train.py:160-202``).

Queries ``q_a, q_b`` come from the online network (after the predictor), keys ``k_a, k_b`` from
the EMA key encoder (or, without a queue, the online projections), all L2-normalised. The query
of view v of image i has the positive ``k_w[i]`` (the other view's key of the same image) and the
candidates

    { q_v[j] : j != i }  u  { k_w[j] : all j }  u  { queue entries },

so the negatives are the other in-batch queries of its view, the other view's in-batch keys and
the queue of keys from earlier steps (no gradient):

    loss = mean_i [ -u_i . k_w[i] / t + log( sum over the candidates exp(u_i . c / t) ) ],

averaged over the 2n queries, i.e. ``0.5 * (loss(q_a, k_b) + loss(q_b, k_a))`` as released.
Without a queue and with k = q this is exactly SimCLR's NT-Xent: both are
:func:`selfsup.losses.simclr.info_nce`.
"""

from __future__ import annotations

from torch import Tensor, nn

from selfsup.losses.simclr import info_nce


def moco_loss(
    q_a: Tensor,
    q_b: Tensor,
    k_a: Tensor,
    k_b: Tensor,
    queue: Tensor | None = None,
    temperature: float = 1.0,
    gather_distributed: bool = False,
) -> dict[str, Tensor]:
    """Symmetric InfoNCE (see module doc); returns ``{"loss", "alignment", "uniformity"}``."""
    return info_nce(q_a, q_b, k_a, k_b, temperature, gather_distributed, queue)


class MoCoLoss(nn.Module):
    """Module form of :func:`moco_loss`: ``forward(q_a, q_b, k_a, k_b, queue=None)``."""

    def __init__(self, temperature: float = 1.0, gather_distributed: bool = False) -> None:
        super().__init__()
        self.temperature = temperature
        self.gather_distributed = gather_distributed

    def forward(self, q_a: Tensor, q_b: Tensor, k_a: Tensor, k_b: Tensor,
                queue: Tensor | None = None) -> dict[str, Tensor]:
        """Return ``{"loss": alignment + uniformity, "alignment", "uniformity"}``."""
        return moco_loss(q_a, q_b, k_a, k_b, queue, self.temperature, self.gather_distributed)
