/* ekv_cuda.cuh - v0.1.0 - CUDA companion of ekv.h: device KV cache, decode attention kernels, timing, device info - MIT license

   Do this:
      #define EKV_IMPLEMENTATION
   before you include this file in *one* CUDA (.cu) file to create the implementation of
   both ekv.h and this header (it includes ekv.h itself). Every other file includes it
   without the define and gets declarations only.

       #define EKV_IMPLEMENTATION
       #include "ekv_cuda.cuh"

   Build: nvcc -O3 -o app app.cu -lcublas   (any -arch from sm_75; CUDA 11.8 or newer;
          cuBLAS serves the inference cycle's projections, in Part B only: with
          #define EKV_NO_BENCH the library part builds without -lcublas)

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
     Part A, the library
       >>errors       (implementation) CUDA error checks and the one launch helper
       >>kernels      (implementation) storage decoding, attention and merge kernels
       >>cache        ekv_cuda_cache: the device copy of an ekv_host_cache; device selection
       >>attention    the decode attention entry point, its plan and workspace
       >>elastic      the elastic device cache: create, prefill, append, compress
       >>abi          the GPU through ekv.h's C ABI (bindings: the Python module)
     Part B, the benchmark (left out by #define EKV_NO_BENCH, as in ekv.h)
       >>device       device info, theoretical and measured bandwidth
       >>run          the CUDA backend: validation, cold timing, paired baseline
       >>cycle        the inference cycle's device backend (cuBLAS projections)
       >>dispatch     the device side of ekv_run, and the C ABI's benchmark with it

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
    /* paged (ekv_cuda_cache_upload_paged; all 0 / NULL for a contiguous cache): rows are
       [pages][kv_heads][page_size] as ekv.h >>paged lays them out, read through the device
       copy of the block table; capacity = table_width x page_size */
    int page_size, page_shift, table_width, pages;
    int *block_table; /* device [batch][kv_heads][table_width]: ekv_page_block numbers, 0
                         where no page is held; table_width covers capacity +
                         EKV_CUDA__TABLE_PAD_TOKENS */
} ekv_cuda_cache;

/* Uploads `host` to the current device. On failure nothing stays allocated. */
EKV_CUDA_DEF ekv_result ekv_cuda_cache_upload(const ekv_host_cache *host, ekv_cuda_cache *cache);
/* Uploads a paged cache (ekv.h >>paged): its whole pool, block tables and lengths; the
   kernels read the rows through the table. The tensor-core kernel takes 16 tokens per step
   from one page, so where it runs (ekv_cuda_attention_kernel) page size 8 is
   EKV_ERR_UNSUPPORTED at attention time; 16, 32 and 64 run everywhere. */
EKV_CUDA_DEF ekv_result ekv_cuda_cache_upload_paged(const ekv_paged_cache *host, ekv_cuda_cache *cache);
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
/* Which kernel ekv_cuda_attention runs for this cache and head count on the current device
   (see KERNEL AT A GLANCE): tensor cores for every dtype but f32 on sm_80 and newer builds
   and devices (sm_89 for fp8), CUDA cores otherwise. */
typedef struct ekv_cuda_kernel_info {
    char name[64];      /* e.g. "ekv_cuda__attention_mma_kernel<int4, 128, 8>" (JSON build.kernel) */
    ekv_dtype dtype;
    int tensor_cores;   /* 1: mma.sync with f16 or bf16 fragments; 0: CUDA cores, f32 arithmetic */
    int heads_per_cta;  /* query heads of a GQA group one CTA serves (the tile) */
} ekv_cuda_kernel_info;
EKV_CUDA_DEF ekv_result ekv_cuda_attention_kernel(const ekv_cuda_cache *cache, int heads,
                                                  ekv_cuda_kernel_info *info);
/* The rel_l2 by which that kernel's output may differ from the double reference over the
   same stored cache, for sequences of up to `max_length` slots: f32 arithmetic on CUDA
   cores; per dtype on tensor cores, whose fragments round q, the weights and (int4) the
   dequantized K and V to f16 or bf16 (see the implementation and the README). */
EKV_CUDA_DEF double ekv_cuda_validation_tolerance(const ekv_cuda_kernel_info *kernel, int max_length);
/* Makes `device` current: EKV_ERR_NO_DEVICE when there is no usable device or driver,
   EKV_ERR_INVALID_ARG naming --device when the ordinal does not exist. */
EKV_CUDA_DEF ekv_result ekv_cuda_device_select(int device);
/* 1 when the kernels are compiled for this head dim. */
EKV_CUDA_DEF int ekv_cuda_supports_head_dim(int head_dim);

/* >>elastic: the elastic cache on the device - created
   empty, prefilled, grown one token per sequence and compressed in place by kernels that
   produce the same stored bytes as the CPU reference of ekv.h >>cacheops.


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

/* >>abi ==================================================================== */

/* The GPU through ekv.h's C ABI (see >>abi there): plain arguments, opaque handles. A
   binding finds these symbols only in a library built with CUDA. */

/* Makes `device` current and writes its name into name[size] (name may be NULL):
   EKV_ERR_NO_DEVICE, with the reason, when there is no usable GPU or driver. */
EKV_CUDA_DEF ekv_result ekv_cuda_abi_device(int device, char *name, size_t size);
/* Decode attention over an ABI cache on GPU `device`: uploads the stored cache and the
   data's q, runs ekv_cuda_attention with an automatic plan and copies out [B,H,D] back to
   the host. Head dims and dtypes as ekv_cuda_attention allows them. */
EKV_CUDA_DEF ekv_result ekv_cuda_abi_attention(const ekv_abi_cache *cache, int device, float *out);

#ifndef EKV_NO_BENCH
/* ======================== Part B: the benchmark ========================= */

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

/* >>cycle ================================================================== */


/* The cycle on the current CUDA device (config->device): checks the device and that the
   cycle's estimated bytes fit in its free memory (EKV_ERR_OUT_OF_MEMORY otherwise, before
   allocating), then fills `report` like ekv_cycle_run. */
EKV_CUDA_DEF ekv_result ekv_cuda_cycle_run(const ekv_config *config, ekv_report *report);
/* ekv_cycle_outputs on the device: every step's attention outputs, copied to the host
   array outputs [decode_tokens][layers][batch][heads][head_dim]. */
EKV_CUDA_DEF ekv_result ekv_cuda_cycle_outputs(const ekv_config *config, ekv_variant variant,
                                               float *outputs);

/* >>dispatch =============================================================== */

/* This build's device side for ekv.h's ekv_run (bench/main.cu and the C ABI's benchmark):
   ekv_cuda_run and ekv_cuda_cycle_run, of kind CUDA (EMULATOR in the emulator build). */
EKV_CUDA_DEF const ekv_device_backend *ekv_cuda_device_backend(void);
/* ekv_abi_bench_open (ekv.h >>abibench) with this device side: part of the C ABI. */
EKV_CUDA_DEF ekv_result ekv_cuda_abi_bench_open(int count, const char *const *args,
                                                ekv_abi_bench **bench);

#endif /* EKV_NO_BENCH */

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

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#ifndef EKV_NO_BENCH
#include <cublas_v2.h> /* Part B only: the inference cycle's projections */
#endif

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

/* Two attention kernels, chosen per (dtype, group, head dim, architecture) by
   ekv_cuda__choose (>>attention):
     ekv_cuda__attention_mma_kernel   tensor cores (mma.sync m16n8k16): every dtype but f32,
                                      every GQA group, sm_80 and newer (sm_89 for fp8)
     ekv_cuda__attention_kernel       CUDA cores: f32 (f32 accuracy), and every dtype on
                                      builds or devices without the tensor-core path
   and the log-sum-exp merge of split sequences, ekv_cuda__merge_kernel. Each kernel's
   comment states its thread mapping and what keeps it memory-bound; tests/sass_model.py
   checks that statement against the SASS. */

#define EKV_CUDA__WARPS 4
/* Tokens past a sequence's capacity that a kernel may look up (its loads there are
   predicated off): the device block table of a paged cache has entries for them (block 0,
   an address inside the pool), so a lookup needs no clamp. Each kernel asserts its reach. */
#define EKV_CUDA__TABLE_PAD_TOKENS 512
#define EKV_CUDA__THREADS (EKV_CUDA__WARPS * 32)
#define EKV_CUDA__MERGE_THREADS 128
/* Query heads the CUDA-core kernel holds in registers when the group is above 1: q and the
   accumulators of 4 heads (64 registers) leave room for the loads in flight within 128
   registers; larger groups take several tiles, each reading the KV rows again. */
#define EKV_CUDA__GROUP_TILE 4
/* Query heads per tensor-core tile: 8 (one n8 column block of mma) for groups up to 8,
   else 16; groups above 16 take several tiles. Above head dim EKV_CUDA__MMA_LARGE_MAX_DIM
   the 16-head tile's q and accumulators do not fit 128 registers even with head_dim split
   over the four warps: groups above 8 take 8-head tiles there (each reads the KV rows
   again, mostly from L2). */
#define EKV_CUDA__MMA_HEADS_SMALL 8
#define EKV_CUDA__MMA_HEADS_LARGE 16
#define EKV_CUDA__MMA_LARGE_MAX_DIM 128
/* The most (elements of head_dim) x (query heads) one warp of the tensor-core kernel
   covers: q takes span / 64 registers, the accumulators span / 32, and two steps of loads
   (double-buffered) 16 to 64 more; with 16-bit K and V a step of loads takes twice the
   registers of 8-bit ones, so half the span. Larger products split head_dim over up to
   EKV_CUDA__WARPS warps (ekv_cuda__mma_shape). */
#define EKV_CUDA__MMA_SPAN 1024
#define EKV_CUDA__MMA_SPAN_16BIT 512
#define EKV_CUDA__LOG2E 1.4426950408889634f
/* How far (base 2) a logit may pass the max its head's weights are taken against before
   the tensor-core kernel moves that max: weights up to 2^8 = 256 (f16 holds 65504). */
#define EKV_CUDA__MAX_SLACK 8.0f
/* Loops over registers must unroll fully or the arrays land in local memory; nvcc and
   clang take the pragma, a host compiler building the emulator unrolls them itself (and
   would warn about an unknown pragma). */
#if defined(__CUDACC__) || defined(__clang__)
#define EKV_CUDA__UNROLL _Pragma("unroll")
#else
#define EKV_CUDA__UNROLL
#endif
#define EKV_CUDA__FULL_MASK 0xffffffffu

/* The dispatch rule, in one place: the host's choice (ekv_cuda__choose, with the
   architecture the kernel was compiled for) and each kernel's own guard (with
   __CUDA_ARCH__) both ask it, so a kernel compiled empty for an architecture is one the
   host never launches there. Tensor cores serve every dtype but f32 from sm_80 (mma.sync
   m16n8k16 with f16 and bf16 inputs) - fp8 from sm_89, where cvt.rn.f16x2.e4m3x2 decodes
   it; f32 stays on CUDA cores, which keep f32 accuracy, and so does everything on older
   builds. `arch` is major x 100 + minor x 10, as __CUDA_ARCH__. */
static __host__ __device__ constexpr bool ekv_cuda__tensor_cores(int dtype, int arch)
{
    return dtype != EKV_DTYPE_F32 && arch >= (dtype == EKV_DTYPE_FP8 ? 890 : 800);
}

/* Everything one attention launch needs; passed by value (kernel parameter space). */
typedef struct ekv_cuda__attention_params {
    const unsigned char *k, *v, *k_scales, *v_scales;
    const float *bias;
    const int *lengths;
    const float *q;
    float *out;         /* final output when splits == 1                 */
    float *partial_acc; /* [batch * heads][splits][head_dim], splits > 1 */
    float *partial_ml;  /* [batch * heads][splits][2]: max (base 2), sum  */
    const int *block_table; /* paged cache: [batch][table_width]; NULL = contiguous */
    int heads, kv_heads, capacity, group, head_tiles, splits, tokens_per_split;
    int page_shift, table_width;
    float q_scale; /* softmax_scale * log2(e): logits come out in base 2 */
} ekv_cuda__attention_params;

typedef struct ekv_cuda__merge_params {
    const float *partial_acc, *partial_ml;
    float *out;
    int splits, head_dim;
} ekv_cuda__merge_params;

/* Where token t of one (sequence, kv head) lives: its row in k, v, the per-row scales and
   the pool bias. `head_index` is sequence x kv_heads + kv head. Every kernel turns tokens
   into addresses here and nowhere else, so that a paged cache (a block table per sequence)
   changes this function, not the kernels. The tensor-core kernel asks once per step of 16
   tokens and takes the step's other rows as the next 15 (a paged cache keeps that true
   with pages of a multiple of 16 tokens and steps aligned to them: splits are whole pages).
   PAGED is a template argument, so that the contiguous kernels compile exactly as before
   and the paged ones are their own instantiations (ekv_cuda__attention_paged_kernel,
   ekv_cuda__attention_mma_paged_kernel), each with its own row in the static model.
   Paged: one 4-byte read of the (sequence, kv head)'s table (L1-resident, shared by the
   lanes of a page) per row asked for, then ekv.h's ekv_page_block_row: the table holds
   block numbers, so no division and no kv head enter. Kernels ask for rows past the
   length too (their loads are predicated off): the table has entries up to
   EKV_CUDA__TABLE_PAD_TOKENS past the capacity, and every entry without a page holds
   block 0, so the address stays inside the pool without a clamp. */
template <bool PAGED>
static __device__ __forceinline__ size_t ekv_cuda__kv_row(const ekv_cuda__attention_params &p,
                                                          size_t head_index, size_t t)
{
    if (PAGED) {
        /* 32-bit: head_index < 2^31 (the launch grid), t < capacity + a step */
        const int block = __ldg(p.block_table + (unsigned)head_index * (unsigned)p.table_width +
                                ((unsigned)t >> p.page_shift));
        return ekv_page_block_row((unsigned)block, (unsigned)p.page_shift, (unsigned)t);
    }
    return head_index * (size_t)p.capacity + t;
}

/* 2^x with the hardware's approximation (ex2.approx.ftz: 2 ulp, results below 2^-126 flush
   to 0, which a softmax weight can afford); the emulator computes it exactly. */
static __device__ __forceinline__ float ekv_cuda__exp2(float x)
{
#ifdef __CUDA_ARCH__
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
#else
    return exp2f(x);
#endif
}

/* The weight of a softmax state whose running max is `logit` against a larger max `max`
   (base 2); an empty state (max -inf) weighs 0 instead of NaN. Every merge of two states
   (lanes, warps, splits) weighs them with this one rule. */
static __device__ __forceinline__ float ekv_cuda__weight(float logit, float max)
{
    return max == -INFINITY ? 0.0f : ekv_cuda__exp2(logit - max);
}

/* The max of a head over a tensor-core step's 16 tokens (a and b: tokens g and g + 8 of
   this lane; the other g are lanes xor 4, 8, 16) and its running max. */
static __device__ __forceinline__ float ekv_cuda__step_max(float a, float b, float running)
{
    float m = fmaxf(a, b);
    m = fmaxf(m, __shfl_xor_sync(EKV_CUDA__FULL_MASK, m, 4));
    m = fmaxf(m, __shfl_xor_sync(EKV_CUDA__FULL_MASK, m, 8));
    m = fmaxf(m, __shfl_xor_sync(EKV_CUDA__FULL_MASK, m, 16));
    return fmaxf(running, m);
}

/* The end of every attention kernel: `states` partial softmax states per query head of the
   tile (running max in base 2, sum of weights, weighted sum of V over head_dim), in shared
   memory, merged into the output row of each head (or into the split's partials, which
   ekv_cuda__merge_kernel merges). `v_scale` is fp8's per-head V scale (1 otherwise). */
template <int HEAD_DIM, int HEADS, int STATES>
static __device__ void ekv_cuda__finish(const ekv_cuda__attention_params &p,
                                        float (*acc)[HEADS][HEAD_DIM], float (*max)[HEADS],
                                        float (*sum)[HEADS],
                                        int b, int split, int first_head, int tile_heads,
                                        float v_scale)
{
    for (int i = (int)threadIdx.x; i < tile_heads * HEAD_DIM; i += EKV_CUDA__THREADS) {
        const int h = i / HEAD_DIM, d = i % HEAD_DIM;
        const size_t out_row = (size_t)b * (size_t)p.heads + (size_t)(first_head + h);
        float m = -INFINITY, total = 0.0f, value = 0.0f;
        int s;
        for (s = 0; s < STATES; s++) m = fmaxf(m, max[s][h]);
        for (s = 0; s < STATES; s++) {
            const float weight = ekv_cuda__weight(max[s][h], m);
            total += weight * sum[s][h];
            value += weight * acc[s][h][d];
        }
        value *= v_scale;
        if (p.splits == 1) {
            p.out[out_row * HEAD_DIM + d] = total > 0.0f ? value / total : 0.0f;
        } else {
            /* an empty split writes only (max, sum 0): the merge skips its acc */
            const size_t partial = out_row * (size_t)p.splits + (size_t)split;
            if (total > 0.0f) p.partial_acc[partial * HEAD_DIM + d] = value;
            if (d == 0) {
                p.partial_ml[partial * 2] = m;
                p.partial_ml[partial * 2 + 1] = total;
            }
        }
    }
}

