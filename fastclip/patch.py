r"""Drop-in for frameworks: make code that calls ``torch.nn.utils.clip_grad_norm_`` use fastclip.

HF Trainer (through accelerate), Lightning's ``gradient_clip_val``, timm and most training loops
look the function up on the module when they call it (``torch.nn.utils.clip_grad_norm_(...)``).
:func:`patch_torch` replaces these module attributes, so such code runs fastclip without edits:

    =================================================  =================================
    torch attribute (where present in this torch)      replaced by
    =================================================  =================================
    torch.nn.utils[.clip_grad].clip_grad_norm_         :func:`fastclip.clip_`
    torch.nn.utils[.clip_grad].clip_grad_norm          the same, with torch's FutureWarning
    torch.nn.utils[.clip_grad].clip_grad_value_        :func:`fastclip.clip_value_`
    torch.nn.utils.get_total_norm                      :func:`fastclip.total_norm`
    torch.nn.utils.clip_grads_with_norm_               :func:`fastclip.clip_with_norm_`
    =================================================  =================================

A ``from torch.nn.utils import clip_grad_norm_`` executed *after* patching gets fastclip too; one
executed before keeps torch's function (it holds the object itself): patch early, before
importing the framework, or patch in the framework's module as well.

The replacements keep torch's signatures and return types: DTensor gradients (FSDP2) give a
replicated DTensor norm, as torch does, so ``norm.full_tensor()`` keeps working. Inputs fastclip
doesn't take (``norm_type`` <= 0, e.g. 0 or -inf) go to torch's original function.
:func:`unpatch_torch` restores the original objects exactly. Both are idempotent and thread-safe.
"""
from __future__ import annotations

import contextlib
import threading
import types
import warnings

import torch
import torch.nn.utils
import torch.nn.utils.clip_grad

from . import _inputs

__all__ = ["patch_torch", "unpatch_torch", "patched", "is_patched"]

_lock = threading.Lock()
_originals: dict = {}  # (module, name) -> torch's object, while patched


def _api():
    from . import api

    return api


def _materialize(parameters) -> list:
    """A list of the parameters; an empty generator warns as torch does (at the caller)."""
    if isinstance(parameters, torch.Tensor):
        return [parameters]
    is_generator = isinstance(parameters, types.GeneratorType)
    parameters = list(parameters)
    if is_generator and not parameters:
        warnings.warn("`parameters` is an empty generator, no gradient clipping will occur.", stacklevel=3)
    return parameters


def _takes(norm_type) -> bool:
    """fastclip serves this norm order (p > 0 or inf); anything else goes to torch."""
    try:
        _inputs.parse_norm_type(norm_type)
    except (TypeError, ValueError):
        return False
    return True


def _like_torch(norm, tensors):
    """torch returns a DTensor norm for DTensor inputs: the same value, replicated on their mesh."""
    first = next((t for t in tensors if t is not None), None)
    if first is None or not _inputs.is_dtensor(first) or _inputs.is_dtensor(norm):
        return norm
    from torch.distributed.tensor import DTensor, Replicate

    mesh = first.device_mesh
    return DTensor.from_local(norm, mesh, [Replicate()] * mesh.ndim, run_check=False)


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False, foreach=None):
    r"""torch.nn.utils.clip_grad_norm_, served by :func:`fastclip.clip_` (installed by
    :func:`patch_torch`). Same arguments and result as torch's function."""
    parameters = _materialize(parameters)
    if not _takes(norm_type):
        return _originals[(torch.nn.utils, "clip_grad_norm_")](parameters, max_norm, norm_type,
                                                                error_if_nonfinite, foreach)
    norm = _api().clip_(parameters, max_norm, norm_type, error_if_nonfinite, foreach)
    return _like_torch(norm, (p.grad for p in parameters))


def clip_grad_norm(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False, foreach=None):
    r"""torch's deprecated alias of clip_grad_norm_, served by fastclip (it warns as torch does)."""
    warnings.warn("`torch.nn.utils.clip_grad_norm` is now deprecated in favor of "
                  "`torch.nn.utils.clip_grad_norm_`.", FutureWarning, stacklevel=2)
    return clip_grad_norm_(parameters, max_norm, norm_type, error_if_nonfinite, foreach)


