"""Turn benchmark JSON into the report: a compact table, targets, comparison with the last run.

Reads pytest-benchmark JSON (or the plain runner's, same layout): ``clip.json`` and
``overhead.json`` in a results folder.  Per (set, dtype, regime) it derives, from the medians:

* speedup    = torch time / fastclip time (torch = its default foreach path where the device
               has one, else the per-tensor loop);
* vs compiled = torch.compile(clip_grad_norm_) time / fastclip time (compiled once, outside the
               timing; its compile times get a table of their own);
* GB/s       = bytes a clip must move / fastclip time; 3N when clipping (read for the norm,
               read + write to scale), N when no clipping is needed (N = gradient bytes);
* % of floor = that bandwidth / the copy bandwidth measured in the same group (2N / time of a
               copy of N bytes): 100 % means as fast as the bytes allow;
* dev vs torch = the larger of |norm - torch norm| / torch norm and the largest relative
               difference of the sampled output values (torch clipped the same gradients once);
* norm err   = relative error of fastclip's / torch's norm vs a float64 reference;
* busy/quiet = (``--busy`` runs, when quiet results of the same device exist) each side's time
               under the competing load / its time on the quiet run.

    python bench/report.py bench/results/<device>            # rewrite table.md (+ plot.png)
    python bench/report.py DIR --previous OLD/clip.json        # with a "vs prev" column
    python bench/report.py DIR-busy --quiet DIR/clip.json      # a busy run next to the quiet one
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import results_io

KEY_ORDER = ("gpt2", "llama", "resnet50", "vit_b16", "tiny2000", "huge")


def load(path: str) -> dict | None:
    if not path or not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def medians(doc: dict | None) -> dict:
    """name -> (median seconds, extra_info) of every benchmark in a JSON document."""
    out = {}
    for b in (doc or {}).get("benchmarks", []):
        out[b["name"]] = (b["stats"]["median"], b.get("extra_info", {}))
    return out


def clip_rows(doc: dict, previous: dict | None = None, quiet: dict | None = None) -> list[dict]:
    """One row per (set, dtype, regime) with times (s), ratios, bandwidths and deviations; with
    ``quiet`` (the same cases measured without load) also each side's slowdown under load."""
    by = medians(doc)
    prev = medians(previous)
    calm = medians(quiet)
    groups = {}
    for name, (t, extra) in by.items():
        if "provider" not in extra:
            continue
        g = groups.setdefault((extra["set"], extra["dtype"], extra["regime"]), {})
        g[extra["provider"]] = (t, extra, prev.get(name, (None, None))[0], calm.get(name, (None, None))[0])
    rows = []
    for (set_name, dtype, regime), g in groups.items():
        fc = g.get("fastclip")
        torch_p = g.get("torch-foreach") or g.get("torch-loop")
        any_extra = next(iter(g.values()))[1]
        n_bytes = any_extra["bytes"]
        moved = (3 if regime == "clip" else 1) * n_bytes
        row = {
            "set": set_name, "dtype": dtype, "regime": regime, "n_tensors": any_extra["n_tensors"],
            "numel": any_extra["numel"], "bytes": n_bytes, "preset": any_extra.get("preset", ""),
            "torch_foreach": g.get("torch-foreach", (None,))[0], "torch_loop": g.get("torch-loop", (None,))[0],
            "fastclip": fc[0] if fc else None, "floor_copy": g.get("floor-copy", (None,))[0],
            "torch": torch_p[0] if torch_p else None,
            "torch_name": "foreach" if g.get("torch-foreach") else "loop",
            "torch_compile": g.get("torch-compile", (None,))[0],
        }
        row["speedup"] = row["torch"] / row["fastclip"] if row["torch"] and row["fastclip"] else None
        row["speedup_compiled"] = (row["torch_compile"] / row["fastclip"]
                                   if row["torch_compile"] and row["fastclip"] else None)
        if g.get("torch-compile"):
            row["compile"] = {k: v for k, v in g["torch-compile"][1].items() if k.startswith("compile")}
        row["gbs"] = moved / row["fastclip"] / 1e9 if row["fastclip"] else None
        row["torch_gbs"] = moved / row["torch"] / 1e9 if row["torch"] else None
        row["copy_gbs"] = 2 * n_bytes / row["floor_copy"] / 1e9 if row["floor_copy"] else None
        row["pct_floor"] = 100 * row["gbs"] / row["copy_gbs"] if row["gbs"] and row["copy_gbs"] else None
        row["torch_pct_floor"] = (100 * row["torch_gbs"] / row["copy_gbs"]
                                  if row["torch_gbs"] and row["copy_gbs"] else None)
        if fc:
            e = fc[1]
            row["dev_vs_torch"] = max(e.get("dev_norm_vs_torch", 0.0), e.get("dev_values_vs_torch", 0.0))
            row["err_fastclip"] = e.get("norm_err_fp64")
            row["backend"] = e.get("backend", "")
            row["gpu_ms"] = e.get("gpu_ms_median")
            row["prev_fastclip"] = fc[2]
        if torch_p:
            row["err_torch"] = torch_p[1].get("norm_err_fp64")
        if fc and torch_p and fc[3] and torch_p[3]:
            row["fastclip_slowdown"] = fc[0] / fc[3]
            row["torch_slowdown"] = torch_p[0] / torch_p[3]
        rows.append(row)
    order = {k: i for i, k in enumerate(KEY_ORDER)}
    rows.sort(key=lambda r: (order.get(r["set"], 99), r["dtype"] != "fp32", r["regime"] != "clip"))
    return rows


