"""pytest-benchmark suite: fastclip.clip_ vs torch.nn.utils.clip_grad_norm_ (eager and compiled) vs a
copy of the same bytes.

One benchmark group per (gradient set, dtype, regime), so pytest-benchmark prints fastclip,
torch-foreach, torch-loop, torch-compile and the byte-floor copy next to each other.  What is
timed and checked is described in ``cases.py`` (the compiled peer in ``compiled_peer.py``);
gradient sets in ``grad_sets.py``; round counts in ``timing.py``.

    python -m pytest bench/bench_clip.py                          # sizes chosen from the device
    FASTCLIP_BENCH_PRESET=tiny python -m pytest bench/bench_clip.py --benchmark-disable   # checks only

``python bench/run.py`` runs this with storage, JSON, comparison and the report table.
"""
import pytest

import cases
import grad_sets
import results_io
from device_info import bench_device

DEVICE = bench_device()
PRESET = grad_sets.default_preset(DEVICE)
CASES = cases.all_cases()


def teardown_module(module):
    cases.release_state()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_clip(benchmark, case, request):
    reason = cases.skip_reason(case, DEVICE)
    if reason:
        pytest.skip(reason)
    benchmark.group = case.group
    benchmark.name = case.id
    info = cases.run_case(case, benchmark.pedantic, DEVICE, PRESET, measure=not benchmark.disabled)
    benchmark.extra_info.update(info)
    median = results_io.record_pytest(benchmark)
    if median is not None:
        request.node.user_properties.append(("median_s", median))
