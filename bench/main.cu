/* bench/main.cu - ekv_bench: decode attention over an elastic KV cache, measured and
   validated. Thin: parse, run each configuration of the sweep, emit.

   Build (GPU):          nvcc -O3 -o ekv_bench bench/main.cu -lcublas
   Build (CPU backend):  c++ -O2 -x c++ -o ekv_bench bench/main.cu
   Build (emulator):     c++ -O1 -std=c++17 -pthread -DEKV_EMULATOR -Itests/emu/include \
                             -x c++ -o ekv_bench_emu bench/main.cu

   Exit status: 0 success; 1 a run failed (e.g. the kernel disagrees with the CPU
   reference, a CUDA error); 2 bad input (flags, sizes, files, combinations, no device,
   not enough device memory). Output files are written only when every run succeeded. */
#define EKV_IMPLEMENTATION
#include "../ekv.h"

#if defined(__CUDACC__) || defined(EKV_EMULATOR)
#include "../ekv_cuda.cuh"
#define EKV_BENCH_HAS_CUDA 1
#else
#define EKV_BENCH_HAS_CUDA 0
#endif

#include <stdlib.h>
#include <string.h>
#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#define bench_is_terminal(file) isatty(fileno(file))
#else
#define bench_is_terminal(file) 0
#endif

typedef struct bench_output {
    char *text;
    size_t length, capacity;
} bench_output;

static int bench_append(bench_output *o, const char *text, size_t n)
{
    if (o->length + n + 1 > o->capacity) {
        size_t cap = (o->capacity ? o->capacity * 2 : 4096);
        char *p;
        while (cap < o->length + n + 1) cap *= 2;
        p = (char *)realloc(o->text, cap);
        if (!p) return -1;
        o->text = p;
        o->capacity = cap;
    }
    memcpy(o->text + o->length, text, n);
    o->length += n;
    o->text[o->length] = '\0';
    return 0;
}

static int bench_exit_status(ekv_result r)
{
    switch (r) {
    case EKV_ERR_INVALID_ARG:
    case EKV_ERR_FORMAT:
    case EKV_ERR_IO:
    case EKV_ERR_UNSUPPORTED:
    case EKV_ERR_NO_DEVICE:
    case EKV_ERR_OUT_OF_MEMORY:
        return 2;
    default:
        return 1;
    }
}

static int bench_fail(ekv_result r)
{
    fprintf(stderr, "ekv_bench: error: %s\n",
            ekv_last_error()[0] ? ekv_last_error() : ekv_result_string(r));
    return bench_exit_status(r);
}

/* Checks up front that an output path can be written, so that a bad path is a bad-input
   error before anything runs, and leaves no file behind. */
static ekv_result bench_check_writable(const char *flag, const char *path)
{
    FILE *probe = fopen(path, "rb");
    int existed = probe != NULL;
    if (probe) fclose(probe);
    probe = fopen(path, "ab");
    if (!probe)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "%s=%s: cannot open the file for writing", flag,
                             path);
    fclose(probe);
    if (!existed) remove(path);
    return EKV_SUCCESS;
}

static ekv_result bench_check_dir(const char *dir)
{
    char probe[EKV_PATH_MAX + 32];
    snprintf(probe, sizeof probe, "%s/.ekv_probe", dir);
    if (bench_check_writable("--dump-dir", probe) != EKV_SUCCESS)
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "--dump-dir=%s: not an existing, writable directory", dir);
    return EKV_SUCCESS;
}

/* The device side of this build for ekv_run: CUDA (or the emulator), or none. */
#if EKV_BENCH_HAS_CUDA
#define BENCH_DEVICE ekv_cuda_device_backend()
#else
#define BENCH_DEVICE NULL
#endif

static void bench_describe(const ekv_config *c, char *out, size_t size)
{
    int n = snprintf(out, size, "batch=%d seq=%d heads=%d kv-heads=%d dim=%d %s %s C=%d", c->batch,
                     c->seq_len, c->heads, c->kv_heads, c->head_dim,
                     ekv_dtype_name(c->kv_dtype), ekv_policy_name(c->policy), c->compression);
    if (c->inference && n > 0 && (size_t)n < size)
        snprintf(out + n, size - (size_t)n, " --inference %s layers=%d steps=%d",
                 ekv_variant_name(c->variant), c->layers, c->decode_tokens);
}

/* What a print function writes, appended to `o` (through a temporary file, so that the
   text output is buffered like JSON and written only when every run succeeded). */
static void bench_capture(bench_output *o, const ekv_report *report, const ekv_summary *summary,
                          ekv_output_format format)
{
    FILE *tmp = tmpfile();
    FILE *to = tmp ? tmp : stdout;
    char chunk[4096];
    size_t n;
    if (report) ekv_report_print_table(report, to);
    else ekv_summary_print(summary, format, to);
    if (!tmp) return;
    rewind(tmp);
    while ((n = fread(chunk, 1, sizeof chunk, tmp)) > 0) bench_append(o, chunk, n);
    fclose(tmp);
}

static int bench_write_file(const char *path, const char *text, size_t n, const char *mode)
{
    FILE *f = fopen(path, mode);
    size_t written;
    if (!f) return -1;
    written = fwrite(text, 1, n, f);
    return (fclose(f) == 0 && written == n) ? 0 : -1;
}

