/* >>rng: xoshiro256** seeded through splitmix64 ================================ */

#include <float.h>

/* splitmix64 turns any 64-bit seed (0 included) into well-mixed state words; its
   output function is a bijection, so the four words can never all be zero, which is
   the one state xoshiro must avoid. */
static uint64_t ekv__splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static uint64_t ekv__rotl64(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

EKV_DEF void ekv_rng_seed(ekv_rng *rng, uint64_t seed)
{
    uint64_t state = seed;
    int i;
    for (i = 0; i < 4; i++) rng->s[i] = ekv__splitmix64(&state);
}

EKV_DEF uint64_t ekv_rng_next(ekv_rng *rng)
{
    uint64_t *s = rng->s;
    uint64_t result = ekv__rotl64(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = ekv__rotl64(s[3], 45);
    return result;
}

/* The top 53 bits: every double of the form k / 2^53, so exactly uniform on [0, 1). */
EKV_DEF double ekv_rng_uniform(ekv_rng *rng)
{
    return (double)(ekv_rng_next(rng) >> 11) * (1.0 / 9007199254740992.0);
}

/* Box-Muller, one value per call (the struct keeps no spare), so a stream of normals
   depends only on the seed and the number of calls. 1 - u keeps the log argument in
   (0, 1]. */
EKV_DEF double ekv_rng_normal(ekv_rng *rng)
{
    double u1 = 1.0 - ekv_rng_uniform(rng);
    double u2 = ekv_rng_uniform(rng);
    return sqrt(-2.0 * log(u1)) * cos(2.0 * EKV__PI * u2);
}

/* 64 x 64 -> 128-bit product without compiler extensions (C99 has no 128-bit type). */
static void ekv__mul_64x64(uint64_t a, uint64_t b, uint64_t *high, uint64_t *low)
{
    uint64_t a_lo = a & 0xFFFFFFFFu, a_hi = a >> 32;
    uint64_t b_lo = b & 0xFFFFFFFFu, b_hi = b >> 32;
    uint64_t lo_lo = a_lo * b_lo, hi_lo = a_hi * b_lo, lo_hi = a_lo * b_hi, hi_hi = a_hi * b_hi;
    uint64_t middle = (lo_lo >> 32) + (hi_lo & 0xFFFFFFFFu) + lo_hi;
    *low = (middle << 32) | (lo_lo & 0xFFFFFFFFu);
    *high = hi_hi + (hi_lo >> 32) + (middle >> 32);
}

/* Lemire's multiply-and-reject: the high word of x * n is uniform on [0, n) once the
   few low words below 2^64 mod n are rejected. n == 0 returns 0. */
EKV_DEF uint64_t ekv_rng_below(ekv_rng *rng, uint64_t n)
{
    uint64_t high, low;
    if (n == 0) return 0;
    ekv__mul_64x64(ekv_rng_next(rng), n, &high, &low);
    if (low < n) {
        uint64_t threshold = (0 - n) % n;
        while (low < threshold) ekv__mul_64x64(ekv_rng_next(rng), n, &high, &low);
    }
    return high;
}

/* >>stats: sample statistics, Student t, bootstrap ============================ *

   Conventions beyond the numpy/scipy definitions in ekv.h:
   - Samples must be finite: NaN or an infinity anywhere is EKV_ERR_INVALID_ARG naming
     the index (a NaN would silently poison every order statistic).
   - n = 1: std, cv and the CI of the mean are NaN (ddof = 1 leaves no degrees of
     freedom, as numpy's nan); everything else is the one value.
   - cv = std / mean as computed, so a zero mean gives an infinity (JSON null).
   - Bootstrap: resample r draws n indices with ekv_rng_below(n) from one stream seeded
     once with `seed`; the median's indices select from the sorted samples, the
     ratio's from the pairs. The interval is the 2.5 and 97.5 percentiles (linear
     interpolation) of the replicates, so it is reproducible from the seed alone.
   - ekv_bootstrap_ratio needs candidate samples > 0 (they divide); resamples 0 means
     EKV_BOOTSTRAP_RESAMPLES. On any error its outputs are NaN.
   - ekv_median, ekv_trimmed_mean, ekv_quantile_sorted return NaN for NULL, n = 0, a
     NaN in the data, or a proportion/quantile out of range. */

/* NaN and infinities fail (x - x is NaN for both); portable where isfinite() is a
   macro in C and a function in C++. */
static int ekv__is_finite(double x)
{
    return x == x && x - x == 0.0;
}

static double ekv__nan(void)
{
    return NAN;
}

/* Neumaier-compensated sum: agrees with numpy's pairwise sum to well below 1e-12
   relative, independently of the order of the data. */
static double ekv__sum(const double *x, size_t n)
{
    double sum = 0.0, compensation = 0.0;
    size_t i;
    for (i = 0; i < n; i++) {
        double t = sum + x[i];
        if (fabs(sum) >= fabs(x[i])) compensation += (sum - t) + x[i];
        else compensation += (x[i] - t) + sum;
        sum = t;
    }
    return sum + compensation;
}

/* numpy's _lerp: from the nearer end so that the result is exact at both ends and
   monotone in t. */
static double ekv__lerp(double a, double b, double t)
{
    double diff = b - a;
    return t >= 0.5 ? b - diff * (1.0 - t) : a + diff * t;
}

EKV_DEF double ekv_quantile_sorted(const double *sorted, size_t n, double q)
{
    double virtual_index, previous;
    size_t i;
    if (!sorted || n == 0 || !(q >= 0.0 && q <= 1.0)) return ekv__nan();
    virtual_index = (double)(n - 1) * q;
    previous = floor(virtual_index);
    i = (size_t)previous;
    if (i >= n - 1) return sorted[n - 1];
    return ekv__lerp(sorted[i], sorted[i + 1], virtual_index - previous);
}

/* np.median: the middle element, or the mean of the two middle ones. */
static double ekv__median_sorted(const double *sorted, size_t n)
{
    if (n % 2) return sorted[n / 2];
    return (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0;
}

/* A sorted copy, or NULL when the input holds a NaN (numpy's median is then NaN) or
   memory runs out. */
static double *ekv__sorted_copy(const double *samples, size_t n)
{
    double *sorted;
    size_t i;
    for (i = 0; i < n; i++)
        if (samples[i] != samples[i]) return NULL;
    sorted = (double *)ekv__alloc(n, sizeof *sorted);
    if (!sorted) return NULL;
    memcpy(sorted, samples, n * sizeof *sorted);
    qsort(sorted, n, sizeof *sorted, ekv__compare_double);
    return sorted;
}

EKV_DEF double ekv_median(const double *samples, size_t n)
{
    double *sorted, median;
    if (!samples || n == 0) return ekv__nan();
    sorted = ekv__sorted_copy(samples, n);
    if (!sorted) return ekv__nan();
    median = ekv__median_sorted(sorted, n);
    ekv__free(sorted);
    return median;
}

/* scipy.stats.trim_mean: int(proportion * n) values cut from each end, with the same
   double product Python computes (so 0.29 * 100 cuts 28, as scipy does). */
static double ekv__trimmed_mean_sorted(const double *sorted, size_t n, double proportion)
{
    size_t cut;
    if (!(proportion >= 0.0 && proportion <= 0.5)) return ekv__nan();
    cut = (size_t)(proportion * (double)n);
    if (2 * cut >= n) return ekv__nan();
    return ekv__sum(sorted + cut, n - 2 * cut) / (double)(n - 2 * cut);
}

EKV_DEF double ekv_trimmed_mean(const double *samples, size_t n, double proportion)
{
    double *sorted, mean;
    if (!samples || n == 0) return ekv__nan();
    sorted = ekv__sorted_copy(samples, n);
    if (!sorted) return ekv__nan();
    mean = ekv__trimmed_mean_sorted(sorted, n, proportion);
    ekv__free(sorted);
    return mean;
}

/* --- Student t ------------------------------------------------------------------
   P(T > t) = I_x(df/2, 1/2) / 2 and P(0 < T < t) = I_y(1/2, df/2) / 2 with
   x = df / (df + t^2), y = t^2 / (df + t^2), I the regularized incomplete beta
   function, evaluated by its continued fraction. The inverse solves whichever of the
   two is the smaller probability, so neither the tails nor the centre lose digits to
   a difference with 1/2. */

/* lgamma(x) - [(x - 1/2) ln x - x + ln(2 pi)/2] for x >= 10: the series' next term is
   below 3e-17 there. */
static double ekv__stirling_correction(double x)
{
    double r = 1.0 / x, r2 = r * r;
    return r * (1.0 / 12.0 +
                r2 * (-1.0 / 360.0 +
                      r2 * (1.0 / 1260.0 +
                            r2 * (-1.0 / 1680.0 +
                                  r2 * (1.0 / 1188.0 + r2 * (-691.0 / 360360.0 + r2 / 156.0))))));
}

/* ln B(a, b) for a, b > 0, accurate to a few ulps of its terms when the smaller
   argument stays moderate (the t distribution uses 1/2). For a large argument the
   difference lgamma(big) - lgamma(big + small) comes from the Stirling series,
   rearranged so that nothing cancels: the plain difference would lose
   |lgamma(big)| * eps (1e-9 relative at df = 1e6). */
static double ekv__log_beta(double a, double b)
{
    double big = a > b ? a : b, small = a > b ? b : a;
    if (big < 10.0) return lgamma(a) + lgamma(b) - lgamma(a + b);
    return lgamma(small) - (big - 0.5) * log1p(small / big) - small * log(big + small) + small +
           ekv__stirling_correction(big) - ekv__stirling_correction(big + small);
}

/* The continued fraction g of I_x(a, b) = x^a y^b / (a B(a, b) g), for x below the
   mean (a+1)/(a+b+2) where it converges quickly. It is the even contraction of the
   classic fraction 1/(1 + d1/(1 + d2/(1 + ...))):
       g = (1 + d1) - d1 d2 / ((1 + d2 + d3) - d3 d4 / ((1 + d4 + d5) - ...))
       d(2m+1) = -(a+m)(a+b+m) x / ((a+2m)(a+2m+1)),  d(2m) = m(b-m) x / ((a+2m-1)(a+2m)),
   because 1 + d(2m+1), the sum that cancels, can then be written without cancellation:
   when x is near 1 (the t tails at large df) it is
       [a(1-b) + 2am + (2-b)m + 3m^2 + (a+m)(a+b+m) y] / ((a+2m)(a+2m+1)),
   whose terms share a sign for the b = 1/2 of those tails; computed as 1 + d(2m+1) it
   would lose digits in proportion to df. Modified Lentz. */
static double ekv__beta_fraction(double a, double b, double x, double y)
{
    const double tiny = 1e-300, epsilon = 2.0 * DBL_EPSILON; /* exactly 1 may never come */
    double g, c, d = 0.0;
    int m;
    g = y < x ? ((1.0 - b) + (a + b) * y) / (a + 1.0) : 1.0 - (a + b) * x / (a + 1.0);
    if (fabs(g) < tiny) g = tiny;
    c = g;
    for (m = 1; m <= 1000000; m++) {
        double odd_previous = -(a + m - 1.0) * (a + b + m - 1.0) * x /
                              ((a + 2.0 * m - 2.0) * (a + 2.0 * m - 1.0));
        double even = m * (b - m) * x / ((a + 2.0 * m - 1.0) * (a + 2.0 * m));
        double odd_denominator = (a + 2.0 * m) * (a + 2.0 * m + 1.0);
        double one_plus_odd =
            y < x ? (a * (1.0 - b) + 2.0 * a * m + (2.0 - b) * m + 3.0 * m * m +
                     (a + m) * (a + b + m) * y) / odd_denominator
                  : 1.0 - (a + m) * (a + b + m) * x / odd_denominator;
        double numerator = -odd_previous * even, denominator = even + one_plus_odd, delta;
        d = denominator + numerator * d;
        if (fabs(d) < tiny) d = tiny;
        c = denominator + numerator / c;
        if (fabs(c) < tiny) c = tiny;
        d = 1.0 / d;
        delta = c * d;
        g *= delta;
        if (fabs(delta - 1.0) < epsilon) break;
    }
    return g;
}

/* I_x(a, b) given both x and y = 1 - x, each computed without cancellation by the
   caller, so that either tail keeps full relative precision. */
static double ekv__incomplete_beta(double a, double b, double x, double y)
{
    double log_x, log_y;
    if (x <= 0.0) return 0.0;
    if (y <= 0.0) return 1.0;
    if (x > (a + 1.0) / (a + b + 2.0)) return 1.0 - ekv__incomplete_beta(b, a, y, x);
    log_x = x < 0.5 ? log(x) : log1p(-y);
    log_y = y < 0.5 ? log(y) : log1p(-x);
    return exp(a * log_x + b * log_y - ekv__log_beta(a, b)) / (a * ekv__beta_fraction(a, b, x, y));
}

/* x = df / (df + t^2) and y = 1 - x for t >= 0, both without cancellation. */
static void ekv__t_beta_arguments(double t, double df, double *x, double *y)
{
    double t2 = t * t;
    *x = df / (df + t2);
    *y = t2 / (df + t2);
}

/* P(T > t) for t >= 0; df = infinity is the standard normal. */
static double ekv__t_upper_tail(double t, double df)
{
    double x, y, log_ratio;
    if (df == INFINITY) return 0.5 * erfc(t / sqrt(2.0));
    /* far tail, x < 1e-100: I_x(df/2, 1/2) = x^(df/2) / ((df/2) B) to within x, taken in
       logarithms because x itself underflows long before the tail does (df = 1) */
    log_ratio = log(t) - 0.5 * log(df);
    if (log_ratio > 115.0) return exp(-df * log_ratio - ekv__log_beta(0.5 * df, 0.5)) / df;
    ekv__t_beta_arguments(t, df, &x, &y);
    return 0.5 * ekv__incomplete_beta(0.5 * df, 0.5, x, y);
}

/* P(0 < T < t) for t >= 0. */
static double ekv__t_centre(double t, double df)
{
    double x, y;
    if (df == INFINITY) return 0.5 * erf(t / sqrt(2.0));
    if (t == INFINITY) return 0.5;
    ekv__t_beta_arguments(t, df, &x, &y);
    return 0.5 * ekv__incomplete_beta(0.5, 0.5 * df, y, x);
}

/* ln of the density at t >= 0; log_norm = -ln B(df/2, 1/2) - ln(df)/2. */
static double ekv__t_log_density(double t, double df, double log_norm)
{
    double log_ratio;
    if (df == INFINITY) return -0.5 * t * t - 0.5 * log(2.0 * EKV__PI);
    log_ratio = log(t) - 0.5 * log(df);
    if (log_ratio > 115.0) return log_norm - (df + 1.0) * log_ratio;
    return log_norm - 0.5 * (df + 1.0) * log1p(t / sqrt(df) * (t / sqrt(df)));
}

EKV_DEF double ekv_t_cdf(double t, double df)
{
    if (t != t || !(df > 0.0)) return ekv__nan();
    if (t < 0.0) return ekv__t_upper_tail(-t, df);
    return 1.0 - ekv__t_upper_tail(t, df);
}

/* The probability that ekv__t_solve matches: P(0 < T < t) or P(T > t). */
static double ekv__t_probability(double t, double df, int centre)
{
    return centre ? ekv__t_centre(t, df) : ekv__t_upper_tail(t, df);
}

/* Whether `probability` puts t below the root (the centre grows with t, the tail
   shrinks). */
static int ekv__t_below_root(double probability, double target, int centre)
{
    return centre ? probability < target : probability > target;
}

/* The t >= 0 with P(T > t) = target (centre = 0), or P(0 < T < t) = target (centre =
   1), target in (0, 1/4]. Newton on the log of that probability against ln t (close
   to linear in both the normal-like centre and the power-law tails), kept inside a
   bracket that falls back to bisection, so it cannot diverge. Infinity when the root
   lies beyond the largest double (df < 2 and a tail below ~1e-155). */
static double ekv__t_solve(double target, double df, int centre)
{
    double log_norm = df == INFINITY ? 0.0 : -ekv__log_beta(0.5 * df, 0.5) - 0.5 * log(df);
    double log_target = log(target);
    double low, high, t;
    int iteration;
    /* bracket [low, high] around the root, by squaring away from 1 */
    if (ekv__t_below_root(ekv__t_probability(1.0, df, centre), target, centre)) {
        low = 1.0;
        high = 2.0;
        while (ekv__t_below_root(ekv__t_probability(high, df, centre), target, centre)) {
            if (high == DBL_MAX) return INFINITY;
            low = high;
            high = high > 1e154 ? DBL_MAX : high * high;
        }
    } else {
        high = 1.0;
        low = 0.5;
        while (!ekv__t_below_root(ekv__t_probability(low, df, centre), target, centre)) {
            high = low;
            low = low * low;
        }
    }
    t = low > 0.0 ? sqrt(low) * sqrt(high) : 0.5 * high;
    for (iteration = 0; iteration < 200; iteration++) {
        double probability = ekv__t_probability(t, df, centre), next, slope;
        if (probability == target) return t;
        if (ekv__t_below_root(probability, target, centre)) low = t;
        else high = t;
        /* d ln(probability) / d ln(t) */
        slope = (centre ? t : -t) * exp(ekv__t_log_density(t, df, log_norm)) / probability;
        next = t * exp((log_target - log(probability)) / slope);
        if (!(next > low && next < high))
            next = low > 0.0 ? sqrt(low) * sqrt(high) : 0.5 * high;
        if (fabs(next - t) <= 4e-16 * t || next == low || next == high) return next;
        t = next;
    }
    return t;
}

EKV_DEF double ekv_t_inverse_cdf(double p, double df)
{
    if (!(p >= 0.0 && p <= 1.0) || !(df > 0.0)) return ekv__nan();
    if (p == 0.0) return -INFINITY;
    if (p == 1.0) return INFINITY;
    if (p == 0.5) return 0.0;
    /* p - 1/2 is exact for p in [1/4, 1] and 1 - p for p in [1/2, 1] (Sterbenz) */
    if (p >= 0.25 && p <= 0.75) {
        double t = ekv__t_solve(fabs(p - 0.5), df, 1);
        return p < 0.5 ? -t : t;
    }
    if (p < 0.5) return -ekv__t_solve(p, df, 0);
    return ekv__t_solve(1.0 - p, df, 0);
}

/* --- bootstrap ------------------------------------------------------------------
   A resample is a count per original index (counts[i] = times index i was drawn).
   Walking a sorted order and accumulating counts finds the resample's middle order
   statistics in O(n) with no sort, and gives exactly np.median of the resample. */

/* Draws n indices (ekv_rng_below(n), in order) into counts. */
static void ekv__bootstrap_draw(ekv_rng *rng, size_t n, size_t *counts)
{
    size_t i;
    memset(counts, 0, n * sizeof *counts);
    for (i = 0; i < n; i++) counts[ekv_rng_below(rng, (uint64_t)n)]++;
}

/* Median of the resample: sorted_values[j] is the value of index order[j] (order NULL:
   counts are already in sorted order). */
static double ekv__counted_median(const double *sorted_values, const size_t *order,
                                  const size_t *counts, size_t n)
{
    size_t lower_rank = (n - 1) / 2, upper_rank = n / 2, seen = 0, j;
    double lower = 0.0;
    for (j = 0; j < n; j++) {
        size_t count = counts[order ? order[j] : j];
        if (count == 0) continue;
        if (seen <= lower_rank && lower_rank < seen + count) lower = sorted_values[j];
        if (upper_rank < seen + count) {
            if (lower_rank == upper_rank) return sorted_values[j];
            return (lower + sorted_values[j]) / 2.0;
        }
        seen += count;
    }
    return ekv__nan();
}

/* Percentile interval: quantiles 0.025 and 0.975 of the sorted replicates. */
static void ekv__percentile_interval(double *replicates, size_t count, double *lo, double *hi)
{
    qsort(replicates, count, sizeof *replicates, ekv__compare_double);
    *lo = ekv_quantile_sorted(replicates, count, 0.025);
    *hi = ekv_quantile_sorted(replicates, count, 0.975);
}

static ekv_result ekv__check_samples(const double *samples, size_t n, const char *function,
                                     const char *name)
{
    size_t i;
    if (!samples) return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: %s is NULL", function, name);
    if (n == 0) return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: no samples (n = 0)", function);
    for (i = 0; i < n; i++)
        if (!ekv__is_finite(samples[i]))
            return ekv_set_error(EKV_ERR_INVALID_ARG,
                                 "%s: %s[%zu] is %g; samples must be finite", function, name,
                                 i, samples[i]);
    return EKV_SUCCESS;
}

/* Index sort for the paired bootstrap: values with their original index. */
typedef struct ekv__indexed_value {
    double value;
    size_t index;
} ekv__indexed_value;

static int ekv__compare_indexed(const void *a, const void *b)
{
    const ekv__indexed_value *x = (const ekv__indexed_value *)a;
    const ekv__indexed_value *y = (const ekv__indexed_value *)b;
    if (x->value != y->value) return (x->value > y->value) - (x->value < y->value);
    return (x->index > y->index) - (x->index < y->index);
}

EKV_DEF ekv_result ekv_stats_compute(const double *samples, size_t n, double trim_percent,
                                     uint64_t seed, ekv_stats *out)
{
    double *sorted = NULL, *deviations = NULL, *medians = NULL;
    size_t *counts = NULL, i;
    double low_mild, high_mild, low_severe, high_severe;
    ekv_rng rng;
    ekv_result result;
    if (!out) return ekv_set_error(EKV_ERR_INVALID_ARG, "ekv_stats_compute: out is NULL");
    memset(out, 0, sizeof *out);
    result = ekv__check_samples(samples, n, "ekv_stats_compute", "samples");
    if (result != EKV_SUCCESS) return result;
    if (!(trim_percent >= 0.0 && trim_percent < 50.0))
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "ekv_stats_compute: trim percent %g is outside [0, 50)",
                             trim_percent);
    sorted = ekv__sorted_copy(samples, n);
    deviations = (double *)ekv__alloc(n, sizeof *deviations);
    counts = (size_t *)ekv__alloc(n, sizeof *counts);
    medians = (double *)ekv__alloc(EKV_BOOTSTRAP_RESAMPLES, sizeof *medians);
    if (!sorted || !deviations || !counts || !medians) {
        result = EKV_ERR_OUT_OF_MEMORY; /* ekv__alloc set the message */
        goto done;
    }

    out->n = n;
    out->mean = ekv__sum(samples, n) / (double)n;
    for (i = 0; i < n; i++) deviations[i] = (samples[i] - out->mean) * (samples[i] - out->mean);
    out->std = n > 1 ? sqrt(ekv__sum(deviations, n) / (double)(n - 1)) : ekv__nan();
    out->cv = out->std / out->mean;
    out->median = ekv__median_sorted(sorted, n);
    out->min = sorted[0];
    out->max = sorted[n - 1];
    out->q1 = ekv_quantile_sorted(sorted, n, 0.25);
    out->q3 = ekv_quantile_sorted(sorted, n, 0.75);
    out->iqr = out->q3 - out->q1;
    out->p5 = ekv_quantile_sorted(sorted, n, 0.05);
    out->p95 = ekv_quantile_sorted(sorted, n, 0.95);
    out->p99 = ekv_quantile_sorted(sorted, n, 0.99);
    out->trimmed_mean = ekv__trimmed_mean_sorted(sorted, n, trim_percent / 100.0);

    low_mild = out->q1 - 1.5 * out->iqr;
    high_mild = out->q3 + 1.5 * out->iqr;
    low_severe = out->q1 - 3.0 * out->iqr;
    high_severe = out->q3 + 3.0 * out->iqr;
    for (i = 0; i < n; i++) {
        double x = sorted[i];
        if (x < low_severe || x > high_severe) out->outliers_severe++;
        else if (x < low_mild || x > high_mild) out->outliers_mild++;
    }

    if (n > 1) {
        double half = ekv_t_inverse_cdf(0.975, (double)(n - 1)) * out->std / sqrt((double)n);
        out->ci95_mean_lo = out->mean - half;
        out->ci95_mean_hi = out->mean + half;
    } else {
        out->ci95_mean_lo = out->ci95_mean_hi = ekv__nan();
    }

    /* indices drawn into the sorted samples: the median depends only on the multiset */
    ekv_rng_seed(&rng, seed);
    for (i = 0; i < EKV_BOOTSTRAP_RESAMPLES; i++) {
        ekv__bootstrap_draw(&rng, n, counts);
        medians[i] = ekv__counted_median(sorted, NULL, counts, n);
    }
    ekv__percentile_interval(medians, EKV_BOOTSTRAP_RESAMPLES, &out->ci95_median_lo,
                             &out->ci95_median_hi);
    result = EKV_SUCCESS;
done:
    ekv__free(sorted);
    ekv__free(deviations);
    ekv__free(counts);
    ekv__free(medians);
    return result;
}

/* Sorted values and the original index of each, for one side of the pairs. */
static ekv_result ekv__sort_indexed(const double *values, size_t n, double *sorted, size_t *order)
{
    ekv__indexed_value *pairs = (ekv__indexed_value *)ekv__alloc(n, sizeof *pairs);
    size_t i;
    if (!pairs) return EKV_ERR_OUT_OF_MEMORY;
    for (i = 0; i < n; i++) {
        pairs[i].value = values[i];
        pairs[i].index = i;
    }
    qsort(pairs, n, sizeof *pairs, ekv__compare_indexed);
    for (i = 0; i < n; i++) {
        sorted[i] = pairs[i].value;
        order[i] = pairs[i].index;
    }
    ekv__free(pairs);
    return EKV_SUCCESS;
}

EKV_DEF ekv_result ekv_bootstrap_ratio(const double *base, const double *candidate, size_t n,
                                       int resamples, uint64_t seed, double *ratio,
                                       double *lo, double *hi)
{
    const char *function = "ekv_bootstrap_ratio";
    double *base_sorted = NULL, *candidate_sorted = NULL, *ratios = NULL;
    size_t *base_order = NULL, *candidate_order = NULL, *counts = NULL, i;
    size_t count;
    ekv_rng rng;
    ekv_result result;
    if (!ratio || !lo || !hi)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: ratio, lo and hi must not be NULL",
                             function);
    *ratio = *lo = *hi = ekv__nan();
    result = ekv__check_samples(base, n, function, "base");
    if (result != EKV_SUCCESS) return result;
    result = ekv__check_samples(candidate, n, function, "candidate");
    if (result != EKV_SUCCESS) return result;
    for (i = 0; i < n; i++)
        if (!(candidate[i] > 0.0))
            return ekv_set_error(EKV_ERR_INVALID_ARG,
                                 "%s: candidate[%zu] is %g; candidate samples must be > 0 "
                                 "(they divide)", function, i, candidate[i]);
    if (resamples < 0)
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "%s: resamples is %d; use >= 1, or 0 for the default %d",
                             function, resamples, EKV_BOOTSTRAP_RESAMPLES);
    count = resamples == 0 ? EKV_BOOTSTRAP_RESAMPLES : (size_t)resamples;

    base_sorted = (double *)ekv__alloc(n, sizeof *base_sorted);
    candidate_sorted = (double *)ekv__alloc(n, sizeof *candidate_sorted);
    base_order = (size_t *)ekv__alloc(n, sizeof *base_order);
    candidate_order = (size_t *)ekv__alloc(n, sizeof *candidate_order);
    counts = (size_t *)ekv__alloc(n, sizeof *counts);
    ratios = (double *)ekv__alloc(count, sizeof *ratios);
    if (!base_sorted || !candidate_sorted || !base_order || !candidate_order || !counts ||
        !ratios || ekv__sort_indexed(base, n, base_sorted, base_order) != EKV_SUCCESS ||
        ekv__sort_indexed(candidate, n, candidate_sorted, candidate_order) != EKV_SUCCESS) {
        result = EKV_ERR_OUT_OF_MEMORY;
        goto done;
    }
    *ratio = ekv__median_sorted(base_sorted, n) / ekv__median_sorted(candidate_sorted, n);

    /* indices drawn into the pairs, so base[i] and candidate[i] stay together */
    ekv_rng_seed(&rng, seed);
    for (i = 0; i < count; i++) {
        ekv__bootstrap_draw(&rng, n, counts);
        ratios[i] = ekv__counted_median(base_sorted, base_order, counts, n) /
                    ekv__counted_median(candidate_sorted, candidate_order, counts, n);
    }
    ekv__percentile_interval(ratios, count, lo, hi);
    result = EKV_SUCCESS;
done:
    ekv__free(base_sorted);
    ekv__free(candidate_sorted);
    ekv__free(base_order);
    ekv__free(candidate_order);
    ekv__free(counts);
    ekv__free(ratios);
    return result;
}

