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
    preset, its model FLOPs per sample (``torch.utils.flop_counter``, forward + backward) and the
    achieved fraction of the measured fp32 matmul peak, and the peak resident memory of the
    process while it trains (sampled from ``/proc/self/statm``; on a GPU,
    ``torch.cuda.max_memory_allocated``).
``tta``
    Time to accuracy: SimCLR (the fastest discriminative method here) on real MNIST; training
    pauses every ``--tta-every`` steps for a linear probe (L-BFGS, fit on 10000 training images,
    scored on the 10000 test images; the probe's time is excluded from the training clock) and
    stops at ``--tta-target`` accuracy, which is then confirmed with a probe fit on all 60000.
``resnet32`` (default on a GPU only)
    ResNet-18 VICReg and SimVAE (slim ResNet-18 encoder) on 32x32 RGB images, each from its
    CIFAR-10 preset: selfsup vs the per-image reference pipeline with the torchvision equivalent
    of the preset's augmentations. CIFAR-10 if it is under ``--data-dir``, else synthetic uint8
    images (the throughput does not depend on the pixels).

``syncs`` (GPU only)
    Host-device synchronizations per training iteration of several methods, counted with
    ``torch.cuda.set_sync_debug_mode("warn")`` (each synchronizing CUDA call warns and names its
    Python line), with the per-step NaN guard ``trainer.check_finite`` on and off.

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


# ------------------------------------------------------------------------------ helpers
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


def _quiet() -> None:
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def _train_steps(
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


# ----------------------------------------------------------------------------- vicreg
class PILViews(torch.utils.data.Dataset):
    """uint8 images served as PIL images, ``n_views`` independently transformed views per item.

    This is how the original recipes feed their models: one Python call per image and view.
    ``multi_view=True`` is for transforms that return the list of views themselves (lightly's).
    """

    def __init__(self, images: torch.Tensor, transform: Any, n_views: int = 2,
                 multi_view: bool = False):
        self.images = images.numpy()
        self.transform = transform
        self.n_views = n_views
        self.multi_view = multi_view

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        from PIL import Image

        array = self.images[i]
        image = Image.fromarray(array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0))
        if self.multi_view:
            return torch.stack(list(self.transform(image)))
        return torch.stack([self.transform(image) for _ in range(self.n_views)])


def torchvision_transform(augment: Any, size: int) -> Any:
    """The per-image torchvision pipeline equivalent to a selfsup ``AugmentConfig``."""
    import torchvision.transforms as T

    steps: list[Any] = []
    if augment.pre_resize:
        steps.append(T.Resize((augment.pre_resize, augment.pre_resize), antialias=True))
    jitter = []
    if augment.jitter_prob and any(augment.jitter):
        jitter = [T.RandomApply([T.ColorJitter(*augment.jitter)], p=augment.jitter_prob)]
    if augment.jitter_first:
        steps += jitter
    crop = T.RandomResizedCrop(size, scale=tuple(augment.crop_scale),
                               ratio=tuple(augment.crop_ratio), antialias=True)
    steps.append(crop if augment.crop_prob >= 1 else T.RandomApply([crop], p=augment.crop_prob))
    if augment.hflip:
        steps.append(T.RandomHorizontalFlip(augment.hflip))
    if augment.vflip:
        steps.append(T.RandomVerticalFlip(augment.vflip))
    if not augment.jitter_first:
        steps += jitter
    if augment.grayscale:
        steps.append(T.RandomGrayscale(augment.grayscale))
    if augment.blur_prob:
        kernel = augment.blur_kernel or (size // 10) * 2 + 1
        steps.append(T.RandomApply([T.GaussianBlur(kernel, tuple(augment.blur_sigma))],
                                   p=augment.blur_prob))
    if augment.solarize_prob:
        steps.append(T.RandomSolarize(128, p=augment.solarize_prob))
    steps.append(T.ToTensor())
    if augment.normalize and augment.mean:
        steps.append(T.Normalize(augment.mean, augment.std))
    return T.Compose(steps)


def reference_loop(
    params: list[torch.nn.Parameter], loss_of_views: Any, views: PILViews, steps: int,
    warmup: int, batch: int, workers: int, device: torch.device,
) -> float:
    """The original recipes' loop: a worker DataLoader of per-image transforms, pinned host
    batches copied to ``device``, an eager step with Adam. Returns samples/s after ``warmup``.

    ``loss_of_views`` maps a float batch of views (B, J, C, H, W) on ``device`` to the loss.
    """
    opt = torch.optim.Adam(params, lr=1e-3)
    loader = torch.utils.data.DataLoader(
        views, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
        persistent_workers=workers > 0, pin_memory=device.type == "cuda",
    )
    times = []
    done = 0
    while done < steps:
        for batch_views in loader:
            loss = loss_of_views(batch_views.to(device, non_blocking=True))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            synchronize(device)
            times.append(time.perf_counter())
            done += 1
            if done >= steps:
                break
    t = times[warmup:]
    return (len(t) - 1) * batch / (t[-1] - t[0])


def joint_embedding_loss(method: Any, loss_fn: Any) -> Any:
    """Views (B, 2, ...) -> loss_fn(projector(backbone(view 1)), projector(backbone(view 2))).

    ``loss_fn`` returns the loss, or a dict of terms holding it under ``"loss"`` (selfsup's).
    """
    def loss(views: torch.Tensor) -> torch.Tensor:
        za = method.projector(method.backbone(views[:, 0]))
        zb = method.projector(method.backbone(views[:, 1]))
        out = loss_fn(za, zb)
        return out["loss"] if isinstance(out, dict) else out
    return loss


def simvae_views_loss(method: Any) -> Any:
    """Views (B, J, ...) -> SimVAE's loss on the sample-major rows, as its training step."""
    from selfsup.losses.vae import reparameterize

    def loss(views: torch.Tensor) -> torch.Tensor:
        x = views.flatten(0, 1)
        mu, logvar = method.posterior(x)
        return method.objective(x, reparameterize(mu, logvar), mu, logvar)["loss"].mean()
    return loss


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
        "trainer.check_finite=false (no per-step NaN guard: no host sync)":
            ["trainer.check_finite=false"],
    }
    if peaks["bf16_native"]:
        toggles["trainer.precision=bf16-mixed"] = ["trainer.precision=bf16-mixed"]
    rows = []
    for label, sets in toggles.items():
        warm = warmup + (10 if "compile" in label else 0)  # compilation happens in early steps
        _, clock = _train_steps("vicreg", "mnist", train_set, args.steps + warm - warmup,
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


# ----------------------------------------------------------------------------- simvae
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


def bench_methods(args: argparse.Namespace, workdir: Path, peaks: dict[str, Any]
                  ) -> dict[str, Any]:
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
            method, clock = _train_steps(name, "mnist", train_set, steps, sets, workdir,
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


def bench_tta(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    train_set = load_mnist(args.data_dir)
    test = load_mnist(args.data_dir, "test")
    gen = torch.Generator().manual_seed(0)
    probe_train = train_set.subset(torch.randperm(len(train_set), generator=gen)[:10000])
    probe = ProbeUntil(args.tta_every, args.tta_target, probe_train, test)
    sets = [f"data.batch_size={args.tta_batch}"]
    wall0 = time.perf_counter()
    method, _ = _train_steps(args.tta_method, "mnist", train_set, args.tta_max_steps, sets,
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


# --------------------------------------------------------------------------- resnet32
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


def bench_resnet32(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
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
            method, clock = _train_steps(name, "cifar10", train_set, steps, sets, workdir,
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


# ------------------------------------------------------------------------------ syncs
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


def bench_syncs(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
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
            _train_steps(name, "mnist", train_set, 25, sets, workdir, callbacks=[counter],
                         data_dir=args.data_dir, device=args.device)
            total = sum(counter.sites.values())
            rows.append({"method": name, "check_finite": check, "steps": counter.steps,
                         "syncs_per_step": round(total / max(counter.steps, 1), 2),
                         "sites": ", ".join(f"{k} x{v}" for k, v in sorted(counter.sites.items()))})
    print_table(rows, ["method", "check_finite", "steps", "syncs_per_step", "sites"])
    return {"dataset": "mnist, batch 256, each method's MNIST preset", "rows": rows,
            "how": "torch.cuda.set_sync_debug_mode('warn') over the timed steps; every "
                   "synchronizing CUDA call warns and names its Python line"}


# ------------------------------------------------------------------------------- main
PARTS = ("vicreg", "toggles", "simvae", "methods", "tta", "resnet32", "syncs")
# resnet32: minutes per step on 2 CPU cores (run it by name there); syncs: GPU only
GPU_ONLY_BY_DEFAULT = ("resnet32", "syncs")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data", help="folder holding MNIST/raw")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="auto: the GPU when there is one")
    parser.add_argument("--parts", nargs="+", default=None, choices=PARTS,
                        help="default: all (on the CPU all but resnet32); the matmul peak is "
                             "always measured")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="reference DataLoader workers (default: min(8, CPU count))")
    parser.add_argument("--steps", type=int, default=40, help="VICReg steps per pipeline")
    parser.add_argument("--rounds", type=int, default=2,
                        help="interleaved rounds of the side-by-side comparisons (best kept)")
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
    parser.add_argument("--resnet-methods", nargs="+", default=list(RESNET32_MODELS),
                        choices=list(RESNET32_MODELS))
    parser.add_argument("--resnet-batch", type=int, default=0,
                        help="samples per step of the resnet32 part (0: each preset's)")
    parser.add_argument("--resnet-steps", type=int, default=30,
                        help="steps per pipeline of the resnet32 part (3 are warm-up)")
    parser.add_argument("--resnet-images", type=int, default=50000,
                        help="synthetic images when CIFAR-10 is not under --data-dir")
    parser.add_argument("--sync-methods", nargs="+", default=["vicreg", "byol", "simclr",
                                                               "simvae", "vae"],
                        choices=SPEED_METHODS, help="methods of the syncs part (GPU only)")
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
    for flag, value, least in (("--steps", args.steps, 7), ("--resnet-steps", args.resnet_steps, 5),
                               ("--methods-steps", args.methods_steps, 2)):
        if value < least:  # a rate needs two timestamps after the warm-up steps
            parser.error(f"{flag} {value} is too few: the first steps are warm-up and a rate "
                         f"needs two timed steps after them; use {flag} {least} or more.")
    if args.parts is None:
        args.parts = [p for p in PARTS
                      if args.device.type == "cuda" or p not in GPU_ONLY_BY_DEFAULT]
    torch.set_num_threads(args.threads)
    _quiet()
    result: dict[str, Any] = {"benchmark": "speed", "machine": machine(),
                              "device": str(args.device), "threads": args.threads}
    peaks = measure_peaks(args.device)
    result["matmul_peak"] = {k: round(v, 1) if isinstance(v, float) else v
                             for k, v in peaks.items()}
    result["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    print(f"matmul peak on {args.device}: fp32 {peaks['fp32_gflops']:.0f} GFLOP/s, "
          f"bf16 {peaks['bf16_gflops']:.0f} GFLOP/s")
    benches = {
        "vicreg": ("vicreg", lambda w: bench_vicreg(args, w)),
        "toggles": ("speed_features", lambda w: bench_toggles(args, w, peaks)),
        "simvae": ("simvae", lambda w: bench_simvae(args, w, peaks)),
        "methods": ("methods", lambda w: bench_methods(args, w, peaks)),
        "tta": ("time_to_accuracy", lambda w: bench_tta(args, w)),
        "resnet32": ("resnet18_32px", lambda w: bench_resnet32(args, w)),
        "syncs": ("host_syncs", lambda w: bench_syncs(args, w)),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for part in args.parts:
            key, bench = benches[part]
            print(f"--- {part}", flush=True)
            result[key] = {**bench(Path(tmp)), "measured": time.strftime("%Y-%m-%d %H:%M %Z"),
                           "matmul_peak": result["matmul_peak"],
                           "load_average_1min_after": round(os.getloadavg()[0], 2)}
    out = Path(args.out or f"benchmarks/results/speed_{args.device.type}.json")
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
    keep = {"vicreg", "speed_features", "simvae", "methods", "time_to_accuracy", "resnet18_32px",
            "host_syncs"}
    parts = {k: v for k, v in old.items() if k in keep and k not in result}
    for value in parts.values():  # say which machine reading each kept part came with
        if isinstance(value, dict):
            value.setdefault("measured", old.get("machine", {}).get("date"))
            value.setdefault("matmul_peak", old.get("matmul_peak"))
    return parts


if __name__ == "__main__":
    main()
