#!/usr/bin/env bash
# tests/test_examples.sh - the examples build with the exact lines their headers give (and
# as C++), and do what they say: accuracy_cpu's table is complete and sane; own_data reads
# .npz and .npy directories made by numpy, agrees with numpy on the attention profile and
# rejects malformed input with one clear line and a non-zero exit; quickstart.cu builds
# with nvcc (without -lcublas) and runs on the CPU execution emulator (and on a GPU when
# one is visible); the notebooks (the tutorial, and one's own q/k/v through every policy
# and dtype) run headless through the Python module without an error and without a
# subprocess, and the committed ones have no outputs and match their generators.
#
#     tests/test_examples.sh          from the repository root; outputs in $BUILD/examples
#
# Prints PASS/FAIL/SKIP per check and "N passed, N failed[, N skipped]"; exits 1 on failure.
set -u
cd "$(dirname "$0")/.." || exit 2
BUILD=${BUILD:-build}
OUT=$BUILD/examples
PY=.venv/bin/python
mkdir -p "$OUT"
HARNESS_LOGS=$OUT
. tests/harness.sh
# doc_line FILE WORD: the build line in FILE's header comment that starts with WORD
doc_line() {
    awk -v word="$2 " '{
        line = $0
        sub(/^[[:space:]]*(Build:)?[[:space:]]*/, "", line)
        sub(/[[:space:]]*\*\/[[:space:]]*$/, "", line)
        if (index(line, word) == 1) { print line; exit }
    }' "$1"
}
# f_lt A B: A < B for numbers in any notation awk reads
f_lt() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a + 0 < b + 0) }'; }

have_python=0
if [ -x "$PY" ] && "$PY" -c 'import numpy' 2>/dev/null; then have_python=1; fi

# ---- builds, exactly as documented (output redirected into $OUT) ------------------------

for example in accuracy_cpu own_data; do
    line=$(doc_line "examples/$example.c" cc)
    case $line in *"-o $example "*) ;; *) line="";; esac
    if [ -z "$line" ]; then
        fail "build-$example-c99" "no 'cc ... -o $example ...' build line in the header of examples/$example.c"
        continue
    fi
    case $line in *"-std=c99 -pedantic -Wall -Wextra -Werror"*) ;;
        *) fail "build-$example-doc-line" "the documented line lacks -std=c99 -pedantic -Wall -Wextra -Werror: $line";;
    esac
    # shellcheck disable=SC2086  # the documented line is split into words on purpose
    run "build-$example-c99" ${line/-o $example /-o $OUT/$example }
    run "build-$example-c++" g++ -Wall -Wextra -Werror -O1 -I. -x c++ -o "$OUT/${example}_cxx" "examples/$example.c"
done

# ---- accuracy_cpu ----------------------------------------------------------------------

