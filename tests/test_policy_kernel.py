"""Clipper steps on the Triton path: the policy computed inside the scale launch is bitwise the
torch-op reference.

The oracle is ``fastclip.adaptive`` itself with ``clipper._fuse_policy = False``: the Triton
norm (``total_norm``), the policy as float64 torch ops (``Clipper._threshold``, the CPU fallback),
then ``clip_with_norm_``.  The kernel path (``kernels/policy_ops.py`` inside the scale launch) must
give, step by step, the same bits: every ClipResult field, every gradient element (NaN payloads
included) and every state tensor.  Sequences cover the warm-up end, spikes, NaN and inf norms,
zero and constant norms.  The gradients span several chunks, so the scale launch runs several
programs: a program reading state that another one already updated would show up as a mismatch.

The tests taking ``device`` also run on CUDA (the GPU script's ``-m cuda`` step), where the
programs really run concurrently; the others run under the interpreter only.
"""
from __future__ import annotations

import functools
import io
import math
import types

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from oracles import require_triton_module

require_triton_module()  # the policies inside the scale launch are Triton code: skip the module without triton

import fastclip  # noqa: E402
import fastclip._dispatch  # noqa: E402
import fastclip._triton_backend  # noqa: E402
from fastclip._backend import triton_can_run_on
from fastclip._dispatch import route
from fastclip.adaptive import ClipResult, FixedClipper, MeanClipper, PercentileClipper, ZClipper
from fastclip.kernels.launch_settings import POLICY_WORD_TICKET
from conftest import requires_cuda
from oracles import skip_or_fail, spy_calls

pytestmark = [
    # the interpreter evaluates NaN/inf arithmetic with numpy, which warns
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning"),
]

NAN, INF = math.nan, math.inf
#: the warm-up ends (steps 1-4), spikes, NaN and inf steps, a zero norm, a tiny one, equal norms
NORMS = [1.0, 1.2, 0.9, 1.1, 30.0, NAN, 1.05, 200.0, 0.8, INF, 0.0, 1.0, 1e-30, 40.0]
#: fewer steps (the interpreter takes ~20 ms per launch): warm-up end, spike, NaN, inf, zero
SHORT = [1.0, 1.2, 0.9, 1.1, 30.0, NAN, 1.05, INF, 0.0, 5.0]
CONSTANT = [2.0] * 7 + [2.5]
ZEROS = [0.0] * 4 + [1.0, 0.0]

#: clipper factories (keyword arguments such as norm_type are passed on)
POLICIES = {
    "fixed": lambda **kw: FixedClipper(1.0, **kw),
    "fixed-inf": lambda **kw: FixedClipper(math.inf, **kw),
    "fixed-skip": lambda **kw: FixedClipper(0.5, nonfinite="skip", **kw),
    "mean": lambda **kw: MeanClipper(4, **kw),
    "mean-running": lambda **kw: MeanClipper(3, factor=1.5, running=True, **kw),
    "mean-warmup-max": lambda **kw: MeanClipper(2, factor=0.8, warmup_max_norm=1.0, **kw),
    "mean-skip": lambda **kw: MeanClipper(3, warmup_max_norm=0.0, running=True, nonfinite="skip", **kw),
    "zclip": lambda **kw: ZClipper(warmup_steps=3, **kw),
    "zclip-1": lambda **kw: ZClipper(warmup_steps=1, alpha=0.5, z_thresh=1.0, **kw),
    "zclip-mean": lambda **kw: ZClipper(warmup_steps=4, clip_option="mean", **kw),
    "zclip-cap": lambda **kw: ZClipper(warmup_steps=3, clip_factor=0.7, max_norm=5.0, **kw),
    "zclip-skip-update": lambda **kw: ZClipper(warmup_steps=3, z_thresh=1.5, skip_update_on_spike=True, **kw),
    "zclip-skip": lambda **kw: ZClipper(warmup_steps=3, max_norm=1.0, nonfinite="skip", **kw),
    "zclip-eps0": lambda **kw: ZClipper(warmup_steps=3, eps=0.0, **kw),
    "zclip-min-std": lambda **kw: ZClipper(warmup_steps=3, min_std=0.5, max_grad_norm=20.0, **kw),
    "zclip-min-std-mean": lambda **kw: ZClipper(warmup_steps=4, min_std=0.2, clip_option="mean", eps=0.0, **kw),
    "percentile-1": lambda **kw: PercentileClipper(10.0, window=1, **kw),
    "percentile-4": lambda **kw: PercentileClipper(37.5, window=4, **kw),
    "percentile-7-max": lambda **kw: PercentileClipper(100.0, window=7, **kw),
    "percentile-7-min": lambda **kw: PercentileClipper(0.0, window=7, **kw),
    "percentile-skip": lambda **kw: PercentileClipper(50.0, window=5, nonfinite="skip", **kw),
}

