"""Launch 2 of 2: reduce the partials to the norm, derive the clip coefficient, rescale in place.

.. math::
    \\|g\\|_p = \\Big(\\sum_k \\text{partial}_k\\Big)^{1/p}, \\qquad
    \\text{coef} = \\min\\Big(\\frac{\\text{max\\_norm}}{\\|g\\|_p + 10^{-6}},\\ 1\\Big), \\qquad
    g \\leftarrow \\text{coef} \\cdot g \\ \\text{ if coef} < 1 \\text{ or } \\|g\\|_p \\text{ is NaN}

Every program reduces all G partials itself, in the same fixed order (a few hundred float64
values, served from L2), so no third launch or grid-wide barrier is needed.  Program 0 stores the
norm.  When coef >= 1 every program returns without touching gradient memory: multiplying by 1.0
is an identity, so skipping it is bitwise what torch produces.  When NaN or inf makes the norm
non-finite, the coefficient is NaN or 0 and gradients are scaled by it, as torch does.

Bytes moved: reads 8 * G per program; when clipping also reads and writes N (the gradient bytes).

The coefficient follows torch's arithmetic: the norm is rounded to the returned dtype (fp32, or
fp64 for fp64 grads) and ``max_norm / (norm + 1e-6)`` is an IEEE-rounded division in that dtype.
Grads of 16- and 32-bit types are multiplied in fp32 (torch's opmath), fp64 grads in fp64.

The same kernel, with constexpr switches, also finishes a norm without scaling
(``total_norm``), scales by a given norm (``clip_with_norm_``), clamps (``clip_value_``), and runs
a clipper's step (``POLICY``: the threshold comes from the clipper's device state, see
``policy_ops``; still two launches per step).

It is compiled without FMA contraction (``COMPILE_OPTIONS``): its scalar arithmetic (the norm,
the coefficient, a clipper's policy) is then IEEE-rounded operation by operation, as torch's,
which is what makes the clipper results bitwise those of the torch-op reference.  The rewrite
loops only multiply, so this costs them nothing.
"""
import triton
import triton.language as tl

from .chunk_ops import (CLAMP, P1, P2, PINF, SCALE, chunk_rewrite, f64_from_bits, load_row, nan_max_reduce,
                        prefetch_row, unpack_meta)
from .launch_settings import ALL_DTYPES, POLICY_NONE, f64_bits, persistent_grid
from .policy_ops import clip_coef, policy_coef

NO_POLICY = tl.constexpr(POLICY_NONE)

#: Compile options of every scale launch: no FMA contraction (mul and add rounded separately).
COMPILE_OPTIONS = {"enable_fp_fusion": False}


@triton.jit
def _rewrite_all(table_ptr, n_chunks, n_programs, a32, a64, b32, b64, OP: tl.constexpr, CHUNK: tl.constexpr,
                 BLOCK: tl.constexpr, DTYPES: tl.constexpr = ALL_DTYPES, REVERSE: tl.constexpr = True):
    # Chunks are dealt round-robin (the k-th to program k mod G).  REVERSE (the rescale) deals them
    # from the end of the table: the norm launch walked forward, so what it read last is what L2
    # still holds (50 MB on H100), and the rescale starts there.  Each element is still scaled
    # once, by the same coefficient: bitwise the same result.  (Mirroring the table keeps every
    # index a function of constants and the loop counter: no per-program trip count to keep live.)
    pid = tl.program_id(0)
    for k in tl.range(pid, n_chunks, n_programs):
        chunk = n_chunks - 1 - k if REVERSE else k
        addr, meta = load_row(table_ptr, n_chunks, chunk)
        # this program's next chunk: its row into L2 while this one streams
        prefetch_row(table_ptr, n_chunks, chunk - n_programs if REVERSE else chunk + n_programs,
                     k + n_programs < n_chunks)
        n, code, full, vec = unpack_meta(meta)
        # (a dtype left out of DTYPES has its branch folded away at compile time)
        if (code == 0) & ((DTYPES & 1) != 0):
            chunk_rewrite(addr.to(tl.pointer_type(tl.float32)), n, full, vec, a32, b32, OP, CHUNK, BLOCK)
        elif (code == 1) & ((DTYPES & 2) != 0):
            chunk_rewrite(addr.to(tl.pointer_type(tl.float16)), n, full, vec, a32, b32, OP, CHUNK, BLOCK)
        elif (code == 2) & ((DTYPES & 4) != 0):
            chunk_rewrite(addr.to(tl.pointer_type(tl.bfloat16)), n, full, vec, a32, b32, OP, CHUNK, BLOCK)
        elif (code == 3) & ((DTYPES & 8) != 0):
            chunk_rewrite(addr.to(tl.pointer_type(tl.float64)), n, full, vec, a64, b64, OP, CHUNK, BLOCK)


