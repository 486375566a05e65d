#!/usr/bin/env python3
"""peers_cpu.py - ekv's CPU backend beside numpy and PyTorch on the same decode problems,
in one run, timed the way ekv times them.

Run:  python3 bench/peers_cpu.py --bench build/ekv_bench_native [--seq 8192,16384]
          [--batch 1] [--heads 32] [--kv-heads 8] [--dim 128] [--dtypes f32,f16,int8,int4]
          [--reps 20] [--warmup 3] [--inner-loops 2] [--rounds 3] [--threads 0]
          [--seed 42] [--out results.jsonl] [--paired-out paired.jsonl] [--no-paired]
          [--no-torch]

What runs, in `rounds` interleaved rounds (so that a change of the machine's load during
the run hits every row alike; compare.py and the table below pool the rounds):
  ekv                ekv_bench --backend=cpu over the problems (every --dtypes, policy none,
                     C = 1, the same reps, warmup, inner loops and --threads)
  numpy-matmul       decode attention as two batched matmuls on float32 K/V (numpy's BLAS
                     with its default threads, every core, unless OPENBLAS_NUM_THREADS or
                     OMP_NUM_THREADS says otherwise; build.threads says which): logits =
                     K q per (sequence, kv head) for the group's query heads at once,
                     softmax with max subtraction, out = p^T V
  torch-sdpa-cpu     torch.nn.functional.scaled_dot_product_attention on the CPU, float32
                     and bfloat16 K/V, one query token; GQA by enable_gqa=True where the
                     installed torch has it, else K/V expanded to every query head before
                     timing (configuration.gqa_mode says which). Without torch (or with
                     --no-torch) a line "SKIP torch-sdpa-cpu: <why>" and no rows.

Method, as ekv's CPU backend: validate first (rel_l2 against a float64 reference over the
same stored K/V, within ekv's tolerance rule for float32: max(1e-5, 2e-7 sqrt(seq_len)),
bfloat16 3e-2 over inputs rounded to bfloat16), then cold timing: calls rotate among copies
of K/V that together exceed 3 x the last-level cache (ekv's rule: at most 64 copies and
2e9 bytes), `inner_loops` calls per sample, `warmup` samples dropped, `reps` kept, time per
call = sample / inner_loops. Data: seeded standard normal q (x2, so attention is not
uniform), k, v.

Then, unless --no-paired, the ratios between ekv's own dtypes measured paired: for each
seq and each pair of --dtypes among f16 vs f32, int8 vs f16 and int4 vs int8, one
ekv_bench --paired-baseline run, whose timing loop alternates the two caches call by call
(ABAB) in one process, so that a change of the machine's load hits both alike. Its
speedup is the baseline's median over the dtype's, with a 95% bootstrap confidence
interval; on a shared machine these ratios are the ones to read (the rounds above time
each dtype seconds apart). Those rows go to --paired-out (not --out: their timing is
interleaved, compare.py would pool it with the rounds').

Rows follow ekv's JSON result shape (backend = the peer's name) so bench/compare.py and
bench/plot.py read them; metrics.bytes counts K and V as the peer stores them plus q and
out, and metrics.peak_bw_measured_gbs is the copy bandwidth ekv measured in the same run
(on its thread count). --out writes every row (ekv's and the peers') as JSONL.

The table on stdout: per problem and backend, the median over the pooled rounds, GB/s,
percent of the measured copy bandwidth, and the speedups against ekv f32 and numpy f32;
"rounds" gives the lowest and highest median of one round, so the drift shows. The load
average before and after is printed: on a shared machine read the ratios, not the times.

Exit status 1 when a row failed validation or ekv_bench failed, 2 on bad arguments.
"""

import argparse
import datetime
import json
import math
import os
import subprocess
import sys
import time

import numpy as np

EKV_TOLERANCE_FLOOR = 1e-5          # ekv_validation_tolerance in ekv.h
EKV_TOLERANCE_GROWTH = 2e-7
BF16_TOLERANCE = 3e-2
COLD_LLC_MULTIPLE = 3.0             # ekv's cold rule (ekv.h, >>cpu)
COLD_MAX_COPIES = 64
COLD_MAX_BYTES = 2e9


def ekv_tolerance(seq_len):
    return max(EKV_TOLERANCE_FLOOR, EKV_TOLERANCE_GROWTH * math.sqrt(max(seq_len, 1)))


