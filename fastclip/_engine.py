"""The one path every entry point takes once its arguments are checked: route, then the backends.

``fastclip.api`` (eager calls), ``fastclip.custom_op`` (the ops torch.compile sees),
``fastclip.distributed`` (local shards) and ``fastclip.amp`` all end here.  Nothing in this
module knows which backend runs: each device's ``DeviceWork`` carries it.  One device (the usual
case) is one backend call; several devices are combined as torch combines them.
"""
from __future__ import annotations

import torch

from . import _inputs
from ._dispatch import route


def norm_dtype(works: list) -> torch.dtype:
    """float64 if any gradient is float64, else float32 (never a half type)."""
    return torch.float64 if any(w.has_fp64 for w in works) else torch.float32


def _nothing(per_tensor: bool):
    return (torch.tensor(0.0), torch.zeros(0)) if per_tensor else torch.tensor(0.0)


def total_norm(tensors: list, p: float, kind: int, error_if_nonfinite: bool = False, per_tensor: bool = False,
               key: bytes | None = None):
    """The p-norm of ``tensors`` as one vector (``(norm, per-tensor norms)`` with ``per_tensor``)."""
    if not tensors:
        return _nothing(per_tensor)
    works = route(tensors, key)
    result = works_norm(works, tensors, p, kind, norm_dtype(works), per_tensor)
    if error_if_nonfinite:
        _raise_if_nonfinite(result[0] if per_tensor else result, p)
    return result


def clip(grads: list, max_norm, p: float, kind: int, error_if_nonfinite: bool = False, per_tensor: bool = False,
         key: bytes | None = None):
    """Clip ``grads`` in place by their total norm; returns it (and the per-tensor norms)."""
    if not grads:
        return _nothing(per_tensor)
    works = route(grads, key)
    dtype = norm_dtype(works)
    if len(works) == 1 and not error_if_nonfinite:
        (w,) = works  # the product: on the Triton path two launches, no host sync
        return w.backend.clip(w, grads, max_norm, p, kind, dtype, per_tensor=per_tensor)
    result = works_norm(works, grads, p, kind, dtype, per_tensor)
    norm = result[0] if per_tensor else result
    if error_if_nonfinite:
        _raise_if_nonfinite(norm, p)  # before any gradient is written
    works_clip_with_norm(works, grads, max_norm, norm)
    return result


def clip_with_norm(grads: list, max_norm, norm: torch.Tensor, key: bytes | None = None) -> None:
    """Scale ``grads`` in place by min(max_norm / (norm + 1e-6), 1)."""
    if grads:
        works_clip_with_norm(route(grads, key), grads, max_norm, norm)


def clamp(grads: list, clip_value: float, key: bytes | None = None) -> None:
    """Clamp ``grads`` in place to [-clip_value, clip_value]."""
    if grads:
        for w in route(grads, key):
            w.backend.clamp(w, w.grads(grads), clip_value)


def works_norm(works: list, grads: list, p: float, kind: int, dtype: torch.dtype, per_tensor: bool = False):
    """The norm over every device's work (and the per-tensor norms in ``grads`` order)."""
    if len(works) == 1:
        (w,) = works
        return w.backend.total_norm(w, grads, p, kind, dtype, per_tensor=per_tensor)
    results = [w.backend.total_norm(w, w.grads(grads), p, kind, dtype, per_tensor=per_tensor) for w in works]
    norms = [r[0] for r in results] if per_tensor else results
    first = norms[0].device  # several devices: combine as torch does, on the first one
    norm = torch.linalg.vector_norm(torch.stack([n.to(first) for n in norms]), p).to(dtype)
    if not per_tensor:
        return norm
    per = torch.zeros(len(grads), dtype=dtype, device=grads[0].device)
    for w, (_, norms_w) in zip(works, results):
        per[w.indices] = norms_w.to(per.device)
    return norm, per


def works_clip_with_norm(works: list, grads: list, max_norm, norm: torch.Tensor) -> None:
    for w in works:
        w.backend.clip_with_norm(w, w.grads(grads), max_norm, norm)


def _raise_if_nonfinite(norm: torch.Tensor, p: float) -> None:
    if not bool(torch.isfinite(norm)):  # the one path that syncs, as torch
        raise _inputs.nonfinite_error(p)
