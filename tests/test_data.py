"""Dataset loaders: exact round trips of real-format fixture files and clear errors."""

from __future__ import annotations

import gzip
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from fixtures import (
    cifar_batch_bytes,
    idx_bytes,
    stl_x_bytes,
    write_cifar10,
    write_idx,
    write_idx_dataset,
    write_imagefolder,
    write_stl10,
)
from selfsup.data import (
    DATASETS,
    DatasetSpec,
    ImageDataset,
    check_dataset,
    dataset_spec,
    holdout_split,
    list_datasets,
    load_dataset,
    register,
    stratified_holdout_split,
)
from selfsup.data import digits as digits_mod
from selfsup.errors import ConfigError, DataError

# ------------------------------------------------------------------------------------ registry


def test_registry_has_builtin_datasets():
    for name in ("digits", "mnist", "fashionmnist", "cifar10", "stl10", "imagefolder"):
        assert name in DATASETS
        assert dataset_spec(name).name == name
    assert dataset_spec("MNIST").name == "mnist"


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ConfigError) as err:
        dataset_spec("imagenet")
    for name in ("digits", "mnist", "cifar10", "stl10", "imagefolder"):
        assert name in str(err.value)


def test_unknown_split_is_config_error(tmp_path):
    with pytest.raises(ConfigError, match="validation"):
        load_dataset("digits", tmp_path, "validation")


def test_list_datasets_is_json_and_complete():
    rows = list_datasets()
    json.dumps(rows)
    by_name = {r["name"]: r for r in rows}
    assert by_name["mnist"]["image_shape"] == [1, 28, 28]
    assert by_name["stl10"]["splits"] == ["train", "test", "unlabeled", "train+unlabeled"]
    assert by_name["cifar10"]["num_classes"] == 10
    assert by_name["digits"]["folder"] == "(embedded in scikit-learn)"
    for row in rows:
        assert {"name", "description", "folder", "splits", "image_shape", "num_classes"} <= set(row)


def test_register_custom_dataset(tmp_path):
    def load(data_dir, split, options):
        return ImageDataset(
            torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 1]), 2, "toy", split
        )

    spec = DatasetSpec("toy_ds", "toy", "toy", (), ("train",), (1, 4, 4), 2, load)
    try:
        register(spec)
        assert len(load_dataset("toy_ds", tmp_path, "train")) == 2
        with pytest.raises(ValueError):
            register(DatasetSpec("toy_ds", "other", "toy", (), ("train",), None, 2, load))
    finally:
        DATASETS.pop("toy_ds", None)


# --------------------------------------------------------------------------------------- MNIST


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("name", ["mnist", "fashionmnist"])
def test_idx_round_trip(tmp_path, name, gz):
    written = write_idx_dataset(tmp_path, name=name, n_train=30, n_test=12, gz=gz)
    sub = "MNIST" if name == "mnist" else "FashionMNIST"
    suffix = ".gz" if gz else ""
    assert (tmp_path / sub / "raw" / f"train-images-idx3-ubyte{suffix}").is_file()
    for split, n in (("train", 30), ("test", 12)):
        ds = load_dataset(name, tmp_path, split)
        assert isinstance(ds, ImageDataset)
        assert ds.images.dtype == torch.uint8 and ds.labels.dtype == torch.int64
        assert tuple(ds.images.shape) == (n, 1, 28, 28)
        assert ds.num_classes == 10 and ds.split == split and ds.name == name
        assert np.array_equal(ds.images[:, 0].numpy(), written[split]["images"])
        assert np.array_equal(ds.labels.numpy(), written[split]["labels"].astype(np.int64))
    assert len(ds.class_names) == 10
    if name == "fashionmnist":
        assert ds.class_names[9] == "Ankle boot"


def test_idx_fixture_matches_torchvision_reader(tmp_path):
    from torchvision.datasets.mnist import read_image_file, read_label_file

    written = write_idx_dataset(tmp_path, n_train=10, n_test=5, gz=False)
    raw = tmp_path / "MNIST" / "raw"
    assert np.array_equal(
        read_image_file(str(raw / "train-images-idx3-ubyte")).numpy(), written["train"]["images"]
    )
    assert np.array_equal(
        read_label_file(str(raw / "t10k-labels-idx1-ubyte")).numpy(), written["test"]["labels"]
    )


