"""One dispatcher for every entry point: which device's gradients go where, cached per call site.

``route(grads)`` groups the gradients by device and, for each device, picks the backend and (for
Triton) the plan.  The result is cached under the gradients' signature and the requested backend,
so a training step that passes the same gradient buffers again costs one signature pass and one
dict lookup.  A cache hit also means the gradients were already validated.
"""
from __future__ import annotations

import collections
import dataclasses

import torch

from . import _inputs
from ._backend import requested_backend, use_triton
from ._layout import is_flat_span

_ROUTES_KEPT = 8
_routes: "collections.OrderedDict[tuple, list]" = collections.OrderedDict()


@dataclasses.dataclass
class DeviceWork:
    device: torch.device
    indices: list | None  # positions of this device's grads; None = all of them
    triton: bool
    plan: object | None  # cached Plan when every grad is a flat span; else built per call
    strided: bool  # some grad needs a contiguous copy (plan rebuilt per call)
    has_fp64: bool  # some grad is float64 (the returned norm is float64)

    def grads(self, grads: list) -> list:
        return grads if self.indices is None else [grads[i] for i in self.indices]


def signature(grads: list) -> tuple:
    """Everything a route depends on, per tensor: address, dtype, size, flat-span flag."""
    return tuple([(g.data_ptr(), g.dtype, g.numel(), g.is_contiguous() or is_flat_span(g)) for g in grads])


def route(grads: list) -> list[DeviceWork]:
    """The cached per-device work list for ``grads`` (validating them on a miss)."""
    choice = requested_backend()
    try:
        key = (choice, signature(grads))
    except (AttributeError, RuntimeError, NotImplementedError):
        _inputs.check_grads(grads)  # names the bad item
        raise
    works = _routes.get(key)
    if works is not None:
        _routes.move_to_end(key)
        return works
    _inputs.check_grads(grads)
    works = _build_route(grads, key[1])
    _routes[key] = works
    if len(_routes) > _ROUTES_KEPT:
        _routes.popitem(last=False)
    return works


def clear_cache() -> None:
    """Forget every cached route and plan (frees their device workspaces)."""
    _routes.clear()


def _build_route(grads: list, sig: tuple) -> list[DeviceWork]:
    by_device: dict[torch.device, list[int]] = {}
    for i, g in enumerate(grads):
        by_device.setdefault(g.device, []).append(i)
    works = []
    for device, indices in by_device.items():
        triton = use_triton(device)
        strided = not all(sig[i][3] for i in indices)
        idx = None if len(by_device) == 1 else indices
        has_fp64 = any(sig[i][1] == torch.float64 for i in indices)
        work = DeviceWork(device, idx, triton, None, strided, has_fp64)
        if triton and not strided:
            from ._plan import build_plan
            from .kernels.launch_settings import settings_for

            work.plan = build_plan(work.grads(grads), device, settings_for(device))
        works.append(work)
    return works
