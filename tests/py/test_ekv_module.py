#!/usr/bin/env python3
"""test_ekv_module.py - tests of the Python module `ekv` (python/ekv) over ekv's C ABI.

Run:  .venv/bin/python tests/py/test_ekv_module.py     (after .venv/bin/pip install ./)
      EKV_LIBRARY=build/libekv_emu.so .venv/bin/python tests/py/test_ekv_module.py
      (the GPU paths on the CPU execution emulator; `make test` builds that library with
      $(EMU_CXX) -O1 -shared -fPIC -x c++ -o build/libekv_emu.so python/ekv/ekv_library.cu)
What it shows: ekv.bench gives the same results as the ekv_bench command line for the
same flags (timings, and the build's own identity, aside), as JSON objects and as rows
that follow the column table; ekv.attention against a numpy reference written here;
ekv.compress's stored form (which tokens each policy keeps, the dequantized values, the
bytes) against numpy; ekv.generate against ekv_bench --dump-dir; every bad argument
raising ValueError with a message naming it; a GPU asked for without one raising
ekv.DeviceError. The command line is the CPU build (see bench_fixture.py).
Prints one PASS/FAIL/SKIP line per test and a final "N passed, N failed[, N skipped]";
exits 1 on any failure. No pytest.
"""

import contextlib
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import traceback
import types

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_fixture import ROOT, bench_binary  # noqa: E402

try:
    import ekv
except ImportError as error:  # the suite cannot run at all: one failure that says why
    print(f"FAIL import-ekv: {error} (install the module: .venv/bin/pip install ./)")
    print("0 passed, 1 failed")
    sys.exit(1)

WORK = tempfile.mkdtemp(prefix="ekv_test_module_")
# EKV_LIBRARY=<an emulator build of python/ekv/ekv_library.cu>: the GPU paths on the CPU
EMULATOR = ekv.gpu_available() and ekv.bench(raw=True, seq=8, reps=2, warmup=0, inner_loops=1,
                                             heads=2, backend="auto")[0]["backend"] == "emulator"
BENCH = bench_binary(WORK)


class Skip(Exception):
    """A test that cannot run here (e.g. needs a GPU)."""


# ---- the command line and the module, side by side ------------------------------------

