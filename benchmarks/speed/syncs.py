"""Host-device synchronizations per training iteration of several methods (GPU only), counted
with ``torch.cuda.set_sync_debug_mode("warn")`` (each synchronizing CUDA call warns and names its
Python line), with the per-step NaN guard ``trainer.check_finite`` on and off.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

from benchmarks.common import print_table
from benchmarks.speed.methods import SPEED_METHODS
from benchmarks.speed.timing import load_mnist, train_steps

KEY = "host_syncs"  # its entry in speed_<device>.json
GPU_ONLY_BY_DEFAULT = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sync-methods", nargs="+", default=["vicreg", "byol", "simclr",
                                                               "simvae", "vae"],
                        choices=SPEED_METHODS, help="methods of the syncs part (GPU only)")


class SyncCounter(Callback):
    """Counts host-device synchronizations from step ``start`` to the end of training, with
    ``torch.cuda.set_sync_debug_mode("warn")``: PyTorch warns at every synchronizing CUDA call
    (``.item()``, ``bool(tensor)``, ``nonzero``, blocking copies), and each warning names the
    Python line that made it."""

    def __init__(self, start: int) -> None:
        self.start = start
        self.sites: dict[str, int] = {}
        self.steps = 0
        self._context: Any = None

    def on_train_batch_start(self, trainer: Any, *args: Any) -> None:
        if self._context is None and trainer.global_step >= self.start:
            self._context = warnings.catch_warnings(record=True)
            self._records = self._context.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
        if self._context is not None:
            self.steps += 1

    def on_train_end(self, trainer: Any, *args: Any) -> None:
        if self._context is None:
            return
        torch.cuda.set_sync_debug_mode(0)
        for record in self._records:
            if "synchroniz" in str(record.message):
                site = f"{Path(record.filename).name}:{record.lineno}"
                self.sites[site] = self.sites.get(site, 0) + 1
        self._context.__exit__(None, None, None)
        self._context = None


def run(args: argparse.Namespace, workdir: Path, peaks: dict[str, Any]) -> dict[str, Any]:
    """Host-device synchronizations per training iteration (GPU only), per method, with the NaN
    guard (``trainer.check_finite``, one ``bool`` per step by design) on and off."""
    if args.device.type != "cuda":
        raise SystemExit("The syncs part needs a GPU (--device cuda): host-device "
                         "synchronization does not exist on the CPU.")
    train_set = load_mnist(args.data_dir)
    rows = []
    for name in args.sync_methods:
        for check in ("true", "false"):
            counter = SyncCounter(start=5)
            sets = ["data.batch_size=256", f"trainer.check_finite={check}",
                    "trainer.log_every=1000"]
            train_steps(name, "mnist", train_set, 25, sets, workdir, callbacks=[counter],
                         data_dir=args.data_dir, device=args.device)
            total = sum(counter.sites.values())
            rows.append({"method": name, "check_finite": check, "steps": counter.steps,
                         "syncs_per_step": round(total / max(counter.steps, 1), 2),
                         "sites": ", ".join(f"{k} x{v}" for k, v in sorted(counter.sites.items()))})
    print_table(rows, ["method", "check_finite", "steps", "syncs_per_step", "sites"])
    return {"dataset": "mnist, batch 256, each method's MNIST preset", "rows": rows,
            "how": "torch.cuda.set_sync_debug_mode('warn') over the timed steps; every "
                   "synchronizing CUDA call warns and names its Python line"}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Only this part: ``python -m benchmarks.run speed-syncs [ARGS...]``."""
    from benchmarks.speed import main as run_parts

    return run_parts(["--parts", "syncs", *(argv or [])])
