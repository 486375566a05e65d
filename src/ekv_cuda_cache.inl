/* ekv_cuda_cache.inl - part of ekv_cuda.cuh: the elastic cache on the device - created
   empty, prefilled, grown one token per sequence and compressed in place by kernels that
   produce the same stored bytes as the CPU reference of ekv.h >>cacheops.

   Include it after ekv_cuda.cuh (which includes ekv.h). Without EKV_IMPLEMENTATION it
   gives the declarations; with it, after ekv_cuda.cuh's implementation, the
   implementation too. Both parts have their own guards, so including it again is harmless.

   THE ELASTIC CACHE AT A GLANCE
       storage    an ekv_cuda_cache (what ekv_cuda_attention reads: rows, scales, bias,
                  device lengths) with capacity rows per (sequence, kv head), plus the
                  device compressed[] counts and a host mirror of both, so that the host
                  checks capacities and sizes grids without reading the device.
       append     one launch: a CTA per sequence, a warp per (kv head, K|V) row that
                  quantizes it in registers (warp reductions for the int8 amax and the
                  int4 group min/max), then one thread advances the sequence's length.
       compress   stride, pool, window: one compaction launch and a one-CTA bookkeeping
                  launch. topk first scores the fresh region (two launches, doubles, the
                  exact operation order of ekv_cache_observed_scores), then selects per
                  (sequence, kv head) with a radix select over order-preserving 64-bit
                  keys of the scores and two block scans (ties to the older token).
                  Compaction: a CTA per (sequence, kv head, K|V) walks the new slots in
                  tiles, staging a tile's source rows (or the pooled, requantized means)
                  in shared memory before writing it, which is safe in place because
                  every slot's sources lie at or after the slot itself.
   Bit-exactness with the CPU: float and double arithmetic through the _rn intrinsics
   (no contraction into FMA), the CPU's summation orders, conversions that round like
   ekv_f32_to_f16/bf16/fp8. The one thing not under control is the last ulp of the
   device's exp(), which can only matter when two topk scores tie to within ~1e-16. */

#ifndef EKV_CUDA_CACHE_INL_DECLARED
#define EKV_CUDA_CACHE_INL_DECLARED

#ifdef __cplusplus
extern "C" {
#endif

/* Sequences one elastic cache may hold: the active mask of an append travels as a bit
   set in the kernel's parameters. */
#define EKV_CUDA_ELASTIC_MAX_BATCH 4096
/* Largest pool compression on the device: the ln(count) biases travel as a table. */
#define EKV_CUDA_ELASTIC_MAX_POOL 64

/* An elastic cache on the device. Pass &cache to ekv_cuda_attention. The host mirror is
   current whenever a call has returned (the device catches up in stream order). */
typedef struct ekv_cuda_elastic_cache {
    ekv_cuda_cache cache;     /* rows, scales, bias and device lengths              */
    int *compressed;          /* device [batch]                                     */
    int *host_lengths;        /* host mirror of cache.lengths                       */
    int *host_compressed;     /* host mirror of compressed                          */
    void *workspace;          /* device scratch of topk scoring, grown on demand    */
    size_t workspace_bytes;
} ekv_cuda_elastic_cache;

/* An empty cache on the current device (every length and scale 0). head_dim must be one of
   EKV_CUDA_HEAD_DIMS; fp8 needs sm_89 or newer (EKV_ERR_UNSUPPORTED otherwise); batch at
   most EKV_CUDA_ELASTIC_MAX_BATCH. with_bias: the ln(count) bias that pool needs. */
EKV_CUDA_DEF ekv_result ekv_cuda_elastic_create(ekv_cuda_elastic_cache *cache, ekv_dtype dtype,
                                                int batch, int kv_heads, int head_dim,
                                                int capacity, int with_bias);
/* ekv_cache_prefill on the device: k, v device f32 [batch][kv_heads][source_capacity]
   [head_dim]; lengths a host array [batch]. */
EKV_CUDA_DEF ekv_result ekv_cuda_elastic_prefill(ekv_cuda_elastic_cache *cache, const float *k,
                                                 const float *v, int source_capacity,
                                                 const int *lengths, cudaStream_t stream);
/* ekv_cache_append on the device: k, v device f32 [batch][kv_heads][head_dim]; active a
   host array [batch] (NULL = every sequence). */
EKV_CUDA_DEF ekv_result ekv_cuda_elastic_append(ekv_cuda_elastic_cache *cache, const float *k,
                                                const float *v, const unsigned char *active,
                                                cudaStream_t stream);
/* ekv_cache_compress on the device: q_observe device f32 [batch][heads][observe][head_dim]
   (topk only). The first topk call allocates the scoring workspace (see
   ekv_cuda_elastic_workspace_bytes), which is why it must not run inside stream capture. */
EKV_CUDA_DEF ekv_result ekv_cuda_elastic_compress(ekv_cuda_elastic_cache *cache,
                                                  const ekv_compress_desc *desc,
                                                  const float *q_observe, int heads, int observe,
                                                  double softmax_scale, cudaStream_t stream);
/* ekv_cache_observed_scores on the device, bit for bit: scores device double
   [batch][kv_heads][capacity]. */
EKV_CUDA_DEF ekv_result ekv_cuda_elastic_observed_scores(ekv_cuda_elastic_cache *cache,
                                                         const float *q_observe, int heads,
                                                         int observe, double softmax_scale,
                                                         double *scores, cudaStream_t stream);
/* Bytes of the stored form: the formula of ekv.h >>cacheops, equal to
   ekv_cache_memory_bytes of the same cache on the host. cache.allocation_bytes adds the
   lengths and alignment; the topk workspace is separate. */
EKV_CUDA_DEF size_t ekv_cuda_elastic_memory_bytes(const ekv_cuda_elastic_cache *cache);
/* Device scratch of a topk compress: scores (8 bytes) and slot map (4 bytes) per row of
   the capacity, and a (max, total) pair of doubles per observed query. */
EKV_CUDA_DEF size_t ekv_cuda_elastic_workspace_bytes(const ekv_cuda_elastic_cache *cache,
                                                     int heads, int observe);
/* A host copy (made with ekv_cache_create; free it with ekv_cache_free), lengths and
   compressed counts read from the device after `stream` finished. */
EKV_CUDA_DEF ekv_result ekv_cuda_elastic_download(const ekv_cuda_elastic_cache *cache,
                                                  ekv_host_cache *host, cudaStream_t stream);
EKV_CUDA_DEF void ekv_cuda_elastic_free(ekv_cuda_elastic_cache *cache);

#ifdef __cplusplus
}
#endif

#endif /* EKV_CUDA_CACHE_INL_DECLARED */

#if defined(EKV_IMPLEMENTATION) && defined(EKV_CUDA_IMPLEMENTATION_DONE) && \
    !defined(EKV_CUDA_CACHE_INL_IMPLEMENTED)
#define EKV_CUDA_CACHE_INL_IMPLEMENTED

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

/* >>elastic (implementation) =============================================== */

#define EKV_CUDA__ELASTIC_THREADS 128
#define EKV_CUDA__ELASTIC_WARPS (EKV_CUDA__ELASTIC_THREADS / 32)
/* Elements of a row one lane holds: head_dim / 32 for the supported head dims. */
#define EKV_CUDA__LANE_ELEMENTS 8
/* Shared staging of one compaction tile: rows, per-row scales, bias. */
#define EKV_CUDA__STAGE_BYTES 16384
#define EKV_CUDA__STAGE_ROWS 64
#define EKV_CUDA__STAGE_SCALE_WORDS 8 /* int4 at head_dim 256: 8 (scale, zero) pairs */

#if EKV_SCORE_LANES != EKV_CUDA__ELASTIC_THREADS
#error "topk scoring sums its softmax total in one partial per thread of a block"
#endif

/* The cache as the kernels see it. */
typedef struct ekv_cuda__elastic {
    unsigned char *k, *v, *k_scales, *v_scales;
    float *bias;
    int *lengths, *compressed;
    int dtype, batch, kv_heads, head_dim, capacity;
    int row_bytes, scale_bytes; /* per row; scale_bytes 0 without per-row scales */
} ekv_cuda__elastic;

