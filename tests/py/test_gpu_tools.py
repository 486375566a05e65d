#!/usr/bin/env python3
"""test_gpu_tools.py - the parts of the GPU check that need no GPU and no torch.

Run:  .venv/bin/python tests/py/test_gpu_tools.py
- bench/peers.py: Student t quantiles (against scipy when installed, and published table
  values), statistics against numpy/scipy definitions, the cold-copy rule, the problem
  list taken from ekv results, and the row shape (read back by bench/compare.py and drawn
  by bench/plot.py next to ekv rows);
- bench/gpu_plan.py: the plans (sizes, order, flags), and the runner's handling of a run
  that succeeds, fails, is unsupported, hangs, is cut by the budget or is predicted not to
  fit (a stub ekv_bench written here);
- bench/gpu_summary.py: Nsight Compute's raw CSV, the static model's rows, ptxas -v, and a
  summary.md written from a results folder built here (ekv, peers, ncu, model, steps).
The Nsight CSV and the static model's JSON here are constructed to the formats those tools
document, not captured from a GPU run. Prints PASS/FAIL per test and "N passed, N failed";
exits 1 on any failure. No pytest.
"""

import json
import math
import os
import random
import shutil
import stat
import sys
import tempfile
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import compare  # noqa: E402
import gpu_plan  # noqa: E402
import gpu_summary  # noqa: E402
import peers  # noqa: E402

try:
    import numpy
except ImportError:
    numpy = None
try:
    import scipy.stats
except ImportError:
    scipy = None

WORK = tempfile.mkdtemp(prefix="ekv_test_gpu_tools_")


def close(a, b, rel=1e-9, absolute=0.0):
    return abs(a - b) <= max(rel * max(abs(a), abs(b)), absolute)


# ---------------------------------------------------------------- peers.py: statistics

def test_t_quantiles_match_tables():
    # two-sided 95% critical values, as printed in standard t tables
    table = {1: 12.706204736, 2: 4.302652730, 5: 2.570581836, 10: 2.228138852,
             30: 2.042272456, 1000: 1.962339081}
    for df, value in table.items():
        got = peers.t_inverse_cdf(0.975, df)
        assert close(got, value, 1e-8), (df, got, value)
    assert peers.t_inverse_cdf(0.5, 7) == 0.0
    assert close(peers.t_inverse_cdf(0.025, 9), -peers.t_inverse_cdf(0.975, 9), 1e-12)


def test_t_quantiles_match_scipy():
    if scipy is None:
        print("    (scipy not installed: table values only)")
        return
    rng = random.Random(3)
    for _ in range(200):
        df = rng.choice([1, 2, 3, 4, 7, 19, 99, 499]) + rng.random() * (rng.random() < 0.3)
        p = rng.uniform(0.5001, 0.9995)
        assert close(peers.t_inverse_cdf(p, df), scipy.stats.t.ppf(p, df), 1e-6), (p, df)
        x = rng.uniform(-30, 30)
        assert close(peers.t_cdf(x, df), scipy.stats.t.cdf(x, df), 1e-9, 1e-14), (x, df)


def test_statistics_follow_numpy_and_scipy():
    rng = random.Random(11)
    for n in (2, 3, 10, 57, 200):
        samples = [rng.lognormvariate(0, 0.3) for _ in range(n)] + [5.0] * (n > 20)
        s = peers.statistics(samples, seed=1)
        assert s["n"] == len(samples)
        if numpy is not None:
            x = numpy.array(samples)
            for key, q in (("median", 50), ("q1", 25), ("q3", 75), ("p5", 5), ("p95", 95),
                           ("p99", 99)):
                assert close(s[key], float(numpy.percentile(x, q)), 1e-12), key
            assert close(s["mean"], float(x.mean()), 1e-12)
            assert close(s["std"], float(x.std(ddof=1)), 1e-12)
        if scipy is not None:
            half = scipy.stats.t.ppf(0.975, len(samples) - 1) * s["std"] / math.sqrt(len(samples))
            assert close(s["ci95_mean"]["lo"], s["mean"] - half, 1e-9)
            assert close(s["trimmed_mean"], float(scipy.stats.trim_mean(samples, 0)), 1e-12)
        assert s["ci95_median"]["lo"] <= s["median"] <= s["ci95_median"]["hi"]
        assert s["min"] <= s["ci95_median"]["lo"] and s["ci95_median"]["hi"] <= s["max"]
    assert peers.statistics([1.0, 2.0, 3.0], seed=5) == peers.statistics([1.0, 2.0, 3.0], seed=5)


