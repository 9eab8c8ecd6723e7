"""MPI3D (toy, realistic, real): 1,036,800 RGB 64x64 images of a robot-arm scene.

Official files ``mpi3d_toy.npz``, ``mpi3d_realistic.npz``, ``mpi3d_real.npz`` hold one array
``images`` (1036800, 64, 64, 3) uint8, ordered C-style over the factor classes (sizes
``[6, 6, 2, 3, 3, 40, 40]``): object colour, object shape, object size, camera height,
background colour, horizontal axis, vertical axis.

The array is 12.7 GB, so it is never loaded whole: ``selfsup data prepare mpi3d --variant toy
--data-dir DIR`` streams ``DIR/mpi3d/mpi3d_toy.npz`` once, in chunks, into the uncompressed
``DIR/mpi3d/mpi3d_toy_images.npy`` (written to a temporary name, then renamed), which the datasets
``mpi3d-toy`` / ``mpi3d-realistic`` / ``mpi3d-real`` memory-map. A split is an index array into
that map (see :func:`selfsup.data.splits.factor_split_indices`); only the rows a batch asks for are
read from disk.

Label = object shape (6 classes). Factor probes classify colour, shape, size, height and
background and regress the two axes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch

from selfsup.data.base import DatasetSpec
from selfsup.data.factor_data import (
    CATEGORICAL,
    CONTINUOUS,
    FactorInfo,
    MemmapFactorDataset,
    augment_preset,
    iter_npz_rows,
    npz_member_header,
)
from selfsup.data.splits import FACTOR_SPLITS, MPI3D_SIZES, factor_split_indices, unravel_factors
from selfsup.errors import ConfigError, DataError

FOLDER = "mpi3d"
VARIANTS = ("toy", "realistic", "real")
IMAGE_SHAPE = (64, 64, 3)  # as stored: H, W, C
FACTOR_NAMES = ["color", "shape", "size", "height", "background", "horizontal", "vertical"]
FACTOR_KINDS = (CATEGORICAL,) * 5 + (CONTINUOUS,) * 2
OPTIONS = {"split_scheme": "ood", "ood_k": 0, "heldout_fraction": 0.1,
           "heldout_split": "fraction", "n_train": 0}
# The released MPI3D augmentation (SoftDiscrete_SSL src/common/loaders/mpi3d.py:57-64): random
# resized crop (scale 0.5-1, torchvision's tensor NEAREST) with p = 0.9, colour jitter
# (0.4, 0.4, 0.4, 0) with p = 0.8, grayscale with p = 0.2.
AUGMENT = augment_preset(crop_scale=[0.5, 1.0], crop_prob=0.9, jitter=[0.4, 0.4, 0.4, 0.0],
                         jitter_prob=0.8, grayscale=0.2, interpolation="nearest-legacy")
# The grid sizes the loaders expect (tests substitute a smaller grid here).
GRID_SIZES: tuple[int, ...] = MPI3D_SIZES


def npz_name(variant: str) -> str:
    return f"mpi3d_{variant}.npz"


def npy_name(variant: str) -> str:
    return f"mpi3d_{variant}_images.npy"


def _check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise ConfigError(
            f"Unknown MPI3D variant {variant!r}; use one of {', '.join(VARIANTS)}."
        )
    return variant


def _fix(variant: str, data_dir: Path) -> str:
    return (
        f"Download {npz_name(variant)} (github.com/rr-learning/disentanglement_dataset) into "
        f"{Path(data_dir) / FOLDER}, then run `selfsup data prepare mpi3d --variant {variant} "
        f"--data-dir {data_dir}`."
    )


def factor_info(sizes: tuple[int, ...] | None = None) -> FactorInfo:
    sizes = tuple(GRID_SIZES if sizes is None else sizes)
    return FactorInfo(
        names=tuple(FACTOR_NAMES),
        sizes=sizes,
        kinds=FACTOR_KINDS,
        values=tuple(tuple(float(v) for v in range(s)) for s in sizes),
    )


def _expected_shape() -> tuple[int, ...]:
    return (int(np.prod(GRID_SIZES)), *IMAGE_SHAPE)


def prepare(data_dir: str | Path, variant: str = "toy", chunk_rows: int = 8192,
            progress: bool | None = None) -> dict:
    """Convert ``mpi3d_<variant>.npz`` into the memory-mappable ``mpi3d_<variant>_images.npy``.

    Streams the ``images`` member chunk by chunk (memory: one chunk), validates its shape
    (N = prod of the factor sizes, 64 x 64 x 3 uint8) and writes atomically. Returns
    ``{"source", "output", "images", "bytes"}``. An existing valid output is kept.
    """
    variant = _check_variant(variant)
    data_dir = Path(data_dir).expanduser()
    folder = data_dir / FOLDER
    src, dst = folder / npz_name(variant), folder / npy_name(variant)
    fix = _fix(variant, data_dir)
    if not src.is_file():
        raise DataError(f"MPI3D-{variant}: the file {src} is missing. {fix}")
    shape, dtype = npz_member_header(src, "images", fix)
    if shape != _expected_shape() or dtype != np.uint8:
        raise DataError(
            f"{src}: 'images' is {dtype} {shape}, expected uint8 {_expected_shape()} (the "
            f"factor grid {list(GRID_SIZES)}). The file is damaged or not MPI3D. {fix}"
        )
    if dst.is_file():
        try:
            _open_images(dst, variant, data_dir)
            return {"source": str(src), "output": str(dst), "images": shape[0],
                    "bytes": dst.stat().st_size, "skipped": True}
        except DataError:
            pass  # damaged earlier output: rebuild it
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    show = sys.stderr.isatty() if progress is None else progress
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        for start, rows in iter_npz_rows(src, "images", fix, chunk_rows):
            out[start : start + rows.shape[0]] = rows
            if show:
                print(f"\rmpi3d-{variant}: {start + rows.shape[0]}/{shape[0]} images",
                      end="", file=sys.stderr)
        out.flush()
        del out
        os.replace(tmp, dst)
    except OSError as exc:
        raise DataError(
            f"Cannot write {dst} ({exc.strerror or exc}); it needs "
            f"{int(np.prod(shape)) / 2**30:.1f} GiB of free disk space in {folder}."
        ) from None
    finally:
        if show:
            print(file=sys.stderr)
        if tmp.exists():
            tmp.unlink()
    return {"source": str(src), "output": str(dst), "images": shape[0],
            "bytes": dst.stat().st_size, "skipped": False}


def _open_images(path: Path, variant: str, data_dir: Path) -> np.ndarray:
    try:
        images = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(
            f"{path} is not a valid prepared MPI3D array ({exc}); it is truncated or damaged. "
            f"Delete it and run `selfsup data prepare mpi3d --variant {variant} --data-dir "
            f"{data_dir}` again."
        ) from None
    if images.shape != _expected_shape() or images.dtype != np.uint8:
        raise DataError(
            f"{path} holds {images.dtype} {images.shape}, expected uint8 {_expected_shape()}. "
            f"Delete it and run `selfsup data prepare mpi3d --variant {variant} --data-dir "
            f"{data_dir}` again."
        )
    return images


def _images_for(data_dir: Path, variant: str) -> np.ndarray:
    folder = Path(data_dir) / FOLDER
    path = folder / npy_name(variant)
    if not path.is_file():
        if (folder / npz_name(variant)).is_file():
            raise DataError(
                f"MPI3D-{variant} has not been prepared: {path} is missing. Run `selfsup data "
                f"prepare mpi3d --variant {variant} --data-dir {data_dir}` once (it converts "
                f"{npz_name(variant)} into a memory-mappable .npy)."
            )
        raise DataError(f"MPI3D-{variant}: {path} is missing. {_fix(variant, data_dir)}")
    return _open_images(path, variant, data_dir)


def split_indices(split: str, options: dict) -> torch.Tensor:
    opts = {**OPTIONS, **(options or {})}
    return factor_split_indices(
        "mpi3d", tuple(GRID_SIZES), opts["split_scheme"], opts["ood_k"],
        opts["heldout_fraction"], opts["heldout_split"], opts["n_train"],
    )[split]


def load_mpi3d(variant: str, data_dir: Path, split: str, options: dict) -> MemmapFactorDataset:
    """A split of MPI3D-``variant`` over the memory-mapped prepared array."""
    images = _images_for(Path(data_dir), variant)
    indices = split_indices(split, options)
    factors = torch.from_numpy(unravel_factors(indices.numpy(), tuple(GRID_SIZES)))
    return MemmapFactorDataset(
        images=images,
        indices=indices,
        factors=factors,
        labels=factors[:, 1].clone(),
        num_classes=int(GRID_SIZES[1]),
        name=f"mpi3d-{variant}",
        split=split,
        factor_names=list(FACTOR_NAMES),
    )


def _make_spec(variant: str) -> DatasetSpec:
    def load(data_dir: Path, split: str, options: dict) -> MemmapFactorDataset:
        return load_mpi3d(variant, data_dir, split, options)

    def check(data_dir: Path, split: str) -> int:
        if split == "train":  # one file holds every split: validate (and report) once
            _images_for(Path(data_dir), variant)
        return int(split_indices(split, {}).numel())

    return DatasetSpec(
        name=f"mpi3d-{variant}",
        description=f"MPI3D-{variant}, 64x64 RGB robot-arm scenes, factor-combination OOD splits",
        folder=FOLDER,
        files=(npy_name(variant),),
        splits=FACTOR_SPLITS,
        image_shape=(3, 64, 64),
        num_classes=6,
        load=load,
        in_memory=False,
        notes=f"run `selfsup data prepare mpi3d --variant {variant}` once; label = shape",
        extra={"options": OPTIONS, "factors": factor_info, "augment": AUGMENT, "check": check},
    )


SPECS = tuple(_make_spec(v) for v in VARIANTS)
