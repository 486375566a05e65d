"""tests/test_cli.py - ekv_bench end to end: every bad-input path exits 2 with a one-line
error naming the flag and leaves no file behind; small sweeps on the CPU (or emulator)
backend give JSON that Python's json and jq both parse, with consistent figures
(bandwidth = bytes / median, tokens/s = batch x 1000 / median, speedup = ratio of
medians, samples as requested) and the build's identity; --out, --jsonl, --dump-dir
work; --format=csv, markdown and table give one row per configuration that agrees with
the JSON; a run of a few seconds shows progress on stderr (lines on a pipe, a bar on a
terminal) unless --quiet; the inference cycle's fields, text output and errors. Issue 16:
output written through symbolic links, to devices and FIFOs, every write checked (stdout
included); bad data named as data; defaults that fit short sequences; memory estimated
before allocating (host, and the device's on the emulator); the smaller points (pool
C=1, repeated flags, cycle-only flags, overlong numbers, the dump's observed queries).

Run: .venv/bin/python tests/test_cli.py build/ekv_bench_cpu [--backend=emulator]
"""
import json
import math
import os
import re
import resource
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import threading
import time

import numpy as np

BENCH = sys.argv[1]
EXTRA = sys.argv[2:]  # e.g. --backend=emulator
FAST = ["--reps=5", "--warmup=1", "--inner_loops=2", "--quiet"]
passed = failed = skipped = 0


def skip(name, why):
    global skipped
    skipped += 1
    print(f"SKIP {name}: {why}")


def report(name, ok, why=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"PASS {name}")
    else:
        failed += 1
        print(f"FAIL {name}: {why}")


def skip(name, why):
    global skipped
    skipped += 1
    print(f"SKIP {name}: {why}")


def run(args, timeout=300):
    p = subprocess.run([BENCH] + args, capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def run_guarded(args, timeout=60, env=None, stdout=subprocess.PIPE, preexec_fn=None):
    """run() for the tests that a regression could hang or that hand ekv_bench an odd
    standard output: a timeout is a failed check (exit status "timeout"), not a hung suite."""
    try:
        p = subprocess.run([BENCH] + args, stdout=stdout, stderr=subprocess.PIPE, text=True,
                           timeout=timeout, env=env, preexec_fn=preexec_fn)
    except subprocess.TimeoutExpired:
        return "timeout", "", f"no exit within {timeout} s"
    return p.returncode, p.stdout or "", p.stderr


def close(a, b, rel=1e-9):
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-300)


# ---- bad input: exit 2, one line naming the flag, nothing written -------------------

tmp = tempfile.mkdtemp(prefix="ekv_cli_")
bad_npy = os.path.join(tmp, "bad.npy")
with open(bad_npy, "wb") as f:
    f.write(b"\x93NUMPY\x01\x00\x76\x00{'descr': '<f4', 'fortran_order': False, 'shape': (99999999,), }")
missing_dir = os.path.join(tmp, "no", "such", "dir")

BAD = [
    (["--foo"], "--foo"),
    (["--seq=abc"], "--seq"),
    (["--seq=0"], "--seq"),
    (["--seq="], "--seq"),
    (["--seq=1e3"], "--seq"),
    (["--seq=64,,128"], "--seq"),
    (["--seq"], "--seq"),
    (["--heads=12", "--kv-heads=5"], "--kv-heads"),
    (["--heads=4", "--kv-heads=8"], "--kv-heads"),
    (["--dim=33"], "--dim"),
    (["--dim=0"], "--dim"),
    (["--dim=2048"], "--dim"),
    (["--compress=3", "--policy=none"], "--compress"),
    (["--compress=0"], "--compress"),
    (["--compress=65"], "--compress"),
    (["--kv-dtype=int3"], "--kv-dtype"),
    (["--policy=lru"], "--policy"),
    (["--reps=1"], "--reps"),
    (["--reps=10,20"], "--reps"),
    (["--warmup=-1"], "--warmup"),
    (["--inner_loops=0"], "--inner_loops"),
    (["--truncate=50"], "--truncate"),
    (["--truncate=abc"], "--truncate"),
    (["--json=1"], "--json"),
    (["--baseline-dtype=f32"], "--baseline-dtype"),
    (["--inference", "--decode_tokens=0"], "--decode_tokens"),
    (["--inference", "--variant=int8", "--kv-dtype=f32"], "--kv-dtype"),
    (["--backend=gpu"], "--backend"),
    (["--variant=v9"], "--variant"),
    (["--device=99"], "--device"),
    (["--peak-bw=-5"], "--peak-bw"),
    (["--peak-bw=abc"], "--peak-bw"),
    (["--seed=-1"], "--seed"),
    (["--seed=12x"], "--seed"),
    (["--observe=0"], "--observe"),
    (["--seq=64", "--recent=65"], "--recent"),
    (["--seq=64", "--sinks=100"], "--sinks"),
    (["--seq=64,128", "--dump-dir=" + tmp], "--dump-dir"),
    (["--dump-dir=" + missing_dir], "--dump-dir"),
    (["--out=" + os.path.join(missing_dir, "x.json")], "--out"),
    (["--jsonl=" + os.path.join(missing_dir, "x.jsonl")], "--jsonl"),
    (["--data=" + os.path.join(tmp, "missing.npz")], "missing.npz"),
    (["--data=" + bad_npy], "bad.npy"),
    (["--data="], "--data"),
    (["--label=" + "x" * 300], "--label"),
    (["--format=html"], "--format"),
    (["--format=csv", "--json"], "--format"),
    (["--format=table,csv"], "--format"),
    # issue 16: explicit values still judged against the workload; cycle-only flags;
    # numbers echoed as typed
    (["--seq=3", "--sinks=4"], "--sinks=4"),
    (["--seq=3", "--recent=4"], "--recent=4"),
    (["--variant=int8"], "--inference"),
    (["--layers=2"], "--inference"),
    (["--decode_tokens=8"], "--inference"),
    (["--compress-every=2"], "--inference"),
    (["--seq=99999999999999999999"], "--seq=99999999999999999999 "),
    (["--peak-bw=1e999"], "--peak-bw=1e999 "),
    (["--out=" + tmp], "--out"),
    # issue 17: the page size of the paged cache
    (["--page-size=12"], "--page-size"),
    (["--page-size=abc"], "--page-size"),
    (["--page-size=128"], "--page-size"),
    # the inference cycle's serving simulation: --memory-budget (GB of pages)
    (["--inference", "--page-size=16", "--memory-budget=abc"], "--memory-budget"),
    (["--inference", "--page-size=16", "--memory-budget="], "--memory-budget"),
    (["--inference", "--page-size=16", "--memory-budget=0"], "--memory-budget"),
    (["--inference", "--page-size=16", "--memory-budget=-2"], "--memory-budget"),
    (["--inference", "--page-size=16", "--memory-budget=nan"], "--memory-budget"),
    (["--inference", "--page-size=16", "--memory-budget=2e6"], "--memory-budget"),
    (["--memory-budget=1"], "--memory-budget"),
    (["--page-size=16", "--memory-budget=1"], "--memory-budget"),
    (["--inference", "--memory-budget=1"], "--memory-budget"),
    (["--inference", "--page-size=16", "--memory-budget=1e-6"], "--memory-budget"),
    (["--inference", "--page-size=8", "--memory-budget=1000", "--heads=1"], "--memory-budget"),
]
if "--backend=emulator" not in EXTRA:
    BAD.append((["--backend=cuda"], "--backend"))
else:
    # one device selection for attention and the cycle: a missing ordinal is bad input
    # for both, never a silent fall-back (the emulator has one device)
    BAD.append((["--device=3"], "--device"))
    BAD.append((["--device=3", "--inference", "--decode_tokens=2"], "--device"))
    # the CUDA kernels' head dims are the CUDA backend's check; the CPU takes any
    BAD.append((["--dim=96"], "--dim"))

