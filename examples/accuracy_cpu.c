/* accuracy_cpu.c - what each compression policy and storage dtype costs in accuracy,
   measured on the CPU in plain C99 (no CUDA, no GPU).

   For structured data (attention sinks, a recency bias, heavy hitters and correlated
   neighbours: the shape of real attention) it builds the stored cache of every policy
   (none, stride, pool, window, topk) in every dtype (f32, f16, bf16, int8, int4, fp8) at
   compression C = 2, 4, 8 (none: C = 1), runs the double-precision reference attention
   over that cache and compares it with the double reference over the full f32 data.
   That is the error the cache itself costs (`error_compression` in ekv_bench's JSON);
   a kernel adds its own rounding on top. Recent window 0, sinks 4, observed queries 16:
   ekv_bench's defaults.

   Build:  cc -std=c99 -pedantic -Wall -Wextra -Werror -O2 -I. -o accuracy_cpu examples/accuracy_cpu.c -lm
   Run:    ./accuracy_cpu [seq_len [head_dim]]        defaults 2048 and 128

   Columns: slots kept per (sequence, kv head); the cache's bytes as the kernel reads them
   (K, V, scales, pool bias) and how many times smaller that is than the f32 cache at
   C = 1; rel_l2 = |out - ref| / |ref|, max_abs = max |out - ref|, cosine of out and ref. */
#define EKV_IMPLEMENTATION
#include "ekv.h"

#include <errno.h>
#include <stdlib.h>

static const int compressions[] = {2, 4, 8};

/* A positive int from the command line, or -1. */
static int parse_positive(const char *text)
{
    char *end;
    long value;
    errno = 0;
    value = strtol(text, &end, 10);
    if (errno || end == text || *end != '\0' || value < 1 || value > (1L << 24)) return -1;
    return (int)value;
}

/* Builds the cache of one policy/C/dtype and prints its row of the table. */
static ekv_result print_row(const ekv_data *data, const double *reference, double f32_full_bytes,
                            ekv_policy policy, int compression, ekv_dtype dtype, double *out)
{
    ekv_compress_desc desc;
    ekv_host_cache cache;
    ekv_cache_bytes bytes;
    ekv_error_stats error;
    ekv_result result;
    desc.policy = policy;
    desc.compression = compression;
    desc.recent = 0;
    desc.sinks = 4;
    desc.observe = data->observe;
    result = ekv_cache_build(data, &desc, dtype, 0.0, &cache);
    if (result == EKV_ERR_UNSUPPORTED) {
        /* e.g. an odd head_dim for the 16-bit and int4 dtypes: say so and go on */
        printf("%-7s %2d  %-5s unsupported: %s\n", ekv_policy_name(policy), compression,
               ekv_dtype_name(dtype), ekv_last_error());
        return EKV_SUCCESS;
    }
    if (result != EKV_SUCCESS) return result;
    result = ekv_reference_attention_cache(&cache, data->q, data->heads, 0.0, out);
    if (result == EKV_SUCCESS) {
        bytes = ekv_cache_bytes_of(dtype, cache.batch, cache.kv_heads, cache.head_dim,
                                   cache.lengths, cache.bias != NULL);
        error = ekv_compare_f64(reference, out,
                                (size_t)data->batch * (size_t)data->heads * (size_t)data->head_dim);
        printf("%-7s %2d  %-5s %6d %11.1f %7.2fx  %.3e  %.3e  %.6f\n", ekv_policy_name(policy),
               compression, ekv_dtype_name(dtype), cache.lengths[0], bytes.total / 1024.0,
               f32_full_bytes / bytes.total, error.rel_l2, error.max_abs, error.cosine);
    }
    ekv_cache_free(&cache);
    return result;
}

int main(int argc, char **argv)
{
    ekv_data_desc desc;
    ekv_data data;
    ekv_cache_bytes f32_full;
    double *reference = NULL, *out = NULL, entropy = 0.0, top5 = 0.0;
    size_t out_count;
    ekv_result result;
    int policy, dtype, c, status = 1;

    desc.kind = EKV_DATA_STRUCTURED;
    desc.batch = 1;
    desc.heads = 8;
    desc.kv_heads = 2;
    desc.head_dim = argc > 2 ? parse_positive(argv[2]) : 128;
    desc.seq_len = argc > 1 ? parse_positive(argv[1]) : 2048;
    desc.observe = 16;
    desc.seed = 42;
    desc.lengths = NULL;
    if (argc > 3 || desc.seq_len < 1 || desc.head_dim < 1) {
        fprintf(stderr, "usage: %s [seq_len [head_dim]]   (positive integers up to %d; "
                        "defaults 2048 128)\n", argv[0], 1 << 24);
        return 2;
    }
    if (ekv_data_generate(&desc, &data) != EKV_SUCCESS) {
        fprintf(stderr, "accuracy_cpu: %s\n", ekv_last_error());
        return 2;
    }
    out_count = (size_t)data.batch * (size_t)data.heads * (size_t)data.head_dim;
    reference = (double *)malloc(out_count * sizeof(double));
    out = (double *)malloc(out_count * sizeof(double));
    if (!reference || !out) {
        fprintf(stderr, "accuracy_cpu: out of memory\n");
        goto done;
    }
    result = ekv_reference_attention(&data, 0.0, reference);
    if (result == EKV_SUCCESS) result = ekv_attention_profile(&data, 0.0, &entropy, &top5);
    if (result != EKV_SUCCESS) goto fail;
    f32_full = ekv_cache_bytes_of(EKV_DTYPE_F32, data.batch, data.kv_heads, data.head_dim,
                                  data.lengths, 0);

    printf("ekv %s: decode attention over the stored cache vs the double reference over the "
           "full f32 data\n", ekv_version());
    printf("structured data: batch %d, heads %d, kv_heads %d, head_dim %d, seq %d; "
           "attention entropy %.3f nats, top-5%% mass %.3f\n", data.batch, data.heads,
           data.kv_heads, data.head_dim, data.lengths[0], entropy, top5);
    printf("recent 0, sinks 4, observe %d; smaller = f32 cache at C=1 (%.1f KiB) / this cache\n\n",
           data.observe, f32_full.total / 1024.0);
    printf("policy   C  dtype  slots   cache KiB  smaller  rel_l2     max_abs    cosine\n");
    for (policy = 0; policy < EKV_POLICY_COUNT; policy++) {
        const int counts = policy == EKV_POLICY_NONE ? 1 : (int)(sizeof compressions / sizeof *compressions);
        for (c = 0; c < counts; c++)
            for (dtype = 0; dtype < EKV_DTYPE_COUNT; dtype++) {
                result = print_row(&data, reference, f32_full.total, (ekv_policy)policy,
                                   policy == EKV_POLICY_NONE ? 1 : compressions[c],
                                   (ekv_dtype)dtype, out);
                if (result != EKV_SUCCESS) goto fail;
            }
        if (policy + 1 < EKV_POLICY_COUNT) printf("\n");
    }
    status = 0;
    goto done;
fail:
    fprintf(stderr, "accuracy_cpu: %s\n", ekv_last_error()[0] ? ekv_last_error() : ekv_result_string(result));
done:
    free(reference);
    free(out);
    ekv_data_free(&data);
    return status;
}