/* What one compress does to each sequence, decided by the policy. */
typedef struct ekv_cuda__policy {
    int policy, compression, recent, sinks;
    float log_count[EKV_CUDA_ELASTIC_MAX_POOL + 1]; /* (float)log(n), the pool bias */
} ekv_cuda__policy;

/* topk scoring: the observed queries and where the scores go. */
typedef struct ekv_cuda__scoring {
    const float *q_observe;
    double *scores;   /* [batch][kv_heads][capacity]                  */
    double *stats;    /* [batch][kv_heads][queries][2]: max, total    */
    int *map;         /* [batch][kv_heads][capacity]: kept region tokens */
    int heads, observe, queries, region_only;
    double scale;
} ekv_cuda__scoring;

typedef struct ekv_cuda__append_args {
    const float *k, *v;
    unsigned int active[EKV_CUDA_ELASTIC_MAX_BATCH / 32];
} ekv_cuda__append_args;

typedef struct ekv_cuda__prefill_args {
    const float *k, *v;
    int source_capacity, tokens_per_block;
} ekv_cuda__prefill_args;

/* The fresh region of one sequence and what a compress keeps of it (ekv.h >>cacheops):
   the same integer arithmetic on the host mirror and on the device. */
typedef struct ekv_cuda__region {
    int first, recent, old, budget, sinks;
} ekv_cuda__region;

static __host__ __device__ __forceinline__ ekv_cuda__region
ekv_cuda__region_of(int length, int compressed, int recent, int sinks, int compression)
{
    ekv_cuda__region r;
    const int fresh = length - compressed;
    r.first = compressed;
    r.recent = recent < fresh ? recent : fresh;
    r.old = fresh - r.recent;
    r.budget = r.old > 0 ? (r.old + compression - 1) / compression : 0;
    r.sinks = compressed == 0 ? (sinks < r.budget ? sinks : r.budget) : 0;
    return r;
}

static __device__ __forceinline__ size_t ekv_cuda__row(const ekv_cuda__elastic &c, int b, int h,
                                                       int slot)
{
    return ((size_t)b * (size_t)c.kv_heads + (size_t)h) * (size_t)c.capacity + (size_t)slot;
}

static __device__ __forceinline__ unsigned char *ekv_cuda__values(const ekv_cuda__elastic &c,
                                                                  int which, size_t row)
{
    return (which ? c.v : c.k) + row * (size_t)c.row_bytes;
}

static __device__ __forceinline__ unsigned char *ekv_cuda__row_scale(const ekv_cuda__elastic &c,
                                                                     int which, size_t row)
{
    return c.scale_bytes ? (which ? c.v_scales : c.k_scales) + row * (size_t)c.scale_bytes : NULL;
}

static __device__ __forceinline__ float *ekv_cuda__head_scale(const ekv_cuda__elastic &c, int which,
                                                              int b, int h)
{
    return c.dtype == EKV_DTYPE_FP8
               ? reinterpret_cast<float *>(which ? c.v_scales : c.k_scales) +
                     (size_t)b * (size_t)c.kv_heads + (size_t)h
               : NULL;
}

/* ---- quantization: the formulas of ekv_quantize_row / ekv_dequantize_row ---- */

static __device__ __forceinline__ int ekv_cuda__quantize_value(float quotient, int lo, int hi)
{
    const float r = rintf(quotient);
    if (r != r) return 0;
    if (r < (float)lo) return lo;
    if (r > (float)hi) return hi;
    return (int)r;
}

static __device__ __forceinline__ unsigned short ekv_cuda__f16_bits(float x)
{
    return __half_as_ushort(__float2half_rn(x));
}

static __device__ __forceinline__ float ekv_cuda__f16_value(unsigned short bits)
{
    return __half2float(__ushort_as_half(bits));
}

/* The smaller of two (value, index) pairs, equal values to the lower index: the element a
   sequential scan keeping the first strict minimum ends on (as the CPU's int4 min). */
static __device__ __forceinline__ void ekv_cuda__warp_arg_min(float *value, int *index)
{
    int offset;
    for (offset = 16; offset > 0; offset /= 2) {
        const float other = __shfl_xor_sync(EKV_CUDA__FULL_MASK, *value, offset);
        const int other_index = __shfl_xor_sync(EKV_CUDA__FULL_MASK, *index, offset);
        if (other < *value || (other == *value && other_index < *index)) {
            *value = other;
            *index = other_index;
        }
    }
}

static __device__ __forceinline__ void ekv_cuda__warp_arg_max(float *value, int *index)
{
    int offset;
    for (offset = 16; offset > 0; offset /= 2) {
        const float other = __shfl_xor_sync(EKV_CUDA__FULL_MASK, *value, offset);
        const int other_index = __shfl_xor_sync(EKV_CUDA__FULL_MASK, *index, offset);
        if (other > *value || (other == *value && other_index < *index)) {
            *value = other;
            *index = other_index;
        }
    }
}

/* max |x| over the warp's row; NaN ignored as by the CPU's `if (a > amax)`. */
static __device__ __forceinline__ float ekv_cuda__warp_amax(const float x[EKV_CUDA__LANE_ELEMENTS],
                                                            int per_lane)
{
    float amax = 0.0f;
    int e, offset;
    for (e = 0; e < per_lane; e++)
        if (fabsf(x[e]) > amax) amax = fabsf(x[e]);
    for (offset = 16; offset > 0; offset /= 2) {
        const float other = __shfl_xor_sync(EKV_CUDA__FULL_MASK, amax, offset);
        if (other > amax) amax = other;
    }
    return amax;
}

/* Quantizes one row held by a warp (lane owns elements lane + 32 e) into `row` and its
   per-row scale data, in global or shared memory. Every lane of the warp must call it. */
static __device__ void ekv_cuda__quantize_row_warp(int dtype, const float x[EKV_CUDA__LANE_ELEMENTS],
                                                   int per_lane, float head_scale, unsigned char *row,
                                                   unsigned char *row_scale, int lane)
{
    int e;
    switch (dtype) {
    case EKV_DTYPE_F32:
        for (e = 0; e < per_lane; e++) reinterpret_cast<float *>(row)[lane + 32 * e] = x[e];
        break;
    case EKV_DTYPE_F16:
        for (e = 0; e < per_lane; e++)
            reinterpret_cast<unsigned short *>(row)[lane + 32 * e] = ekv_cuda__f16_bits(x[e]);
        break;
    case EKV_DTYPE_BF16:
        for (e = 0; e < per_lane; e++)
            reinterpret_cast<unsigned short *>(row)[lane + 32 * e] =
                __bfloat16_as_ushort(__float2bfloat16_rn(x[e]));
        break;
    case EKV_DTYPE_INT8: {
        const float scale = __fdiv_rn(ekv_cuda__warp_amax(x, per_lane), 127.0f);
        for (e = 0; e < per_lane; e++)
            reinterpret_cast<signed char *>(row)[lane + 32 * e] = (signed char)(
                scale == 0.0f ? 0 : ekv_cuda__quantize_value(__fdiv_rn(x[e], scale), -127, 127));
        if (lane == 0) *reinterpret_cast<float *>(row_scale) = scale;
        break;
    }
    case EKV_DTYPE_INT4:
        /* element lane + 32 e is element `lane` of group e */
        for (e = 0; e < per_lane; e++) {
            float mn = x[e], mx = x[e], scale, zero;
            int mn_index = lane, mx_index = lane, q, high;
            unsigned short scale_h, zero_h;
            ekv_cuda__warp_arg_min(&mn, &mn_index);
            ekv_cuda__warp_arg_max(&mx, &mx_index);
            scale_h = ekv_cuda__f16_bits(__fdiv_rn(__fsub_rn(mx, mn), 15.0f));
            zero_h = ekv_cuda__f16_bits(mn);
            scale = ekv_cuda__f16_value(scale_h);
            zero = ekv_cuda__f16_value(zero_h);
            q = scale == 0.0f ? 0 : ekv_cuda__quantize_value(__fdiv_rn(__fsub_rn(x[e], zero), scale), 0, 15);
            high = __shfl_down_sync(EKV_CUDA__FULL_MASK, q, 1);
            if ((lane & 1) == 0) row[(lane + 32 * e) / 2] = (unsigned char)(q | (high << 4));
            if (lane == 0) {
                reinterpret_cast<unsigned short *>(row_scale)[2 * e] = scale_h;
                reinterpret_cast<unsigned short *>(row_scale)[2 * e + 1] = zero_h;
            }
        }
        break;
    case EKV_DTYPE_FP8:
        for (e = 0; e < per_lane; e++)
            row[lane + 32 * e] = (unsigned char)__nv_cvt_float_to_fp8(
                head_scale == 0.0f ? 0.0f : __fdiv_rn(x[e], head_scale), __NV_SATFINITE, __NV_E4M3);
        break;
    default:
        break;
    }
}