for args, needle in BAD:
    out_file = os.path.join(tmp, "should_not_exist.json")
    jsonl_file = os.path.join(tmp, "should_not_exist.jsonl")
    full = args + FAST + ["--seq=64"] * (not any(a.startswith("--seq") for a in args)) + EXTRA
    if not any(a.startswith("--out") for a in args):
        full = full + ["--out=" + out_file]
    if not any(a.startswith("--jsonl") for a in args):
        full = full + ["--jsonl=" + jsonl_file]
    code, out, err = run(full)
    lines = [l for l in err.splitlines() if l.strip()]
    name = "bad input " + " ".join(args)[:70]
    ok = (code == 2 and len(lines) == 1 and needle in lines[0] and out == ""
          and not os.path.exists(out_file) and not os.path.exists(jsonl_file))
    report(name, ok, f"exit {code}, stderr {err!r}, stdout {out[:80]!r}, "
                     f"files {os.path.exists(out_file)}/{os.path.exists(jsonl_file)}")

if "--backend=emulator" not in EXTRA:
    code, out, err = run(["--dim=96", "--seq=64", "--json"] + FAST)
    report("CPU backend: any head dim (96) runs and validates",
           code == 0 and json.loads(out)["configuration"]["head_dim"] == 96, err)

code, out, err = run(["--help"])
report("--help exits 0 and lists flags", code == 0 and "--kv-dtype" in out and "--paired-baseline" in out, err)
report("--help prints its text as written (95% CI, no printf escapes)",
       "95% CI" in out and "%%" not in out and "--format=NAME" in out, out[-400:])
code, out, err = run(["--version"])
report("--version", code == 0 and out.startswith("ekv_bench "), out)

# ---- end to end ------------------------------------------------------------------------


def parse_lines(text):
    docs = []
    for line in text.splitlines():
        docs.append(json.loads(line, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c))))
    return docs


JQ_MISSING = "jq is not installed (Debian/Ubuntu: sudo apt-get install jq, or make tools as root)"


def jq_ok(text):
    p = subprocess.run(["jq", "-e", "-c", ".results.attention_time_ms"], input=text,
                       capture_output=True, text=True)
    return p.returncode == 0 and len(p.stdout.splitlines()) == len(text.splitlines())


def consistent(d, reps):
    c, r, m, s = d["configuration"], d["results"], d["metrics"], d["statistics"]
    med = r["attention_time_ms"]
    why = []
    if len(d["samples_ms"]) != reps:
        why.append("samples")
    if not close(float(np.median(d["samples_ms"])), med, 1e-12):
        why.append("median != median(samples)")
    if not close(s["median"], med):
        why.append("statistics.median")
    if not close(r["memory_bandwidth_gbs"], m["bytes_total"] / (med * 1e-3) / 1e9, 1e-9):
        why.append("bandwidth != bytes/median")
    if not close(r["tokens_per_sec"], c["batch"] * 1000.0 / med, 1e-9):
        why.append("tokens/s")
    if not close(s["std"], float(np.std(d["samples_ms"], ddof=1)), 1e-9):
        why.append("std")
    parts = m["bytes"]
    if not close(m["bytes_total"], sum(parts[k] for k in ("k", "v", "scales", "bias", "q", "out", "partials"))):
        why.append("bytes_total != sum of parts")
    kv_heads = c["kv_heads"]
    kept = m["kept_tokens"]
    if not close(m["flops"], 4.0 * c["heads"] * kept * c["head_dim"]):
        why.append("flops")
    if d["backend"] not in ("cpu", "emulator", "cuda"):
        why.append("backend")
    a = d["accuracy"]
    for key in ("error_total", "error_compression", "error_kernel"):
        e = a[key]
        if e["rel_l2"] is None or not (e["rel_l2"] >= 0) or not (e["cosine"] <= 1 + 1e-12):
            why.append(key)
    # ekv_cuda_validation_tolerance: f32 arithmetic on CUDA cores and the CPU backend;
    # f16/bf16 fragments on tensor cores (build.kernel names the mma kernel) round q and
    # the weights to 2^-12 and are held to 2e-3
    limit = 2e-3 if "mma" in (d["build"].get("kernel") or "") else 1e-4
    if a["error_kernel"]["rel_l2"] > limit:
        why.append("kernel error too large")
    if d["backend"] != "cpu" and not d["build"].get("kernel"):
        why.append("build.kernel does not name the kernel that ran")
    if c["compression"] == 1 and c["policy"] in ("none", "stride") and c["kv_dtype"] == "f32":
        if a["error_total"]["rel_l2"] > 1e-5:
            why.append("f32 uncompressed error too large")
    if c["compression"] > 1 and c["policy"] != "none" and a["error_compression"]["rel_l2"] <= 0:
        why.append("compression reported exact")
    mem = d["memory"]
    if c["compression"] > 1 and not mem["kv_cache_bytes"] < mem["kv_cache_bytes_uncompressed"]:
        why.append("compressed cache not smaller")
    _ = kv_heads
    return why


# the emulator runs one OS thread per CUDA thread: a smaller sweep keeps it to minutes
EMULATED = "--backend=emulator" in EXTRA
DTYPES = "f16,int4" if EMULATED else "f32,f16,int8,int4,fp8,bf16"
N_SWEEP = 4 * len(DTYPES.split(","))
sweep = ["--seq=64,200", "--compress=1,4", "--kv-heads=2", "--heads=4",
         "--kv-dtype=" + DTYPES, "--policy=stride"]
code, out, err = run(sweep + FAST + ["--json"] + EXTRA)
docs = []
try:
    docs = parse_lines(out)
    ok = code == 0 and len(docs) == N_SWEEP
    report(f"sweep of {N_SWEEP} parses with json (strict)", ok, f"exit {code}, {len(docs)} docs, {err[-300:]}")
except ValueError as e:
    report(f"sweep of {N_SWEEP} parses with json (strict)", False, str(e))
if shutil.which("jq"):
    report("sweep parses with jq", jq_ok(out))
else:
    skip("sweep parses with jq", JQ_MISSING)
bad = [(d["configuration"]["seq_len"], d["configuration"]["kv_dtype"], consistent(d, 5)) for d in docs]
bad = [b for b in bad if b[2]]
report("sweep figures consistent", not bad, str(bad[:4]))

# build identity: what compare.py reads to tell builds apart
if docs:
    b = docs[0]["build"]
    report("build identity: compiler and version, optimized, flags, git commit",
           isinstance(b.get("compiler"), str) and b["compiler"].split(" ")[0] in ("gcc", "clang", "nvcc")
           and any(ch.isdigit() for ch in b["compiler"]) and b.get("optimized") is True
           and "flags" in b and (b["flags"] is None or isinstance(b["flags"], str))
           and "git_commit" in b and (b["git_commit"] is None or isinstance(b["git_commit"], str))
           and docs[0]["ekv_version"], json.dumps(b))
    if docs[0]["backend"] == "cpu":
        g = docs[0]["gpu"]
        unknown = ("sm", "l2_bytes", "memory_bytes", "memory_clock_khz", "bus_width_bits",
                   "driver_version", "runtime_version", "theoretical_bw_gbs", "peak_gflops")
        report("CPU backend: device facts it cannot know are null, not 0",
               all(g[k] is None for k in unknown) and g["sm_count"] >= 1 and g["name"], json.dumps(g))

for policy in (("pool", "topk") if EMULATED else ("pool", "window", "topk", "stride")):
    code, out, err = run(["--seq=300", "--compress=2,8", "--recent=16", "--heads=8", "--kv-heads=2",
                          "--dim=128", "--policy=" + policy, "--json", "--batch=2"] + FAST + EXTRA)
    try:
        ds = parse_lines(out)
        why = [w for d in ds for w in consistent(d, 5)]
        e2 = ds[0]["accuracy"]["error_compression"]["rel_l2"]
        e8 = ds[1]["accuracy"]["error_compression"]["rel_l2"]
        ok = code == 0 and len(ds) == 2 and not why and e8 >= e2 > 0
        report(f"policy {policy}: C=8 costs more error than C=2", ok, f"{why} e2={e2} e8={e8} {err[-200:]}")
    except (ValueError, IndexError, KeyError) as e:
        report(f"policy {policy}", False, f"{e} exit {code} {err[-300:]}")

