"""The unit table of AGC's two launches (``kernels/agc_kernel.py``), built once and cached.

For each (weight, gradient) pair: ``R`` units (dim 0 for 2-D and up, 1 for 0-/1-D tensors) of
``L`` elements.  Units of ``L <= chunk`` elements are packed whole into *rows chunks* (up to
``chunk // L`` consecutive rows: one slot per row); longer units are cut into *split chunks* of
``chunk`` elements (one slot per piece, summed in launch 2).  Table columns, one per chunk:
weight address, gradient address, meta (``n | code << 24 | split << 28 | aligned << 29 |
row_len << 32``; a split chunk's row_len is its own length: launch 1 treats the piece as one
row), first slot, and for split chunks the unit's first slot and slot count.

Layouts: a dim-0 slice is one contiguous span when the tensor is dense and dim 0 has the largest
stride: contiguous, channels_last and channels_last_3d weights, any layout of a 0-/1-D tensor.
Other tensors (a transposed ``W.t()``, a slice with gaps) are *staged*: the plan keeps a
contiguous copy of each such weight or gradient, filled before launch 1 (and, for gradients,
written back after launch 2).  That costs a read and a write of the tensor per staged side, plus
the write-back, and keeps the table cacheable (the copies' addresses never change).

Plans are cached under the pairs' signature (addresses, dtypes, shapes, layout flags of both
sides), so a training loop that passes the same parameters every step builds no table, uploads
nothing and allocates nothing.
"""
from __future__ import annotations

import collections
import dataclasses
import operator

import torch

from ._agc_units import rows_contiguous, units_of
from .kernels.agc_kernel import ALIGNED_SHIFT, CODE_SHIFT, MAX_CHUNK, ROW_SHIFT, SPLIT_SHIFT, TABLE_ROWS
from .kernels.launch_settings import DTYPE_CODES, VECTOR_ALIGN_BYTES, LaunchSettings, max_grid

_PLANS_KEPT = 8
_plans: "collections.OrderedDict[tuple, AGCPlan]" = collections.OrderedDict()
_T = torch.Tensor


@dataclasses.dataclass
class AGCPlan:
    device: torch.device
    table: torch.Tensor  # int64 [TABLE_ROWS, n_chunks] on device (a dummy column when empty)
    n_chunks: int
    w_sums: torch.Tensor  # float64 [n_slots]: launch 1's weight power sums
    g_sums: torch.Tensor  # float64 [n_slots]: launch 1's gradient power sums
    coefs: torch.Tensor  # float64 [n_slots]: launch 2's per-row coefficient scratch
    counts: torch.Tensor  # int32 [2 * max grid]: launch 2's per-program unit counts
    settings: LaunchSettings
    n_units: int  # units with at least one element
    staged: list  # (position, weight copy or None, gradient copy or None)


def signature(weights: list, grads: list) -> tuple:
    """Everything a plan depends on, as columns (map() over unbound methods: no per-item Python)."""
    w_flat = tuple(map(_T.is_contiguous, weights))
    g_flat = tuple(map(_T.is_contiguous, grads))
    if not all(w_flat):
        w_flat = tuple(map(rows_contiguous, weights))
    if not all(g_flat):
        g_flat = tuple(map(rows_contiguous, grads))
    dtype = operator.attrgetter("dtype")
    return (tuple(map(_T.data_ptr, weights)), tuple(map(_T.data_ptr, grads)), tuple(map(dtype, weights)),
            tuple(map(dtype, grads)), tuple(map(_T.size, weights)), tuple(map(_T.size, grads)), w_flat, g_flat)


def plan_for(weights: list, grads: list, device: torch.device, settings: LaunchSettings) -> AGCPlan:
    """The cached plan of these pairs (built on the first call with these tensors)."""
    key = (device, settings, signature(weights, grads))
    plan = _plans.get(key)
    if plan is None:
        plan = build_agc_plan(weights, grads, device, settings)
        _plans[key] = plan
        if len(_plans) > _PLANS_KEPT:
            _plans.popitem(last=False)
    else:
        _plans.move_to_end(key)
    return plan


def clear() -> None:
    """Forget every cached AGC plan (frees their device buffers)."""
    _plans.clear()