/* Element d of a stored row, dequantized exactly as ekv_dequantize_row does. */
static __device__ __forceinline__ float ekv_cuda__dequantize(int dtype, const unsigned char *row,
                                                             const unsigned char *row_scale,
                                                             float head_scale, int d)
{
    switch (dtype) {
    case EKV_DTYPE_F32:
        return reinterpret_cast<const float *>(row)[d];
    case EKV_DTYPE_F16:
        return ekv_cuda__f16_value(reinterpret_cast<const unsigned short *>(row)[d]);
    case EKV_DTYPE_BF16:
        return __uint_as_float((unsigned int)reinterpret_cast<const unsigned short *>(row)[d] << 16);
    case EKV_DTYPE_INT8:
        return __fmul_rn((float)reinterpret_cast<const signed char *>(row)[d],
                         *reinterpret_cast<const float *>(row_scale));
    case EKV_DTYPE_INT4: {
        const unsigned short *pair = reinterpret_cast<const unsigned short *>(row_scale) + 2 * (d / 32);
        const int q = (d & 1) ? row[d / 2] >> 4 : row[d / 2] & 15;
        return __fadd_rn(__fmul_rn((float)q, ekv_cuda__f16_value(pair[0])), ekv_cuda__f16_value(pair[1]));
    }
    case EKV_DTYPE_FP8:
        return __fmul_rn(ekv_cuda__fp8_to_float(row[d]), head_scale);
    default:
        return 0.0f;
    }
}

/* ---- append and prefill ---------------------------------------------------- */

/* Row (b, h) of K or V from `source` (lane reads elements lane + 32 e) into `slot`; an fp8
   head scale still 0 takes amax(row) / 448 first. */
static __device__ void ekv_cuda__store_row(const ekv_cuda__elastic &c, int which, int b, int h,
                                           int slot, const float *source, int lane)
{
    const int per_lane = c.head_dim / 32;
    const size_t row = ekv_cuda__row(c, b, h, slot);
    float x[EKV_CUDA__LANE_ELEMENTS], head_scale = 0.0f;
    float *scale_cell = ekv_cuda__head_scale(c, which, b, h);
    int e;
    for (e = 0; e < per_lane; e++) x[e] = source[lane + 32 * e];
    if (scale_cell) head_scale = *scale_cell;
    ekv_cuda__quantize_row_warp(c.dtype, x, per_lane, head_scale, ekv_cuda__values(c, which, row),
                                ekv_cuda__row_scale(c, which, row), lane);
    if (which == 0 && c.bias && lane == 0) c.bias[row] = 0.0f;
}

/* One CTA per sequence: a warp per (kv head, K|V) row, then the length moves on. */
__global__ void __launch_bounds__(EKV_CUDA__ELASTIC_THREADS)
    ekv_cuda__append_kernel(ekv_cuda__elastic c, ekv_cuda__append_args a)
{
    const int b = (int)blockIdx.x, warp = (int)threadIdx.x / 32, lane = (int)threadIdx.x % 32;
    int length, r;
    if (!((a.active[b / 32] >> (b % 32)) & 1u)) return;
    length = c.lengths[b]; /* read by all before thread 0 changes it after the barrier */
    for (r = warp; r < 2 * c.kv_heads; r += EKV_CUDA__ELASTIC_WARPS) {
        const int which = r & 1, h = r >> 1;
        const float *source = (which ? a.v : a.k) + ((size_t)b * (size_t)c.kv_heads + (size_t)h) *
                                                        (size_t)c.head_dim;
        float *scale_cell = ekv_cuda__head_scale(c, which, b, h);
        if (scale_cell && *scale_cell == 0.0f) {
            float x[EKV_CUDA__LANE_ELEMENTS], scale;
            int e;
            for (e = 0; e < c.head_dim / 32; e++) x[e] = source[lane + 32 * e];
            scale = __fdiv_rn(ekv_cuda__warp_amax(x, c.head_dim / 32), EKV_FP8_MAX);
            __syncwarp();
            if (lane == 0) *scale_cell = scale;
            __syncwarp();
        }
        ekv_cuda__store_row(c, which, b, h, length, source, lane);
    }
    __syncthreads();
    if (threadIdx.x == 0) c.lengths[b] = length + 1;
}

/* fp8 prefill: the head scale of (b, h, K|V) = amax of its prefill tokens / 448. */
__global__ void __launch_bounds__(EKV_CUDA__ELASTIC_THREADS)
    ekv_cuda__prefill_scale_kernel(ekv_cuda__elastic c, ekv_cuda__prefill_args a)
{
    __shared__ float partial[EKV_CUDA__ELASTIC_THREADS];
    const int which = (int)blockIdx.x, h = (int)blockIdx.y, b = (int)blockIdx.z;
    const size_t count = (size_t)c.lengths[b] * (size_t)c.head_dim;
    const float *source = (which ? a.v : a.k) + ((size_t)b * (size_t)c.kv_heads + (size_t)h) *
                                                    (size_t)a.source_capacity * (size_t)c.head_dim;
    float amax = 0.0f;
    size_t i;
    for (i = threadIdx.x; i < count; i += EKV_CUDA__ELASTIC_THREADS)
        if (fabsf(source[i]) > amax) amax = fabsf(source[i]);
    partial[threadIdx.x] = amax;
    __syncthreads();
    if (threadIdx.x == 0) {
        int t;
        for (t = 1; t < EKV_CUDA__ELASTIC_THREADS; t++)
            if (partial[t] > amax) amax = partial[t];
        *ekv_cuda__head_scale(c, which, b, h) = __fdiv_rn(amax, EKV_FP8_MAX);
    }
}

/* Prefill rows: a CTA per (tokens_per_block tokens, kv head, sequence), a warp per row. */
__global__ void __launch_bounds__(EKV_CUDA__ELASTIC_THREADS)
    ekv_cuda__prefill_kernel(ekv_cuda__elastic c, ekv_cuda__prefill_args a)
{
    const int h = (int)blockIdx.y, b = (int)blockIdx.z;
    const int warp = (int)threadIdx.x / 32, lane = (int)threadIdx.x % 32;
    const int first = (int)blockIdx.x * a.tokens_per_block;
    const int end = min(c.lengths[b], first + a.tokens_per_block);
    int r;
    for (r = warp; r < 2 * (end - first); r += EKV_CUDA__ELASTIC_WARPS) {
        const int which = r & 1, t = first + (r >> 1);
        const float *source = (which ? a.v : a.k) +
                              (((size_t)b * (size_t)c.kv_heads + (size_t)h) * (size_t)a.source_capacity +
                               (size_t)t) * (size_t)c.head_dim;
        ekv_cuda__store_row(c, which, b, h, t, source, lane);
    }
}

/* ---- topk scoring ---------------------------------------------------------- */

/* scale x dot(q, K_slot) + bias in double, in the order of ekv__dot_f64: four interleaved
   partial sums, (s0 + s1) + (s2 + s3). */
