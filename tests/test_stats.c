/* test_stats.c - shows that ekv's statistics agree with numpy/scipy (every ekv_stats
   field, Student t quantiles for df 1..1000 and the t CDF, against
   tests/stats_reference.h), that the bootstrap intervals are deterministic and sensible,
   that the random stream is the documented one with the right moments, and that bad
   input is rejected with EKV_ERR_INVALID_ARG.

   Build and run from the repository root:
       cc -std=c99 -O2 -Wall -Wextra -I. -o test_stats tests/test_stats.c tests/ekv_impl.c -lm && ./test_stats
*/
#include "ekv.h"

#include "ekv_test.h"
#include "stats_reference.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define PI 3.14159265358979323846

static int compare_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Plain statistics: 1e-12 relative, plus an absolute floor for values near zero (a
   quantile of data around 0) scaled by the data's magnitude. */
#define PLAIN_REL 1e-12

static double max_abs(const double *x, size_t n)
{
    double m = 0.0;
    size_t i;
    for (i = 0; i < n; i++) m = fabs(x[i]) > m ? fabs(x[i]) : m;
    return m;
}

static void test_reference_sets(void)
{
    size_t k;
    for (k = 0; k < EKV_REF_STATS_COUNT; k++) {
        const ekv_ref_stats *ref = &ekv_ref_stats_sets[k];
        double floor_abs = 1e-14 * max_abs(ref->samples, ref->n);
        double *sorted;
        ekv_stats s;
        char name[96];
        int t;
        snprintf(name, sizeof name, "stats match numpy/scipy: %s", ref->name);
        TEST_BEGIN(name);
        CHECK(ekv_stats_compute(ref->samples, ref->n, 10.0, EKV_REF_STATS_SEED, &s) ==
                  EKV_SUCCESS,
              "%s", ekv_last_error());
        CHECK(s.n == ref->n, "n %zu", s.n);
        CHECK_CLOSE(s.mean, ref->mean, PLAIN_REL, floor_abs, "mean");
        CHECK_CLOSE(s.std, ref->std, PLAIN_REL, floor_abs, "std");
        CHECK_CLOSE(s.cv, ref->cv, PLAIN_REL, 1e-14, "cv");
        CHECK_CLOSE(s.median, ref->median, PLAIN_REL, floor_abs, "median");
        CHECK(s.min == ref->min && s.max == ref->max, "min %g max %g", s.min, s.max);
        CHECK_CLOSE(s.q1, ref->q1, PLAIN_REL, floor_abs, "q1");
        CHECK_CLOSE(s.q3, ref->q3, PLAIN_REL, floor_abs, "q3");
        CHECK_CLOSE(s.iqr, ref->iqr, PLAIN_REL, floor_abs, "iqr");
        CHECK_CLOSE(s.p5, ref->p5, PLAIN_REL, floor_abs, "p5");
        CHECK_CLOSE(s.p95, ref->p95, PLAIN_REL, floor_abs, "p95");
        CHECK_CLOSE(s.p99, ref->p99, PLAIN_REL, floor_abs, "p99");
        CHECK(s.outliers_mild == ref->outliers_mild, "mild %d want %d", s.outliers_mild,
              ref->outliers_mild);
        CHECK(s.outliers_severe == ref->outliers_severe, "severe %d want %d",
              s.outliers_severe, ref->outliers_severe);
        CHECK_CLOSE(s.ci95_mean_lo, ref->ci95_mean_lo, PLAIN_REL, floor_abs, "ci95_mean_lo");
        CHECK_CLOSE(s.ci95_mean_hi, ref->ci95_mean_hi, PLAIN_REL, floor_abs, "ci95_mean_hi");
        /* the bootstrap replays the same stream as the Python mirror */
        CHECK_CLOSE(s.ci95_median_lo, ref->ci95_median_lo, PLAIN_REL, floor_abs,
                    "ci95_median_lo");
        CHECK_CLOSE(s.ci95_median_hi, ref->ci95_median_hi, PLAIN_REL, floor_abs,
                    "ci95_median_hi");
        CHECK(s.ci95_median_lo <= s.median && s.median <= s.ci95_median_hi,
              "median CI [%g, %g] misses %g", s.ci95_median_lo, s.ci95_median_hi, s.median);
        for (t = 0; t < EKV_REF_TRIM_COUNT; t++) {
            ekv_stats trimmed;
            double percent = ekv_ref_trim_percents[t];
            CHECK(ekv_stats_compute(ref->samples, ref->n, percent, 1, &trimmed) == EKV_SUCCESS,
                  "%s", ekv_last_error());
            CHECK_CLOSE(trimmed.trimmed_mean, ref->trimmed_mean[t], PLAIN_REL, floor_abs,
                        "trimmed_mean (stats)");
            CHECK_CLOSE(ekv_trimmed_mean(ref->samples, ref->n, percent / 100.0),
                        ref->trimmed_mean[t], PLAIN_REL, floor_abs, "ekv_trimmed_mean");
        }
        CHECK_CLOSE(ekv_median(ref->samples, ref->n), ref->median, PLAIN_REL, floor_abs,
                    "ekv_median");
        sorted = (double *)malloc(ref->n * sizeof *sorted);
        memcpy(sorted, ref->samples, ref->n * sizeof *sorted);
        qsort(sorted, ref->n, sizeof *sorted, compare_double);
        CHECK_CLOSE(ekv_quantile_sorted(sorted, ref->n, 0.95), ref->p95, PLAIN_REL, floor_abs,
                    "ekv_quantile_sorted");
        CHECK(ekv_quantile_sorted(sorted, ref->n, 0.0) == ref->min &&
                  ekv_quantile_sorted(sorted, ref->n, 1.0) == ref->max,
              "quantiles 0 and 1 are min and max");
        free(sorted);
        TEST_END();
    }
}

