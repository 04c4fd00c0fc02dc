"""AGC's kernel variants for ``bench/inspect_kernels.py`` (which compiles them for sm_80/sm_90).

One variant per norm kind and kernel, as ``fastclip._agc_triton`` launches them; the names start
with ``agc_sums`` / ``agc_clip`` (tests/test_agc_ptx.py checks them).
"""
from __future__ import annotations

from fastclip.kernels import agc_kernel, launch_settings as ls

KINDS = (ls.NORM_P2, ls.NORM_P1, ls.NORM_INF, ls.NORM_GENERAL)

SUMS_SIG = {"table_ptr": "*i64", "n_chunks": "i32", "n_programs": "i32", "w_sums_ptr": "*fp64",
            "g_sums_ptr": "*fp64", "p_bits": "i64"}
CLIP_SIG = {"table_ptr": "*i64", "n_chunks": "i32", "n_programs": "i32", "w_sums_ptr": "*fp64",
            "g_sums_ptr": "*fp64", "coef_ptr": "*fp64", "counts_ptr": "*i32", "inv_p_bits": "i64",
            "clip_factor_bits": "i64", "eps_bits": "i64"}


def variants():
    """(name, kernel, signature, constexprs) of every AGC specialisation."""
    tile = {"BLOCK": ls.GPU_SETTINGS.block}
    for kind in KINDS:
        yield (f"agc_sums kind={kind}", agc_kernel._agc_sums_kernel, SUMS_SIG,
               {"KIND": kind, **tile, "SCAN_BLOCK": agc_kernel.scan_block(ls.GPU_SETTINGS)})
    for kind in KINDS:
        yield (f"agc_clip kind={kind}", agc_kernel._agc_clip_kernel, CLIP_SIG,
               {"KIND": kind, **tile, "UNIT_BLOCK": agc_kernel.scan_block(ls.GPU_SETTINGS)})