def _stage(t: torch.Tensor) -> torch.Tensor | None:
    """A contiguous buffer of ``t``'s shape when its rows are not contiguous spans, else None."""
    return None if rows_contiguous(t) else torch.empty(t.shape, dtype=t.dtype, device=t.device)


def build_agc_plan(weights: list, grads: list, device: torch.device, settings: LaunchSettings) -> AGCPlan:
    """Build the unit table of ``weights`` / ``grads`` (pairs of the same dtype and shape)."""
    chunk = settings.chunk
    if chunk > MAX_CHUNK:
        raise ValueError(f"AGC chunks are limited to {MAX_CHUNK} elements, got settings.chunk = {chunk}")
    staged, rows_meta = [], []
    for i, (w, g) in enumerate(zip(weights, grads)):
        w_stage, g_stage = _stage(w), _stage(g)
        if w_stage is not None or g_stage is not None:
            staged.append((i, w_stage, g_stage))
        rows, row_len = units_of(g)
        w_addr = (w if w_stage is None else w_stage).data_ptr()
        g_addr = (g if g_stage is None else g_stage).data_ptr()
        rows_meta.append((w_addr, g_addr, rows, row_len, g.element_size(), DTYPE_CODES[g.dtype]))
    meta = torch.tensor(rows_meta or [(0, 0, 0, 0, 1, 0)], dtype=torch.int64)[: len(rows_meta)]
    w_addr, g_addr, rows, row_len, elsize, code = meta.unbind(1)
    rows = torch.where(row_len > 0, rows, 0)  # units without elements get no chunk and no slot
    split = row_len > chunk
    pieces = torch.where(split, (row_len + chunk - 1) // chunk, 1)  # slots per unit
    per_chunk = torch.where(split, 1, chunk // row_len.clamp(min=1))  # rows per rows chunk
    n_per_tensor = torch.where(split, rows * pieces, (rows + per_chunk - 1) // per_chunk)
    slots_per_tensor = rows * pieces
    slot_base = torch.cumsum(slots_per_tensor, 0) - slots_per_tensor

    owner = torch.repeat_interleave(torch.arange(len(rows_meta)), n_per_tensor)
    j = torch.arange(owner.numel()) - (torch.cumsum(n_per_tensor, 0) - n_per_tensor)[owner]
    is_split, length, k = split[owner], row_len[owner], pieces[owner]
    # rows chunk j: rows [j * per_chunk, ...); split chunk j: piece j % k of row j // k
    row0 = j * per_chunk[owner]
    unit_row = torch.where(is_split, j // k, row0)
    piece = torch.where(is_split, j % k, 0)
    offset = unit_row * length + piece * chunk
    n = torch.where(is_split, torch.clamp(length - piece * chunk, max=chunk),
                    torch.minimum(per_chunk[owner], rows[owner] - row0) * length)
    w_chunk = w_addr[owner] + offset * elsize[owner]
    g_chunk = g_addr[owner] + offset * elsize[owner]
    aligned = (w_chunk % VECTOR_ALIGN_BYTES == 0) & (g_chunk % VECTOR_ALIGN_BYTES == 0)
    packed = (n | (code[owner] << CODE_SHIFT) | (is_split.long() << SPLIT_SHIFT) | (aligned.long() << ALIGNED_SHIFT)
              | (torch.where(is_split, n, length) << ROW_SHIFT))  # launch 1 sees a piece as one row
    base = slot_base[owner]
    slot = base + torch.where(is_split, j, row0)
    first = base + unit_row * k
    n_chunks = int(owner.numel())
    table = torch.stack([w_chunk, g_chunk, packed, slot, first, k])
    if not n_chunks:
        table = torch.zeros(TABLE_ROWS, 1, dtype=torch.int64)  # a never-read column keeps the pointer valid
    n_slots = max(int(slots_per_tensor.sum()), 1)
    sums = torch.empty(3, n_slots, dtype=torch.float64, device=device)
    return AGCPlan(
        device=device,
        table=table.to(device),
        n_chunks=n_chunks,
        w_sums=sums[0],
        g_sums=sums[1],
        coefs=sums[2],
        counts=torch.zeros(2 * max_grid(device, settings), dtype=torch.int32, device=device),
        settings=settings,
        n_units=int(rows.sum()),
        staged=staged,
    )
