# emu.mk - builds the CPU execution emulator's tests into $(BUILD)/emu and runs them:
# plain, under ASan+UBSan, under TSan, plus the expected-failure programs (a race, an
# out-of-bounds read) and the nvcc/clang++ source checks, through run_emu_tests.sh.
#
#     make test-emu                          (from the top Makefile, which includes this;
#                                             its `make test` runs test-emu-suite)
#     make -f tests/emu/emu.mk test-emu      (alone)

CXX ?= g++
BUILD ?= build

EMU_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
EMU_OUT := $(BUILD)/emu
EMU_HEADERS := $(wildcard $(EMU_DIR)/include/*.h)
EMU_FLAGS := -std=c++17 -g -Wall -Wextra -Wpedantic -Werror -pthread -I$(EMU_DIR)/include
EMU_ASAN := -O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all
EMU_TSAN := -O1 -fsanitize=thread
EMU_SUITE := $(EMU_DIR)/test_emu.cpp $(EMU_DIR)/sample_kernel.cu $(EMU_HEADERS)
EMU_PROGRAMS := $(addprefix $(EMU_OUT)/,test_emu test_emu_asan test_emu_tsan \
	race_missing_barrier_tsan race_syncwarp_only_tsan race_with_barrier_tsan oob_read_asan)

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
