"""Compile every kernel variant fastclip launches for real GPUs and read its machine code, without one.

Triton compiles ahead of time for a named target (no driver needed) and its wheel ships cuobjdump
and nvdisasm, so the machine code can be read before any GPU time is spent.  Each SASS instruction
is traced to the PTX line it came from (``nvdisasm -gp``), that line to its source line (the PTX
``.loc`` directives: Triton compiles with line info) and so to the ``@triton.jit`` function that
holds it: that is how the numbers are split by path.  Per kernel, constexpr variant and target
(sm_80, sm_90), one table row:

``regs``       registers per thread (sm_90 at 8 warps: <= 64 lets 4 programs share an SM)
``smem``       static shared memory per program (bytes)
``spill``      LDL/STL instructions / stack bytes (register spills): both must be 0
``bar``        BAR.SYNC in the kernel / in the chunk loops (the functions of chunk_ops.py that walk
               gradient memory, and the loops over the table) / in the full-chunk basic blocks
``smem_ops``   shared-memory instructions (STS, LDS, STSM, LDSM) in the chunk loops / in the
               full-chunk blocks: a layout conversion through shared memory shows up here
``ld``         every global load of the kernel by width in bits: ``128x64,32x8`` = 64 LDG.E.128
               and 8 LDG.E
``full_ld``    loads on the full-chunk path (``full_st``: stores), same notation
``layout``     bytes each thread loads contiguously per full-chunk block, x how many times (from
               the Triton GPU IR): ``16Bx1`` is one 128-bit load per thread per block
``in_flight``  full-path loads issued before the first of them is read, per basic block (one loop
               body per dtype), ``min-max`` over the blocks: 16-byte loads in flight per thread,
               x 16 B x 256 threads = bytes in flight per program
``vec_ld``     loads of the vectorised small-tensor path; ``mask_ld`` of the masked (scalar) path
``row_ahead``  table-row loads whose first use comes after a gradient load (a row carried in
               registers while a chunk streams) / table-row loads whose values are never read
               (prefetch_row: the next chunk's row brought into L2 while this chunk streams)
``fma_f64``    float64 FMAs in the PTX: the scale kernel is compiled without contraction
               (``COMPILE_OPTIONS``), so its clipper policies round as torch does

Launches compile every dtype branch; one representative variant per kernel is also compiled a
dtype at a time (its ``DTYPES`` constexpr), which gives each dtype's path its own row (``... [fp32]``).
Those can differ from the same path in the all-dtype kernel, where the compiler may share one layout
between branches (a common ``tl.arange``): that is how the fp32 scale path came to go through shared
memory only in the all-dtype kernel.  The all-dtype rows describe what runs.


    python bench/inspect_kernels.py              # table
    python bench/inspect_kernels.py --json       # machine-readable (used by tests/test_ptx.py)
    python bench/inspect_kernels.py --dump DIR   # also write .ptx and .sass (with PTX line numbers)
    python bench/inspect_kernels.py --match '^clamp'   # only some variants

Must run without TRITON_INTERPRET=1 (the interpreter replaces @triton.jit functions).
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures
import functools
import inspect as pyinspect
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
    from fastclip.kernels import chunk_ops, launch_settings as ls, norm_kernel, scale_kernel  # noqa: E402
except ImportError:
    sys.exit("install fastclip first (pip install -e .)")

KINDS = (ls.NORM_P2, ls.NORM_P1, ls.NORM_INF, ls.NORM_GENERAL)
TARGETS = (80, 90)
DTYPE_NAMES = {0: "fp32", 1: "fp16", 2: "bf16", 3: "fp64"}
KERNEL_MODULES = (chunk_ops, norm_kernel, scale_kernel)

# Which @triton.jit functions make up each path (instructions are attributed by source line).
FULL = {"_power_sum_full", "_rewrite_full"}
VEC = {"_power_sum_vec", "_rewrite_vec"}
MASKED = {"_power_sum_masked", "_rewrite_masked"}
ROW = {"unpack_chunk", "load_row"}  # the row a chunk is processed with
PREFETCH = {"prefetch_row"}  # rows brought into L2 ahead of time, values unused
# Allowed to synchronise: the one cross-warp reduction a norm program does per chunk.
REDUCE = {"_lane_reduce", "nan_max_reduce"}
WALKS = {"_rewrite_all", "_norm_partials_kernel"}  # the persistent loops (kernel bodies: loop lines only)


def variants():
    """(name, kernel, signature, constexprs) of every specialisation the launchers can produce.

    ``constexprs`` may carry compile options (the scale kernel's ``COMPILE_OPTIONS``)."""
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
                     "inv_scale_ptr": "*fp32", "found_inf_ptr": "*fp32", "policy_ptr": "*fp64", "clipped_ptr": "*i1"}
        none = ls.POLICY_NONE
        modes = [(kind, True, True, ptr, False, none) for kind in KINDS for ptr in (False, True)]  # clip_
        modes += [(kind, True, False, False, False, none) for kind in KINDS]  # total_norm
        modes += [(ls.NORM_P2, False, True, ptr, False, none) for ptr in (False, True)]  # clip_with_norm_
        if not fp64:
            modes += [(kind, True, True, ptr, True, none) for kind in KINDS for ptr in (False, True)]  # fused AMP
        policies = (ls.POLICY_FIXED, ls.POLICY_MEAN, ls.POLICY_ZCLIP, ls.POLICY_PERCENTILE)
        modes += [(ls.NORM_P2, True, True, False, False, policy) for policy in policies]  # clipper steps
        modes += [(ls.NORM_GENERAL, True, True, False, False, ls.POLICY_ZCLIP)]
        for kind, finish, apply, ptr, unscale, policy in modes:
            yield (f"scale kind={kind} fp64={fp64} finish={finish} apply={apply} max_norm_ptr={ptr} unscale={unscale}"
                   + (f" policy={policy}" if policy != none else ""),
                   scale_kernel._scale_kernel, scale_sig,
                   {"KIND": kind, "NORM_FP64": fp64, "FINISH_NORM": finish, "APPLY": apply,
                    "MAX_NORM_FROM_PTR": ptr, "UNSCALE": unscale, "POLICY": policy, "P_BLOCK": p_block, **tile,
                    **scale_kernel.COMPILE_OPTIONS})
    yield ("clamp", scale_kernel._clamp_kernel,
           {"table_ptr": "*i64", "n_chunks": "i32", "n_programs": "i32", "clip_value_bits": "i64"}, dict(tile))
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import inspect_agc_kernels  # AGC's two kernels (issue 12)

    yield from inspect_agc_kernels.variants()


