#!/usr/bin/env bash
# bench/gpu_check.sh - one command for a short GPU window: build ekv for the device found,
# run the GPU test programs and the sanitizers, sweep with ekv_bench, time PyTorch and
# FlashInfer on the same problems, profile two kernels with Nsight Compute next to the
# static model, and write summary.md with figures.
#
#     bench/gpu_check.sh [--quick] [--dry-run]        from the repository root
#
#   (default)  the full check: at most 8 minutes on an H100/H200 (deadline 450 s for the
#              measuring steps, then figures, summary and packing)
#   --quick    about 3 minutes (deadline 180 s): no racecheck, one Nsight kernel, smaller
#              sweep budgets
#   --dry-run  the same steps on the CPU execution emulator (make emu) with tiny sizes, so
#              that the script cannot rot between GPU days; steps that need a GPU (nvcc
#              builds, test programs, sanitizers, Nsight, the static model) are recorded as
#              skipped with their reason, and the peers skip themselves without torch
#
# Output: $OUT when set (the device tool's folder, which returns at most 8 files: there the
# results folder is packed into $OUT/<name>.tar.gz, refreshed after every phase, with
# summary.md and steps.tsv beside it), else bench/results/<date>-<gpu name>/. The folder
# holds summary.md, steps.tsv (every step: required?, status, seconds, note), env.json,
# runs.jsonl (every planned configuration's fate), ekv_f16.jsonl, ekv_dtype_policy.jsonl,
# ekv_cycle.jsonl, peers.jsonl, sass_model.json, ncu/, plots/ and logs/ (ptxas -v in
# logs/build-ekv_bench.log).
#
# EKV_BENCH=PATH uses that ekv_bench (or emulator build, with --dry-run) instead of building
# one; the test of the dry run uses it to check that failures reach the exit status.
#
# Every step runs under `timeout`, within the deadline; a failing step does not stop the
# others. Exit status 1 when a required step failed or timed out, 2 on a bad argument,
# else 0. The sweeps' plan and runner: bench/gpu_plan.py; peers: bench/peers.py; summary
# and figures: bench/gpu_summary.py.
set -u
cd "$(dirname "$0")/.." || exit 2

MODE=full
for arg in "$@"; do
    case $arg in
        --quick) [ "$MODE" = dry ] || MODE=quick ;;
        --dry-run) MODE=dry ;;
        -h|--help) sed -n '2,/^set -u/{/^set -u/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument '$arg'; allowed: --quick, --dry-run, --help" >&2
           exit 2 ;;
    esac
done

T0=$SECONDS
# seconds from the start by which the measuring steps end; figures, summary and packing
# come after (FINAL_S at most)
case $MODE in
    full)  DEADLINE=450 ;;
    quick) DEADLINE=180 ;;
    dry)   DEADLINE=1200 ;;
esac
FINAL_S=25

# ---------------------------------------------------------------- tools

# first_python MODULE CANDIDATES...: the first interpreter that imports MODULE
first_python() {
    local module=$1 candidate; shift
    for candidate in "$@"; do
        if [ -n "$candidate" ] && command -v "$candidate" >/dev/null 2>&1 &&
           "$candidate" -c "import $module" >/dev/null 2>&1; then
            echo "$candidate"; return 0
        fi
    done
    return 1
}
VENV_PY=""
[ -x .venv/bin/python ] && VENV_PY=.venv/bin/python
# the tools need only the standard library; the GPU machine has no .venv, and its python3
# holds torch and matplotlib
PY=$(first_python json $VENV_PY python3) || { echo "gpu_check.sh: no python3" >&2; exit 2; }
PLOT_PY=$(first_python matplotlib $VENV_PY python3) || PLOT_PY=$PY
TORCH_PY=$(first_python torch python3 $VENV_PY) || TORCH_PY=$PY

NVCC=$(command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null || true)
SANITIZER=$(command -v compute-sanitizer 2>/dev/null ||
            ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
NCU=$(command -v ncu 2>/dev/null || ls /usr/local/cuda/bin/ncu 2>/dev/null || true)
CUOBJDUMP=$(command -v cuobjdump 2>/dev/null || ls /usr/local/cuda/bin/cuobjdump 2>/dev/null || true)

GPU_NAME="" DRIVER="" COMPUTE_CAP=""
if [ "$MODE" != dry ] && command -v nvidia-smi >/dev/null 2>&1; then
    GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
    DRIVER=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n 1)
    COMPUTE_CAP=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d ' ')
