/* >>enums (implementation) ================================================= */

static const char *const ekv__dtype_names[EKV_DTYPE_COUNT] = {"f32", "f16", "bf16",
                                                              "int8", "int4", "fp8"};
static const char *const ekv__policy_names[EKV_POLICY_COUNT] = {"none", "stride", "pool",
                                                                "window", "topk"};
static const char *const ekv__backend_names[4] = {"auto", "cuda", "cpu", "emulator"};
static const char *const ekv__variant_names[EKV_VARIANT_COUNT] = {
    "nocache", "cache", "int8", "shared", "int8-shared", "elastic", "all"};

EKV_DEF const char *ekv_dtype_name(ekv_dtype dtype)
{
    return (unsigned)dtype < EKV_DTYPE_COUNT ? ekv__dtype_names[dtype] : "?";
}
EKV_DEF const char *ekv_policy_name(ekv_policy policy)
{
    return (unsigned)policy < EKV_POLICY_COUNT ? ekv__policy_names[policy] : "?";
}
EKV_DEF const char *ekv_backend_name(ekv_backend backend)
{
    return (unsigned)backend < 4 ? ekv__backend_names[backend] : "?";
}
EKV_DEF const char *ekv_variant_name(ekv_variant variant)
{
    return (unsigned)variant < EKV_VARIANT_COUNT ? ekv__variant_names[variant] : "?";
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
    int i = ekv__find_name(text, ekv__dtype_names, EKV_DTYPE_COUNT);
    if (i < 0) return -1;
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
EKV_DEF int ekv_backend_parse(const char *text, ekv_backend *out)
{
    int i = ekv__find_name(text, ekv__backend_names, 4);
    if (i < 0) return -1;
    *out = (ekv_backend)i;
    return 0;
}
EKV_DEF int ekv_variant_parse(const char *text, ekv_variant *out)
{
    int i = ekv__find_name(text, ekv__variant_names, EKV_VARIANT_COUNT);
    /* v0..v4: the nanoGPT benchmark's names for the first five variants */
    if (i < 0 && text[0] == 'v' && text[1] >= '0' && text[1] <= '4' && text[2] == '\0')
        i = text[1] - '0';
    if (i < 0) return -1;
    *out = (ekv_variant)i;
    return 0;
}

/* >>config (implementation) ================================================ */

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
    c.sinks = 4;
    c.observe = 16;
    c.layers = 1;
    c.decode_tokens = 64;
    c.variant = EKV_VARIANT_ELASTIC;
    c.compress_every = 0;
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

EKV_DEF ekv_result ekv_config_validate(const ekv_config *c)
{
    int kv_heads;
    if (!c) return ekv_set_error(EKV_ERR_INVALID_ARG, "config is NULL");
    EKV__CHECK_RANGE("--batch", c->batch, 1, 4096);
    EKV__CHECK_RANGE("--seq", c->seq_len, 1, EKV__SEQ_MAX);
    EKV__CHECK_RANGE("--heads", c->heads, 1, 1024);
    EKV__CHECK_RANGE("--kv-heads", c->kv_heads, 0, 1024);
    if (c->head_dim != 64 && c->head_dim != 128 && c->head_dim != 256)
        return ekv_set_error(EKV_ERR_UNSUPPORTED,
                             "--dim=%d is not supported: allowed 64, 128, 256", c->head_dim);
    kv_heads = c->kv_heads ? c->kv_heads : c->heads;
    if (kv_heads > c->heads || c->heads % kv_heads != 0)
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "--kv-heads=%d must divide --heads=%d (GQA/MQA groups)", kv_heads,
                             c->heads);
    EKV__CHECK_RANGE("--compress", c->compression, 1, 64);
    if ((unsigned)c->kv_dtype >= EKV_DTYPE_COUNT)
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "--kv-dtype is invalid: allowed f32, f16, bf16, int8, int4, fp8");
    if ((unsigned)c->baseline_dtype >= EKV_DTYPE_COUNT)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "--baseline-dtype is invalid: allowed f32, "
                                                  "f16, bf16, int8, int4, fp8");
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
    EKV__CHECK_RANGE("--observe", c->observe, 1, 1024);
    EKV__CHECK_RANGE("--layers", c->layers, 1, 256);
    EKV__CHECK_RANGE("--decode_tokens", c->decode_tokens, 1, 65536);
    EKV__CHECK_RANGE("--compress-every", c->compress_every, 0, 65536);
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
    EKV__CHECK_RANGE("--reps", c->reps, 2, 1000000);
    EKV__CHECK_RANGE("--warmup", c->warmup, 0, 1000000);
    EKV__CHECK_RANGE("--inner_loops", c->inner_loops, 1, 100000);
    if (!(c->truncate_percent >= 0.0 && c->truncate_percent <= 49.0))
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "--truncate=%g is out of range: allowed 0..49 (percent cut from "
                             "each end)", c->truncate_percent);
    if ((unsigned)c->backend > EKV_BACKEND_EMULATOR)
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "--backend is invalid: allowed auto, cuda, cpu, emulator");
    EKV__CHECK_RANGE("--device", c->device, 0, 63);
    if (!(c->peak_bw_gbs >= 0.0 && c->peak_bw_gbs <= 1e6))
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "--peak-bw=%g is out of range: allowed (0, 1e6] GB/s",
                             c->peak_bw_gbs);
    if (c->baseline_dtype_set && !c->paired_baseline)
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "--baseline-dtype needs --paired-baseline");
    if (c->inference) return ekv__cycle_validate(c);
    return EKV_SUCCESS;
}

