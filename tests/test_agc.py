"""fastclip.agc_ against a float64 oracle of timm's formula, on both backends.

Oracle (``agc_oracle``): timm's ``adaptive_clip_grad`` evaluated in float64 on the same weights
and gradients: per unit (dim-0 slice, whole tensor for 0-/1-D) m = clip_factor * max(||w||, eps),
the unit keeps its gradient if ||g|| < m, else g * m / max(||g||, 1e-6).  fastclip accumulates in
fp32 (fp64 for fp64), so a unit whose ||g|| is within 1e-5 relative of m may go either way; every
other unit must take the oracle's decision, clipped units must match the oracle's values within
the dtype's rounding, and units that don't clip must be bitwise untouched.

Under the Triton interpreter the chunk is 256 elements: rows of up to 256 elements are packed into
rows chunks, longer units are split across chunks, so small shapes cover both table layouts.
"""
import math

import pytest
import torch

import fastclip
from fastclip.agc import clear_agc_cache

#: clipped values vs the float64 oracle: relative tolerance per dtype (coefficient + rounding)
VALUE_RTOL = {torch.float32: 2e-6, torch.bfloat16: 8e-3, torch.float16: 1e-3, torch.float64: 1e-12}
TIE_RTOL = 1e-5  # ||g|| this close to max_norm: either decision is right
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


@pytest.fixture(autouse=True)
def _fresh_agc_plans():
    clear_agc_cache()
    yield
    clear_agc_cache()


def unit_norms64(t: torch.Tensor, p: float) -> torch.Tensor:
    """float64 norm of each unit, shaped to broadcast against ``t`` (timm's unitwise_norm)."""
    x = t.detach().double()
    if x.dim() <= 1:
        return torch.linalg.vector_norm(x, p) if x.numel() else torch.zeros((), dtype=torch.float64)
    if x.numel() == 0:
        return torch.zeros((x.shape[0],) + (1,) * (x.dim() - 1), dtype=torch.float64)
    return torch.linalg.vector_norm(x, p, dim=tuple(range(1, x.dim())), keepdim=True)


def agc_oracle(w, g, clip_factor, eps, p):
    """(expected gradient in float64, per-unit clip decision, per-unit tie flag)."""
    max_norm = unit_norms64(w, p).clamp(min=eps) * clip_factor
    g_norm = unit_norms64(g, p)
    g64 = g.detach().double()
    expected = torch.where(g_norm < max_norm, g64, g64 * (max_norm / g_norm.clamp(min=1e-6)))
    tie = ((g_norm - max_norm).abs() <= TIE_RTOL * max_norm) & torch.isfinite(max_norm)
    return expected, torch.logical_not(g_norm < max_norm), tie


def params_of(shapes, dtype=torch.float32, grad_scale=0.02, layout=None):
    """Parameters with random weights and gradients (a unit clips when ||g|| >~ 0.01 ||w||)."""
    out = []
    for shape in shapes:
        w = torch.randn(shape, dtype=torch.float64).to(dtype)
        g = (torch.randn(shape, dtype=torch.float64) * grad_scale * torch.rand(()) * 2).to(dtype)
        if layout is not None:
            w, g = layout(w), layout(g)
        p = torch.nn.Parameter(w)
        p.grad = g
        out.append(p)
    return out


def assert_agc_matches_oracle(params, originals, clip_factor=0.01, eps=1e-3, p=2.0):
    """Every unit took the oracle's decision (ties aside), with the oracle's values; others untouched."""
    for i, (param, g0) in enumerate(zip(params, originals)):
        expected, clips, tie = agc_oracle(param, g0, clip_factor, eps, p)
        got = param.grad
        if got.numel() == 0:
            continue
        clips, tie = clips.expand(got.shape), tie.expand(got.shape)
        untouched = ~clips & ~tie
        assert torch.equal(got[untouched], g0[untouched]), f"tensor {i}: a unit that doesn't clip was written"
        sure = clips & ~tie
        ref, val = expected[sure], got[sure].double()
        finite = torch.isfinite(ref)
        assert torch.equal(torch.isnan(val), torch.isnan(ref)), f"tensor {i}: NaN pattern differs"
        scale = ref[finite].abs().max().item() if finite.any() else 1.0
        torch.testing.assert_close(val[finite], ref[finite], rtol=VALUE_RTOL[got.dtype],
                                   atol=VALUE_RTOL[got.dtype] * scale, msg=f"tensor {i}")


