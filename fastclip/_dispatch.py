"""One dispatcher for every entry point: which device's gradients go where, and through which backend.

``collect(items, of_params)`` reads the gradients (with the native helper, ``fastclip.native``,
their cache key too, in the same C++ pass); ``route(grads, key)`` returns one ``DeviceWork`` per
device, each carrying the backend that serves it (``fastclip._backend.Backend``: the Triton
kernels or plain PyTorch), so entry points call ``work.backend.<operation>(work, grads, ...)``
without knowing which.  Two regimes, chosen to keep host cost low:

* Plain-PyTorch devices (the CPU outside the interpreter, or FASTCLIP_BACKEND=torch): the grads
  are grouped by (device, dtype) in one C++ call (torch's own ``_group_tensors_by_device_and_dtype``),
  which also rejects non-tensors; no per-call cache is needed.
* Triton devices: the work list and its plan are cached under the gradients' key (address,
  dtype, size, flat-span flag of each; native: also device and contiguity) and the requested
  backend, so a training step that passes the same gradient buffers again costs one key pass
  and one comparison, builds no table and copies nothing to the device.  A cache hit also means
  the gradients were validated.
"""
from __future__ import annotations

import collections
import dataclasses
import operator

import torch

from . import _inputs
from ._backend import backend_for, requested_backend, triton_can_run_on, use_triton
from ._layout import is_flat_span

_ROUTES_KEPT = 8
_routes: "collections.OrderedDict[tuple, list]" = collections.OrderedDict()
_last: tuple | None = None  # (key, works) of the previous Triton call
_native_keys: tuple = ()  # the native keys among _routes': what collect() compares against


@dataclasses.dataclass
class DeviceWork:
    device: torch.device
    indices: list | None  # positions of this device's grads; None = all of them
    backend: object  # fastclip._backend.Backend: the module whose functions serve this device
    plan: object | None = None  # Triton: cached Plan when every grad is a flat span, else built per call
    strided: bool = False  # some grad needs a contiguous copy (Triton: plan rebuilt per call)
    has_fp64: bool = False  # some grad is float64 (the returned norm is float64)
    by_dtype: dict | None = None  # torch path: {dtype: [tensors]} of this device

    @property
    def triton(self) -> bool:
        return self.backend.name == "triton"

    def grads(self, grads: list) -> list:
        return grads if self.indices is None else [grads[i] for i in self.indices]


def _native():
    """The native helper module or None (``fastclip.native``, imported on the first call only,
    so ``python -m fastclip.native`` finds it unimported).  Tests replace this function."""
    global _native
    from . import native

    _native = native.module
    return native.module()


def collect(items: list, of_params: bool) -> tuple[list, bytes | None]:
    """(gradients, key): the non-None ``.grad`` of each item (``of_params``) or the items
    themselves, and their native cache key (None without the helper, or for anything it leaves
    to Python: subclasses such as DTensor, non-tensors, sparse tensors)."""
    helper = _native()
    if helper is not None:
        grads, key = helper.collect(items, of_params, _native_keys)
        if grads is not None:
            return grads, key
    return (_inputs.grads_of(items) if of_params else items), None


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


def route(grads: list, key: bytes | None = None) -> list[DeviceWork]:
    """The per-device work list for ``grads`` (non-empty), validating them first.

    ``key`` is the native key :func:`collect` returned with ``grads`` (None: computed here)."""
    choice = requested_backend()
    first = grads[0]
    if not isinstance(first, torch.Tensor):
        _inputs.check_grads(grads)
    if choice == "torch" or not triton_can_run_on(first.device)[0]:
        works = _torch_route(grads)
        if works is not None:
            return works
    return _triton_route(grads, choice, key)


def empty_work(device: torch.device) -> DeviceWork:
    """The work of a rank that holds no gradients but must still run the launches (collectives)."""
    backend = backend_for(device)
    work = DeviceWork(device, None, backend)
    backend.prepare(work, [])
    return work


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
    # backend_for raises if FASTCLIP_BACKEND=triton can't be met
    return [DeviceWork(device, None, backend_for(device), has_fp64=torch.float64 in d, by_dtype=d)
            for device, d in by_device.items()]


def _triton_route(grads: list, choice: str, key: bytes | None) -> list[DeviceWork]:
    sig = None
    if key is None:
        try:
            key = sig = signature(grads)
        except (TypeError, AttributeError, RuntimeError, NotImplementedError):
            _inputs.check_grads(grads)  # names the bad item
            raise
    route_key = (choice, key)
    global _last
    if _last is not None and _last[0] == route_key:  # steady state: compare (native: identity), don't hash
        return _last[1]
    works = _routes.get(route_key)
    if works is None:
        _inputs.check_grads(grads)
        works = _build_route(grads, sig if sig is not None else signature(grads))
        _remember(route_key, works)
    _last = (route_key, works)
    return works


def _remember(route_key: tuple, works: list) -> None:
    global _native_keys
    _routes[route_key] = works
    if len(_routes) > _ROUTES_KEPT:
        _routes.popitem(last=False)  # oldest first
    _native_keys = tuple(key for _, key in _routes if isinstance(key, bytes))


def clear_cache() -> None:
    """Forget every cached route and plan (frees their device workspaces)."""
    global _last, _native_keys
    _routes.clear()
    _last = None
    _native_keys = ()


def _build_route(grads: list, sig: tuple) -> list[DeviceWork]:
    by_device: dict[torch.device, list[int]] = {}
    for i, g in enumerate(grads):
        by_device.setdefault(g.device, []).append(i)
    works = []
    for device, indices in by_device.items():
        backend = backend_for(device)  # a plain-PyTorch device in a mixed list is regrouped per call
        work = DeviceWork(device, None if len(by_device) == 1 else indices, backend,
                          strided=not all(sig[3][i] for i in indices),
                          has_fp64=any(sig[1][i] == torch.float64 for i in indices))
        backend.prepare(work, work.grads(grads))
        works.append(work)
    return works
