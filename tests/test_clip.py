"""fastclip.clip_ behaves like torch.nn.utils.clip_grad_norm_, on both backends.

Oracles, for every case: the float64 norm and coefficient of the same formula
(``oracles.ref_norm`` / ``oracles.ref_coef``), and torch.nn.utils.clip_grad_norm_ run on cloned
parameters.  Data is fresh ``randn`` (conftest seeds 42), never all zeros.  Under the Triton
interpreter the default launch settings (chunk 256, block 64) make a few hundred to a few thousand
elements cover multi-chunk tensors, full chunks and masked tails.
"""
import math

import pytest
import torch

import fastclip
from fastclip.kernels.launch_settings import LaunchSettings, use_settings
from oracles import clone_params, grads, make_params, ref_coef, ref_norm

HALF = (torch.float16, torch.bfloat16)
ALL_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)

#: (dtype, atol, rtol) for clipped gradients against the float64 oracle, elementwise:
#: |ours - ref| <= atol * max|ref| + rtol * |ref|.  atol is relative to the tensor's largest expected
#: value because clipping multiplies by arbitrary coefficients.  rtol is the norm contract (2e-5) for
#: fp32/fp64 (bit-level fp64 accuracy has its own tests below) and about one rounding of the storage
#: type for fp16/bf16 -- a whole bf16 ulp (2**-7), because the Triton interpreter converts fp32 to bf16
#: by truncation (a GPU rounds to nearest).  Against torch every dtype uses the flash-attention bound
#: max|ours - ref| <= 2 * max|torch - ref| + atol * max|ref|, since torch's half norms are rounded.
TOLERANCES = [
    (torch.float32, 1e-6, 2e-5),
    (torch.float64, 2e-5, 2e-5),
    (torch.bfloat16, 8e-3, 8e-3),
    (torch.float16, 1e-3, 1e-3),
]
TOL = {dtype: (atol, rtol) for dtype, atol, rtol in TOLERANCES}
#: relative error of the returned norm against float64, every dtype, both backends
NORM_RTOL = 2e-5


# ----------------------------------------------------------------------------------------------
# helpers (also used by test_api_functions.py and test_properties.py)


def param_with_grad(grad: torch.Tensor) -> torch.nn.Parameter:
    """A parameter whose .grad is exactly ``grad`` (same object, any layout)."""
    p = torch.nn.Parameter(torch.empty(grad.shape, dtype=grad.dtype, device=grad.device))
    p.grad = grad
    return p


def mixed_params(dtypes, device, numel=300, scale=1.0):
    """One parameter per dtype, odd sizes so tails are masked."""
    params = []
    for i, dtype in enumerate(dtypes):
        params += make_params([(numel + 7 * i,)], dtype=dtype, device=device, scale=scale)
    return params


def assert_norm_accurate(norm: torch.Tensor, tensors, p) -> float:
    """0-d norm within NORM_RTOL of the float64 oracle; returns the oracle."""
    expected = ref_norm(tensors, p)
    assert norm.dim() == 0
    err = abs(norm.item() - expected)
    assert err <= NORM_RTOL * expected, f"norm {norm.item()!r} vs float64 {expected!r}: rel err {err / expected:.3g}"
    return expected


def _max_abs(t: torch.Tensor) -> float:
    return t.abs().max().item() if t.numel() else 0.0


def assert_grads_clipped(ours, theirs, originals, coef: float) -> None:
    """``ours`` ≈ originals * coef (float64 oracle, TOL) and no farther from it than 2x torch's error."""
    assert len(ours) == len(theirs) == len(originals)
    for i, (g, t, g0) in enumerate(zip(ours, theirs, originals)):
        assert g.dtype == g0.dtype and g.shape == g0.shape
        ref = g0.double() * coef
        scale = _max_abs(ref)
        atol, rtol = TOL[g.dtype]
        torch.testing.assert_close(g.double(), ref, atol=atol * scale, rtol=rtol,
                                   msg=lambda m: f"grad {i} ({g.dtype}) vs float64 oracle: {m}")
        err, torch_err = _max_abs(g.double() - ref), _max_abs(t.double() - ref)
        assert err <= 2 * torch_err + atol * scale, (
            f"grad {i} ({g.dtype}): max err {err:.3g} > 2 * torch's {torch_err:.3g} + {atol * scale:.3g}")