if [ -x "$OUT/accuracy_cpu" ]; then
    log=$OUT/accuracy_cpu.out
    if "$OUT/accuracy_cpu" 512 64 >"$log" 2>&1; then
        # rows: policy C dtype slots KiB smaller rel_l2 max_abs cosine
        rows=$(awk '$1 ~ /^(none|stride|pool|window|topk)$/ && NF == 9' "$log" | wc -l)
        if grep -q '^policy   C  dtype' "$log" && [ "$rows" -eq 78 ]; then
            pass "accuracy_cpu-table"
        else
            fail "accuracy_cpu-table" "expected the header and 78 rows (6 none + 4 policies x 3 C x 6 dtypes), got $rows" "$log"
        fi
        value() { awk -v p="$1" -v c="$2" -v d="$3" '$1 == p && $2 == c && $3 == d { print $7 }' "$log"; }
        exact=$(value none 1 f32)
        if [ -n "$exact" ] && f_lt "$exact" 1e-6; then pass "accuracy_cpu-f32-none-exact"
        else fail "accuracy_cpu-f32-none-exact" "rel_l2 of f32 none C=1 is '$exact', expected < 1e-6" "$log"; fi
        s2=$(value stride 2 f16) s8=$(value stride 8 f16) t2=$(value topk 2 f16)
        if [ -n "$s2" ] && [ -n "$s8" ] && f_lt "$s2" "$s8"; then pass "accuracy_cpu-stride-grows-with-C"
        else fail "accuracy_cpu-stride-grows-with-C" "stride f16: C=2 $s2, C=8 $s8" "$log"; fi
        if [ -n "$t2" ] && f_lt "$t2" "$s2"; then pass "accuracy_cpu-topk-beats-stride"
        else fail "accuracy_cpu-topk-beats-stride" "f16 C=2: topk $t2, stride $s2" "$log"; fi
        # quantization alone: f16 < int8 < int4, all small; bytes shrink as documented
        f16=$(value none 1 f16) i8=$(value none 1 int8) i4=$(value none 1 int4)
        smaller=$(awk '$1 == "stride" && $2 == 8 && $3 == "f16" { print $6 }' "$log")
        if f_lt "$f16" "$i8" && f_lt "$i8" "$i4" && f_lt "$i4" 0.1 && [ "$smaller" = "16.00x" ]; then
            pass "accuracy_cpu-dtypes"
        else
            fail "accuracy_cpu-dtypes" "none C=1: f16 $f16, int8 $i8, int4 $i4; stride C=8 f16 smaller $smaller" "$log"
        fi
        bad=$(awk '$1 ~ /^(none|stride|pool|window|topk)$/ && NF == 9 &&
                   !($7 + 0 >= 0 && $7 + 0 < 10 && $9 + 0 > -1.0001 && $9 + 0 < 1.0001) { print }' "$log" | head -n 3)
        if [ -z "$bad" ]; then pass "accuracy_cpu-values-finite"; else fail "accuracy_cpu-values-finite" "$bad"; fi
    else
        fail "accuracy_cpu-run" "exit status $?" "$log"
    fi
    "$OUT/accuracy_cpu" 0 >"$OUT/accuracy_cpu_bad.log" 2>&1
    status=$?
    if [ "$status" -eq 2 ] && grep -q '^usage:' "$OUT/accuracy_cpu_bad.log"; then pass "accuracy_cpu-bad-arg"
    else fail "accuracy_cpu-bad-arg" "exit status $status, expected 2 with a usage line" "$OUT/accuracy_cpu_bad.log"; fi
else
    fail "accuracy_cpu-run" "not built"
fi

# ---- own_data on numpy-made input ----------------------------------------------------

if [ "$have_python" -eq 0 ]; then
    skip "own_data-inputs" "no $PY with numpy (make venv)"
elif [ ! -x "$OUT/own_data" ]; then
    fail "own_data-run" "not built"
else
    data=$OUT/own_data_inputs
    rm -rf "$data" && mkdir -p "$data/dir" "$data/bad_dir"
    # Writes the inputs and, for each, numpy's attention entropy and top-5% mass.
    if "$PY" - "$data" >"$OUT/own_data_inputs.log" 2>&1 <<'EOF'
import math
import sys
from pathlib import Path

import numpy as np

out = Path(sys.argv[1])
rng = np.random.default_rng(7)
B, H, HKV, S, D = 2, 8, 2, 300, 64
group = H // HKV
q = rng.standard_normal((B, H, D)).astype(np.float32)
k = rng.standard_normal((B, HKV, S, D)).astype(np.float32)
v = rng.standard_normal((B, HKV, S, D)).astype(np.float32)
for b in range(B):  # heavy hitters: a few keys aligned with their group's queries
    for h in range(HKV):
        for t in rng.choice(S, 12, replace=False):
            k[b, h, t] += 1.5 * q[b, h * group:(h + 1) * group].mean(0)
q_observe = (q[:, :, None, :] + 0.3 * rng.standard_normal((B, H, 16, D))).astype(np.float32)


def profile(q, k):
    q, k = q.astype(np.float64), k.astype(np.float64)
    entropy, mass, top = [], [], max(1, math.ceil(0.05 * S))
    for b in range(B):
        for h in range(H):
            logits = k[b, h // group] @ q[b, h] / math.sqrt(D)
            p = np.exp(logits - logits.max())
            p /= p.sum()
            entropy.append(-(p * np.log(p)).sum())
            mass.append(np.sort(p)[-top:].sum())
    return f"{np.mean(entropy):.6f} {np.mean(mass):.6f}"


np.savez(out / "data.npz", q=q, k=k, v=v, q_observe=q_observe)
(out / "data.expected").write_text(profile(q, k))
for name, array in (("q", q), ("k", k), ("v", v)):
    np.save(out / "dir" / f"{name}.npy", array.astype(np.float16))
(out / "dir.expected").write_text(profile(q.astype(np.float16), k.astype(np.float16)))
# malformed inputs
(out / "garbage.npz").write_bytes(b"this is not a zip archive\n")
np.save(out / "bad_dir" / "q.npy", q)
np.save(out / "bad_dir" / "k.npy", k)
(out / "bad_dir" / "v.npy").write_bytes((out / "bad_dir" / "k.npy").read_bytes()[:300])
np.savez(out / "mismatch.npz", q=q, k=k, v=v[:, :, :-1])
np.savez(out / "heads.npz", q=q[:, :5], k=k, v=v)
np.savez(out / "lonely.npz", q=q)
np.savez_compressed(out / "compressed.npz", q=q, k=k, v=v)
EOF
    then
        pass "own_data-inputs"
        # check_own_data INPUT DTYPE NAME EXPECTED OBSERVE: the table, the profile against
        # numpy's (EXPECTED.expected), and which queries topk observes
        check_own_data() {
            local input=$1 dtype=$2 name=$3 expected=$4 observe=$5 log rows none
            local want_entropy want_mass got_entropy got_mass
            log=$OUT/$name.out
            if ! "$OUT/own_data" "$input" "$dtype" >"$log" 2>&1; then
                fail "$name" "exit status $?" "$log"
                return
            fi
            rows=$(awk '$1 ~ /^(none|stride|pool|window|topk)$/ && NF == 8' "$log" | wc -l)
            none=$(awk '$1 == "none" && $2 == 1 { print $6 }' "$log")
            read -r want_entropy want_mass <"$expected.expected"
            got_entropy=$(sed -nE 's/^attention entropy ([0-9.]+) nats.*/\1/p' "$log")
            got_mass=$(sed -nE 's/.*top-5% mass ([0-9.]+) .*/\1/p' "$log")
            if [ "$rows" -ne 13 ]; then
                fail "$name" "expected 13 rows (none + 4 policies x 3 C), got $rows" "$log"
            elif ! f_lt "$none" 0.05; then
                fail "$name" "none C=1 $dtype rel_l2 $none, expected < 0.05" "$log"
            elif ! awk -v a="$got_entropy" -v b="$want_entropy" -v c="$got_mass" -v d="$want_mass" \
                    'BEGIN { exit !(a - b < 2e-3 && b - a < 2e-3 && c - d < 2e-3 && d - c < 2e-3) }'; then
                fail "$name" "profile $got_entropy/$got_mass, numpy $want_entropy/$want_mass" "$log"
            elif ! grep -q "^topk observes $observe" "$log"; then
                fail "$name" "expected 'topk observes $observe'" "$log"
            else
                pass "$name"
            fi
        }
        check_own_data "$data/data.npz" int8 own_data-npz "$data/data" "the q_observe of the data"
        check_own_data "$data/dir" bf16 own_data-npy-dir "$data/dir" "copies of q"
        # malformed input: exit 2, one line on stderr that names the problem, no table
        check_rejected() {
            local name=$1 input=$2 pattern=$3 log=$OUT/$1.err status
            "$OUT/own_data" "$input" >"$OUT/$name.stdout" 2>"$log"
            status=$?
            if [ "$status" -eq 2 ] && [ "$(wc -l <"$log")" -eq 1 ] && grep -q "^own_data: .*$pattern" "$log" &&
               [ ! -s "$OUT/$name.stdout" ]; then
                pass "$name"
            else
                fail "$name" "exit status $status, expected 2 and one line matching '$pattern'" "$log"
            fi
        }
        check_rejected own_data-rejects-garbage "$data/garbage.npz" "not a .npz archive"
        check_rejected own_data-rejects-truncated "$data/bad_dir" "truncated"
        check_rejected own_data-rejects-shape "$data/mismatch.npz" "v must have the shape of k"
        check_rejected own_data-rejects-heads "$data/heads.npz" "do not divide"
        check_rejected own_data-rejects-missing "$data/lonely.npz" "no member k.npy"
        check_rejected own_data-rejects-compressed "$data/compressed.npz" "np.savez"
        check_rejected own_data-rejects-nothing "$data/does-not-exist" "cannot open"
        "$OUT/own_data" "$data/data.npz" int3 >/dev/null 2>"$OUT/own_data_dtype.err"
        status=$?
        if [ "$status" -eq 2 ] && grep -q '^usage:' "$OUT/own_data_dtype.err"; then pass "own_data-rejects-dtype"
        else fail "own_data-rejects-dtype" "exit status $status, expected 2 with a usage line" "$OUT/own_data_dtype.err"; fi
    else
        fail "own_data-inputs" "numpy could not write the inputs" "$OUT/own_data_inputs.log"
    fi
fi

# ---- quickstart.cu ---------------------------------------------------------------------

# quickstart prints "... 1024 of 4096 tokens kept ..." and its errors vs both references
check_quickstart_output() {
    local name=$1 log=$2 total kernel
    total=$(sed -nE 's/^vs full reference: rel_l2 ([0-9.e+-]+) .*/\1/p' "$log")
    kernel=$(sed -nE 's/^vs same cache: +rel_l2 ([0-9.e+-]+) .*/\1/p' "$log")
    if grep -q "1024 of 4096 tokens kept" "$log" && [ -n "$total" ] && [ -n "$kernel" ] &&
       f_lt "$kernel" 1e-4 && f_lt "$kernel" "$total" && f_lt "$total" 0.2; then
        pass "$name"
    else
        fail "$name" "expected 1024 of 4096 kept, kernel rel_l2 < 1e-4 < total < 0.2 (got '$kernel', '$total')" "$log"
    fi
}

NVCC=$(command -v nvcc || { [ -x /usr/local/cuda/bin/nvcc ] && echo /usr/local/cuda/bin/nvcc; })
nvcc_line=$(doc_line examples/quickstart.cu nvcc)
case $nvcc_line in *"-o quickstart "*) ;; *) nvcc_line="";; esac
if [ -z "$nvcc_line" ]; then
    fail "quickstart-nvcc" "no 'nvcc ... -o quickstart ...' build line in the header of examples/quickstart.cu"