#: dtypes of the two gradients; the norm is float32, or float64 when one of them is
FP32 = (torch.float32, torch.float32)
DTYPES = {"fp32": FP32, "fp64": (torch.float64, torch.float64), "bf16": (torch.bfloat16, torch.bfloat16),
          "fp16+fp64": (torch.float16, torch.float64)}


@pytest.fixture(autouse=True)
def _triton_backend(request, monkeypatch):
    """Every test runs on the Triton path: its ``device`` (CPU: the interpreter) must have it."""
    device = request.getfixturevalue("device") if "device" in request.fixturenames else torch.device("cpu")
    ok, reason = triton_can_run_on(device)
    if not ok:
        skip_or_fail(reason)
    monkeypatch.setenv("FASTCLIP_BACKEND", "triton")


def bits(t: torch.Tensor) -> torch.Tensor:
    """The bytes of ``t`` as integers: NaN == NaN and -0.0 != 0.0 under torch.equal."""
    return t.contiguous().reshape(-1).view(torch.uint8).clone()


def make_model(dtypes=FP32, device="cpu", numel=200):
    """Two parameters; with ``numel=200`` their gradients are 2 chunks of the interpreter's
    settings (2 programs)."""
    return [torch.nn.Parameter(torch.zeros(numel, dtype=dtypes[0], device=device)),
            torch.nn.Parameter(torch.zeros(9, dtype=dtypes[1], device=device))]


def set_grads(params, step: int, norm: float) -> None:
    """Gradients of (about) the given norm, written into the same buffers every step (as in
    training); NaN/inf norms put one NaN/inf among finite values."""
    device = params[0].device
    gen = torch.Generator(device).manual_seed(1000 + step)
    flat = torch.randn(sum(p.numel() for p in params), generator=gen, dtype=torch.float64, device=device)
    flat *= (norm if math.isfinite(norm) else 1.0) / flat.norm()
    if not math.isfinite(norm):
        flat[5] = norm
    start = 0
    for p in params:
        values = flat[start: start + p.numel()].view(p.shape).to(p.device, p.dtype)
        if p.grad is None:
            p.grad = values
        else:
            p.grad.copy_(values)
        start += p.numel()


def record(clipper, params, result) -> dict:
    return {"result": [bits(f) for f in result], "grads": [bits(p.grad) for p in params],
            "state": {k: bits(t) for k, t in clipper._state.items()}}


def run(clipper, norms, dtypes=FP32, first_step=0, params=None, device="cpu", **kwargs) -> list[dict]:
    params = make_model(dtypes, device) if params is None else params
    out = []
    for i, x in enumerate(norms):
        set_grads(params, first_step + i, x)
        out.append(record(clipper, params, clipper(params, **kwargs)))
    return out


def reference(make):
    clipper = make()
    clipper._fuse_policy = False
    return clipper


def assert_same_steps(ours: list[dict], ref: list[dict]) -> None:
    assert len(ours) == len(ref)
    for step, (a, b) in enumerate(zip(ours, ref)):
        for name, x, y in zip(ClipResult._fields, a["result"], b["result"]):
            assert torch.equal(x, y), f"step {step}: {name} differs"
        for i, (x, y) in enumerate(zip(a["grads"], b["grads"])):
            assert torch.equal(x, y), f"step {step}: gradient {i} differs"
        assert a["state"].keys() == b["state"].keys()
        for k in a["state"]:
            assert torch.equal(a["state"][k], b["state"][k]), f"step {step}: state {k!r} differs"


# ----------------------------------------------------------------------------------------------
# bitwise equality with the torch-op reference


