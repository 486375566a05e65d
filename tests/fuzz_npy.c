/* fuzz_npy.c - shows that ekv's .npy and .npz readers survive hostile input: a
   deterministic mutation fuzzer (no libFuzzer needed) starts from valid .npy images and
   stored .npz archives, applies random bit flips, byte stores, truncations, extensions,
   header-text edits and edits of the length/offset fields, and feeds every result to
   ekv_npy_parse and to the .npz loader. Nothing may crash or read out of bounds (run it
   under ASan/UBSan), a failure must leave no array behind and set a message, and a
   success must describe the data it returns.

   Build: cc -std=c99 -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all \
              -I. -o build/fuzz_npy tests/fuzz_npy.c tests/ekv_impl.c -lm
   Run:   build/fuzz_npy [--iterations=20000] [--seed=N]
*/
#include "ekv.h"
#include "tests/ekv_test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static ekv_rng rng;

typedef struct image {
    unsigned char *bytes;
    size_t size;
    int is_zip;
} image;

static unsigned char *npy_image(const char *dict, int major, size_t data_bytes, size_t *size)
{
    size_t prefix = major == 1 ? 10 : 12, length = strlen(dict) + 1, i;
    unsigned char *p;
    while ((prefix + length) % 64) length++;
    *size = prefix + length + data_bytes;
    p = (unsigned char *)malloc(*size);
    memcpy(p, "\x93NUMPY", 6);
    p[6] = (unsigned char)major;
    p[7] = 0;
    for (i = 0; i < prefix - 8; i++) p[8 + i] = (unsigned char)(length >> (8 * i));
    memset(p + prefix, ' ', length);
    memcpy(p + prefix, dict, strlen(dict));
    p[prefix + length - 1] = '\n';
    /* every byte below 0x40 keeps the exponent of f2, f4 and f8 values short of all ones:
       finite data, which ekv_data_load requires (a NaN or an infinity is an error) */
    for (i = 0; i < data_bytes; i++) p[prefix + length + i] = (unsigned char)(ekv_rng_next(&rng) & 0x3f);
    return p;
}

static void put_le(unsigned char *p, uint64_t value, int bytes)
{
    int i;
    for (i = 0; i < bytes; i++) p[i] = (unsigned char)(value >> (8 * i));
}

static uint32_t crc32_bitwise(const unsigned char *p, size_t n)
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

/* A stored zip of the members; zip64 = numpy-style saturated sizes + extra field. */
static unsigned char *zip_image(const char **names, unsigned char **data, const size_t *sizes,
                                int count, int zip64, size_t *size)
{
    size_t total = 22, offset = 0, start, directory = 0, local[4];
    unsigned char *z;
    int i;
    for (i = 0; i < count; i++) total += 2 * strlen(names[i]) + 48 + 76 + sizes[i];
    total += 76;
    z = (unsigned char *)calloc(1, total);
    for (i = 0; i < count; i++) {
        size_t n = strlen(names[i]), extra = zip64 ? 20 : 0;
        unsigned char *p = z + offset;
        local[i] = offset;
        put_le(p, 0x04034b50u, 4);
        put_le(p + 14, crc32_bitwise(data[i], sizes[i]), 4);
        put_le(p + 18, zip64 ? 0xffffffffu : sizes[i], 4);
        put_le(p + 22, zip64 ? 0xffffffffu : sizes[i], 4);
        put_le(p + 26, n, 2);
        put_le(p + 28, extra, 2);
        memcpy(p + 30, names[i], n);
        if (zip64) {
            put_le(p + 30 + n, 1, 2);
            put_le(p + 32 + n, 16, 2);
            put_le(p + 34 + n, sizes[i], 8);
            put_le(p + 42 + n, sizes[i], 8);
        }
        memcpy(p + 30 + n + extra, data[i], sizes[i]);
        offset += 30 + n + extra + sizes[i];
    }
    start = offset;
    for (i = 0; i < count; i++) {
        /* zip64: all three of uncompressed, compressed size and local offset saturated */
        size_t n = strlen(names[i]), extra = zip64 ? 28 : 0;
        unsigned char *p = z + offset;
        put_le(p, 0x02014b50u, 4);
        put_le(p + 16, crc32_bitwise(data[i], sizes[i]), 4);
        put_le(p + 20, zip64 ? 0xffffffffu : sizes[i], 4);
        put_le(p + 24, zip64 ? 0xffffffffu : sizes[i], 4);
        put_le(p + 28, n, 2);
        put_le(p + 30, extra, 2);
        put_le(p + 42, zip64 ? 0xffffffffu : local[i], 4);
        memcpy(p + 46, names[i], n);
        if (zip64) {
            put_le(p + 46 + n, 1, 2);
            put_le(p + 48 + n, 24, 2);
            put_le(p + 50 + n, sizes[i], 8);
            put_le(p + 58 + n, sizes[i], 8);
            put_le(p + 66 + n, local[i], 8);
        }
        offset += 46 + n + extra;
        directory += 46 + n + extra;
    }
    if (zip64) {
        /* zip64 end-of-central-directory record and locator; the classic record then
           holds saturated values */
        unsigned char *r = z + offset;
        put_le(r, 0x06064b50u, 4);
        put_le(r + 4, 44, 8);
        put_le(r + 24, (uint64_t)count, 8);
        put_le(r + 32, (uint64_t)count, 8);
        put_le(r + 40, directory, 8);
        put_le(r + 48, start, 8);
        put_le(r + 56, 0x07064b50u, 4);
        put_le(r + 64, offset, 8);
        put_le(r + 72, 1, 4);
        offset += 76;
    }
    put_le(z + offset, 0x06054b50u, 4);
    put_le(z + offset + 8, zip64 ? 0xffffu : (uint64_t)count, 2);
    put_le(z + offset + 10, zip64 ? 0xffffu : (uint64_t)count, 2);
    put_le(z + offset + 12, zip64 ? 0xffffffffu : directory, 4);
    put_le(z + offset + 16, zip64 ? 0xffffffffu : start, 4);
    *size = offset + 22;
    return z;
}

