# emu.mk - builds the CPU execution emulator's tests into $(BUILD)/emu and runs them:
# plain, under ASan+UBSan, under TSan, plus the expected-failure programs (races, an
# out-of-bounds read, the planted bugs of planted_bugs.cpp) and the nvcc/clang++ source
# checks, through run_emu_tests.sh. EMU_FMA is the one place for the flags that make the
# host compiler contract a*b+c as nvcc does; the top Makefile's emulator builds use it too.
#
#     make test-emu                          (from the top Makefile, which includes this;
#                                             its `make test` runs test-emu-suite)
#     make -f tests/emu/emu.mk test-emu      (alone)

CXX ?= g++
BUILD ?= build

EMU_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
EMU_OUT := $(BUILD)/emu
EMU_HEADERS := $(wildcard $(EMU_DIR)/include/*.h)

# nvcc contracts a*b+c in kernels to one fused multiply-add by default (-fmad=true); host
# code built for plain x86-64 is not contracted, since that target has no FMA instruction.
# The emulator does the same: -ffp-contract=fast for the translation unit, and on x86-64,
# when this CPU has FMA (the programs run where they are built), -DEKV_EMU_FMA, which gives
# __global__ functions the FMA instructions (cuda_runtime.h, >>qualifiers). g++ forms FMAs
# only from -O2 on, or with -fexpensive-optimizations, which the -O1 builds need. The first
# set of flags with which $(CXX) turns a probe kernel's a*b+c into an fma instruction,
# warning-free, wins; none (x86-64 without FMA): no contraction, and test_emu says so
# (SKIP). The probe runs once per make invocation.
EMU_FMA_X86 := $(filter x86_64 amd64 i386 i686,$(shell uname -m 2>/dev/null))
EMU_FMA_CPU := $(if $(EMU_FMA_X86),$(shell { grep -qw fma /proc/cpuinfo && echo yes; } 2>/dev/null),yes)
EMU_FMA_DEFINE := $(if $(EMU_FMA_X86),-DEKV_EMU_FMA)
EMU_FMA_KERNEL := $(if $(EMU_FMA_X86),__attribute__((target("fma"))))
EMU_FMA_PROBE = $(shell { printf '%s float f(float a, float b, float c) { return a * b + c; }\n' '$(EMU_FMA_KERNEL)' | \
	$(CXX) -x c++ -O1 -Werror $(1) -S -o - - | grep -qi 'fma' && echo '$(1)'; } 2>/dev/null)
EMU_FMA := $(strip $(if $(EMU_FMA_CPU),$(or \
	$(call EMU_FMA_PROBE,$(EMU_FMA_DEFINE) -ffp-contract=fast -fexpensive-optimizations),\
	$(call EMU_FMA_PROBE,$(EMU_FMA_DEFINE) -ffp-contract=fast))))

EMU_FLAGS := -std=c++17 -g -Wall -Wextra -Wpedantic -Werror -pthread $(EMU_FMA) -I$(EMU_DIR)/include
EMU_ASAN := -O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all
EMU_TSAN := -O1 -fsanitize=thread
EMU_SUITE := $(EMU_DIR)/test_emu.cpp $(EMU_DIR)/sample_kernel.cu $(EMU_HEADERS)
EMU_PROGRAMS := $(addprefix $(EMU_OUT)/,test_emu test_emu_asan test_emu_tsan \
	race_missing_barrier_tsan race_syncwarp_only_tsan race_with_barrier_tsan oob_read_asan \
	planted_bugs planted_bugs_tsan)

.PHONY: test-emu test-emu-suite
test-emu: $(EMU_PROGRAMS)
	sh $(EMU_DIR)/run_emu_tests.sh $(EMU_OUT)

# The same checks inside the top Makefile's `make test`, counted by tests/run_suite.sh.
test-emu-suite: $(EMU_PROGRAMS)
	@$(EMU_DIR)/../run_suite.sh emu sh $(EMU_DIR)/run_emu_tests.sh $(EMU_OUT)

$(EMU_OUT):
	mkdir -p $@

$(EMU_OUT)/test_emu: $(EMU_SUITE) | $(EMU_OUT)
	$(CXX) $(EMU_FLAGS) -O2 -o $@ $(EMU_DIR)/test_emu.cpp -x c++ $(EMU_DIR)/sample_kernel.cu

$(EMU_OUT)/test_emu_asan: $(EMU_SUITE) | $(EMU_OUT)
	$(CXX) $(EMU_FLAGS) $(EMU_ASAN) -o $@ $(EMU_DIR)/test_emu.cpp -x c++ $(EMU_DIR)/sample_kernel.cu

$(EMU_OUT)/test_emu_tsan: $(EMU_SUITE) | $(EMU_OUT)
	$(CXX) $(EMU_FLAGS) $(EMU_TSAN) -o $@ $(EMU_DIR)/test_emu.cpp -x c++ $(EMU_DIR)/sample_kernel.cu

$(EMU_OUT)/race_missing_barrier_tsan: $(EMU_DIR)/race_missing_barrier.cpp $(EMU_HEADERS) | $(EMU_OUT)
	$(CXX) $(EMU_FLAGS) $(EMU_TSAN) -o $@ $<

$(EMU_OUT)/race_syncwarp_only_tsan: $(EMU_DIR)/race_missing_barrier.cpp $(EMU_HEADERS) | $(EMU_OUT)
	$(CXX) $(EMU_FLAGS) $(EMU_TSAN) -DSYNC=1 -o $@ $<

$(EMU_OUT)/race_with_barrier_tsan: $(EMU_DIR)/race_missing_barrier.cpp $(EMU_HEADERS) | $(EMU_OUT)
	$(CXX) $(EMU_FLAGS) $(EMU_TSAN) -DSYNC=2 -o $@ $<

$(EMU_OUT)/oob_read_asan: $(EMU_DIR)/oob_read.cpp $(EMU_HEADERS) | $(EMU_OUT)
	$(CXX) $(EMU_FLAGS) $(EMU_ASAN) -o $@ $<

$(EMU_OUT)/planted_bugs: $(EMU_DIR)/planted_bugs.cpp $(EMU_HEADERS) | $(EMU_OUT)
	$(CXX) $(EMU_FLAGS) -O1 -o $@ $<

$(EMU_OUT)/planted_bugs_tsan: $(EMU_DIR)/planted_bugs.cpp $(EMU_HEADERS) | $(EMU_OUT)
	$(CXX) $(EMU_FLAGS) $(EMU_TSAN) -o $@ $<
