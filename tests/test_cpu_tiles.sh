#!/bin/sh
# tests/test_cpu_tiles.sh - bench/cpu_tiles (where the CPU kernel's time goes): a short run
# on the best path and on the portable one checks every dtype's functions against its
# double computation (the program exits 1 on a mismatch) and prints a row per dtype with
# an error below 1e-5; bad arguments give one line naming the flag and exit 2.
# Run from the repository root: sh tests/test_cpu_tiles.sh build/cpu_tiles
set -u
. tests/harness.sh
bin=${1:-build/cpu_tiles}

short_run() { # NAME ARGS...: exit 0, four dtype rows, each error below 1e-5
    name=$1; shift
    out=$("$bin" --mb=4 --reps=50 "$@" 2>&1)
    status=$?
    rows=$(printf '%s\n' "$out" | awk '$1 ~ /^(f32|f16|int8|int4)$/ && $NF + 0 < 1e-5 && $0 ~ / ns / { n++ } END { print n + 0 }')
    if [ "$status" -eq 0 ] && [ "$rows" -eq 4 ] && ! printf '%s' "$out" | grep -q FAILED; then
        pass "$name"
    else
        fail "$name" "status $status, $rows good rows: $out"
    fi
}
short_run "best path: four dtypes timed, each checked against the double computation"
short_run "portable path (decode, then the float functions)" --path=portable

bad() { # NAME EXPECTED-TEXT ARGS...
    name=$1; want=$2; shift 2
    err=$("$bin" "$@" 2>&1 >/dev/null)
    status=$?
    lines=$(printf '%s\n' "$err" | wc -l)
    if [ "$status" -eq 2 ] && [ "$lines" -eq 1 ] && printf '%s' "$err" | grep -q -- "$want"; then
        pass "bad input $name: exit 2, one line naming it"
    else
        fail "bad input $name" "status $status, stderr: $err"
    fi
}
bad "--group=0" "--group must be an integer in \[1, 64\]" --group=0
bad "--dim=100" "--dim must be a multiple of 32" --dim=100
bad "--mb=x" "--mb must be an integer" --mb=x
bad "--reps=" "--reps must be an integer" --reps=
bad "--path=nope" "--path must be one of: .*portable" --path=nope
bad "an unknown flag" "unknown argument '--bogus' (allowed: --group" --bogus
finish
