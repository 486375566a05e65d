/* test_gpu.cu - the kernel checks of tests/test_kernels_emu.cpp on a real GPU, plus problems
   too large for the emulator: long sequences that the automatic plan splits across the
   device's SMs, every dtype at GQA group 8, and a full ekv_cuda_run whose bandwidth must be
   plausible (above zero, at most 1.1 x the measured copy bandwidth) and whose timing must be
   cold by default. Without a CUDA device it prints "SKIP gpu: no CUDA device" and
   "0 passed, 0 failed, 1 skipped", and exits 0.

   Build: nvcc -O2 -arch=sm_90 -o build/test_gpu tests/test_gpu.cu */
#define EKV_IMPLEMENTATION
#define KT_NO_MAIN
#include "test_kernels_emu.cpp"

static void gpu_large(void)
{
    size_t t;
    char name[128];
    for (t = 0; t < sizeof kt_dtypes / sizeof kt_dtypes[0]; t++) {
        kt_case c = kt_make(kt_dtypes[t], 2, 32, 4, 128, 32768, 0);
        if (kt_dtypes[t] == EKV_DTYPE_FP8 && kt_device_sm() < 89) continue;
        snprintf(name, sizeof name, "%s D=128 B=2 H=32 H_kv=4 S=32768, automatic plan",
                 ekv_dtype_name(kt_dtypes[t]));
        TEST_BEGIN(name);
        CHECK(kt_check(&c) > 1, "a long sequence on a few (sequence, kv head) pairs must split");
        TEST_END();
    }
    {
        kt_case c = kt_make(EKV_DTYPE_F16, 64, 16, 16, 64, 4096, 0);
        TEST_BEGIN("f16 D=64 B=64 MHA S=4096 structured, automatic plan");
        c.kind = EKV_DATA_STRUCTURED;
        kt_check(&c);
        TEST_END();
    }
}

static void gpu_run(void)
{
    ekv_config config = ekv_config_default();
    ekv_workload work;
    ekv_report report;
    ekv_result r;
    config.batch = 4;
    config.seq_len = 8192;
    config.heads = 32;
    config.kv_heads = 8;
    config.head_dim = 128;
    config.compression = 1;
    config.policy = EKV_POLICY_NONE;
    config.kv_dtype = EKV_DTYPE_F16;
    config.reps = 30;
    config.warmup = 5;
    config.inner_loops = 16;
    config.paired_baseline = 1;
    config.quiet = 1;
    TEST_BEGIN("ekv_cuda_run on the GPU: validated, cold, plausible bandwidth");
    r = ekv_workload_prepare(&config, &work);
    CHECK(r == EKV_SUCCESS, "prepare: %s", ekv_last_error());
    if (r == EKV_SUCCESS) {
        r = ekv_cuda_run(&config, &work, &report);
        CHECK(r == EKV_SUCCESS, "run: %s", ekv_last_error());
        if (r == EKV_SUCCESS) {
            const double measured = report.device.peak_bw_measured_gbs;
            printf("  %s: median %.4f ms, %.1f GB/s (%.0f%% of theoretical %.0f, %.0f%% of copy "
                   "%.0f), splits %d, copies %d, speedup vs itself %.3f\n",
                   report.device.name, report.stats.median, report.metrics.achieved_gbs,
                   100.0 * report.metrics.efficiency_vs_theoretical,
                   report.metrics.peak_bw_theoretical_gbs,
                   100.0 * report.metrics.efficiency_vs_measured, measured, report.splits,
                   report.cache_copies, report.speedup);
            CHECK(report.metrics.achieved_gbs > 0, "bandwidth > 0");
            CHECK(!(measured > 0) || report.metrics.achieved_gbs <= 1.1 * measured,
                  "%.1f GB/s beyond the copy bandwidth %.1f: not cold, or bytes miscounted",
                  report.metrics.achieved_gbs, measured);
            CHECK(report.cache_copies * report.cache_bytes.total >= 2.0 * report.device.l2_bytes,
                  "cold: %d copies of %.0f bytes vs L2 %lld", report.cache_copies,
                  report.cache_bytes.total, report.device.l2_bytes);
            CHECK(report.speedup > 0.8 && report.speedup < 1.25,
                  "baseline and candidate are the same cache here: ratio %.3f", report.speedup);
        }
        ekv_report_free(&report);
        ekv_workload_free(&work);
    }
    TEST_END();
}

int main(void)
{
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
        (void)cudaGetLastError();
        TEST_SKIP("gpu", "no CUDA device");
        return ekv_test_finish();
    }
    kt_dtypes_and_dims();
    kt_groups();
    kt_lengths();
    kt_policies();
    kt_errors();
    kt_device();
    kt_run();
    gpu_large();
    gpu_run();
    return ekv_test_finish();
}
