"""CPU throughput of selfsup's BatchAugment vs kornia.augmentation vs per-image torchvision.

Run as ``python benchmarks/augment_speed.py``; writes ``benchmarks/results/augment_cpu.json``.
Two settings: (a) 1x28x28, batch 512, random resized crop + horizontal flip; (b) 3x32x32,
batch 256, the SimCLR set (crop scale [0.08, 1], hflip 0.5, ColorJitter(0.4, 0.4, 0.4, 0.1) with
p = 0.8, grayscale p = 0.2). Input is a uint8 batch; every pipeline returns float32 in [0, 1].
Figure: images per second of one whole-batch call, best of the repeats (``images_per_s``; least
affected by other processes on a shared machine) and median (``images_per_s_median``); the
pipelines are timed round-robin.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from selfsup.data.augment import AugmentConfig, BatchAugment  # noqa: E402

THREADS = 2
REPEATS = 15


def _time_all(fns: dict[str, Callable[[], torch.Tensor]], n_images: int) -> dict[str, dict]:
    """Time the pipelines round-robin (so background load hits all of them alike)."""
    for fn in fns.values():
        fn()  # warm-up (allocations, lazy init)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(REPEATS):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    out = {}
    for name, ts in times.items():
        med, best = statistics.median(ts), min(ts)
        out[name] = {
            "images_per_s": n_images / best,
            "images_per_s_median": n_images / med,
            "min_s": best,
            "median_s": med,
        }
    return out


def _kornia(size: int, color: bool) -> torch.nn.Module | None:
    try:
        import kornia.augmentation as K
    except ImportError:
        return None
    ops: list[torch.nn.Module] = [
        K.RandomResizedCrop((size, size), scale=(0.08, 1.0)),
        K.RandomHorizontalFlip(p=0.5),
    ]
    if color:
        ops += [K.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8), K.RandomGrayscale(p=0.2)]
    return torch.nn.Sequential(*ops)


def _torchvision(size: int, color: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    from torchvision.transforms import v2

    ops = [v2.RandomResizedCrop(size, scale=(0.08, 1.0), antialias=True), v2.RandomHorizontalFlip()]
    if color:
        ops += [
            v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            v2.RandomGrayscale(p=0.2),
        ]
    ops.append(v2.ToDtype(torch.float32, scale=True))
    tf = v2.Compose(ops)
    return lambda x: torch.stack([tf(img) for img in x])


def _setting(name: str, shape: tuple[int, int, int], batch: int, color: bool) -> dict:
    h = shape[1]
    x = torch.randint(0, 256, (batch, *shape), dtype=torch.uint8, generator=torch.Generator())
    cfg = AugmentConfig(crop_scale=[0.08, 1.0], hflip=0.5)
    if color:
        cfg.jitter, cfg.jitter_prob, cfg.grayscale = [0.4, 0.4, 0.4, 0.1], 0.8, 0.2
    ours = BatchAugment(cfg, shape)
    gen = torch.Generator().manual_seed(0)
    result: dict = {"image_shape": list(shape), "batch": batch, "color": color}
    fns: dict[str, Callable[[], torch.Tensor]] = {"selfsup": lambda: ours(x, gen)}
    kaug = _kornia(h, color)
    if kaug is not None:
        fns["kornia"] = lambda: kaug(x.float() / 255)
    tv = _torchvision(h, color)
    fns["torchvision_per_image"] = lambda: tv(x)
    result.update(_time_all(fns, batch))
    result.setdefault("kornia", None)
    line = ", ".join(
        f"{k} {v['images_per_s']:.0f} img/s (median {v['images_per_s_median']:.0f})"
        for k, v in result.items()
        if isinstance(v, dict) and "images_per_s" in v
    )
    print(f"{name}: {line}")
    return result


def main() -> None:
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    try:
        import kornia

        kornia_version = kornia.__version__
    except ImportError:
        kornia_version = None
    import torchvision

    out = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
        },
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "kornia": kornia_version,
        "repeats": REPEATS,
        "unit": "images per second of one whole-batch call on CPU (best and median of repeats)",
        "settings": {
            "a_1x28x28_b512_crop_flip": _setting("a", (1, 28, 28), 512, color=False),
            "b_3x32x32_b256_simclr": _setting("b", (3, 32, 32), 256, color=True),
        },
    }
    path = ROOT / "benchmarks" / "results" / "augment_cpu.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
