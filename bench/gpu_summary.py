#!/usr/bin/env python3
"""gpu_summary.py - summary.md and the figures of one bench/gpu_check.sh results folder.

Run:  python3 bench/gpu_summary.py write DIR
      python3 bench/gpu_summary.py plots DIR

`write` reads what the check left in DIR (env.json, steps.tsv, runs.jsonl, the ekv_*.jsonl
sweeps, peers.jsonl, ncu/*.csv, sass_model.json, logs/) and writes DIR/summary.md: the
run, every step's status, ekv against the peers, every dtype and policy's speedup with its
CI and error, the inference cycle, Nsight Compute next to the static model's ceiling,
correctness on the device, the kernels' resources, the figures and what was not measured.
Every number comes from those files; a missing input gives a line saying why.

`plots` draws the figures with bench/plot.py, in this interpreter (it must import
matplotlib; else it says so and draws nothing), into DIR/plots/, listing each in
DIR/plots/status.tsv.

Standard library only (Python >= 3.8).
"""

import argparse
import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DTYPE_ORDER = ("f16", "int4", "int8", "fp8", "bf16", "f32")
POLICY_ORDER = ("none", "stride", "pool", "window", "topk")
NCU_CASES = (("f16", "ncu_f16.csv"), ("int4", "ncu_int4.csv"))
STALL = re.compile(r"^smsp__average_warps_issue_stalled_(\w+?)_per_issue_active\.ratio$")


# ---------------------------------------------------------------- reading

def read_jsonl(path):
    """(records, number of unparseable lines); ([], 0) when the file is absent."""
    records, bad = [], 0
    if not os.path.exists(path):
        return records, bad
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError:
                bad += 1
                continue
            if isinstance(value, dict):
                records.append(value)
            else:
                bad += 1
    return records, bad


def read_steps(directory):
    steps = []
    path = os.path.join(directory, "steps.tsv")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                parts = line.rstrip("\n").split("\t")
                if len(parts) >= 4 and parts[0] != "step":
                    steps.append({"step": parts[0], "required": parts[1], "status": parts[2],
                                  "seconds": parts[3], "note": parts[4] if len(parts) > 4 else ""})
    return steps


def get(record, dotted, default=None):
    value = record
    for part in dotted.split("."):
        if not isinstance(value, dict) or value.get(part) is None:
            return default
        value = value[part]
    return value


def number(value):
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value) else None


def fmt(value, digits=4):
    value = number(value)
    if value is None:
        return "-"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1e5 or magnitude < 1e-3:
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}g}"


def pct(fraction):
    fraction = number(fraction)
    return "-" if fraction is None else f"{100.0 * fraction:.1f}%"


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |"
              for row in rows]
    return lines


def problem_key(record):
    c = record.get("configuration") or {}
    return tuple(c.get(k) for k in ("seq_len", "batch", "heads", "kv_heads", "head_dim"))


def problem_text(key):
    return "S={} B={} H={} Hkv={} D={}".format(*key)


def ci_text(ci):
    lo, hi = number(get(ci, "lo")) if ci else None, number(get(ci, "hi")) if ci else None
    return f"[{fmt(lo)}, {fmt(hi)}]" if lo is not None and hi is not None else "-"


# ---------------------------------------------------------------- sections

def section_run(env, steps, mode):
    lines = []
    if mode == "dry":
        lines += ["**Dry run on the CPU execution emulator: the timings below mean nothing.** "
                  "It checks that every step of the script works; GPU-only steps are "
                  "skipped with their reason.", ""]
    facts = [("mode", env.get("mode")), ("device", env.get("gpu_name")),
             ("driver", env.get("driver")), ("compute capability", env.get("compute_cap")),
             ("nvcc", env.get("nvcc")), ("build arch", env.get("arch")),
             ("python (tools)", env.get("python")), ("torch", env.get("torch")),
             ("CPU", env.get("cpu")), ("started (UTC)", env.get("started")),
             ("source", env.get("source"))]
    lines += [f"- {name}: {value}" for name, value in facts if value]
    required_bad = [s for s in steps if s["required"] == "yes" and s["status"] in ("FAIL", "timeout")]
    total = sum(float(s["seconds"]) for s in steps if _is_float(s["seconds"]))
    lines.append(f"- steps: {len(steps)} recorded, {len(required_bad)} required step(s) failed")
    if env.get("elapsed_s"):
        lines.append(f"- wall time of the check: {env['elapsed_s']} s")
    elif total:
        lines.append(f"- time in steps (parallel steps overlap): {total:.0f} s")
    return lines