#: every policy variant once, the gradient dtypes spread over them (each dtype meets each policy)
MATRIX = [("fixed", "fp32"), ("fixed-inf", "bf16"), ("fixed-skip", "fp64"),
          ("mean", "fp32"), ("mean-running", "fp16+fp64"), ("mean-warmup-max", "bf16"), ("mean-skip", "fp64"),
          ("zclip", "fp32"), ("zclip-1", "fp64"), ("zclip-mean", "bf16"), ("zclip-cap", "fp16+fp64"),
          ("zclip-skip-update", "fp32"), ("zclip-skip", "fp64"), ("zclip-eps0", "fp32"),
          ("zclip-min-std", "bf16"), ("zclip-min-std-mean", "fp64"),
          ("percentile-1", "fp32"), ("percentile-4", "fp64"), ("percentile-7-max", "bf16"),
          ("percentile-7-min", "fp16+fp64"), ("percentile-skip", "fp32")]


def test_the_matrix_covers_every_policy_and_dtype():
    assert {p for p, _ in MATRIX} == set(POLICIES) and {d for _, d in MATRIX} == set(DTYPES)
    for family in ("fixed", "mean", "zclip", "percentile"):
        assert {"fp32", "fp64"} <= {d for p, d in MATRIX if p.startswith(family)}, family


@pytest.mark.parametrize("policy, dtype", MATRIX)
def test_kernel_policy_is_bitwise_the_torch_op_reference(policy, dtype, device):
    make, dtypes = POLICIES[policy], DTYPES[dtype]
    assert_same_steps(run(make(), NORMS, dtypes, device=device), run(reference(make), NORMS, dtypes, device=device))


@pytest.mark.parametrize("device", [pytest.param(torch.device("cuda"), marks=[requires_cuda, pytest.mark.cuda])])
@pytest.mark.parametrize("policy", ["mean-running", "zclip-cap", "percentile-7-max"])
def test_hundreds_of_concurrent_programs_are_bitwise_the_reference(policy, device):
    """24 M elements: ~370 chunks, a full persistent grid racing for the state's ticket."""
    make = POLICIES[policy]
    ours = run(make(), NORMS, params=make_model(device=device, numel=24_000_000))
    assert_same_steps(ours, run(reference(make), NORMS, params=make_model(device=device, numel=24_000_000)))


@pytest.mark.parametrize("norms", [CONSTANT, ZEROS], ids=["constant", "zeros"])
@pytest.mark.parametrize("policy", ["mean", "zclip-eps0", "zclip-min-std", "percentile-4"])
def test_constant_and_zero_norms_are_bitwise_the_reference(policy, norms):
    make = POLICIES[policy]
    assert_same_steps(run(make(), norms), run(reference(make), norms))


@pytest.mark.parametrize("policy, norm_type", [("mean-running", 3.0), ("zclip", 1.0), ("percentile-4", "inf")])
def test_every_norm_order_is_bitwise_the_reference(policy, norm_type):
    make = functools.partial(POLICIES[policy], norm_type=norm_type)
    assert_same_steps(run(make(), SHORT), run(reference(make), SHORT))


def test_strided_gradients_are_bitwise_the_reference():
    def model():
        base = torch.zeros(80, 30)
        p = torch.nn.Parameter(torch.zeros(80, 15))
        q = torch.nn.Parameter(torch.zeros(3))
        return [p, q], base

    results = []
    for make_clipper in (POLICIES["zclip"], lambda: reference(POLICIES["zclip"])):
        clipper, (params, base) = make_clipper(), model()
        steps = []
        for i, x in enumerate(SHORT):
            base.copy_(torch.randn(80, 30, generator=torch.Generator().manual_seed(i)) * x / 30)
            params[0].grad = base[:, ::2]  # a view with gaps: copied, rewritten, written back
            params[1].grad = torch.full((3,), 0.1 * x)
            steps.append(record(clipper, params, clipper(params)))
        results.append(steps)
    assert_same_steps(*results)


# ----------------------------------------------------------------------------------------------
# state: round trips, switching paths, the ticket


@pytest.mark.parametrize("policy, saved_by, resumed_by", [
    ("zclip-cap", "kernel", "torch"), ("zclip-cap", "torch", "kernel"),
    ("percentile-4", "kernel", "kernel"), ("percentile-4", "torch", "kernel"),
])
def test_state_dict_round_trip_between_paths_is_bitwise(policy, saved_by, resumed_by):
    make = POLICIES[policy]
    uninterrupted = run(make(), SHORT)
    first = make() if saved_by == "kernel" else reference(make)
    run(first, SHORT[:4])
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = make() if resumed_by == "kernel" else reference(make)
    resumed.load_state_dict(torch.load(buffer))
    assert_same_steps(run(resumed, SHORT[4:], first_step=4), uninterrupted[4:])