/* >>json: streaming writer ====================================================== *

   The writer inserts commas, colons and (pretty) newlines with 2-space indentation
   itself. Misuse (a value in an object without a key, a key outside an object,
   mismatched or unbalanced ends, nesting beyond 64) and allocation failure set
   `failed`, after which nothing more is written; the buffer always stays a NUL-
   terminated prefix of the intended document (NULL only if ekv_json_init could not
   allocate). Several top-level values are separated by newlines (JSONL). */

/* json->first[d] describes the container open at depth d + 1: these flag bits. */
#define EKV__JSON_EMPTY 1u  /* nothing written in it yet */
#define EKV__JSON_OBJECT 2u /* an object (else an array) */
#define EKV__JSON_MAX_DEPTH 64

/* Room for `extra` more bytes plus the terminating NUL; on failure marks the writer
   failed, and every later call writes nothing (the buffer keeps its valid prefix). */
static int ekv__json_reserve(ekv_json *json, size_t extra)
{
    size_t needed, capacity;
    char *grown;
    if (json->failed) return 0;
    if (extra > (size_t)-1 - json->length - 1) {
        json->failed = 1;
        return 0;
    }
    needed = json->length + extra + 1;
    if (needed <= json->capacity) return 1;
    capacity = json->capacity ? json->capacity : 256;
    while (capacity < needed) capacity = capacity > (size_t)-1 / 2 ? needed : capacity * 2;
    grown = (char *)EKV_REALLOC(json->buffer, capacity);
    if (!grown) {
        json->failed = 1;
        return 0;
    }
    json->buffer = grown;
    json->capacity = capacity;
    return 1;
}

