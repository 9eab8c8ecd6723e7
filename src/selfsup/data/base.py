"""Dataset containers shared by every loader.

Small and medium datasets are held in memory as one uint8 tensor ``images`` of shape (N, C, H, W)
plus int64 ``labels`` of shape (N,) (``-1`` marks an unlabeled sample). Large image folders are
streamed instead (:class:`StreamingDataset`), yielding the same uint8 (C, H, W) tensors per item.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from selfsup.errors import DataError


@dataclass
class ImageDataset:
    """Images in memory: ``images`` uint8 (N, C, H, W), ``labels`` int64 (N,), -1 = unlabeled.

    ``factors`` optionally holds ground-truth factor classes (N, F) for datasets that have them.
    """

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    name: str
    split: str
    class_names: list[str] | None = None
    factors: torch.Tensor | None = None
    factor_names: list[str] | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise DataError(
                f"{self.name}/{self.split}: images must be a uint8 tensor of shape (N, C, H, W), "
                f"got {self.images.dtype} {tuple(self.images.shape)}. This is a bug in the loader "
                "for this dataset; please report it."
            )
        if self.labels.shape != (self.images.shape[0],):
            raise DataError(
                f"{self.name}/{self.split}: {self.images.shape[0]} images but labels of shape "
                f"{tuple(self.labels.shape)}. The label file does not match the image file: "
                "re-download or re-create the dataset."
            )
        self.labels = self.labels.long()
        labeled = self.labels[self.labels >= 0]
        if labeled.numel() and int(labeled.max()) >= self.num_classes:
            raise DataError(
                f"{self.name}/{self.split}: label {int(labeled.max())} is out of range for "
                f"{self.num_classes} classes. The label file is corrupt or belongs to another "
                "dataset: re-download it."
            )
        if (self.labels < -1).any():
            raise DataError(
                f"{self.name}/{self.split}: negative labels other than -1 (unlabeled) found. The "
                "label file is corrupt: re-download it."
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    @property
    def has_labels(self) -> bool:
        return bool((self.labels >= 0).any())

    def subset(self, indices: torch.Tensor) -> ImageDataset:
        """A new dataset holding the samples at ``indices`` (a copy of those rows)."""
        return ImageDataset(
            images=self.images[indices],
            labels=self.labels[indices],
            num_classes=self.num_classes,
            name=self.name,
            split=self.split,
            class_names=self.class_names,
            factors=None if self.factors is None else self.factors[indices],
            factor_names=self.factor_names,
        )


class StreamingDataset(Protocol):
    """A map-style dataset too large for memory: ``ds[i]`` -> (uint8 (C, H, W), int label)."""

    num_classes: int
    name: str
    split: str

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]: ...

    @property
    def image_shape(self) -> tuple[int, int, int]: ...


AnyDataset = ImageDataset | StreamingDataset


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset is and where its files live, for ``selfsup data list|check`` and loading.

    ``load(data_dir, split, options)`` returns the split; ``options`` carries dataset options from
    the config (e.g. ``image_size`` for image folders). ``download(data_dir)`` fetches the files
    where the user has internet (None where no downloader exists).
    """

    name: str
    description: str
    folder: str
    files: tuple[str, ...]
    splits: tuple[str, ...]
    image_shape: tuple[int, int, int] | None
    num_classes: int
    load: Callable[[Path, str, dict], AnyDataset]
    download: Callable[[Path], None] | None = None
    in_memory: bool = True
    train_split: str = "train"
    test_split: str = "test"
    notes: str = ""
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class DataInfo:
    """What a method needs to know about its training data to build its networks.

    Built from a loaded dataset (:meth:`of`) or from a dataset's spec (:meth:`from_spec`), and
    stored in every checkpoint as a plain dict (:meth:`to_dict` / :meth:`from_dict`).
    """

    name: str
    image_shape: tuple[int, int, int]
    num_classes: int
    has_labels: bool

    @classmethod
    def of(cls, dataset: AnyDataset) -> DataInfo:
        """The facts about a loaded dataset (labels: any sample labeled; streamed: has classes)."""
        has_labels = getattr(dataset, "has_labels", None)
        if has_labels is None:
            has_labels = dataset.num_classes > 0
        c, h, w = (int(v) for v in dataset.image_shape)
        return cls(dataset.name, (c, h, w), int(dataset.num_classes), bool(has_labels))

    @classmethod
    def from_spec(cls, spec: DatasetSpec, image_size: int = 64) -> DataInfo:
        """The facts a dataset's spec declares (image folders: ``image_size`` square RGB)."""
        c, h, w = spec.image_shape or (3, image_size, image_size)
        return cls(spec.name, (int(c), int(h), int(w)), spec.num_classes, spec.num_classes > 0)

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "image_shape": list(self.image_shape),
            "num_classes": self.num_classes,
            "has_labels": self.has_labels,
        }

    @classmethod
    def from_dict(cls, content: dict) -> DataInfo:
        c, h, w = (int(v) for v in content["image_shape"])
        return cls(str(content["name"]), (c, h, w), int(content["num_classes"]),
                   bool(content["has_labels"]))