@pytest.mark.parametrize("policy", ["zclip", "percentile-skip"])
def test_alternating_kernel_and_torch_steps_is_bitwise_the_reference(policy):
    """The percentile's sorted copies are rebuilt when the torch path changed the state."""
    make = POLICIES[policy]
    clipper, params, ours = make(), make_model(), []
    for i, x in enumerate(SHORT):
        clipper._fuse_policy = i % 3 != 2
        set_grads(params, i, x)
        ours.append(record(clipper, params, clipper(params)))
    assert_same_steps(ours, run(reference(make), SHORT))


def test_load_state_dict_in_place_is_seen_by_the_kernel():
    make = POLICIES["percentile-4"]
    clipper, other = make(), make()
    run(clipper, NORMS[:3])
    run(other, NORMS[4:9], first_step=4)
    addresses = {k: t.data_ptr() for k, t in clipper._state.items()}
    clipper.load_state_dict(other.state_dict())  # copied into the existing views
    assert {k: t.data_ptr() for k, t in clipper._state.items()} == addresses
    assert_same_steps(run(clipper, NORMS[9:], first_step=9), run(other, NORMS[9:], first_step=9))


def test_the_scale_launch_runs_several_programs_and_resets_its_ticket():
    clipper, params = MeanClipper(2), make_model()
    run(clipper, SHORT[:4], params=params)
    (work,) = route([p.grad for p in params])
    assert work.plan.n_chunks == 2  # the interpreter's grid is min(chunks, 4): two programs
    assert int(clipper._buffer.view(torch.int64)[POLICY_WORD_TICKET]) == 0


@pytest.mark.parametrize("policy", ["fixed", "mean", "zclip", "percentile-4"])
def test_state_dict_of_the_kernel_path_is_the_policy_state(policy):
    """Plain tensors of the policy's layout (not views of the buffer), results on the grads' device."""
    clipper, params = POLICIES[policy](), make_model()
    set_grads(params, 0, 1.0)
    result = clipper(params)
    saved = clipper.state_dict()["state"]
    layout = {k: (t.dtype, t.shape) for k, t in clipper._new_state(torch.device("cpu")).items()}
    assert {k: (t.dtype, t.shape) for k, t in saved.items()} == layout
    assert all(t._base is None for t in saved.values())
    assert [(f.dtype, f.shape) for f in result] == [(torch.float32, ())] * 3 + [(torch.bool, ()), (torch.float32, ())]


def test_a_state_without_the_kernel_layout_runs_the_torch_ops(monkeypatch):
    """A window loaded with strict=False keeps its saved length: the torch-op path serves it."""
    small = PercentileClipper(50.0, window=4)
    run(small, NORMS[:5])
    clipper = PercentileClipper(50.0, window=8)
    clipper.load_state_dict(small.state_dict(), strict=False)
    launches = spy_calls(monkeypatch, fastclip._triton_backend, ("launch_norm_partials", "launch_scale"))
    ours = run(clipper, NORMS[5:9], first_step=5)
    assert len(launches) == 3 * 4  # total_norm (2) + clip_with_norm_ (1) per step
    assert clipper._buffer is None
    assert_same_steps(ours, run(small, NORMS[5:9], first_step=5))


def test_zclip_state_of_the_warmup_buffer_layout_is_upgraded():
    """States saved before the kernel policies hold the warm-up norms; loading replays them
    through Welford's update."""
    clipper, params, norms = ZClipper(warmup_steps=5), make_model(), []
    for i, x in enumerate(NORMS[:3]):
        set_grads(params, i, x)
        norms.append(clipper(params).norm.double())
    old = {"count": torch.tensor(3), "warmup": torch.cat([torch.stack(norms), torch.zeros(2, dtype=torch.float64)]),
           "mean": torch.tensor(0.0, dtype=torch.float64), "var": torch.tensor(0.0, dtype=torch.float64)}
    resumed = ZClipper(warmup_steps=5)
    resumed.load_state_dict({"policy": "ZClipper", "config": resumed._config(), "state": old, "host": {}})
    for k in ("count", "mean", "var"):
        assert torch.equal(bits(resumed._state[k]), bits(clipper._state[k])), k
    assert_same_steps(run(resumed, NORMS[3:8], first_step=3), run(clipper, NORMS[3:8], first_step=3))


