r"""Unit-wise adaptive gradient clipping (AGC) in two launches, over a *unit table*.

A unit is one dim-0 slice of a weight (the whole tensor for 0-/1-D ones).  For each unit u with
weight slice :math:`w_u` and gradient slice :math:`g_u` (timm's rule, ``timm/utils/agc.py``):

.. math::
    m_u = \text{clip\_factor} \cdot \max(\|w_u\|_p, \text{eps}), \qquad
    g_u \leftarrow g_u \cdot \frac{m_u}{\max(\|g_u\|_p, 10^{-6})}
    \ \text{ unless } \|g_u\|_p < m_u \ \text{(then } g_u \text{ is not written)}

Launch 1 (``_agc_sums_kernel``) reads every weight and gradient byte once and writes the float64
power sums :math:`\sum |x|^p` (max :math:`|x|` for p = inf) of each *slot*; launch 2
(``_agc_clip_kernel``) turns slots into each unit's coefficient and rewrites only the units that
clip.  Bytes moved: launch 1 reads ``N_w + N_g`` and writes 16 per slot; launch 2 reads 16 per
slot (plus 8 per row of a chunk that clips) and, for the units that clip only, reads and writes
their gradient bytes.

The table (``fastclip._agc_plan``), one column per chunk of at most ``CHUNK`` elements, never
lets either extreme of unit size serialise:

* *rows chunks* (row length L <= CHUNK): whole consecutive rows of one tensor, up to CHUNK
  elements (16 384 rows of 4, or one row of 50 000).  Each block is reduced per row by a
  segmented scan (rows of 4 cost no more than rows of 4 000), a row that continues into the next
  block is carried, and each row's sum is stored once, by the lane that ends it: one slot per
  unit, written by exactly one program.
* *split chunks* (L > CHUNK): a long unit (a 1-D parameter of millions of elements, a row of
  10^6) is cut into CHUNK-element pieces spread over all programs; each piece writes its own
  slot, and launch 2 sums the unit's slots in one fixed order (every program that holds a piece
  of the unit computes the same coefficient bit for bit; a program keeps the coefficient of the
  last unit it saw, so a unit of K pieces costs at most ``min(K, G) * K`` slot reads).

Deterministic: no atomics at all, fixed reduction orders, static chunk-to-program assignment.
Weights and gradients must have their dim-0 slices contiguous (``fastclip._agc_plan`` stages
the others through contiguous copies); channels_last and channels_last_3d weights already do.
"""
import triton
import triton.language as tl

from .chunk_ops import P1, P2, PINF, f64_from_bits, nan_max, nan_max_reduce
from .launch_settings import f64_bits, persistent_grid

#: Rows of the unit table (int64 [TABLE_ROWS, n_chunks]).
TABLE_ROWS = 6  # weight address, gradient address, meta, first slot, unit's first slot, unit's slot count
#: Bit layout of the meta row: n | code << 24 | split << 28 | aligned << 29 | row_len << 32.
N_BITS, CODE_SHIFT, SPLIT_SHIFT, ALIGNED_SHIFT, ROW_SHIFT = 24, 24, 28, 29, 32
#: A rows chunk finds each element's row with fp32 arithmetic, exact while index < 2**21.
MAX_CHUNK = 1 << 20
#: Rows shorter than a block are reduced by a segmented scan over blocks this many times smaller
#: (a scan keeps three values per element live: full blocks would cost ~2x the registers).
SCAN_SHRINK = 4


