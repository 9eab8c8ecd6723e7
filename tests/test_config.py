"""Config resolution: layers, flags, presets and clear errors for bad values."""

from __future__ import annotations

import pytest

from selfsup.config import parse_overrides
from selfsup.errors import ConfigError
from selfsup.pipelines import build_config


def test_layers_override_in_order(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("optim:\n  lr: 0.5\nmodel:\n  beta: 2.0\n")
    config = build_config(
        "vae", "digits", config_file=cfg_file, flags={"beta": 3.0}, sets=["optim.lr=0.25"]
    )
    assert config.optim.lr == 0.25  # --set beats the file
    assert config.model.beta == 3.0  # a flag beats the file
    assert config.model.latent_dim == 16  # from the digits preset
    config = build_config("vae", "digits", use_preset=False)
    assert config.model.latent_dim == 10  # the dataclass default


def test_free_flags_map_to_their_section():
    config = build_config("vae", "digits", flags={"latent_dim": 7, "gradient_clip": 1.5})
    assert config.model.latent_dim == 7
    assert config.trainer.gradient_clip == 1.5


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"sets": ["optim.lr=-1"]}, "lr"),
        ({"sets": ["model.latnet_dim=3"]}, "latnet_dim"),
        ({"sets": ["data.batch_size=abc"]}, "batch_size"),
        ({"flags": {"no_such_option": 1}}, "--no-such-option"),
        ({"sets": ["trainer.precision=fp8"]}, "precision"),
        # weights in float64 / bf16 met float32 inputs in a bare traceback: refused up front
        ({"sets": ["trainer.precision=64-true"]}, "64-true are not offered"),
        ({"sets": ["trainer.precision=bf16-true"]}, "bf16-true and 64-true"),
        ({"sets": ["trainer.devices=3", "data.batch_size=64"]}, "multiple of trainer.devices"),
        ({"sets": ["model.likelihood=poisson"]}, "likelihood"),
        ({"sets": ["bogus_section.x=1"]}, "bogus_section"),
    ],
)
def test_bad_values_are_rejected_clearly(kwargs, fragment):
    with pytest.raises(ConfigError) as info:
        build_config("vae", "digits", **kwargs)
    assert fragment in str(info.value)


def test_unknown_method_and_dataset():
    with pytest.raises(ConfigError, match="Available methods"):
        build_config("nope", "digits")
    with pytest.raises(ConfigError, match="mnist"):
        build_config("vae", "not-a-dataset")


def test_config_file_for_another_method(tmp_path):
    path = tmp_path / "other.yaml"
    path.write_text("method: simclr\n")
    with pytest.raises(ConfigError, match="simclr"):
        build_config("vae", "digits", config_file=path)


def test_parse_overrides_nested_and_typed():
    assert parse_overrides(["a.b=1", "a.c=[1, 2]", "d=x"]) == {"a": {"b": 1, "c": [1, 2]}, "d": "x"}
    assert parse_overrides(["optim.lr=1e-3", "e=", "f=a=b", "g=true"]) == {
        "optim": {"lr": 0.001}, "e": "", "f": "a=b", "g": True}
    with pytest.raises(ConfigError, match="cannot be parsed"):
        parse_overrides(["model.hidden=[32,"])
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_overrides(["optim..lr=3"])
    with pytest.raises(ConfigError):
        parse_overrides(["novalue"])


def test_config_round_trips_through_yaml(tmp_path):
    from selfsup.config import config_from_dict, load_yaml
    from selfsup.methods import method_class

    config = build_config("vae", "digits", flags={"beta": 4.0})
    config.save(tmp_path / "config.yaml")
    again = config_from_dict(
        load_yaml(tmp_path / "config.yaml"), method_class("vae").config_class, "x"
    )
    assert again.to_dict() == config.to_dict()
