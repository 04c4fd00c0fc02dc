"""Bad input raises a TypeError/ValueError/RuntimeError that names the problem, before any grad is
modified.

Oracle: the exception type and a message naming the offending item (its index) or value, and every
gradient bitwise equal to a clone taken before the call.
"""
import math

import pytest
import torch

import fastclip
import fastclip._backend
from oracles import grads, make_params

ENTRY_POINTS = {
    "clip_": lambda params: fastclip.clip_(params, 1.0),
    "clip_value_": lambda params: fastclip.clip_value_(params, 0.1),
    "clip_with_norm_": lambda params: fastclip.clip_with_norm_(params, 1.0, torch.tensor(100.0)),
}


@pytest.fixture
def good_params(device):
    """Grads that every call below would clip, so an untouched grad proves nothing ran."""
    return make_params([(300,), (7, 9)], device=device, scale=10.0)


def snapshot(params):
    return [g.clone() for g in grads(params)]


def assert_untouched(params, before):
    for i, (g, g0) in enumerate(zip(grads(params), before)):
        assert torch.equal(g, g0), f"grad {i} was modified by a call that raised"


def tensor_with_grad(grad: torch.Tensor) -> torch.Tensor:
    """A plain tensor carrying ``grad`` (a Parameter can't hold an integer, bool or complex grad)."""
    holder = torch.zeros(grad.shape, dtype=grad.dtype, device=grad.device)
    holder.grad = grad
    return holder


# ----------------------------------------------------------------------------------------------
# the parameters and their grads


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("item", [3, "w", None, [torch.zeros(2)]], ids=["int", "str", "None", "list"])
def test_non_tensor_item_in_parameters_raises_typeerror_naming_its_index(backend, device, good_params, entry, item):
    params = good_params[:1] + [item] + good_params[1:]
    before = snapshot(good_params)
    with pytest.raises(TypeError, match=r"item 1\b"):
        ENTRY_POINTS[entry](params)
    assert_untouched(good_params, before)


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.uint8, torch.bool, torch.complex64],
                         ids=str)
def test_non_floating_grad_raises_typeerror_naming_its_index_and_dtype(backend, device, good_params, entry, dtype):
    bad = tensor_with_grad(torch.ones(5, device=device).to(dtype))
    params = good_params[:1] + [bad] + good_params[1:]
    before = snapshot(good_params)
    with pytest.raises(TypeError, match=rf"\b1\b.*{dtype}"):
        ENTRY_POINTS[entry](params)
    assert_untouched(good_params, before)


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_sparse_grad_raises_typeerror_naming_its_index_and_layout(backend, device, good_params, entry):
    sparse = torch.nn.Parameter(torch.zeros(4, 5, device=device))
    sparse.grad = torch.randn(4, 5, device=device).to_sparse()
    params = good_params + [sparse]
    before = snapshot(good_params)
    with pytest.raises(TypeError, match=r"\b2\b.*sparse"):
        ENTRY_POINTS[entry](params)
    assert_untouched(good_params, before)


@pytest.mark.parametrize("item", [3, torch.ones(3, dtype=torch.int64)], ids=["int", "int64-tensor"])
def test_total_norm_of_a_bad_tensor_raises_typeerror_naming_its_index(backend, device, item):
    tensors = [torch.randn(3, device=device), torch.randn(4, device=device), item]
    with pytest.raises(TypeError, match=r"\b2\b"):
        fastclip.total_norm(tensors)


def test_bad_grad_error_names_its_index_in_parameters_even_after_none_grads(backend, device):
    # regression: the index was the position among the non-None grads ('gradient 0' for item 1)
    frozen = torch.nn.Parameter(torch.randn(3, device=device))  # grad None: skipped, but still item 0
    bad = tensor_with_grad(torch.ones(5, dtype=torch.int32, device=device))
    with pytest.raises(TypeError, match=r"\b1\b.*int32"):
        fastclip.clip_([frozen, bad], 1.0)


# ----------------------------------------------------------------------------------------------
# thresholds and norm orders


@pytest.mark.parametrize("max_norm, error, pattern", [
    (-1.0, ValueError, r"max_norm.*-1"),
    (-1e-9, ValueError, r"max_norm.*-1e-09"),
    (float("nan"), ValueError, r"max_norm.*nan"),
    (torch.ones(2), ValueError, r"max_norm.*\(2,\)"),
    (torch.ones(1, 2), ValueError, r"max_norm.*\(1, 2\)"),
    ("1.0", TypeError, r"max_norm.*str"),
    (None, TypeError, r"max_norm.*NoneType"),
], ids=["-1", "-1e-9", "nan", "tensor-2-elements", "tensor-1x2", "str", "None"])
def test_bad_max_norm_raises_naming_the_value_and_touches_nothing(backend, device, good_params, max_norm, error,
                                                                  pattern):
    before = snapshot(good_params)
    with pytest.raises(error, match=pattern):
        fastclip.clip_(good_params, max_norm)
    with pytest.raises(error, match=pattern):
        fastclip.clip_with_norm_(good_params, max_norm, torch.tensor(100.0))
    assert_untouched(good_params, before)