def clip_both(params, max_norm, norm_type=2.0):
    """Clip ``params`` with fastclip and clones with torch; returns (norm, torch_norm, clones, originals)."""
    originals = [g.clone() for g in grads(params)]
    theirs = clone_params(params)
    norm = fastclip.clip_(params, max_norm, norm_type)
    torch_norm = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type)
    return norm, torch_norm, theirs, originals


# ----------------------------------------------------------------------------------------------
# input forms


def test_single_tensor_parameter_is_clipped_like_torch(backend, device):
    (param,) = make_params([(33, 17)], device=device)
    expected = ref_norm([param.grad], 2)
    original = param.grad.clone()
    (theirs,) = clone_params([param])

    norm = fastclip.clip_(param, 0.5 * expected)
    torch.nn.utils.clip_grad_norm_(theirs, 0.5 * expected)

    assert_norm_accurate(norm, [original], 2)
    assert_grads_clipped([param.grad], [theirs.grad], [original], ref_coef(0.5 * expected, expected))


def test_list_of_parameters_is_clipped_like_torch(backend, device):
    params = make_params([(13, 7), (1000,), (3,), (2, 3, 5)], device=device, scale=2.0)
    max_norm = 0.3 * ref_norm(grads(params), 2)

    norm, torch_norm, theirs, originals = clip_both(params, max_norm)

    expected = assert_norm_accurate(norm, originals, 2)
    torch.testing.assert_close(norm, torch_norm, rtol=NORM_RTOL, atol=0)
    assert_grads_clipped(grads(params), grads(theirs), originals, ref_coef(max_norm, expected))


def test_generator_of_parameters_is_consumed_once_and_clipped_like_torch(backend, device):
    params = make_params([(300,), (17, 5)], device=device)
    max_norm = 0.5 * ref_norm(grads(params), 2)
    originals = [g.clone() for g in grads(params)]
    theirs = clone_params(params)

    norm = fastclip.clip_((p for p in params), max_norm)
    torch.nn.utils.clip_grad_norm_((p for p in theirs), max_norm)

    expected = assert_norm_accurate(norm, originals, 2)
    assert_grads_clipped(grads(params), grads(theirs), originals, ref_coef(max_norm, expected))


def test_empty_generator_warns_at_the_caller_like_torch_and_returns_zero(backend, device):
    with pytest.warns(UserWarning, match="empty generator") as ours:
        norm = fastclip.clip_((p for p in []), 1.0)
    with pytest.warns(UserWarning, match="empty generator") as theirs:
        torch_norm = torch.nn.utils.clip_grad_norm_((p for p in []), 1.0)

    assert [str(w.message) for w in ours] == [str(w.message) for w in theirs]
    assert ours[0].filename == __file__  # stacklevel points at the user's call
    assert torch.equal(norm, torch_norm) and norm.dtype == torch.float32


@pytest.mark.parametrize("parameters", [[], "all-none"], ids=["empty-list", "all-grads-none"])
def test_no_gradients_returns_tensor_zero_like_torch(backend, device, parameters):
    if parameters == "all-none":
        parameters = [torch.nn.Parameter(torch.randn(4, device=device)) for _ in range(3)]
    norm = fastclip.clip_(parameters, 1.0)
    assert torch.equal(norm, torch.nn.utils.clip_grad_norm_(parameters, 1.0))
    assert torch.equal(norm, torch.tensor(0.0))


def test_none_grads_are_skipped_and_their_params_untouched(backend, device):
    params = make_params([(50,), (40,), (30,)], device=device)
    frozen = torch.nn.Parameter(torch.randn(20, device=device))  # grad None
    frozen_value = frozen.detach().clone()
    everything = [params[0], frozen, params[1], params[2]]
    max_norm = 0.5 * ref_norm(grads(params), 2)

    norm, _, theirs, originals = clip_both(everything, max_norm)

    expected = assert_norm_accurate(norm, originals, 2)
    assert frozen.grad is None and torch.equal(frozen.detach(), frozen_value)
    assert_grads_clipped(grads(everything), grads(theirs), originals, ref_coef(max_norm, expected))


