/* test_cycle.c - the inference cycle (ekv.h >>cycle) on the CPU backend, at small sizes:
   the series has one point per decode step with context_len = seq+1..seq+T; nocache and
   cache agree on the last step's outputs; shared holds half of cache's KV bytes; int8's
   bytes follow the formula; tokens/s matches the times; the phases fit in the step time;
   the lossy variants differ from cache while nocache does not; topk and pool elastic
   cycles run (fewer observed queries than --observe at first); paired baseline; the JSON
   of the cycle; bad combinations give the documented errors (sharing with one layer);
   total and phases are both medians (a made-up backend); the progress the driver
   reports over the variants and the progress meter's lines. The serving simulation
   (--page-size, --memory-budget; issue 17): each variant's largest batch against the
   test's own lockstep run through the page pool (that batch fits, one more does not,
   the accounting exact by ekv_paged_check after every step); int8, shared, int8-shared
   and elastic fit at least cache's batch; pages in use and free add up to the pool; the
   JSON and the validation of --memory-budget.

   Build: cc -std=c99 -pedantic -Wall -Wextra -Werror -O1 -I. tests/test_cycle.c tests/ekv_impl.c -lm \
              -o build/test_cycle */
#include "../ekv.h"
#include "ekv_test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static ekv_config small_config(ekv_variant variant)
{
    ekv_config c = ekv_config_default();
    c.inference = 1;
    c.variant = variant;
    c.batch = 2;
    c.seq_len = 24;
    c.decode_tokens = 6;
    c.layers = 2;
    c.heads = 4;
    c.kv_heads = 2;
    c.head_dim = 64;
    c.reps = 2; /* two: the phases' medians then add up to at most the mean loop (below) */
    c.warmup = 1;
    c.compression = 2;
    c.policy = EKV_POLICY_STRIDE;
    return c;
}

static const ekv_cycle_result *find_cycle(const ekv_report *r, ekv_variant v)
{
    int i;
    for (i = 0; i < r->cycle_count; i++)
        if (r->cycles[i].variant == v) return &r->cycles[i];
    return NULL;
}

