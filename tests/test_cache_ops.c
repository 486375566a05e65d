/* test_cache_ops.c - the elastic cache on the host (ekv.h >>cacheops) against its documented
   semantics: hand-worked cases of every policy over two anchor steps (sinks only for a
   sequence's real first tokens, ties to the older token, pool bias ln(count)); the fp8
   head-scale rules; a single compress of a freshly prefilled cache equals ekv_cache_build
   (bit for bit where ekv.h promises it, close elsewhere); append + compress over several
   anchor steps on ragged batches with an active mask, every dtype x policy x recent window,
   checked slot by slot against an independent test-side model that tracks which original
   tokens each slot holds; memory bytes equal to the formula; error paths.
   Inputs are fresh random data each run; the seed is printed (rerun with --seed=N).

   Build: cc -std=c99 -O2 -Wall -Wextra -I. -o build/test_cache_ops tests/test_cache_ops.c tests/ekv_impl.c -lm */
#include "ekv.h"
#include "tests/ekv_test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static uint64_t run_seed;
static ekv_rng test_rng;

static const ekv_dtype all_dtypes[EKV_DTYPE_COUNT] = {EKV_DTYPE_F32, EKV_DTYPE_F16, EKV_DTYPE_BF16,
                                                      EKV_DTYPE_INT8, EKV_DTYPE_INT4, EKV_DTYPE_FP8};

/* ---- helpers ------------------------------------------------------------- */

static ekv_compress_desc make_desc(ekv_policy policy, int compression, int recent, int sinks)
{
    ekv_compress_desc d;
    memset(&d, 0, sizeof d);
    d.policy = policy;
    d.compression = compression;
    d.recent = recent;
    d.sinks = sinks;
    d.observe = 4;
    return d;
}

/* ekv_cache_create, then every stored byte past the (zero) lengths poisoned, so that no
   check can pass on memory the operations never wrote. fp8 head scales stay 0: creation
   defines them so. */
static ekv_result create_poisoned(ekv_host_cache *c, ekv_dtype dtype, int batch, int kv_heads,
                                  int head_dim, int capacity, int with_bias)
{
    ekv_result r = ekv_cache_create(c, dtype, batch, kv_heads, head_dim, capacity, with_bias);
    size_t rows = (size_t)batch * kv_heads * capacity;
    if (r != EKV_SUCCESS) return r;
    memset(c->k, 0xa5, rows * ekv_dtype_row_bytes(dtype, head_dim));
    memset(c->v, 0x5a, rows * ekv_dtype_row_bytes(dtype, head_dim));
    if (ekv_dtype_row_scale_bytes(dtype, head_dim)) {
        memset(c->k_scales, 0xa5, rows * ekv_dtype_row_scale_bytes(dtype, head_dim));
        memset(c->v_scales, 0x5a, rows * ekv_dtype_row_scale_bytes(dtype, head_dim));
    }
    if (c->bias) memset(c->bias, 0xff, rows * sizeof(float)); /* NaN */
    return r;
}

static float slot_value(const ekv_host_cache *c, int which, int b, int h, int s)
{
    float row[64];
    ekv_cache_row(c, which, b, h, s, row);
    return row[0];
}

/* A one-sequence f32 cache with D = 4 whose token t has K = (t, 0, 0, 0) and V =
   (100 + t, ...), so that a slot's K[0] names the token (or the mean of a pooled group). */
static void hand_cache(ekv_host_cache *c, int tokens, int capacity, int with_bias)
{
    float *k = (float *)calloc((size_t)tokens * 4 + 4, sizeof(float));
    float *v = (float *)calloc((size_t)tokens * 4 + 4, sizeof(float));
    int t, length = tokens;
    for (t = 0; t < tokens; t++) {
        k[t * 4] = (float)t;
        v[t * 4] = 100.0f + (float)t;
        v[t * 4 + 1] = 1.0f;
    }
    CHECK(create_poisoned(c, EKV_DTYPE_F32, 1, 1, 4, capacity, with_bias) == EKV_SUCCESS, "%s",
          ekv_last_error());
    CHECK(ekv_cache_prefill(c, k, v, tokens > 0 ? tokens : 1, &length) == EKV_SUCCESS, "%s",
          ekv_last_error());
    free(k);
    free(v);
}

static void hand_append(ekv_host_cache *c, int first, int count)
{
    int t;
    for (t = first; t < first + count; t++) {
        float k[4] = {0.0f, 0.0f, 0.0f, 0.0f}, v[4] = {0.0f, 1.0f, 0.0f, 0.0f};
        k[0] = (float)t;
        v[0] = 100.0f + (float)t;
        CHECK(ekv_cache_append(c, k, v, NULL) == EKV_SUCCESS, "%s", ekv_last_error());
    }
}

/* The cache holds exactly `expected` (K[0] of each slot) with V[0] = K[0] + 100. */
static void check_slots(const ekv_host_cache *c, const float *expected, int count, int compressed)
{
    int s;
    CHECK(c->lengths[0] == count, "length %d, want %d", c->lengths[0], count);
    CHECK(c->compressed[0] == compressed, "compressed %d, want %d", c->compressed[0], compressed);
    for (s = 0; s < count && s < c->lengths[0]; s++) {
        CHECK(slot_value(c, 0, 0, 0, s) == expected[s], "slot %d holds K %g, want %g", s,
              slot_value(c, 0, 0, 0, s), expected[s]);
        CHECK(slot_value(c, 1, 0, 0, s) == expected[s] + 100.0f, "slot %d holds V %g", s,
              slot_value(c, 1, 0, 0, s));
    }
}

