/* test_checks.c - the checks of issue 16 through the library: sizes for people
   (ekv_format_bytes); bad data named as data (ekv_data_check, ekv_data_load,
   ekv_cache_build against the dtype's max_abs), with the tensor, index and limit; pool with
   C = 1 stores no bias; defaults resolved against the workload (sinks) while an explicit
   value is still judged; the command line's repeated flags, cycle-only flags and overlong
   numbers; the host-memory estimate that refuses a config before anything is allocated;
   a null accuracy figure with its reason in the JSON; the dump's observed queries read
   back by ekv_data_load.

   Build: cc -std=c99 -pedantic -Wall -Wextra -Werror -O1 -I. tests/test_checks.c tests/ekv_impl.c -lm \
              -o build/test_checks */
#define _POSIX_C_SOURCE 200809L /* mkdtemp */
#include "../ekv.h"
#include "ekv_test.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define HAS(text, needle) (strstr((text), (needle)) != NULL)

static void test_format_bytes(void)
{
    static const struct {
        double bytes;
        const char *text;
    } cases[] = {{0, "0 B"},           {999, "999 B"},           {999.6, "1.000 kB"},
                 {1000, "1.000 kB"},   {1048576, "1.049 MB"},    {999999.9, "1.000 MB"},
                 {36.5e9, "36.500 GB"}, {8.8e13, "88.000 TB"}};
    char text[32];
    size_t i;
    TEST_BEGIN("ekv_format_bytes: adaptive units, never 0.00 for a small size");
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++)
        CHECK(strcmp(ekv_format_bytes(cases[i].bytes, text, sizeof text), cases[i].text) == 0,
              "%g: got '%s' want '%s'", cases[i].bytes, text, cases[i].text);
    TEST_END();
}

/* Small structured data, batch 1, 4 heads, 2 KV heads, 32 tokens, dim 64, 4 observed. */
static ekv_data small_data(void)
{
    ekv_data_desc d;
    ekv_data data;
    memset(&d, 0, sizeof d);
    d.kind = EKV_DATA_RANDOM;
    d.batch = 1;
    d.heads = 4;
    d.kv_heads = 2;
    d.head_dim = 64;
    d.seq_len = 32;
    d.observe = 4;
    d.seed = 3;
    if (ekv_data_generate(&d, &data) != EKV_SUCCESS) memset(&data, 0, sizeof data);
    return data;
}

static void test_data_check(void)
{
    ekv_data data = small_data();
    size_t k_index = ekv_data_kv_index(&data, 0, 1, 3) + 2, q_index = 2 * 64 + 5;
    float saved;
    TEST_BEGIN("ekv_data_check: NaN, inf and float overflow named with tensor and index");
    CHECK(data.q != NULL, "data generated");
    if (data.q) {
        CHECK(ekv_data_check(&data, 0.0) == EKV_SUCCESS, "%s", ekv_last_error());
        saved = data.k[k_index];
        data.k[k_index] = (float)NAN;
        CHECK(ekv_data_check(&data, 0.0) == EKV_ERR_INVALID_ARG && HAS(ekv_last_error(), "k[0][1][3][2]") &&
                  HAS(ekv_last_error(), "NaN"), "%s", ekv_last_error());
        data.k[k_index] = saved;
        saved = data.q[q_index];
        data.q[q_index] = -(float)INFINITY;
        CHECK(ekv_data_check(&data, 0.0) == EKV_ERR_INVALID_ARG && HAS(ekv_last_error(), "q[0][2][5]") &&
                  HAS(ekv_last_error(), "-inf"), "%s", ekv_last_error());
        data.q[q_index] = saved;
        data.q_observe[(size_t)(1 * 4 + 3) * 64 + 7] = (float)NAN;
        CHECK(ekv_data_check(&data, 0.0) == EKV_ERR_INVALID_ARG &&
                  HAS(ekv_last_error(), "q_observe[0][1][3][7]"), "%s", ekv_last_error());
        data.q_observe[(size_t)(1 * 4 + 3) * 64 + 7] = 0.0f;
        /* |q| and |k| of 8e19 each: float logits overflow even after the scale 1/8 */
        {
            int d;
            float q_row[64], k_row[64];
            memcpy(q_row, data.q, sizeof q_row);
            memcpy(k_row, data.k + ekv_data_kv_index(&data, 0, 0, 9), sizeof k_row);
            for (d = 0; d < 64; d++) {
                data.q[d] = 1e19f;
                data.k[ekv_data_kv_index(&data, 0, 0, 9) + (size_t)d] = 1e19f;
            }
            CHECK(ekv_data_check(&data, 0.0) == EKV_ERR_INVALID_ARG && HAS(ekv_last_error(), "q[0][0]") &&
                      HAS(ekv_last_error(), "k[0][0][9]"), "%s", ekv_last_error());
            memcpy(data.q, q_row, sizeof q_row);
            memcpy(data.k + ekv_data_kv_index(&data, 0, 0, 9), k_row, sizeof k_row);
        }
        data.v[ekv_data_kv_index(&data, 0, 1, 4) + 1] = 1e37f;
        CHECK(ekv_data_check(&data, 0.0) == EKV_ERR_INVALID_ARG && HAS(ekv_last_error(), "v[0][1][4][1]"),
              "%s", ekv_last_error());
    }
    ekv_data_free(&data);
    TEST_END();
}

