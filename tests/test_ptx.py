"""The kernels compile for real GPUs (sm_80, sm_90), checked ahead of time without one.

The interpreter accepts code the compiler rejects, so every constexpr variant the launchers can
produce is compiled by bench/inspect_kernels.py (in a subprocess: the interpreter must be off) and
its machine code (SASS, traced back to the source functions) is checked: no register spills, and
128-bit global accesses for every dtype.
"""
import functools
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from oracles import skip_or_fail

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "bench", "inspect_kernels.py")


@functools.lru_cache(maxsize=None)
def _report():
    if importlib.util.find_spec("triton") is None:
        skip_or_fail("triton is not installed")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, SCRIPT, "--json"], env=env, capture_output=True, text=True, timeout=1500)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def report():
    return _report()


def widths(notation: str) -> dict:
    """'128x64,32x8' -> {128: 64, 32: 8} (instruction counts by access width in bits)."""
    return {int(w): int(n) for w, n in (x.split("x") for x in notation.split(","))} if notation != "-" else {}


def test_every_variant_compiles_for_sm80_and_sm90(report):
    names = {r["name"] for r in report}
    assert {r["sm"] for r in report} == {80, 90}
    assert len(report) == 2 * len(names)
    assert any(n.startswith("norm") for n in names) and any(n.startswith("scale") for n in names)


def test_no_register_spills(report):
    spilled = [(r["name"], r["sm"]) for r in report
               if r["local_bytes"] or r["stack_bytes"] or r["ldl_stl"] or r["ptx_local"]]
    assert not spilled


def test_norm_kernel_uses_128_bit_loads(report):
    for r in (r for r in report if r["name"].startswith("norm")):
        assert widths(r["ld"]).get(128, 0) >= 4, r


def test_scale_path_uses_128_bit_loads_and_stores(report):
    for r in (r for r in report if "apply=True" in r["name"] or r["name"] == "clamp"):
        assert widths(r["ld"]).get(128, 0) >= 4 and widths(r["st"]).get(128, 0) >= 4, r
