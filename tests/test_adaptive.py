"""Stateful clippers (fastclip.adaptive), the norm recorder and plot (fastclip.monitor), the demo.

Each policy is checked against a plain NumPy re-implementation of its published rule, written
here from the papers / reference code (not from fastclip.adaptive), on recorded norm sequences
with spikes.  Most tests use the torch backend on the CPU (fast); the no-sync tests also run the
Triton backend under the interpreter and the torch backend on the 'meta' device (the non-CPU path,
where reading a tensor on the host is impossible), under a dispatch mode that fails on
``aten::_local_scalar_dense``: the op every ``.item()``, ``float(t)``, ``bool(t)`` and ``if t:``
goes through.
"""
from __future__ import annotations

import importlib.util
import io
import math
import pathlib

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import fastclip
from fastclip.adaptive import (ClipResult, FixedClipper, MeanClipper, PercentileClipper, ZClipper,
                               step_if_finite)
from fastclip.monitor import NormRecorder, plot_norm_history

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _torch_backend(monkeypatch):
    monkeypatch.setenv("FASTCLIP_BACKEND", "torch")


# ------------------------------------------------------------------------------------------------
# recorded norm sequences and a one-tensor "model" whose gradient norm is the recorded value

def recorded_norms(n: int = 120, seed: int = 0) -> np.ndarray:
    """A gradient-norm trace: slow decay, log-normal noise, isolated spikes and a burst."""
    rng = np.random.default_rng(seed)
    norms = 2.0 * np.exp(-np.arange(n) / 300.0) * rng.lognormal(0.0, 0.25, n)
    for at, factor in [(30, 40.0), (31, 8.0), (55, 300.0), (80, 6.0), (81, 12.0), (82, 25.0), (100, 1e4)]:
        if at < n:
            norms[at] *= factor
    return norms


def grad_holder(dtype=torch.float64):
    return torch.nn.Parameter(torch.zeros(2, dtype=dtype))


def feed(clipper, norms, dtype=torch.float64) -> list[ClipResult]:
    """Run the clipper once per recorded norm, on a gradient of exactly that norm (3-4-5 triangle)."""
    w = grad_holder(dtype)
    results = []
    for x in norms:
        w.grad = torch.tensor([0.6 * x, 0.8 * x], dtype=dtype)
        results.append(clipper([w]))
    return results


def column(results, field) -> np.ndarray:
    return np.array([float(getattr(r, field)) for r in results])


# ------------------------------------------------------------------------------------------------
# the published rules, in NumPy (inputs: the norms the clipper measured)

def ref_mean(norms, warmup, factor=1.0, warmup_max_norm=None, running=False):
    """Pascanu et al.'s heuristic: c = factor * mean of the (post-clip) norms, after a warm-up;
    the mean covers the warm-up only, or (running) every step so far."""
    post, thresholds = [], []
    for t, x in enumerate(norms):
        if t < warmup:
            c = math.inf if warmup_max_norm is None else warmup_max_norm
        else:
            c = factor * np.mean(post if running else post[:warmup])
        thresholds.append(c)
        post.append(min(x, c))
    return np.array(thresholds)


def ref_autoclip(norms, percentile, window=None):
    """AutoClip (pseeth/autoclip autoclip.py): append the norm, clip to np.percentile(history, p)."""
    history, thresholds = [], []
    for x in norms:
        history.append(x)
        kept = history if window is None else history[-window:]
        thresholds.append(np.percentile(kept, percentile))
    return np.array(thresholds)


def ref_zclip(norms, alpha=0.97, z_thresh=2.5, warmup=25, clip_option="adaptive_scaling", clip_factor=1.0,
              max_grad_norm=None, skip_update_on_spike=False, eps=1e-6, min_std=0.0):
    """ZClip, zscore mode (bluorion-com/ZClip zclip/zclip.py at 584ce4f): thresholds, with inf =
    not clipped; ``min_std`` (not in ZClip, 0 = its rule) floors the standard deviation."""
    buffer, mean, var, thresholds = [], None, None, []
    for g in norms:
        if mean is None:  # warm-up
            buffer.append(g)
            if len(buffer) >= warmup:
                mean = sum(buffer) / len(buffer)
                var = sum((b - mean) ** 2 for b in buffer) / len(buffer)
            thresholds.append(math.inf if max_grad_norm is None else max_grad_norm)
            continue
        std = max(var ** 0.5, min_std)
        z = (g - mean) / (std + eps)
        clip_val = None
        if z > z_thresh:
            if clip_option == "adaptive_scaling":
                clip_val = (mean + (z_thresh * std) / (z / z_thresh)) * clip_factor
            else:
                clip_val = mean
        c = math.inf if clip_val is None else clip_val
        thresholds.append(c if max_grad_norm is None else min(c, max_grad_norm))
        if clip_val is not None and skip_update_on_spike:
            continue
        u = clip_val if clip_val is not None else g
        mean = alpha * mean + (1 - alpha) * u
        var = alpha * var + (1 - alpha) * (u - mean) ** 2
    return np.array(thresholds)


