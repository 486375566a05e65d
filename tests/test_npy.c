/* test_npy.c - shows that ekv reads and writes .npy files the way numpy does, reads
   np.savez archives (stored members, zip64 headers included), refuses compressed ones
   with a clear message, and rejects every malformed or lying file with an error that
   names the file and the problem: truncation at every prefix, headers whose length,
   shape, dtype or order lie, and inconsistent q/k/v shapes.

   Build: cc -std=c99 -O2 -Wall -Wextra -I. -o build/test_npy tests/test_npy.c tests/ekv_impl.c -lm
   Run:   build/test_npy [FIXTURE_DIR] [--seed=N]
          FIXTURE_DIR holds files written by numpy (python3 tests/npy_make_fixtures.py DIR);
          without it those cases are skipped. With it, the test also leaves from_c_*.npy
          there for `python3 tests/npy_make_fixtures.py --check DIR`.
*/
#if !defined(_WIN32)
#define _POSIX_C_SOURCE 200809L
#endif
#include "ekv.h"
#include "tests/ekv_test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#if !defined(_WIN32)
#include <sys/stat.h>
#include <unistd.h>
#define HAVE_MKDIR 1
#endif

static ekv_rng test_rng;
static char temp_prefix[512];
static const char *fixture_dir;

/* ---- helpers ------------------------------------------------------------- */

static void temp_path(char *out, size_t size, const char *name)
{
    snprintf(out, size, "%s%s", temp_prefix, name);
}

static int write_bytes(const char *path, const unsigned char *bytes, size_t size)
{
    FILE *f = fopen(path, "wb");
    int ok;
    if (!f) return 0;
    ok = fwrite(bytes, 1, size, f) == size;
    return fclose(f) == 0 && ok;
}

static unsigned char *read_bytes(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    unsigned char *buffer;
    long n;
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    buffer = (unsigned char *)malloc((size_t)n + 1);
    *size = fread(buffer, 1, (size_t)n, f);
    fclose(f);
    return buffer;
}

static int message_has(const char *needle)
{
    return strstr(ekv_last_error(), needle) != NULL;
}

/* A .npy image: magic, version, little-endian header length, the dictionary padded with
   spaces and '\n' to a multiple of 64, then `data`. */
static unsigned char *make_npy(const char *dict, int major, const void *data, size_t data_bytes,
                               size_t *size)
{
    size_t prefix = major == 1 ? 10 : 12, length = strlen(dict) + 1, i;
    unsigned char *image;
    while ((prefix + length) % 64) length++;
    *size = prefix + length + data_bytes;
    image = (unsigned char *)malloc(*size);
    memcpy(image, "\x93NUMPY", 6);
    image[6] = (unsigned char)major;
    image[7] = 0;
    for (i = 0; i < prefix - 8; i++) image[8 + i] = (unsigned char)(length >> (8 * i));
    memset(image + prefix, ' ', length);
    memcpy(image + prefix, dict, strlen(dict));
    image[prefix + length - 1] = '\n';
    if (data_bytes) memcpy(image + prefix + length, data, data_bytes);
    return image;
}

static unsigned char *make_f32_npy(const char *shape, const float *values, size_t count,
                                   size_t *size)
{
    char dict[256];
    snprintf(dict, sizeof dict, "{'descr': '<f4', 'fortran_order': False, 'shape': %s, }", shape);
    return make_npy(dict, 1, values, count * sizeof(float), size);
}

/* CRC-32 bit by bit (the library uses a table): an independent check */
static uint32_t crc32_slow(const unsigned char *p, size_t n)
{
    uint32_t crc = 0xffffffffu;
    size_t i;
    int bit;
    for (i = 0; i < n; i++) {
        crc ^= p[i];
        for (bit = 0; bit < 8; bit++) crc = (crc >> 1) ^ (0xedb88320u & (0u - (crc & 1u)));
    }
    return ~crc;
}

static void put_le(unsigned char *p, uint64_t value, int bytes)
{
    int i;
    for (i = 0; i < bytes; i++) p[i] = (unsigned char)(value >> (8 * i));
}

typedef struct zip_member {
    const char *name;
    const unsigned char *data;
    size_t size;
} zip_member;

enum { ZIP_PLAIN = 0, ZIP_ZIP64 = 1, ZIP_DEFLATE_FLAG = 2, ZIP_BAD_CRC = 4 };

/* A minimal stored zip: local headers + data, central directory, end record. ZIP_ZIP64
   writes saturated 32-bit sizes with the zip64 extra field (as numpy's local headers
   are) and the zip64 end records (as archives beyond 4 GiB have), ZIP_DEFLATE_FLAG claims method 8, ZIP_BAD_CRC stores a wrong CRC. */
