"""Launch 1 of 2: per-program partial sums of |g|^p over every chunk of every gradient.

.. math::
    \\text{partial}_k = \\sum_{c \\equiv k \\ (\\mathrm{mod}\\ G)} \\sum_{i \\in c} |g_i|^p
    \\qquad (\\max |g_i| \\text{ for } p = \\infty)

A persistent grid of G programs takes chunks c = k, k + G, k + 2G, ... of the chunk table, so any
number of tensors of any mix of dtypes is one launch.  Bytes moved: reads N (the gradient bytes)
plus 16 per chunk of table; writes 8 * G (one float64 partial per program), plus 8 per chunk when
the per-chunk partials are requested (per-tensor norms come from their segment sums).  No atomics: the
partials are combined in a fixed order by the scale kernel, so results are bitwise reproducible.

Accumulation: lanes in fp32 (fp64 when the plan holds fp64 grads), each chunk's lane sum folded
into a float64 program total, which keeps the relative error near 1e-7 even for 1e9 elements.
"""
import triton
import triton.language as tl

from .chunk_ops import PINF, chunk_power_sum, f64_from_bits, load_row, nan_max, prefetch_row, unpack_meta
from .launch_settings import ALL_DTYPES, f64_bits, persistent_grid


@triton.jit(do_not_specialize=["p_bits"])
def _norm_partials_kernel(
    table_ptr,  # int64 [2, n_chunks]: chunk address row, packed (n | code << 32 | full << 36) row
    n_chunks,  # number of chunks in the table
    n_programs,  # grid size (passed in: tl.num_programs is not a scalar in the interpreter)
    partials_ptr,  # float64 [grid]: one partial per program (written, never accumulated into)
    p_bits,  # the norm order as float64 bits (launch_settings.f64_bits), used if KIND == PGENERAL
    chunk_partials_ptr,  # float64 [n_chunks]: each chunk's own sum (or max), if CHUNK_PARTIALS
    KIND: tl.constexpr,  # P2, P1, PINF or PGENERAL (chunk_ops)
    ACC_FP64: tl.constexpr,  # accumulate lanes in fp64 (the plan holds fp64 grads)
    CHUNK_PARTIALS: tl.constexpr,  # also store every chunk's partial (per-tensor norms, 8 B/chunk)
    CHUNK: tl.constexpr,  # elements per full chunk
    BLOCK: tl.constexpr,  # elements per loop iteration
    DTYPES: tl.constexpr = ALL_DTYPES,  # bit 1 << code set: that dtype's branch is compiled in
):
    pid = tl.program_id(0)
    ACC: tl.constexpr = tl.float64 if ACC_FP64 else tl.float32
    p = f64_from_bits(p_bits)
    total = tl.zeros([], tl.float64)
    for chunk in tl.range(pid, n_chunks, n_programs):
        addr, meta = load_row(table_ptr, n_chunks, chunk)
        # this program's next chunk: its row into L2 while this one streams
        prefetch_row(table_ptr, n_chunks, chunk + n_programs, chunk + n_programs < n_chunks)
        n, code, full, vec = unpack_meta(meta)
        # runtime dtype branch: one launch serves fp32, fp16, bf16 and fp64 tensors together
        # (a dtype left out of DTYPES has its branch folded away at compile time)
        if (code == 0) & ((DTYPES & 1) != 0):
            part = chunk_power_sum(addr.to(tl.pointer_type(tl.float32)), n, full, vec, p, KIND, ACC, CHUNK, BLOCK)
        elif (code == 1) & ((DTYPES & 2) != 0):
            part = chunk_power_sum(addr.to(tl.pointer_type(tl.float16)), n, full, vec, p, KIND, ACC, CHUNK, BLOCK)
        elif (code == 2) & ((DTYPES & 4) != 0):
            part = chunk_power_sum(addr.to(tl.pointer_type(tl.bfloat16)), n, full, vec, p, KIND, ACC, CHUNK, BLOCK)
        elif (code == 3) & ((DTYPES & 8) != 0):
            part = chunk_power_sum(addr.to(tl.pointer_type(tl.float64)), n, full, vec, p, KIND, ACC, CHUNK, BLOCK)
        else:
            part = tl.zeros([], ACC)
        if CHUNK_PARTIALS:
            tl.store(chunk_partials_ptr + chunk, part.to(tl.float64))
        if KIND == PINF:
            total = nan_max(total, part.to(tl.float64))
        else:
            total += part.to(tl.float64)
    tl.store(partials_ptr + pid, total)


def launch_norm_partials(table, n_chunks, partials, p, kind, acc_fp64, settings, chunk_partials=None) -> int:
    """Launch the norm kernel over ``table``; returns its grid size G (= partials written).

    ``partials`` is a workspace of at least G float64 values.  With ``chunk_partials`` (float64
    [n_chunks]) every chunk's partial is stored too.
    """
    constexprs = dict(KIND=kind, ACC_FP64=acc_fp64, CHUNK_PARTIALS=chunk_partials is not None,
                      CHUNK=settings.chunk, BLOCK=settings.block)
    args = [table, n_chunks, 3, partials, f64_bits(p), chunk_partials if chunk_partials is not None else partials]
    grid = persistent_grid(_norm_partials_kernel, args, constexprs, table.device, n_chunks, settings,
                           cap=partials.numel())
    args[2] = grid
    _norm_partials_kernel[(grid,)](*args, **constexprs, num_warps=settings.num_warps)
    return grid
