"""Shared test setup: small thread count, quiet libraries, tiny configs."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # tests/fixtures.py importable as `fixtures`
# One thread per process: tests start subprocesses, and OpenMP threads spin-waiting for a busy
# core make small models tens of times slower when two processes share the 2 cores.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)
for _name in ("lightning", "lightning.pytorch", "lightning.fabric"):
    logging.getLogger(_name).setLevel(logging.ERROR)
warnings.filterwarnings("ignore")


def tiny_vae_flags(epochs: int = 2, **trainer: object) -> dict:
    """Flags for a very small, fast VAE run on the embedded digits."""
    return {
        "model": {"hidden": [64], "latent_dim": 4},
        "trainer": {
            "epochs": epochs,
            "progress_bar": False,
            "plots": False,
            "log_every": 5,
            **trainer,
        },
        "data": {"batch_size": 64},
    }


@pytest.fixture
def tiny_flags():
    return tiny_vae_flags


@pytest.fixture(scope="module")
def trained_vae(tmp_path_factory):
    """A tiny VAE run on the digits, one epoch (trained once per test module)."""
    from selfsup import pipelines

    run = tmp_path_factory.mktemp("trained") / "vae"
    pipelines.train(pipelines.build_config("vae", "digits", flags=tiny_vae_flags(epochs=1)), run)
    return run
