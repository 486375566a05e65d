#!/usr/bin/env bash
# tests/test_gpu_check.sh - bench/gpu_check.sh --dry-run, and what it wrote: the script runs
# every step it can without a GPU (the emulator build, the three sweeps, the peers, figures,
# summary, packing into $OUT), records the GPU-only steps as skipped with their reason, and
# leaves results that parse (Python's json and jq), hold exactly the planned configurations
# (bench/gpu_plan.py list ... --mode dry) and a summary with every section. Also: every
# command line the full and quick checks would give ekv_bench parses (the CLI's own parser,
# through --help placed last), and a failing ekv_bench (EKV_BENCH=a stub that exits 1)
# makes the check exit 1 with the failures in steps.tsv, runs.jsonl and summary.md.
#
#     tests/test_gpu_check.sh          from the repository root (make emu is run by the check)
#
# Prints PASS/FAIL/SKIP per check and "N passed, N failed[, N skipped]"; exits 1 on failure.
set -u
cd "$(dirname "$0")/.." || exit 2
BUILD=${BUILD:-build}
export BUILD
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ekv_test_gpu_check.XXXXXX")
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
passed=0 failed=0 skipped=0

pass() { echo "PASS $1"; passed=$((passed + 1)); }
skip() { echo "SKIP $1: $2"; skipped=$((skipped + 1)); }
fail() {
    echo "FAIL $1${2:+: $2}"
    failed=$((failed + 1))
    if [ -n "${3:-}" ] && [ -f "$3" ]; then tail -n 20 "$3" | sed 's/^/    /'; fi
}
# check NAME CMD...: PASS when CMD exits 0, else FAIL with its output
check() {
    local name=$1 out; shift
    if out=$("$@" 2>&1); then pass "$name"; else fail "$name" "$(echo "$out" | tail -n 8)"; fi
}

# ---------------------------------------------------------------- arguments

if bench/gpu_check.sh --help >"$WORK/help.txt" 2>&1 && grep -q -- '--dry-run' "$WORK/help.txt"; then
    pass "--help exits 0 and describes --dry-run"
else
    fail "--help exits 0 and describes --dry-run" "" "$WORK/help.txt"
fi
bench/gpu_check.sh --bogus >"$WORK/bogus.txt" 2>&1
code=$?
if [ "$code" -eq 2 ] && grep -q "unknown argument '--bogus'" "$WORK/bogus.txt"; then
    pass "an unknown argument: exit 2 naming it"
else
    fail "an unknown argument: exit 2 naming it" "exit $code" "$WORK/bogus.txt"
fi

# ---------------------------------------------------------------- the dry run

OUT_DIR=$WORK/out
began=$SECONDS
OUT=$OUT_DIR bench/gpu_check.sh --dry-run >"$WORK/console.log" 2>&1
code=$?
wall=$((SECONDS - began))
echo "dry run: ${wall} s, exit $code"
if [ "$code" -eq 0 ] && tail -n 1 "$WORK/console.log" | grep -q 'every required step passed'; then
    pass "the dry run exits 0 and says every required step passed"
else
    fail "the dry run exits 0 and says every required step passed" "exit $code" "$WORK/console.log"
fi
# a runaway bound, far above the expected minute, so that a hang or a sweep grown by
# mistake fails here instead of slowing every make test
if [ "$wall" -lt 300 ]; then pass "the dry run ends within 300 s (took $wall s)"; else
    fail "the dry run ends within 300 s" "took $wall s"; fi
if grep -q "wrote into $OUT_DIR" "$WORK/console.log"; then pass "it prints what it wrote"; else
    fail "it prints what it wrote" "" "$WORK/console.log"; fi

