"""Pipelines: resolve a config, train or resume a run, load a finished run, evaluate it.

These are the library's entry points; ``cli.py`` only parses arguments and calls them.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from selfsup.config import RunConfig, config_from_dict, load_yaml, preset_path, resolve_config
from selfsup.data import dataset_spec, load_dataset
from selfsup.data.augment import resolve_normalization
from selfsup.data.base import AnyDataset, DataInfo, ImageDataset
from selfsup.engine import (
    CHECKPOINT_DIR,
    LAST,
    TrainResult,
    check_output_dir,
    data_info,
    fit,
    load_checkpoint_file,
)
from selfsup.errors import ConfigError, RunError
from selfsup.methods import method_class
from selfsup.methods.base import Method

CONFIG_FILE = "config.yaml"


# ----------------------------------------------------------------------------------- configs
def _spec_info(dataset: str, image_size: int) -> DataInfo:
    spec = dataset_spec(dataset)
    shape = spec.image_shape or (3, image_size, image_size)
    return DataInfo(
        name=dataset,
        image_shape=tuple(shape),
        num_classes=spec.num_classes,
        has_labels=spec.num_classes > 0,
    )


def build_config(
    method: str,
    dataset: str | None = None,
    *,
    config_file: str | Path | None = None,
    flags: dict[str, Any] | None = None,
    sets: list[str] | None = None,
    use_preset: bool = True,
) -> RunConfig:
    """Resolve a run config: defaults < method's dataset defaults < preset < file < flags/sets.

    ``flags`` holds section-qualified values (``{"data": {"dir": ...}}``) and free-form method or
    dataset options (``{"encode_method": "softmax"}``) resolved to the section that defines them.
    """
    from selfsup.config import flags_to_overrides, parse_overrides

    cls = method_class(method)
    file_layer = load_yaml(config_file) if config_file else {}
    flags = dict(flags or {})
    sectioned = {k: flags.pop(k) for k in list(flags) if isinstance(flags[k], dict)}
    free = flags_to_overrides(flags, cls.config_class)
    for section, values in free.items():
        sectioned.setdefault(section, {}).update(values)
    set_layer = parse_overrides(sets or [])
    name = (
        dataset
        or set_layer.get("data", {}).get("name")
        or file_layer.get("data", {}).get("name")
        or "digits"
    )
    sectioned.setdefault("data", {})["name"] = name
    image_size = int(
        set_layer.get("data", {}).get("image_size")
        or sectioned["data"].get("image_size")
        or file_layer.get("data", {}).get("image_size")
        or 64
    )
    method_defaults = cls.default_config(_spec_info(name, image_size))
    layers: list[tuple[str, dict[str, Any]]] = [(f"the defaults of {method} for {name}",
                                                  method_defaults)]
    dataset_augment = dataset_spec(name).extra.get("augment")
    if dataset_augment and "augment" in method_defaults:
        # A method that augments by design gets the dataset's own (the paper's) augmentations.
        layers.append((f"the augmentations of dataset {name}", {"augment": dict(dataset_augment)}))
    preset = preset_path(method, name)
    if use_preset and preset.is_file():
        layers.append((f"preset {preset}", load_yaml(preset)))
    if config_file:
        layers.append((f"config file {config_file}", file_layer))
    layers.append(("the command-line options", sectioned))
    if set_layer:
        layers.append(("the --set overrides", set_layer))
    return resolve_config(method, cls.config_class, layers)


# ------------------------------------------------------------------------------------ datasets
def dataset_options(config: RunConfig) -> dict[str, Any]:
    """The data-section values that the dataset itself takes as options (e.g. image_size)."""
    allowed = dataset_spec(config.data.name).extra.get("options") or {}
    return {k: getattr(config.data, k) for k in allowed if hasattr(config.data, k)}


def load_split(config: RunConfig, split: str, data_dir: str | Path | None = None) -> AnyDataset:
    return load_dataset(
        config.data.name,
        data_dir or config.data.dir,
        split,
        options=dataset_options(config),
        download=config.data.download,
    )


def train_split_name(config: RunConfig) -> str:
    return config.data.train_split or dataset_spec(config.data.name).train_split


# ---------------------------------------------------------------------------------------- runs
def is_launched_worker() -> bool:
    """True in the extra processes Lightning's DDP launcher starts (they re-run the command)."""
    return int(os.environ.get("LOCAL_RANK", 0)) > 0 or int(os.environ.get("NODE_RANK", 0)) > 0