code, out, err = run(["--seq=256", "--compress=4", "--policy=window", "--paired-baseline", "--json",
                      "--reps=12", "--warmup=2", "--inner_loops=2", "--quiet"] + EXTRA)
try:
    d = parse_lines(out)[0]
    b = d["baseline"]
    ratio = float(np.median(b["samples_ms"]) / np.median(d["samples_ms"]))
    ok = (code == 0 and len(b["samples_ms"]) == 12 and close(d["results"]["speedup_vs_baseline"], ratio, 1e-9)
          and b["speedup_ci95"]["lo"] <= ratio <= b["speedup_ci95"]["hi"]
          and close(d["results"]["baseline_tokens_per_sec"], 1000.0 / b["attention_time_ms"], 1e-9)
          and b["kv_dtype"] == "f16" and d["configuration"]["baseline_dtype"] == "f16")
    report("paired baseline: speedup = ratio of medians, inside its CI", ok, json.dumps(b)[:300])
except (ValueError, IndexError, KeyError, TypeError) as e:
    report("paired baseline", False, f"{e} exit {code} {err[-300:]}")

code, out, err = run(["--seq=128", "--kv-dtype=int8", "--paired-baseline", "--json"] + FAST + EXTRA)
try:
    d = parse_lines(out)[0]
    report("int8 candidate is paired with an f16 baseline by default",
           code == 0 and d["baseline"]["kv_dtype"] == "f16", err[-200:])
except (ValueError, IndexError, KeyError) as e:
    report("int8 paired baseline", False, str(e))

code, out, err = run(["--seq=128"] + FAST + EXTRA)
report("table output", code == 0 and "median" in out and "GB/s" in out and "rel_l2" in out, err[-300:])

# ---- --format: one row per configuration --------------------------------------------
import csv
import io
import re

CSV_COLUMNS = ["label", "backend", "device", "cache_state", "variant", "batch", "seq_len", "heads",
               "kv_heads", "head_dim", "kv_dtype", "policy", "compression", "recent", "sinks",
               "observe", "data", "seed", "layers", "decode_tokens", "compress_every", "n",
               "baseline", "median_ms", "ci95_lo_ms", "ci95_hi_ms", "cv", "noisy", "tokens_per_sec",
               "bandwidth_gbs", "pct_of_theoretical_peak", "pct_of_measured_copy", "speedup",
               "speedup_ci95_lo", "speedup_ci95_hi", "rel_l2", "rel_l2_vs_cache", "kv_cache_bytes",
               "notice"]
# the emulator takes seconds per launch: fewer configurations there
FORMAT_DTYPES = ["f16"] if "--backend=emulator" in EXTRA else ["f16", "int8"]
FORMAT_SWEEP = ["--seq=64,96", "--kv-dtype=" + ",".join(FORMAT_DTYPES), "--heads=4", "--kv-heads=2",
                "--paired-baseline"] + FAST
FORMAT_ROWS = 2 * len(FORMAT_DTYPES)
format_jsonl = os.path.join(tmp, "format.jsonl")


def csv_number(text):
    return None if text == "" else float(text)


code, out, err = run(FORMAT_SWEEP + ["--format=csv", "--label=a,\"b\" c", "--jsonl=" + format_jsonl] + EXTRA)
try:
    rows = list(csv.DictReader(io.StringIO(out)))
    with open(format_jsonl) as f:
        jl = parse_lines(f.read())
    os.remove(format_jsonl)
    header = next(csv.reader(io.StringIO(out)))
    why = []
    if header != CSV_COLUMNS:
        why.append(f"columns {header}")
    if len(rows) != FORMAT_ROWS or len(jl) != FORMAT_ROWS:
        why.append(f"{len(rows)} rows, {len(jl)} results")
    for row, d in zip(rows, jl):
        r, st, c = d["results"], d["statistics"], d["configuration"]
        checks = {
            "label": row["label"] == 'a,"b" c',
            "workload": (int(row["seq_len"]), row["kv_dtype"]) == (c["seq_len"], c["kv_dtype"]),
            "median": csv_number(row["median_ms"]) == r["attention_time_ms"],
            "ci": (csv_number(row["ci95_lo_ms"]), csv_number(row["ci95_hi_ms"]))
                  == (st["ci95_median"]["lo"], st["ci95_median"]["hi"]),
            "cv": csv_number(row["cv"]) == st["cv"]
                  and row["noisy"] == ("true" if st["cv"] > 0.10 else "false"),
            "bandwidth": csv_number(row["bandwidth_gbs"]) == r["memory_bandwidth_gbs"],
            "speedup": csv_number(row["speedup"]) == r["speedup_vs_baseline"]
                       and csv_number(row["speedup_ci95_lo"]) == d["baseline"]["speedup_ci95"]["lo"],
            "error": csv_number(row["rel_l2"]) == d["accuracy"]["error_total"]["rel_l2"],
            "cycle columns empty": row["variant"] == "" and row["rel_l2_vs_cache"] == "",
        }
        why += [f"{c['seq_len']} {c['kv_dtype']}: {k}" for k, ok in checks.items() if not ok]
    report("--format=csv: one row per configuration, every figure as in the JSON",
           code == 0 and not why, f"exit {code} {why[:5]} {err[-200:]}")
except (OSError, ValueError, KeyError, StopIteration, csv.Error) as e:
    report("--format=csv", False, f"{e} exit {code} {err[-300:]}")


def markdown_table(text):
    """The rows of the one Markdown table in text, each a list of cells; [] if malformed."""
    lines = [l for l in text.splitlines() if l.startswith("|")]
    table = [[c.strip() for c in re.split(r"(?<!\\)\|", l)[1:-1]] for l in lines]
    if len(table) < 2 or not all(re.fullmatch(r"-{3}:?", c) for c in table[1]):
        return []
    if any(len(r) != len(table[0]) for r in table):
        return []
    return [table[0]] + table[2:]


code, out, err = run(FORMAT_SWEEP + ["--format=markdown", "--jsonl=" + format_jsonl] + EXTRA)
try:
    table = markdown_table(out)
    with open(format_jsonl) as f:
        jl = parse_lines(f.read())
    os.remove(format_jsonl)
    head, body = table[0], table[1:]
    col = {name: head.index(name) for name in head}
    why = []
    varied = ["seq"] + (["dtype"] if len(FORMAT_DTYPES) > 1 else [])
    for name in varied + ["median ms", "95% CI of the median", "cv", "GB/s", "vs baseline [95% CI]",
                          "error rel_l2"]:
        if name not in col:
            why.append(f"no column {name}")
    for name in ("heads", "kv_heads", "policy", "batch"):  # the same in every row: above the table
        if name in col:
            why.append(f"constant {name} is a column")
    if "heads 4, kv_heads 2" not in out or "baseline f16 C=1" not in out:
        why.append("constant workload not stated above the table")
    if len(body) != FORMAT_ROWS:
        why.append(f"{len(body)} rows")
    for cells, d in zip(body, jl) if not why else []:
        r, st = d["results"], d["statistics"]
        median = float(cells[col["median ms"]])
        if abs(median - r["attention_time_ms"]) > 1e-3 * r["attention_time_ms"]:
            why.append(f"median {median} vs {r['attention_time_ms']}")
        if ("noisy" in cells[col["cv"]]) != (st["cv"] > 0.10):
            why.append(f"noisy flag {cells[col['cv']]} at cv {st['cv']}")
        speedup = r["speedup_vs_baseline"]
        words = cells[col["vs baseline [95% CI]"]].split()
        shown = float(words[0].rstrip("x"))
        shown = shown if words[1] == "faster" else 1.0 / shown
        if abs(shown - speedup) > 0.02 * max(speedup, 1.0 / speedup):
            why.append(f"speedup {cells[col['vs baseline [95% CI]']]} vs {speedup}")
        if int(cells[col["seq"]]) != d["configuration"]["seq_len"]:
            why.append("seq")
    report("--format=markdown: a table that parses, one row per configuration, swept flags as "
           "columns, CV flagged as noisy above 10%", code == 0 and table and not why,
           f"exit {code} {why[:5]} {out[:600]!r} {err[-200:]}")