@pytest.mark.parametrize("make_max_norm", [
    pytest.param(lambda x, dev: int(x), id="int"),
    pytest.param(lambda x, dev: float(x), id="float"),
    pytest.param(lambda x, dev: torch.tensor(float(x), device=dev), id="0d-fp32-tensor"),
    pytest.param(lambda x, dev: torch.tensor(float(x), dtype=torch.float64, device=dev), id="0d-fp64-tensor"),
])
def test_max_norm_as_int_float_or_0d_tensor_clips_like_torch(backend, device, make_max_norm):
    params = make_params([(400,), (9, 9)], device=device, scale=3.0)
    max_norm = make_max_norm(max(1, int(0.5 * ref_norm(grads(params), 2))), device)

    norm, torch_norm, theirs, originals = clip_both(params, max_norm)

    expected = assert_norm_accurate(norm, originals, 2)
    torch.testing.assert_close(norm, torch_norm.float(), rtol=NORM_RTOL, atol=0)
    assert_grads_clipped(grads(params), grads(theirs), originals, ref_coef(float(max_norm), expected))


@pytest.mark.parametrize("foreach", [None, True, False])
def test_foreach_flag_is_accepted_and_does_not_change_the_result(backend, device, foreach):
    params = make_params([(100,), (7,)], device=device)
    max_norm = 0.5 * ref_norm(grads(params), 2)
    originals = [g.clone() for g in grads(params)]
    theirs = clone_params(params)

    norm = fastclip.clip_(params, max_norm, foreach=foreach)
    torch.nn.utils.clip_grad_norm_(theirs, max_norm, foreach=foreach)

    expected = assert_norm_accurate(norm, originals, 2)
    assert_grads_clipped(grads(params), grads(theirs), originals, ref_coef(max_norm, expected))


# ----------------------------------------------------------------------------------------------
# norm orders, sizes, dtypes


@pytest.mark.parametrize("norm_type", [0.5, 1, 2, 3, 4, math.inf, "inf"], ids=str)
def test_every_norm_order_matches_float64_oracle_and_torch(backend, device, norm_type):
    params = make_params([(513,), (7, 11), (1,)], device=device)
    p = float(norm_type)
    max_norm = 0.5 * ref_norm(grads(params), p)

    norm, torch_norm, theirs, originals = clip_both(params, max_norm, norm_type)

    expected = assert_norm_accurate(norm, originals, p)
    torch.testing.assert_close(norm, torch_norm, rtol=NORM_RTOL, atol=0)
    assert_grads_clipped(grads(params), grads(theirs), originals, ref_coef(max_norm, expected))


@pytest.mark.parametrize("shape", [(0,), (1,), (), (7,), (4097,), (3, 0, 5)], ids=str)
@pytest.mark.parametrize("norm_type", [2, math.inf], ids=str)
def test_tensor_sizes_from_empty_to_multi_chunk_with_masked_tail(backend, device, shape, norm_type):
    # the empty tensor sits beside a non-empty one: alone its norm is 0 and nothing is clipped
    params = make_params([shape, (5,)], device=device)
    max_norm = 0.5 * ref_norm(grads(params), norm_type)
    originals = [g.clone() for g in grads(params)]
    # torch's inf norm raises on an empty tensor: it gets only the non-empty grads (same result)
    nonempty = [i for i, g in enumerate(originals) if g.numel()]
    theirs = clone_params([params[i] for i in nonempty])

    norm = fastclip.clip_(params, max_norm, norm_type)
    torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type)

    expected = assert_norm_accurate(norm, originals, norm_type)
    assert params[0].grad.shape == shape
    assert_grads_clipped([grads(params)[i] for i in nonempty], grads(theirs), [originals[i] for i in nonempty],
                         ref_coef(max_norm, expected))


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
def test_larger_tensor_of_20k_elements_is_clipped_like_torch(backend, device, dtype):
    params = make_params([(20011,)], dtype=dtype, device=device)
    max_norm = 0.25 * ref_norm(grads(params), 2)

    norm, _, theirs, originals = clip_both(params, max_norm)

    expected = assert_norm_accurate(norm, originals, 2)
    assert_grads_clipped(grads(params), grads(theirs), originals, ref_coef(max_norm, expected))


