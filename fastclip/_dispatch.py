"""One dispatcher for every entry point: which device's gradients go where.

``route(grads)`` returns one ``DeviceWork`` per device.  Two regimes, chosen to keep host cost low:

* Plain-PyTorch devices (the CPU outside the interpreter, or FASTCLIP_BACKEND=torch): the grads
  are grouped by (device, dtype) in one C++ call (torch's own ``_group_tensors_by_device_and_dtype``),
  which also rejects non-tensors; no per-call cache is needed.
* Triton devices: the work list and its plan are cached under the gradients' signature (address,
  dtype, size, flat-span flag of each) and the requested backend, so a training step that passes
  the same gradient buffers again costs one signature pass and one dict lookup, builds no table
  and copies nothing to the device.  A cache hit also means the gradients were validated.
"""
from __future__ import annotations

import collections
import dataclasses
import operator

import torch

from . import _inputs
from ._backend import requested_backend, triton_can_run_on, use_triton
from ._layout import is_flat_span

_ROUTES_KEPT = 8
_routes: "collections.OrderedDict[tuple, list]" = collections.OrderedDict()
_last: tuple | None = None  # (key, works) of the previous Triton call


@dataclasses.dataclass
class DeviceWork:
    device: torch.device
    indices: list | None  # positions of this device's grads; None = all of them
    triton: bool
    plan: object | None = None  # Triton: cached Plan when every grad is a flat span, else built per call
    strided: bool = False  # Triton: some grad needs a contiguous copy (plan rebuilt per call)
    has_fp64: bool = False  # some grad is float64 (the returned norm is float64)
    by_dtype: dict | None = None  # torch path: {dtype: [tensors]} of this device

    def grads(self, grads: list) -> list:
        return grads if self.indices is None else [grads[i] for i in self.indices]


_T = torch.Tensor
_dtype_of = operator.attrgetter("dtype")


def signature(grads: list) -> tuple:
    """Everything a Triton route depends on, as columns: addresses, dtypes, sizes, flat-span flags.

    Built with map() over unbound tensor methods: ~0.13 us per tensor and column on a slow CPU,
    the floor for reading four attributes of each tensor from Python.
    """
    flat = tuple(map(_T.is_contiguous, grads))
    if not all(flat):
        flat = tuple(c or is_flat_span(g) for c, g in zip(flat, grads))
    return tuple(map(_T.data_ptr, grads)), tuple(map(_dtype_of, grads)), tuple(map(_T.numel, grads)), flat


def route(grads: list) -> list[DeviceWork]:
    """The per-device work list for ``grads`` (non-empty), validating them first."""
    choice = requested_backend()
    first = grads[0]
    if not isinstance(first, torch.Tensor):
        _inputs.check_grads(grads)
    if choice == "torch" or not triton_can_run_on(first.device)[0]:
        works = _torch_route(grads)
        if works is not None:
            return works
    return _triton_route(grads, choice)


def _torch_route(grads: list) -> list[DeviceWork] | None:
    """One C++ grouping call; None if some device in the list should go to Triton."""
    try:
        groups = torch._C._group_tensors_by_device_and_dtype([grads], False)
    except (TypeError, RuntimeError):
        _inputs.check_grads(grads)  # names the bad item
        raise
    by_device: dict[torch.device, dict] = {}
    for (device, dtype), ((tensors,), _) in groups.items():
        if dtype not in _inputs.SUPPORTED_DTYPES or any(t.layout != torch.strided for t in tensors):
            _inputs.check_grads(grads)
        by_device.setdefault(device, {})[dtype] = tensors
    if len(by_device) > 1 and any(use_triton(d) for d in by_device):
        return None
    for device in by_device:
        use_triton(device)  # raises if FASTCLIP_BACKEND=triton can't be met
    return [DeviceWork(device, None, False, has_fp64=torch.float64 in d, by_dtype=d) for device, d in by_device.items()]


def _triton_route(grads: list, choice: str) -> list[DeviceWork]:
    try:
        key = (choice, signature(grads))
    except (TypeError, AttributeError, RuntimeError, NotImplementedError):
        _inputs.check_grads(grads)  # names the bad item
        raise
    global _last
    if _last is not None and _last[0] == key:  # steady state: compare, don't even hash
        return _last[1]
    works = _routes.get(key)
    if works is None:
        _inputs.check_grads(grads)
        works = _build_route(grads, key[1])
        _routes[key] = works
        if len(_routes) > _ROUTES_KEPT:
            _routes.popitem(last=False)  # oldest first
    _last = (key, works)
    return works


def clear_cache() -> None:
    """Forget every cached route and plan (frees their device workspaces)."""
    global _last
    _routes.clear()
    _last = None


def _build_route(grads: list, sig: tuple) -> list[DeviceWork]:
    by_device: dict[torch.device, list[int]] = {}
    for i, g in enumerate(grads):
        by_device.setdefault(g.device, []).append(i)
    works = []
    for device, indices in by_device.items():
        idx = None if len(by_device) == 1 else indices
        has_fp64 = any(sig[1][i] == torch.float64 for i in indices)
        if not use_triton(device):
            # a plain-PyTorch device inside a mixed list: its grads are regrouped per call
            works.append(DeviceWork(device, idx, False, has_fp64=has_fp64))
            continue
        strided = not all(sig[3][i] for i in indices)
        work = DeviceWork(device, idx, True, None, strided, has_fp64)
        if not strided:
            from ._plan import build_plan
            from .kernels.launch_settings import settings_for

            work.plan = build_plan(work.grads(grads), device, settings_for(device))
        works.append(work)
    return works
