/* test_cache_emu.cpp - the device elastic cache (ekv_cuda.cuh >>elastic) against the CPU
   reference of ekv.h >>cacheops, on the CPU execution emulator: every dtype x policy x
   recent window (0, 8) x GQA group (1, 4) on a ragged batch with an empty sequence and an
   active mask, prefill then append then compress then attend over three anchor steps, the
   stored bytes, scales, biases and counts bit-identical to the CPU cache after every
   anchor and the attention over the device cache equal to the double reference over the
   CPU cache; topk scores bit-identical; quantization of edge-value rows (zeros, signed
   zeros, huge, subnormal, rounding ties, constant rows, saturation) bit-identical; memory
   bytes equal to the formula; fp8 on an emulated sm_80 gives the clear error; error paths.
   Inputs are fresh random data each run; the seed is printed (rerun with --seed=N).

   Build: g++ -std=c++17 -O1 -pthread -DEKV_EMULATOR -Itests/emu/include -I. \
              tests/test_cache_emu.cpp tests/ekv_impl_emu.cpp -o build/test_cache_emu
   tests/test_cache_gpu.cu includes this file to run the same checks on a real GPU. */
#include "../ekv_cuda.cuh"
#include "ekv_test.h"

#include <float.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static uint64_t ct_seed;
static ekv_rng ct_rng;

static const ekv_dtype ct_dtypes[EKV_DTYPE_COUNT] = {EKV_DTYPE_F32,  EKV_DTYPE_F16,  EKV_DTYPE_BF16,
                                                     EKV_DTYPE_INT8, EKV_DTYPE_INT4, EKV_DTYPE_FP8};
static const ekv_policy ct_policies[5] = {EKV_POLICY_NONE, EKV_POLICY_STRIDE, EKV_POLICY_POOL,
                                          EKV_POLICY_WINDOW, EKV_POLICY_TOPK};

static int ct_device_sm(void)
{
    int device = 0, major = 0, minor = 0;
    if (cudaGetDevice(&device) != cudaSuccess) return 0;
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
    return major * 10 + minor;
}

/* A device copy of n floats (NULL on failure, with a failed check). */
static float *ct_upload(const float *host, size_t n)
{
    float *device = NULL;
    CHECK(cudaMalloc((void **)&device, n * sizeof(float)) == cudaSuccess, "cudaMalloc %zu floats", n);
    if (device)
        CHECK(cudaMemcpy(device, host, n * sizeof(float), cudaMemcpyHostToDevice) == cudaSuccess,
              "upload");
    return device;
}

static ekv_compress_desc ct_desc(ekv_policy policy, int compression, int recent, int sinks, int observe)
{
    ekv_compress_desc d;
    memset(&d, 0, sizeof d);
    d.policy = policy;
    d.compression = compression;
    d.recent = recent;
    d.sinks = sinks;
    d.observe = observe;
    return d;
}

/* Every used byte of the device cache (downloaded) equals the CPU cache's: rows, per-row
   and per-head scales, bias, lengths and compressed counts. */
static int ct_same(const ekv_cuda_elastic_cache *device, const ekv_host_cache *cpu, char *why,
                   size_t why_size)
{
    ekv_host_cache d;
    const size_t row = ekv_dtype_row_bytes(cpu->dtype, cpu->head_dim);
    const size_t scale = ekv_dtype_row_scale_bytes(cpu->dtype, cpu->head_dim);
    int b, h, s, which, same = 1;
    if (ekv_cuda_elastic_download(device, &d, 0) != EKV_SUCCESS) {
        snprintf(why, why_size, "download: %.150s", ekv_last_error());
        return 0;
    }
    for (b = 0; b < cpu->batch && same; b++) {
        if (d.lengths[b] != cpu->lengths[b] || d.compressed[b] != cpu->compressed[b] ||
            device->host_lengths[b] != cpu->lengths[b] || device->host_compressed[b] != cpu->compressed[b]) {
            snprintf(why, why_size, "sequence %d: device length %d compressed %d (mirror %d %d), cpu %d %d",
                     b, d.lengths[b], d.compressed[b], device->host_lengths[b],
                     device->host_compressed[b], cpu->lengths[b], cpu->compressed[b]);
            same = 0;
            break;
        }
        for (h = 0; h < cpu->kv_heads && same; h++) {
            const size_t head = (size_t)b * cpu->kv_heads + h;
            if (cpu->dtype == EKV_DTYPE_FP8 &&
                (memcmp(d.k_scales + head * 4, cpu->k_scales + head * 4, 4) != 0 ||
                 memcmp(d.v_scales + head * 4, cpu->v_scales + head * 4, 4) != 0)) {
                snprintf(why, why_size, "fp8 head scale of (%d, %d)", b, h);
                same = 0;
            }
            for (s = 0; s < cpu->lengths[b] && same; s++) {
                const size_t r = head * cpu->capacity + s;
                for (which = 0; which < 2 && same; which++) {
                    const unsigned char *vd = which ? d.v : d.k, *vc = which ? cpu->v : cpu->k;
                    const unsigned char *sd = which ? d.v_scales : d.k_scales;
                    const unsigned char *sc = which ? cpu->v_scales : cpu->k_scales;
                    if (memcmp(vd + r * row, vc + r * row, row) != 0 ||
                        (scale && memcmp(sd + r * scale, sc + r * scale, scale) != 0)) {
                        snprintf(why, why_size, "%s row of (%d, %d) slot %d", which ? "V" : "K", b, h, s);
                        same = 0;
                    }
                }
                if (same && cpu->bias && memcmp(&d.bias[r], &cpu->bias[r], 4) != 0) {
                    snprintf(why, why_size, "bias of (%d, %d) slot %d: %g vs %g", b, h, s, d.bias[r],
                             cpu->bias[r]);
                    same = 0;
                }
            }
        }
    }
    ekv_cache_free(&d);
    return same;
}

