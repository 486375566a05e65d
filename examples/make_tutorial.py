"""make_tutorial.py - writes examples/ekv_tutorial.ipynb, the ekv tutorial notebook.

The notebook is generated so that its source can be reviewed here as plain Python; edit
this file, never the .ipynb, and regenerate. It is written with outputs cleared. It runs
ekv in process through the Python module (`pip install .` from the checkout), with no
subprocess and no build step. Notebook, the writer, is shared with make_own_data.py.

    .venv/bin/python examples/make_tutorial.py            # rewrites examples/ekv_tutorial.ipynb
    .venv/bin/python examples/make_tutorial.py OUT.ipynb  # writes it elsewhere

Run the notebook headless (the tests do, with EKV_TUTORIAL_FAST=1 for a smaller sweep):

    EKV_TUTORIAL_FAST=1 .venv/bin/jupyter execute examples/ekv_tutorial.ipynb
"""
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

class Notebook:
    """Cells in order, written with stable ids and no outputs."""

    def __init__(self):
        self.cells = []

    def md(self, text):
        self.cells.append(new_markdown_cell(text.strip("\n")))

    def code(self, text):
        self.cells.append(new_code_cell(text.strip("\n")))

    def write(self, target):
        notebook = new_notebook(cells=self.cells)
        notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                           "language": "python"}
        notebook.metadata["language_info"] = {"name": "python"}
        # stable cell ids, so that regenerating an unchanged notebook changes nothing
        for index, cell in enumerate(notebook.cells):
            cell["id"] = f"cell-{index:02d}"
        nbformat.validate(notebook)
        nbformat.write(notebook, str(target))
        print(f"wrote {target} ({len(self.cells)} cells)")


TUTORIAL = Notebook()
md = TUTORIAL.md
code = TUTORIAL.code


# ---------------------------------------------------------------------------------------

md(r"""
# ekv tutorial: an elastic KV cache for LLM decode, measured honestly

This notebook runs ekv in process through its Python module (`import ekv`: the same code
as `ekv_bench`, called through ekv's C ABI), sweeps cache compression policies and
storage dtypes, reads the results (speed, accuracy, memory bandwidth), and looks inside
one stored cache. It runs on a GPU when ekv was built with CUDA and one is visible, and
otherwise on ekv's CPU backend, whose timings are CPU timings (they show the method and
the accuracy, which is the same on both, not GPU speed). Install the module first, from
the repository: `pip install .` (it builds ekv's library from the headers).

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

`EKV_TUTORIAL_FAST=1` runs a smaller sweep (the tests use it). The results are also
written as JSON lines under `$BUILD/tutorial` (default `build/tutorial`) of the checkout
when the notebook runs inside one, for the command-line tools at the end.
""")

code(r"""
import os
import time
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter
import numpy as np
import pandas as pd

import ekv

FAST = os.environ.get("EKV_TUTORIAL_FAST") == "1"
GPU = ekv.gpu_available()
here = Path.cwd().resolve()
root = next((d for d in [here, *here.parents] if (d / "ekv.h").is_file()), here)
OUT = root / os.environ.get("BUILD", "build") / "tutorial"
OUT.mkdir(parents=True, exist_ok=True)
info = ekv.build_info()
print(f"ekv {ekv.__version__} (C ABI {ekv.ABI_VERSION}): {info['library']}")
print(f"built with CUDA: {info['cuda']}   GPU: {ekv.gpu_name() if GPU else 'none, the CPU backend runs'}")
print(f"fast mode: {FAST}   results: {OUT}")
""")

md(r"""
## A sweep

`ekv.bench` takes `ekv_bench`'s flags as keywords (`kv_dtype="int8"` is
`--kv-dtype=int8`; `ekv.bench_help()` lists them) and a list sweeps a flag: here sequence
lengths x compression ratios x policies x storage dtypes, one result each, with a
progress bar when tqdm is installed. `paired_baseline=True` interleaves every
candidate's timing samples with those of the uncompressed cache (C = 1; in f16 for the
int8 candidates, so that a quantized cache is compared with what it replaces) and
reports the ratio of medians with a bootstrap 95% CI. Policy `none` needs C = 1, so it is
left out of a list that has C > 1; stride, pool, window and topk at C = 1 are all the
uncompressed cache.

The sizes are small on the CPU so that the sweep takes well under a minute; with a GPU
they are GPU-sized.
""")

code(r"""
if FAST:
    sweep = dict(seq=[128, 256], compress=[1, 2, 4], reps=3, warmup=0, inner_loops=1)
elif GPU:
    sweep = dict(seq=[1024, 4096, 16384, 65536], compress=[1, 2, 4, 8], reps=50, warmup=5, inner_loops=16)
else:
    sweep = dict(seq=[256, 512, 1024], compress=[1, 2, 4], reps=5, warmup=1, inner_loops=2)

RESULTS = OUT / "sweep.jsonl"
RESULTS.unlink(missing_ok=True)  # jsonl= appends
start = time.time()
df = ekv.bench(policy=["stride", "pool", "window", "topk"], kv_dtype=["f16", "int8"],
               paired_baseline=True, label="tutorial", jsonl=RESULTS, **sweep)
print(f"{len(df)} results in {time.time() - start:.1f} s (also in {RESULTS})")
""")