def assert_policy_matches(results, expected):
    norms = column(results, "norm")
    np.testing.assert_allclose(column(results, "threshold"), expected, rtol=1e-12)
    coef = np.minimum(expected / (norms + 1e-6), 1.0)
    np.testing.assert_allclose(column(results, "coef"), coef, rtol=1e-12)
    np.testing.assert_array_equal(column(results, "clipped"), coef < 1.0)


# ------------------------------------------------------------------------------------------------
# the interface

def test_result_is_five_0d_tensors_on_the_grads_device():
    w = grad_holder(torch.float32)
    w.grad = torch.tensor([3.0, 4.0])
    result = FixedClipper(1.0)([w])
    assert isinstance(result, ClipResult)
    for field in result:
        assert isinstance(field, torch.Tensor) and field.dim() == 0 and field.device == w.grad.device
    assert result.norm.dtype == result.threshold.dtype == result.coef.dtype == torch.float32
    assert result.clipped.dtype == torch.bool and result.found_inf.dtype == torch.float32


def test_fixed_clipper_clips_like_clip_and_torch():
    shapes = [(13, 7), (1000,), (3,)]
    ours = [torch.nn.Parameter(torch.zeros(s)) for s in shapes]
    for p in ours:
        p.grad = torch.randn(p.shape) * 2
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    for p, q in zip(ours, theirs):
        q.grad = p.grad.clone()
    result = FixedClipper(1.0)(ours)
    torch_norm = torch.nn.utils.clip_grad_norm_(theirs, 1.0)
    torch.testing.assert_close(result.norm, torch_norm, rtol=1e-5, atol=0)
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7)


def test_gradients_are_scaled_by_the_reported_coefficient():
    clipper = ZClipper(warmup_steps=5)
    w = grad_holder()
    for x in [1.0, 1.1, 0.9, 1.0, 1.05, 1.0, 40.0]:
        w.grad = torch.tensor([0.6 * x, 0.8 * x], dtype=torch.float64)
        before = w.grad.clone()
        result = clipper([w])
    assert bool(result.clipped)
    torch.testing.assert_close(w.grad, before * result.coef, rtol=1e-15, atol=0)


def test_no_gradients_returns_no_clip_and_leaves_state_alone():
    clipper = MeanClipper(warmup_steps=2)
    result = clipper([torch.nn.Parameter(torch.zeros(3))])
    assert float(result.norm) == 0.0 and float(result.coef) == 1.0 and not bool(result.clipped)
    assert clipper.state_dict()["state"] == {}


# ------------------------------------------------------------------------------------------------
# each policy = its published rule

@pytest.mark.parametrize("kwargs", [dict(warmup=10), dict(warmup=10, factor=1.5), dict(warmup=1, warmup_max_norm=2.0),
                                    dict(warmup=20, warmup_max_norm=0.5, factor=0.8), dict(warmup=10, running=True),
                                    dict(warmup=5, factor=2.0, warmup_max_norm=1.0, running=True)])
def test_mean_clipper_follows_the_mean_rule(kwargs):
    warmup = kwargs.pop("warmup")
    results = feed(MeanClipper(warmup, **kwargs), recorded_norms())
    assert_policy_matches(results, ref_mean(column(results, "norm"), warmup, **kwargs))


@pytest.mark.parametrize("percentile", [10.0, 50.0, 0.0, 100.0, 37.5])
def test_percentile_clipper_follows_autoclip_unbounded_history(percentile):
    clipper = PercentileClipper(percentile, capacity=16)  # 120 steps: the history doubles 3 times
    results = feed(clipper, recorded_norms())
    assert_policy_matches(results, ref_autoclip(column(results, "norm"), percentile))
    assert clipper.state_dict()["state"]["history"].numel() == 128


