"""Training speed, measured side by side in one process on the same machine.

Run as ``python -m benchmarks.run speed [--data-dir DIR] [--threads 2]`` (or ``python -m
benchmarks.speed``). Parts (``--parts``, all by default):

``peak`` (always)
    The machine's measured matmul peak: GFLOP/s of square fp32 and bf16 matrix products (best of
    several repeats), the denominator of every "fraction of peak" below.
``vicreg``
    VICReg, the small conv backbone of ``configs/vicreg/mnist.yaml`` on 28x28 MNIST images, batch
    256, two views per image. Compared on the same networks, batch and machine:
    (a) selfsup: uint8 images in memory, whole-batch augmentation (``BatchAugment``), the
    Lightning engine; (b) the reference pipeline the original recipes use: torchvision per-image
    PIL transforms in a ``DataLoader`` with worker processes and an eager training loop with the
    same loss; (c) the same with lightly's ``VICRegTransform`` and ``VICRegLoss``. Figure:
    two-view samples per second after warm-up, and the ratios.
``toggles``
    selfsup's VICReg throughput with each speed feature switched on alone: fused Adam,
    channels-last, ``torch.compile`` of the networks, bf16 autocast (where the CPU has native bf16).
``simvae``
    SimVAE's MLP (784-2000-500-500-2z, z = 10) on MNIST, J = 2 views: model FLOPs per image
    counted with ``torch.utils.flop_counter`` on one full training step (forward + backward),
    throughput in fp32 and under bf16 autocast (``trainer.precision=bf16-mixed``), the achieved
    fraction of the measured fp32 / bf16 peaks, and linear-probe accuracy of both after the same
    short training run (``--simvae-epochs``) to show bf16 costs no accuracy.
``methods``
    Every method's training throughput on MNIST at the same batch (``--methods-batch``, 256
    source images per step; the views a method draws from them are its own), each from its MNIST
    preset, and the peak resident memory of the process while it trains (sampled from
    ``/proc/self/statm``; on a GPU, ``torch.cuda.max_memory_allocated``).
``tta``
    Time to accuracy: SimCLR (the fastest discriminative method here) on real MNIST; training
    pauses every ``--tta-every`` steps for a linear probe (L-BFGS, fit on 10000 training images,
    scored on the 10000 test images; the probe's time is excluded from the training clock) and
    stops at ``--tta-target`` accuracy, which is then confirmed with a probe fit on all 60000.

Everything is written to ``benchmarks/results/speed_<device>.json`` with the machine description.
"""

from __future__ import annotations

import argparse
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

from benchmarks.common import machine, print_table, write_result
from selfsup import engine, pipelines
from selfsup.data.base import ImageDataset
from selfsup.methods import method_class


# ----------------------------------------------------------------------------------- peak
def matmul_gflops(dtype: torch.dtype, n: int, repeats: int) -> float:
    """Best GFLOP/s of an n x n x n matrix product in ``dtype`` on the CPU."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def matmul_peak(dtype: torch.dtype, sizes: tuple[int, ...] = (512, 1024, 2048),
                repeats: int = 10) -> float:
    """The machine's matmul peak: the best GFLOP/s over square products of several sizes.

    One size alone under-reports it: on the project's VM n = 512 (fits in cache) often runs
    faster than n = 2048, and a model's own matmuls can beat a single-size measurement.
    """
    return max(matmul_gflops(dtype, n, repeats) for n in sizes)


# ------------------------------------------------------------------------------ helpers
class StepClock(Callback):
    """Timestamps of every optimizer step, to measure throughput after a warm-up."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
        self.times.append(time.perf_counter())

    def rate(self, warmup: int, per_step: int) -> float:
        """Samples per second over the steps after ``warmup``."""
        t = self.times[warmup:]
        return (len(t) - 1) * per_step / (t[-1] - t[0])


