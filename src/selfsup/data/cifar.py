"""CIFAR-10 from the standard python pickles, read with a restricted unpickler.

Layout (what torchvision writes): ``DIR/cifar-10-batches-py/`` holding ``data_batch_1`` ..
``data_batch_5``, ``test_batch`` and ``batches.meta``. Each batch is a pickled dict with
``b"data"`` (uint8 array (N, 3072), each row one image in row-major C, H, W order) and
``b"labels"`` (list of N ints in 0..9); ``batches.meta`` holds ``b"label_names"``.

The files are untrusted input, so the unpickler only resolves the handful of globals needed to
rebuild numpy arrays; anything else (e.g. ``os.system``) is rejected without being executed.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from selfsup.data.base import DatasetSpec, ImageDataset
from selfsup.errors import DataError

FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
META_FILE = "batches.meta"
FILES = TRAIN_FILES + TEST_FILES + (META_FILE,)
SPLIT_FILES = {"train": TRAIN_FILES, "test": TEST_FILES}
SPLIT_SIZES = {"train": 50000, "test": 10000}
NUM_CLASSES = 10
IMAGE_SHAPE = (3, 32, 32)
DEFAULT_CLASS_NAMES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]

# (module, name) pairs the unpickler may resolve: numpy array/dtype reconstruction (numpy 1.x and
# 2.x module paths) and the codec helper that protocol-2 pickles use to encode bytes.
_ALLOWED_GLOBALS = frozenset(
    [
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    ]
)


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that refuses every global outside :data:`_ALLOWED_GLOBALS`."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            if module.startswith("numpy.core.") and hasattr(np, "_core"):
                module = "numpy._core." + module[len("numpy.core.") :]  # avoid the alias warning
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed")


def safe_unpickle(data: bytes, source: str) -> Any:
    """Unpickle untrusted ``data`` (``encoding="bytes"``) allowing only numpy-array globals."""
    try:
        return _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except DataError:
        raise
    except MemoryError:
        raise DataError(
            f"{source} asks for more memory than is available while unpickling; it is corrupt. "
            "Delete it and download CIFAR-10 again."
        ) from None
    except Exception as exc:  # any failure inside pickle means a corrupt or hostile file
        raise DataError(
            f"{source} is not a valid CIFAR-10 pickle ({type(exc).__name__}: {exc}). Delete the "
            "file and download CIFAR-10 again (e.g. with --download), then verify with `selfsup "
            "data check cifar10`."
        ) from None


def _read(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(
            f"The CIFAR-10 file {path} does not exist. Pass --download to fetch CIFAR-10, then "
            "verify with `selfsup data check cifar10`."
        ) from None
    except OSError as exc:
        raise DataError(f"Cannot read {path}: {exc}. Check the file's permissions.") from None


def _get(d: dict, key: str) -> Any:
    """``d[b"key"]`` or ``d["key"]`` (files pickled by Python 3 may use str keys)."""
    if key.encode() in d:
        return d[key.encode()]
    return d.get(key)


def load_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one batch file: images uint8 (N, 3, 32, 32) and labels int64 (N,)."""
    source = str(path)
    obj = safe_unpickle(_read(path), source)

    def bad(what: str) -> DataError:
        return DataError(
            f"{source} is not a valid CIFAR-10 batch: {what}. Delete the file and download "
            "CIFAR-10 again, then verify with `selfsup data check cifar10`."
        )

    if not isinstance(obj, dict):
        raise bad(f"it holds a {type(obj).__name__}, expected a dict")
    data = _get(obj, "data")
    labels = _get(obj, "labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        desc = (
            f"a {data.dtype} array of shape {data.shape}"
            if isinstance(data, np.ndarray)
            else type(data).__name__
        )
        raise bad(f"'data' must be a uint8 array of shape (N, 3072), got {desc}")
    if data.shape[1] != 3072:
        raise bad(f"'data' must have 3072 columns (3x32x32), got shape {data.shape}")
    flat = isinstance(labels, (list, tuple)) or (
        isinstance(labels, np.ndarray) and labels.ndim == 1
    )
    if not flat:
        raise bad(f"'labels' must be a flat list of ints, got {type(labels).__name__}")
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in labels):
        raise bad("'labels' must contain only integers")
    try:
        lab = np.asarray([int(v) for v in labels], dtype=np.int64).reshape(-1)
    except (OverflowError, ValueError, TypeError) as exc:
        raise bad(f"'labels' cannot be read as integers ({exc})") from None
    if lab.shape[0] != data.shape[0]:
        raise bad(f"{data.shape[0]} images but {lab.shape[0]} labels")
    if lab.size and (lab.min() < 0 or lab.max() >= NUM_CLASSES):
        raise bad(f"labels must be in 0..9, found {int(lab.min())}..{int(lab.max())}")
    images = np.ascontiguousarray(data).reshape(-1, *IMAGE_SHAPE)
    return images, lab


def load_class_names(folder: Path) -> list[str]:
    """Class names from ``batches.meta`` when present, else the standard CIFAR-10 names."""
    path = Path(folder) / META_FILE
    if not path.is_file():
        return list(DEFAULT_CLASS_NAMES)
    obj = safe_unpickle(_read(path), str(path))
    names = _get(obj, "label_names") if isinstance(obj, dict) else None
    if (
        not isinstance(names, (list, tuple))
        or len(names) != NUM_CLASSES
        or not all(isinstance(n, (bytes, str)) for n in names)
    ):
        raise DataError(
            f"{path} is not a valid CIFAR-10 meta file: expected 'label_names', a list of 10 "
            "strings. Delete the file and download CIFAR-10 again."
        )
    return [n.decode("utf-8", errors="replace") if isinstance(n, bytes) else n for n in names]


def load_cifar10(data_dir: Path, split: str, options: dict | None = None) -> ImageDataset:
    """Load split ``train`` (data_batch_1..5) or ``test`` (test_batch) of CIFAR-10."""
    folder = Path(data_dir) / FOLDER
    missing = [f for f in SPLIT_FILES[split] if not (folder / f).is_file()]
    if missing:
        raise DataError(
            f"cifar10: {', '.join(missing)} missing from {folder}. Pass --download to fetch "
            f"CIFAR-10, then run `selfsup data check cifar10 --data-dir {data_dir}`."
        )
    parts = [load_cifar_batch(folder / f) for f in SPLIT_FILES[split]]
    images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    labels = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    return ImageDataset(
        images=torch.from_numpy(np.array(images, dtype=np.uint8, copy=True)),
        labels=torch.from_numpy(labels.astype(np.int64)),
        num_classes=NUM_CLASSES,
        name="cifar10",
        split=split,
        class_names=load_class_names(folder),
    )


def _download(data_dir: Path) -> None:
    from torchvision import datasets

    datasets.CIFAR10(str(data_dir), train=True, download=True)


SPEC = DatasetSpec(
    name="cifar10",
    description="CIFAR-10 natural images, 32x32 RGB, 10 classes",
    folder=FOLDER,
    files=FILES,
    splits=("train", "test"),
    image_shape=IMAGE_SHAPE,
    num_classes=NUM_CLASSES,
    load=load_cifar10,
    download=_download,
    notes="python pickles; batches.meta optional (class names)",
    extra={"split_files": SPLIT_FILES, "split_sizes": SPLIT_SIZES},
)
