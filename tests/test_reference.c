/* test_reference.c - shows that ekv's data, storage dtypes, compression policies and CPU
   attention do what ekv.h documents: bit-exact f16/bf16/fp8 conversions (exhaustive and
   against a slow frexp/ldexp reference), quantization error bounds, the exact slot maps
   of every policy, analytic attention cases, the float CPU kernel against the double
   reference, the structured data's attention profile, byte accounting and error paths.
   Inputs are fresh random data each run; the seed is printed (rerun with --seed=N).

   Build: cc -std=c99 -O2 -Wall -Wextra -I. -o build/test_reference tests/test_reference.c tests/ekv_impl.c -lm
   (add -mf16c to also compare f16 rounding with the CPU's F16C instruction)
*/
#include "ekv.h"
#include "tests/ekv_test.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#if defined(__F16C__)
#include <immintrin.h>
#endif

static uint64_t run_seed;
static ekv_rng test_rng;

/* ---- helpers ------------------------------------------------------------- */

static float bits_to_float(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static uint32_t float_to_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static double round_half_even(double n)
{
    double f = floor(n), d = n - f;
    if (d > 0.5 || (d == 0.5 && fmod(f, 2.0) != 0.0)) f += 1.0;
    return f;
}

/* |a| rounded to a binary format with `fraction_bits` stored fraction bits and minimum
   normal exponent `emin` (subnormals below), unbounded above: frexp, scale, round. */
static double slow_round(double a, int fraction_bits, int emin)
{
    int e;
    double quantum;
    if (a == 0.0) return 0.0;
    frexp(a, &e);
    if (e - 1 < emin) e = emin + 1;
    quantum = ldexp(1.0, e - 1 - fraction_bits);
    return round_half_even(a / quantum) * quantum;
}

static double slow_f16(float x)
{
    double r;
    if (x != x) return x;
    r = slow_round(fabs((double)x), 10, -14);
    if (r > 65504.0) r = HUGE_VAL;
    return signbit(x) ? -r : r;
}

static double slow_bf16(float x)
{
    double r;
    if (x != x) return x;
    r = slow_round(fabs((double)x), 7, -126);
    if (r > ldexp(255.0, 120)) r = HUGE_VAL; /* bf16 max = 255 * 2^120 */
    return signbit(x) ? -r : r;
}

static double slow_fp8(float x)
{
    double r;
    if (x != x) return x;
    r = fabs((double)x) > 1e300 ? 448.0 : slow_round(fabs((double)x), 3, -6);
    if (r > 448.0) r = 448.0;
    return signbit(x) ? -r : r;
}

static double slow_decode(unsigned code, int exponent_bits, int fraction_bits, int bias)
{
    unsigned sign = code >> (exponent_bits + fraction_bits);
    unsigned e = (code >> fraction_bits) & ((1u << exponent_bits) - 1u);
    unsigned m = code & ((1u << fraction_bits) - 1u);
    double v = e == 0 ? ldexp((double)m, 1 - bias - fraction_bits)
                      : ldexp(1.0 + ldexp((double)m, -fraction_bits), (int)e - bias);
    return sign ? -v : v;
}

/* same value and, for zeros, the same sign; NaN matches NaN */
static int same_value(double got, double want)
{
    if (want != want) return got != got;
    return got == want && signbit(got) == signbit(want);
}

static float random_float_any(void)
{
    return bits_to_float((uint32_t)ekv_rng_next(&test_rng));
}

/* fresh random data (random kind) of the given shape */
static ekv_data make_data(ekv_data_kind kind, int batch, int heads, int kv_heads, int head_dim,
                          int seq_len, int observe, const int *lengths)
{
    ekv_data_desc desc;
    ekv_data data;
    memset(&desc, 0, sizeof desc);
    desc.kind = kind;
    desc.batch = batch;
    desc.heads = heads;
    desc.kv_heads = kv_heads;
    desc.head_dim = head_dim;
    desc.seq_len = seq_len;
    desc.observe = observe;
    desc.seed = ekv_rng_next(&test_rng);
    desc.lengths = lengths;
    if (ekv_data_generate(&desc, &data) != EKV_SUCCESS) {
        printf("data generation failed: %s\n", ekv_last_error());
        memset(&data, 0, sizeof data);
    }
    return data;
}

static double *alloc_poisoned_f64(size_t n)
{
    double *p = (double *)malloc(n * sizeof(double));
    size_t i;
    for (i = 0; i < n; i++) p[i] = NAN;
    return p;
}

static float *alloc_poisoned_f32(size_t n)
{
    float *p = (float *)malloc(n * sizeof(float));
    size_t i;
    for (i = 0; i < n; i++) p[i] = NAN;
    return p;
}

static size_t out_count(const ekv_data *d)
{
    return (size_t)d->batch * (size_t)d->heads * (size_t)d->head_dim;
}

static ekv_compress_desc compress_desc(ekv_policy policy, int compression, int recent, int sinks)
{
    ekv_compress_desc c;
    memset(&c, 0, sizeof c);
    c.policy = policy;
    c.compression = compression;
    c.recent = recent;
    c.sinks = sinks;
    c.observe = 4;
    return c;
}

/* ---- conversions ----------------------------------------------------------- */

static void check_f16_value(float x, int *failures)
{
    uint16_t h = ekv_f32_to_f16(x);
    double got = ekv_f16_to_f32(h), want = slow_f16(x);
    if (!same_value(got, want)) {
        if ((*failures)++ < 5)
            CHECK(0, "f16(%.9g = 0x%08x) = 0x%04x (%.9g), want %.9g", x, float_to_bits(x), h,
                  got, want);
    }
    if (x != x && h != 0x7fff && (*failures)++ < 5) CHECK(0, "f16(NaN) = 0x%04x, want 0x7fff", h);
#if defined(__F16C__)
    if (x == x) {
        uint16_t hw = (uint16_t)_cvtss_sh(x, 0);
        if (hw != h && (*failures)++ < 5)
            CHECK(0, "f16(%.9g): ekv 0x%04x, F16C 0x%04x", x, h, hw);
    }
#endif
}

static void check_bf16_value(float x, int *failures)
{
    uint16_t h = ekv_f32_to_bf16(x);
    double got = ekv_bf16_to_f32(h), want = slow_bf16(x);
    if (!same_value(got, want) && (*failures)++ < 5)
        CHECK(0, "bf16(%.9g = 0x%08x) = 0x%04x (%.9g), want %.9g", x, float_to_bits(x), h, got,
              want);
    if (x != x && h != 0x7fff && (*failures)++ < 5) CHECK(0, "bf16(NaN) = 0x%04x, want 0x7fff", h);
}

static void check_fp8_value(float x, int *failures)
{
    uint8_t c = ekv_f32_to_fp8(x);
    double got = ekv_fp8_to_f32(c), want = slow_fp8(x);
    if (!same_value(got, want) && (*failures)++ < 5)
        CHECK(0, "fp8(%.9g = 0x%08x) = 0x%02x (%.9g), want %.9g", x, float_to_bits(x), c, got,
              want);
    if (x != x && c != 0x7f && (*failures)++ < 5) CHECK(0, "fp8(NaN) = 0x%02x, want 0x7f", c);
}

/* x, the floats on either side of it, and -x */
static void check_around(float x, void (*check)(float, int *), int *failures)
{
    check(x, failures);
    check(nextafterf(x, HUGE_VALF), failures);
    check(nextafterf(x, -HUGE_VALF), failures);
    check(-x, failures);
    check(-nextafterf(x, HUGE_VALF), failures);
    check(-nextafterf(x, -HUGE_VALF), failures);
}

static void test_f16(void)
{
    int failures = 0;
    uint32_t h;
    int i;
    static const float specials[] = {0.0f, 1.0f, 65504.0f, 65519.99f, 65520.0f, 65536.0f,
                                     1e30f, 5.9604645e-08f /* 2^-24 */, 2.9802322e-08f /* 2^-25 */,
                                     1e-45f, 1.1754944e-38f, 6.1035156e-05f /* 2^-14 */, 0.1f,
                                     3.14159265f};
    TEST_BEGIN("f16: all 65536 codes decode exactly and round-trip");
    for (h = 0; h < 65536; h++) {
        float f = ekv_f16_to_f32((uint16_t)h);
        double want = slow_decode(h, 5, 10, 15);
        unsigned e = (h >> 10) & 31;
        if (e == 31) want = (h & 0x3ff) ? NAN : ((h & 0x8000) ? -HUGE_VAL : HUGE_VAL);
        if (!same_value(f, want) && failures++ < 5)
            CHECK(0, "decode 0x%04x = %.9g, want %.9g", (unsigned)h, f, want);
        if (f == f && ekv_f32_to_f16(f) != h && failures++ < 5)
            CHECK(0, "round trip 0x%04x -> %.9g -> 0x%04x", (unsigned)h, f, ekv_f32_to_f16(f));
        if (f != f && ekv_f32_to_f16(f) != 0x7fff && failures++ < 5)
            CHECK(0, "NaN 0x%04x did not encode as 0x7fff", (unsigned)h);
    }
    TEST_END();

    failures = 0;
    TEST_BEGIN("f16: RNE of every half-way point and its neighbours, specials, random floats");
    for (h = 0; h < 0x7c00; h++) {
        double v0 = ekv_f16_to_f32((uint16_t)h);
        double v1 = h + 1 < 0x7c00 ? ekv_f16_to_f32((uint16_t)(h + 1)) : 65536.0;
        check_around((float)((v0 + v1) / 2), check_f16_value, &failures);
        check_around((float)v0, check_f16_value, &failures);
    }
    for (i = 0; i < (int)(sizeof specials / sizeof specials[0]); i++)
        check_around(specials[i], check_f16_value, &failures);
    check_f16_value(HUGE_VALF, &failures);
    check_f16_value(-HUGE_VALF, &failures);
    check_f16_value(NAN, &failures);
    check_f16_value(-NAN, &failures);
    CHECK(ekv_f32_to_f16(65520.0f) == 0x7c00, "65520 must round to inf");
    CHECK(ekv_f32_to_f16(nextafterf(65520.0f, 0.0f)) == 0x7bff, "just below 65520 is 65504");
    CHECK(ekv_f32_to_f16(2.9802322e-08f) == 0x0000, "2^-25 ties to even (0)");
    CHECK(ekv_f32_to_f16(-0.0f) == 0x8000, "-0 keeps its sign");
    for (i = 0; i < 1000000; i++) {
        check_f16_value(random_float_any(), &failures);
        check_f16_value((float)ldexp(1.0 + ekv_rng_uniform(&test_rng),
                                     (int)ekv_rng_below(&test_rng, 46) - 28), &failures);
    }
    CHECK(failures == 0, "%d mismatches", failures);
    TEST_END();
}

static void test_bf16(void)
{
    int failures = 0, i;
    uint32_t h;
    TEST_BEGIN("bf16: decode, round trip, RNE half-way points, random floats, NaN stays NaN");
    for (h = 0; h < 65536; h++) {
        float f = ekv_bf16_to_f32((uint16_t)h);
        if (float_to_bits(f) != h << 16 && failures++ < 5) CHECK(0, "decode 0x%04x", (unsigned)h);
        if (f == f && ekv_f32_to_bf16(f) != h && failures++ < 5)
            CHECK(0, "round trip 0x%04x", (unsigned)h);
        if (f != f && ekv_f32_to_bf16(f) != 0x7fff && failures++ < 5)
            CHECK(0, "NaN 0x%04x", (unsigned)h);
    }
    for (h = 0; h < 0x7f80; h++) {
        double v0 = ekv_bf16_to_f32((uint16_t)h), v1 = ekv_bf16_to_f32((uint16_t)(h + 1));
        if (h + 1 == 0x7f80) v1 = ldexp(1.0, 128);
        if (v1 > FLT_MAX) {
            check_around(FLT_MAX, check_bf16_value, &failures);
            continue;
        }
        check_around((float)((v0 + v1) / 2), check_bf16_value, &failures);
    }
    for (i = 0; i < 1000000; i++) check_bf16_value(random_float_any(), &failures);
    check_bf16_value(NAN, &failures);
    CHECK(ekv_f32_to_bf16(FLT_MAX) == 0x7f80, "FLT_MAX rounds to inf under RNE");
    CHECK(failures == 0, "%d mismatches", failures);
    TEST_END();
}

static void test_fp8(void)
{
    int failures = 0, i;
    unsigned c;
    TEST_BEGIN("fp8 e4m3: 256 codes decode exactly, round trip, RNE, SATFINITE, NaN -> 0x7f");
    for (c = 0; c < 256; c++) {
        float f = ekv_fp8_to_f32((uint8_t)c);
        double want = (c & 0x7f) == 0x7f ? NAN : slow_decode(c, 4, 3, 7);
        if (!same_value(f, want) && failures++ < 5) CHECK(0, "decode 0x%02x = %.9g want %.9g", c, f, want);
        if (f == f && ekv_f32_to_fp8(f) != c && failures++ < 5)
            CHECK(0, "round trip 0x%02x -> 0x%02x", c, ekv_f32_to_fp8(f));
    }
    for (c = 0; c < 0x7e; c++) {
        double v0 = ekv_fp8_to_f32((uint8_t)c), v1 = ekv_fp8_to_f32((uint8_t)(c + 1));
        check_around((float)((v0 + v1) / 2), check_fp8_value, &failures);
        check_around((float)v0, check_fp8_value, &failures);
    }
    check_around(448.0f, check_fp8_value, &failures);
    check_around(464.0f, check_fp8_value, &failures); /* the would-be tie with 480 */
    check_around(480.0f, check_fp8_value, &failures);
    check_around(1e30f, check_fp8_value, &failures);
    check_around(ldexpf(1.0f, -10), check_fp8_value, &failures); /* half the smallest subnormal */
    check_fp8_value(HUGE_VALF, &failures);
    check_fp8_value(-HUGE_VALF, &failures);
    check_fp8_value(NAN, &failures);
    check_fp8_value(-NAN, &failures);
    for (i = 0; i < 1000000; i++) {
        check_fp8_value(random_float_any(), &failures);
        check_fp8_value((float)ldexp(1.0 + ekv_rng_uniform(&test_rng),
                                     (int)ekv_rng_below(&test_rng, 22) - 12) *
                            (ekv_rng_below(&test_rng, 2) ? 1.0f : -1.0f), &failures);
    }
    CHECK(ekv_f32_to_fp8(HUGE_VALF) == 0x7e && ekv_f32_to_fp8(-HUGE_VALF) == 0xfe, "inf saturates");
    CHECK(ekv_f32_to_fp8(464.0f) == 0x7e && ekv_f32_to_fp8(1e9f) == 0x7e, "overflow saturates");
    CHECK(ekv_f32_to_fp8(ldexpf(1.0f, -10)) == 0x00, "2^-10 ties to zero");
    CHECK(ekv_f32_to_fp8(nextafterf(ldexpf(1.0f, -10), 1.0f)) == 0x01, "above 2^-10 rounds up");
    CHECK(ekv_f32_to_fp8(-0.0f) == 0x80, "-0");
    CHECK(failures == 0, "%d mismatches", failures);
    TEST_END();
}

/* ---- quantization ---------------------------------------------------------- */

static void random_row(float *x, int n, double spread)
{
    int i;
    for (i = 0; i < n; i++) {
        x[i] = (float)(spread * ekv_rng_normal(&test_rng));
        if (x[i] == 0.0f) x[i] = 0.5f;
    }
}

static void test_quantization(void)
{
    enum { D = 128, ROWS = 4000 };
    float x[D], y[D];
    unsigned char row[4 * D], scales[64];
    int r, i, bad = 0;

    TEST_BEGIN("int8: bit-exact against rintf, |err| <= scale/2, all-zero row");
    for (r = 0; r < ROWS; r++) {
        float amax = 0.0f, scale;
        random_row(x, D, ldexp(1.0, (int)ekv_rng_below(&test_rng, 30) - 15));
        memset(row, 0xAB, sizeof row);
        ekv_quantize_row(EKV_DTYPE_INT8, x, D, 0.0f, row, scales);
        for (i = 0; i < D; i++) amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
        scale = amax / 127.0f;
        CHECK(memcmp(scales, &scale, 4) == 0, "scale");
        for (i = 0; i < D; i++) {
            float q = rintf(x[i] / scale);
            q = q > 127.0f ? 127.0f : q < -127.0f ? -127.0f : q;
            if ((int)((const int8_t *)row)[i] != (int)q && bad++ < 5)
                CHECK(0, "row %d element %d: q %d want %d", r, i, ((const int8_t *)row)[i], (int)q);
        }
        ekv_dequantize_row(EKV_DTYPE_INT8, row, scales, D, 0.0f, y);
        for (i = 0; i < D; i++)
            if (fabsf(y[i] - x[i]) > scale * 0.5f * (1.0f + 1e-6f) + FLT_EPSILON * fabsf(x[i]) &&
                bad++ < 5)
                CHECK(0, "int8 error %g > scale/2 = %g", fabsf(y[i] - x[i]), scale * 0.5f);
    }
    /* exact ties: amax 127 gives scale 1, so k + 0.5 must round to the even neighbour */
    for (i = 0; i < D; i++) x[i] = (float)(i % 20) - 9.5f;
    x[0] = 127.0f;
    ekv_quantize_row(EKV_DTYPE_INT8, x, D, 0.0f, row, scales);
    for (i = 1; i < D; i++) {
        int want = (int)rintf(x[i]);
        CHECK(((const int8_t *)row)[i] == want && want % 2 == 0, "tie %g -> %d, want %d", x[i],
              ((const int8_t *)row)[i], want);
    }
    for (i = 0; i < D; i++) x[i] = 0.0f;
    for (i = 0; i < D; i++) y[i] = NAN;
    ekv_quantize_row(EKV_DTYPE_INT8, x, D, 0.0f, row, scales);
    ekv_dequantize_row(EKV_DTYPE_INT8, row, scales, D, 0.0f, y);
    {
        float zero_scale;
        memcpy(&zero_scale, scales, 4);
        CHECK(zero_scale == 0.0f, "all-zero row stores scale 0, got %g", zero_scale);
    }
    for (i = 0; i < D; i++) CHECK(y[i] == 0.0f, "all-zero row dequantizes to 0");
    CHECK(bad == 0, "%d failures", bad);
    TEST_END();

    bad = 0;
    TEST_BEGIN("int4: nibble layout, bit-exact f16 scale/zero, error within scale/2 + rounding");
    for (r = 0; r < ROWS; r++) {
        int g;
        random_row(x, D, ldexp(1.0, (int)ekv_rng_below(&test_rng, 16) - 8));
        if (r % 7 == 0) x[3] += 5.0f; /* outliers */
        memset(row, 0xAB, sizeof row);
        ekv_quantize_row(EKV_DTYPE_INT4, x, D, 0.0f, row, scales);
        ekv_dequantize_row(EKV_DTYPE_INT4, row, scales, D, 0.0f, y);
        for (g = 0; g < D / 32; g++) {
            float mn = x[32 * g], mx = x[32 * g], scale, zero;
            uint16_t pair[2];
            for (i = 32 * g; i < 32 * g + 32; i++) {
                mn = x[i] < mn ? x[i] : mn;
                mx = x[i] > mx ? x[i] : mx;
            }
            memcpy(pair, scales + 4 * g, 4);
            CHECK(pair[0] == ekv_f32_to_f16((mx - mn) / 15.0f), "scale of group %d", g);
            CHECK(pair[1] == ekv_f32_to_f16(mn), "zero of group %d", g);
            scale = ekv_f16_to_f32(pair[0]);
            zero = ekv_f16_to_f32(pair[1]);
            for (i = 32 * g; i < 32 * g + 32; i++) {
                int nibble = (i & 1) ? row[i / 2] >> 4 : row[i / 2] & 15;
                float q = rintf((x[i] - zero) / scale);
                double bound = scale * 0.5 + fabs((double)zero - mn) +
                               15.0 * fabs((double)scale - ((double)mx - mn) / 15.0) +
                               1e-6 * (fabs(x[i]) + fabs(zero));
                q = q > 15.0f ? 15.0f : q < 0.0f ? 0.0f : q;
                if (nibble != (int)q && bad++ < 5) CHECK(0, "element %d: nibble %d want %g", i, nibble, q);
                if (fabs((double)y[i] - x[i]) > bound && bad++ < 5)
                    CHECK(0, "int4 error %g > %g", fabs((double)y[i] - x[i]), bound);
            }
        }
    }
    /* exact ties: min 0, max 15 gives scale 1 and zero 0 in every group */
    for (i = 0; i < D; i++) x[i] = (float)(i % 15) + 0.5f;
    for (i = 0; i < D; i += 32) {
        x[i] = 0.0f;
        x[i + 1] = 15.0f;
    }
    ekv_quantize_row(EKV_DTYPE_INT4, x, D, 0.0f, row, scales);
    for (i = 0; i < D; i++) {
        int nibble = (i & 1) ? row[i / 2] >> 4 : row[i / 2] & 15;
        CHECK(nibble == (int)rintf(x[i]), "int4 tie %g -> %d", x[i], nibble);
    }
    CHECK(bad == 0, "%d failures", bad);
    TEST_END();

    bad = 0;
    TEST_BEGIN("fp8: relative error <= 2^-4 in the normal range, half a subnormal step below");
    for (r = 0; r < ROWS; r++) {
        float amax = 0.0f, scale;
        random_row(x, D, ldexp(1.0, (int)ekv_rng_below(&test_rng, 20) - 10));
        for (i = 0; i < D; i++) amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
        scale = amax / EKV_FP8_MAX;
        ekv_quantize_row(EKV_DTYPE_FP8, x, D, scale, row, NULL);
        ekv_dequantize_row(EKV_DTYPE_FP8, row, NULL, D, scale, y);
        for (i = 0; i < D; i++) {
            double err = fabs((double)y[i] - x[i]);
            int normal = fabsf(x[i] / scale) >= ldexpf(1.0f, -6);
            double bound = normal ? ldexp(fabs(x[i]), -4) * (1 + 1e-6)
                                  : ldexp((double)scale, -10) * (1 + 1e-6);
            if (row[i] != ekv_f32_to_fp8(x[i] / scale) && bad++ < 5) CHECK(0, "code");
            if (err > bound && bad++ < 5) CHECK(0, "fp8 error %g > %g at %g", err, bound, x[i]);
        }
    }
    CHECK(bad == 0, "%d failures", bad);
    TEST_END();

    bad = 0;
    TEST_BEGIN("f16/bf16 rows: RNE error bounds, f32 row exact");
    for (r = 0; r < ROWS; r++) {
        /* |x| stays far below 65504: overflow to inf is the conversion tests' business */
        random_row(x, D, ldexp(1.0, (int)ekv_rng_below(&test_rng, 27) - 15));
        ekv_quantize_row(EKV_DTYPE_F16, x, D, 0.0f, row, NULL);
        ekv_dequantize_row(EKV_DTYPE_F16, row, NULL, D, 0.0f, y);
        for (i = 0; i < D; i++)
            if (fabs((double)y[i] - x[i]) > fmax(ldexp(fabs(x[i]), -11), ldexp(1.0, -25)) &&
                bad++ < 5)
                CHECK(0, "f16 error at %g", x[i]);
        ekv_quantize_row(EKV_DTYPE_BF16, x, D, 0.0f, row, NULL);
        ekv_dequantize_row(EKV_DTYPE_BF16, row, NULL, D, 0.0f, y);
        for (i = 0; i < D; i++)
            if (fabs((double)y[i] - x[i]) > ldexp(fabs(x[i]), -8) && bad++ < 5)
                CHECK(0, "bf16 error at %g", x[i]);
        ekv_quantize_row(EKV_DTYPE_F32, x, D, 0.0f, row, NULL);
        ekv_dequantize_row(EKV_DTYPE_F32, row, NULL, D, 0.0f, y);
        CHECK(memcmp(x, y, sizeof x) == 0, "f32 row must be exact");
    }
    CHECK(bad == 0, "%d failures", bad);
    CHECK(ekv_dtype_row_bytes(EKV_DTYPE_F32, 128) == 512 && ekv_dtype_row_bytes(EKV_DTYPE_F16, 128) == 256 &&
              ekv_dtype_row_bytes(EKV_DTYPE_BF16, 128) == 256 &&
              ekv_dtype_row_bytes(EKV_DTYPE_INT8, 128) == 128 &&
              ekv_dtype_row_bytes(EKV_DTYPE_INT4, 128) == 64 &&
              ekv_dtype_row_bytes(EKV_DTYPE_FP8, 128) == 128, "row bytes");
    CHECK(ekv_dtype_row_scale_bytes(EKV_DTYPE_INT8, 128) == 4 &&
              ekv_dtype_row_scale_bytes(EKV_DTYPE_INT4, 128) == 16 &&
              ekv_dtype_row_scale_bytes(EKV_DTYPE_INT4, 64) == 8 &&
              ekv_dtype_row_scale_bytes(EKV_DTYPE_FP8, 128) == 0 &&
              ekv_dtype_row_scale_bytes(EKV_DTYPE_F16, 128) == 0, "row scale bytes");
    TEST_END();
}

/* ---- policies ------------------------------------------------------------ */

static int slots_equal(const ekv_slot_source *slots, int count, const int *firsts,
                       const int *counts, int expected)
{
    int i;
    if (count != expected) return 0;
    for (i = 0; i < count; i++)
        if (slots[i].first != firsts[i] || slots[i].count != counts[i]) return 0;
    return 1;
}

static void print_slots(const char *what, const ekv_slot_source *slots, int count)
{
    int i;
    printf("  %s:", what);
    for (i = 0; i < count; i++) printf(" [%d,+%d]", slots[i].first, slots[i].count);
    printf("\n");
}

static void test_policy_hand_cases(void)
{
    /* length 10, W = 2, C = 3, sinks = 1: old tokens 0..7, budget ceil(8/3) = 3, kept 5 */
    static const double scores[10] = {9, 1, 5, 7, 5, 0, 2, 3, 100, 100};
    static const int ones[5] = {1, 1, 1, 1, 1};
    static const int stride_first[5] = {1, 4, 7, 8, 9};
    static const int pool_first[5] = {0, 3, 6, 8, 9}, pool_count[5] = {3, 3, 2, 1, 1};
    static const int window_first[5] = {0, 6, 7, 8, 9};
    static const int topk_first[5] = {0, 2, 3, 8, 9};
    static const int window5_first[5] = {0, 1, 2, 8, 9};
    ekv_slot_source slots[16];
    ekv_compress_desc c;
    int n;
    TEST_BEGIN("policy slot maps: length 10, W=2, C=3, sinks=1 (hand-worked)");
    c = compress_desc(EKV_POLICY_STRIDE, 3, 2, 1);
    CHECK(ekv_policy_kept(&c, 10) == 5, "kept %d", ekv_policy_kept(&c, 10));
    n = ekv_policy_map(&c, 10, NULL, slots);
    if (!slots_equal(slots, n, stride_first, ones, 5)) print_slots("stride", slots, n);
    CHECK(slots_equal(slots, n, stride_first, ones, 5), "stride keeps 1,4,7 + 8,9");
    c.policy = EKV_POLICY_POOL;
    n = ekv_policy_map(&c, 10, NULL, slots);
    if (!slots_equal(slots, n, pool_first, pool_count, 5)) print_slots("pool", slots, n);
    CHECK(slots_equal(slots, n, pool_first, pool_count, 5), "pool [0,3) [3,6) [6,8) + 8,9");
    c.policy = EKV_POLICY_WINDOW;
    n = ekv_policy_map(&c, 10, NULL, slots);
    if (!slots_equal(slots, n, window_first, ones, 5)) print_slots("window", slots, n);
    CHECK(slots_equal(slots, n, window_first, ones, 5), "window keeps 0 + 6,7 + 8,9");
    c.policy = EKV_POLICY_TOPK;
    n = ekv_policy_map(&c, 10, scores, slots);
    if (!slots_equal(slots, n, topk_first, ones, 5)) print_slots("topk", slots, n);
    CHECK(slots_equal(slots, n, topk_first, ones, 5),
          "topk keeps sink 0, token 3 (7), token 2 (5, older than token 4), then 8,9");
    CHECK(ekv_policy_map(&c, 10, NULL, slots) == -1, "topk without scores is an error");
    /* more sinks than the budget: the budget is all sinks */
    c = compress_desc(EKV_POLICY_WINDOW, 3, 2, 5);
    n = ekv_policy_map(&c, 10, NULL, slots);
    CHECK(slots_equal(slots, n, window5_first, ones, 5), "window with sinks 5 > budget 3");
    c.policy = EKV_POLICY_TOPK;
    n = ekv_policy_map(&c, 10, scores, slots);
    CHECK(slots_equal(slots, n, window5_first, ones, 5), "topk with sinks 5 > budget 3");
    /* none needs C = 1 */
    c = compress_desc(EKV_POLICY_NONE, 2, 0, 0);
    CHECK(ekv_policy_kept(&c, 10) == -1, "none with C=2 is invalid");
    CHECK(ekv_policy_map(&c, 10, NULL, slots) == -1, "none with C=2 is invalid");
    c.compression = 1;
    CHECK(ekv_policy_kept(&c, 10) == 10, "none keeps all");
    c = compress_desc(EKV_POLICY_STRIDE, 0, 0, 0);
    CHECK(ekv_policy_kept(&c, 10) == -1, "C=0 invalid");
    c = compress_desc(EKV_POLICY_STRIDE, 2, -1, 0);
    CHECK(ekv_policy_kept(&c, 10) == -1, "negative recent invalid");
    /* W >= length: everything is recent */
    c = compress_desc(EKV_POLICY_POOL, 4, 8, 0);
    n = ekv_policy_map(&c, 5, NULL, slots);
    CHECK(n == 5 && slots[0].first == 0 && slots[4].first == 4 && slots[4].count == 1,
          "W >= length keeps all tokens");
    TEST_END();
}

/* every policy over many (length, C, W, sinks): counts and structural invariants */
static void test_policy_invariants(void)
{
    static const ekv_policy policies[] = {EKV_POLICY_NONE, EKV_POLICY_STRIDE, EKV_POLICY_POOL,
                                          EKV_POLICY_WINDOW, EKV_POLICY_TOPK};
    ekv_slot_source *slots = (ekv_slot_source *)malloc(300 * sizeof *slots);
    double *scores = (double *)malloc(300 * sizeof(double));
    int length, C, W, p, bad = 0;
    TEST_BEGIN("policy kept formula and slot map invariants over many (length, C, W)");
    for (length = 0; length <= 150; length++)
        for (C = 1; C <= 9; C++)
            for (W = 0; W <= 40; W += 3)
                for (p = 0; p < 5; p++) {
                    ekv_compress_desc c = compress_desc(policies[p], C, W,
                                                        (int)ekv_rng_below(&test_rng, 6));
                    int recent = W < length ? W : length, old = length - recent;
                    int expect = (old + C - 1) / C + recent, n, i, t, sinks;
                    int budget = expect - recent;
                    if (policies[p] == EKV_POLICY_NONE && C != 1) {
                        if (ekv_policy_kept(&c, length) != -1 && bad++ < 5) CHECK(0, "none C>1");
                        continue;
                    }
                    for (t = 0; t < length; t++)
                        scores[t] = (double)ekv_rng_below(&test_rng, 5); /* many ties */
                    if (ekv_policy_kept(&c, length) != expect && bad++ < 5)
                        CHECK(0, "kept(L=%d,C=%d,W=%d) = %d want %d", length, C, W,
                              ekv_policy_kept(&c, length), expect);
                    for (i = 0; i < 300; i++) slots[i].first = slots[i].count = -7;
                    n = ekv_policy_map(&c, length, scores, slots);
                    if (n != expect) {
                        if (bad++ < 5) CHECK(0, "map count %d want %d", n, expect);
                        continue;
                    }
                    for (i = 0; i < n; i++) {
                        if (slots[i].first < 0 || slots[i].count < 1 ||
                            slots[i].first + slots[i].count > length ||
                            (i > 0 && slots[i].first < slots[i - 1].first + slots[i - 1].count)) {
                            if (bad++ < 5) CHECK(0, "slot %d out of order or range", i);
                            break;
                        }
                        if (i >= budget && (slots[i].first != old + i - budget || slots[i].count != 1) &&
                            bad++ < 5)
                            CHECK(0, "recent window slot %d", i);
                    }
                    sinks = c.sinks < budget ? c.sinks : budget;
                    for (i = 0; i < budget; i++) {
                        const ekv_slot_source s = slots[i];
                        switch (policies[p]) {
                        case EKV_POLICY_STRIDE:
                        case EKV_POLICY_NONE:
                            if (((old - 1 - s.first) % C != 0 || s.count != 1) && bad++ < 5)
                                CHECK(0, "stride slot %d", s.first);
                            break;
                        case EKV_POLICY_POOL:
                            if ((s.first != i * C || s.count != (old - i * C < C ? old - i * C : C)) &&
                                bad++ < 5)
                                CHECK(0, "pool slot %d", i);
                            break;
                        case EKV_POLICY_WINDOW:
                            if (s.first != (i < sinks ? i : old - budget + i) && bad++ < 5)
                                CHECK(0, "window slot %d", i);
                            break;
                        default:
                            if (i < sinks && s.first != i && bad++ < 5) CHECK(0, "topk sink");
                            break;
                        }
                    }
                    if (policies[p] == EKV_POLICY_TOPK && budget > sinks) {
                        /* the least kept score >= the best dropped one; on a tie the
                           kept token is older */
                        double least = HUGE_VAL;
                        int least_token = -1, k = sinks;
                        for (i = sinks; i < budget; i++)
                            if (scores[slots[i].first] <= least) {
                                least = scores[slots[i].first];
                                least_token = slots[i].first;
                            }
                        for (t = sinks; t < old; t++) {
                            if (k < budget && slots[k].first == t) {
                                k++;
                                continue;
                            }
                            if ((scores[t] > least || (scores[t] == least && t < least_token)) &&
                                bad++ < 5)
                                CHECK(0, "topk dropped token %d (score %g) over %d (%g)", t,
                                      scores[t], least_token, least);
                        }
                    }
                }
    CHECK(bad == 0, "%d failures", bad);
    TEST_END();
    free(slots);
    free(scores);
}

/* ---- reference attention ------------------------------------------------- */

static void test_reference_analytic(void)
{
    ekv_data d = make_data(EKV_DATA_RANDOM, 2, 4, 2, 64, 37, 0, NULL);
    size_t n = out_count(&d);
    double *out = alloc_poisoned_f64(n);
    int b, h, t, i;
    TEST_BEGIN("reference: all keys equal -> mean of V");
    for (b = 0; b < d.batch; b++)
        for (h = 0; h < d.kv_heads; h++)
            for (t = 1; t < d.capacity; t++)
                memcpy(d.k + ekv_data_kv_index(&d, b, h, t), d.k + ekv_data_kv_index(&d, b, h, 0),
                       (size_t)d.head_dim * sizeof(float));
    CHECK(ekv_reference_attention(&d, 0.0, out) == EKV_SUCCESS, "%s", ekv_last_error());
    for (b = 0; b < d.batch; b++)
        for (h = 0; h < d.heads; h++)
            for (i = 0; i < d.head_dim; i++) {
                double mean = 0.0;
                const float *v = d.v + ekv_data_kv_index(&d, b, h / 2, 0);
                for (t = 0; t < d.capacity; t++) mean += v[(size_t)t * (size_t)d.head_dim + (size_t)i];
                mean /= d.capacity;
                CHECK_CLOSE(out[((size_t)b * d.heads + h) * d.head_dim + i], mean, 1e-12, 1e-13,
                            "mean of V");
            }
    {
        double entropy = NAN, mass = NAN;
        CHECK(ekv_attention_profile(&d, 0.0, &entropy, &mass) == EKV_SUCCESS, "profile");
        CHECK_CLOSE(entropy, log(37.0), 1e-12, 0.0, "uniform entropy = ln S");
        CHECK_CLOSE(mass, 2.0 / 37.0, 1e-12, 0.0, "top ceil(5% of 37) = 2 tokens");
    }
    TEST_END();

    TEST_BEGIN("reference: one dominant key -> its V");
    for (b = 0; b < d.batch; b++)
        for (h = 0; h < d.kv_heads; h++) {
            /* token 11 aligned with both query heads of the group, logit ~ +100s */
            float *k = d.k + ekv_data_kv_index(&d, b, h, 11);
            const float *q0 = d.q + ((size_t)b * d.heads + 2 * h) * d.head_dim;
            const float *q1 = q0 + d.head_dim;
            for (i = 0; i < d.head_dim; i++) k[i] = 200.0f * (q0[i] + q1[i]);
        }
    for (i = 0; i < (int)n; i++) out[i] = NAN;
    CHECK(ekv_reference_attention(&d, 0.0, out) == EKV_SUCCESS, "%s", ekv_last_error());
    for (b = 0; b < d.batch; b++)
        for (h = 0; h < d.heads; h++) {
            const float *v = d.v + ekv_data_kv_index(&d, b, h / 2, 11);
            for (i = 0; i < d.head_dim; i++)
                CHECK_CLOSE(out[((size_t)b * d.heads + h) * d.head_dim + i], v[i], 1e-12, 1e-12,
                            "V of the dominant token");
        }
    TEST_END();
    free(out);
    ekv_data_free(&d);
}

static void test_gqa_equals_repeated_mha(void)
{
    ekv_data g = make_data(EKV_DATA_STRUCTURED, 2, 8, 2, 64, 300, 3, NULL);
    ekv_data m = make_data(EKV_DATA_RANDOM, 2, 8, 8, 64, 300, 3, NULL);
    size_t n = out_count(&g);
    double *a = alloc_poisoned_f64(n), *bo = alloc_poisoned_f64(n);
    double *sg = alloc_poisoned_f64(2 * 2 * 300), *sm = alloc_poisoned_f64(2 * 8 * 300);
    int b, h, t;
    TEST_BEGIN("reference: GQA equals MHA with the KV heads repeated");
    memcpy(m.q, g.q, n * sizeof(float));
    memcpy(m.q_observe, g.q_observe, n * 3 * sizeof(float));
    for (b = 0; b < 2; b++)
        for (h = 0; h < 8; h++) {
            memcpy(m.k + ekv_data_kv_index(&m, b, h, 0), g.k + ekv_data_kv_index(&g, b, h / 4, 0),
                   300 * 64 * sizeof(float));
            memcpy(m.v + ekv_data_kv_index(&m, b, h, 0), g.v + ekv_data_kv_index(&g, b, h / 4, 0),
                   300 * 64 * sizeof(float));
        }
    CHECK(ekv_reference_attention(&g, 0.0, a) == EKV_SUCCESS, "%s", ekv_last_error());
    CHECK(ekv_reference_attention(&m, 0.0, bo) == EKV_SUCCESS, "%s", ekv_last_error());
    CHECK(ekv_compare_f64(a, bo, n).max_abs == 0.0, "GQA and repeated MHA differ by %g",
          ekv_compare_f64(a, bo, n).max_abs);
    /* observed scores: the group's score is the sum of its heads' */
    CHECK(ekv_observed_scores(&g, 0.0, sg) == EKV_SUCCESS, "%s", ekv_last_error());
    CHECK(ekv_observed_scores(&m, 0.0, sm) == EKV_SUCCESS, "%s", ekv_last_error());
    for (b = 0; b < 2; b++)
        for (h = 0; h < 2; h++) {
            double total = 0.0;
            for (t = 0; t < 300; t++) {
                double sum = 0.0;
                int j;
                for (j = 0; j < 4; j++) sum += sm[((size_t)b * 8 + 4 * h + j) * 300 + t];
                CHECK_CLOSE(sg[((size_t)b * 2 + h) * 300 + t], sum, 1e-12, 1e-15, "group score");
                total += sg[((size_t)b * 2 + h) * 300 + t];
            }
            CHECK_CLOSE(total, 4.0 * 3.0, 1e-12, 0.0, "scores sum to heads x observe");
        }
    TEST_END();
    free(a);
    free(bo);
    free(sg);
    free(sm);
    ekv_data_free(&g);
    ekv_data_free(&m);
}

static void test_ragged(void)
{
    static const int lengths[3] = {5, 64, 23};
    static const ekv_policy policies[] = {EKV_POLICY_NONE, EKV_POLICY_STRIDE, EKV_POLICY_POOL,
                                          EKV_POLICY_WINDOW, EKV_POLICY_TOPK};
    ekv_data d = make_data(EKV_DATA_STRUCTURED, 3, 4, 2, 64, 64, 4, lengths);
    size_t n = out_count(&d), i;
    double *ref = alloc_poisoned_f64(n), *one = alloc_poisoned_f64(4 * 64);
    float *outf = alloc_poisoned_f32(n);
    int b, h, t, p;
    TEST_BEGIN("ragged lengths: tokens past the length (NaN) are never read");
    for (b = 0; b < 3; b++)
        for (h = 0; h < 2; h++)
            for (t = lengths[b]; t < 64; t++)
                for (i = 0; i < 64; i++) {
                    d.k[ekv_data_kv_index(&d, b, h, t) + i] = NAN;
                    d.v[ekv_data_kv_index(&d, b, h, t) + i] = NAN;
                }
    CHECK(ekv_reference_attention(&d, 0.0, ref) == EKV_SUCCESS, "%s", ekv_last_error());
    for (i = 0; i < n; i++) CHECK(ref[i] == ref[i], "NaN leaked into the reference at %zu", i);
    /* each sequence alone, with capacity = its length, gives the same output */
    for (b = 0; b < 3; b++) {
        ekv_data s = make_data(EKV_DATA_RANDOM, 1, 4, 2, 64, lengths[b], 0, NULL);
        for (h = 0; h < 2; h++) {
            memcpy(s.k + ekv_data_kv_index(&s, 0, h, 0), d.k + ekv_data_kv_index(&d, b, h, 0),
                   (size_t)lengths[b] * 64 * sizeof(float));
            memcpy(s.v + ekv_data_kv_index(&s, 0, h, 0), d.v + ekv_data_kv_index(&d, b, h, 0),
                   (size_t)lengths[b] * 64 * sizeof(float));
        }
        memcpy(s.q, d.q + (size_t)b * 4 * 64, 4 * 64 * sizeof(float));
        CHECK(ekv_reference_attention(&s, 0.0, one) == EKV_SUCCESS, "%s", ekv_last_error());
        CHECK(ekv_compare_f64(ref + (size_t)b * 4 * 64, one, 4 * 64).max_abs == 0.0,
              "sequence %d alone differs", b);
        ekv_data_free(&s);
    }
    for (p = 0; p < 5; p++) {
        ekv_compress_desc c = compress_desc(policies[p], p == 0 ? 1 : 3, 4, 2);
        ekv_host_cache cache;
        CHECK(ekv_cache_build(&d, &c, EKV_DTYPE_INT8, 0.0, &cache) == EKV_SUCCESS, "%s",
              ekv_last_error());
        for (b = 0; b < 3; b++)
            CHECK(cache.lengths[b] == ekv_policy_kept(&c, lengths[b]), "kept of sequence %d", b);
        CHECK(ekv_cpu_attention(&cache, d.q, d.heads, 0.0f, outf) == EKV_SUCCESS, "%s",
              ekv_last_error());
        for (i = 0; i < n; i++)
            if (outf[i] != outf[i]) {
                CHECK(0, "NaN in the %s cache output", ekv_policy_name(policies[p]));
                break;
            }
        ekv_cache_free(&cache);
    }
    TEST_END();
    free(ref);
    free(one);
    free(outf);
    ekv_data_free(&d);
}

static void test_cache_against_reference(void)
{
    static const ekv_policy policies[] = {EKV_POLICY_NONE, EKV_POLICY_STRIDE, EKV_POLICY_POOL,
                                          EKV_POLICY_WINDOW, EKV_POLICY_TOPK};
    static const int lengths[2] = {1000, 777};
    ekv_data d = make_data(EKV_DATA_STRUCTURED, 2, 8, 2, 128, 1000, 4, lengths);
    size_t n = out_count(&d);
    double *ref = alloc_poisoned_f64(n), *cached = alloc_poisoned_f64(n);
    float *outf = alloc_poisoned_f32(n);
    ekv_host_cache cache;
    ekv_compress_desc c = compress_desc(EKV_POLICY_NONE, 1, 0, 0);
    int dt, p;

    TEST_BEGIN("reference_cache over an uncompressed f32 cache equals the full reference");
    CHECK(ekv_reference_attention(&d, 0.0, ref) == EKV_SUCCESS, "%s", ekv_last_error());
    CHECK(ekv_cache_build(&d, &c, EKV_DTYPE_F32, 0.0, &cache) == EKV_SUCCESS, "%s", ekv_last_error());
    CHECK(cache.bias == NULL, "no bias without pool");
    CHECK(ekv_reference_attention_cache(&cache, d.q, d.heads, 0.0, cached) == EKV_SUCCESS, "%s",
          ekv_last_error());
    CHECK(ekv_compare_f64(ref, cached, n).rel_l2 <= 1e-12, "rel_l2 %g",
          ekv_compare_f64(ref, cached, n).rel_l2);
    ekv_cache_free(&cache);
    TEST_END();

    TEST_BEGIN("ekv_cpu_attention matches reference_cache within 1e-5 for every dtype and policy");
    for (dt = 0; dt < EKV_DTYPE_COUNT; dt++)
        for (p = 0; p < 5; p++) {
            ekv_error_stats e;
            size_t i;
            c = compress_desc(policies[p], p == 0 ? 1 : 2 + dt % 3, dt % 2 ? 16 : 0, 4);
            CHECK(ekv_cache_build(&d, &c, (ekv_dtype)dt, 0.0, &cache) == EKV_SUCCESS, "%s",
                  ekv_last_error());
            for (i = 0; i < n; i++) {
                cached[i] = NAN;
                outf[i] = NAN;
            }
            CHECK(ekv_reference_attention_cache(&cache, d.q, d.heads, 0.0, cached) == EKV_SUCCESS,
                  "%s", ekv_last_error());
            CHECK(ekv_cpu_attention(&cache, d.q, d.heads, 0.0f, outf) == EKV_SUCCESS, "%s",
                  ekv_last_error());
            e = ekv_compare_f32(cached, outf, n);
            CHECK(e.rel_l2 <= 1e-5, "%s/%s: cpu vs reference_cache rel_l2 %g",
                  ekv_dtype_name((ekv_dtype)dt), ekv_policy_name(policies[p]), e.rel_l2);
            if (p == 0) {
                /* storage error alone, sanity: f32 exact, lossy dtypes small but real */
                double err = ekv_compare_f64(ref, cached, n).rel_l2;
                double limit = dt == EKV_DTYPE_F32 ? 1e-12 : dt == EKV_DTYPE_INT4 ? 0.2 : 0.05;
                CHECK(err <= limit, "%s storage error %g > %g", ekv_dtype_name((ekv_dtype)dt), err,
                      limit);
                if (dt != EKV_DTYPE_F32) CHECK(err > 0.0, "lossy dtype %d exact?", dt);
            }
            ekv_cache_free(&cache);
        }
    TEST_END();
    free(ref);
    free(cached);
    free(outf);
    ekv_data_free(&d);
}

static void test_cache_contents(void)
{
    static const int lengths[2] = {50, 41};
    ekv_data d = make_data(EKV_DATA_RANDOM, 2, 4, 2, 64, 50, 2, lengths);
    ekv_compress_desc c = compress_desc(EKV_POLICY_POOL, 4, 3, 0);
    ekv_host_cache cache;
    ekv_slot_source slots[64];
    float row[64];
    int b, h, s, i, t, which;
    TEST_BEGIN("pool: pooled means (double, then float), bias = ln(count), rows as stored");
    CHECK(ekv_cache_build(&d, &c, EKV_DTYPE_F32, 0.0, &cache) == EKV_SUCCESS, "%s", ekv_last_error());
    CHECK(cache.bias != NULL, "pool has a bias");
    CHECK(cache.capacity == ekv_policy_kept(&c, 50), "capacity = largest kept count");
    for (b = 0; b < 2 && cache.bias; b++)
        for (h = 0; h < 2; h++) {
            int kept = ekv_policy_map(&c, lengths[b], NULL, slots);
            CHECK(kept == cache.lengths[b], "length");
            for (s = 0; s < kept; s++) {
                size_t r = ((size_t)b * 2 + h) * cache.capacity + s;
                CHECK(cache.bias[r] == (float)log((double)slots[s].count), "bias of slot %d", s);
                for (which = 0; which < 2; which++) {
                    const float *src = (which ? d.v : d.k) + ekv_data_kv_index(&d, b, h, 0);
                    for (i = 0; i < 64; i++) row[i] = NAN;
                    ekv_cache_row(&cache, which, b, h, s, row);
                    for (i = 0; i < 64; i++) {
                        double sum = 0.0;
                        for (t = slots[s].first; t < slots[s].first + slots[s].count; t++)
                            sum += src[(size_t)t * 64 + i];
                        if (row[i] != (float)(sum / slots[s].count)) {
                            CHECK(0, "pooled mean b%d h%d slot %d elem %d", b, h, s, i);
                            break;
                        }
                    }
                }
            }
        }
    ekv_cache_free(&cache);
    TEST_END();

    TEST_BEGIN("fp8 cache: head scale = amax/448 over the stored rows; rows dequantize as quantized");
    c = compress_desc(EKV_POLICY_STRIDE, 2, 0, 0);
    CHECK(ekv_cache_build(&d, &c, EKV_DTYPE_FP8, 0.0, &cache) == EKV_SUCCESS, "%s", ekv_last_error());
    for (b = 0; b < 2; b++)
        for (h = 0; h < 2; h++)
            for (which = 0; which < 2; which++) {
                const float *src = (which ? d.v : d.k) + ekv_data_kv_index(&d, b, h, 0);
                int kept = ekv_policy_map(&c, lengths[b], NULL, slots);
                float amax = 0.0f, scale, stored;
                for (s = 0; s < kept; s++)
                    for (i = 0; i < 64; i++) {
                        float a = fabsf(src[(size_t)slots[s].first * 64 + i]);
                        amax = a > amax ? a : amax;
                    }
                scale = amax / 448.0f;
                memcpy(&stored, (which ? cache.v_scales : cache.k_scales) + ((size_t)b * 2 + h) * 4, 4);
                CHECK(stored == scale, "fp8 scale %g want %g", stored, scale);
                for (s = 0; s < kept; s++) {
                    ekv_cache_row(&cache, which, b, h, s, row);
                    for (i = 0; i < 64; i++)
                        if (row[i] != ekv_fp8_to_f32(ekv_f32_to_fp8(src[(size_t)slots[s].first * 64 + i] /
                                                                    scale)) * scale) {
                            CHECK(0, "fp8 row b%d h%d slot %d", b, h, s);
                            break;
                        }
                }
            }
    ekv_cache_free(&cache);
    TEST_END();
    ekv_data_free(&d);
}

static void test_cache_bytes(void)
{
    static const int lengths[2] = {3, 5};
    ekv_cache_bytes bytes;
    const double rows = 2.0 * (3 + 5); /* kv_heads 2 */
    TEST_BEGIN("cache bytes: values, scales (int8 4/row, int4 4/group/row, fp8 4/head), bias");
    bytes = ekv_cache_bytes_of(EKV_DTYPE_F32, 2, 2, 64, lengths, 0);
    CHECK(bytes.k == rows * 256 && bytes.v == rows * 256 && bytes.scales == 0 && bytes.bias == 0 &&
              bytes.total == 2 * rows * 256, "f32");
    bytes = ekv_cache_bytes_of(EKV_DTYPE_F16, 2, 2, 64, lengths, 1);
    CHECK(bytes.k == rows * 128 && bytes.bias == rows * 4 && bytes.total == 2 * rows * 128 + rows * 4,
          "f16 with bias");
    bytes = ekv_cache_bytes_of(EKV_DTYPE_BF16, 2, 2, 64, lengths, 0);
    CHECK(bytes.k == rows * 128 && bytes.scales == 0, "bf16");
    bytes = ekv_cache_bytes_of(EKV_DTYPE_INT8, 2, 2, 64, lengths, 0);
    CHECK(bytes.k == rows * 64 && bytes.scales == 2 * rows * 4 && bytes.total == 2 * rows * 64 + 2 * rows * 4,
          "int8");
    bytes = ekv_cache_bytes_of(EKV_DTYPE_INT4, 2, 2, 64, lengths, 0);
    CHECK(bytes.k == rows * 32 && bytes.scales == 2 * rows * 2 * 4, "int4 (2 groups of 32)");
    bytes = ekv_cache_bytes_of(EKV_DTYPE_FP8, 2, 2, 64, lengths, 0);
    CHECK(bytes.k == rows * 64 && bytes.scales == 2 * 4 * 2 * 2 && bytes.total == 2 * rows * 64 + 32,
          "fp8: one f32 scale per (sequence, kv head) for each of K and V");
    TEST_END();
}

static void test_structured_profile(void)
{
    static const int configs[][4] = {{256, 4, 4, 64}, {2048, 8, 2, 128}, {8192, 4, 1, 256}};
    static const ekv_policy policies[] = {EKV_POLICY_STRIDE, EKV_POLICY_POOL, EKV_POLICY_WINDOW,
                                          EKV_POLICY_TOPK};
    double mass_sum = 0.0;
    int i, p;
    TEST_BEGIN("structured data: top-5% mass >= 0.5 on average, no policy exact at C=2");
    for (i = 0; i < 3; i++) {
        ekv_data d = make_data(EKV_DATA_STRUCTURED, 1, configs[i][1], configs[i][2], configs[i][3],
                               configs[i][0], 16, NULL);
        size_t n = out_count(&d);
        double entropy = NAN, mass = NAN, *ref = alloc_poisoned_f64(n), *approx = alloc_poisoned_f64(n);
        CHECK(ekv_attention_profile(&d, 0.0, &entropy, &mass) == EKV_SUCCESS, "%s", ekv_last_error());
        printf("  S=%d H=%d Hkv=%d D=%d: entropy %.3f nats, top5pct_mass %.3f, C=2 rel_l2",
               configs[i][0], configs[i][1], configs[i][2], configs[i][3], entropy, mass);
        mass_sum += mass;
        CHECK(entropy > 0.5 && entropy < log((double)configs[i][0]), "entropy %g", entropy);
        ekv_reference_attention(&d, 0.0, ref);
        for (p = 0; p < 4; p++) {
            ekv_compress_desc c = compress_desc(policies[p], 2, 0, 4);
            ekv_host_cache cache;
            double err;
            ekv_cache_build(&d, &c, EKV_DTYPE_F32, 0.0, &cache);
            ekv_reference_attention_cache(&cache, d.q, d.heads, 0.0, approx);
            err = ekv_compare_f64(ref, approx, n).rel_l2;
            printf(" %s %.4f", ekv_policy_name(policies[p]), err);
            CHECK(err > 1e-3, "policy %s is (nearly) exact on structured data: %g",
                  ekv_policy_name(policies[p]), err);
            ekv_cache_free(&cache);
        }
        printf("\n");
        free(ref);
        free(approx);
        ekv_data_free(&d);
    }
    CHECK(mass_sum / 3 >= 0.5, "mean top5pct_mass %g", mass_sum / 3);
    TEST_END();

    TEST_BEGIN("generation is deterministic for a seed; random data is N(0,1)");
    {
        ekv_data_desc desc;
        ekv_data a, b2, c;
        double sum = 0.0, sum2 = 0.0;
        size_t count, k;
        memset(&desc, 0, sizeof desc);
        desc.kind = EKV_DATA_STRUCTURED;
        desc.batch = 2;
        desc.heads = 4;
        desc.kv_heads = 2;
        desc.head_dim = 64;
        desc.seq_len = 200;
        desc.observe = 3;
        desc.seed = run_seed;
        CHECK(ekv_data_generate(&desc, &a) == EKV_SUCCESS, "%s", ekv_last_error());
        CHECK(ekv_data_generate(&desc, &b2) == EKV_SUCCESS, "%s", ekv_last_error());
        desc.seed = run_seed + 1;
        CHECK(ekv_data_generate(&desc, &c) == EKV_SUCCESS, "%s", ekv_last_error());
        count = ekv_data_kv_index(&a, 2, 0, 0);
        CHECK(memcmp(a.k, b2.k, count * sizeof(float)) == 0 && memcmp(a.q, b2.q, 2 * 4 * 64 * 4) == 0 &&
                  memcmp(a.q_observe, b2.q_observe, 3 * 2 * 4 * 64 * 4) == 0,
              "same seed, different data");
        CHECK(memcmp(a.k, c.k, count * sizeof(float)) != 0, "different seeds, same data");
        ekv_data_free(&a);
        ekv_data_free(&b2);
        ekv_data_free(&c);
        desc.kind = EKV_DATA_RANDOM;
        desc.seq_len = 4000;
        CHECK(ekv_data_generate(&desc, &a) == EKV_SUCCESS, "%s", ekv_last_error());
        count = ekv_data_kv_index(&a, 2, 0, 0);
        for (k = 0; k < count; k++) {
            sum += a.v[k];
            sum2 += (double)a.v[k] * a.v[k];
        }
        CHECK(fabs(sum / count) < 0.01 && fabs(sum2 / count - 1.0) < 0.01, "mean %g var %g",
              sum / count, sum2 / count);
        CHECK(a.q_observe != NULL && a.lengths[0] == 4000 && a.lengths[1] == 4000, "observe/lengths");
        ekv_data_free(&a);
    }
    TEST_END();
}

static void test_compare(void)
{
    double ref[4] = {3, 0, 4, 0}, x64[4] = {3, 0, 4, 0}, zero[4] = {0, 0, 0, 0};
    float x32[4] = {3, 0, 4, 1};
    ekv_error_stats e;
    TEST_BEGIN("error metrics: rel_l2, max_abs, cosine, zero reference, NaN");
    e = ekv_compare_f64(ref, x64, 4);
    CHECK(e.rel_l2 == 0.0 && e.max_abs == 0.0 && fabs(e.cosine - 1.0) < 1e-15, "identical");
    e = ekv_compare_f32(ref, x32, 4);
    CHECK_CLOSE(e.rel_l2, 1.0 / 5.0, 1e-15, 0.0, "rel_l2 = 1/5");
    CHECK_CLOSE(e.max_abs, 1.0, 0.0, 0.0, "max_abs");
    CHECK_CLOSE(e.cosine, 25.0 / (5.0 * sqrt(26.0)), 1e-15, 0.0, "cosine");
    e = ekv_compare_f64(zero, ref, 4);
    CHECK_CLOSE(e.rel_l2, 5.0, 1e-15, 0.0, "zero reference: absolute norm");
    x64[2] = NAN;
    e = ekv_compare_f64(ref, x64, 4);
    CHECK(e.max_abs != e.max_abs && e.rel_l2 != e.rel_l2, "NaN must show");
    TEST_END();
}

static void test_error_paths(void)
{
    ekv_data_desc desc;
    ekv_data d;
    int bad_lengths[2] = {10, 11};
    memset(&desc, 0, sizeof desc);
    desc.kind = EKV_DATA_STRUCTURED;
    desc.batch = 2;
    desc.heads = 6;
    desc.kv_heads = 4;
    desc.head_dim = 64;
    desc.seq_len = 10;
    TEST_BEGIN("error paths name the problem");
    CHECK(ekv_data_generate(&desc, &d) == EKV_ERR_INVALID_ARG && strstr(ekv_last_error(), "kv_heads"),
          "kv_heads not dividing heads: %s", ekv_last_error());
    desc.kv_heads = 2;
    desc.batch = 0;
    CHECK(ekv_data_generate(&desc, &d) == EKV_ERR_INVALID_ARG && strstr(ekv_last_error(), "batch"),
          "batch 0: %s", ekv_last_error());
    desc.batch = 2;
    desc.seq_len = 0;
    CHECK(ekv_data_generate(&desc, &d) == EKV_ERR_INVALID_ARG && strstr(ekv_last_error(), "seq_len"),
          "seq_len 0: %s", ekv_last_error());
    desc.seq_len = 10;
    desc.head_dim = -1;
    CHECK(ekv_data_generate(&desc, &d) == EKV_ERR_INVALID_ARG && strstr(ekv_last_error(), "head_dim"),
          "head_dim: %s", ekv_last_error());
    desc.head_dim = 64;
    desc.lengths = bad_lengths;
    CHECK(ekv_data_generate(&desc, &d) == EKV_ERR_INVALID_ARG && strstr(ekv_last_error(), "lengths[1]"),
          "lengths: %s", ekv_last_error());
    desc.lengths = NULL;
    desc.kind = EKV_DATA_FILE;
    CHECK(ekv_data_generate(&desc, &d) == EKV_ERR_INVALID_ARG, "kind file");
    desc.kind = EKV_DATA_RANDOM;
    desc.observe = 0;
    CHECK(ekv_data_generate(&desc, &d) == EKV_SUCCESS, "%s", ekv_last_error());
    {
        ekv_host_cache cache;
        ekv_compress_desc c = compress_desc(EKV_POLICY_TOPK, 2, 0, 0);
        float q[6 * 64], out[6 * 64];
        CHECK(ekv_cache_build(&d, &c, EKV_DTYPE_F16, 0.0, &cache) == EKV_ERR_INVALID_ARG &&
                  strstr(ekv_last_error(), "observe"), "topk without observed queries: %s",
              ekv_last_error());
        c = compress_desc(EKV_POLICY_NONE, 2, 0, 0);
        CHECK(ekv_cache_build(&d, &c, EKV_DTYPE_F16, 0.0, &cache) == EKV_ERR_INVALID_ARG &&
                  strstr(ekv_last_error(), "compression"), "none with C=2: %s", ekv_last_error());
        c.compression = 1;
        CHECK(ekv_cache_build(&d, &c, (ekv_dtype)99, 0.0, &cache) == EKV_ERR_INVALID_ARG, "dtype");
        CHECK(ekv_cache_build(&d, &c, EKV_DTYPE_INT4, 0.0, &cache) == EKV_SUCCESS, "%s", ekv_last_error());
        memset(q, 0, sizeof q);
        CHECK(ekv_cpu_attention(&cache, q, 5, 0.0f, out) == EKV_ERR_INVALID_ARG &&
                  strstr(ekv_last_error(), "kv_heads"), "heads 5 vs kv_heads 2: %s", ekv_last_error());
        CHECK(ekv_cpu_attention(&cache, NULL, 6, 0.0f, out) == EKV_ERR_INVALID_ARG, "NULL q");
        CHECK(ekv_reference_attention_cache(&cache, q, 4, NAN, (double *)NULL) == EKV_ERR_INVALID_ARG,
              "NULL out");
        CHECK(ekv_reference_attention(&d, NAN, (double *)q) == EKV_ERR_INVALID_ARG &&
                  strstr(ekv_last_error(), "softmax_scale"), "NaN scale: %s", ekv_last_error());
        CHECK(ekv_observed_scores(&d, 0.0, (double *)q) == EKV_ERR_INVALID_ARG, "no observe");
        ekv_cache_free(&cache);
    }
    ekv_data_free(&d);
    CHECK(ekv_data_generate(NULL, &d) == EKV_ERR_INVALID_ARG, "NULL desc");
    TEST_END();
}

int main(int argc, char **argv)
{
    int i;
    run_seed = (uint64_t)time(NULL) ^ ((uint64_t)clock() << 32);
    for (i = 1; i < argc; i++)
        if (strncmp(argv[i], "--seed=", 7) == 0) run_seed = strtoull(argv[i] + 7, NULL, 10);
    printf("test_reference: seed %llu (rerun with --seed=%llu)\n", (unsigned long long)run_seed,
           (unsigned long long)run_seed);
    ekv_rng_seed(&test_rng, run_seed);
    test_f16();
    test_bf16();
    test_fp8();
    test_quantization();
    test_policy_hand_cases();
    test_policy_invariants();
    test_reference_analytic();
    test_gqa_equals_repeated_mha();
    test_ragged();
    test_cache_against_reference();
    test_cache_contents();
    test_cache_bytes();
    test_structured_profile();
    test_compare();
    test_error_paths();
    return ekv_test_finish();
}