def _is_float(text):
    try:
        float(text)
        return True
    except (TypeError, ValueError):
        return False


def section_steps(steps):
    if not steps:
        return ["No steps.tsv: the check stopped before its first step."]
    return table(["step", "required", "status", "seconds", "note"],
                 [[s["step"], s["required"], s["status"], s["seconds"], s["note"] or ""]
                  for s in steps])


def section_peers(ekv_rows, peer_rows, steps):
    lines = []
    peer_step = next((s for s in steps if s["step"] == "peers"), None)
    if peer_step and peer_step["status"] != "ok":
        lines.append(f"Peers: {peer_step['status']} - {peer_step['note'] or 'see logs/peers.log'}")
        lines.append("")
    if not ekv_rows:
        return lines + ["No ekv f16 result (see the sweep-f16 step)."]
    by_problem = {}
    for row in ekv_rows:
        by_problem.setdefault(problem_key(row), {"ekv": row, "peers": []})
    for row in peer_rows:
        if problem_key(row) in by_problem:
            by_problem[problem_key(row)]["peers"].append(row)
    lines += ["Median time per launch with the bootstrap 95% CI of the median; GB/s = the "
              "problem's bytes (K and V once, q, out) / median; % copy = that over ekv's "
              "measured device-to-device copy bandwidth; ratio = the row's time / ekv's f16 "
              "time on the same problem (above 1: ekv is faster). error = rel_l2 against "
              "float64 over the same stored K/V.", ""]
    rows = []
    for key in sorted(by_problem, key=lambda k: tuple(x or 0 for x in k)):
        entry = by_problem[key]
        ekv = entry["ekv"]
        copy = number(get(ekv, "metrics.peak_bw_measured_gbs"))
        ekv_ms = number(get(ekv, "results.attention_time_ms"))
        for row in [ekv] + sorted(entry["peers"], key=lambda r: (r.get("backend"),
                                                                 get(r, "configuration.kv_dtype"))):
            ms = number(get(row, "results.attention_time_ms"))
            gbs = number(get(row, "results.memory_bandwidth_gbs"))
            ratio = ms / ekv_ms if ms and ekv_ms else None
            rows.append([problem_text(key), row.get("backend"),
                         get(row, "configuration.kv_dtype", "-"),
                         get(row, "configuration.gqa_mode", "ekv" if row is ekv else "-"),
                         fmt(ms), ci_text(get(row, "statistics.ci95_median")), fmt(gbs),
                         pct(gbs / copy) if gbs and copy else "-",
                         "1" if row is ekv else fmt(ratio, 3),
                         fmt(get(row, "accuracy.error_kernel.rel_l2"), 2)])
    return lines + table(["problem", "backend", "KV", "GQA", "median ms", "CI95 median",
                          "GB/s", "% copy", "ratio", "error"], rows)


def _sort_dtype_policy(row):
    c = row.get("configuration") or {}
    dtype, policy = c.get("kv_dtype"), c.get("policy")
    return (DTYPE_ORDER.index(dtype) if dtype in DTYPE_ORDER else 99,
            POLICY_ORDER.index(policy) if policy in POLICY_ORDER else 99,
            c.get("compression") or 0)


