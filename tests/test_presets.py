"""Every shipped preset resolves to a valid config, builds its networks and computes a loss."""

from __future__ import annotations

import pytest
import torch

from selfsup.config import PRESET_DIR, load_yaml, preset_path
from selfsup.data import DATASETS, dataset_spec
from selfsup.data.base import DataInfo
from selfsup.methods import method_class, method_names
from selfsup.pipelines import build_config

PRESETS = sorted(p for p in PRESET_DIR.glob("*/*.yaml") if p.parent.name in method_names())


def _dataset_for(stem: str) -> str | None:
    """The registered dataset a preset file is named after (its family's first member)."""
    if stem in DATASETS:
        return stem
    family = [name for name in sorted(DATASETS) if name.split("-")[0] == stem]
    return family[0] if family else None


def _leaves(tree: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_preset_resolves_builds_and_computes_a_loss(path):
    method = path.parent.name
    dataset = _dataset_for(path.stem)
    if dataset is None:  # a named recipe (e.g. cifar10-solo), passed with --config
        dataset = path.stem.split("-")[0]
        config = build_config(method, dataset, config_file=path)
    else:
        assert preset_path(method, dataset) == path
        config = build_config(method, dataset)
    for key, value in _leaves(load_yaml(path)).items():  # the preset's values are in force
        got = config
        for part in key.split("."):
            got = getattr(got, part)
        if isinstance(got, float):  # YAML reads 1e-05 (no dot) as a string; the config a float
            value = float(value)
        assert got == pytest.approx(value) if isinstance(got, float) else got == value, key
    spec = dataset_spec(dataset)
    size = config.data.image_size if hasattr(config.data, "image_size") else 32
    shape = tuple(spec.image_shape or (3, size, size))
    info = DataInfo(name=dataset, image_shape=shape, num_classes=max(spec.num_classes, 2),
                    has_labels=True)
    torch.manual_seed(0)
    model = method_class(method)(config, info)
    images = torch.randint(0, 256, (4, *shape), dtype=torch.uint8)
    loss = model.training_loss(images)["loss"]
    assert loss.ndim == 0 and torch.isfinite(loss)


def test_dataset_variants_share_their_family_preset():
    assert preset_path("byol", "mpi3d-real").name == "mpi3d.yaml"
    assert preset_path("mocosimclr", "dsprites-procedural").name == "dsprites.yaml"
    assert preset_path("vicreg", "mnist").name == "mnist.yaml"
    assert not preset_path("vae", "mpi3d-toy").is_file()  # no preset: defaults by image size