archives=("$OUT_DIR"/*.tar.gz)
top_count=$(find "$OUT_DIR" -mindepth 1 | wc -l)
if [ -f "${archives[0]}" ] && [ "${#archives[@]}" -eq 1 ] && [ -f "$OUT_DIR/summary.md" ] &&
   [ -f "$OUT_DIR/steps.tsv" ] && [ "$top_count" -eq 3 ]; then
    pass "\$OUT holds summary.md, steps.tsv and one archive (the device tool returns 8 files)"
else
    fail "\$OUT holds summary.md, steps.tsv and one archive" "$(ls -A "$OUT_DIR" 2>&1 | tr '\n' ' ')"
fi
mkdir -p "$WORK/unpacked"
R=""
if tar -xzf "${archives[0]}" -C "$WORK/unpacked" 2>"$WORK/tar.log"; then
    R=$(find "$WORK/unpacked" -mindepth 1 -maxdepth 1 -type d | head -n 1)
    pass "the archive unpacks into one folder ($(basename "$R"))"
else
    fail "the archive unpacks" "" "$WORK/tar.log"
fi
R=${R:-$WORK/unpacked/missing}
if cmp -s "$R/summary.md" "$OUT_DIR/summary.md" && cmp -s "$R/steps.tsv" "$OUT_DIR/steps.tsv"; then
    pass "summary.md and steps.tsv beside the archive are the archived ones"
else
    fail "summary.md and steps.tsv beside the archive are the archived ones"
fi
missing=""
for f in env.json env.txt steps.tsv runs.jsonl ekv_f16.jsonl ekv_dtype_policy.jsonl ekv_cycle.jsonl \
         summary.md logs/sweep-f16.log logs/sweep-dtype-policy.log logs/sweep-cycle.log logs/peers.log; do
    [ -s "$R/$f" ] || missing="$missing $f"
done
if [ -z "$missing" ]; then pass "the results folder holds every expected file"; else
    fail "the results folder holds every expected file" "missing:$missing"; fi

# ---------------------------------------------------------------- JSON lines

cat >"$WORK/check_results.py" <<'PYEOF'
"""Checks the dry run's JSONL against the dry plan; prints one line per problem, exits 1."""
import json
import subprocess
import sys

results, python = sys.argv[1], sys.argv[2]
problems = []


def lines(name):
    rows = []
    with open(f"{results}/{name}", encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            try:
                rows.append(json.loads(line))
            except ValueError as error:
                problems.append(f"{name}:{number}: not JSON ({error})")
    return rows


def planned(sweep):
    out = subprocess.run([python, "bench/gpu_plan.py", "list", sweep, "--mode", "dry",
                          "--backend", "emulator", "--json"], capture_output=True, text=True,
                         check=True).stdout
    return [json.loads(line)["config"] for line in out.splitlines()]


def key(c, names):
    return tuple(c.get(n) for n in names)


FLAGS = ("seq", "batch", "heads", "kv-heads", "dim", "kv-dtype", "policy", "compress")
JSON = ("seq_len", "batch", "heads", "kv_heads", "head_dim", "kv_dtype", "policy", "compression")
for name, sweep in (("ekv_f16.jsonl", "f16"), ("ekv_dtype_policy.jsonl", "dtype-policy"),
                    ("ekv_cycle.jsonl", "cycle")):
    rows, plan = lines(name), planned(sweep)
    want = sorted(key(c, FLAGS) for c in plan)
    got = sorted(key(r["configuration"], JSON) for r in rows)
    if want != got:
        problems.append(f"{name}: configurations {got} != the dry plan's {want}")
    for r in rows:
        c = r["configuration"]
        where = f"{name} {key(c, JSON)}"
        if r.get("backend") != "emulator":
            problems.append(f"{where}: backend {r.get('backend')!r}, expected emulator")
        if sweep != "cycle":
            if len(r.get("samples_ms") or []) != c["reps"]:
                problems.append(f"{where}: {len(r.get('samples_ms') or [])} samples, reps {c['reps']}")
            if not isinstance((r.get("metrics") or {}).get("bytes_total"), (int, float)):
                problems.append(f"{where}: no metrics.bytes_total")
        if sweep == "dtype-policy":
            ci = (r.get("baseline") or {}).get("speedup_ci95") or {}
            if not (isinstance(ci.get("lo"), float) and ci["lo"] <= ci["hi"]):
                problems.append(f"{where}: baseline.speedup_ci95 {ci}")
            if not isinstance(r["accuracy"]["error_total"]["rel_l2"], float):
                problems.append(f"{where}: no accuracy.error_total.rel_l2")
        if sweep == "cycle":
            variants = [v.get("variant") for v in r["inference_cycle"].get("variants", [])]
            if sorted(variants) != sorted(["nocache", "cache", "int8", "shared", "int8-shared",
                                           "elastic"]):
                problems.append(f"{where}: variants {variants}")
runs = lines("runs.jsonl")
total = sum(len(planned(s)) for s in ("f16", "dtype-policy", "cycle"))
ok = [r for r in runs if r.get("sweep") in ("f16", "dtype-policy", "cycle") and r["status"] == "ok"]
if len(ok) != total:
    problems.append(f"runs.jsonl: {len(ok)} configurations ok, {total} planned: "
                    f"{[r for r in runs if r['status'] != 'ok']}")
for problem in problems:
    print(problem)
print(f"{len(problems)} problem(s)")
sys.exit(1 if problems else 0)
PYEOF
check "every JSONL line parses and the sweeps hold exactly the dry plan's configurations, all ok" \
    "$PY" "$WORK/check_results.py" "$R" "$PY"
if command -v jq >/dev/null 2>&1; then
    bad=""
    for f in "$R"/*.jsonl; do
        lines_json=$(jq -c . "$f" 2>/dev/null | wc -l)
        lines_file=$(grep -c . "$f")
        [ "$lines_json" -eq "$lines_file" ] || bad="$bad $(basename "$f")"
    done
    if [ -z "$bad" ]; then pass "jq reads every line of every JSONL file"; else
        fail "jq reads every line of every JSONL file" "$bad"; fi
else
    skip "jq reads every JSONL line" "jq not installed (make tools)"
fi

# ---------------------------------------------------------------- steps

cat >"$WORK/check_steps.py" <<'PYEOF'
"""steps.tsv of the dry run: every step once, none failed, GPU steps skipped with reasons."""
import sys

steps = {}
with open(sys.argv[1], encoding="utf-8") as handle:
    header = handle.readline().rstrip("\n").split("\t")
    for line in handle:
        row = dict(zip(header, line.rstrip("\n").split("\t")))
        if row["step"] in steps:
            print(f"step {row['step']} recorded twice")
        steps[row["step"]] = row
expected = ["env", "build-emulator", "build-ekv_bench", "build-test_gpu", "build-test_cache_gpu",
            "test_gpu", "test_cache_gpu", "memcheck-attention", "memcheck-cycle",
            "racecheck-attention", "racecheck-cycle", "sass-model", "ncu-f16", "ncu-int4",
            "sweep-f16", "peers", "sweep-cycle", "sweep-dtype-policy", "plots", "summary"]
problems = [f"missing step {s}" for s in expected if s not in steps]
problems += [f"unexpected step {s}" for s in steps if s not in expected]
for name, row in steps.items():
    if row["status"] in ("FAIL", "timeout"):
        problems.append(f"{name}: {row['status']} {row['note']}")
for name in expected[2:14]:
    row = steps.get(name, {})
    if row.get("status") != "skipped" or "dry run" not in row.get("note", ""):
        problems.append(f"{name}: expected skipped with a dry-run reason, got {row}")
for name in ("build-emulator", "sweep-f16", "sweep-cycle", "sweep-dtype-policy", "summary"):
    if steps.get(name, {}).get("status") != "ok":
        problems.append(f"{name}: expected ok, got {steps.get(name)}")
peers = steps.get("peers", {})
torch_absent = sys.argv[2] == "absent"
if torch_absent and not (peers.get("status") == "skipped" and "torch" in peers.get("note", "")):
    problems.append(f"peers without torch: expected skipped naming torch, got {peers}")
if not torch_absent and peers.get("status") not in ("skipped", "ok"):
    problems.append(f"peers with torch: expected skipped (no GPU) or ok, got {peers}")
for problem in problems:
    print(problem)
sys.exit(1 if problems else 0)
PYEOF
torch_state=absent
for candidate in python3 .venv/bin/python; do
    if [ -x "$(command -v "$candidate")" ] && "$candidate" -c "import torch" >/dev/null 2>&1; then
        torch_state=present
    fi
done
check "steps.tsv: every step once, none failed, GPU steps skipped with reasons, peers skipped (torch $torch_state)" \
    "$PY" "$WORK/check_steps.py" "$R/steps.tsv" "$torch_state"

# ---------------------------------------------------------------- summary and figures

missing=""
for heading in "## Run" "## Steps" "## ekv vs peers" "## Every dtype and policy" "## Inference cycle" \
               "## Nsight Compute vs the static model" "## Correctness on the device" \
               "## Kernel resources" "## Figures" "## Not measured"; do
    grep -q "^$heading" "$R/summary.md" || missing="$missing '$heading'"
done
if [ -z "$missing" ]; then pass "summary.md has every section"; else
    fail "summary.md has every section" "missing:$missing"; fi
if grep -q "Dry run on the CPU execution emulator" "$R/summary.md" &&
   grep -q "Every planned configuration was measured" "$R/summary.md"; then
    pass "summary.md says it is a dry run and that every planned configuration ran"
else
    fail "summary.md says it is a dry run and that every planned configuration ran"
fi
rows=$(awk '/^## Every dtype and policy/{on=1; next} /^## /{on=0} on && /^\| (f16|int4|int8|fp8|bf16|f32) \|/' "$R/summary.md" | wc -l)
planned=$("$PY" bench/gpu_plan.py list dtype-policy --mode dry | wc -l)
if [ "$rows" -eq "$planned" ]; then pass "summary.md lists each dtype x policy row ($rows)"; else
    fail "summary.md lists each dtype x policy row" "$rows rows, $planned planned"; fi

if "$PY" -c "import matplotlib" >/dev/null 2>&1; then
    bad=""
    for figure in bandwidth speedup accuracy cycle; do
        head -c 8 "$R/plots/$figure.png" 2>/dev/null | od -An -tx1 | tr -d ' \n' |
            grep -q '^89504e470d0a1a0a$' || bad="$bad $figure"
    done
    if [ -z "$bad" ] && grep -q $'^bandwidth_peers\tskipped\tno data in peers.jsonl' "$R/plots/status.tsv"; then
        pass "figures: bandwidth, speedup, accuracy and cycle are PNGs; the peers' one skipped without data"
    else
        fail "figures drawn" "not PNG:$bad" "$R/plots/status.tsv"
    fi
else
    skip "figures drawn" "matplotlib not importable by $PY"
fi

# ---------------------------------------------------------------- the full and quick lines parse

cat >"$WORK/check_lines.py" <<'PYEOF'
"""Every ekv_bench command line of the full and quick checks, for the CLI parser."""
import sys

sys.path.insert(0, "bench")
import gpu_plan  # noqa: E402

for mode in ("full", "quick"):
    for sweep in sorted(gpu_plan.SWEEPS):
        for config in gpu_plan.SWEEPS[sweep](mode):
            print(" ".join(gpu_plan.to_args(config) + ["--backend=cuda", "--quiet"]))
    for case in gpu_plan.CASES:
        print(" ".join(gpu_plan.to_args(gpu_plan.case(case, mode)) + ["--backend=cuda", "--json"]))
PYEOF
bench_cli=$BUILD/ekv_bench_emu
if [ -x "$bench_cli" ]; then
    bad=0 total=0
    while read -r line; do
        total=$((total + 1))
        # shellcheck disable=SC2086
        if ! "$bench_cli" $line --help >/dev/null 2>"$WORK/cli.err"; then
            bad=$((bad + 1)); echo "    rejected: $line: $(cat "$WORK/cli.err")"
        fi
    done < <("$PY" "$WORK/check_lines.py" | sort -u)
    if [ "$bad" -eq 0 ] && [ "$total" -gt 0 ]; then
        pass "ekv_bench's parser accepts all $total command lines of the full and quick checks"
    else
        fail "ekv_bench's parser accepts every command line of the full and quick checks" "$bad of $total rejected"
    fi
else
    skip "the full and quick command lines parse" "$bench_cli not built"
fi

# ---------------------------------------------------------------- failures reach the exit status

cat >"$WORK/failing_bench" <<'EOF'
#!/bin/sh
echo "ekv_bench: error: stub that always fails validation" >&2
exit 1
EOF
chmod +x "$WORK/failing_bench"
began=$SECONDS
EKV_BENCH=$WORK/failing_bench OUT=$WORK/out_failing bench/gpu_check.sh --dry-run >"$WORK/failing.log" 2>&1
code=$?
echo "failing dry run: $((SECONDS - began)) s, exit $code"
tar -xzf "$WORK"/out_failing/*.tar.gz -C "$WORK/out_failing" 2>/dev/null
FR=$(find "$WORK/out_failing" -mindepth 1 -maxdepth 1 -type d | head -n 1)
if [ "$code" -eq 1 ] && tail -n 1 "$WORK/failing.log" | grep -q 'required step(s) failed: sweep-f16 sweep-cycle sweep-dtype-policy'; then
    pass "a failing ekv_bench: exit 1 naming the failed sweeps"
else
    fail "a failing ekv_bench: exit 1 naming the failed sweeps" "exit $code" "$WORK/failing.log"
fi
if [ -n "$FR" ] && [ "$(grep -c '"status": "failed"' "$FR/runs.jsonl")" -eq "$(grep -c . "$FR/runs.jsonl")" ] &&
   grep -q 'stub that always fails validation' "$FR/runs.jsonl" &&
   grep -qE '^\| f16 \| failed \|' "$FR/summary.md" &&
   grep -qE '^sweep-f16	yes	FAIL	' "$FR/steps.tsv"; then
    pass "the failures are in runs.jsonl (with ekv_bench's message), summary.md and steps.tsv"
else
    fail "the failures are in runs.jsonl, summary.md and steps.tsv" "" "${FR:-$WORK}/summary.md"
fi

# ---------------------------------------------------------------- the GPU path, with stub tools

# nvidia-smi, nvcc, compute-sanitizer and ncu replaced by stubs that log their arguments and
# answer as the real tools do (the ncu CSV and ptxas lines are constructed to their formats,
# not captured): the full check's orchestration runs here as it will on a GPU machine
STUBS=$WORK/stubs
mkdir -p "$STUBS"
cat >"$STUBS/nvidia-smi" <<'STUB'
#!/bin/sh
case "$*" in
  *--query-gpu=name*) echo "NVIDIA H200" ;;
  *--query-gpu=driver_version*) echo "580.00" ;;
  *--query-gpu=compute_cap*) echo "9.0" ;;
  *) echo "stub nvidia-smi $*" ;;
esac
STUB
# the stub ekv_bench: one plausible result line per run, shaped like ekv_bench's (a shell
# script: the full check starts it about a hundred times)
cat >"$STUBS/bench.sh" <<'STUB'
#!/bin/sh
seq=1024 batch=1 heads=16 kv=16 dim=64 dtype=f16 policy=stride c=2 reps=200 jsonl="" paired=0 inf=0
for a in "$@"; do
  case $a in
    --seq=*) seq=${a#*=} ;; --batch=*) batch=${a#*=} ;; --heads=*) heads=${a#*=} ;;
    --kv-heads=*) kv=${a#*=}; kv=${kv%%,*} ;; --dim=*) dim=${a#*=} ;;
    --kv-dtype=*) dtype=${a#*=}; dtype=${dtype%%,*} ;; --policy=*) policy=${a#*=} ;;
    --compress=*) c=${a#*=} ;; --reps=*) reps=${a#*=} ;; --jsonl=*) jsonl=${a#*=} ;;
    --paired-baseline) paired=1 ;; --inference) inf=1 ;;
  esac
done
[ -n "$jsonl" ] || exit 0
awk -v seq="$seq" -v batch="$batch" -v heads="$heads" -v kv="$kv" -v dim="$dim" -v dtype="$dtype" \
    -v policy="$policy" -v c="$c" -v reps="$reps" -v paired="$paired" -v inf="$inf" 'BEGIN {
  m = 1e-6 * seq * batch * kv; s = "["; for (i = 0; i < reps; i++) s = s (i ? "," : "") m; s = s "]"
  base = paired ? sprintf("{\"kv_dtype\":\"f16\",\"attention_time_ms\":%g,\"speedup\":%g,\"speedup_ci95\":{\"lo\":%g,\"hi\":%g}}", m * c, 0.9 * c, 0.8 * c, c) : "null"
  cycle = "null"
  if (inf) {
    cycle = "{\"variant\":\"all\",\"variants\":["
    split("nocache cache int8 shared int8-shared elastic", v, " ")
    for (i = 1; i <= 6; i++) cycle = cycle (i > 1 ? "," : "") sprintf("{\"variant\":\"%s\",\"total_ms\":1,\"tokens_per_sec\":100,\"phases_ms\":{\"projection\":0.1,\"append\":0.1,\"compress\":0.1,\"attention\":0.7},\"series\":[{\"step\":1,\"context_len\":%d,\"latency_ms\":0.03,\"kv_cache_bytes\":1e6}]}", v[i], seq + 1)
    cycle = cycle "]}"
  }
  printf "{\"backend\":\"cuda\",\"gpu\":{\"name\":\"NVIDIA H200\"},\"configuration\":{\"seq_len\":%d,\"batch\":%d,\"heads\":%d,\"kv_heads\":%d,\"head_dim\":%d,\"kv_dtype\":\"%s\",\"policy\":\"%s\",\"compression\":%d,\"reps\":%d,\"warmup\":0,\"inner_loops\":1,\"inference\":%s},\"results\":{\"attention_time_ms\":%g,\"memory_bandwidth_gbs\":3000,\"speedup_vs_baseline\":%s},\"statistics\":{\"ci95_median\":{\"lo\":%g,\"hi\":%g}},\"metrics\":{\"bytes_total\":%g,\"peak_bw_measured_gbs\":4000,\"peak_bw_theoretical_gbs\":4800,\"efficiency_vs_theoretical\":0.625},\"accuracy\":{\"error_total\":{\"rel_l2\":%g},\"error_kernel\":{\"rel_l2\":1e-7}},\"memory\":{\"kv_cache_bytes\":1e6},\"baseline\":%s,\"inference_cycle\":%s,\"samples_ms\":%s}\n",
    seq, batch, heads, kv, dim, dtype, policy, c, reps, inf ? "true" : "false", m,
    paired ? 0.9 * c : "null", 0.99 * m, 1.01 * m, 3e6 * m, 1e-3 * c, base, cycle, s
}' >>"$jsonl"
STUB
cat >"$STUBS/nvcc" <<STUB
#!/bin/sh
case "\$*" in --version) echo "stub nvcc"; exit 0 ;; esac
echo "\$*" >>"$STUBS/nvcc.args"
out=""; prev=""; src=""
for a in "\$@"; do [ "\$prev" = "-o" ] && out=\$a; prev=\$a; case \$a in *.cu) src=\$a ;; esac; done
case \$src in
  bench/main.cu)
    cp "$STUBS/bench.sh" "\$out"
    printf "ptxas info    : Compiling entry function '_Z26ekv_cuda__attention_kernelILi1ELi128ELi8EEv26ekv_cuda__attention_params' for 'sm_90'\nptxas info    : Function properties for x\n    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\nptxas info    : Used 246 registers, used 1 barriers, 16640 bytes smem\n" >&2 ;;
  *) printf '#!/bin/sh\necho "PASS stub"\necho "1 passed, 0 failed"\n' >"\$out" ;;
esac
chmod +x "\$out"
STUB
cat >"$STUBS/compute-sanitizer" <<STUB
#!/bin/sh
echo "\$*" >>"$STUBS/sanitizer.args"
tool=\$2
while [ \$# -gt 0 ] && [ ! -x "\$1" ]; do shift; done
"\$@" >/dev/null || exit \$?
if [ "\$tool" = racecheck ]; then echo "========= RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)"
else echo "========= ERROR SUMMARY: 0 errors"; fi
STUB
cat >"$STUBS/ncu.csv" <<'STUB'
"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size","Device","CC","dram__throughput.avg.pct_of_peak_sustained_elapsed","gpu__time_duration.sum","smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio"
"","","","","","","","","","","","%","usecond","inst"
"0","1","ekv_bench","h","void ekv_cuda__attention_kernel<1, 128, 8>(ekv_cuda__attention_params)","1","7","(128, 1, 1)","(132, 1, 1)","0","9.0","83.25","40.1","9.5"
STUB
cat >"$STUBS/ncu" <<STUB
#!/bin/sh
case "\$*" in --version) echo "stub ncu"; exit 0 ;; esac
echo "\$*" >>"$STUBS/ncu.args"
case "\$*" in *--import*) cat "$STUBS/ncu.csv"; exit 0 ;; esac
report=""; prev=""
for a in "\$@"; do [ "\$prev" = "-o" ] && report=\$a; prev=\$a; done
[ -n "\$report" ] && : >"\$report.ncu-rep"
while [ \$# -gt 0 ] && [ ! -x "\$1" ]; do shift; done
"\$@" >/dev/null
STUB
chmod +x "$STUBS"/*
began=$SECONDS
BUILD=$WORK/build PATH=$STUBS:$PATH OUT=$WORK/out_gpu bench/gpu_check.sh >"$WORK/gpu_stub.log" 2>&1
code=$?
echo "stub GPU run: $((SECONDS - began)) s, exit $code"
tar -xzf "$WORK"/out_gpu/*.tar.gz -C "$WORK/out_gpu" 2>/dev/null
GR=$(find "$WORK/out_gpu" -mindepth 1 -maxdepth 1 -type d | head -n 1)
GR=${GR:-$WORK/out_gpu/missing}
if [ "$code" -eq 0 ] && [ "$(basename "$GR")" = "$(date -u +%Y-%m-%d)-nvidia-h200" ]; then
    pass "stub GPU: the full check exits 0 into <date>-nvidia-h200"
else
    fail "stub GPU: the full check exits 0 into <date>-nvidia-h200" "exit $code, $GR" "$WORK/gpu_stub.log"
fi
cat >"$WORK/check_gpu_steps.py" <<'PYEOF'
import sys
steps = {}
for line in list(open(sys.argv[1], encoding="utf-8"))[1:]:
    row = line.rstrip("\n").split("\t")
    steps[row[0]] = row[2]
want = {name: "ok" for name in ("build-ekv_bench", "build-test_gpu", "build-test_cache_gpu",
                                "test_gpu", "test_cache_gpu", "memcheck-attention",
                                "memcheck-cycle", "racecheck-attention", "racecheck-cycle",
                                "ncu-f16", "ncu-int4", "sweep-f16", "sweep-cycle",
                                "sweep-dtype-policy", "plots", "summary")}
want["peers"] = "skipped" if sys.argv[2] == "absent" else steps.get("peers")
bad = {name: steps.get(name) for name, status in want.items() if steps.get(name) != status}
print(bad or "ok")
sys.exit(1 if bad else 0)
PYEOF
check "stub GPU: builds, test programs, memcheck, racecheck, ncu (f16, int4), sweeps, summary ok" \
    "$PY" "$WORK/check_gpu_steps.py" "$GR/steps.tsv" "$torch_state"
if grep -q -- '-O3 -arch=sm_90 -Xptxas -v -o .*ekv_bench bench/main.cu -lcublas' "$STUBS/nvcc.args" &&
   grep -q -- '-arch=sm_90 -Werror all-warnings -o .*test_cache_gpu tests/test_cache_gpu.cu -lcublas' "$STUBS/nvcc.args" &&
   [ "$(grep -c 'tool racecheck' "$STUBS/sanitizer.args")" -eq 2 ] &&
   grep -q -- '--tool memcheck --leak-check full --error-exitcode 3 .*--kv-heads=2,8 .*--backend=cuda' "$STUBS/sanitizer.args" &&
   grep -q -- '--clock-control none --kernel-name regex:attention --launch-count 1 .*--section WarpStateStats.*--metrics .*--kv-dtype=int4' "$STUBS/ncu.args"; then
    pass "stub GPU: nvcc for sm_90 from nvidia-smi with -Xptxas -v; sanitizers and ncu with their flags"
else
    fail "stub GPU: nvcc, sanitizer and ncu command lines" "" "$STUBS/ncu.args"
fi
cat >"$WORK/check_gpu_runs.py" <<'PYEOF'
import json, subprocess, sys
results, python = sys.argv[1], sys.argv[2]
runs = [json.loads(line) for line in open(f"{results}/runs.jsonl", encoding="utf-8")]
problems = []
for sweep, name in (("f16", "ekv_f16.jsonl"), ("dtype-policy", "ekv_dtype_policy.jsonl"),
                    ("cycle", "ekv_cycle.jsonl")):
    planned = subprocess.run([python, "bench/gpu_plan.py", "list", sweep, "--mode", "full"],
                             capture_output=True, text=True, check=True).stdout.splitlines()
    mine = [r for r in runs if r["sweep"] == sweep]
    ok = [r for r in mine if r["status"] == "ok"]
    rows = open(f"{results}/{name}", encoding="utf-8").read().splitlines()
    if len(mine) != len(planned) or len(ok) != len(rows) or not ok:
        problems.append(f"{sweep}: {len(mine)} runs for {len(planned)} planned, {len(ok)} ok, {len(rows)} rows")
    if any(r["status"] not in ("ok", "skipped") for r in mine):
        problems.append(f"{sweep}: {[r for r in mine if r['status'] not in ('ok', 'skipped')]}")
print(problems or "ok")
sys.exit(1 if problems else 0)
PYEOF
check "stub GPU: one runs.jsonl line per planned full-check configuration, each ok or skipped for budget" \
    "$PY" "$WORK/check_gpu_runs.py" "$GR" "$PY"
if grep -q '| 83.2' "$GR/summary.md" && grep -q 'long_scoreboard 9.50' "$GR/summary.md" &&
   grep -q '1 kernels; 0 with spills' "$GR/summary.md" &&
   grep -q '| test_gpu | ok | [0-9]* | 1 passed, 0 failed |' "$GR/summary.md" &&
   grep -q 'RACECHECK SUMMARY: 0 hazards' "$GR/summary.md" &&
   grep -q 'ERROR SUMMARY: 0 errors' "$GR/summary.md"; then
    pass "stub GPU: summary.md carries ncu's numbers, ptxas, the test programs' and sanitizers' lines"
else
    fail "stub GPU: summary.md carries ncu's numbers, ptxas, the test and sanitizer lines" "" "$GR/summary.md"
fi

if [ "$failed" -eq 0 ]; then rm -rf "$WORK"; else echo "files kept in $WORK"; fi
if [ "$skipped" -gt 0 ]; then
    echo "$passed passed, $failed failed, $skipped skipped"
else
    echo "$passed passed, $failed failed"
fi
[ "$failed" -eq 0 ]