def last_level_cache_bytes():
    """The largest cache the kernel's data passes through (sysfs), 32 MB when unknown."""
    largest = 0
    root = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for entry in os.listdir(root):
            try:
                with open(os.path.join(root, entry, "size")) as f:
                    text = f.read().strip()
                scale = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}.get(text[-1:], 1)
                largest = max(largest, int(text.rstrip("KMG")) * scale)
            except (OSError, ValueError):
                continue
    except OSError:
        pass
    return largest or 32 * 1024 ** 2


def cold_copies(copy_bytes, llc_bytes):
    copies = math.ceil(COLD_LLC_MULTIPLE * llc_bytes / max(copy_bytes, 1))
    copies = min(max(copies, 1), COLD_MAX_COPIES)
    while copies > 1 and copies * copy_bytes > COLD_MAX_BYTES:
        copies -= 1
    return copies


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return "CPU: " + line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "CPU"


def statistics(samples):
    """ekv's statistics block (numpy's linear quantiles, std with ddof = 1)."""
    x = np.asarray(samples, dtype=np.float64)
    q1, median, q3, p5, p95, p99 = np.quantile(x, [0.25, 0.5, 0.75, 0.05, 0.95, 0.99])
    std = float(np.std(x, ddof=1)) if len(x) > 1 else 0.0
    mean = float(np.mean(x))
    return {"n": len(x), "mean": mean, "std": std, "cv": std / mean if mean else None,
            "median": float(median), "min": float(x.min()), "max": float(x.max()),
            "q1": float(q1), "q3": float(q3), "iqr": float(q3 - q1), "p5": float(p5),
            "p95": float(p95), "p99": float(p99)}


def error_stats(reference, output):
    ref = np.asarray(reference, dtype=np.float64).ravel()
    out = np.asarray(output, dtype=np.float64).ravel()
    norm = float(np.linalg.norm(ref))
    diff = out - ref
    scale = norm * float(np.linalg.norm(out))
    cosine = float(np.dot(out, ref)) / scale if scale > 0 else None
    return {"rel_l2": float(np.linalg.norm(diff)) / norm if norm > 0 else None,
            "max_abs": float(np.max(np.abs(diff))) if diff.size else 0.0,
            "cosine": cosine}


def finite(value):
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def make_row(backend, problem, kv_dtype, element_bytes, samples_ms, *, peer, errors, copies,
             copy_gbs, threads, gqa_mode, seed, label):
    """One result in ekv's JSON shape (bench/compare.py and bench/plot.py read it)."""
    b, h, hkv, d, s = (problem[k] for k in ("batch", "heads", "kv_heads", "head_dim", "seq_len"))
    stats = statistics(samples_ms)
    median = stats["median"]
    parts = {"k": float(b * hkv * s * d * element_bytes), "v": float(b * hkv * s * d * element_bytes),
             "scales": 0.0, "bias": 0.0, "q": float(b * h * d * 4), "out": float(b * h * d * 4),
             "partials": 0.0}
    total = sum(parts.values())
    flops = 4.0 * b * h * s * d
    gbs = total / (median * 1e-3) * 1e-9 if median > 0 else None
    measured = finite(copy_gbs)
    no_error = {"rel_l2": 0.0, "max_abs": 0.0, "cosine": 1.0}
    return {
        "schema_version": 1, "ekv_version": None, "benchmark_type": "ekv_decode_attention",
        "timestamp": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "backend": backend, "label": label, "variant": None, "notice": None, "peer": peer,
        "build": {"cuda_graphs": False, "inner_loops": problem["inner_loops"],
                  "truncate_percent": 0, "cache_state": "cold", "cache_copies": copies,
                  "splits": None, "threads": threads, "cpu_simd": None},
        "gpu": {"name": cpu_name(), "sm": None, "sm_count": os.cpu_count()},
        "configuration": {
            "seq_len": s, "batch": b, "heads": h, "kv_heads": hkv, "head_dim": d,
            "compression": 1, "kv_dtype": kv_dtype, "policy": "none", "data": "random",
            "seed": seed, "softmax_scale": 1.0 / math.sqrt(d), "reps": problem["reps"],
            "warmup": problem["warmup"], "inner_loops": problem["inner_loops"],
            "truncate_percent": 0, "cuda_graphs": False, "hot": False,
            "paired_baseline": False, "inference": False, "backend_requested": "cpu",
            "gqa_mode": gqa_mode},
        "results": {
            "attention_time_ms": median, "attention_time_std": stats["std"],
            "coefficient_of_variation": stats["cv"],
            "tokens_per_sec": b * 1000.0 / median if median > 0 else None,
            "baseline_tokens_per_sec": None, "speedup_vs_baseline": None,
            "memory_bandwidth_gbs": gbs, "memory_efficiency_percent": None,
            "roofline_score": None},
        "statistics": stats,
        "metrics": {
            "bytes_total": total, "bytes": parts, "kept_tokens": b * s, "flops": flops,
            "arithmetic_intensity": flops / total,
            "achieved_gflops": flops / (median * 1e-3) * 1e-9 if median > 0 else None,
            "peak_bw_theoretical_gbs": None, "peak_bw_measured_gbs": measured,
            "efficiency_vs_theoretical": None,
            "efficiency_vs_measured": gbs / measured if gbs and measured else None,
            "roofline_score": None},
        "accuracy": {"error_total": errors, "error_compression": no_error, "error_kernel": errors},
        "memory": {"kv_cache_bytes": parts["k"] + parts["v"],
                   "kv_cache_bytes_uncompressed": parts["k"] + parts["v"]},
        "baseline": None, "inference_cycle": None,
        "samples_ms": list(samples_ms),
    }


