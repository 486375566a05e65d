#!/usr/bin/env python3
"""compare.py - compare two ekv_bench result files, configuration by configuration.

Run:  python bench/compare.py BASE NEW [--threshold 2] [--noise-factor 2] [--markdown]
                                       [--seed N] [--resamples 2000]

BASE and NEW each hold ekv_bench results: one JSON object, a JSON list of objects, or
JSONL (one object per line). Standard library only, Python >= 3.8.

Matching. Two results describe the same workload when the top-level `backend` (the one
that ran, not the one requested) and the configuration keys of WORKLOAD_KEYS agree;
every other configuration key is ignored (label, peak_bw_override_gbs,
backend_requested, device, output paths, quiet, reps, warmup, inner_loops, ...). Keys
that the workload does not use are left out before comparing:
  - sinks applies only to the window and topk policies, observe only to topk;
  - layers, decode_tokens, compress_every and variant apply only to the inference cycle
    (configuration.inference true); there the compression keys (compression, policy,
    recent, sinks, observe, compress_every) apply only to the elastic variant.
Integral floats equal ints (2.0 == 2). A cycle result with --variant=all is split into
its variants (inference_cycle.variants[]). Several results with the same workload in
one file have their samples pooled (noted on stderr): this is how to compare on a
shared machine (see below).

Timing samples: `samples_ms` (per launch), or for the inference cycle the whole-cycle
samples `inference_cycle.samples_ms` (so that a cycle timed on its own and the same
variant out of --variant=all match in units). Lower is better.

The rule. Per matched pair, with m = median and s = IQR / median of each side:
  ratio     = m(NEW) / m(BASE), with a 95% percentile-bootstrap CI (each side resampled
              independently, --resamples times, seeded by --seed and the workload, so a
              row does not depend on which other rows the files hold)
  band      = max(threshold, noise-factor x max(s(BASE), s(NEW)))
  verdict   = "slower"  when the whole CI lies above 1 + band,
              "faster"  when it lies below 1 / (1 + band),
              "same"    when it lies inside [1 / (1 + band), 1 + band],
              "unclear" otherwise (the CI straddles an edge of the band).
Why. The bootstrap CI treats each run's samples as independent draws of one
distribution, so it measures how well each run pins its own median; it says nothing
about how far the median of a second run of the same binary may land. On a shared
machine that run-to-run drift (neighbours' load, frequency, which core) is most of the
noise, and it moves whole runs by amounts comparable to the spread of the samples
within a disturbed run: the interference that spreads one run's samples is the same
that shifts the next run's median. So a change counts only when it is clearly larger
than the threshold (what matters to you) and than the spread either run shows
(IQR / median: robust to the few preempted samples that inflate a standard deviation;
the larger of the two, since a disturbance seen in one run may have moved the other
one whole). The factor 2 was calibrated on this project's 2-core shared machine: 60
repeated CPU runs of each of 3 configurations, at load averages of 1 to 5, where the
medians of back-to-back runs of one binary differed by up to 2-4x. Of the 177 A/A pairs
of back-to-back single runs, the former rule (bootstrap CI and Mann-Whitney p of one
run's samples) flagged 121; this one flags 41 at factor 1 and 23 at factor 2. Pooling 3
interleaved runs per side: 17 of 30 before, 1 of 30 at factor 2. A 1.5x slowdown of a
run of ordinary spread (a few percent) stays far outside the band. What no rule over
two runs can see is a disturbance that lasts exactly one whole run and leaves it tight:
for that, run each side several times, interleaved (BASE, NEW, BASE, NEW, ...
appending with --jsonl), and compare pools the runs, their spread then showing the
drift. On a quiet machine, where each run's IQR/median is under half the threshold,
the threshold alone decides.

Notes per pair (never a failure): builds that differ (ekv_version, build.compiler,
build.optimized, build.flags, build.git_commit; files without them are said to lack
them), devices that differ (gpu.name), measurement settings that differ (reps, warmup,
inner_loops, cuda_graphs, paired_baseline, truncate_percent), and, on a change judged
from one run on a side, that repeated runs should confirm it.

Exit status: 1 when any configuration is slower, 0 otherwise, 2 on bad input (missing
file, unparseable JSON, a result without samples, no configuration in common).
"""

import argparse
import json
import math
import random
import sys
import zlib