@pytest.mark.parametrize("window", [1, 7, 20])
def test_percentile_clipper_follows_autoclip_rolling_window(window):
    results = feed(PercentileClipper(25.0, window=window), recorded_norms())
    assert_policy_matches(results, ref_autoclip(column(results, "norm"), 25.0, window))


@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(warmup_steps=10),
    dict(warmup_steps=10, clip_option="mean"),
    dict(warmup_steps=10, skip_update_on_spike=True),
    dict(warmup_steps=10, clip_factor=0.7, max_norm=5.0),
    dict(warmup_steps=3, alpha=0.8, z_thresh=1.5),
])
def test_zclipper_follows_the_official_zscore_rule(kwargs):
    ours = dict(kwargs)
    renamed = {"warmup_steps": "warmup", "max_norm": "max_grad_norm"}  # the reference's names
    ref = {renamed.get(k, k): v for k, v in kwargs.items()}
    results = feed(ZClipper(**ours), recorded_norms())
    expected = ref_zclip(column(results, "norm"), **ref)
    assert_policy_matches(results, expected)
    assert np.isfinite(expected).sum() >= 3  # the trace has spikes that ZClip clips


def test_zclipper_warmup_statistics_are_welfords_in_step_order():
    """The reference's fixed order of operations (the kernel computes the same bits): Welford's
    running mean and sum of squared deviations, then the population variance at the last step."""
    norms = recorded_norms(8)
    clipper = ZClipper(warmup_steps=6)
    results = feed(clipper, norms[:6])
    mean = m2 = 0.0
    for n, x in enumerate(column(results, "norm"), start=1):
        delta = x - mean
        mean += delta / n
        m2 += delta * (x - mean)
    assert float(clipper.mean) == mean and float(clipper._state["var"]) == m2 / 6
    np.testing.assert_allclose([mean, m2 / 6], [np.mean(norms[:6]), np.var(norms[:6])], rtol=1e-14)


def test_reference_square_root_is_correctly_rounded():
    """torch.sqrt on the CPU (MKL) misrounds ~1 % of doubles; the reference's sqrt must not."""
    from fastclip.adaptive import _sqrt_rn

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(20000, generator=gen, dtype=torch.float64) * torch.exp2(
        torch.randint(-40, 40, (20000,), generator=gen).double())
    expected = torch.tensor([math.sqrt(v) for v in x.tolist()], dtype=torch.float64)
    assert torch.equal(_sqrt_rn(x), expected)


def test_zclipper_defaults_are_the_published_ones():
    clipper = ZClipper()
    published = (0.97, 2.5, 25, "adaptive_scaling")
    assert (clipper.alpha, clipper.z_thresh, clipper.warmup_steps, clipper.clip_option) == published


# ------------------------------------------------------------------------------------------------
# ZClip: the official class's interface, warm-up, sigma = 0

def test_zclipper_takes_the_official_keywords():
    official = ZClipper(alpha=0.9, z_thresh=2.0, max_grad_norm=5.0, eps=1e-6, warmup_steps=10, mode="zscore",
                        clip_option="adaptive_scaling", clip_factor=0.8, skip_update_on_spike=True)
    assert official.max_grad_norm == official.max_norm == 5.0
    ours = ZClipper(0.9, 2.0, max_norm=5.0, warmup_steps=10, clip_factor=0.8, skip_update_on_spike=True)
    np.testing.assert_array_equal(column(feed(official, recorded_norms()), "threshold"),
                                  column(feed(ours, recorded_norms()), "threshold"))


def test_zclipper_rejects_a_third_positional_argument():
    """The official ZClip(0.97, 2.5, 5) means max_grad_norm=5: a positional mix-up must not pass silently."""
    with pytest.raises(TypeError, match="positional"):
        ZClipper(0.97, 2.5, 5)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(mode="percentile"), NotImplementedError, "percentile"),
    (dict(mode="PERCENTILE"), NotImplementedError, "percentile"),
    (dict(mode="median"), ValueError, "mode"),
    (dict(mode=1), TypeError, "mode"),
    (dict(max_grad_norm=1.0, max_norm=1.0), TypeError, "not both"),
    (dict(max_grad_norm=-1.0), ValueError, "max_grad_norm"),
    (dict(min_std=-1.0), ValueError, "min_std"),
])
def test_zclipper_says_which_official_option_it_does_not_take(kwargs, error, match):
    with pytest.raises(error, match=match):
        ZClipper(**kwargs)