/* ---- the CUDA-core kernel ------------------------------------------------ */

/* Eight stored elements of one row, as loaded by one lane, plus the per-row scale data
   they need. Each storage type provides load() of its chunk and decode() of its 8 stored
   numbers to floats; the scale and zero point are applied once per dot product (logit =
   scale x q.x + zero x sum(q)) and once per weight (acc += (weight x scale) x, plus
   weight x zero once), not per element. Integers become floats by the magic-number trick
   (the integer in a float's mantissa under a fixed exponent, then one subtraction), which
   keeps int-to-float conversions off the 16-per-clock conversion pipe. fp8's per-head
   scale is folded into q (K) and the output (V). */
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

/* 2^23 as a float: an integer n < 2^23 OR-ed into its mantissa reads as 2^23 + n. */
#define EKV_CUDA__MAGIC_BITS 0x4B000000u
#define EKV_CUDA__MAGIC 8388608.0f

template <int DTYPE> struct ekv_cuda__storage;

/* bits: per element; in_flight: tokens each thread loads before it computes, so that
   about 128 bytes of K and V per thread are in flight whatever the element size;
   in_flight_grouped: the same when the CTA holds EKV_CUDA__GROUP_TILE query heads, whose q
   and accumulators take 64 registers: two steps keep the loads within 128 registers.
   scaled: decode() gives integers that scale() and zero() turn into values. */
template <> struct ekv_cuda__storage<EKV_DTYPE_F32> {
    typedef ekv_cuda__f32_chunk chunk;
    enum { bits = 32, in_flight = 2, in_flight_grouped = 2, scaled = 0 };
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
    static __device__ __forceinline__ float scale(const chunk &) { return 1.0f; }
    static __device__ __forceinline__ float zero(const chunk &) { return 0.0f; }
};

template <> struct ekv_cuda__storage<EKV_DTYPE_F16> {
    typedef uint4 chunk;
    enum { bits = 16, in_flight = 4, in_flight_grouped = 2, scaled = 0 };
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
    static __device__ __forceinline__ float scale(const chunk &) { return 1.0f; }
    static __device__ __forceinline__ float zero(const chunk &) { return 0.0f; }
};

/* bf16 is the top half of an f32: widening is a shift. */
template <> struct ekv_cuda__storage<EKV_DTYPE_BF16> {
    typedef uint4 chunk;
    enum { bits = 16, in_flight = 4, in_flight_grouped = 2, scaled = 0 };
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
    static __device__ __forceinline__ float scale(const chunk &) { return 1.0f; }
    static __device__ __forceinline__ float zero(const chunk &) { return 0.0f; }
};

/* int8: one f32 scale per row; x = q x scale. decode() gives q: the byte with its sign bit
   flipped (q + 128, 0..255) placed under the magic exponent, minus 2^23 + 128. */
template <> struct ekv_cuda__storage<EKV_DTYPE_INT8> {
    typedef ekv_cuda__int8_chunk chunk;
    enum { bits = 8, in_flight = 8, in_flight_grouped = 2, scaled = 1 };
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
        const unsigned int low = c.values.x ^ 0x80808080u, high = c.values.y ^ 0x80808080u;
        /* byte i of the word into byte 0 of the magic float */
        x[0] = __uint_as_float(__byte_perm(low, EKV_CUDA__MAGIC_BITS, 0x7650u)) - (EKV_CUDA__MAGIC + 128.0f);
        x[1] = __uint_as_float(__byte_perm(low, EKV_CUDA__MAGIC_BITS, 0x7651u)) - (EKV_CUDA__MAGIC + 128.0f);
        x[2] = __uint_as_float(__byte_perm(low, EKV_CUDA__MAGIC_BITS, 0x7652u)) - (EKV_CUDA__MAGIC + 128.0f);
        x[3] = __uint_as_float(__byte_perm(low, EKV_CUDA__MAGIC_BITS, 0x7653u)) - (EKV_CUDA__MAGIC + 128.0f);
        x[4] = __uint_as_float(__byte_perm(high, EKV_CUDA__MAGIC_BITS, 0x7650u)) - (EKV_CUDA__MAGIC + 128.0f);
        x[5] = __uint_as_float(__byte_perm(high, EKV_CUDA__MAGIC_BITS, 0x7651u)) - (EKV_CUDA__MAGIC + 128.0f);
        x[6] = __uint_as_float(__byte_perm(high, EKV_CUDA__MAGIC_BITS, 0x7652u)) - (EKV_CUDA__MAGIC + 128.0f);
        x[7] = __uint_as_float(__byte_perm(high, EKV_CUDA__MAGIC_BITS, 0x7653u)) - (EKV_CUDA__MAGIC + 128.0f);
    }
    static __device__ __forceinline__ float scale(const chunk &c) { return c.scale; }
    static __device__ __forceinline__ float zero(const chunk &) { return 0.0f; }
};

/* int4: per group of 32 elements an f16 (scale, zero) pair; low nibble = even element;
   x = q x scale + zero. decode() gives q: nibble i masked in place under the magic exponent
   reads as 2^23 + q x 16^i (i < 5; the upper three come from the word shifted by 12), so
   element i comes out times 16^i and q carries 16^-i (see ekv_cuda__int4_weights). */
template <> struct ekv_cuda__storage<EKV_DTYPE_INT4> {
    typedef ekv_cuda__int4_chunk chunk;
    enum { bits = 4, in_flight = 8, in_flight_grouped = 2, scaled = 1 };
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
        const unsigned int w = c.values, up = c.values >> 12;
        x[0] = __uint_as_float((w & 0xfu) | EKV_CUDA__MAGIC_BITS) - EKV_CUDA__MAGIC;
        x[1] = __uint_as_float((w & 0xf0u) | EKV_CUDA__MAGIC_BITS) - EKV_CUDA__MAGIC;
        x[2] = __uint_as_float((w & 0xf00u) | EKV_CUDA__MAGIC_BITS) - EKV_CUDA__MAGIC;
        x[3] = __uint_as_float((w & 0xf000u) | EKV_CUDA__MAGIC_BITS) - EKV_CUDA__MAGIC;
        x[4] = __uint_as_float((w & 0xf0000u) | EKV_CUDA__MAGIC_BITS) - EKV_CUDA__MAGIC;
        x[5] = __uint_as_float((up & 0xf00u) | EKV_CUDA__MAGIC_BITS) - EKV_CUDA__MAGIC;
        x[6] = __uint_as_float((up & 0xf000u) | EKV_CUDA__MAGIC_BITS) - EKV_CUDA__MAGIC;
        x[7] = __uint_as_float((up & 0xf0000u) | EKV_CUDA__MAGIC_BITS) - EKV_CUDA__MAGIC;
    }
    static __device__ __forceinline__ float scale(const chunk &c) { return ekv_cuda__f16_low(c.scale_zero); }
    static __device__ __forceinline__ float zero(const chunk &c) { return ekv_cuda__f16_high(c.scale_zero); }
};

/* What decode() multiplies element e by (int4: 16^(e mod 5) for e < 5, 16^(e - 3) for the
   shifted three); the kernel divides q and the V accumulators by it, exactly (powers of 2). */
template <int DTYPE>
static __device__ __forceinline__ float ekv_cuda__decode_factor(int e)
{
    if (DTYPE != EKV_DTYPE_INT4) return 1.0f;
    return (float)(1 << (4 * (e < 5 ? e : e - 3)));
}

/* fp8 e4m3 without the sm_89 conversion instruction, branch-free: the code's exponent and
   mantissa shifted into an f32's fields (bias 127 instead of 7, so x 2^120 puts it right;
   a subnormal code lands on an f32 subnormal and scales the same way), the sign OR-ed on,
   S.1111.111 selected to NaN. The per-head scale is applied outside (see above). */
static __device__ __forceinline__ float ekv_cuda__fp8_to_float(unsigned int byte)
{
    const float magnitude = __uint_as_float((byte & 0x7fu) << 20) * 1.329227995784916e36f; /* 2^120 */
    const float value = __uint_as_float(__float_as_uint(magnitude) | ((byte & 0x80u) << 24));
    return (byte & 0x7fu) == 0x7fu ? __uint_as_float(0x7fc00000u) : value;
}

template <> struct ekv_cuda__storage<EKV_DTYPE_FP8> {
    typedef uint2 chunk;
    enum { bits = 8, in_flight = 8, in_flight_grouped = 2, scaled = 0 };
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
    static __device__ __forceinline__ float scale(const chunk &) { return 1.0f; }
    static __device__ __forceinline__ float zero(const chunk &) { return 0.0f; }
};

/* Decode attention on CUDA cores for one (sequence, kv head, group tile, split).

   Mapping: lane / (HEAD_DIM/8) picks a token of the warp's step, lane % (HEAD_DIM/8) the 8
   elements of the row it owns (one 16-byte load for f16 and bf16, two for f32, 8 bytes for
   int8 and fp8, 4 for int4, plus the row's scale word). Each lane owns q and the
   accumulators of those 8 elements for every head of the tile (GROUP_TILE 1 or
   EKV_CUDA__GROUP_TILE), and a running (max, sum) per head for the tokens it saw.
   Per iteration a warp issues the loads of in_flight steps of rows before any use, then
   consumes them in sub-steps: partial dot products, a butterfly over the lanes of a row,
   one max update and rescale per sub-step, p x V into the accumulators. Warps merge
   through shared memory (ekv_cuda__finish).
   Memory-bound while: the loads of an iteration are all issued before the first is used
   (8 KB in flight per warp for f16), at most 128 registers (4 CTAs, 16 warps per SM), and
   the iteration issues at most about 4 instructions per KV byte it reads (H200: 18 bytes
   per clock per SM at 4 instructions per clock) - true for tile 1 of every dtype and for
   f32 tiles; the 16-bit and quantized GQA tiles are for GPUs and builds without the
   tensor-core kernel, where they compile (elsewhere they are empty: see
   ekv_cuda__tensor_cores). */
template <int DTYPE, int HEAD_DIM, int GROUP_TILE, bool PAGED>
static __device__ __forceinline__ void ekv_cuda__attention_body(ekv_cuda__attention_params p)
{
#if defined(__CUDA_ARCH__)
    if (ekv_cuda__tensor_cores(DTYPE, __CUDA_ARCH__)) return; /* never launched here */
#endif
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
    static_assert(CTA_STEP + 16 <= EKV_CUDA__TABLE_PAD_TOKENS, "a paged lookup may pass the table");
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
    const unsigned char *k_values = p.k + (size_t)part * CHUNK_BYTES;
    const unsigned char *v_values = p.v + (size_t)part * CHUNK_BYTES;
    /* int4 scale pairs are per (row, group of 32): index them as rows of the pair array */
    const int pairs_per_row = HEAD_DIM / 32, pair = part / 4;
    float k_head_scale = 1.0f, v_head_scale = 1.0f;
    float q[GROUP_TILE][8], q_sum[GROUP_TILE], acc[GROUP_TILE][8], zero_acc[GROUP_TILE];
    float running_max[GROUP_TILE], running_sum[GROUP_TILE];
    int g, e, u, t0;

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
        /* the zero point's share of a logit: zero x the sum of this lane's q */
        q_sum[g] = 0.0f;
EKV_CUDA__UNROLL
        for (e = 0; e < 8; e++) {
            q_sum[g] += q[g][e];
            q[g][e] /= ekv_cuda__decode_factor<DTYPE>(e);
        }
        running_max[g] = -INFINITY;
        running_sum[g] = 0.0f;
        zero_acc[g] = 0.0f;
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
            const size_t row = ekv_cuda__kv_row<PAGED>(p, head_index, (size_t)t);
            const size_t scale_row = DTYPE == EKV_DTYPE_INT4 ? row * pairs_per_row + pair : row;
            k_chunk[u] = storage::load(k_values + row * ROW_BYTES, p.k_scales, scale_row, valid);
            v_chunk[u] = storage::load(v_values + row * ROW_BYTES, p.v_scales, scale_row, valid);
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
                    if (DTYPE == EKV_DTYPE_INT4)
                        dot = fmaf(storage::zero(k_chunk[s0 + u]), q_sum[g], dot * storage::scale(k_chunk[s0 + u]));
                    else if (storage::scaled)
                        dot *= storage::scale(k_chunk[s0 + u]);
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
                if (DTYPE == EKV_DTYPE_INT4) zero_acc[g] *= correction;
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
                    const float scaled = storage::scaled ? weight * storage::scale(v_chunk[s0 + u]) : weight;
                    running_sum[g] += weight;
                    if (DTYPE == EKV_DTYPE_INT4)
                        zero_acc[g] = fmaf(weight, storage::zero(v_chunk[s0 + u]), zero_acc[g]);
EKV_CUDA__UNROLL
                    for (e = 0; e < 8; e++) acc[g][e] = fmaf(scaled, v[e], acc[g][e]);
                }
            }
        }
    }
    if (DTYPE == EKV_DTYPE_INT4)
EKV_CUDA__UNROLL
        for (g = 0; g < GROUP_TILE; g++)
EKV_CUDA__UNROLL
            for (e = 0; e < 8; e++) acc[g][e] = acc[g][e] / ekv_cuda__decode_factor<DTYPE>(e) + zero_acc[g];

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
    ekv_cuda__finish<HEAD_DIM, GROUP_TILE, EKV_CUDA__WARPS>(p, shared_acc, shared_max, shared_sum, b,
                                                             split, first_head, tile_heads, v_head_scale);
}

/* ---- the tensor-core kernel ---------------------------------------------- */

/* The one wrapper of each warp-level matrix instruction the kernel uses; the emulator
   implements both to the PTX ISA's fragment layouts (tests/emu/include/ekv_emu_warp_mma.h,
   tested in tests/test_mma_emu.cpp).

   d += a b for one m16n8k16 tile: a 16 x 16 (4 registers of 2 elements), b 16 x 8 (2
   registers), d 16 x 8 in f32; elements f16, or bf16 when BF16. */
template <int BF16>
static __device__ __forceinline__ void ekv_cuda__mma(float d[4], const unsigned a[4], const unsigned b[2])
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    if (BF16)
        asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
            "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    else
        asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
            "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#elif defined(EKV_EMULATOR_ACTIVE)
    ekv_emu_mma_m16n8k16(BF16, d, a, b, d);
#else
    (void)d, (void)a, (void)b; /* older architectures: the kernel is empty there */
#endif
}

/* The transpose of an 8 x 8 matrix of 16-bit elements held as the accumulator holds a row
   block: lane l has row l / 4, columns 2 (l % 4) and 2 (l % 4) + 1. */
static __device__ __forceinline__ unsigned ekv_cuda__transpose_8x8(unsigned x)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    unsigned y;
    asm("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;" : "=r"(y) : "r"(x));
    return y;
#elif defined(EKV_EMULATOR_ACTIVE)
    return ekv_emu_movmatrix_m8n8_trans_b16(x);
#else
    return x; /* older architectures: the kernel is empty there */
#endif
}

/* Two floats as the f16x2 (or bf16x2) register of an mma fragment, rounded to nearest. */
template <int BF16>
static __device__ __forceinline__ unsigned ekv_cuda__pack(float low, float high)
{
    if (BF16)
        return (unsigned)__bfloat16_as_ushort(__float2bfloat16_rn(low)) |
               ((unsigned)__bfloat16_as_ushort(__float2bfloat16_rn(high)) << 16);
    return (unsigned)__half_as_ushort(__float2half_rn(low)) |
           ((unsigned)__half_as_ushort(__float2half_rn(high)) << 16);
}

template <int BF16>
static __device__ __forceinline__ float ekv_cuda__unpack(unsigned w, int high)
{
    const unsigned short bits = (unsigned short)(high ? w >> 16 : w & 0xffffu);
    return BF16 ? __uint_as_float((unsigned)bits << 16) : __half2float(__ushort_as_half(bits));
}

static __device__ __forceinline__ __half2 ekv_cuda__h2(unsigned w)
{
    __half2 h;
    memcpy(&h, &w, sizeof h);
    return h;
}

static __device__ __forceinline__ unsigned ekv_cuda__bits(__half2 h)
{
    unsigned w;
    memcpy(&w, &h, sizeof w);
    return w;
}

/* (x & MASK) | BITS in one LOP3: written as C, the compiler folds both constants into
   immediates, which takes two LOP3 (one immediate each). */
template <unsigned MASK, unsigned BITS>
static __device__ __forceinline__ unsigned ekv_cuda__mask_or(unsigned x)
{
#ifdef __CUDA_ARCH__
    unsigned r;
    asm("lop3.b32 %0, %1, %2, %3, 0xea;" : "=r"(r) : "r"(x), "n"(MASK), "r"(BITS));
    return r;
#else
    return (x & MASK) | BITS;
#endif
}