def scan_block(settings) -> int:
    """Elements per scan iteration of launch 1 (fp64 chunks take half), units per iteration of
    launch 2's coefficient passes."""
    return max(settings.block // SCAN_SHRINK, 16)

_UNTOUCHED = tl.constexpr(-1.0)  # coefficient scratch marker: this row does not clip


@triton.jit
def _unpack(table_ptr, n_chunks, chunk):
    """Weight and gradient addresses, element count, dtype code, flags, row length, first slot."""
    w_addr = tl.load(table_ptr + chunk)
    g_addr = tl.load(table_ptr + n_chunks + chunk)
    meta = tl.load(table_ptr + 2 * n_chunks + chunk)
    slot = tl.load(table_ptr + 3 * n_chunks + chunk)
    n = (meta & 0xFFFFFF).to(tl.int32)
    code = ((meta >> 24) & 15).to(tl.int32)
    split = ((meta >> 28) & 1) != 0
    aligned = ((meta >> 29) & 1) != 0
    row_len = (meta >> 32).to(tl.int32)
    return w_addr, g_addr, n, code, split, aligned, row_len, slot


@triton.jit
def _power(x, p, KIND: tl.constexpr):
    """|x|^p lane by lane (|x| for p = 1 and inf); the terms chunk_ops sums for a norm."""
    if KIND == P2:
        return x * x
    elif KIND == P1 or KIND == PINF:
        return tl.abs(x)
    else:
        ax = tl.abs(x)
        return tl.where(ax == 0, 0.0, tl.exp2(p.to(ax.dtype) * tl.log2(ax)))


@triton.jit
def _segmented_add(w1, g1, r1, w2, g2, r2):
    # scan operator over (weight term, grad term, row): restarts where the row changes.  Rows are
    # non-decreasing along a block, which is what makes this operator associative.
    same = r1 == r2
    return w2 + tl.where(same, w1, 0.0), g2 + tl.where(same, g1, 0.0), r2


@triton.jit
def _segmented_max(w1, g1, r1, w2, g2, r2):
    same = r1 == r2
    return tl.where(same, nan_max(w1, w2), w2), tl.where(same, nan_max(g1, g2), g2), r2


@triton.jit
def _row_of(idx, row_len):
    """Row of each element index: floor((idx + 0.5) / L) in fp32 (exact for idx < 2**21: the
    quotient is at least 0.5 / L away from an integer, the rounding error below that)."""
    inv = tl.div_rn(1.0, row_len.to(tl.float32))
    return ((idx.to(tl.float32) + 0.5) * inv).to(tl.int32)


@triton.jit
def _short_rows_block(xw, xg, idx, n, row_len, carry_w, carry_g, carry_row, w_out_ptr, g_out_ptr,
                      p, KIND: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """Per-row sums of one block of rows shorter than the block: a segmented scan, then the lane
    holding each row's last element stores the row's total.  Returns the carry into the next block."""
    row = _row_of(idx, row_len)
    pw = _power(xw.to(ACC), p, KIND)
    pg = _power(xg.to(ACC), p, KIND)
    continued = row == carry_row  # the row the previous block ended inside
    if KIND == PINF:
        sw, sg, _ = tl.associative_scan((pw, pg, row), 0, _segmented_max)
        sw = tl.where(continued, nan_max(sw, carry_w), sw)
        sg = tl.where(continued, nan_max(sg, carry_g), sg)
    else:
        sw, sg, _ = tl.associative_scan((pw, pg, row), 0, _segmented_add)
        sw += tl.where(continued, carry_w, 0.0)
        sg += tl.where(continued, carry_g, 0.0)
    ends = (idx < n) & (idx == (row + 1) * row_len - 1)
    tl.store(w_out_ptr + row, sw.to(tl.float64), mask=ends)
    tl.store(g_out_ptr + row, sg.to(tl.float64), mask=ends)
    last = tl.arange(0, BLOCK) == BLOCK - 1
    return (tl.sum(tl.where(last, sw, 0.0), axis=0), tl.sum(tl.where(last, sg, 0.0), axis=0),
            tl.sum(tl.where(last, row, 0), axis=0))


@triton.jit
def _long_rows_block(xw, xg, start, row_len, carry_w, carry_g, w_out_ptr, g_out_ptr,
                     p, KIND: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """One block of rows at least a block long: it touches at most two rows, split at a lane
    known from scalars, so two masked sums replace the scan.  Returns the carry."""
    row = start // row_len
    boundary = (row + 1) * row_len - start  # lanes below it belong to `row`
    head = tl.arange(0, BLOCK) < boundary
    pw = _power(xw.to(ACC), p, KIND)
    pg = _power(xg.to(ACC), p, KIND)
    if KIND == PINF:
        head_w = nan_max(carry_w, nan_max_reduce(tl.where(head, pw, 0.0)))
        head_g = nan_max(carry_g, nan_max_reduce(tl.where(head, pg, 0.0)))
        tail_w = nan_max_reduce(tl.where(head, 0.0, pw))
        tail_g = nan_max_reduce(tl.where(head, 0.0, pg))
    else:
        head_w = carry_w + tl.sum(tl.where(head, pw, 0.0), axis=0)
        head_g = carry_g + tl.sum(tl.where(head, pg, 0.0), axis=0)
        tail_w = tl.sum(tl.where(head, 0.0, pw), axis=0)
        tail_g = tl.sum(tl.where(head, 0.0, pg), axis=0)
    ends = boundary <= BLOCK  # `row` ends in this block: store it, carry the next row's head
    if ends:
        tl.store(w_out_ptr + row, head_w.to(tl.float64))
        tl.store(g_out_ptr + row, head_g.to(tl.float64))
    return tl.where(ends, tail_w, head_w), tl.where(ends, tail_g, head_g)


@triton.jit
def _long_rows_sums(w_ptr, g_ptr, n, row_len, aligned, w_out_ptr, g_out_ptr, p,
                    KIND: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    carry_w = tl.zeros([], ACC)
    carry_g = tl.zeros([], ACC)
    n_whole = tl.where(aligned, n // BLOCK * BLOCK, 0)
    for start in tl.range(0, n_whole, BLOCK):
        xw = tl.load(tl.multiple_of(w_ptr + start, 16) + offs)
        xg = tl.load(tl.multiple_of(g_ptr + start, 16) + offs)
        carry_w, carry_g = _long_rows_block(xw, xg, start, row_len, carry_w, carry_g, w_out_ptr, g_out_ptr,
                                            p, KIND, ACC, BLOCK)
    for start in tl.range(n_whole, n, BLOCK):
        mask = start + offs < n
        xw = tl.load(w_ptr + start + offs, mask=mask, other=0.0)
        xg = tl.load(g_ptr + start + offs, mask=mask, other=0.0)
        carry_w, carry_g = _long_rows_block(xw, xg, start, row_len, carry_w, carry_g, w_out_ptr, g_out_ptr,
                                            p, KIND, ACC, BLOCK)


@triton.jit
def _short_rows_sums(w_ptr, g_ptr, n, row_len, aligned, w_out_ptr, g_out_ptr, p,
                     KIND: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    carry_w = tl.zeros([], ACC)
    carry_g = tl.zeros([], ACC)
    carry_row = -1
    n_whole = tl.where(aligned, n // BLOCK * BLOCK, 0)
    for start in tl.range(0, n_whole, BLOCK):
        xw = tl.load(tl.multiple_of(w_ptr + start, 16) + offs)
        xg = tl.load(tl.multiple_of(g_ptr + start, 16) + offs)
        carry_w, carry_g, carry_row = _short_rows_block(xw, xg, start + offs, n, row_len, carry_w, carry_g,
                                                        carry_row, w_out_ptr, g_out_ptr, p, KIND, ACC, BLOCK)
    for start in tl.range(n_whole, n, BLOCK):
        mask = start + offs < n
        xw = tl.load(w_ptr + start + offs, mask=mask, other=0.0)
        xg = tl.load(g_ptr + start + offs, mask=mask, other=0.0)
        carry_w, carry_g, carry_row = _short_rows_block(xw, xg, start + offs, n, row_len, carry_w, carry_g,
                                                        carry_row, w_out_ptr, g_out_ptr, p, KIND, ACC, BLOCK)


@triton.jit
def _rows_sums(w_ptr, g_ptr, n, row_len, aligned, w_out_ptr, g_out_ptr, p,
               KIND: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr, SCAN_BLOCK: tl.constexpr):
    """Power sums of every row of a rows chunk (n = rows * row_len elements), one slot per row.

    Rows of at least BLOCK elements take blocks of BLOCK with two masked sums each; shorter rows
    take blocks of SCAN_BLOCK with a segmented scan (smaller: a scan keeps three values per
    element live).  Aligned chunks run their whole blocks with unmasked, alignment-hinted
    (128-bit) loads, then a masked tail.  Reads n elements of each of w and g once; writes 8
    bytes per row to each output.
    """
    if row_len >= BLOCK:
        _long_rows_sums(w_ptr, g_ptr, n, row_len, aligned, w_out_ptr, g_out_ptr, p, KIND, ACC, BLOCK)
    else:
        _short_rows_sums(w_ptr, g_ptr, n, row_len, aligned, w_out_ptr, g_out_ptr, p, KIND, ACC, SCAN_BLOCK)


@triton.jit(do_not_specialize=["p_bits"])
def _agc_sums_kernel(
    table_ptr,  # int64 [TABLE_ROWS, n_chunks]: the unit table (module docstring)
    n_chunks,  # number of chunks
    n_programs,  # grid size (passed in: tl.num_programs is not a scalar in the interpreter)
    w_sums_ptr,  # float64 [n_slots]: power sums of the weights, one per slot (written)
    g_sums_ptr,  # float64 [n_slots]: power sums of the gradients (written)
    p_bits,  # the norm order as float64 bits, used if KIND is general
    KIND: tl.constexpr,  # P2, P1, PINF or PGENERAL (chunk_ops)
    BLOCK: tl.constexpr,  # elements per loop iteration
    SCAN_BLOCK: tl.constexpr,  # elements per iteration over rows shorter than BLOCK (fp64: half)
):
    pid = tl.program_id(0)
    p = f64_from_bits(p_bits)
    for chunk in tl.range(pid, n_chunks, n_programs):
        w_addr, g_addr, n, code, split, aligned, row_len, slot = _unpack(table_ptr, n_chunks, chunk)
        w_out = w_sums_ptr + slot
        g_out = g_sums_ptr + slot
        # runtime dtype branch (weight and gradient share a dtype): one launch for any mix
        # a split chunk (one piece of a long unit) is a rows chunk of one row: the piece
        if code == 0:
            _rows_sums(w_addr.to(tl.pointer_type(tl.float32)), g_addr.to(tl.pointer_type(tl.float32)), n, row_len,
                       aligned, w_out, g_out, p, KIND, tl.float32, BLOCK, SCAN_BLOCK)
        elif code == 1:
            _rows_sums(w_addr.to(tl.pointer_type(tl.float16)), g_addr.to(tl.pointer_type(tl.float16)), n, row_len,
                       aligned, w_out, g_out, p, KIND, tl.float32, BLOCK, SCAN_BLOCK)
        elif code == 2:
            _rows_sums(w_addr.to(tl.pointer_type(tl.bfloat16)), g_addr.to(tl.pointer_type(tl.bfloat16)), n, row_len,
                       aligned, w_out, g_out, p, KIND, tl.float32, BLOCK, SCAN_BLOCK)
        else:
            _rows_sums(w_addr.to(tl.pointer_type(tl.float64)), g_addr.to(tl.pointer_type(tl.float64)), n, row_len,
                       aligned, w_out, g_out, p, KIND, tl.float64, BLOCK, SCAN_BLOCK // 2)


# ----------------------------------------------------------------------------------------------
# launch 2


@triton.jit
def _root(power_sum, inv_p, KIND: tl.constexpr):
    """The norm from a float64 power sum (identity for p = 1 and inf)."""
    if KIND == P2:
        return tl.sqrt(power_sum)
    elif KIND == P1 or KIND == PINF:
        return power_sum
    else:
        return tl.exp2(tl.log2(power_sum) * inv_p)


@triton.jit
def _unit_coef(w_sum, g_sum, clip_factor, eps, inv_p, KIND: tl.constexpr, NORM: tl.constexpr):
    """(clips, coefficient as fp64) of units from their float64 power sums, timm's arithmetic in ``NORM``.

    Norms are rounded to NORM (fp32 for 16/32-bit tensors, fp64 for fp64), then
    max_norm = max(||w||, eps) * clip_factor and coef = max_norm / max(||g||, 1e-6), as timm
    computes them on fp32 tensors.  A unit clips unless ||g|| < max_norm: NaN clips (scaled by
    NaN), as in timm's torch.where.
    """
    w_norm = _root(w_sum, inv_p, KIND).to(NORM)
    g_norm = _root(g_sum, inv_p, KIND).to(NORM)
    max_norm = nan_max(w_norm, eps.to(NORM)) * clip_factor.to(NORM)
    clips = (g_norm < max_norm) == 0
    denom = nan_max(g_norm, tl.full([], 1e-6, NORM))
    if NORM == tl.float64:
        coef = max_norm / denom  # IEEE-rounded already
    else:
        coef = tl.div_rn(max_norm, denom)  # fp32 `/` would be the approximate div.full
    return clips, coef.to(tl.float64)  # exact: one type whatever NORM, for the callers' branches


@triton.jit
def _row_coefs(n_rows, w_sums_ptr, g_sums_ptr, coef_ptr, clip_factor, eps, inv_p,
               KIND: tl.constexpr, NORM: tl.constexpr, UNIT_BLOCK: tl.constexpr):
    """Coefficients of the rows of a rows chunk, UNIT_BLOCK at a time: each row's coefficient or
    the 'untouched' marker goes to the scratch.  Returns (rows clipped, rows with non-finite ||g||).

    Reads 16 bytes per row, writes 8.
    """
    units = tl.arange(0, UNIT_BLOCK)
    n_clipped = 0
    n_nonfinite = 0
    for r0 in tl.range(0, n_rows, UNIT_BLOCK):
        rows = r0 + units
        valid = rows < n_rows
        w_sum = tl.load(w_sums_ptr + rows, mask=valid, other=0.0)
        g_sum = tl.load(g_sums_ptr + rows, mask=valid, other=0.0)
        clips, coef = _unit_coef(w_sum, g_sum, clip_factor, eps, inv_p, KIND, NORM)
        clips = clips & valid
        tl.store(coef_ptr + rows, tl.where(clips, coef, _UNTOUCHED), mask=valid)
        n_clipped += tl.sum(clips.to(tl.int32), axis=0)
        n_nonfinite += tl.sum((valid & ((g_sum != g_sum) | (g_sum == float("inf")))).to(tl.int32), axis=0)
    return n_clipped, n_nonfinite


@triton.jit
def _rewrite_rows(g_ptr, n, row_len, aligned, coef_ptr, NORM: tl.constexpr, BLOCK: tl.constexpr):
    """g *= coef[row] in place for the elements of clipping rows (coefficient in the scratch).

    A block wholly inside clipping rows of an aligned chunk takes 128-bit accesses, a mixed
    block masked ones; a block of untouched rows is not written at all.  Reads and writes the
    bytes of the clipping rows, plus an 8-byte scratch read per element (cached).
    """
    offs = tl.arange(0, BLOCK)
    for start in tl.range(0, n, BLOCK):
        idx = start + offs
        coef = tl.load(coef_ptr + _row_of(idx, row_len), mask=idx < n, other=_UNTOUCHED).to(NORM)
        touch = (idx < n) & (coef != _UNTOUCHED)  # a NaN coefficient is != the marker: it clips
        n_touch = tl.sum(touch.to(tl.int32), axis=0)
        if aligned & (n_touch == BLOCK):
            block_ptr = tl.multiple_of(g_ptr + start, 16)
            x = tl.load(block_ptr + offs)
            tl.store(block_ptr + offs, (x.to(NORM) * coef).to(x.dtype))
        elif n_touch > 0:
            x = tl.load(g_ptr + idx, mask=touch)
            tl.store(g_ptr + idx, (x.to(NORM) * coef).to(x.dtype), mask=touch)


@triton.jit
def _slots_total(sums_ptr, count, KIND: tl.constexpr, BLOCK: tl.constexpr):
    """Sum (max for p = inf) of ``count`` consecutive float64 slots, in one fixed order."""
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], tl.float64)
    for s in tl.range(0, count, BLOCK):
        x = tl.load(sums_ptr + s + offs, mask=s + offs < count, other=0.0)
        if KIND == PINF:
            acc = nan_max(acc, x)
        else:
            acc += x
    if KIND == PINF:
        return nan_max_reduce(acc)
    return tl.sum(acc, axis=0)


@triton.jit(do_not_specialize=["inv_p_bits", "clip_factor_bits", "eps_bits"])
def _agc_clip_kernel(
    table_ptr,  # int64 [TABLE_ROWS, n_chunks]: the same unit table as launch 1
    n_chunks,  # number of chunks
    n_programs,  # grid size
    w_sums_ptr,  # float64 [n_slots]: launch 1's weight power sums
    g_sums_ptr,  # float64 [n_slots]: launch 1's gradient power sums
    coef_ptr,  # float64 [n_slots]: scratch, each row's coefficient (rows chunks), program-private
    counts_ptr,  # int32 [2, grid]: per program, units clipped and units with a non-finite ||g||
    inv_p_bits,  # 1 / p as float64 bits, used if KIND is general
    clip_factor_bits,  # clip_factor as float64 bits
    eps_bits,  # eps as float64 bits
    KIND: tl.constexpr,  # P2, P1, PINF or PGENERAL (chunk_ops)
    BLOCK: tl.constexpr,  # elements per loop iteration
    UNIT_BLOCK: tl.constexpr,  # units (or slots) per loop iteration of the coefficient passes
):
    pid = tl.program_id(0)
    inv_p = f64_from_bits(inv_p_bits)
    clip_factor = f64_from_bits(clip_factor_bits)
    eps = f64_from_bits(eps_bits)
    n_clipped = 0
    n_nonfinite = 0
    # the coefficient of the last long unit seen: its next pieces (same program) reuse it
    unit = tl.full([], -1, tl.int64)
    unit_clips = 0
    unit_coef = tl.zeros([], tl.float64)
    for chunk in tl.range(pid, n_chunks, n_programs):
        w_addr, g_addr, n, code, split, aligned, row_len, slot = _unpack(table_ptr, n_chunks, chunk)
        coefs = coef_ptr + slot  # this chunk's rows (a split chunk: its piece, one row)
        if split:
            first = tl.load(table_ptr + 4 * n_chunks + chunk)
            if first != unit:
                count = tl.load(table_ptr + 5 * n_chunks + chunk)
                w_sum = _slots_total(w_sums_ptr + first, count, KIND, UNIT_BLOCK)
                g_sum = _slots_total(g_sums_ptr + first, count, KIND, UNIT_BLOCK)
                if code == 3:
                    clips, coef = _unit_coef(w_sum, g_sum, clip_factor, eps, inv_p, KIND, tl.float64)
                else:
                    clips, coef = _unit_coef(w_sum, g_sum, clip_factor, eps, inv_p, KIND, tl.float32)
                unit = first
                unit_clips = clips.to(tl.int32)
                unit_coef = coef
                # the unit's first piece counts it once
                finite = (g_sum == g_sum) & (g_sum != float("inf"))
                n_clipped += tl.where(slot == first, unit_clips, 0)
                n_nonfinite += tl.where((slot == first) & (finite == 0), 1, 0)
            rewrite = unit_clips
            if rewrite != 0:
                tl.store(coefs, unit_coef)
        else:
            if code == 3:
                clipped, nonfinite = _row_coefs(n // row_len, w_sums_ptr + slot, g_sums_ptr + slot, coefs,
                                                clip_factor, eps, inv_p, KIND, tl.float64, UNIT_BLOCK)
            else:
                clipped, nonfinite = _row_coefs(n // row_len, w_sums_ptr + slot, g_sums_ptr + slot, coefs,
                                                clip_factor, eps, inv_p, KIND, tl.float32, UNIT_BLOCK)
            n_clipped += clipped
            n_nonfinite += nonfinite
            rewrite = clipped
        if rewrite != 0:
            tl.debug_barrier()  # the scratch written above is read below by other threads of the program
            if code == 0:
                _rewrite_rows(g_addr.to(tl.pointer_type(tl.float32)), n, row_len, aligned, coefs, tl.float32, BLOCK)
            elif code == 1:
                _rewrite_rows(g_addr.to(tl.pointer_type(tl.float16)), n, row_len, aligned, coefs, tl.float32, BLOCK)
            elif code == 2:
                _rewrite_rows(g_addr.to(tl.pointer_type(tl.bfloat16)), n, row_len, aligned, coefs, tl.float32, BLOCK)
            else:
                _rewrite_rows(g_addr.to(tl.pointer_type(tl.float64)), n, row_len, aligned, coefs, tl.float64, BLOCK)
    tl.store(counts_ptr + pid, n_clipped)
    tl.store(counts_ptr + n_programs + pid, n_nonfinite)


# ----------------------------------------------------------------------------------------------
# launchers


def launch_agc_sums(table, n_chunks, w_sums, g_sums, p, kind, settings, cap) -> int:
    """Launch 1 over ``table``; returns its grid size."""
    constexprs = dict(KIND=kind, BLOCK=settings.block, SCAN_BLOCK=scan_block(settings))
    args = [table, n_chunks, 1, w_sums, g_sums, f64_bits(p)]
    grid = persistent_grid(_agc_sums_kernel, args, constexprs, table.device, n_chunks, settings, cap=cap)
    args[2] = grid
    _agc_sums_kernel[(grid,)](*args, **constexprs, num_warps=settings.num_warps)
    return grid


def launch_agc_clip(table, n_chunks, w_sums, g_sums, coefs, counts, p, kind, clip_factor, eps, settings, cap) -> int:
    """Launch 2 over ``table``; ``counts`` (int32, >= 2 * cap) receives per-program unit counts.
    Returns its grid size G (``counts[:G]`` clipped, ``counts[G:2G]`` non-finite)."""
    constexprs = dict(KIND=kind, BLOCK=settings.block, UNIT_BLOCK=scan_block(settings))
    inv_p = 1.0 / p if p not in (0.0, float("inf")) else 1.0
    args = [table, n_chunks, 1, w_sums, g_sums, coefs, counts, f64_bits(inv_p), f64_bits(clip_factor), f64_bits(eps)]
    grid = persistent_grid(_agc_clip_kernel, args, constexprs, table.device, n_chunks, settings, cap=cap)
    args[2] = grid
    _agc_clip_kernel[(grid,)](*args, **constexprs, num_warps=settings.num_warps)
    return grid