/* ---- command line ---- */

typedef enum ekv__flag_kind {
    EKV__FLAG_INT,    /* sweepable integer */
    EKV__FLAG_ENUM,   /* sweepable enum */
    EKV__FLAG_BOOL,   /* no value */
    EKV__FLAG_NUMBER, /* one double */
    EKV__FLAG_UINT64, /* one unsigned 64-bit integer */
    EKV__FLAG_TEXT,   /* one string */
    EKV__FLAG_SPECIAL /* --help, --version */
} ekv__flag_kind;

typedef struct ekv__flag {
    const char *name;
    const char *alias;
    ekv__flag_kind kind;
    size_t offset;   /* into ekv_config */
    long long lo, hi; /* integer range checked at parse time (also by validation) */
    const char *help;
} ekv__flag;

#define EKV__OFF(field) offsetof(ekv_config, field)

static const ekv__flag ekv__flags[] = {
    {"--seq", NULL, EKV__FLAG_INT, EKV__OFF(seq_len), 1, EKV__SEQ_MAX,
     "tokens in the cache per sequence (default 1024)"},
    {"--batch", NULL, EKV__FLAG_INT, EKV__OFF(batch), 1, 4096, "sequences (default 1)"},
    {"--heads", NULL, EKV__FLAG_INT, EKV__OFF(heads), 1, 1024, "query heads (default 16)"},
    {"--kv-heads", NULL, EKV__FLAG_INT, EKV__OFF(kv_heads), 1, 1024,
     "KV heads, divides --heads (default = heads)"},
    {"--dim", NULL, EKV__FLAG_INT, EKV__OFF(head_dim), 1, 1 << 20,
     "head dimension: 64, 128, 256 (default 64)"},
    {"--compress", NULL, EKV__FLAG_INT, EKV__OFF(compression), 1, 64,
     "compression ratio C, 1..64 (default 2)"},
    {"--kv-dtype", NULL, EKV__FLAG_ENUM, EKV__OFF(kv_dtype), 0, 0,
     "cache storage: f32, f16, bf16, int8, int4, fp8 (default f16)"},
    {"--policy", NULL, EKV__FLAG_ENUM, EKV__OFF(policy), 0, 0,
     "none, stride, pool, window, topk (default stride)"},
    {"--recent", NULL, EKV__FLAG_INT, EKV__OFF(recent), 0, EKV__SEQ_MAX,
     "exact recent window W (default 0)"},
    {"--sinks", NULL, EKV__FLAG_INT, EKV__OFF(sinks), 0, EKV__SEQ_MAX,
     "sink tokens kept by window and topk (default 4)"},
    {"--observe", NULL, EKV__FLAG_INT, EKV__OFF(observe), 1, 1024,
     "queries whose attention scores topk (default 16)"},
    {"--layers", NULL, EKV__FLAG_INT, EKV__OFF(layers), 1, 256,
     "layers of the inference cycle (default 1)"},
    {"--decode_tokens", "--decode-tokens", EKV__FLAG_INT, EKV__OFF(decode_tokens), 1, 65536,
     "decode steps of the inference cycle (default 64)"},
    {"--compress-every", NULL, EKV__FLAG_INT, EKV__OFF(compress_every), 0, 65536,
     "anchor period of the cycle, 0 = C (default 0)"},
    {"--variant", NULL, EKV__FLAG_ENUM, EKV__OFF(variant), 0, 0,
     "inference-cycle variant: nocache, cache, int8, shared, int8-shared, elastic, all, v0..v4"},
    {"--reps", NULL, EKV__FLAG_INT, EKV__OFF(reps), 2, 1000000, "kept samples (default 200)"},
    {"--warmup", NULL, EKV__FLAG_INT, EKV__OFF(warmup), 0, 1000000,
     "discarded samples (default 20)"},
    {"--inner_loops", "--inner-loops", EKV__FLAG_INT, EKV__OFF(inner_loops), 1, 100000,
     "launches per sample (default 64)"},
    {"--device", NULL, EKV__FLAG_INT, EKV__OFF(device), 0, 63, "CUDA device (default 0)"},
    {"--truncate", NULL, EKV__FLAG_NUMBER, EKV__OFF(truncate_percent), 0, 49,
     "trimmed mean: percent cut from each end, 0..49 (default 0)"},
    {"--peak-bw", NULL, EKV__FLAG_NUMBER, EKV__OFF(peak_bw_gbs), 0, 0,
     "theoretical peak bandwidth in GB/s (default: from the device)"},
    {"--softmax-scale", NULL, EKV__FLAG_NUMBER, EKV__OFF(softmax_scale), 0, 0,
     "softmax scale (default 1/sqrt(dim))"},
    {"--seed", NULL, EKV__FLAG_UINT64, EKV__OFF(seed), 0, 0, "data seed (default 42)"},
    {"--baseline-dtype", NULL, EKV__FLAG_ENUM, EKV__OFF(baseline_dtype), 0, 0,
     "dtype of the paired baseline (default f16 for int8/int4/fp8, else --kv-dtype)"},
    {"--backend", NULL, EKV__FLAG_ENUM, EKV__OFF(backend), 0, 0,
     "auto, cuda, cpu, emulator (default auto)"},
    {"--data", NULL, EKV__FLAG_TEXT, EKV__OFF(data_path), 0, 0,
     "structured, random, or a .npz / directory of q.npy k.npy v.npy (default structured)"},
    {"--out", NULL, EKV__FLAG_TEXT, EKV__OFF(out_path), 0, 0,
     "write the output to FILE instead of stdout"},
    {"--jsonl", NULL, EKV__FLAG_TEXT, EKV__OFF(jsonl_path), 0, 0,
     "append one JSON line per result to FILE"},
    {"--label", NULL, EKV__FLAG_TEXT, EKV__OFF(label), 0, 0, "free text stored in the result"},
    {"--dump-dir", NULL, EKV__FLAG_TEXT, EKV__OFF(dump_dir), 0, 0,
     "write q, k, v, out, ref .npy files into this existing directory"},
    {"--json", NULL, EKV__FLAG_BOOL, EKV__OFF(json), 0, 0, "one JSON object per result"},
    {"--paired-baseline", NULL, EKV__FLAG_BOOL, EKV__OFF(paired_baseline), 0, 0,
     "interleave a C=1 baseline ABAB; report the speedup with a 95% CI"},
    {"--hot", NULL, EKV__FLAG_BOOL, EKV__OFF(hot), 0, 0,
     "L2-resident reuse instead of cold timing"},
    {"--no-graphs", NULL, EKV__FLAG_BOOL, EKV__OFF(use_graphs), 0, 0,
     "launch one by one instead of a CUDA graph"},
    {"--inference", NULL, EKV__FLAG_BOOL, EKV__OFF(inference), 0, 0,
     "run the inference cycle (decode steps over layers, --variant)"},
    {"--quiet", NULL, EKV__FLAG_BOOL, EKV__OFF(quiet), 0, 0, "no progress or notices"},
    {"--help", "-h", EKV__FLAG_SPECIAL, 0, 0, 0, "this help"},
    {"--version", NULL, EKV__FLAG_SPECIAL, 0, 0, 0, "print the version"},
};