#: Variants also compiled a dtype at a time, and the dtypes each can meet at run time.  The scale
#: kernel's rewrite loop is the clamp kernel's (``_rewrite_all``) with a multiply for the clamp.
PER_DTYPE = {
    "norm kind=0 acc_fp64=False chunk_partials=False": (0, 1, 2),
    "norm kind=0 acc_fp64=True chunk_partials=False": (3,),  # fp64 grads always come with fp64 lanes
    "clamp": (0, 1, 2, 3),
}


def all_variants():
    """Every launchable variant (all dtype branches), then the per-dtype ones (one branch each)."""
    out = []
    per_dtype = []
    for name, fn, sig, cx in variants():
        has_mask = "DTYPES" in fn.arg_names
        out.append((name, fn, sig, {**cx, "DTYPES": ls.ALL_DTYPES} if has_mask else cx))
        if has_mask:
            for code in PER_DTYPE.get(name, ()):
                per_dtype.append((f"{name} [{DTYPE_NAMES[code]}]", fn, sig, {**cx, "DTYPES": 1 << code}))
    return out + per_dtype


# ---------------------------------------------------------------------------------------------- SASS
def _tool(name: str) -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def _run_on_cubin(tool: str, args, cubin: bytes) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([_tool(tool), *args, f.name], capture_output=True, text=True, check=True).stdout


