"""AGC on the Triton path: cached unit table -> launch 1 (power sums) -> launch 2 (clip units).

``fastclip._triton_backend.agc`` delegates here.  Two launches whatever the number of tensors
and mix of dtypes, no host synchronization, nothing allocated per call once the plan is cached.
Weights or gradients whose dim-0 slices are not contiguous are staged through the plan's
contiguous copies (``fastclip._agc_plan``): torch copies around the two launches.
"""
from __future__ import annotations

import torch

from ._agc_plan import plan_for
from .kernels.agc_kernel import launch_agc_clip, launch_agc_sums
from .kernels.launch_settings import settings_for


def agc(work, weights: list, grads: list, clip_factor: float, eps: float, p: float, kind: int, *,
        count: bool = False):
    """Clip ``grads`` unit-wise in place; with ``count``, return int32 ``[clipped, non-finite]``
    unit counts (one small torch reduction of the per-program counts, on the device)."""
    plan = plan_for(weights, grads, work.device, settings_for(work.device))
    for i, w_stage, g_stage in plan.staged:
        if w_stage is not None:
            w_stage.copy_(weights[i])
        if g_stage is not None:
            g_stage.copy_(grads[i])
    cap = plan.counts.numel() // 2
    launch_agc_sums(plan.table, plan.n_chunks, plan.w_sums, plan.g_sums, p, kind, plan.settings, cap)
    grid = launch_agc_clip(plan.table, plan.n_chunks, plan.w_sums, plan.g_sums, plan.coefs, plan.counts, p, kind,
                           clip_factor, eps, plan.settings, cap)
    for i, _, g_stage in plan.staged:
        if g_stage is not None:
            grads[i].copy_(g_stage)
    if count:
        return plan.counts[: 2 * grid].view(2, grid).sum(1, dtype=torch.int32)
    return None
