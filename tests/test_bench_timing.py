"""The benchmark's timing protocol (bench/timing.py): on CUDA every timed round starts with L2
evicted, for every provider alike; on the CPU the rounds are what they were.
"""
import os
import sys

import pytest
import torch

from conftest import requires_cuda

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))

import cases  # noqa: E402
import timing  # noqa: E402


def test_cpu_rounds_are_timed_as_before_and_evict_nothing(monkeypatch):
    evictions = []
    monkeypatch.setattr(timing, "evict_l2", lambda device: evictions.append(device))
    monkeypatch.setattr(timing, "_evict_buffers", {})
    cpu = torch.device("cpu")

    def fn():
        return 1

    assert timing.timed(fn, cpu, timing.EventLog(cpu)) is fn  # no events, no wrapper
    timing.sync(cpu)

    assert evictions == [] and timing._evict_buffers == {}


@requires_cuda
@pytest.mark.cuda
def test_the_eviction_buffer_is_read_and_outgrows_l2_four_times():
    device = torch.device("cuda", torch.cuda.current_device())
    timing.evict_l2(device)
    (buf,) = [b for i, b in timing._evict_buffers.items() if i == device.index]
    l2 = torch.cuda.get_device_properties(device).L2_cache_size

    assert buf.numel() * buf.element_size() >= max(4 * l2, timing.EVICT_MIN_BYTES)
    assert torch.all(buf == 1)  # read, never written after it was filled


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("provider", cases.PROVIDERS)
def test_every_timed_round_on_cuda_starts_right_after_an_eviction(provider, monkeypatch):
    """Whatever is timed (fastclip, torch, the copy floor), L2 was evicted just before it."""
    log = []
    real_evict = timing.evict_l2
    monkeypatch.setattr(timing, "evict_l2", lambda device: (log.append("evict"), real_evict(device)))

    def pedantic(target, setup=None, rounds=1, warmup_rounds=0):
        result = None
        for _ in range(warmup_rounds + rounds):
            setup()
            log.append("call")
            result = target()
        return result

    case = cases.Case("tiny2000", "fp32", "clip", provider)
    cases.run_case(case, pedantic, torch.device("cuda"), "tiny", measure=True)

    calls = [i for i, e in enumerate(log) if e == "call"]
    assert calls and all(log[i - 1] == "evict" for i in calls)
