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
  selfsup eval linear --run runs/vicreg-cifar10 --protocol sgd-augmented
  selfsup generate --run runs/vae-mnist --n 64 --out samples/
  selfsup generate --run runs/hvae-mnist --mode limiting --steps 1000 --n 1000 --out gen/
  selfsup fid gen/samples ref/ --inception-weights inception.pt --json
  selfsup data list
  selfsup data check mnist --data-dir ../shared/data
  selfsup data prepare mpi3d --variant toy --data-dir data
  selfsup eval factors --run runs/byol-dsprites --max-samples 20000
  selfsup report runs/vae-mnist runs/vicreg-mnist --out report.html
  selfsup compare --preset mnist-all --data-dir ../shared/data --out runs/compare-mnist
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
        _, result = _resume(args, extra)
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
            ("num_nodes", "trainer", "num_nodes"),
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
    if result.aborted:
        title = "Training stopped at once (second Ctrl-C); the step in flight was not saved."
    if not pipelines.is_launched_worker():
        _emit(summary, args.json, title)
    if result.aborted:
        print(
            f"selfsup: stopped by a second Ctrl-C. The last checkpoint is {result.last_checkpoint} "
            f"(step {result.global_step}); continue with `selfsup train --resume "
            f"{result.run_dir}`.",
            file=sys.stderr,
        )
        return 130
    return 0


#: How each `selfsup train` option given with --resume maps to a config key (refused by
#: pipelines.resume unless it is one of pipelines.RESUME_KEYS).
RESUME_FLAGS = {
    "data_dir": "data.dir", "download": "data.download", "epochs": "trainer.epochs",
    "batch_size": "data.batch_size", "seed": "seed", "devices": "trainer.devices",
    "num_nodes": "trainer.num_nodes",
    "strategy": "trainer.strategy", "precision": "trainer.precision",
    "accelerator": "trainer.accelerator",
}


def _resume(args: argparse.Namespace, extra: list[str]) -> Any:
    """`selfsup train --resume RUN [options]`: each option is applied (and recorded in the
    run's config history) or refused with exit 2, naming it."""
    from selfsup import pipelines

    fixed = [f"--{name.replace('_', '-')}" for name in ("config", "dataset", "out", "no_preset")
             if getattr(args, name)]
    fixed += ([f"the method {args.method!r}"] if args.method else []) + extra
    if fixed:
        raise ConfigError(
            f"--resume continues the run in its own folder with its saved method, dataset and "
            f"configuration, so {', '.join(fixed)} cannot be given with it. Options a resume "
            "accepts: --epochs, --data-dir, --download, --accelerator, --no-progress, --json and "
            f"--set KEY=VALUE for {', '.join(sorted(pipelines.RESUME_KEYS))}."
        )
    sets, given_as = [], {}
    for name, key in RESUME_FLAGS.items():
        value = getattr(args, name)
        if value is not None and value is not False:
            flag = f"--{name.replace('_', '-')}"
            sets.append(f"{key}={json.dumps(value) if isinstance(value, str) else value}")
            given_as[key] = f"{flag} {value}" if value is not True else flag
    for item in args.set or []:
        sets.append(item)
        given_as.setdefault(item.split("=", 1)[0].strip(), f"--set {item}")
    progress = False if (args.no_progress or args.json) else None
    return pipelines.resume(args.resume, sets=sets, given_as=given_as, progress_bar=progress)