def test_zclipper_mode_is_case_insensitive_as_the_official_class():
    assert ZClipper(mode="ZScore")._config() == ZClipper()._config()


@pytest.mark.parametrize("make", [lambda: ZClipper(warmup_steps=3), lambda: MeanClipper(2), lambda: FixedClipper(1.0)])
def test_step_takes_a_module_or_its_parameters_like_the_official_class(make):
    model, twin = torch.nn.Linear(3, 2).double(), torch.nn.Linear(3, 2).double()
    by_module, by_params = make(), make()
    for x in recorded_norms(8):
        for m in (model, twin):
            for q in m.parameters():
                q.grad = torch.full_like(q, x)
        a, b = by_module.step(model), by_params.step(list(twin.parameters()))
        assert all(torch.equal(u, v) for u, v in zip(a, b))
    for q, r in zip(model.parameters(), twin.parameters()):
        assert torch.equal(q.grad, r.grad)


def test_zclipper_clips_nothing_during_its_25_warmup_steps_by_default():
    norms = recorded_norms(40) * 1e3  # large norms from the first step: still not clipped
    results = feed(ZClipper(), norms)
    assert not column(results, "clipped")[:25].any()
    assert np.isinf(column(results, "threshold")[:25]).all()


def test_zclipper_caps_warmup_norms_at_max_grad_norm():
    results = feed(ZClipper(max_grad_norm=1.0), recorded_norms(25) * 1e3)
    np.testing.assert_array_equal(column(results, "threshold"), 1.0)
    assert column(results, "clipped").all()


@pytest.mark.parametrize("warmup_norm", [0.0, 2.0])
def test_zclipper_with_constant_warmup_norms_clips_every_larger_norm_to_the_mean(warmup_norm):
    """sigma = 0 (the official rule too): z = (g - mean) / eps, so any norm above the mean is a spike
    and the adaptive threshold is the mean itself."""
    norms = [warmup_norm] * 5 + [warmup_norm + 1e-3, warmup_norm + 1.0, warmup_norm]
    results = feed(ZClipper(warmup_steps=5), norms)
    expected = ref_zclip(column(results, "norm"), warmup=5)
    assert_policy_matches(results, expected)
    np.testing.assert_array_equal(column(results, "threshold")[5:7], warmup_norm)
    np.testing.assert_array_equal(column(results, "clipped")[5:], [True, True, False])


def test_min_std_floors_sigma_so_small_changes_are_not_spikes():
    norms = [2.0] * 5 + [2.001, 2.1, 3.0, 2.0, 50.0]
    results = feed(ZClipper(warmup_steps=5, min_std=0.1), norms)
    expected = ref_zclip(column(results, "norm"), warmup=5, min_std=0.1)
    assert_policy_matches(results, expected)
    # a spike only above mean + z_thresh * (min_std + eps), about 2.25 here
    np.testing.assert_array_equal(column(results, "clipped")[5:], [False, False, True, False, True])


def test_a_state_saved_before_min_std_loads_strictly_as_the_official_rule():
    clipper = ZClipper(warmup_steps=3)
    feed(clipper, recorded_norms(5))
    saved = clipper.state_dict()
    del saved["config"]["min_std"]
    resumed = ZClipper(warmup_steps=3)
    resumed.load_state_dict(saved)
    assert torch.equal(resumed.mean, clipper.mean)
    with pytest.raises(ValueError, match="min_std"):
        ZClipper(warmup_steps=3, min_std=0.5).load_state_dict(saved)


