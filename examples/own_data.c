/* own_data.c - what ekv's compression would cost on attention data from a real model:
   q, k and v of one layer saved as .npy, checked on the CPU in plain C99 (no CUDA).

   Loads a .npz (np.savez, uncompressed) or a directory of q.npy, k.npy, v.npy (and
   optionally q_observe.npy) with ekv_data_load, prints how concentrated the data's
   attention is (ekv_attention_profile: mean entropy, share of the mass in the top 5% of
   tokens), then the error of each policy at C = 2, 4, 8 in one storage dtype: the double
   reference attention over the stored cache vs the double reference over the full data.

   Build:  cc -std=c99 -pedantic -Wall -Wextra -Werror -O2 -I. -o own_data examples/own_data.c -lm
   Run:    ./own_data layer8.npz [dtype [softmax_scale]]     dtype: f32 f16 bf16 int8 int4 fp8
                                                            (default f16); scale 0 = 1/sqrt(D)

   Shapes (float32 or float16, C order): q [B,H,D] the query of the decoded token; k and v
   [B,H_kv,S,D] the keys and values it attends to, as the model's cache holds them (after
   RoPE, its own token included); q_observe [B,H,O,D], optional, the queries of the O
   tokens before it (topk ranks tokens by the attention these give them; without it topk
   ranks them by q itself, which flatters it).

   Saving them from a Hugging Face model (Llama family, transformers 4.48 or newer; other
   families take the same steps under their own names). The queries are not in the cache,
   so a hook catches the attention's inputs and recomputes them, with RoPE like the keys:

       import numpy as np, torch
       from transformers import AutoModelForCausalLM, AutoTokenizer
       from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

       name, layer = "meta-llama/Llama-3.2-1B", 8
       tokenizer = AutoTokenizer.from_pretrained(name)
       model = AutoModelForCausalLM.from_pretrained(name, torch_dtype=torch.float32).eval()
       ids = tokenizer(open("prompt.txt").read(), return_tensors="pt").input_ids[:, :4096]
       attention, calls = model.model.layers[layer].self_attn, []
       attention.register_forward_hook(lambda module, args, kwargs, output: calls.append(kwargs),
                                       with_kwargs=True)

       def queries(kwargs):   # the layer's queries with RoPE: [B, H, tokens, D]
           h = kwargs["hidden_states"]
           q = attention.q_proj(h).view(*h.shape[:2], -1, attention.head_dim).transpose(1, 2)
           return apply_rotary_pos_emb(q, q, *kwargs["position_embeddings"])[0]

       with torch.no_grad():
           cache = model(ids[:, :-1], use_cache=True).past_key_values   # prefill
           model(ids[:, -1:], past_key_values=cache, use_cache=True)    # one decode step
           q, q_observe = queries(calls[1])[:, :, -1], queries(calls[0])[:, :, -16:]
       k, v = cache[layer]                                              # [B, H_kv, S, D]
       np.savez("layer8.npz", q=q.numpy(), k=k.numpy(), v=v.numpy(), q_observe=q_observe.numpy())

   np.savez, not np.savez_compressed: ekv reads stored (uncompressed) archives only. */
#define EKV_IMPLEMENTATION
#include "ekv.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static const int compressions[] = {2, 4, 8};

/* 1 when every observed query is a copy of q, i.e. the file had no q_observe. */
static int observe_is_q(const ekv_data *data)
{
    size_t bh, o, row = (size_t)data->head_dim * sizeof(float);
    for (bh = 0; bh < (size_t)data->batch * (size_t)data->heads; bh++)
        for (o = 0; o < (size_t)data->observe; o++)
            if (memcmp(data->q_observe + (bh * (size_t)data->observe + o) * (size_t)data->head_dim,
                       data->q + bh * (size_t)data->head_dim, row) != 0)
                return 0;
    return 1;
}

/* Builds the cache of one policy and C and prints its row of the table. */
static ekv_result print_row(const ekv_data *data, const double *reference, double f32_full_bytes,
                            ekv_policy policy, int compression, ekv_dtype dtype, double scale,
                            double *out)
{
    ekv_compress_desc desc;
    ekv_host_cache cache;
    ekv_cache_bytes bytes;
    ekv_error_stats error;
    ekv_result result;
    int b, slots = 0;
    desc.policy = policy;
    desc.compression = compression;
    desc.recent = 0;
    desc.sinks = 4;
    desc.observe = data->observe;
    result = ekv_cache_build(data, &desc, dtype, scale, &cache);
    if (result == EKV_ERR_UNSUPPORTED) {
        printf("%-7s %2d  unsupported: %s\n", ekv_policy_name(policy), compression, ekv_last_error());
        return EKV_SUCCESS;
    }
    if (result != EKV_SUCCESS) return result;
    result = ekv_reference_attention_cache(&cache, data->q, data->heads, scale, out);
    if (result == EKV_SUCCESS) {
        for (b = 0; b < cache.batch; b++)
            if (cache.lengths[b] > slots) slots = cache.lengths[b];
        bytes = ekv_cache_bytes_of(dtype, cache.batch, cache.kv_heads, cache.head_dim,
                                   cache.lengths, cache.bias != NULL);
        error = ekv_compare_f64(reference, out,
                                (size_t)data->batch * (size_t)data->heads * (size_t)data->head_dim);
        printf("%-7s %2d  %7d %11.1f %7.2fx  %.3e  %.3e  %.6f\n", ekv_policy_name(policy),
               compression, slots, bytes.total / 1024.0, f32_full_bytes / bytes.total,
               error.rel_l2, error.max_abs, error.cosine);
    }
    ekv_cache_free(&cache);
    return result;
}

