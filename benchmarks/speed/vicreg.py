"""VICReg, selfsup vs the per-image reference pipelines (torchvision, lightly).

The small conv backbone of ``configs/vicreg/mnist.yaml`` on 28x28 MNIST images, batch 256, two
views per image, compared on the same networks, batch and machine: (a) selfsup: uint8 images in
memory, whole-batch augmentation (``BatchAugment``), the Lightning engine; (b) torchvision
per-image PIL transforms in a ``DataLoader`` with worker processes and an eager training loop
with the same loss; (c) the same with lightly's ``VICRegTransform`` and ``VICRegLoss``. Figure:
two-view samples per second after warm-up, and the ratios.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import print_table
from benchmarks.speed.reference import PILViews, joint_embedding_loss, reference_loop
from benchmarks.speed.timing import load_mnist, train_steps
from selfsup.data.base import ImageDataset
from selfsup.methods import method_class

KEY = "vicreg"  # its entry in speed_<device>.json
STEP_FLAGS = {"--steps": ("steps", 7)}  # a rate needs two timed steps after warm-up


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """This part has no options of its own (it uses --steps, --rounds, --workers)."""


def _reference_vicreg(
    method: Any, train_set: ImageDataset, transform: Any, loss_fn: Any, steps: int, warmup: int,
    batch: int, workers: int, device: torch.device, multi_view: bool = False,
) -> float:
    """VICReg through :func:`reference_loop`; two-view samples/s."""
    method.to(device)
    params = list(method.backbone.parameters()) + list(method.projector.parameters())
    return reference_loop(params, joint_embedding_loss(method, loss_fn),
                          PILViews(train_set.images, transform, 2, multi_view), steps, warmup,
                          batch, workers, device)


def run(args: argparse.Namespace, workdir: Path, peaks: dict[str, Any]) -> dict[str, Any]:
    """selfsup vs the per-image reference pipelines, ``--rounds`` interleaved rounds, best kept.

    Interleaving (selfsup, reference, lightly, selfsup, ...) and keeping each pipeline's best
    round makes the ratio robust to other load on a shared machine.
    """
    import torchvision.transforms as T

    from selfsup.losses.vicreg import VICRegLoss

    train_set = load_mnist(args.data_dir)
    batch, steps, warmup = 256, args.steps, 5
    sets = [f"data.batch_size={batch}", "trainer.online_probe=false"]
    crop = T.RandomResizedCrop(28, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3), antialias=True)
    reference_tf = T.Compose([crop, T.ToTensor()])
    ours_loss = VICRegLoss()
    try:
        from lightly.loss import VICRegLoss as LightlyVICRegLoss
        from lightly.transforms import VICRegTransform
    except ImportError:
        lightly_tf = None
    else:
        lightly_tf = VICRegTransform(
            input_size=28, cj_prob=0.0, min_scale=0.5, random_gray_scale=0.0,
            gaussian_blur=0.0, solarize_prob=0.0, hf_prob=0.0, vf_prob=0.0, rr_prob=0.0,
            normalize=None,
        )
    names = {"ours": "selfsup (BatchAugment + engine)",
             "torchvision": "reference: torchvision per-image + DataLoader workers + eager loop",
             "lightly": "reference: lightly VICRegTransform + VICRegLoss + DataLoader workers"}
    rounds: dict[str, list[float]] = {key: [] for key in names}
    for _ in range(args.rounds):
        method, clock = train_steps("vicreg", "mnist", train_set, steps, sets, workdir,
                                     data_dir=args.data_dir, device=args.device)
        rounds["ours"].append(clock.rate(warmup, batch))
        fresh = method_class("vicreg")(method.config, method.info)
        rounds["torchvision"].append(_reference_vicreg(
            fresh, train_set, reference_tf, ours_loss, steps, warmup, batch, args.workers,
            args.device))
        if lightly_tf is not None:
            fresh = method_class("vicreg")(method.config, method.info)
            rounds["lightly"].append(_reference_vicreg(
                fresh, train_set, lightly_tf, LightlyVICRegLoss(), steps, warmup, batch,
                args.workers, args.device, multi_view=True))
    best = {key: max(v) for key, v in rounds.items() if v}
    ours = best["ours"]
    table = [{"pipeline": names[k], "two_view_samples_per_s": round(v, 1),
              "rounds": " ".join(f"{r:.0f}" for r in rounds[k]),
              "ratio_selfsup_over_this": round(ours / v, 2)} for k, v in best.items()]
    print_table(table, ["pipeline", "two_view_samples_per_s", "rounds", "ratio_selfsup_over_this"])
    return {
        "model": "VICReg, conv backbone 28->14->7->4 (2048 features), projector 1024-1024-1024",
        "batch": batch, "steps_timed": steps - warmup, "dataloader_workers": args.workers,
        "rounds": args.rounds, "statistic": "best of the interleaved rounds",
        "augmentation": "random resized crop 28 px, scale 0.5-1, ratio 3/4-4/3 (MNIST preset)",
        "rows": table,
        "speedup_vs_torchvision_reference": round(ours / best["torchvision"], 2),
        "speedup_vs_lightly_reference": round(ours / best["lightly"], 2)
        if "lightly" in best else None,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Only this part: ``python -m benchmarks.run speed-vicreg [ARGS...]``."""
    from benchmarks.speed import main as run_parts

    return run_parts(["--parts", "vicreg", *(argv or [])])
