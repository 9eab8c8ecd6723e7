"""BYOL with a continuous vs a softmax bottleneck on procedural dSprites (K=2), same CPU budget.

Run as ``python -m benchmarks.dsprites_bottleneck --steps S --max-samples M --out FILE.json``.

Both runs: the faithful preset ``configs/byol/dsprites.yaml`` (BYOL as released in
lavoiems/SoftDiscrete_SSL, following ``launch_dsprites.sh``: the released conv64 backbone with
hidden size 256 (813k parameters), embedder Linear(256 -> L*V, no bias)-BN, projector
Linear(L*V -> 1024)-BN-ReLU-Linear(1024 -> 256, no bias)-BN, predictor Linear(256, 256, no bias),
target EMA 0.99 (constant) over backbone, embedder, bridge and projector, the released loss
-(cos_ab + cos_ba) / 2, AdamW lr 1e-3 weight decay 1e-4, batch 256, L = 256, V = 32, tau = 1; the
released held-out rule (45,000 training images, random_split seeds 100 / 102); the dataset's
augmentation: random affine, 4 degrees, zoom 0.81-1, nearest) on ``dsprites-procedural`` with the
out-of-distribution split K=2, ``--steps`` optimizer steps. The only difference is the bridge:
``continuous`` (embedder width = hidden size 256, as released) vs ``softmax``.

Then :func:`selfsup.evaluate.factors.evaluate_factors` (``selfsup eval factors``) on a seeded
subset of ``--max-samples`` images per split, with the released protocol (ridge alpha 1 without
intercept, fit on train) and ours (``tuned``: intercept, alpha chosen on the in-distribution
held-out split), for the L2-normalised backbone features and, for the softmax run, the discrete
code. ``--random-init`` adds the untrained network as a baseline.

``--workdir DIR`` keeps the trained runs; ``--stage train`` only trains (resuming an interrupted
run), ``--stage eval`` only probes the runs in DIR, ``all`` (the default) does both.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import machine, write_result
from selfsup import pipelines
from selfsup.evaluate.factors import PROTOCOLS, evaluate_factors, format_table

VARIANTS = ("continuous", "softmax")


def build(variant: str, args: argparse.Namespace, steps: int) -> Any:
    """The run config of one variant: the preset, the bridge and the budget."""
    data: dict[str, Any] = {"ood_k": 2, "num_workers": 0}
    if args.batch_size:
        data["batch_size"] = args.batch_size
    return pipelines.build_config(
        "byol",
        "dsprites-procedural",
        flags={
            "model": {"encode_method": variant},
            "data": data,
            "trainer": {"epochs": 1, "max_steps": max(steps, 1), "progress_bar": False,
                        "plots": False, "val_every": 0, "log_every": 10,
                        "checkpoint_every": 1},
        },
        sets=[f"seed={args.seed}"],
    )


def untrained(variant: str, args: argparse.Namespace) -> Any:
    """The untrained network of ``variant`` (inputs normalised by the train split)."""
    from selfsup.data.augment import resolve_normalization
    from selfsup.engine import data_info
    from selfsup.methods import method_class

    config = build(variant, args, 0)
    train_set = pipelines.load_split(config, "train")
    resolve_normalization(config.augment, train_set)
    torch.manual_seed(config.seed)
    return method_class("byol")(config, data_info(train_set))


def train_variant(variant: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Train one variant into ``workdir/variant`` (resumed when interrupted)."""
    run_dir = workdir / variant
    done = run_dir / "benchmark_train.json"
    if done.is_file():
        return json.loads(done.read_text())
    started = time.perf_counter()
    if (run_dir / "checkpoints" / "last.ckpt").is_file():
        _, result = pipelines.resume(run_dir)
    else:
        _, result = pipelines.train(build(variant, args, args.steps), run_dir)
    info = {"steps": result.global_step, "train_seconds": round(result.seconds, 1),
            "train_wall_seconds": round(time.perf_counter() - started, 1)}
    if not result.interrupted:
        done.write_text(json.dumps(info))
    print(f"== {variant}: {info}", flush=True)
    return info


def probe(method: Any, name: str, args: argparse.Namespace, info: dict[str, Any]
          ) -> dict[str, Any]:
    """Factor probes of ``method`` with every protocol."""
    method.eval()
    out: dict[str, Any] = {"variant": name, **info,
                           "images_seen": info.get("steps", 0) * method.config.data.batch_size}
    for protocol in PROTOCOLS:
        factors = evaluate_factors(method, max_samples=args.max_samples, seed=args.seed,
                                   protocol=protocol)
        print(f"\n== {name} ({protocol}), eval {factors['seconds']:.0f} s")
        print(format_table(factors), flush=True)
        out[f"factors_{protocol}"] = factors
    out["normalization"] = {"mean": list(method.config.augment.mean),
                            "std": list(method.config.augment.std)}
    out["model"] = method.config.to_dict()["model"]
    return out


def ood_table(rows: list[dict[str, Any]], protocol: str) -> str:
    """Markdown table: factor x (variant, representation), columns heldout / val / test."""
    lines = ["| factor | metric | model | representation | held-out (ID) | val (OOD) "
             "| test (OOD) |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        for r in row[f"factors_{protocol}"]["results"]:
            if "skipped" in r:
                continue
            lines.append(
                f"| {r['factor']} | {r['metric']} | {row['variant']} | {r['representation']} | "
                f"{r.get('heldout', float('nan')):.3f} | {r['val']:.3f} | {r['test']:.3f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per variant")
    parser.add_argument("--batch-size", type=int, default=0, help="0: the preset's (256)")
    parser.add_argument("--max-samples", type=int, default=3000,
                        help="images per split for the factor probes (0: all)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--random-init", action="store_true",
                        help="also probe the untrained network (baseline)")
    parser.add_argument("--stage", choices=["all", "train", "eval"], default="all")
    parser.add_argument("--workdir", help="keep the trained runs here (default: a temp dir)")
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
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        infos = {}
        if args.stage in ("all", "train"):
            infos = {v: train_variant(v, args, workdir) for v in args.variants}
        if args.stage == "train":
            return {"trained": infos}
        if args.random_init:
            rows.append(probe(untrained("softmax", args), "softmax (random init)", args,
                              {"steps": 0}))
        for variant in args.variants:
            info = infos.get(variant) or json.loads(
                (workdir / variant / "benchmark_train.json").read_text())
            method = pipelines.load_run(workdir / variant)
            rows.append(probe(method, variant, args, info))
    batch = build(args.variants[0], args, 1).data.batch_size
    report = {
        "benchmark": "dsprites_bottleneck",
        "preset": "configs/byol/dsprites.yaml",
        "budget": {"steps": args.steps, "batch_size": batch, "images_seen": args.steps * batch,
                   "threads": args.threads, "probe_max_samples_per_split": args.max_samples,
                   "seed": args.seed},
        "command": "python -m benchmarks.dsprites_bottleneck " + " ".join(argv or []),
        "note": args.note,
        "machine": machine(),
        "total_seconds": round(time.perf_counter() - started, 1),
        "results": rows,
        "table_markdown": {p: ood_table(rows, p) for p in PROTOCOLS},
    }
    write_result(args.out, report)
    for protocol in PROTOCOLS:
        print(f"\n{protocol}:\n" + report["table_markdown"][protocol])
    print(f"total {report['total_seconds']:.0f} s")
    return report


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
