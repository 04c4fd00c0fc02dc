"""The benchmark's busy mode (``bench/run.py --busy``): a bounded competing load, and results that say so.

The load must never outlive the benchmark (each busy process ends by itself at its deadline and is
terminated when the load ends); a busy run's table is labelled as such and checked against the
busy targets (every case >= 1.0x torch, fastclip's slowdown <= 1.5x torch's own).
"""
import os
import sys
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))

import busy  # noqa: E402
import report  # noqa: E402


def test_busy_processes_spin_until_the_load_ends():
    with busy.load(1, seconds=60) as procs:
        assert len(procs) == 1
        time.sleep(0.3)
        assert procs[0].poll() is None  # still spinning
        assert os.environ[busy.RUNNING_ENV] == "1"
    assert procs[0].poll() is not None
    assert busy.RUNNING_ENV not in os.environ


def test_a_busy_process_ends_by_itself_at_its_deadline():
    (proc,) = busy.start(1, seconds=0.2)
    try:
        assert proc.wait(timeout=30) == 0
    finally:
        busy.stop([proc])


@pytest.mark.skipif(not hasattr(os, "getsid"), reason="sessions are a POSIX notion")
def test_a_busy_process_runs_in_a_session_of_its_own_by_default(monkeypatch):
    """Like a second job started from another terminal: on Linux, autogroup scheduling then
    shares the cores between it and the timed process's session."""
    monkeypatch.delenv(busy.SESSION_ENV, raising=False)
    (proc,) = busy.start(1, seconds=30)
    try:
        assert os.getsid(proc.pid) == proc.pid != os.getsid(0)
    finally:
        busy.stop([proc])
    assert "of another session" in busy.describe(1)


@pytest.mark.skipif(not hasattr(os, "getsid"), reason="sessions are a POSIX notion")
def test_a_shared_session_load_runs_beside_the_timed_process_like_data_loader_workers(monkeypatch):
    monkeypatch.setenv(busy.SESSION_ENV, "shared")
    (proc,) = busy.start(1, seconds=30)
    try:
        assert os.getsid(proc.pid) == os.getsid(0)
    finally:
        busy.stop([proc])
    assert "in the timed process's session" in busy.describe(1)


def test_an_unknown_session_is_refused(monkeypatch):
    monkeypatch.setenv(busy.SESSION_ENV, "elsewhere")
    with pytest.raises(ValueError, match=busy.SESSION_ENV):
        busy.start(1, seconds=1)


def test_no_load_starts_no_process():
    with busy.load(0, seconds=60) as procs:
        assert procs == []


def test_requested_load_is_read_from_the_environment(monkeypatch):
    monkeypatch.setenv(busy.ENV, "2")
    assert busy.requested() == 2
    monkeypatch.setenv(busy.ENV, "yes")
    with pytest.raises(ValueError, match=busy.ENV):
        busy.requested()


def _bench(name, median, **extra):
    return {"name": name, "group": "g", "stats": {"median": median}, "extra_info": extra}


def _doc(fastclip_s, torch_s):
    base = dict(set="huge", dtype="bf16", regime="clip", n_tensors=1, numel=1000, bytes=2000, preset="cpu")
    return {"benchmarks": [_bench("huge-bf16-clip-fastclip", fastclip_s, provider="fastclip", **base),
                           _bench("huge-bf16-clip-torch-foreach", torch_s, provider="torch-foreach", **base)]}


def test_busy_rows_carry_each_sides_slowdown_against_the_quiet_run():
    (row,) = report.clip_rows(_doc(0.030, 0.040), quiet=_doc(0.010, 0.020))
    assert row["fastclip_slowdown"] == pytest.approx(3.0)
    assert row["torch_slowdown"] == pytest.approx(2.0)


@pytest.mark.parametrize("busy_s,quiet_s,met", [
    ((0.030, 0.040), (0.010, 0.020), (True, True)),  # 1.33x torch, slowdown 3.0 / 2.0 = 1.5
    ((0.050, 0.040), (0.010, 0.020), (False, False)),  # slower than torch, slowdown 5.0 / 2.0
])
def test_busy_targets(busy_s, quiet_s, met):
    rows = report.clip_rows(_doc(*busy_s), quiet=_doc(*quiet_s))
    results = report.targets(rows, [], "cpu", "cpu", busy=True)
    assert [ok for *_, ok in results] == list(met)


def test_busy_header_names_the_load():
    env = {"device": "Some CPU", "busy_processes": 1, "load": busy.describe(1)}
    assert "BUSY" in report.header(env) and "1 competing busy-loop process" in report.header(env)
    assert "quiet" in report.header(dict(env, busy_processes=0))


def test_header_says_whether_the_native_helper_ran():
    """CPU timings differ several-fold with and without the helper: a table must say which."""
    env = {"device": "Some CPU"}
    assert "native helper: openmp" in report.header(dict(env, native_helper="openmp"))
    assert "native helper: not built" in report.header(dict(env, native_helper=""))
    assert "native helper" not in report.header(env)  # results from before the field existed
