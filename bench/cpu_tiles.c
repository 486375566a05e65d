/* cpu_tiles.c - where the CPU kernel's time goes: its inner functions (the scores of a
   block of K rows against a GQA group's query heads, and the weighted sum of a block of V
   rows) timed on one thread, first on one block that stays in L1 (compute alone), then
   streaming through blocks far larger than the last-level cache (compute and memory), next
   to this core's fused multiply-add peak. One row is 2 x group x head_dim multiply-adds
   (scores and sum). Every function's result is checked against a double computation from
   the stored values before it is timed; a mismatch exits 1.

   Build and run (make bench-cpu-tiles does both):
     c++ -O3 -march=native -x c++ -o build/cpu_tiles bench/cpu_tiles.c
     build/cpu_tiles [--group=4] [--dim=128] [--mb=256] [--reps=20000] [--path=NAME]

   --mb: megabytes of stored K and V to stream through (each dtype), --reps: timed calls
   of the L1 block, --path: one of ekv_cpu_paths() (default the best). Bad arguments:
   one line naming the flag and its allowed values, exit 2. The peak is that of the loop
   as compiled: build with -march=native (as make does), else it may count the target's
   older instructions (SSE without FMA) while the kernel runs its AVX2 path. gcc or clang
   (vector types), POSIX clock_gettime. */
#define EKV_IMPLEMENTATION
#include "../ekv.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define TILE_ROWS EKV__CPU_BLOCK

