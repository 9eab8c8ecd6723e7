"""CelebA (aligned and cropped faces) in torchvision's ``celeba`` folder layout.

Files under ``DIR/celeba/``: ``img_align_celeba/*.jpg`` (178 x 218 RGB), ``list_attr_celeba.txt``
(40 binary attributes, +1/-1) and ``list_eval_partition.txt`` (0 train, 1 valid, 2 test).

Images: the centered 178 x 178 square of each picture (the whole face and its hair), resized to
``image_size`` (default 64) with antialiasing, held as uint8. Decoding 200k JPEG files takes
minutes, so each decoded split is cached once as ``selfsup-cache/<split>-<size>.npy`` inside the
CelebA folder (written atomically; delete it to rebuild).

Label (the SimVAE paper's style task): 5-way hair colour from the attributes Black_Hair (8),
Blond_Hair (9), Brown_Hair (11) and Gray_Hair (17): the one colour that is positive, or ``other``
when none is; pictures with more than one positive colour are ambiguous and get label -1
(unlabeled: used for self-supervised training, left out of every probe).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch

from selfsup.data.base import DatasetSpec, ImageDataset
from selfsup.errors import ConfigError, DataError

FOLDER = "celeba"
IMAGE_DIR = "img_align_celeba"
ATTR_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
FILES = (ATTR_FILE, PARTITION_FILE)
PARTITIONS = {"train": 0, "val": 1, "test": 2}
HAIR_ATTRIBUTES = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair")
HAIR_INDICES = (8, 9, 11, 17)
CLASS_NAMES = ["black", "blond", "brown", "gray", "other"]
DEFAULT_IMAGE_SIZE = 64
OPTIONS = {"image_size": DEFAULT_IMAGE_SIZE}
SPLIT_SIZES = {"train": 162770, "val": 19867, "test": 19962}


def image_size_option(options: dict | None) -> int:
    size = dict(options or {}).get("image_size", DEFAULT_IMAGE_SIZE)
    if isinstance(size, bool) or not isinstance(size, int) or not 8 <= size <= 178:
        raise ConfigError(
            f"celeba option 'image_size' must be an integer between 8 and 178, got {size!r} "
            "(the images are 178 px wide; 64 is the SimVAE setting)."
        )
    return size


def _corrupt(path: Path, why: str) -> DataError:
    return DataError(
        f"celeba: {path} is not a valid CelebA file ({why}). Re-download CelebA (torchvision's "
        "`datasets.CelebA(root, download=True)` layout) or copy the original text files there, "
        "then run `selfsup data check celeba --data-dir DIR`."
    )


def read_attributes(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(filenames, attribute names, values)`` from ``list_attr_celeba.txt``; values in {0, 1}."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise _corrupt(path, f"unreadable: {exc}") from None
    if len(lines) < 2:
        raise _corrupt(path, "fewer than two lines")
    try:
        count = int(lines[0].strip())
    except ValueError:
        raise _corrupt(path, "the first line is not the number of images") from None
    names = lines[1].split()
    if len(names) != 40 or tuple(names[i] for i in HAIR_INDICES) != HAIR_ATTRIBUTES:
        raise _corrupt(path, "the second line is not the 40 CelebA attribute names")
    rows = [line.split() for line in lines[2:] if line.strip()]
    if len(rows) != count:
        raise _corrupt(path, f"header says {count} images but {len(rows)} rows follow (truncated?)")
    if any(len(row) != 41 for row in rows):
        raise _corrupt(path, "a row does not hold a file name and 40 values")
    try:
        values = np.array([[int(v) for v in row[1:]] for row in rows], dtype=np.int8)
    except ValueError:
        raise _corrupt(path, "a value is not an integer") from None
    if not np.isin(values, (-1, 1)).all():
        raise _corrupt(path, "attribute values must be 1 or -1")
    return [row[0] for row in rows], np.array(names), (values > 0).astype(np.int8)


def read_partition(path: Path) -> dict[str, int]:
    """File name -> partition (0 train, 1 valid, 2 test) from ``list_eval_partition.txt``."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise _corrupt(path, f"unreadable: {exc}") from None
    partition: dict[str, int] = {}
    for line in lines:
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
            raise _corrupt(path, f"bad line {line!r} (expected 'NAME.jpg 0|1|2')")
        partition[parts[0]] = int(parts[1])
    return partition


def hair_colour_labels(attributes: np.ndarray) -> np.ndarray:
    """5-way hair colour: index of the single positive colour, 4 (other) if none, -1 if several."""
    hair = attributes[:, list(HAIR_INDICES)].astype(np.int64)
    positives = hair.sum(axis=1)
    labels = np.where(positives == 0, 4, hair.argmax(axis=1))
    return np.where(positives > 1, -1, labels).astype(np.int64)


