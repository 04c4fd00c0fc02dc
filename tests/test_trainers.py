"""fastclip inside real trainers, through patch_torch(): the same training, fastclip's kernels.

The spec (issue 10, part 2): HF Trainer with ``max_grad_norm``, Lightning with
``gradient_clip_val`` and torchtitan's ``clip_grad_norm_`` (plain, expert-parallel on a second
mesh, pipeline-parallel) run a few steps with torch patched. The oracle is the same run without
the patch: every step's loss, every clip call's returned norm and the final parameters agree
(fp32: within 1e-6 relative), and every clip call reached fastclip's kernels (the Triton
launches, or the plain-PyTorch backend) -- counted, not assumed.

The trainers are optional test dependencies: without them these tests skip, naming the pip
command, except under FASTCLIP_REQUIRE_TRAINERS=1 (CI), where a missing trainer fails.
"""
from __future__ import annotations

import functools
import math

import pytest
import torch

import fastclip.api
from fastclip import patch
from oracles import spy_calls
from trainer_fixtures import cpu_backend  # noqa: F401  (a fixture)
from trainer_fixtures import hf_trainer_run, lightning, lightning_run, require, run_ranks, spy_backend

STEPS = 4
FP32 = dict(rtol=1e-6, atol=1e-7)
BF16 = dict(rtol=2 ** -7, atol=1e-3)  # two bf16 units in the last place


@functools.lru_cache(maxsize=None)
def _reference(trainer: str, tmp_root, **kwargs):
    """The unpatched run (the oracle), once per configuration and test session."""
    run = hf_trainer_run if trainer == "hf" else lightning_run
    return run(tmp_root / f"{trainer}-torch-{sorted(kwargs.items())}", steps=STEPS, **kwargs)


def _reference_run(trainer, tmp_path_factory, **kwargs):
    return _reference(trainer, tmp_path_factory.getbasetemp(), **kwargs)


def assert_same_training(ours, theirs, tolerance):
    assert len(ours.losses) == len(theirs.losses) == STEPS
    torch.testing.assert_close(torch.tensor(ours.losses), torch.tensor(theirs.losses), **tolerance)
    assert len(ours.clip_results) == len(theirs.clip_results) == STEPS, "one clip call per step"
    for mine, torchs in zip(ours.clip_results, theirs.clip_results):
        assert type(mine) is type(torchs)
        if torchs is not None:
            assert (mine.dtype, mine.device, mine.shape) == (torchs.dtype, torchs.device, torchs.shape)
            torch.testing.assert_close(mine, torchs, **tolerance)
    assert ours.params.keys() == theirs.params.keys()
    for name in theirs.params:
        torch.testing.assert_close(ours.params[name], theirs.params[name], **tolerance, msg=name)


def _kernel_calls(backend, per_step):
    names = {"triton": {"norm": ["launch_norm_partials", "launch_scale"], "value": ["launch_clamp"]},
             "torch": {"norm": ["total_norm", "scale_"], "value": ["clamp_"]}}[backend][per_step]
    return names * STEPS


def _clip_norms(run):
    return [float(n) for n in run.clip_results]


# ---------------------------------------------------------------------------------------------
# HF Trainer: max_grad_norm -> accelerate's Accelerator.clip_grad_norm_ -> torch.nn.utils.clip_grad_norm_

def test_hf_trainer_max_grad_norm_runs_fastclip_and_trains_as_with_torch(cpu_backend, tmp_path, tmp_path_factory,
                                                                          monkeypatch):
    theirs = _reference_run("hf", tmp_path_factory, max_grad_norm=0.5)
    launches = spy_backend(monkeypatch, cpu_backend)
    with patch.patched():
        ours = hf_trainer_run(tmp_path, max_grad_norm=0.5, steps=STEPS)
    assert launches == _kernel_calls(cpu_backend, "norm")
    assert all(n > 0.5 for n in _clip_norms(theirs)), "every step must really clip"
    assert_same_training(ours, theirs, FP32)


# ---------------------------------------------------------------------------------------------
# Lightning: gradient_clip_val -> the precision plugin -> torch.nn.utils.clip_grad_norm_/clip_grad_value_

@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_lightning_gradient_clip_val_runs_fastclip_and_trains_as_with_torch(algorithm, cpu_backend, tmp_path,
                                                                             tmp_path_factory, monkeypatch):
    theirs = _reference_run("lightning", tmp_path_factory, gradient_clip_val=0.5, gradient_clip_algorithm=algorithm)
    launches = spy_backend(monkeypatch, cpu_backend)
    with patch.patched():
        ours = lightning_run(tmp_path, gradient_clip_val=0.5, gradient_clip_algorithm=algorithm, steps=STEPS)
    assert launches == _kernel_calls(cpu_backend, algorithm)
    if algorithm == "norm":
        assert all(n > 0.5 for n in _clip_norms(theirs)), "every step must really clip"
    assert_same_training(ours, theirs, FP32)


