/* ekv.h - v0.1.0 - elastic KV cache for LLM decode: config, data, CPU reference, statistics, metrics, JSON - MIT license

   Do this:
      #define EKV_IMPLEMENTATION
   before you include this file in *one* C or C++ file to create the implementation.
   Every other file includes it without the define and gets declarations only.

       #include ...
       #include ...
       #define EKV_IMPLEMENTATION
       #include "ekv.h"

   QUICK START (C99, no CUDA needed)

       ekv_config cfg = ekv_config_default();
       cfg.seq_len = 4096; cfg.compression = 4; cfg.policy = EKV_POLICY_TOPK;
       ekv_workload work;
       if (ekv_workload_prepare(&cfg, &work) != EKV_SUCCESS)
           fprintf(stderr, "%s\n", ekv_last_error());
       ekv_report report;
       ekv_cpu_run(&cfg, &work, &report);         times CPU attention over the cache
       ekv_report_print_table(&report, stdout);   or ekv_report_write_json()
       ekv_report_free(&report); ekv_workload_free(&work);

   TABLE OF CONTENTS (grep for ">>name")
       >>results      result codes, last error, version
       >>enums        dtypes, policies, data kinds, backends, variants
       >>config       ekv_config, defaults, validation, command line
       >>rng          seeded random numbers
       >>data         q/k/v generation (structured, random) and .npy/.npz input/output
       >>quant        storage dtypes: f16, bf16, int8, int4, fp8 e4m3
       >>cache        the host cache (stored form), compression policies
       >>reference    CPU attention: double reference and the float CPU kernel
       >>accuracy     error metrics and attention statistics of the data
       >>stats        sample statistics, Student t, bootstrap
       >>metrics      bytes, FLOPs, bandwidth, roofline
       >>json         JSON writer
       >>report       one benchmark result, its table and JSON
       >>workload     everything a backend needs, prepared on the host
       >>cpu          the CPU backend
       >>cycle        the inference cycle: decode steps over layers, per variant

   COMPILE-TIME OPTIONS
       #define EKV_MALLOC(n) / EKV_FREE(p) / EKV_REALLOC(p,n)
                                     all three or none: the allocator ekv uses
       #define EKV_DEF static        make every function static (one TU only)

   LICENSE: MIT, see the end of this file.
*/
#ifndef EKV_H_INCLUDED
#define EKV_H_INCLUDED

/* The implementation needs clock_gettime (POSIX) even under strict -std=c99; this only
   takes effect when ekv.h is the first header of the implementation's unit. */
#if defined(EKV_IMPLEMENTATION) && !defined(_POSIX_C_SOURCE) && !defined(_WIN32)
#define _POSIX_C_SOURCE 200809L
#endif

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define EKV_VERSION_MAJOR 0
#define EKV_VERSION_MINOR 1
#define EKV_VERSION_PATCH 0
#define EKV_VERSION_STRING "0.1.0"
#define EKV_SCHEMA_VERSION 1

#ifndef EKV_DEF
#define EKV_DEF extern
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* >>results ================================================================ */

/* One list generates the enum and the messages. Errors are negative. */
#define EKV_RESULT_LIST(X)                                                         \
    X(EKV_SUCCESS, 0, "success")                                                   \
    X(EKV_HELP_SHOWN, 1, "help or version was printed; nothing to run")            \
    X(EKV_ERR_INVALID_ARG, -1, "invalid argument")                                 \
    X(EKV_ERR_OUT_OF_MEMORY, -2, "out of memory")                                  \
    X(EKV_ERR_IO, -3, "input/output error")                                        \
    X(EKV_ERR_FORMAT, -4, "malformed input file")                                  \
    X(EKV_ERR_UNSUPPORTED, -5, "unsupported configuration")                        \
    X(EKV_ERR_CUDA, -6, "CUDA error")                                              \
    X(EKV_ERR_NO_DEVICE, -7, "no usable GPU")                                      \
    X(EKV_ERR_VALIDATION, -8, "kernel output does not match the CPU reference")

typedef enum ekv_result {
#define EKV__RESULT_ENUM(name, value, message) name = value,
    EKV_RESULT_LIST(EKV__RESULT_ENUM)
#undef EKV__RESULT_ENUM
    EKV_RESULT_END_ = 2
} ekv_result;

EKV_DEF const char *ekv_result_string(ekv_result result);
/* The message of the last error (names the field, flag, file or CUDA call). Per thread
   where the compiler supports thread-local storage. */
EKV_DEF const char *ekv_last_error(void);
/* Sets the last-error message (printf-style) and returns `code`. */
EKV_DEF ekv_result ekv_set_error(ekv_result code, const char *format, ...)
#if defined(__GNUC__) || defined(__clang__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
EKV_DEF const char *ekv_version(void);

/* >>enums ================================================================== */

typedef enum ekv_dtype {
    EKV_DTYPE_F32 = 0,
    EKV_DTYPE_F16,
    EKV_DTYPE_BF16,
    EKV_DTYPE_INT8, /* symmetric, one f32 scale per token and head */
    EKV_DTYPE_INT4, /* asymmetric, groups of 32 along head_dim, f16 scale + f16 zero */
    EKV_DTYPE_FP8,  /* e4m3, one f32 scale per (sequence, kv head) */
    EKV_DTYPE_COUNT
} ekv_dtype;

