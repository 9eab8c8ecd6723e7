"""Differentiable all-gather for losses that need the global batch.

``gather_with_grad(x)`` returns ``cat([x_0, ..., x_{W-1}], dim=0)`` where ``x_r`` is the tensor
held by process ``r``. The backward pass sums the incoming gradient over all processes and hands
each process the slice belonging to its own input:

    dL/dx_r = sum_p dL_p / d(gathered)[rows of r].

Gradient convention: when every process computes the same loss ``G`` on the gathered batch and
data-parallel training averages parameter gradients over the ``W`` processes (what DDP does), the
summed gradient above equals ``W * dG/dx_r`` locally and the DDP average recovers exactly the
single-process gradient ``dG/dtheta`` on the full batch.

All processes must hold tensors of the same shape. Without an initialised process group, or with
one process, the functions are the identity.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when torch.distributed is available and a process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of processes in the default group (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """Rank of this process in the default group (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


class _GatherWithGrad(torch.autograd.Function):
    """all_gather forward; sum-reduce of the gradient and own slice backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ws = dist.get_world_size()
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(ws)]
        dist.all_gather(parts, x)
        ctx.rank = dist.get_rank()
        ctx.rows = x.shape[0]
        ctx.world_size = ws
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        start, stop = ctx.rank * ctx.rows, (ctx.rank + 1) * ctx.rows
        if dist.get_backend() == "nccl":
            out = torch.empty_like(grad[start:stop])
            dist.reduce_scatter_tensor(out, grad, op=dist.ReduceOp.SUM)
            return out
        # gloo and others: all-reduce the full gradient, keep our rows
        summed = grad.clone()
        dist.all_reduce(summed, op=dist.ReduceOp.SUM)
        return summed[start:stop].contiguous()


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (shape (n, ...)) from all processes along dim 0, keeping gradients.

    Returns a tensor of shape ``(world_size * n, ...)`` whose rows ``rank*n:(rank+1)*n`` are this
    process's ``x``; identity when not distributed or with world size 1.
    """
    if world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


def check_views(z_a: torch.Tensor, z_b: torch.Tensor, loss_name: str, min_batch: int = 2) -> None:
    """Check two view embeddings: same shape (n, d) with n >= ``min_batch``.

    A too-small batch is a configuration problem (the batch size), so it raises ConfigError; a
    shape mismatch is a programming error and raises ValueError.
    """
    if z_a.shape != z_b.shape or z_a.ndim != 2:
        raise ValueError(
            f"{loss_name} expects two embeddings of the same shape (batch, dim); got "
            f"{tuple(z_a.shape)} and {tuple(z_b.shape)}."
        )
    if z_a.shape[0] < min_batch:
        from selfsup.errors import ConfigError

        raise ConfigError(
            f"{loss_name} needs at least {min_batch} samples per process in a batch to compute "
            f"batch statistics, but got a batch of {z_a.shape[0]}. Increase the batch size (and "
            "make sure the last incomplete batch is dropped, e.g. drop_last=True)."
        )
