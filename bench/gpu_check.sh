#!/usr/bin/env bash
# One call on a GPU box (no network needed): install fastclip from this checkout, run the CUDA
# tests, the torch.profiler two-kernel check, the full-size benchmark (with the torch.compile
# peer while its deadline allows), the host-overhead measure, then -- when time is left -- the
# launch-settings sweep, and write everything to OUTDIR (packed into ARCHIVE when given):
#
#   bash bench/gpu_check.sh OUTDIR [ARCHIVE]
#   bash bench/gpu_check.sh /tmp/gpu-check "$OUT/gpu-check.tar.gz"   # on the lent GPU machine:
#                                       # one file comes back (a run returns at most 8)
#
#   OUTDIR/SUMMARY.md      step results + the benchmark table + the sweep's pick (read this first)
#   OUTDIR/steps.tsv       step, exit status (124 = timed out), seconds
#   OUTDIR/env.json        device, driver, python/torch/triton versions, git commit
#   OUTDIR/clip.json       pytest-benchmark JSON of the clip suite (overhead.json: host overhead)
#   OUTDIR/tune/           tune.json, tune.md: bench/tune.py's sweep (when it ran)
#   OUTDIR/table.md, plot.png, profile.json, history/ (pytest-benchmark saved runs), logs/*.log
#
# Every step runs under `timeout`; a failing or hanging step is logged and the script goes on.
# The whole script stays under GPU_CHECK_BUDGET seconds (default 540, i.e. 9 min, inside the
# device's 10-minute command limit): the checks and the benchmark take the first ~6 minutes
# (their step limits add up to that), the sweep gets what is left, at most TUNE_LIMIT (200) s,
# and runs only when at least TUNE_MIN (90) s are left.  GPU_CHECK_BUDGET=340 gives the old
# 6-minute check without the sweep.  It never changes clocks or other device settings.
# Environment: PYTHON (default python3, else python), GPU_CHECK_BUDGET, TUNE_LIMIT, TUNE_MIN,
# FASTCLIP_BENCH_PRESET (default: gpu sizes on CUDA).  To compare with the last committed run of
# the same GPU, its bench/results/<device>/history is copied into OUTDIR/history first.
set -u
OUT="${1:?usage: bash bench/gpu_check.sh OUTDIR [ARCHIVE]}"
ARCHIVE="${2:-}"
mkdir -p "$OUT/logs" && OUT="$(cd "$OUT" && pwd)"
[ -n "$ARCHIVE" ] && mkdir -p "$(dirname "$ARCHIVE")" && ARCHIVE="$(cd "$(dirname "$ARCHIVE")" && pwd)/$(basename "$ARCHIVE")"
cd "$(dirname "$0")/.." || exit 2
REPO="$(pwd)"
PY="${PYTHON:-$(command -v python3 || command -v python)}"
BUDGET="${GPU_CHECK_BUDGET:-540}"
TUNE_LIMIT="${TUNE_LIMIT:-200}"
TUNE_MIN="${TUNE_MIN:-90}"
RESERVE=25            # seconds kept for the final report
START=$(date +%s)
STEPS="$OUT/steps.tsv"
printf 'step\texit\tseconds\n' > "$STEPS"
unset TRITON_INTERPRET FASTCLIP_BACKEND   # real kernels, default backend choice
export PYTHONUNBUFFERED=1

