"""Per-chunk building blocks shared by the kernels (``@triton.jit`` device functions only).

Every kernel walks a *chunk table* built by ``fastclip._plan``: row 0 holds each chunk's start
address (int64 bytes, so tensors past 2**31 elements are fine), row 1 packs
``n_elements | dtype_code << 32 | full << 36 | vec << 37``.  Three paths:

* ``full``: exactly ``CHUNK`` elements at a 16-byte aligned address: unmasked, alignment-hinted
  loads (and stores) that compile to 128-bit ``LDG.E.128``;
* ``vec``: 16-byte aligned and a whole number of 16-byte vectors (small tensors, most tails):
  masked loads whose mask is constant over each vector, still 128-bit (predicated);
* neither (misaligned views, odd lengths): masked scalar loads.

A block is ``BLOCK`` 16-bit elements' worth of bytes in every dtype (``BLOCK * 16 // bits``
elements): 16 bytes per thread at the GPU settings, so each dtype's block is one 128-bit access
per thread, and the load and the store of a block share one layout (an fp32 block of ``BLOCK``
elements was 32 bytes per thread, and its stores, capped at 16 bytes, went through shared memory).
Each path is its own function (``_power_sum_full``, ``_rewrite_vec``, ...) so that
bench/inspect_kernels.py can attribute machine code to it.
"""
import triton
import triton.language as tl

from .launch_settings import NORM_GENERAL, NORM_INF, NORM_P1, NORM_P2

# Norm kinds as constexpr globals, usable inside @triton.jit functions.
P2 = tl.constexpr(NORM_P2)
P1 = tl.constexpr(NORM_P1)
PINF = tl.constexpr(NORM_INF)
PGENERAL = tl.constexpr(NORM_GENERAL)


@triton.jit
def f64_from_bits(bits):
    """A float64 scalar passed as its int64 bit pattern (Triton types Python floats as fp32)."""
    return tl.cast(bits, tl.int64).to(tl.float64, bitcast=True)


@triton.jit
def load_row(table_ptr, n_chunks, chunk):
    """One chunk's two table words: its address and its packed metadata."""
    addr = tl.load(table_ptr + chunk)
    meta = tl.load(table_ptr + n_chunks + chunk)
    return addr, meta


@triton.jit
def prefetch_row(table_ptr, n_chunks, chunk, valid):
    """Start bringing a chunk's two table words into L2 without waiting for them.

    The values are never used (``volatile`` keeps the loads).  Issued for the next chunk before the
    current one streams, so that the next iteration's ``load_row`` waits for L2, not DRAM.  Carrying
    the next row in registers instead would hide L2's latency too, but cost 4 registers across
    the whole chunk (spills on sm_80 once the vec path is in), and some ptxas versions (triton
    3.9's) move a carried row into uniform registers right after its load, waiting for it anyway.
    """
    tl.load(table_ptr + chunk, mask=valid, volatile=True)
    tl.load(table_ptr + n_chunks + chunk, mask=valid, volatile=True)


@triton.jit
def unpack_meta(meta):
    """Element count, dtype code, full and vec flags from a chunk's packed metadata word."""
    n = (meta & 0xFFFFFFFF).to(tl.int32)
    code = ((meta >> 32) & 15).to(tl.int32)
    full = ((meta >> 36) & 1) != 0
    vec = ((meta >> 37) & 1) != 0
    return n, code, full, vec


@triton.jit
def nan_max(a, b):
    """max(a, b) that keeps NaN (hardware max.f32 drops it; torch's inf-norm keeps it)."""
    return tl.where(a != a, a, tl.where(b != b, b, tl.maximum(a, b)))


@triton.jit
def nan_max_reduce(x):
    """max over a block that returns NaN if any lane is NaN."""
    n_nan = tl.sum((x != x).to(tl.int32), axis=0)
    return tl.where(n_nan > 0, float("nan"), tl.max(x, axis=0))


@triton.jit
def _accumulate(acc, x, p, KIND: tl.constexpr):
    # acc holds sum |x|^p lane by lane (max |x| for the inf norm); x as loaded
    if KIND == P2:
        xa = x.to(acc.dtype)
        acc += xa * xa
    elif KIND == P1:
        acc += tl.abs(x.to(acc.dtype))
    elif KIND == PINF:
        acc = nan_max(acc, tl.abs(x.to(acc.dtype)))
    else:
        # |x|^p = 2^(p log2|x|), in fp32 for 16- and 32-bit grads (the precision of torch's
        # per-tensor norms) even when lanes accumulate in fp64: fp64 log2/exp2 on every lane of a
        # block needs ~100 registers and spilled on sm_80.  0 -> 0 explicitly (log2 0 = -inf),
        # NaN stays NaN.
        ax = tl.abs(x.to(acc.dtype if x.dtype == tl.float64 else tl.float32))
        acc += tl.where(ax == 0, 0.0, tl.exp2(p.to(ax.dtype) * tl.log2(ax))).to(acc.dtype)
    return acc


