/* test_cache_gpu.cu - the checks of tests/test_cache_emu.cpp on a real GPU (the device's own
   exp() and conversions against the CPU reference, fp8 where the device has it), plus
   cycles too long for the emulator: every dtype x policy at head_dim 128, GQA group 4,
   thousands of tokens per sequence, so that topk selects among thousands of candidates and
   compaction walks many tiles. Without a CUDA device it prints "SKIP gpu: no CUDA device"
   and "0 passed, 0 failed, 1 skipped", and exits 0.

   Build: nvcc -O2 -arch=sm_90 -o build/test_cache_gpu tests/test_cache_gpu.cu -lcublas */
#define EKV_IMPLEMENTATION
#define CT_NO_MAIN
#include "test_cache_emu.cpp"

/* ragged, prefill in the thousands, 64 appends between anchors */
static const ct_shape ct_large = {2, 4, 128, {4000, 2731, 0, 0}, 64, 2, 8};

int main(int argc, char **argv)
{
    int devices = 0, t, p;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices < 1) {
        (void)cudaGetLastError();
        TEST_SKIP("gpu", "no CUDA device");
        return ekv_test_finish();
    }
    ct_main_checks(argc, argv);
    for (t = 0; t < EKV_DTYPE_COUNT; t++) {
        if (ct_dtypes[t] == EKV_DTYPE_FP8 && ct_device_sm() < 89) continue;
        for (p = 0; p < 5; p++) ct_cycle(&ct_large, ct_dtypes[t], ct_policies[p], 16, 4);
    }
    return ekv_test_finish();
}
