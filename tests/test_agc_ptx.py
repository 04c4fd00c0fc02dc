"""AGC's two kernels compile for real GPUs (sm_80, sm_90), checked ahead of time without one.

bench/inspect_kernels.py compiles every variant (for AGC: one per norm kind and kernel, listed
in bench/inspect_agc_kernels.py) in a subprocess and reads the PTX/SASS: no spills under triton 3.6,
and 128-bit accesses on the aligned path for every dtype (``ld.global.v4.b32`` covers fp32, fp16
and bf16, ``ld.global.v2.b64`` fp64): loads of weights and gradients in launch 1, loads and stores
of clipping rows in launch 2.
"""
import pytest

from test_ptx import report  # noqa: F401  (the fixture: one compile run shared with test_ptx)


def agc_rows(report):
    return [r for r in report if r["name"].startswith("agc_")]


def test_both_agc_kernels_compile_for_sm80_and_sm90_for_every_norm_kind(report):
    rows = agc_rows(report)
    assert {(r["name"].split()[0], r["sm"]) for r in rows} == {(k, sm) for k in ("agc_sums", "agc_clip")
                                                              for sm in (80, 90)}
    assert len(rows) == 16


def _spills(r) -> bool:
    return bool(r["local_bytes"] or r["stack_bytes"] or r["ldl_stl"] or r["ptx_local"])


def test_no_local_memory_spills_with_the_gpu_box_triton(report):
    """Triton 3.6 (the GPU box's): no AGC variant spills."""
    rows = agc_rows(report)
    if rows[0]["triton"].split(".")[:2] != ["3", "6"]:
        pytest.skip(f"triton {rows[0]['triton']}: see test_spills_stay_small_with_newer_triton")
    assert not [(r["name"], r["sm"]) for r in rows if _spills(r)]


def test_spills_stay_small_with_newer_triton(report):
    """Newer ptxas (triton 3.9) caps four of the 16 AGC variants at 80 (sm_80) or 128 (sm_90)
    registers and spills 24-40 stack bytes (6-19 LDL/STL).  Known, and left for the register
    tuning of the AGC kernels (they take 80-157 registers); the norm and scale kernels have none
    (tests/test_ptx.py).  This bounds it so that it cannot grow unnoticed."""
    for r in agc_rows(report):
        assert not r["local_bytes"] and not r["ptx_local"], r  # no local arrays in the source
        assert (r["stack_bytes"] or 0) <= 48 and r["ldl_stl"] <= 24, (r["name"], r["sm"], r["stack_bytes"], r["ldl_stl"])


def test_launch_1_reads_weights_and_gradients_with_128_bit_loads(report):
    for r in (r for r in agc_rows(report) if r["name"].startswith("agc_sums")):
        # aligned whole blocks of the long-row and scan paths, weight and gradient, every dtype
        assert r["ld_v4_b32"] >= 4 and r["ld_v2_b64"] >= 4, r


def test_launch_2_rewrites_whole_clipping_blocks_with_128_bit_accesses(report):
    for r in (r for r in agc_rows(report) if r["name"].startswith("agc_clip")):
        assert r["ld_v4_b32"] >= 3 and r["st_v4_b32"] >= 3, r  # fp32, fp16, bf16
        assert r["ld_v2_b64"] >= 1 and r["st_v2_b64"] >= 1, r  # fp64