def time_calls(call, copies, reps, warmup, inner_loops):
    """Per-call times in ms of `reps` samples after `warmup`, rotating through copies."""
    samples, turn = [], 0
    for rep in range(warmup + reps):
        start = time.perf_counter()
        for _ in range(inner_loops):
            call(copies[turn])
            turn = (turn + 1) % len(copies)
        elapsed = (time.perf_counter() - start) * 1e3 / inner_loops
        if rep >= warmup:
            samples.append(elapsed)
    return samples


def problem_data(problem, seed):
    rng = np.random.default_rng(seed)
    b, h, hkv, d, s = (problem[k] for k in ("batch", "heads", "kv_heads", "head_dim", "seq_len"))
    q = (2.0 * rng.standard_normal((b, h, d))).astype(np.float32)
    k = rng.standard_normal((b, hkv, s, d)).astype(np.float32)
    v = rng.standard_normal((b, hkv, s, d)).astype(np.float32)
    return q, k, v


def reference(q, k, v):
    """float64 decode attention: q [B,H,D], k/v [B,Hkv,S,D] -> [B,H,D]."""
    b, h, d = q.shape
    hkv = k.shape[1]
    qg = q.astype(np.float64).reshape(b, hkv, h // hkv, d)
    logits = np.matmul(qg, k.astype(np.float64).transpose(0, 1, 3, 2)) / math.sqrt(d)
    logits -= logits.max(axis=-1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=-1, keepdims=True)
    return np.matmul(p, v.astype(np.float64)).reshape(b, h, d)


def numpy_decode(q_columns, k, v):
    """The numpy peer: q_columns [B,Hkv,D,G] float32, the group's queries as columns, times
    the softmax scale. K [S,D] times them reads K as stored (a q K^T would make numpy copy
    K transposed); the probabilities p [S,G] go back as rows for p^T V."""
    logits = np.matmul(k, q_columns)
    logits -= logits.max(axis=-2, keepdims=True)
    np.exp(logits, out=logits)
    logits /= logits.sum(axis=-2, keepdims=True)
    return np.matmul(logits.transpose(0, 1, 3, 2), v)


def run_numpy(problem, seed, llc, copy_gbs, label):
    b, h, hkv, d, s = (problem[k] for k in ("batch", "heads", "kv_heads", "head_dim", "seq_len"))
    q, k, v = problem_data(problem, seed)
    scale = np.float32(1.0 / math.sqrt(d))
    q_columns = np.ascontiguousarray((q * scale).reshape(b, hkv, h // hkv, d).transpose(0, 1, 3, 2))
    out = numpy_decode(q_columns, k, v).reshape(b, h, d)
    errors = error_stats(reference(q, k, v), out)
    if not (errors["rel_l2"] is not None and errors["rel_l2"] <= ekv_tolerance(s)):
        return None, f"numpy-matmul f32 seq {s}: rel_l2 {errors['rel_l2']} above {ekv_tolerance(s):.1e}"
    copies = [(k, v)] + [(k.copy(), v.copy()) for _ in range(cold_copies(k.nbytes + v.nbytes, llc) - 1)]
    samples = time_calls(lambda kv: numpy_decode(q_columns, kv[0], kv[1]), copies,
                         problem["reps"], problem["warmup"], problem["inner_loops"])
    blas = "unknown"
    try:
        config = np.show_config(mode="dicts")
        info = config.get("Build Dependencies", {}).get("blas", {})
        blas = f"{info.get('name', '?')} {info.get('version', '')}".strip()
    except (TypeError, AttributeError):
        pass
    peer = {"library": "numpy", "version": np.__version__, "blas": blas}
    row = make_row("numpy-matmul", problem, "f32", 4, samples, peer=peer, errors=errors,
                   copies=len(copies), copy_gbs=copy_gbs, threads=blas_threads(),
                   gqa_mode="matmul over the group", seed=seed, label=label)
    return row, None


def blas_threads():
    """numpy's BLAS threads as the environment sets them, else its default: every core."""
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        try:
            return int(os.environ[name])
        except (KeyError, ValueError):
            continue
    return os.cpu_count()


def torch_or_reason():
    try:
        import torch  # noqa: F401
        return torch, None
    except ImportError as error:
        return None, f"torch is not installed ({error})"


def run_torch(torch, problem, kv_dtype, seed, llc, copy_gbs, threads, label):
    import torch.nn.functional as functional
    b, h, hkv, d, s = (problem[k] for k in ("batch", "heads", "kv_heads", "head_dim", "seq_len"))
    if threads > 0:
        torch.set_num_threads(threads)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[kv_dtype]
    q, k, v = problem_data(problem, seed)
    tq = torch.from_numpy(q).to(dtype).unsqueeze(2)              # [B,H,1,D]
    tk, tv = torch.from_numpy(k).to(dtype), torch.from_numpy(v).to(dtype)
    # the reference over what the peer stores (bfloat16 rounds q, k and v)
    ref = reference(tq.squeeze(2).float().numpy(), tk.float().numpy(), tv.float().numpy())
    gqa_mode = "mha" if h == hkv else "enable_gqa"

    def attend(kv):
        if gqa_mode == "enable_gqa":
            return functional.scaled_dot_product_attention(tq, kv[0], kv[1], enable_gqa=True)
        return functional.scaled_dot_product_attention(tq, kv[0], kv[1])

    with torch.inference_mode():
        try:
            out = attend((tk, tv))
        except TypeError:  # a torch without enable_gqa: every query head gets its K/V
            gqa_mode = "expanded"
            tk = tk.repeat_interleave(h // hkv, dim=1)
            tv = tv.repeat_interleave(h // hkv, dim=1)
            out = attend((tk, tv))
        errors = error_stats(ref, out.squeeze(2).float().numpy())
        tolerance = ekv_tolerance(s) if kv_dtype == "f32" else BF16_TOLERANCE
        if not (errors["rel_l2"] is not None and errors["rel_l2"] <= tolerance):
            return None, (f"torch-sdpa-cpu {kv_dtype} seq {s}: rel_l2 {errors['rel_l2']} above "
                          f"{tolerance:.1e}")
        stored = (tk.element_size() * tk.numel()) * 2
        copies = [(tk, tv)] + [(tk.clone(), tv.clone()) for _ in range(cold_copies(stored, llc) - 1)]
        samples = time_calls(attend, copies, problem["reps"], problem["warmup"], problem["inner_loops"])
    peer = {"library": "torch", "version": torch.__version__}
    row = make_row("torch-sdpa-cpu", problem, kv_dtype, 4 if kv_dtype == "f32" else 2, samples,
                   peer=peer, errors=errors, copies=len(copies), copy_gbs=copy_gbs,
                   threads=torch.get_num_threads(), gqa_mode=gqa_mode, seed=seed, label=label)
    return row, None


def run_ekv(arguments, label):
    command = [arguments.bench, "--backend=cpu", "--policy=none", "--compress=1",
               f"--seq={arguments.seq}", f"--batch={arguments.batch}",
               f"--heads={arguments.heads}", f"--kv-heads={arguments.kv_heads}",
               f"--dim={arguments.dim}", f"--kv-dtype={arguments.dtypes}",
               f"--reps={arguments.reps}", f"--warmup={arguments.warmup}",
               f"--inner_loops={arguments.inner_loops}", f"--threads={arguments.threads}",
               f"--seed={arguments.seed}", f"--label={label}", "--json", "--quiet"]
    process = subprocess.run(command, capture_output=True, text=True)
    if process.returncode != 0:
        print(f"peers_cpu.py: {' '.join(command)} failed ({process.returncode}): "
              f"{process.stderr.strip()}", file=sys.stderr)
        return None
    return [json.loads(line) for line in process.stdout.splitlines() if line.strip()]


# ekv's dtype pairs timed paired (dtype, baseline): each step down in bytes a row
PAIRS = (("f16", "f32"), ("int8", "f16"), ("int4", "int8"))


def run_paired(arguments, seq, dtype, baseline):
    """One ekv_bench --paired-baseline run of `dtype` against `baseline` at `seq`: its
    row, or None (ekv_bench failed, said on stderr)."""
    command = [arguments.bench, "--backend=cpu", "--policy=none", "--compress=1",
               f"--seq={seq}", f"--batch={arguments.batch}",
               f"--heads={arguments.heads}", f"--kv-heads={arguments.kv_heads}",
               f"--dim={arguments.dim}", f"--kv-dtype={dtype}", "--paired-baseline",
               f"--baseline-dtype={baseline}",
               f"--reps={arguments.reps}", f"--warmup={arguments.warmup}",
               f"--inner_loops={arguments.inner_loops}", f"--threads={arguments.threads}",
               f"--seed={arguments.seed}", "--label=bench-cpu paired", "--json", "--quiet"]
    process = subprocess.run(command, capture_output=True, text=True)
    if process.returncode != 0:
        print(f"peers_cpu.py: {' '.join(command)} failed ({process.returncode}): "
              f"{process.stderr.strip()}", file=sys.stderr)
        return None
    return json.loads(process.stdout.splitlines()[0])


def paired_summary(rows):
    """The markdown table of the paired runs: medians of both sides and the speedup."""
    lines = ["paired (ABAB in one process, ekv_bench --paired-baseline): speedup = baseline "
             "median / median, 95% bootstrap CI", "",
             "| seq | KV | baseline KV | median ms | baseline median ms | speedup | 95% CI |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        c, b = row["configuration"], row["baseline"]
        lines.append(f"| {c['seq_len']} | {c['kv_dtype']} | {b['kv_dtype']} "
                     f"| {row['statistics']['median']:.3f} | {b['statistics']['median']:.3f} "
                     f"| {b['speedup']:.2f}x | [{b['speedup_ci95']['lo']:.2f}, "
                     f"{b['speedup_ci95']['hi']:.2f}] |")
    return "\n".join(lines)


def parse_list(text, kind):
    try:
        return [kind(item) for item in text.split(",") if item]
    except ValueError:
        raise SystemExit(f"peers_cpu.py: bad list '{text}'")


def summary(rows, load_before, load_after):
    """The markdown table of pooled medians and ratios."""
    groups = {}
    for row in rows:
        c = row["configuration"]
        key = (c["seq_len"], row["backend"], c["kv_dtype"])
        group = groups.setdefault(key, {"samples": [], "rounds": [], "row": row})
        group["samples"].extend(row["samples_ms"])
        group["rounds"].append(float(np.median(row["samples_ms"])))
    copy = [r["metrics"]["peak_bw_measured_gbs"] for r in rows
            if r["backend"] == "cpu" and finite(r["metrics"].get("peak_bw_measured_gbs"))]
    copy_gbs = float(np.median(copy)) if copy else None
    lines = [f"load average before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
             f"after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f} (1, 5, 15 min); "
             f"copy bandwidth measured by ekv: "
             + (f"{copy_gbs:.2f} GB/s" if copy_gbs else "unknown"), "",
             "| seq | backend | KV | median ms | rounds (min..max) | GB/s | % copy BW "
             "| vs ekv f32 | vs numpy f32 | rel_l2 |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for seq in sorted({key[0] for key in groups}):
        medians = {(backend, dtype): float(np.median(g["samples"]))
                   for (s, backend, dtype), g in groups.items() if s == seq}
        ekv_f32, numpy_f32 = medians.get(("cpu", "f32")), medians.get(("numpy-matmul", "f32"))
        for (s, backend, dtype), g in sorted(groups.items(), key=lambda item: (item[0][1] != "cpu",
                                                                               item[0][1], item[0][2])):
            if s != seq:
                continue
            name = "ekv" if backend == "cpu" else backend
            median = medians[(backend, dtype)]
            gbs = g["row"]["metrics"]["bytes_total"] / (median * 1e-3) * 1e-9
            rel = g["row"]["accuracy"]["error_kernel"]["rel_l2"]
            lines.append(
                f"| {seq} | {name} | {dtype} | {median:.3f} | {min(g['rounds']):.3f}..{max(g['rounds']):.3f} "
                f"| {gbs:.2f} | " + (f"{100 * gbs / copy_gbs:.0f}%" if copy_gbs else "?")
                + " | " + (f"{ekv_f32 / median:.2f}x" if ekv_f32 else "?")
                + " | " + (f"{numpy_f32 / median:.2f}x" if numpy_f32 else "?")
                + " | " + (f"{rel:.1e}" if isinstance(rel, float) else "?") + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bench", required=True, help="the ekv_bench binary (CPU backend)")
    parser.add_argument("--seq", default="8192,16384")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--dtypes", default="f32,f16,int8,int4", help="ekv's KV dtypes")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--inner-loops", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="ekv's and torch's; 0 = all cores")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", help="write every row as JSONL here")
    parser.add_argument("--paired-out", help="write the paired runs' rows as JSONL here")
    parser.add_argument("--no-paired", action="store_true",
                        help="skip the paired runs of ekv's dtypes")
    parser.add_argument("--no-torch", action="store_true")
    arguments = parser.parse_args()
    sequences = parse_list(arguments.seq, int)
    if not sequences or min(sequences) < 1 or arguments.rounds < 1 or arguments.reps < 2 \
            or arguments.heads % arguments.kv_heads:
        print("peers_cpu.py: need --seq >= 1, --rounds >= 1, --reps >= 2, --kv-heads dividing "
              "--heads", file=sys.stderr)
        return 2
    torch, reason = (None, "--no-torch") if arguments.no_torch else torch_or_reason()
    if torch is None:
        print(f"SKIP torch-sdpa-cpu: {reason}")
    llc = last_level_cache_bytes()
    load_before = os.getloadavg()
    rows, failures = [], []
    for round_index in range(arguments.rounds):
        label = f"bench-cpu round {round_index + 1}"
        ekv_rows = run_ekv(arguments, label)
        if ekv_rows is None:
            return 1
        rows.extend(ekv_rows)
        copy_gbs = next((r["metrics"]["peak_bw_measured_gbs"] for r in ekv_rows), None)
        for seq in sequences:
            problem = {"batch": arguments.batch, "heads": arguments.heads,
                       "kv_heads": arguments.kv_heads, "head_dim": arguments.dim, "seq_len": seq,
                       "reps": arguments.reps, "warmup": arguments.warmup,
                       "inner_loops": arguments.inner_loops}
            results = [run_numpy(problem, arguments.seed, llc, copy_gbs, label)]
            if torch is not None:
                results += [run_torch(torch, problem, dtype, arguments.seed, llc, copy_gbs,
                                      arguments.threads, label) for dtype in ("f32", "bf16")]
            rows += [row for row, _ in results if row is not None]
            failures += [why for _, why in results if why is not None]
        print(f"round {round_index + 1} of {arguments.rounds} done", file=sys.stderr)
    dtypes = parse_list(arguments.dtypes, str)
    pairs = [] if arguments.no_paired else [(seq, dtype, baseline) for seq in sequences
                                            for dtype, baseline in PAIRS
                                            if dtype in dtypes and baseline in dtypes]
    paired = []
    for seq, dtype, baseline in pairs:
        row = run_paired(arguments, seq, dtype, baseline)
        if row is None:
            return 1
        paired.append(row)
    load_after = os.getloadavg()
    for path, written in ((arguments.out, rows), (arguments.paired_out, paired)):
        if path:
            with open(path, "w") as f:
                for row in written:
                    f.write(json.dumps(row, allow_nan=False) + "\n")
    print(summary(rows, load_before, load_after))
    if paired:
        print("\n" + paired_summary(paired))
    for why in failures:
        print(f"FAIL {why} (not timed)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
