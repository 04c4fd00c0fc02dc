"""The one place for launch policy: chunk size, block size, warps, grid size, dtype codes.

A *chunk* is the unit of work a program takes from the plan (``CHUNK`` elements of one tensor);
a *block* is what one loop iteration of a program loads: ``BLOCK`` elements of a 16-bit dtype,
and the same bytes of any other (``BLOCK / 2`` fp32, ``BLOCK / 4`` fp64 elements).  At the
defaults (``BLOCK = 8 * 32 * num_warps``) that is 16 bytes per thread, one 128-bit access, for
every dtype: a block's loads and stores share one register layout, with nothing to convert
through shared memory in between.

GPU values are starting points chosen from the byte floor (see DESIGN.md), not yet tuned on
hardware: tuning them is the GPU issue's job and must keep them fixed settings (no autotune of the
in-place scale kernel, it would rescale the gradients once per config).
"""
from __future__ import annotations

import dataclasses
import functools
import struct

import torch

#: dtype code stored in the plan, branched on at run time inside the kernels.
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}
SUPPORTED_DTYPES = tuple(DTYPE_CODES)
#: The kernels' DTYPES constexpr: bit ``1 << code`` compiles that dtype's branch in.  Launches use
#: all four; a plan of one dtype could pass just its bit (fewer registers and instructions), and
#: bench/inspect_kernels.py compiles one dtype at a time to read each path's machine code.
ALL_DTYPES = sum(1 << c for c in DTYPE_CODES.values())

#: Norm kinds, a constexpr of both kernels.
NORM_P2, NORM_P1, NORM_INF, NORM_GENERAL = 0, 1, 2, 3

#: Alignment (bytes) a chunk's address needs to take the vectorized (128-bit load) path.
VECTOR_ALIGN_BYTES = 16

#: Clipper policies the scale launch computes itself (its ``POLICY`` constexpr; kernels/policy_ops.py).
POLICY_NONE, POLICY_FIXED, POLICY_MEAN, POLICY_ZCLIP, POLICY_PERCENTILE = 0, 1, 2, 3, 4
#: What a clipper does with a non-finite norm (a word of its policy buffer).
NONFINITE_PROPAGATE, NONFINITE_SKIP, NONFINITE_ERROR = 0, 1, 2

#: Layout of a clipper's policy buffer: one float64 tensor on the gradients' device, addressed in
#: 8-byte words; counts, sizes and flags are int64 words (the same bytes viewed as int64).
#: The clipper's public state tensors are views of their slots; settings are written once.
POLICY_WORD_TICKET = 0  # int64: programs of the running launch that have read the state (reset to 0)
POLICY_WORD_NONFINITE = 1  # int64: NONFINITE_*
POLICY_WORD_COUNT = 2  # int64: finite steps seen (mean, zclip, percentile)
POLICY_WORD_STAT0 = 3  # float64: fixed: threshold; mean: sum of norms; zclip: mean
POLICY_WORD_STAT1 = 4  # float64: zclip: variance (during warm-up: sum of squared deviations)
POLICY_WORD_SETTINGS = 5  # hyper-parameters, written once: see POLICY_SETTINGS
POLICY_WORD_ARRAYS = 15  # percentile: ring of the last `window` norms, then two sorted copies of it
POLICY_SETTINGS_WORDS = POLICY_WORD_ARRAYS - POLICY_WORD_SETTINGS

#: Each policy's settings words, in order from POLICY_WORD_SETTINGS; ``:i`` marks an int64 word.
#: An absent optional threshold is +inf (min(x, inf) = x), a flag is 0 or 1.
POLICY_SETTINGS = {
    POLICY_FIXED: (),
    POLICY_MEAN: ("warmup_steps:i", "factor", "warmup_max_norm", "running:i"),
    POLICY_ZCLIP: ("warmup_steps:i", "alpha", "one_minus_alpha", "z_thresh", "clip_factor", "max_norm", "eps",
                   "clip_to_mean:i", "skip_update_on_spike:i", "min_std"),
    POLICY_PERCENTILE: ("window:i", "quantile"),
}
assert all(len(words) <= POLICY_SETTINGS_WORDS for words in POLICY_SETTINGS.values()), "settings overlap the arrays"

#: Largest percentile window the scale launch ranks itself (each program reads the window once).
POLICY_MAX_WINDOW = 4096


