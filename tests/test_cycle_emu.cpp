/* test_cycle_emu.cpp - the inference cycle's device path (ekv_cuda.cuh >>cycle) on the
   CPU execution emulator against the CPU cycle (ekv.h >>cycle), at tiny sizes: every
   decode step's attention outputs of cache (f16), int8 and elastic (stride with f32,
   topk with f16, pool with int8) agree within the attention kernel's validation
   tolerance for that cache (ekv_cuda_validation_tolerance; the emulator's cuBLAS
   stand-in sums in the CPU projection's order, so k and v are the same floats); nocache
   agrees with cache on the device; ekv_cuda_cycle_run fills the series, the agreement and
   the memory figures; a cycle larger than the device's free memory (an emulated device
   of 4 MiB) passes host validation and is refused by the device check; the CPU
   and the device, run through the one cycle driver of ekv.h, give reports equal in every
   field but the timings, the serving simulation's paging figures (--page-size) included.

   Build: g++ -std=c++17 -O1 -pthread -DEKV_EMULATOR -Itests/emu/include -I. \
              tests/test_cycle_emu.cpp tests/ekv_impl_emu.cpp -o build/test_cycle_emu */
#include "../ekv_cuda.cuh"
#include "ekv_test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static ekv_config tiny(ekv_variant variant)
{
    ekv_config c = ekv_config_default();
    c.inference = 1;
    c.variant = variant;
    c.batch = 2;
    c.seq_len = 12;
    c.decode_tokens = 4;
    c.layers = 2;
    c.heads = 2;
    c.kv_heads = 1;
    c.head_dim = 64;
    c.reps = 2;
    c.warmup = 0;
    c.compression = 2;
    c.compress_every = 2;
    c.policy = EKV_POLICY_STRIDE;
    return c;
}

/* max over steps and layers of ||dev - cpu|| / ||cpu|| per (step, layer) */
static double worst_rel(const float *cpu, const float *dev, size_t steps_layers, size_t per)
{
    double worst = 0.0;
    for (size_t i = 0; i < steps_layers; i++) {
        double num = 0.0, den = 0.0;
        for (size_t j = 0; j < per; j++) {
            double d = (double)dev[i * per + j] - cpu[i * per + j];
            num += d * d;
            den += (double)cpu[i * per + j] * cpu[i * per + j];
        }
        double rel = den > 0 ? sqrt(num / den) : sqrt(num);
        if (!(rel <= worst)) worst = rel;
    }
    return worst;
}

/* The validation tolerance of the attention kernel the device runs for a cache of this
   dtype and shape (tensor cores or CUDA cores: the dispatcher decides). */
static double kernel_tolerance(const ekv_config *c, ekv_dtype dtype)
{
    ekv_cuda_cache shape;
    ekv_cuda_kernel_info kernel;
    memset(&shape, 0, sizeof shape);
    shape.dtype = dtype;
    shape.batch = c->batch;
    shape.kv_heads = c->kv_heads;
    shape.head_dim = c->head_dim;
    shape.capacity = c->seq_len + c->decode_tokens;
    if (ekv_cuda_attention_kernel(&shape, c->heads, &kernel) != EKV_SUCCESS) return 0.0;
    return ekv_cuda_validation_tolerance(&kernel, shape.capacity);
}

static int same(double a, double b, double rel)
{
    if (a != a || b != b) return a != a && b != b; /* NaN on both sides */
    return fabs(a - b) <= rel * fmax(fabs(a), fabs(b));
}

/* ekv_cycle_run (CPU) and ekv_cuda_cycle_run (emulator) on one config: every report
   field except timings must agree. Exact for counts, bytes and configuration; the
   errors against cache within 1e-4 relative (the attention kernels sum in different
   orders); peak_device_bytes differs by design (the device also holds the weights and
   inputs the CPU reads from the model) and is only checked to be positive. */
