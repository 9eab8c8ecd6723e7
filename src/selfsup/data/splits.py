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


# ------------------------------------------------------------------ factor-combination splits
#
# Datasets rendered from a full grid of generative factors (dSprites, MPI3D) store image ``i`` at
# the C-order (row-major) index of its factor classes, so every split below is index arithmetic on
# ``range(prod(sizes))``: no image is read. A split is an int64 index array into that grid.

FACTOR_SPLITS = ("train", "heldout", "val", "test")
SPLIT_SCHEMES = ("ood", "iid")
HELDOUT_SPLITS = ("fraction", "released")
RELEASED_SEEDS = (100, 102)  # SoftDiscrete_SSL src/common/loaders/{dsprites,mpi3d}.py
RELEASED_HELDOUT_MAX = 50000
DSPRITES_SIZES = (1, 3, 6, 40, 32, 32)  # color, shape, scale, orientation, posX, posY
MPI3D_SIZES = (6, 6, 2, 3, 3, 40, 40)  # color, shape, size, height, background, h-axis, v-axis
OOD_K_RANGE = {"dsprites": (1, 2), "mpi3d": (1, 4)}
OOD_K_DEFAULT = {"dsprites": 2, "mpi3d": 3}
HELDOUT_SEED = 0
SPLIT_SEED = 0

# dSprites OOD roles per (shape, quadrant); quadrant q = 2 * (posX >= half) + (posY >= half).
# "k1" is trained on for every K, "k2" only for K = 2 (else it is test), "val" and "test" are OOD.
_DSPRITES_ROLES = {
    0: {0: "k1", 1: "k2", 2: "val", 3: "test"},  # square
    1: {1: "k1", 0: "k2", 3: "val", 2: "test"},  # ellipse
    2: {2: "k1", 3: "k2", 1: "val", 0: "test"},  # heart
}


def factor_family(name: str) -> str | None:
    """``"dsprites"`` / ``"mpi3d"`` for the factor datasets (any variant), else None."""
    key = str(name).lower()
    for family in OOD_K_RANGE:
        if key == family or key.startswith(family + "-"):
            return family
    return None


def resolve_ood_k(name: str, k: int) -> int:
    """``k`` checked against the dataset family's range; 0 means the family's default."""
    family = factor_family(name)
    if family is None:
        return int(k)
    lo, hi = OOD_K_RANGE[family]
    if isinstance(k, bool) or not isinstance(k, int) or not (k == 0 or lo <= k <= hi):
        raise ConfigError(
            f"data.ood_k = {k!r} is invalid for {name}: use an integer from {lo} to {hi} (the "
            f"number of factor combinations trained on), or 0 for the default "
            f"{OOD_K_DEFAULT[family]}."
        )
    return OOD_K_DEFAULT[family] if k == 0 else int(k)


def check_split_options(name: str, scheme: str, k: int, heldout_fraction: float,
                        heldout_split: str = "fraction", n_train: int = 0) -> None:
    """Raise ConfigError for an unknown scheme, an out-of-range K or held-out fraction, an
    unknown held-out rule or a bad ``n_train``."""
    if heldout_split not in HELDOUT_SPLITS:
        raise ConfigError(
            f"data.heldout_split = {heldout_split!r} is unknown. Use 'fraction' (a seeded "
            "data.heldout_fraction of train) or 'released' (the soft-discretization code's "
            "random_split with seeds 100 and 102, keeping data.n_train images for training)."
        )
    if isinstance(n_train, bool) or not isinstance(n_train, int) or n_train < 0:
        raise ConfigError(f"data.n_train must be an integer >= 0, got {n_train!r}.")
    if heldout_split == "released" and n_train < 1:
        raise ConfigError(
            "data.heldout_split released needs data.n_train > 0, the number of train images "
            "kept for training (the launch scripts: 45000 for dSprites, 130000 for MPI3D)."
        )
    if scheme not in SPLIT_SCHEMES:
        raise ConfigError(
            f"data.split_scheme = {scheme!r} is unknown. Use 'ood' (train on some factor "
            "combinations, test on unseen ones) or 'iid' (random splits of the same sizes)."
        )
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ConfigError(f"data.ood_k must be an integer >= 0 (0: dataset default), got {k!r}.")
    resolve_ood_k(name, k)
    _check_fraction(heldout_fraction)


def unravel_factors(indices: Any, sizes: tuple[int, ...] | list[int]) -> np.ndarray:
    """Factor classes (N, F) int64 of C-order grid indices: ``i = sum_f c_f prod_{g>f} s_g``."""
    idx = np.asarray(indices, dtype=np.int64)
    return np.stack(np.unravel_index(idx, tuple(int(s) for s in sizes)), axis=1).astype(np.int64)


