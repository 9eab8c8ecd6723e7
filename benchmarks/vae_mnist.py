"""VAE on real MNIST: linear-probe accuracy and training throughput (issue 2's benchmark).

    python -m benchmarks.vae_mnist --data-dir ../shared/data --epochs 5

Trains selfsup's VAE (MLP 784-2000-500-500-2x10, Bernoulli likelihood, Adam 1e-3, batch 128, no
augmentation) on the 60k training images, then fits the linear probe on frozen train features and
scores it on the 10k test images. Writes benchmarks/results/vae_mnist_cpu.json.
"""

from __future__ import annotations

import argparse
import tempfile

import torch

from benchmarks.common import machine, print_table, write_result
from selfsup import pipelines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument("--out", default="benchmarks/results/vae_mnist_cpu.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = pipelines.build_config(
        "vae",
        "mnist",
        flags={
            "data": {"dir": args.data_dir, "batch_size": args.batch_size},
            "trainer": {
                "epochs": args.epochs,
                "progress_bar": False,
                "plots": False,
                "val_every": 0,
            },
            "optim": {"lr": 1e-3},
        },
    )
    with tempfile.TemporaryDirectory() as run_dir:
        method, result = pipelines.train(config, f"{run_dir}/run")
        features = pipelines.run_features(method.eval())
        linear = pipelines.evaluate(method, "linear", features=features)
        knn = pipelines.evaluate(method, "knn", features=features)
    row = {
        "method": "vae",
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "train_seconds": round(result.seconds, 1),
        "train_images_per_second": round(result.samples_per_second, 1),
        "linear_accuracy": linear["accuracy"],
        "knn_accuracy": knn["accuracy"],
    }
    print_table([row], list(row))
    write_result(
        args.out,
        {
            "benchmark": "vae_mnist",
            "machine": machine(),
            "config": config.to_dict(),
            "results": [row],
        },
    )


if __name__ == "__main__":
    main()