MIXED_SHAPES = [(7, 5), (3, 300), (1000,), (40, 2, 3, 3), (5,), (), (2, 600), (64, 4), (6, 1, 1, 1), (1, 9),
                (3, 2, 2, 2, 2)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_agc_matches_timms_formula_for_1d_to_5d_shapes(backend, dtype):
    params = params_of(MIXED_SHAPES, dtype)
    originals = [q.grad.clone() for q in params]

    assert fastclip.agc_(params) is None

    assert_agc_matches_oracle(params, originals)


@pytest.mark.parametrize("norm_type", [1.0, float("inf"), 3.0, "inf"])
def test_agc_matches_timms_formula_for_other_norm_orders(backend, norm_type):
    params = params_of(MIXED_SHAPES, grad_scale=0.05)
    originals = [q.grad.clone() for q in params]

    fastclip.agc_(params, clip_factor=0.02, norm_type=norm_type)

    assert_agc_matches_oracle(params, originals, clip_factor=0.02, p=float(norm_type))


def test_units_range_from_rows_of_one_element_to_units_split_across_chunks(backend):
    # rows of 1 and 4 (many rows per chunk), a row of 250 (one per chunk), rows of 1 000 and a
    # vector of 5 000 (cut into pieces of 256 under the interpreter, combined in launch 2)
    params = params_of([(300, 1, 1, 1), (500, 4), (3, 250), (3, 1000), (5000,)], grad_scale=0.011)
    originals = [q.grad.clone() for q in params]

    fastclip.agc_(params)

    assert_agc_matches_oracle(params, originals)


def test_channels_last_weights_and_gradients(backend):
    channels_last = lambda t: t.contiguous(memory_format=torch.channels_last)  # noqa: E731
    params = params_of([(16, 3, 3, 3), (8, 16, 1, 1), (4, 8, 5, 5)], layout=channels_last)
    originals = [q.grad.clone() for q in params]
    assert not params[0].grad.is_contiguous() and not params[2].grad.is_contiguous()

    fastclip.agc_(params)

    assert_agc_matches_oracle(params, originals)
    assert all(q.grad.is_contiguous(memory_format=torch.channels_last) for q in params)


def test_channels_last_weight_with_contiguous_gradient_and_the_reverse(backend):
    params = params_of([(16, 3, 3, 3), (6, 4, 2, 2)])
    params[0].data = params[0].data.contiguous(memory_format=torch.channels_last)
    params[1].grad = params[1].grad.contiguous(memory_format=torch.channels_last)
    originals = [q.grad.clone() for q in params]

    fastclip.agc_(params)

    assert_agc_matches_oracle(params, originals)


def test_transposed_and_strided_units_are_clipped_correctly(backend):
    # W.t(): dim-0 slices interleave in memory; base[:, ::2]: gaps.  Both are staged.
    base = torch.randn(40, 30)
    params = [torch.nn.Parameter(torch.randn(31, 7).t()), torch.nn.Parameter(torch.randn(40, 15)),
              torch.nn.Parameter(torch.randn(300, 3).t())]
    params[0].grad = torch.randn(31, 7).t() * 0.05
    params[1].grad = base[:, ::2] * 0.02
    params[2].grad = torch.randn(300, 3).t() * 0.02
    originals = [q.grad.clone() for q in params]
    base_before = base.clone()

    fastclip.agc_(params)

    assert_agc_matches_oracle(params, originals)
    assert torch.equal(base[:, 1::2], base_before[:, 1::2])  # the gaps of the strided view are untouched


def test_empty_tensors_are_skipped(backend):
    params = params_of([(0, 5), (5, 0), (0,), (9, 3)])
    originals = [q.grad.clone() for q in params]

    fraction = fastclip.agc_(params, return_fraction=True)

    assert_agc_matches_oracle(params, originals)
    _, clips, _ = agc_oracle(params[3], originals[3], 0.01, 1e-3, 2.0)
    assert fraction.item() == pytest.approx(clips.sum().item() / 9)


def test_zero_weights_clip_against_eps_and_zero_gradients_are_untouched(backend):
    params = params_of([(6, 10), (10,), (4, 10)])
    params[0].data.zero_()  # max_norm = eps * clip_factor = 1e-5: every nonzero row clips
    params[1].data.zero_()
    params[2].grad.zero_()
    originals = [q.grad.clone() for q in params]

    fastclip.agc_(params)

    assert_agc_matches_oracle(params, originals)
    row_norms = torch.linalg.vector_norm(params[0].grad.double(), dim=1)
    torch.testing.assert_close(row_norms, torch.full((6,), 1e-5, dtype=torch.float64), rtol=1e-6, atol=0)
    assert torch.equal(params[2].grad, torch.zeros(4, 10))


def test_nan_and_inf_gradients_poison_only_their_units(backend):
    params = params_of([(5, 8), (300,), (4, 600)], grad_scale=1e-4)
    params[0].grad[2, 3] = float("nan")
    params[1].grad[7] = float("inf")
    params[2].grad[1, 500] = float("nan")
    params[2].data[3, 10] = float("nan")  # a NaN weight: max_norm is NaN, the unit clips to NaN
    originals = [q.grad.clone() for q in params]

    fastclip.agc_(params)

    assert_agc_matches_oracle(params, originals)
    assert torch.isnan(params[0].grad[2]).all() and not torch.isnan(params[0].grad[[0, 1, 3, 4]]).any()
    assert torch.isnan(params[2].grad[[1, 3]]).all() and torch.equal(params[2].grad[[0, 2]], originals[2][[0, 2]])


def test_clip_factor_zero_zeroes_every_unit_like_timm(backend):
    params = params_of([(4, 5), (7,)])
    originals = [q.grad.clone() for q in params]

    fastclip.agc_(params, clip_factor=0.0)

    assert_agc_matches_oracle(params, originals, clip_factor=0.0)
    assert all(torch.equal(q.grad, torch.zeros_like(q.grad)) for q in params)


def test_return_fraction_counts_units_that_clip(backend):
    params = params_of([(50, 7), (20,), (30, 2, 3)], grad_scale=0.01)
    originals = [q.grad.clone() for q in params]
    decisions = [agc_oracle(q, g, 0.01, 1e-3, 2.0)[1:] for q, g in zip(params, originals)]
    assert not any(tie.any() for _, tie in decisions)
    clipped = sum(int(clips.sum()) for clips, _ in decisions)

    fraction = fastclip.agc_(params, return_fraction=True)

    assert fraction.dtype == torch.float32 and fraction.dim() == 0
    assert fraction.item() == pytest.approx(clipped / 81)
    assert 0 < clipped < 81


def test_none_grads_are_skipped_and_a_generator_is_consumed_once(backend):
    params = params_of([(6, 4), (5,)])
    frozen = torch.nn.Parameter(torch.randn(3, 3))
    originals = [q.grad.clone() for q in params]

    fastclip.agc_(q for q in [params[0], frozen, params[1]])

    assert frozen.grad is None
    assert_agc_matches_oracle(params, originals)


def test_a_second_call_on_clipped_gradients_changes_nothing_clipped_units_stay_at_the_limit(backend):
    params = params_of([(12, 30), (40,)], grad_scale=0.05)
    fastclip.agc_(params)
    once = [q.grad.clone() for q in params]

    fastclip.agc_(params)

    for q, g1 in zip(params, once):
        torch.testing.assert_close(q.grad, g1, rtol=1e-6, atol=0)


@pytest.mark.parametrize("bad, error", [
    (dict(clip_factor=-0.1), ValueError), (dict(clip_factor=float("nan")), ValueError), (dict(eps=-1.0), ValueError),
    (dict(norm_type=0.0), ValueError), (dict(norm_type="fro"), ValueError), (dict(clip_factor="0.01"), TypeError),
])
def test_bad_arguments_raise_before_any_gradient_is_modified(backend, bad, error):
    params = params_of([(4, 5)], grad_scale=1.0)
    before = params[0].grad.clone()

    with pytest.raises(error):
        fastclip.agc_(params, **bad)

    assert torch.equal(params[0].grad, before)


def test_a_gradient_whose_dtype_differs_from_its_parameter_is_named(backend):
    params = params_of([(4, 5), (3,)], grad_scale=1.0)
    params[1].grad.data = params[1].grad.double()  # bypasses the assignment check, as .data does
    before = params[0].grad.clone()

    with pytest.raises(TypeError, match="parameter 1 .* torch.float32 .* torch.float64"):
        fastclip.agc_(params)

    assert torch.equal(params[0].grad, before)


def test_no_gradients_is_a_no_op(backend):
    assert fastclip.agc_([torch.nn.Parameter(torch.randn(3))]) is None
    assert fastclip.agc_([], return_fraction=True).item() == 0.0


def test_both_backends_give_the_same_clipped_gradients(monkeypatch):
    from oracles import require_triton_on_cpu

    require_triton_on_cpu()
    params = params_of(MIXED_SHAPES + [(5000,), (3, 1000)], grad_scale=0.02)
    results = {}
    for backend in ("torch", "triton"):
        monkeypatch.setenv("FASTCLIP_BACKEND", backend)
        clones = [torch.nn.Parameter(q.detach().clone()) for q in params]
        for c, q in zip(clones, params):
            c.grad = q.grad.clone()
        fastclip.agc_(clones)
        results[backend] = [c.grad for c in clones]

    for a, b in zip(results["torch"], results["triton"]):
        torch.testing.assert_close(a, b, rtol=2e-6, atol=0)


# ----------------------------------------------------------------------------------------------
# AGCClipper


def test_agc_clipper_clips_like_agc_and_reports_on_the_device(backend):
    params = params_of([(50, 7), (20,)], grad_scale=0.01)
    originals = [q.grad.clone() for q in params]
    clips = sum(int(agc_oracle(q, g, 0.01, 1e-3, 2.0)[1].sum()) for q, g in zip(params, originals))

    result = fastclip.AGCClipper(0.01)(params)

    assert_agc_matches_oracle(params, originals)
    assert result.clipped_fraction.item() == pytest.approx(clips / 51)
    assert bool(result.clipped) == (clips > 0)
    assert result.found_inf.item() == 0.0
    assert all(t.dim() == 0 for t in result)


def test_agc_clipper_flags_a_non_finite_unit(backend):
    params = params_of([(5, 4)])
    params[0].grad[1, 1] = float("inf")

    result = fastclip.AGCClipper()(params)

    assert result.found_inf.item() == 1.0


def test_agc_clipper_state_dict_round_trips_and_checks_its_hyper_parameters():
    clipper = fastclip.AGCClipper(0.02, eps=1e-4, norm_type="inf")
    state = clipper.state_dict()
    fastclip.AGCClipper(0.02, eps=1e-4, norm_type="inf").load_state_dict(state)

    with pytest.raises(ValueError, match="differ"):
        fastclip.AGCClipper(0.01).load_state_dict(state)
    fastclip.AGCClipper(0.01).load_state_dict(state, strict=False)
    with pytest.raises(ValueError, match="ZClipper"):
        clipper.load_state_dict({"policy": "ZClipper"})
    assert repr(clipper) == "AGCClipper(clip_factor=0.02, eps=0.0001, norm_type='inf')"


def test_agc_clipper_rejects_bad_hyper_parameters_at_construction():
    with pytest.raises(ValueError):
        fastclip.AGCClipper(-1.0)
    with pytest.raises(ValueError):
        fastclip.AGCClipper(norm_type=-2)
    assert math.isinf(fastclip.AGCClipper(float("inf")).clip_factor)
