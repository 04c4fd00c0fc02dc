"""fastclip: gradient clipping by global norm in two Triton kernel launches.

A drop-in for ``torch.nn.utils.clip_grad_norm_`` and friends.  fastclip imports and runs without
triton (plain PyTorch); its own kernels are imported on the first Triton call, and the backend is
chosen per device at call time (see ``FASTCLIP_BACKEND`` in README).
"""
from . import amp, custom_op, distributed, monitor, patch  # noqa: F401  (custom_op registers the torch ops)
from ._dispatch import clear_cache
from .adaptive import ClipResult, Clipper, FixedClipper, MeanClipper, PercentileClipper, ZClipper, step_if_finite
from .agc import AGCClipper, AGCResult, agc_
from .api import clip_, clip_value_, clip_with_norm_, total_norm
from .patch import patch_torch, patched, unpatch_torch

__version__ = "0.1.0"
__all__ = [
    "clip_", "total_norm", "clip_with_norm_", "clip_value_", "clear_cache", "amp",
    "ClipResult", "Clipper", "FixedClipper", "MeanClipper", "PercentileClipper", "ZClipper", "step_if_finite",
    "monitor", "patch_torch", "unpatch_torch", "patched", "agc_", "AGCClipper", "AGCResult",
]