# step NAME LIMIT CMD...: run CMD with at most min(LIMIT, time left - RESERVE) seconds
step() {
  local name=$1 limit=$2; shift 2
  local left=$(( BUDGET - RESERVE - ($(date +%s) - START) ))
  [ "$name" = report ] && left=$(( left + RESERVE ))
  local t=$(( limit < left ? limit : left ))
  if [ "$t" -lt 10 ]; then
    printf '%s\tskipped\t0\n' "$name" >> "$STEPS"; echo "== $name: skipped (no time left)"; return 0
  fi
  echo "== $name (timeout ${t}s): $*"
  local s=$(date +%s)
  FASTCLIP_RUN_DEADLINE=$(( s + t )) timeout -k 5 "$t" "$@" > "$OUT/logs/$name.log" 2>&1
  local rc=$?
  local took=$(( $(date +%s) - s ))
  printf '%s\t%s\t%s\n' "$name" "$rc" "$took" >> "$STEPS"
  if [ $rc -eq 0 ]; then echo "   ok (${took}s)"; else
    echo "   FAILED: exit $rc$([ $rc -eq 124 ] && echo ' (timeout)') after ${took}s; tail of logs/$name.log:"
    tail -n 15 "$OUT/logs/$name.log" | sed 's/^/   | /'
  fi
  return 0
}

# the sweep's closing summary; if it was cut short, the one tune.md kept after its last config
tune_summary() {
  if grep -q '^tune: ' "$OUT/logs/tune.log" 2>/dev/null; then sed -n '/^tune: /,$p' "$OUT/logs/tune.log"
  elif [ -f "$OUT/tune/tune.md" ]; then echo "(cut short; as of its last finished config)"; sed -n '3,/^$/p' "$OUT/tune/tune.md"
  else tail -n 8 "$OUT/logs/tune.log"
  fi
}

has_module() { "$PY" -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('$1') is None)" 2>/dev/null; }

# --- 1. what machine is this
step nvidia-smi 20 nvidia-smi
step env 60 "$PY" bench/device_info.py
cp "$OUT/logs/env.log" "$OUT/env.json" 2>/dev/null

# --- 2. install without network (unless this checkout is already what `import fastclip` finds);
#        fall back to a staged copy on PYTHONPATH
ours() { (cd /tmp && "$PY" -c "import os, sys, fastclip.kernels.norm_kernel as k; sys.exit(not os.path.realpath(k.__file__).startswith(os.path.realpath('$REPO') + os.sep))" 2>/dev/null); }
if ours; then
  printf 'install\talready-installed\t0\n' >> "$STEPS"; echo "== install: fastclip already imports from this checkout"
else
  step install 90 "$PY" -m pip install --no-deps --no-build-isolation --no-index -e .
fi
if ! ours; then
  STAGE="$OUT/pkg"
  "$PY" bench/bootstrap.py --stage "$STAGE" > "$OUT/logs/stage.log" 2>&1
  export PYTHONPATH="$STAGE${PYTHONPATH:+:$PYTHONPATH}" FASTCLIP_STAGED="$STAGE"
  echo "   pip install failed: fastclip staged on PYTHONPATH ($STAGE)"
  printf 'stage-on-pythonpath\t%s\t0\n' "$(cd /tmp && "$PY" -c 'import fastclip.kernels.norm_kernel' >/dev/null 2>&1; echo $?)" >> "$STEPS"
fi

# --- 2b. the native helper (the host cost of a call: grads and cache key read in C++), where this
#         box has ninja and a C++ compiler; built outside OUTDIR so the archive stays small.
#         Without it every step still runs, on the pure-Python host path.
export FASTCLIP_NATIVE_DIR="${FASTCLIP_NATIVE_DIR:-/tmp/fastclip-native}"
if has_module ninja || command -v ninja >/dev/null 2>&1; then
  step native 60 "$PY" -m fastclip.native
else
  printf 'native	no-ninja	0
' >> "$STEPS"; echo "== native: no ninja here, the pure-Python host path is measured"
fi

# --- 3. profiler: a clip_ call is exactly the two fastclip kernels (also compiles them once)
step profile 75 "$PY" bench/profile_check.py --out "$OUT"

# --- 4. tests: the CUDA ones first, then the rest of tests/ (no interpreter on this box)
if has_module pytest; then
  step tests-cuda 90 "$PY" -m pytest -q -p no:cacheprovider tests -m cuda