fi
if [[ $COMPUTE_CAP =~ ^([0-9]+)\.([0-9]+)$ ]]; then
    ARCH=sm_${BASH_REMATCH[1]}${BASH_REMATCH[2]}
else
    ARCH=native
fi

# ---------------------------------------------------------------- the results folder

DATE=$(date -u +%Y-%m-%d)
if [ "$MODE" = dry ]; then
    SLUG=emulator-dry-run
    GPU_NAME="ekv CPU emulator (dry run)"
else
    SLUG=$(printf '%s' "${GPU_NAME:-unknown-gpu}" | tr 'A-Z' 'a-z' | tr -cs 'a-z0-9' '-' | sed 's/^-*//;s/-*$//')
    [ "$MODE" = quick ] && SLUG=$SLUG-quick
fi
NAME=$DATE-$SLUG
if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT" || exit 2
    OUT=$(cd "$OUT" && pwd)
    SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/ekv-gpu-check.XXXXXX") || exit 2
    R=$SCRATCH/$NAME
else
    SCRATCH=""
    R=bench/results/$NAME
    n=2
    while [ -e "$R" ]; do R=bench/results/$NAME-$n; n=$((n + 1)); done
    NAME=$(basename "$R")
fi
mkdir -p "$R/logs" "$R/ncu" "$R/plots" || exit 2
R=$(cd "$R" && pwd)
STEPS=$R/steps.tsv
printf 'step\trequired\tstatus\tseconds\tnote\n' >"$STEPS"

elapsed() { echo $((SECONDS - T0)); }

