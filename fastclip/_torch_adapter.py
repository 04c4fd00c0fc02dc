"""The plain-PyTorch backend: ``fastclip._torch_backend``'s functions behind the operations of
``fastclip._backend.Backend``, so the dispatcher can hand it out like the Triton backend.

The arithmetic lives in ``fastclip._torch_backend`` (accurate chunked norms, grouped by dtype);
this module only adapts it: grouping by dtype (done by the dispatcher's C++ grouping call when
it can, else here), per-tensor norms, the fused AMP unscale, and the cross-rank reduction hook.
"""
from __future__ import annotations

import torch

from . import _agc_torch, _torch_backend
from .kernels.launch_settings import NORM_INF

name = "torch"


def _by_dtype(work, grads: list) -> dict:
    # a torch device inside a list that also has Triton devices is grouped per call
    return work.by_dtype if work.by_dtype is not None else _torch_backend.group_by_dtype(grads)


def _per_tensor_norms(work, grads: list, p: float, norm_dtype: torch.dtype) -> torch.Tensor:
    norms = torch.zeros(len(grads), dtype=norm_dtype, device=work.device)
    nonempty = [i for i, g in enumerate(grads) if g.numel()]
    if nonempty:
        acc = torch.float64 if norm_dtype == torch.float64 else torch.float32
        vals = [torch.linalg.vector_norm(grads[i], p, dtype=acc) for i in nonempty]
        norms[nonempty] = torch.stack(vals).to(norm_dtype)
    return norms


def prepare(work, grads: list) -> None:
    """Nothing to cache: the gradients are regrouped by one C++ call per call."""


def total_norm(work, grads: list, p: float, kind: int, norm_dtype: torch.dtype, *, per_tensor: bool = False):
    """Chunked, fp32-or-better accumulation (see ``fastclip._torch_backend.total_norm``)."""
    per = _per_tensor_norms(work, grads, p, norm_dtype) if per_tensor else None
    norm = _torch_backend.total_norm(_by_dtype(work, grads), p, kind, norm_dtype, work.device)
    return (norm, per) if per_tensor else norm


def clip(work, grads: list, max_norm, p: float, kind: int, norm_dtype: torch.dtype, *,
         per_tensor: bool = False, inv_scale=None, found_inf=None, reduce_partials=None):
    """Norm, then one multiply per dtype group (skipped on the CPU when nothing is clipped)."""
    by_dtype = _by_dtype(work, grads)
    per = _per_tensor_norms(work, grads, p, norm_dtype) if per_tensor else None
    if inv_scale is not None:
        norm = _unscale_clip(work, by_dtype, max_norm, p, kind, norm_dtype, inv_scale, found_inf, reduce_partials)
        if per is not None:
            per = per * inv_scale.to(per.dtype)
    else:
        norm = _norm(work, by_dtype, p, kind, norm_dtype, reduce_partials)
        _torch_backend.scale_(by_dtype, _torch_backend.clip_coef(max_norm, norm))
    return (norm, per) if per_tensor else norm


def _norm(work, by_dtype: dict, p: float, kind: int, norm_dtype: torch.dtype, reduce_partials) -> torch.Tensor:
    if reduce_partials is None:
        return _torch_backend.total_norm(by_dtype, p, kind, norm_dtype, work.device)
    return _reduced_norm(work, by_dtype, p, kind, reduce_partials).to(norm_dtype)


def _reduced_norm(work, by_dtype: dict, p: float, kind: int, reduce_partials) -> torch.Tensor:
    """The float64 norm after ``reduce_partials`` combined this rank's power sum with the others'."""
    if kind == NORM_INF:
        raise ValueError("reduce_partials combines power sums: it needs a finite norm order")
    local = _torch_backend.total_norm(by_dtype, p, kind, torch.float64, work.device)
    # the norm comes back in float64: raising it to p again costs nothing in accuracy
    power_sum = local if p == 1.0 else (local.square() if p == 2.0 else local.pow(p))
    partials, n = reduce_partials(power_sum.reshape(1), 1, 1)
    total = partials[:n].sum()
    if p == 1.0:
        return total
    return total.sqrt() if p == 2.0 else total.pow(1.0 / p)


def _unscale_clip(work, by_dtype, max_norm, p, kind, norm_dtype, inv_scale, found_inf, reduce_partials):
    """GradScaler's unscale and the clip in one multiply: the norm of the scaled gradients (one
    read), found_inf from it, then g *= inv_scale * coef."""
    if reduce_partials is None:
        scaled = _torch_backend.total_norm(by_dtype, p, kind, torch.float64, work.device)
    else:
        scaled = _reduced_norm(work, by_dtype, p, kind, reduce_partials)
    nonfinite = ~torch.isfinite(scaled)
    found_inf.copy_(nonfinite.to(found_inf.dtype))
    norm = (scaled * inv_scale.double()).to(norm_dtype)
    factor = (_torch_backend.clip_coef(max_norm, norm) * inv_scale.to(norm_dtype)).float()
    if work.device.type == "cpu":
        if not bool(nonfinite):  # a CPU read, not a device sync
            for tensors in by_dtype.values():
                torch._foreach_mul_(tensors, factor)
    else:
        # no host sync: where found_inf, multiply by 1 (the step is skipped anyway)
        factor = torch.where(nonfinite, torch.ones_like(factor), factor)
        for tensors in by_dtype.values():
            torch._foreach_mul_(tensors, factor)
    return norm


def clip_with_norm(work, grads: list, max_norm, norm: torch.Tensor) -> None:
    _torch_backend.scale_(_by_dtype(work, grads), _torch_backend.clip_coef(max_norm, norm.to(work.device)))


def clamp(work, grads: list, clip_value: float) -> None:
    _torch_backend.clamp_(_by_dtype(work, grads), clip_value)



def agc(work, weights: list, grads: list, clip_factor: float, eps: float, p: float, kind: int, *,
        count: bool = False):
    """Grouped unit norms, one batch of coefficient ops, one multiply (``fastclip._agc_torch``)."""
    return _agc_torch.agc(work, weights, grads, clip_factor, eps, p, kind, count=count)
