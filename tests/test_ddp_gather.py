"""Two-process (gloo, CPU) check of gather_with_grad and the gathered SSL losses.

Each of the W = 2 processes holds half of a batch. Conventions compared:

* gathered terms (VICReg variance/covariance, Barlow Twins, gather itself) equal the
  single-process value on the concatenated batch;
* per-process totals: VICReg invariance and NT-Xent are means over the local rows, so with equal
  halves the average of the two process losses equals the single-process loss;
* input gradients: gather_with_grad sums gradients over processes, so the gradient each process
  gets for its own rows is W times the single-process gradient slice, i.e. after DDP's division
  by W it is exactly the single-process gradient. We compare ``grad_rank / W`` with the slice.
* a real DDP-wrapped linear layer trained with the gathered VICReg loss gets exactly the
  single-process parameter gradient (DDP averages, gather sums: the factors cancel).

The two workers are forked from the test process (gloo over a free local TCP port).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from selfsup.losses import (
    barlow_twins_loss,
    gather_with_grad,
    nt_xent_loss,
    rank,
    vicreg_loss,
    world_size,
)

WORLD = 2
HALF = 6
DIM = 5
IN_DIM = 4


def _data() -> dict[str, torch.Tensor]:
    """Full-batch inputs, identical in every process (fixed seed)."""
    g = torch.Generator().manual_seed(1234)
    scales = torch.linspace(0.3, 2.0, DIM)
    return {
        "z_a": torch.randn(WORLD * HALF, DIM, generator=g, dtype=torch.float64) * scales,
        "z_b": torch.randn(WORLD * HALF, DIM, generator=g, dtype=torch.float64) * scales,
        "w": torch.randn(WORLD * HALF, DIM, generator=g, dtype=torch.float64),
        "x_a": torch.randn(WORLD * HALF, IN_DIM, generator=g, dtype=torch.float64),
        "x_b": torch.randn(WORLD * HALF, IN_DIM, generator=g, dtype=torch.float64),
    }


def _linear() -> nn.Linear:
    torch.manual_seed(7)
    return nn.Linear(IN_DIM, DIM).double()


def _losses(name: str, z_a: torch.Tensor, z_b: torch.Tensor, gather: bool) -> dict:
    if name == "vicreg":
        return vicreg_loss(z_a, z_b, gather_distributed=gather)
    if name == "barlow":
        return barlow_twins_loss(z_a, z_b, gather_distributed=gather)
    return nt_xent_loss(z_a, z_b, temperature=0.5, gather_distributed=gather)


def _worker(r: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=r, world_size=WORLD)
    try:
        d = _data()
        rows = slice(r * HALF, (r + 1) * HALF)
        res: dict[str, object] = {"rank": rank(), "world_size": world_size()}
        # raw gather
        x = d["z_a"][rows].clone().requires_grad_(True)
        g = gather_with_grad(x)
        (g * d["w"]).sum().backward()
        res["gathered"] = g.detach()
        res["gather_grad"] = x.grad
        # losses
        for name in ("vicreg", "barlow", "simclr"):
            a = d["z_a"][rows].clone().requires_grad_(True)
            b = d["z_b"][rows].clone().requires_grad_(True)
            out = _losses(name, a, b, gather=True)
            out["loss"].backward()
            res[name] = {k: v.detach() for k, v in out.items()}
            res[name + "_grad_a"] = a.grad
            res[name + "_grad_b"] = b.grad
        # a DDP-wrapped projector trained with the gathered VICReg loss
        model = nn.parallel.DistributedDataParallel(_linear())
        out = vicreg_loss(model(d["x_a"][rows]), model(d["x_b"][rows]), gather_distributed=True)
        out["loss"].backward()
        res["ddp_grads"] = [p.grad.clone() for p in model.module.parameters()]
        torch.save(res, os.path.join(out_dir, f"rank{r}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_workers(tmp_path: Path) -> list[dict]:
    # fork: the children inherit the already imported torch (no re-import, works under any pytest
    # import mode since nothing has to be pickled by reference)
    mp.start_processes(
        _worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True, start_method="fork"
    )
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _single(name: str) -> tuple[dict, torch.Tensor, torch.Tensor]:
    d = _data()
    a = d["z_a"].clone().requires_grad_(True)
    b = d["z_b"].clone().requires_grad_(True)
    out = _losses(name, a, b, gather=False)
    out["loss"].backward()
    return {k: v.detach() for k, v in out.items()}, a.grad, b.grad


def test_two_process_gather_and_losses(tmp_path: Path) -> None:
    res = _run_workers(tmp_path)
    d = _data()
    tol = {"rtol": 1e-10, "atol": 1e-12}  # float64 throughout
    for r, rr in enumerate(res):
        assert rr["rank"] == r and rr["world_size"] == WORLD
        rows = slice(r * HALF, (r + 1) * HALF)
        # gather: concatenation in rank order; grad = sum over processes = W * w[rows]
        torch.testing.assert_close(rr["gathered"], d["z_a"], **tol)
        torch.testing.assert_close(rr["gather_grad"], WORLD * d["w"][rows], **tol)

    # VICReg: variance/covariance exactly the global ones, invariance local
    ref, ga, gb = _single("vicreg")
    for r, rr in enumerate(res):
        rows = slice(r * HALF, (r + 1) * HALF)
        out = rr["vicreg"]
        torch.testing.assert_close(out["variance"], ref["variance"], **tol)
        torch.testing.assert_close(out["covariance"], ref["covariance"], **tol)
        local_inv = ((d["z_a"][rows] - d["z_b"][rows]) ** 2).mean()
        torch.testing.assert_close(out["invariance"], local_inv, **tol)
        # DDP-averaged input gradient == single-process gradient slice
        torch.testing.assert_close(rr["vicreg_grad_a"] / WORLD, ga[rows], **tol)
        torch.testing.assert_close(rr["vicreg_grad_b"] / WORLD, gb[rows], **tol)
    mean_total = sum(rr["vicreg"]["loss"] for rr in res) / WORLD
    torch.testing.assert_close(mean_total, ref["loss"], **tol)

    # Barlow Twins: everything global, identical on both processes
    ref, ga, gb = _single("barlow")
    for r, rr in enumerate(res):
        rows = slice(r * HALF, (r + 1) * HALF)
        for k in ("loss", "invariance", "redundancy"):
            torch.testing.assert_close(rr["barlow"][k], ref[k], **tol)
        torch.testing.assert_close(rr["barlow_grad_a"] / WORLD, ga[rows], **tol)
        torch.testing.assert_close(rr["barlow_grad_b"] / WORLD, gb[rows], **tol)

    # NT-Xent: local rows against the gathered batch; mean over processes == global
    ref, ga, gb = _single("simclr")
    for k in ("loss", "alignment", "uniformity"):
        torch.testing.assert_close(sum(rr["simclr"][k] for rr in res) / WORLD, ref[k], **tol)
    for r, rr in enumerate(res):
        rows = slice(r * HALF, (r + 1) * HALF)
        torch.testing.assert_close(rr["simclr_grad_a"] / WORLD, ga[rows], **tol)
        torch.testing.assert_close(rr["simclr_grad_b"] / WORLD, gb[rows], **tol)

    # real DDP: averaged parameter gradients == single-process parameter gradients
    model = _linear()
    vicreg_loss(model(d["x_a"]), model(d["x_b"]))["loss"].backward()
    for rr in res:
        for got, want in zip(rr["ddp_grads"], [p.grad for p in model.parameters()], strict=True):
            torch.testing.assert_close(got, want, **tol)


def test_identity_without_process_group() -> None:
    x = torch.randn(3, 2)
    assert gather_with_grad(x) is x
    assert world_size() == 1 and rank() == 0