def test_idx_header_bytes_exact():
    data = idx_bytes(np.zeros((2, 28, 28), dtype=np.uint8))
    assert data[:16] == bytes.fromhex("00000803000000020000001c0000001c")
    assert len(data) == 16 + 2 * 28 * 28
    assert idx_bytes(np.array([3, 4], dtype=np.uint8)) == bytes.fromhex("00000801000000020304")


def test_mnist_missing_files_message(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset("mnist", tmp_path, "train")
    msg = str(err.value)
    assert str(tmp_path / "MNIST" / "raw") in msg
    assert "train-images-idx3-ubyte" in msg and "train-labels-idx1-ubyte" in msg
    assert "--download" in msg
    assert f"selfsup data check mnist --data-dir {tmp_path}" in msg


def test_mnist_only_requires_files_of_requested_split(tmp_path):
    write_idx_dataset(tmp_path, n_train=10, n_test=10)
    (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").unlink()
    assert len(load_dataset("mnist", tmp_path, "test")) == 10
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        load_dataset("mnist", tmp_path, "train")


def _raw(tmp_path: Path) -> Path:
    return tmp_path / "MNIST" / "raw"


def test_idx_wrong_magic(tmp_path):
    written = write_idx_dataset(tmp_path, n_train=10, n_test=10, gz=False)
    # an images file where the labels file belongs
    write_idx(_raw(tmp_path) / "train-labels-idx1-ubyte", written["train"]["images"])
    with pytest.raises(DataError, match="magic number 2051"):
        load_dataset("mnist", tmp_path, "train")


def test_idx_wrong_image_dims(tmp_path):
    write_idx_dataset(tmp_path, n_train=10, n_test=10, gz=False)
    write_idx(_raw(tmp_path) / "train-images-idx3-ubyte", np.zeros((10, 28, 27), np.uint8))
    with pytest.raises(DataError, match="28, 27"):
        load_dataset("mnist", tmp_path, "train")


@pytest.mark.parametrize("change", ["truncate", "append"])
def test_idx_payload_length_checked(tmp_path, change):
    write_idx_dataset(tmp_path, n_train=10, n_test=10, gz=False)
    path = _raw(tmp_path) / "train-images-idx3-ubyte"
    data = path.read_bytes()
    path.write_bytes(data[:-5] if change == "truncate" else data + b"\x00")
    with pytest.raises(DataError) as err:
        load_dataset("mnist", tmp_path, "train")
    assert str(path) in str(err.value)
    assert ("truncated" if change == "truncate" else "extra bytes") in str(err.value)


def test_idx_truncated_gzip(tmp_path):
    write_idx_dataset(tmp_path, n_train=10, n_test=10, gz=True)
    path = _raw(tmp_path) / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(DataError, match="gzip"):
        load_dataset("mnist", tmp_path, "test")


def test_idx_label_out_of_range(tmp_path):
    write_idx_dataset(tmp_path, n_train=10, n_test=10, gz=False)
    labels = np.zeros(10, np.uint8)
    labels[3] = 10
    write_idx(_raw(tmp_path) / "train-labels-idx1-ubyte", labels)
    with pytest.raises(DataError, match="label 10"):
        load_dataset("mnist", tmp_path, "train")


def test_idx_mismatched_counts(tmp_path):
    write_idx_dataset(tmp_path, n_train=10, n_test=10, gz=False)
    write_idx(_raw(tmp_path) / "train-labels-idx1-ubyte", np.zeros(9, np.uint8))
    with pytest.raises(DataError, match="10 images but .* 9 labels"):
        load_dataset("mnist", tmp_path, "train")


def test_download_failure_is_data_error(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: network unreachable")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(DataError, match="network unreachable"):
        load_dataset("mnist", tmp_path, "train", download=True)


def test_download_fetches_missing_files(tmp_path, monkeypatch):
    import torchvision.datasets

    calls = []

    def fake_mnist(root, train=True, download=False):
        calls.append((root, train, download))
        write_idx_dataset(root, n_train=8, n_test=4)

    monkeypatch.setattr(torchvision.datasets, "MNIST", fake_mnist)
    ds = load_dataset("mnist", tmp_path, "train", download=True)
    assert len(ds) == 8 and calls and calls[0][2] is True
    n_calls = len(calls)
    load_dataset("mnist", tmp_path, "test", download=True)  # files present: no new download
    assert len(calls) == n_calls


# --------------------------------------------------------------------------------------- CIFAR


def test_cifar_round_trip(tmp_path):
    written = write_cifar10(tmp_path, n_per_batch=6)
    for split, n in (("train", 30), ("test", 6)):
        ds = load_dataset("cifar10", tmp_path, split)
        assert tuple(ds.images.shape) == (n, 3, 32, 32) and ds.images.dtype == torch.uint8
        assert np.array_equal(ds.images.numpy(), written[split]["images"])
        assert np.array_equal(ds.labels.numpy(), written[split]["labels"])
        assert ds.class_names == written["class_names"]
    # row-major CHW: the first 1024 bytes of a row are the red plane, row by row
    row0 = written["train"]["images"][0].reshape(-1)
    assert np.array_equal(ds.images.numpy().shape, (6, 3, 32, 32))
    assert np.array_equal(
        load_dataset("cifar10", tmp_path, "train").images[0, 0, 1].numpy(), row0[32:64]
    )


def test_cifar_fixture_matches_torchvision(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar
    from torchvision.datasets import CIFAR10

    written = write_cifar10(tmp_path, n_per_batch=4)
    monkeypatch.setattr(CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args, **kwargs: True)
    tv = CIFAR10(str(tmp_path), train=True, download=False)
    assert np.array_equal(tv.data.transpose(0, 3, 1, 2), written["train"]["images"])
    assert tv.classes == written["class_names"]


def test_cifar_class_names_from_meta(tmp_path):
    write_cifar10(tmp_path, n_per_batch=2)
    meta = {b"label_names": [f"class{i}".encode() for i in range(10)]}
    (tmp_path / "cifar-10-batches-py" / "batches.meta").write_bytes(pickle.dumps(meta))
    ds = load_dataset("cifar10", tmp_path, "test")
    assert ds.class_names == [f"class{i}" for i in range(10)]
    (tmp_path / "cifar-10-batches-py" / "batches.meta").unlink()
    assert load_dataset("cifar10", tmp_path, "test").class_names[0] == "airplane"


@pytest.mark.parametrize("protocol", [None, 2, 4, 5])
def test_cifar_pickle_protocols(tmp_path, protocol):
    write_cifar10(tmp_path, n_per_batch=2)
    images = np.arange(3 * 3072, dtype=np.int64).reshape(3, 3, 32, 32).astype(np.uint8)
    data = cifar_batch_bytes(images, [1, 2, 3], protocol=protocol)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(data)
    ds = load_dataset("cifar10", tmp_path, "test")
    assert np.array_equal(ds.images.numpy(), images)
    assert ds.labels.tolist() == [1, 2, 3]


def test_cifar_missing_files(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", tmp_path, "train")
    msg = str(err.value)
    assert str(tmp_path / "cifar-10-batches-py") in msg and "data_batch_1" in msg
    assert "--download" in msg and "selfsup data check cifar10" in msg


def test_cifar_corrupt_pickle(tmp_path):
    write_cifar10(tmp_path, n_per_batch=2)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match="data_batch_3"):
        load_dataset("cifar10", tmp_path, "train")
    path.write_bytes(b"this is not a pickle at all")
    with pytest.raises(DataError, match="data_batch_3"):
        load_dataset("cifar10", tmp_path, "train")


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar_pickle_with_forbidden_global_is_not_executed(tmp_path):
    write_cifar10(tmp_path, n_per_batch=2)
    marker = tmp_path / "pwned"
    payload = pickle.dumps({b"data": _Evil(marker), b"labels": [0]}, protocol=2)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(payload)
    with pytest.raises(DataError, match="system.*not allowed"):
        load_dataset("cifar10", tmp_path, "test")
    assert not marker.exists()
    # the same payload unpickled normally really would run the command
    pickle.loads(payload)
    assert marker.exists()


def test_cifar_forbidden_builtin_eval(tmp_path):
    write_cifar10(tmp_path, n_per_batch=2)
    payload = b"cbuiltins\neval\n(V1+1\ntR."
    assert pickle.loads(payload) == 2  # a valid pickle that calls eval
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(payload)
    with pytest.raises(DataError, match="builtins.eval"):
        load_dataset("cifar10", tmp_path, "test")


@pytest.mark.parametrize(
    "batch, match",
    [
        ([1, 2, 3], "expected a dict"),
        ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, "uint8"),
        ({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, "3072 columns"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "2 images but 1 labels"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, "0..9"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, "x"]}, "only integers"),
    ],
)
def test_cifar_invalid_batch_content(tmp_path, batch, match):
    write_cifar10(tmp_path, n_per_batch=2)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError, match=match):
        load_dataset("cifar10", tmp_path, "test")


# -------------------------------------------------------------------------------------- STL-10


def test_stl10_round_trip(tmp_path):
    written = write_stl10(tmp_path, n_train=6, n_test=4, n_unlabeled=3)
    for split in ("train", "test", "unlabeled"):
        ds = load_dataset("stl10", tmp_path, split)
        assert ds.images.dtype == torch.uint8 and ds.images.shape[1:] == (3, 96, 96)
        assert np.array_equal(ds.images.numpy(), written[split]["images"])
        assert np.array_equal(ds.labels.numpy(), written[split]["labels"])
    assert (load_dataset("stl10", tmp_path, "unlabeled").labels == -1).all()
    both = load_dataset("stl10", tmp_path, "train+unlabeled")
    assert len(both) == 9
    assert np.array_equal(
        both.images.numpy(),
        np.concatenate([written["train"]["images"], written["unlabeled"]["images"]]),
    )
    assert both.labels.tolist() == written["train"]["labels"].tolist() + [-1, -1, -1]
    assert both.class_names[7] == "monkey"


def test_stl10_column_major_orientation(tmp_path):
    write_stl10(tmp_path, n_train=1, n_test=1, n_unlabeled=1)
    # hand-made raw bytes: the first 96 bytes of the red plane are the LEFT column (x = 0),
    # and byte 96 * 5 + 2 of the green plane is pixel (row 2, column 5)
    raw = np.zeros(3 * 96 * 96, dtype=np.uint8)
    raw[:96] = 255
    raw[96 * 96 + 96 * 5 + 2] = 77
    (tmp_path / "stl10_binary" / "train_X.bin").write_bytes(raw.tobytes())
    img = load_dataset("stl10", tmp_path, "train").images[0].numpy()
    assert (img[0, :, 0] == 255).all() and img[0, :, 1:].sum() == 0
    assert img[1, 2, 5] == 77 and img[1].sum() == 77
    # and an asymmetric image given to the writer comes back upright
    asym = np.zeros((1, 3, 96, 96), dtype=np.uint8)
    asym[0, 0, 10:20, 60:90] = 200  # wide block in the upper right
    asym[0, 2, 70, 3] = 9
    write_stl10(tmp_path, n_train=1, n_test=1, n_unlabeled=1, train_images=asym)
    assert np.array_equal(load_dataset("stl10", tmp_path, "train").images.numpy(), asym)


def test_stl10_fixture_matches_torchvision(tmp_path, monkeypatch):
    from torchvision.datasets import STL10

    written = write_stl10(tmp_path, n_train=3, n_test=2, n_unlabeled=2)
    monkeypatch.setattr(STL10, "_check_integrity", lambda self: True)
    tv = STL10(str(tmp_path), split="train", download=False)
    assert np.array_equal(tv.data, written["train"]["images"])
    assert np.array_equal(tv.labels, written["train"]["labels"])


def test_stl10_bad_size(tmp_path):
    write_stl10(tmp_path, n_train=2, n_test=2, n_unlabeled=2)
    path = tmp_path / "stl10_binary" / "unlabeled_X.bin"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DataError, match="not a multiple of 27648"):
        load_dataset("stl10", tmp_path, "unlabeled")


