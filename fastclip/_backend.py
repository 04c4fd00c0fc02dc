"""Backend selection: which path serves the gradients of one device.

``FASTCLIP_BACKEND`` (read at each call, so it can be changed at run time):

* ``auto`` (default): Triton for CUDA/ROCm tensors when triton imports, and for CPU tensors when
  the Triton interpreter is on (``TRITON_INTERPRET=1`` before triton was imported); plain PyTorch
  otherwise, silently.
* ``triton``: always Triton; a device it can't serve raises RuntimeError naming the device.
* ``torch``: always plain PyTorch.
"""
from __future__ import annotations

import functools
import os

import torch

BACKENDS = ("auto", "triton", "torch")


@functools.lru_cache(maxsize=None)
def _triton_status() -> tuple[bool, bool, str]:
    """(triton importable, interpreter on, reason it is unusable)."""
    try:
        import triton  # noqa: F401

        from .kernels import norm_kernel  # noqa: F401  (compiles nothing, checks the kernels import)
    except Exception as exc:  # ImportError, or a triton too old for the kernels
        return False, False, f"triton could not be imported ({exc.__class__.__name__}: {exc})"
    return True, os.environ.get("TRITON_INTERPRET") == "1", ""


def requested_backend() -> str:
    choice = os.environ.get("FASTCLIP_BACKEND", "auto").strip().lower() or "auto"
    if choice not in BACKENDS:
        raise ValueError(f"FASTCLIP_BACKEND must be one of {', '.join(BACKENDS)}, got {choice!r}")
    return choice


def triton_can_run_on(device: torch.device) -> tuple[bool, str]:
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        # decided without importing triton: plain CPU training never pays for the import
        return False, "Triton runs on CPU tensors only in its interpreter (set TRITON_INTERPRET=1 before importing triton)"
    importable, interpreted, reason = _triton_status()
    if not importable:
        return False, reason
    if device.type == "cuda":
        if interpreted:
            return False, "the Triton interpreter is on (TRITON_INTERPRET=1), it runs on CPU tensors only"
        return True, ""
    if device.type == "cpu":
        if interpreted:
            return True, ""
        return False, "Triton runs on CPU tensors only in its interpreter (set TRITON_INTERPRET=1 before importing triton)"
    return False, f"fastclip's Triton kernels don't support {device.type} tensors"


def use_triton(device: torch.device) -> bool:
    """True if the gradients on ``device`` go through the Triton kernels."""
    choice = requested_backend()
    if choice == "torch":
        return False
    ok, reason = triton_can_run_on(device)
    if choice == "triton" and not ok:
        raise RuntimeError(f"FASTCLIP_BACKEND=triton was requested, but Triton can't run on {device.type} tensors: {reason}")
    return ok
