/* ekv_cuda.cuh - v0.1.0 - CUDA companion of ekv.h: device KV cache, decode attention kernels, timing, device info - MIT license

   Do this:
      #define EKV_IMPLEMENTATION
   before you include this file in *one* CUDA (.cu) file to create the implementation of
   both ekv.h and this header (it includes ekv.h itself). Every other file includes it
   without the define and gets declarations only.

       #define EKV_IMPLEMENTATION
       #include "ekv_cuda.cuh"

   Build: nvcc -O3 -o app app.cu            (any -arch from sm_75; CUDA 11.8 or newer)

   QUICK START (attention from your own engine)

       ekv_cuda_cache cache;                       device copy of a host cache
       ekv_cuda_cache_upload(&host_cache, &cache);
       ekv_cuda_attention_plan plan;               splits chosen from the SM count
       ekv_cuda_attention_plan_make(&cache, heads, 0, &plan);
       cudaMalloc(&plan.workspace, plan.workspace_bytes);   only when workspace_bytes > 0
       if (ekv_cuda_attention(&cache, d_q, heads, 0.0f, d_out, &plan, stream) != EKV_SUCCESS)
           fprintf(stderr, "%s\n", ekv_last_error());
       ...
       cudaFree(plan.workspace); ekv_cuda_cache_free(&cache);

   or the whole measured benchmark: ekv_cuda_run(&config, &workload, &report).

   TABLE OF CONTENTS (grep for ">>name")
       >>cache        ekv_cuda_cache: the device copy of an ekv_host_cache
       >>attention    the decode attention entry point, its plan and workspace
       >>device       device info, theoretical and measured bandwidth
       >>run          the CUDA backend: validation, cold timing, paired baseline
       >>errors       (implementation) CUDA error checks and the one launch helper
       >>kernels      (implementation) storage decoding, attention and merge kernels

   COMPILE-TIME OPTIONS
       #define EKV_CUDA_DEF static   make every function of this header static
                                     (default: EKV_DEF, see ekv.h)
       The allocator macros of ekv.h (EKV_MALLOC, EKV_FREE) are used for host memory.

   KERNEL AT A GLANCE
       One CTA (128 threads, 4 warps) per (sequence, kv head, group tile, split). Each lane
       owns 8 consecutive elements of head_dim, so a row is head_dim/8 lanes wide and a warp
       reads 256/head_dim rows per load; every thread keeps several tokens' K and V loads in
       flight. A lane's load is 16 bytes for f16 and bf16 (two for f32), 8 for int8 and
       fp8, 4 for int4: eight elements per lane keep the accumulators' registers the same
       for every dtype, and each warp-wide load is still one contiguous run of rows. The CTA holds every query head of the GQA group (up to 8 per tile), so each
       KV row is read once for the whole group. Online softmax in fp32 (base 2, with the
       softmax scale and log2(e) folded into q), warps merged through shared memory, and
       splits over the sequence merged by a second kernel (log-sum-exp) when batch x
       kv_heads alone cannot fill the GPU.

   LICENSE: MIT, see the end of ekv.h.
*/
#ifndef EKV_CUDA_CUH_INCLUDED
#define EKV_CUDA_CUH_INCLUDED

#include <cuda_runtime.h>

#include "ekv.h"

#ifndef EKV_CUDA_DEF
#define EKV_CUDA_DEF EKV_DEF
#endif

/* Head dims the kernels are compiled for, and the most splits a sequence may take. */
#define EKV_CUDA_HEAD_DIMS "64, 128, 256"
#define EKV_CUDA_MAX_SPLITS 256
/* Auto plans give each split at least this many slots: shorter splits cost more in
   partials and merge work than they gain in parallelism. */
#define EKV_CUDA_MIN_SPLIT_TOKENS 256

#ifdef __cplusplus
extern "C" {
#endif

/* >>cache ================================================================== */

/* The device copy of an ekv_host_cache, with the same layout (see ekv.h >>cache): K and V
   rows [batch][kv_heads][capacity], per-row or per-head scales, optional pool bias, and
   per-sequence lengths, all in device memory. Offsets are 64-bit throughout. */
typedef struct ekv_cuda_cache {
    ekv_dtype dtype;
    int batch, kv_heads, head_dim, capacity;
    int *lengths;                       /* device [batch]; each in [0, capacity]       */
    unsigned char *k, *v;               /* device rows of ekv_dtype_row_bytes bytes    */
    unsigned char *k_scales, *v_scales; /* device; NULL for f32, f16, bf16             */
    float *bias;                        /* device [batch][kv_heads][capacity], or NULL */
    int device;                         /* CUDA ordinal the buffers live on            */
    int sm;                             /* major * 10 + minor of that device; 0 = ask */
    void *allocation;                   /* one device block holding all of the above   */
    size_t allocation_bytes;
} ekv_cuda_cache;

/* Uploads `host` to the current device. On failure nothing stays allocated. */
EKV_CUDA_DEF ekv_result ekv_cuda_cache_upload(const ekv_host_cache *host, ekv_cuda_cache *cache);
/* A second device copy of `src` (device-to-device); cold timing rotates among such copies. */
EKV_CUDA_DEF ekv_result ekv_cuda_cache_clone(const ekv_cuda_cache *src, ekv_cuda_cache *copy);
/* Device bytes an upload of `host` allocates. */
EKV_CUDA_DEF size_t ekv_cuda_cache_allocation_bytes(const ekv_host_cache *host);
EKV_CUDA_DEF void ekv_cuda_cache_free(ekv_cuda_cache *cache);

/* >>attention ============================================================== */

/* How one call splits each sequence. Make it with ekv_cuda_attention_plan_make(), then
   point `workspace` at device memory of at least `workspace_bytes` when that is > 0 (it
   holds the fp32 partials of the splits). You may lower or raise `splits` (1 ..
   EKV_CUDA_MAX_SPLITS) afterwards if you also set workspace_bytes to
   ekv_cuda_attention_workspace_bytes() of the new count and give that much workspace. */
typedef struct ekv_cuda_attention_plan {
    int splits;             /* parts each sequence is cut into; 1 = one pass, no merge */
    size_t workspace_bytes; /* 0 when splits == 1 */
    void *workspace;        /* device; set by the caller; unused when splits == 1 */
} ekv_cuda_attention_plan;

/* `splits` = 0 chooses from the device: enough (sequence, kv head, split) blocks for two
   waves of the GPU, each split at least EKV_CUDA_MIN_SPLIT_TOKENS slots of the capacity,
   and no split at all when batch x kv_heads already fills it. A positive `splits` forces
   that many (clipped to the capacity). */
EKV_CUDA_DEF ekv_result ekv_cuda_attention_plan_make(const ekv_cuda_cache *cache, int heads,
                                                     int splits, ekv_cuda_attention_plan *plan);
/* Bytes of fp32 partials for `splits` (0 when splits <= 1): per (sequence, query head,
   split) a running max, a sum and head_dim accumulators. */
EKV_CUDA_DEF size_t ekv_cuda_attention_workspace_bytes(const ekv_cuda_cache *cache, int heads,
                                                       int splits);
/* Decode attention of one query token per sequence over the device cache.
     q    device f32 [batch][heads][head_dim], 16-byte aligned
     out  device f32 [batch][heads][head_dim], 16-byte aligned
   Query head h reads kv head h / (heads / kv_heads). softmax_scale 0 means
   1/sqrt(head_dim). plan NULL means one pass without splits (no workspace needed).
   Asynchronous on `stream`; launch errors are returned, execution errors show at the
   next synchronizing call. head_dim must be one of EKV_CUDA_HEAD_DIMS, and fp8 needs a
   device of sm_89 or newer: otherwise EKV_ERR_UNSUPPORTED. */
EKV_CUDA_DEF ekv_result ekv_cuda_attention(const ekv_cuda_cache *cache, const float *q, int heads,
                                           float softmax_scale, float *out,
                                           const ekv_cuda_attention_plan *plan,
                                           cudaStream_t stream);
/* 1 when the kernels are compiled for this head dim. */
EKV_CUDA_DEF int ekv_cuda_supports_head_dim(int head_dim);

/* >>device ================================================================= */

/* Name, compute capability, SM count, L2, memory, clocks and versions from the runtime's
   device attributes; theoretical bandwidth = 2 x memory clock x bus width / 8 (double
   data rate); peak FP32 = SMs x FP32 lanes per SM x 2 (an FMA) x SM clock; and the
   measured device-to-device copy bandwidth (ekv_cuda_copy_bandwidth). Fields the device
   does not report stay NaN (doubles) or 0. */
EKV_CUDA_DEF ekv_result ekv_cuda_device_info(int device, ekv_device_info *out);
/* Median over `reps` timed cudaMemcpyAsync device-to-device copies of `bytes` (0 = at
   least 4 x L2 and 256 MiB, capped by free memory), counting bytes read + written, in
   GB/s (1e9). */
EKV_CUDA_DEF ekv_result ekv_cuda_copy_bandwidth(int device, size_t bytes, int reps, double *gbs);

/* >>run ==================================================================== */

/* The CUDA backend of the benchmark: checks the device and its free memory, uploads the
   workload, validates the kernel against the CPU reference (output poisoned with NaN
   first; every head compared), writes --dump-dir, then times cold (rotating among copies
   of the cache so that none is found in L2; --hot: one copy) with CUDA events around
   inner_loops launches per sample, in a CUDA graph unless config->use_graphs is 0, ABAB
   against the baseline cache when config->paired_baseline, and fills `report`. It starts
   with ekv_report_init(report, config); free the report with ekv_report_free, also after
   a failure. */
EKV_CUDA_DEF ekv_result ekv_cuda_run(const ekv_config *config, const ekv_workload *work,
                                     ekv_report *report);
/* The rel_l2 the kernel may differ by from the double reference over the same stored
   cache, for sequences of up to `max_length` slots (see the implementation). */
EKV_CUDA_DEF double ekv_cuda_validation_tolerance(int max_length);

#ifdef __cplusplus
}
#endif

#endif /* EKV_CUDA_CUH_INCLUDED */

/* ======================================================================== */
/*                              IMPLEMENTATION                              */
/* ======================================================================== */

#ifdef EKV_IMPLEMENTATION
#ifndef EKV_CUDA_IMPLEMENTATION_DONE
#define EKV_CUDA_IMPLEMENTATION_DONE

#include <cuda_fp16.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* >>errors ================================================================= */

/* Turns a failed CUDA call into an ekv error naming the call, file and line, and clears
   the runtime's (non-sticky) last error so that later calls do not report it again. */
static ekv_result ekv_cuda__fail(cudaError_t err, const char *call, const char *file, int line)
{
    ekv_result code = EKV_ERR_CUDA;
    (void)cudaGetLastError();
    if (err == cudaErrorMemoryAllocation) code = EKV_ERR_OUT_OF_MEMORY;
    if (err == cudaErrorNoDevice || err == cudaErrorInsufficientDriver) code = EKV_ERR_NO_DEVICE;
    return ekv_set_error(code, "%s failed: %s (%s) at %s:%d", call, cudaGetErrorName(err),
                         cudaGetErrorString(err), file, line);
}

static ekv_result ekv_cuda__check(cudaError_t err, const char *call, const char *file, int line)
{
    return err == cudaSuccess ? EKV_SUCCESS : ekv_cuda__fail(err, call, file, line);
}

