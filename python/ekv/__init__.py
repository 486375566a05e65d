"""ekv - decode attention over an elastic (compressed, quantized) KV cache, from Python.

In process, over ekv's C ABI (ekv.h >>abi): no subprocess, no files in between.

    import ekv
    df = ekv.bench(seq=[1024, 4096], kv_dtype=["f16", "int8"], paired_baseline=True)
    out, error_total, error_compression, error_kernel, backend = ekv.attention(
        q, k, v, kv_dtype="int4", policy="topk", compress=4)
    cache = ekv.compress(q, k, v, kv_dtype="int8", policy="window", compress=4)

ekv.bench(**flags)     runs ekv_bench's code in process: a keyword is a flag (seq=256 is
                       --seq=256, kv_dtype="int8" is --kv-dtype=int8, paired_baseline=True
                       is --paired-baseline), a list sweeps it; one row per result with the
                       columns of ekv.columns() (pandas DataFrame when pandas is installed,
                       else a list of dicts); raw=True gives the JSON objects; progress bar
                       through tqdm when it is installed.
ekv.attention(q, k, v, ...)
                       q [B,H,D] and k, v [B,H_kv,S,D] (float32 or float16 numpy arrays):
                       the cache stored as kv_dtype, compressed by policy at ratio compress,
                       attention by the CPU kernel (backend="cpu") or the GPU's
                       ("cuda"; "auto" = the GPU when there is one), and its three errors.
ekv.compress(q, k, v, ...) -> Cache
                       the stored cache for study: which tokens each slot holds, the
                       dequantized K and V, the stored bytes.
ekv.Data(q, k, v)      the data once, many caches: Data.compress(...), Data.attention(...).
ekv.generate(...)      ekv's seeded data (structured: sinks, recency, heavy hitters).

Bad input raises ValueError with ekv's message, which names the argument (or the flag);
a file that cannot be read raises OSError naming it; a GPU asked for where there is none
raises ekv.DeviceError, which says why. Defaults are ekv_bench's
(kv_dtype f16, policy stride, compress 2, recent 0, sinks 4, observe 16).
"""
import json
import sys
from collections import namedtuple
from ctypes import POINTER, byref, c_char_p, c_double, c_float, c_int, c_int64, c_size_t, c_void_p, create_string_buffer
from pathlib import Path

import numpy as np

from . import _abi
from ._abi import DeviceError, EkvError
from .columns import COLUMNS, NAMES, flatten

__all__ = ["ABI_VERSION", "Attention", "Cache", "Data", "DeviceError", "EkvError", "Errors",
           "attention", "bench", "bench_help", "build_info", "columns", "compare", "compress",
           "generate", "gpu_available", "gpu_name", "__version__"]

_LIB = _abi.LIB
_check = _abi.check
ABI_VERSION = _LIB.ekv_abi_version()
__version__ = _LIB.ekv_version().decode()

Errors = namedtuple("Errors", "rel_l2 max_abs cosine")
Errors.__doc__ = "An output against a reference: ||x - r|| / ||r||, max |x - r|, cosine."
Attention = namedtuple("Attention", "out error_total error_compression error_kernel backend")
Attention.__doc__ = """ekv.attention's result: out [B,H,D] float32 and three Errors:
error_total (out vs the double reference over the full data), error_compression (double
attention over the stored cache vs that reference: what the cache costs) and error_kernel
(out vs double attention over the same stored cache: the kernel's own rounding); backend
is what ran (cpu or cuda)."""

_BACKENDS = ("auto", "cpu", "cuda")


# ---- build and device --------------------------------------------------------------

def build_info():
    """What was built and loaded: the library, its ABI and ekv versions, CUDA, and the
    commands setup.py ran (with the compilers' versions)."""
    record = _abi.build_record()
    return {
        "library": str(_abi.PATH),
        "ekv_version": __version__,
        "abi_version": ABI_VERSION,
        "cuda": _abi.HAS_CUDA,
        "load_notes": list(_abi.LOAD_NOTES),
        "built": record,
    }