/* The shape of an elastic cycle: batch (at most 4) and prefill lengths, appends between
   anchors, anchors. */
typedef struct ct_shape {
    int batch, kv_heads, head_dim, prefill[4], every, anchors, observe;
} ct_shape;

/* In the emulator: ragged, one sequence empty at first, seconds per cycle. */
static const ct_shape ct_small = {3, 2, 64, {96, 61, 0, 0}, 6, 3, 4};

/* One run of the elastic cycle on the device and on the CPU. */
static void ct_cycle(const ct_shape *shape, ekv_dtype dtype, ekv_policy policy, int recent, int group)
{
    const int B = shape->batch, HKV = shape->kv_heads, D = shape->head_dim, EVERY = shape->every;
    const int ANCHORS = shape->anchors, OBSERVE = shape->observe;
    const int *prefill = shape->prefill;
    const int heads = HKV * group, capacity = prefill[0] + EVERY * ANCHORS;
    const int compression = policy == EKV_POLICY_NONE ? 1 : policy == EKV_POLICY_WINDOW ? 4 : 3;
    ekv_compress_desc desc = ct_desc(policy, compression, recent, 3, OBSERVE);
    ekv_data_desc dd;
    ekv_data data;
    ekv_host_cache cpu;
    ekv_cuda_elastic_cache dev;
    float *d_k = NULL, *d_v = NULL, *d_q = NULL, *d_observe = NULL, *d_step_k = NULL, *d_step_v = NULL,
          *d_out = NULL, *step_k, *step_v, *out;
    double *reference;
    const size_t out_count = (size_t)B * heads * D;
    int next[4], step, b, h, ok = 1;
    char name[200], why[200];
    snprintf(name, sizeof name,
             "%s %s C=%d W=%d D=%d B=%d H_kv=%d group %d S=%d: prefill, %d x (%d appends, compress), attend",
             ekv_dtype_name(dtype), ekv_policy_name(policy), compression, recent, D, B, HKV, group,
             prefill[0], ANCHORS, EVERY);
    TEST_BEGIN(name);
    memset(&dd, 0, sizeof dd);
    memset(&cpu, 0, sizeof cpu);
    memset(&dev, 0, sizeof dev);
    dd.kind = (group == 4) ? EKV_DATA_STRUCTURED : EKV_DATA_RANDOM;
    dd.batch = B;
    dd.heads = heads;
    dd.kv_heads = HKV;
    dd.head_dim = D;
    dd.seq_len = capacity;
    dd.observe = OBSERVE;
    dd.seed = ekv_rng_next(&ct_rng);
    if (ekv_data_generate(&dd, &data) != EKV_SUCCESS) {
        CHECK(0, "ekv_data_generate: %s", ekv_last_error());
        TEST_END();
        return;
    }
    step_k = (float *)malloc((size_t)B * HKV * D * sizeof(float));
    step_v = (float *)malloc((size_t)B * HKV * D * sizeof(float));
    out = (float *)malloc(out_count * sizeof(float));
    reference = (double *)malloc(out_count * sizeof(double));
    d_k = ct_upload(data.k, (size_t)B * HKV * capacity * D);
    d_v = ct_upload(data.v, (size_t)B * HKV * capacity * D);
    d_q = ct_upload(data.q, out_count);
    d_observe = ct_upload(data.q_observe, (size_t)B * heads * OBSERVE * D);
    CHECK(cudaMalloc((void **)&d_step_k, (size_t)B * HKV * D * sizeof(float)) == cudaSuccess, "malloc");
    CHECK(cudaMalloc((void **)&d_step_v, (size_t)B * HKV * D * sizeof(float)) == cudaSuccess, "malloc");
    CHECK(cudaMalloc((void **)&d_out, out_count * sizeof(float)) == cudaSuccess, "malloc");
    CHECK(ekv_cache_create(&cpu, dtype, B, HKV, D, capacity, policy == EKV_POLICY_POOL) == EKV_SUCCESS,
          "%s", ekv_last_error());
    CHECK(ekv_cuda_elastic_create(&dev, dtype, B, HKV, D, capacity, policy == EKV_POLICY_POOL) ==
              EKV_SUCCESS, "%s", ekv_last_error());
    CHECK(ekv_cache_prefill(&cpu, data.k, data.v, capacity, prefill) == EKV_SUCCESS, "%s",
          ekv_last_error());
    CHECK(ekv_cuda_elastic_prefill(&dev, d_k, d_v, capacity, prefill, 0) == EKV_SUCCESS, "%s",
          ekv_last_error());
    ok = ct_same(&dev, &cpu, why, sizeof why);
    CHECK(ok, "after prefill: %s", why);
    for (b = 0; b < B; b++) next[b] = prefill[b];
    for (step = 1; step <= EVERY * ANCHORS && ok; step++) {
        unsigned char active[4];
        for (b = 0; b < B; b++) {
            active[b] = (unsigned char)(b != 1 || step % 3 != 0);
            for (h = 0; h < HKV; h++) {
                memcpy(step_k + ((size_t)b * HKV + h) * D, data.k + ekv_data_kv_index(&data, b, h, next[b]),
                       D * sizeof(float));
                memcpy(step_v + ((size_t)b * HKV + h) * D, data.v + ekv_data_kv_index(&data, b, h, next[b]),
                       D * sizeof(float));
            }
            if (active[b]) next[b]++;
        }
        CHECK(cudaMemcpy(d_step_k, step_k, (size_t)B * HKV * D * sizeof(float), cudaMemcpyHostToDevice) ==
                  cudaSuccess, "upload");
        CHECK(cudaMemcpy(d_step_v, step_v, (size_t)B * HKV * D * sizeof(float), cudaMemcpyHostToDevice) ==
                  cudaSuccess, "upload");
        CHECK(ekv_cache_append(&cpu, step_k, step_v, active) == EKV_SUCCESS, "%s", ekv_last_error());
        CHECK(ekv_cuda_elastic_append(&dev, d_step_k, d_step_v, active, 0) == EKV_SUCCESS, "%s",
              ekv_last_error());
        if (step % EVERY == 0) {
            CHECK(ekv_cache_compress(&cpu, &desc, data.q_observe, heads, OBSERVE, 0.0) == EKV_SUCCESS,
                  "%s", ekv_last_error());
            CHECK(ekv_cuda_elastic_compress(&dev, &desc, d_observe, heads, OBSERVE, 0.0, 0) ==
                      EKV_SUCCESS, "%s", ekv_last_error());
            for (b = 0; b < B; b++)
                CHECK(cpu.lengths[b] - cpu.compressed[b] <= recent, "sequence %d: %d fresh after compress",
                      b, cpu.lengths[b] - cpu.compressed[b]);
        }
        if (step == 1 || step % EVERY == 0) {
            ok = ct_same(&dev, &cpu, why, sizeof why);
            CHECK(ok, "after step %d: %s", step, why);
        }
    }
    if (ok) {
        ekv_error_stats e;
        ekv_cuda_kernel_info kernel;
        int longest = 0;
        for (b = 0; b < B; b++)
            if (cpu.lengths[b] > longest) longest = cpu.lengths[b];
        CHECK(cudaMemset(d_out, 0xff, out_count * sizeof(float)) == cudaSuccess, "poison");
        CHECK(ekv_cuda_attention(&dev.cache, d_q, heads, 0.0f, d_out, NULL, 0) == EKV_SUCCESS, "%s",
              ekv_last_error());
        CHECK(cudaMemcpy(out, d_out, out_count * sizeof(float), cudaMemcpyDeviceToHost) == cudaSuccess,
              "download");
        CHECK(ekv_reference_attention_cache(&cpu, data.q, heads, 0.0, reference) == EKV_SUCCESS, "%s",
              ekv_last_error());
        e = ekv_compare_f32(reference, out, out_count);
        CHECK(ekv_cuda_attention_kernel(&dev.cache, heads, &kernel) == EKV_SUCCESS, "%s", ekv_last_error());
        CHECK(e.rel_l2 <= ekv_cuda_validation_tolerance(&kernel, longest), "attention rel_l2 %.3g (%s)",
              e.rel_l2, kernel.name);
    }
    cudaFree(d_k);
    cudaFree(d_v);
    cudaFree(d_q);
    cudaFree(d_observe);
    cudaFree(d_step_k);
    cudaFree(d_step_v);
    cudaFree(d_out);
    free(step_k);
    free(step_v);
    free(out);
    free(reference);
    ekv_cuda_elastic_free(&dev);
    ekv_cache_free(&cpu);
    ekv_data_free(&data);
    TEST_END();
}