# configuration keys that change what is timed; everything else in `configuration` is
# how it was measured or reported, and is ignored for matching
WORKLOAD_KEYS = (
    "seq_len", "batch", "heads", "kv_heads", "head_dim", "compression", "kv_dtype",
    "policy", "recent", "sinks", "observe", "data", "seed", "softmax_scale", "hot",
    "inference", "layers", "decode_tokens", "compress_every", "variant",
    "gqa_mode",  # peers (bench/peers.py): enable_gqa or expanded K/V read different bytes
    "page_size",  # 0 = contiguous; results from before --page-size have none: contiguous
)
# keys that apply only to some workloads (see the module docstring)
POLICY_ONLY = {"sinks": ("window", "topk"), "observe": ("topk",)}
CYCLE_ONLY = ("layers", "decode_tokens", "compress_every", "variant")
COMPRESSION_KEYS = ("compression", "policy", "recent", "sinks", "observe", "compress_every")
# how a run was measured: a difference is noted, not a mismatch
MEASUREMENT_KEYS = ("reps", "warmup", "inner_loops", "cuda_graphs", "paired_baseline",
                    "truncate_percent")
# build identity: top-level ekv_version and these keys of `build`
BUILD_KEYS = ("compiler", "optimized", "flags", "git_commit")

CONFIDENCE = 0.95
FEW_SAMPLES = 10


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


def cycle_variant(record):
    """The inference-cycle variant a result holds, or None for an attention run."""
    if not (get_path(record, "configuration.inference") or
            isinstance(record.get("inference_cycle"), dict)):
        return None
    return (get_path(record, "inference_cycle.variant") or record.get("variant")
            or get_path(record, "configuration.variant"))


def workload(record):
    """The keys that identify a result's workload (see the module docstring): the
    applicable WORKLOAD_KEYS of `configuration` plus the backend that ran."""
    configuration = record.get("configuration")
    if not isinstance(configuration, dict):
        configuration = {}
    keys = {name: canonical(configuration.get(name)) for name in WORKLOAD_KEYS}
    if configuration.get("page_size") is None:
        keys["page_size"] = canonical(0)
    variant = cycle_variant(record)
    if variant is None:
        for name in CYCLE_ONLY:
            keys.pop(name)
    else:
        keys["inference"] = True
        keys["variant"] = variant
        if variant != "elastic":
            for name in COMPRESSION_KEYS:
                keys.pop(name, None)
    for name, policies in POLICY_ONLY.items():
        if name in keys and keys.get("policy") not in policies:
            keys.pop(name)
    if keys.get("gqa_mode") is None:
        keys.pop("gqa_mode")  # ekv's own results: GQA is always read once per group
    keys["backend"] = record.get("backend")
    return keys


def workload_id(keys):
    return json.dumps(keys, sort_keys=True)


def expand_cycles(record):
    """A --variant=all result as one result per variant; any other result as itself."""
    variants = get_path(record, "inference_cycle.variants")
    if not isinstance(variants, list):
        return [record]
    expanded = []
    for part in variants:
        if isinstance(part, dict):
            copy = dict(record)
            copy["inference_cycle"] = part
            copy["variant"] = part.get("variant")
            expanded.append(copy)
    return expanded


def samples_of(record, path, index):
    samples = get_path(record, "inference_cycle.samples_ms") or record.get("samples_ms")
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
    """{workload id: {"keys", "samples", "record", "runs"}}, in first-seen order."""
    groups = {}
    for index, record in enumerate(records, 1):
        if not isinstance(record.get("configuration"), dict):
            print(f"compare.py: {path}: result {index} has no configuration object; "
                  f"matching it on the backend only", file=sys.stderr)
        for part in expand_cycles(record):
            keys = workload(part)
            key = workload_id(keys)
            samples = samples_of(part, path, index)
            if key in groups:
                groups[key]["samples"].extend(samples)
                groups[key]["runs"] += 1
            else:
                groups[key] = {"keys": keys, "samples": samples, "record": part, "runs": 1}
    pooled = sum(1 for group in groups.values() if group["runs"] > 1)
    if pooled:
        print(f"compare.py: {path}: {pooled} workloads ran more than once; pooling their "
              f"samples", file=sys.stderr)
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


def relative_spread(values):
    """IQR / median (0 for a zero median)."""
    ordered = sorted(values)
    middle = median(ordered)
    if middle <= 0:
        return 0.0
    return (percentile(ordered, 0.75) - percentile(ordered, 0.25)) / middle


def bootstrap_ratio_ci(base, new, resamples, rng, confidence=CONFIDENCE):
    """Percentile bootstrap CI of median(new) / median(base)."""
    ratios = []
    for _ in range(resamples):
        base_median = median(rng.choices(base, k=len(base)))
        new_median = median(rng.choices(new, k=len(new)))
        ratios.append(new_median / base_median if base_median > 0 else math.inf)
    ratios.sort()
    tail = (1 - confidence) / 2
    return percentile(ratios, tail), percentile(ratios, 1 - tail)