@functools.lru_cache(maxsize=None)
def source_map() -> dict:
    """(file name, line) -> name of the @triton.jit function of the kernels package holding it."""
    where = {}
    for module in KERNEL_MODULES:
        for name, obj in vars(module).items():
            fn = getattr(obj, "fn", None)
            if fn is None or getattr(fn, "__module__", None) != module.__name__:
                continue
            lines, start = pyinspect.getsourcelines(fn)
            fname = os.path.basename(pyinspect.getsourcefile(fn))
            for i in range(len(lines)):
                where[(fname, start + i)] = name
    return where


Instr = collections.namedtuple("Instr", "func opcode dests srcs block")

_PTX_LINE = re.compile(r'//## File "[^"]*", line (\d+)')
_INSTR = re.compile(r"^\s*/\*[0-9a-f]+\*/\s+(.*?)\s*;")
_REG = re.compile(r"\bR(\d+)\b")
_NO_DEST = ("ST", "STG", "STS", "STL", "RED", "BRA", "EXIT", "RET", "BAR", "BSYNC", "BSSY", "WARPSYNC", "CALL", "JMP",
            "MEMBAR", "NOP", "ISETP", "FSETP", "DSETP", "HSETP2", "PLOP3", "R2P", "YIELD", "DEPBAR", "FENCE", "ERRBAR",
            "CCTL")
_ENDS_BLOCK = ("BRA", "EXIT", "RET", "JMP", "CALL", "BRX")
SMEM_OPS = ("STS", "LDS", "STSM", "LDSM")


def _load_regs(opcode: str, first: str) -> set:
    """Registers written by a load (LDG.E.128 R24 -> R24..R27)."""
    m = _REG.search(first)
    if not m:
        return set()
    width = {"128": 4, "64": 2}.get(opcode.rsplit(".", 1)[-1], 1)
    return set(range(int(m.group(1)), int(m.group(1)) + width))


def ptx_sources(ptx: str) -> dict:
    """PTX line number -> (file name, source line) in the kernels package, from ``.loc`` directives.

    Inside an inline-asm block (Triton's loads and stores) the ``.loc`` in force when the block
    opens is kept: triton 3.9 emits one ``.loc`` per asm line with the line number counting up,
    which would put a load past the end of its function.  Code inlined from Triton's own library
    (``tl.sum`` is a @jit function of triton/language/standard.py) is attributed to the line of
    ours it was inlined into: through the ``inlined_at`` chain (3.9), or the inlining stack that
    3.6 writes in the directive's comment.
    """
    files = dict(re.findall(r'^\s*\.file\s+(\d+)\s+"([^"]+)"', ptx, re.M))
    ours = {fname for fname, _ in source_map()}
    parent, where, loc, in_asm = {}, {}, None, False
    for number, line in enumerate(ptx.splitlines(), start=1):
        if "begin inline asm" in line:
            in_asm = True
        elif "end inline asm" in line:
            in_asm = False
        m = re.match(r"\s*\.loc\s+(\d+)\s+(\d+)\s+(\d+)(?:.*inlined_at\s+(\d+)\s+(\d+)\s+(\d+))?", line)
        if m and not in_asm:
            here = (m.group(1), int(m.group(2)), int(m.group(3)))
            if m.group(4):
                parent[here] = (m.group(4), int(m.group(5)), int(m.group(6)))
            hops = 0
            while os.path.basename(files.get(here[0], "?")) not in ours and here in parent and hops < 64:
                here, hops = parent[here], hops + 1
            loc = (os.path.basename(files.get(here[0], "?")), here[1])
            if loc[0] not in ours:  # triton 3.6 writes the inlining stack in a comment instead
                stack = re.findall(r"(\w+\.py):(\d+):\d+", line.partition("//")[2])
                loc = next(((f, int(n)) for f, n in stack if f in ours), loc)
        where[number] = loc
    return where


