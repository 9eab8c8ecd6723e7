"""Writers of tiny but real-format dataset files for tests (plain functions, no pytest fixtures).

Every image of class ``k`` carries a bright block whose position depends on ``k`` (row band
``k % 4``; full width, the two outer quarters or the centre half for ``k // 4`` = 0, 1, 2) on top of
dark noise. The patterns are left-right symmetric, so they survive horizontal flips, and are easy
for tiny models and linear probes to separate. Each writer returns the arrays it wrote.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np

CIFAR_CLASS_NAMES = [
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
STL10_CLASS_NAMES = [
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


def balanced_labels(n: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` labels cycling through all classes, shuffled (int64)."""
    return rng.permutation(np.arange(n) % num_classes).astype(np.int64)


def pattern_images(
    labels: np.ndarray, channels: int, height: int, width: int, rng: np.random.Generator
) -> np.ndarray:
    """uint8 (N, C, H, W) images: noise in [0, 64) plus a bright class-dependent block."""
    n = len(labels)
    images = rng.integers(0, 64, size=(n, channels, height, width), dtype=np.uint8)
    band = max(1, height // 4)
    quarter = max(1, width // 4)
    for i, k in enumerate(np.asarray(labels).tolist()):
        rows = slice((k % 4) * band, (k % 4 + 1) * band)
        style = (k // 4) % 3
        value = rng.integers(192, 256, dtype=np.uint8)
        if style == 0:
            images[i, :, rows, :] = value
        elif style == 1:
            images[i, :, rows, :quarter] = value
            images[i, :, rows, width - quarter :] = value
        else:
            images[i, :, rows, quarter : width - quarter] = value
    return images


# ----------------------------------------------------------------------------------------- IDX


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array: magic 0x0000 08 <ndim>, big-endian dims, payload."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def write_idx(path: str | Path, array: np.ndarray, gz: bool = False) -> Path:
    """Write ``array`` as IDX to ``path`` (``path + '.gz'`` gzipped when ``gz``)."""
    path = Path(path)
    data = idx_bytes(array)
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_idx_dataset(
    data_dir: str | Path,
    name: str = "mnist",
    n_train: int = 64,
    n_test: int = 32,
    gz: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """Write MNIST-format files to ``data_dir/MNIST/raw`` (``FashionMNIST/raw`` for fashion).

    Returns ``{"folder": Path, "train": {"images": (N,28,28), "labels": (N,)}, "test": ...}``
    (uint8 arrays exactly as written).
    """
    sub = {"mnist": "MNIST", "fashionmnist": "FashionMNIST"}[name]
    folder = Path(data_dir) / sub / "raw"
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {"folder": folder}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        labels = balanced_labels(n, 10, rng)
        images = pattern_images(labels, 1, 28, 28, rng)[:, 0]
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images, gz=gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels.astype(np.uint8), gz=gz)
        out[split] = {"images": images, "labels": labels.astype(np.uint8)}
    return out


# --------------------------------------------------------------------------------------- CIFAR


def _py2_emit(obj: Any, out: bytearray) -> None:
    P = pickle
    if isinstance(obj, bytes):  # a Python 2 ``str``
        if len(obj) < 256:
            out += P.SHORT_BINSTRING + bytes([len(obj)]) + obj
        else:
            out += P.BINSTRING + struct.pack("<i", len(obj)) + obj
    elif obj is None:
        out += P.NONE
    elif isinstance(obj, bool):
        out += P.NEWTRUE if obj else P.NEWFALSE
    elif isinstance(obj, int):
        out += P.BININT + struct.pack("<i", obj)
    elif isinstance(obj, list):
        out += P.EMPTY_LIST
        if obj:
            out += P.MARK
            for v in obj:
                _py2_emit(v, out)
            out += P.APPENDS
    elif isinstance(obj, tuple):
        out += P.MARK
        for v in obj:
            _py2_emit(v, out)
        out += P.TUPLE
    elif isinstance(obj, dict):
        out += P.EMPTY_DICT + P.MARK
        for k, v in obj.items():
            _py2_emit(k, out)
            _py2_emit(v, out)
        out += P.SETITEMS
    elif isinstance(obj, np.ndarray) and obj.dtype == np.uint8:
        # numpy.core.multiarray._reconstruct(ndarray, (0,), 'b') then BUILD with the array state
        out += b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
        _py2_emit((0,), out)
        _py2_emit(b"b", out)
        out += P.TUPLE3 + P.REDUCE + P.MARK
        _py2_emit(1, out)
        _py2_emit(tuple(int(d) for d in obj.shape), out)
        out += b"cnumpy\ndtype\n"
        _py2_emit((b"u1", 0, 1), out)
        out += P.REDUCE
        _py2_emit((3, b"|", None, None, None, -1, -1, 0), out)
        out += P.BUILD
        _py2_emit(False, out)
        _py2_emit(np.ascontiguousarray(obj).tobytes(), out)
        out += P.TUPLE + P.BUILD
    else:
        raise TypeError(f"cannot write {type(obj).__name__} as a Python 2 pickle")


def py2_pickle_bytes(obj: Any) -> bytes:
    """``obj`` pickled as Python 2's cPickle (protocol 2) would: ``bytes`` become py2 ``str``.

    Supports dict, list, tuple, int, bool, None, bytes and uint8 numpy arrays. Loading with
    ``encoding="bytes"`` gives bytes keys, ``encoding="latin1"`` (torchvision) gives str keys,
    exactly as with the real CIFAR-10 files.
    """
    out = bytearray(pickle.PROTO + b"\x02")
    _py2_emit(obj, out)
    out += pickle.STOP
    return bytes(out)


def cifar_batch_bytes(images: np.ndarray, labels: Any, protocol: int | None = None) -> bytes:
    """A pickled CIFAR-10 batch dict (``data`` uint8 (N, 3072), ``labels`` list of ints).

    ``protocol=None`` writes a Python-2 style pickle like the real files; an int uses Python 3's
    pickle with that protocol (and bytes keys).
    """
    images = np.ascontiguousarray(images, dtype=np.uint8)
    batch = {
        b"batch_label": b"selfsup test batch",
        b"labels": [int(v) for v in labels],
        b"data": images.reshape(images.shape[0], -1),
        b"filenames": [f"img_{i}.png".encode() for i in range(images.shape[0])],
    }
    if protocol is None:
        return py2_pickle_bytes(batch)
    return pickle.dumps(batch, protocol=protocol)


def write_cifar10(data_dir: str | Path, n_per_batch: int = 20, seed: int = 0) -> dict[str, Any]:
    """Write ``data_dir/cifar-10-batches-py`` (5 train batches, test batch, batches.meta).

    Returns ``{"folder", "train": {"images": (5n,3,32,32), "labels"}, "test": {...},
    "class_names"}``.
    """
    folder = Path(data_dir) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    train_images, train_labels = [], []
    for i in range(1, 6):
        labels = balanced_labels(n_per_batch, 10, rng)
        images = pattern_images(labels, 3, 32, 32, rng)
        (folder / f"data_batch_{i}").write_bytes(cifar_batch_bytes(images, labels))
        train_images.append(images)
        train_labels.append(labels)
    test_labels = balanced_labels(n_per_batch, 10, rng)
    test_images = pattern_images(test_labels, 3, 32, 32, rng)
    (folder / "test_batch").write_bytes(cifar_batch_bytes(test_images, test_labels))
    meta = {
        b"label_names": [n.encode() for n in CIFAR_CLASS_NAMES],
        b"num_cases_per_batch": n_per_batch,
        b"num_vis": 3072,
    }
    (folder / "batches.meta").write_bytes(py2_pickle_bytes(meta))
    return {
        "folder": folder,
        "train": {"images": np.concatenate(train_images), "labels": np.concatenate(train_labels)},
        "test": {"images": test_images, "labels": test_labels},
        "class_names": list(CIFAR_CLASS_NAMES),
    }


# --------------------------------------------------------------------------------------- STL-10


def stl_x_bytes(images: np.ndarray) -> bytes:
    """STL-10 ``*_X.bin`` bytes of uint8 (N, 3, 96, 96) images (each channel column-major)."""
    return np.ascontiguousarray(np.asarray(images, dtype=np.uint8).transpose(0, 1, 3, 2)).tobytes()


def write_stl10(
    data_dir: str | Path,
    n_train: int = 20,
    n_test: int = 20,
    n_unlabeled: int = 10,
    seed: int = 0,
    train_images: np.ndarray | None = None,
) -> dict[str, Any]:
    """Write ``data_dir/stl10_binary`` (train/test X and y, unlabeled X, class_names.txt).

    ``train_images`` (uint8 (n_train, 3, 96, 96)) overrides the generated train images. Returns
    ``{"folder", "train"|"test"|"unlabeled": {"images", "labels" (0..9, -1)}, "class_names"}``.
    """
    folder = Path(data_dir) / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {"folder": folder, "class_names": list(STL10_CLASS_NAMES)}
    for split, n in (("train", n_train), ("test", n_test)):
        labels = balanced_labels(n, 10, rng)
        images = pattern_images(labels, 3, 96, 96, rng)
        if split == "train" and train_images is not None:
            images = np.asarray(train_images, dtype=np.uint8)
            assert images.shape == (n, 3, 96, 96)
        (folder / f"{split}_X.bin").write_bytes(stl_x_bytes(images))
        (folder / f"{split}_y.bin").write_bytes((labels + 1).astype(np.uint8).tobytes())
        out[split] = {"images": images, "labels": labels}
    unl_labels = balanced_labels(n_unlabeled, 10, rng)
    unl_images = pattern_images(unl_labels, 3, 96, 96, rng)
    (folder / "unlabeled_X.bin").write_bytes(stl_x_bytes(unl_images))
    out["unlabeled"] = {"images": unl_images, "labels": np.full(n_unlabeled, -1, dtype=np.int64)}
    (folder / "class_names.txt").write_text("\n".join(STL10_CLASS_NAMES) + "\n")
    return out


# ---------------------------------------------------------------------------------- image folder


def write_imagefolder(
    data_dir: str | Path,
    classes: tuple[str, ...] = ("a", "b", "c"),
    n_per_class: int = 4,
    size: int = 20,
    root: str = "imagefolder",
    test_dir: str = "test",
    n_test_per_class: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Write PNGs to ``data_dir/root/{train,test_dir}/<class>/NNNN.png`` (size x size RGB).

    The i-th class in sorted order gets label ``i`` and its pattern. Returns ``{"folder", "classes",
    "train"|"test": {"images": (N,3,size,size), "labels", "paths"}}`` in the loader's order
    (sorted class names, then file names). ``test_dir=None`` writes no test split.
    """
    from PIL import Image

    folder = Path(data_dir) / root
    rng = np.random.default_rng(seed)
    order = sorted(range(len(classes)), key=lambda i: classes[i])
    out: dict[str, Any] = {"folder": folder, "classes": sorted(classes)}
    n_test = n_per_class if n_test_per_class is None else n_test_per_class
    splits = [("train", "train", n_per_class)]
    if test_dir is not None:
        splits.append(("test", test_dir, n_test))
    for split, sub, n in splits:
        images_all, labels_all, paths = [], [], []
        for label, ci in enumerate(order):
            cdir = folder / sub / classes[ci]
            cdir.mkdir(parents=True, exist_ok=True)
            labels = np.full(n, label, dtype=np.int64)
            images = pattern_images(labels, 3, size, size, rng)
            for j in range(n):
                path = cdir / f"{j:04d}.png"
                Image.fromarray(np.ascontiguousarray(images[j].transpose(1, 2, 0))).save(path)
                paths.append(path)
            images_all.append(images)
            labels_all.append(np.full(n, label, dtype=np.int64))
        out[split] = {
            "images": np.concatenate(images_all),
            "labels": np.concatenate(labels_all),
            "paths": paths,
        }
    return out


CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose "
    "Black_Hair Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee "
    "Gray_Hair Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard "
    "Oval_Face Pale_Skin Pointy_Nose Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair "
    "Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young"
).split()


def write_celeba(
    data_dir: str | Path,
    partitions: tuple[int, ...] = (0,) * 8 + (1,) * 3 + (2,) * 5,
    seed: int = 0,
) -> dict[str, Any]:
    """Write torchvision's CelebA layout: 178x218 JPEGs and the attribute/partition lists.

    Returns ``{"folder", "names", "attributes" (N, 40) in {-1, 1}, "partitions", "images"
    (N, 218, 178, 3) uint8 as written}``. Hair attributes cycle through none / one / two positives.
    """
    from PIL import Image

    folder = Path(data_dir) / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n = len(partitions)
    names = [f"{i + 1:06d}.jpg" for i in range(n)]
    attributes = np.where(rng.random((n, 40)) < 0.3, 1, -1)
    hair = (8, 9, 11, 17)
    attributes[:, hair] = -1
    for i in range(n):
        kind = i % 6
        if kind < 4:
            attributes[i, hair[kind]] = 1  # exactly one colour
        elif kind == 5:
            attributes[i, [hair[i % 4], hair[(i + 1) % 4]]] = 1  # two colours: ambiguous
    yy, xx = np.mgrid[0:218, 0:178]
    images = np.empty((n, 218, 178, 3), dtype=np.uint8)
    for i in range(n):
        base = rng.uniform(40, 200, size=3)
        ramp = 40 * np.sin(xx / (10 + i) + yy / 23)[..., None]
        images[i] = np.clip(base + ramp, 0, 255).astype(np.uint8)
        Image.fromarray(images[i]).save(folder / "img_align_celeba" / names[i], quality=95)
    lines = [str(n), " ".join(CELEBA_ATTRIBUTES) + " "]
    lines += [
        f"{name} " + " ".join(f"{v:2d}" for v in row)
        for name, row in zip(names, attributes, strict=True)
    ]
    (folder / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (folder / "list_eval_partition.txt").write_text(
        "".join(f"{name} {p}\n" for name, p in zip(names, partitions, strict=True))
    )
    return {"folder": folder, "names": names, "attributes": attributes,
            "partitions": np.array(partitions), "images": images}