static void test_single_sample(void)
{
    double x = 3.25;
    ekv_stats s;
    TEST_BEGIN("n = 1: defined fields, NaN where ddof=1 is undefined");
    CHECK(ekv_stats_compute(&x, 1, 10.0, 7, &s) == EKV_SUCCESS, "%s", ekv_last_error());
    CHECK(s.n == 1 && s.mean == x && s.median == x && s.min == x && s.max == x, "basics");
    CHECK(s.q1 == x && s.q3 == x && s.p5 == x && s.p99 == x && s.iqr == 0.0, "quantiles");
    CHECK(s.trimmed_mean == x, "trimmed mean %g", s.trimmed_mean);
    CHECK(s.std != s.std && s.cv != s.cv, "std %g cv %g should be NaN", s.std, s.cv);
    CHECK(s.ci95_mean_lo != s.ci95_mean_lo && s.ci95_mean_hi != s.ci95_mean_hi,
          "mean CI should be NaN");
    CHECK(s.ci95_median_lo == x && s.ci95_median_hi == x, "median CI [%g, %g]",
          s.ci95_median_lo, s.ci95_median_hi);
    CHECK(s.outliers_mild == 0 && s.outliers_severe == 0, "no outliers");
    TEST_END();
}

/* Relative error of the smaller tail, so that p near 1 keeps its digits; where that
   tail is 0 (it underflowed, or rounded away against 1) only an exact match passes. */
static double relative_tail_error(double got, double p)
{
    double got_tail = p > 0.5 ? 1.0 - got : got, tail = p > 0.5 ? 1.0 - p : p;
    if (tail == 0.0) return got_tail == 0.0 ? 0.0 : INFINITY;
    return fabs(got_tail - tail) / tail;
}