static ekv_data make_data(ekv_data_kind kind, int batch, int heads, int kv_heads, int head_dim,
                          int seq_len, int observe, const int *lengths)
{
    ekv_data_desc desc;
    ekv_data data;
    memset(&desc, 0, sizeof desc);
    memset(&data, 0, sizeof data);
    desc.kind = kind;
    desc.batch = batch;
    desc.heads = heads;
    desc.kv_heads = kv_heads;
    desc.head_dim = head_dim;
    desc.seq_len = seq_len;
    desc.observe = observe;
    desc.lengths = lengths;
    desc.seed = ekv_rng_next(&test_rng);
    if (ekv_data_generate(&desc, &data) != EKV_SUCCESS)
        printf("  ekv_data_generate failed: %s\n", ekv_last_error());
    return data;
}

/* ---- hand-worked cases ---------------------------------------------------- */

static void test_hand_policies(void)
{
    ekv_host_cache c;
    ekv_compress_desc d;
    float q[4 * 2] = {1.0f, 0.0f, 0.0f, 0.0f, 1.0f, 0.0f, 0.0f, 0.0f};

    TEST_BEGIN("stride C=3 W=2 over two anchors: the newest old token of each region kept");
    hand_cache(&c, 10, 16, 0);
    d = make_desc(EKV_POLICY_STRIDE, 3, 2, 4);
    /* old tokens 0..7: distance from 7 a multiple of 3 -> 1, 4, 7; recent 8, 9 */
    CHECK(ekv_cache_compress(&c, &d, NULL, 0, 0, 0.0) == EKV_SUCCESS, "%s", ekv_last_error());
    {
        const float want[] = {1, 4, 7, 8, 9};
        check_slots(&c, want, 5, 3);
    }
    hand_append(&c, 10, 4);
    /* fresh region 8..13: old 8..11 -> 8, 11; recent 12, 13 */
    CHECK(ekv_cache_compress(&c, &d, NULL, 0, 0, 0.0) == EKV_SUCCESS, "%s", ekv_last_error());
    {
        const float want[] = {1, 4, 7, 8, 11, 12, 13};
        check_slots(&c, want, 7, 5);
    }
    ekv_cache_free(&c);
    TEST_END();

    TEST_BEGIN("pool C=2 W=1: means of groups, a partial group of one copied, bias ln(count)");
    hand_cache(&c, 5, 16, 1);
    d = make_desc(EKV_POLICY_POOL, 2, 1, 0);
    CHECK(ekv_cache_compress(&c, &d, NULL, 0, 0, 0.0) == EKV_SUCCESS, "%s", ekv_last_error());
    {
        const float want[] = {0.5f, 2.5f, 4.0f};
        check_slots(&c, want, 3, 2);
        CHECK(c.bias[0] == (float)log(2.0) && c.bias[1] == (float)log(2.0) && c.bias[2] == 0.0f,
              "bias %g %g %g", c.bias[0], c.bias[1], c.bias[2]);
    }
    hand_append(&c, 5, 3);
    /* fresh 4..7: old 4..6 -> (4,5) and (6); recent 7 */
    CHECK(ekv_cache_compress(&c, &d, NULL, 0, 0, 0.0) == EKV_SUCCESS, "%s", ekv_last_error());
    {
        const float want[] = {0.5f, 2.5f, 4.5f, 6.0f, 7.0f};
        check_slots(&c, want, 5, 4);
        CHECK(c.bias[0] == (float)log(2.0) && c.bias[2] == (float)log(2.0) && c.bias[3] == 0.0f &&
                  c.bias[4] == 0.0f,
              "bias %g %g %g %g", c.bias[0], c.bias[2], c.bias[3], c.bias[4]);
    }
    ekv_cache_free(&c);
    TEST_END();

    TEST_BEGIN("window C=3 W=2 sinks=2: sinks on the first anchor only");
    hand_cache(&c, 12, 20, 0);
    d = make_desc(EKV_POLICY_WINDOW, 3, 2, 2);
    /* old 0..9, budget 4: sinks 0, 1 and the newest 8, 9; recent 10, 11 */
    CHECK(ekv_cache_compress(&c, &d, NULL, 0, 0, 0.0) == EKV_SUCCESS, "%s", ekv_last_error());
    {
        const float want[] = {0, 1, 8, 9, 10, 11};
        check_slots(&c, want, 6, 4);
    }
    hand_append(&c, 12, 6);
    /* fresh 10..17: old 10..15, budget 2, no sinks: 14, 15; recent 16, 17 */
    CHECK(ekv_cache_compress(&c, &d, NULL, 0, 0, 0.0) == EKV_SUCCESS, "%s", ekv_last_error());
    {
        const float want[] = {0, 1, 8, 9, 14, 15, 16, 17};
        check_slots(&c, want, 8, 6);
    }
    ekv_cache_free(&c);
    TEST_END();

    TEST_BEGIN("topk C=4 sinks=1: the sink plus the heaviest token, ties to the older");
    {
        /* K rows (t, 0, 0, 0): a query (1, 0, 0, 0) puts the most mass on the largest t.
           Tokens 3 and 6 get K = (20, 0, 0, 0) instead: they tie, and both beat the rest. */
        float k[8 * 4], v[8 * 4];
        int t, length = 8;
        memset(k, 0, sizeof k);
        memset(v, 0, sizeof v);
        for (t = 0; t < 8; t++) {
            k[t * 4] = (t == 3 || t == 6) ? 20.0f : (float)t;
            v[t * 4] = 100.0f + k[t * 4];
        }
        CHECK(create_poisoned(&c, EKV_DTYPE_F32, 1, 1, 4, 8, 0) == EKV_SUCCESS, "%s",
              ekv_last_error());
        CHECK(ekv_cache_prefill(&c, k, v, 8, &length) == EKV_SUCCESS, "%s", ekv_last_error());
        d = make_desc(EKV_POLICY_TOPK, 4, 0, 1);
        /* budget 2 = the sink 0 + one of {3, 6}: the older */
        CHECK(ekv_cache_compress(&c, &d, q, 2, 1, 1.0) == EKV_SUCCESS, "%s", ekv_last_error());
        {
            const float want[] = {0, 20};
            check_slots(&c, want, 2, 2);
        }
        {
            /* the second anchor has no sinks and scores over the whole cache */
            float k2[4] = {5.0f, 0, 0, 0}, v2[4] = {105.0f, 0, 0, 0};
            double scores[8];
            hand_append(&c, 0, 0);
            CHECK(ekv_cache_append(&c, k2, v2, NULL) == EKV_SUCCESS, "%s", ekv_last_error());
            k2[0] = 30.0f;
            v2[0] = 130.0f;
            CHECK(ekv_cache_append(&c, k2, v2, NULL) == EKV_SUCCESS, "%s", ekv_last_error());
            k2[0] = 1.0f;
            v2[0] = 101.0f;
            CHECK(ekv_cache_append(&c, k2, v2, NULL) == EKV_SUCCESS, "%s", ekv_last_error());
            CHECK(ekv_cache_observed_scores(&c, q, 2, 1, 1.0, scores) == EKV_SUCCESS, "%s",
                  ekv_last_error());
            /* softmax over (0, 20, 5, 30, 1) with both query heads: mass sums to 2 */
            CHECK(fabs(scores[0] + scores[1] + scores[2] + scores[3] + scores[4] - 2.0) < 1e-12,
                  "total mass %.17g", scores[0] + scores[1] + scores[2] + scores[3] + scores[4]);
            CHECK(fabs(scores[3] - 2.0 / (1.0 + exp(-30.0) + exp(-10.0) + exp(-25.0) + exp(-29.0))) <
                      1e-12,
                  "mass of the heaviest slot %.17g", scores[3]);
            CHECK(scores[5] == 0.0, "a slot beyond the length scores 0");
            /* fresh 5, 30, 1: budget 1 -> 30 */
            CHECK(ekv_cache_compress(&c, &d, q, 2, 1, 1.0) == EKV_SUCCESS, "%s", ekv_last_error());
            {
                const float want[] = {0, 20, 30};
                check_slots(&c, want, 3, 3);
            }
        }
        ekv_cache_free(&c);
    }
    TEST_END();

    TEST_BEGIN("none and short regions: compress only marks tokens compressed");
    hand_cache(&c, 6, 8, 0);
    d = make_desc(EKV_POLICY_NONE, 1, 2, 0);
    CHECK(ekv_cache_compress(&c, &d, NULL, 0, 0, 0.0) == EKV_SUCCESS, "%s", ekv_last_error());
    {
        const float want[] = {0, 1, 2, 3, 4, 5};
        check_slots(&c, want, 6, 4);
        /* fewer fresh tokens than the window: nothing happens */
        d = make_desc(EKV_POLICY_STRIDE, 2, 4, 0);
        CHECK(ekv_cache_compress(&c, &d, NULL, 0, 0, 0.0) == EKV_SUCCESS, "%s", ekv_last_error());
        check_slots(&c, want, 6, 4);
    }
    ekv_cache_free(&c);
    TEST_END();
}

