"""make_tutorial.py - writes examples/ekv_tutorial.ipynb, the ekv tutorial notebook.

The notebook is generated so that its source can be reviewed here as plain Python; edit
this file, never the .ipynb, and regenerate. It is written with outputs cleared.

    .venv/bin/python examples/make_tutorial.py            # rewrites examples/ekv_tutorial.ipynb
    .venv/bin/python examples/make_tutorial.py OUT.ipynb  # writes it elsewhere

Run the notebook headless (the tests do, with EKV_TUTORIAL_FAST=1 for a smaller sweep):

    EKV_TUTORIAL_FAST=1 .venv/bin/jupyter execute examples/ekv_tutorial.ipynb
"""
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

CELLS = []


def md(text):
    CELLS.append(new_markdown_cell(text.strip("\n")))


def code(text):
    CELLS.append(new_code_cell(text.strip("\n")))


# ---------------------------------------------------------------------------------------

md(r"""
# ekv tutorial: an elastic KV cache for LLM decode, measured honestly

This notebook builds `ekv_bench`, runs a small sweep of cache compression policies and
storage dtypes, and reads the results: speed, accuracy and memory bandwidth. It runs on a
GPU when one is visible and otherwise on ekv's CPU backend, whose timings are CPU timings
(they show the method and the accuracy, which is the same on both, not GPU speed).

## What the KV cache is

A decoder-only transformer generates one token per step. At every layer the new token's
query `q` (one vector of `head_dim` D per query head, H heads) attends to the keys `K` and
values `V` of all S earlier tokens:

$$\mathrm{out}_h = \sum_{t=1}^{S} \mathrm{softmax}_t\!\left(\frac{q_h \cdot k_t}{\sqrt{D}}\right) v_t .$$

The keys and values of earlier tokens do not change, so instead of recomputing them every
step the engine keeps them: that store is the **KV cache**, per layer of shape
`[batch][kv_heads][S][head_dim]` for K and again for V. With grouped-query attention (GQA)
several query heads share one KV head (`kv_heads` divides `heads`).

## Why decode is memory-bound

In one decode step every cached token's K row and V row is read once:
`2 x kv_heads x D x b` bytes per token, with b bytes per element (2 for f16). The work
done with them is a dot product and a weighted add per query head: `4 x heads x D` FLOPs
per token. The arithmetic intensity is therefore

$$\frac{4\,H\,D}{2\,H_{kv}\,D\,b} = \frac{2\,(H/H_{kv})}{b}\ \text{FLOP/byte},$$

1 FLOP per byte for f16 without GQA, 4 with groups of 4. A current GPU does tens of
TFLOP/s against a few TB/s of memory bandwidth, so it could do tens of FLOPs per byte it
reads: decode attention waits on memory, and its time is close to
**bytes read / bandwidth**. Reading fewer bytes is the lever. There are two:

* **fewer bits per token**: the storage dtype (`--kv-dtype`): f32, f16, bf16, int8 (one
  scale per token and head), int4 (scale and zero point per group of 32), fp8 e4m3 (one
  scale per head). Scales count as bytes read.
* **fewer tokens**: a compression ratio C (`--compress`) and a policy (`--policy`) that
  chooses which S/C slots stand for the S tokens. Compression produces a real, smaller
  buffer: memory and bytes read both shrink.

## The policies

They apply to the tokens older than a recent window of W exact tokens (`--recent`,
default 0):

* **none**: every token (C must be 1).
* **stride**: keep one token in C (the newest always). Blind to content: cheap, and it
  drops heavy hitters as readily as anything else.
* **pool**: replace each group of C consecutive tokens by their mean K and mean V, and add
  **ln(group size)** to that slot's logit. If the C keys were equal, the merged slot's
  weight `exp(q.k + ln C) = C exp(q.k)` is exactly the attention mass the group had, so
  the softmax denominator stays right; without the bias every merged group would count
  as one token.
* **window** (StreamingLLM): keep the first `--sinks` tokens (default 4: the "attention
  sinks" that many heads put much of their mass on) plus the most recent tokens, S/C in
  all. Whatever lies in between is gone.
* **topk** (H2O / SnapKV style): keep the S/C tokens that received the most attention from
  the last `--observe` queries (default 16), always with the sinks and the recent window.
  Content-aware: it keeps the heavy hitters, if the past queries predict the next one.

## Reading the errors

Every run compares outputs (all batch x heads x head_dim values as one vector `o`) with a
reference `r` three ways:

* **rel_l2** = ‖o − r‖₂ / ‖r‖₂, the headline: about 1e-4 to 1e-3 is f16/bf16 rounding, 1e-1
  means the attention output moved by a tenth of its norm.
* **max_abs** = max |o − r|, the worst element: it catches one broken head that the L2 norm
  would average away.
* **cosine** = ⟨o, r⟩ / (‖o‖ ‖r‖), direction only; it stays near 1 long after rel_l2 grows
  (0.995 is already a large error), so read it as a sanity check, not a score.

against three references:

* **error_compression**: CPU attention in double over the stored (compressed, quantized)
  cache vs the double reference over the full original f32 data. What the cache design
  costs, independent of any kernel.
* **error_kernel**: the kernel's output vs CPU attention in double over the *same* stored
  cache. The kernel's own rounding: it must be tiny, or the run fails.
* **error_total**: the kernel's output vs the full reference: what a user of the cache
  gets. When the kernel is right, error_total ≈ error_compression.
""")

