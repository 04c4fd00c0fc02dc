r"""Drop-in for frameworks: make code that calls ``torch.nn.utils.clip_grad_norm_`` use fastclip.

HF Trainer (through accelerate), Lightning's ``gradient_clip_val``, torchtitan, timm and most
training loops look the function up on the module when they call it
(``torch.nn.utils.clip_grad_norm_(...)``). :func:`patch_torch` replaces these module attributes,
so such code runs fastclip without edits:

    =================================================  =================================
    torch attribute (where present in this torch)      served by
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
:func:`unpatch_torch` restores the original objects exactly. Both are idempotent and thread-safe.

The patched functions are invisible: for every input, they return what torch's function returns
(same dtype, device, DTensor placements, warnings and errors; values within fastclip's accuracy,
which is at least torch's). Whatever fastclip does not serve goes to torch's original function,
which then does exactly what it always does. Where the patched functions and fastclip's own API
(``fastclip.clip_``, ``total_norm``, ``clip_with_norm_``, ``clip_value_``) differ:

    ==============================  ====================================  ==================================
    input                           patched torch function                fastclip's direct API
    ==============================  ====================================  ==================================
    norm of bf16 / fp16 grads       torch's dtype: bf16 for bf16 grads,   float32 (float64 if any grad is
                                    fp16 for fp16, fp32 for bf16+fp16     float64)
    DTensor grads                   a DTensor norm with torch's           the plain global norm
                                    placements (Replicate; for inf,
                                    Partial(max) on sharded mesh dims)
    norm_type 0, < 0, -inf, NaN     torch's function                      ValueError
    norm_type '2', ' 2 ' (strings)  float(norm_type), as torch            ValueError (only 'inf' strings)
    max_norm < 0 or NaN             torch's function (it scales by a      ValueError
                                    negative / NaN coefficient)
    max_norm a string ('1.0')       torch's function                      TypeError
    max_norm an integer tensor      float(max_norm), as torch             ValueError
    max_norm a tensor on another    float(max_norm) (reads it, as torch)  copied to the grads' device,
    device than the grads                                                 never read on the host
    foreach not None/True/False     torch's function                      TypeError
    (foreach=1, 'yes', 0)
    foreach=True, a device without  torch's RuntimeError                  ignored
    foreach kernels
    complex, integer, bool or fp8   torch's function                      TypeError
    grads
    sparse grads, tensor            torch's function                      sparse: TypeError; other
    subclasses other than DTensor                                         subclasses: not supported
    DTensors mixed with plain       torch's RuntimeError                  plain tensors count as
    tensors                                                               replicated
    DTensors on several meshes      torch's RuntimeError                  each mesh reduced over its own
                                                                          groups, one global norm
    an empty grad, norm_type inf    torch's RuntimeError (no identity)    the max over the other grads
    no grads at all                 torch's function (tensor(0.) after    tensor(0.), no conversions
                                    converting the other arguments)
    empty generator                 warns as the installed torch does     always warns
                                    (torch 2.13 warns)
    clip_grads_with_norm_: a float  torch's TypeError / RuntimeError /    float and one-element tensors
    norm, a 1-d or integer norm     its result                            of any shape: taken; integer:
                                                                          ValueError
    clip_grad_value_ < 0 or NaN,    torch's function                      ValueError (string: TypeError)
    or a string
    clip_grad_value_, no grads      torch's function (2.13: RuntimeError) returns None
    clip_grad_value_, DTensor       torch's function (DTensor rules)      clamps the local tensors
    grads
    inside torch.compile            the same hand-overs, decided at trace fastclip's op
                                    time (DTensors: torch's function);
                                    fastclip's op is one graph node
    ==============================  ====================================  ==================================

Where fastclip serves, it differs from torch only where torch rounds or overflows:
half-precision norms are the fp32 norm rounded once (torch's bf16 norm is rounded twice and can
be a few bf16 units off), the clipping coefficient of half-precision gradients is computed in
fp32 (torch: in the norm's half type), and fp16 gradients whose norm overflows fp16 are scaled by
``max_norm / norm`` from the fp32 norm (torch returns inf and multiplies them by 0; the returned
norm is inf in both, and ``error_if_nonfinite=True`` raises in both). For DTensor grads, a norm of
order inf holds the global max in every rank's local tensor (torch: that rank's max;
``full_tensor()`` and ``item()`` agree), and a rank whose local shard is empty gets the inf norm
where torch raises (torch's check is per local shard).
"""
from __future__ import annotations