def overhead_rows(doc: dict | None) -> list[dict]:
    """Per tensor count: each provider's median (s), and how fastclip read the keys."""
    rows = {}
    for name, (t, extra) in medians(doc).items():
        if "n_tensors" in extra and "provider" in extra:
            row = rows.setdefault(extra["n_tensors"], {"n_tensors": extra["n_tensors"]})
            row[extra["provider"]] = t
            if extra["provider"] == "fastclip" and "key" in extra:
                row["key"] = extra["key"]
    return [rows[k] for k in sorted(rows)]


# --------------------------------------------------------------------------- targets
def busy_targets(rows: list[dict]) -> list[tuple]:
    """Issue 9, under a competing load: every case >= 1.0x torch, and fastclip slowed down by at
    most 1.5x torch's own slowdown (when the quiet run of the same cases is known)."""
    out = []
    for r in rows:
        case = f"{r['set']} {r['dtype']} {r['regime']}"
        if r["speedup"]:
            out.append((f"busy: {case}: speedup vs torch", f"{r['speedup']:.2f}x", ">= 1.0x", r["speedup"] >= 1.0))
        if r.get("fastclip_slowdown"):
            rel = r["fastclip_slowdown"] / r["torch_slowdown"]
            out.append((f"busy: {case}: fastclip slowdown / torch slowdown", f"{rel:.2f}", "<= 1.5", rel <= 1.5))
    return out


def targets(rows: list[dict], ov: list[dict], device_type: str, preset: str, busy: bool = False) -> list[tuple]:
    """(what, measured, goal, ok) for the issue's numbers that this run measured."""
    out = busy_targets(rows) if busy else []

    def find(set_name, dtype, regime):
        return next((r for r in rows if (r["set"], r["dtype"], r["regime"]) == (set_name, dtype, regime)), None)

    def ratio(set_name, dtype, regime, goal):
        r = find(set_name, dtype, regime)
        if r and r["speedup"]:
            out.append((f"{set_name} {dtype} {regime}: speedup vs torch", f"{r['speedup']:.2f}x",
                        f">= {goal}x", r["speedup"] >= goal))

    if device_type == "cpu" and preset == "cpu" and not busy:  # issue 2, numbers to reach on the 2-core CPU
        for dt in ("fp32", "bf16"):
            ratio("gpt2", dt, "noclip", 1.8)
            ratio("gpt2", dt, "clip", 0.95)
        ratio("tiny2000", "fp32", "noclip", 3.0)
        ratio("tiny2000", "fp32", "clip", 1.5)
        for o in ov:
            if o["n_tensors"] == 2000 and o.get("fastclip"):
                t = o["fastclip"] * 1e3
                out.append(("host cost of a call, 2000 tensors, cached plan", f"{t:.3f} ms", "<= 0.3 ms", t <= 0.3))
    if device_type == "cuda":  # issue 3, GPU numbers
        for r in rows:
            if r["regime"] == "clip" and r["numel"] >= 1e9 and r["pct_floor"]:
                out.append((f"{r['set']} {r['dtype']} clip ({r['numel'] / 1e9:.2f} B elements): % of copy bandwidth",
                            f"{r['pct_floor']:.0f} %", ">= 90 %", r["pct_floor"] >= 90))
            if r["regime"] == "noclip" and r["set"] != "tiny2000" and r["speedup"]:
                out.append((f"{r['set']} {r['dtype']} noclip: speedup vs torch", f"{r['speedup']:.2f}x",
                            ">= 2.5x", r["speedup"] >= 2.5))
        for dt in ("fp32", "bf16"):
            for regime in ("clip", "noclip"):
                ratio("tiny2000", dt, regime, 5.0)
    for r in rows:
        if r.get("err_fastclip") is not None and r["err_fastclip"] > 2e-5:
            out.append((f"{r['set']} {r['dtype']} {r['regime']}: norm error vs fp64", f"{r['err_fastclip']:.1e}",
                        "<= 2e-5", False))
    return out


