/* test_kernels_emu.cpp - every kernel of ekv_cuda.cuh against the double CPU reference over
   the same stored cache, on the CPU execution emulator: each dtype at head dims 64, 128
   and 256, GQA groups 1, 2, 3, 4, 5, 7, 8 and 16 on each dtype (tensor cores for all but
   f32), the CUDA-core kernel of every dtype on an sm_75 device, S = 1, S not a multiple of
   any tile or split, S shorter than one split, ragged batches with an empty sequence, pool
   bias, forced and automatic splits; outputs poisoned with NaN first; a planted fragment
   bug must fail validation. Then the error paths (head dim 96, fp8 on an
   sm_80 device, bad arguments, no device, too little memory, a validation failure) and
   ekv_cuda_run end to end (cold and hot, graphs on and off, paired baseline).

   Build: g++ -std=c++17 -O1 -pthread -Itests/emu/include -DEKV_EMULATOR \
              tests/test_kernels_emu.cpp tests/ekv_impl_emu.cpp -o build/test_kernels_emu
   tests/test_gpu.cu includes this file to run the same checks on a real GPU. */
#include "../ekv_cuda.cuh"
#include "ekv_test.h"

#include <stdlib.h>
#include <string.h>

static uint64_t kt_next_seed = 20260101u;

static ekv_config kt_config(void);

/* One attention problem. splits: -1 no plan (NULL), 0 automatic plan, n > 0 forced. */
typedef struct kt_case {
    ekv_dtype dtype;
    int batch, heads, kv_heads, head_dim, seq_len;
    const int *lengths; /* ragged lengths [batch] or NULL */
    ekv_policy policy;
    int compression;
    int splits;
    ekv_data_kind kind;
    int empty_first; /* set lengths[0] = 0 in the stored cache: an empty sequence */
    int expect_wrong; /* a planted bug: the output must fail the tolerance */
} kt_case;

static kt_case kt_make(ekv_dtype dtype, int batch, int heads, int kv_heads, int head_dim,
                       int seq_len, int splits)
{
    kt_case c;
    memset(&c, 0, sizeof c);
    c.dtype = dtype;
    c.batch = batch;
    c.heads = heads;
    c.kv_heads = kv_heads;
    c.head_dim = head_dim;
    c.seq_len = seq_len;
    c.policy = EKV_POLICY_NONE;
    c.compression = 1;
    c.splits = splits;
    c.kind = EKV_DATA_RANDOM;
    return c;
}

/* Builds the stored cache of fresh random data, runs the kernel on the device copy and
   compares with ekv_reference_attention_cache. Returns the split count the call used. */