def cmd_eval(args: argparse.Namespace) -> int:
    from selfsup import pipelines
    from selfsup.rundir import RunFolder

    if args.test_unnormalized and (args.probe, args.protocol) != ("linear", "sgd-augmented"):
        raise ConfigError("--test-unnormalized applies to `eval linear --protocol sgd-augmented`.")
    RunFolder(args.run).check_eval_writable()  # before computing: a result is never lost
    method = pipelines.load_run(args.run, device=args.device)
    if args.probe == "factors":
        return _eval_factors(args, method)
    if args.probe == "fid":
        return _eval_fid(args, method)
    if args.max_samples is not None:
        raise ConfigError("--max-samples applies to `selfsup eval factors` only.")
    options: dict = {}
    if args.protocol is not None:
        other_probe = args.protocol in ("tuned", "selfsup", "symvae")  # factors / fid
        mlp_released = args.probe == "mlp" and args.protocol == "released"
        if other_probe or (args.probe != "linear" and not mlp_released):
            raise ConfigError(
                "--protocol applies to `selfsup eval linear`, `--protocol released` also to "
                "`selfsup eval mlp`, --protocol released|tuned to `selfsup eval factors`, and "
                "--protocol selfsup|symvae to `selfsup eval fid`."
            )
        options["protocol"] = args.protocol
    released = options.get("protocol") == "released"
    if args.test_unnormalized:
        options["normalize_test"] = False
    for key in ("epochs", "lr", "batch_size"):
        value = getattr(args, key)
        if value is None:
            continue
        if args.probe not in ("linear", "mlp") or (
            args.probe == "linear" and options.get("protocol", "lbfgs") == "lbfgs"
        ):
            raise ConfigError(
                f"--{key.replace('_', '-')} applies to the MLP probe and to the SGD/Adam/released "
                "linear protocols (`selfsup eval linear --protocol sgd --epochs 50`), not to "
                f"{args.probe} {options.get('protocol', '')}".rstrip() + "."
            )
        linear_lr = key == "lr" and args.probe == "linear" and not released
        options["base_lr" if linear_lr else key] = value
    result = pipelines.evaluate(
        method, args.probe, args.data_dir, device=args.device, seed=args.seed,
        probe_options=options,
    )
    from selfsup.report import eval_name, save_evaluation

    save_evaluation(args.run, eval_name(args.probe, options), result)  # read by `selfsup report`
    _emit(result, args.json, f"{args.probe} evaluation of {args.run} (test split):")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from selfsup.report import write_report

    fmt = args.format or ("md" if str(args.out or "").endswith(".md") else "html")
    out = Path(args.out or f"report.{fmt}")
    path = write_report(args.runs, out, fmt, title=args.title)
    _emit({"report": str(path), "runs": len(args.runs), "format": fmt}, args.json, "Wrote:")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from selfsup.compare import compare

    if args.overwrite and args.reuse:
        raise ConfigError("Pass either --overwrite or --reuse, not both.")
    summary = compare(
        args.preset,
        args.out,
        dataset=args.dataset,
        methods=args.methods,
        epochs=args.epochs,
        max_steps=args.max_steps,
        data_dir=args.data_dir,
        threads=args.threads,
        existing="overwrite" if args.overwrite else "reuse" if args.reuse else "error",
        formats=("html", "md") if args.format == "both" else (args.format,),
    )
    status = 1 if summary["failed"] else 0  # the report is written; the failures are named
    if args.json:
        print(json.dumps(summary, default=str))
        return status
    print(f"Compared {len(summary['methods'])} methods on {summary['dataset']}:")
    for name, row in summary["methods"].items():
        scores = "  ".join(
            f"{k} {v:.4f}" for k, v in row.items() if k != "run_dir" and v is not None
        )
        print(f"  {name:<12} {scores}")
    for name, message in summary["failed"].items():
        print(f"  {name:<12} FAILED: {message}")
    for path in summary["reports"].values():
        print(f"Report: {path}")
    return status


def _eval_factors(args: argparse.Namespace, method: Any) -> int:
    from selfsup.evaluate.factors import evaluate_factors, format_table, save_result

    for key in ("epochs", "lr", "batch_size"):
        if getattr(args, key, None) is not None:
            flag = "--" + key.replace("_", "-")
            raise ConfigError(f"{flag} does not apply to `selfsup eval factors`.")
    protocol = args.protocol or "released"
    if protocol not in ("released", "tuned"):
        raise ConfigError(
            f"`selfsup eval factors --protocol {protocol}` is not a factor-probe protocol; use "
            "released (ridge alpha 1 without intercept, the default) or tuned (alpha chosen on "
            "the in-distribution heldout split)."
        )
    result = evaluate_factors(
        method, args.data_dir, device=args.device, max_samples=args.max_samples or 0,
        seed=args.seed, protocol=protocol,
    )
    result["run"] = str(args.run)
    result["json_file"] = str(save_result(result, args.run))
    if args.json:
        print(json.dumps(result, default=str))
    else:
        print(format_table(result))
        print(f"(written to {result['json_file']})")
    return 0


def _eval_fid(args: argparse.Namespace, method: Any) -> int:
    """`selfsup eval fid --run RUN [--protocol selfsup|symvae] [--mode random|limiting]`."""
    from selfsup.evaluate.fid import PROTOCOLS, fid_eval_name, fid_of_run
    from selfsup.report import save_evaluation

    protocol = args.protocol or "selfsup"
    if protocol not in PROTOCOLS:
        raise ConfigError(f"eval fid takes --protocol {' or '.join(PROTOCOLS)}, not {protocol}.")
    mode = args.mode or "random"
    result = fid_of_run(
        method, mode=mode, protocol=protocol, n=args.n, n_ref=args.n_ref, steps=args.steps,
        weights=args.inception_weights, data_dir=args.data_dir, seed=args.seed,
        device=args.device, images_out=args.save_images, progress=True,
    )
    result["json_file"] = str(save_evaluation(args.run, fid_eval_name(mode, protocol), result))
    _emit(result, args.json, f"FID of {args.run} ({mode} samples, protocol {protocol}):")
    return 0


