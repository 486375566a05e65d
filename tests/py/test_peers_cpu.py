#!/usr/bin/env python3
"""test_peers_cpu.py - bench/peers_cpu.py at toy sizes: its rows have ekv's JSON shape and
consistent figures, compare.py and plot.py read them, its table's ratios are the ratios
of the pooled medians, the numpy peer agrees with the float64 reference, a peer that
disagrees is reported and not timed. Correctness only: `make bench-cpu` measures.

Run:  .venv/bin/python tests/py/test_peers_cpu.py
Uses $EKV_BENCH, else build/ekv_bench_cpu (bench_fixture.py). Prints one PASS/FAIL line
per test and a final "N passed, N failed"; exits 1 on any failure.
"""

import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import traceback

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_fixture import ROOT, bench_binary  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "bench"))
import peers_cpu  # noqa: E402

SCRIPT = os.path.join(ROOT, "bench", "peers_cpu.py")
WORK = tempfile.mkdtemp(prefix="ekv_test_peers_cpu_")
BENCH = bench_binary(WORK)
OUT = os.path.join(WORK, "rows.jsonl")
PAIRED = os.path.join(WORK, "paired.jsonl")
REPS = 3
ARGS = ["--bench", BENCH, "--seq", "64,96", "--heads", "4", "--kv-heads", "2", "--dim", "64",
        "--dtypes", "f32,f16", "--rounds", "2", "--reps", str(REPS), "--warmup", "0",
        "--inner-loops", "1", "--no-torch", "--out", OUT, "--paired-out", PAIRED]
RUN = subprocess.run([sys.executable, SCRIPT] + ARGS, capture_output=True, text=True, timeout=600)


def rows(path=OUT):
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def close(a, b, rel=1e-9):
    return abs(a - b) <= rel * max(abs(a), abs(b))


def test_runs_and_writes_rows():
    assert RUN.returncode == 0, RUN.stderr[-500:]
    assert "SKIP torch-sdpa-cpu: --no-torch" in RUN.stdout, RUN.stdout
    got = rows()
    backends = sorted({(r["backend"], r["configuration"]["kv_dtype"], r["configuration"]["seq_len"])
                       for r in got})
    assert backends == sorted({(b, d, s) for s in (64, 96) for b, d in
                               (("cpu", "f32"), ("cpu", "f16"), ("numpy-matmul", "f32"))}), backends
    assert len(got) == 2 * 2 * 3, len(got)  # rounds x sequences x (ekv f32, ekv f16, numpy)


def test_numpy_rows_consistent():
    by_round = {}
    for r in rows():
        by_round.setdefault(r["label"], []).append(r)
    for label, group in by_round.items():
        copy = [r["metrics"]["peak_bw_measured_gbs"] for r in group if r["backend"] == "cpu"]
        for r in group:
            if r["backend"] != "numpy-matmul":
                continue
            c, m = r["configuration"], r["metrics"]
            median = r["results"]["attention_time_ms"]
            assert len(r["samples_ms"]) == REPS and close(median, float(np.median(r["samples_ms"])))
            assert close(r["statistics"]["std"], float(np.std(r["samples_ms"], ddof=1)))
            assert close(m["bytes_total"], sum(m["bytes"].values()))
            assert m["bytes"]["k"] == c["batch"] * c["kv_heads"] * c["seq_len"] * c["head_dim"] * 4
            assert close(r["results"]["memory_bandwidth_gbs"], m["bytes_total"] / (median * 1e-3) / 1e9)
            assert r["accuracy"]["error_kernel"]["rel_l2"] <= peers_cpu.ekv_tolerance(c["seq_len"])
            # the copy bandwidth is the one ekv measured in the same round
            assert m["peak_bw_measured_gbs"] == copy[0], (label, copy)
            assert r["build"]["cache_copies"] >= 1 and r["gpu"]["name"].startswith("CPU")


def test_compare_and_plot_read_rows():
    done = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "compare.py"), OUT, OUT],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-500:] + done.stderr[-500:]
    assert "numpy-matmul" in done.stdout and "6 compared" in done.stdout, done.stdout[-800:]
    figure = os.path.join(WORK, "bandwidth.png")
    done = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "plot.py"), "bandwidth", OUT,
                           "-o", figure], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and os.path.getsize(figure) > 0, done.stderr[-500:]


def test_table_ratios_are_pooled_medians():
    pooled = {}
    for r in rows():
        key = (r["configuration"]["seq_len"], r["backend"], r["configuration"]["kv_dtype"])
        pooled.setdefault(key, []).extend(r["samples_ms"])
    lines = [line for line in RUN.stdout.split("paired (ABAB")[0].splitlines()
             if line.startswith("| 96 |")]
    assert len(lines) == 3, RUN.stdout
    ekv_f32 = float(np.median(pooled[(96, "cpu", "f32")]))
    numpy_f32 = float(np.median(pooled[(96, "numpy-matmul", "f32")]))
    for line in lines:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        backend = "cpu" if cells[1] == "ekv" else cells[1]
        median = float(np.median(pooled[(96, backend, cells[2])]))
        assert abs(float(cells[3]) - median) <= 5e-4 * max(1.0, median), (cells, median)
        assert cells[7] == f"{ekv_f32 / median:.2f}x" and cells[8] == f"{numpy_f32 / median:.2f}x", cells
    assert re.search(r"load average before [0-9.]+ [0-9.]+ [0-9.]+, after", RUN.stdout)