typedef enum ekv_policy {
    EKV_POLICY_NONE = 0,
    EKV_POLICY_STRIDE,
    EKV_POLICY_POOL,
    EKV_POLICY_WINDOW,
    EKV_POLICY_TOPK,
    EKV_POLICY_COUNT
} ekv_policy;

typedef enum ekv_data_kind {
    EKV_DATA_STRUCTURED = 0,
    EKV_DATA_RANDOM,
    EKV_DATA_FILE
} ekv_data_kind;

typedef enum ekv_backend {
    EKV_BACKEND_AUTO = 0,
    EKV_BACKEND_CUDA,
    EKV_BACKEND_CPU,
    EKV_BACKEND_EMULATOR
} ekv_backend;

typedef enum ekv_variant {
    EKV_VARIANT_NOCACHE = 0,  /* v0 */
    EKV_VARIANT_CACHE,        /* v1 */
    EKV_VARIANT_INT8,         /* v2 */
    EKV_VARIANT_SHARED,       /* v3 */
    EKV_VARIANT_INT8_SHARED,  /* v4 */
    EKV_VARIANT_ELASTIC,
    EKV_VARIANT_ALL,
    EKV_VARIANT_COUNT
} ekv_variant;

EKV_DEF const char *ekv_dtype_name(ekv_dtype dtype);
EKV_DEF const char *ekv_policy_name(ekv_policy policy);
EKV_DEF const char *ekv_backend_name(ekv_backend backend);
EKV_DEF const char *ekv_variant_name(ekv_variant variant);
/* Parse a name (also v0..v4 for variants); 0 on success, -1 if unknown. */
EKV_DEF int ekv_dtype_parse(const char *text, ekv_dtype *out);
EKV_DEF int ekv_policy_parse(const char *text, ekv_policy *out);
EKV_DEF int ekv_backend_parse(const char *text, ekv_backend *out);
EKV_DEF int ekv_variant_parse(const char *text, ekv_variant *out);

/* >>config ================================================================= */

#define EKV_PATH_MAX 1024
#define EKV_LABEL_MAX 256

/* One benchmark run. ekv_config_default() gives the seed-compatible defaults. */
typedef struct ekv_config {
    /* workload (comma lists on the command line sweep these) */
    int batch;          /* sequences                                  [1, 4096]       */
    int seq_len;        /* tokens in the cache per sequence           [1, 2^24]       */
    int heads;          /* query heads                                [1, 1024]       */
    int kv_heads;       /* KV heads, divides heads; 0 = heads (MHA)   [0, heads]      */
    int head_dim;       /* 64, 128 or 256                                             */
    int compression;    /* ratio C                                    [1, 64]         */
    ekv_dtype kv_dtype; /* storage dtype of the cache                                 */
    ekv_policy policy;  /* compression policy; none requires C = 1                    */
    int recent;         /* exact recent window W                      [0, seq_len]    */
    int sinks;          /* sink tokens kept by window and topk        [0, seq_len]    */
    int observe;        /* queries whose attention scores topk        [1, 1024]       */
    int layers;         /* layers of the inference cycle              [1, 256]        */
    int decode_tokens;  /* decode steps of the inference cycle        [1, 65536]      */
    ekv_variant variant;
    int compress_every; /* anchor period N of the cycle; 0 = compression ratio        */
    /* data */
    ekv_data_kind data;
    char data_path[EKV_PATH_MAX]; /* .npy/.npz when data == EKV_DATA_FILE */
    uint64_t seed;
    double softmax_scale; /* 0 = 1/sqrt(head_dim) */
    /* measurement */
    int reps;             /* kept samples                             [1, 1000000]    */
    int warmup;           /* discarded samples                        [0, 1000000]    */
    int inner_loops;      /* launches per sample                      [1, 100000]     */
    double truncate_percent; /* trimmed mean: percent cut from each end [0, 49]       */
    int use_graphs;       /* CUDA graph capture of the inner loop                      */
    int hot;              /* L2-resident reuse instead of cold                         */
    int paired_baseline;  /* interleave a C=1 baseline ABAB                            */
    ekv_dtype baseline_dtype; /* dtype of the baseline; default = kv_dtype             */
    int baseline_dtype_set;
    int inference;        /* run the inference cycle                                   */
    ekv_backend backend;
    int device;           /* CUDA device ordinal                                       */
    double peak_bw_gbs;   /* override of the theoretical peak; 0 = from the device     */
    /* output */
    int json;             /* one JSON object per result on stdout                      */
    int quiet;            /* no progress or notices on stderr                          */
    char out_path[EKV_PATH_MAX];   /* write the output here instead of stdout */
    char jsonl_path[EKV_PATH_MAX]; /* append one JSON line per result          */
    char dump_dir[EKV_PATH_MAX];   /* write q,k,v,out,ref .npy here            */
    char label[EKV_LABEL_MAX];
} ekv_config;

EKV_DEF ekv_config ekv_config_default(void);
/* Checks every field; the error names the field (as its command-line flag) and the
   allowed values. */
EKV_DEF ekv_result ekv_config_validate(const ekv_config *config);

/* A parsed command line: the base config plus the value lists of swept flags. */
#define EKV_SWEEP_MAX 64
typedef struct ekv_sweep_axis {
    const char *flag; /* e.g. "--seq" */
    int count;
    int values[EKV_SWEEP_MAX]; /* enum values for --kv-dtype, --policy, --variant */
} ekv_sweep_axis;