@pytest.mark.parametrize("norm_type, error, pattern", [
    (0, ValueError, r"norm_type.*\b0\b"),
    (0.0, ValueError, r"norm_type.*\b0\.0\b"),
    (-1, ValueError, r"norm_type.*-1"),
    (-math.inf, ValueError, r"norm_type.*-inf"),
    (float("nan"), ValueError, r"norm_type.*nan"),
    ("fro", ValueError, r"norm_type.*'fro'"),
    ("two", ValueError, r"norm_type.*'two'"),
    ("nuc", ValueError, r"norm_type.*'nuc'"),
    (True, TypeError, r"norm_type.*bool"),
    (None, TypeError, r"norm_type.*NoneType"),
], ids=["0", "0.0", "-1", "-inf", "nan", "fro", "two", "nuc", "True", "None"])
def test_bad_norm_type_raises_naming_the_value_and_touches_nothing(backend, device, good_params, norm_type, error,
                                                                   pattern):
    before = snapshot(good_params)
    with pytest.raises(error, match=pattern):
        fastclip.clip_(good_params, 1.0, norm_type)
    with pytest.raises(error, match=pattern):
        fastclip.total_norm(grads(good_params), norm_type)
    assert_untouched(good_params, before)


@pytest.mark.parametrize("norm_type", ["inf", "INF", " inf ", "+inf", "infinity"])
def test_inf_spelled_as_a_string_is_the_max_norm(backend, device, norm_type):
    tensors = [torch.randn(300, device=device), torch.randn(5, device=device)]
    expected = max(t.abs().max().item() for t in tensors)
    assert fastclip.total_norm(tensors, norm_type).item() == expected


@pytest.mark.parametrize("clip_value, error, pattern", [
    (-0.5, ValueError, r"clip_value.*-0\.5"),
    (float("nan"), ValueError, r"clip_value.*nan"),
    (torch.tensor(-2.0), ValueError, r"clip_value.*-2"),
    ("1", TypeError, r"clip_value.*str"),
], ids=["-0.5", "nan", "negative-tensor", "str"])
def test_bad_clip_value_raises_naming_the_value_and_touches_nothing(backend, device, good_params, clip_value, error,
                                                                    pattern):
    before = snapshot(good_params)
    with pytest.raises(error, match=pattern):
        fastclip.clip_value_(good_params, clip_value)
    assert_untouched(good_params, before)


@pytest.mark.parametrize("total", [torch.ones(2), torch.ones(2, 1), torch.tensor(3)], ids=["2", "2x1", "int"])
def test_clip_with_norm_rejects_a_total_norm_that_is_not_one_float(backend, device, good_params, total):
    before = snapshot(good_params)
    with pytest.raises(ValueError, match=r"total_norm.*" + str(total.dtype)):
        fastclip.clip_with_norm_(good_params, 1.0, total)
    assert_untouched(good_params, before)


@pytest.mark.parametrize("foreach", ["yes", 1], ids=["str", "int"])
def test_foreach_that_is_not_none_or_bool_raises_typeerror(backend, device, good_params, foreach):
    before = snapshot(good_params)
    with pytest.raises(TypeError, match=rf"foreach.*{foreach!r}"):
        fastclip.clip_(good_params, 1.0, foreach=foreach)
    assert_untouched(good_params, before)


@pytest.mark.parametrize("parameters", [5, 2.0, "abc"], ids=["int", "float", "str"])
def test_parameters_that_is_not_a_tensor_or_iterable_raises_typeerror(backend, device, parameters):
    with pytest.raises(TypeError, match=type(parameters).__name__):
        fastclip.clip_(parameters, 1.0)


# ----------------------------------------------------------------------------------------------
# backend selection


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_unknown_fastclip_backend_raises_valueerror_naming_it(device, good_params, monkeypatch, entry):
    monkeypatch.setenv("FASTCLIP_BACKEND", "bogus")
    before = snapshot(good_params)
    with pytest.raises(ValueError, match=r"FASTCLIP_BACKEND.*'bogus'"):
        ENTRY_POINTS[entry](good_params)
    assert_untouched(good_params, before)


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_triton_requested_for_meta_tensors_raises_runtimeerror_naming_the_device(monkeypatch, entry):
    monkeypatch.setenv("FASTCLIP_BACKEND", "triton")
    param = torch.nn.Parameter(torch.empty(10, device="meta"))
    param.grad = torch.empty(10, device="meta")
    with pytest.raises(RuntimeError, match=r"FASTCLIP_BACKEND=triton.*\bmeta\b"):
        ENTRY_POINTS[entry]([param])


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_triton_requested_where_it_cannot_run_raises_runtimeerror_naming_the_device(device, good_params, monkeypatch,
                                                                                    entry):
    monkeypatch.setattr(fastclip._backend, "triton_can_run_on", lambda dev: (False, "no Triton here (test)"))
    monkeypatch.setenv("FASTCLIP_BACKEND", "triton")
    before = snapshot(good_params)
    with pytest.raises(RuntimeError, match=rf"FASTCLIP_BACKEND=triton.*\b{device.type}\b.*no Triton here"):
        ENTRY_POINTS[entry](good_params)
    assert_untouched(good_params, before)


def test_auto_backend_falls_back_silently_where_triton_cannot_run(device, good_params, monkeypatch):
    monkeypatch.setattr(fastclip._backend, "triton_can_run_on", lambda dev: (False, "no Triton here (test)"))
    monkeypatch.setenv("FASTCLIP_BACKEND", "auto")
    theirs = [g.clone() for g in grads(good_params)]
    expected = torch.linalg.vector_norm(torch.cat([g.double().flatten() for g in theirs])).item()

    norm = fastclip.clip_(good_params, 1.0)

    assert norm.item() == pytest.approx(expected, rel=2e-5)