static int kt_check(const kt_case *c)
{
    ekv_data_desc desc;
    ekv_data data;
    ekv_compress_desc compress;
    ekv_host_cache host;
    ekv_cuda_cache cache;
    ekv_cuda_attention_plan plan;
    double *reference = NULL;
    float *out = NULL, *device_q = NULL, *device_out = NULL;
    size_t count = (size_t)c->batch * c->heads * c->head_dim, i, nan_count = 0;
    int used_splits = 0, max_length = 0, b;
    ekv_result r;

    memset(&desc, 0, sizeof desc);
    memset(&host, 0, sizeof host);
    memset(&cache, 0, sizeof cache);
    memset(&plan, 0, sizeof plan);
    desc.kind = c->kind;
    desc.batch = c->batch;
    desc.heads = c->heads;
    desc.kv_heads = c->kv_heads;
    desc.head_dim = c->head_dim;
    desc.seq_len = c->seq_len;
    desc.seed = kt_next_seed++;
    desc.lengths = c->lengths;
    r = ekv_data_generate(&desc, &data);
    CHECK(r == EKV_SUCCESS, "ekv_data_generate: %s", ekv_last_error());
    if (r != EKV_SUCCESS) return 0;
    memset(&compress, 0, sizeof compress);
    compress.policy = c->policy;
    compress.compression = c->compression;
    r = ekv_cache_build(&data, &compress, c->dtype, 0.0, &host);
    CHECK(r == EKV_SUCCESS, "ekv_cache_build: %s", ekv_last_error());
    if (r != EKV_SUCCESS) goto done;
    if (c->empty_first) host.lengths[0] = 0;
    reference = (double *)malloc(count * sizeof(double));
    out = (float *)malloc(count * sizeof(float));
    if (!reference || !out) {
        CHECK(0, "out of host memory");
        goto done;
    }
    r = ekv_reference_attention_cache(&host, data.q, c->heads, 0.0, reference);
    CHECK(r == EKV_SUCCESS, "reference: %s", ekv_last_error());
    if (r != EKV_SUCCESS) goto done;

    r = ekv_cuda_cache_upload(&host, &cache);
    CHECK(r == EKV_SUCCESS, "upload: %s", ekv_last_error());
    if (r != EKV_SUCCESS) goto done;
    if (c->splits >= 0) {
        r = ekv_cuda_attention_plan_make(&cache, c->heads, c->splits, &plan);
        CHECK(r == EKV_SUCCESS, "plan: %s", ekv_last_error());
        if (r != EKV_SUCCESS) goto done;
        if (plan.workspace_bytes)
            CHECK(cudaMalloc(&plan.workspace, plan.workspace_bytes) == cudaSuccess, "workspace");
        used_splits = plan.splits;
    } else {
        used_splits = 1;
    }
    CHECK(cudaMalloc((void **)&device_q, count * sizeof(float)) == cudaSuccess, "cudaMalloc q");
    CHECK(cudaMalloc((void **)&device_out, count * sizeof(float)) == cudaSuccess, "cudaMalloc out");
    CHECK(cudaMemcpy(device_q, data.q, count * sizeof(float), cudaMemcpyHostToDevice) == cudaSuccess,
          "copy q");
    /* 0xff bytes are NaN: an element the kernel does not write cannot pass */
    CHECK(cudaMemset(device_out, 0xff, count * sizeof(float)) == cudaSuccess, "poison");
    r = ekv_cuda_attention(&cache, device_q, c->heads, 0.0f, device_out,
                           c->splits >= 0 ? &plan : NULL, 0);
    CHECK(r == EKV_SUCCESS, "ekv_cuda_attention: %s", ekv_last_error());
    CHECK(cudaDeviceSynchronize() == cudaSuccess, "synchronize: %s",
          cudaGetErrorString(cudaGetLastError()));
    CHECK(cudaMemcpy(out, device_out, count * sizeof(float), cudaMemcpyDeviceToHost) == cudaSuccess,
          "copy out");
    for (i = 0; i < count; i++)
        if (!(out[i] == out[i])) nan_count++;
    if (!c->expect_wrong)
        CHECK(nan_count == 0, "%zu of %zu outputs NaN (first unwritten or poisoned)", nan_count, count);
    for (b = 0; b < host.batch; b++)
        if (host.lengths[b] > max_length) max_length = host.lengths[b];
    {
        const ekv_error_stats e = ekv_compare_f32(reference, out, count);
        ekv_cuda_kernel_info kernel;
        double tolerance = 0.0;
        r = ekv_cuda_attention_kernel(&cache, c->heads, &kernel);
        CHECK(r == EKV_SUCCESS, "ekv_cuda_attention_kernel: %s", ekv_last_error());
        if (r == EKV_SUCCESS) tolerance = ekv_cuda_validation_tolerance(&kernel, max_length);
        if (c->expect_wrong)
            CHECK(e.rel_l2 > tolerance, "%s: a planted bug went unnoticed: rel_l2 %.3e <= %.1e",
                  kernel.name, e.rel_l2, tolerance);
        else
            CHECK(e.rel_l2 <= tolerance, "%s: rel_l2 %.3e > %.1e (max_abs %.3e)", kernel.name, e.rel_l2,
                  tolerance, e.max_abs);
        if (getenv("KT_VERBOSE"))
            printf("    %s rel_l2 %.3e (tolerance %.1e)\n", kernel.name, e.rel_l2, tolerance);
    }
done:
    if (plan.workspace) cudaFree(plan.workspace);
    if (device_q) cudaFree(device_q);
    if (device_out) cudaFree(device_out);
    ekv_cuda_cache_free(&cache);
    ekv_cache_free(&host);
    ekv_data_free(&data);
    free(reference);
    free(out);
    return used_splits;
}

