"""dSprites: the official ``.npz`` file, and a procedural re-rendering of the same factor grid.

Grid (C order over the factor classes, sizes ``[1, 3, 6, 40, 32, 32]``): image index
``i = shape * 245760 + scale * 40960 + orientation * 1024 + posX * 32 + posY`` (colour has one
value). Factor values: shape 1, 2, 3 (square, ellipse, heart); scale ``linspace(0.5, 1, 6)``;
orientation ``linspace(0, 2 pi, 40)``; posX, posY ``linspace(0, 1, 32)``.

``dsprites`` reads ``DIR/dsprites/dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz`` (arrays
``imgs`` (737280, 64, 64) uint8 0/1, ``latents_values`` and ``latents_classes`` (737280, 6), and
the pickled ``metadata`` dict). Only ``metadata`` is unpickled, with a restricted unpickler, and
its factor names and sizes are validated; ``latents_classes`` must follow the index formula above.
``imgs`` is streamed and only the rows of the requested split are kept.

``dsprites-procedural`` needs no file: it RE-RENDERS the same grid (it is not the original pixels).
Each of the 3 x 6 x 40 (shape, scale, orientation) sprites is rasterised once on a 32 x 32 patch by
testing pixel centres against an implicit shape (rotated by the orientation, counter-clockwise,
and scaled by the scale; radius 10 px at scale 1):

- square ``max(|p|, |q|) <= 0.8``; ellipse ``p^2 + (q / 0.5)^2 <= 1``;
- heart ``(a^2 + b^2 - 1)^3 - a^2 b^3 <= 0`` with ``a = 1.1 p``, ``b = 1.1 q + 0.118``,

where ``(p, q)`` are the sprite's own coordinates (q pointing up). The patch is pasted with its
centre at ``16 + 31 * posX`` horizontally and ``16 + 31 * posY`` vertically (downwards), in image
coordinates where pixel ``i`` covers ``[i, i + 1)``, so neighbouring positions are exactly one
pixel apart. Images are binary (0 or 255), rendered
vectorised for exactly the indices a split needs (about a second per 100k images).

Both expose ``factors`` (N, 5) class indices of shape, scale, orientation, posX, posY (label =
shape); shape and orientation are probed by classification, scale, posX and posY by regression.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from selfsup.data.base import DatasetSpec, ImageDataset
from selfsup.data.factor_data import (
    CATEGORICAL,
    CONTINUOUS,
    FactorInfo,
    augment_preset,
    npz_member_header,
    read_npz_array,
    read_npz_object,
    take_npz_rows,
)
from selfsup.data.splits import (
    DSPRITES_SIZES,
    FACTOR_SPLITS,
    factor_split_indices,
    subsample_positions,
    unravel_factors,
)
from selfsup.errors import DataError

FOLDER = "dsprites"
FILE = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
IMAGE_SIZE = 64
PATCH = 32
RADIUS = 10.0  # sprite radius in pixels at scale 1
LATENT_NAMES = ("color", "shape", "scale", "orientation", "posX", "posY")
SHAPE_NAMES = ["square", "ellipse", "heart"]
FACTOR_NAMES = ["shape", "scale", "orientation", "posX", "posY"]
FACTOR_KINDS = (CATEGORICAL, CONTINUOUS, CATEGORICAL, CONTINUOUS, CONTINUOUS)
OPTIONS = {"split_scheme": "ood", "ood_k": 0, "heldout_fraction": 0.1,
           "heldout_split": "fraction", "n_train": 0}
# The grid sizes the loaders expect (tests substitute a smaller grid here).
GRID_SIZES: tuple[int, ...] = DSPRITES_SIZES
FIX = (
    "Download the official dSprites file (dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz from "
    "github.com/deepmind/dsprites-dataset) into DIR/dsprites/, or train on the file-free "
    "re-rendering with --dataset dsprites-procedural."
)


def factor_values(sizes: tuple[int, ...]) -> dict[str, np.ndarray]:
    """The value of every class of every factor: shape 1..3, the linspaces of the module doc."""
    return {
        "color": np.ones(sizes[0]),
        "shape": np.arange(1, sizes[1] + 1, dtype=np.float64),
        "scale": np.linspace(0.5, 1.0, sizes[2]),
        "orientation": np.linspace(0.0, 2 * math.pi, sizes[3]),
        "posX": np.linspace(0.0, 1.0, sizes[4]),
        "posY": np.linspace(0.0, 1.0, sizes[5]),
    }


def factor_info(sizes: tuple[int, ...] | None = None) -> FactorInfo:
    sizes = tuple(GRID_SIZES if sizes is None else sizes)
    values = factor_values(sizes)
    return FactorInfo(
        names=tuple(FACTOR_NAMES),
        sizes=tuple(sizes[1:]),
        kinds=FACTOR_KINDS,
        values=tuple(tuple(float(v) for v in values[n]) for n in FACTOR_NAMES),
    )


# -------------------------------------------------------------------------------- rendering
def render_sprites(shape: np.ndarray, scale: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Binary 32 x 32 patches (M, 32, 32) bool of sprites with shape ids 0..2 (square, ellipse,
    heart), scales and counter-clockwise angles (radians), centred at patch coordinate 16."""
    shape = np.asarray(shape, dtype=np.int64)
    scale = np.asarray(scale, dtype=np.float64)[:, None, None]
    angle = np.asarray(angle, dtype=np.float64)[:, None, None]
    t = np.arange(PATCH, dtype=np.float64) + 0.5 - PATCH / 2
    dx = t[None, None, :]  # column offset, rightwards
    dy = -t[None, :, None]  # row offset, upwards
    cos, sin = np.cos(angle), np.sin(angle)
    p = (cos * dx + sin * dy) / (scale * RADIUS)
    q = (-sin * dx + cos * dy) / (scale * RADIUS)
    square = np.maximum(np.abs(p), np.abs(q)) <= 0.8
    ellipse = p**2 + (q / 0.5) ** 2 <= 1.0
    a, b = 1.1 * p, 1.1 * q + 0.118
    heart = (a**2 + b**2 - 1.0) ** 3 - a**2 * b**3 <= 0.0
    sid = shape[:, None, None]
    return np.where(sid == 0, square, np.where(sid == 1, ellipse, heart))