import contextlib
import functools
import math
import operator
import types
import warnings

import torch
import torch.nn.utils
import torch.nn.utils.clip_grad

from . import _inputs
from ._attr_patch import AttributePatches
from . import custom_op as _custom_op

try:  # torch >= 2.1
    from torch.utils._foreach_utils import _device_has_foreach_support
except ImportError:  # pragma: no cover
    def _device_has_foreach_support(device):
        return device.type in ("cpu", "cuda")

__all__ = ["patch_torch", "unpatch_torch", "patched", "is_patched"]

_NAMES = ("clip_grad_norm_", "clip_grad_norm", "clip_grad_value_", "get_total_norm", "clip_grads_with_norm_")
# torch's functions as fastclip found them: what the patched functions hand over to
_TORCH = {name: getattr(torch.nn.utils, name) for name in _NAMES if hasattr(torch.nn.utils, name)}

_patches = AttributePatches()  # torch's attributes while patched
_handed_over = dict(_TORCH)  # name -> the function the patched one hands inputs over to

_grad_of = operator.attrgetter("grad")
_dtype_of = operator.attrgetter("dtype")
_mesh_of = operator.attrgetter("device_mesh")
_PLAIN = frozenset({torch.Tensor, torch.nn.Parameter})
_WIDE = (torch.float32, torch.float64)  # where fastclip's norm dtype already is torch's


def _api():
    from . import api

    return api


def _torch_function(name: str):
    return _handed_over[name]


# ---------------------------------------------------------------------------------------------
# what fastclip serves: each helper returns None where torch's own function must decide

def _listed(items):
    """``(list, was an empty generator)`` as torch materialises it; None if it isn't iterable."""
    if isinstance(items, torch.Tensor):
        return [items], False
    try:
        iterator = iter(items)
    except TypeError:
        return None
    listed = list(iterator)
    return listed, not listed and isinstance(items, types.GeneratorType)


def _grads(params: list):
    """The non-None ``.grad`` of each item; None if an item has no ``.grad`` (torch raises)."""
    try:
        return [g for g in map(_grad_of, params) if g is not None]
    except AttributeError:
        return None


def _kind(tensors: list):
    """'plain' or 'dtensor'; None for other tensor subclasses, non-tensors, and DTensors mixed
    with plain tensors or spread over several meshes (torch raises for those two)."""
    types_ = set(map(type, tensors))
    if types_ <= _PLAIN:
        return "plain"
    if len(types_) > 1 or not _inputs.is_dtensor(tensors[0]):
        return None
    meshes = list({id(m): m for m in map(_mesh_of, tensors)}.values())
    return "dtensor" if all(m == meshes[0] for m in meshes[1:]) else None


def _order(norm_type):
    """torch's ``float(norm_type)`` where it is an order fastclip computes (p > 0 or inf)."""
    try:
        p = float(norm_type)
    except Exception:  # torch raises the same on its own conversion
        return None
    return p if p > 0 else None  # 0 counts non-zeros, < 0 and -inf aren't norms, NaN fails the test


def _foreach_ok(foreach, tensors: list) -> bool:
    """torch reads any truthy ``foreach`` as True and raises where a device has no foreach
    kernels; fastclip takes None/True/False and leaves the rest (``foreach=1``) to torch."""
    if foreach is None or foreach is False:
        return True
    if foreach is not True:
        return False
    return all(map(_device_has_foreach_support, {t.device for t in tensors}))


def _has_empty(tensors: list) -> bool:
    # numel() of a DTensor is its global size: an empty local shard alone is served
    return not all(map(torch.Tensor.numel, tensors))