def test_many_tiny_tensors_are_clipped_like_torch(backend, device):
    shapes = [((i % 5) + 1,) for i in range(300)]
    params = make_params(shapes, device=device)
    max_norm = 0.5 * ref_norm(grads(params), 2)

    norm, torch_norm, theirs, originals = clip_both(params, max_norm)

    expected = assert_norm_accurate(norm, originals, 2)
    torch.testing.assert_close(norm, torch_norm, rtol=NORM_RTOL, atol=0)
    assert_grads_clipped(grads(params), grads(theirs), originals, ref_coef(max_norm, expected))


@pytest.mark.parametrize("dtypes, norm_dtype", [
    ((torch.float16,), torch.float32),
    ((torch.bfloat16,), torch.float32),
    ((torch.float32,), torch.float32),
    ((torch.float64,), torch.float64),
    ((torch.float16, torch.bfloat16, torch.float32), torch.float32),
    ((torch.float16, torch.bfloat16, torch.float32, torch.float64), torch.float64),
    ((torch.bfloat16, torch.float64), torch.float64),
], ids=lambda v: "-".join(str(d).replace("torch.", "") for d in v) if isinstance(v, tuple) else str(v))
@pytest.mark.parametrize("norm_type", [2, 3, math.inf], ids=str)
def test_mixed_dtypes_in_one_list_return_float32_or_float64_norm_never_half(backend, device, dtypes, norm_dtype,
                                                                            norm_type):
    params = mixed_params(dtypes, device)
    max_norm = 0.5 * ref_norm(grads(params), norm_type)

    norm, _, theirs, originals = clip_both(params, max_norm, norm_type)

    assert norm.dtype == norm_dtype and norm.device.type == device.type
    expected = assert_norm_accurate(norm, originals, norm_type)
    assert_grads_clipped(grads(params), grads(theirs), originals, ref_coef(max_norm, expected))


def test_fp16_grads_whose_norm_exceeds_fp16_range_get_a_finite_float32_norm(backend, device):
    # each element fits fp16 (|x| < 65504) but the global norm does not: torch returns an fp16 inf
    (param,) = make_params([(1000,)], dtype=torch.float16, device=device, scale=4000.0)
    original = param.grad.clone()
    expected = ref_norm([original], 2)
    assert expected > torch.finfo(torch.float16).max

    norm = fastclip.clip_([param], 1.0)

    assert norm.dtype == torch.float32 and math.isfinite(norm.item())
    assert_norm_accurate(norm, [original], 2)
    ref = original.double() * ref_coef(1.0, expected)
    atol, rtol = TOL[torch.float16]
    torch.testing.assert_close(param.grad.double(), ref, atol=atol * _max_abs(ref), rtol=rtol)


# ----------------------------------------------------------------------------------------------
# non-finite gradients


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("norm_type", [1, 2, 3, math.inf], ids=str)
def test_nan_grad_gives_nan_norm_and_scales_every_grad_to_nan_like_torch(backend, device, dtype, norm_type):
    params = make_params([(300,), (5,)], dtype=dtype, device=device)
    params[0].grad[123] = float("nan")
    theirs = clone_params(params)

    norm = fastclip.clip_(params, 1.0, norm_type)
    torch_norm = torch.nn.utils.clip_grad_norm_(theirs, 1.0, norm_type)

    assert math.isnan(norm.item()) and math.isnan(torch_norm.item())
    for g, t in zip(grads(params), grads(theirs)):
        assert torch.isnan(g).all() and torch.isnan(t).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64], ids=str)
@pytest.mark.parametrize("norm_type", [1, 2, 3, math.inf], ids=str)
def test_inf_grad_gives_inf_norm_and_zero_coefficient_like_torch(backend, device, dtype, norm_type):
    params = make_params([(300,), (5,)], dtype=dtype, device=device)
    params[0].grad[7] = -float("inf")
    theirs = clone_params(params)

    norm = fastclip.clip_(params, 1.0, norm_type)
    torch_norm = torch.nn.utils.clip_grad_norm_(theirs, 1.0, norm_type)

    assert norm.item() == math.inf and torch_norm.item() == math.inf
    for g, t in zip(grads(params), grads(theirs)):
        # coef = 1 / (inf + 1e-6) = 0: finite grads become (signed) zeros, inf * 0 becomes NaN
        torch.testing.assert_close(g, t, rtol=0, atol=0, equal_nan=True)
    assert torch.isnan(params[0].grad[7]) and (params[0].grad.nan_to_num() == 0).all()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("norm_type", [2, "inf", 3], ids=str)
