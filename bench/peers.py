#!/usr/bin/env python3
"""peers.py - ekv's f16 decode problems timed on other libraries, the way ekv times them.

Run:  python3 bench/peers.py --problems EKV.jsonl --out PEERS.jsonl [--runs RUNS.jsonl]
                             [--budget SECONDS] [--dtypes f16,bf16] [--seed N]

Peers (each one result row per problem and KV dtype):
  torch-sdpa           torch.nn.functional.scaled_dot_product_attention, q of one token;
                       GQA through enable_gqa=True where the installed torch has it, else
                       through K/V expanded to every query head before timing (so the timed
                       call reads group x more bytes); configuration.gqa_mode says which
                       ("mha" when heads == kv_heads)
  flashinfer-decode    flashinfer.single_decode_with_kv_cache (HND layout), CUDA cores
  flashinfer-decode-tc the same with use_tensor_cores=True (its tensor-core GQA path)
FlashInfer rows need `import flashinfer` to work and batch 1 (the single-sequence API).

Problems: every ekv result in --problems with kv_dtype f16, policy none, C = 1 (ekv's f16
sweep): the same batch, heads, kv_heads, head_dim, seq_len, reps, warmup and inner_loops.

Method, as ekv_cuda.cuh's: validate first (float64 reference on the device over the same
stored K/V; a row whose rel_l2 exceeds the dtype's tolerance, or holds a NaN, is failed and
not timed), then cold timing: the launches rotate among copies of K/V that together stream
more than 3 x L2 between two uses of one copy (ekv's rule for the copy count), CUDA events
around `inner_loops` launches per sample (captured in CUDA graphs when capture works, else
launched one by one; build.cuda_graphs says which), `warmup` samples dropped, `reps` kept,
time per launch = sample / inner_loops, median reported. Data: seeded standard normal
q (x2, so attention is not uniform), k, v in float32, stored as the KV dtype.

Rows follow ekv's JSON result shape (backend = the peer's name) so bench/compare.py and
bench/plot.py read them. metrics.bytes counts K and V once plus q and out (the problem's
bytes, as ekv counts them), not what the peer moves: an expanded-KV row moves more.

Without torch, or without a CUDA device, it prints "SKIP peers: <why>" and exits 0. Exit
status 1 when a row failed validation or raised; 0 otherwise. The problem list, the
statistics and the row shape are plain Python (tests/py/test_gpu_tools.py tests them
without torch).
"""

import argparse
import datetime
import json
import math
import random
import sys
import time

TOLERANCE = {"f16": 5e-3, "bf16": 3e-2}      # rel_l2 vs float64 over the same stored K/V
ELEMENT_BYTES = {"f16": 2, "bf16": 2}
BOOTSTRAP_RESAMPLES = 2000
COLD_L2_MULTIPLE = 3.0
MAX_GRAPHS = 64


# ---------------------------------------------------------------- problems

def problems_from_results(records):
    """The distinct f16, uncompressed problems among ekv results, in their order."""
    problems, seen = [], set()
    for record in records:
        c = record.get("configuration")
        if not isinstance(c, dict) or record.get("inference_cycle") is not None:
            continue
        if c.get("inference") or c.get("kv_dtype") != "f16" or c.get("policy") != "none" \
                or c.get("compression") != 1:
            continue
        if record.get("backend") not in ("cuda", "emulator"):
            continue
        problem = {key: int(c[key]) for key in ("batch", "heads", "kv_heads", "head_dim",
                                                "seq_len", "reps", "warmup", "inner_loops")}
        problem["softmax_scale"] = float(c.get("softmax_scale") or
                                         1.0 / math.sqrt(problem["head_dim"]))
        key = tuple(sorted(problem.items()))
        if key in seen:
            continue
        seen.add(key)
        problem["ekv"] = {
            "peak_bw_theoretical_gbs": get(record, "metrics.peak_bw_theoretical_gbs"),
            "peak_bw_measured_gbs": get(record, "metrics.peak_bw_measured_gbs"),
            "gpu": record.get("gpu") if isinstance(record.get("gpu"), dict) else {},
        }
        problems.append(problem)
    return problems


def get(record, dotted):
    value = record
    for part in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def load_jsonl(path):
    records = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                records.append(json.loads(line))
    return records