def _pixel_offsets(classes: np.ndarray, n: int) -> np.ndarray:
    return np.rint(classes * (IMAGE_SIZE - PATCH - 1) / max(n - 1, 1)).astype(np.int64)


def render_dsprites(
    indices: np.ndarray, sizes: tuple[int, ...] | None = None, chunk: int = 65536
) -> np.ndarray:
    """Procedural dSprites images (N, 64, 64) uint8 in {0, 255} of grid ``indices``."""
    sizes = tuple(GRID_SIZES if sizes is None else sizes)
    idx = np.asarray(indices, dtype=np.int64)
    classes = unravel_factors(idx, sizes)
    values = factor_values(sizes)
    # One patch per (shape, scale, orientation) combination that occurs.
    sprite = (classes[:, 1] * sizes[2] + classes[:, 2]) * sizes[3] + classes[:, 3]
    used, inverse = np.unique(sprite, return_inverse=True)
    s_c, sc_c, o_c = np.unravel_index(used, (sizes[1], sizes[2], sizes[3]))
    patches = render_sprites(s_c, values["scale"][sc_c], values["orientation"][o_c])
    patches = patches.astype(np.uint8) * 255
    ox = _pixel_offsets(classes[:, 4], sizes[4])  # posX: columns
    oy = _pixel_offsets(classes[:, 5], sizes[5])  # posY: rows
    out = np.zeros((idx.size, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    ar = np.arange(PATCH)
    for start in range(0, idx.size, chunk):
        sl = slice(start, start + chunk)
        m = ox[sl].size
        rows = (oy[sl][:, None] + ar)[:, :, None]
        cols = (ox[sl][:, None] + ar)[:, None, :]
        out[np.arange(start, start + m)[:, None, None], rows, cols] = patches[inverse[sl]]
    return out


# ---------------------------------------------------------------------------------- loading
def _split_indices(split: str, options: dict, sizes: tuple[int, ...]) -> torch.Tensor:
    opts = {**OPTIONS, **(options or {})}
    return factor_split_indices(
        "dsprites", sizes, opts["split_scheme"], opts["ood_k"], opts["heldout_fraction"],
        opts["heldout_split"], opts["n_train"],
    )[split]


def _dataset(images: np.ndarray, indices: torch.Tensor, name: str, split: str,
             sizes: tuple[int, ...]) -> ImageDataset:
    classes = torch.from_numpy(unravel_factors(indices.numpy(), sizes)[:, 1:])
    return ImageDataset(
        images=torch.from_numpy(images).unsqueeze(1),
        labels=classes[:, 0].clone(),
        num_classes=sizes[1],
        name=name,
        split=split,
        class_names=SHAPE_NAMES[: sizes[1]],
        factors=classes,
        factor_names=list(FACTOR_NAMES),
    )


def _subset(indices: torch.Tensor, max_samples: int, seed: int) -> torch.Tensor:
    positions = subsample_positions(indices.numel(), max_samples, seed)
    return indices if positions is None else indices[positions]


def load_procedural(data_dir: Path, split: str, options: dict, max_samples: int = 0,
                    seed: int = 0) -> ImageDataset:
    """A split of the procedural re-rendering (no file needed); ``max_samples`` > 0 renders only
    a seeded random subset of that many (:func:`~selfsup.data.splits.subsample_positions`)."""
    sizes = tuple(GRID_SIZES)
    indices = _subset(_split_indices(split, options, sizes), max_samples, seed)
    return _dataset(render_dsprites(indices.numpy(), sizes), indices, "dsprites-procedural",
                    split, sizes)


def _get(meta: dict, key: str) -> object:
    for k in (key, key.encode()):
        if k in meta:
            return meta[k]
    raise KeyError(key)


def validate_file(path: Path) -> int:
    """Check keys, shapes, metadata and factor order of the official file; return N."""
    sizes = tuple(GRID_SIZES)
    n = int(np.prod(sizes))
    meta = read_npz_object(path, "metadata", FIX)
    if not isinstance(meta, dict):
        raise DataError(f"{path}: 'metadata' is not a dict ({type(meta).__name__}). {FIX}")
    try:
        names = tuple(str(v.decode() if isinstance(v, bytes) else v)
                      for v in _get(meta, "latents_names"))  # type: ignore[union-attr]
        meta_sizes = tuple(int(v) for v in np.asarray(_get(meta, "latents_sizes")).ravel())
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(
            f"{path}: 'metadata' lacks valid latents_names / latents_sizes ({exc}). {FIX}"
        ) from None
    if names != LATENT_NAMES or meta_sizes != sizes:
        raise DataError(
            f"{path}: metadata names {names} and sizes {meta_sizes} are not dSprites' "
            f"{LATENT_NAMES} and {sizes}. {FIX}"
        )
    shape, dtype = npz_member_header(path, "imgs", FIX)
    if shape != (n, IMAGE_SIZE, IMAGE_SIZE) or dtype != np.uint8:
        raise DataError(
            f"{path}: 'imgs' is {dtype} {shape}, expected uint8 {(n, IMAGE_SIZE, IMAGE_SIZE)}. "
            f"{FIX}"
        )
    for key in ("latents_classes", "latents_values"):
        shape, _ = npz_member_header(path, key, FIX)
        if shape != (n, len(sizes)):
            raise DataError(f"{path}: '{key}' has shape {shape}, expected {(n, len(sizes))}. {FIX}")
    classes = read_npz_array(path, "latents_classes", FIX)
    if not np.array_equal(classes, unravel_factors(np.arange(n), sizes)):
        raise DataError(
            f"{path}: 'latents_classes' does not follow the official order (index = shape*245760 "
            f"+ scale*40960 + orientation*1024 + posX*32 + posY). {FIX}"
        )
    return n


def load_official(data_dir: Path, split: str, options: dict, max_samples: int = 0,
                  seed: int = 0) -> ImageDataset:
    """A split of the official file (only the split's rows of ``imgs`` are kept; with
    ``max_samples`` > 0 only a seeded random subset of that many)."""
    path = Path(data_dir) / FOLDER / FILE
    sizes = tuple(GRID_SIZES)
    validate_file(path)
    indices = _subset(_split_indices(split, options, sizes), max_samples, seed)
    imgs = take_npz_rows(path, "imgs", indices.numpy(), FIX)
    if imgs.size and int(imgs.max()) > 1:
        raise DataError(f"{path}: 'imgs' must hold 0/1 pixels, found {int(imgs.max())}. {FIX}")
    return _dataset(imgs * np.uint8(255), indices, "dsprites", split, sizes)


def check_official(data_dir: Path, split: str) -> int:
    if split == "train":  # one file holds every split: validate (and report a problem) once
        validate_file(Path(data_dir) / FOLDER / FILE)
    return int(_split_indices(split, {}, tuple(GRID_SIZES)).numel())


def check_procedural(data_dir: Path, split: str) -> int:
    indices = _split_indices(split, {}, tuple(GRID_SIZES))
    render_dsprites(indices[:8].numpy())
    return int(indices.numel())


# The paper's dSprites augmentation: random affine, rotation up to 4 degrees, zoom 0.81-1, nearest.
AUGMENT = augment_preset(affine_degrees=4.0, affine_scale=[0.81, 1.0], interpolation="nearest")
_EXTRA = {"options": OPTIONS, "factors": factor_info, "augment": AUGMENT}

SPEC = DatasetSpec(
    name="dsprites",
    description="dSprites (official npz), 64x64 binary, factor-combination OOD splits",
    folder=FOLDER,
    files=(FILE,),
    splits=FACTOR_SPLITS,
    image_shape=(1, IMAGE_SIZE, IMAGE_SIZE),
    num_classes=3,
    load=load_official,
    notes="label = shape; splits: data.split_scheme, data.ood_k, data.heldout_fraction",
    extra={**_EXTRA, "check": check_official, "load_subset": load_official},
)

PROCEDURAL_SPEC = DatasetSpec(
    name="dsprites-procedural",
    description="dSprites factor grid re-rendered procedurally (no download; not the original "
    "pixels), 64x64 binary",
    folder="(rendered, no files)",
    files=(),
    splits=FACTOR_SPLITS,
    image_shape=(1, IMAGE_SIZE, IMAGE_SIZE),
    num_classes=3,
    load=load_procedural,
    notes="label = shape; splits: data.split_scheme, data.ood_k, data.heldout_fraction",
    extra={**_EXTRA, "embedded": True, "check": check_procedural, "load_subset": load_procedural},
)
