"""Sharded gradients: every rank clips its shards exactly as if the model were unsharded.

The spec (issue 4, part 1): with ``group=`` or DTensor gradients, the norm is the norm of the
whole (unsharded) gradient, every rank gets the same norm and scales by the same coefficient, and
replicated dimensions are never double-counted.  The oracle is torch.nn.utils.clip_grad_norm_ on
the full tensors (every rank builds them from the same seed) and a float64 norm.

Starting processes is slow, so each world size is started once (a module fixture) and runs every
check registered for it, once per backend (plain PyTorch, and on 2 ranks also the Triton kernels,
in the interpreter on CPU); each test below then reports its own check.  The processes use the
gloo backend and a file store.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import sys
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from oracles import ref_norm

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="needs torch.distributed with gloo")

CHECKS: dict = {}  # name -> (world sizes, function(rank, world))
SHAPES = [(13, 7), (5,), (1,), (300,), (2, 3, 4)]  # uneven and tiny: some shards are empty


def check(*worlds):
    """Register a function to run on every rank of each world size in ``worlds``."""
    def register(fn):
        CHECKS[fn.__name__] = (worlds, fn)
        return fn
    return register


# ----------------------------------------------------------------------------------------------
# the harness: one spawn per world size, every check on every rank, results by name

def _entry(rank: int, world: int, tmp: str, with_triton: bool):
    import fastclip
    from fastclip._backend import triton_can_run_on

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))  # a failing check can't hang forever
    backends = ["torch"] + (["triton"] if with_triton and triton_can_run_on(torch.device("cpu"))[0] else [])
    results = {}
    for name, (worlds, fn) in CHECKS.items():
        if world not in worlds:
            continue
        results[name] = []
        for backend in backends:
            os.environ["FASTCLIP_BACKEND"] = backend
            fastclip.clear_cache()
            torch.manual_seed(1234)  # the same full tensors on every rank
            try:
                fn(rank, world)
                dist.barrier()
            except Exception:
                results[name].append(f"[backend={backend}, rank {rank}]\n{traceback.format_exc()}")
                # the other ranks may be waiting in a collective this rank will never join: report
                # and leave, which makes their collectives fail too (and so report) instead of hang
                _write(results, tmp, rank)
                os._exit(0)
    _write(results, tmp, rank)
    dist.destroy_process_group()


def _write(results: dict, tmp: str, rank: int):
    with open(f"{tmp}/rank{rank}.json", "w") as f:
        json.dump(results, f)


def _spawn(world: int, tmp, with_triton: bool) -> dict:
    # fork: the ranks start in a fraction of a second instead of re-importing torch each (many
    # seconds on a busy CI box); spawn once CUDA is initialised, which fork can't carry over
    method = "fork" if sys.platform == "linux" and not torch.cuda.is_initialized() else "spawn"
    mp.start_processes(_entry, args=(world, str(tmp), with_triton), nprocs=world, join=True, start_method=method)
    merged: dict = {}
    for rank in range(world):
        if not (tmp / f"rank{rank}.json").exists():
            continue
        with open(tmp / f"rank{rank}.json") as f:
            for name, failures in json.load(f).items():
                merged.setdefault(name, []).extend(failures)
    return merged


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    return _spawn(2, tmp_path_factory.mktemp("dist2"), with_triton=True)


@pytest.fixture(scope="module")
def four_ranks(tmp_path_factory):
    # 4 processes on a small CI box: plain PyTorch only (the kernels ran on 2 ranks already)
    return _spawn(4, tmp_path_factory.mktemp("dist4"), with_triton=False)


def _passed(results: dict, name: str):
    assert name in results, f"check {name} did not run (an earlier check failed: see its test)"
    failures = results[name]
    assert not failures, "\n".join(failures)


# ----------------------------------------------------------------------------------------------
# helpers used inside the ranks

def _full_grads(shapes=SHAPES, dtype=torch.float32, scale=3.0):
    return [(torch.randn(s, dtype=torch.float64) * scale).to(dtype) for s in shapes]


def _torch_clip(fulls, max_norm, p):
    """torch.nn.utils.clip_grad_norm_ on plain copies of the full tensors: (norm, clipped)."""
    params = []
    for f in fulls:
        q = torch.nn.Parameter(torch.zeros_like(f))
        q.grad = f.clone()
        params.append(q)
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=p)
    return norm, [q.grad for q in params]


def _params(grads):
    out = []
    for g in grads:
        q = torch.nn.Parameter(torch.zeros_like(g))
        q.grad = g
        out.append(q)
    return out


def _flat_shard(full, rank, world):
    """This rank's piece of ``full`` seen as a flat vector (uneven, possibly empty)."""
    return torch.tensor_split(full.reshape(-1), world)[rank].clone()


