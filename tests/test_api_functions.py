"""total_norm, clip_with_norm_ and clip_value_ behave like torch's get_total_norm,
clip_grads_with_norm_ and clip_grad_value_, on both backends.

Oracles: the float64 norm of the same formula (``oracles.ref_norm``/``ref_coef``) and the torch
function run on clones.  clip_value_ has no arithmetic beyond a comparison, so it must equal torch
bit for bit.
"""
import math

import pytest
import torch

import fastclip
from oracles import clone_params, grads, make_params, ref_coef, ref_norm
from test_clip import (ALL_DTYPES, NORM_RTOL, assert_grads_clipped, assert_norm_accurate,
                       mixed_params, param_with_grad)


def random_tensors(shapes, dtype=torch.float32, device="cpu", scale=1.0):
    return [(torch.randn(s, dtype=torch.float64) * scale).to(dtype=dtype, device=device) for s in shapes]


def assert_equal_with_nan(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


# ----------------------------------------------------------------------------------------------
# total_norm


@pytest.mark.parametrize("norm_type", [0.5, 1, 2, 3, math.inf, "inf"], ids=str)
def test_total_norm_of_tensors_matches_float64_oracle_and_torch_get_total_norm(backend, device, norm_type):
    tensors = random_tensors([(300,), (7, 11), (1,), (0,)], device=device)
    before = [t.clone() for t in tensors]
    nonempty = [t for t in tensors if t.numel()]  # torch's inf norm raises on an empty tensor

    norm = fastclip.total_norm(tensors, norm_type)

    assert_norm_accurate(norm, tensors, float(norm_type))
    torch.testing.assert_close(norm, torch.nn.utils.get_total_norm(nonempty, norm_type), rtol=NORM_RTOL, atol=0)
    for t, t0 in zip(tensors, before):
        assert torch.equal(t, t0)  # reads only


def test_total_norm_of_a_single_tensor_equals_its_vector_norm(backend, device):
    tensor = torch.randn(33, 17, device=device)
    norm = fastclip.total_norm(tensor)
    assert_norm_accurate(norm, [tensor], 2)
    torch.testing.assert_close(norm, torch.linalg.vector_norm(tensor), rtol=NORM_RTOL, atol=0)


def test_total_norm_consumes_a_generator(backend, device):
    tensors = random_tensors([(100,), (5, 5)], device=device)
    assert_norm_accurate(fastclip.total_norm(t for t in tensors), tensors, 2)


def test_total_norm_of_no_tensors_is_tensor_zero_like_torch(backend, device):
    norm = fastclip.total_norm([])
    assert torch.equal(norm, torch.nn.utils.get_total_norm([]))
    assert torch.equal(norm, torch.tensor(0.0))


@pytest.mark.parametrize("dtypes, norm_dtype", [
    ((torch.float16, torch.bfloat16), torch.float32),
    ((torch.bfloat16, torch.float32), torch.float32),
    ((torch.float16, torch.float64), torch.float64),
], ids=["fp16-bf16", "bf16-fp32", "fp16-fp64"])
def test_total_norm_of_mixed_dtypes_is_float32_or_float64_never_half(backend, device, dtypes, norm_dtype):
    tensors = [t for d in dtypes for t in random_tensors([(301,)], dtype=d, device=device)]
    norm = fastclip.total_norm(tensors)
    assert norm.dtype == norm_dtype
    assert_norm_accurate(norm, tensors, 2)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_total_norm_error_if_nonfinite_raises_torchs_error(backend, device, bad):
    tensors = random_tensors([(300,), (5,)], device=device)
    tensors[1][3] = bad
    assert not math.isfinite(fastclip.total_norm(tensors).item())
    with pytest.raises(RuntimeError) as ours:
        fastclip.total_norm(tensors, error_if_nonfinite=True)
    with pytest.raises(RuntimeError) as theirs:
        torch.nn.utils.get_total_norm(tensors, error_if_nonfinite=True)
    assert str(ours.value) == str(theirs.value)


# ----------------------------------------------------------------------------------------------
# clip_with_norm_


@pytest.mark.parametrize("norm_type", [2, 3, math.inf], ids=str)
def test_clip_with_norm_from_total_norm_is_bitwise_clip_(backend, device, norm_type):
    params = mixed_params((torch.float32, torch.bfloat16, torch.float16), device)
    same = clone_params(params)
    max_norm = 0.4 * ref_norm(grads(params), norm_type)

    norm = fastclip.total_norm(grads(params), norm_type)
    fastclip.clip_with_norm_(params, max_norm, norm)
    clip_norm = fastclip.clip_(same, max_norm, norm_type)

    assert torch.equal(norm, clip_norm)
    for a, b in zip(grads(params), grads(same)):
        assert torch.equal(a, b)


def test_clip_with_norm_from_torch_get_total_norm_matches_torch_clip_grads_with_norm_(backend, device):
    params = mixed_params(ALL_DTYPES, device)
    theirs = clone_params(params)
    originals = [g.clone() for g in grads(params)]
    torch_norm = torch.nn.utils.get_total_norm(grads(params))  # float64 here (one grad is fp64)
    max_norm = 0.4 * torch_norm.item()

    fastclip.clip_with_norm_(params, max_norm, torch_norm)
    torch.nn.utils.clip_grads_with_norm_(theirs, max_norm, torch_norm)

    assert_grads_clipped(grads(params), grads(theirs), originals, ref_coef(max_norm, torch_norm.item()))


@pytest.mark.parametrize("to_norm", [
    pytest.param(float, id="python-float"),
    pytest.param(lambda x: torch.tensor(x), id="0d-fp32"),
    pytest.param(lambda x: torch.tensor([x], dtype=torch.float64), id="1-element-fp64"),
])
def test_clip_with_norm_accepts_a_float_or_one_element_tensor_norm(backend, device, to_norm):
    params = make_params([(300,), (7, 9)], device=device)
    theirs = clone_params(params)
    originals = [g.clone() for g in grads(params)]
    total = ref_norm(originals, 2)
    max_norm = 0.4 * total

    fastclip.clip_with_norm_(params, max_norm, to_norm(total))
    torch.nn.utils.clip_grads_with_norm_(theirs, max_norm, torch.tensor(total))

    assert_grads_clipped(grads(params), grads(theirs), originals, ref_coef(max_norm, total))


def test_clip_with_norm_below_max_norm_leaves_grads_bitwise_untouched(backend, device):
    params = mixed_params(ALL_DTYPES, device)
    originals = [g.clone() for g in grads(params)]
    total = fastclip.total_norm(originals)

    fastclip.clip_with_norm_(params, 1.01 * total.item(), total)

    for g, g0 in zip(grads(params), originals):
        assert torch.equal(g, g0)


def test_clip_with_nan_norm_makes_every_grad_nan_like_torch(backend, device):
    params = make_params([(300,), (7,)], device=device)
    theirs = clone_params(params)

    fastclip.clip_with_norm_(params, 1.0, torch.tensor(float("nan")))
    torch.nn.utils.clip_grads_with_norm_(theirs, 1.0, torch.tensor(float("nan")))

    for g, t in zip(grads(params), grads(theirs)):
        assert torch.isnan(g).all() and torch.isnan(t).all()


def test_clip_with_norm_with_no_grads_does_nothing(backend, device):
    assert fastclip.clip_with_norm_([torch.nn.Parameter(torch.randn(3, device=device))], 1.0, 5.0) is None


# ----------------------------------------------------------------------------------------------
# clip_value_


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_clip_value_equals_torch_clip_grad_value_bitwise(backend, device, dtype):
    params = make_params([(300,), (7, 9), (1,)], dtype=dtype, device=device, scale=3.0)
    theirs = clone_params(params)

    fastclip.clip_value_(params, 0.7)
    torch.nn.utils.clip_grad_value_(theirs, 0.7)

    for g, t in zip(grads(params), grads(theirs)):
        assert torch.equal(g, t)


def test_clip_value_of_fp64_grads_equals_torch_bitwise(backend, device):
    # regression: the Triton launcher passed clip_value as a Python float, which Triton types fp32
    params = make_params([(300,), (7, 9)], dtype=torch.float64, device=device, scale=3.0)
    theirs = clone_params(params)

    fastclip.clip_value_(params, 0.7)  # 0.7 is not representable in fp32
    torch.nn.utils.clip_grad_value_(theirs, 0.7)

    for g, t in zip(grads(params), grads(theirs)):
        assert torch.equal(g, t)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_clip_value_keeps_nan_as_nan_and_clamps_inf_like_torch(backend, device, dtype):
    params = make_params([(300,)], dtype=dtype, device=device, scale=3.0)
    params[0].grad[[5, 6, 7]] = torch.tensor([float("nan"), float("inf"), -float("inf")], dtype=dtype, device=device)
    theirs = clone_params(params)

    fastclip.clip_value_(params, 1.5)
    torch.nn.utils.clip_grad_value_(theirs, 1.5)

    assert_equal_with_nan(params[0].grad, theirs[0].grad)
    assert torch.isnan(params[0].grad[5]) and params[0].grad[6] == 1.5 and params[0].grad[7] == -1.5


@pytest.mark.parametrize("clip_value", [
    pytest.param(1, id="int"), pytest.param(0.5, id="float"), pytest.param(0.0, id="zero"),
    pytest.param(torch.tensor(0.5), id="0d-tensor"),
])
def test_clip_value_accepts_int_float_zero_and_0d_tensor(backend, device, clip_value):
    params = make_params([(300,), (5,)], device=device, scale=2.0)
    theirs = clone_params(params)

    fastclip.clip_value_(params, clip_value)
    torch.nn.utils.clip_grad_value_(theirs, float(clip_value))

    for g, t in zip(grads(params), grads(theirs)):
        assert torch.equal(g, t)


def test_clip_value_through_strided_and_transposed_views_leaves_the_rest_of_the_base_untouched(backend, device):
    base = torch.randn(40, 30, device=device) * 3
    before = base.clone()
    transposed = torch.randn(23, 37, device=device).t() * 3
    params = [param_with_grad(base[:, ::2]), param_with_grad(transposed)]
    theirs = clone_params(params)

    fastclip.clip_value_(params, 1.0)
    torch.nn.utils.clip_grad_value_(theirs, 1.0)

    for g, t in zip(grads(params), grads(theirs)):
        assert torch.equal(g, t)
    assert torch.equal(base[:, 1::2], before[:, 1::2])
    assert params[1].grad is transposed and not transposed.is_contiguous()


def test_clip_value_leaves_values_inside_the_bound_bitwise_untouched(backend, device):
    params = mixed_params((torch.float32, torch.bfloat16, torch.float16, torch.float64), device)
    originals = [g.clone() for g in grads(params)]
    bound = max(g.abs().max().item() for g in originals) * 1.01

    fastclip.clip_value_(params, bound)

    for g, g0 in zip(grads(params), originals):
        assert torch.equal(g, g0)
