#!/usr/bin/env bash
# One call on a GPU box (no network needed): install fastclip from this checkout, run the CUDA
# tests, the torch.profiler two-kernel check, the full-size benchmark and the host-overhead
# measure, and write everything to OUTDIR:
#
#   bash bench/gpu_check.sh OUTDIR
#
#   OUTDIR/SUMMARY.md      step results + the benchmark table (read this first)
#   OUTDIR/steps.tsv       step, exit status (124 = timed out), seconds
#   OUTDIR/env.json        device, driver, python/torch/triton versions, git commit
#   OUTDIR/clip.json       pytest-benchmark JSON of the clip suite (overhead.json: host overhead)
#   OUTDIR/table.md, plot.png, profile.json, history/ (pytest-benchmark saved runs), logs/*.log
#
# Every step runs under `timeout`; a failing or hanging step is logged and the script goes on.
# The whole script stays under GPU_CHECK_BUDGET seconds (default 340, i.e. < 6 min), so a
# 15-minute GPU slot can run it twice.  It never changes clocks or other device settings.
# Environment: PYTHON (default python3, else python), GPU_CHECK_BUDGET, FASTCLIP_BENCH_PRESET
# (default: gpu sizes on CUDA).  To compare with the last committed run of the same GPU, its
# bench/results/<device>/history is copied into OUTDIR/history first.
set -u
OUT="${1:?usage: bash bench/gpu_check.sh OUTDIR}"
mkdir -p "$OUT/logs" && OUT="$(cd "$OUT" && pwd)"
cd "$(dirname "$0")/.." || exit 2
REPO="$(pwd)"
PY="${PYTHON:-$(command -v python3 || command -v python)}"
BUDGET="${GPU_CHECK_BUDGET:-340}"
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
step bench-clip 170 "$PY" bench/run.py --no-install --out "$OUT" --skip-overhead
step bench-overhead 50 "$PY" bench/run.py --no-install --out "$OUT" --skip-clip

# --- 6. the rest of tests/ with whatever time is left
if has_module pytest; then
  step tests-rest 120 "$PY" -m pytest -q -p no:cacheprovider tests -m "not cuda"
fi

# --- 7. report (table.md + plot.png from the JSON) and the summary
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
} > "$OUT/SUMMARY.md"
echo "== done in $(( $(date +%s) - START ))s: $OUT/SUMMARY.md"
