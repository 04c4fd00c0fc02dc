"""Drop-in for frameworks: code calling torch.nn.utils.clip_grad_norm_ runs fastclip, unedited.

The spec (issue 4, part 5): ``fastclip.patch_torch()`` / ``unpatch_torch()`` and a context
manager make call sites that look the function up the way HF accelerate, Lightning and timm do
(``torch.nn.utils.clip_grad_norm_(...)`` at call time, or ``from torch.nn.utils import
clip_grad_norm_`` executed after patching) use fastclip; patching is idempotent and unpatching
restores torch's original objects exactly.
"""
from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.utils
import torch.nn.utils.clip_grad

import fastclip
import fastclip.api
from fastclip import custom_op, patch
from oracles import clone_params, grads, make_params, spy_calls

NAMES = ["clip_grad_norm_", "clip_grad_norm", "clip_grad_value_", "get_total_norm", "clip_grads_with_norm_"]
MODULES = [torch.nn.utils, torch.nn.utils.clip_grad]
TORCH = {(m, n): getattr(m, n) for m in MODULES for n in NAMES if hasattr(m, n)}  # before any patching


@pytest.fixture(autouse=True)
def _unpatched():
    patch.unpatch_torch()
    yield
    patch.unpatch_torch()
    assert all(getattr(m, n) is f for (m, n), f in TORCH.items()), "a test left torch patched"


@pytest.fixture
def calls(monkeypatch):
    """Counts the calls that reach fastclip's public functions."""
    return spy_calls(monkeypatch, fastclip.api, ("clip_", "total_norm", "clip_with_norm_", "clip_value_"))


# call sites written the way the frameworks write them ---------------------------------------

def accelerate_like_clip(parameters, max_norm, norm_type=2):
    """accelerate.Accelerator.clip_grad_norm_ / timm's dispatch_clip_grad: attribute lookup at call time."""
    return torch.nn.utils.clip_grad_norm_(parameters, max_norm, norm_type=norm_type)


def lightning_like_clip(parameters, clip_val):
    """Lightning's precision plugin goes through the clip_grad submodule."""
    return torch.nn.utils.clip_grad.clip_grad_norm_(parameters, clip_val)


def _model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 20), torch.nn.ReLU(), torch.nn.Linear(20, 3))
    model(torch.randn(8, 10)).square().sum().mul(10).backward()
    return model


def _assert_same_grads(a, b, rtol=1e-5):
    listed = (m.parameters() if hasattr(m, "parameters") else m for m in (a, b))
    for p, q in zip(*listed):
        torch.testing.assert_close(p.grad, q.grad, rtol=rtol, atol=rtol * 1e-2)


# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("call_site", [accelerate_like_clip, lightning_like_clip])
def test_framework_call_sites_run_fastclip_and_clip_like_torch(call_site, calls):
    model = _model()
    reference = _model()
    expected = TORCH[(torch.nn.utils, "clip_grad_norm_")](reference.parameters(), 1.0)

    patch.patch_torch()
    norm = call_site(model.parameters(), 1.0)

    assert calls == ["clip_"]
    assert float(norm) > 1.0, "the test must really clip"
    torch.testing.assert_close(norm, expected, rtol=1e-5, atol=0)
    _assert_same_grads(model, reference)


def test_import_after_patching_gets_fastclip_import_before_keeps_torch(calls):
    namespace_before, namespace_after = {}, {}
    exec("from torch.nn.utils import clip_grad_norm_", namespace_before)
    patch.patch_torch()
    exec("from torch.nn.utils import clip_grad_norm_", namespace_after)
    exec("from torch.nn.utils.clip_grad import clip_grad_norm_ as from_submodule", namespace_after)

    assert namespace_after["clip_grad_norm_"] is patch.clip_grad_norm_
    assert namespace_after["from_submodule"] is patch.clip_grad_norm_
    assert namespace_before["clip_grad_norm_"] is TORCH[(torch.nn.utils, "clip_grad_norm_")]  # holds torch's object

    namespace_after["clip_grad_norm_"](_model().parameters(), 1.0)
    assert calls == ["clip_"]


def test_patch_is_idempotent_and_unpatch_restores_the_original_objects():
    first = patch.patch_torch()
    second = patch.patch_torch()
    assert first == second and "torch.nn.utils.clip_grad_norm_" in first
    assert patch.is_patched()
    for (module, name) in TORCH:
        assert getattr(module, name) is not TORCH[(module, name)], f"{module.__name__}.{name} not patched"
    patch.unpatch_torch()
    patch.unpatch_torch()  # nothing left to undo: a no-op
    assert not patch.is_patched()
    for (module, name), original in TORCH.items():
        assert getattr(module, name) is original


