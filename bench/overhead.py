"""Host overhead of a fastclip call, measured alone: everything a call costs except kernel execution.

What one ``fastclip.clip_(params, max_norm)`` costs the host with a cached plan: reading
``.grad`` of every parameter and its cache key (in C++ with the native helper,
``python -m fastclip.native``; else in Python), argument checks, the route lookup, allocating
the 0-d norm, and issuing the two launches.  Measured for ``COUNTS`` tensors of ``NUMEL`` fp32
elements each (the per-tensor work is what grows; tensor sizes don't matter once planned).
torch's host cost is measured beside it on ``TORCH_NUMEL``-element tensors, where its compute is
negligible: torch.nn.utils.clip_grad_norm_ with its defaults, really executed.

* CPU: the Triton interpreter is on (``TRITON_INTERPRET=1`` before triton is imported) and
  ``FASTCLIP_BACKEND=triton`` routes the call through the Triton backend.  The two JIT kernels
  (``_norm_partials_kernel`` in ``fastclip.kernels.norm_kernel``, ``_scale_kernel`` in
  ``fastclip.kernels.scale_kernel``) are replaced by objects whose ``[grid](...)`` does nothing,
  so the launchers' own host code (argument lists, grid size, the value they return) is timed
  and only kernel execution is excluded.  (Stubbing ``fastclip._triton_backend.launch_*`` instead
  would also skip that host code, and break callers that use the launcher's return value.)
* CUDA: real launches; calls are timed back to back with ``time.perf_counter`` and *no*
  synchronization, so the time is what the host spends (the GPU work per call is a few
  microseconds for these sizes, so the launch queue never fills and blocks the host).
  torch.nn.utils.clip_grad_norm_ (foreach) is timed the same way for comparison.

Providers: ``fastclip`` (the whole call), ``route`` (``fastclip._dispatch.collect`` + ``route``:
reading the gradients and their key, and the cache lookup, the part that grows with the tensor
count), ``torch`` (CPU: clip_grad_norm_ on 1-element tensors) / ``torch-foreach`` (CUDA, same
1-element tensors, foreach=True).

Run as a script for a quick table without pytest: ``python bench/overhead.py``;
``python bench/overhead.py --stages`` splits fastclip's call into its stages.
"""
from __future__ import annotations

import contextlib
import os
import sys

import torch

COUNTS = (150, 2000, 20000)
NUMEL = 256
TORCH_NUMEL = 1
MAX_NORM = 1e9  # nothing is ever clipped: repeated real launches leave the grads unchanged


def providers(device: torch.device) -> tuple[str, ...]:
    return ("fastclip", "route", "torch-foreach" if device.type == "cuda" else "torch")


def make_params(n: int, device: torch.device, numel: int = NUMEL) -> list:
    gen = torch.Generator(device=device).manual_seed(n)
    params = []
    for _ in range(n):
        p = torch.nn.Parameter(torch.zeros((), device=device).expand(numel))
        p.grad = torch.randn(numel, generator=gen, device=device)
        params.append(p)
    return params


_torch_params: dict = {}


def torch_params(n: int, device: torch.device) -> list:
    """``n`` parameters of ``TORCH_NUMEL`` elements (the last set is kept for the next provider call)."""
    key = (n, str(device))
    if key not in _torch_params:
        _torch_params.clear()
        _torch_params[key] = make_params(n, device, TORCH_NUMEL)
    return _torch_params[key]


def key_path() -> str:
    """How fastclip reads the gradients' key in this process: ``native`` or ``python``."""
    import fastclip.native

    return "native" if fastclip.native.available() else "python"


class _NoLaunch:
    """Stands in for a JIT kernel: ``kernel[grid](*args, **kwargs)`` runs nothing, counts calls."""

    def __init__(self, name: str):
        self.__name__ = name
        self.launches = 0

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches += 1

        return launch


@contextlib.contextmanager
def host_only(device: torch.device):
    """Route through the Triton backend; on the CPU its two kernels become no-ops."""
    old_backend = os.environ.get("FASTCLIP_BACKEND")
    os.environ["FASTCLIP_BACKEND"] = "triton"
    patched, stubs = [], {}
    try:
        if device.type == "cpu":
            if os.environ.get("TRITON_INTERPRET") != "1":
                raise RuntimeError("the CPU host-overhead measure needs TRITON_INTERPRET=1 set before "
                                   "triton is imported (bench/conftest.py and run.py set it)")
            from fastclip.kernels import norm_kernel, scale_kernel

            for mod, name in ((norm_kernel, "_norm_partials_kernel"), (scale_kernel, "_scale_kernel")):
                patched.append((mod, name, getattr(mod, name)))
                stubs[name] = _NoLaunch(name)
                setattr(mod, name, stubs[name])
        yield stubs
    finally:
        for mod, name, fn in patched:
            setattr(mod, name, fn)
        if old_backend is None:
            os.environ.pop("FASTCLIP_BACKEND", None)
        else:
            os.environ["FASTCLIP_BACKEND"] = old_backend