static void ekv__json_append(ekv_json *json, const char *bytes, size_t count)
{
    if (!ekv__json_reserve(json, count)) return;
    memcpy(json->buffer + json->length, bytes, count);
    json->length += count;
    json->buffer[json->length] = '\0';
}

static void ekv__json_newline(ekv_json *json)
{
    int i;
    if (!json->pretty) return;
    ekv__json_append(json, "\n", 1);
    for (i = 0; i < json->depth; i++) ekv__json_append(json, "  ", 2);
}

static void ekv__json_fail(ekv_json *json)
{
    json->failed = 1;
}

/* Separator and indentation before a value; 0 (and the writer failed) when a value is
   not allowed here: in an object without a key first. Top-level values after the first
   go on a new line, so one writer can produce JSONL. */
static int ekv__json_before_value(ekv_json *json)
{
    unsigned char *flags;
    if (json->failed) return 0;
    if (json->depth == 0) {
        if (json->length > 0) ekv__json_append(json, "\n", 1);
        return !json->failed;
    }
    flags = &json->first[json->depth - 1];
    if (*flags & EKV__JSON_OBJECT) {
        if (!json->after_key) {
            ekv__json_fail(json);
            return 0;
        }
        json->after_key = 0;
        return 1;
    }
    if (!(*flags & EKV__JSON_EMPTY)) ekv__json_append(json, ",", 1);
    *flags &= (unsigned char)~EKV__JSON_EMPTY;
    ekv__json_newline(json);
    return !json->failed;
}

