"""VICReg, BYOL, SimCLR, Barlow Twins and MoCo-SimCLR on MNIST, same small conv backbone and budget.

Run as ``python -m benchmarks.ssl_mnist --data-dir DIR --epochs E --out FILE.json``. Every method
uses its ``configs/<method>/mnist.yaml`` preset (conv backbone 28 -> 14 -> 7 -> 4 with 2048
features, Adam 1e-3, batch 256, crops of 50-100% of the image) with the epoch budget and batch size
given here, optionally on a random subset of the training images (``--train-subset``). The frozen
backbone is then evaluated with ``pipelines.evaluate`` on the full 10000-image test split: a linear
probe (weight decay chosen on a validation split of train) and a weighted cosine kNN (k = 20),
both fit on the training split or a random subset of it (``--probe-train``).
``--random-init`` evaluates the untrained backbones instead (the baseline that training must beat:
random conv features are already linearly separable to a large degree on MNIST). ``--merge A B``
combines the JSON of several runs (e.g. methods trained in parallel processes) into ``--out``.
Figures: test accuracies and training wall-clock seconds; the JSON also records the machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from selfsup import engine, pipelines
from selfsup.data.base import ImageDataset
from selfsup.methods import method_class

METHODS = ("vicreg", "byol", "simclr", "barlowtwins", "mocosimclr")


def _subset(dataset: ImageDataset, n: int, seed: int) -> ImageDataset:
    """A random subset of ``n`` samples (the whole set when n <= 0 or n >= its size)."""
    if n <= 0 or n >= len(dataset.labels):
        return dataset
    idx = torch.randperm(len(dataset.labels), generator=torch.Generator().manual_seed(seed))[:n]
    return ImageDataset(dataset.images[idx], dataset.labels[idx], dataset.num_classes,
                        dataset.name, dataset.split, dataset.class_names)


def probe_features(method: Any, config: Any, args: argparse.Namespace) -> pipelines.Features:
    """Frozen features of (a random subset of) the train split and of the whole test split."""
    from selfsup.evaluate import extract_features

    if args.probe_train <= 0:
        return pipelines.run_features(method, args.data_dir)
    train = _subset(pipelines.load_split(config, "train"), args.probe_train, args.seed + 1)
    test = pipelines.load_split(config, "test")
    train_x, train_y = extract_features(method.represent, train, 512, "cpu")
    test_x, test_y = extract_features(method.represent, test, 512, "cpu")
    return pipelines.Features(train_x, train_y, test_x, test_y)


def run_method(name: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Train one method on MNIST and evaluate its frozen backbone; returns the result row."""
    config = pipelines.build_config(
        name,
        "mnist",
        flags={
            "data": {"dir": args.data_dir, "batch_size": args.batch_size, "num_workers": 0},
            "trainer": {"epochs": args.epochs, "progress_bar": False, "plots": False,
                        "val_every": 0, "log_every": 20},
        },
        sets=[f"seed={args.seed}"],
    )
    train_set = _subset(pipelines.load_split(config, "train"), args.train_subset, args.seed)
    torch.manual_seed(config.seed)
    method = method_class(name)(config, engine.data_info(train_set))
    run_dir = workdir / name
    run_dir.mkdir(parents=True)
    config.save(run_dir / pipelines.CONFIG_FILE)
    if args.random_init:
        seconds, steps = 0.0, 0
    else:
        result = engine.fit(method, train_set, None, run_dir)
        seconds, steps = result.seconds, result.global_step
    method.eval()
    features = probe_features(method, config, args)
    linear = pipelines.evaluate(method, "linear", features=features, seed=args.seed)
    knn = pipelines.evaluate(method, "knn", features=features)
    return {
        "method": f"{name} (random init)" if args.random_init else name,
        "linear_accuracy": linear["accuracy"],
        "linear_weight_decay": linear["weight_decay"],
        "knn_accuracy": knn["accuracy"],
        "knn_accuracies": {k: v for k, v in knn.items() if k.startswith("accuracy_k")},
        "train_seconds": round(seconds, 1),
        "steps": steps,
        "feature_dim": linear["feature_dim"],
        "model": config.to_dict()["model"],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="data", help="folder holding MNIST/raw")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--train-subset", type=int, default=0,
                        help="train on this many random training images (0: all 60000)")
    parser.add_argument("--probe-train", type=int, default=0,
                        help="fit the probes on this many random training images (0: all)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/ssl_mnist_cpu.json")
    parser.add_argument("--random-init", action="store_true",
                        help="baseline: evaluate the untrained (randomly initialised) backbones")
    parser.add_argument("--note", default="", help="free text stored in the JSON")
    parser.add_argument("--merge", nargs="+", default=[],
                        help="only merge the results of earlier JSON files into --out")
    args = parser.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out, args.note)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    for logger in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(logger).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    budget = {"epochs": args.epochs, "batch_size": args.batch_size,
              "train_subset": args.train_subset or 60000,
              "probe_train": args.probe_train or 60000, "seed": args.seed}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.methods:
            rows.append({**run_method(name, args, Path(tmp)), "budget": budget})
            row = rows[-1]
            print(f"{name}: linear {row['linear_accuracy']:.4f} knn {row['knn_accuracy']:.4f} "
                  f"train {row['train_seconds']:.0f} s", flush=True)
    report = {
        "benchmark": "ssl_mnist",
        "budget": budget,
        "note": args.note,
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "load_average": list(os.getloadavg())},
        "results": rows,
    }
    write_report(report, args.out)
    return report


def write_report(report: dict[str, Any], out: str) -> None:
    """Write the JSON and print the table."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    print(f"\n{'method':<12} {'images':>7} {'epochs':>6} {'linear':>8} {'kNN':>8} {'train s':>8}")
    for row in report["results"]:
        b = row.get("budget") or report["budget"]
        print(f"{row['method']:<12} {b['train_subset'] if row['steps'] else 0:>7} {b['epochs']:>6} "
              f"{row['linear_accuracy']:>8.4f} {row['knn_accuracy']:>8.4f} "
              f"{row['train_seconds']:>8.0f}")


def merge(files: list[str], out: str, note: str = "") -> dict[str, Any]:
    """One report from several runs of this script (e.g. methods run in parallel processes)."""
    reports = [json.loads(Path(f).read_text()) for f in files]
    merged = dict(reports[0])
    merged["budget"] = [r["budget"] for r in reports]
    merged["results"] = [{"budget": r["budget"], **row} for r in reports for row in r["results"]]
    merged["machines"] = [r["machine"] for r in reports]
    merged["note"] = note
    write_report(merged, out)
    return merged


if __name__ == "__main__":
    main()