def get_total_norm(tensors, norm_type=2.0, error_if_nonfinite=False, foreach=None):
    r"""torch.nn.utils.get_total_norm, served by :func:`fastclip.total_norm`."""
    tensors = _materialize(tensors)
    if not _takes(norm_type):
        return _originals[(torch.nn.utils, "get_total_norm")](tensors, norm_type, error_if_nonfinite, foreach)
    return _like_torch(_api().total_norm(tensors, norm_type, error_if_nonfinite, foreach), tensors)


def clip_grads_with_norm_(parameters, max_norm, total_norm, foreach=None):
    r"""torch.nn.utils.clip_grads_with_norm_, served by :func:`fastclip.clip_with_norm_`."""
    parameters = _materialize(parameters)
    grads = [p.grad for p in parameters if p.grad is not None]
    if grads and _inputs.is_dtensor(grads[0]):
        from .distributed import clip_with_norm_sharded_

        with torch.no_grad():
            return clip_with_norm_sharded_(grads, _inputs.check_threshold(max_norm, "max_norm"), total_norm)
    return _api().clip_with_norm_(parameters, max_norm, total_norm, foreach)


def clip_grad_value_(parameters, clip_value, foreach=None):
    r"""torch.nn.utils.clip_grad_value_, served by :func:`fastclip.clip_value_`."""
    parameters = _materialize(parameters)
    first = next((p.grad for p in parameters if p.grad is not None), None)
    if first is not None and _inputs.is_dtensor(first):
        # clamping a Partial tensor's summands is not clamping their sum: torch's DTensor rules
        return _originals[(torch.nn.utils, "clip_grad_value_")](parameters, clip_value, foreach)
    return _api().clip_value_(parameters, clip_value, foreach)


_REPLACEMENTS = {
    "clip_grad_norm_": clip_grad_norm_,
    "clip_grad_norm": clip_grad_norm,
    "clip_grad_value_": clip_grad_value_,
    "get_total_norm": get_total_norm,
    "clip_grads_with_norm_": clip_grads_with_norm_,
}


def _targets():
    """(module, name, replacement) for every attribute this torch has."""
    for module in (torch.nn.utils, torch.nn.utils.clip_grad):
        for name, replacement in _REPLACEMENTS.items():
            if hasattr(module, name):
                yield module, name, replacement


def is_patched() -> bool:
    """True while torch.nn.utils.clip_grad_norm_ is fastclip's."""
    return torch.nn.utils.clip_grad_norm_ is clip_grad_norm_


def patch_torch() -> list[str]:
    r"""Make ``torch.nn.utils.clip_grad_norm_`` and friends run fastclip (idempotent).

    Returns:
        list[str]: the attributes now served by fastclip, e.g. ``'torch.nn.utils.clip_grad_norm_'``.

    Example::

        >>> import torch, fastclip
        >>> fastclip.patch.patch_torch()[0]
        'torch.nn.utils.clip_grad_norm_'
        >>> torch.nn.utils.clip_grad_norm_ is fastclip.patch.clip_grad_norm_
        True
        >>> fastclip.patch.unpatch_torch()
    """
    done = []
    with _lock:
        for module, name, replacement in _targets():
            current = getattr(module, name)
            if current is not replacement:
                _originals[(module, name)] = current
                setattr(module, name, replacement)
            done.append(f"{module.__name__}.{name}")
    return done


def unpatch_torch() -> None:
    r"""Put torch's original functions back (the very objects :func:`patch_torch` replaced).

    An attribute that someone else replaced after :func:`patch_torch` is left alone. Calling it
    when nothing is patched does nothing.
    """
    with _lock:
        for (module, name), original in list(_originals.items()):
            if getattr(module, name, None) is _REPLACEMENTS[name]:
                setattr(module, name, original)
            del _originals[(module, name)]


@contextlib.contextmanager
def patched():
    r"""Context manager: torch's clipping functions run fastclip inside the block.

    Nests, and leaves things as it found them: if torch was already patched on entry, it stays
    patched on exit.

    Example::

        >>> import torch, fastclip
        >>> w = torch.nn.Parameter(torch.zeros(2))
        >>> w.grad = torch.tensor([3.0, 4.0])
        >>> with fastclip.patch.patched():
        ...     torch.nn.utils.clip_grad_norm_([w], 1.0)   # fastclip.clip_ underneath
        tensor(5.)
        >>> w.grad
        tensor([0.6000, 0.8000])
    """
    was_patched = is_patched()
    patch_torch()
    try:
        yield
    finally:
        if not was_patched:
            unpatch_torch()
