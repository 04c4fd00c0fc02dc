"""The route cache never serves a stale plan: every change of a gradient that the Triton plan
depends on (address, dtype, element count, flat-span layout, a gradient set to None) is noticed,
whichever way the key is read (Python, or the optional native helper ``fastclip.native``).

Each test clips a long list of gradients once (which caches its route and plan), changes ONE
gradient in the middle of the list the way training code might, clips again, and checks:

* the route was rebuilt (the change was detected), and
* the result is right: the norm against the float64 oracle of the gradients as they are now, every
  gradient scaled by torch's coefficient, and memory that is no longer a gradient left untouched.

Both key paths run every test; the native one is skipped when the helper isn't built (and fails
instead under FASTCLIP_REQUIRE_NATIVE=1, which CI sets after building it).
"""
import os

import pytest
import torch

import fastclip
import fastclip._dispatch
import fastclip.native
from oracles import grads, make_params, ref_coef, ref_norm, require_triton_on_cpu
from test_clip import TOL

N = 41  # gradients in the list
MIDDLE = N // 2


@pytest.fixture(params=["python", "native"])
def key_path(request, monkeypatch):
    """Which code reads the gradients and their key."""
    require_triton_on_cpu()
    monkeypatch.setenv("FASTCLIP_BACKEND", "triton")
    if request.param == "python":
        monkeypatch.setattr(fastclip._dispatch, "_native", lambda: None)
    else:
        helper = fastclip.native.module()
        if helper is None:
            if os.environ.get("FASTCLIP_REQUIRE_NATIVE") == "1":
                pytest.fail("FASTCLIP_REQUIRE_NATIVE=1 but the native helper is not built (python -m fastclip.native)")
            pytest.skip("native helper not built (python -m fastclip.native)")
        monkeypatch.setattr(fastclip._dispatch, "_native", lambda: helper)
    return request.param