def _call(tensors, norm_type, foreach):
    """``(p, kind, torch's norm dtype or None)`` if fastclip serves a norm of ``tensors`` of
    order ``norm_type``, else None."""
    if not tensors:
        return None  # torch returns tensor(0.) after its own argument conversions
    kind = _kind(tensors)
    p = _order(norm_type)
    if kind is None or p is None or not _foreach_ok(foreach, tensors):
        return None
    if p == math.inf and _has_empty(tensors):
        return None  # torch raises: the max over no elements has no identity
    return p, kind, _torch_dtype(tensors)


def _nonnegative(value):
    """torch's ``float(value)`` where it is >= 0; None for strings (torch parses them), negative
    and NaN values (torch scales or clamps by them as they are) and what float() refuses."""
    if isinstance(value, (str, bytes)):
        return None
    try:
        value = float(value)
    except Exception:
        return None
    return value if value >= 0 else None


def _threshold(max_norm, device):
    """``max_norm`` as fastclip takes it: a one-element floating tensor on the gradients' device
    is read by the kernel and never by the host; anything else is torch's ``float(max_norm)``."""
    if type(max_norm) in _PLAIN and max_norm.is_floating_point() and max_norm.numel() == 1 \
            and max_norm.device == device:
        return max_norm  # a negative or NaN value scales as torch's float() of it would
    return _nonnegative(max_norm)


def _torch_dtype(tensors: list):
    """The dtype of torch's norm where it isn't fastclip's: torch stacks the per-tensor norms,
    each in its tensor's dtype, so the dtypes promote (bf16 grads: bf16; bf16 with fp16: fp32)."""
    if tensors[0].dtype in _WIDE:
        return None  # fp32 first: fp32, or fp64 with an fp64 grad, which is fastclip's rule too
    dtype = functools.reduce(torch.promote_types, set(map(_dtype_of, tensors)))
    return None if dtype in _WIDE else dtype


def _like_torch(norm, dtype, tensors: list, kind: str, p: float):
    """fastclip's norm with torch's return type: its dtype, and for DTensors a DTensor on the
    tensors' mesh with the placements torch's norm has (Replicate; for inf, Partial(max) on
    every mesh dim some tensor is sharded on; its local value is the global max)."""
    if dtype is not None:
        norm = norm.to(dtype)
    if kind != "dtensor":
        return norm
    from torch.distributed.tensor import DTensor, Partial, Replicate

    mesh = tensors[0].device_mesh
    if p == math.inf:
        sharded = {i for t in tensors for i, pl in enumerate(t.placements) if pl.is_shard()}
        placements = [Partial("max") if i in sharded else Replicate() for i in range(mesh.ndim)]
    else:
        placements = [Replicate()] * mesh.ndim
    return DTensor.from_local(norm, mesh, placements, run_check=False)


def _checked_norm(tensors, p, dtype, error_if_nonfinite, foreach):
    """fastclip.total_norm, raising torch's error where *torch's* norm (of ``dtype``) would be
    non-finite: a half-precision norm overflows where fastclip's fp32 one does not."""
    if not error_if_nonfinite or dtype is None:
        return _api().total_norm(tensors, p, error_if_nonfinite, foreach)
    norm = _api().total_norm(tensors, p, False, foreach)
    if not bool(torch.isfinite(norm.to(dtype))):  # torch syncs here too
        raise _inputs.nonfinite_error(p)
    return norm


_WARNS_EMPTY_GENERATOR = None


def _torch_warns_on_empty_generator() -> bool:
    """torch >= 2.8 warns when clip_grad_norm_ gets an empty generator; ask this torch once."""
    global _WARNS_EMPTY_GENERATOR
    if _WARNS_EMPTY_GENERATOR is None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _TORCH["clip_grad_norm_"]((p for p in ()), 1.0)
        _WARNS_EMPTY_GENERATOR = any("empty generator" in str(w.message) for w in caught)
    return _WARNS_EMPTY_GENERATOR