#define EKV_SWEEP_AXES 16
typedef struct ekv_cli {
    ekv_config base;
    ekv_sweep_axis axes[EKV_SWEEP_AXES];
    int axis_count;
    size_t run_count; /* product of the axis lengths */
} ekv_cli;

/* Parses argv (argv[0] is skipped). Returns EKV_HELP_SHOWN after printing --help or
   --version to `out`, an error with a one-line message on bad input (the driver exits
   with status 2), or EKV_SUCCESS. Every config of the sweep is validated here, so a bad
   combination is reported before anything runs. */
EKV_DEF ekv_result ekv_cli_parse(int argc, char **argv, ekv_cli *cli, FILE *out);
/* The i-th configuration of the sweep (cartesian product, last axis fastest). */
EKV_DEF ekv_result ekv_cli_config(const ekv_cli *cli, size_t index, ekv_config *out);
EKV_DEF void ekv_cli_print_help(FILE *out);

/* >>rng ==================================================================== */

/* xoshiro256** seeded through splitmix64: the same seed gives the same data on every
   platform. */
typedef struct ekv_rng {
    uint64_t s[4];
} ekv_rng;

EKV_DEF void ekv_rng_seed(ekv_rng *rng, uint64_t seed);
EKV_DEF uint64_t ekv_rng_next(ekv_rng *rng);
EKV_DEF double ekv_rng_uniform(ekv_rng *rng);          /* [0, 1) */
EKV_DEF double ekv_rng_normal(ekv_rng *rng);           /* N(0, 1) */
EKV_DEF uint64_t ekv_rng_below(ekv_rng *rng, uint64_t n); /* [0, n), unbiased */

/* >>data =================================================================== */

/* The original f32 data of one decode step. Layouts (C order):
     q          [batch][heads][head_dim]
     k, v       [batch][kv_heads][capacity][head_dim], tokens contiguous per head
     q_observe  [batch][heads][observe][head_dim], the queries of the last `observe`
                steps (topk scores tokens by their attention); may be NULL
     lengths    [batch], tokens present per sequence (ragged allowed, <= capacity) */
typedef struct ekv_data {
    int batch, heads, kv_heads, head_dim, capacity, observe;
    int *lengths;
    float *q, *k, *v, *q_observe;
} ekv_data;

typedef struct ekv_data_desc {
    ekv_data_kind kind;
    int batch, heads, kv_heads, head_dim, seq_len, observe;
    uint64_t seed;
    const int *lengths; /* optional ragged lengths [batch]; NULL = all seq_len */
} ekv_data_desc;

/* Allocates and fills `data`. structured: attention sinks, recency, heavy hitters and
   correlated neighbours, tuned so that on average the top 5% of tokens hold at least
   half of the attention mass; random: i.i.d. N(0, 1). */
EKV_DEF ekv_result ekv_data_generate(const ekv_data_desc *desc, ekv_data *data);
/* Loads q, k, v (and optionally q_observe) from a .npz, or from a directory holding
   q.npy, k.npy, v.npy. Shapes: q [B,H,D], k and v [B,H_kv,S,D]; float32 or float16. */
EKV_DEF ekv_result ekv_data_load(const char *path, int observe, ekv_data *data);
EKV_DEF void ekv_data_free(ekv_data *data);
EKV_DEF size_t ekv_data_kv_index(const ekv_data *data, int b, int h, int t); /* offset of row */

/* .npy: float32 arrays, C order, format version 1.0 (2.0 and 3.0 read too). */
typedef struct ekv_npy_array {
    int ndim;
    int64_t shape[8];
    float *values; /* converted to f32 */
} ekv_npy_array;

EKV_DEF ekv_result ekv_npy_write(const char *path, const float *values, int ndim,
                                 const int64_t *shape);
EKV_DEF ekv_result ekv_npy_write_f64(const char *path, const double *values, int ndim,
                                     const int64_t *shape);
EKV_DEF ekv_result ekv_npy_read(const char *path, ekv_npy_array *out);
/* Parses an in-memory .npy image (the reader of files and of stored .npz members). */
EKV_DEF ekv_result ekv_npy_parse(const unsigned char *bytes, size_t size, const char *name,
                                 ekv_npy_array *out);
EKV_DEF void ekv_npy_free(ekv_npy_array *array);

/* >>quant ================================================================== */

/* Bit-exact conversions shared by the CPU reference and the kernels: round to nearest
   even, with subnormals; fp8 e4m3 saturates to +-448 (no infinities). */
EKV_DEF uint16_t ekv_f32_to_f16(float x);
EKV_DEF float ekv_f16_to_f32(uint16_t h);
EKV_DEF uint16_t ekv_f32_to_bf16(float x);
EKV_DEF float ekv_bf16_to_f32(uint16_t h);
EKV_DEF uint8_t ekv_f32_to_fp8(float x);
EKV_DEF float ekv_fp8_to_f32(uint8_t v);

#define EKV_INT4_GROUP 32
#define EKV_FP8_MAX 448.0f

/* Bytes of one stored row of head_dim values (int4: head_dim/2) and of its per-row
   scale data (int8: 4; int4: 4 per group of 32; others 0). fp8's per-head scale is not
   per row: see ekv_cache_bytes. */
