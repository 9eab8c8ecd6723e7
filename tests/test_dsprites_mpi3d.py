"""dSprites (official npz + procedural re-rendering) and MPI3D: split sizes from index arithmetic,
loaders on tiny fixture files in the official formats, corrupt files, rendering sanity, the
datasets' augmentations and the `data prepare` command."""

from __future__ import annotations

import itertools
import json
import math
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torchvision.transforms import InterpolationMode as IM

from selfsup import cli, pipelines
from selfsup.data import check_dataset, dsprites, load_dataset, mpi3d
from selfsup.data.augment import AugmentConfig, BatchAugment
from selfsup.data.factor_data import MemmapFactorDataset, take_npz_rows
from selfsup.data.splits import (
    DSPRITES_SIZES,
    MPI3D_SIZES,
    factor_split_indices,
    unravel_factors,
)
from selfsup.errors import ConfigError, DataError

SMALL_DSPRITES = (1, 3, 2, 4, 4, 4)  # orientation < 1 and quadrants at 2 in the tiny grid
SMALL_MPI3D = (6, 6, 1, 1, 1, 2, 2)


# ------------------------------------------------------------------------------------ splits
def _dsprites_reference(k: int) -> dict[str, set[int]]:
    """The issue's rules, enumerated literally over the grid (independent of the library)."""
    train_k1 = {("square", 0, 0), ("ellipse", 0, 1), ("heart", 1, 0)}  # (shape, x>=16, y>=16)
    train_k2 = {("square", 0, 1), ("ellipse", 0, 0), ("heart", 1, 1)}
    val = {("square", 1, 0), ("ellipse", 1, 1), ("heart", 0, 1)}
    names = ["square", "ellipse", "heart"]
    out: dict[str, set[int]] = {"train": set(), "val": set(), "test": set()}
    for shape, scale, orient, x, y in itertools.product(range(3), range(6), range(10), range(32),
                                                        range(32)):
        index = shape * 245760 + scale * 40960 + orient * 1024 + x * 32 + y
        key = (names[shape], int(x >= 16), int(y >= 16))
        if key in train_k1 or (k == 2 and key in train_k2):
            out["train"].add(index)
        elif key in val:
            out["val"].add(index)
        else:
            out["test"].add(index)
    return out


@pytest.mark.parametrize("k,sizes", [(1, (46080, 46080, 92160)), (2, (92160, 46080, 46080))])
def test_dsprites_ood_split_sizes_and_membership(k, sizes):
    parts = factor_split_indices("dsprites", DSPRITES_SIZES, "ood", k, heldout_fraction=0.1)
    train = torch.cat([parts["train"], parts["heldout"]])
    assert (train.numel(), parts["val"].numel(), parts["test"].numel()) == sizes
    assert parts["heldout"].numel() == round(0.1 * sizes[0])
    ref = _dsprites_reference(k)
    assert set(train.tolist()) == ref["train"]
    assert set(parts["val"].tolist()) == ref["val"]
    assert set(parts["test"].tolist()) == ref["test"]
    # deterministic, and the held-out set does not depend on anything but the train set
    again = factor_split_indices("dsprites", DSPRITES_SIZES, "ood", k, heldout_fraction=0.1)
    assert torch.equal(again["heldout"], parts["heldout"])


def test_index_formula_and_unravel():
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 737280, 500)
    c = unravel_factors(idx, DSPRITES_SIZES)
    assert np.array_equal(c[:, 1] * 245760 + c[:, 2] * 40960 + c[:, 3] * 1024 + c[:, 4] * 32
                          + c[:, 5], idx)
    idx = rng.integers(0, 1036800, 500)
    c = unravel_factors(idx, MPI3D_SIZES)
    strides = [172800, 28800, 14400, 4800, 1600, 40, 1]
    assert np.array_equal((c * strides).sum(1), idx)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_mpi3d_ood_split_sizes(k):
    parts = factor_split_indices("mpi3d", MPI3D_SIZES, "ood", k, heldout_fraction=0.0)
    assert parts["heldout"].numel() == 0
    assert parts["train"].numel() == k * 172800
    assert parts["val"].numel() == 172800
    assert parts["test"].numel() == 1036800 - (k + 1) * 172800
    c = unravel_factors(parts["val"][::997].numpy(), MPI3D_SIZES)
    assert np.all((c[:, 0] - c[:, 1]) % 6 == 4)
    c = unravel_factors(parts["train"][::997].numpy(), MPI3D_SIZES)
    assert np.all((c[:, 0] - c[:, 1]) % 6 < k)
    if k == 3:
        assert (parts["train"].numel(), parts["val"].numel(), parts["test"].numel()) == (
            518400, 172800, 345600)


