"""MoCo-SimCLR: InfoNCE against the released formula by explicit loops and against SimCLR's
NT-Xent, the negative set, the queue (filled from EMA keys, both views enqueued, FIFO, under DDP),
and exact resume of the queue and the EMA key encoder."""

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


def _released_direction(q: list[list[float]], k: list[list[float]], queue: list[list[float]],
                        t: float) -> float:
    """One direction of moco-simclr/train.py:160-176 by explicit loops (unit vectors): row i has
    the positive k_i and the candidates {q_j: j != i} + {k_j: all j} + queue."""
    total = 0.0
    for i, u in enumerate(q):
        pos = _dot(u, k[i]) / t
        cands = [w for j, w in enumerate(q) if j != i] + k + queue
        total += -pos + math.log(sum(math.exp(_dot(u, w) / t) for w in cands))
    return total / len(q)


@pytest.mark.parametrize("t", [0.1, 1.0])
def test_loss_matches_the_released_formula_by_explicit_loops(t):
    q_a, q_b, k_a, k_b, queue = _data(0)
    terms = moco_loss(q_a, q_b, k_a, k_b, queue, t)
    ua, ub, ka, kb, w = (_unit(x) for x in (q_a, q_b, k_a, k_b, queue))
    expect = 0.5 * (_released_direction(ua, kb, w, t) + _released_direction(ub, ka, w, t))
    assert abs(float(terms["loss"]) - expect) < 1e-10
    align = -sum(_dot(u, p) for u, p in zip(ua + ub, kb + ka, strict=True)) / t / (2 * len(ua))
    assert abs(float(terms["alignment"]) - align) < 1e-10
    module = MoCoLoss(t)(q_a, q_b, k_a, k_b, queue)
    assert float(module["loss"]) == float(terms["loss"])
    # without a queue: the same formula with in-batch candidates only
    no_queue = moco_loss(q_a, q_b, k_a, k_b, None, t)
    expect = 0.5 * (_released_direction(ua, kb, [], t) + _released_direction(ub, ka, [], t))
    assert abs(float(no_queue["loss"]) - expect) < 1e-10


@pytest.mark.parametrize("n,k", [(5, 7), (8, 0), (3, 48)])
def test_negative_set_on_identical_inputs(n, k):
    """All vectors equal (every cosine 1): each query has 2n - 1 + K candidates (n - 1 other
    queries, n keys with the positive, K queue entries), so loss = log(2n - 1 + K) for any t."""
    x = torch.ones(n, 4, dtype=torch.float64)
    queue = torch.ones(k, 4, dtype=torch.float64)
    for t in (0.2, 1.0):
        loss = float(moco_loss(x, x, x, x, queue if k else None, t)["loss"])
        assert loss == pytest.approx(math.log(2 * n - 1 + k), abs=1e-12)


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


def test_queue_must_be_a_multiple_of_two_batches_and_is_fifo():
    info = DataInfo("digits", (1, 8, 8), 10, True)
    with pytest.raises(ConfigError, match="multiple of twice data.batch_size"):
        method_class("mocosimclr")(_config(192), info)
    with pytest.raises(ConfigError, match="queue_size"):
        _config(-128)
    method = method_class("mocosimclr")(_config(384), info)
    assert method.queue.shape == (384, 32) and int(method.queue_ptr) == 0
    keys = [torch.full((128, 32), float(i)) for i in range(4)]
    for k in keys:
        method.enqueue(k)
    # 4 steps into 3 slots: the oldest step was overwritten, the pointer wrapped around
    assert torch.equal(method.queue[:128], keys[3]) and torch.equal(method.queue[128:256], keys[1])
    assert int(method.queue_ptr) == 128
    no_queue = method_class("mocosimclr")(_config(0), info)
    assert not hasattr(no_queue, "queue") and no_queue.target is None