static const ekv_dtype kt_dtypes[] = {EKV_DTYPE_F32, EKV_DTYPE_F16, EKV_DTYPE_BF16,
                                      EKV_DTYPE_INT8, EKV_DTYPE_INT4, EKV_DTYPE_FP8};

/* fp8 runs only where the device has it; elsewhere its own test expects the error. */
static int kt_device_sm(void)
{
    int device = 0, major = 0, minor = 0;
    cudaGetDevice(&device);
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
    return major * 10 + minor;
}

/* Multi-head attention here (group tile 1); the GQA tiles have their own tests below. */
static void kt_dtypes_and_dims(void)
{
    static const int dims[] = {64, 128, 256};
    static const int ragged[] = {37, 100};
    size_t t, d;
    char name[128];
    for (t = 0; t < sizeof kt_dtypes / sizeof kt_dtypes[0]; t++)
        for (d = 0; d < 3; d++) {
            kt_case c = kt_make(kt_dtypes[t], 2, 2, 2, dims[d], 100, 1);
            if (kt_dtypes[t] == EKV_DTYPE_FP8 && kt_device_sm() < 89) continue;
            c.lengths = ragged;
            snprintf(name, sizeof name, "%s D=%d ragged {37,100} one pass",
                     ekv_dtype_name(kt_dtypes[t]), dims[d]);
            TEST_BEGIN(name);
            CHECK(kt_check(&c) == 1, "expected one split");
            TEST_END();
            c.splits = 3;
            snprintf(name, sizeof name, "%s D=%d ragged {37,100} 3 splits",
                     ekv_dtype_name(kt_dtypes[t]), dims[d]);
            TEST_BEGIN(name);
            CHECK(kt_check(&c) == 3, "expected 3 splits");
            TEST_END();
        }
}

static void kt_groups(void)
{
    static const int groups[] = {2, 4, 8, 16};
    size_t i;
    char name[128];
    for (i = 0; i < sizeof groups / sizeof groups[0]; i++) {
        kt_case c = kt_make(EKV_DTYPE_F16, 1, 2 * groups[i], 2, 128, 77, 0);
        snprintf(name, sizeof name, "f16 D=128 GQA group %d (query heads %d, kv heads 2)",
                 groups[i], c.heads);
        TEST_BEGIN(name);
        kt_check(&c);
        c.splits = 2;
        CHECK(kt_check(&c) == 2, "expected 2 splits");
        TEST_END();
    }
    {
        kt_case c = kt_make(EKV_DTYPE_BF16, 1, 6, 1, 64, 130, 4);
        TEST_BEGIN("bf16 D=64 MQA group 6 (tile partly used), 4 splits");
        CHECK(kt_check(&c) == 4, "expected 4 splits");
        TEST_END();
    }
}

/* Every GQA group the issue names, on each tensor-core dtype (8-head tile up to 8, the
   16-head tile above, head_dim split over 2 or 4 warps where the shape asks for it), and on
   f32's CUDA-core tiles of EKV_CUDA__GROUP_TILE heads. */
static void kt_groups_all_dtypes(void)
{
    static const int groups[] = {1, 2, 3, 4, 5, 7, 8, 16};
    static const int ragged[] = {45, 19};
    size_t t, i;
    char name[160];
    for (t = 0; t < sizeof kt_dtypes / sizeof kt_dtypes[0]; t++) {
        if (kt_dtypes[t] == EKV_DTYPE_FP8 && kt_device_sm() < 89) continue;
        snprintf(name, sizeof name, "%s D=128 GQA groups 1, 2, 3, 4, 5, 7, 8, 16 (2 kv heads, ragged "
                 "{45, 19}), one pass and 2 splits", ekv_dtype_name(kt_dtypes[t]));
        TEST_BEGIN(name);
        for (i = 0; i < sizeof groups / sizeof groups[0]; i++) {
            kt_case c = kt_make(kt_dtypes[t], 2, 2 * groups[i], 2, 128, 45, -1);
            c.lengths = ragged;
            kt_check(&c);
            if (groups[i] == 3 || groups[i] == 16) {
                c.splits = 2;
                CHECK(kt_check(&c) == 2, "expected 2 splits");
            }
        }
        TEST_END();
    }
    {
        static const int dims[] = {64, 256};
        size_t d;
        for (d = 0; d < 2; d++) {
            snprintf(name, sizeof name, "D=%d GQA groups 5 and 16 on every tensor-core dtype", dims[d]);
            TEST_BEGIN(name);
            for (t = 1; t < sizeof kt_dtypes / sizeof kt_dtypes[0]; t++) {
                kt_case c = kt_make(kt_dtypes[t], 1, 5, 1, dims[d], 40, -1);
                if (kt_dtypes[t] == EKV_DTYPE_FP8 && kt_device_sm() < 89) continue;
                kt_check(&c);
                c.heads = 16;
                kt_check(&c);
            }
            TEST_END();
        }
    }
}