md(r"""
## The results

One row per result, with short column names that are the same in every ekv release
(`ekv.columns()` lists each with the JSON key it comes from): the workload columns are
named as the keywords that set them (`seq`, `compress`, `kv_dtype`, `policy`), then the
median time and its CI, bytes and bandwidth, the paired speedup, and the three errors.
The raw timing samples are kept too (`samples_ms`). `ekv.bench(..., raw=True)` returns the
JSON objects themselves.
""")

code(r"""
print(f"backend: {df.backend.iloc[0]}   device: {df.device.iloc[0]}")
print(f"data: attention entropy {df.entropy.mean():.2f} nats, "
      f"top-5% of tokens hold {df.top5_mass.mean():.0%} of the attention mass")
shown = ["seq", "compress", "policy", "kv_dtype", "time_ms", "speedup", "speedup_lo", "speedup_hi",
         "bandwidth_gbs", "error_total", "error_compression", "error_kernel"]
df[shown].head(8)
""")

md(r"""
## Speed: speedup vs compression ratio

The speedup is median(baseline samples) / median(candidate samples) from the paired,
interleaved timing; the error bars are its bootstrap 95% CI (`speedup_lo`, `speedup_hi`). At
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
dtypes = sorted(part.kv_dtype.unique())
fig, axes = plt.subplots(1, len(dtypes), figsize=(5.5 * len(dtypes), 4), sharey=True, squeeze=False)
for ax, dtype in zip(axes[0], dtypes):
    rows = part[part.kv_dtype == dtype]
    for i, (policy, g) in enumerate(rows.groupby("policy")):
        g = g.sort_values("compress")
        shift = 2 ** (0.04 * (i - 1.5))  # side by side, so the bars do not hide each other
        below = np.clip(g.speedup - g.speedup_lo, 0, None)
        above = np.clip(g.speedup_hi - g.speedup, 0, None)
        ax.errorbar(g.compress * shift, g.speedup, yerr=[below, above], marker="o", capsize=3, label=policy)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    log2_axis(ax, rows.compress.unique())
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

`error_total` (its relative L2) on a log scale, one panel per dtype. At C = 1 every policy is the
full cache and the error is the dtype's rounding alone; as C grows, the policy decides.
On the structured data (attention sinks, recency, heavy hitters: the default `--data`)
topk holds up far better than stride and window, which drop tokens without looking at
them; pool, which keeps a trace of every token, tends to fall in between as C grows. The accuracy does not depend on the backend: it is the same
numbers on a GPU.
""")

code(r"""
fig, axes = plt.subplots(1, len(dtypes), figsize=(5.5 * len(dtypes), 4), sharey=True, squeeze=False)
for ax, dtype in zip(axes[0], dtypes):
    rows = part[part.kv_dtype == dtype]
    for policy, g in rows.groupby("policy"):
        g = g.sort_values("compress")
        ax.plot(g.compress, g.error_total, marker="o", label=policy)
    ax.set_yscale("log")
    log2_axis(ax, rows.compress.unique())
    ax.set_title(f"{dtype}, seq {longest}")
    ax.set_xlabel("compression ratio C")
axes[0][0].set_ylabel("error_total (rel_l2)")
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
table = part[part.kv_dtype == shown].pivot_table(
    index=["policy", "compress"], values=["error_total", "error_compression", "error_kernel"])
print(f"{shown}, seq {longest}: rel_l2")
print(table[["error_total", "error_compression", "error_kernel"]].to_string(float_format="{:.3e}".format))
""")

md(r"""
## Bandwidth vs sequence length

`bandwidth_gbs` = bytes the kernel reads (K, V, scales, pool bias, q, out,
split partials) / median time, 1 GB = 1e9 bytes. The dashed lines are the peaks the run
measured (a device-to-device copy, or `memcpy` on the CPU, counting read + written bytes)
and, when the device reports it, the theoretical one (memory clock x bus width; the CPU
backend leaves it unknown unless `--peak-bw` gives it). Short sequences do not move
enough bytes to hide the launch cost; long ones should approach the measured peak.
""")