/* int4 to f16 without conversion instructions (the 0x6400 trick): nibbles masked into the
   mantissa under exponent 2^10 (bits 0-3) or 2^6 (bits 4-7) read as 1024 + n or 64 + n, so
   one exact subtraction and one fused multiply-add give n x scale + zero, rounded once. `x`
   holds four elements per 16-bit half, in bits 0-3, 4-7, 8-11, 12-15; out[0] and out[1]
   get elements 2 `upper` and 2 `upper` + 1 of both halves. */
static __device__ __forceinline__ void ekv_cuda__int4_to_h2(unsigned x, int upper, __half2 scale,
                                                            __half2 zero, unsigned out[2])
{
    const __half2 low_bias = ekv_cuda__h2(0x64006400u), high_bias = ekv_cuda__h2(0x54005400u);
    const unsigned y = upper ? x >> 8 : x;
    out[0] = ekv_cuda__bits(__hfma2(__hsub2(ekv_cuda__h2(ekv_cuda__mask_or<0x000f000fu, 0x64006400u>(y)), low_bias), scale, zero));
    out[1] = ekv_cuda__bits(__hfma2(__hsub2(ekv_cuda__h2(ekv_cuda__mask_or<0x00f000f0u, 0x54005400u>(y)), high_bias), scale, zero));
}

/* int8 to f16, exactly: the byte with its sign bit flipped (q + 128) as the low byte under
   the high byte 0x64 (exponent 2^10) reads as 1152 + q; one subtraction. out[0] gets bytes
   0 and 1 of `x` (low and high half), out[1] bytes 2 and 3. */
static __device__ __forceinline__ void ekv_cuda__int8_to_h2(unsigned x, unsigned out[2])
{
    const __half2 bias = ekv_cuda__h2(0x64806480u); /* 1152 */
    const unsigned flipped = x ^ 0x80808080u;
    out[0] = ekv_cuda__bits(__hsub2(ekv_cuda__h2(__byte_perm(flipped, 0x64646464u, 0x4140u)), bias));
    out[1] = ekv_cuda__bits(__hsub2(ekv_cuda__h2(__byte_perm(flipped, 0x64646464u, 0x4342u)), bias));
}

/* Two e4m3 bytes to f16x2 with sm_89's conversion instruction (exact). */
static __device__ __forceinline__ unsigned ekv_cuda__fp8x2_to_h2(unsigned two)
{
    const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(two & 0xffffu), __NV_E4M3);
    return (unsigned)h.x | ((unsigned)h.y << 16);
}

/* What the tensor-core kernel needs of each dtype.
   k(): K chunk of one row -> the two A-fragment registers of k16 block j (registers 2j and
   2j + 1 of the chunk), each holding two elements, element(2j + r, 0) and (2j + r, 1) of
   the chunk; q is laid out the same way. The chunk is `words` (elements x bits / 32)
   32-bit words; s holds int4's (scale, zero) word of each group of 32 it spans.
   v(): V chunks of two rows (tokens) -> elements 2i and 2i + 1 of m16 block i, each
   register holding that element of both rows (the pair of tokens the mma's k dimension
   pairs up); sa, sb: int4's (scale, zero) words of the two rows.
   Producing a block's registers right before its mma keeps few of them alive.
   bf16: the fragments are bf16 (else f16). q_parts, p_parts: bf16's 8-bit mantissa would
   round q and the softmax weights to 2^-9, so they go in as a sum of two bf16 parts (two
   mma each); f16 rounds them to 2^-12, which the stated tolerance allows.
   row_scale: int8's one f32 scale per row, applied to the logit after QK and to the weight
   before PV (through the log of the scale, so the weights stay within f16's range), never
   per element. group_scale: int4's f16 (scale, zero) per group of 32, applied per element
   in f16 (the zero point rules out a scale after the product). */
template <int DTYPE> struct ekv_cuda__fragments;

template <> struct ekv_cuda__fragments<EKV_DTYPE_F16> {
    enum { bits = 16, bf16 = 0, q_parts = 1, p_parts = 1, row_scale = 0, group_scale = 0 };
    static __device__ __forceinline__ int element(int i, int h) { return 2 * i + h; }
    static __device__ __forceinline__ void k(const unsigned *w, const unsigned *, int j, unsigned f[2])
    {
        f[0] = w[2 * j];
        f[1] = w[2 * j + 1];
    }
    static __device__ __forceinline__ void v(const unsigned *a, const unsigned *b, unsigned, unsigned,
                                             int i, unsigned f[2])
    {
        f[0] = __byte_perm(a[i], b[i], 0x5410u);
        f[1] = __byte_perm(a[i], b[i], 0x7632u);
    }
};

template <> struct ekv_cuda__fragments<EKV_DTYPE_BF16> : ekv_cuda__fragments<EKV_DTYPE_F16> {
    enum { bits = 16, bf16 = 1, q_parts = 2, p_parts = 2, row_scale = 0, group_scale = 0 };
};

template <> struct ekv_cuda__fragments<EKV_DTYPE_INT8> {
    enum { bits = 8, bf16 = 0, q_parts = 1, p_parts = 1, row_scale = 1, group_scale = 0 };
    static __device__ __forceinline__ int element(int i, int h) { return 2 * i + h; }
    static __device__ __forceinline__ void k(const unsigned *w, const unsigned *, int j, unsigned f[2])
    {
        ekv_cuda__int8_to_h2(w[j], f);
    }
    static __device__ __forceinline__ void v(const unsigned *a, const unsigned *b, unsigned, unsigned,
                                             int i, unsigned f[2])
    {
        /* bytes 2(i mod 2) and 2(i mod 2) + 1 of word i / 2, interleaved: a b a b */
        ekv_cuda__int8_to_h2(__byte_perm(a[i / 2], b[i / 2], i % 2 ? 0x7362u : 0x5140u), f);
    }
};

template <> struct ekv_cuda__fragments<EKV_DTYPE_INT4> {
    enum { bits = 4, bf16 = 0, q_parts = 1, p_parts = 1, row_scale = 0, group_scale = 1 };
    /* register 4w + m holds elements 8w + m and 8w + m + 4 (ekv_cuda__int4_to_h2) */
    static __device__ __forceinline__ int element(int i, int h) { return 8 * (i / 4) + i % 4 + 4 * h; }
    static __device__ __forceinline__ void k(const unsigned *w, const unsigned *s, int j, unsigned f[2])
    {
        const unsigned sz = s[j / 8]; /* 32 elements: 16 registers, 8 blocks of 2 */
        ekv_cuda__int4_to_h2(w[j / 2], j % 2, ekv_cuda__h2(__byte_perm(sz, 0u, 0x1010u)),
                             ekv_cuda__h2(__byte_perm(sz, 0u, 0x3232u)), f);
    }
    static __device__ __forceinline__ void v(const unsigned *a, const unsigned *b, unsigned sa,
                                             unsigned sb, int i, unsigned f[2])
    {
        /* elements 2i, 2i + 1: of word i / 4, nibbles 2(i mod 4) and + 1 of both rows */
        const unsigned x = __byte_perm(a[i / 4], b[i / 4], i % 4 < 2 ? 0x5410u : 0x7632u);
        ekv_cuda__int4_to_h2(x, i % 2, ekv_cuda__h2(__byte_perm(sa, sb, 0x5410u)),
                             ekv_cuda__h2(__byte_perm(sa, sb, 0x7632u)), f);
    }
};

template <> struct ekv_cuda__fragments<EKV_DTYPE_FP8> {
    enum { bits = 8, bf16 = 0, q_parts = 1, p_parts = 1, row_scale = 0, group_scale = 0 };
    static __device__ __forceinline__ int element(int i, int h) { return 2 * i + h; }
    static __device__ __forceinline__ void k(const unsigned *w, const unsigned *, int j, unsigned f[2])
    {
        f[0] = ekv_cuda__fp8x2_to_h2(w[j]);
        f[1] = ekv_cuda__fp8x2_to_h2(w[j] >> 16);
    }
    static __device__ __forceinline__ void v(const unsigned *a, const unsigned *b, unsigned, unsigned,
                                             int i, unsigned f[2])
    {
        const unsigned x = __byte_perm(a[i / 2], b[i / 2], i % 2 ? 0x7362u : 0x5140u);
        f[0] = ekv_cuda__fp8x2_to_h2(x);
        f[1] = ekv_cuda__fp8x2_to_h2(x >> 16);
    }
};

/* `WORDS` 32-bit words from `src` with the widest loads its alignment allows (the chunk
   offsets are multiples of its size), or zeros when !valid (a row past the end: its logit
   is -inf and its weight 0, which must not meet a NaN). */
template <int WORDS>
static __device__ __forceinline__ void ekv_cuda__load_words(const unsigned char *src, bool valid,
                                                            unsigned *w)
{
    if (WORDS % 4 == 0) {
EKV_CUDA__UNROLL
        for (int i = 0; i < WORDS; i += 4) {
            const uint4 x = valid ? __ldg(reinterpret_cast<const uint4 *>(src) + i / 4) : make_uint4(0u, 0u, 0u, 0u);
            w[i] = x.x;
            w[i + 1] = x.y;
            w[i + 2] = x.z;
            w[i + 3] = x.w;
        }
    } else if (WORDS % 2 == 0) {
EKV_CUDA__UNROLL
        for (int i = 0; i < WORDS; i += 2) {
            const uint2 x = valid ? __ldg(reinterpret_cast<const uint2 *>(src) + i / 2) : make_uint2(0u, 0u);
            w[i] = x.x;
            w[i + 1] = x.y;
        }
    } else {
EKV_CUDA__UNROLL
        for (int i = 0; i < WORDS; i++) w[i] = valid ? __ldg(reinterpret_cast<const unsigned *>(src) + i) : 0u;
    }
}

/* The shape of one tensor-core kernel: SLICES warps share a step of 16 tokens, each owning
   HEAD_DIM / SLICES elements of head_dim (its K chunk is a quarter of that per thread, its
   V chunk an eighth), so that q, the accumulators and a step of loads fit 128 registers;
   the CTA's four warps hold STREAMS = 4 / SLICES steps at a time. */
template <int DTYPE, int HEAD_DIM, int HEADS>
struct ekv_cuda__mma_shape {
    enum {
        SPAN = ekv_cuda__fragments<DTYPE>::bits == 16 ? EKV_CUDA__MMA_SPAN_16BIT : EKV_CUDA__MMA_SPAN,
        SLICES = HEAD_DIM * HEADS <= SPAN ? 1
                 : HEAD_DIM * HEADS / SPAN < EKV_CUDA__WARPS ? HEAD_DIM * HEADS / SPAN : EKV_CUDA__WARPS,
        WIDTH = HEAD_DIM / SLICES,
        STREAMS = EKV_CUDA__WARPS / SLICES,
        K_ELEMENTS = WIDTH / 4,
        V_ELEMENTS = WIDTH / 8,
        K_WORDS = K_ELEMENTS * ekv_cuda__fragments<DTYPE>::bits / 32,
        V_WORDS = V_ELEMENTS * ekv_cuda__fragments<DTYPE>::bits / 32,
        /* int4 (scale, zero) words of a K chunk: one per group of 32 it spans */
        K_GROUPS = K_ELEMENTS > 32 ? K_ELEMENTS / 32 : 1,
        K_TILES = WIDTH / 16, /* k16 blocks of QK over the warp's width */
        M_TILES = WIDTH / 16, /* m16 blocks of PV */
        N_TILES = HEADS / 8,
        ROW_BYTES = HEAD_DIM * ekv_cuda__fragments<DTYPE>::bits / 8,
        CTA_STEP = 16 * STREAMS
    };
};

/* One step's loads of one thread: K rows t0 + g and t0 + g + 8 (its chunk c), V rows
   t0 + 2c, 2c + 1, 2c + 8, 2c + 9 (its chunk g), their scale words (int8: both scales of
   the K rows), and the pool bias of the K rows. */
template <int DTYPE, int HEAD_DIM, int HEADS>
struct ekv_cuda__mma_step {
    typedef ekv_cuda__mma_shape<DTYPE, HEAD_DIM, HEADS> shape;
    unsigned k[2][shape::K_WORDS], v[4][shape::V_WORDS];
    unsigned k_scale[2][shape::K_GROUPS], v_scale[4];
    float bias[2]; /* the pool bias (natural log), 0 without one or past the end */
};

/* One thread's loads of the step starting at token t0 (see ekv_cuda__mma_step), in two
   halves that the kernel issues as soon as the previous step has used the registers: K
   (with its scales and the bias) after QK, V after PV. A row past the end loads nothing
   and reads as zeros. `first` is t0 as a size_t, computed so that the compiler sees it
   grow by a constant per step and advances the addresses instead of recomputing them;
   k_first, v_first: the thread's K and V chunks (first element of head_dim). */
template <int DTYPE, int HEAD_DIM, int HEADS, bool PAGED>
static __device__ __forceinline__ void ekv_cuda__mma_load_k(const ekv_cuda__attention_params &p,
                                                            size_t head_index, size_t first, int t0,
                                                            int end, int k_first,
                                                            ekv_cuda__mma_step<DTYPE, HEAD_DIM, HEADS> &s)
{
    typedef ekv_cuda__fragments<DTYPE> frag;
    typedef ekv_cuda__mma_shape<DTYPE, HEAD_DIM, HEADS> shape;
    const int g = ((int)threadIdx.x % 32) / 4;
    const size_t row = ekv_cuda__kv_row<PAGED>(p, head_index, first) + (size_t)g; /* token t0 + g */
    const unsigned *k_groups = reinterpret_cast<const unsigned *>(p.k_scales) + row * (HEAD_DIM / 32) + k_first / 32;
    const unsigned char *k_values = p.k + row * shape::ROW_BYTES + (size_t)k_first * frag::bits / 8;
    int r, j;
EKV_CUDA__UNROLL
    for (r = 0; r < 2; r++) {
        const bool valid = t0 + g + 8 * r < end;
        ekv_cuda__load_words<shape::K_WORDS>(k_values + 8 * r * shape::ROW_BYTES, valid, s.k[r]);
        if (frag::group_scale)
EKV_CUDA__UNROLL
            for (j = 0; j < shape::K_GROUPS; j++)
                s.k_scale[r][j] = valid ? __ldg(k_groups + 8 * r * (HEAD_DIM / 32) + j) : 0u;
        /* raw: an instruction on it here would wait for the load */
        s.bias[r] = valid && p.bias ? __ldg(p.bias + row + 8 * r) : 0.0f;
    }
}

template <int DTYPE, int HEAD_DIM, int HEADS, bool PAGED>
static __device__ __forceinline__ void ekv_cuda__mma_load_v(const ekv_cuda__attention_params &p,
                                                            size_t head_index, size_t first, int t0,
                                                            int end, int v_first,
                                                            ekv_cuda__mma_step<DTYPE, HEAD_DIM, HEADS> &s)
{
    typedef ekv_cuda__fragments<DTYPE> frag;
    typedef ekv_cuda__mma_shape<DTYPE, HEAD_DIM, HEADS> shape;
    const int c = (int)threadIdx.x % 4, g = ((int)threadIdx.x % 32) / 4;
    const size_t row = ekv_cuda__kv_row<PAGED>(p, head_index, first) + (size_t)(2 * c); /* token t0 + 2c */
    const unsigned *v_groups = reinterpret_cast<const unsigned *>(p.v_scales) + row * (HEAD_DIM / 32) + v_first / 32;
    const unsigned char *v_values = p.v + row * shape::ROW_BYTES + (size_t)v_first * frag::bits / 8;
    int r;
    if (frag::row_scale) {
        /* int8: the K and V scales of the K rows t0 + g, t0 + g + 8 (PV's weights carry
           V's): used by the softmax, after QK, so they travel with the V half */
        const size_t k_row = row - (size_t)(2 * c) + (size_t)g;
EKV_CUDA__UNROLL
        for (r = 0; r < 2; r++) {
            const bool valid = t0 + g + 8 * r < end;
            s.k_scale[r][0] = valid ? __ldg(reinterpret_cast<const unsigned *>(p.k_scales) + k_row + 8 * r) : 0u;
            s.v_scale[r] = valid ? __ldg(reinterpret_cast<const unsigned *>(p.v_scales) + k_row + 8 * r) : 0u;
        }
    }
EKV_CUDA__UNROLL
    for (r = 0; r < 4; r++) {
        const int offset = (r & 1) + 8 * (r >> 1); /* tokens 2c, 2c + 1, 2c + 8, 2c + 9 */
        const bool valid = t0 + 2 * c + offset < end;
        ekv_cuda__load_words<shape::V_WORDS>(v_values + offset * shape::ROW_BYTES, valid, s.v[r]);
        if (frag::group_scale) s.v_scale[r] = valid ? __ldg(v_groups + offset * (HEAD_DIM / 32)) : 0u;
    }
}

