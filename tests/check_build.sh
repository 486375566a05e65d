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
check "bench/main.cu builds as C++ (CPU backend)" g++ -O0 -Wall -Wextra -Werror -x c++ -o "$B/bench_cpu" bench/main.cu
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
