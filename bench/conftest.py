"""Shared setup of the benchmark suite (bench_clip.py, bench_overhead.py).

* Without a GPU the Triton interpreter is switched on before triton is imported, so the
  host-overhead bench can route calls through fastclip's Triton backend on CPU tensors (its
  launches are replaced by no-ops there).  The clip bench pins fastclip's CPU backend itself.
* ``FASTCLIP_BENCH_BUSY=N``: N bounded busy-loop processes (``busy.py``) run beside the whole
  session, and the pytest-benchmark JSON's ``machine_info`` says so (``bench/run.py --busy``
  starts the load itself and only sets the label).
* A progress line per finished case (``[bench] k/n  case  median  elapsed  eta``), written
  through pytest's terminal reporter, so long runs show where they are; ``bench/run.py`` echoes
  these lines and keeps the full pytest output in a log.
"""
import os
import time

import pytest
import torch

import busy

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

_progress = {"total": 0, "done": 0, "t0": None}


def pytest_collection_modifyitems(session, config, items):
    _progress["total"] = len(items)
    _progress["t0"] = time.perf_counter()


def pytest_runtest_logreport(report):
    if not (report.when == "call" or (report.when == "setup" and not report.passed)):
        return
    _progress["done"] += 1
    done, total = _progress["done"], max(_progress["total"], 1)
    elapsed = time.perf_counter() - (_progress["t0"] or time.perf_counter())
    eta = elapsed / done * (total - done)
    median = dict(report.user_properties).get("median_s")
    status = f"{median * 1e3:10.3f} ms" if median is not None else f"{report.outcome:>13}"
    name = report.nodeid.split("[", 1)[-1].rstrip("]")
    line = f"[bench] {done:4d}/{total}  {name:<40s} {status}   elapsed {elapsed:6.0f} s  eta {eta:5.0f} s"
    tr = _config.pluginmanager.get_plugin("terminalreporter") if _config else None
    if tr is not None:
        tr.write_line(line)


_config = None
_load = []  # busy processes started by this session


def pytest_configure(config):
    global _config
    _config = config
    if busy.requested() and not os.environ.get(busy.RUNNING_ENV):
        _load.extend(busy.start(busy.requested(), seconds=3600))


def pytest_unconfigure(config):
    busy.stop(_load)
    _load.clear()


@pytest.hookimpl(optionalhook=True)  # pytest-benchmark's hook: absent without the plugin
def pytest_benchmark_update_machine_info(config, machine_info):
    n = busy.requested()
    machine_info["busy_processes"] = n
    machine_info["load"] = busy.describe(n)
