r"""Opt-in: make timm's adaptive gradient clipping run :func:`fastclip.agc_`.

timm clips with AGC through ``timm.utils.adaptive_clip_grad`` (``timm/utils/agc.py``), which
``timm.utils.dispatch_clip_grad(..., mode='agc')`` calls by its module-global name: that is the
path of ``train.py --clip-mode agc``, with or without a loss scaler (``NativeScaler`` calls
``dispatch_clip_grad``).  :func:`patch_timm` replaces the function in the three places timm binds
it, so all of those run fastclip's two launches instead of timm's per-parameter loop:

    ======================================  ========================================
    timm attribute (where present)          replaced by
    ======================================  ========================================
    timm.utils.agc.adaptive_clip_grad       :func:`adaptive_clip_grad` (fastclip)
    timm.utils.clip_grad.adaptive_clip_grad the same (what ``dispatch_clip_grad`` calls)
    timm.utils.adaptive_clip_grad           the same
    ======================================  ========================================

The replacement keeps timm's signature and result (None).  Inputs fastclip refuses before
touching anything (``norm_type`` <= 0, gradients whose dtype differs from the parameter's,
DTensors, ...) go to timm's original function.  :func:`unpatch_timm` restores the original
objects exactly; both are idempotent and thread-safe.  timm is imported by :func:`patch_timm`,
never by ``import fastclip``.

``dispatch_clip_grad``'s other modes (``'norm'``, ``'value'``) call
``torch.nn.utils.clip_grad_norm_`` / ``clip_grad_value_``: :func:`fastclip.patch_torch` serves those.
"""
from __future__ import annotations

import contextlib
import importlib
import sys

from ._attr_patch import AttributePatches

__all__ = ["patch_timm", "unpatch_timm", "patched_timm", "is_timm_patched", "adaptive_clip_grad"]

_patches = AttributePatches()  # timm's attributes while patched
_NAME = "adaptive_clip_grad"
_MODULES = ("timm.utils.agc", "timm.utils.clip_grad", "timm.utils")


def adaptive_clip_grad(parameters, clip_factor=0.01, eps=1e-3, norm_type=2.0):
    r"""timm's ``adaptive_clip_grad``, served by :func:`fastclip.agc_` (installed by
    :func:`patch_timm`). Same arguments and result (None) as timm's function."""
    from .agc import agc_

    parameters = list(parameters) if not hasattr(parameters, "grad") else parameters  # generators: read once
    try:
        agc_(parameters, clip_factor, eps, norm_type)
    except (TypeError, ValueError):
        # refused before any gradient was modified: timm's own function decides (and raises its error)
        original = _patches.original(sys.modules.get("timm.utils.agc"), _NAME)
        if original is None:
            raise
        original(parameters, clip_factor, eps, norm_type)


def _targets():
    """(module, name, replacement) for every timm module that binds ``adaptive_clip_grad``."""
    for name in _MODULES:
        module = importlib.import_module(name)
        if hasattr(module, _NAME):
            yield module, _NAME, adaptive_clip_grad


def is_timm_patched() -> bool:
    """True while ``timm.utils.clip_grad.adaptive_clip_grad`` is fastclip's."""
    return _patches.original(sys.modules.get("timm.utils.clip_grad"), _NAME) is not None


def patch_timm() -> list[str]:
    r"""Make timm's ``adaptive_clip_grad`` (and so ``dispatch_clip_grad(..., mode='agc')``) run
    :func:`fastclip.agc_` (idempotent).

    Returns:
        list[str]: the attributes now served by fastclip, e.g. ``'timm.utils.agc.adaptive_clip_grad'``.

    Raises:
        ImportError: timm (or what it imports, such as torchvision) can't be imported.
    """
    try:
        targets = list(_targets())
    except ImportError as exc:
        raise ImportError(f"fastclip.patch_timm needs an importable timm ({exc.__class__.__name__}: {exc})") from exc
    return _patches.apply(targets)


def unpatch_timm() -> None:
    r"""Put timm's original functions back (the very objects :func:`patch_timm` replaced).

    An attribute someone else replaced after :func:`patch_timm` is left alone; calling it when
    nothing is patched does nothing.
    """
    _patches.restore()


@contextlib.contextmanager
def patched_timm():
    r"""Context manager: timm's AGC runs fastclip inside the block (nests; restores what it found)."""
    was_patched = is_timm_patched()
    patch_timm()
    try:
        yield
    finally:
        if not was_patched:
            unpatch_timm()
