/* >>cuda_cycle: the inference cycle on the device (see ekv.h >>cycle) ================= */

/* The decode loop of src/ekv_cycle.inl with the same model, order of operations and
   result assembly, on one stream: projections by cuBLAS (cublasSgemm; nocache recomputes
   every token's k and v with it), the elastic device cache (src/ekv_cuda_cache.inl) for
   append and compress, ekv_cuda_attention for the attention. Phases are timed with CUDA
   events between them (one set per layer, read after each step). Builds need -lcublas.
   Included at the end of ekv_cuda.cuh's implementation, after ekv_cuda_cache.inl. */
#ifndef EKV_CUDA_CYCLE_INL
#define EKV_CUDA_CYCLE_INL

#include <cublas_v2.h>

/* The cycle on the current CUDA device (config->device): checks the device and that the
   cycle's estimated bytes fit in its free memory (EKV_ERR_OUT_OF_MEMORY otherwise, before
   allocating), then fills `report` like ekv_cycle_run. */
EKV_CUDA_DEF ekv_result ekv_cuda_cycle_run(const ekv_config *config, ekv_report *report);
/* ekv_cycle_outputs on the device: every step's attention outputs, copied to the host
   array outputs [decode_tokens][layers][batch][heads][head_dim]. */
EKV_CUDA_DEF ekv_result ekv_cuda_cycle_outputs(const ekv_config *config, ekv_variant variant,
                                               float *outputs);

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
    const ekv__cycle_model *model; /* host model: sizes, settings */
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
    ekv__free(s->caches);
    ekv__free(s->plans);
    ekv__free(s->lengths);
    ekv__free(s->ring_count);
    ekv__free(s->events);
    memset(s, 0, sizeof *s);
}

static ekv_result ekv_cuda__cycle_alloc(void **p, size_t bytes, double *total)
{
    *total += (double)bytes;
    return EKV_CUDA__CHECK(cudaMalloc(p, bytes > 0 ? bytes : 1));
}

