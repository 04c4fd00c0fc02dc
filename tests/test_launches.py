"""The Triton path's cost model: launches per call, plan caching, the no-clip path, and (CUDA only)
memory and run-to-run determinism.

Launches are counted by wrapping the launchers where fastclip._triton_backend calls them
(``launch_norm_partials``, ``launch_scale``, ``launch_clamp``); routes and plans by wrapping
``fastclip._dispatch._build_route`` and the Triton backend's ``build_plan``.  Results are checked
against the float64 oracle so a counted launch is also a correct one.
"""
import collections

import pytest
import torch

from oracles import clone_params, grads, make_params, ref_coef, ref_norm, require_triton_module, spy_calls

require_triton_module()  # every test here is about the Triton path: skip the module without triton

import fastclip  # noqa: E402
import fastclip._dispatch  # noqa: E402
import fastclip._triton_backend  # noqa: E402
from conftest import requires_cuda  # noqa: E402
from test_clip import ALL_DTYPES, TOL, assert_norm_accurate, param_with_grad  # noqa: E402

#: these tests are about the Triton path: run them on it (the backend fixture fails instead of
#: skipping when FASTCLIP_REQUIRE_TRITON=1 and Triton can't run)
triton_only = pytest.mark.parametrize("backend", ["triton"], indirect=True)

LAUNCHERS = ("launch_norm_partials", "launch_scale", "launch_clamp")


@pytest.fixture
def launches(monkeypatch):
    """Names of the launchers called, in order (the launches still run)."""
    return spy_calls(monkeypatch, fastclip._triton_backend, LAUNCHERS)