/* --quick (the TSan run, ~10x slower): every policy and GQA group, with a recent window,
   for f16 and int4 only: every kernel path of append and compress still runs. */
static int ct_quick;

static void ct_cycles(void)
{
    int t, p, w, g;
    for (t = 0; t < EKV_DTYPE_COUNT; t++) {
        if (ct_dtypes[t] == EKV_DTYPE_FP8 && ct_device_sm() < 89) continue;
        if (ct_quick && ct_dtypes[t] != EKV_DTYPE_F16 && ct_dtypes[t] != EKV_DTYPE_INT4) continue;
        for (p = 0; p < 5; p++)
            for (w = ct_quick; w < 2; w++)
                for (g = 0; g < 2; g++) ct_cycle(&ct_small, ct_dtypes[t], ct_policies[p], w * 8, g ? 4 : 1);
    }
}

/* Rows chosen to hit every rounding path of the quantizers. */
static void ct_edge_row(int kind, float *x, int D)
{
    int i;
    for (i = 0; i < D; i++) {
        const double u = ekv_rng_uniform(&ct_rng), n = ekv_rng_normal(&ct_rng);
        switch (kind) {
        case 0: x[i] = 0.0f; break;
        case 1: x[i] = -0.0f; break;
        case 2: x[i] = (i % 3) ? 0.0f : -0.0f; break;                       /* signed zeros */
        case 3: x[i] = (float)((u < 0.5 ? -1.0 : 1.0) * 3.0e38 * (0.5 + u)); break; /* huge */
        case 4: x[i] = (float)(1e-41 * (i - D / 2));  break;                 /* subnormal */
        case 5: x[i] = i == 0 ? 127.0f : (float)(i % 20) - 9.5f; break;    /* int8 ties */
        case 6: x[i] = (i % 32 == 0) ? 0.0f : (i % 32 == 1) ? 15.0f : (float)(i % 15) + 0.5f; break;
        case 7: x[i] = 3.0f; break;                                         /* constant */
        case 8: x[i] = (float)n; break;
        case 9: x[i] = (float)(exp(8.0 * n) * (u < 0.5 ? -1.0 : 1.0)); break; /* wide range */
        case 10: x[i] = i == 5 ? 1000.0f : (float)(1e-6 * n); break;        /* one spike */
        case 11: x[i] = (i % 4 == 0) ? 65519.0f : (i % 4 == 1) ? 65520.0f : (i % 4 == 2) ? -7e4f
                                                                                      : 1.00390625f;
            break;
        case 12: x[i] = (i % 32 < 16) ? -2.5f : 2.5f; break;               /* two values */
        default: x[i] = (float)(n * 1e-3); break;
        }
    }
}