def _no_cuda_reason():
    reason = _abi.build_record().get("cuda", {}).get("reason")
    notes = "; ".join(_abi.LOAD_NOTES)
    return ("ekv was built without CUDA" + (f" ({reason})" if reason else "") +
            (f" [{notes}]" if notes else "") +
            ": reinstall with nvcc on PATH (pip install . builds libekv_cuda.so), or use "
            "backend='cpu'")


def gpu_name(device=0):
    """The name of GPU `device`; DeviceError, with the reason, when there is none."""
    if not _abi.HAS_CUDA:
        raise DeviceError(_no_cuda_reason())
    name = create_string_buffer(256)
    _check(_LIB.ekv_cuda_abi_device(_int("device", device), name, len(name)))
    return name.value.decode("utf-8", "replace")


def gpu_available(device=0):
    """True when ekv has CUDA and GPU `device` is usable."""
    try:
        gpu_name(device)
        return True
    except DeviceError:
        return False


def _backend(backend, device):
    """The backend that will run: cpu, or cuda (checked to be usable)."""
    if backend not in _BACKENDS:
        raise ValueError(f"backend={backend!r} is unknown: allowed {', '.join(_BACKENDS)}")
    if backend == "cpu":
        return "cpu"
    if backend == "auto":
        return "cuda" if gpu_available(device) else "cpu"
    gpu_name(device)  # DeviceError with the reason when there is none
    return "cuda"


# ---- arguments -----------------------------------------------------------------------

def _int(name, value):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name}={value!r} is not an integer")
    if not -2**31 <= int(value) < 2**31:
        raise ValueError(f"{name}={value} is out of range of a C int")
    return int(value)


def _float(name, value):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name}={value!r} is not a number")
    return float(value)


def _text(name, value):
    if not isinstance(value, str):
        raise ValueError(f"{name}={value!r} is not a string")
    return value.encode()


def _array(name, value):
    """A float32 C-ordered copy-free view (or copy) of a float32 or float16 array."""
    if value is None:
        raise ValueError(f"{name} is None: an array is required")
    array = np.asarray(value)
    if array.dtype not in (np.float32, np.float16):
        raise ValueError(f"{name}: dtype {array.dtype} is not supported: allowed float32, float16 "
                         f"(convert with {name}.astype(np.float32))")
    return np.ascontiguousarray(array, dtype=np.float32)


def _shape(array):
    return (c_int64 * max(array.ndim, 1))(*array.shape), array.ndim


def _float_pointer(array):
    return array.ctypes.data_as(POINTER(c_float))


def _defaults():
    """ekv_bench's defaults, read from its parser (so they are stated once, in ekv.h)."""
    global _DEFAULTS
    if _DEFAULTS is None:
        handle = _bench_open(["--quiet"])
        try:
            text = c_char_p()
            _check(_LIB.ekv_abi_bench_config(handle, 0, byref(text)))
            _DEFAULTS = json.loads(text.value)["configuration"]
        finally:
            _LIB.ekv_abi_bench_close(handle)
    return _DEFAULTS


_DEFAULTS = None


# ---- data and caches -------------------------------------------------------------------

