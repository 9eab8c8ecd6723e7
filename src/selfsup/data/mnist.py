"""MNIST and Fashion-MNIST from the standard IDX files, parsed with numpy.

Layout (what torchvision writes): ``DIR/MNIST/raw/`` (or ``DIR/FashionMNIST/raw/``) holding
``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
``t10k-labels-idx1-ubyte``, each plain or gzipped (``.gz``; gzip is detected from the content).

IDX format: a big-endian header ``0x00 0x00 <type> <ndim>`` (type 0x08 = uint8), then ``ndim``
big-endian uint32 sizes, then the row-major payload. Images use magic 2051 (0x00000803, dims
N x 28 x 28) and labels magic 2049 (0x00000801, dims N).
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from selfsup.data.base import DatasetSpec, ImageDataset
from selfsup.errors import DataError

IMAGE_MAGIC = 2051
LABEL_MAGIC = 2049
IMAGE_SIZE = 28
NUM_CLASSES = 10
SPLIT_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FILES: tuple[str, ...] = tuple(name for pair in SPLIT_FILES.values() for name in pair)
SPLIT_SIZES = {"train": 60000, "test": 10000}
FOLDERS = {"mnist": "MNIST/raw", "fashionmnist": "FashionMNIST/raw"}
CLASS_NAMES = {
    "mnist": [str(i) for i in range(10)],
    "fashionmnist": [
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ],
}
_GZIP_MAGIC = b"\x1f\x8b"


def _corrupt(source: str, what: str) -> DataError:
    return DataError(
        f"The IDX file {source} is corrupt: {what}. Delete it and download it again (e.g. with "
        "--download), then verify with `selfsup data check`."
    )


def find_idx_file(folder: Path, name: str) -> Path | None:
    """The plain file ``folder/name`` if it exists, else ``folder/name.gz``, else None."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def parse_idx(data: bytes, source: str, kind: str) -> np.ndarray:
    """Parse IDX bytes (plain or gzipped) of ``kind`` "images" (N,28,28) or "labels" (N,)."""
    if kind not in ("images", "labels"):
        raise ValueError(f"kind must be 'images' or 'labels', got {kind!r}")
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error, ValueError) as exc:
            raise _corrupt(source, f"it is not a valid gzip file ({exc})") from None
    if len(data) < 4:
        raise _corrupt(source, f"it has only {len(data)} bytes, too short for an IDX header")
    magic = int.from_bytes(data[:4], "big")
    expected = IMAGE_MAGIC if kind == "images" else LABEL_MAGIC
    if magic != expected:
        raise _corrupt(
            source,
            f"magic number {magic} (0x{magic:08x}) but an IDX {kind} file starts with "
            f"{expected} (0x{expected:08x})",
        )
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise _corrupt(source, f"the header is truncated ({len(data)} of {header} bytes)")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    if kind == "images" and dims[1:] != [IMAGE_SIZE, IMAGE_SIZE]:
        raise _corrupt(source, f"image dimensions are {dims}, expected [N, 28, 28]")
    count = 1
    for d in dims:
        count *= d
    payload = len(data) - header
    if payload != count:
        problem = "truncated" if payload < count else "followed by extra bytes"
        raise _corrupt(
            source,
            f"the header promises {count} bytes of data for dimensions {dims} but the file "
            f"holds {payload} ({problem})",
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def read_idx_file(path: Path, kind: str) -> np.ndarray:
    """Read and parse one IDX file (see :func:`parse_idx`); unreadable files raise DataError."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(
            f"The IDX file {path} does not exist. Put the standard file there (or pass "
            "--download) and verify with `selfsup data check`."
        ) from None
    except OSError as exc:
        raise DataError(f"Cannot read {path}: {exc}. Check the file's permissions.") from None
    return parse_idx(data, str(path), kind)


def load_idx_split(name: str, data_dir: Path, split: str) -> ImageDataset:
    """Load split ``train``/``test`` of ``mnist`` or ``fashionmnist`` from ``data_dir``."""
    folder = Path(data_dir) / FOLDERS[name]
    image_name, label_name = SPLIT_FILES[split]
    paths = []
    for fname in (image_name, label_name):
        found = find_idx_file(folder, fname)
        if found is None:
            raise DataError(
                f"{name}: the file {fname} (or {fname}.gz) is missing from {folder}. Pass "
                f"--download to fetch it, then run `selfsup data check {name} --data-dir "
                f"{data_dir}`."
            )
        paths.append(found)
    images = read_idx_file(paths[0], "images")
    labels = read_idx_file(paths[1], "labels")
    if labels.ndim != 1:
        raise _corrupt(str(paths[1]), f"labels must be 1-D, got dimensions {list(labels.shape)}")
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{name}/{split}: {paths[0]} holds {images.shape[0]} images but {paths[1]} holds "
            f"{labels.shape[0]} labels. One of them is truncated or from another dataset: "
            "re-download both."
        )
    if labels.size and int(labels.max()) >= NUM_CLASSES:
        raise _corrupt(str(paths[1]), f"label {int(labels.max())} is out of range (expected 0..9)")
    return ImageDataset(
        images=torch.from_numpy(images.copy()).unsqueeze(1),
        labels=torch.from_numpy(labels.astype(np.int64)),
        num_classes=NUM_CLASSES,
        name=name,
        split=split,
        class_names=list(CLASS_NAMES[name]),
    )


def _downloader(name: str):
    def download(data_dir: Path) -> None:
        from torchvision import datasets

        cls = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
        cls(str(data_dir), train=True, download=True)
        cls(str(data_dir), train=False, download=True)

    return download


def load_idx_train_and_test(name: str, data_dir: Path) -> ImageDataset:
    """Split ``train+test``: all 70,000 images (the hierarchical-VAE paper trains on them)."""
    train = load_idx_split(name, data_dir, "train")
    test = load_idx_split(name, data_dir, "test")
    return ImageDataset(
        images=torch.cat([train.images, test.images]),
        labels=torch.cat([train.labels, test.labels]),
        num_classes=NUM_CLASSES,
        name=name,
        split="train+test",
        class_names=list(CLASS_NAMES[name]),
    )


def _loader(name: str):
    def load(data_dir: Path, split: str, options: dict) -> ImageDataset:
        if split == "train+test":
            return load_idx_train_and_test(name, data_dir)
        return load_idx_split(name, data_dir, split)

    return load


def make_spec(name: str) -> DatasetSpec:
    """The registry entry for ``mnist`` or ``fashionmnist``."""
    description = {
        "mnist": "MNIST handwritten digits, 28x28 grayscale, 10 classes",
        "fashionmnist": "Fashion-MNIST clothing images, 28x28 grayscale, 10 classes",
    }[name]
    return DatasetSpec(
        name=name,
        description=description,
        folder=FOLDERS[name],
        files=FILES,
        splits=("train", "test", "train+test"),
        image_shape=(1, IMAGE_SIZE, IMAGE_SIZE),
        num_classes=NUM_CLASSES,
        load=_loader(name),
        download=_downloader(name),
        notes="IDX files, plain or .gz",
        extra={
            "split_files": {**SPLIT_FILES, "train+test": FILES},
            "gz_ok": True,
            "split_sizes": {**SPLIT_SIZES, "train+test": sum(SPLIT_SIZES.values())},
            "combined_splits": {"train+test": ("train", "test")},
        },
    )