/* Length of the well-formed UTF-8 sequence at p (RFC 3629: no overlongs, surrogates
   or code points above U+10FFFF), or 0 with *bad set to the length of its maximal ill-
   formed prefix, which becomes one U+FFFD (Unicode's recommended practice, and what
   Python's decode(errors="replace") does). */
static size_t ekv__utf8_sequence(const unsigned char *p, size_t *bad)
{
    unsigned char lead = p[0], second_lo = 0x80, second_hi = 0xBF;
    size_t trailing, i;
    if (lead >= 0xC2 && lead <= 0xDF) trailing = 1;
    else if (lead >= 0xE0 && lead <= 0xEF) {
        trailing = 2;
        if (lead == 0xE0) second_lo = 0xA0;      /* overlong */
        else if (lead == 0xED) second_hi = 0x9F; /* surrogates */
    } else if (lead >= 0xF0 && lead <= 0xF4) {
        trailing = 3;
        if (lead == 0xF0) second_lo = 0x90;      /* overlong */
        else if (lead == 0xF4) second_hi = 0x8F; /* above U+10FFFF */
    } else {
        *bad = 1;
        return 0;
    }
    if (p[1] < second_lo || p[1] > second_hi) {
        *bad = 1;
        return 0;
    }
    for (i = 2; i <= trailing; i++)
        if (p[i] < 0x80 || p[i] > 0xBF) {
            *bad = i;
            return 0;
        }
    return trailing + 1;
}

