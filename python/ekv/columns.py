"""ekv.columns - the columns of ekv.bench's rows: the one place they are defined.

Each row of `ekv.bench(...)` is one result of ekv_bench, flattened: a column takes its
value from a key of the result's JSON object (the JSON is the contract, README "What a
result contains"); a workload column is named as the keyword of ekv.bench that sets it
(seq, kv_dtype, compress, ...). Numbers the result leaves null (unknown, or not measured)
are NaN. A `--inference --variant=all` result gives one row per variant. The names are
stable: a new column may be added, none is renamed or removed without a new major
version. `ekv.columns()` returns this table; `ekv.bench(..., raw=True)` returns the JSON
objects themselves.
"""

# (column, JSON key path, kind, meaning); kind: int, float, str, bool, list, dict
COLUMNS = (
    # what ran
    ("backend", "backend", "str", "what ran: cuda, cpu or emulator"),
    ("device", "gpu.name", "str", "the GPU's name, or 'CPU: <model>'"),
    ("label", "label", "str", "the label keyword"),
    ("notice", "notice", "str", "what the run had to say (e.g. why it fell back to the CPU); None when nothing"),
    ("timestamp", "timestamp", "str", "when it ran, UTC ISO 8601"),
    # the workload, named as ekv.bench's keywords
    ("batch", "configuration.batch", "int", "sequences"),
    ("seq", "configuration.seq_len", "int", "tokens in the cache per sequence"),
    ("heads", "configuration.heads", "int", "query heads"),
    ("kv_heads", "configuration.kv_heads", "int", "KV heads (resolved: heads when not given)"),
    ("dim", "configuration.head_dim", "int", "head dimension"),
    ("compress", "configuration.compression", "int", "compression ratio C"),
    ("kv_dtype", "configuration.kv_dtype", "str", "storage dtype of the cache"),
    ("policy", "configuration.policy", "str", "compression policy"),
    ("recent", "configuration.recent", "int", "exact recent window W"),
    ("sinks", "configuration.sinks", "int", "sink tokens kept by window and topk"),
    ("observe", "configuration.observe", "int", "queries whose attention scores topk"),
    ("data", "configuration.data", "str", "structured, random, or the file's path"),
    ("seed", "configuration.seed", "int", "data seed"),
    ("softmax_scale", "configuration.softmax_scale", "float", "softmax scale (resolved)"),
    ("paired_baseline", "configuration.paired_baseline", "bool", "timed ABAB against the C = 1 baseline"),
    ("baseline_dtype", "configuration.baseline_dtype", "str", "the baseline's dtype; None without a paired baseline"),
    ("hot", "configuration.hot", "bool", "L2-resident (hot) instead of cold timing"),
    ("reps", "configuration.reps", "int", "kept samples"),
    ("warmup", "configuration.warmup", "int", "discarded samples"),
    ("inner_loops", "configuration.inner_loops", "int", "launches per sample"),
    ("inference", "configuration.inference", "bool", "an inference-cycle result (the cycle_* columns)"),
    ("layers", "configuration.layers", "int", "layers of the inference cycle"),
    ("decode_tokens", "configuration.decode_tokens", "int", "decode steps of the inference cycle"),
    ("variant", "inference_cycle.variant", "str", "the cycle's variant; None for an attention result"),
    # time (per launch, ms)
    ("time_ms", "results.attention_time_ms", "float", "median time of one attention call"),
    ("time_ci_lo_ms", "statistics.ci95_median.lo", "float", "95% bootstrap CI of that median, low"),
    ("time_ci_hi_ms", "statistics.ci95_median.hi", "float", "95% bootstrap CI of that median, high"),
    ("time_std_ms", "statistics.std", "float", "standard deviation of the samples (ddof 1)"),
    ("cv", "statistics.cv", "float", "coefficient of variation, std / mean"),
    ("tokens_per_sec", "results.tokens_per_sec", "float", "batch x 1000 / time_ms"),
    ("samples_ms", "samples_ms", "list", "every kept sample, in order"),
    # bytes and bandwidth
    ("bytes", "metrics.bytes_total", "float", "bytes one call reads and writes (K, V, scales, bias, q, out, partials)"),
    ("kv_cache_bytes", "memory.kv_cache_bytes", "float", "the stored cache's bytes"),
    ("kv_cache_bytes_uncompressed", "memory.kv_cache_bytes_uncompressed", "float", "the same dtype at C = 1"),
    ("kept_tokens", "metrics.kept_tokens", "float", "slots read, summed over sequences"),
    ("bandwidth_gbs", "results.memory_bandwidth_gbs", "float", "bytes / time_ms, GB/s (1e9)"),
    ("peak_measured_gbs", "metrics.peak_bw_measured_gbs", "float", "measured copy bandwidth (read + write)"),
    ("peak_theoretical_gbs", "metrics.peak_bw_theoretical_gbs", "float", "theoretical peak; NaN when unknown"),
    ("efficiency", "metrics.efficiency_vs_measured", "float", "bandwidth_gbs / peak_measured_gbs"),
    ("roofline", "results.roofline_score", "float", "achieved / roofline bound, in [0, 1]"),
    # the paired baseline
    ("speedup", "results.speedup_vs_baseline", "float", "median(baseline) / median(candidate); NaN without a paired baseline"),
    ("speedup_lo", "baseline.speedup_ci95.lo", "float", "95% bootstrap CI of the speedup, low"),
    ("speedup_hi", "baseline.speedup_ci95.hi", "float", "95% bootstrap CI of the speedup, high"),
    ("baseline_time_ms", "baseline.attention_time_ms", "float", "the baseline's median time"),
    ("baseline_samples_ms", "baseline.samples_ms", "list", "the baseline's samples"),
    # accuracy: relative L2 (the headline), max |difference| and cosine of each
    ("error_total", "accuracy.error_total.rel_l2", "float", "kernel output vs the double reference over the full data"),
    ("error_total_max_abs", "accuracy.error_total.max_abs", "float", "the same, max |difference|"),
    ("error_total_cosine", "accuracy.error_total.cosine", "float", "the same, cosine"),
    ("error_compression", "accuracy.error_compression.rel_l2", "float", "double attention over the stored cache vs the full reference"),
    ("error_compression_max_abs", "accuracy.error_compression.max_abs", "float", "the same, max |difference|"),
    ("error_compression_cosine", "accuracy.error_compression.cosine", "float", "the same, cosine"),
    ("error_kernel", "accuracy.error_kernel.rel_l2", "float", "kernel output vs double attention over the same stored cache"),
    ("error_kernel_max_abs", "accuracy.error_kernel.max_abs", "float", "the same, max |difference|"),
    ("error_kernel_cosine", "accuracy.error_kernel.cosine", "float", "the same, cosine"),
    ("entropy", "accuracy.data.attention_entropy", "float", "mean attention entropy of the data (nats)"),
    ("top5_mass", "accuracy.data.top5pct_mass", "float", "mean share of attention mass in the top 5% of tokens"),
    # the inference cycle (--inference); None or NaN for an attention result
    ("cycle_total_ms", "inference_cycle.total_ms", "float", "median time of the whole decode loop"),
    ("cycle_tokens_per_sec", "inference_cycle.tokens_per_sec", "float", "batch x decode_tokens x 1000 / cycle_total_ms"),
    ("cycle_kv_cache_bytes", "inference_cycle.memory.kv_cache_bytes", "float", "KV bytes in use after the last step"),
    ("cycle_peak_bytes", "inference_cycle.memory.peak_device_bytes", "float", "peak bytes allocated for the variant"),
    ("cycle_phases_ms", "inference_cycle.phases_ms", "dict", "projection, append, compress, attention: time per loop"),
    ("cycle_series", "inference_cycle.series", "list", "per decode step: step, context_len, latency_ms, kv_cache_bytes, peak_device_bytes"),
    ("cycle_samples_ms", "inference_cycle.samples_ms", "list", "every kept sample of the decode loop"),
)

NAMES = tuple(column[0] for column in COLUMNS)


def _lookup(result, path):
    value = result
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _variants(result):
    """One result per variant of the inference cycle (--variant=all holds several)."""
    cycle = result.get("inference_cycle")
    if not isinstance(cycle, dict) or "variants" not in cycle:
        return [result]
    return [dict(result, inference_cycle=variant) for variant in cycle["variants"]]


def flatten(results):
    """The rows (dicts in COLUMNS order) of a list of ekv_bench JSON objects."""
    rows = []
    for result in results:
        for one in _variants(result):
            row = {}
            for name, path, kind, _ in COLUMNS:
                value = _lookup(one, path)
                if kind == "float":
                    value = float("nan") if value is None else float(value)
                elif kind == "int" and value is not None:
                    value = int(value)
                row[name] = value
            rows.append(row)
    return rows