/* Decode attention on tensor cores for one (sequence, kv head, head tile of HEADS query
   heads, split).

   Mapping: lane = 4 g + c (g = groupID, c = threadID_in_group of the PTX fragment
   layouts). A warp takes 16 tokens per step, as m16 of QK (S^T = K q^T: tokens x heads)
   and k16 of PV (O^T += V^T P^T: head_dim x heads), with the query heads as the n8
   dimension (one n8 block per 8 heads: a group of 2 to 8 pays for 8 columns, 9 to 16 for
   16, the KV rows are read once either way). K enters as the A fragment straight from its
   rows: thread (g, c) loads K chunk c of tokens g and g + 8 and dequantizes it in registers
   (the order of head_dim inside a chunk is the dtype's, q is laid out to match, and a dot
   product does not care). V enters as the A fragment of V^T: thread (g, c) loads V chunk g
   of tokens 2c, 2c + 1, 2c + 8, 2c + 9 and pairs the tokens' elements (byte permutes).
   The softmax works on the S^T accumulator (thread: tokens g, g + 8 x heads 2c, 2c + 1),
   max over the tokens by three shuffles, and the weights become PV's B fragment by one
   movmatrix transpose per 8 tokens. Each thread owns the O^T accumulators of rows
   (elements) g and g + 8 of each m16 block for heads 2c, 2c + 1 - the heads whose running
   max it holds, so rescaling needs no exchange. With SLICES > 1 the warps of a step split
   head_dim: each adds its partial S^T into shared memory (one barrier per step) and owns
   its part of O^T. Streams and heads merge through ekv_cuda__finish.
   Memory-bound while: the next step's loads are issued before this step's are used
   (register double-buffering: 2 to 8 KB per warp in flight), at most 128 registers (16
   warps per SM), and per KV byte at most about 4 issued instructions, 2 FP32/FP16 and 1
   integer/logic instruction, and 2048 FMA per 33 bytes on the tensor pipe (H200 at 90%:
   16.5 bytes per clock per SM). tests/sass_model.py checks each against the SASS. */
template <int DTYPE, int HEAD_DIM, int HEADS, bool PAGED>
static __device__ __forceinline__ void ekv_cuda__attention_mma_body(ekv_cuda__attention_params p)
{
#if defined(__CUDA_ARCH__)
    if (!ekv_cuda__tensor_cores(DTYPE, __CUDA_ARCH__)) return; /* never launched here */
#endif
    typedef ekv_cuda__fragments<DTYPE> frag;
    typedef ekv_cuda__mma_shape<DTYPE, HEAD_DIM, HEADS> shape;
    typedef ekv_cuda__mma_step<DTYPE, HEAD_DIM, HEADS> step;
    enum {
        SLICES = shape::SLICES, WIDTH = shape::WIDTH, STREAMS = shape::STREAMS,
        K_ELEMENTS = shape::K_ELEMENTS, V_ELEMENTS = shape::V_ELEMENTS,
        K_WORDS = shape::K_WORDS, V_WORDS = shape::V_WORDS, K_GROUPS = shape::K_GROUPS,
        K_TILES = shape::K_TILES, M_TILES = shape::M_TILES, N_TILES = shape::N_TILES,
        ROW_BYTES = shape::ROW_BYTES, CTA_STEP = shape::CTA_STEP,
        EXCHANGE = SLICES > 1 ? 2 : 1 /* partial S^T, by step parity */
    };
    static_assert(CTA_STEP + 16 <= EKV_CUDA__TABLE_PAD_TOKENS, "a paged lookup may pass the table");
    __shared__ float shared_acc[STREAMS][HEADS][HEAD_DIM];
    __shared__ float shared_max[STREAMS][HEADS];
    __shared__ float shared_sum[STREAMS][HEADS];
    __shared__ float4 shared_s[EXCHANGE][EKV_CUDA__WARPS][N_TILES][32];

    const int warp = (int)threadIdx.x / 32, lane = (int)threadIdx.x % 32;
    const int g = lane / 4, c = lane % 4;
    const int slice = warp % SLICES, stream = warp / SLICES;
    const int b = (int)blockIdx.z, split = (int)blockIdx.x;
    const int kv_head = (int)blockIdx.y / p.head_tiles;
    const int tile = (int)blockIdx.y - kv_head * p.head_tiles;
    const int first_head = kv_head * p.group + tile * HEADS;
    const int tile_heads = min(HEADS, p.group - tile * HEADS);
    const int length = max(0, min(p.lengths[b], p.capacity));
    const int begin = split * p.tokens_per_split;
    const int end = min(length, begin + p.tokens_per_split);
    const int trips = end > begin ? (end - begin + CTA_STEP - 1) / CTA_STEP : 0;
    const size_t head_index = (size_t)b * (size_t)p.kv_heads + (size_t)kv_head;
    /* this warp's part of head_dim; thread c's K chunk and thread g's V chunk in it */
    const int k_first = slice * WIDTH + c * K_ELEMENTS, v_first = slice * WIDTH + g * V_ELEMENTS;
    const size_t first = (size_t)(begin + stream * 16); /* the first step's first token */
    float k_head_scale = 1.0f, v_head_scale = 1.0f;
    /* q as QK's B fragments, one uint2 (the two registers) per lane: each thread reads
       back only what it wrote, and registers stay free for the loads in flight */
    __shared__ uint2 shared_q[EKV_CUDA__WARPS][N_TILES][K_TILES][frag::q_parts][32];
    /* reference: the max a head's weights are taken against (-FLT_MAX, finite, until its
       first token: any logit passes it, and -inf - reference stays -inf); int8: the same
       for PV's logits, logit + log2(V scale) */
    float o[N_TILES][M_TILES][4], reference[N_TILES][2], running_sum[N_TILES][2];
    float weight_reference[N_TILES][2];
    step cur;
    int n, i, j, h, r, it;


    if (DTYPE == EKV_DTYPE_FP8) {
        k_head_scale = __ldg(reinterpret_cast<const float *>(p.k_scales) + head_index);
        v_head_scale = __ldg(reinterpret_cast<const float *>(p.v_scales) + head_index);
    }
    /* q as QK's B fragment (k = head_dim, n = heads): register r of k16 block j of thread
       (g, c) holds head 8n + g at the chunk elements the K fragment's register 2j + r holds */
EKV_CUDA__UNROLL
    for (n = 0; n < N_TILES; n++) {
        const int head = 8 * n + g;
        const float *src = p.q + ((size_t)b * (size_t)p.heads + (size_t)(first_head + head)) * HEAD_DIM + k_first;
EKV_CUDA__UNROLL
        for (j = 0; j < K_TILES; j++) {
            unsigned part[2][frag::q_parts];
EKV_CUDA__UNROLL
            for (r = 0; r < 2; r++) {
                const float x0 = head < tile_heads ? __ldg(src + frag::element(2 * j + r, 0)) : 0.0f;
                const float x1 = head < tile_heads ? __ldg(src + frag::element(2 * j + r, 1)) : 0.0f;
                part[r][0] = ekv_cuda__pack<frag::bf16>(x0, x1);
                if (frag::q_parts == 2)
                    part[r][frag::q_parts - 1] = ekv_cuda__pack<frag::bf16>(
                        x0 - ekv_cuda__unpack<frag::bf16>(part[r][0], 0),
                        x1 - ekv_cuda__unpack<frag::bf16>(part[r][0], 1));
            }
EKV_CUDA__UNROLL
            for (r = 0; r < frag::q_parts; r++) shared_q[warp][n][j][r][lane] = make_uint2(part[0][r], part[1][r]);
        }
EKV_CUDA__UNROLL
        for (h = 0; h < 2; h++) {
            reference[n][h] = -FLT_MAX;
            weight_reference[n][h] = -FLT_MAX;
            running_sum[n][h] = 0.0f;
        }
EKV_CUDA__UNROLL
        for (i = 0; i < M_TILES; i++)
EKV_CUDA__UNROLL
            for (r = 0; r < 4; r++) o[n][i][r] = 0.0f;
    }

    ekv_cuda__mma_load_k<DTYPE, HEAD_DIM, HEADS, PAGED>(p, head_index, first, begin + stream * 16, end, k_first, cur);
    ekv_cuda__mma_load_v<DTYPE, HEAD_DIM, HEADS, PAGED>(p, head_index, first, begin + stream * 16, end, v_first, cur);
    /* Software-pipelined by halves: the next step's K loads go out as soon as QK has used
       this step's K registers, its V loads as soon as PV has used V's, so one step of
       loads is always in flight behind the work and the registers hold one step. */
    for (it = 0; it < trips; it++) {
        const int t0 = begin + it * CTA_STEP + stream * 16;
        float s[N_TILES][4], scale[2], bias[2], v_log_scale[2];
        unsigned weights[N_TILES][2][frag::p_parts];

        /* S^T = K q^T over this warp's part of head_dim */
EKV_CUDA__UNROLL
        for (n = 0; n < N_TILES; n++)
EKV_CUDA__UNROLL
            for (r = 0; r < 4; r++) s[n][r] = 0.0f;
EKV_CUDA__UNROLL
        for (j = 0; j < K_TILES; j++) {
            unsigned row0[2], row1[2];
            frag::k(cur.k[0], cur.k_scale[0], j, row0);
            frag::k(cur.k[1], cur.k_scale[1], j, row1);
            {
                const unsigned a[4] = {row0[0], row1[0], row0[1], row1[1]};
EKV_CUDA__UNROLL
                for (n = 0; n < N_TILES; n++)
EKV_CUDA__UNROLL
                    for (r = 0; r < frag::q_parts; r++) {
                        const uint2 pair = shared_q[warp][n][j][r][lane];
                        const unsigned bq[2] = {pair.x, pair.y};
                        ekv_cuda__mma<frag::bf16>(s[n], a, bq);
                    }
            }
        }
        if (SLICES > 1) {
            /* the warps of this step add their parts: pairs first, then the two pairs, so
               that every warp gets the same bits (a + b = b + a exactly) from its own
               registers and its partners' float4s */
            const int parity = it & 1, base = stream * SLICES;
EKV_CUDA__UNROLL
            for (n = 0; n < N_TILES; n++)
                shared_s[parity][warp][n][lane] = make_float4(s[n][0], s[n][1], s[n][2], s[n][3]);
            __syncthreads();
EKV_CUDA__UNROLL
            for (n = 0; n < N_TILES; n++) {
                const float4 pair = shared_s[parity][base + (slice ^ 1)][n][lane];
                float sum[4] = {s[n][0] + pair.x, s[n][1] + pair.y, s[n][2] + pair.z, s[n][3] + pair.w};
                if (SLICES == 4) {
                    const float4 a = shared_s[parity][base + (slice ^ 2)][n][lane];
                    const float4 b = shared_s[parity][base + (slice ^ 3)][n][lane];
                    sum[0] += a.x + b.x;
                    sum[1] += a.y + b.y;
                    sum[2] += a.z + b.z;
                    sum[3] += a.w + b.w;
                }
EKV_CUDA__UNROLL
                for (r = 0; r < 4; r++) s[n][r] = sum[r];
            }
        }

        /* logits in base 2: S^T x scale (int8: the row's scale; fp8: the head's) + bias;
           -inf past the end. Then the K half of the step is free for the next step. */
EKV_CUDA__UNROLL
        for (r = 0; r < 2; r++) {
            scale[r] = p.q_scale * (frag::row_scale ? __uint_as_float(cur.k_scale[r][0]) : k_head_scale);
            bias[r] = t0 + g + 8 * r < end ? cur.bias[r] * EKV_CUDA__LOG2E : -INFINITY;
            v_log_scale[r] = frag::row_scale ? __log2f(__uint_as_float(cur.v_scale[r])) : 0.0f;
        }
        ekv_cuda__mma_load_k<DTYPE, HEAD_DIM, HEADS, PAGED>(p, head_index, first + (size_t)(it + 1) * CTA_STEP,
                                                     t0 + CTA_STEP, end, k_first, cur);
EKV_CUDA__UNROLL
        for (n = 0; n < N_TILES; n++)
EKV_CUDA__UNROLL
            for (r = 0; r < 4; r++) s[n][r] = fmaf(s[n][r], scale[r / 2], bias[r / 2]);

        /* Online softmax per head: (s[n][h], s[n][2 + h]) are tokens g and g + 8 of head
           2c + h. A head's reference max moves only when a logit passes it by more than
           EKV_CUDA__MAX_SLACK (base 2), so weights stay below 2^slack (f16 holds them); in
           every other step - nearly all of a long sequence - one warp vote stands in for
           the max over the step's tokens and the rescale of the accumulators. int8's PV
           weights carry the V row's scale, as 2^(logit + log2 scale) under their own
           reference max, so they stay within f16's range whatever the scales. */
        {
            bool grow = false;
EKV_CUDA__UNROLL
            for (n = 0; n < N_TILES; n++)
EKV_CUDA__UNROLL
                for (h = 0; h < 2; h++) {
                    grow |= fmaxf(s[n][h], s[n][2 + h]) > reference[n][h] + EKV_CUDA__MAX_SLACK;
                    if (frag::row_scale)
                        grow |= fmaxf(s[n][h] + v_log_scale[0], s[n][2 + h] + v_log_scale[1]) >
                                weight_reference[n][h] + EKV_CUDA__MAX_SLACK;
                }
            if (__any_sync(EKV_CUDA__FULL_MASK, grow)) {
EKV_CUDA__UNROLL
                for (n = 0; n < N_TILES; n++)
EKV_CUDA__UNROLL
                    for (h = 0; h < 2; h++) {
                        float next = ekv_cuda__step_max(s[n][h], s[n][2 + h], reference[n][h]);
                        float correction = ekv_cuda__exp2(reference[n][h] - next);
                        running_sum[n][h] *= correction;
                        reference[n][h] = next;
                        if (frag::row_scale) {
                            next = ekv_cuda__step_max(s[n][h] + v_log_scale[0], s[n][2 + h] + v_log_scale[1],
                                                      weight_reference[n][h]);
                            correction = ekv_cuda__exp2(weight_reference[n][h] - next);
                            weight_reference[n][h] = next;
                        }
EKV_CUDA__UNROLL
                        for (i = 0; i < M_TILES; i++) {
                            o[n][i][h] *= correction;
                            o[n][i][2 + h] *= correction;
                        }
                    }
            }
            for (n = 0; n < N_TILES; n++) {
                float weight[2][2];
EKV_CUDA__UNROLL
                for (h = 0; h < 2; h++) {
                    weight[0][h] = ekv_cuda__exp2(s[n][h] - reference[n][h]);
                    weight[1][h] = ekv_cuda__exp2(s[n][2 + h] - reference[n][h]);
                    running_sum[n][h] += weight[0][h] + weight[1][h];
                    if (frag::row_scale) {
                        weight[0][h] = ekv_cuda__exp2(s[n][h] + v_log_scale[0] - weight_reference[n][h]);
                        weight[1][h] = ekv_cuda__exp2(s[n][2 + h] + v_log_scale[1] - weight_reference[n][h]);
                    }
                }
                /* tokens g, g + 8 x heads 2c, 2c + 1 -> PV's B fragment: tokens 2c, 2c + 1 (and
                   + 8) x head g */
EKV_CUDA__UNROLL
                for (r = 0; r < 2; r++) {
                    const unsigned high = ekv_cuda__pack<frag::bf16>(weight[r][0], weight[r][1]);
                    weights[n][r][0] = ekv_cuda__transpose_8x8(high);
                    if (frag::p_parts == 2)
                        weights[n][r][frag::p_parts - 1] = ekv_cuda__transpose_8x8(ekv_cuda__pack<frag::bf16>(
                            weight[r][0] - ekv_cuda__unpack<frag::bf16>(high, 0),
                            weight[r][1] - ekv_cuda__unpack<frag::bf16>(high, 1)));
                }
            }
        }

        /* O^T += V^T P^T over this warp's part of head_dim */
EKV_CUDA__UNROLL
        for (i = 0; i < M_TILES; i++) {
            unsigned low[2], high[2]; /* tokens 2c, 2c + 1 and 2c + 8, 2c + 9 */
            frag::v(cur.v[0], cur.v[1], cur.v_scale[0], cur.v_scale[1], i, low);
            frag::v(cur.v[2], cur.v[3], cur.v_scale[2], cur.v_scale[3], i, high);
            {
                const unsigned a[4] = {low[0], low[1], high[0], high[1]};
EKV_CUDA__UNROLL
                for (n = 0; n < N_TILES; n++)
EKV_CUDA__UNROLL
                    for (r = 0; r < frag::p_parts; r++) {
                        const unsigned bp[2] = {weights[n][0][r], weights[n][1][r]};
                        ekv_cuda__mma<frag::bf16>(o[n][i], a, bp);
                    }
            }
        }
        ekv_cuda__mma_load_v<DTYPE, HEAD_DIM, HEADS, PAGED>(p, head_index, first + (size_t)(it + 1) * CTA_STEP,
                                                     t0 + CTA_STEP, end, v_first, cur);
    }
    /* sums over the token rows g; O^T needs none (the mma summed the tokens) */
EKV_CUDA__UNROLL
    for (n = 0; n < N_TILES; n++)
EKV_CUDA__UNROLL
        for (h = 0; h < 2; h++) {
            float factor = 1.0f;
            running_sum[n][h] += __shfl_xor_sync(EKV_CUDA__FULL_MASK, running_sum[n][h], 4);
            running_sum[n][h] += __shfl_xor_sync(EKV_CUDA__FULL_MASK, running_sum[n][h], 8);
            running_sum[n][h] += __shfl_xor_sync(EKV_CUDA__FULL_MASK, running_sum[n][h], 16);
            /* int8: O^T is in units of 2^weight_reference, the sum in units of 2^reference
               (both -FLT_MAX for a head without tokens, whose O^T is 0) */
            if (frag::row_scale) factor = ekv_cuda__exp2(weight_reference[n][h] - reference[n][h]);
EKV_CUDA__UNROLL
            for (i = 0; i < M_TILES; i++) {
                const int d = v_first + 2 * i;
                shared_acc[stream][8 * n + 2 * c + h][d] = o[n][i][h] * factor;
                shared_acc[stream][8 * n + 2 * c + h][d + 1] = o[n][i][2 + h] * factor;
            }
            if (slice == 0 && g == 0) {
                shared_max[stream][8 * n + 2 * c + h] = reference[n][h];
                shared_sum[stream][8 * n + 2 * c + h] = running_sum[n][h];
            }
        }
    __syncthreads();
    ekv_cuda__finish<HEAD_DIM, HEADS, STREAMS>(p, shared_acc, shared_max, shared_sum, b, split,
                                                first_head, tile_heads, v_head_scale);
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

/* The attention kernels: the bodies above over a contiguous cache, and over a paged one
   (rows through the block table; see ekv_cuda__kv_row). The parameters stay in kernel
   parameter space; the bodies are inlined into each. */
template <int DTYPE, int HEAD_DIM, int GROUP_TILE>
__global__ void __launch_bounds__(EKV_CUDA__THREADS, 4)
    ekv_cuda__attention_kernel(ekv_cuda__attention_params p)
{
    ekv_cuda__attention_body<DTYPE, HEAD_DIM, GROUP_TILE, false>(p);
}

template <int DTYPE, int HEAD_DIM, int GROUP_TILE>
__global__ void __launch_bounds__(EKV_CUDA__THREADS, 4)
    ekv_cuda__attention_paged_kernel(ekv_cuda__attention_params p)
{
    ekv_cuda__attention_body<DTYPE, HEAD_DIM, GROUP_TILE, true>(p);
}

template <int DTYPE, int HEAD_DIM, int HEADS>
__global__ void __launch_bounds__(EKV_CUDA__THREADS, 4)
    ekv_cuda__attention_mma_kernel(ekv_cuda__attention_params p)
{
    ekv_cuda__attention_mma_body<DTYPE, HEAD_DIM, HEADS, false>(p);
}

template <int DTYPE, int HEAD_DIM, int HEADS>
__global__ void __launch_bounds__(EKV_CUDA__THREADS, 4)
    ekv_cuda__attention_mma_paged_kernel(ekv_cuda__attention_params p)
{
    ekv_cuda__attention_mma_body<DTYPE, HEAD_DIM, HEADS, true>(p);
}

typedef void (*ekv_cuda__attention_fn)(ekv_cuda__attention_params);

/* The paged tensor-core kernel of a shape, or NULL for the two shapes whose table lookup
   spills at 128 registers (int4 at head dim 128 with 8 heads: the dispatcher takes the
   16-head tile; fp8 at head dim 256: not served paged). Not instantiated, so not built. */
template <int DTYPE, int HEAD_DIM, int HEADS> struct ekv_cuda__mma_paged {
    static ekv_cuda__attention_fn get() { return ekv_cuda__attention_mma_paged_kernel<DTYPE, HEAD_DIM, HEADS>; }
};
template <> struct ekv_cuda__mma_paged<EKV_DTYPE_INT4, 128, EKV_CUDA__MMA_HEADS_SMALL> {
    static ekv_cuda__attention_fn get() { return NULL; }
};
template <> struct ekv_cuda__mma_paged<EKV_DTYPE_FP8, 256, EKV_CUDA__MMA_HEADS_SMALL> {
    static ekv_cuda__attention_fn get() { return NULL; }
};

/* The kernels for (dtype, head dim, tile), the whole compile-time cost of this header:
   CUDA cores 6 dtypes x 3 head dims x (tile 1, EKV_CUDA__GROUP_TILE), tensor cores 5
   dtypes x 3 head dims x (8, 16 heads). On each architecture ekv_cuda__tensor_cores leaves
   one of the two paths of a dtype empty, so each build compiles the loops of one. */
template <int DTYPE>
static ekv_cuda__attention_fn ekv_cuda__cuda_core_kernel(int head_dim, int tile, int paged)
{
    enum { T = EKV_CUDA__GROUP_TILE };
    switch (head_dim) {
    case 64:
        if (paged) return tile == 1 ? ekv_cuda__attention_paged_kernel<DTYPE, 64, 1>
                                    : ekv_cuda__attention_paged_kernel<DTYPE, 64, T>;
        return tile == 1 ? ekv_cuda__attention_kernel<DTYPE, 64, 1>
                         : ekv_cuda__attention_kernel<DTYPE, 64, T>;
    case 128:
        if (paged) return tile == 1 ? ekv_cuda__attention_paged_kernel<DTYPE, 128, 1>
                                    : ekv_cuda__attention_paged_kernel<DTYPE, 128, T>;
        return tile == 1 ? ekv_cuda__attention_kernel<DTYPE, 128, 1>
                         : ekv_cuda__attention_kernel<DTYPE, 128, T>;
    case 256:
        if (paged) return tile == 1 ? ekv_cuda__attention_paged_kernel<DTYPE, 256, 1>
                                    : ekv_cuda__attention_paged_kernel<DTYPE, 256, T>;
        return tile == 1 ? ekv_cuda__attention_kernel<DTYPE, 256, 1>
                         : ekv_cuda__attention_kernel<DTYPE, 256, T>;
    default:
        return NULL;
    }
}

template <int DTYPE>
static ekv_cuda__attention_fn ekv_cuda__mma_kernel(int head_dim, int heads, int paged)
{
    enum { SMALL = EKV_CUDA__MMA_HEADS_SMALL, LARGE = EKV_CUDA__MMA_HEADS_LARGE };
    const int small = heads == SMALL;
    switch (head_dim) {
    case 64:
        if (paged) return small ? ekv_cuda__mma_paged<DTYPE, 64, SMALL>::get()
                                : ekv_cuda__mma_paged<DTYPE, 64, LARGE>::get();
        return small ? ekv_cuda__attention_mma_kernel<DTYPE, 64, SMALL>
                     : ekv_cuda__attention_mma_kernel<DTYPE, 64, LARGE>;
    case 128:
        if (paged) return small ? ekv_cuda__mma_paged<DTYPE, 128, SMALL>::get()
                                : ekv_cuda__mma_paged<DTYPE, 128, LARGE>::get();
        return small ? ekv_cuda__attention_mma_kernel<DTYPE, 128, SMALL>
                     : ekv_cuda__attention_mma_kernel<DTYPE, 128, LARGE>;
    case 256:
        if (!small) return NULL;
        return paged ? ekv_cuda__mma_paged<DTYPE, 256, SMALL>::get()
                     : ekv_cuda__attention_mma_kernel<DTYPE, 256, SMALL>;
    default:
        return NULL;
    }
}

/* (path, dtype, head dim, tile, paged) -> kernel; NULL for a head dim without kernels (and f32 on
   tensor cores). */
static ekv_cuda__attention_fn ekv_cuda__kernel_for(int tensor_cores, ekv_dtype dtype, int head_dim, int tile,
                                                   int paged)
{
    if (tensor_cores) {
        switch (dtype) {
        case EKV_DTYPE_F16: return ekv_cuda__mma_kernel<EKV_DTYPE_F16>(head_dim, tile, paged);
        case EKV_DTYPE_BF16: return ekv_cuda__mma_kernel<EKV_DTYPE_BF16>(head_dim, tile, paged);
        case EKV_DTYPE_INT8: return ekv_cuda__mma_kernel<EKV_DTYPE_INT8>(head_dim, tile, paged);
        case EKV_DTYPE_INT4: return ekv_cuda__mma_kernel<EKV_DTYPE_INT4>(head_dim, tile, paged);
        case EKV_DTYPE_FP8: return ekv_cuda__mma_kernel<EKV_DTYPE_FP8>(head_dim, tile, paged);
        default: return NULL;
        }
    }
    switch (dtype) {
    case EKV_DTYPE_F32: return ekv_cuda__cuda_core_kernel<EKV_DTYPE_F32>(head_dim, tile, paged);
    case EKV_DTYPE_F16: return ekv_cuda__cuda_core_kernel<EKV_DTYPE_F16>(head_dim, tile, paged);
    case EKV_DTYPE_BF16: return ekv_cuda__cuda_core_kernel<EKV_DTYPE_BF16>(head_dim, tile, paged);
    case EKV_DTYPE_INT8: return ekv_cuda__cuda_core_kernel<EKV_DTYPE_INT8>(head_dim, tile, paged);
    case EKV_DTYPE_INT4: return ekv_cuda__cuda_core_kernel<EKV_DTYPE_INT4>(head_dim, tile, paged);
    case EKV_DTYPE_FP8: return ekv_cuda__cuda_core_kernel<EKV_DTYPE_FP8>(head_dim, tile, paged);
    default: return NULL;
    }
}

/* >>cache: device selection (implementation) =============================== */

EKV_CUDA_DEF ekv_result ekv_cuda_device_select(int device)
{
    int device_count = 0;
    cudaError_t err = cudaGetDeviceCount(&device_count);
    if (err != cudaSuccess || device_count == 0) {
        (void)cudaGetLastError();
        if (err == cudaErrorInsufficientDriver)
            return ekv_set_error(EKV_ERR_NO_DEVICE,
                                 "no usable CUDA driver: none is installed, or it is older than "
                                 "this program's CUDA runtime (%d.%d)", CUDART_VERSION / 1000,
                                 CUDART_VERSION % 1000 / 10);
        if (err != cudaSuccess && err != cudaErrorNoDevice)
            return ekv_set_error(EKV_ERR_NO_DEVICE, "no usable CUDA device: %s (%s)",
                                 cudaGetErrorName(err), cudaGetErrorString(err));
        return ekv_set_error(EKV_ERR_NO_DEVICE, "no CUDA device found");
    }
    if (device < 0 || device >= device_count)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "--device=%d: allowed 0..%d (%d CUDA device%s)",
                             device, device_count - 1, device_count, device_count == 1 ? "" : "s");
    return EKV_CUDA__CHECK(cudaSetDevice(device));
}

