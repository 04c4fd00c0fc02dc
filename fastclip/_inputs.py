"""Argument normalisation and validation, shared by every entry point and both backends.

Everything here runs before any gradient is touched, so bad input never leaves grads half-modified.
"""
from __future__ import annotations

import math
import numbers
import operator
import types
import warnings

import torch

from .kernels.launch_settings import NORM_GENERAL, NORM_INF, NORM_P1, NORM_P2, SUPPORTED_DTYPES

_INF_STRINGS = ("inf", "+inf", "infinity")
_grad_of = operator.attrgetter("grad")


def as_tensor_list(tensors, what: str = "parameters") -> list:
    """A Tensor becomes ``[tensor]``; an iterable is materialised (an empty generator warns); a
    list is returned as it is (it is only read: copying 20 000 items would cost ~50 us a call)."""
    if type(tensors) is list:
        return tensors
    if isinstance(tensors, torch.Tensor):
        return [tensors]
    if isinstance(tensors, (str, bytes)) or not hasattr(tensors, "__iter__"):
        raise TypeError(f"`{what}` must be a Tensor or an iterable of Tensors, got {type(tensors).__name__}")
    is_generator = isinstance(tensors, types.GeneratorType)
    tensors = list(tensors)
    if is_generator and not tensors:
        # stacklevel: warn -> as_tensor_list -> public function -> no_grad wrapper -> caller
        warnings.warn(f"`{what}` is an empty generator, no gradient clipping will occur.", stacklevel=4)
    return tensors


def grads_of(parameters: list) -> list:
    """The ``.grad`` of each parameter, skipping None; non-tensor items raise TypeError."""
    try:
        return [g for g in map(_grad_of, parameters) if g is not None]
    except AttributeError:
        pass
    for i, p in enumerate(parameters):
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"`parameters` item {i} is a {type(p).__name__}, not a Tensor")
    raise AssertionError("unreachable")  # pragma: no cover


def check_param_grads(parameters: list) -> None:
    """check_grads on the .grad of each parameter, naming the parameter's position."""
    for i, p in enumerate(parameters):
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"`parameters` item {i} is a {type(p).__name__}, not a Tensor")
        if p.grad is not None:
            check_grads([p.grad], what=f"`parameters` item {i}: its .grad")


def check_grads(grads: list, what: str = "gradient") -> None:
    """Raise TypeError for a non-tensor, non-floating, complex or sparse entry (naming its index)."""
    for i, g in enumerate(grads):
        name = what if len(grads) == 1 and what != "gradient" else f"{what} {i}"
        if not isinstance(g, torch.Tensor):
            raise TypeError(f"{name} is a {type(g).__name__}, not a Tensor")
        if g.layout != torch.strided:
            raise TypeError(f"{name} has layout {g.layout}; fastclip supports dense (strided) tensors only, "
                            f"call .to_dense() first")
        if g.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"{name} has dtype {g.dtype}; fastclip supports "
                            f"{', '.join(str(d) for d in SUPPORTED_DTYPES)}")


def parse_norm_type(norm_type) -> tuple[float, int]:
    """``norm_type`` -> (p, kind); accepts p > 0, ``inf`` and the string ``'inf'``."""
    if isinstance(norm_type, str):
        if norm_type.strip().lower() not in _INF_STRINGS:
            raise ValueError(f"norm_type must be a number > 0 or 'inf', got {norm_type!r}")
        p = math.inf
    elif isinstance(norm_type, bool) or not isinstance(norm_type, (numbers.Real, torch.Tensor)):
        raise TypeError(f"norm_type must be a number > 0 or 'inf', got {type(norm_type).__name__}")
    else:
        p = float(norm_type)
    if math.isnan(p) or p <= 0:
        # 0 counts non-zeros and -inf is min|x|: not norms, no clipping rule; torch's function has them
        raise ValueError(f"norm_type must be > 0 (or inf), got {norm_type!r}; for orders <= 0 use "
                         f"torch.nn.utils.clip_grad_norm_ (fastclip.patch_torch() hands them to it)")
    if p == math.inf:
        return p, NORM_INF
    if p == 2.0:
        return p, NORM_P2
    if p == 1.0:
        return p, NORM_P1
    return p, NORM_GENERAL


def check_threshold(value, name: str):
    """A number >= 0 (returned as float) or a one-element floating tensor (returned as is, never read)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or not value.is_floating_point():
            raise ValueError(f"{name} given as a Tensor must hold one floating-point value, "
                             f"got shape {tuple(value.shape)} and dtype {value.dtype}")
        return value.reshape(())
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number or a 0-d Tensor, got {type(value).__name__}")
    value = float(value)
    if math.isnan(value) or value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def check_total_norm(total_norm) -> torch.Tensor:
    """A precomputed norm as a 0-d tensor: a number, or a one-element floating tensor (not read)."""
    if not isinstance(total_norm, torch.Tensor):
        return torch.tensor(float(total_norm))
    if total_norm.numel() != 1 or not total_norm.is_floating_point():
        raise ValueError(f"total_norm must be a one-element floating-point Tensor, got shape "
                         f"{tuple(total_norm.shape)} and dtype {total_norm.dtype}")
    # a (replicated) DTensor norm is kept whole: fastclip.distributed takes its full tensor
    return total_norm if is_dtensor(total_norm) else total_norm.reshape(())


def check_foreach(foreach) -> None:
    """``foreach`` is accepted for torch compatibility (fastclip always fuses); it must be None or a bool."""
    if foreach is not None and not isinstance(foreach, bool):
        raise TypeError(f"foreach must be None, True or False, got {foreach!r}")


def is_dtensor(t) -> bool:
    """True for a torch.distributed DTensor (without importing torch.distributed eagerly)."""
    return type(t) is not torch.Tensor and type(t).__name__ == "DTensor"


def has_dtensor(tensors) -> bool:
    """True if any item is a DTensor; one C-level pass over the types (this is on the hot path)."""
    types = set(map(type, tensors))
    return types != {torch.Tensor} and any(t.__name__ == "DTensor" for t in types)


def result_dtype(grads: list) -> torch.dtype:
    """Returned norm dtype: float64 if any grad is float64, else float32 (never a half type)."""
    return torch.float64 if any(g.dtype == torch.float64 for g in grads) else torch.float32


def nonfinite_error(p: float) -> RuntimeError:
    """torch's error for error_if_nonfinite=True, word for word."""
    return RuntimeError(
        f"The total norm of order {float(p)} for gradients from "
        "`parameters` is non-finite, so it cannot be clipped. To disable "
        "this error and scale the gradients by the non-finite norm anyway, "
        "set `error_if_nonfinite=False`"
    )