def test_error_if_nonfinite_raises_torchs_error_and_leaves_grads_untouched(backend, device, bad, norm_type):
    params = make_params([(300,), (4, 4)], device=device)
    params[1].grad[2, 3] = bad
    originals = [g.clone() for g in grads(params)]

    with pytest.raises(RuntimeError) as ours:
        fastclip.clip_(params, 1.0, norm_type, error_if_nonfinite=True)
    with pytest.raises(RuntimeError) as theirs:
        torch.nn.utils.clip_grad_norm_(clone_params(params), 1.0, norm_type, error_if_nonfinite=True)

    assert str(ours.value) == str(theirs.value)
    for g, g0 in zip(grads(params), originals):
        torch.testing.assert_close(g, g0, rtol=0, atol=0, equal_nan=True)


def test_error_if_nonfinite_with_finite_grads_clips_like_torch(backend, device):
    params = make_params([(300,), (4, 4)], device=device)
    max_norm = 0.5 * ref_norm(grads(params), 2)
    originals = [g.clone() for g in grads(params)]
    theirs = clone_params(params)

    norm = fastclip.clip_(params, max_norm, error_if_nonfinite=True)
    torch.nn.utils.clip_grad_norm_(theirs, max_norm, error_if_nonfinite=True)

    expected = assert_norm_accurate(norm, originals, 2)
    assert_grads_clipped(grads(params), grads(theirs), originals, ref_coef(max_norm, expected))


# ----------------------------------------------------------------------------------------------
# memory layouts


def _transposed(device, dtype=torch.float32):
    return torch.randn(37, 23, device=device).to(dtype).t()  # dense, not contiguous


def _channels_last(device, dtype=torch.float32):
    return torch.randn(2, 5, 6, 7, device=device).to(dtype).contiguous(memory_format=torch.channels_last)


def _check_dense_non_contiguous_grad_is_clipped_in_place(grad, device):
    assert not grad.is_contiguous()
    param, other = param_with_grad(grad), make_params([(100,)], dtype=grad.dtype, device=device)[0]
    strides, ptr = grad.stride(), grad.data_ptr()
    max_norm = 0.5 * ref_norm(grads([param, other]), 2)

    norm, _, theirs, originals = clip_both([param, other], max_norm)

    assert param.grad is grad and grad.stride() == strides and grad.data_ptr() == ptr
    expected = assert_norm_accurate(norm, originals, 2)
    assert_grads_clipped(grads([param, other]), grads(theirs), originals, ref_coef(max_norm, expected))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_transposed_grad_is_clipped_in_place_keeping_its_layout(backend, device, dtype):
    _check_dense_non_contiguous_grad_is_clipped_in_place(_transposed(device, dtype), device)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_channels_last_grad_is_clipped_in_place_keeping_its_layout(backend, device, dtype):
    # regression: the torch backend's torch.cat of small grads kept channels_last, then .view(-1) raised
    _check_dense_non_contiguous_grad_is_clipped_in_place(_channels_last(device, dtype), device)


@pytest.mark.parametrize("backend", ["torch"], indirect=True)  # Triton: same path as the small case
def test_large_channels_last_grad_is_clipped_in_place_keeping_its_layout(backend, device):
    # more than 65536 elements: the torch backend's chunked path (the test above covers its small-tensor path)
    grad = torch.randn(34, 40, 7, 7, device=device).contiguous(memory_format=torch.channels_last)
    _check_dense_non_contiguous_grad_is_clipped_in_place(grad, device)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64], ids=str)
