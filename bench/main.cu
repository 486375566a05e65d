/* bench/main.cu - ekv_bench: decode attention over an elastic KV cache, measured and
   validated. Thin: parse, run each configuration of the sweep, emit.

   Build (GPU):          nvcc -O3 -o ekv_bench bench/main.cu -lcublas
   Build (CPU backend):  c++ -O2 -x c++ -o ekv_bench bench/main.cu
   Build (emulator):     c++ -O1 -std=c++17 -pthread -DEKV_EMULATOR -Itests/emu/include \
                             -x c++ -o ekv_bench_emu bench/main.cu

   Exit status: 0 success; 1 a run failed (e.g. the kernel disagrees with the CPU
   reference, a CUDA error) or its output could not be written; 2 bad input (flags, sizes,
   files, combinations, no device, not enough memory). Output files are written only when
   every run succeeded (see "Output" below for how). */
#define EKV_IMPLEMENTATION
#include "../ekv.h"

#if defined(__CUDACC__) || defined(EKV_EMULATOR)
#include "../ekv_cuda.cuh"
#define EKV_BENCH_HAS_CUDA 1
#else
#define EKV_BENCH_HAS_CUDA 0
#endif

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#if defined(__unix__) || defined(__APPLE__)
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#define BENCH_POSIX 1
#define bench_is_terminal(file) isatty(fileno(file))
#else
#define BENCH_POSIX 0
#define bench_is_terminal(file) 0
#endif


typedef struct bench_output {
    char *text;
    size_t length, capacity;
    int failed; /* an append ran out of memory: the text is incomplete, never written */
} bench_output;

