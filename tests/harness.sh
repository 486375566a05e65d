# tests/harness.sh - the one PASS/FAIL/SKIP harness of ekv's shell tests. Source it
# (POSIX sh or bash), call pass/fail/skip/check/run, end with finish: it prints the
# closing "N passed, N failed[, N skipped]" line and exits 1 when anything failed.
#   check NAME CMD...   PASS when CMD exits 0, else FAIL with the first lines of its output
#   run NAME CMD...     the same, with the output kept in $HARNESS_LOGS/NAME.log
passed=0
failed=0
skipped=0
HARNESS_LOGS=${HARNESS_LOGS:-${BUILD:-build}/logs}

pass() { echo "PASS $1"; passed=$((passed + 1)); }
skip() { echo "SKIP $1: $2"; skipped=$((skipped + 1)); }
# fail NAME [WHY] [LOG]: the last lines of LOG are shown when it exists
fail() {
    echo "FAIL $1${2:+: $2}"
    failed=$((failed + 1))
    if [ -n "${3:-}" ] && [ -f "$3" ]; then tail -n 15 "$3" | sed 's/^/    /'; fi
}
check() {
    harness_name=$1
    shift
    if harness_out=$("$@" 2>&1); then
        pass "$harness_name"
    else
        fail "$harness_name"
        printf '%s\n' "$harness_out" | tail -n 20 | sed 's/^/    /'
    fi
}
run() {
    harness_name=$1
    shift
    mkdir -p "$HARNESS_LOGS"
    if "$@" >"$HARNESS_LOGS/$harness_name.log" 2>&1; then
        pass "$harness_name"
    else
        fail "$harness_name" "exit status $?" "$HARNESS_LOGS/$harness_name.log"
    fi
}
finish() {
    if [ "$skipped" -gt 0 ]; then
        echo "$passed passed, $failed failed, $skipped skipped"
    else
        echo "$passed passed, $failed failed"
    fi
    [ "$failed" -eq 0 ]
    exit $?
}
