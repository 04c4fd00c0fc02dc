"""The plain-PyTorch path (CPU, and any device Triton can't serve): accurate, and steady on a busy CPU.

Same semantics as the Triton path.  Two things torch's own clip_grad_norm_ gets wrong on the CPU
are fixed here:

* accuracy: ``vector_norm`` of one long fp32 tensor accumulates without pairwise summation
  (2e-3 off for 33.6 M elements, 1.3 % for 124 M) and half-type norms come back rounded to
  bf16/fp16 (~3e-3 off).  Here tensors are reduced as rows of ``ROW`` elements (one
  ``vector_norm(..., dim=1)`` over a 2-D view), bf16/fp16 through a reused fp32 block, and the
  fp32 row norms are combined in float64: relative error 3e-9 (fp32), 3e-7 (bf16).
* cost, and robustness when another process shares the cores: the work is cut into items of
  ``ITEM`` elements that single-threaded workers take in turn (``_workers.py``), so no op waits
  at an OpenMP barrier for a descheduled thread; small tensors are concatenated (one
  ``torch.cat``, ~0.3 us per tensor, instead of one op per tensor: ``_foreach_norm`` costs
  ~1.3 us per tensor); the scaling pass is skipped when coef >= 1 (reading a CPU scalar is not
  a device sync).  On other devices the items run in order and the clamped coefficient is
  always applied, as torch does, so nothing synchronizes.
* with the native helper (``fastclip.native``; off with FASTCLIP_NATIVE=off) the CPU norms of
  order 1, 2 and inf and the scaling are its C++ loops (``fastclip/csrc/cpu_math.cpp``): one
  read of the memory in fp32 lanes, bf16/fp16 without an upcast copy, no torch op or output
  tensor per item, and the result of the scaling bitwise torch's ``mul_``.  Built against
  torch's libgomp (Linux), it takes each dtype group in one call and runs it in torch's own
  OpenMP team, pieces claimed one at a time: the threads torch's last op left spinning do the
  work instead of competing with ours (one 33.6 M-element bf16 clip, quiet: 8.2 ms, torch
  10.9 ms; through the workers below it was 15-19 ms).  Where the calling thread alone measures
  faster (a core taken by another process), it runs there (fastclip/csrc/team_choice.cpp).
  Without OpenMP, a dtype group of up to ``NATIVE_INLINE`` elements is one call on the calling
  thread and larger ones are items for the workers, the helper called per item with the GIL
  released.  Anything the helper can't
  read in place (a strided view) it declines, and the torch ops below serve it.

Numbers behind the layout (2-core AMD EPYC VM, torch 2.13 CPU; one 33.6 M-element tensor, median
ms, quiet / one core kept busy by another process):

* the previous version (a BF16 -> fp32 copy and a ``dot`` per 256 K-element chunk, each an
  OpenMP region): bf16 8.9 / 23-324 ms, fp32 20 / 68 ms; one parallel region per op costs ~5 ms
  when a core is busy (2 000 tiny bf16 tensors: 3 regions, 4.7 ms quiet, 19 ms busy).
* rows of 4096 in one ``vector_norm(dim=1)``: fp32 5.6 ms with 2 OpenMP threads (24 ms busy),
  10.8 ms with one thread (10.5 ms busy); error 3e-9 (rows of 32 K: 6e-8, of 256 K: 1.5e-6;
  whole-tensor ``vector_norm``: 2.1e-3).  Column-wise reductions (``dim=0``) were 15-30x slower.
* bf16: a fresh ``x.float()`` of the whole tensor costs 75 ms (page faults on new memory), so
  each worker upcasts through its own fp32 block, allocated once; a 4 M-element block (16 MiB,
  out of the caches) was 3x slower than 1 M.
"""
from __future__ import annotations

import functools
import math
import threading

import torch

from . import _workers
from ._layout import flat_view

