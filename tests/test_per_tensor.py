"""per_tensor=True: each gradient's norm, from the same pass as the global norm.

Oracle: float64 torch.linalg.vector_norm of each tensor; the global result must be unchanged.
"""
import math

import pytest
import torch

import fastclip
from oracles import make_params, ref_norm

SHAPES = [(700,), (0,), (3, 5), (1,), (33, 20), (4097,)]  # multi-chunk, empty, odd sizes
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float32, torch.float32, torch.bfloat16]


def _grads(device, dtype=None):
    return [(torch.randn(s, dtype=torch.float64) * 3).to(dtype or d).to(device) for s, d in zip(SHAPES, DTYPES)]


@pytest.mark.parametrize("norm_type", [1.0, 2.0, 3.0, math.inf], ids=str)
def test_total_norm_per_tensor_matches_float64_per_tensor(backend, device, norm_type):
    grads = _grads(device)
    norm, per = fastclip.total_norm(grads, norm_type, per_tensor=True)
    expected = torch.tensor([ref_norm([g], norm_type) for g in grads], dtype=torch.float64)
    assert per.shape == (len(grads),) and per.dtype == torch.float32 and per.device == device
    torch.testing.assert_close(per.double().cpu(), expected, rtol=2e-5, atol=1e-6)
    assert math.isclose(norm.item(), ref_norm(grads, norm_type), rel_tol=2e-5)


def test_per_tensor_norms_are_float64_when_a_grad_is_float64(backend, device):
    grads = _grads(device) + [torch.randn(9, dtype=torch.float64, device=device)]
    _, per = fastclip.total_norm(grads, per_tensor=True)
    assert per.dtype == torch.float64
    assert math.isclose(per[-1].item(), ref_norm([grads[-1]], 2), rel_tol=1e-12)


def test_clip_per_tensor_returns_pre_clip_norms_and_still_clips(backend, device):
    params = make_params([(700,), (3, 5), (4097,)], device=device, scale=2.0)
    before = [ref_norm([p.grad], 2) for p in params]
    total = ref_norm([p.grad for p in params], 2)
    norm, per = fastclip.clip_(params, 1.0, per_tensor=True)
    torch.testing.assert_close(per.double().cpu(), torch.tensor(before, dtype=torch.float64), rtol=2e-5, atol=0)
    assert math.isclose(norm.item(), total, rel_tol=2e-5)
    assert math.isclose(ref_norm([p.grad for p in params], 2), 1.0, rel_tol=1e-4)


def test_per_tensor_skips_none_grads_like_the_returned_order_says(backend, device):
    params = make_params([(5,), (6,)], device=device)
    frozen = torch.nn.Parameter(torch.randn(4, device=device))  # grad None: not in the output
    _, per = fastclip.clip_([params[0], frozen, params[1]], 1e9, per_tensor=True)
    assert per.shape == (2,)
    assert math.isclose(per[1].item(), ref_norm([params[1].grad], 2), rel_tol=2e-5)


def test_per_tensor_keeps_two_launches_on_the_triton_path(monkeypatch):
    from oracles import require_triton_on_cpu, spy_calls

    require_triton_on_cpu()  # before importing the Triton backend: without triton this skips
    import fastclip._triton_backend as tb
    calls = spy_calls(monkeypatch, tb, ("launch_norm_partials", "launch_scale"))
    monkeypatch.setenv("FASTCLIP_BACKEND", "triton")
    params = make_params([(700,), (3, 5)])
    fastclip.clip_(params, 0.5, per_tensor=True)
    assert calls == ["launch_norm_partials", "launch_scale"]