#ifdef EKV_EMULATOR_ACTIVE
/* The CUDA-core kernel for every dtype it serves on a device without the tensor-core path
   (sm_75: the dispatcher's other side; fp8 needs sm_89 and is refused there). */
static void kt_cuda_cores(void)
{
    static const int groups[] = {1, 4, 6};
    size_t t, i;
    char name[128];
    setenv("EKV_EMU_SM", "75", 1);
    cudaDeviceReset();
    for (t = 0; t < sizeof kt_dtypes / sizeof kt_dtypes[0]; t++) {
        if (kt_dtypes[t] == EKV_DTYPE_FP8) continue;
        snprintf(name, sizeof name, "sm_75: %s on CUDA cores, D=64 and 128, groups 1, 4, 6",
                 ekv_dtype_name(kt_dtypes[t]));
        TEST_BEGIN(name);
        for (i = 0; i < sizeof groups / sizeof groups[0]; i++) {
            kt_case c = kt_make(kt_dtypes[t], 1, groups[i], 1, i == 1 ? 64 : 128, 70, i == 2 ? 2 : -1);
            ekv_cuda_cache shape;
            ekv_cuda_kernel_info kernel;
            memset(&shape, 0, sizeof shape);
            shape.dtype = kt_dtypes[t];
            shape.batch = 1;
            shape.kv_heads = 1;
            shape.head_dim = 64;
            shape.capacity = 70;
            CHECK(ekv_cuda_attention_kernel(&shape, groups[i], &kernel) == EKV_SUCCESS && !kernel.tensor_cores,
                  "sm_75 runs %s", kernel.name);
            kt_check(&c);
        }
        TEST_END();
    }
    unsetenv("EKV_EMU_SM");
    cudaDeviceReset();
}

/* A wrong fragment index must fail validation: the emulator's mma reads A's rows groupID
   and groupID + 8 the wrong way round (EKV_EMU_MMA_FAULT, see ekv_emu_warp_mma.h), as a
   kernel that put a K row into the wrong register would. */
static void kt_planted_bug(void)
{
    size_t t;
    TEST_BEGIN("planted bug: a swapped fragment register fails validation for every tensor-core dtype");
    setenv("EKV_EMU_MMA_FAULT", "swap-a-rows", 1);
    for (t = 1; t < sizeof kt_dtypes / sizeof kt_dtypes[0]; t++) {
        kt_case c = kt_make(kt_dtypes[t], 1, 4, 1, 64, 50, -1);
        c.expect_wrong = 1;
        kt_check(&c);
    }
    {
        ekv_config config = kt_config();
        ekv_workload work;
        ekv_report report;
        ekv_result r;
        r = ekv_workload_prepare(&config, &work);
        CHECK(r == EKV_SUCCESS, "prepare: %s", ekv_last_error());
        if (r == EKV_SUCCESS) {
            r = ekv_cuda_run(&config, &work, &report);
            CHECK(r == EKV_ERR_VALIDATION && strstr(ekv_last_error(), "rel_l2"), "ekv_cuda_run: %d %s",
                  (int)r, ekv_last_error());
            ekv_report_free(&report);
            ekv_workload_free(&work);
        }
    }
    unsetenv("EKV_EMU_MMA_FAULT");
    TEST_END();
}
#endif