class Data:
    """One decode step's data: q [B,H,D], k and v [B,H_kv,S,D] (float32 or float16, copied
    in as float32), optional q_observe [B,H,O,D] (the last queries, which topk's scores come
    from; without it every observed query is a copy of q, as with ekv_bench --data=FILE),
    lengths [B] (tokens present per sequence; default all S) and observe (how many observed
    queries topk uses; default ekv_bench's)."""

    def __init__(self, q, k, v, q_observe=None, lengths=None, observe=None, _handle=None):
        if _handle is not None:
            self._handle = _handle
            return
        self._handle = None
        observe = _defaults()["observe"] if observe is None else _int("observe", observe)
        arrays = [_array("q", q), _array("k", k), _array("v", v)]
        observed = None if q_observe is None else _array("q_observe", q_observe)
        lengths_array = None
        if lengths is not None:
            lengths_array = np.ascontiguousarray(np.asarray(lengths), dtype=np.int32)
            if lengths_array.ndim != 1 or arrays[0].ndim < 1 or lengths_array.size != arrays[0].shape[0]:
                raise ValueError(f"lengths: expected one entry per sequence ({arrays[0].shape[0] if arrays[0].ndim else '?'}), "
                                 f"got shape {lengths_array.shape}")
            if not np.array_equal(lengths_array, np.asarray(lengths)):
                raise ValueError("lengths: entries must be integers")
        shapes = [_shape(a) for a in arrays]
        observed_shape = _shape(observed) if observed is not None else (None, 0)
        handle = c_void_p()
        _check(_LIB.ekv_abi_data_create(
            _float_pointer(arrays[0]), shapes[0][0], shapes[0][1],
            _float_pointer(arrays[1]), shapes[1][0], shapes[1][1],
            _float_pointer(arrays[2]), shapes[2][0], shapes[2][1],
            _float_pointer(observed) if observed is not None else None, observed_shape[0], observed_shape[1],
            lengths_array.ctypes.data_as(POINTER(c_int)) if lengths_array is not None else None,
            observe, byref(handle)))
        self._handle = handle

    def __del__(self):
        if getattr(self, "_handle", None):
            _LIB.ekv_abi_data_free(self._handle)
            self._handle = None

    def _dim(self, name):
        value = c_int64()
        _check(_LIB.ekv_abi_data_dim(self._handle, name.encode(), byref(value)))
        return value.value

    @property
    def shape(self):
        """batch, heads, kv_heads, seq_len, head_dim, observe."""
        return {name: self._dim(name) for name in ("batch", "heads", "kv_heads", "seq_len", "head_dim", "observe")}

    def _copy(self, name, shape, dtype):
        out = np.empty(shape, dtype=dtype)
        _check(_LIB.ekv_abi_data_copy(self._handle, name.encode(), out.ctypes.data_as(c_void_p)))
        return out

    @property
    def q(self):
        s = self.shape
        return self._copy("q", (s["batch"], s["heads"], s["head_dim"]), np.float32)

    @property
    def k(self):
        s = self.shape
        return self._copy("k", (s["batch"], s["kv_heads"], s["seq_len"], s["head_dim"]), np.float32)

    @property
    def v(self):
        s = self.shape
        return self._copy("v", (s["batch"], s["kv_heads"], s["seq_len"], s["head_dim"]), np.float32)

    @property
    def q_observe(self):
        s = self.shape
        return self._copy("q_observe", (s["batch"], s["heads"], s["observe"], s["head_dim"]), np.float32)

    @property
    def lengths(self):
        return self._copy("lengths", (self._dim("batch"),), np.int32)

    def reference(self, softmax_scale=0.0):
        """Attention in double over the full original data, [B,H,D] float64."""
        s = self.shape
        out = np.empty((s["batch"], s["heads"], s["head_dim"]), dtype=np.float64)
        _check(_LIB.ekv_abi_data_reference(self._handle, _float("softmax_scale", softmax_scale),
                                           out.ctypes.data_as(POINTER(c_double))))
        return out

    def profile(self, softmax_scale=0.0):
        """(attention entropy in nats, share of attention mass in the top 5% of tokens),
        means over sequences and query heads."""
        entropy, mass = c_double(), c_double()
        _check(_LIB.ekv_abi_data_profile(self._handle, _float("softmax_scale", softmax_scale),
                                         byref(entropy), byref(mass)))
        return entropy.value, mass.value

    def compress(self, kv_dtype=None, policy=None, compress=None, recent=None, sinks=None,
                 softmax_scale=0.0):
        """The stored cache (ekv_cache_build): a Cache. Unset arguments take ekv_bench's
        defaults."""
        return Cache(self, kv_dtype, policy, compress, recent, sinks, softmax_scale)

    def attention(self, kv_dtype=None, policy=None, compress=None, recent=None, sinks=None,
                  softmax_scale=0.0, backend="cpu", device=0):
        """The kernel's output over the stored cache and its three errors: an Attention."""
        return self.compress(kv_dtype, policy, compress, recent, sinks, softmax_scale).attention_result(
            backend=backend, device=device)