code(r"""
rows = df[df.policy == "stride"]
fig, ax = plt.subplots(figsize=(7, 4.2))
for (dtype, c), g in rows.groupby(["kv_dtype", "compress"]):
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
## Inside a stored cache

The sweep's numbers come from caches that can be opened up. `ekv.generate` makes the
same seeded data `ekv_bench` uses (here one sequence, 2 KV heads for 8 query heads, 512
tokens), `ekv.compress` stores it, and the result says which original tokens each slot
holds (`token_mask()`, `slot_first`, `slot_count`), its dequantized K and V, and its bytes.
Below, for one KV head at C = 8: the attention the decode query actually pays to each
token (from the double reference) and, per policy, the tokens the cache still holds.
topk keeps the heavy hitters wherever they are; window keeps the sinks and the newest
tokens; stride keeps every eighth token blindly; pool keeps a trace of all of them in
merged slots (its error comes from the averaging instead).
""")

code(r"""
data = ekv.generate(seq=512, heads=8, kv_heads=2, seed=1)
head = 0
q, k = data.q[0].astype(np.float64), data.k[0, head].astype(np.float64)
logits = k @ q[:4].T / np.sqrt(k.shape[1])        # the 4 query heads that read KV head 0
weights = np.exp(logits - logits.max(axis=0))
weights = (weights / weights.sum(axis=0)).mean(axis=1)
policies = ["stride", "pool", "window", "topk"]
fig, (ax_w, ax_k) = plt.subplots(2, 1, figsize=(10, 4.5), sharex=True,
                                 gridspec_kw={"height_ratios": [1.2, 1]})
ax_w.plot(weights, lw=0.8, color="black")
ax_w.set_yscale("log")
ax_w.set_ylabel("attention weight")
ax_w.set_title("KV head 0, seq 512: attention per token, and the tokens each policy keeps at C = 8")
for row, policy in enumerate(policies):
    cache = data.compress(kv_dtype="int8", policy=policy, compress=8)
    kept = np.nonzero(cache.token_mask()[0, head])[0]
    ax_k.scatter(kept, np.full(kept.size, row), marker="|", s=60)
    error = data.attention(kv_dtype="int8", policy=policy, compress=8).error_total.rel_l2
    print(f"{policy:7s} {cache.lengths[0]} slots, {cache.bytes['total'] / 1024:.1f} KiB "
          f"(of {cache.bytes['uncompressed'] / 1024:.1f}), error_total {error:.3f}")
ax_k.set_yticks(range(len(policies)), policies)
ax_k.set_ylim(-0.6, len(policies) - 0.4)
ax_k.set_xlabel("token")
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

To try your own model's data, `examples/ekv_own_data.ipynb` takes one layer's q, k and v
(saved with numpy) through every policy and dtype; `ekv.bench(data="layer.npz", ...)`
and `ekv_bench --data=layer.npz` time them.
""")

md(r"""
## The inference cycle: a whole decode loop

One attention pass says little about a decode loop. `inference=True` runs `decode_tokens`
sequential steps over `layers` layers: per layer, project the new token's hidden
vector to q, k, v (seeded weights), append k and v to the cache, attend, and every N
steps (the compression ratio, or `--compress-every`) compress the tokens older than the
recent window. The variants are those of the nanoGPT benchmark: v0 `nocache` (recompute
every token's k and v each step, the honest O(T^2) baseline, measured), v1 `cache`,
v2 `int8`, v3 `shared` (pairs of layers share one cache), v4 `int8-shared`, and
`elastic` (`--policy`, `--compress`). Inputs are synthetic and there is no MLP, so these
are the attention-side costs of a decode loop, not a model's tokens per second.

Each row's `cycle_series` has one point per step: its latency and the KV cache size as
the context grows.
""")

code(r"""
variants = ["nocache", "cache", "int8", "shared", "int8-shared", "elastic"]
steps = 16 if FAST else 64
cycles = ekv.bench(inference=True, variant=variants, seq=128, decode_tokens=steps, layers=2,
                   heads=8, kv_heads=2, dim=64, policy="window", compress=4, reps=3, warmup=1)
print(f"{len(cycles)} cycle results")
fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4))
for _, row in cycles.iterrows():
    series = pd.DataFrame(row.cycle_series)
    ax_t.plot(series["context_len"], series["latency_ms"], marker=".", label=row.variant)
    ax_m.plot(series["context_len"], series["kv_cache_bytes"] / 2**20, marker=".", label=row.variant)
# nocache recomputes every token's k and v each step: orders of magnitude slower than
# the cached variants, which a linear axis would squash to zero
ax_t.set_yscale("log")
ax_t.set_xlabel("context length (tokens)"); ax_t.set_ylabel("step latency (ms, median, log)")
ax_m.set_xlabel("context length (tokens)"); ax_m.set_ylabel("KV cache (MiB)")
ax_t.set_title("latency vs T"); ax_m.set_title("memory vs T")
ax_m.legend(loc="upper left", bbox_to_anchor=(1.02, 1))
plt.tight_layout()
plt.show()
cycles[["variant", "cycle_total_ms", "cycle_tokens_per_sec", "cycle_kv_cache_bytes"]]
""")

def main():
    # an explicit target lets the tests check that the committed notebook is up to date
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "ekv_tutorial.ipynb"
    TUTORIAL.write(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
