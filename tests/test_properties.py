"""Property tests: for random lists of gradients, clip_ agrees with the float64 oracle and torch.

Hypothesis draws the tensor list (sizes including 0 and odd lengths, 1-D and 2-D, contiguous or
transposed), the dtype of each tensor, the norm order, the data scale and seed, and the regime:
max_norm is a multiple of the true norm, below it (clip) or above it (no clip, grads must come back
bitwise untouched).  Oracles: ``oracles.ref_norm``/``ref_coef`` in float64 and
torch.nn.utils.clip_grad_norm_ on clones (given only the non-empty grads: torch's inf norm raises
on an empty tensor, and an empty tensor contributes nothing).
"""
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastclip
from oracles import clone_params, grads, ref_coef, ref_norm
from test_clip import ALL_DTYPES, assert_grads_clipped, assert_norm_accurate, param_with_grad

SETTINGS = settings(max_examples=30, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

tensor_specs = st.lists(
    st.tuples(
        st.one_of(st.tuples(st.integers(0, 600)), st.tuples(st.integers(0, 24), st.integers(0, 24))),
        st.sampled_from(ALL_DTYPES),
        st.booleans(),  # transposed (2-D only)
    ),
    min_size=1, max_size=6,
)
norm_types = st.sampled_from([1.0, 2.0, 3.5, math.inf])
# scales keep every fp16 group norm inside fp16 range, so torch's (fp16-rounded) norm stays finite
scales = st.sampled_from([1e-2, 1.0, 10.0])
clip_ratios = st.floats(0.05, 0.9)
no_clip_ratios = st.floats(1.1, 10.0)


def build_params(specs, scale, seed, device):
    gen = torch.Generator().manual_seed(seed)
    params = []
    for shape, dtype, transposed in specs:
        if transposed and len(shape) == 2:
            data = torch.randn(shape[::-1], generator=gen, dtype=torch.float64).t()
        else:
            data = torch.randn(shape, generator=gen, dtype=torch.float64)
        grad = (data * scale).to(dtype)  # .to keeps the transposed strides
        params.append(param_with_grad(grad.to(device)))
    return params


@SETTINGS
@given(specs=tensor_specs, norm_type=norm_types, scale=scales, ratio=clip_ratios, seed=st.integers(0, 2**31 - 1))
def test_clipping_random_gradients_matches_float64_oracle_and_torch(backend, device, specs, norm_type, scale, ratio,
                                                                   seed):
    params = build_params(specs, scale, seed, device)
    originals = [g.clone() for g in grads(params)]
    expected = ref_norm(originals, norm_type)
    max_norm = ratio * expected
    nonempty = [i for i, g in enumerate(originals) if g.numel()]
    theirs = clone_params([params[i] for i in nonempty])

    norm = fastclip.clip_(params, max_norm, norm_type)
    if nonempty:
        torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type)

    assert norm.dtype == (torch.float64 if any(d == torch.float64 for _, d, _ in specs) else torch.float32)
    if expected == 0.0:  # every tensor empty
        assert norm.item() == 0.0
        return
    assert_norm_accurate(norm, originals, norm_type)
    assert_grads_clipped([grads(params)[i] for i in nonempty], grads(theirs), [originals[i] for i in nonempty],
                         ref_coef(max_norm, expected))
    for g, (shape, _, _) in zip(grads(params), specs):
        assert tuple(g.shape) == tuple(shape)


@SETTINGS
@given(specs=tensor_specs, norm_type=norm_types, scale=scales, ratio=no_clip_ratios, seed=st.integers(0, 2**31 - 1))
def test_gradients_within_max_norm_come_back_bitwise_untouched(backend, device, specs, norm_type, scale, ratio, seed):
    params = build_params(specs, scale, seed, device)
    originals = [g.clone() for g in grads(params)]
    expected = ref_norm(originals, norm_type)

    norm = fastclip.clip_(params, ratio * expected, norm_type)

    if expected > 0.0:
        assert_norm_accurate(norm, originals, norm_type)
    for g, g0 in zip(grads(params), originals):
        assert torch.equal(g, g0) and g.stride() == g0.stride()


@SETTINGS
@given(specs=tensor_specs, norm_type=norm_types, scale=scales, seed=st.integers(0, 2**31 - 1))
def test_total_norm_of_random_tensors_matches_float64_oracle(backend, device, specs, norm_type, scale, seed):
    tensors = [p.grad for p in build_params(specs, scale, seed, device)]
    norm = fastclip.total_norm(tensors, norm_type)
    if ref_norm(tensors, norm_type) == 0.0:
        assert norm.item() == 0.0
    else:
        assert_norm_accurate(norm, tensors, norm_type)


@pytest.mark.parametrize("seed", range(3))
def test_clip_value_of_random_gradients_equals_torch(backend, device, seed):
    # not a hypothesis test: one comparison per dtype is enough for an elementwise clamp
    params = build_params([((257,), d, False) for d in (torch.float32, torch.float16, torch.bfloat16)]
                          + [((13, 11), torch.float32, True)], 3.0, seed, device)
    theirs = clone_params(params)
    fastclip.clip_value_(params, 1.5)
    torch.nn.utils.clip_grad_value_(theirs, 1.5)
    for g, t in zip(grads(params), grads(theirs)):
        assert torch.equal(g, t)
