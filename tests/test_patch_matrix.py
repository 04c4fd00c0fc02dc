"""patch_torch is invisible: each patched function against torch's own, input by input.

The spec (issue 10, part 1): for every input torch's functions accept, the patched function
returns what torch returns -- the same type, dtype, device and DTensor placements, values within
fastclip's accuracy -- raises the same errors, emits the same warnings and leaves the gradients as
torch leaves them; whatever fastclip doesn't serve goes to torch's original function.

The oracle is torch's original function, captured before any patching, run on an identical copy
of the inputs (each case builds them twice from the same seed). Every case also states who must
serve it: ``FAST`` (fastclip's public function ran and torch's did not) or ``TORCH`` (torch's
original ran), so a patch that handed everything to torch would fail here.

Known, documented differences (fastclip/patch.py's docstring) have their own tests at the end.
"""
from __future__ import annotations

import dataclasses
import math
import operator
import types
import warnings

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.utils

import fastclip.api
from fastclip import patch
from oracles import ref_norm, require_triton_on_cpu, spy_calls

NAMES = ("clip_grad_norm_", "clip_grad_norm", "get_total_norm", "clip_grads_with_norm_", "clip_grad_value_")
TORCH = {name: getattr(torch.nn.utils, name) for name in NAMES}  # before any patching
FAST, TORCH_SERVES = "fastclip", "torch"
F32, BF16, F16, F64 = torch.float32, torch.bfloat16, torch.float16, torch.float64
INF, NAN = math.inf, math.nan


# ---------------------------------------------------------------------------------------------
# inputs

CURRENT = {"device": torch.device("cpu")}  # where the cases build their gradients (set by each test)


def rnd(*shape, dtype=F32, scale=3.0):
    """Random values (never all zero), drawn in float64 then rounded to ``dtype``."""
    return (torch.randn(shape, dtype=F64) * scale).to(dtype=dtype, device=CURRENT["device"])


def t(values, dtype=None):
    """A literal gradient on the test's device."""
    return torch.tensor(values, dtype=dtype, device=CURRENT["device"])


def params(*grads):
    """One leaf per gradient (None: a parameter without .grad); integer grads sit on plain tensors."""
    out = []
    for g in grads:
        if g is None:
            out.append(torch.nn.Parameter(torch.zeros(2, device=CURRENT["device"])))
            continue
        if g.is_floating_point() or g.is_complex():
            q = torch.nn.Parameter(torch.zeros(g.shape, dtype=g.dtype, device=g.device))
        elif g.layout != torch.strided:
            q = torch.nn.Parameter(torch.zeros(g.shape, device=g.device))
        else:
            q = torch.zeros(g.shape, dtype=g.dtype, device=g.device)  # an integer tensor can't be a Parameter
        q.grad = g
        out.append(q)
    return out


def model_grads(dtype=F32, scale=3.0):
    """Uneven shapes, a 1-element and a 3-d tensor, and a parameter with no gradient."""
    return params(rnd(13, 7, dtype=dtype, scale=scale), rnd(5, dtype=dtype, scale=scale),
                  rnd(1, dtype=dtype, scale=scale), None, rnd(2, 3, 4, dtype=dtype, scale=scale))


def grads_of(ps):
    """What get_total_norm gets for parameters ``ps``: their gradients (other items as they are)."""
    return [getattr(q, "grad", q) for q in ps if getattr(q, "grad", q) is not None]


# ---------------------------------------------------------------------------------------------
# one case: a call of one function on freshly built inputs, and who must serve it

@dataclasses.dataclass
class Case:
    id: str
    fn: str  # which of NAMES
    call: object  # call(f) -> (result, tensors whose .grad (or themselves) are compared after)
    route: str  # FAST or TORCH_SERVES
    half_tolerance: bool = False  # values compared at bf16/fp16 precision (a bf16 threshold or norm)


def clip(ps, *args, **kwargs):
    return lambda f: (f(ps() if callable(ps) else ps, *args, **kwargs), ps)


