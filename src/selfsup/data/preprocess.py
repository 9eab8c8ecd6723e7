"""A dataset's deterministic preprocessing, declared once and applied to every input.

The keys ``augment.clean_resize``, ``augment.binarize``, ``augment.normalize`` / ``mean`` /
``std`` / ``normalize_stats`` of a run's config declare it; :class:`Preprocess` applies it, and
every image a method sees goes through it:

* each augmented training view: ``finish(augment(u))``;
* every clean input (the reconstruction target of a denoising model, probes, kNN, GMM, feature
  extraction, validation, reconstructions, plots, FID references): ``clean(u)``;

with, for images ``u`` in [0, 1],

    clean(u)  = finish(center_crop(resize(u, clean_resize)))   (resize only if clean_resize > 0)
    finish(x) = normalize(binarize(x)),  binarize(x) = [x > t],  normalize(x) = (x - m_c) / s_c.

``to_unit_range(x) = clamp(x s_c + m_c, 0, 1)`` undoes the normalisation for display.

The per-channel statistics selfsup knows for a dataset live here too (:data:`DATASET_STATS`,
:func:`dataset_stats`), next to :func:`channel_stats`, which measures them on a train split
(``normalize_stats: train``).

Resizing is bilinear with antialiasing, written as one (out, in) weight matrix per axis
(:func:`resize_weights`): the triangle filter ``max(0, 1 - |t|)`` stretched by the scale factor
when shrinking, the weights of each output pixel normalised to sum 1 over the pixels inside the
source window. This is the kernel of ``torch.nn.functional.interpolate(mode="bilinear",
antialias=True)`` (and of torchvision's ``resize``/``resized_crop`` on tensors), which follows
PIL's; for enlarging it equals plain bilinear interpolation with edge clamping.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from selfsup.errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    from selfsup.data.augment import AugmentConfig

__all__ = [
    "DATASET_STATS",
    "Preprocess",
    "channel_stats",
    "dataset_stats",
    "resize_weights",
    "resolve_normalization",
]

# Per-channel (mean, std) of the training images, in [0, 1] units.
DATASET_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    # Lightning-Universe/paper-AAVAE src/datamodules/normalization.py (also pl_bolts'):
    # (125.3, 123.0, 113.9) / 255 and (63.0, 62.1, 66.7) / 255.
    "cifar10": (
        (125.3 / 255, 123.0 / 255, 113.9 / 255),
        (63.0 / 255, 62.1 / 255, 66.7 / 255),
    ),
    # paper-AAVAE src/datamodules/normalization.py stl10_normalization.
    "stl10": ((0.43, 0.42, 0.39), (0.27, 0.26, 0.27)),
    "mnist": ((0.1307,), (0.3081,)),
    "fashionmnist": ((0.2860,), (0.3530,)),
}


def dataset_stats(name: str, channels: int) -> tuple[list[float], list[float]]:
    """(mean, std) per channel of dataset ``name`` from :data:`DATASET_STATS`; datasets without an
    entry (or with another channel count) get 0.5 / 0.5, which maps [0, 1] to [-1, 1]."""
    mean, std = DATASET_STATS.get(name, ((0.5,) * channels, (0.5,) * channels))
    if len(mean) != channels:
        mean, std = (0.5,) * channels, (0.5,) * channels
    return list(mean), list(std)


def channel_stats(dataset: object, chunk: int = 2048, max_streamed: int = 50000
                  ) -> tuple[list[float], list[float]]:
    """Per-channel mean and population std of a dataset's pixels scaled to [0, 1].

    mean_c = sum x / M, std_c = sqrt(sum x^2 / M - mean_c^2) over all M pixels of channel c of the
    images (accumulated in float64). In-memory datasets (a uint8 ``images`` tensor (N, C, H, W))
    use every image; others (memory-mapped splits with ``get_batch(positions)``, streamed
    datasets) use ``max_streamed`` evenly spaced images.
    """
    n = len(dataset)  # type: ignore[arg-type]
    images = getattr(dataset, "images", None)
    in_memory = isinstance(images, torch.Tensor) and images.ndim == 4 and images.shape[0] == n
    if in_memory:
        order = list(range(n))
    else:
        order = torch.linspace(0, n - 1, min(n, max_streamed)).round().long().unique().tolist()
    get_batch = getattr(dataset, "get_batch", None)
    total = 0
    sums = sq = None
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        if in_memory:
            batch = images[part[0] : part[-1] + 1]  # type: ignore[index]
        elif get_batch is not None:
            batch = torch.as_tensor(get_batch(torch.tensor(part)))
        else:
            batch = torch.stack([dataset[i][0] for i in part])  # type: ignore[index]
        if batch.dtype == torch.uint8:  # exact and fast: a 256-bin histogram per channel
            levels = torch.arange(256, dtype=torch.float64) / 255.0
            hist = torch.stack([torch.bincount(batch[:, c].reshape(-1), minlength=256)
                                for c in range(batch.shape[1])]).to(torch.float64)
            s1, s2 = hist @ levels, hist @ levels.square()
        else:
            x = batch.to(torch.float64)
            s1, s2 = x.sum(dim=(0, 2, 3)), x.square().sum(dim=(0, 2, 3))
        sums, sq = (s1, s2) if sums is None else (sums + s1, sq + s2)
        total += batch.shape[0] * batch.shape[2] * batch.shape[3]
    if sums is None or total == 0:
        raise DataError("Cannot compute normalization statistics of an empty train split.")
    mean = sums / total
    std = (sq / total - mean.square()).clamp(min=0).sqrt().clamp(min=1e-3)
    return [float(m) for m in mean], [float(s) for s in std]


def resolve_normalization(cfg: AugmentConfig, train_set: object) -> None:
    """With ``normalize_stats == "train"`` and no mean/std yet, fill them in from ``train_set``
    (:func:`channel_stats`) and switch ``normalize`` on; otherwise leave ``cfg`` unchanged."""
    if cfg.normalize_stats != "train" or cfg.mean:
        return
    cfg.mean, cfg.std = channel_stats(train_set)
    cfg.normalize = True


def resize_weights(in_len: int, out_len: int, start: Tensor, length: Tensor) -> Tensor:
    """Antialiased bilinear resampling of windows of a 1-d signal as matrices (float64).

    Returns ``R`` of shape (N, out_len, in_len) such that ``R[n] @ v`` resizes the window
    ``v[start[n] : start[n] + length[n]]`` (integer bounds inside ``[0, in_len)``) to ``out_len``
    samples: with ``s = length / out_len`` and output centre ``c_i = start + s (i + 1/2)``,
    ``R[n, i, j] ∝ max(0, 1 - |j + 1/2 - c_i| / max(s, 1))`` for ``j`` in the window, normalised
    over ``j`` (torch's ``interpolate(..., mode="bilinear", antialias=True)`` of the cropped
    window).
    """
    start = start.to(torch.float64).reshape(-1, 1, 1)
    length = length.to(torch.float64).reshape(-1, 1, 1)
    scale = length / out_len
    i = torch.arange(out_len, dtype=torch.float64).view(1, -1, 1)
    j = torch.arange(in_len, dtype=torch.float64).view(1, 1, -1)
    center = start + scale * (i + 0.5)
    w = (1.0 - (j + 0.5 - center).abs() / scale.clamp(min=1.0)).clamp(min=0.0)
    w = w * ((j >= start) & (j < start + length))
    return w / w.sum(dim=-1, keepdim=True)


def resize_shorter_center_crop(
    height: int, width: int, size: int
) -> tuple[Tensor, Tensor]:
    """Row and column matrices (H, H) and (W, W) of ``CenterCrop((H, W))(Resize(size)(u))``.

    ``Resize(size)`` scales the shorter side to ``size`` (the longer to ``int(size * long /
    short)``), bilinear with antialiasing; the centre crop starts at ``round((new - old) / 2)``
    (torchvision's rounding, half to even). ``u' = Ry @ u @ Rx^T``.
    """
    if height <= width:
        new_h, new_w = size, int(size * width / height)
    else:
        new_h, new_w = int(size * height / width), size
    mats = []
    for old, new in ((height, new_h), (width, new_w)):
        full = resize_weights(old, new, torch.zeros(1), torch.full((1,), float(old)))[0]
        top = int(round((new - old) / 2.0))
        mats.append(full[top : top + old])
    return mats[0], mats[1]


class Preprocess(torch.nn.Module):
    """The deterministic preprocessing of one dataset (see the module docstring).

    Args:
        cfg: the ``augment`` section of a run config (its preprocessing keys).
        image_shape: ``(C, H, W)`` of the dataset's images.
    """

    def __init__(self, cfg: AugmentConfig, image_shape: tuple[int, int, int]) -> None:
        super().__init__()
        c, h, w = (int(v) for v in image_shape)
        self.image_shape = (c, h, w)
        self.binarize = None if cfg.binarize is None else float(cfg.binarize)
        self.normalize = bool(cfg.normalize)
        mean = torch.tensor([float(m) for m in cfg.mean] or [0.0], dtype=torch.float32)
        std = torch.tensor([float(s) for s in cfg.std] or [1.0], dtype=torch.float32)
        self.register_buffer("mean", mean.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std.view(1, -1, 1, 1), persistent=False)
        self.clean_resize = int(cfg.clean_resize)
        if self.clean_resize:
            ry, rx = resize_shorter_center_crop(h, w, self.clean_resize)
            self.register_buffer("rows", ry.float(), persistent=False)
            self.register_buffer("cols", rx.float(), persistent=False)

    def finish(self, x: Tensor) -> Tensor:
        """``normalize(binarize(x))`` for float images in [0, 1] (e.g. augmented views)."""
        if self.binarize is not None:
            x = (x > self.binarize).to(x.dtype)
        if not self.normalize:
            return x
        mean = self.mean.to(device=x.device, dtype=x.dtype)
        std = self.std.to(device=x.device, dtype=x.dtype)
        return (x - mean) / std

    def clean(self, x: Tensor) -> Tensor:
        """The clean input: ``finish(center_crop(resize(x)))`` for float images in [0, 1]."""
        if self.clean_resize:
            rows = self.rows.to(device=x.device, dtype=x.dtype)
            cols = self.cols.to(device=x.device, dtype=x.dtype)
            x = rows @ x @ cols.T
        return self.finish(x)

    def to_unit_range(self, x: Tensor) -> Tensor:
        """Undo the normalisation for display: ``clamp(x * std + mean, 0, 1)``."""
        if self.normalize:
            mean = self.mean.to(device=x.device, dtype=x.dtype)
            std = self.std.to(device=x.device, dtype=x.dtype)
            x = x * std + mean
        return x.clamp(0.0, 1.0)
