#!/usr/bin/env python3
"""plot.py - figures from ekv_bench results (JSON object, JSON list or JSONL).

Run:  python bench/plot.py KIND FILES... [-o out.png] [--svg]

KIND (each also has --help):
  speedup    results.speedup_vs_baseline (else baseline.speedup) vs
             configuration.compression, one line per policy; error bars from
             baseline.speedup_ci95{lo,hi} (needs --paired-baseline)
  accuracy   accuracy.error_total.rel_l2 vs configuration.compression, one line per
             policy and kv_dtype, log y
  tradeoff   speedup (with its CI bars) vs accuracy.error_total.rel_l2 (log x), one
             marker set per kv_dtype and policy, each point labelled with its C, and
             the Pareto front of each set (no other point of the set is both faster and
             more accurate) drawn as a line
  bandwidth  results.memory_bandwidth_gbs vs configuration.seq_len, one line per kv_dtype;
             horizontal lines at metrics.peak_bw_theoretical_gbs (else
             gpu.theoretical_bw_gbs) and metrics.peak_bw_measured_gbs when present
  cycle      inference_cycle.series[]{context_len, latency_ms, kv_cache_bytes}: latency
             and KV cache size vs context length, one line per inference_cycle.variant
             (a --variant=all result gives one line per variant)

Series. Lines (marker sets for tradeoff) are split by the workload keys of
bench/compare.py (the flags a sweep varies: configuration.seq_len, compression, policy,
kv_dtype, ...; the backend that ran), never by derived fields: a key that equals its
default derivation from another key in every plotted result (kv_heads = heads,
compress_every = compression, softmax_scale = 1/sqrt(head_dim)) is not a series of its
own, and keys a workload does not use (sinks under stride, the cycle's keys in an
attention run) are left out. The figure's x key never splits a line.

Layout. The title names the figure and the device; a second line lists the workload
keys that are constant in the figure and differ from ekv_bench's defaults (a constant
at its default is not repeated). The legend sits outside the axes, to the right. A
value axis turns logarithmic when the plotted values span a factor of 10 or more (for
the cycle's latency: the variants' median latencies, so that nocache's recomputation
does not squash the cached variants to zero).

Writes a PNG (Agg backend), plus the same name with .svg under --svg, and prints the
paths written. Exit status 2, with a one-line message, when the input cannot be read or
lacks what the figure needs.
"""

import argparse
import math
import os
import sys
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from cycler import cycler  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import (InputError, expand_cycles, get_path, load_results,  # noqa: E402
                     median, value_text, workload)

# ekv_bench's defaults, for the title only: a constant at its default is not repeated
DEFAULTS = {"seq_len": 1024, "batch": 1, "heads": 16, "head_dim": 64, "compression": 2,
            "kv_dtype": "f16", "policy": "stride", "recent": 0, "sinks": 4,
            "observe": 16, "data": "structured", "seed": 42, "hot": False,
            "inference": False, "layers": 1, "decode_tokens": 64, "variant": "elastic"}
# keys whose default is derived from another key: name -> (source key, derivation)
DERIVED = {
    "kv_heads": ("heads", lambda heads: heads),
    "compress_every": ("compression", lambda compression: compression),
    "softmax_scale": ("head_dim", lambda dim: 1 / math.sqrt(dim)),
}
LOG_SPAN = 10.0  # a value axis spanning this factor or more is drawn on a log scale


def number(record, *paths):
    """The first of PATHS that holds a finite number, as float; None if none does."""
    for path in paths:
        value = get_path(record, path)
        if isinstance(value, (int, float)) and not isinstance(value, bool) \
                and math.isfinite(value):
            return float(value)
    return None


def device_text(records):
    devices = []
    for record in records:
        name = get_path(record, "gpu.name")
        backend = record.get("backend") or "unknown backend"
        text = f"{name} ({backend})" if name else backend
        if text not in devices:
            devices.append(text)
    return ", ".join(devices)


def require(used, total, needs, kind):
    if not used:
        raise InputError(f"no result in the input has {needs} (needed for '{kind}')")
    if len(used) < total:
        print(f"plot.py: {kind}: skipped {total - len(used)} of {total} results lacking "
              f"{needs}", file=sys.stderr)


# ---------------------------------------------------------------- series keys