static int make_seeds(image *seeds)
{
    static const char *names[4] = {"q.npy", "k.npy", "v.npy", "q_observe.npy"};
    unsigned char *members[4];
    size_t sizes[4];
    int n = 0, i;
    seeds[n].bytes = npy_image("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 5), }", 1, 60,
                               &seeds[n].size);
    seeds[n++].is_zip = 0;
    seeds[n].bytes = npy_image("{'descr': '<f2', 'fortran_order': False, 'shape': (2, 2, 3), }", 2, 24,
                               &seeds[n].size);
    seeds[n++].is_zip = 0;
    seeds[n].bytes = npy_image("{\"descr\": \"<f8\", \"fortran_order\": False, \"shape\": (4L,)}", 3, 32,
                               &seeds[n].size);
    seeds[n++].is_zip = 0;
    seeds[n].bytes = npy_image("{'descr': '<f4', 'fortran_order': False, 'shape': (), }", 1, 4,
                               &seeds[n].size);
    seeds[n++].is_zip = 0;
    seeds[n].bytes = npy_image("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2, 1, 2, 1, 1, 2, 1), }",
                               1, 32, &seeds[n].size);
    seeds[n++].is_zip = 0;
    members[0] = npy_image("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 4, 8), }", 1, 256, &sizes[0]);
    members[1] = npy_image("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2, 3, 8), }", 1, 384, &sizes[1]);
    members[2] = npy_image("{'descr': '<f2', 'fortran_order': False, 'shape': (2, 2, 3, 8), }", 1, 192, &sizes[2]);
    members[3] = npy_image("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 4, 2, 8), }", 1, 512, &sizes[3]);
    seeds[n].bytes = zip_image(names, members, sizes, 3, 0, &seeds[n].size);
    seeds[n++].is_zip = 1;
    seeds[n].bytes = zip_image(names, members, sizes, 4, 1, &seeds[n].size);
    seeds[n++].is_zip = 1;
    for (i = 0; i < 4; i++) free(members[i]);
    return n;
}

static uint64_t interesting_value(size_t size)
{
    static const uint64_t values[] = {0, 1, 2, 7, 8, 10, 11, 12, 22, 30, 46, 64, 127, 128, 255, 256,
                                      0x7fff, 0x8000, 0xffff, 0x10000, 0x7fffffff, 0x80000000u,
                                      0xfffffffeu, 0xffffffffu};
    uint64_t pick = ekv_rng_below(&rng, sizeof values / sizeof values[0] + 4);
    if (pick < sizeof values / sizeof values[0]) return values[pick];
    if (pick == sizeof values / sizeof values[0]) return size;
    if (pick == sizeof values / sizeof values[0] + 1) return size + 1;
    if (pick == sizeof values / sizeof values[0] + 2) return size > 0 ? size - 1 : 0;
    return ekv_rng_next(&rng);
}

