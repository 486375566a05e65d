/* test_json.c - shows that ekv's JSON writer produces strict RFC 8259 output: exact
   compact and pretty layouts, misuse and allocation failure reported through `failed`
   with the buffer still a NUL-terminated prefix, and a set of documents (nesting to
   depth 64, quotes, backslashes, every control byte, 0x7F, valid and invalid UTF-8,
   NaN/Inf/-0.0/extreme and random doubles, 64-bit integers) written to the directory
   argv[1], each NAME.json with a sidecar NAME.expect of the values it must decode to.
   tests/json_check.sh builds and runs this program and parses every document with
   Python's strict json module and with jq.

   Build and run alone from the repository root (the in-process checks only):
       cc -std=c99 -O2 -Wall -Wextra -I. -o test_json tests/test_json.c -lm && ./test_json DIR

   Sidecar lines, written with plain stdio (not the writer under test):
       PATH <TAB> KIND [<TAB> PAYLOAD]
   PATH is "$" then one component per level: "/k" + hex of the key's raw bytes, or
   "/i" + array index. KIND: o/a (object/array; payload = member count), s (payload =
   hex of the raw bytes given to the writer), d (payload = the double as a C99 hex
   float), i (decimal integer), b (0 or 1), n (null). */
#include <stddef.h>
#include <stdlib.h>

/* A counting allocator that can be told to fail, to test out-of-memory handling. */
static int test_alloc_fail;
static void *test_malloc(size_t n)
{
    return test_alloc_fail ? NULL : malloc(n);
}
static void *test_realloc(void *p, size_t n)
{
    return test_alloc_fail ? NULL : realloc(p, n);
}
#define EKV_MALLOC(n) test_malloc(n)
#define EKV_REALLOC(p, n) test_realloc(p, n)
#define EKV_FREE(p) free(p)

/* its own implementation: the allocator above must reach the writer */
#define EKV_IMPLEMENTATION
#include "ekv.h"

#include "ekv_test.h"

#include <float.h>
#include <math.h>
#include <limits.h>
#include <locale.h>
#include <string.h>

/* ---- in-process checks -------------------------------------------------------- */

static int buffer_consistent(const ekv_json *json)
{
    return json->buffer && strlen(json->buffer) == json->length && json->length < json->capacity;
}

static void write_small(ekv_json *json)
{
    ekv_json_object_begin(json);
    ekv_json_key(json, "a");
    ekv_json_int(json, 1);
    ekv_json_key(json, "b");
    ekv_json_array_begin(json);
    ekv_json_bool(json, 1);
    ekv_json_null(json);
    ekv_json_number(json, 0.5);
    ekv_json_array_end(json);
    ekv_json_key(json, "c");
    ekv_json_object_begin(json);
    ekv_json_object_end(json);
    ekv_json_key(json, "d");
    ekv_json_array_begin(json);
    ekv_json_array_end(json);
    ekv_json_key(json, "e\"");
    ekv_json_string(json, "x\ny");
    ekv_json_object_end(json);
}

static void test_layout(void)
{
    ekv_json json;
    const char *compact = "{\"a\":1,\"b\":[true,null,0.5],\"c\":{},\"d\":[],\"e\\\"\":\"x\\ny\"}";
    const char *pretty = "{\n"
                         "  \"a\": 1,\n"
                         "  \"b\": [\n"
                         "    true,\n"
                         "    null,\n"
                         "    0.5\n"
                         "  ],\n"
                         "  \"c\": {},\n"
                         "  \"d\": [],\n"
                         "  \"e\\\"\": \"x\\ny\"\n"
                         "}";
    TEST_BEGIN("layout: exact compact and pretty output");
    ekv_json_init(&json, 0);
    CHECK(buffer_consistent(&json) && json.length == 0, "empty writer is an empty string");
    write_small(&json);
    CHECK(!json.failed && strcmp(json.buffer, compact) == 0, "compact:\n%s", json.buffer);
    CHECK(buffer_consistent(&json), "NUL-terminated, length matches");
    ekv_json_free(&json);
    CHECK(json.buffer == NULL && json.length == 0, "free resets");
    ekv_json_init(&json, 1);
    write_small(&json);
    CHECK(!json.failed && strcmp(json.buffer, pretty) == 0, "pretty:\n%s", json.buffer);
    ekv_json_free(&json);
    /* top-level values after the first start a new line: one writer can emit JSONL */
    ekv_json_init(&json, 0);
    ekv_json_object_begin(&json);
    ekv_json_object_end(&json);
    ekv_json_array_begin(&json);
    ekv_json_int(&json, -7);
    ekv_json_array_end(&json);
    ekv_json_string(&json, NULL);
    CHECK(!json.failed && strcmp(json.buffer, "{}\n[-7]\nnull") == 0, "jsonl: %s", json.buffer);
    ekv_json_free(&json);
    TEST_END();
}