static unsigned char *make_zip(const zip_member *members, int count, int options, size_t *size)
{
    size_t total = 22 + 76, offset = 0, directory_start, directory_size = 0;
    size_t local_offsets[8];
    unsigned char *zip, *p;
    int i, zip64 = options & ZIP_ZIP64;
    for (i = 0; i < count; i++)
        total += 2 * (strlen(members[i].name) + (zip64 ? 20 : 0)) + 30 + 46 + members[i].size;
    zip = (unsigned char *)calloc(1, total);
    for (i = 0; i < count; i++) {
        size_t n = strlen(members[i].name);
        uint32_t crc = crc32_slow(members[i].data, members[i].size) ^ ((options & ZIP_BAD_CRC) ? 1u : 0u);
        p = zip + offset;
        local_offsets[i] = offset;
        put_le(p, 0x04034b50u, 4);
        put_le(p + 4, zip64 ? 45 : 20, 2);
        put_le(p + 8, (options & ZIP_DEFLATE_FLAG) ? 8 : 0, 2);
        put_le(p + 14, crc, 4);
        put_le(p + 18, zip64 ? 0xffffffffu : members[i].size, 4);
        put_le(p + 22, zip64 ? 0xffffffffu : members[i].size, 4);
        put_le(p + 26, n, 2);
        put_le(p + 28, zip64 ? 20 : 0, 2);
        memcpy(p + 30, members[i].name, n);
        if (zip64) {
            put_le(p + 30 + n, 1, 2);
            put_le(p + 32 + n, 16, 2);
            put_le(p + 34 + n, members[i].size, 8);
            put_le(p + 42 + n, members[i].size, 8);
        }
        memcpy(p + 30 + n + (zip64 ? 20 : 0), members[i].data, members[i].size);
        offset += 30 + n + (zip64 ? 20 : 0) + members[i].size;
    }
    directory_start = offset;
    for (i = 0; i < count; i++) {
        size_t n = strlen(members[i].name);
        uint32_t crc = crc32_slow(members[i].data, members[i].size) ^ ((options & ZIP_BAD_CRC) ? 1u : 0u);
        p = zip + offset;
        put_le(p, 0x02014b50u, 4);
        put_le(p + 4, 45, 2);
        put_le(p + 6, zip64 ? 45 : 20, 2);
        put_le(p + 10, (options & ZIP_DEFLATE_FLAG) ? 8 : 0, 2);
        put_le(p + 16, crc, 4);
        put_le(p + 20, zip64 ? 0xffffffffu : members[i].size, 4);
        put_le(p + 24, zip64 ? 0xffffffffu : members[i].size, 4);
        put_le(p + 28, n, 2);
        put_le(p + 30, zip64 ? 20 : 0, 2);
        put_le(p + 42, local_offsets[i], 4);
        memcpy(p + 46, members[i].name, n);
        if (zip64) {
            put_le(p + 46 + n, 1, 2);
            put_le(p + 48 + n, 16, 2);
            put_le(p + 50 + n, members[i].size, 8);
            put_le(p + 58 + n, members[i].size, 8);
        }
        offset += 46 + n + (zip64 ? 20 : 0);
        directory_size += 46 + n + (zip64 ? 20 : 0);
    }
    p = zip + offset;
    if (zip64) {
        /* zip64 end record and locator; the classic end record then holds saturated values */
        put_le(p, 0x06064b50u, 4);
        put_le(p + 4, 44, 8);
        put_le(p + 24, (uint64_t)count, 8);
        put_le(p + 32, (uint64_t)count, 8);
        put_le(p + 40, directory_size, 8);
        put_le(p + 48, directory_start, 8);
        put_le(p + 56, 0x07064b50u, 4);
        put_le(p + 64, offset, 8);
        put_le(p + 72, 1, 4);
        offset += 76;
        p = zip + offset;
    }
    put_le(p, 0x06054b50u, 4);
    put_le(p + 8, zip64 ? 0xffffu : (uint64_t)count, 2);
    put_le(p + 10, zip64 ? 0xffffu : (uint64_t)count, 2);
    put_le(p + 12, zip64 ? 0xffffffffu : directory_size, 4);
    put_le(p + 16, zip64 ? 0xffffffffu : directory_start, 4);
    *size = offset + 22;
    return zip;
}

static float ramp(size_t i)
{
    return (float)((double)i / 7.0);
}

static void fill_random(float *x, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++) {
        x[i] = (float)ekv_rng_normal(&test_rng);
        if (x[i] == 0.0f) x[i] = 1.0f;
    }
}

/* ---- round trips ------------------------------------------------------------ */

