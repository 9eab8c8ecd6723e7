"""Command line: argument parsing only.

Each subcommand is a table of options and a handler that passes the parsed values to one library
call (:mod:`selfsup.pipelines`, :mod:`selfsup.demo`, :mod:`selfsup.generate`,
:mod:`selfsup.compare`, :mod:`selfsup.report`, ...), imported only then: nothing heavy (torch,
Lightning) is imported before the arguments are parsed, so a mistyped flag is reported at once.
Method and dataset names, and every config key, come from the registries through
:mod:`selfsup.catalog`.

Adding an option is one line in its command's table (``TRAIN_OPTIONS``, ``EVAL_PROBES[probe]``,
``GENERATE_OPTIONS``, ...): a train option whose ``dest`` is a config key (``trainer.epochs``) is
applied to the run's config; an eval option reaches the probe's library function as the keyword
argument ``dest``. Adding a subcommand is one entry in ``COMMANDS``.

Errors the user can fix (:class:`~selfsup.errors.SelfsupError`, unknown or invalid flags) print
one paragraph and exit with code 2; no traceback.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

from selfsup.errors import ConfigError, SelfsupError

EPILOG = """examples:
  selfsup demo
  selfsup train vae --dataset mnist --data-dir ../shared/data --epochs 10 --out runs/vae-mnist
  selfsup train vicreg --dataset cifar10 --data-dir data --preset vicreg/cifar10-solo
  selfsup train --resume runs/vae-mnist --epochs 20
  selfsup eval linear --run runs/vae-mnist --json
  selfsup eval linear --run runs/vicreg-cifar10 --protocol sgd-augmented
  selfsup eval knn --run runs/vae-mnist
  selfsup eval factors --run runs/byol-dsprites --max-samples 20000
  selfsup eval fid --run runs/hvae-mnist --mode limiting --n 1000 --inception-weights PATH
  selfsup eval fid --run runs/hvae-mnist --protocol symvae --inception-weights PATH
  selfsup generate --run runs/vae-mnist --n 64 --out samples/
  selfsup export --run runs/vae-mnist --out vae.pt --format torchscript
  selfsup fid gen/samples ref/ --inception-weights inception.pt --json
  selfsup report runs/vae-mnist runs/vicreg-mnist --out report.html
  selfsup compare --preset mnist-all --data-dir ../shared/data --out runs/compare-mnist
  selfsup data list
  selfsup data check mnist --data-dir ../shared/data
  selfsup data prepare mpi3d --variant toy --data-dir data

`selfsup COMMAND --help` describes a command; `selfsup train METHOD --help` lists a method's
options."""

Option = tuple[tuple[str, ...], dict[str, Any]]
Builder = Callable[[Any, str, "str | None"], None]  # adds a subcommand's parser


def opt(*flags: str, **kwargs: Any) -> Option:
    """One ``add_argument`` call, as a table row."""
    return flags, kwargs


# ------------------------------------------------------------------------------ value types
def positive_int(text: str) -> int:
    """An integer >= 1 (0 never silently means "the default")."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (1 or more), got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def step_limit(text: str) -> int:
    """``--max-steps``: a positive number of steps, or -1 for no limit."""
    value = int(text) if text.lstrip("-").isdigit() else None
    if value is None or (value < 1 and value != -1):
        raise argparse.ArgumentTypeError(f"must be a positive integer or -1 (no limit), got {text}")
    return value


class Lazy:
    """Choices looked up only when argparse needs them (checking a value, printing help), so
    building the parser imports nothing."""

    def __init__(self, names: Callable[[], list[str]]) -> None:
        self._names = names

    def __contains__(self, value: object) -> bool:
        return value in self._names()

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())


def _method_names() -> list[str]:
    from selfsup import catalog

    return catalog.method_names()


def _dataset_names() -> list[str]:
    from selfsup import catalog

    return catalog.dataset_names()


METHODS, DATASETS = Lazy(_method_names), Lazy(_dataset_names)


