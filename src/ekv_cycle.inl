/* >>cycle: the inference cycle on the host: model, CPU decode loop, results, JSON ====== */

/* Shared by both backends: the seeded model (weights and inputs), the projection that
   both the decode step and nocache's recompute use (so that their k and v agree bit for
   bit), the capacity of each variant's cache, the memory estimate, the assembly of a
   ekv_cycle_result from raw timings, and the JSON and table of the cycle. The CPU
   backend's decode loop follows; src/ekv_cuda_cycle.inl is the device one. */

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif

/* defined in ekv_core.inl, after this file */
static void ekv__json_stats(ekv_json *j, const ekv_stats *s);
static void ekv__cpu_name(char *out, size_t size);

enum { EKV__PHASE_PROJECTION = 0, EKV__PHASE_APPEND, EKV__PHASE_COMPRESS, EKV__PHASE_ATTENTION };
static const char *const ekv__phase_names[EKV_CYCLE_PHASES] = {"projection", "append", "compress",
                                                               "attention"};

/* The variants `all` stands for, in this order. */
static const ekv_variant ekv__cycle_variants[6] = {EKV_VARIANT_NOCACHE, EKV_VARIANT_CACHE,
                                                   EKV_VARIANT_INT8,    EKV_VARIANT_SHARED,
                                                   EKV_VARIANT_INT8_SHARED, EKV_VARIANT_ELASTIC};

typedef struct ekv__cycle_model {
    int batch, heads, kv_heads, head_dim, layers, prompt, steps;
    int tokens;          /* prompt + steps */
    int hidden;          /* heads x head_dim */
    int observe, compress_every;
    ekv_compress_desc compress;
    double softmax_scale;
    float *wq, *wk, *wv; /* [layers][hidden][heads x D], [layers][hidden][kv_heads x D] */
    float *x;            /* [layers][batch][tokens][hidden] */
} ekv__cycle_model;

static int ekv__cycle_is_int8(ekv_variant v)
{
    return v == EKV_VARIANT_INT8 || v == EKV_VARIANT_INT8_SHARED;
}

static int ekv__cycle_is_shared(ekv_variant v)
{
    return v == EKV_VARIANT_SHARED || v == EKV_VARIANT_INT8_SHARED;
}

static ekv_dtype ekv__cycle_dtype(const ekv_config *c, ekv_variant v)
{
    return ekv__cycle_is_int8(v) ? EKV_DTYPE_INT8 : c->kv_dtype;
}

/* Layer l reads the cache of layer cache_layer(l); it projects k and v only if it owns it. */
static int ekv__cycle_cache_layer(ekv_variant v, int layer, int layers)
{
    if (ekv__cycle_is_shared(v) && layer % 2 == 1) return layer - 1;
    (void)layers;
    return layer;
}

static int ekv__cycle_cache_count(ekv_variant v, int layers)
{
    if (v == EKV_VARIANT_NOCACHE) return 1; /* one scratch cache, rebuilt each layer and step */
    return ekv__cycle_is_shared(v) ? (layers + 1) / 2 : layers;
}

static int ekv__cycle_anchor(const ekv__cycle_model *m, ekv_variant v, int step)
{
    return v == EKV_VARIANT_ELASTIC && m->compress.policy != EKV_POLICY_NONE &&
           step % m->compress_every == 0;
}

/* Slots the cache of `v` needs: prompt + steps, or for elastic the largest length the
   sequence of prefill, elastic step, appends and anchor steps reaches (at least the
   prompt, which prefill writes before compressing). */
static int ekv__cycle_capacity(const ekv_config *c, ekv_variant v)
{
    ekv_compress_desc desc;
    int length = c->seq_len, compressed = 0, most = c->seq_len, t;
    int every = c->compress_every ? c->compress_every : c->compression;
    if (v != EKV_VARIANT_ELASTIC || c->policy == EKV_POLICY_NONE) return c->seq_len + c->decode_tokens;
    memset(&desc, 0, sizeof desc);
    desc.policy = c->policy;
    desc.compression = c->compression;
    desc.recent = c->recent;
    desc.sinks = c->sinks;
    desc.observe = c->observe;
    for (t = 0; t <= c->decode_tokens; t++) {
        if (t > 0) {
            length++;
            if (length > most) most = length;
        }
        if (t == 0 || t % every == 0) {
            const int fresh = length - compressed;
            const int recent = c->recent < fresh ? c->recent : fresh;
            if (fresh - recent > 0) {
                length = compressed + ekv_policy_kept(&desc, fresh);
                compressed = length - recent;
            }
        }
    }
    return most;
}