md(r"""
## Set-up

The repository root is `$EKV_ROOT` if set, otherwise the first directory above the
working directory that holds `ekv.h`. Build outputs go to `$BUILD/tutorial` (default
`build/tutorial`) under the root. `EKV_TUTORIAL_FAST=1` runs a smaller sweep (the tests
use it).
""")

code(r"""
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter
import numpy as np
import pandas as pd

FAST = os.environ.get("EKV_TUTORIAL_FAST") == "1"


def find_root():
    if os.environ.get("EKV_ROOT"):
        root = Path(os.environ["EKV_ROOT"]).expanduser().resolve()
        if not (root / "ekv.h").is_file():
            raise FileNotFoundError(f"EKV_ROOT={root} holds no ekv.h")
        return root
    here = Path.cwd().resolve()
    for directory in [here, *here.parents]:
        if (directory / "ekv.h").is_file() and (directory / "bench" / "main.cu").is_file():
            return directory
    raise FileNotFoundError(f"no ekv checkout (ekv.h, bench/main.cu) at or above {here}; "
                            "set EKV_ROOT to the repository root")


ROOT = find_root()
BUILD = ROOT / os.environ.get("BUILD", "build") / "tutorial"
BUILD.mkdir(parents=True, exist_ok=True)
print(f"ekv checkout: {ROOT}\nbuild dir:    {BUILD}\nfast mode:    {FAST}")
""")

md(r"""
## Build `ekv_bench`

With `nvcc` on the path and a GPU that `nvidia-smi -L` lists, the CUDA build
(`nvcc -O3 -o ekv_bench bench/main.cu -lcublas`: cuBLAS, part of the CUDA toolkit, runs
the inference cycle's projections); otherwise the CPU backend, built as C++
(`c++ -O2 -x c++ -o ekv_bench bench/main.cu`). Both are the one-command builds of the
README. The binary is rebuilt only when a source is newer.
""")