static void kt_lengths(void)
{
    static const int ragged[] = {5, 1, 33, 300};
    {
        kt_case c = kt_make(EKV_DTYPE_F16, 3, 2, 2, 128, 1, 0);
        TEST_BEGIN("S=1, MHA, automatic plan");
        CHECK(kt_check(&c) == 1, "S=1 cannot split");
        c.splits = 5;
        CHECK(kt_check(&c) == 1, "a forced split count is clipped to the capacity");
        c.splits = -1;
        kt_check(&c);
        TEST_END();
    }
    {
        kt_case c = kt_make(EKV_DTYPE_INT8, 1, 1, 1, 64, 1000, 7);
        TEST_BEGIN("int8 S=1000 (no tile or split multiple), 7 splits");
        CHECK(kt_check(&c) == 7, "expected 7 splits");
        c.splits = 0;
        kt_check(&c);
        TEST_END();
    }
    {
        kt_case c = kt_make(EKV_DTYPE_F32, 1, 1, 1, 128, 100, 0);
        TEST_BEGIN("f32 S=100 shorter than one automatic split");
        CHECK(kt_check(&c) == 1, "S below the minimum split length must not split");
        TEST_END();
    }
    {
        kt_case c = kt_make(EKV_DTYPE_F16, 4, 2, 1, 64, 300, 3);
        c.lengths = ragged;
        c.empty_first = 1;
        TEST_BEGIN("ragged batch {0,1,33,300} with an empty sequence, 3 splits");
        CHECK(kt_check(&c) == 3, "expected 3 splits");
        c.splits = -1;
        kt_check(&c);
        TEST_END();
    }
    {
        kt_case c = kt_make(EKV_DTYPE_BF16, 1, 1, 1, 256, 2048, 0);
        TEST_BEGIN("bf16 D=256 B=1 S=2048: the automatic plan splits");
        CHECK(kt_check(&c) > 1, "one (sequence, head) cannot fill the device without splits");
        TEST_END();
    }
}

static void kt_policies(void)
{
    kt_case c = kt_make(EKV_DTYPE_INT4, 1, 8, 2, 128, 203, 2);
    c.policy = EKV_POLICY_POOL;
    c.compression = 4;
    c.kind = EKV_DATA_STRUCTURED;
    TEST_BEGIN("int4 pool C=4 (bias ln 4 on pooled slots), structured data, 2 splits");
    kt_check(&c);
    c.splits = -1;
    kt_check(&c);
    TEST_END();
    c = kt_make(EKV_DTYPE_F16, 2, 2, 2, 64, 500, 0);
    c.policy = EKV_POLICY_STRIDE;
    c.compression = 3;
    c.kind = EKV_DATA_STRUCTURED;
    TEST_BEGIN("f16 stride C=3 structured data, automatic plan");
    kt_check(&c);
    TEST_END();
}

/* A small f16 cache on the device, for the argument checks. */
static ekv_result kt_small_cache(ekv_dtype dtype, int head_dim, ekv_host_cache *host,
                                 ekv_cuda_cache *cache, ekv_data *data)
{
    ekv_data_desc desc;
    ekv_compress_desc compress;
    ekv_result r;
    memset(&desc, 0, sizeof desc);
    memset(&compress, 0, sizeof compress);
    desc.kind = EKV_DATA_RANDOM;
    desc.batch = 1;
    desc.heads = 4;
    desc.kv_heads = 2;
    desc.head_dim = head_dim;
    desc.seq_len = 16;
    desc.seed = kt_next_seed++;
    compress.policy = EKV_POLICY_NONE;
    compress.compression = 1;
    if ((r = ekv_data_generate(&desc, data)) != EKV_SUCCESS) return r;
    if ((r = ekv_cache_build(data, &compress, dtype, 0.0, host)) != EKV_SUCCESS) return r;
    return ekv_cuda_cache_upload(host, cache);
}