ROW = 4096  # elements per row reduced by one vector_norm lane: fp32 error ~3e-9, and fast (see above)
ITEM = 1 << 20  # elements per work item: ~0.3 ms of one core, >> the ~10 us of Python per item
HALF_BLOCK = 1 << 18  # bf16/fp16 elements upcast at a time: 1 MiB of fp32, in a core's L2 cache
SMALL = 1 << 16  # tensors up to this many elements are concatenated before reducing
SMALL_GROUP = 1 << 18  # elements of small tensors per item (2 000 x 512 elements: 4 items)
#: fp32/fp64 tensors from this size on are reduced / scaled by one torch op with torch's own
#: threads: one OpenMP region per tensor is cheap against the work (a 33.6 M-element fp32 norm:
#: 6.3 ms quiet, 14.5 ms with a core busy, against 8.7-11 ms / 18.7 ms through the workers)
OWN_OP = 1 << 23
#: orders the native helper serves (others: std::pow per element, slower than torch's rows)
NATIVE_ORDERS = (2.0, 1.0, math.inf)
#: with the native helper, a dtype group of up to this many elements is reduced / scaled by one
#: C++ call on the calling thread: no items, no hand-off to the workers.  One thread reads
#: ~5 G bf16 / 3 G fp32 elements a second, so 2 M is <= ~0.7 ms; 2 000 x 512 elements, clip /
#: no clip, fp32: 3.5 / 2.7 ms inline against 9.0 / 5.8 ms through the items (bf16: 3.6 / 1.9
#: against 10.0 / 5.5; one core busy: 4.3 / 2.1 against 9.8 / 5.0)
NATIVE_INLINE = 1 << 21

_blocks = threading.local()  # {device: fp32 upcast block}: one per worker thread


def group_by_dtype(grads: list) -> dict:
    groups: dict[torch.dtype, list] = {}
    for g in grads:
        groups.setdefault(g.dtype, []).append(g)
    return groups


def _flat(t: torch.Tensor) -> torch.Tensor:
    """A 1-D view of ``t`` (any dense layout); truly strided views are copied (for the norm only)."""
    flat = flat_view(t)
    return flat if flat is not None else t.reshape(-1)


def _concatenated(small: list) -> list:
    """Small tensors as few flat tensors: one torch.cat if their trailing dims agree (all 1-D,
    or all the same shape), else one per trailing shape."""
    try:
        flats = [_flat(torch.cat(small))]
    except RuntimeError:
        groups: dict = {}
        for g in small:
            groups.setdefault(g.shape[1:] if g.dim() else "0-d", []).append(g)
        # 0-d tensors can't be concatenated, only stacked
        flats = [_flat(torch.stack(same) if key == "0-d" else torch.cat(same)) for key, same in groups.items()]
    return [f for f in flats if f.numel()]


def _row_norms(flat: torch.Tensor, p: float) -> torch.Tensor:
    """p-norms of the rows of ROW elements of a 1-D tensor, and of its sub-row tail."""
    n = flat.numel()
    whole = n // ROW * ROW
    parts = []
    if whole:
        parts.append(torch.linalg.vector_norm(flat[:whole].view(-1, ROW), p, dim=1))
    if whole < n:
        parts.append(torch.linalg.vector_norm(flat[whole:], p).reshape(1))
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _upcast_block(device: torch.device) -> torch.Tensor:
    cache = getattr(_blocks, "by_device", None)
    if cache is None:
        cache = _blocks.by_device = {}
    block = cache.get(device)
    if block is None or block.numel() != HALF_BLOCK:
        block = cache[device] = torch.empty(HALF_BLOCK, dtype=torch.float32, device=device)
    return block


def _upcast_row_norms(flat: torch.Tensor, p: float) -> torch.Tensor:
    """Norms of the pieces of a bf16/fp16 tensor, upcast one by one into this thread's fp32 block:
    for p = 2 one BLAS ``dot`` per piece (the block is in cache: 1.9 ms per 16.8 M elements on one
    core, against 3.6 ms for rows of 4096; error ~2e-7), else ``_row_norms``."""
    block = _upcast_block(flat.device)
    pieces = (block[:piece.numel()].copy_(piece) for piece in flat.split(HALF_BLOCK))
    if p == 2.0:
        return torch.stack([torch.dot(b, b) for b in pieces]).sqrt_()
    return torch.cat([_row_norms(b, p) for b in pieces])


