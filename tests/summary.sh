#!/usr/bin/env bash
# tests/summary.sh - adds up the suites recorded by tests/run_suite.sh and prints the
# closing line; exits 1 if anything failed.
set -u
f=${BUILD:-build}/logs/summary.txt
[ -f "$f" ] || { echo "0 passed, 1 failed"; exit 1; }
read -r p fl s < <(awk '{p+=$2; f+=$3; s+=$4} END {print p+0, f+0, s+0}' "$f")
# where the time went: the five slowest suites (seconds of wall time each)
echo "slowest suites: $(sort -k5,5nr "$f" | head -n 5 | awk '{printf "%s%s %ss", (NR>1 ? ", " : ""), $1, $5}')"
if [ "$s" -gt 0 ]; then echo "$p passed, $fl failed, $s skipped"; else echo "$p passed, $fl failed"; fi
[ "$fl" -eq 0 ]
