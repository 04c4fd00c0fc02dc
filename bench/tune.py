"""Sweep fastclip's launch settings on a GPU: chunk, block, warps and programs per SM.

    python bench/tune.py --out DIR            # CUDA: the default sweep (36 configs, ~2-3 min on an H100)
    python bench/tune.py --smoke --out DIR    # CPU, Triton interpreter: tiny sets, 3 configs (CI)

Each config is a ``LaunchSettings`` (chunk, block, num_warps, programs_per_sm), set with
``use_settings`` and followed by ``fastclip.clear_cache()`` (cached plans keep the settings they
were built with).  It runs on three gradient sets (GPT-2 small, LLaMA-3.2-1B shapes, 2 000 x 512)
in fp32 and bf16:

1. **checked first**: one clipping and one non-clipping call on the original gradients, judged as
   the benchmark judges fastclip (``cases.check_fastclip``: norm vs a float64 oracle within 2e-5,
   sampled values vs original x coefficient, bitwise unchanged when no clip is needed, and close
   to torch's ``clip_grad_norm_``).  A config that fails is reported and never ranked;
2. **timed** on CUDA: device time between CUDA events around one ``fastclip.clip_`` call, median
   of ``--rounds``, in two regimes: ``noclip`` (max_norm = 2 x the norm: the norm launch plus a
   scale launch whose programs return at once, i.e. the norm kernel) and ``clip`` (0.5 x: both
   kernels; the scale kernel is about clip - noclip).  Before each timed call, untimed: the
   gradients are restored (clip), the benchmark's eviction buffer (``timing.evict_l2``: max(256 MiB,
   4 x L2)) is *read*, which evicts the
   gradients and leaves clean lines, so every call starts from DRAM as after a backward pass
   that touched more memory than the cache (the 2 000-tensor set is 4 MB: left in L2 it would
   time the cache), and a spin kernel (``torch.cuda._sleep``) keeps the GPU busy while the host
   enqueues the call, so host time never enters the events (rounds where the host took longer
   than the spin are counted as ``host_bound``).  The same method times a copy of the set's
   bytes, the floor the % column compares with.

   Why a read sweep rather than rotating copies of the gradients: fastclip caches 8 plans, and 8
   copies of the 2 000-tensor set (32 MB) still fit in an H100's 50 MB L2.

Printed last (a GPU run returns the end of the output): the best config per (device, set,
dtype, regime) with its gain over the current GPU_SETTINGS, and one overall pick, the config
with the lowest geometric mean of time / best time over all cases, as a ``LaunchSettings`` line.
``DIR/tune.json`` (every config x case, rewritten after each config, so a run cut short keeps
what it measured) and ``DIR/tune.md`` hold the details.

Time: about 36 configs x (3 sets x 2 dtypes x 2 regimes x 10 rounds) of device time (~0.4 s per
config on an H100, the LLaMA set dominating) plus a Triton compile per new (chunk, block, warps)
and programs-per-SM group (12 groups of three kernel variants).  ``--budget`` (default 170 s,
shortened by ``FASTCLIP_RUN_DEADLINE``) stops starting configs that would not finish in time;
they are listed as not run.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import json
import math
import os
import statistics
import sys
import time
import traceback

BENCH = os.path.dirname(os.path.abspath(__file__))
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)
if __name__ == "__main__" and "--smoke" in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported

import torch  # noqa: E402

import cases  # noqa: E402
import grad_sets  # noqa: E402
import timing  # noqa: E402

SETS = ("gpt2", "llama", "tiny2000")
DTYPES = ("fp32", "bf16")
REGIMES = ("noclip", "clip")  # norm-only first: it never modifies the gradients

# The default sweep.  Elements per thread and block = block / (32 * warps): 8 or 16, i.e. one or
# two 16-byte loads per thread for fp32 (GPU-PREDICTIONS.md: 16 bytes per thread is the lead).
CHUNKS = (32768, 65536, 131072)
BLOCK_WARPS = ((1024, 4), (2048, 4), (2048, 8), (4096, 8))
PROGRAMS_PER_SM = (2, 4, 6)

# --smoke: the interpreter runs programs one after another, so sets and chunks are tiny
SMOKE_SHAPES = {  # one layer each; ~1 chunk per tensor at the smoke chunk sizes
    "gpt2": lambda: grad_sets.gpt2_shapes(vocab=40, n_pos=8, d=8, layers=1),
    "llama": lambda: grad_sets.llama_shapes(40, 16, 24, 1, 2, 1),
    "tiny2000": lambda: [(33,)] * 12,  # odd sizes: every chunk takes the masked path
}
SMOKE_CONFIGS = ((256, 64, 1, 4), (128, 32, 1, 2), (512, 128, 2, 8))  # chunk, block, warps, programs/SM


def settings_grid(chunks, block_warps, programs_per_sm, base):
    """Every (chunk, block, warps, programs/SM) combination as LaunchSettings, ``base`` first.

    Configs that share compiled kernels (same chunk, block, warps) are adjacent.
    """
    grid = [base]
    for chunk, (block, warps), pps in itertools.product(chunks, block_warps, programs_per_sm):
        if chunk % block:
            continue
        s = dataclasses.replace(base, chunk=chunk, block=block, num_warps=warps, programs_per_sm=pps)
        if s not in grid:
            grid.append(s)
    return grid


def label(s) -> str:
    return f"{s.chunk}/{s.block}/{s.num_warps}/{s.programs_per_sm}"


# --------------------------------------------------------------------------- timing
class CudaTimer:
    """Device time of one call between CUDA events, from a cold, clean L2, host time hidden."""

    def __init__(self, device: torch.device):
        self.device = device
        props = torch.cuda.get_device_properties(device)
        self.l2_bytes = int(getattr(props, "L2_cache_size", 0) or 50 << 20)
        self.sleep = getattr(torch.cuda, "_sleep", None)
        self.cycles_per_ms = self._calibrate() if self.sleep else None

    def _calibrate(self) -> float:
        self.sleep(1000)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        self.sleep(2_000_000)
        end.record()
        torch.cuda.synchronize(self.device)
        return 2_000_000 / max(start.elapsed_time(end), 1e-3)

    def host_ms(self, call) -> float:
        """Host time (ms) to enqueue one call (median of 3, after a synchronized warm-up call)."""
        call()
        torch.cuda.synchronize(self.device)
        samples = []
        for _ in range(3):
            t0 = time.perf_counter()
            call()
            samples.append((time.perf_counter() - t0) * 1e3)
            torch.cuda.synchronize(self.device)
        return statistics.median(samples)

    def time(self, call, before, rounds: int) -> dict:
        host = self.host_ms(call)
        spin_ms = 2 * host + 0.05
        spin = int(spin_ms * self.cycles_per_ms) if self.cycles_per_ms else 0
        pairs, host_bound = [], 0
        for _ in range(rounds):
            if before is not None:
                before()
            timing.evict_l2(self.device)  # the benchmark's read-only sweep of >= 4 x L2: cold, clean cache
            t0 = time.perf_counter()
            if spin:
                self.sleep(spin)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            call()
            end.record()
            if not spin or (time.perf_counter() - t0) * 1e3 > spin_ms:
                host_bound += 1
            pairs.append((start, end))
        torch.cuda.synchronize(self.device)
        return _stats([s.elapsed_time(e) for s, e in pairs], host, host_bound)


class WallTimer:
    """--smoke (interpreter, CPU): wall time of a call; exercises the pipeline, measures nothing."""

    l2_bytes = 0

    def time(self, call, before, rounds: int) -> dict:
        times = []
        for _ in range(rounds):
            if before is not None:
                before()
            t0 = time.perf_counter()
            call()
            times.append((time.perf_counter() - t0) * 1e3)
        return _stats(times, None, 0)


def _stats(times_ms: list, host_ms, host_bound: int) -> dict:
    return {"median_ms": statistics.median(times_ms), "min_ms": min(times_ms), "max_ms": max(times_ms),
            "rounds": len(times_ms), "host_ms": host_ms, "host_bound": host_bound}


# --------------------------------------------------------------------------- one config
def make_states(sets, dtypes, device, smoke: bool) -> list:
    states = []
    for name, dtype in itertools.product(sets, dtypes):
        params = None
        if smoke:
            params = grad_sets.params_with_grads(SMOKE_SHAPES[name](), dtype, device, seed=f"{name}/smoke")
        states.append(cases.GradState(name, dtype, device, "smoke" if smoke else "gpu", params=params))
    return states


def copy_floor(state, timer, rounds: int) -> dict:
    """Time of a copy of the set's bytes (2N moved), measured like the clip calls."""
    src, dst = state.floor_buffers()
    r = timer.time(lambda: dst.copy_(src), None, rounds)
    state._floor = None  # free the two buffers
    r["copy_gbs"] = 2 * state.nbytes / (r["median_ms"] * 1e6)
    return r