def test_iid_scheme_same_sizes_random_members():
    ood = factor_split_indices("dsprites", DSPRITES_SIZES, "ood", 1, 0.1)
    iid = factor_split_indices("dsprites", DSPRITES_SIZES, "iid", 1, 0.1)
    for s in ood:
        assert ood[s].numel() == iid[s].numel()
    union = torch.cat(list(iid.values()))
    assert union.unique().numel() == union.numel() == 184320
    assert set(union.tolist()) == set(torch.cat(list(ood.values())).tolist())
    # val of iid mixes every shape-quadrant combination
    c = unravel_factors(iid["val"].numpy(), DSPRITES_SIZES)
    quadrant = 2 * (c[:, 4] >= 16) + (c[:, 5] >= 16)
    assert len(set(zip(c[:, 1].tolist(), quadrant.tolist(), strict=True))) == 12


@pytest.mark.parametrize("sets,match", [
    (["data.ood_k=3"], "ood_k"),
    (["data.ood_k=-1"], "ood_k"),
    (["data.split_scheme=random"], "split_scheme"),
    (["data.heldout_fraction=1.5"], "fraction"),
])
def test_bad_split_options_are_config_errors(sets, match):
    with pytest.raises(ConfigError, match=match):
        pipelines.build_config("byol", "dsprites-procedural", sets=sets)


def test_mpi3d_accepts_k4_dsprites_does_not():
    assert pipelines.build_config("byol", "mpi3d-toy", sets=["data.ood_k=4"]).data.ood_k == 4
    with pytest.raises(ConfigError, match="from 1 to 2"):
        pipelines.build_config("byol", "dsprites", sets=["data.ood_k=4"])


# --------------------------------------------------------------------------------- rendering
def _render(shape, scale, orient, x, y):
    i = ((shape * 6 + scale) * 40 + orient) * 1024 + x * 32 + y
    return dsprites.render_dsprites(np.array([i]))[0]


def test_rendering_is_binary_and_in_index_order():
    idx = np.array([0, 1, 1024, 40960, 245760, 737279])
    images = dsprites.render_dsprites(idx)
    assert images.dtype == np.uint8 and images.shape == (6, 64, 64)
    assert set(np.unique(images).tolist()) <= {0, 255}
    for i, image in zip(idx, images, strict=True):
        c = unravel_factors([i], DSPRITES_SIZES)[0]
        assert np.array_equal(image, _render(c[1], c[2], c[3], c[4], c[5]))
    # chunked rendering of many indices equals one by one
    many = np.arange(0, 737280, 9973)
    assert np.array_equal(dsprites.render_dsprites(many, chunk=7),
                          np.stack([dsprites.render_dsprites([i])[0] for i in many]))


def test_positions_shift_the_sprite_by_whole_pixels():
    base = _render(2, 3, 5, 0, 0)
    for x in (1, 17, 31):
        shifted = _render(2, 3, 5, x, 0)
        assert np.array_equal(shifted[:, x:], base[:, : 64 - x])  # posX moves columns
        assert shifted[:, :x].sum() == 0
    for y in (1, 30):
        shifted = _render(2, 3, 5, 0, y)
        assert np.array_equal(shifted[y:, :], base[: 64 - y, :])  # posY moves rows
    centre = _render(0, 5, 0, 10, 20)
    rows, cols = np.nonzero(centre)
    # pixel i covers [i, i + 1): the centre of mass of pixel indices is centre - 0.5
    assert cols.mean() + 0.5 == pytest.approx(16 + 10, abs=1e-9)
    assert rows.mean() + 0.5 == pytest.approx(16 + 20, abs=1e-9)