static void ct_quantize_edges(void)
{
    static const int dims[3] = {64, 128, 256};
    enum { ROWS = 14 };
    int t, di;
    char name[128], why[200];
    for (t = 0; t < EKV_DTYPE_COUNT; t++)
        for (di = 0; di < 3; di++) {
            const ekv_dtype dtype = ct_dtypes[t];
            const int D = dims[di];
            float *rows = (float *)malloc((size_t)ROWS * 2 * D * sizeof(float));
            float *first_round = (float *)malloc((size_t)ROWS * 2 * D * sizeof(float));
            float *d_rows;
            ekv_host_cache cpu;
            ekv_cuda_elastic_cache dev;
            int zero[ROWS], i, round;
            if (dtype == EKV_DTYPE_FP8 && ct_device_sm() < 89) {
                free(rows);
                free(first_round);
                continue;
            }
            snprintf(name, sizeof name, "%s D=%d: append quantizes edge rows bit for bit", ekv_dtype_name(dtype), D);
            TEST_BEGIN(name);
            memset(zero, 0, sizeof zero);
            CHECK(ekv_cache_create(&cpu, dtype, ROWS, 2, D, 3, 0) == EKV_SUCCESS, "%s", ekv_last_error());
            CHECK(ekv_cuda_elastic_create(&dev, dtype, ROWS, 2, D, 3, 0) == EKV_SUCCESS, "%s", ekv_last_error());
            CHECK(ekv_cache_prefill(&cpu, rows, rows, 1, zero) == EKV_SUCCESS, "%s", ekv_last_error());
            d_rows = ct_upload(rows, (size_t)ROWS * 2 * D);
            CHECK(ekv_cuda_elastic_prefill(&dev, d_rows, d_rows, 1, zero, 0) == EKV_SUCCESS, "%s",
                  ekv_last_error());
            /* round 0 sets fp8 scales from each row; round 1 (scaled random rows and the edge
               rows again) quantizes under scales set by other rows, saturating some */
            for (round = 0; round < 3; round++) {
                for (i = 0; i < ROWS; i++) {
                    ct_edge_row(round == 1 ? 9 : i, rows + (size_t)(2 * i) * D, D);
                    ct_edge_row(round == 1 ? 8 : (i + 5) % ROWS, rows + (size_t)(2 * i + 1) * D, D);
                }
                if (round == 0) memcpy(first_round, rows, (size_t)ROWS * 2 * D * sizeof(float));
                CHECK(cudaMemcpy(d_rows, rows, (size_t)ROWS * 2 * D * sizeof(float), cudaMemcpyHostToDevice) ==
                          cudaSuccess, "upload");
                CHECK(ekv_cache_append(&cpu, rows, rows, NULL) == EKV_SUCCESS, "%s", ekv_last_error());
                CHECK(ekv_cuda_elastic_append(&dev, d_rows, d_rows, NULL, 0) == EKV_SUCCESS, "%s",
                      ekv_last_error());
            }
            CHECK(ct_same(&dev, &cpu, why, sizeof why), "%s", why);
            /* and the CPU cache holds what ekv_quantize_row gives for the first round */
            for (i = 0; i < ROWS; i++) {
                unsigned char expect[1024], expect_scale[64];
                const size_t r = (size_t)i * 2 * 3;
                float head_scale = 0.0f;
                if (dtype == EKV_DTYPE_FP8) { /* the rule: a row into a 0 scale sets it */
                    int e;
                    for (e = 0; e < D; e++)
                        if (fabsf(first_round[(size_t)(2 * i) * D + e]) > head_scale)
                            head_scale = fabsf(first_round[(size_t)(2 * i) * D + e]);
                    head_scale /= 448.0f;
                }
                ekv_quantize_row(dtype, first_round + (size_t)(2 * i) * D, D, head_scale, expect, expect_scale);
                CHECK(memcmp(cpu.k + r * ekv_dtype_row_bytes(dtype, D), expect, ekv_dtype_row_bytes(dtype, D)) == 0,
                      "row kind %d differs from ekv_quantize_row", i);
            }
            cudaFree(d_rows);
            ekv_cuda_elastic_free(&dev);
            ekv_cache_free(&cpu);
            free(rows);
            free(first_round);
            TEST_END();
        }
}

