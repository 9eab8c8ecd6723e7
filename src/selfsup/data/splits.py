"""Deterministic index splits (held-out validation sets, fixed train/test splits).

Both functions return ``(keep, holdout)``: two sorted int64 index tensors that are disjoint and
together cover ``range(n)``. The same arguments always give the same split.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from selfsup.errors import ConfigError


def _check_fraction(fraction: float) -> float:
    try:
        value = float(fraction)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0.0 <= value < 1.0:
        raise ConfigError(
            f"A holdout fraction must be a number in [0, 1), got {fraction!r}. Use 0 for no "
            "holdout set or e.g. 0.1 to hold out 10% of the samples."
        )
    return value


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def holdout_split(n: int, fraction: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``range(n)`` into (keep, holdout) with ``round(n * fraction)`` held-out indices."""
    fraction = _check_fraction(fraction)
    if int(n) < 0:
        raise ConfigError(f"Cannot split a negative number of samples ({n}).")
    n = int(n)
    n_hold = min(int(round(n * fraction)), n)
    perm = torch.randperm(n, generator=_generator(seed))
    holdout = torch.sort(perm[:n_hold]).values
    keep = torch.sort(perm[n_hold:]).values
    return keep.long(), holdout.long()


def stratified_holdout_split(
    labels: Any, fraction: float, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Like :func:`holdout_split` but holds out ``round(n_c * fraction)`` samples of each class.

    ``labels`` is any 1-D integer sequence (tensor, array, list); every distinct value (including
    ``-1`` for unlabeled samples) is treated as its own group. Classes are processed in sorted order
    with one seeded generator, so the result depends only on ``labels``, ``fraction`` and ``seed``.
    """
    fraction = _check_fraction(fraction)
    if isinstance(labels, torch.Tensor):
        lab = labels.detach().cpu().long()
    else:
        lab = torch.as_tensor(np.asarray(labels)).long()
    if lab.ndim != 1:
        raise ConfigError(
            f"Labels for a stratified split must be 1-D, got shape {tuple(lab.shape)}."
        )
    gen = _generator(seed)
    held: list[torch.Tensor] = []
    for value in torch.unique(lab, sorted=True).tolist():
        idx = torch.nonzero(lab == value, as_tuple=False).flatten()
        n_hold = min(int(round(idx.numel() * fraction)), idx.numel())
        perm = torch.randperm(idx.numel(), generator=gen)
        held.append(idx[perm[:n_hold]])
    mask = torch.zeros(lab.numel(), dtype=torch.bool)
    if held:
        mask[torch.cat(held)] = True
    holdout = torch.nonzero(mask, as_tuple=False).flatten().long()
    keep = torch.nonzero(~mask, as_tuple=False).flatten().long()
    return keep, holdout