def test_scale_grows_area_quadratically_and_shapes_differ():
    scales = np.linspace(0.5, 1.0, 6)
    shape, scale, angle = (g.ravel() for g in np.meshgrid(
        np.arange(3), scales, np.linspace(0, 2 * math.pi, 40), indexing="ij"))
    patches = dsprites.render_sprites(shape, scale, angle).reshape(3, 6, 40, 32, 32)
    mean_area = patches.sum(axis=(3, 4)).mean(axis=2)  # over orientations: less pixel rounding
    assert np.all(np.diff(mean_area, axis=1) > 0)
    ratio = mean_area / mean_area[:, -1:]
    np.testing.assert_allclose(ratio, np.broadcast_to(scales**2, ratio.shape), rtol=0.04)
    areas = np.array([[(_render(s, sc, 0, 16, 16) > 0).sum() for sc in range(6)]
                      for s in range(3)])
    # square 16x16 px at scale 1 exactly; ellipse pi*10*5; heart larger than the square
    assert areas[0, -1] == 256
    assert areas[1, -1] == pytest.approx(math.pi * 50, rel=0.05)
    assert areas[2, -1] > areas[0, -1] > areas[1, -1]
    masks = [_render(s, 5, 0, 16, 16) for s in range(3)]
    assert all(not np.array_equal(a, b) for a, b in itertools.combinations(masks, 2))


@pytest.mark.parametrize("orient", [0, 3, 7, 12, 25])
def test_orientation_turns_the_ellipse_counter_clockwise(orient):
    image = _render(1, 5, orient, 16, 16)
    rows, cols = np.nonzero(image)
    x, y = cols - cols.mean(), -(rows - rows.mean())  # y up
    cov = np.cov(np.stack([x, y]))
    evals, evecs = np.linalg.eigh(cov)
    major = evecs[:, -1]
    angle = math.atan2(major[1], major[0]) % math.pi
    expected = (2 * math.pi * orient / 39) % math.pi
    diff = min(abs(angle - expected), math.pi - abs(angle - expected))
    assert diff < 0.06
    assert evals[-1] / evals[0] == pytest.approx(4.0, rel=0.15)  # semi-axes 10 and 5 px


def test_square_has_quarter_turn_symmetry_heart_does_not():
    # orientation index k has angle 2 pi k / 39; rotate the image by 90 degrees with numpy and
    # compare with the sprite rendered at the rotated angle via render_sprites directly.
    for shape, symmetric in ((0, True), (2, False)):
        a = dsprites.render_sprites(np.array([shape]), np.array([1.0]), np.array([0.3]))[0]
        b = dsprites.render_sprites(np.array([shape]), np.array([1.0]),
                                    np.array([0.3 + math.pi / 2]))[0]
        assert (a != np.rot90(b, k=-1)).mean() < 0.01  # rendering at +90 deg = rot90 of image
        assert ((a != b).mean() < 0.01) == symmetric