/* Offsets of the length and offset fields of a zip image (EOCD, directory, local). */
static size_t zip_field(const unsigned char *z, size_t size, int *width)
{
    size_t positions[64], count = 0, i;
    int widths[64];
    for (i = 0; i + 4 <= size && count + 7 <= 64; i++) {
        uint32_t sig = (uint32_t)z[i] | (uint32_t)z[i + 1] << 8 | (uint32_t)z[i + 2] << 16 |
                       (uint32_t)z[i + 3] << 24;
        if (sig == 0x06054b50u && i + 22 <= size) {
            positions[count] = i + 10; widths[count++] = 2;
            positions[count] = i + 12; widths[count++] = 4;
            positions[count] = i + 16; widths[count++] = 4;
            positions[count] = i + 20; widths[count++] = 2;
        } else if (sig == 0x02014b50u && i + 46 <= size) {
            positions[count] = i + 20; widths[count++] = 4;
            positions[count] = i + 24; widths[count++] = 4;
            positions[count] = i + 28; widths[count++] = 2;
            positions[count] = i + 30; widths[count++] = 2;
            positions[count] = i + 42; widths[count++] = 4;
            positions[count] = i + 10; widths[count++] = 2;
            if (i + 46 + 4 + z[i + 28] <= size && z[i + 30] >= 4) {
                /* the zip64 extra field's own length, after a short name */
                positions[count] = i + 46 + z[i + 28] + 2; widths[count++] = 2;
            }
        } else if (sig == 0x06064b50u && i + 56 <= size) {
            positions[count] = i + 32; widths[count++] = 8;
            positions[count] = i + 40; widths[count++] = 8;
            positions[count] = i + 48; widths[count++] = 8;
        } else if (sig == 0x07064b50u && i + 20 <= size) {
            positions[count] = i + 8; widths[count++] = 8;
        } else if (sig == 0x04034b50u && i + 30 <= size) {
            positions[count] = i + 26; widths[count++] = 2;
            positions[count] = i + 28; widths[count++] = 2;
        }
    }
    if (count == 0) {
        *width = 4;
        return size >= 4 ? (size_t)ekv_rng_below(&rng, size - 3) : 0;
    }
    i = (size_t)ekv_rng_below(&rng, count);
    *width = widths[i];
    return positions[i];
}

/* One random edit of buf[0..*size) (capacity `capacity`). */
static void mutate(unsigned char *buf, size_t *size, size_t capacity, int is_zip)
{
    size_t n = *size;
    switch (ekv_rng_below(&rng, 8)) {
    case 0: /* bit flip */
        if (n) buf[ekv_rng_below(&rng, n)] ^= (unsigned char)(1u << ekv_rng_below(&rng, 8));
        break;
    case 1: /* byte store */
        if (n) buf[ekv_rng_below(&rng, n)] = (unsigned char)interesting_value(n);
        break;
    case 2: /* truncate */
        *size = (size_t)ekv_rng_below(&rng, n + 1);
        break;
    case 3: /* extend with random bytes */
        while (*size < capacity && ekv_rng_below(&rng, 16) != 0) buf[(*size)++] = (unsigned char)ekv_rng_next(&rng);
        break;
    case 4: /* a length field */
        if (is_zip) {
            int width;
            size_t at = zip_field(buf, n, &width);
            if (at + (size_t)width <= n) put_le(buf + at, interesting_value(n), width);
        } else if (n >= 12) {
            put_le(buf + 8, interesting_value(n), buf[6] == 1 ? 2 : 4);
        }
        break;
    case 5: /* header text: a digit, sign, quote, bracket or keyword character */
        if (n > 12) {
            static const char text[] = "0123456789-,()[]{}':\" LTF<>fi248\n\0";
            size_t at = 10 + (size_t)ekv_rng_below(&rng, (n - 10) < 120 ? n - 10 : 120);
            if (is_zip) at = (size_t)ekv_rng_below(&rng, n);
            buf[at] = (unsigned char)text[ekv_rng_below(&rng, sizeof text - 1)];
        }
        break;
    case 6: /* duplicate a chunk somewhere else */
        if (n > 8) {
            size_t from = (size_t)ekv_rng_below(&rng, n), to = (size_t)ekv_rng_below(&rng, n);
            size_t len = (size_t)ekv_rng_below(&rng, 64);
            if (from + len > n) len = n - from;
            if (to + len > n) len = n - to;
            memmove(buf + to, buf + from, len);
        }
        break;
    default: /* version byte or magic */
        if (n > 7) buf[ekv_rng_below(&rng, 8)] = (unsigned char)ekv_rng_below(&rng, 5);
        break;
    }
}

