"""CelebA loader: torchvision's folder layout, 5-way hair-colour label, cache, bad files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fixtures import write_celeba
from selfsup.data import check_dataset, load_dataset
from selfsup.errors import DataError


def expected_label(row: np.ndarray) -> int:
    """Hair colour by hand: black/blond/brown/gray if exactly one is positive, other if none."""
    colours = [row[8], row[9], row[11], row[17]]
    positive = [i for i, v in enumerate(colours) if v == 1]
    if len(positive) > 1:
        return -1
    return positive[0] if positive else 4


def test_splits_labels_and_pixels(tmp_path):
    fx = write_celeba(tmp_path)
    for split, code in (("train", 0), ("val", 1), ("test", 2)):
        ds = load_dataset("celeba", tmp_path, split)
        rows = np.flatnonzero(fx["partitions"] == code)
        assert len(ds) == len(rows) and ds.images.shape[1:] == (3, 64, 64)
        assert ds.labels.tolist() == [expected_label(fx["attributes"][i]) for i in rows]
        assert ds.num_classes == 5 and ds.class_names[4] == "other"
        # pixels: centered 178x178 square of the written picture, resized to 64 (JPEG: tolerance)
        for j, i in enumerate(rows[:2]):
            square = Image.fromarray(fx["images"][i]).crop((0, 20, 178, 198))
            ref = np.asarray(square.resize((64, 64), Image.Resampling.BILINEAR)).transpose(2, 0, 1)
            diff = np.abs(ds.images[j].numpy().astype(int) - ref.astype(int))
            assert diff.mean() < 4.0
    labels = torch.cat([load_dataset("celeba", tmp_path, s).labels for s in ("train", "test")])
    assert set(labels.tolist()) >= {-1, 0, 1, 2, 3, 4}


def test_cache_is_reused_and_options(tmp_path):
    fx = write_celeba(tmp_path)
    first = load_dataset("celeba", tmp_path, "test", options={"image_size": 32})
    cache = fx["folder"] / "selfsup-cache" / "test-32.npy"
    assert cache.is_file() and first.images.shape[2:] == (32, 32)
    for name in fx["names"]:
        (fx["folder"] / "img_align_celeba" / name).unlink()  # the cache alone must suffice
    second = load_dataset("celeba", tmp_path, "test", options={"image_size": 32})
    assert torch.equal(first.images, second.images)
    with pytest.raises(Exception, match="image_size"):
        load_dataset("celeba", tmp_path, "test", options={"image_size": 1000})


def test_bad_files_are_data_errors(tmp_path):
    fx = write_celeba(tmp_path)
    folder = fx["folder"]
    (folder / "img_align_celeba" / fx["names"][-1]).write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="cannot be decoded"):
        load_dataset("celeba", tmp_path, "test")
    (folder / "img_align_celeba" / fx["names"][0]).unlink()
    with pytest.raises(DataError, match="missing"):
        load_dataset("celeba", tmp_path, "train")
    attr = folder / "list_attr_celeba.txt"
    attr.write_text("\n".join(attr.read_text().splitlines()[:-2]) + "\n")  # truncated
    with pytest.raises(DataError, match="truncated"):
        load_dataset("celeba", tmp_path, "val")
    report = check_dataset("celeba", tmp_path)
    assert not report["valid"] and "truncated" in report["message"]
    (folder / "list_eval_partition.txt").unlink()
    with pytest.raises(DataError, match="list_eval_partition"):
        load_dataset("celeba", tmp_path, "val")


def test_check_reports_split_sizes(tmp_path):
    write_celeba(tmp_path)
    report = check_dataset("celeba", tmp_path)
    assert report["valid"], report["message"]
    assert report["splits"] == {"train": 8, "val": 3, "test": 5}