static void ekv__json_write_string(ekv_json *json, const char *text)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)text;
    size_t length = strlen(text);
    char *out;
    /* worst case: every byte a \u00XX escape */
    if (length > ((size_t)-1 - 2) / 6 || !ekv__json_reserve(json, 6 * length + 2)) {
        ekv__json_fail(json);
        return;
    }
    out = json->buffer + json->length;
    *out++ = '"';
    while (*p) {
        unsigned char c = *p;
        if (c >= 0x80) {
            size_t bad = 0, valid = ekv__utf8_sequence(p, &bad);
            if (valid) {
                memcpy(out, p, valid);
                out += valid;
                p += valid;
            } else {
                memcpy(out, "\xEF\xBF\xBD", 3);
                out += 3;
                p += bad;
            }
            continue;
        }
        p++;
        if (c == '"' || c == '\\') {
            *out++ = '\\';
            *out++ = (char)c;
        } else if (c >= 0x20 && c != 0x7F) {
            *out++ = (char)c;
        } else {
            *out++ = '\\';
            switch (c) {
            case '\b': *out++ = 'b'; break;
            case '\f': *out++ = 'f'; break;
            case '\n': *out++ = 'n'; break;
            case '\r': *out++ = 'r'; break;
            case '\t': *out++ = 't'; break;
            default:
                memcpy(out, "u00", 3);
                out += 3;
                *out++ = hex[c >> 4];
                *out++ = hex[c & 15];
            }
        }
    }
    *out++ = '"';
    json->length = (size_t)(out - json->buffer);
    json->buffer[json->length] = '\0';
}