elif [ -z "$NVCC" ]; then
    skip "quickstart-nvcc" "no nvcc"
elif nvidia-smi -L >/dev/null 2>&1; then
    nvcc_line=${nvcc_line#nvcc }
    # shellcheck disable=SC2086  # the documented line is split into words on purpose
    run "quickstart-nvcc" "$NVCC" ${nvcc_line/-o quickstart /-o $OUT/quickstart }
    if [ -x "$OUT/quickstart" ] && "$OUT/quickstart" >"$OUT/quickstart-gpu.out" 2>&1; then
        check_quickstart_output "quickstart-gpu" "$OUT/quickstart-gpu.out"
    else
        fail "quickstart-gpu" "did not run" "$OUT/quickstart-gpu.out"
    fi
else
    # no GPU: the documented line builds and links (EKV_NO_BENCH: no -lcublas needed)
    nvcc_line=${nvcc_line#nvcc }
    # shellcheck disable=SC2086
    run "quickstart-nvcc" "$NVCC" ${nvcc_line/-o quickstart /-o $OUT/quickstart }
    skip "quickstart-gpu" "no GPU visible (nvidia-smi -L)"
fi

if [ -f tests/emu/include/cuda_runtime.h ]; then
    emu_line=$(doc_line examples/quickstart.cu g++)
    case $emu_line in *"-o quickstart "*) ;; *) emu_line="";; esac
    if [ -z "$emu_line" ]; then
        fail "quickstart-emulator-build" "no 'g++ ...' emulator build line in examples/quickstart.cu"
    else
        # shellcheck disable=SC2086
        run "quickstart-emulator-build" ${emu_line/-o quickstart /-Wall -Wextra -Werror -o $OUT/quickstart_emu }
        if [ -x "$OUT/quickstart_emu" ] && "$OUT/quickstart_emu" >"$OUT/quickstart-emulator.out" 2>&1; then
            check_quickstart_output "quickstart-emulator" "$OUT/quickstart-emulator.out"
        else
            fail "quickstart-emulator" "did not run" "$OUT/quickstart-emulator.out"
        fi
    fi
