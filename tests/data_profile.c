/* data_profile.c - prints what the structured (or random) data looks like to attention:
   entropy and top-5% mass of the decode query, and the compression error of every policy
   at C = 2, 4, 8 (f16 storage, rel_l2 vs the double reference over the full cache).
   This is the table the generator's constants were tuned with.

   Build: cc -std=c99 -O2 -I. -o build/data_profile tests/data_profile.c -lm
   Run:   build/data_profile [--random] [--seed=N] [--configs=0,4,8]
*/
#define EKV_IMPLEMENTATION
#include "ekv.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct profile_config {
    int seq_len, heads, kv_heads, head_dim;
} profile_config;

static double seconds(void)
{
    return (double)clock() / CLOCKS_PER_SEC;
}

int main(int argc, char **argv)
{
    static const profile_config configs[] = {
        {256, 8, 8, 64},    {256, 8, 2, 128},   {1024, 8, 8, 128},  {1024, 8, 1, 256},
        {4096, 8, 2, 64},   {4096, 4, 4, 256},  {16384, 8, 2, 128}, {65536, 4, 4, 64},
        {131072, 4, 1, 128}, {131072, 2, 2, 256},
    };
    static const ekv_policy policies[] = {EKV_POLICY_STRIDE, EKV_POLICY_POOL, EKV_POLICY_WINDOW,
                                          EKV_POLICY_TOPK};
    static const int ratios[] = {2, 4, 8};
    ekv_data_kind kind = EKV_DATA_STRUCTURED;
    uint64_t seed = 1;
    int i, n_configs = (int)(sizeof configs / sizeof configs[0]), count = 0;
    int selected[sizeof configs / sizeof configs[0]];
    double mass_sum = 0.0;
    for (i = 0; i < n_configs; i++) selected[i] = 1;
    for (i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--random") == 0) kind = EKV_DATA_RANDOM;
        else if (strncmp(argv[i], "--seed=", 7) == 0) seed = strtoull(argv[i] + 7, NULL, 10);
        else if (strncmp(argv[i], "--configs=", 10) == 0) {
            const char *p = argv[i] + 10;
            int j;
            for (j = 0; j < n_configs; j++) selected[j] = 0;
            while (*p) {
                int index = (int)strtol(p, (char **)&p, 10);
                if (index >= 0 && index < n_configs) selected[index] = 1;
                if (*p == ',') p++;
                else break;
            }
        }
    }
    printf("%-24s %8s %8s %7s", "config (S,H,Hkv,D)", "entropy", "top5pct", "gen_s");
    for (i = 0; i < 4; i++) printf("  %-6s C=2/4/8        ", ekv_policy_name(policies[i]));
    printf("\n");
    for (i = 0; i < n_configs; i++) {
        const profile_config *c = &configs[i];
        ekv_data_desc desc;
        ekv_data data;
        double entropy, mass, t0, *ref, *approx;
        size_t n = (size_t)c->heads * (size_t)c->head_dim;
        int p, r;
        char label[64];
        if (!selected[i]) continue;
        count++;
        memset(&desc, 0, sizeof desc);
        desc.kind = kind;
        desc.batch = 1;
        desc.heads = c->heads;
        desc.kv_heads = c->kv_heads;
        desc.head_dim = c->head_dim;
        desc.seq_len = c->seq_len;
        desc.observe = 16;
        desc.seed = seed + (uint64_t)i;
        t0 = seconds();
        if (ekv_data_generate(&desc, &data) != EKV_SUCCESS) {
            printf("generate failed: %s\n", ekv_last_error());
            return 1;
        }
        t0 = seconds() - t0;
        ekv_attention_profile(&data, 0.0, &entropy, &mass);
        mass_sum += mass;
        snprintf(label, sizeof label, "(%d,%d,%d,%d)", c->seq_len, c->heads, c->kv_heads,
                 c->head_dim);
        printf("%-24s %8.3f %8.3f %7.2f", label, entropy, mass, t0);
        ref = (double *)malloc(n * sizeof(double));
        approx = (double *)malloc(n * sizeof(double));
        ekv_reference_attention(&data, 0.0, ref);
        for (p = 0; p < 4; p++) {
            printf(" ");
            for (r = 0; r < 3; r++) {
                ekv_compress_desc cd;
                ekv_host_cache cache;
                memset(&cd, 0, sizeof cd);
                cd.policy = policies[p];
                cd.compression = ratios[r];
                cd.sinks = 4;
                cd.observe = 16;
                if (ekv_cache_build(&data, &cd, EKV_DTYPE_F16, 0.0, &cache) != EKV_SUCCESS) {
                    printf("cache failed: %s\n", ekv_last_error());
                    return 1;
                }
                ekv_reference_attention_cache(&cache, data.q, data.heads, 0.0, approx);
                printf(" %6.4f", ekv_compare_f64(ref, approx, n).rel_l2);
                ekv_cache_free(&cache);
            }
        }
        printf("\n");
        fflush(stdout);
        free(ref);
        free(approx);
        ekv_data_free(&data);
    }
    printf("mean top5pct_mass %.3f over %d configs\n", mass_sum / count, count);
    return 0;
}
