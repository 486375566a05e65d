#!/usr/bin/env python3
"""gpu_plan.py - the problems bench/gpu_check.sh measures, and the runner that measures
them one ekv_bench process at a time within a time budget.

Run:  python3 bench/gpu_plan.py list SWEEP --mode MODE [--backend B]   (the plan, with estimates)
      python3 bench/gpu_plan.py args CASE --mode MODE                  (one case's flags, one line)
      python3 bench/gpu_plan.py run SWEEP --mode MODE --bench BIN --backend B
                                      --jsonl FILE --runs FILE --budget SECONDS [--log FILE]

SWEEP: f16 | dtype-policy | cycle.  CASE: ncu-f16 | ncu-int4 | sanitize-attention |
sanitize-cycle.  MODE: full | quick | dry (the CPU emulator, tiny sizes).

Why one process per configuration: ekv_bench writes --jsonl only after every run of a
sweep succeeded, so one failing or hung configuration would lose the whole sweep. Here each
configuration is its own process with its own timeout, and appends its own line.

Why a budget: on the GPU the time goes mostly into ekv_bench's host side (generating the
data, quantizing, the double-precision references), which grows with batch x kv_heads x
seq_len; the full cartesian f16 sweep would need about an hour and more host memory than a
GPU machine has. So configurations run in a fixed priority order (cheapest first for the
f16 sweep; every dtype, then every policy, for the dtype x policy sweep), each only when
its predicted time fits what is left of the budget; the prediction is recalibrated from
the runs already done. Nothing is dropped silently: every planned configuration gets a
line in the runs file (ok, failed, timeout, unsupported, skipped or cut, with the reason).

Standard library only (Python >= 3.8).
"""

import argparse
import json
import os
import subprocess
import sys
import time

