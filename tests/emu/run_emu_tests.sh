#!/bin/sh
# run_emu_tests.sh - runs the emulator's test programs built by emu.mk and checks what each
# must show: the test suite passes plain, under ASan+UBSan and under TSan (no report); the
# EKV_EMU_* variables change the device; TSan reports a missing barrier and not a present
# one; ASan reports a read past a cudaMalloc'd buffer; each planted bug of planted_bugs.cpp
# (shared memory read before it is written, a shuffle from outside its mask, a divergent
# barrier, a race between blocks) fails as it should while its fixed twin passes; the
# sample kernel compiles with nvcc and the headers compile warning-free with g++ and
# clang++. Prints PASS/FAIL/SKIP per check and "N passed, N failed[, N skipped]"; exits 1
# on any failure.
#
#     sh tests/emu/run_emu_tests.sh build/emu        (after make -f tests/emu/emu.mk <binaries>)
set -u

out=${1:?usage: run_emu_tests.sh BUILD_DIR}
here=$(cd "$(dirname "$0")" && pwd)
logs="$out/logs"
mkdir -p "$logs"
passed=0 failed=0 skipped=0

pass() { echo "PASS $1"; passed=$((passed + 1)); }
fail() { echo "FAIL $1: $2"; failed=$((failed + 1)); }
skip() { echo "SKIP $1: $2"; skipped=$((skipped + 1)); }

# Every program gets a time limit, so that a hang fails instead of blocking the build.
limited() {
    if command -v timeout >/dev/null 2>&1; then timeout "$@"; else shift; "$@"; fi
}

# The emulator's device and schedule come from these; tests expect the defaults unless they
# set them.
clean_env="env -u EKV_EMU_SM -u EKV_EMU_SMS -u EKV_EMU_MEMORY_BYTES -u EKV_EMU_DEVICES -u EKV_EMU_SEED"
clean_env="$clean_env -u EKV_EMU_CONCURRENT_BLOCKS -u EKV_EMU_SEQUENTIAL"

# Runs "$@" with stdout+stderr in $log, sets $status. Some kernels map memory where TSan
# does not expect it; then the run is repeated without address-space randomization.
run_logged() {
    log=$1
    shift
    limited 180 $clean_env "$@" >"$log" 2>&1
    status=$?
    if grep -q "unexpected memory mapping\|FATAL: ThreadSanitizer" "$log" && command -v setarch >/dev/null 2>&1; then
        limited 180 $clean_env setarch "$(uname -m)" -R "$@" >"$log" 2>&1
        status=$?
    fi
}

suite_passed() { # log: exit 0 and a final "N passed, 0 failed" line
    [ "$status" -eq 0 ] && tail -n 1 "$1" | grep -Eq '^[0-9]+ passed, 0 failed(, [0-9]+ skipped)?$'
}

# ---- the test suite, three ways ----

run_logged "$logs/test_emu.log" "$out/test_emu"
if suite_passed "$logs/test_emu.log"; then
    pass "test_emu ($(tail -n 1 "$logs/test_emu.log"))"
else
    fail "test_emu" "exit $status, see $logs/test_emu.log"
    grep '^FAIL' "$logs/test_emu.log"
fi

# The deadlock diagnostic names the block, the threads and where they wait.
if grep -q 'block (1,0,0) of grid (3,1,1).*threads 0-31 wait at __syncthreads() ([^)]*test_emu.cpp:[0-9]*); threads 32-63 have exited' \
    "$logs/test_emu.log"; then
    pass "a barrier not every thread reaches is reported with its block, threads and line"
else
    fail "a barrier not every thread reaches is reported with its block, threads and line" "no such line in $logs/test_emu.log"
fi

# So does the divergent-barrier diagnostic, with both calls.
if grep -q 'divergent barrier, threads of the block wait at different calls: threads 0-31 at __syncthreads() at [^;]*test_emu.cpp:[0-9]*; threads 32-63 at __syncthreads() at [^;]*test_emu.cpp:[0-9]*$' \
    "$logs/test_emu.log"; then
    pass "threads at two __syncthreads calls are reported with both lines"