def is_derived(name, keyed):
    """True when NAME equals its default derivation in every result that has it."""
    if name not in DERIVED:
        return False
    source, derive = DERIVED[name]
    for keys in keyed:
        if name not in keys:
            continue
        value, origin = keys[name], keys.get(source)
        if not isinstance(value, (int, float)) or not isinstance(origin, (int, float)):
            return False
        if not math.isclose(value, derive(origin), rel_tol=1e-6):
            return False
    return True


def split_keys(keyed, primary, x_key):
    """(keys that label a series, {constant key: value} for the title).

    primary keys always label a series; other keys only when they take more than one
    value among the plotted results that have them; the x key never does."""
    names = []
    for keys in keyed:
        names.extend(name for name in keys if name not in names)
    names = [name for name in names if name != x_key and not is_derived(name, keyed)]
    varying = [name for name in names if name not in primary and
               len({value_text(keys[name]) for keys in keyed if name in keys}) > 1]
    shown = [name for name in primary if any(name in keys for keys in keyed)] + varying
    common = {}
    for name in names:
        values = [keys[name] for keys in keyed if keys.get(name) is not None]
        if name in shown or name in ("backend", "inference") or not values:
            continue
        if DEFAULTS.get(name, object()) != values[0]:
            common[name] = values[0]
    return shown, common


def series_label(keys, shown, primary):
    """Primary keys by value, the others as name=value; keys a workload lacks left out."""
    parts = []
    for name in shown:
        if name not in keys:
            continue
        parts.append(value_text(keys[name]) if name in primary
                     else f"{name}={value_text(keys[name])}")
    return ", ".join(parts) or "all"


# ---------------------------------------------------------------- layout

# ten colours, then the same colours dashed, dotted, ...: up to 40 distinguishable lines
LINE_STYLES = (cycler(linestyle=["-", "--", ":", "-."])
               * cycler(color=plt.get_cmap("tab10").colors))


def axes(columns=1):
    fig, grid = plt.subplots(1, columns, figsize=(6.5 * columns + 1.5, 5),
                             layout="constrained", squeeze=False)
    for ax in grid[0]:
        ax.set_prop_cycle(LINE_STYLES)
        ax.grid(True, which="major", alpha=0.3)
    return fig, list(grid[0])


def title(fig, heading, records, common):
    """Left-aligned over the axes, wrapped to their width (call before place_legend,
    which widens the figure for the legend)."""
    characters_per_line = int(fig.get_size_inches()[0] * 12)
    lines = textwrap.wrap(f"{heading} - {device_text(records)}", characters_per_line)
    if common:
        lines += textwrap.wrap("fixed: " + ", ".join(f"{name}={value_text(value)}"
                                                     for name, value in common.items()),
                               characters_per_line)
    fig.suptitle("\n".join(lines), fontsize=10, x=0.02, horizontalalignment="left")


def place_legend(fig, panels, heading=None):
    """One legend for the figure, outside the axes on the right (never over the data)."""
    handles, labels = [], []
    for ax in panels:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    if not handles:
        return
    columns = 1 if len(handles) <= 24 else 2
    fig.legend(handles, labels, loc="outside right upper", fontsize="small",
               title=heading, title_fontsize="small", ncols=columns)
    width, height = fig.get_size_inches()
    rows = math.ceil(len(handles) / columns)
    fig.set_size_inches(width + 2.5 * columns, max(height, 1.5 + 0.2 * rows))


def log2_axis(ax, values):
    ticks = sorted(set(values))
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([value_text(int(t) if float(t).is_integer() else t) for t in ticks])


def value_scale(ax, values):
    """A logarithmic y axis when the positive VALUES span LOG_SPAN or more; True if so."""
    positive = [v for v in values if v is not None and v > 0]
    if positive and max(positive) / min(positive) >= LOG_SPAN:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        return True
    return False


# ---------------------------------------------------------------- point figures

def collect(records, kind, x_of, y_of, needs, primary, x_key, extra_of=None):
    """Results that have an x and a y, grouped into series.

    Returns ({label: sorted [(x, y, extra)]}, used records, shown keys, common keys);
    several results at one x of a series are averaged (noted on stderr)."""
    used, keyed, points = [], [], []
    for record in records:
        x, y = x_of(record), y_of(record)
        if x is not None and y is not None:
            used.append(record)
            keyed.append(workload(record))
            points.append((x, y, extra_of(record) if extra_of else None))
    require(used, len(records), needs, kind)
    shown, common = split_keys(keyed, primary, x_key)
    grouped = {}
    for keys, point in zip(keyed, points):
        grouped.setdefault(series_label(keys, shown, primary), []).append(point)
    series = {}
    for label, group in grouped.items():
        by_x = {}
        for x, y, extra in group:
            by_x.setdefault(x, []).append((y, extra))
        merged = []
        for x, values in sorted(by_x.items()):
            if len(values) > 1:
                print(f"plot.py: {kind}: {len(values)} results at {x_key}={x:g} for "
                      f"'{label}'; plotting their mean", file=sys.stderr)
            extras = [e for _, e in values if e is not None]
            merged.append((x, sum(y for y, _ in values) / len(values),
                           (min(e[0] for e in extras), max(e[1] for e in extras))
                           if extras else None))
        series[label] = merged
    return series, used, shown, common