def parse_sass(text: str, ptx: str) -> list:
    """``nvdisasm -gp`` output -> [Instr]: each instruction with its jit function (through the PTX
    line it came from) and its basic block number."""
    where, ptx_src = source_map(), ptx_sources(ptx)
    func, block, out = None, 0, []
    for line in text.splitlines():
        fl = _PTX_LINE.search(line)
        if fl:
            func = where.get(ptx_src.get(int(fl.group(1))))
            continue
        if re.match(r"^\.L_\w+:", line.strip()):
            block += 1
            continue
        m = _INSTR.match(line)
        if not m:
            continue
        text_ = re.sub(r"^@!?U?P\w+\s+", "", m.group(1))
        opcode, _, rest = text_.partition(" ")
        operands = [o.strip() for o in rest.split(",")] if rest else []
        base = opcode.split(".")[0]
        if base in _NO_DEST or not operands:
            dests, srcs = set(), operands
        elif base.startswith("LD"):
            dests, srcs = _load_regs(opcode, operands[0]), operands[1:]
        else:
            m0 = _REG.search(operands[0])
            dests, srcs = ({int(m0.group(1))} if m0 and operands[0].startswith("R") else set()), operands[1:]
        src_regs = {int(r) for o in srcs for r in _REG.findall(o)}
        out.append(Instr(func, opcode, dests, src_regs, block))
        if base in _ENDS_BLOCK:
            block += 1
    return out


def _width(opcode: str) -> str:
    """Access width in bits of a load/store opcode (LDG.E.64.STRONG.SYS -> '64')."""
    widths = {"128": "128", "64": "64", "U16": "16", "S16": "16", "U8": "8", "S8": "8"}
    return next((widths[t] for t in opcode.split(".") if t in widths), "32")


def _widths(instrs, base) -> str:
    """'128x64,32x8': how many ``base`` (LDG/STG) instructions of each width (bits) ``instrs`` hold."""
    c = collections.Counter(_width(i.opcode) for i in instrs if i.opcode.split(".")[0] == base)
    return ",".join(f"{w}x{n}" for w, n in sorted(c.items(), key=lambda kv: -int(kv[0]))) or "-"


def loads_in_flight(instrs, funcs) -> list:
    """Per basic block holding loads of ``funcs``: the most of them outstanding at once (issued,
    result not yet read or overwritten).  One entry per loop body (per dtype, when unrolled)."""
    best, pending, block = {}, [], None
    for i in instrs:
        if i.block != block:
            block, pending = i.block, []
        pending = [regs for regs in pending if not regs & (i.srcs | i.dests)]
        if i.opcode.startswith("LDG") and i.func in funcs:
            pending.append(i.dests)
            best[block] = max(best.get(block, 0), len(pending))
    return sorted(best.values())


def rows_prefetched(instrs) -> tuple:
    """(table-row loads with at least one gradient load issued between them and their first use,
    loads of prefetch_row: rows brought into L2, whose values the source never uses)."""
    data = FULL | VEC | MASKED
    ahead = 0
    for k, i in enumerate(instrs):
        if not (i.opcode.startswith("LDG") and i.func in ROW):
            continue
        for j in instrs[k + 1:]:
            if j.srcs & i.dests:
                break
            if j.opcode.startswith("LDG") and j.func in data:
                ahead += 1
                break
    cached = sum(i.opcode.startswith("LDG") and i.func in PREFETCH for i in instrs)
    return ahead, cached


_ELEM_BYTES = {"f32": 4, "f16": 2, "bf16": 2, "f64": 8}


def full_path_layouts(ttgir: str) -> list:
    """How the full-chunk path's loads are laid out over threads (from the Triton GPU IR):
    '16Bx1' = each thread loads 16 contiguous bytes, once per block."""
    locs = dict(re.findall(r"^(#loc\d*) = loc\((.*)\)\s*$", ttgir, re.M))
    where = source_map()

    def resolve(name, depth=0):
        body = locs.get(name, "")
        m = re.match(r'"([^"]+)":(\d+):\d+', body)
        if m:
            return os.path.basename(m.group(1)), int(m.group(2))
        inner = re.search(r"(#loc\d*)", body)  # callsite(#callee at #caller), "name"(#loc), fused[...]
        return resolve(inner.group(1), depth + 1) if inner and depth < 50 else None

    layouts = {name: (int(spt), int(tpw) * int(wpc)) for name, spt, tpw, wpc in re.findall(
        r"^(#\w+) = #ttg\.blocked<\{sizePerThread = \[(\d+)\], threadsPerWarp = \[(\d+)\], "
        r"warpsPerCTA = \[(\d+)\]", ttgir, re.M)}
    found = set()
    for numel, elem, layout, loc in re.findall(
            r"tt\.load [^:]*: tensor<(\d+)x!tt\.ptr<(\w+)>, (#\w+)> loc\((#loc\d*)\)", ttgir):
        if where.get(resolve(loc)) in FULL and layout in layouts:
            per_thread, threads = layouts[layout]
            found.add(f"{per_thread * _ELEM_BYTES[elem]}Bx{int(numel) // (per_thread * threads)}")
    return sorted(found)