def norm_call(fn, make, *args, route=FAST, id=None, **kwargs):
    """A case of clip_grad_norm_/clip_grad_norm/get_total_norm: get_total_norm takes the grads."""
    def call(f):
        ps = make()
        arg = grads_of(ps) if fn == "get_total_norm" and isinstance(ps, list) else ps
        return f(arg, *args, **kwargs), ps if isinstance(ps, list) else []
    return Case(id, fn, call, route)


NORM_FNS = ("clip_grad_norm_", "get_total_norm")


def norm_cases():
    """Inputs of clip_grad_norm_ and get_total_norm (max_norm is dropped for get_total_norm)."""
    cases = []

    def add(id, make, max_norm=1.0, route=FAST, **kwargs):
        for fn in NORM_FNS:
            args = (max_norm,) if fn != "get_total_norm" else ()
            if fn == "get_total_norm" and id.startswith("max_norm"):
                continue
            cases.append(norm_call(fn, make, *args, route=route, id=f"{fn}-{id}", **kwargs))

    # what training loops pass
    add("fp32-clips", model_grads)
    add("fp32-within-max-norm", lambda: model_grads(scale=0.01))
    add("bf16", lambda: model_grads(BF16))
    add("fp16", lambda: model_grads(F16))
    add("fp64", lambda: model_grads(F64))
    add("bf16+fp32", lambda: params(rnd(9, dtype=BF16), rnd(4, 4)))
    add("bf16+fp16", lambda: params(rnd(9, dtype=BF16), rnd(4, 4, dtype=F16)))
    add("fp32+fp64", lambda: params(rnd(9), rnd(4, 4, dtype=F64)))
    add("fp16+fp64", lambda: params(rnd(9, dtype=F16), rnd(4, 4, dtype=F64)))
    add("0-d-and-transposed", lambda: params(rnd(), rnd(6, 5).t()))
    add("empty-tensor", lambda: params(rnd(0), rnd(3)))
    add("same-param-twice", lambda: (lambda q: [q, q])(params(rnd(5))[0]))
    add("nan-grad", lambda: params(t([NAN, 1.0]), rnd(3)))
    add("inf-grad", lambda: params(t([INF, 1.0]), rnd(3)))
    add("a-tensor", lambda: params(rnd(7))[0])
    add("a-generator", lambda: (q for q in model_grads()))
    add("a-tuple", lambda: tuple(model_grads()))
    add("objects-with-grad", lambda: [types.SimpleNamespace(grad=rnd(4)), types.SimpleNamespace(grad=None)])
    # nothing to clip: torch decides (tensor(0.), its warnings, its conversions of the arguments)
    add("no-params", lambda: [], route=TORCH_SERVES)
    add("no-grads", lambda: params(None, None), route=TORCH_SERVES)
    add("empty-generator", lambda: (q for q in []), route=TORCH_SERVES)
    add("empty-generator-bad-max-norm", lambda: (q for q in []), max_norm="abc", route=TORCH_SERVES)
    # gradients fastclip doesn't take
    add("complex", lambda: params(t([3 + 4j]), rnd(2)), route=TORCH_SERVES)
    add("complex-first", lambda: params(rnd(3).to(torch.complex64), rnd(2)), route=TORCH_SERVES)
    add("int", lambda: params(t([3, 4])), route=TORCH_SERVES)
    add("bool", lambda: params(t([True, False])), route=TORCH_SERVES)
    add("sparse", lambda: params(rnd(4).to_sparse()), route=TORCH_SERVES)
    add("fp8", lambda: params(rnd(4).to(torch.float8_e4m3fn)), route=TORCH_SERVES)
    # not parameters
    add("not-iterable", lambda: 3, route=TORCH_SERVES)
    add("a-string", lambda: "ab", route=TORCH_SERVES)
    add("an-int-item", lambda: model_grads() + [1], route=TORCH_SERVES)

    # max_norm: torch takes float(max_norm)
    for value, route in [(1, FAST), (True, FAST), (0.0, FAST), (INF, FAST), (np.float64(0.5), FAST),
                         (torch.tensor(1.0), FAST), (torch.tensor([1.0]), FAST), (torch.tensor(1.0, dtype=F64), FAST),
                         (torch.tensor(-1.0), FAST), (torch.tensor(NAN), FAST),
                         (torch.tensor(1), FAST), (torch.tensor(1, dtype=torch.int32), FAST),
                         (-1.0, TORCH_SERVES), (NAN, TORCH_SERVES), ("1.0", TORCH_SERVES), ("abc", TORCH_SERVES),
                         (None, TORCH_SERVES), (torch.tensor([1.0, 2.0]), TORCH_SERVES),
                         (torch.tensor(1.0, device="meta"), TORCH_SERVES), (10 ** 400, TORCH_SERVES)]:
        add(f"max_norm={value!r}", model_grads, max_norm=value, route=route)
    # bf16 threshold tensor: read by fastclip's kernel in its own precision
    cases.append(dataclasses.replace(norm_call("clip_grad_norm_", model_grads, torch.tensor(1.0, dtype=BF16),
                                               id="clip_grad_norm_-max_norm=bf16-tensor"), half_tolerance=True))

    # norm_type: torch takes float(norm_type); fastclip serves p > 0 and inf
    for value, route in [(2, FAST), (1, FAST), (3.5, FAST), (0.5, FAST), (INF, FAST), ("inf", FAST),
                         ("Infinity", FAST), ("2", FAST), (" 2 ", FAST), (torch.tensor(2.0), FAST), (True, FAST),
                         (100, FAST), (np.float32(3.0), FAST),
                         (0, TORCH_SERVES), (0.0, TORCH_SERVES), (-1, TORCH_SERVES), (-2.5, TORCH_SERVES),
                         (-INF, TORCH_SERVES), ("-inf", TORCH_SERVES), (NAN, TORCH_SERVES), ("nan", TORCH_SERVES),
                         ("abc", TORCH_SERVES), (None, TORCH_SERVES)]:
        add(f"norm_type={value!r}", model_grads, norm_type=value, route=route)
    add("norm_type=inf-bf16", lambda: model_grads(BF16), norm_type=INF)
    add("norm_type=inf-empty-tensor", lambda: params(rnd(0), rnd(3)), norm_type=INF, route=TORCH_SERVES)
    add("norm_type=-inf-empty-tensor", lambda: params(rnd(0), rnd(3)), norm_type=-INF, route=TORCH_SERVES)
    add("norm_type=0-empty-tensor", lambda: params(rnd(0), rnd(3)), norm_type=0, route=TORCH_SERVES)

    # foreach: None/True/False are fastclip's, any other value torch reads by its truthiness
    for value, route in [(None, FAST), (True, FAST), (False, FAST), (1, TORCH_SERVES), (0, TORCH_SERVES),
                         ("yes", TORCH_SERVES), ("", TORCH_SERVES)]:
        add(f"foreach={value!r}", model_grads, foreach=value, route=route)

    # error_if_nonfinite
    for value in (True, False, 1, "yes"):
        add(f"error_if_nonfinite={value!r}-finite", model_grads, error_if_nonfinite=value)
        add(f"error_if_nonfinite={value!r}-nan", lambda: params(t([NAN, 1.0]), rnd(3)),
            error_if_nonfinite=value)
    add("error_if_nonfinite-inf-norm", lambda: params(t([INF, 1.0])), norm_type=INF,
        error_if_nonfinite=True)
    add("error_if_nonfinite-fp16-overflow", lambda: params(t([60000.0] * 4, F16)),
        error_if_nonfinite=True)
    add("error_if_nonfinite-bf16-finite", lambda: model_grads(BF16), error_if_nonfinite=True)
    add("error_if_nonfinite-p3-overflow", lambda: params(t([1e20] * 3)), norm_type=3.0,
        error_if_nonfinite=True)
    return cases


