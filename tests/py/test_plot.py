#!/usr/bin/env python3
"""test_plot.py - tests for bench/plot.py on real ekv_bench output.

Run:  .venv/bin/python tests/py/test_plot.py
The fixtures are made at test time by the CPU build of ekv_bench at small sizes (see
bench_fixture.py): a sweep over compression x policy x dtype with --paired-baseline, a
sweep over sequence lengths, and inference cycles. Each figure is drawn in process and
its matplotlib Axes inspected: the number of series and of points per series (lines,
errorbar containers, legend entries), the scales, the title, and that the legend lies
outside every Axes. The command line is run for PNG/SVG output and bad input.
Prints one PASS/FAIL line per test and a final "N passed, N failed"; exits 1 on any
failure. No pytest.
"""

import contextlib
import copy
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import traceback
import xml.etree.ElementTree as ElementTree

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_fixture import ROOT, bench_binary, run_bench, write_jsonl  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "bench"))
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.container import ErrorbarContainer  # noqa: E402

import plot  # noqa: E402

PLOT = os.path.join(ROOT, "bench", "plot.py")
WORK = tempfile.mkdtemp(prefix="ekv_test_plot_")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

BENCH = bench_binary(WORK)
COMPRESSIONS = (1, 2, 4)
POLICIES = ("stride", "pool", "window", "topk")
DTYPES = ("f16", "int8")
SWEEP = run_bench(BENCH, "--compress=" + ",".join(map(str, COMPRESSIONS)),
                  "--policy=" + ",".join(POLICIES), "--kv-dtype=" + ",".join(DTYPES),
                  "--paired-baseline")
SEQS = (128, 256, 512)
SEQ_SWEEP = run_bench(BENCH, "--seq=" + ",".join(map(str, SEQS)), "--compress=1,2",
                      "--kv-dtype=f16,int8")
STEPS = 5
CYCLE_SMALL = ["--inference", "--seq=128", f"--decode_tokens={STEPS}", "--heads=8",
               "--kv-heads=2", "--reps=2"]
CYCLES = run_bench(BENCH, *CYCLE_SMALL, "--variant=nocache,cache,int8,elastic")
CYCLE_ALL = run_bench(BENCH, *CYCLE_SMALL, "--variant=all", "--layers=2")
SWEEP_FILE = write_jsonl(os.path.join(WORK, "sweep.jsonl"), SWEEP)


# ---------------------------------------------------------------- inspecting figures

def draw(kind, records):
    fig = plot.FIGURES[kind][0](records)
    fig.canvas.draw()
    return fig


def data_axes(fig):
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def legends(fig):
    return list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend()]


def legend_labels(fig):
    return [text.get_text() for legend in legends(fig) for text in legend.get_texts()]


def errorbar_series(ax):
    """[(label, number of points)] of the errorbar containers of AX."""
    return [(c.get_label(), len(c.lines[0].get_xdata())) for c in ax.containers
            if isinstance(c, ErrorbarContainer)]


def line_series(ax, exclude=("peak",)):
    """[(label, number of points)] of the labelled data lines of AX (reference lines,
    errorbar parts and labels containing a word of EXCLUDE left out)."""
    in_containers = {id(c.lines[0]) for c in ax.containers if isinstance(c, ErrorbarContainer)}
    return [(line.get_label(), len(line.get_xdata())) for line in ax.lines
            if not line.get_label().startswith("_") and id(line) not in in_containers
            and not any(word in line.get_label() for word in exclude)]


def title_text(fig):
    return fig._suptitle.get_text() if fig._suptitle else ""


def check_legend_outside(fig):
    renderer = fig.canvas.get_renderer()
    found = legends(fig)
    assert found, "no legend"
    for legend in found:
        box = legend.get_window_extent(renderer)
        for ax in data_axes(fig):
            assert not box.overlaps(ax.get_window_extent(renderer)), \
                f"legend {box} overlaps the axes {ax.get_window_extent(renderer)}"


def check_title(fig, absent=(), present=()):
    text = title_text(fig)
    for word in absent:
        assert word not in text, f"{word!r} in the title: {text!r}"
    for word in present:
        assert word in text, f"{word!r} not in the title: {text!r}"


