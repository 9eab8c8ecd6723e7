"""STL-10 from the standard binary files.

Layout (what torchvision writes): ``DIR/stl10_binary/`` holding ``train_X.bin``, ``train_y.bin``,
``test_X.bin``, ``test_y.bin``, ``unlabeled_X.bin`` and ``class_names.txt``. ``*_X.bin`` are raw
uint8 images of 3 x 96 x 96 stored channel by channel, each channel column-major (the first 96
bytes are the left-most column, top to bottom); ``*_y.bin`` are uint8 labels 1..10.

Images are memory-mapped and copied chunk by chunk, transposed, into one preallocated tensor, so
even the 100000-image unlabeled split is loaded without any intermediate full-size copy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from selfsup.data.base import DatasetSpec, ImageDataset
from selfsup.errors import DataError

FOLDER = "stl10_binary"
IMAGE_SHAPE = (3, 96, 96)
IMAGE_BYTES = 3 * 96 * 96
NUM_CLASSES = 10
SPLIT_PARTS = {
    "train": ("train",),
    "test": ("test",),
    "unlabeled": ("unlabeled",),
    "train+unlabeled": ("train", "unlabeled"),
}
SPLIT_FILES = {
    split: tuple(
        name
        for part in parts
        for name in (
            (f"{part}_X.bin",) if part == "unlabeled" else (f"{part}_X.bin", f"{part}_y.bin")
        )
    )
    for split, parts in SPLIT_PARTS.items()
}
FILES = (
    "train_X.bin",
    "train_y.bin",
    "test_X.bin",
    "test_y.bin",
    "unlabeled_X.bin",
    "class_names.txt",
)
SPLIT_SIZES = {"train": 5000, "test": 8000, "unlabeled": 100000, "train+unlabeled": 105000}
DEFAULT_CLASS_NAMES = [
    "airplane",
    "bird",
    "car",
    "cat",
    "deer",
    "dog",
    "horse",
    "monkey",
    "ship",
    "truck",
]
_CHUNK = 2048


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        raise DataError(
            f"The STL-10 file {path} does not exist. Pass --download to fetch STL-10, then run "
            "`selfsup data check stl10`."
        ) from None
    except OSError as exc:
        raise DataError(f"Cannot read {path}: {exc}. Check the file's permissions.") from None


def count_images(path: Path) -> int:
    """Number of images in an ``*_X.bin`` file (its size must be a multiple of 3*96*96)."""
    size = _size(Path(path))
    if size % IMAGE_BYTES:
        raise DataError(
            f"The STL-10 image file {path} has {size} bytes, which is not a multiple of "
            f"{IMAGE_BYTES} (one 3x96x96 image): it is truncated or corrupt. Delete it and "
            "download STL-10 again."
        )
    return size // IMAGE_BYTES


def read_images_into(path: Path, out: np.ndarray) -> None:
    """Copy the images of ``path`` into ``out`` (uint8 (N, 3, 96, 96)), fixing the orientation."""
    n = out.shape[0]
    if n == 0:
        return
    try:
        raw = np.memmap(path, dtype=np.uint8, mode="r", shape=(n, 3, 96, 96))
    except (OSError, ValueError) as exc:
        raise DataError(
            f"Cannot read {path}: {exc}. Delete it and download STL-10 again."
        ) from None
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        # stored column-major per channel: raw[i, c, x, y] is pixel (row y, column x)
        np.copyto(out[start:stop], raw[start:stop].transpose(0, 1, 3, 2))
    del raw


def read_labels(path: Path, n_images: int) -> np.ndarray:
    """Labels of a ``*_y.bin`` file as int64 0..9 (stored as 1..10)."""
    _size(Path(path))
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise DataError(f"Cannot read {path}: {exc}. Check the file's permissions.") from None
    if raw.shape[0] != n_images:
        raise DataError(
            f"The STL-10 label file {path} holds {raw.shape[0]} labels but the matching image "
            f"file holds {n_images} images. One of them is truncated or corrupt: delete both "
            "and download STL-10 again."
        )
    if raw.size and (raw.min() < 1 or raw.max() > NUM_CLASSES):
        raise DataError(
            f"The STL-10 label file {path} holds labels {int(raw.min())}..{int(raw.max())} but "
            "labels must be 1..10. The file is corrupt: delete it and download STL-10 again."
        )
    return raw.astype(np.int64) - 1


def load_class_names(folder: Path) -> list[str]:
    """Class names from ``class_names.txt`` when present and valid, else the standard names."""
    path = Path(folder) / "class_names.txt"
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    except OSError:
        return list(DEFAULT_CLASS_NAMES)
    names = [line.strip() for line in lines if line.strip()]
    if len(names) != NUM_CLASSES:
        raise DataError(
            f"{path} lists {len(names)} class names but STL-10 has 10 (one per line). The file "
            "is corrupt: delete it and download STL-10 again."
        )
    return names


def load_stl10(data_dir: Path, split: str, options: dict | None = None) -> ImageDataset:
    """Load ``train``, ``test``, ``unlabeled`` (labels -1) or ``train+unlabeled`` of STL-10."""
    folder = Path(data_dir) / FOLDER
    missing = [f for f in SPLIT_FILES[split] if not (folder / f).is_file()]
    if missing:
        raise DataError(
            f"stl10: {', '.join(missing)} missing from {folder}. Pass --download to fetch "
            f"STL-10, then run `selfsup data check stl10 --data-dir {data_dir}`."
        )
    parts = SPLIT_PARTS[split]
    counts = [count_images(folder / f"{part}_X.bin") for part in parts]
    labels = []
    for part, n in zip(parts, counts, strict=True):
        if part == "unlabeled":
            labels.append(np.full(n, -1, dtype=np.int64))
        else:
            labels.append(read_labels(folder / f"{part}_y.bin", n))
    images = torch.empty((sum(counts), *IMAGE_SHAPE), dtype=torch.uint8)
    out = images.numpy()
    start = 0
    for part, n in zip(parts, counts, strict=True):
        read_images_into(folder / f"{part}_X.bin", out[start : start + n])
        start += n
    return ImageDataset(
        images=images,
        labels=torch.from_numpy(np.concatenate(labels)),
        num_classes=NUM_CLASSES,
        name="stl10",
        split=split,
        class_names=load_class_names(folder),
    )


def check_split(data_dir: Path, split: str) -> int:
    """Validate ``split`` cheaply (sizes, all labels, first image) and return its sample count."""
    folder = Path(data_dir) / FOLDER
    total = 0
    for part in SPLIT_PARTS[split]:
        x_path = folder / f"{part}_X.bin"
        n = count_images(x_path)
        if part != "unlabeled":
            read_labels(folder / f"{part}_y.bin", n)
        if n:
            read_images_into(x_path, np.empty((1, *IMAGE_SHAPE), dtype=np.uint8))
        total += n
    load_class_names(folder)
    return total


def _download(data_dir: Path) -> None:
    from torchvision import datasets

    datasets.STL10(str(data_dir), split="train+unlabeled", download=True)


SPEC = DatasetSpec(
    name="stl10",
    description="STL-10 natural images, 96x96 RGB, 10 classes plus 100000 unlabeled images",
    folder=FOLDER,
    files=FILES,
    splits=("train", "test", "unlabeled", "train+unlabeled"),
    image_shape=IMAGE_SHAPE,
    num_classes=NUM_CLASSES,
    load=load_stl10,
    download=_download,
    notes="binary files; train+unlabeled concatenates both (unlabeled labels are -1)",
    extra={
        "split_files": SPLIT_FILES,
        "split_sizes": SPLIT_SIZES,
        "combined_splits": {"train+unlabeled": ("train", "unlabeled")},
        "check": check_split,
    },
)
