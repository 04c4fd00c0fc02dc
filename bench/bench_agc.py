"""AGC benchmark: fastclip.agc_ against timm's adaptive_clip_grad loop, runnable on its own.

    python bench/bench_agc.py                      # both sets x fp32/bf16, report to bench/results/<device>/
    python bench/bench_agc.py --tiny --rounds 1    # correctness only, seconds
    python bench/bench_agc.py --sets nfnet_f0 --dtypes bf16 --rounds 9 --out /tmp/agc

Providers per (set, dtype), timed in the same process on the same data:

* ``fastclip``   ``fastclip.agc_(params, 0.01)`` (CUDA: the two Triton launches; CPU: the grouped
                 torch fallback, what ``auto`` picks there);
* ``timm-loop``  timm's ``adaptive_clip_grad`` (``agc_sets.timm_adaptive_clip_grad``).

Every round starts from the same gradients (restored untimed), about half the units clip.  Time
is the median of ``--rounds`` rounds after one warm-up (CUDA: synchronized around the call).
Bytes: each provider must read weights and gradients once and rewrite the clipping units'
gradients, ``(2 + 2 f) N`` element bytes with f the clipped fraction; GB/s uses that count.
Checks after timing: fastclip's gradients against the float64 oracle of timm's formula on three
tensors (first, middle, last), decisions equal away from ties, values within the dtype's rounding.

Writes ``agc.json`` (every number, the machine) and ``agc_table.md`` into the results folder.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH)
sys.path.insert(0, os.path.dirname(BENCH))

import agc_sets  # noqa: E402
import device_info  # noqa: E402
import fastclip  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
VALUE_RTOL = {torch.float32: 1e-5, torch.bfloat16: 8e-3}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_provider(fn, params, saved, device, rounds: int) -> list[float]:
    times = []
    for r in range(rounds + 1):
        for p, g in zip(params, saved):
            p.grad.copy_(g)
        sync(device)
        t0 = time.perf_counter()
        fn(params)
        sync(device)
        if r:  # the first round warms up (plans, allocator)
            times.append(time.perf_counter() - t0)
    return times


def oracle_check(params, saved) -> None:
    """fastclip's output on three tensors vs timm's formula in float64 (ties excluded)."""
    picks = sorted({0, len(params) // 2, len(params) - 1})
    for i in picks:
        w, g0, got = params[i].detach().double(), saved[i].double(), params[i].grad.double()
        dims = tuple(range(1, w.dim()))
        w_norm = torch.linalg.vector_norm(w, dim=dims or None, keepdim=True)
        g_norm = torch.linalg.vector_norm(g0, dim=dims or None, keepdim=True)
        max_norm = w_norm.clamp(min=1e-3) * agc_sets.CLIP_FACTOR
        ref = torch.where(g_norm < max_norm, g0, g0 * max_norm / g_norm.clamp(min=1e-6))
        sure = ((g_norm - max_norm).abs() > 1e-5 * max_norm).expand(w.shape)
        rtol = VALUE_RTOL[params[i].grad.dtype]
        torch.testing.assert_close(got[sure], ref[sure], rtol=rtol, atol=rtol * ref.abs().max().item())


def clipped_fraction(params, saved) -> float:
    total = clipped = 0
    for p, g in zip(params, saved):
        w, g = p.detach().double(), g.double()
        if w.dim() <= 1:
            w, g = w.reshape(1, -1), g.reshape(1, -1)
        else:
            w, g = w.reshape(w.shape[0], -1), g.reshape(g.shape[0], -1)
        clips = ~(g.norm(dim=1) < w.norm(dim=1).clamp(min=1e-3) * agc_sets.CLIP_FACTOR)
        total += clips.numel()
        clipped += int(clips.sum())
    return clipped / total


def run_case(name, dtype_name, device, rounds, tiny) -> dict:
    dtype = DTYPES[dtype_name]
    params = agc_sets.make_params(name, dtype, device, tiny=tiny)
    saved = [p.grad.clone() for p in params]
    numel = sum(p.numel() for p in params)
    fraction = clipped_fraction(params, saved)
    row = {"set": name, "dtype": dtype_name, "tensors": len(params), "numel": numel,
           "clipped_fraction": fraction, "bytes": int((2 + 2 * fraction) * numel * params[0].element_size())}
    providers = {"fastclip": lambda ps: fastclip.agc_(ps, agc_sets.CLIP_FACTOR),
                 "timm-loop": lambda ps: agc_sets.timm_adaptive_clip_grad(ps, agc_sets.CLIP_FACTOR)}
    for provider, fn in providers.items():
        times = time_provider(fn, params, saved, device, rounds)
        row[provider] = {"median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times),
                         "rounds": len(times)}
        if provider == "fastclip":
            oracle_check(params, saved)
    row["speedup"] = row["timm-loop"]["median_ms"] / row["fastclip"]["median_ms"]
    print(f"[bench] agc {name} {dtype_name}: fastclip {row['fastclip']['median_ms']:.2f} ms, "
          f"timm {row['timm-loop']['median_ms']:.2f} ms, x{row['speedup']:.2f}", flush=True)
    del params, saved
    return row


def table(rows, env) -> str:
    lines = [f"AGC (clip_factor {agc_sets.CLIP_FACTOR}), {env.get('device', '?')}, torch {env.get('torch', '?')}, "
             f"threads {torch.get_num_threads()}; median ms over the rounds; GB/s = (2 + 2f) N bytes / time",
             "", "| set | dtype | tensors | elements | clipped units | fastclip ms | timm ms | speedup | fastclip GB/s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ms = r["fastclip"]["median_ms"]
        lines.append(f"| {r['set']} | {r['dtype']} | {r['tensors']} | {r['numel'] / 1e6:.1f} M | "
                     f"{100 * r['clipped_fraction']:.0f} % | {ms:.2f} | {r['timm-loop']['median_ms']:.2f} | "
                     f"{r['speedup']:.2f}x | {r['bytes'] / ms / 1e6:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default=",".join(agc_sets.SETS))
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--tiny", action="store_true", help="small widths: a correctness run")
    ap.add_argument("--out", help="results folder (default: bench/results/<device>/)")
    args = ap.parse_args(argv)
    device = device_info.bench_device()
    env = device_info.environment(device)
    rows = [run_case(s, d, device, args.rounds, args.tiny) for s in args.sets.split(",") for d in args.dtypes.split(",")]
    text = table(rows, env)
    print(text)
    out = args.out or os.path.join(BENCH, "results", device_info.device_slug(device))
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "agc.json"), "w", encoding="utf-8") as f:
        json.dump({"env": env, "threads": torch.get_num_threads(), "rows": rows}, f, indent=1)
    with open(os.path.join(out, "agc_table.md"), "w", encoding="utf-8") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