def default_run_dir(config: RunConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config.method}-{config.data.name}-{stamp}"


def train(config: RunConfig, run_dir: str | Path | None = None) -> tuple[Method, TrainResult]:
    """Train a new run into ``run_dir`` (which must not already hold a run)."""
    run_dir = Path(run_dir) if run_dir else default_run_dir(config)
    worker = is_launched_worker()
    if (run_dir / CONFIG_FILE).exists() and not worker:
        raise RunError(
            f"{run_dir} already holds a run. Continue it with `selfsup train --resume {run_dir}`, "
            "or choose a new folder with --out."
        )
    check_output_dir(run_dir, needed_bytes=10 * 2**20)  # fail before loading data or training
    torch.manual_seed(config.seed)
    train_set = load_split(config, train_split_name(config))
    test_set = _optional_test_split(config)
    resolve_normalization(config.augment, train_set)  # normalize_stats=train: saved in config
    method = method_class(config.method)(config, data_info(train_set))
    run_dir.mkdir(parents=True, exist_ok=True)
    if not worker:
        config.save(run_dir / CONFIG_FILE)  # after the method resolved its "auto" choices
    result = fit(method, train_set, test_set, run_dir)
    _finish(method, test_set or train_set, run_dir, result)
    return method, result


def resume(run_dir: str | Path, epochs: int | None = None) -> tuple[Method, TrainResult]:
    """Continue a run from ``checkpoints/last.ckpt``; ``epochs`` may extend its budget."""
    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    if epochs is not None:
        config.trainer.epochs = epochs
        config.validate()
        if not is_launched_worker():
            config.save(run_dir / CONFIG_FILE)
    if not (run_dir / CHECKPOINT_DIR / LAST).is_file():
        raise RunError(
            f"{run_dir} has no checkpoint to resume from ({CHECKPOINT_DIR}/{LAST} is missing): "
            "the run stopped before its first checkpoint. Start it again with `selfsup train`."
        )
    train_set = load_split(config, train_split_name(config))
    test_set = _optional_test_split(config)
    method = method_class(config.method)(config, data_info(train_set))
    result = fit(method, train_set, test_set, run_dir, resume=True)
    _finish(method, test_set or train_set, run_dir, result)
    return method, result


def _optional_test_split(config: RunConfig) -> AnyDataset | None:
    spec = dataset_spec(config.data.name)
    if spec.test_split not in spec.splits or spec.num_classes <= 0:
        return None
    return load_split(config, spec.test_split)


def _finish(method: Method, dataset: AnyDataset, run_dir: Path, result: TrainResult) -> None:
    """End-of-run artefacts: the session's wall time and steps (``training.json``, read by
    ``selfsup report``) and image grids for generative models (when the figures callback,
    :class:`selfsup.callbacks.RunPlots`, did not already write them)."""
    if not is_launched_worker():
        from selfsup.report import record_training

        record_training(run_dir, result)
    if (
        (run_dir / "images" / "reconstructions.png").is_file()
        or not method.config.trainer.plots
        or not isinstance(dataset, ImageDataset)
        or (is_launched_worker())
    ):
        return
    from selfsup.plots import save_generative_grids

    if method.generative:
        save_generative_grids(method, dataset, run_dir / "images")