static void test_storage_range(void)
{
    ekv_data data = small_data();
    ekv_compress_desc desc;
    ekv_host_cache cache;
    size_t index = ekv_data_kv_index(&data, 0, 1, 10) + 3;
    TEST_BEGIN("ekv_cache_build: values beyond the dtype's range (any token) are named, nothing built");
    memset(&desc, 0, sizeof desc);
    desc.policy = EKV_POLICY_STRIDE;
    desc.compression = 2; /* keeps the odd tokens of 32: token 10 is dropped */
    desc.observe = 4;
    if (data.v) {
        data.v[index] = 70000.0f;
        CHECK(ekv_cache_build(&data, &desc, EKV_DTYPE_F16, 0.0, &cache) == EKV_ERR_INVALID_ARG &&
                  HAS(ekv_last_error(), "v[0][1][10][3]") && HAS(ekv_last_error(), "65504") &&
                  cache.k == NULL, "f16: %s", ekv_last_error());
        data.v[index] = -65504.0f;
        CHECK(ekv_cache_build(&data, &desc, EKV_DTYPE_F16, 0.0, &cache) == EKV_SUCCESS, "f16 max");
        ekv_cache_free(&cache);
        data.v[index] = 1e6f; /* int4: a group's minimum is its f16 zero point */
        CHECK(ekv_cache_build(&data, &desc, EKV_DTYPE_INT4, 0.0, &cache) == EKV_ERR_INVALID_ARG &&
                  HAS(ekv_last_error(), "int4"), "int4: %s", ekv_last_error());
        CHECK(ekv_cache_build(&data, &desc, EKV_DTYPE_INT8, 0.0, &cache) == EKV_SUCCESS, "int8 takes 1e6");
        ekv_cache_free(&cache);
        CHECK(ekv_cache_build(&data, &desc, EKV_DTYPE_F32, 0.0, &cache) == EKV_SUCCESS, "f32 takes 1e6");
        ekv_cache_free(&cache);
        data.v[index] = FLT_MAX;
        CHECK(ekv_cache_build(&data, &desc, EKV_DTYPE_BF16, 0.0, &cache) == EKV_ERR_INVALID_ARG &&
                  HAS(ekv_last_error(), "bf16"), "bf16: %s", ekv_last_error());
        CHECK(ekv_dtype_info(EKV_DTYPE_F16)->max_abs == 65504.0 &&
                  ekv_dtype_info(EKV_DTYPE_INT4)->max_abs == 65504.0 &&
                  ekv_dtype_info(EKV_DTYPE_FP8)->max_abs == FLT_MAX, "traits");
    }
    ekv_data_free(&data);
    TEST_END();
}

static void test_pool_bias(void)
{
    ekv_data data = small_data();
    ekv_compress_desc desc;
    ekv_host_cache cache;
    TEST_BEGIN("pool: a bias only where groups exceed one token (C > 1)");
    memset(&desc, 0, sizeof desc);
    desc.policy = EKV_POLICY_POOL;
    desc.compression = 1;
    CHECK(!ekv_policy_has_bias(&desc), "pool C=1");
    CHECK(ekv_cache_build(&data, &desc, EKV_DTYPE_F16, 0.0, &cache) == EKV_SUCCESS && cache.bias == NULL,
          "pool C=1 built without a bias");
    ekv_cache_free(&cache);
    desc.compression = 2;
    CHECK(ekv_policy_has_bias(&desc), "pool C=2");
    CHECK(ekv_cache_build(&data, &desc, EKV_DTYPE_F16, 0.0, &cache) == EKV_SUCCESS && cache.bias != NULL,
          "pool C=2 has its bias");
    ekv_cache_free(&cache);
    ekv_data_free(&data);
    TEST_END();
}

