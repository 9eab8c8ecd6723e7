"""Image folders larger than memory: throughput and memory as the folder grows.

``python -m benchmarks.run imagefolder-scale [--counts 10000,25000,50000] [--workers 2]``

Generates (once, under ``--dir``, default ``/tmp/selfsup-imagefolder-bench``) a folder of JPEGs of
modest size (10 classes; 160x120 to 224x168 pixels, smooth colour fields with noise, quality 90),
and folders of the first 10k / 25k / 50k of them (hard links). For every count and pipeline a fresh
process builds the loader and reads ``--batches`` batches of ``--batch-size`` images (after 3
warm-up batches) with ``--workers`` DataLoader workers, while a sampler thread records, every 20
ms, the resident memory of the main process and the proportional set size (PSS: shared pages
split between the processes that map them) summed over the main process and its workers.

Pipelines (all decode with PIL in the workers and take a ``RandomResizedCrop(S, scale=(0.08, 1))``
from the full-resolution image):

- ``selfsup``: :class:`selfsup.data.streaming.StreamingBatches` over
  ``ImageFolderDataset.training_views`` (1 crop per image, as for VAE-type methods; resumable,
  sharded);
- ``selfsup-2views``: the same with 2 crops per image (what VICReg/SimCLR/BYOL train on);
- ``torchvision``: ``torchvision.datasets.ImageFolder(transform=Compose([RandomResizedCrop(S),
  PILToTensor()]))`` and a shuffling ``DataLoader`` (1 crop per image);
- ``read-only``: only the file bytes through a DataLoader (how much of the time is I/O: the ceiling
  for a tar-shard format such as WebDataset);
- ``selfsup-device-decode`` (only with ``--device cuda``): workers read bytes, the main process
  decodes with ``torchvision.io.decode_jpeg`` on the GPU and crops there.

JSON: ``benchmarks/results/imagefolder_scale_<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CLASSES = 10
PIPELINES = ("selfsup", "selfsup-2views", "torchvision", "read-only")


# ------------------------------------------------------------------------------------ the data
def generate(base: Path, n: int, seed: int = 0) -> Path:
    """``base/all/c{k}/{i:06d}.jpg`` for i < n (kept between runs); returns ``base/all``."""
    import numpy as np
    from PIL import Image

    folder = base / "all"
    marker = folder / f".complete-{n}"
    if marker.is_file():
        return folder
    started = time.perf_counter()
    for i in range(n):
        path = folder / f"c{i % CLASSES}" / f"{i:06d}.jpg"
        if path.is_file():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng([seed, i])  # each file a function of its index
        w = int(rng.integers(160, 225))
        h = w * 3 // 4
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        base_colour = rng.uniform(0, 255, 3).astype(np.float32)
        grad = rng.uniform(-1, 1, (2, 3)).astype(np.float32)
        img = base_colour + xx[..., None] * grad[0] + yy[..., None] * grad[1]
        img += rng.normal(0, 12, (h, w, 3)).astype(np.float32)
        tmp = path.with_suffix(".tmp")
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(tmp, format="JPEG", quality=90)
        tmp.replace(path)  # complete files only, even if interrupted
        if (i + 1) % 5000 == 0:
            print(f"  generated {i + 1}/{n} JPEGs ({time.perf_counter() - started:.0f} s)",
                  flush=True)
    marker.write_text("ok")
    return folder


def subset(base: Path, source: Path, count: int) -> Path:
    """``base/n{count}/imagefolder/train/c{k}/`` holding hard links to the first ``count``."""
    data_dir = base / f"n{count}"
    marker = data_dir / ".complete"
    if marker.is_file():
        return data_dir
    for i in range(count):
        name = Path(f"c{i % CLASSES}") / f"{i:06d}.jpg"
        target = data_dir / "imagefolder" / "train" / name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(source / name, target)
    marker.write_text("ok")
    return data_dir


# ----------------------------------------------------------------------------------- memory
def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            text = Path(f"/proc/{pid}/task/{tid}/children").read_text()
            out += [int(c) for c in text.split()]
    except OSError:
        pass
    return out


def _status_kib(pid: int, key: str, fname: str = "status") -> int:
    try:
        for line in Path(f"/proc/{pid}/{fname}").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class MemorySampler(threading.Thread):
    """Peak main-process RSS and peak PSS of the process tree (main + workers), in MiB."""

    def __init__(self, every: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.every = every
        self.peak_rss = 0.0
        self.peak_tree_pss = 0.0
        self.peak_tree_rss = 0.0
        self.stop = threading.Event()

    def sample(self) -> None:
        me = os.getpid()
        tree = [me, *_children(me)]
        self.peak_rss = max(self.peak_rss, _status_kib(me, "VmRSS") / 1024)
        pss = sum(_status_kib(p, "Pss", "smaps_rollup") for p in tree) / 1024
        rss = sum(_status_kib(p, "VmRSS") for p in tree) / 1024
        self.peak_tree_pss = max(self.peak_tree_pss, pss)
        self.peak_tree_rss = max(self.peak_tree_rss, rss)

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            time.sleep(self.every)


# ------------------------------------------------------------------------------ one pipeline
def _read_bytes(path_label: tuple[str, int]) -> tuple[int, int]:
    return len(Path(path_label[0]).read_bytes()), path_label[1]


def build(pipeline: str, data_dir: Path, size: int, batch: int, workers: int, device: str) -> Any:
    """An iterable of batches for ``pipeline``; returns (iterable, index bytes or None, n)."""
    import torch
    from torch.utils.data import DataLoader

    if pipeline in ("torchvision", "read-only"):
        from torchvision import datasets, transforms

        folder = data_dir / "imagefolder" / "train"
        if pipeline == "read-only":
            ds = datasets.ImageFolder(str(folder), loader=lambda p: p)
            ds.transform = None
            items: Any = ds.samples
            loader = DataLoader(items, batch_size=batch, shuffle=True, num_workers=workers,
                                collate_fn=lambda b: [_read_bytes(x) for x in b],
                                persistent_workers=workers > 0)
            return loader, None, len(items)
        tf = transforms.Compose([transforms.RandomResizedCrop(size, scale=(0.08, 1.0)),
                                 transforms.PILToTensor()])
        ds = datasets.ImageFolder(str(folder), transform=tf)
        loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers,
                            persistent_workers=workers > 0, drop_last=True)
        return loader, None, len(ds)
    from selfsup.data import load_dataset
    from selfsup.data.augment import AugmentConfig
    from selfsup.data.streaming import StreamingBatches

    ds = load_dataset("imagefolder", data_dir, "train", {"image_size": size})
    cfg = AugmentConfig(crop_scale=[0.08, 1.0])
    views = 2 if pipeline == "selfsup-2views" else 1
    decode = "device" if pipeline == "selfsup-device-decode" else "workers"
    items = ds.training_views(cfg, views, seed=0, decode=decode, clean=False)
    loader = StreamingBatches(items, batch, 0, num_workers=workers, epoch_keys=True)
    loader.device = torch.device(device)
    return loader, ds.index.nbytes, len(ds)


def measure(pipeline: str, data_dir: Path, size: int, batch: int, workers: int, batches: int,
            device: str) -> dict[str, Any]:
    """Run in a fresh process: images/s over ``batches`` batches and peak memory."""
    import torch

    torch.set_num_threads(1)
    import torchvision.datasets  # noqa: F401

    import selfsup.data.streaming  # noqa: F401 - imports are not part of building the index

    sampler = MemorySampler()
    sampler.start()
    started = time.perf_counter()
    loader, index_bytes, n = build(pipeline, data_dir, size, batch, workers, device)
    index_s = time.perf_counter() - started
    it = iter(loader)
    for _ in range(3):
        next(it)
    t0 = time.perf_counter()
    seen = 0
    for _ in range(batches):
        out = next(it)
        if pipeline == "selfsup-device-decode" and torch.cuda.is_available():
            torch.cuda.synchronize()
        seen += len(out) if pipeline == "read-only" else len(out[1])
    seconds = time.perf_counter() - t0
    sampler.sample()
    sampler.stop.set()
    return {
        "pipeline": pipeline,
        "images": n,
        "images_per_s": round(seen / seconds, 1),
        "seconds": round(seconds, 2),
        "batches": batches,
        "index_build_s": round(index_s, 2),
        "index_bytes": index_bytes,
        "peak_main_rss_mib": round(sampler.peak_rss, 1),
        "peak_tree_pss_mib": round(sampler.peak_tree_pss, 1),
        "peak_tree_rss_mib": round(sampler.peak_tree_rss, 1),
    }


# ------------------------------------------------------------------------------------ driver
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="benchmarks.run imagefolder-scale",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", default="10000,25000,50000")
    parser.add_argument("--dir", default="/tmp/selfsup-imagefolder-bench")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--size", type=int, default=64, help="crop side S")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (adds device decoding)")
    parser.add_argument("--pipelines", default=",".join(PIPELINES))
    parser.add_argument("--out", default=None)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:  # one measurement in this fresh process
        pipeline, data_dir = args.child.split("|")
        result = measure(pipeline, Path(data_dir), args.size, args.batch_size, args.workers,
                         args.batches, args.device)
        print("RESULT " + json.dumps(result), flush=True)
        return

    sys.path.insert(0, str(ROOT))
    from benchmarks.common import machine, print_table, write_result

    counts = [int(c) for c in args.counts.split(",")]
    pipelines = args.pipelines.split(",")
    if args.device.startswith("cuda") and "selfsup-device-decode" not in pipelines:
        pipelines.append("selfsup-device-decode")
    base = Path(args.dir)
    print(f"generating {max(counts)} JPEGs under {base} (kept for later runs)", flush=True)
    source = generate(base, max(counts))
    rows = []
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + str(ROOT),
           "OMP_NUM_THREADS": "1"}
    for count in counts:
        data_dir = subset(base, source, count)
        for pipeline in pipelines:  # interleaved: background load hits all pipelines alike
            cmd = [sys.executable, "-m", "benchmarks.imagefolder_scale", "--child",
                   f"{pipeline}|{data_dir}", "--workers", str(args.workers), "--batch-size",
                   str(args.batch_size), "--batches", str(args.batches), "--size",
                   str(args.size), "--device", args.device]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode != 0 or not line:
                raise SystemExit(f"{pipeline} at {count} failed:\n{proc.stderr[-3000:]}")
            row = json.loads(line[-1][len("RESULT "):])
            rows.append(row)
            print_table([row], list(row))
    print()
    columns = ["pipeline", "images", "images_per_s", "peak_main_rss_mib", "peak_tree_pss_mib",
               "index_bytes", "index_build_s"]
    print_table(rows, columns)
    result = {
        "benchmark": "imagefolder_scale",
        "machine": machine(),
        "shared_machine_note": "measured on the project's 2-core VM while other jobs ran: "
                               "images/s are not speed figures; memory figures are valid",
        "settings": {"counts": counts, "workers": args.workers, "batch_size": args.batch_size,
                     "batches": args.batches, "crop_size": args.size, "device": args.device,
                     "jpeg": "160x120 to 224x168, quality 90, 10 classes"},
        "rows": rows,
    }
    device = "cuda" if args.device.startswith("cuda") else "cpu"
    write_result(args.out or ROOT / "benchmarks" / "results" / f"imagefolder_scale_{device}.json",
                 result)


if __name__ == "__main__":
    main()
