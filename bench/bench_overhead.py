"""pytest-benchmark: host overhead of one call, excluding kernel execution (see overhead.py).

Groups ``overhead-<N>`` put fastclip's whole call, its gradient read + route lookup, and torch's
clip_grad_norm_ on 1-element tensors side by side for N = 150, 2 000 and 20 000 tensors.  Times
are per call, from ``iterations`` back-to-back calls per round, never synchronized.  Each
fastclip case records whether the native helper read the keys (``extra_info["key"]``).

    python -m pytest bench/bench_overhead.py
"""
import pytest
import torch

import overhead
import results_io
from device_info import bench_device

DEVICE = bench_device()
CASES = [(n, p) for n in overhead.COUNTS for p in overhead.providers(DEVICE)]
_params = {}


def _params_for(n):
    if n not in _params:
        _params.clear()
        _params[n] = overhead.make_params(n, DEVICE)
    return _params[n]


def teardown_module(module):
    _params.clear()


@pytest.mark.parametrize("n,provider", CASES, ids=[f"{n}-{p}" for n, p in CASES])
def test_overhead(benchmark, n, provider, request):
    params = _params_for(n)
    benchmark.group = f"overhead-{n}"
    benchmark.name = f"overhead-{n}-{provider}"
    benchmark.extra_info.update(overhead.describe(provider, n, DEVICE))
    with overhead.host_only(DEVICE) as stubs:
        fn = overhead.call(provider, params)
        if benchmark.disabled:
            rounds, iterations = 1, 1
        else:
            rounds, iterations = overhead.loop_size(fn, DEVICE)
        benchmark.pedantic(fn, rounds=rounds, iterations=iterations, warmup_rounds=1)
        if provider == "fastclip":
            overhead.check_route(params, stubs)
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
    median = results_io.record_pytest(benchmark)
    if median is not None:
        request.node.user_properties.append(("median_s", median))