def test_stl10_label_problems(tmp_path):
    write_stl10(tmp_path, n_train=3, n_test=2, n_unlabeled=1)
    path = tmp_path / "stl10_binary" / "train_y.bin"
    path.write_bytes(bytes([1, 2]))
    with pytest.raises(DataError, match="2 labels .* 3 images"):
        load_dataset("stl10", tmp_path, "train")
    path.write_bytes(bytes([1, 11, 2]))
    with pytest.raises(DataError, match="1..10"):
        load_dataset("stl10", tmp_path, "train")
    path.write_bytes(bytes([0, 1, 2]))
    with pytest.raises(DataError, match="1..10"):
        load_dataset("stl10", tmp_path, "train")


def test_stl10_missing(tmp_path):
    write_stl10(tmp_path, n_train=1, n_test=1, n_unlabeled=1)
    (tmp_path / "stl10_binary" / "unlabeled_X.bin").unlink()
    assert len(load_dataset("stl10", tmp_path, "train")) == 1
    with pytest.raises(DataError, match="unlabeled_X.bin") as err:
        load_dataset("stl10", tmp_path, "train+unlabeled")
    assert "--download" in str(err.value)


def test_stl_x_bytes_layout():
    img = np.arange(3 * 96 * 96, dtype=np.int64).reshape(1, 3, 96, 96).astype(np.uint8)
    raw = np.frombuffer(stl_x_bytes(img), dtype=np.uint8)
    assert raw[1] == img[0, 0, 1, 0]  # second byte: row 1 of column 0
    assert raw[96] == img[0, 0, 0, 1]  # 97th byte: top of column 1


