#!/usr/bin/env python3
"""plot.py - figures from ekv_bench results (JSON object, JSON list or JSONL).

Run:  python bench/plot.py KIND FILES... [-o out.png] [--svg]

KIND (each also has --help):
  speedup    results.speedup_vs_baseline (else baseline.speedup) vs
             configuration.compression, one line per policy; error bars from
             baseline.speedup_ci95{lo,hi} when present
  accuracy   accuracy.error_total.rel_l2 vs configuration.compression, one line per
             policy and kv_dtype, log y
  bandwidth  results.memory_bandwidth_gbs vs configuration.seq_len, one line per kv_dtype
             (and any other workload key that varies); horizontal lines at
             metrics.peak_bw_theoretical_gbs (else gpu.theoretical_bw_gbs) and
             metrics.peak_bw_measured_gbs when present
  cycle      inference_cycle.series[]{context_len, latency_ms, kv_cache_bytes}: latency
             and KV cache size vs context length, one line per inference_cycle.variant

Lines are also split by every other workload key that varies among the plotted results
(the keys bench/compare.py matches on), so unlike workloads never share a line; keys that
do not vary go into the title. Writes a PNG (Agg backend), plus the same name with .svg
under --svg, and prints the paths written. Exit status 2, with a one-line message, when
the input cannot be read or lacks what the figure needs.
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
from matplotlib.ticker import FixedLocator, NullLocator  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import InputError, get_path, load_results, value_text, workload  # noqa: E402


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


def split_keys(keyed, primary, x_key):
    """(keys that label a line, common keys for the title) among the used results."""
    names = []
    for keys in keyed:
        names.extend(name for name in keys if name not in names)
    varying = [name for name in names if name != x_key and name not in primary and
               len({value_text(keys.get(name)) for keys in keyed}) > 1]
    common = [name for name in names if name not in (x_key, "backend") and
              name not in primary and name not in varying and keyed[0].get(name) is not None]
    return list(primary) + varying, {name: keyed[0][name] for name in common}


def line_label(keys, shown):
    return ", ".join(f"{name}={value_text(keys.get(name))}" for name in shown)


def require(used, total, needs, kind):
    if not used:
        raise InputError(f"no result in the input has {needs} (needed for '{kind}')")
    if len(used) < total:
        print(f"plot.py: {kind}: skipped {total - len(used)} of {total} results lacking "
              f"{needs}", file=sys.stderr)


def title(fig, heading, records, common):
    text = f"{heading} - {device_text(records)}"
    if common:
        characters_per_line = int(fig.get_size_inches()[0] * 11)
        text += "\n" + textwrap.fill(line_label(common, list(common)), characters_per_line)
    fig.suptitle(text, fontsize=10)


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


def place_legend(fig, ax):
    """Inside the axes when short; to the right of them (figure widened) when long."""
    count = len(ax.get_legend_handles_labels()[0])
    if count == 0:
        return
    if count <= 6:
        ax.legend(fontsize="small")
        return
    ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.02, 1),
              borderaxespad=0)
    width, height = fig.get_size_inches()
    fig.set_size_inches(width + 4, max(height, 1.5 + 0.17 * count))


def log2_axis(ax, values, formatter=value_text):
    ticks = sorted(set(values))
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([formatter(int(t) if float(t).is_integer() else t) for t in ticks])


# ---------------------------------------------------------------- point figures

def series_points(records, kind, x_path, y_paths, primary, needs, ci_path=None):
    """{label: sorted [(x, y, lo, hi)]}, the used results and the common keys."""
    used, keyed = [], []
    for record in records:
        x, y = number(record, x_path), number(record, *y_paths)
        if x is not None and x > 0 and y is not None:
            used.append((record, x, y))
            keyed.append(workload(record))
    require(used, len(records), needs, kind)
    x_key = x_path.split(".")[-1]
    shown, common = split_keys(keyed, primary, x_key)
    grouped = {}
    for (record, x, y), keys in zip(used, keyed):
        low = number(record, ci_path + ".lo") if ci_path else None
        high = number(record, ci_path + ".hi") if ci_path else None
        grouped.setdefault(line_label(keys, shown), {}).setdefault(x, []).append((y, low, high))
    series = {}
    for label, by_x in grouped.items():
        points = []
        for x, values in sorted(by_x.items()):
            if len(values) > 1:
                print(f"plot.py: {kind}: {len(values)} results at {x_key}={x:g} for "
                      f"'{label}'; plotting their mean", file=sys.stderr)
            lows = [v[1] for v in values if v[1] is not None]
            highs = [v[2] for v in values if v[2] is not None]
            points.append((x, sum(v[0] for v in values) / len(values),
                           min(lows) if lows else None, max(highs) if highs else None))
        series[label] = points
    return series, [record for record, _, _ in used], common


def draw_series(ax, series, error_bars=False):
    for label, points in series.items():
        xs = [p[0] for p in points]
        ys = [p[1] for p in points]
        if error_bars and any(p[2] is not None and p[3] is not None for p in points):
            below = [y - p[2] if p[2] is not None else 0.0 for y, p in zip(ys, points)]
            above = [p[3] - y if p[3] is not None else 0.0 for y, p in zip(ys, points)]
            ax.errorbar(xs, ys, yerr=[[max(b, 0.0) for b in below],
                                      [max(a, 0.0) for a in above]],
                        marker="o", markersize=4, capsize=3, label=label)
        else:
            ax.plot(xs, ys, marker="o", markersize=4, label=label)


def figure_speedup(records):
    series, used, common = series_points(
        records, "speedup", "configuration.compression",
        ("results.speedup_vs_baseline", "baseline.speedup"), ["policy"],
        "configuration.compression and results.speedup_vs_baseline or baseline.speedup",
        ci_path="baseline.speedup_ci95")
    fig, (ax,) = axes()
    ax.axhline(1.0, color="gray", linestyle="--", linewidth=1)
    draw_series(ax, series, error_bars=True)
    log2_axis(ax, [p[0] for points in series.values() for p in points])
    ax.set_xlabel("compression ratio C (configuration.compression)")
    ax.set_ylabel("speedup vs uncompressed baseline (x, higher is faster)")
    place_legend(fig, ax)
    title(fig, "Decode attention speedup vs compression", used, common)
    return fig


def figure_accuracy(records):
    series, used, common = series_points(
        records, "accuracy", "configuration.compression",
        ("accuracy.error_total.rel_l2",), ["policy", "kv_dtype"],
        "configuration.compression and a positive accuracy.error_total.rel_l2")
    for label in list(series):
        kept = [p for p in series[label] if p[1] > 0]
        if len(kept) < len(series[label]):
            print(f"plot.py: accuracy: dropped {len(series[label]) - len(kept)} zero "
                  f"errors of '{label}' (log scale)", file=sys.stderr)
        if kept:
            series[label] = kept
        else:
            del series[label]
    if not series:
        raise InputError("every accuracy.error_total.rel_l2 is 0; nothing to draw on a "
                         "log scale (needed for 'accuracy')")
    fig, (ax,) = axes()
    draw_series(ax, series)
    ax.set_yscale("log")
    log2_axis(ax, [p[0] for points in series.values() for p in points])
    ax.set_xlabel("compression ratio C (configuration.compression)")
    ax.set_ylabel("relative L2 error of output vs fp64 reference (unitless)")
    place_legend(fig, ax)
    title(fig, "Attention output error vs compression", used, common)
    return fig


def figure_bandwidth(records):
    series, used, common = series_points(
        records, "bandwidth", "configuration.seq_len", ("results.memory_bandwidth_gbs",),
        ["kv_dtype"], "configuration.seq_len and results.memory_bandwidth_gbs")
    fig, (ax,) = axes()
    peaks = {}
    for record in used:
        device = get_path(record, "gpu.name") or record.get("backend") or "device"
        for kind, paths, style in (
                ("theoretical peak", ("metrics.peak_bw_theoretical_gbs",
                                      "gpu.theoretical_bw_gbs"), "--"),
                ("measured peak (D2D copy)", ("metrics.peak_bw_measured_gbs",), ":")):
            value = number(record, *paths)
            if value is not None and value > 0:
                peaks.setdefault((kind, device, style), value)
    devices = {device for _, device, _ in peaks}
    for (kind, device, style), value in peaks.items():
        name = f"{kind} {value:.0f} GB/s" + (f" ({device})" if len(devices) > 1 else "")
        ax.axhline(value, color="gray", linestyle=style, linewidth=1.2, label=name)
    draw_series(ax, series)
    ax.set_ylim(bottom=0)
    log2_axis(ax, [p[0] for points in series.values() for p in points])
    ax.set_xlabel("sequence length (tokens in the KV cache)")
    ax.set_ylabel("achieved memory bandwidth (GB/s, 1 GB = 1e9 bytes)")
    place_legend(fig, ax)
    title(fig, "Decode attention memory bandwidth", used, common)
    return fig


# ---------------------------------------------------------------- inference cycle

def figure_cycle(records):
    used, keyed, runs = [], [], []
    for record in records:
        series = get_path(record, "inference_cycle.series")
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
            keys = workload(record)
            keys["variant"] = get_path(record, "inference_cycle.variant",
                                       keys.get("variant"))
            used.append(record)
            keyed.append(keys)
            runs.append(sorted(points, key=lambda p: p[0]))
    require(used, len(records),
            "inference_cycle.series[] with context_len and latency_ms or kv_cache_bytes",
            "cycle")
    shown, common = split_keys(keyed, ["variant"], None)
    fig, (left, right) = axes(2)
    seen = {}
    for keys, points in zip(keyed, runs):
        label = line_label(keys, shown)
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            label += f" (run {seen[label]})"
        marker = "o" if len(points) <= 40 else None
        latency = [(p[0], p[1]) for p in points if p[1] is not None]
        cache = [(p[0], p[2] / 2**20) for p in points if p[2] is not None]
        line = None
        if latency:
            (line,) = left.plot(*zip(*latency), marker=marker, markersize=3, label=label)
        if cache:
            style = {"color": line.get_color(), "linestyle": line.get_linestyle()} \
                if line else {}
            right.plot(*zip(*cache), marker=marker, markersize=3, label=label, **style)
    left.set_xlabel("context length (tokens)")
    left.set_ylabel("decode step latency (ms)")
    left.set_title("latency per decode step", fontsize=10)
    right.set_xlabel("context length (tokens)")
    right.set_ylabel("KV cache size (MiB, 2^20 bytes)")
    right.set_title("KV cache memory", fontsize=10)
    place_legend(fig, right if len(right.lines) >= len(left.lines) else left)
    common.pop("variant", None)
    title(fig, "Inference cycle", used, common)
    return fig


FIGURES = {
    "speedup": (figure_speedup, "speedup vs compression ratio, one line per policy"),
    "accuracy": (figure_accuracy, "relative L2 error vs compression ratio (log y)"),
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