def cold_copies(copy_bytes, l2_bytes, inner_loops, max_copies):
    """How many copies to rotate among, by ekv_cuda.cuh's rule (ekv_cuda__cold_copies):
    1 when one copy is 3 x L2 or more, else enough that the others stream 3 x L2 between two
    uses of a copy; then a divisor or a multiple of inner_loops, within max_copies."""
    target = COLD_L2_MULTIPLE * l2_bytes
    max_copies = max(1, max_copies)
    want = 1 if copy_bytes >= target or copy_bytes <= 0 else 1 + math.ceil(target / copy_bytes)
    up, down = 0, 1
    for d in range(1, inner_loops + 1):
        if inner_loops % d or d > max_copies:
            continue
        if d >= want and not up:
            up = d
        down = d
    if not up and want > inner_loops:
        multiple = -(-want // inner_loops) * inner_loops
        if multiple <= max_copies:
            up = multiple
        elif max_copies // inner_loops * inner_loops >= inner_loops:
            down = max_copies // inner_loops * inner_loops
    return up or down


def graph_starts(copies, inner_loops):
    """Distinct rotation offsets a sample can start at: sample s starts at
    s x inner_loops mod copies (copies is a divisor or a multiple of inner_loops)."""
    return max(1, copies // inner_loops) if copies >= inner_loops else 1


# ---------------------------------------------------------------- statistics

def quantile_sorted(values, q):
    """numpy's default (linear interpolation between closest ranks)."""
    position = q * (len(values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (position - low)


def _log_beta_front(a, b, x):
    return (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
            + a * math.log(x) + b * math.log1p(-x))


def _beta_fraction(a, b, x):
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def incomplete_beta(a, b, x):
    """Regularized incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(_log_beta_front(a, b, x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_fraction(a, b, x) / a
    return 1.0 - front * _beta_fraction(b, a, 1.0 - x) / b


def t_cdf(t, df):
    tail = 0.5 * incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_inverse_cdf(p, df):
    """Student t quantile by bisection on the CDF (relative accuracy far below 1e-6)."""
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_inverse_cdf(1.0 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        high *= 2.0
    for _ in range(200):
        middle = 0.5 * (low + high)
        if t_cdf(middle, df) < p:
            low = middle
        else:
            high = middle
        if high - low <= 1e-14 * high:
            break
    return 0.5 * (low + high)


def statistics(samples, seed, trim_percent=0.0):
    """ekv's statistics object (ekv.h ekv_stats_compute), over samples in ms."""
    n = len(samples)
    if n < 1:
        raise ValueError("no samples")
    ordered = sorted(samples)
    mean = sum(samples) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in samples) / (n - 1)) if n > 1 else None
    q1, q3 = quantile_sorted(ordered, 0.25), quantile_sorted(ordered, 0.75)
    iqr = q3 - q1
    mild = severe = 0
    for x in ordered:
        if x < q1 - 3.0 * iqr or x > q3 + 3.0 * iqr:
            severe += 1
        elif x < q1 - 1.5 * iqr or x > q3 + 1.5 * iqr:
            mild += 1
    cut = int(math.floor(trim_percent / 100.0 * n))
    kept = ordered[cut:n - cut]
    if n > 1:
        half = t_inverse_cdf(0.975, n - 1) * std / math.sqrt(n)
        ci_mean = {"lo": mean - half, "hi": mean + half}
    else:
        ci_mean = {"lo": None, "hi": None}
    rng = random.Random(seed)
    medians = sorted(quantile_sorted(sorted(rng.choices(ordered, k=n)), 0.5)
                     for _ in range(BOOTSTRAP_RESAMPLES))
    return {
        "n": n, "mean": mean, "std": std, "cv": std / mean if std is not None and mean else None,
        "median": quantile_sorted(ordered, 0.5), "min": ordered[0], "max": ordered[-1],
        "q1": q1, "q3": q3, "iqr": iqr, "p5": quantile_sorted(ordered, 0.05),
        "p95": quantile_sorted(ordered, 0.95), "p99": quantile_sorted(ordered, 0.99),
        "trimmed_mean": sum(kept) / len(kept),
        "ci95_mean": ci_mean,
        "ci95_median": {"lo": quantile_sorted(medians, 0.025),
                        "hi": quantile_sorted(medians, 0.975)},
        "outliers": {"mild": mild, "severe": severe},
    }


# ---------------------------------------------------------------- the row

def problem_bytes(problem, kv_dtype):
    """K and V once, q and out: the problem's bytes in the peer's storage dtype."""
    element = ELEMENT_BYTES[kv_dtype]
    b, h, hk, d, s = (problem[k] for k in ("batch", "heads", "kv_heads", "head_dim", "seq_len"))
    kv = b * hk * s * d * element
    q = b * h * d * element
    return {"k": kv, "v": kv, "scales": 0, "bias": 0, "q": q, "out": q, "partials": 0}


def finite(value):
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def clean(value):
    """NaN and infinities become null (ekv's JSON is strict RFC 8259)."""
    if isinstance(value, dict):
        return {key: clean(item) for key, item in value.items()}
    if isinstance(value, list):
        return [clean(item) for item in value]
    if isinstance(value, float):
        return finite(value)
    return value


def make_row(backend, problem, kv_dtype, gqa_mode, samples_ms, *, seed, cache_copies,
             cuda_graphs, gpu, copy_gbs, errors, peer, notice="", data="random",
             timestamp=None):
    """One result in ekv's JSON shape (bench/compare.py and bench/plot.py read it)."""
    stats = statistics(samples_ms, seed)
    median = stats["median"]
    parts = problem_bytes(problem, kv_dtype)
    total = float(sum(parts.values()))
    b, h, d, s = (problem[k] for k in ("batch", "heads", "head_dim", "seq_len"))
    flops = 4.0 * b * h * s * d
    gbs = total / (median * 1e-3) * 1e-9 if median > 0 else None
    theoretical = finite(problem.get("ekv", {}).get("peak_bw_theoretical_gbs"))
    measured = finite(copy_gbs)
    return clean({
        "schema_version": 1, "ekv_version": None, "benchmark_type": "ekv_decode_attention",
        "timestamp": timestamp or datetime.datetime.now(datetime.timezone.utc)
        .strftime("%Y-%m-%dT%H:%M:%SZ"),
        "backend": backend, "label": "gpu-check:peers", "variant": None, "notice": notice,
        "peer": peer,
        "build": {"cuda_graphs": cuda_graphs, "inner_loops": problem["inner_loops"],
                  "truncate_percent": 0, "cache_state": "cold", "cache_copies": cache_copies,
                  "splits": None, "kernel": None},
        "gpu": gpu,
        "configuration": {
            "seq_len": s, "batch": b, "heads": h, "kv_heads": problem["kv_heads"],
            "head_dim": d, "compression": 1, "kv_dtype": kv_dtype, "policy": "none",
            "data": data, "seed": seed, "softmax_scale": problem["softmax_scale"],
            "reps": problem["reps"], "warmup": problem["warmup"],
            "inner_loops": problem["inner_loops"], "truncate_percent": 0,
            "cuda_graphs": cuda_graphs, "hot": False, "paired_baseline": False,
            "inference": False, "gqa_mode": gqa_mode},
        "results": {
            "attention_time_ms": median, "attention_time_std": stats["std"],
            "coefficient_of_variation": stats["cv"],
            "tokens_per_sec": b * 1000.0 / median if median > 0 else None,
            "baseline_tokens_per_sec": None, "speedup_vs_baseline": None,
            "memory_bandwidth_gbs": gbs,
            "memory_efficiency_percent": 100.0 * gbs / theoretical if gbs and theoretical else None,
            "roofline_score": None},
        "statistics": stats,
        "metrics": {
            "bytes_total": total, "bytes": parts, "kept_tokens": b * s, "flops": flops,
            "arithmetic_intensity": flops / total,
            "achieved_gflops": flops / (median * 1e-3) * 1e-9 if median > 0 else None,
            "peak_bw_theoretical_gbs": theoretical, "peak_bw_measured_gbs": measured,
            "efficiency_vs_theoretical": gbs / theoretical if gbs and theoretical else None,
            "efficiency_vs_measured": gbs / measured if gbs and measured else None,
            "roofline_score": None},
        "accuracy": errors,
        "memory": {"kv_cache_bytes": parts["k"] + parts["v"],
                   "kv_cache_bytes_uncompressed": parts["k"] + parts["v"]},
        "baseline": None, "inference_cycle": None,
        "samples_ms": list(samples_ms),
    })


def error_stats(reference, output):
    """{rel_l2, max_abs, cosine} of two equal-length float sequences (pure Python)."""
    diff = sum((x - r) ** 2 for x, r in zip(output, reference))
    norm_ref = sum(r * r for r in reference)
    norm_out = sum(x * x for x in output)
    dot = sum(x * r for x, r in zip(output, reference))
    return {"rel_l2": math.sqrt(diff / norm_ref) if norm_ref > 0 else None,
            "max_abs": max((abs(x - r) for x, r in zip(output, reference)), default=0.0),
            "cosine": dot / math.sqrt(norm_ref * norm_out) if norm_ref > 0 and norm_out > 0
            else None}


# ---------------------------------------------------------------- on the device (torch)

class Device:
    """torch and what the peers need of the device: facts, copy bandwidth, tensors."""

    def __init__(self, torch):
        self.torch = torch
        props = torch.cuda.get_device_properties(0)
        self.l2_bytes = getattr(props, "L2_cache_size", 0) or 128 * 2 ** 20
        self.gpu = {"name": props.name, "sm": f"{props.major}.{props.minor}",
                    "sm_count": props.multi_processor_count, "l2_bytes": self.l2_bytes,
                    "memory_bytes": props.total_memory,
                    "runtime_version": torch.version.cuda, "torch_version": torch.__version__}
        self.copy_gbs = self.copy_bandwidth()

    def copy_bandwidth(self, reps=10):
        """As ekv_cuda_copy_bandwidth: max(256 MiB, 4 x L2) within a quarter of free memory,
        median of device-to-device copies, read + write bytes."""
        torch = self.torch
        free, _ = torch.cuda.mem_get_info()
        size = min(max(256 * 2 ** 20, 4 * self.l2_bytes), free // 4) // 256 * 256
        src = torch.ones(size, dtype=torch.uint8, device="cuda")
        dst = torch.empty_like(src)
        dst.copy_(src)
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        times = []
        for i in range(reps):
            start.record()
            (src if i % 2 else dst).copy_(dst if i % 2 else src)
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop))
        del src, dst
        median = quantile_sorted(sorted(times), 0.5)
        return 2.0 * size / (median * 1e-3) * 1e-9

    def reference(self, q, k, v, scale):
        """softmax(q k^T scale) v in float64, query head h on kv head h // group."""
        torch = self.torch
        batch, heads, dim = q.shape
        kv_heads = k.shape[1]
        group = heads // kv_heads
        out = torch.empty(batch, heads, dim, dtype=torch.float64, device=q.device)
        for b in range(batch):
            for g in range(kv_heads):
                keys, values = k[b, g].double(), v[b, g].double()
                queries = q[b, g * group:(g + 1) * group].double()
                weights = torch.softmax((queries @ keys.T) * scale, dim=-1)
                out[b, g * group:(g + 1) * group] = weights @ values
        return out

    def errors(self, reference, output):
        torch = self.torch
        out = output.double().reshape(reference.shape)
        diff = out - reference
        norm = torch.linalg.vector_norm(reference).item()
        dot = (out * reference).sum().item()
        norm_out = torch.linalg.vector_norm(out).item()
        return {"rel_l2": torch.linalg.vector_norm(diff).item() / norm if norm > 0 else None,
                "max_abs": diff.abs().max().item(),
                "cosine": dot / (norm * norm_out) if norm > 0 and norm_out > 0 else None}

    def time(self, launch, copies, problem, use_graphs=True):
        """(samples_ms per launch, graphs used?, note): CUDA events around inner_loops
        launches per sample, rotating over `copies`."""
        torch = self.torch
        count, inner = len(copies), problem["inner_loops"]
        starts = graph_starts(count, inner)
        stream = torch.cuda.Stream()
        graphs, note = None, ""
        if use_graphs and starts <= MAX_GRAPHS:
            try:
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):
                    for j in range(min(count, 3)):
                        launch(copies[j])
                torch.cuda.synchronize()
                graphs = []
                for g in range(starts):
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, stream=stream):
                        for j in range(inner):
                            launch(copies[(g * inner + j) % count])
                    graphs.append(graph)
            except Exception as error:  # noqa: BLE001 - any capture failure: time eagerly
                graphs = None
                note = f"graph capture failed ({type(error).__name__}: {error}); launched one by one"
                torch.cuda.synchronize()
        begin = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        samples = []
        with torch.cuda.stream(stream):
            for i in range(problem["warmup"] + problem["reps"]):
                offset = (i * inner) % count
                begin.record(stream)
                if graphs:
                    graphs[(offset // inner) % starts if count >= inner else 0].replay()
                else:
                    for j in range(inner):
                        launch(copies[(offset + j) % count])
                end.record(stream)
                end.synchronize()
                if i >= problem["warmup"]:
                    samples.append(begin.elapsed_time(end) / inner)
        used = graphs is not None
        del graphs
        return samples, used, note


def sdpa_gqa_supported(torch):
    functional = torch.nn.functional
    q = torch.randn(1, 4, 1, 64, device="cuda", dtype=torch.float16)
    k = torch.randn(1, 2, 8, 64, device="cuda", dtype=torch.float16)
    try:
        functional.scaled_dot_product_attention(q, k, k, enable_gqa=True)
        return True
    except (TypeError, RuntimeError):
        return False


def flashinfer_module():
    try:
        import flashinfer  # noqa: PLC0415 - optional peer
    except Exception as error:  # noqa: BLE001 - an import can fail in many ways
        return None, f"flashinfer is not importable ({type(error).__name__}: {error})"
    return flashinfer, ""


class Peer:
    """One callable to time on one problem: name, dtype and how it reads K/V."""

    def __init__(self, name, kv_dtype, gqa_mode, call, prepare, version, text):
        self.name, self.kv_dtype, self.gqa_mode = name, kv_dtype, gqa_mode
        self.call, self.prepare, self.version, self.text = call, prepare, version, text


def peers_for(torch, problem, kv_dtype, gqa_native, flashinfer, flashinfer_why):
    """[(Peer or None, reason if None)] for one problem and KV dtype."""
    functional = torch.nn.functional
    dtype = {"f16": torch.float16, "bf16": torch.bfloat16}[kv_dtype]
    batch, heads, kv_heads = problem["batch"], problem["heads"], problem["kv_heads"]
    dim, scale = problem["head_dim"], problem["softmax_scale"]
    group = heads // kv_heads
    out = []
    if group == 1:
        mode = "mha"
    else:
        mode = "enable_gqa" if gqa_native else "expanded"

    def sdpa_prepare(q, k, v):
        q4 = q.to(dtype).reshape(batch, heads, 1, dim)
        if mode == "expanded":
            return q4, k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        return q4, k, v

    if mode == "enable_gqa":
        def sdpa_call(q4, kv):
            return functional.scaled_dot_product_attention(q4, kv[0], kv[1], scale=scale,
                                                           enable_gqa=True)
    else:
        def sdpa_call(q4, kv):
            return functional.scaled_dot_product_attention(q4, kv[0], kv[1], scale=scale)
    out.append((Peer("torch-sdpa", kv_dtype, mode, sdpa_call, sdpa_prepare,
                     f"torch {torch.__version__}",
                     "torch.nn.functional.scaled_dot_product_attention"
                     + (", enable_gqa=True" if mode == "enable_gqa" else "")), ""))

    for name, tensor_cores in (("flashinfer-decode", False), ("flashinfer-decode-tc", True)):
        if flashinfer is None:
            out.append((None, flashinfer_why))
            continue
        if batch != 1:
            out.append((None, "single_decode_with_kv_cache decodes one sequence; batch > 1 "
                              "needs FlashInfer's batch API, not timed here"))
            continue

        def fi_prepare(q, k, v):
            return q.to(dtype).reshape(heads, dim), k[0], v[0]

        def fi_call(q2, kv, tensor_cores=tensor_cores):
            return flashinfer.single_decode_with_kv_cache(
                q2, kv[0], kv[1], kv_layout="HND", sm_scale=scale,
                use_tensor_cores=tensor_cores)
        out.append((Peer(name, kv_dtype, "mha" if group == 1 else "native", fi_call,
                         fi_prepare, f"flashinfer {getattr(flashinfer, '__version__', '?')}",
                         "flashinfer.single_decode_with_kv_cache(kv_layout='HND', "
                         f"use_tensor_cores={tensor_cores})"), ""))
    return out


def run_problem(device, problem, kv_dtype, seed, gqa_native, flashinfer, flashinfer_why,
                report):
    """Validates and times every peer on one problem; report(record, row or None)."""
    torch = device.torch
    dtype = {"f16": torch.float16, "bf16": torch.bfloat16}[kv_dtype]
    b, h, hk, d, s = (problem[k] for k in ("batch", "heads", "kv_heads", "head_dim", "seq_len"))
    scale = problem["softmax_scale"]
    generator = torch.Generator(device="cuda").manual_seed(seed)
    q = 2.0 * torch.randn(b, h, d, device="cuda", generator=generator)
    k32 = torch.randn(b, hk, s, d, device="cuda", generator=generator)
    v32 = torch.randn(b, hk, s, d, device="cuda", generator=generator)
    k, v = k32.to(dtype), v32.to(dtype)
    reference_full = device.reference(q, k32, v32, scale)
    del k32, v32
    reference = device.reference(q.to(dtype), k, v, scale)
    compression_error = device.errors(reference_full, reference)
    for peer, why in peers_for(torch, problem, kv_dtype, gqa_native, flashinfer, flashinfer_why):
        label = {"problem": describe(problem), "kv_dtype": kv_dtype}
        if peer is None:
            report(dict(label, status="skipped", reason=why), None)
            continue
        label["peer"] = peer.name
        began = time.monotonic()
        try:
            q_in, k_in, v_in = peer.prepare(q, k, v)
            output = peer.call(q_in, (k_in, v_in))
            torch.cuda.synchronize()
            if not bool(torch.isfinite(output.float()).all()):
                report(dict(label, status="failed", reason="output holds NaN or Inf"), None)
                continue
            kernel_error = device.errors(reference, output.float())
            total_error = device.errors(reference_full, output.float())
            if not (kernel_error["rel_l2"] is not None
                    and kernel_error["rel_l2"] <= TOLERANCE[kv_dtype]):
                report(dict(label, status="failed",
                            reason=f"rel_l2 {kernel_error['rel_l2']:.3e} vs float64 > "
                                   f"{TOLERANCE[kv_dtype]:.0e}"), None)
                continue
            copy_bytes = 2 * k_in.numel() * k_in.element_size()
            free, _ = torch.cuda.mem_get_info()
            fit = max(1, int(0.5 * free // max(copy_bytes, 1)))
            count = cold_copies(copy_bytes, device.l2_bytes, problem["inner_loops"],
                                min(fit, MAX_GRAPHS * problem["inner_loops"], 4096))
            copies = [(k_in, v_in)] + [(k_in.clone(), v_in.clone()) for _ in range(count - 1)]
            samples, graphs, note = device.time(lambda kv: peer.call(q_in, kv), copies, problem)
            del copies
            if count * copy_bytes < 2 * device.l2_bytes:
                note = (note + "; " if note else "") + \
                    f"timing is not fully cold: {count} copies x {copy_bytes / 2**20:.1f} MiB"
            row = make_row(peer.name, problem, kv_dtype, peer.gqa_mode, samples, seed=seed,
                           cache_copies=count, cuda_graphs=graphs, gpu=device.gpu,
                           copy_gbs=device.copy_gbs, notice=note,
                           errors={"error_total": total_error,
                                   "error_compression": compression_error,
                                   "error_kernel": kernel_error},
                           peer={"version": peer.version, "call": peer.text})
            report(dict(label, status="ok", seconds=round(time.monotonic() - began, 2)), row)
        except Exception as error:  # noqa: BLE001 - one peer failing must not stop the rest
            report(dict(label, status="failed",
                        reason=f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
                        if str(error) else type(error).__name__), None)
            torch.cuda.synchronize()


def describe(problem):
    return (f"seq={problem['seq_len']} batch={problem['batch']} heads={problem['heads']} "
            f"kv-heads={problem['kv_heads']} dim={problem['head_dim']}")


def predicted_seconds(problem, kv_dtype):
    """Generous: data and float64 references on the device, clones, and the timed launches."""
    parts = problem_bytes(problem, kv_dtype)
    launches = (problem["warmup"] + problem["reps"]) * problem["inner_loops"]
    per_launch = 10e-6 + (parts["k"] + parts["v"]) / 2.0e12
    return 1.0 + 4 * parts["k"] / 50e9 + 3 * launches * per_launch


def main(argv=None):
    parser = argparse.ArgumentParser(prog="peers.py", description=__doc__.split("\n")[0])
    parser.add_argument("--problems", required=True, help="ekv results (JSONL) to match")
    parser.add_argument("--out", required=True, help="JSONL to append the peers' rows to")
    parser.add_argument("--runs", default=None, help="JSONL to append one status line per row to")
    parser.add_argument("--budget", type=float, default=600.0, help="seconds for everything")
    parser.add_argument("--dtypes", default="f16,bf16")
    parser.add_argument("--seed", type=int, default=42)
    arguments = parser.parse_args(argv)
    began = time.monotonic()
    dtypes = [d for d in arguments.dtypes.split(",") if d]
    for dtype in dtypes:
        if dtype not in TOLERANCE:
            parser.error(f"--dtypes: {dtype!r}; allowed: {', '.join(TOLERANCE)}")
    try:
        problems = problems_from_results(load_jsonl(arguments.problems))
    except (OSError, ValueError) as error:
        print(f"SKIP peers: no ekv f16 results to match ({error})")
        return 0
    if not problems:
        print(f"SKIP peers: {arguments.problems} holds no ekv f16 result (policy none, C = 1)")
        return 0
    try:
        import torch  # noqa: PLC0415 - optional: the dry run has none
    except Exception as error:  # noqa: BLE001
        print(f"SKIP peers: torch is not importable ({type(error).__name__}: {error})")
        return 0
    if not torch.cuda.is_available():
        print(f"SKIP peers: torch {torch.__version__} sees no CUDA device")
        return 0
    device = Device(torch)
    gqa_native = sdpa_gqa_supported(torch)
    flashinfer, flashinfer_why = flashinfer_module()
    print(f"peers: {device.gpu['name']}, torch {torch.__version__} (GQA "
          f"{'enable_gqa' if gqa_native else 'by expanded K/V'}), "
          f"{'flashinfer ' + getattr(flashinfer, '__version__', '?') if flashinfer else flashinfer_why}; "
          f"copy bandwidth {device.copy_gbs:.0f} GB/s", flush=True)
    counts, failed = {}, False

    def report(record, row):
        nonlocal failed
        record["sweep"] = "peers"
        counts[record["status"]] = counts.get(record["status"], 0) + 1
        failed = failed or record["status"] == "failed"
        if row is not None:
            with open(arguments.out, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(row, allow_nan=False) + "\n")
        if arguments.runs:
            with open(arguments.runs, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
        print(f"[peers] {record['status']:<8} {record.get('peer', '-'):<21} "
              f"{record['kv_dtype']:<5} {record['problem']}"
              + (f"  ({record['reason']})" if record.get("reason") else ""), flush=True)

    for problem in problems:
        for kv_dtype in dtypes:
            left = arguments.budget - (time.monotonic() - began)
            timed = 3 if flashinfer is not None and problem["batch"] == 1 else 1
            need = timed * predicted_seconds(problem, kv_dtype)
            if need > left:
                report({"problem": describe(problem), "kv_dtype": kv_dtype, "status": "skipped",
                        "reason": f"predicted {need:.0f} s > {max(left, 0):.0f} s left of the "
                                  f"{arguments.budget:.0f} s budget"}, None)
                continue
            try:
                run_problem(device, problem, kv_dtype, arguments.seed, gqa_native, flashinfer,
                            flashinfer_why, report)
            except Exception as error:  # noqa: BLE001 - data or reference failed: one problem
                report({"problem": describe(problem), "kv_dtype": kv_dtype, "status": "failed",
                        "reason": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
                        if str(error) else type(error).__name__}, None)
            torch.cuda.empty_cache()
    parts = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    print(f"NOTE: peers: {counts.get('ok', 0)} rows measured ({parts})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
