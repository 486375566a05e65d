#!/usr/bin/env bash
# tests/check_cmd.sh NAME CMD... - one check that is just a command (a build): PASS when
# it exits 0, else FAIL with its output; prints the closing "N passed, N failed" line.
set -u
name=$1; shift
if out=$("$@" 2>&1); then echo "PASS $name"; echo "1 passed, 0 failed"; exit 0; fi
echo "FAIL $name"; echo "$out" | tail -n 30; echo "0 passed, 1 failed"; exit 1
