#!/usr/bin/env python3
"""test_compare.py - tests for bench/compare.py on synthetic result files.

Run:  .venv/bin/python tests/py/test_compare.py
Prints one PASS/FAIL line per test and a final "N passed, N failed"; exits 1 on any
failure. Needs scipy (reference Mann-Whitney U); no pytest.
"""

import json
import os
import random
import shutil
import re
import subprocess
import sys
import tempfile
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMPARE = os.path.join(ROOT, "bench", "compare.py")
sys.path.insert(0, os.path.join(ROOT, "bench"))
import compare  # noqa: E402

WORK = tempfile.mkdtemp(prefix="ekv_test_compare_")


def samples(rng, count=200, scale=1.0, noise=0.01):
    return [scale * rng.lognormvariate(0.0, noise) for _ in range(count)]


def result(sample_list, seq_len=1024, policy="stride", backend="cuda", **configuration):
    base = {"seq_len": seq_len, "batch": 1, "heads": 16, "kv_heads": 16, "head_dim": 64,
            "compression": 2, "kv_dtype": "f16", "policy": policy, "reps": len(sample_list),
            "warmup": 20, "inner_loops": 64, "seed": 1, "label": None}
    base.update(configuration)
    return {"schema_version": 1, "backend": backend, "variant": None,
            "configuration": base, "results": {"attention_time_ms": None},
            "samples_ms": sample_list}


def write(name, records, form="jsonl"):
    path = os.path.join(WORK, name)
    with open(path, "w", encoding="utf-8") as handle:
        if form == "jsonl":
            handle.write("\n".join(json.dumps(r) for r in records) + "\n")
        elif form == "list":
            json.dump(records, handle)
        elif form == "object":
            json.dump(records[0], handle)
        else:
            handle.write(records)
    return path


def run(*arguments):
    process = subprocess.run([sys.executable, COMPARE, *arguments], capture_output=True,
                             text=True, timeout=300)
    return process.returncode, process.stdout, process.stderr


def verdicts(stdout):
    """Verdict per row of the text table, in order."""
    words = ("faster", "slower", "same", "noisy")
    return [line.split()[-1] for line in stdout.splitlines()
            if line.split() and line.split()[-1] in words and "compared:" not in line]


def pair(name, base_scale, new_scale, noise=0.01, count=200, seed=0):
    rng = random.Random(seed)
    base = write(name + "_base.jsonl", [result(samples(rng, count, base_scale, noise))])
    new = write(name + "_new.jsonl", [result(samples(rng, count, new_scale, noise))])
    return base, new


# ---------------------------------------------------------------- verdicts

def test_identical_distributions_are_same():
    code, out, err = run(*pair("same", 1.0, 1.0))
    assert code == 0, (code, err)
    assert verdicts(out) == ["same"], out


def test_ten_percent_slower_exits_1():
    code, out, err = run(*pair("slower", 1.0, 1.10))
    assert code == 1, (code, err)
    assert verdicts(out) == ["slower"], out


def test_ten_percent_faster_exits_0():
    code, out, err = run(*pair("faster", 1.0, 0.90))
    assert code == 0, (code, err)
    assert verdicts(out) == ["faster"], out


def test_huge_noise_is_noisy():
    code, out, err = run(*pair("noisy", 1.0, 1.0, noise=0.8, count=60))
    assert code == 0, (code, err)
    assert verdicts(out) == ["noisy"], out


def test_small_significant_change_is_same():
    # a real 0.5% shift with tiny noise is significant but inside the threshold
    code, out, err = run(*pair("small", 1.0, 1.005, noise=0.001))
    assert code == 0 and verdicts(out) == ["same"], out


def test_threshold_flag_changes_verdict():
    base, new = pair("thresh", 1.0, 1.10)
    code, out, _ = run(base, new, "--threshold", "20")
    assert code == 0 and verdicts(out) == ["same"], out