def _concatenated_row_norms(small: list, reduce, p: float) -> torch.Tensor:
    return torch.cat([reduce(flat, p) for flat in _concatenated(small)])


def _split_big(by_dtype: dict) -> tuple[list, dict]:
    """(fp32/fp64 tensors of OWN_OP elements or more, {dtype: the other tensors})."""
    big, rest = [], {}
    for dtype, tensors in by_dtype.items():
        for g in tensors:
            if _full_precision(dtype) and g.numel() >= OWN_OP and flat_view(g) is not None:
                big.append(g)
            else:
                rest.setdefault(dtype, []).append(g)
    return big, rest


def _items(by_dtype: dict, on_slice, on_small) -> tuple[list, int]:
    """Work items over every tensor: ``on_slice(dtype, view)`` per slice of up to ITEM elements of a
    large tensor (the whole tensor if it is truly strided), ``on_small(dtype, tensors)`` per group of
    small tensors of one dtype.  Returns (items, total elements)."""
    items, total = [], 0
    for dtype, tensors in by_dtype.items():
        small = []
        for g in tensors:
            n = g.numel()
            total += n
            if n == 0:
                continue
            if n <= SMALL:
                small.append(g)
                continue
            flat = flat_view(g)
            if flat is None:
                items.append(functools.partial(on_slice, dtype, g))
            else:
                items += [functools.partial(on_slice, dtype, flat[s:s + ITEM]) for s in range(0, n, ITEM)]
        items += [functools.partial(on_small, dtype, group) for group in _groups(small)]
    return items, total


def _groups(small: list) -> list:
    """Consecutive runs of small tensors of about SMALL_GROUP elements each (one item each)."""
    groups, group, size = [], [], 0
    for g in small:
        group.append(g)
        size += g.numel()
        if size >= SMALL_GROUP:
            groups.append(group)
            group, size = [], 0
    if group:
        groups.append(group)
    return groups


def _run(items: list, total: int, device: torch.device) -> list:
    return _workers.run(items, inline=device.type != "cpu" or total < _workers.INLINE_NUMEL)


def _full_precision(dtype: torch.dtype) -> bool:
    return dtype in (torch.float32, torch.float64)


def _native_math(p: float = 2.0):
    """The native helper (``fastclip.native``: power_sum and scale_ of fastclip/csrc/cpu_math.cpp)
    when it is built and not switched off (FASTCLIP_NATIVE=off) and serves the order ``p``, else None."""
    if p not in NATIVE_ORDERS:
        return None
    from . import native  # here, not at import: ``python -m fastclip.native`` must find it unimported

    return native.module()


def _native_limit(helper) -> int:
    """Elements a dtype group may have for one helper call: any number when the helper runs
    large calls in torch's OpenMP team, else NATIVE_INLINE (the calling thread alone)."""
    return -1 if helper.openmp() else NATIVE_INLINE


def _native_groups(helper, fn, by_dtype: dict, arg: float) -> tuple[list, dict]:
    """``fn(tensors, arg, _native_limit(helper))`` (the helper's power_sum or scale_) on each dtype
    group; returns (its results, {dtype: tensors} of the groups it declined: a tensor it can't
    read in place, or more elements than the limit, which the workers then share)."""
    limit = _native_limit(helper)
    done, rest = [], {}
    for dtype, tensors in by_dtype.items():
        result = fn(tensors, arg, limit)
        if result is None or result is False:
            rest[dtype] = tensors
        else:
            done.append(result)
    return done, rest


def _norms(results: list, p: float) -> list:
    """Items' results as 1-D tensors of norms: row norms as they are, and the helper's power sums
    (floats) combined in float64 into one norm (NaN propagates through the sum and the max)."""
    norms = [r for r in results if isinstance(r, torch.Tensor)]
    sums = [r for r in results if not isinstance(r, torch.Tensor)]
    if sums:
        s = torch.tensor(sums, dtype=torch.float64)
        norms.append((s.amax() if p == math.inf else s.sum().pow(1.0 / p)).reshape(1))
    return norms