else
    skip "quickstart-emulator" "tests/emu/include is not there"
fi

# ---- the notebooks ------------------------------------------------------------------------

# check_notebook NAME NOTEBOOK GENERATOR CHECKS: committed without outputs and the same as its
# generator writes, then run headless in examples/ (kernel "python3" is the venv's own
# ipykernel: jupyter_client starts a python3 kernel with the running interpreter); CHECKS is
# Python run on the executed cells (errors, figures, text).
check_notebook() {
    local name=$1 notebook=$2 generator=$3 checks=$4
    if "$PY" - "$notebook" >"$OUT/$name-clean.log" 2>&1 <<'EOF'
import sys
import nbformat
nb = nbformat.read(sys.argv[1], as_version=4)
nbformat.validate(nb)
dirty = [i for i, c in enumerate(nb.cells)
         if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]
sys.exit(f"cells with outputs: {dirty}" if dirty else 0)
EOF
    then pass "$name-committed-clean"; else fail "$name-committed-clean" "" "$OUT/$name-clean.log"; fi
    if "$PY" "$generator" "$OUT/$name.regenerated.ipynb" >"$OUT/$name-regen.log" 2>&1 &&
       cmp -s "$OUT/$name.regenerated.ipynb" "$notebook"; then
        pass "$name-matches-generator"
    else
        fail "$name-matches-generator" "run .venv/bin/python $generator and commit the result" "$OUT/$name-regen.log"
    fi
    if BUILD="$BUILD" "$PY" - "$notebook" "$OUT/$name.executed.ipynb" "$checks" >"$OUT/$name-run.log" 2>&1 <<'EOF'
import sys
from pathlib import Path

import nbclient
import nbformat

source, executed, checks = sys.argv[1:]
nb = nbformat.read(source, as_version=4)
client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                 resources={"metadata": {"path": str(Path(source).parent)}})
try:
    client.execute()