def test_verdict_rules():
    assert compare.verdict(10.0, (8.0, 12.0), 0.001, 2) == "slower"
    assert compare.verdict(-10.0, (-12.0, -8.0), 0.001, 2) == "faster"
    assert compare.verdict(10.0, (8.0, 12.0), 0.2, 2) == "noisy"      # not significant
    assert compare.verdict(1.5, (0.5, 2.5), 0.001, 2) == "noisy"      # change in threshold
    assert compare.verdict(3.0, (-1.0, 7.0), 0.01, 2) == "noisy"      # CI holds 0
    assert compare.verdict(0.1, (-1.9, 1.9), 0.5, 2) == "same"
    assert compare.verdict(0.1, (-1.9, 1.9), 0.001, 2) == "same"


# ---------------------------------------------------------------- statistics

def test_mann_whitney_matches_scipy():
    from scipy.stats import mannwhitneyu
    rng = random.Random(7)
    sets = [
        ([rng.gauss(0, 1) for _ in range(30)], [rng.gauss(0.5, 1) for _ in range(40)]),
        ([rng.randint(0, 5) for _ in range(25)], [rng.randint(1, 6) for _ in range(25)]),
        ([rng.randint(0, 2) for _ in range(50)], [rng.randint(0, 2) for _ in range(9)]),
        ([1.0] * 10 + [2.0] * 5, [1.0] * 8 + [3.0] * 8),
        ([float(i) for i in range(8)], [float(i) + 100 for i in range(8)]),
        ([rng.gauss(0, 1) for _ in range(200)], [rng.gauss(0, 1) for _ in range(200)]),
        ([round(rng.gauss(1, 0.01), 3) for _ in range(200)],
         [round(rng.gauss(1.002, 0.01), 3) for _ in range(150)]),
        ([4.0] * 12, [4.0] * 9),
    ]
    for first, second in sets:
        ours = compare.mann_whitney_p(first, second)
        reference = mannwhitneyu(first, second, alternative="two-sided",
                                 method="asymptotic", use_continuity=True).pvalue
        assert abs(ours - reference) <= 1e-9 * max(1.0, abs(reference)) + 1e-300, \
            (ours, reference, len(first), len(second))


def test_median_and_percentile_match_numpy():
    import numpy
    rng = random.Random(3)
    for count in (1, 2, 5, 10, 101):
        values = [rng.random() for _ in range(count)]
        assert abs(compare.median(values) - numpy.median(values)) < 1e-12
        for fraction in (0.025, 0.25, 0.5, 0.975):
            got = compare.percentile(sorted(values), fraction)
            assert abs(got - numpy.percentile(values, fraction * 100)) < 1e-12


def test_bootstrap_ci_contains_true_shift():
    rng = random.Random(11)
    covered = 0
    trials = 40
    for trial in range(trials):
        base = samples(rng, 60, 1.0, 0.05)
        new = samples(rng, 60, 1.05, 0.05)
        low, high = compare.bootstrap_change_ci(base, new, 1000, random.Random(trial))
        covered += low <= 5.0 <= high
    assert covered >= 34, f"true +5% shift inside only {covered}/{trials} CIs"
    code, out, _ = run(*pair("shift", 1.0, 1.05, noise=0.02))
    row = [line for line in out.splitlines() if "slower" in line.split()][0]
    low, high = map(float, re.search(r"\[([-+0-9.]+), ([-+0-9.]+)\]", row).groups())
    assert low <= 5.0 <= high, row


def test_seeded_output_is_reproducible():
    base, new = pair("repro", 1.0, 1.02, noise=0.05, count=50)
    first = run(base, new, "--seed", "5")
    assert first == run(base, new, "--seed", "5")
    assert first[1] != run(base, new, "--seed", "6")[1]


# ---------------------------------------------------------------- matching and formats

def test_matching_ignores_measurement_keys_and_lists_unmatched():
    rng = random.Random(5)
    base = write("match_base.jsonl", [
        result(samples(rng), 1024, reps=200, seed=1, label="a", warmup=10),
        result(samples(rng), 2048),
        result(samples(rng), 4096, backend="cpu"),
    ])
    new = write("match_new.json", [
        result(samples(rng), 1024, reps=100, seed=9, label="b", warmup=50,
               inner_loops=1, compression=2.0),
        result(samples(rng), 2048),
        result(samples(rng), 4096, backend="cuda"),
        result(samples(rng), 8192),
    ], form="list")
    code, out, err = run(base, new)
    assert code == 0, err
    assert len(verdicts(out)) == 2, out
    assert "1 only in BASE" in out and "2 only in NEW" in out, out
    assert "seq_len=8192" in out.split("only in NEW")[1], out


