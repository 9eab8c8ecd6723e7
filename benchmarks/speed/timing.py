"""The shared machinery of the speed benchmarks: the matmul peak, step timestamps, short
training runs with the selfsup engine, model FLOPs and peak memory."""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

from selfsup import engine, pipelines
from selfsup.data.base import ImageDataset
from selfsup.methods import method_class


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that a wall-clock timestamp covers it (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(dtype: torch.dtype, n: int, repeats: int,
                  device: torch.device = torch.device("cpu")) -> float:
    """Best GFLOP/s of an n x n x n matrix product in ``dtype`` on ``device``."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.mm(a, b)
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def matmul_peak(dtype: torch.dtype, sizes: tuple[int, ...] = (512, 1024, 2048),
                repeats: int = 10, device: torch.device = torch.device("cpu")) -> float:
    """The machine's matmul peak: the best GFLOP/s over square products of several sizes.

    One size alone under-reports it: on the project's VM n = 512 (fits in cache) often runs
    faster than n = 2048, and a model's own matmuls can beat a single-size measurement. On a GPU
    the sizes are 4096 and 8192 (small products cannot fill it).
    """
    if device.type == "cuda":
        sizes = (4096, 8192)
    return max(matmul_gflops(dtype, n, repeats, device) for n in sizes)


def measure_peaks(device: torch.device) -> dict[str, Any]:
    """fp32 and bf16 matmul peaks; bf16 is "native" where it beats fp32 (not emulated)."""
    on_gpu = device.type == "cuda"
    peaks: dict[str, Any] = {
        "fp32_gflops": matmul_peak(torch.float32, device=device),
        "bf16_gflops": matmul_peak(torch.bfloat16, sizes=(512,), repeats=10 if on_gpu else 3,
                                   device=device),
    }
    peaks["bf16_native"] = peaks["bf16_gflops"] > peaks["fp32_gflops"]
    if on_gpu:
        peaks["tf32_allowed"] = torch.backends.cuda.matmul.allow_tf32
    return peaks


class StepClock(Callback):
    """Timestamps of every optimizer step, to measure throughput after a warm-up.

    On a GPU each timestamp first waits for the step's kernels (the benchmark's own
    synchronization; the engine's step has none), the same in every pipeline compared.
    """

    def __init__(self, device: torch.device = torch.device("cpu")) -> None:
        self.times: list[float] = []
        self.device = device

    def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
        synchronize(self.device)
        self.times.append(time.perf_counter())

    def rate(self, warmup: int, per_step: int) -> float:
        """Samples per second over the steps after ``warmup``."""
        t = self.times[warmup:]
        return (len(t) - 1) * per_step / (t[-1] - t[0])


def quiet() -> None:
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def train_steps(
    name: str, dataset: str, train_set: ImageDataset, steps: int, sets: list[str], workdir: Path,
    callbacks: list[Callback] | None = None, data_dir: str = "data",
    device: torch.device = torch.device("cpu"),
) -> tuple[Any, StepClock]:
    """Train ``name`` for ``steps`` optimizer steps with the selfsup engine on ``device``."""
    config = pipelines.build_config(
        name, dataset,
        flags={"data": {"dir": data_dir},
               "trainer": {"max_steps": steps, "epochs": 1000, "progress_bar": False,
                           "plots": False, "val_every": 0, "log_every": 50,
                           "checkpoint_every": 1000,
                           "accelerator": "gpu" if device.type == "cuda" else "cpu"}},
        sets=sets,
    )
    torch.manual_seed(config.seed)
    method = method_class(name)(config, engine.data_info(train_set))
    clock = StepClock(device)
    run_dir = Path(tempfile.mkdtemp(dir=workdir))
    engine.fit(method, train_set, None, run_dir, extra_callbacks=[clock, *(callbacks or [])])
    return method, clock


def load_mnist(data_dir: str, split: str = "train") -> ImageDataset:
    config = pipelines.build_config("vicreg", "mnist", flags={"data": {"dir": data_dir}})
    return pipelines.load_split(config, split)  # type: ignore[return-value]


def training_flops_per_sample(method: Any, batch: int) -> float:
    """Model FLOPs (matmuls and convolutions, forward + backward) of one training step divided by
    the source samples it processes (a sample's views count once), counted by
    ``torch.utils.flop_counter`` on a random uint8 batch. A two-player model (``hvae`` symmetric)
    counts both players' losses."""
    from torch.utils.flop_counter import FlopCounterMode

    images = torch.randint(0, 256, (batch, *method.info.image_shape), dtype=torch.uint8)
    counter = FlopCounterMode(display=False)
    with counter:
        if not method.automatic_optimization and hasattr(method, "symmetric_terms"):
            terms = method.symmetric_terms(method.training_input(images))
        else:
            terms = method.training_loss(images)
        terms["loss"].backward()
    method.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch


class PeakRSS:
    """Peak resident set size (bytes) of this process while the ``with`` block runs."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self.start = self._rss()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


class PeakDeviceMemory:
    """Peak memory allocated by PyTorch on a GPU while the ``with`` block runs (bytes)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __enter__(self) -> PeakDeviceMemory:
        synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self.start = torch.cuda.memory_allocated(self.device)
        return self

    def __exit__(self, *exc: object) -> None:
        synchronize(self.device)
        self.peak = torch.cuda.max_memory_allocated(self.device)


def peak_memory(device: torch.device) -> PeakRSS | PeakDeviceMemory:
    """The memory meter of ``device``: the process's resident set on the CPU, else the GPU's."""
    return PeakDeviceMemory(device) if device.type == "cuda" else PeakRSS()