static void test_round_trips(void)
{
    static const int64_t shapes[][8] = {{7}, {3, 4}, {2, 3, 4, 5}, {1, 2, 1, 2, 1, 2, 1, 3}, {0, 3}, {2, 0, 4}};
    static const int ndims[] = {1, 2, 4, 8, 2, 3};
    char path[600];
    int s, d;
    TEST_BEGIN("npy round trips: f32 and f64, several shapes, numpy's 64-byte header padding");
    temp_path(path, sizeof path, "round.npy");
    for (s = 0; s < 6; s++) {
        size_t count = 1, i, size;
        float *values, *back;
        double *values64;
        ekv_npy_array array;
        unsigned char *bytes;
        for (d = 0; d < ndims[s]; d++) count *= (size_t)shapes[s][d];
        values = (float *)malloc((count + 1) * sizeof(float));
        values64 = (double *)malloc((count + 1) * sizeof(double));
        fill_random(values, count);
        for (i = 0; i < count; i++) values64[i] = (double)values[i] * (1.0 + 1e-12);
        CHECK(ekv_npy_write(path, values, ndims[s], shapes[s]) == EKV_SUCCESS, "%s", ekv_last_error());
        bytes = read_bytes(path, &size);
        CHECK(bytes && size == 10 + (size_t)(bytes[8] | bytes[9] << 8) + 4 * count, "file size");
        CHECK(bytes && (10 + (size_t)(bytes[8] | bytes[9] << 8)) % 64 == 0, "header not 64-aligned");
        CHECK(bytes && bytes[6] == 1 && bytes[7] == 0, "version 1.0");
        CHECK(bytes && bytes[9 + (bytes[8] | bytes[9] << 8)] == '\n', "header ends with newline");
        free(bytes);
        memset(&array, 0x5a, sizeof array);
        CHECK(ekv_npy_read(path, &array) == EKV_SUCCESS, "%s", ekv_last_error());
        CHECK(array.ndim == ndims[s], "ndim %d want %d", array.ndim, ndims[s]);
        for (d = 0; d < ndims[s] && d < array.ndim; d++) CHECK(array.shape[d] == shapes[s][d], "dim %d", d);
        CHECK(count == 0 || memcmp(array.values, values, count * sizeof(float)) == 0, "f32 values");
        ekv_npy_free(&array);
        CHECK(ekv_npy_write_f64(path, values64, ndims[s], shapes[s]) == EKV_SUCCESS, "%s",
              ekv_last_error());
        CHECK(ekv_npy_read(path, &array) == EKV_SUCCESS, "%s", ekv_last_error());
        back = array.values;
        for (i = 0; i < count; i++)
            if (back[i] != (float)values64[i]) {
                CHECK(0, "f64 value %zu", i);
                break;
            }
        ekv_npy_free(&array);
        free(values);
        free(values64);
    }
    {
        int64_t nine[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1}, negative[2] = {2, -1};
        float one = 1.0f;
        ekv_npy_array array;
        CHECK(ekv_npy_write(path, &one, 0, NULL) == EKV_SUCCESS, "scalar: %s", ekv_last_error());
        CHECK(ekv_npy_read(path, &array) == EKV_SUCCESS && array.ndim == 0 && array.values[0] == 1.0f,
              "scalar read back");
        ekv_npy_free(&array);
        CHECK(ekv_npy_write(path, &one, 9, nine) == EKV_ERR_INVALID_ARG, "9 dims must fail");
        CHECK(ekv_npy_write(path, &one, 2, negative) == EKV_ERR_INVALID_ARG, "negative dim must fail");
        CHECK(ekv_npy_write("/nonexistent-dir/x.npy", &one, 0, NULL) == EKV_ERR_IO &&
                  message_has("/nonexistent-dir/x.npy"), "unwritable path: %s", ekv_last_error());
        CHECK(ekv_npy_read("/nonexistent-dir/x.npy", &array) == EKV_ERR_IO &&
                  message_has("/nonexistent-dir/x.npy"), "missing file: %s", ekv_last_error());
    }
    remove(path);
    TEST_END();
}

static void test_header_variants(void)
{
    static const float values[6] = {1, 2, 3, 4, 5, 6};
    uint16_t halves[6];
    double doubles[6];
    ekv_npy_array a;
    unsigned char *image;
    size_t size;
    int i;
    for (i = 0; i < 6; i++) {
        halves[i] = ekv_f32_to_f16(values[i]);
        doubles[i] = values[i];
    }
    TEST_BEGIN("npy header variants: versions 2.0/3.0, <f2, <f8, key order, quotes, 3L");
    image = make_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", 2, values, 24, &size);
    CHECK(ekv_npy_parse(image, size, "v2", &a) == EKV_SUCCESS && a.ndim == 2 && a.values[5] == 6,
          "v2.0: %s", ekv_last_error());
    ekv_npy_free(&a);
    free(image);
    image = make_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (6,), }", 3, values, 24, &size);
    CHECK(ekv_npy_parse(image, size, "v3", &a) == EKV_SUCCESS && a.ndim == 1 && a.shape[0] == 6,
          "v3.0: %s", ekv_last_error());
    ekv_npy_free(&a);
    free(image);
    image = make_npy("{'descr': '<f2', 'fortran_order': False, 'shape': (3, 2), }", 1, halves, 12, &size);
    CHECK(ekv_npy_parse(image, size, "f2", &a) == EKV_SUCCESS && a.values[4] == 5.0f, "<f2: %s",
          ekv_last_error());
    ekv_npy_free(&a);
    free(image);
    image = make_npy("{\"shape\": (6L,), \"fortran_order\": False, \"descr\": \"<f8\"}", 1, doubles,
                     48, &size);
    CHECK(ekv_npy_parse(image, size, "f8", &a) == EKV_SUCCESS && a.values[2] == 3.0f && a.ndim == 1,
          "<f8, reordered keys, double quotes, 6L: %s", ekv_last_error());
    ekv_npy_free(&a);
    free(image);
    {
        /* f8 values beyond float range become +-inf, never undefined behaviour */
        double big[2] = {1e300, -1e300};
        image = make_npy("{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }", 1, big, 16, &size);
        CHECK(ekv_npy_parse(image, size, "big", &a) == EKV_SUCCESS && isinf(a.values[0]) &&
                  a.values[0] > 0 && isinf(a.values[1]) && a.values[1] < 0, "f8 overflow");
        ekv_npy_free(&a);
        free(image);
    }
    TEST_END();
}

typedef struct bad_header {
    const char *dict;
    int major;
    size_t data_bytes;
    ekv_result code;
    const char *message;
} bad_header;