static void test_numbers_text(void)
{
    static const struct {
        double value;
        const char *text;
    } cases[] = {
        {0.0, "0"},          {-0.0, "-0.0"},        {1.0, "1"},
        {-2.5, "-2.5"},      {0.1, "0.1"},          {1e308, "1e+308"},
        {5e-324, "4.94065645841247e-324"},          {100.0, "100"},
        {1.0 / 3.0, "0.3333333333333333"},          {0.3, "0.3"},
        {0.1 + 0.2, "0.30000000000000004"},         {2.0 / 3.0, "0.6666666666666666"},
        {1e21, "1e+21"},     {123456.789, "123456.789"},
    };
    size_t i;
    ekv_json json;
    TEST_BEGIN("numbers: shortest round-trip text, NaN/Inf as null, 64-bit ints");
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ekv_json_init(&json, 0);
        ekv_json_number(&json, cases[i].value);
        CHECK(strcmp(json.buffer, cases[i].text) == 0, "%.17g written as %s, want %s",
              cases[i].value, json.buffer, cases[i].text);
        ekv_json_free(&json);
    }
    ekv_json_init(&json, 0);
    ekv_json_array_begin(&json);
    ekv_json_number(&json, NAN);
    ekv_json_number(&json, INFINITY);
    ekv_json_number(&json, -INFINITY);
    ekv_json_int(&json, LLONG_MIN);
    ekv_json_int(&json, LLONG_MAX);
    ekv_json_array_end(&json);
    CHECK(strcmp(json.buffer, "[null,null,null,-9223372036854775808,9223372036854775807]") == 0,
          "%s", json.buffer);
    ekv_json_free(&json);
    TEST_END();
}

static void test_strings_text(void)
{
    ekv_json json;
    TEST_BEGIN("strings: escapes and U+FFFD replacement, byte for byte");
    ekv_json_init(&json, 0);
    ekv_json_array_begin(&json);
    ekv_json_string(&json, "q\"b\\s/\b\f\n\r\t\x01\x1f\x7f");
    ekv_json_string(&json, "\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80");
    ekv_json_string(&json, "\xC0\xAF|\xED\xA0\x80|\xF4\x90\x80\x80|\xE2\x82|\xE2\x82");
    ekv_json_array_end(&json);
    CHECK(strcmp(json.buffer,
                 "[\"q\\\"b\\\\s/\\b\\f\\n\\r\\t\\u0001\\u001f\\u007f\","
                 "\"\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80\","
                 /* C0, AF: two bad bytes; ED A0 80: three; F4 90 80 80: four; a
                    truncated E2 82 is one maximal subpart, so one U+FFFD */
                 "\"\xEF\xBF\xBD\xEF\xBF\xBD|\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD|"
                 "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD|\xEF\xBF\xBD|\xEF\xBF\xBD\"]") == 0,
          "%s", json.buffer);
    ekv_json_free(&json);
    TEST_END();
}