# ----------------------------------------------------------------------------------------------
# non-finite modes, per-tensor norms, what runs


def test_error_mode_raises_and_leaves_grads_and_state_alone(monkeypatch):
    clipper, params = ZClipper(warmup_steps=3, nonfinite="error"), make_model()
    run(clipper, NORMS[:5], params=params)
    before = clipper.state_dict()["state"]
    set_grads(params, 99, INF)
    grads = [p.grad.clone() for p in params]
    launches = spy_calls(monkeypatch, fastclip._triton_backend, ("launch_norm_partials", "launch_scale"))
    with pytest.raises(RuntimeError, match="non-finite"):
        clipper(params)
    assert launches == ["launch_norm_partials", "launch_scale"]  # then the host reads found_inf
    for g, g0 in zip(params, grads):
        assert torch.equal(bits(g.grad), bits(g0))
    for k, t in clipper.state_dict()["state"].items():
        assert torch.equal(bits(t), bits(before[k])), k
    assert int(clipper._buffer.view(torch.int64)[POLICY_WORD_TICKET]) == 0


def test_error_mode_finite_steps_are_bitwise_the_reference():
    def make():
        return MeanClipper(3, running=True, nonfinite="error")

    finite = [x for x in SHORT if math.isfinite(x)]
    assert_same_steps(run(make(), finite), run(reference(make), finite))


def test_per_tensor_norms_come_from_the_same_norm_launch():
    clipper, params = ZClipper(warmup_steps=2), make_model()
    for i, x in enumerate(NORMS[:6]):
        set_grads(params, i, x)
        expected = fastclip.total_norm([p.grad for p in params], per_tensor=True)
        result, norms = clipper(params, per_tensor=True)
        assert torch.equal(bits(result.norm), bits(expected[0]))
        assert torch.equal(bits(norms), bits(expected[1]))


@pytest.mark.parametrize("step", ["clipper", "clip_"])
def test_a_step_routes_with_the_key_of_the_native_helper_as_clip_does(step, monkeypatch):
    """The gradients and their route key come from one pass of the native helper (fastclip.native):
    a steady-state step never reads every tensor's address and size again in Python (signature())."""
    key = b"\x01" * 24 * 2
    helper = types.SimpleNamespace(collect=lambda items, of_params, known: ([p.grad for p in items], key))
    monkeypatch.setattr(fastclip._dispatch, "_native", lambda: helper)
    signatures = spy_calls(monkeypatch, fastclip._dispatch, ("signature",))
    clipper, params = ZClipper(warmup_steps=2), make_model()
    for i, x in enumerate(SHORT[:4]):
        set_grads(params, i, x)
        clipper(params) if step == "clipper" else fastclip.clip_(params, 1.0)
    assert signatures == ["signature"]  # once, when the route was built


class _ComputeOps(TorchDispatchMode):
    """Records the torch ops run outside fastclip's launchers."""

    def __init__(self):
        super().__init__()
        self.ops, self.in_launch = [], False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.in_launch:
            self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("policy", ["fixed", "mean", "zclip-skip", "percentile-4"])
def test_a_kernel_step_runs_no_torch_op_but_its_result_allocations(policy, monkeypatch):
    clipper, params = POLICIES[policy](), make_model()
    run(clipper, NORMS[:3], params=params)  # state and derived copies exist
    mode = _ComputeOps()
    for name in ("launch_norm_partials", "launch_scale"):  # the interpreter's own tensor traffic
        real = getattr(fastclip._triton_backend, name)

        def launch(*args, _real=real, **kwargs):
            mode.in_launch = True
            try:
                return _real(*args, **kwargs)
            finally:
                mode.in_launch = False

        monkeypatch.setattr(fastclip._triton_backend, name, launch)
    set_grads(params, 3, 30.0)
    with mode:
        clipper(params)
    assert sorted(mode.ops) == ["aten.empty.memory_format"] * 3 + ["aten.unbind.int"]