@triton.jit
def _power_sum_full(ptr, p, KIND: tl.constexpr, ACC: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    # 16-byte aligned base + whole blocks: lets the compiler emit 128-bit loads
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], ACC)
    for start in tl.range(0, CHUNK, BLOCK):
        block_ptr = tl.multiple_of(ptr + start, 16)
        x = tl.load(block_ptr + offs)
        acc = _accumulate(acc, x, p, KIND)
    return acc


@triton.jit
def _power_sum_vec(ptr, n, p, KIND: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    # 16-byte aligned base, n a whole number of 16-byte vectors: the mask is constant over each
    # vector, so the masked loads stay 128-bit (lanes past the end are predicated off)
    VEC: tl.constexpr = 128 // ptr.dtype.element_ty.primitive_bitwidth
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], ACC)
    for start in tl.range(0, n, BLOCK):
        block_ptr = tl.multiple_of(ptr + start, 16)
        x = tl.load(block_ptr + offs, mask=offs < tl.multiple_of(n - start, VEC), other=0.0)
        acc = _accumulate(acc, x, p, KIND)
    return acc


@triton.jit
def _power_sum_masked(ptr, n, p, KIND: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], ACC)
    for start in tl.range(0, n, BLOCK):
        mask = start + offs < n
        x = tl.load(ptr + start + offs, mask=mask, other=0.0)
        acc = _accumulate(acc, x, p, KIND)
    return acc


@triton.jit
def chunk_power_sum(ptr, n, full, vec, p, KIND: tl.constexpr, ACC: tl.constexpr,
                    CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    """Sum of |x|^p (max |x| for KIND == PINF) over one chunk, accumulated in ``ACC``.

    Reads n * elsize bytes, writes nothing.
    """
    BLOCK_T: tl.constexpr = BLOCK * 16 // ptr.dtype.element_ty.primitive_bitwidth  # 16 B per thread
    if full:
        acc = _power_sum_full(ptr, p, KIND, ACC, CHUNK, BLOCK_T)
    elif vec:
        acc = _power_sum_vec(ptr, n, p, KIND, ACC, BLOCK_T)
    else:
        acc = _power_sum_masked(ptr, n, p, KIND, ACC, BLOCK_T)
    return _lane_reduce(acc, KIND)


@triton.jit
def _lane_reduce(acc, KIND: tl.constexpr):
    # the one cross-thread step of a chunk (shuffles, and shared memory between warps)
    if KIND == PINF:
        return nan_max_reduce(acc)
    return tl.sum(acc, axis=0)


# Rewrite operations of chunk_rewrite.
SCALE = tl.constexpr(0)
CLAMP = tl.constexpr(1)


@triton.jit
def _transform(x, a, b, OP: tl.constexpr):
    xc = x.to(a.dtype)
    if OP == SCALE:
        y = xc * a
    else:
        # comparisons with NaN are false: NaN stays NaN, as torch.clamp
        y = tl.where(xc > b, b, tl.where(xc < a, a, xc))
    return y.to(x.dtype)


@triton.jit
def _rewrite_full(ptr, a, b, OP: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    for start in tl.range(0, CHUNK, BLOCK):
        block_ptr = tl.multiple_of(ptr + start, 16)
        x = tl.load(block_ptr + offs)
        tl.store(block_ptr + offs, _transform(x, a, b, OP))


@triton.jit
def _rewrite_vec(ptr, n, a, b, OP: tl.constexpr, BLOCK: tl.constexpr):
    # as _power_sum_vec: 128-bit masked loads and stores
    VEC: tl.constexpr = 128 // ptr.dtype.element_ty.primitive_bitwidth
    offs = tl.arange(0, BLOCK)
    for start in tl.range(0, n, BLOCK):
        block_ptr = tl.multiple_of(ptr + start, 16)
        mask = offs < tl.multiple_of(n - start, VEC)
        x = tl.load(block_ptr + offs, mask=mask)
        tl.store(block_ptr + offs, _transform(x, a, b, OP), mask=mask)


@triton.jit
def _rewrite_masked(ptr, n, a, b, OP: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    for start in tl.range(0, n, BLOCK):
        mask = start + offs < n
        x = tl.load(ptr + start + offs, mask=mask)
        tl.store(ptr + start + offs, _transform(x, a, b, OP), mask=mask)


@triton.jit
def chunk_rewrite(ptr, n, full, vec, a, b, OP: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    """In place over one chunk: x <- x * a (OP == SCALE) or x <- clamp(x, a, b) (OP == CLAMP).

    Computed in a's dtype (fp32, or fp64 for fp64 grads), stored in x's dtype.
    Reads and writes n * elsize bytes each.
    """
    BLOCK_T: tl.constexpr = BLOCK * 16 // ptr.dtype.element_ty.primitive_bitwidth  # 16 B per thread
    if full:
        _rewrite_full(ptr, a, b, OP, CHUNK, BLOCK_T)
    elif vec:
        _rewrite_vec(ptr, n, a, b, OP, BLOCK_T)
    else:
        _rewrite_masked(ptr, n, a, b, OP, BLOCK_T)