def test_outliers_are_counted_by_tukey_fences():
    samples = [10.0] * 8 + [11.0] * 8 + [13.0, 30.0]  # q1 10, q3 11, iqr 1
    s = peers.statistics(samples, seed=0)
    assert (s["q1"], s["q3"]) == (10.0, 11.0), (s["q1"], s["q3"])
    assert s["outliers"] == {"mild": 1, "severe": 1}, s["outliers"]


def test_cold_copies_rule():
    l2 = 50 * 2 ** 20
    assert peers.cold_copies(200 * 2 ** 20, l2, 32, 4096) == 1
    for size in (1 * 2 ** 20, 4 * 2 ** 20, 37 * 2 ** 20, 120 * 2 ** 20):
        for inner in (1, 8, 16, 32, 64):
            n = peers.cold_copies(size, l2, inner, 64 * inner)
            assert n % inner == 0 or inner % n == 0, (size, inner, n)
            want = 1 + math.ceil(3 * l2 / size)
            assert n >= want or n == 64 * inner // inner * inner, (size, inner, n)
    assert peers.cold_copies(4 * 2 ** 20, l2, 32, 4096) == 64   # wants 39: next multiple of 32
    assert peers.cold_copies(40 * 2 ** 20, l2, 32, 4096) == 8   # wants 5: next divisor of 32
    assert peers.cold_copies(4 * 2 ** 20, l2, 32, 40) == 32     # memory allows 40: down to 32
    assert peers.cold_copies(1 * 2 ** 20, l2, 1, 64) == 64      # wants 151, 64 allowed
    assert peers.graph_starts(64, 32) == 2 and peers.graph_starts(4, 32) == 1


# ---------------------------------------------------------------- peers.py: problems and rows

def ekv_row(seq, batch=1, kv_heads=8, dtype="f16", policy="none", compression=1, inference=False,
            backend="cuda", median=0.05):
    samples = [median * (1 + 0.01 * i) for i in range(10)]
    return {"schema_version": 1, "backend": backend, "label": "gpu-check:f16", "variant": None,
            "gpu": {"name": "NVIDIA H200", "sm": "9.0"},
            "configuration": {"seq_len": seq, "batch": batch, "heads": 32, "kv_heads": kv_heads,
                              "head_dim": 128, "kv_dtype": dtype, "policy": policy,
                              "compression": compression, "reps": 10, "warmup": 2,
                              "inner_loops": 16, "softmax_scale": 0.08838834764831845,
                              "inference": inference},
            "results": {"attention_time_ms": median,
                        "memory_bandwidth_gbs": 2 * batch * kv_heads * seq * 256 / median / 1e6,
                        "speedup_vs_baseline": None},
            "statistics": peers.statistics(samples, 1),
            "metrics": {"bytes_total": 2.0 * batch * kv_heads * seq * 256,
                        "peak_bw_theoretical_gbs": 4800.0, "peak_bw_measured_gbs": 4000.0,
                        "efficiency_vs_theoretical": 0.8},
            "accuracy": {"error_total": {"rel_l2": 1e-4}, "error_kernel": {"rel_l2": 1e-7}},
            "memory": {"kv_cache_bytes": 2.0 * batch * kv_heads * seq * 256},
            "baseline": None, "inference_cycle": {"variant": "all"} if inference else None,
            "samples_ms": samples}


def test_problems_from_results_takes_ekv_f16_uncompressed_once():
    rows = [ekv_row(1024), ekv_row(1024), ekv_row(8192, 8, 32), ekv_row(1024, dtype="int8"),
            ekv_row(1024, policy="stride", compression=2), ekv_row(4096, inference=True),
            ekv_row(2048, backend="cpu")]
    problems = peers.problems_from_results(rows)
    assert [(p["seq_len"], p["batch"], p["kv_heads"]) for p in problems] == \
        [(1024, 1, 8), (8192, 8, 32)], problems
    p = problems[0]
    assert (p["reps"], p["warmup"], p["inner_loops"], p["heads"], p["head_dim"]) == (10, 2, 16, 32, 128)
    assert p["ekv"]["peak_bw_measured_gbs"] == 4000.0