static void test_all_variants(void)
{
    ekv_config c = small_config(EKV_VARIANT_ALL);
    ekv_report r;
    ekv_result res;
    const int kv_heads = 2, D = 64;
    int i, s, l, p;
    memset(&r, 0, sizeof r);
    TEST_BEGIN("cycle: all variants, series, bytes, agreement, throughput");
    res = ekv_cycle_run(&c, &r);
    CHECK(res == EKV_SUCCESS, "ekv_cycle_run: %s", ekv_last_error());
    CHECK(r.cycle_count == 6, "cycle_count %d", r.cycle_count);
    if (res == EKV_SUCCESS && r.cycle_count == 6) {
        const ekv_cycle_result *nocache = find_cycle(&r, EKV_VARIANT_NOCACHE);
        const ekv_cycle_result *cache = find_cycle(&r, EKV_VARIANT_CACHE);
        const ekv_cycle_result *int8 = find_cycle(&r, EKV_VARIANT_INT8);
        const ekv_cycle_result *shared = find_cycle(&r, EKV_VARIANT_SHARED);
        const ekv_cycle_result *int8_shared = find_cycle(&r, EKV_VARIANT_INT8_SHARED);
        const ekv_cycle_result *elastic = find_cycle(&r, EKV_VARIANT_ELASTIC);
        CHECK(nocache && cache && int8 && shared && int8_shared && elastic, "every variant ran");
        for (i = 0; i < r.cycle_count; i++) {
            const ekv_cycle_result *y = &r.cycles[i];
            double phases = 0.0;
            CHECK(y->series_count == c.decode_tokens, "%s: %d series points",
                  ekv_variant_name(y->variant), y->series_count);
            for (s = 0; s < y->series_count; s++) {
                CHECK(y->series[s].step == s + 1, "step %d", y->series[s].step);
                CHECK(y->series[s].context_len == c.seq_len + s + 1, "context_len %d at %d",
                      y->series[s].context_len, s);
                CHECK(y->series[s].latency_ms > 0.0, "latency %g", y->series[s].latency_ms);
                CHECK(y->series[s].peak_device_bytes >= y->series[s].kv_cache_bytes, "peak >= kv");
            }
            CHECK(y->sample_count == (size_t)c.reps, "%zu samples", y->sample_count);
            CHECK_CLOSE(y->tokens_per_sec, c.batch * c.decode_tokens * 1000.0 / y->total_ms, 1e-12, 0,
                        "tokens/s = batch x T x 1000 / total_ms");
            CHECK(y->total_ms == y->stats.median, "total is the median");
            for (p = 0; p < EKV_CYCLE_PHASES; p++) {
                CHECK(y->phases_ms[p] >= 0.0, "phase %d = %g", p, y->phases_ms[p]);
                phases += y->phases_ms[p];
            }
            /* the phases of a repeat lie inside its loop; the median of two is their mean,
               so the phases' medians add up to the mean of the repeats' phase sums, at most
               the mean loop. (With three repeats the sum of medians can pass even the
               slowest loop when different repeats are slow in different phases: that made
               the check fail by chance.) */
            CHECK(phases <= y->stats.mean * (1 + 1e-9), "%s: phases %g > mean loop %g",
                  ekv_variant_name(y->variant), phases, y->stats.mean);
            if (y->variant != EKV_VARIANT_ELASTIC)
                CHECK(y->phases_ms[EKV_CYCLE_PHASE_COMPRESS] < 0.05 * y->stats.mean + 0.01,
                      "no compression outside elastic");
        }
        if (nocache && cache && int8 && shared && int8_shared && elastic) {
            printf("  nocache vs cache: max |diff| %.3g, bitwise %s\n", nocache->agreement_max_abs_diff,
                   nocache->agreement_bitwise_equal ? "yes" : "no");
            CHECK(nocache->has_agreement && nocache->agreement_max_abs_diff <= 1e-6,
                  "nocache vs cache max diff %g", nocache->agreement_max_abs_diff);
            CHECK(!cache->has_agreement, "cache is the reference");
            for (l = 0; l < c.layers; l++) {
                CHECK(nocache->error_vs_cache[l].rel_l2 <= 1e-6, "nocache layer %d rel_l2 %g", l,
                      nocache->error_vs_cache[l].rel_l2);
                CHECK(int8->error_vs_cache[l].rel_l2 > 0 && int8->error_vs_cache[l].rel_l2 < 0.05,
                      "int8 layer %d rel_l2 %g", l, int8->error_vs_cache[l].rel_l2);
                CHECK(elastic->error_vs_cache[l].rel_l2 > 0, "elastic layer %d", l);
                CHECK(int8_shared->error_vs_cache[l].rel_l2 > 0, "int8-shared layer %d", l);
            }
            /* layer 0 of shared owns its cache: exact; layer 1 reads layer 0's */
            CHECK(shared->error_vs_cache[0].rel_l2 == 0.0, "shared layer 0 %g", shared->error_vs_cache[0].rel_l2);
            CHECK(shared->error_vs_cache[1].rel_l2 > 0.0, "shared layer 1 %g", shared->error_vs_cache[1].rel_l2);
            CHECK(!int8->agreement_bitwise_equal, "int8 not bitwise equal");
            for (s = 0; s < c.decode_tokens; s++) {
                const double ctx = c.seq_len + s + 1;
                CHECK(nocache->series[s].kv_cache_bytes == 0.0, "nocache keeps no cache");
                CHECK_CLOSE(cache->series[s].kv_cache_bytes,
                            (double)c.layers * c.batch * kv_heads * ctx * 2.0 * D * 2.0, 0, 0, "f16 bytes");
                CHECK_CLOSE(shared->series[s].kv_cache_bytes, cache->series[s].kv_cache_bytes / 2, 0, 0,
                            "shared = half of cache");
                CHECK_CLOSE(int8->series[s].kv_cache_bytes,
                            (double)c.layers * c.batch * kv_heads * ctx * 2.0 * (D + 4.0), 0, 0,
                            "int8 bytes = layers x batch x kv_heads x ctx x 2 x (D + 4)");
                CHECK_CLOSE(int8_shared->series[s].kv_cache_bytes, int8->series[s].kv_cache_bytes / 2, 0, 0,
                            "int8-shared = half of int8");
                CHECK(elastic->series[s].kv_cache_bytes < cache->series[s].kv_cache_bytes,
                      "elastic smaller than cache");
                if (s > 0)
                    CHECK(nocache->series[s].peak_device_bytes > nocache->series[s - 1].peak_device_bytes,
                          "nocache's stored inputs grow with the context");
            }
        }
        CHECK_CLOSE(r.stats.median * c.decode_tokens, r.cycles[0].total_ms, 1e-12, 0,
                    "results: per-step time = loop / T");
    }
    TEST_END();
    ekv_report_free(&r);
}

/* Elastic policies that need more: topk (observed queries, fewer than --observe at the
   first elastic step since seq < observe) and pool (logit bias), with a recent window. */
static void test_elastic_policies(void)
{
    static const ekv_policy policies[3] = {EKV_POLICY_TOPK, EKV_POLICY_POOL, EKV_POLICY_WINDOW};
    int i;
    TEST_BEGIN("cycle: elastic topk, pool, window with recent window and compress-every");
    for (i = 0; i < 3; i++) {
        ekv_config c = small_config(EKV_VARIANT_ELASTIC);
        ekv_report r;
        ekv_result res;
        memset(&r, 0, sizeof r);
        c.policy = policies[i];
        c.seq_len = 10;
        c.observe = 16;
        c.recent = 2;
        c.sinks = 1;
        c.compress_every = 3;
        c.decode_tokens = 7;
        c.kv_dtype = i == 1 ? EKV_DTYPE_INT4 : EKV_DTYPE_F32;
        res = ekv_cycle_run(&c, &r);
        CHECK(res == EKV_SUCCESS, "%s: %s", ekv_policy_name(c.policy), ekv_last_error());
        if (res == EKV_SUCCESS) {
            const ekv_cycle_result *y = &r.cycles[0];
            CHECK(y->series_count == 7 && y->has_agreement, "series and agreement");
            CHECK(y->error_vs_cache[0].rel_l2 > 0 && y->error_vs_cache[0].cosine > 0.3,
                  "%s: error %g cosine %g", ekv_policy_name(c.policy), y->error_vs_cache[0].rel_l2,
                  y->error_vs_cache[0].cosine);
            CHECK(y->phases_ms[EKV_CYCLE_PHASE_COMPRESS] > 0.0, "compression timed");
            /* slots: prefill keeps 6 of 10 (8 old -> 4, recent 2); each anchor
               (steps 3, 6) keeps ceil(3/2) + 2 of its 5 fresh slots */
            {
                static const int slots[7] = {7, 8, 8, 9, 10, 10, 11};
                int s;
                for (s = 0; s < 7; s++)
                    CHECK_CLOSE(y->series[s].kv_cache_bytes, y->series[0].kv_cache_bytes * slots[s] / 7.0,
                                1e-12, 0, "KV bytes follow the slot count");
            }
        }
        ekv_report_free(&r);
    }
    TEST_END();
}