def _same_on_every_rank(norm, group=None):
    world = dist.get_world_size(group)
    gathered = [torch.empty_like(norm) for _ in range(world)]
    dist.all_gather(gathered, norm, group=group)
    for other in gathered:
        assert torch.equal(other, norm) or (other.isnan() and norm.isnan()), f"ranks disagree: {gathered}"


def _close(actual, expected, rtol=1e-5, atol=1e-6):
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=atol, equal_nan=True)


def _dtensor_params(fulls, mesh, placements_list):
    from torch.distributed.tensor import distribute_tensor

    params = []
    for full, placements in zip(fulls, placements_list):
        q = torch.nn.Parameter(distribute_tensor(torch.zeros_like(full), mesh, placements))
        q.grad = distribute_tensor(full, mesh, placements)
        params.append(q)
    return params


# ----------------------------------------------------------------------------------------------
# process group: plain tensors that are shards of one model

@check(2, 4)
def group_shards_clip_like_unsharded(rank, world):
    import fastclip

    for p in (2.0, 1.0, 3.0, math.inf):
        fulls = _full_grads()
        expected_norm, expected = _torch_clip(fulls, 1.0, p)
        shards = [_flat_shard(f, rank, world) for f in fulls]
        norm = fastclip.clip_(_params(shards), 1.0, norm_type=p, group=dist.group.WORLD)
        assert norm.dtype == torch.float32 and norm.shape == ()
        _close(norm, torch.tensor(ref_norm(fulls, p)))
        _close(norm, expected_norm)
        _same_on_every_rank(norm)
        for shard, full_clipped in zip(shards, expected):
            _close(shard, _flat_shard(full_clipped, rank, world))


@check(2)
def group_threshold_tensor_and_float64(rank, world):
    import fastclip

    fulls = _full_grads(dtype=torch.float64)
    expected_norm, expected = _torch_clip(fulls, 0.5, 2.0)
    shards = [_flat_shard(f, rank, world) for f in fulls]
    norm = fastclip.clip_(_params(shards), torch.tensor(0.5), group=dist.group.WORLD)
    assert norm.dtype == torch.float64  # as torch: float64 grads give a float64 norm
    _close(norm, expected_norm, rtol=1e-12, atol=0)
    for shard, full_clipped in zip(shards, expected):
        _close(shard, _flat_shard(full_clipped, rank, world), rtol=1e-12, atol=1e-15)


@check(2)
def group_total_norm_reduces_without_scaling(rank, world):
    import fastclip

    fulls = _full_grads()
    shards = [_flat_shard(f, rank, world) for f in fulls]
    before = [s.clone() for s in shards]
    for p in (2.0, 1.5, math.inf):
        norm = fastclip.total_norm(shards, p, group=dist.group.WORLD)
        _close(norm, torch.tensor(ref_norm(fulls, p)))
    for s, b in zip(shards, before):
        assert torch.equal(s, b)


@check(2)
def group_rank_without_grads_still_joins(rank, world):
    import fastclip

    fulls = _full_grads()
    expected = ref_norm(fulls, 2)
    mine = fulls if rank == 0 else []  # rank 1 holds nothing: it must still take part
    norm = fastclip.clip_(_params(mine), 1.0, group=dist.group.WORLD)
    _close(norm, torch.tensor(expected))
    _same_on_every_rank(norm)