code(r"""
def gpu_visible():
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


USE_NVCC = shutil.which("nvcc") is not None and gpu_visible()
MAIN = ROOT / "bench" / "main.cu"
BENCH = BUILD / ("ekv_bench_cuda" if USE_NVCC else "ekv_bench_cpu")
CUDA_BUILD = ["nvcc", "-O3", "-o", "{binary}", "{source}", "-lcublas"]
CPU_BUILD = ["c++", "-O2", "-x", "c++", "-o", "{binary}", "{source}"]
command = [word.format(binary=BENCH, source=MAIN) for word in (CUDA_BUILD if USE_NVCC else CPU_BUILD)]

sources = [MAIN, ROOT / "ekv.h", *ROOT.glob("ekv_cuda.cuh")]
newest = max(path.stat().st_mtime for path in sources)
if BENCH.exists() and BENCH.stat().st_mtime >= newest:
    print(f"up to date: {BENCH}")
else:
    print("$", " ".join(command))
    start = time.time()
    built = subprocess.run(command, capture_output=True, text=True)
    if built.returncode != 0:
        print(built.stdout, built.stderr)
        raise RuntimeError(f"the build failed with exit status {built.returncode}")
    print(f"built in {time.time() - start:.0f} s")
print(subprocess.run([str(BENCH), "--version"], capture_output=True, text=True).stdout.strip())
""")

md(r"""
## A sweep

A comma list on a workload flag sweeps the cartesian product: here sequence lengths x
compression ratios x policies x storage dtypes, one result each. `--paired-baseline`
interleaves every candidate's timing samples with those of the uncompressed cache (C = 1;
in f16 for the int8 candidates, so that a quantized cache is compared with what it
replaces) and reports the ratio of medians with a bootstrap 95% CI. `--policy=none` needs
C = 1, so it is left out of a list that has C > 1; stride, pool, window and topk at C = 1
are all the uncompressed cache.

The sizes are small on the CPU so that the sweep takes well under a minute; with a GPU
they are GPU-sized.
""")

code(r"""
if FAST:
    sweep = dict(seq="128,256", compress="1,2,4", reps=3, warmup=0, inner_loops=1)
elif USE_NVCC:
    sweep = dict(seq="1024,4096,16384,65536", compress="1,2,4,8", reps=50, warmup=5, inner_loops=16)
else:
    sweep = dict(seq="256,512,1024", compress="1,2,4", reps=5, warmup=1, inner_loops=2)

RESULTS = BUILD / "sweep.jsonl"
RESULTS.unlink(missing_ok=True)  # --jsonl appends
arguments = [
    str(BENCH),
    f"--seq={sweep['seq']}",
    f"--compress={sweep['compress']}",
    "--policy=stride,pool,window,topk",
    "--kv-dtype=f16,int8",
    f"--reps={sweep['reps']}",
    f"--warmup={sweep['warmup']}",
    f"--inner_loops={sweep['inner_loops']}",
    "--paired-baseline",
    f"--jsonl={RESULTS}",
    "--label=tutorial",
    "--quiet",
]
print("$", " ".join(arguments))
start = time.time()
run = subprocess.run(arguments, capture_output=True, text=True)
if run.returncode != 0:
    print(run.stderr)
    raise RuntimeError(f"ekv_bench failed with exit status {run.returncode}")
lines = RESULTS.read_text().splitlines()
print(f"{len(lines)} results in {time.time() - start:.1f} s -> {RESULTS}")
print("the first one as ekv_bench prints it without --json:\n")
print(run.stdout.split("\n\n")[0])
""")

md(r"""
## Load the results

Each line is one JSON object; `pandas.json_normalize` flattens the nesting into dotted
column names (`results.speedup_vs_baseline`, `accuracy.error_total.rel_l2`, ...). A few
short names make the plots readable.
""")