static __device__ double ekv_cuda__logit(const ekv_cuda__elastic &c, size_t row, float head_scale,
                                         const float *q, double scale)
{
    const unsigned char *values = ekv_cuda__values(c, 0, row);
    const unsigned char *row_scale = ekv_cuda__row_scale(c, 0, row);
    double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
    int i;
    for (i = 0; i + 3 < c.head_dim; i += 4) {
        s0 = __dadd_rn(s0, __dmul_rn((double)q[i], (double)ekv_cuda__dequantize(c.dtype, values, row_scale, head_scale, i)));
        s1 = __dadd_rn(s1, __dmul_rn((double)q[i + 1], (double)ekv_cuda__dequantize(c.dtype, values, row_scale, head_scale, i + 1)));
        s2 = __dadd_rn(s2, __dmul_rn((double)q[i + 2], (double)ekv_cuda__dequantize(c.dtype, values, row_scale, head_scale, i + 2)));
        s3 = __dadd_rn(s3, __dmul_rn((double)q[i + 3], (double)ekv_cuda__dequantize(c.dtype, values, row_scale, head_scale, i + 3)));
    }
    return __dadd_rn(__dmul_rn(scale, __dadd_rn(__dadd_rn(s0, s1), __dadd_rn(s2, s3))),
                     c.bias ? (double)c.bias[row] : 0.0);
}

static __device__ __forceinline__ const float *ekv_cuda__observed_query(const ekv_cuda__elastic &c,
                                                                        const ekv_cuda__scoring &s,
                                                                        int b, int g, int j)
{
    const int group = s.heads / c.kv_heads;
    return s.q_observe + (((size_t)b * (size_t)s.heads + (size_t)g * (size_t)group +
                           (size_t)(j / s.observe)) * (size_t)s.observe + (size_t)(j % s.observe)) *
                             (size_t)c.head_dim;
}

/* Per (observed query, kv head, sequence): the max logit over the whole cache and the
   softmax total, summed as one partial per thread (slots thread, thread + 128, ...) and
   then the partials in thread order - EKV_SCORE_LANES. */
__global__ void __launch_bounds__(EKV_CUDA__ELASTIC_THREADS)
    ekv_cuda__score_stats_kernel(ekv_cuda__elastic c, ekv_cuda__scoring s)
{
    __shared__ double partial[EKV_CUDA__ELASTIC_THREADS];
    __shared__ double warp_max[EKV_CUDA__ELASTIC_WARPS];
    const int j = (int)blockIdx.x, g = (int)blockIdx.y, b = (int)blockIdx.z;
    const int length = c.lengths[b];
    const float *q = ekv_cuda__observed_query(c, s, b, g, j);
    const float *scale_cell = ekv_cuda__head_scale(c, 0, b, g);
    const float head_scale = scale_cell ? *scale_cell : 0.0f;
    double max = -(double)INFINITY, sum = 0.0;
    int t;
    /* the max does not depend on the order: shuffles, then the warps' maxima */
    for (t = (int)threadIdx.x; t < length; t += EKV_CUDA__ELASTIC_THREADS) {
        const double logit = ekv_cuda__logit(c, ekv_cuda__row(c, b, g, t), head_scale, q, s.scale);
        if (logit > max) max = logit;
    }
    for (t = 16; t > 0; t /= 2) {
        const double other = __shfl_xor_sync(EKV_CUDA__FULL_MASK, max, t);
        if (other > max) max = other;
    }
    if (threadIdx.x % 32 == 0) warp_max[threadIdx.x / 32] = max;
    __syncthreads();
    for (t = 0; t < EKV_CUDA__ELASTIC_WARPS; t++)
        if (warp_max[t] > max) max = warp_max[t];
    for (t = (int)threadIdx.x; t < length; t += EKV_CUDA__ELASTIC_THREADS)
        sum = __dadd_rn(sum, exp(__dadd_rn(ekv_cuda__logit(c, ekv_cuda__row(c, b, g, t), head_scale, q,
                                                           s.scale), -max)));
    partial[threadIdx.x] = sum;
    __syncthreads();
    if (threadIdx.x == 0) {
        double total = 0.0;
        double *out = s.stats + (((size_t)b * (size_t)c.kv_heads + (size_t)g) * (size_t)s.queries +
                                 (size_t)j) * 2;
        for (t = 0; t < EKV_CUDA__ELASTIC_THREADS; t++) total = __dadd_rn(total, partial[t]);
        out[0] = max;
        out[1] = total;
    }
}

/* A thread per slot: the sum over the observed queries, in order, of each one's
   probability. region_only: just the slots a compress ranks, [compressed, + old). */
__global__ void __launch_bounds__(EKV_CUDA__ELASTIC_THREADS)
    ekv_cuda__score_accumulate_kernel(ekv_cuda__elastic c, ekv_cuda__scoring s, ekv_cuda__policy p)
{
    const int g = (int)blockIdx.y, b = (int)blockIdx.z;
    const int length = c.lengths[b];
    const ekv_cuda__region r =
        ekv_cuda__region_of(length, c.compressed[b], p.recent, p.sinks, p.compression);
    const int begin = s.region_only ? r.first : 0;
    const int end = s.region_only ? r.first + r.old : length;
    const int slot = begin + (int)blockIdx.x * EKV_CUDA__ELASTIC_THREADS + (int)threadIdx.x;
    const float *scale_cell = ekv_cuda__head_scale(c, 0, b, g);
    const float head_scale = scale_cell ? *scale_cell : 0.0f;
    const size_t row = ekv_cuda__row(c, b, g, slot);
    const double *stats = s.stats + ((size_t)b * (size_t)c.kv_heads + (size_t)g) * (size_t)s.queries * 2;
    double score = 0.0;
    int j;
    if (slot >= end) return;
    for (j = 0; j < s.queries; j++) {
        const double logit = ekv_cuda__logit(c, row, head_scale, ekv_cuda__observed_query(c, s, b, g, j), s.scale);
        score = __dadd_rn(score, exp(__dadd_rn(logit, -stats[2 * j])) / stats[2 * j + 1]);
    }
    s.scores[row] = score;
}

/* Scores as unsigned keys in the same order: NaN lowest (it ranks last), -0 as +0. */
static __device__ __forceinline__ unsigned long long ekv_cuda__score_key(double score)
{
    unsigned long long bits;
    if (score != score) return 0ull;
    if (score == 0.0) score = 0.0;
    bits = (unsigned long long)__double_as_longlong(score);
    return (bits >> 63) ? ~bits : bits | 0x8000000000000000ull;
}

/* Exclusive prefix sum of `value` over the block in thread order; *total gets the sum.
   `warp_totals` is shared memory of EKV_CUDA__ELASTIC_WARPS ints; one barrier, so two
   consecutive calls must pass different arrays (a third may reuse the first). */
static __device__ int ekv_cuda__block_scan(int value, int *warp_totals, int *total)
{
    const int lane = (int)threadIdx.x % 32, warp = (int)threadIdx.x / 32;
    int inclusive = value, offset, w, before = 0, sum = 0;
    for (offset = 1; offset < 32; offset *= 2) {
        const int other = __shfl_up_sync(EKV_CUDA__FULL_MASK, inclusive, offset);
        if (lane >= offset) inclusive += other;
    }
    if (lane == 31) warp_totals[warp] = inclusive;
    __syncthreads();
    for (w = 0; w < EKV_CUDA__ELASTIC_WARPS; w++) {
        if (w < warp) before += warp_totals[w];
        sum += warp_totals[w];
    }
    *total = sum;
    return before + inclusive - value;
}

/* Per (kv head, sequence): the sinks plus the budget - sinks highest-scoring region tokens
   (ties to the older), as region-relative tokens in order into map[0, budget). */