@check(2)
def group_nonfinite_raises_on_every_rank_before_scaling(rank, world):
    import fastclip

    fulls = _full_grads()
    fulls[0].view(-1)[-1] = math.nan  # lands in the last rank's shard only
    shards = [_flat_shard(f, rank, world) for f in fulls]
    before = [s.clone() for s in shards]
    with pytest.raises(RuntimeError, match="non-finite"):
        fastclip.clip_(_params(shards), 1.0, error_if_nonfinite=True, group=dist.group.WORLD)
    for s, b in zip(shards, before):
        torch.testing.assert_close(s, b, rtol=0, atol=0, equal_nan=True)
    for p in (2.0, math.inf):  # NaN anywhere: NaN norm everywhere (also through MAX for inf)
        norm = fastclip.total_norm(shards, p, group=dist.group.WORLD)
        assert norm.isnan(), f"p={p}: {norm}"


@check(4)
def group_subgroups_are_separate_models(rank, world):
    import fastclip

    pairs = [dist.new_group([0, 1]), dist.new_group([2, 3])]  # every rank creates both, in order
    mine = pairs[rank // 2]
    torch.manual_seed(100 + rank // 2)  # each pair shards its own model
    fulls = _full_grads()
    expected_norm, expected = _torch_clip(fulls, 1.0, 2.0)
    shards = [_flat_shard(f, rank % 2, 2) for f in fulls]
    norm = fastclip.clip_(_params(shards), 1.0, group=mine)
    _close(norm, expected_norm)
    _same_on_every_rank(norm, group=mine)
    for shard, full_clipped in zip(shards, expected):
        _close(shard, _flat_shard(full_clipped, rank % 2, 2))


# ----------------------------------------------------------------------------------------------
# DTensor: FSDP2 / tensor-parallel gradients, no extra argument

@check(2, 4)
def dtensor_shard0_matches_unsharded_and_torch(rank, world):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard

    import fastclip

    mesh = init_device_mesh("cpu", (world,))
    for p in (2.0, math.inf):
        fulls = _full_grads()
        expected_norm, expected = _torch_clip(fulls, 1.0, p)
        params = _dtensor_params(fulls, mesh, [[Shard(0)]] * len(fulls))
        theirs = _dtensor_params(fulls, mesh, [[Shard(0)]] * len(fulls))
        norm = fastclip.clip_(params, 1.0, norm_type=p)
        assert type(norm) is torch.Tensor and norm.dtype == torch.float32  # the full norm, not a DTensor
        _close(norm, expected_norm)
        _same_on_every_rank(norm)
        for q, full_clipped in zip(params, expected):
            _close(q.grad.full_tensor(), full_clipped)
        if p == 2.0:  # torch's DTensor path can't take the inf norm of an empty shard (shape (1,))
            torch_norm = torch.nn.utils.clip_grad_norm_(theirs, 1.0, norm_type=p)
            _close(norm, torch_norm.full_tensor() if isinstance(torch_norm, DTensor) else torch_norm)
            for q, t in zip(params, theirs):
                _close(q.grad.full_tensor(), t.grad.full_tensor())


@check(2)
def dtensor_mixed_placements_count_replicas_once(rank, world):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard

    import fastclip

    mesh = init_device_mesh("cpu", (world,))
    shapes = [(13, 7), (6, 4), (5,), (3, 2), (9,)]
    placements = [[Shard(0)], [Shard(1)], [Replicate()], [Replicate()], [Shard(0)]]
    fulls = _full_grads(shapes)
    params = _dtensor_params(fulls, mesh, placements)
    # a Partial gradient: the full tensor is the sum of the ranks' local summands
    local = torch.randn(4, 3) * (rank + 1)
    partial = torch.nn.Parameter(DTensor.from_local(torch.zeros(4, 3), mesh, [Partial()]))
    partial.grad = DTensor.from_local(local, mesh, [Partial()])
    fulls.append(partial.grad.full_tensor())
    params.append(partial)
    # and a plain tensor, the same on every rank (what a non-sharded module leaves)
    replicated = torch.nn.Parameter(torch.zeros(7))
    replicated.grad = fulls[0][0].clone()
    fulls.append(replicated.grad.clone())
    params.append(replicated)

    expected_norm, expected = _torch_clip(fulls, 1.0, 2.0)
    norm = fastclip.clip_(params, 1.0)
    _close(norm, expected_norm)
    _same_on_every_rank(norm)
    for q, full_clipped in zip(params, expected):
        got = q.grad.full_tensor() if isinstance(q.grad, DTensor) else q.grad
        _close(got, full_clipped)
    total = fastclip.total_norm([q.grad for q in params], 1.0)
    _close(total, torch.tensor(ref_norm(expected, 1.0)))


@check(4)
def dtensor_2d_mesh_reduces_only_sharded_dims(rank, world):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard

    import fastclip

    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
    shapes = [(8, 6), (6, 5), (7,), (4, 4), (3, 5)]
    placements = [[Shard(0), Shard(1)],  # 2-D sharded (FSDP x TP)
                  [Replicate(), Shard(0)],  # HSDP-like: replicated over dp
                  [Shard(0), Replicate()],
                  [Replicate(), Replicate()],
                  [Shard(1), Shard(0)]]
    for p in (2.0, math.inf):
        fulls = _full_grads(shapes)
        expected_norm, expected = _torch_clip(fulls, 1.0, p)
        params = _dtensor_params(fulls, mesh, placements)
        norm = fastclip.clip_(params, 1.0, norm_type=p)
        _close(norm, expected_norm)
        _same_on_every_rank(norm)
        for q, full_clipped in zip(params, expected):
            _close(q.grad.full_tensor(), full_clipped)


@check(2)
def fsdp2_fully_shard_model(rank, world):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    import fastclip

    mesh = init_device_mesh("cpu", (world,))
    model = torch.nn.Sequential(torch.nn.Linear(12, 33), torch.nn.GELU(), torch.nn.Linear(33, 5),
                                torch.nn.LayerNorm(5))
    for layer in model:
        if any(True for _ in layer.parameters()):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    x = torch.randn(16, 12) + rank  # each rank its own batch: FSDP averages the grads
    (model(x) ** 2).sum().mul(10.0).backward()

    fulls = [q.grad.full_tensor() for q in model.parameters()]
    expected_norm, expected = _torch_clip(fulls, 1.0, 2.0)
    norm = fastclip.clip_(model.parameters(), 1.0)
    assert float(norm) > 1.0, "the test must really clip"
    _close(norm, expected_norm)
    _same_on_every_rank(norm)
    for q, full_clipped in zip(model.parameters(), expected):
        _close(q.grad.full_tensor(), full_clipped)


@check(2)
def patched_torch_returns_a_dtensor_norm_like_torch(rank, world):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard

    import fastclip.patch

    mesh = init_device_mesh("cpu", (world,))
    fulls = _full_grads()
    torch_clip = torch.nn.utils.clip_grad_norm_
    theirs = _dtensor_params(fulls, mesh, [[Shard(0)]] * len(fulls))
    expected = torch_clip(theirs, 1.0)
    params = _dtensor_params(fulls, mesh, [[Shard(0)]] * len(fulls))
    with fastclip.patch.patched():
        norm = torch.nn.utils.clip_grad_norm_(params, 1.0)  # what FSDP2 training code calls
        assert isinstance(norm, DTensor) and isinstance(expected, DTensor)
        _close(norm.full_tensor(), expected.full_tensor())  # code written for torch keeps working
        assert float(norm.item()) == float(norm.full_tensor())
        for q, t in zip(params, theirs):
            _close(q.grad.full_tensor(), t.grad.full_tensor())
        # the two-step form, as torch 2.6+ exposes it
        again = _dtensor_params(fulls, mesh, [[Shard(0)]] * len(fulls))
        total = torch.nn.utils.get_total_norm([q.grad for q in again])
        torch.nn.utils.clip_grads_with_norm_(again, 1.0, total)
        _close(total.full_tensor(), expected.full_tensor())
        for q, t in zip(again, theirs):
            _close(q.grad.full_tensor(), t.grad.full_tensor())


# ----------------------------------------------------------------------------------------------
# stateful clippers: shards over a group (or DTensors) keep the state of the unsharded model

#: every policy (class name, arguments); the unbounded percentile is the torch-op path on both backends
CLIPPERS = {
    "fixed": ("FixedClipper", dict(max_norm=2.0)),
    "mean": ("MeanClipper", dict(warmup_steps=2, factor=1.2, running=True)),
    "zclip": ("ZClipper", dict(warmup_steps=3, z_thresh=1.5, min_std=0.1)),
    "percentile": ("PercentileClipper", dict(percentile=50.0, window=4)),
    "percentile-unbounded": ("PercentileClipper", dict(percentile=50.0, capacity=2)),
}
#: gradient scale of each step: warm-up, spikes, a NaN step (never recorded), the threshold's tail
STEP_SCALES = [1.0, 1.3, 0.8, 1.1, 9.0, math.nan, 1.0, 0.9, 40.0]


def _step_fulls(step: int, scale: float):
    torch.manual_seed(500 + step)  # the same full gradient on every rank
    fulls = _full_grads(scale=1.0)
    if math.isnan(scale):
        fulls[1][2] = math.nan
    else:
        fulls = [f * scale for f in fulls]
    return fulls


def _same_bits_on_every_rank(values: list) -> None:
    """Every rank holds bitwise the same values (as float64: NaN == NaN, -0.0 != 0.0)."""
    mine = torch.cat([v.detach().double().reshape(-1).cpu() for v in values]).view(torch.int64)
    gathered = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, mine)
    assert all(torch.equal(other, mine) for other in gathered), f"ranks disagree: {gathered}"


def _clipper_runs(rank, make_params, local_grads, *, group=None, empty_rank=None, policies=tuple(CLIPPERS)):
    """Each policy over STEP_SCALES, sharded on every rank and unsharded in this process.

    ``make_params(fulls)`` gives this rank's parameters, ``local_grads(params, fulls)`` the pairs
    (this rank's clipped gradient, the same piece of the unsharded clipped gradient).  Asserts that
    every rank's results and state are bitwise the same and equal (to the fp32 rounding of the
    norm) to the unsharded run's, and that the Triton backend ran the fused kernel path (two
    launches, the partials all-reduced between them) for the policies that have one.
    """
    import fastclip

    try:
        import fastclip._triton_backend as triton_backend
    except ImportError:  # no triton: the torch backend's runs, which must count no fused step
        triton_backend = None
    real = triton_backend.clip_with_policy if triton_backend else None
    for name in policies:
        cls, kwargs = CLIPPERS[name]
        sharded, whole = getattr(fastclip, cls)(**kwargs, group=group), getattr(fastclip, cls)(**kwargs)
        fused_steps = []

        def counting(*args, **kwargs):
            fused_steps.append(kwargs.get("reduce_partials") is not None)
            return real(*args, **kwargs)

        if triton_backend:
            triton_backend.clip_with_policy = counting
        try:
            for step, scale in enumerate(STEP_SCALES):
                fulls = _step_fulls(step, scale)
                params = make_params(fulls) if rank != empty_rank else []
                ours = sharded(params)
                reference = _params([f.clone() for f in fulls])
                theirs = whole(reference)
                ours_state, their_state = sharded.state_dict()["state"], whole.state_dict()["state"]
                _same_bits_on_every_rank(list(ours) + list(ours_state.values()))
                for field, a, b in zip(ours._fields, ours, theirs):
                    if field in ("clipped", "found_inf"):
                        assert torch.equal(a.cpu(), b.cpu()), (name, step, field, a, b)
                    else:
                        _close(a, b, rtol=1e-6, atol=0)
                assert ours_state.keys() == their_state.keys()
                for k, t in their_state.items():
                    _close(ours_state[k], t, rtol=1e-6, atol=0)
                for got, want in local_grads(params, [q.grad for q in reference]):
                    _close(got, want, rtol=1e-6, atol=1e-7)
        finally:
            if triton_backend:
                triton_backend.clip_with_policy = real
        fused = os.environ["FASTCLIP_BACKEND"] == "triton" and name != "percentile-unbounded"
        # every step of both clippers on the fused path, the sharded one with the collective
        expected = (len(STEP_SCALES), len(STEP_SCALES)) if fused else (0, 0)
        assert (fused_steps.count(True), fused_steps.count(False)) == expected, (name, fused_steps)


@check(2)
def group_clippers_keep_the_unsharded_state_on_every_rank(rank, world):
    def shards(fulls):
        return _params([_flat_shard(f, rank, world) for f in fulls])

    def local_grads(params, clipped_fulls):
        return [(q.grad, _flat_shard(f, rank, world)) for q, f in zip(params, clipped_fulls)]

    _clipper_runs(rank, shards, local_grads, group=dist.group.WORLD)


@check(2)
def group_clipper_rank_without_grads_keeps_the_same_state(rank, world):
    def shards(fulls):
        return _params([f.reshape(-1).clone() for f in fulls])  # rank 0 holds everything

    def local_grads(params, clipped_fulls):
        return [(q.grad, f.reshape(-1)) for q, f in zip(params, clipped_fulls)]

    _clipper_runs(rank, shards, local_grads, group=dist.group.WORLD, empty_rank=1, policies=("zclip", "percentile"))


@check(2)
def dtensor_clippers_keep_the_unsharded_state_without_a_group(rank, world):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard

    mesh = init_device_mesh("cpu", (world,))

    def dtensors(fulls):
        return _dtensor_params(fulls, mesh, [[Shard(0)]] * len(fulls))

    def local_grads(params, clipped_fulls):
        return [(q.grad.full_tensor(), f) for q, f in zip(params, clipped_fulls)]

    _clipper_runs(rank, dtensors, local_grads)


# ----------------------------------------------------------------------------------------------
# the tests: one per check

def test_group_shards_clip_like_unsharded_on_2_ranks(two_ranks):
    _passed(two_ranks, "group_shards_clip_like_unsharded")


def test_group_shards_clip_like_unsharded_on_4_ranks(four_ranks):
    _passed(four_ranks, "group_shards_clip_like_unsharded")


def test_group_threshold_tensor_and_float64(two_ranks):
    _passed(two_ranks, "group_threshold_tensor_and_float64")


def test_group_total_norm_reduces_without_scaling(two_ranks):
    _passed(two_ranks, "group_total_norm_reduces_without_scaling")


def test_group_rank_without_grads_still_joins(two_ranks):
    _passed(two_ranks, "group_rank_without_grads_still_joins")


def test_group_nonfinite_raises_on_every_rank_before_scaling(two_ranks):
    _passed(two_ranks, "group_nonfinite_raises_on_every_rank_before_scaling")


def test_group_subgroups_are_separate_models(four_ranks):
    _passed(four_ranks, "group_subgroups_are_separate_models")


def test_dtensor_shard0_matches_unsharded_and_torch_on_2_ranks(two_ranks):
    _passed(two_ranks, "dtensor_shard0_matches_unsharded_and_torch")


def test_dtensor_shard0_matches_unsharded_and_torch_on_4_ranks(four_ranks):
    _passed(four_ranks, "dtensor_shard0_matches_unsharded_and_torch")


def test_dtensor_mixed_placements_count_replicas_once(two_ranks):
    _passed(two_ranks, "dtensor_mixed_placements_count_replicas_once")


def test_dtensor_2d_mesh_reduces_only_sharded_dims(four_ranks):
    _passed(four_ranks, "dtensor_2d_mesh_reduces_only_sharded_dims")


def test_fsdp2_fully_shard_model(two_ranks):
    _passed(two_ranks, "fsdp2_fully_shard_model")


def test_patched_torch_returns_a_dtensor_norm_like_torch(two_ranks):
    _passed(two_ranks, "patched_torch_returns_a_dtensor_norm_like_torch")


def test_group_clippers_keep_the_unsharded_state_on_every_rank(two_ranks):
    _passed(two_ranks, "group_clippers_keep_the_unsharded_state_on_every_rank")


def test_group_clipper_rank_without_grads_keeps_the_same_state(two_ranks):
    _passed(two_ranks, "group_clipper_rank_without_grads_keeps_the_same_state")


def test_dtensor_clippers_keep_the_unsharded_state_without_a_group(two_ranks):
    _passed(two_ranks, "dtensor_clippers_keep_the_unsharded_state_without_a_group")


# ----------------------------------------------------------------------------------------------
# without spawning: the grouping that keeps the cost linear

def test_dtensors_are_grouped_by_mesh_and_placements_in_one_pass(tmp_path):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Replicate, Shard

    from fastclip.distributed import _by_spec

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        shard, repl = (Shard(0),), [Replicate()]
        ts = [DTensor.from_local(torch.randn(3), mesh, shard if i % 3 else repl, run_check=False)
              for i in range(30)]
        plain = torch.randn(2)
        plain_out, buckets = _by_spec(ts + [plain])
        assert plain_out == [plain]
        assert sorted(len(b[1]) for b in buckets.values()) == [10, 20]
    finally:
        dist.destroy_process_group()
