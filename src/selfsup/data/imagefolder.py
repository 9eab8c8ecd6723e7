"""A folder of image files, one sub-folder per class, streamed from disk.

Layout: ``DIR/<root>/train/<class>/*.{jpg,jpeg,png,bmp,webp}`` and ``DIR/<root>/test/<class>/...``
(or ``val/`` when there is no ``test/``). Options: ``root`` (default ``"imagefolder"``) and
``image_size`` (default 64). Each image is decoded with PIL, converted to RGB, resized so its
shorter side is ``image_size`` (bilinear) and center-cropped to ``image_size`` x ``image_size``.
Labels index the sorted class folder names of ``train``; ``test`` classes must be among them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from selfsup.data.base import DatasetSpec
from selfsup.errors import ConfigError, DataError

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
DEFAULT_ROOT = "imagefolder"
DEFAULT_IMAGE_SIZE = 64
OPTIONS = {"root": DEFAULT_ROOT, "image_size": DEFAULT_IMAGE_SIZE}


def parse_options(options: dict | None) -> tuple[str, int]:
    """Validated ``(root, image_size)`` from the dataset options."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConfigError(
            f"Unknown imagefolder option(s) {unknown}. Valid options are 'root' (folder name "
            "under the data directory) and 'image_size' (output side length in pixels)."
        )
    root = options.get("root", DEFAULT_ROOT)
    size = options.get("image_size", DEFAULT_IMAGE_SIZE)
    if not isinstance(root, str) or not root:
        raise ConfigError(f"imagefolder option 'root' must be a folder name, got {root!r}.")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ConfigError(
            f"imagefolder option 'image_size' must be a positive integer, got {size!r}."
        )
    return root, size


def split_folder(root_dir: Path, split: str) -> Path:
    """``root_dir/train`` for train; ``root_dir/test``, or ``root_dir/val`` if absent, for test."""
    if split == "train":
        return root_dir / "train"
    test = root_dir / "test"
    if not test.is_dir() and (root_dir / "val").is_dir():
        return root_dir / "val"
    return test


def _class_dirs(folder: Path) -> list[str]:
    return sorted(entry.name for entry in folder.iterdir() if entry.is_dir())


def _image_files(folder: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        for fname in sorted(filenames):
            if fname.lower().endswith(EXTENSIONS) and not fname.startswith("."):
                files.append(Path(dirpath) / fname)
    return files


def _missing(folder: Path, data_dir: Path) -> DataError:
    return DataError(
        f"imagefolder: the folder {folder} does not exist. Create it with one sub-folder per "
        f"class holding image files ({', '.join(EXTENSIONS)}); there is no downloader for image "
        f"folders. Then run `selfsup data check imagefolder --data-dir {data_dir}`."
    )


def decode_image(path: Path, image_size: int) -> torch.Tensor:
    """Decode ``path`` to a uint8 (3, S, S) tensor: RGB, shorter side resized to S, center crop."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            w, h = img.size
            if w <= h:
                new_w, new_h = image_size, max(1, int(round(h * image_size / w)))
            else:
                new_w, new_h = max(1, int(round(w * image_size / h))), image_size
            if (new_w, new_h) != (w, h):
                img = img.resize((new_w, new_h), Image.BILINEAR)
            left = int(round((new_w - image_size) / 2.0))
            top = int(round((new_h - image_size) / 2.0))
            img = img.crop((left, top, left + image_size, top + image_size))
            arr = np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(
            f"Cannot read the image file {path} ({type(exc).__name__}: {exc}). It is corrupt or "
            "not an image: delete or replace it."
        ) from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


class ImageFolderDataset:
    """Map-style streaming dataset: ``ds[i]`` -> (uint8 (3, S, S) tensor, int label)."""

    def __init__(self, data_dir: Path, split: str, options: dict | None = None) -> None:
        root, size = parse_options(options)
        data_dir = Path(data_dir)
        root_dir = data_dir / root
        train_dir = root_dir / "train"
        folder = split_folder(root_dir, split)
        if not train_dir.is_dir():
            raise _missing(train_dir, data_dir)
        if not folder.is_dir():
            raise _missing(folder, data_dir)
        classes = _class_dirs(train_dir)
        if not classes:
            raise DataError(
                f"imagefolder: {train_dir} has no class sub-folders. Put the images of each "
                f"class in their own sub-folder, e.g. {train_dir}/cat/001.jpg."
            )
        split_classes = classes if folder == train_dir else _class_dirs(folder)
        extra = sorted(set(split_classes) - set(classes))
        if extra:
            raise DataError(
                f"imagefolder: {folder} has class folder(s) {extra} that {train_dir} lacks. The "
                "test classes must be a subset of the train classes: rename or remove them."
            )
        index = {name: i for i, name in enumerate(classes)}
        samples: list[tuple[Path, int]] = []
        for name in split_classes:
            samples.extend((p, index[name]) for p in _image_files(folder / name))
        if not samples:
            raise DataError(
                f"imagefolder: no images found in {folder}. Expected class sub-folders holding "
                f"files with extension {', '.join(EXTENSIONS)} (any case)."
            )
        self.name = "imagefolder"
        self.split = split
        self.folder = folder
        self.image_size = size
        self.class_names = classes
        self.num_classes = len(classes)
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        n = len(self.samples)
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {index} out of range for {n} images")
        path, label = self.samples[i]
        return decode_image(path, self.image_size), label

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return 3, self.image_size, self.image_size

    @property
    def labels(self) -> torch.Tensor:
        """int64 labels of all samples (no decoding needed)."""
        return torch.tensor([label for _, label in self.samples], dtype=torch.int64)


def load_imagefolder(data_dir: Path, split: str, options: dict | None = None) -> ImageFolderDataset:
    """Open split ``train`` or ``test`` (``test/`` or ``val/``) of an image folder."""
    return ImageFolderDataset(data_dir, split, options)


SPEC = DatasetSpec(
    name="imagefolder",
    description="Your own images: <root>/train/<class>/*.jpg|png|..., streamed and resized",
    folder=DEFAULT_ROOT,
    files=("train/", "test/ (or val/)"),
    splits=("train", "test"),
    image_shape=None,
    num_classes=0,
    load=load_imagefolder,
    download=None,
    in_memory=False,
    notes="options: root (default 'imagefolder'), image_size (default 64); classes from train/",
    extra={"options": dict(OPTIONS)},
)