def cli(*flags):
    done = subprocess.run([BENCH, *flags, "--json", "--quiet"], capture_output=True, text=True,
                          timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"ekv_bench {' '.join(flags)} exited {done.returncode}: {done.stderr}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def as_flags(keywords):
    """The command line of ekv.bench's keywords, written out independently of the module."""
    flags = []
    for name, value in keywords.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif isinstance(value, (list, tuple)):
            flags.append(f"{flag}={','.join(map(str, value))}")
        else:
            flags.append(f"{flag}={value}")
    return flags


# keys that measure time or this build (they differ between any two runs or builds)
TIMING = re.compile(r"(^|_)(ms|time|std|cv|per_sec|speedup|gbs|efficiency|roofline|gflops|"
                    r"statistics|samples|timestamp|coefficient|percent)($|_)")
BUILD_IDENTITY = {"compiler", "optimized", "flags", "git_commit"}


def deterministic(value, path=""):
    """VALUE without the keys that measure time (or name the build)."""
    if isinstance(value, dict):
        return {key: deterministic(item, f"{path}.{key}") for key, item in value.items()
                if not TIMING.search(key) and not (path == ".build" and key in BUILD_IDENTITY)}
    if isinstance(value, list):
        return [deterministic(item, path) for item in value]
    return value


def same_as_cli(keywords):
    """Runs KEYWORDS both ways and checks the results agree; returns the module's."""
    mine = ekv.bench(raw=True, **keywords)
    theirs = cli(*as_flags(keywords))
    assert len(mine) == len(theirs), f"{len(mine)} results, the command line gave {len(theirs)}"
    for index, (a, b) in enumerate(zip(mine, theirs)):
        a_kept, b_kept = deterministic(a), deterministic(b)
        if a_kept != b_kept:
            differing = [key for key in set(a_kept) | set(b_kept) if a_kept.get(key) != b_kept.get(key)]
            raise AssertionError(f"result {index} differs from the command line's in {differing}: "
                                 f"{ {k: a_kept.get(k) for k in differing} } vs "
                                 f"{ {k: b_kept.get(k) for k in differing} }")
        assert set(a) == set(b), "the two results have different keys"
    return mine


SMALL = dict(heads=4, reps=3, warmup=0, inner_loops=1, backend="cpu")


def test_bench_equals_the_command_line_one_run():
    result, = same_as_cli(dict(seq=256, **SMALL))
    kept = deterministic(result)
    # the comparison kept what matters: accuracy, bytes, the configuration
    for key in ("accuracy", "memory", "configuration", "metrics", "backend"):
        assert key in kept, key
    assert kept["accuracy"]["error_total"]["rel_l2"] > 0
    assert "samples_ms" not in kept and len(result["samples_ms"]) == 3


def test_bench_equals_the_command_line_sweep():
    results = same_as_cli(dict(seq=128, kv_heads=2, compress=[1, 2, 4],
                               policy=["stride", "pool", "window", "topk"],
                               kv_dtype=["f16", "int8"], paired_baseline=True, **SMALL))
    assert len(results) == 24
    assert {r["configuration"]["policy"] for r in results} == {"stride", "pool", "window", "topk"}
    assert all(r["baseline"] is not None for r in results)


def test_bench_equals_the_command_line_dtypes_and_random_data():
    same_as_cli(dict(seq=96, dim=128, kv_dtype=["f32", "bf16", "int4", "fp8"], data="random",
                     seed=7, recent=8, policy="topk", compress=3, **SMALL))


def test_bench_equals_the_command_line_own_data_file():
    rng = np.random.default_rng(3)
    path = os.path.join(WORK, "own.npz")
    np.savez(path, q=rng.standard_normal((2, 4, 64), dtype=np.float32),
             k=rng.standard_normal((2, 2, 80, 64), dtype=np.float32),
             v=rng.standard_normal((2, 2, 80, 64), dtype=np.float32))
    same_as_cli(dict(data=path, batch=2, seq=80, kv_heads=2, policy="window", compress=2, **SMALL))


def test_bench_equals_the_command_line_inference_cycle():
    results = same_as_cli(dict(inference=True, variant=["nocache", "elastic"], seq=64,
                               decode_tokens=4, kv_heads=2, policy="window", compress=4, **SMALL))
    assert all(r["inference_cycle"]["variant"] in ("nocache", "elastic") for r in results)


# ---- rows and columns ------------------------------------------------------------------

def lookup(result, path):
    for key in path.split("."):
        if not isinstance(result, dict) or key not in result:
            return None
        result = result[key]
    return result


COLUMN_TABLE = [(c["column"], c["json"], c["kind"]) for c in ekv.columns(frame=False)]


def check_row(row, result):
    for name, path, kind in COLUMN_TABLE:
        want = lookup(result, path)
        got = row[name]
        if kind == "float" and want is None:
            assert isinstance(got, float) and math.isnan(got), f"{name}: {got!r}, expected NaN"
        else:
            assert got == want, f"{name}: {got!r}, the JSON's {path} is {want!r}"


def test_rows_follow_the_column_table():
    path = os.path.join(WORK, "rows.jsonl")
    rows = ekv.bench(frame=False, jsonl=path, seq=128, compress=[1, 2], paired_baseline=True, **SMALL)
    results = [json.loads(line) for line in open(path, encoding="utf-8")]  # the same run's
    names = [name for name, _, _ in COLUMN_TABLE]
    assert len(names) == len(set(names)), "a column name twice"
    assert len(rows) == 2 and all(list(row) == names for row in rows)
    for row, result in zip(rows, results):
        check_row(row, result)
    # every attention column has a value in a paired run (cycle columns are empty)
    for name, path, _ in COLUMN_TABLE:
        if not path.startswith("inference_cycle") and name not in ("notice", "peak_theoretical_gbs"):
            assert lookup(results[1], path) is not None, f"{name}: {path} is not in a result"
    assert rows[1]["compress"] == 2 and rows[1]["seq"] == 128 and rows[1]["kv_dtype"] == "f16"
    assert len(rows[0]["samples_ms"]) == 3 and rows[0]["variant"] is None


def test_cycle_rows_and_variant_all_split():
    path = os.path.join(WORK, "cycle.jsonl")
    rows = ekv.bench(frame=False, jsonl=path, inference=True, variant="all", layers=2, seq=64,
                     decode_tokens=3, kv_heads=2, **SMALL)
    results = [json.loads(line) for line in open(path, encoding="utf-8")]
    variants = [v["variant"] for v in results[0]["inference_cycle"]["variants"]]
    assert len(results) == 1 and len(variants) == 6
    assert [row["variant"] for row in rows] == variants
    for row, variant in zip(rows, results[0]["inference_cycle"]["variants"]):
        check_row(row, dict(results[0], inference_cycle=variant))
        assert row["cycle_total_ms"] > 0 and len(row["cycle_series"]) == 3


def test_dataframe_when_pandas_else_list():
    import pandas
    frame = ekv.bench(seq=64, **SMALL)
    assert isinstance(frame, pandas.DataFrame)
    assert list(frame.columns) == [name for name, _, _ in COLUMN_TABLE]
    assert len(frame) == 1 and frame["backend"][0] == "cpu"
    saved = sys.modules.get("pandas")
    sys.modules["pandas"] = None  # import pandas now raises ImportError
    try:
        rows = ekv.bench(seq=64, **SMALL)
        assert isinstance(rows, list) and isinstance(rows[0], dict)
        assert isinstance(ekv.columns(), list)
    finally:
        sys.modules["pandas"] = saved


def test_progress_bar_through_tqdm_else_lines():
    calls = []

    class FakeBar:
        def __init__(self, total, unit):
            calls.append(("total", total))

        def set_description(self, text):
            calls.append(("describe", text))

        def update(self, n):
            calls.append(("update", n))

        def close(self):
            calls.append(("close",))

    saved = {name: sys.modules.get(name) for name in ("tqdm", "tqdm.auto")}
    sys.modules["tqdm"] = types.ModuleType("tqdm")
    sys.modules["tqdm.auto"] = types.ModuleType("tqdm.auto")
    sys.modules["tqdm.auto"].tqdm = FakeBar
    try:
        ekv.bench(seq=64, compress=[1, 2], **SMALL)
        ekv.bench(seq=64, progress=False, compress=[1, 2], **SMALL)
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    assert calls == [("total", 2), ("describe", "seq=64 f16 stride C=1"), ("update", 1),
                     ("describe", "seq=64 f16 stride C=2"), ("update", 1), ("close",)], calls
    sys.modules["tqdm.auto"] = None  # no tqdm: progress=True prints a line per run
    try:
        text = io.StringIO()
        with contextlib.redirect_stderr(text):
            ekv.bench(seq=64, progress=True, compress=[1, 2], **SMALL)
    finally:
        sys.modules.pop("tqdm.auto", None)
        if saved["tqdm.auto"] is not None:
            sys.modules["tqdm.auto"] = saved["tqdm.auto"]
    assert text.getvalue().splitlines() == ["[1/2] seq=64 f16 stride C=1",
                                            "[2/2] seq=64 f16 stride C=2"], text.getvalue()


def test_jsonl_appends_what_raw_returns():
    path = os.path.join(WORK, "results.jsonl")
    first = ekv.bench(raw=True, jsonl=path, seq=64, **SMALL)
    second = ekv.bench(raw=True, jsonl=path, seq=64, compress=[1, 2], **SMALL)
    lines = [json.loads(line) for line in open(path, encoding="utf-8")]
    assert lines == first + second


def test_help_and_defaults():
    text = ekv.bench_help()
    assert "--kv-dtype" in text and "--paired-baseline" in text
    cache = ekv.compress(*random_qkv(1, 4, 2, 64, 64))
    # ekv_bench's defaults, read from its parser: f16, stride, C = 2
    assert (cache.kv_dtype, cache.policy, cache.compress, cache.recent, cache.sinks,
            cache.observe) == ("f16", "stride", 2, 0, 4, 16)


# ---- attention, the stored cache ---------------------------------------------------------

def random_qkv(batch, heads, kv_heads, seq, dim, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((batch, heads, dim)).astype(np.float32),
            rng.standard_normal((batch, kv_heads, seq, dim)).astype(np.float32),
            rng.standard_normal((batch, kv_heads, seq, dim)).astype(np.float32))


def numpy_attention(q, k, v, lengths=None, bias=None, scale=None):
    """Decode attention in float64: q [B,H,D], k, v [B,Hkv,S,D], optional lengths and bias
    [B,Hkv,S]; query head h reads kv head h // (H / Hkv)."""
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    batch, heads, dim = q.shape
    group = heads // k.shape[1]
    scale = 1.0 / math.sqrt(dim) if scale is None else scale
    out = np.zeros_like(q)
    for b in range(batch):
        n = k.shape[2] if lengths is None else int(lengths[b])
        for h in range(heads):
            g = h // group
            logits = scale * k[b, g, :n] @ q[b, h]
            if bias is not None:
                logits = logits + bias[b, g, :n]
            p = np.exp(logits - logits.max())
            out[b, h] = (p / p.sum()) @ v[b, g, :n]
    return out


def rel_l2(x, reference):
    return float(np.linalg.norm(np.asarray(x, dtype=np.float64) - reference) / np.linalg.norm(reference))


def test_attention_against_numpy():
    q, k, v = random_qkv(2, 8, 2, 200, 64)
    result = ekv.attention(q, k, v, kv_dtype="f32", policy="none", compress=1)
    out, total, compression, kernel, backend = result
    reference = numpy_attention(q, k, v)
    assert backend == "cpu" and out.shape == q.shape and out.dtype == np.float32
    assert rel_l2(out, reference) < 1e-5, rel_l2(out, reference)
    assert abs(total.rel_l2 - rel_l2(out, reference)) < 1e-7
    assert compression.rel_l2 < 1e-12 and kernel.rel_l2 < 1e-5 and total.cosine > 0.99999
    # float16 arrays are the same values
    half = [x.astype(np.float16) for x in (q, k, v)]
    from_half = ekv.attention(*half, kv_dtype="f32", policy="none", compress=1).out
    from_single = ekv.attention(*[x.astype(np.float32) for x in half], kv_dtype="f32",
                                policy="none", compress=1).out
    assert np.array_equal(from_half, from_single)
    # ragged lengths and a softmax scale of one's own
    lengths = [150, 37]
    out = ekv.attention(q, k, v, kv_dtype="f32", policy="none", compress=1, lengths=lengths,
                        softmax_scale=0.2).out
    assert rel_l2(out, numpy_attention(q, k, v, lengths, scale=0.2)) < 1e-5


def test_attention_errors_are_the_benchmarks():
    """ekv.generate + ekv.attention give what ekv_bench reports for the same flags."""
    flags = dict(seq=256, heads=4, kv_heads=2, dim=64, seed=11, kv_dtype="int8", policy="topk",
                 compress=4, recent=16)
    result, = ekv.bench(raw=True, backend="cpu", reps=2, warmup=0, inner_loops=1, **flags)
    data = ekv.generate(seq=256, heads=4, kv_heads=2, dim=64, seed=11)
    mine = data.attention(kv_dtype="int8", policy="topk", compress=4, recent=16)
    accuracy = result["accuracy"]
    for name, errors in (("error_total", mine.error_total), ("error_compression", mine.error_compression),
                         ("error_kernel", mine.error_kernel)):
        assert errors._asdict() == accuracy[name], (name, errors, accuracy[name])
    cache = data.compress(kv_dtype="int8", policy="topk", compress=4, recent=16)
    assert cache.bytes["total"] == result["memory"]["kv_cache_bytes"]
    assert cache.bytes["uncompressed"] == result["memory"]["kv_cache_bytes_uncompressed"]
    assert cache.lengths.sum() == result["metrics"]["kept_tokens"]
    entropy, mass = data.profile()
    assert (entropy, mass) == (accuracy["data"]["attention_entropy"], accuracy["data"]["top5pct_mass"])


def test_generate_is_the_benchmarks_data():
    directory = os.path.join(WORK, "dump")
    os.makedirs(directory)
    subprocess.run([BENCH, "--seq=100", "--heads=4", "--kv-heads=2", "--seed=5", "--reps=2",
                    "--warmup=0", "--inner_loops=1", "--quiet", f"--dump-dir={directory}"],
                   check=True, capture_output=True, timeout=300)
    data = ekv.generate(seq=100, heads=4, kv_heads=2, seed=5)
    for name in ("q", "k", "v"):
        assert np.array_equal(getattr(data, name), np.load(os.path.join(directory, f"{name}.npy"))), name
    assert np.array_equal(data.reference(), np.load(os.path.join(directory, "ref.npy")))
    assert data.shape == dict(batch=1, heads=4, kv_heads=2, seq_len=100, head_dim=64, observe=16)


def kept_budget(seq, compress, recent):
    recent = min(recent, seq)
    return -(-(seq - recent) // compress) + recent


def test_stride_keeps_one_in_c_newest_included():
    q, k, v = random_qkv(1, 4, 2, 50, 64, seed=1)
    cache = ekv.compress(q, k, v, kv_dtype="f32", policy="stride", compress=4, recent=6)
    first, count = cache.slot_first, cache.slot_count
    assert cache.lengths.tolist() == [kept_budget(50, 4, 6)]
    old = first[0, 0][:kept_budget(50, 4, 6) - 6]
    assert (43 - old) .tolist() == sorted((43 - old).tolist(), reverse=True) and old[-1] == 43
    assert all((43 - t) % 4 == 0 for t in old)
    assert first[0, 0, -6:].tolist() == list(range(44, 50)) and (count[count > 0] == 1).all()
    # f32 stores the rows exactly: the slots hold k and v of those tokens
    for g in range(2):
        n = cache.lengths[0]
        assert np.array_equal(cache.k[0, g, :n], k[0, g, first[0, g, :n]])
        assert np.array_equal(cache.v[0, g, :n], v[0, g, first[0, g, :n]])
    assert cache.bias is None
    reference = numpy_attention(q, cache.k, cache.v, cache.lengths)
    assert rel_l2(cache.reference(), reference) < 1e-12


def test_pool_means_and_log_bias():
    q, k, v = random_qkv(1, 2, 1, 30, 64, seed=2)
    cache = ekv.compress(q, k, v, kv_dtype="f32", policy="pool", compress=4)
    first, count = cache.slot_first[0, 0], cache.slot_count[0, 0]
    assert count.tolist() == [4] * 7 + [2] and first.tolist() == list(range(0, 30, 4))
    for s in range(8):
        group = k[0, 0, first[s]:first[s] + count[s]].astype(np.float64)
        assert np.array_equal(cache.k[0, 0, s], group.mean(axis=0).astype(np.float32))
    assert np.allclose(cache.bias[0, 0], np.log(count), atol=1e-7)
    assert cache.token_mask().all()
    reference = numpy_attention(q, cache.k, cache.v, cache.lengths, bias=cache.bias)
    assert rel_l2(cache.reference(), reference) < 1e-12


def test_window_keeps_sinks_and_the_newest():
    q, k, v = random_qkv(1, 2, 1, 40, 64, seed=3)
    cache = ekv.compress(q, k, v, kv_dtype="f32", policy="window", compress=4, sinks=3)
    assert cache.slot_first[0, 0].tolist() == [0, 1, 2] + list(range(33, 40))
    mask = cache.token_mask()[0, 0]
    assert mask.sum() == 10 and mask[:3].all() and mask[-7:].all()


def test_topk_keeps_the_most_attended():
    q, k, v = random_qkv(1, 4, 2, 64, 32, seed=4)
    q_observe = np.random.default_rng(5).standard_normal((1, 4, 8, 32)).astype(np.float32)
    cache = ekv.compress(q, k, v, q_observe=q_observe, observe=8, kv_dtype="f32", policy="topk",
                         compress=4, sinks=2)
    scale = 1.0 / math.sqrt(32)
    for g in range(2):
        scores = np.zeros(64)
        for h in (2 * g, 2 * g + 1):
            for o in range(8):
                logits = scale * k[0, g].astype(np.float64) @ q_observe[0, h, o].astype(np.float64)
                p = np.exp(logits - logits.max())
                scores += p / p.sum()
        others = np.argsort(-scores[2:], kind="stable")[:16 - 2] + 2
        assert cache.slot_first[0, g].tolist() == [0, 1] + sorted(others.tolist()), g


def test_quantized_values_within_their_rounding():
    q, k, v = random_qkv(1, 2, 2, 16, 64, seed=6)
    for dtype, bound in (("f16", lambda x: np.abs(x) * 2.0**-11 + 2.0**-24),
                         ("bf16", lambda x: np.abs(x) * 2.0**-8),
                         ("int8", lambda x: np.abs(x).max(axis=-1, keepdims=True) / 127 / 2 * 1.0001),
                         ("fp8", lambda x: np.abs(x) * 2.0**-4 + np.abs(x).max() / 448 * 2.0**-9)):
        cache = ekv.compress(q, k, v, kv_dtype=dtype, policy="none", compress=1)
        for stored, original in ((cache.k, k), (cache.v, v)):
            error = np.abs(stored.astype(np.float64) - original)
            assert (error <= bound(original.astype(np.float64))).all(), (dtype, error.max())
    cache = ekv.compress(q, k, v, kv_dtype="int4", policy="none", compress=1)
    groups = k.reshape(1, 2, 16, 2, 32).astype(np.float64)
    step = (groups.max(axis=-1) - groups.min(axis=-1)) / 15
    error = np.abs(cache.k.reshape(groups.shape) - groups)
    assert (error <= step[..., None] * 0.5 * 1.01 + 1e-3 * np.abs(groups)).all(), error.max()


def test_stored_bytes():
    q, k, v = random_qkv(2, 4, 2, 64, 64, seed=7)
    for dtype, row, scales in (("f32", 256, 0), ("f16", 128, 0), ("int8", 64, 2 * 2 * 16 * 4),
                               ("int4", 32, 2 * 2 * 16 * 4 * 2), ("fp8", 64, 2 * 2 * 4)):
        cache = ekv.compress(q, k, v, kv_dtype=dtype, policy="stride", compress=4)
        b = cache.bytes
        assert cache.capacity == 16 and cache.lengths.tolist() == [16, 16]
        assert b["k"] == b["v"] == 2 * 2 * 16 * row, (dtype, b)
        assert b["scales"] == 2 * scales and b["bias"] == 0, (dtype, b)
        assert b["total"] == b["k"] + b["v"] + b["scales"]
        assert b["uncompressed"] == 4 * (b["k"] + b["v"]) + (2 * scales * 4 if dtype in ("int8", "int4") else 2 * scales)
        assert cache.stored("k").size == 2 * 2 * 16 * row and cache.stored("k").dtype == np.uint8
        assert cache.stored("k_scales").size == scales and cache.stored("bias").size == 0
    f32 = ekv.compress(q, k, v, kv_dtype="f32", policy="stride", compress=4)
    assert np.array_equal(f32.stored("v").view(np.float32).reshape(f32.v.shape), f32.v)


# ---- bad input, no GPU ----------------------------------------------------------------

def expect_value_error(call, *words):
    try:
        call()
    except ValueError as error:
        message = str(error)
        for word in words:
            assert word in message, f"{word!r} not in {message!r}"
        return message
    raise AssertionError(f"no ValueError (expected one naming {words})")


def test_every_bad_argument_is_named():
    q, k, v = random_qkv(1, 4, 2, 32, 64)
    attention = ekv.attention
    cases = [
        (lambda: attention(q[0], k, v), "q must have 3 dimensions"),
        (lambda: attention(q, k[0], v), "k must have 4 dimensions"),
        (lambda: attention(q, k, v[:, :, :-1]), "v must have the shape of k"),
        (lambda: attention(q[:, :3], k, v), "do not divide heads of q"),
        (lambda: attention(q, k[:, :, :, :32], v[:, :, :, :32]), "head_dim of k"),
        (lambda: attention(q.astype(np.float64), k, v), "q: dtype float64"),
        (lambda: attention(q, k.astype(np.int32), v), "k: dtype int32"),
        (lambda: attention(q, k, None), "v is None"),
        (lambda: attention(q, k, v, kv_dtype="int3"), "kv_dtype='int3'", "allowed f32"),
        (lambda: attention(q, k, v, policy="random"), "policy='random'", "topk"),
        (lambda: attention(q, k, v, compress=0), "compress=0"),
        (lambda: attention(q, k, v, policy="none", compress=2), "compress=2", "policy='none'"),
        (lambda: attention(q, k, v, recent=-1), "recent=-1"),
        (lambda: attention(q, k, v, sinks=-2), "sinks=-2"),
        (lambda: attention(q, k, v, observe=-1), "observe=-1"),
        (lambda: attention(q, k, v, policy="topk", observe=0), "observe"),
        (lambda: attention(q, k, v, softmax_scale=float("nan")), "softmax_scale=nan"),
        (lambda: attention(q, k, v, compress=2.5), "compress=2.5"),
        (lambda: attention(q, k, v, backend="tpu"), "backend='tpu'"),
        (lambda: attention(q, k, v, lengths=[40]), "lengths[0]=40"),
        (lambda: attention(q, k, v, lengths=[1, 2]), "lengths"),
        (lambda: attention(q, k, v, q_observe=np.zeros((1, 4, 2, 32), np.float32)), "q_observe"),
        (lambda: attention(q[:, :, :63], k[:, :, :, :63], v[:, :, :, :63], kv_dtype="int4"), "kv_dtype='int4'", "even"),
        (lambda: ekv.generate(seq=0), "seq_len must be >= 1"),
        (lambda: ekv.generate(data="zeros"), "data='zeros'"),
        (lambda: ekv.compress(q, k, v).stored("scales"), "name='scales'"),
        (lambda: ekv.bench(seq=0), "--seq=0"),
        (lambda: ekv.bench(kv_dtype="int3"), "--kv-dtype='int3'"),
        (lambda: ekv.bench(policy=["stride", "bogus"]), "--policy='bogus'"),
        (lambda: ekv.bench(compress=3, policy="none"), "--compress=3"),
        (lambda: ekv.bench(reps=1), "--reps=1"),
        (lambda: ekv.bench(heads=6, kv_heads=4), "--kv-heads=4"),
        (lambda: ekv.bench(frobnicate=1), "--frobnicate"),
        (lambda: ekv.bench(seq=[]), "seq"),
        (lambda: ekv.bench(out="x.json"), "out"),
        (lambda: ekv.bench(help=True), "help"),
        (lambda: ekv.bench(backend="tpu"), "--backend='tpu'"),
        (lambda: ekv.compare(np.zeros(3), np.zeros(4, np.float32)), "x has 4 values"),
    ]
    for call, *words in cases:
        try:
            expect_value_error(call, *words)
        except AssertionError as error:
            raise AssertionError(f"case {words}: {error}") from None
    # a file that cannot be read is an OSError, as Python's own open() raises, naming it
    missing = os.path.join(WORK, "absent.npz")
    try:
        ekv.bench(data=missing, **SMALL)
    except OSError as error:
        assert missing in str(error), str(error)
    else:
        raise AssertionError("no OSError for a missing data file")


def test_a_gpu_request_without_a_gpu_is_a_clear_error():
    if ekv.gpu_available():
        raise Skip("a GPU is here: see test_gpu_attention")
    q, k, v = random_qkv(1, 4, 2, 64, 64)
    for call in (lambda: ekv.attention(q, k, v, backend="cuda"),
                 lambda: ekv.bench(seq=64, backend="cuda", **{k: w for k, w in SMALL.items() if k != "backend"}),
                 lambda: ekv.gpu_name()):
        try:
            call()
        except ekv.DeviceError as error:
            message = str(error)
            assert ("CUDA" in message or "GPU" in message) and len(message) > 20, message
        else:
            raise AssertionError("no DeviceError")
    # auto runs on the CPU; with CUDA in the library, the result says why
    out = ekv.attention(q, k, v, backend="auto")
    assert out.backend == "cpu"
    row, = ekv.bench(frame=False, seq=64, **{k: w for k, w in SMALL.items() if k != "backend"})
    assert row["backend"] == "cpu"
    if ekv.build_info()["cuda"]:
        assert row["notice"].startswith("CPU backend: "), row["notice"]


def test_gpu_attention():
    if not ekv.gpu_available():
        raise Skip("no GPU")
    # the emulator runs each CUDA thread as a thread of the CPU: a small problem there
    q, k, v = random_qkv(1, 8, 2, 96, 64) if EMULATOR else random_qkv(2, 8, 2, 512, 128)
    for dtype in ("f16", "int8", "int4"):
        gpu = ekv.attention(q, k, v, kv_dtype=dtype, policy="topk", compress=4, backend="cuda")
        cpu = ekv.attention(q, k, v, kv_dtype=dtype, policy="topk", compress=4, backend="cpu")
        assert gpu.backend == "cuda" and gpu.error_kernel.rel_l2 < 1e-3, (dtype, gpu.error_kernel)
        assert gpu.error_compression == cpu.error_compression
    # the benchmark on the device: the library's device side runs it
    row, = ekv.bench(frame=False, seq=96, heads=8, kv_heads=2, reps=2, warmup=0, inner_loops=1,
                     backend="emulator" if EMULATOR else "cuda")
    assert row["backend"] == ("emulator" if EMULATOR else "cuda") and row["error_kernel"] < 1e-3, row


def test_the_build_is_recorded():
    info = ekv.build_info()
    if os.environ.get("EKV_LIBRARY"):
        assert info["library"] == os.path.realpath(os.environ["EKV_LIBRARY"]) and info["built"] == {}
        raise Skip("EKV_LIBRARY names a library that pip install did not build")
    version = re.search(r'#define EKV_VERSION_STRING "([^"]+)"', open(os.path.join(ROOT, "ekv.h")).read())
    abi = re.search(r"#define EKV_ABI_VERSION (\d+)", open(os.path.join(ROOT, "ekv.h")).read())
    assert info["ekv_version"] == ekv.__version__ == version.group(1)
    assert info["abi_version"] == ekv.ABI_VERSION == int(abi.group(1))
    assert info["built"]["cpu"]["command"][-1] == "-lm"
    nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)
    wanted = os.environ.get("EKV_CUDA", "auto") != "0"
    if nvcc and wanted and info["built"]["cuda"].get("reason") != "EKV_CUDA=0":
        # wherever nvcc exists, pip install . builds the CUDA library and the module loads it
        assert info["built"]["cuda"]["built"], info["built"]["cuda"]
        assert info["cuda"] and info["library"].endswith("libekv_cuda.so"), info


def test_the_readme_python_line_runs():
    """The README's line, as written there, prints a one-row table."""
    if EMULATOR:
        raise Skip("the README's run is GPU-sized for the emulator")
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    line, = [line.strip() for line in readme.splitlines() if line.strip().startswith('python -c "import ekv')]
    code = line[len('python -c "'):-1]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=WORK)
    assert done.returncode == 0, done.stderr
    assert "1 rows x" in done.stdout or "'backend': 'cpu'" in done.stdout, done.stdout


def main():
    tests = [(name, function) for name, function in globals().items()
             if name.startswith("test_") and callable(function)]
    passed = failed = skipped = 0
    for name, function in tests:
        try:
            function()
        except Skip as why:
            skipped += 1
            print(f"SKIP {name}: {why}")
        except Exception:  # noqa: BLE001 - every failure is reported, then counted
            failed += 1
            print(f"FAIL {name}")
            print("    " + traceback.format_exc().strip().replace("\n", "\n    "))
        else:
            passed += 1
            print(f"PASS {name}")
    if failed:
        print(f"files kept in {WORK}")
    else:
        shutil.rmtree(WORK, ignore_errors=True)
    print(f"{passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
