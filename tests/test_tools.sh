#!/bin/sh
# tests/test_tools.sh - the system tools the tests use (jq) are installed only where that
# is possible, and their absence skips the checks that need them instead of stopping
# `make test`: `make tools` with jq missing, as a user who is not root and has no sudo,
# as root while apt-get fails (another apt holds its lock), and through sudo -n; and
# tests/json_check.sh without jq on the PATH.
# Run from the repository root: sh tests/test_tools.sh [build/t_test_json]
set -u
. tests/harness.sh

work=$(mktemp -d "${TMPDIR:-/tmp}/ekv_tools.XXXXXX") || exit 1
trap 'rm -rf "$work"' EXIT INT TERM
MAKE_BIN=$(command -v make)

# A PATH with stand-ins only: `id` says the uid of $FAKE_UID, apt-get records its call
# and fails as a locked apt does unless $FAKE_APT_OK is set, sudo (when present) runs
# its command; no jq.
stubs() {
    dir=$work/$1
    mkdir -p "$dir"
    printf '#!/bin/sh\necho "${FAKE_UID:-1000}"\n' >"$dir/id"
    printf '#!/bin/sh\necho "apt-get $*" >>"%s/apt.log"\nif [ -n "${FAKE_APT_OK:-}" ]; then exit 0; fi\necho "E: Could not get lock /var/lib/dpkg/lock-frontend" >&2\nexit 100\n' "$dir" >"$dir/apt-get"
    chmod +x "$dir/id" "$dir/apt-get"
    echo "$dir"
}

# make tools in a PATH of stand-ins; prints its output, returns make's status
make_tools() {
    env PATH="$1" "$MAKE_BIN" --no-print-directory -s tools 2>&1
}

dir=$(stubs user)
out=$(make_tools "$dir")
status=$?
if [ "$status" -eq 0 ] && printf '%s' "$out" | grep -q "sudo apt-get install jq" && [ ! -e "$dir/apt.log" ]; then
    pass "make tools, not root, no sudo: says how to install jq, runs no apt-get, does not fail"
else
    fail "make tools, not root, no sudo" "status $status, apt-get called: $(cat "$dir/apt.log" 2>/dev/null), output: $out"
fi

dir=$(stubs root)
out=$(FAKE_UID=0 make_tools "$dir")
status=$?
if [ "$status" -eq 0 ] && grep -q "^apt-get " "$dir/apt.log" 2>/dev/null &&
    printf '%s' "$out" | grep -q "could not install jq"; then
    pass "make tools as root while apt's lock is held: tries, reports, does not fail"
else
    fail "make tools as root, apt locked" "status $status, apt-get: $(cat "$dir/apt.log" 2>/dev/null), output: $out"
fi

dir=$(stubs sudo)
printf '#!/bin/sh\n[ "$1" = -n ] || exit 1\nshift\necho "sudo $*" >>"%s/sudo.log"\nexec "$@"\n' "$dir" >"$dir/sudo"
chmod +x "$dir/sudo"
printf '#!/bin/sh\nexit 0\n' >"$dir/true"
chmod +x "$dir/true"
out=$(FAKE_APT_OK=1 make_tools "$dir")
status=$?
if [ "$status" -eq 0 ] && grep -q "sudo apt-get install -y -qq jq" "$dir/sudo.log" 2>/dev/null && [ -z "$out" ]; then
    pass "make tools with password-less sudo: installs through sudo -n"
else
    fail "make tools with sudo -n" "status $status, sudo: $(cat "$dir/sudo.log" 2>/dev/null), output: $out"
fi

# json_check.sh without jq: its jq checks are skipped, counted and explained
binary=${1:-${BUILD:-build}/t_test_json}
if [ ! -x "$binary" ]; then
    skip "json_check.sh without jq" "$binary is not built (make $binary)"
else
    farm=$work/nojq
    mkdir -p "$farm"
    for tool in /usr/bin/* /bin/*; do
        name=$(basename "$tool")
        [ "$name" = jq ] || [ -e "$farm/$name" ] || ln -s "$tool" "$farm/$name"
    done
    python=${PYTHON:-$(command -v python3)}
    log=$work/json_check.log
    PATH=$farm PYTHON=$python sh tests/json_check.sh "$binary" >"$log" 2>&1
    status=$?
    last=$(tail -n 1 "$log")
    skips=$(grep -c '^SKIP jq parses .*: jq is not installed (Debian/Ubuntu: sudo apt-get install jq' "$log")
    if [ "$status" -eq 0 ] && [ "$skips" -ge 12 ] && printf '%s' "$last" | grep -qE "^[0-9]+ passed, 0 failed, $skips skipped$"; then
        pass "json_check.sh without jq: the jq checks skip, say how to install it, and count"
    else
        fail "json_check.sh without jq" "status $status, $skips skips, last line: $last" "$log"
    fi
fi
finish