def _blocks_of(instrs, funcs) -> list:
    """Every instruction of the basic blocks that hold code of ``funcs`` (a path's whole loop body,
    including the per-element math and any layout conversion the compiler put there)."""
    blocks = {i.block for i in instrs if i.func in funcs}
    return [i for i in instrs if i.block in blocks]


def sass_numbers(instrs) -> dict:
    chunk_funcs = {f for (fname, _), f in source_map().items() if fname == "chunk_ops.py"}
    loops = [i for i in instrs if i.func in (chunk_funcs - REDUCE) | WALKS]
    full = [i for i in _blocks_of(instrs, FULL) if i.func not in REDUCE]  # a fully unrolled loop shares
    # its basic block with the chunk's reduction after it
    bars = lambda xs: sum(i.opcode.startswith("BAR") for i in xs)  # noqa: E731
    smem = lambda xs: sum(i.opcode.split(".")[0] in SMEM_OPS for i in xs)  # noqa: E731
    of = lambda funcs: [i for i in instrs if i.func in funcs]  # noqa: E731
    return {
        "bar": bars(instrs), "bar_loops": bars(loops), "bar_full": bars(full),
        "smem_ops_loops": smem(loops), "smem_ops_full": smem(full),
        "ld": _widths(instrs, "LDG"), "st": _widths(instrs, "STG"),
        "full_ld": _widths(of(FULL), "LDG"), "full_st": _widths(of(FULL), "STG"),
        "in_flight": loads_in_flight(instrs, FULL),
        "vec_ld": _widths(of(VEC), "LDG"), "vec_st": _widths(of(VEC), "STG"),
        "mask_ld": _widths(of(MASKED), "LDG"),
        "row_ahead": rows_prefetched(instrs)[0], "row_cached": rows_prefetched(instrs)[1],
        "ldl_stl": sum(i.opcode.split(".")[0] in ("LDL", "STL") for i in instrs),
    }


def inspect(name, fn, signature, constexprs, cc, dump=None) -> dict:
    options = {k: v for k, v in constexprs.items() if k in scale_kernel.COMPILE_OPTIONS}
    constexprs = {k: v for k, v in constexprs.items() if k not in options}
    src = ASTSource(fn=fn, signature={**signature, **{k: "constexpr" for k in constexprs}}, constexprs=constexprs)
    compiled = triton.compile(src, target=GPUTarget("cuda", cc, 32),
                              options={"num_warps": ls.GPU_SETTINGS.num_warps, **options})
    ptx = compiled.asm["ptx"]
    sass = _run_on_cubin("nvdisasm", ["-gp", "-c"], compiled.asm["cubin"])
    usage = _run_on_cubin("cuobjdump", ["-res-usage"], compiled.asm["cubin"])
    if dump:
        stem = os.path.join(dump, re.sub(r"[^\w=]+", "_", f"{name} sm{cc}"))
        with open(stem + ".ptx", "w") as f:
            f.write(ptx)
        with open(stem + ".sass", "w") as f:
            f.write(sass)
    reg = re.search(r"REG:(\d+)", usage)
    local = re.search(r"LOCAL:(\d+)", usage)
    stack = re.search(r"STACK:(\d+)", usage)
    return {
        "name": name, "sm": cc, "triton": triton.__version__,
        "regs": int(reg.group(1)) if reg else None,
        "smem": getattr(compiled.metadata, "shared", None),
        "local_bytes": int(local.group(1)) if local else None,
        "stack_bytes": int(stack.group(1)) if stack else None,
        "ptx_local": len(re.findall(r"\b(ld|st)\.local", ptx)),
        # 128-bit global accesses in the PTX (v4.b32: fp32/fp16/bf16, v2.b64: fp64), whatever path
        "ld_v4_b32": ptx.count("ld.global.v4.b32"),
        "ld_v2_b64": ptx.count("ld.global.v2.b64"),
        "st_v4_b32": ptx.count("st.global.v4.b32"),
        "st_v2_b64": ptx.count("st.global.v2.b64"),
        "fma_f64": len(re.findall(r"\bfma\.rn\.f64", ptx)),
        "full_layout": full_path_layouts(compiled.asm["ttgir"]),
        **sass_numbers(parse_sass(sass, ptx)),
    }