def peer_row(problem, dtype="f16", backend="torch-sdpa", median=0.06, copy=float("nan")):
    samples = [median * (1 + 0.02 * ((i * 7) % 5)) for i in range(problem["reps"])]
    errors = {"error_total": {"rel_l2": 2e-3, "max_abs": 1e-3, "cosine": 0.99999},
              "error_compression": {"rel_l2": 2e-3, "max_abs": 1e-3, "cosine": 0.99999},
              "error_kernel": {"rel_l2": 3e-4, "max_abs": 1e-4, "cosine": 1.0}}
    return peers.make_row(backend, problem, dtype, "enable_gqa", samples, seed=42,
                          cache_copies=16, cuda_graphs=True, gpu={"name": "NVIDIA H200"},
                          copy_gbs=copy, errors=errors, peer={"version": "torch 9.9"},
                          timestamp="2026-12-02T00:00:00Z")


def test_row_shape_follows_ekv():
    problem = peers.problems_from_results([ekv_row(8192, 8, 8)])[0]
    row = peer_row(problem)
    text = json.dumps(row, allow_nan=False)  # strict JSON: the NaN copy bandwidth is null
    assert row["metrics"]["peak_bw_measured_gbs"] is None
    for key in ("schema_version", "timestamp", "backend", "label", "build", "gpu", "configuration",
                "results", "statistics", "metrics", "accuracy", "memory", "samples_ms"):
        assert key in row, key
    for key in ("attention_time_ms", "attention_time_std", "coefficient_of_variation",
                "tokens_per_sec", "memory_bandwidth_gbs", "memory_efficiency_percent"):
        assert key in row["results"], key
    assert set(row["statistics"]) == set(ekv_row(1)["statistics"])
    bytes_total = 2 * 8 * 8 * 8192 * 128 * 2 + 2 * 8 * 32 * 128 * 2
    assert row["metrics"]["bytes_total"] == bytes_total
    median = row["results"]["attention_time_ms"]
    assert close(row["results"]["memory_bandwidth_gbs"], bytes_total / median / 1e6, 1e-12)
    assert close(row["results"]["memory_efficiency_percent"],
                 100 * row["results"]["memory_bandwidth_gbs"] / 4800.0, 1e-12)
    assert row["results"]["tokens_per_sec"] == 8 * 1000.0 / median
    assert row["configuration"]["gqa_mode"] == "enable_gqa"
    path = os.path.join(WORK, "peer.jsonl")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text + "\n" + json.dumps(peer_row(problem, "bf16"), allow_nan=False) + "\n")
    loaded = compare.load_results(path)
    keys = compare.workload(loaded[0])
    assert keys["backend"] == "torch-sdpa" and keys["seq_len"] == 8192 and keys["gqa_mode"] == "enable_gqa"
    assert compare.samples_of(loaded[1], path, 2) == loaded[1]["samples_ms"]