# ---------------------------------------------------------------------------------- tables
# `selfsup train`: a dest with a dot is the config key the value sets.
TRAIN_OPTIONS: list[Option] = [
    opt("--dataset", type=str.lower, choices=DATASETS, metavar="NAME",
        help="dataset to train on (default digits); `selfsup data list` describes them"),
    opt("--data-dir", dest="data.dir", metavar="DIR",
        help="folder holding the datasets (default ./data)"),
    opt("--epochs", dest="trainer.epochs", type=positive_int, metavar="N",
        help="number of training epochs (default: the preset's, else 10)"),
    opt("--max-steps", dest="trainer.max_steps", type=step_limit, metavar="N",
        help="stop after N optimizer steps; every schedule (learning rate, EMA momentum) then "
        "ends at step N"),
    opt("--batch-size", dest="data.batch_size", type=positive_int, metavar="N",
        help="global batch size, split over --devices (default: the preset's, else 128); at "
        "most the size of the training split"),
    opt("--seed", dest="seed", type=int, metavar="N",
        help="seed of the initialization, the data order and every augmentation (default 0)"),
    opt("--devices", dest="trainer.devices", type=positive_int, metavar="N",
        help="number of devices (GPUs, or CPU processes with --strategy ddp; default 1)"),
    opt("--num-nodes", dest="trainer.num_nodes", type=positive_int, metavar="N",
        help="machines taking part, each running --devices processes (default 1; README: Many "
        "machines)"),
    opt("--strategy", dest="trainer.strategy", choices=("auto", "ddp"),
        help="auto (default) or ddp: one process per device"),
    opt("--accelerator", dest="trainer.accelerator", choices=("auto", "cpu", "gpu"),
        help="auto (default: the GPU when there is one), cpu or gpu"),
    opt("--precision", dest="trainer.precision", metavar="P",
        help="32-true (default), bf16-mixed or 16-mixed"),
    opt("--download", dest="data.download", action="store_true", default=None,
        help="download the dataset if it is missing (torchvision's downloaders)"),
    opt("--no-progress", dest="trainer.progress_bar", action="store_false", default=None,
        help="hide the progress bar"),
    opt("--out", metavar="RUN_DIR", help="run folder (default runs/METHOD-DATASET-TIME)"),
    opt("--preset", metavar="NAME",
        help="an installed preset by name, e.g. vicreg/cifar10-solo (or cifar10-solo for the "
        "method trained), applied like --config; see the list below"),
    opt("--config", metavar="FILE", help="a YAML file of config sections of your own"),
    opt("--set", action="append", metavar="KEY=VALUE",
        help="set any config key, e.g. --set optim.lr=1e-3 (repeatable)"),
    opt("--no-preset", action="store_true",
        help="do not apply configs/METHOD/DATASET.yaml (the recipe applied by default)"),
    opt("--resume", metavar="RUN_DIR",
        help="continue a run from its last checkpoint; --epochs or --max-steps extend it, other "
        "options are applied or refused by name"),
    opt("--json", action="store_true", help="print one JSON summary (no progress bar)"),
]

LINEAR_PROTOCOLS = ("lbfgs", "sgd", "adam", "sgd-augmented", "released")
RELEASED_PROTOCOL_HELP = (
    "released: SimVAE's released protocol (Adam 3e-4, 200 epochs, batch 64), which reports the "
    "BEST TEST accuracy over epochs, i.e. model selection on the test split (see the README's "
    "Fidelity section)"
)
# `selfsup eval PROBE`: short help, description, then the probe's own options, passed to its
# library function as keyword arguments named by their dest.
EVAL_PROBES: dict[str, tuple[str, str, list[Option]]] = {
    "linear": (
        "linear probe (L-BFGS, or the papers' SGD protocol)",
        "Logistic regression on the frozen representation of the train split (L-BFGS, weight "
        "decay chosen on a validation split carved from train), scored once on the test split; "
        "or the papers' protocol: a linear layer trained by SGD (Nesterov) or Adam with a cosine "
        "schedule for exactly --epochs epochs; or sgd-augmented: augustwester/vicreg's eval.py "
        "(plain SGD lr 0.02, weight decay 1e-6, 50 epochs, cosine per epoch, on randomly cropped "
        "and flipped training images through the frozen encoder).",
        [
            opt("--protocol", choices=LINEAR_PROTOCOLS, default="lbfgs",
                help="lbfgs (default); sgd / adam: the fixed-epoch protocol; sgd-augmented: "
                "augustwester/vicreg's eval.py; " + RELEASED_PROTOCOL_HELP),
            opt("--test-unnormalized", dest="normalize_test", action="store_false", default=None,
                help="sgd-augmented only: score un-normalised test images, as the original "
                "eval.py does (a bug there)"),
            opt("--epochs", type=positive_int, metavar="N",
                help="sgd/adam/released protocol: number of epochs (e.g. 50)"),
            opt("--lr", dest="base_lr", type=positive_float, metavar="LR",
                help="sgd/adam protocol: base learning rate, scaled by batch / 256 (released: "
                "the Adam learning rate)"),
            opt("--batch-size", type=positive_int, metavar="N",
                help="sgd/adam/released protocol: mini-batch size"),
        ],
    ),
    "mlp": (
        "MLP probe",
        "A one-hidden-layer MLP classifier on the frozen representation, trained on the train "
        "split (early stopping on a validation split), scored once on the test split.",
        [
            opt("--protocol", choices=("released",),
                help="the default selects the epoch on a validation split; " +
                RELEASED_PROTOCOL_HELP),
            opt("--epochs", type=positive_int, metavar="N",
                help="maximum training epochs (the best is chosen on the validation split)"),
            opt("--lr", type=positive_float, metavar="LR", help="Adam learning rate"),
            opt("--batch-size", type=positive_int, metavar="N", help="mini-batch size"),
        ],
    ),
    "knn": (
        "k-nearest-neighbour classification",
        "Weighted cosine k-nearest-neighbour classification (k = 20 and 200, temperature 0.1) of "
        "the test split among the train split's representations.",
        [],
    ),
    "gmm": (
        "GMM clustering: accuracy, NMI, ARI",
        "Gaussian-mixture clustering of the test split's representations: Hungarian-matched "
        "cluster accuracy, NMI and ARI.",
        [],
    ),
    "factors": (
        "factor probes, in and out of distribution (dSprites, MPI3D)",
        "Ridge probes of every ground-truth factor from the representation (and the discrete "
        "code), in and out of distribution (dSprites, MPI3D); written to the run folder.",
        [
            opt("--protocol", choices=("released", "tuned"), default="released",
                help="released (default): ridge alpha 1 without intercept, as the "
                "soft-discretization code; tuned: intercept, alpha chosen on the "
                "in-distribution heldout split"),
            opt("--max-samples", type=positive_int, metavar="N",
                help="at most N samples per split (a seeded subset; default: every sample)"),
        ],
    ),
    "fid": (
        "FID of a generative run's samples against its dataset",
        "Frechet Inception Distance between a generative run's samples and real images of its "
        "dataset (reference statistics cached), under a protocol: selfsup (default: 10k samples "
        "showing E[x|z] against 10k test images) or symvae (the hierarchical VAE's released "
        "protocol: every training image as reference, as many samples, binary modes of p(x|z), "
        "chains of 1000 transitions started from model samples). Written to RUN_DIR/eval/.",
        [
            opt("--protocol", choices=("selfsup", "symvae"), default="selfsup",
                help="selfsup (default) or symvae (see above)"),
            opt("--mode", choices=("random", "limiting"), default="random",
                help="samples from random codes (default) or from the limiting distribution of "
                "the encoder-decoder Markov chain (hvae)"),
            opt("--n", type=positive_int, metavar="N",
                help="number of samples (default: the protocol's: 10000; symvae: as many as "
                "reference images)"),
            opt("--n-ref", type=positive_int, metavar="N",
                help="number of reference images (default: the protocol's: 10000 test images; "
                "symvae: the whole training split)"),
            opt("--steps", type=positive_int, metavar="N",
                help="--mode limiting: Markov chain transitions (default: the protocol's)"),
            opt("--inception-weights", dest="weights", metavar="PATH",
                help="pytorch-fid .pth, TorchScript Inception .pt, 'download', or 'random' "
                "(pipeline tests only); default $SELFSUP_INCEPTION_WEIGHTS, else refused"),
            opt("--save-images", dest="images_out", metavar="DIR",
                help="also write the samples as PNG files into DIR"),
        ],
    ),
}
EVAL_COMMON: list[Option] = [
    opt("--run", required=True, metavar="RUN_DIR", help="the run folder to evaluate"),
    opt("--data-dir", metavar="DIR", help="dataset folder (default: the one used for training)"),
    opt("--device", default="cpu", help="cpu (default), cuda, cuda:1, ..."),
    opt("--seed", type=int, default=0, help="seed of the probe (default 0)"),
    opt("--json", action="store_true", help="print one JSON object"),
]