def test_lightning_bf16_true_gets_a_bf16_norm_as_with_torch(tmp_path, tmp_path_factory, monkeypatch):
    lightning()
    monkeypatch.setenv("FASTCLIP_BACKEND", "torch")
    theirs = _reference_run("lightning", tmp_path_factory, gradient_clip_val=0.5, precision="bf16-true")
    calls = spy_calls(monkeypatch, fastclip.api, ("clip_",))
    with patch.patched():
        ours = lightning_run(tmp_path, gradient_clip_val=0.5, precision="bf16-true", steps=STEPS)
    assert calls == ["clip_"] * STEPS
    assert all(n.dtype == torch.bfloat16 for n in theirs.clip_results)  # what Lightning's loggers see
    assert_same_training(ours, theirs, BF16)


# ---------------------------------------------------------------------------------------------
# torchtitan: torchtitan.distributed.utils.clip_grad_norm_ calls get_total_norm and
# clip_grads_with_norm_ on DTensor grads, per mesh with expert parallelism, and all-reduces the
# norm over the pipeline stages itself

SHAPES = [(12, 5), (7,), (2,), (3, 4)]  # uneven shards (torch can't take the inf norm of an empty one)


def _dtensor_params(mesh, seed, shapes=SHAPES):
    from torch.distributed.tensor import Shard, distribute_tensor

    g = torch.Generator().manual_seed(seed)
    params = []
    for shape in shapes:
        full = torch.randn(shape, generator=g) * 3.0
        q = torch.nn.Parameter(distribute_tensor(torch.zeros(shape), mesh, [Shard(0)]))
        q.grad = distribute_tensor(full, mesh, [Shard(0)])
        params.append(q)
    return params


def _plain_params(seed):
    g = torch.Generator().manual_seed(seed)
    params = []
    for shape in SHAPES:
        q = torch.nn.Parameter(torch.zeros(shape))
        q.grad = torch.randn(shape, generator=g) * 3.0
        params.append(q)
    return params


def _titan_layouts(rank):
    """(name, make parameters, clip_grad_norm_ keyword arguments) for each parallel layout."""
    from torch.distributed.device_mesh import init_device_mesh

    dense = init_device_mesh("cpu", (2,), mesh_dim_names=("dp_shard",))
    experts = init_device_mesh("cpu", (2,), mesh_dim_names=("ep",))
    stages = init_device_mesh("cpu", (2,), mesh_dim_names=("pp",))
    return [
        ("fsdp", lambda: _dtensor_params(dense, 0), {}),
        ("expert-parallel", lambda: _dtensor_params(dense, 0) + _dtensor_params(experts, 1), {"ep_enabled": True}),
        ("pipeline-stages", lambda: _plain_params(10 + rank), {"pp_mesh": stages}),  # each stage its own layers
    ]


def _titan_check(rank, world):
    from torch.distributed.tensor import DTensor

    from torchtitan.distributed.utils import clip_grad_norm_ as titan_clip

    for name, make, kwargs in _titan_layouts(rank):
        for p in (2.0, math.inf):
            theirs = make()
            expected = titan_clip(theirs, 1.0, norm_type=p, **kwargs)
            ours = make()
            served = []
            with patch.patched():
                with pytest.MonkeyPatch.context() as mp:
                    served = spy_calls(mp, fastclip.api, ("total_norm", "clip_with_norm_"))
                    norm = titan_clip(ours, 1.0, norm_type=p, **kwargs)
            calls_per_mesh = 2 if name == "expert-parallel" else 1
            assert served == ["total_norm"] * calls_per_mesh + ["clip_with_norm_"] * calls_per_mesh, (name, p, served)
            assert float(expected) > 1.0, "the test must really clip"
            assert (type(norm), norm.dtype) == (type(expected), expected.dtype), (name, p)
            torch.testing.assert_close(norm, expected, **FP32, msg=f"{name}, p={p}")
            for q, t in zip(ours, theirs):
                got, want = (x.grad.full_tensor() if isinstance(x.grad, DTensor) else x.grad for x in (q, t))
                torch.testing.assert_close(got, want, **FP32, msg=f"{name}, p={p}")


def _empty_shard_check(rank, world):
    """Where torch raises (a rank whose shard of a (1,)-shaped gradient is empty, norm inf),
    the patched function gives every rank the global max: a documented difference."""
    from torch.distributed.device_mesh import init_device_mesh

    ours = _dtensor_params(init_device_mesh("cpu", (2,)), 0, shapes=[(1,), (6,)])
    fulls = [q.grad.full_tensor() for q in ours]
    with patch.patched():
        norm = torch.nn.utils.get_total_norm([q.grad for q in ours], math.inf).full_tensor()
    assert float(norm) == max(float(f.abs().max()) for f in fulls)


def _titan_and_empty_shard_checks(rank, world):
    _titan_check(rank, world)
    _empty_shard_check(rank, world)


def test_torchtitan_clip_grad_norm_runs_fastclip_on_two_meshes_and_pipeline_stages(tmp_path, monkeypatch):
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("needs torch.distributed with gloo")
    require("torchtitan.distributed.utils")
    monkeypatch.setenv("FASTCLIP_BACKEND", "torch")  # the Triton path on 2 ranks: tests/test_distributed.py
    failures = run_ranks(_titan_and_empty_shard_checks, 2, tmp_path)
    assert not failures, "\n".join(failures)
