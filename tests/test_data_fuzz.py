"""Fuzzing of the binary loaders: any input either loads valid data or raises DataError."""

from __future__ import annotations

import gzip
import pickle
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures import (
    cifar_batch_bytes,
    idx_bytes,
    stl_x_bytes,
    write_cifar10,
    write_idx_dataset,
    write_stl10,
)
from selfsup.data import ImageDataset, load_dataset
from selfsup.data.cifar import load_cifar_batch
from selfsup.data.mnist import parse_idx
from selfsup.errors import DataError

FUZZ = settings(
    max_examples=50,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

_rng = np.random.default_rng(0)
_VALID_IMAGES = _rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
VALID_IDX_IMAGES = idx_bytes(_VALID_IMAGES)
VALID_IDX_LABELS = idx_bytes(np.array([0, 9, 4], dtype=np.uint8))
VALID_IDX_GZ = gzip.compress(VALID_IDX_IMAGES)
VALID_CIFAR_PY2 = cifar_batch_bytes(
    _rng.integers(0, 256, size=(2, 3, 32, 32), dtype=np.uint8), [3, 7]
)
VALID_CIFAR_PY3 = cifar_batch_bytes(
    _rng.integers(0, 256, size=(2, 3, 32, 32), dtype=np.uint8), [1, 0], protocol=4
)
VALID_STL_X = stl_x_bytes(_rng.integers(0, 256, size=(2, 3, 96, 96), dtype=np.uint8))


def _mutate(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    buf = bytearray(data)
    for pos, value in edits:
        if buf:
            buf[pos % len(buf)] = value
    return bytes(buf)


EDITS = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4)


def _check_dataset(ds: ImageDataset) -> None:
    assert isinstance(ds, ImageDataset)
    assert ds.images.dtype == torch.uint8 and ds.images.ndim == 4
    assert ds.labels.dtype == torch.int64 and ds.labels.shape == (ds.images.shape[0],)
    if ds.labels.numel():
        assert int(ds.labels.max()) < ds.num_classes
    assert bool((ds.labels >= -1).all())


# ------------------------------------------------------------------------------------------ IDX


def _parse_or_data_error(data: bytes, kind: str) -> None:
    try:
        arr = parse_idx(data, "<fuzz>", kind)
    except DataError:
        return
    assert arr.dtype == np.uint8
    if kind == "images":
        assert arr.ndim == 3 and arr.shape[1:] == (28, 28)
    else:
        assert arr.ndim == 1


@FUZZ
@given(data=st.binary(max_size=2000), kind=st.sampled_from(["images", "labels"]))
def test_idx_random_bytes(data, kind):
    _parse_or_data_error(data, kind)


@FUZZ
@given(
    tail=st.binary(max_size=64),
    header=st.sampled_from([bytes.fromhex("00000803"), bytes.fromhex("00000801")]),
    kind=st.sampled_from(["images", "labels"]),
)
def test_idx_valid_magic_random_rest(tail, header, kind):
    _parse_or_data_error(header + tail, kind)
    _parse_or_data_error(gzip.compress(header + tail), kind)


@FUZZ
@given(
    source=st.sampled_from(["plain", "gz"]),
    cut=st.integers(0, len(VALID_IDX_IMAGES)),
    edits=st.one_of(st.just([]), EDITS),
)
def test_idx_truncated_or_mutated(source, cut, edits):
    valid = VALID_IDX_IMAGES if source == "plain" else VALID_IDX_GZ
    data = _mutate(valid[: min(cut, len(valid))], edits)
    _parse_or_data_error(data, "images")


@FUZZ
@given(data=st.one_of(st.binary(max_size=200), st.just(VALID_IDX_IMAGES)), cut=st.integers(0, 30))
def test_idx_full_loader(data, cut):
    with tempfile.TemporaryDirectory() as tmp:
        write_idx_dataset(tmp, n_train=2, n_test=2, gz=False)
        raw = Path(tmp) / "MNIST" / "raw"
        (raw / "train-images-idx3-ubyte").write_bytes(data)
        (raw / "train-labels-idx1-ubyte").write_bytes(
            VALID_IDX_LABELS[: len(VALID_IDX_LABELS) - cut]
        )
        try:
            ds = load_dataset("mnist", tmp, "train")
        except DataError:
            return
        _check_dataset(ds)
        assert np.array_equal(ds.images[:, 0].numpy(), _VALID_IMAGES) and cut == 0


# ---------------------------------------------------------------------------------------- CIFAR


def _cifar_or_data_error(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "batch"
        path.write_bytes(data)
        try:
            images, labels = load_cifar_batch(path)
        except DataError:
            return
    assert images.dtype == np.uint8 and images.shape[1:] == (3, 32, 32)
    assert labels.dtype == np.int64 and labels.shape == (images.shape[0],)
    assert labels.size == 0 or (labels.min() >= 0 and labels.max() < 10)


@FUZZ
@given(data=st.binary(max_size=3000))
def test_cifar_random_bytes(data):
    _cifar_or_data_error(data)


@FUZZ
@given(data=st.binary(max_size=300))
def test_cifar_random_bytes_with_pickle_header(data):
    _cifar_or_data_error(b"\x80\x02" + data)
    _cifar_or_data_error(b"\x80\x04" + data)


@FUZZ
@given(
    source=st.sampled_from(["py2", "py3"]),
    cut=st.integers(0, len(VALID_CIFAR_PY2)),
    edits=st.one_of(st.just([]), EDITS),
)
def test_cifar_truncated_or_mutated(source, cut, edits):
    valid = VALID_CIFAR_PY2 if source == "py2" else VALID_CIFAR_PY3
    _cifar_or_data_error(_mutate(valid[: min(cut, len(valid))], edits))


@FUZZ
@given(
    obj=st.recursive(
        st.one_of(st.none(), st.integers(), st.binary(max_size=8), st.text(max_size=8)),
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(st.sampled_from([b"data", b"labels", "data", "labels"]), inner),
        ),
        max_leaves=10,
    )
)
def test_cifar_well_formed_pickles_of_wrong_content(obj):
    _cifar_or_data_error(pickle.dumps(obj, protocol=2))


@settings(max_examples=10, deadline=None, database=None)
@given(split=st.sampled_from(["train", "test"]))
def test_cifar_full_loader_with_garbage_batch(split):
    with tempfile.TemporaryDirectory() as tmp:
        write_cifar10(tmp, n_per_batch=1)
        name = "data_batch_4" if split == "train" else "test_batch"
        (Path(tmp) / "cifar-10-batches-py" / name).write_bytes(b"\x80\x02]q\x00(K\x01e.")
        try:
            load_dataset("cifar10", tmp, split)
        except DataError as exc:
            assert name in str(exc)
        else:
            raise AssertionError("a list instead of a dict must not load")


# ---------------------------------------------------------------------------------------- STL-10


_STL_DIR = Path(tempfile.mkdtemp(prefix="selfsup_stl_fuzz_"))
write_stl10(_STL_DIR, n_train=1, n_test=1, n_unlabeled=1)


def _stl_or_data_error(x: bytes, y: bytes, split: str = "train") -> None:
    folder = _STL_DIR / "stl10_binary"
    if split == "train":
        (folder / "train_X.bin").write_bytes(x)
        (folder / "train_y.bin").write_bytes(y)
    else:
        (folder / "unlabeled_X.bin").write_bytes(x)
    try:
        ds = load_dataset("stl10", _STL_DIR, split)
    except DataError:
        return
    _check_dataset(ds)
    assert len(x) % (3 * 96 * 96) == 0 and len(ds) == len(x) // (3 * 96 * 96)
    if split == "train":
        assert ds.labels.tolist() == [v - 1 for v in y]
    else:
        assert bool((ds.labels == -1).all())


@FUZZ
@given(
    n_images=st.integers(0, 2),
    offset=st.integers(-3, 3),
    y=st.binary(max_size=3),
    split=st.sampled_from(["train", "unlabeled"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_stl_random_sizes(n_images, offset, y, split, seed):
    size = max(0, n_images * 3 * 96 * 96 + offset)
    x = np.random.default_rng(seed).integers(0, 256, size=size, dtype=np.uint8).tobytes()
    _stl_or_data_error(x, y, split)


@FUZZ
@given(cut=st.integers(0, len(VALID_STL_X)), y=st.sampled_from([b"\x01\x0a", b"\x01", b"\x00\x05"]))
def test_stl_truncated(cut, y):
    _stl_or_data_error(VALID_STL_X[:cut], y)


def teardown_module() -> None:
    shutil.rmtree(_STL_DIR, ignore_errors=True)


_CELEBA_ATTR = None


def _celeba_attr_text() -> bytes:
    global _CELEBA_ATTR
    if _CELEBA_ATTR is None:
        from fixtures import write_celeba

        with tempfile.TemporaryDirectory() as tmp:
            fx = write_celeba(tmp, partitions=(0, 0, 2))
            _CELEBA_ATTR = (fx["folder"] / "list_attr_celeba.txt").read_bytes()
    return _CELEBA_ATTR


@FUZZ
@given(edits=EDITS, cut=st.integers(0, 2000))
def test_celeba_list_files_fuzz(edits, cut):
    from selfsup.data.celeba import read_attributes, read_partition

    data = _mutate(_celeba_attr_text(), edits)[: len(_celeba_attr_text()) - cut % 50]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "list.txt"
        path.write_bytes(data)
        for reader in (read_attributes, read_partition):
            try:
                reader(path)
            except DataError:
                pass


@FUZZ
@given(data=st.binary(max_size=600))
def test_celeba_image_decoder_fuzz(data):
    from selfsup.data.celeba import decode_image

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "000001.jpg"
        path.write_bytes(data)
        try:
            image = decode_image(path, 16)
        except DataError:
            return
        assert image.shape == (3, 16, 16) and image.dtype == np.uint8