def deprecated_alias_cases():
    """clip_grad_norm shares clip_grad_norm_'s code: a few cases, its FutureWarning compared too."""
    wanted = {"fp32-clips", "bf16", "empty-generator", "complex", "norm_type=0", "max_norm='1.0'", "a-generator"}
    return [dataclasses.replace(c, fn="clip_grad_norm", id=c.id.replace("clip_grad_norm_", "clip_grad_norm"))
            for c in norm_cases() if c.fn == "clip_grad_norm_" and c.id.split("-", 1)[1] in wanted]


def with_norm_cases():
    """clip_grads_with_norm_(parameters, max_norm, total_norm): torch multiplies by
    clamp(float(max_norm) / (total_norm + 1e-6), max=1) with a foreach op."""
    five = lambda: t(5.0)  # noqa: E731
    cases = []

    def add(id, make, max_norm, total_norm, route=FAST, half=False, **kwargs):
        def call(f, make=make):
            ps = make()
            return f(ps, max_norm, total_norm() if callable(total_norm) else total_norm, **kwargs), \
                ps if isinstance(ps, list) else []
        cases.append(Case(f"clip_grads_with_norm_-{id}", "clip_grads_with_norm_", call, route, half))

    add("clips", model_grads, 1.0, five)
    add("coef-above-1", model_grads, 10.0, five)
    add("bf16-grads", lambda: model_grads(BF16), 1.0, five)
    add("bf16-norm", model_grads, 1.0, lambda: t(5.0, BF16), half=True)
    add("fp64-norm", model_grads, 1.0, lambda: t(5.0, F64))
    add("inf-norm", model_grads, 1.0, lambda: t(INF))
    add("nan-norm", model_grads, 1.0, lambda: t(NAN))
    add("a-generator", lambda: (q for q in model_grads()), 1.0, five)
    add("tensor-max-norm", model_grads, torch.tensor(0.5), five)
    add("foreach=False", model_grads, 1.0, five, foreach=False)
    add("foreach=1", model_grads, 1.0, five, route=TORCH_SERVES, foreach=1)
    add("max_norm=-1", model_grads, -1.0, five, route=TORCH_SERVES)
    add("max_norm='0.5'", model_grads, "0.5", five, route=TORCH_SERVES)
    add("int-norm", model_grads, 1.0, lambda: t(5), route=TORCH_SERVES)
    add("1-d-norm", model_grads, 1.0, lambda: t([5.0]), route=TORCH_SERVES)
    add("float-norm", model_grads, 1.0, 5.0, route=TORCH_SERVES)
    add("none-norm", model_grads, 1.0, None, route=TORCH_SERVES)
    add("no-grads", lambda: params(None), 1.0, five, route=TORCH_SERVES)
    add("no-grads-bad-max-norm", lambda: [], "abc", five, route=TORCH_SERVES)
    add("complex-grads", lambda: params(t([3 + 4j])), 1.0, five, route=TORCH_SERVES)
    add("sparse-grads", lambda: params(rnd(4).to_sparse()), 1.0, five, route=TORCH_SERVES)
    return cases