static void test_defaults(void)
{
    ekv_config c = ekv_config_default(), r;
    TEST_BEGIN("sinks: the default fits the sequence, an explicit value is judged");
    CHECK(c.sinks == EKV_SINKS_AUTO, "default is automatic");
    r = ekv_config_resolve(&c);
    CHECK(r.sinks == EKV_SINKS_DEFAULT, "seq 1024: %d", r.sinks);
    c.seq_len = 3;
    r = ekv_config_resolve(&c);
    CHECK(r.sinks == 3 && ekv_config_resolve(&r).sinks == 3, "seq 3: %d (and resolving twice)", r.sinks);
    CHECK(ekv_config_validate(&c) == EKV_SUCCESS, "%s", ekv_last_error());
    c.policy = EKV_POLICY_TOPK;
    CHECK(ekv_config_validate(&c) == EKV_SUCCESS, "topk, observe 16 > seq 3: %s", ekv_last_error());
    c.sinks = 4;
    CHECK(ekv_config_validate(&c) == EKV_ERR_INVALID_ARG && HAS(ekv_last_error(), "--sinks=4"),
          "%s", ekv_last_error());
    c.sinks = EKV_SINKS_AUTO;
    c.recent = 4;
    CHECK(ekv_config_validate(&c) == EKV_ERR_INVALID_ARG && HAS(ekv_last_error(), "--recent=4"),
          "%s", ekv_last_error());
    TEST_END();
}

static ekv_result parse(ekv_cli *cli, int argc, const char *const *argv)
{
    char *copy[16];
    int i;
    for (i = 0; i < argc; i++) copy[i] = (char *)argv[i];
    return ekv_cli_parse(argc, copy, cli, stdout);
}

static void test_command_line(void)
{
    static const char *const repeated[] = {"ekv_bench", "--seq=64", "--seq", "48", "--json", "--json"};
    static const char *const variant[] = {"ekv_bench", "--variant=int8"};
    static const char *const layers[] = {"ekv_bench", "--layers=2", "--seq=64"};
    static const char *const overlong[] = {"ekv_bench", "--seq=99999999999999999999"};
    static const char *const short_seq[] = {"ekv_bench", "--seq=1,2,3", "--policy=window"};
    ekv_cli *cli = (ekv_cli *)malloc(sizeof *cli);
    ekv_config c;
    TEST_BEGIN("command line: repeated flags noted, cycle-only flags, numbers as typed");
    CHECK(cli != NULL, "allocation");
    if (cli) {
        CHECK(parse(cli, 6, repeated) == EKV_SUCCESS && cli->base.seq_len == 48 &&
                  HAS(cli->notice, "--seq given 2 times") && HAS(cli->notice, "--seq=48") &&
                  HAS(cli->notice, "--json given 2 times"), "notice '%s'", cli->notice);
        CHECK(parse(cli, 2, variant) == EKV_ERR_INVALID_ARG && HAS(ekv_last_error(), "--variant") &&
                  HAS(ekv_last_error(), "--inference"), "%s", ekv_last_error());
        CHECK(parse(cli, 3, layers) == EKV_ERR_INVALID_ARG && HAS(ekv_last_error(), "--layers"),
              "%s", ekv_last_error());
        CHECK(parse(cli, 2, overlong) == EKV_ERR_INVALID_ARG &&
                  HAS(ekv_last_error(), "99999999999999999999") && !HAS(ekv_last_error(), "922337"),
              "%s", ekv_last_error());
        CHECK(parse(cli, 3, short_seq) == EKV_SUCCESS && cli->run_count == 3 && cli->notice[0] == '\0',
              "%s", ekv_last_error());
        if (cli->run_count == 3) {
            ekv_cli_config(cli, 0, &c);
            CHECK(c.sinks == 1, "seq 1: sinks %d", c.sinks);
        }
    }
    free(cli);
    TEST_END();
}

static void test_memory_estimate(void)
{
    ekv_config c = ekv_config_default();
    double parts[3], total;
    TEST_BEGIN("host memory: estimated from the config, refused before allocating");
    c.seq_len = 4096;
    c.heads = 8;
    c.head_dim = 128;
    c.paired_baseline = 1;
    total = ekv_workload_memory_estimate(&c, parts);
    /* f32 q, k, v and 16 observed queries; f16 cache at C = 2 and its f16 baseline */
    CHECK_CLOSE(parts[0], 4.0 * (8 * 128 + 2.0 * 8 * 4096 * 128 + 8 * 16 * 128) + 4, 1e-12, 0, "data");
    CHECK_CLOSE(parts[1], 2.0 * 8 * 2048 * 128 * 2 + 2.0 * 8 * 4096 * 128 * 2, 1e-12, 0, "caches");
    CHECK(parts[2] > 0 && total == parts[0] + parts[1] + parts[2], "total");
    c.seq_len = 1 << 24;
    c.batch = 4096;
    c.heads = 1024;
    CHECK(ekv_config_validate(&c) == EKV_ERR_UNSUPPORTED && HAS(ekv_last_error(), "host memory") &&
              HAS(ekv_last_error(), " PB") && HAS(ekv_last_error(), "--seq=16777216"),
          "%s", ekv_last_error());
    TEST_END();
}

