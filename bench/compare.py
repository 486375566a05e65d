#!/usr/bin/env python3
"""compare.py - compare two ekv_bench result files, configuration by configuration.

Run:  python bench/compare.py BASE NEW [--threshold 2] [--markdown] [--seed N]
                                       [--resamples 2000]

BASE and NEW each hold ekv_bench results: one JSON object, a JSON list of objects, or
JSONL (one object per line). Standard library only.

Matching. Two results describe the same workload when these agree:
  - top-level `backend` and `variant`;
  - every key of `configuration` except these measurement keys (MEASUREMENT_KEYS),
    which say how a workload was timed or reported, not what was timed:
        reps warmup inner_loops seed label truncate truncate_percent no_graphs
        cuda_graphs graphs json jsonl out quiet dump_dir device peak_bw
        paired_baseline baseline_dtype version help
    So seq_len, batch, heads, kv_heads, head_dim, compression, kv_dtype, policy, recent,
    sinks, observe, data, hot, layers, decode_tokens, variant, ... must all agree.
    Integral floats equal ints (2.0 == 2). A top-level null `variant` falls back to
    configuration.variant.
Several results with the same workload in one file have their samples pooled (noted
on stderr).

Per matched pair, on the raw timing samples `samples_ms` (lower is better):
  change %  = (median(new) / median(base) - 1) * 100
  CI95      = percentile bootstrap of that change: each side resampled independently
              with replacement, --resamples times, seeded by --seed and the workload
              (so a row does not depend on which other rows the files hold)
  p         = two-sided Mann-Whitney U, normal approximation with tie correction and
              continuity correction (as scipy.stats.mannwhitneyu(method="asymptotic"));
              accurate enough for n >= 8 per side, rows with fewer samples are flagged
  verdict   = "slower"/"faster" when p < 0.05, |change| > threshold and the CI
              excludes 0; else "same" when the CI lies inside +-threshold; else "noisy"

Exit status: 1 when any configuration is slower, 0 otherwise, 2 on bad input (missing
file, unparseable JSON, a result without samples_ms, no configuration in common).
"""

import argparse
import json
import math
import random
import sys
import zlib

# configuration keys that describe how a run was measured, not the workload
MEASUREMENT_KEYS = frozenset((
    "reps", "warmup", "inner_loops", "seed", "label", "truncate", "truncate_percent",
    "no_graphs", "cuda_graphs", "graphs", "json", "jsonl", "out", "quiet", "dump_dir",
    "device", "peak_bw", "paired_baseline", "baseline_dtype", "version", "help",
))

MIN_SAMPLES_FOR_NORMAL_APPROXIMATION = 8
SIGNIFICANCE = 0.05


class InputError(Exception):
    """Bad input: main() prints the message on one line and exits with status 2."""


# ---------------------------------------------------------------- loading results

def load_results(path):
    """Return the list of result objects in PATH (JSON object, JSON list, or JSONL)."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as error:
        raise InputError(f"{path}: cannot read: {error.strerror or error}") from None
    if not text.strip():
        raise InputError(f"{path}: file is empty, expected JSON or JSONL results")
    try:
        document = json.loads(text)
        records = document if isinstance(document, list) else [document]
        where = "item"
    except json.JSONDecodeError as whole_error:
        lines = [(number, line) for number, line in enumerate(text.splitlines(), 1)
                 if line.strip()]
        if len(lines) < 2:
            raise InputError(f"{path}: not valid JSON: {whole_error}") from None
        records = []
        for number, line in lines:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                if not records:  # not JSONL either: report the whole-document error
                    raise InputError(f"{path}: not valid JSON: {whole_error}") from None
                raise InputError(f"{path}: line {number}: not valid JSON: {error}") from None
        where = "line"
    if not records:
        raise InputError(f"{path}: holds no results")
    for index, record in enumerate(records, 1):
        if not isinstance(record, dict):
            raise InputError(f"{path}: {where} {index}: expected a JSON object, got "
                             f"{type(record).__name__}")
    return records


def get_path(record, dotted, default=None):
    """record['a']['b'] for 'a.b'; DEFAULT where a key is missing, null or not an object."""
    value = record
    for part in dotted.split("."):
        if not isinstance(value, dict) or value.get(part) is None:
            return default
        value = value[part]
    return value


def canonical(value):
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def workload(record):
    """The dict of keys that identify a result's workload (see the module docstring)."""
    configuration = record.get("configuration")
    if not isinstance(configuration, dict):
        configuration = {}
    keys = {name: canonical(value) for name, value in configuration.items()
            if name not in MEASUREMENT_KEYS}
    keys["backend"] = record.get("backend")
    if record.get("variant") is not None:
        keys["variant"] = canonical(record["variant"])
    keys.setdefault("variant", None)
    return keys


def workload_id(keys):
    return json.dumps(keys, sort_keys=True)