def value_cases():
    """clip_grad_value_(parameters, clip_value): torch clamps to [-float(v), float(v)]."""
    cases = []

    def add(id, make, value, route=FAST, **kwargs):
        def call(f, make=make):
            ps = make()
            return f(ps, value, **kwargs), ps if isinstance(ps, list) else []
        cases.append(Case(f"clip_grad_value_-{id}", "clip_grad_value_", call, route))

    add("fp32", model_grads, 0.5)
    add("bf16", lambda: model_grads(BF16), 0.1)
    add("fp16+fp64", lambda: params(rnd(9, dtype=F16), rnd(3, dtype=F64)), 0.7)
    add("int-value", model_grads, 1)
    add("tensor-value", model_grads, torch.tensor(0.5))
    add("zero", model_grads, 0.0)
    add("inf", model_grads, INF)
    add("nan-grad", lambda: params(t([NAN, 5.0, -5.0])), 1.0)
    add("a-generator", lambda: (q for q in model_grads()), 0.5)
    add("foreach=True", model_grads, 0.5, foreach=True)
    add("foreach=1", model_grads, 0.5, route=TORCH_SERVES, foreach=1)
    add("negative", model_grads, -1.0, route=TORCH_SERVES)
    add("nan", model_grads, NAN, route=TORCH_SERVES)
    add("string", model_grads, "0.5", route=TORCH_SERVES)
    add("no-grads", lambda: params(None), 0.5, route=TORCH_SERVES)
    add("int-grads", lambda: params(t([3, -4])), 2, route=TORCH_SERVES)
    add("complex-grads", lambda: params(t([3 + 4j])), 1.0, route=TORCH_SERVES)
    add("sparse-grads", lambda: params(rnd(4).to_sparse()), 1.0, route=TORCH_SERVES)
    return cases