#define EKV_CUDA__CHECK(call) ekv_cuda__check((call), #call, __FILE__, __LINE__)
/* Inside functions with a local `ekv_result result` and a `done:` cleanup label. */
#define EKV_CUDA__TRY(call)                                           \
    do {                                                              \
        result = ekv_cuda__check((call), #call, __FILE__, __LINE__);  \
        if (result != EKV_SUCCESS) goto done;                         \
    } while (0)
#define EKV_CUDA__TRY_EKV(expr)             \
    do {                                    \
        result = (expr);                    \
        if (result != EKV_SUCCESS) goto done; \
    } while (0)

/* The one place a kernel is launched. Under nvcc it is a triple-chevron launch followed
   by cudaGetLastError (which reports bad configurations and, inside stream capture, a
   failed capture); compiled by a host compiler against the emulator's runtime it hands the
   same arguments to ekv_cuda_host_launch, which runs the CUDA threads on the CPU. The
   kernel code itself is identical in both builds. */
template <typename... Params, typename... Args>
static ekv_result ekv_cuda__launch(const char *name, const char *file, int line,
                                   void (*kernel)(Params...), dim3 grid, dim3 block,
                                   size_t dynamic_smem, cudaStream_t stream, Args... args)
{
    cudaError_t err;
#ifdef __CUDACC__
    kernel<<<grid, block, dynamic_smem, stream>>>(args...);
    err = cudaGetLastError(); /* also clears the error */
#else
    err = ekv_cuda_host_launch(kernel, grid, block, dynamic_smem, stream, args...);
    if (err != cudaSuccess) (void)cudaGetLastError();
#endif
    if (err == cudaSuccess) return EKV_SUCCESS;
    return ekv_set_error(EKV_ERR_CUDA,
                         "launch of %s (grid %u x %u x %u, block %u) failed: %s (%s) at %s:%d",
                         name, grid.x, grid.y, grid.z, block.x, cudaGetErrorName(err),
                         cudaGetErrorString(err), file, line);
}

#define EKV_CUDA__LAUNCH(name, kernel, grid, block, stream, ...) \
    ekv_cuda__launch(name, __FILE__, __LINE__, kernel, grid, block, 0, stream, __VA_ARGS__)

/* >>kernels ================================================================ */

#define EKV_CUDA__WARPS 4
#define EKV_CUDA__THREADS (EKV_CUDA__WARPS * 32)
#define EKV_CUDA__MERGE_THREADS 128
/* Query heads of a GQA group one CTA holds in registers; larger groups take several
   tiles (each reads the KV rows again, mostly from L2). */
#define EKV_CUDA__GROUP_TILE 8
#define EKV_CUDA__LOG2E 1.4426950408889634f
/* Loops over registers must unroll fully or the arrays land in local memory; nvcc and
   clang take the pragma, a host compiler building the emulator unrolls them itself (and
   would warn about an unknown pragma). */
#if defined(__CUDACC__) || defined(__clang__)
#define EKV_CUDA__UNROLL _Pragma("unroll")
#else
#define EKV_CUDA__UNROLL
#endif
#define EKV_CUDA__FULL_MASK 0xffffffffu

/* Everything one attention launch needs; passed by value (kernel parameter space). */
typedef struct ekv_cuda__attention_params {
    const unsigned char *k, *v, *k_scales, *v_scales;
    const float *bias;
    const int *lengths;
    const float *q;
    float *out;         /* final output when splits == 1                 */
    float *partial_acc; /* [batch * heads][splits][head_dim], splits > 1 */
    float *partial_ml;  /* [batch * heads][splits][2]: max (base 2), sum  */
    int heads, kv_heads, capacity, group, head_tiles, splits, tokens_per_split;
    float q_scale; /* softmax_scale * log2(e): logits come out in base 2 */
} ekv_cuda__attention_params;

typedef struct ekv_cuda__merge_params {
    const float *partial_acc, *partial_ml;
    float *out;
    int splits, head_dim;
} ekv_cuda__merge_params;

/* Eight stored elements of one row, as loaded by one lane, plus the per-row scale data
   they need. Each storage type provides load() of its chunk and decode() to 8 floats with
   the formulas of ekv_dequantize_row; the fp8 per-head scale is folded into q (for K) and
   into the output (for V) instead of into every element. */
typedef struct ekv_cuda__f32_chunk {
    uint4 low, high;
} ekv_cuda__f32_chunk;
typedef struct ekv_cuda__int8_chunk {
    uint2 values;
    float scale;
} ekv_cuda__int8_chunk;
typedef struct ekv_cuda__int4_chunk {
    unsigned int values;
    unsigned int scale_zero; /* f16 scale in the low half, f16 zero point in the high */
} ekv_cuda__int4_chunk;

static __device__ __forceinline__ float ekv_cuda__f16_low(unsigned int w)
{
    return __half2float(__ushort_as_half((unsigned short)(w & 0xffffu)));
}

static __device__ __forceinline__ float ekv_cuda__f16_high(unsigned int w)
{
    return __half2float(__ushort_as_half((unsigned short)(w >> 16)));
}

/* e4m3 byte to float, exact, by bit manipulation so that it compiles for every
   architecture and CUDA version: a normal code's exponent and mantissa drop into the
   float's fields with the bias moved from 7 to 127; a subnormal code is mantissa x 2^-9;
   S.1111.111 is NaN (there is no infinity). */
static __device__ __forceinline__ float ekv_cuda__fp8_to_float(unsigned int byte)
{
    const unsigned int sign = (byte & 0x80u) << 24, exponent = (byte >> 3) & 0xfu;
    const unsigned int mantissa = byte & 7u;
    float magnitude;
    if ((byte & 0x7fu) == 0x7fu) return __uint_as_float(sign | 0x7fc00000u);
    if (exponent == 0) magnitude = (float)mantissa * (1.0f / 512.0f);
    else magnitude = __uint_as_float(((exponent + 120u) << 23) | (mantissa << 20));
    return __uint_as_float(__float_as_uint(magnitude) | sign);
}

template <int DTYPE> struct ekv_cuda__storage;

/* bits: per element; in_flight: tokens each thread loads before it computes, so that
   about 128 bytes of K and V per thread are in flight whatever the element size;
   in_flight_grouped: the same when the CTA holds 8 query heads, whose q and accumulators
   take 128 registers - fewer loads in flight keep the kernel free of spills. */
template <> struct ekv_cuda__storage<EKV_DTYPE_F32> {
    typedef ekv_cuda__f32_chunk chunk;
    enum { bits = 32, in_flight = 2, in_flight_grouped = 2 };
    static __device__ __forceinline__ chunk load(const unsigned char *values, const unsigned char *,
                                                 size_t, bool valid)
    {
        chunk c;
        const uint4 *p = reinterpret_cast<const uint4 *>(values);
        c.low = valid ? __ldg(p) : make_uint4(0u, 0u, 0u, 0u);
        c.high = valid ? __ldg(p + 1) : make_uint4(0u, 0u, 0u, 0u);
        return c;
    }
    static __device__ __forceinline__ void decode(const chunk &c, float x[8])
    {
        x[0] = __uint_as_float(c.low.x);
        x[1] = __uint_as_float(c.low.y);
        x[2] = __uint_as_float(c.low.z);
        x[3] = __uint_as_float(c.low.w);
        x[4] = __uint_as_float(c.high.x);
        x[5] = __uint_as_float(c.high.y);
        x[6] = __uint_as_float(c.high.z);
        x[7] = __uint_as_float(c.high.w);
    }
};

template <> struct ekv_cuda__storage<EKV_DTYPE_F16> {
    typedef uint4 chunk;
    enum { bits = 16, in_flight = 4, in_flight_grouped = 4 };
    static __device__ __forceinline__ chunk load(const unsigned char *values, const unsigned char *,
                                                 size_t, bool valid)
    {
        return valid ? __ldg(reinterpret_cast<const uint4 *>(values)) : make_uint4(0u, 0u, 0u, 0u);
    }
    static __device__ __forceinline__ void decode(const chunk &c, float x[8])
    {
        x[0] = ekv_cuda__f16_low(c.x);
        x[1] = ekv_cuda__f16_high(c.x);
        x[2] = ekv_cuda__f16_low(c.y);
        x[3] = ekv_cuda__f16_high(c.y);
        x[4] = ekv_cuda__f16_low(c.z);
        x[5] = ekv_cuda__f16_high(c.z);
        x[6] = ekv_cuda__f16_low(c.w);
        x[7] = ekv_cuda__f16_high(c.w);
    }
};

/* bf16 is the top half of an f32: widening is a shift. */
template <> struct ekv_cuda__storage<EKV_DTYPE_BF16> {
    typedef uint4 chunk;
    enum { bits = 16, in_flight = 4, in_flight_grouped = 4 };
    static __device__ __forceinline__ chunk load(const unsigned char *values, const unsigned char *,
                                                 size_t, bool valid)
    {
        return valid ? __ldg(reinterpret_cast<const uint4 *>(values)) : make_uint4(0u, 0u, 0u, 0u);
    }
    static __device__ __forceinline__ void decode(const chunk &c, float x[8])
    {
        x[0] = __uint_as_float(c.x << 16);
        x[1] = __uint_as_float(c.x & 0xffff0000u);
        x[2] = __uint_as_float(c.y << 16);
        x[3] = __uint_as_float(c.y & 0xffff0000u);
        x[4] = __uint_as_float(c.z << 16);
        x[5] = __uint_as_float(c.z & 0xffff0000u);
        x[6] = __uint_as_float(c.w << 16);
        x[7] = __uint_as_float(c.w & 0xffff0000u);
    }
};

/* int8: one f32 scale per row; x = (float)q * scale. */
template <> struct ekv_cuda__storage<EKV_DTYPE_INT8> {
    typedef ekv_cuda__int8_chunk chunk;
    enum { bits = 8, in_flight = 8, in_flight_grouped = 4 };
    static __device__ __forceinline__ chunk load(const unsigned char *values,
                                                 const unsigned char *scales, size_t row, bool valid)
    {
        chunk c;
        c.values = valid ? __ldg(reinterpret_cast<const uint2 *>(values)) : make_uint2(0u, 0u);
        c.scale = valid ? __ldg(reinterpret_cast<const float *>(scales) + row) : 0.0f;
        return c;
    }
    static __device__ __forceinline__ void decode(const chunk &c, float x[8])
    {
        int i;
EKV_CUDA__UNROLL
        for (i = 0; i < 4; i++) {
            /* shift the byte to the top, then arithmetic-shift down: sign extension */
            x[i] = (float)((int)(c.values.x << (24 - 8 * i)) >> 24) * c.scale;
            x[i + 4] = (float)((int)(c.values.y << (24 - 8 * i)) >> 24) * c.scale;
        }
    }
};

/* int4: per group of 32 elements an f16 (scale, zero) pair; low nibble = even element;
   x = (float)q * scale + zero, the product rounded before the sum as on the host. */
template <> struct ekv_cuda__storage<EKV_DTYPE_INT4> {
    typedef ekv_cuda__int4_chunk chunk;
    enum { bits = 4, in_flight = 8, in_flight_grouped = 4 };
    static __device__ __forceinline__ chunk load(const unsigned char *values,
                                                 const unsigned char *scales, size_t pair, bool valid)
    {
        chunk c;
        c.values = valid ? __ldg(reinterpret_cast<const unsigned int *>(values)) : 0u;
        c.scale_zero = valid ? __ldg(reinterpret_cast<const unsigned int *>(scales) + pair) : 0u;
        return c;
    }
    static __device__ __forceinline__ void decode(const chunk &c, float x[8])
    {
        const float scale = ekv_cuda__f16_low(c.scale_zero), zero = ekv_cuda__f16_high(c.scale_zero);
        int i;
EKV_CUDA__UNROLL
        for (i = 0; i < 8; i++) x[i] = __fadd_rn(__fmul_rn((float)((c.values >> (4 * i)) & 15u), scale), zero);
    }
};

/* fp8 e4m3: the per-(sequence, kv head) scale is applied outside (see above). */
template <> struct ekv_cuda__storage<EKV_DTYPE_FP8> {
    typedef uint2 chunk;
    enum { bits = 8, in_flight = 8, in_flight_grouped = 4 };
    static __device__ __forceinline__ chunk load(const unsigned char *values, const unsigned char *,
                                                 size_t, bool valid)
    {
        return valid ? __ldg(reinterpret_cast<const uint2 *>(values)) : make_uint2(0u, 0u);
    }
    static __device__ __forceinline__ void decode(const chunk &c, float x[8])
    {
        int i;
EKV_CUDA__UNROLL
        for (i = 0; i < 4; i++) {
            x[i] = ekv_cuda__fp8_to_float((c.x >> (8 * i)) & 0xffu);
            x[i + 4] = ekv_cuda__fp8_to_float((c.y >> (8 * i)) & 0xffu);
        }
    }
};

/* exp2 of a base-2 logit difference; an empty state (max -inf) weighs 0 instead of NaN. */
static __device__ __forceinline__ float ekv_cuda__weight(float logit, float max)
{
    return max == -INFINITY ? 0.0f : exp2f(logit - max);
}

/* Decode attention for one (sequence, kv head, group tile, split).

   Lanes: lane / (HEAD_DIM/8) picks a token of the warp's step, lane % (HEAD_DIM/8) the
   8 elements of the row it owns. Per iteration a warp loads in_flight steps of rows (all
   loads issued before any use), then consumes them in sub-steps of SUB tokens: partial
   dot products per lane, a butterfly over the lanes of a row, one max update and rescale
   per sub-step, then p * V into per-lane accumulators. Each thread keeps (max, sum, acc)
   per query head for the tokens it saw; warps reduce across their token lanes with
   shuffles and across warps through shared memory. */
template <int DTYPE, int HEAD_DIM, int GROUP_TILE>
__global__ void __launch_bounds__(EKV_CUDA__THREADS)
    ekv_cuda__attention_kernel(ekv_cuda__attention_params p)
{
    typedef ekv_cuda__storage<DTYPE> storage;
    typedef typename storage::chunk chunk;
    enum {
        LANES_PER_ROW = HEAD_DIM / 8,
        ROWS_PER_WARP = 32 / LANES_PER_ROW,
        IN_FLIGHT = GROUP_TILE == 1 ? storage::in_flight : storage::in_flight_grouped,
        SUB = IN_FLIGHT < 4 ? IN_FLIGHT : 4,
        ROW_BYTES = HEAD_DIM * storage::bits / 8,
        CHUNK_BYTES = storage::bits, /* 8 elements */
        WARP_STEP = IN_FLIGHT * ROWS_PER_WARP,
        CTA_STEP = EKV_CUDA__WARPS * WARP_STEP
    };
    __shared__ float shared_acc[EKV_CUDA__WARPS][GROUP_TILE][HEAD_DIM];
    __shared__ float shared_max[EKV_CUDA__WARPS][GROUP_TILE];
    __shared__ float shared_sum[EKV_CUDA__WARPS][GROUP_TILE];

    const int warp = (int)threadIdx.x / 32, lane = (int)threadIdx.x % 32;
    const int row_lane = lane / LANES_PER_ROW, part = lane % LANES_PER_ROW;
    const int b = (int)blockIdx.z, split = (int)blockIdx.x;
    const int kv_head = (int)blockIdx.y / p.head_tiles;
    const int tile = (int)blockIdx.y - kv_head * p.head_tiles;
    const int first_head = kv_head * p.group + tile * GROUP_TILE;
    /* a constant for tile 1 keeps one more register free across the main loop */
    const int tile_heads = GROUP_TILE == 1 ? 1 : min(GROUP_TILE, p.group - tile * GROUP_TILE);
    const int length = max(0, min(p.lengths[b], p.capacity));
    const int begin = split * p.tokens_per_split;
    const int end = min(length, begin + p.tokens_per_split);
    const size_t head_index = (size_t)b * (size_t)p.kv_heads + (size_t)kv_head;
    const size_t first_row = head_index * (size_t)p.capacity;
    const unsigned char *k_rows = p.k + first_row * ROW_BYTES + (size_t)part * CHUNK_BYTES;
    const unsigned char *v_rows = p.v + first_row * ROW_BYTES + (size_t)part * CHUNK_BYTES;
    /* int4 scale pairs are per (row, group of 32): index them as rows of the pair array */
    const int pairs_per_row = HEAD_DIM / 32, pair = part / 4;
    float k_head_scale = 1.0f, v_head_scale = 1.0f;
    float q[GROUP_TILE][8], acc[GROUP_TILE][8], running_max[GROUP_TILE], running_sum[GROUP_TILE];
    int g, e, u, t0, w;

    if (DTYPE == EKV_DTYPE_FP8) {
        k_head_scale = __ldg(reinterpret_cast<const float *>(p.k_scales) + head_index);
        v_head_scale = __ldg(reinterpret_cast<const float *>(p.v_scales) + head_index);
    }
EKV_CUDA__UNROLL
    for (g = 0; g < GROUP_TILE; g++) {
        const float scale = p.q_scale * k_head_scale;
        float4 low = make_float4(0.0f, 0.0f, 0.0f, 0.0f), high = low;
        if (g < tile_heads) {
            const float4 *src = reinterpret_cast<const float4 *>(
                p.q + ((size_t)b * (size_t)p.heads + (size_t)(first_head + g)) * HEAD_DIM +
                (size_t)part * 8);
            low = __ldg(src);
            high = __ldg(src + 1);
        }
        q[g][0] = low.x * scale;
        q[g][1] = low.y * scale;
        q[g][2] = low.z * scale;
        q[g][3] = low.w * scale;
        q[g][4] = high.x * scale;
        q[g][5] = high.y * scale;
        q[g][6] = high.z * scale;
        q[g][7] = high.w * scale;
        running_max[g] = -INFINITY;
        running_sum[g] = 0.0f;
EKV_CUDA__UNROLL
        for (e = 0; e < 8; e++) acc[g][e] = 0.0f;
    }

    /* the trip count is uniform per warp, so every shuffle below has all 32 lanes */
    for (t0 = begin + warp * WARP_STEP; t0 < end; t0 += CTA_STEP) {
        chunk k_chunk[IN_FLIGHT], v_chunk[IN_FLIGHT];
        float bias[IN_FLIGHT];
EKV_CUDA__UNROLL
        for (u = 0; u < IN_FLIGHT; u++) {
            const int t = t0 + u * ROWS_PER_WARP + row_lane;
            const bool valid = t < end;
            const size_t row = first_row + (size_t)t;
            const size_t scale_row = DTYPE == EKV_DTYPE_INT4 ? row * pairs_per_row + pair : row;
            k_chunk[u] = storage::load(k_rows + (size_t)t * ROW_BYTES, p.k_scales, scale_row, valid);
            v_chunk[u] = storage::load(v_rows + (size_t)t * ROW_BYTES, p.v_scales, scale_row, valid);
            /* an invalid slot gets logit -inf, hence weight 0 */
            bias[u] = !valid ? -INFINITY
                             : (p.bias ? __ldg(p.bias + row) * EKV_CUDA__LOG2E : 0.0f);
        }
EKV_CUDA__UNROLL
        for (int s0 = 0; s0 < IN_FLIGHT; s0 += SUB) {
            float logit[SUB][GROUP_TILE];
EKV_CUDA__UNROLL
            for (u = 0; u < SUB; u++) {
                float k[8];
                storage::decode(k_chunk[s0 + u], k);
EKV_CUDA__UNROLL
                for (g = 0; g < GROUP_TILE; g++) {
                    float dot = 0.0f;
EKV_CUDA__UNROLL
                    for (e = 0; e < 8; e++) dot = fmaf(q[g][e], k[e], dot);
                    logit[u][g] = dot;
                }
            }
EKV_CUDA__UNROLL
            for (int offset = LANES_PER_ROW / 2; offset > 0; offset /= 2)
EKV_CUDA__UNROLL
                for (u = 0; u < SUB; u++)
EKV_CUDA__UNROLL
                    for (g = 0; g < GROUP_TILE; g++)
                        logit[u][g] += __shfl_xor_sync(EKV_CUDA__FULL_MASK, logit[u][g], offset);
EKV_CUDA__UNROLL
            for (g = 0; g < GROUP_TILE; g++) {
                float new_max = running_max[g], correction;
EKV_CUDA__UNROLL
                for (u = 0; u < SUB; u++) {
                    logit[u][g] += bias[s0 + u];
                    new_max = fmaxf(new_max, logit[u][g]);
                }
                correction = ekv_cuda__weight(running_max[g], new_max);
                running_max[g] = new_max;
                running_sum[g] *= correction;
EKV_CUDA__UNROLL
                for (e = 0; e < 8; e++) acc[g][e] *= correction;
            }
EKV_CUDA__UNROLL
            for (u = 0; u < SUB; u++) {
                float v[8];
                storage::decode(v_chunk[s0 + u], v);
EKV_CUDA__UNROLL
                for (g = 0; g < GROUP_TILE; g++) {
                    const float weight = ekv_cuda__weight(logit[u][g], running_max[g]);
                    running_sum[g] += weight;
EKV_CUDA__UNROLL
                    for (e = 0; e < 8; e++) acc[g][e] = fmaf(weight, v[e], acc[g][e]);
                }
            }
        }
    }

    /* merge the token lanes of the warp: lanes part, part + LANES_PER_ROW, ... */
EKV_CUDA__UNROLL
    for (int offset = LANES_PER_ROW; offset < 32; offset *= 2)
EKV_CUDA__UNROLL
        for (g = 0; g < GROUP_TILE; g++) {
            const float other_max = __shfl_xor_sync(EKV_CUDA__FULL_MASK, running_max[g], offset);
            const float other_sum = __shfl_xor_sync(EKV_CUDA__FULL_MASK, running_sum[g], offset);
            const float new_max = fmaxf(running_max[g], other_max);
            const float mine = ekv_cuda__weight(running_max[g], new_max);
            const float theirs = ekv_cuda__weight(other_max, new_max);
            running_max[g] = new_max;
            running_sum[g] = running_sum[g] * mine + other_sum * theirs;
EKV_CUDA__UNROLL
            for (e = 0; e < 8; e++) {
                const float other = __shfl_xor_sync(EKV_CUDA__FULL_MASK, acc[g][e], offset);
                acc[g][e] = acc[g][e] * mine + other * theirs;
            }
        }
    if (row_lane == 0) {
EKV_CUDA__UNROLL
        for (g = 0; g < GROUP_TILE; g++) {
EKV_CUDA__UNROLL
            for (e = 0; e < 8; e++) shared_acc[warp][g][part * 8 + e] = acc[g][e];
            if (part == 0) {
                shared_max[warp][g] = running_max[g];
                shared_sum[warp][g] = running_sum[g];
            }
        }
    }
    __syncthreads();

    /* merge the warps; each thread finishes some (head, element) pairs */
    for (int i = (int)threadIdx.x; i < tile_heads * HEAD_DIM; i += EKV_CUDA__THREADS) {
        const int h = i / HEAD_DIM, d = i % HEAD_DIM;
        const size_t out_row = (size_t)b * (size_t)p.heads + (size_t)(first_head + h);
        float max = -INFINITY, sum = 0.0f, value = 0.0f;
        for (w = 0; w < EKV_CUDA__WARPS; w++) max = fmaxf(max, shared_max[w][h]);
        for (w = 0; w < EKV_CUDA__WARPS; w++) {
            const float weight = ekv_cuda__weight(shared_max[w][h], max);
            sum += weight * shared_sum[w][h];
            value += weight * shared_acc[w][h][d];
        }
        value *= v_head_scale;
        if (p.splits == 1) {
            p.out[out_row * HEAD_DIM + d] = sum > 0.0f ? value / sum : 0.0f;
        } else {
            /* an empty split writes only (max -inf, sum 0): the merge skips its acc */
            const size_t partial = out_row * (size_t)p.splits + (size_t)split;
            if (sum > 0.0f) p.partial_acc[partial * HEAD_DIM + d] = value;
            if (d == 0) {
                p.partial_ml[partial * 2] = max;
                p.partial_ml[partial * 2 + 1] = sum;
            }
        }
    }
}

/* Log-sum-exp merge of the splits of one (sequence, query head): weights 2^(m_s - M)
   once into shared memory, then each thread finishes some elements. */
__global__ void __launch_bounds__(EKV_CUDA__MERGE_THREADS)
    ekv_cuda__merge_kernel(ekv_cuda__merge_params p)
{
    __shared__ float weights[EKV_CUDA_MAX_SPLITS];
    __shared__ float total;
    const size_t row = blockIdx.x;
    const float *ml = p.partial_ml + row * (size_t)p.splits * 2;
    const float *acc = p.partial_acc + row * (size_t)p.splits * (size_t)p.head_dim;
    float max = -INFINITY;
    int s, d;
    for (s = 0; s < p.splits; s++)
        if (ml[2 * s + 1] > 0.0f) max = fmaxf(max, ml[2 * s]);
    for (s = (int)threadIdx.x; s < p.splits; s += EKV_CUDA__MERGE_THREADS)
        weights[s] = ml[2 * s + 1] > 0.0f ? ekv_cuda__weight(ml[2 * s], max) : 0.0f;
    __syncthreads();
    if (threadIdx.x == 0) {
        float sum = 0.0f;
        for (s = 0; s < p.splits; s++) sum += weights[s] * ml[2 * s + 1];
        total = sum;
    }
    __syncthreads();
    for (d = (int)threadIdx.x; d < p.head_dim; d += EKV_CUDA__MERGE_THREADS) {
        float value = 0.0f;
        for (s = 0; s < p.splits; s++)
            if (weights[s] > 0.0f) value += weights[s] * acc[(size_t)s * (size_t)p.head_dim + d];
        p.out[row * (size_t)p.head_dim + d] = total > 0.0f ? value / total : 0.0f;
    }
}

typedef void (*ekv_cuda__attention_fn)(ekv_cuda__attention_params);

/* The kernel for (dtype, head dim, group tile): 6 x 3 x 2 instantiations, the whole
   compile-time cost of this header. Group tile 1 serves multi-head attention with a
   fraction of the registers; every group above 1 uses the tile of 8. */
template <int DTYPE>
static ekv_cuda__attention_fn ekv_cuda__kernel_for_dtype(int head_dim, int group_tile)
{
    switch (head_dim) {
    case 64:
        return group_tile == 1 ? ekv_cuda__attention_kernel<DTYPE, 64, 1>
                               : ekv_cuda__attention_kernel<DTYPE, 64, EKV_CUDA__GROUP_TILE>;
    case 128:
        return group_tile == 1 ? ekv_cuda__attention_kernel<DTYPE, 128, 1>
                               : ekv_cuda__attention_kernel<DTYPE, 128, EKV_CUDA__GROUP_TILE>;
    case 256:
        return group_tile == 1 ? ekv_cuda__attention_kernel<DTYPE, 256, 1>
                               : ekv_cuda__attention_kernel<DTYPE, 256, EKV_CUDA__GROUP_TILE>;
    default:
        return NULL;
    }
}

static ekv_cuda__attention_fn ekv_cuda__kernel_for(ekv_dtype dtype, int head_dim, int group_tile)
{
    switch (dtype) {
    case EKV_DTYPE_F32: return ekv_cuda__kernel_for_dtype<EKV_DTYPE_F32>(head_dim, group_tile);
    case EKV_DTYPE_F16: return ekv_cuda__kernel_for_dtype<EKV_DTYPE_F16>(head_dim, group_tile);
    case EKV_DTYPE_BF16: return ekv_cuda__kernel_for_dtype<EKV_DTYPE_BF16>(head_dim, group_tile);
    case EKV_DTYPE_INT8: return ekv_cuda__kernel_for_dtype<EKV_DTYPE_INT8>(head_dim, group_tile);
    case EKV_DTYPE_INT4: return ekv_cuda__kernel_for_dtype<EKV_DTYPE_INT4>(head_dim, group_tile);
    case EKV_DTYPE_FP8: return ekv_cuda__kernel_for_dtype<EKV_DTYPE_FP8>(head_dim, group_tile);
    default: return NULL;
    }
}

static int ekv_cuda__group_tile(int group)
{
    return group == 1 ? 1 : EKV_CUDA__GROUP_TILE;
}

/* >>cache (implementation) ================================================= */

/* Byte sizes of the five buffers of a cache; each starts 256-byte aligned in the block. */
typedef struct ekv_cuda__layout {
    size_t values, scales, bias, lengths;
    size_t k_offset, v_offset, k_scales_offset, v_scales_offset, bias_offset, lengths_offset;
    size_t total;
} ekv_cuda__layout;

static size_t ekv_cuda__align(size_t n)
{
    return (n + 255u) & ~(size_t)255u;
}

static ekv_cuda__layout ekv_cuda__layout_of(ekv_dtype dtype, int batch, int kv_heads, int head_dim,
                                            int capacity, int has_bias)
{
    ekv_cuda__layout l;
    const size_t rows = (size_t)batch * (size_t)kv_heads * (size_t)capacity;
    memset(&l, 0, sizeof l);
    l.values = rows * ekv_dtype_row_bytes(dtype, head_dim);
    if (dtype == EKV_DTYPE_INT8 || dtype == EKV_DTYPE_INT4)
        l.scales = rows * ekv_dtype_row_scale_bytes(dtype, head_dim);
    else if (dtype == EKV_DTYPE_FP8)
        l.scales = (size_t)batch * (size_t)kv_heads * sizeof(float);
    l.bias = has_bias ? rows * sizeof(float) : 0;
    l.lengths = (size_t)batch * sizeof(int);
    l.k_offset = 0;
    l.v_offset = l.k_offset + ekv_cuda__align(l.values);
    l.k_scales_offset = l.v_offset + ekv_cuda__align(l.values);
    l.v_scales_offset = l.k_scales_offset + ekv_cuda__align(l.scales);
    l.bias_offset = l.v_scales_offset + ekv_cuda__align(l.scales);
    l.lengths_offset = l.bias_offset + ekv_cuda__align(l.bias);
    l.total = l.lengths_offset + ekv_cuda__align(l.lengths);
    return l;
}

static void ekv_cuda__cache_point(ekv_cuda_cache *c, const ekv_cuda__layout *l)
{
    unsigned char *base = (unsigned char *)c->allocation;
    c->k = base + l->k_offset;
    c->v = base + l->v_offset;
    c->k_scales = l->scales ? base + l->k_scales_offset : NULL;
    c->v_scales = l->scales ? base + l->v_scales_offset : NULL;
    c->bias = l->bias ? (float *)(void *)(base + l->bias_offset) : NULL;
    c->lengths = (int *)(void *)(base + l->lengths_offset);
    c->allocation_bytes = l->total;
}

/* Device ordinal and compute capability of the current device. */
static ekv_result ekv_cuda__current_device(int *device, int *sm)
{
    int major = 0, minor = 0;
    ekv_result result = EKV_CUDA__CHECK(cudaGetDevice(device));
    if (result != EKV_SUCCESS) return result;
    if ((result = EKV_CUDA__CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor,
                                                         *device))) != EKV_SUCCESS)
        return result;
    if ((result = EKV_CUDA__CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor,
                                                         *device))) != EKV_SUCCESS)
        return result;
    *sm = major * 10 + minor;
    return EKV_SUCCESS;
}