except (OSError, ValueError, IndexError, KeyError) as e:
    report("--format=markdown", False, f"{e} exit {code} {out[:500]!r} {err[-300:]}")

TABLE_SEQS = ["64", "96"] if "--backend=emulator" in EXTRA else ["64", "96", "128"]
code, out, err = run(["--seq=" + ",".join(TABLE_SEQS)] + FAST + ["--format=table"] + EXTRA)
lines = out.splitlines()
try:
    start = next(i for i, l in enumerate(lines) if l.startswith("seq "))
    rule = lines[start + 1]
    ok = (code == 0 and set(rule) <= {"-", " "}
          and [l.split()[0] for l in lines[start + 2:start + 2 + len(TABLE_SEQS)]] == TABLE_SEQS
          and "median ms" in lines[start] and all(l == l.rstrip() for l in lines))
    report("--format=table: an aligned table, one row per configuration", ok, out[-600:])
except StopIteration:
    report("--format=table", False, f"exit {code} {out[-600:]!r} {err[-300:]}")

# ---- progress on stderr -------------------------------------------------------------
# a single run of a few seconds (longer than the 2 s after which progress shows)
# (the run's length depends on the machine: the reps grow until one run takes 3 s)
def long_run(reps):
    return ["--seq=4096", f"--reps={reps}", "--warmup=2", "--inner_loops=8", "--hot"] + EXTRA


if "--backend=emulator" in EXTRA:
    skip("progress of a long run", "the emulator's runs are long already; the CPU build checks this")
else:
    reps = 40
    for attempt in range(5):
        LONG = long_run(reps)
        started = time.monotonic()
        code, out, err = run(LONG)
        elapsed = time.monotonic() - started
        if code != 0 or elapsed >= 3.0:
            break
        reps = min(100000, int(reps * min(10.0, 4.0 / max(elapsed, 0.05))) + 1)
    lines = [l for l in err.splitlines() if l.strip()]
    report("progress: a run of a few seconds prints lines on a pipe, then a closing line",
           code == 0 and len(lines) >= 2 and all(l.startswith("ekv_bench: ") for l in lines)
           and "elapsed" in lines[0] and "% done" in lines[0] and "100% done in" in lines[-1],
           f"exit {code} {err!r}")
    code, out, err = run(LONG + ["--quiet"])
    report("progress: --quiet prints none", code == 0 and err == "", repr(err))
    # on a terminal: a bar redrawn in place; twice the reps, so that the run still passes
    # the 2 s after which progress shows when the machine has become quieter since then
    # (a run that ends before 2 s shows no bar and proves nothing: it is run again, longer)
    import pty

    def bar_on_terminal(reps):
        master, slave = pty.openpty()
        started = time.monotonic()
        p = subprocess.Popen([BENCH] + long_run(reps), stdout=subprocess.DEVNULL, stderr=slave)
        os.close(slave)
        seen = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
        p.wait()
        os.close(master)
        return p.returncode, seen, time.monotonic() - started

    for attempt in range(3):
        code, seen, elapsed = bar_on_terminal(2 * reps)
        if code != 0 or b"\r[" in seen or elapsed >= 2.5:
            break
        reps *= 2
    report("progress: a bar with the time left on a terminal",
           code == 0 and b"\r[" in seen and b"#" in seen and b"left" in seen and b"\x1b[K" in seen,
           f"{elapsed:.1f} s {seen[-300:]!r}")

# --out, --jsonl (appends), --label with hostile characters
out_file = os.path.join(tmp, "result.json")
jsonl_file = os.path.join(tmp, "results.jsonl")
label = 'quote" back\\slash \t tab \x01 ctrl é 漢 🙂'
for i in range(2):
    code, out, err = run(["--seq=64,96", "--json", "--out=" + out_file, "--jsonl=" + jsonl_file,
                          "--label=" + label] + FAST + EXTRA)
try:
    with open(out_file) as f:
        o = parse_lines(f.read())
    with open(jsonl_file) as f:
        text = f.read()
    jl = parse_lines(text)
    ok = (code == 0 and out == "" and len(o) == 2 and len(jl) == 4
          and all(d["label"] == label for d in jl) and (not shutil.which("jq") or jq_ok(text)))
    report("--out writes, --jsonl appends, label escaped", ok, f"{len(o)} {len(jl)} {err[-200:]}")
except (ValueError, OSError) as e:
    report("--out/--jsonl", False, str(e))

# --dump-dir: numpy recomputes the reference and sees the kernel's output
dump = os.path.join(tmp, "dump")
os.mkdir(dump)
code, out, err = run(["--seq=100", "--heads=4", "--kv-heads=2", "--dim=64", "--compress=1",
                      "--policy=none", "--kv-dtype=f32", "--data=random", "--json", "--dump-dir=" + dump]
                     + FAST + EXTRA)
try:
    q, k, v = (np.load(os.path.join(dump, n + ".npy")) for n in "qkv")
    outa, ref = np.load(os.path.join(dump, "out.npy")), np.load(os.path.join(dump, "ref.npy"))
    B, H, D = q.shape
    G = H // k.shape[1]
    kk = np.repeat(k.astype(np.float64), G, axis=1)
    vv = np.repeat(v.astype(np.float64), G, axis=1)
    logits = np.einsum("bhd,bhsd->bhs", q.astype(np.float64), kk) / math.sqrt(D)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    mine = np.einsum("bhs,bhsd->bhd", p, vv)
    d = parse_lines(out)[0]
    ok = (code == 0 and np.allclose(mine, ref, rtol=1e-10, atol=1e-12)
          and np.max(np.abs(outa - ref)) <= 1e-5
          and close(float(np.max(np.abs(outa - ref))), d["accuracy"]["error_total"]["max_abs"], 1e-6))
    report("--dump-dir: numpy agrees with ref.npy and out.npy", ok, err[-300:])
except (OSError, ValueError, IndexError, KeyError) as e:
    report("--dump-dir", False, f"{e} exit {code} {err[-300:]}")

# --data=PATH: the dumped files fed back in give the same reference
npz = os.path.join(tmp, "qkv.npz")
try:
    np.savez(npz, q=np.load(os.path.join(dump, "q.npy")), k=np.load(os.path.join(dump, "k.npy")),
             v=np.load(os.path.join(dump, "v.npy")))
    code, out, err = run(["--seq=100", "--heads=4", "--kv-heads=2", "--dim=64", "--compress=1",
                          "--policy=none", "--kv-dtype=f32", "--data=" + npz, "--json"] + FAST + EXTRA)
    d = parse_lines(out)[0]
    report("--data=file.npz runs and validates", code == 0 and d["accuracy"]["error_total"]["rel_l2"] < 1e-5,
           err[-300:])
    code, out, err = run(["--seq=99", "--heads=4", "--kv-heads=2", "--dim=64", "--compress=1",
                          "--policy=none", "--data=" + npz] + FAST + EXTRA)
    report("--data shape mismatch exits 2 naming the shape", code == 2 and "--seq" in err and len(err.splitlines()) == 1, err)
except (OSError, ValueError, IndexError, KeyError) as e:
    report("--data=file.npz", False, str(e))

# ---- inference cycle (tests/test_cycle.c covers the library; these go through the CLI) ----
CYCLE = ["--inference", "--seq=32", "--decode_tokens=8", "--layers=2", "--heads=4",
         "--kv-heads=2", "--reps=3", "--warmup=1", "--quiet", "--json"] + EXTRA