def legend_heading(shown, primary):
    return ", ".join(name for name in shown if name in primary) or None


def speedup_of(record):
    return number(record, "results.speedup_vs_baseline", "baseline.speedup")


def speedup_ci_of(record):
    low = number(record, "baseline.speedup_ci95.lo")
    high = number(record, "baseline.speedup_ci95.hi")
    return (low, high) if low is not None and high is not None else None


def positive(value):
    return value if value is not None and value > 0 else None


def error_bars(points):
    """yerr for points (x, y, (low, high) or None): distances below and above y."""
    below = [max(y - ci[0], 0.0) if ci else 0.0 for _, y, ci, *_ in points]
    above = [max(ci[1] - y, 0.0) if ci else 0.0 for _, y, ci, *_ in points]
    return [below, above]


def draw_lines(ax, series, bars=False):
    for label, points in series.items():
        xs = [p[0] for p in points]
        ys = [p[1] for p in points]
        if bars and any(p[2] for p in points):
            ax.errorbar(xs, ys, yerr=error_bars(points), marker="o", markersize=4,
                        capsize=3, label=label)
        else:
            ax.plot(xs, ys, marker="o", markersize=4, label=label)


def figure_speedup(records):
    primary = ("policy",)
    series, used, shown, common = collect(
        records, "speedup", lambda r: positive(number(r, "configuration.compression")),
        speedup_of,
        "configuration.compression and results.speedup_vs_baseline or baseline.speedup "
        "(run ekv_bench with --paired-baseline)", primary, "compression", speedup_ci_of)
    fig, (ax,) = axes()
    ax.axhline(1.0, color="gray", linestyle="--", linewidth=1)
    draw_lines(ax, series, bars=True)
    log2_axis(ax, [p[0] for points in series.values() for p in points])
    value_scale(ax, [p[1] for points in series.values() for p in points] + [1.0])
    ax.set_xlabel("compression ratio C (configuration.compression)")
    ax.set_ylabel("speedup vs uncompressed baseline (x, higher is faster)")
    title(fig, "Decode attention speedup vs compression", used, common)
    place_legend(fig, [ax], legend_heading(shown, primary))
    return fig


def drop_zero_errors(series, kind):
    for label in list(series):
        kept = [p for p in series[label] if p[1] > 0]
        if len(kept) < len(series[label]):
            print(f"plot.py: {kind}: dropped {len(series[label]) - len(kept)} zero "
                  f"errors of '{label}' (log scale)", file=sys.stderr)
        if kept:
            series[label] = kept
        else:
            del series[label]
    if not series:
        raise InputError(f"every accuracy.error_total.rel_l2 is 0; nothing to draw on a "
                         f"log scale (needed for '{kind}')")


def figure_accuracy(records):
    primary = ("policy", "kv_dtype")
    series, used, shown, common = collect(
        records, "accuracy", lambda r: positive(number(r, "configuration.compression")),
        lambda r: number(r, "accuracy.error_total.rel_l2"),
        "configuration.compression and accuracy.error_total.rel_l2", primary,
        "compression")
    drop_zero_errors(series, "accuracy")
    fig, (ax,) = axes()
    draw_lines(ax, series)
    ax.set_yscale("log")
    log2_axis(ax, [p[0] for points in series.values() for p in points])
    ax.set_xlabel("compression ratio C (configuration.compression)")
    ax.set_ylabel("relative L2 error of output vs fp64 reference (unitless)")
    title(fig, "Attention output error vs compression", used, common)
    place_legend(fig, [ax], legend_heading(shown, primary))
    return fig


def pareto_front(points):
    """The points of [(error, speedup, ...)] that no other point beats on both (lower or
    equal error and higher or equal speedup, one of them strictly), by error."""
    front = []
    for point in points:
        dominated = any(other[0] <= point[0] and other[1] >= point[1] and
                        (other[0] < point[0] or other[1] > point[1]) for other in points)
        if not dominated:
            front.append(point)
    return sorted(front, key=lambda p: (p[0], -p[1]))