static int bench_append(bench_output *o, const char *text, size_t n)
{
    if (o->length + n + 1 > o->capacity) {
        size_t cap = (o->capacity ? o->capacity * 2 : 4096);
        char *p;
        while (cap < o->length + n + 1) cap *= 2;
        p = (char *)realloc(o->text, cap);
        if (!p) {
            o->failed = 1;
            return -1;
        }
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

/* ---- Output ------------------------------------------------------------------------

   --out and --jsonl are written through to what their path is, decided before anything
   runs (bench_target_resolve) so that a bad path is bad input (exit 2) and nothing blocks:
   - a regular file, or a path that does not exist yet: --out writes a temporary in the
     same directory and renames it over the file (a reader sees the old file or the new
     one, never half of one; an existing file keeps its permissions); --jsonl appends with
     one O_APPEND write to an existing file (concurrent runs appending to one file keep
     every line) and cuts the file back to its old length if that write fails, and creates
     an absent file as --out does;
   - a symbolic link: the same, applied to the file it leads to (the link stays a link);
   - a device, FIFO or socket (/dev/null, /dev/stdout on a pipe): opened and written
     directly, never replaced; a FIFO's open waits for its reader, as any writer's does.
   The same file for --out and --jsonl is an error. Every write, flush and close is
   checked, standard output's included: a failure is exit 1 with a message. */

typedef struct bench_target {
    const char *flag; /* "--out" or "--jsonl" */
    const char *path; /* as given */
    char file[EKV_PATH_MAX + 8]; /* what is written: symbolic links followed */
    int special;      /* a device, FIFO or socket: written directly */
    int exists;
#if BENCH_POSIX
    dev_t device;
    ino_t inode;
#endif
} bench_target;

static ekv_result bench_target_error(const bench_target *t, const char *what, int error)
{
    return ekv_set_error(EKV_ERR_INVALID_ARG, "%s=%s: %s%s%s", t->flag, t->path, what,
                         error ? ": " : "", error ? strerror(error) : "");
}

#if BENCH_POSIX
/* The directory part of `path` ("." when there is none) into `out`. */
static void bench_dirname(const char *path, char *out, size_t size)
{
    const char *slash = strrchr(path, '/');
    if (!slash) snprintf(out, size, ".");
    else if (slash == path) snprintf(out, size, "/");
    else snprintf(out, size, "%.*s", (int)(slash - path), path);
}

/* Where a path that does not exist will be created: a dangling symbolic link is followed
   to the name it gives (relative to the link's directory), at most 40 links deep. */
static ekv_result bench_target_absent(bench_target *t)
{
    char current[EKV_PATH_MAX + 8], directory[EKV_PATH_MAX + 8], real_directory[PATH_MAX];
    const char *base;
    struct stat st;
    int depth;
    if (snprintf(current, sizeof current, "%s", t->path) >= (int)sizeof current)
        return bench_target_error(t, "path too long", 0);
    for (depth = 0; depth < 40 && lstat(current, &st) == 0 && S_ISLNK(st.st_mode); depth++) {
        char link[EKV_PATH_MAX + 8];
        ssize_t n = readlink(current, link, sizeof link - 1);
        if (n < 0) return bench_target_error(t, "cannot read the symbolic link", errno);
        link[n] = '\0';
        bench_dirname(current, directory, sizeof directory);
        if (snprintf(current, sizeof current, "%s%s%s", link[0] == '/' ? "" : directory,
                     link[0] == '/' ? "" : "/", link) >= (int)sizeof current)
            return bench_target_error(t, "the symbolic link leads to too long a path", 0);
    }
    if (depth == 40) return bench_target_error(t, "too many levels of symbolic links", 0);
    bench_dirname(current, directory, sizeof directory);
    base = strrchr(current, '/') ? strrchr(current, '/') + 1 : current;
    if (!base[0]) return bench_target_error(t, "names a directory, not a file", 0);
    if (!realpath(directory, real_directory) || stat(real_directory, &st) != 0 ||
        !S_ISDIR(st.st_mode))
        return bench_target_error(t, "cannot open the file for writing: its directory does not exist", 0);
    if (access(real_directory, W_OK | X_OK) != 0)
        return bench_target_error(t, "cannot open the file for writing: its directory is not writable", errno);
    if (snprintf(t->file, sizeof t->file, "%s/%s", strcmp(real_directory, "/") ? real_directory : "",
                 base) >= (int)sizeof t->file)
        return bench_target_error(t, "path too long", 0);
    return EKV_SUCCESS;
}
#endif

/* What an output path is, decided without opening it (opening a FIFO would block).
   append: --jsonl, which appends to an existing file in place. */
static ekv_result bench_target_resolve(const char *flag, const char *path, int append,
                                       bench_target *t)
{
    memset(t, 0, sizeof *t);
    t->flag = flag;
    t->path = path;
#if BENCH_POSIX
    {
        struct stat st;
        char real[PATH_MAX], directory[PATH_MAX];
        if (stat(path, &st) != 0) {
            if (errno != ENOENT) return bench_target_error(t, "cannot open the file for writing", errno);
            return bench_target_absent(t);
        }
        t->exists = 1;
        t->device = st.st_dev;
        t->inode = st.st_ino;
        if (S_ISDIR(st.st_mode)) return bench_target_error(t, "is a directory, not a file", 0);
        if (S_ISSOCK(st.st_mode)) /* open(2) cannot open one */
            return bench_target_error(t, "is a socket; allowed: a file, a device or a FIFO", 0);
        if (access(path, W_OK) != 0) return bench_target_error(t, "cannot open the file for writing", errno);
        if (!S_ISREG(st.st_mode)) { /* written directly, through the name as given */
            t->special = 1;
            if (snprintf(t->file, sizeof t->file, "%s", path) >= (int)sizeof t->file)
                return bench_target_error(t, "path too long", 0);
            return EKV_SUCCESS;
        }
        if (!realpath(path, real))
            return bench_target_error(t, "cannot resolve the path", errno);
        if (snprintf(t->file, sizeof t->file, "%s", real) >= (int)sizeof t->file)
            return bench_target_error(t, "path too long", 0);
        bench_dirname(real, directory, sizeof directory);
        if (!append && access(directory, W_OK | X_OK) != 0)
            return bench_target_error(t, "its directory is not writable (the file is replaced "
                                      "through a temporary beside it)", errno);
    }
#else
    (void)append;
    if (snprintf(t->file, sizeof t->file, "%s", path) >= (int)sizeof t->file)
        return bench_target_error(t, "path too long", 0);
#endif
    return EKV_SUCCESS;
}

static int bench_same_file(const bench_target *a, const bench_target *b)
{
#if BENCH_POSIX
    if (a->exists && b->exists) return a->device == b->device && a->inode == b->inode;
#endif
    return a->exists == b->exists && strcmp(a->file, b->file) == 0;
}

/* --dump-dir: an existing directory this process may create files in. */
static ekv_result bench_check_dir(const char *dir)
{
#if BENCH_POSIX
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode) || access(dir, W_OK | X_OK) != 0)
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "--dump-dir=%s: not an existing, writable directory", dir);
#else
    (void)dir;
#endif
    return EKV_SUCCESS;
}

#if BENCH_POSIX
/* All n bytes to fd, through short writes and interruptions; 0 or an errno value. */
static int bench_write_all(int fd, const char *text, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, text, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return w < 0 ? errno : EIO;
        text += w;
        n -= (size_t)w;
    }
    return 0;
}

/* A new file beside t->file with the text, named in `temporary`, for bench_commit to
   rename over t->file. */