static void test_fp8_scales(void)
{
    ekv_host_cache c;
    float k[2 * 3 * 4], v[2 * 3 * 4], row[4];
    int lengths[2] = {3, 0}, i;
    unsigned char only_second[2] = {0, 1};
    TEST_BEGIN("fp8: prefill scale = amax/448, empty sequences take their first nonzero row's");
    for (i = 0; i < 24; i++) {
        k[i] = (float)(i % 7) - 2.5f;
        v[i] = 0.25f * (float)(i % 5);
    }
    CHECK(create_poisoned(&c, EKV_DTYPE_FP8, 2, 1, 4, 8, 0) == EKV_SUCCESS, "%s", ekv_last_error());
    CHECK(ekv_cache_prefill(&c, k, v, 3, lengths) == EKV_SUCCESS, "%s", ekv_last_error());
    {
        float ks, vs, ks1, vs1;
        memcpy(&ks, c.k_scales, 4);
        memcpy(&vs, c.v_scales, 4);
        memcpy(&ks1, c.k_scales + 4, 4);
        memcpy(&vs1, c.v_scales + 4, 4);
        CHECK(ks == 3.5f / 448.0f, "K scale %.9g", ks);
        CHECK(vs == 1.0f / 448.0f, "V scale %.9g", vs);
        CHECK(ks1 == 0.0f && vs1 == 0.0f, "empty sequence: scales %g %g", ks1, vs1);
    }
    /* sequence 1: an all-zero row leaves its scale 0, the next row sets it */
    {
        float zero[8], big[8];
        memset(zero, 0, sizeof zero);
        for (i = 0; i < 8; i++) big[i] = (i % 4 == 1) ? -8.0f : 1.0f;
        CHECK(ekv_cache_append(&c, zero, zero, only_second) == EKV_SUCCESS, "%s", ekv_last_error());
        CHECK(c.lengths[0] == 3 && c.lengths[1] == 1, "lengths %d %d", c.lengths[0], c.lengths[1]);
        CHECK(memcmp(c.k_scales + 4, zero, 4) == 0, "all-zero row keeps scale 0");
        CHECK(ekv_cache_append(&c, big, big, NULL) == EKV_SUCCESS, "%s", ekv_last_error());
        {
            float s1, s0;
            memcpy(&s1, c.k_scales + 4, 4);
            memcpy(&s0, c.k_scales, 4);
            CHECK(s1 == 8.0f / 448.0f, "first nonzero row sets the scale: %.9g", s1);
            CHECK(s0 == 3.5f / 448.0f, "a set scale does not move: %.9g", s0);
            /* sequence 0's new row (-8 at element 1) saturates at 448 x scale = 3.5 */
            ekv_cache_row(&c, 0, 0, 0, 3, row);
            CHECK(row[1] == -3.5f && row[0] == 1.0f, "saturated row %g %g", row[0], row[1]);
            ekv_cache_row(&c, 0, 1, 0, 0, row);
            CHECK(row[0] == 0.0f && row[1] == 0.0f, "the zero row stays zero");
            ekv_cache_row(&c, 0, 1, 0, 1, row);
            CHECK(row[1] == -8.0f && row[0] == 1.0f, "row %g %g", row[0], row[1]);
        }
    }
    ekv_cache_free(&c);
    TEST_END();
}