EKV_DEF size_t ekv_dtype_row_bytes(ekv_dtype dtype, int head_dim);
EKV_DEF size_t ekv_dtype_row_scale_bytes(ekv_dtype dtype, int head_dim);

/* Quantizes one row. int8: scale = max|x|/127 (stored f32), q = round_even(x/scale)
   clamped to [-127, 127]; int4: per group min/max, scale = (max-min)/15 and zero = min
   both rounded to f16 first, q = round_even((x - zero)/scale) clamped to [0, 15], low
   nibble = even element; fp8: x/head_scale then e4m3. `row_scale` receives the per-row
   scale data (may be NULL for dtypes without one). */
EKV_DEF void ekv_quantize_row(ekv_dtype dtype, const float *x, int head_dim, float fp8_scale,
                              void *row, void *row_scale);
EKV_DEF void ekv_dequantize_row(ekv_dtype dtype, const void *row, const void *row_scale,
                                int head_dim, float fp8_scale, float *out);

/* >>cache ================================================================== */

/* The stored form of a cache for one layer, on the host (the device cache uses the
   same layout). For each of K and V:
     values    [batch][kv_heads][capacity] rows of ekv_dtype_row_bytes bytes
     scales    int8: f32 [batch][kv_heads][capacity]
               int4: f16 pairs (scale, zero) [batch][kv_heads][capacity][head_dim/32]
               fp8:  f32 [batch][kv_heads]
     bias      f32 [batch][kv_heads][capacity] added to each slot's logit (pool), or
               NULL when every bias is 0
   lengths[b] = slots in use for sequence b. */
typedef struct ekv_host_cache {
    ekv_dtype dtype;
    int batch, kv_heads, head_dim, capacity;
    int *lengths;
    unsigned char *k, *v;
    unsigned char *k_scales, *v_scales;
    float *bias;
    int *compressed; /* [batch]: leading slots produced by compression (see >>cacheops);
                        NULL in a cache made by ekv_cache_build */
} ekv_host_cache;

/* Which original tokens one slot of a compressed cache holds: tokens
   [first, first + count), averaged when count > 1 (pool). */
typedef struct ekv_slot_source {
    int first, count;
} ekv_slot_source;

typedef struct ekv_compress_desc {
    ekv_policy policy;
    int compression, recent, sinks, observe;
} ekv_compress_desc;

/* Slots kept from a sequence of `length` tokens: ceil((length - W)/C) for the tokens
   older than the recent window W (W clipped to length), plus W. */
EKV_DEF int ekv_policy_kept(const ekv_compress_desc *desc, int length);
/* The slot map of one (sequence, kv head): `scores` [length] (topk only: attention mass
   each token received from the observed queries; may be NULL otherwise). Writes
   ekv_policy_kept() entries in token order and returns that count, or -1 on bad input.
   stride: of the old tokens keep those whose distance from the newest old token is a
           multiple of C (the newest is always kept);
   pool:   groups of C consecutive old tokens from the first; the last may be partial;
   window: the first min(sinks, budget) old tokens plus the newest old tokens;
   topk:   the first min(sinks, budget) old tokens plus the highest-scoring others
           (ties to the older token);
   then the recent window, one token per slot. */
EKV_DEF int ekv_policy_map(const ekv_compress_desc *desc, int length, const double *scores,
                           ekv_slot_source *slots);
/* Compresses `data` with `desc` into a new cache stored as `dtype` (capacity = the
   largest kept count). Pooled slots carry bias ln(count). */
EKV_DEF ekv_result ekv_cache_build(const ekv_data *data, const ekv_compress_desc *desc,
                                   ekv_dtype dtype, double softmax_scale,
                                   ekv_host_cache *cache);
EKV_DEF void ekv_cache_free(ekv_host_cache *cache);
/* Dequantized row of K (which = 0) or V (which = 1). */
EKV_DEF void ekv_cache_row(const ekv_host_cache *cache, int which, int b, int h, int slot,
                           float *out);

typedef struct ekv_cache_bytes {
    double k, v, scales, bias, total;
} ekv_cache_bytes;
/* Bytes the cache occupies for the given per-sequence slot counts (the kernel reads
   exactly these; capacity padding excluded). */
EKV_DEF ekv_cache_bytes ekv_cache_bytes_of(ekv_dtype dtype, int batch, int kv_heads,
                                           int head_dim, const int *lengths, int has_bias);

/* >>cacheops ============================================================== */