#define EKV__FLAG_COUNT (sizeof ekv__flags / sizeof ekv__flags[0])

EKV_DEF void ekv_cli_print_help(FILE *out)
{
    size_t i;
    fprintf(out,
            "ekv_bench %s - decode attention over an elastic KV cache: speed, bandwidth, "
            "accuracy\n\n"
            "usage: ekv_bench [--flag=value ...]\n"
            "A comma list on a workload flag (--seq=1024,4096) sweeps the cartesian product.\n\n",
            EKV_VERSION_STRING);
    for (i = 0; i < EKV__FLAG_COUNT; i++) {
        const ekv__flag *f = &ekv__flags[i];
        char name[64];
        if (f->kind == EKV__FLAG_BOOL || f->kind == EKV__FLAG_SPECIAL)
            snprintf(name, sizeof name, "%s", f->name);
        else
            snprintf(name, sizeof name, "%s=%s", f->name,
                     f->kind == EKV__FLAG_TEXT ? "TEXT" : (f->kind == EKV__FLAG_ENUM ? "NAME" : "N"));
        fprintf(out, "  %-22s %s%s\n", name, f->help,
                (f->kind == EKV__FLAG_INT || f->kind == EKV__FLAG_ENUM) &&
                        f->offset != EKV__OFF(reps) && f->offset != EKV__OFF(warmup) &&
                        f->offset != EKV__OFF(inner_loops) && f->offset != EKV__OFF(device) &&
                        f->offset != EKV__OFF(backend) && f->offset != EKV__OFF(baseline_dtype)
                    ? " [list]"
                    : "");
    }
    fprintf(out, "\nExit status: 0 success, 1 runtime failure (e.g. validation), 2 bad input.\n");
}

