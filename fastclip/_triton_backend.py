"""The Triton backend: plan -> norm launch -> scale launch on one device, with no host sync.

This module is the backend object the dispatcher hands out for Triton devices: its public
functions are the operations of ``fastclip._backend.Backend``, each taking a ``DeviceWork`` and
that device's (validated) gradients.  Truly strided gradients (rare: a slice with gaps assigned as .grad) go through contiguous copies
that are written back after the rewrite; that costs extra copies and a plan per call.
"""
from __future__ import annotations

import functools

import torch

from . import _agc_triton
from ._layout import is_flat_span
from ._plan import build_plan
from .kernels.launch_settings import NORM_GENERAL, NORM_INF, NORM_P2, settings_for
from .kernels.norm_kernel import launch_norm_partials
from .kernels.scale_kernel import launch_clamp, launch_scale

name = "triton"


def _on_work_device(fn):
    """Run ``fn(work, ...)`` with ``work.device`` current: Triton launches on the current device."""

    @functools.wraps(fn)
    def wrapper(work, *args, **kwargs):
        device = work.device
        if device.type == "cuda" and device.index != torch.cuda.current_device():
            with torch.cuda.device(device):
                return fn(work, *args, **kwargs)
        return fn(work, *args, **kwargs)

    return wrapper


def prepare(work, grads: list) -> None:
    """Build the chunk table once when every gradient is a flat span (else it is built per call)."""
    if not work.strided:
        work.plan = build_plan(grads, work.device, settings_for(work.device))


def _plan_for(work, grads: list):
    """(plan, [(strided view, contiguous copy), ...]) for this device's grads."""
    if not work.strided:
        return work.plan, []
    dense, pairs = [], []
    for g in grads:
        if g.is_contiguous() or is_flat_span(g):
            dense.append(g)
        else:
            copy = g.contiguous()
            dense.append(copy)
            pairs.append((g, copy))
    return build_plan(dense, work.device, settings_for(work.device)), pairs


def _write_back(pairs) -> None:
    for view, copy in pairs:
        view.copy_(copy)


def _on(max_norm, device):
    # a threshold tensor elsewhere (e.g. on the CPU) is copied once; it is never read on the host
    if isinstance(max_norm, torch.Tensor) and max_norm.device != device:
        return max_norm.to(device)
    return max_norm


def _norm_launch(plan, p: float, kind: int, per_tensor: bool):
    chunk_partials = None
    if per_tensor:
        if plan.chunk_partials is None:
            plan.chunk_partials = torch.empty(max(plan.n_chunks, 1), dtype=torch.float64, device=plan.device)
        chunk_partials = plan.chunk_partials
    return launch_norm_partials(plan.table, plan.n_chunks, plan.partials, p, kind, plan.acc_fp64, plan.settings,
                                chunk_partials)


def _norms_from_chunks(plan, p: float, kind: int, norm_dtype: torch.dtype) -> torch.Tensor:
    """Norm of each tensor of the plan (in plan order) from the chunk partials of the last launch.

    A segment reduction over chunks (deterministic, no atomics) plus the root: a few small ops,
    no pass over the gradients.
    """
    parts = plan.chunk_partials[: plan.n_chunks]
    reduce = "max" if kind == NORM_INF else "sum"
    sums = torch.segment_reduce(parts, reduce, lengths=plan.chunk_counts, unsafe=True, initial=0.0)
    if kind == NORM_P2:
        sums = sums.sqrt()
    elif kind == NORM_GENERAL:
        sums = sums.pow(1.0 / p)
    return sums.to(norm_dtype)


@_on_work_device
def clip(work, grads: list, max_norm, p: float, kind: int, norm_dtype: torch.dtype, *,
         per_tensor: bool = False, inv_scale=None, found_inf=None, reduce_partials=None):
    """The two launches: norm partials, then reduce + clip. Returns the 0-d norm.

    With ``per_tensor`` returns (norm, per-tensor norms). With GradScaler's ``inv_scale`` and
    ``found_inf`` the grads are unscaled in the same pass (fused AMP step). With
    ``reduce_partials(partials, n, size) -> (partials, n)`` the partials are combined across
    ranks between the two launches (sharded gradients: every rank then scales by the global norm).
    """
    plan, pairs = _plan_for(work, grads)
    n_partials = _norm_launch(plan, p, kind, per_tensor)
    partials = plan.partials
    if reduce_partials is not None:
        partials, n_partials = reduce_partials(partials, n_partials, plan.settings.max_programs)
    norm = torch.empty((), dtype=norm_dtype, device=plan.device)
    launch_scale(plan.table, plan.n_chunks, partials, n_partials, norm, _on(max_norm, plan.device), p, kind,
                 norm_dtype == torch.float64, finish_norm=True, apply=True, settings=plan.settings,
                 inv_scale=inv_scale, found_inf=found_inf)
    _write_back(pairs)
    if per_tensor:
        return norm, _unscaled(_norms_from_chunks(plan, p, kind, norm_dtype), inv_scale)
    return norm