/* ---- a single compress equals ekv_cache_build ------------------------------ */

static int bytes_equal(const ekv_host_cache *a, const ekv_host_cache *b, char *why, size_t why_size)
{
    const size_t row = ekv_dtype_row_bytes(a->dtype, a->head_dim);
    const size_t scale = ekv_dtype_row_scale_bytes(a->dtype, a->head_dim);
    int bb, h, s, which;
    for (bb = 0; bb < a->batch; bb++) {
        if (a->lengths[bb] != b->lengths[bb]) {
            snprintf(why, why_size, "lengths[%d] %d vs %d", bb, a->lengths[bb], b->lengths[bb]);
            return 0;
        }
        for (h = 0; h < a->kv_heads; h++) {
            const size_t head = (size_t)bb * a->kv_heads + h;
            if (a->dtype == EKV_DTYPE_FP8 &&
                (memcmp(a->k_scales + head * 4, b->k_scales + head * 4, 4) != 0 ||
                 memcmp(a->v_scales + head * 4, b->v_scales + head * 4, 4) != 0)) {
                snprintf(why, why_size, "fp8 head scale of (%d, %d)", bb, h);
                return 0;
            }
            for (s = 0; s < a->lengths[bb]; s++) {
                const size_t ra = head * a->capacity + s, rb = head * b->capacity + s;
                for (which = 0; which < 2; which++) {
                    const unsigned char *va = which ? a->v : a->k, *vb = which ? b->v : b->k;
                    const unsigned char *sa = which ? a->v_scales : a->k_scales;
                    const unsigned char *sb = which ? b->v_scales : b->k_scales;
                    if (memcmp(va + ra * row, vb + rb * row, row) != 0 ||
                        (scale && memcmp(sa + ra * scale, sb + rb * scale, scale) != 0)) {
                        snprintf(why, why_size, "%s row of (%d, %d) slot %d", which ? "V" : "K",
                                 bb, h, s);
                        return 0;
                    }
                }
                if ((a->bias ? a->bias[ra] : 0.0f) != (b->bias ? b->bias[rb] : 0.0f)) {
                    snprintf(why, why_size, "bias of (%d, %d) slot %d", bb, h, s);
                    return 0;
                }
            }
        }
    }
    return 1;
}

static void test_single_compress_equals_build(void)
{
    static const int lengths[3] = {200, 131, 57};
    static const ekv_policy policies[5] = {EKV_POLICY_NONE, EKV_POLICY_STRIDE, EKV_POLICY_POOL,
                                           EKV_POLICY_WINDOW, EKV_POLICY_TOPK};
    ekv_data data = make_data(EKV_DATA_STRUCTURED, 3, 4, 2, 64, 200, 8, lengths);
    size_t n = (size_t)3 * 4 * 64;
    double *out_a = (double *)malloc(n * sizeof(double)), *out_b = (double *)malloc(n * sizeof(double));
    int t, p, w;
    char name[160], why[160];
    for (t = 0; t < EKV_DTYPE_COUNT; t++)
        for (p = 0; p < 5; p++)
            for (w = 0; w < 2; w++) {
                const ekv_dtype dtype = all_dtypes[t];
                const ekv_policy policy = policies[p];
                ekv_compress_desc d = make_desc(policy, policy == EKV_POLICY_NONE ? 1 : 3, w * 8, 4);
                ekv_host_cache inc, built;
                /* where ekv.h promises the bytes of ekv_cache_build */
                const int promised = dtype == EKV_DTYPE_FP8
                                         ? policy == EKV_POLICY_NONE
                                         : (policy == EKV_POLICY_NONE || policy == EKV_POLICY_STRIDE ||
                                            policy == EKV_POLICY_WINDOW || dtype == EKV_DTYPE_F32);
                d.observe = data.observe;
                snprintf(name, sizeof name, "one compress = ekv_cache_build: %s %s C=%d W=%d%s",
                         ekv_dtype_name(dtype), ekv_policy_name(policy), d.compression, d.recent,
                         promised ? " (bytes)" : " (close)");
                TEST_BEGIN(name);
                CHECK(create_poisoned(&inc, dtype, 3, 2, 64, 200, policy == EKV_POLICY_POOL) ==
                          EKV_SUCCESS, "%s", ekv_last_error());
                CHECK(ekv_cache_prefill(&inc, data.k, data.v, data.capacity, data.lengths) ==
                          EKV_SUCCESS, "%s", ekv_last_error());
                CHECK(ekv_cache_compress(&inc, &d, data.q_observe, data.heads, data.observe, 0.0) ==
                          EKV_SUCCESS, "%s", ekv_last_error());
                CHECK(ekv_cache_build(&data, &d, dtype, 0.0, &built) == EKV_SUCCESS, "%s",
                      ekv_last_error());
                if (promised) {
                    CHECK(bytes_equal(&inc, &built, why, sizeof why), "differs: %s", why);
                } else {
                    /* pool averages stored rows, topk scores stored keys, fp8 keeps the
                       prefill scale: the same tokens, within quantization error */
                    ekv_error_stats e;
                    int b;
                    for (b = 0; b < 3; b++)
                        CHECK(inc.lengths[b] == built.lengths[b], "lengths[%d] %d vs %d", b,
                              inc.lengths[b], built.lengths[b]);
                    CHECK(ekv_reference_attention_cache(&inc, data.q, data.heads, 0.0, out_a) ==
                              EKV_SUCCESS, "%s", ekv_last_error());
                    CHECK(ekv_reference_attention_cache(&built, data.q, data.heads, 0.0, out_b) ==
                              EKV_SUCCESS, "%s", ekv_last_error());
                    e = ekv_compare_f64(out_b, out_a, n);
                    CHECK(e.rel_l2 < (dtype == EKV_DTYPE_INT4 ? 0.2 : 0.08), "attention rel_l2 %.3g",
                          e.rel_l2);
                }
                {
                    int b;
                    for (b = 0; b < 3; b++)
                        CHECK(inc.compressed[b] == inc.lengths[b] - (d.recent < lengths[b] ? d.recent
                                                                                             : lengths[b]),
                              "compressed[%d] %d", b, inc.compressed[b]);
                }
                ekv_cache_free(&inc);
                ekv_cache_free(&built);
                TEST_END();
            }
    free(out_a);
    free(out_b);
    ekv_data_free(&data);
}

