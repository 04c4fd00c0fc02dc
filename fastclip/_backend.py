"""Backends: what each one implements, and which one serves the gradients of one device.

Two backends implement the same operations (:class:`Backend`): ``fastclip._triton_backend`` (the
Triton kernels: two launches, no host sync) and ``fastclip._torch_adapter`` (plain PyTorch, over
``fastclip._torch_backend``).  The dispatcher puts the chosen one in each ``DeviceWork``, so an
entry point calls ``work.backend.clip(work, grads, ...)`` whatever the device.

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
from typing import Protocol

import torch

from . import _torch_adapter

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


def backend_for(device: torch.device) -> "Backend":
    """The backend that serves the gradients on ``device`` (raises as :func:`use_triton` does)."""
    if use_triton(device):
        from . import _triton_backend  # imports triton: only once a device needs it

        return _triton_backend
    return _torch_adapter


#: The operations of :class:`Backend`; tests/test_backends.py checks that every backend
#: implements each of them with the same parameters.
OPERATIONS = ("prepare", "total_norm", "clip", "clip_with_norm", "clamp", "agc")


class Backend(Protocol):
    """The operations every backend implements (each backend is a module of these functions).

    Each takes the ``DeviceWork`` the dispatcher made for one device and that device's gradients
    (``work.grads(grads)``, already validated: floating, dense, on ``work.device``) and never
    synchronizes with the host.  Thresholds (``max_norm``) are floats or 0-d tensors that are
    never read on the host; ``p`` and ``kind`` come from ``fastclip._inputs.parse_norm_type``;
    ``norm_dtype`` is the dtype of the returned norm (float32, float64 if any gradient is).

    Adding an operation (say AGC's per-unit clipping) is one function with the same parameters in
    each backend module, its name added to :data:`OPERATIONS`, and one call in the entry point.
    """

    name: str  # "triton" or "torch"

    def prepare(self, work, grads: list) -> None:
        """Cache in ``work`` what every later call on these exact gradients reuses (Triton: the
        chunk table).  Called once, when the dispatcher builds the route."""

    def total_norm(self, work, grads: list, p: float, kind: int, norm_dtype: torch.dtype, *,
                   per_tensor: bool = False):
        """The 0-d p-norm of ``grads`` seen as one vector; with ``per_tensor``, ``(norm, norms)``
        where ``norms[i]`` is the norm of ``grads[i]`` (in ``norm_dtype``)."""

    def clip(self, work, grads: list, max_norm, p: float, kind: int, norm_dtype: torch.dtype, *,
             per_tensor: bool = False, inv_scale=None, found_inf=None, reduce_partials=None):
        """Clip in place by the total norm and return it (``(norm, norms)`` with ``per_tensor``).

        ``inv_scale``/``found_inf`` (GradScaler's tensors): unscale in the same pass, set
        ``found_inf`` when the norm is not finite, and return the unscaled norm.
        ``reduce_partials(partials, n, size) -> (partials, n)``: combine the float64 power sums
        Σ|x|^p (``partials[:n]``, padded to ``size``) across ranks before the norm is finished
        (sharded gradients: every rank then clips by the global norm).  Finite p only.
        """

    def clip_with_norm(self, work, grads: list, max_norm, norm: torch.Tensor) -> None:
        """Scale in place by min(max_norm / (norm + 1e-6), 1), given the (0-d) norm."""

    def clamp(self, work, grads: list, clip_value: float) -> None:
        """Clamp in place to [-clip_value, clip_value]; NaN stays NaN."""

    def agc(self, work, weights: list, grads: list, clip_factor: float, eps: float, p: float, kind: int, *,
            count: bool = False):
        """Unit-wise adaptive clipping in place (:func:`fastclip.agc_`): ``weights[i]`` is the
        parameter whose gradient is ``grads[i]`` (same dtype and shape).  With ``count``, returns
        an int32 tensor ``[units clipped, units with a non-finite gradient norm]`` on the device."""