else
    fail "threads at two __syncthreads calls are reported with both lines" "no such line in $logs/test_emu.log"
fi

run_logged "$logs/test_emu_asan.log" "$out/test_emu_asan"
if suite_passed "$logs/test_emu_asan.log" && ! grep -q 'ERROR: AddressSanitizer\|runtime error:' "$logs/test_emu_asan.log"; then
    pass "test_emu under ASan+UBSan"
else
    fail "test_emu under ASan+UBSan" "exit $status, see $logs/test_emu_asan.log"
fi

run_logged "$logs/test_emu_tsan.log" "$out/test_emu_tsan"
if suite_passed "$logs/test_emu_tsan.log" && ! grep -q 'WARNING: ThreadSanitizer' "$logs/test_emu_tsan.log"; then
    pass "test_emu under TSan, no report"
else
    fail "test_emu under TSan, no report" "exit $status, see $logs/test_emu_tsan.log"
fi

# ---- the device from the real environment ----

device_is() { # expected-substring VAR=value...
    expected=$1
    shift
    setting=${*:-no EKV_EMU_* variable}
    line=$(limited 60 $clean_env "$@" "$out/test_emu" --device-info 2>&1)
    case $line in
    *"$expected"*) pass "$setting gives: $expected" ;;
    *) fail "$setting gives: $expected" "got: $line" ;;
    esac
}
device_is 'devices=1 name="ekv CPU emulator" sm=9.0 sms=4 memory=1073741824'
device_is 'sm=7.5 sms=7' EKV_EMU_SM=75 EKV_EMU_SMS=7
device_is 'memory=2147483648' EKV_EMU_MEMORY_BYTES=2G
device_is 'devices=0 error=cudaErrorNoDevice' EKV_EMU_DEVICES=0

# ---- sanitizers see kernel bugs ----

run_logged "$logs/race_missing_barrier.log" "$out/race_missing_barrier_tsan"
if [ "$status" -ne 0 ] && grep -q 'WARNING: ThreadSanitizer: data race' "$logs/race_missing_barrier.log"; then
    pass "TSan reports the data race of a missing __syncthreads"
else
    fail "TSan reports the data race of a missing __syncthreads" "exit $status, see $logs/race_missing_barrier.log"
fi

run_logged "$logs/race_syncwarp_only.log" "$out/race_syncwarp_only_tsan"
if [ "$status" -ne 0 ] && grep -q 'WARNING: ThreadSanitizer: data race' "$logs/race_syncwarp_only.log"; then
    pass "TSan reports the race between warps that only __syncwarp separates"
else
    fail "TSan reports the race between warps that only __syncwarp separates" "exit $status, see $logs/race_syncwarp_only.log"
fi

run_logged "$logs/race_with_barrier.log" "$out/race_with_barrier_tsan"
if [ "$status" -eq 0 ] && ! grep -q 'ThreadSanitizer' "$logs/race_with_barrier.log"; then
    pass "TSan is quiet about the same kernel with its __syncthreads"
else
    fail "TSan is quiet about the same kernel with its __syncthreads" "exit $status, see $logs/race_with_barrier.log"
fi

run_logged "$logs/oob_read.log" "$out/oob_read_asan"
if [ "$status" -ne 0 ] && grep -q 'heap-buffer-overflow' "$logs/oob_read.log"; then
    pass "ASan reports a kernel reading past a cudaMalloc'd buffer"
else
    fail "ASan reports a kernel reading past a cudaMalloc'd buffer" "exit $status, see $logs/oob_read.log"
fi

# ---- planted bugs: each must fail as it should; its fixed twin must pass ----

