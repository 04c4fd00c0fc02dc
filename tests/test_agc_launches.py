"""AGC's cost model on the Triton path: two launches whatever the tensors, and a cached unit table.

Launches are counted by wrapping the launchers where fastclip._agc_triton calls them; tables by
wrapping fastclip._agc_plan.build_agc_plan.  Results are checked against the float64 oracle of
test_agc, so a counted launch is also a correct one.
"""
import pytest
import torch

import fastclip
from oracles import spy_calls
from test_agc import agc_oracle, assert_agc_matches_oracle, params_of

triton_only = pytest.mark.parametrize("backend", ["triton"], indirect=True)
LAUNCHERS = ("launch_agc_sums", "launch_agc_clip")
DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


@pytest.fixture
def launches(monkeypatch):
    from fastclip._backend import _triton_status

    if not _triton_status()[0]:
        return []  # no triton: nothing can launch a Triton kernel (the Triton-backend cases skip)
    import fastclip._agc_triton

    return spy_calls(monkeypatch, fastclip._agc_triton, LAUNCHERS)


@pytest.fixture
def builds(monkeypatch):
    import fastclip._agc_plan

    return spy_calls(monkeypatch, fastclip._agc_plan, ("build_agc_plan",))


def mixed_params(n):
    """``n`` parameters cycling through 1-D to 4-D shapes and the four dtypes (some units split)."""
    shapes = [(5,), (6, 7), (3, 2, 2, 2), (2, 300), (9,), (), (4, 1, 1, 1)]
    params = []
    for i in range(n):
        params += params_of([shapes[i % len(shapes)]], DTYPES[i % 4], grad_scale=0.03)
    return params


@triton_only
@pytest.mark.parametrize("n", [1, 10, 300])
def test_agc_is_exactly_two_launches_for_any_number_of_mixed_tensors(backend, launches, n):
    params = mixed_params(n) if n > 1 else params_of([(4, 700)], grad_scale=0.03)
    originals = [q.grad.clone() for q in params]

    fastclip.agc_(params)

    assert launches == list(LAUNCHERS)
    assert_agc_matches_oracle(params, originals)


@triton_only
def test_return_fraction_adds_no_launch(backend, launches):
    params = mixed_params(10)
    fastclip.agc_(params, return_fraction=True)
    assert launches == list(LAUNCHERS)


@triton_only
def test_second_call_with_the_same_parameters_builds_no_table(backend, launches, builds):
    params = mixed_params(10)
    fastclip.agc_(params)
    for q in params:  # the next step: new values in the same buffers
        q.grad.mul_(2.0)
        q.data.mul_(0.5)
    originals = [q.grad.clone() for q in params]

    fastclip.agc_(params)

    assert builds == ["build_agc_plan"]
    assert launches == list(LAUNCHERS) * 2
    assert_agc_matches_oracle(params, originals)


@triton_only
def test_new_gradient_buffers_get_a_new_table_and_old_ones_are_not_written(backend, builds):
    params = mixed_params(7)
    fastclip.agc_(params)
    old = [q.grad for q in params]
    old_values = [g.clone() for g in old]
    for q in params:
        q.grad = q.grad.clone() * 4.0
    originals = [q.grad.clone() for q in params]

    fastclip.agc_(params)

    assert builds == ["build_agc_plan"] * 2
    assert_agc_matches_oracle(params, originals)
    assert all(torch.equal(g, v) for g, v in zip(old, old_values))


@triton_only
def test_staged_transposed_gradient_is_still_two_launches(backend, launches):
    w = torch.nn.Parameter(torch.randn(30, 7).t())
    w.grad = torch.randn(30, 7).t() * 0.05
    original = w.grad.clone()

    fastclip.agc_([w])
    fastclip.agc_([w])  # the cached table's copies are refilled

    assert launches == list(LAUNCHERS) * 2
    _, clips, _ = agc_oracle(w, original, 0.01, 1e-3, 2.0)
    assert clips.any()


@pytest.mark.parametrize("backend", ["torch"], indirect=True)
def test_torch_backend_launches_no_triton_kernel(backend, launches):
    fastclip.agc_(mixed_params(10))
    assert launches == []