int main(int argc, char **argv)
{
    ekv_data data;
    ekv_dtype dtype = EKV_DTYPE_F16;
    ekv_cache_bytes f32_full;
    ekv_result result;
    double *reference = NULL, *out = NULL, scale = 0.0, entropy = 0.0, top5 = 0.0;
    size_t out_count;
    int policy, c, status = 1;

    if (argc < 2 || argc > 4 || (argc > 2 && ekv_dtype_parse(argv[2], &dtype) != 0)) {
        fprintf(stderr, "usage: %s DATA.npz|DIR [dtype [softmax_scale]]\n"
                        "  dtype: f32, f16, bf16, int8, int4, fp8 (default f16)\n"
                        "  softmax_scale: 0 = 1/sqrt(head_dim) (default)\n", argv[0]);
        return 2;
    }
    if (argc > 3) {
        char *end;
        errno = 0;
        scale = strtod(argv[3], &end);
        if (errno || end == argv[3] || *end != '\0' || !(scale >= 0.0) || scale > 1e6) {
            fprintf(stderr, "own_data: softmax_scale must be a number in [0, 1e6], got '%s'\n",
                    argv[3]);
            return 2;
        }
    }
    if (ekv_data_load(argv[1], 16, &data) != EKV_SUCCESS) {
        fprintf(stderr, "own_data: %s\n", ekv_last_error());
        return 2;
    }
    out_count = (size_t)data.batch * (size_t)data.heads * (size_t)data.head_dim;
    reference = (double *)malloc(out_count * sizeof(double));
    out = (double *)malloc(out_count * sizeof(double));
    if (!reference || !out) {
        fprintf(stderr, "own_data: out of memory\n");
        goto done;
    }
    result = ekv_reference_attention(&data, scale, reference);
    if (result == EKV_SUCCESS) result = ekv_attention_profile(&data, scale, &entropy, &top5);
    if (result != EKV_SUCCESS) goto fail;
    f32_full = ekv_cache_bytes_of(EKV_DTYPE_F32, data.batch, data.kv_heads, data.head_dim,
                                  data.lengths, 0);

    printf("%s: batch %d, heads %d, kv_heads %d, head_dim %d, seq %d\n", argv[1], data.batch,
           data.heads, data.kv_heads, data.head_dim, data.capacity);
    /* uniform attention over S tokens has entropy ln S and top-5% mass 0.05 */
    printf("attention entropy %.3f nats (uniform: %.3f), top-5%% mass %.3f (uniform: 0.05)\n",
           entropy, log((double)data.capacity), top5);
    printf("topk observes %s\n", observe_is_q(&data)
           ? "copies of q (no q_observe in the data): its errors are optimistic"
           : "the q_observe of the data");
    printf("\nerror of a %s cache vs the double reference over the full data "
           "(recent 0, sinks 4);\nsmaller = f32 cache at C=1 (%.1f KiB) / this cache\n\n",
           ekv_dtype_name(dtype), f32_full.total / 1024.0);
    printf("policy   C    slots   cache KiB  smaller  rel_l2     max_abs    cosine\n");
    for (policy = 0; policy < EKV_POLICY_COUNT; policy++) {
        const int counts = policy == EKV_POLICY_NONE ? 1 : (int)(sizeof compressions / sizeof *compressions);
        for (c = 0; c < counts; c++) {
            result = print_row(&data, reference, f32_full.total, (ekv_policy)policy,
                               policy == EKV_POLICY_NONE ? 1 : compressions[c], dtype, scale, out);
            if (result != EKV_SUCCESS) goto fail;
        }
    }
    status = 0;
    goto done;
fail:
    fprintf(stderr, "own_data: %s\n", ekv_last_error()[0] ? ekv_last_error() : ekv_result_string(result));
done:
    free(reference);
    free(out);
    ekv_data_free(&data);
    return status;
}