code(r"""
records = [json.loads(line) for line in lines if line.strip()]
raw = pd.json_normalize(records)
names = {
    "configuration.seq_len": "seq",
    "configuration.compression": "C",
    "configuration.policy": "policy",
    "configuration.kv_dtype": "dtype",
    "baseline.kv_dtype": "baseline_dtype",
    "results.attention_time_ms": "time_ms",
    "results.speedup_vs_baseline": "speedup",
    "baseline.speedup_ci95.lo": "speedup_lo",
    "baseline.speedup_ci95.hi": "speedup_hi",
    "results.memory_bandwidth_gbs": "bandwidth_gbs",
    "metrics.bytes_total": "bytes",
    "metrics.peak_bw_measured_gbs": "peak_measured_gbs",
    "metrics.peak_bw_theoretical_gbs": "peak_theoretical_gbs",
    "accuracy.error_total.rel_l2": "error_total",
    "accuracy.error_compression.rel_l2": "error_compression",
    "accuracy.error_kernel.rel_l2": "error_kernel",
    "accuracy.data.attention_entropy": "entropy",
    "accuracy.data.top5pct_mass": "top5_mass",
}
df = raw.rename(columns=names)[["backend", "gpu.name", *names.values()]]
df = df.astype({"peak_theoretical_gbs": float, "peak_measured_gbs": float})
print(f"backend: {df.backend.iloc[0]}   device: {df['gpu.name'].iloc[0]}")
print(f"data: attention entropy {df.entropy.mean():.2f} nats, "
      f"top-5% of tokens hold {df.top5_mass.mean():.0%} of the attention mass")
df.drop(columns=["backend", "gpu.name", "entropy", "top5_mass"]).head(8)
""")

md(r"""
## Speed: speedup vs compression ratio

The speedup is median(baseline samples) / median(candidate samples) from the paired,
interleaved timing; the error bars are its bootstrap 95% CI (`baseline.speedup_ci95`). At
the longest sequence of the sweep, one panel per storage dtype. On a GPU the speedup
follows the bytes: close to C for f16, and about 2C for int8 against the f16 baseline,
until launch overhead dominates small caches. On the CPU backend the picture is noisier
and says nothing about a GPU.
""")

code(r"""
def log2_axis(ax, values):
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(values))
    ax.set_xticklabels([str(v) for v in sorted(values)])


longest = df.seq.max()
part = df[df.seq == longest]
dtypes = sorted(part.dtype.unique())
fig, axes = plt.subplots(1, len(dtypes), figsize=(5.5 * len(dtypes), 4), sharey=True, squeeze=False)
for ax, dtype in zip(axes[0], dtypes):
    rows = part[part.dtype == dtype]
    for i, (policy, g) in enumerate(rows.groupby("policy")):
        g = g.sort_values("C")
        shift = 2 ** (0.04 * (i - 1.5))  # side by side, so the bars do not hide each other
        below = np.clip(g.speedup - g.speedup_lo, 0, None)
        above = np.clip(g.speedup_hi - g.speedup, 0, None)
        ax.errorbar(g.C * shift, g.speedup, yerr=[below, above], marker="o", capsize=3, label=policy)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    log2_axis(ax, rows.C.unique())
    # ratios on a log scale; the range follows the medians, so that one wide CI from a
    # handful of samples does not flatten the rest
    ax.set_yscale("log", base=2)
    ax.set_ylim(min(part.speedup.min(), 1.0) / 2, max(part.speedup.max(), 1.0) * 2)
    ax.set_title(f"{dtype} cache vs {rows.baseline_dtype.iloc[0]} at C = 1, seq {longest}")
    ax.set_xlabel("compression ratio C")
axes[0][0].yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
axes[0][0].set_ylabel("speedup (95% CI)")
axes[0][-1].legend(title="policy", loc="upper left", bbox_to_anchor=(1.02, 1))
fig.tight_layout()
plt.show()
""")

md(r"""
## Accuracy: error vs compression ratio

`error_total.rel_l2` on a log scale, one panel per dtype. At C = 1 every policy is the
full cache and the error is the dtype's rounding alone; as C grows, the policy decides.
On the structured data (attention sinks, recency, heavy hitters: the default `--data`)
topk holds up far better than stride and window, which drop tokens without looking at
them; pool, which keeps a trace of every token, tends to fall in between as C grows. The accuracy does not depend on the backend: it is the same
numbers on a GPU.
""")