/* The elastic cache, grown one token at a time and compressed in place. These functions
   are the CPU reference of the device cache of ekv_cuda.cuh (ekv_cuda_elastic_*), which
   produces bit-identical stored bytes.

   Per sequence b the cache holds slots [0, lengths[b]): the first compressed[b] are
   products of earlier compressions, the rest exact tokens appended since ("fresh").

   append    writes one token per active sequence at slot lengths[b], quantized with the
             formulas of ekv_quantize_row (int8/int4: a scale per row). An fp8 (sequence,
             kv head) keeps the per-head scale set when it was first filled: by prefill,
             amax of its prefill tokens / 448 (as ekv_cache_build); while that scale is 0
             (nothing nonzero stored yet) each appended row sets it to amax(row) / 448.
             Later values beyond 448 x scale saturate to +-448 x scale. A sequence at
             capacity is an error, and nothing is written then.
   compress  (an anchor step) applies the policy to the fresh region of each sequence,
             [compressed[b], lengths[b]) with its recent window W = min(recent, fresh):
             exactly ekv_policy_map over the `fresh` tokens of the region (same ceil
             budget), where sinks count only while compressed[b] == 0 (they are the
             sequence's real first tokens). Kept and pooled slots are written in place in
             token order, the W exact recent slots follow, and
                 compressed[b] += ceil((fresh - W) / C),  lengths[b] = compressed[b] + W
             (= the old compressed[b] + ekv_policy_kept(desc, fresh)). Earlier compressed
             slots never change, so nothing is pooled twice.
             pool:  a slot's K and V are the means of its group's DEQUANTIZED stored rows,
                    summed in double in token order, divided by the count and rounded to
                    float, then quantized (fp8 with the head scale); its bias is
                    (float)log(count). A group of one is copied byte for byte.
             topk:  token scores are the attention mass from the observed queries, with the
                    softmax over the WHOLE cache [0, lengths[b]) (compressed slots and their
                    bias included), as ekv_cache_observed_scores defines it.
   A single compress of a freshly prefilled cache gives ekv_cache_build's stored bytes for
   stride and window (every dtype but fp8), for pool with f32, and for topk with f32 unless
   two scores tie to within rounding (ekv_observed_scores sums the softmax total in token
   order). Elsewhere it differs by design: pool averages the stored (already quantized)
   rows where ekv_cache_build averages the original data; topk over a quantized cache
   scores the stored keys; fp8 keeps the prefill scale where ekv_cache_build takes the amax
   of the kept rows. Bit-identity with the GPU assumes, like the rest of ekv, a host build
   that does not contract a * b + c into FMA (no -ffp-contract=fast with FMA hardware).

   Memory (ekv_cache_memory_bytes and the device's ekv_cuda_elastic_memory_bytes):
       batch x kv_heads x capacity x (2 x (row + row scale) + 4 if with_bias)
       + 2 x 4 x batch x kv_heads for fp8
   with row and row scale from ekv_dtype_row_bytes / ekv_dtype_row_scale_bytes (f32 4D,
   f16/bf16 2D, int8 D + 4, int4 D/2 + 4 per group of 32, fp8 D); the per-sequence
   counters are not counted. */

/* The softmax denominator of topk scoring is summed as EKV_SCORE_LANES interleaved partial
   sums (lane i adds slots i, i + LANES, ... in order), then the partials in lane order: a
   fixed order that a GPU block can follow, so that CPU and GPU scores agree bit for bit. */
#define EKV_SCORE_LANES 128

/* An empty cache: every length 0, every scale 0. with_bias allocates the per-slot logit
   bias that pool needs. head_dim must be even for f16, bf16 and int4. */
EKV_DEF ekv_result ekv_cache_create(ekv_host_cache *cache, ekv_dtype dtype, int batch,
                                    int kv_heads, int head_dim, int capacity, int with_bias);
/* Replaces the contents with tokens [0, lengths[b]) of k and v, laid out as ekv_data's
   [batch][kv_heads][source_capacity][head_dim] (pass data.k, data.v, data.capacity,
   data.lengths); compressed[b] = 0; fp8 head scales from the amax of these tokens. */
EKV_DEF ekv_result ekv_cache_prefill(ekv_host_cache *cache, const float *k, const float *v,
                                     int source_capacity, const int *lengths);
/* One token per sequence: k and v [batch][kv_heads][head_dim]; active [batch] selects the
   sequences that take one (NULL = all). */
EKV_DEF ekv_result ekv_cache_append(ekv_host_cache *cache, const float *k, const float *v,
                                    const unsigned char *active);
/* The elastic step (see above). q_observe [batch][heads][observe][head_dim] is needed by
   topk only (NULL otherwise); softmax_scale 0 means 1/sqrt(head_dim). pool needs a cache
   created with_bias. */
EKV_DEF ekv_result ekv_cache_compress(ekv_host_cache *cache, const ekv_compress_desc *desc,
                                      const float *q_observe, int heads, int observe,
                                      double softmax_scale);
/* scores [batch][kv_heads][capacity]: per slot s < lengths[b], the sum over the observed
   queries of the GQA group (query head order, then observe order) of
       exp(l_s - max_l) / total,   l_s = scale x dot(q, K_s) + bias_s  (in double)
   with K_s the dequantized stored row, dot as four interleaved partial sums, and total
   summed by EKV_SCORE_LANES lanes; slots beyond the length get 0. */
EKV_DEF ekv_result ekv_cache_observed_scores(const ekv_host_cache *cache, const float *q_observe,
                                             int heads, int observe, double softmax_scale,
                                             double *scores);
/* Bytes allocated for the stored form (the formula above). */
EKV_DEF size_t ekv_cache_memory_bytes(const ekv_host_cache *cache);

/* >>reference ============================================================== */

/* Decode attention in double over the full original data: out [batch][heads][head_dim]. */
EKV_DEF ekv_result ekv_reference_attention(const ekv_data *data, double softmax_scale,
                                           double *out);
/* The same over a stored (possibly compressed/quantized) cache, dequantized, with bias. */
EKV_DEF ekv_result ekv_reference_attention_cache(const ekv_host_cache *cache, const float *q,
                                                 int heads, double softmax_scale,
                                                 double *out);
/* The CPU backend's kernel: float, online softmax, reads the stored form directly. */
EKV_DEF ekv_result ekv_cpu_attention(const ekv_host_cache *cache, const float *q, int heads,
                                     float softmax_scale, float *out);
