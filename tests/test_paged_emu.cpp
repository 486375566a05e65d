/* test_paged_emu.cpp - the attention kernels reading a paged cache (ekv.h >>paged, uploaded
   by ekv_cuda_cache_upload_paged) on the CPU execution emulator: for every dtype, GQA
   groups 1, 4 and 8, head dims 64 and 128, page sizes 16 and 64 (and 8 where the CUDA-core
   kernel runs), ragged batches with pages taken from a shuffled free list, the policies in
   turn (pool's bias included): without splits the paged output equals the contiguous
   kernel's bit for bit; with forced splits (whole pages each) both stay within the
   kernel's tolerance of the double CPU reference; outputs poisoned with NaN first. On an
   sm_75 device the CUDA-core kernels of every dtype, page size 8 included; page size 8
   where the tensor-core kernel runs is refused with EKV_ERR_UNSUPPORTED. A planted fault
   (a block table entry pointing at another page) must be caught.
   --quick (the TSan run) takes a subset.

   Build: g++ -std=c++17 -O1 -pthread -Itests/emu/include -DEKV_EMULATOR \
              tests/test_paged_emu.cpp tests/ekv_impl_emu.cpp -o build/test_paged_emu */
#include "../ekv_cuda.cuh"
#include "ekv_test.h"

#include <stdlib.h>
#include <string.h>

static uint64_t pt_seed = 20261202u;
static ekv_rng pt_rng;

static const ekv_dtype pt_dtypes[] = {EKV_DTYPE_F32, EKV_DTYPE_F16, EKV_DTYPE_BF16,
                                      EKV_DTYPE_INT8, EKV_DTYPE_INT4, EKV_DTYPE_FP8};
static const ekv_policy pt_policies[] = {EKV_POLICY_NONE, EKV_POLICY_STRIDE, EKV_POLICY_POOL,
                                         EKV_POLICY_WINDOW, EKV_POLICY_TOPK};

/* Runs attention over a device cache: out (host) receives batch x heads x head_dim. */
static ekv_result pt_run(const ekv_cuda_cache *cache, const float *q, int heads, int splits, float *out,
                         size_t count)
{
    ekv_cuda_attention_plan plan;
    float *device_q = NULL, *device_out = NULL;
    ekv_result r;
    memset(&plan, 0, sizeof plan);
    if (splits > 0) {
        if ((r = ekv_cuda_attention_plan_make(cache, heads, splits, &plan)) != EKV_SUCCESS) return r;
        if (plan.workspace_bytes && cudaMalloc(&plan.workspace, plan.workspace_bytes) != cudaSuccess)
            return EKV_ERR_OUT_OF_MEMORY;
    }
    if (cudaMalloc((void **)&device_q, count * sizeof(float)) != cudaSuccess ||
        cudaMalloc((void **)&device_out, count * sizeof(float)) != cudaSuccess) {
        r = EKV_ERR_OUT_OF_MEMORY;
        goto done;
    }
    cudaMemcpy(device_q, q, count * sizeof(float), cudaMemcpyHostToDevice);
    cudaMemset(device_out, 0xff, count * sizeof(float)); /* NaN: unwritten outputs fail */
    r = ekv_cuda_attention(cache, device_q, heads, 0.0f, device_out, splits > 0 ? &plan : NULL, 0);
    if (r == EKV_SUCCESS && cudaDeviceSynchronize() != cudaSuccess) r = EKV_ERR_CUDA;
    if (r == EKV_SUCCESS) cudaMemcpy(out, device_out, count * sizeof(float), cudaMemcpyDeviceToHost);
done:
    if (plan.workspace) cudaFree(plan.workspace);
    if (device_q) cudaFree(device_q);
    if (device_out) cudaFree(device_out);
    return r;
}

/* The stored cache of fresh random data with a policy, and the same cache paged: each
   sequence admitted (in reverse order) into pages popped from a shuffled free list. */