# -------------------------------------------------------------------------------------- digits


def test_digits_split_sizes_deterministic_and_disjoint(tmp_path):
    from sklearn.datasets import load_digits

    train = load_dataset("digits", tmp_path, "train")
    test = load_dataset("digits", tmp_path, "test")
    assert len(train) + len(test) == 1797
    assert tuple(train.images.shape[1:]) == (1, 8, 8) and train.images.dtype == torch.uint8
    bunch = load_digits()
    target = bunch.target
    for k in range(10):
        assert int((test.labels == k).sum()) == round(0.2 * int((target == k).sum()))
    tr_idx, te_idx = digits_mod.split_indices()
    assert set(tr_idx.tolist()).isdisjoint(te_idx.tolist())
    assert sorted(tr_idx.tolist() + te_idx.tolist()) == list(range(1797))
    expected = np.array(
        [[int(v * 255 / 16 + 0.5) for v in row] for row in bunch.data[te_idx.numpy()]],
        dtype=np.uint8,
    )
    assert np.array_equal(test.images.reshape(len(test), 64).numpy(), expected)
    assert np.array_equal(test.labels.numpy(), target[te_idx.numpy()])
    again = load_dataset("digits", "/nonexistent", "test")
    assert torch.equal(again.images, test.images) and torch.equal(again.labels, test.labels)
    assert int(train.images.max()) == 255


