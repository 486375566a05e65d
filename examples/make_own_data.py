"""make_own_data.py - writes examples/ekv_own_data.ipynb: your own q, k, v through every
policy and storage dtype of ekv.

Generated like the tutorial (make_tutorial.py holds the writer): edit this file, never the
.ipynb, and regenerate. It runs in process through the Python module (`pip install .`).

    .venv/bin/python examples/make_own_data.py            # rewrites examples/ekv_own_data.ipynb
    .venv/bin/python examples/make_own_data.py OUT.ipynb  # writes it elsewhere

Run it headless on your data (without EKV_OWN_DATA it makes a stand-in from ekv's
structured data; the tests run it that way):

    EKV_OWN_DATA=layer.npz .venv/bin/jupyter execute examples/ekv_own_data.ipynb
"""
import sys
from pathlib import Path

from make_tutorial import Notebook

OWN_DATA = Notebook()
md = OWN_DATA.md
code = OWN_DATA.code

md(r"""
# Your own q, k, v through every policy and dtype

How much does each way of shrinking a KV cache cost on *your* model's attention? This
notebook takes one decode step of one layer (the query q and the cached keys and values
k, v), stores the cache in every dtype ekv has, compresses it with every policy at several
ratios, and measures each against the exact attention in double precision. It runs in
process through `ekv` (`pip install .` from the repository); no GPU is needed.

## Saving q, k, v from a model

In the attention forward of your model (PyTorch here), at one decode step of one layer,
with the cache of the S tokens so far:

```python
import numpy as np
np.savez("layer.npz",
         q=q.float().cpu().numpy(),                    # [B, H, D]: this step's query
         k=k_cache[:, :, :S].float().cpu().numpy(),    # [B, H_kv, S, D]
         v=v_cache[:, :, :S].float().cpu().numpy(),    # [B, H_kv, S, D]
         q_observe=recent_q.float().cpu().numpy())     # [B, H, O, D], optional: the last
                                                       # O steps' queries, for topk
```

`np.savez` (not `savez_compressed`: the `ekv_bench --data=` reader takes stored archives;
this notebook reads any). float32 or float16; bf16 tensors go through `.float()`. GQA and
MQA need nothing special: H_kv divides H. Then run this notebook with
`EKV_OWN_DATA=layer.npz`. Without it, it makes a stand-in from ekv's structured data
(attention sinks, recency, heavy hitters), so that it runs anywhere.
""")

code(r"""
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

import ekv

path = os.environ.get("EKV_OWN_DATA")
if path is None:
    stand_in = ekv.generate(seq=1024, heads=8, kv_heads=2, dim=64, seed=3)
    path = Path(tempfile.mkdtemp(prefix="ekv_own_data_")) / "layer.npz"
    np.savez(path, q=stand_in.q, k=stand_in.k, v=stand_in.v, q_observe=stand_in.q_observe)
    print(f"no EKV_OWN_DATA: a stand-in from ekv.generate, saved as {path}")
arrays = np.load(path)
q, k, v = arrays["q"], arrays["k"], arrays["v"]
q_observe = arrays["q_observe"] if "q_observe" in arrays.files else None
print(f"{path}: q {q.shape} {q.dtype}, k {k.shape}, v {v.shape}, "
      f"q_observe {None if q_observe is None else q_observe.shape}")
""")

md(r"""
## The data

`ekv.Data` copies the arrays in once; every cache below is built from it. Its attention
profile says how concentrated the attention is: the entropy (nats; ln S for uniform
attention) and the share of the attention mass that the top 5% of tokens hold. The more
concentrated, the more a content-aware policy (topk) can drop. Without `q_observe`, topk
scores tokens by the decode query itself (an optimistic stand-in for recent queries).
""")

code(r"""
observe = 16 if q_observe is None else q_observe.shape[2]
data = ekv.Data(q, k, v, q_observe=q_observe, observe=observe)
shape = data.shape
entropy, top5 = data.profile()
print(f"batch {shape['batch']}, {shape['heads']} query heads on {shape['kv_heads']} KV heads, "
      f"{shape['seq_len']} tokens, head_dim {shape['head_dim']}; topk observes {shape['observe']} queries")
print(f"attention entropy {entropy:.2f} nats (uniform: {np.log(shape['seq_len']):.2f}); "
      f"the top 5% of tokens hold {top5:.0%} of the attention mass")
""")

md(r"""
## Every policy, every dtype

For each storage dtype (f32, f16, bf16, int8, int4, fp8) the uncompressed cache (policy
none, C = 1), then each policy (stride, pool, window, topk) at C = 2, 4, 8. Each row is
`ekv.attention`'s three errors (relative L2; `error_compression` is what the cache costs,
`error_kernel` the kernel's own rounding, `error_total` both) and the stored bytes, also as
a fraction of the f16 cache. With a GPU, the kernel is the GPU's.
""")