def test_paired_rows_and_table():
    # f32,f16 asked: the one pair of PAIRS among them (f16 against f32), once per seq, each
    # an ekv_bench --paired-baseline row whose speedup is the baseline median over its own
    got = rows(PAIRED)
    assert [(r["configuration"]["seq_len"], r["configuration"]["kv_dtype"], r["baseline"]["kv_dtype"])
            for r in got] == [(64, "f16", "f32"), (96, "f16", "f32")], got
    lines = [line for line in RUN.stdout.split("paired (ABAB")[-1].splitlines()
             if line.startswith("| 64 |") or line.startswith("| 96 |")]
    assert "paired (ABAB" in RUN.stdout and len(lines) == 2, RUN.stdout
    for r, line in zip(got, lines):
        b = r["baseline"]
        assert r["configuration"]["paired_baseline"] is True and r["label"] == "bench-cpu paired"
        assert len(r["samples_ms"]) == REPS and len(b["samples_ms"]) == REPS
        assert close(r["statistics"]["median"], float(np.median(r["samples_ms"])))
        assert close(b["speedup"], float(np.median(b["samples_ms"])) / float(np.median(r["samples_ms"])))
        assert b["speedup_ci95"]["lo"] <= b["speedup"] <= b["speedup_ci95"]["hi"], b
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        assert cells[1:3] == ["f16", "f32"] and cells[5] == f"{b['speedup']:.2f}x", cells
        assert cells[6] == f"[{b['speedup_ci95']['lo']:.2f}, {b['speedup_ci95']['hi']:.2f}]", cells
    # and not among the rounds' rows, which compare.py pools
    assert all(not r["configuration"]["paired_baseline"] for r in rows())


def test_no_paired_runs_none():
    paired = os.path.join(WORK, "none.jsonl")
    done = subprocess.run([sys.executable, SCRIPT, "--bench", BENCH, "--seq", "64", "--heads", "4",
                           "--kv-heads", "2", "--dim", "64", "--dtypes", "f32,f16,int8",
                           "--rounds", "1", "--reps", "2", "--warmup", "0", "--inner-loops", "1",
                           "--no-torch", "--no-paired", "--paired-out", paired],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-500:]
    assert "paired (ABAB" not in done.stdout and rows(paired) == [], done.stdout


def test_numpy_decode_matches_reference():
    problem = {"batch": 2, "heads": 6, "kv_heads": 2, "head_dim": 16, "seq_len": 37}
    q, k, v = peers_cpu.problem_data(problem, 3)
    scale = np.float32(1.0 / math.sqrt(16))
    columns = np.ascontiguousarray((q * scale).reshape(2, 2, 3, 16).transpose(0, 1, 3, 2))
    out = peers_cpu.numpy_decode(columns, k, v).reshape(2, 6, 16)
    reference = peers_cpu.reference(q, k, v)
    # and the reference itself, head by head in plain loops
    for b in range(2):
        for h in range(6):
            logits = k[b, h // 3].astype(np.float64) @ q[b, h].astype(np.float64) / 4.0
            p = np.exp(logits - logits.max())
            assert np.allclose(reference[b, h], (p / p.sum()) @ v[b, h // 3], rtol=1e-12, atol=1e-12)
    assert peers_cpu.error_stats(reference, out)["rel_l2"] < 1e-6


def test_wrong_peer_is_reported_not_timed():
    problem = {"batch": 1, "heads": 4, "kv_heads": 2, "head_dim": 16, "seq_len": 50, "reps": 2,
               "warmup": 0, "inner_loops": 1}
    original = peers_cpu.numpy_decode
    peers_cpu.numpy_decode = lambda columns, k, v: original(columns, k, v) * 1.01
    try:
        row, why = peers_cpu.run_numpy(problem, 1, 1 << 20, 10.0, "test")
    finally:
        peers_cpu.numpy_decode = original
    assert row is None and "above" in why, why
    row, why = peers_cpu.run_numpy(problem, 1, 1 << 20, 10.0, "test")
    assert why is None and len(row["samples_ms"]) == 2


def test_cold_copies_rule():
    # ekv's rule: 3 x LLC, at most 64 copies and 2e9 bytes
    assert peers_cpu.cold_copies(1 << 20, 32 << 20) == 64
    assert peers_cpu.cold_copies(100 << 20, 32 << 20) == 1
    assert peers_cpu.cold_copies(10 << 20, 32 << 20) == 10
    assert peers_cpu.cold_copies(400e6, 1e9) == 5  # 8 wanted, 2e9 bytes allow 5


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
        print(f"files kept in {WORK}\n--- peers_cpu.py stdout ---\n{RUN.stdout}\n--- stderr ---\n{RUN.stderr}")
    else:
        shutil.rmtree(WORK, ignore_errors=True)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
