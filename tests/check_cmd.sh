#!/usr/bin/env bash
# tests/check_cmd.sh NAME CMD... - one check that is just a command (a build): PASS when
# it exits 0, else FAIL with its output; prints the closing "N passed, N failed" line.
set -u
. "$(dirname "$0")/harness.sh"
check "$@"
finish