finally:
    nbformat.write(nb, executed)
errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
figures = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
sources = "".join(c.source for c in nb.cells if c.cell_type == "code")
print(f"errors {len(errors)}, figures {figures}")
assert not errors, errors
assert "subprocess" not in sources, "the notebook runs ekv in process, through the module"
exec(checks)
EOF
    then pass "$name-runs"; else fail "$name-runs" "see $OUT/$name-run.log" "$OUT/$name-run.log"; fi
}

if [ "$have_python" -eq 0 ] || ! "$PY" -c 'import nbclient, nbformat, ipykernel' 2>/dev/null; then
    skip "notebooks" "no $PY with nbclient, nbformat and ipykernel (make venv)"
elif ! "$PY" -c 'import ekv' 2>/dev/null; then
    fail "notebooks" "no ekv module in $PY: install it with .venv/bin/pip install ./"
else
    EKV_TUTORIAL_FAST=1 check_notebook tutorial examples/ekv_tutorial.ipynb examples/make_tutorial.py '
assert figures == 5, f"expected 5 figures, got {figures}"
assert "48 results" in text, "the fast sweep should give 48 results"
assert "6 cycle results" in text, "the inference-cycle cell should run the six variants"
for policy in ("stride", "pool", "window", "topk"):
    assert f"\n{policy} " in text, f"the stored-cache cell should report {policy}"
'
    # without EKV_OWN_DATA it makes its stand-in data from ekv.generate
    unset EKV_OWN_DATA
    check_notebook own-data examples/ekv_own_data.ipynb examples/make_own_data.py '
assert figures == 2, f"expected 2 figures, got {figures}"
assert "78 configurations" in text, "6 dtypes x (none + 4 policies x 3 ratios)"
assert "a stand-in from ekv.generate" in text
'
fi

# ---- summary -----------------------------------------------------------------------------

finish
