"""Public API: drop-in replacements for torch.nn.utils' gradient clipping functions."""
from __future__ import annotations

import functools

import torch

from . import _inputs, _torch_backend
from . import custom_op as _custom_op
from ._dispatch import route

__all__ = ["clip_", "total_norm", "clip_with_norm_", "clip_value_"]


def _no_grad(fn):
    """Run ``fn`` under torch.no_grad(), keeping its name and docstring."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.no_grad():
            return fn(*args, **kwargs)

    return wrapper


def _norm_dtype(works) -> torch.dtype:
    return torch.float64 if any(w.has_fp64 for w in works) else torch.float32


def _route_naming_parameters(grads, parameters):
    """route(grads), but a bad gradient is reported by its position in ``parameters``."""
    try:
        return route(grads)
    except TypeError:
        _inputs.check_param_grads(parameters)
        raise


def _by_dtype(work, grads) -> dict:
    return work.by_dtype if work.by_dtype is not None else _torch_backend.group_by_dtype(grads)


def _triton():
    from . import _triton_backend

    return _triton_backend


def _total_norm(works, grads, p, kind, norm_dtype) -> torch.Tensor:
    norms = []
    for w in works:
        gs = w.grads(grads)
        if w.triton:
            norms.append(_triton().total_norm(w, gs, p, kind, norm_dtype))
        else:
            norms.append(_torch_backend.total_norm(_by_dtype(w, gs), p, kind, norm_dtype, w.device))
    if len(norms) == 1:
        return norms[0]
    first = norms[0].device  # several devices: combine as torch does, on the first one
    return torch.linalg.vector_norm(torch.stack([n.to(first) for n in norms]), p).to(norm_dtype)


def _clip_with_norm(works, grads, max_norm, norm) -> None:
    for w in works:
        gs = w.grads(grads)
        if w.triton:
            _triton().clip_with_norm(w, gs, max_norm, norm)
        else:
            _torch_backend.scale_(_by_dtype(w, gs), _torch_backend.clip_coef(max_norm, norm.to(w.device)))


def _sharded(grads, group) -> bool:
    # DTensor grads (FSDP2, tensor parallel) or an explicit process group: fastclip.distributed
    return group is not None or _inputs.has_dtensor(grads)


def _per_tensor_norms(works, grads, p, kind, norm_dtype) -> torch.Tensor:
    """Norm of each tensor, in ``grads`` order (the general path; the fused one is in _triton_backend)."""
    out = torch.zeros(len(grads), dtype=norm_dtype, device=grads[0].device)
    for w in works:
        gs = w.grads(grads)
        idx = range(len(grads)) if w.indices is None else w.indices
        if w.triton:
            norms = _triton().total_norm(w, gs, p, kind, norm_dtype, per_tensor=True)[1]
        else:
            norms = torch.zeros(len(gs), dtype=norm_dtype, device=w.device)
            nonempty = [i for i, g in enumerate(gs) if g.numel()]
            if nonempty:
                acc = torch.float64 if norm_dtype == torch.float64 else torch.float32
                vals = [torch.linalg.vector_norm(gs[i], p, dtype=acc) for i in nonempty]
                norms[nonempty] = torch.stack(vals).to(norm_dtype)
        out[list(idx)] = norms.to(out.device)
    return out


def _clip_grads(grads, max_norm, norm_type, error_if_nonfinite, foreach, group=None, per_tensor=False):
    p, kind = _inputs.parse_norm_type(norm_type)
    max_norm = _inputs.check_threshold(max_norm, "max_norm")
    _inputs.check_foreach(foreach)
    if _sharded(grads, group):
        if per_tensor:
            raise NotImplementedError("per_tensor=True is not supported with sharded gradients yet")
        from . import distributed

        return distributed.clip_sharded_(grads, max_norm, p, error_if_nonfinite, group)
    if not grads:
        return (torch.tensor(0.0), torch.zeros(0)) if per_tensor else torch.tensor(0.0)
    works = route(grads)
    norm_dtype = _norm_dtype(works)
    if len(works) == 1 and works[0].triton and not error_if_nonfinite:
        # the product: two launches, no host sync
        return _triton().clip(works[0], grads, max_norm, p, kind, norm_dtype, per_tensor=per_tensor)
    per = _per_tensor_norms(works, grads, p, kind, norm_dtype) if per_tensor else None
    norm = _total_norm(works, grads, p, kind, norm_dtype)
    if error_if_nonfinite and not bool(torch.isfinite(norm)):  # the one path that syncs, as torch
        raise _inputs.nonfinite_error(p)
    _clip_with_norm(works, grads, max_norm, norm)
    return (norm, per) if per_tensor else norm


@_no_grad
def clip_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False, foreach=None, *, group=None,
          per_tensor=False):
    r"""Clip the gradient norm of an iterable of parameters, in place (drop-in for
    :func:`torch.nn.utils.clip_grad_norm_`).

    The norm is computed over all gradients together, as if they were concatenated into a single
    vector. Gradients are modified in-place:

    .. math::
        g \leftarrow g \cdot \min\Big(\frac{\text{max\_norm}}{\|g\|_p + 10^{-6}},\ 1\Big)

    On CUDA this is two Triton kernel launches whatever the number and dtypes of the gradients,
    with no host synchronization, and gradients are not written at all when the norm is within
    ``max_norm``. On the CPU it runs in plain PyTorch with fp32 accumulation.

    Args:
        parameters (Iterable[Tensor] or Tensor): tensors whose ``.grad`` will be clipped; ``None``
            grads are skipped. A generator is consumed once.
        max_norm (float or Tensor): max norm of the gradients; a 0-d tensor on the grads' device
            is read by the kernel, never by the host.
        norm_type (float or str, optional): order p > 0 of the norm, or ``inf`` / ``'inf'``.
            Default: 2.0
        error_if_nonfinite (bool, optional): raise RuntimeError if the total norm is NaN or inf.
            This is the only mode that synchronizes with the host. Default: False
        foreach (bool, optional): accepted for compatibility with torch; fastclip always fuses.
            Default: None
        group (ProcessGroup, optional): the gradients on each rank are shards of one model; the
            norm is reduced over this group and every rank scales by the same coefficient.
            DTensor gradients (FSDP2, tensor parallel) need no group. Default: None
        per_tensor (bool, optional): also return each gradient's norm before clipping (for
            per-layer monitoring). On the Triton path they come from the same pass over the data
            (8 more bytes written per 64 K-element chunk). Default: False

    Returns:
        Tensor: the total norm of the gradients before clipping, 0-d, float32 (float64 if any
        gradient is float64), on the gradients' device. With ``per_tensor=True``, a tuple
        ``(total_norm, norms)`` where ``norms[i]`` is the norm of the i-th non-None gradient.

    Raises:
        TypeError: an item is not a Tensor, or a gradient is integer, bool, complex or sparse.
        ValueError: ``max_norm`` is negative or NaN, or ``norm_type`` is not > 0 or 'inf'.

    Example::

        >>> import torch, fastclip
        >>> w = torch.nn.Parameter(torch.zeros(3))
        >>> w.grad = torch.tensor([3.0, 0.0, 4.0])
        >>> fastclip.clip_([w], max_norm=1.0)
        tensor(5.)
        >>> w.grad
        tensor([0.6000, 0.0000, 0.8000])

    References:
        Pascanu, Mikolov & Bengio, "On the difficulty of training recurrent neural networks",
        ICML 2013 (arXiv 1211.5063).
    """
    if _custom_op.is_compiling():  # torch.compile: one opaque op node, no graph break
        return _custom_op.clip_(parameters, max_norm, norm_type, error_if_nonfinite, foreach, group=group,
                                per_tensor=per_tensor)
    parameters = _inputs.as_tensor_list(parameters)
    grads = _inputs.grads_of(parameters)
    try:
        return _clip_grads(grads, max_norm, norm_type, error_if_nonfinite, foreach, group, per_tensor)
    except TypeError:
        _inputs.check_param_grads(parameters)  # a bad gradient: name its parameter's position
        raise


@_no_grad
def total_norm(tensors, norm_type=2.0, error_if_nonfinite=False, foreach=None, *, group=None, per_tensor=False):
    r"""Compute the p-norm of tensors seen as one vector (drop-in for
    :func:`torch.nn.utils.get_total_norm`).

    .. math::
        \|g\|_p = \Big(\sum_i |g_i|^p\Big)^{1/p}

    Args:
        tensors (Iterable[Tensor] or Tensor): the tensors themselves (e.g. a list of grads).
        norm_type (float or str, optional): order p > 0, or ``inf`` / ``'inf'``. Default: 2.0
        error_if_nonfinite (bool, optional): raise RuntimeError if the norm is NaN or inf
            (synchronizes). Default: False
        foreach (bool, optional): accepted for compatibility with torch. Default: None
        group (ProcessGroup, optional): reduce the norm over the shards held by this group's
            ranks (DTensors need no group). Default: None
        per_tensor (bool, optional): also return the norm of each tensor. Default: False

    Returns:
        Tensor: 0-d norm, float32 (float64 if any tensor is float64), on the tensors' device;
        ``tensor(0.)`` for no tensors. With ``per_tensor=True``, ``(norm, norms)``.

    Example::

        >>> import torch, fastclip
        >>> fastclip.total_norm([torch.tensor([3.0]), torch.tensor([4.0])])
        tensor(5.)
    """
    if _custom_op.is_compiling():
        return _custom_op.total_norm(tensors, norm_type, error_if_nonfinite, foreach, group=group,
                                     per_tensor=per_tensor)
    tensors = _inputs.as_tensor_list(tensors, "tensors")
    p, kind = _inputs.parse_norm_type(norm_type)
    _inputs.check_foreach(foreach)
    if _sharded(tensors, group):
        if per_tensor:
            raise NotImplementedError("per_tensor=True is not supported with sharded tensors yet")
        from . import distributed

        return distributed.total_norm_sharded(tensors, p, error_if_nonfinite, group)
    if not tensors:
        return (torch.tensor(0.0), torch.zeros(0)) if per_tensor else torch.tensor(0.0)
    works = route(tensors)
    norm_dtype = _norm_dtype(works)
    if per_tensor and len(works) == 1 and works[0].triton:
        norm, per = _triton().total_norm(works[0], tensors, p, kind, norm_dtype, per_tensor=True)
    else:
        norm = _total_norm(works, tensors, p, kind, norm_dtype)
        per = _per_tensor_norms(works, tensors, p, kind, norm_dtype) if per_tensor else None
    if error_if_nonfinite and not bool(torch.isfinite(norm)):
        raise _inputs.nonfinite_error(p)
    return (norm, per) if per_tensor else norm


@_no_grad
def clip_with_norm_(parameters, max_norm, total_norm, foreach=None) -> None:
    r"""Scale gradients in place given a precomputed total norm (drop-in for
    :func:`torch.nn.utils.clip_grads_with_norm_`).

    .. math::
        g \leftarrow g \cdot \min\Big(\frac{\text{max\_norm}}{\text{total\_norm} + 10^{-6}},\ 1\Big)

    One kernel launch on CUDA, which writes nothing when the coefficient is 1.

    Args:
        parameters (Iterable[Tensor] or Tensor): tensors whose ``.grad`` will be scaled.
        max_norm (float or Tensor): max norm of the gradients (a 0-d tensor is never read on the host).
        total_norm (Tensor or float): the norm to clip with, e.g. from :func:`total_norm`.
        foreach (bool, optional): accepted for compatibility with torch. Default: None

    Returns:
        None

    Example::

        >>> import torch, fastclip
        >>> w = torch.nn.Parameter(torch.zeros(2))
        >>> w.grad = torch.tensor([3.0, 4.0])
        >>> fastclip.clip_with_norm_([w], 1.0, fastclip.total_norm([w.grad]))
        >>> w.grad
        tensor([0.6000, 0.8000])
    """
    if _custom_op.is_compiling():
        return _custom_op.clip_with_norm_(parameters, max_norm, total_norm, foreach)
    parameters = _inputs.as_tensor_list(parameters)
    grads = _inputs.grads_of(parameters)
    max_norm = _inputs.check_threshold(max_norm, "max_norm")
    _inputs.check_foreach(foreach)
    if not isinstance(total_norm, torch.Tensor):
        total_norm = torch.tensor(float(total_norm))
    elif total_norm.numel() != 1 or not total_norm.is_floating_point():
        raise ValueError(f"total_norm must be a one-element floating-point Tensor, got shape "
                         f"{tuple(total_norm.shape)} and dtype {total_norm.dtype}")
    if not grads:
        return None
    if _inputs.has_dtensor(grads):
        from . import distributed

        distributed.clip_with_norm_sharded_(grads, max_norm, total_norm)
        return None
    _clip_with_norm(_route_naming_parameters(grads, parameters), grads, max_norm, total_norm.reshape(()))
    return None


@_no_grad
def clip_value_(parameters, clip_value, foreach=None) -> None:
    r"""Clamp every gradient to ``[-clip_value, clip_value]`` in place (drop-in for
    :func:`torch.nn.utils.clip_grad_value_`). One kernel launch on CUDA; NaN stays NaN.

    Args:
        parameters (Iterable[Tensor] or Tensor): tensors whose ``.grad`` will be clamped.
        clip_value (float): the bound, >= 0.
        foreach (bool, optional): accepted for compatibility with torch. Default: None

    Returns:
        None

    Example::

        >>> import torch, fastclip
        >>> w = torch.nn.Parameter(torch.zeros(3))
        >>> w.grad = torch.tensor([-2.0, 0.5, 3.0])
        >>> fastclip.clip_value_([w], 1.0)
        >>> w.grad
        tensor([-1.0000,  0.5000,  1.0000])
    """
    if _custom_op.is_compiling():
        return _custom_op.clip_value_(parameters, clip_value, foreach)
    parameters = _inputs.as_tensor_list(parameters)
    grads = _inputs.grads_of(parameters)
    if isinstance(clip_value, torch.Tensor):
        clip_value = float(clip_value)  # the kernel takes a scalar; this reads the tensor (syncs)
    clip_value = _inputs.check_threshold(clip_value, "clip_value")
    _inputs.check_foreach(foreach)
    if not grads:
        return None
    for w in _route_naming_parameters(grads, parameters):
        gs = w.grads(grads)
        if w.triton:
            _triton().clamp(w, gs, clip_value)
        else:
            _torch_backend.clamp_(_by_dtype(w, gs), clip_value)
    return None
