"""The plain-PyTorch backend (fastclip/_torch_backend.py): its reduction layout and interface.

What the module promises beyond fastclip.clip_'s contract (tested in test_clip.py on both backends):
the norm of gradients of every size, dtype and layout is within 2e-5 of float64 however the
tensors fall on its rows and upcast blocks (the block is made small here so that tensors span
blocks, share blocks, and leave a zero-padded partial row); the result does not depend on the
thread count or on other threads calling at the same time; the functions the dispatcher calls keep
their signatures.  Oracles: ``oracles.ref_norm`` (float64) and torch.linalg.vector_norm in float64;
for the scaling, torch's own multiply.  Tests taking ``path`` run twice: on plain torch ops, and
with the native helper's power_sum / scale_ (skipped when it isn't built).
"""
import inspect
import math
import threading

import pytest
import torch

import fastclip
from fastclip import _torch_backend as tb
from fastclip import _workers
from fastclip._inputs import parse_norm_type
from oracles import ref_norm
from test_native import helper  # noqa: F401  (the fixture: the built helper, or skip)

NORM_RTOL = 2e-5
HALF = (torch.float16, torch.bfloat16)
ORDERS = (2.0, 1.0, 3.0, 0.5, math.inf)


def _norm(tensors, p=2.0, out_dtype=torch.float32) -> torch.Tensor:
    p, kind = parse_norm_type(p)
    return tb.total_norm(tb.group_by_dtype(tensors), p, kind, out_dtype, torch.device("cpu"))


def _assert_close_to_fp64(norm: torch.Tensor, tensors, p) -> None:
    expected = ref_norm(tensors, p)
    assert norm.dim() == 0
    assert abs(norm.item() - expected) <= NORM_RTOL * expected, (norm.item(), expected)


@pytest.fixture
def small_layout(monkeypatch):
    """Rows of 8 elements, work items of 24, upcast blocks of 40, tensors above 16 elements split
    into items, smaller ones grouped by about 20 elements, fp32/fp64 tensors of 200+ elements one
    own op, and the worker pool used for any size (the native helper called per item, never on a
    whole group): a few hundred
    elements then cover every path (full rows, tails, items and blocks that end mid-row, several
    items per tensor, several groups of small tensors)."""
    monkeypatch.setattr(tb, "ROW", 8)
    monkeypatch.setattr(tb, "ITEM", 24)
    monkeypatch.setattr(tb, "HALF_BLOCK", 40)
    monkeypatch.setattr(tb, "SMALL", 16)
    monkeypatch.setattr(tb, "SMALL_GROUP", 20)
    monkeypatch.setattr(tb, "OWN_OP", 200)
    monkeypatch.setattr(tb, "_native_limit", lambda helper: 0)
    monkeypatch.setattr(_workers, "INLINE_NUMEL", 0)


@pytest.fixture(params=["torch ops", "native helper"])
def path(request, monkeypatch):
    """The two ways the backend reduces and scales on the CPU."""
    if request.param == "torch ops":
        monkeypatch.setattr(tb, "_native_math", lambda p=2.0: None)
    else:
        request.getfixturevalue("helper")
    return request.param


SIZES = [(), (1,), (7,), (8,), (16,), (17,), (39,), (40,), (41,), (3, 29), (123,), (5, 8), (0,), (250,)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, *HALF])
@pytest.mark.parametrize("p", ORDERS)
def test_norm_of_many_sizes_matches_float64_across_rows_and_blocks(small_layout, path, dtype, p):
    tensors = [torch.randn(s, dtype=torch.float64).to(dtype) for s in SIZES]
    _assert_close_to_fp64(_norm(tensors, p), tensors, p)


@pytest.mark.parametrize("dtype", [torch.float32, *HALF])
def test_mixed_dtypes_in_one_call_match_float64(small_layout, path, dtype):
    tensors = [torch.randn(s, dtype=torch.float64).to(d) for s in SIZES for d in (dtype, torch.float64)]
    _assert_close_to_fp64(_norm(tensors, out_dtype=torch.float64), tensors, 2.0)


