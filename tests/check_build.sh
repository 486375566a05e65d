#!/usr/bin/env bash
# tests/check_build.sh - ekv.h builds as C99 (-pedantic) and as C++ with all warnings as
# errors, with gcc and clang, alone (EKV_NO_BENCH) and whole, and a two-translation-unit
# program links and runs.
# Run: tests/check_build.sh   (uses $BUILD, default build/)
set -u
B=${BUILD:-build}/buildcheck
mkdir -p "$B"
. tests/harness.sh
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
# EKV_NO_BENCH: Part A alone, as an engine embeds it (no config, CLI, statistics, JSON)
printf '#define EKV_NO_BENCH\n#define EKV_IMPLEMENTATION\n#include "ekv.h"\nint main(void){ekv_host_cache c; int ok = ekv_cache_create(&c, EKV_DTYPE_INT4, 1, 2, 64, 8, 0) == EKV_SUCCESS; ekv_cache_free(&c); return ok ? 0 : 1;}\n' > "$B/no_bench.c"
check "EKV_NO_BENCH: gcc -std=c99 -pedantic (library only)" gcc -std=c99 -pedantic -Wall -Wextra -Werror -I. "$B/no_bench.c" -o "$B/no_bench" -lm
check "EKV_NO_BENCH: the library runs" "$B/no_bench"
check "EKV_NO_BENCH: no benchmark symbol is compiled in" sh -c "! nm '$B/no_bench' | grep -E ' T (ekv_cli_parse|ekv_stats_compute|ekv_json_init|ekv_cycle_run|ekv_cpu_run)\$'"
printf '#define EKV_NO_BENCH\n#define EKV_IMPLEMENTATION\n#include "ekv_cuda.cuh"\nint main(void){ekv_cuda_elastic_cache c; int ok = ekv_cuda_elastic_create(&c, EKV_DTYPE_F16, 1, 2, 64, 8, 0) == EKV_SUCCESS; ekv_cuda_elastic_free(&c); return ok ? 0 : 1;}\n' > "$B/no_bench_cuda.cpp"
check "EKV_NO_BENCH: ekv_cuda.cuh builds without cuBLAS (emulator headers)" g++ -std=c++17 -pthread -DEKV_EMULATOR -Itests/emu/include -I. -Wall -Wextra -Werror "$B/no_bench_cuda.cpp" -o "$B/no_bench_cuda"
check "EKV_NO_BENCH: the CUDA library part runs (emulator)" "$B/no_bench_cuda"
check "two translation units link (C)" gcc -std=c99 -pedantic -Wall -Wextra -Werror -I. tests/two_tu_a.c tests/two_tu_b.c -o "$B/two_tu" -lm
check "two translation units run" "$B/two_tu"
check "two translation units link (C++)" g++ -Wall -Wextra -Werror -I. -x c++ tests/two_tu_a.c tests/two_tu_b.c -o "$B/two_tu_cxx"
check "ekv_cuda.cuh: two translation units link (emulator)" g++ -std=c++17 -pthread -DEKV_EMULATOR -Itests/emu/include -I. -Wall -Wextra -Werror tests/two_tu_cuda_a.cpp tests/two_tu_cuda_b.cpp -o "$B/two_tu_cuda"
check "ekv_cuda.cuh: two translation units run" "$B/two_tu_cuda"
# the README's one-line builds, exactly as written there (output path aside)
check "README: c++ -O2 -x c++ -o ekv_bench bench/main.cu" c++ -O2 -x c++ -o "$B/ekv_bench" bench/main.cu
check "the CPU build runs" "$B/ekv_bench" --seq=64 --reps=3 --warmup=0 --inner_loops=1 --quiet
# build identity (build.* of every result): what the compiler says, and the strings a
# build passes; the one-line build passes none
identity() { # BINARY EXPECTED-PYTHON-CONDITION
  "$1" --seq=64 --reps=3 --warmup=0 --inner_loops=1 --quiet --json |
    python3 -c "import json, sys; b = json.load(sys.stdin)['build']; sys.exit(0 if ($2) else print(b) or 1)"
}
check "README build: build.compiler gcc or clang with its version, optimized, no flags or commit" \
  identity "$B/ekv_bench" "b['compiler'].split()[0] in ('gcc', 'clang') and b['compiler'].split()[1][0].isdigit() and b['optimized'] is True and b['flags'] is None and b['git_commit'] is None"
printf '#define EKV_IMPLEMENTATION\n#include "ekv.h"\nint main(void){ekv_build_info b = ekv_build_info_get(); printf("%%s|%%d|%%s|%%s\\n", b.compiler, b.optimized, b.flags ? b.flags : "(null)", b.git_commit ? b.git_commit : "(null)"); return 0;}\n' > "$B/identity.c"
check "build identity: -O0 and the strings given with -DEKV_BUILD_FLAGS and -DEKV_GIT_COMMIT" sh -c "
  gcc -std=c99 -O0 -DEKV_BUILD_FLAGS='\"-O0 -g\"' -DEKV_GIT_COMMIT='\"0123abcd-dirty\"' -I. '$B/identity.c' -o '$B/identity_gcc' -lm &&
  '$B/identity_gcc' | grep -qx \"gcc [0-9][0-9.]*|0|-O0 -g|0123abcd-dirty\""
if command -v clang >/dev/null; then
  check "build identity: clang and its version" sh -c "
    clang -std=c99 -O2 -I. '$B/identity.c' -o '$B/identity_clang' -lm &&
    '$B/identity_clang' | grep -qx 'clang [0-9][0-9.]*|1|(null)|(null)'"
fi
NVCC=${NVCC:-$(command -v nvcc 2>/dev/null || echo /usr/local/cuda/bin/nvcc)}
if [ -x "$NVCC" ]; then
  check "README: nvcc -O3 -o ekv_bench bench/main.cu -lcublas" "$NVCC" -O3 -o "$B/ekv_bench_nvcc" bench/main.cu -lcublas
  # without a GPU this falls back to the CPU backend: the build is still nvcc's
  check "nvcc build: build.compiler names nvcc and its host compiler" \
    identity "$B/ekv_bench_nvcc" "b['compiler'].startswith('nvcc ') and '(host ' in b['compiler'] and b['optimized'] is True"
else
  skip "README nvcc build" "no nvcc"
fi
finish