def test_float32_gradients_get_float32_thresholds_close_to_the_rule():
    results = feed(PercentileClipper(10.0), recorded_norms(60), dtype=torch.float32)
    assert results[0].threshold.dtype == torch.float32
    np.testing.assert_allclose(column(results, "threshold"), ref_autoclip(column(results, "norm"), 10.0), rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# state_dict: exact resume

POLICIES = [
    pytest.param(lambda: FixedClipper(3.0), id="fixed"),
    pytest.param(lambda: MeanClipper(10, factor=1.2), id="mean"),
    pytest.param(lambda: MeanClipper(10, factor=1.5, running=True), id="mean-running"),
    pytest.param(lambda: PercentileClipper(10.0, capacity=8), id="autoclip"),
    pytest.param(lambda: PercentileClipper(90.0, window=16), id="autoclip-window"),
    pytest.param(lambda: ZClipper(warmup_steps=10), id="zclip"),
]


@pytest.mark.parametrize("make", POLICIES)
def test_resuming_from_state_dict_gives_bitwise_the_same_thresholds(make):
    norms = recorded_norms(90)
    uninterrupted = column(feed(make(), norms), "threshold")
    first = make()
    feed(first, norms[:45])
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = make()
    resumed.load_state_dict(torch.load(buffer))
    continued = column(feed(resumed, norms[45:]), "threshold")
    np.testing.assert_array_equal(continued, uninterrupted[45:])


def test_load_state_dict_copies_into_existing_buffers():
    """A captured CUDA graph keeps pointing at the same buffers after a reload."""
    clipper = ZClipper(warmup_steps=4)
    feed(clipper, recorded_norms(10))
    saved = clipper.state_dict()
    feed(clipper, recorded_norms(5, seed=1))
    addresses = {k: t.data_ptr() for k, t in clipper._state.items()}
    clipper.load_state_dict(saved)
    assert {k: t.data_ptr() for k, t in clipper._state.items()} == addresses
    for k, t in clipper._state.items():
        assert torch.equal(t, saved["state"][k])


def test_load_state_dict_rejects_another_policy_or_other_hyperparameters():
    saved = ZClipper(warmup_steps=4).state_dict()
    with pytest.raises(ValueError, match="ZClipper"):
        MeanClipper(4).load_state_dict(saved)
    with pytest.raises(ValueError, match="warmup_steps"):
        ZClipper(warmup_steps=5).load_state_dict(saved)
    ZClipper(warmup_steps=5).load_state_dict(saved, strict=False)


def test_state_dict_is_a_copy():
    clipper = MeanClipper(2)
    feed(clipper, [1.0, 2.0])
    saved = clipper.state_dict()
    feed(clipper, [3.0])
    assert int(saved["state"]["count"]) == 2


# ------------------------------------------------------------------------------------------------
# non-finite norms

@pytest.mark.parametrize("make", POLICIES)
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_non_finite_norm_leaves_the_state_unchanged(make, bad):
    clipper = make()
    feed(clipper, recorded_norms(30))
    before = clipper.state_dict()["state"]
    w = grad_holder()
    w.grad = torch.tensor([bad, 1.0], dtype=torch.float64)
    result = clipper([w])
    assert float(result.found_inf) == 1.0
    after = clipper.state_dict()["state"]
    for k in before:
        assert torch.equal(before[k], after[k]), k


def test_skip_mode_zeroes_the_coefficient_and_raises_found_inf():
    clipper = ZClipper(warmup_steps=3, nonfinite="skip")
    feed(clipper, [1.0, 1.2, 0.9, 1.1])
    a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))
    a.grad, b.grad = torch.tensor([1.0, math.inf, -2.0]), torch.tensor([0.5, -0.5])
    result = clipper([a, b])
    assert float(result.coef) == 0.0 and float(result.found_inf) == 1.0 and bool(result.clipped)
    assert math.isinf(float(result.norm))
    assert torch.equal(b.grad.abs(), torch.zeros(2))  # finite entries are zeroed


def test_skip_mode_passes_finite_steps_through_unchanged():
    norms = recorded_norms(40)
    skip = feed(ZClipper(warmup_steps=5, nonfinite="skip"), norms)
    propagate = feed(ZClipper(warmup_steps=5), norms)
    for field in ("norm", "threshold", "coef", "clipped", "found_inf"):
        np.testing.assert_array_equal(column(skip, field), column(propagate, field))