# record STEP REQUIRED STATUS SECONDS NOTE
record() {
    local note=${5//$'\t'/ }
    note=${note//$'\n'/ }
    printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "${note:0:400}" >>"$STEPS"
    printf '[%4d s] %-22s %-11s %4s s  %s\n' "$(elapsed)" "$1" "$3" "$4" "${note:0:160}"
}

skip_step() { record "$1" "$2" skipped 0 "$3"; }

# limit SECONDS: SECONDS, or what is left before the deadline if that is less
limit() {
    local left=$((DEADLINE - (SECONDS - T0)))
    if [ "$1" -lt "$left" ]; then echo "$1"; else echo "$left"; fi
}

# a tool that cannot work on this machine, as opposed to one that found a problem
unavailable_reason() {
    grep -m 1 -oE 'Device not supported|LibraryNotLoaded|ERR_NVGPUCTRPERM|Unable to find injection library|[Pp]rofiling is not supported[^.]*|not supported on this (device|platform)' "$1"
}

# run_step STEP REQUIRED SECONDS CMD...: runs CMD under timeout, its output in
# logs/STEP.log; the status is ok, FAIL, timeout, skipped (the command said SKIP, or a test
# program skipped everything) or unavailable (the tool cannot run here)
run_step() {
    local name=$1 required=$2 seconds budget log begin code status note why
    seconds=$(limit "$3"); shift 3
    log=$R/logs/$name.log
    if [ "$seconds" -lt 5 ]; then
        skip_step "$name" "$required" "out of time: the check's ${DEADLINE} s deadline is near"
        return 0
    fi
    begin=$SECONDS
    timeout -k 10 "$seconds" "$@" >"$log" 2>&1
    code=$?
    budget=$((SECONDS - begin))
    note=$(grep -E '^NOTE: ' "$log" | tail -n 1 | sed 's/^NOTE: //')
    if [ "$code" -eq 124 ] || [ "$code" -eq 137 ]; then
        status=timeout; note="killed after ${seconds} s${note:+; $note}"
    elif [ "$code" -eq 0 ] && grep -qE '^(SKIP (peers|plots): |0 passed, 0 failed, [1-9][0-9]* skipped$)' "$log"; then
        status=skipped
        note=$(grep -E '^SKIP ' "$log" | tail -n 1 | sed 's/^SKIP [^:]*: //')
    elif [ "$code" -eq 0 ]; then
        status=ok
        [ -n "$note" ] || note=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$log" | tail -n 1)
    elif why=$(unavailable_reason "$log"); then
        status=unavailable; note="the tool cannot run here: $why"
    else
        status=FAIL
        note="exit $code: $(grep -v '^[[:space:]]*$' "$log" | grep -vE '^(ptxas info|    )' | tail -n 1)${note:+; $note}"
    fi
    record "$name" "$required" "$status" "$budget" "$note"
}

# pack: the results folder into $OUT (only when $OUT is set), refreshed after each phase so
# that a check stopped from outside still leaves its last state; .ncu-rep files are left
# out if the archive would pass the device tool's 16 MiB per file
pack() {
    [ -n "$SCRATCH" ] || return 0
    local archive=$OUT/$NAME.tar.gz
    tar -czf "$archive.tmp" -C "$SCRATCH" "$NAME" 2>/dev/null
    if [ "$(stat -c %s "$archive.tmp" 2>/dev/null || echo 0)" -gt $((15 * 1024 * 1024)) ]; then
        tar -czf "$archive.tmp" --exclude='*.ncu-rep' -C "$SCRATCH" "$NAME" 2>/dev/null
    fi
    mv -f "$archive.tmp" "$archive"
    cp -f "$STEPS" "$OUT/steps.tsv"
    [ -f "$R/summary.md" ] && cp -f "$R/summary.md" "$OUT/summary.md"
    return 0
}

# source_id: the commit when this is a git checkout, else hashes of the three sources
source_id() {
    local commit dirty
    if commit=$(git rev-parse --short=12 HEAD 2>/dev/null); then
        dirty=$(git status --porcelain 2>/dev/null | wc -l)
        echo "git $commit$([ "$dirty" -gt 0 ] && echo " + $dirty uncommitted file(s)")"
    else
        echo "no git; sha256 $(sha256sum ekv.h ekv_cuda.cuh bench/main.cu 2>/dev/null |
              awk '{printf "%s %s  ", $2, substr($1, 1, 12)}')"
    fi
}

echo "ekv GPU check ($MODE) on ${GPU_NAME:-no GPU found}; results in $R"
[ "$MODE" != dry ] && [ -z "$GPU_NAME" ] &&
    echo "gpu_check.sh: nvidia-smi found no GPU; the GPU steps will fail (--dry-run runs without one)"

# ---------------------------------------------------------------- environment

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"; echo "mode: $MODE"; echo "source: $(source_id)"
    echo "uname: $(uname -srm)"
    echo "cpu: $(grep -m 1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ //'), $(nproc) cores"
    echo "memory: $(grep -m 1 MemTotal /proc/meminfo 2>/dev/null)"
    echo "nvcc: ${NVCC:-none} $([ -n "$NVCC" ] && timeout 20 "$NVCC" --version 2>/dev/null | tail -n 2 | head -n 1)"
    echo "compute-sanitizer: ${SANITIZER:-none}"
    echo "ncu: ${NCU:-none} $([ -n "$NCU" ] && timeout 20 "$NCU" --version 2>/dev/null | tail -n 1)"
    echo "cuobjdump: ${CUOBJDUMP:-none}"
    echo "python (tools): $PY $("$PY" --version 2>&1)"; echo "python (plots): $PLOT_PY"; echo "python (peers): $TORCH_PY"
    echo "torch: $(timeout 60 "$TORCH_PY" -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda)' 2>/dev/null || echo none)"
    if [ "$MODE" != dry ] && command -v nvidia-smi >/dev/null 2>&1; then
        echo; timeout 20 nvidia-smi 2>&1
        echo; timeout 20 nvidia-smi -q -d CLOCK,POWER,PERFORMANCE,MEMORY 2>&1
    fi
} >"$R/env.txt" 2>&1
env -u PYTHONPATH EKV_MODE="$MODE" EKV_GPU="$GPU_NAME" EKV_DRIVER="$DRIVER" EKV_CC="$COMPUTE_CAP" \
    EKV_ARCH="$ARCH" EKV_DATE="$DATE" EKV_SOURCE="$(source_id)" EKV_DEADLINE="$DEADLINE" \
    EKV_ENV_TXT="$R/env.txt" "$PY" - >"$R/env.json" <<'PYEOF'
