"""Every method's training throughput on MNIST at the same batch (``--methods-batch``, 256
source images per step; the views a method draws from them are its own), each from its MNIST
preset, its model FLOPs per sample (``torch.utils.flop_counter``, forward + backward) and the
achieved fraction of the measured fp32 matmul peak, and the peak resident memory of the process
while it trains (sampled from ``/proc/self/statm``; on a GPU, ``torch.cuda.max_memory_allocated``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from benchmarks.common import print_table
from benchmarks.speed.timing import load_mnist, peak_memory, train_steps, training_flops_per_sample

KEY = "methods"  # its entry in speed_<device>.json
SPEED_METHODS = ("vae", "simvae", "aavae", "vicreg", "byol", "simclr", "barlowtwins",
                 "mocosimclr", "hvae")
STEP_FLAGS = {"--methods-steps": ("methods_steps", 2)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--methods", nargs="+", default=list(SPEED_METHODS),
                        choices=SPEED_METHODS, help="methods of the `methods` part")
    parser.add_argument("--methods-batch", type=int, default=256)
    parser.add_argument("--methods-steps", type=int, default=20, help="timed steps per method")


def run(args: argparse.Namespace, workdir: Path, peaks: dict[str, Any]) -> dict[str, Any]:
    """Samples/s, model FLOPs per sample, the achieved fraction of the fp32 matmul peak and the
    peak memory of every method at the same batch on MNIST."""
    train_set = load_mnist(args.data_dir)
    batch, warmup = args.methods_batch, 5
    rows = []
    for name in args.methods:
        sets = [f"data.batch_size={batch}", "trainer.online_probe=false"]
        steps = warmup + args.methods_steps
        if name == "hvae":  # the symmetric preset takes two optimizer steps (players) per batch
            sets += ["model.iterations=0", "data.train_split=train"]
            steps *= 2
        with peak_memory(args.device) as mem:
            method, clock = train_steps(name, "mnist", train_set, steps, sets, workdir,
                                         data_dir=args.data_dir, device=args.device)
        kind = "gpu_allocated" if args.device.type == "cuda" else "rss"
        rate = clock.rate(warmup, batch)
        flops = training_flops_per_sample(method.cpu(), 64)
        rows.append({
            "method": name,
            "samples_per_s": round(rate, 1),
            "model_mflop_per_sample": round(flops / 1e6, 1),
            "fraction_of_fp32_peak": round(rate * flops / 1e9 / peaks["fp32_gflops"], 3),
            f"peak_{kind}_mib": round(mem.peak / 2**20),
            f"{kind}_increase_mib": round((mem.peak - mem.start) / 2**20),
            "parameters_m": round(sum(p.numel() for p in method.parameters()) / 1e6, 2),
        })
        del method
    print_table(rows, list(rows[0]))
    return {"batch_samples": batch, "timed_steps": args.methods_steps, "warmup_steps": warmup,
            "flops": "torch.utils.flop_counter (matmuls and convolutions) on one training step, "
                     "forward + backward, per source sample; the online probe is off",
            "dataset": "mnist (28x28); each method's MNIST preset networks and views",
            "rows": rows}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Only this part: ``python -m benchmarks.run speed-methods [ARGS...]``."""
    from benchmarks.speed import main as run_parts

    return run_parts(["--parts", "methods", *(argv or [])])
