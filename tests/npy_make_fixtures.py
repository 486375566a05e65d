#!/usr/bin/env python3
"""npy_make_fixtures.py - .npy/.npz files written by numpy itself, for tests/test_npy.c.

    python3 tests/npy_make_fixtures.py DIR          write the fixtures into DIR
    python3 tests/npy_make_fixtures.py --check DIR  read back what test_npy wrote into DIR
                                                    (from_c_*.npy) with numpy; exit 1 on
                                                    a mismatch

Every array's values are np.arange(n).reshape(shape) / 7 in its dtype, so the C test can
recompute them.
"""
import os
import sys

import numpy as np


def ramp(shape, dtype):
    n = int(np.prod(shape)) if len(shape) else 1
    return (np.arange(n, dtype=np.float64).reshape(shape) / 7).astype(dtype)


def write(directory):
    os.makedirs(directory, exist_ok=True)
    p = lambda name: os.path.join(directory, name)
    np.save(p("f32.npy"), ramp((2, 3, 4), np.float32))
    np.save(p("f16.npy"), ramp((5, 7), np.float16))
    np.save(p("f64.npy"), ramp((3, 3), np.float64))
    np.save(p("scalar.npy"), np.float32(3.5))
    np.save(p("empty.npy"), np.zeros((0, 3), np.float32))
    np.save(p("one_dim.npy"), ramp((11,), np.float32))
    np.save(p("fortran.npy"), np.asfortranarray(ramp((3, 4), np.float32)))
    np.save(p("int32.npy"), np.arange(6, dtype=np.int32))
    np.save(p("big_endian.npy"), ramp((4,), ">f4"))
    with open(p("v2.npy"), "wb") as f:
        np.lib.format.write_array(f, ramp((2, 5), np.float32), version=(2, 0))
    with open(p("v3.npy"), "wb") as f:
        np.lib.format.write_array(f, ramp((2, 5), np.float32), version=(3, 0))
    # q [B,H,D], k/v [B,Hkv,S,D]: B=2, H=4, Hkv=2, S=6, D=8
    q, k, v = ramp((2, 4, 8), np.float32), ramp((2, 2, 6, 8), np.float32), ramp((2, 2, 6, 8), np.float32) + 1
    np.savez(p("data.npz"), q=q, k=k, v=v)
    np.savez(p("data_observe.npz"), q=q, k=k, v=v, q_observe=ramp((2, 4, 3, 8), np.float32))
    np.savez(p("data_f16.npz"), q=q.astype(np.float16), k=k.astype(np.float16), v=v.astype(np.float16))
    np.savez_compressed(p("compressed.npz"), q=q, k=k, v=v)
    os.makedirs(p("data_dir"), exist_ok=True)
    for name, a in (("q", q), ("k", k), ("v", v)):
        np.save(os.path.join(directory, "data_dir", name + ".npy"), a)
    print("wrote fixtures into", directory)


def check(directory):
    failures = 0
    for name, dtype, shape in (("from_c_f32.npy", np.float32, (2, 3, 4)),
                               ("from_c_f64.npy", np.float64, (3, 1, 5)),
                               ("from_c_scalar.npy", np.float32, ())):
        path = os.path.join(directory, name)
        a = np.load(path)
        ok = a.dtype == dtype and a.shape == shape and np.array_equal(a, ramp(shape, dtype))
        with open(path, "rb") as f:
            head = f.read(10)
            header_len = head[8] | (head[9] << 8)
            ok = ok and (10 + header_len) % 64 == 0
        print(("PASS numpy reads " if ok else "FAIL numpy reads ") + name)
        failures += not ok
    print(f"{3 - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--check":
        sys.exit(check(sys.argv[2]))
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    write(sys.argv[1])
