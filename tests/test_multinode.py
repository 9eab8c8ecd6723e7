"""Two machines simulated on this one: two torchrun process groups on the loopback address.

Each "node" is its own ``torchrun --nnodes 2 --node-rank R --nproc-per-node 1 --master-addr
127.0.0.1`` (static rendezvous, gloo, one process per node) running ``selfsup train ...
--num-nodes 2``. The same global batch on one process must reach the same weights, and the
two-node run must continue on one node (``--resume RUN --num-nodes 1``) to the same weights as
the single-process run that never stopped.

What has to be equal for that: the global batches (the data order is a permutation seeded by
(seed, epoch), each process takes its equal share of every global batch), the initial weights (DDP
broadcasts rank 0's), the loss (VICReg's variance and covariance terms are computed on the
gathered global batch; its invariance term and the online probe are means over equal local
shares, which DDP's gradient average turns into the global mean). What is NOT equal across
topologies is the augmentation randomness: every process seeds its views from (seed, step,
rank). So the configuration is deterministic by construction: no augmentation (``crop_scale``
[1, 1], nothing else switched on for digits), an MLP backbone and a single-layer projector (no
BatchNorm, whose statistics would be per process), and SGD: with Adam, float rounding differences
of ~1e-7 in near-zero gradients of dead ReLU units are amplified to ~1e-3 by its normalization,
while SGD keeps them at rounding level (measured: 2e-7 against parameter changes of 0.1 per epoch).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from selfsup.errors import ConfigError

FLAGS = [
    "train", "vicreg", "--dataset", "digits", "--backbone", "mlp", "--hidden", "[64]",
    "--proj-dims", "[32]", "--set", "augment.crop_scale=[1.0,1.0]", "--set", "optim.name=sgd",
    "--set", "optim.lr=0.02", "--batch-size", "64", "--set", "trainer.plots=false",
    "--set", "trainer.num_threads=1", "--accelerator", "cpu", "--no-progress", "--json",
]
STEPS_PER_EPOCH = 1438 // 64


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node(rank: int, port: int, cwd: Path) -> subprocess.Popen:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(rank),
        "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", str(port),
        "-m", "selfsup", *FLAGS, "--epochs", "1", "--num-nodes", "2", "--strategy", "ddp",
        "--out", "run",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def test_two_nodes_equal_one_process_and_resume_on_one_node(tmp_path, capsys):
    from selfsup.cli import main

    node_dirs = [tmp_path / "node0", tmp_path / "node1"]
    for d in node_dirs:
        d.mkdir()
    port = _free_port()
    procs = [_node(r, port, d) for r, d in enumerate(node_dirs)]
    try:
        # meanwhile, the reference: one process, no DDP, the same global batch, 2 epochs
        single = tmp_path / "single"
        assert main([*FLAGS, "--epochs", "2", "--out", str(single)]) == 0
        outs = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    summary = json.loads(outs[0][0].strip().splitlines()[-1])
    assert summary["global_step"] == STEPS_PER_EPOCH  # each global batch of 64 split 32 + 32
    assert outs[1][0].strip() == ""  # only rank 0 reports

    run = node_dirs[0] / "run"
    # rank 0 wrote the whole run folder; node 1 (its own working directory) wrote nothing
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "config.yaml").is_file()
    assert (run / "metrics.csv").is_file() and (run / "training.json").is_file()
    assert not (node_dirs[1] / "run").exists()
    assert "num_nodes: 2" in (run / "config.yaml").read_text()

    two_nodes = _state(run / "checkpoints" / "last.ckpt")
    after_one_epoch = _state(single / "checkpoints" / "epoch=0000.ckpt")
    after_two_epochs = _state(single / "checkpoints" / "last.ckpt")
    moved = _max_diff(after_one_epoch, after_two_epochs)
    assert moved > 0.05  # training changes the weights far more than the tolerance below
    assert _max_diff(two_nodes, after_one_epoch) < 1e-5

    # continue the two-node run on one machine, one process: same weights as never stopping
    proc = subprocess.run(
        [sys.executable, "-m", "selfsup", "train", "--resume", str(run), "--epochs", "2",
         "--num-nodes", "1", "--json", "--no-progress"],
        capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["global_step"] == 2 * STEPS_PER_EPOCH
    assert _max_diff(_state(run / "checkpoints" / "last.ckpt"), after_two_epochs) < 1e-5
    assert "num_nodes: 1" in (run / "config.yaml").read_text()


def test_num_nodes_without_a_launcher_is_a_clear_error(monkeypatch):
    from selfsup.config import TrainerConfig
    from selfsup.engine import check_topology

    for var in ("MASTER_ADDR", "TORCHELASTIC_RUN_ID", "SLURM_NTASKS"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigError, match="--num-nodes 1 with --resume"):
        check_topology(TrainerConfig(num_nodes=2))
    check_topology(TrainerConfig(num_nodes=1, devices=2))  # Lightning launches these itself
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")  # Lightning's own multi-node launch
    check_topology(TrainerConfig(num_nodes=2))


def test_launcher_topology_must_match_the_config(monkeypatch):
    from selfsup.config import TrainerConfig
    from selfsup.engine import check_topology, launched_as_rank_zero, launcher_topology

    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")  # what torchrun sets
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "5")
    assert launcher_topology() == (4, 2)
    assert not launched_as_rank_zero()
    check_topology(TrainerConfig(devices=4, num_nodes=2))
    with pytest.raises(ConfigError, match="--devices 4 --num-nodes 2"):
        check_topology(TrainerConfig(devices=2, num_nodes=1))
    monkeypatch.setenv("RANK", "0")
    assert launched_as_rank_zero()
    for var in ("TORCHELASTIC_RUN_ID", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "RANK"):
        monkeypatch.delenv(var)
    monkeypatch.setenv("SLURM_NTASKS", "6")  # srun --nodes 3 --ntasks-per-node 2
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "2")
    monkeypatch.setenv("SLURM_NNODES", "3")
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    monkeypatch.setenv("SLURM_PROCID", "3")
    assert launcher_topology() == (2, 3) and not launched_as_rank_zero()


def test_batch_must_split_over_all_processes():
    from selfsup.pipelines import build_config

    with pytest.raises(ConfigError, match="2 x 3 = 6"):
        build_config("vae", "digits", sets=["trainer.devices=2", "trainer.num_nodes=3",
                                            "data.batch_size=64"])
    config = build_config("vae", "digits", sets=["trainer.num_nodes=2", "data.batch_size=64"])
    assert config.trainer.num_nodes == 2