# keys at their defaults or derived: constant in every fixture, never in a title
DEFAULT_KEYS = ("sinks=", "observe=", "recent=", "data=", "seed=", "softmax_scale=",
                "compress_every=", "kv_heads=16", "batch=", "head_dim=", "hot=")


# ---------------------------------------------------------------- figures on real output

def test_fixture_is_a_real_sweep():
    assert len(SWEEP) == len(COMPRESSIONS) * len(POLICIES) * len(DTYPES)
    assert {r["backend"] for r in SWEEP} == {"cpu"}
    # the derived key that made every point its own series in plot.py before 0.1.1
    assert all(r["configuration"]["compress_every"] == r["configuration"]["compression"]
               for r in SWEEP)
    assert all(r["results"]["speedup_vs_baseline"] is not None for r in SWEEP)


def test_speedup_one_series_per_policy_and_dtype():
    fig = draw("speedup", SWEEP)
    (ax,) = data_axes(fig)
    series = errorbar_series(ax)
    assert len(series) == len(POLICIES) * len(DTYPES), series
    assert all(points == len(COMPRESSIONS) for _, points in series), series
    assert len(legend_labels(fig)) == len(series), legend_labels(fig)
    for policy in POLICIES:  # each combination labelled by exactly one series
        for dtype in DTYPES:
            named = [label for label, _ in series
                     if policy in label.replace(",", " ").replace("=", " ").split()
                     and dtype in label.replace(",", " ").replace("=", " ").split()]
            assert len(named) == 1, (policy, dtype, series)
    check_legend_outside(fig)
    check_title(fig, absent=DEFAULT_KEYS + ("policy=", "kv_dtype=", "compression="),
                present=("seq_len=256", "heads=4", "cpu"))
    plt.close(fig)


def test_accuracy_one_line_per_policy_and_dtype():
    fig = draw("accuracy", SWEEP)
    (ax,) = data_axes(fig)
    series = line_series(ax)
    assert len(series) == len(POLICIES) * len(DTYPES), series
    assert all(points == len(COMPRESSIONS) for _, points in series), series
    assert sorted(legend_labels(fig)) == sorted(label for label, _ in series)
    assert ax.get_yscale() == "log"
    check_legend_outside(fig)
    check_title(fig, absent=DEFAULT_KEYS, present=("seq_len=256",))
    plt.close(fig)


def pareto_size(points):
    """How many of [(error, speedup)] no other point beats on both (written apart
    from plot.py's own front: sort by error, keep each new best speedup)."""
    best, count = None, 0
    by_error = {}
    for error, speedup in points:
        by_error[error] = max(speedup, by_error.get(error, speedup))
    for error in sorted(by_error):
        if best is None or by_error[error] > best:
            best = by_error[error]
            count += 1
    return count


def test_tradeoff_pareto_front_per_dtype_and_policy():
    fig = draw("tradeoff", SWEEP)
    (ax,) = data_axes(fig)
    series = errorbar_series(ax)
    assert len(series) == len(POLICIES) * len(DTYPES), series
    assert all(points == len(COMPRESSIONS) for _, points in series), series
    assert len(legend_labels(fig)) == len(series)
    assert ax.get_xscale() == "log"
    # CI bars on the speedup: one vertical segment per point
    for container in ax.containers:
        if isinstance(container, ErrorbarContainer):
            (segments,) = container.lines[2]
            assert len(segments.get_segments()) == len(COMPRESSIONS)
    # the fronts, against a front computed here from the JSON
    fronts = [line for line in ax.lines if line.get_gid() == "pareto"]
    assert len(fronts) == len(series), len(fronts)
    expected = {}
    for record in SWEEP:
        key = (record["configuration"]["kv_dtype"], record["configuration"]["policy"])
        expected.setdefault(key, []).append((record["accuracy"]["error_total"]["rel_l2"],
                                             record["results"]["speedup_vs_baseline"]))
    want = sorted(pareto_size(points) for points in expected.values())
    got = sorted(len(line.get_xdata()) for line in fronts)
    assert got == want, (got, want)
    for line in fronts:  # a front goes right and up: more error buys more speed
        xs, ys = list(line.get_xdata()), list(line.get_ydata())
        assert xs == sorted(xs) and ys == sorted(ys), (xs, ys)
    check_legend_outside(fig)
    check_title(fig, absent=DEFAULT_KEYS, present=("seq_len=256",))
    plt.close(fig)