def cycle_ok(d, variant):
    c = d["inference_cycle"]
    s = c["series"]
    return (c["variant"] == variant and d["variant"] == variant and c["layers"] == 2
            and c["decode_tokens"] == 8 and len(s) == 8
            and [p["context_len"] for p in s] == list(range(33, 41))
            and close(c["tokens_per_sec"], 8000.0 / c["total_ms"])
            and close(c["total_ms"], c["statistics"]["median"])
            # the seed's elastic_* keys hold the elastic variant's figures, null for others
            and ((c["elastic_total_ms"], c["elastic_tokens_per_sec"]) == (c["total_ms"], c["tokens_per_sec"])
                 if variant == "elastic" else c["elastic_total_ms"] is None and c["elastic_tokens_per_sec"] is None)
            and len(c["samples_ms"]) == 3
            # phases and the total are medians of 3 repeats; a phase's median is at most
            # half its sum over the repeats (the middle of 3 non-negative values), and a
            # repeat's phases lie inside its loop, so the medians add up to at most half
            # the loops' sum (1.5 x the mean). The slowest loop is no bound: with repeats
            # slow in different phases the medians' sum can pass it. Phases and the step
            # total come from separate CUDA event pairs on the GPU path, each good to
            # about a microsecond.
            and sum(c["phases_ms"].values()) <= sum(c["samples_ms"]) / 2 * (1 + 1e-9) + 1e-3 * 8 * 2 * 4 * 3
            and close(d["results"]["tokens_per_sec"], c["tokens_per_sec"], 1e-6)
            and (variant == "cache") == (c["agreement_vs_cache"] is None)
            and c["baseline_total_ms"] is None and c["baseline_variant"] is None)


VARIANTS = ["nocache", "cache", "int8", "shared", "int8-shared", "elastic"]
code, out, err = run(CYCLE + ["--variant=" + ",".join(VARIANTS)])
docs = parse_lines(out) if code == 0 else []
by = {d["inference_cycle"]["variant"]: d for d in docs}
report("cycle: six variants, one result each, consistent fields",
       code == 0 and len(docs) == 6 and all(cycle_ok(by[v], v) for v in VARIANTS), err[-300:])
if len(by) == 6:
    nc = by["nocache"]["inference_cycle"]["agreement_vs_cache"]
    report("cycle: nocache agrees with cache", nc["max_abs_diff"] <= 1e-6, str(nc))
    kv = {v: by[v]["inference_cycle"]["memory"]["kv_cache_bytes"] for v in VARIANTS}
    report("cycle: shared holds half of cache's KV bytes, int8 the formula",
           kv["shared"] * 2 == kv["cache"] and kv["int8-shared"] * 2 == kv["int8"]
           and kv["int8"] == 2 * 2 * 40 * 2 * (64 + 4) and kv["nocache"] == 0, str(kv))
    report("cycle: lossy variants differ from cache",
           all(e["rel_l2"] > 0 for e in by["int8"]["inference_cycle"]["error_vs_cache"]), "")
code, out, err = run(CYCLE + ["--variant=all"])
docs = parse_lines(out) if code == 0 else []
report("cycle: --variant=all runs the six on the same data",
       code == 0 and len(docs) == 1 and [c["variant"] for c in docs[0]["inference_cycle"]["variants"]] == VARIANTS,
       err[-300:])
code, out, err = run(CYCLE + ["--variant=int8", "--paired-baseline"])
docs = parse_lines(out) if code == 0 else []
report("cycle: paired baseline gives the seed's fields",
       code == 0 and len(docs) == 1 and docs[0]["inference_cycle"]["speedup_vs_baseline"] > 0
       and docs[0]["inference_cycle"]["baseline_tokens_per_sec"] > 0
       and docs[0]["inference_cycle"].get("baseline_variant") == "cache", err[-300:])

# nocache against cache: the number reads as "cache is N x faster than nocache"
PAIRED = [a for a in CYCLE if a != "--json"] + ["--variant=nocache,elastic", "--paired-baseline"]
code, out, err = run(PAIRED + ["--jsonl=" + format_jsonl])
try:
    with open(format_jsonl) as f:
        jl = {d["variant"]: d["inference_cycle"] for d in parse_lines(f.read())}
    os.remove(format_jsonl)
    nc = jl["nocache"]
    ratio = float(np.median(nc["baseline_samples_ms"]) / np.median(nc["samples_ms"]))
    # which side wins is the machine's business (on the emulator nocache can): the
    # sentence must name the winner and the factor it wins by, either way round
    if ratio < 1:
        m = re.search(r"cache is ([0-9.]+)x faster than nocache \[([0-9.]+), ([0-9.]+)\]", out)
    else:
        m = re.search(r"nocache is ([0-9.]+)x faster than cache \[([0-9.]+), ([0-9.]+)\]", out)
    factor = 1 / ratio if ratio < 1 else ratio
    ok = (code == 0 and close(nc["speedup_vs_baseline"], ratio, 1e-9) and m
          and abs(float(m.group(1)) - factor) <= 0.01 * factor
          and float(m.group(2)) <= float(m.group(1)) <= float(m.group(3)))
    report("cycle: paired nocache reads 'cache is N x faster than nocache' (speedup_vs_baseline = "
           "median(cache)/median(nocache))", ok, f"{m and m.group(0)} ratio {ratio} {out[-900:]}")
    # the text output: no attention lines (nan, GB/s) above the cycle block; why elastic errs
    report("cycle: the text output has no nan and no attention lines, and says why elastic's "
           "error is large here", "nan" not in out and "GB/s" not in out and "bandwidth" not in out
           and "structured data" in out and "random" in out, out[-1500:])
except (OSError, ValueError, KeyError) as e:
    report("cycle: paired nocache", False, f"{e} exit {code} {out[-500:]} {err[-300:]}")

code, out, err = run([a for a in CYCLE if a != "--json"] + ["--variant=nocache,cache,elastic", "--format=csv"])
rows = list(csv.DictReader(io.StringIO(out))) if code == 0 else []
report("cycle: --format=csv gives a row per variant with the cycle's columns",
       [r["variant"] for r in rows] == ["nocache", "cache", "elastic"]
       and all(r["bandwidth_gbs"] == "" and float(r["median_ms"]) > 0 and r["layers"] == "2" for r in rows)
       and rows[1]["rel_l2_vs_cache"] == "" and float(rows[2]["rel_l2_vs_cache"]) > 0,
       f"exit {code} {out[:400]} {err[-300:]}")

for args, needle in [(["--variant=int8", "--kv-dtype=f32"], "--kv-dtype=f32"),
                     (["--variant=int8-shared", "--kv-dtype=bf16"], "--kv-dtype=bf16"),
                     (["--decode_tokens=0"], "--decode_tokens"),
                     (["--variant=shared"], "--layers"),
                     (["--variant=int8-shared", "--layers=1"], "--layers"),
                     (["--variant=all"], "--layers"),
                     (["--variant=cache", "--paired-baseline", "--baseline-dtype=f32"], "--baseline-dtype"),
                     (["--layers=256", "--heads=1024", "--dim=256", "--seq=1048576"], "--layers")]:
    # small sizes wherever the case sets none, so that a combination that is not refused
    # fails quickly instead of running the default cycle
    small = [a for a in ("--seq=32", "--decode_tokens=2", "--reps=2", "--warmup=0")
             if not any(x.startswith(a.split("=")[0] + "=") for x in args)]
    code, out, err = run(["--inference"] + args + small + ["--quiet"] + EXTRA)
    report("cycle: bad input " + " ".join(args), code == 2 and needle in err and out == ""
           and len(err.splitlines()) == 1, f"exit {code} {err!r}")

# ---- issue 16: nothing lost, nothing clobbered, every bad value named ----------------------

I16 = ["--seq=32", "--heads=2", "--dim=64", "--json"] + FAST + EXTRA
out16 = os.path.join(tmp, "i16")
os.mkdir(out16)


