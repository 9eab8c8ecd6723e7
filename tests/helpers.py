"""Small assertions shared by the tests (plain functions, no pytest fixtures)."""

from __future__ import annotations

import os
import signal

import torch
from lightning.pytorch.callbacks import Callback


def weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of every parameter and buffer of ``module``."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Bitwise equality of two :func:`weights` snapshots, naming the first tensor that differs."""
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


class InterruptAt(Callback):
    """Sends SIGINT to this process after ``step`` optimizer steps (a user pressing Ctrl-C)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:  # noqa: ANN001 - Lightning's hook
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGINT)