/* ---- several anchor steps against a test-side model ----------------------- */

/* The model knows, for every slot of every (sequence, kv head), the original tokens it
   holds (a token n of sequence b is row n of the data), and recomputes the expected stored
   bytes from the data alone. */
typedef struct model {
    int batch, kv_heads, head_dim, capacity;
    int *lengths, *compressed;
    ekv_slot_source *slots; /* [batch][kv_heads][capacity], tokens of the data */
    float *head_scale;      /* fp8: [2][batch][kv_heads] */
} model;

static void model_free(model *m)
{
    free(m->lengths);
    free(m->compressed);
    free(m->slots);
    free(m->head_scale);
}

/* The stored-then-dequantized value of token n of (b, h), K or V. */
static void model_token(const model *m, const ekv_data *data, ekv_dtype dtype, int which, int b,
                        int h, int n, float *out)
{
    unsigned char row[1024], scale[64];
    const float *x = (which ? data->v : data->k) + ekv_data_kv_index(data, b, h, n);
    const float hs = m->head_scale[((size_t)which * m->batch + b) * m->kv_heads + h];
    ekv_quantize_row(dtype, x, m->head_dim, hs, row, scale);
    ekv_dequantize_row(dtype, row, scale, m->head_dim, hs, out);
}

/* Expected stored bytes of a slot. */
static void model_slot_bytes(const model *m, const ekv_data *data, ekv_dtype dtype, int which,
                             int b, int h, ekv_slot_source src, unsigned char *row,
                             unsigned char *scale, float *bias)
{
    const float hs = m->head_scale[((size_t)which * m->batch + b) * m->kv_heads + h];
    float x[256], y[256];
    double sum[256];
    int d, t;
    if (src.count == 1) {
        ekv_quantize_row(dtype, (which ? data->v : data->k) + ekv_data_kv_index(data, b, h, src.first),
                         m->head_dim, hs, row, scale);
        *bias = 0.0f;
        return;
    }
    for (d = 0; d < m->head_dim; d++) sum[d] = 0.0;
    for (t = 0; t < src.count; t++) {
        model_token(m, data, dtype, which, b, h, src.first + t, y);
        for (d = 0; d < m->head_dim; d++) sum[d] += y[d];
    }
    for (d = 0; d < m->head_dim; d++) x[d] = (float)(sum[d] / src.count);
    ekv_quantize_row(dtype, x, m->head_dim, hs, row, scale);
    *bias = (float)log((double)src.count);
}

static int model_check(const model *m, const ekv_data *data, const ekv_host_cache *c, char *why,
                       size_t why_size)
{
    const size_t row_bytes = ekv_dtype_row_bytes(c->dtype, c->head_dim);
    const size_t scale_bytes = ekv_dtype_row_scale_bytes(c->dtype, c->head_dim);
    unsigned char row[1024], scale[64];
    int b, h, s, which;
    for (b = 0; b < m->batch; b++) {
        if (c->lengths[b] != m->lengths[b] || c->compressed[b] != m->compressed[b]) {
            snprintf(why, why_size, "sequence %d: length %d compressed %d, model %d %d", b,
                     c->lengths[b], c->compressed[b], m->lengths[b], m->compressed[b]);
            return 0;
        }
        for (h = 0; h < m->kv_heads; h++)
            for (s = 0; s < m->lengths[b]; s++) {
                const size_t r = ((size_t)b * m->kv_heads + h) * m->capacity + s;
                for (which = 0; which < 2; which++) {
                    float bias;
                    model_slot_bytes(m, data, c->dtype, which, b, h, m->slots[r], row, scale, &bias);
                    if (memcmp((which ? c->v : c->k) + r * row_bytes, row, row_bytes) != 0 ||
                        (scale_bytes && memcmp((which ? c->v_scales : c->k_scales) + r * scale_bytes,
                                               scale, scale_bytes) != 0) ||
                        (which == 0 && c->bias && c->bias[r] != bias)) {
                        snprintf(why, why_size, "%s of (%d, %d) slot %d (tokens %d+%d)",
                                 which ? "V" : "K", b, h, s, m->slots[r].first, m->slots[r].count);
                        return 0;
                    }
                }
            }
    }
    return 1;
}

