"""Triton kernels of fastclip and their launchers (installed as ``fastclip.kernels``).

Only kernels, launchers and launch settings live here; argument checks, planning and dispatch are
in ``fastclip``.  This ``__init__`` imports nothing, so ``fastclip.kernels.launch_settings`` can be
used without triton; ``norm_kernel`` and ``scale_kernel`` import triton.
"""