# -------------------------------------------------------------------------------- image folder


def test_imagefolder_round_trip(tmp_path):
    written = write_imagefolder(tmp_path, classes=("zeta", "alpha", "mid"), n_per_class=3, size=20)
    for split in ("train", "test"):
        ds = load_dataset("imagefolder", tmp_path, split, {"image_size": 20})
        assert not isinstance(ds, ImageDataset)
        assert len(ds) == 9 and ds.num_classes == 3 and ds.image_shape == (3, 20, 20)
        assert ds.class_names == ["alpha", "mid", "zeta"]
        assert ds.name == "imagefolder" and ds.split == split
        for i in range(len(ds)):
            img, label = ds[i]
            assert img.dtype == torch.uint8 and tuple(img.shape) == (3, 20, 20)
            assert np.array_equal(img.numpy(), written[split]["images"][i])
            assert label == written[split]["labels"][i]
        assert ds.labels.tolist() == written[split]["labels"].tolist()
    with pytest.raises(IndexError):
        ds[9]


def test_imagefolder_resize_and_center_crop(tmp_path):
    from PIL import Image

    folder = tmp_path / "imagefolder" / "train" / "only"
    folder.mkdir(parents=True)
    arr = np.zeros((20, 40, 3), dtype=np.uint8)  # 40 wide, 20 high
    arr[:, :20, 0] = 255  # left half red
    arr[:, 20:, 2] = 255  # right half blue
    Image.fromarray(arr).save(folder / "x.PNG")
    (tmp_path / "imagefolder" / "val" / "only").mkdir(parents=True)
    Image.fromarray(arr[:, :20]).convert("L").save(tmp_path / "imagefolder/val/only/g.bmp")
    ds = load_dataset("imagefolder", tmp_path, "train", {"image_size": 10})
    img, label = ds[0]
    assert tuple(img.shape) == (3, 10, 10) and label == 0
    # resized to 20x10, the centre crop keeps x in [5, 15): left half red, right half blue
    assert (img[0, :, :4] == 255).all() and (img[2, :, :4] == 0).all()
    assert (img[2, :, 6:] == 255).all() and (img[0, :, 6:] == 0).all()
    val = load_dataset("imagefolder", tmp_path, "test", {"image_size": 6})  # falls back to val/
    gray, _ = val[0]
    assert tuple(gray.shape) == (3, 6, 6)
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])