static void test_paired_and_json(void)
{
    ekv_config c = small_config(EKV_VARIANT_INT8);
    ekv_report r;
    ekv_json j;
    ekv_result res;
    memset(&r, 0, sizeof r);
    c.paired_baseline = 1;
    TEST_BEGIN("cycle: paired baseline and JSON");
    res = ekv_cycle_run(&c, &r);
    CHECK(res == EKV_SUCCESS, "%s", ekv_last_error());
    if (res == EKV_SUCCESS) {
        const ekv_cycle_result *y = &r.cycles[0];
        CHECK(y->has_baseline && y->speedup > 0 && y->speedup_ci_lo <= y->speedup_ci_hi,
              "speedup %g [%g, %g]", y->speedup, y->speedup_ci_lo, y->speedup_ci_hi);
        CHECK_CLOSE(y->baseline_tokens_per_sec, c.batch * c.decode_tokens * 1000.0 / y->baseline_total_ms,
                    1e-12, 0, "baseline tokens/s");
        CHECK(r.has_baseline, "report baseline");
        ekv_json_init(&j, 0);
        ekv_report_write_json(&r, &j);
        CHECK(!j.failed, "json");
        if (!j.failed) {
            CHECK(strstr(j.buffer, "\"inference_cycle\":{\"variant\":\"int8\",\"layers\":2") != NULL,
                  "inference_cycle object");
            CHECK(strstr(j.buffer, "\"phases_ms\":{\"projection\":") != NULL, "phases");
            CHECK(strstr(j.buffer, "\"series\":[{\"step\":1,\"context_len\":25,") != NULL, "series");
            CHECK(strstr(j.buffer, "\"agreement_vs_cache\":{\"max_abs_diff\":") != NULL, "agreement");
            CHECK(strstr(j.buffer, "\"error_vs_cache\":[{\"layer\":0,") != NULL, "error per layer");
            CHECK(strstr(j.buffer, "\"speedup_vs_baseline\":null") == NULL, "speedup measured");
            CHECK(strstr(j.buffer, "\"baseline_variant\":\"cache\"") != NULL, "the baseline named");
            CHECK(strstr(j.buffer, "\"elastic_total_ms\":null") != NULL &&
                      strstr(j.buffer, "\"elastic_tokens_per_sec\":null") != NULL,
                  "int8's figures are not elastic's");
            CHECK(strstr(j.buffer, "\"baseline\":{\"kv_dtype\":\"f16\",") != NULL,
                  "the report's baseline is cache in --kv-dtype");
        }
        ekv_json_free(&j);
    }
    TEST_END();
    ekv_report_free(&r);
}

/* A backend whose times are made up: repeat `rep` reports phase p as fake_phase[rep][p]
   and its steps add up to fake_total[rep], skewed so that mean and median differ. Checks
   that the driver reports medians for the total and for each phase alike. */
#define FAKE_REPS 5
static const double fake_total[FAKE_REPS] = {10.0, 11.0, 12.0, 13.0, 100.0};
static const double fake_phase[FAKE_REPS][EKV_CYCLE_PHASES] = {
    {4.0, 1.0, 0.0, 3.0}, {5.0, 1.0, 0.0, 2.0}, {3.0, 2.0, 0.0, 6.0}, {6.0, 1.5, 0.0, 4.0},
    {90.0, 3.0, 0.0, 5.0}};
static int fake_state;

static ekv_result fake_prepare(const ekv_config *c, ekv_report *report)
{
    (void)c;
    if (report) snprintf(report->device.name, sizeof report->device.name, "fake");
    return EKV_SUCCESS;
}
static ekv_result fake_open(const ekv_config *c, const ekv_cycle_model *m, ekv_variant v, void **state)
{
    (void)c, (void)m, (void)v;
    *state = &fake_state;
    return EKV_SUCCESS;
}
static ekv_result fake_loop(void *state, ekv_cycle_timing *timing, int rep, float *record)
{
    int s, p;
    (void)state, (void)record;
    if (!timing) return EKV_SUCCESS;
    for (s = 0; s < timing->steps; s++) {
        timing->step_ms[(size_t)rep * (size_t)timing->steps + (size_t)s] = fake_total[rep] / timing->steps;
        timing->kv_bytes[s] = timing->peak_bytes[s] = 1.0;
    }
    for (p = 0; p < EKV_CYCLE_PHASES; p++)
        timing->phase_ms[(size_t)rep * EKV_CYCLE_PHASES + (size_t)p] = fake_phase[rep][p];
    return EKV_SUCCESS;
}
static ekv_result fake_last_outputs(void *state, float *out)
{
    (void)state, (void)out; /* the driver's buffers start zeroed: every variant agrees */
    return EKV_SUCCESS;
}
static void fake_layer_bytes(void *state, int layer, ekv_cache_bytes *bytes, double *kept)
{
    (void)state, (void)layer;
    memset(bytes, 0, sizeof *bytes);
    *kept = 0.0;
}
static void fake_close(void *state)
{
    (void)state;
}
static const ekv_cycle_backend fake_backend = {EKV_BACKEND_CPU, fake_prepare, fake_open, fake_loop,
                                               fake_last_outputs, fake_layer_bytes, fake_close};