__global__ void __launch_bounds__(EKV_CUDA__ELASTIC_THREADS)
    ekv_cuda__select_kernel(ekv_cuda__elastic c, ekv_cuda__scoring s, ekv_cuda__policy p)
{
    __shared__ int histogram[3][256];
    __shared__ int warp_totals[2][EKV_CUDA__ELASTIC_WARPS];
    const int g = (int)blockIdx.x, b = (int)blockIdx.y;
    const ekv_cuda__region r =
        ekv_cuda__region_of(c.lengths[b], c.compressed[b], p.recent, p.sinks, p.compression);
    const size_t head_row = ekv_cuda__row(c, b, g, 0);
    const double *scores = s.scores + head_row + (size_t)r.first;
    int *map = s.map + head_row;
    const int need = r.budget - r.sinks;
    unsigned long long threshold = 0ull, mask = 0ull;
    int remaining = need, pass, t, base, carry_ties = 0, carry_kept = 0;
    if (r.old <= 0) return;
    /* radix select, most significant byte first: the key of the need-th highest score.
       Every thread reads the digit off the histogram itself; three histograms in turn
       let one barrier per pass suffice: after the barrier of pass p every thread is done
       reading pass p - 1's histogram, which it clears for pass p + 2. */
    if (need > 0) {
        for (t = (int)threadIdx.x; t < 2 * 256; t += EKV_CUDA__ELASTIC_THREADS) histogram[t / 256][t % 256] = 0;
        __syncthreads();
        for (pass = 0; pass < 8; pass++) {
            const int shift = 56 - 8 * pass;
            int *counts = histogram[pass % 3], digit, above = 0;
            for (t = r.sinks + (int)threadIdx.x; t < r.old; t += EKV_CUDA__ELASTIC_THREADS) {
                const unsigned long long key = ekv_cuda__score_key(scores[t]);
                if ((key & mask) == threshold) atomicAdd(&counts[(key >> shift) & 255u], 1);
            }
            __syncthreads();
            for (t = (int)threadIdx.x; t < 256; t += EKV_CUDA__ELASTIC_THREADS) histogram[(pass + 2) % 3][t] = 0;
            for (digit = 255; digit > 0; digit--) {
                if (above + counts[digit] >= remaining) break;
                above += counts[digit];
            }
            threshold |= (unsigned long long)digit << shift;
            mask |= 0xffull << shift;
            remaining -= above;
        }
    }
    /* keys above the threshold, plus the first `remaining` equal to it, plus the sinks */
    for (base = 0; base < r.old; base += EKV_CUDA__ELASTIC_THREADS) {
        const int token = base + (int)threadIdx.x;
        const bool sink = token < r.sinks;
        const bool candidate = !sink && token < r.old && need > 0;
        const unsigned long long key = candidate ? ekv_cuda__score_key(scores[token]) : 0ull;
        const bool tie = candidate && key == threshold;
        int ties, kept, rank, position;
        bool keep;
        rank = carry_ties + ekv_cuda__block_scan(tie ? 1 : 0, warp_totals[0], &ties);
        keep = sink || (candidate && (key > threshold || (tie && rank < remaining)));
        position = carry_kept + ekv_cuda__block_scan(keep ? 1 : 0, warp_totals[1], &kept);
        if (keep) map[position] = token;
        carry_ties += ties;
        carry_kept += kept;
    }
}

/* ---- compaction ------------------------------------------------------------ */

/* Region-relative source tokens [*first, *first + *count) of new slot i (< budget + recent). */
static __device__ __forceinline__ void ekv_cuda__slot_source(const ekv_cuda__policy &p,
                                                             const ekv_cuda__region &r,
                                                             const int *map, int i, int *first,
                                                             int *count)
{
    *count = 1;
    if (i >= r.budget) {
        *first = r.old + (i - r.budget);
        return;
    }
    switch (p.policy) {
    case EKV_POLICY_POOL:
        *first = i * p.compression;
        *count = min(p.compression, r.old - *first);
        break;
    case EKV_POLICY_WINDOW:
        *first = i < r.sinks ? i : r.old - r.budget + i;
        break;
    case EKV_POLICY_TOPK:
        *first = map[i];
        break;
    default: /* none, stride: the newest old token and every C-th before it */
        *first = (r.old - 1) % p.compression + i * p.compression;
        break;
    }
}

/* The mean of `count` stored rows starting at `row` (summed in double in token order, as
   the CPU does), requantized by the warp into `out_row` / `out_scale`. */
static __device__ void ekv_cuda__pool_row_warp(const ekv_cuda__elastic &c, int which, size_t row,
                                               int count, float head_scale, unsigned char *out_row,
                                               unsigned char *out_scale, int lane)
{
    const int per_lane = c.head_dim / 32;
    double sum[EKV_CUDA__LANE_ELEMENTS];
    float x[EKV_CUDA__LANE_ELEMENTS];
    int e, t;
    for (e = 0; e < per_lane; e++) sum[e] = 0.0;
    for (t = 0; t < count; t++) {
        const unsigned char *values = ekv_cuda__values(c, which, row + (size_t)t);
        const unsigned char *row_scale = ekv_cuda__row_scale(c, which, row + (size_t)t);
        for (e = 0; e < per_lane; e++)
            sum[e] = __dadd_rn(sum[e], (double)ekv_cuda__dequantize(c.dtype, values, row_scale,
                                                                    head_scale, lane + 32 * e));
    }
    for (e = 0; e < per_lane; e++) x[e] = __double2float_rn(sum[e] / (double)count);
    ekv_cuda__quantize_row_warp(c.dtype, x, per_lane, head_scale, out_row, out_scale, lane);
}

/* Per (K|V, kv head, sequence): the new slots of the region in tiles through shared
   memory. A tile's sources are read (or pooled) before any of its slots is written, and
   every source lies at or after its slot, so no later tile's sources are overwritten. */
__global__ void __launch_bounds__(EKV_CUDA__ELASTIC_THREADS)
    ekv_cuda__compact_kernel(ekv_cuda__elastic c, ekv_cuda__scoring s, ekv_cuda__policy p,
                             int tile_rows)
{
    __shared__ uint4 stage[EKV_CUDA__STAGE_BYTES / 16];
    __shared__ unsigned int stage_scales[EKV_CUDA__STAGE_ROWS * EKV_CUDA__STAGE_SCALE_WORDS];
    __shared__ float stage_bias[EKV_CUDA__STAGE_ROWS];
    const int which = (int)blockIdx.x, g = (int)blockIdx.y, b = (int)blockIdx.z;
    const int warp = (int)threadIdx.x / 32, lane = (int)threadIdx.x % 32;
    const ekv_cuda__region r =
        ekv_cuda__region_of(c.lengths[b], c.compressed[b], p.recent, p.sinks, p.compression);
    const size_t head_row = ekv_cuda__row(c, b, g, 0);
    const int row_words = c.row_bytes / 16, scale_words = c.scale_bytes / 4;
    const float *scale_cell = ekv_cuda__head_scale(c, which, b, g);
    const float head_scale = scale_cell ? *scale_cell : 0.0f;
    const uint4 *rows_in = reinterpret_cast<const uint4 *>(which ? c.v : c.k);
    uint4 *rows_out = reinterpret_cast<uint4 *>(which ? c.v : c.k);
    unsigned int *scales = reinterpret_cast<unsigned int *>(which ? c.v_scales : c.k_scales);
    const int *map = s.map ? s.map + head_row : NULL;
    const int slots = r.budget + r.recent;
    int tile, i, w, first, count;
    if (r.old <= 0) return;
    for (tile = 0; tile < slots; tile += tile_rows) {
        const int rows = min(tile_rows, slots - tile);
        for (w = (int)threadIdx.x; w < rows * row_words; w += EKV_CUDA__ELASTIC_THREADS) {
            ekv_cuda__slot_source(p, r, map, tile + w / row_words, &first, &count);
            if (count == 1)
                stage[w] = rows_in[(head_row + (size_t)(r.first + first)) * (size_t)row_words +
                                   (size_t)(w % row_words)];
        }
        for (w = (int)threadIdx.x; w < rows * scale_words; w += EKV_CUDA__ELASTIC_THREADS) {
            ekv_cuda__slot_source(p, r, map, tile + w / scale_words, &first, &count);
            if (count == 1)
                stage_scales[w] = scales[(head_row + (size_t)(r.first + first)) * (size_t)scale_words +
                                         (size_t)(w % scale_words)];
        }
        if (which == 0 && c.bias)
            for (i = (int)threadIdx.x; i < rows; i += EKV_CUDA__ELASTIC_THREADS) {
                ekv_cuda__slot_source(p, r, map, tile + i, &first, &count);
                stage_bias[i] = count == 1 ? c.bias[head_row + (size_t)(r.first + first)] : p.log_count[count];
            }
        for (i = warp; i < rows; i += EKV_CUDA__ELASTIC_WARPS) {
            ekv_cuda__slot_source(p, r, map, tile + i, &first, &count);
            if (count > 1)
                ekv_cuda__pool_row_warp(c, which, head_row + (size_t)(r.first + first), count, head_scale,
                                        reinterpret_cast<unsigned char *>(stage) + (size_t)i * (size_t)c.row_bytes,
                                        reinterpret_cast<unsigned char *>(stage_scales) +
                                            (size_t)i * (size_t)c.scale_bytes,
                                        lane);
        }
        __syncthreads();
        for (w = (int)threadIdx.x; w < rows * row_words; w += EKV_CUDA__ELASTIC_THREADS)
            rows_out[(head_row + (size_t)(r.first + tile)) * (size_t)row_words + (size_t)w] = stage[w];
        for (w = (int)threadIdx.x; w < rows * scale_words; w += EKV_CUDA__ELASTIC_THREADS)
            scales[(head_row + (size_t)(r.first + tile)) * (size_t)scale_words + (size_t)w] = stage_scales[w];
        if (which == 0 && c.bias)
            for (i = (int)threadIdx.x; i < rows; i += EKV_CUDA__ELASTIC_THREADS)
                c.bias[head_row + (size_t)(r.first + tile + i)] = stage_bias[i];
        __syncthreads();
    }
}