MODES = ("full", "quick", "dry")
DTYPES = ("f16", "int4", "int8", "fp8", "bf16", "f32")
POLICIES = ("stride", "pool", "window", "topk")
# bytes per stored element, scales included (int8: 4-byte scale per row of D; int4: 4 bytes
# per group of 32), as ekv.h's README gives them
SCALE_BYTES_PER_ROW = {"int8": lambda d: 4, "int4": lambda d: 4 * (d // 32)}
ELEMENT_BYTES = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "int8": 1.0, "fp8": 1.0, "int4": 0.5}

# samples per configuration: reps kept, warmup discarded, launches per sample
MEASURE = {
    "full": {"reps": 100, "warmup": 10, "inner_loops": 32},
    "quick": {"reps": 50, "warmup": 5, "inner_loops": 16},
    "dry": {"reps": 2, "warmup": 0, "inner_loops": 1},
}
CYCLE_MEASURE = {
    "full": {"reps": 5, "warmup": 1},
    "quick": {"reps": 3, "warmup": 1},
    "dry": {"reps": 2, "warmup": 0},
}

# ---------------------------------------------------------------- the problems


def f16_sweep(mode):
    """Decode at several lengths, batches and GQA shapes, f16 cache, no compression."""
    if mode == "dry":
        # each length, batch and GQA shape twice, in four runs instead of eight
        shapes, heads, dim = [(64, 1, 1), (256, 1, 4), (64, 2, 4), (256, 2, 1)], 4, 64
    else:
        shapes, heads, dim = [(s, b, k) for s in (1024, 8192, 32768, 131072)
                              for b in (1, 8, 32) for k in (8, 32)], 32, 128
    configs = [{"seq": s, "batch": b, "heads": heads, "kv-heads": k, "dim": dim,
                "kv-dtype": "f16", "policy": "none", "compress": 1} for s, b, k in shapes]
    for config in configs:
        config.update(MEASURE[mode])
        config["label"] = "gpu-check:f16"
    # first every length at batch 1 on the fewest KV heads, then every batch and KV-head
    # count at the shortest length (so that each value is measured early), then the rest
    # cheapest first: the most configurations fit a budget, and the calibration starts on
    # short runs
    shortest = min(c["seq"] for c in configs)
    fewest = min(c["kv-heads"] for c in configs)
    def first(c):
        along_seq = c["batch"] == 1 and c["kv-heads"] == fewest
        along_rest = c["seq"] == shortest and (c["batch"] == 1 or c["kv-heads"] == fewest)
        return 0 if along_seq or along_rest else 1
    return sorted(configs, key=lambda c: (first(c), host_seconds(c), c["seq"], c["batch"]))


def dtype_policy_sweep(mode):
    """Every storage dtype x policy at S = 32k against the paired C = 1 baseline."""
    if mode == "dry":
        # every dtype and every policy once
        base = {"seq": 64, "batch": 1, "heads": 4, "kv-heads": 1, "dim": 64}
        order = [("f16", "none", 1), ("int4", "stride", 2), ("int8", "pool", 2),
                 ("fp8", "window", 2), ("bf16", "topk", 2), ("f32", "none", 1)]
    else:
        base = {"seq": 32768, "batch": 1, "heads": 32, "kv-heads": 8, "dim": 128}
        first, rest = DTYPES[:2], DTYPES[2:]
        order = ([(d, "none", 1) for d in DTYPES]
                 + [(d, p, 4) for d in first for p in POLICIES]
                 + [(d, p, c) for d in first for c in (2, 8) for p in POLICIES]
                 + [(d, p, 4) for d in rest for p in POLICIES]
                 + [(d, p, c) for d in rest for c in (2, 8) for p in POLICIES])
    configs = []
    for dtype, policy, compression in order:
        config = dict(base)
        config.update({"kv-dtype": dtype, "policy": policy, "compress": compression,
                       "paired-baseline": True, "label": "gpu-check:dtype-policy"})
        config.update(MEASURE[mode])
        configs.append(config)
    return configs


CYCLE_SHAPES = {
    # name: (heads, kv_heads, dim, prompt tokens)
    "gpt2-small": (12, 12, 64, 1024),
    "llama3-8b": (32, 8, 128, 4096),
}


def cycle_sweep(mode):
    """The inference cycle, every variant, at a GPT-2-small and a Llama-3-8B shape."""
    if mode == "dry":
        # two layers: with one, shared and int8-shared are refused (nothing to share)
        shapes = [("llama3-8b", 4, 1, 64, 64)]
        layers, steps = 2, 2
    elif mode == "quick":
        shapes = [("llama3-8b",) + CYCLE_SHAPES["llama3-8b"]]
        layers, steps = 2, 16
    else:
        shapes = [(name,) + shape for name, shape in CYCLE_SHAPES.items()]
        layers, steps = 4, 32
    configs = []
    for name, heads, kv_heads, dim, prompt in shapes:
        config = {"inference": True, "variant": "all", "seq": prompt, "batch": 1,
                  "heads": heads, "kv-heads": kv_heads, "dim": dim, "layers": layers,
                  "decode_tokens": steps, "kv-dtype": "f16", "policy": "topk",
                  "compress": 4, "label": f"gpu-check:cycle:{name}"}
        config.update(CYCLE_MEASURE[mode])
        configs.append(config)
    return configs


SWEEPS = {"f16": f16_sweep, "dtype-policy": dtype_policy_sweep, "cycle": cycle_sweep}


def case(name, mode):
    """Single command lines: Nsight Compute targets and the sanitizers' small cases."""
    once = {"reps": 2, "warmup": 0, "inner_loops": 1}
    if name in ("ncu-f16", "ncu-int4"):
        config = {"seq": 32768, "batch": 1, "heads": 32, "kv-heads": 8, "dim": 128,
                  "kv-dtype": name.split("-")[1], "policy": "none", "compress": 1}
        if mode == "dry":
            config.update({"seq": 128, "heads": 4, "kv-heads": 1, "dim": 64})
        config.update(once)
        return config
    if name == "sanitize-attention":
        # GQA group 4 and MHA, f16 and int4, pool (the logit bias), split with a merge
        config = {"seq": 2048, "batch": 1, "heads": 8, "kv-heads": "2,8", "dim": 128,
                  "kv-dtype": "f16,int4", "policy": "pool", "compress": 2, "hot": True,
                  "no-graphs": True}
        config.update(once)
        return config
    if name == "sanitize-cycle":
        # the elastic device cache: int8 append, topk scoring, selection and compaction
        return {"inference": True, "variant": "elastic", "seq": 512, "batch": 2, "heads": 8,
                "kv-heads": 2, "dim": 64, "layers": 1, "decode_tokens": 8,
                "kv-dtype": "int8", "policy": "topk", "compress": 2, "reps": 2, "warmup": 0}
    raise KeyError(name)


CASES = ("ncu-f16", "ncu-int4", "sanitize-attention", "sanitize-cycle")


def to_args(config):
    """ekv_bench flags for one configuration (True = a bare flag)."""
    args = []
    for key, value in config.items():
        if value is True:
            args.append(f"--{key}")
        elif value is not False and value is not None:
            args.append(f"--{key}={value}")
    return args


def describe(config):
    keys = ("seq", "batch", "heads", "kv-heads", "dim", "kv-dtype", "policy", "compress",
            "layers", "decode_tokens", "variant")
    return " ".join(f"{key}={config[key]}" for key in keys if key in config)


# ---------------------------------------------------------------- time estimates

# Host seconds per (batch x kv_heads x seq_len) row of head_dim 128 and per query-head row,
# and a fixed cost per process (CUDA context, copy-bandwidth measurement). Read off
# ekv_bench --backend=cpu user times on a 2-core Xeon of this project (2026-12); the runner
# replaces them with what it observes.
HOST_S_PER_KV_ROW = 10e-6
HOST_S_PER_Q_ROW = 1.5e-6
DTYPE_HOST_FACTOR = {"f32": 0.8, "f16": 1.0, "bf16": 1.0, "int8": 1.3, "fp8": 1.5, "int4": 2.0}
PROCESS_S = 1.5
BANDWIDTH_BYTES_PER_S = 3.0e12   # below an H100's or H200's copy bandwidth: a safe side
LAUNCH_S = 4e-6
GEMM_FLOPS = 20e12               # fp32 cuBLAS, well under an H100's or H200's peak
CYCLE_S_PER_STEP_LAYER = 3e-4    # a handful of launches and an event wait per layer and step
EMULATOR_S_PER_LAUNCH = 0.2      # read off tiny runs of build/ekv_bench_emu on 2 cores
EMULATOR_S_PER_STEP_LAYER = 0.3


def _first(value):
    """The first element of a comma list flag value, as int when it is one."""
    text = str(value).split(",")[0]
    return int(text) if text.isdigit() else text


def kv_rows(config):
    return _first(config["batch"]) * _first(config.get("kv-heads", config["heads"])) * \
        _first(config["seq"])


def cache_bytes(config, dtype=None, compression=None):
    """K + V as stored (scales included) for one copy of the cache."""
    dtype = dtype or _first(config["kv-dtype"])
    compression = compression or _first(config.get("compress", 1))
    dim = _first(config["dim"])
    rows = kv_rows(config) / compression
    per_row = dim * ELEMENT_BYTES[dtype] + SCALE_BYTES_PER_ROW.get(dtype, lambda d: 0)(dim)
    return 2.0 * rows * per_row


def host_seconds(config):
    """Host work that grows with the problem: generation, quantization, references."""
    dim_factor = _first(config["dim"]) / 128.0
    q_rows = _first(config["batch"]) * _first(config["heads"]) * _first(config["seq"])
    factor = DTYPE_HOST_FACTOR.get(_first(config["kv-dtype"]), 1.0)
    seconds = (HOST_S_PER_KV_ROW * kv_rows(config) * factor + HOST_S_PER_Q_ROW * q_rows) * dim_factor
    if config.get("paired-baseline"):
        seconds *= 1.5
    return seconds


def estimate(config, backend):
    """(fixed seconds, variable seconds) predicted for one ekv_bench process."""
    if config.get("inference"):
        step_layers = config["decode_tokens"] * config["layers"]
        variants = 6 if config.get("variant") == "all" else 1
        cycles = variants * (config["reps"] + config["warmup"]) + 1  # + the reference loop
        if backend == "emulator":
            return PROCESS_S, cycles * step_layers * EMULATOR_S_PER_STEP_LAYER
        hidden = config["heads"] * config["dim"]
        # v0 (nocache) recomputes K and V of every token with a GEMM at every step
        nocache = 2.0 * config["seq"] * hidden * 2 * config["kv-heads"] * config["dim"] / GEMM_FLOPS
        nocache_cycles = (config["reps"] + config["warmup"]) if variants == 6 else 0
        weights = config["layers"] * hidden * (config["heads"] + 2 * config["kv-heads"]) * \
            config["dim"] * 10e-9
        return PROCESS_S, (weights + cycles * step_layers * CYCLE_S_PER_STEP_LAYER
                           + nocache_cycles * step_layers * nocache)
    paired = 2 if config.get("paired-baseline") else 1
    launches = (config["warmup"] + config["reps"]) * config["inner_loops"] * paired + paired
    if backend == "emulator":
        return PROCESS_S * 0.3, launches * EMULATOR_S_PER_LAUNCH
    per_launch = LAUNCH_S + cache_bytes(config) / BANDWIDTH_BYTES_PER_S
    if paired == 2:
        baseline_dtype = _first(config["kv-dtype"])
        if baseline_dtype in ("int8", "int4", "fp8"):
            baseline_dtype = "f16"
        per_launch += LAUNCH_S + cache_bytes(config, baseline_dtype, 1) / BANDWIDTH_BYTES_PER_S
    return PROCESS_S, host_seconds(config) + launches * per_launch / paired


class Calibration:
    """observed = fixed + k x variable, learnt from the runs done so far (also by earlier
    sweeps of the same check, through a small JSON file)."""

    def __init__(self, path=None):
        self.path = path
        self.fixed = None
        self.points = []  # (variable predicted, observed)
        if path and os.path.exists(path):
            try:
                with open(path, encoding="utf-8") as handle:
                    state = json.load(handle)
                self.fixed = state.get("fixed")
                self.points = [tuple(p) for p in state.get("points", [])]
            except (OSError, ValueError):
                pass

    def factor(self):
        big = [(v, o) for v, o in self.points if v >= 1.0]
        if not big:
            return 1.0
        fixed = self.fixed if self.fixed is not None else PROCESS_S
        return max(0.1, sum(max(o - fixed, 0.0) for _, o in big) / sum(v for v, _ in big))

    def predict(self, fixed, variable):
        fixed = self.fixed if self.fixed is not None else fixed
        return fixed + self.factor() * variable

    def observe(self, variable, observed):
        self.points.append((variable, observed))
        if variable < 0.5:
            self.fixed = observed if self.fixed is None else min(self.fixed, observed)
        if self.path:
            try:
                with open(self.path, "w", encoding="utf-8") as handle:
                    json.dump({"fixed": self.fixed, "points": self.points}, handle)
            except OSError:
                pass


# ---------------------------------------------------------------- the runner

SAFETY = 1.15          # a run starts only if 1.15 x its prediction fits the budget left
HANG_FACTOR = 4.0      # a run is a hang past 4 x its prediction (and at least MIN_TIMEOUT)
MIN_TIMEOUT = 60.0


def unsupported(stderr_text):
    """ekv_bench's exit-2 messages that mean 'this device cannot', not 'this is broken'."""
    return "needs sm_89 or newer" in stderr_text


def run_sweep(name, configs, bench, backend, jsonl, runs, budget, log, calibration,
              clock=time.monotonic):
    """Runs CONFIGS in order; returns (counts by status, failed?)."""
    start = clock()
    counts = {}
    failed = False
    for index, config in enumerate(configs):
        args = [bench] + to_args(config) + [f"--backend={backend}", f"--jsonl={jsonl}", "--quiet"]
        fixed, variable = estimate(config, backend)
        predicted = calibration.predict(fixed, variable)
        left = budget - (clock() - start)
        record = {"sweep": name, "index": index, "config": describe(config),
                  "args": args[1:], "predicted_s": round(predicted, 2)}
        if predicted * SAFETY > left:
            record.update(status="skipped", seconds=0.0,
                          reason=f"predicted {predicted:.0f} s > {max(left, 0):.0f} s left of "
                                 f"the {budget:.0f} s budget")
        else:
            hang = max(MIN_TIMEOUT, HANG_FACTOR * predicted)
            timeout = min(hang, left)
            began = clock()
            with open(log, "a", encoding="utf-8") as handle:
                handle.write(f"\n=== [{name} {index}] {' '.join(args)}\n")
                handle.flush()
                try:
                    completed = subprocess.run(args, stdout=subprocess.DEVNULL,
                                               stderr=subprocess.PIPE, timeout=timeout,
                                               check=False)
                    stderr_text = completed.stderr.decode("utf-8", "replace")
                    code = completed.returncode
                except subprocess.TimeoutExpired as expired:
                    stderr_text = (expired.stderr or b"").decode("utf-8", "replace")
                    code = None
                handle.write(stderr_text)
            seconds = clock() - began
            record.update(seconds=round(seconds, 2), exit_code=code)
            if code == 0:
                record["status"] = "ok"
                calibration.observe(variable, seconds)
            elif code is None and timeout < hang:
                record.update(status="cut",
                              reason=f"stopped at the end of the {budget:.0f} s budget "
                                     f"(predicted {predicted:.0f} s)")
            elif code is None:
                record.update(status="timeout",
                              reason=f"no result after {timeout:.0f} s (predicted "
                                     f"{predicted:.0f} s): a hang?")
                failed = True
            elif code == 2 and unsupported(stderr_text):
                record.update(status="unsupported", reason=last_line(stderr_text))
            else:
                record.update(status="failed",
                              reason=f"exit {code}: {last_line(stderr_text)}")
                failed = True
        counts[record["status"]] = counts.get(record["status"], 0) + 1
        with open(runs, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        print(f"[{name} {index + 1}/{len(configs)}] {record['status']:<11} "
              f"{record.get('seconds', 0):7.1f} s  {record['config']}"
              + (f"  ({record['reason']})" if record.get("reason") else ""), flush=True)
    return counts, failed


def last_line(text):
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(no message)"


def note(name, counts, total):
    parts = [f"{counts[s]} {s}" for s in ("ok", "failed", "timeout", "unsupported", "cut",
                                           "skipped") if counts.get(s)]
    return f"NOTE: {name}: {counts.get('ok', 0)} of {total} configurations measured " \
           f"({', '.join(parts) or 'none run'})"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="gpu_plan.py", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="print a sweep's configurations and estimates")
    listing.add_argument("sweep", choices=sorted(SWEEPS))
    listing.add_argument("--mode", choices=MODES, required=True)
    listing.add_argument("--backend", default="cuda")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    one = commands.add_parser("args", help="print one case's ekv_bench flags")
    one.add_argument("case", choices=CASES)
    one.add_argument("--mode", choices=MODES, required=True)
    run = commands.add_parser("run", help="run a sweep within a budget")
    run.add_argument("sweep", choices=sorted(SWEEPS))
    run.add_argument("--mode", choices=MODES, required=True)
    run.add_argument("--bench", required=True)
    run.add_argument("--backend", required=True)
    run.add_argument("--jsonl", required=True)
    run.add_argument("--runs", required=True)
    run.add_argument("--budget", type=float, required=True)
    run.add_argument("--log", default=os.devnull)
    run.add_argument("--calibration", default=None,
                     help="JSON file shared by the sweeps of one check")
    arguments = parser.parse_args(argv)

    if arguments.command == "args":
        print(" ".join(to_args(case(arguments.case, arguments.mode))))
        return 0
    configs = SWEEPS[arguments.sweep](arguments.mode)
    if arguments.command == "list":
        total = 0.0
        for config in configs:
            fixed, variable = estimate(config, arguments.backend)
            total += fixed + variable
            if arguments.json:
                print(json.dumps({"config": config, "args": to_args(config),
                                  "estimate_s": round(fixed + variable, 2)}))
            else:
                print(f"{fixed + variable:8.1f} s  {total:8.1f} s  {describe(config)}")
        return 0
    counts, failed = run_sweep(arguments.sweep, configs, arguments.bench, arguments.backend,
                               arguments.jsonl, arguments.runs, arguments.budget,
                               arguments.log, Calibration(arguments.calibration))
    print(note(arguments.sweep, counts, len(configs)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
