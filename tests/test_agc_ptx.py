"""AGC's two kernels compile for real GPUs (sm_80, sm_90), checked ahead of time without one.

bench/inspect_kernels.py compiles every variant (for AGC: one per norm kind and kernel, listed
in bench/inspect_agc_kernels.py) in a subprocess and reads the PTX/SASS: no local-memory spills or stack,
and 128-bit accesses on the aligned path for every dtype (``ld.global.v4.b32`` covers fp32, fp16
and bf16, ``ld.global.v2.b64`` fp64): loads of weights and gradients in launch 1, loads and stores
of clipping rows in launch 2.
"""
from test_ptx import report  # noqa: F401  (the fixture: one compile run shared with test_ptx)


def agc_rows(report):
    return [r for r in report if r["name"].startswith("agc_")]


def test_both_agc_kernels_compile_for_sm80_and_sm90_for_every_norm_kind(report):
    rows = agc_rows(report)
    assert {(r["name"].split()[0], r["sm"]) for r in rows} == {(k, sm) for k in ("agc_sums", "agc_clip")
                                                              for sm in (80, 90)}
    assert len(rows) == 16


def test_no_local_memory_spills(report):
    spilled = [(r["name"], r["sm"]) for r in agc_rows(report) if r["local_bytes"] or r["ldl_stl"] or r["ptx_local"]]
    assert not spilled


def test_launch_1_reads_weights_and_gradients_with_128_bit_loads(report):
    for r in (r for r in agc_rows(report) if r["name"].startswith("agc_sums")):
        # aligned whole blocks of the long-row and scan paths, weight and gradient, every dtype
        assert r["ld_v4_b32"] >= 4 and r["ld_v2_b64"] >= 4, r


def test_launch_2_rewrites_whole_clipping_blocks_with_128_bit_accesses(report):
    for r in (r for r in agc_rows(report) if r["name"].startswith("agc_clip")):
        assert r["ld_v4_b32"] >= 3 and r["st_v4_b32"] >= 3, r  # fp32, fp16, bf16
        assert r["ld_v2_b64"] >= 1 and r["st_v2_b64"] >= 1, r  # fp64