static void test_t_quantiles(void)
{
    int i, df, worst_df = 0;
    double worst = 0.0, worst_round_trip = 0.0, worst_p = 0.0;
    TEST_BEGIN("t inverse CDF matches scipy t.ppf, df 1..1000 (1e-6 required, 1e-10 aimed)");
    for (i = 0; i < EKV_REF_PPF_P_COUNT; i++) {
        double p = ekv_ref_t_ppf_p[i];
        for (df = 1; df <= EKV_REF_PPF_DF_MAX; df++) {
            double want = ekv_ref_t_ppf[i][df - 1];
            double got = ekv_t_inverse_cdf(p, (double)df);
            double error = fabs(got - want) / fabs(want);
            double round_trip = relative_tail_error(ekv_t_cdf(got, (double)df), p);
            if (error > worst) {
                worst = error;
                worst_df = df;
                worst_p = p;
            }
            if (round_trip > worst_round_trip) worst_round_trip = round_trip;
            CHECK(error <= 1e-6, "p %g df %d: got %.17g want %.17g", p, df, got, want);
        }
    }
    CHECK(worst <= 1e-10, "worst relative error %g at p %g df %d", worst, worst_p, worst_df);
    CHECK(worst_round_trip <= 1e-12, "cdf(inverse(p)) vs p: worst relative error %g",
          worst_round_trip);
    printf("  t quantiles: worst relative error vs scipy %.2g (p %g, df %d), round trip %.2g\n",
           worst, worst_p, worst_df, worst_round_trip);
    TEST_END();
}

static void test_t_closed_forms(void)
{
    static const double ps[] = {1e-300, 1e-12, 1e-6, 0.001, 0.025, 0.1, 0.3,
                                0.49,   0.51,  0.6,  0.75,  0.9,   0.975, 0.999999};
    size_t i;
    TEST_BEGIN("t inverse CDF equals the closed forms of df 1 and 2, tails included");
    for (i = 0; i < sizeof ps / sizeof ps[0]; i++) {
        double p = ps[i];
        /* df 1 (Cauchy): t = -+cot(pi q), q = min(p, 1 - p) (exact, unlike pi p near
           pi); df 2: t = (2p - 1) / sqrt(2 p (1 - p)) */
        double q = p < 0.5 ? p : 1.0 - p;
        double cauchy = (p < 0.5 ? -1.0 : 1.0) / tan(PI * q);
        double two = (2.0 * p - 1.0) / sqrt(2.0 * p * (1.0 - p));
        double got1 = ekv_t_inverse_cdf(p, 1.0), got2 = ekv_t_inverse_cdf(p, 2.0);
        CHECK_CLOSE(got1, cauchy, 1e-12, 0.0, "df 1");
        CHECK_CLOSE(got2, two, 1e-12, 0.0, "df 2");
        CHECK(relative_tail_error(ekv_t_cdf(got1, 1.0), p) <= 1e-12, "df 1 round trip at %g", p);
        CHECK(relative_tail_error(ekv_t_cdf(got2, 2.0), p) <= 1e-12, "df 2 round trip at %g", p);
    }
    /* symmetry, and the normal limit for very large df */
    CHECK(ekv_t_inverse_cdf(0.025, 7.0) == -ekv_t_inverse_cdf(0.975, 7.0), "symmetry");
    CHECK_CLOSE(ekv_t_inverse_cdf(0.975, INFINITY), 1.959963984540054, 1e-14, 0.0, "df inf");
    CHECK_CLOSE(ekv_t_inverse_cdf(0.975, 1e9), 1.959963984540054, 1e-8, 0.0, "df 1e9");
    TEST_END();
}