import json, os
facts = {}
with open(os.environ["EKV_ENV_TXT"], encoding="utf-8", errors="replace") as handle:
    for line in handle:
        if not line.strip():
            break
        key, _, value = line.partition(": ")
        facts[key.strip()] = value.strip()
print(json.dumps({
    "mode": os.environ["EKV_MODE"], "gpu_name": os.environ["EKV_GPU"] or None,
    "driver": os.environ["EKV_DRIVER"] or None, "compute_cap": os.environ["EKV_CC"] or None,
    "arch": os.environ["EKV_ARCH"], "date": os.environ["EKV_DATE"],
    "started": facts.get("date"), "source": os.environ["EKV_SOURCE"],
    "deadline_s": int(os.environ["EKV_DEADLINE"]), "nvcc": facts.get("nvcc"),
    "python": facts.get("python (tools)"), "torch": facts.get("torch"), "cpu": facts.get("cpu"),
}, indent=1))
PYEOF
record env no ok 0 "env.txt, env.json"

# ---------------------------------------------------------------- phase 1: builds

BIN=${BUILD:-build}/gpu-check
mkdir -p "$BIN"
if [ "$MODE" = dry ]; then
    BENCH=${BUILD:-build}/ekv_bench_emu
    BACKEND=emulator
    if [ -n "${EKV_BENCH:-}" ]; then
        BENCH=$EKV_BENCH
        skip_step build-emulator yes "EKV_BENCH=$EKV_BENCH given"
    else
        run_step build-emulator yes 900 nice -n 10 make --no-print-directory emu
    fi
    for step in build-ekv_bench build-test_gpu build-test_cache_gpu; do
        skip_step "$step" yes "dry run: the nvcc builds run on a GPU machine; the emulator build stands in"
    done
elif [ -z "$NVCC" ]; then
    BENCH=$BIN/ekv_bench
    BACKEND=cuda
    for step in build-ekv_bench build-test_gpu build-test_cache_gpu; do
        record "$step" yes FAIL 0 "nvcc not found (PATH and /usr/local/cuda/bin)"
    done
else
    BENCH=$BIN/ekv_bench
    BACKEND=cuda
    # no binary of an earlier check may stand in for one that fails to build now
    rm -f "$BIN/ekv_bench" "$BIN/test_gpu" "$BIN/test_cache_gpu"
    # three independent nvcc processes: the GPU machine has the cores
    if [ -n "${EKV_BENCH:-}" ]; then
        BENCH=$EKV_BENCH
        skip_step build-ekv_bench yes "EKV_BENCH=$EKV_BENCH given"
    else
        run_step build-ekv_bench yes 300 "$NVCC" -O3 -arch="$ARCH" -Xptxas -v -o "$BIN/ekv_bench" bench/main.cu -lcublas &
    fi
    run_step build-test_gpu yes 300 "$NVCC" -O2 -arch="$ARCH" -Werror all-warnings -o "$BIN/test_gpu" tests/test_gpu.cu -lcublas &
    run_step build-test_cache_gpu yes 300 "$NVCC" -O2 -arch="$ARCH" -Werror all-warnings -o "$BIN/test_cache_gpu" tests/test_cache_gpu.cu -lcublas &
    wait
fi
pack

# ---------------------------------------------------------------- phase 2: correctness

# args CASE: the flags of one of gpu_plan.py's single cases
args() { "$PY" bench/gpu_plan.py args "$1" --mode "$MODE"; }

SANITIZE_TOOLS="memcheck racecheck"
[ "$MODE" = quick ] && SANITIZE_TOOLS=memcheck
if [ "$MODE" = dry ]; then
    for step in test_gpu test_cache_gpu; do skip_step "$step" yes "dry run: needs a GPU"; done
    for tool in memcheck racecheck; do
        for what in attention cycle; do skip_step "$tool-$what" yes "dry run: needs a GPU"; done
    done
    skip_step sass-model no "dry run: needs the nvcc build of ekv_bench"
