"""A folder of image files, one sub-folder per class, streamed from disk (any size).

Layout: ``DIR/<root>/train/<class>/*.{jpg,jpeg,png,bmp,webp}`` and ``DIR/<root>/test/<class>/...``
(or ``val/`` when there is no ``test/``; the test split is optional: training works without it,
evaluation needs it). Options: ``root`` (default ``"imagefolder"``) and ``image_size`` S (default
64). Labels index the sorted class folder names of ``train``; ``test`` classes must be among them.

Nothing but the file index is held in memory: the paths are packed into one byte array with
offsets and the labels into one int64 array (about 60 bytes per image instead of a Python object
per file, and no copy-on-write growth in DataLoader workers), so memory stays flat as the folder
grows. Two views of an image exist:

- the **evaluation view** ``ds[i]``: decoded with PIL, converted to RGB, shorter side resized to S
  (bilinear, antialiased), centre-cropped to S x S; deterministic;
- the **training views** (:meth:`ImageFolderDataset.training_views`): ``V`` random resized crops
  taken from the *full-resolution* decoded image (torchvision's ``RandomResizedCrop`` algorithm
  and PIL resize, seeded per (run seed, epoch, image) so that any worker count, topology or
  resume point gives the same crops) plus the evaluation view; the rest of the augmentation runs
  batched on the training device (:class:`selfsup.data.augment.CroppedViews`).

With ``data.decode: device`` the workers only read the file bytes and draw the crop boxes (from the
JPEG header's size); the main process decodes the batch with ``torchvision.io.decode_jpeg`` on
the training device (nvJPEG on a GPU) and crops/resizes there (:func:`decode_batch`).
"""

from __future__ import annotations

import math
import os
import random
from array import array
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from selfsup.data.base import DatasetSpec
from selfsup.errors import ConfigError, DataError

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
DEFAULT_ROOT = "imagefolder"
DEFAULT_IMAGE_SIZE = 64
OPTIONS = {"root": DEFAULT_ROOT, "image_size": DEFAULT_IMAGE_SIZE}
_MIX = (0x9E3779B1, 0x85EBCA6B, 0xC2B2AE35)


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


def split_present(data_dir: Path, split: str, options: dict | None = None) -> bool:
    """Whether the folder of ``split`` exists (the test split is optional)."""
    root, _ = parse_options(options)
    return split_folder(Path(data_dir) / root, split).is_dir()


def _class_dirs(folder: Path) -> list[str]:
    return sorted(entry.name for entry in folder.iterdir() if entry.is_dir())


def _image_file_names(folder: Path) -> Iterator[str]:
    """Paths (strings) of the image files under ``folder``, recursively, links followed, sorted."""
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        for fname in sorted(filenames):
            if fname.lower().endswith(EXTENSIONS) and not fname.startswith("."):
                yield os.path.join(dirpath, fname)


def iter_image_files(folder: Path) -> Iterator[Path]:
    """Image files under ``folder`` (recursively, links followed), in sorted order."""
    return map(Path, _image_file_names(folder))


def _missing(folder: Path, data_dir: Path) -> DataError:
    return DataError(
        f"imagefolder: the folder {folder} does not exist. Create it with one sub-folder per "
        f"class holding image files ({', '.join(EXTENSIONS)}); there is no downloader for image "
        f"folders. Then run `selfsup data check imagefolder --data-dir {data_dir}`."
    )


def _unreadable(path: Path | str, exc: BaseException) -> DataError:
    return DataError(
        f"Cannot read the image file {path} ({type(exc).__name__}: {exc}). It is corrupt or not "
        "an image: delete or replace it (`selfsup data check imagefolder --data-dir DIR` lists "
        "every such file)."
    )


def _read_errors() -> tuple[type[BaseException], ...]:
    from PIL import Image

    return (OSError, ValueError, SyntaxError, Image.DecompressionBombError, RuntimeError)


class FileIndex:
    """The (path, label) list of a split packed into numpy arrays (no Python object per file)."""

    def __init__(self, folder: Path, class_dirs: Sequence[tuple[str, int]]) -> None:
        blob = bytearray()
        offsets = array("q", [0])
        labels = array("q")
        for name, label in class_dirs:
            for path in _image_file_names(folder / name):
                blob += os.fsencode(path)
                offsets.append(len(blob))
                labels.append(label)
        self.blob = np.frombuffer(bytes(blob), dtype=np.uint8)
        self.offsets = np.frombuffer(offsets.tobytes(), dtype=np.int64)
        self.labels = np.frombuffer(labels.tobytes(), dtype=np.int64)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def path(self, i: int) -> Path:
        start, stop = int(self.offsets[i]), int(self.offsets[i + 1])
        return Path(os.fsdecode(self.blob[start:stop].tobytes()))

    @property
    def nbytes(self) -> int:
        return int(self.blob.nbytes + self.offsets.nbytes + self.labels.nbytes)


