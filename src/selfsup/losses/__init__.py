"""Self-supervised losses.

Convention shared by every loss here (VICReg, BYOL, SimCLR NT-Xent, Barlow Twins): both the
``nn.Module`` and the functional form return a ``dict[str, Tensor]`` whose ``"loss"`` entry is the
weighted total to back-propagate and whose other entries are the named terms, unweighted (e.g.
VICReg: ``invariance``, ``variance``, ``covariance``). Usage: ``loss_fn(z_a, z_b)["loss"]``.
Losses with ``gather_distributed=True`` use :func:`gather_with_grad` to see the global batch.
"""

from selfsup.losses.barlowtwins import BarlowTwinsLoss, barlow_twins_loss, batch_standardize
from selfsup.losses.byol import (
    BYOLLoss,
    byol_loss,
    cosine_momentum,
    ema_update,
    symmetric_byol_loss,
)
from selfsup.losses.distributed import gather_with_grad, rank, world_size
from selfsup.losses.simclr import NTXentLoss, nt_xent_loss
from selfsup.losses.vicreg import VICRegLoss, vicreg_covariance, vicreg_loss, vicreg_variance

__all__ = [
    "BYOLLoss",
    "BarlowTwinsLoss",
    "NTXentLoss",
    "VICRegLoss",
    "barlow_twins_loss",
    "batch_standardize",
    "byol_loss",
    "cosine_momentum",
    "ema_update",
    "gather_with_grad",
    "nt_xent_loss",
    "rank",
    "symmetric_byol_loss",
    "vicreg_covariance",
    "vicreg_loss",
    "vicreg_variance",
    "world_size",
]
