"""Shared pieces of the factor datasets (dSprites, MPI3D): factor descriptions, streaming reads
of ``.npz`` members, and a memory-mapped dataset addressed by index arrays.

A factor dataset stores image ``i`` of a full grid of generative factors at the C-order index of
its factor classes (see :func:`selfsup.data.splits.unravel_factors`); splits are index arrays into
that grid (:func:`selfsup.data.splits.factor_split_indices`).
"""

from __future__ import annotations

import io
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from selfsup.errors import DataError

__all__ = [
    "FactorInfo",
    "MemmapFactorDataset",
    "augment_preset",
    "iter_npz_rows",
    "npz_member_header",
    "read_npz_array",
    "read_npz_object",
    "take_npz_rows",
]

CATEGORICAL = "categorical"
CONTINUOUS = "continuous"


@dataclass(frozen=True)
class FactorInfo:
    """The factors a dataset exposes in ``dataset.factors`` (class indices, one column each).

    ``kinds[f]`` is ``"categorical"`` (probed by classification, accuracy) or ``"continuous"``
    (probed by regression, R^2 of the factor value); ``values[f][c]`` is the value of class ``c``
    of factor ``f`` (the regression target).
    """

    names: tuple[str, ...]
    sizes: tuple[int, ...]
    kinds: tuple[str, ...]
    values: tuple[tuple[float, ...], ...]

    def __post_init__(self) -> None:
        n = len(self.names)
        if not (len(self.sizes) == len(self.kinds) == len(self.values) == n):
            raise ValueError("FactorInfo: names, sizes, kinds and values must have equal lengths")
        for name, size, kind, vals in zip(self.names, self.sizes, self.kinds, self.values,
                                          strict=True):
            if kind not in (CATEGORICAL, CONTINUOUS) or len(vals) != size:
                raise ValueError(f"FactorInfo: bad kind or value count for factor {name!r}")

    def factor_values(self, factors: torch.Tensor) -> torch.Tensor:
        """Values (N, F) float64 of the factor classes (N, F)."""
        cols = [
            torch.tensor(vals, dtype=torch.float64)[factors[:, f].long()]
            for f, vals in enumerate(self.values)
        ]
        return torch.stack(cols, dim=1)


# Every geometric / colour augmentation key at its identity value (normalization keys excluded).
_IDENTITY_AUGMENT: dict[str, Any] = {
    "crop_scale": [1.0, 1.0],
    "crop_ratio": [3.0 / 4.0, 4.0 / 3.0],
    "crop_prob": 1.0,
    "hflip": 0.0,
    "vflip": 0.0,
    "jitter": [0.0, 0.0, 0.0, 0.0],
    "jitter_prob": 0.0,
    "grayscale": 0.0,
    "blur_prob": 0.0,
    "solarize_prob": 0.0,
    "affine_degrees": 0.0,
    "affine_scale": [1.0, 1.0],
    "interpolation": "bilinear",
}


def augment_preset(**changes: Any) -> dict[str, Any]:
    """A complete ``augment`` section: the identity except for ``changes`` (a dataset's own
    augmentations, which replace a method's generic ones; see ``pipelines.build_config``)."""
    return {**_IDENTITY_AUGMENT, **changes}


# ------------------------------------------------------------------------------- npz members
def _corrupt(path: Path, what: str, fix: str) -> DataError:
    return DataError(f"{path} is not a valid file for this dataset: {what}. {fix}")


def _member_name(zf: zipfile.ZipFile, path: Path, key: str, fix: str) -> str:
    names = zf.namelist()
    for candidate in (f"{key}.npy", key):
        if candidate in names:
            return candidate
    keys = sorted(n[:-4] if n.endswith(".npy") else n for n in names)
    raise _corrupt(path, f"it has no array {key!r} (its arrays are {keys})", fix)


