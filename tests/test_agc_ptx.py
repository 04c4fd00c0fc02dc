"""AGC's two kernels compile for real GPUs (sm_80, sm_90), checked ahead of time without one.

bench/inspect_agc_kernels.py compiles every variant (one per norm kind and kernel) in a
subprocess (the interpreter must be off) and reads the PTX/SASS: no local-memory spills or stack,
and 128-bit accesses on the aligned path for every dtype (``ld.global.v4.b32`` covers fp32, fp16
and bf16, ``ld.global.v2.b64`` fp64): loads of weights and gradients in launch 1, loads and stores
of clipping rows in launch 2.
"""
import functools
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from oracles import skip_or_fail

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "bench", "inspect_agc_kernels.py")


@functools.lru_cache(maxsize=None)
def _report():
    if importlib.util.find_spec("triton") is None:
        skip_or_fail("triton is not installed")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, SCRIPT, "--json"], env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def report():
    return _report()


def test_both_agc_kernels_compile_for_sm80_and_sm90_for_every_norm_kind(report):
    assert {(r["name"].split()[0], r["sm"]) for r in report} == {(k, sm) for k in ("agc_sums", "agc_clip")
                                                                for sm in (80, 90)}
    assert len(report) == 16


def test_no_local_memory_spills(report):
    spilled = [(r["name"], r["sm"]) for r in report if r["local_bytes"] != 0 or r["ldl_stl"] or r["ptx_local"]]
    assert not spilled


def test_launch_1_reads_weights_and_gradients_with_128_bit_loads(report):
    for r in (r for r in report if r["name"].startswith("agc_sums")):
        # aligned whole blocks of the long-row and scan paths, weight and gradient, every dtype
        assert r["ld_v4_b32"] >= 4 and r["ld_v2_b64"] >= 4, r


def test_launch_2_rewrites_whole_clipping_blocks_with_128_bit_accesses(report):
    for r in (r for r in report if r["name"].startswith("agc_clip")):
        assert r["ld_v4_b32"] >= 3 and r["st_v4_b32"] >= 3, r  # fp32, fp16, bf16
        assert r["ld_v2_b64"] >= 1 and r["st_v2_b64"] >= 1, r  # fp64
