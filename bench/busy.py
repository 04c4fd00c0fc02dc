"""A bounded competing load: processes that keep CPU cores busy beside the timings (``--busy``).

Training machines are rarely quiet (data-loader workers, a second job, a notebook), and a CPU
path made of many short parallel regions can collapse when one core is taken: every region waits
for the thread whose core another process holds.  ``bench/run.py --busy`` (or
``FASTCLIP_BENCH_BUSY=N`` for the pytest-benchmark suite alone) measures that case.

Each busy process is a pure-Python spin loop that stops by itself at a deadline, so it can never
outlive the benchmark even if the benchmark is killed; it is also terminated when the load ends.

Where it runs (``FASTCLIP_BENCH_BUSY_SESSION``, ``bench/run.py --busy-session``):

* ``own`` (default): in a session of its own, as a second job or a notebook started from another
  terminal does.  That matters on Linux, where autogroup scheduling shares the CPU between
  sessions before threads: the timed process's thread on the busy core then gets a third of it,
  not half;
* ``shared``: in the timed process's session, as its data-loader workers are.  Milder for every
  provider: on the 2-core EPYC VM one 33.6 M-element bf16 clip took fastclip 11.1-12.2 ms and
  torch 17.3-17.9 ms there, against 18.8-21.1 ms and 23.8-24.0 ms with the load in its own session.

    with busy.load(1, seconds=600):   # one core kept busy for at most 10 minutes
        ...
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys

#: the environment variable that asks the benchmark suite for a busy load (number of processes)
ENV = "FASTCLIP_BENCH_BUSY"
#: set while a load started by bench/run.py is running, so the suite does not start a second one
RUNNING_ENV = "FASTCLIP_BENCH_BUSY_RUNNING"
#: where the busy processes run: "own" (a session of their own) or "shared" (the timed process's)
SESSION_ENV = "FASTCLIP_BENCH_BUSY_SESSION"
SESSIONS = ("own", "shared")

_LOOP = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"


def requested() -> int:
    """Busy processes asked for through ``FASTCLIP_BENCH_BUSY`` (0 when unset)."""
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return 0
    if not raw.isdigit():
        raise ValueError(f"{ENV} must be a number of busy processes (e.g. 1), got {raw!r}")
    return int(raw)


def session() -> str:
    """Where busy processes run, from ``FASTCLIP_BENCH_BUSY_SESSION`` (default "own")."""
    where = os.environ.get(SESSION_ENV, "").strip() or "own"
    if where not in SESSIONS:
        raise ValueError(f"{SESSION_ENV} must be one of {SESSIONS}, got {where!r}")
    return where


def describe(n: int) -> str:
    """The label that goes into table headers and JSON metadata."""
    if n <= 0:
        return "quiet (no competing load started by the benchmark)"
    cores = os.cpu_count() or 1
    where = "of another session" if session() == "own" else "in the timed process's session"
    return (f"{n} competing busy-loop process{'es' if n > 1 else ''} {where} beside the timings "
            f"({n} of {cores} cores kept busy)")


def start(n: int, seconds: float) -> list[subprocess.Popen]:
    """Start ``n`` spin-loop processes that each end by themselves after ``seconds``, in the
    session :func:`session` names (a new one, or this process's)."""
    code = _LOOP.format(seconds=float(seconds))
    own = session() == "own"
    return [subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=own) for _ in range(n)]


def stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def load(n: int, seconds: float):
    """``n`` busy processes for the duration of the block (at most ``seconds``); none if n <= 0."""
    procs = start(n, seconds) if n > 0 else []
    old = os.environ.get(RUNNING_ENV)
    if procs:
        os.environ[RUNNING_ENV] = str(n)
    try:
        yield procs
    finally:
        stop(procs)
        if procs:
            if old is None:
                os.environ.pop(RUNNING_ENV, None)
            else:
                os.environ[RUNNING_ENV] = old
