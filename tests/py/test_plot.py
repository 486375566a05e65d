#!/usr/bin/env python3
"""test_plot.py - tests for bench/plot.py on generated ekv_bench-shaped results.

Run:  .venv/bin/python tests/py/test_plot.py
make_results() writes JSONL that follows the result schema (several policies, dtypes,
compression ratios, sequence lengths, and inference cycles with a series); each figure
kind is drawn from it and checked as a decodable PNG (and SVG that parses as XML).
Prints one PASS/FAIL line per test and a final "N passed, N failed"; exits 1 on any
failure. No pytest.
"""

import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import traceback
import xml.etree.ElementTree as ElementTree

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLOT = os.path.join(ROOT, "bench", "plot.py")
WORK = tempfile.mkdtemp(prefix="ekv_test_plot_")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BYTES_PER_VALUE = {"f32": 4, "f16": 2, "bf16": 2, "fp8": 1, "int8": 1, "int4": 0.5}
# (time factor, error factor) per policy, so that the lines of a figure differ
POLICY_FACTORS = {"none": (1.0, 1.0), "stride": (1.0, 1.0), "pool": (1.05, 0.6),
                  "window": (0.95, 1.5), "topk": (1.2, 0.3)}


def make_result(rng, seq_len, compression, policy, kv_dtype, variant=None,
                decode_tokens=0, gpu=True):
    """One result object shaped like ekv_bench's JSON, with plausible numbers."""
    batch, heads, kv_heads, head_dim = 1, 16, 16, 64
    kept = seq_len // compression
    kv_bytes = int(2 * batch * kv_heads * kept * head_dim * BYTES_PER_VALUE[kv_dtype])
    kv_bytes_full = 2 * batch * kv_heads * seq_len * head_dim * 4
    time_factor, error_factor = POLICY_FACTORS[policy]
    median = (0.004 + kv_bytes / 2.4e9) * time_factor  # ms: ~2.4 TB/s plus launch
    samples = [median * rng.lognormvariate(0, 0.02) for _ in range(20)]
    speedup = (0.004 + kv_bytes_full / 2 / 2.4e9) / median
    error = 0.0 if policy == "none" and kv_dtype == "f32" else \
        1e-3 * error_factor * BYTES_PER_VALUE["f32"] / BYTES_PER_VALUE[kv_dtype] \
        * compression ** 1.5
    cycle = None
    if variant:
        series = [{"step": step, "context_len": seq_len + step,
                   "latency_ms": median * (1 + step / 200) * (1.5 if variant == "baseline" else 1),
                   "kv_cache_bytes": kv_bytes * (seq_len + step) // seq_len,
                   "peak_device_bytes": 3 * kv_bytes} for step in range(decode_tokens)]
        cycle = {"variant": variant, "decode_tokens": decode_tokens,
                 "baseline_total_ms": 1.0, "elastic_total_ms": 0.7,
                 "baseline_tokens_per_sec": 64000.0, "elastic_tokens_per_sec": 91000.0,
                 "speedup_vs_baseline": 1.43,
                 "phases_ms": {"projection": 0.1, "append": 0.01, "compress": 0.02,
                               "attention": 0.5},
                 "series": series}
    return {
        "schema_version": 1, "ekv_version": "0.1.0", "timestamp": "2025-01-01T00:00:00Z",
        "backend": "cuda" if gpu else "cpu", "label": None, "variant": variant,
        "benchmark_type": "decode_attention",
        "gpu": {"name": "NVIDIA H100 80GB HBM3", "sm": 90, "theoretical_bw_gbs": 3352.3}
        if gpu else None,
        "build": {"cuda_graphs": True, "inner_loops": 64, "truncate_percent": 0},
        "configuration": {"seq_len": seq_len, "batch": batch, "heads": heads,
                          "kv_heads": kv_heads, "head_dim": head_dim,
                          "compression": compression, "kv_dtype": kv_dtype,
                          "policy": policy, "recent": 0, "sinks": 4, "observe": 16,
                          "data": "structured", "seed": 1, "reps": 20, "warmup": 5,
                          "inner_loops": 64, "hot": False, "layers": 1,
                          "decode_tokens": decode_tokens, "variant": variant},
        "results": {"attention_time_ms": median, "attention_time_std": median * 0.02,
                    "coefficient_of_variation": 0.02, "tokens_per_sec": 1000 / median,
                    "baseline_tokens_per_sec": 1000 / median / speedup,
                    "speedup_vs_baseline": speedup,
                    "memory_bandwidth_gbs": kv_bytes / median / 1e6,
                    "memory_efficiency_percent": 60.0, "roofline_score": 0.6},
        "statistics": {"n": 20, "median": median},
        "metrics": {"bytes_total": kv_bytes, "peak_bw_theoretical_gbs": 3352.3,
                    "peak_bw_measured_gbs": 2900.0 if gpu else None},
        "accuracy": {"error_total": {"rel_l2": error, "max_abs": error, "cosine": 1 - error},
                     "data": {"attention_entropy": 5.0, "top5pct_mass": 0.6}},
        "memory": {"kv_cache_bytes": kv_bytes, "kv_cache_bytes_uncompressed": kv_bytes_full,
                   "peak_device_bytes": 3 * kv_bytes},
        "baseline": {"samples_ms": samples, "speedup": speedup,
                     "speedup_ci95": {"lo": speedup * 0.97, "hi": speedup * 1.03}},
        "inference_cycle": cycle,
        "samples_ms": samples,
    }