typedef struct pt_case {
    ekv_dtype dtype;
    ekv_policy policy;
    int group, head_dim, page_size;
    int fault; /* plant a wrong block-table entry: the outputs must differ */
} pt_case;

static void pt_check(const pt_case *c)
{
    enum { BATCH = 3, KV_HEADS = 2 };
    const int heads = KV_HEADS * c->group, seq = 150;
    const int lengths[BATCH] = {150, 37, 101};
    const size_t count = (size_t)BATCH * heads * c->head_dim;
    ekv_data_desc desc;
    ekv_data data;
    ekv_compress_desc compress;
    ekv_host_cache host;
    ekv_paged_cache paged;
    ekv_cuda_cache flat_device, paged_device;
    float *out_flat = (float *)malloc(count * sizeof(float)), *out_paged = (float *)malloc(count * sizeof(float));
    double *reference = (double *)malloc(count * sizeof(double));
    int b, i, max_length = 0, pages = 0;
    ekv_result r;

    memset(&desc, 0, sizeof desc);
    memset(&host, 0, sizeof host);
    memset(&paged, 0, sizeof paged);
    memset(&flat_device, 0, sizeof flat_device);
    memset(&paged_device, 0, sizeof paged_device);
    desc.kind = EKV_DATA_RANDOM;
    desc.batch = BATCH;
    desc.heads = heads;
    desc.kv_heads = KV_HEADS;
    desc.head_dim = c->head_dim;
    desc.seq_len = seq;
    desc.seed = pt_seed++;
    desc.lengths = lengths;
    desc.observe = 4;
    r = ekv_data_generate(&desc, &data);
    CHECK(r == EKV_SUCCESS, "ekv_data_generate: %s", ekv_last_error());
    if (r != EKV_SUCCESS) goto done;
    memset(&compress, 0, sizeof compress);
    compress.policy = c->policy;
    compress.compression = c->policy == EKV_POLICY_NONE ? 1 : 3;
    compress.recent = 5;
    compress.sinks = 2;
    compress.observe = 4;
    r = ekv_cache_build(&data, &compress, c->dtype, 0.0, &host);
    CHECK(r == EKV_SUCCESS, "ekv_cache_build: %s", ekv_last_error());
    if (r != EKV_SUCCESS) goto done;
    for (b = 0; b < BATCH; b++) {
        pages += (host.lengths[b] + c->page_size - 1) / c->page_size;
        if (host.lengths[b] > max_length) max_length = host.lengths[b];
    }
    r = ekv_paged_create(&paged, c->dtype, BATCH, KV_HEADS, c->head_dim, c->page_size, pages + 3,
                         host.capacity, host.bias != NULL);
    CHECK(r == EKV_SUCCESS, "ekv_paged_create: %s", ekv_last_error());
    if (r != EKV_SUCCESS) goto done;
    for (i = paged.free_count - 1; i > 0; i--) { /* a permutation keeps the pool exact */
        const int j = (int)ekv_rng_below(&pt_rng, (uint64_t)i + 1), t = paged.free_pages[i];
        paged.free_pages[i] = paged.free_pages[j];
        paged.free_pages[j] = t;
    }
    for (b = BATCH - 1; b >= 0; b--)
        CHECK(ekv_paged_admit(&paged, b, &host, b) == EKV_SUCCESS, "admit: %s", ekv_last_error());
    if (c->fault && paged.held[0] > 1) {
        const int t = paged.block_table[0];
        paged.block_table[0] = paged.block_table[1];
        paged.block_table[1] = t;
    }
    r = ekv_reference_attention_cache(&host, data.q, heads, 0.0, reference);
    CHECK(r == EKV_SUCCESS, "reference: %s", ekv_last_error());
    CHECK(ekv_cuda_cache_upload(&host, &flat_device) == EKV_SUCCESS, "upload: %s", ekv_last_error());
    CHECK(ekv_cuda_cache_upload_paged(&paged, &paged_device) == EKV_SUCCESS, "upload_paged: %s",
          ekv_last_error());
    if (!flat_device.allocation || !paged_device.allocation) goto done;

    r = pt_run(&flat_device, data.q, heads, 0, out_flat, count);
    CHECK(r == EKV_SUCCESS, "contiguous: %s", ekv_last_error());
    r = pt_run(&paged_device, data.q, heads, 0, out_paged, count);
    CHECK(r == EKV_SUCCESS, "paged: %s", ekv_last_error());
    if (c->fault) {
        CHECK(memcmp(out_flat, out_paged, count * sizeof(float)) != 0,
              "a swapped block-table entry gave the contiguous output");
        goto done;
    }
    {
        /* the same tile: the same arithmetic in the same order, bit for bit (paged int4 at
           head dim 128 takes the 16-head tile where the contiguous cache takes 8) */
        ekv_cuda_kernel_info flat_kernel, paged_kernel;
        memset(&flat_kernel, 0, sizeof flat_kernel);
        memset(&paged_kernel, 0, sizeof paged_kernel);
        ekv_cuda_attention_kernel(&flat_device, heads, &flat_kernel);
        ekv_cuda_attention_kernel(&paged_device, heads, &paged_kernel);
        if (flat_kernel.heads_per_cta == paged_kernel.heads_per_cta)
            CHECK(memcmp(out_flat, out_paged, count * sizeof(float)) == 0,
                  "%s: paged output differs from contiguous (%s) without splits", paged_kernel.name,
                  flat_kernel.name);
        else
            CHECK(c->dtype == EKV_DTYPE_INT4 && c->head_dim == 128 && paged_kernel.heads_per_cta == 16,
                  "%s runs a tile of %d heads, the contiguous %s one of %d", paged_kernel.name,
                  paged_kernel.heads_per_cta, flat_kernel.name, flat_kernel.heads_per_cta);
    }
    {
        ekv_cuda_kernel_info kernel;
        double tolerance = 1.0;
        int splits;
        if (ekv_cuda_attention_kernel(&paged_device, heads, &kernel) == EKV_SUCCESS)
            tolerance = ekv_cuda_validation_tolerance(&kernel, max_length);
        CHECK(strstr(kernel.name, "paged") != NULL, "the paged cache ran %s", kernel.name);
        for (splits = 0; splits <= 3; splits += 3) {
            ekv_error_stats e;
            if (splits) {
                r = pt_run(&paged_device, data.q, heads, splits, out_paged, count);
                CHECK(r == EKV_SUCCESS, "paged, %d splits: %s", splits, ekv_last_error());
            }
            e = ekv_compare_f32(reference, out_paged, count);
            CHECK(e.rel_l2 <= tolerance, "%s, %d splits: rel_l2 %.3e > %.1e", kernel.name, splits,
                  e.rel_l2, tolerance);
            if (splits) {
                r = pt_run(&flat_device, data.q, heads, splits, out_flat, count);
                e = ekv_compare_f32(reference, out_flat, count);
                CHECK(r == EKV_SUCCESS && e.rel_l2 <= tolerance, "contiguous, %d splits: rel_l2 %.3e",
                      splits, e.rel_l2);
            }
        }
    }
done:
    ekv_cuda_cache_free(&flat_device);
    ekv_cuda_cache_free(&paged_device);
    ekv_paged_free(&paged);
    ekv_cache_free(&host);
    ekv_data_free(&data);
    free(out_flat);
    free(out_paged);
    free(reference);
}