def test_strided_slice_grad_is_clipped_through_the_view_and_the_rest_of_its_base_untouched(backend, device, dtype):
    base = torch.randn(40, 30, device=device).to(dtype)
    base_before = base.clone()
    view = base[:, ::2]  # gaps between elements: not one flat span
    param, other = param_with_grad(view), make_params([(50,)], dtype=dtype, device=device)[0]
    max_norm = 0.5 * ref_norm(grads([param, other]), 2)

    norm, _, theirs, originals = clip_both([param, other], max_norm)

    assert param.grad is view and view.data_ptr() == base.data_ptr()
    expected = assert_norm_accurate(norm, originals, 2)
    assert_grads_clipped(grads([param, other]), grads(theirs), originals, ref_coef(max_norm, expected))
    assert torch.equal(base[:, 1::2], base_before[:, 1::2])  # the gaps
    assert torch.equal(base[:, ::2], view)


def test_offset_views_of_one_buffer_are_clipped_and_their_neighbours_untouched(backend, device):
    # views starting at odd element offsets: misaligned for vector loads, adjacent in memory
    buffer = torch.randn(1200, device=device)
    before = buffer.clone()
    spans = [(1, 258), (259, 260), (261, 1000), (1003, 1199)]
    params = [param_with_grad(buffer[a:b]) for a, b in spans]
    max_norm = 0.5 * ref_norm(grads(params), 2)

    norm, _, theirs, originals = clip_both(params, max_norm)

    expected = assert_norm_accurate(norm, originals, 2)
    assert_grads_clipped(grads(params), grads(theirs), originals, ref_coef(max_norm, expected))
    for i in (0, 260, 1000, 1001, 1002, 1199):
        assert torch.equal(buffer[i], before[i]), f"element {i} outside every grad was written"


# ----------------------------------------------------------------------------------------------
# no-clip path, determinism, launch settings


@pytest.mark.parametrize("dtypes", [(torch.float32,), ALL_DTYPES], ids=["fp32", "mixed"])
@pytest.mark.parametrize("norm_type", [2, 1, math.inf], ids=str)
def test_grads_are_bitwise_untouched_when_the_norm_is_within_max_norm(backend, device, dtypes, norm_type):
    params = mixed_params(dtypes, device)
    originals = [g.clone() for g in grads(params)]
    max_norm = 1.01 * ref_norm(originals, norm_type)

    norm = fastclip.clip_(params, max_norm, norm_type)

    assert_norm_accurate(norm, originals, norm_type)
    for g, g0 in zip(grads(params), originals):
        assert torch.equal(g, g0)


def test_max_norm_zero_zeroes_every_grad_like_torch(backend, device):
    params = mixed_params((torch.float32, torch.bfloat16), device)
    originals = [g.clone() for g in grads(params)]

    norm, _, theirs, _ = clip_both(params, 0.0)

    assert_norm_accurate(norm, originals, 2)
    for g, t in zip(grads(params), grads(theirs)):
        assert torch.equal(g, t) and (g == 0).all()


@pytest.mark.parametrize("norm_type", [2, 3, math.inf], ids=str)
def test_two_runs_on_the_same_input_are_bitwise_identical(backend, device, norm_type):
    params = mixed_params(ALL_DTYPES, device, numel=700)
    first, second = clone_params(params), clone_params(params)
    max_norm = 0.5 * ref_norm(grads(params), norm_type)

    norm1 = fastclip.clip_(first, max_norm, norm_type)
    norm2 = fastclip.clip_(second, max_norm, norm_type)

    assert torch.equal(norm1, norm2)
    for a, b in zip(grads(first), grads(second)):
        assert torch.equal(a, b)


@pytest.fixture(params=[
    LaunchSettings(chunk=64, block=16, num_warps=1, programs_per_sm=8, max_programs=8),
    LaunchSettings(chunk=128, block=32, num_warps=1, programs_per_sm=3, max_programs=3),
], ids=["chunk64-grid8", "chunk128-grid3"])
def launch_settings(request):
    """Small chunks and a multi-program grid (the interpreter default grid is one program)."""
    old = use_settings(request.param)
    fastclip.clear_cache()  # plans remember the settings they were built with
    yield request.param
    use_settings(old)
    fastclip.clear_cache()