planted_bug() { # KERNEL PROGRAM PATTERN WHAT: the bug fails and its output matches PATTERN
    log="$logs/planted_$1_bug.log"
    run_logged "$log" "$out/$2" "$1" bug
    if [ "$status" -ne 0 ] && grep -q "$3" "$log"; then
        pass "$1: $4"
    else
        fail "$1: $4" "exit $status, see $log"
    fi
    ok=yes
    for build in planted_bugs planted_bugs_tsan; do
        run_logged "$logs/planted_$1_fixed_$build.log" "$out/$build" "$1" fixed
        if [ "$status" -ne 0 ] || grep -q 'ThreadSanitizer' "$logs/planted_$1_fixed_$build.log"; then
            ok=no
            fail "$1: the fixed kernel passes ($build)" "exit $status, see $logs/planted_$1_fixed_$build.log"
        fi
    done
    [ $ok = yes ] && pass "$1: the fixed kernel passes, plain and under TSan with no report"
}

planted_bug shared-before-write planted_bugs 'block [1-9][0-9]*: total -*[0-9]*, expected' \
    "a block reading static __shared__ memory before writing it gets the 0xff fill, not the last block's data"
planted_bug dynamic-before-write planted_bugs 'block [1-9][0-9]*: total -*[0-9]*, expected' \
    "the same in dynamic shared memory"
planted_bug shuffle-outside-mask planted_bugs 'out\[15\] = -*nan, expected 15' \
    "a shuffle from a lane outside the mask gives NaN, not the caller's value"
planted_bug divergent-barrier planted_bugs 'divergent barrier.*threads 0-31 at __syncthreads() at [^;]*planted_bugs.cpp:[0-9]*; threads 32-63 at __syncthreads() at [^;]*planted_bugs.cpp:[0-9]*' \
    "threads at two __syncthreads calls fail the launch, naming both"
planted_bug race-between-blocks planted_bugs_tsan 'WARNING: ThreadSanitizer: data race' \
    "TSan reports two blocks updating a counter without an atomic"
if ! grep -q 'number_blocks' "$logs/planted_race-between-blocks_bug.log"; then
    fail "race-between-blocks: the report names the kernel" "see $logs/planted_race-between-blocks_bug.log"
fi

# ---- source compatibility ----

nvcc=${NVCC:-}
[ -z "$nvcc" ] && nvcc=$(command -v nvcc 2>/dev/null)
[ -z "$nvcc" ] && [ -x /usr/local/cuda/bin/nvcc ] && nvcc=/usr/local/cuda/bin/nvcc
if [ -n "$nvcc" ]; then
    if limited 300 "$nvcc" -arch=sm_80 -c "$here/sample_kernel.cu" -o "$out/sample_kernel_nvcc.o" >"$logs/nvcc.log" 2>&1; then
        pass "nvcc -arch=sm_80 compiles sample_kernel.cu with the real CUDA headers"
    else
        fail "nvcc -arch=sm_80 compiles sample_kernel.cu with the real CUDA headers" "see $logs/nvcc.log"
    fi
else
    skip "nvcc compiles sample_kernel.cu" "no nvcc"
fi

for compiler in g++ clang++; do
    if ! command -v "$compiler" >/dev/null 2>&1; then
        skip "$compiler compiles the headers with -Wall -Wextra -Wpedantic -Werror" "no $compiler"
        continue
    fi
    ok=yes
    for source in test_emu.cpp sample_kernel.cu race_missing_barrier.cpp oob_read.cpp planted_bugs.cpp; do
        "$compiler" -std=c++17 -Wall -Wextra -Wpedantic -Werror -pthread -I"$here/include" -fsyntax-only \
            -x c++ "$here/$source" >>"$logs/$compiler.log" 2>&1 || ok=no
    done
    if [ $ok = yes ]; then
        pass "$compiler compiles the headers with -Wall -Wextra -Wpedantic -Werror"
    else
        fail "$compiler compiles the headers with -Wall -Wextra -Wpedantic -Werror" "see $logs/$compiler.log"
    fi
done

if [ "$skipped" -gt 0 ]; then
    echo "$passed passed, $failed failed, $skipped skipped"
else
    echo "$passed passed, $failed failed"
fi
[ "$failed" -eq 0 ]
