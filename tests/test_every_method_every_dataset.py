"""Every registered method builds networks that fit every dataset's image shape and trains."""

from __future__ import annotations

import pytest
import torch

from selfsup.data import dataset_spec
from selfsup.data.base import DataInfo
from selfsup.methods import method_class, method_names
from selfsup.pipelines import build_config

DATASETS = ["digits", "mnist", "cifar10", "stl10", "celeba", "dsprites-procedural"]


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("method", method_names())
def test_method_fits_dataset(method, dataset):
    spec = dataset_spec(dataset)
    config = build_config(method, dataset, use_preset=False)
    info = DataInfo(dataset, spec.image_shape, spec.num_classes, True)
    model = method_class(method)(config, info)
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4, *spec.image_shape), dtype=torch.uint8, generator=gen)
    terms = model.training_loss(images)
    assert torch.isfinite(terms["loss"]) and terms["loss"].ndim == 0
    terms["loss"].backward()
    model.eval()
    features = model.represent(images)
    assert features.ndim == 2 and features.shape[0] == 4
    if model.generative:
        x = model.preprocess(images)
        assert model.reconstruct(x).shape == x.shape
        samples = model.sample(3)
        assert samples.shape == (3, *spec.image_shape)
        assert float(samples.min()) >= 0.0 and float(samples.max()) <= 1.0
