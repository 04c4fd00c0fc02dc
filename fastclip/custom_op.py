r"""torch.compile support: fastclip's entry points as registered torch.library custom ops.

Dynamo can't trace fastclip's dispatcher (address signatures, cached plans, Triton launches), and
shouldn't: inside a compiled region :func:`fastclip.clip_` and friends call the ops below instead.
Each op is opaque to Dynamo, AOTAutograd and Inductor: the graph holds one node that mutates the
gradients (declared with ``mutates_args``, so functionalization orders it correctly against the
optimizer update), and a fake implementation tells the compiler the 0-d norm's dtype and device
without running anything. At run time the op runs the same code as eager mode: two launches on
CUDA, no host sync, so a ``mode="reduce-overhead"`` (CUDA graph) region can hold it too.

    ======================  =========================================  ====================
    op                      schema (grads are the non-None ``.grad``)  returns
    ======================  =========================================  ====================
    fastclip::clip_         grads!, max_norm, max_norm_t?, p, error,   (norm, per-tensor
                            per_tensor                                 norms or empty)
    fastclip::total_norm    tensors, p, error, per_tensor              (norm, norms/empty)
    fastclip::clip_with_norm_  grads!, max_norm, max_norm_t?, norm     None
    fastclip::clip_value_   grads!, clip_value                         None
    ======================  =========================================  ====================

``max_norm`` is either a float (``max_norm_t`` None) or a tensor (``max_norm_t``), since an op
argument has one type. Argument checks run at trace time (on fake tensors), and the gradients'
own checks (dtype, layout) when the op runs, before anything is modified, exactly as in eager.

Process groups and DTensor gradients are not ops (a ProcessGroup isn't an op argument, and
DTensor would need sharding rules): under compile they run eagerly behind a graph break.

The ops and the eager entry points (``fastclip.api``) share one implementation,
``fastclip._engine`` (and ``fastclip.distributed`` for shards): this module never imports the API.

Requires torch >= 2.4 (``torch.library.custom_op``); with an older torch nothing is registered
and fastclip runs its eager code under compile (with graph breaks).
"""
from __future__ import annotations

import sys
from typing import List, Optional, Tuple

import torch

from . import _dispatch, _engine, _inputs, distributed

__all__ = ["available", "is_compiling", "clip_", "total_norm", "clip_with_norm_", "clip_value_"]

#: torch.library.custom_op exists (torch >= 2.4): the ops below are registered.
available = hasattr(torch.library, "custom_op") and hasattr(torch, "compiler") and hasattr(torch.compiler, "is_compiling")


def is_compiling() -> bool:
    """True while Dynamo traces the caller and the ops exist: call the op wrappers below then."""
    return available and torch.compiler.is_compiling()


def _empty_like_norm(norm: torch.Tensor) -> torch.Tensor:
    return torch.empty(0, dtype=norm.dtype, device=norm.device)


def _fake_norm(grads) -> torch.Tensor:
    # eager fastclip returns tensor(0.) for no gradients, float64 if any gradient is, else float32
    if not grads:
        return torch.empty((), dtype=torch.float32)
    return torch.empty((), dtype=_inputs.result_dtype(grads), device=grads[0].device)


def _fake_pair(grads, per_tensor: bool):
    norm = _fake_norm(grads)
    return norm, torch.empty(len(grads) if per_tensor else 0, dtype=norm.dtype, device=norm.device)