@pytest.mark.parametrize("optimizer", [
    lambda ps: torch.optim.Adam(ps, lr=0.1, fused=True),
    lambda ps: torch.optim.AdamW(ps, lr=0.1, weight_decay=0.1, fused=True),
    lambda ps: torch.optim.SGD(ps, lr=0.1, fused=True),
    lambda ps: torch.optim.Adam(ps, lr=0.1),  # not fused: found_inf read on the host
])
def test_a_skipped_step_does_not_poison_the_weights(optimizer):
    w = torch.nn.Parameter(torch.ones(4))
    opt = optimizer([w])
    clipper = MeanClipper(warmup_steps=2, warmup_max_norm=10.0, nonfinite="skip")
    steps = [([1.0, 2.0, 1.0, 0.5], True), ([math.nan, 1.0, math.inf, 1.0], False), ([0.5, 1.0, 1.0, 1.0], True)]
    for g, finite in steps:
        w.grad = torch.tensor(g)
        before = w.detach().clone()
        step_if_finite(opt, clipper([w]).found_inf)
        assert torch.isfinite(w).all()
        assert torch.equal(w.detach(), before) != finite
    assert not hasattr(opt, "found_inf") and not hasattr(opt, "grad_scale")
    assert all(torch.isfinite(t).all() for state in opt.state.values() for t in state.values())


def test_propagate_mode_scales_non_finite_gradients_like_torch():
    w, v = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    w.grad, v.grad = torch.tensor([math.nan, 1.0]), torch.tensor([math.nan, 1.0])
    FixedClipper(1.0)([w])
    torch.nn.utils.clip_grad_norm_([v], 1.0)
    torch.testing.assert_close(w.grad, v.grad, equal_nan=True)


def test_error_mode_raises_before_touching_gradients_or_state():
    clipper = MeanClipper(warmup_steps=2, nonfinite="error")
    feed(clipper, [1.0, 2.0, 3.0])
    before = clipper.state_dict()
    w = grad_holder()
    w.grad = torch.tensor([math.inf, 100.0], dtype=torch.float64)
    with pytest.raises(RuntimeError, match="non-finite"):
        clipper([w])
    assert w.grad[1] == 100.0
    assert all(torch.equal(before["state"][k], t) for k, t in clipper.state_dict()["state"].items())


# ------------------------------------------------------------------------------------------------
# no host synchronization