def cmd_fid(args: argparse.Namespace) -> int:
    """`selfsup fid DIR_A DIR_B`: FID between two folders of images."""
    from selfsup.evaluate.fid import fid_between_folders

    result = fid_between_folders(args.dir_a, args.dir_b, args.inception_weights,
                                 args.batch_size, args.device, progress=True)
    _emit(result, args.json, f"FID between {args.dir_a} and {args.dir_b}:")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from selfsup import pipelines
    from selfsup.methods.sampling import generate_images, save_image_folder
    from selfsup.plots import save_generative_grids

    method = pipelines.load_run(args.run, device=args.device)
    if not method.generative:
        raise ConfigError(f"{method.name} has no decoder, so it cannot generate images.")
    if args.mode is not None:  # n samples as PNG files + a grid
        images = generate_images(method, args.n, args.mode, args.steps, seed=args.seed,
                                 progress=True)
        written = save_image_folder(images, Path(args.out))
        _emit({**written, "mode": args.mode}, args.json, "Wrote:")
        return 0
    spec_split = pipelines.dataset_spec(method.config.data.name).test_split
    dataset = pipelines.load_split(method.config, spec_split, args.data_dir)
    paths = save_generative_grids(method, dataset, Path(args.out), n=args.n)
    _emit({k: str(v) for k, v in paths.items()}, args.json, "Wrote:")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """`selfsup export --run RUN --out FILE [--format ...]`: the frozen encoder for reuse."""
    from selfsup import pipelines
    from selfsup.export import export_encoder

    method = pipelines.load_run(args.run, checkpoint=args.checkpoint)
    spec = export_encoder(method, args.out, args.format, run_dir=args.run)
    summary = {"file": str(args.out), "description": spec["json"], "format": args.format,
               "layout": spec.get("layout", args.format), "feature_dim": spec["output"]["shape"][1],
               "input": "x".join(str(v) for v in spec["input"]["shape"][1:])}
    _emit(summary, args.json, "Wrote:")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from selfsup.data import check_dataset, list_datasets

    if args.action == "prepare":
        return _data_prepare(args)
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