def _traced(torch_fn, fast_fn, items, args: tuple, order_at=None, of_grads=True):
    """A patched function inside torch.compile, where Dynamo can't trace the checks above: there
    types, dtypes and Python-number arguments are static, so the same decisions are taken once,
    at trace time, and fastclip's op is one node of the graph. ``args[order_at]`` is
    ``norm_type`` where the function takes one; ``args[0]`` is the threshold unless it is
    ``norm_type`` (get_total_norm); ``args[-1]`` is ``foreach``."""
    items = [items] if isinstance(items, torch.Tensor) else list(items)
    tensors = [q.grad for q in items if q.grad is not None] if of_grads else items
    p = _order(args[order_at]) if order_at is not None else 1.0
    fast = p is not None and bool(tensors) and any(args[-1] is v for v in (None, True, False)) and all(
        type(t) in _PLAIN and t.dtype in _inputs.SUPPORTED_DTYPES and t.layout == torch.strided for t in tensors)
    fast = fast and not (p == math.inf and any(t.numel() == 0 for t in tensors))
    if fast and order_at != 0 and not isinstance(args[0], torch.Tensor):
        threshold = _nonnegative(args[0])
        if threshold is None:
            return torch_fn(items, *args)
        args = (threshold, *args[1:])
    if not fast:
        return torch_fn(items, *args)
    if order_at is None:
        return fast_fn(items, *args)
    result = fast_fn(items, *args[:order_at], p, *args[order_at + 1:])
    dtype = functools.reduce(torch.promote_types, [t.dtype for t in tensors])
    return result if dtype in _WIDE else result.to(dtype)


# ---------------------------------------------------------------------------------------------
# the replacements

def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False, foreach=None):
    r"""torch.nn.utils.clip_grad_norm_, served by :func:`fastclip.clip_` (installed by
    :func:`patch_torch`). Same arguments, result, warnings and errors as torch's function."""
    return _clip_grad_norm(parameters, max_norm, norm_type, error_if_nonfinite, foreach)


def _clip_grad_norm(parameters, max_norm, norm_type, error_if_nonfinite, foreach):
    torch_clip = _torch_function("clip_grad_norm_")
    if _custom_op.is_compiling():
        return _traced(torch_clip, _api().clip_, parameters, (max_norm, norm_type, error_if_nonfinite, foreach), 1)
    listed = _listed(parameters)
    if listed is None:
        return torch_clip(parameters, max_norm, norm_type, error_if_nonfinite, foreach)
    params, empty_generator = listed
    if empty_generator and _torch_warns_on_empty_generator():
        # stacklevel: warn -> _clip_grad_norm -> clip_grad_norm_ -> the caller, as torch's
        warnings.warn("`parameters` is an empty generator, no gradient clipping will occur.", stacklevel=3)
    grads = _grads(params)
    call = _call(grads, norm_type, foreach) if grads is not None else None
    threshold = _threshold(max_norm, grads[0].device) if call is not None else None
    if threshold is None:
        return torch_clip(params, max_norm, norm_type, error_if_nonfinite, foreach)
    p, kind, dtype = call
    try:
        if error_if_nonfinite and dtype is not None:
            norm = _checked_norm(grads, p, dtype, error_if_nonfinite, foreach)
            _api().clip_with_norm_(params, threshold, norm, foreach)
        else:
            norm = _api().clip_(params, threshold, p, error_if_nonfinite, foreach)
    except TypeError:  # a gradient fastclip doesn't take (sparse, complex, ...), found before any change
        return torch_clip(params, max_norm, norm_type, error_if_nonfinite, foreach)
    return _like_torch(norm, dtype, grads, kind, p)


def clip_grad_norm(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False, foreach=None):
    r"""torch's deprecated alias of clip_grad_norm_, served by fastclip (it warns as torch does)."""
    warnings.warn("`torch.nn.utils.clip_grad_norm` is now deprecated in favor of "
                  "`torch.nn.utils.clip_grad_norm_`.", FutureWarning, stacklevel=2)
    return _clip_grad_norm(parameters, max_norm, norm_type, error_if_nonfinite, foreach)