static void test_misuse(void)
{
    ekv_json json;
    size_t length;
    int i;
    TEST_BEGIN("misuse sets failed and stops writing; depth 64 is the limit");
    ekv_json_init(&json, 0);
    ekv_json_object_begin(&json);
    ekv_json_int(&json, 1); /* a value without a key */
    CHECK(json.failed, "value without key");
    length = json.length;
    ekv_json_key(&json, "x");
    ekv_json_object_end(&json);
    CHECK(json.length == length && buffer_consistent(&json), "nothing written after failing");
    ekv_json_free(&json);

    ekv_json_init(&json, 0);
    ekv_json_array_begin(&json);
    ekv_json_key(&json, "x");
    CHECK(json.failed, "key in an array");
    ekv_json_free(&json);

    ekv_json_init(&json, 0);
    ekv_json_array_begin(&json);
    ekv_json_object_end(&json);
    CHECK(json.failed, "} closing [");
    ekv_json_free(&json);

    ekv_json_init(&json, 0);
    ekv_json_object_end(&json);
    CHECK(json.failed, "end at depth 0");
    ekv_json_free(&json);

    ekv_json_init(&json, 0);
    ekv_json_object_begin(&json);
    ekv_json_key(&json, "k");
    ekv_json_object_end(&json);
    CHECK(json.failed, "key without value");
    ekv_json_free(&json);

    ekv_json_init(&json, 0);
    ekv_json_object_begin(&json);
    ekv_json_key(&json, NULL);
    CHECK(json.failed, "NULL key");
    ekv_json_free(&json);

    ekv_json_init(&json, 0);
    for (i = 0; i < 64; i++) ekv_json_array_begin(&json);
    CHECK(!json.failed && json.depth == 64, "64 levels are fine");
    ekv_json_array_begin(&json);
    CHECK(json.failed, "a 65th level fails");
    ekv_json_free(&json);
    TEST_END();
}

static void test_out_of_memory(void)
{
    ekv_json json;
    char *big = (char *)malloc(100001);
    size_t length;
    memset(big, 'x', 100000);
    big[100000] = '\0';
    TEST_BEGIN("allocation failure: failed = 1, buffer keeps a NUL-terminated prefix");
    ekv_json_init(&json, 0);
    ekv_json_array_begin(&json);
    ekv_json_string(&json, "before");
    test_alloc_fail = 1;
    ekv_json_string(&json, big);
    test_alloc_fail = 0;
    CHECK(json.failed, "growth failure sets failed");
    /* what was written is a prefix of the intended document (here up to the comma) */
    CHECK(buffer_consistent(&json) && strncmp(json.buffer, "[\"before\"", 9) == 0 &&
              json.length <= 10,
          "prefix kept: %s", json.buffer);
    length = json.length;
    ekv_json_int(&json, 3);
    CHECK(json.length == length, "nothing written after failing");
    ekv_json_free(&json);
    test_alloc_fail = 1;
    ekv_json_init(&json, 0);
    test_alloc_fail = 0;
    CHECK(json.failed && json.buffer == NULL, "init without memory");
    ekv_json_int(&json, 3);
    CHECK(json.buffer == NULL, "and writes nothing after");
    ekv_json_free(&json);
    free(big);
    TEST_END();
}

static void test_locale(void)
{
    static const char *const names[] = {"de_DE.UTF-8", "de_DE.utf8", "fr_FR.UTF-8",
                                        "fr_FR.utf8", "de_DE", "fr_FR", "ru_RU.UTF-8"};
    size_t i;
    const char *found = NULL;
    ekv_json json;
    for (i = 0; i < sizeof names / sizeof names[0] && !found; i++)
        if (setlocale(LC_NUMERIC, names[i]) && localeconv()->decimal_point[0] != '.')
            found = names[i];
    if (!found) {
        setlocale(LC_NUMERIC, "C");
        TEST_SKIP("numbers under a comma-decimal locale", "no such locale installed");
        return;
    }
    TEST_BEGIN("numbers under a comma-decimal locale still use '.'");
    ekv_json_init(&json, 0);
    ekv_json_array_begin(&json);
    ekv_json_number(&json, 2.5);
    ekv_json_number(&json, 1.0 / 3.0);
    ekv_json_number(&json, -1.25e-300);
    ekv_json_array_end(&json);
    CHECK(strcmp(json.buffer, "[2.5,0.3333333333333333,-1.25e-300]") == 0, "%s under %s",
          json.buffer, found);
    ekv_json_free(&json);
    setlocale(LC_NUMERIC, "C");
    TEST_END();
}

