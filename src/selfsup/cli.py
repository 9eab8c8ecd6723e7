"""Command line: argument parsing only; the work is done in :mod:`selfsup.pipelines`.

Errors the user can fix (:class:`~selfsup.errors.SelfsupError`) are printed as one paragraph and
exit with code 2; no traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from selfsup.errors import ConfigError, SelfsupError

EPILOG = """examples:
  selfsup demo
  selfsup train vae --dataset mnist --data-dir ../shared/data --epochs 10 --out runs/vae-mnist
  selfsup train vae --dataset digits --beta 4 --set optim.lr=3e-4
  selfsup train --resume runs/vae-mnist --epochs 20
  selfsup eval linear --run runs/vae-mnist --json
  selfsup generate --run runs/vae-mnist --n 64 --out samples/
  selfsup data list
  selfsup data check mnist --data-dir ../shared/data
"""


def _emit(result: dict[str, Any], as_json: bool, title: str = "") -> None:
    if as_json:
        print(json.dumps(result, default=str))
        return
    if title:
        print(title)
    width = max((len(k) for k in result), default=0)
    for key, value in result.items():
        if isinstance(value, float):
            value = f"{value:.4f}"
        print(f"  {key:<{width}}  {value}")


def _quiet_libraries() -> None:
    """Keep stdout for our output: Lightning's info lines and warnings go away or to stderr."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    import warnings

    warnings.filterwarnings("ignore")


def _parse_free_flags(extra: list[str]) -> dict[str, Any]:
    """``--encode-method softmax --hard`` -> {"encode_method": "softmax", "hard": True}."""
    flags: dict[str, Any] = {}
    i = 0
    while i < len(extra):
        token = extra[i]
        if not token.startswith("--") or len(token) < 3:
            raise ConfigError(
                f"Unexpected argument {token!r}. Options look like --name value; run "
                "`selfsup train --help`."
            )
        name, _, inline = token[2:].partition("=")
        key = name.replace("-", "_")
        if inline:
            value: Any = yaml.safe_load(inline)
            i += 1
        elif i + 1 < len(extra) and not extra[i + 1].startswith("--"):
            value = yaml.safe_load(extra[i + 1])
            i += 2
        else:
            value = True
            i += 1
        flags[key] = value
    return flags


# ------------------------------------------------------------------------------------ commands
def cmd_train(args: argparse.Namespace, extra: list[str]) -> int:
    from selfsup import pipelines

    if args.resume:
        if extra or args.method:
            raise ConfigError(
                "--resume continues a run with its saved configuration; only --epochs may be "
                "given with it (to extend the run)."
            )
        _, result = pipelines.resume(args.resume, epochs=args.epochs)
    else:
        if not args.method:
            raise ConfigError("Name a method to train, e.g. `selfsup train vae --dataset mnist`.")
        flags = _parse_free_flags(extra)
        sections: dict[str, dict[str, Any]] = {"data": {}, "trainer": {}}
        for key, section, field in (
            ("data_dir", "data", "dir"),
            ("batch_size", "data", "batch_size"),
            ("download", "data", "download"),
            ("epochs", "trainer", "epochs"),
            ("devices", "trainer", "devices"),
            ("strategy", "trainer", "strategy"),
            ("precision", "trainer", "precision"),
            ("accelerator", "trainer", "accelerator"),
        ):
            value = getattr(args, key)
            if value not in (None, False):
                sections[section][field] = value
        if args.no_progress or args.json:
            sections["trainer"]["progress_bar"] = False
        if args.seed is not None:
            flags["seed"] = args.seed
        seed = flags.pop("seed", None)
        config = pipelines.build_config(
            args.method,
            args.dataset,
            config_file=args.config,
            flags={**flags, **sections},
            sets=(args.set or []) + ([f"seed={seed}"] if seed is not None else []),
            use_preset=not args.no_preset,
        )
        _, result = pipelines.train(config, args.out)
    summary = {
        "run_dir": str(result.run_dir),
        "checkpoint": str(result.last_checkpoint),
        "global_step": result.global_step,
        "epochs": result.epochs,
        "seconds": round(result.seconds, 2),
        "samples_per_second": round(result.samples_per_second, 1),
        "interrupted": result.interrupted,
    }
    title = "Training interrupted; checkpoint saved." if result.interrupted else "Training done."
    if not pipelines.is_launched_worker():
        _emit(summary, args.json, title)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from selfsup import pipelines

    method = pipelines.load_run(args.run, device=args.device)
    result = pipelines.evaluate(
        method, args.probe, args.data_dir, device=args.device, seed=args.seed
    )
    _emit(result, args.json, f"{args.probe} evaluation of {args.run} (test split):")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from selfsup import pipelines
    from selfsup.plots import save_generative_grids

    method = pipelines.load_run(args.run, device=args.device)
    if not method.generative:
        raise ConfigError(f"{method.name} has no decoder, so it cannot generate images.")
    spec_split = pipelines.dataset_spec(method.config.data.name).test_split
    dataset = pipelines.load_split(method.config, spec_split, args.data_dir)
    paths = save_generative_grids(method, dataset, Path(args.out), n=args.n)
    _emit({k: str(v) for k, v in paths.items()}, args.json, "Wrote:")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from selfsup.data import check_dataset, list_datasets

    if args.action == "list":
        rows = list_datasets()
        if args.json:
            print(json.dumps({"datasets": rows}, default=str))
        else:
            for row in rows:
                shape = "x".join(str(s) for s in row.get("image_shape") or []) or "any"
                print(f"{row['name']:<14} {shape:<10} {row.get('description', '')}")
                print(f"{'':<14} files in: {row.get('folder', '')}")
        return 0
    if not args.name:
        raise ConfigError(
            "Name the dataset to check, e.g. `selfsup data check mnist --data-dir DIR`."
        )
    report = check_dataset(args.name, args.data_dir)
    if args.json:
        print(json.dumps(report, default=str))
    else:
        status = "valid" if report["valid"] else "NOT usable"
        print(f"{args.name} in {report['folder']}: {status}")
        for f in report["files"]:
            mark = "ok " if f["present"] else "-- "
            print(f"  {mark}{f['path']}")
        print(f"  {report['message']}")
    return 0 if report["valid"] else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from selfsup import pipelines

    out = Path(args.out)
    if (out / pipelines.CONFIG_FILE).exists():
        import shutil

        shutil.rmtree(out)
    config = pipelines.build_config(
        "vae",
        "digits",
        flags={
            "trainer": {"epochs": args.epochs, "progress_bar": not args.json},
            "data": {"batch_size": 64},
        },
    )
    method, result = pipelines.train(config, out)
    evaluation = pipelines.evaluate(method.eval(), "linear")
    summary = {
        "method": "vae",
        "dataset": "digits",
        "epochs": result.epochs,
        "train_seconds": round(result.seconds, 2),
        "linear_probe_accuracy": evaluation["accuracy"],
        "run_dir": str(out),
        "images": str(out / "images"),
    }
    _emit(summary, args.json, "Demo: VAE on scikit-learn digits (no download).")
    return 0