def get_total_norm(tensors, norm_type=2.0, error_if_nonfinite=False, foreach=None):
    r"""torch.nn.utils.get_total_norm, served by :func:`fastclip.total_norm`."""
    torch_norm = _torch_function("get_total_norm")
    if _custom_op.is_compiling():
        return _traced(torch_norm, _api().total_norm, tensors, (norm_type, error_if_nonfinite, foreach), 0,
                       of_grads=False)
    listed = _listed(tensors)
    call = _call(listed[0], norm_type, foreach) if listed is not None else None
    if call is None:
        return torch_norm(tensors if listed is None else listed[0], norm_type, error_if_nonfinite, foreach)
    tensors, (p, kind, dtype) = listed[0], call
    try:
        norm = _checked_norm(tensors, p, dtype, error_if_nonfinite, foreach)
    except TypeError:
        return torch_norm(tensors, norm_type, error_if_nonfinite, foreach)
    return _like_torch(norm, dtype, tensors, kind, p)


def _norm_taken(total_norm, grads: list, kind: str) -> bool:
    """torch multiplies by ``clamp(max_norm / (total_norm + 1e-6), max=1)`` with a foreach op:
    fastclip takes a 0-d floating tensor, a DTensor one only on the gradients' mesh."""
    if not isinstance(total_norm, torch.Tensor) or total_norm.dim() != 0 or not total_norm.is_floating_point():
        return False
    if type(total_norm) in _PLAIN:
        return True
    return kind == "dtensor" and _inputs.is_dtensor(total_norm) and total_norm.device_mesh == grads[0].device_mesh


def clip_grads_with_norm_(parameters, max_norm, total_norm, foreach=None):
    r"""torch.nn.utils.clip_grads_with_norm_, served by :func:`fastclip.clip_with_norm_`."""
    torch_scale = _torch_function("clip_grads_with_norm_")
    if _custom_op.is_compiling():
        return _traced(torch_scale, _api().clip_with_norm_, parameters, (max_norm, total_norm, foreach))
    listed = _listed(parameters)
    if listed is None:
        return torch_scale(parameters, max_norm, total_norm, foreach)
    params = listed[0]
    grads = _grads(params)
    kind = _kind(grads) if grads else None
    taken = kind is not None and _foreach_ok(foreach, grads) and _norm_taken(total_norm, grads, kind)
    threshold = _threshold(max_norm, grads[0].device) if taken else None
    if threshold is None:
        return torch_scale(params, max_norm, total_norm, foreach)
    try:
        return _api().clip_with_norm_(params, threshold, total_norm, foreach)
    except TypeError:
        return torch_scale(params, max_norm, total_norm, foreach)


def clip_grad_value_(parameters, clip_value, foreach=None):
    r"""torch.nn.utils.clip_grad_value_, served by :func:`fastclip.clip_value_`."""
    torch_clamp = _torch_function("clip_grad_value_")
    if _custom_op.is_compiling():
        return _traced(torch_clamp, _api().clip_value_, parameters, (clip_value, foreach))
    listed = _listed(parameters)
    if listed is None:
        return torch_clamp(parameters, clip_value, foreach)
    params = listed[0]
    grads = _grads(params)
    # DTensor grads stay with torch: clamping a Partial tensor's summands is not clamping their sum
    taken = bool(grads) and _kind(grads) == "plain" and _foreach_ok(foreach, grads)
    value = _nonnegative(clip_value) if taken else None
    if value is None:
        return torch_clamp(params, clip_value, foreach)
    try:
        return _api().clip_value_(params, value, foreach)
    except TypeError:
        return torch_clamp(params, clip_value, foreach)


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
    def hand_over_to(module, name, original):
        if module is torch.nn.utils:
            _handed_over[name] = original  # e.g. another library's wrapper of torch's

    return _patches.apply(_targets(), hand_over_to)


def unpatch_torch() -> None:
    r"""Put torch's original functions back (the very objects :func:`patch_torch` replaced).

    An attribute that someone else replaced after :func:`patch_torch` is left alone. Calling it
    when nothing is patched does nothing.
    """
    _patches.restore()


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