static ekv_result ekv_cuda__cycle_make(const ekv_config *c, const ekv__cycle_model *m, ekv_variant v,
                                       ekv_cuda__cycle *s)
{
    const size_t kv_width = (size_t)m->kv_heads * (size_t)m->head_dim;
    const size_t wq_n = (size_t)m->layers * (size_t)m->hidden * (size_t)m->hidden;
    const size_t wkv_n = (size_t)m->layers * (size_t)m->hidden * kv_width;
    const size_t x_n = (size_t)m->layers * (size_t)m->batch * (size_t)m->tokens * (size_t)m->hidden;
    const int topk = v == EKV_VARIANT_ELASTIC && m->compress.policy == EKV_POLICY_TOPK;
    const int with_bias = v == EKV_VARIANT_ELASTIC && m->compress.policy == EKV_POLICY_POOL;
    const int capacity = v == EKV_VARIANT_NOCACHE ? m->tokens : ekv__cycle_capacity(c, v);
    const int count = ekv__cycle_cache_count(v, m->layers);
    double model_bytes = 0.0;
    size_t workspace = 0;
    ekv_result result = EKV_SUCCESS;
    int i;
    memset(s, 0, sizeof *s);
    s->model = m;
    s->variant = v;
    s->caches = (ekv_cuda_elastic_cache *)ekv__alloc((size_t)count, sizeof(ekv_cuda_elastic_cache));
    s->plans = (ekv_cuda_attention_plan *)ekv__alloc((size_t)count, sizeof(ekv_cuda_attention_plan));
    s->lengths = (int *)ekv__alloc((size_t)m->batch, sizeof(int));
    s->ring_count = (int *)ekv__alloc((size_t)m->layers, sizeof(int));
    s->events = (cudaEvent_t *)ekv__alloc((size_t)(1 + 4 * m->layers), sizeof(cudaEvent_t));
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
        EKV_CUDA__TRY_EKV(ekv_cuda_elastic_create(&s->caches[i], ekv__cycle_dtype(c, v), m->batch,
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
    const ekv__cycle_model *m = s->model;
    return s->x + (((size_t)layer * (size_t)m->batch + (size_t)b) * (size_t)m->tokens + (size_t)token) *
                      (size_t)m->hidden;
}

/* k and v of tokens [0, count) of layer l into k_all/v_all [batch][kv_heads][tokens][D]:
   one GEMM per (sequence, kv head), its output rows landing in place. */
static ekv_result ekv_cuda__cycle_project_all(ekv_cuda__cycle *s, int l, int count)
{
    const ekv__cycle_model *m = s->model;
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
    const ekv__cycle_model *m = s->model;
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
    const ekv__cycle_model *m = s->model;
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

static int ekv_cuda__cycle_cache_index(const ekv_cuda__cycle *s, int layer)
{
    if (s->variant == EKV_VARIANT_NOCACHE) return 0;
    return ekv__cycle_is_shared(s->variant) ? ekv__cycle_cache_layer(s->variant, layer, s->model->layers) / 2
                                            : layer;
}

static ekv_result ekv_cuda__cycle_prefill(ekv_cuda__cycle *s)
{
    const ekv__cycle_model *m = s->model;
    ekv_result r = EKV_SUCCESS;
    int l, b, t;
    for (b = 0; b < m->batch; b++) s->lengths[b] = m->prompt;
    if (s->variant == EKV_VARIANT_NOCACHE) return EKV_SUCCESS;
    for (l = 0; l < m->layers && r == EKV_SUCCESS; l++) {
        if (ekv__cycle_cache_layer(s->variant, l, m->layers) != l) continue;
        r = ekv_cuda__cycle_project_all(s, l, m->prompt);
        if (r == EKV_SUCCESS)
            r = ekv_cuda_elastic_prefill(&s->caches[ekv_cuda__cycle_cache_index(s, l)], s->k_all, s->v_all,
                                         m->tokens, s->lengths, s->stream);
        if (r == EKV_SUCCESS && s->ring) {
            s->ring_count[l] = 0;
            for (t = m->prompt - (m->prompt < m->observe ? m->prompt : m->observe); t < m->prompt && r == EKV_SUCCESS; t++)
                r = ekv_cuda__cycle_project(s, l, t, 0);
        }
        if (r == EKV_SUCCESS && ekv__cycle_anchor(m, s->variant, m->compress_every))
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

/* One decode loop (see ekv__cycle_cpu_loop): events e[0] at the step's start, then per
   layer after projection, append, attention and compress. */
static ekv_result ekv_cuda__cycle_loop(ekv_cuda__cycle *s, ekv__cycle_timing *timing, int rep, float *record)
{
    const ekv__cycle_model *m = s->model;
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
            const int owner = ekv__cycle_cache_layer(s->variant, l, m->layers) == l;
            ekv_cuda_elastic_cache *cache = &s->caches[ekv_cuda__cycle_cache_index(s, l)];
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
                                                 &s->plans[ekv_cuda__cycle_cache_index(s, l)], s->stream));
            EKV_CUDA__TRY(cudaEventRecord(e[3 + 4 * l], s->stream));
            if (ekv__cycle_anchor(m, s->variant, step)) EKV_CUDA__TRY_EKV(ekv_cuda__cycle_compress(s, l));
            EKV_CUDA__TRY(cudaEventRecord(e[4 + 4 * l], s->stream));
        }
        EKV_CUDA__TRY(cudaEventSynchronize(e[4 * m->layers]));
        if (timing) {
            float ms;
            for (l = 0; l < m->layers; l++)
                for (p = 0; p < 4; p++) {
                    static const int phase_of[4] = {EKV__PHASE_PROJECTION, EKV__PHASE_APPEND,
                                                    EKV__PHASE_ATTENTION, EKV__PHASE_COMPRESS};
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

static ekv_result ekv_cuda__cycle_device(const ekv_config *c)
{
    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess || count < 1)
        return ekv_set_error(EKV_ERR_NO_DEVICE, "no CUDA device (%s)",
                             err != cudaSuccess ? cudaGetErrorString(err) : "count 0");
    if (c->device >= count)
        return ekv_set_error(EKV_ERR_NO_DEVICE, "--device=%d: only %d CUDA devices", c->device, count);
    return EKV_CUDA__CHECK(cudaSetDevice(c->device));
}

EKV_CUDA_DEF ekv_result ekv_cuda_cycle_outputs(const ekv_config *c, ekv_variant v, float *outputs)
{
    ekv__cycle_model m;
    ekv_cuda__cycle s;
    ekv_result r;
    if (!c || !outputs || (unsigned)v >= EKV_VARIANT_ALL)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "ekv_cuda_cycle_outputs: NULL argument or variant all");
    if ((r = ekv_cuda__cycle_device(c)) != EKV_SUCCESS) return r;
    if ((r = ekv__cycle_model_make(c, &m)) != EKV_SUCCESS) return r;
    r = ekv_cuda__cycle_make(c, &m, v, &s);
    if (r == EKV_SUCCESS) {
        r = ekv_cuda__cycle_loop(&s, NULL, -1, outputs);
        ekv_cuda__cycle_free(&s);
    }
    ekv__cycle_model_free(&m);
    return r;
}

static ekv_result ekv_cuda__cycle_variant(const ekv_config *c, const ekv__cycle_model *m, ekv_variant v,
                                          const float *reference, ekv_report *report, ekv_cycle_result *out)
{
    const size_t last = (size_t)m->layers * (size_t)m->batch * (size_t)m->hidden;
    ekv_cuda__cycle s, base;
    ekv__cycle_timing t, tb;
    float *host_out = (float *)ekv__alloc(last, sizeof(float));
    ekv_result result;
    int i;
    memset(&s, 0, sizeof s);
    memset(&base, 0, sizeof base);
    memset(&t, 0, sizeof t);
    memset(&tb, 0, sizeof tb);
    if (!host_out) return EKV_ERR_OUT_OF_MEMORY;
    EKV_CUDA__TRY_EKV(ekv_cuda__cycle_make(c, m, v, &s));
    EKV_CUDA__TRY_EKV(ekv__cycle_timing_make(&t, c->reps, m->steps));
    if (c->paired_baseline) {
        EKV_CUDA__TRY_EKV(ekv_cuda__cycle_make(c, m, EKV_VARIANT_CACHE, &base));
        EKV_CUDA__TRY_EKV(ekv__cycle_timing_make(&tb, c->reps, m->steps));
    }
    for (i = 0; i < c->warmup + c->reps; i++) {
        const int rep = i - c->warmup;
        if (c->paired_baseline) EKV_CUDA__TRY_EKV(ekv_cuda__cycle_loop(&base, rep >= 0 ? &tb : NULL, rep, NULL));
        EKV_CUDA__TRY_EKV(ekv_cuda__cycle_loop(&s, rep >= 0 ? &t : NULL, rep, NULL));
    }
    EKV_CUDA__TRY_EKV(ekv__cycle_result_fill(c, m, v, &t, c->paired_baseline ? &tb : NULL, out));
    EKV_CUDA__TRY(cudaMemcpy(host_out, s.out, last * sizeof(float), cudaMemcpyDeviceToHost));
    if (reference) ekv__cycle_agreement(m, reference, host_out, out);
    (void)report;
done:
    ekv__cycle_timing_free(&t);
    ekv__cycle_timing_free(&tb);
    if (s.model) ekv_cuda__cycle_free(&s);
    if (base.model) ekv_cuda__cycle_free(&base);
    ekv__free(host_out);
    return result;
}

EKV_CUDA_DEF ekv_result ekv_cuda_cycle_run(const ekv_config *c, ekv_report *report)
{
    const int count = c->variant == EKV_VARIANT_ALL ? 6 : 1;
    const size_t last = (size_t)c->layers * (size_t)c->batch * (size_t)c->heads * (size_t)c->head_dim;
    ekv__cycle_model m;
    float *reference = NULL;
    size_t free_bytes = 0, total_bytes = 0;
    double need;
    ekv_result result;
    int i;
    memset(&m, 0, sizeof m);
    ekv_report_init(report, c);
    report->backend = EKV_BACKEND_CUDA;
#ifdef EKV_EMULATOR_ACTIVE
    report->backend = EKV_BACKEND_EMULATOR;
#endif
    if ((result = ekv_config_validate(c)) != EKV_SUCCESS) return result;
    if (!c->inference)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "ekv_cuda_cycle_run: the config does not ask for --inference");
    if ((result = ekv_cuda__cycle_device(c)) != EKV_SUCCESS) return result;
    ekv_cuda_device_info(c->device, &report->device);
    EKV_CUDA__TRY(cudaMemGetInfo(&free_bytes, &total_bytes));
    need = ekv_cycle_memory_estimate(c, c->variant) + (c->paired_baseline ? ekv__cycle_state_bytes(c, EKV_VARIANT_CACHE) : 0.0);
    if (need > 0.9 * (double)free_bytes)
        return ekv_set_error(EKV_ERR_OUT_OF_MEMORY,
                             "--inference needs about %.3g GB of device memory for --layers=%d --batch=%d "
                             "--seq=%d --decode_tokens=%d --heads=%d --dim=%d --variant=%s; %.3g GB are free",
                             need * 1e-9, c->layers, c->batch, c->seq_len, c->decode_tokens, c->heads,
                             c->head_dim, ekv_variant_name(c->variant), (double)free_bytes * 1e-9);
    report->cycles = (ekv_cycle_result *)ekv__alloc((size_t)count, sizeof(ekv_cycle_result));
    reference = (float *)ekv__alloc(last, sizeof(float));
    if (!report->cycles || !reference) {
        result = EKV_ERR_OUT_OF_MEMORY;
        goto done;
    }
    EKV_CUDA__TRY_EKV(ekv__cycle_model_make(c, &m));
    {
        /* the reference: cache's last-step outputs, one untimed loop */
        ekv_cuda__cycle ref;
        EKV_CUDA__TRY_EKV(ekv_cuda__cycle_make(c, &m, EKV_VARIANT_CACHE, &ref));
        result = ekv_cuda__cycle_loop(&ref, NULL, -1, NULL);
        if (result == EKV_SUCCESS)
            result = EKV_CUDA__CHECK(cudaMemcpy(reference, ref.out, last * sizeof(float), cudaMemcpyDeviceToHost));
        ekv_cuda__cycle_free(&ref);
        if (result != EKV_SUCCESS) goto done;
    }
    for (i = 0; i < count; i++) {
        const ekv_variant v = count == 1 ? c->variant : ekv__cycle_variants[i];
        result = ekv_cuda__cycle_variant(c, &m, v, v == EKV_VARIANT_CACHE ? NULL : reference, report,
                                         &report->cycles[i]);
        if (result == EKV_SUCCESS || report->cycles[i].samples_ms) report->cycle_count = i + 1;
        if (result != EKV_SUCCESS) goto done;
    }
    result = ekv__cycle_report_finish(report);
done:
    ekv__cycle_model_free(&m);
    ekv__free(reference);
    return result;
}

#endif /* EKV_CUDA_CYCLE_INL */