EKV_DEF void ekv_json_init(ekv_json *json, int pretty)
{
    memset(json, 0, sizeof *json);
    json->pretty = pretty != 0;
    if (ekv__json_reserve(json, 0)) json->buffer[0] = '\0';
}

EKV_DEF void ekv_json_free(ekv_json *json)
{
    if (!json) return;
    ekv__free(json->buffer);
    memset(json, 0, sizeof *json);
}

static void ekv__json_begin(ekv_json *json, char bracket, unsigned char kind)
{
    if (!ekv__json_before_value(json)) return;
    if (json->depth >= EKV__JSON_MAX_DEPTH) {
        ekv__json_fail(json);
        return;
    }
    ekv__json_append(json, &bracket, 1);
    json->first[json->depth++] = (unsigned char)(EKV__JSON_EMPTY | kind);
}

static void ekv__json_end(ekv_json *json, char bracket, unsigned char kind)
{
    unsigned char flags;
    if (json->failed) return;
    if (json->depth == 0 || json->after_key ||
        (json->first[json->depth - 1] & EKV__JSON_OBJECT) != kind) {
        ekv__json_fail(json);
        return;
    }
    flags = json->first[--json->depth];
    if (!(flags & EKV__JSON_EMPTY)) ekv__json_newline(json);
    ekv__json_append(json, &bracket, 1);
}