/* After every other kernel of a compress has read them: the new counts. */
__global__ void __launch_bounds__(EKV_CUDA__ELASTIC_THREADS)
    ekv_cuda__compress_counts_kernel(ekv_cuda__elastic c, ekv_cuda__policy p)
{
    int b;
    for (b = (int)threadIdx.x; b < c.batch; b += EKV_CUDA__ELASTIC_THREADS) {
        const ekv_cuda__region r =
            ekv_cuda__region_of(c.lengths[b], c.compressed[b], p.recent, p.sinks, p.compression);
        if (r.old <= 0) continue;
        c.compressed[b] = r.first + r.budget;
        c.lengths[b] = r.first + r.budget + r.recent;
    }
}

/* ---- host side ------------------------------------------------------------- */

static ekv_cuda__elastic ekv_cuda__elastic_view(const ekv_cuda_elastic_cache *e)
{
    ekv_cuda__elastic c;
    c.k = e->cache.k;
    c.v = e->cache.v;
    c.k_scales = e->cache.k_scales;
    c.v_scales = e->cache.v_scales;
    c.bias = e->cache.bias;
    c.lengths = e->cache.lengths;
    c.compressed = e->compressed;
    c.dtype = (int)e->cache.dtype;
    c.batch = e->cache.batch;
    c.kv_heads = e->cache.kv_heads;
    c.head_dim = e->cache.head_dim;
    c.capacity = e->cache.capacity;
    c.row_bytes = (int)ekv_dtype_row_bytes(e->cache.dtype, e->cache.head_dim);
    c.scale_bytes = (int)ekv_dtype_row_scale_bytes(e->cache.dtype, e->cache.head_dim);
    return c;
}

static ekv_result ekv_cuda__elastic_check(const ekv_cuda_elastic_cache *e, const char *fn)
{
    if (!e || !e->cache.allocation || !e->compressed || !e->host_lengths || !e->host_compressed)
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "%s: the cache was not made by ekv_cuda_elastic_create", fn);
    return EKV_SUCCESS;
}

EKV_CUDA_DEF void ekv_cuda_elastic_free(ekv_cuda_elastic_cache *cache)
{
    if (!cache) return;
    ekv_cuda_cache_free(&cache->cache);
    /* failed frees at teardown have no caller that could act on them */
    if (cache->compressed) (void)cudaFree(cache->compressed);
    if (cache->workspace) (void)cudaFree(cache->workspace);
    ekv__free(cache->host_lengths);
    ekv__free(cache->host_compressed);
    memset(cache, 0, sizeof *cache);
}

EKV_CUDA_DEF ekv_result ekv_cuda_elastic_create(ekv_cuda_elastic_cache *cache, ekv_dtype dtype,
                                                int batch, int kv_heads, int head_dim,
                                                int capacity, int with_bias)
{
    const char *fn = "ekv_cuda_elastic_create";
    ekv_cuda__layout l;
    ekv_result result = EKV_SUCCESS;
    if (!cache) return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: NULL cache", fn);
    memset(cache, 0, sizeof *cache);
    if ((int)dtype < 0 || dtype >= EKV_DTYPE_COUNT)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: unknown dtype %d", fn, (int)dtype);
    if (batch < 1 || batch > EKV_CUDA_ELASTIC_MAX_BATCH || kv_heads < 1 || capacity < 1 ||
        kv_heads > 65535)
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "%s: batch %d (1..%d), kv_heads %d (1..65535) and capacity %d (>= 1)",
                             fn, batch, EKV_CUDA_ELASTIC_MAX_BATCH, kv_heads, capacity);
    if (!ekv_cuda_supports_head_dim(head_dim))
        return ekv_set_error(EKV_ERR_UNSUPPORTED,
                             "%s: head_dim %d is not supported by the CUDA kernels (supported: %s)",
                             fn, head_dim, EKV_CUDA_HEAD_DIMS);
    cache->cache.dtype = dtype;
    cache->cache.batch = batch;
    cache->cache.kv_heads = kv_heads;
    cache->cache.head_dim = head_dim;
    cache->cache.capacity = capacity;
    EKV_CUDA__TRY_EKV(ekv_cuda__current_device(&cache->cache.device, &cache->cache.sm));
    EKV_CUDA__TRY_EKV(ekv_cuda__check_dtype_device(dtype, cache->cache.sm));
    l = ekv_cuda__layout_of(dtype, batch, kv_heads, head_dim, capacity, with_bias != 0);
    EKV_CUDA__TRY(cudaMalloc(&cache->cache.allocation, l.total));
    ekv_cuda__cache_point(&cache->cache, &l);
    EKV_CUDA__TRY(cudaMemset(cache->cache.allocation, 0, l.total));
    EKV_CUDA__TRY(cudaMalloc((void **)&cache->compressed, (size_t)batch * sizeof(int)));
    EKV_CUDA__TRY(cudaMemset(cache->compressed, 0, (size_t)batch * sizeof(int)));
    cache->host_lengths = (int *)ekv__alloc((size_t)batch, sizeof(int));
    cache->host_compressed = (int *)ekv__alloc((size_t)batch, sizeof(int));
    if (!cache->host_lengths || !cache->host_compressed) result = EKV_ERR_OUT_OF_MEMORY;
done:
    if (result != EKV_SUCCESS) ekv_cuda_elastic_free(cache);
    return result;
}

EKV_CUDA_DEF size_t ekv_cuda_elastic_memory_bytes(const ekv_cuda_elastic_cache *cache)
{
    const ekv_cuda_cache *c = cache ? &cache->cache : NULL;
    size_t rows;
    if (!c || c->batch < 1 || c->kv_heads < 1 || c->capacity < 1) return 0;
    rows = (size_t)c->batch * (size_t)c->kv_heads * (size_t)c->capacity;
    return rows * (2 * (ekv_dtype_row_bytes(c->dtype, c->head_dim) +
                        ekv_dtype_row_scale_bytes(c->dtype, c->head_dim)) +
                   (c->bias ? sizeof(float) : 0)) +
           (c->dtype == EKV_DTYPE_FP8 ? 2 * sizeof(float) * (size_t)c->batch * (size_t)c->kv_heads : 0);
}

