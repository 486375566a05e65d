"""ekv._abi - loads ekv's shared library and declares its C ABI for ctypes.

The library is the one `pip install .` built beside this file (setup.py): libekv_cuda.so
when it was built and loads (its CUDA runtime and cuBLAS found), else libekv.so; the
environment variable EKV_LIBRARY names another build of either. Only the functions of
the C ABI (ekv.h >>abi, >>abibench; ekv_cuda.cuh >>abi, >>dispatch) are declared: opaque
handles and plain arguments, so that no struct layout is mirrored here.
"""
import ctypes
import json
import os
from ctypes import POINTER, c_char_p, c_double, c_float, c_int, c_int64, c_size_t, c_uint64, c_void_p
from pathlib import Path

ABI_VERSION = 1  # the EKV_ABI_VERSION this module was written for

HERE = Path(__file__).resolve().parent


class EkvError(RuntimeError):
    """A run that failed for a reason other than bad input (a CUDA error, a kernel that
    disagrees with the reference)."""


class DeviceError(EkvError):
    """A GPU was asked for and there is none that ekv can use (no device, no driver, or a
    library built without CUDA)."""


# ekv_result codes (ekv.h, EKV_RESULT_LIST) and the Python exception of each: bad input
# is a ValueError, as Python code expects; the rest keep ekv's meaning.
_EXCEPTIONS = {
    -1: ValueError,   # EKV_ERR_INVALID_ARG
    -2: MemoryError,  # EKV_ERR_OUT_OF_MEMORY
    -3: OSError,      # EKV_ERR_IO
    -4: ValueError,   # EKV_ERR_FORMAT
    -5: ValueError,   # EKV_ERR_UNSUPPORTED
    -6: EkvError,     # EKV_ERR_CUDA
    -7: DeviceError,  # EKV_ERR_NO_DEVICE
    -8: EkvError,     # EKV_ERR_VALIDATION
}

_I64P = POINTER(c_int64)
_FP = POINTER(c_float)
_DP = POINTER(c_double)
_IP = POINTER(c_int)

# name: (result type, argument types); results of c_int are ekv_result codes
_FUNCTIONS = {
    "ekv_version": (c_char_p, []),
    "ekv_last_error": (c_char_p, []),
    "ekv_result_string": (c_char_p, [c_int]),
    "ekv_abi_version": (c_int, []),
    "ekv_abi_data_create": (c_int, [_FP, _I64P, c_int, _FP, _I64P, c_int, _FP, _I64P, c_int,
                                    _FP, _I64P, c_int, _IP, c_int, POINTER(c_void_p)]),
    "ekv_abi_data_generate": (c_int, [c_char_p, c_int, c_int, c_int, c_int, c_int, c_int,
                                      c_uint64, POINTER(c_void_p)]),
    "ekv_abi_data_dim": (c_int, [c_void_p, c_char_p, _I64P]),
    "ekv_abi_data_copy": (c_int, [c_void_p, c_char_p, c_void_p]),
    "ekv_abi_data_reference": (c_int, [c_void_p, c_double, _DP]),
    "ekv_abi_data_profile": (c_int, [c_void_p, c_double, _DP, _DP]),
    "ekv_abi_data_free": (None, [c_void_p]),
    "ekv_abi_cache_build": (c_int, [c_void_p, c_char_p, c_char_p, c_int, c_int, c_int, c_double,
                                    POINTER(c_void_p)]),
    "ekv_abi_cache_number": (c_int, [c_void_p, c_char_p, _DP]),
    "ekv_abi_cache_lengths": (c_int, [c_void_p, _IP]),
    "ekv_abi_cache_slots": (c_int, [c_void_p, _IP, _IP]),
    "ekv_abi_cache_values": (c_int, [c_void_p, c_char_p, _FP]),
    "ekv_abi_cache_stored": (c_int, [c_void_p, c_char_p, c_void_p, POINTER(c_size_t)]),
    "ekv_abi_cpu_attention": (c_int, [c_void_p, _FP]),
    "ekv_abi_cache_reference": (c_int, [c_void_p, _DP]),
    "ekv_abi_cache_free": (None, [c_void_p]),
    "ekv_abi_compare": (c_int, [_DP, _FP, c_size_t, _DP, _DP, _DP]),
    "ekv_abi_compare_f64": (c_int, [_DP, _DP, c_size_t, _DP, _DP, _DP]),
    "ekv_abi_bench_open": (c_int, [c_int, POINTER(c_char_p), POINTER(c_void_p)]),
    "ekv_abi_bench_runs": (c_int64, [c_void_p]),
    "ekv_abi_bench_run": (c_int, [c_void_p, c_int64, POINTER(c_char_p)]),
    "ekv_abi_bench_config": (c_int, [c_void_p, c_int64, POINTER(c_char_p)]),
    "ekv_abi_bench_close": (None, [c_void_p]),
    "ekv_abi_bench_help": (c_int, [c_char_p, c_size_t, POINTER(c_size_t)]),
}
# only in a library built with CUDA
_CUDA_FUNCTIONS = {
    "ekv_cuda_abi_device": (c_int, [c_int, c_char_p, c_size_t]),
    "ekv_cuda_abi_attention": (c_int, [c_void_p, c_int, _FP]),
    "ekv_cuda_abi_bench_open": (c_int, [c_int, POINTER(c_char_p), POINTER(c_void_p)]),
}


def _declare(library, table):
    for name, (restype, argtypes) in table.items():
        function = getattr(library, name)
        function.restype = restype
        function.argtypes = argtypes


def _load():
    """(library, has_cuda, notes): the first library that loads, with what was tried."""
    notes = []
    given = os.environ.get("EKV_LIBRARY")
    candidates = [Path(given).resolve()] if given else [HERE / "libekv_cuda.so", HERE / "libekv.so"]
    for path in candidates:
        if not path.is_file():
            notes.append(f"{path.name}: not built")
            continue
        try:
            library = ctypes.CDLL(str(path))
        except OSError as error:
            notes.append(f"{path.name}: does not load ({error})")
            continue
        _declare(library, _FUNCTIONS)
        has_cuda = hasattr(library, "ekv_cuda_abi_attention")
        if has_cuda:
            _declare(library, _CUDA_FUNCTIONS)
        found = library.ekv_abi_version()
        if found != ABI_VERSION:
            raise ImportError(f"{path}: C ABI version {found}, this module needs {ABI_VERSION}; "
                              "reinstall ekv (pip install .) so that both come from one checkout")
        return library, path, has_cuda, notes
    raise ImportError("ekv's shared library is missing (" + "; ".join(notes) + "): install the "
                      "module with `pip install .` from an ekv checkout, which builds it")


LIB, PATH, HAS_CUDA, LOAD_NOTES = _load()


def check(result):
    """Raises the exception for an ekv_result, with ekv's message (it names the argument)."""
    if result >= 0:
        return
    message = LIB.ekv_last_error().decode("utf-8", "replace")
    if not message:
        message = LIB.ekv_result_string(result).decode()
    raise _EXCEPTIONS.get(result, EkvError)(message)


def build_record():
    """What setup.py built (ekv/_build.json), or {} for a library given by EKV_LIBRARY."""
    record = PATH.parent / "_build.json"
    return json.loads(record.read_text()) if record.is_file() else {}
