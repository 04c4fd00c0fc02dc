"""The benchmark's own logic, in a few seconds: model shapes, report arithmetic, and that a case
fails when the clipper under test is wrong (a fast wrong kernel must never look like a win).

The full correctness pass of the suite is ``python bench/run.py --quick`` (CI runs it).
"""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))

import cases  # noqa: E402
import compiled_peer  # noqa: E402
import grad_sets  # noqa: E402
import report  # noqa: E402
import timing  # noqa: E402


@pytest.mark.parametrize("name,preset,count,numel", [
    ("gpt2", "gpu", 148, 124_439_808),  # HF GPT-2 small, tied lm_head
    ("resnet50", "gpu", 161, 25_557_032),  # torchvision resnet50
    ("vit_b16", "gpu", 152, 86_567_656),  # torchvision vit_b_16
    ("llama", "gpu", 146, 1_235_814_400),  # LLaMA-3.2-1B
    ("tiny2000", "cpu", 2000, 1_024_000),
])
def test_real_model_shapes(name, preset, count, numel):
    shapes = grad_sets.shapes(name, preset)
    assert len(shapes) == count
    assert grad_sets.numel_of(shapes) == numel


@pytest.mark.parametrize("name", grad_sets.SETS)
def test_tiny_sets_keep_structure_and_are_random(name):
    assert len(grad_sets.shapes(name, "tiny")) == len(grad_sets.shapes(name, "gpu"))
    params = grad_sets.make_grads(name, "bf16", "cpu", preset="tiny")
    again = grad_sets.make_grads(name, "bf16", "cpu", preset="tiny")
    for p, q in zip(params, again):
        assert p.grad.dtype == torch.bfloat16 and p.grad.shape == p.shape
        assert torch.equal(p.grad, q.grad)  # seeded
    assert all(bool(p.grad.abs().sum() > 0) for p in params)  # never zeros


def _bench(name, median, **extra):
    return {"name": name, "group": "g", "stats": {"median": median}, "extra_info": extra}


def test_report_ratios_and_floor():
    n = 1_000_000
    base = dict(set="gpt2", dtype="fp32", n_tensors=148, numel=n // 4, bytes=n, preset="cpu")
    doc = {"benchmarks": [
        _bench("a", 0.010, provider="torch-foreach", regime="clip", norm_err_fp64=1e-3, **base),
        _bench("b", 0.020, provider="torch-loop", regime="clip", **base),
        _bench("c", 0.005, provider="fastclip", regime="clip", norm_err_fp64=1e-8,
               dev_norm_vs_torch=1e-3, dev_values_vs_torch=2e-3, **base),
        _bench("d", 0.002, provider="floor-copy", regime="clip", **base),
        _bench("e", 0.004, provider="torch-compile", regime="clip", compile_s=42.0, compile_mode="default",
               compile_graphs=1, compile_cache_hits=0, **base),
    ]}
    (row,) = report.clip_rows(doc)
    assert row["speedup"] == pytest.approx(2.0)
    assert row["speedup_compiled"] == pytest.approx(0.8)  # compiled time / fastclip time
    assert row["gbs"] == pytest.approx(3 * n / 0.005 / 1e9)  # 3N bytes when clipping
    assert row["copy_gbs"] == pytest.approx(2 * n / 0.002 / 1e9)  # a copy moves 2N
    assert row["pct_floor"] == pytest.approx(100 * (3 * n / 0.005) / (2 * n / 0.002))
    assert row["dev_vs_torch"] == pytest.approx(2e-3)
    text = report.text_table(report.CLIP_COLUMNS, [report.clip_cells(row)])
    assert "2.00" in text and "0.80" in text and "4.000" in text  # speedups, the compiled time
    assert report.compile_cells([row]) == [["gpt2", "fp32", "default", "42.0", "1", "0"]]


def test_compiled_peer_cases_run_last():
    order = [c.provider == "torch-compile" for c in cases.all_cases()]
    assert any(order) and order == sorted(order)  # a deadline cut loses only compiled cases


@pytest.mark.parametrize("set_name,dtype,n_tensors,preset,env,runs", [
    ("huge", "fp32", 1, "tiny", None, True),  # quick mode: the one-tensor set in fp32 only
    ("huge", "bf16", 1, "tiny", None, False),
    ("gpt2", "fp32", 148, "tiny", None, False),
    ("gpt2", "bf16", 148, "cpu", None, True),
    ("tiny2000", "fp32", 2000, "cpu", None, False),  # compile time grows faster than the tensor count
    ("tiny2000", "fp32", 2000, "cpu", "tiny2000", True),  # unless named
    ("gpt2", "fp32", 148, "cpu", "none", False),
])
def test_which_sets_the_compiled_peer_runs_on(monkeypatch, set_name, dtype, n_tensors, preset, env, runs):
    monkeypatch.delenv("FASTCLIP_RUN_DEADLINE", raising=False)
    if env is None:
        monkeypatch.delenv("FASTCLIP_BENCH_COMPILE_SETS", raising=False)
    else:
        monkeypatch.setenv("FASTCLIP_BENCH_COMPILE_SETS", env)
    reason = compiled_peer.skip_reason(set_name, dtype, n_tensors, torch.device("cpu"), preset)
    assert (reason is None) == runs, reason


def test_compiled_peer_is_skipped_when_the_deadline_is_near(monkeypatch):
    import time

    monkeypatch.delenv("FASTCLIP_BENCH_COMPILE_SETS", raising=False)
    monkeypatch.setenv("FASTCLIP_RUN_DEADLINE", str(time.time() + 30))
    assert "deadline" in compiled_peer.skip_reason("gpt2", "fp32", 148, torch.device("cpu"), "cpu")


def test_compiled_peer_check_fails_for_an_eager_call():
    params = grad_sets.make_grads("huge", "fp32", "cpu", preset="tiny")
    with pytest.raises(AssertionError, match="no compiled region"):
        compiled_peer.verify(lambda: torch.nn.utils.clip_grad_norm_(params, 1.0))


def _run(case, monkeypatch=None):
    def pedantic(target, setup=None, rounds=1, warmup_rounds=0):
        return timing.plain_pedantic(target, setup, rounds, warmup_rounds)[0]

    try:
        return cases.run_case(case, pedantic, torch.device("cpu"), "tiny", measure=False)
    finally:
        cases.release_state()


@pytest.mark.parametrize("regime", ["clip", "noclip"])
def test_case_passes_with_fastclip(regime):
    info = _run(cases.Case("resnet50", "fp32", regime, "fastclip"))
    assert info["norm_err_fp64"] <= cases.NORM_RTOL
    assert info["moved_bytes"] == (3 if regime == "clip" else 1) * info["bytes"]


@pytest.mark.parametrize("bug", ["wrong_norm", "no_scaling", "scales_when_not_needed"])
def test_case_fails_when_the_clipper_is_wrong(bug, monkeypatch):
    import fastclip

    real = fastclip.clip_

    def broken(params, max_norm, *args, **kwargs):
        if bug == "wrong_norm":
            return real(params, max_norm) * 1.001
        if bug == "no_scaling":
            return real(params, float("inf"))
        norm = real(params, max_norm)
        for p in params:
            p.grad.mul_(0.999)
        return norm

    monkeypatch.setattr(fastclip, "clip_", broken)
    regime = "noclip" if bug == "scales_when_not_needed" else "clip"
    with pytest.raises(AssertionError):
        _run(cases.Case("gpt2", "fp32", regime, "fastclip"))