EKV_CUDA_DEF ekv_result ekv_cuda_elastic_prefill(ekv_cuda_elastic_cache *cache, const float *k,
                                                 const float *v, int source_capacity,
                                                 const int *lengths, cudaStream_t stream)
{
    const char *fn = "ekv_cuda_elastic_prefill";
    ekv_result result = ekv_cuda__elastic_check(cache, fn);
    ekv_cuda__elastic c;
    ekv_cuda__prefill_args a;
    int b, longest = 0;
    if (result != EKV_SUCCESS) return result;
    if (!k || !v || !lengths) return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: NULL k, v or lengths", fn);
    for (b = 0; b < cache->cache.batch; b++) {
        if (lengths[b] < 0 || lengths[b] > source_capacity || lengths[b] > cache->cache.capacity)
            return ekv_set_error(EKV_ERR_INVALID_ARG,
                                 "%s: lengths[%d] = %d outside [0, min(source_capacity %d, "
                                 "capacity %d)]", fn, b, lengths[b], source_capacity,
                                 cache->cache.capacity);
        if (lengths[b] > longest) longest = lengths[b];
    }
    c = ekv_cuda__elastic_view(cache);
    a.k = k;
    a.v = v;
    a.source_capacity = source_capacity;
    a.tokens_per_block = 64;
    memcpy(cache->host_lengths, lengths, (size_t)cache->cache.batch * sizeof(int));
    memset(cache->host_compressed, 0, (size_t)cache->cache.batch * sizeof(int));
    EKV_CUDA__TRY(cudaMemcpyAsync(cache->cache.lengths, cache->host_lengths,
                                  (size_t)cache->cache.batch * sizeof(int), cudaMemcpyHostToDevice,
                                  stream));
    EKV_CUDA__TRY(cudaMemsetAsync(cache->compressed, 0, (size_t)cache->cache.batch * sizeof(int), stream));
    if (cache->cache.dtype == EKV_DTYPE_FP8)
        EKV_CUDA__TRY_EKV(EKV_CUDA__LAUNCH("ekv_cuda__prefill_scale_kernel", ekv_cuda__prefill_scale_kernel,
                                           dim3(2, (unsigned)c.kv_heads, (unsigned)c.batch),
                                           dim3(EKV_CUDA__ELASTIC_THREADS), stream, c, a));
    if (longest > 0)
        EKV_CUDA__TRY_EKV(EKV_CUDA__LAUNCH("ekv_cuda__prefill_kernel", ekv_cuda__prefill_kernel,
                                           dim3((unsigned)((longest + a.tokens_per_block - 1) /
                                                           a.tokens_per_block),
                                                (unsigned)c.kv_heads, (unsigned)c.batch),
                                           dim3(EKV_CUDA__ELASTIC_THREADS), stream, c, a));
done:
    return result;
}

EKV_CUDA_DEF ekv_result ekv_cuda_elastic_append(ekv_cuda_elastic_cache *cache, const float *k,
                                                const float *v, const unsigned char *active,
                                                cudaStream_t stream)
{
    const char *fn = "ekv_cuda_elastic_append";
    ekv_result result = ekv_cuda__elastic_check(cache, fn);
    ekv_cuda__append_args a;
    int b;
    if (result != EKV_SUCCESS) return result;
    if (!k || !v) return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: NULL k or v", fn);
    memset(&a, 0, sizeof a);
    for (b = 0; b < cache->cache.batch; b++) {
        if (active && !active[b]) continue;
        if (cache->host_lengths[b] >= cache->cache.capacity)
            return ekv_set_error(EKV_ERR_INVALID_ARG,
                                 "%s: sequence %d is full (capacity %d): compress it or create a "
                                 "larger cache", fn, b, cache->cache.capacity);
        a.active[b / 32] |= 1u << (b % 32);
    }
    a.k = k;
    a.v = v;
    result = EKV_CUDA__LAUNCH("ekv_cuda__append_kernel", ekv_cuda__append_kernel,
                              dim3((unsigned)cache->cache.batch), dim3(EKV_CUDA__ELASTIC_THREADS),
                              stream, ekv_cuda__elastic_view(cache), a);
    if (result != EKV_SUCCESS) return result;
    for (b = 0; b < cache->cache.batch; b++)
        if (!active || active[b]) cache->host_lengths[b]++;
    return EKV_SUCCESS;
}

EKV_CUDA_DEF size_t ekv_cuda_elastic_workspace_bytes(const ekv_cuda_elastic_cache *cache, int heads,
                                                     int observe)
{
    size_t heads_rows, rows;
    if (!cache || cache->cache.kv_heads < 1 || heads < 1 || observe < 1) return 0;
    heads_rows = (size_t)cache->cache.batch * (size_t)cache->cache.kv_heads;
    rows = heads_rows * (size_t)cache->cache.capacity;
    return ekv_cuda__align(rows * sizeof(double)) + ekv_cuda__align(rows * sizeof(int)) +
           heads_rows * (size_t)(heads / cache->cache.kv_heads) * (size_t)observe * 2 * sizeof(double);
}

/* Validates the topk inputs, grows the workspace and points `s` into it. */
static ekv_result ekv_cuda__scoring_setup(ekv_cuda_elastic_cache *cache, const float *q_observe,
                                          int heads, int observe, double softmax_scale,
                                          const char *fn, ekv_cuda__scoring *s)
{
    const size_t need = ekv_cuda_elastic_workspace_bytes(cache, heads, observe);
    const size_t rows = (size_t)cache->cache.batch * (size_t)cache->cache.kv_heads *
                        (size_t)cache->cache.capacity;
    ekv_result result = EKV_SUCCESS;
    memset(s, 0, sizeof *s);
    if (!q_observe || observe < 1)
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "%s: topk needs the observed queries (q_observe non-NULL, observe >= 1)",
                             fn);
    if (heads < 1 || heads % cache->cache.kv_heads != 0)
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "%s: heads (%d) must be a positive multiple of kv_heads (%d)", fn, heads,
                             cache->cache.kv_heads);
    if (!(softmax_scale == softmax_scale) || softmax_scale > DBL_MAX || softmax_scale < -DBL_MAX)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: softmax_scale must be finite", fn);
    if (cache->workspace_bytes < need) {
        if (cache->workspace) EKV_CUDA__TRY(cudaFree(cache->workspace));
        cache->workspace = NULL;
        cache->workspace_bytes = 0;
        EKV_CUDA__TRY(cudaMalloc(&cache->workspace, need));
        cache->workspace_bytes = need;
    }
    s->q_observe = q_observe;
    s->scores = (double *)cache->workspace;
    s->map = (int *)(void *)((unsigned char *)cache->workspace + ekv_cuda__align(rows * sizeof(double)));
    s->stats = (double *)(void *)((unsigned char *)cache->workspace + ekv_cuda__align(rows * sizeof(double)) +
                                  ekv_cuda__align(rows * sizeof(int)));
    s->heads = heads;
    s->observe = observe;
    s->queries = heads / cache->cache.kv_heads * observe;
    s->scale = softmax_scale == 0.0 ? 1.0 / sqrt((double)cache->cache.head_dim) : softmax_scale;
done:
    return result;
}

static ekv_result ekv_cuda__score(ekv_cuda_elastic_cache *cache, const ekv_cuda__scoring *s,
                                  const ekv_cuda__policy *p, int span, cudaStream_t stream)
{
    const ekv_cuda__elastic c = ekv_cuda__elastic_view(cache);
    ekv_result result = EKV_CUDA__LAUNCH(
        "ekv_cuda__score_stats_kernel", ekv_cuda__score_stats_kernel,
        dim3((unsigned)s->queries, (unsigned)c.kv_heads, (unsigned)c.batch),
        dim3(EKV_CUDA__ELASTIC_THREADS), stream, c, *s);
    if (result != EKV_SUCCESS || span <= 0) return result;
    return EKV_CUDA__LAUNCH("ekv_cuda__score_accumulate_kernel", ekv_cuda__score_accumulate_kernel,
                            dim3((unsigned)((span + EKV_CUDA__ELASTIC_THREADS - 1) /
                                            EKV_CUDA__ELASTIC_THREADS),
                                 (unsigned)c.kv_heads, (unsigned)c.batch),
                            dim3(EKV_CUDA__ELASTIC_THREADS), stream, c, *s, *p);
}

