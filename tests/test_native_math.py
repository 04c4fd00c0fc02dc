"""The native helper's CPU math (fastclip/csrc/cpu_math.cpp): ``power_sum`` and ``scale_``.

Oracles: the power sum of the same values in float64 (relative error <= 2e-5, the fp32-accurate
norm fastclip promises; max |x| exactly), and torch's own ``x.mul_(coef_tensor)``, which
``scale_`` must reproduce bit for bit (NaN only as NaN: torch's NaN bits differ between its
vector and scalar loops).  Anything the helper can't read in place it must decline without
touching it, so the Python path takes over.

Skipped when the helper isn't built (``python -m fastclip.native``), failed instead under
FASTCLIP_REQUIRE_NATIVE=1; the test of the switched-off helper runs everywhere.
"""
import contextlib
import math
import os
import subprocess
import sys
import threading

import pytest
import torch

from test_native import helper  # noqa: F401  (the fixture: the built helper, or skip)

NORM_RTOL = 2e-5
DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
ORDERS = (1.0, 2.0, 3.0, math.inf)
# around the helper's fp32 blocks (4096 elements) and lanes (32), and a long one
SIZES = ((), (1,), (31,), (32,), (33,), (4095,), (4096,), (4097,), (3, 1000), (0,), (70_001,))


@contextlib.contextmanager
def team_mode(helper, mode: str):
    """Large calls forced into torch's OpenMP team ("team") or onto the calling thread ("caller")."""
    previous = helper.team_choice(mode)
    try:
        yield
    finally:
        helper.team_choice(previous)


def _values(shape, dtype, scale=1.0):
    return (torch.randn(shape, dtype=torch.float64) * scale).to(dtype)


def _fp64_power_sum(tensors, p) -> float:
    flat = torch.cat([t.double().reshape(-1) for t in tensors])
    if p == math.inf:
        return flat.abs().max().item() if flat.numel() else 0.0
    return flat.abs().pow(p).sum().item()


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def _assert_same_as_torch(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    nan = torch.isnan(theirs)
    assert torch.equal(torch.isnan(ours), nan)
    assert torch.equal(_bits(ours)[~nan], _bits(theirs)[~nan])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", ORDERS)
def test_power_sum_of_many_sizes_matches_float64(helper, dtype, p):
    tensors = [_values(s, dtype) for s in SIZES]
    expected = _fp64_power_sum(tensors, p)

    got = helper.power_sum(tensors, p)

    assert isinstance(got, float)
    assert abs(got - expected) <= NORM_RTOL * expected, (got, expected)


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16))
def test_power_sum_of_a_long_tensor_stays_fp32_accurate(helper, dtype):
    x = _values(1 << 22, dtype, 1e-2)
    expected = _fp64_power_sum([x], 2.0)
    assert abs(helper.power_sum([x], 2.0) - expected) <= 1e-6 * expected


@pytest.mark.parametrize("dtype", DTYPES)
def test_power_sum_reads_dense_non_contiguous_layouts_in_place(helper, dtype):
    tensors = [_values((40, 6), dtype).t(), _values((2, 3, 5, 7), dtype).to(memory_format=torch.channels_last),
               _values((4, 5, 6), dtype).permute(2, 0, 1)]
    expected = _fp64_power_sum(tensors, 2.0)
    assert abs(helper.power_sum(tensors, 2.0) - expected) <= NORM_RTOL * expected


def test_power_sum_of_nothing_is_zero(helper):
    assert helper.power_sum([], 2.0) == 0.0
    assert helper.power_sum([torch.zeros(0), torch.zeros(0, 3, dtype=torch.bfloat16)], math.inf) == 0.0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", ORDERS)
def test_nan_anywhere_gives_nan_and_inf_gives_inf(helper, dtype, p):
    for bad, check in ((float("nan"), math.isnan), (float("inf"), math.isinf), (float("-inf"), math.isinf)):
        tensors = [_values(5000, dtype), _values(100, dtype)]
        tensors[0][4100] = bad  # after larger values: a max must not drop it
        assert check(helper.power_sum(tensors, p)), (bad, p)