def _dsprites_parts(sizes: tuple[int, ...], k: int) -> dict[str, np.ndarray]:
    """train / val / test grid indices of the dSprites OOD scheme (orientation < n_or / 4)."""
    n = int(np.prod(sizes))
    c = unravel_factors(np.arange(n), sizes)
    shape, orient, px, py = c[:, 1], c[:, 3], c[:, 4], c[:, 5]
    pool = orient < sizes[3] // 4
    quadrant = 2 * (px >= sizes[4] // 2) + (py >= sizes[5] // 2)
    codes = {"k1": 0, "k2": 1, "val": 2, "test": 3}
    table = np.array([[codes[t[q]] for q in range(4)] for _, t in sorted(_DSPRITES_ROLES.items())])
    role = table[shape, quadrant]
    train = pool & ((role == 0) | ((role == 1) & (k >= 2)))
    val = pool & (role == 2)
    test = pool & ~train & ~val
    return {name: np.flatnonzero(m) for name, m in (("train", train), ("val", val), ("test", test))}


def _mpi3d_parts(sizes: tuple[int, ...], k: int) -> dict[str, np.ndarray]:
    """train: color == shape + j (mod 6) for j < K; val: j == 4; test: the rest."""
    n = int(np.prod(sizes))
    c = unravel_factors(np.arange(n), sizes)
    j = (c[:, 0] - c[:, 1]) % sizes[1]
    train = j < k
    val = j == 4
    test = ~train & ~val
    return {name: np.flatnonzero(m) for name, m in (("train", train), ("val", val), ("test", test))}


def released_heldout_split(n: int, n_train: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(keep, holdout) positions in ``range(n)`` by the released rule
    (SoftDiscrete_SSL ``src/common/loaders/dsprites.py:71-86``, the same for MPI3D):
    ``random_split(train, [n_train, n - n_train], seed 100)`` gives the training part and a rest;
    ``random_split(rest, [m, len(rest) - m], seed 102)`` with ``m = min(len(rest) // 2, 50000)``
    gives the in-distribution held-out set. ``random_split`` is ``randperm(n, generator)`` cut in
    order, reproduced here exactly. Sorted int64 tensors."""
    if not 0 < n_train < n:
        raise ConfigError(
            f"data.n_train = {n_train} must be between 1 and {n - 1}: the train split of this "
            f"dataset has {n} images and the released rule keeps n_train of them for training."
        )
    perm = torch.randperm(n, generator=_generator(RELEASED_SEEDS[0]))
    keep, rest = perm[:n_train], perm[n_train:]
    m = min(rest.numel() // 2, RELEASED_HELDOUT_MAX)
    held = rest[torch.randperm(rest.numel(), generator=_generator(RELEASED_SEEDS[1]))[:m]]
    return torch.sort(keep).values.long(), torch.sort(held).values.long()


def factor_split_indices(
    family: str,
    sizes: tuple[int, ...] | list[int],
    scheme: str = "ood",
    k: int = 0,
    heldout_fraction: float = 0.1,
    heldout_split: str = "fraction",
    n_train: int = 0,
) -> dict[str, torch.Tensor]:
    """Grid indices of ``train``, ``heldout`` (in-distribution, carved from train), ``val`` and
    ``test`` (out-of-distribution for ``scheme="ood"``).

    ``heldout_split="fraction"``: ``heldout_fraction`` of train with the fixed seed
    :data:`HELDOUT_SEED`; ``"released"``: :func:`released_heldout_split` with ``n_train`` (train
    then keeps n_train images; the rest not held out is unused, as released). The train part is
    in grid order, as in the released split files, so the released positions are the same images.
    ``scheme="iid"`` shuffles the union of the OOD parts (seed :data:`SPLIT_SEED`) into train / val
    / test of the same sizes, the in-distribution baseline. Each value is a sorted int64 tensor.
    """
    sizes = tuple(int(s) for s in sizes)
    check_split_options(family, scheme, int(k), heldout_fraction, heldout_split, n_train)
    k = resolve_ood_k(family, int(k))
    parts = (_dsprites_parts if family == "dsprites" else _mpi3d_parts)(sizes, k)
    if scheme == "iid":
        pool = np.sort(np.concatenate(list(parts.values())))
        perm = torch.randperm(pool.size, generator=_generator(SPLIT_SEED)).numpy()
        shuffled = pool[perm]
        n_train, n_val = parts["train"].size, parts["val"].size
        parts = {
            "train": np.sort(shuffled[:n_train]),
            "val": np.sort(shuffled[n_train : n_train + n_val]),
            "test": np.sort(shuffled[n_train + n_val :]),
        }
    train = torch.from_numpy(parts["train"]).long()
    if heldout_split == "released":
        keep, hold = released_heldout_split(train.numel(), int(n_train))
    else:
        keep, hold = holdout_split(train.numel(), heldout_fraction, HELDOUT_SEED)
    return {
        "train": train[keep],
        "heldout": train[hold],
        "val": torch.from_numpy(parts["val"]).long(),
        "test": torch.from_numpy(parts["test"]).long(),
    }


def subsample_positions(n: int, max_samples: int, seed: int) -> torch.Tensor | None:
    """Sorted positions of a seeded random subset of ``max_samples`` of ``range(n)``; None when
    ``max_samples`` is 0 or not smaller than ``n`` (keep everything)."""
    if not max_samples or n <= max_samples:
        return None
    gen = _generator(seed)
    return torch.sort(torch.randperm(n, generator=gen)[:max_samples]).values