def check(state) -> dict:
    """Both regimes on the original gradients, judged by the benchmark's fastclip checks."""
    import fastclip

    rtol = cases.INTERPRETER_VALUE_RTOL if os.environ.get("TRITON_INTERPRET") == "1" else cases.VALUE_RTOL
    out = {}
    for regime in REGIMES:
        max_norm = state.max_norm(regime)
        state.restore()
        norm = fastclip.clip_(state.params, max_norm)
        case = cases.Case(state.key[0], state.key[1], regime, "fastclip")
        info = cases.check_fastclip(case, state, norm, max_norm, value_rtol=rtol)
        out[regime] = {"norm_err_fp64": info["norm_err_fp64"], "value_err": info["value_err"]}
    state.restore()
    return out


def run_config(settings, states, timer, rounds: int, floors: dict) -> list[dict]:
    """Check, then time, every (set, dtype, regime) under ``settings``; one row per case."""
    import fastclip
    from fastclip.kernels.launch_settings import use_settings

    use_settings(settings)
    fastclip.clear_cache()
    rows = []
    for state in states:
        name, dtype = state.key[0], state.key[1]
        base = {"config": label(settings), **dataclasses.asdict(settings), "set": name, "dtype": dtype,
                "n_tensors": state.n_tensors, "numel": state.numel}
        try:
            backend = cases.fastclip_backend_used(state)
            if backend != "triton":
                raise AssertionError(f"fastclip took the {backend} path, not Triton")
            checks = check(state)
        except Exception:
            rows += [{**base, "regime": r, "ok": False, "error": traceback.format_exc(limit=4)} for r in REGIMES]
            continue
        for regime in REGIMES:
            max_norm = state.max_norm(regime)
            try:
                r = timer.time(lambda: fastclip.clip_(state.params, max_norm),
                               state.restore if regime == "clip" else None, rounds)
            except Exception:
                rows.append({**base, "regime": regime, "ok": False, "error": traceback.format_exc(limit=4)})
                continue
            moved = (3 if regime == "clip" else 1) * state.nbytes
            r["gbs"] = moved / (r["median_ms"] * 1e6)
            floor = floors.get((name, dtype))
            r["pct_copy"] = 100 * r["gbs"] / floor["copy_gbs"] if floor else None
            rows.append({**base, "regime": regime, "ok": True, **checks[regime], **r})
        state.restore()  # the clip rounds left the last call's result
    return rows