else
    for program in test_gpu test_cache_gpu; do
        if [ -x "$BIN/$program" ]; then
            run_step "$program" yes 240 "$BIN/$program" &
        else
            skip_step "$program" yes "not built (see build-$program)"
        fi
    done
    for tool in memcheck racecheck; do
        for what in attention cycle; do
            if [[ " $SANITIZE_TOOLS " != *" $tool "* ]]; then
                skip_step "$tool-$what" yes "--quick runs memcheck only"
            elif [ -z "$SANITIZER" ]; then
                skip_step "$tool-$what" yes "compute-sanitizer not found"
            elif [ ! -x "$BENCH" ]; then
                skip_step "$tool-$what" yes "ekv_bench not built"
            else
                extra=""; [ "$tool" = memcheck ] && extra="--leak-check full"
                # shellcheck disable=SC2046,SC2086
                run_step "$tool-$what" yes 240 "$SANITIZER" --tool "$tool" $extra --error-exitcode 3 \
                    "$BENCH" $(args "sanitize-$what") --backend=cuda --json &
            fi
        done
    done
    if [ ! -f tests/sass_model.py ]; then
        skip_step sass-model no "tests/sass_model.py is not in this tree yet"
    elif [ -z "$CUOBJDUMP" ]; then
        skip_step sass-model no "cuobjdump not found"
    elif [ ! -x "$BENCH" ] || [ "$ARCH" = native ]; then
        skip_step sass-model no "needs ekv_bench built for a known sm (have: $ARCH)"
    else
        run_step sass-model no 180 "$PY" tests/sass_model.py --arch "$ARCH" --json "$R/sass_model.json" "$BENCH" &
    fi
    wait
fi
pack

# ---------------------------------------------------------------- phase 3: measurements

if [ "$MODE" = dry ]; then
    skip_step ncu-f16 no "dry run: needs a GPU"
    skip_step ncu-int4 no "dry run: needs a GPU"
else
    NCU_CASES="f16 int4"
    [ "$MODE" = quick ] && NCU_CASES=f16
    for dtype in f16 int4; do
        if [[ " $NCU_CASES " != *" $dtype "* ]]; then
            skip_step "ncu-$dtype" no "--quick profiles the f16 kernel only"
        elif [ -z "$NCU" ]; then
            skip_step "ncu-$dtype" no "ncu (Nsight Compute) not found"
        elif [ ! -x "$BENCH" ]; then
            skip_step "ncu-$dtype" no "ekv_bench not built"
        else
            # shellcheck disable=SC2046
            run_step "ncu-$dtype" no 75 bash -c '
                ncu=$1 report=$2; shift 2
                profile=("$ncu" --clock-control none --kernel-name regex:attention --launch-count 1 -f -o "$report")
                sections=(--section SpeedOfLight --section MemoryWorkloadAnalysis
                          --section ComputeWorkloadAnalysis --section SchedulerStats
                          --section WarpStateStats --section Occupancy --section LaunchStats)
                metrics=(--metrics dram__bytes_read.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,gpu__time_duration.sum,sm__inst_issued.avg.pct_of_peak_sustained_active,smsp__issue_active.avg.pct_of_peak_sustained_active)
                # a section or metric this ncu does not know fails the whole run: then
                # the sections alone, then the metrics alone
                if ! "${profile[@]}" "${sections[@]}" "${metrics[@]}" "$@"; then
                    echo "ncu with sections and metrics failed; again with the sections alone"
                    if ! "${profile[@]}" "${sections[@]}" "$@"; then
                        echo "ncu with the sections failed; again with the metrics alone"
                        "${profile[@]}" "${metrics[@]}" "$@" || exit 1
                    fi
                fi
                "$ncu" --import "$report.ncu-rep" --csv --page raw >"$report.csv" || exit 1
                rows=$(($(grep -c "^\"" "$report.csv") - 2))
                if [ "$rows" -lt 1 ]; then
                    echo "no kernel profiled: none whose name matches regex:attention ran"; exit 1
                fi
                echo "NOTE: $rows kernel row(s) in ${report##*/}.csv"
            ' ncu "$NCU" "$R/ncu/ncu_$dtype" "$BENCH" $(args "ncu-$dtype") --backend=cuda --quiet
        fi
    done
fi
pack

