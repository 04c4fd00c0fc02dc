"""Host overhead of a fastclip call, measured alone: everything a call costs except kernel execution.

What one ``fastclip.clip_(params, max_norm)`` costs the host with a cached plan: reading
``.grad`` of every parameter, argument checks, the signature pass and route lookup, allocating
the 0-d norm, and issuing the two launches.  Measured for ``COUNTS`` tensors of ``NUMEL`` fp32
elements each (the per-tensor work is what grows; tensor sizes don't matter once planned).

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

Providers: ``fastclip`` (the whole call), ``route`` (``fastclip._dispatch.route``: the per-call
signature pass + cache lookup, the part that grows with the tensor count), ``torch-foreach``
(CUDA only).

Run as a script for a quick table without pytest: ``python bench/overhead.py``.
"""
from __future__ import annotations

import contextlib
import os
import sys

import torch

COUNTS = (150, 2000, 20000)
NUMEL = 256
MAX_NORM = 1e9  # nothing is ever clipped: repeated real launches leave the grads unchanged


def providers(device: torch.device) -> tuple[str, ...]:
    return ("fastclip", "route", "torch-foreach") if device.type == "cuda" else ("fastclip", "route")


def make_params(n: int, device: torch.device) -> list:
    gen = torch.Generator(device=device).manual_seed(n)
    params = []
    for _ in range(n):
        p = torch.nn.Parameter(torch.zeros((), device=device).expand(NUMEL))
        p.grad = torch.randn(NUMEL, generator=gen, device=device)
        params.append(p)
    return params


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
    from fastclip._dispatch import route

    grads = [p.grad for p in params]
    if provider == "fastclip":
        return lambda: fastclip.clip_(params, MAX_NORM)
    if provider == "route":
        return lambda: route(grads)
    if provider == "torch-foreach":
        return lambda: torch.nn.utils.clip_grad_norm_(params, MAX_NORM, foreach=True)
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
    return {"provider": provider, "n_tensors": n, "numel_per_tensor": NUMEL, "device": str(device),
            "kernels": "real launches, not synchronized" if device.type == "cuda" else "no-op launches (interpreter)"}


def main() -> None:
    """Plain table, no pytest: host microseconds per call."""
    import timing

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"host overhead per call on {device} (median, microseconds)")
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