@triton.jit(do_not_specialize=["max_norm_bits", "inv_p_bits"])
def _scale_kernel(
    table_ptr,  # int64 [2, n_chunks]: the same chunk table as the norm launch
    n_chunks,  # number of chunks in the table
    n_programs,  # grid size (passed in: tl.num_programs is not a scalar in the interpreter)
    partials_ptr,  # float64 [n_partials]: the norm launch's per-program partials
    n_partials,  # number of partials (the norm launch's grid size)
    norm_ptr,  # 0-d norm: written by program 0 if FINISH_NORM, else read; with POLICY [norm, threshold, coef]
    max_norm_ptr,  # 0-d threshold on the device, read if MAX_NORM_FROM_PTR
    max_norm_bits,  # the threshold as float64 bits, used if not MAX_NORM_FROM_PTR
    inv_p_bits,  # 1 / p as float64 bits, used only when KIND is general
    inv_scale_ptr,  # float32 [1]: GradScaler's 1/scale, read if UNSCALE
    found_inf_ptr,  # float32 [1]: found_inf, written (1.0 / 0.0) if UNSCALE (GradScaler's) or POLICY
    policy_ptr,  # float64 [...]: the clipper's state and settings (policy_ops), read and updated if POLICY
    clipped_ptr,  # bool [1]: whether the grads were rewritten, written if POLICY
    KIND: tl.constexpr,  # P2, P1, PINF or PGENERAL (chunk_ops)
    NORM_FP64: tl.constexpr,  # the norm (and coefficient) is float64, else float32
    FINISH_NORM: tl.constexpr,  # reduce the partials into the norm (else read norm_ptr)
    APPLY: tl.constexpr,  # rescale the gradients when coef < 1
    MAX_NORM_FROM_PTR: tl.constexpr,  # threshold read from device memory (never syncs)
    UNSCALE: tl.constexpr,  # grads are loss-scaled: unscale while clipping (fused AMP step)
    POLICY: tl.constexpr,  # NO_POLICY, or a clipper's policy (launch_settings.POLICY_*); needs FINISH_NORM
    P_BLOCK: tl.constexpr,  # power of 2 >= n_partials
    CHUNK: tl.constexpr,  # elements per full chunk
    BLOCK: tl.constexpr,  # elements per loop iteration
):
    NORM_DTYPE: tl.constexpr = tl.float64 if NORM_FP64 else tl.float32
    if FINISH_NORM:
        offs = tl.arange(0, P_BLOCK)
        parts = tl.load(partials_ptr + offs, mask=offs < n_partials, other=0.0)
        if KIND == PINF:
            total = nan_max_reduce(parts)
        else:
            total = tl.sum(parts, axis=0)
        if KIND == P2:
            norm64 = tl.sqrt(total)
        elif KIND == P1 or KIND == PINF:
            norm64 = total
        else:
            # total^(1/p) in float64 (software log2/exp2: one scalar per program, negligible)
            norm64 = tl.exp2(tl.log2(total) * f64_from_bits(inv_p_bits))
        if UNSCALE:
            # a p-norm is homogeneous: ||g / s|| = ||g|| / s, exact for GradScaler's powers of 2.
            # Any inf/NaN element makes the scaled norm non-finite: that is GradScaler's found_inf.
            nonfinite = (norm64 != norm64) | (norm64 == float("inf"))
            if tl.program_id(0) == 0:
                tl.store(found_inf_ptr, tl.where(nonfinite, 1.0, 0.0).to(tl.float32))
            inv_scale = tl.load(inv_scale_ptr).to(tl.float64)
            norm64 = norm64 * inv_scale
        norm = norm64.to(NORM_DTYPE)
        if tl.program_id(0) == 0:
            tl.store(norm_ptr, norm)
    else:
        norm = tl.load(norm_ptr).to(NORM_DTYPE)
    if APPLY:
        if POLICY != NO_POLICY:
            # a clipper step: every program derives the threshold from the clipper's state itself
            coef = policy_coef(norm, policy_ptr, norm_ptr, clipped_ptr, found_inf_ptr, n_programs, POLICY, NORM_FP64)
        else:
            if MAX_NORM_FROM_PTR:
                threshold = tl.load(max_norm_ptr).to(NORM_DTYPE)
            else:
                threshold = f64_from_bits(max_norm_bits).to(NORM_DTYPE)  # torch rounds a Python float the same way
            coef = clip_coef(threshold, norm, NORM_FP64)
        if UNSCALE:
            # the unscale must be written even at coef 1; nothing is written when the step will
            # be skipped (found_inf): GradScaler discards those grads anyway
            if not nonfinite:
                factor = tl.minimum(coef, 1.0).to(tl.float64) * inv_scale
                _rewrite_all(table_ptr, n_chunks, n_programs, factor.to(tl.float32), factor,
                             factor.to(tl.float32), factor, SCALE, CHUNK, BLOCK)
        # coef != coef: a NaN norm scales by NaN, as torch.clamp(nan, max=1) does
        elif (coef < 1.0) | (coef != coef):
            _rewrite_all(table_ptr, n_chunks, n_programs, coef.to(tl.float32), coef.to(tl.float64),
                         coef.to(tl.float32), coef.to(tl.float64), SCALE, CHUNK, BLOCK)


