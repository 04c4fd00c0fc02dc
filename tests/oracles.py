"""Oracles and data factories for the tests: float64 references and torch on cloned grads."""
from __future__ import annotations

import math

import torch


def ref_norm(tensors, p) -> float:
    """The float64 p-norm of all tensors seen as one vector (the exact oracle)."""
    p = float(p)
    flat = torch.cat([t.detach().double().reshape(-1).cpu() for t in tensors] or [torch.zeros(0, dtype=torch.float64)])
    if flat.numel() == 0:
        return 0.0
    return float(torch.linalg.vector_norm(flat, p))


def ref_coef(max_norm: float, norm: float) -> float:
    """torch's rule: min(max_norm / (norm + 1e-6), 1), NaN passes through."""
    c = max_norm / (norm + 1e-6)
    return c if math.isnan(c) else min(c, 1.0)


def make_params(shapes, dtype=torch.float32, device="cpu", scale=1.0):
    """Parameters (zeros: never uninitialized memory, which may hold NaN bit patterns that a test
    updating the parameters would compare) with random (never all-zero) grads of the given shapes."""
    params = []
    for shape in shapes:
        p = torch.nn.Parameter(torch.zeros(shape, dtype=dtype, device=device))
        p.grad = (torch.randn(shape, dtype=torch.float64) * scale).to(dtype=dtype, device=device)
        params.append(p)
    return params


def clone_params(params):
    """Independent copies (same grads) to feed torch.nn.utils as the second oracle."""
    out = []
    for p in params:
        q = torch.nn.Parameter(p.detach().clone())
        q.grad = None if p.grad is None else p.grad.clone()
        out.append(q)
    return out


def grads(params):
    return [p.grad for p in params if p.grad is not None]


def skip_or_fail(reason: str, module_level: bool = False):
    """Skip (a test, or with ``module_level`` the whole calling module), unless
    FASTCLIP_REQUIRE_TRITON=1 (CI) makes a missing Triton a failure."""
    import os

    import pytest

    if os.environ.get("FASTCLIP_REQUIRE_TRITON") == "1":
        pytest.fail(f"Triton required (FASTCLIP_REQUIRE_TRITON=1) but unavailable: {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=module_level)


def require_triton_module():
    """Call at the top of a test module that imports fastclip's Triton code: without an importable
    triton the module is skipped with the reason (a collection error under FASTCLIP_REQUIRE_TRITON=1)."""
    from fastclip._backend import _triton_status

    importable, _, reason = _triton_status()
    if not importable:
        skip_or_fail(reason, module_level=True)


def spy_calls(monkeypatch, module, names):
    """Wrap ``module.<name>`` for each name so calls are recorded (in order) and still run."""
    calls = []
    for name in names:
        real = getattr(module, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            calls.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)
    return calls


def require_triton_on_cpu():
    """Skip (or fail under FASTCLIP_REQUIRE_TRITON=1) unless the Triton interpreter serves CPU tensors."""
    import torch

    from fastclip._backend import triton_can_run_on

    ok, reason = triton_can_run_on(torch.device("cpu"))
    if not ok:
        skip_or_fail(reason)
