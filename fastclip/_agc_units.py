"""What an AGC unit is (timm's convention), and when a tensor's units are contiguous spans.

A unit is one slice along dim 0 of a tensor of 2 or more dimensions (an output channel of a
conv, a row of a Linear weight), and the whole tensor for 0-/1-D tensors (biases, gains).
Imports nothing but torch: both backends use it.
"""
from __future__ import annotations

import torch

from ._layout import is_flat_span


def units_of(t: torch.Tensor) -> tuple[int, int]:
    """(units, elements per unit): dim-0 slices for 2-D and up, the whole tensor otherwise."""
    rows = t.shape[0] if t.dim() >= 2 else 1
    return rows, (t.numel() // rows if rows else 0)


def rows_contiguous(t: torch.Tensor) -> bool:
    """True if every unit of ``t`` is one contiguous span of memory.

    So are contiguous, channels_last and channels_last_3d weights (dim 0 keeps the largest
    stride), and any dense 0-/1-D tensor; not a transposed ``W.t()`` or a slice with gaps.
    """
    if t.is_contiguous():
        return True
    if not is_flat_span(t):
        return False
    rows, row_len = units_of(t)
    return t.dim() < 2 or rows <= 1 or t.stride(0) == row_len