static int bench_stage(const bench_target *t, const char *text, size_t n, char *temporary,
                       size_t size)
{
    char directory[EKV_PATH_MAX + 8];
    const char *base = strrchr(t->file, '/') ? strrchr(t->file, '/') + 1 : t->file;
    struct stat st;
    mode_t mode, mask;
    int fd, error;
    bench_dirname(t->file, directory, sizeof directory);
    if (snprintf(temporary, size, "%s/.%s.ekv-XXXXXX", directory, base) >= (int)size) {
        temporary[0] = '\0';
        return ENAMETOOLONG;
    }
    fd = mkstemp(temporary);
    if (fd < 0) {
        temporary[0] = '\0';
        return errno;
    }
    /* the permissions the file has, or those a new file gets (mkstemp makes 0600) */
    mask = umask(0);
    umask(mask);
    mode = stat(t->file, &st) == 0 ? (st.st_mode & 07777) : (0666 & ~mask);
    error = bench_write_all(fd, text, n);
    if (!error && fchmod(fd, mode) != 0) error = errno;
    if (!error && fsync(fd) != 0 && errno != EINVAL) error = errno;
    if (close(fd) != 0 && !error) error = errno;
    if (error) {
        unlink(temporary);
        temporary[0] = '\0';
    }
    return error;
}

/* One O_APPEND write; on failure the file is cut back to its old length. */
static int bench_append_file(const bench_target *t, const char *text, size_t n)
{
    struct stat st;
    int error, fd = open(t->file, O_WRONLY | O_APPEND);
    if (fd < 0) return errno;
    if (fstat(fd, &st) != 0) {
        error = errno;
        close(fd);
        return error;
    }
    error = bench_write_all(fd, text, n);
    if (!error && fsync(fd) != 0 && errno != EINVAL) error = errno;
    if (error) { /* take the partial lines back; should that fail too, the error stands */
        int cut = ftruncate(fd, st.st_size);
        (void)cut;
    }
    if (close(fd) != 0 && !error) error = errno;
    return error;
}
#endif

/* An output in two steps, so that one failure leaves neither file changed where it can:
   bench_prepare writes what can be written beside the target (a regular file's temporary;
   staged[0] = '\0' when nothing was staged), bench_commit puts it in place (the rename, or
   for an append or a special file the write itself). 0 or an errno value. */
static int bench_prepare(const bench_target *t, const char *text, size_t n, int append,
                         char *staged, size_t size)
{
    staged[0] = '\0';
#if BENCH_POSIX
    if (!t->special && !(append && t->exists)) return bench_stage(t, text, n, staged, size);
#else
    (void)t; (void)text; (void)n; (void)append; (void)size;
#endif
    return 0;
}

static int bench_commit(const bench_target *t, const char *text, size_t n, int append,
                        const char *staged)
{
#if BENCH_POSIX
    if (staged[0]) {
        if (rename(staged, t->file) == 0) return 0;
        {
            int error = errno;
            unlink(staged);
            return error;
        }
    }
    if (t->special) {
        int error, fd = open(t->file, O_WRONLY | (append ? O_APPEND : 0));
        if (fd < 0) return errno;
        error = bench_write_all(fd, text, n);
        if (close(fd) != 0 && !error) error = errno;
        return error;
    }
    return bench_append_file(t, text, n);
#else
    FILE *f = fopen(t->file, append ? "ab" : "wb");
    size_t written;
    (void)staged;
    if (!f) return errno ? errno : EIO;
    written = fwrite(text, 1, n, f);
    if (fclose(f) != 0 || written != n) return errno ? errno : EIO;
    return 0;
#endif
}

static void bench_discard(const char *staged)
{
    if (staged[0]) remove(staged);
}

/* A write that failed after the runs: exit status 1, the runs are lost with it. */
static int bench_write_failed(const char *what, int error)
{
    fprintf(stderr, "ekv_bench: error: %s: write failed: %s\n", what, strerror(error));
    return 1;
}

/* Standard output flushed and closed, checked: the last write can fail here (a full disk,
   a closed descriptor, a reader gone). 0, or the exit status after the message. */