def test_unpatch_leaves_a_later_patch_by_someone_else_alone():
    patch.patch_torch()
    theirs = lambda *a, **k: None  # noqa: E731  (another library wrapping clip_grad_norm_ after us)
    torch.nn.utils.clip_grad_norm_ = theirs
    try:
        patch.unpatch_torch()
        assert torch.nn.utils.clip_grad_norm_ is theirs
        assert torch.nn.utils.clip_grad.clip_grad_norm_ is TORCH[(torch.nn.utils.clip_grad, "clip_grad_norm_")]
    finally:
        torch.nn.utils.clip_grad_norm_ = TORCH[(torch.nn.utils, "clip_grad_norm_")]


def test_context_manager_patches_inside_and_nests(calls):
    with fastclip.patch.patched():
        assert patch.is_patched()
        accelerate_like_clip(_model().parameters(), 1.0)
        with fastclip.patch.patched():
            assert patch.is_patched()
        assert patch.is_patched(), "the inner block must not unpatch the outer one"
    assert not patch.is_patched()
    assert calls == ["clip_"]

    patch.patch_torch()
    with fastclip.patch.patched():
        pass
    assert patch.is_patched(), "patched before the block: still patched after it"


def test_context_manager_restores_on_error():
    with pytest.raises(ZeroDivisionError):
        with fastclip.patch.patched():
            1 / 0
    assert not patch.is_patched()


def test_the_other_functions_are_served_by_fastclip_too(calls):
    params = make_params([(6, 4), (9,)], scale=3.0)
    theirs = clone_params(params)
    with fastclip.patch.patched():
        norm = torch.nn.utils.get_total_norm(grads(params), 2.0)
        torch.nn.utils.clip_grads_with_norm_(params, 1.0, norm)
        torch.nn.utils.clip_grad_value_(params, 0.1)
    expected = TORCH[(torch.nn.utils, "get_total_norm")](grads(theirs), 2.0)
    TORCH[(torch.nn.utils, "clip_grads_with_norm_")](theirs, 1.0, expected)
    TORCH[(torch.nn.utils, "clip_grad_value_")](theirs, 0.1)
    assert calls == ["total_norm", "clip_with_norm_", "clip_value_"]
    torch.testing.assert_close(norm, expected, rtol=1e-5, atol=0)
    _assert_same_grads(params, theirs)


def test_deprecated_alias_warns_like_torch_and_clips(calls):
    model, reference = _model(), _model()
    with fastclip.patch.patched(), pytest.warns(FutureWarning, match="deprecated"):
        norm = torch.nn.utils.clip_grad_norm(model.parameters(), 1.0)
    with pytest.warns(FutureWarning):
        expected = TORCH[(torch.nn.utils, "clip_grad_norm")](reference.parameters(), 1.0)
    assert calls == ["clip_"]
    torch.testing.assert_close(norm, expected, rtol=1e-5, atol=0)


@pytest.mark.parametrize("norm_type", [2.0, 1, 3.5, math.inf, "inf"])
def test_norm_types_match_torch(norm_type):
    model, reference = _model(), _model()
    with fastclip.patch.patched():
        norm = accelerate_like_clip(model.parameters(), 0.5, norm_type=norm_type)
    expected = TORCH[(torch.nn.utils, "clip_grad_norm_")](reference.parameters(), 0.5, norm_type=norm_type)
    torch.testing.assert_close(norm, expected, rtol=1e-5, atol=0)
    _assert_same_grads(model, reference)


def test_orders_fastclip_does_not_take_go_to_torch(calls):
    model, reference = _model(), _model()
    with fastclip.patch.patched():
        norm = accelerate_like_clip(model.parameters(), 0.5, norm_type=0)  # counts non-zeros
    expected = TORCH[(torch.nn.utils, "clip_grad_norm_")](reference.parameters(), 0.5, norm_type=0)
    assert calls == []
    torch.testing.assert_close(norm, expected)
    _assert_same_grads(model, reference)