/* ---- documents with expectation sidecars -------------------------------------- */

#define DOC_DEPTH 66
#define DOC_PATH 4096

typedef struct doc {
    ekv_json json;
    FILE *expect;
    char path[DOC_DEPTH][DOC_PATH]; /* path of the open container at each depth */
    int count[DOC_DEPTH];
    int depth;
    char key[DOC_PATH]; /* hex of the pending key */
    int have_key;
} doc;

static doc the_doc;
static const char *out_dir;
static int documents_written, documents_failed;

static void hex_of(const char *bytes, char *out, size_t size)
{
    static const char digits[] = "0123456789abcdef";
    size_t i, o = 0;
    for (i = 0; bytes[i] && o + 2 < size; i++) {
        unsigned char c = (unsigned char)bytes[i];
        out[o++] = digits[c >> 4];
        out[o++] = digits[c & 15];
    }
    out[o] = '\0';
}

/* The path of the next value, counted as a member of its container. */
static void next_path(doc *d, char *out)
{
    if (d->depth == 0) snprintf(out, DOC_PATH, "$");
    else if (d->have_key) snprintf(out, DOC_PATH, "%.2000s/k%.1000s", d->path[d->depth], d->key);
    else snprintf(out, DOC_PATH, "%.2000s/i%d", d->path[d->depth], d->count[d->depth]);
    if (d->depth > 0) d->count[d->depth]++;
    d->have_key = 0;
}

static void doc_open(doc *d, const char *name, int pretty)
{
    char path[1024];
    memset(d, 0, sizeof *d);
    snprintf(path, sizeof path, "%s/%s.expect", out_dir, name);
    d->expect = fopen(path, "w");
    if (!d->expect) {
        printf("cannot write %s\n", path);
        exit(2);
    }
    ekv_json_init(&d->json, pretty);
}

static void doc_close(doc *d, const char *name)
{
    char path[1024];
    FILE *f;
    snprintf(path, sizeof path, "%s/%s.json", out_dir, name);
    f = fopen(path, "w");
    if (!f || d->json.failed || d->depth != 0 ||
        fwrite(d->json.buffer, 1, d->json.length, f) != d->json.length) {
        printf("FAIL write document %s (failed %d, depth %d)\n", name, d->json.failed, d->depth);
        documents_failed++;
    } else {
        documents_written++;
    }
    if (f) fclose(f);
    fclose(d->expect);
    ekv_json_free(&d->json);
}

static void doc_begin(doc *d, int object)
{
    next_path(d, d->path[d->depth + 1]);
    d->depth++;
    d->count[d->depth] = 0;
    if (object) ekv_json_object_begin(&d->json);
    else ekv_json_array_begin(&d->json);
}

static void doc_end(doc *d, int object)
{
    fprintf(d->expect, "%s\t%c\t%d\n", d->path[d->depth], object ? 'o' : 'a', d->count[d->depth]);
    d->depth--;
    if (object) ekv_json_object_end(&d->json);
    else ekv_json_array_end(&d->json);
}

static void doc_key(doc *d, const char *key)
{
    hex_of(key, d->key, sizeof d->key);
    d->have_key = 1;
    ekv_json_key(&d->json, key);
}

static void doc_string(doc *d, const char *value)
{
    char path[DOC_PATH];
    size_t size = 2 * strlen(value) + 1;
    char *hex = (char *)malloc(size);
    next_path(d, path);
    hex_of(value, hex, size);
    fprintf(d->expect, "%s\ts\t%s\n", path, hex);
    free(hex);
    ekv_json_string(&d->json, value);
}

static void doc_number(doc *d, double value)
{
    char path[DOC_PATH];
    next_path(d, path);
    if (value != value || value - value != 0.0) fprintf(d->expect, "%s\tn\n", path);
    else fprintf(d->expect, "%s\td\t%a\n", path, value);
    ekv_json_number(&d->json, value);
}