static void compare_reports(const char *name, ekv_config c)
{
    /* an error against the cache moves by at most the kernels' own error */
    const double kernel_error = kernel_tolerance(&c, c.kv_dtype) + kernel_tolerance(&c, EKV_DTYPE_INT8);
    ekv_report cpu, dev;
    memset(&cpu, 0, sizeof cpu);
    memset(&dev, 0, sizeof dev);
    TEST_BEGIN(name);
    CHECK(ekv_cycle_run(&c, &cpu) == EKV_SUCCESS, "cpu: %s", ekv_last_error());
    CHECK(ekv_cuda_cycle_run(&c, &dev) == EKV_SUCCESS, "device: %s", ekv_last_error());
    CHECK(cpu.cycle_count == dev.cycle_count && cpu.cycle_count > 0, "cycles %d vs %d", cpu.cycle_count,
          dev.cycle_count);
    CHECK(memcmp(&cpu.config, &dev.config, sizeof cpu.config) == 0, "resolved configs differ");
    CHECK(cpu.kept_tokens_total == dev.kept_tokens_total && cpu.kept_tokens_total > 0, "kept tokens %g vs %g",
          cpu.kept_tokens_total, dev.kept_tokens_total);
    CHECK(cpu.cache_bytes.k == dev.cache_bytes.k && cpu.cache_bytes.v == dev.cache_bytes.v &&
              cpu.cache_bytes.scales == dev.cache_bytes.scales && cpu.cache_bytes.bias == dev.cache_bytes.bias &&
              cpu.cache_bytes.k > 0,
          "bytes read k %g/%g v %g/%g", cpu.cache_bytes.k, dev.cache_bytes.k, cpu.cache_bytes.v, dev.cache_bytes.v);
    CHECK(cpu.metrics.bytes.total == dev.metrics.bytes.total && cpu.metrics.flops == dev.metrics.flops,
          "metrics bytes %g vs %g, flops %g vs %g", cpu.metrics.bytes.total, dev.metrics.bytes.total,
          cpu.metrics.flops, dev.metrics.flops);
    CHECK(same(cpu.kv_cache_bytes, dev.kv_cache_bytes, 0) && same(cpu.kv_cache_bytes_uncompressed,
                                                                  dev.kv_cache_bytes_uncompressed, 0),
          "kv cache bytes");
    CHECK(cpu.sample_count == dev.sample_count && cpu.has_baseline == dev.has_baseline, "samples");
    for (int i = 0; i < cpu.cycle_count && i < dev.cycle_count; i++) {
        const ekv_cycle_result *a = &cpu.cycles[i], *b = &dev.cycles[i];
        const char *v = ekv_variant_name(a->variant);
        CHECK(a->variant == b->variant && a->decode_tokens == b->decode_tokens && a->layers == b->layers &&
                  a->kv_dtype == b->kv_dtype, "%s: identity", v);
        CHECK(a->kv_cache_bytes == b->kv_cache_bytes, "%s: kv bytes %g vs %g", v, a->kv_cache_bytes,
              b->kv_cache_bytes);
        CHECK(a->peak_device_bytes > 0 && b->peak_device_bytes > 0, "%s: peak bytes", v);
        CHECK(a->sample_count == b->sample_count && a->series_count == b->series_count, "%s: counts", v);
        for (int s = 0; s < a->series_count && s < b->series_count; s++)
            CHECK(a->series[s].step == b->series[s].step && a->series[s].context_len == b->series[s].context_len &&
                      a->series[s].kv_cache_bytes == b->series[s].kv_cache_bytes,
                  "%s: series point %d", v, s);
        CHECK(a->has_agreement == b->has_agreement && a->has_baseline == b->has_baseline, "%s: flags", v);
        if (a->has_agreement)
            for (int l = 0; l < a->layers; l++)
                CHECK(same(a->error_vs_cache[l].rel_l2, b->error_vs_cache[l].rel_l2, 1e-4) ||
                          fabs(a->error_vs_cache[l].rel_l2 - b->error_vs_cache[l].rel_l2) <= kernel_error,
                      "%s layer %d: error vs cache %g vs %g", v, l, a->error_vs_cache[l].rel_l2,
                      b->error_vs_cache[l].rel_l2);
    }
    ekv_report_free(&cpu);
    ekv_report_free(&dev);
    TEST_END();
}