# ------------------------------------------------------------------------------------- decoding
def open_rgb(path: Path) -> Any:
    """The full-resolution RGB PIL image of ``path``; DataError naming the file if unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.convert("RGB")  # forces the full decode while the file is open
    except _read_errors() as exc:
        raise _unreadable(path, exc) from None


def resized_side(width: int, height: int, size: int) -> tuple[int, int]:
    """(w, h) after resizing the shorter side to ``size`` (the longer one rounded)."""
    if width <= height:
        return size, max(1, int(round(height * size / width)))
    return max(1, int(round(width * size / height))), size


def center_view(img: Any, size: int) -> torch.Tensor:
    """uint8 (3, S, S): shorter side resized to S (PIL bilinear), centre crop S x S."""
    from PIL import Image

    w, h = img.size
    new_w, new_h = resized_side(w, h, size)
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.BILINEAR)
    left = int(round((new_w - size) / 2.0))
    top = int(round((new_h - size) / 2.0))
    return _to_tensor(img.crop((left, top, left + size, top + size)))


def _to_tensor(img: Any) -> torch.Tensor:
    arr = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def decode_image(path: Path, image_size: int) -> torch.Tensor:
    """Decode ``path`` to a uint8 (3, S, S) tensor: RGB, shorter side resized to S, center crop."""
    return center_view(open_rgb(path), image_size)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The crop seed of image ``index`` in ``epoch``: a pure function of the three numbers."""
    return (seed * _MIX[0] + epoch * _MIX[1] + index * _MIX[2] + 7) % (2**63 - 1)