/* The model's own topk ranking: scores computed here from the cache's dequantized rows
   (already checked against the model) with a plain softmax. */
static void model_scores(const ekv_host_cache *c, const float *q_observe, int heads, int observe,
                         int b, int h, double *scores)
{
    const int D = c->head_dim, group = heads / c->kv_heads, length = c->lengths[b];
    double *logit = (double *)malloc((size_t)length * sizeof(double) + 8);
    float key[256];
    int j, s, d;
    for (s = 0; s < length; s++) scores[s] = 0.0;
    for (j = 0; j < group * observe; j++) {
        const float *q = q_observe + (((size_t)b * heads + (size_t)h * group + j / observe) * observe +
                                      j % observe) * D;
        double mx = -HUGE_VAL, total = 0.0;
        for (s = 0; s < length; s++) {
            double dot = 0.0;
            ekv_cache_row(c, 0, b, h, s, key);
            for (d = 0; d < D; d++) dot += (double)q[d] * key[d];
            logit[s] = dot / sqrt((double)D) +
                       (c->bias ? c->bias[((size_t)b * c->kv_heads + h) * c->capacity + s] : 0.0);
            if (logit[s] > mx) mx = logit[s];
        }
        for (s = 0; s < length; s++) total += exp(logit[s] - mx);
        for (s = 0; s < length; s++) scores[s] += exp(logit[s] - mx) / total;
    }
    free(logit);
}

/* Applies one compress to the model: the policy written out from ekv.h's definitions. */
static void model_compress(model *m, const ekv_host_cache *c, const ekv_compress_desc *d,
                           const float *q_observe, int heads, int observe)
{
    int b, h, i, t;
    for (b = 0; b < m->batch; b++) {
        const int first = m->compressed[b], fresh = m->lengths[b] - first;
        const int W = d->recent < fresh ? d->recent : fresh, old = fresh - W;
        const int C = d->compression, budget = (old + C - 1) / C;
        const int sinks = first == 0 ? (d->sinks < budget ? d->sinks : budget) : 0;
        if (old <= 0) continue;
        for (h = 0; h < m->kv_heads; h++) {
            ekv_slot_source *slots = m->slots + ((size_t)b * m->kv_heads + h) * m->capacity + first;
            ekv_slot_source *kept = (ekv_slot_source *)malloc((size_t)fresh * sizeof *kept);
            int count = 0;
            unsigned char *take = (unsigned char *)calloc((size_t)old, 1);
            switch (d->policy) {
            case EKV_POLICY_NONE:
            case EKV_POLICY_STRIDE:
                for (t = 0; t < old; t++) take[t] = (old - 1 - t) % C == 0;
                break;
            case EKV_POLICY_WINDOW:
                for (t = 0; t < old; t++) take[t] = t < sinks || t >= old - (budget - sinks);
                break;
            case EKV_POLICY_TOPK: {
                double *scores = (double *)malloc((size_t)m->lengths[b] * sizeof(double));
                model_scores(c, q_observe, heads, observe, b, h, scores);
                for (t = 0; t < sinks; t++) take[t] = 1;
                for (i = 0; i < budget - sinks; i++) {
                    int best = -1;
                    for (t = sinks; t < old; t++)
                        if (!take[t] && (best < 0 || scores[first + t] > scores[first + best])) best = t;
                    take[best] = 1;
                }
                free(scores);
                break;
            }
            default:
                break;
            }
            if (d->policy == EKV_POLICY_POOL) {
                for (t = 0; t < old; t += C) {
                    /* a group's tokens are consecutive in the data: the region is exact */
                    kept[count].first = slots[t].first;
                    kept[count++].count = old - t < C ? old - t : C;
                }
            } else {
                for (t = 0; t < old; t++)
                    if (take[t]) kept[count++] = slots[t];
            }
            for (t = old; t < fresh; t++) kept[count++] = slots[t];
            memcpy(slots, kept, (size_t)count * sizeof *kept);
            free(kept);
            free(take);
        }
        m->compressed[b] = first + budget;
        m->lengths[b] = first + budget + W;
    }
}