/* Sweepable: the workload flags. Measurement, device and output flags take one value. */
static int ekv__flag_sweepable(const ekv__flag *f)
{
    if (f->kind != EKV__FLAG_INT && f->kind != EKV__FLAG_ENUM) return 0;
    return f->offset != EKV__OFF(reps) && f->offset != EKV__OFF(warmup) &&
           f->offset != EKV__OFF(inner_loops) && f->offset != EKV__OFF(device) &&
           f->offset != EKV__OFF(backend) && f->offset != EKV__OFF(baseline_dtype);
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
    if (v < lo || v > hi) return ekv__range_error(flag, v, lo, hi);
    *out = (int)v;
    return EKV_SUCCESS;
}

static ekv_result ekv__parse_enum(const ekv__flag *f, const char *text, int *out)
{
    int ok = -1;
    size_t off = f->offset;
    if (off == EKV__OFF(kv_dtype) || off == EKV__OFF(baseline_dtype)) {
        ekv_dtype d = EKV_DTYPE_F32;
        ok = ekv_dtype_parse(text, &d);
        *out = (int)d;
        if (ok < 0)
            return ekv_set_error(EKV_ERR_INVALID_ARG,
                                 "%s='%s' is unknown: allowed f32, f16, bf16, int8, int4, fp8",
                                 f->name, text);
    } else if (off == EKV__OFF(policy)) {
        ekv_policy p = EKV_POLICY_NONE;
        ok = ekv_policy_parse(text, &p);
        *out = (int)p;
        if (ok < 0)
            return ekv_set_error(EKV_ERR_INVALID_ARG,
                                 "%s='%s' is unknown: allowed none, stride, pool, window, topk",
                                 f->name, text);
    } else if (off == EKV__OFF(backend)) {
        ekv_backend b = EKV_BACKEND_AUTO;
        ok = ekv_backend_parse(text, &b);
        *out = (int)b;
        if (ok < 0)
            return ekv_set_error(EKV_ERR_INVALID_ARG,
                                 "%s='%s' is unknown: allowed auto, cuda, cpu, emulator", f->name,
                                 text);
    } else if (off == EKV__OFF(variant)) {
        ekv_variant v = EKV_VARIANT_CACHE;
        ok = ekv_variant_parse(text, &v);
        *out = (int)v;
        if (ok < 0)
            return ekv_set_error(EKV_ERR_INVALID_ARG,
                                 "%s='%s' is unknown: allowed nocache, cache, int8, shared, "
                                 "int8-shared, elastic, all, v0..v4",
                                 f->name, text);
    }
    return EKV_SUCCESS;
}

