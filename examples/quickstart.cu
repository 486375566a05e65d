/* quickstart.cu - ekv's CUDA API in one page: a KV cache of 4096 tokens compressed 4x
   (topk) and stored in f16, decode attention over it on the GPU, and the result compared
   with the double-precision reference over the full, uncompressed data.

   Here the cache is built on the host in one step (ekv_cache_build selects the kept tokens
   and quantizes them) and uploaded once; decode attention then runs on the device with
   ekv_cuda_attention. A cache that grows token by token and compresses in place on the
   device is ekv_cuda_elastic_create/prefill/append/compress (see ekv_cuda.cuh >>elastic).
   EKV_NO_BENCH leaves out the benchmark half of both headers, so no cuBLAS is needed.

   Build:  nvcc -O2 -o quickstart examples/quickstart.cu
   Without a GPU, on the CPU execution emulator of the tests (slow, but the same kernels):
           g++ -std=c++17 -pthread -DEKV_EMULATOR -Itests/emu/include -I. -x c++ -o quickstart examples/quickstart.cu */
#define EKV_NO_BENCH
#define EKV_IMPLEMENTATION
#include "../ekv_cuda.cuh"

#include <stdlib.h>

/* ekv calls return ekv_result (EKV_SUCCESS = 0) and name what went wrong in ekv_last_error() */
#define EKV_TRY(call) do { if ((call) != EKV_SUCCESS) { \
    fprintf(stderr, "quickstart: %s\n", ekv_last_error()); return 1; } } while (0)
#define CUDA_TRY(call) do { cudaError_t err_ = (call); if (err_ != cudaSuccess) { \
    fprintf(stderr, "quickstart: %s: %s\n", #call, cudaGetErrorString(err_)); return 1; } } while (0)

int main(void)
{
    /* the tokens: q of the decoded token, K and V of 4096 past tokens (synthetic, with
       attention sinks and heavy hitters like real data), GQA with 32 query and 8 KV heads */
    ekv_data_desc desc = {EKV_DATA_STRUCTURED, 1, 32, 8, 128, 4096, 16, 42, NULL};
    /* kind, batch, heads, kv_heads, head_dim, seq_len, observed queries, seed, lengths */
    ekv_compress_desc compress = {EKV_POLICY_TOPK, 4, 0, 4, 16}; /* policy, C, recent, sinks, observe */
    ekv_data data;
    ekv_host_cache host;
    ekv_cuda_cache cache;
    ekv_cuda_attention_plan plan;
    float *d_q, *d_out;
    EKV_TRY(ekv_data_generate(&desc, &data));
    EKV_TRY(ekv_cache_build(&data, &compress, EKV_DTYPE_F16, 0.0, &host));
    EKV_TRY(ekv_cuda_cache_upload(&host, &cache));

    /* decode attention: the plan splits each sequence across the GPU when batch x kv_heads
       alone cannot fill it; split partials need a workspace */
    size_t count = (size_t)data.batch * data.heads * data.head_dim;
    EKV_TRY(ekv_cuda_attention_plan_make(&cache, data.heads, 0, &plan));
    CUDA_TRY(cudaMalloc((void **)&d_q, count * sizeof(float)));
    CUDA_TRY(cudaMalloc((void **)&d_out, count * sizeof(float)));
    if (plan.workspace_bytes) CUDA_TRY(cudaMalloc(&plan.workspace, plan.workspace_bytes));
    CUDA_TRY(cudaMemcpy(d_q, data.q, count * sizeof(float), cudaMemcpyHostToDevice));
    EKV_TRY(ekv_cuda_attention(&cache, d_q, data.heads, 0.0f, d_out, &plan, 0));

    /* read the result back; compare it with the double reference over all 4096 exact
       tokens (what compression costs) and over the same stored cache (the kernel alone) */
    float *out = (float *)malloc(count * sizeof(float));
    double *ref = (double *)malloc(2 * count * sizeof(double)), *ref_cache = ref + count;
    if (!out || !ref) return 1;
    CUDA_TRY(cudaMemcpy(out, d_out, count * sizeof(float), cudaMemcpyDeviceToHost));
    EKV_TRY(ekv_reference_attention(&data, 0.0, ref));
    EKV_TRY(ekv_reference_attention_cache(&host, data.q, data.heads, 0.0, ref_cache));
    ekv_error_stats error = ekv_compare_f32(ref, out, count);
    ekv_error_stats kernel = ekv_compare_f32(ref_cache, out, count);
    ekv_cache_bytes full = ekv_cache_bytes_of(EKV_DTYPE_F16, data.batch, data.kv_heads,
                                              data.head_dim, data.lengths, 0);
    ekv_cache_bytes kept = ekv_cache_bytes_of(host.dtype, host.batch, host.kv_heads,
                                              host.head_dim, host.lengths, host.bias != NULL);
    printf("topk C=4 f16: %d of %d tokens kept, cache %.0f KiB instead of %.0f KiB, %d split(s)\n",
           host.lengths[0], data.lengths[0], kept.total / 1024, full.total / 1024, plan.splits);
    printf("out[0][0][0..3] = %.5f %.5f %.5f %.5f\n", out[0], out[1], out[2], out[3]);
    printf("vs full reference: rel_l2 %.3e  max_abs %.3e  cosine %.6f\n", error.rel_l2,
           error.max_abs, error.cosine);
    printf("vs same cache:     rel_l2 %.3e  (the kernel's own rounding)\n", kernel.rel_l2);

    cudaFree(plan.workspace); cudaFree(d_q); cudaFree(d_out);
    ekv_cuda_cache_free(&cache); ekv_cache_free(&host); ekv_data_free(&data);
    free(out); free(ref);
    return 0;
}