static ekv_result ekv_cuda__check_host_cache(const ekv_host_cache *h)
{
    int b;
    if (!h || !h->k || !h->v || !h->lengths)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "ekv_cuda_cache_upload: NULL cache or buffers");
    if ((int)h->dtype < 0 || h->dtype >= EKV_DTYPE_COUNT || h->batch < 1 || h->kv_heads < 1 ||
        h->head_dim < 1 || h->capacity < 1)
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "ekv_cuda_cache_upload: bad cache (dtype %d, batch %d, kv_heads %d, "
                             "head_dim %d, capacity %d)",
                             (int)h->dtype, h->batch, h->kv_heads, h->head_dim, h->capacity);
    if ((h->dtype == EKV_DTYPE_INT8 || h->dtype == EKV_DTYPE_INT4 || h->dtype == EKV_DTYPE_FP8) &&
        (!h->k_scales || !h->v_scales))
        return ekv_set_error(EKV_ERR_INVALID_ARG, "ekv_cuda_cache_upload: %s cache without scales",
                             ekv_dtype_name(h->dtype));
    for (b = 0; b < h->batch; b++)
        if (h->lengths[b] < 0 || h->lengths[b] > h->capacity)
            return ekv_set_error(EKV_ERR_INVALID_ARG,
                                 "ekv_cuda_cache_upload: lengths[%d] = %d outside [0, %d]", b,
                                 h->lengths[b], h->capacity);
    return EKV_SUCCESS;
}