/* >>cache (implementation) ================================================= */

/* Byte sizes of the buffers of a cache (the block table only when paged); each starts
   256-byte aligned in the block. */
typedef struct ekv_cuda__layout {
    size_t values, scales, bias, lengths, table;
    size_t k_offset, v_offset, k_scales_offset, v_scales_offset, bias_offset, lengths_offset,
        table_offset;
    size_t total;
} ekv_cuda__layout;

static size_t ekv_cuda__align(size_t n)
{
    return (n + 255u) & ~(size_t)255u;
}

/* `rows` rows of every array (contiguous: batch x kv_heads x capacity; paged: pages x
   kv_heads x page_size), scales as each cache keeps them, a block table of `table_entries`. */
static ekv_cuda__layout ekv_cuda__layout_rows(ekv_dtype dtype, size_t rows, size_t scales, int batch,
                                              int head_dim, int has_bias, size_t table_entries)
{
    ekv_cuda__layout l;
    memset(&l, 0, sizeof l);
    l.values = rows * ekv_dtype_row_bytes(dtype, head_dim);
    l.scales = scales;
    l.bias = has_bias ? rows * sizeof(float) : 0;
    l.lengths = (size_t)batch * sizeof(int);
    l.table = table_entries * sizeof(int);
    l.k_offset = 0;
    l.v_offset = l.k_offset + ekv_cuda__align(l.values);
    l.k_scales_offset = l.v_offset + ekv_cuda__align(l.values);
    l.v_scales_offset = l.k_scales_offset + ekv_cuda__align(l.scales);
    l.bias_offset = l.v_scales_offset + ekv_cuda__align(l.scales);
    l.lengths_offset = l.bias_offset + ekv_cuda__align(l.bias);
    l.table_offset = l.lengths_offset + ekv_cuda__align(l.lengths);
    l.total = l.table_offset + ekv_cuda__align(l.table);
    return l;
}

static ekv_cuda__layout ekv_cuda__layout_of(ekv_dtype dtype, int batch, int kv_heads, int head_dim,
                                            int capacity, int has_bias)
{
    return ekv_cuda__layout_rows(dtype, (size_t)batch * (size_t)kv_heads * (size_t)capacity,
                                 ekv_cache_scales_bytes(dtype, batch, kv_heads, head_dim, capacity),
                                 batch, head_dim, has_bias, 0);
}

/* A paged cache's per-row scales are per pool row; fp8's stay per (sequence, kv head). */
static ekv_cuda__layout ekv_cuda__layout_paged(ekv_dtype dtype, int batch, int kv_heads, int head_dim,
                                               int pages, int page_size, int table_width,
                                               int has_bias)
{
    const size_t rows = (size_t)pages * (size_t)kv_heads * (size_t)page_size;
    const ekv_dtype_traits *t = ekv_dtype_info(dtype);
    const size_t scales = t && t->head_scale_bytes
                              ? (size_t)batch * (size_t)kv_heads * (size_t)t->head_scale_bytes
                              : rows * ekv_dtype_row_scale_bytes(dtype, head_dim);
    return ekv_cuda__layout_rows(dtype, rows, scales, batch, head_dim, has_bias,
                                 (size_t)batch * (size_t)kv_heads * (size_t)table_width);
}

static ekv_cuda__layout ekv_cuda__layout_of_cache(const ekv_cuda_cache *c)
{
    if (c->block_table)
        return ekv_cuda__layout_paged(c->dtype, c->batch, c->kv_heads, c->head_dim, c->pages,
                                      c->page_size, c->table_width, c->bias != NULL);
    return ekv_cuda__layout_of(c->dtype, c->batch, c->kv_heads, c->head_dim, c->capacity,
                               c->bias != NULL);
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
    c->block_table = l->table ? (int *)(void *)(base + l->table_offset) : NULL;
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
    if (!ekv_dtype_info(h->dtype) || h->batch < 1 || h->kv_heads < 1 ||
        h->head_dim < 1 || h->capacity < 1)
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "ekv_cuda_cache_upload: bad cache (dtype %d, batch %d, kv_heads %d, "
                             "head_dim %d, capacity %d)",
                             (int)h->dtype, h->batch, h->kv_heads, h->head_dim, h->capacity);
    if (ekv_cache_scales_bytes(h->dtype, 1, 1, h->head_dim, 1) && (!h->k_scales || !h->v_scales))
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

EKV_CUDA_DEF ekv_result ekv_cuda_cache_upload_paged(const ekv_paged_cache *host, ekv_cuda_cache *cache)
{
    const char *fn = "ekv_cuda_cache_upload_paged";
    ekv_cuda__layout l;
    ekv_result result = EKV_SUCCESS;
    int *blocks = NULL, b, h, i;
    memset(cache, 0, sizeof *cache);
    if ((result = ekv_paged_check(host)) != EKV_SUCCESS) return result;
    if (ekv_cache_scales_bytes(host->dtype, 1, 1, host->head_dim, 1) && (!host->k_scales || !host->v_scales))
        return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: %s cache without scales", fn,
                             ekv_dtype_name(host->dtype));
    l = ekv_cuda__layout_paged(host->dtype, host->batch, host->kv_heads, host->head_dim, host->pages,
                               host->page_size,
                               host->table_width + EKV_CUDA__TABLE_PAD_TOKENS / host->page_size,
                               host->bias != NULL);
    cache->dtype = host->dtype;
    cache->batch = host->batch;
    cache->kv_heads = host->kv_heads;
    cache->head_dim = host->head_dim;
    cache->capacity = host->table_width * host->page_size;
    cache->page_size = host->page_size;
    cache->page_shift = host->page_shift;
    cache->table_width = host->table_width + EKV_CUDA__TABLE_PAD_TOKENS / host->page_size;
    cache->pages = host->pages;
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
    /* the table per (sequence, kv head), of block numbers (ekv_page_block) */
    blocks = (int *)EKV_MALLOC(l.table);
    if (!blocks) {
        result = ekv_set_error(EKV_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
        goto done;
    }
    for (b = 0; b < host->batch; b++)
        for (h = 0; h < host->kv_heads; h++)
            for (i = 0; i < cache->table_width; i++) {
                const int page = i < host->table_width
                                     ? host->block_table[(size_t)b * (size_t)host->table_width + (size_t)i]
                                     : -1;
                blocks[((size_t)b * (size_t)host->kv_heads + (size_t)h) * (size_t)cache->table_width +
                       (size_t)i] =
                    page < 0 ? 0 : (int)ekv_page_block((unsigned)page, (unsigned)host->kv_heads, (unsigned)h);
            }
    EKV_CUDA__TRY(cudaMemcpy(cache->block_table, blocks, l.table, cudaMemcpyHostToDevice));
done:
    EKV_FREE(blocks);
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
    l = ekv_cuda__layout_of_cache(src);
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
    if (!ekv_dtype_info(c->dtype))
        return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: cache dtype %d is not an ekv_dtype: allowed %s",
                             fn, (int)c->dtype, ekv_dtype_allowed());
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
    return EKV_SUCCESS;
}