static void ekv__config_set_int(ekv_config *c, size_t offset, int value)
{
    /* enum fields are int-sized in every ABI ekv targets; store through the right type */
    if (offset == EKV__OFF(kv_dtype)) c->kv_dtype = (ekv_dtype)value;
    else if (offset == EKV__OFF(baseline_dtype)) c->baseline_dtype = (ekv_dtype)value;
    else if (offset == EKV__OFF(policy)) c->policy = (ekv_policy)value;
    else if (offset == EKV__OFF(backend)) c->backend = (ekv_backend)value;
    else if (offset == EKV__OFF(variant)) c->variant = (ekv_variant)value;
    else memcpy((char *)c + offset, &value, sizeof value);
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
        if (f->offset == EKV__OFF(baseline_dtype)) c->baseline_dtype_set = 1;
        return EKV_SUCCESS;
    }
    if (f->kind == EKV__FLAG_NUMBER) {
        char *end;
        double v = strtod(value, &end);
        if (value[0] == '\0' || *end != '\0' || v != v)
            return ekv_set_error(EKV_ERR_INVALID_ARG, "%s='%s' is not a number", f->name, value);
        if (f->offset != EKV__OFF(truncate_percent) && !(v > 0.0))
            return ekv_set_error(EKV_ERR_INVALID_ARG, "%s=%s must be a positive number",
                                 f->name, value);
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
        size_t cap = f->offset == EKV__OFF(label) ? EKV_LABEL_MAX : EKV_PATH_MAX;
        if (strlen(value) >= cap)
            return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: value longer than %zu bytes", f->name,
                                 cap - 1);
        if (f->offset == EKV__OFF(data_path)) {
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
        } else if (value[0] == '\0' && f->offset != EKV__OFF(label)) {
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
    /* --baseline-dtype defaults to f16 for the quantized forms, else the same dtype */
    if (!out->baseline_dtype_set)
        out->baseline_dtype = out->kv_dtype >= EKV_DTYPE_INT8 ? EKV_DTYPE_F16 : out->kv_dtype;
    return EKV_SUCCESS;
}