@pytest.fixture
def route_builds(monkeypatch):
    """How many routes the dispatcher built."""
    count = [0]
    real = fastclip._dispatch._build_route

    def counted(*args, **kwargs):
        count[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(fastclip._dispatch, "_build_route", counted)
    return count


def long_list(dtype=torch.float32):
    """N parameters with grads of varied small shapes (1 to 300 elements)."""
    shapes = [((i * 37) % 300 + 1,) if i % 3 else ((i % 7) + 1, 5) for i in range(N)]
    return make_params(shapes, dtype=dtype)


def clip_and_check(params, untouched=()):
    """clip_ at half the norm; the norm, every gradient and the untouched tensors are checked."""
    originals = [g.clone() for g in grads(params)]
    kept = [t.clone() for t in untouched]
    max_norm = 0.5 * ref_norm(originals, 2)

    norm = fastclip.clip_(params, max_norm)

    expected = ref_norm(originals, 2)
    assert norm.item() == pytest.approx(expected, rel=1e-5)
    coef = ref_coef(max_norm, expected)
    for g, g0 in zip(grads(params), originals):
        ref = g0.double() * coef
        atol, rtol = TOL[g.dtype]
        assert g.dtype == g0.dtype and g.shape == g0.shape
        torch.testing.assert_close(g.double(), ref, rtol=rtol, atol=atol * ref.abs().max().item())
    for t, t0 in zip(untouched, kept):
        assert torch.equal(t, t0), "memory that is no longer a gradient was written through a stale plan"


def test_unchanged_gradients_reuse_the_route(key_path, route_builds):
    params = long_list()
    clip_and_check(params)
    clip_and_check(params)
    assert route_builds[0] == 1


def test_a_gradient_replaced_by_new_memory_is_noticed(key_path, route_builds):
    params = long_list()
    clip_and_check(params)
    old = params[MIDDLE].grad
    params[MIDDLE].grad = old.clone()

    clip_and_check(params, untouched=[old])

    assert route_builds[0] == 2


def test_a_gradient_moved_in_place_to_other_memory_is_noticed(key_path, route_builds):
    """Same tensor object, new storage (``.data =``, as some frameworks do)."""
    params = long_list()
    clip_and_check(params)
    g = params[MIDDLE].grad
    old = g.clone()
    old_view = g.view_as(g)  # keeps the old memory alive and observable
    g.data = torch.randn_like(g)

    clip_and_check(params, untouched=[old_view])

    assert route_builds[0] == 2
    assert torch.equal(old_view, old)


def test_a_gradient_shifted_by_one_element_is_noticed(key_path, route_builds):
    """A view one element further into the same buffer: only the storage offset changes."""
    buffer = torch.randn(301)
    params = long_list()
    params[MIDDLE].data = torch.empty(300)
    params[MIDDLE].grad = buffer[:300]
    clip_and_check(params)
    first = buffer[:1].clone()

    params[MIDDLE].grad = buffer[1:]

    clip_and_check(params)
    assert route_builds[0] == 2
    assert torch.equal(buffer[:1], first)  # the element left behind is not scaled


def test_a_gradient_with_a_new_dtype_at_the_same_address_is_noticed(key_path, route_builds):
    """bf16 memory reinterpreted as fp16 (``.data =`` a dtype view): same address, count and layout."""
    params = long_list(dtype=torch.bfloat16)
    clip_and_check(params)
    g = params[MIDDLE].grad
    address = g.data_ptr()
    g.view(torch.float16).copy_(torch.rand(g.shape) + 0.5)  # meaningful fp16 values in the same memory

    g.data = g.view(torch.float16)

    assert params[MIDDLE].grad.dtype == torch.float16 and params[MIDDLE].grad.data_ptr() == address
    clip_and_check(params)
    assert route_builds[0] == 2


def test_a_gradient_shrunk_in_place_is_noticed(key_path, route_builds):
    """resize_ to fewer elements keeps the address: only the element count changes."""
    params = long_list()
    g = params[MIDDLE].grad
    params[MIDDLE].data = torch.empty(g.shape)
    clip_and_check(params)
    tail = g.view(-1)[g.numel() // 2:].clone()
    full = g.view(-1)  # still views all of the old memory
    g.resize_(g.numel() // 2)

    clip_and_check(params)

    assert route_builds[0] == 2
    assert torch.equal(full[full.numel() - tail.numel():], tail)  # the cut-off half is not scaled


def test_a_gradient_that_stops_being_one_flat_span_is_noticed(key_path, route_builds):
    """Same address, count and dtype, but every other element of a buffer (in place, as_strided_)."""
    buffer = torch.randn(2 * 120)
    params = long_list()
    params[MIDDLE].data = torch.empty(120)
    params[MIDDLE].grad = buffer[:120]
    clip_and_check(params)
    gaps = buffer[1::2].clone()

    params[MIDDLE].grad.as_strided_((120,), (2,))

    assert not params[MIDDLE].grad.is_contiguous()
    clip_and_check(params)
    assert route_builds[0] == 2
    assert torch.equal(buffer[1::2], gaps)  # the gaps between its elements are not scaled


def test_a_transposed_gradient_is_still_clipped_right(key_path, route_builds):
    """t_() keeps the same flat span: the plan stays valid whether or not the route is rebuilt."""
    params = long_list()
    params[MIDDLE].data = torch.empty(7, 5)
    params[MIDDLE].grad = torch.randn(7, 5)
    clip_and_check(params)

    params[MIDDLE].grad.t_()
    params[MIDDLE].data = params[MIDDLE].data.t()

    clip_and_check(params)


def test_a_gradient_set_to_none_is_noticed(key_path, route_builds):
    params = long_list()
    clip_and_check(params)
    old = params[MIDDLE].grad
    params[MIDDLE].grad = None

    clip_and_check(params, untouched=[old])

    assert route_builds[0] == 2


def test_a_gradient_that_reappears_is_clipped_again(key_path, route_builds):
    params = long_list()
    old = params[MIDDLE].grad
    params[MIDDLE].grad = None
    clip_and_check(params)

    params[MIDDLE].grad = old

    clip_and_check(params)
    assert route_builds[0] == 2


def test_two_gradient_lists_alternating_reuse_both_routes(key_path, route_builds):
    """Two models (or two halves) clipped in turn: each keeps its route, neither is confused."""
    first, second = long_list(), long_list()
    for _ in range(3):
        clip_and_check(first)
        clip_and_check(second)
    assert route_builds[0] == 2
