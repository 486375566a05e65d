#!/usr/bin/env python3
"""gen_stats_reference.py - writes tests/stats_reference.h, the numpy/scipy reference
values that tests/test_stats.c checks ekv's statistics against.

Run (from the repository root, in a venv with numpy and scipy):
    .venv/bin/python tests/gen_stats_reference.py [OUTPUT]      (default tests/stats_reference.h)

Definitions, one per ekv_stats field:
    mean np.mean; std np.std(ddof=1); cv std/mean; median np.median; min, max;
    q1, q3, p5, p95, p99 np.percentile(x, 25/75/5/95/99) (default method "linear");
    iqr q3 - q1; outliers: mild beyond 1.5 IQR of the quartiles but within 3 IQR,
    severe beyond 3 IQR; trimmed mean scipy.stats.trim_mean(x, percent / 100);
    ci95 of the mean: mean -+ scipy.stats.t.ppf(0.975, n - 1) * std / sqrt(n).
The bootstrap CIs (median, paired ratio) depend on ekv's random stream, so they come
from a pure-Python mirror of ekv's documented algorithm: xoshiro256** seeded by
splitmix64, Lemire's ekv_rng_below, indices drawn into the sorted samples (median) or
into the pairs (ratio), np.median of each resample, np.percentile 2.5 and 97.5.
Student t: scipy.stats.t.ppf for df 1..1000 at several p, and t.cdf on a grid.
"""
import os
import sys

import numpy as np
import scipy
from scipy import stats

RESAMPLES = 2000  # EKV_BOOTSTRAP_RESAMPLES
STATS_SEED = 12345
RATIO_SEED = 777
TRIM_PERCENTS = [0, 5, 10, 20, 25, 29, 49]
PPF_P = [0.975, 0.995, 0.9, 0.6, 0.999999, 1e-6]
PPF_DF_MAX = 1000
CDF_DF = [1, 2, 3, 4, 5, 10, 30, 100, 1000, 1e4, 1e5, 1e6]
CDF_T = [-40.0, -5.0, -2.0, -1.0, -0.25, 0.0, 0.1, 1.5, 3.0, 12.0]

RNG_SEEDS = [0, 20260121]
BELOW_N = 1000003

MASK = (1 << 64) - 1


class Rng:
    """ekv_rng: xoshiro256** seeded through splitmix64."""

    def __init__(self, seed):
        state = seed & MASK
        self.s = []
        for _ in range(4):
            state = (state + 0x9E3779B97F4A7C15) & MASK
            z = state
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
            self.s.append(z ^ (z >> 31))

    @staticmethod
    def _rotl(x, k):
        return ((x << k) | (x >> (64 - k))) & MASK

    def next(self):
        s = self.s
        result = (self._rotl((s[1] * 5) & MASK, 7) * 9) & MASK
        t = (s[1] << 17) & MASK
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = self._rotl(s[3], 45)
        return result

    def below(self, n):
        """Lemire's multiply-and-reject."""
        product = self.next() * n
        if (product & MASK) < n:
            threshold = ((1 << 64) - n) % n
            while (product & MASK) < threshold:
                product = self.next() * n
        return product >> 64


def bootstrap_median_ci(x, seed):
    sorted_x = np.sort(x)
    n = len(x)
    rng = Rng(seed)
    medians = np.empty(RESAMPLES)
    for r in range(RESAMPLES):
        idx = [rng.below(n) for _ in range(n)]
        medians[r] = np.median(sorted_x[idx])
    lo, hi = np.percentile(medians, [2.5, 97.5])
    return float(lo), float(hi)


def bootstrap_ratio(base, candidate, seed):
    n = len(base)
    rng = Rng(seed)
    ratios = np.empty(RESAMPLES)
    for r in range(RESAMPLES):
        idx = np.array([rng.below(n) for _ in range(n)])
        ratios[r] = np.median(base[idx]) / np.median(candidate[idx])
    lo, hi = np.percentile(ratios, [2.5, 97.5])
    return float(np.median(base) / np.median(candidate)), float(lo), float(hi)


def datasets():
    rng = np.random.default_rng(20260121)
    sets = []
    sets.append(("n2", np.array([1.5, 2.25])))
    sets.append(("n3", np.array([3.0, 1.0, 2.0])))
    sets.append(("n5", np.array([0.11, 0.12, 0.105, 0.13, 0.5])))
    sets.append(("constant7", np.full(7, 2.0)))
    sets.append(("negative6", np.array([-3.0, -1.0, 0.0, 2.0, 7.0, -0.5])))
    # timings in ms: lognormal around 0.05 ms with a few slow launches
    timings = 0.05 * np.exp(0.1 * rng.standard_normal(200))
    timings[[17, 93, 150]] *= [1.6, 2.5, 4.0]
    sets.append(("lognormal200", timings))
    sets.append(("ties40", rng.integers(1, 6, 40).astype(float)))
    base = 10.0 + 0.1 * rng.standard_normal(36)
    q1, q3 = np.percentile(base, [25, 75])
    iqr = q3 - q1
    outliers = np.concatenate(
        [base, [q3 + 2.0 * iqr, q1 - 2.2 * iqr, q3 + 6.0 * iqr, q1 - 20.0 * iqr]])
    sets.append(("outliers40", rng.permutation(outliers)))
    sets.append(("normal1001", 5.0 + rng.standard_normal(1001)))
    return sets