class Cache:
    """A stored (compressed, quantized) cache of a Data, for study. Shapes use capacity =
    the most slots a sequence keeps; slots beyond a sequence's length read as 0 (and -1 in
    slot_first)."""

    def __init__(self, data, kv_dtype=None, policy=None, compress=None, recent=None, sinks=None,
                 softmax_scale=0.0):
        defaults = _defaults()
        self.data = data  # the C cache refers to the data: keep it alive
        self.kv_dtype = defaults["kv_dtype"] if kv_dtype is None else kv_dtype
        self.policy = defaults["policy"] if policy is None else policy
        handle = c_void_p()
        _check(_LIB.ekv_abi_cache_build(
            data._handle, _text("kv_dtype", self.kv_dtype), _text("policy", self.policy),
            _int("compress", defaults["compression"] if compress is None else compress),
            _int("recent", defaults["recent"] if recent is None else recent),
            _int("sinks", defaults["sinks"] if sinks is None else sinks),
            _float("softmax_scale", softmax_scale), byref(handle)))
        self._handle = handle
        for name in ("batch", "heads", "kv_heads", "head_dim", "capacity", "recent", "sinks", "observe"):
            setattr(self, name, int(self._number(name)))
        self.compress = int(self._number("compression"))
        self.softmax_scale = self._number("softmax_scale")

    def __del__(self):
        if getattr(self, "_handle", None):
            _LIB.ekv_abi_cache_free(self._handle)
            self._handle = None

    def __repr__(self):
        return (f"<ekv.Cache {self.kv_dtype} {self.policy} C={self.compress}: "
                f"{self.capacity} slots of {self.data.shape['seq_len']} tokens, "
                f"{self.bytes['total']:.0f} bytes>")

    def _number(self, name):
        value = c_double()
        _check(_LIB.ekv_abi_cache_number(self._handle, name.encode(), byref(value)))
        return value.value

    @property
    def bytes(self):
        """Stored bytes the kernel reads (k, v, scales, bias, total), uncompressed (the same
        dtype at C = 1) and allocated (capacity padding included)."""
        names = {"k": "bytes_k", "v": "bytes_v", "scales": "bytes_scales", "bias": "bytes_bias",
                 "total": "bytes_total", "uncompressed": "bytes_uncompressed",
                 "allocated": "memory_bytes"}
        return {key: self._number(name) for key, name in names.items()}

    @property
    def lengths(self):
        """Slots in use per sequence, [B] int32."""
        out = np.empty(self.batch, dtype=np.int32)
        _check(_LIB.ekv_abi_cache_lengths(self._handle, out.ctypes.data_as(POINTER(c_int))))
        return out

    def _slots(self):
        first = np.empty((self.batch, self.kv_heads, self.capacity), dtype=np.int32)
        count = np.empty_like(first)
        _check(_LIB.ekv_abi_cache_slots(self._handle, first.ctypes.data_as(POINTER(c_int)),
                                        count.ctypes.data_as(POINTER(c_int))))
        return first, count

    @property
    def slot_first(self):
        """[B,H_kv,capacity] int32: the first original token each slot holds (-1: unused)."""
        return self._slots()[0]

    @property
    def slot_count(self):
        """[B,H_kv,capacity] int32: how many tokens the slot holds (pool: a group; 0: unused)."""
        return self._slots()[1]

    def token_mask(self):
        """[B,H_kv,S] bool: whether each original token is held by some slot (alone, or in
        a pool group)."""
        first, count = self._slots()
        mask = np.zeros((self.batch, self.kv_heads, self.data.shape["seq_len"]), dtype=bool)
        for index in zip(*np.nonzero(count)):
            start = first[index]
            mask[index[0], index[1], start:start + count[index]] = True
        return mask

    def _values(self, name, shape):
        out = np.empty(shape, dtype=np.float32)
        _check(_LIB.ekv_abi_cache_values(self._handle, name.encode(), out.ctypes.data_as(POINTER(c_float))))
        return out

    @property
    def k(self):
        """The stored K dequantized, [B,H_kv,capacity,D] float32."""
        return self._values("k", (self.batch, self.kv_heads, self.capacity, self.head_dim))

    @property
    def v(self):
        """The stored V dequantized, [B,H_kv,capacity,D] float32."""
        return self._values("v", (self.batch, self.kv_heads, self.capacity, self.head_dim))

    @property
    def bias(self):
        """[B,H_kv,capacity] float32 logit bias of each slot (pool: ln(group size)), or None."""
        if not self._number("has_bias"):
            return None
        return self._values("bias", (self.batch, self.kv_heads, self.capacity))

    def stored(self, name):
        """The stored bytes themselves as uint8: "k", "v", "k_scales", "v_scales", "bias"
        (layouts in ekv.h >>cache)."""
        size = c_size_t()
        _check(_LIB.ekv_abi_cache_stored(self._handle, _text("name", name), None, byref(size)))
        out = np.empty(size.value, dtype=np.uint8)
        _check(_LIB.ekv_abi_cache_stored(self._handle, name.encode(), out.ctypes.data_as(c_void_p), byref(size)))
        return out

    def attention(self, backend="cpu", device=0):
        """The kernel's output over the stored cache with the data's q, [B,H,D] float32:
        the CPU kernel, or the GPU's (backend "cuda"; "auto" = the GPU when usable)."""
        return self.attention_result(backend, device).out

    def attention_result(self, backend="cpu", device=0):
        """The output and its three errors: an Attention."""
        ran = _backend(backend, device)
        out = np.empty((self.batch, self.heads, self.head_dim), dtype=np.float32)
        if ran == "cpu":
            _check(_LIB.ekv_abi_cpu_attention(self._handle, _float_pointer(out)))
        else:
            _check(_LIB.ekv_cuda_abi_attention(self._handle, _int("device", device), _float_pointer(out)))
        full = self.data.reference(self.softmax_scale)
        over_cache = self.reference()
        return Attention(out, compare(full, out), compare(full, over_cache), compare(over_cache, out), ran)

    def reference(self):
        """Attention in double over the stored cache (dequantized, with its bias), [B,H,D]."""
        out = np.empty((self.batch, self.heads, self.head_dim), dtype=np.float64)
        _check(_LIB.ekv_abi_cache_reference(self._handle, out.ctypes.data_as(POINTER(c_double))))
        return out