# --------------------------------------------------------------------------- ranking
def rank(rows: list[dict], default_label: str) -> dict:
    """Best config per (set, dtype, regime), and the overall pick (lowest geometric mean of
    time / best time over the cases every ranked config ran)."""
    failed = {r["config"] for r in rows if not r.get("ok")}
    ok = [r for r in rows if r.get("ok") and r["config"] not in failed]  # wrong once: never ranked
    by_case: dict = {}
    for r in ok:
        by_case.setdefault((r["set"], r["dtype"], r["regime"]), []).append(r)
    best = []
    for (name, dtype, regime), rs in by_case.items():
        b = min(rs, key=lambda r: r["median_ms"])
        d = next((r for r in rs if r["config"] == default_label), None)
        best.append({"set": name, "dtype": dtype, "regime": regime, "config": b["config"],
                     "median_ms": b["median_ms"], "gbs": b["gbs"], "pct_copy": b.get("pct_copy"),
                     "default_ms": d["median_ms"] if d else None,
                     "gain_vs_default": d["median_ms"] / b["median_ms"] if d else None})
    best_ms = {(b["set"], b["dtype"], b["regime"]): b["median_ms"] for b in best}
    scores = {}
    for cfg in {r["config"] for r in ok}:
        mine = {(r["set"], r["dtype"], r["regime"]): r["median_ms"] for r in ok if r["config"] == cfg}
        if set(mine) == set(best_ms):
            scores[cfg] = math.exp(statistics.fmean(math.log(mine[k] / best_ms[k]) for k in best_ms))
    pick = min(scores, key=scores.get) if scores else None
    return {"best": best, "scores": scores, "pick": pick, "failed_configs": sorted(failed)}


# --------------------------------------------------------------------------- output
def environment(device: torch.device, timer) -> dict:
    import triton

    env = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (Triton interpreter)",
           "torch": torch.__version__, "triton": triton.__version__, "python": sys.version.split()[0],
           "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "l2_bytes": timer.l2_bytes}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(sms=props.multi_processor_count, scrub_bytes=timer.scrub.numel() * 4,
                   spin_cycles_per_ms=timer.cycles_per_ms)
    return env