/* Attention probabilities of query head group -> token summed over the observed queries
   and over the query heads of each KV head: scores [batch][kv_heads][capacity]. */
EKV_DEF ekv_result ekv_observed_scores(const ekv_data *data, double softmax_scale,
                                       double *scores);

/* >>accuracy =============================================================== */

typedef struct ekv_error_stats {
    double rel_l2;  /* ||x - ref|| / ||ref|| */
    double max_abs; /* max |x - ref| */
    double cosine;  /* <x, ref> / (||x|| ||ref||) */
} ekv_error_stats;

EKV_DEF ekv_error_stats ekv_compare_f32(const double *ref, const float *x, size_t n);
EKV_DEF ekv_error_stats ekv_compare_f64(const double *ref, const double *x, size_t n);
/* Mean over (sequence, query head) of the attention entropy (nats) of the decode query
   and of the share of attention mass held by the top 5% of tokens (at least one). */
EKV_DEF ekv_result ekv_attention_profile(const ekv_data *data, double softmax_scale,
                                         double *entropy, double *top5pct_mass);

/* >>stats ================================================================== */

typedef struct ekv_stats {
    size_t n;
    double mean, std, cv, median, min, max;
    double q1, q3, iqr, p5, p95, p99;
    double trimmed_mean;
    double ci95_mean_lo, ci95_mean_hi;
    double ci95_median_lo, ci95_median_hi;
    int outliers_mild, outliers_severe;
} ekv_stats;

#define EKV_BOOTSTRAP_RESAMPLES 2000

/* numpy/scipy semantics: std ddof=1; quantiles by linear interpolation; trimmed mean =
   scipy.stats.trim_mean(x, trim_percent/100); mild outliers lie beyond 1.5 IQR from the
   quartiles but within 3 IQR, severe ones beyond 3 IQR; CI of the mean by Student t;
   CI of the median by a seeded percentile bootstrap. */
EKV_DEF ekv_result ekv_stats_compute(const double *samples, size_t n, double trim_percent,
                                     uint64_t seed, ekv_stats *out);
/* Linear-interpolation quantile of sorted data, q in [0, 1]. */
EKV_DEF double ekv_quantile_sorted(const double *sorted, size_t n, double q);
EKV_DEF double ekv_median(const double *samples, size_t n);
EKV_DEF double ekv_trimmed_mean(const double *samples, size_t n, double proportion);
EKV_DEF double ekv_t_cdf(double t, double df);
EKV_DEF double ekv_t_inverse_cdf(double p, double df);
/* Paired ratio median(base)/median(candidate) with a percentile bootstrap CI that
   resamples pairs (index i keeps base[i] with candidate[i]). */
EKV_DEF ekv_result ekv_bootstrap_ratio(const double *base, const double *candidate, size_t n,
                                       int resamples, uint64_t seed, double *ratio,
                                       double *lo, double *hi);

/* >>metrics ================================================================ */

typedef struct ekv_bytes {
    double k, v, scales, bias, q, out, partials, total;
} ekv_bytes;

typedef struct ekv_metrics {
    ekv_bytes bytes;
    double flops;          /* 4 * batch * heads * kept * head_dim */
    double softmax_flops;  /* counted separately: 5 per score     */
    double arithmetic_intensity; /* flops / bytes */
    double achieved_gbs;   /* bytes / median time */
    double achieved_gflops;
    double peak_bw_theoretical_gbs; /* NaN when unknown */
    double peak_bw_measured_gbs;    /* NaN when not measured */
    double peak_gflops;             /* NaN when unknown */
    double efficiency_vs_theoretical;
    double efficiency_vs_measured;
    double roofline_score;
} ekv_metrics;

/* Fills bytes and flops from the problem; time-dependent fields from `median_ms`. */
EKV_DEF void ekv_metrics_compute(ekv_metrics *metrics, const ekv_cache_bytes *cache_bytes,
                                 int batch, int heads, int head_dim, double kept_tokens_total,
                                 double partial_bytes, double median_ms,
                                 double peak_bw_theoretical_gbs, double peak_bw_measured_gbs,
                                 double peak_gflops);

/* >>json =================================================================== */

/* A small streaming writer: strict RFC 8259 (control characters escaped, invalid UTF-8
   replaced by U+FFFD, NaN/Inf written as null), compact or pretty. */
typedef struct ekv_json {
    char *buffer;
    size_t length, capacity;
    int pretty;
    int depth;
    int failed;
    unsigned char first[64]; /* per depth: nothing written yet in this container */
    int after_key;
} ekv_json;

EKV_DEF void ekv_json_init(ekv_json *json, int pretty);
EKV_DEF void ekv_json_free(ekv_json *json);
EKV_DEF void ekv_json_object_begin(ekv_json *json);
EKV_DEF void ekv_json_object_end(ekv_json *json);
EKV_DEF void ekv_json_array_begin(ekv_json *json);
EKV_DEF void ekv_json_array_end(ekv_json *json);
EKV_DEF void ekv_json_key(ekv_json *json, const char *key);
EKV_DEF void ekv_json_string(ekv_json *json, const char *value); /* NULL -> null */
EKV_DEF void ekv_json_number(ekv_json *json, double value);      /* shortest round trip */
EKV_DEF void ekv_json_int(ekv_json *json, long long value);
EKV_DEF void ekv_json_bool(ekv_json *json, int value);
EKV_DEF void ekv_json_null(ekv_json *json);