EKV_CUDA_DEF size_t ekv_cuda_cache_allocation_bytes(const ekv_host_cache *host)
{
    return ekv_cuda__layout_of(host->dtype, host->batch, host->kv_heads, host->head_dim,
                               host->capacity, host->bias != NULL)
        .total;
}

EKV_CUDA_DEF ekv_result ekv_cuda_cache_upload(const ekv_host_cache *host, ekv_cuda_cache *cache)
{
    ekv_cuda__layout l;
    ekv_result result;
    memset(cache, 0, sizeof *cache);
    if ((result = ekv_cuda__check_host_cache(host)) != EKV_SUCCESS) return result;
    l = ekv_cuda__layout_of(host->dtype, host->batch, host->kv_heads, host->head_dim,
                            host->capacity, host->bias != NULL);
    cache->dtype = host->dtype;
    cache->batch = host->batch;
    cache->kv_heads = host->kv_heads;
    cache->head_dim = host->head_dim;
    cache->capacity = host->capacity;
    EKV_CUDA__TRY_EKV(ekv_cuda__current_device(&cache->device, &cache->sm));
    EKV_CUDA__TRY(cudaMalloc(&cache->allocation, l.total));
    ekv_cuda__cache_point(cache, &l);
    EKV_CUDA__TRY(cudaMemcpy(cache->k, host->k, l.values, cudaMemcpyHostToDevice));
    EKV_CUDA__TRY(cudaMemcpy(cache->v, host->v, l.values, cudaMemcpyHostToDevice));
    if (l.scales) {
        EKV_CUDA__TRY(cudaMemcpy(cache->k_scales, host->k_scales, l.scales, cudaMemcpyHostToDevice));
        EKV_CUDA__TRY(cudaMemcpy(cache->v_scales, host->v_scales, l.scales, cudaMemcpyHostToDevice));
    }
    if (l.bias) EKV_CUDA__TRY(cudaMemcpy(cache->bias, host->bias, l.bias, cudaMemcpyHostToDevice));
    EKV_CUDA__TRY(cudaMemcpy(cache->lengths, host->lengths, l.lengths, cudaMemcpyHostToDevice));
done:
    if (result != EKV_SUCCESS) ekv_cuda_cache_free(cache);
    return result;
}