def test_bandwidth_lines_per_dtype_and_compression():
    fig = draw("bandwidth", SEQ_SWEEP)
    (ax,) = data_axes(fig)
    series = line_series(ax)
    assert len(series) == 2 * 2, series  # kv_dtype x compression
    assert all(points == len(SEQS) for _, points in series), series
    labels = legend_labels(fig)
    assert any("measured peak" in label for label in labels), labels
    assert len(labels) == len(series) + 1, labels
    assert sorted({x for line in ax.lines for x in line.get_xdata()
                   if "peak" not in line.get_label() and not line.get_label().startswith("_")}) \
        == list(SEQS)
    check_legend_outside(fig)
    check_title(fig, absent=DEFAULT_KEYS + ("seq_len=",))
    plt.close(fig)


def test_cycle_log_latency_when_nocache_is_far_slower():
    fig = draw("cycle", CYCLES)
    left, right = data_axes(fig)
    for ax in (left, right):
        series = line_series(ax)
        assert len(series) == 4 and all(points == STEPS for _, points in series), series
        for variant in ("nocache", "cache", "int8", "elastic"):
            assert sum(1 for label, _ in series
                       if variant in label.replace("=", " ").split()) == 1, (variant, series)
    assert left.get_yscale() == "log", "nocache recomputes every step: latency axis must be log"
    assert len(legend_labels(fig)) == 4, legend_labels(fig)
    check_legend_outside(fig)
    check_title(fig, absent=DEFAULT_KEYS + ("inference=", "variant="),
                present=("seq_len=128", f"decode_tokens={STEPS}"))
    plt.close(fig)


def test_cycle_variant_all_is_split():
    fig = draw("cycle", CYCLE_ALL)
    left, _ = data_axes(fig)
    series = line_series(left)
    assert len(series) == 6 and all(points == STEPS for _, points in series), series
    assert left.get_yscale() == "log"
    plt.close(fig)


def test_cycle_linear_latency_when_close():
    cached = [r for r in CYCLES if r["inference_cycle"]["variant"] in ("cache", "int8")]
    fig = draw("cycle", cached)
    left, _ = data_axes(fig)
    assert len(line_series(left)) == 2
    assert left.get_yscale() == "linear"
    plt.close(fig)


def test_split_by_a_swept_key_that_is_not_primary():
    # two sequence lengths in one speedup figure: their points must not share a line
    other = run_bench(BENCH, "--seq=128", "--compress=1,2", "--policy=stride",
                      "--paired-baseline")
    mine = [r for r in SWEEP if r["configuration"]["policy"] == "stride"
            and r["configuration"]["kv_dtype"] == "f16"
            and r["configuration"]["compression"] in (1, 2)]
    fig = draw("speedup", other + mine)
    (ax,) = data_axes(fig)
    series = errorbar_series(ax)
    assert len(series) == 2 and all(points == 2 for _, points in series), series
    assert any("seq_len=128" in label for label, _ in series), series
    plt.close(fig)


def test_unused_keys_do_not_split():
    # --sinks does not change a stride run: two values give one line, not two
    records = run_bench(BENCH, "--compress=1,2", "--policy=stride", "--sinks=0,4",
                        "--paired-baseline")
    fig = draw("speedup", records)
    (ax,) = data_axes(fig)
    series = errorbar_series(ax)
    assert len(series) == 1 and series[0][1] == 2, series
    plt.close(fig)


# ---------------------------------------------------------------- command line