@pytest.mark.parametrize("dtype", [torch.float32, *HALF])
def test_dense_non_contiguous_and_strided_layouts_are_reduced_exactly_once(small_layout, path, dtype):
    base = torch.randn(6, 40, dtype=torch.float64).to(dtype)
    tensors = [base.t(),  # transposed: a flat span, read in place
               torch.randn(2, 3, 5, 7, dtype=torch.float64).to(dtype).to(memory_format=torch.channels_last),
               base[:, ::3],  # strided with gaps: copied for the norm
               torch.randn(3, dtype=torch.float64).to(dtype).expand(4, 3)]  # expanded: 12 elements, 3 stored
    _assert_close_to_fp64(_norm(tensors), tensors, 2.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_long_tensor_norm_is_fp32_accurate_where_torchs_own_is_not(path, dtype):
    # 4 M elements of the real layout: torch's vector_norm accumulates without pairwise summation
    x = (torch.randn(1 << 22, dtype=torch.float64) * 1e-2).to(dtype)
    expected = ref_norm([x], 2.0)
    ours = _norm([x]).item()
    assert abs(ours - expected) <= 1e-6 * expected
    assert abs(torch.linalg.vector_norm(x).item() - expected) > 10 * abs(ours - expected)


def test_norm_is_bitwise_the_same_for_any_thread_count(path):
    tensors = [torch.randn(s) for s in ((1 << 20) + 5, 3000, 70_000)] + [torch.randn(50_000).bfloat16()]
    first = _norm(tensors)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = _norm(tensors)
    finally:
        torch.set_num_threads(threads)
    again = _norm(tensors)
    assert torch.equal(first, single) and torch.equal(first, again)


def test_concurrent_calls_from_threads_each_get_their_own_result(path):
    sets = [[(torch.randn(100_000 + 1000 * i) * (i + 1)).bfloat16()] for i in range(4)]
    expected = [ref_norm(s, 2.0) for s in sets]
    results = [None] * len(sets)

    def work(i):
        for _ in range(5):
            results[i] = _norm(sets[i]).item()

    workers = [threading.Thread(target=work, args=(i,)) for i in range(len(sets))]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for got, want in zip(results, expected):
        assert abs(got - want) <= NORM_RTOL * want


def test_nan_and_inf_propagate_to_the_norm(small_layout, path):
    for bad, check in ((float("nan"), math.isnan), (float("inf"), math.isinf)):
        tensors = [torch.randn(100), torch.randn(30).bfloat16()]
        tensors[1][17] = bad
        assert check(_norm(tensors).item())


def test_empty_input_gives_a_zero_norm_of_the_requested_dtype():
    norm = _norm([torch.zeros(0), torch.zeros(0, 3)], out_dtype=torch.float64)
    assert norm.dtype == torch.float64 and norm.item() == 0.0


def test_scale_skips_the_write_when_nothing_needs_clipping(path):
    g = torch.randn(1000)
    before = g.clone()
    tb.scale_({g.dtype: [g]}, torch.tensor(1.0))
    assert torch.equal(g, before)
    tb.scale_({g.dtype: [g]}, torch.tensor(0.25))
    assert torch.equal(g, before * 0.25)


def test_a_nan_coefficient_still_scales_as_torch_does(path):
    g = torch.randn(10)
    tb.scale_({g.dtype: [g]}, torch.tensor(float("nan")))
    assert torch.isnan(g).all()


def test_clip_through_the_public_api_matches_float64_and_torch(monkeypatch):
    monkeypatch.setenv("FASTCLIP_BACKEND", "torch")
    shapes = [(300, 700), (5,), (1 << 17,), (64, 3, 3, 3)]
    params = [torch.nn.Parameter(torch.empty(s, dtype=torch.bfloat16)) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape).bfloat16()
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in params]
    for p, q in zip(params, theirs):
        q.grad = p.grad.clone()
    originals = [p.grad.clone() for p in params]
    norm = fastclip.clip_(params, 1.0)
    expected = ref_norm(originals, 2.0)
    assert norm.dtype == torch.float32 and abs(norm.item() - expected) <= NORM_RTOL * expected
    torch.nn.utils.clip_grad_norm_(theirs, 1.0)
    coef = 1.0 / (expected + 1e-6)
    for p, q, g0 in zip(params, theirs, originals):
        torch.testing.assert_close(p.grad.double(), g0.double() * coef, atol=0, rtol=8e-3)
        torch.testing.assert_close(p.grad.double(), q.grad.double(), atol=0, rtol=2e-2)