GENERATE_OPTIONS: list[Option] = [
    opt("--run", required=True, metavar="RUN_DIR", help="a generative run folder"),
    opt("--out", required=True, metavar="DIR", help="output folder"),
    opt("--n", type=positive_int, default=64, metavar="N",
        help="number of reconstructions and samples (with --mode: of sample files; default 64)"),
    opt("--mode", choices=("random", "limiting"),
        help="write N samples as PNG files + grid.png: random codes, or the limiting "
        "distribution of the encoder-decoder chain (hvae)"),
    opt("--steps", type=positive_int, metavar="N",
        help="--mode limiting: chain transitions (default model.chain_steps)"),
    opt("--data-dir", metavar="DIR", help="dataset folder (default: the one used for training)"),
    opt("--device", default="cpu", help="cpu (default), cuda, ..."),
    opt("--seed", type=int, default=0, help="seed of the samples (default 0)"),
    opt("--json", action="store_true", help="print one JSON object"),
]

FID_OPTIONS: list[Option] = [
    opt("dir_a", metavar="DIR_A", help="first folder of images"),
    opt("dir_b", metavar="DIR_B", help="second folder of images"),
    opt("--inception-weights", metavar="PATH",
        help="pytorch-fid .pth, TorchScript Inception .pt, 'download', or 'random' (pipeline "
        "tests only); default $SELFSUP_INCEPTION_WEIGHTS, else refused"),
    opt("--batch-size", type=positive_int, default=50, metavar="N",
        help="images per forward pass (default 50)"),
    opt("--device", default="cpu", help="cpu (default), cuda, ..."),
    opt("--json", action="store_true", help="print one JSON object"),
]

REPORT_OPTIONS: list[Option] = [
    opt("runs", nargs="+", metavar="RUN_DIR", help="run folders to compare"),
    opt("--out", metavar="FILE", help="output file (default report.html / report.md)"),
    opt("--format", choices=("html", "md"), help="html (default) or md"),
    opt("--title", default="selfsup report", help="page title"),
    opt("--json", action="store_true", help="print one JSON object"),
]