def call(provider: str, params: list):
    """The callable whose host time is measured."""
    import fastclip
    from fastclip._dispatch import collect, route

    if provider == "fastclip":
        return lambda: fastclip.clip_(params, MAX_NORM)
    if provider == "route":
        return lambda: route(*collect(params, True))
    if provider in ("torch", "torch-foreach"):
        small = torch_params(len(params), params[0].device)
        foreach = True if provider == "torch-foreach" else None
        return lambda: torch.nn.utils.clip_grad_norm_(small, MAX_NORM, foreach=foreach)
    raise ValueError(f"unknown overhead provider {provider!r}")


def check_route(params: list, stubs: dict) -> None:
    """The call really went through the Triton backend: a cached plan, and (CPU) both kernels
    "launched" equally often."""
    from fastclip._dispatch import route

    works = route([p.grad for p in params])
    assert len(works) == 1 and works[0].triton and works[0].plan is not None, (
        f"fastclip did not route {len(params)} tensors through a cached Triton plan: {works}")
    counts = {name: stub.launches for name, stub in stubs.items()}
    assert not counts or (min(counts.values()) > 0 and len(set(counts.values())) == 1), (
        f"expected one launch of each kernel per call, got {counts}")


def loop_size(fn, device: torch.device) -> tuple[int, int]:
    """(rounds, iterations): ~10 ms per round, ~0.3 s in all, after two warm-up calls."""
    import time

    fn()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    dt = max(time.perf_counter() - t0, 1e-7)
    iterations = max(1, int(0.01 / dt))
    rounds = max(5, min(50, int(0.3 / (dt * iterations))))
    return rounds, iterations


def describe(provider: str, n: int, device: torch.device) -> dict:
    if provider.startswith("torch"):
        return {"provider": provider, "n_tensors": n, "numel_per_tensor": TORCH_NUMEL, "device": str(device),
                "kernels": "real, not synchronized" if device.type == "cuda" else "real (1-element tensors)"}
    return {"provider": provider, "n_tensors": n, "numel_per_tensor": NUMEL, "device": str(device),
            "kernels": "real launches, not synchronized" if device.type == "cuda" else "no-op launches (interpreter)",
            "key": key_path()}


def stages(params: list, device: torch.device) -> dict:
    """Median host seconds of each stage of a cached ``clip_`` call (kernels stubbed on the CPU):
    ``collect`` (gradients + key), ``route`` (cache hit), ``launches`` (the backend's host code),
    ``call`` (the whole call); ``checks`` = call - the three (API wrapper, argument checks: a
    difference of four medians, so noisy, even negative, on a busy machine)."""
    import timing

    from fastclip._dispatch import collect, route
    from fastclip._inputs import parse_norm_type

    p, kind = parse_norm_type(2.0)
    grads, key = collect(params, True)
    (work,) = route(grads, key)
    fns = {
        "collect": lambda: collect(params, True),
        "route": lambda: route(grads, key),
        "launches": lambda: work.backend.clip(work, grads, MAX_NORM, p, kind, torch.float32),
        "call": call("fastclip", params),
    }
    out = {}
    for name, fn in fns.items():
        rounds, iters = loop_size(fn, device)
        out[name] = timing.summarize(timing.plain_loop(fn, rounds, iters))["median"]
    out["checks"] = out["call"] - out["collect"] - out["route"] - out["launches"]
    return out


def main() -> None:
    """Plain table, no pytest: host microseconds per call (``--stages``: per stage)."""
    import timing

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if "--stages" in sys.argv[1:]:
        print(f"stages of a cached clip_ call on {device}, key read by {key_path()} (median, microseconds)")
        for n in COUNTS:
            params = make_params(n, device)
            with host_only(device):
                t = stages(params, device)
            print(f"{n:6d} tensors  " + "  ".join(f"{k} {v * 1e6:9.1f}" for k, v in t.items()))
        return
    print(f"host overhead per call on {device}, key read by {key_path()} (median, microseconds)")
    for n in COUNTS:
        params = make_params(n, device)
        row = [f"{n:6d} tensors"]
        for prov in providers(device):
            with host_only(device) as stubs:
                fn = call(prov, params)
                rounds, iters = loop_size(fn, device)
                if prov == "fastclip":
                    check_route(params, stubs)
                times = timing.plain_loop(fn, rounds, iters)
                timing.sync(device)
                row.append(f"{prov} {timing.summarize(times)['median'] * 1e6:10.1f}")
        print("  ".join(row))


if __name__ == "__main__":
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        os.execve(sys.executable, [sys.executable] + sys.argv, dict(os.environ, TRITON_INTERPRET="1"))
    main()
