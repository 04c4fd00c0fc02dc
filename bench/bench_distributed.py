"""Sharded clipping of many small DTensor grads: fastclip vs torch.nn.utils.clip_grad_norm_.

Starts ``--world`` CPU processes (gloo) and makes ``--tensors`` DTensor gradients of ``--numel``
elements per rank each, sharded ``Shard(0)`` on a 1-D mesh, then times both clippers on the same
grads in the same run: the median of ``--repeats`` calls after the first (warm-up) call, which is
reported too. Every timed call really clips (by 1/2: max_norm follows the shrinking norm); a
call's time is the slowest rank's.

``--grads fsdp2`` (default) makes them the way training does: one module holding the parameters,
``fully_shard`` and a backward pass (FSDP2 gives all the grads one shared DTensorSpec).
``--grads from_local`` builds each with ``DTensor.from_local`` (one spec object per tensor: the
worst case for fastclip's grouping pass).

torch's DTensor path gets slow with the tensor count (pytorch#169445), its first call most of all:
``--torch-tensors N`` runs it on the first N tensors only, and the report says so.

    python bench/bench_distributed.py --world 2 --tensors 20000 --torch-tensors 4000
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn


class _ManyParams(nn.Module):
    def __init__(self, n: int, numel: int):
        super().__init__()
        self.ps = nn.ParameterList([nn.Parameter(torch.randn(numel)) for _ in range(n)])

    def forward(self):
        return torch.cat(list(self.ps)).square().sum()


def _fsdp2_params(n: int, numel: int, mesh) -> list:
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:  # torch < 2.6
        from torch.distributed._composable.fsdp import fully_shard
    model = _ManyParams(n, numel * mesh.size())
    fully_shard(model, mesh=mesh)
    model().backward()
    return list(model.parameters())


def _from_local_params(n: int, numel: int, mesh) -> list:
    from torch.distributed.tensor import DTensor, Shard

    params = []
    for _ in range(n):
        p = nn.Parameter(DTensor.from_local(torch.zeros(numel), mesh, [Shard(0)], run_check=False))
        p.grad = DTensor.from_local(torch.randn(numel), mesh, [Shard(0)], run_check=False)
        params.append(p)
    return params


def _time(fn, repeats: int) -> list:
    """Per-call seconds (max over ranks: every rank waits for the slowest); the first is the warm-up."""
    times = []
    for k in range(repeats + 1):
        dist.barrier()
        t0 = time.perf_counter()
        fn(k)
        t = torch.tensor(time.perf_counter() - t0, dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        times.append(float(t))
    return times


def _worker(rank: int, args, store: str, out: str):
    os.environ["FASTCLIP_BACKEND"] = "torch"  # CPU tensors: the plain-PyTorch path (no interpreter)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=args.world)
    from torch.distributed.device_mesh import init_device_mesh

    import fastclip

    mesh = init_device_mesh("cpu", (args.world,))
    torch.manual_seed(rank)
    t0 = time.perf_counter()
    make = _fsdp2_params if args.grads == "fsdp2" else _from_local_params
    params = make(args.tensors, args.numel, mesh)
    t_build = time.perf_counter() - t0
    norm0 = float(fastclip.total_norm([p.grad for p in params]))
    n_torch = min(args.torch_tensors, args.tensors)
    torch_params = params[:n_torch]
    norm0_torch = float(fastclip.total_norm([p.grad for p in torch_params]))

    # every timed call really clips, by 1/2: max_norm follows the shrinking norm (no restore pass)
    t_fast = _time(lambda k: fastclip.clip_(params, norm0 * 0.5 ** (k + 1)), args.repeats)
    t_torch = _time(lambda k: torch.nn.utils.clip_grad_norm_(torch_params, norm0_torch * 0.5 ** (k + 1)),
                    args.torch_repeats)
    if rank == 0:
        with open(out, "w") as f:
            f.write(f"{statistics.median(t_fast[1:])} {statistics.median(t_torch[1:])} {n_torch} {t_build} "
                    f"{t_fast[0]} {t_torch[0]}\n")
    dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--tensors", type=int, default=20000)
    ap.add_argument("--torch-tensors", type=int, default=20000, help="torch runs on the first N only")
    ap.add_argument("--numel", type=int, default=64, help="elements per tensor per rank")
    ap.add_argument("--grads", choices=["fsdp2", "from_local"], default="fsdp2")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--torch-repeats", type=int, default=3)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp()
    store, out = os.path.join(tmp, "store"), os.path.join(tmp, "out")
    mp.spawn(_worker, args=(args, store, out), nprocs=args.world)
    t_fast, t_torch, n_torch, t_build, first_fast, first_torch = open(out).read().split()
    t_fast, t_torch, n_torch = float(t_fast), float(t_torch), int(n_torch)
    print(f"torch {torch.__version__}, {args.world} ranks (gloo, CPU, 1 thread each), "
          f"{args.tensors} DTensor grads ({args.grads}) x {args.numel} elements per rank (Shard(0)); "
          f"median of {args.repeats} (fastclip) / {args.torch_repeats} (torch) calls, each clipping by 1/2")
    print(f"fastclip.clip_          {args.tensors:6d} tensors: {t_fast * 1e3:9.1f} ms")
    print(f"torch clip_grad_norm_   {n_torch:6d} tensors: {t_torch * 1e3:9.1f} ms")
    if n_torch == args.tensors:
        print(f"speed-up: {t_torch / t_fast:.1f}x")
    else:
        print(f"torch on {n_torch} tensors only; per tensor: fastclip {t_fast / args.tensors * 1e6:.1f} us, "
              f"torch {t_torch / n_torch * 1e6:.1f} us")
    print(f"first (warm-up) call: fastclip {float(first_fast) * 1e3:.1f} ms, torch {float(first_torch) * 1e3:.1f} ms")
    print(f"(building the {args.tensors} DTensor grads took {float(t_build):.1f} s)")


if __name__ == "__main__":
    main()