def total_norm(by_dtype: dict, p: float, kind: int, out_dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """p-norm of all tensors in ``by_dtype`` ({dtype: [tensors]}) seen as one vector, 0-d ``out_dtype``.

    ``kind`` (the Triton path's norm code) is accepted for a common signature; ``p`` decides here.
    """
    helper = _native_math(p) if device.type == "cpu" else None
    sums, by_dtype = _native_groups(helper, helper.power_sum, by_dtype, p) if helper is not None else ([], by_dtype)

    def reduce_slice(dtype, t):
        s = helper.power_sum([t], p) if helper is not None else None
        return s if s is not None else (_row_norms if _full_precision(dtype) else _upcast_row_norms)(_flat(t), p)

    def reduce_small(dtype, small):
        s = helper.power_sum(small, p) if helper is not None else None
        return s if s is not None else _concatenated_row_norms(
            small, _row_norms if _full_precision(dtype) else _upcast_row_norms, p)

    big, rest = _split_big(by_dtype) if device.type == "cpu" else ([], by_dtype)
    items, total = _items(rest, reduce_slice, reduce_small)
    pieces = _norms(sums + _run(items, total, device), p) + [_row_norms(flat_view(g), p) for g in big]
    if not pieces:
        return torch.zeros((), dtype=out_dtype, device=device)
    return torch.linalg.vector_norm(torch.cat(pieces).double(), p).to(out_dtype)


def clip_coef(max_norm, norm: torch.Tensor) -> torch.Tensor:
    """torch's clamp(max_norm / (norm + 1e-6), max=1), in the norm's dtype."""
    if isinstance(max_norm, torch.Tensor):
        max_norm = max_norm.to(norm.device, norm.dtype)
    return torch.clamp(max_norm / (norm + 1e-6), max=1.0)


def scale_(by_dtype: dict, coef: torch.Tensor) -> None:
    """Every tensor *= coef in place; skipped on the CPU when coef >= 1."""
    if coef.device.type != "cpu":
        for tensors in by_dtype.values():
            torch._foreach_mul_(tensors, coef)
        return
    c = coef.item()
    if c >= 1.0:  # NaN compares False: a NaN norm still scales, as in torch
        return
    helper = _native_math()
    if helper is not None:  # bitwise torch's mul_ by ``coef`` (see fastclip/csrc/cpu_math.cpp)
        _, by_dtype = _native_groups(helper, helper.scale_, by_dtype, c)

    # multiply by the fp32 tensor, not a Python float: a float becomes an fp16 scalar for fp16
    # grads (a subnormal, 3e-3 off, for a coefficient of 8e-6), the tensor keeps fp32 math
    def scale_slice(dtype, t):
        if helper is None or not helper.scale_([t], c):
            t.mul_(coef)

    def scale_small(dtype, tensors):
        if helper is None or not helper.scale_(tensors, c):
            torch._foreach_mul_(tensors, coef)

    big, rest = _split_big(by_dtype)
    items, total = _items(rest, scale_slice, scale_small)
    _run(items, total, coef.device)
    for g in big:
        g.mul_(coef)


def clamp_(by_dtype: dict, clip_value: float) -> None:
    """Clamp every tensor to [-clip_value, clip_value] in place."""
    def clamp_small(dtype, tensors):
        torch._foreach_clamp_min_(tensors, -clip_value)
        torch._foreach_clamp_max_(tensors, clip_value)

    devices = {t.device for tensors in by_dtype.values() for t in tensors}
    if devices != {torch.device("cpu")}:
        for tensors in by_dtype.values():
            clamp_small(None, tensors)
        return
    big, rest = _split_big(by_dtype)
    items, total = _items(rest, lambda dtype, t: t.clamp_(-clip_value, clip_value), clamp_small)
    _run(items, total, torch.device("cpu"))
    for g in big:
        g.clamp_(-clip_value, clip_value)
