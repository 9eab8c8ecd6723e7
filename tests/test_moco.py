"""MoCo-SimCLR: InfoNCE against explicit loops and SimCLR's NT-Xent, the FIFO queue, the batch
check, and exact resume of the queue and the EMA key encoder."""

from __future__ import annotations

import math
import os

import pytest
import torch

from helpers import InterruptAt, assert_same_weights, weights
from selfsup import engine, pipelines
from selfsup.data.base import DataInfo
from selfsup.errors import ConfigError
from selfsup.losses.moco import MoCoLoss, moco_loss
from selfsup.losses.simclr import nt_xent_loss
from selfsup.methods import method_class

STEPS_PER_EPOCH = 1438 // 64


def _unit(x: torch.Tensor) -> list[list[float]]:
    return [[v / math.sqrt(sum(u * u for u in row)) for v in row] for row in x.tolist()]


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def _data(seed: int, n: int = 5, d: int = 4, k: int = 7):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(m, d, generator=g, dtype=torch.float64) for m in (n, n, n, n, k)]


@pytest.mark.parametrize("t", [0.1, 0.5])
def test_queue_loss_matches_an_explicit_loop(t):
    q_a, q_b, k_a, k_b, queue = _data(0)
    terms = moco_loss(q_a, q_b, k_a, k_b, queue, t)
    qs, ks, negs = _unit(torch.cat([q_a, q_b])), _unit(torch.cat([k_b, k_a])), _unit(queue)
    total = align = 0.0
    for u, p in zip(qs, ks, strict=True):
        pos = _dot(u, p) / t
        denom = math.exp(pos) + sum(math.exp(_dot(u, w) / t) for w in negs)
        total += -pos + math.log(denom)
        align += -pos
    assert abs(float(terms["loss"]) - total / len(qs)) < 1e-10
    assert abs(float(terms["alignment"]) - align / len(qs)) < 1e-10
    module = MoCoLoss(t)(q_a, q_b, k_a, k_b, queue)
    assert float(module["loss"]) == float(terms["loss"])


def test_in_batch_loss_with_separate_keys_matches_a_loop():
    q_a, q_b, k_a, k_b, _ = _data(1)
    t, n = 0.2, q_a.shape[0]
    terms = moco_loss(q_a, q_b, k_a, k_b, None, t)
    qs, cols = _unit(torch.cat([q_a, q_b])), _unit(torch.cat([k_a, k_b]))
    total = 0.0
    for i, u in enumerate(qs):
        pos = (i + n) % (2 * n)
        total += -_dot(u, cols[pos]) / t + math.log(
            sum(math.exp(_dot(u, c) / t) for j, c in enumerate(cols) if j != i))
    assert abs(float(terms["loss"]) - total / (2 * n)) < 1e-10


def test_no_queue_with_online_keys_is_simclr():
    q_a, q_b, *_ = _data(2, n=6, d=5)
    q_a.requires_grad_(True)
    ours = moco_loss(q_a, q_b, q_a, q_b, torch.empty(0, 5), 0.1)
    ref = nt_xent_loss(q_a, q_b, 0.1)
    for key in ("loss", "alignment", "uniformity"):
        torch.testing.assert_close(ours[key], ref[key], rtol=1e-12, atol=1e-12)
    g1 = torch.autograd.grad(ours["loss"], q_a)[0]
    g2 = torch.autograd.grad(ref["loss"], q_a)[0]
    torch.testing.assert_close(g1, g2)
    with pytest.raises(ConfigError, match="temperature"):
        moco_loss(q_a, q_b, q_a, q_b, None, 0.0)


def _config(queue: int, epochs: int = 2, **model: object):
    return pipelines.build_config("mocosimclr", "digits", flags={
        "model": {"width": 8, "proj_dims": [64, 32], "queue_size": queue, **model},
        "trainer": {"epochs": epochs, "progress_bar": False, "plots": False, "log_every": 5,
                    "val_every": 0},
        "data": {"batch_size": 64},
    })


