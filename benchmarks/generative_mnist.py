"""VAE vs augmented VAE vs SimVAE vs AAVAE on MNIST, same encoder/decoder and budget, on CPU.

Run: ``python -m benchmarks.generative_mnist --data-dir /work/shared/data --epochs E
--out benchmarks/results/generative_mnist_cpu.json``.

All four models share the MLP encoder/decoder (784 - hidden - 2z and z - reversed(hidden) - 784,
default hidden = 2000, 500, 500 as in SimVAE), latent size z = 10, Adam (``--lr``, eps 1e-4),
``--batch-size`` samples per step (SimVAE and the augmented VAE see 2 views per sample), the same
number of epochs over the same (optionally subsampled, ``--train-size``) training images and seed:

* ``vae``: the plain VAE (Bernoulli likelihood, beta = 1), **no augmentation**;
* ``augmented_vae``: ``simvae`` with ``prior: standard`` (N(0, I) on every view; analytic KL, so
  the loss is the sum of the two views' VAE losses);
* ``simvae``: ``simvae`` with the shared content-latent prior (var_z_y 0.15, entropy weight 1/2);
* ``aavae``: ``aavae`` with the same MLP body; it adds its Linear(h, h)-BN-ReLU head before mu and
  logvar, a Gaussian likelihood on mean/std-normalised pixels and kl_coeff 0; its representation is
  set to mu (10-d) so that all four are probed on the same-size feature.

Augmented models use the released SimVAE MNIST augmentations (random resized crop scale 0.4-1,
ratio 0.75-1.3, vertical flip 0.5). All four see the released MNIST preprocessing, binarisation
at 0.5 (``augment.binarize``), on training views AND on every evaluation input (the probes'
features are computed from binarised images, as in the released evaluation loader); AAVAE then
normalises with the data layer's MNIST statistics. The BCE is NOT scaled by exp(-log_var_x)
(the paper's ELBO; the released code scales it, ``bce_scaled_by_var``), so VAE and SimVAE weight
reconstruction and prior alike. Evaluation: frozen representations of the full MNIST train/test
splits, scored with ``pipelines.evaluate`` (linear, MLP and kNN probes; ``--probe-train-size``
fits the probes on a random subset of the train features, and ``--mlp-epochs`` other than 100
calls ``selfsup.evaluate.mlp_probe`` directly with that epoch budget, for slow machines). Train
seconds are wall time of ``engine.fit`` on this machine, which may be shared with other work.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from selfsup import engine, pipelines
from selfsup.data.preprocess import dataset_stats
from selfsup.evaluate import mlp_probe
from selfsup.methods import method_class

PREPROCESS: dict[str, Any] = {"binarize": 0.5}  # the data's preprocessing, shared by all four
MNIST_AUGMENT: dict[str, Any] = {
    "crop_scale": [0.4, 1.0],
    "crop_ratio": [0.75, 1.3],
    "vflip": 0.5,
    "hflip": 0.0,
    **PREPROCESS,
}
IDENTITY_AUGMENT: dict[str, Any] = {
    "crop_scale": [1.0, 1.0], "vflip": 0.0, "hflip": 0.0, **PREPROCESS
}
PROBES = ("linear", "mlp", "knn")


def model_specs(hidden: list[int], latent: int) -> dict[str, tuple[str, dict[str, Any]]]:
    """name -> (selfsup method, flags specific to that model)."""
    body = {"latent_dim": latent, "hidden": hidden, "encoder": "mlp", "decoder": "mlp"}
    mean, std = dataset_stats("mnist", 1)
    return {
        "vae": ("vae", {"model": {**body, "likelihood": "bernoulli", "beta": 1.0},
                        "augment": IDENTITY_AUGMENT}),
        "augmented_vae": ("simvae", {
            "model": {**body, "likelihood": "bernoulli", "prior": "standard",
                      "kl_estimator": "analytic", "bce_scaled_by_var": False},
            "augment": MNIST_AUGMENT}),
        "simvae": ("simvae", {
            "model": {**body, "likelihood": "bernoulli", "prior": "simvae",
                      "bce_scaled_by_var": False},
            "augment": MNIST_AUGMENT}),
        "aavae": ("aavae", {
            "model": {**body, "representation": "mu"},
            "augment": {**MNIST_AUGMENT, "normalize": True, "mean": mean, "std": std,
                        "jitter_prob": 0.0, "grayscale": 0.0}}),
    }


def run_one(name: str, method: str, flags: dict[str, Any], args: argparse.Namespace) -> dict:
    """Train one model and probe its frozen representation."""
    flags = {
        **flags,
        "optim": {"name": "adam", "lr": args.lr, "eps": 1e-4, "schedule": "constant"},
        "data": {"batch_size": args.batch_size, "dir": args.data_dir, "num_workers": 0},
        "trainer": {"epochs": args.epochs, "online_probe": False, "plots": False,
                    "progress_bar": False, "val_every": 0, "checkpoint_every": args.epochs,
                    "log_every": 50, "accelerator": "cpu"},
    }
    config = pipelines.build_config(method, "mnist", flags=flags, use_preset=False)
    config.seed = args.seed
    train_set = pipelines.load_split(config, "train")
    if args.train_size and args.train_size < len(train_set):
        gen = torch.Generator().manual_seed(args.seed)
        keep = torch.randperm(len(train_set), generator=gen)[: args.train_size]
        train_set = train_set.subset(keep)
    torch.manual_seed(config.seed)
    model = method_class(method)(config, engine.data_info(train_set))
    with tempfile.TemporaryDirectory() as tmp:
        result = engine.fit(model, train_set, None, Path(tmp) / "run")
    model.eval()
    started = time.perf_counter()
    feats = pipelines.run_features(model, args.data_dir)
    if args.probe_train_size and args.probe_train_size < feats.train_x.shape[0]:
        gen = torch.Generator().manual_seed(args.seed + 1)
        keep = torch.randperm(feats.train_x.shape[0], generator=gen)[: args.probe_train_size]
        feats = pipelines.Features(feats.train_x[keep], feats.train_y[keep], feats.test_x,
                                   feats.test_y)
    row: dict[str, Any] = {
        "model": name,
        "method": method,
        "train_seconds": round(result.seconds, 1),
        "steps": result.global_step,
        "feature_dim": int(feats.train_x.shape[1]),
        "config": config.to_dict(),
    }
    for probe in PROBES:
        if probe == "mlp" and args.mlp_epochs != 100:
            out = mlp_probe(feats.train_x, feats.train_y, feats.test_x, feats.test_y,
                            epochs=args.mlp_epochs, seed=args.seed)
        else:
            out = pipelines.evaluate(model, probe, args.data_dir, seed=args.seed, features=feats)
        row[f"{probe}_acc"] = out["accuracy"]
        row[f"{probe}_detail"] = {k: v for k, v in out.items()
                                  if isinstance(v, (int, float, str)) and k != "accuracy"}
    row["eval_seconds"] = round(time.perf_counter() - started, 1)
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=0,
                        help="train on a random subset of this many images (0: all 60000)")
    parser.add_argument("--hidden", type=int, nargs="+", default=[2000, 500, 500])
    parser.add_argument("--latent", type=int, default=10)
    parser.add_argument("--probe-train-size", type=int, default=0,
                        help="fit the probes on a random subset of this many train features")
    parser.add_argument("--mlp-epochs", type=int, default=100,
                        help="MLP-probe epochs (100 = pipelines.evaluate's default)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=["vae", "augmented_vae", "simvae", "aavae"])
    parser.add_argument("--out", default="benchmarks/results/generative_mnist_cpu.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    specs = model_specs(args.hidden, args.latent)
    rows = []
    for name in args.models:
        method, flags = specs[name]
        print(f"training {name} ({method}) ...", flush=True)
        rows.append(run_one(name, method, flags, args))
        print(f"  {name}: linear {rows[-1]['linear_acc']:.4f} mlp {rows[-1]['mlp_acc']:.4f} "
              f"knn {rows[-1]['knn_acc']:.4f} train {rows[-1]['train_seconds']} s", flush=True)
    report = {
        "benchmark": "generative_mnist",
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average_at_end": list(os.getloadavg()),
        },
        "budget": {k: getattr(args, k) for k in
                   ("epochs", "train_size", "probe_train_size", "mlp_epochs", "hidden", "latent",
                    "batch_size", "lr", "seed")},
        "results": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\n{'model':<15}{'linear':>8}{'mlp':>8}{'knn':>8}{'train s':>10}{'steps':>7}")
    for r in rows:
        print(f"{r['model']:<15}{r['linear_acc']:>8.4f}{r['mlp_acc']:>8.4f}{r['knn_acc']:>8.4f}"
              f"{r['train_seconds']:>10.1f}{r['steps']:>7}")
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