def _inspect_one(job):
    index, cc, dump = job
    name, fn, sig, cx = all_variants()[index]
    return inspect(name, fn, sig, cx, cc, dump)


def report(jobs: int = 0, dump: str | None = None, match: str = "") -> list:
    """Numbers of every variant (whose name matches the regex ``match``) for every target, compiled
    ``jobs`` at a time (0: one per CPU)."""
    work = [(i, cc, dump) for i, v in enumerate(all_variants()) if re.search(match, v[0]) for cc in TARGETS]
    jobs = jobs or os.cpu_count() or 1
    if jobs == 1:
        return [_inspect_one(w) for w in work]
    with concurrent.futures.ProcessPoolExecutor(jobs) as pool:
        return list(pool.map(_inspect_one, work))


COLUMNS = ("sm", "regs", "smem", "spill", "bar", "smem_ops", "ld", "full_ld", "full_st", "layout", "in_flight",
           "vec_ld", "mask_ld", "row_ahead", "fma_f64")


def _cell(r: dict, column: str) -> str:
    if column == "spill":
        return f"{r['ldl_stl']}/{r['stack_bytes']}"
    if column == "bar":
        return f"{r['bar']}/{r['bar_loops']}/{r['bar_full']}"
    if column == "smem_ops":
        return f"{r['smem_ops_loops']}/{r['smem_ops_full']}"
    if column == "row_ahead":
        return f"{r['row_ahead']}/{r['row_cached']}"
    if column == "layout":
        return ",".join(r["full_layout"]) or "-"
    if column == "in_flight":
        v = r["in_flight"]
        return f"{v[0]}-{v[-1]}" if v else "-"
    return str(r[column])


def table(rows) -> str:
    """The report as a fixed-width table, one line per variant and target, and a legend."""
    label = f"variant (triton {rows[0]['triton']})"
    width = max(len(label), *(len(r["name"]) for r in rows))
    cells = [[_cell(r, c) for c in COLUMNS] for r in rows]
    widths = [max(len(c), *(len(row[k]) for row in cells)) for k, c in enumerate(COLUMNS)]
    head = f"{label:{width}s}  " + " ".join(
        f"{c:>{w}s}" for c, w in zip(COLUMNS, widths))
    lines = [head] + [f"{r['name']:{width}s}  " + " ".join(f"{v:>{w}s}" for v, w in zip(row, widths))
                      for r, row in zip(rows, cells)]
    lines.append("spill = LDL/STL instructions / stack bytes; bar = BAR.SYNC in kernel / chunk loops / full-chunk "
                 "blocks; smem_ops = STS+LDS(+STSM/LDSM) in chunk loops / full-chunk blocks; widths in bits x count")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON list")
    ap.add_argument("--dump", metavar="DIR", help="write the PTX and SASS (PTX line numbers) of every variant to DIR")
    ap.add_argument("--jobs", type=int, default=0, help="compiles in parallel (default: one per CPU)")
    ap.add_argument("--match", default="", metavar="REGEX", help="only the variants whose name matches")
    args = ap.parse_args(argv)
    if args.dump:
        os.makedirs(args.dump, exist_ok=True)
    rows = report(args.jobs, args.dump, args.match)
    print(json.dumps(rows) if args.json else table(rows))


if __name__ == "__main__":
    main()
