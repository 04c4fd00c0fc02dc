"""AGC in plain PyTorch (the CPU, and devices Triton can't serve): grouped, no per-parameter chain.

timm runs ~7 tensor ops per parameter (two norms, clamp, mul, div, mul, where, copy) and writes
every gradient.  Here, per dtype:

* unit norms: every 0-/1-D tensor in one ``torch._foreach_norm``; small tensors of 2-D and up
  (<= ``SMALL`` elements) as ``[rows, L]`` matrices concatenated per row length L, one
  ``vector_norm(dim=1)`` per distinct L; a large tensor gets one ``vector_norm`` over its
  non-leading dims, whose cost is its bytes (any layout: channels_last, transposed), or for
  bf16/fp16 one per 1 M elements of whole rows upcast in a reused fp32 buffer;
* one batch of ops over all units for ``max_norm``, the decision and the coefficients;
* the rewrite touches only tensors with a clipping unit (on the CPU: which ones is read on the
  host, not a device sync), with one ``torch._foreach_mul_`` by per-row multipliers (1.0 on
  rows that don't clip: ``x * 1.0`` is bitwise ``x``).  Other devices multiply every tensor,
  without reading anything on the host.

Accuracy: fp32 accumulation (fp64 for fp64 tensors); units longer than ``LONG`` elements are
reduced in rows of ``LONG_ROW`` and combined in float64, as ``vector_norm`` over one long
vector loses ~1e-3 relative (DESIGN.md).  Norms, decisions and coefficients are then computed in
fp32 (fp64), like the Triton path, so both backends take the same decisions (ties within ~1e-6
relative aside).  The rescale multiplies in fp32 (fp64), except bf16 gradients: their
coefficient is rounded to bf16 first, as timm does (the mixed-dtype in-place multiply is 4-6x
slower on the CPU), so clipped bf16 values are within ~1.5 bf16 ulp of the float64 result
instead of ~0.5 on the Triton path.
"""
from __future__ import annotations

import torch

from ._agc_units import rows_contiguous, units_of

SMALL = 1 << 16  # tensors up to this many elements are batched by row length
LONG = 1 << 16  # units longer than this are reduced in rows of LONG_ROW, combined in float64
LONG_ROW = 4096
UPCAST = 1 << 20  # elements of half-precision rows upcast at a time (4 MiB of fp32; 64 K: 2x slower, call overhead)


def agc(work, weights: list, grads: list, clip_factor: float, eps: float, p: float, kind: int, *,
        count: bool = False):
    """Clip ``grads`` unit-wise in place; with ``count``, return ``[clipped, non-finite]`` unit counts."""
    device = work.device
    counts = torch.zeros(2, dtype=torch.int32, device=device)
    by_dtype: dict = {}
    for w, g in zip(weights, grads):
        if g.numel():
            pair = by_dtype.setdefault(g.dtype, ([], []))
            pair[0].append(w)
            pair[1].append(g)
    for ws, gs in by_dtype.values():
        clipped, nonfinite = _clip_group(ws, gs, clip_factor, eps, p, kind, device)
        if count:
            counts += torch.stack([clipped, nonfinite]).to(torch.int32)
    return counts if count else None


def _clip_group(ws: list, gs: list, clip_factor, eps, p, kind, device):
    acc = torch.float64 if gs[0].dtype == torch.float64 else torch.float32
    rows = [units_of(g)[0] for g in gs]
    w_norm = _unit_norms(ws, p, acc)
    g_norm = _unit_norms(gs, p, acc)
    # timm's arithmetic, in acc: clamp and min propagate NaN as torch.clamp does
    max_norm = w_norm.clamp(min=eps) * clip_factor
    clips = torch.logical_not(g_norm < max_norm)
    multiplier = torch.where(clips, max_norm / g_norm.clamp(min=1e-6), 1.0)
    shapes = [(r,) + (1,) * (g.dim() - 1) if g.dim() else () for r, g in zip(rows, gs)]
    if gs[0].dtype == torch.bfloat16:
        # bf16 x fp32 in place takes torch's slow mixed-dtype path (4-6x slower on the CPU); a bf16
        # multiplier is timm's arithmetic (coefficient rounded to bf16: <= 2**-9 relative more)
        multiplier = multiplier.to(torch.bfloat16)
    per_tensor = multiplier.split(rows)
    if device.type == "cpu":
        owner = torch.repeat_interleave(torch.arange(len(gs)), torch.tensor(rows))
        touched = torch.zeros(len(gs), dtype=torch.bool).index_fill_(0, owner[clips], True).tolist()
        picked = [i for i, t in enumerate(touched) if t]
    else:
        picked = range(len(gs))  # no host read: multiplying by 1.0 leaves the others' values as they are
    if picked:
        torch._foreach_mul_([gs[i] for i in picked], [per_tensor[i].view(shapes[i]) for i in picked])
    nonfinite = torch.logical_not(torch.isfinite(g_norm))
    return clips.sum(), nonfinite.sum()