static double fractions[1024];
static int fraction_count;
static void record_progress(void *context, double fraction)
{
    (void)context;
    if (fraction_count < 1024) fractions[fraction_count] = fraction;
    fraction_count++;
}

static void test_statistic_and_progress(void)
{
    ekv_config c = small_config(EKV_VARIANT_ALL);
    ekv_report r;
    ekv_result res;
    int i, p, monotonic = 1;
    memset(&r, 0, sizeof r);
    c.reps = FAKE_REPS;
    c.warmup = 0;
    c.paired_baseline = 1;
    TEST_BEGIN("cycle: total_ms and phases_ms are both medians; progress over the variants");
    fraction_count = 0;
    ekv_progress_set_handler(record_progress, NULL);
    res = ekv_cycle_run_on(&c, &fake_backend, &r);
    ekv_progress_set_handler(NULL, NULL);
    CHECK(res == EKV_SUCCESS, "%s", ekv_last_error());
    if (res == EKV_SUCCESS) {
        for (i = 0; i < r.cycle_count; i++) {
            const ekv_cycle_result *y = &r.cycles[i];
            CHECK_CLOSE(y->total_ms, 12.0, 1e-12, 0, "total_ms = median of 10, 11, 12, 13, 100");
            CHECK(fabs(y->stats.mean - 29.2) < 1e-9, "the mean differs (%g)", y->stats.mean);
            for (p = 0; p < EKV_CYCLE_PHASES; p++) {
                static const double median[EKV_CYCLE_PHASES] = {5.0, 1.5, 0.0, 4.0};
                CHECK_CLOSE(y->phases_ms[p], median[p], 1e-12, 0, "phase = median over repeats");
            }
            CHECK(y->has_baseline && fabs(y->speedup - 1.0) < 1e-12, "%s: speedup %g",
                  ekv_variant_name(y->variant), y->speedup);
        }
        /* six variants, each FAKE_REPS rounds; each variant its sixth of the run */
        CHECK(fraction_count == 6 * FAKE_REPS, "%d progress reports", fraction_count);
        for (i = 1; i < fraction_count && i < 1024; i++) monotonic &= fractions[i] >= fractions[i - 1];
        CHECK(monotonic, "progress never goes back");
        CHECK(fraction_count > FAKE_REPS && fabs(fractions[FAKE_REPS - 1] - 1.0 / 6) < 1e-12,
              "the first variant ends at 1/6: %g", fractions[FAKE_REPS - 1]);
        CHECK(fraction_count > 0 && fabs(fractions[fraction_count - 1] - 1.0) < 1e-12, "ends at 1");
    }
    ekv_report_free(&r);
    TEST_END();
}

/* The meter with explicit clocks: silent for 2 s, then a line, then one per 10 s in a log;
   a closing line only when something was printed. */
static void test_progress_meter(void)
{
    ekv_progress_meter m;
    FILE *f = tmpfile();
    char text[2048];
    size_t n;
    TEST_BEGIN("progress meter: silent under 2 s, a line now and then in a log, a bar on a tty");
    CHECK(f != NULL, "tmpfile");
    if (f) {
        ekv_progress_meter_init(&m, f, "t", 0, 2, 0.0);
        ekv_progress_meter_run(&m, 0, "first", 0.0);
        ekv_progress_meter_update(&m, 0.5, 1000.0);
        ekv_progress_meter_run(&m, 1, "second", 1900.0);
        ekv_progress_meter_end(&m, 1950.0);
        CHECK(ftell(f) == 0, "nothing printed for a job under 2 s (%ld bytes)", ftell(f));
        ekv_progress_meter_init(&m, f, "t", 0, 2, 0.0);
        ekv_progress_meter_run(&m, 0, "first", 0.0);
        ekv_progress_meter_update(&m, 0.5, 2500.0);  /* printed: 25% of the job */
        ekv_progress_meter_update(&m, 0.6, 5000.0);  /* within 10 s of the last: not */
        ekv_progress_meter_run(&m, 1, "second", 12600.0); /* printed: 50% */
        ekv_progress_meter_update(&m, 1.0, 13000.0);
        ekv_progress_meter_end(&m, 13000.0);
        rewind(f);
        n = fread(text, 1, sizeof text - 1, f);
        text[n] = '\0';
        CHECK(strstr(text, "t: 25% done, run 1/2 3 s elapsed, about 8 s left (first)\n") != NULL, "%s", text);
        CHECK(strstr(text, "60%") == NULL, "rate limited: %s", text);
        CHECK(strstr(text, "t: 50% done, run 2/2 13 s elapsed, about 13 s left (second)\n") != NULL, "%s", text);
        CHECK(strstr(text, "t: 100% done, 2 of 2 runs in 13 s\n") != NULL, "%s", text);
        fclose(f);
    }
    f = tmpfile();
    if (f) {
        ekv_progress_meter_init(&m, f, "t", 1, 1, 0.0);
        ekv_progress_meter_run(&m, 0, "one", 0.0);
        ekv_progress_meter_update(&m, 0.5, 3000.0);
        ekv_progress_meter_update(&m, 0.75, 3100.0); /* a tty redraws every 0.2 s: not yet */
        ekv_progress_meter_update(&m, 0.8, 3300.0);
        ekv_progress_meter_end(&m, 4000.0);
        rewind(f);
        n = fread(text, 1, sizeof text - 1, f);
        text[n] = '\0';
        CHECK(strstr(text, "\r[############............]  50%  3 s elapsed, about 3 s left  one\033[K") != NULL,
              "bar: %s", text);
        CHECK(strstr(text, " 75%") == NULL && strstr(text, " 80%") != NULL, "redraw period: %s", text);
        CHECK(strstr(text, "\r\033[Kt: 80% done in 4 s\n") != NULL, "closing line: %s", text);
        fclose(f);
    }
    TEST_END();
}