def load_run_config(run_dir: str | Path) -> RunConfig:
    run_dir = Path(run_dir)
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise RunError(
            f"{run_dir} is not a selfsup run folder ({CONFIG_FILE} is missing). Pass the folder "
            "that `selfsup train --out` wrote."
        )
    content = load_yaml(path)
    method = content.get("method")
    if not isinstance(method, str):
        raise RunError(f"{path} has no `method:` entry; it is not a selfsup run config.")
    try:
        return config_from_dict(content, method_class(method).config_class, str(path))
    except ConfigError as exc:
        raise RunError(f"The run config {path} is invalid: {exc}") from None


def load_run(
    run_dir: str | Path, device: str | torch.device = "cpu", checkpoint: str | Path | None = None
) -> Method:
    """The trained method of a run folder, in eval mode on ``device``."""
    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    path = Path(checkpoint) if checkpoint else run_dir / CHECKPOINT_DIR / LAST
    ckpt = load_checkpoint_file(path)
    meta = ckpt.get("selfsup", {})
    if meta.get("method") not in (None, config.method):
        raise RunError(
            f"Checkpoint {path} was written by method {meta.get('method')!r}, but the run folder "
            f"{run_dir} is a {config.method!r} run. Use the checkpoint that belongs to this run."
        )
    info_dict = meta.get("data_info")
    if info_dict:
        info = DataInfo(
            info_dict["name"],
            tuple(info_dict["image_shape"]),
            int(info_dict["num_classes"]),
            bool(info_dict["has_labels"]),
        )
    else:
        spec = dataset_spec(config.data.name)
        info = _spec_info(spec.name, config.data.image_size)
    method = method_class(config.method)(config, info)
    try:
        method.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise RunError(
            f"Checkpoint {path} does not fit the {config.method} model described by "
            f"{run_dir / CONFIG_FILE} ({str(exc).splitlines()[0]}). The checkpoint belongs to "
            "another run or configuration."
        ) from None
    return method.to(device).eval()


# ---------------------------------------------------------------------------------- evaluation
PROBES = ("linear", "mlp", "knn", "gmm")


@dataclass
class Features:
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def labeled_splits(
    config: RunConfig, data_dir: str | Path | None = None
) -> tuple[AnyDataset, AnyDataset]:
    """The (train, test) splits a probe uses; ConfigError for a dataset without labels."""
    spec = dataset_spec(config.data.name)
    if spec.num_classes <= 0:
        raise ConfigError(
            f"Dataset {spec.name} has no labels, so probes cannot be trained on it. Evaluate on a "
            "labeled dataset."
        )
    return (load_split(config, spec.train_split, data_dir),
            load_split(config, spec.test_split, data_dir))


def run_features(
    method: Method,
    data_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 512,
) -> Features:
    """Frozen representations of the train and test splits (labeled samples only)."""
    from selfsup.evaluate import extract_features

    train_set, test_set = labeled_splits(method.config, data_dir)
    was_training = method.training
    method.eval()  # frozen encoder: batch norm uses its running statistics and keeps them
    try:
        train_x, train_y = extract_features(method.represent, train_set, batch_size, device)
        test_x, test_y = extract_features(method.represent, test_set, batch_size, device)
    finally:
        method.train(was_training)
    return Features(train_x, train_y, test_x, test_y)