static void kt_errors(void)
{
    ekv_host_cache host;
    ekv_cuda_cache cache;
    ekv_data data;
    ekv_cuda_attention_plan plan;
    float *buffer = NULL;
    ekv_result r;

    TEST_BEGIN("head_dim 96 is EKV_ERR_UNSUPPORTED naming 64, 128, 256");
    memset(&host, 0, sizeof host);
    memset(&data, 0, sizeof data);
    r = kt_small_cache(EKV_DTYPE_F16, 96, &host, &cache, &data);
    CHECK(r == EKV_SUCCESS, "setup: %s", ekv_last_error());
    CHECK(cudaMalloc((void **)&buffer, 4 * 96 * sizeof(float)) == cudaSuccess, "cudaMalloc");
    r = ekv_cuda_attention(&cache, buffer, 4, 0.0f, buffer, NULL, 0);
    CHECK(r == EKV_ERR_UNSUPPORTED, "got %d", (int)r);
    CHECK(strstr(ekv_last_error(), "64, 128, 256") != NULL, "message: %s", ekv_last_error());
    r = ekv_cuda_attention_plan_make(&cache, 4, 0, &plan);
    CHECK(r == EKV_ERR_UNSUPPORTED, "plan got %d", (int)r);
    cudaFree(buffer);
    buffer = NULL;
    ekv_cuda_cache_free(&cache);
    ekv_cache_free(&host);
    ekv_data_free(&data);
    TEST_END();

    TEST_BEGIN("bad arguments: heads not a multiple of kv_heads, split without workspace, "
               "misaligned q, NaN scale");
    r = kt_small_cache(EKV_DTYPE_F16, 64, &host, &cache, &data);
    CHECK(r == EKV_SUCCESS, "setup: %s", ekv_last_error());
    CHECK(cudaMalloc((void **)&buffer, 8 * 64 * sizeof(float)) == cudaSuccess, "cudaMalloc");
    r = ekv_cuda_attention(&cache, buffer, 3, 0.0f, buffer, NULL, 0);
    CHECK(r == EKV_ERR_INVALID_ARG && strstr(ekv_last_error(), "kv_heads"), "heads 3: %d %s",
          (int)r, ekv_last_error());
    r = ekv_cuda_attention_plan_make(&cache, 4, 2, &plan);
    CHECK(r == EKV_SUCCESS && plan.splits == 2 && plan.workspace_bytes > 0, "plan of 2 splits");
    r = ekv_cuda_attention(&cache, buffer, 4, 0.0f, buffer, &plan, 0);
    CHECK(r == EKV_ERR_INVALID_ARG && strstr(ekv_last_error(), "workspace"), "no workspace: %d %s",
          (int)r, ekv_last_error());
    r = ekv_cuda_attention(&cache, buffer + 1, 4, 0.0f, buffer, NULL, 0);
    CHECK(r == EKV_ERR_INVALID_ARG && strstr(ekv_last_error(), "aligned"), "misaligned: %d",
          (int)r);
    r = ekv_cuda_attention(&cache, buffer, 4, (float)NAN, buffer, NULL, 0);
    CHECK(r == EKV_ERR_INVALID_ARG, "NaN scale: %d", (int)r);
    r = ekv_cuda_attention_plan_make(&cache, 4, EKV_CUDA_MAX_SPLITS + 1, &plan);
    CHECK(r == EKV_ERR_INVALID_ARG, "too many splits: %d", (int)r);
    cudaFree(buffer);
    buffer = NULL;
    ekv_cuda_cache_free(&cache);
    ekv_cache_free(&host);
    ekv_data_free(&data);
    TEST_END();

    TEST_BEGIN("fp8 needs sm_89: a clear error below, a result from sm_89 on");
#ifdef EKV_EMULATOR_ACTIVE
    setenv("EKV_EMU_SM", "80", 1);
    cudaDeviceReset();
#endif
    r = kt_small_cache(EKV_DTYPE_FP8, 64, &host, &cache, &data);
    CHECK(r == EKV_SUCCESS, "setup: %s", ekv_last_error());
    CHECK(cudaMalloc((void **)&buffer, 4 * 64 * sizeof(float)) == cudaSuccess, "cudaMalloc");
    r = ekv_cuda_attention(&cache, buffer, 4, 0.0f, buffer, NULL, 0);
    if (kt_device_sm() < 89) {
        char expected[96];
        const int sm = kt_device_sm();
        snprintf(expected, sizeof expected,
                 "fp8 KV cache needs sm_89 or newer (device is sm_%d%d)", sm / 10, sm % 10);
        CHECK(r == EKV_ERR_UNSUPPORTED, "got %d", (int)r);
        CHECK(strcmp(ekv_last_error(), expected) == 0, "message: %s", ekv_last_error());
    } else {
        CHECK(r == EKV_SUCCESS, "sm_%d: %s", kt_device_sm(), ekv_last_error());
    }
    cudaFree(buffer);
    buffer = NULL;
    ekv_cuda_cache_free(&cache);
    ekv_cache_free(&host);
    ekv_data_free(&data);
#ifdef EKV_EMULATOR_ACTIVE
    unsetenv("EKV_EMU_SM");
    cudaDeviceReset();
#endif
    TEST_END();
}