def compare(reference, x):
    """Errors of x against reference (ekv_compare_f32, or ekv_compare_f64 when x is
    float64): rel_l2, max_abs, cosine."""
    reference = np.ascontiguousarray(np.asarray(reference), dtype=np.float64)
    x = np.asarray(x)
    double = x.dtype == np.float64
    x = np.ascontiguousarray(x, dtype=np.float64 if double else np.float32)
    if x.size != reference.size:
        raise ValueError(f"x has {x.size} values, reference {reference.size}")
    rel_l2, max_abs, cosine = c_double(), c_double(), c_double()
    if double:
        _check(_LIB.ekv_abi_compare_f64(reference.ctypes.data_as(POINTER(c_double)),
                                        x.ctypes.data_as(POINTER(c_double)), x.size,
                                        byref(rel_l2), byref(max_abs), byref(cosine)))
    else:
        _check(_LIB.ekv_abi_compare(reference.ctypes.data_as(POINTER(c_double)), _float_pointer(x),
                                    x.size, byref(rel_l2), byref(max_abs), byref(cosine)))
    return Errors(rel_l2.value, max_abs.value, cosine.value)


def generate(seq=None, batch=None, heads=None, kv_heads=None, dim=None, observe=None, seed=None,
             data="structured"):
    """ekv's seeded data, as ekv_bench --data=structured|random generates it for the same
    flags (unset ones take ekv_bench's defaults): a Data."""
    d = _defaults()
    handle = c_void_p()
    _check(_LIB.ekv_abi_data_generate(
        _text("data", data), _int("batch", d["batch"] if batch is None else batch),
        _int("heads", d["heads"] if heads is None else heads),
        _int("kv_heads", 0 if kv_heads is None else kv_heads),
        _int("seq", d["seq_len"] if seq is None else seq),
        _int("dim", d["head_dim"] if dim is None else dim),
        _int("observe", d["observe"] if observe is None else observe),
        int(d["seed"] if seed is None else seed), byref(handle)))
    return Data(None, None, None, _handle=handle)