def _quiet() -> None:
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def _train_steps(
    name: str, dataset: str, train_set: ImageDataset, steps: int, sets: list[str], workdir: Path,
    callbacks: list[Callback] | None = None, data_dir: str = "data",
) -> tuple[Any, StepClock]:
    """Train ``name`` for ``steps`` optimizer steps with the selfsup engine."""
    config = pipelines.build_config(
        name, dataset,
        flags={"data": {"dir": data_dir},
               "trainer": {"max_steps": steps, "epochs": 1000, "progress_bar": False,
                           "plots": False, "val_every": 0, "log_every": 50,
                           "checkpoint_every": 1000}},
        sets=sets,
    )
    torch.manual_seed(config.seed)
    method = method_class(name)(config, engine.data_info(train_set))
    clock = StepClock()
    run_dir = Path(tempfile.mkdtemp(dir=workdir))
    engine.fit(method, train_set, None, run_dir, extra_callbacks=[clock, *(callbacks or [])])
    return method, clock


def load_mnist(data_dir: str, split: str = "train") -> ImageDataset:
    config = pipelines.build_config("vicreg", "mnist", flags={"data": {"dir": data_dir}})
    return pipelines.load_split(config, split)  # type: ignore[return-value]


# ----------------------------------------------------------------------------- vicreg
class _PILPairs(torch.utils.data.Dataset):
    """MNIST as PIL images, two independently transformed views per item (the reference way)."""

    def __init__(self, images: torch.Tensor, transform: Any, pair_transform: bool = False):
        self.images = images.numpy()
        self.transform = transform
        self.pair_transform = pair_transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image

        image = Image.fromarray(self.images[i, 0])
        if self.pair_transform:  # lightly's multi-view transforms return the list of views
            a, b = self.transform(image)
            return a, b
        return self.transform(image), self.transform(image)


