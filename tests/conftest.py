"""Test setup shared by every test module.

* The Triton interpreter is switched on (before triton is imported) when there is no GPU, so the
  Triton backend runs on CPU tensors and every kernel line is tested in CI.
* ``backend`` runs a test once per backend; ``device`` once per device (CUDA skips without a GPU).
* Set FASTCLIP_REQUIRE_TRITON=1 (CI does) to turn "Triton unavailable" skips into failures, so a
  broken triton install can't make the suite green by skipping.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import fastclip  # noqa: E402
from fastclip._backend import triton_can_run_on  # noqa: E402
from oracles import skip_or_fail  # noqa: E402

CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def _fresh_state():
    torch.manual_seed(42)
    fastclip.clear_cache()
    yield
    fastclip.clear_cache()


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=[requires_cuda, pytest.mark.cuda])])
def device(request):
    return torch.device(request.param)


@pytest.fixture(params=["torch", "triton"])
def backend(request, monkeypatch, device):
    """Select a backend for ``device`` through FASTCLIP_BACKEND (as a user would)."""
    if request.param == "triton":
        ok, reason = triton_can_run_on(device)
        if not ok:
            skip_or_fail(reason)
    monkeypatch.setenv("FASTCLIP_BACKEND", request.param)
    return request.param
