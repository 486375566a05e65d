"""tests/test_cli.py - ekv_bench end to end: every bad-input path exits 2 with a one-line
error naming the flag and leaves no file behind; small sweeps on the CPU (or emulator)
backend give JSON that Python's json and jq both parse, with consistent figures
(bandwidth = bytes / median, tokens/s = batch x 1000 / median, speedup = ratio of
medians, samples as requested); --out, --jsonl, --dump-dir work.

Run: .venv/bin/python tests/test_cli.py build/ekv_bench_cpu [--backend=emulator]
"""
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

BENCH = sys.argv[1]
EXTRA = sys.argv[2:]  # e.g. --backend=emulator
FAST = ["--reps=5", "--warmup=1", "--inner_loops=2", "--quiet"]
passed = failed = 0


def report(name, ok, why=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"PASS {name}")
    else:
        failed += 1
        print(f"FAIL {name}: {why}")


def run(args, timeout=300):
    p = subprocess.run([BENCH] + args, capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


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
code, out, err = run(["--version"])
report("--version", code == 0 and out.startswith("ekv_bench "), out)

# ---- end to end ------------------------------------------------------------------------


def parse_lines(text):
    docs = []
    for line in text.splitlines():
        docs.append(json.loads(line, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c))))
    return docs


def jq_ok(text):
    if not shutil.which("jq"):
        return True
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
report("sweep parses with jq", jq_ok(out))
bad = [(d["configuration"]["seq_len"], d["configuration"]["kv_dtype"], consistent(d, 5)) for d in docs]
bad = [b for b in bad if b[2]]
report("sweep figures consistent", not bad, str(bad[:4]))

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
          and all(d["label"] == label for d in jl) and jq_ok(text))
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
            and close(c["elastic_tokens_per_sec"], 8000.0 / c["elastic_total_ms"])
            and close(c["elastic_total_ms"], c["statistics"]["median"])
            and len(c["samples_ms"]) == 3
            # phases and the step total come from separate CUDA event pairs on the GPU
            # path, each good to about a microsecond
            and sum(c["phases_ms"].values()) <= c["statistics"]["mean"] * (1 + 1e-9) + 1e-3 * 8 * 2 * 4
            and close(d["results"]["tokens_per_sec"], c["elastic_tokens_per_sec"], 1e-6)
            and (variant == "cache") == (c["agreement_vs_cache"] is None)
            and c["baseline_total_ms"] is None)


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
       and docs[0]["inference_cycle"]["baseline_tokens_per_sec"] > 0, err[-300:])
for args, needle in [(["--variant=int8", "--kv-dtype=f32"], "--kv-dtype=f32"),
                     (["--variant=int8-shared", "--kv-dtype=bf16"], "--kv-dtype=bf16"),
                     (["--decode_tokens=0"], "--decode_tokens"),
                     (["--layers=256", "--heads=1024", "--dim=256", "--seq=1048576"], "--layers")]:
    code, out, err = run(["--inference"] + args + ["--quiet"] + EXTRA)
    report("cycle: bad input " + " ".join(args), code == 2 and needle in err and out == "",
           f"exit {code} {err!r}")

shutil.rmtree(tmp, ignore_errors=True)
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