def test_power_sum_rejects_orders_that_are_not_norms(helper):
    for p in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="p must be > 0"):
            helper.power_sum([torch.ones(3)], p)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("coef_dtype", (torch.float32, torch.float64))
def test_scale_is_bitwise_torchs_mul_by_the_coefficient_tensor(helper, dtype, coef_dtype):
    base = _values(70_003, dtype, 100.0)
    base[:6] = torch.tensor([float("nan"), float("inf"), float("-inf"), 1e-7, -0.0, 6e-5], dtype=torch.float64)
    for value in (0.375, 8e-6, 0.999999, 1e-30, 3.0, 0.0, float("nan")):  # 0: inf * 0 is NaN
        coef = torch.tensor(value, dtype=coef_dtype)
        ours, theirs = base.clone(), base.clone()

        assert helper.scale_([ours], coef.item()) is True
        theirs.mul_(coef)

        _assert_same_as_torch(ours, theirs)


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16, torch.float16))
def test_scale_covers_every_element_of_dense_layouts_once(helper, dtype):
    tensors = [_values((40, 6), dtype).t(), _values((2, 3, 5, 7), dtype).to(memory_format=torch.channels_last),
               _values(33, dtype), _values(0, dtype)]
    expected = [t.clone().mul_(torch.tensor(0.3)) for t in tensors]

    assert helper.scale_(tensors, 0.3) is True

    for t, e in zip(tensors, expected):
        _assert_same_as_torch(t, e)


def test_scale_bumps_the_version_counter_as_an_in_place_op_does(helper):
    x = torch.randn(10)
    before = x._version
    helper.scale_([x], 0.5)
    assert x._version > before


@pytest.mark.parametrize("unreadable", ["strided with gaps", "expanded", "integer", "complex"])
def test_tensors_it_cannot_read_in_place_are_declined_untouched(helper, unreadable):
    other = {"strided with gaps": torch.randn(6, 8)[:, ::2], "expanded": torch.randn(3).expand(4, 3),
             "integer": torch.arange(5), "complex": torch.randn(4, dtype=torch.complex64)}[unreadable]
    tensors = [torch.randn(10), other]
    before = [t.clone() for t in tensors]

    assert helper.power_sum(tensors, 2.0) is None
    assert helper.scale_(tensors, 0.5) is False
    assert all(torch.equal(t, b) for t, b in zip(tensors, before))


def test_more_elements_than_max_numel_are_declined_untouched(helper):
    tensors = [torch.randn(100), torch.randn(50)]
    before = [t.clone() for t in tensors]

    assert helper.power_sum(tensors, 2.0, 149) is None
    assert helper.scale_(tensors, 0.5, 149) is False
    assert all(torch.equal(t, b) for t, b in zip(tensors, before))
    assert helper.power_sum(tensors, 2.0, 150) == pytest.approx(_fp64_power_sum(before, 2.0), rel=NORM_RTOL)


# Calls of 2 M elements or more may run in torch's OpenMP team (team_choice.cpp decides; these
# tests force it), cut into pieces of 16 K-256 K elements (runs of small tensors, or
# block-aligned slices of a large one); these sets cross every kind of piece boundary.
PARALLEL_SETS = {
    "one large tensor": [(3_000_001,)],
    "many small tensors": [(97,)] * 20_000 + [(4096,)] * 40,
    "mixed": [(70_001,), (5,), (2_000_000,), (16_383,), (16_384,), (16_385,), (1,), (40, 6000), ()],
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", PARALLEL_SETS)
def test_power_sum_is_bitwise_the_same_for_any_thread_count(helper, dtype, name):
    tensors = [_values(s, dtype) for s in PARALLEL_SETS[name]]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = [helper.power_sum(tensors, p) for p in (2.0, 1.0, math.inf)]
        torch.set_num_threads(max(threads, 2))
        with team_mode(helper, "team"):
            shared = [helper.power_sum(tensors, p) for p in (2.0, 1.0, math.inf)]
        with team_mode(helper, "caller"):
            caller = [helper.power_sum(tensors, p) for p in (2.0, 1.0, math.inf)]
    finally:
        torch.set_num_threads(threads)

    assert shared == alone
    assert caller == alone
    expected = _fp64_power_sum(tensors, 2.0)
    assert abs(shared[0] - expected) <= NORM_RTOL * expected


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16, torch.float16))
@pytest.mark.parametrize("name", PARALLEL_SETS)
def test_a_parallel_scale_covers_every_element_once(helper, dtype, name):
    tensors = [_values(s, dtype) for s in PARALLEL_SETS[name]]
    expected = [t.clone().mul_(torch.tensor(0.3)) for t in tensors]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(max(threads, 2))
        with team_mode(helper, "team"):
            assert helper.scale_(tensors, 0.3) is True
    finally:
        torch.set_num_threads(threads)

    for t, e in zip(tensors, expected):
        _assert_same_as_torch(t, e)