def make_results(path):
    rng = random.Random(1)
    records = [make_result(rng, 4096, 1, "none", dtype) for dtype in ("f16", "int8")]
    records += [make_result(rng, 4096, c, policy, dtype)
                for policy in ("stride", "pool", "window", "topk")
                for dtype in ("f16", "int8") for c in (2, 4, 8)]
    records += [make_result(rng, s, 1, "none", dtype)
                for dtype in ("f32", "f16", "int4", "fp8") for s in (1024, 4096, 16384)]
    records += [make_result(rng, 2048, c, "stride" if c > 1 else "none", "f16", variant, 48)
                for variant, c in (("baseline", 1), ("elastic", 4))]
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(json.dumps(r) for r in records) + "\n")
    return path


def run(*arguments):
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
    try:
        from PIL import Image
    except ImportError:
        return
    with Image.open(path) as picture:
        picture.verify()


def check_figure(kind, files=None, svg=True, name=None):
    files = files or [RESULTS]
    name = name or kind
    output = os.path.join(WORK, f"{name}.png")
    arguments = [kind, *files, "-o", output] + (["--svg"] if svg else [])
    code, out, err = run(*arguments)
    assert code == 0, (code, err)
    check_png(output)
    if svg:
        svg_path = os.path.join(WORK, f"{name}.svg")
        root = ElementTree.parse(svg_path).getroot()
        assert root.tag.endswith("svg"), root.tag
        assert svg_path in out
    return out, err


RESULTS = make_results(os.path.join(WORK, "results.jsonl"))


def test_generator_follows_schema():
    with open(RESULTS, encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle]
    for record in records:
        for key in ("schema_version", "backend", "configuration", "results", "metrics",
                    "accuracy", "memory", "baseline", "samples_ms"):
            assert key in record, key
        assert all(math.isfinite(x) for x in record["samples_ms"])
    assert {r["configuration"]["policy"] for r in records} >= {"none", "stride", "topk"}
    assert sum(1 for r in records if r["inference_cycle"]) == 2


def test_speedup():
    check_figure("speedup")


def test_accuracy():
    _, err = check_figure("accuracy")
    assert "zero" in err, "the f32/none point has zero error and must be reported dropped"


def test_bandwidth():
    check_figure("bandwidth")


def test_cycle():
    check_figure("cycle")


def test_png_only_and_several_files():
    single = os.path.join(WORK, "single.json")
    with open(single, "w", encoding="utf-8") as handle:
        json.dump(make_result(random.Random(2), 8192, 1, "none", "f16", gpu=False), handle)
    check_figure("bandwidth", [RESULTS, single], svg=False, name="two_devices")
    assert not os.path.exists(os.path.join(WORK, "two_devices.svg"))


def test_help():
    code, out, _ = run("--help")
    assert code == 0 and all(kind in out for kind in ("speedup", "accuracy", "bandwidth",
                                                       "cycle"))
    code, out, _ = run("cycle", "--help")
    assert code == 0 and "--svg" in out


def expect_error(arguments, words):
    code, out, err = run(*arguments)
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert lines and all(word in lines[-1] for word in words), err
    return err


def test_missing_data_exits_2():
    bare = os.path.join(WORK, "bare.jsonl")
    record = make_result(random.Random(3), 1024, 2, "stride", "f16")
    record["results"] = None
    record["baseline"] = None
    record["inference_cycle"] = None
    record["accuracy"] = {"error_total": None}
    with open(bare, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
    for kind, word in (("speedup", "speedup_vs_baseline"), ("accuracy", "rel_l2"),
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
    expect_error(["speedup", RESULTS, "-o", os.path.join(WORK, "x.jpg")], [".png"])


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
    if failed:
        print(f"files kept in {WORK}")
    else:
        shutil.rmtree(WORK, ignore_errors=True)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
