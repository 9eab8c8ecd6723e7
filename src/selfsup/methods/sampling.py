"""Drawing images from generative methods, and writing them as PNG files.

``random``: the decoder's output for codes drawn from the prior (``method.sample``); ``limiting``:
the limiting distribution of the encoder-decoder Markov chain (``method.sample_limiting``, the
hierarchical VAE). Shared by ``selfsup generate`` and FID (:mod:`selfsup.evaluate.fid`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from selfsup.errors import ConfigError

GENERATE_MODES = ("random", "limiting")


def check_can_generate(method: Any, mode: str = "random", image: str = "mean") -> None:
    """ConfigError unless ``method`` can draw ``mode`` samples showing ``image`` (mean or mode);
    cheap, so callers check before any expensive work."""
    if mode not in GENERATE_MODES:
        raise ConfigError(f"Unknown generation mode {mode!r}; use random or limiting.")
    if not method.generative:
        raise ConfigError(f"{method.name} has no decoder, so it cannot generate images.")
    chain = hasattr(method, "sample_limiting")
    if mode == "limiting" and not chain:
        raise ConfigError(
            f"--mode limiting needs a method with an encoder-decoder Markov chain sampler "
            f"(hvae); {method.name} supports --mode random."
        )
    if image != "mean" and not chain:
        raise ConfigError(
            f"Images showing the {image} of p(x|z) (the symvae FID protocol) need an hvae run; "
            f"{method.name} draws E[x|z] (use the default protocol)."
        )


def generate_images(
    method: Any,
    n: int,
    mode: str = "random",
    steps: int | None = None,
    batch_size: int = 500,
    seed: int = 0,
    image: str = "mean",
    start: str = "noise",
    progress: bool = False,
) -> Tensor:
    """n images in [0, 1] (on the CPU) from a generative run, drawn in batches (seeded).

    ``random``: ``method.sample``; ``limiting``: ``method.sample_limiting`` with ``steps``
    transitions from ``start``, chains run in parallel. ``image``: ``mean`` E[x|z] or ``mode``
    of p(x|z) (hvae). ``progress``: a bar on stderr (images, or chain transitions).
    """
    from tqdm import tqdm

    check_can_generate(method, mode, image)
    if n < 1:
        raise ConfigError(f"The number of images must be >= 1, got {n}.")
    if steps is None and mode == "limiting":
        steps = int(method.config.model.chain_steps)
    batches = [min(batch_size, n - s) for s in range(0, n, batch_size)]
    if mode == "limiting":
        bar = tqdm(total=len(batches) * steps, desc=f"Markov chain ({len(batches)} x {steps})",
                   unit="step", file=sys.stderr, disable=not progress, mininterval=1.0,
                   dynamic_ncols=True)
    else:
        bar = tqdm(total=n, desc="Sampling", unit="img", file=sys.stderr,
                   disable=not progress, mininterval=1.0, dynamic_ncols=True)
    torch.manual_seed(seed)
    was_training = method.training
    method.eval()
    out = []
    try:
        with torch.no_grad():
            for k in batches:
                if mode == "limiting":
                    images = method.sample_limiting(k, steps, start=start, image=image,
                                                    tick=bar.update)
                else:
                    images = method.sample(k) if image == "mean" else method.sample(k, image)
                    bar.update(k)
                out.append(images.float().clamp(0, 1).cpu())
    finally:
        method.train(was_training)
        bar.close()
    return torch.cat(out)


def quantize_images(images: Tensor) -> Tensor:
    """Images in [0, 1] rounded to 8 bits (what a PNG stores), still float in [0, 1]."""
    return (images.float().clamp(0, 1) * 255).round() / 255


def save_image_folder(images: Tensor, out_dir: str | Path) -> dict[str, Any]:
    """Write ``out_dir/samples/NNNNNN.png`` (8-bit) and ``out_dir/grid.png`` (first 64)."""
    import numpy as np
    from PIL import Image
    from torchvision.utils import save_image

    out_dir = Path(out_dir)
    folder = out_dir / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    pixels = (quantize_images(images) * 255).to(torch.uint8).cpu().numpy()
    for i, img in enumerate(pixels):
        arr = img[0] if img.shape[0] == 1 else np.transpose(img, (1, 2, 0))
        Image.fromarray(np.ascontiguousarray(arr)).save(folder / f"{i:06d}.png")
    grid = out_dir / "grid.png"
    save_image(quantize_images(images[:64]), grid, nrow=8, padding=2, pad_value=1.0)
    return {"samples": str(folder), "grid": str(grid), "n": int(images.shape[0])}