static void test_t_cdf(void)
{
    int i, j;
    TEST_BEGIN("t CDF matches scipy t.cdf (1e-12 on the smaller tail)");
    for (i = 0; i < EKV_REF_CDF_DF_COUNT; i++)
        for (j = 0; j < EKV_REF_CDF_T_COUNT; j++) {
            double df = ekv_ref_t_cdf_df[i], t = ekv_ref_t_cdf_t[j];
            double want = ekv_ref_t_cdf[i][j], got = ekv_t_cdf(t, df);
            CHECK(relative_tail_error(got, want) <= 1e-12, "df %g t %g: got %.17g want %.17g",
                  df, t, got, want);
        }
    CHECK(ekv_t_cdf(-INFINITY, 3.0) == 0.0 && ekv_t_cdf(INFINITY, 3.0) == 1.0, "infinities");
    CHECK(ekv_t_cdf(0.0, 5.0) == 0.5, "centre");
    TEST_END();
}

static void test_t_edges(void)
{
    TEST_BEGIN("t edge cases: p 0, 1/2, 1; invalid p or df give NaN");
    CHECK(ekv_t_inverse_cdf(0.0, 4.0) == -INFINITY, "p 0");
    CHECK(ekv_t_inverse_cdf(1.0, 4.0) == INFINITY, "p 1");
    CHECK(ekv_t_inverse_cdf(0.5, 4.0) == 0.0, "p 1/2");
    CHECK(ekv_t_inverse_cdf(-0.1, 4.0) != ekv_t_inverse_cdf(-0.1, 4.0), "p < 0");
    CHECK(ekv_t_inverse_cdf(1.5, 4.0) != ekv_t_inverse_cdf(1.5, 4.0), "p > 1");
    CHECK(ekv_t_inverse_cdf(NAN, 4.0) != ekv_t_inverse_cdf(NAN, 4.0), "p NaN");
    CHECK(ekv_t_inverse_cdf(0.9, 0.0) != ekv_t_inverse_cdf(0.9, 0.0), "df 0");
    CHECK(ekv_t_inverse_cdf(0.9, NAN) != ekv_t_inverse_cdf(0.9, NAN), "df NaN");
    CHECK(ekv_t_cdf(NAN, 4.0) != ekv_t_cdf(NAN, 4.0), "t NaN");
    CHECK(ekv_t_cdf(1.0, -1.0) != ekv_t_cdf(1.0, -1.0), "df < 0");
    /* a root beyond the largest double (df 1/2, p 1e-300) is an infinity, not garbage */
    CHECK(ekv_t_inverse_cdf(1e-300, 0.5) == -INFINITY, "overflowing quantile");
    TEST_END();
}

static void test_bootstrap_median(void)
{
    enum { N = 10001 };
    static double x[N];
    ekv_rng rng;
    ekv_stats a, b, c;
    double se, width, asymptotic_width;
    int i;
    ekv_rng_seed(&rng, 2024);
    for (i = 0; i < N; i++) x[i] = ekv_rng_normal(&rng);
    TEST_BEGIN("bootstrap median CI: deterministic per seed, close to the asymptotic CI");
    CHECK(ekv_stats_compute(x, N, 10.0, 99, &a) == EKV_SUCCESS, "%s", ekv_last_error());
    CHECK(ekv_stats_compute(x, N, 10.0, 99, &b) == EKV_SUCCESS, "%s", ekv_last_error());
    CHECK(ekv_stats_compute(x, N, 10.0, 100, &c) == EKV_SUCCESS, "%s", ekv_last_error());
    CHECK(memcmp(&a, &b, sizeof a) == 0, "same seed, same statistics");
    CHECK(a.ci95_median_lo != c.ci95_median_lo || a.ci95_median_hi != c.ci95_median_hi,
          "another seed, another interval");
    CHECK(a.ci95_median_lo < a.median && a.median < a.ci95_median_hi, "contains the median");
    /* sample median of N(0, 1): standard error sqrt(pi / 2) / sqrt(n) */
    se = sqrt(PI / 2.0) / sqrt((double)N);
    asymptotic_width = 2.0 * 1.959963984540054 * se;
    width = a.ci95_median_hi - a.ci95_median_lo;
    CHECK(fabs(width / asymptotic_width - 1.0) < 0.2, "width %g vs asymptotic %g", width,
          asymptotic_width);
    CHECK(fabs(a.median) < 4.0 * se, "median %g of N(0,1) data", a.median);
    /* the t interval of the mean: half-width ~ 1.96 / sqrt(n) */
    CHECK_CLOSE((a.ci95_mean_hi - a.ci95_mean_lo) / 2.0, 1.96 * a.std / sqrt((double)N), 1e-3,
                0.0, "mean CI half-width");
    TEST_END();
}

