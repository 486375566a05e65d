#!/usr/bin/env bash
# tests/run_suite.sh NAME CMD... - runs one test suite, keeps its log under ${BUILD:-build}/logs/,
# and records its closing "N passed, N failed[, N skipped]" line for tests/summary.sh.
# A suite that exits non-zero without reporting a failure counts as one failure.
set -u
name=$1; shift
mkdir -p "${BUILD:-build}/logs"
log=${BUILD:-build}/logs/$name.log
start=$(date +%s)
"$@" >"$log" 2>&1
status=$?
seconds=$(( $(date +%s) - start ))
line=$(grep -E '^([A-Za-z_]+: )?[0-9]+ passed, [0-9]+ failed(, [0-9]+ skipped)?$' "$log" | tail -n 1)
passed=0; failed=0; skipped=0
if [ -n "$line" ]; then
  passed=$(grep -oE '[0-9]+ passed' <<<"$line" | grep -oE '[0-9]+')
  failed=$(grep -oE '[0-9]+ failed' <<<"$line" | grep -oE '[0-9]+')
  skipped=$(grep -oE '[0-9]+ skipped' <<<"$line" | grep -oE '[0-9]+' || echo 0)
fi
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi
if [ -z "$line" ] && [ "$status" -eq 0 ]; then failed=1; echo "  (no closing line)" >>"$log"; fi
grep -E '^(FAIL|SKIP)' "$log" | sed "s/^/  [$name] /"
if [ "$failed" -gt 0 ]; then
  echo "  [$name] exit status $status; last lines of $log:"; tail -n 15 "$log" | sed 's/^/    /'
fi
printf '%-28s %4d passed, %d failed, %d skipped  (%d s)\n' "$name" "$passed" "$failed" "$skipped" "$seconds"
echo "$name $passed $failed $skipped $seconds" >>"${BUILD:-build}/logs/summary.txt"
exit 0