static void test_outputs_match_cycle(void)
{
    ekv_config c = small_config(EKV_VARIANT_CACHE);
    const size_t per_step = (size_t)c.layers * c.batch * c.heads * c.head_dim;
    float *a = (float *)calloc(per_step * (size_t)c.decode_tokens, sizeof(float));
    float *b = (float *)calloc(per_step * (size_t)c.decode_tokens, sizeof(float));
    TEST_BEGIN("cycle: ekv_cycle_outputs, nocache vs cache at every step");
    CHECK(a && b, "alloc");
    if (a && b) {
        size_t i;
        double most = 0.0;
        CHECK(ekv_cycle_outputs(&c, EKV_VARIANT_CACHE, a) == EKV_SUCCESS, "%s", ekv_last_error());
        CHECK(ekv_cycle_outputs(&c, EKV_VARIANT_NOCACHE, b) == EKV_SUCCESS, "%s", ekv_last_error());
        for (i = 0; i < per_step * (size_t)c.decode_tokens; i++) {
            double d = fabs((double)a[i] - b[i]);
            if (!(d <= most)) most = d;
        }
        CHECK(most <= 1e-6, "max diff over all steps %g", most);
        CHECK(ekv_cycle_outputs(&c, EKV_VARIANT_ALL, a) == EKV_ERR_INVALID_ARG, "all refused");
    }
    free(a);
    free(b);
    TEST_END();
}

static void test_bad_combinations(void)
{
    ekv_config c = small_config(EKV_VARIANT_INT8);
    ekv_report r;
    TEST_BEGIN("cycle: bad combinations");
    c.kv_dtype = EKV_DTYPE_F32;
    CHECK(ekv_config_validate(&c) == EKV_ERR_UNSUPPORTED, "int8 + f32");
    CHECK(strstr(ekv_last_error(), "--variant=int8") && strstr(ekv_last_error(), "--kv-dtype=f32"),
          "message names the flags: %s", ekv_last_error());
    c.variant = EKV_VARIANT_INT8_SHARED;
    CHECK(ekv_config_validate(&c) == EKV_ERR_UNSUPPORTED, "int8-shared + f32");
    c.kv_dtype = EKV_DTYPE_INT8;
    CHECK(ekv_config_validate(&c) == EKV_SUCCESS, "int8-shared + int8: %s", ekv_last_error());
    c = small_config(EKV_VARIANT_CACHE);
    c.decode_tokens = 0;
    CHECK(ekv_config_validate(&c) == EKV_ERR_INVALID_ARG, "decode_tokens 0");
    CHECK(strstr(ekv_last_error(), "--decode_tokens") != NULL, "%s", ekv_last_error());
    c = small_config(EKV_VARIANT_NOCACHE);
    c.layers = 256;
    c.heads = 1024;
    c.head_dim = 256;
    c.seq_len = 1 << 20;
    CHECK(ekv_config_validate(&c) == EKV_ERR_UNSUPPORTED, "a cycle that does not fit");
    CHECK(strstr(ekv_last_error(), "--layers") != NULL, "%s", ekv_last_error());
    memset(&r, 0, sizeof r);
    CHECK(ekv_cycle_run(&c, &r) == EKV_ERR_UNSUPPORTED, "refused before allocating");
    ekv_report_free(&r);
    /* with one layer there is nothing to share */
    {
        static const ekv_variant sharing[3] = {EKV_VARIANT_SHARED, EKV_VARIANT_INT8_SHARED, EKV_VARIANT_ALL};
        int i;
        for (i = 0; i < 3; i++) {
            c = small_config(sharing[i]);
            c.layers = 1;
            CHECK(ekv_config_validate(&c) == EKV_ERR_INVALID_ARG, "%s with one layer",
                  ekv_variant_name(c.variant));
            CHECK(strstr(ekv_last_error(), "--layers=1") && strstr(ekv_last_error(), "--layers=2"),
                  "names --layers: %s", ekv_last_error());
        }
        c = small_config(EKV_VARIANT_CACHE);
        c.layers = 1;
        CHECK(ekv_config_validate(&c) == EKV_SUCCESS, "cache with one layer: %s", ekv_last_error());
        c.paired_baseline = 1;
        c.baseline_dtype = EKV_DTYPE_F32;
        c.baseline_dtype_set = 1;
        CHECK(ekv_config_validate(&c) == EKV_ERR_INVALID_ARG && strstr(ekv_last_error(), "--baseline-dtype"),
              "the cycle's baseline is cache: %s", ekv_last_error());
    }
    c = small_config(EKV_VARIANT_CACHE);
    c.inference = 0;
    memset(&r, 0, sizeof r);
    CHECK(ekv_cycle_run(&c, &r) == EKV_ERR_INVALID_ARG, "needs --inference");
    ekv_report_free(&r);
    TEST_END();
}