code(r"""
fig, axes = plt.subplots(1, len(dtypes), figsize=(5.5 * len(dtypes), 4), sharey=True, squeeze=False)
for ax, dtype in zip(axes[0], dtypes):
    rows = part[part.dtype == dtype]
    for policy, g in rows.groupby("policy"):
        g = g.sort_values("C")
        ax.plot(g.C, g.error_total, marker="o", label=policy)
    ax.set_yscale("log")
    log2_axis(ax, rows.C.unique())
    ax.set_title(f"{dtype}, seq {longest}")
    ax.set_xlabel("compression ratio C")
axes[0][0].set_ylabel("error_total.rel_l2")
axes[0][-1].legend(title="policy", loc="upper left", bbox_to_anchor=(1.02, 1))
fig.tight_layout()
plt.show()
""")

md(r"""
The three errors side by side (int8 if it is in the sweep): error_total and
error_compression agree closely, and error_kernel, the kernel's own share, is orders of
magnitude smaller. A large error_kernel would mean a kernel bug, and ekv
would have failed the run instead of reporting it.
""")

code(r"""
shown = "int8" if "int8" in dtypes else dtypes[0]
table = part[part.dtype == shown].pivot_table(
    index=["policy", "C"], values=["error_total", "error_compression", "error_kernel"])
print(f"{shown}, seq {longest}: rel_l2")
print(table[["error_total", "error_compression", "error_kernel"]].to_string(float_format="{:.3e}".format))
""")

md(r"""
## Bandwidth vs sequence length

`results.memory_bandwidth_gbs` = bytes the kernel reads (K, V, scales, pool bias, q, out,
split partials) / median time, 1 GB = 1e9 bytes. The dashed lines are the peaks the run
measured (a device-to-device copy, or `memcpy` on the CPU, counting read + written bytes)
and, when the device reports it, the theoretical one (memory clock x bus width; the CPU
backend leaves it unknown unless `--peak-bw` gives it). Short sequences do not move
enough bytes to hide the launch cost; long ones should approach the measured peak.
""")

code(r"""
rows = df[df.policy == "stride"]
fig, ax = plt.subplots(figsize=(7, 4.2))
for (dtype, c), g in rows.groupby(["dtype", "C"]):
    g = g.sort_values("seq")
    ax.plot(g.seq, g.bandwidth_gbs, marker="o", label=f"{dtype} C={c}")
measured = df.peak_measured_gbs.dropna()
if len(measured):
    ax.axhline(measured.median(), color="black", ls="--", lw=1,
               label=f"measured peak {measured.median():.0f} GB/s")
theoretical = df.peak_theoretical_gbs.dropna()
if len(theoretical):
    ax.axhline(theoretical.median(), color="red", ls=":", lw=1,
               label=f"theoretical peak {theoretical.median():.0f} GB/s")
else:
    print("theoretical peak: unknown on this backend (null in the JSON)")
log2_axis(ax, df.seq.unique())
ax.set_ylim(bottom=0)
ax.set_xlabel("sequence length (tokens)")
ax.set_ylabel("achieved bandwidth (GB/s)")
ax.set_title(f"stride policy, {df.backend.iloc[0]} backend")
ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))  # beside the lines, not over them
fig.tight_layout()
plt.show()
""")

