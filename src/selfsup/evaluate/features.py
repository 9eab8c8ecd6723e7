"""Frozen features and the helpers every probe shares.

:func:`extract_features` turns a dataset into a float32 feature matrix by calling a frozen
``represent`` function batch by batch; :func:`frozen_features` does it for a trained method in
evaluation mode (batch norm uses its running statistics and keeps them; the mode is restored
after), which is how every evaluation, figure and comparison extracts features. The probes then
only see tensors: :func:`standardize` (z-scoring with training statistics),
:func:`split_train_val` (a seeded, stratified validation split carved from the training split,
so that no hyperparameter is ever chosen on test data) and :func:`labeled_only` (dropping ``-1``
= unlabeled samples, with a clear error when nothing is left).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.utils.data import DataLoader

from selfsup.errors import ConfigError, DataError, RunError

__all__ = [
    "accuracy",
    "extract_features",
    "frozen",
    "frozen_features",
    "labeled_only",
    "predict_classes",
    "resolve_device",
    "resolve_num_classes",
    "shuffled_batches",
    "split_train_val",
    "standardize",
]

STD_FLOOR = 1e-6


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a :class:`torch.device`; None means CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _is_in_memory(dataset: Any) -> bool:
    images = getattr(dataset, "images", None)
    return isinstance(images, torch.Tensor) and isinstance(
        getattr(dataset, "labels", None), torch.Tensor
    )


def _check_features(feats: torch.Tensor, n: int) -> torch.Tensor:
    if not isinstance(feats, torch.Tensor) or feats.ndim < 2 or feats.shape[0] != n:
        shape = tuple(feats.shape) if isinstance(feats, torch.Tensor) else type(feats).__name__
        raise ValueError(
            f"represent() must return a tensor of shape (batch, ...) for a batch of {n} images, "
            f"got {shape}."
        )
    return feats.reshape(n, -1)


@torch.no_grad()
def extract_features(
    represent: Callable[[torch.Tensor], torch.Tensor],
    dataset: Any,
    batch_size: int = 512,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features ``represent(x)`` of every image, in dataset order.

    ``dataset`` is either in memory (attributes ``images``: uint8 (N, C, H, W), ``labels``: int64
    (N,)) or map-style with items ``(uint8 (C, H, W), int label)`` (read with a DataLoader using
    ``num_workers`` workers). uint8 batches are moved to ``device`` and passed to ``represent``
    under ``torch.no_grad()``; outputs with more than two dimensions are flattened per sample.
    Returns float32 CPU features (N, D) and int64 labels (N,).
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size}.")
    dev = torch.device(device)
    n = len(dataset)
    if n == 0:
        raise DataError(
            "extract_features got an empty dataset (0 samples). Check the dataset path and split "
            "name: the split must contain at least one image."
        )
    feats: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    if _is_in_memory(dataset):
        images, all_labels = dataset.images, dataset.labels
        for start in range(0, n, batch_size):
            batch = images[start : start + batch_size].to(dev, non_blocking=True)
            out = _check_features(represent(batch), batch.shape[0])
            feats.append(out.detach().float().cpu())
        labels.append(all_labels.long().cpu())
    else:
        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=False,
            num_workers=num_workers,
            pin_memory=dev.type == "cuda",
        )
        for batch, lab in loader:
            batch = batch.to(dev, non_blocking=True)
            out = _check_features(represent(batch), batch.shape[0])
            feats.append(out.detach().float().cpu())
            labels.append(torch.as_tensor(lab).long().reshape(-1).cpu())
    x = torch.cat(feats)
    y = torch.cat(labels)
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).any(dim=1).sum())
        raise RunError(
            f"The representation produced NaN or Inf features for {bad} of {n} samples. The "
            "checkpoint is most likely from a diverged run (check its loss curve) or the images "
            "are not in the format the model was trained on; evaluate a healthy checkpoint."
        )
    return x, y


@contextmanager
def frozen(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``module`` in eval mode without gradients inside the block; its mode is restored after."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield module
    finally:
        module.train(was_training)


def frozen_features(
    method: Any,
    dataset: Any,
    batch_size: int = 512,
    device: str | torch.device | None = None,
    represent: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`extract_features` of ``method.represent`` (or ``represent``, e.g. a function of the
    method that also returns its code) with the method frozen; ``device`` defaults to the
    method's. Returns float32 CPU features (N, D) and int64 labels (N,)."""
    with frozen(method):
        return extract_features(
            represent or method.represent, dataset, batch_size,
            method.device if device is None else device,
        )