class FailOnHostRead(TorchDispatchMode):
    """Fails on aten::_local_scalar_dense, the op behind .item(), float(t), bool(t) and `if t:`."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            raise AssertionError("a tensor value was read on the host (aten::_local_scalar_dense)")
        return func(*args, **(kwargs or {}))


def test_the_sync_detector_catches_item_and_bool():
    t = torch.tensor(1.0)
    with pytest.raises(AssertionError), FailOnHostRead():
        t.item()
    with pytest.raises(AssertionError), FailOnHostRead():
        bool(t > 0)


SYNC_FREE = POLICIES + [
    pytest.param(lambda: MeanClipper(3, warmup_max_norm=1.0, nonfinite="skip"), id="mean-skip"),
    pytest.param(lambda: ZClipper(warmup_steps=3, max_norm=10.0, nonfinite="skip"), id="zclip-skip"),
]


@pytest.mark.parametrize("make", SYNC_FREE)
@pytest.mark.parametrize("where", ["triton-interpreter", "meta"])
def test_a_step_never_reads_the_device(make, where, monkeypatch):
    """Warm-up, the warm-up -> statistics transition, spikes, a NaN step, history growth: no host read."""
    if where == "meta":
        device = torch.device("meta")  # the torch backend's non-CPU path; host reads can't happen there
    else:
        from fastclip._backend import triton_can_run_on

        ok, reason = triton_can_run_on(torch.device("cpu"))
        if not ok:
            pytest.skip(reason)
        monkeypatch.setenv("FASTCLIP_BACKEND", "triton")
        device = torch.device("cpu")
    params = [torch.nn.Parameter(torch.zeros(5, 3, device=device)), torch.nn.Parameter(torch.zeros(7, device=device))]
    for p in params:
        p.grad = torch.ones_like(p)  # the same gradient buffers every step, as in training
    fastclip.clip_(params, 1.0)  # first sight of these buffers: fastclip builds its plan (host metadata)
    clipper = make()
    norms = [1.0, 1.2, 0.9, 1.1, 30.0, 1.0, math.nan, 1.05, 200.0, 0.8, 1.0, 1.1]
    recorder = NormRecorder(capacity=4, device=device)
    for x in norms:
        for p in params:
            p.grad.fill_(x)
        with FailOnHostRead():
            result, per_tensor = clipper(params, per_tensor=True)
            recorder.record(result, per_tensor=per_tensor)
    assert result.norm.device.type == device.type and len(recorder) == len(norms)


# ------------------------------------------------------------------------------------------------
# arguments

@pytest.mark.parametrize("make, error", [
    (lambda: FixedClipper(-1.0), ValueError),
    (lambda: FixedClipper(math.nan), ValueError),
    (lambda: FixedClipper("1"), TypeError),
    (lambda: MeanClipper(0), ValueError),
    (lambda: MeanClipper(5, factor=0.0), ValueError),
    (lambda: MeanClipper(5.5), TypeError),
    (lambda: PercentileClipper(101.0), ValueError),
    (lambda: PercentileClipper(10.0, window=0), ValueError),
    (lambda: ZClipper(alpha=1.0), ValueError),
    (lambda: ZClipper(z_thresh=0.0), ValueError),
    (lambda: ZClipper(clip_option="percentile"), ValueError),
    (lambda: FixedClipper(1.0, nonfinite="ignore"), ValueError),
    (lambda: FixedClipper(1.0, norm_type=0), ValueError),
])
def test_bad_arguments_are_rejected_at_construction(make, error):
    with pytest.raises(error):
        make()


# ------------------------------------------------------------------------------------------------
# monitor

def test_recorder_keeps_every_step_and_grows_past_its_capacity():
    recorder = NormRecorder(capacity=2)
    clipper = FixedClipper(2.0)
    results = feed(clipper, [1.0, 3.0, 0.5, 4.0, 1.5])
    for r in results:
        recorder.record(r)
    data = recorder.numpy()
    np.testing.assert_allclose(data["norm"], [1.0, 3.0, 0.5, 4.0, 1.5])
    np.testing.assert_array_equal(data["threshold"], [2.0] * 5)
    np.testing.assert_array_equal(data["clipped"], [0, 1, 0, 1, 0])


def test_per_tensor_norms_come_with_the_result_in_parameter_order():
    params = [torch.nn.Parameter(torch.zeros(s, dtype=d)) for s, d in
              [((4, 3), torch.float32), ((5,), torch.bfloat16), ((2,), torch.float32)]]
    for p in params:
        p.grad = torch.randn(p.shape).to(p.dtype) * 10
    expected = torch.stack([torch.linalg.vector_norm(p.grad.float()) for p in params])
    result, norms = FixedClipper(1.0)(params, per_tensor=True)
    assert isinstance(result, ClipResult) and bool(result.clipped)
    torch.testing.assert_close(norms, expected, rtol=1e-5, atol=0)


def test_recorder_rejects_a_changing_number_of_tensors():
    recorder = NormRecorder()
    recorder.record(torch.tensor(1.0), per_tensor=torch.ones(3))
    with pytest.raises(ValueError, match="3"):
        recorder.record(torch.tensor(1.0), per_tensor=torch.ones(4))


def test_plot_norm_history_writes_pngs(tmp_path):
    recorder = NormRecorder()
    clipper = ZClipper(warmup_steps=5)
    w = grad_holder()
    for x in recorded_norms(40):
        w.grad = torch.tensor([0.6 * x, 0.8 * x], dtype=torch.float64)
        recorder.record(clipper([w]), per_tensor=w.grad.abs())
    single = plot_norm_history(recorder, tmp_path / "one.png", title="zclip")
    several = plot_norm_history({"a": recorded_norms(50), "b": np.r_[recorded_norms(20), np.nan]}, tmp_path / "two.png")
    for path in (single, several):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------------
# the demo

def test_exploding_gradients_demo_smoke_run(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("exploding_gradients", ROOT / "examples" / "exploding_gradients.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    threads = torch.get_num_threads()
    try:
        runs = demo.main([str(tmp_path), "--steps", "6", "--length", "8", "--warmup", "2"])
    finally:
        torch.set_num_threads(threads)  # main() sets it for the run
    assert [r["kind"] for r in runs] == ["none", "fixed", "autoclip"]
    assert {p.name for p in tmp_path.iterdir()} == {"exploding_gradients.png", "norms_none.png", "norms_fixed.png",
                                                     "norms_autoclip.png"}
    out = capsys.readouterr().out
    assert "no clipping" in out and "clipped steps" in out