static void ct_scores(void)
{
    enum { B = 2, HKV = 2, HEADS = 8, D = 64, S = 150, OBSERVE = 3 };
    static const int lengths[B] = {S, 97};
    int t;
    char name[128];
    for (t = 0; t < EKV_DTYPE_COUNT; t++) {
        const ekv_dtype dtype = ct_dtypes[t];
        ekv_data_desc dd;
        ekv_data data;
        ekv_host_cache cpu;
        ekv_cuda_elastic_cache dev;
        ekv_compress_desc pool = ct_desc(EKV_POLICY_POOL, 4, 16, 0, OBSERVE);
        const size_t n = (size_t)B * HKV * S;
        double *want = (double *)malloc(n * sizeof(double)), *got = (double *)malloc(n * sizeof(double));
        double *d_scores = NULL;
        float *d_k, *d_v, *d_observe;
        size_t i, mismatches = 0;
        if (dtype == EKV_DTYPE_FP8 && ct_device_sm() < 89) {
            free(want);
            free(got);
            continue;
        }
        snprintf(name, sizeof name, "%s: observed scores over a pooled cache (bias) bit for bit",
                 ekv_dtype_name(dtype));
        TEST_BEGIN(name);
        memset(&dd, 0, sizeof dd);
        dd.kind = EKV_DATA_STRUCTURED;
        dd.batch = B;
        dd.heads = HEADS;
        dd.kv_heads = HKV;
        dd.head_dim = D;
        dd.seq_len = S;
        dd.observe = OBSERVE;
        dd.lengths = lengths;
        dd.seed = ekv_rng_next(&ct_rng);
        CHECK(ekv_data_generate(&dd, &data) == EKV_SUCCESS, "%s", ekv_last_error());
        d_k = ct_upload(data.k, (size_t)B * HKV * S * D);
        d_v = ct_upload(data.v, (size_t)B * HKV * S * D);
        d_observe = ct_upload(data.q_observe, (size_t)B * HEADS * OBSERVE * D);
        CHECK(cudaMalloc((void **)&d_scores, n * sizeof(double)) == cudaSuccess, "malloc");
        CHECK(ekv_cache_create(&cpu, dtype, B, HKV, D, S, 1) == EKV_SUCCESS, "%s", ekv_last_error());
        CHECK(ekv_cuda_elastic_create(&dev, dtype, B, HKV, D, S, 1) == EKV_SUCCESS, "%s", ekv_last_error());
        CHECK(ekv_cache_prefill(&cpu, data.k, data.v, S, lengths) == EKV_SUCCESS, "%s", ekv_last_error());
        CHECK(ekv_cuda_elastic_prefill(&dev, d_k, d_v, S, lengths, 0) == EKV_SUCCESS, "%s", ekv_last_error());
        CHECK(ekv_cache_compress(&cpu, &pool, NULL, 0, 0, 0.0) == EKV_SUCCESS, "%s", ekv_last_error());
        CHECK(ekv_cuda_elastic_compress(&dev, &pool, NULL, 0, 0, 0.0, 0) == EKV_SUCCESS, "%s", ekv_last_error());
        for (i = 0; i < n; i++) got[i] = NAN;
        CHECK(cudaMemcpy(d_scores, got, n * sizeof(double), cudaMemcpyHostToDevice) == cudaSuccess, "poison");
        CHECK(ekv_cache_observed_scores(&cpu, data.q_observe, HEADS, OBSERVE, 0.3, want) == EKV_SUCCESS,
              "%s", ekv_last_error());
        CHECK(ekv_cuda_elastic_observed_scores(&dev, d_observe, HEADS, OBSERVE, 0.3, d_scores, 0) ==
                  EKV_SUCCESS, "%s", ekv_last_error());
        CHECK(cudaMemcpy(got, d_scores, n * sizeof(double), cudaMemcpyDeviceToHost) == cudaSuccess, "download");
        for (i = 0; i < n; i++)
            if (memcmp(&got[i], &want[i], sizeof(double)) != 0) mismatches++;
        CHECK(mismatches == 0, "%zu of %zu scores differ (first of sequence 0: %.17g vs %.17g)", mismatches,
              n, got[0], want[0]);
        cudaFree(d_k);
        cudaFree(d_v);
        cudaFree(d_observe);
        cudaFree(d_scores);
        ekv_cuda_elastic_free(&dev);
        ekv_cache_free(&cpu);
        ekv_data_free(&data);
        free(want);
        free(got);
        TEST_END();
    }
}