def test_queue_is_filled_from_ema_keys_then_gets_both_views_after_a_step():
    """Released: the queue starts full of key-encoder keys of both views of training batches;
    after each optimizer step [k_a; k_b] of the batch (2B keys) replace the oldest ones."""
    torch.manual_seed(0)
    method = method_class("mocosimclr")(_config(384), DataInfo("digits", (1, 8, 8), 10, True))
    method.train()
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8, generator=g)
               for _ in range(3)]
    method.step_generator.manual_seed(5)
    method.fill_queue([(b, None) for b in batches])
    assert bool(method.queue_filled) and int(method.queue_ptr) == 0
    method.step_generator.manual_seed(5)
    expect = []
    for b in batches:  # the same views again, by hand
        x_a, x_b = method.two_views(b)
        keys = torch.cat([method.target_projection(x_a), method.target_projection(x_b)])
        expect.append(torch.nn.functional.normalize(keys, dim=1))
    torch.testing.assert_close(method.queue, torch.cat(expect))
    # one step: the loss sees the filled queue, then its own keys are enqueued
    before = method.queue.clone()
    opt = torch.optim.SGD(method.method_parameters(), lr=0.1)
    terms = method.training_loss(batches[0])
    assert method.pending_keys.shape == (128, 32)
    terms["loss"].backward()
    opt.step()
    keys = method.pending_keys.clone()
    target_before = [p.clone() for p in method.target["projector"].parameters()]
    method.after_step(0)
    assert torch.equal(method.queue[:128], keys) and torch.equal(method.queue[128:], before[128:])
    assert int(method.queue_ptr) == 128 and method.pending_keys is None
    for t0, t1, o in zip(target_before, method.target["projector"].parameters(),
                         method.projector.parameters(), strict=True):
        torch.testing.assert_close(t1, 0.99 * t0 + 0.01 * o)


def test_queue_and_key_encoder_resume_exactly(tmp_path, monkeypatch):
    """SIGINT mid-epoch, then resume: the same weights, queue and pointer as never stopping."""
    full, result = pipelines.train(_config(256, encode_method="softmax", message_size=4,
                                           vocab_size=4), tmp_path / "full")
    assert result.global_step == 2 * STEPS_PER_EPOCH
    reference = weights(full)
    assert bool(reference["queue_filled"])
    assert int(reference["queue_ptr"]) == (2 * STEPS_PER_EPOCH * 128) % 256
    key = [k for k in reference if k.startswith("target.backbone.")][0]
    assert not torch.equal(reference[key], reference[key.removeprefix("target.")])  # EMA
    assert torch.allclose(reference["queue"].norm(dim=1), torch.ones(256))  # filled, keys
    original_fit = engine.fit

    def fit_with_interrupt(*args, **kwargs):
        return original_fit(*args, **kwargs, extra_callbacks=[InterruptAt(31)])

    monkeypatch.setattr(pipelines, "fit", fit_with_interrupt)
    _, result = pipelines.train(_config(256, encode_method="softmax", message_size=4,
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
        # global batch 64 = 32 per process, 2 x 32 keys per process and step; queue of 3 steps
        method = method_class("mocosimclr")(_config(384), DataInfo("digits", (1, 8, 8), 10, True))
        for step in range(4):
            method.enqueue(torch.full((64, 32), float(10 * step + r)))
        torch.save({"queue": method.queue, "ptr": int(method.queue_ptr)},
                   os.path.join(out_dir, f"rank{r}.pt"))
    finally:
        dist.destroy_process_group()


def test_queue_under_ddp_holds_every_process_keys_in_rank_order(tmp_path):
    """Each step enqueues the gathered keys (rank 0's [k_a; k_b], then rank 1's), FIFO."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_queue_worker, args=(port, str(tmp_path)), nprocs=2, join=True,
                       start_method="fork")
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    # 4 steps of 128 keys into 384 slots: step 3 overwrote step 0 in slots 0..127
    expected = torch.empty(384, 32)
    for step, start in ((3, 0), (1, 128), (2, 256)):
        expected[start:start + 64] = 10 * step
        expected[start + 64:start + 128] = 10 * step + 1
    for res in results:
        assert torch.equal(res["queue"], expected)
        assert res["ptr"] == 128