/* >>report ================================================================= */

typedef struct ekv_device_info {
    char name[256];
    int sm_major, sm_minor; /* 0 on the CPU */
    int sm_count;           /* multiprocessors, or CPU cores */
    long long l2_bytes;
    long long memory_bytes;
    int memory_clock_khz, bus_width_bits;
    int driver_version, runtime_version;
    double peak_bw_theoretical_gbs; /* NaN when unknown */
    double peak_bw_measured_gbs;    /* NaN when not measured */
    double peak_gflops;             /* NaN when unknown */
} ekv_device_info;

typedef struct ekv_accuracy {
    ekv_error_stats total, compression, kernel;
    double attention_entropy, top5pct_mass;
    int heads_checked, heads_total; /* validation may sample heads of large problems */
} ekv_accuracy;

/* One point of the inference cycle's series: decode step `step` (1-based), the context
   after its token was appended, the median over reps of that step's time (all layers),
   the KV cache bytes in use after the step and the peak bytes allocated so far. */
typedef struct ekv_series_point {
    int step, context_len;
    double latency_ms;
    double kv_cache_bytes, peak_device_bytes;
} ekv_series_point;

#define EKV_CYCLE_PHASES 4      /* projection, append, compress, attention */
#define EKV_CYCLE_LAYERS_MAX 256

/* One variant of the inference cycle (see >>cycle). Times in ms. */
typedef struct ekv_cycle_result {
    ekv_variant variant;
    int decode_tokens, layers;
    ekv_dtype kv_dtype;               /* storage of this variant's cache */
    double total_ms;                  /* median over reps of the whole decode loop */
    double tokens_per_sec;            /* batch x decode_tokens x 1000 / total_ms */
    double phases_ms[EKV_CYCLE_PHASES]; /* mean over reps of each phase's total; their sum
                                           <= stats.mean */
    ekv_stats stats;                  /* over samples_ms */
    double *samples_ms;               /* [reps] the decode loop's time per repeat; the
                                         same allocation holds baseline_samples_ms */
    size_t sample_count;
    double kv_cache_bytes, peak_device_bytes; /* after the last step */
    ekv_series_point *series;         /* [series_count] = one per decode step */
    int series_count;
    /* The last step's attention outputs against those of `cache` (nocache when the
       variant is cache itself: has_agreement = 0 then): max |diff| over all layers,
       whether bitwise equal, and the error per layer with cache as the reference. */
    int has_agreement;
    double agreement_max_abs_diff;
    int agreement_bitwise_equal;
    ekv_error_stats error_vs_cache[EKV_CYCLE_LAYERS_MAX];
    /* --paired-baseline: cache, interleaved ABAB with this variant (has_baseline = 0
       when not run) */
    int has_baseline;
    double *baseline_samples_ms;      /* points into samples_ms's allocation */
    double baseline_total_ms, baseline_tokens_per_sec;
    double speedup, speedup_ci_lo, speedup_ci_hi; /* median(baseline)/median(variant) */
} ekv_cycle_result;

typedef struct ekv_report {
    ekv_config config;
    ekv_backend backend;            /* CUDA, CPU or EMULATOR: what actually ran */
    ekv_device_info device;
    char timestamp[32];
    int cache_copies;               /* rotation copies for cold timing (1 = hot) */
    int splits;                     /* split-over-sequence factor of the kernel */
    double *samples_ms;             /* per launch: sample time / inner_loops */
    size_t sample_count;
    ekv_stats stats;
    ekv_metrics metrics;
    ekv_accuracy accuracy;
    ekv_cache_bytes cache_bytes;    /* the candidate cache as the kernel reads it */
    double kv_cache_bytes, kv_cache_bytes_uncompressed, peak_device_bytes;
    double kept_tokens_total;       /* sum over sequences of slots read */
    double partial_bytes;           /* split partials written and read back */
    /* paired baseline (has_baseline = 0 when not run) */
    int has_baseline;
    double *baseline_samples_ms;
    size_t baseline_sample_count;
    ekv_stats baseline_stats;
    double speedup, speedup_ci_lo, speedup_ci_hi;
    /* inference cycle: cycles[0..cycle_count) */
    ekv_cycle_result *cycles;
    int cycle_count;
    char notice[256];               /* e.g. "no GPU: ran on the CPU backend" */
} ekv_report;

EKV_DEF void ekv_report_init(ekv_report *report, const ekv_config *config);
EKV_DEF void ekv_report_free(ekv_report *report);
/* Statistics and metrics from the samples; call after the samples are in. */
EKV_DEF ekv_result ekv_report_finish(ekv_report *report);
EKV_DEF void ekv_report_write_json(const ekv_report *report, ekv_json *json);
EKV_DEF void ekv_report_print_table(const ekv_report *report, FILE *out);

/* >>workload =============================================================== */

/* Everything the backends need, prepared once on the host: the data, the candidate
   cache (compressed, stored), the baseline cache (C = 1, baseline dtype) when paired,
   the references and the accuracy of compression. */