code(r"""
dtypes = ["f32", "f16", "bf16", "int8", "int4", "fp8"]
policies = ["stride", "pool", "window", "topk"]
ratios = [2, 4, 8]
backend = "cuda" if ekv.gpu_available() else "cpu"
f16_bytes = data.compress(kv_dtype="f16", policy="none", compress=1).bytes["total"]
rows = []
for dtype in dtypes:
    for policy, c in [("none", 1)] + [(p, c) for p in policies for c in ratios]:
        cache = data.compress(kv_dtype=dtype, policy=policy, compress=c)
        result = data.attention(kv_dtype=dtype, policy=policy, compress=c, backend=backend)
        rows.append(dict(kv_dtype=dtype, policy=policy, compress=c,
                         error_total=result.error_total.rel_l2,
                         error_compression=result.error_compression.rel_l2,
                         error_kernel=result.error_kernel.rel_l2,
                         cosine=result.error_total.cosine,
                         bytes=cache.bytes["total"], of_f16=cache.bytes["total"] / f16_bytes))
table = pd.DataFrame(rows)
print(f"{len(table)} configurations on the {backend} kernel")
table.sort_values("error_total").head(12)
""")

md(r"""
## Error against bytes

Each point is one configuration: its bytes as a fraction of the f16 cache (what a decode
step reads, so roughly its time on a GPU) against `error_total`. The line joins the
configurations that no other beats on both (the Pareto front): for a byte budget, the
least error there is.
""")

code(r"""
markers = dict(zip(dtypes, "o^sDvP"))
colors = dict(zip(["none"] + policies, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
fig, ax = plt.subplots(figsize=(8, 5))
for (dtype, policy), g in table.groupby(["kv_dtype", "policy"]):
    ax.scatter(g.of_f16, g.error_total.clip(lower=1e-9), marker=markers[dtype], color=colors[policy],
               s=36, alpha=0.85)
front = table.sort_values(["of_f16", "error_total"])
front = front[front.error_total <= front.error_total.cummin()]
ax.plot(front.of_f16, front.error_total.clip(lower=1e-9), color="black", lw=1, label="Pareto front")
for dtype in dtypes:
    ax.scatter([], [], marker=markers[dtype], color="grey", label=dtype)
for policy in ["none"] + policies:
    ax.scatter([], [], marker="s", color=colors[policy], label=policy)
ax.set_xscale("log", base=2)
ax.set_yscale("log")
ax.set_xlabel("stored bytes / f16 cache")
ax.set_ylabel("error_total (rel_l2)")
ax.set_title("each dtype x policy x C on this data")
ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=8)
fig.tight_layout()
plt.show()
print("the front:")
print(front[["kv_dtype", "policy", "compress", "of_f16", "error_total"]].to_string(index=False))
""")

md(r"""
## What each policy kept

For the first KV head at C = 4 (int8): the attention the decode query pays each token,
and the tokens each policy's cache still holds. A policy that misses the tokens with the
most weight pays for it in error.
""")

code(r"""
head, group = 0, shape["heads"] // shape["kv_heads"]
q64, k64 = data.q[0].astype(np.float64), data.k[0, head].astype(np.float64)
logits = k64 @ q64[:group].T / np.sqrt(shape["head_dim"])
weights = np.exp(logits - logits.max(axis=0))
weights = (weights / weights.sum(axis=0)).mean(axis=1)
fig, (ax_w, ax_k) = plt.subplots(2, 1, figsize=(10, 4.5), sharex=True,
                                 gridspec_kw={"height_ratios": [1.2, 1]})
ax_w.plot(weights, lw=0.8, color="black")
ax_w.set_yscale("log")
ax_w.set_ylabel("attention weight")
for row, policy in enumerate(policies):
    kept = np.nonzero(data.compress(kv_dtype="int8", policy=policy, compress=4).token_mask()[0, head])[0]
    ax_k.scatter(kept, np.full(kept.size, row), marker="|", s=60, color=colors[policy])
    share = weights[kept].sum()
    print(f"{policy:7s} holds {kept.size} tokens carrying {share:.0%} of the attention weight")
ax_k.set_yticks(range(len(policies)), policies)
ax_k.set_ylim(-0.6, len(policies) - 0.4)
ax_k.set_xlabel("token")
fig.tight_layout()
plt.show()
""")

md(r"""
## Next

`ekv.bench(data=str(path), batch=..., heads=..., kv_heads=..., dim=..., seq=...,
kv_dtype=[...], policy=[...], compress=[...], paired_baseline=True)` times the same
configurations on your data (the shape keywords must match the file), and
`ekv_bench --data=layer.npz` does it from the command line. `data.compress(...)` gives
any one cache to study: its `slot_first` / `slot_count`, the dequantized `k` and `v`,
`bytes`, and `stored("k")`, the bytes as the kernels read them.
""")


def main():
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "ekv_own_data.ipynb"
    OWN_DATA.write(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