static void test_anchor_steps(void)
{
    static const ekv_policy policies[5] = {EKV_POLICY_NONE, EKV_POLICY_STRIDE, EKV_POLICY_POOL,
                                           EKV_POLICY_WINDOW, EKV_POLICY_TOPK};
    static const int compression[5] = {1, 3, 3, 4, 3};
    enum { B = 3, HKV = 2, HEADS = 4, D = 64, PREFILL = 100, STEPS = 64, EVERY = 16, OBSERVE = 4 };
    static const int prefill[B] = {PREFILL, 77, 0};
    const int capacity = PREFILL + STEPS;
    int t, p, w;
    char name[160], why[200];
    for (t = 0; t < EKV_DTYPE_COUNT; t++)
        for (p = 0; p < 5; p++)
            for (w = 0; w < 2; w++) {
                const ekv_dtype dtype = all_dtypes[t];
                ekv_compress_desc d = make_desc(policies[p], compression[p], w * 8, 3);
                ekv_data data = make_data(EKV_DATA_RANDOM, B, HEADS, HKV, D, capacity, OBSERVE, NULL);
                ekv_host_cache c;
                model m;
                float *k = (float *)malloc((size_t)B * HKV * D * sizeof(float));
                float *v = (float *)malloc((size_t)B * HKV * D * sizeof(float));
                int next[B], step, b, h, ok = 1;
                unsigned char active[B];
                snprintf(name, sizeof name, "%d anchors: %s %s C=%d W=%d sinks=%d, ragged, masked",
                         STEPS / EVERY, ekv_dtype_name(dtype), ekv_policy_name(d.policy),
                         d.compression, d.recent, d.sinks);
                TEST_BEGIN(name);
                memset(&m, 0, sizeof m);
                m.batch = B;
                m.kv_heads = HKV;
                m.head_dim = D;
                m.capacity = capacity;
                m.lengths = (int *)calloc(B, sizeof(int));
                m.compressed = (int *)calloc(B, sizeof(int));
                m.slots = (ekv_slot_source *)calloc((size_t)B * HKV * capacity, sizeof *m.slots);
                m.head_scale = (float *)calloc(2 * B * HKV, sizeof(float));
                CHECK(create_poisoned(&c, dtype, B, HKV, D, capacity, d.policy == EKV_POLICY_POOL) ==
                          EKV_SUCCESS, "%s", ekv_last_error());
                CHECK(ekv_cache_prefill(&c, data.k, data.v, data.capacity, prefill) == EKV_SUCCESS,
                      "%s", ekv_last_error());
                for (b = 0; b < B; b++) {
                    m.lengths[b] = next[b] = prefill[b];
                    for (h = 0; h < HKV; h++) {
                        int s, which;
                        for (s = 0; s < prefill[b]; s++) {
                            m.slots[((size_t)b * HKV + h) * capacity + s].first = s;
                            m.slots[((size_t)b * HKV + h) * capacity + s].count = 1;
                        }
                        for (which = 0; which < 2; which++) {
                            const float *x = (which ? data.v : data.k) + ekv_data_kv_index(&data, b, h, 0);
                            float amax = 0.0f;
                            int i;
                            for (i = 0; i < prefill[b] * D; i++)
                                if (fabsf(x[i]) > amax) amax = fabsf(x[i]);
                            if (dtype == EKV_DTYPE_FP8)
                                m.head_scale[((size_t)which * B + b) * HKV + h] = amax / 448.0f;
                        }
                    }
                }
                for (step = 1; step <= STEPS && ok; step++) {
                    for (b = 0; b < B; b++) {
                        /* sequence 1 skips every third step */
                        active[b] = (unsigned char)(b != 1 || step % 3 != 0);
                        for (h = 0; h < HKV; h++) {
                            int which;
                            for (which = 0; which < 2; which++) {
                                float *dst = (which ? v : k) + ((size_t)b * HKV + h) * D;
                                const float *src = (which ? data.v : data.k) +
                                                   ekv_data_kv_index(&data, b, h, next[b]);
                                float *hs = &m.head_scale[((size_t)which * B + b) * HKV + h];
                                memcpy(dst, src, D * sizeof(float));
                                if (active[b] && dtype == EKV_DTYPE_FP8 && *hs == 0.0f) {
                                    float amax = 0.0f;
                                    int i;
                                    for (i = 0; i < D; i++)
                                        if (fabsf(src[i]) > amax) amax = fabsf(src[i]);
                                    *hs = amax / 448.0f;
                                }
                            }
                            if (active[b]) {
                                ekv_slot_source *s =
                                    &m.slots[((size_t)b * HKV + h) * capacity + m.lengths[b]];
                                s->first = next[b];
                                s->count = 1;
                            }
                        }
                        if (active[b]) {
                            m.lengths[b]++;
                            next[b]++;
                        }
                    }
                    CHECK(ekv_cache_append(&c, k, v, active) == EKV_SUCCESS, "%s", ekv_last_error());
                    if (step % EVERY == 0) {
                        int fresh[B];
                        for (b = 0; b < B; b++) fresh[b] = c.lengths[b] - c.compressed[b];
                        /* the model ranks topk from the cache as it stands before compressing */
                        model_compress(&m, &c, &d, data.q_observe, HEADS, OBSERVE);
                        CHECK(ekv_cache_compress(&c, &d, data.q_observe, HEADS, OBSERVE, 0.0) ==
                                  EKV_SUCCESS, "%s", ekv_last_error());
                        for (b = 0; b < B; b++)
                            CHECK(c.lengths[b] == c.compressed[b] + (d.recent < fresh[b] ? d.recent
                                                                                        : fresh[b]),
                                  "sequence %d: length %d != compressed %d + W", b, c.lengths[b],
                                  c.compressed[b]);
                    }
                    if (step % EVERY == 0 || step == 1) {
                        ok = model_check(&m, &data, &c, why, sizeof why);
                        CHECK(ok, "after step %d: %s", step, why);
                    }
                }
                model_free(&m);
                free(k);
                free(v);
                ekv_cache_free(&c);
                ekv_data_free(&data);
                TEST_END();
            }
}

/* ---- memory, errors ------------------------------------------------------- */

