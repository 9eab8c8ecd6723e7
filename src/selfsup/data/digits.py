"""scikit-learn's embedded 8x8 digits (1797 images, no download needed).

Pixel values 0..16 are scaled to uint8 as ``round(v * 255 / 16)``. The train/test split is a fixed
stratified 80/20 split (seed 0), identical on every call and every machine.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from selfsup.data.base import DatasetSpec, ImageDataset
from selfsup.data.splits import stratified_holdout_split
from selfsup.errors import DataError

FOLDER = "(embedded in scikit-learn)"
TEST_FRACTION = 0.2
SPLIT_SEED = 0
NUM_CLASSES = 10


def _load_arrays() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError(
            "The digits dataset comes with scikit-learn, which is not installed. Install it "
            "with `pip install scikit-learn`."
        ) from None
    bunch = load_digits()
    images = np.floor(bunch.images * (255.0 / 16.0) + 0.5).clip(0, 255).astype(np.uint8)
    return images[:, None, :, :], bunch.target.astype(np.int64)


def split_indices() -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed (train, test) index tensors into the 1797 digits."""
    _, labels = _load_arrays()
    return stratified_holdout_split(labels, TEST_FRACTION, seed=SPLIT_SEED)


def load_digits_split(
    data_dir: Path | None, split: str, options: dict | None = None
) -> ImageDataset:
    """Load ``train`` (80%) or ``test`` (20%) of the digits; ``data_dir`` is ignored."""
    images, labels = _load_arrays()
    train_idx, test_idx = stratified_holdout_split(labels, TEST_FRACTION, seed=SPLIT_SEED)
    idx = (train_idx if split == "train" else test_idx).numpy()
    return ImageDataset(
        images=torch.from_numpy(np.ascontiguousarray(images[idx])),
        labels=torch.from_numpy(labels[idx]),
        num_classes=NUM_CLASSES,
        name="digits",
        split=split,
        class_names=[str(i) for i in range(NUM_CLASSES)],
    )


SPEC = DatasetSpec(
    name="digits",
    description="scikit-learn 8x8 handwritten digits, 1797 images, 10 classes (tiny, offline)",
    folder=FOLDER,
    files=(),
    splits=("train", "test"),
    image_shape=(1, 8, 8),
    num_classes=NUM_CLASSES,
    load=load_digits_split,
    download=None,
    notes="fixed stratified 80/20 split with seed 0",
    extra={"split_files": {"train": (), "test": ()}, "embedded": True},
)
