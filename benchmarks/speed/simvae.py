"""SimVAE's MLP (784-2000-500-500-2z, z = 10) on MNIST, J = 2 views: model FLOPs per image
counted with ``torch.utils.flop_counter`` on one full training step (forward + backward),
throughput in fp32 and under bf16 autocast (``trainer.precision=bf16-mixed``), the achieved
fraction of the measured fp32 / bf16 peaks, and linear-probe accuracy of both after the same
short training run (``--simvae-epochs``) to show bf16 costs no accuracy.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import print_table
from benchmarks.speed.timing import load_mnist, train_steps, training_flops_per_sample
from selfsup.data.base import ImageDataset

KEY = "simvae"  # its entry in speed_<device>.json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--simvae-batch", type=int, default=256)
    parser.add_argument("--simvae-epochs", type=int, default=1)
    parser.add_argument("--simvae-lr", type=float, default=1e-3)


def _linear_accuracy(method: Any, data_dir: str, train_set: ImageDataset,
                     device: torch.device) -> float:
    from selfsup.evaluate import extract_features, linear_probe

    method.to(device).eval()
    test = load_mnist(data_dir, "test")
    gen = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(train_set), generator=gen)[:20000]
    sub = train_set.subset(idx)
    tx, ty = extract_features(method.represent, sub, 1024, device)
    vx, vy = extract_features(method.represent, test, 1024, device)
    method.cpu().train()
    return float(linear_probe(tx, ty, vx, vy, seed=0)["accuracy"])


def run(args: argparse.Namespace, workdir: Path, peaks: dict[str, Any]) -> dict[str, Any]:
    """Throughput and fraction of peak in fp32 and bf16; accuracy of both after the same run.

    Where the CPU has no native bf16 (bf16 matmul slower than fp32: emulated), bf16 throughput is
    measured over a few steps only and the accuracy comparison is skipped (it would only show a
    slower run).
    """
    train_set = load_mnist(args.data_dir)
    batch, warmup = args.simvae_batch, 5
    base = [f"data.batch_size={batch}", "trainer.online_probe=false",
            f"optim.lr={args.simvae_lr}"]
    accuracy_steps = args.simvae_epochs * (len(train_set) // batch)
    results: dict[str, dict[str, float]] = {}
    for precision in ("32-true", "bf16-mixed"):
        native = precision == "32-true" or peaks["bf16_native"]
        steps = max(accuracy_steps, args.steps) if native else warmup + 6
        method, clock = train_steps("simvae", "mnist", train_set, steps,
                                     [*base, f"trainer.precision={precision}"], workdir,
                                     data_dir=args.data_dir, device=args.device)
        results[precision] = {"samples_per_s": clock.rate(warmup, batch), "steps": steps}
        if native:
            results[precision]["linear_accuracy"] = _linear_accuracy(
                method, args.data_dir, train_set, args.device)
    views = method.config.model.n_views
    flops = training_flops_per_sample(method.cpu(), 64) / views
    rows = []
    for precision, r in results.items():
        achieved = r["samples_per_s"] * views * flops / 1e9
        peak = peaks["bf16_gflops"] if precision == "bf16-mixed" else peaks["fp32_gflops"]
        rows.append({
            "precision": precision,
            "steps": r["steps"],
            "samples_per_s": round(r["samples_per_s"], 1),
            "images_per_s": round(r["samples_per_s"] * views, 1),
            "model_gflops_per_s": round(achieved, 1),
            "fraction_of_fp32_peak": round(achieved / peaks["fp32_gflops"], 3),
            "fraction_of_own_dtype_peak": round(achieved / peak, 3),
            "linear_accuracy": round(r["linear_accuracy"], 4) if "linear_accuracy" in r else None,
        })
    print_table(rows, list(rows[0]))
    both = all("linear_accuracy" in r for r in results.values())
    return {
        "model": "SimVAE MLP 784-2000-500-500-20 / 10-500-500-2000-784, Bernoulli, J = 2",
        "batch_samples": batch, "views": views, "accuracy_budget_epochs": args.simvae_epochs,
        "lr": args.simvae_lr, "training_flops_per_image": flops,
        "linear_probe": "L-BFGS, 20000 training images, full test split",
        "rows": rows,
        "bf16_speedup": round(results["bf16-mixed"]["samples_per_s"]
                              / results["32-true"]["samples_per_s"], 2),
        "bf16_accuracy_delta_points": round(
            100 * (results["bf16-mixed"]["linear_accuracy"]
                   - results["32-true"]["linear_accuracy"]), 2) if both else None,
        "bf16_native": peaks["bf16_native"],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Only this part: ``python -m benchmarks.run speed-simvae [ARGS...]``."""
    from benchmarks.speed import main as run_parts

    return run_parts(["--parts", "simvae", *(argv or [])])