static void doc_int(doc *d, long long value)
{
    char path[DOC_PATH];
    next_path(d, path);
    fprintf(d->expect, "%s\ti\t%lld\n", path, value);
    ekv_json_int(&d->json, value);
}

static void doc_bool(doc *d, int value)
{
    char path[DOC_PATH];
    next_path(d, path);
    fprintf(d->expect, "%s\tb\t%d\n", path, value ? 1 : 0);
    ekv_json_bool(&d->json, value);
}

static void doc_null(doc *d)
{
    char path[DOC_PATH];
    next_path(d, path);
    fprintf(d->expect, "%s\tn\n", path);
    ekv_json_null(&d->json);
}

/* Strings the documents use: quotes, backslashes, each control byte, UTF-8 of every
   length at the edges of its range, and ill-formed sequences of each kind. */
static const char *const valid_utf8[] = {
    "caf\xC3\xA9",            /* 2 bytes */
    "\xE2\x82\xAC 5",         /* 3 bytes */
    "\xF0\x9F\x98\x80!",      /* 4 bytes */
    "\xC2\x80\xDF\xBF",       /* U+0080, U+07FF */
    "\xE0\xA0\x80\xEF\xBF\xBF", /* U+0800, U+FFFF */
    "\xED\x9F\xBF\xEE\x80\x80", /* U+D7FF, U+E000 around the surrogates */
    "\xF0\x90\x80\x80\xF4\x8F\xBF\xBF", /* U+10000, U+10FFFF */
    "\xE2\x80\xA8\xE2\x80\xA9", /* U+2028, U+2029 */
    "\xEF\xBB\xBF\x62om",       /* U+FEFF, then "bom" */
};
static const char *const invalid_utf8[] = {
    "\x80",                       /* lone continuation */
    "a\xBF\x62",                 /* lone continuation inside "a.b" */
    "\xC0\xAF",                   /* overlong '/' */
    "\xC1\xBF",                   /* overlong */
    "\xE0\x80\xAF",               /* overlong, 3 bytes */
    "\xE0\x9F\xBF",               /* overlong U+07FF */
    "\xF0\x80\x80\xAF",           /* overlong, 4 bytes */
    "\xF0\x8F\xBF\xBF",           /* overlong U+FFFF */
    "\xED\xA0\x80",               /* U+D800, high surrogate */
    "\xED\xBF\xBF",               /* U+DFFF, low surrogate */
    "\xED\xA0\xBD\xED\xB8\x80",   /* a surrogate pair in CESU-8 */
    "\xF4\x90\x80\x80",           /* U+110000 */
    "\xF5\x80\x80\x80",           /* lead byte F5 */
    "\xF8\x88\x80\x80\x80",       /* old 5-byte form */
    "\xFE\xFF",                   /* never valid */
    "tail\xC3",                   /* truncated 2-byte at the end */
    "tail\xE2\x82",               /* truncated 3-byte at the end */
    "tail\xF0\x9F\x98",           /* truncated 4-byte at the end */
    "\xE2\x82x\xF0\x9F\x98y\xC3z", /* truncated in the middle */
    "\xC3\xA9\xA9",               /* valid then a stray continuation */
    "\xF0\x9F\x98\x80\x80",       /* valid 4-byte then a stray continuation */
};