static void test_bootstrap_ratio(void)
{
    enum { N = 200 };
    double base[N], ratio, lo, hi, ratio2, lo2, hi2;
    const double *candidate = ekv_ref_samples_lognormal200;
    int i;
    for (i = 0; i < N; i++) base[i] = 2.0 * candidate[i];
    TEST_BEGIN("paired bootstrap ratio: exact 2x gives 2 and [2, 2]; matches the mirror");
    CHECK(ekv_bootstrap_ratio(base, candidate, N, 2000, 5, &ratio, &lo, &hi) == EKV_SUCCESS,
          "%s", ekv_last_error());
    CHECK(ratio == 2.0 && lo == 2.0 && hi == 2.0, "ratio %.17g CI [%.17g, %.17g]", ratio, lo,
          hi);
    CHECK(ekv_bootstrap_ratio(ekv_ref_ratio_base, candidate, N, 2000, EKV_REF_RATIO_SEED,
                              &ratio, &lo, &hi) == EKV_SUCCESS,
          "%s", ekv_last_error());
    CHECK_CLOSE(ratio, ekv_ref_ratio, PLAIN_REL, 0.0, "ratio");
    CHECK_CLOSE(lo, ekv_ref_ratio_lo, PLAIN_REL, 0.0, "ratio lo");
    CHECK_CLOSE(hi, ekv_ref_ratio_hi, PLAIN_REL, 0.0, "ratio hi");
    CHECK(lo < 2.0 && 2.0 < hi, "the CI [%g, %g] of a 2x change with noise contains 2", lo,
          hi);
    CHECK(ekv_bootstrap_ratio(ekv_ref_ratio_base, candidate, N, 0, EKV_REF_RATIO_SEED,
                              &ratio2, &lo2, &hi2) == EKV_SUCCESS,
          "%s", ekv_last_error());
    CHECK(ratio2 == ratio && lo2 == lo && hi2 == hi, "resamples 0 = EKV_BOOTSTRAP_RESAMPLES");
    CHECK(ekv_bootstrap_ratio(ekv_ref_ratio_base, candidate, N, 500, 8, &ratio2, &lo2,
                              &hi2) == EKV_SUCCESS,
          "%s", ekv_last_error());
    CHECK(ratio2 == ratio && (lo2 != lo || hi2 != hi), "another seed and count");
    TEST_END();
}

static void test_rng(void)
{
    ekv_rng a, b;
    int i;
    TEST_BEGIN("rng: the documented xoshiro256** stream, Lemire's below(), determinism");
    ekv_rng_seed(&a, EKV_REF_RNG_SEED_A);
    for (i = 0; i < 8; i++) {
        uint64_t v = ekv_rng_next(&a);
        CHECK(v == (uint64_t)ekv_ref_rng_a[i], "seed A output %d", i);
    }
    ekv_rng_seed(&a, EKV_REF_RNG_SEED_B);
    for (i = 0; i < 8; i++) {
        uint64_t v = ekv_rng_next(&a);
        CHECK(v == (uint64_t)ekv_ref_rng_b[i], "seed B output %d", i);
    }
    ekv_rng_seed(&a, EKV_REF_RNG_SEED_B);
    for (i = 0; i < 8; i++) {
        uint64_t v = ekv_rng_below(&a, EKV_REF_RNG_BELOW_N);
        CHECK(v == (uint64_t)ekv_ref_rng_below[i], "below output %d", i);
    }
    /* below(2^64 - 1) = x - 1 exercises the full 128-bit product; below(2^32) = x >> 32 */
    ekv_rng_seed(&a, 5);
    ekv_rng_seed(&b, 5);
    for (i = 0; i < 100; i++) {
        uint64_t x = ekv_rng_next(&b);
        uint64_t v = ekv_rng_below(&a, UINT64_MAX);
        if (x == 0) break;
        CHECK(v == x - 1, "below(2^64-1)");
        x = ekv_rng_next(&b);
        v = ekv_rng_below(&a, (uint64_t)1 << 32);
        CHECK(v == x >> 32, "below(2^32)");
    }
    CHECK(ekv_rng_below(&a, 0) == 0 && ekv_rng_below(&a, 1) == 0, "below(0), below(1)");
    ekv_rng_seed(&a, 77);
    ekv_rng_seed(&b, 77);
    for (i = 0; i < 1000; i++)
        CHECK(ekv_rng_normal(&a) == ekv_rng_normal(&b), "same seed, same normals");
    TEST_END();
}