static void test_memory_bytes(void)
{
    /* batch 2, kv_heads 3, head_dim 64, capacity 10: 60 slots. Per slot K + V:
       f32 2x256, f16/bf16 2x128, int8 2x(64 + 4), int4 2x(32 + 2x4), fp8 2x64 plus
       2 x 4 bytes per (sequence, kv head); the bias adds 4 per slot. */
    static const size_t want[EKV_DTYPE_COUNT] = {60 * 512, 60 * 256, 60 * 256, 60 * 136, 60 * 80,
                                                 60 * 128 + 48};
    int t, bias;
    TEST_BEGIN("ekv_cache_memory_bytes equals the formula of ekv.h for every dtype");
    for (t = 0; t < EKV_DTYPE_COUNT; t++)
        for (bias = 0; bias < 2; bias++) {
            ekv_host_cache c;
            CHECK(ekv_cache_create(&c, all_dtypes[t], 2, 3, 64, 10, bias) == EKV_SUCCESS, "%s",
                  ekv_last_error());
            CHECK(ekv_cache_memory_bytes(&c) == want[t] + (bias ? 240u : 0u), "%s bias %d: %zu",
                  ekv_dtype_name(all_dtypes[t]), bias, ekv_cache_memory_bytes(&c));
            /* full cache: the used bytes of ekv_cache_bytes_of are the same */
            {
                int lengths[2] = {10, 10};
                ekv_cache_bytes used = ekv_cache_bytes_of(all_dtypes[t], 2, 3, 64, lengths, bias);
                CHECK(used.total == (double)ekv_cache_memory_bytes(&c), "bytes_of %.0f", used.total);
            }
            ekv_cache_free(&c);
        }
    TEST_END();
}

static void test_errors(void)
{
    ekv_host_cache c, built;
    ekv_compress_desc d = make_desc(EKV_POLICY_POOL, 2, 0, 0);
    float row[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
    int lengths[2] = {2, 1};
    unsigned char first_only[2] = {1, 0};
    ekv_result r;
    TEST_BEGIN("errors: full sequence, pool without bias, topk without queries, bad arguments");
    CHECK(ekv_cache_create(&c, EKV_DTYPE_INT8, 2, 1, 4, 2, 0) == EKV_SUCCESS, "%s", ekv_last_error());
    CHECK(ekv_cache_prefill(&c, row, row, 2, lengths) == EKV_SUCCESS, "%s", ekv_last_error());
    r = ekv_cache_append(&c, row, row, NULL);
    CHECK(r == EKV_ERR_INVALID_ARG, "append to a full sequence: %d", (int)r);
    CHECK(strstr(ekv_last_error(), "sequence 0 is full (capacity 2)") != NULL, "%s", ekv_last_error());
    CHECK(c.lengths[0] == 2 && c.lengths[1] == 1, "nothing written: %d %d", c.lengths[0], c.lengths[1]);
    first_only[0] = 0;
    first_only[1] = 1;
    CHECK(ekv_cache_append(&c, row, row, first_only) == EKV_SUCCESS, "masked append: %s",
          ekv_last_error());
    CHECK(c.lengths[1] == 2, "masked append wrote sequence 1");
    r = ekv_cache_compress(&c, &d, NULL, 0, 0, 0.0);
    CHECK(r == EKV_ERR_INVALID_ARG && strstr(ekv_last_error(), "with_bias"), "pool without bias: %s",
          ekv_last_error());
    d = make_desc(EKV_POLICY_TOPK, 2, 0, 0);
    r = ekv_cache_compress(&c, &d, NULL, 1, 1, 0.0);
    CHECK(r == EKV_ERR_INVALID_ARG && strstr(ekv_last_error(), "observed queries"), "%s",
          ekv_last_error());
    r = ekv_cache_compress(&c, &d, row, 0, 1, 0.0);
    CHECK(r == EKV_ERR_INVALID_ARG && strstr(ekv_last_error(), "heads (0)"), "%s", ekv_last_error());
    d = make_desc(EKV_POLICY_NONE, 2, 0, 0);
    CHECK(ekv_cache_compress(&c, &d, NULL, 0, 0, 0.0) == EKV_ERR_INVALID_ARG, "none with C=2");
    lengths[0] = 3;
    CHECK(ekv_cache_prefill(&c, row, row, 2, lengths) == EKV_ERR_INVALID_ARG, "prefill beyond source");
    CHECK(ekv_cache_create(&built, EKV_DTYPE_INT4, 1, 1, 5, 4, 0) == EKV_ERR_UNSUPPORTED, "odd int4");
    CHECK(ekv_cache_create(&built, EKV_DTYPE_F32, 0, 1, 4, 4, 0) == EKV_ERR_INVALID_ARG, "batch 0");
    ekv_cache_free(&c);
    {
        ekv_data data = make_data(EKV_DATA_RANDOM, 1, 2, 1, 8, 4, 0, NULL);
        d = make_desc(EKV_POLICY_NONE, 1, 0, 0);
        CHECK(ekv_cache_build(&data, &d, EKV_DTYPE_F32, 0.0, &built) == EKV_SUCCESS, "%s",
              ekv_last_error());
        r = ekv_cache_append(&built, row, row, NULL);
        CHECK(r == EKV_ERR_INVALID_ARG && strstr(ekv_last_error(), "ekv_cache_create"),
              "a built cache is not elastic: %s", ekv_last_error());
        ekv_cache_free(&built);
        ekv_data_free(&data);
    }
    TEST_END();
}

int main(int argc, char **argv)
{
    int i;
    run_seed = (uint64_t)time(NULL) ^ ((uint64_t)clock() << 32);
    for (i = 1; i < argc; i++)
        if (strncmp(argv[i], "--seed=", 7) == 0) run_seed = strtoull(argv[i] + 7, NULL, 10);
    printf("test_cache_ops: seed %llu (rerun with --seed=%llu)\n", (unsigned long long)run_seed,
           (unsigned long long)run_seed);
    ekv_rng_seed(&test_rng, run_seed);
    test_hand_policies();
    test_fp8_scales();
    test_single_compress_equals_build();
    test_anchor_steps();
    test_memory_bytes();
    test_errors();
    return ekv_test_finish();
}
