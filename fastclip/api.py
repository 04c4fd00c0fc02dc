"""Public API: drop-in replacements for torch.nn.utils' gradient clipping functions."""
from __future__ import annotations

import functools

import torch

from . import _dispatch, _engine, _inputs, distributed
from . import custom_op as _custom_op

__all__ = ["clip_", "total_norm", "clip_with_norm_", "clip_value_"]


def _no_grad(fn):
    """Run ``fn`` under torch.no_grad(), keeping its name and docstring."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.no_grad():
            return fn(*args, **kwargs)

    return wrapper


def _sharded(grads, key, group) -> bool:
    # DTensor grads (FSDP2, tensor parallel) or an explicit process group: fastclip.distributed.
    # A native key means the helper saw plain tensors only.
    return group is not None or (key is None and _inputs.has_dtensor(grads))


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
    grads, key = _dispatch.collect(parameters, of_params=True)
    try:
        p, kind = _inputs.parse_norm_type(norm_type)
        max_norm = _inputs.check_threshold(max_norm, "max_norm")
        _inputs.check_foreach(foreach)
        if _sharded(grads, key, group):
            return distributed.clip_sharded_(grads, max_norm, p, error_if_nonfinite, group, per_tensor=per_tensor)
        return _engine.clip(grads, max_norm, p, kind, error_if_nonfinite, per_tensor, key)
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
    tensors, key = _dispatch.collect(_inputs.as_tensor_list(tensors, "tensors"), of_params=False)
    p, kind = _inputs.parse_norm_type(norm_type)
    _inputs.check_foreach(foreach)
    if _sharded(tensors, key, group):
        return distributed.total_norm_sharded(tensors, p, error_if_nonfinite, group, per_tensor=per_tensor)
    return _engine.total_norm(tensors, p, kind, error_if_nonfinite, per_tensor, key)


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
    grads, key = _dispatch.collect(parameters, of_params=True)
    max_norm = _inputs.check_threshold(max_norm, "max_norm")
    _inputs.check_foreach(foreach)
    total_norm = _inputs.check_total_norm(total_norm)
    try:
        if _sharded(grads, key, None):
            distributed.clip_with_norm_sharded_(grads, max_norm, total_norm)
        else:
            _engine.clip_with_norm(grads, max_norm, total_norm, key)
    except TypeError:
        _inputs.check_param_grads(parameters)  # a bad gradient: name its parameter's position
        raise
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
    grads, key = _dispatch.collect(parameters, of_params=True)
    if isinstance(clip_value, torch.Tensor):
        clip_value = float(clip_value)  # the kernel takes a scalar; this reads the tensor (syncs)
    clip_value = _inputs.check_threshold(clip_value, "clip_value")
    _inputs.check_foreach(foreach)
    try:
        _engine.clamp(grads, clip_value, key)
    except TypeError:
        _inputs.check_param_grads(parameters)  # a bad gradient: name its parameter's position
        raise
    return None