def describe(name, x):
    n = len(x)
    mean = np.mean(x)
    std = np.std(x, ddof=1)
    q1, q3, p5, p95, p99 = np.percentile(x, [25, 75, 5, 95, 99])
    iqr = q3 - q1
    severe = (x < q1 - 3.0 * iqr) | (x > q3 + 3.0 * iqr)
    mild = ((x < q1 - 1.5 * iqr) | (x > q3 + 1.5 * iqr)) & ~severe
    t = stats.t.ppf(0.975, n - 1)
    half = t * std / np.sqrt(n)
    lo, hi = bootstrap_median_ci(x, STATS_SEED)
    return dict(name=name, x=x, n=n, mean=mean, std=std, cv=std / mean, median=np.median(x),
                min=np.min(x), max=np.max(x), q1=q1, q3=q3, iqr=iqr, p5=p5, p95=p95, p99=p99,
                mild=int(mild.sum()), severe=int(severe.sum()),
                ci_mean=(mean - half, mean + half), ci_median=(lo, hi),
                trimmed=[stats.trim_mean(x, pct / 100) for pct in TRIM_PERCENTS])


def c_double(v):
    v = float(v)
    if np.isnan(v):
        return "NAN"
    if np.isinf(v):
        return "INFINITY" if v > 0 else "-INFINITY"
    text = repr(v)
    return text if ("." in text or "e" in text) else text + ".0"


