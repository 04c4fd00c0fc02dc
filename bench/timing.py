"""How a call is timed; shared by the pytest-benchmark suite and the plain runner.

* Every timed function ends with ``torch.cuda.synchronize()`` on CUDA, so a round measures the
  whole call (host work + kernels), as a training step sees it.  On CUDA each round is also
  bracketed by CUDA events (device time only, reported next to the wall time).
* Rounds are sized from a measured call: about ``budget`` seconds of timed work per benchmark
  (``FASTCLIP_BENCH_BUDGET`` overrides), within [min, max] rounds.  The two calls used to
  measure it (the first compiles kernels and builds fastclip's plan) are warm-up, plus
  ``warmup_rounds`` more inside the benchmark.
* **L2 starts cold in every round**, for every provider and the copy floor alike.  Every round's
  ``setup`` (cases.py: restore the clipped gradients, or nothing) ends with :func:`sync`, which on
  CUDA first reads an eviction buffer of ``max(4 x L2, 256 MiB)`` (:func:`evict_l2`), outside the
  timed region.  Without it the 2 000-tensor set (4 MB) and ResNet-50 (51 MB in bf16) are partly
  served from L2 (50 MB on H100), left there by the previous round or by the restore that just
  wrote the gradients.  The buffer is *read*, not written (``zero_``, as ``triton.testing.do_bench``
  does): written lines are dirty, and the timed call would pay for writing back up to an L2's worth
  of them as it evicts them.  Eviction rather than rotating several copies of each gradient set:
  one buffer per device (256 MiB on H100/H200) whatever the set, where rotation needs the copies to
  exceed ~2 x L2 and the 1 B-element set (4 GiB in fp32, plus its saved copy and the copy floor's
  two buffers) cannot be copied many times on an 80 GB card.  On the CPU nothing changes.
* ``plain_pedantic`` mirrors ``benchmark.pedantic(target, setup=..., rounds=..., warmup_rounds=...)``
  for machines without pytest-benchmark; ``summarize`` turns its times into pytest-benchmark's
  stats fields.
"""
from __future__ import annotations

import os
import statistics
import time

import torch

#: (seconds of timed work per benchmark, min rounds, max rounds, warm-up rounds) per device type.
BUDGETS = {"cuda": (0.25, 10, 200, 2), "cpu": (0.6, 5, 25, 1)}


#: Smallest eviction buffer (bytes); it is at least 4 x the device's L2 as well.
EVICT_MIN_BYTES = 256 << 20
_evict_buffers: dict = {}


def evict_l2(device: torch.device) -> None:
    """Replace whatever L2 holds by clean lines of a buffer nothing timed ever reads (CUDA only)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    buf = _evict_buffers.get(index)
    if buf is None:
        l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or (64 << 20)
        buf = torch.ones(max(EVICT_MIN_BYTES, 4 * l2) // 4, dtype=torch.float32, device=device)
        _evict_buffers[index] = buf
    buf.sum()  # a full read; the 4-byte result is not needed


def sync(device: torch.device) -> None:
    """End of a round's setup: on CUDA evict L2 (:func:`evict_l2`), then wait for the device."""
    if device.type == "cuda":
        evict_l2(device)
        torch.cuda.synchronize(device)


class EventLog:
    """CUDA-event durations (ms) of every timed round on one device; a no-op elsewhere."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.pairs: list = []

    def median_ms(self) -> float | None:
        if not self.pairs:
            return None
        return statistics.median(s.elapsed_time(e) for s, e in self.pairs)


def timed(fn, device: torch.device, events: EventLog):
    """``fn`` wrapped so that a call ends when the device is done (and is event-timed on CUDA)."""
    if device.type != "cuda":
        return fn

    def run():
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = fn()
        end.record()
        torch.cuda.synchronize(device)
        events.pairs.append((start, end))
        return out

    return run


def plan_rounds(run, setup, device: torch.device) -> tuple[int, int]:
    """(rounds, warmup_rounds) for about the device's budget of timed work; runs ``run`` twice."""
    budget, lo, hi, warmup = BUDGETS["cuda" if device.type == "cuda" else "cpu"]
    budget = float(os.environ.get("FASTCLIP_BENCH_BUDGET", budget))
    elapsed = 0.0
    for _ in range(2):  # the first call compiles / builds the plan; the second is the estimate
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        run()
        elapsed = time.perf_counter() - t0
    return max(lo, min(hi, int(budget / max(elapsed, 1e-7)))), warmup


def plain_pedantic(target, setup=None, rounds=1, warmup_rounds=0):
    """``benchmark.pedantic`` without pytest-benchmark: (last result, list of round times in s)."""
    times, result = [], None
    for i in range(warmup_rounds + rounds):
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        result = target()
        dt = time.perf_counter() - t0
        if i >= warmup_rounds:
            times.append(dt)
    return result, times


def plain_loop(target, rounds: int, iterations: int, warmup_rounds: int = 1) -> list[float]:
    """Per-call times (s) of ``iterations`` back-to-back calls per round, no sync (host time)."""
    times = []
    for i in range(warmup_rounds + rounds):
        t0 = time.perf_counter()
        for _ in range(iterations):
            target()
        dt = (time.perf_counter() - t0) / iterations
        if i >= warmup_rounds:
            times.append(dt)
    return times


def summarize(times: list[float], iterations: int = 1) -> dict:
    """pytest-benchmark's ``stats`` fields (seconds) for a list of per-call times."""
    ts = sorted(times)
    n = len(ts)
    q1, q3 = (statistics.quantiles(ts, n=4)[0], statistics.quantiles(ts, n=4)[2]) if n >= 2 else (ts[0], ts[0])
    mean = statistics.fmean(ts)
    return {
        "min": ts[0], "max": ts[-1], "mean": mean, "median": statistics.median(ts),
        "stddev": statistics.stdev(ts) if n > 1 else 0.0, "q1": q1, "q3": q3, "iqr": q3 - q1,
        "rounds": n, "iterations": iterations, "ops": 1.0 / mean if mean > 0 else 0.0,
        "data": ts,
    }