EKV_CUDA_DEF ekv_result ekv_cuda_cache_clone(const ekv_cuda_cache *src, ekv_cuda_cache *copy)
{
    ekv_cuda__layout l;
    ekv_result result = EKV_SUCCESS;
    memset(copy, 0, sizeof *copy);
    if (!src || !src->allocation)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "ekv_cuda_cache_clone: the source is not uploaded");
    l = ekv_cuda__layout_of(src->dtype, src->batch, src->kv_heads, src->head_dim, src->capacity,
                            src->bias != NULL);
    *copy = *src;
    copy->allocation = NULL;
    EKV_CUDA__TRY(cudaMalloc(&copy->allocation, l.total));
    ekv_cuda__cache_point(copy, &l);
    EKV_CUDA__TRY(cudaMemcpy(copy->allocation, src->allocation, l.total, cudaMemcpyDeviceToDevice));
done:
    if (result != EKV_SUCCESS) ekv_cuda_cache_free(copy);
    return result;
}

EKV_CUDA_DEF void ekv_cuda_cache_free(ekv_cuda_cache *cache)
{
    if (!cache) return;
    /* a failed free at teardown has no caller that could act on it */
    if (cache->allocation) (void)cudaFree(cache->allocation);
    memset(cache, 0, sizeof *cache);
}

/* >>attention (implementation) ============================================= */

EKV_CUDA_DEF int ekv_cuda_supports_head_dim(int head_dim)
{
    return head_dim == 64 || head_dim == 128 || head_dim == 256;
}

static ekv_result ekv_cuda__check_shape(const ekv_cuda_cache *c, int heads, const char *fn)
{
    if (!c) return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: NULL cache", fn);
    if ((int)c->dtype < 0 || c->dtype >= EKV_DTYPE_COUNT)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: cache dtype %d is not an ekv_dtype", fn,
                             (int)c->dtype);
    /* grid z is the batch; slot indices stay far from int overflow below 2^30 */
    if (c->batch < 1 || c->batch > 65535 || c->kv_heads < 1 || c->capacity < 1 ||
        c->capacity > (1 << 30))
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "%s: cache batch %d (allowed 1..65535), kv_heads %d (>= 1), capacity "
                             "%d (allowed 1..2^30)", fn, c->batch, c->kv_heads, c->capacity);
    if (!ekv_cuda_supports_head_dim(c->head_dim))
        return ekv_set_error(EKV_ERR_UNSUPPORTED,
                             "%s: head_dim %d is not supported by the CUDA kernels (supported: %s)",
                             fn, c->head_dim, EKV_CUDA_HEAD_DIMS);
    if (heads < 1 || heads % c->kv_heads != 0)
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "%s: heads (%d) must be a positive multiple of the cache's kv_heads "
                             "(%d)", fn, heads, c->kv_heads);
    if ((long long)c->kv_heads * ((heads / c->kv_heads + EKV_CUDA__GROUP_TILE - 1) /
                                  EKV_CUDA__GROUP_TILE) > 65535 ||
        (long long)c->batch * heads > 2147483647LL)
        return ekv_set_error(EKV_ERR_UNSUPPORTED,
                             "%s: kv_heads x group tiles (%d x %d) exceeds 65535 or batch x heads "
                             "exceeds 2^31 - 1 (the launch grid's limits)", fn, c->kv_heads,
                             (heads / c->kv_heads + EKV_CUDA__GROUP_TILE - 1) / EKV_CUDA__GROUP_TILE);
    return EKV_SUCCESS;
}

/* fp8 needs sm_89+ at run time: earlier GPUs have no e4m3 in their software stack, and
   the benchmark must not present a bit-trick decode there as representative fp8 speed. */
static ekv_result ekv_cuda__check_dtype_device(ekv_dtype dtype, int sm)
{
    if (dtype == EKV_DTYPE_FP8 && sm < 89)
        return ekv_set_error(EKV_ERR_UNSUPPORTED,
                             "fp8 e4m3 KV cache needs sm_89 or newer (device is sm_%d%d)", sm / 10,
                             sm % 10);
    return EKV_SUCCESS;
}

EKV_CUDA_DEF size_t ekv_cuda_attention_workspace_bytes(const ekv_cuda_cache *cache, int heads,
                                                       int splits)
{
    if (!cache || splits <= 1 || heads < 1) return 0;
    return (size_t)cache->batch * (size_t)heads * (size_t)splits *
           ((size_t)cache->head_dim + 2) * sizeof(float);
}

/* Slots per split for `splits` parts of the capacity, and the parts that are not empty. */
static void ekv_cuda__split_shape(int capacity, int splits, int *tokens_per_split, int *used)
{
    int per = (capacity + splits - 1) / splits;
    if (per < 1) per = 1;
    *tokens_per_split = per;
    *used = (capacity + per - 1) / per;
}

EKV_CUDA_DEF ekv_result ekv_cuda_attention_plan_make(const ekv_cuda_cache *cache, int heads,
                                                     int splits, ekv_cuda_attention_plan *plan)
{
    const char *fn = "ekv_cuda_attention_plan_make";
    ekv_result result;
    int per, used;
    if (!plan) return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: NULL plan", fn);
    memset(plan, 0, sizeof *plan);
    plan->splits = 1;
    if ((result = ekv_cuda__check_shape(cache, heads, fn)) != EKV_SUCCESS) return result;
    if (splits < 0 || splits > EKV_CUDA_MAX_SPLITS)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: splits %d outside [0, %d] (0 = auto)", fn,
                             splits, EKV_CUDA_MAX_SPLITS);
    if (splits == 0) {
        /* enough CTAs for two full waves: resident CTAs per SM from the occupancy
           calculator for the kernel this cache will run */
        const int group = heads / cache->kv_heads, tile = ekv_cuda__group_tile(group);
        const long long ctas = (long long)cache->batch * cache->kv_heads *
                               ((group + tile - 1) / tile);
        ekv_cuda__attention_fn kernel = ekv_cuda__kernel_for(cache->dtype, cache->head_dim, tile);
        int sm_count = 0, per_sm = 0;
        long long want, by_length;
        if ((result = EKV_CUDA__CHECK(cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount,
                                                             cache->device))) != EKV_SUCCESS)
            return result;
        if ((result = EKV_CUDA__CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
                 &per_sm, (const void *)kernel, EKV_CUDA__THREADS, 0))) != EKV_SUCCESS)
            return result;
        if (per_sm < 1) per_sm = 1;
        want = (2LL * sm_count * per_sm + ctas - 1) / ctas;
        by_length = (cache->capacity + EKV_CUDA_MIN_SPLIT_TOKENS - 1) / EKV_CUDA_MIN_SPLIT_TOKENS;
        if (want > by_length) want = by_length;
        if (want > EKV_CUDA_MAX_SPLITS) want = EKV_CUDA_MAX_SPLITS;
        splits = want < 1 ? 1 : (int)want;
    }
    ekv_cuda__split_shape(cache->capacity, splits, &per, &used);
    plan->splits = used;
    plan->workspace_bytes = ekv_cuda_attention_workspace_bytes(cache, heads, used);
    return EKV_SUCCESS;
}

EKV_CUDA_DEF ekv_result ekv_cuda_attention(const ekv_cuda_cache *cache, const float *q, int heads,
                                           float softmax_scale, float *out,
                                           const ekv_cuda_attention_plan *plan,
                                           cudaStream_t stream)
{
    const char *fn = "ekv_cuda_attention";
    ekv_cuda__attention_params p;
    ekv_cuda__attention_fn kernel;
    ekv_result result;
    int splits = plan ? plan->splits : 1, tile, used;
    if ((result = ekv_cuda__check_shape(cache, heads, fn)) != EKV_SUCCESS) return result;
    if (!cache->k || !cache->v || !cache->lengths)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: the cache has no device buffers", fn);
    if ((cache->dtype == EKV_DTYPE_INT8 || cache->dtype == EKV_DTYPE_INT4 ||
         cache->dtype == EKV_DTYPE_FP8) && (!cache->k_scales || !cache->v_scales))
        return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: %s cache without scales", fn,
                             ekv_dtype_name(cache->dtype));
    if (cache->dtype == EKV_DTYPE_FP8) {
        /* a cache struct filled by hand may not carry the device's sm: ask the current one */
        int device = 0, sm = cache->sm;
        if (sm == 0 && (result = ekv_cuda__current_device(&device, &sm)) != EKV_SUCCESS) return result;
        if ((result = ekv_cuda__check_dtype_device(cache->dtype, sm)) != EKV_SUCCESS) return result;
    }
    if (!q || !out || ((uintptr_t)q & 15u) || ((uintptr_t)out & 15u))
        return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: q and out must be non-NULL and 16-byte aligned",
                             fn);
    if (!(softmax_scale == softmax_scale) || softmax_scale > 3.0e38f || softmax_scale < -3.0e38f)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: softmax_scale must be finite", fn);
    if (splits < 1 || splits > EKV_CUDA_MAX_SPLITS)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: plan->splits %d outside [1, %d]", fn, splits,
                             EKV_CUDA_MAX_SPLITS);
    memset(&p, 0, sizeof p);
    ekv_cuda__split_shape(cache->capacity, splits, &p.tokens_per_split, &used);
    p.splits = used;
    if (p.splits > 1) {
        const size_t need = ekv_cuda_attention_workspace_bytes(cache, heads, p.splits);
        if (!plan->workspace || plan->workspace_bytes < need)
            return ekv_set_error(EKV_ERR_INVALID_ARG,
                                 "%s: plan->workspace must hold %zu bytes for %d splits (has %zu%s)",
                                 fn, need, p.splits, plan->workspace_bytes,
                                 plan->workspace ? "" : ", NULL");
        p.partial_acc = (float *)plan->workspace;
        p.partial_ml = p.partial_acc + (size_t)cache->batch * (size_t)heads * (size_t)p.splits *
                                           (size_t)cache->head_dim;
    }
    if (softmax_scale == 0.0f) softmax_scale = (float)(1.0 / sqrt((double)cache->head_dim));
    p.k = cache->k;
    p.v = cache->v;
    p.k_scales = cache->k_scales;
    p.v_scales = cache->v_scales;
    p.bias = cache->bias;
    p.lengths = cache->lengths;
    p.q = q;
    p.out = out;
    p.heads = heads;
    p.kv_heads = cache->kv_heads;
    p.capacity = cache->capacity;
    p.group = heads / cache->kv_heads;
    tile = ekv_cuda__group_tile(p.group);
    p.head_tiles = (p.group + tile - 1) / tile;
    p.q_scale = softmax_scale * EKV_CUDA__LOG2E;
    kernel = ekv_cuda__kernel_for(cache->dtype, cache->head_dim, tile);
    result = EKV_CUDA__LAUNCH("ekv_cuda__attention_kernel", kernel,
                              dim3((unsigned)p.splits, (unsigned)(cache->kv_heads * p.head_tiles),
                                   (unsigned)cache->batch),
                              dim3(EKV_CUDA__THREADS), stream, p);
    if (result == EKV_SUCCESS && p.splits > 1) {
        ekv_cuda__merge_params m;
        m.partial_acc = p.partial_acc;
        m.partial_ml = p.partial_ml;
        m.out = out;
        m.splits = p.splits;
        m.head_dim = cache->head_dim;
        result = EKV_CUDA__LAUNCH("ekv_cuda__merge_kernel", ekv_cuda__merge_kernel,
                                  dim3((unsigned)(cache->batch * heads)),
                                  dim3(EKV_CUDA__MERGE_THREADS), stream, m);
    }
    return result;
}