def test_queue_must_be_a_multiple_of_the_batch_and_is_fifo():
    info = DataInfo("digits", (1, 8, 8), 10, True)
    with pytest.raises(ConfigError, match="multiple of data.batch_size"):
        method_class("mocosimclr")(_config(100), info)
    with pytest.raises(ConfigError, match="queue_size"):
        _config(-64)
    method = method_class("mocosimclr")(_config(192), info)
    assert method.queue.shape == (192, 32) and int(method.queue_ptr) == 0
    keys = [torch.full((64, 32), float(i)) for i in range(4)]
    for k in keys:
        method.enqueue(k)
    # 4 batches into 3 slots: the oldest batch was overwritten, the pointer wrapped around
    assert torch.equal(method.queue[:64], keys[3]) and torch.equal(method.queue[64:128], keys[1])
    assert int(method.queue_ptr) == 64
    no_queue = method_class("mocosimclr")(_config(0), info)
    assert not hasattr(no_queue, "queue") and not hasattr(no_queue, "key_backbone")


def test_queue_and_key_encoder_resume_exactly(tmp_path, monkeypatch):
    """SIGINT mid-epoch, then resume: the same weights, queue and pointer as never stopping."""
    full, result = pipelines.train(_config(128, encode_method="softmax", message_size=4,
                                           vocab_size=4), tmp_path / "full")
    assert result.global_step == 2 * STEPS_PER_EPOCH
    reference = weights(full)
    assert int(reference["queue_ptr"]) == (2 * STEPS_PER_EPOCH * 64) % 128
    key = [k for k in reference if k.startswith("key_backbone.")][0]
    assert not torch.equal(reference[key], reference[key.removeprefix("key_")])  # EMA, not copy
    torch.manual_seed(0)
    untrained = method_class("mocosimclr")(_config(128), DataInfo("digits", (1, 8, 8), 10, True))
    assert not torch.equal(reference["queue"], untrained.queue)  # keys were enqueued
    assert torch.allclose(reference["queue"].norm(dim=1), torch.ones(128))
    original_fit = engine.fit

    def fit_with_interrupt(*args, **kwargs):
        return original_fit(*args, **kwargs, extra_callbacks=[InterruptAt(31)])

    monkeypatch.setattr(pipelines, "fit", fit_with_interrupt)
    _, result = pipelines.train(_config(128, encode_method="softmax", message_size=4,
                                        vocab_size=4), tmp_path / "split")
    assert result.interrupted
    monkeypatch.setattr(pipelines, "fit", original_fit)
    resumed, result = pipelines.resume(tmp_path / "split")
    assert result.global_step == 2 * STEPS_PER_EPOCH
    assert_same_weights(weights(resumed), reference)


# ------------------------------------------------------------------ two processes (gloo, CPU)
def _queue_worker(r: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=r, world_size=2)
    try:
        # global batch 64 = 32 per process; queue of 3 global batches
        method = method_class("mocosimclr")(_config(192), DataInfo("digits", (1, 8, 8), 10, True))
        for step in range(4):
            method.enqueue(torch.full((32, 32), float(10 * step + r)))
        torch.save({"queue": method.queue, "ptr": int(method.queue_ptr)},
                   os.path.join(out_dir, f"rank{r}.pt"))
    finally:
        dist.destroy_process_group()


def test_queue_under_ddp_holds_every_process_keys_in_rank_order(tmp_path):
    """Each step enqueues the gathered global batch (rank 0's keys, then rank 1's), FIFO."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_queue_worker, args=(port, str(tmp_path)), nprocs=2, join=True,
                       start_method="fork")
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    # 4 global batches of 64 into 192 slots: batch 3 overwrote batch 0 in slots 0..63
    expected = torch.empty(192, 32)
    for step, start in ((3, 0), (1, 64), (2, 128)):
        expected[start:start + 32] = 10 * step
        expected[start + 32:start + 64] = 10 * step + 1
    for res in results:
        assert torch.equal(res["queue"], expected)
        assert res["ptr"] == 64