/* A dtype's oldest architecture (ekv_dtype_traits.min_sm): fp8 needs sm_89+ at run time,
   as earlier GPUs have no e4m3 in their software stack, and the benchmark must not present
   a bit-trick decode there as representative fp8 speed. */
static ekv_result ekv_cuda__check_dtype_device(ekv_dtype dtype, int sm)
{
    const ekv_dtype_traits *t = ekv_dtype_info(dtype);
    if (t && sm < t->min_sm)
        return ekv_set_error(EKV_ERR_UNSUPPORTED, "%s KV cache needs sm_%d or newer (device is sm_%d%d)",
                             t->name, t->min_sm, sm / 10, sm % 10);
    return EKV_SUCCESS;
}

/* What ekv_cuda_attention launches for a cache and a head count on the current device. */
typedef struct ekv_cuda__choice {
    ekv_cuda__attention_fn kernel;
    int tensor_cores; /* 1: ekv_cuda__attention_mma_kernel, 0: ekv_cuda__attention_kernel */
    int tile;         /* query heads per CTA */
    int head_tiles;   /* CTAs per (sequence, kv head, split) */
} ekv_cuda__choice;

/* The dispatcher: the tensor-core kernel where ekv_cuda__tensor_cores says so for the
   architecture the kernel was compiled for on this device (a build without sm_80 code
   runs JIT-compiled older PTX, in which that kernel is empty), else the CUDA-core kernel.
   Then the launch grid's limits. */
static ekv_result ekv_cuda__choose(const ekv_cuda_cache *c, int heads, const char *fn,
                                   ekv_cuda__choice *choice)
{
    const int group = heads / c->kv_heads;
    const int mma_heads = group <= EKV_CUDA__MMA_HEADS_SMALL || c->head_dim > EKV_CUDA__MMA_LARGE_MAX_DIM
                              ? EKV_CUDA__MMA_HEADS_SMALL : EKV_CUDA__MMA_HEADS_LARGE;
    const int paged = c->block_table != NULL;
    /* the contiguous kernel decides the path, the paged one (if paged) runs it */
    ekv_cuda__attention_fn mma = ekv_cuda__kernel_for(1, c->dtype, c->head_dim, mma_heads, 0);
    ekv_result result;
    memset(choice, 0, sizeof *choice);
    if (mma) {
        cudaFuncAttributes attributes;
        memset(&attributes, 0, sizeof attributes);
        if ((result = EKV_CUDA__CHECK(cudaFuncGetAttributes(&attributes, (const void *)mma))) !=
            EKV_SUCCESS)
            return result;
        if (ekv_cuda__tensor_cores(c->dtype, attributes.ptxVersion * 10)) {
            choice->tensor_cores = 1;
            choice->tile = mma_heads;
            choice->kernel = paged ? ekv_cuda__kernel_for(1, c->dtype, c->head_dim, mma_heads, 1) : mma;
            if (!choice->kernel && c->head_dim <= EKV_CUDA__MMA_LARGE_MAX_DIM) {
                choice->tile = EKV_CUDA__MMA_HEADS_LARGE;
                choice->kernel = ekv_cuda__kernel_for(1, c->dtype, c->head_dim, choice->tile, 1);
            }
            if (!choice->kernel)
                return ekv_set_error(EKV_ERR_UNSUPPORTED,
                                     "%s: a paged %s cache at head dim %d has no tensor-core kernel "
                                     "(its table lookup would spill registers): use a contiguous "
                                     "cache (--page-size=0) or another head dim", fn,
                                     ekv_dtype_name(c->dtype), c->head_dim);
        }
    }
    if (!choice->kernel) {
        choice->tile = group == 1 ? 1 : EKV_CUDA__GROUP_TILE;
        choice->kernel = ekv_cuda__kernel_for(0, c->dtype, c->head_dim, choice->tile,
                                              c->block_table != NULL);
    }
    choice->head_tiles = (group + choice->tile - 1) / choice->tile;
    if (choice->tensor_cores && c->block_table && c->page_size % 16 != 0)
        return ekv_set_error(EKV_ERR_UNSUPPORTED,
                             "%s: page size %d: the tensor-core kernel (%s here) reads 16 tokens "
                             "of one page per step: use page size 16, 32 or 64", fn, c->page_size,
                             ekv_dtype_name(c->dtype));
    if ((long long)c->kv_heads * choice->head_tiles > 65535 || (long long)c->batch * heads > 2147483647LL)
        return ekv_set_error(EKV_ERR_UNSUPPORTED,
                             "%s: kv_heads x head tiles (%d x %d) exceeds 65535 or batch x heads "
                             "exceeds 2^31 - 1 (the launch grid's limits)", fn, c->kv_heads,
                             choice->head_tiles);
    return EKV_SUCCESS;
}

static const char *ekv_cuda__kernel_name(const ekv_cuda__choice *choice, const ekv_cuda_cache *c)
{
    if (c->block_table)
        return choice->tensor_cores ? "ekv_cuda__attention_mma_paged_kernel"
                                    : "ekv_cuda__attention_paged_kernel";
    return choice->tensor_cores ? "ekv_cuda__attention_mma_kernel" : "ekv_cuda__attention_kernel";
}

/* Tolerance of a kernel against the double reference over the same stored cache. Both
   read the same stored values (the reference dequantizes them with the same formulas), so
   on CUDA cores the storage dtype does not enter: what remains is fp32 arithmetic - q times
   the scale, dot products of head_dim terms, ex2.approx (2 ulp), and the running sums.
   Those errors are about 1e-7 relative each; the sums grow like the square root of the
   tokens one thread accumulates, which the second term allows for on long sequences.
   On tensor cores the fragments are f16, or bf16 in two parts (about 2^-17): f16 rounds q
   and the softmax weights to 2^-12 relative, and int4's dequantized K and V too (one f16
   fused multiply-add), while f16, int8 and fp8 K and V enter exactly. The floors are
   about 4x the largest rel_l2 the emulator tests see per dtype (README "Accuracy": 5e-4
   for f16, int8, int4 and fp8, 4e-6 for bf16); a wrong fragment index gives errors of
   order 1 (tests/test_kernels_emu.cpp plants one). */
EKV_CUDA_DEF double ekv_cuda_validation_tolerance(const ekv_cuda_kernel_info *kernel, int max_length)
{
    /* ekv.h's one rule (max(1e-5, 2e-7 sqrt(length)), the CPU kernel's too), with the
       tensor-core floor below which f16 fragments cannot go */
    const double rule = ekv_validation_tolerance(max_length);
    const double floor = kernel && kernel->tensor_cores ? (kernel->dtype == EKV_DTYPE_BF16 ? 2e-5 : 2e-3) : 0.0;
    return rule > floor ? rule : floor;
}

EKV_CUDA_DEF ekv_result ekv_cuda_attention_kernel(const ekv_cuda_cache *cache, int heads,
                                                  ekv_cuda_kernel_info *info)
{
    const char *fn = "ekv_cuda_attention_kernel";
    ekv_cuda__choice choice;
    ekv_result result;
    if (!info) return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: NULL info", fn);
    memset(info, 0, sizeof *info);
    if ((result = ekv_cuda__check_shape(cache, heads, fn)) != EKV_SUCCESS) return result;
    if ((result = ekv_cuda__choose(cache, heads, fn, &choice)) != EKV_SUCCESS) return result;
    snprintf(info->name, sizeof info->name, "%s<%s, %d, %d>",
             ekv_cuda__kernel_name(&choice, cache),
             ekv_dtype_name(cache->dtype), cache->head_dim, choice.tile);
    info->dtype = cache->dtype;
    info->tensor_cores = choice.tensor_cores;
    info->heads_per_cta = choice.tile;
    return EKV_SUCCESS;
}

EKV_CUDA_DEF size_t ekv_cuda_attention_workspace_bytes(const ekv_cuda_cache *cache, int heads,
                                                       int splits)
{
    if (!cache || splits <= 1 || heads < 1) return 0;
    return (size_t)cache->batch * (size_t)heads * (size_t)splits *
           ((size_t)cache->head_dim + 2) * sizeof(float);
}

/* Slots per split for `splits` parts of the capacity, and the parts that are not empty; a
   paged cache's splits are whole pages (the tensor-core kernel's steps stay in one page). */
static void ekv_cuda__split_shape(int capacity, int page_size, int splits, int *tokens_per_split,
                                  int *used)
{
    int per = (capacity + splits - 1) / splits;
    if (per < 1) per = 1;
    if (page_size > 0) per = (per + page_size - 1) / page_size * page_size;
    *tokens_per_split = per;
    *used = (capacity + per - 1) / per;
}

EKV_CUDA_DEF ekv_result ekv_cuda_attention_plan_make(const ekv_cuda_cache *cache, int heads,
                                                     int splits, ekv_cuda_attention_plan *plan)
{
    const char *fn = "ekv_cuda_attention_plan_make";
    ekv_result result;
    ekv_cuda__choice choice;
    int per, used;
    if (!plan) return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: NULL plan", fn);
    memset(plan, 0, sizeof *plan);
    plan->splits = 1;
    if ((result = ekv_cuda__check_shape(cache, heads, fn)) != EKV_SUCCESS) return result;
    if (splits < 0 || splits > EKV_CUDA_MAX_SPLITS)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: splits %d outside [0, %d] (0 = auto)", fn,
                             splits, EKV_CUDA_MAX_SPLITS);
    if ((result = ekv_cuda__choose(cache, heads, fn, &choice)) != EKV_SUCCESS) return result;
    if (splits == 0) {
        /* enough CTAs for two full waves: resident CTAs per SM from the occupancy
           calculator for the kernel this cache will run */
        const long long ctas = (long long)cache->batch * cache->kv_heads * choice.head_tiles;
        ekv_cuda__attention_fn kernel = choice.kernel;
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
    ekv_cuda__split_shape(cache->capacity, cache->page_size, splits, &per, &used);
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
    ekv_cuda__choice choice;
    ekv_result result;
    int splits = plan ? plan->splits : 1, used;
    if ((result = ekv_cuda__check_shape(cache, heads, fn)) != EKV_SUCCESS) return result;
    if (!cache->k || !cache->v || !cache->lengths)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: the cache has no device buffers", fn);
    if (ekv_cache_scales_bytes(cache->dtype, 1, 1, cache->head_dim, 1) &&
        (!cache->k_scales || !cache->v_scales))
        return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: %s cache without scales", fn,
                             ekv_dtype_name(cache->dtype));
    if (ekv_dtype_info(cache->dtype)->min_sm) {
        /* a cache struct filled by hand may not carry the device's sm: ask the current one */
        int device = 0, sm = cache->sm;
        if (sm == 0 && (result = ekv_cuda__current_device(&device, &sm)) != EKV_SUCCESS) return result;
        if ((result = ekv_cuda__check_dtype_device(cache->dtype, sm)) != EKV_SUCCESS) return result;
    }
    if ((result = ekv_cuda__choose(cache, heads, fn, &choice)) != EKV_SUCCESS) return result;
    if (!q || !out || ((uintptr_t)q & 15u) || ((uintptr_t)out & 15u))
        return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: q and out must be non-NULL and 16-byte aligned",
                             fn);
    if (!(softmax_scale == softmax_scale) || softmax_scale > 3.0e38f || softmax_scale < -3.0e38f)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: softmax_scale must be finite", fn);
    if (splits < 1 || splits > EKV_CUDA_MAX_SPLITS)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: plan->splits %d outside [1, %d]", fn, splits,
                             EKV_CUDA_MAX_SPLITS);
    memset(&p, 0, sizeof p);
    ekv_cuda__split_shape(cache->capacity, cache->page_size, splits, &p.tokens_per_split, &used);
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
    p.block_table = cache->block_table;
    p.page_shift = cache->page_shift;
    p.table_width = cache->table_width;
    p.q = q;
    p.out = out;
    p.heads = heads;
    p.kv_heads = cache->kv_heads;
    p.capacity = cache->capacity;
    p.group = heads / cache->kv_heads;
    p.head_tiles = choice.head_tiles;
    p.q_scale = softmax_scale * EKV_CUDA__LOG2E;
    result = EKV_CUDA__LAUNCH(ekv_cuda__kernel_name(&choice, cache),
                              choice.kernel,
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

/* scale x dot(q, K_slot) + bias in double, in the order of ekv.h's reference dot product: four interleaved
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
    const ekv_compress_region r =
        ekv_compress_region_of(length, c.compressed[b], p.recent, p.sinks, p.compression);
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
    const ekv_compress_region r =
        ekv_compress_region_of(c.lengths[b], c.compressed[b], p.recent, p.sinks, p.compression);
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
                                                             const ekv_compress_region &r,
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
    const ekv_compress_region r =
        ekv_compress_region_of(c.lengths[b], c.compressed[b], p.recent, p.sinks, p.compression);
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
        const ekv_compress_region r =
            ekv_compress_region_of(c.lengths[b], c.compressed[b], p.recent, p.sinks, p.compression);
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
    ekv_free(cache->host_lengths);
    ekv_free(cache->host_compressed);
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
    if (!ekv_dtype_info(dtype))
        return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: unknown dtype %d: allowed %s", fn, (int)dtype,
                             ekv_dtype_allowed());
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
    cache->host_lengths = (int *)ekv_calloc((size_t)batch, sizeof(int));
    cache->host_compressed = (int *)ekv_calloc((size_t)batch, sizeof(int));
    if (!cache->host_lengths || !cache->host_compressed) result = EKV_ERR_OUT_OF_MEMORY;
done:
    if (result != EKV_SUCCESS) ekv_cuda_elastic_free(cache);
    return result;
}

EKV_CUDA_DEF size_t ekv_cuda_elastic_memory_bytes(const ekv_cuda_elastic_cache *cache)
{
    const ekv_cuda_cache *c = cache ? &cache->cache : NULL;
    if (!c) return 0;
    return (size_t)ekv_cache_memory_of(c->dtype, c->batch, c->kv_heads, c->head_dim, c->capacity,
                                       c->bias != NULL);
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
    if (ekv_dtype_info(cache->cache.dtype)->head_scale_bytes)
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
    if (!ekv_compress_desc_valid(desc))
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
        const ekv_compress_region r = ekv_compress_region_of(cache->host_lengths[b], cache->host_compressed[b],
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
        const ekv_compress_region r = ekv_compress_region_of(cache->host_lengths[b], cache->host_compressed[b],
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

/* >>abi (implementation) ==================================================== */

EKV_CUDA_DEF ekv_result ekv_cuda_abi_device(int device, char *name, size_t size)
{
    cudaDeviceProp prop;
    ekv_result result = ekv_cuda_device_select(device);
    if (result != EKV_SUCCESS || !name || size == 0) return result;
    if ((result = EKV_CUDA__CHECK(cudaGetDeviceProperties(&prop, device))) != EKV_SUCCESS)
        return result;
    snprintf(name, size, "%s", prop.name);
    return EKV_SUCCESS;
}

EKV_CUDA_DEF ekv_result ekv_cuda_abi_attention(const ekv_abi_cache *abi, int device, float *out)
{
    const ekv_host_cache *host = ekv_abi_cache_host(abi);
    const ekv_data *data = ekv_abi_cache_data(abi);
    ekv_cuda_cache cache;
    ekv_cuda_attention_plan plan;
    float *device_q = NULL, *device_out = NULL;
    double scale = 0.0;
    size_t bytes;
    ekv_result result;
    memset(&cache, 0, sizeof cache);
    memset(&plan, 0, sizeof plan);
    if (!host || !data || !out)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "ekv_cuda_abi_attention: cache or out is NULL");
    if (!ekv_cuda_supports_head_dim(host->head_dim))
        return ekv_set_error(EKV_ERR_UNSUPPORTED,
                             "head_dim %d: the CUDA kernels support %s (backend='cpu' takes any)",
                             host->head_dim, EKV_CUDA_HEAD_DIMS);
    if ((result = ekv_abi_cache_number(abi, "softmax_scale", &scale)) != EKV_SUCCESS) return result;
    if ((result = ekv_cuda_device_select(device)) != EKV_SUCCESS) return result;
    bytes = (size_t)data->batch * (size_t)data->heads * (size_t)data->head_dim * sizeof(float);
    EKV_CUDA__TRY_EKV(ekv_cuda_cache_upload(host, &cache));
    EKV_CUDA__TRY_EKV(ekv_cuda_attention_plan_make(&cache, data->heads, 0, &plan));
    if (plan.workspace_bytes) EKV_CUDA__TRY(cudaMalloc(&plan.workspace, plan.workspace_bytes));
    EKV_CUDA__TRY(cudaMalloc((void **)&device_q, bytes));
    EKV_CUDA__TRY(cudaMalloc((void **)&device_out, bytes));
    EKV_CUDA__TRY(cudaMemcpy(device_q, data->q, bytes, cudaMemcpyHostToDevice));
    /* the scale as the CUDA backend passes it: the resolved double, as float */
    EKV_CUDA__TRY_EKV(ekv_cuda_attention(&cache, device_q, data->heads, (float)scale, device_out,
                                         &plan, 0));
    EKV_CUDA__TRY(cudaMemcpy(out, device_out, bytes, cudaMemcpyDeviceToHost));
done:
    if (device_q) (void)cudaFree(device_q);
    if (device_out) (void)cudaFree(device_out);
    if (plan.workspace) (void)cudaFree(plan.workspace);
    ekv_cuda_cache_free(&cache);
    return result;
}