/* >>device (implementation) ================================================ */

/* FP32 results per clock per SM, from the arithmetic-instruction throughput table of the
   CUDA C++ Programming Guide: 64 on sm_60, sm_70/72, sm_75 and sm_80; 128 on sm_61/62,
   sm_86/87/89, sm_90 and the Blackwell parts. Architectures newer than the table are
   assumed to keep 128; the figure is a peak for the roofline, not a measurement. */
static int ekv_cuda__fp32_lanes(int major, int minor)
{
    if (major == 7 || ((major == 6 || major == 8) && minor == 0)) return 64;
    return 128;
}

EKV_CUDA_DEF ekv_result ekv_cuda_copy_bandwidth(int device, size_t bytes, int reps, double *gbs)
{
    ekv_result result = EKV_SUCCESS;
    void *src = NULL, *dst = NULL;
    cudaStream_t stream = NULL;
    cudaEvent_t start = NULL, stop = NULL;
    double *times = NULL;
    int previous = 0, l2 = 0, i;
    size_t free_bytes = 0, total_bytes = 0;
    *gbs = NAN;
    if (reps < 1) return ekv_set_error(EKV_ERR_INVALID_ARG, "ekv_cuda_copy_bandwidth: reps %d < 1", reps);
    if ((result = EKV_CUDA__CHECK(cudaGetDevice(&previous))) != EKV_SUCCESS) return result;
    if ((result = EKV_CUDA__CHECK(cudaSetDevice(device))) != EKV_SUCCESS) return result;
    times = (double *)EKV_MALLOC((size_t)reps * sizeof(double));
    if (!times) {
        result = ekv_set_error(EKV_ERR_OUT_OF_MEMORY, "ekv_cuda_copy_bandwidth: out of host memory");
        goto done;
    }
    if (bytes == 0) {
        /* well beyond L2, so the copy runs at DRAM speed; two buffers within half of free */
        EKV_CUDA__TRY(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, device));
        EKV_CUDA__TRY(cudaMemGetInfo(&free_bytes, &total_bytes));
        bytes = (size_t)256 << 20;
        if ((size_t)l2 * 4 > bytes) bytes = (size_t)l2 * 4;
        if (bytes > free_bytes / 4) bytes = free_bytes / 4;
        bytes &= ~(size_t)255;
        if (bytes < ((size_t)1 << 20)) {
            result = ekv_set_error(EKV_ERR_OUT_OF_MEMORY,
                                   "ekv_cuda_copy_bandwidth: only %zu bytes free on the device",
                                   free_bytes);
            goto done;
        }
    }
    EKV_CUDA__TRY(cudaMalloc(&src, bytes));
    EKV_CUDA__TRY(cudaMalloc(&dst, bytes));
    EKV_CUDA__TRY(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    EKV_CUDA__TRY(cudaEventCreate(&start));
    EKV_CUDA__TRY(cudaEventCreate(&stop));
    /* touch both buffers (first-use costs stay out of the timing), then one warm-up copy */
    EKV_CUDA__TRY(cudaMemsetAsync(src, 1, bytes, stream));
    EKV_CUDA__TRY(cudaMemsetAsync(dst, 2, bytes, stream));
    EKV_CUDA__TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream));
    for (i = 0; i < reps; i++) {
        float ms = 0.0f;
        EKV_CUDA__TRY(cudaEventRecord(start, stream));
        EKV_CUDA__TRY(cudaMemcpyAsync(i % 2 ? src : dst, i % 2 ? dst : src, bytes,
                                      cudaMemcpyDeviceToDevice, stream));
        EKV_CUDA__TRY(cudaEventRecord(stop, stream));
        EKV_CUDA__TRY(cudaEventSynchronize(stop));
        EKV_CUDA__TRY(cudaEventElapsedTime(&ms, start, stop));
        times[i] = ms;
    }
    {
        const double median_ms = ekv_median(times, (size_t)reps);
        if (median_ms > 0) *gbs = 2.0 * (double)bytes / (median_ms * 1e-3) * 1e-9;
    }
done:
    if (start) (void)cudaEventDestroy(start);
    if (stop) (void)cudaEventDestroy(stop);
    if (stream) (void)cudaStreamDestroy(stream);
    if (src) (void)cudaFree(src);
    if (dst) (void)cudaFree(dst);
    if (times) EKV_FREE(times);
    (void)cudaSetDevice(previous);
    return result;
}

/* Everything but the measured copy bandwidth, which takes a fraction of a second and
   hundreds of MiB: ekv_cuda_run measures it once per device and process. */
static ekv_result ekv_cuda__device_attributes(int device, ekv_device_info *out)
{
    ekv_result result = EKV_SUCCESS;
    cudaDeviceProp prop;
    int sm_clock_khz = 0, l2 = 0;
    memset(out, 0, sizeof *out);
    out->peak_bw_theoretical_gbs = NAN;
    out->peak_bw_measured_gbs = NAN;
    out->peak_gflops = NAN;
    memset(&prop, 0, sizeof prop);
    EKV_CUDA__TRY(cudaGetDeviceProperties(&prop, device));
    snprintf(out->name, sizeof out->name, "%s", prop.name);
    out->memory_bytes = (long long)prop.totalGlobalMem;
    /* attributes rather than cudaDeviceProp fields: CUDA 13 removed the clock fields */
    EKV_CUDA__TRY(cudaDeviceGetAttribute(&out->sm_major, cudaDevAttrComputeCapabilityMajor, device));
    EKV_CUDA__TRY(cudaDeviceGetAttribute(&out->sm_minor, cudaDevAttrComputeCapabilityMinor, device));
    EKV_CUDA__TRY(cudaDeviceGetAttribute(&out->sm_count, cudaDevAttrMultiProcessorCount, device));
    EKV_CUDA__TRY(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, device));
    EKV_CUDA__TRY(cudaDeviceGetAttribute(&out->memory_clock_khz, cudaDevAttrMemoryClockRate, device));
    EKV_CUDA__TRY(cudaDeviceGetAttribute(&out->bus_width_bits, cudaDevAttrGlobalMemoryBusWidth, device));
    EKV_CUDA__TRY(cudaDeviceGetAttribute(&sm_clock_khz, cudaDevAttrClockRate, device));
    EKV_CUDA__TRY(cudaDriverGetVersion(&out->driver_version));
    EKV_CUDA__TRY(cudaRuntimeGetVersion(&out->runtime_version));
    out->l2_bytes = l2;
    /* double data rate: two transfers per memory clock (HBM and GDDR report the clock
       this formula expects; --peak-bw overrides it where a part reports otherwise) */
    if (out->memory_clock_khz > 0 && out->bus_width_bits > 0)
        out->peak_bw_theoretical_gbs =
            2.0 * out->memory_clock_khz * 1e3 * (out->bus_width_bits / 8.0) * 1e-9;
    if (sm_clock_khz > 0 && out->sm_count > 0)
        out->peak_gflops = (double)out->sm_count * ekv_cuda__fp32_lanes(out->sm_major, out->sm_minor) *
                           2.0 * sm_clock_khz * 1e3 * 1e-9;
done:
    return result;
}

static ekv_result ekv_cuda__measure_copy(int device, ekv_device_info *out)
{
    ekv_result result = ekv_cuda_copy_bandwidth(device, 0, 10, &out->peak_bw_measured_gbs);
    return result == EKV_ERR_OUT_OF_MEMORY ? EKV_SUCCESS : result; /* not measured: NaN */
}

EKV_CUDA_DEF ekv_result ekv_cuda_device_info(int device, ekv_device_info *out)
{
    ekv_result result = ekv_cuda__device_attributes(device, out);
    return result == EKV_SUCCESS ? ekv_cuda__measure_copy(device, out) : result;
}

/* >>run (implementation) =================================================== */

/* Tolerance of the kernel against the double reference over the same stored cache. Both
   read the same stored values (the reference dequantizes them with the same formulas), so
   the storage dtype does not enter: what remains is fp32 arithmetic - q times the scale,
   dot products of head_dim terms, exp2f (2 ulp), and the running sums. Those errors are
   about 1e-7 relative each; the sums grow like the square root of the tokens one thread
   accumulates, which the second term allows for on long sequences. */
EKV_CUDA_DEF double ekv_cuda_validation_tolerance(int max_length)
{
    const double grow = 2e-7 * sqrt((double)(max_length > 0 ? max_length : 1));
    return grow > 1e-5 ? grow : 1e-5;
}

/* The arguments every timed launch shares. */
typedef struct ekv_cuda__call {
    const float *q;
    float *out;
    int heads;
    float softmax_scale;
    cudaStream_t stream;
} ekv_cuda__call;

/* One measured cache: its rotation copies (copies[0] is the upload), its plan, and the
   graphs that replay the rotation when graphs are on. */
typedef struct ekv_cuda__timed {
    ekv_cuda_cache *copies;
    int copy_count;
    ekv_cuda_attention_plan plan;
    cudaGraphExec_t *graphs;
    int graph_count;
} ekv_cuda__timed;

static void ekv_cuda__timed_free(ekv_cuda__timed *t)
{
    int i;
    for (i = 0; i < t->graph_count; i++)
        if (t->graphs[i]) (void)cudaGraphExecDestroy(t->graphs[i]);
    if (t->graphs) EKV_FREE(t->graphs);
    for (i = 0; i < t->copy_count; i++) ekv_cuda_cache_free(&t->copies[i]);
    if (t->copies) EKV_FREE(t->copies);
    memset(t, 0, sizeof *t);
}

/* Launches number first .. first + count - 1 of the rotation; launch n uses copy n mod N. */
static ekv_result ekv_cuda__launches(const ekv_cuda__timed *t, const ekv_cuda__call *call,
                                     long long first, int count)
{
    int i;
    for (i = 0; i < count; i++) {
        const ekv_cuda_cache *cache = &t->copies[(first + i) % t->copy_count];
        ekv_result result = ekv_cuda_attention(cache, call->q, call->heads, call->softmax_scale,
                                               call->out, &t->plan, call->stream);
        if (result != EKV_SUCCESS) return result;
    }
    return EKV_SUCCESS;
}