@pytest.fixture
def builds(monkeypatch):
    """How many routes and plans were built."""
    counts = collections.Counter()
    for module, name in ((fastclip._dispatch, "_build_route"), (fastclip._triton_backend, "build_plan")):
        real = getattr(module, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            counts[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, name, counted)
    return counts


def tiny_mixed_params(n, device):
    """``n`` tensors of 1 to 3 elements cycling through the four dtypes."""
    params = []
    for i in range(n):
        params += make_params([((i % 3) + 1,)], dtype=ALL_DTYPES[i % 4], device=device)
    return params


# ----------------------------------------------------------------------------------------------
# launches per call


@triton_only
@pytest.mark.parametrize("n", [1, 10, 1000])
def test_clip_is_exactly_two_launches_for_any_number_of_mixed_dtype_tensors(backend, device, launches, n):
    params = tiny_mixed_params(n, device) if n > 1 else make_params([(4097,)], device=device)
    originals = [g.clone() for g in grads(params)]
    max_norm = 0.5 * ref_norm(originals, 2)

    norm = fastclip.clip_(params, max_norm)

    assert launches == ["launch_norm_partials", "launch_scale"]
    expected = assert_norm_accurate(norm, originals, 2)
    coef = ref_coef(max_norm, expected)
    for g, g0 in zip(grads(params), originals):
        ref = g0.double() * coef
        atol, rtol = TOL[g.dtype]
        torch.testing.assert_close(g.double(), ref, rtol=rtol, atol=atol * ref.abs().max().item())


@triton_only
def test_clip_of_strided_grads_is_still_two_launches(backend, device, launches):
    base = torch.randn(40, 30, device=device)
    params = [param_with_grad(base[:, ::2]), param_with_grad(torch.randn(31, 7, device=device).t())]
    originals = [g.clone() for g in grads(params)]
    max_norm = 0.5 * ref_norm(originals, 2)

    norm = fastclip.clip_(params, max_norm)

    assert launches == ["launch_norm_partials", "launch_scale"]
    expected = assert_norm_accurate(norm, originals, 2)
    for g, g0 in zip(grads(params), originals):
        torch.testing.assert_close(g.double(), g0.double() * ref_coef(max_norm, expected), rtol=2e-5, atol=0)


@triton_only
def test_clip_with_norm_is_one_scale_launch(backend, device, launches):
    params = tiny_mixed_params(10, device) + make_params([(1000,)], device=device)
    total = fastclip.total_norm(grads(params))
    launches.clear()

    fastclip.clip_with_norm_(params, 0.5 * total.item(), total)

    assert launches == ["launch_scale"]


@triton_only
def test_clip_value_is_one_clamp_launch(backend, device, launches):
    params = tiny_mixed_params(10, device) + make_params([(1000,)], device=device, scale=3.0)
    theirs = clone_params(params)

    fastclip.clip_value_(params, 0.5)

    assert launches == ["launch_clamp"]
    torch.nn.utils.clip_grad_value_(theirs, 0.5)
    for g, t in zip(grads(params), grads(theirs)):
        assert torch.equal(g, t)


@triton_only
def test_total_norm_is_two_launches_and_writes_no_grad(backend, device, launches):
    tensors = [p.grad for p in tiny_mixed_params(10, device)]
    before = [t.clone() for t in tensors]

    norm = fastclip.total_norm(tensors)

    assert launches == ["launch_norm_partials", "launch_scale"]
    assert_norm_accurate(norm, before, 2)
    for t, t0 in zip(tensors, before):
        assert torch.equal(t, t0)


@triton_only
def test_no_clip_path_runs_the_scale_launch_but_leaves_grads_bitwise_untouched(backend, device, launches):
    params = tiny_mixed_params(10, device) + make_params([(1000,)], device=device)
    originals = [g.clone() for g in grads(params)]

    norm = fastclip.clip_(params, 2.0 * ref_norm(originals, 2))

    assert launches == ["launch_norm_partials", "launch_scale"]
    assert_norm_accurate(norm, originals, 2)
    for g, g0 in zip(grads(params), originals):
        assert torch.equal(g, g0)


@pytest.mark.parametrize("backend", ["torch"], indirect=True)
def test_torch_backend_launches_no_triton_kernel(backend, device, launches):
    params = tiny_mixed_params(10, device)
    fastclip.clip_(params, 0.1)
    fastclip.clip_value_(params, 0.01)
    assert launches == []


# ----------------------------------------------------------------------------------------------
# route and plan caching


@triton_only
def test_second_call_with_the_same_grads_builds_no_route_or_plan(backend, device, launches, builds):
    params = tiny_mixed_params(10, device) + make_params([(700,)], device=device)
    fastclip.clip_(params, 1e9)
    assert builds == {"_build_route": 1, "build_plan": 1}

    fastclip.clip_(params, 1e9)
    fastclip.total_norm(grads(params))
    fastclip.clip_value_(params, 1e9)

    assert builds == {"_build_route": 1, "build_plan": 1}
    assert launches.count("launch_norm_partials") == 3


@triton_only
def test_cached_plan_sees_values_changed_in_place(backend, device, builds):
    params = make_params([(700,), (9,)], device=device)
    fastclip.clip_(params, 1e9)
    for g in grads(params):
        g.mul_(3.0).add_(1.0)  # same buffers, new values (the next training step)
    originals = [g.clone() for g in grads(params)]
    max_norm = 0.5 * ref_norm(originals, 2)

    norm = fastclip.clip_(params, max_norm)

    assert builds["build_plan"] == 1
    expected = assert_norm_accurate(norm, originals, 2)
    for g, g0 in zip(grads(params), originals):
        torch.testing.assert_close(g.double(), g0.double() * ref_coef(max_norm, expected), rtol=2e-5, atol=0)


@triton_only
def test_new_grads_at_new_addresses_rebuild_the_plan(backend, device, builds):
    params = make_params([(700,), (9,)], device=device)
    fastclip.clip_(params, 1e9)
    old = grads(params)
    old_values = [o.clone() for o in old]
    for p in params:
        p.grad = p.grad.clone()  # same shapes and dtypes, new memory
    assert all(g.data_ptr() != o.data_ptr() for g, o in zip(grads(params), old))
    originals = [g.clone() for g in grads(params)]
    max_norm = 0.5 * ref_norm(originals, 2)

    norm = fastclip.clip_(params, max_norm)

    assert builds == {"_build_route": 2, "build_plan": 2}
    expected = assert_norm_accurate(norm, originals, 2)
    for g, g0 in zip(grads(params), originals):
        torch.testing.assert_close(g.double(), g0.double() * ref_coef(max_norm, expected), rtol=2e-5, atol=0)
    for o, v in zip(old, old_values):  # the old buffers are not written through a stale plan
        assert torch.equal(o, v)


@triton_only
def test_a_different_subset_of_the_same_grads_gets_its_own_plan(backend, device, builds):
    params = make_params([(700,), (9,), (33,)], device=device)
    fastclip.clip_(params, 1e9)
    subset = params[:2]
    originals = [g.clone() for g in grads(subset)]
    untouched = params[2].grad.clone()
    max_norm = 0.5 * ref_norm(originals, 2)

    norm = fastclip.clip_(subset, max_norm)

    assert builds["build_plan"] == 2
    assert_norm_accurate(norm, originals, 2)
    assert torch.equal(params[2].grad, untouched)


@triton_only
def test_changing_fastclip_backend_takes_effect_on_the_next_call(backend, device, launches, monkeypatch):
    params = make_params([(700,), (9,)], device=device)
    fastclip.clip_(params, 1e9)
    assert len(launches) == 2

    monkeypatch.setenv("FASTCLIP_BACKEND", "torch")
    originals = [g.clone() for g in grads(params)]
    norm = fastclip.clip_(params, 1e9)

    assert len(launches) == 2
    assert_norm_accurate(norm, originals, 2)


# ----------------------------------------------------------------------------------------------
# CUDA only (run by the GPU script)


@requires_cuda
@pytest.mark.cuda
def test_cuda_clip_allocates_no_memory_proportional_to_the_gradients(monkeypatch):
    """64 M fp32 elements (256 MiB) in 8 tensors: a clip_ call allocates < 1 MiB beyond its plan."""
    monkeypatch.setenv("FASTCLIP_BACKEND", "triton")
    params = [param_with_grad(torch.randn(8 * 1024 * 1024, device="cuda")) for _ in range(8)]
    max_norm = 0.5 * torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads(params)])).item()
    mib = 1 << 20

    def extra_peak_bytes():
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fastclip.clip_(params, max_norm)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before

    first = extra_peak_bytes()  # builds and uploads the plan
    (work,) = fastclip._dispatch.route(grads(params))
    plan_bytes = sum(t.numel() * t.element_size() for t in vars(work.plan).values() if isinstance(t, torch.Tensor))
    steady = extra_peak_bytes()

    assert first < mib + plan_bytes, f"first call: {first} bytes"
    assert steady < mib, f"steady state: {steady} bytes"