EKV_DEF ekv_result ekv_cli_parse(int argc, char **argv, ekv_cli *cli, FILE *out)
{
    int i;
    size_t k;
    ekv_result r;
    memset(cli, 0, sizeof *cli);
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
        if (f->kind == EKV__FLAG_SPECIAL) {
            if (value) return ekv_set_error(EKV_ERR_INVALID_ARG, "%s takes no value", f->name);
            if (strcmp(f->name, "--help") == 0) ekv_cli_print_help(out);
            else fprintf(out, "ekv_bench %s\n", EKV_VERSION_STRING);
            return EKV_HELP_SHOWN;
        }
        if (f->kind == EKV__FLAG_BOOL) {
            int on = f->offset == EKV__OFF(use_graphs) ? 0 : 1;
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
        r = ekv__parse_value(cli, f, value);
        if (r != EKV_SUCCESS) return r;
    }
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
    report->config = *config;
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
    int kv_heads = c->kv_heads ? c->kv_heads : c->heads;
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
    ekv_json_key(j, "sm_count"); ekv_json_int(j, r->device.sm_count);
    ekv_json_key(j, "l2_bytes"); ekv_json_int(j, r->device.l2_bytes);
    ekv_json_key(j, "memory_bytes"); ekv_json_int(j, r->device.memory_bytes);
    ekv_json_key(j, "memory_clock_khz"); ekv_json_int(j, r->device.memory_clock_khz);
    ekv_json_key(j, "bus_width_bits"); ekv_json_int(j, r->device.bus_width_bits);
    ekv_json_key(j, "driver_version"); ekv_json_int(j, r->device.driver_version);
    ekv_json_key(j, "runtime_version"); ekv_json_int(j, r->device.runtime_version);
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
    ekv_json_number(j, c->softmax_scale > 0 ? c->softmax_scale : 1.0 / sqrt((double)c->head_dim));
    ekv_json_key(j, "reps"); ekv_json_int(j, c->reps);
    ekv_json_key(j, "warmup"); ekv_json_int(j, c->warmup);
    ekv_json_key(j, "inner_loops"); ekv_json_int(j, c->inner_loops);
    ekv_json_key(j, "truncate_percent"); ekv_json_number(j, c->truncate_percent);
    ekv_json_key(j, "cuda_graphs"); ekv_json_bool(j, c->use_graphs);
    ekv_json_key(j, "hot"); ekv_json_bool(j, c->hot);
    ekv_json_key(j, "paired_baseline"); ekv_json_bool(j, c->paired_baseline);
    ekv_json_key(j, "baseline_dtype");
    ekv_json_string(j, c->paired_baseline ? ekv_dtype_name(c->baseline_dtype) : NULL);
    ekv_json_key(j, "inference"); ekv_json_bool(j, c->inference);
    ekv_json_key(j, "layers"); ekv_json_int(j, c->layers);
    ekv_json_key(j, "decode_tokens"); ekv_json_int(j, c->decode_tokens);
    ekv_json_key(j, "variant"); ekv_json_string(j, ekv_variant_name(c->variant));
    ekv_json_key(j, "compress_every"); ekv_json_int(j, c->compress_every ? c->compress_every : c->compression);
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
        ekv_json_key(j, "kv_dtype"); ekv_json_string(j, ekv_dtype_name(c->baseline_dtype));
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
    if (bytes >= 1e9) fprintf(out, "%.3f GB", bytes * 1e-9);
    else if (bytes >= 1e6) fprintf(out, "%.3f MB", bytes * 1e-6);
    else if (bytes >= 1e3) fprintf(out, "%.3f kB", bytes * 1e-3);
    else fprintf(out, "%.0f B", bytes);
}

EKV_DEF void ekv_report_print_table(const ekv_report *r, FILE *out)
{
    const ekv_config *c = &r->config;
    const ekv_metrics *m = &r->metrics;
    const ekv_stats *s = &r->stats;
    int kv_heads = c->kv_heads ? c->kv_heads : c->heads;
    fprintf(out, "ekv %s  backend %s  device %s%s\n", EKV_VERSION_STRING,
            ekv_backend_name(r->backend), r->device.name, c->hot ? "  (hot: L2/cache resident)" : "  (cold)");
    fprintf(out, "workload   batch %d  seq %d  heads %d/%d  dim %d  %s  policy %s  C=%d  recent %d  sinks %d\n",
            c->batch, c->seq_len, c->heads, kv_heads, c->head_dim, ekv_dtype_name(c->kv_dtype),
            ekv_policy_name(c->policy), c->compression, c->recent, c->sinks);
    fprintf(out, "time       median %.6g ms  mean %.6g ms  std %.3g  cv %.2f%%  95%% CI median [%.6g, %.6g]  n %zu\n",
            s->median, s->mean, s->std, 100.0 * s->cv, s->ci95_median_lo, s->ci95_median_hi, s->n);
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
    ekv_cycle_print_table(r, out);
    if (r->notice[0]) fprintf(out, "notice     %s\n", r->notice);
}

/* >>workload (implementation) ============================================== */