def summary_lines(doc: dict) -> list[str]:
    r = doc["ranking"]
    lines = [f"tune: {doc['env']['device']} · torch {doc['env']['torch']} · triton {doc['env']['triton']} · "
             f"{len(doc['configs_run'])}/{len(doc['configs'])} configs in {doc['elapsed_s']:.0f} s"
             + (f" · not run (budget): {len(doc['configs_not_run'])}" if doc["configs_not_run"] else ""),
             "best per set (chunk/block/warps/programs-per-SM; device ms, median; vs the current default):",
             f"  {'set':<9s} {'dtype':<5s} {'regime':<7s} {'best config':<18s} {'ms':>9s} {'GB/s':>7s} "
             f"{'% copy':>6s} {'default ms':>10s} {'gain':>6s}"]
    order = {s: i for i, s in enumerate(SETS)}
    for b in sorted(r["best"], key=lambda b: (order.get(b["set"], 9), b["dtype"], b["regime"])):
        pct = f"{b['pct_copy']:.0f}" if b.get("pct_copy") else ""
        dms = f"{b['default_ms']:.4f}" if b.get("default_ms") else ""
        gain = f"{b['gain_vs_default']:.3f}x" if b.get("gain_vs_default") else ""
        lines.append(f"  {b['set']:<9s} {b['dtype']:<5s} {b['regime']:<7s} {b['config']:<18s} "
                     f"{b['median_ms']:9.4f} {b['gbs']:7.1f} {pct:>6s} {dms:>10s} {gain:>6s}")
    top = sorted(r["scores"].items(), key=lambda kv: kv[1])[:8]
    if top:
        lines.append("configs by geometric mean of time / best time over all cases (1.000 = best everywhere):")
        lines += [f"  {cfg:<18s} {score:.3f}{'   <- current default' if cfg == doc['default'] else ''}"
                  for cfg, score in top]
        if doc["default"] in r["scores"] and all(cfg != doc["default"] for cfg, _ in top):
            lines.append(f"  {doc['default']:<18s} {r['scores'][doc['default']]:.3f}   <- current default")
    if r["pick"]:
        c, b, w, p = (int(x) for x in r["pick"].split("/"))
        lines.append(f"overall pick: LaunchSettings(chunk={c}, block={b}, num_warps={w}, programs_per_sm={p}, "
                     f"max_programs={doc['max_programs']})")
    if r["failed_configs"]:
        lines.append(f"FAILED (wrong results or errors, not ranked): {', '.join(r['failed_configs'])}")
    return lines