# --------------------------------------------------------------------------- formatting
def _ms(t):
    return "" if t is None else (f"{t * 1e3:.3f}" if t < 0.01 else f"{t * 1e3:.2f}" if t < 1 else f"{t * 1e3:.0f}")


def _f(x, fmt):
    return "" if x is None else format(x, fmt)


def _delta(now, prev):
    return "" if not now or not prev else f"{100 * (now / prev - 1):+.0f}%"


CLIP_COLUMNS = ("set", "tensors", "M elems", "dtype", "regime", "torch ms", "torch-loop ms", "compiled ms",
                "fastclip ms", "speedup", "vs compiled", "GB/s", "% floor", "torch % floor", "dev vs torch",
                "norm err fc/torch", "vs prev")


SLOWDOWN_COLUMNS = ("fastclip busy/quiet", "torch busy/quiet")


def clip_cells(r: dict, slowdowns: bool = False) -> list[str]:
    cells = [r["set"], str(r["n_tensors"]), f"{r['numel'] / 1e6:.1f}", r["dtype"], r["regime"],
             _ms(r["torch"]), _ms(r["torch_loop"]), _ms(r.get("torch_compile")), _ms(r["fastclip"]),
             _f(r["speedup"], ".2f"), _f(r.get("speedup_compiled"), ".2f"), _f(r["gbs"], ".1f"),
             _f(r["pct_floor"], ".0f"), _f(r["torch_pct_floor"], ".0f"),
             _f(r.get("dev_vs_torch"), ".1e"),
             f"{_f(r.get('err_fastclip'), '.0e')} / {_f(r.get('err_torch'), '.0e')}",
             _delta(r["fastclip"], r.get("prev_fastclip"))]
    if slowdowns:
        cells += [_f(r.get("fastclip_slowdown"), ".2f"), _f(r.get("torch_slowdown"), ".2f")]
    return cells


COMPILE_COLUMNS = ("set", "dtype", "mode", "compile s", "graphs", "cache hits")


def compile_cells(rows: list[dict]) -> list[list[str]]:
    """One line per (set, dtype) that has a torch.compile peer: what its one compile cost."""
    seen, out = set(), []
    for r in rows:
        c = r.get("compile")
        if c and (r["set"], r["dtype"]) not in seen:
            seen.add((r["set"], r["dtype"]))
            out.append([r["set"], r["dtype"], str(c.get("compile_mode", "")), _f(c.get("compile_s"), ".1f"),
                        str(c.get("compile_graphs", "")), str(c.get("compile_cache_hits", ""))])
    return out



OVERHEAD_COLUMNS = ("tensors", "fastclip µs/call", "of which grads+route µs", "fastclip ns/tensor", "keys read by",
                    "torch µs/call (1-elem)", "torch / fastclip")


def overhead_cells(o: dict) -> list[str]:
    fc = o.get("fastclip")
    th = o.get("torch") or o.get("torch-foreach")
    return [str(o["n_tensors"]), _f(fc and fc * 1e6, ".1f"), _f(o.get("route") and o["route"] * 1e6, ".1f"),
            _f(fc and fc * 1e9 / o["n_tensors"], ".0f"), o.get("key", ""),
            _f(th and th * 1e6, ".1f"), _f(fc and th and th / fc, ".1f")]


def markdown_table(columns, rows) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def text_table(columns, rows) -> str:
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(columns)]
    fmt = "  ".join("{:<%d}" % w for w in widths)
    return "\n".join([fmt.format(*columns), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in rows])


def header(env: dict, note: str = "") -> str:
    parts = [f"**{env.get('device', '?')}**", f"{env.get('date', '')}", f"python {env.get('python', '')}",
             f"torch {env.get('torch', '')}", f"triton {env.get('triton', '') or 'n/a'}"]
    if env.get("cuda_runtime"):
        parts.append(f"CUDA {env['cuda_runtime']}, driver {env.get('driver', '')}")
    else:
        parts.append(f"{env.get('torch_threads', '?')} torch threads")
    parts.append(f"fastclip {env.get('git_commit', '')}{' (dirty tree)' if env.get('git_dirty') else ''}")
    if "native_helper" in env:
        parts.append(f"native helper: {env['native_helper'] or 'not built'}")
    if env.get("busy_processes"):
        parts.append(f"**BUSY**: {env.get('load', '')} (`bench/run.py --busy`)")
    elif "busy_processes" in env:
        parts.append("quiet: no load started by the benchmark")
    return " · ".join(parts) + (f"\n\n{note}" if note else "")