EKV_DEF void ekv_workload_free(ekv_workload *w)
{
    ekv_data_free(&w->data);
    ekv_cache_free(&w->cache);
    ekv_cache_free(&w->baseline);
    ekv__free(w->reference_full);
    ekv__free(w->reference_cache);
    memset(w, 0, sizeof *w);
}

EKV_DEF ekv_result ekv_workload_prepare(const ekv_config *c, ekv_workload *w)
{
    ekv_result r;
    size_t out_count;
    ekv_cache_bytes full;
    memset(w, 0, sizeof *w);
    if ((r = ekv_config_validate(c)) != EKV_SUCCESS) return r;
    if (c->data == EKV_DATA_FILE) {
        r = ekv_data_load(c->data_path, c->observe, &w->data);
        if (r != EKV_SUCCESS) return r;
        if (w->data.batch != c->batch || w->data.heads != c->heads ||
            w->data.kv_heads != (c->kv_heads ? c->kv_heads : c->heads) ||
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
        d.kv_heads = c->kv_heads ? c->kv_heads : c->heads;
        d.head_dim = c->head_dim;
        d.seq_len = c->seq_len;
        d.observe = c->observe;
        d.seed = c->seed;
        r = ekv_data_generate(&d, &w->data);
        if (r != EKV_SUCCESS) return r;
    }
    w->softmax_scale = c->softmax_scale > 0 ? c->softmax_scale : 1.0 / sqrt((double)c->head_dim);
    w->compress.policy = c->policy;
    w->compress.compression = c->compression;
    w->compress.recent = c->recent;
    w->compress.sinks = c->sinks;
    w->compress.observe = c->observe;
    r = ekv_cache_build(&w->data, &w->compress, c->kv_dtype, w->softmax_scale, &w->cache);
    if (r == EKV_SUCCESS && c->paired_baseline) {
        ekv_compress_desc none = w->compress;
        none.policy = EKV_POLICY_NONE;
        none.compression = 1;
        r = ekv_cache_build(&w->data, &none, c->baseline_dtype, w->softmax_scale, &w->baseline);
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
    snprintf(path, sizeof path, "%s/out.npy", dir);
    if ((r = ekv_npy_write(path, out, 3, qshape)) != EKV_SUCCESS) return r;
    snprintf(path, sizeof path, "%s/ref.npy", dir);
    return ekv_npy_write_f64(path, w->reference_full, 3, qshape);
}

/* >>cpu (implementation) =================================================== */

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif

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

EKV_DEF double ekv_cpu_copy_bandwidth_gbs(size_t bytes, int reps)
{
    unsigned char *a = (unsigned char *)ekv__alloc(bytes, 1);
    unsigned char *b = (unsigned char *)ekv__alloc(bytes, 1);
    double *times = (double *)ekv__alloc((size_t)reps, sizeof(double));
    double best = ekv__nan();
    int i;
    if (a && b && times) {
        memset(a, 1, bytes);
        memcpy(b, a, bytes); /* touch both buffers before timing */
        for (i = 0; i < reps; i++) {
            double t0 = ekv_time_ms();
            memcpy(i % 2 ? a : b, i % 2 ? b : a, bytes);
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
    size_t slots = (size_t)src->batch * src->kv_heads * src->capacity;
    size_t row = ekv_dtype_row_bytes(src->dtype, src->head_dim);
    size_t scale_bytes = 0;
    *dst = *src;
    dst->lengths = NULL;
    dst->k = dst->v = dst->k_scales = dst->v_scales = NULL;
    dst->bias = NULL;
    dst->compressed = NULL; /* a timing copy is read, never grown or compressed */
    if (src->dtype == EKV_DTYPE_INT8 || src->dtype == EKV_DTYPE_INT4)
        scale_bytes = slots * ekv_dtype_row_scale_bytes(src->dtype, src->head_dim);
    else if (src->dtype == EKV_DTYPE_FP8)
        scale_bytes = (size_t)src->batch * src->kv_heads * sizeof(float);
    dst->lengths = (int *)ekv__alloc((size_t)src->batch, sizeof(int));
    dst->k = (unsigned char *)ekv__alloc(slots, row);
    dst->v = (unsigned char *)ekv__alloc(slots, row);
    if (scale_bytes) {
        dst->k_scales = (unsigned char *)ekv__alloc(scale_bytes, 1);
        dst->v_scales = (unsigned char *)ekv__alloc(scale_bytes, 1);
    }
    if (src->bias) dst->bias = (float *)ekv__alloc(slots, sizeof(float));
    if (!dst->lengths || !dst->k || !dst->v || (scale_bytes && (!dst->k_scales || !dst->v_scales)) ||
        (src->bias && !dst->bias)) {
        ekv_cache_free(dst);
        return EKV_ERR_OUT_OF_MEMORY;
    }
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
                                  float scale, float *out, int inner_loops, double *ms)
{
    int i;
    double t0 = ekv_time_ms();
    for (i = 0; i < inner_loops; i++) {
        ekv_result r = ekv_cpu_attention(&s->copies[*next], q, heads, scale, out);
        if (r != EKV_SUCCESS) return r;
        *next = (*next + 1) % s->count;
    }
    *ms = (ekv_time_ms() - t0) / inner_loops;
    return EKV_SUCCESS;
}

static double ekv__cpu_measured_bw = -1.0;

EKV_DEF ekv_result ekv_cpu_run(const ekv_config *c, const ekv_workload *w, ekv_report *report)
{
    size_t out_count = (size_t)w->data.batch * w->data.heads * w->data.head_dim;
    float *out = (float *)ekv__alloc(out_count, sizeof(float));
    float scale = (float)w->softmax_scale;
    ekv__cpu_set cand, base;
    ekv_result r = EKV_SUCCESS;
    int copies, i, next_c = 0, next_b = 0, b;
    double kept = 0;
    memset(&cand, 0, sizeof cand);
    memset(&base, 0, sizeof base);
    ekv_report_init(report, c);
    report->backend = EKV_BACKEND_CPU;
    if (!out) return EKV_ERR_OUT_OF_MEMORY;
    ekv__cpu_name(report->device.name, sizeof report->device.name);
#if defined(_SC_NPROCESSORS_ONLN)
    report->device.sm_count = (int)sysconf(_SC_NPROCESSORS_ONLN);
#endif
    if (ekv__cpu_measured_bw < 0) ekv__cpu_measured_bw = ekv_cpu_copy_bandwidth_gbs(64u << 20, 7);
    report->device.peak_bw_measured_gbs = ekv__cpu_measured_bw;

    /* validation before timing: poison, run once, compare with the references */
    for (i = 0; i < (int)out_count; i++) out[i] = ekv__nan();
    r = ekv_cpu_attention(&w->cache, w->data.q, w->data.heads, scale, out);
    if (r != EKV_SUCCESS) goto done;
    ekv_workload_accuracy(w, out, &report->accuracy);
    if (!(report->accuracy.kernel.rel_l2 <= 1e-4)) {
        r = ekv_set_error(EKV_ERR_VALIDATION,
                          "CPU attention differs from the double reference over the same cache: "
                          "rel_l2 %.3e > 1e-4", report->accuracy.kernel.rel_l2);
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
    for (i = 0; i < c->warmup + c->reps; i++) {
        double ms_c, ms_b = 0;
        /* ABAB: baseline then candidate in every pair, so drift hits both alike */
        if (c->paired_baseline &&
            (r = ekv__cpu_sample(&base, &next_b, w->data.q, w->data.heads, scale, out,
                                 c->inner_loops, &ms_b)) != EKV_SUCCESS)
            goto done;
        if ((r = ekv__cpu_sample(&cand, &next_c, w->data.q, w->data.heads, scale, out,
                                 c->inner_loops, &ms_c)) != EKV_SUCCESS)
            goto done;
        if (i >= c->warmup) {
            report->samples_ms[i - c->warmup] = ms_c;
            if (c->paired_baseline) report->baseline_samples_ms[i - c->warmup] = ms_b;
        }
    }
    r = ekv_report_finish(report);
done:
    ekv__cpu_set_free(&cand);
    ekv__cpu_set_free(&base);
    ekv__free(out);
    return r;
}