def decode_image(path: Path, size: int) -> np.ndarray:
    """The centered square of one picture resized to ``size`` x ``size``: uint8 (3, size, size)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.draft("RGB", (size * 2, size * 2))  # JPEG: decode at a reduced scale, faster
            image = image.convert("RGB")
            w, h = image.size
            side = min(w, h)
            left, top = (w - side) // 2, (h - side) // 2
            image = image.crop((left, top, left + side, top + side))
            image = image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
            return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)
    except FileNotFoundError:
        raise DataError(
            f"celeba: image {path} is missing. The folder {path.parent} must hold every file named "
            "in list_attr_celeba.txt: re-download or re-extract img_align_celeba.zip there."
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(
            f"celeba: image {path} cannot be decoded ({exc}). Re-download or re-extract "
            "img_align_celeba.zip, or delete that file and its rows from the list files."
        ) from None


def _split_rows(folder: Path, split: str) -> tuple[list[str], np.ndarray]:
    names, _, attributes = read_attributes(folder / ATTR_FILE)
    partition = read_partition(folder / PARTITION_FILE)
    missing = [n for n in names if n not in partition]
    if missing:
        raise _corrupt(folder / PARTITION_FILE, f"{len(missing)} images, e.g. {missing[0]}, have "
                       "no partition (the file does not match list_attr_celeba.txt)")
    keep = [i for i, n in enumerate(names) if partition[n] == PARTITIONS[split]]
    return [names[i] for i in keep], hair_colour_labels(attributes[keep])


def _decode_all(folder: Path, names: list[str], size: int) -> np.ndarray:
    images = np.empty((len(names), 3, size, size), dtype=np.uint8)
    show = len(names) >= 5000 and sys.stderr.isatty()
    for i, name in enumerate(names):
        images[i] = decode_image(folder / IMAGE_DIR / name, size)
        if show and (i + 1) % 5000 == 0:
            print(f"\rceleba: decoded {i + 1}/{len(names)} images", end="", file=sys.stderr)
    if show:
        print(file=sys.stderr)
    return images


def load_celeba(data_dir: Path, split: str, options: dict) -> ImageDataset:
    """Load ``split`` (train/val/test) of CelebA, decoding once and caching the uint8 array."""
    size = image_size_option(options)
    folder = Path(data_dir) / FOLDER
    if not (folder / IMAGE_DIR).is_dir():
        raise DataError(
            f"celeba: the image folder {folder / IMAGE_DIR} is missing. Extract "
            "img_align_celeba.zip into it (torchvision's CelebA layout), then run "
            f"`selfsup data check celeba --data-dir {data_dir}`."
        )
    names, labels = _split_rows(folder, split)
    cache = folder / "selfsup-cache" / f"{split}-{size}.npy"
    images: np.ndarray | None = None
    if cache.is_file():
        try:
            images = np.load(cache, mmap_mode=None, allow_pickle=False)
        except (OSError, ValueError):
            images = None
        if images is not None and images.shape != (len(names), 3, size, size):
            images = None  # stale cache (different file lists): rebuild it
    if images is None:
        images = _decode_all(folder, names, size)
        try:
            cache.parent.mkdir(exist_ok=True)
            tmp = cache.with_suffix(f".tmp{os.getpid()}.npy")
            np.save(tmp, images)
            os.replace(tmp, cache)
        except OSError:
            pass  # a read-only dataset folder only costs the decoding time next run
    return ImageDataset(
        images=torch.from_numpy(np.ascontiguousarray(images)),
        labels=torch.from_numpy(labels),
        num_classes=len(CLASS_NAMES),
        name="celeba",
        split=split,
        class_names=list(CLASS_NAMES),
    )


def check_split(data_dir: Path, split: str) -> int:
    """Validate the list files and the first image of ``split``; return its sample count."""
    folder = Path(data_dir) / FOLDER
    names, _ = _split_rows(folder, split)
    if names:
        decode_image(folder / IMAGE_DIR / names[0], DEFAULT_IMAGE_SIZE)
    return len(names)


def _download(data_dir: Path) -> None:
    from torchvision import datasets

    datasets.CelebA(str(data_dir), split="all", target_type="attr", download=True)


SPEC = DatasetSpec(
    name="celeba",
    description="CelebA aligned faces, centered square resized to 64x64 RGB, 5-way hair colour",
    folder=FOLDER,
    files=FILES,
    splits=("train", "val", "test"),
    image_shape=(3, DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE),
    num_classes=len(CLASS_NAMES),
    load=load_celeba,
    download=_download,
    notes="torchvision layout; decoded once and cached as .npy; ambiguous hair colour = -1",
    extra={
        "split_files": {split: FILES for split in PARTITIONS},
        "split_sizes": SPLIT_SIZES,
        "options": OPTIONS,
        "check": check_split,
    },
)