#ifndef EKV_NO_BENCH
/* ======================== Part B: the benchmark ========================= */

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

static ekv_result ekv_cuda__timed_make(const ekv_host_cache *host, const ekv_paged_cache *paged,
                                       int copies, int heads, ekv_cuda__timed *t)
{
    ekv_result result = EKV_SUCCESS;
    int i;
    memset(t, 0, sizeof *t);
    t->copies = (ekv_cuda_cache *)EKV_MALLOC((size_t)copies * sizeof(ekv_cuda_cache));
    if (!t->copies) return ekv_set_error(EKV_ERR_OUT_OF_MEMORY, "ekv_cuda_run: out of host memory");
    memset(t->copies, 0, (size_t)copies * sizeof(ekv_cuda_cache));
    if (paged) EKV_CUDA__TRY_EKV(ekv_cuda_cache_upload_paged(paged, &t->copies[0]));
    else EKV_CUDA__TRY_EKV(ekv_cuda_cache_upload(host, &t->copies[0]));
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
    ekv_cuda__split_shape(c->capacity, 0, splits, &per, &used);
    for (b = 0; b < c->batch; b++) {
        const int busy = (c->lengths[b] + per - 1) / per;
        per_launch += (double)heads * ((double)busy * c->head_dim + 2.0 * used) * sizeof(float);
    }
    return 2.0 * per_launch;
}

/* Measured copy bandwidth per device ordinal, once per process (0 = not yet). */
#define EKV_CUDA__MEMO_DEVICES 64
static double ekv_cuda__copy_gbs[EKV_CUDA__MEMO_DEVICES];

struct ekv_cuda__abab {
    ekv_cuda__timed *candidate, *baseline;
    ekv_cuda__call *call;
    int inner_loops, warmup;
    cudaEvent_t start, stop;
    ekv_report *report;
};

static ekv_result ekv_cuda__abab_sample(void *context, int baseline, int rep)
{
    struct ekv_cuda__abab *t = (struct ekv_cuda__abab *)context;
    double ms = 0.0;
    ekv_result r = ekv_cuda__timed_sample(baseline ? t->baseline : t->candidate, t->call,
                                          (long long)rep + t->warmup, t->inner_loops, t->start,
                                          t->stop, &ms);
    if (r == EKV_SUCCESS && rep >= 0)
        (baseline ? t->report->baseline_samples_ms : t->report->samples_ms)[rep] = ms;
    return r;
}

EKV_CUDA_DEF ekv_result ekv_cuda_run(const ekv_config *config, const ekv_workload *work,
                                     ekv_report *report)
{
    const char *fn = "ekv_cuda_run";
    ekv_result result = EKV_SUCCESS;
    ekv_cuda__timed candidate, baseline;
    ekv_cuda__call call;
    struct ekv_cuda__abab timing;
    cudaEvent_t start = NULL, stop = NULL;
    float *host_out = NULL, *device_q = NULL, *device_out = NULL;
    double *baseline_reference = NULL;
    void *workspace = NULL;
    size_t count, free_bytes = 0, total_bytes = 0, workspace_bytes;
    double candidate_block, baseline_block = 0.0, io_bytes, need, margin, spare, kept = 0.0;
    double tolerance, l2;
    ekv_cuda_kernel_info kernel;
    int sm, copies_candidate = 1, copies_baseline = 1, heads, b;
    long long max_copies;
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
    if ((result = ekv_cuda_device_select(config->device)) != EKV_SUCCESS) return result;
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
    if (need + margin > (double)free_bytes) {
        char need_text[32], cache_text[32], margin_text[32], free_text[32];
        return ekv_set_error(EKV_ERR_OUT_OF_MEMORY,
                             "%s: needs %s of device memory (cache %s%s, q/out, workspace) plus "
                             "%s headroom; device has %s free",
                             fn, ekv_format_bytes(need, need_text, sizeof need_text),
                             ekv_format_bytes(candidate_block, cache_text, sizeof cache_text),
                             config->paired_baseline ? " + baseline" : "",
                             ekv_format_bytes(margin, margin_text, sizeof margin_text),
                             ekv_format_bytes((double)free_bytes, free_text, sizeof free_text));
    }
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

    /* --page-size: the kernels read the pages through the block table */
    EKV_CUDA__TRY_EKV(ekv_cuda__timed_make(&work->cache, work->paged.page_size ? &work->paged : NULL,
                                           copies_candidate, heads, &candidate));
    if (config->paired_baseline)
        EKV_CUDA__TRY_EKV(ekv_cuda__timed_make(&work->baseline, NULL, copies_baseline, heads, &baseline));
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
    EKV_CUDA__TRY_EKV(ekv_cuda_attention_kernel(&candidate.copies[0], heads, &kernel));
    snprintf(report->kernel, sizeof report->kernel, "%s", kernel.name);
    tolerance = ekv_cuda_validation_tolerance(&kernel, ekv_cuda__max_length(&work->cache));
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
        double baseline_tolerance;
        EKV_CUDA__TRY_EKV(ekv_cuda_attention_kernel(&baseline.copies[0], heads, &kernel));
        baseline_tolerance = ekv_cuda_validation_tolerance(&kernel, ekv_cuda__max_length(&work->baseline));
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
    timing.candidate = &candidate;
    timing.baseline = &baseline;
    timing.call = &call;
    timing.inner_loops = config->inner_loops;
    timing.warmup = config->warmup;
    timing.start = start;
    timing.stop = stop;
    timing.report = report;
    EKV_CUDA__TRY_EKV(ekv_time_abab(config->warmup, config->reps, config->paired_baseline,
                                    ekv_cuda__abab_sample, &timing));

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

/* >>cycle: the device backend of ekv.h's cycle driver =================================== */

/* The decode loop of ekv.h >>cycle with the same model, order of operations and
   result assembly, on one stream: projections by cuBLAS (cublasSgemm; nocache recomputes
   every token's k and v with it), the elastic device cache (>>elastic) for
   append and compress, ekv_cuda_attention for the attention. Phases are timed with CUDA
   events between them (one set per layer, read after each step). Builds need -lcublas.
   It follows the >>elastic implementation. */


static ekv_result ekv_cuda__cublas_check(cublasStatus_t status, const char *call, const char *file,
                                         int line)
{
    if (status == CUBLAS_STATUS_SUCCESS) return EKV_SUCCESS;
    return ekv_set_error(EKV_ERR_CUDA, "%s failed: cuBLAS status %d at %s:%d", call, (int)status,
                         file, line);
}
#define EKV_CUDA__CUBLAS(call) ekv_cuda__cublas_check((call), #call, __FILE__, __LINE__)

/* ring[(row x observe + slot) x D + d] = q[row x D + d] for every (sequence, head) row */
static __global__ void ekv_cuda__cycle_ring_insert(float *ring, const float *q, int observe, int slot,
                                                   int head_dim)
{
    const size_t row = blockIdx.x;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x)
        ring[(row * (size_t)observe + (size_t)slot) * (size_t)head_dim + d] = q[row * (size_t)head_dim + d];
}

/* q_observe[(row x count + i) x D + d] = ring[(row x observe + (first + i) % observe) x D + d] */
static __global__ void ekv_cuda__cycle_ring_gather(float *q_observe, const float *ring, int observe,
                                                   int first, int count, int head_dim)
{
    const size_t row = blockIdx.x, i = blockIdx.y;
    const size_t slot = (size_t)((first + (int)i) % observe);
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x)
        q_observe[(row * (size_t)count + i) * (size_t)head_dim + d] =
            ring[(row * (size_t)observe + slot) * (size_t)head_dim + d];
}

typedef struct ekv_cuda__cycle {
    const ekv_cycle_model *model; /* host model: sizes, settings */
    ekv_variant variant;
    cudaStream_t stream;
    cublasHandle_t blas;
    float *wq, *wk, *wv, *x;      /* device copies of the model */
    int cache_count;
    ekv_cuda_elastic_cache *caches;
    ekv_cuda_attention_plan *plans;
    void *workspace;
    int *lengths;                 /* host [batch] */
    float *q, *k, *v, *out;       /* device */
    float *ring, *q_observe;      /* topk */
    int *ring_count;              /* host [layers] */
    float *k_all, *v_all;         /* device [batch][kv_heads][tokens][D] */
    cudaEvent_t *events;          /* 1 + 4 per layer */
    double state_bytes;           /* device bytes of the variant's state */
} ekv_cuda__cycle;

static void ekv_cuda__cycle_free(ekv_cuda__cycle *s)
{
    int i;
    for (i = 0; i < s->cache_count; i++) ekv_cuda_elastic_free(&s->caches[i]);
    if (s->events)
        for (i = 0; i < 1 + 4 * s->model->layers; i++)
            if (s->events[i]) cudaEventDestroy(s->events[i]);
    cudaFree(s->wq);
    cudaFree(s->wk);
    cudaFree(s->wv);
    cudaFree(s->x);
    cudaFree(s->workspace);
    cudaFree(s->q);
    cudaFree(s->k);
    cudaFree(s->v);
    cudaFree(s->out);
    cudaFree(s->ring);
    cudaFree(s->q_observe);
    cudaFree(s->k_all);
    cudaFree(s->v_all);
    if (s->blas) cublasDestroy(s->blas);
    if (s->stream) cudaStreamDestroy(s->stream);
    ekv_free(s->caches);
    ekv_free(s->plans);
    ekv_free(s->lengths);
    ekv_free(s->ring_count);
    ekv_free(s->events);
    memset(s, 0, sizeof *s);
}

static ekv_result ekv_cuda__cycle_alloc(void **p, size_t bytes, double *total)
{
    *total += (double)bytes;
    return EKV_CUDA__CHECK(cudaMalloc(p, bytes > 0 ? bytes : 1));
}

static ekv_result ekv_cuda__cycle_make(const ekv_config *c, const ekv_cycle_model *m, ekv_variant v,
                                       ekv_cuda__cycle *s)
{
    const size_t kv_width = (size_t)m->kv_heads * (size_t)m->head_dim;
    const size_t wq_n = (size_t)m->layers * (size_t)m->hidden * (size_t)m->hidden;
    const size_t wkv_n = (size_t)m->layers * (size_t)m->hidden * kv_width;
    const size_t x_n = (size_t)m->layers * (size_t)m->batch * (size_t)m->tokens * (size_t)m->hidden;
    const int topk = v == EKV_VARIANT_ELASTIC && m->compress.policy == EKV_POLICY_TOPK;
    const int with_bias = v == EKV_VARIANT_ELASTIC && m->compress.policy == EKV_POLICY_POOL;
    const int capacity = v == EKV_VARIANT_NOCACHE ? m->tokens : ekv_cycle_capacity(c, v);
    const int count = ekv_cycle_cache_count(v, m->layers);
    double model_bytes = 0.0;
    size_t workspace = 0;
    ekv_result result = EKV_SUCCESS;
    int i;
    memset(s, 0, sizeof *s);
    s->model = m;
    s->variant = v;
    s->caches = (ekv_cuda_elastic_cache *)ekv_calloc((size_t)count, sizeof(ekv_cuda_elastic_cache));
    s->plans = (ekv_cuda_attention_plan *)ekv_calloc((size_t)count, sizeof(ekv_cuda_attention_plan));
    s->lengths = (int *)ekv_calloc((size_t)m->batch, sizeof(int));
    s->ring_count = (int *)ekv_calloc((size_t)m->layers, sizeof(int));
    s->events = (cudaEvent_t *)ekv_calloc((size_t)(1 + 4 * m->layers), sizeof(cudaEvent_t));
    if (!s->caches || !s->plans || !s->lengths || !s->ring_count || !s->events) {
        result = EKV_ERR_OUT_OF_MEMORY;
        goto done;
    }
    EKV_CUDA__TRY(cudaStreamCreate(&s->stream));
    EKV_CUDA__TRY_EKV(EKV_CUDA__CUBLAS(cublasCreate(&s->blas)));
    EKV_CUDA__TRY_EKV(EKV_CUDA__CUBLAS(cublasSetStream(s->blas, s->stream)));
    for (i = 0; i < 1 + 4 * m->layers; i++) EKV_CUDA__TRY(cudaEventCreate(&s->events[i]));
    EKV_CUDA__TRY_EKV(ekv_cuda__cycle_alloc((void **)&s->wq, wq_n * sizeof(float), &model_bytes));
    EKV_CUDA__TRY_EKV(ekv_cuda__cycle_alloc((void **)&s->wk, wkv_n * sizeof(float), &model_bytes));
    EKV_CUDA__TRY_EKV(ekv_cuda__cycle_alloc((void **)&s->wv, wkv_n * sizeof(float), &model_bytes));
    EKV_CUDA__TRY_EKV(ekv_cuda__cycle_alloc((void **)&s->x, x_n * sizeof(float), &model_bytes));
    EKV_CUDA__TRY(cudaMemcpy(s->wq, m->wq, wq_n * sizeof(float), cudaMemcpyHostToDevice));
    EKV_CUDA__TRY(cudaMemcpy(s->wk, m->wk, wkv_n * sizeof(float), cudaMemcpyHostToDevice));
    EKV_CUDA__TRY(cudaMemcpy(s->wv, m->wv, wkv_n * sizeof(float), cudaMemcpyHostToDevice));
    EKV_CUDA__TRY(cudaMemcpy(s->x, m->x, x_n * sizeof(float), cudaMemcpyHostToDevice));
    for (i = 0; i < count; i++) {
        EKV_CUDA__TRY_EKV(ekv_cuda_elastic_create(&s->caches[i], ekv_cycle_dtype(c, v), m->batch,
                                                  m->kv_heads, m->head_dim, capacity, with_bias));
        s->cache_count++;
        s->state_bytes += (double)s->caches[i].cache.allocation_bytes;
        EKV_CUDA__TRY_EKV(ekv_cuda_attention_plan_make(&s->caches[i].cache, m->heads, 0, &s->plans[i]));
        if (s->plans[i].workspace_bytes > workspace) workspace = s->plans[i].workspace_bytes;
    }
    EKV_CUDA__TRY_EKV(ekv_cuda__cycle_alloc(&s->workspace, workspace, &s->state_bytes));
    for (i = 0; i < count; i++) s->plans[i].workspace = s->workspace;
    EKV_CUDA__TRY_EKV(ekv_cuda__cycle_alloc((void **)&s->q, (size_t)m->batch * m->hidden * sizeof(float), &s->state_bytes));
    EKV_CUDA__TRY_EKV(ekv_cuda__cycle_alloc((void **)&s->k, (size_t)m->batch * kv_width * sizeof(float), &s->state_bytes));
    EKV_CUDA__TRY_EKV(ekv_cuda__cycle_alloc((void **)&s->v, (size_t)m->batch * kv_width * sizeof(float), &s->state_bytes));
    EKV_CUDA__TRY_EKV(ekv_cuda__cycle_alloc((void **)&s->out, (size_t)m->layers * m->batch * m->hidden * sizeof(float),
                                            &s->state_bytes));
    EKV_CUDA__TRY_EKV(ekv_cuda__cycle_alloc((void **)&s->k_all, (size_t)m->batch * m->tokens * kv_width * sizeof(float),
                                            &s->state_bytes));
    EKV_CUDA__TRY_EKV(ekv_cuda__cycle_alloc((void **)&s->v_all, (size_t)m->batch * m->tokens * kv_width * sizeof(float),
                                            &s->state_bytes));
    if (topk) {
        EKV_CUDA__TRY_EKV(ekv_cuda__cycle_alloc((void **)&s->ring,
                                                (size_t)m->layers * m->batch * m->hidden * m->observe * sizeof(float),
                                                &s->state_bytes));
        EKV_CUDA__TRY_EKV(ekv_cuda__cycle_alloc((void **)&s->q_observe,
                                                (size_t)m->batch * m->hidden * m->observe * sizeof(float),
                                                &s->state_bytes));
        for (i = 0; i < count; i++)
            s->state_bytes += (double)ekv_cuda_elastic_workspace_bytes(&s->caches[i], m->heads, m->observe);
    }
done:
    if (result != EKV_SUCCESS) ekv_cuda__cycle_free(s);
    return result;
}