def _data_prepare(args: argparse.Namespace) -> int:
    from selfsup.data import mpi3d

    name = (args.name or "").lower()
    variant = args.variant
    if name.startswith("mpi3d-"):
        name, variant = "mpi3d", variant or name[len("mpi3d-") :]
    if name != "mpi3d":
        raise ConfigError(
            "Only MPI3D needs preparing: `selfsup data prepare mpi3d --variant toy --data-dir DIR` "
            "(other datasets are read directly)."
        )
    report = mpi3d.prepare(args.data_dir, variant or "toy")
    if args.json:
        print(json.dumps(report, default=str))
    else:
        done = "already prepared" if report["skipped"] else "converted"
        print(f"mpi3d-{variant or 'toy'}: {done}: {report['output']} ({report['images']} images, "
              f"{report['bytes'] / 2**30:.2f} GiB, memory-mapped when training)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from selfsup import pipelines
    from selfsup.rundir import RunFolder

    out = Path(args.out)
    if RunFolder(out).is_run():
        import shutil

        shutil.rmtree(out)
    config = pipelines.build_config(
        "vae",
        "digits",
        flags={
            # figures at a third, two thirds and the end: per-epoch plots would double the time
            "trainer": {"epochs": args.epochs, "progress_bar": not args.json,
                        "plot_every": max(1, args.epochs // 3)},
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
        "images": str(RunFolder(out).image_dir),
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
    train.add_argument("--num-nodes", type=int, help="machines taking part (README: Many machines)")
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
    ev.add_argument("probe", choices=["linear", "mlp", "knn", "gmm", "factors", "fid"])
    ev.add_argument("--run", required=True, help="run folder")
    ev.add_argument("--data-dir", help="dataset folder (default: the one used for training)")
    ev.add_argument("--device", default="cpu")
    ev.add_argument(
        "--max-samples", type=int,
        help="factors only: at most N samples per split (seeded subset; default every sample)",
    )
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument(
        "--protocol",
        choices=["lbfgs", "sgd", "adam", "sgd-augmented", "released", "tuned", "selfsup", "symvae"],
        help="linear: lbfgs (default; weight decay chosen on a validation split) or the "
        "papers' fixed-epoch protocol: a linear layer trained by SGD (Nesterov) or Adam with a "
        "cosine schedule, e.g. --protocol sgd --epochs 50; sgd-augmented: augustwester/vicreg's "
        "eval.py (plain SGD lr 0.02, weight decay 1e-6, 50 epochs, cosine per epoch, on "
        "randomly cropped and flipped training images through the frozen encoder); linear or "
        "mlp: released = SimVAE's released protocol (Adam 3e-4, 200 epochs, batch 64; reports "
        "the BEST TEST accuracy over epochs, i.e. model selection on test). factors: released "
        "(default; ridge alpha 1 without intercept, as the soft-discretization code) or tuned "
        "(intercept, alpha chosen on the in-distribution heldout split). fid: selfsup "
        "(default: 10k samples vs 10k test images, E[x|z]) or symvae (the released protocol of "
        "the hierarchical VAE: every training image as reference, as many samples, binary "
        "modes, 1000 chain steps)",
    )
    ev.add_argument(
        "--test-unnormalized", action="store_true",
        help="sgd-augmented only: score un-normalised test images, as the original eval.py does "
        "(a bug there)",
    )
    ev.add_argument("--epochs", type=int, help="epochs of the SGD/Adam protocol or MLP probe")
    ev.add_argument("--lr", type=float, help="base learning rate (protocol: scaled by batch/256)")
    ev.add_argument("--batch-size", type=int, help="mini-batch of the SGD/Adam protocol or MLP")
    ev.add_argument("--mode", choices=["random", "limiting"],
                    help="fid only: samples from random codes (default) or the limiting "
                    "distribution of the encoder-decoder Markov chain")
    ev.add_argument("--n", type=int, help="fid only: number of samples (default: the "
                    "protocol's, 10000; symvae: as many as reference images)")
    ev.add_argument("--n-ref", type=int,
                    help="fid only: number of reference images (default: the protocol's, "
                    "10000 test images; symvae: the whole training split)")
    ev.add_argument("--steps", type=int, help="fid --mode limiting: Markov chain transitions")
    ev.add_argument("--inception-weights", metavar="PATH",
                    help="fid only: pytorch-fid .pth, TorchScript Inception .pt, 'download', or "
                    "'random' (pipeline tests only; default $SELFSUP_INCEPTION_WEIGHTS)")
    ev.add_argument("--save-images", metavar="DIR", help="fid only: also write the samples")
    ev.add_argument("--json", action="store_true")

    gen = sub.add_parser("generate", help="sample and reconstruct images with a generative run")
    gen.add_argument("--run", required=True)
    gen.add_argument("--n", type=int, default=64,
                     help="number of reconstructions (with --mode: of samples)")
    gen.add_argument("--out", required=True, help="output folder")
    gen.add_argument("--data-dir")
    gen.add_argument("--device", default="cpu")
    gen.add_argument("--mode", choices=["random", "limiting"],
                     help="write N samples as PNG files + grid.png: random codes, or the "
                     "limiting distribution of the encoder-decoder chain (hvae)")
    gen.add_argument("--steps", type=int, help="--mode limiting: chain transitions (default "
                     "model.chain_steps, 1000)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--json", action="store_true")

    fidp = sub.add_parser("fid", help="Frechet Inception Distance between two image folders")
    fidp.add_argument("dir_a")
    fidp.add_argument("dir_b")
    fidp.add_argument("--inception-weights", metavar="PATH",
                      help="pytorch-fid .pth, TorchScript Inception .pt, 'download', or 'random' "
                      "(pipeline tests only); default $SELFSUP_INCEPTION_WEIGHTS, else refused")
    fidp.add_argument("--batch-size", type=int, default=50)
    fidp.add_argument("--device", default="cpu")
    fidp.add_argument("--json", action="store_true")

    rep = sub.add_parser(
        "report",
        help="one page comparing run folders (self-contained HTML, or a Markdown table)",
        description="Summarize run folders: method, dataset, budget, wall time, every saved "
        "evaluation (RUN_DIR/eval/*.json, written by `selfsup eval`) and the figures in "
        "RUN_DIR/images/. HTML embeds the figures and needs no network; Markdown links them.",
        epilog="example:\n  selfsup report runs/vae-mnist runs/vicreg-mnist --out report.html\n"
        "  selfsup report runs/* --format md --out results.md",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rep.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders to compare")
    rep.add_argument("--out", help="output file (default report.html / report.md)")
    rep.add_argument("--format", choices=["html", "md"], help="html (default) or md")
    rep.add_argument("--title", default="selfsup report")
    rep.add_argument("--json", action="store_true")

    cmp_ = sub.add_parser(
        "compare",
        help="train every method of a preset on one dataset, evaluate all, write a report",
        description="Train several methods with one shared budget (epochs, steps, batch size), "
        "evaluate each (linear and kNN probes; GMM clustering for generative methods), and write "
        "OUT/report.html and OUT/report.md. Presets: configs/compare/*.yaml (mnist-all, "
        "digits-all) or a YAML file of your own.",
        epilog="examples:\n  selfsup compare --preset digits-all --out runs/compare-digits\n"
        "  selfsup compare --preset mnist-all --data-dir ../shared/data --out runs/cmp-mnist\n"
        "  selfsup compare --preset mnist-all --methods vae,simvae,vicreg --epochs 5 "
        "--data-dir ../shared/data",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmp_.add_argument("--preset", default="digits-all", help="preset name or YAML file")
    cmp_.add_argument("--dataset", help="override the preset's dataset")
    cmp_.add_argument("--methods", help="comma-separated methods, or `all`")
    cmp_.add_argument("--epochs", type=int, help="shared number of epochs")
    cmp_.add_argument("--max-steps", type=int, help="stop each run after N steps (-1: no limit)")
    cmp_.add_argument("--data-dir", help="folder holding the datasets")
    cmp_.add_argument("--threads", type=int, help="CPU threads per run (trainer.num_threads)")
    cmp_.add_argument("--out", help="output folder (default runs/compare-PRESET-DATASET)")
    cmp_.add_argument("--format", choices=["html", "md", "both"], default="both")
    cmp_.add_argument("--overwrite", action="store_true", help="retrain existing method folders")
    cmp_.add_argument("--reuse", action="store_true", help="keep existing runs, re-evaluate them")
    cmp_.add_argument("--json", action="store_true")

    exp = sub.add_parser(
        "export",
        help="write a run's frozen encoder for use elsewhere (safetensors, TorchScript, ONNX)",
        description="Write the frozen encoder of a run (the representation the probes use) to\n"
        "FILE, and FILE.json describing how to build and feed it (input shape, [0, 1]\n"
        "scaling, normalisation).\n\n"
        "  safetensors  the weights only; for torchvision ResNet backbones the keys load into\n"
        "               torchvision.models.resnet18/34/50 once the layers FILE.json names are\n"
        "               replaced (e.g. the CIFAR stem)\n"
        "  torchscript  the whole computation with the preprocessing (torch.jit.load)\n"
        "  onnx         the same for onnxruntime (needs `pip install onnx onnxruntime`)\n\n"
        "Every export is checked to reproduce the run's features before the command returns.",
        epilog="examples:\n  selfsup export --run runs/vicreg-cifar10 --out vicreg.safetensors\n"
        "  selfsup export --run runs/vae-mnist --out vae.pt --format torchscript\n"
        "  selfsup export --run runs/vae-mnist --out vae.onnx --format onnx",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    exp.add_argument("--run", required=True, help="run folder")
    exp.add_argument("--out", required=True,
                     help="output file (.safetensors, .pt or .onnx); FILE.json goes beside it")
    exp.add_argument("--format", choices=["safetensors", "torchscript", "onnx"],
                     default="safetensors", help="safetensors (default), torchscript or onnx")
    exp.add_argument("--checkpoint", metavar="PATH",
                     help="a checkpoint of the run other than checkpoints/last.ckpt")
    exp.add_argument("--json", action="store_true", help="print one JSON object")

    data = sub.add_parser(
        "data", help="list datasets, check that one is present and valid, or prepare MPI3D"
    )
    data.add_argument("action", choices=["list", "check", "prepare"])
    data.add_argument("name", nargs="?")
    data.add_argument("--data-dir", default="data")
    data.add_argument(
        "--variant", choices=["toy", "realistic", "real"],
        help="prepare mpi3d: which file to convert (default toy)",
    )
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
        if args.command == "fid":
            return cmd_fid(args)
        if args.command == "data":
            return cmd_data(args)
        if args.command == "report":
            return cmd_report(args)
        if args.command == "compare":
            return cmd_compare(args)
        if args.command == "export":
            return cmd_export(args)
        return cmd_demo(args)
    except SelfsupError as exc:
        print(f"selfsup: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("selfsup: interrupted.", file=sys.stderr)
        return 130