def samples_of(record, path, index):
    samples = record.get("samples_ms")
    if not isinstance(samples, list) or not samples:
        raise InputError(f"{path}: result {index} has no samples_ms (run ekv_bench with "
                         f"--json or --jsonl to record raw samples)")
    for sample in samples:
        if isinstance(sample, bool) or not isinstance(sample, (int, float)) \
                or not math.isfinite(sample) or sample < 0:
            raise InputError(f"{path}: result {index}: samples_ms holds {sample!r}, "
                             f"expected finite non-negative numbers")
    return [float(sample) for sample in samples]


def group_by_workload(records, path):
    """{workload id: (workload keys, pooled samples)}, in first-seen order."""
    groups = {}
    for index, record in enumerate(records, 1):
        if not isinstance(record.get("configuration"), dict):
            print(f"compare.py: {path}: result {index} has no configuration object; "
                  f"matching it on backend and variant only", file=sys.stderr)
        keys = workload(record)
        key = workload_id(keys)
        samples = samples_of(record, path, index)
        if key in groups:
            print(f"compare.py: {path}: result {index} repeats a workload; pooling its "
                  f"samples", file=sys.stderr)
            groups[key][1].extend(samples)
        else:
            groups[key] = (keys, samples)
    return groups


# ---------------------------------------------------------------- statistics

def median(values):
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def percentile(ordered, fraction):
    """Linear interpolation between order statistics (numpy's default method)."""
    position = fraction * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def mann_whitney_p(first, second):
    """Two-sided Mann-Whitney U p-value: normal approximation, tie and continuity
    corrections. Equals scipy.stats.mannwhitneyu(first, second, method="asymptotic")."""
    n1, n2 = len(first), len(second)
    n = n1 + n2
    pooled = sorted([(value, 0) for value in first] + [(value, 1) for value in second])
    rank_sum_first = 0.0
    tie_term = 0.0
    start = 0
    while start < n:
        end = start
        while end + 1 < n and pooled[end + 1][0] == pooled[start][0]:
            end += 1
        midrank = (start + end) / 2 + 1
        ties = end - start + 1
        tie_term += ties ** 3 - ties
        rank_sum_first += midrank * sum(1 for i in range(start, end + 1) if pooled[i][1] == 0)
        start = end + 1
    u_first = rank_sum_first - n1 * (n1 + 1) / 2
    u = max(u_first, n1 * n2 - u_first)
    variance = n1 * n2 / 12 * ((n + 1) - tie_term / (n * (n - 1))) if n > 1 else 0.0
    if variance <= 0:
        return 1.0
    z = (u - n1 * n2 / 2 - 0.5) / math.sqrt(variance)
    return min(1.0, math.erfc(z / math.sqrt(2)))


def bootstrap_change_ci(base, new, resamples, rng, confidence=0.95):
    """Percentile bootstrap CI of (median(new)/median(base) - 1) * 100."""
    changes = []
    for _ in range(resamples):
        base_median = median(rng.choices(base, k=len(base)))
        new_median = median(rng.choices(new, k=len(new)))
        changes.append((new_median / base_median - 1) * 100 if base_median > 0 else math.inf)
    changes.sort()
    tail = (1 - confidence) / 2
    return percentile(changes, tail), percentile(changes, 1 - tail)


def verdict(change, ci, p, threshold):
    low, high = ci
    if p < SIGNIFICANCE and abs(change) > threshold and (low > 0 or high < 0):
        return "slower" if change > 0 else "faster"
    if -threshold <= low and high <= threshold:
        return "same"
    return "noisy"


def compare_pair(base, new, threshold, resamples, seed, key):
    base_median, new_median = median(base), median(new)
    if base_median <= 0:
        raise InputError(f"BASE median is {base_median} ms for {key}; cannot form a ratio")
    rng = random.Random((seed << 32) ^ zlib.crc32(key.encode()))
    change = (new_median / base_median - 1) * 100
    ci = bootstrap_change_ci(base, new, resamples, rng)
    p = mann_whitney_p(base, new)
    return {
        "n_base": len(base), "n_new": len(new),
        "median_base": base_median, "median_new": new_median,
        "change": change, "ci": ci, "p": p,
        "verdict": verdict(change, ci, p, threshold),
        "few_samples": min(len(base), len(new)) < MIN_SAMPLES_FOR_NORMAL_APPROXIMATION,
    }


# ---------------------------------------------------------------- output

def value_text(value):
    return value if isinstance(value, str) else json.dumps(value)


def describe(keys, shown):
    parts = [f"{name}={value_text(keys.get(name))}" for name in shown]
    return " ".join(parts) if parts else "-"


def varying_keys(all_keys):
    names = []
    for keys in all_keys:
        names.extend(name for name in keys if name not in names)
    return [name for name in names
            if len({json.dumps(keys.get(name), sort_keys=True) for keys in all_keys}) > 1]