static void test_rng_moments(void)
{
    enum { N = 100000 };
    ekv_rng rng;
    double sum = 0, sum2 = 0, sum3 = 0, sum4 = 0, usum = 0, usum2 = 0, umin = 1, umax = 0;
    long counts[6] = {0};
    int i;
    ekv_rng_seed(&rng, 31337);
    TEST_BEGIN("rng moments: 1e5 normals, uniforms and below(6)");
    for (i = 0; i < N; i++) {
        double z = ekv_rng_normal(&rng), u = ekv_rng_uniform(&rng);
        sum += z;
        sum2 += z * z;
        sum3 += z * z * z;
        sum4 += z * z * z * z;
        usum += u;
        usum2 += u * u;
        umin = u < umin ? u : umin;
        umax = u > umax ? u : umax;
        counts[ekv_rng_below(&rng, 6)]++;
    }
    /* tolerances: 5 standard errors */
    CHECK(fabs(sum / N) < 5.0 * sqrt(1.0 / N), "normal mean %g", sum / N);
    CHECK(fabs(sum2 / N - 1.0) < 5.0 * sqrt(2.0 / N), "normal variance %g", sum2 / N);
    CHECK(fabs(sum3 / N) < 5.0 * sqrt(15.0 / N), "normal third moment %g", sum3 / N);
    CHECK(fabs(sum4 / N - 3.0) < 5.0 * sqrt(96.0 / N), "normal fourth moment %g", sum4 / N);
    CHECK(fabs(usum / N - 0.5) < 5.0 * sqrt(1.0 / 12.0 / N), "uniform mean %g", usum / N);
    CHECK(fabs(usum2 / N - usum / N * usum / N - 1.0 / 12.0) < 0.002, "uniform variance");
    CHECK(umin >= 0.0 && umax < 1.0 && umin < 1e-3 && umax > 1.0 - 1e-3, "uniform range");
    for (i = 0; i < 6; i++)
        CHECK(fabs(counts[i] - N / 6.0) < 5.0 * sqrt(N * (1.0 / 6.0) * (5.0 / 6.0)),
              "below(6) count of %d: %ld", i, counts[i]);
    TEST_END();
}