def standardize(train: torch.Tensor, *others: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Z-score every tensor with the training statistics: ``(x - mean_train) / std_train``.

    mean/std are per feature over the rows of ``train`` (population std, floored at 1e-6 so that
    constant features stay finite). Returns ``(train_z, *others_z)`` in the input dtype.
    """
    t64 = train.double()
    mean = t64.mean(dim=0)
    std = t64.std(dim=0, unbiased=False).clamp_min(STD_FLOOR) if train.shape[0] > 0 else mean
    out = []
    for x in (train, *others):
        dtype = x.dtype if x.is_floating_point() else torch.float32
        z = (x.double() - mean.to(x.device)) / std.to(x.device)
        out.append(z.to(dtype))
    return tuple(out)


def labeled_only(
    x: torch.Tensor, y: torch.Tensor, split: str, *, min_classes: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ``(x, y)`` whose label is not ``-1``; DataError when too few labels remain."""
    y = torch.as_tensor(y)
    if x.ndim != 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise DataError(
            f"The {split} features must be a 2-D (N, D) tensor with one label per row, got "
            f"features {tuple(x.shape)} and labels {tuple(y.shape)}. Extract features and labels "
            "from the same dataset split."
        )
    y = y.long()
    keep = y >= 0
    x, y = x[keep], y[keep]
    n_classes = int(torch.unique(y).numel())
    if y.numel() == 0 or n_classes < min_classes:
        need = "labeled samples" if min_classes <= 1 else f"at least {min_classes} classes"
        raise DataError(
            f"The {split} split has {y.numel()} labeled samples from {n_classes} classes, but this "
            f"evaluation needs {need}. Probes and clustering scores need a labeled dataset: "
            "evaluate on a dataset with class labels (unlabeled samples are marked -1)."
        )
    return x, y


def split_train_val(
    y: torch.Tensor, val_fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded stratified split of the indices of ``y`` into (train, validation).

    The validation set holds ``max(1, round(val_fraction * N))`` samples, shared among classes in
    proportion to their size (largest remainders), and each class keeps at least one training
    sample. The same ``seed`` and labels always give the same split.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(
            f"val_fraction must be strictly between 0 and 1, got {val_fraction}. It is the "
            "fraction of the training split held out to choose probe hyperparameters."
        )
    y = y.long().cpu()
    n = y.numel()
    classes, counts = torch.unique(y, return_counts=True)
    capacity = counts - 1
    n_val = min(max(1, round(val_fraction * n)), int(capacity.sum()))
    if n_val < 1:
        raise DataError(
            f"Cannot carve a validation split from {n} labeled training samples: every class has "
            "a single sample. Use a larger labeled training split."
        )
    quota = counts.double() * (n_val / n)
    take = torch.minimum(quota.floor().long(), capacity)
    remainder = quota - take.double()
    order = sorted(range(len(classes)), key=lambda i: (-float(remainder[i]), i))
    left = n_val - int(take.sum())
    while left > 0:
        progressed = False
        for i in order:
            if left == 0:
                break
            if take[i] < capacity[i]:
                take[i] += 1
                left -= 1
                progressed = True
        if not progressed:
            break
    gen = torch.Generator().manual_seed(int(seed))
    train_idx, val_idx = [], []
    for c, k in zip(classes.tolist(), take.tolist(), strict=True):
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=gen)]
        val_idx.append(idx[:k])
        train_idx.append(idx[k:])
    return torch.cat(train_idx).sort().values, torch.cat(val_idx).sort().values


def resolve_num_classes(num_classes: int | None, *labels: torch.Tensor) -> int:
    """``num_classes`` if given (checked against the labels), else ``max label + 1``."""
    top = max(int(y.max()) for y in labels if y.numel()) + 1
    if num_classes is None:
        return top
    if top > num_classes:
        raise DataError(
            f"Label {top - 1} is out of range for num_classes={num_classes}. The features and "
            "labels come from different datasets, or num_classes is wrong: pass the dataset's "
            "number of classes."
        )
    return int(num_classes)


def accuracy(pred: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of ``pred == y`` as a Python float (0.0 for empty inputs)."""
    if y.numel() == 0:
        return 0.0
    return float((pred.cpu() == y.cpu()).double().mean())


def shuffled_batches(n: int, batch_size: int, gen: torch.Generator) -> list[torch.Tensor]:
    """A shuffled partition of ``range(n)`` into index batches; a trailing batch of one sample
    joins the previous one (batch norm needs at least two samples in training mode)."""
    chunks = list(torch.randperm(n, generator=gen).split(batch_size))
    if len(chunks) > 1 and chunks[-1].numel() == 1:
        chunks[-2] = torch.cat([chunks[-2], chunks.pop()])
    return chunks


@torch.no_grad()
def predict_classes(
    model: torch.nn.Module, x: torch.Tensor, batch_size: int = 8192
) -> torch.Tensor:
    """Arg-max class of ``model(x)`` in eval mode, computed in batches, on the CPU."""
    model.eval()
    return torch.cat([model(xb).argmax(dim=1).cpu() for xb in x.split(batch_size)])