def test_the_functions_the_dispatcher_calls_keep_their_signatures():
    expected = {
        "group_by_dtype": ["grads"],
        "total_norm": ["by_dtype", "p", "kind", "out_dtype", "device"],
        "clip_coef": ["max_norm", "norm"],
        "scale_": ["by_dtype", "coef"],
        "clamp_": ["by_dtype", "clip_value"],
    }
    for name, params in expected.items():
        assert list(inspect.signature(getattr(tb, name)).parameters) == params, name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_scale_and_clamp_cover_every_element_of_every_layout_once(small_layout, path, dtype):
    base = torch.randn(6, 40, dtype=torch.float64)
    originals = [torch.randn(100, dtype=torch.float64), torch.randn(5, dtype=torch.float64),
                 base.t(), base[:, ::3], torch.randn(2, 3, 5, 7, dtype=torch.float64)]
    for op, expect in (("scale", lambda x: x * 0.375), ("clamp", lambda x: x.clamp(-0.5, 0.5))):
        tensors = [o.to(dtype, copy=True) for o in originals]
        tensors[4] = tensors[4].to(memory_format=torch.channels_last)
        by_dtype = tb.group_by_dtype(tensors)
        if op == "scale":
            tb.scale_(by_dtype, torch.tensor(0.375))
        else:
            tb.clamp_(by_dtype, 0.5)
        for t, o in zip(tensors, originals):
            assert torch.equal(t, expect(o.to(dtype))), op


@pytest.mark.parametrize("dtype", [torch.float32, *HALF])
@pytest.mark.parametrize("openmp", [True, False], ids=["openmp helper", "serial helper"])
def test_the_native_path_takes_each_dtype_group_in_one_call(helper, monkeypatch, dtype, openmp):
    """A dtype group is one helper call, no work items: of any size when the helper runs in
    torch's OpenMP team, up to NATIVE_INLINE elements when it runs on the calling thread only; a
    group with a tensor the helper can't read in place (strided with gaps) goes through the items
    instead.  Oracles: float64 for the norm, torch's mul_ for the scaling."""
    monkeypatch.setattr(tb, "NATIVE_INLINE", 1 << 18)
    monkeypatch.setattr(tb, "_native_limit", lambda h: -1 if openmp else tb.NATIVE_INLINE)
    item_counts = []
    run = tb._run
    monkeypatch.setattr(tb, "_run", lambda items, total, device: item_counts.append(len(items)) or run(items, total, device))
    big = [torch.randn(300_000, dtype=torch.float64)]  # over NATIVE_INLINE
    small = [torch.randn(512, dtype=torch.float64) for _ in range(300)]  # under it
    strided = torch.randn(7, 9, dtype=torch.float64)
    tensors = [o.to(dtype) for o in big + small] + [strided[:, ::2]]
    expected_scaled = [t.clone().mul_(torch.tensor(0.375)) for t in tensors]

    _assert_close_to_fp64(_norm(tensors, out_dtype=torch.float64), tensors, 2.0)
    tb.scale_(tb.group_by_dtype(tensors), torch.tensor(0.375))

    # the items of each pass: the strided fp64 tensor, and without OpenMP the group over the
    # limit: its large tensor (one ITEM) and its small tensors (one SMALL_GROUP)
    assert item_counts == [1 if openmp else 3] * 2
    for t, e in zip(tensors, expected_scaled):
        assert torch.equal(t, e)
