#!/usr/bin/env bash
# tests/tsan_run.sh PROGRAM [ARGS] - runs a ThreadSanitizer build; any TSan report is a
# failure even if the program's own checks passed. Repeats without address-space
# randomization when TSan cannot map its shadow memory on this kernel.
set -u
log=$(mktemp)
"$@" >"$log" 2>&1; status=$?
if grep -q "unexpected memory mapping\|FATAL: ThreadSanitizer" "$log" && command -v setarch >/dev/null; then
  setarch "$(uname -m)" -R "$@" >"$log" 2>&1; status=$?
fi
cat "$log"
if grep -q "WARNING: ThreadSanitizer" "$log"; then
  echo "FAIL ThreadSanitizer reported a race"; rm -f "$log"; exit 1
fi
rm -f "$log"; exit $status
