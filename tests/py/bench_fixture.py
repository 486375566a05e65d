"""bench_fixture.py - real ekv_bench output for the tool tests (not a test itself).

The CPU build of bench/main.cu, small sizes: each run takes well under a second. The
binary is $EKV_BENCH when set, else $BUILD/ekv_bench_cpu (made by `make test` before the
Python suites) when it is newer than its sources, else a fresh build into the test's
scratch directory with the README's one-line CPU build:

    c++ -O2 -x c++ -o ekv_bench bench/main.cu
"""

import json
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SOURCES = [os.path.join(ROOT, name) for name in ("ekv.h", os.path.join("bench", "main.cu"))]
# the sizes every fixture uses unless a test overrides them
SMALL = ["--backend=cpu", "--seq=256", "--heads=4", "--reps=5", "--warmup=1",
         "--inner_loops=1", "--quiet"]


def newer_than_sources(path):
    return os.path.isfile(path) and all(os.path.getmtime(path) >= os.path.getmtime(source)
                                        for source in SOURCES)


def bench_binary(scratch):
    """The path of a CPU ekv_bench, building one into SCRATCH when needed."""
    given = os.environ.get("EKV_BENCH")
    if given:
        return given
    made = os.path.join(ROOT, os.environ.get("BUILD", "build"), "ekv_bench_cpu")
    if newer_than_sources(made):
        return made
    target = os.path.join(scratch, "ekv_bench_cpu")
    if not newer_than_sources(target):
        compiler = os.environ.get("CXX", "c++")
        subprocess.run([compiler, "-O2", "-x", "c++", "-o", target,
                        os.path.join(ROOT, "bench", "main.cu")], check=True, cwd=ROOT)
    return target


def run_bench(binary, *flags, jsonl=None, small=True):
    """Runs ekv_bench with FLAGS (after SMALL unless small=False) and returns its
    results; with jsonl=PATH the results are appended there (--jsonl) as well."""
    arguments = [binary] + (SMALL if small else []) + list(flags) + ["--json"]
    if jsonl:
        arguments.append(f"--jsonl={jsonl}")
    done = subprocess.run(arguments, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(arguments)} exited {done.returncode}: "
                           f"{done.stderr.strip()}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def write_jsonl(path, records):
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("".join(json.dumps(record) + "\n" for record in records))
    return path
