"""Training speed, measured side by side in one process on the same machine.

Run as ``python -m benchmarks.run speed [--data-dir DIR] [--threads 2]`` (or ``python -m
benchmarks.speed``); one part alone as ``python -m benchmarks.run speed-PART`` (or ``--parts
PART ...``). Each part is a module of this package over the shared :mod:`.timing` (matmul peak,
step clock, short engine runs, FLOPs, memory) and :mod:`.reference` (the per-image reference
pipeline):

``peak`` (always)
    The machine's measured matmul peak: GFLOP/s of square fp32 and bf16 matrix products (best of
    several repeats), the denominator of every "fraction of peak" below.
:mod:`.vicreg`
    VICReg: selfsup vs the per-image reference pipelines (torchvision, lightly).
:mod:`.toggles`
    selfsup's VICReg throughput with each speed feature switched on alone.
:mod:`.simvae`
    SimVAE's MLP: FLOPs, fraction of peak, fp32 vs bf16 throughput and accuracy.
:mod:`.methods`
    Every method at the same batch: samples/s, FLOPs, fraction of peak, peak memory.
:mod:`.tta`
    Time to 97% linear-probe accuracy on real MNIST (SimCLR).
:mod:`.resnet32` (default on a GPU only)
    ResNet-18 VICReg and SimVAE on 32x32 images: selfsup vs the reference pipeline.
:mod:`.syncs` (GPU only)
    Host-device synchronizations per training iteration, NaN guard on and off.

``--device auto|cpu|cuda`` picks where everything runs (auto: the GPU when there is one). On a
GPU the step timestamps wait for the GPU (``torch.cuda.synchronize``, in the benchmark's
callback, not in the engine), the reference pipelines copy pinned host batches to the GPU as the
original recipes do, the memory figure is ``torch.cuda.max_memory_allocated`` and the matmul
peak is measured on the GPU. Everything is written to
``benchmarks/results/speed_<device>.json`` with the machine description; parts measured in a run
replace the same parts of an existing file on the same device, the other parts are kept.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from benchmarks.common import RESULTS, machine, write_result
from benchmarks.speed import methods, resnet32, simvae, syncs, toggles, tta, vicreg
from benchmarks.speed.timing import measure_peaks, quiet

# part name -> its module (KEY, add_arguments, run; optionally STEP_FLAGS, GPU_ONLY_BY_DEFAULT)
PARTS: dict[str, ModuleType] = {
    "vicreg": vicreg,
    "toggles": toggles,
    "simvae": simvae,
    "methods": methods,
    "tta": tta,
    "resnet32": resnet32,
    "syncs": syncs,
}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data", help="folder holding MNIST/raw")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="auto: the GPU when there is one")
    parser.add_argument("--parts", nargs="+", default=None, choices=list(PARTS),
                        help="default: all (on the CPU all but resnet32 and syncs); the matmul "
                             "peak is always measured")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="reference DataLoader workers (default: min(8, CPU count))")
    parser.add_argument("--steps", type=int, default=40, help="VICReg steps per pipeline")
    parser.add_argument("--rounds", type=int, default=2,
                        help="interleaved rounds of the side-by-side comparisons (best kept)")
    for module in PARTS.values():
        module.add_arguments(parser)
    parser.add_argument("--out", default="",
                        help="default benchmarks/results/speed_<device>.json; parts measured "
                             "now replace those parts in an existing file, the rest are kept")
    args = parser.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: PyTorch sees no CUDA GPU here (torch.cuda.is_available() "
                     "is False). Use --device cpu, or run on a machine with a GPU.")
    args.device = torch.device(args.device)
    for module in PARTS.values():
        for flag, (dest, least) in getattr(module, "STEP_FLAGS", {}).items():
            value = getattr(args, dest)
            if value < least:  # a rate needs two timestamps after the warm-up steps
                parser.error(f"{flag} {value} is too few: the first steps are warm-up and a "
                             f"rate needs two timed steps after them; use {flag} {least} or more.")
    if args.parts is None:
        args.parts = [name for name, module in PARTS.items()
                      if args.device.type == "cuda"
                      or not getattr(module, "GPU_ONLY_BY_DEFAULT", False)]
    torch.set_num_threads(args.threads)
    quiet()
    result: dict[str, Any] = {"benchmark": "speed", "machine": machine(),
                              "device": str(args.device), "threads": args.threads}
    peaks = measure_peaks(args.device)
    result["matmul_peak"] = {k: round(v, 1) if isinstance(v, float) else v
                             for k, v in peaks.items()}
    result["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    print(f"matmul peak on {args.device}: fp32 {peaks['fp32_gflops']:.0f} GFLOP/s, "
          f"bf16 {peaks['bf16_gflops']:.0f} GFLOP/s")
    with tempfile.TemporaryDirectory() as tmp:
        for part in args.parts:
            module = PARTS[part]
            print(f"--- {part}", flush=True)
            result[module.KEY] = {**module.run(args, Path(tmp), peaks),
                                  "measured": time.strftime("%Y-%m-%d %H:%M %Z"),
                                  "matmul_peak": result["matmul_peak"],
                                  "load_average_1min_after": round(os.getloadavg()[0], 2)}
    out = Path(args.out) if args.out else RESULTS / f"speed_{args.device.type}.json"
    write_result(out, {**_previous_parts(out, result), **result})
    return result


def _previous_parts(path: Path, result: dict[str, Any]) -> dict[str, Any]:
    """The parts of an earlier result file on the same device that this run did not measure."""
    import json

    if not path.is_file():
        return {}
    try:
        old = json.loads(path.read_text())
    except ValueError:
        return {}
    if old.get("device", "cpu") != result["device"]:
        return {}
    keep = {module.KEY for module in PARTS.values()}
    parts = {k: v for k, v in old.items() if k in keep and k not in result}
    for value in parts.values():  # say which machine reading each kept part came with
        if isinstance(value, dict):
            value.setdefault("measured", old.get("machine", {}).get("date"))
            value.setdefault("matmul_peak", old.get("matmul_peak"))
    return parts