def test_plot_draws_ekv_and_peers_together():
    try:
        import plot  # noqa: PLC0415
    except ImportError:
        print("    (matplotlib not installed: not drawn)")
        return
    rows = [ekv_row(s, 1, 8, median=0.01 * s / 1024) for s in (1024, 8192)]
    problems = peers.problems_from_results(rows)
    path = os.path.join(WORK, "mixed.jsonl")
    with open(path, "w", encoding="utf-8") as handle:
        for record in rows + [peer_row(p, median=0.012 * p["seq_len"] / 1024) for p in problems]:
            handle.write(json.dumps(record) + "\n")
    out = os.path.join(WORK, "mixed.png")
    assert plot.main(["bandwidth", path, "-o", out]) == 0
    with open(out, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- gpu_plan.py

def test_plans():
    full = gpu_plan.f16_sweep("full")
    shapes = {(c["seq"], c["batch"], c["kv-heads"]) for c in full}
    assert len(full) == len(shapes) == 24
    assert {c["seq"] for c in full} == {1024, 8192, 32768, 131072}
    head = [(c["seq"], c["batch"], c["kv-heads"]) for c in full[:7]]
    assert {(s, 1, 8) for s in (1024, 8192, 32768, 131072)} <= set(head), head
    assert {(1024, b, 8) for b in (1, 8, 32)} | {(1024, 1, 32)} <= set(head), head
    costs = [gpu_plan.host_seconds(c) for c in full[7:]]
    assert costs == sorted(costs), "f16 sweep: after every value once, cheapest first"
    dtype_policy = gpu_plan.dtype_policy_sweep("full")
    combos = [(c["kv-dtype"], c["policy"], c["compress"]) for c in dtype_policy]
    assert len(combos) == len(set(combos)) == 6 + 6 * 4 * 3
    assert combos[:6] == [(d, "none", 1) for d in gpu_plan.DTYPES]
    assert all(c["seq"] == 32768 and c["paired-baseline"] for c in dtype_policy)
    for mode in gpu_plan.MODES:
        for sweep in gpu_plan.SWEEPS.values():
            for c in sweep(mode):
                assert c["heads"] % c["kv-heads"] == 0, c
                assert (c["policy"] == "none") == (c["compress"] == 1), c
                assert c["reps"] >= 2, c
    assert [c["label"] for c in gpu_plan.cycle_sweep("full")] == \
        ["gpu-check:cycle:gpt2-small", "gpu-check:cycle:llama3-8b"]
    assert gpu_plan.to_args({"seq": 5, "hot": True, "no-graphs": False, "x": None}) == \
        ["--seq=5", "--hot"]
    assert "--kv-dtype=int4" in gpu_plan.to_args(gpu_plan.case("ncu-int4", "full"))


def test_estimates_grow_with_the_problem():
    small = gpu_plan.estimate(gpu_plan.f16_sweep("full")[0], "cuda")
    large = gpu_plan.estimate(gpu_plan.f16_sweep("full")[-1], "cuda")
    assert large[1] > 100 * small[1]
    calibration = gpu_plan.Calibration()
    assert calibration.predict(1.0, 10.0) == 11.0
    calibration.observe(0.1, 0.8)        # a short run: the fixed cost
    calibration.observe(10.0, 20.8)      # a long one: twice the predicted variable part
    assert calibration.fixed == 0.8
    assert close(calibration.predict(1.5, 5.0), 0.8 + 2.0 * 5.0, 1e-12)


STUB = """#!/usr/bin/env python3
import sys, time
args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if "=" in a)
seq = int(args["seq"])
if seq == 1:
    with open(args["jsonl"], "a") as f:
        f.write('{"backend": "stub", "configuration": {"seq_len": 1}}\\n')
    sys.exit(0)
if seq == 2:
    sys.stderr.write("ekv_bench: error: the CUDA kernel differs from the reference\\n")
    sys.exit(1)
if seq == 3:
    sys.stderr.write("ekv_bench: error: fp8 e4m3 KV cache needs sm_89 or newer (device is sm_80)\\n")
    sys.exit(2)
time.sleep(30)
"""


def test_runner_records_every_outcome():
    stub = os.path.join(WORK, "stub_bench")
    with open(stub, "w", encoding="utf-8") as handle:
        handle.write(STUB.replace("#!/usr/bin/env python3", "#!" + sys.executable))
    os.chmod(stub, os.stat(stub).st_mode | stat.S_IEXEC)
    saved = (gpu_plan.estimate, gpu_plan.MIN_TIMEOUT)
    gpu_plan.estimate = lambda config, backend: (0.05, config.get("predict", 0.1))
    gpu_plan.MIN_TIMEOUT = 1.0
    try:
        base = {"batch": 1, "heads": 1, "dim": 64, "kv-dtype": "f16", "reps": 2, "warmup": 0,
                "inner_loops": 1}
        configs = [dict(base, seq=1), dict(base, seq=2), dict(base, seq=3), dict(base, seq=4),
                   dict(base, seq=1, predict=1000.0)]
        jsonl, runs = os.path.join(WORK, "r.jsonl"), os.path.join(WORK, "runs.jsonl")
        counts, failed = gpu_plan.run_sweep("t", configs, stub, "cuda", jsonl, runs, 20.0,
                                            os.path.join(WORK, "r.log"), gpu_plan.Calibration())
        records = [json.loads(line) for line in open(runs, encoding="utf-8")]
        assert [r["status"] for r in records] == \
            ["ok", "failed", "unsupported", "timeout", "skipped"], records
        assert failed and counts == {"ok": 1, "failed": 1, "unsupported": 1, "timeout": 1,
                                     "skipped": 1}
        assert "differs from the reference" in records[1]["reason"]
        assert "sm_89" in records[2]["reason"]
        assert records[3]["seconds"] < 10
        assert len(open(jsonl, encoding="utf-8").read().splitlines()) == 1
        # a budget smaller than the hang timeout: the run is cut, which is not a failure
        gpu_plan.MIN_TIMEOUT = 60.0
        os.remove(runs)
        counts, failed = gpu_plan.run_sweep("t", [dict(base, seq=4)], stub, "cuda", jsonl, runs,
                                            1.5, os.devnull, gpu_plan.Calibration())
        record = json.loads(open(runs, encoding="utf-8").read())
        assert record["status"] == "cut" and not failed, record
    finally:
        gpu_plan.estimate, gpu_plan.MIN_TIMEOUT = saved
    assert gpu_plan.note("t", {"ok": 3, "skipped": 2}, 5) == \
        "NOTE: t: 3 of 5 configurations measured (3 ok, 2 skipped)"


# ---------------------------------------------------------------- gpu_summary.py

NCU_CSV = '''==PROF== Connected to process 4242
"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size","Device","CC","dram__bytes_read.sum","dram__throughput.avg.pct_of_peak_sustained_elapsed","gpu__time_duration.sum","sm__inst_issued.avg.pct_of_peak_sustained_active","smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio","smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio","smsp__average_warps_issue_stalled_wait_per_issue_active.ratio","smsp__issue_active.avg.pct_of_peak_sustained_active"
"","","","","","","","","","","","Mbyte","%","usecond","%","inst","inst","inst","%"
"0","4242","ekv_bench","gpu","void ekv_cuda__attention_kernel<1, 128, 8>(ekv_cuda__attention_params)","1","13","(128, 1, 1)","(132, 1, 1)","0","9.0","1,342.18","91.37","35.20","22.5","12.40","0.31","1.05","21.9"
'''


def test_ncu_raw_csv():
    path = os.path.join(WORK, "ncu_f16.csv")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(NCU_CSV)
    kernels = gpu_summary.parse_ncu_csv(path)
    assert len(kernels) == 1
    facts = gpu_summary.ncu_facts(kernels[0])
    assert facts["kernel"].startswith("void ekv_cuda__attention_kernel<1, 128, 8>")
    assert close(facts["dram_read_bytes"], 1342.18e6, 1e-12)
    assert facts["dram_pct"] == 91.37 and facts["issue_pct"] == 22.5
    assert facts["duration_us"] == 35.2 and facts["issue_active_pct"] == 21.9
    assert [s[0] for s in facts["stalls"]] == ["long_scoreboard", "wait", "barrier"]
    in_ns = NCU_CSV.replace('"usecond"', '"nsecond"').replace('"35.20"', '"35,200"')
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(in_ns)
    assert gpu_summary.ncu_facts(gpu_summary.parse_ncu_csv(path)[0])["duration_us"] == 35.2


def test_model_rows_and_ceiling():
    model = [{"dtype": "f16", "head_dim": 128, "tile": 8, "ceiling_pct": {"H100": 80.0, "H200": 70.0}},
             {"dtype": "f16", "head_dim": 128, "tile": 1, "ceiling_pct": {"H200": 90.0}},
             {"dtype": "int4", "head_dim": 128, "tile": 8, "ceiling_pct": {"H200": 55.0},
              "kernel": "ekv_cuda__attention_kernel<4, 128, 8>"},
             {"dtype": "int4", "head_dim": 128, "tile": 1, "ceiling_pct": {"H200": 65.0},
              "kernel": "ekv_cuda__attention_kernel<4, 128, 1>"},
             {"dtype": "f16", "head_dim": 64, "tile": 8, "ceiling_pct": {"H200": 99.0}}]
    assert len(gpu_summary.model_rows(model, "f16", 128, "whatever")) == 2
    named = gpu_summary.model_rows(model, "int4", 128,
                                   "void ekv_cuda__attention_kernel<4, 128, 8>(ekv_cuda__attention_params)")
    assert [r["tile"] for r in named] == [8]
    assert gpu_summary.ceiling_for(model[0], "NVIDIA H200") == ("H200", 70.0)
    assert gpu_summary.ceiling_for(model[0], "NVIDIA A100")[0] is None


PTXAS = """ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_Z26ekv_cuda__attention_kernelILi1ELi128ELi8EEv26ekv_cuda__attention_params' for 'sm_90'
ptxas info    : Function properties for _Z26ekv_cuda__attention_kernelILi1ELi128ELi8EEv26ekv_cuda__attention_params
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 246 registers, used 1 barriers, 16640 bytes smem
ptxas info    : Compiling entry function '_Z22ekv_cuda__merge_kernel22ekv_cuda__merge_params' for 'sm_90'
ptxas info    : Function properties for _Z22ekv_cuda__merge_kernel22ekv_cuda__merge_params
    8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 40 registers, used 0 barriers
"""


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def test_summary_of_a_results_folder():
    d = os.path.join(WORK, "results")
    ekv = [ekv_row(32768, 1, 8, median=0.040), ekv_row(1024, 1, 8, median=0.005)]
    problems = peers.problems_from_results(ekv)
    peer = [peer_row(problems[0], median=0.050), peer_row(problems[0], "bf16", median=0.060)]
    write(os.path.join(d, "ekv_f16.jsonl"), "".join(json.dumps(r) + "\n" for r in ekv))
    write(os.path.join(d, "peers.jsonl"), "".join(json.dumps(r) + "\n" for r in peer) + "{broken\n")
    int4 = ekv_row(32768, 1, 8, dtype="int4", median=0.02)
    int4["baseline"] = {"kv_dtype": "f16", "attention_time_ms": 0.04, "speedup": 2.0,
                        "speedup_ci95": {"lo": 1.9, "hi": 2.1}}
    int4["results"]["speedup_vs_baseline"] = 2.0
    write(os.path.join(d, "ekv_dtype_policy.jsonl"), json.dumps(int4) + "\n")
    write(os.path.join(d, "ncu", "ncu_f16.csv"), NCU_CSV)
    write(os.path.join(d, "sass_model.json"), json.dumps(
        [{"dtype": "f16", "head_dim": 128, "tile": 8, "ceiling_pct": {"H200": 77.5}}]))
    write(os.path.join(d, "logs", "build-ekv_bench.log"), PTXAS)
    write(os.path.join(d, "logs", "test_gpu.log"), "PASS a\nPASS b\n2 passed, 0 failed\n")
    write(os.path.join(d, "logs", "memcheck-attention.log"), "========= ERROR SUMMARY: 0 errors\n")
    write(os.path.join(d, "env.json"), json.dumps({"mode": "full", "gpu_name": "NVIDIA H200",
                                                   "date": "2026-12-02", "elapsed_s": 400}))
    write(os.path.join(d, "steps.tsv"), "step\trequired\tstatus\tseconds\tnote\n"
          "test_gpu\tyes\tok\t50\t2 passed, 0 failed\n"
          "memcheck-attention\tyes\tok\t20\t\n"
          "ncu-int4\tno\tunavailable\t3\tthe tool cannot run here: ERR_NVGPUCTRPERM\n"
          "peers\tno\tok\t30\tpeers: 2 rows measured (2 ok)\n")
    write(os.path.join(d, "runs.jsonl"), json.dumps(
        {"sweep": "f16", "status": "skipped", "config": "seq=131072 batch=32",
         "reason": "predicted 900 s > 12 s left"}) + "\n")
    assert gpu_summary.write_summary(d) == 0
    text = open(os.path.join(d, "summary.md"), encoding="utf-8").read()
    # ratios against ekv's f16 time on the same problem, % of ekv's measured copy bandwidth
    assert "| S=32768 B=1 H=32 Hkv=8 D=128 | torch-sdpa | f16 | enable_gqa | 0.05" in text, text
    for row in peer:
        ratio = row["results"]["attention_time_ms"] / ekv[0]["results"]["attention_time_ms"]
        assert f"| {gpu_summary.fmt(ratio, 3)} |" in text, (ratio, text)
    ekv_gbs = ekv[0]["results"]["memory_bandwidth_gbs"]
    assert f"| {100 * ekv_gbs / 4000.0:.1f}% |" in text
    assert "| int4 | none | 1 | 0.02 | f16 0.04 | 2 | [1.9, 2.1] |" in text, text
    assert "| 91.4 |" in text and "77.5%" in text and "long_scoreboard 12.40" in text, text
    assert "unavailable: the tool cannot run here: ERR_NVGPUCTRPERM" in text
    assert "| test_gpu | ok | 50 | 2 passed, 0 failed |" in text
    assert "ERROR SUMMARY: 0 errors" in text
    assert "2 kernels; 1 with spills" in text and "| 246 | 16640 |" in text, text
    assert "| f16 | skipped | seq=131072 batch=32 | predicted 900 s > 12 s left |" in text
    assert "peers.jsonl: 1 line(s) did not parse" in text


def test_cycle_flattening():
    row = {"configuration": {"heads": 2}, "label": "gpu-check:cycle:gpt2-small",
           "inference_cycle": {"variant": "all", "variants": [
               {"variant": "nocache", "series": []}, {"variant": "elastic", "series": []}]}}
    flat = gpu_summary.flatten_cycle([row])
    assert [(r["variant"], r["inference_cycle"]["variant"], r["label"]) for r in flat] == \
        [("nocache", "nocache", "gpt2-small"), ("elastic", "elastic", "gpt2-small")]


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