/* topk where many scores tie exactly: keys repeat every 5 tokens, so the selection's
   threshold falls inside a run of equal scores and the older tokens must win, on the
   device as on the CPU; C = 1 keeps every candidate. */
static void ct_topk_ties(void)
{
    enum { B = 2, HKV = 2, HEADS = 4, D = 64, S = 140, OBSERVE = 2 };
    static const int lengths[B] = {S, 77};
    static const int compression[3] = {1, 3, 7};
    int t, c;
    char name[128], why[200];
    for (t = 0; t < EKV_DTYPE_COUNT; t++)
        for (c = 0; c < 3; c++) {
            const ekv_dtype dtype = ct_dtypes[t];
            ekv_compress_desc topk = ct_desc(EKV_POLICY_TOPK, compression[c], 4, 2, OBSERVE);
            ekv_data_desc dd;
            ekv_data data;
            ekv_host_cache cpu;
            ekv_cuda_elastic_cache dev;
            float *d_k, *d_v, *d_observe;
            int b, h, s;
            if (dtype == EKV_DTYPE_FP8 && ct_device_sm() < 89) continue;
            snprintf(name, sizeof name, "%s topk C=%d over exactly tied scores: older tokens win",
                     ekv_dtype_name(dtype), compression[c]);
            TEST_BEGIN(name);
            memset(&dd, 0, sizeof dd);
            dd.kind = EKV_DATA_RANDOM;
            dd.batch = B;
            dd.heads = HEADS;
            dd.kv_heads = HKV;
            dd.head_dim = D;
            dd.seq_len = S;
            dd.observe = OBSERVE;
            dd.lengths = lengths;
            dd.seed = ekv_rng_next(&ct_rng);
            CHECK(ekv_data_generate(&dd, &data) == EKV_SUCCESS, "%s", ekv_last_error());
            for (b = 0; b < B; b++)
                for (h = 0; h < HKV; h++)
                    for (s = 5; s < S; s++)
                        memcpy(data.k + ekv_data_kv_index(&data, b, h, s),
                               data.k + ekv_data_kv_index(&data, b, h, s % 5), D * sizeof(float));
            d_k = ct_upload(data.k, (size_t)B * HKV * S * D);
            d_v = ct_upload(data.v, (size_t)B * HKV * S * D);
            d_observe = ct_upload(data.q_observe, (size_t)B * HEADS * OBSERVE * D);
            CHECK(ekv_cache_create(&cpu, dtype, B, HKV, D, S, 0) == EKV_SUCCESS, "%s", ekv_last_error());
            CHECK(ekv_cuda_elastic_create(&dev, dtype, B, HKV, D, S, 0) == EKV_SUCCESS, "%s", ekv_last_error());
            CHECK(ekv_cache_prefill(&cpu, data.k, data.v, S, lengths) == EKV_SUCCESS, "%s", ekv_last_error());
            CHECK(ekv_cuda_elastic_prefill(&dev, d_k, d_v, S, lengths, 0) == EKV_SUCCESS, "%s", ekv_last_error());
            CHECK(ekv_cache_compress(&cpu, &topk, data.q_observe, HEADS, OBSERVE, 0.0) == EKV_SUCCESS, "%s",
                  ekv_last_error());
            CHECK(ekv_cuda_elastic_compress(&dev, &topk, d_observe, HEADS, OBSERVE, 0.0, 0) == EKV_SUCCESS,
                  "%s", ekv_last_error());
            CHECK(ct_same(&dev, &cpu, why, sizeof why), "%s", why);
            cudaFree(d_k);
            cudaFree(d_v);
            cudaFree(d_observe);
            ekv_cuda_elastic_free(&dev);
            ekv_cache_free(&cpu);
            ekv_data_free(&data);
            TEST_END();
        }
}