static double ekv__cycle_cache_alloc_bytes(ekv_dtype dtype, int batch, int kv_heads, int head_dim,
                                           int capacity, int with_bias)
{
    double rows = (double)batch * kv_heads * capacity;
    double per_slot = 2.0 * (double)(ekv_dtype_row_bytes(dtype, head_dim) +
                                     ekv_dtype_row_scale_bytes(dtype, head_dim)) +
                      (with_bias ? 4.0 : 0.0);
    return rows * per_slot + (dtype == EKV_DTYPE_FP8 ? 8.0 * batch * kv_heads : 0.0);
}

/* The model's own bytes: weights and inputs. */
static double ekv__cycle_model_bytes(const ekv_config *c)
{
    const double hidden = (double)c->heads * c->head_dim;
    const int kv_heads = c->kv_heads ? c->kv_heads : c->heads;
    const double weights = hidden * (double)(c->heads + 2 * kv_heads) * c->head_dim;
    const double inputs = (double)c->batch * (c->seq_len + c->decode_tokens) * hidden;
    return 4.0 * c->layers * (weights + inputs);
}

/* The variant's state: caches at capacity, the per-step vectors, nocache's recompute
   buffers, topk's observed queries. */
static double ekv__cycle_state_bytes(const ekv_config *c, ekv_variant v)
{
    const int kv_heads = c->kv_heads ? c->kv_heads : c->heads;
    const int tokens = c->seq_len + c->decode_tokens;
    const double hidden = (double)c->heads * c->head_dim;
    const ekv_dtype dtype = ekv__cycle_dtype(c, v);
    const int with_bias = v == EKV_VARIANT_ELASTIC && c->policy == EKV_POLICY_POOL;
    double bytes = ekv__cycle_cache_count(v, c->layers) *
                   ekv__cycle_cache_alloc_bytes(dtype, c->batch, kv_heads, c->head_dim,
                                                v == EKV_VARIANT_NOCACHE ? tokens
                                                                         : ekv__cycle_capacity(c, v),
                                                with_bias);
    bytes += 4.0 * c->batch * (hidden + 2.0 * kv_heads * c->head_dim) * (1 + c->layers); /* q k v, out */
    if (v == EKV_VARIANT_NOCACHE)
        bytes += 4.0 * c->batch * tokens * 2.0 * kv_heads * c->head_dim * 2.0; /* K, V and rows */
    if (v == EKV_VARIANT_ELASTIC && c->policy == EKV_POLICY_TOPK)
        bytes += 4.0 * c->batch * hidden * c->observe * (c->layers + 1);
    return bytes;
}

EKV_DEF double ekv_cycle_memory_estimate(const ekv_config *c, ekv_variant v)
{
    double most = 0.0;
    int i;
    if (!c) return 0.0;
    if (v != EKV_VARIANT_ALL) return ekv__cycle_model_bytes(c) + ekv__cycle_state_bytes(c, v);
    for (i = 0; i < 6; i++) {
        double b = ekv__cycle_state_bytes(c, ekv__cycle_variants[i]);
        if (b > most) most = b;
    }
    /* a variant and the cache it is compared with live together */
    return ekv__cycle_model_bytes(c) + most + ekv__cycle_state_bytes(c, EKV_VARIANT_CACHE);
}