def build(out_dir: str, previous_path: str | None = None, note: str = "", plot: bool = True,
          quiet_path: str | None = None) -> tuple[str, str, int]:
    """(console text, markdown, number of missed targets) for the results in ``out_dir``;
    ``quiet_path``: the clip JSON of a quiet run, for a busy run's slowdown columns."""
    clip = results_io.load_results(out_dir, "clip")
    ov_doc = results_io.load_results(out_dir, "overhead")
    env = load(os.path.join(out_dir, "env.json")) or (clip or {}).get("machine_info", {})
    rows = clip_rows(clip or {}, load(previous_path), load(quiet_path))
    ov = overhead_rows(ov_doc)
    device_type = env.get("device_type") or ("cuda" if env.get("cuda_runtime") else "cpu")
    preset = rows[0]["preset"] if rows else ""
    tg = targets(rows, ov, device_type, preset, busy=bool(env.get("busy_processes")) and not env.get("quick"))
    slowdowns = any(r.get("fastclip_slowdown") for r in rows)
    columns = CLIP_COLUMNS + (SLOWDOWN_COLUMNS if slowdowns else ())
    clip_body = [clip_cells(r, slowdowns) for r in rows]
    ov_body = [overhead_cells(o) for o in ov]
    comp_body = compile_cells(rows)
    tg_body = [[w, m, g, "yes" if ok else "**NO**"] for w, m, g, ok in tg]
    tg_text = [[w, m, g, "yes" if ok else "NO"] for w, m, g, ok in tg]
    failures = [f["name"] for d in (clip, ov_doc) if d for f in d.get("failures", [])]

    md = [f"### fastclip vs torch.nn.utils.clip_grad_norm_ ({preset or '?'} sizes)", "", header(env, note), "",
          markdown_table(columns, clip_body), "",
          "Times are medians of synchronized calls. GB/s = bytes a clip must move (3N clipping, N not) / "
          "time; % floor = that / copy bandwidth measured in the same run (2N / copy time). "
          "dev vs torch: relative deviation of norm and sampled values from torch's result; "
          "norm err: relative error vs a float64 reference. compiled: torch.compile(clip_grad_norm_), "
          "compiled before timing; vs compiled = its time / fastclip's.", ""]
    if comp_body:
        md += ["#### torch.compile: the one compile per (set, dtype), first call", "",
               markdown_table(COMPILE_COLUMNS, comp_body), ""]
    if ov_body:
        md += ["#### Host overhead per call (kernel execution excluded)", "", markdown_table(OVERHEAD_COLUMNS, ov_body), ""]
    if tg_body:
        md += ["#### Targets", "", markdown_table(("what", "measured", "goal", "met"), tg_body), ""]
    if failures:
        md += [f"**Failed cases:** {', '.join(failures)}", ""]
    partial = [w for w, d in (("clip", clip), ("overhead", ov_doc)) if d and d.get("partial")]
    if partial:
        note_line = f"**Incomplete run** ({', '.join(partial)}: cut short, results of the cases that finished)."
        md.insert(4, note_line + "\n")
    if plot and rows:
        try:
            import plot as plot_mod

            load_label = f" · busy: {env['busy_processes']} competing process(es)" if env.get("busy_processes") else ""
            title = env.get("device", "") + load_label + (f"\n{note[:110]}" if note else "")
            path = plot_mod.plot(rows, os.path.join(out_dir, "plot.png"), title=title)
            md += [f"![speedup and bandwidth]({os.path.basename(path)})", ""]
        except ImportError as exc:
            md += [f"(no plot: {exc})", ""]
    markdown = "\n".join(md)
    text = [header(env, note).replace("**", ""), "", text_table(columns, clip_body)]
    if comp_body:
        text += ["", "torch.compile, first call (compile):", text_table(COMPILE_COLUMNS, comp_body)]
    if ov_body:
        text += ["", "host overhead per call:", text_table(OVERHEAD_COLUMNS, ov_body)]
    if tg_body:
        text += ["", "targets:", text_table(("what", "measured", "goal", "met"), tg_text)]
    if failures:
        text += ["", "FAILED cases: " + ", ".join(failures)]
    missed = sum(1 for *_, ok in tg if not ok)
    return "\n".join(text), markdown, missed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Write table.md and plot.png for a results folder.")
    ap.add_argument("out_dir")
    ap.add_argument("--previous", help="an earlier clip.json to compare with")
    ap.add_argument("--note", default="", help="a line printed under the header (e.g. 'noisy machine')")
    ap.add_argument("--quiet", help="clip.json of a quiet run, next to a --busy run (slowdown columns)")
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)
    text, markdown, _ = build(args.out_dir, args.previous, args.note, plot=not args.no_plot, quiet_path=args.quiet)
    with open(os.path.join(args.out_dir, "table.md"), "w", encoding="utf-8") as f:
        f.write(markdown + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
