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

   TABLE OF CONTENTS (grep for ">>name"; the implementation follows the same order)
     Part A, the library
       >>results      result codes, last error, version, allocation
       >>dtypes       storage dtypes and their one table of traits, policies, data kinds
       >>rng          seeded random numbers
       >>data         q/k/v generation (structured, random) and .npy/.npz input/output
       >>quant        bit-exact f16, bf16, fp8 e4m3; int8 and int4 rows
       >>cache        the host cache (stored form), compression policies
       >>reference    CPU attention: double reference and the float CPU kernel
       >>cacheops     the elastic cache grown token by token and compressed in place
      >>paged        the paged elastic cache: page pool, block tables, row rule
       >>accuracy     error metrics and attention statistics of the data
       >>abi          the C ABI for bindings: data and cache handles, plain arguments
     Part B, the benchmark (#define EKV_NO_BENCH leaves it out)
       >>config       ekv_config, defaults (resolved once), validation, command line
       >>stats        sample statistics, Student t, bootstrap
       >>metrics      bytes, FLOPs, bandwidth, roofline
       >>json         JSON writer
       >>report       one benchmark result: its text (detail, one-row summaries) and JSON
       >>workload     everything a backend needs, prepared on the host
       >>timing       the clock, the one ABAB timing loop of every backend, progress
       >>cpu          the CPU backend
       >>cycle        the inference cycle: its driver, the CPU backend, results, the paged
                      serving simulation (pages in use, the batch a memory budget fits)
       >>dispatch     one configuration as ekv_bench runs it: device or CPU, fall-back
       >>abibench     the C ABI's benchmark: ekv_bench's flags in, JSON objects out

   COMPILE-TIME OPTIONS
       #define EKV_NO_BENCH          the library alone (Part A): no config, CLI, statistics,
                                     JSON, timing or cycle; ekv_cuda.cuh then needs no cuBLAS
       #define EKV_MALLOC(n) / EKV_FREE(p) / EKV_REALLOC(p,n)
                                     all three or none: the allocator ekv uses
       #define EKV_DEF static        make every function static (one TU only)
       #define EKV_BUILD_FLAGS "..." / EKV_GIT_COMMIT "..."
                                     string literals every result records as build.flags
                                     and build.git_commit (see ekv_build_info)
       #define EKV_NO_THREADS        the CPU kernel runs on the calling thread only (else
                                     pthreads, or OpenMP under -fopenmp, with gcc/clang)
       #define EKV_NO_SIMD           the CPU kernel's portable C path only (else AVX-512 or
                                     AVX2+FMA+F16C on x86-64 with gcc/clang, chosen at run
                                     time by what the CPU has; NEON on AArch64)

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
/* What built the unit that defined EKV_IMPLEMENTATION, so that two results can say
   whether they came from the same build. compiler: name and version ("gcc 12.2.0",
   "clang 17.0.6", "nvcc 13.0 (host gcc 12.2.0)"); optimized: 1 or 0 from __OPTIMIZE__,
   -1 where the compiler does not say; flags and git_commit: the string literals the
   build passed as -DEKV_BUILD_FLAGS='"..."' and -DEKV_GIT_COMMIT='"..."', NULL when not
   given (the Makefile passes both; the one-line builds need neither). */
typedef struct ekv_build_info {
    const char *compiler;
    int optimized;
    const char *flags;
    const char *git_commit;
} ekv_build_info;
EKV_DEF ekv_build_info ekv_build_info_get(void);
/* Zeroed memory from the allocator ekv uses (EKV_MALLOC), NULL with the last error set
   on failure or overflow; ekv_free releases it. ekv_cuda.cuh allocates through these. */
EKV_DEF void *ekv_calloc(size_t count, size_t size);
EKV_DEF void ekv_free(void *pointer);
/* `bytes` for people, in the unit that keeps 1 to 3 digits before the point ("512 B",
   "12.288 kB", "1.049 MB", "36.507 GB"; 1 kB = 1000 B, as every byte figure of ekv).
   Writes into `out` and returns it. The memory messages and the table use it. */
EKV_DEF const char *ekv_format_bytes(double bytes, char *out, size_t size);

/* >>dtypes ================================================================= */

typedef enum ekv_dtype {
    EKV_DTYPE_F32 = 0,
    EKV_DTYPE_F16,
    EKV_DTYPE_BF16,
    EKV_DTYPE_INT8, /* symmetric, one f32 scale per token and head */
    EKV_DTYPE_INT4, /* asymmetric, groups of 32 along head_dim, f16 scale + f16 zero */
    EKV_DTYPE_FP8,  /* e4m3, one f32 scale per (sequence, kv head) */
    EKV_DTYPE_COUNT
} ekv_dtype;

/* Everything ekv knows about a storage dtype, in one table (ekv_dtype_info): the parser,
   validation, byte counts, allocation and the kernels' dispatch all read it. */
typedef struct ekv_dtype_traits {
    const char *name;     /* the command line's and the JSON's name */
    int bits;             /* bits per stored value */
    int scale_bytes;      /* scale data per scale group of a row: int8 4 (f32 scale), int4 4
                             (f16 scale + f16 zero point), else 0 */
    int scale_group;      /* values per scale group; 0 = the whole row */
    int head_scale_bytes; /* scale per (sequence, kv head): fp8 4 (f32), else 0 */
    int paired_values;    /* values stored in pairs: head_dim must be even */
    int quantized;        /* int8, int4, fp8: the paired baseline defaults to f16 */
    int min_sm;           /* oldest GPU architecture of the CUDA path (major x 10 + minor) */
    double max_abs;       /* the largest |x| stored without overflow: f16 65504, int4 65504
                             (a group's minimum is its f16 zero point), bf16 3.39e38, the
                             others any finite float (their scales are f32) */
} ekv_dtype_traits;

/* The traits of `dtype`, or NULL when it is not one. */
EKV_DEF const ekv_dtype_traits *ekv_dtype_info(ekv_dtype dtype);
/* "f32, f16, bf16, int8, int4, fp8": the allowed names, for messages. */
EKV_DEF const char *ekv_dtype_allowed(void);

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

EKV_DEF const char *ekv_dtype_name(ekv_dtype dtype);
EKV_DEF const char *ekv_policy_name(ekv_policy policy);
/* Parse a name; 0 on success, -1 if unknown. */
EKV_DEF int ekv_dtype_parse(const char *text, ekv_dtype *out);
EKV_DEF int ekv_policy_parse(const char *text, ekv_policy *out);

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

#define EKV_PATH_MAX 1024  /* paths ekv stores or builds (config, .npz members) */
#define EKV_LABEL_MAX 256

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
   q.npy, k.npy, v.npy. Shapes: q [B,H,D], k and v [B,H_kv,S,D]; float32 or float16.
   A NaN or an infinity (also a float64 beyond the float range) is EKV_ERR_FORMAT naming
   the file, the tensor and the index. */
EKV_DEF ekv_result ekv_data_load(const char *path, int observe, ekv_data *data);
/* The same for a .npz image already in memory (`name` appears in error messages). */
EKV_DEF ekv_result ekv_data_load_npz_memory(const unsigned char *bytes, size_t size,
                                            const char *name, int observe, ekv_data *data);
EKV_DEF void ekv_data_free(ekv_data *data);
EKV_DEF size_t ekv_data_kv_index(const ekv_data *data, int b, int h, int t); /* offset of row */
/* Checks that float attention over `data` is defined, so that bad data is named as such
   and never reaches a kernel (whose output would then disagree with the reference):
   every value of q, k, v and q_observe finite, and what the float kernels form from them
   finite with a margin: max(1, scale) x |q| x |k| (row norms, which bound every partial
   dot product) and length x max|v| (the softmax-weighted sum before its division) at most
   EKV_DATA_FLOAT_LIMIT. softmax_scale 0 means 1/sqrt(head_dim). EKV_ERR_INVALID_ARG names
   the tensor, the index and the limit. ekv_data_load checks finiteness as it loads, and
   ekv_cache_build checks k and v against the storage dtype's range (max_abs). */
#define EKV_DATA_FLOAT_LIMIT 2.1267647932558654e37 /* 2^124: float's 2^128 less a margin of 16 */
EKV_DEF ekv_result ekv_data_check(const ekv_data *data, double softmax_scale);

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
   scale data (int8: 4; int4: 4 per group of 32; others 0), from ekv_dtype_info. fp8's
   per-head scale is not per row: see ekv_cache_scales_bytes. */
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

/* 1 when the settings are usable: a known policy, compression >= 1 (exactly 1 for
   none), recent >= 0, sinks >= 0. */
EKV_DEF int ekv_compress_desc_valid(const ekv_compress_desc *desc);
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
/* 1 when the slots of this compression carry a logit bias: pool with C > 1 (its slots
   hold ln(group size); with C = 1 every group is one token and every bias 0). */
EKV_DEF int ekv_policy_has_bias(const ekv_compress_desc *desc);
/* Compresses `data` with `desc` into a new cache stored as `dtype` (capacity = the
   largest kept count). Pooled slots carry bias ln(count), allocated only when
   ekv_policy_has_bias. A value of k or v (any token, kept or not) beyond what `dtype`
   stores (ekv_dtype_traits.max_abs), or not finite, is EKV_ERR_INVALID_ARG naming the
   tensor, the index and the limit, and nothing is built. */
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
/* Bytes of one of k_scales / v_scales: per-row scales (int8, int4) for every slot of
   capacity, or one per (sequence, kv head) (fp8); 0 for dtypes without scales. */
EKV_DEF size_t ekv_cache_scales_bytes(ekv_dtype dtype, int batch, int kv_heads, int head_dim,
                                     int capacity);
/* Bytes a cache of this shape allocates: K and V rows, their scales and, with_bias, the
   pool bias (the per-sequence counters are not counted). */
EKV_DEF double ekv_cache_memory_of(ekv_dtype dtype, int batch, int kv_heads, int head_dim,
                                   int capacity, int with_bias);
/* Bytes the cache occupies for the given per-sequence slot counts (the kernel reads
   exactly these; capacity padding excluded). */
EKV_DEF ekv_cache_bytes ekv_cache_bytes_of(ekv_dtype dtype, int batch, int kv_heads,
                                           int head_dim, const int *lengths, int has_bias);

/* >>reference ============================================================== */

/* Decode attention in double over the full original data: out [batch][heads][head_dim]. */
EKV_DEF ekv_result ekv_reference_attention(const ekv_data *data, double softmax_scale,
                                           double *out);
/* The same over a stored (possibly compressed/quantized) cache, dequantized, with bias. */
EKV_DEF ekv_result ekv_reference_attention_cache(const ekv_host_cache *cache, const float *q,
                                                 int heads, double softmax_scale,
                                                 double *out);
/* The CPU backend's kernel: float, reads the stored form directly, on up to every online
   core (ekv_cpu_attention_with below, default options). */
EKV_DEF ekv_result ekv_cpu_attention(const ekv_host_cache *cache, const float *q, int heads,
                                     float softmax_scale, float *out);

/* Options of the CPU kernel; zero-initialize for the defaults. */
typedef struct ekv_cpu_options {
    int threads;      /* most worker threads; 0 = every online core (see ekv_cpu_threads) */
    const char *path; /* one of ekv_cpu_paths(), e.g. "portable" (tests of each path, what
                         SIMD buys); NULL or "" = the best this CPU runs */
} ekv_cpu_options;

#define EKV_CPU_THREADS_MAX 256
/* Work split of the CPU kernel: each (sequence, kv head) in pieces of EKV_CPU_SPLIT slots,
   each piece one work item with its own max, sum and accumulators, merged in double. */
#define EKV_CPU_SPLIT 512

/* How the kernel runs a cache: worker threads, pieces of the longest sequence, work
   items and the bytes of their partial results (written once, read once by the merge). */
typedef struct ekv_cpu_plan {
    int threads, splits;
    size_t items;
    double partial_bytes;
    const char *path; /* the code path that runs (one of ekv_cpu_paths) */
} ekv_cpu_plan;

/* The same kernel with options. Work items are the pieces of (sequence, kv head, split);
   the query heads of a GQA group are processed together, so each K and V row is read
   once; threads take items as they finish (a loaded machine slows one thread, not the
   call); the merge of a (sequence, kv head) is done by whichever thread finishes its
   last piece. The result does not depend on the thread count (bit for bit): pieces are
   fixed by the lengths and merged in a fixed order. */
EKV_DEF ekv_result ekv_cpu_attention_with(const ekv_host_cache *cache, const float *q,
                                          int heads, float softmax_scale,
                                          const ekv_cpu_options *options, float *out);
/* The plan ekv_cpu_attention_with follows for this cache (options may be NULL). Both fail
   with EKV_ERR_UNSUPPORTED when options->path is not one of ekv_cpu_paths(). */
EKV_DEF ekv_result ekv_cpu_attention_plan(const ekv_host_cache *cache, int heads,
                                          const ekv_cpu_options *options, ekv_cpu_plan *plan);
/* Threads for a request: `requested` (capped at EKV_CPU_THREADS_MAX) when positive, else
   the online cores; 1 when the build has no threads (EKV_NO_THREADS, no pthreads or
   OpenMP, or glibc before 2.34 linked without -pthread). */
EKV_DEF int ekv_cpu_threads(int requested);
/* The code paths of the CPU kernel this build runs on this CPU, best first: "avx512, avx2,
   portable", "avx2, portable", "neon, portable" or "portable". */
EKV_DEF const char *ekv_cpu_paths(void);
/* The rel_l2 a float kernel (this one, the CUDA kernels) may differ by from the double
   reference over the same stored cache, for sequences of up to `max_length` slots. */
EKV_DEF double ekv_validation_tolerance(int max_length);
/* Attention probabilities of query head group -> token summed over the observed queries
   and over the query heads of each KV head: scores [batch][kv_heads][capacity]. */
EKV_DEF ekv_result ekv_observed_scores(const ekv_data *data, double softmax_scale,
                                       double *scores);

/* The softmax scale ekv uses: `softmax_scale`, or 1/sqrt(head_dim) when it is 0. */
EKV_DEF double ekv_softmax_scale(double softmax_scale, int head_dim);

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

/* The region one anchor step compresses in one sequence, from its length and compressed
   count: the fresh slots [first, first + fresh); the newest `recent` of them stay exact;
   the `old` = fresh - recent before them go into `budget` = ceil(old / C) slots, of which
   `sinks` (at most budget) are the sequence's real first tokens, kept only while nothing
   was compressed before. After the step compressed = first + budget and length =
   compressed + recent. ekv_cache_compress, the cycle's capacity and the device kernels
   all use this one definition (inline, so device code can call it). */
typedef struct ekv_compress_region {
    int first, fresh, recent, old, budget, sinks;
} ekv_compress_region;

#if defined(__CUDACC__)
#define EKV_HOST_DEVICE __host__ __device__
#else
#define EKV_HOST_DEVICE
#endif
static EKV_HOST_DEVICE inline ekv_compress_region ekv_compress_region_of(int length, int compressed,
                                                                         int recent, int sinks,
                                                                         int compression)
{
    ekv_compress_region r;
    r.first = compressed;
    r.fresh = length - compressed;
    r.recent = recent < r.fresh ? recent : r.fresh;
    r.old = r.fresh - r.recent;
    r.budget = r.old > 0 ? (r.old + compression - 1) / compression : 0;
    r.sinks = compressed == 0 ? (sinks < r.budget ? sinks : r.budget) : 0;
    return r;
}

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

/* >>paged ================================================================== */

/* The paged elastic cache: the stored bytes of the elastic cache (>>cacheops) in a pool of
   fixed-size pages that sequences take as they grow and give back when compression shrinks
   them or when they are retired, read through a block table (as serving engines page their
   KV memory).

   A page holds `page_size` (P) consecutive token slots of ONE sequence for EVERY kv head,
   so one block table per sequence serves all of its kv heads (their lengths are the
   sequence's). Page p, for each of the parallel arrays k, v, k_scales, v_scales (int8,
   int4) and bias:

       page p:  [kv head 0: slots 0..P-1][kv head 1: slots 0..P-1] ... [kv head H_kv-1: ...]

   each slot one row of the array's contiguous-cache size (ekv_dtype_row_bytes values,
   ekv_dtype_row_scale_bytes scales, a 4-byte bias), so a token costs exactly the bytes it
   costs in a contiguous cache. fp8's scale is per (sequence, kv head), [batch][kv_heads]
   floats in k_scales and v_scales as in the contiguous cache. Slot t of (b, h) is row
       ((block_table[b][t / P] x kv_heads) + h) x P + t % P
   of each array (ekv_page_row, the one rule the CPU side and the kernels share), where the
   contiguous cache has row (b x kv_heads + h) x capacity + t: every array is indexed by the
   same row, so a reader changes its row function and nothing else.

   Pool accounting: every page is either free (on the free list, owner -1) or held by one
   sequence, in exactly one entry of its block table; sequence b holds ceil(lengths[b] / P)
   pages, entries [0, held) of its table, -1 after. ekv_paged_check verifies all of it.

   The operations give stored bytes identical to the contiguous cache's operations on the
   same inputs: append quantizes with the same rule (ekv_cache_append's); compress runs
   ekv_cache_compress itself on the sequence gathered into a contiguous staging cache and
   scatters the result back (a host reference, O(length) per sequence and anchor step like
   the compression it wraps), then returns the pages past ceil(length / P) to the pool. */
#define EKV_PAGE_SIZE_ALLOWED "0 (contiguous), 8, 16, 32, 64"

typedef struct ekv_paged_cache {
    ekv_dtype dtype;
    int batch, kv_heads, head_dim;
    int page_size, page_shift; /* P = 1 << page_shift tokens per page */
    int pages;                 /* pages in the pool */
    int table_width;           /* block table entries per sequence: ceil(capacity / P) */
    int *lengths, *compressed; /* [batch], as in ekv_host_cache */
    int *block_table;          /* [batch][table_width]: page of slots [i P, (i + 1) P), or -1 */
    int *held;                 /* [batch]: pages held, = ceil(lengths[b] / P) */
    int *owner;                /* [pages]: the sequence that holds the page, -1 when free */
    int *free_pages;           /* [pages]: stack of free pages, free_count of them */
    int free_count;
    unsigned char *k, *v;               /* [pages][kv_heads][P] rows */
    unsigned char *k_scales, *v_scales; /* int8, int4: per row as k; fp8: [batch][kv_heads] */
    float *bias;                        /* [pages][kv_heads][P], or NULL (no pool policy) */
} ekv_paged_cache;

/* 1 when P is a page size ekv supports (8, 16, 32, 64). */
EKV_DEF int ekv_page_size_valid(int page_size);
/* The P rows of kv head h in page `page` form block page x kv_heads + h of every array,
   and slot t (of the page that holds it) is row t % P of that block. In 32 bits: a pool
   holds fewer than 2^32 rows (ekv_paged_create), which keeps the kernels' lookup cheap.
   The device's table (ekv_cuda_cache_upload_paged) holds these block numbers per
   (sequence, kv head), so a kernel's lookup is one read, a shift and an add. */
static EKV_HOST_DEVICE inline unsigned ekv_page_block(unsigned page, unsigned kv_heads, unsigned h)
{
    return page * kv_heads + h;
}
static EKV_HOST_DEVICE inline size_t ekv_page_block_row(unsigned block, unsigned page_shift,
                                                        unsigned t)
{
    return (size_t)((block << page_shift) + (t & ((1u << page_shift) - 1u)));
}
/* Row of slot t of (sequence b, kv head h) in every array of a paged cache (see above). */
static EKV_HOST_DEVICE inline size_t ekv_page_row(const int *block_table, int table_width,
                                                  int page_shift, int kv_heads, size_t b,
                                                  size_t h, size_t t)
{
    const int page = block_table[b * (size_t)table_width + (t >> page_shift)];
    return ekv_page_block_row(ekv_page_block((unsigned)page, (unsigned)kv_heads, (unsigned)h),
                              (unsigned)page_shift, (unsigned)t);
}
/* An empty paged cache: `pages` pages of `page_size` tokens, every sequence empty (no
   pages), each able to grow to `capacity` slots. with_bias as ekv_cache_create. A pool of
   2^32 rows (pages x kv_heads x page_size) or more is EKV_ERR_OUT_OF_MEMORY. */
EKV_DEF ekv_result ekv_paged_create(ekv_paged_cache *cache, ekv_dtype dtype, int batch,
                                    int kv_heads, int head_dim, int page_size, int pages,
                                    int capacity, int with_bias);
EKV_DEF void ekv_paged_free(ekv_paged_cache *cache);
/* Sequence b (empty) takes the contents of sequence `source_b` of a contiguous cache of the
   same dtype and shape: its slots, lengths, compressed count and fp8 scales, in
   ceil(length / P) pages from the pool. Too few free pages (or a table too narrow): an
   error, and nothing is taken. */
EKV_DEF ekv_result ekv_paged_admit(ekv_paged_cache *cache, int b, const ekv_host_cache *source,
                                   int source_b);
/* ekv_cache_append on the paged cache: a sequence whose last page is full (or that holds
   none) takes a page first. Too few free pages for every active sequence that needs one,
   or a sequence at capacity: an error, and nothing is written. */
EKV_DEF ekv_result ekv_paged_append(ekv_paged_cache *cache, const float *k, const float *v,
                                    const unsigned char *active);
/* ekv_cache_compress on the paged cache (arguments as there); pages past the new
   ceil(length / P) go back to the pool. */
EKV_DEF ekv_result ekv_paged_compress(ekv_paged_cache *cache, const ekv_compress_desc *desc,
                                      const float *q_observe, int heads, int observe,
                                      double softmax_scale);
/* Sequence b returns all of its pages; its length and compressed count become 0. */
EKV_DEF ekv_result ekv_paged_retire(ekv_paged_cache *cache, int b);
/* The contiguous cache with the same contents (capacity = table_width x P; `compressed`
   copied): what the CPU kernel and the references read (they take contiguous caches). */
EKV_DEF ekv_result ekv_paged_gather(const ekv_paged_cache *cache, ekv_host_cache *out);
/* EKV_SUCCESS when the pool accounting holds (see above); else EKV_ERR_INTERNAL naming the
   first page or sequence that breaks it. */
EKV_DEF ekv_result ekv_paged_check(const ekv_paged_cache *cache);
/* Pages held by sequences (pages - free_count). */
EKV_DEF int ekv_paged_pages_used(const ekv_paged_cache *cache);
/* A pool without storage: the block tables, owners and free list of ekv_paged_create
   (k, v, scales and bias NULL; dtype, kv_heads and head_dim 0), for accounting what a
   pool of `pages` pages holds (the inference cycle's serving simulation, ekv_serve_run):
   the same take and give-back code and the same ekv_paged_check as a cache with storage. */
EKV_DEF ekv_result ekv_paged_pool_create(ekv_paged_cache *cache, int batch, int page_size,
                                         int pages, int capacity);
/* Sequence b of a pool without storage holds `length` slots from now on: it takes pages
   from the pool while it holds fewer than ceil(length / P) and gives back those past it
   (a cache with storage grows by ekv_paged_append and shrinks by ekv_paged_compress, which
   write the rows: an error here). Too few free pages: EKV_ERR_OUT_OF_MEMORY and nothing
   is taken; a length beyond the capacity: EKV_ERR_INVALID_ARG. */
EKV_DEF ekv_result ekv_paged_resize(ekv_paged_cache *cache, int b, int length);
/* Bytes one page stores (all kv heads, K and V, their per-row scales, bias if any). */
EKV_DEF size_t ekv_paged_page_bytes(ekv_dtype dtype, int kv_heads, int head_dim, int page_size,
                                    int with_bias);

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

/* >>abi ==================================================================== */

/* A small, stable C ABI for bindings (the Python module `ekv` calls it through ctypes):
   opaque handles and plain arguments only (pointers, sizes, ints, doubles, strings), so
   that no struct layout crosses the boundary and a field added to ekv_data or
   ekv_host_cache breaks no binding. Every function that can fail returns an ekv_result
   (EKV_SUCCESS = 0); the message, which names the wrong argument as the binding's keyword
   (`kv_dtype`, `compress`, `q`, ...), is ekv_last_error(). ekv_version(),
   ekv_result_string() and ekv_last_error() belong to the ABI too; Part B adds the
   benchmark (>>abibench) and ekv_cuda.cuh the GPU (ekv_cuda_abi_*). Arrays are C-ordered;
   shapes are int64. EKV_ABI_VERSION changes whenever a function of the ABI is added,
   removed or changes its meaning; a binding checks ekv_abi_version() when it loads. */
#define EKV_ABI_VERSION 1

typedef struct ekv_abi_data ekv_abi_data;   /* q, k, v of one decode step   */
typedef struct ekv_abi_cache ekv_abi_cache; /* a stored (compressed) cache  */

EKV_DEF int ekv_abi_version(void);

/* Copies one decode step's data from memory, with the rules of --data=FILE (ekv_data_load):
   q [B,H,D], k and v [B,H_kv,S,D] float32; q_observe [B,H,O,D] or NULL (then every observed
   query is a copy of q; with O > observe the last `observe` are kept); lengths [B] tokens
   present per sequence (ragged), or NULL for all S. observe: queries that score topk. */
EKV_DEF ekv_result ekv_abi_data_create(const float *q, const int64_t *q_shape, int q_ndim,
                                       const float *k, const int64_t *k_shape, int k_ndim,
                                       const float *v, const int64_t *v_shape, int v_ndim,
                                       const float *q_observe, const int64_t *q_observe_shape,
                                       int q_observe_ndim, const int *lengths, int observe,
                                       ekv_abi_data **data);
/* ekv_data_generate: kind "structured" or "random". */
EKV_DEF ekv_result ekv_abi_data_generate(const char *kind, int batch, int heads, int kv_heads,
                                         int seq_len, int head_dim, int observe, uint64_t seed,
                                         ekv_abi_data **data);
/* A dimension by name: batch, heads, kv_heads, seq_len, head_dim, observe. */
EKV_DEF ekv_result ekv_abi_data_dim(const ekv_abi_data *data, const char *name, int64_t *value);
/* Copies an array out: "q" [B,H,D], "k" / "v" [B,H_kv,S,D], "q_observe" [B,H,observe,D]
   (float32), or "lengths" [B] (int). */
EKV_DEF ekv_result ekv_abi_data_copy(const ekv_abi_data *data, const char *name, void *out);
/* The double reference over the full original data, out [B,H,D] (softmax_scale 0 =
   1/sqrt(D)), and the data's attention profile (ekv_attention_profile). */
EKV_DEF ekv_result ekv_abi_data_reference(const ekv_abi_data *data, double softmax_scale,
                                          double *out);
EKV_DEF ekv_result ekv_abi_data_profile(const ekv_abi_data *data, double softmax_scale,
                                        double *attention_entropy, double *top5pct_mass);
EKV_DEF void ekv_abi_data_free(ekv_abi_data *data);

/* The stored cache of `data` (ekv_cache_build): kv_dtype and policy by name, compression
   C, recent window, sinks; softmax_scale 0 = 1/sqrt(D). The cache refers to `data`, which
   must outlive it. */
EKV_DEF ekv_result ekv_abi_cache_build(const ekv_abi_data *data, const char *kv_dtype,
                                       const char *policy, int compression, int recent,
                                       int sinks, double softmax_scale, ekv_abi_cache **cache);
/* A number by name: batch, heads, kv_heads, head_dim, capacity (slots per (sequence, kv
   head)), compression, recent, sinks, observe, softmax_scale (resolved), has_bias, and the
   stored bytes the kernel reads (ekv_cache_bytes_of): bytes_k, bytes_v, bytes_scales,
   bytes_bias, bytes_total, bytes_uncompressed (the same dtype at C = 1), memory_bytes
   (allocated, capacity padding included). */
EKV_DEF ekv_result ekv_abi_cache_number(const ekv_abi_cache *cache, const char *name,
                                        double *value);
/* Slots in use per sequence, lengths [B]. */
EKV_DEF ekv_result ekv_abi_cache_lengths(const ekv_abi_cache *cache, int *lengths);
/* Which original tokens each slot holds: tokens [first, first + count) (count > 1: a pool
   group), first and count [B,H_kv,capacity]; -1 and 0 beyond a sequence's length. */
EKV_DEF ekv_result ekv_abi_cache_slots(const ekv_abi_cache *cache, int *first, int *count);
/* The stored K ("k") or V ("v") dequantized, out [B,H_kv,capacity,D] float32, 0 beyond a
   sequence's length; "bias" [B,H_kv,capacity] (0 without one). */
EKV_DEF ekv_result ekv_abi_cache_values(const ekv_abi_cache *cache, const char *name, float *out);
/* The stored bytes themselves, as the kernels read them: "k", "v", "k_scales", "v_scales"
   or "bias" (layouts in >>cache). *size receives the byte count; out may be NULL to ask
   for it, else it must hold that many bytes. */
EKV_DEF ekv_result ekv_abi_cache_stored(const ekv_abi_cache *cache, const char *name, void *out,
                                        size_t *size);
/* The CPU kernel (ekv_cpu_attention) over the stored cache with the data's q, out [B,H,D];
   the double reference over the same stored cache (ekv_reference_attention_cache). */
EKV_DEF ekv_result ekv_abi_cpu_attention(const ekv_abi_cache *cache, float *out);
EKV_DEF ekv_result ekv_abi_cache_reference(const ekv_abi_cache *cache, double *out);
EKV_DEF void ekv_abi_cache_free(ekv_abi_cache *cache);
/* ekv_compare_f32 and ekv_compare_f64 of n values. */
EKV_DEF ekv_result ekv_abi_compare(const double *reference, const float *x, size_t n,
                                   double *rel_l2, double *max_abs, double *cosine);
EKV_DEF ekv_result ekv_abi_compare_f64(const double *reference, const double *x, size_t n,
                                       double *rel_l2, double *max_abs, double *cosine);
/* For companion headers written in C (ekv_cuda.cuh), not for bindings: the structs behind
   the handles. */
EKV_DEF const ekv_host_cache *ekv_abi_cache_host(const ekv_abi_cache *cache);
EKV_DEF const ekv_data *ekv_abi_cache_data(const ekv_abi_cache *cache);

#ifndef EKV_NO_BENCH
/* ======================== Part B: the benchmark ========================= */

/* >>config ================================================================= */

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

/* The text output (--format); JSON is --json. detail: a block of lines per result with
   every figure; table, markdown, csv: one row per result (per variant of a cycle), see
   ekv_summary. */
typedef enum ekv_output_format {
    EKV_FORMAT_DETAIL = 0,
    EKV_FORMAT_TABLE,
    EKV_FORMAT_MARKDOWN,
    EKV_FORMAT_CSV,
    EKV_FORMAT_COUNT
} ekv_output_format;

EKV_DEF const char *ekv_backend_name(ekv_backend backend);
EKV_DEF const char *ekv_variant_name(ekv_variant variant);
EKV_DEF const char *ekv_format_name(ekv_output_format format);
/* Parse a name (also v0..v4 for variants); 0 on success, -1 if unknown. */
EKV_DEF int ekv_backend_parse(const char *text, ekv_backend *out);
EKV_DEF int ekv_variant_parse(const char *text, ekv_variant *out);
EKV_DEF int ekv_format_parse(const char *text, ekv_output_format *out);



#define EKV_SINKS_AUTO (-1)
#define EKV_SINKS_DEFAULT 4

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
    int sinks;          /* sink tokens kept by window and topk        [0, seq_len]
                           EKV_SINKS_AUTO (the default): EKV_SINKS_DEFAULT, at most
                           seq_len, so that a short sequence needs no --sinks           */
    int observe;        /* queries whose attention scores topk        [1, 1024]       */
    int layers;         /* layers of the inference cycle              [1, 256]        */
    int decode_tokens;  /* decode steps of the inference cycle        [1, 65536]      */
    ekv_variant variant;
    int compress_every; /* anchor period N of the cycle; 0 = compression ratio        */
    int page_size;      /* tokens per page of a paged cache (>>paged): 8, 16, 32, 64;
                           0 = contiguous (the default)                               */
    double memory_budget_gb; /* the cycle's serving simulation (ekv_serve_simulate): the
                           pages' memory in GB (1e9 bytes) whose largest batch per
                           variant is reported; 0 = none (the default)                */
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
    int threads;          /* CPU backend threads; 0 = every online core  [0, 256]     */
    /* output */
    int json;             /* one JSON object per result on stdout                      */
    ekv_output_format format; /* the text output when not --json                       */
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
/* The config with every default that depends on other fields resolved: kv_heads 0
   (heads), softmax_scale 0 (1/sqrt(head_dim)), compress_every 0 (the compression ratio),
   sinks EKV_SINKS_AUTO (EKV_SINKS_DEFAULT clipped to seq_len), threads 0
   (ekv_cpu_threads: every online core) and, unless set, the paired baseline's dtype (f16
   for quantized dtypes, else kv_dtype). A value the caller set is kept as it is, and
   validation judges it. Every entry point that takes a config resolves it once;
   everything after reads the resolved values. */
EKV_DEF ekv_config ekv_config_resolve(const ekv_config *config);

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
    char notice[512]; /* for stderr: the flags given more than once ("" when none) */
} ekv_cli;

/* Parses argv (argv[0] is skipped). Returns EKV_HELP_SHOWN after printing --help or
   --version to `out`, an error with a one-line message on bad input (the driver exits
   with status 2), or EKV_SUCCESS. Every config of the sweep is validated here, so a bad
   combination is reported before anything runs. A flag given more than once takes its
   last value (so that a wrapper can append overrides to its defaults) and is named in
   `notice`. The inference cycle's own flags (--variant, --layers, --decode_tokens,
   --compress-every) without --inference are an error. */
EKV_DEF ekv_result ekv_cli_parse(int argc, char **argv, ekv_cli *cli, FILE *out);
/* The i-th configuration of the sweep (cartesian product, last axis fastest). */
EKV_DEF ekv_result ekv_cli_config(const ekv_cli *cli, size_t index, ekv_config *out);
EKV_DEF void ekv_cli_print_help(FILE *out);

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
/* The outputs flag a result whose coefficient of variation exceeds this as noisy: on a
   quiet GPU the CV of decode attention is a few percent, so more means interference
   (other processes, clocks) that its median may not be free of. */
#define EKV_NOISY_CV 0.10

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
    /* 0 in any count, size, clock or version below = unknown (JSON: null) */
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
    double phases_ms[EKV_CYCLE_PHASES]; /* median over reps of each phase's total over the
                                           loop (the statistic of total_ms; medians need
                                           not add up to the median total exactly, and the
                                           time between phases belongs to none) */
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

typedef struct ekv_serve_result ekv_serve_result; /* the cycle's serving simulation (>>cycle) */

typedef struct ekv_report {
    ekv_config config;
    ekv_backend backend;            /* CUDA, CPU or EMULATOR: what actually ran */
    ekv_device_info device;
    char timestamp[32];
    int cache_copies;               /* rotation copies for cold timing (1 = hot) */
    int splits;                     /* split-over-sequence factor of the kernel */
    char kernel[64];                /* the attention kernel that ran (CUDA backend), or "" */
    int threads;                    /* CPU backend: worker threads (0 on a device) */
    char cpu_path[16];              /* CPU backend: its code path (ekv_cpu_paths) */
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
    ekv_serve_result *serve;        /* the cycle's serving simulation (--page-size), or NULL */
    char notice[256];               /* e.g. "no GPU: ran on the CPU backend" */
} ekv_report;

EKV_DEF void ekv_report_init(ekv_report *report, const ekv_config *config);
EKV_DEF void ekv_report_free(ekv_report *report);
/* Statistics and metrics from the samples; call after the samples are in. */
EKV_DEF ekv_result ekv_report_finish(ekv_report *report);
EKV_DEF void ekv_report_write_json(const ekv_report *report, ekv_json *json);
EKV_DEF void ekv_report_print_table(const ekv_report *report, FILE *out);

/* One row per result, per variant for a cycle result: --format=table, markdown, csv. */
typedef struct ekv_summary_row {
    /* where and on what */
    char label[EKV_LABEL_MAX];
    char device[128];
    ekv_backend backend;
    int hot;
    /* the workload */
    int batch, seq_len, heads, kv_heads, head_dim, compression, recent, sinks, observe;
    ekv_dtype kv_dtype;
    ekv_policy policy;
    char data[256];     /* structured, random or the file */
    uint64_t seed;
    int cycle;          /* an inference-cycle variant; the next four apply only then */
    ekv_variant variant;
    int layers, decode_tokens, compress_every;
    /* the figures; NaN where they do not apply (bandwidth of a cycle, a peak not known) */
    size_t n;
    double median_ms;   /* per launch, or for a cycle the whole decode loop */
    double ci95_lo_ms, ci95_hi_ms; /* of the median */
    double cv;
    double tokens_per_sec, bandwidth_gbs;
    double pct_of_theoretical_peak, pct_of_measured_copy;
    int paired;         /* the speedup fields hold median(baseline) / median(this) */
    char baseline[32];  /* "f16 C=1", or "cache" for a cycle */
    double speedup, speedup_ci95_lo, speedup_ci95_hi;
    double rel_l2;          /* attention: accuracy.error_total */
    double rel_l2_vs_cache; /* cycle: the worst layer's error against cache */
    double kv_cache_bytes;
    char notice[256];
} ekv_summary_row;

/* The rows of a job, collected first because the layout of a table depends on all of
   them: table and markdown show as columns the workload fields that differ between
   rows and the rest once above; csv has every field of ekv_summary_row, always in the
   same order, numbers in full precision, nothing else. The CV is flagged above
   EKV_NOISY_CV. */
typedef struct ekv_summary {
    ekv_summary_row *rows;
    size_t count, capacity;
} ekv_summary;

EKV_DEF void ekv_summary_init(ekv_summary *summary);
EKV_DEF void ekv_summary_free(ekv_summary *summary);
EKV_DEF ekv_result ekv_summary_add(ekv_summary *summary, const ekv_report *report);
EKV_DEF void ekv_summary_print(const ekv_summary *summary, ekv_output_format format, FILE *out);

/* >>workload =============================================================== */

/* Everything the backends need, prepared once on the host: the data, the candidate
   cache (compressed, stored), the baseline cache (C = 1, baseline dtype) when paired,
   the references and the accuracy of compression. */
typedef struct ekv_workload {
    ekv_data data;
    double softmax_scale;
    ekv_compress_desc compress;
    ekv_host_cache cache;      /* with --page-size: the paged cache's contents, gathered */
    ekv_paged_cache paged;     /* --page-size > 0: the candidate cache in pages; else empty */
    ekv_host_cache baseline;   /* batch == 0 when not built */
    double *reference_full;    /* [batch][heads][head_dim], double over the original data */
    double *reference_cache;   /* same, over the stored candidate cache */
    ekv_error_stats error_compression;
    double attention_entropy, top5pct_mass;
    double kv_cache_bytes_uncompressed; /* the same dtype with C = 1 */
} ekv_workload;

/* Validates the config (which includes the host-memory estimate below), loads or
   generates the data, checks it (ekv_data_check; ekv_cache_build checks the storage
   range), and builds the caches and references. */
EKV_DEF ekv_result ekv_workload_prepare(const ekv_config *config, ekv_workload *work);
EKV_DEF void ekv_workload_free(ekv_workload *work);
/* Host bytes ekv_workload_prepare allocates at its peak, from the config alone: the f32
   data (twice over for --data files: the file's bytes and the arrays), the candidate cache
   (ekv_cache_memory_of at the kept capacity) and the paired baseline, the references and
   the largest work space. ekv_config_validate refuses a config whose estimate exceeds
   90% of the memory the host has available, before anything is allocated; a backend adds
   its own share (the CPU backend's cold-timing copies are capped at 2 GB). `parts`, when
   not NULL, receives data, caches and the rest, in that order. */
EKV_DEF double ekv_workload_memory_estimate(const ekv_config *config, double parts[3]);
/* Fills report->accuracy from a kernel output [batch][heads][head_dim]. */
EKV_DEF void ekv_workload_accuracy(const ekv_workload *work, const float *out,
                                   ekv_accuracy *accuracy);
/* --dump-dir: q, k, v and q_observe (original f32; q_observe [B,H,observe,D], the queries
   topk scores with), out (kernel), ref (double reference) as .npy. The directory is a valid
   --data=DIR: with the same flags it reproduces the run, topk included. */
EKV_DEF ekv_result ekv_workload_dump(const ekv_workload *work, const float *out,
                                     const char *dir);

/* >>timing =============================================================== */

EKV_DEF double ekv_time_ms(void); /* monotonic clock */

/* Takes one sample of the baseline (baseline = 1) or of the candidate; rep is the index
   of the kept sample, or negative during warmup. The function stores the sample. */
typedef ekv_result (*ekv_sample_fn)(void *context, int baseline, int rep);
/* The timing loop of every backend: warmup + reps rounds, each taking the baseline's
   sample first when paired, then the candidate's (ABAB), so that drift over the run
   hits both alike. Stops at the first error. */
EKV_DEF ekv_result ekv_time_abab(int warmup, int reps, int paired, ekv_sample_fn sample,
                                 void *context);

/* Progress of a long run. The timing loop above (every backend's) reports each round, the
   cycle driver which variant it is on; the handler, when one is installed, hears the
   fraction of the current run done, in [0, 1]. Per thread; the library prints nothing
   itself. */
typedef void (*ekv_progress_fn)(void *context, double fraction);
EKV_DEF void ekv_progress_set_handler(ekv_progress_fn handler, void *context);

/* A handler that prints progress for a job of `runs` runs: nothing in the first 2 s;
   then on a terminal (tty = 1) one line redrawn with a bar, the percentage, the run and
   the time left; otherwise (a pipe, a log) a line when 2 s have passed and then every
   10 s. ekv_progress_meter_end prints a closing line when anything was printed. */
typedef struct ekv_progress_meter {
    FILE *out;
    const char *name;  /* what the lines start with, e.g. "ekv_bench" */
    int tty;
    size_t runs, run;  /* the job's runs, the one running (0-based) */
    char what[160];    /* its description */
    double start_ms, next_ms;
    double fraction;   /* of the job, at the last update */
    int printed;
} ekv_progress_meter;

EKV_DEF void ekv_progress_meter_init(ekv_progress_meter *meter, FILE *out, const char *name,
                                     int tty, size_t runs, double now_ms);
/* Run `run` (0-based) of the job starts; `what` describes it. */
EKV_DEF void ekv_progress_meter_run(ekv_progress_meter *meter, size_t run, const char *what,
                                    double now_ms);
/* `fraction` of the current run is done. */
EKV_DEF void ekv_progress_meter_update(ekv_progress_meter *meter, double fraction, double now_ms);
EKV_DEF void ekv_progress_meter_end(ekv_progress_meter *meter, double now_ms);
/* An ekv_progress_fn over a meter (context) and ekv_time_ms. */
EKV_DEF void ekv_progress_meter_handler(void *meter, double fraction);

/* >>cpu ==================================================================== */

/* Times ekv_cpu_attention over the workload's cache with the warmup/reps/inner-loop
   pipeline and the host's monotonic clock, validates it, and fills the report. */
EKV_DEF ekv_result ekv_cpu_run(const ekv_config *config, const ekv_workload *work,
                               ekv_report *report);
/* Host memory copy bandwidth in GB/s (read + write bytes), measured with `threads`
   threads copying their share at once (ekv_cpu_threads(threads) of them), as the kernel
   reads: the median of `reps` copies. */
EKV_DEF double ekv_cpu_copy_bandwidth_gbs(size_t bytes, int reps, int threads);

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

/* The pieces every backend's decode loop shares (ekv_cuda.cuh's device loop uses them
   through this API only): the seeded model, which cache a layer reads, the anchor
   steps, each variant's capacity and dtype, the phases and the timing record. */
enum {
    EKV_CYCLE_PHASE_PROJECTION = 0,
    EKV_CYCLE_PHASE_APPEND,
    EKV_CYCLE_PHASE_COMPRESS,
    EKV_CYCLE_PHASE_ATTENTION
};

typedef struct ekv_cycle_model {
    int batch, heads, kv_heads, head_dim, layers, prompt, steps;
    int tokens;          /* prompt + steps */
    int hidden;          /* heads x head_dim */
    int observe, compress_every;
    ekv_compress_desc compress;
    double softmax_scale;
    float *wq, *wk, *wv; /* [layers][hidden][heads x D], [layers][hidden][kv_heads x D] */
    float *x;            /* [layers][batch][tokens][hidden] */
} ekv_cycle_model;

/* What one timed decode loop records (rep = its repeat). */
typedef struct ekv_cycle_timing {
    int reps, steps;
    double *step_ms;    /* [reps][steps] */
    double *phase_ms;   /* [reps][EKV_CYCLE_PHASES], totals over the loop */
    double *kv_bytes;   /* [steps], after each step (the same every repeat) */
    double *peak_bytes; /* [steps] */
} ekv_cycle_timing;

/* A backend of the cycle: the CPU's is in ekv.h, the device's in ekv_cuda.cuh. */
typedef struct ekv_cycle_backend {
    ekv_backend kind; /* what the report names */
    /* selects and describes the device (report may be NULL: select only) */
    ekv_result (*prepare)(const ekv_config *config, ekv_report *report);
    /* the state of one variant: its caches at capacity and buffers */
    ekv_result (*open)(const ekv_config *config, const ekv_cycle_model *model,
                       ekv_variant variant, void **state);
    /* prefill, then every decode step; timing NULL (rep -1) = untimed; record, when not
       NULL, [steps][layers][batch][heads][head_dim] receives every step's outputs */
    ekv_result (*loop)(void *state, ekv_cycle_timing *timing, int rep, float *record);
    /* the last step's outputs [layers][batch][heads][head_dim], on the host */
    ekv_result (*last_outputs)(void *state, float *out);
    /* the KV bytes layer `layer`'s attention read in the last step, and its kept tokens */
    void (*layer_bytes)(void *state, int layer, ekv_cache_bytes *bytes, double *kept_tokens);
    void (*close)(void *state);
} ekv_cycle_backend;

/* ekv_cycle_run and ekv_cycle_outputs on a given backend. */
EKV_DEF ekv_result ekv_cycle_run_on(const ekv_config *config, const ekv_cycle_backend *backend,
                                    ekv_report *report);
EKV_DEF ekv_result ekv_cycle_outputs_on(const ekv_config *config, const ekv_cycle_backend *backend,
                                        ekv_variant variant, float *outputs);
/* The seeded model of a resolved config (ekv_config_resolve). */
EKV_DEF ekv_result ekv_cycle_model_make(const ekv_config *config, ekv_cycle_model *model);
EKV_DEF void ekv_cycle_model_free(ekv_cycle_model *model);
/* The input of token `token` of sequence b at layer `layer`: [hidden]. */
EKV_DEF const float *ekv_cycle_model_x(const ekv_cycle_model *model, int layer, int b, int token);
/* The layer whose cache `layer` reads (shared: the even layer of its pair); a layer
   projects k and v only when this is itself. */
EKV_DEF int ekv_cycle_cache_layer(ekv_variant variant, int layer);
/* Index of that cache among the variant's ekv_cycle_cache_count caches. */
EKV_DEF int ekv_cycle_cache_index(ekv_variant variant, int layer);
EKV_DEF int ekv_cycle_cache_count(ekv_variant variant, int layers);
/* Whether decode step `step` (1-based) is an anchor step of the variant (compress). */
EKV_DEF int ekv_cycle_anchor(const ekv_cycle_model *model, ekv_variant variant, int step);
/* Slots of the variant's caches, and their storage dtype. */
EKV_DEF int ekv_cycle_capacity(const ekv_config *config, ekv_variant variant);
EKV_DEF ekv_dtype ekv_cycle_dtype(const ekv_config *config, ekv_variant variant);

/* The serving simulation (--inference with --page-size=P): the pages the cycle's caches
   hold in a pool of P-token pages (ekv_paged_pool_create: the pool code of >>paged,
   without storage) while sequences of different lengths are admitted, decoded and
   retired, per variant; host-side accounting that every backend reports alike.
   Sequence i's prompt is ekv_serve_prompt_length(config, i): uniform in [seq - seq/2,
   seq + seq/2] (integer division), drawn from --seed and i alone, so that a batch of B
   is the first B sequences whatever else runs. A run of B sequences (ekv_serve_run):
   each admitted in turn (the pages of its prompt; elastic: then the prefill's elastic
   step, which gives pages back), then decode_tokens steps in lockstep, each sequence
   appending a slot (a page when its last is full) and elastic compressing at the cycle's
   anchor steps (pages back to the pool), then every sequence retired, the accounting
   checked (ekv_paged_check) at the end and after retiring. A page of a variant is P
   tokens of every cache it keeps for a sequence (ekv_serve_page_bytes): one block table
   per sequence for all layers, as serving engines page every layer with one table. */
#define EKV_SERVE_VARIANTS 6
#define EKV_SERVE_POOL_PAGES_MAX (1 << 22) /* a pool's pages: its bookkeeping stays small */

typedef struct ekv_serve_figures {
    int batch;                                 /* sequences run together */
    int pool_pages;                            /* pages in the pool */
    int pages_in_use_peak, pages_free_at_peak; /* the most pages held at once; free then */
    int pages_in_use_end, pages_free_end;      /* after the last decode step, before retiring */
} ekv_serve_figures;

typedef struct ekv_serve_variant {
    ekv_variant variant;
    ekv_dtype kv_dtype;
    double page_bytes;         /* ekv_serve_page_bytes */
    ekv_serve_figures serving; /* --batch sequences in the pages a contiguous cache of
                                  capacity (longest prompt + decode_tokens) reserves */
    int has_budget;
    ekv_serve_figures budget;  /* --memory-budget's pages: batch = the largest that fits */
} ekv_serve_variant;

struct ekv_serve_result {
    int page_size, decode_tokens, prompt_min, prompt_max, batch;
    uint64_t seed;
    double memory_budget_gb;   /* 0 = none */
    int count;                 /* variants: six, four with one layer (no pair to share) */
    ekv_serve_variant variants[EKV_SERVE_VARIANTS];
};

/* The prompt lengths' range [lo, hi] and sequence `index`'s draw from it. */
EKV_DEF void ekv_serve_prompt_range(const ekv_config *config, int *lo, int *hi);
EKV_DEF int ekv_serve_prompt_length(const ekv_config *config, int index);
/* Bytes one page of the variant stores: cache, int8, elastic: P tokens of every layer's
   cache (ekv_paged_page_bytes, pool's bias for elastic pool); shared, int8-shared: of
   every pair's cache; nocache: P tokens of its stored inputs (f32, every layer) and of
   the one layer's k and v it recomputes into. fp8's per-sequence scales are not paged
   and not counted. */
EKV_DEF double ekv_serve_page_bytes(const ekv_config *config, ekv_variant variant);
/* Pages --memory-budget holds for the variant: floor(GB x 1e9 / page bytes). */
EKV_DEF double ekv_serve_budget_pages(const ekv_config *config, ekv_variant variant);
/* The variants the simulation reports, in ekv_variant order; returns their count. */
EKV_DEF int ekv_serve_variants(const ekv_config *config, ekv_variant *variants);
/* One run of the first `batch` sequences in a pool of `pool_pages` pages (see above):
   *fits = 1 and the figures when every admission and append found its pages, *fits = 0
   when one did not (figures up to there). An error only for bad arguments, memory or
   broken accounting. */
EKV_DEF ekv_result ekv_serve_run(const ekv_config *config, ekv_variant variant, int pool_pages,
                                 int batch, int *fits, ekv_serve_figures *out);
/* The largest batch whose run fits in `pool_pages` pages, found by runs of more and more
   sequences (doubling, then halving the gap) until one more does not fit; out = that
   run's figures (batch 0 when not even one fits). A batch that fits implies every
   smaller one does: sequence i holds the same pages at every step whatever else runs. */
EKV_DEF ekv_result ekv_serve_max_batch(const ekv_config *config, ekv_variant variant,
                                       int pool_pages, ekv_serve_figures *out);
/* Every reported variant's serving run and, with --memory-budget, its largest batch. */
EKV_DEF ekv_result ekv_serve_simulate(const ekv_config *config, ekv_serve_result *out);

/* >>dispatch =============================================================== */

/* The device side a build has, for ekv_run: ekv_cuda.cuh's ekv_cuda_device_backend() (the
   CUDA backend, or the emulator in its test build); NULL in a build without CUDA. */
typedef struct ekv_device_backend {
    ekv_backend kind; /* EKV_BACKEND_CUDA or EKV_BACKEND_EMULATOR */
    ekv_result (*run)(const ekv_config *config, const ekv_workload *work, ekv_report *report);
    ekv_result (*cycle_run)(const ekv_config *config, ekv_report *report);
} ekv_device_backend;

/* EKV_ERR_UNSUPPORTED naming --backend when config->backend asks for a device this build
   does not have (cuda or emulator without `device`, or the other one of the two). */
EKV_DEF ekv_result ekv_run_check(const ekv_config *config, const ekv_device_backend *device);
/* One configuration as ekv_bench runs it: the inference cycle (--inference) or one
   attention workload (ekv_workload_prepare), on the device when the build has one and
   --backend is not cpu, else on the CPU. With --backend=auto a missing device
   (EKV_ERR_NO_DEVICE) falls back to the CPU, the reason kept in report->notice after
   "CPU backend: ". Free the report with ekv_report_free, also after a failure. */
EKV_DEF ekv_result ekv_run(const ekv_config *config, const ekv_device_backend *device,
                           ekv_report *report);

/* >>abibench =============================================================== */

/* The benchmark through the C ABI (see >>abi): ekv_bench's flags in, its JSON objects out,
   in process. */
typedef struct ekv_abi_bench ekv_abi_bench;

/* Parses `args` (ekv_bench's flags, without a program name) with ekv_cli_parse and checks
   the backend (ekv_run_check): a bad flag fails here, before anything runs. --help and
   --version are refused (ekv_abi_bench_help has the flags). This build's device side:
   none (ekv_cuda.cuh has ekv_cuda_abi_bench_open for a build with CUDA). */
EKV_DEF ekv_result ekv_abi_bench_open(int count, const char *const *args, ekv_abi_bench **bench);
/* Configurations in the sweep (the cartesian product of the comma lists). */
EKV_DEF int64_t ekv_abi_bench_runs(const ekv_abi_bench *bench);
/* Runs configuration `index` (0-based, last swept flag fastest) with ekv_run and gives its
   result as ekv_bench --json prints it (one JSON object, no newline) in *json, valid until
   the next call on `bench`. */
EKV_DEF ekv_result ekv_abi_bench_run(ekv_abi_bench *bench, int64_t index, const char **json);
/* Configuration `index` without running it: the JSON object ekv_report_write_json writes
   for an empty report, whose "configuration" holds the resolved flags, defaults included
   (nothing is measured: the rest is zero or null). Same lifetime of *json. */
EKV_DEF ekv_result ekv_abi_bench_config(ekv_abi_bench *bench, int64_t index, const char **json);
EKV_DEF void ekv_abi_bench_close(ekv_abi_bench *bench);
/* ekv_bench --help into out[size] (NUL-terminated, truncated to fit); *needed receives the
   full length + 1. */
EKV_DEF ekv_result ekv_abi_bench_help(char *out, size_t size, size_t *needed);
/* For companion headers (ekv_cuda.cuh): ekv_abi_bench_open with a device side. */
EKV_DEF ekv_result ekv_abi_bench_open_on(int count, const char *const *args,
                                         const ekv_device_backend *device,
                                         ekv_abi_bench **bench);

#endif /* EKV_NO_BENCH */

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

/* >>base: allocation, errors, small helpers shared by every section ========= */

#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif

/* The CPU kernel's threads (>>reference): OpenMP when the compiler enables it, else
   pthreads on POSIX systems; gcc/clang only, for their __atomic builtins. */
#if !defined(EKV_NO_THREADS) && (defined(__GNUC__) || defined(__clang__)) && defined(_OPENMP)
#define EKV__THREADS_OPENMP 1
#include <omp.h>
#elif !defined(EKV_NO_THREADS) && (defined(__GNUC__) || defined(__clang__)) && \
    (defined(__unix__) || defined(__APPLE__))
#define EKV__THREADS_PTHREAD 1
#include <pthread.h>
/* Before glibc 2.34 pthread_create lives in libpthread, which a build line without
   -pthread does not link: weak references keep such a build linking, and the kernel
   runs on one thread when they are null. From 2.34 on it is in libc (strong references,
   which also keep static links threaded). */
#if defined(__GLIBC__) && (__GLIBC__ < 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ < 34))
#define EKV__PTHREAD_WEAK 1
#pragma weak pthread_create
#pragma weak pthread_join
#endif
#endif

/* The CPU kernel's SIMD paths (>>reference). x86-64 with gcc/clang: AVX2+FMA+F16C and
   AVX-512F code is always compiled (target attributes) and chosen by what the CPU has
   (cpuid), so the plain `c++ -O2` build gets it. AArch64: NEON, which every AArch64 CPU
   has. */
#if !defined(EKV_NO_SIMD) && (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define EKV__SIMD_AVX2 1
#include <immintrin.h>
#include <cpuid.h>
#elif !defined(EKV_NO_SIMD) && defined(__aarch64__) && defined(__ARM_NEON)
#define EKV__SIMD_NEON 1
#include <arm_neon.h>
#endif

#if defined(EKV_MALLOC) && defined(EKV_FREE) && defined(EKV_REALLOC)
/* user-provided allocator */
#elif !defined(EKV_MALLOC) && !defined(EKV_FREE) && !defined(EKV_REALLOC)
#define EKV_MALLOC(n) malloc(n)
#define EKV_FREE(p) free(p)
#define EKV_REALLOC(p, n) realloc(p, n)
#else
#error "ekv.h: define all of EKV_MALLOC, EKV_FREE and EKV_REALLOC, or none"
#endif

#if defined(__cplusplus) && __cplusplus >= 201103L
#define EKV__THREAD_LOCAL thread_local
#elif defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L && !defined(__STDC_NO_THREADS__)
#define EKV__THREAD_LOCAL _Thread_local
#elif defined(__GNUC__) || defined(__clang__)
#define EKV__THREAD_LOCAL __thread
#elif defined(_MSC_VER)
#define EKV__THREAD_LOCAL __declspec(thread)
#else
#define EKV__THREAD_LOCAL
#endif

#define EKV__PI 3.14159265358979323846

static EKV__THREAD_LOCAL char ekv__error_message[1024];

EKV_DEF const char *ekv_result_string(ekv_result result)
{
    switch (result) {
#define EKV__RESULT_CASE(name, value, message) \
    case name:                                 \
        return message;
        EKV_RESULT_LIST(EKV__RESULT_CASE)
#undef EKV__RESULT_CASE
    default:
        return "unknown result code";
    }
}

EKV_DEF const char *ekv_last_error(void)
{
    return ekv__error_message;
}

EKV_DEF ekv_result ekv_set_error(ekv_result code, const char *format, ...)
{
    va_list args;
    va_start(args, format);
    vsnprintf(ekv__error_message, sizeof ekv__error_message, format, args);
    va_end(args);
    return code;
}

EKV_DEF const char *ekv_version(void)
{
    return EKV_VERSION_STRING;
}

#define EKV__STRINGIFY(x) #x
#define EKV__TO_STRING(x) EKV__STRINGIFY(x)
/* The host compiler: under nvcc the one nvcc drives for host code. */
#if defined(__clang__)
#define EKV__HOST_COMPILER                                                             \
    "clang " EKV__TO_STRING(__clang_major__) "." EKV__TO_STRING(__clang_minor__) "." \
        EKV__TO_STRING(__clang_patchlevel__)
#elif defined(__GNUC__)
#define EKV__HOST_COMPILER                                                             \
    "gcc " EKV__TO_STRING(__GNUC__) "." EKV__TO_STRING(__GNUC_MINOR__) "." EKV__TO_STRING( \
        __GNUC_PATCHLEVEL__)
#elif defined(_MSC_VER)
#define EKV__HOST_COMPILER "msvc " EKV__TO_STRING(_MSC_FULL_VER)
#else
#define EKV__HOST_COMPILER "unknown compiler"
#endif

EKV_DEF ekv_build_info ekv_build_info_get(void)
{
    ekv_build_info info;
#if defined(__CUDACC__)
    info.compiler = "nvcc " EKV__TO_STRING(__CUDACC_VER_MAJOR__) "." EKV__TO_STRING(
        __CUDACC_VER_MINOR__) " (host " EKV__HOST_COMPILER ")";
#else
    info.compiler = EKV__HOST_COMPILER;
#endif
#if defined(__OPTIMIZE__)
    info.optimized = 1;
#elif defined(__GNUC__) || defined(__clang__)
    info.optimized = 0; /* these define __OPTIMIZE__ at -O1 and above */
#else
    info.optimized = -1;
#endif
#ifdef EKV_BUILD_FLAGS
    info.flags = EKV_BUILD_FLAGS;
#else
    info.flags = NULL;
#endif
#ifdef EKV_GIT_COMMIT
    info.git_commit = EKV_GIT_COMMIT;
#else
    info.git_commit = NULL;
#endif
    return info;
}

/* calloc through the configured allocator; NULL (with the error set) on overflow or
   failure. */
#if defined(__GNUC__) || defined(__clang__)
#define EKV__UNUSED __attribute__((unused))
#else
#define EKV__UNUSED
#endif

static EKV__UNUSED void *ekv__alloc(size_t count, size_t size)
{
    void *p;
    size_t bytes;
    if (size != 0 && count > (size_t)-1 / size) {
        ekv_set_error(EKV_ERR_OUT_OF_MEMORY, "allocation of %zu x %zu bytes overflows", count, size);
        return NULL;
    }
    bytes = count * size;
    p = EKV_MALLOC(bytes > 0 ? bytes : 1);
    if (!p) {
        ekv_set_error(EKV_ERR_OUT_OF_MEMORY, "out of host memory allocating %zu bytes",
                      count * size);
        return NULL;
    }
    memset(p, 0, count * size);
    return p;
}

static EKV__UNUSED void ekv__free(void *p)
{
    if (p) EKV_FREE(p);
}

/* Puts `prefix` before the last error's message: context that a caller adds. */
static EKV__UNUSED ekv_result ekv__prefix_error(ekv_result code, const char *prefix)
{
    char message[sizeof ekv__error_message];
    memcpy(message, ekv__error_message, sizeof message);
    return ekv_set_error(code, "%s%s", prefix, message);
}

EKV_DEF void *ekv_calloc(size_t count, size_t size)
{
    return ekv__alloc(count, size);
}

EKV_DEF void ekv_free(void *pointer)
{
    ekv__free(pointer);
}

EKV_DEF const char *ekv_format_bytes(double bytes, char *out, size_t size)
{
    static const char *const units[5] = {"kB", "MB", "GB", "TB", "PB"};
    double value = bytes;
    int unit = -1;
    if (!out || size == 0) return out;
    /* promote where rounding would print 1000 (999.6 B is "1.000 kB", not "1000 B") */
    while (unit < 4 && fabs(value) >= (unit < 0 ? 999.5 : 999.9995)) {
        value /= 1000.0;
        unit++;
    }
    if (unit < 0) snprintf(out, size, "%.0f B", bytes);
    else snprintf(out, size, "%.3f %s", value, units[unit]);
    return out;
}

/* "a, b, c" from the names at the start of `count` entries of `stride` bytes; returns the
   length written. */
static EKV__UNUSED size_t ekv__join_names(char *out, size_t size, const void *table, size_t stride,
                                          int count)
{
    size_t n = 0;
    int i;
    out[0] = '\0';
    for (i = 0; i < count && n < size; i++) {
        const char *name = *(const char *const *)(const void *)((const char *)table + (size_t)i * stride);
        n += (size_t)snprintf(out + n, size - n, "%s%s", i ? ", " : "", name);
    }
    return n < size ? n : size - 1;
}

static EKV__UNUSED int ekv__compare_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* >>dtypes: the one table of storage dtypes ================================== */

static const ekv_dtype_traits ekv__dtype_table[EKV_DTYPE_COUNT] = {
    /* name  bits scale group           head paired quantized min_sm max_abs */
    {"f32",  32,  0,    0,              0,   0,     0,        0,     FLT_MAX},
    {"f16",  16,  0,    0,              0,   1,     0,        0,     65504.0},
    {"bf16", 16,  0,    0,              0,   1,     0,        0,     3.3895313892515355e38},
    {"int8", 8,   4,    0,              0,   0,     1,        0,     FLT_MAX},
    {"int4", 4,   4,    EKV_INT4_GROUP, 0,   1,     1,        0,     65504.0},
    {"fp8",  8,   0,    0,              4,   0,     1,        89,    FLT_MAX},
};

EKV_DEF const ekv_dtype_traits *ekv_dtype_info(ekv_dtype dtype)
{
    return (unsigned)dtype < EKV_DTYPE_COUNT ? &ekv__dtype_table[dtype] : NULL;
}

EKV_DEF const char *ekv_dtype_allowed(void)
{
    static char text[128];
    if (!text[0])
        ekv__join_names(text, sizeof text, ekv__dtype_table, sizeof ekv__dtype_table[0], EKV_DTYPE_COUNT);
    return text;
}

static const char *const ekv__policy_names[EKV_POLICY_COUNT] = {"none", "stride", "pool",
                                                                "window", "topk"};

/* "none, stride, ...": the allowed names, for the messages of the parser and the ABI */
static const char *ekv__policy_allowed(void)
{
    static char text[64];
    if (!text[0])
        ekv__join_names(text, sizeof text, ekv__policy_names, sizeof ekv__policy_names[0], EKV_POLICY_COUNT);
    return text;
}

EKV_DEF const char *ekv_dtype_name(ekv_dtype dtype)
{
    return (unsigned)dtype < EKV_DTYPE_COUNT ? ekv__dtype_table[dtype].name : "?";
}
EKV_DEF const char *ekv_policy_name(ekv_policy policy)
{
    return (unsigned)policy < EKV_POLICY_COUNT ? ekv__policy_names[policy] : "?";
}
static int ekv__find_name(const char *text, const char *const *names, int count)
{
    int i;
    for (i = 0; i < count; i++)
        if (strcmp(text, names[i]) == 0) return i;
    return -1;
}

EKV_DEF int ekv_dtype_parse(const char *text, ekv_dtype *out)
{
    int i;
    for (i = 0; i < EKV_DTYPE_COUNT; i++)
        if (strcmp(text, ekv__dtype_table[i].name) == 0) break;
    if (i == EKV_DTYPE_COUNT) return -1;
    *out = (ekv_dtype)i;
    return 0;
}
EKV_DEF int ekv_policy_parse(const char *text, ekv_policy *out)
{
    int i = ekv__find_name(text, ekv__policy_names, EKV_POLICY_COUNT);
    if (i < 0) return -1;
    *out = (ekv_policy)i;
    return 0;
}
/* >>rng: xoshiro256** seeded through splitmix64 ================================ */


/* splitmix64 turns any 64-bit seed (0 included) into well-mixed state words; its
   output function is a bijection, so the four words can never all be zero, which is
   the one state xoshiro must avoid. */
static uint64_t ekv__splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static uint64_t ekv__rotl64(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

EKV_DEF void ekv_rng_seed(ekv_rng *rng, uint64_t seed)
{
    uint64_t state = seed;
    int i;
    for (i = 0; i < 4; i++) rng->s[i] = ekv__splitmix64(&state);
}

EKV_DEF uint64_t ekv_rng_next(ekv_rng *rng)
{
    uint64_t *s = rng->s;
    uint64_t result = ekv__rotl64(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = ekv__rotl64(s[3], 45);
    return result;
}

/* The top 53 bits: every double of the form k / 2^53, so exactly uniform on [0, 1). */
EKV_DEF double ekv_rng_uniform(ekv_rng *rng)
{
    return (double)(ekv_rng_next(rng) >> 11) * (1.0 / 9007199254740992.0);
}

/* Box-Muller, one value per call (the struct keeps no spare), so a stream of normals
   depends only on the seed and the number of calls. 1 - u keeps the log argument in
   (0, 1]. */
EKV_DEF double ekv_rng_normal(ekv_rng *rng)
{
    double u1 = 1.0 - ekv_rng_uniform(rng);
    double u2 = ekv_rng_uniform(rng);
    return sqrt(-2.0 * log(u1)) * cos(2.0 * EKV__PI * u2);
}

/* 64 x 64 -> 128-bit product without compiler extensions (C99 has no 128-bit type). */
static void ekv__mul_64x64(uint64_t a, uint64_t b, uint64_t *high, uint64_t *low)
{
    uint64_t a_lo = a & 0xFFFFFFFFu, a_hi = a >> 32;
    uint64_t b_lo = b & 0xFFFFFFFFu, b_hi = b >> 32;
    uint64_t lo_lo = a_lo * b_lo, hi_lo = a_hi * b_lo, lo_hi = a_lo * b_hi, hi_hi = a_hi * b_hi;
    uint64_t middle = (lo_lo >> 32) + (hi_lo & 0xFFFFFFFFu) + lo_hi;
    *low = (middle << 32) | (lo_lo & 0xFFFFFFFFu);
    *high = hi_hi + (hi_lo >> 32) + (middle >> 32);
}

/* Lemire's multiply-and-reject: the high word of x * n is uniform on [0, n) once the
   few low words below 2^64 mod n are rejected. n == 0 returns 0. */
EKV_DEF uint64_t ekv_rng_below(ekv_rng *rng, uint64_t n)
{
    uint64_t high, low;
    if (n == 0) return 0;
    ekv__mul_64x64(ekv_rng_next(rng), n, &high, &low);
    if (low < n) {
        uint64_t threshold = (0 - n) % n;
        while (low < threshold) ekv__mul_64x64(ekv_rng_next(rng), n, &high, &low);
    }
    return high;
}

/* >>quant: storage dtypes, bit-exact conversions, row quantization ========== */

/* Every conversion here is the reference the GPU kernels are tested against bit for bit:
   f32 -> f16   == __float2half_rn      (RNE, subnormals, overflow -> inf, NaN -> 0x7fff)
   f32 -> bf16  == __float2bfloat16_rn  (RNE, subnormals, NaN -> 0x7fff)
   f32 -> e4m3  == __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3)
                   (RNE, subnormals, |x| beyond 448 and +-inf -> +-448, NaN -> 0x7f)
   They work on the bit patterns with integer arithmetic only, so they give the same
   answer under any floating-point environment (rounding mode, flush-to-zero, x87). */


static uint32_t ekv__f32_bits(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static float ekv__bits_f32(uint32_t u)
{
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* m / 2^shift rounded to nearest, ties to even (shift >= 1). */
static uint32_t ekv__shift_round_even(uint32_t m, int shift)
{
    uint64_t quotient, remainder, half;
    if (shift > 32) return 0; /* m < 2^32 < half: rounds to zero */
    quotient = (uint64_t)m >> shift;
    remainder = (uint64_t)m & ((1ull << shift) - 1u);
    half = 1ull << (shift - 1);
    if (remainder > half || (remainder == half && (quotient & 1u))) quotient++;
    return (uint32_t)quotient;
}

EKV_DEF uint16_t ekv_f32_to_f16(float x)
{
    uint32_t u = ekv__f32_bits(x);
    uint32_t sign = (u >> 16) & 0x8000u, magnitude = u & 0x7fffffffu;
    int exponent;
    if (magnitude > 0x7f800000u) return 0x7fff;
    if (magnitude == 0x7f800000u) return (uint16_t)(sign | 0x7c00u);
    exponent = (int)(magnitude >> 23) - 127;
    if (exponent > 15) return (uint16_t)(sign | 0x7c00u);
    if (exponent >= -14) {
        /* normal in f16: keep 10 of the 23 mantissa bits; a carry out of the mantissa
           correctly bumps the exponent, and out of 0x7bff gives inf (65520 -> inf) */
        uint32_t mantissa = magnitude & 0x7fffffu;
        uint32_t result = ((uint32_t)(exponent + 15) << 10) | (mantissa >> 13);
        uint32_t remainder = mantissa & 0x1fffu;
        if (remainder > 0x1000u || (remainder == 0x1000u && (result & 1u))) result++;
        return (uint16_t)(sign | result);
    }
    if (magnitude < 0x00800000u) return (uint16_t)sign; /* f32 zero or subnormal */
    /* f16 subnormal: count units of 2^-24; value = m * 2^(exponent - 23) */
    return (uint16_t)(sign | ekv__shift_round_even((magnitude & 0x7fffffu) | 0x800000u,
                                                   -exponent - 1));
}

/* Decoding is on the CPU kernel's hot path, hence the branch-light form: moving the
   exponent and fraction into place and adding the bias difference (127 - 15) << 23 is
   right for every normal value; inf/NaN need the bias added twice (exponent 31 -> 255);
   zero and subnormals are m * 2^-24, an exact float product. */
EKV_DEF float ekv_f16_to_f32(uint16_t h)
{
    uint32_t magnitude = (uint32_t)h & 0x7fffu;
    uint32_t bits = (magnitude << 13) + 0x38000000u;
    if (magnitude >= 0x7c00u) bits += 0x38000000u;
    else if (magnitude < 0x0400u) bits = ekv__f32_bits((float)magnitude * 5.9604644775390625e-08f);
    return ekv__bits_f32(bits | (((uint32_t)h & 0x8000u) << 16));
}

EKV_DEF uint16_t ekv_f32_to_bf16(float x)
{
    uint32_t u = ekv__f32_bits(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fff;
    /* adding 0x7fff plus the lowest kept bit rounds half to even; the carry may run into
       the exponent, which is exactly right (max float -> inf) */
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

EKV_DEF float ekv_bf16_to_f32(uint16_t h)
{
    return ekv__bits_f32((uint32_t)h << 16);
}

EKV_DEF uint8_t ekv_f32_to_fp8(float x)
{
    uint32_t u = ekv__f32_bits(x);
    uint32_t sign = (u >> 24) & 0x80u, magnitude = u & 0x7fffffffu;
    int exponent;
    if (magnitude > 0x7f800000u) return 0x7f;
    exponent = (int)(magnitude >> 23) - 127;
    if (exponent > 8) return (uint8_t)(sign | 0x7eu); /* includes inf: SATFINITE */
    if (exponent >= -6) {
        uint32_t mantissa = magnitude & 0x7fffffu;
        uint32_t result = ((uint32_t)(exponent + 7) << 3) | (mantissa >> 20);
        uint32_t remainder = mantissa & 0xfffffu;
        if (remainder > 0x80000u || (remainder == 0x80000u && (result & 1u))) result++;
        if (result > 0x7eu) result = 0x7eu; /* 0x7f is NaN in e4m3: saturate to 448 */
        return (uint8_t)(sign | result);
    }
    if (magnitude < 0x00800000u) return (uint8_t)sign;
    /* e4m3 subnormal: count units of 2^-9; value = m * 2^(exponent - 23) */
    return (uint8_t)(sign | ekv__shift_round_even((magnitude & 0x7fffffu) | 0x800000u,
                                                  14 - exponent));
}

/* The same scheme as ekv_f16_to_f32: bias difference (127 - 7) << 23 for normal values,
   m * 2^-9 (exact) for zero and subnormals, 0x7f/0xff is NaN. */
EKV_DEF float ekv_fp8_to_f32(uint8_t v)
{
    uint32_t magnitude = (uint32_t)v & 0x7fu;
    uint32_t bits = (magnitude << 20) + 0x3c000000u;
    if (magnitude == 0x7fu) bits = 0x7fc00000u;
    else if (magnitude < 8u) bits = ekv__f32_bits((float)magnitude * 0.001953125f);
    return ekv__bits_f32(bits | (((uint32_t)v & 0x80u) << 24));
}

EKV_DEF size_t ekv_dtype_row_bytes(ekv_dtype dtype, int head_dim)
{
    const ekv_dtype_traits *t = ekv_dtype_info(dtype);
    size_t d = head_dim > 0 ? (size_t)head_dim : 0;
    return t ? (d * (size_t)t->bits + 7) / 8 : 0;
}

EKV_DEF size_t ekv_dtype_row_scale_bytes(ekv_dtype dtype, int head_dim)
{
    const ekv_dtype_traits *t = ekv_dtype_info(dtype);
    size_t d = head_dim > 0 ? (size_t)head_dim : 0, groups;
    if (!t || !t->scale_bytes) return 0;
    groups = t->scale_group ? (d + (size_t)t->scale_group - 1) / (size_t)t->scale_group : 1;
    return (size_t)t->scale_bytes * groups;
}

/* Round to nearest, ties to even, independent of the rounding mode (CUDA: rintf or
   __float2int_rn). For |v| < 2^23 the floor fits an int32 and v - floor(v) is exact;
   larger magnitudes are already integers. */
static float ekv__round_even(float v)
{
    int32_t i;
    float d;
    if (!(fabsf(v) < 8388608.0f)) return v;
    i = (int32_t)v;
    if ((float)i > v) i--;
    d = v - (float)i;
    if (d > 0.5f || (d == 0.5f && (i & 1))) i++;
    return (float)i;
}

/* Rounded quotient clamped to [lo, hi]; NaN gives 0 (as __float2int_rn does). */
static int ekv__quantize_value(float quotient, int lo, int hi)
{
    float r = ekv__round_even(quotient);
    if (r != r) return 0;
    if (r < (float)lo) return lo;
    if (r > (float)hi) return hi;
    return (int)r;
}

/* The exact float operation sequence of each dtype, for kernels that must match it:

   int8 (row of D):  amax  = max_i fabsf(x[i])               (float compares)
                     scale = amax / 127.0f                    (one IEEE float division)
                     q[i]  = scale == 0 ? 0
                           : clamp(rint(x[i] / scale), -127, 127)   (float division, RNE)
                     stored: int8 q[i], f32 scale
                     x'[i] = (float)q[i] * scale

   int4 (per group of 32 along D, the last group may be partial):
                     mn, mx = min_i x[i], max_i x[i]          (float compares)
                     scale_h = f16(   (mx - mn) / 15.0f   )   (float sub, float div, RNE)
                     zero_h  = f16(mn)
                     scale, zero = f32(scale_h), f32(zero_h)   (exact)
                     q[i] = scale == 0 ? 0
                          : clamp(rint((x[i] - zero) / scale), 0, 15)  (float sub, div)
                     stored: byte i/2 holds q[i] in its low nibble for even i, high nibble
                     for odd i; per group the f16 pair (scale_h, zero_h)
                     x'[i] = (float)q[i] * scale + zero       (product rounded, then sum)

   fp8 e4m3:         code[i] = e4m3( head_scale == 0 ? 0 : x[i] / head_scale )
                     x'[i]   = f32(code[i]) * head_scale
                     (head_scale = amax / 448.0f over the (sequence, kv head): see
                     ekv_cache_build)

   f16 / bf16:       RNE conversion of each value, x' exact widening.

   clamp(NaN) is 0. */
EKV_DEF void ekv_quantize_row(ekv_dtype dtype, const float *x, int head_dim, float fp8_scale,
                              void *row, void *row_scale)
{
    int i;
    if (!x || !row || head_dim <= 0) return;
    switch (dtype) {
    case EKV_DTYPE_F32:
        memcpy(row, x, (size_t)head_dim * sizeof(float));
        break;
    case EKV_DTYPE_F16: {
        uint16_t *out = (uint16_t *)row;
        for (i = 0; i < head_dim; i++) out[i] = ekv_f32_to_f16(x[i]);
        break;
    }
    case EKV_DTYPE_BF16: {
        uint16_t *out = (uint16_t *)row;
        for (i = 0; i < head_dim; i++) out[i] = ekv_f32_to_bf16(x[i]);
        break;
    }
    case EKV_DTYPE_INT8: {
        int8_t *out = (int8_t *)row;
        float amax = 0.0f, scale;
        for (i = 0; i < head_dim; i++) {
            float a = fabsf(x[i]);
            if (a > amax) amax = a;
        }
        scale = amax / 127.0f;
        for (i = 0; i < head_dim; i++)
            out[i] = (int8_t)(scale == 0.0f ? 0 : ekv__quantize_value(x[i] / scale, -127, 127));
        if (row_scale) memcpy(row_scale, &scale, sizeof scale);
        break;
    }
    case EKV_DTYPE_INT4: {
        unsigned char *out = (unsigned char *)row;
        uint16_t *pairs = (uint16_t *)row_scale;
        size_t group, groups = ekv_dtype_row_scale_bytes(EKV_DTYPE_INT4, head_dim) / 4;
        memset(out, 0, ((size_t)head_dim + 1) / 2);
        for (group = 0; group < groups; group++) {
            int first = (int)group * EKV_INT4_GROUP;
            int last = first + EKV_INT4_GROUP < head_dim ? first + EKV_INT4_GROUP : head_dim;
            float mn = x[first], mx = x[first], scale, zero;
            uint16_t scale_h, zero_h;
            for (i = first + 1; i < last; i++) {
                if (x[i] < mn) mn = x[i];
                if (x[i] > mx) mx = x[i];
            }
            scale_h = ekv_f32_to_f16((mx - mn) / 15.0f);
            zero_h = ekv_f32_to_f16(mn);
            scale = ekv_f16_to_f32(scale_h);
            zero = ekv_f16_to_f32(zero_h);
            for (i = first; i < last; i++) {
                int q = scale == 0.0f ? 0 : ekv__quantize_value((x[i] - zero) / scale, 0, 15);
                out[i / 2] |= (unsigned char)((i & 1) ? q << 4 : q);
            }
            if (pairs) {
                pairs[2 * group] = scale_h;
                pairs[2 * group + 1] = zero_h;
            }
        }
        break;
    }
    case EKV_DTYPE_FP8: {
        uint8_t *out = (uint8_t *)row;
        for (i = 0; i < head_dim; i++)
            out[i] = ekv_f32_to_fp8(fp8_scale == 0.0f ? 0.0f : x[i] / fp8_scale);
        break;
    }
    default:
        break;
    }
}

EKV_DEF void ekv_dequantize_row(ekv_dtype dtype, const void *row, const void *row_scale,
                                int head_dim, float fp8_scale, float *out)
{
    int i;
    if (!row || !out || head_dim <= 0) return;
    switch (dtype) {
    case EKV_DTYPE_F32:
        memcpy(out, row, (size_t)head_dim * sizeof(float));
        break;
    case EKV_DTYPE_F16: {
        const uint16_t *in = (const uint16_t *)row;
        for (i = 0; i < head_dim; i++) out[i] = ekv_f16_to_f32(in[i]);
        break;
    }
    case EKV_DTYPE_BF16: {
        const uint16_t *in = (const uint16_t *)row;
        for (i = 0; i < head_dim; i++) out[i] = ekv_bf16_to_f32(in[i]);
        break;
    }
    case EKV_DTYPE_INT8: {
        const int8_t *in = (const int8_t *)row;
        float scale = 0.0f;
        if (row_scale) memcpy(&scale, row_scale, sizeof scale);
        for (i = 0; i < head_dim; i++) out[i] = (float)in[i] * scale;
        break;
    }
    case EKV_DTYPE_INT4: {
        const unsigned char *in = (const unsigned char *)row;
        const uint16_t *pairs = (const uint16_t *)row_scale;
        int first;
        for (first = 0; first < head_dim; first += EKV_INT4_GROUP) {
            const size_t group = (size_t)first / EKV_INT4_GROUP;
            const int last = first + EKV_INT4_GROUP < head_dim ? first + EKV_INT4_GROUP : head_dim;
            const float scale = pairs ? ekv_f16_to_f32(pairs[2 * group]) : 0.0f;
            const float zero = pairs ? ekv_f16_to_f32(pairs[2 * group + 1]) : 0.0f;
            for (i = first; i < last; i++) {
                int q = (i & 1) ? in[i / 2] >> 4 : in[i / 2] & 15;
                float product = (float)q * scale;
                out[i] = product + zero;
            }
        }
        break;
    }
    case EKV_DTYPE_FP8: {
        const uint8_t *in = (const uint8_t *)row;
        for (i = 0; i < head_dim; i++) out[i] = ekv_fp8_to_f32(in[i]) * fp8_scale;
        break;
    }
    default:
        break;
    }
}

/* >>data: generation, .npy/.npz input and output ============================ */

/* a * b into *out; 0 on overflow */
static int ekv__mul_size(size_t a, size_t b, size_t *out)
{
    if (b != 0 && a > (size_t)-1 / b) return 0;
    *out = a * b;
    return 1;
}

EKV_DEF size_t ekv_data_kv_index(const ekv_data *data, int b, int h, int t)
{
    return (((size_t)b * (size_t)data->kv_heads + (size_t)h) * (size_t)data->capacity +
            (size_t)t) * (size_t)data->head_dim;
}

EKV_DEF void ekv_data_free(ekv_data *data)
{
    if (!data) return;
    ekv__free(data->lengths);
    ekv__free(data->q);
    ekv__free(data->k);
    ekv__free(data->v);
    ekv__free(data->q_observe);
    memset(data, 0, sizeof *data);
}

/* Allocates the arrays of `data` for its dimensions (already set). */
static ekv_result ekv__data_allocate(ekv_data *data)
{
    size_t q_count, kv_count, observe_count;
    size_t bh = (size_t)data->batch * (size_t)data->heads;
    if (!ekv__mul_size(bh, (size_t)data->head_dim, &q_count) ||
        !ekv__mul_size((size_t)data->batch * (size_t)data->kv_heads, (size_t)data->capacity,
                       &kv_count) ||
        !ekv__mul_size(kv_count, (size_t)data->head_dim, &kv_count) ||
        !ekv__mul_size(q_count, (size_t)data->observe, &observe_count))
        return ekv_set_error(EKV_ERR_OUT_OF_MEMORY,
                             "data of batch %d, heads %d, kv_heads %d, seq_len %d, head_dim %d "
                             "is too large to address",
                             data->batch, data->heads, data->kv_heads, data->capacity,
                             data->head_dim);
    data->lengths = (int *)ekv__alloc((size_t)data->batch, sizeof(int));
    data->q = (float *)ekv__alloc(q_count, sizeof(float));
    data->k = (float *)ekv__alloc(kv_count, sizeof(float));
    data->v = (float *)ekv__alloc(kv_count, sizeof(float));
    if (data->observe > 0) data->q_observe = (float *)ekv__alloc(observe_count, sizeof(float));
    if (!data->lengths || !data->q || !data->k || !data->v ||
        (data->observe > 0 && !data->q_observe)) {
        ekv_data_free(data);
        return EKV_ERR_OUT_OF_MEMORY;
    }
    return EKV_SUCCESS;
}

/* The structured generator. Per (sequence, kv head) g:
     u_g         a random unit "topic" direction shared by the group's query heads;
     q_h         = QUERY_NORM * sqrt(D) * (c * u_g + sqrt(1 - c^2) * w_h), w_h a random
                   unit direction of head h (GQA: the heads of a group agree on u_g);
     k_t         = n_t + bonus_t * a * u_g, with n_t a unit-variance AR(1) process along
                   the sequence (neighbours correlated, so pooling them is meaningful)
                   and a = 1 / (QUERY_NORM * c), so that with scale 1/sqrt(D) the logit of
                   token t is about bonus_t + N(0, QUERY_NORM^2);
     bonus_t     sinks (the first tokens), recency (decaying over the newest tokens) and
                   heavy hitters (a few per cent of the tokens, random positions);
     v_t         an independent unit-variance AR(1) process plus a mean vector of the
                   (sequence, kv head) with components N(0, VALUE_MEAN^2): real values
                   share a common component, without which long-context outputs are
                   pure noise and every compression error looks catastrophic;
     q_observe   noisy copies of q_h (correlation OBSERVE_CORRELATION), so topk's ranking
                   is informative but not perfect.
   The constants were tuned with ekv_attention_profile (see tests/test_reference.c):
   top-5% mass >= 0.5 from 256 to 128K tokens, and no policy is exact at C = 2. */
#define EKV__GEN_QUERY_NORM 1.0
#define EKV__GEN_TOPIC_WEIGHT 0.8
#define EKV__GEN_AR_COEFFICIENT 0.9
#define EKV__GEN_SINKS 4
#define EKV__GEN_SINK_BONUS 6.0
#define EKV__GEN_RECENT_BONUS 3.0
#define EKV__GEN_RECENT_DECAY 12.0
#define EKV__GEN_RECENT_SPAN 64
#define EKV__GEN_HEAVY_FRACTION 0.02
#define EKV__GEN_HEAVY_BONUS_MIN 3.0
#define EKV__GEN_HEAVY_BONUS_MAX 5.5
#define EKV__GEN_OBSERVE_CORRELATION 0.8
#define EKV__GEN_VALUE_MEAN 0.5

/* Normal variates for bulk data: Marsaglia's polar method uses both values of each pair
   and needs no trigonometry, which makes generation about twice as fast as one
   Box-Muller value per call. */
typedef struct ekv__normals {
    ekv_rng *rng;
    double spare;
    int has_spare;
} ekv__normals;

static double ekv__normal(ekv__normals *n)
{
    double u, v, s, f;
    if (n->has_spare) {
        n->has_spare = 0;
        return n->spare;
    }
    do {
        u = 2.0 * ekv_rng_uniform(n->rng) - 1.0;
        v = 2.0 * ekv_rng_uniform(n->rng) - 1.0;
        s = u * u + v * v;
    } while (s >= 1.0 || s == 0.0);
    f = sqrt(-2.0 * log(s) / s);
    n->spare = v * f;
    n->has_spare = 1;
    return u * f;
}

/* A random unit vector. */
static void ekv__random_unit(ekv__normals *rng, double *out, int n)
{
    double norm = 0.0;
    int i;
    do {
        norm = 0.0;
        for (i = 0; i < n; i++) {
            out[i] = ekv__normal(rng);
            norm += out[i] * out[i];
        }
    } while (norm == 0.0);
    norm = 1.0 / sqrt(norm);
    for (i = 0; i < n; i++) out[i] *= norm;
}

/* Fills rows [0, count) of an AR(1) process with unit marginal variance. */
static void ekv__ar_rows(ekv__normals *rng, float *rows, int count, int dim)
{
    const double phi = EKV__GEN_AR_COEFFICIENT, innovation = sqrt(1.0 - phi * phi);
    int t, d;
    for (d = 0; d < dim; d++) rows[d] = (float)ekv__normal(rng);
    for (t = 1; t < count; t++) {
        const float *prev = rows + (size_t)(t - 1) * (size_t)dim;
        float *row = rows + (size_t)t * (size_t)dim;
        for (d = 0; d < dim; d++)
            row[d] = (float)(phi * prev[d] + innovation * ekv__normal(rng));
    }
}

static ekv_result ekv__generate_structured(ekv__normals *rng, ekv_data *data)
{
    const int D = data->head_dim, group = data->heads / data->kv_heads;
    const double c = EKV__GEN_TOPIC_WEIGHT, s = sqrt(1.0 - c * c);
    const double qnorm = EKV__GEN_QUERY_NORM * sqrt((double)D);
    const double key_gain = 1.0 / (EKV__GEN_QUERY_NORM * c);
    const double rho = EKV__GEN_OBSERVE_CORRELATION, rho_noise = sqrt(1.0 - rho * rho);
    double *topic = (double *)ekv__alloc((size_t)D, sizeof(double));
    double *own = (double *)ekv__alloc((size_t)D, sizeof(double));
    double *bonus = (double *)ekv__alloc((size_t)data->capacity, sizeof(double));
    int b, g, hh, t, d, o;
    if (!topic || !own || !bonus) {
        ekv__free(topic);
        ekv__free(own);
        ekv__free(bonus);
        return EKV_ERR_OUT_OF_MEMORY;
    }
    for (b = 0; b < data->batch; b++) {
        const int length = data->lengths[b];
        for (g = 0; g < data->kv_heads; g++) {
            float *k = data->k + ekv_data_kv_index(data, b, g, 0);
            float *v = data->v + ekv_data_kv_index(data, b, g, 0);
            ekv__random_unit(rng, topic, D);
            for (hh = 0; hh < group; hh++) {
                const int h = g * group + hh;
                float *q = data->q + ((size_t)b * (size_t)data->heads + (size_t)h) * (size_t)D;
                ekv__random_unit(rng, own, D);
                for (d = 0; d < D; d++) q[d] = (float)(qnorm * (c * topic[d] + s * own[d]));
                for (o = 0; o < data->observe; o++) {
                    float *qo = data->q_observe +
                                (((size_t)b * (size_t)data->heads + (size_t)h) *
                                     (size_t)data->observe + (size_t)o) * (size_t)D;
                    for (d = 0; d < D; d++)
                        qo[d] = (float)(rho * q[d] + rho_noise * EKV__GEN_QUERY_NORM *
                                                         ekv__normal(rng));
                }
            }
            for (t = 0; t < data->capacity; t++) {
                double extra = 0.0;
                if (t < length) {
                    int distance = length - 1 - t;
                    if (t < EKV__GEN_SINKS) extra = EKV__GEN_SINK_BONUS;
                    else if (distance < EKV__GEN_RECENT_SPAN)
                        extra = EKV__GEN_RECENT_BONUS *
                                exp(-(double)distance / EKV__GEN_RECENT_DECAY);
                    if (ekv_rng_uniform(rng->rng) < EKV__GEN_HEAVY_FRACTION) {
                        double heavy = EKV__GEN_HEAVY_BONUS_MIN +
                                       (EKV__GEN_HEAVY_BONUS_MAX - EKV__GEN_HEAVY_BONUS_MIN) *
                                           ekv_rng_uniform(rng->rng);
                        if (heavy > extra) extra = heavy;
                    }
                }
                bonus[t] = extra;
            }
            ekv__ar_rows(rng, k, data->capacity, D);
            ekv__ar_rows(rng, v, data->capacity, D);
            for (d = 0; d < D; d++) own[d] = EKV__GEN_VALUE_MEAN * ekv__normal(rng);
            for (t = 0; t < data->capacity; t++)
                for (d = 0; d < D; d++) v[(size_t)t * (size_t)D + d] += (float)own[d];
            for (t = 0; t < data->capacity; t++) {
                float *row = k + (size_t)t * (size_t)D;
                if (bonus[t] == 0.0) continue;
                for (d = 0; d < D; d++)
                    row[d] = (float)(row[d] + bonus[t] * key_gain * topic[d]);
            }
        }
    }
    ekv__free(topic);
    ekv__free(own);
    ekv__free(bonus);
    return EKV_SUCCESS;
}

static void ekv__fill_normal(ekv__normals *rng, float *values, size_t count)
{
    size_t i;
    for (i = 0; i < count; i++) values[i] = (float)ekv__normal(rng);
}

EKV_DEF ekv_result ekv_data_generate(const ekv_data_desc *desc, ekv_data *data)
{
    ekv_rng rng;
    ekv__normals normals;
    ekv_result result;
    int b, kv_heads;
    if (!desc || !data) return ekv_set_error(EKV_ERR_INVALID_ARG, "ekv_data_generate: NULL argument");
    memset(data, 0, sizeof *data);
    if (desc->kind != EKV_DATA_STRUCTURED && desc->kind != EKV_DATA_RANDOM)
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "ekv_data_generate: kind must be structured or random "
                             "(files are read by ekv_data_load)");
    if (desc->batch < 1)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "data: batch must be >= 1, got %d", desc->batch);
    if (desc->heads < 1)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "data: heads must be >= 1, got %d", desc->heads);
    kv_heads = desc->kv_heads == 0 ? desc->heads : desc->kv_heads;
    if (kv_heads < 1 || desc->heads % kv_heads != 0)
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "data: kv_heads must divide heads (%d), got %d (0 means heads)",
                             desc->heads, desc->kv_heads);
    if (desc->head_dim < 1)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "data: head_dim must be >= 1, got %d",
                             desc->head_dim);
    if (desc->seq_len < 1)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "data: seq_len must be >= 1, got %d",
                             desc->seq_len);
    if (desc->observe < 0)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "data: observe must be >= 0, got %d",
                             desc->observe);
    if (desc->lengths)
        for (b = 0; b < desc->batch; b++)
            if (desc->lengths[b] < 1 || desc->lengths[b] > desc->seq_len)
                return ekv_set_error(EKV_ERR_INVALID_ARG,
                                     "data: lengths[%d] = %d is outside [1, seq_len = %d]", b,
                                     desc->lengths[b], desc->seq_len);
    data->batch = desc->batch;
    data->heads = desc->heads;
    data->kv_heads = kv_heads;
    data->head_dim = desc->head_dim;
    data->capacity = desc->seq_len;
    data->observe = desc->observe;
    result = ekv__data_allocate(data);
    if (result != EKV_SUCCESS) return result;
    for (b = 0; b < data->batch; b++)
        data->lengths[b] = desc->lengths ? desc->lengths[b] : desc->seq_len;
    ekv_rng_seed(&rng, desc->seed);
    normals.rng = &rng;
    normals.spare = 0.0;
    normals.has_spare = 0;
    if (desc->kind == EKV_DATA_RANDOM) {
        size_t q_count = (size_t)data->batch * (size_t)data->heads * (size_t)data->head_dim;
        size_t kv_count = ekv_data_kv_index(data, data->batch, 0, 0);
        ekv__fill_normal(&normals, data->q, q_count);
        ekv__fill_normal(&normals, data->k, kv_count);
        ekv__fill_normal(&normals, data->v, kv_count);
        if (data->q_observe) ekv__fill_normal(&normals, data->q_observe, q_count * (size_t)data->observe);
        return EKV_SUCCESS;
    }
    result = ekv__generate_structured(&normals, data);
    if (result != EKV_SUCCESS) ekv_data_free(data);
    return result;
}

/* .npy ---------------------------------------------------------------------- */

#define EKV__NPY_MAX_DIMS 8

typedef struct ekv__npy_info {
    int itemsize; /* 2: <f2, 4: <f4, 8: <f8 */
    int ndim;
    int64_t shape[EKV__NPY_MAX_DIMS];
    size_t count;
    size_t data_offset;
} ekv__npy_info;

static uint32_t ekv__load_le(const unsigned char *p, int bytes)
{
    uint32_t value = 0;
    int i;
    for (i = bytes - 1; i >= 0; i--) value = (value << 8) | p[i];
    return value;
}

static uint64_t ekv__load_le64(const unsigned char *p)
{
    return (uint64_t)ekv__load_le(p, 4) | ((uint64_t)ekv__load_le(p + 4, 4) << 32);
}

static void ekv__npy_skip_space(const char **p, const char *end)
{
    while (*p < end && (**p == ' ' || **p == '\t' || **p == '\n' || **p == '\r')) (*p)++;
}

static int ekv__npy_accept(const char **p, const char *end, char c)
{
    ekv__npy_skip_space(p, end);
    if (*p < end && **p == c) {
        (*p)++;
        return 1;
    }
    return 0;
}

/* A Python string literal without escapes: '...' or "...". */
static int ekv__npy_string(const char **p, const char *end, const char **text, size_t *length)
{
    char quote;
    const char *start;
    ekv__npy_skip_space(p, end);
    if (*p >= end || (**p != '\'' && **p != '"')) return 0;
    quote = **p;
    start = ++(*p);
    while (*p < end && **p != quote) {
        if (**p == '\\' || **p == '\n') return 0;
        (*p)++;
    }
    if (*p >= end) return 0;
    *text = start;
    *length = (size_t)(*p - start);
    (*p)++;
    return 1;
}

static int ekv__npy_word(const char **p, const char *end, const char *word)
{
    size_t n = strlen(word);
    ekv__npy_skip_space(p, end);
    if ((size_t)(end - *p) >= n && memcmp(*p, word, n) == 0) {
        *p += n;
        return 1;
    }
    return 0;
}

/* The shape tuple: "()", "(3,)", "(3, 4)", "(3, 4,)"; Python 2 wrote "3L". */
static ekv_result ekv__npy_shape(const char **p, const char *end, const char *name,
                                 ekv__npy_info *info)
{
    info->ndim = 0;
    if (!ekv__npy_accept(p, end, '('))
        return ekv_set_error(EKV_ERR_FORMAT, "%s: 'shape' is not a tuple", name);
    for (;;) {
        int64_t value = 0;
        int negative = 0, digits = 0;
        if (ekv__npy_accept(p, end, ')')) return EKV_SUCCESS;
        ekv__npy_skip_space(p, end);
        if (*p < end && **p == '-') {
            negative = 1;
            (*p)++;
        }
        while (*p < end && **p >= '0' && **p <= '9') {
            int digit = **p - '0';
            if (value > (INT64_MAX - digit) / 10)
                return ekv_set_error(EKV_ERR_FORMAT, "%s: dimension %d of 'shape' overflows",
                                     name, info->ndim);
            value = value * 10 + digit;
            digits++;
            (*p)++;
        }
        if (!digits)
            return ekv_set_error(EKV_ERR_FORMAT, "%s: 'shape' holds something other than integers",
                                 name);
        if (*p < end && **p == 'L') (*p)++;
        if (negative && value != 0)
            return ekv_set_error(EKV_ERR_FORMAT, "%s: negative dimension -%lld in 'shape'", name,
                                 (long long)value);
        if (info->ndim == EKV__NPY_MAX_DIMS)
            return ekv_set_error(EKV_ERR_UNSUPPORTED,
                                 "%s: 'shape' has more than %d dimensions", name,
                                 EKV__NPY_MAX_DIMS);
        info->shape[info->ndim++] = value;
        if (ekv__npy_accept(p, end, ',')) continue;
        if (ekv__npy_accept(p, end, ')')) {
            if (info->ndim == 1)
                return ekv_set_error(EKV_ERR_FORMAT, "%s: 'shape' (n) is not a tuple; "
                                     "expected (n,)", name);
            return EKV_SUCCESS;
        }
        return ekv_set_error(EKV_ERR_FORMAT, "%s: 'shape' tuple is malformed", name);
    }
}

/* Parses the magic, the version, the header dictionary, and checks that the data that
   follows has exactly the size the shape and dtype need. */
static ekv_result ekv__npy_header(const unsigned char *bytes, size_t size, const char *name,
                                  ekv__npy_info *info)
{
    static const unsigned char magic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
    size_t header_start, header_length, needed, available;
    const char *p, *end;
    int have_descr = 0, have_order = 0, have_shape = 0, i;
    memset(info, 0, sizeof *info);
    if (size < 10 || memcmp(bytes, magic, 6) != 0) {
        if (size < 6 && memcmp(bytes, magic, size) == 0)
            return ekv_set_error(EKV_ERR_FORMAT, "%s: truncated .npy: %zu bytes, not even the "
                                 "magic string", name, size);
        if (size >= 6 && memcmp(bytes, magic, 6) == 0)
            return ekv_set_error(EKV_ERR_FORMAT, "%s: truncated .npy header (%zu bytes)", name,
                                 size);
        return ekv_set_error(EKV_ERR_FORMAT, "%s: not a .npy file (bad magic; expected "
                             "\\x93NUMPY)", name);
    }
    if ((bytes[6] != 1 && bytes[6] != 2 && bytes[6] != 3) || bytes[7] != 0)
        return ekv_set_error(EKV_ERR_UNSUPPORTED,
                             "%s: .npy format version %d.%d is not supported (1.0, 2.0, 3.0)",
                             name, bytes[6], bytes[7]);
    if (bytes[6] == 1) {
        header_start = 10;
        header_length = ekv__load_le(bytes + 8, 2);
    } else {
        if (size < 12)
            return ekv_set_error(EKV_ERR_FORMAT, "%s: truncated .npy header (%zu bytes)", name,
                                 size);
        header_start = 12;
        header_length = ekv__load_le(bytes + 8, 4);
    }
    if (header_length > size - header_start)
        return ekv_set_error(EKV_ERR_FORMAT,
                             "%s: header length %zu runs past the end of the file (%zu bytes)",
                             name, header_length, size);
    p = (const char *)bytes + header_start;
    end = p + header_length;
    if (!ekv__npy_accept(&p, end, '{'))
        return ekv_set_error(EKV_ERR_FORMAT, "%s: header is not a dictionary", name);
    while (!ekv__npy_accept(&p, end, '}')) {
        const char *key;
        size_t key_length;
        if (!ekv__npy_string(&p, end, &key, &key_length) || !ekv__npy_accept(&p, end, ':'))
            return ekv_set_error(EKV_ERR_FORMAT, "%s: malformed header dictionary", name);
        if (key_length == 5 && memcmp(key, "descr", 5) == 0) {
            const char *text;
            size_t length;
            if (!ekv__npy_string(&p, end, &text, &length))
                return ekv_set_error(EKV_ERR_UNSUPPORTED,
                                     "%s: 'descr' is not a simple dtype string (structured "
                                     "arrays are not supported)", name);
            if (length == 3 && memcmp(text, "<f4", 3) == 0) info->itemsize = 4;
            else if (length == 3 && memcmp(text, "<f2", 3) == 0) info->itemsize = 2;
            else if (length == 3 && memcmp(text, "<f8", 3) == 0) info->itemsize = 8;
            else
                return ekv_set_error(EKV_ERR_UNSUPPORTED,
                                     "%s: dtype '%.*s' is not supported (expected '<f4', "
                                     "'<f2' or '<f8')", name, (int)(length > 32 ? 32 : length),
                                     text);
            have_descr = 1;
        } else if (key_length == 13 && memcmp(key, "fortran_order", 13) == 0) {
            if (ekv__npy_word(&p, end, "True"))
                return ekv_set_error(EKV_ERR_UNSUPPORTED,
                                     "%s: fortran_order is True; only C-order arrays are "
                                     "supported (save np.ascontiguousarray(x))", name);
            if (!ekv__npy_word(&p, end, "False"))
                return ekv_set_error(EKV_ERR_FORMAT, "%s: 'fortran_order' is not True or False",
                                     name);
            have_order = 1;
        } else if (key_length == 5 && memcmp(key, "shape", 5) == 0) {
            ekv_result result = ekv__npy_shape(&p, end, name, info);
            if (result != EKV_SUCCESS) return result;
            have_shape = 1;
        } else {
            return ekv_set_error(EKV_ERR_FORMAT, "%s: unexpected key '%.*s' in the header", name,
                                 (int)(key_length > 32 ? 32 : key_length), key);
        }
        if (!ekv__npy_accept(&p, end, ',')) {
            if (!ekv__npy_accept(&p, end, '}'))
                return ekv_set_error(EKV_ERR_FORMAT, "%s: malformed header dictionary", name);
            break;
        }
    }
    ekv__npy_skip_space(&p, end);
    if (p != end)
        return ekv_set_error(EKV_ERR_FORMAT, "%s: unexpected text after the header dictionary",
                             name);
    if (!have_descr || !have_order || !have_shape)
        return ekv_set_error(EKV_ERR_FORMAT, "%s: header lacks '%s'", name,
                             !have_descr ? "descr" : !have_order ? "fortran_order" : "shape");
    info->count = 1;
    for (i = 0; i < info->ndim; i++) {
        if ((uint64_t)info->shape[i] > (uint64_t)((size_t)-1) ||
            !ekv__mul_size(info->count, (size_t)info->shape[i], &info->count))
            return ekv_set_error(EKV_ERR_FORMAT, "%s: shape is too large to address", name);
    }
    if (!ekv__mul_size(info->count, 8, &needed))
        return ekv_set_error(EKV_ERR_FORMAT, "%s: shape is too large to address", name);
    needed = info->count * (size_t)info->itemsize;
    info->data_offset = header_start + header_length;
    available = size - info->data_offset;
    if (available != needed)
        return ekv_set_error(EKV_ERR_FORMAT,
                             "%s: %s: the shape and dtype need %zu data bytes, the file has %zu",
                             name, available < needed ? "data truncated" : "data size mismatch",
                             needed, available);
    return EKV_SUCCESS;
}

/* Narrowing that is defined for every double: out of range gives +-inf. */
static float ekv__f64_to_f32(double x)
{
    if (x > FLT_MAX) return ekv__bits_f32(0x7f800000u);
    if (x < -FLT_MAX) return ekv__bits_f32(0xff800000u);
    return (float)x;
}

EKV_DEF ekv_result ekv_npy_parse(const unsigned char *bytes, size_t size, const char *name,
                                 ekv_npy_array *out)
{
    ekv__npy_info info;
    ekv_result result;
    const unsigned char *p;
    size_t i;
    int d;
    if (!out) return ekv_set_error(EKV_ERR_INVALID_ARG, "ekv_npy_parse: NULL output");
    memset(out, 0, sizeof *out);
    if (!name) name = "(memory)";
    if (!bytes && size > 0)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "ekv_npy_parse: %s: NULL bytes", name);
    if (!bytes) bytes = (const unsigned char *)"";
    result = ekv__npy_header(bytes, size, name, &info);
    if (result != EKV_SUCCESS) return result;
    out->values = (float *)ekv__alloc(info.count, sizeof(float));
    if (!out->values) return EKV_ERR_OUT_OF_MEMORY;
    out->ndim = info.ndim;
    for (d = 0; d < info.ndim; d++) out->shape[d] = info.shape[d];
    p = bytes + info.data_offset;
    for (i = 0; i < info.count; i++) {
        if (info.itemsize == 4) {
            out->values[i] = ekv__bits_f32(ekv__load_le(p + 4 * i, 4));
        } else if (info.itemsize == 2) {
            out->values[i] = ekv_f16_to_f32((uint16_t)ekv__load_le(p + 2 * i, 2));
        } else {
            uint64_t bits = ekv__load_le64(p + 8 * i);
            double x;
            memcpy(&x, &bits, sizeof x);
            out->values[i] = ekv__f64_to_f32(x);
        }
    }
    return EKV_SUCCESS;
}

EKV_DEF void ekv_npy_free(ekv_npy_array *array)
{
    if (!array) return;
    ekv__free(array->values);
    memset(array, 0, sizeof *array);
}

/* Reads a whole file into memory. */
static ekv_result ekv__read_file(const char *path, unsigned char **bytes, size_t *size)
{
    FILE *file;
    unsigned char *buffer = NULL;
    size_t length = 0, capacity = 0;
    *bytes = NULL;
    *size = 0;
    file = fopen(path, "rb");
    if (!file) return ekv_set_error(EKV_ERR_IO, "%s: cannot open for reading", path);
    for (;;) {
        size_t got;
        if (length == capacity) {
            size_t grown = capacity ? capacity * 2 : 65536;
            unsigned char *next;
            if (grown < capacity) {
                fclose(file);
                ekv__free(buffer);
                return ekv_set_error(EKV_ERR_OUT_OF_MEMORY, "%s: file too large", path);
            }
            next = (unsigned char *)EKV_REALLOC(buffer, grown);
            if (!next) {
                fclose(file);
                ekv__free(buffer);
                return ekv_set_error(EKV_ERR_OUT_OF_MEMORY,
                                     "%s: out of host memory reading the file", path);
            }
            buffer = next;
            capacity = grown;
        }
        got = fread(buffer + length, 1, capacity - length, file);
        length += got;
        if (got == 0) break;
    }
    if (ferror(file)) {
        fclose(file);
        ekv__free(buffer);
        return ekv_set_error(EKV_ERR_IO, "%s: read error (is it a directory?)", path);
    }
    fclose(file);
    *bytes = buffer;
    *size = length;
    return EKV_SUCCESS;
}

EKV_DEF ekv_result ekv_npy_read(const char *path, ekv_npy_array *out)
{
    unsigned char *bytes;
    size_t size;
    ekv_result result;
    if (!out) return ekv_set_error(EKV_ERR_INVALID_ARG, "ekv_npy_read: NULL output");
    memset(out, 0, sizeof *out);
    if (!path) return ekv_set_error(EKV_ERR_INVALID_ARG, "ekv_npy_read: NULL path");
    result = ekv__read_file(path, &bytes, &size);
    if (result != EKV_SUCCESS) return result;
    result = ekv_npy_parse(bytes, size, path, out);
    ekv__free(bytes);
    return result;
}

/* Writes the numpy 1.0 header (padded with spaces to a multiple of 64 bytes, ending in
   '\n', as numpy does) and the little-endian data. */
static ekv_result ekv__npy_write(const char *path, const void *values, int itemsize, int ndim,
                                 const int64_t *shape)
{
    char header[512], dims[256];
    size_t count = 1, used = 0, header_length, total, i;
    unsigned char prefix[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, 0, 0};
    unsigned char chunk[4096];
    FILE *file;
    int d, failed;
    if (!path) return ekv_set_error(EKV_ERR_INVALID_ARG, "ekv_npy_write: NULL path");
    if (ndim < 0 || ndim > EKV__NPY_MAX_DIMS || (ndim > 0 && !shape))
        return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: ndim must be in [0, %d] with a shape, got %d",
                             path, EKV__NPY_MAX_DIMS, ndim);
    dims[0] = '\0';
    for (d = 0; d < ndim; d++) {
        if (shape[d] < 0 || (uint64_t)shape[d] > (uint64_t)((size_t)-1) ||
            !ekv__mul_size(count, (size_t)shape[d], &count))
            return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: bad dimension %lld at index %d", path,
                                 (long long)shape[d], d);
        used += (size_t)snprintf(dims + used, sizeof dims - used, d + 1 < ndim || ndim == 1 ?
                                 "%lld," : "%lld", (long long)shape[d]);
        if (d + 1 < ndim) used += (size_t)snprintf(dims + used, sizeof dims - used, " ");
    }
    if (!ekv__mul_size(count, (size_t)itemsize, &total))
        return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: array too large", path);
    if (count > 0 && !values) return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: NULL values", path);
    header_length = (size_t)snprintf(header, sizeof header,
                                     "{'descr': '<f%d', 'fortran_order': False, 'shape': (%s), }",
                                     itemsize, dims);
    while ((10 + header_length + 1) % 64 != 0) header[header_length++] = ' ';
    header[header_length++] = '\n';
    prefix[8] = (unsigned char)(header_length & 0xff);
    prefix[9] = (unsigned char)(header_length >> 8);
    file = fopen(path, "wb");
    if (!file) return ekv_set_error(EKV_ERR_IO, "%s: cannot open for writing", path);
    failed = fwrite(prefix, 1, 10, file) != 10 ||
             fwrite(header, 1, header_length, file) != header_length;
    for (i = 0; i < count && !failed;) {
        size_t n = 0;
        while (i < count && n + (size_t)itemsize <= sizeof chunk) {
            uint64_t bits;
            int byte;
            if (itemsize == 4) {
                uint32_t b32;
                memcpy(&b32, (const float *)values + i, 4);
                bits = b32;
            } else {
                memcpy(&bits, (const double *)values + i, 8);
            }
            for (byte = 0; byte < itemsize; byte++) chunk[n++] = (unsigned char)(bits >> (8 * byte));
            i++;
        }
        failed = fwrite(chunk, 1, n, file) != n;
    }
    if (fclose(file) != 0) failed = 1;
    if (failed) return ekv_set_error(EKV_ERR_IO, "%s: write error", path);
    return EKV_SUCCESS;
}

EKV_DEF ekv_result ekv_npy_write(const char *path, const float *values, int ndim,
                                 const int64_t *shape)
{
    return ekv__npy_write(path, values, 4, ndim, shape);
}

EKV_DEF ekv_result ekv_npy_write_f64(const char *path, const double *values, int ndim,
                                     const int64_t *shape)
{
    return ekv__npy_write(path, values, 8, ndim, shape);
}

/* .npz ---------------------------------------------------------------------- */

/* A .npz is a zip archive of .npy members. np.savez stores them (method 0) and we read
   those through the central directory, zip64 included (numpy forces zip64 local headers);
   np.savez_compressed deflates them, which would need zlib: refused with a clear error. */

static void ekv__crc32_table(uint32_t table[256])
{
    uint32_t i, bit;
    for (i = 0; i < 256; i++) {
        uint32_t c = i;
        for (bit = 0; bit < 8; bit++) c = (c & 1u) ? 0xedb88320u ^ (c >> 1) : c >> 1;
        table[i] = c;
    }
}

static uint32_t ekv__crc32(const uint32_t table[256], const unsigned char *p, size_t n)
{
    uint32_t crc = 0xffffffffu;
    size_t i;
    for (i = 0; i < n; i++) crc = table[(crc ^ p[i]) & 0xffu] ^ (crc >> 8);
    return crc ^ 0xffffffffu;
}

/* Is [offset, offset + length) inside [0, size)? */
static int ekv__in_bounds(size_t size, uint64_t offset, uint64_t length)
{
    return offset <= size && length <= size - offset;
}

typedef struct ekv__zip {
    const unsigned char *bytes;
    size_t size;
    const char *name;
    uint64_t directory_offset, directory_size, entries;
    uint32_t crc_table[256];
} ekv__zip;

static ekv_result ekv__zip_open(ekv__zip *zip, const unsigned char *bytes, size_t size,
                                const char *name)
{
    size_t position, lowest;
    int found = 0;
    memset(zip, 0, sizeof *zip);
    zip->bytes = bytes;
    zip->size = size;
    zip->name = name;
    if (size < 22) return ekv_set_error(EKV_ERR_FORMAT, "%s: truncated .npz (%zu bytes)", name, size);
    /* the end-of-central-directory record: the last one whose comment ends the file */
    lowest = size - 22 > 65535 ? size - 22 - 65535 : 0;
    for (position = size - 22 + 1; position-- > lowest;) {
        if (ekv__load_le(bytes + position, 4) == 0x06054b50u &&
            position + 22 + ekv__load_le(bytes + position + 20, 2) == size) {
            found = 1;
            break;
        }
    }
    if (!found)
        return ekv_set_error(EKV_ERR_FORMAT, "%s: not a zip archive (no end of central directory)",
                             name);
    zip->entries = ekv__load_le(bytes + position + 10, 2);
    zip->directory_size = ekv__load_le(bytes + position + 12, 4);
    zip->directory_offset = ekv__load_le(bytes + position + 16, 4);
    if (zip->entries == 0xffffu || zip->directory_size == 0xffffffffu ||
        zip->directory_offset == 0xffffffffu) {
        uint64_t record;
        if (position < 20 || ekv__load_le(bytes + position - 20, 4) != 0x07064b50u)
            return ekv_set_error(EKV_ERR_FORMAT, "%s: zip64 end-of-directory locator missing", name);
        record = ekv__load_le64(bytes + position - 20 + 8);
        if (!ekv__in_bounds(size, record, 56) || ekv__load_le(bytes + record, 4) != 0x06064b50u)
            return ekv_set_error(EKV_ERR_FORMAT, "%s: zip64 end-of-directory record is invalid",
                                 name);
        zip->entries = ekv__load_le64(bytes + record + 32);
        zip->directory_size = ekv__load_le64(bytes + record + 40);
        zip->directory_offset = ekv__load_le64(bytes + record + 48);
    }
    if (!ekv__in_bounds(size, zip->directory_offset, zip->directory_size))
        return ekv_set_error(EKV_ERR_FORMAT, "%s: central directory lies outside the file", name);
    ekv__crc32_table(zip->crc_table);
    return EKV_SUCCESS;
}

/* Finds a member by name; *member = NULL when absent. */
static ekv_result ekv__zip_member(const ekv__zip *zip, const char *member_name,
                                  const unsigned char **member, size_t *member_size)
{
    const unsigned char *z = zip->bytes;
    uint64_t offset = zip->directory_offset, end = zip->directory_offset + zip->directory_size;
    uint64_t entry;
    size_t want = strlen(member_name);
    *member = NULL;
    *member_size = 0;
    for (entry = 0; entry < zip->entries; entry++) {
        uint32_t flags, method, crc, name_length, extra_length, comment_length;
        uint64_t compressed, uncompressed, local, data;
        if (offset > end || end - offset < 46 || ekv__load_le(z + offset, 4) != 0x02014b50u)
            return ekv_set_error(EKV_ERR_FORMAT, "%s: central directory entry %llu is invalid",
                                 zip->name, (unsigned long long)entry);
        flags = ekv__load_le(z + offset + 8, 2);
        method = ekv__load_le(z + offset + 10, 2);
        crc = ekv__load_le(z + offset + 16, 4);
        compressed = ekv__load_le(z + offset + 20, 4);
        uncompressed = ekv__load_le(z + offset + 24, 4);
        name_length = ekv__load_le(z + offset + 28, 2);
        extra_length = ekv__load_le(z + offset + 30, 2);
        comment_length = ekv__load_le(z + offset + 32, 2);
        local = ekv__load_le(z + offset + 42, 4);
        if (end - offset - 46 < (uint64_t)name_length + extra_length + comment_length)
            return ekv_set_error(EKV_ERR_FORMAT, "%s: central directory entry %llu is truncated",
                                 zip->name, (unsigned long long)entry);
        if (name_length != want || memcmp(z + offset + 46, member_name, want) != 0) {
            offset += 46 + (uint64_t)name_length + extra_length + comment_length;
            continue;
        }
        if (compressed == 0xffffffffu || uncompressed == 0xffffffffu || local == 0xffffffffu) {
            /* zip64 extended information: the 8-byte values present are those whose
               32-bit fields are saturated, in the order uncompressed, compressed, local */
            const unsigned char *extra = z + offset + 46 + name_length;
            uint32_t at = 0;
            int done = 0;
            while (!done && at + 4 <= extra_length) {
                uint32_t id = ekv__load_le(extra + at, 2), length = ekv__load_le(extra + at + 2, 2);
                uint32_t field = at + 4;
                if (length > extra_length - at - 4) break;
                if (id == 1) {
                    uint64_t *targets[3];
                    int count = 0, i;
                    if (uncompressed == 0xffffffffu) targets[count++] = &uncompressed;
                    if (compressed == 0xffffffffu) targets[count++] = &compressed;
                    if (local == 0xffffffffu) targets[count++] = &local;
                    if (length < 8u * (uint32_t)count)
                        return ekv_set_error(EKV_ERR_FORMAT, "%s: member %s: zip64 field too short",
                                             zip->name, member_name);
                    for (i = 0; i < count; i++) *targets[i] = ekv__load_le64(extra + field + 8 * i);
                    done = 1;
                }
                at += 4 + length;
            }
            if (!done)
                return ekv_set_error(EKV_ERR_FORMAT, "%s: member %s: zip64 sizes missing",
                                     zip->name, member_name);
        }
        if (flags & 1u)
            return ekv_set_error(EKV_ERR_UNSUPPORTED, "%s: member %s is encrypted", zip->name,
                                 member_name);
        if (method == 8)
            return ekv_set_error(EKV_ERR_UNSUPPORTED,
                                 "%s: member %s: compressed .npz not supported; use np.savez "
                                 "(not np.savez_compressed)", zip->name, member_name);
        if (method != 0)
            return ekv_set_error(EKV_ERR_UNSUPPORTED,
                                 "%s: member %s uses zip method %u; only stored members (np.savez) "
                                 "are supported", zip->name, member_name, (unsigned)method);
        if (compressed != uncompressed)
            return ekv_set_error(EKV_ERR_FORMAT, "%s: member %s is stored but its sizes differ",
                                 zip->name, member_name);
        if (!ekv__in_bounds(zip->size, local, 30) || ekv__load_le(z + local, 4) != 0x04034b50u)
            return ekv_set_error(EKV_ERR_FORMAT, "%s: member %s: local header is invalid",
                                 zip->name, member_name);
        data = local + 30 + ekv__load_le(z + local + 26, 2) + ekv__load_le(z + local + 28, 2);
        if (!ekv__in_bounds(zip->size, data, compressed))
            return ekv_set_error(EKV_ERR_FORMAT, "%s: member %s runs past the end of the file",
                                 zip->name, member_name);
        if (ekv__crc32(zip->crc_table, z + data, (size_t)compressed) != crc)
            return ekv_set_error(EKV_ERR_FORMAT, "%s: member %s: CRC-32 mismatch (corrupt file)",
                                 zip->name, member_name);
        *member = z + data;
        *member_size = (size_t)compressed;
        return EKV_SUCCESS;
    }
    return EKV_SUCCESS;
}

/* "[b][h][t][d]": the C-order index of element `flat` of an array of this shape. */
static void ekv__index_text(char *out, size_t size, size_t flat, int ndim, const int64_t *shape)
{
    size_t index[8], used = 0;
    int d;
    for (d = ndim - 1; d >= 0; d--) {
        index[d] = shape[d] > 0 ? flat % (size_t)shape[d] : 0;
        flat = shape[d] > 0 ? flat / (size_t)shape[d] : 0;
    }
    out[0] = '\0';
    for (d = 0; d < ndim && used < size; d++)
        used += (size_t)snprintf(out + used, size - used, "[%zu]", index[d]);
}

/* NaN or an infinity in `values` [count]: the error names `source`, the tensor and the
   index of the first one. */
static ekv_result ekv__check_finite(ekv_result code, const char *source, const char *tensor,
                                    const float *values, int ndim, const int64_t *shape)
{
    size_t count = 1, i;
    int d;
    for (d = 0; d < ndim; d++) count *= (size_t)shape[d];
    for (i = 0; values && i < count; i++) {
        /* false for NaN and for +-inf alike */
        if (!(fabsf(values[i]) <= FLT_MAX)) {
            char index[96];
            ekv__index_text(index, sizeof index, i, ndim, shape);
            return ekv_set_error(code, "%s%s%s%s is %s: q, k, v and q_observe must be finite",
                                 source, source[0] ? ": " : "", tensor, index,
                                 values[i] != values[i] ? "NaN" : values[i] > 0 ? "inf" : "-inf");
        }
    }
    return EKV_SUCCESS;
}

/* Checks the shapes of the loaded arrays and moves them into `data`. q_observe may be
   absent (values NULL): with observe > 0 every observed query is then a copy of q. With
   more observed queries in the file than `observe`, the last `observe` are kept. */
static ekv_result ekv__data_from_arrays(ekv_npy_array *arrays, int observe, const char *name,
                                        ekv_data *data)
{
    ekv_npy_array *q = &arrays[0], *k = &arrays[1], *v = &arrays[2], *qo = &arrays[3];
    int64_t B, H, Hkv, S, D, O = 0;
    int i;
    if (q->ndim != 3)
        return ekv_set_error(EKV_ERR_FORMAT, "%s: q must have 3 dimensions [B,H,D], has %d", name,
                             q->ndim);
    if (k->ndim != 4)
        return ekv_set_error(EKV_ERR_FORMAT, "%s: k must have 4 dimensions [B,H_kv,S,D], has %d",
                             name, k->ndim);
    for (i = 0; i < 4; i++)
        if (v->ndim != 4 || v->shape[i] != k->shape[i])
            return ekv_set_error(EKV_ERR_FORMAT, "%s: v must have the shape of k", name);
    B = q->shape[0];
    H = q->shape[1];
    D = q->shape[2];
    Hkv = k->shape[1];
    S = k->shape[2];
    if (k->shape[0] != B)
        return ekv_set_error(EKV_ERR_FORMAT, "%s: batch of k (%lld) differs from q (%lld)", name,
                             (long long)k->shape[0], (long long)B);
    if (k->shape[3] != D)
        return ekv_set_error(EKV_ERR_FORMAT, "%s: head_dim of k (%lld) differs from q (%lld)",
                             name, (long long)k->shape[3], (long long)D);
    if (B < 1 || H < 1 || D < 1 || S < 1 || Hkv < 1 || B > INT_MAX || H > INT_MAX ||
        D > INT_MAX || S > INT_MAX || Hkv > INT_MAX)
        return ekv_set_error(EKV_ERR_FORMAT, "%s: every dimension must be in [1, %d]", name,
                             INT_MAX);
    if (H % Hkv != 0)
        return ekv_set_error(EKV_ERR_FORMAT, "%s: kv heads of k (%lld) do not divide heads of q "
                             "(%lld)", name, (long long)Hkv, (long long)H);
    if (qo->values) {
        if (qo->ndim != 4 || qo->shape[0] != B || qo->shape[1] != H || qo->shape[3] != D)
            return ekv_set_error(EKV_ERR_FORMAT, "%s: q_observe must have shape [B,H,O,D] = "
                                 "[%lld,%lld,O,%lld]", name, (long long)B, (long long)H,
                                 (long long)D);
        O = qo->shape[2];
        if (O > INT_MAX)
            return ekv_set_error(EKV_ERR_FORMAT, "%s: q_observe has too many queries", name);
    }
    for (i = 0; i < 4; i++) {
        static const char *const tensors[4] = {"q", "k", "v", "q_observe"};
        ekv_result r = ekv__check_finite(EKV_ERR_FORMAT, name, tensors[i], arrays[i].values,
                                         arrays[i].ndim, arrays[i].shape);
        if (r != EKV_SUCCESS) return r;
    }
    memset(data, 0, sizeof *data);
    data->batch = (int)B;
    data->heads = (int)H;
    data->kv_heads = (int)Hkv;
    data->head_dim = (int)D;
    data->capacity = (int)S;
    data->observe = observe <= 0 ? 0 : (qo->values && O > 0 && O < observe) ? (int)O : observe;
    data->lengths = (int *)ekv__alloc((size_t)B, sizeof(int));
    if (!data->lengths) return EKV_ERR_OUT_OF_MEMORY;
    if (data->observe > 0) {
        size_t bh, o, row = (size_t)D * sizeof(float);
        data->q_observe = (float *)ekv__alloc((size_t)B * (size_t)H * (size_t)data->observe,
                                              (size_t)D * sizeof(float));
        if (!data->q_observe) {
            ekv_data_free(data);
            return EKV_ERR_OUT_OF_MEMORY;
        }
        for (bh = 0; bh < (size_t)(B * H); bh++)
            for (o = 0; o < (size_t)data->observe; o++) {
                const float *source = qo->values && O > 0
                    ? qo->values + (bh * (size_t)O + (size_t)O - (size_t)data->observe + o) *
                                       (size_t)D
                    : q->values + bh * (size_t)D;
                memcpy(data->q_observe + (bh * (size_t)data->observe + o) * (size_t)D, source, row);
            }
    }
    for (i = 0; i < data->batch; i++) data->lengths[i] = (int)S;
    data->q = q->values;
    data->k = k->values;
    data->v = v->values;
    q->values = k->values = v->values = NULL;
    return EKV_SUCCESS;
}

static const char *const ekv__data_members[4] = {"q.npy", "k.npy", "v.npy", "q_observe.npy"};

EKV_DEF ekv_result ekv_data_load_npz_memory(const unsigned char *bytes, size_t size,
                                            const char *name, int observe, ekv_data *data)
{
    ekv__zip zip;
    ekv_npy_array arrays[4];
    ekv_result result;
    int i;
    memset(arrays, 0, sizeof arrays);
    memset(data, 0, sizeof *data);
    result = ekv__zip_open(&zip, bytes, size, name);
    for (i = 0; i < 4 && result == EKV_SUCCESS; i++) {
        const unsigned char *member;
        size_t member_size;
        char member_label[EKV_PATH_MAX + 32];
        result = ekv__zip_member(&zip, ekv__data_members[i], &member, &member_size);
        if (result != EKV_SUCCESS) break;
        if (!member) {
            if (i < 3)
                result = ekv_set_error(EKV_ERR_FORMAT, "%s: the archive has no member %s "
                                       "(expected q, k, v and optionally q_observe)", name,
                                       ekv__data_members[i]);
            continue;
        }
        snprintf(member_label, sizeof member_label, "%.1000s:%.20s", name, ekv__data_members[i]);
        result = ekv_npy_parse(member, member_size, member_label, &arrays[i]);
    }
    if (result == EKV_SUCCESS) result = ekv__data_from_arrays(arrays, observe, name, data);
    for (i = 0; i < 4; i++) ekv_npy_free(&arrays[i]);
    return result;
}

EKV_DEF ekv_result ekv_data_load(const char *path, int observe, ekv_data *data)
{
    char member_path[EKV_PATH_MAX + 32];
    ekv_npy_array arrays[4];
    ekv_result result = EKV_SUCCESS;
    FILE *probe;
    int i;
    if (!data) return ekv_set_error(EKV_ERR_INVALID_ARG, "ekv_data_load: NULL output");
    memset(data, 0, sizeof *data);
    if (!path || !*path) return ekv_set_error(EKV_ERR_INVALID_ARG, "ekv_data_load: empty path");
    if (strlen(path) >= EKV_PATH_MAX)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "ekv_data_load: path longer than %d bytes",
                             EKV_PATH_MAX - 1);
    snprintf(member_path, sizeof member_path, "%s/q.npy", path);
    probe = fopen(member_path, "rb");
    if (!probe) {
        unsigned char *bytes;
        size_t size;
        result = ekv__read_file(path, &bytes, &size);
        if (result != EKV_SUCCESS) return result;
        if (size >= 6 && memcmp(bytes, "\x93NUMPY", 6) == 0)
            result = ekv_set_error(EKV_ERR_FORMAT, "%s: a single .npy cannot hold q, k and v; "
                                   "give a .npz (np.savez) or a directory of q.npy, k.npy, v.npy",
                                   path);
        else if (size < 4 || bytes[0] != 'P' || bytes[1] != 'K')
            result = ekv_set_error(EKV_ERR_FORMAT, "%s: not a .npz archive or a directory holding "
                                   "q.npy, k.npy and v.npy", path);
        else
            result = ekv_data_load_npz_memory(bytes, size, path, observe, data);
        ekv__free(bytes);
        return result;
    }
    fclose(probe);
    memset(arrays, 0, sizeof arrays);
    for (i = 0; i < 4 && result == EKV_SUCCESS; i++) {
        snprintf(member_path, sizeof member_path, "%s/%s", path, ekv__data_members[i]);
        if (i == 3) {
            probe = fopen(member_path, "rb");
            if (!probe) break;
            fclose(probe);
        }
        result = ekv_npy_read(member_path, &arrays[i]);
    }
    if (result == EKV_SUCCESS) result = ekv__data_from_arrays(arrays, observe, path, data);
    for (i = 0; i < 4; i++) ekv_npy_free(&arrays[i]);
    return result;
}

EKV_DEF ekv_result ekv_data_check(const ekv_data *data, double softmax_scale)
{
    const char *fn = "ekv_data_check";
    int64_t q_shape[3], kv_shape[4], observe_shape[4];
    double scale, gain;
    int b, g, h, t, d, group;
    ekv_result r;
    if (!data || !data->q || !data->k || !data->v || !data->lengths || data->batch < 1 ||
        data->heads < 1 || data->kv_heads < 1 || data->head_dim < 1 || data->capacity < 1 ||
        data->heads % data->kv_heads != 0)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: data is NULL or has bad dimensions", fn);
    if (softmax_scale != softmax_scale || fabs(softmax_scale) > DBL_MAX)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: softmax_scale must be finite", fn);
    q_shape[0] = kv_shape[0] = observe_shape[0] = data->batch;
    q_shape[1] = observe_shape[1] = data->heads;
    q_shape[2] = kv_shape[3] = observe_shape[3] = data->head_dim;
    kv_shape[1] = data->kv_heads;
    kv_shape[2] = data->capacity;
    observe_shape[2] = data->observe;
    if ((r = ekv__check_finite(EKV_ERR_INVALID_ARG, "", "q", data->q, 3, q_shape)) != EKV_SUCCESS ||
        (r = ekv__check_finite(EKV_ERR_INVALID_ARG, "", "k", data->k, 4, kv_shape)) != EKV_SUCCESS ||
        (r = ekv__check_finite(EKV_ERR_INVALID_ARG, "", "v", data->v, 4, kv_shape)) != EKV_SUCCESS)
        return r;
    if (data->observe > 0 &&
        (r = ekv__check_finite(EKV_ERR_INVALID_ARG, "", "q_observe", data->q_observe, 4,
                               observe_shape)) != EKV_SUCCESS)
        return r;
    scale = ekv_softmax_scale(softmax_scale, data->head_dim);
    gain = fabs(scale) > 1.0 ? fabs(scale) : 1.0;
    group = data->heads / data->kv_heads;
    /* per (sequence, kv head): the pairs a kernel forms are a query head of the group
       with a token of the sequence, and the tokens' values summed together */
    for (b = 0; b < data->batch; b++) {
        for (g = 0; g < data->kv_heads; g++) {
            double q_norm = 0.0, k_norm = 0.0, v_max = 0.0, v_value = 0.0;
            int q_head = g * group, k_token = 0, v_token = 0, v_dim = 0;
            for (h = g * group; h < (g + 1) * group; h++) {
                const float *q = data->q + ((size_t)b * (size_t)data->heads + (size_t)h) *
                                               (size_t)data->head_dim;
                double n2 = 0.0;
                for (d = 0; d < data->head_dim; d++) n2 += (double)q[d] * (double)q[d];
                if (sqrt(n2) > q_norm) {
                    q_norm = sqrt(n2);
                    q_head = h;
                }
            }
            for (t = 0; t < data->lengths[b]; t++) {
                const float *k = data->k + ekv_data_kv_index(data, b, g, t);
                const float *v = data->v + ekv_data_kv_index(data, b, g, t);
                double n2 = 0.0;
                for (d = 0; d < data->head_dim; d++) {
                    n2 += (double)k[d] * (double)k[d];
                    if (fabs((double)v[d]) > v_max) {
                        v_max = fabs((double)v[d]);
                        v_value = v[d];
                        v_token = t;
                        v_dim = d;
                    }
                }
                if (sqrt(n2) > k_norm) {
                    k_norm = sqrt(n2);
                    k_token = t;
                }
            }
            if (gain * q_norm * k_norm > EKV_DATA_FLOAT_LIMIT)
                return ekv_set_error(EKV_ERR_INVALID_ARG,
                                     "q[%d][%d] and k[%d][%d][%d]: max(1, softmax scale %.3g) x "
                                     "|q| %.3g x |k| %.3g = %.3g exceeds %.3g, beyond float "
                                     "arithmetic (the kernels' logits would overflow)",
                                     b, q_head, b, g, k_token, scale, q_norm, k_norm,
                                     gain * q_norm * k_norm, EKV_DATA_FLOAT_LIMIT);
            if ((double)data->lengths[b] * v_max > EKV_DATA_FLOAT_LIMIT)
                return ekv_set_error(EKV_ERR_INVALID_ARG,
                                     "v[%d][%d][%d][%d] = %.3g: %d tokens x |v| = %.3g exceeds "
                                     "%.3g, beyond float arithmetic (the kernels' weighted sum "
                                     "of values would overflow)",
                                     b, g, v_token, v_dim, v_value, data->lengths[b],
                                     (double)data->lengths[b] * v_max, EKV_DATA_FLOAT_LIMIT);
        }
    }
    return EKV_SUCCESS;
}

/* >>cache: policies, building the stored cache ============================== */

EKV_DEF int ekv_compress_desc_valid(const ekv_compress_desc *desc)
{
    return desc && (int)desc->policy >= 0 && desc->policy < EKV_POLICY_COUNT &&
           desc->compression >= 1 && desc->recent >= 0 && desc->sinks >= 0 &&
           !(desc->policy == EKV_POLICY_NONE && desc->compression != 1);
}

EKV_DEF int ekv_policy_kept(const ekv_compress_desc *desc, int length)
{
    int recent, old;
    if (!ekv_compress_desc_valid(desc) || length < 0) return -1;
    recent = desc->recent < length ? desc->recent : length;
    old = length - recent;
    return old / desc->compression + (old % desc->compression != 0) + recent;
}

EKV_DEF int ekv_policy_has_bias(const ekv_compress_desc *desc)
{
    return desc && desc->policy == EKV_POLICY_POOL && desc->compression > 1;
}

typedef struct ekv__ranked {
    double score;
    int token;
} ekv__ranked;

/* Highest score first, NaN last, ties to the older token. */
static int ekv__compare_ranked(const void *a, const void *b)
{
    const ekv__ranked *x = (const ekv__ranked *)a, *y = (const ekv__ranked *)b;
    int x_nan = x->score != x->score, y_nan = y->score != y->score;
    if (x_nan != y_nan) return x_nan - y_nan;
    if (!x_nan && x->score != y->score) return x->score > y->score ? -1 : 1;
    return (x->token > y->token) - (x->token < y->token);
}

EKV_DEF int ekv_policy_map(const ekv_compress_desc *desc, int length, const double *scores,
                           ekv_slot_source *slots)
{
    int kept = ekv_policy_kept(desc, length), recent, old, budget, sinks, count = 0, t;
    const int C = desc ? desc->compression : 1;
    if (kept < 0 || !slots) return -1;
    recent = desc->recent < length ? desc->recent : length;
    old = length - recent;
    budget = kept - recent;
    sinks = desc->sinks < budget ? desc->sinks : budget;
    switch (desc->policy) {
    case EKV_POLICY_NONE:
    case EKV_POLICY_STRIDE:
        for (t = old > 0 ? (old - 1) % C : 0; t < old; t += C) {
            slots[count].first = t;
            slots[count++].count = 1;
        }
        break;
    case EKV_POLICY_POOL:
        for (t = 0; t < old; t += C) {
            slots[count].first = t;
            slots[count++].count = old - t < C ? old - t : C;
        }
        break;
    case EKV_POLICY_WINDOW:
        for (t = 0; t < sinks; t++) {
            slots[count].first = t;
            slots[count++].count = 1;
        }
        for (t = old - (budget - sinks); t < old; t++) {
            slots[count].first = t;
            slots[count++].count = 1;
        }
        break;
    case EKV_POLICY_TOPK: {
        ekv__ranked *ranked;
        unsigned char *chosen;
        int candidates = old - sinks, i;
        if (!scores) {
            ekv_set_error(EKV_ERR_INVALID_ARG, "ekv_policy_map: topk needs scores");
            return -1;
        }
        ranked = (ekv__ranked *)ekv__alloc((size_t)(candidates > 0 ? candidates : 1),
                                           sizeof(ekv__ranked));
        chosen = (unsigned char *)ekv__alloc((size_t)(old > 0 ? old : 1), 1);
        if (!ranked || !chosen) {
            ekv__free(ranked);
            ekv__free(chosen);
            return -1;
        }
        for (i = 0; i < candidates; i++) {
            ranked[i].token = sinks + i;
            ranked[i].score = scores[sinks + i];
        }
        if (candidates > 1) qsort(ranked, (size_t)candidates, sizeof *ranked, ekv__compare_ranked);
        for (t = 0; t < sinks; t++) chosen[t] = 1;
        for (i = 0; i < budget - sinks; i++) chosen[ranked[i].token] = 1;
        for (t = 0; t < old; t++)
            if (chosen[t]) {
                slots[count].first = t;
                slots[count++].count = 1;
            }
        ekv__free(ranked);
        ekv__free(chosen);
        break;
    }
    default:
        return -1;
    }
    for (t = old; t < length; t++) {
        slots[count].first = t;
        slots[count++].count = 1;
    }
    return count;
}

EKV_DEF void ekv_cache_free(ekv_host_cache *cache)
{
    if (!cache) return;
    ekv__free(cache->lengths);
    ekv__free(cache->k);
    ekv__free(cache->v);
    ekv__free(cache->k_scales);
    ekv__free(cache->v_scales);
    ekv__free(cache->bias);
    ekv__free(cache->compressed);
    memset(cache, 0, sizeof *cache);
}

/* Row `slot` of (b, h) in K (which = 0) or V; scale pointers per the layout. */
static const unsigned char *ekv__cache_values(const ekv_host_cache *cache, int which, int b,
                                              int h, int slot)
{
    size_t row = ((size_t)b * (size_t)cache->kv_heads + (size_t)h) * (size_t)cache->capacity +
                 (size_t)slot;
    return (which ? cache->v : cache->k) + row * ekv_dtype_row_bytes(cache->dtype, cache->head_dim);
}

static const unsigned char *ekv__cache_row_scale(const ekv_host_cache *cache, int which, int b,
                                                 int h, int slot)
{
    size_t row = ((size_t)b * (size_t)cache->kv_heads + (size_t)h) * (size_t)cache->capacity +
                 (size_t)slot;
    const unsigned char *scales = which ? cache->v_scales : cache->k_scales;
    if (cache->dtype != EKV_DTYPE_INT8 && cache->dtype != EKV_DTYPE_INT4) return NULL;
    return scales + row * ekv_dtype_row_scale_bytes(cache->dtype, cache->head_dim);
}

static float ekv__cache_head_scale(const ekv_host_cache *cache, int which, int b, int h)
{
    float scale = 0.0f;
    if (cache->dtype == EKV_DTYPE_FP8)
        memcpy(&scale, (which ? cache->v_scales : cache->k_scales) +
                           ((size_t)b * (size_t)cache->kv_heads + (size_t)h) * sizeof(float),
               sizeof scale);
    return scale;
}

EKV_DEF void ekv_cache_row(const ekv_host_cache *cache, int which, int b, int h, int slot,
                           float *out)
{
    if (!cache || !out || b < 0 || b >= cache->batch || h < 0 || h >= cache->kv_heads ||
        slot < 0 || slot >= cache->capacity)
        return;
    ekv_dequantize_row(cache->dtype, ekv__cache_values(cache, which, b, h, slot),
                       ekv__cache_row_scale(cache, which, b, h, slot), cache->head_dim,
                       ekv__cache_head_scale(cache, which, b, h), out);
}

/* The f32 row a slot holds: the token's row, or the mean of a pooled group (in double,
   then rounded once to float). */
static void ekv__slot_row(const float *rows, int head_dim, ekv_slot_source source,
                          double *sum, float *out)
{
    int d, t;
    if (source.count == 1) {
        memcpy(out, rows + (size_t)source.first * (size_t)head_dim, (size_t)head_dim * sizeof(float));
        return;
    }
    for (d = 0; d < head_dim; d++) sum[d] = 0.0;
    for (t = source.first; t < source.first + source.count; t++) {
        const float *row = rows + (size_t)t * (size_t)head_dim;
        for (d = 0; d < head_dim; d++) sum[d] += row[d];
    }
    for (d = 0; d < head_dim; d++) out[d] = (float)(sum[d] / source.count);
}

static ekv_result ekv__check_data(const ekv_data *data, const char *function)
{
    int b;
    if (!data || !data->q || !data->k || !data->v || !data->lengths)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: data is NULL or not generated", function);
    if (data->batch < 1 || data->heads < 1 || data->kv_heads < 1 || data->head_dim < 1 ||
        data->capacity < 1 || data->heads % data->kv_heads != 0)
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "%s: bad data dimensions (batch %d, heads %d, kv_heads %d, "
                             "head_dim %d, capacity %d)", function, data->batch, data->heads,
                             data->kv_heads, data->head_dim, data->capacity);
    for (b = 0; b < data->batch; b++)
        if (data->lengths[b] < 0 || data->lengths[b] > data->capacity)
            return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: lengths[%d] = %d outside [0, %d]",
                                 function, b, data->lengths[b], data->capacity);
    return EKV_SUCCESS;
}

static ekv_result ekv__resolve_scale(double softmax_scale, int head_dim, const char *function,
                                     double *scale)
{
    if (softmax_scale != softmax_scale || softmax_scale > DBL_MAX || softmax_scale < -DBL_MAX)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: softmax_scale must be finite", function);
    *scale = ekv_softmax_scale(softmax_scale, head_dim);
    return EKV_SUCCESS;
}

EKV_DEF double ekv_softmax_scale(double softmax_scale, int head_dim)
{
    return softmax_scale == 0.0 ? 1.0 / sqrt((double)(head_dim > 0 ? head_dim : 1)) : softmax_scale;
}

EKV_DEF size_t ekv_cache_scales_bytes(ekv_dtype dtype, int batch, int kv_heads, int head_dim,
                                     int capacity)
{
    const ekv_dtype_traits *t = ekv_dtype_info(dtype);
    size_t heads = batch > 0 && kv_heads > 0 ? (size_t)batch * (size_t)kv_heads : 0;
    if (!t) return 0;
    if (t->head_scale_bytes) return heads * (size_t)t->head_scale_bytes;
    return heads * (size_t)(capacity > 0 ? capacity : 0) * ekv_dtype_row_scale_bytes(dtype, head_dim);
}

EKV_DEF double ekv_cache_memory_of(ekv_dtype dtype, int batch, int kv_heads, int head_dim,
                                   int capacity, int with_bias)
{
    double rows = (double)batch * kv_heads * capacity;
    if (batch < 1 || kv_heads < 1 || capacity < 1 || !ekv_dtype_info(dtype)) return 0.0;
    return rows * (2.0 * (double)ekv_dtype_row_bytes(dtype, head_dim) + (with_bias ? 4.0 : 0.0)) +
           2.0 * (double)ekv_cache_scales_bytes(dtype, batch, kv_heads, head_dim, capacity);
}

/* The one allocation of a host cache's buffers (ekv_cache_build, ekv_cache_create and the
   timing copies): zeroed, every dimension and the dtype checked first. */
static ekv_result ekv__cache_alloc(ekv_host_cache *cache, ekv_dtype dtype, int batch,
                                   int kv_heads, int head_dim, int capacity, int with_bias,
                                   int with_compressed, const char *fn)
{
    const ekv_dtype_traits *t = ekv_dtype_info(dtype);
    size_t rows, row_bytes, scales, cells;
    memset(cache, 0, sizeof *cache);
    if (!t)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: unknown dtype %d: allowed %s", fn,
                             (int)dtype, ekv_dtype_allowed());
    if (batch < 1 || kv_heads < 1 || head_dim < 1 || capacity < 1)
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "%s: batch (%d), kv_heads (%d), head_dim (%d) and capacity (%d) "
                             "must be positive", fn, batch, kv_heads, head_dim, capacity);
    if (t->paired_values && head_dim % 2 != 0)
        return ekv_set_error(EKV_ERR_UNSUPPORTED, "%s: head_dim %d must be even for %s", fn,
                             head_dim, t->name);
    row_bytes = ekv_dtype_row_bytes(dtype, head_dim);
    rows = (size_t)batch * (size_t)kv_heads;
    if (!ekv__mul_size(rows, (size_t)capacity, &rows) || !ekv__mul_size(rows, row_bytes, &cells))
        return ekv_set_error(EKV_ERR_OUT_OF_MEMORY, "%s: cache too large to address", fn);
    scales = ekv_cache_scales_bytes(dtype, batch, kv_heads, head_dim, capacity);
    cache->dtype = dtype;
    cache->batch = batch;
    cache->kv_heads = kv_heads;
    cache->head_dim = head_dim;
    cache->capacity = capacity;
    cache->lengths = (int *)ekv__alloc((size_t)batch, sizeof(int));
    if (with_compressed) cache->compressed = (int *)ekv__alloc((size_t)batch, sizeof(int));
    cache->k = (unsigned char *)ekv__alloc(rows, row_bytes);
    cache->v = (unsigned char *)ekv__alloc(rows, row_bytes);
    if (scales) {
        cache->k_scales = (unsigned char *)ekv__alloc(scales, 1);
        cache->v_scales = (unsigned char *)ekv__alloc(scales, 1);
    }
    if (with_bias) cache->bias = (float *)ekv__alloc(rows, sizeof(float));
    if (!cache->lengths || (with_compressed && !cache->compressed) || !cache->k || !cache->v ||
        (scales && (!cache->k_scales || !cache->v_scales)) || (with_bias && !cache->bias)) {
        ekv_cache_free(cache);
        return EKV_ERR_OUT_OF_MEMORY;
    }
    return EKV_SUCCESS;
}

/* What a policy ranks tokens by: for topk the attention mass from the observed queries
   (ekv_observed_scores, [batch][kv_heads][capacity]); NULL for the policies that do not
   look at content. ekv_cache_build and the ABI's slot maps (>>abi) both take it from here. */
static ekv_result ekv__policy_scores(const ekv_data *data, const ekv_compress_desc *desc,
                                     double scale, double **scores)
{
    ekv_result result;
    *scores = NULL;
    if (desc->policy != EKV_POLICY_TOPK) return EKV_SUCCESS;
    *scores = (double *)ekv__alloc((size_t)data->batch * (size_t)data->kv_heads *
                                       (size_t)data->capacity, sizeof(double));
    if (!*scores) return EKV_ERR_OUT_OF_MEMORY;
    result = ekv_observed_scores(data, scale, *scores);
    if (result != EKV_SUCCESS) {
        ekv__free(*scores);
        *scores = NULL;
    }
    return result;
}

/* Every value of k and v in the sequences (tokens [0, lengths[b])) within the dtype's
   range: a value beyond it would be stored as an infinity (f16, bf16; int4's f16 zero
   point), and every logit or mean that reads it would be NaN. */
static ekv_result ekv__check_storable(const ekv_data *data, ekv_dtype dtype, const char *fn)
{
    const ekv_dtype_traits *traits = ekv_dtype_info(dtype);
    int which, b, h, t, d;
    if (!traits) return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: unknown dtype %d", fn, (int)dtype);
    for (which = 0; which < 2; which++)
        for (b = 0; b < data->batch; b++)
            for (h = 0; h < data->kv_heads; h++)
                for (t = 0; t < data->lengths[b]; t++) {
                    const float *row = (which ? data->v : data->k) + ekv_data_kv_index(data, b, h, t);
                    for (d = 0; d < data->head_dim; d++)
                        if (!(fabs((double)row[d]) <= traits->max_abs))
                            return ekv_set_error(EKV_ERR_INVALID_ARG,
                                                 "%s[%d][%d][%d][%d] = %.9g is beyond what %s "
                                                 "stores (|x| <= %.9g)", which ? "v" : "k", b, h,
                                                 t, d, (double)row[d], traits->name, traits->max_abs);
                }
    return EKV_SUCCESS;
}

EKV_DEF ekv_result ekv_cache_build(const ekv_data *data, const ekv_compress_desc *desc,
                                   ekv_dtype dtype, double softmax_scale,
                                   ekv_host_cache *cache)
{
    const char *fn = "ekv_cache_build";
    size_t row_bytes, scale_bytes;
    double scale = 0.0, *scores = NULL, *sum = NULL;
    ekv_slot_source *slots = NULL;
    float *row = NULL;
    ekv_result result;
    int b, h, capacity = 0, D;
    if (!cache) return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: NULL cache", fn);
    memset(cache, 0, sizeof *cache);
    result = ekv__check_data(data, fn);
    if (result != EKV_SUCCESS) return result;
    if (!ekv_compress_desc_valid(desc))
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "%s: bad compression settings (policy none needs compression 1; "
                             "compression >= 1, recent >= 0, sinks >= 0)", fn);
    if (desc->policy == EKV_POLICY_TOPK && (data->observe < 1 || !data->q_observe))
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "%s: policy topk needs observed queries (data has observe = %d)", fn,
                             data->observe);
    result = ekv__resolve_scale(softmax_scale, data->head_dim, fn, &scale);
    if (result != EKV_SUCCESS) return result;
    result = ekv__check_storable(data, dtype, fn);
    if (result != EKV_SUCCESS) return result;
    D = data->head_dim;
    for (b = 0; b < data->batch; b++) {
        int kept = ekv_policy_kept(desc, data->lengths[b]);
        if (kept > capacity) capacity = kept;
    }
    if (capacity < 1) capacity = 1;
    result = ekv__cache_alloc(cache, dtype, data->batch, data->kv_heads, D, capacity,
                              ekv_policy_has_bias(desc), 0, fn);
    if (result != EKV_SUCCESS) return result;
    row_bytes = ekv_dtype_row_bytes(dtype, D);
    scale_bytes = ekv_dtype_row_scale_bytes(dtype, D);
    slots = (ekv_slot_source *)ekv__alloc((size_t)capacity, sizeof *slots);
    row = (float *)ekv__alloc((size_t)D, sizeof(float));
    sum = (double *)ekv__alloc((size_t)D, sizeof(double));
    if (!slots || !row || !sum) {
        result = EKV_ERR_OUT_OF_MEMORY;
        goto done;
    }
    if ((result = ekv__policy_scores(data, desc, scale, &scores)) != EKV_SUCCESS) goto done;
    for (b = 0; b < data->batch; b++) {
        for (h = 0; h < data->kv_heads; h++) {
            const size_t head = (size_t)b * (size_t)data->kv_heads + (size_t)h;
            const double *head_scores = scores ? scores + head * (size_t)data->capacity : NULL;
            int kept = ekv_policy_map(desc, data->lengths[b], head_scores, slots), which, s, d;
            if (kept < 0) {
                result = ekv_set_error(EKV_ERR_OUT_OF_MEMORY, "%s: slot map failed", fn);
                goto done;
            }
            cache->lengths[b] = kept;
            for (which = 0; which < 2; which++) {
                const float *source = (which ? data->v : data->k) + ekv_data_kv_index(data, b, h, 0);
                unsigned char *values = which ? cache->v : cache->k;
                unsigned char *scales = which ? cache->v_scales : cache->k_scales;
                float head_scale = 0.0f;
                if (dtype == EKV_DTYPE_FP8) {
                    /* one scale per (sequence, kv head): amax over the rows as stored */
                    float amax = 0.0f;
                    for (s = 0; s < kept; s++) {
                        ekv__slot_row(source, D, slots[s], sum, row);
                        for (d = 0; d < D; d++)
                            if (fabsf(row[d]) > amax) amax = fabsf(row[d]);
                    }
                    head_scale = amax / EKV_FP8_MAX;
                    memcpy(scales + head * sizeof(float), &head_scale, sizeof head_scale);
                }
                for (s = 0; s < kept; s++) {
                    size_t r = head * (size_t)capacity + (size_t)s;
                    ekv__slot_row(source, D, slots[s], sum, row);
                    ekv_quantize_row(dtype, row, D, head_scale, values + r * row_bytes,
                                     scale_bytes ? scales + r * scale_bytes : NULL);
                    if (which == 0 && cache->bias) cache->bias[r] = (float)log((double)slots[s].count);
                }
            }
        }
    }
    result = EKV_SUCCESS;
done:
    ekv__free(slots);
    ekv__free(row);
    ekv__free(sum);
    ekv__free(scores);
    if (result != EKV_SUCCESS) ekv_cache_free(cache);
    return result;
}

EKV_DEF ekv_cache_bytes ekv_cache_bytes_of(ekv_dtype dtype, int batch, int kv_heads,
                                           int head_dim, const int *lengths, int has_bias)
{
    ekv_cache_bytes bytes;
    double rows = 0.0;
    int b;
    memset(&bytes, 0, sizeof bytes);
    if (!lengths || batch < 1 || kv_heads < 1) return bytes;
    for (b = 0; b < batch; b++) rows += (double)lengths[b] * kv_heads;
    bytes.k = rows * (double)ekv_dtype_row_bytes(dtype, head_dim);
    bytes.v = bytes.k;
    bytes.scales = ekv_dtype_info(dtype) && ekv_dtype_info(dtype)->head_scale_bytes
                       ? 2.0 * (double)ekv_cache_scales_bytes(dtype, batch, kv_heads, head_dim, 1)
                       : 2.0 * rows * (double)ekv_dtype_row_scale_bytes(dtype, head_dim);
    bytes.bias = has_bias ? 4.0 * rows : 0.0;
    bytes.total = bytes.k + bytes.v + bytes.scales + bytes.bias;
    return bytes;
}

/* >>reference: double reference, the float CPU kernel, observed scores ======== */

static double ekv__dot_f64(const float *a, const float *b, int n)
{
    double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
    int i;
    for (i = 0; i + 3 < n; i += 4) {
        s0 += (double)a[i] * b[i];
        s1 += (double)a[i + 1] * b[i + 1];
        s2 += (double)a[i + 2] * b[i + 2];
        s3 += (double)a[i + 3] * b[i + 3];
    }
    for (; i < n; i++) s0 += (double)a[i] * b[i];
    return (s0 + s1) + (s2 + s3);
}

/* Softmax in place over n logits, with max subtraction. */
static void ekv__softmax(double *x, int n)
{
    double mx = -HUGE_VAL, total = 0.0;
    int i;
    for (i = 0; i < n; i++)
        if (x[i] > mx) mx = x[i];
    for (i = 0; i < n; i++) {
        x[i] = exp(x[i] - mx);
        total += x[i];
    }
    for (i = 0; i < n; i++) x[i] /= total;
}

/* Probabilities of the decode query of (b, h) over its sequence, into p[length]. */
static void ekv__attention_probs(const ekv_data *data, const float *q, int b, int h, double scale,
                                 double *p)
{
    const int g = h / (data->heads / data->kv_heads), length = data->lengths[b];
    const float *k = data->k + ekv_data_kv_index(data, b, g, 0);
    int t;
    for (t = 0; t < length; t++)
        p[t] = scale * ekv__dot_f64(q, k + (size_t)t * (size_t)data->head_dim, data->head_dim);
    ekv__softmax(p, length);
}

EKV_DEF ekv_result ekv_reference_attention(const ekv_data *data, double softmax_scale,
                                           double *out)
{
    const char *fn = "ekv_reference_attention";
    double scale = 0.0, *p;
    ekv_result result = ekv__check_data(data, fn);
    int b, h, t, d;
    if (result != EKV_SUCCESS) return result;
    if (!out) return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: NULL output", fn);
    result = ekv__resolve_scale(softmax_scale, data->head_dim, fn, &scale);
    if (result != EKV_SUCCESS) return result;
    p = (double *)ekv__alloc((size_t)data->capacity, sizeof(double));
    if (!p) return EKV_ERR_OUT_OF_MEMORY;
    for (b = 0; b < data->batch; b++)
        for (h = 0; h < data->heads; h++) {
            const size_t bh = (size_t)b * (size_t)data->heads + (size_t)h;
            const int g = h / (data->heads / data->kv_heads);
            const float *v = data->v + ekv_data_kv_index(data, b, g, 0);
            double *o = out + bh * (size_t)data->head_dim;
            for (d = 0; d < data->head_dim; d++) o[d] = 0.0;
            if (data->lengths[b] == 0) continue;
            ekv__attention_probs(data, data->q + bh * (size_t)data->head_dim, b, h, scale, p);
            for (t = 0; t < data->lengths[b]; t++) {
                const float *row = v + (size_t)t * (size_t)data->head_dim;
                for (d = 0; d < data->head_dim; d++) o[d] += p[t] * row[d];
            }
        }
    ekv__free(p);
    return EKV_SUCCESS;
}

static ekv_result ekv__check_cache(const ekv_host_cache *cache, const float *q, int heads,
                                   const void *out, const char *function)
{
    int b;
    if (!cache || !cache->k || !cache->v || !cache->lengths || !q || !out)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: NULL cache, query or output", function);
    if ((int)cache->dtype < 0 || cache->dtype >= EKV_DTYPE_COUNT || cache->batch < 1 ||
        cache->kv_heads < 1 || cache->head_dim < 1 || cache->capacity < 1)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: the cache is not built", function);
    if (heads < 1 || heads % cache->kv_heads != 0)
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "%s: heads (%d) must be a positive multiple of kv_heads (%d)",
                             function, heads, cache->kv_heads);
    for (b = 0; b < cache->batch; b++)
        if (cache->lengths[b] < 0 || cache->lengths[b] > cache->capacity)
            return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: cache lengths[%d] = %d outside [0, %d]",
                                 function, b, cache->lengths[b], cache->capacity);
    return EKV_SUCCESS;
}

EKV_DEF ekv_result ekv_reference_attention_cache(const ekv_host_cache *cache, const float *q,
                                                 int heads, double softmax_scale, double *out)
{
    const char *fn = "ekv_reference_attention_cache";
    ekv_result result = ekv__check_cache(cache, q, heads, out, fn);
    double scale = 0.0, *logits, *acc;
    float *row;
    int group, b, g, hh, s, d, D;
    if (result != EKV_SUCCESS) return result;
    result = ekv__resolve_scale(softmax_scale, cache->head_dim, fn, &scale);
    if (result != EKV_SUCCESS) return result;
    D = cache->head_dim;
    group = heads / cache->kv_heads;
    logits = (double *)ekv__alloc((size_t)group * (size_t)cache->capacity, sizeof(double));
    acc = (double *)ekv__alloc((size_t)group * (size_t)D, sizeof(double));
    row = (float *)ekv__alloc((size_t)D, sizeof(float));
    if (!logits || !acc || !row) {
        ekv__free(logits);
        ekv__free(acc);
        ekv__free(row);
        return EKV_ERR_OUT_OF_MEMORY;
    }
    for (b = 0; b < cache->batch; b++)
        for (g = 0; g < cache->kv_heads; g++) {
            const int length = cache->lengths[b];
            const size_t first_head = (size_t)b * (size_t)heads + (size_t)g * (size_t)group;
            const float *bias = cache->bias ? cache->bias + ((size_t)b * (size_t)cache->kv_heads +
                                                             (size_t)g) * (size_t)cache->capacity
                                            : NULL;
            for (s = 0; s < length; s++) {
                ekv_cache_row(cache, 0, b, g, s, row);
                for (hh = 0; hh < group; hh++)
                    logits[(size_t)hh * (size_t)length + (size_t)s] =
                        scale * ekv__dot_f64(q + (first_head + (size_t)hh) * (size_t)D, row, D) +
                        (bias ? bias[s] : 0.0);
            }
            for (hh = 0; hh < group; hh++) {
                if (length > 0) ekv__softmax(logits + (size_t)hh * (size_t)length, length);
                for (d = 0; d < D; d++) acc[(size_t)hh * (size_t)D + (size_t)d] = 0.0;
            }
            for (s = 0; s < length; s++) {
                ekv_cache_row(cache, 1, b, g, s, row);
                for (hh = 0; hh < group; hh++) {
                    const double p = logits[(size_t)hh * (size_t)length + (size_t)s];
                    double *a = acc + (size_t)hh * (size_t)D;
                    for (d = 0; d < D; d++) a[d] += p * row[d];
                }
            }
            memcpy(out + first_head * (size_t)D, acc, (size_t)group * (size_t)D * sizeof(double));
        }
    ekv__free(logits);
    ekv__free(acc);
    ekv__free(row);
    return EKV_SUCCESS;
}

/* Tolerance of a float kernel against the double reference over the same stored cache.
   Both read the same stored values (the reference dequantizes them with the same
   formulas), so the storage dtype does not enter: what remains is fp32 arithmetic - q
   times the scale, dot products of head_dim terms, exp (a few ulp), and the running sums.
   Those errors are about 1e-7 relative each; a sum grows like the square root of the
   terms it adds, which the second term allows for on long sequences (a GPU thread may
   add a whole sequence; the CPU kernel adds at most EKV_CPU_SPLIT slots in float and
   stays near the floor). */
EKV_DEF double ekv_validation_tolerance(int max_length)
{
    const double grow = 2e-7 * sqrt((double)(max_length > 0 ? max_length : 1));
    return grow > 1e-5 ? grow : 1e-5;
}

/* ---- the CPU kernel -------------------------------------------------------------------

   A work item is a piece of up to EKV_CPU_SPLIT slots of one (sequence, kv head). For
   its piece a thread (1) turns blocks of K rows into floats (f32 is read in place) and
   scores them against every query head of the GQA group, (2) takes the piece's max and
   the exp of each logit, (3) turns blocks of V rows into floats and adds them, weighted,
   into the group's accumulators: each row is read once, for all the heads of the group.
   A path with int8 and int4 functions (AVX2) skips the float blocks for those and
   converts each value in registers where it is used, once for four heads: the decode
   pass's stores and reloads cost the 1- and 4-bit forms more than their bytes did.
   int8's row scale multiplies the logit and the weight rather than every value; fp8's
   head scale the logits and the result. The pieces' partials (max, sum, accumulators)
   are merged in double, so no float sum runs over more than EKV_CPU_SPLIT slots: the
   error does not grow with the sequence. */

#define EKV__CPU_BLOCK 32 /* rows turned into floats at once: 16 KB at head_dim 128, in L1 */
/* Starting a thread costs about 30 us on Linux: below this many KV bytes per thread
   (roughly that much work), another thread costs about what it saves. */
#define EKV__CPU_BYTES_PER_THREAD (256.0 * 1024.0)

#if !defined(__cplusplus)
#define EKV__RESTRICT restrict
#elif defined(__GNUC__) || defined(__clang__) || defined(_MSC_VER)
#define EKV__RESTRICT __restrict
#else
#define EKV__RESTRICT
#endif

/* One code path of the kernel (portable C, AVX2, AVX-512, NEON):
     decode      n rows of the stored form into floats, out[n][D]: int8 the integers (the
                 row scale is applied to logits and weights), fp8 without its head scale,
                 int4 dequantized (scale and zero per group of 32); f32 is never decoded
     logits      logits[h * stride + j] = dot(q_h, row j) for the G heads of the group
     exp_sum     x[i] = exp(x[i] - max) for i < n, returns the sum (x[i] <= max, or NaN)
     accumulate  acc_h += sum over j of p[h * stride + j] * row j, acc [G][D]
   int4_split: int4 rows whose head_dim is a multiple of 32 decode in split order - in
   each group of 32 its 16 even elements, then its 16 odd ones (the low and the high
   nibbles as they lie, no interleaving shuffles); the kernel then permutes q the same way
   and puts the accumulators back in order (ekv__int4_order). */
typedef struct ekv__cpu_path {
    const char *name;
    int int4_split;
    void (*decode)(ekv_dtype dtype, const unsigned char *values, const unsigned char *scales,
                   int n, int D, float *out);
    void (*logits)(const float *q, int G, int D, const float *rows, int n, float *logits,
                   size_t stride);
    float (*exp_sum)(float *x, int n, float max);
    void (*accumulate)(float *acc, int G, int D, const float *rows, int n, const float *p,
                       size_t stride);
    /* logits and accumulate straight from int8 rows (the integers; the row scales as in
       decode), head_dim a multiple of 8; NULL where the path decodes them first */
    void (*logits_int8)(const float *q, int G, int D, const int8_t *rows, int n, float *logits,
                        size_t stride);
    void (*accumulate_int8)(float *acc, int G, int D, const int8_t *rows, int n, const float *p,
                            size_t stride);
    /* the same from f16 rows (exact conversions in registers, no float block between),
       head_dim a multiple of 8; NULL where the path decodes them first */
    void (*logits_f16)(const float *q, int G, int D, const uint16_t *rows, int n, float *logits,
                       size_t stride);
    void (*accumulate_f16)(float *acc, int G, int D, const uint16_t *rows, int n, const float *p,
                           size_t stride);
    /* the same from int4 rows and their (scale, zero) pairs, in split order, head_dim a
       multiple of 32; `spare` holds n * D / 16 floats */
    void (*logits_int4)(const float *q, int G, int D, const unsigned char *rows,
                        const uint16_t *pairs, int n, float *spare, float *logits, size_t stride);
    void (*accumulate_int4)(float *acc, int G, int D, const unsigned char *rows,
                            const uint16_t *pairs, int n, float *spare, const float *p,
                            size_t stride);
} ekv__cpu_path;

/* -- portable C: what every compiler builds -- */

/* Eight independent partial sums (and, below, eight independent updates) per step: the
   compiler turns each group of eight into vector instructions without -ffast-math. */
static float ekv__dot_f32(const float *EKV__RESTRICT a, const float *EKV__RESTRICT b, int n)
{
    float s[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    int i, j;
    for (i = 0; i + 7 < n; i += 8)
        for (j = 0; j < 8; j++) s[j] += a[i + j] * b[i + j];
    for (; i < n; i++) s[0] += a[i] * b[i];
    return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
}

/* The largest of x[0..n) (NaN skipped, -inf when none), in eight independent lanes: one
   running max is a chain of dependent compares, 4 cycles each. */
static float ekv__max_f32(const float *x, int n)
{
    float m[8], best;
    int i, j;
    for (j = 0; j < 8; j++) m[j] = -HUGE_VALF;
    for (i = 0; i + 7 < n; i += 8)
        for (j = 0; j < 8; j++) m[j] = x[i + j] > m[j] ? x[i + j] : m[j];
    for (; i < n; i++) m[0] = x[i] > m[0] ? x[i] : m[0];
    best = m[0];
    for (j = 1; j < 8; j++) best = m[j] > best ? m[j] : best;
    return best;
}

/* out = x * by (elementwise; out may be x), and x += plus: eight at a time as above, so
   that the plain -O2 build vectorizes these per-slot passes over the logits too. */
static void ekv__mul_f32(float *out, const float *x, const float *by, int n)
{
    int i, j;
    for (i = 0; i + 7 < n; i += 8)
        for (j = 0; j < 8; j++) out[i + j] = x[i + j] * by[i + j];
    for (; i < n; i++) out[i] = x[i] * by[i];
}

static void ekv__add_f32(float *EKV__RESTRICT x, const float *EKV__RESTRICT plus, int n)
{
    int i, j;
    for (i = 0; i + 7 < n; i += 8)
        for (j = 0; j < 8; j++) x[i + j] += plus[i + j];
    for (; i < n; i++) x[i] += plus[i];
}

/* acc += p * x */
static void ekv__axpy_f32(float *EKV__RESTRICT acc, float p, const float *EKV__RESTRICT x, int n)
{
    int i, j;
    for (i = 0; i + 7 < n; i += 8)
        for (j = 0; j < 8; j++) acc[i + j] += p * x[i + j];
    for (; i < n; i++) acc[i] += p * x[i];
}

/* The conversions of >>quant, row by row (fp8 with head scale 1, which is exact). */
static void ekv__decode_portable(ekv_dtype dtype, const unsigned char *values,
                                 const unsigned char *scales, int n, int D, float *out)
{
    const size_t row = ekv_dtype_row_bytes(dtype, D), scale = ekv_dtype_row_scale_bytes(dtype, D);
    const size_t count = (size_t)n * (size_t)D;
    size_t i;
    int j;
    if (dtype == EKV_DTYPE_INT8) {
        const int8_t *in = (const int8_t *)(const void *)values;
        for (i = 0; i < count; i++) out[i] = (float)in[i];
        return;
    }
    for (j = 0; j < n; j++)
        ekv_dequantize_row(dtype, values + (size_t)j * row, scales ? scales + (size_t)j * scale : NULL,
                           D, 1.0f, out + (size_t)j * (size_t)D);
}

static void ekv__logits_portable(const float *q, int G, int D, const float *rows, int n,
                                 float *logits, size_t stride)
{
    int h, j;
    for (h = 0; h < G; h++)
        for (j = 0; j < n; j++)
            logits[(size_t)h * stride + (size_t)j] =
                ekv__dot_f32(q + (size_t)h * (size_t)D, rows + (size_t)j * (size_t)D, D);
}

static float ekv__exp_sum_portable(float *x, int n, float max)
{
    float sum = 0.0f;
    int i;
    for (i = 0; i < n; i++) {
        x[i] = expf(x[i] - max);
        sum += x[i];
    }
    return sum;
}

static void ekv__accumulate_portable(float *acc, int G, int D, const float *rows, int n,
                                     const float *p, size_t stride)
{
    int h, j;
    for (j = 0; j < n; j++)
        for (h = 0; h < G; h++)
            ekv__axpy_f32(acc + (size_t)h * (size_t)D, p[(size_t)h * stride + (size_t)j],
                          rows + (size_t)j * (size_t)D, D);
}

static const ekv__cpu_path ekv__cpu_portable = {"portable", 0, ekv__decode_portable,
                                                ekv__logits_portable, ekv__exp_sum_portable,
                                                ekv__accumulate_portable, NULL, NULL,
                                                NULL, NULL, NULL, NULL};

/* exp(x) for x <= 0 by 2^n * e^r, |r| <= ln2/2, with the classic single-precision
   minimax polynomial (Cephes expf; about 1 ulp); x below -87.3 (2^-126) gives 0, -inf
   included, NaN stays NaN. The SIMD paths use it; the portable one calls expf. */
#define EKV__EXP_LOWEST -87.33654f
#define EKV__EXP_C1 0.693359375f
#define EKV__EXP_C2 -2.12194440e-4f
#define EKV__EXP_P0 1.9875691500e-4f
#define EKV__EXP_P1 1.3981999507e-3f
#define EKV__EXP_P2 8.3334519073e-3f
#define EKV__EXP_P3 4.1665795894e-2f
#define EKV__EXP_P4 1.6666665459e-1f
#define EKV__EXP_P5 5.0000001201e-1f
#define EKV__LOG2E 1.44269504088896341f

/* -- AVX2 + FMA + F16C (x86-64) -- */
#if defined(EKV__SIMD_AVX2)
#define EKV__AVX2 __attribute__((target("avx2,fma,f16c")))

/* lanes [0, count) set: the tail of a row whose length is not a multiple of 8 */
static EKV__AVX2 __m256i ekv__mask_avx2(int count)
{
    static const int32_t ones[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
    return _mm256_loadu_si256((const __m256i *)(const void *)(ones + 8 - count));
}

/* lane i = the sum of the lanes of v_i */
static EKV__AVX2 __m256 ekv__sum8_avx2(__m256 v0, __m256 v1, __m256 v2, __m256 v3, __m256 v4,
                                       __m256 v5, __m256 v6, __m256 v7)
{
    const __m256 a = _mm256_hadd_ps(_mm256_hadd_ps(v0, v1), _mm256_hadd_ps(v2, v3));
    const __m256 b = _mm256_hadd_ps(_mm256_hadd_ps(v4, v5), _mm256_hadd_ps(v6, v7));
    return _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
}

static EKV__AVX2 float ekv__sum_avx2(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* The 32 values of an int4 group from its 16 bytes (even element in the low nibble) in
   split order (see ekv__cpu_path): q * scale + zero, as ekv_dequantize_row computes it,
   with the f16 scale and zero converted by F16C. */
static EKV__AVX2 void ekv__int4_group_avx2(const unsigned char *in, const uint16_t *pair,
                                           float *out)
{
    const __m128i bytes = _mm_loadu_si128((const __m128i *)(const void *)in);
    const __m128i even = _mm_and_si128(bytes, _mm_set1_epi8(15));
    const __m128i odd = _mm_and_si128(_mm_srli_epi16(bytes, 4), _mm_set1_epi8(15));
    int32_t bits;
    __m128 scale_zero;
    __m256 s, z;
    memcpy(&bits, pair, sizeof bits);
    scale_zero = _mm_cvtph_ps(_mm_cvtsi32_si128(bits));
    s = _mm256_broadcastss_ps(scale_zero);
    z = _mm256_broadcastss_ps(_mm_movehdup_ps(scale_zero));
#define EKV__INT4_EIGHT(source, at)                                                             \
    _mm256_storeu_ps(out + (at), _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(                \
                                                   _mm256_cvtepu8_epi32(source)), s), z))
    EKV__INT4_EIGHT(even, 0);
    EKV__INT4_EIGHT(_mm_srli_si128(even, 8), 8);
    EKV__INT4_EIGHT(odd, 16);
    EKV__INT4_EIGHT(_mm_srli_si128(odd, 8), 24);
#undef EKV__INT4_EIGHT
}

/* 16 e4m3 codes as floats, bit-exact with ekv_fp8_to_f32 but for NaN payloads: the
   code's exponent and fraction placed in an f16 (whose exponent has 8 more bias and which
   has subnormals too) give the value / 256, converted by F16C; 0x7f is made an f16 NaN. */
static EKV__AVX2 void ekv__fp8_sixteen_avx2(const unsigned char *in, float *out)
{
    const __m256i v = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(const void *)in));
    const __m256i magnitude = _mm256_and_si256(v, _mm256_set1_epi16(0x7f));
    const __m256 times = _mm256_set1_ps(256.0f);
    __m256i half = _mm256_or_si256(_mm256_slli_epi16(magnitude, 7),
                                   _mm256_slli_epi16(_mm256_and_si256(v, _mm256_set1_epi16(0x80)), 8));
    half = _mm256_or_si256(half, _mm256_and_si256(_mm256_cmpeq_epi16(magnitude, _mm256_set1_epi16(0x7f)),
                                                  _mm256_set1_epi16(0x7e00)));
    _mm256_storeu_ps(out, _mm256_mul_ps(_mm256_cvtph_ps(_mm256_castsi256_si128(half)), times));
    _mm256_storeu_ps(out + 8, _mm256_mul_ps(_mm256_cvtph_ps(_mm256_extracti128_si256(half, 1)), times));
}

static EKV__AVX2 void ekv__decode_avx2(ekv_dtype dtype, const unsigned char *values,
                                       const unsigned char *scales, int n, int D, float *out)
{
    const size_t count = (size_t)n * (size_t)D;
    size_t i = 0;
    int j;
    switch (dtype) {
    case EKV_DTYPE_F16:
        for (; i + 8 <= count; i += 8)
            _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(
                                          (const __m128i *)(const void *)(values + 2 * i))));
        break;
    case EKV_DTYPE_BF16:
        for (; i + 8 <= count; i += 8) {
            const __m256i w = _mm256_cvtepu16_epi32(
                _mm_loadu_si128((const __m128i *)(const void *)(values + 2 * i)));
            _mm256_storeu_ps(out + i, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
        }
        break;
    case EKV_DTYPE_INT8:
        for (; i + 8 <= count; i += 8)
            _mm256_storeu_ps(out + i, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(
                                          _mm_loadl_epi64((const __m128i *)(const void *)(values + i)))));
        break;
    case EKV_DTYPE_FP8:
        for (; i + 16 <= count; i += 16) ekv__fp8_sixteen_avx2(values + i, out + i);
        break;
    case EKV_DTYPE_INT4: {
        /* whole groups of 32 here, in split order; a head_dim that is not a multiple of
           32 by the portable row code, in order (the kernel permutes only then) */
        const size_t row = ekv_dtype_row_bytes(dtype, D), scale = ekv_dtype_row_scale_bytes(dtype, D);
        for (j = 0; j < n; j++) {
            const unsigned char *in = values + (size_t)j * row;
            const uint16_t *pairs = (const uint16_t *)(const void *)(scales + (size_t)j * scale);
            float *o = out + (size_t)j * (size_t)D;
            int group;
            if (D % EKV_INT4_GROUP != 0) {
                ekv_dequantize_row(dtype, in, pairs, D, 1.0f, o);
                continue;
            }
            for (group = 0; group < D / EKV_INT4_GROUP; group++)
                ekv__int4_group_avx2(in + group * (EKV_INT4_GROUP / 2), pairs + 2 * group,
                                     o + group * EKV_INT4_GROUP);
        }
        return;
    }
    default:
        break;
    }
    /* the last values of a block whose size is not a multiple of 8 (odd head_dim) */
    if (i < count) {
        const size_t bits = (size_t)ekv_dtype_info(dtype)->bits;
        for (; i < count; i++) ekv__decode_portable(dtype, values + i * bits / 8, NULL, 1, 1, out + i);
    }
}

/* Tiles of 8 dot products, each 8 lanes wide, summed across lanes together at the end
   into 8 logits that are stored contiguously (a scalar read of a vector store stalls):
   4 rows x 2 heads (a K load serves 2 heads, a q load 4 rows) or 8 rows x 1 head. */
static EKV__AVX2 void ekv__logits_avx2(const float *q, int G, int D, const float *rows, int n,
                                       float *logits, size_t stride)
{
    const int full = D & ~7, rest = D - full;
    const __m256i mask = ekv__mask_avx2(rest);
    const size_t d_stride = (size_t)D;
    int h = 0, j, d;
    for (; h + 2 <= G; h += 2) {
        const float *q0 = q + (size_t)h * d_stride, *q1 = q0 + d_stride;
        float *out0 = logits + (size_t)h * stride, *out1 = out0 + stride;
        for (j = 0; j + 4 <= n; j += 4) {
            const float *r0 = rows + (size_t)j * d_stride, *r1 = r0 + d_stride, *r2 = r1 + d_stride,
                        *r3 = r2 + d_stride;
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0,
                   b3 = a0, x, y0, y1, sums;
            for (d = 0; d < full; d += 8) {
                y0 = _mm256_loadu_ps(q0 + d);
                y1 = _mm256_loadu_ps(q1 + d);
                x = _mm256_loadu_ps(r0 + d); a0 = _mm256_fmadd_ps(y0, x, a0); b0 = _mm256_fmadd_ps(y1, x, b0);
                x = _mm256_loadu_ps(r1 + d); a1 = _mm256_fmadd_ps(y0, x, a1); b1 = _mm256_fmadd_ps(y1, x, b1);
                x = _mm256_loadu_ps(r2 + d); a2 = _mm256_fmadd_ps(y0, x, a2); b2 = _mm256_fmadd_ps(y1, x, b2);
                x = _mm256_loadu_ps(r3 + d); a3 = _mm256_fmadd_ps(y0, x, a3); b3 = _mm256_fmadd_ps(y1, x, b3);
            }
            if (rest) {
                y0 = _mm256_maskload_ps(q0 + d, mask);
                y1 = _mm256_maskload_ps(q1 + d, mask);
                x = _mm256_maskload_ps(r0 + d, mask); a0 = _mm256_fmadd_ps(y0, x, a0); b0 = _mm256_fmadd_ps(y1, x, b0);
                x = _mm256_maskload_ps(r1 + d, mask); a1 = _mm256_fmadd_ps(y0, x, a1); b1 = _mm256_fmadd_ps(y1, x, b1);
                x = _mm256_maskload_ps(r2 + d, mask); a2 = _mm256_fmadd_ps(y0, x, a2); b2 = _mm256_fmadd_ps(y1, x, b2);
                x = _mm256_maskload_ps(r3 + d, mask); a3 = _mm256_fmadd_ps(y0, x, a3); b3 = _mm256_fmadd_ps(y1, x, b3);
            }
            sums = ekv__sum8_avx2(a0, a1, a2, a3, b0, b1, b2, b3);
            _mm_storeu_ps(out0 + j, _mm256_castps256_ps128(sums));
            _mm_storeu_ps(out1 + j, _mm256_extractf128_ps(sums, 1));
        }
        for (; j < n; j++) {
            const float *r = rows + (size_t)j * d_stride;
            __m256 a = _mm256_setzero_ps(), b = a, x;
            for (d = 0; d < full; d += 8) {
                x = _mm256_loadu_ps(r + d);
                a = _mm256_fmadd_ps(_mm256_loadu_ps(q0 + d), x, a);
                b = _mm256_fmadd_ps(_mm256_loadu_ps(q1 + d), x, b);
            }
            if (rest) {
                x = _mm256_maskload_ps(r + d, mask);
                a = _mm256_fmadd_ps(_mm256_maskload_ps(q0 + d, mask), x, a);
                b = _mm256_fmadd_ps(_mm256_maskload_ps(q1 + d, mask), x, b);
            }
            out0[j] = ekv__sum_avx2(a);
            out1[j] = ekv__sum_avx2(b);
        }
    }
    for (; h < G; h++) {
        const float *qh = q + (size_t)h * d_stride;
        float *out = logits + (size_t)h * stride;
        for (j = 0; j + 8 <= n; j += 8) {
            const float *r0 = rows + (size_t)j * d_stride, *r1 = r0 + d_stride, *r2 = r1 + d_stride,
                        *r3 = r2 + d_stride, *r4 = r3 + d_stride, *r5 = r4 + d_stride,
                        *r6 = r5 + d_stride, *r7 = r6 + d_stride;
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0,
                   a7 = a0, y;
            for (d = 0; d < full; d += 8) {
                y = _mm256_loadu_ps(qh + d);
                a0 = _mm256_fmadd_ps(y, _mm256_loadu_ps(r0 + d), a0);
                a1 = _mm256_fmadd_ps(y, _mm256_loadu_ps(r1 + d), a1);
                a2 = _mm256_fmadd_ps(y, _mm256_loadu_ps(r2 + d), a2);
                a3 = _mm256_fmadd_ps(y, _mm256_loadu_ps(r3 + d), a3);
                a4 = _mm256_fmadd_ps(y, _mm256_loadu_ps(r4 + d), a4);
                a5 = _mm256_fmadd_ps(y, _mm256_loadu_ps(r5 + d), a5);
                a6 = _mm256_fmadd_ps(y, _mm256_loadu_ps(r6 + d), a6);
                a7 = _mm256_fmadd_ps(y, _mm256_loadu_ps(r7 + d), a7);
            }
            if (rest) {
                y = _mm256_maskload_ps(qh + d, mask);
                a0 = _mm256_fmadd_ps(y, _mm256_maskload_ps(r0 + d, mask), a0);
                a1 = _mm256_fmadd_ps(y, _mm256_maskload_ps(r1 + d, mask), a1);
                a2 = _mm256_fmadd_ps(y, _mm256_maskload_ps(r2 + d, mask), a2);
                a3 = _mm256_fmadd_ps(y, _mm256_maskload_ps(r3 + d, mask), a3);
                a4 = _mm256_fmadd_ps(y, _mm256_maskload_ps(r4 + d, mask), a4);
                a5 = _mm256_fmadd_ps(y, _mm256_maskload_ps(r5 + d, mask), a5);
                a6 = _mm256_fmadd_ps(y, _mm256_maskload_ps(r6 + d, mask), a6);
                a7 = _mm256_fmadd_ps(y, _mm256_maskload_ps(r7 + d, mask), a7);
            }
            _mm256_storeu_ps(out + j, ekv__sum8_avx2(a0, a1, a2, a3, a4, a5, a6, a7));
        }
        for (; j < n; j++) {
            const float *r = rows + (size_t)j * d_stride;
            __m256 a = _mm256_setzero_ps();
            for (d = 0; d < full; d += 8)
                a = _mm256_fmadd_ps(_mm256_loadu_ps(qh + d), _mm256_loadu_ps(r + d), a);
            if (rest)
                a = _mm256_fmadd_ps(_mm256_maskload_ps(qh + d, mask), _mm256_maskload_ps(r + d, mask), a);
            out[j] = ekv__sum_avx2(a);
        }
    }
}

static EKV__AVX2 __m256 ekv__exp_avx2(__m256 x)
{
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(EKV__LOG2E)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(EKV__EXP_C1), x);
    __m256 p = _mm256_set1_ps(EKV__EXP_P0);
    __m256i two_n;
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(EKV__EXP_C2), r);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EKV__EXP_P1));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EKV__EXP_P2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EKV__EXP_P3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EKV__EXP_P4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EKV__EXP_P5));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    two_n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    p = _mm256_mul_ps(p, _mm256_castsi256_ps(two_n));
    return _mm256_andnot_ps(_mm256_cmp_ps(x, _mm256_set1_ps(EKV__EXP_LOWEST), _CMP_LT_OQ), p);
}

static EKV__AVX2 float ekv__exp_sum_avx2(float *x, int n, float max)
{
    const __m256 m = _mm256_set1_ps(max);
    __m256 sum = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 e = ekv__exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(x + i), m));
        _mm256_storeu_ps(x + i, e);
        sum = _mm256_add_ps(sum, e);
    }
    if (i < n) {
        const __m256i mask = ekv__mask_avx2(n - i);
        const __m256 e = ekv__exp_avx2(_mm256_sub_ps(_mm256_maskload_ps(x + i, mask), m));
        _mm256_maskstore_ps(x + i, mask, e);
        sum = _mm256_add_ps(sum, _mm256_and_ps(e, _mm256_castsi256_ps(mask)));
    }
    return ekv__sum_avx2(sum);
}

/* Register tiles over the block's rows: 4 heads x 16 columns (a V load serves 4 heads)
   or 1 head x 32 columns; a tail narrower than 8 columns by masked loads and stores.
   Written out rather than in arrays and loops: compilers keep arrays of vectors in
   memory at -O2. */
static EKV__AVX2 void ekv__accumulate_avx2(float *acc, int G, int D, const float *rows, int n,
                                           const float *p, size_t stride)
{
    const size_t d_stride = (size_t)D;
    int h = 0, j, d;
    for (; h + 4 <= G; h += 4) {
        float *c0 = acc + (size_t)h * d_stride, *c1 = c0 + d_stride, *c2 = c1 + d_stride,
              *c3 = c2 + d_stride;
        const float *w0 = p + (size_t)h * stride, *w1 = w0 + stride, *w2 = w1 + stride,
                    *w3 = w2 + stride;
        for (d = 0; d + 16 <= D; d += 16) {
            __m256 a0 = _mm256_loadu_ps(c0 + d), b0 = _mm256_loadu_ps(c0 + d + 8);
            __m256 a1 = _mm256_loadu_ps(c1 + d), b1 = _mm256_loadu_ps(c1 + d + 8);
            __m256 a2 = _mm256_loadu_ps(c2 + d), b2 = _mm256_loadu_ps(c2 + d + 8);
            __m256 a3 = _mm256_loadu_ps(c3 + d), b3 = _mm256_loadu_ps(c3 + d + 8);
            for (j = 0; j < n; j++) {
                const float *r = rows + (size_t)j * d_stride + (size_t)d;
                const __m256 x = _mm256_loadu_ps(r), y = _mm256_loadu_ps(r + 8);
                __m256 w = _mm256_broadcast_ss(w0 + j);
                a0 = _mm256_fmadd_ps(w, x, a0); b0 = _mm256_fmadd_ps(w, y, b0);
                w = _mm256_broadcast_ss(w1 + j);
                a1 = _mm256_fmadd_ps(w, x, a1); b1 = _mm256_fmadd_ps(w, y, b1);
                w = _mm256_broadcast_ss(w2 + j);
                a2 = _mm256_fmadd_ps(w, x, a2); b2 = _mm256_fmadd_ps(w, y, b2);
                w = _mm256_broadcast_ss(w3 + j);
                a3 = _mm256_fmadd_ps(w, x, a3); b3 = _mm256_fmadd_ps(w, y, b3);
            }
            _mm256_storeu_ps(c0 + d, a0); _mm256_storeu_ps(c0 + d + 8, b0);
            _mm256_storeu_ps(c1 + d, a1); _mm256_storeu_ps(c1 + d + 8, b1);
            _mm256_storeu_ps(c2 + d, a2); _mm256_storeu_ps(c2 + d + 8, b2);
            _mm256_storeu_ps(c3 + d, a3); _mm256_storeu_ps(c3 + d + 8, b3);
        }
        for (; d < D; d += 8) {
            const __m256i mask = ekv__mask_avx2(D - d < 8 ? D - d : 8);
            __m256 a0 = _mm256_maskload_ps(c0 + d, mask), a1 = _mm256_maskload_ps(c1 + d, mask);
            __m256 a2 = _mm256_maskload_ps(c2 + d, mask), a3 = _mm256_maskload_ps(c3 + d, mask);
            for (j = 0; j < n; j++) {
                const __m256 x = _mm256_maskload_ps(rows + (size_t)j * d_stride + (size_t)d, mask);
                a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(w0 + j), x, a0);
                a1 = _mm256_fmadd_ps(_mm256_broadcast_ss(w1 + j), x, a1);
                a2 = _mm256_fmadd_ps(_mm256_broadcast_ss(w2 + j), x, a2);
                a3 = _mm256_fmadd_ps(_mm256_broadcast_ss(w3 + j), x, a3);
            }
            _mm256_maskstore_ps(c0 + d, mask, a0);
            _mm256_maskstore_ps(c1 + d, mask, a1);
            _mm256_maskstore_ps(c2 + d, mask, a2);
            _mm256_maskstore_ps(c3 + d, mask, a3);
        }
    }
    for (; h < G; h++) {
        float *c = acc + (size_t)h * d_stride;
        const float *w = p + (size_t)h * stride;
        for (d = 0; d + 32 <= D; d += 32) {
            __m256 a0 = _mm256_loadu_ps(c + d), a1 = _mm256_loadu_ps(c + d + 8);
            __m256 a2 = _mm256_loadu_ps(c + d + 16), a3 = _mm256_loadu_ps(c + d + 24);
            for (j = 0; j < n; j++) {
                const float *r = rows + (size_t)j * d_stride + (size_t)d;
                const __m256 weight = _mm256_broadcast_ss(w + j);
                a0 = _mm256_fmadd_ps(weight, _mm256_loadu_ps(r), a0);
                a1 = _mm256_fmadd_ps(weight, _mm256_loadu_ps(r + 8), a1);
                a2 = _mm256_fmadd_ps(weight, _mm256_loadu_ps(r + 16), a2);
                a3 = _mm256_fmadd_ps(weight, _mm256_loadu_ps(r + 24), a3);
            }
            _mm256_storeu_ps(c + d, a0);
            _mm256_storeu_ps(c + d + 8, a1);
            _mm256_storeu_ps(c + d + 16, a2);
            _mm256_storeu_ps(c + d + 24, a3);
        }
        for (; d < D; d += 8) {
            const __m256i mask = ekv__mask_avx2(D - d < 8 ? D - d : 8);
            __m256 a = _mm256_maskload_ps(c + d, mask);
            for (j = 0; j < n; j++)
                a = _mm256_fmadd_ps(_mm256_broadcast_ss(w + j),
                                    _mm256_maskload_ps(rows + (size_t)j * d_stride + (size_t)d, mask), a);
            _mm256_maskstore_ps(c + d, mask, a);
        }
    }
}

/* 8 int8 values as floats (exact) */
static EKV__AVX2 __m256 ekv__int8_eight_avx2(const int8_t *in)
{
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)in)));
}

/* 8 f16 values as floats (exact) */
static EKV__AVX2 __m256 ekv__f16_eight_avx2(const uint16_t *in)
{
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)in));
}

/* A tile's logits of 2 rows x 4 heads (lanes: head 0 rows j, j + 1; head 1 rows j, j + 1;
   ...) into out0 + h * stride + j for h < 4; without `pair` (an odd last row) row j's
   only. */
static EKV__AVX2 void ekv__store_tile_avx2(__m256 sums, float *out0, size_t stride, int j, int pair)
{
    const __m128 low = _mm256_castps256_ps128(sums), high = _mm256_extractf128_ps(sums, 1);
    float *out = out0 + j;
    if (pair) {
        _mm_storel_pi((__m64 *)(void *)out, low);
        _mm_storeh_pi((__m64 *)(void *)(out + stride), low);
        _mm_storel_pi((__m64 *)(void *)(out + 2 * stride), high);
        _mm_storeh_pi((__m64 *)(void *)(out + 3 * stride), high);
    } else {
        _mm_store_ss(out, low);
        _mm_store_ss(out + stride, _mm_movehl_ps(low, low));
        _mm_store_ss(out + 2 * stride, high);
        _mm_store_ss(out + 3 * stride, _mm_movehl_ps(high, high));
    }
}

/* ekv__logits_avx2 on int8 or f16 rows (EIGHT: 8 stored values as floats, exact), each
   row converted once for 4 heads: tiles of 2 rows x 4 heads (8 dot products, 8 lanes
   wide, summed across lanes together as there); the
   logits of a tile leave as 4 pairs, one per head. Heads past a multiple of 4 by tiles of
   4 rows x 1 head. D is a multiple of 8. */
#define EKV__LOGITS_TILES_AVX2(NAME, TYPE, EIGHT)          \
static EKV__AVX2 void NAME(const float *q, int G, int D, const TYPE *rows, int n,                  \
                                            float *logits, size_t stride)                          \
{                                                                                                  \
    const size_t d_stride = (size_t)D;                                                             \
    int h = 0, j, d;                                                                               \
    for (; h + 4 <= G; h += 4) {                                                                   \
        const float *q0 = q + (size_t)h * d_stride, *q1 = q0 + d_stride, *q2 = q1 + d_stride,      \
                    *q3 = q2 + d_stride;                                                           \
        float *out0 = logits + (size_t)h * stride;                                                 \
        for (j = 0; j < n; j += 2) {                                                               \
            /* an odd last row is paired with itself; its second logits are not stored */          \
            const TYPE *r0 = rows + (size_t)j * d_stride, *r1 = j + 1 < n ? r0 + d_stride : r0;    \
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, \
                   b3 = a0, x, y, sums;                                                            \
            for (d = 0; d < D; d += 8) {                                                           \
                x = EIGHT(r0 + d);                                                                 \
                y = EIGHT(r1 + d);                                                                 \
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q0 + d), x, a0);                              \
                b0 = _mm256_fmadd_ps(_mm256_loadu_ps(q0 + d), y, b0);                              \
                a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q1 + d), x, a1);                              \
                b1 = _mm256_fmadd_ps(_mm256_loadu_ps(q1 + d), y, b1);                              \
                a2 = _mm256_fmadd_ps(_mm256_loadu_ps(q2 + d), x, a2);                              \
                b2 = _mm256_fmadd_ps(_mm256_loadu_ps(q2 + d), y, b2);                              \
                a3 = _mm256_fmadd_ps(_mm256_loadu_ps(q3 + d), x, a3);                              \
                b3 = _mm256_fmadd_ps(_mm256_loadu_ps(q3 + d), y, b3);                              \
            }                                                                                      \
            /* lanes: head 0 rows j, j+1; head 1 rows j, j+1; ... */                               \
            sums = ekv__sum8_avx2(a0, b0, a1, b1, a2, b2, a3, b3);                                 \
            ekv__store_tile_avx2(sums, out0, stride, j, j + 1 < n);                                \
        }                                                                                          \
    }                                                                                              \
    for (; h < G; h++) {                                                                           \
        const float *qh = q + (size_t)h * d_stride;                                                \
        float *out = logits + (size_t)h * stride;                                                  \
        for (j = 0; j < n; j++) {                                                                  \
            const TYPE *r = rows + (size_t)j * d_stride;                                           \
            __m256 a = _mm256_setzero_ps();                                                        \
            for (d = 0; d < D; d += 8)                                                             \
                a = _mm256_fmadd_ps(_mm256_loadu_ps(qh + d), EIGHT(r + d), a);                     \
            out[j] = ekv__sum_avx2(a);                                                             \
        }                                                                                          \
    }                                                                                              \
}
EKV__LOGITS_TILES_AVX2(ekv__logits_int8_avx2, int8_t, ekv__int8_eight_avx2)
EKV__LOGITS_TILES_AVX2(ekv__logits_f16_avx2, uint16_t, ekv__f16_eight_avx2)

/* ekv__accumulate_avx2 on int8 or f16 rows, each value converted once for 4 heads: tiles of 4
   heads x 16 columns, or 1 head x 8 columns. D is a multiple of 8. */
#define EKV__ACCUMULATE_TILES_AVX2(NAME, TYPE, EIGHT)      \
static EKV__AVX2 void NAME(float *acc, int G, int D, const TYPE *rows, int n,                   \
                                                const float *p, size_t stride)                  \
{                                                                                               \
    const size_t d_stride = (size_t)D;                                                          \
    int h = 0, j, d;                                                                            \
    for (; h + 4 <= G; h += 4) {                                                                \
        float *c0 = acc + (size_t)h * d_stride, *c1 = c0 + d_stride, *c2 = c1 + d_stride,       \
              *c3 = c2 + d_stride;                                                              \
        const float *w0 = p + (size_t)h * stride, *w1 = w0 + stride, *w2 = w1 + stride,         \
                    *w3 = w2 + stride;                                                          \
        for (d = 0; d + 16 <= D; d += 16) {                                                     \
            __m256 a0 = _mm256_loadu_ps(c0 + d), b0 = _mm256_loadu_ps(c0 + d + 8);              \
            __m256 a1 = _mm256_loadu_ps(c1 + d), b1 = _mm256_loadu_ps(c1 + d + 8);              \
            __m256 a2 = _mm256_loadu_ps(c2 + d), b2 = _mm256_loadu_ps(c2 + d + 8);              \
            __m256 a3 = _mm256_loadu_ps(c3 + d), b3 = _mm256_loadu_ps(c3 + d + 8);              \
            for (j = 0; j < n; j++) {                                                           \
                const TYPE *r = rows + (size_t)j * d_stride + (size_t)d;                        \
                const __m256 x = EIGHT(r), y = EIGHT(r + 8);                                    \
                __m256 w = _mm256_broadcast_ss(w0 + j);                                         \
                a0 = _mm256_fmadd_ps(w, x, a0); b0 = _mm256_fmadd_ps(w, y, b0);                 \
                w = _mm256_broadcast_ss(w1 + j);                                                \
                a1 = _mm256_fmadd_ps(w, x, a1); b1 = _mm256_fmadd_ps(w, y, b1);                 \
                w = _mm256_broadcast_ss(w2 + j);                                                \
                a2 = _mm256_fmadd_ps(w, x, a2); b2 = _mm256_fmadd_ps(w, y, b2);                 \
                w = _mm256_broadcast_ss(w3 + j);                                                \
                a3 = _mm256_fmadd_ps(w, x, a3); b3 = _mm256_fmadd_ps(w, y, b3);                 \
            }                                                                                   \
            _mm256_storeu_ps(c0 + d, a0); _mm256_storeu_ps(c0 + d + 8, b0);                     \
            _mm256_storeu_ps(c1 + d, a1); _mm256_storeu_ps(c1 + d + 8, b1);                     \
            _mm256_storeu_ps(c2 + d, a2); _mm256_storeu_ps(c2 + d + 8, b2);                     \
            _mm256_storeu_ps(c3 + d, a3); _mm256_storeu_ps(c3 + d + 8, b3);                     \
        }                                                                                       \
        for (; d < D; d += 8) {                                                                 \
            __m256 a0 = _mm256_loadu_ps(c0 + d), a1 = _mm256_loadu_ps(c1 + d);                  \
            __m256 a2 = _mm256_loadu_ps(c2 + d), a3 = _mm256_loadu_ps(c3 + d);                  \
            for (j = 0; j < n; j++) {                                                           \
                const __m256 x = EIGHT(rows + (size_t)j * d_stride + (size_t)d);                \
                a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(w0 + j), x, a0);                       \
                a1 = _mm256_fmadd_ps(_mm256_broadcast_ss(w1 + j), x, a1);                       \
                a2 = _mm256_fmadd_ps(_mm256_broadcast_ss(w2 + j), x, a2);                       \
                a3 = _mm256_fmadd_ps(_mm256_broadcast_ss(w3 + j), x, a3);                       \
            }                                                                                   \
            _mm256_storeu_ps(c0 + d, a0);                                                       \
            _mm256_storeu_ps(c1 + d, a1);                                                       \
            _mm256_storeu_ps(c2 + d, a2);                                                       \
            _mm256_storeu_ps(c3 + d, a3);                                                       \
        }                                                                                       \
    }                                                                                           \
    for (; h < G; h++) {                                                                        \
        float *c = acc + (size_t)h * d_stride;                                                  \
        const float *w = p + (size_t)h * stride;                                                \
        for (d = 0; d < D; d += 8) {                                                            \
            __m256 a = _mm256_loadu_ps(c + d);                                                  \
            for (j = 0; j < n; j++)                                                             \
                a = _mm256_fmadd_ps(_mm256_broadcast_ss(w + j),                                 \
                                    EIGHT(rows + (size_t)j * d_stride + (size_t)d), a);         \
            _mm256_storeu_ps(c + d, a);                                                         \
        }                                                                                       \
    }                                                                                           \
}
EKV__ACCUMULATE_TILES_AVX2(ekv__accumulate_int8_avx2, int8_t, ekv__int8_eight_avx2)
EKV__ACCUMULATE_TILES_AVX2(ekv__accumulate_f16_avx2, uint16_t, ekv__f16_eight_avx2)

/* The count f16 (scale, zero) halves of int4 rows as floats, once per block: the tiles
   then broadcast them from memory. */
static EKV__AVX2 void ekv__int4_pairs_avx2(const uint16_t *pairs, size_t count, float *out)
{
    size_t i = 0;
    for (; i + 8 <= count; i += 8)
        _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(
                                      (const __m128i *)(const void *)(pairs + i))));
    for (; i < count; i++) out[i] = ekv_f16_to_f32(pairs[i]);
}

/* 8 values of an int4 group in split order: the low (high = 0) or high nibbles of the 8
   bytes at `in`, q * scale + zero. One fused multiply-add is the same float as
   ekv_dequantize_row's multiply then add: scale is an f16 (11 significant bits) and q at
   most 15 (4 bits), so q * scale is exact and only the addition rounds. */
static EKV__AVX2 __m256 ekv__int4_eight_avx2(const unsigned char *in, int high, __m256 scale,
                                             __m256 zero)
{
    __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)in));
    v = high ? _mm256_srli_epi32(v, 4) : _mm256_and_si256(v, _mm256_set1_epi32(15));
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(v), scale, zero);
}

/* ekv__logits_int8_avx2's tiles on int4 rows (split order, q permuted alike): within a
   group of 32, step k takes the low (k < 2) or high nibbles of bytes 8 (k % 2) onward. */
static EKV__AVX2 void ekv__logits_int4_avx2(const float *q, int G, int D, const unsigned char *rows,
                                            const uint16_t *pairs, int n, float *spare,
                                            float *logits, size_t stride)
{
    const size_t row_bytes = (size_t)D / 2, groups = (size_t)D / EKV_INT4_GROUP;
    const size_t d_stride = (size_t)D;
    const float *scale_zero = spare;
    int h = 0, j, group, k;
    ekv__int4_pairs_avx2(pairs, (size_t)n * 2 * groups, spare);
    for (; h + 4 <= G; h += 4) {
        const float *q0 = q + (size_t)h * d_stride, *q1 = q0 + d_stride, *q2 = q1 + d_stride,
                    *q3 = q2 + d_stride;
        float *out0 = logits + (size_t)h * stride;
        for (j = 0; j < n; j += 2) {
            /* an odd last row is paired with itself; its second logits are not stored */
            const int other = j + 1 < n ? j + 1 : j;
            const unsigned char *r0 = rows + (size_t)j * row_bytes,
                                *r1 = rows + (size_t)other * row_bytes;
            const float *p0 = scale_zero + (size_t)j * 2 * groups,
                        *p1 = scale_zero + (size_t)other * 2 * groups;
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0,
                   b3 = a0, sums;
            for (group = 0; group < (int)groups; group++) {
                const __m256 s0 = _mm256_broadcast_ss(p0 + 2 * group);
                const __m256 z0 = _mm256_broadcast_ss(p0 + 2 * group + 1);
                const __m256 s1 = _mm256_broadcast_ss(p1 + 2 * group);
                const __m256 z1 = _mm256_broadcast_ss(p1 + 2 * group + 1);
                for (k = 0; k < 4; k++) {
                    const int d = group * EKV_INT4_GROUP + 8 * k, at = group * 16 + 8 * (k & 1);
                    const __m256 x = ekv__int4_eight_avx2(r0 + at, k >> 1, s0, z0);
                    const __m256 y = ekv__int4_eight_avx2(r1 + at, k >> 1, s1, z1);
                    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q0 + d), x, a0);
                    b0 = _mm256_fmadd_ps(_mm256_loadu_ps(q0 + d), y, b0);
                    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q1 + d), x, a1);
                    b1 = _mm256_fmadd_ps(_mm256_loadu_ps(q1 + d), y, b1);
                    a2 = _mm256_fmadd_ps(_mm256_loadu_ps(q2 + d), x, a2);
                    b2 = _mm256_fmadd_ps(_mm256_loadu_ps(q2 + d), y, b2);
                    a3 = _mm256_fmadd_ps(_mm256_loadu_ps(q3 + d), x, a3);
                    b3 = _mm256_fmadd_ps(_mm256_loadu_ps(q3 + d), y, b3);
                }
            }
            sums = ekv__sum8_avx2(a0, b0, a1, b1, a2, b2, a3, b3);
            ekv__store_tile_avx2(sums, out0, stride, j, j + 1 < n);
        }
    }
    for (; h < G; h++) {
        const float *qh = q + (size_t)h * d_stride;
        float *out = logits + (size_t)h * stride;
        for (j = 0; j < n; j++) {
            const unsigned char *r = rows + (size_t)j * row_bytes;
            const float *pj = scale_zero + (size_t)j * 2 * groups;
            __m256 a = _mm256_setzero_ps();
            for (group = 0; group < (int)groups; group++) {
                const __m256 s0 = _mm256_broadcast_ss(pj + 2 * group);
                const __m256 z0 = _mm256_broadcast_ss(pj + 2 * group + 1);
                for (k = 0; k < 4; k++)
                    a = _mm256_fmadd_ps(_mm256_loadu_ps(qh + group * EKV_INT4_GROUP + 8 * k),
                                        ekv__int4_eight_avx2(r + group * 16 + 8 * (k & 1), k >> 1,
                                                             s0, z0),
                                        a);
            }
            out[j] = ekv__sum_avx2(a);
        }
    }
}

/* ekv__accumulate_int8_avx2's tiles on int4 rows (split order): columns [d, d + 16) of a
   group are its low (first half) or high nibbles. */
static EKV__AVX2 void ekv__accumulate_int4_avx2(float *acc, int G, int D, const unsigned char *rows,
                                                const uint16_t *pairs, int n, float *spare,
                                                const float *p, size_t stride)
{
    const size_t row_bytes = (size_t)D / 2, groups = (size_t)D / EKV_INT4_GROUP;
    const size_t d_stride = (size_t)D;
    const float *scale_zero = spare;
    int h = 0, j, d;
    ekv__int4_pairs_avx2(pairs, (size_t)n * 2 * groups, spare);
    for (; h + 4 <= G; h += 4) {
        float *c0 = acc + (size_t)h * d_stride, *c1 = c0 + d_stride, *c2 = c1 + d_stride,
              *c3 = c2 + d_stride;
        const float *w0 = p + (size_t)h * stride, *w1 = w0 + stride, *w2 = w1 + stride,
                    *w3 = w2 + stride;
        for (d = 0; d < D; d += 16) {
            const int group = d / EKV_INT4_GROUP, high = (d / 16) & 1;
            __m256 a0 = _mm256_loadu_ps(c0 + d), b0 = _mm256_loadu_ps(c0 + d + 8);
            __m256 a1 = _mm256_loadu_ps(c1 + d), b1 = _mm256_loadu_ps(c1 + d + 8);
            __m256 a2 = _mm256_loadu_ps(c2 + d), b2 = _mm256_loadu_ps(c2 + d + 8);
            __m256 a3 = _mm256_loadu_ps(c3 + d), b3 = _mm256_loadu_ps(c3 + d + 8);
            for (j = 0; j < n; j++) {
                const unsigned char *r = rows + (size_t)j * row_bytes + (size_t)group * 16;
                const float *sz = scale_zero + ((size_t)j * groups + (size_t)group) * 2;
                const __m256 scale = _mm256_broadcast_ss(sz), zero = _mm256_broadcast_ss(sz + 1);
                __m256 x, y, w;
                x = ekv__int4_eight_avx2(r, high, scale, zero);
                y = ekv__int4_eight_avx2(r + 8, high, scale, zero);
                w = _mm256_broadcast_ss(w0 + j);
                a0 = _mm256_fmadd_ps(w, x, a0); b0 = _mm256_fmadd_ps(w, y, b0);
                w = _mm256_broadcast_ss(w1 + j);
                a1 = _mm256_fmadd_ps(w, x, a1); b1 = _mm256_fmadd_ps(w, y, b1);
                w = _mm256_broadcast_ss(w2 + j);
                a2 = _mm256_fmadd_ps(w, x, a2); b2 = _mm256_fmadd_ps(w, y, b2);
                w = _mm256_broadcast_ss(w3 + j);
                a3 = _mm256_fmadd_ps(w, x, a3); b3 = _mm256_fmadd_ps(w, y, b3);
            }
            _mm256_storeu_ps(c0 + d, a0); _mm256_storeu_ps(c0 + d + 8, b0);
            _mm256_storeu_ps(c1 + d, a1); _mm256_storeu_ps(c1 + d + 8, b1);
            _mm256_storeu_ps(c2 + d, a2); _mm256_storeu_ps(c2 + d + 8, b2);
            _mm256_storeu_ps(c3 + d, a3); _mm256_storeu_ps(c3 + d + 8, b3);
        }
    }
    for (; h < G; h++) {
        float *c = acc + (size_t)h * d_stride;
        const float *w = p + (size_t)h * stride;
        for (d = 0; d < D; d += 16) {
            const int group = d / EKV_INT4_GROUP, high = (d / 16) & 1;
            __m256 a = _mm256_loadu_ps(c + d), b = _mm256_loadu_ps(c + d + 8);
            for (j = 0; j < n; j++) {
                const unsigned char *r = rows + (size_t)j * row_bytes + (size_t)group * 16;
                const __m256 weight = _mm256_broadcast_ss(w + j);
                const float *sz = scale_zero + ((size_t)j * groups + (size_t)group) * 2;
                const __m256 scale = _mm256_broadcast_ss(sz), zero = _mm256_broadcast_ss(sz + 1);
                a = _mm256_fmadd_ps(weight, ekv__int4_eight_avx2(r, high, scale, zero), a);
                b = _mm256_fmadd_ps(weight, ekv__int4_eight_avx2(r + 8, high, scale, zero), b);
            }
            _mm256_storeu_ps(c + d, a);
            _mm256_storeu_ps(c + d + 8, b);
        }
    }
}

static const ekv__cpu_path ekv__cpu_avx2 = {"avx2", 1, ekv__decode_avx2, ekv__logits_avx2,
                                            ekv__exp_sum_avx2, ekv__accumulate_avx2,
                                            ekv__logits_int8_avx2, ekv__accumulate_int8_avx2,
                                            ekv__logits_f16_avx2, ekv__accumulate_f16_avx2,
                                            ekv__logits_int4_avx2, ekv__accumulate_int4_avx2};

/* -- AVX-512 (x86-64): the same tiles 16 lanes wide, half the FMA instructions; int4
   through a 16-entry table per group (vpermps) -- */
#define EKV__AVX512 __attribute__((target("avx512f,avx2,fma,f16c")))
#if defined(__GNUC__) && !defined(__clang__)
/* gcc 12.2's AVX-512 intrinsics start from a self-initialized "undefined" vector, which
   -Wuninitialized reports in C++ once inlined (gcc bug 105593, fixed in 12.3 and 13) */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

/* the lower `count` lanes */
static EKV__AVX512 __mmask16 ekv__mask_avx512(int count)
{
    return (__mmask16)((1u << count) - 1u);
}

/* The 8 sums of the lanes of v0..v7 in lanes 0..7: 512-bit shuffles only (gcc 12's
   512-to-256-bit casts warn under -Wuninitialized in C++). */
static EKV__AVX512 __m512 ekv__sum8_avx512(__m512 v0, __m512 v1, __m512 v2, __m512 v3, __m512 v4,
                                           __m512 v5, __m512 v6, __m512 v7)
{
    /* halves: [v0 | v1] as two 256-bit sums, and so on */
    const __m512 a = _mm512_add_ps(_mm512_shuffle_f32x4(v0, v1, 0x44), _mm512_shuffle_f32x4(v0, v1, 0xee));
    const __m512 b = _mm512_add_ps(_mm512_shuffle_f32x4(v2, v3, 0x44), _mm512_shuffle_f32x4(v2, v3, 0xee));
    const __m512 c = _mm512_add_ps(_mm512_shuffle_f32x4(v4, v5, 0x44), _mm512_shuffle_f32x4(v4, v5, 0xee));
    const __m512 d = _mm512_add_ps(_mm512_shuffle_f32x4(v6, v7, 0x44), _mm512_shuffle_f32x4(v6, v7, 0xee));
    /* quarters: 128-bit lane i holds 4 partial sums of v_i (e) and of v_(4+i) (f) */
    const __m512 e = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x88), _mm512_shuffle_f32x4(a, b, 0xdd));
    const __m512 f = _mm512_add_ps(_mm512_shuffle_f32x4(c, d, 0x88), _mm512_shuffle_f32x4(c, d, 0xdd));
    /* within each 128-bit lane i: sum v_i at 0 and sum v_(4+i) at 1 */
    const __m512 g = _mm512_add_ps(_mm512_shuffle_ps(e, f, 0x88), _mm512_shuffle_ps(e, f, 0xdd));
    const __m512 h = _mm512_add_ps(_mm512_shuffle_ps(g, g, 0x88), _mm512_shuffle_ps(g, g, 0xdd));
    return _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 0, 4, 8, 12, 1, 5, 9, 13), h);
}

/* The sum of the lanes of v (as the tiles do it, without gcc 12's warning casts). */
static EKV__AVX512 float ekv__sum_avx512(__m512 v)
{
    const __m512 zero = _mm512_setzero_ps();
    float lanes[16];
    _mm512_storeu_ps(lanes, ekv__sum8_avx512(v, zero, zero, zero, zero, zero, zero, zero));
    return lanes[0];
}

/* The 32 values of an int4 group in split order (see ekv__cpu_path): the group's 16
   possible values, q * scale + zero as ekv_dequantize_row computes it, looked up by each
   nibble (vpermps reads the low 4 bits of each index, so the low nibbles need no mask).
   The scale and zero come as floats from memory: broadcasts from memory use the load
   ports, not the shuffle port the lookups are bound by. */
static EKV__AVX512 void ekv__int4_group_avx512(const unsigned char *in, const float *scale_zero,
                                               float *out)
{
    const __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(const void *)in));
    const __m512 codes = _mm512_setr_ps(0.0f, 1.0f, 2.0f, 3.0f, 4.0f, 5.0f, 6.0f, 7.0f, 8.0f, 9.0f,
                                        10.0f, 11.0f, 12.0f, 13.0f, 14.0f, 15.0f);
    const __m512 table = _mm512_add_ps(_mm512_mul_ps(codes, _mm512_set1_ps(scale_zero[0])),
                                       _mm512_set1_ps(scale_zero[1]));
    _mm512_storeu_ps(out, _mm512_permutexvar_ps(bytes, table));
    _mm512_storeu_ps(out + 16, _mm512_permutexvar_ps(_mm512_srli_epi32(bytes, 4), table));
}

/* 16 e4m3 codes as floats, as ekv__fp8_sixteen_avx2 does, in 32-bit lanes packed to f16
   by vpmovdw. */
static EKV__AVX512 __m512 ekv__fp8_sixteen_avx512(const unsigned char *in)
{
    const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(const void *)in));
    const __m512i magnitude = _mm512_and_si512(v, _mm512_set1_epi32(0x7f));
    __m512i half = _mm512_or_si512(_mm512_slli_epi32(magnitude, 7),
                                   _mm512_slli_epi32(_mm512_and_si512(v, _mm512_set1_epi32(0x80)), 8));
    half = _mm512_mask_or_epi32(half, _mm512_cmpeq_epi32_mask(magnitude, _mm512_set1_epi32(0x7f)), half,
                                _mm512_set1_epi32(0x7e00));
    return _mm512_mul_ps(_mm512_cvtph_ps(_mm512_cvtepi32_epi16(half)), _mm512_set1_ps(256.0f));
}

static EKV__AVX512 void ekv__decode_avx512(ekv_dtype dtype, const unsigned char *values,
                                           const unsigned char *scales, int n, int D, float *out)
{
    const size_t count = (size_t)n * (size_t)D;
    size_t i = 0;
    int j;
    float pair_floats[2 * 1024 / EKV_INT4_GROUP]; /* head_dim <= 1024 */
    switch (dtype) {
    case EKV_DTYPE_F16:
        for (; i + 16 <= count; i += 16)
            _mm512_storeu_ps(out + i, _mm512_cvtph_ps(_mm256_loadu_si256(
                                          (const __m256i *)(const void *)(values + 2 * i))));
        break;
    case EKV_DTYPE_BF16:
        for (; i + 16 <= count; i += 16)
            _mm512_storeu_ps(out + i, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(
                _mm256_loadu_si256((const __m256i *)(const void *)(values + 2 * i))), 16)));
        break;
    case EKV_DTYPE_INT8:
        for (; i + 16 <= count; i += 16)
            _mm512_storeu_ps(out + i, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
                                          _mm_loadu_si128((const __m128i *)(const void *)(values + i)))));
        break;
    case EKV_DTYPE_FP8:
        for (; i + 16 <= count; i += 16) _mm512_storeu_ps(out + i, ekv__fp8_sixteen_avx512(values + i));
        break;
    case EKV_DTYPE_INT4: {
        const size_t row = ekv_dtype_row_bytes(dtype, D), scale = ekv_dtype_row_scale_bytes(dtype, D);
        for (j = 0; j < n; j++) {
            const unsigned char *in = values + (size_t)j * row;
            const uint16_t *pairs = (const uint16_t *)(const void *)(scales + (size_t)j * scale);
            float *o = out + (size_t)j * (size_t)D;
            int group;
            if (D % EKV_INT4_GROUP != 0) {
                ekv_dequantize_row(dtype, in, pairs, D, 1.0f, o);
                continue;
            }
            /* the row's f16 scale and zero pairs as floats, 8 at a time by F16C */
            for (group = 0; group + 4 <= D / EKV_INT4_GROUP; group += 4)
                _mm256_storeu_ps(pair_floats + 2 * group, _mm256_cvtph_ps(_mm_loadu_si128(
                                                              (const __m128i *)(const void *)(pairs + 2 * group))));
            for (; group < D / EKV_INT4_GROUP; group++) {
                pair_floats[2 * group] = ekv_f16_to_f32(pairs[2 * group]);
                pair_floats[2 * group + 1] = ekv_f16_to_f32(pairs[2 * group + 1]);
            }
            for (group = 0; group < D / EKV_INT4_GROUP; group++)
                ekv__int4_group_avx512(in + group * (EKV_INT4_GROUP / 2), pair_floats + 2 * group,
                                       o + group * EKV_INT4_GROUP);
        }
        return;
    }
    default:
        break;
    }
    if (i < count) {
        const size_t bits = (size_t)ekv_dtype_info(dtype)->bits;
        for (; i < count; i++) ekv__decode_portable(dtype, values + i * bits / 8, NULL, 1, 1, out + i);
    }
}

/* As ekv__logits_avx2, 16 lanes: 4 rows x 2 heads, or 8 rows x 1 head; any head_dim (a
   masked tail). ekv__logits_avx512 runs it where its 2 x 4 tiles do not fit. */
static EKV__AVX512 void ekv__logits_pairs_avx512(const float *q, int G, int D, const float *rows,
                                                 int n, float *logits, size_t stride)
{
    const int full = D & ~15, rest = D - full;
    const __mmask16 mask = ekv__mask_avx512(rest);
    const size_t d_stride = (size_t)D;
    int h = 0, j, d;
    for (; h + 2 <= G; h += 2) {
        const float *q0 = q + (size_t)h * d_stride, *q1 = q0 + d_stride;
        float *out0 = logits + (size_t)h * stride, *out1 = out0 + stride;
        for (j = 0; j + 4 <= n; j += 4) {
            const float *r0 = rows + (size_t)j * d_stride, *r1 = r0 + d_stride, *r2 = r1 + d_stride,
                        *r3 = r2 + d_stride;
            __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0,
                   b3 = a0, x, y0, y1, sums;
            for (d = 0; d < full; d += 16) {
                y0 = _mm512_loadu_ps(q0 + d);
                y1 = _mm512_loadu_ps(q1 + d);
                x = _mm512_loadu_ps(r0 + d); a0 = _mm512_fmadd_ps(y0, x, a0); b0 = _mm512_fmadd_ps(y1, x, b0);
                x = _mm512_loadu_ps(r1 + d); a1 = _mm512_fmadd_ps(y0, x, a1); b1 = _mm512_fmadd_ps(y1, x, b1);
                x = _mm512_loadu_ps(r2 + d); a2 = _mm512_fmadd_ps(y0, x, a2); b2 = _mm512_fmadd_ps(y1, x, b2);
                x = _mm512_loadu_ps(r3 + d); a3 = _mm512_fmadd_ps(y0, x, a3); b3 = _mm512_fmadd_ps(y1, x, b3);
            }
            if (rest) {
                y0 = _mm512_maskz_loadu_ps(mask, q0 + d);
                y1 = _mm512_maskz_loadu_ps(mask, q1 + d);
                x = _mm512_maskz_loadu_ps(mask, r0 + d); a0 = _mm512_fmadd_ps(y0, x, a0); b0 = _mm512_fmadd_ps(y1, x, b0);
                x = _mm512_maskz_loadu_ps(mask, r1 + d); a1 = _mm512_fmadd_ps(y0, x, a1); b1 = _mm512_fmadd_ps(y1, x, b1);
                x = _mm512_maskz_loadu_ps(mask, r2 + d); a2 = _mm512_fmadd_ps(y0, x, a2); b2 = _mm512_fmadd_ps(y1, x, b2);
                x = _mm512_maskz_loadu_ps(mask, r3 + d); a3 = _mm512_fmadd_ps(y0, x, a3); b3 = _mm512_fmadd_ps(y1, x, b3);
            }
            sums = ekv__sum8_avx512(a0, a1, a2, a3, b0, b1, b2, b3);
            _mm512_mask_storeu_ps(out0 + j, 0x000f, sums);
            _mm512_mask_compressstoreu_ps(out1 + j, 0x00f0, sums);
        }
        for (; j < n; j++) {
            const float *r = rows + (size_t)j * d_stride;
            __m512 a = _mm512_setzero_ps(), b = a, x;
            for (d = 0; d < full; d += 16) {
                x = _mm512_loadu_ps(r + d);
                a = _mm512_fmadd_ps(_mm512_loadu_ps(q0 + d), x, a);
                b = _mm512_fmadd_ps(_mm512_loadu_ps(q1 + d), x, b);
            }
            if (rest) {
                x = _mm512_maskz_loadu_ps(mask, r + d);
                a = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, q0 + d), x, a);
                b = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, q1 + d), x, b);
            }
            out0[j] = ekv__sum_avx512(a);
            out1[j] = ekv__sum_avx512(b);
        }
    }
    for (; h < G; h++) {
        const float *qh = q + (size_t)h * d_stride;
        float *out = logits + (size_t)h * stride;
        for (j = 0; j + 8 <= n; j += 8) {
            const float *r0 = rows + (size_t)j * d_stride, *r1 = r0 + d_stride, *r2 = r1 + d_stride,
                        *r3 = r2 + d_stride, *r4 = r3 + d_stride, *r5 = r4 + d_stride,
                        *r6 = r5 + d_stride, *r7 = r6 + d_stride;
            __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0,
                   a7 = a0, y;
            for (d = 0; d < full; d += 16) {
                y = _mm512_loadu_ps(qh + d);
                a0 = _mm512_fmadd_ps(y, _mm512_loadu_ps(r0 + d), a0);
                a1 = _mm512_fmadd_ps(y, _mm512_loadu_ps(r1 + d), a1);
                a2 = _mm512_fmadd_ps(y, _mm512_loadu_ps(r2 + d), a2);
                a3 = _mm512_fmadd_ps(y, _mm512_loadu_ps(r3 + d), a3);
                a4 = _mm512_fmadd_ps(y, _mm512_loadu_ps(r4 + d), a4);
                a5 = _mm512_fmadd_ps(y, _mm512_loadu_ps(r5 + d), a5);
                a6 = _mm512_fmadd_ps(y, _mm512_loadu_ps(r6 + d), a6);
                a7 = _mm512_fmadd_ps(y, _mm512_loadu_ps(r7 + d), a7);
            }
            if (rest) {
                y = _mm512_maskz_loadu_ps(mask, qh + d);
                a0 = _mm512_fmadd_ps(y, _mm512_maskz_loadu_ps(mask, r0 + d), a0);
                a1 = _mm512_fmadd_ps(y, _mm512_maskz_loadu_ps(mask, r1 + d), a1);
                a2 = _mm512_fmadd_ps(y, _mm512_maskz_loadu_ps(mask, r2 + d), a2);
                a3 = _mm512_fmadd_ps(y, _mm512_maskz_loadu_ps(mask, r3 + d), a3);
                a4 = _mm512_fmadd_ps(y, _mm512_maskz_loadu_ps(mask, r4 + d), a4);
                a5 = _mm512_fmadd_ps(y, _mm512_maskz_loadu_ps(mask, r5 + d), a5);
                a6 = _mm512_fmadd_ps(y, _mm512_maskz_loadu_ps(mask, r6 + d), a6);
                a7 = _mm512_fmadd_ps(y, _mm512_maskz_loadu_ps(mask, r7 + d), a7);
            }
            _mm512_mask_storeu_ps(out + j, 0x00ff, ekv__sum8_avx512(a0, a1, a2, a3, a4, a5, a6, a7));
        }
        for (; j < n; j++) {
            const float *r = rows + (size_t)j * d_stride;
            __m512 a = _mm512_setzero_ps();
            for (d = 0; d < full; d += 16)
                a = _mm512_fmadd_ps(_mm512_loadu_ps(qh + d), _mm512_loadu_ps(r + d), a);
            if (rest)
                a = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, qh + d), _mm512_maskz_loadu_ps(mask, r + d), a);
            out[j] = ekv__sum_avx512(a);
        }
    }
}

static EKV__AVX512 __m512 ekv__exp_avx512(__m512 x)
{
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(EKV__LOG2E)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(EKV__EXP_C1), x);
    __m512 p = _mm512_set1_ps(EKV__EXP_P0);
    __m512i two_n;
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(EKV__EXP_C2), r);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EKV__EXP_P1));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EKV__EXP_P2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EKV__EXP_P3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EKV__EXP_P4));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EKV__EXP_P5));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    two_n = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    p = _mm512_mul_ps(p, _mm512_castsi512_ps(two_n));
    /* below the lowest: 0; NaN compares false and stays */
    return _mm512_maskz_mov_ps((__mmask16)~_mm512_cmp_ps_mask(x, _mm512_set1_ps(EKV__EXP_LOWEST), _CMP_LT_OQ), p);
}

static EKV__AVX512 float ekv__exp_sum_avx512(float *x, int n, float max)
{
    const __m512 m = _mm512_set1_ps(max);
    __m512 sum = _mm512_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 e = ekv__exp_avx512(_mm512_sub_ps(_mm512_loadu_ps(x + i), m));
        _mm512_storeu_ps(x + i, e);
        sum = _mm512_add_ps(sum, e);
    }
    if (i < n) {
        const __mmask16 mask = ekv__mask_avx512(n - i);
        const __m512 e = ekv__exp_avx512(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, x + i), m));
        _mm512_mask_storeu_ps(x + i, mask, e);
        sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(mask, e));
    }
    return ekv__sum_avx512(sum);
}

/* As ekv__accumulate_avx2, 16 lanes: 4 heads x 32 columns, or 1 head x 64 columns; a tail
   narrower than 16 columns by masked loads and stores. */
static EKV__AVX512 void ekv__accumulate_avx512(float *acc, int G, int D, const float *rows, int n,
                                               const float *p, size_t stride)
{
    const size_t d_stride = (size_t)D;
    int h = 0, j, d;
    for (; h + 4 <= G; h += 4) {
        float *c0 = acc + (size_t)h * d_stride, *c1 = c0 + d_stride, *c2 = c1 + d_stride,
              *c3 = c2 + d_stride;
        const float *w0 = p + (size_t)h * stride, *w1 = w0 + stride, *w2 = w1 + stride,
                    *w3 = w2 + stride;
        for (d = 0; d + 32 <= D; d += 32) {
            __m512 a0 = _mm512_loadu_ps(c0 + d), b0 = _mm512_loadu_ps(c0 + d + 16);
            __m512 a1 = _mm512_loadu_ps(c1 + d), b1 = _mm512_loadu_ps(c1 + d + 16);
            __m512 a2 = _mm512_loadu_ps(c2 + d), b2 = _mm512_loadu_ps(c2 + d + 16);
            __m512 a3 = _mm512_loadu_ps(c3 + d), b3 = _mm512_loadu_ps(c3 + d + 16);
            for (j = 0; j < n; j++) {
                const float *r = rows + (size_t)j * d_stride + (size_t)d;
                const __m512 x = _mm512_loadu_ps(r), y = _mm512_loadu_ps(r + 16);
                __m512 w = _mm512_set1_ps(w0[j]);
                a0 = _mm512_fmadd_ps(w, x, a0); b0 = _mm512_fmadd_ps(w, y, b0);
                w = _mm512_set1_ps(w1[j]);
                a1 = _mm512_fmadd_ps(w, x, a1); b1 = _mm512_fmadd_ps(w, y, b1);
                w = _mm512_set1_ps(w2[j]);
                a2 = _mm512_fmadd_ps(w, x, a2); b2 = _mm512_fmadd_ps(w, y, b2);
                w = _mm512_set1_ps(w3[j]);
                a3 = _mm512_fmadd_ps(w, x, a3); b3 = _mm512_fmadd_ps(w, y, b3);
            }
            _mm512_storeu_ps(c0 + d, a0); _mm512_storeu_ps(c0 + d + 16, b0);
            _mm512_storeu_ps(c1 + d, a1); _mm512_storeu_ps(c1 + d + 16, b1);
            _mm512_storeu_ps(c2 + d, a2); _mm512_storeu_ps(c2 + d + 16, b2);
            _mm512_storeu_ps(c3 + d, a3); _mm512_storeu_ps(c3 + d + 16, b3);
        }
        for (; d < D; d += 16) {
            const __mmask16 mask = ekv__mask_avx512(D - d < 16 ? D - d : 16);
            __m512 a0 = _mm512_maskz_loadu_ps(mask, c0 + d), a1 = _mm512_maskz_loadu_ps(mask, c1 + d);
            __m512 a2 = _mm512_maskz_loadu_ps(mask, c2 + d), a3 = _mm512_maskz_loadu_ps(mask, c3 + d);
            for (j = 0; j < n; j++) {
                const __m512 x = _mm512_maskz_loadu_ps(mask, rows + (size_t)j * d_stride + (size_t)d);
                a0 = _mm512_fmadd_ps(_mm512_set1_ps(w0[j]), x, a0);
                a1 = _mm512_fmadd_ps(_mm512_set1_ps(w1[j]), x, a1);
                a2 = _mm512_fmadd_ps(_mm512_set1_ps(w2[j]), x, a2);
                a3 = _mm512_fmadd_ps(_mm512_set1_ps(w3[j]), x, a3);
            }
            _mm512_mask_storeu_ps(c0 + d, mask, a0);
            _mm512_mask_storeu_ps(c1 + d, mask, a1);
            _mm512_mask_storeu_ps(c2 + d, mask, a2);
            _mm512_mask_storeu_ps(c3 + d, mask, a3);
        }
    }
    for (; h < G; h++) {
        float *c = acc + (size_t)h * d_stride;
        const float *w = p + (size_t)h * stride;
        for (d = 0; d + 64 <= D; d += 64) {
            __m512 a0 = _mm512_loadu_ps(c + d), a1 = _mm512_loadu_ps(c + d + 16);
            __m512 a2 = _mm512_loadu_ps(c + d + 32), a3 = _mm512_loadu_ps(c + d + 48);
            for (j = 0; j < n; j++) {
                const float *r = rows + (size_t)j * d_stride + (size_t)d;
                const __m512 weight = _mm512_set1_ps(w[j]);
                a0 = _mm512_fmadd_ps(weight, _mm512_loadu_ps(r), a0);
                a1 = _mm512_fmadd_ps(weight, _mm512_loadu_ps(r + 16), a1);
                a2 = _mm512_fmadd_ps(weight, _mm512_loadu_ps(r + 32), a2);
                a3 = _mm512_fmadd_ps(weight, _mm512_loadu_ps(r + 48), a3);
            }
            _mm512_storeu_ps(c + d, a0);
            _mm512_storeu_ps(c + d + 16, a1);
            _mm512_storeu_ps(c + d + 32, a2);
            _mm512_storeu_ps(c + d + 48, a3);
        }
        for (; d < D; d += 16) {
            const __mmask16 mask = ekv__mask_avx512(D - d < 16 ? D - d : 16);
            __m512 a = _mm512_maskz_loadu_ps(mask, c + d);
            for (j = 0; j < n; j++)
                a = _mm512_fmadd_ps(_mm512_set1_ps(w[j]),
                                    _mm512_maskz_loadu_ps(mask, rows + (size_t)j * d_stride + (size_t)d), a);
            _mm512_mask_storeu_ps(c + d, mask, a);
        }
    }
}

/* The 16 lanes of v as 8: the upper 256 bits added to the lower. */
static EKV__AVX512 __m256 ekv__fold_avx512(__m512 v)
{
    return _mm256_add_ps(_mm512_castps512_ps256(v),
                         _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
}

/* The 8 sums of the lanes of v0..v7 in lanes 0..7, as ekv__sum8_avx2 gives them: each
   folded to 8 lanes first. */
static EKV__AVX512 __m256 ekv__sum8_folded_avx512(__m512 v0, __m512 v1, __m512 v2, __m512 v3,
                                                  __m512 v4, __m512 v5, __m512 v6, __m512 v7)
{
    return ekv__sum8_avx2(ekv__fold_avx512(v0), ekv__fold_avx512(v1), ekv__fold_avx512(v2),
                          ekv__fold_avx512(v3), ekv__fold_avx512(v4), ekv__fold_avx512(v5),
                          ekv__fold_avx512(v6), ekv__fold_avx512(v7));
}

/* 16 int8 values as floats (exact) */
static EKV__AVX512 __m512 ekv__int8_sixteen_avx512(const int8_t *in)
{
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(const void *)in)));
}

/* 16 f16 values as floats (exact) */
static EKV__AVX512 __m512 ekv__f16_sixteen_avx512(const uint16_t *in)
{
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)in));
}

/* ekv__logits_int8_avx2's tiles of 2 rows x 4 heads, 16 lanes wide: each row converted
   once for 4 heads, the 8 dot products folded to 8 lanes and summed as there. Heads past a
   multiple of 4, or a head_dim not a multiple of 16, go to NARROW (AVX2's function for
   int8 and f16, ekv__logits_pairs_avx512 for f32). */
#define EKV__LOGITS_TILES_AVX512(NAME, TYPE, SIXTEEN, NARROW)                                      \
static EKV__AVX512 void NAME(const float *q, int G, int D, const TYPE *rows, int n,                \
                             float *logits, size_t stride)                                         \
{                                                                                                  \
    const size_t d_stride = (size_t)D;                                                             \
    const int tiled = D % 16 == 0 ? G & ~3 : 0;                                                    \
    int h, j, d;                                                                                   \
    for (h = 0; h < tiled; h += 4) {                                                               \
        const float *q0 = q + (size_t)h * d_stride, *q1 = q0 + d_stride, *q2 = q1 + d_stride,      \
                    *q3 = q2 + d_stride;                                                           \
        float *out0 = logits + (size_t)h * stride;                                                 \
        for (j = 0; j < n; j += 2) {                                                               \
            /* an odd last row is paired with itself; its second logits are not stored */          \
            const TYPE *r0 = rows + (size_t)j * d_stride, *r1 = j + 1 < n ? r0 + d_stride : r0;    \
            __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, \
                   b3 = a0, x, y;                                                                  \
            __m256 sums;                                                                           \
            for (d = 0; d < D; d += 16) {                                                          \
                x = SIXTEEN(r0 + d);                                                               \
                y = SIXTEEN(r1 + d);                                                               \
                a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q0 + d), x, a0);                              \
                b0 = _mm512_fmadd_ps(_mm512_loadu_ps(q0 + d), y, b0);                              \
                a1 = _mm512_fmadd_ps(_mm512_loadu_ps(q1 + d), x, a1);                              \
                b1 = _mm512_fmadd_ps(_mm512_loadu_ps(q1 + d), y, b1);                              \
                a2 = _mm512_fmadd_ps(_mm512_loadu_ps(q2 + d), x, a2);                              \
                b2 = _mm512_fmadd_ps(_mm512_loadu_ps(q2 + d), y, b2);                              \
                a3 = _mm512_fmadd_ps(_mm512_loadu_ps(q3 + d), x, a3);                              \
                b3 = _mm512_fmadd_ps(_mm512_loadu_ps(q3 + d), y, b3);                              \
            }                                                                                      \
            /* lanes: head 0 rows j, j+1; head 1 rows j, j+1; ... */                               \
            sums = ekv__sum8_folded_avx512(a0, b0, a1, b1, a2, b2, a3, b3);                        \
            ekv__store_tile_avx2(sums, out0, stride, j, j + 1 < n);                                \
        }                                                                                          \
    }                                                                                              \
    if (tiled < G)                                                                                 \
        NARROW(q + (size_t)tiled * d_stride, G - tiled, D, rows, n, logits + (size_t)tiled * stride, \
               stride);                                                                            \
}
/* 16 floats */
static EKV__AVX512 __m512 ekv__f32_sixteen_avx512(const float *in)
{
    return _mm512_loadu_ps(in);
}

EKV__LOGITS_TILES_AVX512(ekv__logits_avx512, float, ekv__f32_sixteen_avx512,
                         ekv__logits_pairs_avx512)
EKV__LOGITS_TILES_AVX512(ekv__logits_int8_avx512, int8_t, ekv__int8_sixteen_avx512,
                         ekv__logits_int8_avx2)
EKV__LOGITS_TILES_AVX512(ekv__logits_f16_avx512, uint16_t, ekv__f16_sixteen_avx512,
                         ekv__logits_f16_avx2)

/* ekv__accumulate_int8_avx2's tiles of 4 heads x 32 columns, 16 lanes wide: each value
   converted once for 4 heads. Heads past a multiple of 4, or a head_dim not a multiple of
   32, go to the AVX2 function (NARROW). */
#define EKV__ACCUMULATE_TILES_AVX512(NAME, TYPE, SIXTEEN, NARROW)                                 \
static EKV__AVX512 void NAME(float *acc, int G, int D, const TYPE *rows, int n, const float *p,  \
                             size_t stride)                                                      \
{                                                                                                \
    const size_t d_stride = (size_t)D;                                                           \
    const int tiled = D % 32 == 0 ? G & ~3 : 0;                                                  \
    int h, j, d;                                                                                 \
    for (h = 0; h < tiled; h += 4) {                                                             \
        float *c0 = acc + (size_t)h * d_stride, *c1 = c0 + d_stride, *c2 = c1 + d_stride,        \
              *c3 = c2 + d_stride;                                                               \
        const float *w0 = p + (size_t)h * stride, *w1 = w0 + stride, *w2 = w1 + stride,          \
                    *w3 = w2 + stride;                                                           \
        for (d = 0; d < D; d += 32) {                                                            \
            __m512 a0 = _mm512_loadu_ps(c0 + d), b0 = _mm512_loadu_ps(c0 + d + 16);              \
            __m512 a1 = _mm512_loadu_ps(c1 + d), b1 = _mm512_loadu_ps(c1 + d + 16);              \
            __m512 a2 = _mm512_loadu_ps(c2 + d), b2 = _mm512_loadu_ps(c2 + d + 16);              \
            __m512 a3 = _mm512_loadu_ps(c3 + d), b3 = _mm512_loadu_ps(c3 + d + 16);              \
            for (j = 0; j < n; j++) {                                                            \
                const TYPE *r = rows + (size_t)j * d_stride + (size_t)d;                         \
                const __m512 x = SIXTEEN(r), y = SIXTEEN(r + 16);                                \
                __m512 w = _mm512_set1_ps(w0[j]);                                                \
                a0 = _mm512_fmadd_ps(w, x, a0); b0 = _mm512_fmadd_ps(w, y, b0);                  \
                w = _mm512_set1_ps(w1[j]);                                                       \
                a1 = _mm512_fmadd_ps(w, x, a1); b1 = _mm512_fmadd_ps(w, y, b1);                  \
                w = _mm512_set1_ps(w2[j]);                                                       \
                a2 = _mm512_fmadd_ps(w, x, a2); b2 = _mm512_fmadd_ps(w, y, b2);                  \
                w = _mm512_set1_ps(w3[j]);                                                       \
                a3 = _mm512_fmadd_ps(w, x, a3); b3 = _mm512_fmadd_ps(w, y, b3);                  \
            }                                                                                    \
            _mm512_storeu_ps(c0 + d, a0); _mm512_storeu_ps(c0 + d + 16, b0);                     \
            _mm512_storeu_ps(c1 + d, a1); _mm512_storeu_ps(c1 + d + 16, b1);                     \
            _mm512_storeu_ps(c2 + d, a2); _mm512_storeu_ps(c2 + d + 16, b2);                     \
            _mm512_storeu_ps(c3 + d, a3); _mm512_storeu_ps(c3 + d + 16, b3);                     \
        }                                                                                        \
    }                                                                                            \
    if (tiled < G)                                                                               \
        NARROW(acc + (size_t)tiled * d_stride, G - tiled, D, rows, n, p + (size_t)tiled * stride,  \
               stride);                                                                          \
}
EKV__ACCUMULATE_TILES_AVX512(ekv__accumulate_int8_avx512, int8_t, ekv__int8_sixteen_avx512,
                             ekv__accumulate_int8_avx2)
EKV__ACCUMULATE_TILES_AVX512(ekv__accumulate_f16_avx512, uint16_t, ekv__f16_sixteen_avx512,
                             ekv__accumulate_f16_avx2)

/* The 16-value table of an int4 group (q * scale + zero for q = 0..15, as
   ekv_dequantize_row computes it) from its (scale, zero) as floats */
static EKV__AVX512 __m512 ekv__int4_table_avx512(const float *scale_zero)
{
    const __m512 codes = _mm512_setr_ps(0.0f, 1.0f, 2.0f, 3.0f, 4.0f, 5.0f, 6.0f, 7.0f, 8.0f, 9.0f,
                                        10.0f, 11.0f, 12.0f, 13.0f, 14.0f, 15.0f);
    return _mm512_add_ps(_mm512_mul_ps(codes, _mm512_set1_ps(scale_zero[0])),
                         _mm512_set1_ps(scale_zero[1]));
}

/* ekv__logits_int8_avx512's tiles on int4 rows (split order, q permuted alike): a group's
   16 bytes give its low nibbles (the first 16 values) and its high ones (the next 16), each
   looked up in the group's table (vpermps reads the low 4 bits of each index). Heads past a
   multiple of 4 go to the AVX2 function. */
static EKV__AVX512 void ekv__logits_int4_avx512(const float *q, int G, int D,
                                                const unsigned char *rows, const uint16_t *pairs,
                                                int n, float *spare, float *logits, size_t stride)
{
    const size_t row_bytes = (size_t)D / 2, groups = (size_t)D / EKV_INT4_GROUP;
    const size_t d_stride = (size_t)D;
    const float *scale_zero = spare;
    const int tiled = G & ~3;
    int h, j, group;
    ekv__int4_pairs_avx2(pairs, (size_t)n * 2 * groups, spare);
    for (h = 0; h < tiled; h += 4) {
        const float *q0 = q + (size_t)h * d_stride, *q1 = q0 + d_stride, *q2 = q1 + d_stride,
                    *q3 = q2 + d_stride;
        float *out0 = logits + (size_t)h * stride;
        for (j = 0; j < n; j += 2) {
            /* an odd last row is paired with itself; its second logits are not stored */
            const int other = j + 1 < n ? j + 1 : j;
            const unsigned char *r0 = rows + (size_t)j * row_bytes,
                                *r1 = rows + (size_t)other * row_bytes;
            const float *p0 = scale_zero + (size_t)j * 2 * groups,
                        *p1 = scale_zero + (size_t)other * 2 * groups;
            __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0,
                   b3 = a0;
            __m256 sums;
            for (group = 0; group < (int)groups; group++) {
                const int d = group * EKV_INT4_GROUP;
                const __m512 t0 = ekv__int4_table_avx512(p0 + 2 * group);
                const __m512 t1 = ekv__int4_table_avx512(p1 + 2 * group);
                const __m512i i0 = _mm512_cvtepu8_epi32(
                    _mm_loadu_si128((const __m128i *)(const void *)(r0 + group * 16)));
                const __m512i i1 = _mm512_cvtepu8_epi32(
                    _mm_loadu_si128((const __m128i *)(const void *)(r1 + group * 16)));
                __m512 x = _mm512_permutexvar_ps(i0, t0), y = _mm512_permutexvar_ps(i1, t1);
                a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q0 + d), x, a0);
                b0 = _mm512_fmadd_ps(_mm512_loadu_ps(q0 + d), y, b0);
                a1 = _mm512_fmadd_ps(_mm512_loadu_ps(q1 + d), x, a1);
                b1 = _mm512_fmadd_ps(_mm512_loadu_ps(q1 + d), y, b1);
                a2 = _mm512_fmadd_ps(_mm512_loadu_ps(q2 + d), x, a2);
                b2 = _mm512_fmadd_ps(_mm512_loadu_ps(q2 + d), y, b2);
                a3 = _mm512_fmadd_ps(_mm512_loadu_ps(q3 + d), x, a3);
                b3 = _mm512_fmadd_ps(_mm512_loadu_ps(q3 + d), y, b3);
                x = _mm512_permutexvar_ps(_mm512_srli_epi32(i0, 4), t0);
                y = _mm512_permutexvar_ps(_mm512_srli_epi32(i1, 4), t1);
                a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q0 + d + 16), x, a0);
                b0 = _mm512_fmadd_ps(_mm512_loadu_ps(q0 + d + 16), y, b0);
                a1 = _mm512_fmadd_ps(_mm512_loadu_ps(q1 + d + 16), x, a1);
                b1 = _mm512_fmadd_ps(_mm512_loadu_ps(q1 + d + 16), y, b1);
                a2 = _mm512_fmadd_ps(_mm512_loadu_ps(q2 + d + 16), x, a2);
                b2 = _mm512_fmadd_ps(_mm512_loadu_ps(q2 + d + 16), y, b2);
                a3 = _mm512_fmadd_ps(_mm512_loadu_ps(q3 + d + 16), x, a3);
                b3 = _mm512_fmadd_ps(_mm512_loadu_ps(q3 + d + 16), y, b3);
            }
            sums = ekv__sum8_folded_avx512(a0, b0, a1, b1, a2, b2, a3, b3);
            ekv__store_tile_avx2(sums, out0, stride, j, j + 1 < n);
        }
    }
    if (tiled < G)
        ekv__logits_int4_avx2(q + (size_t)tiled * d_stride, G - tiled, D, rows, pairs, n, spare,
                              logits + (size_t)tiled * stride, stride);
}

/* ekv__accumulate_int8_avx512's tiles on int4 rows (split order): 4 heads x one group of
   32 columns, its low nibbles then its high ones, by the group's table. Heads past a
   multiple of 4 go to the AVX2 function. */
static EKV__AVX512 void ekv__accumulate_int4_avx512(float *acc, int G, int D,
                                                    const unsigned char *rows,
                                                    const uint16_t *pairs, int n, float *spare,
                                                    const float *p, size_t stride)
{
    const size_t row_bytes = (size_t)D / 2, groups = (size_t)D / EKV_INT4_GROUP;
    const size_t d_stride = (size_t)D;
    const float *scale_zero = spare;
    const int tiled = G & ~3;
    int h, j, d;
    ekv__int4_pairs_avx2(pairs, (size_t)n * 2 * groups, spare);
    for (h = 0; h < tiled; h += 4) {
        float *c0 = acc + (size_t)h * d_stride, *c1 = c0 + d_stride, *c2 = c1 + d_stride,
              *c3 = c2 + d_stride;
        const float *w0 = p + (size_t)h * stride, *w1 = w0 + stride, *w2 = w1 + stride,
                    *w3 = w2 + stride;
        for (d = 0; d < D; d += EKV_INT4_GROUP) {
            const size_t group = (size_t)d / EKV_INT4_GROUP;
            __m512 a0 = _mm512_loadu_ps(c0 + d), b0 = _mm512_loadu_ps(c0 + d + 16);
            __m512 a1 = _mm512_loadu_ps(c1 + d), b1 = _mm512_loadu_ps(c1 + d + 16);
            __m512 a2 = _mm512_loadu_ps(c2 + d), b2 = _mm512_loadu_ps(c2 + d + 16);
            __m512 a3 = _mm512_loadu_ps(c3 + d), b3 = _mm512_loadu_ps(c3 + d + 16);
            for (j = 0; j < n; j++) {
                const __m512 table =
                    ekv__int4_table_avx512(scale_zero + ((size_t)j * groups + group) * 2);
                const __m512i codes = _mm512_cvtepu8_epi32(_mm_loadu_si128(
                    (const __m128i *)(const void *)(rows + (size_t)j * row_bytes + group * 16)));
                const __m512 x = _mm512_permutexvar_ps(codes, table);
                const __m512 y = _mm512_permutexvar_ps(_mm512_srli_epi32(codes, 4), table);
                __m512 w = _mm512_set1_ps(w0[j]);
                a0 = _mm512_fmadd_ps(w, x, a0); b0 = _mm512_fmadd_ps(w, y, b0);
                w = _mm512_set1_ps(w1[j]);
                a1 = _mm512_fmadd_ps(w, x, a1); b1 = _mm512_fmadd_ps(w, y, b1);
                w = _mm512_set1_ps(w2[j]);
                a2 = _mm512_fmadd_ps(w, x, a2); b2 = _mm512_fmadd_ps(w, y, b2);
                w = _mm512_set1_ps(w3[j]);
                a3 = _mm512_fmadd_ps(w, x, a3); b3 = _mm512_fmadd_ps(w, y, b3);
            }
            _mm512_storeu_ps(c0 + d, a0); _mm512_storeu_ps(c0 + d + 16, b0);
            _mm512_storeu_ps(c1 + d, a1); _mm512_storeu_ps(c1 + d + 16, b1);
            _mm512_storeu_ps(c2 + d, a2); _mm512_storeu_ps(c2 + d + 16, b2);
            _mm512_storeu_ps(c3 + d, a3); _mm512_storeu_ps(c3 + d + 16, b3);
        }
    }
    if (tiled < G)
        ekv__accumulate_int4_avx2(acc + (size_t)tiled * d_stride, G - tiled, D, rows, pairs, n,
                                  spare, p + (size_t)tiled * stride, stride);
}

static const ekv__cpu_path ekv__cpu_avx512 = {"avx512", 1, ekv__decode_avx512, ekv__logits_avx512,
                                              ekv__exp_sum_avx512, ekv__accumulate_avx512,
                                              ekv__logits_int8_avx512, ekv__accumulate_int8_avx512,
                                              ekv__logits_f16_avx512, ekv__accumulate_f16_avx512,
                                              ekv__logits_int4_avx512, ekv__accumulate_int4_avx512};
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

/* What this CPU runs: 0 only portable C, 1 AVX2+FMA+F16C, 2 AVX-512F as well. Macros
   answer when the build targets the CPU (-march), else cpuid, once; relaxed atomics: every
   thread computes the same answer. */
static int ekv__x86_level(void)
{
#if defined(__AVX512F__) && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
    return 2;
#else
    static int known = 0; /* level + 1 once known */
    int answer = __atomic_load_n(&known, __ATOMIC_RELAXED);
    if (answer == 0) {
        unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
        /* __builtin_cpu_supports also checks that the OS saves the vector registers;
           clang 14 knows no "f16c", hence cpuid's bit 29 of ecx */
        const int f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & (1u << 29));
        const int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
        answer = 1 + (avx2 ? (__builtin_cpu_supports("avx512f") ? 2 : 1) : 0);
        __atomic_store_n(&known, answer, __ATOMIC_RELAXED);
    }
    return answer - 1;
#endif
}
#endif /* EKV__SIMD_AVX2 */

/* -- NEON (AArch64) -- */
#if defined(EKV__SIMD_NEON)

static float32x4_t ekv__fp8_neon(uint32x4_t v)
{
    const uint32x4_t magnitude = vandq_u32(v, vdupq_n_u32(0x7f));
    const float32x4_t tiny = vmulq_n_f32(vcvtq_f32_u32(magnitude), 0.001953125f);
    uint32x4_t bits = vaddq_u32(vshlq_n_u32(magnitude, 20), vdupq_n_u32(0x3c000000));
    bits = vbslq_u32(vcltq_u32(magnitude, vdupq_n_u32(8)), vreinterpretq_u32_f32(tiny), bits);
    bits = vbslq_u32(vceqq_u32(magnitude, vdupq_n_u32(0x7f)), vdupq_n_u32(0x7fc00000), bits);
    bits = vorrq_u32(bits, vshlq_n_u32(vandq_u32(v, vdupq_n_u32(0x80)), 24));
    return vreinterpretq_f32_u32(bits);
}

static void ekv__decode_neon(ekv_dtype dtype, const unsigned char *values,
                             const unsigned char *scales, int n, int D, float *out)
{
    const size_t count = (size_t)n * (size_t)D;
    size_t i = 0;
    int j;
    switch (dtype) {
    case EKV_DTYPE_F16:
        for (; i + 4 <= count; i += 4)
            vst1q_f32(out + i, vcvt_f32_f16(vreinterpret_f16_u16(
                                   vld1_u16((const uint16_t *)(const void *)(values + 2 * i)))));
        break;
    case EKV_DTYPE_BF16:
        for (; i + 4 <= count; i += 4)
            vst1q_f32(out + i, vreinterpretq_f32_u32(vshll_n_u16(
                                   vld1_u16((const uint16_t *)(const void *)(values + 2 * i)), 16)));
        break;
    case EKV_DTYPE_INT8:
        for (; i + 8 <= count; i += 8) {
            const int16x8_t w = vmovl_s8(vld1_s8((const int8_t *)(const void *)(values + i)));
            vst1q_f32(out + i, vcvtq_f32_s32(vmovl_s16(vget_low_s16(w))));
            vst1q_f32(out + i + 4, vcvtq_f32_s32(vmovl_s16(vget_high_s16(w))));
        }
        break;
    case EKV_DTYPE_FP8:
        for (; i + 8 <= count; i += 8) {
            const uint16x8_t w = vmovl_u8(vld1_u8(values + i));
            vst1q_f32(out + i, ekv__fp8_neon(vmovl_u16(vget_low_u16(w))));
            vst1q_f32(out + i + 4, ekv__fp8_neon(vmovl_u16(vget_high_u16(w))));
        }
        break;
    case EKV_DTYPE_INT4: {
        const size_t row = ekv_dtype_row_bytes(dtype, D), scale = ekv_dtype_row_scale_bytes(dtype, D);
        for (j = 0; j < n; j++) {
            const unsigned char *in = values + (size_t)j * row;
            const uint16_t *pairs = (const uint16_t *)(const void *)(scales + (size_t)j * scale);
            float *o = out + (size_t)j * (size_t)D;
            int group, k;
            if (D % EKV_INT4_GROUP != 0) {
                ekv_dequantize_row(dtype, in, pairs, D, 1.0f, o);
                continue;
            }
            for (group = 0; group < D / EKV_INT4_GROUP; group++) {
                const uint8x16_t bytes = vld1q_u8(in + group * (EKV_INT4_GROUP / 2));
                const uint8x16_t low = vandq_u8(bytes, vdupq_n_u8(15)), high = vshrq_n_u8(bytes, 4);
                const uint8x16_t part[2] = {vzip1q_u8(low, high), vzip2q_u8(low, high)};
                const float s = ekv_f16_to_f32(pairs[2 * group]), z = ekv_f16_to_f32(pairs[2 * group + 1]);
                float *g = o + group * EKV_INT4_GROUP;
                for (k = 0; k < 2; k++) {
                    const uint16x8_t lo = vmovl_u8(vget_low_u8(part[k])), hi = vmovl_u8(vget_high_u8(part[k]));
                    const uint16x4_t quarter[4] = {vget_low_u16(lo), vget_high_u16(lo), vget_low_u16(hi),
                                                   vget_high_u16(hi)};
                    int m;
                    for (m = 0; m < 4; m++)
                        vst1q_f32(g + 16 * k + 4 * m,
                                  vaddq_f32(vmulq_n_f32(vcvtq_f32_u32(vmovl_u16(quarter[m])), s), vdupq_n_f32(z)));
                }
            }
        }
        return;
    }
    default:
        break;
    }
    if (i < count) {
        const size_t bits = (size_t)ekv_dtype_info(dtype)->bits;
        for (; i < count; i++) ekv__decode_portable(dtype, values + i * bits / 8, NULL, 1, 1, out + i);
    }
}

/* 1 row x up to 4 heads per step (a K load serves the group), 4 lanes wide. */
static void ekv__logits_neon(const float *q, int G, int D, const float *rows, int n,
                             float *logits, size_t stride)
{
    const int full = D & ~3;
    int h, j, d, k;
    for (h = 0; h < G; h += 4) {
        const int heads = G - h < 4 ? G - h : 4;
        for (j = 0; j < n; j++) {
            const float *r = rows + (size_t)j * (size_t)D;
            float32x4_t a[4];
            for (k = 0; k < 4; k++) a[k] = vdupq_n_f32(0.0f);
            for (d = 0; d < full; d += 4) {
                const float32x4_t x = vld1q_f32(r + d);
                for (k = 0; k < heads; k++)
                    a[k] = vfmaq_f32(a[k], vld1q_f32(q + (size_t)(h + k) * (size_t)D + (size_t)d), x);
            }
            for (k = 0; k < heads; k++) {
                float s = vaddvq_f32(a[k]);
                for (d = full; d < D; d++) s += q[(size_t)(h + k) * (size_t)D + (size_t)d] * r[d];
                logits[(size_t)(h + k) * stride + (size_t)j] = s;
            }
        }
    }
}

static float32x4_t ekv__exp_neon(float32x4_t x)
{
    const float32x4_t n = vrndnq_f32(vmulq_n_f32(x, EKV__LOG2E));
    float32x4_t r = vfmsq_f32(x, n, vdupq_n_f32(EKV__EXP_C1));
    float32x4_t p = vdupq_n_f32(EKV__EXP_P0);
    int32x4_t two_n;
    r = vfmsq_f32(r, n, vdupq_n_f32(EKV__EXP_C2));
    p = vfmaq_f32(vdupq_n_f32(EKV__EXP_P1), p, r);
    p = vfmaq_f32(vdupq_n_f32(EKV__EXP_P2), p, r);
    p = vfmaq_f32(vdupq_n_f32(EKV__EXP_P3), p, r);
    p = vfmaq_f32(vdupq_n_f32(EKV__EXP_P4), p, r);
    p = vfmaq_f32(vdupq_n_f32(EKV__EXP_P5), p, r);
    p = vfmaq_f32(vaddq_f32(r, vdupq_n_f32(1.0f)), p, vmulq_f32(r, r));
    two_n = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23);
    p = vmulq_f32(p, vreinterpretq_f32_s32(two_n));
    return vreinterpretq_f32_u32(vbicq_u32(vreinterpretq_u32_f32(p),
                                           vcltq_f32(x, vdupq_n_f32(EKV__EXP_LOWEST))));
}

static float ekv__exp_sum_neon(float *x, int n, float max)
{
    float32x4_t sum = vdupq_n_f32(0.0f);
    float total;
    int i = 0;
    for (; i + 4 <= n; i += 4) {
        const float32x4_t e = ekv__exp_neon(vsubq_f32(vld1q_f32(x + i), vdupq_n_f32(max)));
        vst1q_f32(x + i, e);
        sum = vaddq_f32(sum, e);
    }
    total = vaddvq_f32(sum);
    for (; i < n; i++) {
        float lane[4];
        vst1q_f32(lane, ekv__exp_neon(vdupq_n_f32(x[i] - max)));
        x[i] = lane[0];
        total += x[i];
    }
    return total;
}

/* 4 heads x 8 columns in registers over the block's rows (a V load serves 4 heads). */
static void ekv__accumulate_neon(float *acc, int G, int D, const float *rows, int n,
                                 const float *p, size_t stride)
{
    int h, j, d, k;
    for (h = 0; h < G; h += 4) {
        const int heads = G - h < 4 ? G - h : 4;
        for (d = 0; d + 8 <= D; d += 8) {
            float32x4_t a[8];
            for (k = 0; k < heads; k++) {
                a[2 * k] = vld1q_f32(acc + (size_t)(h + k) * (size_t)D + (size_t)d);
                a[2 * k + 1] = vld1q_f32(acc + (size_t)(h + k) * (size_t)D + (size_t)d + 4);
            }
            for (j = 0; j < n; j++) {
                const float *r = rows + (size_t)j * (size_t)D + (size_t)d;
                const float32x4_t x0 = vld1q_f32(r), x1 = vld1q_f32(r + 4);
                for (k = 0; k < heads; k++) {
                    const float w = p[(size_t)(h + k) * stride + (size_t)j];
                    a[2 * k] = vfmaq_n_f32(a[2 * k], x0, w);
                    a[2 * k + 1] = vfmaq_n_f32(a[2 * k + 1], x1, w);
                }
            }
            for (k = 0; k < heads; k++) {
                vst1q_f32(acc + (size_t)(h + k) * (size_t)D + (size_t)d, a[2 * k]);
                vst1q_f32(acc + (size_t)(h + k) * (size_t)D + (size_t)d + 4, a[2 * k + 1]);
            }
        }
        for (; d < D; d++)
            for (k = 0; k < heads; k++) {
                float s = acc[(size_t)(h + k) * (size_t)D + (size_t)d];
                for (j = 0; j < n; j++)
                    s += p[(size_t)(h + k) * stride + (size_t)j] * rows[(size_t)j * (size_t)D + (size_t)d];
                acc[(size_t)(h + k) * (size_t)D + (size_t)d] = s;
            }
    }
}

static const ekv__cpu_path ekv__cpu_neon = {"neon", 0, ekv__decode_neon, ekv__logits_neon,
                                            ekv__exp_sum_neon, ekv__accumulate_neon, NULL, NULL,
                                            NULL, NULL, NULL, NULL};
#endif /* EKV__SIMD_NEON */

/* The paths this CPU runs, best first: the list ekv_cpu_paths names. */
static int ekv__cpu_runnable(const ekv__cpu_path **paths)
{
    int count = 0;
#if defined(EKV__SIMD_AVX2)
    const int level = ekv__x86_level();
    if (level >= 2) paths[count++] = &ekv__cpu_avx512;
    if (level >= 1) paths[count++] = &ekv__cpu_avx2;
#elif defined(EKV__SIMD_NEON)
    paths[count++] = &ekv__cpu_neon;
#endif
    paths[count++] = &ekv__cpu_portable;
    return count;
}

EKV_DEF const char *ekv_cpu_paths(void)
{
#if defined(EKV__SIMD_AVX2)
    static const char *const names[3] = {"portable", "avx2, portable", "avx512, avx2, portable"};
    return names[ekv__x86_level()];
#elif defined(EKV__SIMD_NEON)
    return "neon, portable";
#else
    return "portable";
#endif
}

/* The path `name` names (NULL or "": the best), or NULL when this CPU does not run it. */
static const ekv__cpu_path *ekv__cpu_select(const char *name)
{
    const ekv__cpu_path *paths[4];
    const int count = ekv__cpu_runnable(paths);
    int i;
    if (!name || !name[0]) return paths[0];
    for (i = 0; i < count; i++)
        if (strcmp(paths[i]->name, name) == 0) return paths[i];
    return NULL;
}

/* -- threads -- */

/* An index taken by one thread at a time, and a count whose last decrement is seen by one
   thread after every other's writes (acquire-release). Without gcc/clang there are no
   threads (see the top of the implementation), so plain operations are right there. */
static size_t ekv__take(size_t *next)
{
#if defined(__GNUC__) || defined(__clang__)
    return __atomic_fetch_add(next, (size_t)1, __ATOMIC_RELAXED);
#else
    return (*next)++;
#endif
}

static int ekv__count_down(int *remaining)
{
#if defined(__GNUC__) || defined(__clang__)
    return __atomic_sub_fetch(remaining, 1, __ATOMIC_ACQ_REL);
#else
    return --*remaining;
#endif
}

static int ekv__threads_available(void)
{
#if defined(EKV__THREADS_PTHREAD) && defined(EKV__PTHREAD_WEAK)
    return pthread_create != 0 && pthread_join != 0;
#elif defined(EKV__THREADS_PTHREAD) || defined(EKV__THREADS_OPENMP)
    return 1;
#else
    return 0;
#endif
}

EKV_DEF int ekv_cpu_threads(int requested)
{
    long cores = 1;
    if (!ekv__threads_available()) return 1;
    if (requested > 0) return requested < EKV_CPU_THREADS_MAX ? requested : EKV_CPU_THREADS_MAX;
#if defined(_SC_NPROCESSORS_ONLN)
    cores = sysconf(_SC_NPROCESSORS_ONLN);
#elif defined(EKV__THREADS_OPENMP)
    cores = omp_get_num_procs();
#endif
    if (cores < 1) cores = 1;
    return cores < EKV_CPU_THREADS_MAX ? (int)cores : EKV_CPU_THREADS_MAX;
}

typedef void (*ekv__worker_fn)(void *context, int worker);

#if defined(EKV__THREADS_PTHREAD)
typedef struct ekv__thread_start {
    ekv__worker_fn function;
    void *context;
    int worker;
} ekv__thread_start;

static void *ekv__thread_main(void *argument)
{
    const ekv__thread_start *start = (const ekv__thread_start *)argument;
    start->function(start->context, start->worker);
    return NULL;
}
#endif

/* Runs function(context, w) for w in [0, workers) at once, w = 0 on the calling thread,
   and returns when all have returned. Workers take their work from a shared counter, so
   a thread that cannot be started leaves its share to the others. */
static void ekv__run_workers(int workers, ekv__worker_fn function, void *context)
{
#if defined(EKV__THREADS_OPENMP)
    if (workers > 1) {
#pragma omp parallel num_threads(workers)
        function(context, omp_get_thread_num());
        return;
    }
#elif defined(EKV__THREADS_PTHREAD)
    if (workers > 1 && ekv__threads_available()) {
        pthread_t threads[EKV_CPU_THREADS_MAX];
        ekv__thread_start starts[EKV_CPU_THREADS_MAX];
        int started[EKV_CPU_THREADS_MAX], w;
        if (workers > EKV_CPU_THREADS_MAX) workers = EKV_CPU_THREADS_MAX;
        for (w = 1; w < workers; w++) {
            starts[w].function = function;
            starts[w].context = context;
            starts[w].worker = w;
            started[w] = pthread_create(&threads[w], NULL, ekv__thread_main, &starts[w]) == 0;
        }
        function(context, 0);
        for (w = 1; w < workers; w++)
            if (started[w]) pthread_join(threads[w], NULL);
        return;
    }
#endif
    (void)workers;
    function(context, 0);
}

/* -- the kernel -- */

/* p rounded up to the next 64-byte boundary (a cache line), NULL for NULL: the tiles' 64-
   and 32-byte loads of q and of the accumulators then never straddle two lines (on a Zen 4
   core, q 16 bytes off a line made the int8 scores about 20% slower). The allocation
   holds EKV__LINE_FLOATS floats more. */
#define EKV__LINE_FLOATS 16u
static float *ekv__line_align(float *p)
{
    return p ? (float *)(void *)(((uintptr_t)(void *)p + 63u) & ~(uintptr_t)63u) : NULL;
}

typedef struct ekv__cpu_job {
    const ekv_host_cache *cache;
    const ekv__cpu_path *path;
    const float *q;          /* [batch][heads][D]: q times the softmax scale (int4 split
                                order when int4_split) */
    float *out;
    int heads, group, head_dim;
    int int4_split;          /* the path decodes this cache's rows in int4 split order */
    size_t items;
    int *item_pair;          /* [items]: b * kv_heads + g */
    size_t *first_item;      /* [batch * kv_heads]: the item of the pair's first piece */
    int *remaining;          /* [batch * kv_heads]: pieces not yet done */
    float *part_acc;         /* [items][group][D] */
    float *part_max, *part_sum; /* [items][group] */
    float *scratch;          /* [workers][scratch_floats] */
    size_t scratch_floats;
    double *merge;           /* [workers][D] */
    size_t next;             /* the next item to take */
} ekv__cpu_job;

/* Between natural order and int4 split order (see ekv__cpu_path) in a row of D values, D
   a multiple of 32: to_split puts element 2p of each group at p and 2p + 1 at 16 + p,
   else puts them back. `spare` holds D floats. */
static void ekv__int4_order(float *row, int D, float *spare, int to_split)
{
    int group, p;
    memcpy(spare, row, (size_t)D * sizeof(float));
    for (group = 0; group < D; group += EKV_INT4_GROUP)
        for (p = 0; p < EKV_INT4_GROUP / 2; p++) {
            float *split = row + group, *natural = row + group;
            const float *from_split = spare + group, *from_natural = spare + group;
            if (to_split) {
                split[p] = from_natural[2 * p];
                split[EKV_INT4_GROUP / 2 + p] = from_natural[2 * p + 1];
            } else {
                natural[2 * p] = from_split[p];
                natural[2 * p + 1] = from_split[EKV_INT4_GROUP / 2 + p];
            }
        }
}

/* Whether `path` reads int4 rows of this head_dim in its split order (see ekv__cpu_path);
   q and the accumulators are then permuted alike. */
static int ekv__cpu_int4_split(const ekv__cpu_path *path, ekv_dtype dtype, int D)
{
    return path->int4_split && dtype == EKV_DTYPE_INT4 && D % EKV_INT4_GROUP == 0;
}

/* The one rule for which of a path's functions reads a block of n stored rows (`values`,
   their row scales `scales`): int8, f16 and int4 (split order) straight from the stored
   form where the path has functions for them, f32 in place, anything else decoded into
   `spare` (n * D floats) first. int8 rows give the integers (the row scales are the
   caller's), the others their values. bench/cpu_tiles.c times these two, so that its times
   are of the code the kernel runs. */
static void ekv__cpu_block_logits(const ekv__cpu_path *path, ekv_dtype dtype, int int4_split,
                                  const float *q, int G, int D, const unsigned char *values,
                                  const unsigned char *scales, int n, float *spare,
                                  float *logits, size_t stride)
{
    if (dtype == EKV_DTYPE_INT8 && path->logits_int8 && D % 8 == 0)
        path->logits_int8(q, G, D, (const int8_t *)(const void *)values, n, logits, stride);
    else if (dtype == EKV_DTYPE_F16 && path->logits_f16 && D % 8 == 0)
        path->logits_f16(q, G, D, (const uint16_t *)(const void *)values, n, logits, stride);
    else if (int4_split && path->logits_int4)
        path->logits_int4(q, G, D, values, (const uint16_t *)(const void *)scales, n, spare,
                          logits, stride);
    else if (dtype == EKV_DTYPE_F32)
        path->logits(q, G, D, (const float *)(const void *)values, n, logits, stride);
    else {
        path->decode(dtype, values, scales, n, D, spare);
        path->logits(q, G, D, spare, n, logits, stride);
    }
}

/* acc[h] += sum_j p[h * stride + j] * row j, for the rows ekv__cpu_block_logits reads, by
   the same rule */
static void ekv__cpu_block_accumulate(const ekv__cpu_path *path, ekv_dtype dtype, int int4_split,
                                      float *acc, int G, int D, const unsigned char *values,
                                      const unsigned char *scales, int n, float *spare,
                                      const float *p, size_t stride)
{
    if (dtype == EKV_DTYPE_INT8 && path->accumulate_int8 && D % 8 == 0)
        path->accumulate_int8(acc, G, D, (const int8_t *)(const void *)values, n, p, stride);
    else if (dtype == EKV_DTYPE_F16 && path->accumulate_f16 && D % 8 == 0)
        path->accumulate_f16(acc, G, D, (const uint16_t *)(const void *)values, n, p, stride);
    else if (int4_split && path->accumulate_int4)
        path->accumulate_int4(acc, G, D, values, (const uint16_t *)(const void *)scales, n, spare,
                              p, stride);
    else if (dtype == EKV_DTYPE_F32)
        path->accumulate(acc, G, D, (const float *)(const void *)values, n, p, stride);
    else {
        path->decode(dtype, values, scales, n, D, spare);
        path->accumulate(acc, G, D, spare, n, p, stride);
    }
}

static void ekv__cpu_piece(const ekv__cpu_job *job, size_t item, float *scratch)
{
    const ekv_host_cache *c = job->cache;
    const int pair = job->item_pair[item], b = pair / c->kv_heads, g = pair % c->kv_heads;
    const int first = (int)(item - job->first_item[pair]) * EKV_CPU_SPLIT;
    const int n = c->lengths[b] - first < EKV_CPU_SPLIT ? c->lengths[b] - first : EKV_CPU_SPLIT;
    const int G = job->group, D = job->head_dim;
    const size_t GD = (size_t)G * (size_t)D;
    const float *q = job->q + ((size_t)b * (size_t)job->heads + (size_t)g * (size_t)G) * (size_t)D;
    float *rows = scratch, *logits = rows + (size_t)EKV__CPU_BLOCK * (size_t)D;
    float *weights = logits + (size_t)G * EKV_CPU_SPLIT;
    float *acc = job->part_acc + item * GD, *maxes = job->part_max + item * (size_t)G;
    float *sums = job->part_sum + item * (size_t)G;
    const float *bias = c->bias ? c->bias + (size_t)pair * (size_t)c->capacity + (size_t)first : NULL;
    const float *k_scales = c->dtype == EKV_DTYPE_INT8
                                ? (const float *)(const void *)ekv__cache_row_scale(c, 0, b, g, first)
                                : NULL;
    const float *v_scales = c->dtype == EKV_DTYPE_INT8
                                ? (const float *)(const void *)ekv__cache_row_scale(c, 1, b, g, first)
                                : NULL;
    int h, j, block;
    size_t i;
    for (block = 0; block < n; block += EKV__CPU_BLOCK) {
        const int m = n - block < EKV__CPU_BLOCK ? n - block : EKV__CPU_BLOCK;
        ekv__cpu_block_logits(job->path, c->dtype, job->int4_split, q, G, D,
                              ekv__cache_values(c, 0, b, g, first + block),
                              ekv__cache_row_scale(c, 0, b, g, first + block), m, rows,
                              logits + block, EKV_CPU_SPLIT);
    }
    for (h = 0; h < G; h++) {
        float *x = logits + (size_t)h * EKV_CPU_SPLIT, max;
        if (k_scales) ekv__mul_f32(x, x, k_scales, n);
        if (c->dtype == EKV_DTYPE_FP8) {
            const float k_head = ekv__cache_head_scale(c, 0, b, g);
            for (j = 0; j < n; j++) x[j] *= k_head;
        }
        if (bias) ekv__add_f32(x, bias, n);
        max = ekv__max_f32(x, n);
        if (max == -HUGE_VALF) max = 0.0f; /* every logit -inf: weights 0, the piece adds nothing */
        maxes[h] = max;
        sums[h] = job->path->exp_sum(x, n, max);
    }
    memset(acc, 0, GD * sizeof(float));
    for (block = 0; block < n; block += EKV__CPU_BLOCK) {
        const int m = n - block < EKV__CPU_BLOCK ? n - block : EKV__CPU_BLOCK;
        const float *p = logits + block;
        size_t stride = EKV_CPU_SPLIT;
        if (v_scales) {
            for (h = 0; h < G; h++)
                ekv__mul_f32(weights + (size_t)h * EKV__CPU_BLOCK,
                             logits + (size_t)h * EKV_CPU_SPLIT + (size_t)block, v_scales + block, m);
            p = weights;
            stride = EKV__CPU_BLOCK;
        }
        ekv__cpu_block_accumulate(job->path, c->dtype, job->int4_split, acc, G, D,
                                  ekv__cache_values(c, 1, b, g, first + block),
                                  ekv__cache_row_scale(c, 1, b, g, first + block), m, rows, p,
                                  stride);
    }
    if (c->dtype == EKV_DTYPE_FP8) {
        const float v_head = ekv__cache_head_scale(c, 1, b, g);
        for (i = 0; i < GD; i++) acc[i] *= v_head;
    }
    if (job->int4_split)
        for (h = 0; h < G; h++) ekv__int4_order(acc + (size_t)h * (size_t)D, D, rows, 0);
}

/* The pieces of (b, g) into its output rows, in double and in piece order: with M the
   largest max among pieces whose sum is not 0, out = sum_s acc_s e^(max_s - M) /
   sum_s sum_s e^(max_s - M). A NaN sum is kept, so that NaN data shows in the output. */
static void ekv__cpu_merge(const ekv__cpu_job *job, int pair, double *o)
{
    const ekv_host_cache *c = job->cache;
    const int b = pair / c->kv_heads, g = pair % c->kv_heads, G = job->group, D = job->head_dim;
    const int pieces = (c->lengths[b] + EKV_CPU_SPLIT - 1) / EKV_CPU_SPLIT;
    const size_t first = job->first_item[pair];
    int h, s, d;
    for (h = 0; h < G; h++) {
        float *out = job->out + ((size_t)b * (size_t)job->heads + (size_t)g * (size_t)G + (size_t)h) * (size_t)D;
        double top = -HUGE_VAL, total = 0.0;
        for (s = 0; s < pieces; s++) {
            const size_t at = (first + (size_t)s) * (size_t)G + (size_t)h;
            if (job->part_sum[at] != 0.0f && job->part_max[at] > top) top = job->part_max[at];
        }
        for (d = 0; d < D; d++) o[d] = 0.0;
        for (s = 0; s < pieces; s++) {
            const size_t at = (first + (size_t)s) * (size_t)G + (size_t)h;
            const float *acc = job->part_acc + at * (size_t)D;
            double w;
            if (job->part_sum[at] == 0.0f) continue;
            w = exp((double)job->part_max[at] - top);
            total += w * job->part_sum[at];
            for (d = 0; d < D; d++) o[d] += w * acc[d];
        }
        for (d = 0; d < D; d++) out[d] = total != 0.0 ? (float)(o[d] / total) : 0.0f;
    }
}

static void ekv__cpu_worker(void *context, int worker)
{
    ekv__cpu_job *job = (ekv__cpu_job *)context;
    float *scratch = job->scratch + (size_t)worker * job->scratch_floats;
    double *merge = job->merge + (size_t)worker * (size_t)job->head_dim;
    for (;;) {
        const size_t item = ekv__take(&job->next);
        if (item >= job->items) break;
        ekv__cpu_piece(job, item, scratch);
        if (ekv__count_down(&job->remaining[job->item_pair[item]]) == 0)
            ekv__cpu_merge(job, job->item_pair[item], merge);
    }
}

static ekv_result ekv__cpu_plan(const ekv_host_cache *c, int heads, const ekv_cpu_options *options,
                                ekv_cpu_plan *plan, const ekv__cpu_path **path, const char *function)
{
    const double row = (double)(ekv_dtype_row_bytes(c->dtype, c->head_dim) +
                                ekv_dtype_row_scale_bytes(c->dtype, c->head_dim));
    double kv_bytes = 0.0, by_bytes;
    int b;
    memset(plan, 0, sizeof *plan);
    for (b = 0; b < c->batch; b++) {
        const int pieces = (c->lengths[b] + EKV_CPU_SPLIT - 1) / EKV_CPU_SPLIT;
        plan->items += (size_t)pieces * (size_t)c->kv_heads;
        if (pieces > plan->splits) plan->splits = pieces;
        kv_bytes += 2.0 * row * (double)c->lengths[b] * (double)c->kv_heads;
    }
    plan->threads = ekv_cpu_threads(options ? options->threads : 0);
    by_bytes = floor(kv_bytes / EKV__CPU_BYTES_PER_THREAD);
    if ((double)plan->threads > by_bytes) plan->threads = by_bytes >= 1.0 ? (int)by_bytes : 1;
    if ((size_t)plan->threads > plan->items) plan->threads = plan->items ? (int)plan->items : 1;
    plan->partial_bytes = 2.0 * (double)plan->items * (double)(heads / c->kv_heads) *
                          (double)(c->head_dim + 2) * sizeof(float);
    *path = ekv__cpu_select(options ? options->path : NULL);
    if (!*path)
        return ekv_set_error(EKV_ERR_UNSUPPORTED, "%s: options.path '%s' is not a code path of this "
                             "CPU: allowed %s", function, options->path, ekv_cpu_paths());
    plan->path = (*path)->name;
    return EKV_SUCCESS;
}

static ekv_result ekv__cpu_check(const ekv_host_cache *cache, const float *q, int heads,
                                 float softmax_scale, const void *out, const char *function)
{
    ekv_result result = ekv__check_cache(cache, q, heads, out, function);
    if (result != EKV_SUCCESS) return result;
    if (softmax_scale != softmax_scale || softmax_scale > FLT_MAX || softmax_scale < -FLT_MAX)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: softmax_scale must be finite", function);
    return EKV_SUCCESS;
}

EKV_DEF ekv_result ekv_cpu_attention_plan(const ekv_host_cache *cache, int heads,
                                          const ekv_cpu_options *options, ekv_cpu_plan *plan)
{
    /* no query or output to check: the cache and heads are */
    static const float probe = 0.0f;
    const ekv__cpu_path *path;
    ekv_result result = ekv__cpu_check(cache, &probe, heads, 0.0f, &probe, "ekv_cpu_attention_plan");
    if (result != EKV_SUCCESS) return result;
    if (!plan) return ekv_set_error(EKV_ERR_INVALID_ARG, "ekv_cpu_attention_plan: NULL plan");
    return ekv__cpu_plan(cache, heads, options, plan, &path, "ekv_cpu_attention_plan");
}

EKV_DEF ekv_result ekv_cpu_attention_with(const ekv_host_cache *cache, const float *q,
                                          int heads, float softmax_scale,
                                          const ekv_cpu_options *options, float *out)
{
    const char *fn = "ekv_cpu_attention";
    ekv_result result = ekv__cpu_check(cache, q, heads, softmax_scale, out, fn);
    ekv__cpu_job job;
    ekv_cpu_plan plan;
    float *q_scaled = NULL, *q_raw = NULL, *acc_raw = NULL, *scratch_raw = NULL, scale;
    size_t pairs, i, item = 0, count;
    int b, g, s;
    if (result != EKV_SUCCESS) return result;
    memset(&job, 0, sizeof job);
    result = ekv__cpu_plan(cache, heads, options, &plan, &job.path, fn);
    if (result != EKV_SUCCESS) return result;
    job.cache = cache;
    job.out = out;
    job.heads = heads;
    job.group = heads / cache->kv_heads;
    job.head_dim = cache->head_dim;
    job.items = plan.items;
    pairs = (size_t)cache->batch * (size_t)cache->kv_heads;
    count = (size_t)cache->batch * (size_t)heads * (size_t)cache->head_dim;
    /* rows [BLOCK][D], logits [G][SPLIT], int8's weights [G][BLOCK]; whole cache lines */
    job.scratch_floats = ((size_t)EKV__CPU_BLOCK * (size_t)job.head_dim +
                          ((size_t)EKV_CPU_SPLIT + (size_t)EKV__CPU_BLOCK) * (size_t)job.group +
                          15u) & ~(size_t)15u;
    /* q, the accumulators and the scratch start on a cache line (EKV__LINE_FLOATS more) */
    q_raw = (float *)ekv__alloc(count + EKV__LINE_FLOATS, sizeof(float));
    q_scaled = ekv__line_align(q_raw);
    job.item_pair = (int *)ekv__alloc(plan.items, sizeof(int));
    job.first_item = (size_t *)ekv__alloc(pairs, sizeof(size_t));
    job.remaining = (int *)ekv__alloc(pairs, sizeof(int));
    acc_raw = (float *)ekv__alloc(plan.items * (size_t)job.group * (size_t)job.head_dim +
                                      EKV__LINE_FLOATS, sizeof(float));
    job.part_acc = ekv__line_align(acc_raw);
    job.part_max = (float *)ekv__alloc(plan.items, (size_t)job.group * sizeof(float));
    job.part_sum = (float *)ekv__alloc(plan.items, (size_t)job.group * sizeof(float));
    scratch_raw = (float *)ekv__alloc((size_t)plan.threads * job.scratch_floats + EKV__LINE_FLOATS,
                                      sizeof(float));
    job.scratch = ekv__line_align(scratch_raw);
    job.merge = (double *)ekv__alloc((size_t)plan.threads, (size_t)job.head_dim * sizeof(double));
    if (!q_scaled || !job.item_pair || !job.first_item || !job.remaining || !job.part_acc ||
        !job.part_max || !job.part_sum || !job.scratch || !job.merge) {
        result = EKV_ERR_OUT_OF_MEMORY;
        goto done;
    }
    scale = (float)ekv_softmax_scale(softmax_scale, cache->head_dim);
    for (i = 0; i < count; i++) q_scaled[i] = q[i] * scale;
    job.int4_split = ekv__cpu_int4_split(job.path, cache->dtype, cache->head_dim);
    if (job.int4_split) /* worker 0's scratch is free until the workers start */
        for (i = 0; i < count; i += (size_t)cache->head_dim)
            ekv__int4_order(q_scaled + i, cache->head_dim, job.scratch, 1);
    job.q = q_scaled;
    for (b = 0; b < cache->batch; b++) {
        const int pieces = (cache->lengths[b] + EKV_CPU_SPLIT - 1) / EKV_CPU_SPLIT;
        if (pieces == 0) /* an empty sequence attends to nothing: zeros */
            memset(out + (size_t)b * (size_t)heads * (size_t)cache->head_dim, 0,
                   (size_t)heads * (size_t)cache->head_dim * sizeof(float));
        for (g = 0; g < cache->kv_heads; g++) {
            const size_t pair = (size_t)b * (size_t)cache->kv_heads + (size_t)g;
            job.first_item[pair] = item;
            job.remaining[pair] = pieces;
            for (s = 0; s < pieces; s++) job.item_pair[item++] = (int)pair;
        }
    }
    ekv__run_workers(plan.threads, ekv__cpu_worker, &job);
    result = EKV_SUCCESS;
done:
    ekv__free(q_raw);
    ekv__free(job.item_pair);
    ekv__free(job.first_item);
    ekv__free(job.remaining);
    ekv__free(acc_raw);
    ekv__free(job.part_max);
    ekv__free(job.part_sum);
    ekv__free(scratch_raw);
    ekv__free(job.merge);
    return result;
}

EKV_DEF ekv_result ekv_cpu_attention(const ekv_host_cache *cache, const float *q, int heads,
                                     float softmax_scale, float *out)
{
    return ekv_cpu_attention_with(cache, q, heads, softmax_scale, NULL, out);
}

/* Observed queries are scored in batches, so that each K row is read once per batch
   rather than once per query (group x observe queries per kv head). */
#define EKV__SCORE_BATCH 16

EKV_DEF ekv_result ekv_observed_scores(const ekv_data *data, double softmax_scale,
                                       double *scores)
{
    const char *fn = "ekv_observed_scores";
    ekv_result result = ekv__check_data(data, fn);
    double scale = 0.0, *logits;
    int b, g, t, j, group, queries, first, D;
    if (result != EKV_SUCCESS) return result;
    if (!scores) return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: NULL output", fn);
    if (data->observe < 1 || !data->q_observe)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: the data has no observed queries", fn);
    result = ekv__resolve_scale(softmax_scale, data->head_dim, fn, &scale);
    if (result != EKV_SUCCESS) return result;
    logits = (double *)ekv__alloc((size_t)EKV__SCORE_BATCH * (size_t)data->capacity, sizeof(double));
    if (!logits) return EKV_ERR_OUT_OF_MEMORY;
    D = data->head_dim;
    group = data->heads / data->kv_heads;
    queries = group * data->observe;
    memset(scores, 0, (size_t)data->batch * (size_t)data->kv_heads * (size_t)data->capacity *
                          sizeof(double));
    for (b = 0; b < data->batch; b++)
        for (g = 0; g < data->kv_heads; g++) {
            const int length = data->lengths[b];
            const float *k = data->k + ekv_data_kv_index(data, b, g, 0);
            /* the group's observed queries are contiguous: [heads of g][observe][D] */
            const float *q = data->q_observe + ((size_t)b * (size_t)data->heads +
                                                (size_t)g * (size_t)group) *
                                                   (size_t)data->observe * (size_t)D;
            double *s = scores + ((size_t)b * (size_t)data->kv_heads + (size_t)g) *
                                     (size_t)data->capacity;
            if (length == 0) continue;
            for (first = 0; first < queries; first += EKV__SCORE_BATCH) {
                const int n = queries - first < EKV__SCORE_BATCH ? queries - first : EKV__SCORE_BATCH;
                for (t = 0; t < length; t++) {
                    const float *row = k + (size_t)t * (size_t)D;
                    for (j = 0; j < n; j++)
                        logits[(size_t)j * (size_t)length + (size_t)t] =
                            scale * ekv__dot_f64(q + (size_t)(first + j) * (size_t)D, row, D);
                }
                for (j = 0; j < n; j++) {
                    double *p = logits + (size_t)j * (size_t)length;
                    ekv__softmax(p, length);
                    for (t = 0; t < length; t++) s[t] += p[t];
                }
            }
        }
    ekv__free(logits);
    return EKV_SUCCESS;
}

/* >>cacheops: the elastic cache on the host: create, prefill, append, compress ========= */

/* The CPU reference of the device cache: every rule of ekv.h >>cacheops is decided here,
   and the kernels of ekv_cuda.cuh (>>elastic) follow the same operation order. */

static ekv_result ekv__elastic_check(const ekv_host_cache *cache, const char *fn)
{
    if (!cache || !cache->k || !cache->v || !cache->lengths || !cache->compressed)
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "%s: the cache was not made by ekv_cache_create (NULL buffers or "
                             "no compressed counts)", fn);
    if ((int)cache->dtype < 0 || cache->dtype >= EKV_DTYPE_COUNT || cache->batch < 1 ||
        cache->kv_heads < 1 || cache->head_dim < 1 || cache->capacity < 1)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: bad cache dimensions", fn);
    return EKV_SUCCESS;
}

static size_t ekv__elastic_row(const ekv_host_cache *cache, int b, int h, int slot)
{
    return ((size_t)b * (size_t)cache->kv_heads + (size_t)h) * (size_t)cache->capacity +
           (size_t)slot;
}

static unsigned char *ekv__elastic_values(ekv_host_cache *cache, int which, size_t row)
{
    return (which ? cache->v : cache->k) + row * ekv_dtype_row_bytes(cache->dtype, cache->head_dim);
}

/* Per-row scale data of the row, or NULL for dtypes without any. */
static unsigned char *ekv__elastic_row_scale(ekv_host_cache *cache, int which, size_t row)
{
    const size_t bytes = ekv_dtype_row_scale_bytes(cache->dtype, cache->head_dim);
    if (!bytes) return NULL;
    return (which ? cache->v_scales : cache->k_scales) + row * bytes;
}

static float *ekv__elastic_head_scale(ekv_host_cache *cache, int which, int b, int h)
{
    if (cache->dtype != EKV_DTYPE_FP8) return NULL;
    return (float *)(void *)(which ? cache->v_scales : cache->k_scales) +
           (size_t)b * (size_t)cache->kv_heads + (size_t)h;
}

EKV_DEF size_t ekv_cache_memory_bytes(const ekv_host_cache *cache)
{
    if (!cache) return 0;
    return (size_t)ekv_cache_memory_of(cache->dtype, cache->batch, cache->kv_heads,
                                       cache->head_dim, cache->capacity, cache->bias != NULL);
}

EKV_DEF ekv_result ekv_cache_create(ekv_host_cache *cache, ekv_dtype dtype, int batch,
                                    int kv_heads, int head_dim, int capacity, int with_bias)
{
    if (!cache) return ekv_set_error(EKV_ERR_INVALID_ARG, "ekv_cache_create: NULL cache");
    return ekv__cache_alloc(cache, dtype, batch, kv_heads, head_dim, capacity, with_bias, 1,
                            "ekv_cache_create");
}

/* Quantizes `x` into slot `slot` of (b, h) and clears the slot's bias. */
static void ekv__elastic_store(ekv_host_cache *cache, int which, int b, int h, int slot,
                               const float *x)
{
    const size_t row = ekv__elastic_row(cache, b, h, slot);
    const float *head_scale = ekv__elastic_head_scale(cache, which, b, h);
    ekv_quantize_row(cache->dtype, x, cache->head_dim, head_scale ? *head_scale : 0.0f,
                     ekv__elastic_values(cache, which, row), ekv__elastic_row_scale(cache, which, row));
    if (which == 0 && cache->bias) cache->bias[row] = 0.0f;
}

static float ekv__amax(const float *x, size_t n)
{
    float amax = 0.0f;
    size_t i;
    for (i = 0; i < n; i++)
        if (fabsf(x[i]) > amax) amax = fabsf(x[i]);
    return amax;
}

EKV_DEF ekv_result ekv_cache_prefill(ekv_host_cache *cache, const float *k, const float *v,
                                     int source_capacity, const int *lengths)
{
    const char *fn = "ekv_cache_prefill";
    ekv_result result = ekv__elastic_check(cache, fn);
    int b, h, t, which;
    if (result != EKV_SUCCESS) return result;
    if (!k || !v || !lengths)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: NULL k, v or lengths", fn);
    for (b = 0; b < cache->batch; b++)
        if (lengths[b] < 0 || lengths[b] > source_capacity || lengths[b] > cache->capacity)
            return ekv_set_error(EKV_ERR_INVALID_ARG,
                                 "%s: lengths[%d] = %d outside [0, min(source_capacity %d, "
                                 "capacity %d)]", fn, b, lengths[b], source_capacity,
                                 cache->capacity);
    for (b = 0; b < cache->batch; b++) {
        for (h = 0; h < cache->kv_heads; h++)
            for (which = 0; which < 2; which++) {
                const float *source = (which ? v : k) +
                                      ((size_t)b * (size_t)cache->kv_heads + (size_t)h) *
                                          (size_t)source_capacity * (size_t)cache->head_dim;
                float *head_scale = ekv__elastic_head_scale(cache, which, b, h);
                if (head_scale)
                    *head_scale = ekv__amax(source, (size_t)lengths[b] * (size_t)cache->head_dim) /
                                  EKV_FP8_MAX;
                for (t = 0; t < lengths[b]; t++)
                    ekv__elastic_store(cache, which, b, h, t,
                                       source + (size_t)t * (size_t)cache->head_dim);
            }
        cache->lengths[b] = lengths[b];
        cache->compressed[b] = 0;
    }
    return EKV_SUCCESS;
}

/* The one rule of an appended row, for the contiguous and the paged cache: an fp8 head
   scale still 0 is set from this row (amax / 448), then the row is quantized. */
static void ekv__append_row(ekv_dtype dtype, int head_dim, const float *x, float *head_scale,
                            unsigned char *values, unsigned char *row_scale)
{
    if (head_scale && *head_scale == 0.0f)
        *head_scale = ekv__amax(x, (size_t)head_dim) / EKV_FP8_MAX;
    ekv_quantize_row(dtype, x, head_dim, head_scale ? *head_scale : 0.0f, values, row_scale);
}

EKV_DEF ekv_result ekv_cache_append(ekv_host_cache *cache, const float *k, const float *v,
                                    const unsigned char *active)
{
    const char *fn = "ekv_cache_append";
    ekv_result result = ekv__elastic_check(cache, fn);
    const int D = cache ? cache->head_dim : 0;
    int b, h, which;
    if (result != EKV_SUCCESS) return result;
    if (!k || !v) return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: NULL k or v", fn);
    for (b = 0; b < cache->batch; b++)
        if ((!active || active[b]) && cache->lengths[b] >= cache->capacity)
            return ekv_set_error(EKV_ERR_INVALID_ARG,
                                 "%s: sequence %d is full (capacity %d): compress it or create "
                                 "a larger cache", fn, b, cache->capacity);
    for (b = 0; b < cache->batch; b++) {
        if (active && !active[b]) continue;
        for (h = 0; h < cache->kv_heads; h++)
            for (which = 0; which < 2; which++) {
                const float *x = (which ? v : k) +
                                 ((size_t)b * (size_t)cache->kv_heads + (size_t)h) * (size_t)D;
                const size_t row = ekv__elastic_row(cache, b, h, cache->lengths[b]);
                ekv__append_row(cache->dtype, D, x, ekv__elastic_head_scale(cache, which, b, h),
                                ekv__elastic_values(cache, which, row),
                                ekv__elastic_row_scale(cache, which, row));
                if (which == 0 && cache->bias) cache->bias[row] = 0.0f;
            }
        cache->lengths[b]++;
    }
    return EKV_SUCCESS;
}

EKV_DEF ekv_result ekv_cache_observed_scores(const ekv_host_cache *cache, const float *q_observe,
                                             int heads, int observe, double softmax_scale,
                                             double *scores)
{
    const char *fn = "ekv_cache_observed_scores";
    double scale = 0.0, *logits = NULL, partial[EKV_SCORE_LANES];
    float *keys = NULL;
    ekv_result result = ekv__elastic_check(cache, fn);
    int b, g, j, s, i, group, D;
    if (result != EKV_SUCCESS) return result;
    if (!q_observe || !scores || observe < 1)
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "%s: needs observed queries (q_observe non-NULL, observe >= 1) and "
                             "an output", fn);
    if (heads < 1 || heads % cache->kv_heads != 0)
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "%s: heads (%d) must be a positive multiple of kv_heads (%d)", fn,
                             heads, cache->kv_heads);
    result = ekv__resolve_scale(softmax_scale, cache->head_dim, fn, &scale);
    if (result != EKV_SUCCESS) return result;
    D = cache->head_dim;
    group = heads / cache->kv_heads;
    keys = (float *)ekv__alloc((size_t)cache->capacity * (size_t)D, sizeof(float));
    logits = (double *)ekv__alloc((size_t)cache->capacity, sizeof(double));
    if (!keys || !logits) {
        ekv__free(keys);
        ekv__free(logits);
        return EKV_ERR_OUT_OF_MEMORY;
    }
    memset(scores, 0, (size_t)cache->batch * (size_t)cache->kv_heads * (size_t)cache->capacity *
                          sizeof(double));
    for (b = 0; b < cache->batch; b++)
        for (g = 0; g < cache->kv_heads; g++) {
            const int length = cache->lengths[b];
            const size_t head = (size_t)b * (size_t)cache->kv_heads + (size_t)g;
            const float *bias = cache->bias ? cache->bias + head * (size_t)cache->capacity : NULL;
            double *out = scores + head * (size_t)cache->capacity;
            for (s = 0; s < length; s++) ekv_cache_row(cache, 0, b, g, s, keys + (size_t)s * (size_t)D);
            /* queries of the group in order: query head, then observed step */
            for (j = 0; j < group * observe; j++) {
                const float *q = q_observe + (((size_t)b * (size_t)heads + (size_t)g * (size_t)group +
                                               (size_t)(j / observe)) * (size_t)observe +
                                              (size_t)(j % observe)) * (size_t)D;
                double max = -HUGE_VAL, total = 0.0;
                for (s = 0; s < length; s++) {
                    logits[s] = scale * ekv__dot_f64(q, keys + (size_t)s * (size_t)D, D) +
                                (bias ? (double)bias[s] : 0.0);
                    if (logits[s] > max) max = logits[s];
                }
                for (i = 0; i < EKV_SCORE_LANES; i++) partial[i] = 0.0;
                for (s = 0; s < length; s++) {
                    logits[s] = exp(logits[s] - max);
                    partial[s % EKV_SCORE_LANES] += logits[s];
                }
                for (i = 0; i < EKV_SCORE_LANES; i++) total += partial[i];
                for (s = 0; s < length; s++) out[s] += logits[s] / total;
            }
        }
    ekv__free(keys);
    ekv__free(logits);
    return EKV_SUCCESS;
}

/* Writes slot `dest` of (b, h) in K or V from the slot source [first, first + count) of the
   same head (first >= dest, so the sources are still intact when the slots are filled in
   increasing order). `sum` and `row` are scratch of head_dim. */
static void ekv__elastic_move(ekv_host_cache *cache, int which, int b, int h, int dest,
                              ekv_slot_source source, double *sum, float *row)
{
    const size_t to = ekv__elastic_row(cache, b, h, dest);
    const size_t from = ekv__elastic_row(cache, b, h, source.first);
    const size_t row_bytes = ekv_dtype_row_bytes(cache->dtype, cache->head_dim);
    const size_t scale_bytes = ekv_dtype_row_scale_bytes(cache->dtype, cache->head_dim);
    const int D = cache->head_dim;
    int t, d;
    if (source.count == 1) {
        if (to == from) return;
        memcpy(ekv__elastic_values(cache, which, to), ekv__elastic_values(cache, which, from), row_bytes);
        if (scale_bytes)
            memcpy(ekv__elastic_row_scale(cache, which, to), ekv__elastic_row_scale(cache, which, from),
                   scale_bytes);
        if (which == 0 && cache->bias) cache->bias[to] = cache->bias[from];
        return;
    }
    for (d = 0; d < D; d++) sum[d] = 0.0;
    for (t = 0; t < source.count; t++) {
        ekv_cache_row(cache, which, b, h, source.first + t, row);
        for (d = 0; d < D; d++) sum[d] += row[d];
    }
    for (d = 0; d < D; d++) row[d] = (float)(sum[d] / source.count);
    {
        const float *head_scale = ekv__elastic_head_scale(cache, which, b, h);
        ekv_quantize_row(cache->dtype, row, D, head_scale ? *head_scale : 0.0f,
                         ekv__elastic_values(cache, which, to), ekv__elastic_row_scale(cache, which, to));
    }
    if (which == 0 && cache->bias) cache->bias[to] = (float)log((double)source.count);
}

EKV_DEF ekv_result ekv_cache_compress(ekv_host_cache *cache, const ekv_compress_desc *desc,
                                      const float *q_observe, int heads, int observe,
                                      double softmax_scale)
{
    const char *fn = "ekv_cache_compress";
    ekv_result result = ekv__elastic_check(cache, fn);
    ekv_slot_source *slots = NULL;
    double *scores = NULL, *sum = NULL;
    float *row = NULL;
    int b, h, which, s;
    if (result != EKV_SUCCESS) return result;
    if (!ekv_compress_desc_valid(desc))
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "%s: bad compression settings (policy none needs compression 1; "
                             "compression >= 1, recent >= 0, sinks >= 0)", fn);
    if (desc->policy == EKV_POLICY_POOL && !cache->bias)
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "%s: policy pool needs a cache created with_bias (the ln(count) "
                             "logit bias of pooled slots)", fn);
    if (desc->policy == EKV_POLICY_TOPK && (!q_observe || observe < 1))
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "%s: policy topk needs the observed queries (q_observe non-NULL, "
                             "observe >= 1)", fn);
    slots = (ekv_slot_source *)ekv__alloc((size_t)cache->capacity, sizeof *slots);
    sum = (double *)ekv__alloc((size_t)cache->head_dim, sizeof(double));
    row = (float *)ekv__alloc((size_t)cache->head_dim, sizeof(float));
    if (!slots || !sum || !row) {
        result = EKV_ERR_OUT_OF_MEMORY;
        goto done;
    }
    if (desc->policy == EKV_POLICY_TOPK) {
        scores = (double *)ekv__alloc((size_t)cache->batch * (size_t)cache->kv_heads *
                                          (size_t)cache->capacity, sizeof(double));
        if (!scores) {
            result = EKV_ERR_OUT_OF_MEMORY;
            goto done;
        }
        result = ekv_cache_observed_scores(cache, q_observe, heads, observe, softmax_scale, scores);
        if (result != EKV_SUCCESS) goto done;
    }
    for (b = 0; b < cache->batch; b++) {
        const ekv_compress_region r = ekv_compress_region_of(
            cache->lengths[b], cache->compressed[b], desc->recent, desc->sinks, desc->compression);
        const int first = r.first, fresh = r.fresh, recent = r.recent;
        ekv_compress_desc region = *desc;
        int kept = 0;
        if (r.old <= 0) continue; /* nothing older than the window yet */
        region.sinks = r.sinks;
        for (h = 0; h < cache->kv_heads; h++) {
            const double *head_scores =
                scores ? scores + ((size_t)b * (size_t)cache->kv_heads + (size_t)h) *
                                      (size_t)cache->capacity + (size_t)first
                       : NULL;
            kept = ekv_policy_map(&region, fresh, head_scores, slots);
            if (kept < 0) {
                result = ekv_set_error(EKV_ERR_OUT_OF_MEMORY, "%s: slot map failed", fn);
                goto done;
            }
            for (which = 0; which < 2; which++)
                for (s = 0; s < kept; s++) {
                    ekv_slot_source source = slots[s];
                    source.first += first;
                    ekv__elastic_move(cache, which, b, h, first + s, source, sum, row);
                }
        }
        cache->compressed[b] = first + kept - recent;
        cache->lengths[b] = first + kept;
    }
    result = EKV_SUCCESS;
done:
    ekv__free(slots);
    ekv__free(scores);
    ekv__free(sum);
    ekv__free(row);
    return result;
}

/* >>paged: the paged elastic cache: page pool, block tables ================== */

EKV_DEF int ekv_page_size_valid(int page_size)
{
    return page_size == 8 || page_size == 16 || page_size == 32 || page_size == 64;
}

EKV_DEF size_t ekv_paged_page_bytes(ekv_dtype dtype, int kv_heads, int head_dim, int page_size,
                                    int with_bias)
{
    if (!ekv_dtype_info(dtype) || kv_heads < 1 || head_dim < 1 || page_size < 1) return 0;
    return (size_t)kv_heads * (size_t)page_size *
           (2 * (ekv_dtype_row_bytes(dtype, head_dim) + ekv_dtype_row_scale_bytes(dtype, head_dim)) +
            (with_bias ? sizeof(float) : 0));
}

EKV_DEF void ekv_paged_free(ekv_paged_cache *cache)
{
    if (!cache) return;
    ekv__free(cache->lengths);
    ekv__free(cache->compressed);
    ekv__free(cache->block_table);
    ekv__free(cache->held);
    ekv__free(cache->owner);
    ekv__free(cache->free_pages);
    ekv__free(cache->k);
    ekv__free(cache->v);
    ekv__free(cache->k_scales);
    ekv__free(cache->v_scales);
    ekv__free(cache->bias);
    memset(cache, 0, sizeof *cache);
}

/* The pool's bookkeeping (tables, owners, free list), shared by a cache and a pool
   without storage. */
static ekv_result ekv__paged_pool_init(ekv_paged_cache *cache, int batch, int page_size,
                                       int pages, int capacity, const char *fn)
{
    size_t table;
    int i;
    if (!ekv_page_size_valid(page_size))
        return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: page_size %d: allowed 8, 16, 32, 64", fn,
                             page_size);
    if (batch < 1 || pages < 1 || capacity < 1)
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "%s: batch (%d), pages (%d) and capacity (%d) must be positive", fn,
                             batch, pages, capacity);
    cache->table_width = capacity / page_size + (capacity % page_size != 0);
    if (!ekv__mul_size((size_t)batch, (size_t)cache->table_width, &table))
        return ekv_set_error(EKV_ERR_OUT_OF_MEMORY, "%s: block tables too large to address", fn);
    cache->batch = batch;
    cache->page_size = page_size;
    for (cache->page_shift = 0; (1 << cache->page_shift) < page_size; cache->page_shift++) {
    }
    cache->pages = pages;
    cache->lengths = (int *)ekv__alloc((size_t)batch, sizeof(int));
    cache->compressed = (int *)ekv__alloc((size_t)batch, sizeof(int));
    cache->held = (int *)ekv__alloc((size_t)batch, sizeof(int));
    cache->block_table = (int *)ekv__alloc(table, sizeof(int));
    cache->owner = (int *)ekv__alloc((size_t)pages, sizeof(int));
    cache->free_pages = (int *)ekv__alloc((size_t)pages, sizeof(int));
    if (!cache->lengths || !cache->compressed || !cache->held || !cache->block_table ||
        !cache->owner || !cache->free_pages) {
        ekv_paged_free(cache);
        return EKV_ERR_OUT_OF_MEMORY;
    }
    for (i = 0; i < batch * cache->table_width; i++) cache->block_table[i] = -1;
    /* a stack popped from the top: page 0 is taken first */
    for (i = 0; i < pages; i++) {
        cache->owner[i] = -1;
        cache->free_pages[i] = pages - 1 - i;
    }
    cache->free_count = pages;
    return EKV_SUCCESS;
}

EKV_DEF ekv_result ekv_paged_pool_create(ekv_paged_cache *cache, int batch, int page_size,
                                         int pages, int capacity)
{
    if (!cache) return ekv_set_error(EKV_ERR_INVALID_ARG, "ekv_paged_pool_create: NULL pool");
    memset(cache, 0, sizeof *cache);
    return ekv__paged_pool_init(cache, batch, page_size, pages, capacity, "ekv_paged_pool_create");
}

EKV_DEF ekv_result ekv_paged_create(ekv_paged_cache *cache, ekv_dtype dtype, int batch,
                                    int kv_heads, int head_dim, int page_size, int pages,
                                    int capacity, int with_bias)
{
    const char *fn = "ekv_paged_create";
    const ekv_dtype_traits *t = ekv_dtype_info(dtype);
    size_t rows, row_bytes, scale_bytes, scales, cells;
    ekv_result result;
    if (!cache) return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: NULL cache", fn);
    memset(cache, 0, sizeof *cache);
    if (!t)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: unknown dtype %d: allowed %s", fn,
                             (int)dtype, ekv_dtype_allowed());
    if (!ekv_page_size_valid(page_size))
        return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: page_size %d: allowed 8, 16, 32, 64", fn,
                             page_size);
    if (batch < 1 || kv_heads < 1 || head_dim < 1 || pages < 1 || capacity < 1)
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "%s: batch (%d), kv_heads (%d), head_dim (%d), pages (%d) and "
                             "capacity (%d) must be positive", fn, batch, kv_heads, head_dim,
                             pages, capacity);
    if (t->paired_values && head_dim % 2 != 0)
        return ekv_set_error(EKV_ERR_UNSUPPORTED, "%s: head_dim %d must be even for %s", fn,
                             head_dim, t->name);
    row_bytes = ekv_dtype_row_bytes(dtype, head_dim);
    scale_bytes = ekv_dtype_row_scale_bytes(dtype, head_dim);
    if (!ekv__mul_size((size_t)pages * (size_t)kv_heads, (size_t)page_size, &rows) ||
        rows > 0xffffffffu ||
        !ekv__mul_size(rows, row_bytes, &cells) ||
        (rows > 0 && ((size_t)-1) / rows < sizeof(float) + scale_bytes))
        return ekv_set_error(EKV_ERR_OUT_OF_MEMORY, "%s: cache too large to address", fn);
    scales = t->head_scale_bytes ? (size_t)batch * (size_t)kv_heads * (size_t)t->head_scale_bytes
                                 : rows * scale_bytes;
    if ((result = ekv__paged_pool_init(cache, batch, page_size, pages, capacity, fn)) != EKV_SUCCESS)
        return result;
    cache->dtype = dtype;
    cache->kv_heads = kv_heads;
    cache->head_dim = head_dim;
    cache->k = (unsigned char *)ekv__alloc(rows, row_bytes);
    cache->v = (unsigned char *)ekv__alloc(rows, row_bytes);
    if (scales) {
        cache->k_scales = (unsigned char *)ekv__alloc(scales, 1);
        cache->v_scales = (unsigned char *)ekv__alloc(scales, 1);
    }
    if (with_bias) cache->bias = (float *)ekv__alloc(rows, sizeof(float));
    if (!cache->k || !cache->v || (scales && (!cache->k_scales || !cache->v_scales)) ||
        (with_bias && !cache->bias)) {
        ekv_paged_free(cache);
        return EKV_ERR_OUT_OF_MEMORY;
    }
    return EKV_SUCCESS;
}

EKV_DEF int ekv_paged_pages_used(const ekv_paged_cache *cache)
{
    return cache ? cache->pages - cache->free_count : 0;
}

/* A pool made by ekv_paged_create (need_storage) or either create function. */
static ekv_result ekv__paged_valid_as(const ekv_paged_cache *cache, const char *fn, int need_storage)
{
    if (!cache || !cache->lengths || !cache->block_table || !cache->free_pages)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: the cache was not made by ekv_paged_create",
                             fn);
    if (need_storage && !cache->k)
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "%s: a pool without storage (ekv_paged_pool_create) holds no rows", fn);
    return EKV_SUCCESS;
}

static ekv_result ekv__paged_valid(const ekv_paged_cache *cache, const char *fn)
{
    return ekv__paged_valid_as(cache, fn, 1);
}

static size_t ekv__paged_row(const ekv_paged_cache *cache, int b, int h, int t)
{
    return ekv_page_row(cache->block_table, cache->table_width, cache->page_shift,
                        cache->kv_heads, (size_t)b, (size_t)h, (size_t)t);
}

static int ekv__paged_pages_for(const ekv_paged_cache *cache, int length)
{
    return (length + cache->page_size - 1) >> cache->page_shift;
}

static void ekv__paged_take(ekv_paged_cache *cache, int b)
{
    const int page = cache->free_pages[--cache->free_count];
    cache->owner[page] = b;
    cache->block_table[(size_t)b * (size_t)cache->table_width + (size_t)cache->held[b]++] = page;
}

static void ekv__paged_give_back(ekv_paged_cache *cache, int b)
{
    int *entry = &cache->block_table[(size_t)b * (size_t)cache->table_width + (size_t)--cache->held[b]];
    cache->owner[*entry] = -1;
    cache->free_pages[cache->free_count++] = *entry;
    *entry = -1;
}

/* Copies one slot's row of every array between a contiguous cache and a paged one. */
static void ekv__paged_copy_slot(ekv_paged_cache *paged, ekv_host_cache *flat, int b, int flat_b,
                                 int h, int t, int to_paged)
{
    const size_t row_bytes = ekv_dtype_row_bytes(paged->dtype, paged->head_dim);
    const size_t scale_bytes = ekv_dtype_row_scale_bytes(paged->dtype, paged->head_dim);
    const size_t page_row = ekv__paged_row(paged, b, h, t);
    const size_t flat_row = ((size_t)flat_b * (size_t)flat->kv_heads + (size_t)h) *
                                (size_t)flat->capacity + (size_t)t;
    int which;
    for (which = 0; which < 2; which++) {
        unsigned char *pv = (which ? paged->v : paged->k) + page_row * row_bytes;
        unsigned char *fv = (which ? flat->v : flat->k) + flat_row * row_bytes;
        memcpy(to_paged ? pv : fv, to_paged ? fv : pv, row_bytes);
        if (scale_bytes) {
            unsigned char *ps = (which ? paged->v_scales : paged->k_scales) + page_row * scale_bytes;
            unsigned char *fs = (which ? flat->v_scales : flat->k_scales) + flat_row * scale_bytes;
            memcpy(to_paged ? ps : fs, to_paged ? fs : ps, scale_bytes);
        }
    }
    if (to_paged && paged->bias) paged->bias[page_row] = flat->bias ? flat->bias[flat_row] : 0.0f;
    if (!to_paged && flat->bias) flat->bias[flat_row] = paged->bias ? paged->bias[page_row] : 0.0f;
}

/* fp8's per-(sequence, kv head) scales, copied either way. */
static void ekv__paged_copy_head_scales(ekv_paged_cache *paged, ekv_host_cache *flat, int b,
                                        int flat_b, int to_paged)
{
    const size_t bytes = (size_t)paged->kv_heads * sizeof(float);
    int which;
    if (paged->dtype != EKV_DTYPE_FP8) return;
    for (which = 0; which < 2; which++) {
        unsigned char *p = (which ? paged->v_scales : paged->k_scales) + (size_t)b * bytes;
        unsigned char *f = (which ? flat->v_scales : flat->k_scales) + (size_t)flat_b * bytes;
        memcpy(to_paged ? p : f, to_paged ? f : p, bytes);
    }
}

EKV_DEF ekv_result ekv_paged_admit(ekv_paged_cache *cache, int b, const ekv_host_cache *source,
                                   int source_b)
{
    const char *fn = "ekv_paged_admit";
    ekv_result result = ekv__paged_valid(cache, fn);
    ekv_host_cache *flat = (ekv_host_cache *)source; /* only read: the copies go to the paged cache */
    int length, need, h, t;
    if (result != EKV_SUCCESS) return result;
    if (!source || !source->k || !source->lengths || source_b < 0 || source_b >= source->batch)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: no source sequence %d", fn, source_b);
    if (b < 0 || b >= cache->batch || cache->held[b] != 0 || cache->lengths[b] != 0)
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "%s: sequence %d is not an empty sequence of the cache (batch %d)",
                             fn, b, cache->batch);
    if (source->dtype != cache->dtype || source->kv_heads != cache->kv_heads ||
        source->head_dim != cache->head_dim || (source->bias && !cache->bias))
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "%s: the source's dtype, kv_heads, head_dim or bias differ from "
                             "the paged cache's", fn);
    length = source->lengths[source_b];
    need = ekv__paged_pages_for(cache, length);
    if (need > cache->table_width)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: %d slots exceed the capacity (%d pages of %d)",
                             fn, length, cache->table_width, cache->page_size);
    if (need > cache->free_count)
        return ekv_set_error(EKV_ERR_OUT_OF_MEMORY, "%s: sequence %d needs %d pages, %d free", fn,
                             b, need, cache->free_count);
    while (cache->held[b] < need) ekv__paged_take(cache, b);
    for (h = 0; h < cache->kv_heads; h++)
        for (t = 0; t < length; t++) ekv__paged_copy_slot(cache, flat, b, source_b, h, t, 1);
    ekv__paged_copy_head_scales(cache, flat, b, source_b, 1);
    cache->lengths[b] = length;
    cache->compressed[b] = source->compressed ? source->compressed[source_b] : 0;
    return EKV_SUCCESS;
}

EKV_DEF ekv_result ekv_paged_append(ekv_paged_cache *cache, const float *k, const float *v,
                                    const unsigned char *active)
{
    const char *fn = "ekv_paged_append";
    ekv_result result = ekv__paged_valid(cache, fn);
    const size_t row_bytes = cache ? ekv_dtype_row_bytes(cache->dtype, cache->head_dim) : 0;
    const size_t scale_bytes = cache ? ekv_dtype_row_scale_bytes(cache->dtype, cache->head_dim) : 0;
    int b, h, which, need = 0;
    if (result != EKV_SUCCESS) return result;
    if (!k || !v) return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: NULL k or v", fn);
    for (b = 0; b < cache->batch; b++) {
        if (active && !active[b]) continue;
        if (cache->lengths[b] >= cache->table_width * cache->page_size)
            return ekv_set_error(EKV_ERR_INVALID_ARG,
                                 "%s: sequence %d is full (capacity %d): compress or retire it",
                                 fn, b, cache->table_width * cache->page_size);
        need += cache->lengths[b] == cache->held[b] * cache->page_size;
    }
    if (need > cache->free_count)
        return ekv_set_error(EKV_ERR_OUT_OF_MEMORY, "%s: %d sequences need a page, %d free", fn,
                             need, cache->free_count);
    for (b = 0; b < cache->batch; b++) {
        if (active && !active[b]) continue;
        if (cache->lengths[b] == cache->held[b] * cache->page_size) ekv__paged_take(cache, b);
        for (h = 0; h < cache->kv_heads; h++) {
            const size_t row = ekv__paged_row(cache, b, h, cache->lengths[b]);
            for (which = 0; which < 2; which++) {
                const size_t head = (size_t)b * (size_t)cache->kv_heads + (size_t)h;
                unsigned char *scales = which ? cache->v_scales : cache->k_scales;
                ekv__append_row(cache->dtype, cache->head_dim,
                                (which ? v : k) + head * (size_t)cache->head_dim,
                                cache->dtype == EKV_DTYPE_FP8 ? (float *)(void *)scales + head : NULL,
                                (which ? cache->v : cache->k) + row * row_bytes,
                                scale_bytes ? scales + row * scale_bytes : NULL);
            }
            if (cache->bias) cache->bias[row] = 0.0f;
        }
        cache->lengths[b]++;
    }
    return EKV_SUCCESS;
}

EKV_DEF ekv_result ekv_paged_gather(const ekv_paged_cache *cache, ekv_host_cache *out)
{
    const char *fn = "ekv_paged_gather";
    ekv_paged_cache *paged = (ekv_paged_cache *)cache; /* only read: the copies go to `out` */
    ekv_result result = ekv__paged_valid(cache, fn);
    int b, h, t;
    if (result != EKV_SUCCESS) return result;
    if (!out) return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: NULL output cache", fn);
    result = ekv__cache_alloc(out, cache->dtype, cache->batch, cache->kv_heads, cache->head_dim,
                              cache->table_width * cache->page_size, cache->bias != NULL, 1, fn);
    if (result != EKV_SUCCESS) return result;
    for (b = 0; b < cache->batch; b++) {
        for (h = 0; h < cache->kv_heads; h++)
            for (t = 0; t < cache->lengths[b]; t++) ekv__paged_copy_slot(paged, out, b, b, h, t, 0);
        ekv__paged_copy_head_scales(paged, out, b, b, 0);
        out->lengths[b] = cache->lengths[b];
        out->compressed[b] = cache->compressed[b];
    }
    return EKV_SUCCESS;
}

EKV_DEF ekv_result ekv_paged_compress(ekv_paged_cache *cache, const ekv_compress_desc *desc,
                                      const float *q_observe, int heads, int observe,
                                      double softmax_scale)
{
    const char *fn = "ekv_paged_compress";
    ekv_host_cache staging;
    ekv_result result = ekv__paged_valid(cache, fn);
    int b, h, t;
    if (result != EKV_SUCCESS) return result;
    if ((result = ekv_paged_gather(cache, &staging)) != EKV_SUCCESS) return result;
    result = ekv_cache_compress(&staging, desc, q_observe, heads, observe, softmax_scale);
    if (result == EKV_SUCCESS)
        for (b = 0; b < cache->batch; b++) {
            /* slots before the old compressed count never change */
            for (h = 0; h < cache->kv_heads; h++)
                for (t = cache->compressed[b]; t < staging.lengths[b]; t++)
                    ekv__paged_copy_slot(cache, &staging, b, b, h, t, 1);
            cache->lengths[b] = staging.lengths[b];
            cache->compressed[b] = staging.compressed[b];
            while (cache->held[b] > ekv__paged_pages_for(cache, cache->lengths[b]))
                ekv__paged_give_back(cache, b);
        }
    ekv_cache_free(&staging);
    return result;
}

EKV_DEF ekv_result ekv_paged_retire(ekv_paged_cache *cache, int b)
{
    const char *fn = "ekv_paged_retire";
    ekv_result result = ekv__paged_valid_as(cache, fn, 0);
    if (result != EKV_SUCCESS) return result;
    if (b < 0 || b >= cache->batch)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: sequence %d outside [0, %d)", fn, b,
                             cache->batch);
    while (cache->held[b] > 0) ekv__paged_give_back(cache, b);
    cache->lengths[b] = cache->compressed[b] = 0;
    if (cache->dtype == EKV_DTYPE_FP8 && cache->k_scales) {
        /* a new sequence sets its own scales (ekv_cache_append's rule for a zero scale) */
        memset(cache->k_scales + (size_t)b * (size_t)cache->kv_heads * sizeof(float), 0,
               (size_t)cache->kv_heads * sizeof(float));
        memset(cache->v_scales + (size_t)b * (size_t)cache->kv_heads * sizeof(float), 0,
               (size_t)cache->kv_heads * sizeof(float));
    }
    return EKV_SUCCESS;
}

EKV_DEF ekv_result ekv_paged_resize(ekv_paged_cache *cache, int b, int length)
{
    const char *fn = "ekv_paged_resize";
    ekv_result result = ekv__paged_valid_as(cache, fn, 0);
    int need;
    if (result != EKV_SUCCESS) return result;
    if (cache->k)
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "%s: a cache with storage grows by ekv_paged_append and shrinks by "
                             "ekv_paged_compress", fn);
    if (b < 0 || b >= cache->batch)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: sequence %d outside [0, %d)", fn, b,
                             cache->batch);
    if (length < 0 || length > cache->table_width * cache->page_size)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: %d slots outside [0, %d]", fn, length,
                             cache->table_width * cache->page_size);
    need = ekv__paged_pages_for(cache, length);
    if (need - cache->held[b] > cache->free_count)
        return ekv_set_error(EKV_ERR_OUT_OF_MEMORY, "%s: sequence %d needs %d more pages, %d free",
                             fn, b, need - cache->held[b], cache->free_count);
    while (cache->held[b] < need) ekv__paged_take(cache, b);
    while (cache->held[b] > need) ekv__paged_give_back(cache, b);
    cache->lengths[b] = length;
    if (cache->compressed[b] > length) cache->compressed[b] = length;
    return EKV_SUCCESS;
}

EKV_DEF ekv_result ekv_paged_check(const ekv_paged_cache *cache)
{
    const char *fn = "ekv_paged_check";
    ekv_result result = ekv__paged_valid_as(cache, fn, 0);
    unsigned char *seen;
    int i, b, counted = 0;
    if (result != EKV_SUCCESS) return result;
    if (cache->free_count < 0 || cache->free_count > cache->pages)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: free count %d outside [0, %d]", fn,
                             cache->free_count, cache->pages);
    seen = (unsigned char *)ekv__alloc((size_t)cache->pages, 1);
    if (!seen) return EKV_ERR_OUT_OF_MEMORY;
    for (i = 0; i < cache->free_count && result == EKV_SUCCESS; i++) {
        const int page = cache->free_pages[i];
        if (page < 0 || page >= cache->pages || seen[page] || cache->owner[page] != -1)
            result = ekv_set_error(EKV_ERR_INVALID_ARG,
                                   "%s: free list entry %d (page %d) is out of range, listed "
                                   "twice or owned", fn, i, page);
        else seen[page] = 1, counted++;
    }
    for (b = 0; b < cache->batch && result == EKV_SUCCESS; b++) {
        const int *table = cache->block_table + (size_t)b * (size_t)cache->table_width;
        if (cache->lengths[b] < 0 || cache->compressed[b] < 0 ||
            cache->compressed[b] > cache->lengths[b] ||
            cache->held[b] != ekv__paged_pages_for(cache, cache->lengths[b]) ||
            cache->held[b] > cache->table_width) {
            result = ekv_set_error(EKV_ERR_INVALID_ARG,
                                   "%s: sequence %d holds %d pages for %d slots (compressed %d)",
                                   fn, b, cache->held[b], cache->lengths[b], cache->compressed[b]);
            break;
        }
        for (i = 0; i < cache->table_width && result == EKV_SUCCESS; i++) {
            const int page = table[i];
            if (i >= cache->held[b]) {
                if (page != -1)
                    result = ekv_set_error(EKV_ERR_INVALID_ARG,
                                           "%s: sequence %d entry %d names page %d past its %d "
                                           "pages", fn, b, i, page, cache->held[b]);
            } else if (page < 0 || page >= cache->pages || seen[page] || cache->owner[page] != b) {
                result = ekv_set_error(EKV_ERR_INVALID_ARG,
                                       "%s: sequence %d entry %d: page %d is out of range, free, "
                                       "shared or owned by another", fn, b, i, page);
            } else {
                seen[page] = 1;
                counted++;
            }
        }
    }
    if (result == EKV_SUCCESS && counted != cache->pages)
        result = ekv_set_error(EKV_ERR_INVALID_ARG,
                               "%s: %d pages leaked (neither free nor held)", fn,
                               cache->pages - counted);
    ekv__free(seen);
    return result;
}

/* >>accuracy: error metrics, attention profile of the data ================== */

typedef struct ekv__error_sums {
    double diff2, ref2, x2, dot, max_abs;
    int nan_seen;
} ekv__error_sums;

static void ekv__error_add(ekv__error_sums *sums, double r, double y)
{
    double e = y - r, a = fabs(e);
    sums->diff2 += e * e;
    sums->ref2 += r * r;
    sums->x2 += y * y;
    sums->dot += r * y;
    if (a != a) sums->nan_seen = 1;
    else if (a > sums->max_abs) sums->max_abs = a;
}

/* NaN anywhere makes max_abs NaN (as it does the sums): an error must never look small. */
static ekv_error_stats ekv__error_finish(const ekv__error_sums *sums)
{
    ekv_error_stats stats;
    stats.rel_l2 = sums->ref2 > 0.0 ? sqrt(sums->diff2 / sums->ref2) : sqrt(sums->diff2);
    stats.max_abs = sums->nan_seen ? (double)NAN : sums->max_abs;
    if (sums->ref2 > 0.0 && sums->x2 > 0.0)
        stats.cosine = sums->dot / (sqrt(sums->ref2) * sqrt(sums->x2));
    else if (sums->ref2 == 0.0 && sums->x2 == 0.0)
        stats.cosine = 1.0;
    else
        stats.cosine = sums->ref2 == sums->ref2 && sums->x2 == sums->x2 ? 0.0 : (double)NAN;
    return stats;
}

EKV_DEF ekv_error_stats ekv_compare_f32(const double *ref, const float *x, size_t n)
{
    ekv__error_sums sums;
    size_t i;
    memset(&sums, 0, sizeof sums);
    for (i = 0; ref && x && i < n; i++) ekv__error_add(&sums, ref[i], (double)x[i]);
    return ekv__error_finish(&sums);
}

EKV_DEF ekv_error_stats ekv_compare_f64(const double *ref, const double *x, size_t n)
{
    ekv__error_sums sums;
    size_t i;
    memset(&sums, 0, sizeof sums);
    for (i = 0; ref && x && i < n; i++) ekv__error_add(&sums, ref[i], x[i]);
    return ekv__error_finish(&sums);
}

EKV_DEF ekv_result ekv_attention_profile(const ekv_data *data, double softmax_scale,
                                         double *entropy, double *top5pct_mass)
{
    const char *fn = "ekv_attention_profile";
    ekv_result result = ekv__check_data(data, fn);
    double scale = 0.0, *p, entropy_sum = 0.0, mass_sum = 0.0;
    int b, h, t, count = 0;
    if (result != EKV_SUCCESS) return result;
    if (!entropy || !top5pct_mass) return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: NULL output", fn);
    result = ekv__resolve_scale(softmax_scale, data->head_dim, fn, &scale);
    if (result != EKV_SUCCESS) return result;
    p = (double *)ekv__alloc((size_t)data->capacity, sizeof(double));
    if (!p) return EKV_ERR_OUT_OF_MEMORY;
    for (b = 0; b < data->batch; b++) {
        const int length = data->lengths[b];
        const int top = (int)ceil(0.05 * length) > 1 ? (int)ceil(0.05 * length) : 1;
        if (length == 0) continue;
        for (h = 0; h < data->heads; h++) {
            double e = 0.0, mass = 0.0;
            ekv__attention_probs(data, data->q + ((size_t)b * (size_t)data->heads + (size_t)h) *
                                                     (size_t)data->head_dim,
                                 b, h, scale, p);
            for (t = 0; t < length; t++)
                if (p[t] > 0.0) e -= p[t] * log(p[t]);
            qsort(p, (size_t)length, sizeof *p, ekv__compare_double);
            for (t = length - top; t < length; t++) mass += p[t];
            entropy_sum += e;
            mass_sum += mass;
            count++;
        }
    }
    ekv__free(p);
    *entropy = count ? entropy_sum / count : 0.0;
    *top5pct_mass = count ? mass_sum / count : 0.0;
    return EKV_SUCCESS;
}

/* >>abi: the C ABI for bindings (implementation) ============================== */

struct ekv_abi_data {
    ekv_data data;
};

struct ekv_abi_cache {
    const ekv_abi_data *data;
    ekv_host_cache cache;
    ekv_compress_desc desc;
    double softmax_scale;   /* resolved */
    ekv_slot_source *slots; /* [batch][kv_heads][capacity]; count 0 beyond the length */
};

EKV_DEF int ekv_abi_version(void)
{
    return EKV_ABI_VERSION;
}

static ekv_result ekv__abi_null(const void *pointer, const char *name)
{
    return pointer ? EKV_SUCCESS
                   : ekv_set_error(EKV_ERR_INVALID_ARG, "%s is NULL", name);
}

static ekv_result ekv__abi_scale(double softmax_scale)
{
    if (softmax_scale != softmax_scale || softmax_scale > DBL_MAX || softmax_scale < -DBL_MAX)
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "softmax_scale=%g: allowed a finite number (0 = 1/sqrt(head_dim))",
                             softmax_scale);
    return EKV_SUCCESS;
}

/* A copy of a caller's array as the ekv_npy_array the .npz reader would have made, so that
   arrays in memory go through the same checks and rules as --data=FILE. */
static ekv_result ekv__abi_array(const char *name, const float *values, const int64_t *shape,
                                 int ndim, ekv_npy_array *out)
{
    size_t count = 1;
    int i;
    memset(out, 0, sizeof *out);
    if (!values || !shape) return ekv_set_error(EKV_ERR_INVALID_ARG, "%s is NULL", name);
    if (ndim < 1 || ndim > EKV__NPY_MAX_DIMS)
        return ekv_set_error(EKV_ERR_FORMAT, "%s has %d dimensions: allowed 1..%d", name, ndim,
                             EKV__NPY_MAX_DIMS);
    for (i = 0; i < ndim; i++) {
        if (shape[i] < 0 || (uint64_t)shape[i] > (uint64_t)((size_t)-1 / 8) ||
            !ekv__mul_size(count, (size_t)shape[i], &count))
            return ekv_set_error(EKV_ERR_FORMAT, "%s: dimension %d (%lld) is out of range", name,
                                 i, (long long)shape[i]);
        out->shape[i] = shape[i];
    }
    out->ndim = ndim;
    out->values = (float *)ekv__alloc(count, sizeof(float));
    if (!out->values) return EKV_ERR_OUT_OF_MEMORY;
    memcpy(out->values, values, count * sizeof(float));
    return EKV_SUCCESS;
}

EKV_DEF ekv_result ekv_abi_data_create(const float *q, const int64_t *q_shape, int q_ndim,
                                       const float *k, const int64_t *k_shape, int k_ndim,
                                       const float *v, const int64_t *v_shape, int v_ndim,
                                       const float *q_observe, const int64_t *q_observe_shape,
                                       int q_observe_ndim, const int *lengths, int observe,
                                       ekv_abi_data **data)
{
    ekv_npy_array arrays[4];
    ekv_abi_data *d = NULL;
    ekv_result r;
    int i;
    memset(arrays, 0, sizeof arrays);
    if ((r = ekv__abi_null(data, "data")) != EKV_SUCCESS) return r;
    *data = NULL;
    if (observe < 0)
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "observe=%d: allowed 0 or more (queries that score topk)", observe);
    r = ekv__abi_array("q", q, q_shape, q_ndim, &arrays[0]);
    if (r == EKV_SUCCESS) r = ekv__abi_array("k", k, k_shape, k_ndim, &arrays[1]);
    if (r == EKV_SUCCESS) r = ekv__abi_array("v", v, v_shape, v_ndim, &arrays[2]);
    if (r == EKV_SUCCESS && q_observe)
        r = ekv__abi_array("q_observe", q_observe, q_observe_shape, q_observe_ndim, &arrays[3]);
    if (r == EKV_SUCCESS) {
        d = (ekv_abi_data *)ekv__alloc(1, sizeof *d);
        if (!d) r = EKV_ERR_OUT_OF_MEMORY;
    }
    if (r == EKV_SUCCESS) r = ekv__data_from_arrays(arrays, observe, "arrays in memory", &d->data);
    for (i = 0; i < 4; i++) ekv_npy_free(&arrays[i]);
    if (r == EKV_SUCCESS && lengths) {
        for (i = 0; i < d->data.batch && r == EKV_SUCCESS; i++)
            if (lengths[i] < 0 || lengths[i] > d->data.capacity)
                r = ekv_set_error(EKV_ERR_INVALID_ARG,
                                  "lengths[%d]=%d is out of range: allowed 0..%d (the tokens of k)",
                                  i, lengths[i], d->data.capacity);
        if (r == EKV_SUCCESS) memcpy(d->data.lengths, lengths, (size_t)d->data.batch * sizeof(int));
    }
    if (r != EKV_SUCCESS) {
        ekv_abi_data_free(d);
        return r;
    }
    *data = d;
    return EKV_SUCCESS;
}

EKV_DEF ekv_result ekv_abi_data_generate(const char *kind, int batch, int heads, int kv_heads,
                                         int seq_len, int head_dim, int observe, uint64_t seed,
                                         ekv_abi_data **data)
{
    ekv_data_desc desc;
    ekv_abi_data *d;
    ekv_result r;
    if ((r = ekv__abi_null(data, "data")) != EKV_SUCCESS) return r;
    *data = NULL;
    memset(&desc, 0, sizeof desc);
    if (kind && strcmp(kind, "structured") == 0) desc.kind = EKV_DATA_STRUCTURED;
    else if (kind && strcmp(kind, "random") == 0) desc.kind = EKV_DATA_RANDOM;
    else
        return ekv_set_error(EKV_ERR_INVALID_ARG, "data='%.100s' is unknown: allowed structured, random",
                             kind ? kind : "(null)");
    desc.batch = batch;
    desc.heads = heads;
    desc.kv_heads = kv_heads;
    desc.seq_len = seq_len;
    desc.head_dim = head_dim;
    desc.observe = observe;
    desc.seed = seed;
    d = (ekv_abi_data *)ekv__alloc(1, sizeof *d);
    if (!d) return EKV_ERR_OUT_OF_MEMORY;
    r = ekv_data_generate(&desc, &d->data);
    if (r != EKV_SUCCESS) {
        ekv__free(d);
        return r;
    }
    *data = d;
    return EKV_SUCCESS;
}

EKV_DEF ekv_result ekv_abi_data_dim(const ekv_abi_data *data, const char *name, int64_t *value)
{
    static const char *const names[6] = {"batch", "heads", "kv_heads", "seq_len", "head_dim",
                                         "observe"};
    int i;
    ekv_result r;
    if ((r = ekv__abi_null(data, "data")) != EKV_SUCCESS ||
        (r = ekv__abi_null(value, "value")) != EKV_SUCCESS)
        return r;
    i = name ? ekv__find_name(name, names, 6) : -1;
    switch (i) {
    case 0: *value = data->data.batch; break;
    case 1: *value = data->data.heads; break;
    case 2: *value = data->data.kv_heads; break;
    case 3: *value = data->data.capacity; break;
    case 4: *value = data->data.head_dim; break;
    case 5: *value = data->data.observe; break;
    default:
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "name='%.100s' is unknown: allowed batch, heads, kv_heads, seq_len, "
                             "head_dim, observe", name ? name : "(null)");
    }
    return EKV_SUCCESS;
}

EKV_DEF ekv_result ekv_abi_data_copy(const ekv_abi_data *data, const char *name, void *out)
{
    const ekv_data *d;
    const void *source = NULL;
    size_t bytes = 0;
    ekv_result r;
    if ((r = ekv__abi_null(data, "data")) != EKV_SUCCESS ||
        (r = ekv__abi_null(out, "out")) != EKV_SUCCESS)
        return r;
    d = &data->data;
    if (name && strcmp(name, "q") == 0) {
        source = d->q;
        bytes = (size_t)d->batch * d->heads * d->head_dim * sizeof(float);
    } else if (name && (strcmp(name, "k") == 0 || strcmp(name, "v") == 0)) {
        source = name[0] == 'k' ? d->k : d->v;
        bytes = ekv_data_kv_index(d, d->batch, 0, 0) * sizeof(float);
    } else if (name && strcmp(name, "q_observe") == 0) {
        source = d->q_observe;
        bytes = (size_t)d->batch * d->heads * d->observe * d->head_dim * sizeof(float);
    } else if (name && strcmp(name, "lengths") == 0) {
        source = d->lengths;
        bytes = (size_t)d->batch * sizeof(int);
    } else {
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "name='%.100s' is unknown: allowed q, k, v, q_observe, lengths",
                             name ? name : "(null)");
    }
    if (bytes) memcpy(out, source, bytes);
    return EKV_SUCCESS;
}

EKV_DEF ekv_result ekv_abi_data_reference(const ekv_abi_data *data, double softmax_scale,
                                          double *out)
{
    ekv_result r;
    if ((r = ekv__abi_null(data, "data")) != EKV_SUCCESS ||
        (r = ekv__abi_null(out, "out")) != EKV_SUCCESS || (r = ekv__abi_scale(softmax_scale)) != EKV_SUCCESS)
        return r;
    return ekv_reference_attention(&data->data, softmax_scale, out);
}

EKV_DEF ekv_result ekv_abi_data_profile(const ekv_abi_data *data, double softmax_scale,
                                        double *attention_entropy, double *top5pct_mass)
{
    ekv_result r;
    if ((r = ekv__abi_null(data, "data")) != EKV_SUCCESS ||
        (r = ekv__abi_null(attention_entropy, "attention_entropy")) != EKV_SUCCESS ||
        (r = ekv__abi_null(top5pct_mass, "top5pct_mass")) != EKV_SUCCESS ||
        (r = ekv__abi_scale(softmax_scale)) != EKV_SUCCESS)
        return r;
    return ekv_attention_profile(&data->data, softmax_scale, attention_entropy, top5pct_mass);
}

EKV_DEF void ekv_abi_data_free(ekv_abi_data *data)
{
    if (!data) return;
    ekv_data_free(&data->data);
    ekv__free(data);
}

/* ekv_compress_desc_valid decides whether the settings are usable; this only words its
   refusal so that the message names the argument at fault. */
static ekv_result ekv__abi_compress_error(const ekv_compress_desc *desc)
{
    if (desc->compression < 1)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "compress=%d is out of range: allowed 1 or more",
                             desc->compression);
    if (desc->policy == EKV_POLICY_NONE && desc->compression != 1)
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "compress=%d needs a compression policy: with policy='none' only "
                             "compress=1 is allowed (or choose stride, pool, window, topk)",
                             desc->compression);
    if (desc->recent < 0)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "recent=%d is out of range: allowed 0 or more",
                             desc->recent);
    if (desc->sinks < 0)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "sinks=%d is out of range: allowed 0 or more",
                             desc->sinks);
    return ekv_set_error(EKV_ERR_INVALID_ARG,
                         "compress=%d, recent=%d, sinks=%d with policy='%s' are not usable",
                         desc->compression, desc->recent, desc->sinks, ekv_policy_name(desc->policy));
}

EKV_DEF ekv_result ekv_abi_cache_build(const ekv_abi_data *data, const char *kv_dtype,
                                       const char *policy, int compression, int recent,
                                       int sinks, double softmax_scale, ekv_abi_cache **cache)
{
    ekv_abi_cache *c;
    ekv_dtype dtype;
    double *scores = NULL;
    ekv_result r;
    int b, h;
    if ((r = ekv__abi_null(cache, "cache")) != EKV_SUCCESS) return r;
    *cache = NULL;
    if ((r = ekv__abi_null(data, "data")) != EKV_SUCCESS) return r;
    if (!kv_dtype || ekv_dtype_parse(kv_dtype, &dtype) != 0)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "kv_dtype='%.100s' is unknown: allowed %s",
                             kv_dtype ? kv_dtype : "(null)", ekv_dtype_allowed());
    c = (ekv_abi_cache *)ekv__alloc(1, sizeof *c);
    if (!c) return EKV_ERR_OUT_OF_MEMORY;
    c->data = data;
    if (!policy || ekv_policy_parse(policy, &c->desc.policy) != 0) {
        r = ekv_set_error(EKV_ERR_INVALID_ARG, "policy='%.100s' is unknown: allowed %s",
                          policy ? policy : "(null)", ekv__policy_allowed());
        goto done;
    }
    c->desc.compression = compression;
    c->desc.recent = recent;
    c->desc.sinks = sinks;
    c->desc.observe = data->data.observe;
    if (!ekv_compress_desc_valid(&c->desc)) {
        r = ekv__abi_compress_error(&c->desc);
        goto done;
    }
    if ((r = ekv__abi_scale(softmax_scale)) != EKV_SUCCESS) goto done;
    if (ekv_dtype_info(dtype)->paired_values && data->data.head_dim % 2 != 0) {
        r = ekv_set_error(EKV_ERR_UNSUPPORTED,
                          "kv_dtype='%s' stores values in pairs: head_dim %d must be even (or "
                          "choose f32, int8, fp8)", kv_dtype, data->data.head_dim);
        goto done;
    }
    if (c->desc.policy == EKV_POLICY_TOPK && data->data.observe < 1) {
        r = ekv_set_error(EKV_ERR_INVALID_ARG,
                          "policy='topk' scores tokens by the attention of observed queries: "
                          "observe must be 1 or more (is %d)", data->data.observe);
        goto done;
    }
    c->softmax_scale = ekv_softmax_scale(softmax_scale, data->data.head_dim);
    if ((r = ekv_cache_build(&data->data, &c->desc, dtype, c->softmax_scale, &c->cache)) != EKV_SUCCESS)
        goto done;
    /* the slot maps ekv_cache_build stored, from the same scores and the same rule */
    if ((r = ekv__policy_scores(&data->data, &c->desc, c->softmax_scale, &scores)) != EKV_SUCCESS)
        goto done;
    c->slots = (ekv_slot_source *)ekv__alloc((size_t)c->cache.batch * (size_t)c->cache.kv_heads *
                                                 (size_t)c->cache.capacity, sizeof *c->slots);
    if (!c->slots) {
        r = EKV_ERR_OUT_OF_MEMORY;
        goto done;
    }
    for (b = 0; b < c->cache.batch; b++)
        for (h = 0; h < c->cache.kv_heads; h++) {
            const size_t head = (size_t)b * (size_t)c->cache.kv_heads + (size_t)h;
            ekv_policy_map(&c->desc, data->data.lengths[b],
                           scores ? scores + head * (size_t)data->data.capacity : NULL,
                           c->slots + head * (size_t)c->cache.capacity);
        }
    r = EKV_SUCCESS;
done:
    ekv__free(scores);
    if (r != EKV_SUCCESS) {
        ekv_abi_cache_free(c);
        return r;
    }
    *cache = c;
    return EKV_SUCCESS;
}

EKV_DEF ekv_result ekv_abi_cache_number(const ekv_abi_cache *cache, const char *name,
                                        double *value)
{
    static const char *const names[] = {
        "batch", "heads", "kv_heads", "head_dim", "capacity", "compression", "recent", "sinks",
        "observe", "softmax_scale", "has_bias", "bytes_k", "bytes_v", "bytes_scales",
        "bytes_bias", "bytes_total", "bytes_uncompressed", "memory_bytes"};
    const int count = (int)(sizeof names / sizeof names[0]);
    const ekv_host_cache *h;
    ekv_cache_bytes stored, full;
    char allowed[512];
    ekv_result r;
    int i;
    if ((r = ekv__abi_null(cache, "cache")) != EKV_SUCCESS ||
        (r = ekv__abi_null(value, "value")) != EKV_SUCCESS)
        return r;
    h = &cache->cache;
    stored = ekv_cache_bytes_of(h->dtype, h->batch, h->kv_heads, h->head_dim, h->lengths,
                                h->bias != NULL);
    full = ekv_cache_bytes_of(h->dtype, h->batch, h->kv_heads, h->head_dim,
                              cache->data->data.lengths, 0);
    i = name ? ekv__find_name(name, names, count) : -1;
    switch (i) {
    case 0: *value = h->batch; break;
    case 1: *value = cache->data->data.heads; break;
    case 2: *value = h->kv_heads; break;
    case 3: *value = h->head_dim; break;
    case 4: *value = h->capacity; break;
    case 5: *value = cache->desc.compression; break;
    case 6: *value = cache->desc.recent; break;
    case 7: *value = cache->desc.sinks; break;
    case 8: *value = cache->desc.observe; break;
    case 9: *value = cache->softmax_scale; break;
    case 10: *value = h->bias != NULL; break;
    case 11: *value = stored.k; break;
    case 12: *value = stored.v; break;
    case 13: *value = stored.scales; break;
    case 14: *value = stored.bias; break;
    case 15: *value = stored.total; break;
    case 16: *value = full.total; break;
    case 17:
        *value = ekv_cache_memory_of(h->dtype, h->batch, h->kv_heads, h->head_dim, h->capacity,
                                     h->bias != NULL);
        break;
    default:
        ekv__join_names(allowed, sizeof allowed, names, sizeof names[0], count);
        return ekv_set_error(EKV_ERR_INVALID_ARG, "name='%.100s' is unknown: allowed %s",
                             name ? name : "(null)", allowed);
    }
    return EKV_SUCCESS;
}

EKV_DEF ekv_result ekv_abi_cache_lengths(const ekv_abi_cache *cache, int *lengths)
{
    ekv_result r;
    if ((r = ekv__abi_null(cache, "cache")) != EKV_SUCCESS ||
        (r = ekv__abi_null(lengths, "lengths")) != EKV_SUCCESS)
        return r;
    memcpy(lengths, cache->cache.lengths, (size_t)cache->cache.batch * sizeof(int));
    return EKV_SUCCESS;
}

EKV_DEF ekv_result ekv_abi_cache_slots(const ekv_abi_cache *cache, int *first, int *count)
{
    const ekv_host_cache *h;
    size_t i, rows;
    ekv_result r;
    if ((r = ekv__abi_null(cache, "cache")) != EKV_SUCCESS ||
        (r = ekv__abi_null(first, "first")) != EKV_SUCCESS ||
        (r = ekv__abi_null(count, "count")) != EKV_SUCCESS)
        return r;
    h = &cache->cache;
    rows = (size_t)h->batch * (size_t)h->kv_heads * (size_t)h->capacity;
    for (i = 0; i < rows; i++) {
        const int b = (int)(i / ((size_t)h->kv_heads * (size_t)h->capacity));
        const int used = (int)(i % (size_t)h->capacity) < h->lengths[b];
        first[i] = used ? cache->slots[i].first : -1;
        count[i] = used ? cache->slots[i].count : 0;
    }
    return EKV_SUCCESS;
}

EKV_DEF ekv_result ekv_abi_cache_values(const ekv_abi_cache *cache, const char *name, float *out)
{
    const ekv_host_cache *h;
    int which, b, g, s;
    ekv_result r;
    if ((r = ekv__abi_null(cache, "cache")) != EKV_SUCCESS ||
        (r = ekv__abi_null(out, "out")) != EKV_SUCCESS)
        return r;
    h = &cache->cache;
    if (name && strcmp(name, "bias") == 0) {
        size_t rows = (size_t)h->batch * (size_t)h->kv_heads * (size_t)h->capacity;
        if (h->bias) memcpy(out, h->bias, rows * sizeof(float));
        else memset(out, 0, rows * sizeof(float));
        return EKV_SUCCESS;
    }
    if (!name || (strcmp(name, "k") != 0 && strcmp(name, "v") != 0))
        return ekv_set_error(EKV_ERR_INVALID_ARG, "name='%.100s' is unknown: allowed k, v, bias",
                             name ? name : "(null)");
    which = name[0] == 'v';
    for (b = 0; b < h->batch; b++)
        for (g = 0; g < h->kv_heads; g++)
            for (s = 0; s < h->capacity; s++) {
                float *row = out + (((size_t)b * (size_t)h->kv_heads + (size_t)g) *
                                        (size_t)h->capacity + (size_t)s) * (size_t)h->head_dim;
                if (s < h->lengths[b]) ekv_cache_row(h, which, b, g, s, row);
                else memset(row, 0, (size_t)h->head_dim * sizeof(float));
            }
    return EKV_SUCCESS;
}

EKV_DEF ekv_result ekv_abi_cache_stored(const ekv_abi_cache *cache, const char *name, void *out,
                                        size_t *size)
{
    const ekv_host_cache *h;
    const void *source;
    size_t rows;
    ekv_result r;
    if ((r = ekv__abi_null(cache, "cache")) != EKV_SUCCESS ||
        (r = ekv__abi_null(size, "size")) != EKV_SUCCESS)
        return r;
    h = &cache->cache;
    rows = (size_t)h->batch * (size_t)h->kv_heads * (size_t)h->capacity;
    if (name && (strcmp(name, "k") == 0 || strcmp(name, "v") == 0)) {
        source = name[0] == 'k' ? h->k : h->v;
        *size = rows * ekv_dtype_row_bytes(h->dtype, h->head_dim);
    } else if (name && (strcmp(name, "k_scales") == 0 || strcmp(name, "v_scales") == 0)) {
        source = name[0] == 'k' ? h->k_scales : h->v_scales;
        *size = ekv_cache_scales_bytes(h->dtype, h->batch, h->kv_heads, h->head_dim, h->capacity);
    } else if (name && strcmp(name, "bias") == 0) {
        source = h->bias;
        *size = h->bias ? rows * sizeof(float) : 0;
    } else {
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "name='%.100s' is unknown: allowed k, v, k_scales, v_scales, bias",
                             name ? name : "(null)");
    }
    if (out && *size) memcpy(out, source, *size);
    return EKV_SUCCESS;
}

EKV_DEF ekv_result ekv_abi_cpu_attention(const ekv_abi_cache *cache, float *out)
{
    ekv_result r;
    if ((r = ekv__abi_null(cache, "cache")) != EKV_SUCCESS ||
        (r = ekv__abi_null(out, "out")) != EKV_SUCCESS)
        return r;
    /* the scale as the CPU backend passes it (ekv_cpu_run): the resolved double, as float */
    return ekv_cpu_attention(&cache->cache, cache->data->data.q, cache->data->data.heads,
                             (float)cache->softmax_scale, out);
}

EKV_DEF ekv_result ekv_abi_cache_reference(const ekv_abi_cache *cache, double *out)
{
    ekv_result r;
    if ((r = ekv__abi_null(cache, "cache")) != EKV_SUCCESS ||
        (r = ekv__abi_null(out, "out")) != EKV_SUCCESS)
        return r;
    return ekv_reference_attention_cache(&cache->cache, cache->data->data.q,
                                         cache->data->data.heads, cache->softmax_scale, out);
}

EKV_DEF void ekv_abi_cache_free(ekv_abi_cache *cache)
{
    if (!cache) return;
    ekv_cache_free(&cache->cache);
    ekv__free(cache->slots);
    ekv__free(cache);
}

static ekv_result ekv__abi_errors(const void *reference, const void *x, double *rel_l2,
                                  double *max_abs, double *cosine)
{
    ekv_result r;
    if ((r = ekv__abi_null(reference, "reference")) != EKV_SUCCESS ||
        (r = ekv__abi_null(x, "x")) != EKV_SUCCESS ||
        (r = ekv__abi_null(rel_l2, "rel_l2")) != EKV_SUCCESS ||
        (r = ekv__abi_null(max_abs, "max_abs")) != EKV_SUCCESS ||
        (r = ekv__abi_null(cosine, "cosine")) != EKV_SUCCESS)
        return r;
    return EKV_SUCCESS;
}

EKV_DEF ekv_result ekv_abi_compare(const double *reference, const float *x, size_t n,
                                   double *rel_l2, double *max_abs, double *cosine)
{
    ekv_error_stats e;
    ekv_result r = ekv__abi_errors(reference, x, rel_l2, max_abs, cosine);
    if (r != EKV_SUCCESS) return r;
    e = ekv_compare_f32(reference, x, n);
    *rel_l2 = e.rel_l2;
    *max_abs = e.max_abs;
    *cosine = e.cosine;
    return EKV_SUCCESS;
}

EKV_DEF ekv_result ekv_abi_compare_f64(const double *reference, const double *x, size_t n,
                                       double *rel_l2, double *max_abs, double *cosine)
{
    ekv_error_stats e;
    ekv_result r = ekv__abi_errors(reference, x, rel_l2, max_abs, cosine);
    if (r != EKV_SUCCESS) return r;
    e = ekv_compare_f64(reference, x, n);
    *rel_l2 = e.rel_l2;
    *max_abs = e.max_abs;
    *cosine = e.cosine;
    return EKV_SUCCESS;
}

EKV_DEF const ekv_host_cache *ekv_abi_cache_host(const ekv_abi_cache *cache)
{
    return cache ? &cache->cache : NULL;
}

EKV_DEF const ekv_data *ekv_abi_cache_data(const ekv_abi_cache *cache)
{
    return cache ? &cache->data->data : NULL;
}

#ifndef EKV_NO_BENCH
/* ======================== Part B: the benchmark ========================= */

/* >>config (implementation) ================================================ */

static const char *const ekv__backend_names[4] = {"auto", "cuda", "cpu", "emulator"};
static const char *const ekv__format_names[EKV_FORMAT_COUNT] = {"detail", "table", "markdown", "csv"};
/* The cycle's variants: which store int8, which share a cache between layer pairs. */
static const struct ekv__variant_traits {
    const char *name;
    int int8, shared;
} ekv__variant_table[EKV_VARIANT_COUNT] = {
    {"nocache", 0, 0}, {"cache", 0, 0}, {"int8", 1, 0}, {"shared", 0, 1},
    {"int8-shared", 1, 1}, {"elastic", 0, 0}, {"all", 0, 0}};

EKV_DEF const char *ekv_backend_name(ekv_backend backend)
{
    return (unsigned)backend < 4 ? ekv__backend_names[backend] : "?";
}
EKV_DEF const char *ekv_variant_name(ekv_variant variant)
{
    return (unsigned)variant < EKV_VARIANT_COUNT ? ekv__variant_table[variant].name : "?";
}

EKV_DEF const char *ekv_format_name(ekv_output_format format)
{
    return (unsigned)format < EKV_FORMAT_COUNT ? ekv__format_names[format] : "?";
}

EKV_DEF int ekv_format_parse(const char *text, ekv_output_format *out)
{
    int i = ekv__find_name(text, ekv__format_names, EKV_FORMAT_COUNT);
    if (i < 0) return -1;
    *out = (ekv_output_format)i;
    return 0;
}

EKV_DEF int ekv_backend_parse(const char *text, ekv_backend *out)
{
    int i = ekv__find_name(text, ekv__backend_names, 4);
    if (i < 0) return -1;
    *out = (ekv_backend)i;
    return 0;
}
EKV_DEF int ekv_variant_parse(const char *text, ekv_variant *out)
{
    int i;
    for (i = 0; i < EKV_VARIANT_COUNT; i++)
        if (strcmp(text, ekv__variant_table[i].name) == 0) break;
    if (i == EKV_VARIANT_COUNT) i = -1;
    /* v0..v4: the nanoGPT benchmark's names for the first five variants */
    if (i < 0 && text[0] == 'v' && text[1] >= '0' && text[1] <= '4' && text[2] == '\0')
        i = text[1] - '0';
    if (i < 0) return -1;
    *out = (ekv_variant)i;
    return 0;
}


EKV_DEF ekv_config ekv_config_default(void)
{
    ekv_config c;
    memset(&c, 0, sizeof c);
    c.batch = 1;
    c.seq_len = 1024;
    c.heads = 16;
    c.kv_heads = 0;
    c.head_dim = 64;
    c.compression = 2;
    c.kv_dtype = EKV_DTYPE_F16;
    c.policy = EKV_POLICY_STRIDE;
    c.recent = 0;
    c.sinks = EKV_SINKS_AUTO;
    c.observe = 16;
    c.layers = 1;
    c.decode_tokens = 64;
    c.variant = EKV_VARIANT_ELASTIC;
    c.compress_every = 0;
    c.page_size = 0;
    c.memory_budget_gb = 0.0;
    c.data = EKV_DATA_STRUCTURED;
    c.seed = 42;
    c.softmax_scale = 0.0;
    c.reps = 200;
    c.warmup = 20;
    c.inner_loops = 64;
    c.truncate_percent = 0.0;
    c.use_graphs = 1;
    c.hot = 0;
    c.paired_baseline = 0;
    c.baseline_dtype = EKV_DTYPE_F16;
    c.baseline_dtype_set = 0;
    c.inference = 0;
    c.backend = EKV_BACKEND_AUTO;
    c.device = 0;
    c.peak_bw_gbs = 0.0;
    return c;
}

#define EKV__SEQ_MAX (1 << 24)

/* Memory the host can give this run: MemAvailable (Linux: free memory plus what the
   kernel can reclaim), else the physical memory; 0 when unknown. */
static double ekv__host_memory_available(void)
{
    double have = 0.0;
    FILE *f = fopen("/proc/meminfo", "r");
    if (f) {
        char line[256];
        double kb;
        while (fgets(line, sizeof line, f))
            if (sscanf(line, "MemAvailable: %lf kB", &kb) == 1) {
                have = kb * 1024.0;
                break;
            }
        fclose(f);
    }
#if defined(_SC_PHYS_PAGES) && defined(_SC_PAGESIZE)
    if (have <= 0.0) have = (double)sysconf(_SC_PHYS_PAGES) * (double)sysconf(_SC_PAGESIZE);
#endif
    return have;
}

/* The one host-memory rule of every path: an estimate above 90% of what is available is
   refused before anything is allocated (filling memory for half a minute and then failing,
   or waking the OOM killer, is worse than a clear no). `what` names the run and its
   breakdown; the message adds the figures. */
static ekv_result ekv__host_memory_check(double need, const char *what)
{
    const double have = ekv__host_memory_available();
    char need_text[32], have_text[32];
    if (have <= 0.0 || need <= 0.9 * have) return EKV_SUCCESS;
    return ekv_set_error(EKV_ERR_UNSUPPORTED,
                         "%s needs about %s of host memory, this machine has %s available: "
                         "reduce one of them", what, ekv_format_bytes(need, need_text, sizeof need_text),
                         ekv_format_bytes(have, have_text, sizeof have_text));
}

static ekv_result ekv__config_validate_serve(const ekv_config *c); /* >>cycle */

static ekv_result ekv__config_validate_cycle(const ekv_config *c)
{
    char what[256];
    if (ekv__variant_table[c->variant].int8 && c->kv_dtype != EKV_DTYPE_INT8 &&
        c->kv_dtype != EKV_DTYPE_F16)
        return ekv_set_error(EKV_ERR_UNSUPPORTED,
                             "--variant=%s stores the cache in int8, so --kv-dtype=%s contradicts it: "
                             "allowed --kv-dtype=int8 or no --kv-dtype (other dtypes: "
                             "--variant=cache or elastic)",
                             ekv_variant_name(c->variant), ekv_dtype_name(c->kv_dtype));
    /* with one layer there is no pair to share a cache: the result would be cache's or
       int8's under another name */
    if (c->layers < 2 && (ekv__variant_table[c->variant].shared || c->variant == EKV_VARIANT_ALL))
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "--layers=%d: --variant=%s %s layer pairs share a cache, which needs "
                             "--layers=2 or more (with one layer shared equals cache and "
                             "int8-shared equals int8); allowed --layers=2..256, or a variant "
                             "without sharing (nocache, cache, int8, elastic)",
                             c->layers, ekv_variant_name(c->variant),
                             c->variant == EKV_VARIANT_ALL ? "runs shared and int8-shared, where"
                                                           : "means");
    if (c->baseline_dtype_set)
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "--baseline-dtype applies to one attention pass; with --inference the "
                             "paired baseline is the cache variant in --kv-dtype: omit "
                             "--baseline-dtype");
    if (c->data == EKV_DATA_FILE)
        return ekv_set_error(EKV_ERR_UNSUPPORTED,
                             "--data=%s: the inference cycle projects its own seeded inputs; "
                             "allowed with --inference: --data=structured or random (ignored)",
                             c->data_path);
    if (c->dump_dir[0])
        return ekv_set_error(EKV_ERR_UNSUPPORTED,
                             "--dump-dir is not supported with --inference (it dumps one attention "
                             "step; omit one of them)");
    if ((long long)c->seq_len + c->decode_tokens > (1LL << 24))
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "--seq=%d plus --decode_tokens=%d exceeds %d tokens", c->seq_len,
                             c->decode_tokens, 1 << 24);
    {
        const ekv_result paging = ekv__config_validate_serve(c);
        if (paging != EKV_SUCCESS) return paging;
    }
    snprintf(what, sizeof what,
             "--inference with --layers=%d --batch=%d --seq=%d --decode_tokens=%d --heads=%d "
             "--dim=%d", c->layers, c->batch, c->seq_len, c->decode_tokens, c->heads, c->head_dim);
    return ekv__host_memory_check(ekv_cycle_memory_estimate(c, c->variant), what);
}

/* One attention run: the workload (ekv_workload_memory_estimate) must fit in host memory. */
static ekv_result ekv__config_validate_memory(const ekv_config *c)
{
    char what[384], parts_text[3][32];
    double parts[3];
    const double need = ekv_workload_memory_estimate(c, parts);
    snprintf(what, sizeof what,
             "--batch=%d --seq=%d --heads=%d --kv-heads=%d --dim=%d (data %s, caches %s, "
             "references and work space %s)", c->batch, c->seq_len, c->heads, c->kv_heads,
             c->head_dim, ekv_format_bytes(parts[0], parts_text[0], sizeof parts_text[0]),
             ekv_format_bytes(parts[1], parts_text[1], sizeof parts_text[1]),
             ekv_format_bytes(parts[2], parts_text[2], sizeof parts_text[2]));
    return ekv__host_memory_check(need, what);
}

static ekv_result ekv__range_error(const char *flag, long long value, long long lo,
                                   long long hi)
{
    return ekv_set_error(EKV_ERR_INVALID_ARG, "%s=%lld is out of range: allowed %lld..%lld",
                         flag, value, lo, hi);
}

#define EKV__CHECK_RANGE(flag, value, lo, hi)                                      \
    do {                                                                           \
        if ((long long)(value) < (long long)(lo) || (long long)(value) > (long long)(hi)) \
            return ekv__range_error(flag, (long long)(value), (long long)(lo),     \
                                    (long long)(hi));                              \
    } while (0)

typedef enum ekv__flag_kind {
    EKV__FLAG_INT,    /* integer in [lo, hi] */
    EKV__FLAG_ENUM,   /* a name, parsed by `parse` */
    EKV__FLAG_BOOL,   /* no value */
    EKV__FLAG_NUMBER, /* one double */
    EKV__FLAG_UINT64, /* one unsigned 64-bit integer */
    EKV__FLAG_TEXT,   /* one string of at most hi - 1 bytes */
    EKV__FLAG_SPECIAL /* --help, --version */
} ekv__flag_kind;

/* What a flag does beyond its kind: each flag's entry says it, the parser reads it. */
enum {
    EKV__ONE_VALUE = 1,      /* INT/ENUM that takes no comma list (not a workload flag) */
    EKV__CLEARS = 2,         /* BOOL that sets its field to 0 (--no-graphs) */
    EKV__ZERO_OK = 4,        /* NUMBER that may be 0 (others must be positive) */
    EKV__EMPTY_OK = 8,       /* TEXT that may be empty */
    EKV__DATA_SOURCE = 16,   /* TEXT: structured, random, or a path (sets config.data) */
    EKV__MARKS_BASELINE = 32, /* sets config.baseline_dtype_set */
    EKV__CYCLE_ONLY = 64     /* a setting of the inference cycle: an error without --inference */
};

typedef struct ekv__flag {
    const char *name;
    const char *alias;
    ekv__flag_kind kind;
    size_t offset;    /* into ekv_config */
    long long lo, hi; /* INT: the range, checked at parse time and by validation; TEXT: hi =
                         the field's size */
    unsigned options; /* EKV__* bits above */
    int (*parse)(const char *text, int *value); /* ENUM */
    const char *(*allowed)(void);               /* ENUM: the allowed names, for messages */
    const char *help;
} ekv__flag;

#define EKV__OFF(field) offsetof(ekv_config, field)

/* enum fields are stored through an int: they must be int-sized */
typedef char ekv__enums_are_ints[(sizeof(ekv_dtype) == sizeof(int) && sizeof(ekv_policy) == sizeof(int) &&
                                  sizeof(ekv_backend) == sizeof(int) && sizeof(ekv_variant) == sizeof(int) &&
                                  sizeof(ekv_output_format) == sizeof(int))
                                     ? 1
                                     : -1];

static int ekv__parse_dtype(const char *text, int *value)
{
    ekv_dtype d;
    if (ekv_dtype_parse(text, &d) != 0) return -1;
    *value = (int)d;
    return 0;
}
static int ekv__parse_policy(const char *text, int *value)
{
    ekv_policy p;
    if (ekv_policy_parse(text, &p) != 0) return -1;
    *value = (int)p;
    return 0;
}
static int ekv__parse_backend(const char *text, int *value)
{
    ekv_backend b;
    if (ekv_backend_parse(text, &b) != 0) return -1;
    *value = (int)b;
    return 0;
}
static int ekv__parse_variant(const char *text, int *value)
{
    ekv_variant v;
    if (ekv_variant_parse(text, &v) != 0) return -1;
    *value = (int)v;
    return 0;
}
static int ekv__parse_format(const char *text, int *value)
{
    ekv_output_format f;
    if (ekv_format_parse(text, &f) != 0) return -1;
    *value = (int)f;
    return 0;
}
static int ekv__parse_page_size(const char *text, int *value)
{
    char *end = NULL;
    long v;
    if (!text[0]) return -1;
    v = strtol(text, &end, 10);
    if (*end || (v != 0 && !ekv_page_size_valid((int)v))) return -1;
    *value = (int)v;
    return 0;
}
static const char *ekv__page_size_allowed(void)
{
    return EKV_PAGE_SIZE_ALLOWED;
}
static const char *ekv__memory_budget_allowed(void)
{
    return "a number of GB in (0, 1e6] that holds one sequence of every variant, with "
           "--inference and --page-size=8, 16, 32 or 64";
}
static const char *ekv__format_allowed(void)
{
    static char text[64];
    if (!text[0]) ekv__join_names(text, sizeof text, ekv__format_names, sizeof ekv__format_names[0], EKV_FORMAT_COUNT);
    return text;
}

static const char *ekv__backend_allowed(void)
{
    static char text[64];
    if (!text[0]) ekv__join_names(text, sizeof text, ekv__backend_names, sizeof ekv__backend_names[0], 4);
    return text;
}
static const char *ekv__variant_allowed(void)
{
    static char text[128];
    if (!text[0]) {
        size_t n = ekv__join_names(text, sizeof text, ekv__variant_table, sizeof ekv__variant_table[0],
                                   EKV_VARIANT_COUNT);
        snprintf(text + n, sizeof text - n, ", v0..v4");
    }
    return text;
}

static const ekv__flag ekv__flags[] = {
    {"--seq", NULL, EKV__FLAG_INT, EKV__OFF(seq_len), 1, EKV__SEQ_MAX, 0, NULL, NULL,
     "tokens in the cache per sequence (default 1024)"},
    {"--batch", NULL, EKV__FLAG_INT, EKV__OFF(batch), 1, 4096, 0, NULL, NULL,
     "sequences (default 1)"},
    {"--heads", NULL, EKV__FLAG_INT, EKV__OFF(heads), 1, 1024, 0, NULL, NULL,
     "query heads (default 16)"},
    {"--kv-heads", NULL, EKV__FLAG_INT, EKV__OFF(kv_heads), 0, 1024, 0, NULL, NULL,
     "KV heads, divides --heads (default = heads)"},
    {"--dim", NULL, EKV__FLAG_INT, EKV__OFF(head_dim), 1, 1024, 0, NULL, NULL,
     "head dimension, 1..1024 (CUDA kernels: 64, 128, 256; default 64)"},
    {"--compress", NULL, EKV__FLAG_INT, EKV__OFF(compression), 1, 64, 0, NULL, NULL,
     "compression ratio C, 1..64 (default 2)"},
    {"--kv-dtype", NULL, EKV__FLAG_ENUM, EKV__OFF(kv_dtype), 0, 0, 0, ekv__parse_dtype, ekv_dtype_allowed,
     "cache storage dtype (default f16)"},
    {"--policy", NULL, EKV__FLAG_ENUM, EKV__OFF(policy), 0, 0, 0, ekv__parse_policy, ekv__policy_allowed,
     "compression policy (default stride)"},
    {"--recent", NULL, EKV__FLAG_INT, EKV__OFF(recent), 0, EKV__SEQ_MAX, 0, NULL, NULL,
     "exact recent window W (default 0)"},
    {"--sinks", NULL, EKV__FLAG_INT, EKV__OFF(sinks), 0, EKV__SEQ_MAX, 0, NULL, NULL,
     "sink tokens kept by window and topk, at most --seq (default 4, or --seq when shorter)"},
    {"--observe", NULL, EKV__FLAG_INT, EKV__OFF(observe), 1, 1024, 0, NULL, NULL,
     "queries whose attention scores topk (default 16)"},
    {"--page-size", NULL, EKV__FLAG_ENUM, EKV__OFF(page_size), 0, 0, 0, ekv__parse_page_size, ekv__page_size_allowed,
     "tokens per page of a paged cache read through block tables; 0 = contiguous (default 0); "
     "with --inference the serving simulation's page size"},
    {"--memory-budget", NULL, EKV__FLAG_NUMBER, EKV__OFF(memory_budget_gb), 0, 0, EKV__CYCLE_ONLY, NULL,
     ekv__memory_budget_allowed,
     "GB (1e9 bytes) of KV pages, (0, 1e6], for the cycle's serving simulation (with --inference "
     "--page-size): the largest batch per variant that fits"},
    {"--layers", NULL, EKV__FLAG_INT, EKV__OFF(layers), 1, 256, EKV__CYCLE_ONLY, NULL, NULL,
     "layers of the inference cycle (default 1)"},
    {"--decode_tokens", "--decode-tokens", EKV__FLAG_INT, EKV__OFF(decode_tokens), 1, 65536, EKV__CYCLE_ONLY, NULL, NULL,
     "decode steps of the inference cycle (default 64)"},
    {"--compress-every", NULL, EKV__FLAG_INT, EKV__OFF(compress_every), 0, 65536, EKV__CYCLE_ONLY, NULL, NULL,
     "anchor period of the cycle, 0 = C (default 0)"},
    {"--variant", NULL, EKV__FLAG_ENUM, EKV__OFF(variant), 0, 0, EKV__CYCLE_ONLY, ekv__parse_variant, ekv__variant_allowed,
     "inference-cycle variant (default elastic)"},
    {"--reps", NULL, EKV__FLAG_INT, EKV__OFF(reps), 2, 1000000, EKV__ONE_VALUE, NULL, NULL,
     "kept samples (default 200)"},
    {"--warmup", NULL, EKV__FLAG_INT, EKV__OFF(warmup), 0, 1000000, EKV__ONE_VALUE, NULL, NULL,
     "discarded samples (default 20)"},
    {"--inner_loops", "--inner-loops", EKV__FLAG_INT, EKV__OFF(inner_loops), 1, 100000, EKV__ONE_VALUE, NULL, NULL,
     "launches per sample (default 64)"},
    {"--device", NULL, EKV__FLAG_INT, EKV__OFF(device), 0, 63, EKV__ONE_VALUE, NULL, NULL,
     "CUDA device (default 0)"},
    {"--threads", NULL, EKV__FLAG_INT, EKV__OFF(threads), 0, EKV_CPU_THREADS_MAX, EKV__ONE_VALUE, NULL, NULL,
     "CPU backend threads, 0 = every online core (default 0)"},
    {"--truncate", NULL, EKV__FLAG_NUMBER, EKV__OFF(truncate_percent), 0, 49, EKV__ZERO_OK, NULL, NULL,
     "trimmed mean: percent cut from each end, 0..49 (default 0)"},
    {"--peak-bw", NULL, EKV__FLAG_NUMBER, EKV__OFF(peak_bw_gbs), 0, 0, 0, NULL, NULL,
     "theoretical peak bandwidth in GB/s (default: from the device)"},
    {"--softmax-scale", NULL, EKV__FLAG_NUMBER, EKV__OFF(softmax_scale), 0, 0, 0, NULL, NULL,
     "softmax scale (default 1/sqrt(dim))"},
    {"--seed", NULL, EKV__FLAG_UINT64, EKV__OFF(seed), 0, 0, 0, NULL, NULL,
     "data seed (default 42)"},
    {"--baseline-dtype", NULL, EKV__FLAG_ENUM, EKV__OFF(baseline_dtype), 0, 0, EKV__ONE_VALUE | EKV__MARKS_BASELINE, ekv__parse_dtype, ekv_dtype_allowed,
     "dtype of the paired baseline (default f16 for int8/int4/fp8, else --kv-dtype)"},
    {"--backend", NULL, EKV__FLAG_ENUM, EKV__OFF(backend), 0, 0, EKV__ONE_VALUE, ekv__parse_backend, ekv__backend_allowed,
     "where to run (default auto: the GPU if there is one, else the CPU)"},
    {"--data", NULL, EKV__FLAG_TEXT, EKV__OFF(data_path), 0, EKV_PATH_MAX, EKV__DATA_SOURCE, NULL, NULL,
     "structured, random, or a .npz / directory of q.npy k.npy v.npy [q_observe.npy] (default "
     "structured); a file needs --batch --heads --kv-heads --dim --seq to match its shapes"},
    {"--out", NULL, EKV__FLAG_TEXT, EKV__OFF(out_path), 0, EKV_PATH_MAX, 0, NULL, NULL,
     "write the output to FILE instead of stdout"},
    {"--jsonl", NULL, EKV__FLAG_TEXT, EKV__OFF(jsonl_path), 0, EKV_PATH_MAX, 0, NULL, NULL,
     "append one JSON line per result to FILE"},
    {"--label", NULL, EKV__FLAG_TEXT, EKV__OFF(label), 0, EKV_LABEL_MAX, EKV__EMPTY_OK, NULL, NULL,
     "free text stored in the result"},
    {"--dump-dir", NULL, EKV__FLAG_TEXT, EKV__OFF(dump_dir), 0, EKV_PATH_MAX, 0, NULL, NULL,
     "write q, k, v, q_observe, out, ref .npy files into this existing directory"},
    {"--json", NULL, EKV__FLAG_BOOL, EKV__OFF(json), 0, 0, 0, NULL, NULL,
     "one JSON object per result"},
    {"--format", NULL, EKV__FLAG_ENUM, EKV__OFF(format), 0, 0, EKV__ONE_VALUE, ekv__parse_format, ekv__format_allowed,
     "text output: detail (default: every figure, a block per result), table (one row per "
     "result), markdown (the same as a Markdown table), csv (one row per result, every column)"},
    {"--paired-baseline", NULL, EKV__FLAG_BOOL, EKV__OFF(paired_baseline), 0, 0, 0, NULL, NULL,
     "interleave a C=1 baseline ABAB; report the speedup with a 95% CI"},
    {"--hot", NULL, EKV__FLAG_BOOL, EKV__OFF(hot), 0, 0, 0, NULL, NULL,
     "L2-resident reuse instead of cold timing"},
    {"--no-graphs", NULL, EKV__FLAG_BOOL, EKV__OFF(use_graphs), 0, 0, EKV__CLEARS, NULL, NULL,
     "launch one by one instead of a CUDA graph"},
    {"--inference", NULL, EKV__FLAG_BOOL, EKV__OFF(inference), 0, 0, 0, NULL, NULL,
     "run the inference cycle (decode steps over layers, --variant)"},
    {"--quiet", NULL, EKV__FLAG_BOOL, EKV__OFF(quiet), 0, 0, 0, NULL, NULL,
     "no progress or notices"},
    {"--help", "-h", EKV__FLAG_SPECIAL, 0, 0, 0, 0, NULL, NULL,
     "this help"},
    {"--version", NULL, EKV__FLAG_SPECIAL, 0, 0, 0, 0, NULL, NULL,
     "print the version"},
};


#define EKV__FLAG_COUNT (sizeof ekv__flags / sizeof ekv__flags[0])

EKV_DEF ekv_config ekv_config_resolve(const ekv_config *in)
{
    ekv_config c = *in;
    const ekv_dtype_traits *t = ekv_dtype_info(c.kv_dtype);
    if (c.kv_heads == 0) c.kv_heads = c.heads;
    if (c.softmax_scale == 0.0) c.softmax_scale = ekv_softmax_scale(0.0, c.head_dim);
    if (c.compress_every == 0) c.compress_every = c.compression;
    /* only the default adapts: a short sequence has fewer tokens than 4 sinks */
    if (c.sinks == EKV_SINKS_AUTO) c.sinks = EKV_SINKS_DEFAULT < c.seq_len ? EKV_SINKS_DEFAULT : c.seq_len;
    c.threads = ekv_cpu_threads(c.threads);
    if (!c.baseline_dtype_set) c.baseline_dtype = t && t->quantized ? EKV_DTYPE_F16 : c.kv_dtype;
    return c;
}

EKV_DEF ekv_result ekv_config_validate(const ekv_config *config)
{
    int kv_heads;
    size_t i;
    ekv_config resolved;
    const ekv_config *c = &resolved;
    if (!config) return ekv_set_error(EKV_ERR_INVALID_ARG, "config is NULL");
    resolved = ekv_config_resolve(config);
    /* every integer flag's range, from the flag table (on the resolved values: a default
       such as EKV_SINKS_AUTO is judged by what it resolves to) */
    for (i = 0; i < EKV__FLAG_COUNT; i++) {
        const ekv__flag *f = &ekv__flags[i];
        int value;
        if (f->kind != EKV__FLAG_INT) continue;
        memcpy(&value, (const char *)c + f->offset, sizeof value);
        EKV__CHECK_RANGE(f->name, value, f->lo, f->hi);
    }
    if (ekv_dtype_info(c->kv_dtype) && ekv_dtype_info(c->kv_dtype)->paired_values &&
        c->head_dim % 2 != 0)
        return ekv_set_error(EKV_ERR_UNSUPPORTED,
                             "--dim=%d: --kv-dtype=%s stores values in pairs; allowed an even "
                             "--dim (or --kv-dtype=f32, int8, fp8)",
                             c->head_dim, ekv_dtype_name(c->kv_dtype));
    kv_heads = c->kv_heads;
    if (kv_heads > c->heads || c->heads % kv_heads != 0)
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "--kv-heads=%d must divide --heads=%d (GQA/MQA groups)", kv_heads,
                             c->heads);
    if (!ekv_dtype_info(c->kv_dtype))
        return ekv_set_error(EKV_ERR_INVALID_ARG, "--kv-dtype is invalid: allowed %s",
                             ekv_dtype_allowed());
    if (!ekv_dtype_info(c->baseline_dtype))
        return ekv_set_error(EKV_ERR_INVALID_ARG, "--baseline-dtype is invalid: allowed %s",
                             ekv_dtype_allowed());
    if ((unsigned)c->policy >= EKV_POLICY_COUNT)
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "--policy is invalid: allowed none, stride, pool, window, topk");
    if (c->policy == EKV_POLICY_NONE && c->compression != 1)
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "--compress=%d needs a compression policy: with --policy=none "
                             "only --compress=1 is allowed (or choose stride, pool, window, topk)",
                             c->compression);
    EKV__CHECK_RANGE("--recent", c->recent, 0, c->seq_len);
    EKV__CHECK_RANGE("--sinks", c->sinks, 0, c->seq_len);
    if ((unsigned)c->variant >= EKV_VARIANT_COUNT)
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "--variant is invalid: allowed nocache, cache, int8, shared, "
                             "int8-shared, elastic, all (or v0..v4)");
    if (c->data == EKV_DATA_FILE && c->data_path[0] == '\0')
        return ekv_set_error(EKV_ERR_INVALID_ARG, "--data: a file path is required");
    if (!(c->softmax_scale >= 0.0) || c->softmax_scale > 1e6)
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "--softmax-scale=%g is out of range: allowed (0, 1e6]",
                             c->softmax_scale);
    if (!(c->truncate_percent >= 0.0 && c->truncate_percent <= 49.0))
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "--truncate=%g is out of range: allowed 0..49 (percent cut from "
                             "each end)", c->truncate_percent);
    if ((unsigned)c->backend > EKV_BACKEND_EMULATOR)
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "--backend is invalid: allowed auto, cuda, cpu, emulator");
    if (!(c->peak_bw_gbs >= 0.0 && c->peak_bw_gbs <= 1e6))
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "--peak-bw=%g is out of range: allowed (0, 1e6] GB/s",
                             c->peak_bw_gbs);
    if ((unsigned)c->format >= EKV_FORMAT_COUNT)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "--format is invalid: allowed %s",
                             ekv__format_allowed());
    if (c->json && c->format != EKV_FORMAT_DETAIL)
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "--format=%s and --json both choose the output: pass one of them "
                             "(--jsonl=FILE writes JSON beside any --format)",
                             ekv_format_name(c->format));
    if (c->baseline_dtype_set && !c->paired_baseline)
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "--baseline-dtype needs --paired-baseline");
    if (c->page_size != 0 && !ekv_page_size_valid(c->page_size))
        return ekv_set_error(EKV_ERR_INVALID_ARG, "--page-size=%d is unknown: allowed %s",
                             c->page_size, EKV_PAGE_SIZE_ALLOWED);
    if (!(c->memory_budget_gb >= 0.0 && c->memory_budget_gb <= 1e6))
        return ekv_set_error(EKV_ERR_INVALID_ARG, "--memory-budget=%g is out of range: allowed %s",
                             c->memory_budget_gb, ekv__memory_budget_allowed());
    if (c->memory_budget_gb > 0.0 && !c->inference)
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "--memory-budget is a setting of the inference cycle, which runs only "
                             "with --inference: add --inference or omit --memory-budget");
    if (c->inference) return ekv__config_validate_cycle(c);
    return ekv__config_validate_memory(c);
}

/* ---- command line ---- */

/* Sweepable: the workload flags. Measurement, device and output flags take one value. */
static int ekv__flag_sweepable(const ekv__flag *f)
{
    return (f->kind == EKV__FLAG_INT || f->kind == EKV__FLAG_ENUM) && !(f->options & EKV__ONE_VALUE);
}

EKV_DEF void ekv_cli_print_help(FILE *out)
{
    size_t i;
    fprintf(out,
            "ekv_bench %s - decode attention over an elastic KV cache: speed, bandwidth, "
            "accuracy\n\n"
            "usage: ekv_bench [--flag=value ...]\n"
            "A comma list on a workload flag (--seq=1024,4096) sweeps the cartesian product.\n"
            "A flag given twice takes its last value (a notice on stderr names it).\n\n",
            EKV_VERSION_STRING);
    for (i = 0; i < EKV__FLAG_COUNT; i++) {
        const ekv__flag *f = &ekv__flags[i];
        char name[64];
        if (f->kind == EKV__FLAG_BOOL || f->kind == EKV__FLAG_SPECIAL)
            snprintf(name, sizeof name, "%s", f->name);
        else
            snprintf(name, sizeof name, "%s=%s", f->name,
                     f->kind == EKV__FLAG_TEXT ? "TEXT" : (f->kind == EKV__FLAG_ENUM ? "NAME" : "N"));
        /* a number flag's allowed values are for its error messages; its help says them */
        const int names = f->allowed && f->kind == EKV__FLAG_ENUM;
        fprintf(out, "  %-22s %s%s%s%s\n", name, f->help, names ? "; one of " : "",
                names ? f->allowed() : "", ekv__flag_sweepable(f) ? " [list]" : "");
    }
    fprintf(out, "\nExit status: 0 success, 1 runtime failure (e.g. validation), 2 bad input.\n");
}

static ekv_result ekv__parse_int(const char *flag, const char *text, long long lo, long long hi,
                                 int *out)
{
    char *end;
    long long v;
    if (text[0] == '\0' || !(text[0] == '-' || text[0] == '+' || (text[0] >= '0' && text[0] <= '9')))
        return ekv_set_error(EKV_ERR_INVALID_ARG, "%s='%s' is not an integer: allowed %lld..%lld",
                             flag, text, lo, hi);
    v = strtoll(text, &end, 10);
    if (*end != '\0')
        return ekv_set_error(EKV_ERR_INVALID_ARG, "%s='%s' is not an integer: allowed %lld..%lld",
                             flag, text, lo, hi);
    /* echoed as typed: strtoll clamps an overlong number to LLONG_MAX */
    if (v < lo || v > hi)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "%s=%s is out of range: allowed %lld..%lld",
                             flag, text, lo, hi);
    *out = (int)v;
    return EKV_SUCCESS;
}

static ekv_result ekv__parse_enum(const ekv__flag *f, const char *text, int *out)
{
    if (f->parse(text, out) != 0)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "%s='%s' is unknown: allowed %s", f->name, text,
                             f->allowed());
    return EKV_SUCCESS;
}

static void ekv__config_set_int(ekv_config *c, size_t offset, int value)
{
    memcpy((char *)c + offset, &value, sizeof value); /* int and int-sized enum fields */
}

static ekv_result ekv__parse_value(ekv_cli *cli, const ekv__flag *f, const char *value)
{
    ekv_config *c = &cli->base;
    ekv_result r;
    if (f->kind == EKV__FLAG_INT || f->kind == EKV__FLAG_ENUM) {
        /* a comma list for sweepable flags */
        ekv_sweep_axis *axis = NULL;
        const char *p = value;
        int i, values[EKV_SWEEP_MAX], count = 0;
        for (;;) {
            char item[128];
            const char *comma = strchr(p, ',');
            size_t len = comma ? (size_t)(comma - p) : strlen(p);
            if (len == 0 || len >= sizeof item)
                return ekv_set_error(EKV_ERR_INVALID_ARG, "%s='%s': empty or overlong list item",
                                     f->name, value);
            memcpy(item, p, len);
            item[len] = '\0';
            if (count == EKV_SWEEP_MAX)
                return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: at most %d values in a list",
                                     f->name, EKV_SWEEP_MAX);
            r = f->kind == EKV__FLAG_INT ? ekv__parse_int(f->name, item, f->lo, f->hi, &values[count])
                                         : ekv__parse_enum(f, item, &values[count]);
            if (r != EKV_SUCCESS) return r;
            count++;
            if (!comma) break;
            p = comma + 1;
        }
        if (count > 1 && !ekv__flag_sweepable(f))
            return ekv_set_error(EKV_ERR_INVALID_ARG, "%s='%s': takes one value, not a list",
                                 f->name, value);
        for (i = 0; i < cli->axis_count; i++)
            if (strcmp(cli->axes[i].flag, f->name) == 0) axis = &cli->axes[i];
        if (count > 1) {
            if (!axis) {
                if (cli->axis_count == EKV_SWEEP_AXES)
                    return ekv_set_error(EKV_ERR_INVALID_ARG, "too many swept flags");
                axis = &cli->axes[cli->axis_count++];
                axis->flag = f->name;
            }
            axis->count = count;
            memcpy(axis->values, values, sizeof(int) * (size_t)count);
        } else if (axis) {
            axis->count = 1; /* a later single value overrides an earlier list */
            axis->values[0] = values[0];
        }
        ekv__config_set_int(c, f->offset, values[0]);
        if (f->options & EKV__MARKS_BASELINE) c->baseline_dtype_set = 1;
        return EKV_SUCCESS;
    }
    if (f->kind == EKV__FLAG_NUMBER) {
        char *end;
        double v = strtod(value, &end);
        if (value[0] == '\0' || *end != '\0' || v != v)
            return ekv_set_error(EKV_ERR_INVALID_ARG, "%s='%s' is not a number%s%s", f->name, value,
                                 f->allowed ? ": allowed " : "", f->allowed ? f->allowed() : "");
        if (v > DBL_MAX || v < -DBL_MAX)
            return ekv_set_error(EKV_ERR_INVALID_ARG, "%s=%s is out of range: a finite number is "
                                 "needed%s%s", f->name, value, f->allowed ? "; allowed " : "",
                                 f->allowed ? f->allowed() : "");
        if (!(f->options & EKV__ZERO_OK) && !(v > 0.0))
            return ekv_set_error(EKV_ERR_INVALID_ARG, "%s=%s must be a positive number%s%s",
                                 f->name, value, f->allowed ? ": allowed " : "",
                                 f->allowed ? f->allowed() : "");
        memcpy((char *)c + f->offset, &v, sizeof v);
        return EKV_SUCCESS;
    }
    if (f->kind == EKV__FLAG_UINT64) {
        char *end;
        unsigned long long v;
        if (!(value[0] >= '0' && value[0] <= '9'))
            return ekv_set_error(EKV_ERR_INVALID_ARG,
                                 "%s='%s' is not an unsigned integer: allowed 0..2^64-1", f->name,
                                 value);
        v = strtoull(value, &end, 10);
        if (*end != '\0' || (v == ~0ULL && strcmp(value, "18446744073709551615") != 0))
            return ekv_set_error(EKV_ERR_INVALID_ARG,
                                 "%s='%s' is not an unsigned integer: allowed 0..2^64-1", f->name,
                                 value);
        c->seed = (uint64_t)v;
        return EKV_SUCCESS;
    }
    /* text */
    {
        size_t cap = (size_t)f->hi;
        if (strlen(value) >= cap)
            return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: value longer than %zu bytes", f->name,
                                 cap - 1);
        if (f->options & EKV__DATA_SOURCE) {
            if (strcmp(value, "structured") == 0) {
                c->data = EKV_DATA_STRUCTURED;
                c->data_path[0] = '\0';
                return EKV_SUCCESS;
            }
            if (strcmp(value, "random") == 0) {
                c->data = EKV_DATA_RANDOM;
                c->data_path[0] = '\0';
                return EKV_SUCCESS;
            }
            if (value[0] == '\0')
                return ekv_set_error(EKV_ERR_INVALID_ARG,
                                     "--data is empty: allowed structured, random, or a path");
            c->data = EKV_DATA_FILE;
        } else if (value[0] == '\0' && !(f->options & EKV__EMPTY_OK)) {
            return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: a path is required", f->name);
        }
        memcpy((char *)c + f->offset, value, strlen(value) + 1);
    }
    return EKV_SUCCESS;
}

static const ekv__flag *ekv__find_flag(const char *name, size_t len)
{
    size_t i;
    for (i = 0; i < EKV__FLAG_COUNT; i++) {
        const ekv__flag *f = &ekv__flags[i];
        if ((strlen(f->name) == len && strncmp(f->name, name, len) == 0) ||
            (f->alias && strlen(f->alias) == len && strncmp(f->alias, name, len) == 0))
            return f;
    }
    return NULL;
}

/* The flags whose axes expand the sweep, in this order (last fastest). */
EKV_DEF ekv_result ekv_cli_config(const ekv_cli *cli, size_t index, ekv_config *out)
{
    int a;
    if (index >= cli->run_count)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "sweep index %zu out of range (%zu runs)",
                             index, cli->run_count);
    *out = cli->base;
    for (a = cli->axis_count - 1; a >= 0; a--) {
        const ekv_sweep_axis *axis = &cli->axes[a];
        const ekv__flag *f = ekv__find_flag(axis->flag, strlen(axis->flag));
        size_t i = index % (size_t)axis->count;
        index /= (size_t)axis->count;
        ekv__config_set_int(out, f->offset, axis->values[i]);
    }
    *out = ekv_config_resolve(out);
    return EKV_SUCCESS;
}

/* cli->notice names each flag given more than once, with the value that applies. */
static void ekv__cli_note_repeats(ekv_cli *cli, const unsigned char *seen, const char *const *last)
{
    size_t i, used = 0;
    for (i = 0; i < EKV__FLAG_COUNT; i++) {
        if (seen[i] < 2 || used >= sizeof cli->notice) continue;
        if (!last[i]) /* no value: a switch, the same however often it is given */
            used += (size_t)snprintf(cli->notice + used, sizeof cli->notice - used,
                                     "%s%s given %d times", used ? "; " : "", ekv__flags[i].name,
                                     seen[i]);
        else
            used += (size_t)snprintf(cli->notice + used, sizeof cli->notice - used,
                                     "%s%s given %d times: the last, %s=%.64s%s, applies",
                                     used ? "; " : "", ekv__flags[i].name, seen[i],
                                     ekv__flags[i].name, last[i], strlen(last[i]) > 64 ? "..." : "");
    }
}

EKV_DEF ekv_result ekv_cli_parse(int argc, char **argv, ekv_cli *cli, FILE *out)
{
    int i;
    size_t k;
    ekv_result r;
    unsigned char seen[EKV__FLAG_COUNT];
    const char *last[EKV__FLAG_COUNT];
    memset(cli, 0, sizeof *cli);
    memset(seen, 0, sizeof seen);
    memset((void *)last, 0, sizeof last);
    cli->base = ekv_config_default();
    for (i = 1; i < argc; i++) {
        const char *arg = argv[i];
        const char *eq = strchr(arg, '=');
        size_t name_len = eq ? (size_t)(eq - arg) : strlen(arg);
        const ekv__flag *f = ekv__find_flag(arg, name_len);
        const char *value = eq ? eq + 1 : NULL;
        if (!f)
            return ekv_set_error(EKV_ERR_INVALID_ARG,
                                 "unknown flag '%.*s' (see --help for the allowed flags)",
                                 (int)(name_len > 200 ? 200 : name_len), arg);
        if (seen[f - ekv__flags] < 255) seen[f - ekv__flags]++;
        last[f - ekv__flags] = NULL;
        if (f->kind == EKV__FLAG_SPECIAL) {
            if (value) return ekv_set_error(EKV_ERR_INVALID_ARG, "%s takes no value", f->name);
            if (strcmp(f->name, "--help") == 0) ekv_cli_print_help(out);
            else fprintf(out, "ekv_bench %s\n", EKV_VERSION_STRING);
            return EKV_HELP_SHOWN;
        }
        if (f->kind == EKV__FLAG_BOOL) {
            int on = (f->options & EKV__CLEARS) ? 0 : 1;
            if (value)
                return ekv_set_error(EKV_ERR_INVALID_ARG, "%s takes no value (got '%s')", f->name,
                                     value);
            memcpy((char *)&cli->base + f->offset, &on, sizeof on);
            continue;
        }
        if (!value) {
            if (i + 1 >= argc)
                return ekv_set_error(EKV_ERR_INVALID_ARG, "%s needs a value: %s", f->name,
                                     f->help);
            value = argv[++i];
        }
        last[f - ekv__flags] = value;
        r = ekv__parse_value(cli, f, value);
        if (r != EKV_SUCCESS) return r;
    }
    for (k = 0; k < EKV__FLAG_COUNT; k++)
        if (seen[k] && (ekv__flags[k].options & EKV__CYCLE_ONLY) && !cli->base.inference)
            return ekv_set_error(EKV_ERR_INVALID_ARG,
                                 "%s is a setting of the inference cycle, which runs only with "
                                 "--inference: add --inference or omit %s", ekv__flags[k].name,
                                 ekv__flags[k].name);
    ekv__cli_note_repeats(cli, seen, last);
    cli->run_count = 1;
    for (i = 0; i < cli->axis_count; i++) {
        cli->run_count *= (size_t)cli->axes[i].count;
        if (cli->run_count > 100000)
            return ekv_set_error(EKV_ERR_INVALID_ARG,
                                 "the sweep has more than 100000 configurations");
    }
    if (cli->base.dump_dir[0] && cli->run_count > 1)
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "--dump-dir needs a single configuration (the sweep has %zu)",
                             cli->run_count);
    for (k = 0; k < cli->run_count; k++) {
        ekv_config c;
        ekv_cli_config(cli, k, &c);
        r = ekv_config_validate(&c);
        if (r != EKV_SUCCESS) return r;
    }
    return EKV_SUCCESS;
}

/* >>stats: sample statistics, Student t, bootstrap ============================ *

   Conventions beyond the numpy/scipy definitions in ekv.h:
   - Samples must be finite: NaN or an infinity anywhere is EKV_ERR_INVALID_ARG naming
     the index (a NaN would silently poison every order statistic).
   - n = 1: std, cv and the CI of the mean are NaN (ddof = 1 leaves no degrees of
     freedom, as numpy's nan); everything else is the one value.
   - cv = std / mean as computed, so a zero mean gives an infinity (JSON null).
   - Bootstrap: resample r draws n indices with ekv_rng_below(n) from one stream seeded
     once with `seed`; the median's indices select from the sorted samples, the
     ratio's from the pairs. The interval is the 2.5 and 97.5 percentiles (linear
     interpolation) of the replicates, so it is reproducible from the seed alone.
   - ekv_bootstrap_ratio needs candidate samples > 0 (they divide); resamples 0 means
     EKV_BOOTSTRAP_RESAMPLES. On any error its outputs are NaN.
   - ekv_median, ekv_trimmed_mean, ekv_quantile_sorted return NaN for NULL, n = 0, a
     NaN in the data, or a proportion/quantile out of range. */

/* NaN and infinities fail (x - x is NaN for both); portable where isfinite() is a
   macro in C and a function in C++. */
static int ekv__is_finite(double x)
{
    return x == x && x - x == 0.0;
}

static double ekv__nan(void)
{
    return NAN;
}

/* Neumaier-compensated sum: agrees with numpy's pairwise sum to well below 1e-12
   relative, independently of the order of the data. */
static double ekv__sum(const double *x, size_t n)
{
    double sum = 0.0, compensation = 0.0;
    size_t i;
    for (i = 0; i < n; i++) {
        double t = sum + x[i];
        if (fabs(sum) >= fabs(x[i])) compensation += (sum - t) + x[i];
        else compensation += (x[i] - t) + sum;
        sum = t;
    }
    return sum + compensation;
}

/* numpy's _lerp: from the nearer end so that the result is exact at both ends and
   monotone in t. */
static double ekv__lerp(double a, double b, double t)
{
    double diff = b - a;
    return t >= 0.5 ? b - diff * (1.0 - t) : a + diff * t;
}

EKV_DEF double ekv_quantile_sorted(const double *sorted, size_t n, double q)
{
    double virtual_index, previous;
    size_t i;
    if (!sorted || n == 0 || !(q >= 0.0 && q <= 1.0)) return ekv__nan();
    virtual_index = (double)(n - 1) * q;
    previous = floor(virtual_index);
    i = (size_t)previous;
    if (i >= n - 1) return sorted[n - 1];
    return ekv__lerp(sorted[i], sorted[i + 1], virtual_index - previous);
}

/* np.median: the middle element, or the mean of the two middle ones. */
static double ekv__median_sorted(const double *sorted, size_t n)
{
    if (n % 2) return sorted[n / 2];
    return (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0;
}

/* A sorted copy, or NULL when the input holds a NaN (numpy's median is then NaN) or
   memory runs out. */
static double *ekv__sorted_copy(const double *samples, size_t n)
{
    double *sorted;
    size_t i;
    for (i = 0; i < n; i++)
        if (samples[i] != samples[i]) return NULL;
    sorted = (double *)ekv__alloc(n, sizeof *sorted);
    if (!sorted) return NULL;
    memcpy(sorted, samples, n * sizeof *sorted);
    qsort(sorted, n, sizeof *sorted, ekv__compare_double);
    return sorted;
}

EKV_DEF double ekv_median(const double *samples, size_t n)
{
    double *sorted, median;
    if (!samples || n == 0) return ekv__nan();
    sorted = ekv__sorted_copy(samples, n);
    if (!sorted) return ekv__nan();
    median = ekv__median_sorted(sorted, n);
    ekv__free(sorted);
    return median;
}

/* scipy.stats.trim_mean: int(proportion * n) values cut from each end, with the same
   double product Python computes (so 0.29 * 100 cuts 28, as scipy does). */
static double ekv__trimmed_mean_sorted(const double *sorted, size_t n, double proportion)
{
    size_t cut;
    if (!(proportion >= 0.0 && proportion <= 0.5)) return ekv__nan();
    cut = (size_t)(proportion * (double)n);
    if (2 * cut >= n) return ekv__nan();
    return ekv__sum(sorted + cut, n - 2 * cut) / (double)(n - 2 * cut);
}

EKV_DEF double ekv_trimmed_mean(const double *samples, size_t n, double proportion)
{
    double *sorted, mean;
    if (!samples || n == 0) return ekv__nan();
    sorted = ekv__sorted_copy(samples, n);
    if (!sorted) return ekv__nan();
    mean = ekv__trimmed_mean_sorted(sorted, n, proportion);
    ekv__free(sorted);
    return mean;
}

/* --- Student t ------------------------------------------------------------------
   P(T > t) = I_x(df/2, 1/2) / 2 and P(0 < T < t) = I_y(1/2, df/2) / 2 with
   x = df / (df + t^2), y = t^2 / (df + t^2), I the regularized incomplete beta
   function, evaluated by its continued fraction. The inverse solves whichever of the
   two is the smaller probability, so neither the tails nor the centre lose digits to
   a difference with 1/2. */

/* lgamma(x) - [(x - 1/2) ln x - x + ln(2 pi)/2] for x >= 10: the series' next term is
   below 3e-17 there. */
static double ekv__stirling_correction(double x)
{
    double r = 1.0 / x, r2 = r * r;
    return r * (1.0 / 12.0 +
                r2 * (-1.0 / 360.0 +
                      r2 * (1.0 / 1260.0 +
                            r2 * (-1.0 / 1680.0 +
                                  r2 * (1.0 / 1188.0 + r2 * (-691.0 / 360360.0 + r2 / 156.0))))));
}

/* ln B(a, b) for a, b > 0, accurate to a few ulps of its terms when the smaller
   argument stays moderate (the t distribution uses 1/2). For a large argument the
   difference lgamma(big) - lgamma(big + small) comes from the Stirling series,
   rearranged so that nothing cancels: the plain difference would lose
   |lgamma(big)| * eps (1e-9 relative at df = 1e6). */
static double ekv__log_beta(double a, double b)
{
    double big = a > b ? a : b, small = a > b ? b : a;
    if (big < 10.0) return lgamma(a) + lgamma(b) - lgamma(a + b);
    return lgamma(small) - (big - 0.5) * log1p(small / big) - small * log(big + small) + small +
           ekv__stirling_correction(big) - ekv__stirling_correction(big + small);
}

/* The continued fraction g of I_x(a, b) = x^a y^b / (a B(a, b) g), for x below the
   mean (a+1)/(a+b+2) where it converges quickly. It is the even contraction of the
   classic fraction 1/(1 + d1/(1 + d2/(1 + ...))):
       g = (1 + d1) - d1 d2 / ((1 + d2 + d3) - d3 d4 / ((1 + d4 + d5) - ...))
       d(2m+1) = -(a+m)(a+b+m) x / ((a+2m)(a+2m+1)),  d(2m) = m(b-m) x / ((a+2m-1)(a+2m)),
   because 1 + d(2m+1), the sum that cancels, can then be written without cancellation:
   when x is near 1 (the t tails at large df) it is
       [a(1-b) + 2am + (2-b)m + 3m^2 + (a+m)(a+b+m) y] / ((a+2m)(a+2m+1)),
   whose terms share a sign for the b = 1/2 of those tails; computed as 1 + d(2m+1) it
   would lose digits in proportion to df. Modified Lentz. */
static double ekv__beta_fraction(double a, double b, double x, double y)
{
    const double tiny = 1e-300, epsilon = 2.0 * DBL_EPSILON; /* exactly 1 may never come */
    double g, c, d = 0.0;
    int m;
    g = y < x ? ((1.0 - b) + (a + b) * y) / (a + 1.0) : 1.0 - (a + b) * x / (a + 1.0);
    if (fabs(g) < tiny) g = tiny;
    c = g;
    for (m = 1; m <= 1000000; m++) {
        double odd_previous = -(a + m - 1.0) * (a + b + m - 1.0) * x /
                              ((a + 2.0 * m - 2.0) * (a + 2.0 * m - 1.0));
        double even = m * (b - m) * x / ((a + 2.0 * m - 1.0) * (a + 2.0 * m));
        double odd_denominator = (a + 2.0 * m) * (a + 2.0 * m + 1.0);
        double one_plus_odd =
            y < x ? (a * (1.0 - b) + 2.0 * a * m + (2.0 - b) * m + 3.0 * m * m +
                     (a + m) * (a + b + m) * y) / odd_denominator
                  : 1.0 - (a + m) * (a + b + m) * x / odd_denominator;
        double numerator = -odd_previous * even, denominator = even + one_plus_odd, delta;
        d = denominator + numerator * d;
        if (fabs(d) < tiny) d = tiny;
        c = denominator + numerator / c;
        if (fabs(c) < tiny) c = tiny;
        d = 1.0 / d;
        delta = c * d;
        g *= delta;
        if (fabs(delta - 1.0) < epsilon) break;
    }
    return g;
}

/* I_x(a, b) given both x and y = 1 - x, each computed without cancellation by the
   caller, so that either tail keeps full relative precision. */
static double ekv__incomplete_beta(double a, double b, double x, double y)
{
    double log_x, log_y;
    if (x <= 0.0) return 0.0;
    if (y <= 0.0) return 1.0;
    if (x > (a + 1.0) / (a + b + 2.0)) return 1.0 - ekv__incomplete_beta(b, a, y, x);
    log_x = x < 0.5 ? log(x) : log1p(-y);
    log_y = y < 0.5 ? log(y) : log1p(-x);
    return exp(a * log_x + b * log_y - ekv__log_beta(a, b)) / (a * ekv__beta_fraction(a, b, x, y));
}

/* x = df / (df + t^2) and y = 1 - x for t >= 0, both without cancellation. */
static void ekv__t_beta_arguments(double t, double df, double *x, double *y)
{
    double t2 = t * t;
    *x = df / (df + t2);
    *y = t2 / (df + t2);
}

/* P(T > t) for t >= 0; df = infinity is the standard normal. */
static double ekv__t_upper_tail(double t, double df)
{
    double x, y, log_ratio;
    if (df == INFINITY) return 0.5 * erfc(t / sqrt(2.0));
    /* far tail, x < 1e-100: I_x(df/2, 1/2) = x^(df/2) / ((df/2) B) to within x, taken in
       logarithms because x itself underflows long before the tail does (df = 1) */
    log_ratio = log(t) - 0.5 * log(df);
    if (log_ratio > 115.0) return exp(-df * log_ratio - ekv__log_beta(0.5 * df, 0.5)) / df;
    ekv__t_beta_arguments(t, df, &x, &y);
    return 0.5 * ekv__incomplete_beta(0.5 * df, 0.5, x, y);
}

/* P(0 < T < t) for t >= 0. */
static double ekv__t_centre(double t, double df)
{
    double x, y;
    if (df == INFINITY) return 0.5 * erf(t / sqrt(2.0));
    if (t == INFINITY) return 0.5;
    ekv__t_beta_arguments(t, df, &x, &y);
    return 0.5 * ekv__incomplete_beta(0.5, 0.5 * df, y, x);
}

/* ln of the density at t >= 0; log_norm = -ln B(df/2, 1/2) - ln(df)/2. */
static double ekv__t_log_density(double t, double df, double log_norm)
{
    double log_ratio;
    if (df == INFINITY) return -0.5 * t * t - 0.5 * log(2.0 * EKV__PI);
    log_ratio = log(t) - 0.5 * log(df);
    if (log_ratio > 115.0) return log_norm - (df + 1.0) * log_ratio;
    return log_norm - 0.5 * (df + 1.0) * log1p(t / sqrt(df) * (t / sqrt(df)));
}

EKV_DEF double ekv_t_cdf(double t, double df)
{
    if (t != t || !(df > 0.0)) return ekv__nan();
    if (t < 0.0) return ekv__t_upper_tail(-t, df);
    return 1.0 - ekv__t_upper_tail(t, df);
}

/* The probability that ekv__t_solve matches: P(0 < T < t) or P(T > t). */
static double ekv__t_probability(double t, double df, int centre)
{
    return centre ? ekv__t_centre(t, df) : ekv__t_upper_tail(t, df);
}

/* Whether `probability` puts t below the root (the centre grows with t, the tail
   shrinks). */
static int ekv__t_below_root(double probability, double target, int centre)
{
    return centre ? probability < target : probability > target;
}

/* The t >= 0 with P(T > t) = target (centre = 0), or P(0 < T < t) = target (centre =
   1), target in (0, 1/4]. Newton on the log of that probability against ln t (close
   to linear in both the normal-like centre and the power-law tails), kept inside a
   bracket that falls back to bisection, so it cannot diverge. Infinity when the root
   lies beyond the largest double (df < 2 and a tail below ~1e-155). */
static double ekv__t_solve(double target, double df, int centre)
{
    double log_norm = df == INFINITY ? 0.0 : -ekv__log_beta(0.5 * df, 0.5) - 0.5 * log(df);
    double log_target = log(target);
    double low, high, t;
    int iteration;
    /* bracket [low, high] around the root, by squaring away from 1 */
    if (ekv__t_below_root(ekv__t_probability(1.0, df, centre), target, centre)) {
        low = 1.0;
        high = 2.0;
        while (ekv__t_below_root(ekv__t_probability(high, df, centre), target, centre)) {
            if (high == DBL_MAX) return INFINITY;
            low = high;
            high = high > 1e154 ? DBL_MAX : high * high;
        }
    } else {
        high = 1.0;
        low = 0.5;
        while (!ekv__t_below_root(ekv__t_probability(low, df, centre), target, centre)) {
            high = low;
            low = low * low;
        }
    }
    t = low > 0.0 ? sqrt(low) * sqrt(high) : 0.5 * high;
    for (iteration = 0; iteration < 200; iteration++) {
        double probability = ekv__t_probability(t, df, centre), next, slope;
        if (probability == target) return t;
        if (ekv__t_below_root(probability, target, centre)) low = t;
        else high = t;
        /* d ln(probability) / d ln(t) */
        slope = (centre ? t : -t) * exp(ekv__t_log_density(t, df, log_norm)) / probability;
        next = t * exp((log_target - log(probability)) / slope);
        if (!(next > low && next < high))
            next = low > 0.0 ? sqrt(low) * sqrt(high) : 0.5 * high;
        if (fabs(next - t) <= 4e-16 * t || next == low || next == high) return next;
        t = next;
    }
    return t;
}

EKV_DEF double ekv_t_inverse_cdf(double p, double df)
{
    if (!(p >= 0.0 && p <= 1.0) || !(df > 0.0)) return ekv__nan();
    if (p == 0.0) return -INFINITY;
    if (p == 1.0) return INFINITY;
    if (p == 0.5) return 0.0;
    /* p - 1/2 is exact for p in [1/4, 1] and 1 - p for p in [1/2, 1] (Sterbenz) */
    if (p >= 0.25 && p <= 0.75) {
        double t = ekv__t_solve(fabs(p - 0.5), df, 1);
        return p < 0.5 ? -t : t;
    }
    if (p < 0.5) return -ekv__t_solve(p, df, 0);
    return ekv__t_solve(1.0 - p, df, 0);
}

/* --- bootstrap ------------------------------------------------------------------
   A resample is a count per original index (counts[i] = times index i was drawn).
   Walking a sorted order and accumulating counts finds the resample's middle order
   statistics in O(n) with no sort, and gives exactly np.median of the resample. */

/* Draws n indices (ekv_rng_below(n), in order) into counts. */
static void ekv__bootstrap_draw(ekv_rng *rng, size_t n, size_t *counts)
{
    size_t i;
    memset(counts, 0, n * sizeof *counts);
    for (i = 0; i < n; i++) counts[ekv_rng_below(rng, (uint64_t)n)]++;
}

/* Median of the resample: sorted_values[j] is the value of index order[j] (order NULL:
   counts are already in sorted order). */
static double ekv__counted_median(const double *sorted_values, const size_t *order,
                                  const size_t *counts, size_t n)
{
    size_t lower_rank = (n - 1) / 2, upper_rank = n / 2, seen = 0, j;
    double lower = 0.0;
    for (j = 0; j < n; j++) {
        size_t count = counts[order ? order[j] : j];
        if (count == 0) continue;
        if (seen <= lower_rank && lower_rank < seen + count) lower = sorted_values[j];
        if (upper_rank < seen + count) {
            if (lower_rank == upper_rank) return sorted_values[j];
            return (lower + sorted_values[j]) / 2.0;
        }
        seen += count;
    }
    return ekv__nan();
}

/* Percentile interval: quantiles 0.025 and 0.975 of the sorted replicates. */
static void ekv__percentile_interval(double *replicates, size_t count, double *lo, double *hi)
{
    qsort(replicates, count, sizeof *replicates, ekv__compare_double);
    *lo = ekv_quantile_sorted(replicates, count, 0.025);
    *hi = ekv_quantile_sorted(replicates, count, 0.975);
}

static ekv_result ekv__check_samples(const double *samples, size_t n, const char *function,
                                     const char *name)
{
    size_t i;
    if (!samples) return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: %s is NULL", function, name);
    if (n == 0) return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: no samples (n = 0)", function);
    for (i = 0; i < n; i++)
        if (!ekv__is_finite(samples[i]))
            return ekv_set_error(EKV_ERR_INVALID_ARG,
                                 "%s: %s[%zu] is %g; samples must be finite", function, name,
                                 i, samples[i]);
    return EKV_SUCCESS;
}

/* Index sort for the paired bootstrap: values with their original index. */
typedef struct ekv__indexed_value {
    double value;
    size_t index;
} ekv__indexed_value;

static int ekv__compare_indexed(const void *a, const void *b)
{
    const ekv__indexed_value *x = (const ekv__indexed_value *)a;
    const ekv__indexed_value *y = (const ekv__indexed_value *)b;
    if (x->value != y->value) return (x->value > y->value) - (x->value < y->value);
    return (x->index > y->index) - (x->index < y->index);
}

EKV_DEF ekv_result ekv_stats_compute(const double *samples, size_t n, double trim_percent,
                                     uint64_t seed, ekv_stats *out)
{
    double *sorted = NULL, *deviations = NULL, *medians = NULL;
    size_t *counts = NULL, i;
    double low_mild, high_mild, low_severe, high_severe;
    ekv_rng rng;
    ekv_result result;
    if (!out) return ekv_set_error(EKV_ERR_INVALID_ARG, "ekv_stats_compute: out is NULL");
    memset(out, 0, sizeof *out);
    result = ekv__check_samples(samples, n, "ekv_stats_compute", "samples");
    if (result != EKV_SUCCESS) return result;
    if (!(trim_percent >= 0.0 && trim_percent < 50.0))
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "ekv_stats_compute: trim percent %g is outside [0, 50)",
                             trim_percent);
    sorted = ekv__sorted_copy(samples, n);
    deviations = (double *)ekv__alloc(n, sizeof *deviations);
    counts = (size_t *)ekv__alloc(n, sizeof *counts);
    medians = (double *)ekv__alloc(EKV_BOOTSTRAP_RESAMPLES, sizeof *medians);
    if (!sorted || !deviations || !counts || !medians) {
        result = EKV_ERR_OUT_OF_MEMORY; /* ekv__alloc set the message */
        goto done;
    }

    out->n = n;
    out->mean = ekv__sum(samples, n) / (double)n;
    for (i = 0; i < n; i++) deviations[i] = (samples[i] - out->mean) * (samples[i] - out->mean);
    out->std = n > 1 ? sqrt(ekv__sum(deviations, n) / (double)(n - 1)) : ekv__nan();
    out->cv = out->std / out->mean;
    out->median = ekv__median_sorted(sorted, n);
    out->min = sorted[0];
    out->max = sorted[n - 1];
    out->q1 = ekv_quantile_sorted(sorted, n, 0.25);
    out->q3 = ekv_quantile_sorted(sorted, n, 0.75);
    out->iqr = out->q3 - out->q1;
    out->p5 = ekv_quantile_sorted(sorted, n, 0.05);
    out->p95 = ekv_quantile_sorted(sorted, n, 0.95);
    out->p99 = ekv_quantile_sorted(sorted, n, 0.99);
    out->trimmed_mean = ekv__trimmed_mean_sorted(sorted, n, trim_percent / 100.0);

    low_mild = out->q1 - 1.5 * out->iqr;
    high_mild = out->q3 + 1.5 * out->iqr;
    low_severe = out->q1 - 3.0 * out->iqr;
    high_severe = out->q3 + 3.0 * out->iqr;
    for (i = 0; i < n; i++) {
        double x = sorted[i];
        if (x < low_severe || x > high_severe) out->outliers_severe++;
        else if (x < low_mild || x > high_mild) out->outliers_mild++;
    }

    if (n > 1) {
        double half = ekv_t_inverse_cdf(0.975, (double)(n - 1)) * out->std / sqrt((double)n);
        out->ci95_mean_lo = out->mean - half;
        out->ci95_mean_hi = out->mean + half;
    } else {
        out->ci95_mean_lo = out->ci95_mean_hi = ekv__nan();
    }

    /* indices drawn into the sorted samples: the median depends only on the multiset */
    ekv_rng_seed(&rng, seed);
    for (i = 0; i < EKV_BOOTSTRAP_RESAMPLES; i++) {
        ekv__bootstrap_draw(&rng, n, counts);
        medians[i] = ekv__counted_median(sorted, NULL, counts, n);
    }
    ekv__percentile_interval(medians, EKV_BOOTSTRAP_RESAMPLES, &out->ci95_median_lo,
                             &out->ci95_median_hi);
    result = EKV_SUCCESS;
done:
    ekv__free(sorted);
    ekv__free(deviations);
    ekv__free(counts);
    ekv__free(medians);
    return result;
}

/* Sorted values and the original index of each, for one side of the pairs. */
static ekv_result ekv__sort_indexed(const double *values, size_t n, double *sorted, size_t *order)
{
    ekv__indexed_value *pairs = (ekv__indexed_value *)ekv__alloc(n, sizeof *pairs);
    size_t i;
    if (!pairs) return EKV_ERR_OUT_OF_MEMORY;
    for (i = 0; i < n; i++) {
        pairs[i].value = values[i];
        pairs[i].index = i;
    }
    qsort(pairs, n, sizeof *pairs, ekv__compare_indexed);
    for (i = 0; i < n; i++) {
        sorted[i] = pairs[i].value;
        order[i] = pairs[i].index;
    }
    ekv__free(pairs);
    return EKV_SUCCESS;
}

EKV_DEF ekv_result ekv_bootstrap_ratio(const double *base, const double *candidate, size_t n,
                                       int resamples, uint64_t seed, double *ratio,
                                       double *lo, double *hi)
{
    const char *function = "ekv_bootstrap_ratio";
    double *base_sorted = NULL, *candidate_sorted = NULL, *ratios = NULL;
    size_t *base_order = NULL, *candidate_order = NULL, *counts = NULL, i;
    size_t count;
    ekv_rng rng;
    ekv_result result;
    if (!ratio || !lo || !hi)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: ratio, lo and hi must not be NULL",
                             function);
    *ratio = *lo = *hi = ekv__nan();
    result = ekv__check_samples(base, n, function, "base");
    if (result != EKV_SUCCESS) return result;
    result = ekv__check_samples(candidate, n, function, "candidate");
    if (result != EKV_SUCCESS) return result;
    for (i = 0; i < n; i++)
        if (!(candidate[i] > 0.0))
            return ekv_set_error(EKV_ERR_INVALID_ARG,
                                 "%s: candidate[%zu] is %g; candidate samples must be > 0 "
                                 "(they divide)", function, i, candidate[i]);
    if (resamples < 0)
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "%s: resamples is %d; use >= 1, or 0 for the default %d",
                             function, resamples, EKV_BOOTSTRAP_RESAMPLES);
    count = resamples == 0 ? EKV_BOOTSTRAP_RESAMPLES : (size_t)resamples;

    base_sorted = (double *)ekv__alloc(n, sizeof *base_sorted);
    candidate_sorted = (double *)ekv__alloc(n, sizeof *candidate_sorted);
    base_order = (size_t *)ekv__alloc(n, sizeof *base_order);
    candidate_order = (size_t *)ekv__alloc(n, sizeof *candidate_order);
    counts = (size_t *)ekv__alloc(n, sizeof *counts);
    ratios = (double *)ekv__alloc(count, sizeof *ratios);
    if (!base_sorted || !candidate_sorted || !base_order || !candidate_order || !counts ||
        !ratios || ekv__sort_indexed(base, n, base_sorted, base_order) != EKV_SUCCESS ||
        ekv__sort_indexed(candidate, n, candidate_sorted, candidate_order) != EKV_SUCCESS) {
        result = EKV_ERR_OUT_OF_MEMORY;
        goto done;
    }
    *ratio = ekv__median_sorted(base_sorted, n) / ekv__median_sorted(candidate_sorted, n);

    /* indices drawn into the pairs, so base[i] and candidate[i] stay together */
    ekv_rng_seed(&rng, seed);
    for (i = 0; i < count; i++) {
        ekv__bootstrap_draw(&rng, n, counts);
        ratios[i] = ekv__counted_median(base_sorted, base_order, counts, n) /
                    ekv__counted_median(candidate_sorted, candidate_order, counts, n);
    }
    ekv__percentile_interval(ratios, count, lo, hi);
    result = EKV_SUCCESS;
done:
    ekv__free(base_sorted);
    ekv__free(candidate_sorted);
    ekv__free(base_order);
    ekv__free(candidate_order);
    ekv__free(counts);
    ekv__free(ratios);
    return result;
}

/* >>json: streaming writer ====================================================== *

   The writer inserts commas, colons and (pretty) newlines with 2-space indentation
   itself. Misuse (a value in an object without a key, a key outside an object,
   mismatched or unbalanced ends, nesting beyond 64) and allocation failure set
   `failed`, after which nothing more is written; the buffer always stays a NUL-
   terminated prefix of the intended document (NULL only if ekv_json_init could not
   allocate). Several top-level values are separated by newlines (JSONL). */

/* json->first[d] describes the container open at depth d + 1: these flag bits. */
#define EKV__JSON_EMPTY 1u  /* nothing written in it yet */
#define EKV__JSON_OBJECT 2u /* an object (else an array) */
#define EKV__JSON_MAX_DEPTH 64

/* Room for `extra` more bytes plus the terminating NUL; on failure marks the writer
   failed, and every later call writes nothing (the buffer keeps its valid prefix). */
static int ekv__json_reserve(ekv_json *json, size_t extra)
{
    size_t needed, capacity;
    char *grown;
    if (json->failed) return 0;
    if (extra > (size_t)-1 - json->length - 1) {
        json->failed = 1;
        return 0;
    }
    needed = json->length + extra + 1;
    if (needed <= json->capacity) return 1;
    capacity = json->capacity ? json->capacity : 256;
    while (capacity < needed) capacity = capacity > (size_t)-1 / 2 ? needed : capacity * 2;
    grown = (char *)EKV_REALLOC(json->buffer, capacity);
    if (!grown) {
        json->failed = 1;
        return 0;
    }
    json->buffer = grown;
    json->capacity = capacity;
    return 1;
}

static void ekv__json_append(ekv_json *json, const char *bytes, size_t count)
{
    if (!ekv__json_reserve(json, count)) return;
    memcpy(json->buffer + json->length, bytes, count);
    json->length += count;
    json->buffer[json->length] = '\0';
}

static void ekv__json_newline(ekv_json *json)
{
    int i;
    if (!json->pretty) return;
    ekv__json_append(json, "\n", 1);
    for (i = 0; i < json->depth; i++) ekv__json_append(json, "  ", 2);
}

static void ekv__json_fail(ekv_json *json)
{
    json->failed = 1;
}

/* Separator and indentation before a value; 0 (and the writer failed) when a value is
   not allowed here: in an object without a key first. Top-level values after the first
   go on a new line, so one writer can produce JSONL. */
static int ekv__json_before_value(ekv_json *json)
{
    unsigned char *flags;
    if (json->failed) return 0;
    if (json->depth == 0) {
        if (json->length > 0) ekv__json_append(json, "\n", 1);
        return !json->failed;
    }
    flags = &json->first[json->depth - 1];
    if (*flags & EKV__JSON_OBJECT) {
        if (!json->after_key) {
            ekv__json_fail(json);
            return 0;
        }
        json->after_key = 0;
        return 1;
    }
    if (!(*flags & EKV__JSON_EMPTY)) ekv__json_append(json, ",", 1);
    *flags &= (unsigned char)~EKV__JSON_EMPTY;
    ekv__json_newline(json);
    return !json->failed;
}

/* Length of the well-formed UTF-8 sequence at p (RFC 3629: no overlongs, surrogates
   or code points above U+10FFFF), or 0 with *bad set to the length of its maximal ill-
   formed prefix, which becomes one U+FFFD (Unicode's recommended practice, and what
   Python's decode(errors="replace") does). */
static size_t ekv__utf8_sequence(const unsigned char *p, size_t *bad)
{
    unsigned char lead = p[0], second_lo = 0x80, second_hi = 0xBF;
    size_t trailing, i;
    if (lead >= 0xC2 && lead <= 0xDF) trailing = 1;
    else if (lead >= 0xE0 && lead <= 0xEF) {
        trailing = 2;
        if (lead == 0xE0) second_lo = 0xA0;      /* overlong */
        else if (lead == 0xED) second_hi = 0x9F; /* surrogates */
    } else if (lead >= 0xF0 && lead <= 0xF4) {
        trailing = 3;
        if (lead == 0xF0) second_lo = 0x90;      /* overlong */
        else if (lead == 0xF4) second_hi = 0x8F; /* above U+10FFFF */
    } else {
        *bad = 1;
        return 0;
    }
    if (p[1] < second_lo || p[1] > second_hi) {
        *bad = 1;
        return 0;
    }
    for (i = 2; i <= trailing; i++)
        if (p[i] < 0x80 || p[i] > 0xBF) {
            *bad = i;
            return 0;
        }
    return trailing + 1;
}

static void ekv__json_write_string(ekv_json *json, const char *text)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)text;
    size_t length = strlen(text);
    char *out;
    /* worst case: every byte a \u00XX escape */
    if (length > ((size_t)-1 - 2) / 6 || !ekv__json_reserve(json, 6 * length + 2)) {
        ekv__json_fail(json);
        return;
    }
    out = json->buffer + json->length;
    *out++ = '"';
    while (*p) {
        unsigned char c = *p;
        if (c >= 0x80) {
            size_t bad = 0, valid = ekv__utf8_sequence(p, &bad);
            if (valid) {
                memcpy(out, p, valid);
                out += valid;
                p += valid;
            } else {
                memcpy(out, "\xEF\xBF\xBD", 3);
                out += 3;
                p += bad;
            }
            continue;
        }
        p++;
        if (c == '"' || c == '\\') {
            *out++ = '\\';
            *out++ = (char)c;
        } else if (c >= 0x20 && c != 0x7F) {
            *out++ = (char)c;
        } else {
            *out++ = '\\';
            switch (c) {
            case '\b': *out++ = 'b'; break;
            case '\f': *out++ = 'f'; break;
            case '\n': *out++ = 'n'; break;
            case '\r': *out++ = 'r'; break;
            case '\t': *out++ = 't'; break;
            default:
                memcpy(out, "u00", 3);
                out += 3;
                *out++ = hex[c >> 4];
                *out++ = hex[c & 15];
            }
        }
    }
    *out++ = '"';
    json->length = (size_t)(out - json->buffer);
    json->buffer[json->length] = '\0';
}

EKV_DEF void ekv_json_init(ekv_json *json, int pretty)
{
    memset(json, 0, sizeof *json);
    json->pretty = pretty != 0;
    if (ekv__json_reserve(json, 0)) json->buffer[0] = '\0';
}

EKV_DEF void ekv_json_free(ekv_json *json)
{
    if (!json) return;
    ekv__free(json->buffer);
    memset(json, 0, sizeof *json);
}

static void ekv__json_begin(ekv_json *json, char bracket, unsigned char kind)
{
    if (!ekv__json_before_value(json)) return;
    if (json->depth >= EKV__JSON_MAX_DEPTH) {
        ekv__json_fail(json);
        return;
    }
    ekv__json_append(json, &bracket, 1);
    json->first[json->depth++] = (unsigned char)(EKV__JSON_EMPTY | kind);
}

static void ekv__json_end(ekv_json *json, char bracket, unsigned char kind)
{
    unsigned char flags;
    if (json->failed) return;
    if (json->depth == 0 || json->after_key ||
        (json->first[json->depth - 1] & EKV__JSON_OBJECT) != kind) {
        ekv__json_fail(json);
        return;
    }
    flags = json->first[--json->depth];
    if (!(flags & EKV__JSON_EMPTY)) ekv__json_newline(json);
    ekv__json_append(json, &bracket, 1);
}

EKV_DEF void ekv_json_object_begin(ekv_json *json)
{
    ekv__json_begin(json, '{', EKV__JSON_OBJECT);
}

EKV_DEF void ekv_json_object_end(ekv_json *json)
{
    ekv__json_end(json, '}', EKV__JSON_OBJECT);
}

EKV_DEF void ekv_json_array_begin(ekv_json *json)
{
    ekv__json_begin(json, '[', 0);
}

EKV_DEF void ekv_json_array_end(ekv_json *json)
{
    ekv__json_end(json, ']', 0);
}

EKV_DEF void ekv_json_key(ekv_json *json, const char *key)
{
    unsigned char *flags;
    if (json->failed) return;
    if (!key || json->depth == 0 || json->after_key ||
        !(json->first[json->depth - 1] & EKV__JSON_OBJECT)) {
        ekv__json_fail(json);
        return;
    }
    flags = &json->first[json->depth - 1];
    if (!(*flags & EKV__JSON_EMPTY)) ekv__json_append(json, ",", 1);
    *flags &= (unsigned char)~EKV__JSON_EMPTY;
    ekv__json_newline(json);
    ekv__json_write_string(json, key);
    if (json->pretty) ekv__json_append(json, ": ", 2);
    else ekv__json_append(json, ":", 1);
    json->after_key = !json->failed;
}

static void ekv__json_raw_value(ekv_json *json, const char *text)
{
    if (ekv__json_before_value(json)) ekv__json_append(json, text, strlen(text));
}

EKV_DEF void ekv_json_string(ekv_json *json, const char *value)
{
    if (!value) {
        ekv_json_null(json);
        return;
    }
    if (ekv__json_before_value(json)) ekv__json_write_string(json, value);
}

/* The shortest of %.15g, %.16g, %.17g that strtod reads back to the same double (17
   always does). printf and strtod follow LC_NUMERIC together, so the round-trip test
   holds in any locale; a locale's decimal point (possibly several bytes) is then
   replaced by '.'. -0.0 is written "-0.0" because parsers read "-0" as the integer 0. */
static void ekv__json_format_double(double value, char *text, size_t size)
{
    uint64_t bits;
    char formatted[40];
    size_t in, out = 0;
    int precision, in_point = 0;
    memcpy(&bits, &value, sizeof bits);
    if (value == 0.0) {
        snprintf(text, size, "%s", (bits >> 63) ? "-0.0" : "0");
        return;
    }
    for (precision = 15; precision <= 17; precision++) {
        snprintf(formatted, sizeof formatted, "%.*g", precision, value);
        if (strtod(formatted, NULL) == value) break;
    }
    for (in = 0; formatted[in] && out + 1 < size; in++) {
        char c = formatted[in];
        int plain = (c >= '0' && c <= '9') || c == '-' || c == '+' || c == 'e' || c == 'E';
        if (plain) text[out++] = c;
        else if (!in_point) text[out++] = '.';
        in_point = !plain;
    }
    text[out] = '\0';
}

EKV_DEF void ekv_json_number(ekv_json *json, double value)
{
    char text[40];
    if (!ekv__is_finite(value)) {
        ekv_json_null(json);
        return;
    }
    ekv__json_format_double(value, text, sizeof text);
    ekv__json_raw_value(json, text);
}

EKV_DEF void ekv_json_int(ekv_json *json, long long value)
{
    char text[32];
    snprintf(text, sizeof text, "%lld", value);
    ekv__json_raw_value(json, text);
}

EKV_DEF void ekv_json_bool(ekv_json *json, int value)
{
    ekv__json_raw_value(json, value ? "true" : "false");
}

EKV_DEF void ekv_json_null(ekv_json *json)
{
    ekv__json_raw_value(json, "null");
}

/* >>metrics (implementation) =============================================== */

EKV_DEF void ekv_metrics_compute(ekv_metrics *m, const ekv_cache_bytes *cache_bytes, int batch,
                                 int heads, int head_dim, double kept_tokens_total,
                                 double partial_bytes, double median_ms,
                                 double peak_bw_theoretical_gbs, double peak_bw_measured_gbs,
                                 double peak_gflops)
{
    double seconds = median_ms * 1e-3;
    double bound_bw, bound;
    memset(m, 0, sizeof *m);
    m->bytes.k = cache_bytes->k;
    m->bytes.v = cache_bytes->v;
    m->bytes.scales = cache_bytes->scales;
    m->bytes.bias = cache_bytes->bias;
    m->bytes.q = 4.0 * batch * heads * head_dim;
    m->bytes.out = 4.0 * batch * heads * head_dim;
    m->bytes.partials = partial_bytes;
    m->bytes.total = m->bytes.k + m->bytes.v + m->bytes.scales + m->bytes.bias + m->bytes.q +
                     m->bytes.out + m->bytes.partials;
    /* kept_tokens_total sums over sequences; every query head reads every kept token */
    m->flops = 4.0 * (double)heads * kept_tokens_total * head_dim;
    m->softmax_flops = 5.0 * (double)heads * kept_tokens_total;
    m->arithmetic_intensity = m->bytes.total > 0 ? m->flops / m->bytes.total : ekv__nan();
    m->achieved_gbs = seconds > 0 ? m->bytes.total / seconds * 1e-9 : ekv__nan();
    m->achieved_gflops = seconds > 0 ? m->flops / seconds * 1e-9 : ekv__nan();
    m->peak_bw_theoretical_gbs = peak_bw_theoretical_gbs;
    m->peak_bw_measured_gbs = peak_bw_measured_gbs;
    m->peak_gflops = peak_gflops;
    m->efficiency_vs_theoretical = m->achieved_gbs / peak_bw_theoretical_gbs; /* NaN if unknown */
    m->efficiency_vs_measured = m->achieved_gbs / peak_bw_measured_gbs;
    /* the roofline uses the theoretical peak when known, else the measured copy rate */
    bound_bw = peak_bw_theoretical_gbs == peak_bw_theoretical_gbs ? peak_bw_theoretical_gbs
                                                                  : peak_bw_measured_gbs;
    bound = m->arithmetic_intensity * bound_bw;
    if (peak_gflops == peak_gflops && peak_gflops < bound) bound = peak_gflops;
    m->roofline_score = m->achieved_gflops / bound;
}

/* >>report (implementation) ================================================ */

static void ekv__timestamp(char *out, size_t size)
{
    time_t now = time(NULL);
    struct tm *utc = gmtime(&now);
    if (!utc || strftime(out, size, "%Y-%m-%dT%H:%M:%SZ", utc) == 0) snprintf(out, size, "unknown");
}

EKV_DEF void ekv_report_init(ekv_report *report, const ekv_config *config)
{
    memset(report, 0, sizeof *report);
    report->config = ekv_config_resolve(config);
    report->device.peak_bw_theoretical_gbs = ekv__nan();
    report->device.peak_bw_measured_gbs = ekv__nan();
    report->device.peak_gflops = ekv__nan();
    report->peak_device_bytes = ekv__nan();
    report->speedup = report->speedup_ci_lo = report->speedup_ci_hi = ekv__nan();
    report->cache_copies = 1;
    report->splits = 1;
    ekv__timestamp(report->timestamp, sizeof report->timestamp);
}

EKV_DEF void ekv_report_free(ekv_report *report)
{
    int i;
    ekv__free(report->samples_ms);
    ekv__free(report->baseline_samples_ms);
    for (i = 0; i < report->cycle_count; i++) {
        ekv__free(report->cycles[i].samples_ms);
        ekv__free(report->cycles[i].series);
    }
    ekv__free(report->cycles);
    ekv__free(report->serve);
    memset(report, 0, sizeof *report);
}

EKV_DEF ekv_result ekv_report_finish(ekv_report *r)
{
    const ekv_config *c = &r->config;
    ekv_result res;
    double peak_theoretical = c->peak_bw_gbs > 0 ? c->peak_bw_gbs : r->device.peak_bw_theoretical_gbs;
    res = ekv_stats_compute(r->samples_ms, r->sample_count, c->truncate_percent, c->seed,
                            &r->stats);
    if (res != EKV_SUCCESS) return res;
    r->device.peak_bw_theoretical_gbs = peak_theoretical;
    r->kv_cache_bytes = r->cache_bytes.total;
    ekv_metrics_compute(&r->metrics, &r->cache_bytes, c->batch, c->heads, c->head_dim,
                        r->kept_tokens_total, r->partial_bytes, r->stats.median,
                        peak_theoretical, r->device.peak_bw_measured_gbs,
                        r->device.peak_gflops);
    if (r->has_baseline) {
        res = ekv_stats_compute(r->baseline_samples_ms, r->baseline_sample_count,
                                c->truncate_percent, c->seed, &r->baseline_stats);
        if (res != EKV_SUCCESS) return res;
        if (r->baseline_sample_count != r->sample_count)
            return ekv_set_error(EKV_ERR_INVALID_ARG,
                                 "paired baseline has %zu samples, candidate %zu",
                                 r->baseline_sample_count, r->sample_count);
        res = ekv_bootstrap_ratio(r->baseline_samples_ms, r->samples_ms, r->sample_count,
                                  EKV_BOOTSTRAP_RESAMPLES, c->seed ^ 0x9e3779b97f4a7c15ULL,
                                  &r->speedup, &r->speedup_ci_lo, &r->speedup_ci_hi);
        if (res != EKV_SUCCESS) return res;
    }
    return EKV_SUCCESS;
}

static void ekv__json_stats(ekv_json *j, const ekv_stats *s)
{
    ekv_json_object_begin(j);
    ekv_json_key(j, "n"); ekv_json_int(j, (long long)s->n);
    ekv_json_key(j, "mean"); ekv_json_number(j, s->mean);
    ekv_json_key(j, "std"); ekv_json_number(j, s->std);
    ekv_json_key(j, "cv"); ekv_json_number(j, s->cv);
    ekv_json_key(j, "median"); ekv_json_number(j, s->median);
    ekv_json_key(j, "min"); ekv_json_number(j, s->min);
    ekv_json_key(j, "max"); ekv_json_number(j, s->max);
    ekv_json_key(j, "q1"); ekv_json_number(j, s->q1);
    ekv_json_key(j, "q3"); ekv_json_number(j, s->q3);
    ekv_json_key(j, "iqr"); ekv_json_number(j, s->iqr);
    ekv_json_key(j, "p5"); ekv_json_number(j, s->p5);
    ekv_json_key(j, "p95"); ekv_json_number(j, s->p95);
    ekv_json_key(j, "p99"); ekv_json_number(j, s->p99);
    ekv_json_key(j, "trimmed_mean"); ekv_json_number(j, s->trimmed_mean);
    ekv_json_key(j, "ci95_mean");
    ekv_json_object_begin(j);
    ekv_json_key(j, "lo"); ekv_json_number(j, s->ci95_mean_lo);
    ekv_json_key(j, "hi"); ekv_json_number(j, s->ci95_mean_hi);
    ekv_json_object_end(j);
    ekv_json_key(j, "ci95_median");
    ekv_json_object_begin(j);
    ekv_json_key(j, "lo"); ekv_json_number(j, s->ci95_median_lo);
    ekv_json_key(j, "hi"); ekv_json_number(j, s->ci95_median_hi);
    ekv_json_object_end(j);
    ekv_json_key(j, "outliers");
    ekv_json_object_begin(j);
    ekv_json_key(j, "mild"); ekv_json_int(j, s->outliers_mild);
    ekv_json_key(j, "severe"); ekv_json_int(j, s->outliers_severe);
    ekv_json_object_end(j);
    ekv_json_object_end(j);
}

static void ekv__json_error(ekv_json *j, const char *key, const ekv_error_stats *e)
{
    ekv_json_key(j, key);
    ekv_json_object_begin(j);
    ekv_json_key(j, "rel_l2"); ekv_json_number(j, e->rel_l2);
    ekv_json_key(j, "max_abs"); ekv_json_number(j, e->max_abs);
    ekv_json_key(j, "cosine"); ekv_json_number(j, e->cosine);
    ekv_json_object_end(j);
}

/* What the paired baseline stored: the attention's is C = 1 in baseline_dtype, the
   cycle's the cache variant. */
static ekv_dtype ekv__report_baseline_dtype(const ekv_report *r)
{
    return r->cycle_count > 0 ? ekv_cycle_dtype(&r->config, EKV_VARIANT_CACHE)
                              : r->config.baseline_dtype;
}

/* build.compiler, optimized, flags, git_commit: see ekv_build_info */
static void ekv__json_build_identity(ekv_json *j)
{
    const ekv_build_info b = ekv_build_info_get();
    ekv_json_key(j, "compiler"); ekv_json_string(j, b.compiler);
    ekv_json_key(j, "optimized");
    if (b.optimized < 0) ekv_json_null(j);
    else ekv_json_bool(j, b.optimized);
    ekv_json_key(j, "flags"); ekv_json_string(j, b.flags);
    ekv_json_key(j, "git_commit"); ekv_json_string(j, b.git_commit);
}

/* A device fact that is positive when known: 0 means the backend could not say (the
   CPU has no memory clock, bus width or driver), which JSON says with null. */
static void ekv__json_known(ekv_json *j, const char *key, long long value)
{
    ekv_json_key(j, key);
    if (value > 0) ekv_json_int(j, value);
    else ekv_json_null(j);
}

/* Why some accuracy figures are null, or NULL when none is: a null never stands alone. */
static const char *ekv__accuracy_null_reason(const ekv_report *r)
{
    const ekv_accuracy *a = &r->accuracy;
    const ekv_error_stats *e[3];
    int i;
    if (r->cycle_count > 0)
        return "not measured: the inference cycle has no reference over the original data; "
               "inference_cycle.error_vs_cache compares each variant with cache";
    e[0] = &a->total;
    e[1] = &a->compression;
    e[2] = &a->kernel;
    for (i = 0; i < 3; i++)
        if (!(fabs(e[i]->rel_l2) <= DBL_MAX && fabs(e[i]->max_abs) <= DBL_MAX &&
              fabs(e[i]->cosine) <= DBL_MAX))
            return "not finite: a NaN or an infinity in the output or in a reference";
    if (!(fabs(a->attention_entropy) <= DBL_MAX && fabs(a->top5pct_mass) <= DBL_MAX))
        return "not finite: the attention profile of the data is undefined";
    return NULL;
}

static void ekv__json_samples(ekv_json *j, const double *samples, size_t n)
{
    size_t i;
    ekv_json_array_begin(j);
    for (i = 0; i < n; i++) ekv_json_number(j, samples[i]);
    ekv_json_array_end(j);
}

EKV_DEF void ekv_report_write_json(const ekv_report *r, ekv_json *j)
{
    const ekv_config *c = &r->config;
    const ekv_metrics *m = &r->metrics;
    double median = r->stats.median;
    double tokens_per_sec = c->batch * 1000.0 / median;
    int kv_heads = c->kv_heads;
    char sm[16];
    ekv_json_object_begin(j);
    ekv_json_key(j, "schema_version"); ekv_json_int(j, EKV_SCHEMA_VERSION);
    ekv_json_key(j, "ekv_version"); ekv_json_string(j, EKV_VERSION_STRING);
    ekv_json_key(j, "benchmark_type"); ekv_json_string(j, "ekv_decode_attention");
    ekv_json_key(j, "timestamp"); ekv_json_string(j, r->timestamp);
    ekv_json_key(j, "backend"); ekv_json_string(j, ekv_backend_name(r->backend));
    ekv_json_key(j, "label"); ekv_json_string(j, c->label);
    ekv_json_key(j, "variant");
    if (r->cycle_count > 0) ekv_json_string(j, ekv_variant_name(c->variant));
    else ekv_json_null(j);
    ekv_json_key(j, "notice"); ekv_json_string(j, r->notice[0] ? r->notice : NULL);

    ekv_json_key(j, "build");
    ekv_json_object_begin(j);
    ekv_json_key(j, "cuda_graphs"); ekv_json_bool(j, r->backend != EKV_BACKEND_CPU && c->use_graphs);
    ekv_json_key(j, "inner_loops"); ekv_json_int(j, c->inner_loops);
    ekv_json_key(j, "truncate_percent"); ekv_json_number(j, c->truncate_percent);
    ekv_json_key(j, "cache_state"); ekv_json_string(j, c->hot ? "hot" : "cold");
    ekv_json_key(j, "cache_copies"); ekv_json_int(j, r->cache_copies);
    ekv_json_key(j, "splits"); ekv_json_int(j, r->splits);
    ekv_json_key(j, "kernel"); ekv_json_string(j, r->kernel[0] ? r->kernel : NULL);
    ekv_json_key(j, "threads");
    if (r->threads > 0) ekv_json_int(j, r->threads);
    else ekv_json_null(j);
    ekv_json_key(j, "cpu_simd"); ekv_json_string(j, r->cpu_path[0] ? r->cpu_path : NULL);
    ekv__json_build_identity(j);
    ekv_json_object_end(j);

    ekv_json_key(j, "gpu");
    ekv_json_object_begin(j);
    ekv_json_key(j, "name"); ekv_json_string(j, r->device.name);
    ekv_json_key(j, "sm");
    if (r->device.sm_major > 0) {
        snprintf(sm, sizeof sm, "%d.%d", r->device.sm_major, r->device.sm_minor);
        ekv_json_string(j, sm);
    } else {
        ekv_json_null(j);
    }
    ekv__json_known(j, "sm_count", r->device.sm_count);
    ekv__json_known(j, "l2_bytes", r->device.l2_bytes);
    ekv__json_known(j, "memory_bytes", r->device.memory_bytes);
    ekv__json_known(j, "memory_clock_khz", r->device.memory_clock_khz);
    ekv__json_known(j, "bus_width_bits", r->device.bus_width_bits);
    ekv__json_known(j, "driver_version", r->device.driver_version);
    ekv__json_known(j, "runtime_version", r->device.runtime_version);
    ekv_json_key(j, "theoretical_bw_gbs"); ekv_json_number(j, m->peak_bw_theoretical_gbs);
    ekv_json_key(j, "peak_gflops"); ekv_json_number(j, r->device.peak_gflops);
    ekv_json_object_end(j);

    ekv_json_key(j, "configuration");
    ekv_json_object_begin(j);
    ekv_json_key(j, "seq_len"); ekv_json_int(j, c->seq_len);
    ekv_json_key(j, "batch"); ekv_json_int(j, c->batch);
    ekv_json_key(j, "heads"); ekv_json_int(j, c->heads);
    ekv_json_key(j, "kv_heads"); ekv_json_int(j, kv_heads);
    ekv_json_key(j, "head_dim"); ekv_json_int(j, c->head_dim);
    ekv_json_key(j, "compression"); ekv_json_int(j, c->compression);
    ekv_json_key(j, "kv_dtype"); ekv_json_string(j, ekv_dtype_name(c->kv_dtype));
    ekv_json_key(j, "policy"); ekv_json_string(j, ekv_policy_name(c->policy));
    ekv_json_key(j, "recent"); ekv_json_int(j, c->recent);
    ekv_json_key(j, "sinks"); ekv_json_int(j, c->sinks);
    ekv_json_key(j, "observe"); ekv_json_int(j, c->observe);
    ekv_json_key(j, "data");
    ekv_json_string(j, c->data == EKV_DATA_FILE ? c->data_path
                                                : (c->data == EKV_DATA_RANDOM ? "random" : "structured"));
    ekv_json_key(j, "seed"); ekv_json_number(j, (double)c->seed);
    ekv_json_key(j, "softmax_scale");
    ekv_json_number(j, c->softmax_scale);
    ekv_json_key(j, "reps"); ekv_json_int(j, c->reps);
    ekv_json_key(j, "warmup"); ekv_json_int(j, c->warmup);
    ekv_json_key(j, "inner_loops"); ekv_json_int(j, c->inner_loops);
    ekv_json_key(j, "truncate_percent"); ekv_json_number(j, c->truncate_percent);
    ekv_json_key(j, "cuda_graphs"); ekv_json_bool(j, c->use_graphs);
    ekv_json_key(j, "hot"); ekv_json_bool(j, c->hot);
    ekv_json_key(j, "paired_baseline"); ekv_json_bool(j, c->paired_baseline);
    ekv_json_key(j, "baseline_dtype");
    ekv_json_string(j, c->paired_baseline ? ekv_dtype_name(ekv__report_baseline_dtype(r)) : NULL);
    ekv_json_key(j, "inference"); ekv_json_bool(j, c->inference);
    ekv_json_key(j, "layers"); ekv_json_int(j, c->layers);
    ekv_json_key(j, "decode_tokens"); ekv_json_int(j, c->decode_tokens);
    ekv_json_key(j, "variant"); ekv_json_string(j, ekv_variant_name(c->variant));
    ekv_json_key(j, "compress_every"); ekv_json_int(j, c->compress_every);
    ekv_json_key(j, "page_size"); ekv_json_int(j, c->page_size);
    ekv_json_key(j, "memory_budget_gb");
    if (c->memory_budget_gb > 0.0) ekv_json_number(j, c->memory_budget_gb);
    else ekv_json_null(j);
    ekv_json_key(j, "backend_requested"); ekv_json_string(j, ekv_backend_name(c->backend));
    ekv_json_key(j, "device"); ekv_json_int(j, c->device);
    ekv_json_key(j, "peak_bw_override_gbs");
    if (c->peak_bw_gbs > 0) ekv_json_number(j, c->peak_bw_gbs);
    else ekv_json_null(j);
    ekv_json_object_end(j);

    ekv_json_key(j, "results");
    ekv_json_object_begin(j);
    ekv_json_key(j, "attention_time_ms"); ekv_json_number(j, median);
    ekv_json_key(j, "attention_time_std"); ekv_json_number(j, r->stats.std);
    ekv_json_key(j, "coefficient_of_variation"); ekv_json_number(j, r->stats.cv);
    ekv_json_key(j, "tokens_per_sec"); ekv_json_number(j, tokens_per_sec);
    ekv_json_key(j, "baseline_tokens_per_sec");
    if (r->has_baseline) ekv_json_number(j, c->batch * 1000.0 / r->baseline_stats.median);
    else ekv_json_null(j);
    ekv_json_key(j, "speedup_vs_baseline");
    if (r->has_baseline) ekv_json_number(j, r->speedup);
    else ekv_json_null(j);
    ekv_json_key(j, "memory_bandwidth_gbs"); ekv_json_number(j, m->achieved_gbs);
    ekv_json_key(j, "memory_efficiency_percent"); ekv_json_number(j, 100.0 * m->efficiency_vs_theoretical);
    ekv_json_key(j, "roofline_score"); ekv_json_number(j, m->roofline_score);
    ekv_json_object_end(j);

    ekv_json_key(j, "statistics");
    ekv__json_stats(j, &r->stats);

    ekv_json_key(j, "metrics");
    ekv_json_object_begin(j);
    ekv_json_key(j, "bytes_total"); ekv_json_number(j, m->bytes.total);
    ekv_json_key(j, "bytes");
    ekv_json_object_begin(j);
    ekv_json_key(j, "k"); ekv_json_number(j, m->bytes.k);
    ekv_json_key(j, "v"); ekv_json_number(j, m->bytes.v);
    ekv_json_key(j, "scales"); ekv_json_number(j, m->bytes.scales);
    ekv_json_key(j, "bias"); ekv_json_number(j, m->bytes.bias);
    ekv_json_key(j, "q"); ekv_json_number(j, m->bytes.q);
    ekv_json_key(j, "out"); ekv_json_number(j, m->bytes.out);
    ekv_json_key(j, "partials"); ekv_json_number(j, m->bytes.partials);
    ekv_json_object_end(j);
    ekv_json_key(j, "kept_tokens"); ekv_json_number(j, r->kept_tokens_total);
    ekv_json_key(j, "flops"); ekv_json_number(j, m->flops);
    ekv_json_key(j, "softmax_flops"); ekv_json_number(j, m->softmax_flops);
    ekv_json_key(j, "arithmetic_intensity"); ekv_json_number(j, m->arithmetic_intensity);
    ekv_json_key(j, "achieved_gflops"); ekv_json_number(j, m->achieved_gflops);
    ekv_json_key(j, "peak_bw_theoretical_gbs"); ekv_json_number(j, m->peak_bw_theoretical_gbs);
    ekv_json_key(j, "peak_bw_measured_gbs"); ekv_json_number(j, m->peak_bw_measured_gbs);
    ekv_json_key(j, "peak_gflops"); ekv_json_number(j, m->peak_gflops);
    ekv_json_key(j, "efficiency_vs_theoretical"); ekv_json_number(j, m->efficiency_vs_theoretical);
    ekv_json_key(j, "efficiency_vs_measured"); ekv_json_number(j, m->efficiency_vs_measured);
    ekv_json_key(j, "roofline_score"); ekv_json_number(j, m->roofline_score);
    ekv_json_object_end(j);

    ekv_json_key(j, "accuracy");
    ekv_json_object_begin(j);
    ekv__json_error(j, "error_total", &r->accuracy.total);
    ekv__json_error(j, "error_compression", &r->accuracy.compression);
    ekv__json_error(j, "error_kernel", &r->accuracy.kernel);
    ekv_json_key(j, "heads_checked"); ekv_json_int(j, r->accuracy.heads_checked);
    ekv_json_key(j, "heads_total"); ekv_json_int(j, r->accuracy.heads_total);
    ekv_json_key(j, "data");
    ekv_json_object_begin(j);
    ekv_json_key(j, "attention_entropy"); ekv_json_number(j, r->accuracy.attention_entropy);
    ekv_json_key(j, "top5pct_mass"); ekv_json_number(j, r->accuracy.top5pct_mass);
    ekv_json_object_end(j);
    ekv_json_key(j, "null_reason"); ekv_json_string(j, ekv__accuracy_null_reason(r));
    ekv_json_object_end(j);

    ekv_json_key(j, "memory");
    ekv_json_object_begin(j);
    ekv_json_key(j, "kv_cache_bytes"); ekv_json_number(j, r->kv_cache_bytes);
    ekv_json_key(j, "kv_cache_bytes_uncompressed"); ekv_json_number(j, r->kv_cache_bytes_uncompressed);
    ekv_json_key(j, "peak_device_bytes"); ekv_json_number(j, r->peak_device_bytes);
    ekv_json_object_end(j);

    ekv_json_key(j, "baseline");
    if (r->has_baseline) {
        ekv_json_object_begin(j);
        ekv_json_key(j, "kv_dtype"); ekv_json_string(j, ekv_dtype_name(ekv__report_baseline_dtype(r)));
        ekv_json_key(j, "compression"); ekv_json_int(j, 1);
        ekv_json_key(j, "attention_time_ms"); ekv_json_number(j, r->baseline_stats.median);
        ekv_json_key(j, "speedup"); ekv_json_number(j, r->speedup);
        ekv_json_key(j, "speedup_ci95");
        ekv_json_object_begin(j);
        ekv_json_key(j, "lo"); ekv_json_number(j, r->speedup_ci_lo);
        ekv_json_key(j, "hi"); ekv_json_number(j, r->speedup_ci_hi);
        ekv_json_object_end(j);
        ekv_json_key(j, "statistics");
        ekv__json_stats(j, &r->baseline_stats);
        ekv_json_key(j, "samples_ms");
        ekv__json_samples(j, r->baseline_samples_ms, r->baseline_sample_count);
        ekv_json_object_end(j);
    } else {
        ekv_json_null(j);
    }

    ekv_json_key(j, "inference_cycle");
    ekv_cycle_write_json(r, j);

    ekv_json_key(j, "samples_ms");
    ekv__json_samples(j, r->samples_ms, r->sample_count);
    ekv_json_object_end(j);
    (void)kv_heads;
}

static void ekv__print_bytes(FILE *out, double bytes)
{
    char text[32];
    fputs(ekv_format_bytes(bytes, text, sizeof text), out);
}

/* A speedup for people: two decimals below 10, fewer above. */
static const char *ekv__ratio_text(char *out, size_t size, double ratio)
{
    snprintf(out, size, "%.*f", ratio < 10.0 ? 2 : (ratio < 100.0 ? 1 : 0), ratio);
    return out;
}

/* "a is 1.17x faster than b [1.11, 1.85]" from speedup = median(b) / median(a) and its
   CI, turned around when a is the slower one, so that the number read is always the
   factor by which the faster side wins. */
static void ekv__faster_phrase(char *text, size_t size, const char *a, const char *b,
                               double speedup, double lo, double hi)
{
    char x[16], l[16], h[16];
    if (speedup < 1.0) {
        const char *swap = a;
        const double inverse_lo = 1.0 / hi;
        a = b;
        b = swap;
        speedup = 1.0 / speedup;
        hi = 1.0 / lo;
        lo = inverse_lo;
    }
    snprintf(text, size, "%s is %sx faster than %s [%s, %s]", a, ekv__ratio_text(x, sizeof x, speedup), b,
             ekv__ratio_text(l, sizeof l, lo), ekv__ratio_text(h, sizeof h, hi));
}

EKV_DEF void ekv_report_print_table(const ekv_report *r, FILE *out)
{
    const ekv_config *c = &r->config;
    const ekv_metrics *m = &r->metrics;
    const ekv_stats *s = &r->stats;
    int kv_heads = c->kv_heads;
    /* the cycle's figures are its own block: the attention lines would be per-step
       averages of a loop that is mostly projection, and its accuracy is per variant */
    if (r->cycle_count > 0) {
        fprintf(out, "ekv %s  backend %s  device %s\n", EKV_VERSION_STRING,
                ekv_backend_name(r->backend), r->device.name);
        ekv_cycle_print_table(r, out);
        if (r->notice[0]) fprintf(out, "notice     %s\n", r->notice);
        return;
    }
    fprintf(out, "ekv %s  backend %s  device %s%s\n", EKV_VERSION_STRING,
            ekv_backend_name(r->backend), r->device.name, c->hot ? "  (hot: L2/cache resident)" : "  (cold)");
    if (r->threads > 0)
        fprintf(out, "cpu        %d thread%s, %s code path\n", r->threads, r->threads == 1 ? "" : "s",
                r->cpu_path[0] ? r->cpu_path : "?");
    fprintf(out, "workload   batch %d  seq %d  heads %d/%d  dim %d  %s  policy %s  C=%d  recent %d  sinks %d\n",
            c->batch, c->seq_len, c->heads, kv_heads, c->head_dim, ekv_dtype_name(c->kv_dtype),
            ekv_policy_name(c->policy), c->compression, c->recent, c->sinks);
    fprintf(out, "time       median %.6g ms  mean %.6g ms  std %.3g  cv %.2f%%%s  95%% CI median [%.6g, %.6g]  n %zu\n",
            s->median, s->mean, s->std, 100.0 * s->cv, s->cv > EKV_NOISY_CV ? " (noisy)" : "",
            s->ci95_median_lo, s->ci95_median_hi, s->n);
    fprintf(out, "           p5 %.6g  p95 %.6g  p99 %.6g  outliers %d mild, %d severe\n", s->p5,
            s->p95, s->p99, s->outliers_mild, s->outliers_severe);
    fprintf(out, "throughput %.1f tokens/s (batch x 1000 / median ms)\n", c->batch * 1000.0 / s->median);
    fprintf(out, "bytes      ");
    ekv__print_bytes(out, m->bytes.total);
    fprintf(out, " per launch (K ");
    ekv__print_bytes(out, m->bytes.k);
    fprintf(out, ", V ");
    ekv__print_bytes(out, m->bytes.v);
    fprintf(out, ", scales+bias ");
    ekv__print_bytes(out, m->bytes.scales + m->bytes.bias);
    fprintf(out, ")  kept tokens %.0f\n", r->kept_tokens_total);
    fprintf(out, "bandwidth  %.2f GB/s  (", m->achieved_gbs);
    if (m->peak_bw_theoretical_gbs == m->peak_bw_theoretical_gbs)
        fprintf(out, "%.1f%% of theoretical %.1f GB/s, ", 100.0 * m->efficiency_vs_theoretical,
                m->peak_bw_theoretical_gbs);
    else
        fprintf(out, "theoretical peak unknown (--peak-bw), ");
    if (m->peak_bw_measured_gbs == m->peak_bw_measured_gbs)
        fprintf(out, "%.1f%% of measured copy %.1f GB/s)\n", 100.0 * m->efficiency_vs_measured,
                m->peak_bw_measured_gbs);
    else
        fprintf(out, "copy bandwidth not measured)\n");
    fprintf(out, "roofline   AI %.3f flop/B  %.2f GFLOP/s  score %.3f\n", m->arithmetic_intensity,
            m->achieved_gflops, m->roofline_score);
    fprintf(out, "accuracy   total rel_l2 %.3e (max_abs %.3e, cos %.6f)  compression %.3e  kernel %.3e\n",
            r->accuracy.total.rel_l2, r->accuracy.total.max_abs, r->accuracy.total.cosine,
            r->accuracy.compression.rel_l2, r->accuracy.kernel.rel_l2);
    fprintf(out, "data       attention entropy %.3f nats  top-5%% mass %.3f\n",
            r->accuracy.attention_entropy, r->accuracy.top5pct_mass);
    fprintf(out, "memory     KV cache ");
    ekv__print_bytes(out, r->kv_cache_bytes);
    fprintf(out, " (uncompressed ");
    ekv__print_bytes(out, r->kv_cache_bytes_uncompressed);
    fprintf(out, ")\n");
    if (r->has_baseline)
        fprintf(out, "baseline   %s C=1 median %.6g ms  speedup %.3fx  95%% CI [%.3f, %.3f]  at error %.3e\n",
                ekv_dtype_name(c->baseline_dtype), r->baseline_stats.median, r->speedup,
                r->speedup_ci_lo, r->speedup_ci_hi, r->accuracy.total.rel_l2);
    if (s->cv > EKV_NOISY_CV)
        fprintf(out, "noisy      cv above %.0f%%: something else used the machine during the run; "
                     "rerun on a quiet one before trusting small differences\n",
                100.0 * EKV_NOISY_CV);
    if (r->notice[0]) fprintf(out, "notice     %s\n", r->notice);
}

/* ---- the summary: one row per result (--format=table, markdown, csv) ---- */

/* The largest error against cache over the layers of a cycle variant's last step. */
static double ekv__cycle_worst_error(const ekv_cycle_result *y)
{
    double worst = 0.0;
    int l;
    for (l = 0; l < y->layers; l++)
        if (!(y->error_vs_cache[l].rel_l2 <= worst)) worst = y->error_vs_cache[l].rel_l2;
    return worst;
}

EKV_DEF void ekv_summary_init(ekv_summary *s)
{
    memset(s, 0, sizeof *s);
}

EKV_DEF void ekv_summary_free(ekv_summary *s)
{
    ekv__free(s->rows);
    memset(s, 0, sizeof *s);
}

static ekv_summary_row *ekv__summary_new_row(ekv_summary *s)
{
    ekv_summary_row *row;
    if (s->count == s->capacity) {
        const size_t capacity = s->capacity ? 2 * s->capacity : 16;
        ekv_summary_row *rows;
        if (capacity > (size_t)-1 / sizeof *rows) return NULL;
        rows = (ekv_summary_row *)EKV_REALLOC(s->rows, capacity * sizeof *rows);
        if (!rows) return NULL;
        s->rows = rows;
        s->capacity = capacity;
    }
    row = &s->rows[s->count++];
    memset(row, 0, sizeof *row);
    return row;
}

/* What every row of a report shares: where it ran and its workload. */
static void ekv__summary_common(ekv_summary_row *row, const ekv_report *r)
{
    const ekv_config *c = &r->config;
    snprintf(row->label, sizeof row->label, "%s", c->label);
    snprintf(row->device, sizeof row->device, "%.*s", (int)sizeof row->device - 1, r->device.name);
    row->backend = r->backend;
    row->hot = c->hot;
    row->batch = c->batch;
    row->seq_len = c->seq_len;
    row->heads = c->heads;
    row->kv_heads = c->kv_heads;
    row->head_dim = c->head_dim;
    row->compression = c->compression;
    row->recent = c->recent;
    row->sinks = c->sinks;
    row->observe = c->observe;
    row->kv_dtype = c->kv_dtype;
    row->policy = c->policy;
    snprintf(row->data, sizeof row->data, "%.*s", (int)sizeof row->data - 1,
             c->data == EKV_DATA_FILE ? c->data_path : (c->data == EKV_DATA_RANDOM ? "random" : "structured"));
    row->seed = c->seed;
    row->bandwidth_gbs = row->pct_of_theoretical_peak = row->pct_of_measured_copy = ekv__nan();
    row->speedup = row->speedup_ci95_lo = row->speedup_ci95_hi = ekv__nan();
    row->rel_l2 = row->rel_l2_vs_cache = ekv__nan();
    snprintf(row->notice, sizeof row->notice, "%s", r->notice);
}

EKV_DEF ekv_result ekv_summary_add(ekv_summary *s, const ekv_report *r)
{
    const ekv_config *c;
    int i;
    if (!s || !r) return ekv_set_error(EKV_ERR_INVALID_ARG, "ekv_summary_add: NULL argument");
    c = &r->config;
    for (i = 0; i < (r->cycle_count > 0 ? r->cycle_count : 1); i++) {
        ekv_summary_row *row = ekv__summary_new_row(s);
        if (!row) return ekv_set_error(EKV_ERR_OUT_OF_MEMORY, "out of memory for the summary's rows");
        ekv__summary_common(row, r);
        if (r->cycle_count > 0) {
            const ekv_cycle_result *y = &r->cycles[i];
            row->cycle = 1;
            row->variant = y->variant;
            row->kv_dtype = y->kv_dtype; /* what this variant stored */
            row->layers = y->layers;
            row->decode_tokens = y->decode_tokens;
            row->compress_every = c->compress_every;
            row->n = y->stats.n;
            row->median_ms = y->total_ms;
            row->ci95_lo_ms = y->stats.ci95_median_lo;
            row->ci95_hi_ms = y->stats.ci95_median_hi;
            row->cv = y->stats.cv;
            row->tokens_per_sec = y->tokens_per_sec;
            row->paired = y->has_baseline;
            if (y->has_baseline) {
                snprintf(row->baseline, sizeof row->baseline, "%s", ekv_variant_name(EKV_VARIANT_CACHE));
                row->speedup = y->speedup;
                row->speedup_ci95_lo = y->speedup_ci_lo;
                row->speedup_ci95_hi = y->speedup_ci_hi;
            }
            if (y->has_agreement) row->rel_l2_vs_cache = ekv__cycle_worst_error(y);
            row->kv_cache_bytes = y->kv_cache_bytes;
        } else {
            const ekv_metrics *m = &r->metrics;
            row->n = r->stats.n;
            row->median_ms = r->stats.median;
            row->ci95_lo_ms = r->stats.ci95_median_lo;
            row->ci95_hi_ms = r->stats.ci95_median_hi;
            row->cv = r->stats.cv;
            row->tokens_per_sec = c->batch * 1000.0 / r->stats.median;
            row->bandwidth_gbs = m->achieved_gbs;
            row->pct_of_theoretical_peak = 100.0 * m->efficiency_vs_theoretical;
            row->pct_of_measured_copy = 100.0 * m->efficiency_vs_measured;
            row->paired = r->has_baseline;
            if (r->has_baseline) {
                snprintf(row->baseline, sizeof row->baseline, "%s C=1", ekv_dtype_name(c->baseline_dtype));
                row->speedup = r->speedup;
                row->speedup_ci95_lo = r->speedup_ci_lo;
                row->speedup_ci95_hi = r->speedup_ci_hi;
            }
            row->rel_l2 = r->accuracy.total.rel_l2;
            row->kv_cache_bytes = r->kv_cache_bytes;
        }
    }
    return EKV_SUCCESS;
}

/* The columns: CSV name; title in table and markdown (NULL: CSV only); WORKLOAD ones are
   columns of a table only where rows differ and stated once above it otherwise, FIGURE
   ones are columns wherever a row has a value; right-aligned or not. */
enum { EKV__WORKLOAD = 1, EKV__FIGURE = 0 };
#define EKV__SUMMARY_COLUMNS(X)                                                        \
    X(LABEL, "label", "label", EKV__WORKLOAD, 0)                                       \
    X(BACKEND, "backend", "backend", EKV__WORKLOAD, 0)                                 \
    X(DEVICE, "device", "device", EKV__WORKLOAD, 0)                                    \
    X(CACHE_STATE, "cache_state", "cache", EKV__WORKLOAD, 0)                           \
    X(VARIANT, "variant", "variant", EKV__WORKLOAD, 0)                                 \
    X(BATCH, "batch", "batch", EKV__WORKLOAD, 1)                                       \
    X(SEQ_LEN, "seq_len", "seq", EKV__WORKLOAD, 1)                                     \
    X(HEADS, "heads", "heads", EKV__WORKLOAD, 1)                                       \
    X(KV_HEADS, "kv_heads", "kv_heads", EKV__WORKLOAD, 1)                              \
    X(HEAD_DIM, "head_dim", "dim", EKV__WORKLOAD, 1)                                   \
    X(KV_DTYPE, "kv_dtype", "dtype", EKV__WORKLOAD, 0)                                 \
    X(POLICY, "policy", "policy", EKV__WORKLOAD, 0)                                    \
    X(COMPRESSION, "compression", "C", EKV__WORKLOAD, 1)                               \
    X(RECENT, "recent", "recent", EKV__WORKLOAD, 1)                                    \
    X(SINKS, "sinks", "sinks", EKV__WORKLOAD, 1)                                       \
    X(OBSERVE, "observe", "observe", EKV__WORKLOAD, 1)                                 \
    X(DATA, "data", "data", EKV__WORKLOAD, 0)                                          \
    X(SEED, "seed", "seed", EKV__WORKLOAD, 1)                                          \
    X(LAYERS, "layers", "layers", EKV__WORKLOAD, 1)                                    \
    X(DECODE_TOKENS, "decode_tokens", "steps", EKV__WORKLOAD, 1)                       \
    X(COMPRESS_EVERY, "compress_every", "compress every", EKV__WORKLOAD, 1)            \
    X(N, "n", "samples", EKV__WORKLOAD, 1)                                             \
    X(BASELINE, "baseline", "baseline", EKV__WORKLOAD, 0)                              \
    X(MEDIAN, "median_ms", "median ms", EKV__FIGURE, 1)                                \
    X(CI_LO, "ci95_lo_ms", NULL, EKV__FIGURE, 1)                                       \
    X(CI_HI, "ci95_hi_ms", "95% CI of the median", EKV__FIGURE, 0)                     \
    X(CV, "cv", "cv", EKV__FIGURE, 1)                                                  \
    X(NOISY, "noisy", NULL, EKV__FIGURE, 0)                                            \
    X(TOKENS, "tokens_per_sec", "tokens/s", EKV__FIGURE, 1)                            \
    X(BANDWIDTH, "bandwidth_gbs", "GB/s", EKV__FIGURE, 1)                              \
    X(PCT_PEAK, "pct_of_theoretical_peak", "% of peak", EKV__FIGURE, 1)                \
    X(PCT_COPY, "pct_of_measured_copy", "% of copy", EKV__FIGURE, 1)                   \
    X(SPEEDUP, "speedup", "vs baseline [95% CI]", EKV__FIGURE, 0)                      \
    X(SPEEDUP_LO, "speedup_ci95_lo", NULL, EKV__FIGURE, 1)                             \
    X(SPEEDUP_HI, "speedup_ci95_hi", NULL, EKV__FIGURE, 1)                             \
    X(REL_L2, "rel_l2", "error rel_l2", EKV__FIGURE, 1)                                \
    X(REL_L2_VS_CACHE, "rel_l2_vs_cache", "rel_l2 vs cache", EKV__FIGURE, 1)           \
    X(KV_BYTES, "kv_cache_bytes", "KV MB", EKV__FIGURE, 1)                             \
    X(NOTICE, "notice", NULL, EKV__FIGURE, 0)

enum {
#define EKV__SUMMARY_ENUM(id, name, title, kind, right) EKV__COLUMN_##id,
    EKV__SUMMARY_COLUMNS(EKV__SUMMARY_ENUM)
#undef EKV__SUMMARY_ENUM
    EKV__COLUMN_COUNT
};

static const struct ekv__summary_column {
    const char *name, *title;
    int kind, right;
} ekv__summary_columns[EKV__COLUMN_COUNT] = {
#define EKV__SUMMARY_ENTRY(id, name, title, kind, right) {name, title, kind, right},
    EKV__SUMMARY_COLUMNS(EKV__SUMMARY_ENTRY)
#undef EKV__SUMMARY_ENTRY
};

/* A figure for people: four significant digits, without an exponent below 1e9. */
static void ekv__summary_number(char *out, size_t size, double v)
{
    if (fabs(v) >= 1e4 && fabs(v) < 1e9) snprintf(out, size, "%.0f", v);
    else snprintf(out, size, "%.4g", v);
}

/* The text of one cell, for CSV (numbers in full: the shortest text that reads back to
   the same double) or for people; returns 0 and an empty text where it has no value. */
static int ekv__summary_cell(const ekv_summary_row *row, int column, int csv, char *out, size_t size)
{
    double number = ekv__nan();
    long long integer = 0;
    int is_integer = 0;
    const char *text = NULL;
    out[0] = '\0';
    switch (column) {
    case EKV__COLUMN_LABEL: text = row->label; break;
    case EKV__COLUMN_BACKEND: text = ekv_backend_name(row->backend); break;
    case EKV__COLUMN_DEVICE: text = row->device; break;
    case EKV__COLUMN_CACHE_STATE: text = row->hot ? "hot" : "cold"; break;
    case EKV__COLUMN_BATCH: integer = row->batch, is_integer = 1; break;
    case EKV__COLUMN_SEQ_LEN: integer = row->seq_len, is_integer = 1; break;
    case EKV__COLUMN_HEADS: integer = row->heads, is_integer = 1; break;
    case EKV__COLUMN_KV_HEADS: integer = row->kv_heads, is_integer = 1; break;
    case EKV__COLUMN_HEAD_DIM: integer = row->head_dim, is_integer = 1; break;
    case EKV__COLUMN_KV_DTYPE: text = ekv_dtype_name(row->kv_dtype); break;
    case EKV__COLUMN_POLICY: text = ekv_policy_name(row->policy); break;
    case EKV__COLUMN_COMPRESSION: integer = row->compression, is_integer = 1; break;
    case EKV__COLUMN_RECENT: integer = row->recent, is_integer = 1; break;
    case EKV__COLUMN_SINKS: integer = row->sinks, is_integer = 1; break;
    case EKV__COLUMN_OBSERVE: integer = row->observe, is_integer = 1; break;
    case EKV__COLUMN_DATA: text = row->data; break;
    case EKV__COLUMN_SEED: snprintf(out, size, "%llu", (unsigned long long)row->seed); return 1;
    case EKV__COLUMN_VARIANT: text = row->cycle ? ekv_variant_name(row->variant) : NULL; break;
    case EKV__COLUMN_LAYERS: integer = row->layers, is_integer = row->cycle; break;
    case EKV__COLUMN_DECODE_TOKENS: integer = row->decode_tokens, is_integer = row->cycle; break;
    case EKV__COLUMN_COMPRESS_EVERY: integer = row->compress_every, is_integer = row->cycle; break;
    case EKV__COLUMN_N: integer = (long long)row->n, is_integer = 1; break;
    case EKV__COLUMN_BASELINE: text = row->paired ? row->baseline : NULL; break;
    case EKV__COLUMN_MEDIAN: number = row->median_ms; break;
    case EKV__COLUMN_CI_LO: number = row->ci95_lo_ms; break;
    case EKV__COLUMN_CI_HI:
        if (!csv && ekv__is_finite(row->ci95_lo_ms) && ekv__is_finite(row->ci95_hi_ms)) {
            snprintf(out, size, "[%.4g, %.4g]", row->ci95_lo_ms, row->ci95_hi_ms);
            return 1;
        }
        number = csv ? row->ci95_hi_ms : ekv__nan();
        break;
    case EKV__COLUMN_CV:
        if (!csv && ekv__is_finite(row->cv)) {
            snprintf(out, size, "%.1f%%%s", 100.0 * row->cv, row->cv > EKV_NOISY_CV ? " noisy" : "");
            return 1;
        }
        number = row->cv;
        break;
    case EKV__COLUMN_NOISY:
        text = !ekv__is_finite(row->cv) ? NULL : (row->cv > EKV_NOISY_CV ? "true" : "false");
        break;
    case EKV__COLUMN_TOKENS: number = row->tokens_per_sec; break;
    case EKV__COLUMN_BANDWIDTH: number = row->bandwidth_gbs; break;
    case EKV__COLUMN_PCT_PEAK:
    case EKV__COLUMN_PCT_COPY:
        number = column == EKV__COLUMN_PCT_PEAK ? row->pct_of_theoretical_peak : row->pct_of_measured_copy;
        if (!csv && ekv__is_finite(number)) {
            snprintf(out, size, "%.1f%%", number);
            return 1;
        }
        break;
    case EKV__COLUMN_SPEEDUP:
        if (row->paired && !csv && ekv__is_finite(row->speedup)) {
            /* the factor by which the faster side wins, as the detail output's phrase */
            const int faster = row->speedup >= 1.0;
            char x[16], l[16], h[16];
            snprintf(out, size, "%sx %s [%s, %s]",
                     ekv__ratio_text(x, sizeof x, faster ? row->speedup : 1.0 / row->speedup),
                     faster ? "faster" : "slower",
                     ekv__ratio_text(l, sizeof l, faster ? row->speedup_ci95_lo : 1.0 / row->speedup_ci95_hi),
                     ekv__ratio_text(h, sizeof h, faster ? row->speedup_ci95_hi : 1.0 / row->speedup_ci95_lo));
            return 1;
        }
        number = row->paired ? row->speedup : ekv__nan();
        break;
    case EKV__COLUMN_SPEEDUP_LO: number = row->paired ? row->speedup_ci95_lo : ekv__nan(); break;
    case EKV__COLUMN_SPEEDUP_HI: number = row->paired ? row->speedup_ci95_hi : ekv__nan(); break;
    case EKV__COLUMN_REL_L2:
    case EKV__COLUMN_REL_L2_VS_CACHE:
        number = column == EKV__COLUMN_REL_L2 ? row->rel_l2 : row->rel_l2_vs_cache;
        if (!csv && ekv__is_finite(number)) {
            snprintf(out, size, "%.3g", number);
            return 1;
        }
        break;
    case EKV__COLUMN_KV_BYTES:
        number = row->kv_cache_bytes;
        if (!csv) number *= 1e-6;
        break;
    case EKV__COLUMN_NOTICE: text = row->notice; break;
    default: break;
    }
    if (text) snprintf(out, size, "%s", text);
    else if (is_integer) snprintf(out, size, "%lld", integer);
    else if (!ekv__is_finite(number)) out[0] = '\0';
    else if (csv) ekv__json_format_double(number, out, size);
    else ekv__summary_number(out, size, number);
    return out[0] != '\0';
}

/* RFC 4180: a field with a comma, quote or line break is quoted, quotes doubled. */
static void ekv__csv_field(FILE *out, const char *text)
{
    if (!strpbrk(text, ",\"\r\n")) {
        fputs(text, out);
        return;
    }
    fputc('"', out);
    for (; *text; text++) {
        if (*text == '"') fputc('"', out);
        fputc(*text, out);
    }
    fputc('"', out);
}

/* A cell for a text table or Markdown: control characters (and Markdown's '|') cannot
   stand in a cell. */
static void ekv__table_field(FILE *out, const char *text, int markdown)
{
    for (; *text; text++) {
        const unsigned char c = (unsigned char)*text;
        if (c < 0x20 || c == 0x7f) fputc(' ', out);
        else if (markdown && c == '|') fputs("\\|", out);
        else fputc(c, out);
    }
}

/* Characters of UTF-8 text (continuation bytes do not count), for alignment. */
static size_t ekv__text_width(const char *text)
{
    size_t n = 0;
    for (; *text; text++) n += ((unsigned char)*text & 0xC0) != 0x80;
    return n;
}

#define EKV__CELL_MAX 320

static void ekv__summary_print_csv(const ekv_summary *s, FILE *out)
{
    char cell[EKV__CELL_MAX];
    size_t i;
    int k;
    for (k = 0; k < EKV__COLUMN_COUNT; k++) fprintf(out, "%s%s", k ? "," : "", ekv__summary_columns[k].name);
    fputc('\n', out);
    for (i = 0; i < s->count; i++) {
        for (k = 0; k < EKV__COLUMN_COUNT; k++) {
            ekv__summary_cell(&s->rows[i], k, 1, cell, sizeof cell);
            if (k) fputc(',', out);
            ekv__csv_field(out, cell);
        }
        fputc('\n', out);
    }
}

EKV_DEF void ekv_summary_print(const ekv_summary *s, ekv_output_format format, FILE *out)
{
    const int markdown = format == EKV_FORMAT_MARKDOWN;
    char cell[EKV__CELL_MAX], first[EKV__CELL_MAX];
    int shown[EKV__COLUMN_COUNT], constant[EKV__COLUMN_COUNT];
    size_t width[EKV__COLUMN_COUNT];
    int k, any_constant = 0, noisy = 0;
    size_t i, j;
    if (!s || !out) return;
    if (format == EKV_FORMAT_CSV) {
        ekv__summary_print_csv(s, out);
        return;
    }
    if (s->count == 0) return;
    /* a workload field is a column where rows differ and stated once above where they
       agree; a figure is a column where any row has one */
    for (k = 0; k < EKV__COLUMN_COUNT; k++) {
        const struct ekv__summary_column *col = &ekv__summary_columns[k];
        int has_first = ekv__summary_cell(&s->rows[0], k, 0, first, sizeof first), differs = 0, any = has_first;
        for (i = 1; i < s->count; i++) {
            int has = ekv__summary_cell(&s->rows[i], k, 0, cell, sizeof cell);
            any |= has;
            differs |= has != has_first || strcmp(cell, first) != 0;
        }
        shown[k] = col->title && (col->kind == EKV__WORKLOAD ? differs : any);
        constant[k] = col->title && col->kind == EKV__WORKLOAD && !differs && has_first;
        any_constant |= constant[k];
        width[k] = shown[k] ? ekv__text_width(col->title) : 0;
        for (i = 0; shown[k] && i < s->count; i++) {
            size_t w;
            ekv__summary_cell(&s->rows[i], k, 0, cell, sizeof cell);
            w = ekv__text_width(cell);
            if (w > width[k]) width[k] = w;
        }
    }
    fprintf(out, "%sekv %s%s\n", markdown ? "**" : "", EKV_VERSION_STRING, markdown ? "**" : "");
    if (any_constant) {
        const char *separator = "";
        if (markdown) fputc('\n', out);
        fprintf(out, "%s", markdown ? "Same in every row: " : "same in every row: ");
        for (k = 0; k < EKV__COLUMN_COUNT; k++) {
            if (!constant[k]) continue;
            ekv__summary_cell(&s->rows[0], k, 0, cell, sizeof cell);
            fprintf(out, "%s%s ", separator, ekv__summary_columns[k].title);
            ekv__table_field(out, cell, markdown);
            separator = ", ";
        }
        fputc('\n', out);
    }
    fputc('\n', out);
    /* header, rule, rows; a text table's columns are two spaces apart, padded to the
       widest cell, except the last one's trailing spaces */
    for (j = 0; j < s->count + 2; j++) {
        const int rule = j == 1;
        int last = -1;
        for (k = 0; k < EKV__COLUMN_COUNT; k++)
            if (shown[k]) last = k;
        if (markdown) fputc('|', out);
        for (k = 0; k < EKV__COLUMN_COUNT; k++) {
            const struct ekv__summary_column *col = &ekv__summary_columns[k];
            size_t w, pad;
            if (!shown[k]) continue;
            if (rule) {
                size_t d;
                if (markdown) fprintf(out, " %s |", col->right ? "---:" : "---");
                else
                    for (d = 0; d < width[k] + (k == last ? 0 : 2); d++) fputc(d < width[k] ? '-' : ' ', out);
                continue;
            }
            if (j == 0) snprintf(cell, sizeof cell, "%s", col->title);
            else ekv__summary_cell(&s->rows[j - 2], k, 0, cell, sizeof cell);
            w = ekv__text_width(cell);
            pad = markdown ? 0 : width[k] - w;
            if (markdown) fputc(' ', out);
            if (col->right) for (; pad > 0; pad--) fputc(' ', out);
            ekv__table_field(out, cell, markdown);
            if (markdown) fputs(" |", out);
            else if (k != last)
                for (pad += 2; pad > 0; pad--) fputc(' ', out);
        }
        fputc('\n', out);
    }
    for (i = 0; i < s->count; i++) noisy |= s->rows[i].cv > EKV_NOISY_CV;
    if (noisy)
        fprintf(out, "\ncv above %.0f%% is marked noisy: something else used the machine during "
                     "those runs; rerun on a quiet one before trusting small differences.\n",
                100.0 * EKV_NOISY_CV);
    /* each distinct notice once */
    for (i = 0; i < s->count; i++) {
        const char *notice = s->rows[i].notice;
        int seen = 0;
        for (j = 0; j < i && !seen; j++) seen = strcmp(s->rows[j].notice, notice) == 0;
        if (!notice[0] || seen) continue;
        fputs("\nnotice: ", out);
        ekv__table_field(out, notice, markdown);
        fputc('\n', out);
    }
}

/* >>workload (implementation) ============================================== */

/* Bytes of a file, 0 when it cannot be read (a directory opens, but reads fail and its
   "size" can be anything). */
static double ekv__file_bytes(const char *path)
{
    FILE *f = fopen(path, "rb");
    long size = -1;
    if (!f) return 0.0;
    if ((fgetc(f) != EOF || !ferror(f)) && fseek(f, 0, SEEK_END) == 0) size = ftell(f);
    fclose(f);
    return size > 0 ? (double)size : 0.0;
}

/* Bytes of what ekv_data_load reads from `path`: a .npz, or a directory's members. */
static double ekv__data_file_bytes(const char *path)
{
    char member[EKV_PATH_MAX + 32];
    double total = 0.0;
    int i;
    if (snprintf(member, sizeof member, "%s/q.npy", path) >= (int)sizeof member) return 0.0;
    if (ekv__file_bytes(member) <= 0.0) return ekv__file_bytes(path);
    for (i = 0; i < 4; i++) {
        if (snprintf(member, sizeof member, "%s/%s", path, ekv__data_members[i]) >= (int)sizeof member)
            return 0.0;
        total += ekv__file_bytes(member);
    }
    return total;
}

EKV_DEF double ekv_workload_memory_estimate(const ekv_config *config, double parts[3])
{
    ekv_config resolved;
    const ekv_config *c = &resolved;
    ekv_compress_desc desc;
    double q, kv, observe, data, caches, rest, references, work;
    int kept;
    if (!config) return 0.0;
    resolved = ekv_config_resolve(config);
    q = (double)c->batch * c->heads * c->head_dim;
    kv = (double)c->batch * c->kv_heads * c->seq_len * c->head_dim;
    observe = q * c->observe;
    data = 4.0 * (q + 2.0 * kv + observe) + 4.0 * c->batch;
    if (c->data == EKV_DATA_FILE) {
        /* the file's bytes are read whole, then converted: both live at once */
        double file = ekv__data_file_bytes(c->data_path);
        data = file + (file > data ? file : data);
    }
    memset(&desc, 0, sizeof desc);
    desc.policy = c->policy;
    desc.compression = c->compression;
    desc.recent = c->recent;
    desc.sinks = c->sinks;
    desc.observe = c->observe;
    kept = ekv_policy_kept(&desc, c->seq_len);
    if (kept < 1) kept = 1;
    caches = ekv_cache_memory_of(c->kv_dtype, c->batch, c->kv_heads, c->head_dim, kept,
                                 ekv_policy_has_bias(&desc));
    if (c->paired_baseline)
        caches += ekv_cache_memory_of(c->baseline_dtype, c->batch, c->kv_heads, c->head_dim,
                                      c->seq_len, 0);
    references = 2.0 * 8.0 * q;
    /* the largest temporary: topk's scores of every token, or the per-head logits */
    work = 8.0 * (double)c->seq_len * (double)(c->heads / (c->kv_heads > 0 ? c->kv_heads : 1) +
                                               EKV__SCORE_BATCH);
    if (c->policy == EKV_POLICY_TOPK) work += 8.0 * (double)c->batch * c->kv_heads * c->seq_len;
    rest = references + work;
    if (parts) {
        parts[0] = data;
        parts[1] = caches;
        parts[2] = rest;
    }
    return data + caches + rest;
}

EKV_DEF void ekv_workload_free(ekv_workload *w)
{
    ekv_data_free(&w->data);
    ekv_cache_free(&w->cache);
    ekv_paged_free(&w->paged);
    ekv_cache_free(&w->baseline);
    ekv__free(w->reference_full);
    ekv__free(w->reference_cache);
    memset(w, 0, sizeof *w);
}

/* --page-size: the built cache moves into a pool of exactly the pages its sequences need,
   each admitted from the last to the first (so a sequence's pages are not where a
   contiguous layout would put them), and the cache every reader on the host takes (CPU
   kernel, references) is gathered back from those pages; the device backends read the
   pages themselves (ekv_cuda_cache_upload_paged). */
static ekv_result ekv__workload_page(ekv_workload *w, int page_size)
{
    ekv_host_cache gathered;
    ekv_result r;
    int b, pages = 0;
    for (b = 0; b < w->cache.batch; b++) pages += (w->cache.lengths[b] + page_size - 1) / page_size;
    r = ekv_paged_create(&w->paged, w->cache.dtype, w->cache.batch, w->cache.kv_heads,
                         w->cache.head_dim, page_size, pages > 0 ? pages : 1, w->cache.capacity,
                         w->cache.bias != NULL);
    for (b = w->cache.batch - 1; r == EKV_SUCCESS && b >= 0; b--)
        r = ekv_paged_admit(&w->paged, b, &w->cache, b);
    if (r == EKV_SUCCESS) r = ekv_paged_gather(&w->paged, &gathered);
    if (r != EKV_SUCCESS) return r;
    ekv_cache_free(&w->cache);
    w->cache = gathered;
    return EKV_SUCCESS;
}

EKV_DEF ekv_result ekv_workload_prepare(const ekv_config *config, ekv_workload *w)
{
    const ekv_config resolved = ekv_config_resolve(config);
    const ekv_config *c = &resolved;
    ekv_result r;
    size_t out_count;
    ekv_cache_bytes full;
    char prefix[EKV_PATH_MAX + 64];
    memset(w, 0, sizeof *w);
    if ((r = ekv_config_validate(c)) != EKV_SUCCESS) return r;
    if (c->data == EKV_DATA_FILE) {
        r = ekv_data_load(c->data_path, c->observe, &w->data);
        if (r != EKV_SUCCESS) return r;
        if (w->data.batch != c->batch || w->data.heads != c->heads ||
            w->data.kv_heads != c->kv_heads ||
            w->data.head_dim != c->head_dim || w->data.capacity != c->seq_len) {
            r = ekv_set_error(EKV_ERR_INVALID_ARG,
                              "--data=%s holds batch %d, heads %d, kv-heads %d, dim %d, seq %d; "
                              "pass the same --batch --heads --kv-heads --dim --seq",
                              c->data_path, w->data.batch, w->data.heads, w->data.kv_heads,
                              w->data.head_dim, w->data.capacity);
            ekv_workload_free(w);
            return r;
        }
    } else {
        ekv_data_desc d;
        memset(&d, 0, sizeof d);
        d.kind = c->data;
        d.batch = c->batch;
        d.heads = c->heads;
        d.kv_heads = c->kv_heads;
        d.head_dim = c->head_dim;
        d.seq_len = c->seq_len;
        d.observe = c->observe;
        d.seed = c->seed;
        r = ekv_data_generate(&d, &w->data);
        if (r != EKV_SUCCESS) return r;
    }
    w->softmax_scale = c->softmax_scale;
    w->compress.policy = c->policy;
    w->compress.compression = c->compression;
    w->compress.recent = c->recent;
    w->compress.sinks = c->sinks;
    w->compress.observe = c->observe;
    /* bad data is named here, as data, before a kernel could be blamed for it */
    r = ekv_data_check(&w->data, w->softmax_scale);
    if (r == EKV_SUCCESS)
        r = ekv_cache_build(&w->data, &w->compress, c->kv_dtype, w->softmax_scale, &w->cache);
    if (r == EKV_SUCCESS && c->page_size > 0) r = ekv__workload_page(w, c->page_size);
    if (r == EKV_SUCCESS && c->paired_baseline) {
        ekv_compress_desc none = w->compress;
        none.policy = EKV_POLICY_NONE;
        none.compression = 1;
        r = ekv_cache_build(&w->data, &none, c->baseline_dtype, w->softmax_scale, &w->baseline);
        if (r == EKV_ERR_INVALID_ARG) { /* say which cache: the baseline's dtype may differ */
            snprintf(prefix, sizeof prefix, "the paired baseline (--baseline-dtype=%s): ",
                     ekv_dtype_name(c->baseline_dtype));
            r = ekv__prefix_error(r, prefix);
        }
    }
    if (r == EKV_ERR_INVALID_ARG && c->data == EKV_DATA_FILE) {
        snprintf(prefix, sizeof prefix, "--data=%.1000s: ", c->data_path);
        r = ekv__prefix_error(r, prefix);
    }
    out_count = (size_t)w->data.batch * w->data.heads * w->data.head_dim;
    if (r == EKV_SUCCESS) {
        w->reference_full = (double *)ekv__alloc(out_count, sizeof(double));
        w->reference_cache = (double *)ekv__alloc(out_count, sizeof(double));
        if (!w->reference_full || !w->reference_cache) r = EKV_ERR_OUT_OF_MEMORY;
    }
    if (r == EKV_SUCCESS) r = ekv_reference_attention(&w->data, w->softmax_scale, w->reference_full);
    if (r == EKV_SUCCESS)
        r = ekv_reference_attention_cache(&w->cache, w->data.q, w->data.heads, w->softmax_scale,
                                          w->reference_cache);
    if (r == EKV_SUCCESS)
        r = ekv_attention_profile(&w->data, w->softmax_scale, &w->attention_entropy,
                                  &w->top5pct_mass);
    if (r != EKV_SUCCESS) {
        ekv_workload_free(w);
        return r;
    }
    w->error_compression = ekv_compare_f64(w->reference_full, w->reference_cache, out_count);
    full = ekv_cache_bytes_of(c->kv_dtype, w->data.batch, w->data.kv_heads, w->data.head_dim,
                              w->data.lengths, 0);
    w->kv_cache_bytes_uncompressed = full.total;
    return EKV_SUCCESS;
}

EKV_DEF void ekv_workload_accuracy(const ekv_workload *w, const float *out, ekv_accuracy *a)
{
    size_t n = (size_t)w->data.batch * w->data.heads * w->data.head_dim;
    a->total = ekv_compare_f32(w->reference_full, out, n);
    a->compression = w->error_compression;
    a->kernel = ekv_compare_f32(w->reference_cache, out, n);
    a->attention_entropy = w->attention_entropy;
    a->top5pct_mass = w->top5pct_mass;
    a->heads_checked = w->data.batch * w->data.heads;
    a->heads_total = w->data.batch * w->data.heads;
}

EKV_DEF ekv_result ekv_workload_dump(const ekv_workload *w, const float *out, const char *dir)
{
    char path[EKV_PATH_MAX + 16];
    int64_t qshape[3], kvshape[4];
    ekv_result r;
    qshape[0] = w->data.batch;
    qshape[1] = w->data.heads;
    qshape[2] = w->data.head_dim;
    kvshape[0] = w->data.batch;
    kvshape[1] = w->data.kv_heads;
    kvshape[2] = w->data.capacity;
    kvshape[3] = w->data.head_dim;
    snprintf(path, sizeof path, "%s/q.npy", dir);
    if ((r = ekv_npy_write(path, w->data.q, 3, qshape)) != EKV_SUCCESS) return r;
    snprintf(path, sizeof path, "%s/k.npy", dir);
    if ((r = ekv_npy_write(path, w->data.k, 4, kvshape)) != EKV_SUCCESS) return r;
    snprintf(path, sizeof path, "%s/v.npy", dir);
    if ((r = ekv_npy_write(path, w->data.v, 4, kvshape)) != EKV_SUCCESS) return r;
    if (w->data.observe > 0 && w->data.q_observe) {
        int64_t observe_shape[4];
        observe_shape[0] = w->data.batch;
        observe_shape[1] = w->data.heads;
        observe_shape[2] = w->data.observe;
        observe_shape[3] = w->data.head_dim;
        snprintf(path, sizeof path, "%s/q_observe.npy", dir);
        if ((r = ekv_npy_write(path, w->data.q_observe, 4, observe_shape)) != EKV_SUCCESS) return r;
    }
    snprintf(path, sizeof path, "%s/out.npy", dir);
    if ((r = ekv_npy_write(path, out, 3, qshape)) != EKV_SUCCESS) return r;
    snprintf(path, sizeof path, "%s/ref.npy", dir);
    return ekv_npy_write_f64(path, w->reference_full, 3, qshape);
}

/* >>timing (implementation) ================================================ */

EKV_DEF double ekv_time_ms(void)
{
#if defined(CLOCK_MONOTONIC) && (defined(__unix__) || defined(__APPLE__))
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
#else
    return (double)clock() * 1e3 / CLOCKS_PER_SEC;
#endif
}

static EKV__THREAD_LOCAL ekv_progress_fn ekv__progress_handler;
static EKV__THREAD_LOCAL void *ekv__progress_context;
/* The share of the run the timing loops now running cover: [lo, lo + width); width 0
   means the whole run (the cycle driver narrows it to one variant's share). */
static EKV__THREAD_LOCAL double ekv__progress_lo, ekv__progress_width;

EKV_DEF void ekv_progress_set_handler(ekv_progress_fn handler, void *context)
{
    ekv__progress_handler = handler;
    ekv__progress_context = context;
}

static void ekv__progress_span(double lo, double width)
{
    ekv__progress_lo = lo;
    ekv__progress_width = width;
}

static void ekv__progress(double fraction)
{
    if (!ekv__progress_handler) return;
    if (ekv__progress_width > 0) fraction = ekv__progress_lo + ekv__progress_width * fraction;
    ekv__progress_handler(ekv__progress_context, fraction);
}

EKV_DEF ekv_result ekv_time_abab(int warmup, int reps, int paired, ekv_sample_fn sample,
                                 void *context)
{
    int i;
    for (i = 0; i < warmup + reps; i++) {
        ekv_result r;
        if (paired && (r = sample(context, 1, i - warmup)) != EKV_SUCCESS) return r;
        if ((r = sample(context, 0, i - warmup)) != EKV_SUCCESS) return r;
        ekv__progress((double)(i + 1) / (double)(warmup + reps));
    }
    return EKV_SUCCESS;
}

#define EKV__PROGRESS_DELAY_MS 2000.0   /* runs shorter than this print nothing */
#define EKV__PROGRESS_TTY_MS 200.0      /* redraw period of the bar */
#define EKV__PROGRESS_LINE_MS 10000.0   /* period of the lines in a log */
#define EKV__PROGRESS_BAR 24

EKV_DEF void ekv_progress_meter_init(ekv_progress_meter *m, FILE *out, const char *name, int tty,
                                     size_t runs, double now_ms)
{
    memset(m, 0, sizeof *m);
    m->out = out;
    m->name = name ? name : "ekv";
    m->tty = tty;
    m->runs = runs > 0 ? runs : 1;
    m->start_ms = now_ms;
    m->next_ms = now_ms + EKV__PROGRESS_DELAY_MS;
}

/* "12 s", "3 min 05 s", "2 h 07 min" */
static void ekv__progress_duration(char *out, size_t size, double seconds)
{
    long s = seconds > 0 ? (long)(seconds + 0.5) : 0;
    if (s < 60) snprintf(out, size, "%ld s", s);
    else if (s < 3600) snprintf(out, size, "%ld min %02ld s", s / 60, s % 60);
    else snprintf(out, size, "%ld h %02ld min", s / 3600, (s % 3600) / 60);
}

static void ekv__progress_print(ekv_progress_meter *m, double now_ms)
{
    const double elapsed = (now_ms - m->start_ms) * 1e-3;
    char run[48] = "", left[64] = "", took[32];
    ekv__progress_duration(took, sizeof took, elapsed);
    if (m->runs > 1) snprintf(run, sizeof run, "run %zu/%zu ", m->run + 1, m->runs);
    /* the time left extrapolates the rate so far; before any round there is none */
    if (m->fraction > 0.0) {
        char t[32];
        ekv__progress_duration(t, sizeof t, elapsed * (1.0 - m->fraction) / m->fraction);
        snprintf(left, sizeof left, ", about %s left", t);
    }
    if (m->tty) {
        char bar[EKV__PROGRESS_BAR + 1];
        int i, filled = (int)(m->fraction * EKV__PROGRESS_BAR);
        for (i = 0; i < EKV__PROGRESS_BAR; i++) bar[i] = i < filled ? '#' : '.';
        bar[EKV__PROGRESS_BAR] = '\0';
        /* \r and erase-to-end-of-line redraw the same line */
        fprintf(m->out, "\r[%s] %3.0f%%  %s%s elapsed%s  %.40s\033[K", bar, 100.0 * m->fraction, run,
                took, left, m->what);
    } else {
        fprintf(m->out, "%s: %.0f%% done, %s%s elapsed%s (%s)\n", m->name, 100.0 * m->fraction, run,
                took, left, m->what);
    }
    fflush(m->out);
    m->printed = 1;
}

EKV_DEF void ekv_progress_meter_update(ekv_progress_meter *m, double fraction, double now_ms)
{
    if (!m || !m->out) return;
    if (fraction < 0.0) fraction = 0.0;
    if (fraction > 1.0) fraction = 1.0;
    m->fraction = ((double)m->run + fraction) / (double)m->runs;
    if (now_ms < m->next_ms) return;
    ekv__progress_print(m, now_ms);
    m->next_ms = now_ms + (m->tty ? EKV__PROGRESS_TTY_MS : EKV__PROGRESS_LINE_MS);
}

EKV_DEF void ekv_progress_meter_run(ekv_progress_meter *m, size_t run, const char *what,
                                    double now_ms)
{
    if (!m || !m->out) return;
    m->run = run < m->runs ? run : m->runs - 1;
    snprintf(m->what, sizeof m->what, "%.*s", (int)sizeof m->what - 1, what ? what : "");
    ekv_progress_meter_update(m, 0.0, now_ms);
}

EKV_DEF void ekv_progress_meter_end(ekv_progress_meter *m, double now_ms)
{
    char took[32];
    if (!m || !m->out || !m->printed) return;
    ekv__progress_duration(took, sizeof took, (now_ms - m->start_ms) * 1e-3);
    if (m->tty) fprintf(m->out, "\r\033[K");
    fprintf(m->out, "%s: %.0f%% done", m->name, 100.0 * m->fraction);
    if (m->runs > 1) fprintf(m->out, ", %zu of %zu runs", m->fraction >= 1.0 ? m->runs : m->run, m->runs);
    fprintf(m->out, " in %s\n", took);
    fflush(m->out);
    m->printed = 0;
}

EKV_DEF void ekv_progress_meter_handler(void *meter, double fraction)
{
    ekv_progress_meter_update((ekv_progress_meter *)meter, fraction, ekv_time_ms());
}

/* >>cpu (implementation) =================================================== */


typedef struct ekv__copy_job {
    const unsigned char *from;
    unsigned char *to;
    size_t bytes, pieces, next;
} ekv__copy_job;

static void ekv__copy_worker(void *context, int worker)
{
    ekv__copy_job *job = (ekv__copy_job *)context;
    (void)worker;
    for (;;) {
        const size_t piece = ekv__take(&job->next);
        size_t lo, hi;
        if (piece >= job->pieces) break;
        lo = job->bytes / job->pieces * piece;
        hi = piece + 1 == job->pieces ? job->bytes : lo + job->bytes / job->pieces;
        memcpy(job->to + lo, job->from + lo, hi - lo);
    }
}

EKV_DEF double ekv_cpu_copy_bandwidth_gbs(size_t bytes, int reps, int threads)
{
    unsigned char *a = (unsigned char *)ekv__alloc(bytes, 1);
    unsigned char *b = (unsigned char *)ekv__alloc(bytes, 1);
    double *times = (double *)ekv__alloc((size_t)(reps > 0 ? reps : 1), sizeof(double));
    double best = ekv__nan();
    const int workers = ekv_cpu_threads(threads);
    int i;
    if (a && b && times && reps > 0) {
        memset(a, 1, bytes);
        memcpy(b, a, bytes); /* touch both buffers before timing */
        for (i = 0; i < reps; i++) {
            /* four pieces per thread, taken as threads finish, as the kernel takes its work */
            ekv__copy_job job;
            double t0;
            job.from = i % 2 ? b : a;
            job.to = i % 2 ? a : b;
            job.bytes = bytes;
            job.pieces = 4 * (size_t)workers;
            job.next = 0;
            t0 = ekv_time_ms();
            ekv__run_workers(workers, ekv__copy_worker, &job);
            times[i] = ekv_time_ms() - t0;
        }
        /* read + write bytes over the median copy time */
        best = 2.0 * (double)bytes / (ekv_median(times, (size_t)reps) * 1e-3) * 1e-9;
    }
    ekv__free(a);
    ekv__free(b);
    ekv__free(times);
    return best;
}

static void ekv__cpu_name(char *out, size_t size)
{
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[512];
    snprintf(out, size, "CPU");
    if (!f) return;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "model name", 10) == 0) {
            char *colon = strchr(line, ':');
            size_t n;
            if (!colon) break;
            colon++;
            while (*colon == ' ') colon++;
            n = strlen(colon);
            while (n > 0 && (colon[n - 1] == '\n' || colon[n - 1] == '\r')) colon[--n] = '\0';
            snprintf(out, size, "CPU: %s", colon);
            break;
        }
    }
    fclose(f);
}

static ekv_result ekv__cache_clone(const ekv_host_cache *src, ekv_host_cache *dst)
{
    /* a timing copy is read, never grown or compressed: no compressed counts */
    ekv_result r = ekv__cache_alloc(dst, src->dtype, src->batch, src->kv_heads, src->head_dim,
                                    src->capacity, src->bias != NULL, 0, "ekv_cache_clone");
    size_t slots = (size_t)src->batch * src->kv_heads * src->capacity;
    size_t row = ekv_dtype_row_bytes(src->dtype, src->head_dim);
    size_t scale_bytes = ekv_cache_scales_bytes(src->dtype, src->batch, src->kv_heads,
                                                src->head_dim, src->capacity);
    if (r != EKV_SUCCESS) return r;
    memcpy(dst->lengths, src->lengths, (size_t)src->batch * sizeof(int));
    memcpy(dst->k, src->k, slots * row);
    memcpy(dst->v, src->v, slots * row);
    if (scale_bytes) {
        memcpy(dst->k_scales, src->k_scales, scale_bytes);
        memcpy(dst->v_scales, src->v_scales, scale_bytes);
    }
    if (src->bias) memcpy(dst->bias, src->bias, slots * sizeof(float));
    return EKV_SUCCESS;
}

/* Copies of the cache that together exceed the last-level cache several times, so that
   no timed call finds its KV there (cold). */
static int ekv__cpu_cold_copies(double cache_bytes)
{
    double llc = 32.0 * 1024 * 1024;
    double copies;
#if defined(_SC_LEVEL3_CACHE_SIZE)
    long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
    if (l3 > 0) llc = (double)l3;
#endif
    copies = ceil(3.0 * llc / (cache_bytes > 1 ? cache_bytes : 1));
    if (copies < 1) copies = 1;
    if (copies > 64) copies = 64;
    while (copies > 1 && copies * cache_bytes > 2e9) copies -= 1;
    return (int)copies;
}

typedef struct ekv__cpu_set {
    ekv_host_cache *copies;
    int count;
} ekv__cpu_set;

static void ekv__cpu_set_free(ekv__cpu_set *s)
{
    int i;
    if (s->copies)
        for (i = 1; i < s->count; i++) ekv_cache_free(&s->copies[i]);
    ekv__free(s->copies);
    s->copies = NULL;
    s->count = 0;
}

/* copies[0] aliases the workload's cache; the rest are clones */
static ekv_result ekv__cpu_set_make(const ekv_host_cache *cache, int count, ekv__cpu_set *s)
{
    int i;
    s->count = 0;
    s->copies = (ekv_host_cache *)ekv__alloc((size_t)count, sizeof(ekv_host_cache));
    if (!s->copies) return EKV_ERR_OUT_OF_MEMORY;
    s->copies[0] = *cache;
    s->count = 1;
    for (i = 1; i < count; i++) {
        if (ekv__cache_clone(cache, &s->copies[i]) != EKV_SUCCESS) {
            ekv__cpu_set_free(s);
            return EKV_ERR_OUT_OF_MEMORY;
        }
        s->count++;
    }
    return EKV_SUCCESS;
}

static ekv_result ekv__cpu_sample(const ekv__cpu_set *s, int *next, const float *q, int heads,
                                  float scale, const ekv_cpu_options *options, float *out,
                                  int inner_loops, double *ms)
{
    int i;
    double t0 = ekv_time_ms();
    for (i = 0; i < inner_loops; i++) {
        ekv_result r = ekv_cpu_attention_with(&s->copies[*next], q, heads, scale, options, out);
        if (r != EKV_SUCCESS) return r;
        *next = (*next + 1) % s->count;
    }
    *ms = (ekv_time_ms() - t0) / inner_loops;
    return EKV_SUCCESS;
}

/* measured once per process and thread count */
static double ekv__cpu_measured_bw = -1.0;
static int ekv__cpu_measured_threads = 0;

struct ekv__cpu_timing {
    ekv__cpu_set *cand, *base;
    int next_cand, next_base, inner_loops;
    const ekv_workload *work;
    ekv_cpu_options options;
    float scale, *out;
    ekv_report *report;
};

static ekv_result ekv__cpu_timed_sample(void *context, int baseline, int rep)
{
    struct ekv__cpu_timing *t = (struct ekv__cpu_timing *)context;
    double ms = 0.0;
    ekv_result r = ekv__cpu_sample(baseline ? t->base : t->cand,
                                   baseline ? &t->next_base : &t->next_cand, t->work->data.q,
                                   t->work->data.heads, t->scale, &t->options, t->out,
                                   t->inner_loops, &ms);
    if (r == EKV_SUCCESS && rep >= 0)
        (baseline ? t->report->baseline_samples_ms : t->report->samples_ms)[rep] = ms;
    return r;
}

EKV_DEF ekv_result ekv_cpu_run(const ekv_config *c, const ekv_workload *w, ekv_report *report)
{
    size_t out_count = (size_t)w->data.batch * w->data.heads * w->data.head_dim;
    float *out = (float *)ekv__alloc(out_count, sizeof(float));
    float scale = (float)w->softmax_scale;
    ekv__cpu_set cand, base;
    struct ekv__cpu_timing timing;
    ekv_result r = EKV_SUCCESS;
    ekv_cpu_plan plan;
    int copies, i, b, longest = 0;
    double kept = 0, tolerance;
    memset(&cand, 0, sizeof cand);
    memset(&base, 0, sizeof base);
    memset(&timing, 0, sizeof timing);
    ekv_report_init(report, c);
    report->backend = EKV_BACKEND_CPU;
    if (!out) return EKV_ERR_OUT_OF_MEMORY;
    timing.options.threads = report->config.threads;
    ekv__cpu_name(report->device.name, sizeof report->device.name);
#if defined(_SC_NPROCESSORS_ONLN)
    report->device.sm_count = (int)sysconf(_SC_NPROCESSORS_ONLN);
#endif
    if ((r = ekv_cpu_attention_plan(&w->cache, w->data.heads, &timing.options, &plan)) != EKV_SUCCESS)
        goto done;
    report->threads = plan.threads;
    report->splits = plan.splits;
    report->partial_bytes = plan.partial_bytes;
    snprintf(report->cpu_path, sizeof report->cpu_path, "%s", plan.path);
    /* the copy runs on as many threads as the kernel may use: like with like */
    if (ekv__cpu_measured_bw < 0 || ekv__cpu_measured_threads != report->config.threads) {
        ekv__cpu_measured_bw = ekv_cpu_copy_bandwidth_gbs(64u << 20, 7, report->config.threads);
        ekv__cpu_measured_threads = report->config.threads;
    }
    report->device.peak_bw_measured_gbs = ekv__cpu_measured_bw;

    /* validation before timing: poison, run once, compare with the references */
    for (i = 0; i < (int)out_count; i++) out[i] = ekv__nan();
    r = ekv_cpu_attention_with(&w->cache, w->data.q, w->data.heads, scale, &timing.options, out);
    if (r != EKV_SUCCESS) goto done;
    ekv_workload_accuracy(w, out, &report->accuracy);
    for (b = 0; b < w->cache.batch; b++)
        if (w->cache.lengths[b] > longest) longest = w->cache.lengths[b];
    tolerance = ekv_validation_tolerance(longest);
    if (!(report->accuracy.kernel.rel_l2 <= tolerance)) {
        r = ekv_set_error(EKV_ERR_VALIDATION,
                          "CPU attention differs from the double reference over the same %s cache: "
                          "rel_l2 %.3e > %.1e (max_abs %.3e)", ekv_dtype_name(w->cache.dtype),
                          report->accuracy.kernel.rel_l2, tolerance, report->accuracy.kernel.max_abs);
        goto done;
    }
    if (c->dump_dir[0] && (r = ekv_workload_dump(w, out, c->dump_dir)) != EKV_SUCCESS) goto done;

    report->cache_bytes = ekv_cache_bytes_of(w->cache.dtype, w->cache.batch, w->cache.kv_heads,
                                             w->cache.head_dim, w->cache.lengths,
                                             w->cache.bias != NULL);
    for (b = 0; b < w->cache.batch; b++) kept += w->cache.lengths[b];
    report->kept_tokens_total = kept;
    report->kv_cache_bytes_uncompressed = w->kv_cache_bytes_uncompressed;
    copies = c->hot ? 1 : ekv__cpu_cold_copies(report->cache_bytes.total);
    report->cache_copies = copies;
    if (!c->hot && copies * report->cache_bytes.total < 2.0 * 32 * 1024 * 1024)
        snprintf(report->notice, sizeof report->notice,
                 "cold timing limited: %d copies of the cache do not exceed the CPU caches", copies);
    if ((r = ekv__cpu_set_make(&w->cache, copies, &cand)) != EKV_SUCCESS) goto done;
    if (c->paired_baseline) {
        if ((r = ekv__cpu_set_make(&w->baseline, copies, &base)) != EKV_SUCCESS) goto done;
        report->has_baseline = 1;
        report->baseline_samples_ms = (double *)ekv__alloc((size_t)c->reps, sizeof(double));
        if (!report->baseline_samples_ms) { r = EKV_ERR_OUT_OF_MEMORY; goto done; }
        report->baseline_sample_count = (size_t)c->reps;
    }
    report->samples_ms = (double *)ekv__alloc((size_t)c->reps, sizeof(double));
    if (!report->samples_ms) { r = EKV_ERR_OUT_OF_MEMORY; goto done; }
    report->sample_count = (size_t)c->reps;
    timing.cand = &cand;
    timing.base = &base;
    timing.work = w;
    timing.scale = scale;
    timing.out = out;
    timing.inner_loops = c->inner_loops;
    timing.report = report;
    if ((r = ekv_time_abab(c->warmup, c->reps, c->paired_baseline, ekv__cpu_timed_sample,
                           &timing)) != EKV_SUCCESS)
        goto done;
    r = ekv_report_finish(report);
done:
    ekv__cpu_set_free(&cand);
    ekv__cpu_set_free(&base);
    ekv__free(out);
    return r;
}


/* >>cycle: the inference cycle on the host: model, CPU decode loop, results, JSON ====== */

/* Shared by both backends: the seeded model (weights and inputs), the projection that
   both the decode step and nocache's recompute use (so that their k and v agree bit for
   bit), the capacity of each variant's cache, the memory estimate, the assembly of a
   ekv_cycle_result from raw timings, the serving simulation (--page-size), and the JSON
   and table of the cycle. The CPU backend's decode loop follows; ekv_cuda.cuh (>>cycle)
   has the device one. */


static const char *const ekv__phase_names[EKV_CYCLE_PHASES] = {"projection", "append", "compress",
                                                               "attention"};

/* The variants `all` stands for, in this order. */
static const ekv_variant ekv__cycle_variants[6] = {EKV_VARIANT_NOCACHE, EKV_VARIANT_CACHE,
                                                   EKV_VARIANT_INT8,    EKV_VARIANT_SHARED,
                                                   EKV_VARIANT_INT8_SHARED, EKV_VARIANT_ELASTIC};


static int ekv__cycle_is_int8(ekv_variant v)
{
    return ekv__variant_table[v].int8;
}

static int ekv__cycle_is_shared(ekv_variant v)
{
    return ekv__variant_table[v].shared;
}

EKV_DEF ekv_dtype ekv_cycle_dtype(const ekv_config *c, ekv_variant v)
{
    return ekv__cycle_is_int8(v) ? EKV_DTYPE_INT8 : c->kv_dtype;
}

EKV_DEF int ekv_cycle_cache_layer(ekv_variant v, int layer)
{
    return ekv__cycle_is_shared(v) && layer % 2 == 1 ? layer - 1 : layer;
}

EKV_DEF int ekv_cycle_cache_index(ekv_variant v, int layer)
{
    if (v == EKV_VARIANT_NOCACHE) return 0;
    return ekv__cycle_is_shared(v) ? ekv_cycle_cache_layer(v, layer) / 2 : layer;
}

EKV_DEF int ekv_cycle_cache_count(ekv_variant v, int layers)
{
    if (v == EKV_VARIANT_NOCACHE) return 1; /* one scratch cache, rebuilt each layer and step */
    return ekv__cycle_is_shared(v) ? (layers + 1) / 2 : layers;
}

EKV_DEF int ekv_cycle_anchor(const ekv_cycle_model *m, ekv_variant v, int step)
{
    return v == EKV_VARIANT_ELASTIC && m->compress.policy != EKV_POLICY_NONE &&
           step % m->compress_every == 0;
}

/* Whether the variant runs its elastic step after step t of a sequence's life (t = 0:
   the prefill's, over the prompt; then the anchor steps, as ekv_cycle_anchor), and that
   step's effect on one sequence's length and compressed count: what
   ekv_cycle_capacity and the serving simulation follow a sequence with. */
static int ekv__cycle_elastic_at(const ekv_config *c, ekv_variant v, int t)
{
    return v == EKV_VARIANT_ELASTIC && c->policy != EKV_POLICY_NONE &&
           (t == 0 || t % c->compress_every == 0);
}

static void ekv__cycle_elastic_lengths(const ekv_config *c, int *length, int *compressed)
{
    const ekv_compress_region r =
        ekv_compress_region_of(*length, *compressed, c->recent, c->sinks, c->compression);
    if (r.old > 0) {
        *compressed = r.first + r.budget;
        *length = *compressed + r.recent;
    }
}

/* Slots the cache of `v` needs: prompt + steps, or for elastic the largest length the
   sequence of prefill, elastic step, appends and anchor steps reaches (at least the
   prompt, which prefill writes before compressing). */
EKV_DEF int ekv_cycle_capacity(const ekv_config *c, ekv_variant v)
{
    int length = c->seq_len, compressed = 0, most = c->seq_len, t;
    if (v != EKV_VARIANT_ELASTIC || c->policy == EKV_POLICY_NONE) return c->seq_len + c->decode_tokens;
    for (t = 0; t <= c->decode_tokens; t++) {
        if (t > 0) {
            length++;
            if (length > most) most = length;
        }
        if (ekv__cycle_elastic_at(c, v, t)) ekv__cycle_elastic_lengths(c, &length, &compressed);
    }
    return most;
}

static double ekv__cycle_model_bytes(const ekv_config *c)
{
    const double hidden = (double)c->heads * c->head_dim;
    const int kv_heads = c->kv_heads;
    const double weights = hidden * (double)(c->heads + 2 * kv_heads) * c->head_dim;
    const double inputs = (double)c->batch * (c->seq_len + c->decode_tokens) * hidden;
    return 4.0 * c->layers * (weights + inputs);
}

/* The variant's state: caches at capacity, the per-step vectors, nocache's recompute
   buffers, topk's observed queries. */
static double ekv__cycle_state_bytes(const ekv_config *c, ekv_variant v)
{
    const int kv_heads = c->kv_heads;
    const int tokens = c->seq_len + c->decode_tokens;
    const double hidden = (double)c->heads * c->head_dim;
    const ekv_dtype dtype = ekv_cycle_dtype(c, v);
    const int with_bias = v == EKV_VARIANT_ELASTIC && c->policy == EKV_POLICY_POOL;
    double bytes = ekv_cycle_cache_count(v, c->layers) *
                   ekv_cache_memory_of(dtype, c->batch, kv_heads, c->head_dim,
                                                v == EKV_VARIANT_NOCACHE ? tokens
                                                                         : ekv_cycle_capacity(c, v),
                                                with_bias);
    bytes += 4.0 * c->batch * (hidden + 2.0 * kv_heads * c->head_dim) * (1 + c->layers); /* q k v, out */
    if (v == EKV_VARIANT_NOCACHE)
        bytes += 4.0 * c->batch * tokens * 2.0 * kv_heads * c->head_dim * 2.0; /* K, V and rows */
    if (v == EKV_VARIANT_ELASTIC && c->policy == EKV_POLICY_TOPK)
        bytes += 4.0 * c->batch * hidden * c->observe * (c->layers + 1);
    return bytes;
}

EKV_DEF double ekv_cycle_memory_estimate(const ekv_config *config, ekv_variant v)
{
    ekv_config resolved;
    const ekv_config *c = &resolved;
    double most = 0.0;
    int i;
    if (!config) return 0.0;
    resolved = ekv_config_resolve(config);
    if (v != EKV_VARIANT_ALL)
        return ekv__cycle_model_bytes(c) + ekv__cycle_state_bytes(c, v) +
               (c->paired_baseline ? ekv__cycle_state_bytes(c, EKV_VARIANT_CACHE) : 0.0);
    for (i = 0; i < 6; i++) {
        double b = ekv__cycle_state_bytes(c, ekv__cycle_variants[i]);
        if (b > most) most = b;
    }
    /* a variant and the cache it is compared with live together */
    return ekv__cycle_model_bytes(c) + most + ekv__cycle_state_bytes(c, EKV_VARIANT_CACHE);
}

/* ---- the serving simulation (see ekv_serve_run) ---- */

EKV_DEF void ekv_serve_prompt_range(const ekv_config *c, int *lo, int *hi)
{
    *lo = c->seq_len - c->seq_len / 2;
    *hi = c->seq_len + c->seq_len / 2;
}

EKV_DEF int ekv_serve_prompt_length(const ekv_config *c, int index)
{
    ekv_rng rng;
    int lo, hi;
    ekv_serve_prompt_range(c, &lo, &hi);
    /* a stream per sequence, so that its draw does not depend on how many come before */
    ekv_rng_seed(&rng, (c->seed ^ 0x5e4e5e4e5e4e5e4eULL) + (uint64_t)index * 0x9e3779b97f4a7c15ULL);
    return lo + (int)ekv_rng_below(&rng, (uint64_t)(hi - lo + 1));
}

EKV_DEF double ekv_serve_page_bytes(const ekv_config *config, ekv_variant v)
{
    const ekv_config c = ekv_config_resolve(config);
    const ekv_dtype dtype = ekv_cycle_dtype(&c, v);
    if (!c.page_size || (unsigned)v >= EKV_VARIANT_ALL) return 0.0;
    if (v == EKV_VARIANT_NOCACHE)
        return (double)c.page_size * 4.0 * c.heads * c.head_dim * c.layers +
               (double)ekv_paged_page_bytes(dtype, c.kv_heads, c.head_dim, c.page_size, 0);
    return (double)ekv_cycle_cache_count(v, c.layers) *
           (double)ekv_paged_page_bytes(dtype, c.kv_heads, c.head_dim, c.page_size,
                                        v == EKV_VARIANT_ELASTIC && c.policy == EKV_POLICY_POOL);
}

EKV_DEF double ekv_serve_budget_pages(const ekv_config *c, ekv_variant v)
{
    const double page = ekv_serve_page_bytes(c, v);
    return page > 0.0 ? floor(c->memory_budget_gb * 1e9 / page) : 0.0;
}

EKV_DEF int ekv_serve_variants(const ekv_config *c, ekv_variant *variants)
{
    int i, count = 0;
    for (i = 0; i < 6; i++)
        if (c->layers >= 2 || !ekv__cycle_is_shared(ekv__cycle_variants[i]))
            variants[count++] = ekv__cycle_variants[i];
    return count;
}

static void ekv__serve_note(const ekv_paged_cache *pool, ekv_serve_figures *f)
{
    const int used = ekv_paged_pages_used(pool);
    if (used > f->pages_in_use_peak) {
        f->pages_in_use_peak = used;
        f->pages_free_at_peak = pool->free_count;
    }
}

EKV_DEF ekv_result ekv_serve_run(const ekv_config *config, ekv_variant v, int pool_pages, int batch,
                                 int *fits, ekv_serve_figures *out)
{
    const char *fn = "ekv_serve_run";
    ekv_config c;
    ekv_paged_cache pool;
    int *length = NULL, *compressed = NULL;
    int lo, hi, i, t, short_of_pages = 0;
    ekv_result r;
    if (!config || !fits || !out || (unsigned)v >= EKV_VARIANT_ALL || batch < 1 || pool_pages < 1)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: NULL argument, variant all, or a batch (%d) "
                             "or pool (%d pages) below 1", fn, batch, pool_pages);
    c = ekv_config_resolve(config);
    *fits = 0;
    memset(out, 0, sizeof *out);
    out->batch = batch;
    out->pool_pages = pool_pages;
    out->pages_free_at_peak = pool_pages;
    ekv_serve_prompt_range(&c, &lo, &hi);
    if ((r = ekv_paged_pool_create(&pool, batch, c.page_size, pool_pages, hi + c.decode_tokens)) !=
        EKV_SUCCESS)
        return r;
    length = (int *)ekv__alloc((size_t)batch, sizeof(int));
    compressed = (int *)ekv__alloc((size_t)batch, sizeof(int));
    if (!length || !compressed) {
        r = EKV_ERR_OUT_OF_MEMORY;
        goto done;
    }
/* a resize that finds too few free pages ends the run: it does not fit */
#define EKV__SERVE_RESIZE(b)                                                         \
    do {                                                                            \
        r = ekv_paged_resize(&pool, (b), length[(b)]);                              \
        if (r == EKV_ERR_OUT_OF_MEMORY) short_of_pages = 1;                         \
        if (r != EKV_SUCCESS) goto done;                                            \
    } while (0)
    for (i = 0; i < batch; i++) {
        length[i] = ekv_serve_prompt_length(&c, i);
        EKV__SERVE_RESIZE(i);
        ekv__serve_note(&pool, out);
        if (ekv__cycle_elastic_at(&c, v, 0)) {
            ekv__cycle_elastic_lengths(&c, &length[i], &compressed[i]);
            EKV__SERVE_RESIZE(i);
        }
    }
    for (t = 1; t <= c.decode_tokens; t++) {
        for (i = 0; i < batch; i++) {
            length[i]++;
            EKV__SERVE_RESIZE(i);
        }
        ekv__serve_note(&pool, out);
        if (ekv__cycle_elastic_at(&c, v, t))
            for (i = 0; i < batch; i++) {
                ekv__cycle_elastic_lengths(&c, &length[i], &compressed[i]);
                EKV__SERVE_RESIZE(i);
            }
    }
#undef EKV__SERVE_RESIZE
    out->pages_in_use_end = ekv_paged_pages_used(&pool);
    out->pages_free_end = pool.free_count;
    if ((r = ekv_paged_check(&pool)) != EKV_SUCCESS) goto done;
    for (i = 0; i < batch && r == EKV_SUCCESS; i++) r = ekv_paged_retire(&pool, i);
    if (r == EKV_SUCCESS) r = ekv_paged_check(&pool);
    if (r == EKV_SUCCESS && pool.free_count != pool_pages)
        r = ekv_set_error(EKV_ERR_INVALID_ARG, "%s: %d pages held after every sequence retired", fn,
                          pool_pages - pool.free_count);
    if (r == EKV_SUCCESS) *fits = 1;
done:
    if (short_of_pages) r = EKV_SUCCESS; /* *fits stays 0 */
    ekv_paged_free(&pool);
    ekv__free(length);
    ekv__free(compressed);
    return r;
}

EKV_DEF ekv_result ekv_serve_max_batch(const ekv_config *config, ekv_variant v, int pool_pages,
                                       ekv_serve_figures *out)
{
    ekv_serve_figures probe_figures;
    int good = 0, bad, probe = 1, fits = 0;
    ekv_result r;
    memset(&probe_figures, 0, sizeof probe_figures); /* set by ekv_serve_run; gcc -O3 cannot see it */
    if (!out || pool_pages < 1)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "ekv_serve_max_batch: NULL figures or a pool of "
                             "%d pages", pool_pages);
    memset(out, 0, sizeof *out);
    out->pool_pages = out->pages_free_at_peak = out->pages_free_end = pool_pages;
    /* each sequence holds a page at least, so pool_pages + 1 never fits */
    bad = pool_pages + 1;
    for (;;) {
        if ((r = ekv_serve_run(config, v, pool_pages, probe, &fits, &probe_figures)) != EKV_SUCCESS)
            return r;
        if (!fits) {
            bad = probe;
            break;
        }
        good = probe;
        *out = probe_figures;
        if (probe == pool_pages) break;
        probe = probe > pool_pages / 2 ? pool_pages : 2 * probe;
    }
    while (bad - good > 1) {
        const int middle = good + (bad - good) / 2;
        if ((r = ekv_serve_run(config, v, pool_pages, middle, &fits, &probe_figures)) != EKV_SUCCESS)
            return r;
        if (fits) {
            good = middle;
            *out = probe_figures;
        } else {
            bad = middle;
        }
    }
    return EKV_SUCCESS;
}

/* Pages a contiguous cache reserves per sequence: its capacity, the longest prompt plus
   the decode steps, in pages. */
static int ekv__serve_contiguous_pages(const ekv_config *c)
{
    int lo, hi;
    ekv_serve_prompt_range(c, &lo, &hi);
    return (hi + c->decode_tokens + c->page_size - 1) / c->page_size;
}

EKV_DEF ekv_result ekv_serve_simulate(const ekv_config *config, ekv_serve_result *out)
{
    const char *fn = "ekv_serve_simulate";
    ekv_config c;
    ekv_variant list[EKV_SERVE_VARIANTS];
    int i, fits;
    ekv_result r;
    if (!config || !out) return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: NULL argument", fn);
    c = ekv_config_resolve(config);
    memset(out, 0, sizeof *out);
    if (!ekv_page_size_valid(c.page_size))
        return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: --page-size=%d: allowed 8, 16, 32, 64", fn,
                             c.page_size);
    out->page_size = c.page_size;
    out->decode_tokens = c.decode_tokens;
    out->batch = c.batch;
    out->seed = c.seed;
    out->memory_budget_gb = c.memory_budget_gb;
    ekv_serve_prompt_range(&c, &out->prompt_min, &out->prompt_max);
    out->count = ekv_serve_variants(&c, list);
    for (i = 0; i < out->count; i++) {
        ekv_serve_variant *y = &out->variants[i];
        y->variant = list[i];
        y->kv_dtype = ekv_cycle_dtype(&c, list[i]);
        y->page_bytes = ekv_serve_page_bytes(&c, list[i]);
        r = ekv_serve_run(&c, list[i], c.batch * ekv__serve_contiguous_pages(&c), c.batch, &fits,
                          &y->serving);
        if (r == EKV_SUCCESS && !fits)
            r = ekv_set_error(EKV_ERR_INVALID_ARG, "%s: --batch=%d does not fit the pages a contiguous "
                              "cache reserves for it (%s)", fn, c.batch, ekv_variant_name(list[i]));
        if (r != EKV_SUCCESS) return r;
        if (c.memory_budget_gb > 0.0) {
            const double pages = ekv_serve_budget_pages(&c, list[i]);
            if (!(pages >= 1.0 && pages <= EKV_SERVE_POOL_PAGES_MAX))
                return ekv_set_error(EKV_ERR_INVALID_ARG, "--memory-budget=%g: %.0f pages for "
                                     "--variant=%s: allowed 1..%d", c.memory_budget_gb, pages,
                                     ekv_variant_name(list[i]), EKV_SERVE_POOL_PAGES_MAX);
            y->has_budget = 1;
            if ((r = ekv_serve_max_batch(&c, list[i], (int)pages, &y->budget)) != EKV_SUCCESS)
                return r;
            if (y->budget.batch < 1)
                return ekv_set_error(EKV_ERR_INVALID_ARG, "--memory-budget=%g GB holds no sequence of "
                                     "--variant=%s", c.memory_budget_gb, ekv_variant_name(list[i]));
        }
    }
    return EKV_SUCCESS;
}

/* The serving simulation's settings, for ekv_config_validate: a page size for the pool,
   pools small enough to keep (EKV_SERVE_POOL_PAGES_MAX), and a budget that holds the
   first sequence of every variant (its pages at its largest, from a run of it alone). */
static ekv_result ekv__config_validate_serve(const ekv_config *c)
{
    ekv_variant list[EKV_SERVE_VARIANTS];
    int lo, hi, i, count, need[EKV_SERVE_VARIANTS], fits;
    double pages[EKV_SERVE_VARIANTS], least_gb = 0.0;
    ekv_result r;
    if (c->memory_budget_gb > 0.0 && c->page_size == 0)
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "--memory-budget=%g needs the serving simulation's page size: allowed "
                             "with --page-size=8, 16, 32 or 64", c->memory_budget_gb);
    if (c->page_size == 0) return EKV_SUCCESS;
    ekv_serve_prompt_range(c, &lo, &hi);
    if ((long long)hi + c->decode_tokens > (1LL << 24))
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "--seq=%d: the serving simulation's longest prompt (%d = 1.5 x --seq) "
                             "plus --decode_tokens=%d exceeds %d tokens", c->seq_len, hi,
                             c->decode_tokens, 1 << 24);
    if ((double)c->batch * ekv__serve_contiguous_pages(c) > EKV_SERVE_POOL_PAGES_MAX)
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "--page-size=%d: --batch=%d sequences of up to %d tokens are %.0f pages, "
                             "more than the serving simulation's %d: allowed a larger --page-size or "
                             "a smaller --batch or --seq", c->page_size, c->batch,
                             hi + c->decode_tokens,
                             (double)c->batch * ekv__serve_contiguous_pages(c), EKV_SERVE_POOL_PAGES_MAX);
    if (c->memory_budget_gb == 0.0) return EKV_SUCCESS;
    count = ekv_serve_variants(c, list);
    for (i = 0; i < count; i++) {
        ekv_serve_figures alone;
        pages[i] = ekv_serve_budget_pages(c, list[i]);
        if (pages[i] > EKV_SERVE_POOL_PAGES_MAX)
            return ekv_set_error(EKV_ERR_INVALID_ARG,
                                 "--memory-budget=%g gives --variant=%s a pool of %.0f pages of %d "
                                 "tokens, more than the serving simulation's %d: allowed a smaller "
                                 "budget or a larger --page-size", c->memory_budget_gb,
                                 ekv_variant_name(list[i]), pages[i], c->page_size,
                                 EKV_SERVE_POOL_PAGES_MAX);
        r = ekv_serve_run(c, list[i], ekv__serve_contiguous_pages(c), 1, &fits, &alone);
        if (r != EKV_SUCCESS) return r;
        need[i] = alone.pages_in_use_peak;
        if (need[i] * ekv_serve_page_bytes(c, list[i]) * 1e-9 > least_gb)
            least_gb = need[i] * ekv_serve_page_bytes(c, list[i]) * 1e-9;
    }
    for (i = 0; i < count; i++)
        if (pages[i] < need[i])
            return ekv_set_error(EKV_ERR_INVALID_ARG,
                                 "--memory-budget=%g holds %.0f pages of %d tokens for --variant=%s, "
                                 "too few for one sequence (%d pages at its largest): allowed at "
                                 "least %.6g GB (every variant's first sequence)", c->memory_budget_gb,
                                 pages[i], c->page_size, ekv_variant_name(list[i]), need[i], least_gb);
    return EKV_SUCCESS;
}

/* Called by ekv_config_validate when config->inference is set. */
EKV_DEF void ekv_cycle_model_free(ekv_cycle_model *m)
{
    ekv__free(m->wq);
    ekv__free(m->wk);
    ekv__free(m->wv);
    ekv__free(m->x);
    memset(m, 0, sizeof *m);
}

static void ekv__cycle_fill_normal(float *out, size_t n, uint64_t seed, double scale)
{
    ekv_rng rng;
    size_t i;
    ekv_rng_seed(&rng, seed);
    for (i = 0; i < n; i++) out[i] = (float)(ekv_rng_normal(&rng) * scale);
}

/* Seeded per layer and per tensor: the same config gives the same model on any backend. */
EKV_DEF ekv_result ekv_cycle_model_make(const ekv_config *c, ekv_cycle_model *m)
{
    size_t wq_n, wkv_n, x_n;
    int l;
    memset(m, 0, sizeof *m);
    m->batch = c->batch;
    m->heads = c->heads;
    m->kv_heads = c->kv_heads;
    m->head_dim = c->head_dim;
    m->layers = c->layers;
    m->prompt = c->seq_len;
    m->steps = c->decode_tokens;
    m->tokens = m->prompt + m->steps;
    m->hidden = m->heads * m->head_dim;
    m->observe = c->observe;
    m->compress_every = c->compress_every;
    m->compress.policy = c->policy;
    m->compress.compression = c->compression;
    m->compress.recent = c->recent;
    m->compress.sinks = c->sinks;
    m->compress.observe = c->observe;
    m->softmax_scale = c->softmax_scale;
    wq_n = (size_t)m->hidden * (size_t)m->hidden;
    wkv_n = (size_t)m->hidden * (size_t)m->kv_heads * (size_t)m->head_dim;
    x_n = (size_t)m->batch * (size_t)m->tokens * (size_t)m->hidden;
    m->wq = (float *)ekv__alloc((size_t)m->layers * wq_n, sizeof(float));
    m->wk = (float *)ekv__alloc((size_t)m->layers * wkv_n, sizeof(float));
    m->wv = (float *)ekv__alloc((size_t)m->layers * wkv_n, sizeof(float));
    m->x = (float *)ekv__alloc((size_t)m->layers * x_n, sizeof(float));
    if (!m->wq || !m->wk || !m->wv || !m->x) {
        ekv_cycle_model_free(m);
        return EKV_ERR_OUT_OF_MEMORY;
    }
    for (l = 0; l < m->layers; l++) {
        const uint64_t base = c->seed * 0x9e3779b97f4a7c15ULL + (uint64_t)l * 8u;
        const double w_scale = 1.0 / sqrt((double)m->hidden);
        ekv__cycle_fill_normal(m->wq + (size_t)l * wq_n, wq_n, base + 1, w_scale);
        ekv__cycle_fill_normal(m->wk + (size_t)l * wkv_n, wkv_n, base + 2, w_scale);
        ekv__cycle_fill_normal(m->wv + (size_t)l * wkv_n, wkv_n, base + 3, w_scale);
        ekv__cycle_fill_normal(m->x + (size_t)l * x_n, x_n, base + 4, 1.0);
    }
    return EKV_SUCCESS;
}

EKV_DEF const float *ekv_cycle_model_x(const ekv_cycle_model *m, int layer, int b, int token)
{
    return m->x + (((size_t)layer * (size_t)m->batch + (size_t)b) * (size_t)m->tokens + (size_t)token) *
                      (size_t)m->hidden;
}

/* out[r][j] = sum_k x[r][k] w[k][j], k in increasing order for every element, in blocks
   of four rows that share each row of w: the single-token projection and nocache's
   recompute both come here, so each k and v is the same float either way. */
#define EKV__PROJECT_BLOCK 4
static void ekv__cycle_project(const float *x, size_t x_stride, int rows, int hidden, const float *w,
                               int n, float *out)
{
    int r0, r, k, j;
    for (r0 = 0; r0 < rows; r0 += EKV__PROJECT_BLOCK) {
        const int count = rows - r0 < EKV__PROJECT_BLOCK ? rows - r0 : EKV__PROJECT_BLOCK;
        for (r = 0; r < count; r++) memset(out + (size_t)(r0 + r) * (size_t)n, 0, (size_t)n * sizeof(float));
        for (k = 0; k < hidden; k++) {
            const float *wk = w + (size_t)k * (size_t)n;
            for (r = 0; r < count; r++) {
                const float xv = x[(size_t)(r0 + r) * x_stride + (size_t)k];
                float *o = out + (size_t)(r0 + r) * (size_t)n;
                for (j = 0; j < n; j++) o[j] += xv * wk[j];
            }
        }
    }
}

/* ---- assembling a result from raw timings (both backends) ---- */


static void ekv__cycle_timing_free(ekv_cycle_timing *t)
{
    ekv__free(t->step_ms);
    ekv__free(t->phase_ms);
    ekv__free(t->kv_bytes);
    ekv__free(t->peak_bytes);
    memset(t, 0, sizeof *t);
}

static ekv_result ekv__cycle_timing_make(ekv_cycle_timing *t, int reps, int steps)
{
    memset(t, 0, sizeof *t);
    t->reps = reps;
    t->steps = steps;
    t->step_ms = (double *)ekv__alloc((size_t)reps * (size_t)steps, sizeof(double));
    t->phase_ms = (double *)ekv__alloc((size_t)reps * EKV_CYCLE_PHASES, sizeof(double));
    t->kv_bytes = (double *)ekv__alloc((size_t)steps, sizeof(double));
    t->peak_bytes = (double *)ekv__alloc((size_t)steps, sizeof(double));
    if (!t->step_ms || !t->phase_ms || !t->kv_bytes || !t->peak_bytes) {
        ekv__cycle_timing_free(t);
        return EKV_ERR_OUT_OF_MEMORY;
    }
    return EKV_SUCCESS;
}

static double ekv__cycle_rep_total(const ekv_cycle_timing *t, int rep)
{
    double total = 0.0;
    int s;
    for (s = 0; s < t->steps; s++) total += t->step_ms[(size_t)rep * (size_t)t->steps + (size_t)s];
    return total;
}

/* Fills `out` from the variant's timings and, when paired, the baseline's (NULL
   otherwise). The agreement fields are filled by the caller. */
static ekv_result ekv__cycle_result_fill(const ekv_config *c, const ekv_cycle_model *m,
                                         ekv_variant v, const ekv_cycle_timing *t,
                                         const ekv_cycle_timing *baseline, ekv_cycle_result *out)
{
    const int reps = t->reps, steps = t->steps;
    double *column = NULL;
    ekv_result r;
    int i, s, p;
    memset(out, 0, sizeof *out);
    out->variant = v;
    out->decode_tokens = steps;
    out->layers = m->layers;
    out->kv_dtype = ekv_cycle_dtype(c, v);
    out->agreement_max_abs_diff = ekv__nan();
    out->baseline_total_ms = out->baseline_tokens_per_sec = ekv__nan();
    out->speedup = out->speedup_ci_lo = out->speedup_ci_hi = ekv__nan();
    out->samples_ms = (double *)ekv__alloc((size_t)reps * 2u, sizeof(double));
    out->series = (ekv_series_point *)ekv__alloc((size_t)steps, sizeof(ekv_series_point));
    column = (double *)ekv__alloc((size_t)reps, sizeof(double));
    if (!out->samples_ms || !out->series || !column) {
        ekv__free(column);
        return EKV_ERR_OUT_OF_MEMORY;
    }
    out->sample_count = (size_t)reps;
    for (i = 0; i < reps; i++) out->samples_ms[i] = ekv__cycle_rep_total(t, i);
    /* the statistic of total_ms, so that a phase and the total are read alike */
    for (p = 0; p < EKV_CYCLE_PHASES; p++) {
        for (i = 0; i < reps; i++) column[i] = t->phase_ms[(size_t)i * EKV_CYCLE_PHASES + (size_t)p];
        out->phases_ms[p] = ekv_median(column, (size_t)reps);
    }
    r = ekv_stats_compute(out->samples_ms, (size_t)reps, c->truncate_percent, c->seed, &out->stats);
    if (r != EKV_SUCCESS) {
        ekv__free(column);
        return r;
    }
    out->total_ms = out->stats.median;
    out->tokens_per_sec = (double)m->batch * steps * 1000.0 / out->total_ms;
    for (s = 0; s < steps; s++) {
        for (i = 0; i < reps; i++) column[i] = t->step_ms[(size_t)i * (size_t)steps + (size_t)s];
        out->series[s].step = s + 1;
        out->series[s].context_len = m->prompt + s + 1;
        out->series[s].latency_ms = ekv_median(column, (size_t)reps);
        out->series[s].kv_cache_bytes = t->kv_bytes[s];
        out->series[s].peak_device_bytes = t->peak_bytes[s];
    }
    out->series_count = steps;
    out->kv_cache_bytes = t->kv_bytes[steps - 1];
    out->peak_device_bytes = t->peak_bytes[steps - 1];
    ekv__free(column);
    if (baseline) {
        out->has_baseline = 1;
        out->baseline_samples_ms = out->samples_ms + reps;
        for (i = 0; i < reps; i++) out->baseline_samples_ms[i] = ekv__cycle_rep_total(baseline, i);
        out->baseline_total_ms = ekv_median(out->baseline_samples_ms, (size_t)reps);
        out->baseline_tokens_per_sec = (double)m->batch * steps * 1000.0 / out->baseline_total_ms;
        r = ekv_bootstrap_ratio(out->baseline_samples_ms, out->samples_ms, (size_t)reps,
                                EKV_BOOTSTRAP_RESAMPLES, c->seed ^ 0x9e3779b97f4a7c15ULL,
                                &out->speedup, &out->speedup_ci_lo, &out->speedup_ci_hi);
        if (r != EKV_SUCCESS) return r;
    }
    return EKV_SUCCESS;
}

/* The last step's outputs of the variant against the reference (cache's). */
static void ekv__cycle_agreement(const ekv_cycle_model *m, const float *ref, const float *x,
                                 ekv_cycle_result *out)
{
    const size_t per_layer = (size_t)m->batch * (size_t)m->heads * (size_t)m->head_dim;
    double *ref64 = (double *)ekv__alloc(per_layer, sizeof(double));
    size_t i;
    int l;
    out->has_agreement = 1;
    out->agreement_max_abs_diff = 0.0;
    out->agreement_bitwise_equal = memcmp(ref, x, per_layer * (size_t)m->layers * sizeof(float)) == 0;
    for (i = 0; i < per_layer * (size_t)m->layers; i++) {
        double d = fabs((double)ref[i] - (double)x[i]);
        if (!(d <= out->agreement_max_abs_diff)) out->agreement_max_abs_diff = d;
    }
    for (l = 0; l < m->layers && ref64; l++) {
        for (i = 0; i < per_layer; i++) ref64[i] = ref[(size_t)l * per_layer + i];
        out->error_vs_cache[l] = ekv_compare_f32(ref64, x + (size_t)l * per_layer, per_layer);
    }
    ekv__free(ref64);
}

/* The report-level figures of a cycle run: results/statistics over the per-step time
   (decode loop / steps) of the first variant, so that results.tokens_per_sec equals the
   cycle's tokens/s; metrics from the KV bytes the last step's attention read. */
static ekv_result ekv__cycle_report_finish(ekv_report *report)
{
    const ekv_cycle_result *first = &report->cycles[0];
    const double steps = (double)first->decode_tokens;
    size_t i;
    report->samples_ms = (double *)ekv__alloc(first->sample_count, sizeof(double));
    if (!report->samples_ms) return EKV_ERR_OUT_OF_MEMORY;
    report->sample_count = first->sample_count;
    for (i = 0; i < first->sample_count; i++) report->samples_ms[i] = first->samples_ms[i] / steps;
    if (first->has_baseline) {
        report->baseline_samples_ms = (double *)ekv__alloc(first->sample_count, sizeof(double));
        if (!report->baseline_samples_ms) return EKV_ERR_OUT_OF_MEMORY;
        report->baseline_sample_count = first->sample_count;
        for (i = 0; i < first->sample_count; i++)
            report->baseline_samples_ms[i] = first->baseline_samples_ms[i] / steps;
        report->has_baseline = 1;
    }
    report->kv_cache_bytes_uncompressed = ekv__nan();
    report->peak_device_bytes = first->peak_device_bytes;
    report->accuracy.total.rel_l2 = report->accuracy.total.max_abs = report->accuracy.total.cosine =
        ekv__nan();
    report->accuracy.compression = report->accuracy.kernel = report->accuracy.total;
    report->accuracy.attention_entropy = report->accuracy.top5pct_mass = ekv__nan();
    {
        ekv_result r = ekv_report_finish(report);
        report->kv_cache_bytes = first->kv_cache_bytes; /* in use, not the bytes read */
        return r;
    }
}

/* Metrics of one decode step: the KV bytes every layer's attention reads (a shared
   cache is read by both of its layers). */
static void ekv__cycle_step_bytes(ekv_report *report, const ekv_cycle_backend *backend,
                                  void *state, const ekv_cycle_model *m)
{
    int l;
    memset(&report->cache_bytes, 0, sizeof report->cache_bytes);
    report->kept_tokens_total = 0.0;
    for (l = 0; l < m->layers; l++) {
        ekv_cache_bytes bytes;
        double kept = 0.0;
        backend->layer_bytes(state, l, &bytes, &kept);
        report->cache_bytes.k += bytes.k;
        report->cache_bytes.v += bytes.v;
        report->cache_bytes.scales += bytes.scales;
        report->cache_bytes.bias += bytes.bias;
        report->cache_bytes.total += bytes.total;
        report->kept_tokens_total += kept;
    }
}

/* ---- the CPU decode loop ---- */

typedef struct ekv__cycle_cpu {
    const ekv_cycle_model *model;
    ekv_variant variant;
    int cache_count;
    ekv_host_cache *caches;
    int *lengths;        /* [batch] */
    float *q, *k, *v;    /* [batch][heads x D], [batch][kv_heads x D] */
    float *out;          /* [layers][batch][heads][D]: each layer's latest attention output */
    float *q_ring;       /* topk: [layers][batch][heads][observe][D], slot = count % observe */
    int *ring_count;     /* [layers] */
    float *q_observe;    /* [batch][heads][observe][D], gathered in time order */
    float *k_all, *v_all; /* nocache: [batch][kv_heads][tokens][D]; prefill: the prompt */
    float *rows;         /* [tokens][kv_heads x D] */
    double state_bytes;  /* allocated for the state, without nocache's growing inputs */
    ekv_cpu_options options;
} ekv__cycle_cpu;

static void ekv__cycle_cpu_free(ekv__cycle_cpu *s)
{
    int i;
    for (i = 0; i < s->cache_count && s->caches; i++) ekv_cache_free(&s->caches[i]);
    ekv__free(s->caches);
    ekv__free(s->lengths);
    ekv__free(s->q);
    ekv__free(s->k);
    ekv__free(s->v);
    ekv__free(s->out);
    ekv__free(s->q_ring);
    ekv__free(s->ring_count);
    ekv__free(s->q_observe);
    ekv__free(s->k_all);
    ekv__free(s->v_all);
    ekv__free(s->rows);
    memset(s, 0, sizeof *s);
}

static ekv_result ekv__cycle_cpu_make(const ekv_config *c, const ekv_cycle_model *m, ekv_variant v,
                                      ekv__cycle_cpu *s)
{
    const size_t kv_width = (size_t)m->kv_heads * (size_t)m->head_dim;
    const int topk = v == EKV_VARIANT_ELASTIC && m->compress.policy == EKV_POLICY_TOPK;
    const int with_bias = v == EKV_VARIANT_ELASTIC && m->compress.policy == EKV_POLICY_POOL;
    const int capacity = v == EKV_VARIANT_NOCACHE ? m->tokens : ekv_cycle_capacity(c, v);
    ekv_result r;
    int i;
    memset(s, 0, sizeof *s);
    s->variant = v;
    s->options.threads = c->threads;
    s->caches = (ekv_host_cache *)ekv__alloc((size_t)ekv_cycle_cache_count(v, m->layers),
                                             sizeof(ekv_host_cache));
    s->lengths = (int *)ekv__alloc((size_t)m->batch, sizeof(int));
    s->q = (float *)ekv__alloc((size_t)m->batch * (size_t)m->hidden, sizeof(float));
    s->k = (float *)ekv__alloc((size_t)m->batch * kv_width, sizeof(float));
    s->v = (float *)ekv__alloc((size_t)m->batch * kv_width, sizeof(float));
    s->out = (float *)ekv__alloc((size_t)m->layers * (size_t)m->batch * (size_t)m->hidden, sizeof(float));
    s->k_all = (float *)ekv__alloc((size_t)m->batch * (size_t)m->tokens * kv_width, sizeof(float));
    s->v_all = (float *)ekv__alloc((size_t)m->batch * (size_t)m->tokens * kv_width, sizeof(float));
    s->rows = (float *)ekv__alloc((size_t)m->tokens * kv_width, sizeof(float));
    if (topk) {
        s->q_ring = (float *)ekv__alloc((size_t)m->layers * (size_t)m->batch * (size_t)m->hidden *
                                            (size_t)m->observe, sizeof(float));
        s->ring_count = (int *)ekv__alloc((size_t)m->layers, sizeof(int));
        s->q_observe = (float *)ekv__alloc((size_t)m->batch * (size_t)m->hidden * (size_t)m->observe,
                                           sizeof(float));
    }
    if (!s->caches || !s->lengths || !s->q || !s->k || !s->v || !s->out || !s->k_all || !s->v_all ||
        !s->rows || (topk && (!s->q_ring || !s->ring_count || !s->q_observe))) {
        ekv__cycle_cpu_free(s);
        return EKV_ERR_OUT_OF_MEMORY;
    }
    for (i = 0; i < ekv_cycle_cache_count(v, m->layers); i++) {
        r = ekv_cache_create(&s->caches[i], ekv_cycle_dtype(c, v), m->batch, m->kv_heads,
                             m->head_dim, capacity, with_bias);
        if (r != EKV_SUCCESS) {
            ekv__cycle_cpu_free(s);
            return r;
        }
        s->cache_count++;
        s->state_bytes += (double)ekv_cache_memory_bytes(&s->caches[i]);
    }
    s->state_bytes += 4.0 * (double)m->batch * ((double)m->hidden * (1 + m->layers) + 2.0 * (double)kv_width);
    if (v == EKV_VARIANT_NOCACHE) s->state_bytes += 4.0 * (double)m->tokens * (double)kv_width * (2.0 * m->batch + 1.0);
    if (topk) s->state_bytes += 4.0 * (double)m->batch * m->hidden * m->observe * (m->layers + 1);
    return EKV_SUCCESS;
}

/* k and v of tokens [0, count) of layer l, into k_all/v_all laid out
   [batch][kv_heads][tokens][D] (the prefill source layout). */
static void ekv__cycle_cpu_project_all(const ekv_cycle_model *m, ekv__cycle_cpu *s, int l, int count)
{
    const size_t kv_width = (size_t)m->kv_heads * (size_t)m->head_dim;
    const size_t wkv_n = (size_t)m->hidden * kv_width;
    int b, which, t, h;
    for (b = 0; b < m->batch; b++)
        for (which = 0; which < 2; which++) {
            float *dest = which ? s->v_all : s->k_all;
            ekv__cycle_project(ekv_cycle_model_x(m, l, b, 0), (size_t)m->hidden, count, m->hidden,
                               (which ? m->wv : m->wk) + (size_t)l * wkv_n, (int)kv_width, s->rows);
            for (h = 0; h < m->kv_heads; h++)
                for (t = 0; t < count; t++)
                    memcpy(dest + (((size_t)b * (size_t)m->kv_heads + (size_t)h) * (size_t)m->tokens +
                                   (size_t)t) * (size_t)m->head_dim,
                           s->rows + (size_t)t * kv_width + (size_t)h * (size_t)m->head_dim,
                           (size_t)m->head_dim * sizeof(float));
        }
}

/* q of token `token` of layer l for every sequence into s->q (and topk's ring). */
static void ekv__cycle_cpu_project_q(const ekv_cycle_model *m, ekv__cycle_cpu *s, int l, int token)
{
    const size_t wq_n = (size_t)m->hidden * (size_t)m->hidden;
    int b, h;
    for (b = 0; b < m->batch; b++)
        ekv__cycle_project(ekv_cycle_model_x(m, l, b, token), (size_t)m->hidden, 1, m->hidden,
                           m->wq + (size_t)l * wq_n, m->hidden, s->q + (size_t)b * (size_t)m->hidden);
    if (!s->q_ring) return;
    for (b = 0; b < m->batch; b++)
        for (h = 0; h < m->heads; h++)
            memcpy(s->q_ring + ((((size_t)l * (size_t)m->batch + (size_t)b) * (size_t)m->heads + (size_t)h) *
                                    (size_t)m->observe + (size_t)(s->ring_count[l] % m->observe)) *
                                   (size_t)m->head_dim,
                   s->q + ((size_t)b * (size_t)m->heads + (size_t)h) * (size_t)m->head_dim,
                   (size_t)m->head_dim * sizeof(float));
    s->ring_count[l]++;
}

/* The elastic step of layer l's cache with its last min(observe, seen) queries. */
static ekv_result ekv__cycle_cpu_compress(const ekv_cycle_model *m, ekv__cycle_cpu *s, int l)
{
    int observe = 0, b, h, i;
    if (s->q_ring) {
        const int count = s->ring_count[l];
        observe = count < m->observe ? count : m->observe;
        for (b = 0; b < m->batch; b++)
            for (h = 0; h < m->heads; h++)
                for (i = 0; i < observe; i++)
                    memcpy(s->q_observe + ((((size_t)b * (size_t)m->heads + (size_t)h) * (size_t)observe) +
                                           (size_t)i) * (size_t)m->head_dim,
                           s->q_ring + ((((size_t)l * (size_t)m->batch + (size_t)b) * (size_t)m->heads +
                                         (size_t)h) * (size_t)m->observe +
                                        (size_t)((count - observe + i) % m->observe)) * (size_t)m->head_dim,
                           (size_t)m->head_dim * sizeof(float));
    }
    return ekv_cache_compress(&s->caches[l], &m->compress, s->q_ring ? s->q_observe : NULL, m->heads,
                              observe, m->softmax_scale);
}

/* Prefill (not timed): the prompt's k, v into every cache; topk's ring gets the last
   `observe` prompt queries; elastic then takes one elastic step over the prompt. */
static ekv_result ekv__cycle_cpu_prefill(const ekv_cycle_model *m, ekv__cycle_cpu *s)
{
    ekv_result r;
    int l, b, t;
    for (b = 0; b < m->batch; b++) s->lengths[b] = m->prompt;
    if (s->variant == EKV_VARIANT_NOCACHE) return EKV_SUCCESS;
    for (l = 0; l < m->layers; l++) {
        if (ekv_cycle_cache_layer(s->variant, l) != l) continue;
        ekv__cycle_cpu_project_all(m, s, l, m->prompt);
        r = ekv_cache_prefill(&s->caches[ekv__cycle_is_shared(s->variant) ? l / 2 : l], s->k_all,
                              s->v_all, m->tokens, s->lengths);
        if (r != EKV_SUCCESS) return r;
        if (s->q_ring) {
            s->ring_count[l] = 0;
            for (t = m->prompt - (m->prompt < m->observe ? m->prompt : m->observe); t < m->prompt; t++)
                ekv__cycle_cpu_project_q(m, s, l, t);
        }
        if (ekv_cycle_anchor(m, s->variant, m->compress_every)) {
            r = ekv__cycle_cpu_compress(m, s, l);
            if (r != EKV_SUCCESS) return r;
        }
    }
    return EKV_SUCCESS;
}

static double ekv__cycle_cpu_kv_bytes(const ekv__cycle_cpu *s)
{
    double total = 0.0;
    int i;
    if (s->variant == EKV_VARIANT_NOCACHE) return 0.0; /* nothing is kept between steps */
    for (i = 0; i < s->cache_count; i++) {
        const ekv_host_cache *c = &s->caches[i];
        total += ekv_cache_bytes_of(c->dtype, c->batch, c->kv_heads, c->head_dim, c->lengths,
                                    c->bias != NULL).total;
    }
    return total;
}

/* One decode loop: prefill, then the timed steps. `timing`/`rep` may be NULL/-1 (not
   timed); `record` [steps][layers][batch][heads][D] receives every step's outputs when
   not NULL; s->out holds the last step's. */
static ekv_result ekv__cycle_cpu_loop(const ekv_cycle_model *m, ekv__cycle_cpu *s,
                                      ekv_cycle_timing *timing, int rep, float *record)
{
    const size_t kv_width = (size_t)m->kv_heads * (size_t)m->head_dim;
    const size_t wkv_n = (size_t)m->hidden * kv_width;
    const size_t out_layer = (size_t)m->batch * (size_t)m->hidden;
    const float scale = (float)m->softmax_scale;
    double phase[EKV_CYCLE_PHASES] = {0, 0, 0, 0};
    ekv_result r = ekv__cycle_cpu_prefill(m, s);
    int step, l, b, p;
    if (r != EKV_SUCCESS) return r;
    for (step = 1; step <= m->steps; step++) {
        const int token = m->prompt + step - 1;
        const double step_start = ekv_time_ms();
        double t0, t1, t2, t3, t4;
        for (l = 0; l < m->layers; l++) {
            const int owner = ekv_cycle_cache_layer(s->variant, l);
            ekv_host_cache *cache = &s->caches[ekv_cycle_cache_index(s->variant, l)];
            t0 = ekv_time_ms();
            ekv__cycle_cpu_project_q(m, s, l, token);
            if (s->variant == EKV_VARIANT_NOCACHE) {
                ekv__cycle_cpu_project_all(m, s, l, token + 1);
            } else if (owner == l) {
                for (b = 0; b < m->batch; b++) {
                    ekv__cycle_project(ekv_cycle_model_x(m, l, b, token), (size_t)m->hidden, 1, m->hidden,
                                       m->wk + (size_t)l * wkv_n, (int)kv_width, s->k + (size_t)b * kv_width);
                    ekv__cycle_project(ekv_cycle_model_x(m, l, b, token), (size_t)m->hidden, 1, m->hidden,
                                       m->wv + (size_t)l * wkv_n, (int)kv_width, s->v + (size_t)b * kv_width);
                }
            }
            t1 = ekv_time_ms();
            if (s->variant == EKV_VARIANT_NOCACHE) {
                for (b = 0; b < m->batch; b++) s->lengths[b] = token + 1;
                r = ekv_cache_prefill(cache, s->k_all, s->v_all, m->tokens, s->lengths);
            } else if (owner == l) {
                r = ekv_cache_append(cache, s->k, s->v, NULL);
            }
            if (r != EKV_SUCCESS) return r;
            t2 = ekv_time_ms();
            r = ekv_cpu_attention_with(cache, s->q, m->heads, scale, &s->options,
                                       s->out + (size_t)l * out_layer);
            if (r != EKV_SUCCESS) return r;
            t3 = ekv_time_ms();
            if (ekv_cycle_anchor(m, s->variant, step) && (r = ekv__cycle_cpu_compress(m, s, l)) != EKV_SUCCESS)
                return r;
            t4 = ekv_time_ms();
            phase[EKV_CYCLE_PHASE_PROJECTION] += t1 - t0;
            phase[EKV_CYCLE_PHASE_APPEND] += t2 - t1;
            phase[EKV_CYCLE_PHASE_ATTENTION] += t3 - t2;
            phase[EKV_CYCLE_PHASE_COMPRESS] += t4 - t3;
        }
        if (timing) {
            timing->step_ms[(size_t)rep * (size_t)m->steps + (size_t)(step - 1)] = ekv_time_ms() - step_start;
            timing->kv_bytes[step - 1] = ekv__cycle_cpu_kv_bytes(s);
            /* nocache keeps every token's input: its state grows with the context */
            timing->peak_bytes[step - 1] =
                s->state_bytes + (s->variant == EKV_VARIANT_NOCACHE
                                      ? 4.0 * (double)m->layers * m->batch * (token + 1) * m->hidden
                                      : 0.0);
        }
        if (record)
            memcpy(record + (size_t)(step - 1) * (size_t)m->layers * out_layer, s->out,
                   (size_t)m->layers * out_layer * sizeof(float));
    }
    if (timing)
        for (p = 0; p < EKV_CYCLE_PHASES; p++) timing->phase_ms[(size_t)rep * EKV_CYCLE_PHASES + (size_t)p] = phase[p];
    return EKV_SUCCESS;
}

/* The CPU backend of the cycle driver. */
static ekv_result ekv__cycle_cpu_open(const ekv_config *c, const ekv_cycle_model *m, ekv_variant v,
                                      void **state)
{
    ekv__cycle_cpu *s = (ekv__cycle_cpu *)ekv__alloc(1, sizeof *s);
    ekv_result r;
    *state = NULL;
    if (!s) return EKV_ERR_OUT_OF_MEMORY;
    if ((r = ekv__cycle_cpu_make(c, m, v, s)) != EKV_SUCCESS) {
        ekv__free(s);
        return r;
    }
    s->model = m;
    *state = s;
    return EKV_SUCCESS;
}

static ekv_result ekv__cycle_cpu_run_loop(void *state, ekv_cycle_timing *timing, int rep, float *record)
{
    ekv__cycle_cpu *s = (ekv__cycle_cpu *)state;
    return ekv__cycle_cpu_loop(s->model, s, timing, rep, record);
}

static ekv_result ekv__cycle_cpu_last_outputs(void *state, float *out)
{
    const ekv__cycle_cpu *s = (const ekv__cycle_cpu *)state;
    const ekv_cycle_model *m = s->model;
    memcpy(out, s->out, (size_t)m->layers * (size_t)m->batch * (size_t)m->hidden * sizeof(float));
    return EKV_SUCCESS;
}

static void ekv__cycle_cpu_layer_bytes(void *state, int layer, ekv_cache_bytes *bytes, double *kept)
{
    const ekv__cycle_cpu *s = (const ekv__cycle_cpu *)state;
    const ekv_host_cache *cache = &s->caches[ekv_cycle_cache_index(s->variant, layer)];
    int b;
    *bytes = ekv_cache_bytes_of(cache->dtype, cache->batch, cache->kv_heads, cache->head_dim,
                                cache->lengths, cache->bias != NULL);
    *kept = 0.0;
    for (b = 0; b < cache->batch; b++) *kept += cache->lengths[b];
}

static void ekv__cycle_cpu_close(void *state)
{
    ekv__cycle_cpu_free((ekv__cycle_cpu *)state);
    ekv__free(state);
}

static ekv_result ekv__cycle_cpu_prepare(const ekv_config *c, ekv_report *report)
{
    if (!report) return EKV_SUCCESS;
    ekv__cpu_name(report->device.name, sizeof report->device.name);
    /* the most the kernel uses: its calls on short contexts use fewer */
    report->threads = ekv_cpu_threads(c->threads);
    snprintf(report->cpu_path, sizeof report->cpu_path, "%s", ekv__cpu_select(NULL)->name);
#if defined(_SC_NPROCESSORS_ONLN)
    report->device.sm_count = (int)sysconf(_SC_NPROCESSORS_ONLN);
#endif
    return EKV_SUCCESS;
}

static const ekv_cycle_backend ekv__cycle_cpu_backend = {
    EKV_BACKEND_CPU,         ekv__cycle_cpu_prepare,      ekv__cycle_cpu_open,
    ekv__cycle_cpu_run_loop, ekv__cycle_cpu_last_outputs, ekv__cycle_cpu_layer_bytes,
    ekv__cycle_cpu_close};

/* ---- the driver: the same steps, statistics and report on every backend ---- */

struct ekv__cycle_pair {
    const ekv_cycle_backend *backend;
    void *state, *base;
    ekv_cycle_timing *timing, *base_timing;
};

static ekv_result ekv__cycle_sample(void *context, int baseline, int rep)
{
    struct ekv__cycle_pair *p = (struct ekv__cycle_pair *)context;
    if (baseline) return p->backend->loop(p->base, rep >= 0 ? p->base_timing : NULL, rep, NULL);
    return p->backend->loop(p->state, rep >= 0 ? p->timing : NULL, rep, NULL);
}

/* One variant: warmup + reps loops (ABAB with cache when paired), agreement with
   `reference` (cache's last-step outputs; NULL for cache itself). */
static ekv_result ekv__cycle_variant(const ekv_config *c, const ekv_cycle_model *m,
                                     const ekv_cycle_backend *backend, ekv_variant v,
                                     const float *reference, ekv_report *report,
                                     ekv_cycle_result *out)
{
    const size_t last = (size_t)m->layers * (size_t)m->batch * (size_t)m->hidden;
    float *host_out = (float *)ekv__alloc(last, sizeof(float));
    ekv_cycle_timing t, tb;
    struct ekv__cycle_pair pair;
    const int paired = c->paired_baseline;
    ekv_result r;
    memset(&t, 0, sizeof t);
    memset(&tb, 0, sizeof tb);
    memset(&pair, 0, sizeof pair);
    pair.backend = backend;
    pair.timing = &t;
    pair.base_timing = &tb;
    if (!host_out) return EKV_ERR_OUT_OF_MEMORY;
    if ((r = backend->open(c, m, v, &pair.state)) != EKV_SUCCESS) goto done;
    if ((r = ekv__cycle_timing_make(&t, c->reps, m->steps)) != EKV_SUCCESS) goto done;
    if (paired && ((r = backend->open(c, m, EKV_VARIANT_CACHE, &pair.base)) != EKV_SUCCESS ||
                   (r = ekv__cycle_timing_make(&tb, c->reps, m->steps)) != EKV_SUCCESS))
        goto done;
    if ((r = ekv_time_abab(c->warmup, c->reps, paired, ekv__cycle_sample, &pair)) != EKV_SUCCESS)
        goto done;
    if ((r = ekv__cycle_result_fill(c, m, v, &t, paired ? &tb : NULL, out)) != EKV_SUCCESS) goto done;
    if ((r = backend->last_outputs(pair.state, host_out)) != EKV_SUCCESS) goto done;
    if (reference) ekv__cycle_agreement(m, reference, host_out, out);
    if (out == &report->cycles[0]) ekv__cycle_step_bytes(report, backend, pair.state, m);
done:
    ekv__cycle_timing_free(&t);
    ekv__cycle_timing_free(&tb);
    if (pair.state) backend->close(pair.state);
    if (pair.base) backend->close(pair.base);
    ekv__free(host_out);
    return r;
}

EKV_DEF ekv_result ekv_cycle_outputs_on(const ekv_config *config, const ekv_cycle_backend *backend,
                                        ekv_variant v, float *outputs)
{
    ekv_config resolved;
    ekv_cycle_model m;
    void *state = NULL;
    ekv_result r;
    if (!config || !backend || !outputs || (unsigned)v >= EKV_VARIANT_ALL)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "ekv_cycle_outputs: NULL argument or variant all");
    resolved = ekv_config_resolve(config);
    if ((r = backend->prepare(&resolved, NULL)) != EKV_SUCCESS) return r;
    if ((r = ekv_cycle_model_make(&resolved, &m)) != EKV_SUCCESS) return r;
    r = backend->open(&resolved, &m, v, &state);
    if (r == EKV_SUCCESS) r = backend->loop(state, NULL, -1, outputs);
    if (state) backend->close(state);
    ekv_cycle_model_free(&m);
    return r;
}

EKV_DEF ekv_result ekv_cycle_outputs(const ekv_config *config, ekv_variant v, float *outputs)
{
    return ekv_cycle_outputs_on(config, &ekv__cycle_cpu_backend, v, outputs);
}

EKV_DEF ekv_result ekv_cycle_run_on(const ekv_config *config, const ekv_cycle_backend *backend,
                                    ekv_report *report)
{
    const ekv_config resolved = ekv_config_resolve(config);
    const ekv_config *c = &resolved;
    const int count = c->variant == EKV_VARIANT_ALL ? 6 : 1;
    const size_t last = (size_t)c->layers * (size_t)c->batch * (size_t)c->heads * (size_t)c->head_dim;
    ekv_cycle_model m;
    float *reference = NULL;
    void *state = NULL;
    ekv_result r;
    int i;
    memset(&m, 0, sizeof m);
    ekv_report_init(report, c);
    report->backend = backend->kind;
    if ((r = ekv_config_validate(c)) != EKV_SUCCESS) return r;
    if (!c->inference)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "ekv_cycle_run: the config does not ask for "
                                                  "--inference");
    if ((r = backend->prepare(c, report)) != EKV_SUCCESS) return r;
    /* host-side accounting, the same for every backend */
    if (c->page_size > 0) {
        if (!(report->serve = (ekv_serve_result *)ekv__alloc(1, sizeof(ekv_serve_result))))
            return EKV_ERR_OUT_OF_MEMORY;
        if ((r = ekv_serve_simulate(c, report->serve)) != EKV_SUCCESS) return r;
    }
    report->cycles = (ekv_cycle_result *)ekv__alloc((size_t)count, sizeof(ekv_cycle_result));
    reference = (float *)ekv__alloc(last, sizeof(float));
    if (!report->cycles || !reference) {
        r = EKV_ERR_OUT_OF_MEMORY;
        goto done;
    }
    if ((r = ekv_cycle_model_make(c, &m)) != EKV_SUCCESS) goto done;
    /* the reference every variant is compared with: cache's last-step outputs */
    r = backend->open(c, &m, EKV_VARIANT_CACHE, &state);
    if (r == EKV_SUCCESS) r = backend->loop(state, NULL, -1, NULL);
    if (r == EKV_SUCCESS) r = backend->last_outputs(state, reference);
    if (state) backend->close(state);
    for (i = 0; i < count && r == EKV_SUCCESS; i++) {
        const ekv_variant v = count == 1 ? c->variant : ekv__cycle_variants[i];
        /* each variant's timing loop is its share of the run's progress */
        ekv__progress_span((double)i / count, 1.0 / count);
        r = ekv__cycle_variant(c, &m, backend, v, v == EKV_VARIANT_CACHE ? NULL : reference, report,
                               &report->cycles[i]);
        if (r == EKV_SUCCESS || report->cycles[i].samples_ms) report->cycle_count = i + 1;
    }
    ekv__progress_span(0.0, 0.0);
    if (r == EKV_SUCCESS) r = ekv__cycle_report_finish(report);
done:
    ekv_cycle_model_free(&m);
    ekv__free(reference);
    return r;
}

EKV_DEF ekv_result ekv_cycle_run(const ekv_config *config, ekv_report *report)
{
    return ekv_cycle_run_on(config, &ekv__cycle_cpu_backend, report);
}

static void ekv__serve_json_figures(ekv_json *j, const ekv_serve_figures *f)
{
    ekv_json_object_begin(j);
    ekv_json_key(j, "batch"); ekv_json_int(j, f->batch);
    ekv_json_key(j, "pool_pages"); ekv_json_int(j, f->pool_pages);
    ekv_json_key(j, "pages_in_use_peak"); ekv_json_int(j, f->pages_in_use_peak);
    ekv_json_key(j, "pages_free_at_peak"); ekv_json_int(j, f->pages_free_at_peak);
    ekv_json_key(j, "pages_in_use_end"); ekv_json_int(j, f->pages_in_use_end);
    ekv_json_key(j, "pages_free_end"); ekv_json_int(j, f->pages_free_end);
    ekv_json_object_end(j);
}

/* "paging": the serving simulation (null without --page-size). */
static void ekv__serve_json(const ekv_serve_result *s, ekv_json *j)
{
    int i;
    ekv_json_key(j, "paging");
    if (!s) {
        ekv_json_null(j);
        return;
    }
    ekv_json_object_begin(j);
    ekv_json_key(j, "page_size"); ekv_json_int(j, s->page_size);
    ekv_json_key(j, "memory_budget_gb");
    if (s->memory_budget_gb > 0.0) ekv_json_number(j, s->memory_budget_gb); else ekv_json_null(j);
    ekv_json_key(j, "batch"); ekv_json_int(j, s->batch);
    ekv_json_key(j, "decode_tokens"); ekv_json_int(j, s->decode_tokens);
    ekv_json_key(j, "prompt_lengths");
    ekv_json_object_begin(j);
    ekv_json_key(j, "distribution"); ekv_json_string(j, "uniform");
    ekv_json_key(j, "min"); ekv_json_int(j, s->prompt_min);
    ekv_json_key(j, "max"); ekv_json_int(j, s->prompt_max);
    ekv_json_key(j, "seed"); ekv_json_number(j, (double)s->seed);
    ekv_json_object_end(j);
    ekv_json_key(j, "variants");
    ekv_json_array_begin(j);
    for (i = 0; i < s->count; i++) {
        const ekv_serve_variant *y = &s->variants[i];
        ekv_json_object_begin(j);
        ekv_json_key(j, "variant"); ekv_json_string(j, ekv_variant_name(y->variant));
        ekv_json_key(j, "kv_dtype"); ekv_json_string(j, ekv_dtype_name(y->kv_dtype));
        ekv_json_key(j, "page_bytes"); ekv_json_number(j, y->page_bytes);
        ekv_json_key(j, "serving"); ekv__serve_json_figures(j, &y->serving);
        ekv_json_key(j, "max_batch");
        if (y->has_budget) ekv_json_int(j, y->budget.batch); else ekv_json_null(j);
        ekv_json_key(j, "budget");
        if (y->has_budget) ekv__serve_json_figures(j, &y->budget); else ekv_json_null(j);
        ekv_json_object_end(j);
    }
    ekv_json_array_end(j);
    ekv_json_object_end(j);
}

/* One variant's object; `with_paging` adds the run's "paging" (a single variant's cycle,
   whose object is the whole of inference_cycle). */
static void ekv__cycle_json_one(const ekv_cycle_result *y, const ekv_report *report,
                                int with_paging, ekv_json *j)
{
    int p, l, i;
    ekv_json_object_begin(j);
    ekv_json_key(j, "variant"); ekv_json_string(j, ekv_variant_name(y->variant));
    ekv_json_key(j, "layers"); ekv_json_int(j, y->layers);
    ekv_json_key(j, "kv_dtype"); ekv_json_string(j, ekv_dtype_name(y->kv_dtype));
    ekv_json_key(j, "decode_tokens"); ekv_json_int(j, y->decode_tokens);
    /* The seed's fields where they are honest: baseline_* are the paired cache variant's
       (null unless --paired-baseline), elastic_* this variant's figures only when it is
       the elastic one (null otherwise: total_ms and tokens_per_sec hold every variant's).
       speedup_vs_baseline = median(baseline)/median(this variant), for every variant:
       above 1 this variant is faster than cache, below 1 slower (nocache: 0.03 = cache is
       33x faster). */
    ekv_json_key(j, "baseline_variant");
    ekv_json_string(j, y->has_baseline ? ekv_variant_name(EKV_VARIANT_CACHE) : NULL);
    ekv_json_key(j, "baseline_total_ms");
    if (y->has_baseline) ekv_json_number(j, y->baseline_total_ms); else ekv_json_null(j);
    ekv_json_key(j, "elastic_total_ms");
    if (y->variant == EKV_VARIANT_ELASTIC) ekv_json_number(j, y->total_ms); else ekv_json_null(j);
    ekv_json_key(j, "baseline_tokens_per_sec");
    if (y->has_baseline) ekv_json_number(j, y->baseline_tokens_per_sec); else ekv_json_null(j);
    ekv_json_key(j, "elastic_tokens_per_sec");
    if (y->variant == EKV_VARIANT_ELASTIC) ekv_json_number(j, y->tokens_per_sec); else ekv_json_null(j);
    ekv_json_key(j, "speedup_vs_baseline");
    if (y->has_baseline) ekv_json_number(j, y->speedup); else ekv_json_null(j);
    ekv_json_key(j, "speedup_ci95");
    if (y->has_baseline) {
        ekv_json_object_begin(j);
        ekv_json_key(j, "lo"); ekv_json_number(j, y->speedup_ci_lo);
        ekv_json_key(j, "hi"); ekv_json_number(j, y->speedup_ci_hi);
        ekv_json_object_end(j);
    } else {
        ekv_json_null(j);
    }
    ekv_json_key(j, "total_ms"); ekv_json_number(j, y->total_ms);
    ekv_json_key(j, "tokens_per_sec"); ekv_json_number(j, y->tokens_per_sec);
    ekv_json_key(j, "phases_ms");
    ekv_json_object_begin(j);
    for (p = 0; p < EKV_CYCLE_PHASES; p++) {
        ekv_json_key(j, ekv__phase_names[p]);
        ekv_json_number(j, y->phases_ms[p]);
    }
    ekv_json_object_end(j);
    ekv_json_key(j, "statistics"); ekv__json_stats(j, &y->stats);
    ekv_json_key(j, "samples_ms");
    ekv_json_array_begin(j);
    for (i = 0; i < (int)y->sample_count; i++) ekv_json_number(j, y->samples_ms[i]);
    ekv_json_array_end(j);
    ekv_json_key(j, "baseline_samples_ms");
    if (y->has_baseline) {
        ekv_json_array_begin(j);
        for (i = 0; i < (int)y->sample_count; i++) ekv_json_number(j, y->baseline_samples_ms[i]);
        ekv_json_array_end(j);
    } else {
        ekv_json_null(j);
    }
    ekv_json_key(j, "memory");
    ekv_json_object_begin(j);
    ekv_json_key(j, "kv_cache_bytes"); ekv_json_number(j, y->kv_cache_bytes);
    ekv_json_key(j, "peak_device_bytes"); ekv_json_number(j, y->peak_device_bytes);
    ekv_json_object_end(j);
    ekv_json_key(j, "agreement_vs_cache");
    if (y->has_agreement) {
        ekv_json_object_begin(j);
        ekv_json_key(j, "max_abs_diff"); ekv_json_number(j, y->agreement_max_abs_diff);
        ekv_json_key(j, "bitwise_equal"); ekv_json_bool(j, y->agreement_bitwise_equal);
        ekv_json_object_end(j);
    } else {
        ekv_json_null(j);
    }
    ekv_json_key(j, "error_vs_cache");
    if (y->has_agreement) {
        ekv_json_array_begin(j);
        for (l = 0; l < y->layers; l++) {
            ekv_json_object_begin(j);
            ekv_json_key(j, "layer"); ekv_json_int(j, l);
            ekv_json_key(j, "rel_l2"); ekv_json_number(j, y->error_vs_cache[l].rel_l2);
            ekv_json_key(j, "max_abs"); ekv_json_number(j, y->error_vs_cache[l].max_abs);
            ekv_json_key(j, "cosine"); ekv_json_number(j, y->error_vs_cache[l].cosine);
            ekv_json_object_end(j);
        }
        ekv_json_array_end(j);
    } else {
        ekv_json_null(j);
    }
    ekv_json_key(j, "series");
    ekv_json_array_begin(j);
    for (i = 0; i < y->series_count; i++) {
        const ekv_series_point *s = &y->series[i];
        ekv_json_object_begin(j);
        ekv_json_key(j, "step"); ekv_json_int(j, s->step);
        ekv_json_key(j, "context_len"); ekv_json_int(j, s->context_len);
        ekv_json_key(j, "latency_ms"); ekv_json_number(j, s->latency_ms);
        ekv_json_key(j, "kv_cache_bytes"); ekv_json_number(j, s->kv_cache_bytes);
        ekv_json_key(j, "peak_device_bytes"); ekv_json_number(j, s->peak_device_bytes);
        ekv_json_object_end(j);
    }
    ekv_json_array_end(j);
    if (with_paging) ekv__serve_json(report->serve, j);
    ekv_json_object_end(j);
}

/* One variant: its object. Several (a library call with variant all): an object
   {"variant": "all", "variants": [one object per variant]}. */
EKV_DEF void ekv_cycle_write_json(const ekv_report *report, ekv_json *j)
{
    int i;
    if (!report || report->cycle_count < 1) {
        ekv_json_null(j);
        return;
    }
    if (report->cycle_count == 1) {
        ekv__cycle_json_one(&report->cycles[0], report, 1, j);
        return;
    }
    ekv_json_object_begin(j);
    ekv_json_key(j, "variant"); ekv_json_string(j, ekv_variant_name(EKV_VARIANT_ALL));
    ekv_json_key(j, "variants");
    ekv_json_array_begin(j);
    for (i = 0; i < report->cycle_count; i++) ekv__cycle_json_one(&report->cycles[i], report, 0, j);
    ekv_json_array_end(j);
    ekv__serve_json(report->serve, j);
    ekv_json_object_end(j);
}

/* The serving simulation's block of the cycle's text: a line per variant for the run of
   --batch, and one for the largest batch of --memory-budget. */
static void ekv__serve_print(const ekv_serve_result *s, FILE *out)
{
    int i;
    fprintf(out, "paging     pages of %d tokens; prompts uniform in [%d, %d] (seeded), %d decode steps, "
                 "admitted, decoded in lockstep, retired\n",
            s->page_size, s->prompt_min, s->prompt_max, s->decode_tokens);
    fprintf(out, "  --batch=%d in the %d pages a contiguous cache of %d slots reserves:\n", s->batch,
            s->variants[0].serving.pool_pages,
            s->variants[0].serving.pool_pages / s->batch * s->page_size);
    fprintf(out, "  %-11s %-5s %10s  %11s %12s  %10s %9s\n", "variant", "dtype", "page KB",
            "in use peak", "free at peak", "in use end", "free end");
    for (i = 0; i < s->count; i++) {
        const ekv_serve_variant *y = &s->variants[i];
        fprintf(out, "  %-11s %-5s %10.4g  %11d %12d  %10d %9d\n", ekv_variant_name(y->variant),
                ekv_dtype_name(y->kv_dtype), y->page_bytes * 1e-3, y->serving.pages_in_use_peak,
                y->serving.pages_free_at_peak, y->serving.pages_in_use_end, y->serving.pages_free_end);
    }
    if (s->memory_budget_gb <= 0.0) return;
    fprintf(out, "  --memory-budget=%g GB: the largest batch of each variant (sequences admitted until "
                 "one more does not fit):\n", s->memory_budget_gb);
    fprintf(out, "  %-11s %-5s %10s  %10s %9s  %11s %12s\n", "variant", "dtype", "page KB",
            "pool pages", "max batch", "in use peak", "free at peak");
    for (i = 0; i < s->count; i++) {
        const ekv_serve_variant *y = &s->variants[i];
        fprintf(out, "  %-11s %-5s %10.4g  %10d %9d  %11d %12d\n", ekv_variant_name(y->variant),
                ekv_dtype_name(y->kv_dtype), y->page_bytes * 1e-3, y->budget.pool_pages,
                y->budget.batch, y->budget.pages_in_use_peak, y->budget.pages_free_at_peak);
    }
}

EKV_DEF void ekv_cycle_print_table(const ekv_report *report, FILE *out)
{
    const ekv_config *c;
    const ekv_cycle_result *first;
    int i, noisy = 0, elastic = 0, shared = 0, paired = 0;
    if (!report || report->cycle_count < 1) return;
    c = &report->config;
    first = &report->cycles[0];
    fprintf(out, "cycle      batch %d  prompt %d tokens  heads %d/%d  dim %d  %d layer%s  %d decode "
                 "steps  --kv-dtype %s\n",
            c->batch, c->seq_len, c->heads, c->kv_heads, c->head_dim, first->layers,
            first->layers == 1 ? "" : "s", first->decode_tokens, ekv_dtype_name(c->kv_dtype));
    for (i = 0; i < report->cycle_count; i++) {
        elastic |= report->cycles[i].variant == EKV_VARIANT_ELASTIC;
        shared |= ekv__cycle_is_shared(report->cycles[i].variant);
        paired |= report->cycles[i].has_baseline;
    }
    if (elastic)
        fprintf(out, "           elastic: policy %s  C=%d  recent %d  sinks %d  observe %d, compressed "
                     "every %d steps\n",
                ekv_policy_name(c->policy), c->compression, c->recent, c->sinks, c->observe,
                c->compress_every);
    fprintf(out, "           times: medians over %zu repeats of the decode loop (prefill not timed; "
                 "MLPs and layer dependency left out)\n",
            first->sample_count);
    fprintf(out, "  %-11s %-5s %10s  %-21s %6s  %10s  %9s %9s %9s %9s  %9s %9s\n", "variant", "dtype",
            "total ms", "95% CI of the median", "cv", "tokens/s", "proj ms", "append", "compress",
            "attn ms", "KV MB", "peak MB");
    for (i = 0; i < report->cycle_count; i++) {
        const ekv_cycle_result *y = &report->cycles[i];
        char ci[48], cv[16];
        snprintf(ci, sizeof ci, "[%.4g, %.4g]", y->stats.ci95_median_lo, y->stats.ci95_median_hi);
        snprintf(cv, sizeof cv, "%.1f%%%s", 100.0 * y->stats.cv, y->stats.cv > EKV_NOISY_CV ? "*" : "");
        noisy |= y->stats.cv > EKV_NOISY_CV;
        fprintf(out, "  %-11s %-5s %10.4g  %-21s %6s  %10.4g  %9.3g %9.3g %9.3g %9.3g  %9.4g %9.4g\n",
                ekv_variant_name(y->variant), ekv_dtype_name(y->kv_dtype), y->total_ms, ci, cv,
                y->tokens_per_sec, y->phases_ms[EKV_CYCLE_PHASE_PROJECTION],
                y->phases_ms[EKV_CYCLE_PHASE_APPEND], y->phases_ms[EKV_CYCLE_PHASE_COMPRESS],
                y->phases_ms[EKV_CYCLE_PHASE_ATTENTION], y->kv_cache_bytes * 1e-6,
                y->peak_device_bytes * 1e-6);
    }
    if (noisy)
        fprintf(out, "  * cv above %.0f%%: noisy, rerun on a quiet machine before trusting small "
                     "differences\n",
                100.0 * EKV_NOISY_CV);
    fprintf(out, "  against cache (the last step's outputs, every layer):\n");
    for (i = 0; i < report->cycle_count; i++) {
        const ekv_cycle_result *y = &report->cycles[i];
        if (!y->has_agreement) continue;
        fprintf(out, "  %-11s max |diff| %.3g%s  rel_l2 %.3g (worst layer)\n",
                ekv_variant_name(y->variant), y->agreement_max_abs_diff,
                y->agreement_bitwise_equal ? " (bitwise equal)" : "", ekv__cycle_worst_error(y));
    }
    if (paired) {
        fprintf(out, "  paired with cache (interleaved ABAB), ratio of medians and its 95%% CI:\n");
        for (i = 0; i < report->cycle_count; i++) {
            const ekv_cycle_result *y = &report->cycles[i];
            char phrase[160];
            if (!y->has_baseline) continue;
            if (y->variant == EKV_VARIANT_CACHE)
                snprintf(phrase, sizeof phrase, "cache against itself (an A/A check): %.2fx [%.2f, %.2f]",
                         y->speedup, y->speedup_ci_lo, y->speedup_ci_hi);
            else
                ekv__faster_phrase(phrase, sizeof phrase, ekv_variant_name(y->variant),
                                   ekv_variant_name(EKV_VARIANT_CACHE), y->speedup, y->speedup_ci_lo,
                                   y->speedup_ci_hi);
            fprintf(out, "  %s\n", phrase);
        }
    }
    if (report->serve) ekv__serve_print(report->serve, out);
    if ((elastic && c->compression > 1) || shared)
        fprintf(out, "note       the cycle's inputs and weights are random: its attention has no sinks, "
                     "recency or heavy hitters and spreads over every token, so compression loses "
                     "most of it (elastic rel_l2 near 1 here, where structured data gives a few "
                     "percent), and the odd layers of shared read k and v unrelated to their own. "
                     "These errors say nothing of a real model's: judge a policy's accuracy with "
                     "ekv_bench without --inference\n");
}

/* >>dispatch (implementation) =============================================== */

EKV_DEF ekv_result ekv_run_check(const ekv_config *config, const ekv_device_backend *device)
{
    const ekv_backend want = config->backend;
    if (want != EKV_BACKEND_CUDA && want != EKV_BACKEND_EMULATOR) return EKV_SUCCESS;
    if (!device)
        return ekv_set_error(EKV_ERR_UNSUPPORTED,
                             "--backend=%s: this build of ekv has no CUDA; allowed: auto, cpu "
                             "(build with nvcc for cuda)", ekv_backend_name(want));
    if (device->kind == want) return EKV_SUCCESS;
    if (device->kind == EKV_BACKEND_EMULATOR)
        return ekv_set_error(EKV_ERR_UNSUPPORTED, "--backend=%s: this is the emulator build; "
                             "allowed: auto, emulator, cpu", ekv_backend_name(want));
    return ekv_set_error(EKV_ERR_UNSUPPORTED, "--backend=%s: the emulator is a test build "
                         "(make emu); allowed: auto, cuda, cpu", ekv_backend_name(want));
}

/* --backend=auto without a usable device: the same run on the CPU, the reason kept in the
   notice (the CPU run resets the report and the last error). work == NULL: the cycle. */
/* --backend=auto without a usable device, or with one too small for the problem: the
   same run on the CPU backend, the reason kept in the notice. */
static int ekv__run_falls_back(const ekv_config *config, ekv_result r)
{
    return config->backend == EKV_BACKEND_AUTO && (r == EKV_ERR_NO_DEVICE || r == EKV_ERR_OUT_OF_MEMORY);
}

static ekv_result ekv__run_fall_back(const ekv_config *config, ekv_report *report,
                                     const ekv_workload *work)
{
    static const char prefix[] = "CPU backend: ";
    char notice[sizeof report->notice];
    size_t n = strlen(ekv_last_error());
    ekv_result r;
    if (n > sizeof notice - sizeof prefix) n = sizeof notice - sizeof prefix;
    memcpy(notice, prefix, sizeof prefix - 1);
    memcpy(notice + sizeof prefix - 1, ekv_last_error(), n);
    notice[sizeof prefix - 1 + n] = '\0';
    ekv_report_free(report);
    r = work ? ekv_cpu_run(config, work, report) : ekv_cycle_run(config, report);
    memcpy(report->notice, notice, sizeof notice);
    return r;
}

EKV_DEF ekv_result ekv_run(const ekv_config *config, const ekv_device_backend *device,
                           ekv_report *report)
{
    const int on_device = device != NULL && config->backend != EKV_BACKEND_CPU;
    ekv_workload work;
    ekv_result r;
    memset(report, 0, sizeof *report);
    if ((r = ekv_run_check(config, device)) != EKV_SUCCESS) return r;
    /* --inference: the decode cycle (it builds its own model) instead of one attention */
    if (config->inference) {
        if (!on_device) return ekv_cycle_run(config, report);
        r = device->cycle_run(config, report);
        if (ekv__run_falls_back(config, r)) r = ekv__run_fall_back(config, report, NULL);
        return r;
    }
    if ((r = ekv_workload_prepare(config, &work)) != EKV_SUCCESS) return r;
    if (on_device) {
        r = device->run(config, &work, report);
        if (ekv__run_falls_back(config, r)) r = ekv__run_fall_back(config, report, &work);
    } else {
        r = ekv_cpu_run(config, &work, report);
    }
    ekv_workload_free(&work);
    return r;
}

/* >>abibench: the benchmark through the C ABI (implementation) =============== */

struct ekv_abi_bench {
    ekv_cli cli;
    const ekv_device_backend *device;
    ekv_json json; /* the last result */
};

EKV_DEF ekv_result ekv_abi_bench_open_on(int count, const char *const *args,
                                         const ekv_device_backend *device,
                                         ekv_abi_bench **bench)
{
    ekv_abi_bench *b;
    char **argv, program[] = "ekv";
    FILE *sink;
    ekv_result r;
    int i;
    if (!bench) return ekv_set_error(EKV_ERR_INVALID_ARG, "bench is NULL");
    *bench = NULL;
    if (count < 0 || (count > 0 && !args))
        return ekv_set_error(EKV_ERR_INVALID_ARG, "args: %d arguments and no array", count);
    for (i = 0; i < count; i++)
        if (!args[i]) return ekv_set_error(EKV_ERR_INVALID_ARG, "args[%d] is NULL", i);
    b = (ekv_abi_bench *)ekv__alloc(1, sizeof *b);
    argv = (char **)ekv__alloc((size_t)count + 1, sizeof *argv);
    if (!b || !argv) {
        ekv__free(b);
        ekv__free(argv);
        return EKV_ERR_OUT_OF_MEMORY;
    }
    /* ekv_cli_parse neither keeps nor changes its arguments */
    argv[0] = program;
    for (i = 0; i < count; i++) argv[i + 1] = (char *)args[i];
    /* --help and --version print; here they have nowhere to go */
    sink = tmpfile();
    r = sink ? ekv_cli_parse(count + 1, argv, &b->cli, sink)
             : ekv_set_error(EKV_ERR_IO, "no temporary file for the command-line parser");
    if (sink) fclose(sink);
    ekv__free(argv);
    if (r == EKV_HELP_SHOWN)
        r = ekv_set_error(EKV_ERR_INVALID_ARG, "--help and --version print on a command line: "
                          "ekv_abi_bench_help gives the flags, ekv_version the version");
    if (r == EKV_SUCCESS) r = ekv_run_check(&b->cli.base, device);
    if (r != EKV_SUCCESS) {
        ekv__free(b);
        return r;
    }
    b->device = device;
    ekv_json_init(&b->json, 0);
    *bench = b;
    return EKV_SUCCESS;
}

EKV_DEF ekv_result ekv_abi_bench_open(int count, const char *const *args, ekv_abi_bench **bench)
{
    return ekv_abi_bench_open_on(count, args, NULL, bench);
}

EKV_DEF int64_t ekv_abi_bench_runs(const ekv_abi_bench *bench)
{
    return bench ? (int64_t)bench->cli.run_count : 0;
}

/* The JSON of `report` into bench->json, *json pointing at it. */
static ekv_result ekv__abi_bench_json(ekv_abi_bench *bench, const ekv_report *report,
                                      const char **json)
{
    ekv_json_free(&bench->json);
    ekv_json_init(&bench->json, 0);
    ekv_report_write_json(report, &bench->json);
    if (bench->json.failed) return ekv_set_error(EKV_ERR_OUT_OF_MEMORY, "out of memory writing JSON");
    *json = bench->json.buffer;
    return EKV_SUCCESS;
}

static ekv_result ekv__abi_bench_config(const ekv_abi_bench *bench, int64_t index,
                                        const char **json, ekv_config *config)
{
    if (!bench || !json) return ekv_set_error(EKV_ERR_INVALID_ARG, "bench or json is NULL");
    *json = NULL;
    if (index < 0 || (uint64_t)index >= (uint64_t)bench->cli.run_count)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "index=%lld is out of range: allowed 0..%lld",
                             (long long)index, (long long)bench->cli.run_count - 1);
    return ekv_cli_config(&bench->cli, (size_t)index, config);
}

EKV_DEF ekv_result ekv_abi_bench_run(ekv_abi_bench *bench, int64_t index, const char **json)
{
    ekv_config config;
    ekv_report report;
    ekv_result r = ekv__abi_bench_config(bench, index, json, &config);
    if (r != EKV_SUCCESS) return r;
    r = ekv_run(&config, bench->device, &report);
    if (r == EKV_SUCCESS) r = ekv__abi_bench_json(bench, &report, json);
    ekv_report_free(&report);
    return r;
}

EKV_DEF ekv_result ekv_abi_bench_config(ekv_abi_bench *bench, int64_t index, const char **json)
{
    ekv_config config;
    ekv_report report;
    ekv_result r = ekv__abi_bench_config(bench, index, json, &config);
    if (r != EKV_SUCCESS) return r;
    ekv_report_init(&report, &config);
    r = ekv__abi_bench_json(bench, &report, json);
    ekv_report_free(&report);
    return r;
}

EKV_DEF void ekv_abi_bench_close(ekv_abi_bench *bench)
{
    if (!bench) return;
    ekv_json_free(&bench->json);
    ekv__free(bench);
}

EKV_DEF ekv_result ekv_abi_bench_help(char *out, size_t size, size_t *needed)
{
    FILE *text = tmpfile();
    long length;
    size_t n;
    if (!needed) return ekv_set_error(EKV_ERR_INVALID_ARG, "needed is NULL");
    if (!text) return ekv_set_error(EKV_ERR_IO, "no temporary file for the help text");
    ekv_cli_print_help(text);
    length = ftell(text);
    if (length < 0) {
        fclose(text);
        return ekv_set_error(EKV_ERR_IO, "the help text could not be measured");
    }
    *needed = (size_t)length + 1;
    if (out && size > 0) {
        rewind(text);
        n = fread(out, 1, size - 1 < (size_t)length ? size - 1 : (size_t)length, text);
        out[n] = '\0';
    }
    fclose(text);
    return EKV_SUCCESS;
}

#endif /* EKV_NO_BENCH */

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