/* ---- the serving simulation (issue 17) ---- */

static ekv_config serve_config(ekv_dtype dtype, ekv_policy policy, int page_size, double budget_gb)
{
    ekv_config c = small_config(EKV_VARIANT_CACHE);
    c.seq_len = 40;
    c.decode_tokens = 12;
    c.kv_dtype = dtype;
    c.policy = policy;
    c.compression = policy == EKV_POLICY_NONE ? 1 : 3;
    c.compress_every = 4;
    c.recent = 2;
    c.page_size = page_size;
    c.memory_budget_gb = budget_gb;
    return ekv_config_resolve(&c);
}

/* The test's own run of the first `batch` sequences in a pool of `pages` pages: its own
   lockstep loop over the pool of >>paged, elastic's lengths from ekv_compress_region_of,
   ekv_paged_check after every step. Returns 1 when it fits, 0 when a page is missing, -1
   when the accounting breaks; *peak and *end receive the pages in use. */
static int own_run(const ekv_config *c, ekv_variant v, int pages, int batch, int *peak, int *end)
{
    ekv_paged_cache pool;
    int *len = (int *)calloc((size_t)batch, sizeof(int)), *comp = (int *)calloc((size_t)batch, sizeof(int));
    int i, t, lo, hi, fits = 1;
    const int elastic = v == EKV_VARIANT_ELASTIC && c->policy != EKV_POLICY_NONE;
    ekv_serve_prompt_range(c, &lo, &hi);
    *peak = *end = 0;
    if (ekv_paged_pool_create(&pool, batch, c->page_size, pages, hi + c->decode_tokens) != EKV_SUCCESS) {
        free(len);
        free(comp);
        return -1;
    }
    for (t = 0; t <= c->decode_tokens && fits == 1; t++) {
        for (i = 0; i < batch && fits == 1; i++) {
            len[i] = t == 0 ? ekv_serve_prompt_length(c, i) : len[i] + 1;
            if (t == 0 && (len[i] < lo || len[i] > hi)) fits = -1;
            else if (ekv_paged_resize(&pool, i, len[i]) != EKV_SUCCESS) fits = 0;
            else if (t == 0 && ekv_paged_pages_used(&pool) > *peak) *peak = ekv_paged_pages_used(&pool);
            if (fits == 1 && t == 0 && elastic) {
                const ekv_compress_region r = ekv_compress_region_of(len[i], comp[i], c->recent, c->sinks,
                                                                     c->compression);
                if (r.old > 0) comp[i] = r.first + r.budget, len[i] = comp[i] + r.recent;
                if (ekv_paged_resize(&pool, i, len[i]) != EKV_SUCCESS) fits = -1;
            }
        }
        if (fits == 1 && ekv_paged_pages_used(&pool) > *peak) *peak = ekv_paged_pages_used(&pool);
        if (fits == 1 && t > 0 && elastic && t % c->compress_every == 0)
            for (i = 0; i < batch && fits == 1; i++) {
                const ekv_compress_region r = ekv_compress_region_of(len[i], comp[i], c->recent, c->sinks,
                                                                     c->compression);
                if (r.old > 0) comp[i] = r.first + r.budget, len[i] = comp[i] + r.recent;
                if (ekv_paged_resize(&pool, i, len[i]) != EKV_SUCCESS) fits = -1;
            }
        if (fits == 1 && (ekv_paged_check(&pool) != EKV_SUCCESS ||
                          ekv_paged_pages_used(&pool) + pool.free_count != pages))
            fits = -1;
    }
    *end = ekv_paged_pages_used(&pool);
    for (i = 0; i < batch && fits == 1; i++)
        if (ekv_paged_retire(&pool, i) != EKV_SUCCESS) fits = -1;
    if (fits == 1 && (ekv_paged_check(&pool) != EKV_SUCCESS || pool.free_count != pages)) fits = -1;
    ekv_paged_free(&pool);
    free(len);
    free(comp);
    return fits;
}

static const ekv_serve_variant *find_serve(const ekv_serve_result *s, ekv_variant v)
{
    int i;
    for (i = 0; i < s->count; i++)
        if (s->variants[i].variant == v) return &s->variants[i];
    return NULL;
}

