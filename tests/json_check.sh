#!/bin/sh
# json_check.sh - shows that every document tests/test_json.c writes with ekv's JSON
# writer is strict RFC 8259 that two independent parsers accept, and decodes to exactly
# the values written: Python's json module (strict: raw control characters, NaN and
# Infinity, duplicate keys and invalid UTF-8 all rejected) and `jq -e .`. Strings must
# equal the bytes given to the writer decoded as UTF-8 with ill-formed sequences
# replaced by U+FFFD; numbers must round-trip to the identical double (compared via
# the hex floats of the sidecar, sign of zero included); integers exactly.
#
# Run from the repository root:
#     sh tests/json_check.sh                 builds tests/test_json.c with $CC $CFLAGS
#     sh tests/json_check.sh ./test_json     uses a binary built some other way
# e.g. CFLAGS="-std=c99 -g -fsanitize=address,undefined -fno-sanitize-recover=all" sh tests/json_check.sh
# Prints PASS/FAIL/SKIP lines and last "N passed, N failed[, N skipped]" (the jq checks
# are skipped, saying how to install it, where jq is missing); exits 1 on any failure.
set -u

CC=${CC:-cc}
CFLAGS=${CFLAGS:-"-std=c99 -O2 -Wall -Wextra"}
PYTHON=${PYTHON:-python3}
work=$(mktemp -d "${TMPDIR:-/tmp}/ekv_json_check.XXXXXX") || exit 1
trap 'rm -rf "$work"' EXIT INT TERM

. tests/harness.sh

if [ $# -ge 1 ]; then
    binary=$1
else
    binary=$work/test_json
    # shellcheck disable=SC2086 # CFLAGS is a list of flags
    if ! $CC $CFLAGS -I. -o "$binary" tests/test_json.c -lm; then
        fail "build tests/test_json.c"
        finish
    fi
fi

mkdir "$work/out"
"$binary" "$work/out" >"$work/c.log" 2>&1
status=$?
# the C program's own cases, without its summary line
grep -v -E '^[0-9]+ passed, [0-9]+ failed' "$work/c.log"
c_passed=$(grep -c '^PASS' "$work/c.log")
c_failed=$(grep -c '^FAIL' "$work/c.log")
passed=$((passed + c_passed))
failed=$((failed + c_failed))
if [ "$status" -ne 0 ] && [ "$c_failed" -eq 0 ]; then
    fail "test_json exited with status $status"
fi

cat >"$work/check.py" <<'EOF'
import json, math, sys

json_path, expect_path = sys.argv[1], sys.argv[2]
raw = open(json_path, "rb").read()
errors = []

def reject_constant(name):
    raise ValueError("non-standard constant %s" % name)

def no_duplicates(pairs):
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ValueError("duplicate key")
    return dict(pairs)

text = raw.decode("utf-8")  # strict: the writer must emit valid UTF-8
if "\x7f" in text:
    errors.append("raw DEL byte in the output (must be escaped as \\u007f)")
value = json.loads(text, parse_constant=reject_constant, object_pairs_hook=no_duplicates,
                   strict=True)

def expected_component(component):
    if component.startswith("k"):
        key = bytes.fromhex(component[1:]).decode("utf-8", errors="replace")
        return ("k", key)
    return ("i", int(component[1:]))

expectations = {}
for line in open(expect_path, encoding="ascii"):
    fields = line.rstrip("\n").split("\t")
    path = tuple(expected_component(c) for c in fields[0].split("/")[1:])
    if path in expectations:
        errors.append("duplicate expectation %r" % (path,))
    expectations[path] = fields[1:]

seen = set()

def walk(node, path):
    seen.add(path)
    want = expectations.get(path)
    where = "/".join("%s" % (c[1],) for c in path) or "$"
    if want is None:
        errors.append("%s: unexpected value %r" % (where, node))
        return
    kind = want[0]
    if kind in ("o", "a"):
        container = dict if kind == "o" else list
        if not isinstance(node, container) or len(node) != int(want[1]):
            errors.append("%s: want %s of %s members, got %r" % (where, container.__name__, want[1], node))
            return
        items = node.items() if kind == "o" else enumerate(node)
        for k, child in items:
            walk(child, path + ((("k" if kind == "o" else "i"), k),))
    elif kind == "s":
        expected = bytes.fromhex(want[1]).decode("utf-8", errors="replace")
        if node != expected:
            errors.append("%s: want string %r, got %r" % (where, expected, node))
    elif kind == "d":
        expected = float.fromhex(want[1])
        ok = (isinstance(node, (int, float)) and not isinstance(node, bool)
              and float(node) == expected
              and math.copysign(1.0, float(node)) == math.copysign(1.0, expected))
        if not ok:
            errors.append("%s: want double %r (%s), got %r" % (where, expected, want[1], node))
    elif kind == "i":
        if type(node) is not int or node != int(want[1]):
            errors.append("%s: want integer %s, got %r" % (where, want[1], node))
    elif kind == "b":
        if node is not (want[1] == "1"):
            errors.append("%s: want %s, got %r" % (where, want[1] == "1", node))
    elif kind == "n":
        if node is not None:
            errors.append("%s: want null, got %r" % (where, node))
    else:
        errors.append("%s: bad expectation kind %r" % (where, kind))

walk(value, ())
missing = set(expectations) - seen
if missing:
    errors.append("%d expected values missing, e.g. %r" % (len(missing), sorted(missing)[0]))
for e in errors[:10]:
    print("  " + (e if len(e) <= 300 else e[:300] + "..."))
sys.exit(1 if errors else 0)
EOF

count=0
for file in "$work"/out/*.json; do
    [ -e "$file" ] || break
    count=$((count + 1))
    name=$(basename "$file" .json)
    if "$PYTHON" "$work/check.py" "$file" "$work/out/$name.expect"; then
        pass "python json (strict) decodes $name to the values written"
    else
        fail "python json (strict) decodes $name to the values written"
    fi
    if command -v jq >/dev/null 2>&1; then
        if jq -e . "$file" >/dev/null; then
            pass "jq parses $name"
        else
            fail "jq parses $name"
        fi
    else
        skip "jq parses $name" "jq is not installed (Debian/Ubuntu: sudo apt-get install jq, or make tools as root)"
    fi
done
if [ "$count" -lt 12 ]; then
    fail "expected 12 documents, found $count"
fi
finish