def run(*arguments):
    """plot.py's main() in this process (importing matplotlib once): (status, stdout,
    stderr); test_help runs the script itself."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = plot.main(list(arguments))
        except SystemExit as done:  # argparse: --help, usage errors
            code = done.code
    plt.close("all")
    return code, out.getvalue(), err.getvalue()


def run_script(*arguments):
    process = subprocess.run([sys.executable, PLOT, *arguments], capture_output=True,
                             text=True, timeout=300)
    return process.returncode, process.stdout, process.stderr


def check_png(path):
    with open(path, "rb") as handle:
        assert handle.read(8) == PNG_SIGNATURE, f"{path} is not a PNG"
    import matplotlib.image
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200, image.shape
    assert float(image[..., :3].std()) > 0.01, "image is blank"


def test_command_line_writes_png_and_svg():
    for kind in plot.FIGURES:
        source = SWEEP_FILE if kind in ("speedup", "accuracy", "tradeoff") else \
            write_jsonl(os.path.join(WORK, f"{kind}.jsonl"),
                        SEQ_SWEEP if kind == "bandwidth" else CYCLES)
        output = os.path.join(WORK, f"{kind}.png")
        svg = kind == "tradeoff"  # SVG is slow to write: one kind is enough
        code, out, err = run(kind, source, "-o", output, *(["--svg"] if svg else []))
        assert code == 0, (kind, code, err)
        check_png(output)
        written = [output]
        if svg:
            written.append(os.path.join(WORK, f"{kind}.svg"))
            assert ElementTree.parse(written[1]).getroot().tag.endswith("svg")
        assert out.split() == written, out


def test_png_only_and_several_files():
    cpu = copy.deepcopy(SEQ_SWEEP[0])
    cpu["gpu"]["name"] = "another CPU"
    single = os.path.join(WORK, "single.json")
    with open(single, "w", encoding="utf-8") as handle:
        json.dump(cpu, handle)
    output = os.path.join(WORK, "two_devices.png")
    code, _, err = run("bandwidth", write_jsonl(os.path.join(WORK, "bw.jsonl"), SEQ_SWEEP),
                       single, "-o", output)
    assert code == 0, err
    check_png(output)
    assert not os.path.exists(os.path.join(WORK, "two_devices.svg"))


def test_help():
    code, out, _ = run_script("--help")
    assert code == 0 and all(kind in out for kind in plot.FIGURES)
    code, out, _ = run("tradeoff", "--help")
    assert code == 0 and "--svg" in out


def expect_error(arguments, words):
    code, out, err = run(*arguments)
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert lines and all(word in lines[-1] for word in words), err
    return err


def test_missing_data_exits_2():
    record = copy.deepcopy(SEQ_SWEEP[0])
    record["results"] = None
    record["baseline"] = None
    record["inference_cycle"] = None
    record["accuracy"] = {"error_total": None}
    bare = write_jsonl(os.path.join(WORK, "bare.jsonl"), [record])
    for kind, word in (("speedup", "speedup_vs_baseline"), ("accuracy", "rel_l2"),
                       ("tradeoff", "--paired-baseline"),
                       ("bandwidth", "memory_bandwidth_gbs"),
                       ("cycle", "inference_cycle.series")):
        expect_error([kind, bare, "-o", os.path.join(WORK, "never.png")], [word, kind])
    assert not os.path.exists(os.path.join(WORK, "never.png"))


def test_bad_input_exits_2():
    expect_error(["speedup", os.path.join(WORK, "absent.jsonl")], ["absent.jsonl"])
    garbage = os.path.join(WORK, "garbage.json")
    with open(garbage, "w", encoding="utf-8") as handle:
        handle.write("{nope")
    expect_error(["speedup", garbage], ["garbage.json", "not valid JSON"])
    expect_error(["speedup", SWEEP_FILE, "-o", os.path.join(WORK, "x.jpg")], [".png"])


def main():
    tests = [(name, function) for name, function in globals().items()
             if name.startswith("test_") and callable(function)]
    passed = failed = 0
    for name, function in tests:
        try:
            function()
        except Exception:  # noqa: BLE001 - every failure is reported, then counted
            failed += 1
            print(f"FAIL {name}")
            print("    " + traceback.format_exc().strip().replace("\n", "\n    "))
        else:
            passed += 1
            print(f"PASS {name}")
        plt.close("all")
    if failed:
        print(f"files kept in {WORK}")
    else:
        shutil.rmtree(WORK, ignore_errors=True)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