static void test_lying_headers(void)
{
    static const bad_header cases[] = {
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 4), }", 1, 24, EKV_ERR_FORMAT, "data truncated"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }", 1, 24, EKV_ERR_FORMAT, "data size mismatch"},
        {"{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", 1, 24, EKV_ERR_UNSUPPORTED, "fortran_order"},
        {"{'descr': '<i4', 'fortran_order': False, 'shape': (2, 3), }", 1, 24, EKV_ERR_UNSUPPORTED, "'<i4'"},
        {"{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3), }", 1, 24, EKV_ERR_UNSUPPORTED, "'>f4'"},
        {"{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }", 1, 8, EKV_ERR_UNSUPPORTED, "structured"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (1,1,1,1,1,1,1,1,1), }", 1, 4, EKV_ERR_UNSUPPORTED, "more than 8"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, -3), }", 1, 24, EKV_ERR_FORMAT, "negative"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 16), }", 1, 24, EKV_ERR_FORMAT, "too large"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,), }", 1, 24, EKV_ERR_FORMAT, "overflows"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904,), }", 1, 24, EKV_ERR_FORMAT, "too large"},
        {"{'descr': '<f4', 'fortran_order': False, }", 1, 24, EKV_ERR_FORMAT, "lacks 'shape'"},
        {"{'descr': '<f4', 'shape': (6,), }", 1, 24, EKV_ERR_FORMAT, "lacks 'fortran_order'"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (6,), 'extra': 1}", 1, 24, EKV_ERR_FORMAT, "unexpected key"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': 6, }", 1, 24, EKV_ERR_FORMAT, "not a tuple"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (6), }", 1, 24, EKV_ERR_FORMAT, "not a tuple"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (a,), }", 1, 24, EKV_ERR_FORMAT, "integers"},
        {"{'descr': '<f4', 'fortran_order': Maybe, 'shape': (6,), }", 1, 24, EKV_ERR_FORMAT, "True or False"},
        {"['descr', '<f4']", 1, 24, EKV_ERR_FORMAT, "not a dictionary"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (6,), } junk", 1, 24, EKV_ERR_FORMAT, "after the header"},
        {"{'descr': '<f4' 'fortran_order': False, 'shape': (6,), }", 1, 24, EKV_ERR_FORMAT, "malformed"},
    };
    static const float data[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    ekv_npy_array a;
    unsigned char *image;
    size_t size, i;
    TEST_BEGIN("lying or unsupported headers are rejected with a message naming the problem");
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ekv_result r;
        image = make_npy(cases[i].dict, cases[i].major, data, cases[i].data_bytes, &size);
        r = ekv_npy_parse(image, size, "case.npy", &a);
        CHECK(r == cases[i].code && message_has(cases[i].message) && message_has("case.npy"),
              "case %zu (%s): got %d '%s', want %d '%s'", i, cases[i].dict, (int)r, ekv_last_error(),
              (int)cases[i].code, cases[i].message);
        CHECK(a.values == NULL, "no array on failure");
        free(image);
    }
    /* header length beyond the file */
    image = make_f32_npy("(2,)", data, 2, &size);
    image[8] = 0xff;
    image[9] = 0x7f;
    CHECK(ekv_npy_parse(image, size, "long.npy", &a) == EKV_ERR_FORMAT && message_has("runs past the end"),
          "header length: %s", ekv_last_error());
    image[8] = 0;
    image[9] = 0;
    CHECK(ekv_npy_parse(image, size, "short.npy", &a) == EKV_ERR_FORMAT, "header length 0: %s",
          ekv_last_error());
    image[9] = 0;
    image[8] = 118;
    image[0] = 'X';
    CHECK(ekv_npy_parse(image, size, "magic.npy", &a) == EKV_ERR_FORMAT && message_has("bad magic") &&
              message_has("magic.npy"), "magic: %s", ekv_last_error());
    image[0] = 0x93;
    image[6] = 4;
    CHECK(ekv_npy_parse(image, size, "v4.npy", &a) == EKV_ERR_UNSUPPORTED && message_has("version 4.0"),
          "version: %s", ekv_last_error());
    image[6] = 1;
    CHECK(ekv_npy_parse(image, size, "ok.npy", &a) == EKV_SUCCESS, "restored image: %s", ekv_last_error());
    ekv_npy_free(&a);
    CHECK(ekv_npy_parse(NULL, 0, "empty", &a) == EKV_ERR_FORMAT, "empty input");
    CHECK(ekv_npy_parse(NULL, 5, "null", &a) == EKV_ERR_INVALID_ARG, "NULL bytes");
    free(image);
    TEST_END();
}

static void test_truncation(void)
{
    float values[15];
    unsigned char *image, *prefix;
    size_t size, length;
    int bad = 0;
    ekv_npy_array a;
    fill_random(values, 15);
    image = make_f32_npy("(3, 5)", values, 15, &size);
    TEST_BEGIN("a .npy truncated at every prefix length is rejected, naming the file");
    for (length = 0; length < size; length++) {
        ekv_result r;
        prefix = (unsigned char *)malloc(length ? length : 1); /* exact size: ASan sees overreads */
        memcpy(prefix, image, length);
        r = ekv_npy_parse(length ? prefix : NULL, length, "cut.npy", &a);
        if ((r != EKV_ERR_FORMAT || !message_has("cut.npy") || a.values) && bad++ < 5)
            CHECK(0, "prefix %zu: %d %s", length, (int)r, ekv_last_error());
        free(prefix);
    }
    CHECK(ekv_npy_parse(image, size, "whole.npy", &a) == EKV_SUCCESS, "%s", ekv_last_error());
    CHECK(memcmp(a.values, values, sizeof values) == 0, "values");
    ekv_npy_free(&a);
    CHECK(bad == 0, "%d failures", bad);
    TEST_END();
    free(image);
}

