"""ResNet-18 VICReg and SimVAE (slim ResNet-18 encoder) on 32x32 RGB images, each from its
CIFAR-10 preset: selfsup vs the per-image reference pipeline with the torchvision equivalent of
the preset's augmentations. CIFAR-10 if it is under ``--data-dir``, else synthetic uint8 images
(the throughput does not depend on the pixels). Minutes per step on 2 CPU cores: run by default
on a GPU only.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import print_table
from benchmarks.speed.reference import (
    PILViews,
    joint_embedding_loss,
    reference_loop,
    simvae_views_loss,
    torchvision_transform,
)
from benchmarks.speed.timing import train_steps
from selfsup import pipelines
from selfsup.data.base import ImageDataset
from selfsup.methods import method_class

KEY = "resnet18_32px"  # its entry in speed_<device>.json
GPU_ONLY_BY_DEFAULT = True
STEP_FLAGS = {"--resnet-steps": ("resnet_steps", 5)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resnet-methods", nargs="+", default=list(RESNET32_MODELS),
                        choices=list(RESNET32_MODELS))
    parser.add_argument("--resnet-batch", type=int, default=0,
                        help="samples per step of the resnet32 part (0: each preset's)")
    parser.add_argument("--resnet-steps", type=int, default=30,
                        help="steps per pipeline of the resnet32 part (3 are warm-up)")
    parser.add_argument("--resnet-images", type=int, default=50000,
                        help="synthetic images when CIFAR-10 is not under --data-dir")


def cifar_or_synthetic(data_dir: str, n: int) -> tuple[ImageDataset, str]:
    """CIFAR-10's train split if it is under ``data_dir``, else ``n`` random uint8 32x32 RGB
    images (throughput does not depend on the pixels: the same crops, jitters and convolutions
    run on them)."""
    from selfsup.errors import DataError

    try:
        config = pipelines.build_config("vicreg", "cifar10", flags={"data": {"dir": data_dir}})
        return pipelines.load_split(config, "train"), "cifar10 train split"  # type: ignore
    except DataError:
        gen = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen)
        labels = torch.randint(0, 10, (n,), generator=gen)
        synthetic = ImageDataset(images=images, labels=labels, num_classes=10, name="cifar10",
                                 split="train")
        return synthetic, f"{n} synthetic uint8 32x32 RGB images (CIFAR-10 not found)"


RESNET32_MODELS = {
    "vicreg": "VICReg, ResNet-18 (CIFAR stem) + expander 1024-1024-1024, configs/vicreg/cifar10",
    "simvae": "SimVAE, slim ResNet-18 encoder + ResNet decoder, z = 64, J = 2, "
              "configs/simvae/cifar10",
}


def run(args: argparse.Namespace, workdir: Path, peaks: dict[str, Any]) -> dict[str, Any]:
    """ResNet-18 VICReg and SimVAE on 32x32 images: selfsup vs the per-image reference pipeline.

    Each method runs from its CIFAR-10 preset (networks, augmentations, optimizer), at the
    preset's batch unless ``--resnet-batch``; the reference gets the torchvision equivalent of
    the same augmentations (:func:`torchvision_transform`) in a worker DataLoader and the same
    networks and loss in an eager loop. ``--rounds`` interleaved rounds, best kept.
    """
    from selfsup.losses.vicreg import VICRegLoss

    train_set, source = cifar_or_synthetic(args.data_dir, args.resnet_images)
    warmup, steps = 3, args.resnet_steps
    rows = []
    for name in args.resnet_methods:
        sets = ["trainer.online_probe=false"]
        if args.resnet_batch:
            sets.append(f"data.batch_size={args.resnet_batch}")
        ours, reference = [], []
        for _ in range(args.rounds):
            method, clock = train_steps(name, "cifar10", train_set, steps, sets, workdir,
                                         data_dir=args.data_dir, device=args.device)
            batch = method.config.data.batch_size
            ours.append(clock.rate(warmup, batch))
            fresh = method_class(name)(method.config, method.info).to(args.device)
            transform = torchvision_transform(fresh.config.augment, 32)
            if name == "simvae":
                loss = simvae_views_loss(fresh)
                views = PILViews(train_set.images, transform, fresh.config.model.n_views)
            else:
                vicreg = VICRegLoss(**{k: getattr(fresh.config.model, k)
                                       for k in ("inv_weight", "var_weight", "cov_weight")})
                loss = joint_embedding_loss(fresh, vicreg)
                views = PILViews(train_set.images, transform, 2)
            reference.append(reference_loop(list(fresh.parameters()), loss, views, steps, warmup,
                                            batch, args.workers, args.device))
            del method, fresh
        rows.append({
            "method": name, "batch_samples": batch,
            "selfsup_samples_per_s": round(max(ours), 1),
            "reference_samples_per_s": round(max(reference), 1),
            "speedup": round(max(ours) / max(reference), 2),
            "rounds_selfsup": " ".join(f"{r:.0f}" for r in ours),
            "rounds_reference": " ".join(f"{r:.0f}" for r in reference),
        })
    print_table(rows, list(rows[0]))
    return {
        "models": {name: RESNET32_MODELS[name] for name in args.resnet_methods},
        "data": source, "steps_timed": steps - warmup, "dataloader_workers": args.workers,
        "rounds": args.rounds, "statistic": "best of the interleaved rounds",
        "reference": "torchvision per-image transforms equivalent to the preset's augmentations, "
                     "DataLoader workers, pinned batches copied to the device, eager Adam loop",
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Only this part: ``python -m benchmarks.run speed-resnet32 [ARGS...]``."""
    from benchmarks.speed import main as run_parts

    return run_parts(["--parts", "resnet32", *(argv or [])])