static void test_serving_simulation(void)
{
    static const struct { ekv_dtype dtype; ekv_policy policy; int page_size; double gb; } cases[] = {
        {EKV_DTYPE_F16, EKV_POLICY_STRIDE, 16, 0.004},
        {EKV_DTYPE_F32, EKV_POLICY_POOL, 8, 0.002},
        {EKV_DTYPE_INT8, EKV_POLICY_WINDOW, 32, 0.003},
        {EKV_DTYPE_F16, EKV_POLICY_NONE, 16, 0.0025},
    };
    size_t k;
    for (k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        const ekv_config c = serve_config(cases[k].dtype, cases[k].policy, cases[k].page_size, cases[k].gb);
        ekv_serve_result s;
        char name[160];
        int i;
        snprintf(name, sizeof name, "serving: largest batch per variant = the test's own count (%s %s P=%d %g GB)",
                 ekv_dtype_name(c.kv_dtype), ekv_policy_name(c.policy), c.page_size, c.memory_budget_gb);
        TEST_BEGIN(name);
        CHECK(ekv_config_validate(&c) == EKV_SUCCESS, "%s", ekv_last_error());
        CHECK(ekv_serve_simulate(&c, &s) == EKV_SUCCESS, "%s", ekv_last_error());
        CHECK(s.count == 6 && s.page_size == c.page_size && s.prompt_min == 20 && s.prompt_max == 60,
              "count %d range [%d, %d]", s.count, s.prompt_min, s.prompt_max);
        for (i = 0; i < s.count; i++) {
            const ekv_serve_variant *y = &s.variants[i];
            const char *v = ekv_variant_name(y->variant);
            const int pages = (int)ekv_serve_budget_pages(&c, y->variant);
            int peak, end, peak1, end1;
            CHECK(y->has_budget && y->budget.pool_pages == pages && pages > 0, "%s: pool %d vs %d", v,
                  y->budget.pool_pages, pages);
            CHECK(y->budget.batch >= 1, "%s: max batch %d", v, y->budget.batch);
            CHECK(own_run(&c, y->variant, pages, y->budget.batch, &peak, &end) == 1, "%s: batch %d does not fit",
                  v, y->budget.batch);
            CHECK(peak == y->budget.pages_in_use_peak && end == y->budget.pages_in_use_end,
                  "%s: peak %d/%d end %d/%d", v, peak, y->budget.pages_in_use_peak, end, y->budget.pages_in_use_end);
            CHECK(own_run(&c, y->variant, pages, y->budget.batch + 1, &peak1, &end1) == 0,
                  "%s: batch %d + 1 also fits", v, y->budget.batch);
            CHECK(y->budget.pages_in_use_peak + y->budget.pages_free_at_peak == pages &&
                      y->budget.pages_in_use_end + y->budget.pages_free_end == pages &&
                      y->serving.pages_in_use_peak + y->serving.pages_free_at_peak == y->serving.pool_pages &&
                      y->serving.pages_in_use_end + y->serving.pages_free_end == y->serving.pool_pages,
                  "%s: in use + free != pool", v);
            CHECK(y->budget.pages_in_use_end <= y->budget.pages_in_use_peak &&
                      y->budget.pages_in_use_peak <= pages,
                  "%s: end %d peak %d pool %d", v, y->budget.pages_in_use_end, y->budget.pages_in_use_peak, pages);
            /* the serving run of --batch in the contiguous reservation: ceil((60 + 12) / P) per sequence */
            CHECK(y->serving.batch == c.batch &&
                      y->serving.pool_pages == c.batch * ((60 + 12 + c.page_size - 1) / c.page_size),
                  "%s: serving pool %d", v, y->serving.pool_pages);
            CHECK(own_run(&c, y->variant, y->serving.pool_pages, c.batch, &peak, &end) == 1 &&
                      peak == y->serving.pages_in_use_peak && end == y->serving.pages_in_use_end,
                  "%s: serving peak %d/%d end %d/%d", v, peak, y->serving.pages_in_use_peak, end,
                  y->serving.pages_in_use_end);
        }
        {
            const int cache = find_serve(&s, EKV_VARIANT_CACHE)->budget.batch;
            const ekv_variant smaller[4] = {EKV_VARIANT_INT8, EKV_VARIANT_SHARED, EKV_VARIANT_INT8_SHARED,
                                            EKV_VARIANT_ELASTIC};
            for (i = 0; i < 4; i++)
                CHECK(find_serve(&s, smaller[i])->budget.batch >= cache, "%s fits %d, cache %d",
                      ekv_variant_name(smaller[i]), find_serve(&s, smaller[i])->budget.batch, cache);
            /* int8 and shared store fewer bytes a token than f16/f32 cache: strictly more */
            if (c.kv_dtype != EKV_DTYPE_INT8)
                CHECK(find_serve(&s, EKV_VARIANT_INT8)->budget.batch > cache, "int8 no larger");
            CHECK(find_serve(&s, EKV_VARIANT_SHARED)->budget.batch > cache, "shared no larger");
            if (c.policy != EKV_POLICY_NONE)
                CHECK(find_serve(&s, EKV_VARIANT_ELASTIC)->budget.batch > cache &&
                          find_serve(&s, EKV_VARIANT_ELASTIC)->serving.pages_in_use_end <
                              find_serve(&s, EKV_VARIANT_CACHE)->serving.pages_in_use_end,
                      "elastic: batch %d vs %d, pages at the end %d vs %d",
                      find_serve(&s, EKV_VARIANT_ELASTIC)->budget.batch, cache,
                      find_serve(&s, EKV_VARIANT_ELASTIC)->serving.pages_in_use_end,
                      find_serve(&s, EKV_VARIANT_CACHE)->serving.pages_in_use_end);
        }
        TEST_END();
    }

    TEST_BEGIN("serving: prompts seeded, in range, independent of the batch; one layer reports four variants");
    {
        ekv_config c = serve_config(EKV_DTYPE_F16, EKV_POLICY_STRIDE, 16, 0.0);
        ekv_serve_result s;
        ekv_variant list[EKV_SERVE_VARIANTS];
        int i, differ = 0, first = ekv_serve_prompt_length(&c, 0);
        for (i = 0; i < 200; i++) {
            const int p = ekv_serve_prompt_length(&c, i);
            CHECK(p >= 20 && p <= 60 && p == ekv_serve_prompt_length(&c, i), "prompt %d: %d", i, p);
            differ |= p != first;
        }
        CHECK(differ, "every prompt the same length");
        c.seed = 7;
        for (i = 0, differ = 0; i < 20; i++) {
            ekv_config d = c;
            d.seed = 42;
            differ |= ekv_serve_prompt_length(&c, i) != ekv_serve_prompt_length(&d, i);
        }
        CHECK(differ, "--seed does not move the prompts");
        c.layers = 1;
        CHECK(ekv_serve_variants(&c, list) == 4, "one layer");
        CHECK(ekv_serve_simulate(&c, &s) == EKV_SUCCESS && s.count == 4 && !s.variants[0].has_budget,
              "%s", ekv_last_error());
    }
    TEST_END();

    TEST_BEGIN("serving: --memory-budget's errors name the flag (no page size, too small, too large, no --inference)");
    {
        ekv_config c = serve_config(EKV_DTYPE_F16, EKV_POLICY_STRIDE, 16, 1e-6);
        CHECK(ekv_config_validate(&c) == EKV_ERR_INVALID_ARG && strstr(ekv_last_error(), "--memory-budget") &&
                  strstr(ekv_last_error(), "too few for one sequence") && strstr(ekv_last_error(), "allowed at least"),
              "too small: %s", ekv_last_error());
        c.memory_budget_gb = 0.004;
        c.page_size = 0;
        CHECK(ekv_config_validate(&c) == EKV_ERR_INVALID_ARG && strstr(ekv_last_error(), "--memory-budget") &&
                  strstr(ekv_last_error(), "--page-size"), "no page size: %s", ekv_last_error());
        c.page_size = 8;
        c.memory_budget_gb = 1e5;
        CHECK(ekv_config_validate(&c) == EKV_ERR_INVALID_ARG && strstr(ekv_last_error(), "--memory-budget"),
              "too large a pool: %s", ekv_last_error());
        c.memory_budget_gb = -1.0;
        CHECK(ekv_config_validate(&c) == EKV_ERR_INVALID_ARG && strstr(ekv_last_error(), "--memory-budget"),
              "negative: %s", ekv_last_error());
        c.memory_budget_gb = 0.004;
        c.inference = 0;
        CHECK(ekv_config_validate(&c) == EKV_ERR_INVALID_ARG && strstr(ekv_last_error(), "--inference"),
              "without --inference: %s", ekv_last_error());
    }
    TEST_END();

    TEST_BEGIN("serving: a cycle run with --page-size reports the simulation in its JSON, null without");
    {
        ekv_config c = serve_config(EKV_DTYPE_F16, EKV_POLICY_STRIDE, 16, 0.004);
        ekv_report r;
        ekv_json j;
        c.variant = EKV_VARIANT_ELASTIC;
        c.reps = 2;
        c.warmup = 0;
        CHECK(ekv_cycle_run(&c, &r) == EKV_SUCCESS, "%s", ekv_last_error());
        CHECK(r.serve != NULL && r.serve->count == 6 && r.serve->variants[5].budget.batch > 0, "no simulation");
        ekv_json_init(&j, 0);
        ekv_report_write_json(&r, &j);
        CHECK(!j.failed && strstr(j.buffer, "\"paging\":{\"page_size\":16,\"memory_budget_gb\":0.004,") &&
                  strstr(j.buffer, "\"max_batch\":") && strstr(j.buffer, "\"pages_free_at_peak\":") &&
                  strstr(j.buffer, "\"prompt_lengths\":{\"distribution\":\"uniform\",\"min\":20,\"max\":60,"),
              "JSON: %.300s", j.buffer ? strstr(j.buffer, "\"paging\"") : "");
        ekv_json_free(&j);
        ekv_report_free(&r);
        c.page_size = 0;
        c.memory_budget_gb = 0.0;
        CHECK(ekv_cycle_run(&c, &r) == EKV_SUCCESS && r.serve == NULL, "%s", ekv_last_error());
        ekv_report_free(&r);
    }
    TEST_END();
}

int main(void)
{
    test_all_variants();
    test_elastic_policies();
    test_paired_and_json();
    test_outputs_match_cycle();
    test_bad_combinations();
    test_statistic_and_progress();
    test_progress_meter();
    test_serving_simulation();
    return ekv_test_finish();
}
