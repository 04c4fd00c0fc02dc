"""The main job: benchmark fastclip against torch on whatever device is here, and report.

    python bench/run.py            # full run: sizes from the device, ~5 min on a 2-core CPU
    python bench/run.py --quick    # correctness only (tiny sizes, no timing), < 1 min; CI runs it
    python bench/run.py --busy     # the same with one core kept busy by a competing process

Steps, each a subprocess with its own timeout (a hang is logged, the run goes on):

1. setup (``bootstrap.py``): checks torch, makes this checkout's fastclip importable, installs
   pytest / pytest-benchmark / matplotlib only if missing (never torch);
2. ``clip``: ``bench/bench_clip.py`` under pytest-benchmark (or ``plain_runner.py`` when
   pytest-benchmark is missing): fastclip vs torch foreach / loop vs a copy of the same bytes,
   per gradient set x dtype x regime, every case checked against torch and float64;
3. ``overhead``: ``bench/bench_overhead.py``: host cost of a call for 150 / 2 000 / 20 000 tensors;
4. report (``report.py``): prints the table and writes, under ``bench/results/<device>/``:
   ``clip.json`` / ``overhead.json`` (pytest-benchmark JSON), ``table.md``, ``plot.png``,
   ``env.json``, ``logs/``, and pytest-benchmark's saved runs in ``history/``.  A rerun compares
   with the previous run (``--benchmark-compare`` in the log, a "vs prev" column in the table).

``--busy [N]`` starts N (default 1) bounded busy-loop processes (``busy.py``) for the duration
of the timings, labels the results as measured under load (table header, ``env.json``,
pytest-benchmark's ``machine_info``) and writes them to ``bench/results/<device>-busy/``; when
quiet results of the same device are there, the table also shows each side's busy/quiet slowdown.
The load runs in a session of its own (a second job); ``--busy-session shared`` puts it in the
timed process's session instead (data-loader workers), results in ``<device>-busy-shared/``.

``--quick`` runs both suites with ``--benchmark-disable`` at tiny sizes, then the plain runner
on one set, and builds a report in a temporary folder, so every part of the pipeline is
exercised.  Exit status: 0 when every step passed, 1 otherwise (missed performance targets are
reported, not failures).
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
sys.path.insert(0, BENCH)

import busy  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="Benchmark fastclip vs torch.nn.utils.clip_grad_norm_ and report.")
    ap.add_argument("--quick", action="store_true", help="correctness only: tiny sizes, no timing, temp output")
    ap.add_argument("--out", help="results folder (default: bench/results/<device>/)")
    ap.add_argument("--preset", choices=("tiny", "cpu", "gpu"), help="sizes (default: from the device)")
    ap.add_argument("--sets", help="comma list of gradient sets (default: all)")
    ap.add_argument("--dtypes", help="comma list of dtypes (default: fp32,bf16)")
    ap.add_argument("--runner", choices=("auto", "pytest", "plain"), default="auto",
                    help="pytest-benchmark, or the plain runner (default: pytest-benchmark if installed)")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's default)")
    ap.add_argument("--no-install", action="store_true", help="never call pip")
    ap.add_argument("--skip-clip", action="store_true")
    ap.add_argument("--skip-overhead", action="store_true")
    ap.add_argument("--timeout-clip", type=float, help="seconds (default: 240 on GPU, 1800 on CPU)")
    ap.add_argument("--timeout-overhead", type=float, help="seconds (default: 90 on GPU, 300 on CPU)")
    ap.add_argument("--note", default="", help="a line under the table header, e.g. 'noisy machine'")
    ap.add_argument("--busy", type=int, nargs="?", const=1, default=0, metavar="N",
                    help="keep N cores busy (default 1) with competing busy-loop processes during the timings; "
                         "results go to bench/results/<device>-busy/")
    ap.add_argument("--busy-session", choices=busy.SESSIONS, default="own",
                    help="where the busy processes run: a session of their own, like a second job (default), or "
                         "the timed process's, like data-loader workers (results in <device>-busy-shared/)")
    # FASTCLIP_RUN_DEADLINE (epoch seconds, set by gpu_check.sh) shortens the step timeouts to fit
    return ap.parse_args(argv)


# --------------------------------------------------------------------------- subprocess steps
def run_step(name: str, cmd: list[str], env: dict, log_path: str, timeout: float) -> int:
    """Run ``cmd``, log all output, echo progress and failures; kill its process group on timeout."""
    print(f"[run] {name}: {' '.join(os.path.relpath(c, REPO) if c.startswith(REPO) else c for c in cmd)}", flush=True)
    t0 = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        # a process group of its own (killed as one on timeout), in this session: a --busy-session
        # shared load started here must share the timed process's session
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", bufsize=1,
                                preexec_fn=os.setpgrp if hasattr(os, "setpgrp") else None)
        tail: list[str] = []

        def pump():
            for line in proc.stdout:
                log.write(line)
                log.flush()
                tail.append(line)
                del tail[:-60]
                if "[bench]" in line:
                    print("  " + line[line.index("[bench]"):].rstrip(), flush=True)
                elif line.startswith(("FAILED", "ERROR")) or " passed" in line or " failed" in line:
                    print("  " + line.rstrip(), flush=True)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = 124
            log.write(f"\n[run] {name}: TIMEOUT after {timeout:.0f} s, killed\n")
        reader.join(timeout=10)
    took = time.perf_counter() - t0
    if rc != 0:
        print(f"[run] {name}: FAILED (exit {rc}{', timeout' if rc == 124 else ''}) after {took:.0f} s; "
              f"log {log_path}; last lines:", flush=True)
        print("".join("    " + t for t in tail[-25:]), flush=True)
    else:
        print(f"[run] {name}: ok in {took:.0f} s", flush=True)
    return rc


def pytest_cmd(test_file: str, out: str, what: str, quick: bool) -> list[str]:
    cmd = [sys.executable, "-m", "pytest", os.path.join(BENCH, test_file), "-q", "-rfE", "--tb=short",
           "-p", "no:cacheprovider", "--rootdir", REPO]
    if quick:
        return cmd + ["--benchmark-disable"]
    storage = os.path.join(out, "history", what)
    cmd += ["--benchmark-json", os.path.join(out, f"{what}.json"), f"--benchmark-storage=file://{storage}",
            "--benchmark-autosave", "--benchmark-columns=min,median,iqr,rounds", "--benchmark-sort=fullname",
            "--benchmark-group-by=group"]
    if glob.glob(os.path.join(storage, "*", "*.json")):
        cmd.append("--benchmark-compare")  # against the latest saved run: regressions show in the log
    return cmd


def plain_cmd(what: str, out: str | None, quick: bool) -> list[str]:
    cmd = [sys.executable, os.path.join(BENCH, "plain_runner.py"), what]
    if out:
        cmd += ["--json", os.path.join(out, f"{what}.json")]
    return cmd + (["--quick"] if quick else [])


def run_steps(steps: list, args, runner: str, env: dict, out: str, deadline: float | None) -> list[str]:
    """Run the benchmark steps (name, test file, timeout); returns the names of those that failed."""
    failed = []
    for what, test_file, timeout in steps:
        if deadline:  # leave ~20 s for the report before the caller's hard limit
            timeout = max(10.0, min(timeout, deadline - time.time() - 20))
        partial = os.path.join(out, f"{what}.partial.jsonl")
        for stale in (partial, os.path.join(out, f"{what}.json")):
            if os.path.exists(stale) and not args.quick:
                os.remove(stale)
        env["FASTCLIP_BENCH_PARTIAL"] = partial
        cmd = pytest_cmd(test_file, out, what, args.quick) if runner == "pytest" else plain_cmd(what, out, args.quick)
        if run_step(what, cmd, env, os.path.join(out, "logs", f"{what}.log"), timeout) != 0:
            failed.append(what)
        if os.path.exists(os.path.join(out, f"{what}.json")) and os.path.exists(partial):
            os.remove(partial)  # the complete JSON is there
    return failed


# --------------------------------------------------------------------------- main
def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    os.environ[busy.SESSION_ENV] = args.busy_session  # busy.start / describe read it, as the suites do
    if args.threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(args.threads)

    import bootstrap

    status = bootstrap.ensure(allow_install=not args.no_install and not args.quick)
    if status["pythonpath"]:
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [status["pythonpath"], os.environ.get("PYTHONPATH")]))
        sys.path.insert(0, status["pythonpath"])

    import torch

    import device_info

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    quiet_dir = os.path.join(BENCH, "results", device_info.device_slug(device))
    out = os.path.abspath(args.out) if args.out else (
        tempfile.mkdtemp(prefix="fastclip-bench-quick-") if args.quick
        else quiet_dir + ("-busy" if args.busy_session == "own" else "-busy-shared") if args.busy else quiet_dir)
    os.makedirs(os.path.join(out, "logs"), exist_ok=True)
    import grad_sets

    preset = "tiny" if args.quick else (args.preset or grad_sets.default_preset(device))
    runner = args.runner
    if runner == "auto":
        runner = "pytest" if status["pytest_benchmark"] else "plain"
    if runner == "pytest" and not status["pytest_benchmark"]:
        sys.exit("--runner pytest: pytest-benchmark is not installed")
    print(f"[run] device: {device_info.device_name(device)}; preset {preset}; runner {runner}; results {out}",
          flush=True)
    print(f"[run] load: {busy.describe(args.busy)}", flush=True)

    import json

    env_info = device_info.environment(device)
    env_info.update({"preset": preset, "runner": runner, "quick": args.quick,
                     "busy_processes": args.busy, "load": busy.describe(args.busy)})
    with open(os.path.join(out, "env.json"), "w", encoding="utf-8") as f:
        json.dump(env_info, f, indent=1)

    env = dict(os.environ, FASTCLIP_BENCH_PRESET=preset, PYTHONUNBUFFERED="1")
    env.pop("FASTCLIP_BACKEND", None)  # the benches choose the backend per device themselves
    if cuda:
        env.pop("TRITON_INTERPRET", None)
    else:
        env["TRITON_INTERPRET"] = "1"  # host-overhead bench routes through the Triton backend on CPU
    # the suites label their JSON with the load; the one started here is theirs (they start none)
    env[busy.ENV] = env[busy.RUNNING_ENV] = str(args.busy)
    for var, val in (("FASTCLIP_BENCH_SETS", args.sets), ("FASTCLIP_BENCH_DTYPES", args.dtypes)):
        if val:
            env[var] = val

    previous = os.path.join(out, "previous-clip.json")
    if not args.quick and os.path.exists(os.path.join(out, "clip.json")) and not args.skip_clip:
        shutil.copyfile(os.path.join(out, "clip.json"), previous)
    prev_path = previous if os.path.exists(previous) and not args.quick else None

    t_clip = args.timeout_clip or (120 if args.quick else 240 if cuda else 1800)
    t_over = args.timeout_overhead or (120 if args.quick else 90 if cuda else 300)
    failed = []
    steps = []
    if not args.skip_clip:
        steps.append(("clip", "bench_clip.py", t_clip))
    if not args.skip_overhead:
        steps.append(("overhead", "bench_overhead.py", t_over))
    deadline = float(os.environ.get("FASTCLIP_RUN_DEADLINE", 0)) or None  # set by gpu_check.sh
    with busy.load(args.busy, seconds=sum(t for *_, t in steps) + 60):  # ends by itself even if we are killed
        failed += run_steps(steps, args, runner, env, out, deadline)

    if args.quick:
        # the plain runner and the report on real (1-round) numbers: every part of the pipeline runs
        qenv = dict(env, FASTCLIP_BENCH_SETS=args.sets or "huge")
        for what in ("clip", "overhead"):
            if run_step(f"plain-{what}", plain_cmd(what, out, quick=True), qenv,
                        os.path.join(out, "logs", f"plain-{what}.log"), 120) != 0:
                failed.append(f"plain-{what}")

    import report

    note = args.note
    if args.quick:
        note = ("QUICK MODE: correctness only, one round per case; these times are "
                "not measurements. " + note).strip()
    try:
        quiet_ref = os.path.join(quiet_dir, "clip.json")
        quiet_ref = quiet_ref if args.busy and not args.quick and os.path.abspath(out) != quiet_dir else None
        text, markdown, missed = report.build(out, prev_path, note, plot=status["matplotlib"], quiet_path=quiet_ref)
        with open(os.path.join(out, "table.md"), "w", encoding="utf-8") as f:
            f.write(markdown + "\n")
        print("\n" + text + "\n")
    except Exception as exc:  # a report bug must not hide the measurements
        import traceback

        traceback.print_exc()
        failed.append(f"report ({exc.__class__.__name__})")
    print(f"[run] results in {out} (table.md, plot.png, clip.json, overhead.json, logs/); "
          f"{time.perf_counter() - t_start:.0f} s in all", flush=True)
    if failed:
        print(f"[run] FAILED steps: {', '.join(failed)}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