def _reference_vicreg(
    method: Any, train_set: ImageDataset, transform: Any, loss_fn: Any, steps: int, warmup: int,
    batch: int, workers: int, pair_transform: bool = False,
) -> float:
    """Eager loop over a worker DataLoader of per-image transforms; two-view samples/s."""
    backbone, projector = method.backbone, method.projector
    params = list(backbone.parameters()) + list(projector.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    loader = torch.utils.data.DataLoader(
        _PILPairs(train_set.images, transform, pair_transform), batch_size=batch, shuffle=True,
        num_workers=workers, drop_last=True, persistent_workers=workers > 0,
    )
    times = []
    done = 0
    while done < steps:
        for xa, xb in loader:
            za, zb = projector(backbone(xa)), projector(backbone(xb))
            loss = loss_fn(za, zb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            times.append(time.perf_counter())
            done += 1
            if done >= steps:
                break
    t = times[warmup:]
    return (len(t) - 1) * batch / (t[-1] - t[0])


def bench_vicreg(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
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
        method, clock = _train_steps("vicreg", "mnist", train_set, steps, sets, workdir,
                                     data_dir=args.data_dir)
        rounds["ours"].append(clock.rate(warmup, batch))
        fresh = method_class("vicreg")(method.config, method.info)
        rounds["torchvision"].append(_reference_vicreg(
            fresh, train_set, reference_tf, lambda a, b: ours_loss(a, b)["loss"], steps, warmup,
            batch, args.workers))
        if lightly_tf is not None:
            fresh = method_class("vicreg")(method.config, method.info)
            rounds["lightly"].append(_reference_vicreg(
                fresh, train_set, lightly_tf, LightlyVICRegLoss(), steps, warmup, batch,
                args.workers, pair_transform=True))
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


def bench_toggles(args: argparse.Namespace, workdir: Path, peaks: dict[str, Any]) -> dict:
    """selfsup VICReg throughput with each speed feature switched on alone (same run)."""
    train_set = load_mnist(args.data_dir)
    batch, warmup = 256, 5
    base = [f"data.batch_size={batch}", "trainer.online_probe=false"]
    toggles = {
        "baseline (fp32, eager, contiguous, foreach Adam)": [],
        "optim.fused=true": ["optim.fused=true"],
        "trainer.channels_last=true": ["trainer.channels_last=true"],
        "trainer.compile=true": ["trainer.compile=true"],
    }
    if peaks["bf16_native"]:
        toggles["trainer.precision=bf16-mixed"] = ["trainer.precision=bf16-mixed"]
    rows = []
    for label, sets in toggles.items():
        warm = warmup + (10 if "compile" in label else 0)  # compilation happens in early steps
        _, clock = _train_steps("vicreg", "mnist", train_set, args.steps + warm - warmup,
                                [*base, *sets], workdir, data_dir=args.data_dir)
        rows.append({"setting": label, "two_view_samples_per_s": round(clock.rate(warm, batch), 1)})
    base_rate = rows[0]["two_view_samples_per_s"]
    for row in rows:
        row["vs_baseline"] = round(row["two_view_samples_per_s"] / base_rate, 2)
    print_table(rows, ["setting", "two_view_samples_per_s", "vs_baseline"])
    return {"model": "VICReg conv backbone on MNIST, batch 256", "rows": rows,
            "note": None if peaks["bf16_native"] else
            "bf16-mixed not timed: this CPU has no native bf16 (emulated matmuls are slower)"}


# ----------------------------------------------------------------------------- simvae
def training_flops_per_image(method: Any, batch: int) -> float:
    """FLOPs of one training step (forward + backward) divided by the images it processes."""
    from torch.utils.flop_counter import FlopCounterMode

    images = torch.randint(0, 256, (batch, *method.info.image_shape), dtype=torch.uint8)
    counter = FlopCounterMode(display=False)
    with counter:
        method.training_loss(images)["loss"].backward()
    method.zero_grad(set_to_none=True)
    views = method.config.model.n_views
    return counter.get_total_flops() / (batch * views)


def _linear_accuracy(method: Any, data_dir: str, train_set: ImageDataset) -> float:
    from selfsup.evaluate import extract_features, linear_probe

    method.eval()
    test = load_mnist(data_dir, "test")
    gen = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(train_set), generator=gen)[:20000]
    sub = train_set.subset(idx)
    tx, ty = extract_features(method.represent, sub, 1024, "cpu")
    vx, vy = extract_features(method.represent, test, 1024, "cpu")
    method.train()
    return float(linear_probe(tx, ty, vx, vy, seed=0)["accuracy"])


def bench_simvae(args: argparse.Namespace, workdir: Path, peaks: dict[str, Any]) -> dict:
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
        method, clock = _train_steps("simvae", "mnist", train_set, steps,
                                     [*base, f"trainer.precision={precision}"], workdir,
                                     data_dir=args.data_dir)
        results[precision] = {"samples_per_s": clock.rate(warmup, batch), "steps": steps}
        if native:
            results[precision]["linear_accuracy"] = _linear_accuracy(method, args.data_dir,
                                                                     train_set)
    flops = training_flops_per_image(method, 64)
    views = method.config.model.n_views
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


# ---------------------------------------------------------------------------- methods
SPEED_METHODS = ("vae", "simvae", "aavae", "vicreg", "byol", "simclr", "barlowtwins",
                 "mocosimclr", "hvae")


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


def bench_methods(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Samples/s and peak memory of every method at the same batch on MNIST."""
    train_set = load_mnist(args.data_dir)
    batch, warmup = args.methods_batch, 5
    rows = []
    for name in args.methods:
        sets = [f"data.batch_size={batch}", "trainer.online_probe=false"]
        steps = warmup + args.methods_steps
        if name == "hvae":  # the symmetric preset takes two optimizer steps (players) per batch
            sets += ["model.iterations=0", "data.train_split=train"]
            steps *= 2
        with PeakRSS() as mem:
            method, clock = _train_steps(name, "mnist", train_set, steps, sets, workdir,
                                         data_dir=args.data_dir)
        rows.append({
            "method": name,
            "samples_per_s": round(clock.rate(warmup, batch), 1),
            "peak_rss_mib": round(mem.peak / 2**20),
            "rss_increase_mib": round((mem.peak - mem.start) / 2**20),
            "parameters_m": round(sum(p.numel() for p in method.parameters()) / 1e6, 2),
        })
        del method
    print_table(rows, list(rows[0]))
    return {"batch_samples": batch, "timed_steps": args.methods_steps, "warmup_steps": warmup,
            "dataset": "mnist (28x28); each method's MNIST preset networks and views",
            "rows": rows}


# -------------------------------------------------------------------------------- tta
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
        tx, ty = extract_features(pl_module.represent, self.train, 1024, "cpu")
        vx, vy = extract_features(pl_module.represent, self.test, 1024, "cpu")
        pl_module.train()
        acc = float(linear_probe(tx, ty, vx, vy, seed=0)["accuracy"])
        self.probe_seconds += time.perf_counter() - t0
        self.history.append({"step": step, "train_seconds": round(train_seconds, 1),
                             "linear_accuracy": acc})
        print(f"  step {step}: {train_seconds:.1f} s training, linear {acc:.4f}", flush=True)
        if acc >= self.target and self.reached is None:
            self.reached = self.history[-1]
            trainer.should_stop = True


def bench_tta(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    train_set = load_mnist(args.data_dir)
    test = load_mnist(args.data_dir, "test")
    gen = torch.Generator().manual_seed(0)
    probe_train = train_set.subset(torch.randperm(len(train_set), generator=gen)[:10000])
    probe = ProbeUntil(args.tta_every, args.tta_target, probe_train, test)
    sets = [f"data.batch_size={args.tta_batch}"]
    wall0 = time.perf_counter()
    method, _ = _train_steps(args.tta_method, "mnist", train_set, args.tta_max_steps, sets,
                             workdir, callbacks=[probe], data_dir=args.data_dir)
    wall = time.perf_counter() - wall0
    confirm = None
    if probe.reached is not None:
        method.eval()
        features = pipelines.run_features(method, args.data_dir)
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


# ------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data", help="folder holding MNIST/raw")
    parts = ["vicreg", "toggles", "simvae", "methods", "tta"]
    parser.add_argument("--parts", nargs="+", default=parts, choices=parts,
                        help="the matmul peak is always measured")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="reference DataLoader workers")
    parser.add_argument("--steps", type=int, default=40, help="VICReg steps per pipeline")
    parser.add_argument("--rounds", type=int, default=2,
                        help="interleaved rounds of the VICReg comparison (best kept)")
    parser.add_argument("--simvae-batch", type=int, default=256)
    parser.add_argument("--simvae-epochs", type=int, default=1)
    parser.add_argument("--simvae-lr", type=float, default=1e-3)
    parser.add_argument("--methods", nargs="+", default=list(SPEED_METHODS),
                        choices=SPEED_METHODS, help="methods of the `methods` part")
    parser.add_argument("--methods-batch", type=int, default=256)
    parser.add_argument("--methods-steps", type=int, default=20, help="timed steps per method")
    parser.add_argument("--tta-method", default="simclr")
    parser.add_argument("--tta-batch", type=int, default=256)
    parser.add_argument("--tta-every", type=int, default=25)
    parser.add_argument("--tta-target", type=float, default=0.97)
    parser.add_argument("--tta-max-steps", type=int, default=1000)
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    _quiet()
    result: dict[str, Any] = {"benchmark": "speed", "machine": machine(),
                              "threads": args.threads}
    peaks = {"fp32_gflops": matmul_peak(torch.float32),
             "bf16_gflops": matmul_peak(torch.bfloat16, sizes=(512,), repeats=3)}
    peaks["bf16_native"] = peaks["bf16_gflops"] > peaks["fp32_gflops"]
    result["matmul_peak"] = {k: round(v, 1) for k, v in peaks.items()}
    result["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    print(f"matmul peak: fp32 {peaks['fp32_gflops']:.0f} GFLOP/s, "
          f"bf16 {peaks['bf16_gflops']:.0f} GFLOP/s")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if "vicreg" in args.parts:
            result["vicreg"] = bench_vicreg(args, workdir)
        if "toggles" in args.parts:
            result["speed_features"] = bench_toggles(args, workdir, peaks)
        if "simvae" in args.parts:
            result["simvae"] = bench_simvae(args, workdir, peaks)
        if "methods" in args.parts:
            result["methods"] = bench_methods(args, workdir)
        if "tta" in args.parts:
            result["time_to_accuracy"] = bench_tta(args, workdir)
    result["machine"]["load_average_1min_end"] = round(os.getloadavg()[0], 2)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    write_result(args.out or f"benchmarks/results/speed_{device}.json", result)
    return result


if __name__ == "__main__":
    main()