def noise_band(spread_base, spread_new, threshold, noise_factor):
    """The relative change that counts (fraction, 0.02 = 2%)."""
    return max(threshold, noise_factor * max(spread_base, spread_new))


def verdict(ci, band):
    low, high = ci
    if low > 1 + band:
        return "slower"
    if high < 1 / (1 + band):
        return "faster"
    if low >= 1 / (1 + band) and high <= 1 + band:
        return "same"
    return "unclear"


def compare_pair(base, new, threshold, noise_factor, resamples, seed, key):
    """One row: medians, ratio, its CI, spreads, band (fractions) and verdict."""
    base_median, new_median = median(base), median(new)
    if base_median <= 0:
        raise InputError(f"BASE median is {base_median} ms for {key}; cannot form a ratio")
    rng = random.Random((seed << 32) ^ zlib.crc32(key.encode()))
    ci = bootstrap_ratio_ci(base, new, resamples, rng)
    spreads = (relative_spread(base), relative_spread(new))
    band = noise_band(*spreads, threshold, noise_factor)
    return {
        "n_base": len(base), "n_new": len(new),
        "median_base": base_median, "median_new": new_median,
        "ratio": new_median / base_median, "ci": ci, "spreads": spreads, "band": band,
        "verdict": verdict(ci, band),
        "few_samples": min(len(base), len(new)) < FEW_SAMPLES,
    }


# ---------------------------------------------------------------- notes

def build_identity(record):
    """{name: value} of the build identity keys the result records (absent: left out)."""
    identity = {}
    if "ekv_version" in record:
        identity["ekv_version"] = record["ekv_version"]
    build = record.get("build")
    if isinstance(build, dict):
        for name in BUILD_KEYS:
            if name in build:
                identity[name] = build[name]
    return identity


def differences(first, second, names):
    return [f"{name} {value_text(first.get(name))} -> {value_text(second.get(name))}"
            for name in names if canonical(first.get(name)) != canonical(second.get(name))]


def pair_notes(base_record, new_record):
    """Short notes on what differs between two matched results besides the workload."""
    notes = []
    base_build, new_build = build_identity(base_record), build_identity(new_record)
    recorded = [side for side, build in (("BASE", base_build), ("NEW", new_build))
                if any(name in build for name in BUILD_KEYS)]
    if len(recorded) == 1:
        missing = "NEW" if recorded == ["BASE"] else "BASE"
        notes.append(f"build identity ({', '.join(BUILD_KEYS)}) not recorded in {missing}")
    names = [name for name in ("ekv_version",) + BUILD_KEYS
             if name in base_build and name in new_build]
    changed = differences(base_build, new_build, names)
    if changed:
        notes.append("build differs: " + "; ".join(changed))
    base_device, new_device = get_path(base_record, "gpu.name"), get_path(new_record, "gpu.name")
    if base_device != new_device:
        notes.append(f"device differs: {value_text(base_device)} -> {value_text(new_device)}")
    configuration = [record.get("configuration") if isinstance(record.get("configuration"), dict)
                     else {} for record in (base_record, new_record)]
    changed = differences(configuration[0], configuration[1], MEASUREMENT_KEYS)
    if changed:
        notes.append("measured differently: " + "; ".join(changed))
    return notes


# ---------------------------------------------------------------- output

def value_text(value):
    return value if isinstance(value, str) else json.dumps(value)