else
  printf 'tests-cuda\tno-pytest\t0\n' >> "$STEPS"; echo "== tests: pytest is not installed, skipped"
fi

# --- 5. the full-size benchmark, then the host overhead (plain runner if pytest-benchmark is missing)
SLUG="$("$PY" -c 'import sys; sys.path.insert(0, "bench"); import device_info; print(device_info.device_slug())' 2>/dev/null)"
if [ -n "$SLUG" ] && [ -d "bench/results/$SLUG/history" ] && [ ! -d "$OUT/history" ]; then
  cp -r "bench/results/$SLUG/history" "$OUT/history"   # --benchmark-compare against the committed run
  [ -f "bench/results/$SLUG/clip.json" ] && cp "bench/results/$SLUG/clip.json" "$OUT/previous-clip.json"
fi
step bench-clip 200 "$PY" bench/run.py --no-install --out "$OUT" --skip-overhead
step bench-overhead 60 "$PY" bench/run.py --no-install --out "$OUT" --skip-clip
# AGC (issue 12): fastclip.agc_ vs timm's loop on ResNet-50 / NFNet-F0 shapes, agc_table.md
step bench-agc 45 "$PY" bench/bench_agc.py --out "$OUT" --rounds 5

# --- 6. the launch-settings sweep, only with time left (tune.py stops starting configs at its deadline)
LEFT=$(( BUDGET - RESERVE - ($(date +%s) - START) ))
if [ "$LEFT" -ge "$TUNE_MIN" ]; then
  step tune "$TUNE_LIMIT" "$PY" bench/tune.py --out "$OUT/tune" --budget "$TUNE_LIMIT"
else
  printf 'tune\tskipped\t0\n' >> "$STEPS"; echo "== tune: skipped (${LEFT}s left, needs ${TUNE_MIN}s)"
fi

# --- 7. the rest of tests/ with whatever time is left
if has_module pytest; then
  step tests-rest 120 "$PY" -m pytest -q -p no:cacheprovider tests -m "not cuda"
fi

# --- 8. report (table.md + plot.png from the JSON), the summary, the archive
step report 30 "$PY" bench/report.py "$OUT"
{
  echo "# fastclip GPU check — $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "Device: $("$PY" -c 'import json,sys; e=json.load(open(sys.argv[1])); print(e["device"], "· driver", e.get("driver", "-"), "· torch", e["torch"], "· triton", e["triton"], "· python", e["python"])' "$OUT/env.json" 2>/dev/null)"
  echo
  echo '```'
  column -t -s $'\t' "$STEPS" 2>/dev/null || cat "$STEPS"
  echo '```'
  echo
  for f in logs/profile.log; do [ -f "$OUT/$f" ] && { echo '```'; tail -n 10 "$OUT/$f"; echo '```'; echo; }; done
  for t in tests-cuda tests-rest; do
    [ -f "$OUT/logs/$t.log" ] && echo "$t: $(grep -E '(passed|failed|error|skipped|deselected|no tests ran)' "$OUT/logs/$t.log" | tail -1 || true)${NL:-}"
  done
  echo
  [ -f "$OUT/table.md" ] && cat "$OUT/table.md"
  if [ -f "$OUT/logs/tune.log" ]; then
    echo; echo "#### Launch-settings sweep (bench/tune.py; details in tune/tune.md)"; echo; echo '```'
    tune_summary; echo '```'
  fi
} > "$OUT/SUMMARY.md"
echo "== done in $(( $(date +%s) - START ))s: $OUT/SUMMARY.md"
if [ -n "$ARCHIVE" ]; then
  tar -czf "$ARCHIVE" -C "$(dirname "$OUT")" "$(basename "$OUT")" && echo "== packed: $ARCHIVE ($(du -h "$ARCHIVE" | cut -f1))"
fi
[ -f "$OUT/logs/tune.log" ] && tune_summary
