"""The clip benchmark cases: what is called, on which gradients, and how the result is checked.

A *case* is (gradient set, dtype, regime, provider).  Providers, timed side by side in one
pytest-benchmark group per (set, dtype, regime):

* ``fastclip``      ``fastclip.clip_(params, max_norm)`` (on CUDA: the Triton backend, asserted;
                    on the CPU: its PyTorch backend, what ``auto`` picks there);
* ``torch-foreach`` ``torch.nn.utils.clip_grad_norm_(..., foreach=True)`` (torch's default);
* ``torch-loop``    ``torch.nn.utils.clip_grad_norm_(..., foreach=False)``;
* ``torch-compile`` ``torch.compile(torch.nn.utils.clip_grad_norm_)``, compiled once per (set, dtype)
                    before timing; mode, threshold tensor and the checks that the timed calls ran
                    the compiled graph are in ``compiled_peer.py``;
* ``floor-copy``    ``dst.copy_(src)`` of one flat buffer holding as many bytes as the gradients
                    (N): the byte-floor reference.  Copy bandwidth = 2N / t; a clip must move 3N
                    bytes (read for the norm, read + write to scale) and a no-clip call N.

Regimes: ``clip`` (max_norm = 0.5 x the true norm: every gradient is rescaled) and ``noclip``
(max_norm = 2 x the true norm: nothing changes).  In ``clip`` every timed round first restores
the gradients from a saved copy (``setup``, untimed), so each round clips the same random data;
in ``noclip`` the gradients are never modified (checked bitwise afterwards).

The compiled peer's cases run after all the others (``all_cases``): its compiles are the
slowest part of a run, and a run cut short by its deadline then loses only those.

Checks, after timing, on the result of the last timed round (which started from the originals):
fastclip's norm against a float64 reference (relative error <= 2e-5), a sample of its output
values against original x coefficient (bitwise unchanged when not clipping), then the same
gradients clipped once by torch: norm and sampled values must agree loosely (torch's own CPU
norm is off by up to ~0.3 %).  A fast but wrong kernel fails the case.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
import os

import torch

import compiled_peer
import grad_sets
import timing

PROVIDERS = ("fastclip", "torch-foreach", "torch-loop", "torch-compile", "floor-copy")
REGIMES = {"clip": 0.5, "noclip": 2.0}  # max_norm / true norm
DTYPE_NAMES = ("fp32", "bf16")

NORM_RTOL = 2e-5  # fastclip's norm vs the float64 reference (issue 2's accuracy target)
VALUE_RTOL = {"fp32": 5e-5, "bf16": 5e-3, "fp16": 2e-3, "fp64": 1e-9}  # coef error + output rounding
#: under the Triton interpreter (bench/tune.py --smoke), which converts fp32 to bf16 by truncation:
#: one whole bf16 ulp (2**-7), as tests/test_clip.py allows
INTERPRETER_VALUE_RTOL = {**VALUE_RTOL, "bf16": 8e-3}
TORCH_NORM_RTOL = 2e-2  # loose: torch's CPU norms are off by up to ~0.3 %, bf16 ones rounded
TORCH_VALUE_RTOL = {"fp32": 2e-2, "bf16": 3e-2, "fp16": 3e-2, "fp64": 2e-2}


@dataclasses.dataclass(frozen=True)
class Case:
    set: str
    dtype: str
    regime: str
    provider: str

    @property
    def group(self) -> str:
        return f"{self.set}-{self.dtype}-{self.regime}"

    @property
    def id(self) -> str:
        return f"{self.group}-{self.provider}"


def _env_list(name: str, default) -> tuple:
    raw = os.environ.get(name, "").strip()
    return tuple(x.strip() for x in raw.split(",") if x.strip()) if raw else tuple(default)


def all_cases() -> list[Case]:
    """Cases ordered set -> dtype -> regime -> provider, so each gradient set is built once, then
    the ``torch-compile`` cases in the same order (each set built once more).

    ``FASTCLIP_BENCH_SETS`` / ``FASTCLIP_BENCH_DTYPES`` (comma lists) narrow the selection.
    """
    sets = _env_list("FASTCLIP_BENCH_SETS", grad_sets.SETS)
    dtypes = _env_list("FASTCLIP_BENCH_DTYPES", DTYPE_NAMES)
    for s in sets:
        if s not in grad_sets.SETS:
            raise ValueError(f"FASTCLIP_BENCH_SETS: unknown set {s!r}; choose from {grad_sets.SETS}")
    every = [Case(s, d, r, p) for s in sets for d in dtypes for r in REGIMES for p in PROVIDERS]
    return [c for c in every if c.provider != "torch-compile"] + [c for c in every if c.provider == "torch-compile"]


# --------------------------------------------------------------------------- gradient state
class GradState:
    """One gradient set in one dtype on the benchmark device, its saved originals and references."""

    def __init__(self, set_name: str, dtype: str, device: torch.device, preset: str, params: list | None = None):
        self.key = (set_name, dtype, device, preset)
        self.device = device
        self.preset = preset
        # params: a caller's own gradient set (bench/tune.py --smoke); default: the named set
        self.params = params if params is not None else grad_sets.make_grads(set_name, dtype, device, preset=preset)
        self.grads = [p.grad for p in self.params]
        self.saved = [g.clone() for g in self.grads]
        self.n_tensors = len(self.grads)
        self.numel = sum(g.numel() for g in self.grads)
        self.nbytes = sum(g.numel() * g.element_size() for g in self.grads)
        self.ref_norm = self._fp64_norm()
        if not self.ref_norm > 0:
            raise AssertionError(f"{set_name}/{dtype}: gradients are all zeros; never time on zeros")
        self._pick_sample()
        self.sample_orig = self.sample()
        self._floor = None
        self.compiled = None  # compiled_peer.Peer, made on first use

    def _fp64_norm(self) -> float:
        """The exact 2-norm of the stored values (float64 sums over chunks of 2**24 elements)."""
        acc = torch.zeros((), dtype=torch.float64, device=self.device)
        for g in self.grads:
            for chunk in g.reshape(-1).split(1 << 24):
                acc += chunk.double().square().sum()
        return math.sqrt(float(acc))

    def _pick_sample(self) -> None:
        """First, last and random positions of every tensor (>= 8 per tensor, ~8 K in all)."""
        gen = torch.Generator().manual_seed(1234)
        per_tensor = max(8, 8192 // self.n_tensors)
        self.sample_idx = []
        for i, g in enumerate(self.grads):
            n = g.numel()
            idx = torch.cat([torch.tensor([0, n - 1]), torch.randint(n, (min(n, per_tensor),), generator=gen)])
            self.sample_idx.append((i, idx.to(self.device)))

    def sample(self) -> torch.Tensor:
        """The sampled gradient values, as float64 on the CPU."""
        return torch.cat([self.grads[i].reshape(-1)[idx] for i, idx in self.sample_idx]).double().cpu()

    def restore(self) -> None:
        """Copy the original values back into the gradients (same allocations)."""
        if hasattr(torch, "_foreach_copy_"):
            torch._foreach_copy_(self.grads, self.saved)
        else:  # pragma: no cover - old torch
            for g, s in zip(self.grads, self.saved):
                g.copy_(s)

    def floor_buffers(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(src, dst): two flat buffers of the gradients' byte count, filled (no zero pages)."""
        if self._floor is None:
            dtype = self.grads[0].dtype
            src = torch.empty(self.numel, dtype=dtype, device=self.device).normal_()
            dst = torch.empty_like(src).fill_(1.0)
            self._floor = (src, dst)
        return self._floor

    def max_norm(self, regime: str) -> float:
        return REGIMES[regime] * self.ref_norm