def describe(keys, shown):
    parts = [f"{name}={value_text(keys[name])}" for name in shown if name in keys]
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
                    "workload, the ratio of medians NEW/BASE with a bootstrap 95%% CI, "
                    "judged against the larger of the threshold and the runs' own "
                    "spread (noise factor x IQR/median). See the module docstring for "
                    "the rule and why.",
        epilog="Workload keys: backend, " + ", ".join(WORKLOAD_KEYS)
               + ". Exit status: 1 if any workload is slower, 0 otherwise, "
                 "2 on bad input.")
    parser.add_argument("base", metavar="BASE", help="reference results (JSON or JSONL)")
    parser.add_argument("new", metavar="NEW", help="results to judge (JSON or JSONL)")
    parser.add_argument("--threshold", type=float, default=2.0,
                        help="smallest change in percent that counts (default 2)")
    parser.add_argument("--noise-factor", type=float, default=2.0,
                        help="multiple of the larger IQR/median of the two runs that a "
                             "change must also exceed (default 2)")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    parser.add_argument("--seed", type=int, default=1, help="bootstrap seed (default 1)")
    parser.add_argument("--resamples", type=int, default=2000,
                        help="bootstrap resamples (default 2000, at least 100)")
    arguments = parser.parse_args(argv)
    if not (arguments.threshold >= 0 and math.isfinite(arguments.threshold)):
        parser.error("--threshold must be a finite number >= 0")
    if not (arguments.noise_factor >= 0 and math.isfinite(arguments.noise_factor)):
        parser.error("--noise-factor must be a finite number >= 0")
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
        raise InputError(f"no workload in {arguments.new} matches one in {arguments.base} "
                         f"(compared: backend and the configuration keys "
                         f"{', '.join(WORKLOAD_KEYS)})")

    all_keys = [group["keys"] for group in base_groups.values()] + \
               [group["keys"] for group in new_groups.values()]
    shown = varying_keys(all_keys)
    common = {name: value for name, value in all_keys[0].items() if name not in shown}

    threshold = arguments.threshold / 100
    rows, notes, counts = [], [], {"slower": 0, "faster": 0, "same": 0, "unclear": 0}
    for index, key in enumerate(matched, 1):
        if len(matched) > 20 and (index % max(1, len(matched) // 10) == 0
                                  or index == len(matched)):
            print(f"compare.py: bootstrap {index}/{len(matched)} workloads", file=sys.stderr)
        base, new = base_groups[key], new_groups[key]
        c = compare_pair(base["samples"], new["samples"], threshold, arguments.noise_factor,
                         arguments.resamples, arguments.seed, key)
        counts[c["verdict"]] += 1
        name = describe(base["keys"], shown)
        rows.append([name, c["n_base"], c["n_new"],
                     f"{c['median_base']:#.4g}", f"{c['median_new']:#.4g}",
                     f"{c['ratio']:.3f}" + ("*" if c["few_samples"] else ""),
                     f"[{c['ci'][0]:.3f}, {c['ci'][1]:.3f}]",
                     f"{c['spreads'][0] * 100:.1f}% / {c['spreads'][1] * 100:.1f}%",
                     f"[{1 / (1 + c['band']):.3f}, {1 + c['band']:.3f}]", c["verdict"]])
        remarks = pair_notes(base["record"], new["record"])
        if c["verdict"] in ("slower", "faster") and min(base["runs"], new["runs"]) == 1:
            remarks.append("one run on a side: a disturbance lasting a whole run looks like "
                        "this too; confirm with runs repeated alternately (--jsonl appends)")
        notes.extend((f"{name}: " if len(matched) > 1 else "") + note for note in remarks)

    header = ["workload", "n base", "n new", "base ms", "new ms", "new/base", "95% CI",
              "IQR/median", "band", "verdict"]
    bullet = "- " if arguments.markdown else ""
    out = [f"{bullet}base: {arguments.base}", f"{bullet}new:  {arguments.new}",
           f"{bullet}common: " + describe(common, list(common)),
           f"{bullet}a change counts when the 95% CI of new/base lies outside the band "
           f"[1/(1+b), 1+b], b = max({arguments.threshold:g}%, {arguments.noise_factor:g} x "
           f"the larger IQR/median); {arguments.resamples} bootstrap resamples "
           f"(seed {arguments.seed})",
           "", format_table(header, rows, arguments.markdown), ""]
    if any(row[5].endswith("*") for row in rows):
        marker = "\\*" if arguments.markdown else "*"
        out.append(f"{marker} fewer than {FEW_SAMPLES} samples on a side: the CI and the "
                   f"spread are rough")
    out.append(f"{len(rows)} compared: " +
               ", ".join(f"{counts[name]} {name}" for name in counts))
    if notes:
        out.append("notes:")
        out.extend((bullet or "  ") + note for note in notes)
    if not any(name in build_identity(group["record"]) for name in BUILD_KEYS
               for group in list(base_groups.values()) + list(new_groups.values())):
        out.append(f"build identity ({', '.join('build.' + name for name in BUILD_KEYS)}) "
                   f"not recorded in either file: builds cannot be told apart")
    for label, keys_list, groups, path in (
            ("only in BASE", only_base, base_groups, arguments.base),
            ("only in NEW", only_new, new_groups, arguments.new)):
        if keys_list:
            out.append(f"{len(keys_list)} {label} ({path}):")
            out.extend((bullet or "  ") + describe(groups[key]["keys"],
                                                   list(groups[key]["keys"]))
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
