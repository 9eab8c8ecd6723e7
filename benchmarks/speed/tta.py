"""Time to accuracy: SimCLR (the fastest discriminative method here) on real MNIST; training
pauses every ``--tta-every`` steps for a linear probe (L-BFGS, fit on 10000 training images,
scored on the 10000 test images; the probe's time is excluded from the training clock) and stops
at ``--tta-target`` accuracy, which is then confirmed with a probe fit on all 60000.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

from benchmarks.speed.timing import load_mnist, train_steps
from selfsup import pipelines
from selfsup.data.base import ImageDataset

KEY = "time_to_accuracy"  # its entry in speed_<device>.json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tta-method", default="simclr")
    parser.add_argument("--tta-batch", type=int, default=256)
    parser.add_argument("--tta-every", type=int, default=25)
    parser.add_argument("--tta-target", type=float, default=0.97)
    parser.add_argument("--tta-max-steps", type=int, default=1000)


class ProbeUntil(Callback):
    """Every ``every`` steps: linear probe on frozen features; stop at ``target`` accuracy.

    The probe's time is measured and subtracted, so ``train_seconds`` is training alone.
    """

    def __init__(self, every: int, target: float, train: ImageDataset, test: ImageDataset):
        self.every, self.target, self.train, self.test = every, target, train, test
        self.history: list[dict[str, float]] = []
        self.started = time.perf_counter()
        self.probe_seconds = 0.0
        self.reached: dict[str, float] | None = None

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.started = time.perf_counter()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        step = trainer.global_step
        if step % self.every:
            return
        from selfsup.evaluate import extract_features, linear_probe

        t0 = time.perf_counter()
        train_seconds = t0 - self.started - self.probe_seconds
        pl_module.eval()
        tx, ty = extract_features(pl_module.represent, self.train, 1024, pl_module.device)
        vx, vy = extract_features(pl_module.represent, self.test, 1024, pl_module.device)
        pl_module.train()
        acc = float(linear_probe(tx, ty, vx, vy, seed=0)["accuracy"])
        self.probe_seconds += time.perf_counter() - t0
        self.history.append({"step": step, "train_seconds": round(train_seconds, 1),
                             "linear_accuracy": acc})
        print(f"  step {step}: {train_seconds:.1f} s training, linear {acc:.4f}", flush=True)
        if acc >= self.target and self.reached is None:
            self.reached = self.history[-1]
            trainer.should_stop = True


def run(args: argparse.Namespace, workdir: Path, peaks: dict[str, Any]) -> dict[str, Any]:
    train_set = load_mnist(args.data_dir)
    test = load_mnist(args.data_dir, "test")
    gen = torch.Generator().manual_seed(0)
    probe_train = train_set.subset(torch.randperm(len(train_set), generator=gen)[:10000])
    probe = ProbeUntil(args.tta_every, args.tta_target, probe_train, test)
    sets = [f"data.batch_size={args.tta_batch}"]
    wall0 = time.perf_counter()
    method, _ = train_steps(args.tta_method, "mnist", train_set, args.tta_max_steps, sets,
                             workdir, callbacks=[probe], data_dir=args.data_dir,
                             device=args.device)
    wall = time.perf_counter() - wall0
    confirm = None
    if probe.reached is not None:
        method.to(args.device).eval()
        features = pipelines.run_features(method, args.data_dir, args.device)
        confirm = pipelines.evaluate(method, "linear", features=features)["accuracy"]
    return {
        "method": args.tta_method, "batch": args.tta_batch, "target": args.tta_target,
        "probe": "L-BFGS logistic regression, 10000 training images, full test split",
        "reached": probe.reached, "history": probe.history,
        "train_seconds_to_target": None if probe.reached is None
        else probe.reached["train_seconds"],
        "wall_seconds_including_probes": round(wall, 1),
        "confirmed_linear_accuracy_full_train": confirm,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Only this part: ``python -m benchmarks.run speed-tta [ARGS...]``."""
    from benchmarks.speed import main as run_parts

    return run_parts(["--parts", "tta", *(argv or [])])
