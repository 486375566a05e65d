# ekv Makefile
#   make          build build/ekv_bench (nvcc when present, else the C++ CPU build)
#   make bench    build and run the default benchmark (GPU if present, else CPU backend)
#   make bench-cpu  the CPU backend built for this machine, beside numpy (and PyTorch)
#   make bench-cpu-tiles  the CPU kernel's functions: compute (L1) against memory (streaming)
#   make test     every test suite; closing line "N passed, N failed, N skipped"
#   make emu      build/ekv_bench_emu: the CUDA code on the CPU execution emulator
#   make clean
# Python tools and tests use a venv in .venv, created here from requirements.txt.

BUILD   ?= build
CC      ?= cc
CXX     ?= g++
NVCC    ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
PYTHON  ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
SAN     := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
HEADERS := ekv.h
CUDA_HEADERS := $(HEADERS) $(wildcard ekv_cuda.cuh)
EMU_INC := -Itests/emu/include
EMU_HEADERS := $(wildcard tests/emu/include/*.h)
# the emulator's own tests and EMU_FMA: the flags that contract a*b+c in kernels as nvcc
# does (see tests/emu/emu.mk)
-include tests/emu/emu.mk
# the one compiler line of every emulator build (tests, ekv_bench_emu, libekv_emu.so)
EMU_CXXFLAGS := -std=c++17 -g -pthread -DEKV_EMULATOR $(EMU_FMA) $(EMU_INC) -I. -Wall -Wextra -Werror
EMU_CXX := $(CXX) $(EMU_CXXFLAGS)
export BUILD

# Build identity for the results of the ekv_bench builds below (build.git_commit and
# build.flags in the JSON; build.compiler and build.optimized need nothing): the commit,
# "-dirty" when tracked files differ from it, and the flags of the build. The one-line
# builds of the README work without them (both then null).
GIT_HEAD := $(shell git rev-parse --short=12 HEAD 2>/dev/null)
EKV_GIT_COMMIT ?= $(GIT_HEAD)$(if $(GIT_HEAD),$(shell git diff --quiet HEAD -- 2>/dev/null || echo -dirty))
ekv_identity = $(if $(EKV_GIT_COMMIT),-DEKV_GIT_COMMIT='"$(EKV_GIT_COMMIT)"') -DEKV_BUILD_FLAGS='"$(strip $(1))"'
NVCC_BENCH_FLAGS := -O3
CXX_BENCH_FLAGS := -O2 -x c++
CPU_BENCH_FLAGS := -O2 -Wall -Wextra -Werror -x c++
SAN_BENCH_FLAGS := -O1 -g $(SAN) -Wall -Wextra -Werror -x c++
EMU_BENCH_FLAGS := $(EMU_CXXFLAGS) -O2 -x c++
NATIVE_BENCH_FLAGS := -O3 -march=native -pthread -x c++

.PHONY: all bench bench-cpu bench-cpu-tiles test test-programs emu clean venv tools gpu-check FORCE test-tools test-build test-core test-cli test-python test-examples test-static test-gpu test-kernels-emu test-examples
.DEFAULT_GOAL := all

all: $(BUILD)/ekv_bench

$(BUILD):
	mkdir -p $(BUILD)

# rewritten only when the commit (or its -dirty mark) changes, so that the builds that
# record it are redone then and only then
$(BUILD)/git_commit: FORCE | $(BUILD)
	@echo '$(EKV_GIT_COMMIT)' | cmp -s - $@ 2>/dev/null || echo '$(EKV_GIT_COMMIT)' > $@

ifneq ($(NVCC),)
$(BUILD)/ekv_bench: bench/main.cu $(CUDA_HEADERS) $(BUILD)/git_commit | $(BUILD)
	$(NVCC) $(NVCC_BENCH_FLAGS) $(call ekv_identity,$(NVCC_BENCH_FLAGS) -lcublas) -o $@ bench/main.cu -lcublas
else
$(BUILD)/ekv_bench: bench/main.cu $(HEADERS) $(BUILD)/git_commit | $(BUILD)
	$(CXX) $(CXX_BENCH_FLAGS) $(call ekv_identity,$(CXX_BENCH_FLAGS)) -o $@ bench/main.cu
endif

# The CPU-only build, as a user without CUDA makes it.
$(BUILD)/ekv_bench_cpu: bench/main.cu $(HEADERS) $(BUILD)/git_commit | $(BUILD)
	$(CXX) $(CPU_BENCH_FLAGS) $(call ekv_identity,$(CPU_BENCH_FLAGS)) -o $@ bench/main.cu

$(BUILD)/ekv_bench_cpu_san: bench/main.cu $(HEADERS) $(BUILD)/git_commit | $(BUILD)
	$(CXX) $(SAN_BENCH_FLAGS) $(call ekv_identity,$(SAN_BENCH_FLAGS)) -o $@ bench/main.cu

emu: $(BUILD)/ekv_bench_emu

$(BUILD)/ekv_bench_emu: bench/main.cu $(CUDA_HEADERS) $(EMU_HEADERS) $(BUILD)/git_commit | $(BUILD)
	$(CXX) $(EMU_BENCH_FLAGS) $(call ekv_identity,$(EMU_BENCH_FLAGS)) -o $@ bench/main.cu

bench: $(BUILD)/ekv_bench
	$(BUILD)/ekv_bench

# The CPU backend at its best here (-O3 -march=native -pthread) beside numpy and PyTorch
# on the same problems in one run (bench/peers_cpu.py: the table, and every row as JSONL)
$(BUILD)/ekv_bench_native: bench/main.cu $(HEADERS) $(BUILD)/git_commit | $(BUILD)
	$(CXX) $(NATIVE_BENCH_FLAGS) $(call ekv_identity,$(NATIVE_BENCH_FLAGS)) -o $@ bench/main.cu

bench-cpu: $(BUILD)/ekv_bench_native venv
	$(VPY) bench/peers_cpu.py --bench $(BUILD)/ekv_bench_native --out $(BUILD)/bench_cpu.jsonl \
	  --paired-out $(BUILD)/bench_cpu_paired.jsonl

# Where the CPU kernel's time goes: its functions on one thread, on a block in L1 and
# streaming from memory, next to this core's multiply-add peak (bench/cpu_tiles.c)
$(BUILD)/cpu_tiles: bench/cpu_tiles.c $(HEADERS) | $(BUILD)
	$(CXX) -O3 -march=native -Wall -Wextra -Werror -x c++ -o $@ bench/cpu_tiles.c

bench-cpu-tiles: $(BUILD)/cpu_tiles
	$(BUILD)/cpu_tiles

venv: $(VENV)/.stamp $(VENV)/.ekv-stamp tools

# Debian tools the tests use (jq parses the JSON independently of Python), installed only
# where that is possible: as root, or through sudo that asks no password. Elsewhere, or
# when apt-get fails (another apt holds its lock, no network), nothing stops: the checks
# that need jq are skipped and say how to install it.
tools:
	@if command -v jq >/dev/null 2>&1; then :; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
	  echo "make tools: jq is missing and there is no apt-get; install jq with your package manager (the jq checks are skipped until then)"; \
	else \
	  if [ "$$(id -u)" = 0 ]; then as_root=; \
	  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then as_root="sudo -n"; \
	  else as_root=none; fi; \
	  if [ "$$as_root" = none ]; then \
	    echo "make tools: jq is missing and installing it needs root: sudo apt-get install jq (the jq checks are skipped until then)"; \
	  elif ! { $$as_root apt-get update -qq && $$as_root apt-get install -y -qq jq >/dev/null; }; then \
	    echo "make tools: apt-get could not install jq (see above); run: sudo apt-get install jq (the jq checks are skipped until then)"; \
	  fi; \
	fi

$(VENV)/.stamp: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

# the Python module from this checkout: pip builds its library from the headers (and the
# CUDA one wherever nvcc exists), so it is reinstalled when they change
$(VENV)/.ekv-stamp: $(VENV)/.stamp pyproject.toml setup.py $(wildcard python/ekv/*.py python/ekv/ekv_library.*) $(CUDA_HEADERS)
	$(VPY) -m pip install --quiet --disable-pip-version-check ./
	touch $@

# ---- tests -------------------------------------------------------------------------

C99FLAGS := -std=c99 -pedantic -Wall -Wextra -Werror
CXXFLAGS_T := -Wall -Wextra -Werror

# One implementation of ekv.h per flavour; every C test includes ekv.h for declarations
# only and links it (tests/ekv_impl.c), so the header is compiled twice, not twice per test.
$(BUILD)/ekv_impl.o: tests/ekv_impl.c $(HEADERS) | $(BUILD)
	$(CC) $(C99FLAGS) -O2 -I. -c -o $@ $<

$(BUILD)/ekv_impl_asan.o: tests/ekv_impl.c $(HEADERS) | $(BUILD)
	$(CC) $(C99FLAGS) -O1 -g $(SAN) -I. -c -o $@ $<

# test_json brings its own implementation (a failing allocator must reach the writer)
$(BUILD)/t_test_json: tests/test_json.c $(HEADERS) tests/ekv_test.h | $(BUILD)
	$(CC) $(C99FLAGS) -O2 -I. -o $@ $< -lm

$(BUILD)/asan_test_json: tests/test_json.c $(HEADERS) tests/ekv_test.h | $(BUILD)
	$(CC) $(C99FLAGS) -O1 -g $(SAN) -I. -o $@ $< -lm

$(BUILD)/t_%: tests/%.c $(BUILD)/ekv_impl.o $(HEADERS) tests/ekv_test.h | $(BUILD)
	$(CC) $(C99FLAGS) -O2 -I. -o $@ $< $(BUILD)/ekv_impl.o -lm

$(BUILD)/asan_%: tests/%.c $(BUILD)/ekv_impl_asan.o $(HEADERS) tests/ekv_test.h | $(BUILD)
	$(CC) $(C99FLAGS) -O1 -g $(SAN) -I. -o $@ $< $(BUILD)/ekv_impl_asan.o -lm

C_TESTS := $(patsubst tests/%.c,%,$(wildcard tests/test_*.c tests/fuzz_*.c))

test-build: | $(BUILD)
	@tests/run_suite.sh build tests/check_build.sh

test-core: $(addprefix $(BUILD)/t_,$(C_TESTS)) $(addprefix $(BUILD)/asan_,$(C_TESTS)) venv
	@for t in $(C_TESTS); do \
	  case $$t in \
	    test_json) tests/run_suite.sh $$t tests/json_check.sh $(BUILD)/t_$$t; \
	               tests/run_suite.sh $$t-asan tests/json_check.sh $(BUILD)/asan_$$t;; \
	    test_npy)  rm -rf $(BUILD)/npy_fixtures; $(VPY) tests/npy_make_fixtures.py $(BUILD)/npy_fixtures >/dev/null; \
	               tests/run_suite.sh $$t $(BUILD)/t_$$t $(BUILD)/npy_fixtures; \
	               tests/run_suite.sh npy-numpy-reads-ours $(VPY) tests/npy_make_fixtures.py --check $(BUILD)/npy_fixtures; \
	               tests/run_suite.sh $$t-asan $(BUILD)/asan_$$t $(BUILD)/npy_fixtures;; \
	    *)         tests/run_suite.sh $$t $(BUILD)/t_$$t; \
	               tests/run_suite.sh $$t-asan $(BUILD)/asan_$$t;; \
	  esac; \
	done

test-cli: $(BUILD)/ekv_bench_cpu $(BUILD)/ekv_bench_cpu_san venv
	@tests/run_suite.sh cli $(VPY) tests/test_cli.py $(BUILD)/ekv_bench_cpu
	@ASAN_OPTIONS=detect_leaks=1 tests/run_suite.sh cli-asan $(VPY) tests/test_cli.py $(BUILD)/ekv_bench_cpu_san

test-examples: venv
	@tests/run_suite.sh examples tests/test_examples.sh

# make tools and the jq checks where jq cannot be installed (stand-ins on the PATH)
test-tools: $(BUILD)/t_test_json $(BUILD)/cpu_tiles
	@tests/run_suite.sh tools sh tests/test_tools.sh $(BUILD)/t_test_json
	@tests/run_suite.sh cpu-tiles sh tests/test_cpu_tiles.sh $(BUILD)/cpu_tiles

test-python: venv $(BUILD)/ekv_bench_cpu
	@for t in $(wildcard tests/py/test_*.py); do \
	  tests/run_suite.sh py-$$(basename $$t .py) $(VPY) $$t; done

# ekv_cuda.cuh's kernels on the emulator: plain, ASan+UBSan, TSan (race = failure). The
# implementation of both headers (every kernel) is compiled once per flavour
# (tests/ekv_impl_emu.cpp) and linked by each test.
KEMU_DEPS := $(CUDA_HEADERS) $(EMU_HEADERS) tests/ekv_test.h
EMU_TESTS := $(patsubst tests/%.cpp,%,$(wildcard tests/test_*_emu.cpp))
EMU_IMPL := $(BUILD)/emu/ekv_impl

$(EMU_IMPL).o: tests/ekv_impl_emu.cpp $(KEMU_DEPS) | $(BUILD)
	@mkdir -p $(BUILD)/emu
	$(EMU_CXX) -O1 -c -o $@ $<

$(EMU_IMPL)_asan.o: tests/ekv_impl_emu.cpp $(KEMU_DEPS) | $(BUILD)
	@mkdir -p $(BUILD)/emu
	$(EMU_CXX) -O1 $(SAN) -c -o $@ $<

$(EMU_IMPL)_tsan.o: tests/ekv_impl_emu.cpp $(KEMU_DEPS) | $(BUILD)
	@mkdir -p $(BUILD)/emu
	$(EMU_CXX) -O1 -fsanitize=thread -c -o $@ $<

$(addprefix $(BUILD)/emu/,$(EMU_TESTS)): $(BUILD)/emu/%: tests/%.cpp $(EMU_IMPL).o $(KEMU_DEPS)
	$(EMU_CXX) -O1 -o $@ $< $(EMU_IMPL).o

$(addsuffix _asan,$(addprefix $(BUILD)/emu/,$(EMU_TESTS))): $(BUILD)/emu/%_asan: tests/%.cpp $(EMU_IMPL)_asan.o $(KEMU_DEPS)
	$(EMU_CXX) -O1 $(SAN) -o $@ $< $(EMU_IMPL)_asan.o

$(addsuffix _tsan,$(addprefix $(BUILD)/emu/,$(EMU_TESTS))): $(BUILD)/emu/%_tsan: tests/%.cpp $(EMU_IMPL)_tsan.o $(KEMU_DEPS)
	$(EMU_CXX) -O1 -fsanitize=thread -o $@ $< $(EMU_IMPL)_tsan.o

# the Python module's GPU paths on the emulator: its library from the same source
$(BUILD)/libekv_emu.so: python/ekv/ekv_library.cu $(KEMU_DEPS) | $(BUILD)
	$(EMU_CXX) -O1 -shared -fPIC -x c++ -o $@ $<

test-kernels-emu: $(foreach t,$(EMU_TESTS),$(BUILD)/emu/$(t) $(BUILD)/emu/$(t)_asan $(BUILD)/emu/$(t)_tsan) $(BUILD)/ekv_bench_emu $(BUILD)/libekv_emu.so venv
	@for t in $(EMU_TESTS); do \
	  tests/run_suite.sh $$t $(BUILD)/emu/$$t; \
	  tests/run_suite.sh $$t-asan $(BUILD)/emu/$${t}_asan; \
	  tests/run_suite.sh $$t-tsan tests/tsan_run.sh $(BUILD)/emu/$${t}_tsan --quick; \
	done
	@tests/run_suite.sh cli-emulator $(VPY) tests/test_cli.py $(BUILD)/ekv_bench_emu --backend=emulator
	@EKV_LIBRARY=$(BUILD)/libekv_emu.so tests/run_suite.sh py-ekv-module-emulator $(VPY) tests/py/test_ekv_module.py

# what needs nvcc but no GPU: builds for sm_75/80/90, ptxas spills, SASS load widths
test-static: tools
	@tests/run_suite.sh static tests/check_static.sh
	@tests/run_suite.sh sass-model python3 tests/test_sass_model.py

# the GPU test program builds everywhere nvcc exists and skips without a device
test-gpu: | $(BUILD)
	@if [ -n "$(NVCC)" ]; then \
	  tests/run_suite.sh gpu-build tests/check_cmd.sh "nvcc builds tests/test_gpu.cu" $(NVCC) -O2 -arch=sm_90 -Werror all-warnings -o $(BUILD)/test_gpu tests/test_gpu.cu -lcublas && \
	  tests/run_suite.sh gpu $(BUILD)/test_gpu; \
	  tests/run_suite.sh gpu-cache-build tests/check_cmd.sh "nvcc builds tests/test_cache_gpu.cu" $(NVCC) -O2 -arch=sm_90 -Werror all-warnings -o $(BUILD)/test_cache_gpu tests/test_cache_gpu.cu -lcublas && \
	  tests/run_suite.sh gpu-cache $(BUILD)/test_cache_gpu; \
	else echo "SKIP gpu: no nvcc"; echo "gpu 0 0 1" >> $(BUILD)/logs/summary.txt; fi

# Every program the suites below run, built first and in parallel (TEST_JOBS, default the
# online cores): the suites then run one at a time, their timings undisturbed. -k and the
# ignored status leave a failing build to fail again, named, before the suite that needs it.
TEST_JOBS ?= $(shell nproc 2>/dev/null || echo 2)
TEST_PROGRAMS := $(addprefix $(BUILD)/t_,$(C_TESTS)) $(addprefix $(BUILD)/asan_,$(C_TESTS)) \
	$(BUILD)/ekv_bench_cpu $(BUILD)/ekv_bench_cpu_san $(BUILD)/ekv_bench $(BUILD)/cpu_tiles $(EMU_PROGRAMS) \
	$(foreach t,$(EMU_TESTS),$(BUILD)/emu/$(t) $(BUILD)/emu/$(t)_asan $(BUILD)/emu/$(t)_tsan) \
	$(BUILD)/ekv_bench_emu $(BUILD)/libekv_emu.so

test-programs: $(TEST_PROGRAMS)

test: venv
	@rm -f $(BUILD)/logs/summary.txt
	@-$(MAKE) --no-print-directory -k -j$(TEST_JOBS) test-programs
	@$(MAKE) --no-print-directory test-build test-core test-cli test-python test-examples test-tools
	@$(MAKE) --no-print-directory test-emu-suite test-kernels-emu test-static test-gpu
	@tests/run_suite.sh gpu-check-dry tests/test_gpu_check.sh
	@tests/run_suite.sh make-bench tests/check_cmd.sh "make bench runs the default benchmark" $(MAKE) --no-print-directory bench
	@tests/summary.sh

# one prepared GPU check (bench/gpu_check.sh; --quick, --dry-run: see README)
gpu-check:
	bench/gpu_check.sh

clean:
	rm -rf $(BUILD) ekv_bench
