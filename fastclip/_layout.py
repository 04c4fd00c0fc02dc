"""Memory layout helpers: when a tensor is one flat span of memory, and a 1-D view of it.

A norm and a uniform rescale don't care about element order, so any dense non-overlapping layout
(contiguous, transposed, channels_last, permuted) is treated as the flat span
``[data_ptr, data_ptr + numel * elsize)``.  Only truly strided views (slices with gaps, expanded
tensors) need a contiguous copy.
"""
from __future__ import annotations

import torch


def is_flat_span(t: torch.Tensor) -> bool:
    """True if ``t`` covers exactly ``numel`` consecutive elements starting at ``data_ptr``."""
    if t.is_contiguous():
        return True
    expected = 1
    for size, stride in sorted(((s, st) for s, st in zip(t.shape, t.stride()) if s != 1), key=lambda x: x[1]):
        if stride != expected:
            return False
        expected *= size
    return True


def flat_view(t: torch.Tensor) -> torch.Tensor | None:
    """A 1-D view over the same memory as ``t`` (any element order), or None for strided views."""
    if t.is_contiguous():
        return t.view(-1)
    if not is_flat_span(t):
        return None
    # order dims by decreasing stride: the permuted view is contiguous
    order = sorted(range(t.dim()), key=lambda d: t.stride(d), reverse=True)
    return t.permute(order).reshape(-1)