def device_node(name, minor, system):
    """A private node of the memory device `minor` (3: null, 7: full) in the scratch folder
    where this process may make one: a regression that renames over its output then
    replaces a scratch file, never the machine's /dev/null. Else the system's device where
    this process cannot replace it (not root); else None (root without mknod)."""
    path = os.path.join(out16, name)
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, minor))
        st = os.stat(path)
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, minor):
            return path
    except OSError:
        pass
    if os.path.lexists(path):
        os.remove(path)
    return system if os.geteuid() != 0 else None


def is_char_device(path):
    return stat.S_ISCHR(os.lstat(path).st_mode)


NULL = device_node("null", 3, "/dev/null")
FULL = device_node("full", 7, "/dev/full")
if NULL is None or FULL is None:
    skip("output to devices", "root without mknod: the system's /dev/null is not risked")

# 1. a symbolic link: its target written (atomically, permissions kept), the link kept
target = os.path.join(out16, "target.json")
link = os.path.join(out16, "link.json")
with open(target, "w") as f:
    f.write("old\n")
os.chmod(target, 0o640)
os.symlink("target.json", link)
code, out, err = run_guarded(I16 + ["--out=" + link])
try:
    with open(target) as f:
        doc = parse_lines(f.read())
    leftovers = [n for n in os.listdir(out16) if n.startswith(".") or n.endswith(".tmp")]
    ok = (code == 0 and os.path.islink(link) and os.readlink(link) == "target.json" and len(doc) == 1
          and stat.S_IMODE(os.stat(target).st_mode) == 0o640 and not leftovers)
    report("--out through a symbolic link writes its target and keeps the link", ok,
           f"exit {code} {err!r} link={os.path.islink(link)} files={os.listdir(out16)}")
except (OSError, ValueError) as e:
    report("--out through a symbolic link", False, f"{e} exit {code} {err!r}")

dangling = os.path.join(out16, "dangling.json")
os.symlink("created.json", dangling)
code, out, err = run_guarded(I16 + ["--out=" + dangling])
report("--out through a dangling symbolic link creates the file it names",
       code == 0 and os.path.islink(dangling) and os.path.isfile(os.path.join(out16, "created.json")),
       f"exit {code} {err!r}")

# 1. a device is written directly, never replaced
null_link = os.path.join(out16, "null_link")
os.symlink(NULL or "/dev/null", null_link)
for flag, path in ((("--out", NULL), ("--jsonl", NULL), ("--out", null_link)) if NULL else ()):
    code, out, err = run_guarded(I16 + [f"{flag}={path}"])
    report(f"{flag}={os.path.basename(path)} (a device{', by a link' if path == null_link else ''}) "
           "is written, not replaced", code == 0 and (out == "") == (flag == "--out") and is_char_device(NULL)
           and os.path.islink(null_link), f"exit {code} {err!r}")

# 1. a FIFO: no probe that blocks; written like any writer writes it
for flag in ("--out", "--jsonl"):
    fifo = os.path.join(out16, "fifo" + flag[2:])
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(open(fifo, "rb").read()), daemon=True)
    reader.start()
    code, out, err = run_guarded(I16 + [f"{flag}={fifo}"], timeout=60)
    if reader.is_alive():  # the bench never opened it for writing: release the reader
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
    reader.join(5)
    text = received[0].decode() if received else ""
    report(f"{flag} to a FIFO: written through, no hang, still a FIFO",
           code == 0 and stat.S_ISFIFO(os.lstat(fifo).st_mode) and len(text.splitlines()) == 1
           and json.loads(text)["configuration"]["seq_len"] == 32, f"exit {code} {err!r} {text[:80]!r}")

# 1. --out and --jsonl naming one file, directly or through a link: exit 2, nothing written
with open(target) as f:
    target_before = f.read()
for out_path, jsonl_path in ((os.path.join(out16, "same.json"),) * 2, (link, target)):
    code, out, err = run_guarded(I16 + ["--out=" + out_path, "--jsonl=" + jsonl_path])
    lines = err.splitlines()
    with open(target) as f:
        unchanged = f.read() == target_before
    report("--out and --jsonl naming one file (directly, by a link): exit 2 naming both",
           code == 2 and len(lines) == 1 and "--out" in lines[0] and "--jsonl" in lines[0]
           and not os.path.exists(os.path.join(out16, "same.json")) and unchanged,
           f"exit {code} {err!r}")

# 2. every write checked: a full device, a closed standard output, --help too
WRITE_FAILURES = [("--json with standard output closed", I16, False, True)]
if FULL:
    WRITE_FAILURES += [("--json > full device", I16, True, False),
                       ("table > full device", ["--seq=32", "--heads=2"] + FAST + EXTRA, True, False),
                       ("--help > full device", ["--help"], True, False),
                       ("--out=full device", I16 + ["--out=" + FULL], False, False),
                       ("--jsonl=full device", I16 + ["--jsonl=" + FULL], False, False)]
for name, args, to_full, close_stdout in WRITE_FAILURES:
    if to_full:
        with open(FULL, "w") as full:
            code, out, err = run_guarded(args, stdout=full)
    elif close_stdout:
        code, out, err = run_guarded(args, stdout=None, preexec_fn=lambda: os.close(1))
    else:
        code, out, err = run_guarded(args)
    lines = [l for l in err.splitlines() if l.strip()]
    report(f"write failure is exit 1 with a message: {name}",
           code == 1 and len(lines) == 1 and "write failed" in lines[0], f"exit {code} {err!r}")

# 4. bad data is named as data (exit 2: tensor, index, limit), never blamed on the kernel
B16, H16, HKV16, S16, D16 = 1, 4, 2, 64, 64


def data_file(name, change, observe=None):
    rng = np.random.default_rng(7)
    arrays = {"q": rng.standard_normal((B16, H16, D16)).astype(np.float32),
              "k": rng.standard_normal((B16, HKV16, S16, D16)).astype(np.float32),
              "v": rng.standard_normal((B16, HKV16, S16, D16)).astype(np.float32)}
    if observe:
        arrays["q_observe"] = rng.standard_normal((B16, H16, observe, D16)).astype(np.float32)
    change(arrays)
    folder = os.path.join(out16, name)
    os.mkdir(folder)
    for key, value in arrays.items():
        np.save(os.path.join(folder, key + ".npy"), value)
    return folder


def setter(tensor, index, value):
    return lambda arrays: arrays[tensor].__setitem__(index, value)


SHAPE16 = [f"--batch={B16}", f"--heads={H16}", f"--kv-heads={HKV16}", f"--seq={S16}", f"--dim={D16}",
           "--policy=stride", "--compress=2", "--json"] + FAST + EXTRA
# stride C=2 keeps the odd tokens here: token 10 is dropped, so only a check of every token
# (not the kernel's disagreement) can catch a bad value there
BAD_DATA = [
    ("NaN in k", data_file("nan_k", setter("k", (0, 1, 37, 5), np.nan)), [], ["k[0][1][37][5]", "NaN"]),
    ("inf in q", data_file("inf_q", setter("q", (0, 2, 3), np.inf)), [], ["q[0][2][3]", "inf"]),
    ("NaN in q_observe", data_file("nan_observe", setter("q_observe", (0, 1, 2, 3), np.nan), observe=4),
     ["--policy=topk"], ["q_observe[0][1][2][3]", "NaN"]),
    ("f16 range, a dropped token", data_file("big_v", setter("v", (0, 0, 10, 2), 70000.0)),
     ["--kv-dtype=f16"], ["v[0][0][10][2]", "70000", "65504", "f16"]),
    ("int4's f16 zero point", data_file("big_k", setter("k", (0, 1, 11, 0), -1e6)),
     ["--kv-dtype=int4"], ["k[0][1][11][0]", "65504", "int4"]),
    ("the paired baseline's f16", data_file("big_v2", setter("v", (0, 1, 9, 2), 1e5)),
     ["--kv-dtype=int8", "--paired-baseline"], ["v[0][1][9][2]", "65504", "baseline"]),
    ("float logits", data_file("over_qk", lambda a: (a["q"].__setitem__((0, 0), 1e19),
                                                      a["k"].__setitem__((0, 0, 11), 1e19))),
     ["--kv-dtype=f32"], ["q[0][0]", "k[0][0][11]", "float"]),
]
for name, folder, args, needles in BAD_DATA:
    code, out, err = run(SHAPE16 + ["--data=" + folder] + args)
    lines = err.splitlines()
    report(f"bad data exits 2 naming it: {name}",
           code == 2 and out == "" and len(lines) == 1 and all(n in lines[0] for n in needles),
           f"exit {code} {err!r}")