def evaluate(
    method: Method,
    probe: str,
    data_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    features: Features | None = None,
    probe_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Frozen-encoder probe: fit on train (chosen on a val split of train), scored on test.

    ``probe_options`` are keyword arguments of the probe function (e.g. ``{"epochs": 20}`` for the
    MLP probe, ``{"k": [5, 20]}`` for kNN); for ``linear``, ``{"protocol": "sgd", "epochs": 50}``
    runs the papers' fixed-epoch SGD protocol (:func:`linear_protocol_probe`) instead of L-BFGS.
    """
    from selfsup.evaluate import gmm_clustering, knn_probe, linear_probe, mlp_probe
    from selfsup.evaluate.linear_protocol import AUGMENTED_PROTOCOL, linear_protocol_probe

    if probe not in PROBES:
        raise ConfigError(f"Unknown probe {probe!r}; choose one of {', '.join(PROBES)}.")
    options = dict(probe_options or {})
    if probe == "linear" and options.get("protocol") == AUGMENTED_PROTOCOL:
        return evaluate_augmented_linear(method, data_dir, device, seed, options)
    f = features or run_features(method, data_dir, device)
    started = time.perf_counter()
    data = (f.train_x, f.train_y, f.test_x, f.test_y)
    try:
        if probe == "linear" and options.get("protocol", "lbfgs") != "lbfgs":
            optimizer = options.pop("protocol")
            result = linear_protocol_probe(
                *data, optimizer=optimizer, seed=seed, device=device, **options
            )
        elif probe == "linear":
            options.pop("protocol", None)
            result = linear_probe(*data, seed=seed, device=device, **options)
        elif probe == "mlp":
            result = mlp_probe(*data, seed=seed, device=device, **options)
        elif probe == "knn":
            result = knn_probe(*data, device=device, **options)
        else:
            result = gmm_clustering(f.test_x, f.test_y, seed=seed, **options)
    except TypeError as exc:
        raise ConfigError(
            f"Option not accepted by the {probe} probe ({exc}). See `selfsup eval --help`."
        ) from None
    result = dict(result)
    result.update(
        method=method.config.method,
        dataset=method.config.data.name,
        feature_dim=int(f.train_x.shape[1]),
        seconds=round(time.perf_counter() - started, 3),
    )
    return result


def evaluate_augmented_linear(
    method: Method,
    data_dir: str | Path | None,
    device: str | torch.device,
    seed: int,
    options: dict[str, Any],
) -> dict[str, Any]:
    """Linear protocol ``sgd-augmented`` (:func:`augmented_linear_protocol`): the probe is trained
    on augmented training images through the frozen encoder, so no features are cached."""
    from selfsup.evaluate.linear_protocol import augmented_linear_protocol

    config = method.config
    options = {k: v for k, v in options.items() if k != "protocol"}
    train_set, test_set = labeled_splits(config, data_dir)
    started = time.perf_counter()
    try:
        result = augmented_linear_protocol(
            method.to(device), train_set, test_set,
            num_classes=dataset_spec(config.data.name).num_classes, seed=seed,
            device=device, **options,
        )
    except TypeError as exc:
        raise ConfigError(
            f"Option not accepted by the linear sgd-augmented protocol ({exc}). See "
            "`selfsup eval --help`."
        ) from None
    result.update(
        method=config.method,
        dataset=config.data.name,
        seconds=round(time.perf_counter() - started, 3),
    )
    return result


# ------------------------------------------------------------------------ generation and FID
GENERATE_MODES = ("random", "limiting")


def generate_images(
    method: Method,
    n: int,
    mode: str = "random",
    steps: int | None = None,
    batch_size: int = 500,
    seed: int = 0,
) -> torch.Tensor:
    """n images in [0, 1] (on the CPU) from a generative run.

    ``random``: the decoder's means for codes drawn from the prior (``method.sample``);
    ``limiting``: the limiting distribution of the encoder-decoder Markov chain
    (``method.sample_limiting``: ``steps`` transitions from noise, chains run in parallel).
    """
    if mode not in GENERATE_MODES:
        raise ConfigError(f"Unknown generation mode {mode!r}; use random or limiting.")
    if not method.generative:
        raise ConfigError(f"{method.name} has no decoder, so it cannot generate images.")
    if mode == "limiting" and not hasattr(method, "sample_limiting"):
        raise ConfigError(
            f"--mode limiting needs a method with an encoder-decoder Markov chain sampler "
            f"(hvae); {method.name} supports --mode random."
        )
    if n < 1:
        raise ConfigError(f"The number of images must be >= 1, got {n}.")
    torch.manual_seed(seed)
    was_training = method.training
    method.eval()
    out = []
    try:
        with torch.no_grad():
            for start in range(0, n, batch_size):
                k = min(batch_size, n - start)
                if mode == "random":
                    images = method.sample(k)
                else:
                    images = method.sample_limiting(k, steps)  # type: ignore[attr-defined]
                out.append(images.float().clamp(0, 1).cpu())
    finally:
        method.train(was_training)
    return torch.cat(out)


def quantize_images(images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] rounded to 8 bits (what a PNG stores), still float in [0, 1]."""
    return (images.float().clamp(0, 1) * 255).round() / 255


def save_image_folder(images: torch.Tensor, out_dir: str | Path) -> dict[str, Any]:
    """Write ``out_dir/samples/NNNNNN.png`` (8-bit) and ``out_dir/grid.png`` (first 64)."""
    import numpy as np
    from PIL import Image
    from torchvision.utils import save_image

    out_dir = Path(out_dir)
    folder = out_dir / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    pixels = (quantize_images(images) * 255).to(torch.uint8).cpu().numpy()
    for i, img in enumerate(pixels):
        arr = img[0] if img.shape[0] == 1 else np.transpose(img, (1, 2, 0))
        Image.fromarray(np.ascontiguousarray(arr)).save(folder / f"{i:06d}.png")
    grid = out_dir / "grid.png"
    save_image(quantize_images(images[:64]), grid, nrow=8, padding=2, pad_value=1.0)
    return {"samples": str(folder), "grid": str(grid), "n": int(images.shape[0])}


def reference_images(method: Method, n: int, data_dir: str | Path | None = None) -> torch.Tensor:
    """The first ``n`` test images of the run's dataset, preprocessed like the model's training
    data (e.g. binarized) and quantized to 8 bits, in [0, 1]."""
    config = method.config
    spec = dataset_spec(config.data.name)
    split = spec.test_split if spec.test_split in spec.splits else train_split_name(config)
    dataset = load_split(config, split, data_dir)
    if not isinstance(dataset, ImageDataset):
        raise ConfigError("FID reference statistics need an in-memory dataset (not imagefolder).")
    images = dataset.images[:n]
    out = []
    for start in range(0, images.shape[0], 1000):
        batch = method.preprocess(images[start : start + 1000].to(method.device))
        out.append(quantize_images(batch).cpu())
    return torch.cat(out)


def run_fid(
    method: Method,
    mode: str = "random",
    n: int = 10000,
    n_ref: int = 10000,
    steps: int | None = None,
    weights: str | Path | None = None,
    data_dir: str | Path | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    images_out: str | Path | None = None,
    batch_size: int = 50,
) -> dict[str, Any]:
    """FID between ``n`` generated images and the first ``n_ref`` test images of the dataset.

    Reference statistics are cached per (dataset, split, n_ref, preprocessing, weights)
    (:func:`selfsup.evaluate.fid.cached_statistics`).
    """
    from selfsup.evaluate import fid

    started = time.perf_counter()
    model = fid.load_inception(weights, device)
    config = method.config
    binarize = getattr(config.model, "binarize", None)
    key = f"{config.data.name}-test-n{n_ref}-binarize{binarize}"

    def compute_reference() -> tuple[Any, Any]:
        ref = reference_images(method, n_ref, data_dir)
        return fid.feature_statistics(fid.inception_features(model, ref, batch_size, device))

    mu_r, sigma_r = fid.cached_statistics(key, compute_reference, weights)
    images = quantize_images(generate_images(method, n, mode, steps, seed=seed))
    if images_out is not None:
        save_image_folder(images, images_out)
    mu, sigma = fid.feature_statistics(fid.inception_features(model, images, batch_size, device))
    chain = getattr(config.model, "chain_steps", None) if steps is None else steps
    return {
        "fid": fid.frechet_distance(mu, sigma, mu_r, sigma_r),
        "mode": mode,
        "n_samples": n,
        "n_reference": n_ref,
        "steps": chain if mode == "limiting" else None,
        "reference": f"{config.data.name} test split, first {n_ref} images"
        + (f", binarized at {binarize}" if binarize is not None else ""),
        "inception": fid.describe_weights(weights),
        "method": config.method,
        "seconds": round(time.perf_counter() - started, 2),
    }