/* Copies: N = 1 when the cache alone is 3 x L2 or more (a launch streams it past L2
   before it comes round again), else enough that the others stream 3 x L2 between two
   launches on the same copy. N is then rounded to a divisor or a multiple of inner_loops,
   so that sample s starts the rotation at s x inner_loops mod N, one of N / inner_loops
   fixed points: that many graphs replay it. Within max_copies (memory, graph count). */
static int ekv_cuda__cold_copies(double bytes, double l2, int inner_loops, long long max_copies)
{
    const double target = 3.0 * l2;
    long long want, up = 0, down = 1, d;
    if (max_copies < 1) max_copies = 1;
    want = bytes >= target || bytes <= 0 ? 1 : 1 + (long long)ceil(target / bytes);
    for (d = 1; d <= inner_loops; d++) {
        if (inner_loops % d != 0 || d > max_copies) continue;
        if (d >= want && !up) up = d;
        down = d;
    }
    if (!up && want > inner_loops) {
        const long long multiple = (want + inner_loops - 1) / inner_loops * inner_loops;
        if (multiple <= max_copies) up = multiple;
        else if (max_copies / inner_loops * inner_loops >= inner_loops)
            down = max_copies / inner_loops * inner_loops;
    }
    return (int)(up ? up : down);
}

static ekv_result ekv_cuda__timed_make(const ekv_host_cache *host, int copies, int heads,
                                       ekv_cuda__timed *t)
{
    ekv_result result = EKV_SUCCESS;
    int i;
    memset(t, 0, sizeof *t);
    t->copies = (ekv_cuda_cache *)EKV_MALLOC((size_t)copies * sizeof(ekv_cuda_cache));
    if (!t->copies) return ekv_set_error(EKV_ERR_OUT_OF_MEMORY, "ekv_cuda_run: out of host memory");
    memset(t->copies, 0, (size_t)copies * sizeof(ekv_cuda_cache));
    EKV_CUDA__TRY_EKV(ekv_cuda_cache_upload(host, &t->copies[0]));
    t->copy_count = 1;
    for (i = 1; i < copies; i++) {
        EKV_CUDA__TRY_EKV(ekv_cuda_cache_clone(&t->copies[0], &t->copies[i]));
        t->copy_count++;
    }
    EKV_CUDA__TRY_EKV(ekv_cuda_attention_plan_make(&t->copies[0], heads, 0, &t->plan));
done:
    if (result != EKV_SUCCESS) ekv_cuda__timed_free(t);
    return result;
}

/* Captures the inner loop once per rotation start point: graph p replays launches
   p x inner_loops ... (p + 1) x inner_loops - 1. */
static ekv_result ekv_cuda__timed_capture(ekv_cuda__timed *t, const ekv_cuda__call *call,
                                          int inner_loops)
{
    ekv_result result = EKV_SUCCESS;
    cudaGraph_t graph = NULL;
    const int count = t->copy_count > inner_loops ? t->copy_count / inner_loops : 1;
    int i;
    t->graphs = (cudaGraphExec_t *)EKV_MALLOC((size_t)count * sizeof(cudaGraphExec_t));
    if (!t->graphs) return ekv_set_error(EKV_ERR_OUT_OF_MEMORY, "ekv_cuda_run: out of host memory");
    memset(t->graphs, 0, (size_t)count * sizeof(cudaGraphExec_t));
    t->graph_count = count;
    for (i = 0; i < count; i++) {
        ekv_result launched;
        EKV_CUDA__TRY(cudaStreamBeginCapture(call->stream, cudaStreamCaptureModeThreadLocal));
        launched = ekv_cuda__launches(t, call, (long long)i * inner_loops, inner_loops);
        /* end the capture even when a launch failed, so the stream is usable again */
        result = EKV_CUDA__CHECK(cudaStreamEndCapture(call->stream, &graph));
        if (launched != EKV_SUCCESS) {
            if (graph) (void)cudaGraphDestroy(graph);
            result = launched;
            goto done;
        }
        if (result != EKV_SUCCESS) goto done;
        result = EKV_CUDA__CHECK(cudaGraphInstantiateWithFlags(&t->graphs[i], graph, 0));
        (void)cudaGraphDestroy(graph);
        graph = NULL;
        if (result != EKV_SUCCESS) goto done;
    }
done:
    return result;
}

/* One sample: inner_loops launches between two events, per-launch milliseconds out. */
static ekv_result ekv_cuda__timed_sample(const ekv_cuda__timed *t, const ekv_cuda__call *call,
                                         long long sample, int inner_loops, cudaEvent_t start,
                                         cudaEvent_t stop, double *ms)
{
    ekv_result result = EKV_SUCCESS;
    float elapsed = 0.0f;
    EKV_CUDA__TRY(cudaEventRecord(start, call->stream));
    if (t->graph_count)
        EKV_CUDA__TRY(cudaGraphLaunch(t->graphs[sample % t->graph_count], call->stream));
    else
        EKV_CUDA__TRY_EKV(ekv_cuda__launches(t, call, sample * inner_loops, inner_loops));
    EKV_CUDA__TRY(cudaEventRecord(stop, call->stream));
    EKV_CUDA__TRY(cudaEventSynchronize(stop));
    EKV_CUDA__TRY(cudaEventElapsedTime(&elapsed, start, stop));
    *ms = (double)elapsed / inner_loops;
done:
    return result;
}

/* Runs the plan once on copy 0 into an output poisoned with NaN (0xff bytes), copies it
   back, and fails on any element left NaN: a kernel that skips a head cannot pass. */
static ekv_result ekv_cuda__run_once(const ekv_cuda__timed *t, const ekv_cuda__call *call,
                                     float *host_out, size_t count, const char *what)
{
    ekv_result result = EKV_SUCCESS;
    size_t i;
    EKV_CUDA__TRY(cudaMemsetAsync(call->out, 0xff, count * sizeof(float), call->stream));
    EKV_CUDA__TRY_EKV(ekv_cuda__launches(t, call, 0, 1));
    EKV_CUDA__TRY(cudaStreamSynchronize(call->stream));
    EKV_CUDA__TRY(cudaMemcpy(host_out, call->out, count * sizeof(float), cudaMemcpyDeviceToHost));
    for (i = 0; i < count; i++)
        if (!(host_out[i] == host_out[i])) {
            const size_t d = (size_t)t->copies[0].head_dim, h = (size_t)call->heads;
            result = ekv_set_error(EKV_ERR_VALIDATION,
                                   "the %s kernel output is NaN at [%zu][%zu][%zu] (not written, "
                                   "or a NaN in the computation)",
                                   what, i / (d * h), i / d % h, i % d);
            goto done;
        }
done:
    return result;
}

static int ekv_cuda__max_length(const ekv_host_cache *c)
{
    int b, m = 0;
    for (b = 0; b < c->batch; b++)
        if (c->lengths[b] > m) m = c->lengths[b];
    return m;
}

/* Bytes the split path writes and the merge reads back per launch: per (sequence, query
   head) a (max, sum) pair for every split and head_dim accumulators for every split that
   holds slots of that sequence. */
static double ekv_cuda__partial_bytes(const ekv_host_cache *c, int heads, int splits)
{
    double per_launch = 0.0;
    int b, per, used;
    if (splits <= 1) return 0.0;
    ekv_cuda__split_shape(c->capacity, splits, &per, &used);
    for (b = 0; b < c->batch; b++) {
        const int busy = (c->lengths[b] + per - 1) / per;
        per_launch += (double)heads * ((double)busy * c->head_dim + 2.0 * used) * sizeof(float);
    }
    return 2.0 * per_launch;
}

/* Measured copy bandwidth per device ordinal, once per process (0 = not yet). */
#define EKV_CUDA__MEMO_DEVICES 64
static double ekv_cuda__copy_gbs[EKV_CUDA__MEMO_DEVICES];

static double ekv_cuda__gib(double bytes)
{
    return bytes / (1024.0 * 1024.0 * 1024.0);
}