CASES = norm_cases() + deprecated_alias_cases() + with_norm_cases() + value_cases()


# ---------------------------------------------------------------------------------------------
# running a case and comparing the two outcomes

@dataclasses.dataclass
class Outcome:
    result: object
    error: tuple | None  # (type, message)
    warnings: list  # (category, message) of warnings raised by the call itself
    after: list  # every watched gradient after the call


def _ours(w) -> bool:
    # the Triton interpreter's numpy emits its own warnings; they are not part of the API
    return "triton" not in w.filename and "numpy" not in w.filename


def run(case: Case, f) -> Outcome:
    torch.manual_seed(1234)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result, watched = case.call(f)
            error = None
        except Exception as exc:  # noqa: BLE001  (the error is part of the outcome)
            result, watched, error = None, [], (type(exc), str(exc))
    after = [getattr(q, "grad", None) for q in watched]
    return Outcome(result, error, [(w.category, str(w.message)) for w in caught if _ours(w)], after)


RTOL = {BF16: 2 ** -7, F16: 2 ** -9, F32: 2e-6, F64: 1e-12}  # half types: two units in the last place


def _rtol(dtypes) -> float:
    """torch rounds each tensor's norm to its dtype: the least precise input sets the tolerance."""
    return max((RTOL.get(d, 0.0) for d in dtypes), default=RTOL[F32])


def assert_same_tensor(ours, theirs, what, rtol):
    assert type(ours) is type(theirs), f"{what}: {type(ours).__name__} where torch gives {type(theirs).__name__}"
    if theirs is None:
        return
    kind = operator.attrgetter("dtype", "device", "shape", "layout")
    assert kind(ours) == kind(theirs), \
        f"{what}: {ours.dtype} {ours.device} {tuple(ours.shape)} where torch gives " \
        f"{theirs.dtype} {theirs.device} {tuple(theirs.shape)}"
    if patch._inputs.is_dtensor(theirs):
        assert ours.placements == theirs.placements and ours.device_mesh == theirs.device_mesh, \
            f"{what}: placements {ours.placements}, torch {theirs.placements}"
        ours, theirs = ours.full_tensor(), theirs.full_tensor()
    if theirs.layout != torch.strided:
        ours, theirs = ours.to_dense(), theirs.to_dense()
    if theirs.device.type == "meta":
        return
    rtol = max(rtol, RTOL.get(theirs.dtype, 0.0))
    torch.testing.assert_close(ours, theirs, rtol=rtol, atol=rtol * 1e-3, equal_nan=True, msg=lambda m: f"{what}: {m}")


def assert_same_outcome(ours: Outcome, theirs: Outcome, half_tolerance=False):
    assert ours.error == theirs.error, f"raised {ours.error}, torch raised {theirs.error}"
    assert ours.warnings == theirs.warnings, f"warned {ours.warnings}, torch warned {theirs.warnings}"
    rtol = _rtol({g.dtype for g in theirs.after if g is not None} | ({BF16} if half_tolerance else set()))
    if isinstance(theirs.result, torch.Tensor) or isinstance(ours.result, torch.Tensor):
        assert_same_tensor(ours.result, theirs.result, "returned norm", rtol)
    else:
        assert ours.result == theirs.result
    assert len(ours.after) == len(theirs.after)
    for i, (a, b) in enumerate(zip(ours.after, theirs.after)):
        assert_same_tensor(a, b, f"gradient {i} afterwards", rtol)


