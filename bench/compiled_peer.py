"""The ``torch.compile`` peer: ``torch.compile(torch.nn.utils.clip_grad_norm_)``, compiled once per set.

What a speed-minded user would try next to eager torch.  Inductor generates the whole call: on
CUDA Triton kernels, on the CPU vectorised C++ (there, as of torch 2.13, the per-tensor norms stay
one extern ``aten._foreach_norm`` call and the generated code fuses the norm of norms, the
coefficient and every tensor's rescale into one or two kernels).

* **Mode**: ``FASTCLIP_BENCH_COMPILE_MODE`` (default ``default``: Inductor's defaults, no CUDA
  graphs).  ``max-autotune-no-cudagraphs`` adds autotuning and coordinate-descent tuning of the
  generated Triton kernels on CUDA (longer compiles); it changes nothing for these ops on the CPU.
  ``fullgraph=True``: a graph break would leave part of the call eager, so it fails the case instead.
* **One graph per (set, dtype)**: ``max_norm`` is passed as a 0-d float32 tensor on the gradients'
  device.  A Python float is specialised into the graph, so the second regime's value would
  recompile (measured: a second 42 s compile for GPT-2 shapes on the busy 2-core CPU).  The graph is
  the same either way: the threshold is one scalar input of the coefficient.
* **Compiled outside the timing**: the first call compiles (its wall time, cache hits included, is
  recorded as ``compile_s``); Dynamo is reset between gradient sets, so guards never pile up.
* **The timed calls run the compiled graph**: timing runs under ``error_on_recompile`` (a guard
  failure raises instead of compiling or falling back to eager), the number of compiled graphs is
  checked to be unchanged afterwards, and one profiled call must run inside the compiled region.
* **Which sets**: ``FASTCLIP_BENCH_COMPILE_SETS`` (comma list, ``all`` or ``none``).  Default: every
  set of at most ``MAX_TENSORS`` tensors, and at the ``tiny`` preset (``bench/run.py --quick``, CI)
  only ``huge`` (one tensor) in fp32.  Inductor's compile time grows faster than the tensor count
  (measured on the quiet 2-core CPU, N tensors of 512 elements: 100 -> 23 s, 200 -> 40 s,
  400 -> 88 s, mostly the scheduler's fusion pass; 2 000 had not finished after 17 min on a busy
  machine, ~10 min extrapolated), so the 2 000-tensor set is left out unless named; GPT-2's 148
  tensors take ~30 s (cold cache), one tensor a few seconds.  Under ``FASTCLIP_RUN_DEADLINE`` (the GPU script) a compile is
  skipped when it would not finish in time.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import time

import torch

#: Compile time (s) assumed before any compile has been measured in this process.
FIRST_COMPILE_GUESS_S = 45.0
#: Sets with more tensors are compiled only when named in FASTCLIP_BENCH_COMPILE_SETS.
MAX_TENSORS = 500

_longest_compile_s = 0.0
_used = False


def mode() -> str:
    """The torch.compile mode benchmarked (``FASTCLIP_BENCH_COMPILE_MODE``, default ``default``)."""
    return os.environ.get("FASTCLIP_BENCH_COMPILE_MODE", "").strip() or "default"


def _named_sets() -> tuple | None:
    """The sets named in FASTCLIP_BENCH_COMPILE_SETS (None: not set; ("all",) for all)."""
    raw = os.environ.get("FASTCLIP_BENCH_COMPILE_SETS", "").strip().lower()
    if not raw:
        return None
    return () if raw == "none" else tuple(s.strip() for s in raw.split(",") if s.strip())


def skip_reason(set_name: str, dtype: str, n_tensors: int, device: torch.device, preset: str) -> str | None:
    """Why the compiled peer is not run for this set here (None if it is)."""
    named = _named_sets()
    if named is not None and "all" not in named and set_name not in named:
        return f"torch.compile peer not run for {set_name}: not in FASTCLIP_BENCH_COMPILE_SETS"
    if named is None and preset == "tiny" and (set_name, dtype) != ("huge", "fp32"):
        return ("torch.compile peer: quick mode compiles only the one-tensor set in fp32 "
                "(GPT-2's 148-tensor graph takes ~30 s to compile on 2 cores)")
    if named is None and n_tensors > MAX_TENSORS:
        return (f"torch.compile peer not run for {n_tensors} tensors: Inductor's compile time grows faster than "
                f"the tensor count (400 tensors: 88 s on 2 cores); name the set in FASTCLIP_BENCH_COMPILE_SETS")
    if device.type == "cpu" and not (os.environ.get("CXX") or any(shutil.which(c) for c in ("g++", "c++", "clang++"))):
        return "torch.compile on the CPU needs a C++ compiler (none found)"
    deadline = float(os.environ.get("FASTCLIP_RUN_DEADLINE", 0) or 0)
    if deadline:
        need = 1.5 * (_longest_compile_s or FIRST_COMPILE_GUESS_S) + 15
        left = deadline - time.time()
        if left < need:
            return f"torch.compile peer skipped: {left:.0f} s left before the deadline, a compile may need {need:.0f} s"
    return None


class Peer:
    """The compiled function for one gradient state, with what its compile cost."""

    def __init__(self, state):
        global _longest_compile_s, _used
        import torch._dynamo
        from torch._dynamo.utils import counters

        _used = True
        torch._dynamo.reset()  # one set's graph at a time: no guard chains across sets
        self.mode = mode()
        self.fn = torch.compile(torch.nn.utils.clip_grad_norm_, fullgraph=True,
                                mode=None if self.mode == "default" else self.mode)
        self._thresholds: dict[float, torch.Tensor] = {}
        before = _inductor_counts(counters)
        state.restore()
        t0 = time.perf_counter()
        self.fn(state.params, self.threshold(state.max_norm("clip"), state.device))
        if state.device.type == "cuda":
            torch.cuda.synchronize(state.device)
        self.compile_s = time.perf_counter() - t0
        state.restore()
        after = _inductor_counts(counters)
        self.graphs = after["graphs"] - before["graphs"]
        self.cache_hits = after["hits"] - before["hits"]
        _longest_compile_s = max(_longest_compile_s, self.compile_s)

    def threshold(self, max_norm: float, device: torch.device) -> torch.Tensor:
        """``max_norm`` as the 0-d float32 device tensor the graph takes (one per value, reused)."""
        if max_norm not in self._thresholds:
            self._thresholds[max_norm] = torch.tensor(max_norm, dtype=torch.float32, device=device)
        return self._thresholds[max_norm]

    def info(self) -> dict:
        return {"compile_mode": self.mode, "compile_s": self.compile_s, "compile_graphs": self.graphs,
                "compile_cache_hits": self.cache_hits}


def _inductor_counts(counters) -> dict:
    return {"graphs": counters["stats"]["unique_graphs"], "hits": counters["inductor"]["fxgraph_cache_hit"]}


def peer_for(state) -> Peer:
    """The state's compiled peer, compiled on first use (a failed compile is not retried)."""
    if getattr(state, "compiled", None) is None:
        try:
            state.compiled = Peer(state)
        except Exception as exc:
            state.compiled = exc
            raise
    if isinstance(state.compiled, Exception):
        raise RuntimeError(f"torch.compile failed for this gradient set earlier: {state.compiled!r}")
    return state.compiled


@contextlib.contextmanager
def no_recompile():
    """Timed calls must hit the compiled graph: a guard failure raises instead of recompiling."""
    import torch._dynamo

    with torch._dynamo.config.patch(error_on_recompile=True):
        yield


def verify(call) -> dict:
    """After timing: no graph was added, and one more call runs inside the compiled region."""
    from torch._dynamo.utils import counters
    from torch.profiler import ProfilerActivity, profile

    graphs = counters["stats"]["unique_graphs"]
    with no_recompile(), profile(activities=[ProfilerActivity.CPU]) as prof:
        call()
    names = [e.name for e in prof.events()]
    compiled_region = any("Compiled" in n for n in names)  # "Torch-Compiled Region", "## Call CompiledFxGraph"
    assert counters["stats"]["unique_graphs"] == graphs, "torch.compile peer recompiled during the benchmark"
    assert compiled_region, f"torch.compile peer: the profiled call ran no compiled region ({sorted(set(names))[:12]})"
    return {"compiled_region": True, "compiled_aten_ops": sorted({n for n in names if n.startswith("aten::")})}


def reset() -> None:
    """Forget compiled graphs (called when the benchmark moves to another gradient set)."""
    if _used:
        import torch._dynamo

        torch._dynamo.reset()