def _unit_norms(tensors: list, p: float, acc: torch.dtype) -> torch.Tensor:
    """The p-norm of every unit of ``tensors`` (non-empty, one dtype), in order, as ``acc``."""
    out: list = [None] * len(tensors)
    vectors, by_len = [], {}
    buffer: list = [None]  # one reused fp32 buffer for half-precision tensors
    for i, t in enumerate(tensors):
        rows, row_len = units_of(t)
        if row_len > LONG:
            out[i] = _long_units(t, rows, row_len, p, acc)
        elif t.dim() < 2:
            vectors.append(i)
        elif t.numel() <= SMALL:
            by_len.setdefault(row_len, []).append(i)
        elif t.dtype == acc:
            out[i] = torch.linalg.vector_norm(t, p, dim=tuple(range(1, t.dim())))
        else:
            out[i] = _upcast_row_norms(_rows_view(t, rows, row_len), p, acc, buffer)
    if vectors:
        norms = torch._foreach_norm([tensors[i] for i in vectors], p, dtype=acc)
        for i, n in zip(vectors, norms):
            out[i] = n.reshape(1)
    for row_len, members in by_len.items():
        matrix = torch.cat([tensors[i].reshape(-1, row_len) for i in members])
        norms = torch.linalg.vector_norm(matrix, p, dim=1, dtype=acc)
        for i, n in zip(members, norms.split([units_of(tensors[i])[0] for i in members])):
            out[i] = n
    return torch.cat(out)


def _upcast_row_norms(rows_2d: torch.Tensor, p: float, acc: torch.dtype, buffer: list) -> torch.Tensor:
    """Row norms of a half-precision ``[rows, L]`` matrix through a reused fp32 buffer of whole rows.

    ``vector_norm(x, dtype=float32)`` of a bf16 tensor first materialises an fp32 copy of all of
    it (5x the time of the read on this 2-core CPU); UPCAST elements at a time reuse one buffer.
    """
    if buffer[0] is None:
        buffer[0] = torch.empty(UPCAST, dtype=acc, device=rows_2d.device)
    per_piece = max(1, UPCAST // rows_2d.shape[1])
    norms = []
    for piece in rows_2d.split(per_piece):
        upcast = buffer[0][: piece.numel()].view(piece.shape).copy_(piece)
        norms.append(torch.linalg.vector_norm(upcast, p, dim=1))
    return torch.cat(norms)


def _rows_view(t: torch.Tensor, rows: int, row_len: int) -> torch.Tensor:
    """``t`` as ``[rows, row_len]``: a view when each row is a contiguous span (channels_last
    too: the non-leading dims are put in memory order), else a copy."""
    if t.dim() > 2 and not t.is_contiguous() and rows_contiguous(t):
        inner = sorted(range(1, t.dim()), key=t.stride, reverse=True)
        t = t.permute(0, *inner)
    return t.reshape(rows, row_len)


def _long_units(t: torch.Tensor, rows: int, row_len: int, p: float, acc: torch.dtype) -> torch.Tensor:
    """Norms of units longer than LONG: rows of LONG_ROW (and a tail) combined in float64."""
    units = _rows_view(t, rows, row_len)
    body = row_len // LONG_ROW * LONG_ROW
    parts = torch.linalg.vector_norm(units[:, :body].reshape(rows, -1, LONG_ROW), p, dim=2, dtype=acc).double()
    if body < row_len:
        tail = torch.linalg.vector_norm(units[:, body:], p, dim=1, dtype=acc).double()
        parts = torch.cat([parts, tail.unsqueeze(1)], dim=1)
    return torch.linalg.vector_norm(parts, p, dim=1).to(acc)  # the p-norm of the pieces' norms
