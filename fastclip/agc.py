r"""Unit-wise adaptive gradient clipping (AGC): :func:`agc_` and :class:`AGCClipper`.

AGC (Brock, De, Smith & Simonyan 2021, NFNets) clips each *unit* of a weight (each output row; the
whole tensor for biases and gains) so that its gradient norm stays below ``clip_factor`` times the
unit's weight norm.  PyTorch users reach it through timm (``timm.utils.adaptive_clip_grad``,
``--clip-mode agc``): a Python loop of ~7 tensor ops per parameter.  fastclip does all units of
all parameters in two Triton launches (``kernels/agc_kernel.py``) or, on the CPU, in a few grouped
torch ops (``fastclip._agc_torch``).  :mod:`fastclip.patch_timm` makes timm's own functions run it.
"""
from __future__ import annotations

import operator
import sys
from typing import NamedTuple

import torch

from . import _inputs
from ._agc_units import units_of
from ._backend import backend_for
from ._dispatch import DeviceWork

__all__ = ["agc_", "AGCClipper", "AGCResult", "clear_agc_cache"]

_dtype = operator.attrgetter("dtype")


def _check_factor(value, name: str) -> float:
    value = _inputs.check_threshold(value, name)  # a number >= 0 (inf allowed), or a tensor
    if isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a Python number for AGC, got a Tensor")
    return value


def _pairs(parameters) -> tuple[list, list]:
    """(weights, grads) of the parameters that have a gradient, validated (nothing is modified)."""
    params = _inputs.as_tensor_list(parameters)
    grads = _inputs.grads_of(params)  # TypeError naming a non-tensor item
    weights = [p for p in params if p.grad is not None] if len(grads) != len(params) else params
    if not all(map(operator.eq, map(_dtype, weights), map(_dtype, grads))) or \
            not all(map(operator.eq, map(torch.Tensor.size, weights), map(torch.Tensor.size, grads))):
        for i, (w, g) in enumerate(zip(weights, grads)):
            if w.dtype != g.dtype or w.shape != g.shape:
                raise TypeError(f"parameter {i} with a gradient has dtype {w.dtype} and shape {tuple(w.shape)} but "
                                f"its .grad has dtype {g.dtype} and shape {tuple(g.shape)}; AGC needs them equal")
    try:
        _inputs.check_grads(grads)
    except TypeError:
        _inputs.check_param_grads(params)  # name the parameter's position
        raise
    if _inputs.has_dtensor(grads) or _inputs.has_dtensor(weights):
        raise TypeError("fastclip.agc_ does not support DTensor parameters yet; pass their local shards "
                        "(units are dim-0 slices: a Shard(0) placement keeps every unit on one rank)")
    return weights, grads


def _agc(parameters, clip_factor, eps, norm_type, count: bool):
    """Clip in place; with ``count``, return (int32 ``[clipped, non-finite]`` units, units) or None."""
    p, kind = _inputs.parse_norm_type(norm_type)
    clip_factor = _check_factor(clip_factor, "clip_factor")
    eps = _check_factor(eps, "eps")
    weights, grads = _pairs(parameters)
    if not grads:
        return (torch.zeros(2, dtype=torch.int32), 0) if count else None
    device = grads[0].device
    if all(g.device == device for g in grads):
        groups = {device: (weights, grads)}
    else:
        groups = {}
        for w, g in zip(weights, grads):
            group = groups.setdefault(g.device, ([], []))
            group[0].append(w)
            group[1].append(g)
    totals = None
    for dev, (ws, gs) in groups.items():
        backend = backend_for(dev)  # raises if FASTCLIP_BACKEND=triton can't be met
        counts = backend.agc(DeviceWork(dev, None, backend), ws, gs, clip_factor, eps, p, kind, count=count)
        if count:
            totals = counts if totals is None else totals + counts.to(totals.device)
    if not count:
        return None
    return totals, sum(units_of(g)[0] for g in grads if g.numel())