def spy_routes(monkeypatch):
    """Record which side runs while torch is patched: fastclip's public functions, or the torch
    functions the patched ones hand inputs over to. Returns a function naming the side."""
    fast = spy_calls(monkeypatch, fastclip.api, ("clip_", "total_norm", "clip_with_norm_", "clip_value_"))
    slow = []
    for name, real in list(patch._handed_over.items()):
        def spy(*args, _real=real, _name=name, **kwargs):
            slow.append(_name)
            return _real(*args, **kwargs)
        monkeypatch.setitem(patch._handed_over, name, spy)
    return lambda: TORCH_SERVES if slow else (FAST if fast else "nobody")


def check(case: Case, monkeypatch):
    theirs = run(case, TORCH[case.fn])
    with patch.patched(), monkeypatch.context() as spying:
        served_by = spy_routes(spying)
        ours = run(case, getattr(torch.nn.utils, case.fn))
    assert served_by() == case.route, f"served by {served_by()}, expected {case.route}"
    assert_same_outcome(ours, theirs, case.half_tolerance)


@pytest.fixture
def on_device(device, monkeypatch):
    """The cases build their gradients on the test's device."""
    monkeypatch.setitem(CURRENT, "device", device)
    return device


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_patched_function_matches_torch(case, backend, on_device, monkeypatch):
    check(case, monkeypatch)


def test_the_matrix_covers_every_patched_function_both_ways():
    for name in NAMES:
        routes = {c.route for c in CASES if c.fn == name}
        assert routes == {FAST, TORCH_SERVES}, f"{name}: {routes}"


# ---------------------------------------------------------------------------------------------
# DTensor gradients, on a one-rank gloo group in this process (2-rank runs: test_distributed.py
# and test_trainers.py)

@pytest.fixture(scope="module")
def one_rank(tmp_path_factory):
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("needs torch.distributed with gloo")
    assert not dist.is_initialized(), "an earlier test left a process group initialized in this process"
    dist.init_process_group("gloo", init_method=f"file://{tmp_path_factory.mktemp('pg')}/store", rank=0,
                            world_size=1)
    yield
    dist.destroy_process_group()


def dtensor_params(shapes, placements, dtype=F32, mesh=None):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import distribute_tensor

    mesh = mesh or init_device_mesh("cpu", (1,) * len(placements))
    out = []
    for shape in shapes:
        full = rnd(*shape, dtype=dtype)
        q = torch.nn.Parameter(distribute_tensor(torch.zeros_like(full), mesh, placements))
        q.grad = distribute_tensor(full, mesh, placements)
        out.append(q)
    return out