EKV_CUDA_DEF ekv_result ekv_cuda_run(const ekv_config *config, const ekv_workload *work,
                                     ekv_report *report)
{
    const char *fn = "ekv_cuda_run";
    ekv_result result = EKV_SUCCESS;
    ekv_cuda__timed candidate, baseline;
    ekv_cuda__call call;
    cudaEvent_t start = NULL, stop = NULL;
    float *host_out = NULL, *device_q = NULL, *device_out = NULL;
    double *baseline_reference = NULL;
    void *workspace = NULL;
    cudaError_t err;
    size_t count, free_bytes = 0, total_bytes = 0, workspace_bytes;
    double candidate_block, baseline_block = 0.0, io_bytes, need, margin, spare, kept = 0.0;
    double tolerance, l2;
    int device_count = 0, sm, copies_candidate = 1, copies_baseline = 1, heads, b;
    long long i, max_copies;
    ekv_cuda_cache shape;
    ekv_cuda_attention_plan plan_candidate, plan_baseline;

    memset(&candidate, 0, sizeof candidate);
    memset(&baseline, 0, sizeof baseline);
    memset(&call, 0, sizeof call);
    ekv_report_init(report, config);
#ifdef EKV_EMULATOR_ACTIVE
    report->backend = EKV_BACKEND_EMULATOR;
#else
    report->backend = EKV_BACKEND_CUDA;
#endif
    if (!work || !work->cache.k || !work->data.q || !work->reference_cache)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: the workload is not prepared", fn);
    if (config->paired_baseline && work->baseline.batch == 0)
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "%s: --paired-baseline but the workload has no baseline cache", fn);
    heads = work->data.heads;
    count = (size_t)work->data.batch * (size_t)heads * (size_t)work->data.head_dim;

    /* the device, before anything is allocated */
    err = cudaGetDeviceCount(&device_count);
    if (err != cudaSuccess || device_count == 0) {
        (void)cudaGetLastError();
        if (err == cudaErrorInsufficientDriver)
            return ekv_set_error(EKV_ERR_NO_DEVICE,
                                 "the CUDA driver is older than this program's CUDA runtime "
                                 "(%d.%d): update the driver", CUDART_VERSION / 1000,
                                 CUDART_VERSION % 1000 / 10);
        if (err != cudaSuccess && err != cudaErrorNoDevice)
            return ekv_set_error(EKV_ERR_NO_DEVICE, "no usable CUDA device: %s (%s)",
                                 cudaGetErrorName(err), cudaGetErrorString(err));
        return ekv_set_error(EKV_ERR_NO_DEVICE, "no CUDA device found");
    }
    if (config->device < 0 || config->device >= device_count)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "--device=%d: allowed 0..%d (%d CUDA device%s)",
                             config->device, device_count - 1, device_count,
                             device_count == 1 ? "" : "s");
    EKV_CUDA__TRY(cudaSetDevice(config->device));
    EKV_CUDA__TRY_EKV(ekv_cuda__device_attributes(config->device, &report->device));
    if (config->device < EKV_CUDA__MEMO_DEVICES && ekv_cuda__copy_gbs[config->device] > 0) {
        report->device.peak_bw_measured_gbs = ekv_cuda__copy_gbs[config->device];
    } else {
        EKV_CUDA__TRY_EKV(ekv_cuda__measure_copy(config->device, &report->device));
        if (config->device < EKV_CUDA__MEMO_DEVICES && report->device.peak_bw_measured_gbs > 0)
            ekv_cuda__copy_gbs[config->device] = report->device.peak_bw_measured_gbs;
    }
    if (config->peak_bw_gbs > 0) report->device.peak_bw_theoretical_gbs = config->peak_bw_gbs;
    sm = report->device.sm_major * 10 + report->device.sm_minor;
    if (!ekv_cuda_supports_head_dim(work->cache.head_dim))
        return ekv_set_error(EKV_ERR_UNSUPPORTED,
                             "--dim=%d: the CUDA kernels support head dims %s (the CPU backend "
                             "takes any: --backend=cpu)", work->cache.head_dim, EKV_CUDA_HEAD_DIMS);
    EKV_CUDA__TRY_EKV(ekv_cuda__check_dtype_device(work->cache.dtype, sm));
    if (config->paired_baseline)
        EKV_CUDA__TRY_EKV(ekv_cuda__check_dtype_device(work->baseline.dtype, sm));

    /* memory: one copy of each cache, q, out and the workspace must fit; more copies for
       cold timing come out of what is left */
    memset(&shape, 0, sizeof shape);
    shape.dtype = work->cache.dtype;
    shape.batch = work->cache.batch;
    shape.kv_heads = work->cache.kv_heads;
    shape.head_dim = work->cache.head_dim;
    shape.capacity = work->cache.capacity;
    shape.device = config->device;
    shape.sm = sm;
    EKV_CUDA__TRY_EKV(ekv_cuda_attention_plan_make(&shape, heads, 0, &plan_candidate));
    workspace_bytes = plan_candidate.workspace_bytes;
    if (config->paired_baseline) {
        shape.dtype = work->baseline.dtype;
        shape.capacity = work->baseline.capacity;
        EKV_CUDA__TRY_EKV(ekv_cuda_attention_plan_make(&shape, heads, 0, &plan_baseline));
        if (plan_baseline.workspace_bytes > workspace_bytes) workspace_bytes = plan_baseline.workspace_bytes;
        baseline_block = (double)ekv_cuda_cache_allocation_bytes(&work->baseline);
    }
    candidate_block = (double)ekv_cuda_cache_allocation_bytes(&work->cache);
    io_bytes = 2.0 * (double)count * sizeof(float);
    EKV_CUDA__TRY(cudaMemGetInfo(&free_bytes, &total_bytes));
    margin = (double)total_bytes / 20.0;
    need = candidate_block + baseline_block + io_bytes + (double)workspace_bytes;
    if (need + margin > (double)free_bytes)
        return ekv_set_error(EKV_ERR_OUT_OF_MEMORY,
                             "%s: needs %.2f GiB of device memory (cache %.2f GiB%s, q/out, "
                             "workspace) plus %.2f GiB headroom; device has %.2f GiB free",
                             fn, ekv_cuda__gib(need), ekv_cuda__gib(candidate_block),
                             config->paired_baseline ? " + baseline" : "", ekv_cuda__gib(margin),
                             ekv_cuda__gib((double)free_bytes));
    l2 = (double)report->device.l2_bytes;
    if (!config->hot) {
        /* share the spare memory in proportion to each cache's size; at most 64 graphs
           per cache (copies up to 64 x inner_loops) */
        spare = (double)free_bytes - margin - need;
        max_copies = 64LL * config->inner_loops;
        if (max_copies > 4096) max_copies = 4096;
        {
            const double both = candidate_block + baseline_block;
            long long fit = 1 + (long long)(spare / both);
            if (fit < max_copies) max_copies = fit;
        }
        copies_candidate = ekv_cuda__cold_copies(candidate_block, l2, config->inner_loops, max_copies);
        if (config->paired_baseline)
            copies_baseline = ekv_cuda__cold_copies(baseline_block, l2, config->inner_loops, max_copies);
        if ((double)copies_candidate * candidate_block < 2.0 * l2)
            snprintf(report->notice, sizeof report->notice,
                     "timing is not fully cold: %d copies x %.1f MiB of cache < 2 x L2 (%.0f MiB); "
                     "memory or the graph count limits the rotation",
                     copies_candidate, candidate_block / 1048576.0, l2 / 1048576.0);
    }

    EKV_CUDA__TRY_EKV(ekv_cuda__timed_make(&work->cache, copies_candidate, heads, &candidate));
    if (config->paired_baseline)
        EKV_CUDA__TRY_EKV(ekv_cuda__timed_make(&work->baseline, copies_baseline, heads, &baseline));
    EKV_CUDA__TRY(cudaMalloc((void **)&device_q, count * sizeof(float)));
    EKV_CUDA__TRY(cudaMalloc((void **)&device_out, count * sizeof(float)));
    if (workspace_bytes) EKV_CUDA__TRY(cudaMalloc(&workspace, workspace_bytes));
    candidate.plan.workspace = workspace;
    baseline.plan.workspace = workspace;
    EKV_CUDA__TRY(cudaMemcpy(device_q, work->data.q, count * sizeof(float), cudaMemcpyHostToDevice));
    EKV_CUDA__TRY(cudaStreamCreateWithFlags(&call.stream, cudaStreamNonBlocking));
    EKV_CUDA__TRY(cudaEventCreate(&start));
    EKV_CUDA__TRY(cudaEventCreate(&stop));
    call.q = device_q;
    call.out = device_out;
    call.heads = heads;
    call.softmax_scale = (float)work->softmax_scale;

    /* validation first: nothing is timed unless the kernel matches the reference */
    host_out = (float *)EKV_MALLOC(count * sizeof(float));
    if (!host_out) {
        result = ekv_set_error(EKV_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
        goto done;
    }
    tolerance = ekv_cuda_validation_tolerance(ekv_cuda__max_length(&work->cache));
    EKV_CUDA__TRY_EKV(ekv_cuda__run_once(&candidate, &call, host_out, count, "candidate"));
    ekv_workload_accuracy(work, host_out, &report->accuracy);
    if (!(report->accuracy.kernel.rel_l2 <= tolerance)) {
        result = ekv_set_error(EKV_ERR_VALIDATION,
                               "%s: the CUDA kernel differs from the double reference over the same "
                               "%s cache: rel_l2 %.3e > %.1e (max_abs %.3e)",
                               fn, ekv_dtype_name(work->cache.dtype),
                               report->accuracy.kernel.rel_l2, tolerance,
                               report->accuracy.kernel.max_abs);
        goto done;
    }
    if (config->dump_dir[0])
        EKV_CUDA__TRY_EKV(ekv_workload_dump(work, host_out, config->dump_dir));
    if (config->paired_baseline) {
        ekv_error_stats error;
        const double baseline_tolerance =
            ekv_cuda_validation_tolerance(ekv_cuda__max_length(&work->baseline));
        baseline_reference = (double *)EKV_MALLOC(count * sizeof(double));
        if (!baseline_reference) {
            result = ekv_set_error(EKV_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
            goto done;
        }
        EKV_CUDA__TRY_EKV(ekv_reference_attention_cache(&work->baseline, work->data.q, heads,
                                                        work->softmax_scale, baseline_reference));
        EKV_CUDA__TRY_EKV(ekv_cuda__run_once(&baseline, &call, host_out, count, "baseline"));
        error = ekv_compare_f32(baseline_reference, host_out, count);
        if (!(error.rel_l2 <= baseline_tolerance)) {
            result = ekv_set_error(EKV_ERR_VALIDATION,
                                   "%s: the CUDA kernel on the baseline %s cache differs from the "
                                   "double reference: rel_l2 %.3e > %.1e",
                                   fn, ekv_dtype_name(work->baseline.dtype), error.rel_l2,
                                   baseline_tolerance);
            goto done;
        }
    }

    /* timing */
    if (config->use_graphs) {
        EKV_CUDA__TRY_EKV(ekv_cuda__timed_capture(&candidate, &call, config->inner_loops));
        if (config->paired_baseline)
            EKV_CUDA__TRY_EKV(ekv_cuda__timed_capture(&baseline, &call, config->inner_loops));
    }
    report->samples_ms = (double *)EKV_MALLOC((size_t)config->reps * sizeof(double));
    if (!report->samples_ms) {
        result = ekv_set_error(EKV_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
        goto done;
    }
    report->sample_count = (size_t)config->reps;
    if (config->paired_baseline) {
        report->baseline_samples_ms = (double *)EKV_MALLOC((size_t)config->reps * sizeof(double));
        if (!report->baseline_samples_ms) {
            result = ekv_set_error(EKV_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
            goto done;
        }
        report->baseline_sample_count = (size_t)config->reps;
        report->has_baseline = 1;
    }
    for (i = 0; i < (long long)config->warmup + config->reps; i++) {
        double ms = 0.0, baseline_ms = 0.0;
        /* ABAB: baseline then candidate in every pair, so drift hits both alike */
        if (config->paired_baseline)
            EKV_CUDA__TRY_EKV(ekv_cuda__timed_sample(&baseline, &call, i, config->inner_loops,
                                                     start, stop, &baseline_ms));
        EKV_CUDA__TRY_EKV(ekv_cuda__timed_sample(&candidate, &call, i, config->inner_loops, start,
                                                 stop, &ms));
        if (i >= config->warmup) {
            report->samples_ms[i - config->warmup] = ms;
            if (config->paired_baseline) report->baseline_samples_ms[i - config->warmup] = baseline_ms;
        }
    }

    for (b = 0; b < work->cache.batch; b++) kept += work->cache.lengths[b];
    report->kept_tokens_total = kept;
    report->splits = candidate.plan.splits;
    report->cache_copies = copies_candidate;
    report->cache_bytes = ekv_cache_bytes_of(work->cache.dtype, work->cache.batch,
                                             work->cache.kv_heads, work->cache.head_dim,
                                             work->cache.lengths, work->cache.bias != NULL);
    report->kv_cache_bytes_uncompressed = work->kv_cache_bytes_uncompressed;
    report->partial_bytes = ekv_cuda__partial_bytes(&work->cache, heads, candidate.plan.splits);
    report->peak_device_bytes = (double)copies_candidate * candidate_block +
                                (config->paired_baseline ? (double)copies_baseline * baseline_block
                                                         : 0.0) +
                                io_bytes + (double)workspace_bytes;
    result = ekv_report_finish(report);
done:
    if (start) (void)cudaEventDestroy(start);
    if (stop) (void)cudaEventDestroy(stop);
    if (call.stream) (void)cudaStreamDestroy(call.stream);
    ekv_cuda__timed_free(&candidate);
    ekv_cuda__timed_free(&baseline);
    if (device_q) (void)cudaFree(device_q);
    if (device_out) (void)cudaFree(device_out);
    if (workspace) (void)cudaFree(workspace);
    if (host_out) EKV_FREE(host_out);
    if (baseline_reference) EKV_FREE(baseline_reference);
    return result;
}

/* the elastic device cache and the inference cycle build on everything above */
#include "src/ekv_cuda_cache.inl"
#include "src/ekv_cuda_cycle.inl"

#endif /* EKV_CUDA_IMPLEMENTATION_DONE */
#endif /* EKV_IMPLEMENTATION */