EKV_DEF void ekv_json_object_begin(ekv_json *json)
{
    ekv__json_begin(json, '{', EKV__JSON_OBJECT);
}

EKV_DEF void ekv_json_object_end(ekv_json *json)
{
    ekv__json_end(json, '}', EKV__JSON_OBJECT);
}

EKV_DEF void ekv_json_array_begin(ekv_json *json)
{
    ekv__json_begin(json, '[', 0);
}

EKV_DEF void ekv_json_array_end(ekv_json *json)
{
    ekv__json_end(json, ']', 0);
}

EKV_DEF void ekv_json_key(ekv_json *json, const char *key)
{
    unsigned char *flags;
    if (json->failed) return;
    if (!key || json->depth == 0 || json->after_key ||
        !(json->first[json->depth - 1] & EKV__JSON_OBJECT)) {
        ekv__json_fail(json);
        return;
    }
    flags = &json->first[json->depth - 1];
    if (!(*flags & EKV__JSON_EMPTY)) ekv__json_append(json, ",", 1);
    *flags &= (unsigned char)~EKV__JSON_EMPTY;
    ekv__json_newline(json);
    ekv__json_write_string(json, key);
    if (json->pretty) ekv__json_append(json, ": ", 2);
    else ekv__json_append(json, ":", 1);
    json->after_key = !json->failed;
}