def dtensor_cases():
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard

    shapes = [(6, 3), (5,), (1,)]
    cases = []

    def add(id, make, route=FAST, fns=NORM_FNS + ("clip_grads_with_norm_",), **kwargs):
        for fn in fns:
            if fn == "clip_grads_with_norm_":
                def call(f, make=make):
                    ps = make()
                    total = TORCH["get_total_norm"](grads_of(ps), kwargs.get("norm_type", 2.0))
                    return f(ps, 1.0, total), ps
                cases.append(Case(f"{fn}-{id}", fn, call, route))
            else:
                cases.append(norm_call(fn, make, *((1.0,) if fn != "get_total_norm" else ()), route=route,
                                       id=f"{fn}-{id}", **kwargs))

    add("shard0", lambda: dtensor_params(shapes, [Shard(0)]))
    add("shard0-bf16", lambda: dtensor_params(shapes, [Shard(0)], BF16))
    add("replicate", lambda: dtensor_params(shapes, [Replicate()]))
    for p in (1.0, 3.0, INF):
        add(f"shard0-p={p}", lambda: dtensor_params(shapes, [Shard(0)]), norm_type=p, fns=NORM_FNS)
    add("2d-mesh-inf", lambda: dtensor_params(shapes, [Shard(0), Replicate()]), norm_type=INF, fns=NORM_FNS)
    add("2d-mesh-2", lambda: dtensor_params(shapes, [Replicate(), Shard(0)]), fns=NORM_FNS)
    add("norm_type=0", lambda: dtensor_params(shapes, [Shard(0)]), norm_type=0, route=TORCH_SERVES, fns=NORM_FNS)
    add("mixed-with-plain", lambda: dtensor_params(shapes, [Shard(0)]) + params(rnd(3)), route=TORCH_SERVES,
        fns=NORM_FNS)

    def two_meshes():
        dp = init_device_mesh("cpu", (1,), mesh_dim_names=("dp",))
        ep = init_device_mesh("cpu", (1,), mesh_dim_names=("ep",))
        return dtensor_params(shapes, [Shard(0)], mesh=dp) + dtensor_params(shapes, [Shard(0)], mesh=ep)
    add("two-meshes", two_meshes, route=TORCH_SERVES, fns=NORM_FNS)
    add("empty-inf", lambda: dtensor_params([(0,), (3,)], [Shard(0)]), norm_type=INF, route=TORCH_SERVES,
        fns=NORM_FNS)

    def plain_grads_dtensor_norm(f):
        ps = params(rnd(4))
        return f(ps, 1.0, TORCH["get_total_norm"](grads_of(dtensor_params(shapes, [Shard(0)])))), ps
    cases.append(Case("clip_grads_with_norm_-dtensor-norm-plain-grads", "clip_grads_with_norm_",
                      plain_grads_dtensor_norm, TORCH_SERVES))

    def dtensor_grads_plain_norm(f):
        ps = dtensor_params(shapes, [Shard(0)])
        return f(ps, 1.0, torch.tensor(5.0)), ps
    cases.append(Case("clip_grads_with_norm_-dtensor-grads-plain-norm", "clip_grads_with_norm_",
                      dtensor_grads_plain_norm, FAST))
    cases.append(Case("clip_grad_value_-dtensor", "clip_grad_value_",
                      lambda f: (lambda ps: (f(ps, 0.5), ps))(dtensor_params(shapes, [Shard(0)])), TORCH_SERVES))
    return cases


DTENSOR_CASES = dtensor_cases() if dist.is_available() else []


@pytest.mark.parametrize("case", DTENSOR_CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("cpu_backend", ["torch", "triton"])
def test_dtensor_patched_function_matches_torch(case, cpu_backend, one_rank, monkeypatch):
    if cpu_backend == "triton":
        require_triton_on_cpu()
    monkeypatch.setenv("FASTCLIP_BACKEND", cpu_backend)
    check(case, monkeypatch)


# ---------------------------------------------------------------------------------------------
# where the patched function differs from torch on purpose: it is more accurate (patch.py's docstring)

def test_half_precision_norm_is_the_exact_norm_rounded_once(backend, on_device):
    ps = model_grads(BF16, scale=1.0)
    with patch.patched():
        norm = torch.nn.utils.clip_grad_norm_(ps, 1e9)
    exact = ref_norm(grads_of(ps), 2.0)  # float64 oracle; nothing was clipped
    assert norm.dtype == BF16
    assert float(norm) == float(torch.tensor(exact).to(BF16)), "torch's bf16 norm rounds twice; fastclip once"


def test_fp16_norm_overflow_returns_inf_like_torch_but_scales_the_gradients_exactly(backend, on_device):
    theirs, ours = params(t([60000.0] * 4, F16)), params(t([60000.0] * 4, F16))  # norm 120000 > fp16 max
    expected = TORCH["clip_grad_norm_"](theirs, 1.0)
    with patch.patched():
        norm = torch.nn.utils.clip_grad_norm_(ours, 1.0)
    assert expected.dtype == norm.dtype == F16 and math.isinf(expected) and math.isinf(norm)
    assert torch.equal(theirs[0].grad, torch.zeros(4, dtype=F16))  # torch multiplies by 1 / inf
    torch.testing.assert_close(ours[0].grad, t([0.5] * 4, F16))  # 60000 / 120000, from the fp32 norm
