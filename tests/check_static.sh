#!/usr/bin/env bash
# tests/check_static.sh - what can be checked of ekv_cuda.cuh's kernels without a GPU:
#   (a) bench/main.cu builds with nvcc for sm_75, sm_80 and sm_90 with -Werror all-warnings
#       (tests/test_gpu.cu when there is no bench/main.cu);
#   (b) ptxas -v: 0 spill bytes (stores and loads) in every attention kernel at head dims
#       64 and 128 and in the merge kernel, for sm_90, sm_80 and sm_75;
#   (c) SASS: the f16 tensor-core kernels read K and V with 128-bit global loads
#       (LDG.E.128...), counted with cuobjdump; when the toolkit has no cuobjdump/nvdisasm,
#       tests/sass_tools.sh installs them from PyPI into $BUILD/tools (skipped if that fails);
#   (d) the static throughput model, tests/sass_model.py, on the sm_90 build: its tables go
#       to $BUILD/logs/sass_model.md and its JSON beside them; it fails when an attention
#       kernel's predicted H200 ceiling is below tests/sass_thresholds.json, when the bytes
#       its SASS loads disagree with the source, or when it meets an attention kernel that
#       it does not recognise.
# It also prints the registers of every kernel (information, not a check).
# Run: tests/check_static.sh   ($BUILD, default build/; $NVCC, default nvcc on PATH or
#      /usr/local/cuda/bin/nvcc). About 2-3 minutes on 2 cores (three builds in parallel).
set -u
B=${BUILD:-build}/static
mkdir -p "$B"
. "$(dirname "$0")/harness.sh"
ok() { pass "$1"; }
bad() { fail "$1"; [ -n "${2:-}" ] && echo "$2" | head -20 | sed 's/^/    /'; }
skipped() { skip "$1" "$2"; }

NVCC=${NVCC:-$(command -v nvcc 2>/dev/null || echo /usr/local/cuda/bin/nvcc)}
if ! [ -x "$NVCC" ]; then skipped "static checks" "no nvcc"; finish; fi
SRC=bench/main.cu
if ! [ -f "$SRC" ]; then SRC=tests/test_gpu.cu; echo "note: no bench/main.cu; building $SRC"; fi
ARCHS="sm_75 sm_80 sm_90"

# (a) and the ptxas reports of (b) come from the same three builds
for a in $ARCHS; do
  "$NVCC" -O3 -arch="$a" -Werror all-warnings -Xptxas -v -o "$B/bench_$a" "$SRC" -lcublas >"$B/build_$a.log" 2>&1 &
  eval "pid_$a=$!"
done
for a in $ARCHS; do
  pid_var="pid_$a"
  if wait "${!pid_var}"; then ok "$SRC builds for $a with -Werror all-warnings"
  else bad "$SRC builds for $a with -Werror all-warnings" "$(grep -v '^ptxas info' "$B/build_$a.log")"; fi
done

# per kernel: mangled name, stack, spill stores, spill loads, registers
ptxas_table() {
  awk '/Compiling entry function/ { match($0, /_Z[A-Za-z0-9_]+/); name = substr($0, RSTART, RLENGTH) }
       /spill stores/ { stack = $1; stores = $5; loads = $9 }
       /Used [0-9]+ registers/ { match($0, /Used [0-9]+/); regs = substr($0, RSTART + 5, RLENGTH - 5);
                                 print name, stack, stores, loads, regs }' "$1"
}
readable() { # _Z26ekv_cuda__attention_kernelILi1ELi128ELi4E... -> attention f16 D=128 tile=4,
             # the paged kernels (..._paged_kernel...) the same with " paged",
             # _Z30ekv_cuda__attention_mma_kernelILi4ELi128ELi8E... -> attention int4 D=128 mma=8
  sed -E 's/_Z32ekv_cuda__attention_paged_kernelILi([0-9])ELi([0-9]+)ELi([0-9]+)E[^ ]*/attention dtype=\1 D=\2 tile=\3 paged/;
          s/_Z36ekv_cuda__attention_mma_paged_kernelILi([0-9])ELi([0-9]+)ELi([0-9]+)E[^ ]*/attention dtype=\1 D=\2 mma=\3 paged/;
          s/_Z26ekv_cuda__attention_kernelILi([0-9])ELi([0-9]+)ELi([0-9]+)E[^ ]*/attention dtype=\1 D=\2 tile=\3/;
          s/_Z30ekv_cuda__attention_mma_kernelILi([0-9])ELi([0-9]+)ELi([0-9]+)E[^ ]*/attention dtype=\1 D=\2 mma=\3/;
          s/dtype=0/f32/; s/dtype=1/f16/; s/dtype=2/bf16/; s/dtype=3/int8/; s/dtype=4/int4/; s/dtype=5/fp8/;
          s/_Z22ekv_cuda__merge_kernel[^ ]*/merge/'
}