def c_array(values, per_line=6, indent="    "):
    items = [c_double(v) for v in values]
    lines = [indent + ", ".join(items[i:i + per_line]) + "," for i in range(0, len(items), per_line)]
    return "\n".join(lines)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    output = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "stats_reference.h")
    out = []
    w = out.append
    w("/* stats_reference.h - reference values for tests/test_stats.c. GENERATED; do not edit.")
    w("   Regenerate from the repository root with")
    w("       .venv/bin/python tests/gen_stats_reference.py")
    w("   Generated with Python %s, numpy %s, scipy %s." % (
        sys.version.split()[0], np.__version__, scipy.__version__))
    w("   Definitions: see the docstring of tests/gen_stats_reference.py. The bootstrap")
    w("   intervals come from that script's pure-Python mirror of ekv's random stream and")
    w("   resampling (seed %d for the median, %d for the ratio, %d resamples). */"
      % (STATS_SEED, RATIO_SEED, RESAMPLES))
    w("#ifndef EKV_STATS_REFERENCE_H")
    w("#define EKV_STATS_REFERENCE_H")
    w("#include <math.h>")
    w("#include <stddef.h>")
    w("")
    w("#define EKV_REF_STATS_SEED %dULL" % STATS_SEED)
    w("#define EKV_REF_RATIO_SEED %dULL" % RATIO_SEED)
    w("#define EKV_REF_TRIM_COUNT %d" % len(TRIM_PERCENTS))
    w("static const double ekv_ref_trim_percents[EKV_REF_TRIM_COUNT] = {%s};"
      % ", ".join(c_double(p) for p in TRIM_PERCENTS))
    w("")
    w("typedef struct ekv_ref_stats {")
    w("    const char *name;")
    w("    size_t n;")
    w("    const double *samples;")
    w("    double mean, std, cv, median, min, max, q1, q3, iqr, p5, p95, p99;")
    w("    int outliers_mild, outliers_severe;")
    w("    double ci95_mean_lo, ci95_mean_hi, ci95_median_lo, ci95_median_hi;")
    w("    double trimmed_mean[EKV_REF_TRIM_COUNT]; /* at ekv_ref_trim_percents */")
    w("} ekv_ref_stats;")
    w("")
    described = [describe(name, x) for name, x in datasets()]
    for d in described:
        w("static const double ekv_ref_samples_%s[%d] = {" % (d["name"], d["n"]))
        w(c_array(d["x"]))
        w("};")
    w("")
    w("static const ekv_ref_stats ekv_ref_stats_sets[] = {")
    for d in described:
        fields = [d[k] for k in ("mean", "std", "cv", "median", "min", "max", "q1", "q3",
                                 "iqr", "p5", "p95", "p99")]
        w("    {\"%s\", %d, ekv_ref_samples_%s," % (d["name"], d["n"], d["name"]))
        w("     " + ", ".join(c_double(v) for v in fields) + ",")
        w("     %d, %d," % (d["mild"], d["severe"]))
        w("     " + ", ".join(c_double(v) for v in d["ci_mean"] + d["ci_median"]) + ",")
        w("     {" + ", ".join(c_double(v) for v in d["trimmed"]) + "}},")
    w("};")
    w("#define EKV_REF_STATS_COUNT (sizeof ekv_ref_stats_sets / sizeof ekv_ref_stats_sets[0])")
    w("")

    # paired ratio: candidate = the timings, base = 2 x candidate x small paired noise
    timings = next(d["x"] for d in described if d["name"] == "lognormal200")
    noise = np.random.default_rng(99).standard_normal(len(timings))
    base = 2.0 * timings * np.exp(0.05 * noise)
    ratio, lo, hi = bootstrap_ratio(base, timings, RATIO_SEED)
    w("/* ratio median(base) / median(candidate), candidate = ekv_ref_samples_lognormal200 */")
    w("static const double ekv_ref_ratio_base[%d] = {" % len(base))
    w(c_array(base))
    w("};")
    w("static const double ekv_ref_ratio = %s, ekv_ref_ratio_lo = %s, ekv_ref_ratio_hi = %s;"
      % (c_double(ratio), c_double(lo), c_double(hi)))
    w("")

    w("/* the mirror's random stream: ekv_rng_next after ekv_rng_seed(%d) and (%d), and"
      % (RNG_SEEDS[0], RNG_SEEDS[1]))
    w("   ekv_rng_below(%d) after ekv_rng_seed(%d) */" % (BELOW_N, RNG_SEEDS[1]))
    for seed, label in zip(RNG_SEEDS, ("a", "b")):
        rng = Rng(seed)
        w("static const unsigned long long ekv_ref_rng_%s[8] = {%s};" % (
            label, ", ".join("%dULL" % rng.next() for _ in range(8))))
    rng = Rng(RNG_SEEDS[1])
    w("static const unsigned long long ekv_ref_rng_below[8] = {%s};" % ", ".join(
        "%dULL" % rng.below(BELOW_N) for _ in range(8)))
    w("#define EKV_REF_RNG_SEED_A %dULL" % RNG_SEEDS[0])
    w("#define EKV_REF_RNG_SEED_B %dULL" % RNG_SEEDS[1])
    w("#define EKV_REF_RNG_BELOW_N %dULL" % BELOW_N)
    w("")

    w("/* scipy.stats.t.ppf(p, df) for df = 1..%d: ekv_ref_t_ppf[i][df - 1] at p = ekv_ref_t_ppf_p[i] */"
      % PPF_DF_MAX)
    w("#define EKV_REF_PPF_P_COUNT %d" % len(PPF_P))
    w("#define EKV_REF_PPF_DF_MAX %d" % PPF_DF_MAX)
    w("static const double ekv_ref_t_ppf_p[EKV_REF_PPF_P_COUNT] = {%s};"
      % ", ".join(c_double(p) for p in PPF_P))
    w("static const double ekv_ref_t_ppf[EKV_REF_PPF_P_COUNT][EKV_REF_PPF_DF_MAX] = {")
    dfs = np.arange(1, PPF_DF_MAX + 1, dtype=float)
    for p in PPF_P:
        w("  {")
        w(c_array(stats.t.ppf(p, dfs)))
        w("  },")
    w("};")
    w("")
    w("/* scipy.stats.t.cdf(t, df): ekv_ref_t_cdf[i][j] at df = ekv_ref_t_cdf_df[i], t = ekv_ref_t_cdf_t[j] */")
    w("#define EKV_REF_CDF_DF_COUNT %d" % len(CDF_DF))
    w("#define EKV_REF_CDF_T_COUNT %d" % len(CDF_T))
    w("static const double ekv_ref_t_cdf_df[EKV_REF_CDF_DF_COUNT] = {%s};"
      % ", ".join(c_double(v) for v in CDF_DF))
    w("static const double ekv_ref_t_cdf_t[EKV_REF_CDF_T_COUNT] = {%s};"
      % ", ".join(c_double(v) for v in CDF_T))
    w("static const double ekv_ref_t_cdf[EKV_REF_CDF_DF_COUNT][EKV_REF_CDF_T_COUNT] = {")
    for df in CDF_DF:
        w("  {")
        w(c_array([stats.t.cdf(t, df) for t in CDF_T], per_line=5))
        w("  },")
    w("};")
    w("")
    w("#endif")
    with open(output, "w") as f:
        f.write("\n".join(out) + "\n")
    for d in described:
        print("%-13s n=%4d mild=%d severe=%d" % (d["name"], d["n"], d["mild"], d["severe"]),
              file=sys.stderr)
    print("wrote %s" % output, file=sys.stderr)


if __name__ == "__main__":
    main()
