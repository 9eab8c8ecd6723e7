"""Image folders larger than memory: crops from full resolution in DataLoader workers, the rest of
the augmentation batched on the device, sharded and resumable batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_vae_flags
from helpers import InterruptAt, assert_same_weights, weights
from selfsup import engine, pipelines
from selfsup.data import load_dataset
from selfsup.data.augment import AugmentConfig, BatchAugment, CroppedViews
from selfsup.data.imagefolder import crop_boxes
from selfsup.data.streaming import StreamingBatches, epoch_order
from selfsup.errors import DataError

SIZE = 12


def write_folder(data_dir: Path, n_per_class: int = 6, classes: tuple[str, ...] = ("a", "b"),
                 test: bool = True) -> Path:
    """Random-pixel RGB PNGs (lossless) of different, non-square full resolutions."""
    rng = np.random.default_rng(0)
    root = data_dir / "imagefolder"
    for split in ("train", "test") if test else ("train",):
        for c in classes:
            folder = root / split / c
            folder.mkdir(parents=True)
            for j in range(n_per_class):
                h, w = 30 + 3 * j, 44 - 2 * j
                arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                Image.fromarray(arr).save(folder / f"{j:03d}.png")
    return root


def crop_config(**kw) -> AugmentConfig:
    return AugmentConfig(crop_scale=[0.1, 0.6], crop_ratio=[0.5, 2.0], **kw)


def test_crops_are_resized_crops_of_the_full_resolution_file(tmp_path):
    from torchvision.transforms import functional as TF

    write_folder(tmp_path)
    ds = load_dataset("imagefolder", tmp_path, "train", {"image_size": SIZE})
    items = ds.training_views(crop_config(), n_views=2, seed=5)
    for epoch, i in ((0, 0), (3, 7)):
        clean, crops, label = items[(epoch, i)]
        assert torch.equal(clean, ds[i][0]) and label == int(ds.labels[i])
        assert crops.shape == (2, 3, SIZE, SIZE) and crops.dtype == torch.uint8
        # the reference: torchvision's resized_crop of the full-resolution PIL image, i.e. what
        # RandomResizedCrop does once it has drawn the box
        full = Image.open(ds.path(i)).convert("RGB")
        boxes = items.boxes(*full.size, epoch, i)
        ref = [TF.pil_to_tensor(TF.resized_crop(full, *box, [SIZE, SIZE]))
               for box in boxes.tolist()]
        assert torch.equal(crops, torch.stack(ref))
        assert torch.equal(boxes, items.boxes(*full.size, epoch, i))  # seeded by (epoch, image)
    # other epochs and images get other crops; a crop is not a piece of the resized image
    assert not torch.equal(items[(1, 0)][1], items[(0, 0)][1])
    assert not torch.equal(items[(0, 1)][1][0], items[(0, 1)][0])
    assert items.clean  # by default; a method that never uses it is spared the resize
    assert ds.training_views(crop_config(), 2, seed=5, clean=False)[(0, 0)][0] is None


def test_crop_boxes_follow_torchvisions_random_resized_crop():
    """Same algorithm as RandomResizedCrop.get_params: compare the distributions of 4000 boxes of
    a wide image (some tries fail, so the fallback matters too) and the constraints per box."""
    from torchvision.transforms import RandomResizedCrop

    width, height, scale, ratio = 60, 20, (0.2, 0.9), (0.5, 2.0)
    ours = torch.cat([crop_boxes(width, height, 4, scale, ratio, 1.0, seed)
                      for seed in range(1000)])
    torch.manual_seed(0)
    dummy = torch.empty(1, 1, 1).expand(3, height, width)
    theirs = torch.tensor([RandomResizedCrop.get_params(dummy, list(scale), list(ratio))
                           for _ in range(4000)])
    for boxes in (ours, theirs):
        top, left, h, w = boxes.T
        assert ((top >= 0) & (left >= 0) & (top + h <= height) & (left + w <= width)).all()
    for stat in (lambda b: (b[:, 2] * b[:, 3]).float() / (width * height),
                 lambda b: (b[:, 3].float() / b[:, 2]).log(),
                 lambda b: b[:, 0].float(), lambda b: b[:, 1].float()):
        a, b = stat(ours), stat(theirs)
        assert abs(a.mean() - b.mean()) < 0.1 * b.std() + 1e-3
        assert abs(a.std() - b.std()) < 0.1 * b.std() + 1e-3
    fallback = torch.tensor([(height - 20) // 2, (width - 40) // 2, 20, 40])  # ratio clipped to 2
    rates = [(boxes == fallback).all(1).float().mean() for boxes in (ours, theirs)]
    assert rates[1] > 0.02 and abs(rates[0] - rates[1]) < 0.02
    none = crop_boxes(width, height, 2000, scale, ratio, 0.25, 1)  # crop_prob: -1 rows
    assert abs((none[:, 0] < 0).float().mean() - 0.75) < 0.04


def test_no_random_crop_means_views_of_the_evaluation_view(tmp_path):
    write_folder(tmp_path)
    ds = load_dataset("imagefolder", tmp_path, "train", {"image_size": SIZE})
    cfg = AugmentConfig(hflip=1.0)  # crop_scale [1, 1]: the in-memory behaviour
    clean, crops, _ = ds.training_views(cfg, n_views=2, seed=0)[(0, 3)]
    assert crops is None
    aug = BatchAugment(cfg, (3, SIZE, SIZE))
    views = aug.views(CroppedViews(clean[None]), 2)
    flipped = clean.flip(-1).float() / 255
    assert torch.allclose(views, flipped[None].expand(2, -1, -1, -1), atol=1e-6)


def test_cropped_views_get_the_rest_of_the_augmentation_on_the_device():
    cfg = crop_config(hflip=0.5, jitter=[0.4, 0.4, 0.4, 0.1], jitter_prob=1.0, grayscale=0.3)
    aug = BatchAugment(cfg, (3, SIZE, SIZE))
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 256, (4, 3, SIZE, SIZE), dtype=torch.uint8, generator=g)
    crops = torch.randint(0, 256, (4, 2, 3, SIZE, SIZE), dtype=torch.uint8, generator=g)
    batch = CroppedViews(clean, crops)
    out = aug.views(batch, 2, generator=torch.Generator().manual_seed(9))
    # the reference: the same parameters with the crop box set to the whole (already cut) crop
    params = aug.sample_params(8, torch.Generator().manual_seed(9))
    params["box"] = torch.tensor([[0, 0, SIZE, SIZE]] * 8)
    ref = aug.apply(crops.flatten(0, 1), params)
    assert torch.equal(out, ref)
    assert torch.equal(aug.eval_transform(batch), clean.float() / 255)
    assert aug(batch).shape == (4, 3, SIZE, SIZE) and batch.shape == clean.shape
    with pytest.raises(Exception, match="cropped 2"):
        aug.views(batch, 3)


def test_streaming_batches_order_sharding_and_mid_epoch_resume(tmp_path, monkeypatch):
    import selfsup.data.streaming as streaming

    write_folder(tmp_path, n_per_class=7)  # 14 images, global batch 4: 3 batches, 2 left over
    ds = load_dataset("imagefolder", tmp_path, "train", {"image_size": SIZE})
    items = ds.training_views(crop_config(), n_views=2, seed=1)

    def batches(loader):
        return [(views.crops, labels) for views, labels in loader]

    full = StreamingBatches(items, 4, seed=1, num_workers=0, epoch_keys=True)
    full.set_epoch(2)
    assert len(full) == 3
    expected_keys = [[(2, int(i)) for i in epoch_order(14, 1, 2)[b * 4:(b + 1) * 4]]
                     for b in range(3)]  # the in-memory loader's permutation
    assert list(full.rank_keys()) == expected_keys
    reference = batches(full)

    # interrupted after one batch, resumed in a new loader (with a worker process this time)
    state = {"epoch": 2, "consumed": 1}
    resumed = StreamingBatches(items, 4, seed=1, num_workers=1, epoch_keys=True)
    resumed.load_state_dict(state)
    rest = batches(resumed)
    assert len(rest) == 2
    for (a, la), (b, lb) in zip(reference[1:], rest, strict=True):
        assert torch.equal(a, b) and torch.equal(la, lb)

    # two processes: each takes its half of every global batch
    shares = []
    for rank in (0, 1):
        monkeypatch.setattr(streaming, "rank_and_world", lambda r=rank: (r, 2))
        shares.append(list(full.rank_keys()))
    assert [a + b for a, b in zip(*shares, strict=True)] == expected_keys


def test_broken_file_in_a_worker_names_the_file(tmp_path):
    root = write_folder(tmp_path)
    bad = root / "train" / "b" / "002.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    ds = load_dataset("imagefolder", tmp_path, "train", {"image_size": SIZE})
    loader = StreamingBatches(
        ds.training_views(crop_config(), 1, seed=0), 12, seed=0, num_workers=1, epoch_keys=True
    )
    with pytest.raises(DataError) as err:
        list(loader)
    assert str(bad) in str(err.value) and "Traceback" not in str(err.value)


def test_decode_on_the_device_matches_the_workers(tmp_path):
    """data.decode=device (decode_jpeg on the training device; here the CPU): the same boxes, the
    same images up to the resize filter (PIL vs antialiased interpolate)."""
    rng = np.random.default_rng(1)
    folder = tmp_path / "imagefolder" / "train" / "x"
    folder.mkdir(parents=True)
    yy, xx = np.mgrid[0:48, 0:64]
    for j in range(3):  # smooth images: JPEG and the two resize filters agree closely
        arr = np.stack([xx * 4, yy * 5, (xx + yy) * 2 + 20 * j], -1).clip(0, 255)
        Image.fromarray(arr.astype(np.uint8)).save(folder / f"{j}.jpg", quality=95)
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / "p.png")
    ds = load_dataset("imagefolder", tmp_path, "train", {"image_size": 16})
    cfg = crop_config()
    by_workers = StreamingBatches(ds.training_views(cfg, 2, 3, "workers"), 4, 3, num_workers=0,
                                  epoch_keys=True)
    on_device = StreamingBatches(ds.training_views(cfg, 2, 3, "device"), 4, 3, num_workers=0,
                                 epoch_keys=True)
    (a, la), = list(by_workers)
    (b, lb), = list(on_device)
    assert torch.equal(la, lb) and b.clean.dtype == torch.uint8
    assert b.crops.shape == a.crops.shape == (4, 2, 3, 16, 16)
    jpeg = [k for k, key in enumerate(next(by_workers.rank_keys()))
            if ds.path(key[1]).suffix == ".jpg"]
    for k in jpeg:  # smooth JPEGs: the two decoders and resize filters agree closely
        assert (a.clean[k].float() - b.clean[k].float()).abs().mean() < 3
        assert (a.crops[k].float() - b.crops[k].float()).abs().mean() < 3


def test_streamed_training_resumes_mid_epoch_exactly(tmp_path, monkeypatch):
    write_folder(tmp_path, n_per_class=12)  # 24 images, batch 4: 6 steps per epoch
    flags = tiny_vae_flags(epochs=2)
    flags["data"] = {"batch_size": 4, "dir": str(tmp_path), "image_size": SIZE, "num_workers": 0}
    sets = ["augment.crop_scale=[0.3,1.0]", "augment.hflip=0.5", "trainer.val_every=0"]
    config = pipelines.build_config("vae", "imagefolder", flags=flags, sets=sets)
    full, result = pipelines.train(config, tmp_path / "full")
    assert result.global_step == 12

    original_fit = engine.fit

    def fit_with_interrupt(*args, **kwargs):
        return original_fit(*args, **kwargs, extra_callbacks=[InterruptAt(8)])

    monkeypatch.setattr(pipelines, "fit", fit_with_interrupt)
    config = pipelines.build_config("vae", "imagefolder", flags=flags, sets=sets)
    _, result = pipelines.train(config, tmp_path / "split")
    assert result.interrupted and result.global_step in (8, 9)  # mid epoch 2
    monkeypatch.setattr(pipelines, "fit", original_fit)
    resumed, result = pipelines.resume(tmp_path / "split")
    assert result.global_step == 12
    assert_same_weights(weights(full), weights(resumed))


@pytest.mark.parametrize("method", __import__("selfsup.methods").methods.method_names())
def test_every_method_trains_on_cropped_views(method):
    """Each method declares the views it draws (train_views) and whether it uses the un-augmented
    image (train_uses_clean); a batch holding exactly that must be enough for training_loss."""
    from selfsup.data.base import DataInfo
    from selfsup.methods import method_class

    config = pipelines.build_config(method, "imagefolder", use_preset=False,
                                    sets=[f"data.image_size={SIZE}"])
    model = method_class(method)(config, DataInfo("imagefolder", (3, SIZE, SIZE), 3, True))
    g = torch.Generator().manual_seed(0)
    views = model.train_views()
    crops = torch.randint(0, 256, (4, views, 3, SIZE, SIZE), dtype=torch.uint8, generator=g)
    clean = crops[:, 0].clone() if model.train_uses_clean() else None
    terms = model.training_loss(CroppedViews(clean, crops))
    assert torch.isfinite(terms["loss"]) and terms["loss"].ndim == 0