if available:

    @torch.library.custom_op("fastclip::clip_", mutates_args=("grads",))
    def _clip_op(grads: List[torch.Tensor], max_norm: float, max_norm_t: Optional[torch.Tensor], p: float,
                 error_if_nonfinite: bool, per_tensor: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        _, kind = _inputs.parse_norm_type(p)
        max_norm = _inputs.check_threshold(max_norm if max_norm_t is None else max_norm_t, "max_norm")
        grads, key = _dispatch.collect(list(grads), of_params=False)
        with torch.no_grad():
            out = _engine.clip(grads, max_norm, p, kind, error_if_nonfinite, per_tensor, key)
        if per_tensor:
            return out[0], out[1].to(out[0].dtype)
        return out, _empty_like_norm(out)

    @_clip_op.register_fake
    def _(grads, max_norm, max_norm_t, p, error_if_nonfinite, per_tensor):
        return _fake_pair(grads, per_tensor)

    @torch.library.custom_op("fastclip::total_norm", mutates_args=())
    def _total_norm_op(tensors: List[torch.Tensor], p: float, error_if_nonfinite: bool,
                       per_tensor: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        _, kind = _inputs.parse_norm_type(p)
        tensors, key = _dispatch.collect(list(tensors), of_params=False)
        with torch.no_grad():
            out = _engine.total_norm(tensors, p, kind, error_if_nonfinite, per_tensor, key)
        if per_tensor:
            return out[0], out[1].to(out[0].dtype)
        return out, _empty_like_norm(out)

    @_total_norm_op.register_fake
    def _(tensors, p, error_if_nonfinite, per_tensor):
        return _fake_pair(tensors, per_tensor)

    @torch.library.custom_op("fastclip::clip_with_norm_", mutates_args=("grads",))
    def _clip_with_norm_op(grads: List[torch.Tensor], max_norm: float, max_norm_t: Optional[torch.Tensor],
                           norm: torch.Tensor) -> None:
        max_norm = _inputs.check_threshold(max_norm if max_norm_t is None else max_norm_t, "max_norm")
        grads, key = _dispatch.collect(list(grads), of_params=False)
        with torch.no_grad():
            _engine.clip_with_norm(grads, max_norm, _inputs.check_total_norm(norm), key)

    @_clip_with_norm_op.register_fake
    def _(grads, max_norm, max_norm_t, norm):
        return None

    @torch.library.custom_op("fastclip::clip_value_", mutates_args=("grads",))
    def _clip_value_op(grads: List[torch.Tensor], clip_value: float) -> None:
        clip_value = _inputs.check_threshold(clip_value, "clip_value")
        grads, key = _dispatch.collect(list(grads), of_params=False)
        with torch.no_grad():
            _engine.clamp(grads, clip_value, key)

    @_clip_value_op.register_fake
    def _(grads, clip_value):
        return None


# ----------------------------------------------------------------------------------------------
# what the public functions call while compiling (trace-friendly: plain Python on constants)

def _params_and_grads(parameters) -> tuple[list, list]:
    parameters = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)  # a generator once
    return parameters, [p.grad for p in parameters if p.grad is not None]


def _sharded(tensors, group) -> bool:
    if group is not None:
        return True
    if "torch.distributed.tensor" not in sys.modules:  # no DTensor can exist yet
        return False
    from torch.distributed.tensor import DTensor

    return any(isinstance(t, DTensor) for t in tensors)


def _threshold(value, name: str):
    """(float, tensor or None), validated like eager (a tensor is never read)."""
    value = _inputs.check_threshold(value, name)
    return (0.0, value) if isinstance(value, torch.Tensor) else (value, None)


def _p(norm_type) -> float:
    return _inputs.parse_norm_type(norm_type)[0]


@torch.compiler.disable if available else (lambda fn: fn)
def _eager(fn, *args, **kwargs):
    """Run an eager fastclip function behind a graph break (process groups, DTensor)."""
    with torch.no_grad():
        return fn(*args, **kwargs)


def _clamp_eagerly(grads: list, clip_value) -> None:
    if isinstance(clip_value, torch.Tensor):
        clip_value = float(clip_value)  # the kernel takes a scalar; this reads the tensor (syncs)
    _engine.clamp(grads, _inputs.check_threshold(clip_value, "clip_value"))


def clip_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False, foreach=None, *, group=None,
          per_tensor=False):
    r""":func:`fastclip.clip_` inside a compiled region: one ``fastclip::clip_`` node.

    Same arguments and result as :func:`fastclip.clip_`, which calls this while
    :func:`is_compiling` is True.

    Example::

        >>> import torch, fastclip
        >>> w = torch.nn.Parameter(torch.zeros(2))
        >>> w.grad = torch.tensor([3.0, 4.0])
        >>> step = torch.compile(lambda: fastclip.custom_op.clip_([w], 1.0), fullgraph=True, backend="eager")
        >>> step()
        tensor(5.)
        >>> w.grad
        tensor([0.6000, 0.8000])
    """
    parameters, grads = _params_and_grads(parameters)
    mf, mt = _threshold(max_norm, "max_norm")
    _inputs.check_foreach(foreach)
    if _sharded(grads, group):
        return _eager(distributed.clip_sharded_, grads, mf if mt is None else mt, _p(norm_type),
                      bool(error_if_nonfinite), group, per_tensor=per_tensor)
    norm, per = torch.ops.fastclip.clip_(grads, mf, mt, _p(norm_type), bool(error_if_nonfinite), bool(per_tensor))
    return (norm, per) if per_tensor else norm


def total_norm(tensors, norm_type=2.0, error_if_nonfinite=False, foreach=None, *, group=None, per_tensor=False):
    """:func:`fastclip.total_norm` inside a compiled region: one ``fastclip::total_norm`` node."""
    tensors = [tensors] if isinstance(tensors, torch.Tensor) else list(tensors)
    _inputs.check_foreach(foreach)
    if _sharded(tensors, group):
        return _eager(distributed.total_norm_sharded, tensors, _p(norm_type), bool(error_if_nonfinite), group,
                      per_tensor=per_tensor)
    norm, per = torch.ops.fastclip.total_norm(tensors, _p(norm_type), bool(error_if_nonfinite), bool(per_tensor))
    return (norm, per) if per_tensor else norm


def clip_with_norm_(parameters, max_norm, total_norm, foreach=None) -> None:
    """:func:`fastclip.clip_with_norm_` inside a compiled region: one ``fastclip::clip_with_norm_`` node."""
    parameters, grads = _params_and_grads(parameters)
    mf, mt = _threshold(max_norm, "max_norm")
    _inputs.check_foreach(foreach)
    total_norm = _inputs.check_total_norm(total_norm)
    if _sharded(grads, None):
        return _eager(distributed.clip_with_norm_sharded_, grads, mf if mt is None else mt, total_norm)
    torch.ops.fastclip.clip_with_norm_(grads, mf, mt, total_norm)
    return None


def clip_value_(parameters, clip_value, foreach=None) -> None:
    """:func:`fastclip.clip_value_` inside a compiled region: one ``fastclip::clip_value_`` node."""
    parameters, grads = _params_and_grads(parameters)
    _inputs.check_foreach(foreach)
    if isinstance(clip_value, torch.Tensor) or _sharded(grads, None):
        # a tensor bound is read on the host (as in eager): not inside a graph
        return _eager(_clamp_eagerly, grads, clip_value)
    clip_value = _inputs.check_threshold(clip_value, "clip_value")
    torch.ops.fastclip.clip_value_(grads, clip_value)
    return None