typedef struct ekv_workload {
    ekv_data data;
    double softmax_scale;
    ekv_compress_desc compress;
    ekv_host_cache cache;
    ekv_host_cache baseline;   /* batch == 0 when not built */
    double *reference_full;    /* [batch][heads][head_dim], double over the original data */
    double *reference_cache;   /* same, over the stored candidate cache */
    ekv_error_stats error_compression;
    double attention_entropy, top5pct_mass;
    double kv_cache_bytes_uncompressed; /* the same dtype with C = 1 */
} ekv_workload;

EKV_DEF ekv_result ekv_workload_prepare(const ekv_config *config, ekv_workload *work);
EKV_DEF void ekv_workload_free(ekv_workload *work);
/* Fills report->accuracy from a kernel output [batch][heads][head_dim]. */
EKV_DEF void ekv_workload_accuracy(const ekv_workload *work, const float *out,
                                   ekv_accuracy *accuracy);
/* --dump-dir: q, k, v (original f32), out (kernel), ref (double reference) as .npy. */
EKV_DEF ekv_result ekv_workload_dump(const ekv_workload *work, const float *out,
                                     const char *dir);

/* >>cpu ==================================================================== */

/* Times ekv_cpu_attention over the workload's cache with the warmup/reps/inner-loop
   pipeline and the host's monotonic clock, validates it, and fills the report. */
EKV_DEF ekv_result ekv_cpu_run(const ekv_config *config, const ekv_workload *work,
                               ekv_report *report);
/* Host memory copy bandwidth in GB/s (read + write bytes), measured. */
EKV_DEF double ekv_cpu_copy_bandwidth_gbs(size_t bytes, int reps);
EKV_DEF double ekv_time_ms(void); /* monotonic clock */

/* >>cycle ================================================================== */

/* The inference cycle: T = decode_tokens sequential decode steps over L = layers layers.
   Model: hidden size d = heads x head_dim; per layer seeded weights Wq [d][heads x D],
   Wk and Wv [d][kv_heads x D], N(0, 1/d); per layer seeded synthetic hidden inputs
   [batch][seq_len + decode_tokens][d], N(0, 1): the prompt, then one per decode step.
   MLPs and the dependency between layers are left out: each layer has its own inputs.

   Prefill (not timed): the prompt's k and v projected into each layer's cache (elastic:
   then one elastic step over the prompt). A decode step, per layer: project the new
   token's x to q, k, v (projection); append k, v, quantized as the cache stores them
   (append); decode attention with q (attention); at the anchor steps (step % N == 0,
   N = compress_every or the compression ratio) the elastic step (compress), with
   observed queries = the layer's last `observe` queries in time order, prompt queries
   included (fewer while fewer exist).

   Variants: nocache recomputes k and v of every token so far from the stored inputs with
   a GEMM each step and stores them in kv_dtype for the attention (its "append" phase),
   no cache kept between steps; cache stores kv_dtype; int8 stores int8; shared: layers
   2i and 2i+1 share the cache of layer 2i (the odd layer projects only q; an odd last
   layer keeps its own); int8-shared both; elastic: kv_dtype with policy, compression,
   recent, sinks, observe. all runs the six on the same data.

   Bytes: kv_cache_bytes = bytes of the slots in use (ekv_cache_bytes_of, all caches);
   peak_device_bytes = bytes allocated for the variant's state (caches at capacity,
   nocache's stored inputs and recompute buffers; on the GPU also weights, inputs,
   workspaces). */
EKV_DEF ekv_result ekv_cycle_run(const ekv_config *config, ekv_report *report);
/* Bytes the cycle allocates on the device (or the host for the CPU backend) for the
   variant (ALL: the largest), estimated before anything is allocated. */
EKV_DEF double ekv_cycle_memory_estimate(const ekv_config *config, ekv_variant variant);
/* One untimed cycle of `variant`: the attention outputs of every step,
   outputs [decode_tokens][layers][batch][heads][head_dim] (tests compare backends). */
EKV_DEF ekv_result ekv_cycle_outputs(const ekv_config *config, ekv_variant variant,
                                     float *outputs);
/* The report's inference cycle as the value of "inference_cycle" (null when none). */
EKV_DEF void ekv_cycle_write_json(const ekv_report *report, ekv_json *json);
EKV_DEF void ekv_cycle_print_table(const ekv_report *report, FILE *out);

#ifdef __cplusplus
}
#endif

#endif /* EKV_H_INCLUDED */

/* ======================================================================== */
/*                              IMPLEMENTATION                              */
/* ======================================================================== */

#ifdef EKV_IMPLEMENTATION
#ifndef EKV_IMPLEMENTATION_DONE
#define EKV_IMPLEMENTATION_DONE

#include "src/ekv_base.inl"
#include "src/ekv_numeric.inl"
#include "src/ekv_data.inl"
#include "src/ekv_cache_ops.inl"
#include "src/ekv_cycle.inl"
#include "src/ekv_core.inl"

#endif /* EKV_IMPLEMENTATION_DONE */
#endif /* EKV_IMPLEMENTATION */

/*
MIT License

Copyright (c) 2026 the ekv authors

Permission is hereby granted, free of charge, to any person obtaining a copy of this
software and associated documentation files (the "Software"), to deal in the Software
without restriction, including without limitation the rights to use, copy, modify, merge,
publish, distribute, sublicense, and/or sell copies of the Software, and to permit persons
to whom the Software is furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or
substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED,
INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR
PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE
FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR
OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER
DEALINGS IN THE SOFTWARE.
*/