def test_single_object_and_pooled_duplicates():
    rng = random.Random(6)
    base = write("object.json", [result(samples(rng, 50))], form="object")
    new = write("dups.jsonl", [result(samples(rng, 30)), result(samples(rng, 20))])
    code, out, err = run(base, new)
    assert code == 0 and "pooling" in err, (code, err)
    row = [line for line in out.splitlines() if line.split()[-1:] == ["same"]][0]
    assert row.split()[1:3] == ["50", "50"], row


def test_markdown_table_is_valid():
    rng = random.Random(8)
    base = write("md_base.jsonl", [result(samples(rng), s, policy=p)
                                   for s in (1024, 4096) for p in ("stride", "pool")])
    new = write("md_new.jsonl", [result(samples(rng, scale=1.1), s, policy=p)
                                 for s in (1024, 4096) for p in ("stride", "pool")])
    code, out, _ = run(base, new, "--markdown")
    assert code == 1
    lines = out.splitlines()
    table = [line for line in lines if line.startswith("|")]
    start = lines.index(table[0])
    assert lines[start - 1] == "", "a markdown table needs a blank line before it"
    assert lines[start:start + len(table)] == table, "table rows must be contiguous"
    columns = [len(re.findall(r"(?<!\\)\|", line)) - 1 for line in table]
    assert len(set(columns)) == 1 and columns[0] == 9, columns
    assert re.fullmatch(r"\|( :?-{3,}:? \|)+", table[1]), table[1]
    assert len(table) == 2 + 4
    assert all(line.endswith("|") for line in table)
    assert all(line.split("|")[-2].strip() == "slower" for line in table[2:])


def test_progress_on_stderr_for_many_configurations():
    rng = random.Random(9)
    base = write("many_base.jsonl", [result(samples(rng, 6), s) for s in range(1, 26)])
    new = write("many_new.jsonl", [result(samples(rng, 6), s) for s in range(1, 26)])
    code, out, err = run(base, new, "--resamples", "100")
    assert code in (0, 1) and "25/25" in err, err
    assert "fewer than 8 samples" in out, out


def test_help():
    code, out, _ = run("--help")
    assert code == 0 and "--threshold" in out and "--resamples" in out


# ---------------------------------------------------------------- bad input

def expect_error(arguments, words):
    code, out, err = run(*arguments)
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for word in words:
        assert word in lines[0], (word, lines[0])


def test_missing_file_exits_2():
    good = pair("good", 1.0, 1.0, count=20)[0]
    expect_error([good, os.path.join(WORK, "absent.json")], ["absent.json", "cannot read"])


def test_unparseable_json_exits_2():
    good = pair("good", 1.0, 1.0, count=20)[0]
    expect_error([write("garbage.json", "{not json", form="raw"), good],
                 ["garbage.json", "not valid JSON"])
    broken = write("broken.jsonl", json.dumps(result([1.0, 2.0])) + "\n{oops\n", form="raw")
    expect_error([good, broken], ["broken.jsonl", "line 2"])
    expect_error([good, write("empty.json", "", form="raw")], ["empty.json", "empty"])
    expect_error([good, write("scalar.json", "[1, 2]", form="raw")],
                 ["scalar.json", "expected a JSON object"])


def test_missing_samples_exit_2():
    good = pair("good", 1.0, 1.0, count=20)[0]
    record = result([1.0])
    del record["samples_ms"]
    expect_error([good, write("nosamples.jsonl", [record])], ["nosamples.jsonl", "samples_ms"])
    expect_error([good, write("emptysamples.jsonl", [result([])])], ["samples_ms"])
    expect_error([good, write("nullsample.jsonl", [result([1.0, None])])], ["samples_ms"])


def test_no_common_configuration_exits_2():
    rng = random.Random(10)
    base = write("nc_base.jsonl", [result(samples(rng, 20), 1024)])
    new = write("nc_new.jsonl", [result(samples(rng, 20), 2048)])
    expect_error([base, new], ["matches"])


def main():
    tests = [(name, function) for name, function in globals().items()
             if name.startswith("test_") and callable(function)]
    passed = failed = 0
    for name, function in tests:
        try:
            function()
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
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