static ekv_config kt_config(void)
{
    ekv_config c = ekv_config_default();
    c.batch = 2;
    c.seq_len = 120;
    c.heads = 2;
    c.kv_heads = 2;
    c.head_dim = 64;
    c.compression = 2;
    c.policy = EKV_POLICY_POOL;
    c.kv_dtype = EKV_DTYPE_F16;
    c.reps = 3;
    c.warmup = 1;
    c.inner_loops = 2;
    c.quiet = 1;
    return c;
}

static void kt_run(void)
{
    ekv_config config = kt_config();
    ekv_workload work;
    ekv_report report;
    ekv_result r;
    size_t i;
    int positive = 1;

    config.paired_baseline = 1;
    config.use_graphs = 1;
    TEST_BEGIN("ekv_cuda_run: cold, graphs, paired baseline");
    r = ekv_workload_prepare(&config, &work);
    CHECK(r == EKV_SUCCESS, "prepare: %s", ekv_last_error());
    if (r == EKV_SUCCESS) {
        r = ekv_cuda_run(&config, &work, &report);
        CHECK(r == EKV_SUCCESS, "run: %s", ekv_last_error());
#ifdef EKV_EMULATOR_ACTIVE
        CHECK(report.backend == EKV_BACKEND_EMULATOR, "backend %d", (int)report.backend);
#else
        CHECK(report.backend == EKV_BACKEND_CUDA, "backend %d", (int)report.backend);
#endif
        CHECK(report.sample_count == 3 && report.baseline_sample_count == 3 && report.has_baseline,
              "samples %zu / %zu", report.sample_count, report.baseline_sample_count);
        for (i = 0; i < report.sample_count; i++)
            if (!(report.samples_ms[i] > 0) || !(report.baseline_samples_ms[i] > 0)) positive = 0;
        CHECK(positive, "every sample time > 0");
        {
            ekv_cuda_kernel_info kernel;
            memset(&kernel, 0, sizeof kernel);
            kernel.dtype = config.kv_dtype;
            kernel.tensor_cores = strstr(report.kernel, "mma") != NULL;
            CHECK(report.kernel[0] != '\0', "build.kernel names the kernel");
            CHECK(report.accuracy.kernel.rel_l2 <= ekv_cuda_validation_tolerance(&kernel, 60),
                  "kernel rel_l2 %.3e (%s)", report.accuracy.kernel.rel_l2, report.kernel);
        }
        CHECK(report.accuracy.heads_checked == report.accuracy.heads_total, "every head checked");
        CHECK(report.cache_copies > 1, "cold timing rotates copies (got %d)", report.cache_copies);
        CHECK(report.kept_tokens_total == 2 * 60, "kept %.0f", report.kept_tokens_total);
        CHECK(report.cache_bytes.total > 0 && report.cache_bytes.bias > 0, "cache bytes incl. bias");
        CHECK(report.peak_device_bytes > report.cache_bytes.total, "peak device bytes");
        CHECK(report.stats.n == 3 && report.stats.median > 0, "stats");
        CHECK(report.speedup == report.speedup, "speedup computed");
        CHECK(report.metrics.bytes.total > report.cache_bytes.total, "metrics bytes");
        CHECK(report.device.sm_count > 0 && report.device.peak_bw_theoretical_gbs > 0,
              "device info");
        ekv_report_free(&report);

        config.hot = 1;
        config.use_graphs = 0;
        config.paired_baseline = 0;
        r = ekv_cuda_run(&config, &work, &report);
        CHECK(r == EKV_SUCCESS, "hot run: %s", ekv_last_error());
        CHECK(report.cache_copies == 1 && !report.has_baseline, "hot: one copy, no baseline");
        ekv_report_free(&report);

        /* a reference that disagrees with the kernel must stop the run before timing */
        work.reference_cache[3] += 1.0;
        r = ekv_cuda_run(&config, &work, &report);
        CHECK(r == EKV_ERR_VALIDATION && strstr(ekv_last_error(), "rel_l2"), "validation: %d %s",
              (int)r, ekv_last_error());
        CHECK(report.sample_count == 0, "no samples after a failed validation");
        ekv_report_free(&report);
        ekv_workload_free(&work);
    }
    TEST_END();

#ifdef EKV_EMULATOR_ACTIVE
    config = kt_config();
    TEST_BEGIN("ekv_cuda_run: no device, too little device memory");
    r = ekv_workload_prepare(&config, &work);
    CHECK(r == EKV_SUCCESS, "prepare: %s", ekv_last_error());
    if (r == EKV_SUCCESS) {
        setenv("EKV_EMU_DEVICES", "0", 1);
        cudaDeviceReset();
        r = ekv_cuda_run(&config, &work, &report);
        CHECK(r == EKV_ERR_NO_DEVICE, "no device: %d %s", (int)r, ekv_last_error());
        ekv_report_free(&report);
        unsetenv("EKV_EMU_DEVICES");
        setenv("EKV_EMU_MEMORY_BYTES", "64K", 1);
        cudaDeviceReset();
        r = ekv_cuda_run(&config, &work, &report);
        CHECK(r == EKV_ERR_OUT_OF_MEMORY && strstr(ekv_last_error(), "free"), "memory: %d %s",
              (int)r, ekv_last_error());
        ekv_report_free(&report);
        unsetenv("EKV_EMU_MEMORY_BYTES");
        cudaDeviceReset();
        ekv_workload_free(&work);
    }
    TEST_END();
#endif
}