COMPARE_OPTIONS: list[Option] = [
    opt("--preset", default="digits-all", metavar="NAME",
        help="comparison preset name (configs/compare/*.yaml: digits-all, mnist-all) or a YAML "
        "file (default digits-all)"),
    opt("--dataset", type=str.lower, choices=DATASETS, metavar="NAME",
        help="override the preset's dataset"),
    opt("--methods", metavar="LIST", help="comma-separated methods, or `all`"),
    opt("--epochs", type=positive_int, metavar="N", help="shared number of epochs"),
    opt("--max-steps", type=step_limit, metavar="N",
        help="stop each run after N steps (-1: no limit)"),
    opt("--batch-size", type=positive_int, metavar="N",
        help="shared batch size (default: the preset's); at most the training split"),
    opt("--data-dir", metavar="DIR", help="folder holding the datasets"),
    opt("--threads", type=positive_int, metavar="N",
        help="CPU threads per run (trainer.num_threads)"),
    opt("--out", metavar="DIR", help="output folder (default runs/compare-PRESET-DATASET)"),
    opt("--format", choices=("html", "md", "both"), default="both",
        help="report format(s) (default both)"),
    opt("--overwrite", action="store_true", help="retrain existing method folders"),
    opt("--reuse", action="store_true", help="keep existing runs, re-evaluate them"),
    opt("--json", action="store_true", help="print one JSON object"),
]

EXPORT_OPTIONS: list[Option] = [
    opt("--run", required=True, metavar="RUN_DIR", help="run folder"),
    opt("--out", required=True, metavar="FILE",
        help="output file (.safetensors, .pt or .onnx); FILE.json goes beside it"),
    opt("--format", choices=("safetensors", "torchscript", "onnx"), default="safetensors",
        help="safetensors (default), torchscript or onnx"),
    opt("--checkpoint", metavar="PATH",
        help="a checkpoint of the run other than checkpoints/last.ckpt"),
    opt("--json", action="store_true", help="print one JSON object"),
]

DEMO_OPTIONS: list[Option] = [
    opt("--out", default="runs/demo", metavar="DIR",
        help="run folder (default runs/demo; an earlier demo there is replaced)"),
    opt("--epochs", type=positive_int, default=30, metavar="N",
        help="training epochs (default 30)"),
    opt("--json", action="store_true", help="print one JSON object"),
]

DATA_ACTIONS: dict[str, tuple[str, str, list[Option]]] = {
    "list": ("list the datasets", "The datasets selfsup knows: name, image shape, description "
             "and the folder their files are expected in.",
             [opt("--json", action="store_true", help="print one JSON object")]),
    "check": ("check that a dataset's files are present and valid",
              "Check that a dataset's files are where --data-dir points and can be read; exit "
              "code 1 if the dataset is not usable.",
              [opt("name", type=str.lower, choices=DATASETS, metavar="NAME",
                   help="dataset name (`selfsup data list`)"),
               opt("--data-dir", default="data", metavar="DIR",
                   help="folder holding the datasets (default ./data)"),
               opt("--json", action="store_true", help="print one JSON object")]),
    "prepare": ("convert MPI3D's .npz once into a memory-mappable .npy",
                "Convert a downloaded MPI3D file (mpi3d/mpi3d_VARIANT.npz, 12.7 GB) once into "
                "mpi3d/mpi3d_VARIANT_images.npy, which training memory-maps. Other datasets "
                "are read directly and need no preparing.",
                [opt("name", metavar="NAME", help="mpi3d (or mpi3d-toy, mpi3d-realistic, ...)"),
                 opt("--variant", choices=("toy", "realistic", "real"),
                     help="which MPI3D file to convert (default toy)"),
                 opt("--data-dir", default="data", metavar="DIR",
                     help="folder holding mpi3d/ (default ./data)"),
                 opt("--json", action="store_true", help="print one JSON object")]),
}


# --------------------------------------------------------------------------------- output
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
    """With --json stdout holds one JSON object: library warnings are not shown."""
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    import warnings

    warnings.filterwarnings("ignore")


# ------------------------------------------------------------------------------- handlers
def _parse_free_flags(extra: list[str]) -> dict[str, Any]:
    """``--encode-method softmax --hard`` -> {"encode_method": "softmax", "hard": True}."""
    import yaml

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


def _check_free_flags(method: str, flags: dict[str, Any]) -> None:
    """Reject a flag no config section defines, suggesting the nearest ones (no torch needed)."""
    from selfsup import catalog

    known = catalog.option_names(method)
    for name in flags:
        if name not in known:
            flag = "--" + name.replace("_", "-")
            close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.6)
            hint = f" Did you mean {', '.join('--' + c.replace('_', '-') for c in close)}?" \
                if close else ""
            raise ConfigError(
                f"Unknown option {flag}: no config section has a key {name!r}.{hint} Run "
                f"`selfsup train {method} --help` for the options, or use --set SECTION.KEY=VALUE."
            )