def test_calls_from_several_threads_at_once_give_each_its_own_result(helper):
    sets = [[_values(s, torch.bfloat16) for s in PARALLEL_SETS["mixed"]] for _ in range(3)]
    expected = [helper.power_sum(tensors, 2.0) for tensors in sets]
    results = [None] * len(sets)

    def reduce(i):
        results[i] = [helper.power_sum(sets[i], 2.0) for _ in range(5)]

    threads = [threading.Thread(target=reduce, args=(i,)) for i in range(len(sets))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert results == [[e] * 5 for e in expected]


def test_a_thread_set_to_one_torch_thread_stays_at_one(helper):
    """fastclip's workers run single-threaded: torch.set_num_threads(1) in their thread, after
    which the process-wide default is put back (fastclip/_workers.py).  A large call in such a
    thread must leave its setting as it was."""
    x = _values(1 << 22, torch.bfloat16)
    threads = torch.get_num_threads()
    single, default_restored, seen = threading.Event(), threading.Event(), []

    def work():
        torch.set_num_threads(1)
        seen.append(torch.get_num_threads())  # as the workers do: torch now counts this thread as set
        single.set()
        default_restored.wait()
        helper.power_sum([x], 2.0)
        helper.scale_([x], 0.5)
        seen.append(torch.get_num_threads())

    t = threading.Thread(target=work)
    t.start()
    single.wait()
    torch.set_num_threads(max(threads, 2))
    default_restored.set()
    t.join()
    torch.set_num_threads(threads)

    assert seen == [1, 1]


@pytest.mark.skipif(not sys.platform.startswith("linux") or not torch.backends.openmp.is_available(),
                    reason="the helper joins torch's OpenMP team where torch runs on libgomp (Linux)")
def test_on_linux_the_helper_runs_in_torchs_own_openmp_runtime(helper):
    with open("/proc/self/maps", encoding="utf-8") as f:
        runtimes = {line.split()[-1] for line in f if "/libgomp" in line}

    assert helper.openmp() is True
    assert len(runtimes) == 1, runtimes  # no second libgomp, with threads of its own


def test_malformed_calls_raise_type_errors(helper):
    with pytest.raises(TypeError):
        helper.power_sum((torch.ones(3),), 2.0)  # a tuple, not a list
    with pytest.raises(TypeError, match="item 1 is not a tensor"):
        helper.scale_([torch.ones(3), 2.0], 0.5)
    with pytest.raises(TypeError):
        helper.power_sum([torch.ones(3)])


BF16_CLIP = ("import torch, fastclip, fastclip._torch_backend as tb; "
             "w = torch.nn.Parameter(torch.zeros(3000, dtype=torch.bfloat16)); "
             "w.grad = torch.full((3000,), 0.5, dtype=torch.bfloat16); "
             "print(tb._native_math() is None, round(fastclip.clip_([w], 1.0).item(), 4), w.grad[0].item())")


def test_the_torch_path_serves_when_the_helper_is_switched_off():
    result = subprocess.run([sys.executable, "-c", BF16_CLIP], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, FASTCLIP_NATIVE="off", FASTCLIP_BACKEND="torch"))
    assert result.returncode == 0, result.stderr
    norm = 0.5 * math.sqrt(3000)
    coef = torch.tensor(1.0 / (norm + 1e-6), dtype=torch.float32)
    expected_value = (torch.tensor([0.5], dtype=torch.bfloat16) * coef).item()
    assert result.stdout.split() == ["True", str(round(norm, 4)), str(expected_value)]