static void test_errors(void)
{
    double x[4] = {1.0, 2.0, NAN, 4.0}, ok[3] = {1.0, 2.0, 3.0}, zero[3] = {1.0, 0.0, 2.0};
    double ratio, lo, hi;
    ekv_stats s;
    TEST_BEGIN("errors: n = 0, NULL, NaN/Inf, bad trim, bad ratio input");
    CHECK(ekv_stats_compute(ok, 0, 10.0, 1, &s) == EKV_ERR_INVALID_ARG, "n = 0");
    CHECK(strstr(ekv_last_error(), "n = 0") != NULL, "message: %s", ekv_last_error());
    CHECK(ekv_stats_compute(NULL, 3, 10.0, 1, &s) == EKV_ERR_INVALID_ARG, "NULL samples");
    CHECK(strstr(ekv_last_error(), "NULL") != NULL, "message: %s", ekv_last_error());
    CHECK(ekv_stats_compute(ok, 3, 10.0, 1, NULL) == EKV_ERR_INVALID_ARG, "NULL out");
    CHECK(ekv_stats_compute(x, 4, 10.0, 1, &s) == EKV_ERR_INVALID_ARG, "NaN sample");
    CHECK(strstr(ekv_last_error(), "samples[2]") != NULL, "message: %s", ekv_last_error());
    x[2] = INFINITY;
    CHECK(ekv_stats_compute(x, 4, 10.0, 1, &s) == EKV_ERR_INVALID_ARG, "Inf sample");
    CHECK(ekv_stats_compute(ok, 3, 50.0, 1, &s) == EKV_ERR_INVALID_ARG, "trim 50");
    CHECK(strstr(ekv_last_error(), "trim") != NULL, "message: %s", ekv_last_error());
    CHECK(ekv_stats_compute(ok, 3, -1.0, 1, &s) == EKV_ERR_INVALID_ARG, "trim -1");
    CHECK(ekv_stats_compute(ok, 3, NAN, 1, &s) == EKV_ERR_INVALID_ARG, "trim NaN");
    CHECK(ekv_bootstrap_ratio(ok, ok, 0, 100, 1, &ratio, &lo, &hi) == EKV_ERR_INVALID_ARG,
          "ratio n = 0");
    CHECK(ekv_bootstrap_ratio(NULL, ok, 3, 100, 1, &ratio, &lo, &hi) == EKV_ERR_INVALID_ARG,
          "ratio NULL base");
    CHECK(ekv_bootstrap_ratio(ok, ok, 3, 100, 1, NULL, &lo, &hi) == EKV_ERR_INVALID_ARG,
          "ratio NULL out");
    CHECK(ekv_bootstrap_ratio(ok, x, 3, 100, 1, &ratio, &lo, &hi) == EKV_ERR_INVALID_ARG,
          "ratio Inf candidate");
    CHECK(ekv_bootstrap_ratio(ok, zero, 3, 100, 1, &ratio, &lo, &hi) == EKV_ERR_INVALID_ARG,
          "ratio zero candidate");
    CHECK(strstr(ekv_last_error(), "candidate[1]") != NULL, "message: %s", ekv_last_error());
    CHECK(ekv_bootstrap_ratio(ok, ok, 3, -1, 1, &ratio, &lo, &hi) == EKV_ERR_INVALID_ARG,
          "ratio resamples -1");
    CHECK(ratio != ratio, "outputs are NaN after an error");
    x[2] = NAN;
    CHECK(ekv_median(x, 4) != ekv_median(x, 4), "median of data with NaN is NaN");
    CHECK(ekv_median(NULL, 3) != ekv_median(NULL, 3), "median of NULL is NaN");
    CHECK(ekv_median(ok, 0) != ekv_median(ok, 0), "median of nothing is NaN");
    CHECK(ekv_trimmed_mean(ok, 3, 0.6) != ekv_trimmed_mean(ok, 3, 0.6), "trim 60%% is NaN");
    CHECK(ekv_quantile_sorted(ok, 3, 1.5) != ekv_quantile_sorted(ok, 3, 1.5), "q > 1 is NaN");
    CHECK(ekv_quantile_sorted(NULL, 3, 0.5) != ekv_quantile_sorted(NULL, 3, 0.5), "NULL");
    TEST_END();
}

int main(void)
{
    test_reference_sets();
    test_single_sample();
    test_t_quantiles();
    test_t_closed_forms();
    test_t_cdf();
    test_t_edges();
    test_bootstrap_median();
    test_bootstrap_ratio();
    test_rng();
    test_rng_moments();
    test_errors();
    return ekv_test_finish();
}