def crop_boxes(
    width: int,
    height: int,
    n: int,
    scale: Sequence[float],
    ratio: Sequence[float],
    prob: float,
    seed: int,
) -> torch.Tensor:
    """``n`` crop boxes ``[top, left, h, w]`` of a ``width`` x ``height`` image, int64 (n, 4).

    Each is drawn, with probability ``prob``, by the algorithm of torchvision's
    ``RandomResizedCrop.get_params``: up to 10 tries of ``area = W H U(scale)``, ``r =
    exp(U(log ratio))``, ``w = round(sqrt(area r))``, ``h = round(sqrt(area / r))``, the first that
    fits placed uniformly; else the central crop clipped to the ratio range. Rows of -1 mean "no
    crop" (the evaluation view is used). The randomness is Python's ``random.Random(seed)`` (a few
    microseconds per image, where seeding torch's global generator costs hundreds).
    """
    rng = random.Random(seed)
    area = width * height
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    boxes = torch.full((n, 4), -1, dtype=torch.int64)
    for v in range(n):
        if prob < 1.0 and rng.random() >= prob:
            continue
        for _ in range(10):
            target = area * rng.uniform(scale[0], scale[1])
            aspect = math.exp(rng.uniform(lo, hi))
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top, left = rng.randint(0, height - h), rng.randint(0, width - w)
                boxes[v] = torch.tensor([top, left, h, w])
                break
        else:
            in_ratio = width / height
            if in_ratio < ratio[0]:
                w, h = width, int(round(width / ratio[0]))
            elif in_ratio > ratio[1]:
                w, h = int(round(height * ratio[1])), height
            else:
                w, h = width, height
            boxes[v] = torch.tensor([(height - h) // 2, (width - w) // 2, h, w])
    return boxes


class ImageFolderDataset:
    """Map-style streaming dataset: ``ds[i]`` -> (uint8 (3, S, S) evaluation view, int label)."""

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
        self.index = FileIndex(folder, [(name, index[name]) for name in split_classes])
        if len(self.index) == 0:
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

    def __len__(self) -> int:
        return len(self.index)

    def _position(self, index: int) -> int:
        n = len(self.index)
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {index} out of range for {n} images")
        return i

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        i = self._position(index)
        return decode_image(self.index.path(i), self.image_size), int(self.index.labels[i])

    def path(self, index: int) -> Path:
        """The file of sample ``index``."""
        return self.index.path(self._position(index))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return 3, self.image_size, self.image_size

    @property
    def labels(self) -> torch.Tensor:
        """int64 labels of all samples (no decoding needed)."""
        return torch.from_numpy(self.index.labels.copy())

    @property
    def has_labels(self) -> bool:
        return self.num_classes > 0

    def training_views(
        self, augment: Any, n_views: int, seed: int, decode: str = "workers", clean: bool = True
    ) -> FolderTrainingItems:
        """The map-style training items (keys ``(epoch, index)``) for ``n_views`` crops per image
        with the crop settings of ``augment`` (an :class:`~selfsup.data.augment.AugmentConfig`),
        plus the evaluation view when ``clean`` (or when the augmentation takes no crop)."""
        return FolderTrainingItems(self, augment, n_views, seed, decode, clean)


def takes_random_crop(augment: Any) -> bool:
    """Whether the augmentation has a random resized crop (else views start from the eval view)."""
    return float(augment.crop_prob) > 0 and [float(v) for v in augment.crop_scale] != [1.0, 1.0]


class FolderTrainingItems:
    """``items[(epoch, i)]`` -> what a DataLoader worker hands back for training image ``i``.

    ``decode == "workers"``: ``(clean uint8 (3, S, S) or None, crops uint8 (V, 3, S, S) or None,
    label)``, the crops cut from the full-resolution image with PIL (``crop`` then ``resize``,
    exactly what torchvision's ``RandomResizedCrop`` does to a PIL image), ``None`` crops when the
    augmentation takes none, ``None`` clean when nobody asked for it (it costs a resize of the
    whole image). ``decode == "device"``: ``(file bytes uint8 (B,), boxes (V, 4), label, index)``;
    :func:`decode_batch` finishes the job on the training device.
    """

    def __init__(
        self,
        dataset: ImageFolderDataset,
        augment: Any,
        n_views: int,
        seed: int,
        decode: str,
        clean: bool = True,
    ) -> None:
        if decode not in ("workers", "device"):
            raise ConfigError(f"data.decode must be workers or device, got {decode!r}.")
        from PIL import Image  # noqa: F401 - imported before the workers fork: shared memory

        self.dataset = dataset
        self.n_crops = n_views if takes_random_crop(augment) else 0
        self.clean = clean or not self.n_crops
        self.scale = [float(v) for v in augment.crop_scale]
        self.ratio = [float(v) for v in augment.crop_ratio]
        self.prob = float(augment.crop_prob)
        self.interpolation = str(augment.interpolation)
        self.seed = int(seed)
        self.decode = decode

    def __len__(self) -> int:
        return len(self.dataset)

    def boxes(self, width: int, height: int, epoch: int, i: int) -> torch.Tensor:
        return crop_boxes(
            width, height, self.n_crops, self.scale, self.ratio, self.prob,
            sample_seed(self.seed, epoch, i),
        )

    def __getitem__(self, key: tuple[int, int]) -> tuple[Any, ...]:
        epoch, i = int(key[0]), int(key[1])
        path = self.dataset.index.path(i)
        label = int(self.dataset.index.labels[i])
        if self.decode == "device":
            return self._raw(path, epoch, i, label)
        from PIL import Image

        img = open_rgb(path)
        size = self.dataset.image_size
        boxes = self.boxes(*img.size, epoch, i).tolist()
        no_crop = any(box[2] < 0 for box in boxes)  # crop_prob < 1: the evaluation view
        clean = center_view(img, size) if self.clean or no_crop else None
        if not self.n_crops:
            return clean, None, label
        resample = Image.NEAREST if self.interpolation == "nearest" else Image.BILINEAR
        crops = []
        for top, left, h, w in boxes:
            if h < 0:
                crops.append(clean)
                continue
            part = img.crop((left, top, left + w, top + h)).resize((size, size), resample)
            crops.append(_to_tensor(part))
        return (clean if self.clean else None), torch.stack(crops), label

    def _raw(self, path: Path, epoch: int, i: int, label: int) -> tuple[Any, ...]:
        from PIL import Image

        try:
            data = path.read_bytes()
            with Image.open(path) as img:  # header only: the size, nothing decoded
                width, height = img.size
        except _read_errors() as exc:
            raise _unreadable(path, exc) from None
        payload = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        return payload, self.boxes(width, height, epoch, i), label, i


def decode_batch(
    items: FolderTrainingItems,
    payloads: list[torch.Tensor],
    boxes: list[torch.Tensor],
    indices: list[int],
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Decode file bytes on ``device`` and cut the evaluation view and the crops there.

    JPEGs go through ``torchvision.io.decode_jpeg`` as one batch (nvJPEG on a GPU); other formats
    through ``decode_image`` on the CPU. Resizes are antialiased bilinear
    (``torch.nn.functional.interpolate``), which matches PIL's filter to a few grey levels.
    Returns ``(clean (N, 3, S, S) or None, crops (N, V, 3, S, S) or None)``, uint8 on
    ``device`` (clean as :class:`FolderTrainingItems` would hand it back).
    """
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    size = items.dataset.image_size
    is_jpeg = [bool(p.numel() > 2 and p[0] == 0xFF and p[1] == 0xD8) for p in payloads]
    images: list[torch.Tensor | None] = [None] * len(payloads)
    jpeg_pos = [k for k, j in enumerate(is_jpeg) if j]
    try:
        if jpeg_pos:
            decoded = decode_jpeg(
                [payloads[k] for k in jpeg_pos], mode=ImageReadMode.RGB, device=device
            )
            for k, img in zip(jpeg_pos, decoded, strict=True):
                images[k] = img
    except RuntimeError:
        pass  # a corrupt file in the batch: decode one by one below, to name it
    for k, img in enumerate(images):
        if img is not None:
            continue
        try:
            if is_jpeg[k]:
                images[k] = decode_jpeg(payloads[k], mode=ImageReadMode.RGB, device=device)
            else:
                images[k] = decode_image(payloads[k], mode=ImageReadMode.RGB).to(device)
        except RuntimeError as exc:
            raise _unreadable(items.dataset.index.path(indices[k]), exc) from None
    mode = "nearest" if items.interpolation == "nearest" else "bilinear"
    cleans, crops = [], []
    for img, box in zip(images, boxes, strict=True):
        assert img is not None
        rows = box.tolist()
        clean = None
        if items.clean or any(h < 0 for _, _, h, _ in rows):
            clean = _tensor_center_view(img, size)
            cleans.append(clean)
        views = []
        for top, left, h, w in rows:
            if h < 0:
                views.append(clean)
            else:
                views.append(_resize(img[:, top : top + h, left : left + w], (size, size), mode))
        if views:
            crops.append(torch.stack(views))
    clean_batch = torch.stack(cleans) if items.clean else None
    return clean_batch, (torch.stack(crops) if crops else None)


def _resize(img: torch.Tensor, hw: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    x = img[None].float()
    if mode == "nearest":
        out = torch.nn.functional.interpolate(x, size=hw, mode="nearest-exact")
    else:
        out = torch.nn.functional.interpolate(
            x, size=hw, mode="bilinear", align_corners=False, antialias=True
        )
    return out[0].round_().clamp_(0, 255).to(torch.uint8)


def _tensor_center_view(img: torch.Tensor, size: int) -> torch.Tensor:
    """:func:`center_view` for a decoded (3, H, W) uint8 tensor."""
    h, w = int(img.shape[1]), int(img.shape[2])
    new_w, new_h = resized_side(w, h, size)
    if (new_w, new_h) != (w, h):
        img = _resize(img, (new_h, new_w))
    left = int(round((new_w - size) / 2.0))
    top = int(round((new_h - size) / 2.0))
    return img[:, top : top + size, left : left + size].contiguous()


# --------------------------------------------------------------------------------- data check
def check_split(data_dir: Path, split: str, options: dict | None = None) -> int:
    """Open every image of ``split`` (header and, for PNG, its checksums); the number of images.

    Raises DataError naming up to five unreadable files (a ``.png`` that is not an image, a
    truncated header, ...). Full decodes are not done: a file whose pixel data alone is damaged
    is reported when training reaches it, by name.
    """
    from PIL import Image

    ds = ImageFolderDataset(Path(data_dir), split, options)
    bad: list[str] = []
    n_bad = 0
    for i in range(len(ds)):
        path = ds.index.path(i)
        try:
            with Image.open(path) as img:
                img.verify()
        except _read_errors() as exc:
            n_bad += 1
            if len(bad) < 5:
                bad.append(f"{path} ({type(exc).__name__}: {exc})")
    if n_bad:
        more = f" and {n_bad - len(bad)} more" if n_bad > len(bad) else ""
        raise DataError(
            f"imagefolder: {n_bad} of {len(ds)} files in {ds.folder} are not readable images: "
            f"{'; '.join(bad)}{more}. Delete or replace them."
        )
    return len(ds)


def folder_bytes(folder: Path) -> int:
    """Total size of the image files under ``folder``."""
    return sum(p.stat().st_size for p in iter_image_files(folder))


def load_imagefolder(data_dir: Path, split: str, options: dict | None = None) -> ImageFolderDataset:
    """Open split ``train`` or ``test`` (``test/`` or ``val/``) of an image folder."""
    return ImageFolderDataset(data_dir, split, options)


SPEC = DatasetSpec(
    name="imagefolder",
    description="Your own images: <root>/train/<class>/*.jpg|png|..., streamed from disk",
    folder=DEFAULT_ROOT,
    files=("train/", "test/ (or val/, optional)"),
    splits=("train", "test"),
    image_shape=None,
    num_classes=0,
    load=load_imagefolder,
    download=None,
    in_memory=False,
    notes="options: root (default 'imagefolder'), image_size (default 64); classes from train/",
    extra={
        "options": dict(OPTIONS),
        "class_folders": True,  # labelled by its class folders (num_classes depends on the data)
        "optional_splits": ("test",),
        "split_present": split_present,
    },
)