def agc_(parameters, clip_factor=0.01, eps=1e-3, norm_type=2.0, *, return_fraction=False):
    r"""Clip gradients unit-wise, in place, relative to the weights (adaptive gradient clipping).

    A *unit* is a slice along dim 0 of a parameter of 2 or more dimensions (one output channel of
    a conv, one row of a Linear weight), and the whole tensor for 0-/1-D parameters.  For each
    unit with weight :math:`w` and gradient :math:`g`:

    .. math::
        m = \text{clip\_factor} \cdot \max(\|w\|_p, \text{eps}), \qquad
        g \leftarrow \begin{cases} g & \text{if } \|g\|_p < m \\
        g \cdot m / \max(\|g\|_p, 10^{-6}) & \text{otherwise} \end{cases}

    This is timm's ``adaptive_clip_grad`` (``timm/utils/agc.py``) exactly, including the
    non-strict comparison (a unit whose gradient norm equals ``m`` is rescaled, by 1) and NaN
    handling (a unit with a NaN gradient or weight norm becomes NaN).  Units that don't clip are
    not written at all (bitwise untouched).  Norms are accumulated in fp32 (fp64 for fp64
    tensors) and the rule is evaluated in fp32 (fp64), where timm evaluates it in the
    parameters' dtype (bf16 norms and coefficients for bf16 parameters).

    Where the other references differ:

    * NFNets' reference (deepmind-research ``nfnets/optim.py``, ``SGD_AGC``) rescales only when
      ``||g|| > m`` (strict: a unit at the limit is left alone), takes units along the *last*
      axis (JAX's HWIO / IO layouts, the same output channels), treats tensors that squeeze to
      1-D as one unit (a PyTorch ``(C, 1, 1, 1)`` gain is C units here, as in timm), and its
      training script excludes the final classifier layer (``clipping: None``).  Its
      ``agc_optax.py`` and optax's ``adaptive_grad_clip`` use the non-strict rule, like timm.
    * optax clips whatever tree it is given (exclude layers with ``optax.masked``); timm's
      ``adaptive_clip_grad`` also clips every parameter passed, and timm's ``train.py`` leaves
      out the head for ``--clip-mode agc`` (``exclude_head=True``).  So does this function:
      pass the parameters you want clipped.

    On CUDA this is two Triton launches whatever the number and dtypes of the parameters, with
    no host synchronization (the unit table is cached, as :func:`fastclip.clip_`'s plan).

    Args:
        parameters (Iterable[Tensor] or Tensor): parameters whose ``.grad`` is clipped, unit by
            unit, against their own values; ``None`` grads are skipped.
        clip_factor (float, optional): the largest allowed ratio of gradient norm to weight norm
            per unit, >= 0. Default: 0.01
        eps (float, optional): weight norms below it count as ``eps`` (so zero-initialised units
            can still move), >= 0. Default: 1e-3
        norm_type (float or str, optional): order p > 0 of the norms, or ``inf``. Default: 2.0
        return_fraction (bool, optional): return the fraction of units that were rescaled, as a
            0-d float32 tensor on the gradients' device (a few one-element torch ops more, no
            sync). Default: False

    Returns:
        None, or with ``return_fraction=True`` the fraction of units (with at least one element)
        that were rescaled.

    Raises:
        TypeError: a non-tensor item, a gradient of an unsupported dtype or layout, or a gradient
            whose dtype or shape differs from its parameter's.
        ValueError: ``clip_factor`` or ``eps`` negative or NaN, ``norm_type`` not > 0 or 'inf'.

    Example::

        >>> import torch, fastclip
        >>> w = torch.nn.Parameter(torch.tensor([[3.0, 4.0], [0.0, 1.0]]))
        >>> w.grad = torch.tensor([[0.3, 0.0], [0.0, 0.001]])
        >>> fastclip.agc_([w], clip_factor=0.01)   # row 0: ||g|| = 0.3 >= 0.01 * 5
        >>> w.grad
        tensor([[0.0500, 0.0000],
                [0.0000, 0.0010]])

    References:
        Brock, De, Smith & Simonyan, "High-Performance Large-Scale Image Recognition Without
        Normalization", ICML 2021 (arXiv 2102.06171).
    """
    with torch.no_grad():
        result = _agc(parameters, clip_factor, eps, norm_type, count=return_fraction)
    if not return_fraction:
        return None
    counts, units = result
    return counts[0].to(torch.float32) / max(units, 1)