EKV_CUDA_DEF ekv_result ekv_cuda_elastic_observed_scores(ekv_cuda_elastic_cache *cache,
                                                         const float *q_observe, int heads,
                                                         int observe, double softmax_scale,
                                                         double *scores, cudaStream_t stream)
{
    const char *fn = "ekv_cuda_elastic_observed_scores";
    ekv_result result = ekv_cuda__elastic_check(cache, fn);
    ekv_cuda__scoring s;
    ekv_cuda__policy p;
    int b, longest = 0;
    if (result != EKV_SUCCESS) return result;
    if (!scores) return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: NULL scores", fn);
    if ((result = ekv_cuda__scoring_setup(cache, q_observe, heads, observe, softmax_scale, fn, &s)) !=
        EKV_SUCCESS)
        return result;
    memset(&p, 0, sizeof p);
    p.compression = 1;
    s.scores = scores;
    for (b = 0; b < cache->cache.batch; b++)
        if (cache->host_lengths[b] > longest) longest = cache->host_lengths[b];
    EKV_CUDA__TRY(cudaMemsetAsync(scores, 0,
                                  (size_t)cache->cache.batch * (size_t)cache->cache.kv_heads *
                                      (size_t)cache->cache.capacity * sizeof(double),
                                  stream));
    result = ekv_cuda__score(cache, &s, &p, longest, stream);
done:
    return result;
}

EKV_CUDA_DEF ekv_result ekv_cuda_elastic_compress(ekv_cuda_elastic_cache *cache,
                                                  const ekv_compress_desc *desc,
                                                  const float *q_observe, int heads, int observe,
                                                  double softmax_scale, cudaStream_t stream)
{
    const char *fn = "ekv_cuda_elastic_compress";
    ekv_result result = ekv_cuda__elastic_check(cache, fn);
    ekv_cuda__elastic c;
    ekv_cuda__scoring s;
    ekv_cuda__policy p;
    int b, n, longest_old = 0, tile_rows;
    if (result != EKV_SUCCESS) return result;
    if (!ekv__policy_valid(desc))
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "%s: bad compression settings (policy none needs compression 1; "
                             "compression >= 1, recent >= 0, sinks >= 0)", fn);
    if (desc->policy == EKV_POLICY_POOL && !cache->cache.bias)
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "%s: policy pool needs a cache created with_bias (the ln(count) logit "
                             "bias of pooled slots)", fn);
    if (desc->policy == EKV_POLICY_POOL && desc->compression > EKV_CUDA_ELASTIC_MAX_POOL)
        return ekv_set_error(EKV_ERR_UNSUPPORTED, "%s: pool compression %d above %d on the device",
                             fn, desc->compression, EKV_CUDA_ELASTIC_MAX_POOL);
    memset(&s, 0, sizeof s);
    memset(&p, 0, sizeof p);
    p.policy = (int)desc->policy;
    p.compression = desc->compression;
    p.recent = desc->recent;
    p.sinks = desc->sinks;
    for (n = 1; n <= EKV_CUDA_ELASTIC_MAX_POOL; n++) p.log_count[n] = (float)log((double)n);
    if (desc->policy == EKV_POLICY_TOPK &&
        (result = ekv_cuda__scoring_setup(cache, q_observe, heads, observe, softmax_scale, fn, &s)) !=
            EKV_SUCCESS)
        return result;
    for (b = 0; b < cache->cache.batch; b++) {
        const ekv_cuda__region r = ekv_cuda__region_of(cache->host_lengths[b], cache->host_compressed[b],
                                                       p.recent, p.sinks, p.compression);
        if (r.old > longest_old) longest_old = r.old;
    }
    if (longest_old == 0) return EKV_SUCCESS; /* nothing older than the window anywhere */
    c = ekv_cuda__elastic_view(cache);
    if (desc->policy == EKV_POLICY_TOPK) {
        s.region_only = 1;
        EKV_CUDA__TRY_EKV(ekv_cuda__score(cache, &s, &p, longest_old, stream));
        EKV_CUDA__TRY_EKV(EKV_CUDA__LAUNCH("ekv_cuda__select_kernel", ekv_cuda__select_kernel,
                                           dim3((unsigned)c.kv_heads, (unsigned)c.batch),
                                           dim3(EKV_CUDA__ELASTIC_THREADS), stream, c, s, p));
    }
    tile_rows = EKV_CUDA__STAGE_BYTES / c.row_bytes;
    if (tile_rows > EKV_CUDA__STAGE_ROWS) tile_rows = EKV_CUDA__STAGE_ROWS;
    EKV_CUDA__TRY_EKV(EKV_CUDA__LAUNCH("ekv_cuda__compact_kernel", ekv_cuda__compact_kernel,
                                       dim3(2, (unsigned)c.kv_heads, (unsigned)c.batch),
                                       dim3(EKV_CUDA__ELASTIC_THREADS), stream, c, s, p, tile_rows));
    EKV_CUDA__TRY_EKV(EKV_CUDA__LAUNCH("ekv_cuda__compress_counts_kernel",
                                       ekv_cuda__compress_counts_kernel, dim3(1),
                                       dim3(EKV_CUDA__ELASTIC_THREADS), stream, c, p));
    for (b = 0; b < cache->cache.batch; b++) {
        const ekv_cuda__region r = ekv_cuda__region_of(cache->host_lengths[b], cache->host_compressed[b],
                                                       p.recent, p.sinks, p.compression);
        if (r.old <= 0) continue;
        cache->host_compressed[b] = r.first + r.budget;
        cache->host_lengths[b] = r.first + r.budget + r.recent;
    }
done:
    return result;
}

EKV_CUDA_DEF ekv_result ekv_cuda_elastic_download(const ekv_cuda_elastic_cache *cache,
                                                  ekv_host_cache *host, cudaStream_t stream)
{
    const char *fn = "ekv_cuda_elastic_download";
    ekv_result result = ekv_cuda__elastic_check(cache, fn);
    const ekv_cuda_cache *c;
    ekv_cuda__layout l;
    if (result != EKV_SUCCESS) return result;
    if (!host) return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: NULL host cache", fn);
    c = &cache->cache;
    if ((result = ekv_cache_create(host, c->dtype, c->batch, c->kv_heads, c->head_dim, c->capacity,
                                   c->bias != NULL)) != EKV_SUCCESS)
        return result;
    l = ekv_cuda__layout_of(c->dtype, c->batch, c->kv_heads, c->head_dim, c->capacity, c->bias != NULL);
    EKV_CUDA__TRY(cudaStreamSynchronize(stream));
    EKV_CUDA__TRY(cudaMemcpy(host->k, c->k, l.values, cudaMemcpyDeviceToHost));
    EKV_CUDA__TRY(cudaMemcpy(host->v, c->v, l.values, cudaMemcpyDeviceToHost));
    if (l.scales) {
        EKV_CUDA__TRY(cudaMemcpy(host->k_scales, c->k_scales, l.scales, cudaMemcpyDeviceToHost));
        EKV_CUDA__TRY(cudaMemcpy(host->v_scales, c->v_scales, l.scales, cudaMemcpyDeviceToHost));
    }
    if (l.bias) EKV_CUDA__TRY(cudaMemcpy(host->bias, c->bias, l.bias, cudaMemcpyDeviceToHost));
    EKV_CUDA__TRY(cudaMemcpy(host->lengths, c->lengths, l.lengths, cudaMemcpyDeviceToHost));
    EKV_CUDA__TRY(cudaMemcpy(host->compressed, cache->compressed, l.lengths, cudaMemcpyDeviceToHost));
done:
    if (result != EKV_SUCCESS) ekv_cache_free(host);
    return result;
}

#endif /* EKV_CUDA_CACHE_INL_IMPLEMENTED */