def section_dtype_policy(rows):
    if not rows:
        return ["No result (see the sweep-dtype-policy step)."]
    shape = problem_text(problem_key(rows[0]))
    lines = [f"Problem {shape}, cold, each against its paired C = 1 baseline (ABAB). "
             "speedup = median(baseline) / median(candidate) with the paired bootstrap 95% CI; "
             "error_total = output vs the float64 reference over the original data (what "
             "compression and quantization cost); error_kernel = output vs float64 over the "
             "same stored cache.", ""]
    body = []
    for row in sorted(rows, key=_sort_dtype_policy):
        c = row.get("configuration") or {}
        copy = number(get(row, "metrics.peak_bw_measured_gbs"))
        gbs = number(get(row, "results.memory_bandwidth_gbs"))
        body.append([c.get("kv_dtype"), c.get("policy"), c.get("compression"),
                     fmt(get(row, "results.attention_time_ms")),
                     f"{get(row, 'baseline.kv_dtype', '-')} {fmt(get(row, 'baseline.attention_time_ms'))}",
                     fmt(get(row, "results.speedup_vs_baseline", get(row, "baseline.speedup")), 3),
                     ci_text(get(row, "baseline.speedup_ci95")),
                     fmt(get(row, "accuracy.error_total.rel_l2"), 3),
                     fmt(get(row, "accuracy.error_kernel.rel_l2"), 2),
                     fmt((number(get(row, "memory.kv_cache_bytes")) or 0) / 2 ** 20, 4),
                     pct(gbs / copy) if gbs and copy else "-"])
    return lines + table(["KV", "policy", "C", "median ms", "baseline ms", "speedup",
                          "CI95", "error_total", "error_kernel", "KV MiB", "% copy"], body)


def cycle_variants(rows):
    """[(shape label, variant object)] from --variant=all results (and single ones)."""
    out = []
    for row in rows:
        label = (row.get("label") or "").replace("gpu-check:cycle:", "") or \
            problem_text(problem_key(row))
        cycle = row.get("inference_cycle") or {}
        variants = cycle.get("variants") if isinstance(cycle.get("variants"), list) else [cycle]
        out += [(label, variant, row) for variant in variants if isinstance(variant, dict)]
    return out


def section_cycle(rows):
    if not rows:
        return ["No result (see the sweep-cycle step)."]
    lines = ["Per shape and variant: median time of one whole cycle (decode_tokens steps over "
             "the layers), tokens/s, the phases' share of it, the KV cache at the last step, "
             "and each variant's largest per-layer rel_l2 against `cache` (nocache: the "
             "largest |difference|, and whether bitwise equal).", ""]
    body = []
    for label, variant, row in cycle_variants(rows):
        c = row.get("configuration") or {}
        phases = variant.get("phases_ms") or {}
        errors = [number(e.get("rel_l2")) for e in variant.get("error_vs_cache") or []
                  if isinstance(e, dict)]
        errors = [e for e in errors if e is not None]
        agreement = variant.get("agreement_vs_cache") or {}
        series = variant.get("series") or []
        last_kv = number(series[-1].get("kv_cache_bytes")) if series and \
            isinstance(series[-1], dict) else None
        agree = "-"
        if agreement:
            agree = f"max diff {fmt(agreement.get('max_abs_diff'), 2)}" + \
                (", bitwise" if agreement.get("bitwise_equal") else "")
        body.append([f"{label} (H={c.get('heads')}/{c.get('kv_heads')} D={c.get('head_dim')} "
                     f"S={c.get('seq_len')} L={c.get('layers')} T={c.get('decode_tokens')})",
                     variant.get("variant"), fmt(variant.get("total_ms")),
                     fmt(variant.get("tokens_per_sec")),
                     " / ".join(fmt(phases.get(p), 3) for p in
                                ("projection", "append", "compress", "attention")),
                     fmt(last_kv / 2 ** 20 if last_kv is not None else None),
                     fmt(max(errors), 2) if errors else "-", agree])
    return lines + table(["shape", "variant", "cycle ms", "tokens/s",
                          "projection / append / compress / attention ms", "KV MiB (last step)",
                          "error vs cache", "agreement"], body)