def compress(q, k, v, kv_dtype=None, policy=None, compress=None, recent=None, sinks=None,
             observe=None, q_observe=None, lengths=None, softmax_scale=0.0):
    """The stored cache of q, k, v (see Data and Cache): a Cache."""
    return Data(q, k, v, q_observe, lengths, observe).compress(
        kv_dtype, policy, compress, recent, sinks, softmax_scale)


def attention(q, k, v, kv_dtype=None, policy=None, compress=None, recent=None, sinks=None,
              observe=None, q_observe=None, lengths=None, softmax_scale=0.0, backend="cpu",
              device=0):
    """Decode attention of q [B,H,D] over k, v [B,H_kv,S,D] stored as kv_dtype and
    compressed by policy at ratio compress: an Attention (out, error_total,
    error_compression, error_kernel, backend)."""
    return Data(q, k, v, q_observe, lengths, observe).attention(
        kv_dtype, policy, compress, recent, sinks, softmax_scale, backend, device)


# ---- the benchmark -------------------------------------------------------------------

_NOT_FLAGS = {
    "out": "out: ekv.bench returns its results; write them with jsonl=PATH (one JSON line each)",
    "help": "help: see ekv.bench_help()",
    "version": "version: see ekv.__version__",
}


def _flag_value(name, value):
    if isinstance(value, (list, tuple, range, np.ndarray)):
        items = [_flag_value(name, item) for item in value]
        if not items:
            raise ValueError(f"{name}: an empty list sweeps nothing")
        return ",".join(items)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name}={value!r}: a list of booleans is not a flag value")
    return str(value)


def _bench_args(flags):
    """ekv_bench's command line of ekv.bench's keywords."""
    args = []
    for name, value in flags.items():
        if name in _NOT_FLAGS:
            raise ValueError(_NOT_FLAGS[name])
        flag = "--" + name.replace("_", "-")
        if value is None or value is False:
            continue  # the flag's default
        if value is True:
            args.append(flag)
        else:
            args.append(f"{flag}={_flag_value(name, value)}")
    return args


def _bench_open(args):
    words = [arg.encode() for arg in args]
    array = (c_char_p * max(len(words), 1))(*words)
    handle = c_void_p()
    opener = _LIB.ekv_cuda_abi_bench_open if _abi.HAS_CUDA else _LIB.ekv_abi_bench_open
    _check(opener(len(words), array, byref(handle)))
    return handle


def _describe(configuration):
    c = configuration
    text = (f"seq={c['seq_len']} {c['kv_dtype']} {c['policy']} C={c['compression']}")
    if c.get("batch", 1) != 1:
        text = f"batch={c['batch']} " + text
    if c.get("inference"):
        text += f" {c['variant']}"
    return text