md(r"""
## The same from the command line

`bench/plot.py` draws these figures from a results file, and `bench/compare.py` judges
two result files against each other (per workload: the ratio of medians with a bootstrap
CI, judged against the larger of a threshold and the spread of the runs themselves, so
that the same binary run twice on a busy machine is not reported as a change):

    .venv/bin/python bench/plot.py speedup build/tutorial/sweep.jsonl -o speedup.png
    .venv/bin/python bench/plot.py accuracy build/tutorial/sweep.jsonl -o accuracy.png
    .venv/bin/python bench/plot.py tradeoff build/tutorial/sweep.jsonl -o tradeoff.png
    .venv/bin/python bench/plot.py bandwidth build/tutorial/sweep.jsonl -o bandwidth.png
    .venv/bin/python bench/compare.py before.jsonl after.jsonl

To try your own model's data, save q, k and v of one layer as `.npz` (see
`examples/own_data.c` for a snippet) and pass `--data=layer.npz` to `ekv_bench`.
""")

md(r"""
## The inference cycle: a whole decode loop

One attention pass says little about a decode loop. `--inference` runs `--decode_tokens`
sequential steps over `--layers` layers: per layer, project the new token's hidden
vector to q, k, v (seeded weights), append k and v to the cache, attend, and every N
steps (the compression ratio, or `--compress-every`) compress the tokens older than the
recent window. The variants are those of the nanoGPT benchmark: v0 `nocache` (recompute
every token's k and v each step, the honest O(T^2) baseline, measured), v1 `cache`,
v2 `int8`, v3 `shared` (pairs of layers share one cache), v4 `int8-shared`, and
`elastic` (`--policy`, `--compress`). Inputs are synthetic and there is no MLP, so these
are the attention-side costs of a decode loop, not a model's tokens per second.

Each result's `inference_cycle.series` has one point per step: its latency and the KV
cache size as the context grows.
""")

code(r"""
variants = ["nocache", "cache", "int8", "shared", "int8-shared", "elastic"]
steps = 16 if FAST else 64
cycle = subprocess.run([str(BENCH), "--inference", "--variant=" + ",".join(variants),
                        "--seq=128", f"--decode_tokens={steps}", "--layers=2", "--heads=8",
                        "--kv-heads=2", "--dim=64", "--policy=window", "--compress=4",
                        "--reps=3", "--warmup=1", "--json", "--quiet"],
                       capture_output=True, text=True, check=True)
cycles = [json.loads(line) for line in cycle.stdout.splitlines()]
print(f"{len(cycles)} cycle results")
fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4))
for result in cycles:
    c = result["inference_cycle"]
    series = pd.DataFrame(c["series"])
    ax_t.plot(series["context_len"], series["latency_ms"], marker=".", label=c["variant"])
    ax_m.plot(series["context_len"], series["kv_cache_bytes"] / 2**20, marker=".", label=c["variant"])
# nocache recomputes every token's k and v each step: orders of magnitude slower than
# the cached variants, which a linear axis would squash to zero
ax_t.set_yscale("log")
ax_t.set_xlabel("context length (tokens)"); ax_t.set_ylabel("step latency (ms, median, log)")
ax_m.set_xlabel("context length (tokens)"); ax_m.set_ylabel("KV cache (MiB)")
ax_t.set_title("latency vs T"); ax_m.set_title("memory vs T")
ax_m.legend(loc="upper left", bbox_to_anchor=(1.02, 1))
plt.tight_layout()
plt.show()
summary = pd.DataFrame([{"variant": r["inference_cycle"]["variant"],
                         "tokens/s": r["inference_cycle"]["tokens_per_sec"],
                         "KV bytes": r["inference_cycle"]["memory"]["kv_cache_bytes"]}
                        for r in cycles])
summary
""")

def main():
    # an explicit target lets the tests check that the committed notebook is up to date
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "ekv_tutorial.ipynb"
    notebook = new_notebook(cells=CELLS)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                       "language": "python"}
    notebook.metadata["language_info"] = {"name": "python"}
    # stable cell ids, so that regenerating an unchanged notebook changes nothing
    for index, cell in enumerate(notebook.cells):
        cell["id"] = f"cell-{index:02d}"
    nbformat.validate(notebook)
    nbformat.write(notebook, str(target))
    print(f"wrote {target} ({len(CELLS)} cells)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