# sweep STEP SWEEP FILE SECONDS: gpu_plan.py runs SWEEP within SECONDS (or what the
# deadline leaves), one ekv_bench process per configuration; the runner gets 10 s less than
# the step, so that it ends (and says what it skipped) before the step's timeout would
sweep() {
    local step=$1 sweep=$2 file=$3 seconds
    seconds=$(limit "$4")
    if [ "$seconds" -lt 20 ]; then
        skip_step "$step" yes "out of time: the check's ${DEADLINE} s deadline is near"
        return 0
    fi
    if [ ! -x "$BENCH" ]; then
        record "$step" yes FAIL 0 "no ekv_bench binary ($BENCH)"
        return 0
    fi
    run_step "$step" yes "$seconds" "$PY" bench/gpu_plan.py run "$sweep" --mode "$MODE" \
        --bench "$BENCH" --backend "$BACKEND" --jsonl "$R/$file" --runs "$R/runs.jsonl" \
        --budget $((seconds - 10)) --calibration "$R/calibration.json"
}

case $MODE in
    full)  F16_S=90;  PEERS_S=50; CYCLE_S=45; DTYPE_S=150 ;;
    quick) F16_S=25;  PEERS_S=25; CYCLE_S=20; DTYPE_S=30 ;;
    dry)   F16_S=300; PEERS_S=60; CYCLE_S=300; DTYPE_S=300 ;;
esac
sweep sweep-f16 f16 ekv_f16.jsonl "$F16_S"
pack
PEERS_SECONDS=$(limit "$PEERS_S")
if [ "$PEERS_SECONDS" -lt 25 ]; then
    skip_step peers no "out of time: the check's ${DEADLINE} s deadline is near"
else
    # peers.py gets 10 s less than the step: it stops starting problems in time
    run_step peers no "$PEERS_SECONDS" env PYTHONUNBUFFERED=1 "$TORCH_PY" bench/peers.py \
        --problems "$R/ekv_f16.jsonl" --out "$R/peers.jsonl" --runs "$R/runs.jsonl" \
        --budget $((PEERS_SECONDS - 10))
fi
pack
sweep sweep-cycle cycle ekv_cycle.jsonl "$CYCLE_S"
pack
# last: its budget is what the deadline leaves, and its configurations run in priority order
sweep sweep-dtype-policy dtype-policy ekv_dtype_policy.jsonl "$DTYPE_S"
pack

# ---------------------------------------------------------------- phase 4: summary

DEADLINE=$((DEADLINE + FINAL_S))
run_step plots no 60 "$PLOT_PY" bench/gpu_summary.py plots "$R"
# the summary always runs (it takes a second or two), whatever the deadline left
DEADLINE=$((SECONDS - T0 + 60))
"$PY" - "$R/env.json" "$(elapsed)" <<'PYEOF'
import json, sys
with open(sys.argv[1], encoding="utf-8") as handle:
    env = json.load(handle)
env["elapsed_s"] = int(sys.argv[2])
with open(sys.argv[1], "w", encoding="utf-8") as handle:
    json.dump(env, handle, indent=1)
PYEOF
run_step summary yes 60 "$PY" bench/gpu_summary.py write "$R"
# summary.md was written before its own step was recorded: write it once more so that its
# table of steps is complete (the summary step itself included)
"$PY" bench/gpu_summary.py write "$R" >/dev/null 2>&1
pack

failed=$(awk -F'\t' 'NR > 1 && $2 == "yes" && ($3 == "FAIL" || $3 == "timeout") {print $1}' "$STEPS" | tr '\n' ' ')
echo
if [ -f "$R/summary.md" ]; then
    head -c 9000 "$R/summary.md"
    echo
fi
echo
if [ -n "$SCRATCH" ]; then
    echo "wrote into $OUT:"
    ls -l "$OUT" | awk 'NR > 1 {print "  " $NF "  (" $5 " bytes)"}'
    echo "  $NAME.tar.gz holds:"
    tar -tzf "$OUT/$NAME.tar.gz" | sed 's/^/    /'
    rm -rf "$SCRATCH"
else
    echo "wrote into $R:"
    (cd "$R" && find . -type f | sort | sed 's/^\.\//  /')
fi
if [ -n "$failed" ]; then
    echo "gpu_check.sh ($MODE): required step(s) failed: $failed($(elapsed) s)"
    exit 1
fi
echo "gpu_check.sh ($MODE): every required step passed or was skipped with its reason ($(elapsed) s)"
exit 0
