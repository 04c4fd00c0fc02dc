"""Reading benchmark results, and keeping them when a run is cut short.

pytest-benchmark writes its JSON only when the session ends, so a run killed by a timeout (the
GPU script's steps have hard limits) would lose everything.  When ``FASTCLIP_BENCH_PARTIAL``
names a file, every finished benchmark is also appended there as one JSON line (same fields as
pytest-benchmark's entries); ``load_results`` falls back to those lines when the JSON is missing.
"""
from __future__ import annotations

import json
import os


def append_partial(group: str, name: str, stats: dict, extra_info: dict) -> None:
    path = os.environ.get("FASTCLIP_BENCH_PARTIAL")
    if not path:
        return
    entry = {"group": group, "name": name, "fullname": name, "stats": stats, "extra_info": extra_info}
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry, default=float) + "\n")


def record_pytest(benchmark) -> float | None:
    """Append a finished pytest-benchmark fixture's result to the partial file; its median (s)."""
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    if stats is None:  # --benchmark-disable
        return None
    fields = {k: getattr(stats, k) for k in ("min", "max", "mean", "median", "stddev", "iqr", "q1", "q3", "rounds")}
    append_partial(benchmark.group, benchmark.name, fields, dict(benchmark.extra_info))
    return stats.median


def load_results(out_dir: str, what: str) -> dict | None:
    """``<what>.json`` in ``out_dir``, else a document rebuilt from ``<what>.partial.jsonl``."""
    path = os.path.join(out_dir, f"{what}.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    partial = os.path.join(out_dir, f"{what}.partial.jsonl")
    if os.path.exists(partial):
        with open(partial, encoding="utf-8") as f:
            entries = [json.loads(line) for line in f if line.strip()]
        return {"benchmarks": entries, "partial": True}
    return None