@_on_work_device
def clip_with_policy(work, grads: list, p: float, kind: int, norm_dtype: torch.dtype, policy: int,
                     policy_buffer: torch.Tensor, *, per_tensor: bool = False, reduce_partials=None):
    """A clipper step in the two launches of :func:`clip`: norm partials, then the policy + scale.

    The scale launch computes the threshold from ``policy_buffer`` (a clipper's state and
    settings on this device, ``kernels/policy_ops.py``), updates it in place and rescales.
    Returns ``(norm, threshold, coef, clipped, found_inf)`` as 0-d tensors (``(that, per-tensor
    norms)`` with ``per_tensor``).  ``reduce_partials`` is the cross-rank hook of :func:`clip`.
    """
    plan, pairs = _plan_for(work, grads)
    n_partials = _norm_launch(plan, p, kind, per_tensor)
    partials = plan.partials
    if reduce_partials is not None:
        partials, n_partials = reduce_partials(partials, n_partials, plan.settings.max_programs)
    values = torch.empty(3, dtype=norm_dtype, device=plan.device)  # norm, threshold, coef
    clipped = torch.empty((), dtype=torch.bool, device=plan.device)
    found_inf = torch.empty((), dtype=torch.float32, device=plan.device)
    launch_scale(plan.table, plan.n_chunks, partials, n_partials, values, 0.0, p, kind, norm_dtype == torch.float64,
                 finish_norm=True, apply=True, settings=plan.settings, found_inf=found_inf,
                 policy=(policy, policy_buffer, clipped))
    _write_back(pairs)
    result = (*values.unbind(), clipped, found_inf)
    if per_tensor:
        return result, _norms_from_chunks(plan, p, kind, norm_dtype)
    return result


def _unscaled(norms, inv_scale):
    return norms if inv_scale is None else norms * inv_scale.to(norms.dtype)


@_on_work_device
def total_norm(work, grads: list, p: float, kind: int, norm_dtype: torch.dtype, *, per_tensor: bool = False):
    """The two launches without scaling (the second runs one program). Returns the 0-d norm,
    or (norm, per-tensor norms) with ``per_tensor``."""
    plan, _ = _plan_for(work, grads)
    n_partials = _norm_launch(plan, p, kind, per_tensor)
    norm = torch.empty((), dtype=norm_dtype, device=plan.device)
    launch_scale(plan.table, plan.n_chunks, plan.partials, n_partials, norm, 0.0, p, kind,
                 norm_dtype == torch.float64, finish_norm=True, apply=False, settings=plan.settings)
    if per_tensor:
        return norm, _norms_from_chunks(plan, p, kind, norm_dtype)
    return norm


@_on_work_device
def clip_with_norm(work, grads: list, max_norm, norm: torch.Tensor) -> None:
    """One launch: grads *= min(max_norm / (norm + 1e-6), 1), skipped when that is >= 1."""
    plan, pairs = _plan_for(work, grads)
    norm = norm.to(plan.device)
    launch_scale(plan.table, plan.n_chunks, plan.partials, 0, norm, _on(max_norm, plan.device), 2.0, NORM_P2,
                 norm.dtype == torch.float64, finish_norm=False, apply=True, settings=plan.settings)
    _write_back(pairs)


@_on_work_device
def clamp(work, grads: list, clip_value: float) -> None:
    """One launch: clamp every gradient to [-clip_value, clip_value] in place."""
    plan, pairs = _plan_for(work, grads)
    launch_clamp(plan.table, plan.n_chunks, clip_value, plan.settings)
    _write_back(pairs)


@_on_work_device
def agc(work, weights: list, grads: list, clip_factor: float, eps: float, p: float, kind: int, *,
        count: bool = False):
    """Two launches: per-unit power sums, then per-unit clipping (``fastclip._agc_triton``)."""
    return _agc_triton.agc(work, weights, grads, clip_factor, eps, p, kind, count=count)