def markdown(doc: dict) -> str:
    head = ["config", "set", "dtype", "regime", "ok", "median ms", "min ms", "GB/s", "% copy", "host ms", "host-bound"]
    out = ["# fastclip launch-settings sweep", "", *summary_lines(doc), "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in doc["rows"]:
        if not r.get("ok"):
            out.append(f"| {r['config']} | {r['set']} | {r['dtype']} | {r['regime']} | **no** | | | | | | |")
            continue
        out.append("| " + " | ".join([
            r["config"], r["set"], r["dtype"], r["regime"], "yes", f"{r['median_ms']:.4f}", f"{r['min_ms']:.4f}",
            f"{r['gbs']:.1f}", f"{r['pct_copy']:.0f}" if r.get("pct_copy") else "",
            f"{r['host_ms']:.3f}" if r.get("host_ms") is not None else "", str(r["host_bound"])]) + " |")
    return "\n".join(out) + "\n"


def write(doc: dict, out: str) -> None:
    os.makedirs(out, exist_ok=True)
    tmp = os.path.join(out, "tune.json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
    os.replace(tmp, os.path.join(out, "tune.json"))
    with open(os.path.join(out, "tune.md"), "w", encoding="utf-8") as f:
        f.write(markdown(doc))


# --------------------------------------------------------------------------- main
def _ints(text: str) -> tuple:
    return tuple(int(x) for x in text.split(",") if x.strip())


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for tune.json and tune.md")
    ap.add_argument("--smoke", action="store_true", help="Triton interpreter on the CPU: tiny sets, 3 configs")
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--dtypes", default=",".join(DTYPES))
    ap.add_argument("--chunks", type=_ints, default=CHUNKS)
    ap.add_argument("--block-warps", default=",".join(f"{b}x{w}" for b, w in BLOCK_WARPS),
                    help="comma list of BLOCKxWARPS pairs")
    ap.add_argument("--programs-per-sm", type=_ints, default=PROGRAMS_PER_SM)
    ap.add_argument("--rounds", type=int, help="timed calls per case (default 10; 1 with --smoke)")
    ap.add_argument("--budget", type=float, default=170.0, help="seconds; configs that would overrun are not run")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    deadline = float(os.environ.get("FASTCLIP_RUN_DEADLINE", 0) or 0)  # set by gpu_check.sh
    budget = min(args.budget, deadline - time.time() - 10) if deadline else args.budget
    from fastclip.kernels.launch_settings import GPU_SETTINGS, INTERPRETER_SETTINGS, use_settings

    if args.smoke:
        if os.environ.get("TRITON_INTERPRET") != "1":
            sys.exit("--smoke needs TRITON_INTERPRET=1 before triton is imported (running tune.py as a script sets it)")
        device, base = torch.device("cpu"), INTERPRETER_SETTINGS
        grid = [dataclasses.replace(base, chunk=c, block=b, num_warps=w, programs_per_sm=p)
                for c, b, w, p in SMOKE_CONFIGS]
        rounds = args.rounds or 1
    else:
        if not torch.cuda.is_available():
            print("tune.py: no CUDA device (use --smoke to exercise the sweep under the Triton interpreter)")
            return 2
        device, base = torch.device("cuda"), GPU_SETTINGS
        block_warps = [tuple(int(v) for v in bw.split("x")) for bw in args.block_warps.split(",") if bw.strip()]
        grid = settings_grid(args.chunks, block_warps, args.programs_per_sm, base)
        rounds = args.rounds or 10
    sets = tuple(s for s in args.sets.split(",") if s)
    dtypes = tuple(d for d in args.dtypes.split(",") if d)

    old_backend = os.environ.get("FASTCLIP_BACKEND")
    os.environ["FASTCLIP_BACKEND"] = "triton"
    old_settings = use_settings(None)
    doc = {"env": {}, "default": label(base), "max_programs": base.max_programs, "rounds": rounds,
           "configs": [label(s) for s in grid], "configs_run": [], "configs_not_run": [], "rows": [],
           "floors": {}, "elapsed_s": 0.0, "ranking": rank([], label(base))}
    try:
        timer = WallTimer() if args.smoke else CudaTimer(device)
        doc["env"] = environment(device, timer)
        states = make_states(sets, dtypes, device, args.smoke)
        floors = {}
        if device.type == "cuda":
            for st in states:
                floors[st.key[:2]] = copy_floor(st, timer, rounds)
        doc["floors"] = {f"{k[0]}-{k[1]}": v for k, v in floors.items()}
        took = {}  # longest config so far (s), by whether it compiled new kernels
        compiled = set()
        for settings in grid:
            fresh = (settings.chunk, settings.block, settings.num_warps) not in compiled
            elapsed = time.perf_counter() - t_start
            if doc["configs_run"] and elapsed + took.get(fresh, max(took.values(), default=0)) > budget:
                doc["configs_not_run"].append(label(settings))
                continue
            t0 = time.perf_counter()
            doc["rows"] += run_config(settings, states, timer, rounds, floors)
            took[fresh] = max(took.get(fresh, 0.0), time.perf_counter() - t0)
            compiled.add((settings.chunk, settings.block, settings.num_warps))
            doc["configs_run"].append(label(settings))
            doc["elapsed_s"] = time.perf_counter() - t_start
            doc["ranking"] = rank(doc["rows"], label(base))
            write(doc, args.out)
            print(f"[tune] {len(doc['configs_run']):3d}/{len(grid)} {label(settings):<18s} "
                  f"{time.perf_counter() - t0:5.1f} s  elapsed {doc['elapsed_s']:5.0f} s", flush=True)
    finally:
        use_settings(old_settings)
        import fastclip

        fastclip.clear_cache()
        if old_backend is None:
            os.environ.pop("FASTCLIP_BACKEND", None)
        else:
            os.environ["FASTCLIP_BACKEND"] = old_backend
    doc["elapsed_s"] = time.perf_counter() - t_start
    write(doc, args.out)
    for row in doc["rows"]:
        if not row.get("ok"):
            print(f"[tune] FAILED {row['config']} {row['set']}-{row['dtype']}-{row['regime']}:\n{row['error']}",
                  file=sys.stderr)
    print("\n".join(summary_lines(doc)))
    return 1 if doc["ranking"]["failed_configs"] else 0


if __name__ == "__main__":
    sys.exit(main())