/* Called by ekv_config_validate when config->inference is set. */
static ekv_result ekv__cycle_validate(const ekv_config *c)
{
    double need, have = 0.0;
    if (ekv__cycle_is_int8(c->variant) && c->kv_dtype != EKV_DTYPE_INT8 &&
        c->kv_dtype != EKV_DTYPE_F16)
        return ekv_set_error(EKV_ERR_UNSUPPORTED,
                             "--variant=%s stores the cache in int8, so --kv-dtype=%s contradicts it: "
                             "allowed --kv-dtype=int8 or no --kv-dtype (other dtypes: "
                             "--variant=cache or elastic)",
                             ekv_variant_name(c->variant), ekv_dtype_name(c->kv_dtype));
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
    need = ekv_cycle_memory_estimate(c, c->variant);
#if defined(_SC_PHYS_PAGES) && defined(_SC_PAGESIZE)
    have = (double)sysconf(_SC_PHYS_PAGES) * (double)sysconf(_SC_PAGESIZE);
#endif
    if (have > 0.0 && need > 0.9 * have)
        return ekv_set_error(EKV_ERR_UNSUPPORTED,
                             "--inference needs about %.3g GB of host memory for --layers=%d "
                             "--batch=%d --seq=%d --decode_tokens=%d --heads=%d --dim=%d, this "
                             "machine has %.3g GB: reduce one of them",
                             need * 1e-9, c->layers, c->batch, c->seq_len, c->decode_tokens,
                             c->heads, c->head_dim, have * 1e-9);
    return EKV_SUCCESS;
}