def parse_ncu_csv(path):
    """[{metric: (value text, unit)}] per kernel row of `ncu --csv --page raw`."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        lines = [line for line in handle if line.startswith('"')]
    rows = list(csv.reader(lines))
    if len(rows) < 2:
        return []
    header, units, data = rows[0], None, rows[1:]
    if data and not (data[0][:1] and data[0][0].strip().isdigit()):
        units, data = data[0], data[1:]
    kernels = []
    for row in data:
        kernels.append({name: (value, units[i] if units and i < len(units) else "")
                        for i, (name, value) in enumerate(zip(header, row))})
    return kernels


def ncu_value(kernel, metric):
    if metric not in kernel:
        return None
    text = kernel[metric][0].replace(",", "").strip()
    try:
        return float(text)
    except ValueError:
        return None


def ncu_facts(kernel):
    stalls = sorted(((match.group(1), ncu_value(kernel, name)) for name in kernel
                     for match in [STALL.match(name)] if match), key=lambda s: -(s[1] or 0))
    stalls = [(reason, value) for reason, value in stalls if value]
    read = ncu_value(kernel, "dram__bytes_read.sum")
    unit = kernel.get("dram__bytes_read.sum", ("", ""))[1].lower()
    scale = {"byte": 1, "kbyte": 1e3, "mbyte": 1e6, "gbyte": 1e9}.get(unit, 1)
    duration = ncu_value(kernel, "gpu__time_duration.sum")
    time_unit = kernel.get("gpu__time_duration.sum", ("", ""))[1].lower()
    to_us = {"nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3, "second": 1e6}.get(time_unit, None)
    return {
        "kernel": kernel.get("Kernel Name", ("?", ""))[0],
        "duration_us": duration * to_us if duration is not None and to_us else None,
        "dram_pct": ncu_value(kernel, "dram__throughput.avg.pct_of_peak_sustained_elapsed"),
        "dram_read_bytes": read * scale if read is not None else None,
        "issue_pct": ncu_value(kernel, "sm__inst_issued.avg.pct_of_peak_sustained_active"),
        "issue_active_pct": ncu_value(kernel, "smsp__issue_active.avg.pct_of_peak_sustained_active"),
        "stalls": stalls,
    }


def model_rows(model, dtype, head_dim, kernel_name):
    """The static model's rows for one kernel: by dtype and head_dim; narrowed to the one
    whose name appears in the Nsight kernel name when the model gives names."""
    rows = [r for r in model if isinstance(r, dict) and r.get("dtype") == dtype
            and r.get("head_dim") == head_dim]
    named = [r for r in rows for key in ("kernel", "name", "symbol")
             if isinstance(r.get(key), str) and r[key] and r[key] in (kernel_name or "")]
    return named or rows


def ceiling_for(row, gpu_name):
    ceilings = row.get("ceiling_pct") if isinstance(row.get("ceiling_pct"), dict) else {}
    for key, value in ceilings.items():
        if key.lower() in (gpu_name or "").lower():
            return key, value
    return None, ceilings


def section_ncu(directory, steps, env, f16_rows, dtype_rows):
    lines = []
    model, model_note = [], ""
    model_step = next((s for s in steps if s["step"] == "sass-model"), None)
    model_path = os.path.join(directory, "sass_model.json")
    if os.path.exists(model_path):
        try:
            with open(model_path, encoding="utf-8") as handle:
                model = json.load(handle)
            if not isinstance(model, list):
                model, model_note = [], "sass_model.json is not a JSON list"
        except ValueError as error:
            model_note = f"sass_model.json does not parse: {error}"
    else:
        model_note = "static model not run" + (f": {model_step['note']}" if model_step and
                                               model_step["note"] else "")
    if model_note:
        lines += [f"Static model: {model_note}.", ""]
    body, stall_lines = [], []
    for dtype, name in NCU_CASES:
        step = next((s for s in steps if s["step"] == f"ncu-{dtype}"), None)
        path = os.path.join(directory, "ncu", name)
        kernels = parse_ncu_csv(path) if os.path.exists(path) else []
        ekv_row = _ekv_row_for_ncu(dtype, f16_rows, dtype_rows)
        measured = pct(get(ekv_row, "metrics.efficiency_vs_theoretical")) if ekv_row else "-"
        if not kernels:
            why = f"{step['status']}: {step['note']}" if step else "not run"
            body.append([dtype, "-", "-", "-", "-", "-", "-", measured, "-", why])
            continue
        facts = ncu_facts(kernels[0])
        predicted = "-"
        candidates = model_rows(model, dtype, 128, facts["kernel"])
        if candidates:
            texts = []
            for row in candidates:
                key, value = ceiling_for(row, env.get("gpu_name"))
                shown = fmt(value, 3) + "%" if key else json.dumps(value)
                texts.append(f"{shown}" + (f" (tile {row.get('tile')})" if len(candidates) > 1 else ""))
            predicted = "; ".join(texts)
        elif model:
            predicted = f"no model row for {dtype} D=128"
        body.append([dtype, facts["kernel"][:60], fmt(facts["duration_us"]),
                     fmt(facts["dram_pct"], 3), fmt((facts["dram_read_bytes"] or 0) / 1e6
                                                    if facts["dram_read_bytes"] else None),
                     fmt(facts["issue_pct"], 3), fmt(facts["issue_active_pct"], 3), measured,
                     predicted, f"{len(kernels)} kernel(s) profiled"])
        if facts["stalls"]:
            top = ", ".join(f"{reason} {value:.2f}" for reason, value in facts["stalls"][:6])
            stall_lines.append(f"- {dtype}: warp stalls, cycles per issued instruction: {top}")
        else:
            stall_lines.append(f"- {dtype}: no warp-stall metrics in {name}")
    lines += ["One launch of the attention kernel at S=32768 B=1 H=32 Hkv=8 D=128 (cold: "
              "Nsight flushes caches before it), next to ekv's own bandwidth for the same "
              "configuration (% of theoretical, from the sweeps) and the static model's "
              "predicted ceiling (% of theoretical bandwidth) for that kernel.", ""]
    lines += table(["KV", "kernel", "duration us", "DRAM % of peak", "DRAM MB read",
                    "issue slots busy %", "issue active %", "ekv sweep % of theoretical",
                    "model ceiling", "note"], body)
    return lines + [""] + stall_lines


def _ekv_row_for_ncu(dtype, f16_rows, dtype_rows):
    for row in (f16_rows if dtype == "f16" else []) + dtype_rows:
        c = row.get("configuration") or {}
        if (c.get("kv_dtype"), c.get("policy"), c.get("compression"), c.get("seq_len"),
                c.get("batch"), c.get("heads"), c.get("kv_heads"), c.get("head_dim")) == \
                (dtype, "none", 1, 32768, 1, 32, 8, 128):
            return row
    return None


CLOSING = re.compile(r"^(\d+) passed, (\d+) failed(, (\d+) skipped)?$")
SANITIZER_LINES = re.compile(r"(ERROR SUMMARY: .*|RACECHECK SUMMARY: .*|========= .*[Hh]azard.*)")


def last_match(path, pattern):
    if not os.path.exists(path):
        return None
    found = None
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            match = pattern.search(line.strip())
            if match:
                found = match.group(0)
    return found


def section_correctness(directory, steps):
    body = []
    for step in steps:
        name = step["step"]
        if not (name.startswith(("test_", "memcheck-", "racecheck-"))):
            continue
        log = os.path.join(directory, "logs", f"{name}.log")
        pattern = CLOSING if name.startswith("test_") else SANITIZER_LINES
        detail = last_match(log, pattern) or "-"
        body.append([name, step["status"], step["seconds"], detail, step["note"] or ""])
    if not body:
        return ["No test program or sanitizer step recorded."]
    return table(["step", "status", "seconds", "closing line", "note"], body)


PTXAS_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(\w+)'")
PTXAS_USED = re.compile(r"Used (\d+) registers.*?(?:(\d+) bytes smem)?$")
PTXAS_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def demangle(names):
    tool = shutil.which("c++filt")
    if tool and names:
        try:
            done = subprocess.run([tool], input="\n".join(names), capture_output=True,
                                  text=True, timeout=20, check=True)
            out = done.stdout.splitlines()
            if len(out) == len(names):
                return out
        except (OSError, subprocess.SubprocessError):
            pass
    return names


def section_ptxas(directory):
    path = os.path.join(directory, "logs", "build-ekv_bench.log")
    if not os.path.exists(path):
        return ["No ptxas report (the nvcc build did not run: see the build steps)."]
    entries, current = [], None
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            match = PTXAS_ENTRY.search(line)
            if match:
                current = {"name": match.group(1), "arch": match.group(2)}
                entries.append(current)
                continue
            if current is None:
                continue
            match = PTXAS_SPILL.search(line)
            if match:
                current["stack"], current["spill_st"], current["spill_ld"] = match.groups()
            match = PTXAS_USED.search(line.strip())
            if match and "registers" in line:
                current["registers"] = match.group(1)
                smem = re.search(r"(\d+) bytes smem", line)
                current["smem"] = smem.group(1) if smem else "0"
    if not entries:
        return ["The nvcc build log holds no ptxas -v report."]
    names = demangle([e["name"] for e in entries])
    spilled = [e for e in entries if e.get("spill_st", "0") != "0" or e.get("spill_ld", "0") != "0"]
    lines = [f"{len(entries)} kernels; {len(spilled)} with spills. Full report: "
             "logs/build-ekv_bench.log.", ""]
    rows = [[name[:90], e["arch"], e.get("registers", "?"), e.get("smem", "?"),
             e.get("stack", "?"), e.get("spill_st", "?"), e.get("spill_ld", "?")]
            for name, e in zip(names, entries)]
    return lines + table(["kernel", "arch", "registers", "smem bytes", "stack", "spill stores",
                          "spill loads"], rows)


def section_plots(directory):
    status = os.path.join(directory, "plots", "status.tsv")
    if not os.path.exists(status):
        return ["No figures (the plots step did not run)."]
    lines = []
    with open(status, encoding="utf-8") as handle:
        for line in handle:
            name, state, detail = (line.rstrip("\n").split("\t") + ["", ""])[:3]
            if state == "ok":
                lines += [f"![{name}](plots/{name}.png)", ""]
            else:
                lines.append(f"- {name}: {state} {detail}".rstrip())
    return lines


def section_not_measured(runs):
    missing = [r for r in runs if r.get("status") != "ok"]
    if not runs:
        return ["No runs recorded."]
    if not missing:
        return ["Every planned configuration was measured."]
    body = [[r.get("sweep"), r.get("status"), r.get("config") or
             " ".join(str(r.get(k)) for k in ("peer", "kv_dtype", "problem") if r.get(k)),
             r.get("reason", "")] for r in missing]
    counts = {}
    for r in missing:
        counts[r.get("status")] = counts.get(r.get("status"), 0) + 1
    return [", ".join(f"{n} {s}" for s, n in sorted(counts.items())) +
            f" of {len(runs)} planned runs:", ""] + \
        table(["sweep", "status", "configuration", "reason"], body)


# ---------------------------------------------------------------- commands

def write_summary(directory):
    env = {}
    env_path = os.path.join(directory, "env.json")
    if os.path.exists(env_path):
        with open(env_path, encoding="utf-8") as handle:
            env = json.load(handle)
    mode = env.get("mode", "?")
    steps = read_steps(directory)
    runs, bad_runs = read_jsonl(os.path.join(directory, "runs.jsonl"))
    f16, bad_f16 = read_jsonl(os.path.join(directory, "ekv_f16.jsonl"))
    dtype_policy, bad_dp = read_jsonl(os.path.join(directory, "ekv_dtype_policy.jsonl"))
    cycle, bad_cycle = read_jsonl(os.path.join(directory, "ekv_cycle.jsonl"))
    peers, bad_peers = read_jsonl(os.path.join(directory, "peers.jsonl"))
    title = f"# ekv GPU check: {env.get('gpu_name', 'unknown device')}, {env.get('date', '')}"
    out = [title.rstrip(", "), ""]
    sections = [
        ("Run", section_run(env, steps, mode)),
        ("Steps", section_steps(steps)),
        ("ekv vs peers (f16 decode, cold)", section_peers(f16, peers, steps)),
        ("Every dtype and policy (paired baseline)", section_dtype_policy(dtype_policy)),
        ("Inference cycle", section_cycle(cycle)),
        ("Nsight Compute vs the static model", section_ncu(directory, steps, env, f16,
                                                           dtype_policy)),
        ("Correctness on the device", section_correctness(directory, steps)),
        ("Kernel resources (ptxas -v)", section_ptxas(directory)),
        ("Figures", section_plots(directory)),
        ("Not measured", section_not_measured(runs)),
    ]
    for heading, lines in sections:
        out += [f"## {heading}", ""] + lines + [""]
    bad = {"runs.jsonl": bad_runs, "ekv_f16.jsonl": bad_f16, "ekv_dtype_policy.jsonl": bad_dp,
           "ekv_cycle.jsonl": bad_cycle, "peers.jsonl": bad_peers}
    if any(bad.values()):
        out += ["## Unreadable lines", ""] + [f"- {name}: {count} line(s) did not parse"
                                               for name, count in bad.items() if count] + [""]
    path = os.path.join(directory, "summary.md")
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        handle.write("\n".join(out))
    os.replace(path + ".tmp", path)
    print(path)
    return 0


def flatten_cycle(rows):
    """One record per variant of every --variant=all result (plot.py cycle draws those)."""
    flat = []
    for label, variant, row in cycle_variants(rows):
        record = dict(row)
        record["inference_cycle"] = variant
        record["variant"] = variant.get("variant")
        record["label"] = label
        flat.append(record)
    return flat


def make_plots(directory):
    """Draws the figures with bench/plot.py in this interpreter (one matplotlib import)."""
    plots = os.path.join(directory, "plots")
    os.makedirs(plots, exist_ok=True)
    status_path = os.path.join(plots, "status.tsv")
    sys.path.insert(0, HERE)
    try:
        import plot  # noqa: PLC0415 - needs matplotlib, which the tools otherwise do not
    except ImportError as error:
        reason = f"bench/plot.py cannot be imported by {sys.executable} ({error})"
        with open(status_path, "w", encoding="utf-8") as handle:
            handle.write(f"all\tskipped\t{reason}\n")
        print(f"SKIP plots: {reason}")
        return 0
    cycle_rows, _ = read_jsonl(os.path.join(directory, "ekv_cycle.jsonl"))
    flat_path = os.path.join(directory, "cycle_variants.jsonl")
    with open(flat_path, "w", encoding="utf-8") as handle:
        for record in flatten_cycle(cycle_rows):
            handle.write(json.dumps(record) + "\n")
    f16 = os.path.join(directory, "ekv_f16.jsonl")
    peers = os.path.join(directory, "peers.jsonl")
    dtype_policy = os.path.join(directory, "ekv_dtype_policy.jsonl")
    figures = [("bandwidth", "bandwidth", [f16]),
               ("bandwidth_peers", "bandwidth", [f16, peers]),
               ("speedup", "speedup", [dtype_policy]),
               ("accuracy", "accuracy", [dtype_policy]),
               ("cycle", "cycle", [flat_path])]
    failed = drawn = 0
    with open(status_path, "w", encoding="utf-8") as status:
        for name, kind, files in figures:
            present = [f for f in files if os.path.exists(f) and os.path.getsize(f) > 0]
            if len(present) < len(files):
                missing = ", ".join(os.path.basename(f) for f in files if f not in present)
                status.write(f"{name}\tskipped\tno data in {missing}\n")
                print(f"{name}: skipped (no data in {missing})")
                continue
            code = plot.main([kind] + present + ["-o", os.path.join(plots, name + ".png")])
            if code == 0:
                drawn += 1
                status.write(f"{name}\tok\t\n")
            else:
                failed += 1
                status.write(f"{name}\tfailed\tbench/plot.py {kind} exit {code} "
                             f"(its message is in logs/plots.log)\n")
            print(f"{name}: {'ok' if code == 0 else 'failed'}")
    print(f"NOTE: plots: {drawn} drawn, {len(figures) - drawn - failed} without data, "
          f"{failed} failed")
    return 1 if failed else 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="gpu_summary.py", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    write = commands.add_parser("write", help="write DIR/summary.md")
    write.add_argument("directory")
    plots = commands.add_parser("plots", help="draw DIR/plots/*.png with bench/plot.py")
    plots.add_argument("directory")
    arguments = parser.parse_args(argv)
    if arguments.command == "write":
        return write_summary(arguments.directory)
    return make_plots(arguments.directory)


if __name__ == "__main__":
    sys.exit(main())
