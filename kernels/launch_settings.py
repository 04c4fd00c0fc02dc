"""The one place for launch policy: chunk size, block size, warps, grid size, dtype codes.

A *chunk* is the unit of work a program takes from the plan (``CHUNK`` elements of one tensor);
a *block* is what one loop iteration of a program loads (``BLOCK`` elements, ``BLOCK / (32 *
num_warps)`` per thread, so fp32 and bf16 both get 128-bit loads at the defaults).

GPU values are starting points chosen from the byte floor (see DESIGN.md), not yet tuned on
hardware: tuning them is the GPU issue's job and must keep them fixed settings (no autotune of the
in-place scale kernel, it would rescale the gradients once per config).
"""
from __future__ import annotations

import dataclasses

import torch

#: dtype code stored in the plan, branched on at run time inside the kernels.
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}
SUPPORTED_DTYPES = tuple(DTYPE_CODES)

#: Norm kinds, a constexpr of both kernels.
NORM_P2, NORM_P1, NORM_INF, NORM_GENERAL = 0, 1, 2, 3

#: Alignment (bytes) a chunk's address needs to take the vectorized (128-bit load) path.
VECTOR_ALIGN_BYTES = 16


@dataclasses.dataclass(frozen=True)
class LaunchSettings:
    chunk: int  # elements per chunk (multiple of block)
    block: int  # elements per loop iteration of a program
    num_warps: int
    programs_per_sm: int  # persistent grid = SMs * programs_per_sm, capped by the chunk count
    max_programs: int  # hard cap on the grid (and so on the number of partials)

    def __post_init__(self):
        if self.chunk % self.block or self.block & (self.block - 1):
            raise ValueError(f"chunk ({self.chunk}) must be a multiple of block ({self.block}), a power of 2")


GPU_SETTINGS = LaunchSettings(chunk=65536, block=2048, num_warps=8, programs_per_sm=4, max_programs=2048)
# The interpreter runs programs one after another in Python: small chunks keep tests fast while
# still exercising multi-chunk tensors, full (vectorized) and masked chunks, and many programs.
INTERPRETER_SETTINGS = LaunchSettings(chunk=256, block=64, num_warps=1, programs_per_sm=1, max_programs=8)

_override: LaunchSettings | None = None


def settings_for(device: torch.device) -> LaunchSettings:
    """Launch settings for ``device`` (an override set by :func:`use_settings` wins)."""
    if _override is not None:
        return _override
    return GPU_SETTINGS if device.type != "cpu" else INTERPRETER_SETTINGS


def use_settings(settings: LaunchSettings | None) -> LaunchSettings | None:
    """Replace the launch settings for all devices (``None`` restores the defaults); returns the old one."""
    global _override
    old, _override = _override, settings
    return old


def grid_size(device: torch.device, n_chunks: int, settings: LaunchSettings) -> int:
    """Persistent grid: a few programs per SM, never more programs than chunks (at least 1)."""
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
    else:
        sms = 1
    return max(1, min(n_chunks, sms * settings.programs_per_sm, settings.max_programs))
