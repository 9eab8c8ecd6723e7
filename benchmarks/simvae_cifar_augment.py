"""SimVAE's CIFAR-10 augmentation: the released order vs cropping the 32 px image, cost and error.

Run: ``python -m benchmarks.simvae_cifar_augment`` (writes
``benchmarks/results/simvae_cifar_augment_cpu.json``).

The released loader (alicebizeul/simvae src/data/data_loader.py:49-55) resizes each 32 px image to
256 x 256, colour-jitters it (ColorJitter(0.8, 0.8, 0.8, 0.2), always), then takes a random resized
crop (scale 0.6-1, ratio 0.75-1.3) of the 256 px image back to 32 px (antialiased) and flips it
vertically. selfsup's preset does exactly that (``augment.pre_resize: 256, jitter_first: true``).
The shortcut it replaced crops the 32 px image and resizes the crop to 32 px (bilinear), then
jitters. The two are not the same function: the 256 px detour blurs (upsampling followed by an
antialiased downsampling is a wider filter than one bilinear resampling), and the clamps of the
jitter and its hue rotation do not commute with resampling. This script measures both effects on
identical parameters (crop boxes drawn on the 256 px image and rounded to multiples of 8, so that
box / 8 is the same region of the 32 px image; the same jitter factors and order), and the
throughput of both pipelines on a batch of 128 images (64 samples x 2 views).

CIFAR-10 is not on every machine, so the images are synthetic and natural-looking in spectrum:
a sum of bicubically upsampled noise at 4, 8 and 16 px and a little pixel noise (state this
with any number taken from here).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from selfsup.data.augment import AugmentConfig, BatchAugment

SIMVAE = {"crop_scale": [0.6, 1.0], "crop_ratio": [0.75, 1.3], "vflip": 0.5,
          "jitter": [0.8, 0.8, 0.8, 0.2], "jitter_prob": 1.0}


def synthetic_images(n: int, seed: int) -> torch.Tensor:
    """uint8 (n, 3, 32, 32) images with most energy at low spatial frequencies."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 3, 32, 32)
    for side, weight in ((4, 0.5), (8, 0.3), (16, 0.15)):
        noise = torch.rand(n, 3, side, side, generator=g)
        x += weight * F.interpolate(noise, size=(32, 32), mode="bicubic", align_corners=False)
    x += 0.05 * torch.rand(n, 3, 32, 32, generator=g)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def aligned_params(faithful: BatchAugment, n: int, seed: int) -> tuple[dict, dict]:
    """Parameters for the 256 px pipeline with boxes on multiples of 8, and the same parameters
    with the boxes divided by 8 for the 32 px pipeline."""
    p = faithful.sample_params(n, torch.Generator().manual_seed(seed))
    box = (p["box"].double() / 8).round().long().clamp(min=0)
    box[:, 2:] = box[:, 2:].clamp(min=1)
    box[:, 0] = torch.minimum(box[:, 0], 32 - box[:, 2])
    box[:, 1] = torch.minimum(box[:, 1], 32 - box[:, 3])
    big = dict(p, box=box * 8)
    return big, dict(p, box=box)


def measure(n_batch: int, repeats: int, seed: int) -> dict:
    faithful = BatchAugment(AugmentConfig(pre_resize=256, jitter_first=True, **SIMVAE), (3, 32, 32))
    shortcut = BatchAugment(AugmentConfig(**SIMVAE), (3, 32, 32))
    no_jitter = {**SIMVAE, "jitter_prob": 0.0}
    faithful_nj = BatchAugment(AugmentConfig(pre_resize=256, **no_jitter), (3, 32, 32))
    shortcut_nj = BatchAugment(AugmentConfig(**no_jitter), (3, 32, 32))
    images = synthetic_images(1024, seed)
    errors = {}
    for name, (a, b) in {"crop_only": (faithful_nj, shortcut_nj),
                         "crop_and_jitter": (faithful, shortcut)}.items():
        big, small = aligned_params(a, images.shape[0], seed + 1)
        diff = (a.apply(images, big) - b.apply(images, small)).abs()
        errors[name] = {"mean_abs": float(diff.mean()),
                        "p99_abs": float(diff.flatten().quantile(0.99)),
                        "max_abs": float(diff.max())}
    batch = images[:n_batch]
    times: dict[str, list[float]] = {"released_order_256px": [], "crop_at_32px": []}
    fns = {"released_order_256px": faithful, "crop_at_32px": shortcut}
    for fn in fns.values():
        fn(batch, torch.Generator().manual_seed(0))
    for r in range(repeats):
        for key, fn in fns.items():
            start = time.perf_counter()
            fn(batch, torch.Generator().manual_seed(r))
            times[key].append(time.perf_counter() - start)
    speed = {k: {"images_per_s_best": round(n_batch / min(v), 1),
                 "images_per_s_median": round(n_batch / statistics.median(v), 1)}
             for k, v in times.items()}
    ratio = min(times["released_order_256px"]) / min(times["crop_at_32px"])
    return {"pixel_difference": errors, "throughput": speed, "cost_ratio_best": round(ratio, 2)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/simvae_cifar_augment_cpu.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = {
        "benchmark": "simvae_cifar_augment",
        "machine": {"platform": platform.platform(), "torch": torch.__version__,
                    "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "load_average_at_end": None},
        "images": "synthetic (upsampled 4/8/16 px noise), 1024 for the differences",
        "batch": args.batch,
        **measure(args.batch, args.repeats, args.seed),
    }
    result["machine"]["load_average_at_end"] = list(os.getloadavg())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("pixel_difference", "throughput",
                                             "cost_ratio_best")}, indent=2))
    return result


if __name__ == "__main__":
    main()
