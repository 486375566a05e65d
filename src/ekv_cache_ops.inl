/* >>cacheops: the elastic cache on the host: create, prefill, append, compress ========= */

/* The CPU reference of the device cache: every rule of ekv.h >>cacheops is decided here,
   and the kernels of src/ekv_cuda_cache.inl follow the same operation order. */

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
    size_t rows, per_slot;
    if (!cache || cache->batch < 1 || cache->kv_heads < 1 || cache->capacity < 1) return 0;
    rows = (size_t)cache->batch * (size_t)cache->kv_heads * (size_t)cache->capacity;
    per_slot = 2 * (ekv_dtype_row_bytes(cache->dtype, cache->head_dim) +
                    ekv_dtype_row_scale_bytes(cache->dtype, cache->head_dim)) +
               (cache->bias ? sizeof(float) : 0);
    return rows * per_slot + (cache->dtype == EKV_DTYPE_FP8
                                  ? 2 * sizeof(float) * (size_t)cache->batch * (size_t)cache->kv_heads
                                  : 0);
}

EKV_DEF ekv_result ekv_cache_create(ekv_host_cache *cache, ekv_dtype dtype, int batch,
                                    int kv_heads, int head_dim, int capacity, int with_bias)
{
    const char *fn = "ekv_cache_create";
    size_t rows, row_bytes, scale_bytes, cells;
    if (!cache) return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: NULL cache", fn);
    memset(cache, 0, sizeof *cache);
    if ((int)dtype < 0 || dtype >= EKV_DTYPE_COUNT)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: unknown dtype %d", fn, (int)dtype);
    if (batch < 1 || kv_heads < 1 || head_dim < 1 || capacity < 1)
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "%s: batch (%d), kv_heads (%d), head_dim (%d) and capacity (%d) "
                             "must be positive", fn, batch, kv_heads, head_dim, capacity);
    if ((dtype == EKV_DTYPE_INT4 || dtype == EKV_DTYPE_F16 || dtype == EKV_DTYPE_BF16) &&
        head_dim % 2 != 0)
        return ekv_set_error(EKV_ERR_UNSUPPORTED, "%s: head_dim %d must be even for %s", fn,
                             head_dim, ekv_dtype_name(dtype));
    row_bytes = ekv_dtype_row_bytes(dtype, head_dim);
    scale_bytes = ekv_dtype_row_scale_bytes(dtype, head_dim);
    rows = (size_t)batch * (size_t)kv_heads;
    if (!ekv__mul_size(rows, (size_t)capacity, &rows) || !ekv__mul_size(rows, row_bytes, &cells))
        return ekv_set_error(EKV_ERR_OUT_OF_MEMORY, "%s: cache too large to address", fn);
    cache->dtype = dtype;
    cache->batch = batch;
    cache->kv_heads = kv_heads;
    cache->head_dim = head_dim;
    cache->capacity = capacity;
    cache->lengths = (int *)ekv__alloc((size_t)batch, sizeof(int));
    cache->compressed = (int *)ekv__alloc((size_t)batch, sizeof(int));
    cache->k = (unsigned char *)ekv__alloc(rows, row_bytes);
    cache->v = (unsigned char *)ekv__alloc(rows, row_bytes);
    if (dtype == EKV_DTYPE_FP8) {
        cache->k_scales = (unsigned char *)ekv__alloc((size_t)batch * (size_t)kv_heads, sizeof(float));
        cache->v_scales = (unsigned char *)ekv__alloc((size_t)batch * (size_t)kv_heads, sizeof(float));
    } else if (scale_bytes) {
        cache->k_scales = (unsigned char *)ekv__alloc(rows, scale_bytes);
        cache->v_scales = (unsigned char *)ekv__alloc(rows, scale_bytes);
    }
    if (with_bias) cache->bias = (float *)ekv__alloc(rows, sizeof(float));
    if (!cache->lengths || !cache->compressed || !cache->k || !cache->v ||
        ((dtype == EKV_DTYPE_FP8 || scale_bytes) && (!cache->k_scales || !cache->v_scales)) ||
        (with_bias && !cache->bias)) {
        ekv_cache_free(cache);
        return EKV_ERR_OUT_OF_MEMORY;
    }
    return EKV_SUCCESS;
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
                float *head_scale = ekv__elastic_head_scale(cache, which, b, h);
                if (head_scale && *head_scale == 0.0f)
                    *head_scale = ekv__amax(x, (size_t)D) / EKV_FP8_MAX;
                ekv__elastic_store(cache, which, b, h, cache->lengths[b], x);
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
    if (!ekv__policy_valid(desc))
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
        const int first = cache->compressed[b], fresh = cache->lengths[b] - first;
        const int recent = desc->recent < fresh ? desc->recent : fresh;
        ekv_compress_desc region = *desc;
        int kept = 0;
        if (fresh - recent <= 0) continue; /* nothing older than the window yet */
        if (first > 0) region.sinks = 0;
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