def method_help(method: str) -> str:
    """The method's config keys with defaults (shown by `selfsup train METHOD --help`)."""
    from selfsup.methods import method_class

    cls = method_class(method)
    lines = [f"options of {method} (flags --name value, or --set model.name=value):"]
    for f in dataclasses.fields(cls.config_class):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        lines.append(f"  --{f.name.replace('_', '-'):<22} default: {default}")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------- parser
def build_parser(method_for_help: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="selfsup",
        description="Train, evaluate and compare self-supervised representation learners.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="train a small VAE on the embedded digits and probe it")
    demo.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    demo.add_argument("--epochs", type=int, default=30)
    demo.add_argument("--json", action="store_true", help="print one JSON object")

    epilog = (
        method_help(method_for_help)
        if method_for_help
        else ("Method and dataset options are flags too: `selfsup train METHOD --help` lists them.")
    )
    train = sub.add_parser(
        "train",
        help="train a method (or --resume a run)",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("method", nargs="?", help="vae, ... (see `selfsup train --help`)")
    train.add_argument(
        "--dataset", help="digits (default), mnist, fashionmnist, cifar10, stl10, imagefolder"
    )
    train.add_argument("--data-dir", help="folder holding the datasets (default ./data)")
    train.add_argument("--epochs", type=int)
    train.add_argument("--batch-size", type=int, help="global batch size")
    train.add_argument("--out", help="run folder (default runs/METHOD-DATASET-TIME)")
    train.add_argument("--config", help="YAML file with config sections")
    train.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override any config key, e.g. --set optim.lr=1e-3 (repeatable)",
    )
    train.add_argument(
        "--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint"
    )
    train.add_argument("--seed", type=int)
    train.add_argument("--devices", type=int)
    train.add_argument("--strategy", help="auto or ddp")
    train.add_argument("--precision", help="32-true (default), bf16-mixed, 16-mixed")
    train.add_argument("--accelerator", help="auto (default), cpu or gpu")
    train.add_argument("--download", action="store_true", help="download the dataset if missing")
    train.add_argument(
        "--no-preset", action="store_true", help="ignore configs/METHOD/DATASET.yaml"
    )
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    train.add_argument("--json", action="store_true", help="print one JSON summary")

    ev = sub.add_parser("eval", help="frozen-encoder evaluation of a run on the test split")
    ev.add_argument("probe", choices=["linear", "mlp", "knn", "gmm"])
    ev.add_argument("--run", required=True, help="run folder")
    ev.add_argument("--data-dir", help="dataset folder (default: the one used for training)")
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--json", action="store_true")

    gen = sub.add_parser("generate", help="sample and reconstruct images with a generative run")
    gen.add_argument("--run", required=True)
    gen.add_argument("--n", type=int, default=64, help="number of reconstructions")
    gen.add_argument("--out", required=True, help="output folder")
    gen.add_argument("--data-dir")
    gen.add_argument("--device", default="cpu")
    gen.add_argument("--json", action="store_true")

    data = sub.add_parser("data", help="list datasets or check that one is present and valid")
    data.add_argument("action", choices=["list", "check"])
    data.add_argument("name", nargs="?")
    data.add_argument("--data-dir", default="data")
    data.add_argument("--json", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    method_for_help = None
    if len(argv) >= 3 and argv[0] == "train" and ("--help" in argv or "-h" in argv):
        if not argv[1].startswith("-"):
            method_for_help = argv[1]
    try:
        parser = build_parser(method_for_help)
        args, extra = parser.parse_known_args(argv)
        if extra and args.command != "train":
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.WARNING)  # no banner lines or tips
        if getattr(args, "json", False):
            _quiet_libraries()
        if args.command == "train":
            return cmd_train(args, extra)
        if args.command == "eval":
            return cmd_eval(args)
        if args.command == "generate":
            return cmd_generate(args)
        if args.command == "data":
            return cmd_data(args)
        return cmd_demo(args)
    except SelfsupError as exc:
        print(f"selfsup: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("selfsup: interrupted.", file=sys.stderr)
        return 130