def test_imagefolder_custom_root_and_default_size(tmp_path):
    write_imagefolder(tmp_path, classes=("a", "b"), n_per_class=1, size=8, root="pics")
    ds = load_dataset("imagefolder", tmp_path, "train", {"root": "pics"})
    assert ds.image_shape == (3, 64, 64) and tuple(ds[1][0].shape) == (3, 64, 64)
    assert ds[1][1] == 1


def test_imagefolder_errors(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset("imagefolder", tmp_path, "train")
    assert str(tmp_path / "imagefolder" / "train") in str(err.value)
    assert "selfsup data check imagefolder" in str(err.value)

    (tmp_path / "imagefolder" / "train" / "cat").mkdir(parents=True)
    (tmp_path / "imagefolder" / "train" / "cat" / "notes.txt").write_text("hi")
    with pytest.raises(DataError) as err:
        load_dataset("imagefolder", tmp_path, "train")
    assert "no images found" in str(err.value)
    assert str(tmp_path / "imagefolder" / "train") in str(err.value)
    assert ".jpg" in str(err.value) and ".png" in str(err.value)

    bad = tmp_path / "imagefolder" / "train" / "cat" / "broken.jpg"
    bad.write_bytes(b"not really a jpeg")
    ds = load_dataset("imagefolder", tmp_path, "train")
    with pytest.raises(DataError) as err:
        ds[0]
    assert str(bad) in str(err.value)

    with pytest.raises(ConfigError, match="image_sise"):
        load_dataset("imagefolder", tmp_path, "train", {"image_sise": 32})
    with pytest.raises(ConfigError, match="positive integer"):
        load_dataset("imagefolder", tmp_path, "train", {"image_size": 0})


def test_imagefolder_test_classes_must_be_subset(tmp_path):
    write_imagefolder(tmp_path, classes=("a", "b"), n_per_class=1, size=8)
    write_imagefolder(tmp_path, classes=("a", "zebra"), n_per_class=1, size=8)
    (tmp_path / "imagefolder" / "train" / "zebra" / "0000.png").unlink()
    (tmp_path / "imagefolder" / "train" / "zebra").rmdir()
    with pytest.raises(DataError, match="zebra"):
        load_dataset("imagefolder", tmp_path, "test")
    assert load_dataset("imagefolder", tmp_path, "train").class_names == ["a", "b"]


def test_imagefolder_test_subset_keeps_train_label_ids(tmp_path):
    write_imagefolder(tmp_path, classes=("a", "b", "c"), n_per_class=1, size=8)
    for f in (tmp_path / "imagefolder" / "test" / "a").iterdir():
        f.unlink()
    (tmp_path / "imagefolder" / "test" / "a").rmdir()
    ds = load_dataset("imagefolder", tmp_path, "test")
    assert ds.num_classes == 3 and ds.labels.tolist() == [1, 2]


# -------------------------------------------------------------------------------------- splits


def test_holdout_split_properties():
    keep, hold = holdout_split(100, 0.25, seed=3)
    assert keep.dtype == torch.int64 and hold.dtype == torch.int64
    assert len(hold) == 25 and len(keep) == 75
    assert torch.equal(keep, torch.sort(keep).values) and torch.equal(hold, torch.sort(hold).values)
    assert sorted(keep.tolist() + hold.tolist()) == list(range(100))
    k2, h2 = holdout_split(100, 0.25, seed=3)
    assert torch.equal(keep, k2) and torch.equal(hold, h2)
    assert not torch.equal(hold, holdout_split(100, 0.25, seed=4)[1])
    keep0, hold0 = holdout_split(10, 0.0)
    assert hold0.numel() == 0 and keep0.tolist() == list(range(10))
    for bad in (-0.1, 1.0, 1.5, float("nan")):
        with pytest.raises(ConfigError):
            holdout_split(10, bad)


def test_stratified_holdout_split():
    labels = np.array([0] * 10 + [1] * 20 + [2] * 5 + [-1] * 10)
    keep, hold = stratified_holdout_split(labels, 0.2, seed=1)
    assert sorted(keep.tolist() + hold.tolist()) == list(range(len(labels)))
    assert set(keep.tolist()).isdisjoint(hold.tolist())
    counts = {v: int((labels[hold.numpy()] == v).sum()) for v in (0, 1, 2, -1)}
    assert counts == {0: 2, 1: 4, 2: 1, -1: 2}
    k2, h2 = stratified_holdout_split(torch.tensor(labels), 0.2, seed=1)
    assert torch.equal(keep, k2) and torch.equal(hold, h2)
    assert stratified_holdout_split(labels, 0.0)[1].numel() == 0


# ------------------------------------------------------------------------------- check_dataset


def test_check_dataset_valid(tmp_path):
    write_idx_dataset(tmp_path, n_train=10, n_test=5, gz=True)
    report = check_dataset("mnist", tmp_path)
    json.dumps(report)
    assert report["valid"] is True and report["name"] == "mnist"
    assert report["folder"] == str(tmp_path / "MNIST" / "raw")
    assert report["splits"] == {"train": 10, "test": 5, "train+test": 15}
    assert len(report["files"]) == 4
    for entry in report["files"]:
        assert entry["present"] and entry["path"].endswith(".gz")
        assert entry["bytes"] == Path(entry["path"]).stat().st_size
    assert "60000" in report["message"]  # notes that the files are smaller than the official ones


def test_check_dataset_missing_never_raises(tmp_path):
    for name in ("mnist", "fashionmnist", "cifar10", "stl10", "imagefolder"):
        report = check_dataset(name, tmp_path / "nothing")
        json.dumps(report)
        assert report["valid"] is False and report["splits"] == {}
        assert all(not f["present"] and f["bytes"] is None for f in report["files"])
        assert report["message"]
    report = check_dataset("cifar10", tmp_path)
    assert "data_batch_1" in report["message"] and "--download" in report["message"]


def test_check_dataset_reports_corrupt_files(tmp_path):
    write_cifar10(tmp_path, n_per_batch=2)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"garbage")
    report = check_dataset("cifar10", tmp_path)
    assert report["valid"] is False
    assert report["splits"] == {"train": 10}
    assert "test_batch" in report["message"]

    write_stl10(tmp_path, n_train=2, n_test=2, n_unlabeled=2)
    (tmp_path / "stl10_binary" / "test_y.bin").write_bytes(bytes([1, 99]))
    report = check_dataset("stl10", tmp_path)
    assert report["valid"] is False and "test_y.bin" in report["message"]
    assert report["splits"] == {"train": 2, "unlabeled": 2, "train+unlabeled": 4}

    write_imagefolder(tmp_path, classes=("a",), n_per_class=1, size=8)
    (tmp_path / "imagefolder" / "test" / "a" / "0000.png").write_bytes(b"\x89PNG broken")
    report = check_dataset("imagefolder", tmp_path)
    assert report["valid"] is False and "0000.png" in report["message"]
    assert report["splits"] == {"train": 1}


def test_check_dataset_partial_and_digits(tmp_path):
    write_idx_dataset(tmp_path, n_train=4, n_test=4, gz=False)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    report = check_dataset("mnist", tmp_path)
    assert report["valid"] is False and report["splits"] == {"train": 4}
    present = {Path(f["path"]).name: f["present"] for f in report["files"]}
    assert present["t10k-labels-idx1-ubyte"] is False and present["train-images-idx3-ubyte"]
    digits = check_dataset("digits", tmp_path)
    assert digits["valid"] and digits["files"] == [] and sum(digits["splits"].values()) == 1797


def test_gzip_content_detected_without_suffix(tmp_path):
    written = write_idx_dataset(tmp_path, n_train=4, n_test=4, gz=False)
    path = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    path.write_bytes(gzip.compress(path.read_bytes()))
    ds = load_dataset("mnist", tmp_path, "train")
    assert np.array_equal(ds.images[:, 0].numpy(), written["train"]["images"])
