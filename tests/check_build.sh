#!/usr/bin/env bash
# tests/check_build.sh - ekv.h builds as C99 (-pedantic) and as C++ with all warnings as
# errors, with gcc and clang, and a two-translation-unit program links and runs.
# Run: tests/check_build.sh   (uses $BUILD, default build/)
set -u
B=${BUILD:-build}/buildcheck
mkdir -p "$B"
pass=0; fail=0
check() { # name cmd...
  local name=$1; shift
  if out=$("$@" 2>&1); then echo "PASS $name"; pass=$((pass+1))
  else echo "FAIL $name"; echo "$out" | head -20 | sed 's/^/    /'; fail=$((fail+1)); fi
}
printf '#define EKV_IMPLEMENTATION\n#include "ekv.h"\nint main(void){ekv_config c = ekv_config_default(); return ekv_config_validate(&c) == EKV_SUCCESS ? 0 : 1;}\n' > "$B/impl.c"
check "gcc -std=c99 -pedantic" gcc -std=c99 -pedantic -Wall -Wextra -Werror -I. "$B/impl.c" -o "$B/c99_gcc" -lm
check "c99 program runs" "$B/c99_gcc"
if command -v clang >/dev/null; then
  check "clang -std=c99 -pedantic" clang -std=c99 -pedantic -Wall -Wextra -Werror -I. "$B/impl.c" -o "$B/c99_clang" -lm
fi
check "g++ -std=c++11" g++ -std=c++11 -Wall -Wextra -Werror -x c++ -I. "$B/impl.c" -o "$B/cxx_gpp"
check "g++ -std=c++17 -pedantic" g++ -std=c++17 -pedantic -Wall -Wextra -Werror -x c++ -I. "$B/impl.c" -o "$B/cxx17_gpp"
if command -v clang++ >/dev/null; then
  check "clang++ -std=c++17" clang++ -std=c++17 -Wall -Wextra -Werror -x c++ -I. "$B/impl.c" -o "$B/cxx_clang"
fi
check "two translation units link (C)" gcc -std=c99 -pedantic -Wall -Wextra -Werror -I. tests/two_tu_a.c tests/two_tu_b.c -o "$B/two_tu" -lm
check "two translation units run" "$B/two_tu"
check "two translation units link (C++)" g++ -Wall -Wextra -Werror -I. -x c++ tests/two_tu_a.c tests/two_tu_b.c -o "$B/two_tu_cxx"
check "ekv_cuda.cuh: two translation units link (emulator)" g++ -std=c++17 -pthread -DEKV_EMULATOR -Itests/emu/include -I. -Wall -Wextra -Werror tests/two_tu_cuda_a.cpp tests/two_tu_cuda_b.cpp -o "$B/two_tu_cuda"
check "ekv_cuda.cuh: two translation units run" "$B/two_tu_cuda"
# the README's one-line builds, exactly as written there (output path aside)
check "README: c++ -O2 -x c++ -o ekv_bench bench/main.cu" c++ -O2 -x c++ -o "$B/ekv_bench" bench/main.cu
check "the CPU build runs" "$B/ekv_bench" --seq=64 --reps=3 --warmup=0 --inner_loops=1 --quiet
NVCC=${NVCC:-$(command -v nvcc 2>/dev/null || echo /usr/local/cuda/bin/nvcc)}
if [ -x "$NVCC" ]; then
  check "README: nvcc -O3 -o ekv_bench bench/main.cu -lcublas" "$NVCC" -O3 -o "$B/ekv_bench_nvcc" bench/main.cu -lcublas
else
  echo "SKIP README nvcc build: no nvcc"; skip=1
fi
if [ "${skip:-0}" -gt 0 ]; then echo "$pass passed, $fail failed, $skip skipped"; else echo "$pass passed, $fail failed"; fi
[ "$fail" -eq 0 ]