_current: GradState | None = None


def get_state(set_name: str, dtype: str, device: torch.device, preset: str) -> GradState:
    """The state for this (set, dtype); the previous one is freed first (one set in memory)."""
    global _current
    key = (set_name, dtype, device, preset)
    if _current is None or _current.key != key:
        release_state()
        _current = GradState(set_name, dtype, device, preset)
    return _current


def release_state() -> None:
    global _current
    _current = None
    compiled_peer.reset()
    gc.collect()
    import fastclip

    fastclip.clear_cache()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- providers
_foreach_ok: dict = {}


def torch_foreach_supported(device: torch.device) -> bool:
    """Whether torch's clip_grad_norm_(foreach=True) accepts tensors on ``device``."""
    if device.type not in _foreach_ok:
        p = torch.nn.Parameter(torch.zeros(2, device=device))
        p.grad = torch.ones(2, device=device)
        try:
            torch.nn.utils.clip_grad_norm_([p], 1.0, foreach=True)
            _foreach_ok[device.type] = True
        except RuntimeError:
            _foreach_ok[device.type] = False
    return _foreach_ok[device.type]


@contextlib.contextmanager
def fastclip_backend(device: torch.device):
    """The backend fastclip is benchmarked with: Triton on CUDA (auto), its torch path on the CPU.

    The CPU choice is explicit because this process may have the Triton interpreter switched on
    (bench/conftest.py does, for the host-overhead bench), and ``auto`` would then pick it.
    """
    old = os.environ.get("FASTCLIP_BACKEND")
    os.environ["FASTCLIP_BACKEND"] = "auto" if device.type == "cuda" else "torch"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("FASTCLIP_BACKEND", None)
        else:
            os.environ["FASTCLIP_BACKEND"] = old