static void compare(const char *name, ekv_config c, ekv_dtype dtype)
{
    const double tolerance = kernel_tolerance(&c, dtype);
    const size_t per = (size_t)c.batch * c.heads * c.head_dim;
    const size_t n = per * (size_t)c.layers * (size_t)c.decode_tokens;
    float *cpu = (float *)calloc(n, sizeof(float)), *dev = (float *)calloc(n, sizeof(float));
    TEST_BEGIN(name);
    CHECK(ekv_cycle_outputs(&c, c.variant, cpu) == EKV_SUCCESS, "cpu: %s", ekv_last_error());
    CHECK(ekv_cuda_cycle_outputs(&c, c.variant, dev) == EKV_SUCCESS, "device: %s", ekv_last_error());
    double rel = worst_rel(cpu, dev, (size_t)c.layers * c.decode_tokens, per);
    printf("  %s: worst relative difference per step and layer %.3g (tolerance %.1e)\n", name, rel,
           tolerance);
    CHECK(tolerance > 0 && rel <= tolerance, "relative difference %g", rel);
    TEST_END();
    free(cpu);
    free(dev);
}

/* --quick (the TSan run, about 40x slower): the cycles whose kernels the all-variants run
   and the topk comparison do not already launch are left out. */
int main(int argc, char **argv)
{
    const int quick = argc > 1 && strcmp(argv[1], "--quick") == 0;
    ekv_config c = tiny(EKV_VARIANT_CACHE);
    if (!quick) {
        compare("emu cycle: cache f16, every step vs CPU", c, c.kv_dtype);
        compare("emu cycle: int8, every step vs CPU", tiny(EKV_VARIANT_INT8), EKV_DTYPE_INT8);
    }
    c = tiny(EKV_VARIANT_ELASTIC);
    c.kv_dtype = EKV_DTYPE_F32;
    if (!quick) compare("emu cycle: elastic stride f32, every step vs CPU", c, c.kv_dtype);
    c.policy = EKV_POLICY_TOPK;
    c.kv_dtype = EKV_DTYPE_F16;
    c.observe = 16;
    c.sinks = 1;
    c.recent = 2;
    compare("emu cycle: elastic topk f16, every step vs CPU", c, c.kv_dtype);
    c.policy = EKV_POLICY_POOL;
    c.kv_dtype = EKV_DTYPE_INT8;
    if (!quick) {
        compare("emu cycle: elastic pool int8, every step vs CPU", c, c.kv_dtype);
        ekv_config s = tiny(EKV_VARIANT_SHARED);
        compare("emu cycle: shared, every step vs CPU", s, s.kv_dtype);
    }
    {
        ekv_config a = tiny(EKV_VARIANT_ALL);
        ekv_report r;
        memset(&r, 0, sizeof r);
        TEST_BEGIN("emu cycle: ekv_cuda_cycle_run all variants");
        ekv_result res = ekv_cuda_cycle_run(&a, &r);
        CHECK(res == EKV_SUCCESS, "%s", ekv_last_error());
        if (res == EKV_SUCCESS) {
            CHECK(r.cycle_count == 6, "%d cycles", r.cycle_count);
            CHECK(r.backend == EKV_BACKEND_EMULATOR, "backend");
            const ekv_cycle_result *nocache = &r.cycles[0];
            CHECK(nocache->variant == EKV_VARIANT_NOCACHE && nocache->has_agreement, "nocache first");
            printf("  device nocache vs cache: max |diff| %.3g, bitwise %s\n", nocache->agreement_max_abs_diff,
                   nocache->agreement_bitwise_equal ? "yes" : "no");
            CHECK(nocache->agreement_max_abs_diff <= 1e-6, "nocache vs cache %g", nocache->agreement_max_abs_diff);
            for (int i = 0; i < r.cycle_count; i++) {
                const ekv_cycle_result *y = &r.cycles[i];
                CHECK(y->series_count == a.decode_tokens && y->series[0].context_len == a.seq_len + 1,
                      "%s series", ekv_variant_name(y->variant));
                CHECK(y->total_ms > 0 && y->peak_device_bytes > 0, "%s times and memory",
                      ekv_variant_name(y->variant));
                double phases = 0;
                for (int p = 0; p < EKV_CYCLE_PHASES; p++) phases += y->phases_ms[p];
                /* medians (as total_ms): within the slowest loop, see tests/test_cycle.c */
                CHECK(phases <= y->stats.max * (1 + 1e-6), "%s phases %g > %g", ekv_variant_name(y->variant),
                      phases, y->stats.max);
            }
            CHECK(r.cycles[3].kv_cache_bytes * 2 == r.cycles[1].kv_cache_bytes, "shared = half of cache");
            CHECK(r.cycles[2].error_vs_cache[0].rel_l2 > 0, "int8 lossy");
        }
        ekv_report_free(&r);
        TEST_END();
    }
    {
        ekv_config a = tiny(EKV_VARIANT_ALL);
        a.paired_baseline = 1;
        a.policy = EKV_POLICY_POOL;
        a.kv_dtype = EKV_DTYPE_INT4;
        compare_reports("cycle driver: CPU and emulator reports agree but for timings (all, pool int4)", a);
        a = tiny(EKV_VARIANT_ELASTIC);
        a.policy = EKV_POLICY_TOPK;
        a.observe = 4;
        a.sinks = 1;
        if (!quick) compare_reports("cycle driver: CPU and emulator reports agree but for timings (elastic topk)", a);
    }
    {
        /* an emulated device of 4 MiB, so that a cycle the host has room for (validation
           passes) exceeds the device's free memory: the device check must refuse it */
        ekv_config big = tiny(EKV_VARIANT_CACHE);
        ekv_report r;
        size_t free_bytes = 0, total = 0;
        memset(&r, 0, sizeof r);
        TEST_BEGIN("emu cycle: a cycle beyond the device's free memory is refused by the device check");
        setenv("EKV_EMU_MEMORY_BYTES", "4M", 1);
        cudaDeviceReset();
        cudaMemGetInfo(&free_bytes, &total);
        CHECK(total == ((size_t)4 << 20) && free_bytes == total, "emulated device: %zu of %zu bytes free",
              free_bytes, total);
        big.seq_len = 8192;
        CHECK(ekv_cycle_memory_estimate(&big, big.variant) > 0.9 * (double)free_bytes,
              "the cycle (%.0f bytes) fits the device", ekv_cycle_memory_estimate(&big, big.variant));
        CHECK(ekv_config_validate(&big) == EKV_SUCCESS, "host validation refused it: %s", ekv_last_error());
        CHECK(ekv_cuda_cycle_run(&big, &r) == EKV_ERR_OUT_OF_MEMORY, "not refused: %s", ekv_last_error());
        CHECK(strstr(ekv_last_error(), "of device memory") != NULL && strstr(ekv_last_error(), "--layers") != NULL,
              "not the device check's message: %s", ekv_last_error());
        ekv_report_free(&r);
        unsetenv("EKV_EMU_MEMORY_BYTES");
        cudaDeviceReset();
        TEST_END();
    }
    if (!quick) {
        /* the serving simulation is host accounting through the one driver: the same
           figures whichever backend runs the cycle (its kernels run above: not under TSan) */
        ekv_config a = tiny(EKV_VARIANT_ELASTIC);
        ekv_report cpu, dev;
        memset(&cpu, 0, sizeof cpu);
        memset(&dev, 0, sizeof dev);
        a.page_size = 8;
        a.memory_budget_gb = 0.0002;
        TEST_BEGIN("emu cycle: --page-size --memory-budget: the emulator reports the CPU's paging figures");
        CHECK(ekv_cycle_run(&a, &cpu) == EKV_SUCCESS, "cpu: %s", ekv_last_error());
        CHECK(ekv_cuda_cycle_run(&a, &dev) == EKV_SUCCESS, "device: %s", ekv_last_error());
        CHECK(cpu.serve && dev.serve && memcmp(cpu.serve, dev.serve, sizeof *cpu.serve) == 0 &&
                  cpu.serve->count == 6 && cpu.serve->variants[5].budget.batch > 0,
              "paging figures differ or are missing");
        ekv_report_free(&cpu);
        ekv_report_free(&dev);
        TEST_END();
    }
    return ekv_test_finish();
}