static void ekv__json_raw_value(ekv_json *json, const char *text)
{
    if (ekv__json_before_value(json)) ekv__json_append(json, text, strlen(text));
}

EKV_DEF void ekv_json_string(ekv_json *json, const char *value)
{
    if (!value) {
        ekv_json_null(json);
        return;
    }
    if (ekv__json_before_value(json)) ekv__json_write_string(json, value);
}

/* The shortest of %.15g, %.16g, %.17g that strtod reads back to the same double (17
   always does). printf and strtod follow LC_NUMERIC together, so the round-trip test
   holds in any locale; a locale's decimal point (possibly several bytes) is then
   replaced by '.'. -0.0 is written "-0.0" because parsers read "-0" as the integer 0. */
static void ekv__json_format_double(double value, char *text, size_t size)
{
    uint64_t bits;
    char formatted[40];
    size_t in, out = 0;
    int precision, in_point = 0;
    memcpy(&bits, &value, sizeof bits);
    if (value == 0.0) {
        snprintf(text, size, "%s", (bits >> 63) ? "-0.0" : "0");
        return;
    }
    for (precision = 15; precision <= 17; precision++) {
        snprintf(formatted, sizeof formatted, "%.*g", precision, value);
        if (strtod(formatted, NULL) == value) break;
    }
    for (in = 0; formatted[in] && out + 1 < size; in++) {
        char c = formatted[in];
        int plain = (c >= '0' && c <= '9') || c == '-' || c == '+' || c == 'e' || c == 'E';
        if (plain) text[out++] = c;
        else if (!in_point) text[out++] = '.';
        in_point = !plain;
    }
    text[out] = '\0';
}

EKV_DEF void ekv_json_number(ekv_json *json, double value)
{
    char text[40];
    if (!ekv__is_finite(value)) {
        ekv_json_null(json);
        return;
    }
    ekv__json_format_double(value, text, sizeof text);
    ekv__json_raw_value(json, text);
}

EKV_DEF void ekv_json_int(ekv_json *json, long long value)
{
    char text[32];
    snprintf(text, sizeof text, "%lld", value);
    ekv__json_raw_value(json, text);
}

EKV_DEF void ekv_json_bool(ekv_json *json, int value)
{
    ekv__json_raw_value(json, value ? "true" : "false");
}

EKV_DEF void ekv_json_null(ekv_json *json)
{
    ekv__json_raw_value(json, "null");
}