int main(int argc, char **argv)
{
    image seeds[16];
    int seed_count, i, iterations = 20000, successes = 0, violations = 0;
    uint64_t seed = 20260101;
    for (i = 1; i < argc; i++) {
        if (strncmp(argv[i], "--seed=", 7) == 0) seed = strtoull(argv[i] + 7, NULL, 10);
        else if (strncmp(argv[i], "--iterations=", 13) == 0) iterations = atoi(argv[i] + 13);
    }
    printf("fuzz_npy: seed %llu, %d iterations\n", (unsigned long long)seed, iterations);
    ekv_rng_seed(&rng, seed);
    seed_count = make_seeds(seeds);

    TEST_BEGIN("the unmutated seeds parse");
    for (i = 0; i < seed_count; i++) {
        ekv_npy_array a;
        ekv_data d;
        if (seeds[i].is_zip) {
            CHECK(ekv_data_load_npz_memory(seeds[i].bytes, seeds[i].size, "seed.npz", 2, &d) == EKV_SUCCESS,
                  "seed %d: %s", i, ekv_last_error());
            ekv_data_free(&d);
        } else {
            CHECK(ekv_npy_parse(seeds[i].bytes, seeds[i].size, "seed.npy", &a) == EKV_SUCCESS,
                  "seed %d: %s", i, ekv_last_error());
            ekv_npy_free(&a);
        }
    }
    TEST_END();

    TEST_BEGIN("mutated .npy/.npz images never crash; results are consistent");
    for (i = 0; i < iterations; i++) {
        const image *s = &seeds[ekv_rng_below(&rng, (uint64_t)seed_count)];
        size_t capacity = s->size + 256, size = s->size, exact;
        unsigned char *work = (unsigned char *)malloc(capacity), *input;
        int edits = 1 + (int)ekv_rng_below(&rng, 4), e;
        ekv_npy_array a;
        ekv_data d;
        ekv_result r;
        memcpy(work, s->bytes, s->size);
        for (e = 0; e < edits; e++) mutate(work, &size, capacity, s->is_zip);
        /* an exact-size copy, so that any read past the end is an ASan error */
        exact = size;
        input = (unsigned char *)malloc(exact ? exact : 1);
        memcpy(input, work, exact);
        r = ekv_npy_parse(exact ? input : NULL, exact, "fuzz.npy", &a);
        if (r == EKV_SUCCESS) {
            size_t count = 1;
            int k;
            successes++;
            if (a.ndim < 0 || a.ndim > 8 || !a.values) violations++;
            for (k = 0; k < a.ndim && k < 8; k++) {
                if (a.shape[k] < 0) violations++;
                count *= (size_t)a.shape[k];
            }
            if (count > exact) violations++; /* at least one byte per element */
            ekv_npy_free(&a);
        } else if (a.values || ekv_last_error()[0] == '\0') {
            violations++;
        }
        r = ekv_data_load_npz_memory(exact ? input : NULL, exact, "fuzz.npz", (int)ekv_rng_below(&rng, 4), &d);
        if (r == EKV_SUCCESS) {
            successes++;
            if (d.batch < 1 || d.heads < 1 || d.kv_heads < 1 || d.heads % d.kv_heads != 0 || !d.q ||
                !d.k || !d.v || !d.lengths || d.lengths[0] != d.capacity)
                violations++;
            ekv_data_free(&d);
        } else if (d.q || ekv_last_error()[0] == '\0') {
            violations++;
        }
        free(input);
        free(work);
    }
    printf("  %d iterations, %d parses accepted, %d violations\n", iterations, successes, violations);
    CHECK(violations == 0, "%d inconsistent results", violations);
    CHECK(successes > 0, "no mutated input was ever accepted: the fuzzer is too destructive");
    TEST_END();

    for (i = 0; i < seed_count; i++) free(seeds[i].bytes);
    return ekv_test_finish();
}