static void test_null_reason(void)
{
    ekv_report report;
    ekv_config c = ekv_config_default();
    ekv_json json;
    TEST_BEGIN("JSON: accuracy.null_reason names why a figure is null, null otherwise");
    ekv_report_init(&report, &c);
    ekv_json_init(&json, 0);
    ekv_report_write_json(&report, &json);
    CHECK(json.buffer && HAS(json.buffer, "\"null_reason\":null"), "all finite");
    ekv_json_free(&json);
    report.accuracy.total.cosine = NAN;
    ekv_json_init(&json, 0);
    ekv_report_write_json(&report, &json);
    CHECK(json.buffer && HAS(json.buffer, "\"cosine\":null") && HAS(json.buffer, "\"null_reason\":\"not finite"),
          "a NaN");
    ekv_json_free(&json);
    report.cycle_count = 1; /* the cycle has no reference over the original data */
    report.cycles = (ekv_cycle_result *)calloc(1, sizeof *report.cycles);
    ekv_json_init(&json, 0);
    if (report.cycles) ekv_report_write_json(&report, &json);
    CHECK(json.buffer && HAS(json.buffer, "\"null_reason\":\"not measured"), "the cycle");
    ekv_json_free(&json);
    free(report.cycles);
    report.cycles = NULL;
    report.cycle_count = 0;
    ekv_report_free(&report);
    TEST_END();
}

static void test_dump_observe(void)
{
    ekv_config c = ekv_config_default();
    ekv_workload work;
    ekv_data back;
    char dir[] = "/tmp/ekv_checks_XXXXXX";
    float *out;
    size_t n;
    TEST_BEGIN("--dump-dir: q_observe.npy written and read back by ekv_data_load");
    c.seq_len = 40;
    c.heads = 4;
    c.kv_heads = 2;
    c.observe = 5;
    c.policy = EKV_POLICY_TOPK;
    memset(&back, 0, sizeof back);
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    CHECK(ekv_workload_prepare(&c, &work) == EKV_SUCCESS, "%s", ekv_last_error());
    n = (size_t)work.data.batch * (size_t)work.data.heads * (size_t)work.data.head_dim;
    out = (float *)calloc(n, sizeof *out);
    CHECK(out && ekv_workload_dump(&work, out, dir) == EKV_SUCCESS, "%s", ekv_last_error());
    CHECK(ekv_data_load(dir, c.observe, &back) == EKV_SUCCESS && back.observe == 5 && back.q_observe &&
              memcmp(back.q_observe, work.data.q_observe, n * 5 * sizeof(float)) == 0,
          "%s", ekv_last_error());
    if (back.q_observe) {
        char path[64];
        static const char *const names[] = {"q", "k", "v", "q_observe", "out", "ref"};
        size_t i;
        /* a NaN in a file: named with the file, the tensor and the index */
        back.q_observe[3 * 64 + 1] = (float)NAN;
        {
            int64_t shape[4];
            shape[0] = 1;
            shape[1] = 4;
            shape[2] = 5;
            shape[3] = 64;
            snprintf(path, sizeof path, "%s/q_observe.npy", dir);
            CHECK(ekv_npy_write(path, back.q_observe, 4, shape) == EKV_SUCCESS, "rewrite");
        }
        ekv_data_free(&back);
        CHECK(ekv_data_load(dir, c.observe, &back) == EKV_ERR_FORMAT &&
                  HAS(ekv_last_error(), "q_observe[0][0][3][1]") && HAS(ekv_last_error(), "NaN"),
              "%s", ekv_last_error());
        for (i = 0; i < sizeof names / sizeof names[0]; i++) {
            snprintf(path, sizeof path, "%s/%s.npy", dir, names[i]);
            remove(path);
        }
    }
    remove(dir);
    ekv_data_free(&back);
    free(out);
    ekv_workload_free(&work);
    TEST_END();
}

int main(void)
{
    test_format_bytes();
    test_data_check();
    test_storage_range();
    test_pool_bias();
    test_defaults();
    test_command_line();
    test_memory_estimate();
    test_null_reason();
    test_dump_observe();
    return ekv_test_finish();
}