/* Row-major out[rows][n] = x[rows][hidden] (row stride x_stride) W[hidden][n] (row stride
   w_stride), as cuBLAS's column-major out^T = W^T x^T. */
static ekv_result ekv_cuda__cycle_gemm(ekv_cuda__cycle *s, const float *x, int x_stride, int rows,
                                       const float *w, int w_stride, int n, float *out, int out_stride)
{
    const float one = 1.0f, zero = 0.0f;
    return EKV_CUDA__CUBLAS(cublasSgemm(s->blas, CUBLAS_OP_N, CUBLAS_OP_N, n, rows, s->model->hidden, &one,
                                        w, w_stride, x, x_stride, &zero, out, out_stride));
}

static const float *ekv_cuda__cycle_x(const ekv_cuda__cycle *s, int layer, int b, int token)
{
    const ekv_cycle_model *m = s->model;
    return s->x + (((size_t)layer * (size_t)m->batch + (size_t)b) * (size_t)m->tokens + (size_t)token) *
                      (size_t)m->hidden;
}

/* k and v of tokens [0, count) of layer l into k_all/v_all [batch][kv_heads][tokens][D]:
   one GEMM per (sequence, kv head), its output rows landing in place. */
static ekv_result ekv_cuda__cycle_project_all(ekv_cuda__cycle *s, int l, int count)
{
    const ekv_cycle_model *m = s->model;
    const int kv_width = m->kv_heads * m->head_dim;
    const size_t wkv_n = (size_t)m->hidden * (size_t)kv_width;
    ekv_result r;
    int b, h, which;
    for (b = 0; b < m->batch; b++)
        for (h = 0; h < m->kv_heads; h++)
            for (which = 0; which < 2; which++) {
                r = ekv_cuda__cycle_gemm(s, ekv_cuda__cycle_x(s, l, b, 0), m->hidden, count,
                                         (which ? s->wv : s->wk) + (size_t)l * wkv_n + (size_t)h * m->head_dim,
                                         kv_width, m->head_dim,
                                         (which ? s->v_all : s->k_all) +
                                             ((size_t)b * m->kv_heads + (size_t)h) * (size_t)m->tokens * m->head_dim,
                                         m->head_dim);
                if (r != EKV_SUCCESS) return r;
            }
    return EKV_SUCCESS;
}

/* q (and, when kv, k and v) of token `token` of layer l for all sequences: the inputs of
   the sequences lie tokens x hidden apart, which is the GEMM's leading dimension. */
static ekv_result ekv_cuda__cycle_project(ekv_cuda__cycle *s, int l, int token, int kv)
{
    const ekv_cycle_model *m = s->model;
    const int kv_width = m->kv_heads * m->head_dim;
    const float *x = ekv_cuda__cycle_x(s, l, 0, token);
    ekv_result r = ekv_cuda__cycle_gemm(s, x, m->tokens * m->hidden, m->batch,
                                        s->wq + (size_t)l * m->hidden * m->hidden, m->hidden, m->hidden,
                                        s->q, m->hidden);
    if (r == EKV_SUCCESS && s->ring) {
        r = EKV_CUDA__LAUNCH("ekv_cuda__cycle_ring_insert", ekv_cuda__cycle_ring_insert,
                             dim3((unsigned)(m->batch * m->heads)), dim3(64), s->stream,
                             s->ring + (size_t)l * m->batch * m->hidden * m->observe, (const float *)s->q,
                             m->observe, s->ring_count[l] % m->observe, m->head_dim);
        s->ring_count[l]++;
    }
    if (r == EKV_SUCCESS && kv)
        r = ekv_cuda__cycle_gemm(s, x, m->tokens * m->hidden, m->batch,
                                 s->wk + (size_t)l * m->hidden * kv_width, kv_width, kv_width, s->k, kv_width);
    if (r == EKV_SUCCESS && kv)
        r = ekv_cuda__cycle_gemm(s, x, m->tokens * m->hidden, m->batch,
                                 s->wv + (size_t)l * m->hidden * kv_width, kv_width, kv_width, s->v, kv_width);
    return r;
}

static ekv_result ekv_cuda__cycle_compress(ekv_cuda__cycle *s, int l)
{
    const ekv_cycle_model *m = s->model;
    int observe = 0;
    if (s->ring) {
        const int count = s->ring_count[l];
        ekv_result r;
        observe = count < m->observe ? count : m->observe;
        r = EKV_CUDA__LAUNCH("ekv_cuda__cycle_ring_gather", ekv_cuda__cycle_ring_gather,
                             dim3((unsigned)(m->batch * m->heads), (unsigned)observe), dim3(64), s->stream,
                             s->q_observe, (const float *)(s->ring + (size_t)l * m->batch * m->hidden * m->observe),
                             m->observe, (count - observe) % m->observe, observe, m->head_dim);
        if (r != EKV_SUCCESS) return r;
    }
    return ekv_cuda_elastic_compress(&s->caches[l], &m->compress, s->ring ? s->q_observe : NULL, m->heads,
                                     observe, m->softmax_scale, s->stream);
}

static ekv_result ekv_cuda__cycle_prefill(ekv_cuda__cycle *s)
{
    const ekv_cycle_model *m = s->model;
    ekv_result r = EKV_SUCCESS;
    int l, b, t;
    for (b = 0; b < m->batch; b++) s->lengths[b] = m->prompt;
    if (s->variant == EKV_VARIANT_NOCACHE) return EKV_SUCCESS;
    for (l = 0; l < m->layers && r == EKV_SUCCESS; l++) {
        if (ekv_cycle_cache_layer(s->variant, l) != l) continue;
        r = ekv_cuda__cycle_project_all(s, l, m->prompt);
        if (r == EKV_SUCCESS)
            r = ekv_cuda_elastic_prefill(&s->caches[ekv_cycle_cache_index(s->variant, l)], s->k_all, s->v_all,
                                         m->tokens, s->lengths, s->stream);
        if (r == EKV_SUCCESS && s->ring) {
            s->ring_count[l] = 0;
            for (t = m->prompt - (m->prompt < m->observe ? m->prompt : m->observe); t < m->prompt && r == EKV_SUCCESS; t++)
                r = ekv_cuda__cycle_project(s, l, t, 0);
        }
        if (r == EKV_SUCCESS && ekv_cycle_anchor(m, s->variant, m->compress_every))
            r = ekv_cuda__cycle_compress(s, l);
    }
    return r;
}

static double ekv_cuda__cycle_kv_bytes(const ekv_cuda__cycle *s)
{
    double total = 0.0;
    int i;
    if (s->variant == EKV_VARIANT_NOCACHE) return 0.0;
    for (i = 0; i < s->cache_count; i++) {
        const ekv_cuda_cache *c = &s->caches[i].cache;
        total += ekv_cache_bytes_of(c->dtype, c->batch, c->kv_heads, c->head_dim, s->caches[i].host_lengths,
                                    c->bias != NULL).total;
    }
    return total;
}

/* One decode loop (the same steps as ekv.h's CPU loop): events e[0] at the step's start, then per
   layer after projection, append, attention and compress. */
static ekv_result ekv_cuda__cycle_loop(ekv_cuda__cycle *s, ekv_cycle_timing *timing, int rep, float *record)
{
    const ekv_cycle_model *m = s->model;
    const size_t out_layer = (size_t)m->batch * (size_t)m->hidden;
    double phase[EKV_CYCLE_PHASES] = {0, 0, 0, 0};
    ekv_result result = ekv_cuda__cycle_prefill(s);
    int step, l, b, p;
    if (result != EKV_SUCCESS) return result;
    for (step = 1; step <= m->steps; step++) {
        const int token = m->prompt + step - 1;
        cudaEvent_t *e = s->events;
        EKV_CUDA__TRY(cudaEventRecord(e[0], s->stream));
        for (l = 0; l < m->layers; l++) {
            const int owner = ekv_cycle_cache_layer(s->variant, l) == l;
            ekv_cuda_elastic_cache *cache = &s->caches[ekv_cycle_cache_index(s->variant, l)];
            EKV_CUDA__TRY_EKV(ekv_cuda__cycle_project(s, l, token, owner && s->variant != EKV_VARIANT_NOCACHE));
            if (s->variant == EKV_VARIANT_NOCACHE) EKV_CUDA__TRY_EKV(ekv_cuda__cycle_project_all(s, l, token + 1));
            EKV_CUDA__TRY(cudaEventRecord(e[1 + 4 * l], s->stream));
            if (s->variant == EKV_VARIANT_NOCACHE) {
                for (b = 0; b < m->batch; b++) s->lengths[b] = token + 1;
                EKV_CUDA__TRY_EKV(ekv_cuda_elastic_prefill(cache, s->k_all, s->v_all, m->tokens, s->lengths, s->stream));
            } else if (owner) {
                EKV_CUDA__TRY_EKV(ekv_cuda_elastic_append(cache, s->k, s->v, NULL, s->stream));
            }
            EKV_CUDA__TRY(cudaEventRecord(e[2 + 4 * l], s->stream));
            EKV_CUDA__TRY_EKV(ekv_cuda_attention(&cache->cache, s->q, m->heads, (float)m->softmax_scale,
                                                 s->out + (size_t)l * out_layer,
                                                 &s->plans[ekv_cycle_cache_index(s->variant, l)], s->stream));
            EKV_CUDA__TRY(cudaEventRecord(e[3 + 4 * l], s->stream));
            if (ekv_cycle_anchor(m, s->variant, step)) EKV_CUDA__TRY_EKV(ekv_cuda__cycle_compress(s, l));
            EKV_CUDA__TRY(cudaEventRecord(e[4 + 4 * l], s->stream));
        }
        EKV_CUDA__TRY(cudaEventSynchronize(e[4 * m->layers]));
        if (timing) {
            float ms = 0.0f;
            for (l = 0; l < m->layers; l++)
                for (p = 0; p < 4; p++) {
                    static const int phase_of[4] = {EKV_CYCLE_PHASE_PROJECTION, EKV_CYCLE_PHASE_APPEND,
                                                    EKV_CYCLE_PHASE_ATTENTION, EKV_CYCLE_PHASE_COMPRESS};
                    EKV_CUDA__TRY(cudaEventElapsedTime(&ms, p == 0 && l == 0 ? e[0] : e[4 * l + p], e[4 * l + p + 1]));
                    phase[phase_of[p]] += ms;
                }
            EKV_CUDA__TRY(cudaEventElapsedTime(&ms, e[0], e[4 * m->layers]));
            timing->step_ms[(size_t)rep * (size_t)m->steps + (size_t)(step - 1)] = ms;
            timing->kv_bytes[step - 1] = ekv_cuda__cycle_kv_bytes(s);
            timing->peak_bytes[step - 1] = s->state_bytes;
        }
        if (record)
            EKV_CUDA__TRY(cudaMemcpy(record + (size_t)(step - 1) * (size_t)m->layers * out_layer, s->out,
                                     (size_t)m->layers * out_layer * sizeof(float), cudaMemcpyDeviceToHost));
    }
    if (timing)
        for (p = 0; p < EKV_CYCLE_PHASES; p++) timing->phase_ms[(size_t)rep * EKV_CYCLE_PHASES + (size_t)p] = phase[p];
done:
    return result;
}

/* The device backend of ekv.h's cycle driver (ekv_cycle_run_on). */
static ekv_result ekv_cuda__cycle_prepare(const ekv_config *c, ekv_report *report)
{
    size_t free_bytes = 0, total_bytes = 0;
    double need;
    ekv_result result;
    if ((result = ekv_cuda_device_select(c->device)) != EKV_SUCCESS) return result;
    if (!report) return EKV_SUCCESS;
    if ((result = ekv_cuda_device_info(c->device, &report->device)) != EKV_SUCCESS) return result;
    if ((result = EKV_CUDA__CHECK(cudaMemGetInfo(&free_bytes, &total_bytes))) != EKV_SUCCESS)
        return result;
    need = ekv_cycle_memory_estimate(c, c->variant);
    if (need > 0.9 * (double)free_bytes) {
        char need_text[32], free_text[32];
        return ekv_set_error(EKV_ERR_OUT_OF_MEMORY,
                             "--inference needs about %s of device memory for --layers=%d --batch=%d "
                             "--seq=%d --decode_tokens=%d --heads=%d --dim=%d --variant=%s; %s are free",
                             ekv_format_bytes(need, need_text, sizeof need_text), c->layers, c->batch,
                             c->seq_len, c->decode_tokens, c->heads, c->head_dim,
                             ekv_variant_name(c->variant),
                             ekv_format_bytes((double)free_bytes, free_text, sizeof free_text));
    }
    return EKV_SUCCESS;
}

static ekv_result ekv_cuda__cycle_open(const ekv_config *c, const ekv_cycle_model *m, ekv_variant v,
                                       void **state)
{
    ekv_cuda__cycle *s = (ekv_cuda__cycle *)ekv_calloc(1, sizeof *s);
    ekv_result result;
    *state = NULL;
    if (!s) return EKV_ERR_OUT_OF_MEMORY;
    if ((result = ekv_cuda__cycle_make(c, m, v, s)) != EKV_SUCCESS) {
        ekv_free(s);
        return result;
    }
    *state = s;
    return EKV_SUCCESS;
}

static ekv_result ekv_cuda__cycle_run_loop(void *state, ekv_cycle_timing *timing, int rep, float *record)
{
    return ekv_cuda__cycle_loop((ekv_cuda__cycle *)state, timing, rep, record);
}

static ekv_result ekv_cuda__cycle_last_outputs(void *state, float *out)
{
    const ekv_cuda__cycle *s = (const ekv_cuda__cycle *)state;
    const ekv_cycle_model *m = s->model;
    return EKV_CUDA__CHECK(cudaMemcpy(out, s->out, (size_t)m->layers * m->batch * m->hidden * sizeof(float),
                                      cudaMemcpyDeviceToHost));
}

static void ekv_cuda__cycle_layer_bytes(void *state, int layer, ekv_cache_bytes *bytes, double *kept)
{
    const ekv_cuda__cycle *s = (const ekv_cuda__cycle *)state;
    const ekv_cuda_elastic_cache *e = &s->caches[ekv_cycle_cache_index(s->variant, layer)];
    int b;
    *bytes = ekv_cache_bytes_of(e->cache.dtype, e->cache.batch, e->cache.kv_heads, e->cache.head_dim,
                                e->host_lengths, e->cache.bias != NULL);
    *kept = 0.0;
    for (b = 0; b < e->cache.batch; b++) *kept += e->host_lengths[b];
}

static void ekv_cuda__cycle_close(void *state)
{
    ekv_cuda__cycle_free((ekv_cuda__cycle *)state);
    ekv_free(state);
}

static const ekv_cycle_backend ekv_cuda__cycle_backend = {
#ifdef EKV_EMULATOR_ACTIVE
    EKV_BACKEND_EMULATOR,
#else
    EKV_BACKEND_CUDA,
#endif
    ekv_cuda__cycle_prepare,      ekv_cuda__cycle_open,        ekv_cuda__cycle_run_loop,
    ekv_cuda__cycle_last_outputs, ekv_cuda__cycle_layer_bytes, ekv_cuda__cycle_close};

EKV_CUDA_DEF ekv_result ekv_cuda_cycle_outputs(const ekv_config *c, ekv_variant v, float *outputs)
{
    return ekv_cycle_outputs_on(c, &ekv_cuda__cycle_backend, v, outputs);
}

EKV_CUDA_DEF ekv_result ekv_cuda_cycle_run(const ekv_config *c, ekv_report *report)
{
    return ekv_cycle_run_on(c, &ekv_cuda__cycle_backend, report);
}

/* >>dispatch (implementation) =============================================== */

EKV_CUDA_DEF const ekv_device_backend *ekv_cuda_device_backend(void)
{
    static const ekv_device_backend device = {
#ifdef EKV_EMULATOR_ACTIVE
        EKV_BACKEND_EMULATOR,
#else
        EKV_BACKEND_CUDA,
#endif
        ekv_cuda_run, ekv_cuda_cycle_run};
    return &device;
}

EKV_CUDA_DEF ekv_result ekv_cuda_abi_bench_open(int count, const char *const *args,
                                                ekv_abi_bench **bench)
{
    return ekv_abi_bench_open_on(count, args, ekv_cuda_device_backend(), bench);
}

#endif /* EKV_NO_BENCH */

#endif /* EKV_CUDA_IMPLEMENTATION_DONE */
#endif /* EKV_IMPLEMENTATION */