static int bench_close_stdout(void)
{
    int error = 0;
    errno = 0;
    if (fflush(stdout) != 0 || ferror(stdout)) error = errno ? errno : EIO;
    if (fclose(stdout) != 0 && !error) error = errno ? errno : EIO;
    return error ? bench_write_failed("standard output", error) : 0;
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

/* What a print function writes, appended to `o` through a temporary file, so that the
   text output is buffered like JSON and written only when every run succeeded. */
static void bench_capture(bench_output *o, const ekv_report *report, const ekv_summary *summary,
                          ekv_output_format format)
{
    FILE *tmp = tmpfile();
    char chunk[4096];
    size_t n;
    if (!tmp) {
        o->failed = 1;
        return;
    }
    if (report) ekv_report_print_table(report, tmp);
    else ekv_summary_print(summary, format, tmp);
    if (fflush(tmp) != 0 || ferror(tmp)) o->failed = 1;
    rewind(tmp);
    while ((n = fread(chunk, 1, sizeof chunk, tmp)) > 0) bench_append(o, chunk, n);
    if (ferror(tmp)) o->failed = 1;
    fclose(tmp);
}

/* After every run succeeded: --out and --jsonl (both staged before either is put in
   place), or standard output. The exit status. */
static int bench_emit(const ekv_config *base, const bench_output *out_text,
                      const bench_output *jsonl_text, const bench_target *out_target,
                      const bench_target *jsonl_target)
{
    char what[EKV_PATH_MAX + 16], out_staged[EKV_PATH_MAX + 64], jsonl_staged[EKV_PATH_MAX + 64];
    const char *out = out_text->text ? out_text->text : "";
    const char *jsonl = jsonl_text->text ? jsonl_text->text : "";
    int error = 0;
    out_staged[0] = jsonl_staged[0] = '\0';
    if (out_text->failed || jsonl_text->failed)
        return bench_fail(ekv_set_error(EKV_ERR_OUT_OF_MEMORY,
                                        "the output could not be buffered (out of memory or "
                                        "temporary space); nothing was written"));
    if (base->out_path[0] &&
        (error = bench_prepare(out_target, out, out_text->length, 0, out_staged, sizeof out_staged)) != 0)
        snprintf(what, sizeof what, "--out=%s", base->out_path);
    else if (base->jsonl_path[0] &&
             (error = bench_prepare(jsonl_target, jsonl, jsonl_text->length, 1, jsonl_staged,
                                    sizeof jsonl_staged)) != 0)
        snprintf(what, sizeof what, "--jsonl=%s", base->jsonl_path);
    else if (base->jsonl_path[0] &&
             (error = bench_commit(jsonl_target, jsonl, jsonl_text->length, 1, jsonl_staged)) != 0)
        snprintf(what, sizeof what, "--jsonl=%s", base->jsonl_path);
    else if (base->out_path[0] &&
             (error = bench_commit(out_target, out, out_text->length, 0, out_staged)) != 0)
        snprintf(what, sizeof what, "--out=%s", base->out_path);
    if (error) {
        bench_discard(out_staged);
        bench_discard(jsonl_staged);
        return bench_write_failed(what, error);
    }
    if (!base->out_path[0] && out_text->length) fwrite(out, 1, out_text->length, stdout);
    return bench_close_stdout();
}

int main(int argc, char **argv)
{
    ekv_cli cli;
    bench_output out_text, jsonl_text;
    bench_target out_target, jsonl_target;
    ekv_progress_meter meter;
    ekv_summary summary;
    size_t i;
    ekv_result r;
    int error;
#if BENCH_POSIX
    /* a closed standard output: a read-only descriptor holds its place, so that no file
       opened later becomes descriptor 1 and every write to stdout fails (exit 1) */
    if (fcntl(1, F_GETFD) < 0 && errno == EBADF) {
        int fd = open("/dev/null", O_RDONLY);
        if (fd >= 0 && fd != 1) close(fd);
    }
#endif
    memset(&out_target, 0, sizeof out_target);
    memset(&jsonl_target, 0, sizeof jsonl_target);
    r = ekv_cli_parse(argc, argv, &cli, stdout);
    if (r == EKV_HELP_SHOWN) return bench_close_stdout();
    if (r != EKV_SUCCESS) return bench_fail(r);
    if (cli.notice[0] && !cli.base.quiet) fprintf(stderr, "ekv_bench: notice: %s\n", cli.notice);
    if ((r = ekv_run_check(&cli.base, BENCH_DEVICE)) != EKV_SUCCESS) return bench_fail(r);
    if (cli.base.out_path[0] &&
        (r = bench_target_resolve("--out", cli.base.out_path, 0, &out_target)) != EKV_SUCCESS)
        return bench_fail(r);
    if (cli.base.jsonl_path[0] &&
        (r = bench_target_resolve("--jsonl", cli.base.jsonl_path, 1, &jsonl_target)) != EKV_SUCCESS)
        return bench_fail(r);
    if (cli.base.out_path[0] && cli.base.jsonl_path[0] && bench_same_file(&out_target, &jsonl_target))
        return bench_fail(ekv_set_error(EKV_ERR_INVALID_ARG,
                                        "--out=%s and --jsonl=%s are the same file: one would "
                                        "overwrite the other; give two files",
                                        cli.base.out_path, cli.base.jsonl_path));
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
    error = bench_emit(&cli.base, &out_text, &jsonl_text, &out_target, &jsonl_target);
    free(out_text.text);
    free(jsonl_text.text);
    return error;
}