def figure_tradeoff(records):
    primary = ("kv_dtype", "policy")
    used, keyed, points = [], [], []
    for record in records:
        error = number(record, "accuracy.error_total.rel_l2")
        speedup = speedup_of(record)
        if error is not None and speedup is not None:
            used.append(record)
            keyed.append(workload(record))
            points.append((error, speedup, speedup_ci_of(record),
                           number(record, "configuration.compression")))
    require(used, len(records), "results.speedup_vs_baseline or baseline.speedup and "
            "accuracy.error_total.rel_l2 (run ekv_bench with --paired-baseline)", "tradeoff")
    shown, common = split_keys(keyed, primary, "compression")
    groups = {}
    for keys, point in zip(keyed, points):
        groups.setdefault(series_label(keys, shown, primary), []).append(point)
    dropped = sum(1 for group in groups.values() for p in group if p[0] <= 0)
    if dropped:
        print(f"plot.py: tradeoff: dropped {dropped} results with zero error (log x)",
              file=sys.stderr)
    groups = {label: [p for p in group if p[0] > 0] for label, group in groups.items()}
    groups = {label: group for label, group in groups.items() if group}
    if not groups:
        raise InputError("every accuracy.error_total.rel_l2 is 0; nothing to draw on a "
                         "log scale (needed for 'tradeoff')")
    fig, (ax,) = axes()
    ax.axhline(1.0, color="gray", linestyle="--", linewidth=1)
    for (label, group), style in zip(groups.items(), LINE_STYLES()):
        group.sort(key=lambda p: (p[0], -p[1]))
        color = style["color"]
        ax.errorbar([p[0] for p in group], [p[1] for p in group], yerr=error_bars(group),
                    marker="o", markersize=5, linestyle="none", capsize=3, color=color,
                    label=label)
        front = pareto_front(group)
        ax.plot([p[0] for p in front], [p[1] for p in front], linewidth=1.2, gid="pareto",
                label="_pareto " + label, **style)
        for error, speedup, _, compression in group:
            if compression is not None:
                ax.annotate(f"C={compression:g}", (error, speedup), xytext=(4, 4),
                            textcoords="offset points", fontsize=7, color=color)
    ax.set_xscale("log")
    value_scale(ax, [p[1] for group in groups.values() for p in group] + [1.0])
    ax.set_xlabel("relative L2 error vs fp64 reference (accuracy.error_total.rel_l2, log)")
    ax.set_ylabel("speedup vs uncompressed baseline (x, 95% CI)")
    title(fig, "Speed vs accuracy: Pareto front per dtype and policy (up and left is "
               "better)", used, common)
    place_legend(fig, [ax], legend_heading(shown, primary))
    return fig


def figure_bandwidth(records):
    primary = ("kv_dtype",)
    series, used, shown, common = collect(
        records, "bandwidth", lambda r: positive(number(r, "configuration.seq_len")),
        lambda r: number(r, "results.memory_bandwidth_gbs"),
        "configuration.seq_len and results.memory_bandwidth_gbs", primary, "seq_len")
    fig, (ax,) = axes()
    peaks = {}
    for record in used:
        device = get_path(record, "gpu.name") or record.get("backend") or "device"
        for kind, paths, style in (
                ("theoretical peak", ("metrics.peak_bw_theoretical_gbs",
                                      "gpu.theoretical_bw_gbs"), "--"),
                ("measured peak (copy)", ("metrics.peak_bw_measured_gbs",), ":")):
            value = number(record, *paths)
            if value is not None and value > 0:
                peaks.setdefault((kind, device, style), value)
    devices = {device for _, device, _ in peaks}
    for (kind, device, style), value in peaks.items():
        name = f"{kind} {value:.3g} GB/s" + (f" ({device})" if len(devices) > 1 else "")
        ax.axhline(value, color="gray", linestyle=style, linewidth=1.2, label=name)
    draw_lines(ax, series)
    if not value_scale(ax, [p[1] for points in series.values() for p in points]):
        ax.set_ylim(bottom=0)
    log2_axis(ax, [p[0] for points in series.values() for p in points])
    ax.set_xlabel("sequence length (tokens in the KV cache)")
    ax.set_ylabel("achieved memory bandwidth (GB/s, 1 GB = 1e9 bytes)")
    title(fig, "Decode attention memory bandwidth", used, common)
    place_legend(fig, [ax], legend_heading(shown, primary))
    return fig