static void ekv__cycle_model_free(ekv__cycle_model *m)
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
static ekv_result ekv__cycle_model_make(const ekv_config *c, ekv__cycle_model *m)
{
    size_t wq_n, wkv_n, x_n;
    int l;
    memset(m, 0, sizeof *m);
    m->batch = c->batch;
    m->heads = c->heads;
    m->kv_heads = c->kv_heads ? c->kv_heads : c->heads;
    m->head_dim = c->head_dim;
    m->layers = c->layers;
    m->prompt = c->seq_len;
    m->steps = c->decode_tokens;
    m->tokens = m->prompt + m->steps;
    m->hidden = m->heads * m->head_dim;
    m->observe = c->observe;
    m->compress_every = c->compress_every ? c->compress_every : c->compression;
    m->compress.policy = c->policy;
    m->compress.compression = c->compression;
    m->compress.recent = c->recent;
    m->compress.sinks = c->sinks;
    m->compress.observe = c->observe;
    m->softmax_scale = c->softmax_scale > 0 ? c->softmax_scale : 1.0 / sqrt((double)c->head_dim);
    wq_n = (size_t)m->hidden * (size_t)m->hidden;
    wkv_n = (size_t)m->hidden * (size_t)m->kv_heads * (size_t)m->head_dim;
    x_n = (size_t)m->batch * (size_t)m->tokens * (size_t)m->hidden;
    m->wq = (float *)ekv__alloc((size_t)m->layers * wq_n, sizeof(float));
    m->wk = (float *)ekv__alloc((size_t)m->layers * wkv_n, sizeof(float));
    m->wv = (float *)ekv__alloc((size_t)m->layers * wkv_n, sizeof(float));
    m->x = (float *)ekv__alloc((size_t)m->layers * x_n, sizeof(float));
    if (!m->wq || !m->wk || !m->wv || !m->x) {
        ekv__cycle_model_free(m);
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

static const float *ekv__cycle_x(const ekv__cycle_model *m, int layer, int b, int token)
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

typedef struct ekv__cycle_timing {
    int reps, steps;
    double *step_ms;   /* [reps][steps] */
    double *phase_ms;  /* [reps][EKV_CYCLE_PHASES], totals over the loop */
    double *kv_bytes;  /* [steps], after each step (the same every repeat) */
    double *peak_bytes; /* [steps] */
} ekv__cycle_timing;

static void ekv__cycle_timing_free(ekv__cycle_timing *t)
{
    ekv__free(t->step_ms);
    ekv__free(t->phase_ms);
    ekv__free(t->kv_bytes);
    ekv__free(t->peak_bytes);
    memset(t, 0, sizeof *t);
}

static ekv_result ekv__cycle_timing_make(ekv__cycle_timing *t, int reps, int steps)
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

static double ekv__cycle_rep_total(const ekv__cycle_timing *t, int rep)
{
    double total = 0.0;
    int s;
    for (s = 0; s < t->steps; s++) total += t->step_ms[(size_t)rep * (size_t)t->steps + (size_t)s];
    return total;
}

/* Fills `out` from the variant's timings and, when paired, the baseline's (NULL
   otherwise). The agreement fields are filled by the caller. */
static ekv_result ekv__cycle_result_fill(const ekv_config *c, const ekv__cycle_model *m,
                                         ekv_variant v, const ekv__cycle_timing *t,
                                         const ekv__cycle_timing *baseline, ekv_cycle_result *out)
{
    const int reps = t->reps, steps = t->steps;
    double *column = NULL;
    ekv_result r;
    int i, s, p;
    memset(out, 0, sizeof *out);
    out->variant = v;
    out->decode_tokens = steps;
    out->layers = m->layers;
    out->kv_dtype = ekv__cycle_dtype(c, v);
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
    for (i = 0; i < reps; i++) {
        out->samples_ms[i] = ekv__cycle_rep_total(t, i);
        for (p = 0; p < EKV_CYCLE_PHASES; p++)
            out->phases_ms[p] += t->phase_ms[(size_t)i * EKV_CYCLE_PHASES + (size_t)p] / reps;
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
static void ekv__cycle_agreement(const ekv__cycle_model *m, const float *ref, const float *x,
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
static void ekv__cycle_step_bytes(ekv_report *report, const ekv_host_cache *caches,
                                  const ekv__cycle_model *m, ekv_variant v)
{
    int l, b;
    memset(&report->cache_bytes, 0, sizeof report->cache_bytes);
    report->kept_tokens_total = 0.0;
    for (l = 0; l < m->layers; l++) {
        const ekv_host_cache *cache = &caches[v == EKV_VARIANT_NOCACHE ? 0 : ekv__cycle_cache_layer(v, l, m->layers) / (ekv__cycle_is_shared(v) ? 2 : 1)];
        ekv_cache_bytes bytes = ekv_cache_bytes_of(cache->dtype, cache->batch, cache->kv_heads,
                                                   cache->head_dim, cache->lengths, cache->bias != NULL);
        report->cache_bytes.k += bytes.k;
        report->cache_bytes.v += bytes.v;
        report->cache_bytes.scales += bytes.scales;
        report->cache_bytes.bias += bytes.bias;
        report->cache_bytes.total += bytes.total;
        for (b = 0; b < cache->batch; b++) report->kept_tokens_total += cache->lengths[b];
    }
}

/* ---- the CPU decode loop ---- */

typedef struct ekv__cycle_cpu {
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

static ekv_result ekv__cycle_cpu_make(const ekv_config *c, const ekv__cycle_model *m, ekv_variant v,
                                      ekv__cycle_cpu *s)
{
    const size_t kv_width = (size_t)m->kv_heads * (size_t)m->head_dim;
    const int topk = v == EKV_VARIANT_ELASTIC && m->compress.policy == EKV_POLICY_TOPK;
    const int with_bias = v == EKV_VARIANT_ELASTIC && m->compress.policy == EKV_POLICY_POOL;
    const int capacity = v == EKV_VARIANT_NOCACHE ? m->tokens : ekv__cycle_capacity(c, v);
    ekv_result r;
    int i;
    memset(s, 0, sizeof *s);
    s->variant = v;
    s->caches = (ekv_host_cache *)ekv__alloc((size_t)ekv__cycle_cache_count(v, m->layers),
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
    for (i = 0; i < ekv__cycle_cache_count(v, m->layers); i++) {
        r = ekv_cache_create(&s->caches[i], ekv__cycle_dtype(c, v), m->batch, m->kv_heads,
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
static void ekv__cycle_cpu_project_all(const ekv__cycle_model *m, ekv__cycle_cpu *s, int l, int count)
{
    const size_t kv_width = (size_t)m->kv_heads * (size_t)m->head_dim;
    const size_t wkv_n = (size_t)m->hidden * kv_width;
    int b, which, t, h;
    for (b = 0; b < m->batch; b++)
        for (which = 0; which < 2; which++) {
            float *dest = which ? s->v_all : s->k_all;
            ekv__cycle_project(ekv__cycle_x(m, l, b, 0), (size_t)m->hidden, count, m->hidden,
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
static void ekv__cycle_cpu_project_q(const ekv__cycle_model *m, ekv__cycle_cpu *s, int l, int token)
{
    const size_t wq_n = (size_t)m->hidden * (size_t)m->hidden;
    int b, h;
    for (b = 0; b < m->batch; b++)
        ekv__cycle_project(ekv__cycle_x(m, l, b, token), (size_t)m->hidden, 1, m->hidden,
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
static ekv_result ekv__cycle_cpu_compress(const ekv__cycle_model *m, ekv__cycle_cpu *s, int l)
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
static ekv_result ekv__cycle_cpu_prefill(const ekv__cycle_model *m, ekv__cycle_cpu *s)
{
    ekv_result r;
    int l, b, t;
    for (b = 0; b < m->batch; b++) s->lengths[b] = m->prompt;
    if (s->variant == EKV_VARIANT_NOCACHE) return EKV_SUCCESS;
    for (l = 0; l < m->layers; l++) {
        if (ekv__cycle_cache_layer(s->variant, l, m->layers) != l) continue;
        ekv__cycle_cpu_project_all(m, s, l, m->prompt);
        r = ekv_cache_prefill(&s->caches[ekv__cycle_is_shared(s->variant) ? l / 2 : l], s->k_all,
                              s->v_all, m->tokens, s->lengths);
        if (r != EKV_SUCCESS) return r;
        if (s->q_ring) {
            s->ring_count[l] = 0;
            for (t = m->prompt - (m->prompt < m->observe ? m->prompt : m->observe); t < m->prompt; t++)
                ekv__cycle_cpu_project_q(m, s, l, t);
        }
        if (ekv__cycle_anchor(m, s->variant, m->compress_every)) {
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
static ekv_result ekv__cycle_cpu_loop(const ekv__cycle_model *m, ekv__cycle_cpu *s,
                                      ekv__cycle_timing *timing, int rep, float *record)
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
            const int owner = ekv__cycle_cache_layer(s->variant, l, m->layers);
            ekv_host_cache *cache =
                &s->caches[s->variant == EKV_VARIANT_NOCACHE ? 0
                                                             : (ekv__cycle_is_shared(s->variant) ? owner / 2 : owner)];
            t0 = ekv_time_ms();
            ekv__cycle_cpu_project_q(m, s, l, token);
            if (s->variant == EKV_VARIANT_NOCACHE) {
                ekv__cycle_cpu_project_all(m, s, l, token + 1);
            } else if (owner == l) {
                for (b = 0; b < m->batch; b++) {
                    ekv__cycle_project(ekv__cycle_x(m, l, b, token), (size_t)m->hidden, 1, m->hidden,
                                       m->wk + (size_t)l * wkv_n, (int)kv_width, s->k + (size_t)b * kv_width);
                    ekv__cycle_project(ekv__cycle_x(m, l, b, token), (size_t)m->hidden, 1, m->hidden,
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
            r = ekv_cpu_attention(cache, s->q, m->heads, scale, s->out + (size_t)l * out_layer);
            if (r != EKV_SUCCESS) return r;
            t3 = ekv_time_ms();
            if (ekv__cycle_anchor(m, s->variant, step) && (r = ekv__cycle_cpu_compress(m, s, l)) != EKV_SUCCESS)
                return r;
            t4 = ekv_time_ms();
            phase[EKV__PHASE_PROJECTION] += t1 - t0;
            phase[EKV__PHASE_APPEND] += t2 - t1;
            phase[EKV__PHASE_ATTENTION] += t3 - t2;
            phase[EKV__PHASE_COMPRESS] += t4 - t3;
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

EKV_DEF ekv_result ekv_cycle_outputs(const ekv_config *c, ekv_variant v, float *outputs)
{
    ekv__cycle_model m;
    ekv__cycle_cpu s;
    ekv_result r;
    if (!c || !outputs || (unsigned)v >= EKV_VARIANT_ALL)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "ekv_cycle_outputs: NULL argument or variant all");
    if ((r = ekv__cycle_model_make(c, &m)) != EKV_SUCCESS) return r;
    r = ekv__cycle_cpu_make(c, &m, v, &s);
    if (r == EKV_SUCCESS) r = ekv__cycle_cpu_loop(&m, &s, NULL, -1, outputs);
    ekv__cycle_cpu_free(&s);
    ekv__cycle_model_free(&m);
    return r;
}

/* One variant on the CPU: warmup + reps loops (ABAB with cache when paired), agreement
   with `reference` (cache's last-step outputs; NULL for cache itself). */
static ekv_result ekv__cycle_cpu_variant(const ekv_config *c, const ekv__cycle_model *m, ekv_variant v,
                                         const float *reference, ekv_report *report, ekv_cycle_result *out)
{
    ekv__cycle_cpu s, base;
    ekv__cycle_timing t, tb;
    const int paired = c->paired_baseline;
    ekv_result r;
    int i;
    memset(&base, 0, sizeof base);
    memset(&tb, 0, sizeof tb);
    if ((r = ekv__cycle_cpu_make(c, m, v, &s)) != EKV_SUCCESS) return r;
    if ((r = ekv__cycle_timing_make(&t, c->reps, m->steps)) != EKV_SUCCESS) goto done;
    if (paired && ((r = ekv__cycle_cpu_make(c, m, EKV_VARIANT_CACHE, &base)) != EKV_SUCCESS ||
                   (r = ekv__cycle_timing_make(&tb, c->reps, m->steps)) != EKV_SUCCESS))
        goto done;
    for (i = 0; i < c->warmup + c->reps; i++) {
        const int rep = i - c->warmup;
        /* ABAB: cache then the variant in every pair, so drift hits both alike */
        if (paired && (r = ekv__cycle_cpu_loop(m, &base, rep >= 0 ? &tb : NULL, rep, NULL)) != EKV_SUCCESS)
            goto done;
        if ((r = ekv__cycle_cpu_loop(m, &s, rep >= 0 ? &t : NULL, rep, NULL)) != EKV_SUCCESS) goto done;
    }
    if ((r = ekv__cycle_result_fill(c, m, v, &t, paired ? &tb : NULL, out)) != EKV_SUCCESS) goto done;
    if (reference) ekv__cycle_agreement(m, reference, s.out, out);
    if (out == &report->cycles[0]) ekv__cycle_step_bytes(report, s.caches, m, v);
done:
    ekv__cycle_timing_free(&t);
    ekv__cycle_timing_free(&tb);
    ekv__cycle_cpu_free(&s);
    ekv__cycle_cpu_free(&base);
    return r;
}

EKV_DEF ekv_result ekv_cycle_run(const ekv_config *c, ekv_report *report)
{
    ekv__cycle_model m;
    ekv__cycle_cpu ref;
    const int count = c->variant == EKV_VARIANT_ALL ? 6 : 1;
    ekv_result r;
    int i;
    ekv_report_init(report, c);
    report->backend = EKV_BACKEND_CPU;
    ekv__cpu_name(report->device.name, sizeof report->device.name);
#if defined(_SC_NPROCESSORS_ONLN)
    report->device.sm_count = (int)sysconf(_SC_NPROCESSORS_ONLN);
#endif
    if ((r = ekv_config_validate(c)) != EKV_SUCCESS) return r;
    if (!c->inference)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "ekv_cycle_run: the config does not ask for "
                                                  "--inference");
    report->cycles = (ekv_cycle_result *)ekv__alloc((size_t)count, sizeof(ekv_cycle_result));
    if (!report->cycles) return EKV_ERR_OUT_OF_MEMORY;
    if ((r = ekv__cycle_model_make(c, &m)) != EKV_SUCCESS) return r;
    /* the reference every variant is compared with: cache's last-step outputs */
    r = ekv__cycle_cpu_make(c, &m, EKV_VARIANT_CACHE, &ref);
    if (r == EKV_SUCCESS) r = ekv__cycle_cpu_loop(&m, &ref, NULL, -1, NULL);
    for (i = 0; i < count && r == EKV_SUCCESS; i++) {
        const ekv_variant v = count == 1 ? c->variant : ekv__cycle_variants[i];
        r = ekv__cycle_cpu_variant(c, &m, v, v == EKV_VARIANT_CACHE ? NULL : ref.out, report,
                                   &report->cycles[i]);
        if (r == EKV_SUCCESS || report->cycles[i].samples_ms) report->cycle_count = i + 1;
    }
    ekv__cycle_cpu_free(&ref);
    ekv__cycle_model_free(&m);
    if (r != EKV_SUCCESS) return r;
    return ekv__cycle_report_finish(report);
}

/* ---- JSON and table ---- */

static void ekv__cycle_json_one(const ekv_cycle_result *y, ekv_json *j)
{
    int p, l, i;
    ekv_json_object_begin(j);
    ekv_json_key(j, "variant"); ekv_json_string(j, ekv_variant_name(y->variant));
    ekv_json_key(j, "layers"); ekv_json_int(j, y->layers);
    ekv_json_key(j, "kv_dtype"); ekv_json_string(j, ekv_dtype_name(y->kv_dtype));
    ekv_json_key(j, "decode_tokens"); ekv_json_int(j, y->decode_tokens);
    /* the seed's fields: baseline = cache (paired), elastic = this variant */
    ekv_json_key(j, "baseline_total_ms");
    if (y->has_baseline) ekv_json_number(j, y->baseline_total_ms); else ekv_json_null(j);
    ekv_json_key(j, "elastic_total_ms"); ekv_json_number(j, y->total_ms);
    ekv_json_key(j, "baseline_tokens_per_sec");
    if (y->has_baseline) ekv_json_number(j, y->baseline_tokens_per_sec); else ekv_json_null(j);
    ekv_json_key(j, "elastic_tokens_per_sec"); ekv_json_number(j, y->tokens_per_sec);
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
        ekv__cycle_json_one(&report->cycles[0], j);
        return;
    }
    ekv_json_object_begin(j);
    ekv_json_key(j, "variant"); ekv_json_string(j, ekv_variant_name(EKV_VARIANT_ALL));
    ekv_json_key(j, "variants");
    ekv_json_array_begin(j);
    for (i = 0; i < report->cycle_count; i++) ekv__cycle_json_one(&report->cycles[i], j);
    ekv_json_array_end(j);
    ekv_json_object_end(j);
}

EKV_DEF void ekv_cycle_print_table(const ekv_report *report, FILE *out)
{
    int i;
    if (!report || report->cycle_count < 1) return;
    fprintf(out, "cycle      %d layers, prompt %d, %d decode steps (prefill not timed; MLPs and "
                 "layer dependency left out)\n",
            report->cycles[0].layers, report->config.seq_len, report->cycles[0].decode_tokens);
    for (i = 0; i < report->cycle_count; i++) {
        const ekv_cycle_result *y = &report->cycles[i];
        fprintf(out, "  %-11s %-5s total %.6g ms  %.1f tokens/s  proj %.3g  append %.3g  compress "
                     "%.3g  attn %.3g ms  KV %.4g MB  peak %.4g MB",
                ekv_variant_name(y->variant), ekv_dtype_name(y->kv_dtype), y->total_ms,
                y->tokens_per_sec, y->phases_ms[0], y->phases_ms[1], y->phases_ms[2], y->phases_ms[3],
                y->kv_cache_bytes * 1e-6, y->peak_device_bytes * 1e-6);
        if (y->has_agreement)
            fprintf(out, "  vs cache max|d| %.3g%s", y->agreement_max_abs_diff,
                    y->agreement_bitwise_equal ? " (bitwise)" : "");
        if (y->has_baseline)
            fprintf(out, "  speedup %.3fx [%.3f, %.3f]", y->speedup, y->speedup_ci_lo, y->speedup_ci_hi);
        fprintf(out, "\n");
    }
}