@dataclasses.dataclass(frozen=True)
class LaunchSettings:
    chunk: int  # elements per chunk (multiple of block)
    block: int  # 16-bit elements per loop iteration of a program (same bytes for other dtypes)
    num_warps: int
    programs_per_sm: int  # persistent grid = SMs * programs_per_sm (lowered to what fits), capped by chunks
    max_programs: int  # hard cap on the grid (and the size of the partials workspace)

    def __post_init__(self):
        if self.chunk % self.block or self.block & (self.block - 1) or self.block < 8:
            raise ValueError(f"chunk ({self.chunk}) must be a multiple of block ({self.block}), a power of 2 "
                             "of at least 8 (every dtype's block holds whole 16-byte vectors)")


GPU_SETTINGS = LaunchSettings(chunk=65536, block=2048, num_warps=8, programs_per_sm=4, max_programs=2048)
# The interpreter runs programs one after another in Python: small chunks keep tests fast while
# still exercising multi-chunk tensors, full (vectorized) and masked chunks, and many programs.
INTERPRETER_SETTINGS = LaunchSettings(chunk=256, block=64, num_warps=1, programs_per_sm=4, max_programs=8)

_override: LaunchSettings | None = None


def settings_for(device: torch.device) -> LaunchSettings:
    """Launch settings for ``device`` (an override set by :func:`use_settings` wins)."""
    if _override is not None:
        return _override
    return GPU_SETTINGS if device.type != "cpu" else INTERPRETER_SETTINGS


def use_settings(settings: LaunchSettings | None) -> LaunchSettings | None:
    """Replace the launch settings for all devices (``None`` restores the defaults); returns the old one.

    Cached plans keep the settings they were built with: call ``fastclip.clear_cache()`` after this.
    """
    global _override
    old, _override = _override, settings
    return old


_resident: dict = {}


def f64_bits(x: float) -> int:
    """The int64 bit pattern of float(x): how float64 scalars reach a kernel without fp32 rounding."""
    return struct.unpack("<q", struct.pack("<d", float(x)))[0]


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1


def max_grid(device: torch.device, settings: LaunchSettings) -> int:
    """Largest persistent grid on ``device``: the size of a plan's partials workspace."""
    return max(1, min(_sm_count(device) * settings.programs_per_sm, settings.max_programs))


def _resident_programs_per_sm(compiled, device: torch.device, num_warps: int) -> int:
    """How many programs of ``compiled`` fit on one SM at once (registers, threads, shared memory)."""
    compiled._init_handles()  # loads the module; fills n_regs
    props = torch.cuda.get_device_properties(device)
    regs_per_sm = getattr(props, "regs_per_multiprocessor", 65536)
    threads_per_sm = getattr(props, "max_threads_per_multi_processor", 2048)
    smem_per_sm = getattr(props, "shared_memory_per_multiprocessor", 228 * 1024)
    # registers are allocated per warp in units of 256
    regs_per_warp = -(-max(compiled.n_regs, 1) * 32 // 256) * 256
    fits = [regs_per_sm // (regs_per_warp * num_warps), threads_per_sm // (32 * num_warps), 32]
    shared = getattr(compiled.metadata, "shared", 0) or 0
    if shared:
        fits.append(smem_per_sm // shared)
    return max(1, min(fits))


def persistent_grid(kernel, args, constexprs: dict, device: torch.device, n_chunks: int,
                    settings: LaunchSettings, cap: int) -> int:
    """Grid of a persistent launch: every program resident at once, never more than the chunks.

    Chunks are assigned statically (chunk c to program c mod G, which keeps results bitwise
    reproducible), so a program that has to wait for a free SM slot would double the time of its
    chunks: the grid is capped at the programs that fit, computed once per kernel variant from its
    compiled register and shared-memory use.
    """
    per_sm = settings.programs_per_sm
    if device.type == "cuda":
        # constexprs come from the launchers as keyword dicts in a fixed order: no sorting needed
        key = (id(kernel), tuple(constexprs.values()), settings.num_warps, device.index)
        resident = _resident.get(key)
        if resident is None:
            try:
                compiled = kernel.warmup(*args, grid=(1,), num_warps=settings.num_warps, **constexprs)
                resident = _resident_programs_per_sm(compiled, device, settings.num_warps)
            except Exception:  # an API change in triton: keep the configured value
                resident = per_sm
            _resident[key] = resident
        per_sm = min(per_sm, resident)
    # the interpreter (CPU): one "SM", a handful of programs run one after another
    return max(1, min(n_chunks, _sm_count(device) * per_sm, settings.max_programs, cap))