static void kt_device(void)
{
    ekv_device_info info;
    ekv_result r;
    TEST_BEGIN("ekv_cuda_device_info: attributes, theoretical and measured bandwidth");
    r = ekv_cuda_device_info(0, &info);
    CHECK(r == EKV_SUCCESS, "%s", ekv_last_error());
    CHECK(info.name[0] != '\0' && info.sm_major >= 7 && info.sm_count > 0 && info.l2_bytes > 0,
          "name '%s' sm %d.%d, %d SMs, L2 %lld", info.name, info.sm_major, info.sm_minor,
          info.sm_count, info.l2_bytes);
    CHECK(info.memory_clock_khz > 0 && info.bus_width_bits > 0, "memory clock and bus");
    CHECK_CLOSE(info.peak_bw_theoretical_gbs,
                2.0 * info.memory_clock_khz * 1e3 * info.bus_width_bits / 8.0 / 1e9, 1e-12, 0,
                "theoretical bandwidth");
    CHECK(info.peak_bw_measured_gbs > 0, "measured copy bandwidth %.3g",
          info.peak_bw_measured_gbs);
    CHECK(info.peak_gflops > 0, "peak GFLOP/s");
    CHECK(info.driver_version > 0 && info.runtime_version > 0, "versions");
    TEST_END();
}

static int kt_main(void)
{
    kt_dtypes_and_dims();
    kt_groups();
    kt_groups_all_dtypes();
#ifdef EKV_EMULATOR_ACTIVE
    kt_cuda_cores();
    kt_planted_bug();
#endif
    kt_lengths();
    kt_policies();
    kt_errors();
    kt_device();
    kt_run();
    return ekv_test_finish();
}

#ifndef KT_NO_MAIN
int main(void)
{
    return kt_main();
}
#endif