static void write_basic(int pretty)
{
    const char *name = pretty ? "basic_pretty" : "basic_compact";
    doc *d = &the_doc;
    doc_open(d, name, pretty);
    doc_begin(d, 1);
    doc_key(d, "schema_version");
    doc_int(d, 1);
    doc_key(d, "label");
    doc_string(d, "run \"A\" on C:\\bench\\");
    doc_key(d, "ok");
    doc_bool(d, 1);
    doc_key(d, "missing");
    doc_null(d);
    doc_key(d, "median_ms");
    doc_number(d, 0.0123456789);
    doc_key(d, "nested");
    doc_begin(d, 1);
    doc_key(d, "empty_object");
    doc_begin(d, 1);
    doc_end(d, 1);
    doc_key(d, "empty_array");
    doc_begin(d, 0);
    doc_end(d, 0);
    doc_key(d, "list");
    doc_begin(d, 0);
    doc_int(d, -3);
    doc_bool(d, 0);
    doc_begin(d, 1);
    doc_key(d, "x");
    doc_number(d, 2.5);
    doc_end(d, 1);
    doc_begin(d, 0);
    doc_end(d, 0);
    doc_end(d, 0);
    doc_end(d, 1);
    doc_key(d, "");
    doc_string(d, "");
    doc_end(d, 1);
    doc_close(d, name);
}

static void write_escapes(int pretty)
{
    const char *name = pretty ? "escapes_pretty" : "escapes_compact";
    doc *d = &the_doc;
    char text[2], all[40], key[16];
    int c, n = 0;
    doc_open(d, name, pretty);
    doc_begin(d, 1);
    doc_key(d, "quotes \" and \\ backslashes \\\"");
    doc_string(d, "\"\\\"\\\\ / \\u0041 \\n");
    doc_key(d, "controls");
    doc_begin(d, 0);
    for (c = 1; c < 0x20; c++) {
        text[0] = (char)c;
        text[1] = '\0';
        doc_string(d, text);
        all[n++] = (char)c;
    }
    text[0] = 0x7F;
    doc_string(d, text);
    all[n++] = 0x7F;
    all[n] = '\0';
    doc_string(d, all);
    doc_end(d, 0);
    doc_key(d, "control keys");
    doc_begin(d, 1);
    for (c = 1; c < 0x20; c++) {
        snprintf(key, sizeof key, "k%c%d", c, c);
        doc_key(d, key);
        doc_int(d, c);
    }
    doc_key(d, "del\x7F");
    doc_int(d, 0x7F);
    doc_end(d, 1);
    doc_end(d, 1);
    doc_close(d, name);
}

static void write_utf8(int pretty)
{
    const char *name = pretty ? "utf8_pretty" : "utf8_compact";
    doc *d = &the_doc;
    char key[64];
    size_t i;
    doc_open(d, name, pretty);
    doc_begin(d, 1);
    doc_key(d, "valid");
    doc_begin(d, 0);
    for (i = 0; i < sizeof valid_utf8 / sizeof valid_utf8[0]; i++) doc_string(d, valid_utf8[i]);
    doc_end(d, 0);
    doc_key(d, "invalid");
    doc_begin(d, 0);
    for (i = 0; i < sizeof invalid_utf8 / sizeof invalid_utf8[0]; i++)
        doc_string(d, invalid_utf8[i]);
    doc_end(d, 0);
    doc_key(d, "keys");
    doc_begin(d, 1);
    for (i = 0; i < sizeof valid_utf8 / sizeof valid_utf8[0]; i++) {
        doc_key(d, valid_utf8[i]);
        doc_int(d, (long long)i);
    }
    /* distinct after replacement: each gets its own ASCII prefix */
    for (i = 0; i < sizeof invalid_utf8 / sizeof invalid_utf8[0]; i++) {
        snprintf(key, sizeof key, "bad%u:%s", (unsigned)i, invalid_utf8[i]);
        doc_key(d, key);
        doc_string(d, invalid_utf8[i]);
    }
    doc_end(d, 1);
    doc_end(d, 1);
    doc_close(d, name);
}