static void ct_memory(void)
{
    /* batch 2, kv_heads 3, head_dim 64, capacity 10 = 60 slots; see ekv.h >>cacheops */
    static const size_t want[EKV_DTYPE_COUNT] = {60 * 512, 60 * 256, 60 * 256, 60 * 136, 60 * 80, 60 * 128 + 48};
    int t, bias;
    TEST_BEGIN("ekv_cuda_elastic_memory_bytes equals the formula and the host cache's");
    for (t = 0; t < EKV_DTYPE_COUNT; t++)
        for (bias = 0; bias < 2; bias++) {
            ekv_cuda_elastic_cache dev;
            ekv_host_cache host;
            if (ct_dtypes[t] == EKV_DTYPE_FP8 && ct_device_sm() < 89) continue;
            CHECK(ekv_cuda_elastic_create(&dev, ct_dtypes[t], 2, 3, 64, 10, bias) == EKV_SUCCESS, "%s",
                  ekv_last_error());
            CHECK(ekv_cache_create(&host, ct_dtypes[t], 2, 3, 64, 10, bias) == EKV_SUCCESS, "%s",
                  ekv_last_error());
            CHECK(ekv_cuda_elastic_memory_bytes(&dev) == want[t] + (bias ? 240u : 0u), "%s bias %d: %zu",
                  ekv_dtype_name(ct_dtypes[t]), bias, ekv_cuda_elastic_memory_bytes(&dev));
            CHECK(ekv_cuda_elastic_memory_bytes(&dev) == ekv_cache_memory_bytes(&host), "host %zu",
                  ekv_cache_memory_bytes(&host));
            CHECK(dev.cache.allocation_bytes >= ekv_cuda_elastic_memory_bytes(&dev), "allocation %zu",
                  dev.cache.allocation_bytes);
            ekv_cuda_elastic_free(&dev);
            ekv_cache_free(&host);
        }
    TEST_END();
}

static void ct_fp8_old_device(void)
{
    ekv_cuda_elastic_cache dev;
    ekv_result r;
    TEST_BEGIN("fp8 needs sm_89: a clear error below, other dtypes still work");
#ifdef EKV_EMULATOR_ACTIVE
    setenv("EKV_EMU_SM", "80", 1);
    cudaDeviceReset();
#endif
    r = ekv_cuda_elastic_create(&dev, EKV_DTYPE_FP8, 2, 2, 64, 16, 0);
    if (ct_device_sm() < 89) {
        char expected[96];
        snprintf(expected, sizeof expected, "fp8 KV cache needs sm_89 or newer (device is sm_%d%d)",
                 ct_device_sm() / 10, ct_device_sm() % 10);
        CHECK(r == EKV_ERR_UNSUPPORTED, "got %d", (int)r);
        CHECK(strcmp(ekv_last_error(), expected) == 0, "message: %s", ekv_last_error());
        CHECK(dev.cache.allocation == NULL && dev.compressed == NULL, "nothing stays allocated");
    } else {
        CHECK(r == EKV_SUCCESS, "%s", ekv_last_error());
        ekv_cuda_elastic_free(&dev);
    }
    r = ekv_cuda_elastic_create(&dev, EKV_DTYPE_INT8, 2, 2, 64, 16, 0);
    CHECK(r == EKV_SUCCESS, "int8 on sm_%d: %s", ct_device_sm(), ekv_last_error());
    ekv_cuda_elastic_free(&dev);
#ifdef EKV_EMULATOR_ACTIVE
    unsetenv("EKV_EMU_SM");
    cudaDeviceReset();
#endif
    TEST_END();
}

