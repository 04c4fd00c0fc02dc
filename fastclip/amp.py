"""Mixed precision: clip loss-scaled gradients in the same pass that unscales them.

The usual AMP step reads and writes the gradients twice before the optimizer runs::

    scaler.unscale_(optimizer)                    # read N, write N (+ inf check)
    torch.nn.utils.clip_grad_norm_(params, c)     # read N (norm), read N + write N (scale)

that is 5N bytes.  :func:`unscale_clip_` computes the norm of the *scaled* gradients (one read),
derives GradScaler's found_inf from it (any inf/NaN element makes it non-finite), and writes
``g * inv_scale * coef`` once: 3N bytes, the same two launches as :func:`fastclip.clip_`.
"""
from __future__ import annotations

import torch

from . import _engine, _inputs
from ._dispatch import route
from .api import _no_grad, clip_


def _params_of(optimizer) -> list:
    return [p for group in optimizer.param_groups for p in group["params"]]


@_no_grad
def unscale_clip_(scaler, optimizer, max_norm, norm_type=2.0) -> torch.Tensor:
    r"""``scaler.unscale_(optimizer)`` followed by :func:`fastclip.clip_` on the optimizer's
    parameters, fused: one read of the gradients for the norm and the inf check, one write.

    .. math::
        g \leftarrow g \cdot s^{-1} \cdot \min\Big(\frac{\text{max\_norm}}{\|g\|_p\, s^{-1} + 10^{-6}},\ 1\Big)

    Afterwards the scaler is in the same state as after ``unscale_``: ``scaler.step(optimizer)``
    skips the step when a gradient was inf/NaN, and ``scaler.update()`` backs the scale off.
    When the step will be skipped the gradients are left as they are (scaled, non-finite).

    Args:
        scaler (torch.amp.GradScaler): the scaler that scaled the loss.
        optimizer (torch.optim.Optimizer): its ``param_groups`` give the gradients to clip.
        max_norm (float or Tensor): max norm of the unscaled gradients.
        norm_type (float or str, optional): order p > 0, or ``'inf'``. Default: 2.0

    Returns:
        Tensor: 0-d norm of the unscaled gradients before clipping (inf/NaN if found_inf).

    Raises:
        RuntimeError: ``unscale_`` (or this function) was already called since the last
            ``update()``, or the step was already taken — GradScaler's own checks.
        ValueError: a gradient is float16 (GradScaler refuses to unscale FP16 gradients).

    Example::

        >>> import torch, fastclip
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
        >>> scaler.scale(model(torch.ones(3, 4)).sum()).backward()
        >>> norm = fastclip.amp.unscale_clip_(scaler, opt, max_norm=1.0)
        >>> scaler.step(opt); scaler.update()
    """
    params = _params_of(optimizer)
    if not scaler.is_enabled():
        return clip_(params, max_norm, norm_type)
    from torch.amp.grad_scaler import OptState

    scaler._check_scale_growth_tracker("unscale_")
    state = scaler._per_optimizer_states[id(optimizer)]
    if state["stage"] is OptState.UNSCALED:
        raise RuntimeError("unscale_() has already been called on this optimizer since the last update().")
    if state["stage"] is OptState.STEPPED:
        raise RuntimeError("unscale_() is being called after step().")
    grads = _inputs.grads_of(params)
    if any(g.dtype == torch.float16 for g in grads):
        raise ValueError("Attempting to unscale FP16 gradients.")
    p, kind = _inputs.parse_norm_type(norm_type)
    max_norm = _inputs.check_threshold(max_norm, "max_norm")
    # GradScaler's own arithmetic: the reciprocal in fp64, then fp32
    inv_scale = scaler._scale.double().reciprocal().float()
    found_inf = torch.full((), 0.0, dtype=torch.float32, device=scaler._scale.device)
    if not grads:
        norm = torch.tensor(0.0)
    else:
        works = route(grads)
        if len(works) != 1 or works[0].device != scaler._scale.device:
            # several devices: not fused, exactly GradScaler's path followed by clip_
            scaler.unscale_(optimizer)
            return clip_(params, max_norm, norm_type)
        (work,) = works
        norm = work.backend.clip(work, grads, max_norm, p, kind, _engine.norm_dtype(works),
                                 inv_scale=inv_scale, found_inf=found_inf)
    state["found_inf_per_device"] = {scaler._scale.device: found_inf}
    state["stage"] = OptState.UNSCALED
    return norm

