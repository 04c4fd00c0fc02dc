"""The same benchmarks without pytest or pytest-benchmark (e.g. a GPU box where they are missing).

Runs the cases of ``cases.py`` (``clip``) or ``overhead.py`` (``overhead``) with the same timing
(``timing.py``) and checks, and writes a JSON file in pytest-benchmark's layout (``benchmarks``
with ``group``, ``name``, ``stats`` in seconds, ``extra_info``), rewritten after every case so an
interrupted run keeps what it measured.  A failing case is recorded under ``failures`` and the
run goes on (a case that can't run here, under ``skipped`` with the reason); the exit status is
1 if any case failed.

    python bench/plain_runner.py clip --json out/clip.json [--quick]
    python bench/plain_runner.py overhead --json out/overhead.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
import traceback

import torch

if not torch.cuda.is_available():
    # as bench/conftest.py: lets the overhead measure route through the Triton backend on CPU
    os.environ.setdefault("TRITON_INTERPRET", "1")

import cases  # noqa: E402
import device_info  # noqa: E402
import grad_sets  # noqa: E402
import overhead  # noqa: E402
import timing  # noqa: E402


class Recorder:
    """Collects results and writes them as pytest-benchmark-shaped JSON after each case."""

    def __init__(self, path: str | None, total: int):
        self.path = path
        self.total = total
        self.t0 = time.perf_counter()
        self.doc = {
            "machine_info": device_info.environment(),
            "commit_info": {},
            "datetime": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "version": "plain_runner",
            "benchmarks": [],
            "failures": [],
            "skipped": [],
        }

    def add(self, group: str, name: str, times: list[float] | None, extra: dict, iterations: int = 1,
            error: str | None = None) -> None:
        if error is None:
            self.doc["benchmarks"].append({"group": group, "name": name, "fullname": name, "params": None,
                                           "stats": timing.summarize(times, iterations), "extra_info": extra})
        else:
            self.doc["failures"].append({"group": group, "name": name, "error": error})
        done = len(self.doc["benchmarks"]) + len(self.doc["failures"])
        elapsed = time.perf_counter() - self.t0
        status = f"{timing.summarize(times)['median'] * 1e3:10.3f} ms" if error is None else "       FAILED"
        print(f"[bench] {done:4d}/{self.total}  {name:<40s} {status}   elapsed {elapsed:6.0f} s  "
              f"eta {elapsed / done * (self.total - done):5.0f} s", flush=True)
        if error is not None:
            print(error, file=sys.stderr, flush=True)
        self.save()

    def save(self) -> None:
        if self.path:
            tmp = self.path + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(self.doc, f, indent=1)
            os.replace(tmp, self.path)


def run_clip(rec: Recorder, device: torch.device, quick: bool) -> None:
    preset = grad_sets.default_preset(device)
    for case in cases.all_cases():
        reason = cases.skip_reason(case, device)
        if reason:
            rec.total -= 1
            rec.doc["skipped"].append({"name": case.id, "reason": reason})
            print(f"[bench] skipped {case.id}: {reason}", flush=True)
            continue
        box = {}

        def pedantic(target, setup=None, rounds=1, warmup_rounds=0):
            result, box["times"] = timing.plain_pedantic(target, setup, rounds, warmup_rounds)
            return result

        try:
            extra = cases.run_case(case, pedantic, device, preset, measure=not quick)
            rec.add(case.group, case.id, box["times"], extra)
        except Exception:
            rec.add(case.group, case.id, None, {}, error=traceback.format_exc(limit=3))
    cases.release_state()


def run_overhead(rec: Recorder, device: torch.device, quick: bool) -> None:
    for n in overhead.COUNTS:
        params = overhead.make_params(n, device)
        for prov in overhead.providers(device):
            name = f"overhead-{n}-{prov}"
            try:
                with overhead.host_only(device) as stubs:
                    fn = overhead.call(prov, params)
                    rounds, iters = (1, 1) if quick else overhead.loop_size(fn, device)
                    times = timing.plain_loop(fn, rounds, iters)
                    if prov == "fastclip":
                        overhead.check_route(params, stubs)
                timing.sync(device)
                rec.add(f"overhead-{n}", name, times, overhead.describe(prov, n, device), iterations=iters)
            except Exception:
                rec.add(f"overhead-{n}", name, None, {}, error=traceback.format_exc(limit=3))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("clip", "overhead"))
    ap.add_argument("--json", help="where to write the results")
    ap.add_argument("--quick", action="store_true", help="one round per case: checks only")
    args = ap.parse_args(argv)
    device = device_info.bench_device()
    if args.what == "clip":
        rec = Recorder(args.json, len(cases.all_cases()))
        run_clip(rec, device, args.quick)
    else:
        rec = Recorder(args.json, len(overhead.COUNTS) * len(overhead.providers(device)))
        run_overhead(rec, device, args.quick)
    rec.save()
    if rec.doc["failures"]:
        print(f"{len(rec.doc['failures'])} case(s) FAILED: " + ", ".join(f["name"] for f in rec.doc["failures"]))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