/* ---- .npz and ekv_data_load ---------------------------------------------------- */

typedef struct npz_parts {
    unsigned char *q, *k, *v, *qo;
    size_t q_size, k_size, v_size, qo_size;
    float q_values[2 * 4 * 8], k_values[2 * 2 * 6 * 8], v_values[2 * 2 * 6 * 8], qo_values[2 * 4 * 5 * 8];
} npz_parts;

static void npz_parts_make(npz_parts *p)
{
    fill_random(p->q_values, 64);
    fill_random(p->k_values, 192);
    fill_random(p->v_values, 192);
    fill_random(p->qo_values, 320);
    p->q = make_f32_npy("(2, 4, 8)", p->q_values, 64, &p->q_size);
    p->k = make_f32_npy("(2, 2, 6, 8)", p->k_values, 192, &p->k_size);
    p->v = make_f32_npy("(2, 2, 6, 8)", p->v_values, 192, &p->v_size);
    p->qo = make_f32_npy("(2, 4, 5, 8)", p->qo_values, 320, &p->qo_size);
}

static void npz_parts_free(npz_parts *p)
{
    free(p->q);
    free(p->k);
    free(p->v);
    free(p->qo);
}

static ekv_result load_zip(const zip_member *members, int count, int options, int observe,
                           ekv_data *data)
{
    char path[600];
    size_t size;
    unsigned char *zip = make_zip(members, count, options, &size);
    ekv_result r;
    temp_path(path, sizeof path, "data.npz");
    write_bytes(path, zip, size);
    r = ekv_data_load(path, observe, data);
    remove(path);
    free(zip);
    return r;
}