@triton.jit(do_not_specialize=["clip_value_bits"])
def _clamp_kernel(
    table_ptr,  # int64 [2, n_chunks]: chunk table
    n_chunks,  # number of chunks in the table
    n_programs,  # grid size
    clip_value_bits,  # clamp to [-clip_value, clip_value]; float64 bits
    CHUNK: tl.constexpr,  # elements per full chunk
    BLOCK: tl.constexpr,  # elements per loop iteration
    DTYPES: tl.constexpr = ALL_DTYPES,  # bit 1 << code set: that dtype's branch is compiled in
):
    """g <- clamp(g, -c, c) in place; reads and writes N bytes each."""
    hi64 = f64_from_bits(clip_value_bits)
    hi32 = hi64.to(tl.float32)
    _rewrite_all(table_ptr, n_chunks, n_programs, -hi32, -hi64, hi32, hi64, CLAMP, CHUNK, BLOCK, DTYPES,
                 REVERSE=False)  # no norm launch before it (and backward writes the first grads last)


def launch_scale(table, n_chunks, partials, n_partials, norm, max_norm, p, kind, norm_fp64, *,
                 finish_norm, apply, settings, inv_scale=None, found_inf=None, policy=None):
    """Launch the scale kernel; ``max_norm`` is a float or a 0-d tensor on the grads' device.

    ``n_partials`` is the grid of the norm launch that filled ``partials``.  With ``inv_scale`` and
    ``found_inf`` (GradScaler's tensors) the grads are unscaled as well.  With ``policy = (code,
    buffer, clipped)`` a clipper's policy gives the threshold (``max_norm`` is unused): ``norm``
    is then a [3] tensor for norm, threshold and coefficient, ``clipped`` (bool) and
    ``found_inf`` (float32) receive the flags, and ``buffer`` (the policy buffer) is updated.
    """
    from_ptr = not isinstance(max_norm, (int, float))
    unscale = inv_scale is not None
    code, policy_buffer, clipped = policy if policy is not None else (POLICY_NONE, partials, partials)
    # the compile options ride with the constexprs, so persistent_grid sizes the variant that runs
    constexprs = dict(KIND=kind, NORM_FP64=norm_fp64, FINISH_NORM=finish_norm, APPLY=apply,
                      MAX_NORM_FROM_PTR=from_ptr, UNSCALE=unscale, POLICY=code,
                      P_BLOCK=triton.next_power_of_2(max(partials.numel(), 1)),
                      CHUNK=settings.chunk, BLOCK=settings.block, **COMPILE_OPTIONS)
    args = [
        table, n_chunks, 3, partials, n_partials, norm,
        max_norm if from_ptr else norm,  # any valid pointer when unused
        f64_bits(0.0 if from_ptr else max_norm),
        f64_bits(1.0 / p if p not in (0.0, float("inf")) else 1.0),
        inv_scale if unscale else partials, found_inf if found_inf is not None else partials,
        policy_buffer, clipped,
    ]
    # without a rewrite pass one program reduces the partials; with one, a persistent grid
    grid = persistent_grid(_scale_kernel, args, constexprs, table.device, n_chunks, settings,
                           cap=settings.max_programs) if apply else 1
    args[2] = grid
    _scale_kernel[(grid,)](*args, **constexprs, num_warps=settings.num_warps)


def launch_clamp(table, n_chunks, clip_value, settings):
    """Launch the clamp kernel over ``table``."""
    constexprs = dict(CHUNK=settings.chunk, BLOCK=settings.block)
    args = [table, n_chunks, 3, f64_bits(clip_value)]
    grid = persistent_grid(_clamp_kernel, args, constexprs, table.device, n_chunks, settings,
                           cap=settings.max_programs)
    args[2] = grid
    _clamp_kernel[(grid,)](*args, **constexprs, num_warps=settings.num_warps)