def cmd_train(args: argparse.Namespace, extra: list[str]) -> int:
    given = {dest: value for dest, value in vars(args).items()
             if ("." in dest or dest == "seed") and value is not None}
    if args.resume:
        _, result = _resume(args, extra, given)
    else:
        if not args.method:
            raise ConfigError("Name a method to train, e.g. `selfsup train vae --dataset mnist`.")
        if args.method not in METHODS:
            raise ConfigError(f"Unknown method {args.method!r}. Available methods: "
                              f"{', '.join(METHODS)} (`selfsup train --help` describes them).")
        if args.preset and args.config:
            raise ConfigError("Pass either --preset (an installed preset) or --config (a file).")
        flags = _parse_free_flags(extra)
        _check_free_flags(args.method, flags)
        config_file = args.config
        if args.preset:
            from selfsup.catalog import preset_file

            config_file = str(preset_file(args.preset, args.method))
        if args.json:
            given["trainer.progress_bar"] = False
        sections: dict[str, dict[str, Any]] = {}
        for dest, value in given.items():
            if dest != "seed":
                section, key = dest.split(".", 1)
                sections.setdefault(section, {})[key] = value
        seed = given.get("seed", flags.pop("seed", None))
        from selfsup import pipelines

        config = pipelines.build_config(
            args.method,
            args.dataset,
            config_file=config_file,
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
    from selfsup import pipelines

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


def _resume(args: argparse.Namespace, extra: list[str], given: dict[str, Any]) -> Any:
    """`selfsup train --resume RUN [options]`: each config option given is applied (and recorded
    in the run's config history) or refused by :func:`selfsup.pipelines.resume`, naming it; what
    would make it another run (method, dataset, folder, config files) is refused here."""
    from selfsup import pipelines

    flag = {_dest(option): option[0][0] for option in TRAIN_OPTIONS}
    fixed = [flag[d] for d in ("dataset", "out", "preset", "config", "no_preset")
             if getattr(args, d)]
    fixed += extra or ([f"the method {args.method!r}"] if args.method else [])  # a flag's value
    # lands in METHOD when the flag is not one of train's: then the flag is what is named
    if fixed:
        raise ConfigError(
            f"--resume continues the run in its own folder with its saved method, dataset and "
            f"configuration, so {', '.join(fixed)} cannot be given with it. Options a resume "
            "accepts: --epochs, --max-steps, --data-dir, --download, --accelerator, --devices, "
            "--num-nodes, --strategy, --no-progress, --json and --set KEY=VALUE for "
            f"{', '.join(sorted(pipelines.RESUME_KEYS))}."
        )
    sets, given_as = [], {}
    for key, value in given.items():
        if key != "trainer.progress_bar":  # display only: this session's
            sets.append(f"{key}={json.dumps(value) if isinstance(value, str) else value}")
            given_as[key] = flag[key] if value is True else f"{flag[key]} {value}"
    for item in args.set or []:
        sets.append(item)
        given_as.setdefault(item.split("=", 1)[0].strip(), f"--set {item}")
    progress = False if (given.get("trainer.progress_bar") is False or args.json) else None
    return pipelines.resume(args.resume, sets=sets, given_as=given_as, progress_bar=progress)


def _probe_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options of ``args.probe``'s own table that were given (or have a default)."""
    dests = [_dest(option) for option in EVAL_PROBES[args.probe][2]]
    return {d: getattr(args, d) for d in dests if getattr(args, d) is not None}


def _dest(option: Option) -> str:
    flags, kwargs = option
    return kwargs.get("dest") or flags[0].lstrip("-").replace("-", "_")


def cmd_eval(args: argparse.Namespace) -> int:
    options = _probe_options(args)
    if "normalize_test" in options and options.get("protocol") != "sgd-augmented":
        raise ConfigError("--test-unnormalized applies to `eval linear --protocol sgd-augmented`.")
    if args.probe == "linear" and options.get("protocol") == "lbfgs":
        fixed = [f for f, d in (("--epochs", "epochs"), ("--lr", "base_lr"),
                                ("--batch-size", "batch_size")) if d in options]
        if fixed:
            raise ConfigError(
                f"{', '.join(fixed)} belong(s) to the fixed-epoch protocol: add --protocol sgd "
                "(or adam), e.g. `selfsup eval linear --run RUN --protocol sgd --epochs 50`."
            )
    if args.probe == "linear" and options.get("protocol") == "released" and "base_lr" in options:
        options["lr"] = options.pop("base_lr")  # the released protocol's Adam rate, not scaled
    from selfsup import pipelines
    from selfsup.rundir import RunFolder

    RunFolder(args.run).check_eval_writable()  # before computing: a result is never lost
    method = pipelines.load_run(args.run, device=args.device)
    if args.probe == "factors":
        from selfsup.evaluate.factors import evaluate_factors, format_table, save_result

        result = evaluate_factors(method, args.data_dir, device=args.device, seed=args.seed,
                                  max_samples=options.pop("max_samples", 0), **options)
        result["run"] = str(args.run)
        result["json_file"] = str(save_result(result, args.run))
        print(json.dumps(result, default=str) if args.json
              else f"{format_table(result)}\n(written to {result['json_file']})")
        return 0
    if args.probe == "fid":
        from selfsup.evaluate.fid import fid_eval_name, fid_of_run
        from selfsup.report import save_evaluation

        result = fid_of_run(method, data_dir=args.data_dir, seed=args.seed, device=args.device,
                            progress=True, **options)
        name = fid_eval_name(options["mode"], options["protocol"])
        result["json_file"] = str(save_evaluation(args.run, name, result))
        _emit(result, args.json, f"FID of {args.run} ({options['mode']} samples, protocol "
              f"{options['protocol']}):")
        return 0
    result = pipelines.evaluate(method, args.probe, args.data_dir, device=args.device,
                                seed=args.seed, probe_options=options)
    from selfsup.report import eval_name, save_evaluation

    save_evaluation(args.run, eval_name(args.probe, options), result)  # read by `selfsup report`
    _emit(result, args.json, f"{args.probe} evaluation of {args.run} (test split):")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from selfsup.generate import generate

    written = generate(args.run, args.out, n=args.n, mode=args.mode, steps=args.steps,
                       seed=args.seed, device=args.device, data_dir=args.data_dir,
                       progress=True)
    _emit(written, args.json, "Wrote:")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from selfsup import pipelines
    from selfsup.export import export_encoder

    method = pipelines.load_run(args.run, checkpoint=args.checkpoint)
    spec = export_encoder(method, args.out, args.format, run_dir=args.run)
    summary = {"file": str(args.out), "description": spec["json"], "format": args.format,
               "layout": spec.get("layout", args.format), "feature_dim": spec["output"]["shape"][1],
               "input": "x".join(str(v) for v in spec["input"]["shape"][1:])}
    _emit(summary, args.json, "Wrote:")
    return 0


def cmd_fid(args: argparse.Namespace) -> int:
    from selfsup.evaluate.fid import fid_between_folders

    result = fid_between_folders(args.dir_a, args.dir_b, args.inception_weights,
                                 args.batch_size, args.device, progress=True)
    _emit(result, args.json, f"FID between {args.dir_a} and {args.dir_b}:")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from selfsup.report import write_report

    fmt = args.format or ("md" if str(args.out or "").endswith(".md") else "html")
    out = Path(args.out or f"report.{fmt}")
    path = write_report(args.runs, out, fmt, title=args.title)
    _emit({"report": str(path), "runs": len(args.runs), "format": fmt}, args.json, "Wrote:")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    if args.overwrite and args.reuse:
        raise ConfigError("Pass either --overwrite or --reuse, not both.")
    from selfsup.compare import compare

    summary = compare(
        args.preset,
        args.out,
        dataset=args.dataset,
        methods=args.methods,
        epochs=args.epochs,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
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


def cmd_data(args: argparse.Namespace) -> int:
    if args.action == "list":
        from selfsup.data import list_datasets

        rows = list_datasets()
        if args.json:
            print(json.dumps({"datasets": rows}, default=str))
            return 0
        for row in rows:
            shape = "x".join(str(s) for s in row.get("image_shape") or []) or "any"
            print(f"{row['name']:<14} {shape:<10} {row.get('description', '')}")
            print(f"{'':<14} files in: {row.get('folder', '')}")
        return 0
    if args.action == "prepare":
        from selfsup.data import mpi3d

        name, variant = args.name.lower(), args.variant
        if name.startswith("mpi3d-"):
            name, variant = "mpi3d", variant or name[len("mpi3d-"):]
        if name != "mpi3d":
            raise ConfigError(
                "Only MPI3D needs preparing: `selfsup data prepare mpi3d --variant toy "
                "--data-dir DIR` (other datasets are read directly)."
            )
        report = mpi3d.prepare(args.data_dir, variant or "toy")
        if args.json:
            print(json.dumps(report, default=str))
        else:
            done = "already prepared" if report["skipped"] else "converted"
            print(f"mpi3d-{variant or 'toy'}: {done}: {report['output']} ({report['images']} "
                  f"images, {report['bytes'] / 2**30:.2f} GiB, memory-mapped when training)")
        return 0
    from selfsup.data import check_dataset

    report = check_dataset(args.name, args.data_dir)
    if args.json:
        print(json.dumps(report, default=str))
    else:
        print(f"{args.name} in {report['folder']}: {'valid' if report['valid'] else 'NOT usable'}")
        for f in report["files"]:
            print(f"  {'ok ' if f['present'] else '-- '}{f['path']}")
        print(f"  {report['message']}")
    return 0 if report["valid"] else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from selfsup.demo import run_demo

    summary = run_demo(args.out, args.epochs, progress_bar=not args.json)
    _emit(summary, args.json, "Demo: VAE on scikit-learn digits (no download).")
    return 0


# ----------------------------------------------------------------------------------- parser
class Parser(argparse.ArgumentParser):
    """argparse with one-paragraph errors (``selfsup: error: ...``, exit 2), no abbreviated
    flags, and help text built only when it is shown."""

    def __init__(self, *args: Any, lazy_epilog: Callable[[], str] | None = None,
                 **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        if kwargs.get("description"):  # wrapped here: the raw formatter keeps the epilogs' lines
            kwargs["description"] = textwrap.fill(kwargs["description"], width=92)
        super().__init__(*args, **kwargs)
        self.lazy_epilog = lazy_epilog

    def format_help(self) -> str:
        if self.lazy_epilog is not None:
            self.epilog = self.lazy_epilog()
        return super().format_help()

    def error(self, message: str) -> NoReturn:
        hint = ""
        if message.startswith("unrecognized arguments:"):
            hint = _suggest(self, message.split(":", 1)[1].split())
        sys.stderr.write(f"selfsup: error: {self.prog}: {message}.{hint} Run `{self.prog} "
                         "--help` for the options.\n")
        sys.exit(2)


def _suggest(parser: argparse.ArgumentParser, unknown: list[str]) -> str:
    flags = [s for a in parser._actions for s in a.option_strings]
    for token in unknown:
        if token.startswith("-"):
            close = difflib.get_close_matches(token.split("=")[0], flags, n=2, cutoff=0.8)
            if close:
                return f" Did you mean {' or '.join(close)}?"
    return ""


def _add(parser: argparse.ArgumentParser, options: list[Option]) -> None:
    """Add the table's options to a (leaf) parser, which then reports the unknown flags."""
    for flags, kwargs in options:
        parser.add_argument(*flags, **kwargs)
    parser.set_defaults(_parser=parser)


def _train_epilog(method: str | None) -> Callable[[], str]:
    def epilog() -> str:
        from selfsup import catalog

        info = catalog.catalog()
        if method:
            if method not in info["methods"]:
                return ""
            lines = [f"options of {method} (flags --name value, or --set model.name=value):"]
            for name, default in info["methods"][method]["options"]:
                lines.append(f"  --{name.replace('_', '-'):<24} default: {default}")
            lines.append("Any other config key is a flag too (--gradient-clip 1 sets "
                         "trainer.gradient_clip);\nsee the README's Configuration section.")
            return "\n".join(lines)
        lines = ["methods (`selfsup train METHOD --help` lists a method's options):"]
        for name, row in info["methods"].items():
            lines.append(f"  {name:<12} {row['summary']}")
        lines.append("\ndatasets (`selfsup data list` says where their files go):")
        for name, description in info["datasets"].items():
            lines.append(f"  {name:<20} {description}")
        lines.append(f"\npresets (--preset METHOD/NAME; installed in {catalog.PRESET_DIR}):")
        by_method: dict[str, list[str]] = {}
        for preset in catalog.preset_names():
            owner, name = preset.split("/", 1)
            by_method.setdefault(owner, []).append(name)
        for owner, names in by_method.items():
            lines.append(f"  {owner:<12} {', '.join(names)}")
        lines.append("  configs/METHOD/DATASET.yaml is applied by default (--no-preset: not).")
        lines.append("\nexamples:\n  selfsup train vae --dataset digits --epochs 5 --out runs/vae"
                     "\n  selfsup train vicreg --dataset cifar10 --preset vicreg/cifar10-solo"
                     "\n  selfsup train --resume runs/vae --epochs 10")
        return "\n".join(lines)

    return epilog


def _add_train(sub: Any, name: str, method_for_help: str | None) -> None:
    p = sub.add_parser(name, help="train a method (or --resume a run)",
                       description="Train a method on a dataset into a run folder, or continue "
                       "a run with --resume. The config is resolved from the method's defaults, "
                       "the preset for the dataset, --preset/--config, these flags and --set; "
                       "any config key is also a flag (--latent-dim 8 sets model.latent_dim).",
                       lazy_epilog=_train_epilog(method_for_help))
    # no argparse choices: after --resume a value of a stray flag lands here (refused by name)
    p.add_argument("method", nargs="?", metavar="METHOD",
                   help="the method to train (listed below)")
    _add(p, TRAIN_OPTIONS)


def _add_eval(sub: Any, name: str, method_for_help: str | None) -> None:
    ev = sub.add_parser(name, help="evaluate a run's frozen representation on the test split",
                        description="Evaluate a run's frozen representation; each probe is a "
                        "subcommand with its own options (`selfsup eval PROBE --help`). Results "
                        "are saved in RUN_DIR/eval/ and read by `selfsup report`.",
                        epilog="examples:\n  selfsup eval linear --run runs/vae --json\n"
                        "  selfsup eval linear --run runs/vicreg --protocol sgd --epochs 50\n"
                        "  selfsup eval mlp --run runs/vae\n  selfsup eval knn --run runs/vae\n"
                        "  selfsup eval gmm --run runs/simvae\n"
                        "  selfsup eval factors --run runs/byol-dsprites --max-samples 5000\n"
                        "  selfsup eval fid --run runs/hvae --n 1000 --inception-weights PATH")
    probes = ev.add_subparsers(dest="probe", required=True, metavar="PROBE",
                               parser_class=Parser, help="the evaluation to run")
    for probe, (short, description, options) in EVAL_PROBES.items():
        _add(probes.add_parser(probe, help=short, description=description),
             EVAL_COMMON + options)


def _add_data(sub: Any, name: str, method_for_help: str | None) -> None:
    data = sub.add_parser(name, help="list datasets, check one, or prepare MPI3D",
                          description="List the datasets, check that one is present and "
                          "valid, or prepare MPI3D (`selfsup data ACTION --help`).",
                          epilog="examples:\n  selfsup data list\n  selfsup data check mnist "
                          "--data-dir ../shared/data\n  selfsup data prepare mpi3d --variant toy "
                          "--data-dir data")
    actions = data.add_subparsers(dest="action", required=True, metavar="ACTION",
                                  parser_class=Parser, help="what to do")
    for action, (short, description, options) in DATA_ACTIONS.items():
        _add(actions.add_parser(action, help=short, description=description), options)


def _simple(help: str, description: str, epilog: str,
            options: list[Option]) -> Builder:
    """The builder of a subcommand that is one table of options."""
    def add(sub: Any, name: str, method_for_help: str | None) -> None:
        _add(sub.add_parser(name, help=help, description=description, epilog=epilog), options)

    return add


# name -> (adds the subparser, handles the parsed arguments); the order is the help's order
COMMANDS: dict[str, tuple[Builder, Callable[..., int]]] = {
    "demo": (_simple(
        "train a small VAE on the embedded digits and probe it",
        "Train a small VAE on scikit-learn's 8x8 digits (embedded, no download) for --epochs "
        "epochs, fit a linear probe on its latent means, print the test accuracy and write "
        "figures into OUT/images/.",
        "example:\n  selfsup demo --epochs 10 --out runs/demo", DEMO_OPTIONS), cmd_demo),
    "train": (_add_train, cmd_train),
    "eval": (_add_eval, cmd_eval),
    "generate": (_simple(
        "write reconstructions and samples of a generative run",
        "Write reconstructions of test images and samples of a generative run as grids into "
        "--out; with --mode, N samples as PNG files (OUT/samples/) and OUT/grid.png, e.g. for "
        "`selfsup fid`. The run, the count and the folder are checked before anything is "
        "written.",
        "examples:\n  selfsup generate --run runs/vae --n 64 --out gen\n  selfsup generate "
        "--run runs/hvae --mode limiting --steps 1000 --n 1000 --out gen-chain",
        GENERATE_OPTIONS), cmd_generate),
    "fid": (_simple(
        "Frechet Inception Distance between two image folders",
        "Frechet Inception Distance between two folders of images (PNG/JPEG), with "
        "pytorch-fid's InceptionV3 features.",
        "example:\n  selfsup fid gen/samples ref/ --inception-weights "
        "pt_inception-2015-12-05.pth --json", FID_OPTIONS), cmd_fid),
    "report": (_simple(
        "one page comparing run folders (HTML or Markdown)",
        "Summarize run folders: method, dataset, budget, wall time, every saved evaluation "
        "(RUN_DIR/eval/*.json, written by `selfsup eval`) and the figures in RUN_DIR/images/. "
        "HTML embeds the figures and needs no network; Markdown links them. The best value of "
        "a metric is marked among the runs on the same dataset only.",
        "examples:\n  selfsup report runs/vae-mnist runs/vicreg-mnist --out report.html\n"
        "  selfsup report runs/* --format md --out results.md", REPORT_OPTIONS), cmd_report),
    "compare": (_simple(
        "train and evaluate every method of a preset, one report",
        "Train several methods with one shared budget (epochs, steps, batch size), evaluate "
        "each (linear and kNN probes; GMM clustering for generative methods), and write "
        "OUT/report.html and OUT/report.md.",
        "examples:\n  selfsup compare --preset digits-all --out runs/compare-digits\n  selfsup "
        "compare --preset mnist-all --methods vae,simvae,vicreg --epochs 5 --data-dir "
        "../shared/data", COMPARE_OPTIONS), cmd_compare),
    "export": (_simple(
        "write a run's frozen encoder for use elsewhere (safetensors, TorchScript, ONNX)",
        "Write the frozen encoder of a run (the representation the probes use) to FILE, and "
        "FILE.json describing how to build and feed it (input shape, [0, 1] scaling, "
        "normalisation). safetensors: the weights only (for torchvision ResNet backbones the keys "
        "load into torchvision.models.resnet18/34/50 once the layers FILE.json names are "
        "replaced); torchscript: the whole computation with the preprocessing (torch.jit.load); "
        "onnx: the same for onnxruntime (needs `pip install onnx onnxruntime`). Every export is "
        "checked to reproduce the run's features before the command returns.",
        "examples:\n  selfsup export --run runs/vicreg-cifar10 --out vicreg.safetensors\n"
        "  selfsup export --run runs/vae-mnist --out vae.pt --format torchscript\n"
        "  selfsup export --run runs/vae-mnist --out vae.onnx --format onnx",
        EXPORT_OPTIONS), cmd_export),
    "data": (_add_data, cmd_data),
}


def build_parser(method_for_help: str | None = None) -> Parser:
    parser = Parser(prog="selfsup", epilog=EPILOG,
                    description="Train, evaluate and compare self-supervised representation "
                    "learners.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=Parser, help="`selfsup COMMAND --help` for more")
    for name, (add, _) in COMMANDS.items():
        add(sub, name, method_for_help)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    method_for_help = None
    if len(argv) >= 3 and argv[0] == "train" and ("--help" in argv or "-h" in argv):
        if not argv[1].startswith("-"):
            method_for_help = argv[1]
    try:
        parser = build_parser(method_for_help)
        try:
            args, extra = parser.parse_known_args(argv)
            if extra and args.command != "train":
                args._parser.error(f"unrecognized arguments: {' '.join(extra)}")
        except SystemExit as exc:  # --help, or a parse error already printed
            return int(exc.code or 0)
        if getattr(args, "json", False):
            _quiet_libraries()
        handler = COMMANDS[args.command][1]
        return handler(args, extra) if args.command == "train" else handler(args)
    except SelfsupError as exc:
        print(f"selfsup: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        if not exc.filename:
            raise
        print(f"selfsup: error: {exc.strerror or exc}: {exc.filename}. Check that the path "
              "exists and that you may read (or write) it.", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("selfsup: interrupted.", file=sys.stderr)
        return 130