@requires_cuda
@pytest.mark.cuda
def test_cuda_clip_is_bitwise_deterministic_run_to_run(monkeypatch):
    """Mixed dtypes over many chunks and programs: two runs give identical norms and grads."""
    monkeypatch.setenv("FASTCLIP_BACKEND", "triton")
    shapes = [(3_000_001,), (1024, 1023), (17,), (65536,), (513, 511)]
    params = [param_with_grad(torch.randn(s, device="cuda").to(ALL_DTYPES[i % 4])) for i, s in enumerate(shapes)]
    max_norm = 0.5 * ref_norm(grads(params), 2)
    runs = []
    for _ in range(2):
        clones = clone_params(params)
        norm = fastclip.clip_(clones, max_norm)
        runs.append((norm, grads(clones)))

    (norm1, grads1), (norm2, grads2) = runs
    assert torch.equal(norm1, norm2)
    for a, b in zip(grads1, grads2):
        assert torch.equal(a, b)
    assert_norm_accurate(norm1, grads(params), 2)


# ----------------------------------------------------------------------------------------------
# clipper steps (fastclip.adaptive): the policy runs inside the scale launch

CLIPPERS = {
    "fixed": lambda: fastclip.FixedClipper(1.0),
    "mean": lambda: fastclip.MeanClipper(2, running=True, nonfinite="skip"),
    "zclip-adaptive": lambda: fastclip.ZClipper(warmup_steps=2, max_norm=5.0),
    "zclip-mean": lambda: fastclip.ZClipper(warmup_steps=2, clip_option="mean", skip_update_on_spike=True),
    "percentile-window": lambda: fastclip.PercentileClipper(25.0, window=4),
    "error-mode": lambda: fastclip.ZClipper(warmup_steps=2, nonfinite="error"),
}
#: warm-up, its end, a spike, a non-finite step (the error mode gets a finite one instead)
CLIPPER_STEP_SCALES = (1.0, 1.1, 0.9, 50.0, float("nan"), 1.0)


@triton_only
@pytest.mark.parametrize("policy", list(CLIPPERS))
def test_every_clipper_step_is_the_two_launches_of_clip(backend, device, launches, policy):
    params = tiny_mixed_params(10, device) + make_params([(700,)], device=device)
    originals = [g.clone() for g in grads(params)]
    clipper = CLIPPERS[policy]()
    for step, scale in enumerate(CLIPPER_STEP_SCALES):
        if policy == "error-mode" and scale != scale:
            scale = 2.0
        for g, g0 in zip(grads(params), originals):
            g.copy_(g0 * scale)  # the same buffers every step, as in training
        before = [g.clone() for g in grads(params)]
        launches.clear()

        result = clipper(params)

        assert launches == ["launch_norm_partials", "launch_scale"], f"step {step}"
        if scale == scale:  # the launches computed the right thing: norm and rescale
            expected = assert_norm_accurate(result.norm, before, 2)
            coef = ref_coef(float(result.threshold), expected)
            for g, g0 in zip(grads(params), before):
                ref = g0.double() * coef
                atol, rtol = TOL[g.dtype]
                torch.testing.assert_close(g.double(), ref, rtol=rtol, atol=atol * ref.abs().max().item())


@triton_only
@pytest.mark.parametrize("make", [lambda: fastclip.PercentileClipper(25.0),
                                  lambda: fastclip.PercentileClipper(25.0, window=5000)],
                         ids=["unbounded", "window-5000"])
def test_percentile_clippers_the_kernel_does_not_rank_use_three_launches(backend, device, launches, make):
    """total_norm (2 launches) + clip_with_norm_ (1), the policy as torch ops in between."""
    params = make_params([(700,), (9,)], device=device)
    clipper = make()
    for _ in range(3):
        launches.clear()
        clipper(params)
        assert launches == ["launch_norm_partials", "launch_scale", "launch_scale"]