static void test_npz(void)
{
    npz_parts p;
    zip_member members[4];
    ekv_data d;
    ekv_result r;
    int option, o;
    npz_parts_make(&p);
    members[0].name = "q.npy";
    members[0].data = p.q;
    members[0].size = p.q_size;
    members[1].name = "k.npy";
    members[1].data = p.k;
    members[1].size = p.k_size;
    members[2].name = "v.npy";
    members[2].data = p.v;
    members[2].size = p.v_size;
    members[3].name = "q_observe.npy";
    members[3].data = p.qo;
    members[3].size = p.qo_size;

    TEST_BEGIN(".npz (stored, plain and zip64 headers) loads q, k, v with lengths = S");
    for (option = 0; option < 2; option++) {
        r = load_zip(members, 3, option ? ZIP_ZIP64 : ZIP_PLAIN, 0, &d);
        CHECK(r == EKV_SUCCESS, "%s", ekv_last_error());
        if (r != EKV_SUCCESS) continue;
        CHECK(d.batch == 2 && d.heads == 4 && d.kv_heads == 2 && d.capacity == 6 && d.head_dim == 8,
              "dimensions");
        CHECK(d.lengths[0] == 6 && d.lengths[1] == 6 && d.observe == 0 && d.q_observe == NULL,
              "lengths and no observe");
        CHECK(memcmp(d.q, p.q_values, sizeof p.q_values) == 0 &&
                  memcmp(d.k, p.k_values, sizeof p.k_values) == 0 &&
                  memcmp(d.v, p.v_values, sizeof p.v_values) == 0, "values");
        ekv_data_free(&d);
    }
    TEST_END();

    TEST_BEGIN("q_observe: absent -> copies of q; present -> the last `observe` queries");
    r = load_zip(members, 3, ZIP_PLAIN, 3, &d);
    CHECK(r == EKV_SUCCESS && d.observe == 3 && d.q_observe, "%s", ekv_last_error());
    for (o = 0; r == EKV_SUCCESS && o < 3; o++)
        CHECK(memcmp(d.q_observe + (size_t)(1 * 3 + o) * 8, d.q + 1 * 8, 8 * sizeof(float)) == 0,
              "synthesized observed query %d = q", o);
    ekv_data_free(&d);
    r = load_zip(members, 4, ZIP_ZIP64, 3, &d);
    CHECK(r == EKV_SUCCESS && d.observe == 3, "%s", ekv_last_error());
    for (o = 0; r == EKV_SUCCESS && o < 3; o++)
        CHECK(memcmp(d.q_observe + (size_t)(5 * 3 + o) * 8, p.qo_values + (size_t)(5 * 5 + 2 + o) * 8,
                     8 * sizeof(float)) == 0, "observed query %d of (b,h) = 5", o);
    ekv_data_free(&d);
    r = load_zip(members, 4, ZIP_PLAIN, 9, &d);
    CHECK(r == EKV_SUCCESS && d.observe == 5, "more requested than stored: all 5 (%s)", ekv_last_error());
    ekv_data_free(&d);
    TEST_END();

    TEST_BEGIN(".npz errors: deflate, bad CRC, missing member, inconsistent shapes, not a zip");
    r = load_zip(members, 3, ZIP_DEFLATE_FLAG, 0, &d);
    CHECK(r == EKV_ERR_UNSUPPORTED && message_has("compressed .npz not supported; use np.savez"),
          "deflate: %s", ekv_last_error());
    r = load_zip(members, 3, ZIP_BAD_CRC, 0, &d);
    CHECK(r == EKV_ERR_FORMAT && message_has("CRC"), "crc: %s", ekv_last_error());
    r = load_zip(members, 2, ZIP_PLAIN, 0, &d);
    CHECK(r == EKV_ERR_FORMAT && message_has("v.npy"), "missing v: %s", ekv_last_error());
    {
        /* the directory entry of v.npy claims more bytes than the file holds */
        size_t size, offset;
        unsigned char *zip = make_zip(members, 3, ZIP_PLAIN, &size);
        offset = (size_t)zip[size - 6] | (size_t)zip[size - 5] << 8;
        offset += 2 * 46 + 10;                       /* skip the entries of q.npy and k.npy */
        put_le(zip + offset + 20, p.v_size + 4096, 4); /* compressed and uncompressed size */
        put_le(zip + offset + 24, p.v_size + 4096, 4);
        r = ekv_data_load_npz_memory(zip, size, "long.npz", 0, &d);
        CHECK(r == EKV_ERR_FORMAT && message_has("v.npy runs past the end"), "%s", ekv_last_error());
        put_le(zip + offset + 42, size, 4); /* local header offset beyond the file */
        put_le(zip + offset + 20, p.v_size, 4);
        put_le(zip + offset + 24, p.v_size, 4);
        r = ekv_data_load_npz_memory(zip, size, "offset.npz", 0, &d);
        CHECK(r == EKV_ERR_FORMAT && message_has("local header"), "%s", ekv_last_error());
        free(zip);
    }
    {
        zip_member swapped[3];
        unsigned char *bad;
        size_t bad_size;
        float zeros[96];
        memset(zeros, 0, sizeof zeros);
        swapped[0] = members[0];
        swapped[1] = members[1];
        swapped[2] = members[2];
        swapped[1].data = p.q; /* k with the shape of q */
        swapped[1].size = p.q_size;
        r = load_zip(swapped, 3, ZIP_PLAIN, 0, &d);
        CHECK(r == EKV_ERR_FORMAT && message_has("k must have 4 dimensions"), "k rank: %s", ekv_last_error());
        bad = make_f32_npy("(2, 2, 3, 8)", zeros, 96, &bad_size);
        swapped[1] = members[1];
        swapped[2].data = bad;
        swapped[2].size = bad_size;
        r = load_zip(swapped, 3, ZIP_PLAIN, 0, &d);
        CHECK(r == EKV_ERR_FORMAT && message_has("shape of k"), "v shape: %s", ekv_last_error());
        free(bad);
        bad = make_f32_npy("(2, 3, 8)", zeros, 48, &bad_size); /* 3 heads, 2 kv heads */
        swapped[0].data = bad;
        swapped[0].size = bad_size;
        swapped[2] = members[2];
        r = load_zip(swapped, 3, ZIP_PLAIN, 0, &d);
        CHECK(r == EKV_ERR_FORMAT && message_has("do not divide"), "H %% Hkv: %s", ekv_last_error());
        free(bad);
        bad = make_f32_npy("(1, 4, 8)", zeros, 32, &bad_size);
        swapped[0].data = bad;
        swapped[0].size = bad_size;
        r = load_zip(swapped, 3, ZIP_PLAIN, 0, &d);
        CHECK(r == EKV_ERR_FORMAT && message_has("batch"), "batch: %s", ekv_last_error());
        free(bad);
        bad = make_f32_npy("(2, 4, 4)", zeros, 32, &bad_size);
        swapped[0].data = bad;
        swapped[0].size = bad_size;
        r = load_zip(swapped, 3, ZIP_PLAIN, 0, &d);
        CHECK(r == EKV_ERR_FORMAT && message_has("head_dim"), "head_dim: %s", ekv_last_error());
        free(bad);
    }
    {
        char path[600];
        static const unsigned char text[] = "hello, this is not an archive";
        temp_path(path, sizeof path, "notzip.npz");
        write_bytes(path, text, sizeof text);
        CHECK(ekv_data_load(path, 0, &d) == EKV_ERR_FORMAT && message_has(path), "not a zip: %s",
              ekv_last_error());
        write_bytes(path, p.q, p.q_size);
        CHECK(ekv_data_load(path, 0, &d) == EKV_ERR_FORMAT && message_has("single .npy"),
              "single npy: %s", ekv_last_error());
        remove(path);
        CHECK(ekv_data_load(path, 0, &d) == EKV_ERR_IO && message_has(path), "missing: %s",
              ekv_last_error());
    }
    TEST_END();

    TEST_BEGIN(".npz truncated at every prefix length is rejected without a crash");
    {
        size_t size, length;
        unsigned char *zip = make_zip(members, 4, ZIP_ZIP64, &size);
        int bad = 0;
        for (length = 0; length < size; length++) {
            unsigned char *prefix = (unsigned char *)malloc(length ? length : 1);
            memcpy(prefix, zip, length);
            r = ekv_data_load_npz_memory(prefix, length, "cut.npz", 0, &d);
            if ((r == EKV_SUCCESS || !message_has("cut.npz")) && bad++ < 5)
                CHECK(0, "prefix %zu: %d %s", length, (int)r, ekv_last_error());
            if (r == EKV_SUCCESS) ekv_data_free(&d);
            free(prefix);
        }
        CHECK(ekv_data_load_npz_memory(zip, size, "whole.npz", 2, &d) == EKV_SUCCESS, "%s", ekv_last_error());
        ekv_data_free(&d);
        CHECK(bad == 0, "%d failures", bad);
        free(zip);
    }
    TEST_END();

#if defined(HAVE_MKDIR)
    TEST_BEGIN("a directory of q.npy, k.npy, v.npy (and q_observe.npy) loads the same");
    {
        char dir[600], path[700];
        temp_path(dir, sizeof dir, "dir");
        mkdir(dir, 0700);
        snprintf(path, sizeof path, "%s/q.npy", dir);
        write_bytes(path, p.q, p.q_size);
        snprintf(path, sizeof path, "%s/k.npy", dir);
        write_bytes(path, p.k, p.k_size);
        snprintf(path, sizeof path, "%s/v.npy", dir);
        CHECK(ekv_data_load(dir, 0, &d) == EKV_ERR_IO && message_has("v.npy"), "missing v.npy: %s",
              ekv_last_error());
        write_bytes(path, p.v, p.v_size);
        r = ekv_data_load(dir, 2, &d);
        CHECK(r == EKV_SUCCESS && d.batch == 2 && d.kv_heads == 2 &&
                  memcmp(d.v, p.v_values, sizeof p.v_values) == 0 && d.observe == 2 &&
                  memcmp(d.q_observe + 8, d.q, 8 * sizeof(float)) == 0, "%s", ekv_last_error());
        ekv_data_free(&d);
        snprintf(path, sizeof path, "%s/q_observe.npy", dir);
        write_bytes(path, p.qo, p.qo_size);
        r = ekv_data_load(dir, 2, &d);
        CHECK(r == EKV_SUCCESS && memcmp(d.q_observe, p.qo_values + 3 * 8, 16 * sizeof(float)) == 0,
              "q_observe from the directory: %s", ekv_last_error());
        ekv_data_free(&d);
        remove(path);
        snprintf(path, sizeof path, "%s/q.npy", dir);
        remove(path);
        snprintf(path, sizeof path, "%s/k.npy", dir);
        remove(path);
        snprintf(path, sizeof path, "%s/v.npy", dir);
        remove(path);
        rmdir(dir);
    }
    TEST_END();
#else
    TEST_SKIP("directory loading", "no mkdir on this platform");
#endif
    npz_parts_free(&p);
}