def test_empty_generator_warns_at_the_call_site_as_torch_does():
    with fastclip.patch.patched(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        norm = accelerate_like_clip((p for p in []), 1.0)
    assert float(norm) == 0.0
    [w] = [w for w in caught if "empty generator" in str(w.message)]
    assert w.filename == accelerate_like_clip.__code__.co_filename  # points at the caller's line


def _torch_step(params):
    """The four patched functions in a row, as a compiled training step might call them."""
    norm = torch.nn.utils.get_total_norm(grads(params))
    torch.nn.utils.clip_grads_with_norm_(params, 1.0, norm)
    torch.nn.utils.clip_grad_value_(params, 0.1)
    return norm, accelerate_like_clip(params, 0.05)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_torch_compile_sees_no_graph_break_through_the_patch(dtype, calls):
    if not (custom_op.available and hasattr(fastclip.api, "_custom_op")):
        pytest.xfail("fastclip.api does not route through fastclip.custom_op under torch.compile yet")
    params = make_params([(6, 4), (9,)], dtype=dtype, scale=3.0)
    theirs = clone_params(params)
    expected = _torch_step_unpatched(theirs)
    with fastclip.patch.patched():
        torch._dynamo.reset()
        got = torch.compile(lambda: _torch_step(params), fullgraph=True, backend="aot_eager")()
    assert calls == ["total_norm", "clip_with_norm_", "clip_value_", "clip_"]  # traced once, each op in the graph
    for norm, want in zip(got, expected):
        assert norm.dtype == want.dtype  # torch's dtype: bf16 for bf16 grads
        torch.testing.assert_close(norm, want, rtol=1e-5 if dtype == torch.float32 else 2 ** -7, atol=0)
    _assert_same_grads(params, theirs, rtol=1e-5 if dtype == torch.float32 else 2 ** -7)


def _torch_step_unpatched(params):
    norm = TORCH[(torch.nn.utils, "get_total_norm")](grads(params))
    TORCH[(torch.nn.utils, "clip_grads_with_norm_")](params, 1.0, norm)
    TORCH[(torch.nn.utils, "clip_grad_value_")](params, 0.1)
    return norm, TORCH[(torch.nn.utils, "clip_grad_norm_")](params, 0.05)


@pytest.mark.parametrize("norm_type", [-math.inf, 0, -2.0])
def test_orders_up_to_zero_raise_in_the_direct_api_and_go_to_torch_through_the_patch(norm_type, calls):
    params = make_params([(6, 4), (9,)], scale=3.0)
    with pytest.raises(ValueError, match=r"norm_type must be > 0.*torch\.nn\.utils\.clip_grad_norm_"):
        fastclip.api.clip_(params, 1.0, norm_type)
    theirs = clone_params(params)
    expected = TORCH[(torch.nn.utils, "clip_grad_norm_")](theirs, 1.0, norm_type)
    with fastclip.patch.patched():
        norm = torch.nn.utils.clip_grad_norm_(params, 1.0, norm_type)
    assert calls == ["clip_"]  # the direct call above; the patched one went to torch
    torch.testing.assert_close(norm, expected)
    _assert_same_grads(params, theirs)


@pytest.mark.parametrize("grad, max_norm, kwargs, served", [
    (torch.tensor([3.0, 4.0]), 1.0, {}, ["clip_"]),
    (torch.tensor([3.0, 4.0], dtype=torch.bfloat16), 1.0, {}, ["clip_"]),
    (torch.tensor([3.0 + 4.0j]), 1.0, {}, []),
    (torch.tensor([3.0, 4.0]), "1.0", {}, []),
    (torch.tensor([3.0, 4.0]), -1.0, {}, []),
    (torch.tensor([3.0, 4.0]), 1.0, {"norm_type": 0}, []),
    (torch.tensor([3.0, 4.0]), 1.0, {"foreach": 1}, []),
], ids=["fp32", "bf16", "complex", "str-max-norm", "negative-max-norm", "norm_type-0", "foreach-1"])
def test_under_torch_compile_the_patch_hands_the_same_inputs_to_torch(grad, max_norm, kwargs, served, calls):
    if not (custom_op.available and hasattr(fastclip.api, "_custom_op")):
        pytest.xfail("fastclip.api does not route through fastclip.custom_op under torch.compile yet")
    [theirs], [ours] = (_leaf_with_grad(grad) for _ in range(2))
    expected = TORCH[(torch.nn.utils, "clip_grad_norm_")]([theirs], max_norm, **kwargs)
    with fastclip.patch.patched():
        torch._dynamo.reset()
        norm = torch.compile(lambda: accelerate_like_clip_kw([ours], max_norm, **kwargs), backend="eager")()
    assert calls == served
    assert norm.dtype == expected.dtype
    torch.testing.assert_close(norm, expected)
    torch.testing.assert_close(ours.grad, theirs.grad)


def _leaf_with_grad(grad):
    leaf = torch.nn.Parameter(torch.zeros(grad.shape, dtype=grad.dtype))
    leaf.grad = grad.clone()
    return [leaf]


def accelerate_like_clip_kw(parameters, max_norm, **kwargs):
    return torch.nn.utils.clip_grad_norm_(parameters, max_norm, **kwargs)
