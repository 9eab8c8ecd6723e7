"""BYOL with a continuous vs a softmax bottleneck on procedural dSprites (K=2), same CPU budget.

Run as ``python -m benchmarks.dsprites_bottleneck --steps S --max-samples M --out FILE.json``.

Both runs: BYOL on ``dsprites-procedural`` with the out-of-distribution split K=2 (train on 6 of
the 12 shape x quadrant combinations minus a 10% in-distribution held-out set, val and test on
unseen combinations), the 64x64 conv backbone (``conv64``, hidden 128), an embedder
Linear(128 -> L*V = 2048, no bias)-BN, the paper's projector Linear(2048 -> 1024)-BN-ReLU-
Linear(1024 -> 128, no bias)-BN, a predictor 128-1024-128, target EMA decay 0.99 (constant) over
backbone, embedder and projector, Adam 1e-3, batch ``--batch-size``, ``--steps`` optimizer steps,
the dataset's augmentation (random affine, 4 degrees, zoom 0.81-1, nearest), inputs normalized by
the train split's mean and std. The only difference is the bridge: ``continuous`` (none) vs
``softmax`` (L = 128 groups of V = 16, tau = 1).

Then :func:`selfsup.evaluate.factors.evaluate_factors` (``selfsup eval factors``): ridge probes of
each factor fit on (a seeded subset of ``--max-samples`` of) train, alpha chosen on val (OOD),
scored on held-out (ID), val and test (OOD), for the L2-normalised backbone features and, for the
softmax run, the discrete code. ``--random-init`` adds the untrained network as a baseline.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import machine, write_result
from selfsup import pipelines
from selfsup.evaluate.factors import evaluate_factors, format_table

VARIANTS = ("continuous", "softmax")


def build(variant: str, args: argparse.Namespace, steps: int) -> Any:
    """The run config of one variant (see the module doc)."""
    model = {
        "backbone": "conv64", "width": args.width, "encode_method": variant,
        "embedder": "linear", "message_size": 128, "vocab_size": 16, "tau": 1.0,
        "proj_dims": [1024, 128], "proj_last_bn": True, "pred_hidden": 1024,
        "base_momentum": 0.99, "final_momentum": 0.99,
    }
    return pipelines.build_config(
        "byol",
        "dsprites-procedural",
        flags={
            "model": model,
            "data": {"batch_size": args.batch_size, "ood_k": 2, "num_workers": 0},
            "trainer": {"epochs": 1, "max_steps": max(steps, 1), "progress_bar": False,
                        "plots": False, "val_every": 0, "log_every": 10,
                        "checkpoint_every": 1},
        },
        sets=[f"seed={args.seed}", "augment.normalize_stats=train"],
    )


def run_variant(variant: str, args: argparse.Namespace, workdir: Path, random_init: bool = False
                ) -> dict[str, Any]:
    """Train one variant (unless ``random_init``) and probe its factors."""
    config = build(variant, args, 0 if random_init else args.steps)
    started = time.perf_counter()
    if random_init:
        from selfsup.data.augment import resolve_normalization
        from selfsup.engine import data_info
        from selfsup.methods import method_class

        train_set = pipelines.load_split(config, "train")
        resolve_normalization(config.augment, train_set)
        torch.manual_seed(config.seed)
        method = method_class("byol")(config, data_info(train_set))
        steps, seconds = 0, 0.0
    else:
        method, result = pipelines.train(config, workdir / variant)
        steps, seconds = result.global_step, result.seconds
    total_train = time.perf_counter() - started
    method.eval()
    factors = evaluate_factors(method, max_samples=args.max_samples, seed=args.seed)
    name = f"{variant} (random init)" if random_init else variant
    print(f"\n== {name}: {steps} steps, train {seconds:.0f} s, eval {factors['seconds']:.0f} s")
    print(format_table(factors), flush=True)
    return {
        "variant": name,
        "steps": steps,
        "images_seen": steps * args.batch_size,
        "train_seconds": round(seconds, 1),
        "train_wall_seconds": round(total_train, 1),
        "factors": factors,
        "normalization": {"mean": list(config.augment.mean), "std": list(config.augment.std)},
        "model": config.to_dict()["model"],
    }


def ood_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table: factor x (variant, representation), columns heldout / val / test."""
    lines = ["| factor | metric | model | representation | held-out (ID) | val (OOD) "
             "| test (OOD) |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        for r in row["factors"]["results"]:
            if "skipped" in r:
                continue
            lines.append(
                f"| {r['factor']} | {r['metric']} | {row['variant']} | {r['representation']} | "
                f"{r.get('heldout', float('nan')):.3f} | {r['val']:.3f} | {r['test']:.3f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150, help="optimizer steps per variant")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--width", type=int, default=32, help="conv64 width (32: hidden 128)")
    parser.add_argument("--max-samples", type=int, default=5000,
                        help="images per split for the factor probes (0: all)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--random-init", action="store_true",
                        help="also probe the untrained network (baseline)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/dsprites_bottleneck_cpu.json")
    parser.add_argument("--note", default="")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for logger in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(logger).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.random_init:
            rows.append(run_variant("softmax", args, Path(tmp), random_init=True))
        for variant in args.variants:
            rows.append(run_variant(variant, args, Path(tmp)))
    report = {
        "benchmark": "dsprites_bottleneck",
        "budget": {"steps": args.steps, "batch_size": args.batch_size,
                   "images_seen": args.steps * args.batch_size, "threads": args.threads,
                   "probe_max_samples_per_split": args.max_samples, "seed": args.seed,
                   "width": args.width},
        "command": "python -m benchmarks.dsprites_bottleneck " + " ".join(argv or []),
        "note": args.note,
        "machine": machine(),
        "total_seconds": round(time.perf_counter() - started, 1),
        "results": rows,
        "table_markdown": ood_table(rows),
    }
    write_result(args.out, report)
    print("\n" + report["table_markdown"])
    print(f"total {report['total_seconds']:.0f} s")
    return report


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