def _open_zip(path: Path, fix: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except FileNotFoundError:
        raise DataError(f"The file {path} does not exist. {fix}") from None
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise _corrupt(path, f"it is not a readable .npz (zip) archive ({exc}); it may be "
                       "truncated", fix) from None


def _read_header(handle: Any, path: Path, key: str, fix: str) -> tuple[tuple[int, ...], bool,
                                                                          np.dtype]:
    try:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(handle)
        return np.lib.format.read_array_header_2_0(handle)
    except (ValueError, OSError, EOFError, zlib.error, zipfile.BadZipFile) as exc:
        raise _corrupt(path, f"the array {key!r} has no valid .npy header ({exc})", fix) from None


def npz_member_header(path: Path, key: str, fix: str) -> tuple[tuple[int, ...], np.dtype]:
    """``(shape, dtype)`` of array ``key`` of an ``.npz`` file, reading only its header."""
    zf = _open_zip(path, fix)
    with zf:
        name = _member_name(zf, path, key, fix)
        try:
            with zf.open(name) as handle:
                shape, _, dtype = _read_header(handle, path, key, fix)
        except (zipfile.BadZipFile, OSError, zlib.error, EOFError) as exc:
            raise _corrupt(path, f"the array {key!r} cannot be read ({exc})", fix) from None
    return tuple(int(s) for s in shape), dtype


def iter_npz_rows(
    path: Path, key: str, fix: str, chunk_rows: int = 4096
) -> Iterator[tuple[int, np.ndarray]]:
    """Stream array ``key`` of an ``.npz`` (stored or deflated) in chunks of leading-axis rows.

    Yields ``(start_row, rows)``; memory stays at one chunk. A member shorter than its header
    promises, a CRC mismatch or a damaged archive raises DataError naming ``fix``.
    """
    zf = _open_zip(path, fix)
    with zf:
        name = _member_name(zf, path, key, fix)
        try:
            with zf.open(name) as handle:
                shape, fortran, dtype = _read_header(handle, path, key, fix)
                if dtype.hasobject:
                    raise _corrupt(path, f"the array {key!r} holds Python objects", fix)
                if fortran and len(shape) > 1:
                    raise _corrupt(path, f"the array {key!r} is stored in Fortran order", fix)
                if not shape:
                    raise _corrupt(path, f"the array {key!r} is a scalar", fix)
                row_shape = tuple(shape[1:])
                row_bytes = int(np.prod(row_shape, dtype=np.int64)) * dtype.itemsize
                n = int(shape[0])
                start = 0
                while start < n:
                    count = min(chunk_rows, n - start)
                    want = count * row_bytes
                    data = handle.read(want)
                    if len(data) != want:
                        raise _corrupt(
                            path,
                            f"the array {key!r} is truncated (its header promises {n} rows; "
                            f"the data ends in row {start + len(data) // max(row_bytes, 1)})",
                            fix,
                        )
                    rows = np.frombuffer(data, dtype=dtype).reshape((count, *row_shape))
                    yield start, rows
                    start += count
                if handle.read(1):
                    raise _corrupt(path, f"the array {key!r} has extra bytes after its data", fix)
        except DataError:
            raise
        except (zipfile.BadZipFile, OSError, zlib.error, EOFError, ValueError) as exc:
            raise _corrupt(path, f"the array {key!r} cannot be read ({exc}); the file is "
                           "truncated or damaged", fix) from None


def read_npz_array(path: Path, key: str, fix: str) -> np.ndarray:
    """The whole (non-object) array ``key`` of an ``.npz`` (for small arrays)."""
    parts = [rows for _, rows in iter_npz_rows(path, key, fix, chunk_rows=1 << 16)]
    shape, dtype = npz_member_header(path, key, fix)
    if not parts:
        return np.zeros(shape, dtype=dtype)
    return np.concatenate(parts).reshape(shape)


def take_npz_rows(
    path: Path, key: str, indices: np.ndarray, fix: str, chunk_rows: int = 8192
) -> np.ndarray:
    """Rows ``indices`` (sorted, unique) of array ``key``, streaming the member once."""
    idx = np.asarray(indices, dtype=np.int64)
    shape, dtype = npz_member_header(path, key, fix)
    out = np.empty((idx.size, *shape[1:]), dtype=dtype)
    if idx.size and (idx[0] < 0 or idx[-1] >= shape[0]):
        raise _corrupt(path, f"the array {key!r} has only {shape[0]} rows", fix)
    for start, rows in iter_npz_rows(path, key, fix, chunk_rows):
        lo, hi = np.searchsorted(idx, [start, start + rows.shape[0]])
        if hi > lo:
            out[lo:hi] = rows[idx[lo:hi] - start]
        if hi == idx.size:
            break
    return out


def read_npz_object(path: Path, key: str, fix: str) -> Any:
    """The pickled object array ``key`` of an ``.npz``, unpickled with a restricted unpickler
    that resolves only numpy array/dtype reconstruction (no arbitrary code)."""
    from selfsup.data.cifar import _RestrictedUnpickler

    zf = _open_zip(path, fix)
    with zf:
        name = _member_name(zf, path, key, fix)
        try:
            with zf.open(name) as handle:
                shape, _, dtype = _read_header(handle, path, key, fix)
                payload = handle.read()
        except (zipfile.BadZipFile, OSError, zlib.error, EOFError) as exc:
            raise _corrupt(path, f"the array {key!r} cannot be read ({exc})", fix) from None
    if not dtype.hasobject:
        raise _corrupt(path, f"{key!r} is not a pickled object array", fix)
    try:
        obj = _RestrictedUnpickler(io.BytesIO(payload), encoding="latin1").load()
    except MemoryError:
        raise _corrupt(path, f"unpickling {key!r} asks for too much memory", fix) from None
    except Exception as exc:  # noqa: BLE001 - any failure inside pickle: corrupt or hostile file
        raise _corrupt(path, f"{key!r} cannot be unpickled safely ({type(exc).__name__}: {exc})",
                       fix) from None
    if isinstance(obj, np.ndarray) and obj.dtype.hasobject and obj.shape == () and shape == ():
        return obj.item()
    return obj


# ------------------------------------------------------------------------- memmapped dataset
class MemmapFactorDataset:
    """A split of a memory-mapped image grid: ``ds[i]`` -> (uint8 (C, H, W), int label).

    ``images`` is a (possibly memory-mapped) uint8 array (N_grid, H, W, C) or (N_grid, H, W);
    ``indices`` (n,) the grid rows of this split. ``factors`` (n, F) int64 class indices,
    ``labels`` (n,) int64. Only the rows asked for are read from disk.
    """

    def __init__(
        self,
        images: np.ndarray,
        indices: torch.Tensor,
        factors: torch.Tensor,
        labels: torch.Tensor,
        num_classes: int,
        name: str,
        split: str,
        factor_names: list[str],
        class_names: list[str] | None = None,
    ) -> None:
        self.images = images
        self.indices = indices.long()
        self.factors = factors
        self.labels = labels.long()
        self.num_classes = num_classes
        self.name = name
        self.split = split
        self.factor_names = factor_names
        self.class_names = class_names

    def __len__(self) -> int:
        return int(self.indices.numel())

    @property
    def image_shape(self) -> tuple[int, int, int]:
        shape = self.images.shape[1:]
        if len(shape) == 2:
            return 1, int(shape[0]), int(shape[1])
        return int(shape[2]), int(shape[0]), int(shape[1])

    def subset(self, positions: torch.Tensor) -> MemmapFactorDataset:
        """The samples at ``positions`` of this split (index arrays only; no image is read)."""
        pos = torch.as_tensor(positions).long()
        return MemmapFactorDataset(
            self.images, self.indices[pos], self.factors[pos], self.labels[pos],
            self.num_classes, self.name, self.split, self.factor_names, self.class_names,
        )

    def _to_chw(self, rows: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(rows))
        if t.ndim == 3:
            return t.unsqueeze(1)
        return t.permute(0, 3, 1, 2).contiguous()

    def get_batch(self, positions: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) of the split positions ``positions`` (read in grid order)."""
        pos = torch.as_tensor(positions).long()
        rows = self.indices[pos].numpy()
        order = np.argsort(rows, kind="stable")
        data = self.images[rows[order]]
        out = torch.empty((len(rows), *self.image_shape), dtype=torch.uint8)
        out[torch.from_numpy(order)] = self._to_chw(data)
        return out

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        i = int(index)
        if not -len(self) <= i < len(self):
            raise IndexError(index)
        image = self._to_chw(self.images[int(self.indices[i])][None])[0]
        return image, int(self.labels[i])