# ---------------------------------------------------------------- inference cycle

def figure_cycle(records):
    primary = ("variant",)
    used, keyed, runs = [], [], []
    for record in records:
        for part in expand_cycles(record):
            series = get_path(part, "inference_cycle.series")
            if not isinstance(series, list):
                continue
            points = []
            for step in series:
                if not isinstance(step, dict):
                    continue
                context = number(step, "context_len")
                latency = number(step, "latency_ms")
                cache = number(step, "kv_cache_bytes")
                if context is not None and (latency is not None or cache is not None):
                    points.append((context, latency, cache))
            if points:
                used.append(part)
                keyed.append(workload(part))
                runs.append(sorted(points, key=lambda p: p[0]))
    require(used, len(records),
            "inference_cycle.series[] with context_len and latency_ms or kv_cache_bytes",
            "cycle")
    shown, common = split_keys(keyed, primary, None)
    fig, (left, right) = axes(2)
    seen, latencies = {}, []
    for (keys, points), style in zip(zip(keyed, runs), LINE_STYLES()):
        label = series_label(keys, shown, primary)
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            label += f" (run {seen[label]})"
        marker = "o" if len(points) <= 40 else None
        latency = [(p[0], p[1]) for p in points if p[1] is not None]
        cache = [(p[0], p[2] / 2**20) for p in points if p[2] is not None]
        if latency:
            left.plot(*zip(*latency), marker=marker, markersize=3, label=label, **style)
            latencies.append(median([p[1] for p in latency]))
        if cache:
            right.plot(*zip(*cache), marker=marker, markersize=3, label=label, **style)
    left_log = value_scale(left, latencies)  # the variants' median latencies
    left.set_xlabel("context length (tokens)")
    left.set_ylabel("decode step latency (ms" + (", log)" if left_log else ")"))
    left.set_title("latency per decode step", fontsize=10)
    right.set_xlabel("context length (tokens)")
    right.set_ylabel("KV cache size (MiB, 2^20 bytes)")
    right.set_title("KV cache memory", fontsize=10)
    title(fig, "Inference cycle", used, common)
    place_legend(fig, [left, right], legend_heading(shown, primary))
    return fig


FIGURES = {
    "speedup": (figure_speedup, "speedup vs compression ratio, one line per policy"),
    "accuracy": (figure_accuracy, "relative L2 error vs compression ratio (log y)"),
    "tradeoff": (figure_tradeoff, "speedup vs error, Pareto front per dtype and policy"),
    "bandwidth": (figure_bandwidth, "memory bandwidth vs sequence length, with peaks"),
    "cycle": (figure_cycle, "inference cycle: latency and KV cache vs context length"),
}


def parse_arguments(argv):
    parser = argparse.ArgumentParser(
        prog="plot.py", description="Draw a figure from ekv_bench JSON/JSONL results.",
        epilog="Exit status 2 when the input lacks what the figure needs.")
    commands = parser.add_subparsers(dest="kind", required=True, metavar="KIND")
    for kind, (_, summary) in FIGURES.items():
        command = commands.add_parser(kind, help=summary, description=summary)
        command.add_argument("files", metavar="FILES", nargs="+",
                             help="ekv_bench results (JSON object, JSON list or JSONL)")
        command.add_argument("-o", "--output", default=f"{kind}.png",
                             help=f"PNG to write (default {kind}.png)")
        command.add_argument("--svg", action="store_true",
                             help="also write an SVG next to the PNG")
    arguments = parser.parse_args(argv)
    stem, suffix = os.path.splitext(arguments.output)
    if suffix.lower() not in (".png", ""):
        parser.error(f"-o must name a .png file, got {arguments.output!r} "
                     f"(use --svg for an SVG as well)")
    arguments.stem = stem
    return arguments


def main(argv=None):
    arguments = parse_arguments(sys.argv[1:] if argv is None else argv)
    try:
        records = []
        for path in arguments.files:
            records.extend(load_results(path))
        fig = FIGURES[arguments.kind][0](records)
        outputs = [arguments.stem + ".png"] + ([arguments.stem + ".svg"] if arguments.svg
                                               else [])
        for output in outputs:
            fig.savefig(output, dpi=150)
            print(output)
        plt.close(fig)
    except InputError as error:
        print(f"plot.py: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"plot.py: error: cannot write {error.filename}: {error.strerror}",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