class _Progress:
    """A tqdm bar when tqdm is installed (tqdm.auto: a widget in notebooks), else a line
    per run on stderr when progress=True, else nothing."""

    def __init__(self, progress, total):
        self.bar = None
        self.lines = False
        if progress is False or (progress is None and total < 2):
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            self.lines = progress is True
            self.total = total
            return
        self.bar = tqdm(total=total, unit="run")

    def start(self, index, what):
        if self.bar is not None:
            self.bar.set_description(what)
        elif self.lines:
            print(f"[{index + 1}/{self.total}] {what}", file=sys.stderr, flush=True)

    def done(self):
        if self.bar is not None:
            self.bar.update(1)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def bench(*, raw=False, frame=None, progress=None, jsonl=None, **flags):
    """Runs ekv_bench's code in process and returns one row per result.

    Keywords are ekv_bench's flags (ekv.bench_help() lists them): name_with_underscores
    is --name-with-underscores, True sets a switch, None or False leaves the default, a
    list (or tuple, range) sweeps the flag: seq=[1024, 4096] is --seq=1024,4096. quiet
    is on unless quiet=False (then ekv's notices go to stderr).

    raw:       True returns the JSON objects (dicts) as ekv_bench --json prints them.
    frame:     True a pandas DataFrame, False a list of dicts; None (default): a DataFrame
               when pandas is installed. Columns: ekv.columns().
    progress:  None (default) a tqdm bar for sweeps when tqdm is installed; True a bar,
               or a line per run on stderr without tqdm; False nothing.
    jsonl:     a path: append the results as JSON lines (as --jsonl does), once all ran.
    """
    flags.setdefault("quiet", True)
    if flags.get("backend") in ("cuda", "emulator") and not _abi.HAS_CUDA:
        raise DeviceError(f"backend={flags['backend']!r}: " + _no_cuda_reason())
    handle = _bench_open(_bench_args(flags))
    results = []
    try:
        total = _LIB.ekv_abi_bench_runs(handle)
        bar = _Progress(progress, total)
        try:
            for index in range(total):
                text = c_char_p()
                _check(_LIB.ekv_abi_bench_config(handle, index, byref(text)))
                bar.start(index, _describe(json.loads(text.value)["configuration"]))
                _check(_LIB.ekv_abi_bench_run(handle, index, byref(text)))
                results.append(json.loads(text.value))
                bar.done()
        finally:
            bar.close()
    finally:
        _LIB.ekv_abi_bench_close(handle)
    if jsonl is not None:
        with open(jsonl, "a", encoding="utf-8") as out:
            for result in results:
                out.write(json.dumps(result, separators=(",", ":"), allow_nan=False) + "\n")
    if raw:
        return results
    return _table(flatten(results), frame)


def _table(rows, frame):
    if frame is False:
        return rows
    try:
        import pandas
    except ImportError:
        if frame:
            raise
        return rows
    return pandas.DataFrame(rows, columns=list(NAMES))


def columns(frame=None):
    """The columns of ekv.bench's rows: name, JSON key, kind, meaning (a DataFrame when
    pandas is installed and frame is not False)."""
    rows = [{"column": n, "json": p, "kind": k, "meaning": m} for n, p, k, m in COLUMNS]
    if frame is False:
        return rows
    try:
        import pandas
    except ImportError:
        if frame:
            raise
        return rows
    return pandas.DataFrame(rows)


def bench_help():
    """ekv_bench --help: the flags ekv.bench takes as keywords."""
    needed = c_size_t()
    _check(_LIB.ekv_abi_bench_help(None, 0, byref(needed)))
    text = create_string_buffer(needed.value)
    _check(_LIB.ekv_abi_bench_help(text, needed.value, byref(needed)))
    return text.value.decode()