def fastclip_backend_used(state: GradState) -> str:
    from fastclip._dispatch import route

    works = route(state.grads)
    return "triton" if all(w.triton for w in works) else "torch"


def provider_fn(provider: str, state: GradState, max_norm: float):
    """The untimed-wrapper-free callable of one provider."""
    import fastclip

    params = state.params
    if provider == "fastclip":
        return lambda: fastclip.clip_(params, max_norm)
    if provider == "torch-foreach":
        return lambda: torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
    if provider == "torch-loop":
        return lambda: torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=False)
    if provider == "torch-compile":
        peer = compiled_peer.peer_for(state)
        threshold = peer.threshold(max_norm, state.device)
        return lambda: peer.fn(params, threshold)
    if provider == "floor-copy":
        src, dst = state.floor_buffers()
        return lambda: dst.copy_(src)
    raise ValueError(f"unknown provider {provider!r}; choose from {PROVIDERS}")


def skip_reason(case: Case, device: torch.device) -> str | None:
    """Why a case can't run on this device (None if it can)."""
    if case.provider == "torch-foreach" and not torch_foreach_supported(device):
        return f"torch has no foreach path on {device.type}"
    if case.provider == "torch-compile":
        preset = grad_sets.default_preset(device)
        return compiled_peer.skip_reason(case.set, case.dtype, len(grad_sets.shapes(case.set, preset)), device, preset)
    return None


# --------------------------------------------------------------------------- checks
def _rel(a, b) -> float:
    return abs(a - b) / abs(b) if b else abs(a - b)


def _max_rel(vals: torch.Tensor, ref: torch.Tensor) -> float:
    if vals.numel() == 0:
        return 0.0
    scale = ref.abs().clamp_min(torch.finfo(torch.float64).tiny)
    return float(((vals - ref).abs() / scale).max())


def check_fastclip(case: Case, state: GradState, norm: torch.Tensor, max_norm: float,
                   value_rtol: dict = VALUE_RTOL) -> dict:
    """fastclip vs float64 and vs torch on the same gradients; raises AssertionError if wrong."""
    nf = float(norm)
    ref = state.ref_norm
    info = {"norm": nf, "norm_ref_fp64": ref, "norm_err_fp64": _rel(nf, ref)}
    assert norm.dtype == torch.float32 and norm.dim() == 0, f"{case.id}: norm is {norm.dtype} {tuple(norm.shape)}"
    assert info["norm_err_fp64"] <= NORM_RTOL, (
        f"{case.id}: fastclip norm {nf!r} vs float64 {ref!r}: relative error "
        f"{info['norm_err_fp64']:.2e} > {NORM_RTOL:.0e}")
    vals = state.sample()
    coef = min(max_norm / (ref + 1e-6), 1.0)
    if case.regime == "noclip":
        assert torch.equal(vals, state.sample_orig), f"{case.id}: gradients changed although no clipping was needed"
        info["value_err"] = 0.0
    else:
        info["value_err"] = _max_rel(vals, state.sample_orig * coef)
        assert info["value_err"] <= value_rtol[case.dtype], (
            f"{case.id}: clipped values off by {info['value_err']:.2e} (relative) from original x {coef:.6g}")
    # the same gradients clipped once by torch's default path
    state.restore()
    tnorm = float(torch.nn.utils.clip_grad_norm_(state.params, max_norm))
    tvals = state.sample()
    state.restore()
    info["torch_norm"] = tnorm
    info["dev_norm_vs_torch"] = _rel(nf, tnorm)
    info["dev_values_vs_torch"] = _max_rel(vals, tvals)
    assert info["dev_norm_vs_torch"] <= TORCH_NORM_RTOL, f"{case.id}: norm {nf} vs torch {tnorm}"
    assert info["dev_values_vs_torch"] <= TORCH_VALUE_RTOL[case.dtype], (
        f"{case.id}: clipped values differ from torch's by {info['dev_values_vs_torch']:.2e} (relative)")
    return info


