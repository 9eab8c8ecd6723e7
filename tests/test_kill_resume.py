"""Real processes killed mid-training: SIGKILL leaves a readable checkpoint; SIGTERM exits."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

ARGS = [
    "--dataset",
    "digits",
    "--batch-size",
    "64",
    "--set",
    "model.hidden=[32]",
    "--set",
    "model.latent_dim=4",
    "--set",
    "trainer.plots=false",
    "--no-progress",
    "--seed",
    "7",
]


def _start(run: Path, epochs: int) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "selfsup",
            "train",
            "vae",
            "--out",
            str(run),
            "--epochs",
            str(epochs),
            "--json",
            *ARGS,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    return ckpt["state_dict"]


def test_sigkill_at_any_moment_then_resume_matches_uninterrupted(tmp_path):
    epochs = 6
    full = tmp_path / "full"
    assert (
        subprocess.run(
            [
                sys.executable,
                "-m",
                "selfsup",
                "train",
                "vae",
                "--out",
                str(full),
                "--epochs",
                str(epochs),
                *ARGS,
            ],
            capture_output=True,
        ).returncode
        == 0
    )

    run = tmp_path / "killed"
    proc = _start(run, epochs)
    _wait_for(run / "checkpoints" / "epoch=0001.ckpt", proc)
    proc.send_signal(signal.SIGKILL)  # no chance to clean up: possibly mid-write
    proc.wait(timeout=60)
    assert _weights(run)  # readable: a killed write only ever leaves a stray temporary file
    resumed = subprocess.run(
        [sys.executable, "-m", "selfsup", "train", "--resume", str(run), "--json"],
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads(resumed.stdout)["global_step"] == epochs * (1438 // 64)
    a, b = _weights(full), _weights(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    run = tmp_path / "term"
    proc = _start(run, epochs=500)
    _wait_for(run / "checkpoints" / "epoch=0000.ckpt", proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    summary = json.loads(out)
    assert summary["interrupted"] is True
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == summary["global_step"] > 0