static void write_numbers(int pretty)
{
    static const double specials[] = {
        0.0, -0.0, 1.0, -1.0, 0.1, 0.2, 0.3, 1.0 / 3.0, 2.0 / 3.0, 100.0, 1e16, 1e21, 1e22,
        123456789012345678.0, 9007199254740993.0, 1e308, DBL_MAX, -DBL_MAX, 5e-324, -5e-324,
        DBL_MIN, 2.2250738585072009e-308 /* largest subnormal */, 1.5e-300, -1.5e-300,
        3.141592653589793, 2.718281828459045, 0.1 + 0.2, 1e-7, 123.456, 4.35, 0.000123,
        9.999999999999999e22, 5e-310, 1.7976931348623155e308};
    doc *d = &the_doc;
    const char *name = pretty ? "numbers_pretty" : "numbers_compact";
    ekv_rng rng;
    size_t i;
    doc_open(d, name, pretty);
    doc_begin(d, 1);
    doc_key(d, "specials");
    doc_begin(d, 0);
    for (i = 0; i < sizeof specials / sizeof specials[0]; i++) doc_number(d, specials[i]);
    doc_end(d, 0);
    doc_key(d, "non-finite");
    doc_begin(d, 0);
    doc_number(d, NAN);
    doc_number(d, -NAN);
    doc_number(d, INFINITY);
    doc_number(d, -INFINITY);
    doc_end(d, 0);
    doc_key(d, "integers");
    doc_begin(d, 0);
    doc_int(d, 0);
    doc_int(d, -1);
    doc_int(d, LLONG_MAX);
    doc_int(d, LLONG_MIN);
    doc_int(d, 9007199254740993LL);
    doc_int(d, -9007199254740993LL);
    doc_end(d, 0);
    /* doubles from random bit patterns: every exponent, subnormals, all 53 bits */
    doc_key(d, "random_bits");
    doc_begin(d, 0);
    ekv_rng_seed(&rng, 4242);
    for (i = 0; i < 5000; i++) {
        uint64_t bits = ekv_rng_next(&rng);
        double value;
        memcpy(&value, &bits, sizeof value);
        if (value != value || value - value != 0.0) continue;
        doc_number(d, value);
    }
    doc_end(d, 0);
    /* and typical magnitudes of timings and ratios */
    doc_key(d, "random_timings");
    doc_begin(d, 0);
    for (i = 0; i < 2000; i++) doc_number(d, 0.05 * exp(ekv_rng_normal(&rng)));
    doc_end(d, 0);
    doc_end(d, 1);
    doc_close(d, name);
}

static void write_deep(int pretty)
{
    const char *name = pretty ? "deep_pretty" : "deep_compact";
    doc *d = &the_doc;
    char key[16];
    int i;
    doc_open(d, name, pretty);
    for (i = 0; i < 64; i++) {
        int object = i % 2 == 0;
        doc_begin(d, object);
        if (object) {
            snprintf(key, sizeof key, "level%d", i + 1);
            doc_key(d, key);
        } else {
            doc_int(d, i + 1);
        }
    }
    doc_string(d, "bottom");
    for (i = 63; i >= 0; i--) doc_end(d, i % 2 == 0);
    doc_close(d, name);
}

static void write_large(int pretty)
{
    const char *name = pretty ? "large_pretty" : "large_compact";
    doc *d = &the_doc;
    static char text[3001];
    int i;
    for (i = 0; i < 3000; i++) text[i] = "ab\"\\\n\x01\xC3\xA9"[i % 8];
    text[3000] = '\0';
    doc_open(d, name, pretty);
    doc_begin(d, 0);
    for (i = 0; i < 30; i++) doc_string(d, text);
    for (i = 0; i < 20000; i++) doc_int(d, (long long)i * 7919 - 50000);
    doc_end(d, 0);
    doc_close(d, name);
}

int main(int argc, char **argv)
{
    int pretty;
    test_layout();
    test_numbers_text();
    test_strings_text();
    test_misuse();
    test_out_of_memory();
    test_locale();
    if (argc > 1) {
        out_dir = argv[1];
        TEST_BEGIN("documents written");
        for (pretty = 0; pretty <= 1; pretty++) {
            write_basic(pretty);
            write_escapes(pretty);
            write_utf8(pretty);
            write_numbers(pretty);
            write_deep(pretty);
            write_large(pretty);
        }
        CHECK(documents_failed == 0 && documents_written == 12, "%d written, %d failed",
              documents_written, documents_failed);
        TEST_END();
    } else {
        printf("no output directory given: documents not written\n");
    }
    return ekv_test_finish();
}