int main(int argc, char **argv)
{
    const int groups[] = {1, 4, 8}, dims[] = {64, 128}, pages[] = {16, 64};
    int quick = 0, i, case_index = 0;
    size_t d, g, h, p;
    for (i = 1; i < argc; i++)
        if (strcmp(argv[i], "--quick") == 0) quick = 1;
    ekv_rng_seed(&pt_rng, pt_seed);
    for (d = 0; d < sizeof pt_dtypes / sizeof pt_dtypes[0]; d++) {
        char name[128];
        snprintf(name, sizeof name, "paged = contiguous (and the reference): %s, groups 1 4 8, D 64 128, P 16 64",
                 ekv_dtype_name(pt_dtypes[d]));
        TEST_BEGIN(name);
        for (g = 0; g < 3; g++)
            for (h = 0; h < 2; h++)
                for (p = 0; p < 2; p++) {
                    pt_case c;
                    if (quick && (h != p || g == 1)) continue;
                    memset(&c, 0, sizeof c);
                    c.dtype = pt_dtypes[d];
                    c.policy = pt_policies[case_index++ % 5];
                    c.group = groups[g];
                    c.head_dim = dims[h];
                    c.page_size = pages[p];
                    pt_check(&c);
                }
        TEST_END();
    }
#ifdef EKV_EMULATOR_ACTIVE
    /* sm_75: every dtype on CUDA cores (fp8 needs sm_89: refused there, tested elsewhere) */
    setenv("EKV_EMU_SM", "75", 1);
    cudaDeviceReset(); /* the emulator reads its device at first use and at a reset */
    TEST_BEGIN("sm_75: paged CUDA-core kernels, page sizes 8 and 16, groups 1 and 4");
    for (d = 0; d + 1 < sizeof pt_dtypes / sizeof pt_dtypes[0]; d++)
        for (g = 0; g < 2; g++) {
            pt_case c;
            if (quick && d % 2) continue;
            memset(&c, 0, sizeof c);
            c.dtype = pt_dtypes[d];
            c.policy = pt_policies[case_index++ % 5];
            c.group = groups[g];
            c.head_dim = 64;
            c.page_size = g ? 16 : 8;
            pt_check(&c);
        }
    TEST_END();
    unsetenv("EKV_EMU_SM");
    cudaDeviceReset();
#endif
    TEST_BEGIN("page size 8 on the tensor-core kernel is refused; f32 (CUDA cores) runs it");
    {
        ekv_paged_cache host;
        ekv_cuda_cache device;
        ekv_cuda_kernel_info kernel;
        float k[2 * 64], v[2 * 64];
        for (i = 0; i < 128; i++) k[i] = v[i] = 0.25f + (float)i / 128.0f;
        CHECK(ekv_paged_create(&host, EKV_DTYPE_F16, 1, 2, 64, 8, 4, 32, 0) == EKV_SUCCESS, "%s",
              ekv_last_error());
        CHECK(ekv_paged_append(&host, k, v, NULL) == EKV_SUCCESS, "%s", ekv_last_error());
        CHECK(ekv_cuda_cache_upload_paged(&host, &device) == EKV_SUCCESS, "%s", ekv_last_error());
        {
            const ekv_result r = ekv_cuda_attention_kernel(&device, 8, &kernel);
            CHECK(r == EKV_ERR_UNSUPPORTED && strstr(ekv_last_error(), "page size 8") != NULL,
                  "f16 with page size 8 on tensor cores: %d %s", (int)r, ekv_last_error());
        }
        ekv_cuda_cache_free(&device);
        ekv_paged_free(&host);
    }
    {
        pt_case c;
        memset(&c, 0, sizeof c);
        c.dtype = EKV_DTYPE_F32;
        c.policy = EKV_POLICY_POOL;
        c.group = 4;
        c.head_dim = 64;
        c.page_size = 8;
        pt_check(&c);
    }
    TEST_END();
    TEST_BEGIN("a planted fault (two block-table entries swapped) changes the output");
    {
        pt_case c;
        memset(&c, 0, sizeof c);
        c.dtype = EKV_DTYPE_F16;
        c.policy = EKV_POLICY_NONE;
        c.group = 4;
        c.head_dim = 64;
        c.page_size = 16;
        c.fault = 1;
        pt_check(&c);
    }
    TEST_END();
    return ekv_test_finish();
}