def format_table(header, rows, markdown):
    if markdown:
        def cell(text):
            return str(text).replace("|", "\\|").replace("*", "\\*")
        lines = ["| " + " | ".join(cell(h) for h in header) + " |",
                 "|" + "|".join(" --- " if i == 0 else " ---: " for i in range(len(header)))
                 + "|"]
        lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(str(row[i])) for row in [header] + rows) for i in range(len(header))]
    def line(row):
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(row, widths))).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def parse_arguments(argv):
    parser = argparse.ArgumentParser(
        prog="compare.py",
        description="Compare two ekv_bench result files (JSON or JSONL): per matched "
                    "configuration, the median change with a bootstrap 95%% CI, a "
                    "Mann-Whitney U p-value and a verdict.",
        epilog="Matching ignores these configuration keys: "
               + ", ".join(sorted(MEASUREMENT_KEYS))
               + ". Exit status: 1 if any configuration is slower, 0 otherwise, "
                 "2 on bad input.")
    parser.add_argument("base", metavar="BASE", help="reference results (JSON or JSONL)")
    parser.add_argument("new", metavar="NEW", help="results to judge (JSON or JSONL)")
    parser.add_argument("--threshold", type=float, default=2.0,
                        help="percent change that counts (default 2)")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    parser.add_argument("--seed", type=int, default=1, help="bootstrap seed (default 1)")
    parser.add_argument("--resamples", type=int, default=2000,
                        help="bootstrap resamples (default 2000, at least 100)")
    arguments = parser.parse_args(argv)
    if not (arguments.threshold >= 0 and math.isfinite(arguments.threshold)):
        parser.error("--threshold must be a finite number >= 0")
    if arguments.resamples < 100:
        parser.error("--resamples must be at least 100")
    if arguments.seed < 0:
        parser.error("--seed must be >= 0")
    return arguments


def run(arguments):
    base_groups = group_by_workload(load_results(arguments.base), arguments.base)
    new_groups = group_by_workload(load_results(arguments.new), arguments.new)
    matched = [key for key in base_groups if key in new_groups]
    only_base = [key for key in base_groups if key not in new_groups]
    only_new = [key for key in new_groups if key not in base_groups]
    if not matched:
        raise InputError(f"no configuration in {arguments.new} matches one in "
                         f"{arguments.base} (compared keys: configuration minus "
                         f"measurement keys, plus backend and variant)")

    all_keys = [keys for keys, _ in base_groups.values()] + \
               [keys for keys, _ in new_groups.values()]
    shown = varying_keys(all_keys)
    common = {name: value for name, value in all_keys[0].items() if name not in shown}

    comparisons = []
    for index, key in enumerate(matched, 1):
        if len(matched) > 20 and (index % max(1, len(matched) // 10) == 0
                                  or index == len(matched)):
            print(f"compare.py: bootstrap {index}/{len(matched)} configurations",
                  file=sys.stderr)
        comparisons.append((key, compare_pair(base_groups[key][1], new_groups[key][1],
                                              arguments.threshold, arguments.resamples,
                                              arguments.seed, key)))

    header = ["configuration", "n base", "n new", "base ms", "new ms", "change",
              "95% CI", "p", "verdict"]
    rows = []
    for key, c in comparisons:
        rows.append([describe(base_groups[key][0], shown), c["n_base"], c["n_new"],
                     f"{c['median_base']:#.4g}", f"{c['median_new']:#.4g}",
                     f"{c['change']:+.2f}%",
                     f"[{c['ci'][0]:+.2f}, {c['ci'][1]:+.2f}]%",
                     f"{c['p']:.2g}" + ("*" if c["few_samples"] else ""),
                     c["verdict"]])

    counts = {name: sum(1 for _, c in comparisons if c["verdict"] == name)
              for name in ("faster", "slower", "same", "noisy")}
    bullet = "- " if arguments.markdown else ""
    out = [f"{bullet}base: {arguments.base}", f"{bullet}new:  {arguments.new}",
           f"{bullet}common: " + describe(common, list(common)),
           f"{bullet}threshold {arguments.threshold:g}%, {arguments.resamples} bootstrap "
           f"resamples (seed {arguments.seed}), Mann-Whitney U at p < {SIGNIFICANCE}",
           "", format_table(header, rows, arguments.markdown), ""]
    if any(c["few_samples"] for _, c in comparisons):
        marker = "\\*" if arguments.markdown else "*"
        out.append(f"{marker} fewer than {MIN_SAMPLES_FOR_NORMAL_APPROXIMATION} samples "
                   f"on a side: the p-value's normal approximation is rough")
    out.append(f"{len(comparisons)} compared: " +
               ", ".join(f"{counts[name]} {name}" for name in counts))
    for label, keys_list, path in (("only in BASE", only_base, arguments.base),
                                   ("only in NEW", only_new, arguments.new)):
        if keys_list:
            groups = base_groups if path == arguments.base else new_groups
            out.append(f"{len(keys_list)} {label} ({path}):")
            out.extend((bullet or "  ") + describe(groups[key][0], list(groups[key][0]))
                       for key in keys_list)
    print("\n".join(out))
    return 1 if counts["slower"] else 0


def main(argv=None):
    arguments = parse_arguments(sys.argv[1:] if argv is None else argv)
    try:
        return run(arguments)
    except InputError as error:
        print(f"compare.py: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