# ---------------------------------------------------------------------------- dSprites file
def _write_dsprites(path: Path, sizes=SMALL_DSPRITES, *, metadata=None, skip=(), imgs=None,
                    classes=None, compressed=True) -> dict:
    n = int(np.prod(sizes))
    grid = unravel_factors(np.arange(n), sizes)
    values = dsprites.factor_values(sizes)
    lat_values = np.stack([values[name][grid[:, f]] for f, name in
                           enumerate(dsprites.LATENT_NAMES)], axis=1)
    if imgs is None:
        imgs = (dsprites.render_dsprites(np.arange(n), sizes) // 255).astype(np.uint8)
    meta = {
        "latents_names": dsprites.LATENT_NAMES,
        "latents_sizes": np.array(sizes),
        "latents_possible_values": values,
        "description": "tiny fixture",
    } if metadata is None else metadata
    arrays = {
        "imgs": imgs,
        "latents_values": lat_values,
        "latents_classes": grid if classes is None else classes,
        "metadata": np.array(meta, dtype=object),
    }
    for key in skip:
        arrays.pop(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return arrays


@pytest.fixture
def small_grids(monkeypatch):
    monkeypatch.setattr(dsprites, "GRID_SIZES", SMALL_DSPRITES)
    monkeypatch.setattr(mpi3d, "GRID_SIZES", SMALL_MPI3D)


def _dsprites_path(root: Path) -> Path:
    return root / "dsprites" / dsprites.FILE


def test_official_loader_reads_fixture(tmp_path, small_grids):
    arrays = _write_dsprites(_dsprites_path(tmp_path))
    parts = factor_split_indices("dsprites", SMALL_DSPRITES, "ood", 2, 0.1)
    total = 0
    for split in ("train", "heldout", "val", "test"):
        ds = load_dataset("dsprites", tmp_path, split, {"ood_k": 2})
        idx = parts[split].numpy()
        total += len(ds)
        assert len(ds) == idx.size
        assert ds.images.shape == (idx.size, 1, 64, 64)
        assert torch.equal(ds.images[:, 0], torch.from_numpy(arrays["imgs"][idx] * 255))
        assert torch.equal(ds.factors, torch.from_numpy(arrays["latents_classes"][idx, 1:]))
        assert torch.equal(ds.labels, ds.factors[:, 0])
        assert ds.factor_names == ["shape", "scale", "orientation", "posX", "posY"]
    assert total == 3 * 2 * 1 * 4 * 4  # orientation < 4 // 4
    report = check_dataset("dsprites", tmp_path)
    assert report["valid"], report["message"]


def test_procedural_equals_rendered_fixture(tmp_path, small_grids):
    _write_dsprites(_dsprites_path(tmp_path))
    a = load_dataset("dsprites", tmp_path, "val", {})
    b = load_dataset("dsprites-procedural", tmp_path / "nothing", "val", {})
    assert torch.equal(a.images, b.images) and torch.equal(a.factors, b.factors)


def test_official_loader_accepts_uncompressed_npz(tmp_path, small_grids):
    _write_dsprites(_dsprites_path(tmp_path), compressed=False)
    assert len(load_dataset("dsprites", tmp_path, "test", {"ood_k": 1})) > 0


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /dev/null",))


@pytest.mark.parametrize("case,match", [
    ("no_metadata", "no array 'metadata'"),
    ("no_imgs", "no array 'imgs'"),
    ("wrong_sizes", "sizes"),
    ("wrong_names", "names"),
    ("metadata_not_dict", "not a dict"),
    ("evil_pickle", "unpickled safely"),
    ("imgs_shape", "'imgs' is"),
    ("shuffled_classes", "official order"),
    ("truncated", "valid file|truncated|not a readable"),
    ("not_zip", "not a readable"),
    ("real_size_check", "sizes"),
])
def test_corrupt_dsprites_files_raise_data_error(tmp_path, monkeypatch, case, match):
    path = _dsprites_path(tmp_path)
    monkeypatch.setattr(dsprites, "GRID_SIZES", SMALL_DSPRITES)
    n = int(np.prod(SMALL_DSPRITES))
    if case == "no_metadata":
        _write_dsprites(path, skip=("metadata",))
    elif case == "no_imgs":
        _write_dsprites(path, skip=("imgs",))
    elif case == "wrong_sizes":
        _write_dsprites(path, metadata={"latents_names": dsprites.LATENT_NAMES,
                                        "latents_sizes": np.array([1, 3, 2, 4, 4, 5])})
    elif case == "wrong_names":
        _write_dsprites(path, metadata={"latents_names": ("a", "b", "c", "d", "e", "f"),
                                        "latents_sizes": np.array(SMALL_DSPRITES)})
    elif case == "metadata_not_dict":
        _write_dsprites(path, metadata=[1, 2, 3])
    elif case == "evil_pickle":
        _write_dsprites(path, metadata={"x": _Evil()})
    elif case == "imgs_shape":
        _write_dsprites(path, imgs=np.zeros((n, 32, 32), np.uint8))
    elif case == "shuffled_classes":
        grid = unravel_factors(np.arange(n), SMALL_DSPRITES)
        _write_dsprites(path, classes=grid[::-1].copy())
    elif case == "truncated":
        _write_dsprites(path, compressed=False)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif case == "not_zip":
        path.parent.mkdir(parents=True)
        path.write_bytes(b"this is not an npz file" * 10)
    elif case == "real_size_check":
        _write_dsprites(path)
        monkeypatch.setattr(dsprites, "GRID_SIZES", DSPRITES_SIZES)
    with pytest.raises(DataError, match=match):
        load_dataset("dsprites", tmp_path, "train", {})
    report = check_dataset("dsprites", tmp_path)
    assert not report["valid"]


def test_missing_dsprites_file_names_the_procedural_alternative(tmp_path):
    with pytest.raises(DataError, match="does not exist.*dsprites-procedural"):
        load_dataset("dsprites", tmp_path, "train", {})
    report = check_dataset("dsprites", tmp_path)
    assert not report["valid"] and report["message"].count("does not exist") == 1


def test_truncated_member_inside_valid_zip_is_data_error(tmp_path, small_grids):
    """A zip whose imgs member is shorter than its .npy header promises (stored, valid CRC)."""
    path = _dsprites_path(tmp_path)
    arrays = _write_dsprites(path, compressed=False)
    with zipfile.ZipFile(path) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    members["imgs.npy"] = members["imgs.npy"][:-4096]
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    with pytest.raises(DataError, match="truncated"):
        take_npz_rows(path, "imgs", np.arange(len(arrays["imgs"])), "fix")


# -------------------------------------------------------------------------------------- MPI3D
def _mpi3d_images(sizes=SMALL_MPI3D) -> np.ndarray:
    n = int(np.prod(sizes))
    images = np.zeros((n, 64, 64, 3), dtype=np.uint8)
    images[:, :, :, 0] = (np.arange(n) % 256)[:, None, None]
    images[:, :, :, 1] = (np.arange(n) // 256)[:, None, None]
    images[:, 5, 7, 2] = 200  # a marker showing the H, W, C layout
    return images


def _write_mpi3d(root: Path, images: np.ndarray, variant="toy", key="images", compressed=True):
    path = root / "mpi3d" / f"mpi3d_{variant}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    (np.savez_compressed if compressed else np.savez)(path, **{key: images})
    return path


@pytest.mark.parametrize("compressed", [True, False])
def test_mpi3d_prepare_and_load(tmp_path, small_grids, capsys, compressed):
    images = _mpi3d_images()
    _write_mpi3d(tmp_path, images, compressed=compressed)
    with pytest.raises(DataError, match="data prepare mpi3d --variant toy"):
        load_dataset("mpi3d-toy", tmp_path, "train", {})
    code = cli.main(["data", "prepare", "mpi3d", "--variant", "toy", "--data-dir",
                     str(tmp_path), "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == len(images) and not report["skipped"]
    prepared = np.load(tmp_path / "mpi3d" / "mpi3d_toy_images.npy")
    assert np.array_equal(prepared, images)
    parts = factor_split_indices("mpi3d", SMALL_MPI3D, "ood", 3, 0.1)
    for split in ("train", "heldout", "val", "test"):
        ds = load_dataset("mpi3d-toy", tmp_path, split, {})
        assert isinstance(ds, MemmapFactorDataset) and isinstance(ds.images, np.memmap)
        assert torch.equal(ds.indices, parts[split])
        assert len(ds) == parts[split].numel() and ds.image_shape == (3, 64, 64)
        for pos in (0, len(ds) - 1):
            image, label = ds[pos]
            g = int(ds.indices[pos])
            assert image.shape == (3, 64, 64) and image.dtype == torch.uint8
            assert int(image[0, 0, 0]) == g % 256 and int(image[1, 0, 0]) == g // 256
            assert int(image[2, 5, 7]) == 200 and int(image[2, 7, 5]) == 0
            assert label == int(ds.factors[pos, 1]) == unravel_factors([g], SMALL_MPI3D)[0, 1]
        batch = ds.get_batch(torch.tensor([len(ds) - 1, 0]))
        assert torch.equal(batch[0], ds[len(ds) - 1][0]) and torch.equal(batch[1], ds[0][0])
    sizes = {s: len(load_dataset("mpi3d-toy", tmp_path, s, {})) for s in ("train", "heldout")}
    assert sizes["train"] + sizes["heldout"] == 3 * 24  # K=3 of 6 colour-shape diagonals
    # preparing again keeps the valid output
    assert cli.main(["data", "prepare", "mpi3d-toy", "--data-dir", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["skipped"]
    assert check_dataset("mpi3d-toy", tmp_path)["valid"]


@pytest.mark.parametrize("case,match", [
    ("missing", "is missing"),
    ("wrong_key", "no array 'images'"),
    ("wrong_shape", "expected uint8"),
    ("real_size_check", "expected uint8"),
    ("truncated", "truncated|not a readable|cannot be read"),
])
def test_mpi3d_prepare_errors(tmp_path, monkeypatch, capsys, case, match):
    monkeypatch.setattr(mpi3d, "GRID_SIZES", SMALL_MPI3D)
    images = _mpi3d_images()
    if case == "wrong_key":
        _write_mpi3d(tmp_path, images, key="imgs")
    elif case == "wrong_shape":
        _write_mpi3d(tmp_path, images[:, :32])
    elif case == "real_size_check":
        _write_mpi3d(tmp_path, images)
        monkeypatch.setattr(mpi3d, "GRID_SIZES", MPI3D_SIZES)
    elif case == "truncated":
        path = _write_mpi3d(tmp_path, images, compressed=False)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) - 5000])
    with pytest.raises(DataError, match=match):
        mpi3d.prepare(tmp_path, "toy")
    assert cli.main(["data", "prepare", "mpi3d", "--data-dir", str(tmp_path)]) == 2
    assert not (tmp_path / "mpi3d" / "mpi3d_toy_images.npy").exists()


def test_mpi3d_damaged_prepared_file(tmp_path, small_grids):
    folder = tmp_path / "mpi3d"
    folder.mkdir()
    np.save(folder / "mpi3d_real_images.npy", np.zeros((10, 64, 64, 3), np.uint8))
    with pytest.raises(DataError, match="Delete it"):
        load_dataset("mpi3d-real", tmp_path, "train", {})
    data = (folder / "mpi3d_real_images.npy").read_bytes()
    (folder / "mpi3d_real_images.npy").write_bytes(data[:200])
    with pytest.raises(DataError, match="Delete it"):
        load_dataset("mpi3d-real", tmp_path, "train", {})


def test_prepare_refuses_other_datasets(tmp_path, capsys):
    assert cli.main(["data", "prepare", "dsprites", "--data-dir", str(tmp_path)]) == 2
    assert "Only MPI3D" in capsys.readouterr().err


# ------------------------------------------------------------------------------ augmentations
def test_dataset_augmentations_replace_generic_ones():
    d = pipelines.build_config("byol", "dsprites-procedural").augment
    assert (d.affine_degrees, d.affine_scale, d.interpolation) == (4.0, [0.81, 1.0], "nearest")
    assert d.crop_scale == [1.0, 1.0] and d.hflip == 0 and d.blur_prob == 0 and d.jitter_prob == 0
    m = pipelines.build_config("simclr", "mpi3d-toy").augment
    assert (m.crop_scale, m.crop_prob) == ([0.5, 1.0], 0.9)
    assert (m.jitter, m.jitter_prob, m.grayscale) == ([0.4, 0.4, 0.4, 0.0], 0.8, 0.2)
    assert m.hflip == 0 and m.blur_prob == 0 and m.affine_degrees == 0
    # a method that does not augment stays unaugmented; --set still wins
    assert pipelines.build_config("vae", "dsprites-procedural").augment.affine_degrees == 0
    c = pipelines.build_config("byol", "dsprites-procedural", sets=["augment.affine_degrees=9"])
    assert c.augment.affine_degrees == 9


def test_dsprites_affine_matches_torchvision_nearest():
    spec = dsprites.AUGMENT
    cfg = AugmentConfig(**{k: spec[k] for k in ("affine_degrees", "affine_scale",
                                                "interpolation")})
    aug = BatchAugment(cfg, (1, 64, 64))
    images = torch.from_numpy(dsprites.render_dsprites(np.arange(3, 737280, 61440)))[:, None]
    params = aug.sample_params(images.shape[0], torch.Generator().manual_seed(0))
    assert float(params["angle"].abs().max()) <= 4.0
    assert 0.81 <= float(params["scale"].min()) and float(params["scale"].max()) <= 1.0
    out = aug.apply(images, params)
    assert set(out.unique().tolist()) <= {0.0, 1.0}  # nearest keeps the images binary
    for n in range(images.shape[0]):
        ref = TF.affine(images[n].float() / 255, float(params["angle"][n]), [0.0, 0.0],
                        float(params["scale"][n]), [0.0, 0.0], IM.NEAREST)
        # nearest: points within float rounding of a half-pixel tie may differ (as for the
        # generic affine test); at most 0.5% of the pixels
        assert (out[n] != ref).float().mean() < 0.005


def test_pickle_of_metadata_only(tmp_path, small_grids):
    """imgs / latents are read with allow_pickle off: an object-dtype imgs member is refused."""
    path = _dsprites_path(tmp_path)
    n = int(np.prod(SMALL_DSPRITES))
    _write_dsprites(path, imgs=np.array([pickle.dumps(0)] * n, dtype=object))
    with pytest.raises(DataError):
        load_dataset("dsprites", tmp_path, "train", {})


# ------------------------------------------------------------------------------------- fuzzing
@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, 4000), edits=st.lists(st.tuples(st.integers(0, 10**6),
                                                         st.integers(0, 255)), max_size=6),
       compressed=st.booleans())
def test_fuzzed_dsprites_file_loads_or_raises_data_error(tmp_path_factory, small_grids, cut,
                                                         edits, compressed):
    root = tmp_path_factory.mktemp("fuzz")
    path = _dsprites_path(root)
    _write_dsprites(path, compressed=compressed)
    data = bytearray(path.read_bytes())
    for pos, value in edits:
        data[pos % len(data)] = value
    path.write_bytes(bytes(data[: len(data) - cut]))
    try:
        ds = load_dataset("dsprites", root, "val", {})
    except DataError:
        return
    assert ds.images.shape[1:] == (1, 64, 64) and ds.images.dtype == torch.uint8