def check_torch(case: Case, state: GradState, norm: torch.Tensor, max_norm: float) -> dict:
    """torch's own result, eager or compiled (the harness, not torch, is under test): norm sane,
    values scaled."""
    nt = float(norm)
    info = {"norm": nt, "norm_ref_fp64": state.ref_norm, "norm_err_fp64": _rel(nt, state.ref_norm)}
    assert info["norm_err_fp64"] <= TORCH_NORM_RTOL, f"{case.id}: torch norm {nt} vs float64 {state.ref_norm}"
    coef = 1.0 if case.regime == "noclip" else min(max_norm / (nt + 1e-6), 1.0)
    info["value_err"] = _max_rel(state.sample(), state.sample_orig * coef)
    assert info["value_err"] <= VALUE_RTOL[case.dtype] * 4, f"{case.id}: torch values off by {info['value_err']:.2e}"
    return info


def check_floor(case: Case, state: GradState, out: torch.Tensor) -> dict:
    src, dst = state.floor_buffers()
    assert torch.equal(src, dst), f"{case.id}: copy reference produced wrong bytes"
    return {}


# --------------------------------------------------------------------------- one case
def describe(case: Case, state: GradState) -> dict:
    moved = {"floor-copy": 2}.get(case.provider, 3 if case.regime == "clip" else 1) * state.nbytes
    return {
        "set": case.set, "dtype": case.dtype, "regime": case.regime, "provider": case.provider,
        "preset": state.preset, "device": str(state.device), "n_tensors": state.n_tensors,
        "numel": state.numel, "bytes": state.nbytes, "moved_bytes": moved,
        "max_norm": state.max_norm(case.regime),
    }


def run_case(case: Case, pedantic, device: torch.device, preset: str, measure: bool = True) -> dict:
    """Time ``case`` with ``pedantic`` (pytest-benchmark's, or timing.plain_pedantic), then check it.

    ``pedantic(target, setup=..., rounds=..., warmup_rounds=...)`` must return the target's last
    result.  Returns the case's extra_info (description, checks, CUDA-event median).
    """
    state = get_state(case.set, case.dtype, device, preset)
    max_norm = state.max_norm(case.regime)
    info = describe(case, state)
    with fastclip_backend(device):
        if case.provider == "fastclip":
            info["backend"] = fastclip_backend_used(state)
            if device.type == "cuda" and info["backend"] != "triton":
                from fastclip._backend import triton_can_run_on

                raise AssertionError(f"fastclip did not take the Triton path on CUDA: {triton_can_run_on(device)[1]}")
        compiled = case.provider == "torch-compile"
        if compiled:  # compiles on first use, outside the timing
            info.update(compiled_peer.peer_for(state).info())
        events = timing.EventLog(device)
        call = provider_fn(case.provider, state, max_norm)
        run = timing.timed(call, device, events)
        if case.regime == "clip" and case.provider != "floor-copy":
            def setup():
                state.restore()
                timing.sync(device)
        else:
            def setup():
                timing.sync(device)
        with compiled_peer.no_recompile() if compiled else contextlib.nullcontext():
            rounds, warmup = timing.plan_rounds(run, setup, device) if measure else (1, 0)
            events.pairs.clear()
            result = pedantic(run, setup=setup, rounds=rounds, warmup_rounds=warmup)
        if events.cuda:
            info["gpu_ms_median"] = events.median_ms()
        if case.provider == "fastclip":
            info.update(check_fastclip(case, state, result, max_norm))
        elif case.provider.startswith("torch"):
            info.update(check_torch(case, state, result, max_norm))
            if compiled:
                setup()
                info.update(compiled_peer.verify(run))
        else:
            info.update(check_floor(case, state, result))
    if case.regime == "clip":
        state.restore()
    return info