int main(int argc, char **argv)
{
    ekv_cli cli;
    bench_output out_text, jsonl_text;
    ekv_progress_meter meter;
    ekv_summary summary;
    size_t i;
    ekv_result r = ekv_cli_parse(argc, argv, &cli, stdout);
    if (r == EKV_HELP_SHOWN) return 0;
    if (r != EKV_SUCCESS) return bench_fail(r);
    if ((r = ekv_run_check(&cli.base, BENCH_DEVICE)) != EKV_SUCCESS) return bench_fail(r);
    if (cli.base.out_path[0] && (r = bench_check_writable("--out", cli.base.out_path)) != EKV_SUCCESS)
        return bench_fail(r);
    if (cli.base.jsonl_path[0] &&
        (r = bench_check_writable("--jsonl", cli.base.jsonl_path)) != EKV_SUCCESS)
        return bench_fail(r);
    if (cli.base.dump_dir[0] && (r = bench_check_dir(cli.base.dump_dir)) != EKV_SUCCESS)
        return bench_fail(r);

    memset(&out_text, 0, sizeof out_text);
    memset(&jsonl_text, 0, sizeof jsonl_text);
    ekv_summary_init(&summary);
    /* progress on stderr, through the timing loop of whichever backend runs */
    ekv_progress_meter_init(&meter, cli.base.quiet ? NULL : stderr, "ekv_bench",
                            bench_is_terminal(stderr), cli.run_count, ekv_time_ms());
    if (!cli.base.quiet) ekv_progress_set_handler(ekv_progress_meter_handler, &meter);
    for (i = 0; i < cli.run_count; i++) {
        ekv_config config;
        ekv_report report;
        char what[256];
        ekv_cli_config(&cli, i, &config);
        bench_describe(&config, what, sizeof what);
        ekv_progress_meter_run(&meter, i, what, ekv_time_ms());
        r = ekv_run(&config, BENCH_DEVICE, &report);
        if (r == EKV_SUCCESS && report.notice[0] && !config.quiet && BENCH_DEVICE &&
            config.backend == EKV_BACKEND_AUTO && report.backend == EKV_BACKEND_CPU)
            fprintf(stderr, "ekv_bench: notice: %s\n", report.notice); /* fell back */
        if (r == EKV_SUCCESS && !config.json && config.format != EKV_FORMAT_DETAIL)
            r = ekv_summary_add(&summary, &report);
        if (r != EKV_SUCCESS) {
            int status;
            ekv_progress_meter_end(&meter, ekv_time_ms());
            if (cli.run_count > 1) fprintf(stderr, "ekv_bench: failed at %s\n", what);
            status = bench_fail(r);
            ekv_report_free(&report);
            ekv_summary_free(&summary);
            free(out_text.text);
            free(jsonl_text.text);
            return status;
        }
        ekv_progress_meter_update(&meter, 1.0, ekv_time_ms());
        if (config.json || config.jsonl_path[0]) {
            ekv_json json;
            ekv_json_init(&json, 0);
            ekv_report_write_json(&report, &json);
            if (json.failed) {
                ekv_json_free(&json);
                ekv_report_free(&report);
                return bench_fail(ekv_set_error(EKV_ERR_OUT_OF_MEMORY, "out of memory writing JSON"));
            }
            if (config.json) {
                bench_append(&out_text, json.buffer, json.length);
                bench_append(&out_text, "\n", 1);
            }
            if (config.jsonl_path[0]) {
                bench_append(&jsonl_text, json.buffer, json.length);
                bench_append(&jsonl_text, "\n", 1);
            }
            ekv_json_free(&json);
        }
        if (!config.json && config.format == EKV_FORMAT_DETAIL) {
            if (i > 0) bench_append(&out_text, "\n", 1);
            bench_capture(&out_text, &report, NULL, config.format);
        }
        ekv_report_free(&report);
    }
    ekv_progress_meter_end(&meter, ekv_time_ms());
    ekv_progress_set_handler(NULL, NULL);
    if (!cli.base.json && cli.base.format != EKV_FORMAT_DETAIL)
        bench_capture(&out_text, NULL, &summary, cli.base.format);
    ekv_summary_free(&summary);
    if (cli.base.jsonl_path[0] &&
        bench_write_file(cli.base.jsonl_path, jsonl_text.text ? jsonl_text.text : "",
                         jsonl_text.length, "ab") != 0)
        return bench_fail(ekv_set_error(EKV_ERR_IO, "--jsonl=%s: write failed", cli.base.jsonl_path));
    if (cli.base.out_path[0]) {
        /* write beside the target, then rename: a reader never sees half a file */
        char tmp_path[EKV_PATH_MAX + 16];
        snprintf(tmp_path, sizeof tmp_path, "%s.tmp", cli.base.out_path);
        if (bench_write_file(tmp_path, out_text.text ? out_text.text : "", out_text.length, "wb") != 0 ||
            rename(tmp_path, cli.base.out_path) != 0) {
            remove(tmp_path);
            return bench_fail(ekv_set_error(EKV_ERR_IO, "--out=%s: write failed", cli.base.out_path));
        }
    } else if (out_text.length) {
        fwrite(out_text.text, 1, out_text.length, stdout);
    }
    free(out_text.text);
    free(jsonl_text.text);
    return 0;
}