static void ct_errors(void)
{
    ekv_cuda_elastic_cache dev;
    ekv_host_cache back;
    ekv_compress_desc d = ct_desc(EKV_POLICY_POOL, 2, 0, 0, 1);
    float rows[2 * 2 * 2 * 64];
    float *d_rows;
    int lengths[2] = {2, 1}, i;
    unsigned char second_only[2] = {0, 1};
    ekv_result r;
    TEST_BEGIN("errors: full sequence, pool without bias, topk without queries, bad shapes");
    for (i = 0; i < 2 * 2 * 2 * 64; i++) rows[i] = (float)(i % 7) - 3.0f;
    d_rows = ct_upload(rows, 2 * 2 * 2 * 64);
    CHECK(ekv_cuda_elastic_create(&dev, EKV_DTYPE_INT8, 2, 2, 64, 2, 0) == EKV_SUCCESS, "%s", ekv_last_error());
    CHECK(ekv_cuda_elastic_prefill(&dev, d_rows, d_rows, 2, lengths, 0) == EKV_SUCCESS, "%s", ekv_last_error());
    r = ekv_cuda_elastic_append(&dev, d_rows, d_rows, NULL, 0);
    CHECK(r == EKV_ERR_INVALID_ARG && strstr(ekv_last_error(), "sequence 0 is full (capacity 2)"),
          "full: %d %s", (int)r, ekv_last_error());
    CHECK(ekv_cuda_elastic_append(&dev, d_rows, d_rows, second_only, 0) == EKV_SUCCESS, "%s", ekv_last_error());
    CHECK(ekv_cuda_elastic_download(&dev, &back, 0) == EKV_SUCCESS, "%s", ekv_last_error());
    CHECK(back.lengths[0] == 2 && back.lengths[1] == 2, "lengths %d %d", back.lengths[0], back.lengths[1]);
    ekv_cache_free(&back);
    r = ekv_cuda_elastic_compress(&dev, &d, NULL, 0, 0, 0.0, 0);
    CHECK(r == EKV_ERR_INVALID_ARG && strstr(ekv_last_error(), "with_bias"), "%s", ekv_last_error());
    d = ct_desc(EKV_POLICY_TOPK, 2, 0, 0, 1);
    r = ekv_cuda_elastic_compress(&dev, &d, NULL, 4, 1, 0.0, 0);
    CHECK(r == EKV_ERR_INVALID_ARG && strstr(ekv_last_error(), "observed queries"), "%s", ekv_last_error());
    r = ekv_cuda_elastic_compress(&dev, &d, d_rows, 3, 1, 0.0, 0);
    CHECK(r == EKV_ERR_INVALID_ARG && strstr(ekv_last_error(), "heads (3)"), "%s", ekv_last_error());
    d = ct_desc(EKV_POLICY_NONE, 2, 0, 0, 1);
    CHECK(ekv_cuda_elastic_compress(&dev, &d, NULL, 0, 0, 0.0, 0) == EKV_ERR_INVALID_ARG, "none with C=2");
    lengths[0] = 3;
    CHECK(ekv_cuda_elastic_prefill(&dev, d_rows, d_rows, 2, lengths, 0) == EKV_ERR_INVALID_ARG,
          "prefill beyond the source");
    ekv_cuda_elastic_free(&dev);
    r = ekv_cuda_elastic_create(&dev, EKV_DTYPE_F16, 1, 1, 96, 8, 0);
    CHECK(r == EKV_ERR_UNSUPPORTED && strstr(ekv_last_error(), "head_dim 96"), "%s", ekv_last_error());
    r = ekv_cuda_elastic_create(&dev, EKV_DTYPE_F16, EKV_CUDA_ELASTIC_MAX_BATCH + 1, 1, 64, 8, 0);
    CHECK(r == EKV_ERR_INVALID_ARG, "batch above the maximum: %d", (int)r);
    memset(&dev, 0, sizeof dev);
    r = ekv_cuda_elastic_append(&dev, d_rows, d_rows, NULL, 0);
    CHECK(r == EKV_ERR_INVALID_ARG && strstr(ekv_last_error(), "ekv_cuda_elastic_create"), "%s",
          ekv_last_error());
    cudaFree(d_rows);
    TEST_END();
}

/* Every check of this file; the GPU test adds its own and prints the closing line. */
static void ct_main_checks(int argc, char **argv)
{
    int i;
    ct_seed = (uint64_t)time(NULL) ^ ((uint64_t)clock() << 32);
    for (i = 1; i < argc; i++)
        if (strncmp(argv[i], "--seed=", 7) == 0) ct_seed = strtoull(argv[i] + 7, NULL, 10);
        else if (strcmp(argv[i], "--quick") == 0) ct_quick = 1;
    printf("test_cache: seed %llu (rerun with --seed=%llu)\n", (unsigned long long)ct_seed,
           (unsigned long long)ct_seed);
    ekv_rng_seed(&ct_rng, ct_seed);
    ct_memory();
    ct_errors();
    ct_fp8_old_device();
    ct_quantize_edges();
    ct_scores();
    ct_topk_ties();
    ct_cycles();
}

#ifndef CT_NO_MAIN
int main(int argc, char **argv)
{
    ct_main_checks(argc, argv);
    return ekv_test_finish();
}
#endif