static double seconds(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* One dtype's stored block and the path functions that read it. */
typedef struct tiles {
    const ekv__cpu_path *path;
    ekv_dtype dtype;
    int G, D;
    const unsigned char *k, *v, *k_scales, *v_scales; /* TILE_ROWS rows each */
    float *q;       /* [G][D], in the path's int4 order where it has one */
    float *logits;  /* [G][TILE_ROWS] */
    float *weights; /* [G][TILE_ROWS] */
    float *acc;     /* [G][D] */
    float *spare;   /* decoded rows or int4 (scale, zero) floats */
} tiles;

/* scores and weighted_sum go through ekv.h's ekv__cpu_block_logits and
   ekv__cpu_block_accumulate, the functions ekv__cpu_piece calls, so the path function
   timed is the one the kernel runs for this dtype. */
static void scores(const tiles *t, const unsigned char *k, const unsigned char *scales)
{
    ekv__cpu_block_logits(t->path, t->dtype, ekv__cpu_int4_split(t->path, t->dtype, t->D), t->q,
                          t->G, t->D, k, scales, TILE_ROWS, t->spare, t->logits, TILE_ROWS);
}

static void weighted_sum(const tiles *t, const unsigned char *v, const unsigned char *scales)
{
    ekv__cpu_block_accumulate(t->path, t->dtype, ekv__cpu_int4_split(t->path, t->dtype, t->D),
                              t->acc, t->G, t->D, v, scales, TILE_ROWS, t->spare, t->weights,
                              TILE_ROWS);
}

/* Value d of stored row j as the functions read it: int8 the integer (its row scale is
   applied outside them), the others dequantized. */
static double stored_value(const ekv_host_cache *c, int which, int j, int d, float *row)
{
    if (c->dtype == EKV_DTYPE_INT8)
        return (double)((const int8_t *)(const void *)ekv__cache_values(c, which, 0, 0, j))[d];
    ekv_cache_row(c, which, 0, 0, j, row);
    return (double)row[d];
}

/* The block's scores and weighted sum against double sums from the stored values; the
   largest error relative to the largest magnitude, or -1 when a value is not finite. */
static double check(const tiles *t, const ekv_host_cache *c, const float *q_natural)
{
    const int G = t->G, D = t->D;
    float *row = (float *)malloc((size_t)D * sizeof(float)), *acc = (float *)malloc((size_t)D * sizeof(float));
    double worst = 0.0;
    int h, j, d;
    for (h = 0; h < G * D; h++) t->acc[h] = 0.0f;
    for (h = 0; h < G * TILE_ROWS; h++) t->logits[h] = -1e30f; /* poisoned */
    scores(t, t->k, t->k_scales);
    weighted_sum(t, t->v, t->v_scales);
    for (h = 0; h < G; h++) {
        double top = 0.0, err = 0.0;
        for (j = 0; j < TILE_ROWS; j++) {
            double s = 0.0;
            for (d = 0; d < D; d++) s += (double)q_natural[h * D + d] * stored_value(c, 0, j, d, row);
            if (!(t->logits[h * TILE_ROWS + j] == t->logits[h * TILE_ROWS + j])) return -1.0;
            if (fabs(s) > top) top = fabs(s);
            if (fabs(s - t->logits[h * TILE_ROWS + j]) > err) err = fabs(s - t->logits[h * TILE_ROWS + j]);
        }
        if (top > 0.0 && err / top > worst) worst = err / top;
        memcpy(acc, t->acc + (size_t)h * (size_t)D, (size_t)D * sizeof(float));
        if (ekv__cpu_int4_split(t->path, t->dtype, D)) ekv__int4_order(acc, D, row, 0);
        top = err = 0.0;
        for (d = 0; d < D; d++) {
            double s = 0.0;
            for (j = 0; j < TILE_ROWS; j++)
                s += (double)t->weights[h * TILE_ROWS + j] * stored_value(c, 1, j, d, row);
            if (!(acc[d] == acc[d])) return -1.0;
            if (fabs(s) > top) top = fabs(s);
            if (fabs(s - acc[d]) > err) err = fabs(s - acc[d]);
        }
        if (top > 0.0 && err / top > worst) worst = err / top;
    }
    free(row);
    free(acc);
    return worst;
}

static int flag(const char *arg, const char *name, long low, long high, long *out)
{
    const size_t n = strlen(name);
    char *end;
    long value;
    if (strncmp(arg, name, n) != 0 || arg[n] != '=') return 0;
    value = strtol(arg + n + 1, &end, 10);
    if (end == arg + n + 1 || *end || value < low || value > high) {
        fprintf(stderr, "cpu_tiles: %s must be an integer in [%ld, %ld], got '%s'\n", name, low, high, arg + n + 1);
        exit(2);
    }
    *out = value;
    return 1;
}

int main(int argc, char **argv)
{
    static const ekv_dtype dtypes[4] = {EKV_DTYPE_F32, EKV_DTYPE_F16, EKV_DTYPE_INT8, EKV_DTYPE_INT4};
    long group = 4, dim = 128, mb = 256, reps = 20000;
    const char *path_name = NULL;
    const ekv__cpu_path *path;
    double fma_per_ns;
    int i, failed = 0;
    for (i = 1; i < argc; i++) {
        if (flag(argv[i], "--group", 1, 64, &group) || flag(argv[i], "--dim", 32, 512, &dim) ||
            flag(argv[i], "--mb", 1, 65536, &mb) || flag(argv[i], "--reps", 1, 100000000, &reps))
            continue;
        if (strncmp(argv[i], "--path=", 7) == 0) {
            path_name = argv[i] + 7;
            continue;
        }
        fprintf(stderr, "cpu_tiles: unknown argument '%s' (allowed: --group=N --dim=N --mb=N --reps=N --path=NAME)\n", argv[i]);
        return 2;
    }
    if (dim % 32 != 0) {
        fprintf(stderr, "cpu_tiles: --dim must be a multiple of 32 (int4 groups), got %ld\n", dim);
        return 2;
    }
    path = ekv__cpu_select(path_name);
    if (!path) {
        fprintf(stderr, "cpu_tiles: --path must be one of: %s (got '%s')\n", ekv_cpu_paths(), path_name);
        return 2;
    }
    { /* this core's multiply-add peak: 12 independent chains of 8-lane vectors (gcc/clang
         vector types: one fused multiply-add instruction each where the target has one) */
        typedef float v8 __attribute__((vector_size(32)));
        const v8 m = {0.999999f, 0.999999f, 0.999999f, 0.999999f, 0.999999f, 0.999999f, 0.999999f, 0.999999f};
        const v8 c = {1e-7f, 1e-7f, 1e-7f, 1e-7f, 1e-7f, 1e-7f, 1e-7f, 1e-7f};
        const long n = 50000000;
        double t0, best = 1e30;
        int r;
        long s;
        v8 a0 = c, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11;
        /* distinct starting values, else the compiler merges identical chains */
        a1 = a0 + c; a2 = a1 + c; a3 = a2 + c; a4 = a3 + c; a5 = a4 + c; a6 = a5 + c;
        a7 = a6 + c; a8 = a7 + c; a9 = a8 + c; a10 = a9 + c; a11 = a10 + c;
        for (r = 0; r < 3; r++) {
            t0 = seconds();
            for (s = 0; s < n; s++) {
                a0 = a0 * m + c; a1 = a1 * m + c; a2 = a2 * m + c; a3 = a3 * m + c;
                a4 = a4 * m + c; a5 = a5 * m + c; a6 = a6 * m + c; a7 = a7 * m + c;
                a8 = a8 * m + c; a9 = a9 * m + c; a10 = a10 * m + c; a11 = a11 * m + c;
            }
            t0 = seconds() - t0;
            if (t0 < best) best = t0;
        }
        a0 = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11;
        if (!(a0[0] == a0[0])) return 1;
        fma_per_ns = (double)n * 12 * 8 / best * 1e-9;
        printf("cpu_tiles: path %s, group %ld, head_dim %ld, blocks of %d rows; this core's peak: %.1f "
               "float multiply-adds per ns (12 independent 8-lane chains)\n",
               path->name, group, dim, TILE_ROWS, fma_per_ns);
    }
    printf("%-5s %14s %14s %12s %16s %12s %10s\n", "dtype", "L1 scores", "L1 sum", "L1 % of peak",
           "streaming", "GB/s", "max error");
    for (i = 0; i < 4; i++) {
        const int G = (int)group, D = (int)dim;
        ekv_data_desc desc;
        ekv_data data;
        ekv_compress_desc none = {EKV_POLICY_NONE, 1, 0, 0, 0};
        ekv_host_cache cache;
        ekv_rng rng;
        tiles t;
        float *q_natural, *raw[5];
        size_t row_bytes, scale_bytes, blocks, b;
        unsigned char *big_k, *big_v, *big_ks = NULL, *big_vs = NULL;
        double error, t0, t_scores, t_sum, t_stream;
        long r;
        int h;
        memset(&desc, 0, sizeof desc);
        desc.kind = EKV_DATA_RANDOM;
        desc.batch = 1;
        desc.heads = G;
        desc.kv_heads = 1;
        desc.head_dim = D;
        desc.seq_len = TILE_ROWS;
        desc.seed = 1000 + (uint64_t)i;
        if (ekv_data_generate(&desc, &data) || ekv_cache_build(&data, &none, dtypes[i], 0.0, &cache)) {
            fprintf(stderr, "cpu_tiles: %s\n", ekv_last_error());
            return 1;
        }
        memset(&t, 0, sizeof t);
        t.path = path;
        t.dtype = dtypes[i];
        t.G = G;
        t.D = D;
        t.k = ekv__cache_values(&cache, 0, 0, 0, 0);
        t.v = ekv__cache_values(&cache, 1, 0, 0, 0);
        t.k_scales = ekv__cache_row_scale(&cache, 0, 0, 0, 0);
        t.v_scales = ekv__cache_row_scale(&cache, 1, 0, 0, 0);
        /* on a cache line, as ekv_cpu_attention places q, its accumulators and scratch */
        raw[0] = (float *)malloc(((size_t)G * (size_t)D + EKV__LINE_FLOATS) * sizeof(float));
        q_natural = (float *)malloc((size_t)G * (size_t)D * sizeof(float));
        raw[1] = (float *)malloc(((size_t)G * TILE_ROWS + EKV__LINE_FLOATS) * sizeof(float));
        raw[2] = (float *)malloc(((size_t)G * TILE_ROWS + EKV__LINE_FLOATS) * sizeof(float));
        raw[3] = (float *)malloc(((size_t)G * (size_t)D + EKV__LINE_FLOATS) * sizeof(float));
        raw[4] = (float *)malloc(((size_t)TILE_ROWS * (size_t)D + 16 + EKV__LINE_FLOATS) * sizeof(float));
        t.q = ekv__line_align(raw[0]);
        t.logits = ekv__line_align(raw[1]);
        t.weights = ekv__line_align(raw[2]);
        t.acc = ekv__line_align(raw[3]);
        t.spare = ekv__line_align(raw[4]);
        memcpy(q_natural, data.q, (size_t)G * (size_t)D * sizeof(float));
        memcpy(t.q, q_natural, (size_t)G * (size_t)D * sizeof(float));
        if (ekv__cpu_int4_split(path, t.dtype, D))
            for (h = 0; h < G; h++) ekv__int4_order(t.q + (size_t)h * (size_t)D, D, t.spare, 1);
        ekv_rng_seed(&rng, 2000 + (uint64_t)i);
        for (h = 0; h < G * TILE_ROWS; h++) t.weights[h] = (float)ekv_rng_uniform(&rng) / TILE_ROWS;
        error = check(&t, &cache, q_natural);
        if (error < 0.0 || error > 1e-5) {
            printf("%-5s FAILED: error %.3g against the double computation (limit 1e-5)\n", ekv_dtype_name(t.dtype), error);
            failed = 1;
            continue;
        }
        t0 = seconds();
        for (r = 0; r < reps; r++) scores(&t, t.k, t.k_scales);
        t_scores = (seconds() - t0) / (double)reps;
        t0 = seconds();
        for (r = 0; r < reps; r++) weighted_sum(&t, t.v, t.v_scales);
        t_sum = (seconds() - t0) / (double)reps;
        /* streaming: the block's stored bytes tiled over --mb of K and V */
        row_bytes = ekv_dtype_row_bytes(t.dtype, D);
        scale_bytes = ekv_dtype_row_scale_bytes(t.dtype, D);
        blocks = (size_t)mb * 1000000 / 2 / (TILE_ROWS * (row_bytes + scale_bytes)) + 1;
        big_k = (unsigned char *)malloc(blocks * TILE_ROWS * row_bytes);
        big_v = (unsigned char *)malloc(blocks * TILE_ROWS * row_bytes);
        if (scale_bytes) {
            big_ks = (unsigned char *)malloc(blocks * TILE_ROWS * scale_bytes);
            big_vs = (unsigned char *)malloc(blocks * TILE_ROWS * scale_bytes);
        }
        if (!big_k || !big_v || (scale_bytes && (!big_ks || !big_vs))) {
            fprintf(stderr, "cpu_tiles: out of memory for --mb=%ld\n", mb);
            return 1;
        }
        for (b = 0; b < blocks; b++) {
            memcpy(big_k + b * TILE_ROWS * row_bytes, t.k, TILE_ROWS * row_bytes);
            memcpy(big_v + b * TILE_ROWS * row_bytes, t.v, TILE_ROWS * row_bytes);
            if (scale_bytes) {
                memcpy(big_ks + b * TILE_ROWS * scale_bytes, t.k_scales, TILE_ROWS * scale_bytes);
                memcpy(big_vs + b * TILE_ROWS * scale_bytes, t.v_scales, TILE_ROWS * scale_bytes);
            }
        }
        /* as the kernel reads a piece: EKV_CPU_SPLIT slots of K, then the same of V */
        t0 = seconds();
        for (b = 0; b < blocks; b += EKV_CPU_SPLIT / TILE_ROWS) {
            size_t e, end = b + EKV_CPU_SPLIT / TILE_ROWS < blocks ? b + EKV_CPU_SPLIT / TILE_ROWS : blocks;
            for (e = b; e < end; e++)
                scores(&t, big_k + e * TILE_ROWS * row_bytes, scale_bytes ? big_ks + e * TILE_ROWS * scale_bytes : NULL);
            for (e = b; e < end; e++)
                weighted_sum(&t, big_v + e * TILE_ROWS * row_bytes, scale_bytes ? big_vs + e * TILE_ROWS * scale_bytes : NULL);
        }
        t_stream = (seconds() - t0) / (double)(blocks * TILE_ROWS);
        printf("%-5s %11.2f ns %11.2f ns %11.0f%% %13.2f ns %12.2f %10.1e\n", ekv_dtype_name(t.dtype),
               t_scores / TILE_ROWS * 1e9, t_sum / TILE_ROWS * 1e9,
               100.0 * 2.0 * G * D / ((t_scores + t_sum) / TILE_ROWS * 1e9) / fma_per_ns, t_stream * 1e9,
               2.0 * (double)(row_bytes + scale_bytes) / t_stream * 1e-9, error);
        if (t.acc[0] != t.acc[0]) failed = 1; /* keeps the streamed sums live */
        free(big_k); free(big_v); free(big_ks); free(big_vs);
        for (h = 0; h < 5; h++) free(raw[h]);
        free(q_natural);
        ekv_cache_free(&cache);
        ekv_data_free(&data);
    }
    printf("per row: 'L1 scores' and 'L1 sum' time one block held in L1; 'streaming' reads K and V of "
           "%ld MB in pieces of %d slots, as the kernel does, on one thread\n", mb, EKV_CPU_SPLIT);
    return failed;
}