@pytest.mark.parametrize("norm_type", [2, 3, math.inf], ids=str)
def test_result_does_not_depend_on_chunk_size_or_grid(backend, device, launch_settings, norm_type):
    params = mixed_params(ALL_DTYPES, device, numel=500) + make_params([(3,)] * 5, device=device)
    max_norm = 0.5 * ref_norm(grads(params), norm_type)

    norm, _, theirs, originals = clip_both(params, max_norm, norm_type)

    expected = assert_norm_accurate(norm, originals, norm_type)
    assert_grads_clipped(grads(params), grads(theirs), originals, ref_coef(max_norm, expected))


# ----------------------------------------------------------------------------------------------
# optax invariants (optax/transforms/_clipping_test.py)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("norm_type", [1, 2, math.inf], ids=str)
def test_after_clipping_the_norm_equals_max_norm(backend, device, dtype, norm_type):
    params = make_params([(300,), (7, 9)], dtype=dtype, device=device, scale=5.0)
    max_norm = 0.3 * ref_norm(grads(params), norm_type)

    fastclip.clip_(params, max_norm, norm_type)

    rtol = 2e-5 if dtype not in HALF else 1e-2  # half grads are rounded after scaling
    assert ref_norm(grads(params), norm_type) == pytest.approx(max_norm, rel=rtol)


@pytest.mark.parametrize("norm_type", [2, math.inf], ids=str)
def test_clipping_twice_equals_clipping_once(backend, device, norm_type):
    once = make_params([(300,), (7, 9)], device=device, scale=5.0)
    twice = clone_params(once)
    max_norm = 0.3 * ref_norm(grads(once), norm_type)

    fastclip.clip_(once, max_norm, norm_type)
    fastclip.clip_(twice, max_norm, norm_type)
    fastclip.clip_(twice, max_norm, norm_type)

    for a, b in zip(grads(once), grads(twice)):
        torch.testing.assert_close(b, a, rtol=2e-5, atol=0)


def test_huge_threshold_changes_nothing(backend, device):
    params = mixed_params(ALL_DTYPES, device)
    originals = [g.clone() for g in grads(params)]

    norm = fastclip.clip_(params, 1e30)

    assert_norm_accurate(norm, originals, 2)
    for g, g0 in zip(grads(params), originals):
        assert torch.equal(g, g0)


# ----------------------------------------------------------------------------------------------
# float64 precision (the general tests above hold fp64 to the 2e-5 contract only)

def test_fp64_grads_are_scaled_by_the_exact_float64_coefficient(backend, device):
    # regression: the Triton launchers passed max_norm as a Python float, which Triton types fp32
    params = make_params([(300,), (7, 9)], dtype=torch.float64, device=device)
    max_norm = 0.7  # not representable in fp32
    originals = [g.clone() for g in grads(params)]
    theirs = clone_params(params)

    norm = fastclip.clip_(params, max_norm)
    torch.nn.utils.clip_grad_norm_(theirs, max_norm)

    coef = ref_coef(max_norm, ref_norm(originals, 2))
    assert norm.item() == pytest.approx(ref_norm(originals, 2), rel=1e-13)
    for g, g0, t in zip(grads(params), originals, grads(theirs)):
        torch.testing.assert_close(g, g0 * coef, rtol=1e-13, atol=0)
        torch.testing.assert_close(g, t, rtol=1e-13, atol=0)


@pytest.mark.parametrize("scale", [1e20, 1e-30], ids=["1e20", "1e-30"])
def test_fp64_norm_of_general_order_is_finite_and_accurate_for_values_beyond_fp32_range(backend, device, scale):
    # |x|^3 of these values overflows (1e60) or underflows (1e-90) fp32; the 3-norm is ~scale * 7.
    # regression: the scale kernel took the 1/p root of the fp64 power sum in fp32 (inf / 0)
    params = make_params([(300,), (5,)], dtype=torch.float64, device=device, scale=scale)
    originals = [g.clone() for g in grads(params)]
    theirs = clone_params(params)

    norm = fastclip.clip_(params, scale, norm_type=3)
    torch_norm = torch.nn.utils.clip_grad_norm_(theirs, scale, norm_type=3)

    expected = ref_norm(originals, 3)
    assert math.isfinite(norm.item()) and norm.item() > 0
    assert abs(norm.item() - expected) <= NORM_RTOL * expected
    torch.testing.assert_close(norm, torch_norm, rtol=NORM_RTOL, atol=0)