class AGCResult(NamedTuple):
    """What one :class:`AGCClipper` step did, as 0-d tensors on the gradients' device.

    Attributes:
        clipped_fraction (Tensor): float32, the fraction of units whose gradient was rescaled.
        clipped (Tensor): bool, True if any unit was rescaled.
        found_inf (Tensor): float32 1.0 if some unit's gradient norm was NaN or inf, else 0.0
            (GradScaler's ``found_inf`` convention: see :func:`fastclip.step_if_finite`).
    """

    clipped_fraction: torch.Tensor
    clipped: torch.Tensor
    found_inf: torch.Tensor


class AGCClipper:
    r"""AGC as a clipper object: call it each step between ``backward()`` and ``optimizer.step()``.

    The same interface as fastclip's stateful clippers (``clipper(parameters)``,
    ``state_dict()``, ``load_state_dict()``), so trainer callbacks that run a clipper each step
    can run AGC.  AGC keeps no state: the state dict holds its hyper-parameters only.

    Args:
        clip_factor (float, optional): see :func:`agc_`. Default: 0.01
        eps (float, optional): see :func:`agc_`. Default: 1e-3
        norm_type (float or str, optional): see :func:`agc_`. Default: 2.0

    Example::

        >>> import torch, fastclip
        >>> model = torch.nn.Linear(4, 2)
        >>> model(torch.randn(8, 4)).square().sum().backward()
        >>> clipper = fastclip.AGCClipper(clip_factor=0.01)
        >>> result = clipper(model.parameters())   # device tensors, nothing read on the host
        >>> sorted(result._fields)
        ['clipped', 'clipped_fraction', 'found_inf']
    """

    def __init__(self, clip_factor: float = 0.01, *, eps: float = 1e-3, norm_type=2.0):
        self.clip_factor = _check_factor(clip_factor, "clip_factor")
        self.eps = _check_factor(eps, "eps")
        _inputs.parse_norm_type(norm_type)  # validate now, not at the first step
        self.norm_type = norm_type

    def __call__(self, parameters) -> AGCResult:
        """Clip the gradients of ``parameters`` in place; returns an :class:`AGCResult`."""
        with torch.no_grad():
            counts, units = _agc(parameters, self.clip_factor, self.eps, self.norm_type, count=True)
            clipped = counts[0]
            return AGCResult(clipped.to(torch.float32) / max(units, 1), clipped > 0,
                             (counts[1] > 0).to(torch.float32))

    def _config(self) -> dict:
        return {"clip_factor": self.clip_factor, "eps": self.eps, "norm_type": self.norm_type}

    def state_dict(self) -> dict:
        """``{'policy', 'config', 'state', 'host'}`` like the other clippers (``state`` is empty)."""
        return {"policy": type(self).__name__, "config": self._config(), "state": {}, "host": {}}

    def load_state_dict(self, state_dict: dict, strict: bool = True) -> None:
        """Check a state from :meth:`state_dict` (ValueError if it is another policy, or with
        ``strict``, other hyper-parameters)."""
        if state_dict.get("policy") != type(self).__name__:
            raise ValueError(f"state_dict is for {state_dict.get('policy')!r}, not {type(self).__name__!r}")
        if strict and state_dict.get("config") != self._config():
            raise ValueError(f"AGCClipper.load_state_dict: saved hyper-parameters {state_dict.get('config')} differ "
                             f"from this clipper's {self._config()}; pass strict=False to load anyway")

    def __repr__(self) -> str:
        return f"AGCClipper(clip_factor={self.clip_factor!r}, eps={self.eps!r}, norm_type={self.norm_type!r})"


def clear_agc_cache() -> None:
    """Forget every cached AGC unit table (``fastclip.clear_cache`` does not, yet)."""
    plans = sys.modules.get(f"{__package__}._agc_plan")
    if plans is not None:
        plans.clear()