/* ---- files written by numpy ------------------------------------------------ */

static int fixture(char *path, size_t size, const char *name)
{
    FILE *f;
    snprintf(path, size, "%s/%s", fixture_dir, name);
    f = fopen(path, "rb");
    if (!f) return 0;
    fclose(f);
    return 1;
}

static void test_numpy_fixtures(void)
{
    char path[1200];
    ekv_npy_array a;
    ekv_data d;
    size_t i;
    int ok = 1;
    if (!fixture_dir || !fixture(path, sizeof path, "f32.npy")) {
        TEST_SKIP("files written by numpy", "no fixture dir (python3 tests/npy_make_fixtures.py DIR)");
        return;
    }
    TEST_BEGIN("files written by numpy: f32, f16, f64, v2/v3, scalar, empty, 1-d");
    fixture(path, sizeof path, "f32.npy");
    CHECK(ekv_npy_read(path, &a) == EKV_SUCCESS && a.ndim == 3 && a.shape[0] == 2 && a.shape[2] == 4,
          "%s", ekv_last_error());
    for (i = 0; a.values && i < 24; i++) ok &= a.values[i] == ramp(i);
    CHECK(ok, "f32 values");
    ekv_npy_free(&a);
    fixture(path, sizeof path, "f16.npy");
    CHECK(ekv_npy_read(path, &a) == EKV_SUCCESS && a.ndim == 2 && a.shape[1] == 7, "%s", ekv_last_error());
    for (i = 0; a.values && i < 35; i++)
        ok &= fabs(a.values[i] - (double)i / 7.0) <= ldexp((double)i / 7.0, -11) &&
              ekv_f16_to_f32(ekv_f32_to_f16(a.values[i])) == a.values[i];
    CHECK(ok, "f16 values");
    ekv_npy_free(&a);
    fixture(path, sizeof path, "f64.npy");
    CHECK(ekv_npy_read(path, &a) == EKV_SUCCESS && a.ndim == 2, "%s", ekv_last_error());
    for (i = 0; a.values && i < 9; i++) ok &= a.values[i] == ramp(i);
    CHECK(ok, "f64 values");
    ekv_npy_free(&a);
    fixture(path, sizeof path, "v2.npy");
    CHECK(ekv_npy_read(path, &a) == EKV_SUCCESS && a.ndim == 2 && a.values[9] == ramp(9), "v2: %s",
          ekv_last_error());
    ekv_npy_free(&a);
    fixture(path, sizeof path, "v3.npy");
    CHECK(ekv_npy_read(path, &a) == EKV_SUCCESS && a.ndim == 2 && a.values[9] == ramp(9), "v3: %s",
          ekv_last_error());
    ekv_npy_free(&a);
    fixture(path, sizeof path, "scalar.npy");
    CHECK(ekv_npy_read(path, &a) == EKV_SUCCESS && a.ndim == 0 && a.values[0] == 3.5f, "scalar: %s",
          ekv_last_error());
    ekv_npy_free(&a);
    fixture(path, sizeof path, "empty.npy");
    CHECK(ekv_npy_read(path, &a) == EKV_SUCCESS && a.ndim == 2 && a.shape[0] == 0 && a.shape[1] == 3,
          "empty: %s", ekv_last_error());
    ekv_npy_free(&a);
    fixture(path, sizeof path, "one_dim.npy");
    CHECK(ekv_npy_read(path, &a) == EKV_SUCCESS && a.ndim == 1 && a.shape[0] == 11, "1-d: %s",
          ekv_last_error());
    ekv_npy_free(&a);
    TEST_END();

    TEST_BEGIN("files written by numpy that are refused: fortran order, int32, big-endian, savez_compressed");
    fixture(path, sizeof path, "fortran.npy");
    CHECK(ekv_npy_read(path, &a) == EKV_ERR_UNSUPPORTED && message_has("fortran_order") &&
              message_has("fortran.npy"), "%s", ekv_last_error());
    fixture(path, sizeof path, "int32.npy");
    CHECK(ekv_npy_read(path, &a) == EKV_ERR_UNSUPPORTED && message_has("'<i4'"), "%s", ekv_last_error());
    fixture(path, sizeof path, "big_endian.npy");
    CHECK(ekv_npy_read(path, &a) == EKV_ERR_UNSUPPORTED && message_has("'>f4'"), "%s", ekv_last_error());
    fixture(path, sizeof path, "compressed.npz");
    CHECK(ekv_data_load(path, 0, &d) == EKV_ERR_UNSUPPORTED &&
              message_has("compressed .npz not supported; use np.savez"), "%s", ekv_last_error());
    TEST_END();

    TEST_BEGIN("np.savez archives and a directory written by numpy load with the right values");
    fixture(path, sizeof path, "data.npz");
    CHECK(ekv_data_load(path, 0, &d) == EKV_SUCCESS && d.batch == 2 && d.heads == 4 && d.kv_heads == 2 &&
              d.capacity == 6 && d.head_dim == 8, "%s", ekv_last_error());
    for (i = 0; d.k && i < 192; i++) ok &= d.k[i] == ramp(i) && d.v[i] == ramp(i) + 1.0f;
    CHECK(ok, "k and v values");
    ekv_data_free(&d);
    fixture(path, sizeof path, "data_observe.npz");
    CHECK(ekv_data_load(path, 3, &d) == EKV_SUCCESS && d.observe == 3, "%s", ekv_last_error());
    for (i = 0; d.q_observe && i < 2 * 4 * 3 * 8; i++) ok &= d.q_observe[i] == ramp(i);
    CHECK(ok, "q_observe values");
    ekv_data_free(&d);
    fixture(path, sizeof path, "data_f16.npz");
    CHECK(ekv_data_load(path, 0, &d) == EKV_SUCCESS && d.capacity == 6, "f16 npz: %s", ekv_last_error());
    ekv_data_free(&d);
    fixture(path, sizeof path, "data_dir");
    CHECK(ekv_data_load(path, 1, &d) == EKV_SUCCESS && d.kv_heads == 2 && d.q[9] == ramp(9), "dir: %s",
          ekv_last_error());
    ekv_data_free(&d);
    TEST_END();

    TEST_BEGIN("ekv_npy_write output for numpy (checked by npy_make_fixtures.py --check)");
    {
        float f[24];
        double g[15];
        float s = 0.0f;
        int64_t fs[3] = {2, 3, 4}, gs[3] = {3, 1, 5};
        for (i = 0; i < 24; i++) f[i] = ramp(i);
        for (i = 0; i < 15; i++) g[i] = (double)i / 7.0;
        snprintf(path, sizeof path, "%s/from_c_f32.npy", fixture_dir);
        CHECK(ekv_npy_write(path, f, 3, fs) == EKV_SUCCESS, "%s", ekv_last_error());
        snprintf(path, sizeof path, "%s/from_c_f64.npy", fixture_dir);
        CHECK(ekv_npy_write_f64(path, g, 3, gs) == EKV_SUCCESS, "%s", ekv_last_error());
        snprintf(path, sizeof path, "%s/from_c_scalar.npy", fixture_dir);
        CHECK(ekv_npy_write(path, &s, 0, NULL) == EKV_SUCCESS, "%s", ekv_last_error());
    }
    TEST_END();
}

int main(int argc, char **argv)
{
    uint64_t seed = (uint64_t)time(NULL) ^ ((uint64_t)clock() << 32);
    const char *tmp = getenv("TMPDIR");
    int i;
    for (i = 1; i < argc; i++) {
        if (strncmp(argv[i], "--seed=", 7) == 0) seed = strtoull(argv[i] + 7, NULL, 10);
        else fixture_dir = argv[i];
    }
    printf("test_npy: seed %llu (rerun with --seed=%llu)\n", (unsigned long long)seed,
           (unsigned long long)seed);
    ekv_rng_seed(&test_rng, seed);
    snprintf(temp_prefix, sizeof temp_prefix, "%s/ekv_test_npy_%llu_", tmp && *tmp ? tmp : "/tmp",
             (unsigned long long)(seed % 1000000007u));
    test_round_trips();
    test_header_variants();
    test_lying_headers();
    test_truncation();
    test_npz();
    test_numpy_fixtures();
    return ekv_test_finish();
}
