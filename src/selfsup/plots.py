"""Images and figures a run writes: reconstruction and sample grids, loss curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torchvision.utils import make_grid, save_image

from selfsup.data.base import ImageDataset


def _grid(images: torch.Tensor, nrow: int = 8) -> torch.Tensor:
    return make_grid(images.float().clamp(0, 1).cpu(), nrow=nrow, padding=2, pad_value=1.0)


@torch.no_grad()
def save_generative_grids(
    method: Any, dataset: ImageDataset, out_dir: Path, n: int = 32
) -> dict[str, Path]:
    """Write ``reconstructions.png`` (rows: input, reconstruction) and ``samples.png``.

    Returns the paths written. Works for any method with ``reconstruct`` and ``sample``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    was_training = method.training
    method.eval()
    images = dataset.images[:n].to(method.device)
    x = method.preprocess(images)
    x_vis = method.augment.to_float(images)
    recon = method.reconstruct(x)
    pairs = torch.stack([x_vis.float(), recon.float()], dim=1)  # (n, 2, C, H, W)
    rows = []
    for start in range(0, n, 8):
        block = pairs[start : start + 8]
        rows.append(block[:, 0])
        rows.append(block[:, 1])
    paths = {
        "reconstructions": out_dir / "reconstructions.png",
        "samples": out_dir / "samples.png",
    }
    save_image(_grid(torch.cat(rows)), paths["reconstructions"])
    save_image(_grid(method.sample(64)), paths["samples"])
    method.train(was_training)
    return paths