code, out, err = run(SHAPE16 + ["--data=" + data_file("big_f32", setter("v", (0, 0, 10, 2), 7e4)),
                                "--kv-dtype=f32"])
report("a value beyond f16 is fine where the cache stores f32", code == 0, err[-300:])

# 4. a null accuracy figure always comes with its reason
docs = []
for args in (["--seq=64"], ["--inference", "--seq=32", "--decode_tokens=2", "--heads=4", "--kv-heads=2"]):
    code, out, err = run(args + ["--reps=3", "--warmup=1", "--inner_loops=1", "--quiet", "--json"] + EXTRA)
    docs += parse_lines(out) if code == 0 else [{}]


def accuracy_nulls(a):
    return [k for k, e in a.items() if isinstance(e, dict) for x in e.values() if x is None]


report("accuracy: null figures come with accuracy.null_reason, numbers without",
       len(docs) == 2 and all("accuracy" in d and "null_reason" in d["accuracy"] for d in docs)
       and all(bool(accuracy_nulls(d["accuracy"])) == isinstance(d["accuracy"]["null_reason"], str)
               for d in docs) and bool(accuracy_nulls(docs[1]["accuracy"])),
       str([d.get("accuracy") for d in docs])[:400])

# 5. defaults resolved against the workload: a short sequence needs no --sinks
for policy in ("stride", "window", "topk"):
    code, out, err = run(["--seq=1,2,3,5", "--heads=2", f"--policy={policy}", "--json"] + FAST + EXTRA)
    ds = parse_lines(out) if code == 0 else []
    report(f"--seq=1,2,3,5 --policy={policy}: default sinks, recent, observe fit short sequences",
           code == 0 and [d["configuration"]["sinks"] for d in ds] == [1, 2, 3, 4], f"exit {code} {err!r}")
code, out, err = run(["--inference", "--seq=2", "--decode_tokens=3", "--policy=window", "--compress=2",
                      "--reps=2", "--warmup=0", "--quiet", "--json"] + EXTRA)
report("--inference --seq=2 --policy=window runs with the default sinks", code == 0, err[-300:])

# 6. host memory: estimated before anything is allocated, the figure in the message. The
# child is held to a few GB (address space, or ASan's allocation limit) so that a regression
# fails on an allocation instead of filling this machine's memory.
SANITIZED = b"__asan_init" in open(BENCH, "rb").read()
guard_env = dict(os.environ)
if SANITIZED:
    guard_env["ASAN_OPTIONS"] = (guard_env.get("ASAN_OPTIONS", "") +
                                 ":allocator_may_return_null=1:max_allocation_size_mb=4096").lstrip(":")


def limit_memory():
    if not SANITIZED:
        resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))


for args in (["--seq=1572864", "--heads=16", "--dim=128"],                      # 32 GB, 13 GB arrays
             ["--seq=16777216", "--batch=64", "--heads=64", "--dim=128"]):        # 88 TB
    started = time.monotonic()
    code, out, err = run_guarded(args + ["--quiet"] + EXTRA, env=guard_env, preexec_fn=limit_memory)
    seconds = time.monotonic() - started
    lines = err.splitlines()
    report(f"host memory estimated up front: {' '.join(args)}",
           code == 2 and len(lines) == 1 and "host memory" in lines[0] and "--seq" in lines[0]
           and re.search(r"needs about \d+\.\d{3} [GT]B", lines[0]) is not None and seconds < 20,
           f"exit {code} in {seconds:.1f} s {err!r}")

# 6. device memory (the emulator's EKV_EMU_MEMORY_BYTES): the figure in adaptive units, and
# --backend=auto falls back to the CPU with a notice
if EMULATED:
    small = dict(os.environ, EKV_EMU_MEMORY_BYTES="256K")
    code, out, err = run_guarded(["--seq=1024", "--heads=4", "--json"] + FAST + EXTRA, env=small)
    report("device memory: exit 2 with the figure in adaptive units",
           code == 2 and re.search(r"needs \d+\.\d{3} [kM]B of device memory", err) is not None
           and "0.00 GiB" not in err, f"exit {code} {err!r}")
    auto = [a for a in FAST if a != "--quiet"]
    for name, args in (("attention", ["--seq=1024", "--heads=4"]),
                       ("inference cycle", ["--inference", "--seq=256", "--decode_tokens=2"])):
        code, out, err = run_guarded(args + auto + ["--json", "--backend=auto"], env=small, timeout=300)
        ds = parse_lines(out) if code == 0 else []
        report(f"--backend=auto too big for the device: the CPU with a notice ({name})",
               code == 0 and len(ds) == 1 and ds[0]["backend"] == "cpu"
               and "device memory" in (ds[0]["notice"] or "") and "notice" in err,
               f"exit {code} {err[-300:]!r}")

# 7. pool with C=1 stores no bias: never larger than the uncompressed cache
code, out, err = run(["--seq=64", "--policy=pool", "--compress=1", "--json"] + FAST + EXTRA)
try:
    d = parse_lines(out)[0]
    report("--policy=pool --compress=1: no bias, cache = uncompressed",
           code == 0 and d["metrics"]["bytes"]["bias"] == 0
           and d["memory"]["kv_cache_bytes"] == d["memory"]["kv_cache_bytes_uncompressed"], str(d["memory"]))
except (ValueError, IndexError, KeyError) as e:
    report("--policy=pool --compress=1", False, f"{e} exit {code} {err[-200:]}")

# 7. a repeated flag: the last value applies, and a notice says so (documented in --help)
code, out, err = run(["--seq=64", "--seq=48", "--json", "--json", "--reps=5", "--warmup=1",
                      "--inner_loops=2"] + EXTRA)
ds = parse_lines(out) if code == 0 else []
report("a repeated flag: the last value applies, with a notice naming it",
       code == 0 and len(ds) == 1 and ds[0]["configuration"]["seq_len"] == 48
       and "--seq given 2 times" in err and "--seq=48" in err and "--json given 2 times" in err,
       f"exit {code} {err!r}")
code, out, err = run(["--help"])
report("--help says what a repeated flag does and that --data files need the shape flags",
       code == 0 and "given twice" in out and "--dim --seq" in out, out[-600:])

# 7. --dump-dir writes the observed queries: a topk run reproduced from its dump
dump16 = os.path.join(out16, "dump")
os.mkdir(dump16)
TOPK = ["--seq=96", "--heads=4", "--kv-heads=2", "--dim=64", "--policy=topk", "--compress=4",
        "--observe=8", "--kv-dtype=f32", "--json"] + FAST + EXTRA
code, out, err = run(TOPK + ["--dump-dir=" + dump16])
try:
    first = parse_lines(out)[0]
    qo = np.load(os.path.join(dump16, "q_observe.npy"))
    out_first = np.load(os.path.join(dump16, "out.npy"))
    code2, out2, err2 = run(TOPK + ["--data=" + dump16])
    again = parse_lines(out2)[0]
    report("--dump-dir writes q_observe.npy; --data=DIR reproduces the topk run from it",
           code == 0 and code2 == 0 and qo.shape == (1, 4, 8, 64)
           and again["accuracy"]["error_compression"] == first["accuracy"]["error_compression"]
           and again["accuracy"]["error_total"] == first["accuracy"]["error_total"]
           and again["metrics"]["kept_tokens"] == first["metrics"]["kept_tokens"],
           f"{err[-200:]} {err2[-200:]}")
    _ = out_first
