"""selfsup's VICReg throughput with each speed feature switched on alone: fused Adam,
channels-last, ``torch.compile`` of the networks, no NaN guard, bf16 autocast (where the CPU has
native bf16).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from benchmarks.common import print_table
from benchmarks.speed.timing import load_mnist, train_steps

KEY = "speed_features"  # its entry in speed_<device>.json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """This part has no options of its own (it uses --steps, --rounds, --workers)."""


def run(args: argparse.Namespace, workdir: Path, peaks: dict[str, Any]) -> dict[str, Any]:
    """selfsup VICReg throughput with each speed feature switched on alone (same run)."""
    train_set = load_mnist(args.data_dir)
    batch, warmup = 256, 5
    base = [f"data.batch_size={batch}", "trainer.online_probe=false"]
    toggles = {
        "baseline (fp32, eager, contiguous, foreach Adam)": [],
        "optim.fused=true": ["optim.fused=true"],
        "trainer.channels_last=true": ["trainer.channels_last=true"],
        "trainer.compile=true": ["trainer.compile=true"],
        "trainer.check_finite=false (no per-step NaN guard: no host sync)":
            ["trainer.check_finite=false"],
    }
    if peaks["bf16_native"]:
        toggles["trainer.precision=bf16-mixed"] = ["trainer.precision=bf16-mixed"]
    rows = []
    for label, sets in toggles.items():
        warm = warmup + (10 if "compile" in label else 0)  # compilation happens in early steps
        _, clock = train_steps("vicreg", "mnist", train_set, args.steps + warm - warmup,
                                [*base, *sets], workdir, data_dir=args.data_dir,
                                device=args.device)
        rows.append({"setting": label, "two_view_samples_per_s": round(clock.rate(warm, batch), 1)})
    base_rate = rows[0]["two_view_samples_per_s"]
    for row in rows:
        row["vs_baseline"] = round(row["two_view_samples_per_s"] / base_rate, 2)
    print_table(rows, ["setting", "two_view_samples_per_s", "vs_baseline"])
    return {"model": "VICReg conv backbone on MNIST, batch 256", "rows": rows,
            "note": None if peaks["bf16_native"] else
            "bf16-mixed not timed: this CPU has no native bf16 (emulated matmuls are slower)"}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Only this part: ``python -m benchmarks.run speed-toggles [ARGS...]``."""
    from benchmarks.speed import main as run_parts

    return run_parts(["--parts", "toggles", *(argv or [])])
