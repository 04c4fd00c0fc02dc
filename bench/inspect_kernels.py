"""Compile every kernel variant fastclip launches for real GPUs, on a machine without one.

Triton compiles ahead of time for a named target (no driver needed) and its wheel ships
cuobjdump, so the machine code can be read before any GPU time is spent.  For each kernel,
constexpr variant and target (sm_80, sm_90) this reports: registers, local memory (spills),
128-bit global loads/stores in the PTX (``ld.global.v4.b32`` for 32/16-bit dtypes,
``ld.global.v2.b64`` for fp64) and LDL/STL instructions in the SASS.

    python bench/inspect_kernels.py              # table
    python bench/inspect_kernels.py --json       # machine-readable (used by tests/test_ptx.py)
    python bench/inspect_kernels.py --dump DIR   # also write .ptx and .sass files

Must run without TRITON_INTERPRET=1 (the interpreter replaces @triton.jit functions).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("inspect_kernels.py compiles real kernels: unset TRITON_INTERPRET")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

try:
    from fastclip.kernels import launch_settings as ls, norm_kernel, scale_kernel  # noqa: E402
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "kernels"))
    sys.exit("install fastclip first (pip install -e .)")

KINDS = (ls.NORM_P2, ls.NORM_P1, ls.NORM_INF, ls.NORM_GENERAL)
TARGETS = (80, 90)


def variants():
    """(name, kernel, signature, constexprs) of every specialisation the launchers can produce."""
    s = ls.GPU_SETTINGS
    tile = {"CHUNK": s.chunk, "BLOCK": s.block}
    norm_sig = {"table_ptr": "*i64", "n_chunks": "i32", "n_programs": "i32", "partials_ptr": "*fp64", "p_bits": "i64",
                "chunk_partials_ptr": "*fp64"}
    norm_modes = [(kind, acc64, False) for kind, acc64 in itertools.product(KINDS, (False, True))]
    norm_modes += [(kind, False, True) for kind in KINDS]  # per-tensor norms
    for kind, acc64, per_chunk in norm_modes:
        yield (f"norm kind={kind} acc_fp64={acc64} chunk_partials={per_chunk}", norm_kernel._norm_partials_kernel,
               norm_sig, {"KIND": kind, "ACC_FP64": acc64, "CHUNK_PARTIALS": per_chunk, **tile})
    p_block = triton.next_power_of_2(min(132 * s.programs_per_sm, s.max_programs))  # H100: 132 SMs
    for fp64 in (False, True):
        nt = "*fp64" if fp64 else "*fp32"
        scale_sig = {"table_ptr": "*i64", "n_chunks": "i32", "n_programs": "i32", "partials_ptr": "*fp64",
                     "n_partials": "i32", "norm_ptr": nt, "max_norm_ptr": nt, "max_norm_bits": "i64", "inv_p_bits": "i64",
                     "inv_scale_ptr": "*fp32", "found_inf_ptr": "*fp32"}
        modes = [(kind, True, True, ptr, False) for kind in KINDS for ptr in (False, True)]  # clip_
        modes += [(kind, True, False, False, False) for kind in KINDS]  # total_norm
        modes += [(ls.NORM_P2, False, True, ptr, False) for ptr in (False, True)]  # clip_with_norm_
        if not fp64:
            modes += [(kind, True, True, ptr, True) for kind in KINDS for ptr in (False, True)]  # fused AMP
        for kind, finish, apply, ptr, unscale in modes:
            yield (f"scale kind={kind} fp64={fp64} finish={finish} apply={apply} max_norm_ptr={ptr} unscale={unscale}",
                   scale_kernel._scale_kernel, scale_sig,
                   {"KIND": kind, "NORM_FP64": fp64, "FINISH_NORM": finish, "APPLY": apply,
                    "MAX_NORM_FROM_PTR": ptr, "UNSCALE": unscale, "P_BLOCK": p_block, **tile})
    yield ("clamp", scale_kernel._clamp_kernel,
           {"table_ptr": "*i64", "n_chunks": "i32", "n_programs": "i32", "clip_value_bits": "i64"}, dict(tile))
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import inspect_agc_kernels  # AGC's two kernels (issue 12)

    yield from inspect_agc_kernels.variants()


def _cuobjdump(args, cubin: bytes) -> str:
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([tool, *args, f.name], capture_output=True, text=True, check=True).stdout


def inspect(name, fn, signature, constexprs, cc, dump=None) -> dict:
    src = ASTSource(fn=fn, signature={**signature, **{k: "constexpr" for k in constexprs}}, constexprs=constexprs)
    compiled = triton.compile(src, target=GPUTarget("cuda", cc, 32),
                              options={"num_warps": ls.GPU_SETTINGS.num_warps})
    ptx = compiled.asm["ptx"]
    sass = _cuobjdump(["-sass"], compiled.asm["cubin"])
    usage = _cuobjdump(["-res-usage"], compiled.asm["cubin"])
    if dump:
        stem = os.path.join(dump, re.sub(r"[^\w=]+", "_", f"{name}_sm{cc}"))
        with open(stem + ".ptx", "w") as f:
            f.write(ptx)
        with open(stem + ".sass", "w") as f:
            f.write(sass)
    reg = re.search(r"REG:(\d+)", usage)
    local = re.search(r"LOCAL:(\d+)", usage)
    return {
        "name": name, "sm": cc,
        "registers": int(reg.group(1)) if reg else None,
        "local_bytes": int(local.group(1)) if local else None,
        "ldl_stl": len(re.findall(r"\b(LDL|STL)\b", sass)),
        "ptx_local": len(re.findall(r"\b(ld|st)\.local", ptx)),
        "ld_v4_b32": ptx.count("ld.global.v4.b32"),
        "ld_v2_b64": ptx.count("ld.global.v2.b64"),
        "st_v4_b32": ptx.count("st.global.v4.b32"),
        "st_v2_b64": ptx.count("st.global.v2.b64"),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON list")
    ap.add_argument("--dump", metavar="DIR", help="write PTX and SASS of every variant to DIR")
    args = ap.parse_args(argv)
    if args.dump:
        os.makedirs(args.dump, exist_ok=True)
    rows = [inspect(*v, cc, args.dump) for v in variants() for cc in TARGETS]
    if args.json:
        print(json.dumps(rows))
        return
    cols = ["sm", "registers", "local_bytes", "ldl_stl", "ld_v4_b32", "ld_v2_b64", "st_v4_b32", "st_v2_b64"]
    print(f"{'variant':70s} " + " ".join(f"{c:>11s}" for c in cols))
    for r in rows:
        print(f"{r['name']:70s} " + " ".join(f"{str(r[c]):>11s}" for c in cols))


if __name__ == "__main__":
    main()