except (OSError, ValueError, IndexError, KeyError) as e:
    report("--dump-dir q_observe.npy", False, f"{e} exit {code} {err[-300:]}")

# issue 17: --page-size=16 reads the cache through block tables (on the device backends;
# the CPU backend reads the pages gathered back) and gives the contiguous outputs: for
# every dtype and policy the kernel's output measured against the same references is
# bit-equal (error_kernel and error_total as written), and the JSON records the page size.
page_results = {}
for policy, compress in (("none", "1"), ("stride,pool,window,topk", "3")):
    code, out, err = run(["--seq=150", "--batch=2", "--heads=8", "--kv-heads=2", "--recent=5",
                          "--kv-dtype=f32,f16,bf16,int8,int4,fp8", "--policy=" + policy,
                          "--compress=" + compress, "--page-size=0,16", "--json"]
                         + FAST + EXTRA)
    if code != 0:
        report(f"--page-size=0,16 sweep ({policy})", False, f"exit {code} {err[-300:]}")
        continue
    for line in out.splitlines():
        r = json.loads(line)
        cfg = r["configuration"]
        page_results[(cfg["kv_dtype"], cfg["policy"], cfg["page_size"])] = r["accuracy"]
pairs = [(d, p) for d in ("f32", "f16", "bf16", "int8", "int4", "fp8")
         for p in ("none", "stride", "pool", "window", "topk")]
missing = [k for k in pairs if (k[0], k[1], 0) not in page_results or (k[0], k[1], 16) not in page_results]
differ = [k for k in pairs if k not in missing and
          (page_results[(k[0], k[1], 0)]["error_kernel"] != page_results[(k[0], k[1], 16)]["error_kernel"]
           or page_results[(k[0], k[1], 0)]["error_total"] != page_results[(k[0], k[1], 16)]["error_total"])]
report("--page-size=16 gives the contiguous outputs for every dtype x policy (30 pairs)",
       not missing and not differ, f"missing {missing[:4]} differ {differ[:4]}")

# issue 17: the inference cycle's serving simulation. --page-size on the cycle reports,
# per variant, the pages of --batch sequences in the pages a contiguous cache reserves,
# and --memory-budget the largest batch that fits; the figures add up and order as the
# stored bytes say; the text gives a line per variant; without --page-size "paging" is null.
SERVE_BASE = ["--inference", "--seq=64", "--decode_tokens=8", "--layers=2", "--batch=3", "--heads=4",
              "--kv-heads=2", "--recent=2"] + FAST + EXTRA
SERVE = SERVE_BASE + ["--page-size=16"]
code, out, err = run(SERVE + ["--variant=all", "--memory-budget=0.002", "--json"])
try:
    d = json.loads(out)
    p = d["inference_cycle"]["paging"]
    ys = {y["variant"]: y for y in p["variants"]}
    width = (96 + 8 + 15) // 16
    ok_sum = all(y[k]["pages_in_use_peak"] + y[k]["pages_free_at_peak"] == y[k]["pool_pages"]
                 and y[k]["pages_in_use_end"] + y[k]["pages_free_end"] == y[k]["pool_pages"]
                 and y[k]["pages_in_use_end"] <= y[k]["pages_in_use_peak"] <= y[k]["pool_pages"]
                 for y in ys.values() for k in ("serving", "budget"))
    ok_pool = all(y["budget"]["pool_pages"] == int(0.002e9 // y["page_bytes"])
                  and y["max_batch"] == y["budget"]["batch"] >= 1
                  and y["serving"]["batch"] == 3 and y["serving"]["pool_pages"] == 3 * width
                  for y in ys.values())
    cache = ys["cache"]
    ok_order = (all(ys[v]["max_batch"] >= cache["max_batch"] for v in ("int8", "shared", "int8-shared", "elastic"))
                and ys["elastic"]["max_batch"] > cache["max_batch"]
                and ys["shared"]["page_bytes"] * 2 == cache["page_bytes"]
                and ys["elastic"]["serving"]["pages_in_use_end"] < cache["serving"]["pages_in_use_end"])
    report("cycle --page-size --memory-budget: JSON paging per variant, in use + free = pool, batches ordered",
           code == 0 and sorted(ys) == sorted(["nocache", "cache", "int8", "shared", "int8-shared", "elastic"])
           and p["page_size"] == 16 and p["memory_budget_gb"] == 0.002 and p["decode_tokens"] == 8
           and p["prompt_lengths"] == {"distribution": "uniform", "min": 32, "max": 96, "seed": 42}
           and d["configuration"]["memory_budget_gb"] == 0.002 and d["configuration"]["page_size"] == 16
           and ok_sum and ok_pool and ok_order and jq_ok(out),
           f"exit {code} {err[-300:]} sum {ok_sum} pool {ok_pool} order {ok_order} {json.dumps(p)[:400]}")
except (ValueError, KeyError, TypeError) as e:
    report("cycle --page-size --memory-budget JSON", False, f"{e} exit {code} {err[-300:]}")
code2, out2, err2 = run(SERVE + ["--variant=elastic", "--memory-budget=0.002", "--json"])
code3, out3, err3 = run(SERVE_BASE + ["--variant=elastic", "--json"])
try:
    single = json.loads(out2)["inference_cycle"]
    report("cycle --page-size: a single variant's inference_cycle carries the same paging; null without",
           code2 == 0 and code3 == 0 and single["variant"] == "elastic" and single["paging"] == p
           and json.loads(out3)["inference_cycle"]["paging"] is None
           and json.loads(out3)["configuration"]["memory_budget_gb"] is None,
           f"{err2[-200:]} {err3[-200:]}")
except (ValueError, KeyError, TypeError, NameError) as e:
    report("cycle --page-size single variant JSON", False, f"{e} {err2[-200:]} {err3[-200:]}")
code, out, err = run(SERVE + ["--variant=cache", "--memory-budget=0.002"])
block = out.split("\npaging ", 1)[-1]
report("cycle --page-size text: a line per variant for the run and for the budget",
       code == 0 and "\npaging " in out and "--memory-budget=0.002 GB" in block
       and all(len(re.findall(r"^  " + re.escape(v) + r" ", block, re.M)) == 2
               for v in ("nocache", "cache", "int8", "shared", "int8-shared", "elastic")),
       f"exit {code} {err[-200:]} {out[-1500:]}")

# the README's example of the serving simulation, run as written there: its paging block
# (exact accounting, the same on every machine and backend) is what the command prints
readme_text = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")).read()
example = re.search(r"^    \$ ekv_bench (--inference [^\n]*--memory-budget=[^\n]*)\n    \.\.\.\n((?:    [^\n]*\n)+)",
                    readme_text, re.M)
if example is None:
    report("README: the serving simulation's example command", False, "no example found")
elif "--backend=emulator" in EXTRA:
    skip("README: the serving simulation's example", "its cycle is long on the emulator; the "
         "paging figures are host accounting, the same on every backend (test_cycle_emu)")
else:
    code, out, err = run(example.group(1).split() + EXTRA)
    shown = "".join(l[4:] + "\n" for l in example.group(2).splitlines())
    printed = out[out.find("paging "):]
    report("README: the serving simulation's example prints the paging block shown there",
           code == 0 and printed.startswith(shown), f"exit {code} {err[-200:]}\n{printed}\n---\n{shown}")

# 7. the README defines what each policy keeps and says that --data needs the shape flags
readme = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")).read()
section = readme.split("### Which tokens each policy keeps", 1)[-1].split("\n## ", 1)[0]
report("README: which tokens each policy keeps; --data=DIR needs the shape flags",
       "### Which tokens each policy keeps" in readme
       and all(f"`{p}`" in section for p in ("none", "stride", "pool", "window", "topk"))
       and re.search(r"`--data=DIR`[^\n]*(\n[^\n]+)*shape flags", readme) is not None, "")

shutil.rmtree(tmp, ignore_errors=True)
print(f"{passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else ""))
sys.exit(1 if failed else 0)