# (b)
for a in sm_90 sm_80 sm_75; do
  log="$B/build_$a.log"
  if ! grep -q "Compiling entry function" "$log"; then skipped "no spills ($a)" "no ptxas report (build failed)"; continue; fi
  ptxas_table "$log" | readable >"$B/ptxas_$a.txt"
  # 6 dtypes x 2 CUDA-core tiles and 5 dtypes x 2 tensor-core tiles at D=64 and 128, each
  # contiguous and paged (but for int4 D=128 mma 8, not built paged: see
  # ekv_cuda__mma_paged), and the merge kernel (on each arch one path of a dtype compiles
  # empty: 0 registers spill nothing either)
  checked=$(grep -cE '^(attention .* D=(64|128) |merge)' "$B/ptxas_$a.txt")
  spills=$(grep -E '^(attention .* D=(64|128) |merge)' "$B/ptxas_$a.txt" | awk '$(NF-2) != 0 || $(NF-1) != 0')
  if [ "$checked" -lt 88 ]; then bad "no spills ($a)" "only $checked of 88 kernels found in the ptxas report"
  elif [ -z "$spills" ]; then ok "no spills in $checked kernels, head dims 64 and 128 and merge ($a)"
  else bad "no spills ($a)" "$(echo "$spills" | awk '{print $0, "(stack, spill stores, spill loads, registers)"}')"; fi
  echo "    registers ($a): $(awk '{print $(NF)}' "$B/ptxas_$a.txt" | sort -n | uniq -c | awk '{printf "%s kernels x %s, ", $1, $2}')"
done

# (c)
CUOBJDUMP=$(NVCC=$NVCC tests/sass_tools.sh 2>"$B/sass_tools.log")
if [ -z "$CUOBJDUMP" ]; then
  skipped "128-bit K/V loads in SASS" "$(cat "$B/sass_tools.log")"
else
  export PATH="$(dirname "$CUOBJDUMP"):$PATH"
  # on sm_80 and sm_90 f16 runs on the tensor-core kernel: per step of 16 tokens each
  # thread loads its K chunk of 2 rows and V chunk of 4 rows, 16 bytes per 8 elements;
  # 8-head tile at D=64 and 128 (64 elements of head_dim per warp): 2 x 2 + 4 x 1 = 8
  # 128-bit loads, issued before the loop for the first step and in it for the next: 16
  for a in sm_90 sm_80; do
    [ -f "$B/bench_$a" ] || { skipped "128-bit K/V loads ($a)" "no build"; continue; }
    for spec in "64 8 16" "128 8 16"; do
      set -- $spec
      fun="_Z30ekv_cuda__attention_mma_kernelILi1ELi$1ELi$2EEv26ekv_cuda__attention_params"
      sass=$("$CUOBJDUMP" -sass -fun "$fun" "$B/bench_$a" 2>/dev/null)
      wide=$(grep -cE 'LDG\.E\.128' <<<"$sass")
      mnemonic=$(grep -oE 'LDG\.E\.128[.A-Z0-9_]*' <<<"$sass" | sort -u | tr '\n' ' ')
      if [ "$wide" -ge "$3" ]; then ok "f16 D=$1 mma $2 ($a): $wide 128-bit global loads ($mnemonic), K + V need $3"
      else bad "f16 D=$1 mma $2 ($a): 128-bit global loads" "found $wide ($mnemonic), expected at least $3"; fi
    done
  done
fi

# (d) the README's command, as written there (with BUILD=build); each PASS/FAIL line of
# its --check is one check here
LOGS=${BUILD:-build}/logs
mkdir -p "$LOGS"
if [ -z "$CUOBJDUMP" ]; then
  skipped "static throughput model" "$(cat "$B/sass_tools.log")"
elif ! [ -f "$B/bench_sm_90" ]; then
  skipped "static throughput model" "no sm_90 build"
else
  started=$(date +%s)
  CUOBJDUMP=$CUOBJDUMP python3 tests/sass_model.py --arch sm_90 --json "$LOGS/sass_model.json" \
    --check tests/sass_thresholds.json "$B/bench_sm_90" >"$LOGS/sass_model.md" 2>&1
  status=$?
  seconds=$(( $(date +%s) - started ))
  checks=$(grep -cE '^(PASS|FAIL) ' "$LOGS/sass_model.md")
  while IFS= read -r line; do
    case $line in
      "PASS "*) ok "static model: ${line#PASS } (${seconds} s)";;
      "FAIL "*) what=${line#FAIL }
                bad "static model: $what" "$(awk -v w="FAIL $what" '$0 == w {on = 1; next} on && /^    / {print; next} {on = 0}' "$LOGS/sass_model.md")";;
    esac
  done < <(grep -E '^(PASS|FAIL) ' "$LOGS/sass_model.md")
  if [ "$status" -ne 0 ] && [ "$checks" -eq 0 ]; then
    bad "static model ran" "$(tail -n 20 "$LOGS/sass_model.md")"
  fi
  echo "    the model's tables: $LOGS/sass_model.md, JSON: $LOGS/sass_model.json"
fi
finish
