#!/usr/bin/env python3
"""test_compare.py - tests for bench/compare.py on real and synthetic result files.

Run:  .venv/bin/python tests/py/test_compare.py
Real output comes from the CPU build of ekv_bench at small sizes (bench_fixture.py): an
A/A comparison of the same binary and configuration (runs interleaved, BASE NEW BASE
NEW ..., as compare.py's documentation advises on a shared machine), matching across
flags that do not change the workload, and the inference cycle. Synthetic samples, put
into a real result, give the cases whose answer must be known: a 1.5x slowdown, a drift
within the runs' own noise, a speedup. Prints one PASS/FAIL line per test and a final
"N passed, N failed"; exits 1 on any failure. Needs numpy (reference quantiles); no
pytest.
"""

import contextlib
import copy
import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_fixture import ROOT, bench_binary, run_bench, write_jsonl  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "bench"))
import compare  # noqa: E402

COMPARE = os.path.join(ROOT, "bench", "compare.py")
WORK = tempfile.mkdtemp(prefix="ekv_test_compare_")
BENCH = bench_binary(WORK)
TEMPLATE = run_bench(BENCH, "--reps=2")[0]  # a real result to put synthetic samples in
VERDICTS = ("slower", "faster", "same", "unclear")


def samples(rng, count=200, scale=1.0, noise=0.01):
    return [scale * rng.lognormvariate(0.0, noise) for _ in range(count)]


def result(sample_list, **configuration):
    record = copy.deepcopy(TEMPLATE)
    record["configuration"].update(configuration)
    record["samples_ms"] = list(sample_list)
    return record


def path(name):
    return os.path.join(WORK, name)


def run(*arguments):
    """compare.py's main() in this process: (status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = compare.main(list(arguments))
        except SystemExit as done:  # argparse: --help, usage errors
            code = done.code
    return code, out.getvalue(), err.getvalue()


def rows(stdout):
    """The table rows of the text output, each split into cells (by runs of 2+ spaces)."""
    return [re.split(r"\s{2,}", line.strip()) for line in stdout.splitlines()
            if line.split() and line.split()[-1] in VERDICTS and "compared:" not in line]


def verdicts(stdout):
    return [row[-1] for row in rows(stdout)]


def pair(name, base_samples, new_samples):
    return (write_jsonl(path(name + "_base.jsonl"), [result(base_samples)]),
            write_jsonl(path(name + "_new.jsonl"), [result(new_samples)]))


# ---------------------------------------------------------------- real output

def test_aa_same_binary_and_configuration_does_not_flag():
    # a shared machine drifts: compare.py's own docstring measures about 1 false flag in 30
    # A/A comparisons, so one flag may be chance. Up to three fresh A/A comparisons; the
    # test fails when every one flags (a rule that always flags still fails), about p^3
    # by chance.
    flags = ["--reps=30", "--warmup=3", "--inner_loops=2"]
    outputs = []
    for attempt in range(3):
        base, new = path(f"aa_base_{attempt}.jsonl"), path(f"aa_new_{attempt}.jsonl")
        for _ in range(5):  # interleaved, so that both sides see the same machine
            run_bench(BENCH, *flags, jsonl=base)
            run_bench(BENCH, *flags, jsonl=new)
        process = subprocess.run([sys.executable, COMPARE, base, new], capture_output=True,
                                 text=True, timeout=300)
        print("    " + process.stdout.replace("\n", "\n    ").rstrip())
        assert len(rows(process.stdout)) == 1, process.stdout
        assert "pooling" in process.stderr, process.stderr
        outputs.append(process.stdout)
        if verdicts(process.stdout)[0] in ("same", "unclear"):
            assert process.returncode == 0, (process.returncode, process.stderr)
            return
        # exit 1 only for a slowdown
        assert process.returncode == int(verdicts(process.stdout)[0] == "slower"), \
            (process.returncode, process.stderr)
    raise AssertionError("every A/A comparison flagged a difference:\n" + "\n".join(outputs))


def test_flags_that_do_not_change_the_workload_match():
    base = run_bench(BENCH, "--label=first", "--peak-bw=50", "--backend=cpu", "--reps=6")
    assert run_bench(BENCH, "--label=second", "--backend=auto", "--reps=8", "--warmup=2",
                     f"--out={path('out.jsonl')}") == []  # --out: nothing on stdout
    new = compare.load_results(path("out.jsonl"))
    assert base[0]["configuration"]["peak_bw_override_gbs"] != \
        new[0]["configuration"]["peak_bw_override_gbs"]
    code, out, err = run(write_jsonl(path("flags_base.jsonl"), base),
                         write_jsonl(path("flags_new.jsonl"), new))
    assert code in (0, 1), (code, err)
    assert len(rows(out)) == 1 and "only in" not in out, out
    assert "measured differently: reps 6 -> 8; warmup 1 -> 2" in out, out


def test_workload_change_does_not_match():
    base = run_bench(BENCH)
    new = run_bench(BENCH, "--seq=128")
    code, _, err = run(write_jsonl(path("seq_base.jsonl"), base),
                       write_jsonl(path("seq_new.jsonl"), new))
    assert code == 2 and "no workload" in err, (code, err)


def test_cycle_variant_all_matches_single_variants():
    small = ["--inference", "--seq=64", "--decode_tokens=3", "--layers=2", "--reps=3"]
    everything = run_bench(BENCH, *small, "--variant=all")
    some = run_bench(BENCH, *small, "--variant=cache,elastic")
    code, out, err = run(write_jsonl(path("all.jsonl"), everything),
                         write_jsonl(path("some.jsonl"), some))
    assert code in (0, 1), (code, err)
    assert len(rows(out)) == 2, out
    assert "4 only in BASE" in out, out
    named = [row[0] for row in rows(out)]
    assert any("variant=cache" in name for name in named), named
    # the same unit on both sides: whole cycles, not one side per step
    ratios = [float(row[5].rstrip("*")) for row in rows(out)]
    assert all(0.1 < ratio < 10 for ratio in ratios), out


# ---------------------------------------------------------------- the rule (synthetic)

def test_slowdown_by_1_5_is_flagged():
    rng = random.Random(1)
    base = samples(rng, noise=0.03)
    code, out, err = run(*pair("slow", base, [1.5 * x for x in base]))
    assert code == 1, (code, out, err)
    assert verdicts(out) == ["slower"], out
    assert "one run on a side" in out, out  # the caveat a single run calls for


def test_faster_exits_0():
    rng = random.Random(2)
    code, out, _ = run(*pair("fast", samples(rng, noise=0.02), samples(rng, scale=0.8,
                                                                       noise=0.02)))
    assert code == 0 and verdicts(out) == ["faster"], out


def test_identical_distributions_are_same():
    rng = random.Random(3)
    code, out, _ = run(*pair("same", samples(rng), samples(rng)))
    assert code == 0 and verdicts(out) == ["same"], out


def test_drift_within_the_runs_noise_is_not_flagged():
    # 8% apart, each run with ~13% IQR/median: a neighbour's load, not the code
    rng = random.Random(4)
    base_path, new_path = pair("drift", samples(rng, noise=0.1),
                               samples(rng, scale=1.08, noise=0.1))
    code, out, _ = run(base_path, new_path)
    assert code == 0 and verdicts(out)[0] in ("same", "unclear"), out
    # without the noise allowance the same data is a slowdown: the allowance decides
    code, out, _ = run(base_path, new_path, "--noise-factor", "0")
    assert code == 1 and verdicts(out) == ["slower"], out


def test_two_speed_modes_are_not_a_change():
    # a shared core: samples switch between two speeds; the runs differ only in how
    # long they spent in each
    rng = random.Random(5)
    fast_first = samples(rng, 120, 1.0, 0.02) + samples(rng, 80, 1.6, 0.02)
    slow_first = samples(rng, 80, 1.0, 0.02) + samples(rng, 120, 1.6, 0.02)
    code, out, _ = run(*pair("modes", fast_first, slow_first))
    assert code == 0 and verdicts(out)[0] in ("same", "unclear"), out


def test_threshold_flag_changes_verdict():
    rng = random.Random(6)
    base = samples(rng, noise=0.01)
    base_path, new_path = pair("thresh", base, [1.10 * x for x in base])
    assert run(base_path, new_path)[0] == 1
    code, out, _ = run(base_path, new_path, "--threshold", "20")
    assert code == 0 and verdicts(out) == ["same"], out


def test_verdict_and_band_rules():
    assert compare.noise_band(0.05, 0.2, 0.02, 2) == 0.4
    assert compare.noise_band(0.001, 0.002, 0.02, 2) == 0.02
    assert compare.verdict((1.30, 1.40), 0.2) == "slower"
    assert compare.verdict((0.70, 0.80), 0.2) == "faster"        # 0.80 < 1/1.2
    assert compare.verdict((0.70, 0.85), 0.2) == "unclear"       # 0.85 > 1/1.2
    assert compare.verdict((0.90, 1.10), 0.2) == "same"
    assert compare.verdict((1.10, 1.30), 0.2) == "unclear"
    assert compare.verdict((1.19, 1.21), 0.2) == "unclear"


# ---------------------------------------------------------------- statistics

def test_median_percentile_spread_match_numpy():
    import numpy
    rng = random.Random(7)
    for count in (1, 2, 5, 10, 101):
        values = [rng.random() + 0.1 for _ in range(count)]
        assert abs(compare.median(values) - numpy.median(values)) < 1e-12
        for fraction in (0.025, 0.25, 0.5, 0.975):
            got = compare.percentile(sorted(values), fraction)
            assert abs(got - numpy.percentile(values, fraction * 100)) < 1e-12
        q1, q3 = numpy.percentile(values, [25, 75])
        assert abs(compare.relative_spread(values) - (q3 - q1) / numpy.median(values)) < 1e-12


def test_bootstrap_ci_contains_true_ratio():
    rng = random.Random(11)
    covered, trials = 0, 40
    for trial in range(trials):
        base = samples(rng, 60, 1.0, 0.05)
        new = samples(rng, 60, 1.05, 0.05)
        low, high = compare.bootstrap_ratio_ci(base, new, 1000, random.Random(trial))
        covered += low <= 1.05 <= high
    assert covered >= 34, f"the true ratio 1.05 inside only {covered}/{trials} CIs"


def test_seeded_output_is_reproducible():
    rng = random.Random(12)
    base, new = pair("repro", samples(rng, 50, noise=0.05), samples(rng, 50, 1.02, 0.05))
    first = run(base, new, "--seed", "5")
    assert first == run(base, new, "--seed", "5")
    assert first[1] != run(base, new, "--seed", "6")[1]


# ---------------------------------------------------------------- matching rules

def test_keys_a_workload_does_not_use_are_ignored():
    rng = random.Random(13)
    base = [result(samples(rng), policy="stride", sinks=4, observe=16, decode_tokens=64),
            result(samples(rng), policy="window", sinks=4)]
    new = [result(samples(rng), policy="stride", sinks=0, observe=3, decode_tokens=8),
           result(samples(rng), policy="window", sinks=0)]
    code, out, err = run(write_jsonl(path("unused_base.jsonl"), base),
                         write_jsonl(path("unused_new.jsonl"), new))
    assert code == 0, err
    assert len(rows(out)) == 1 and "policy=stride" not in out.split("only in")[-1], out
    assert "1 only in BASE" in out and "1 only in NEW" in out, out


def test_page_size_is_a_workload_key_and_absent_means_contiguous():
    rng = random.Random(15)
    old = result(samples(rng), policy="stride")
    old["configuration"].pop("page_size", None)  # a result from before --page-size
    base = [old, result(samples(rng), policy="window", page_size=16)]
    new = [result(samples(rng), policy="stride", page_size=0),
           result(samples(rng), policy="window", page_size=0)]
    code, out, err = run(write_jsonl(path("page_base.jsonl"), base),
                         write_jsonl(path("page_new.jsonl"), new))
    assert code == 0, err
    assert len(rows(out)) == 1 and "policy=stride" not in out.split("only in")[-1], out
    assert "1 only in BASE" in out and "1 only in NEW" in out, out


def test_cycle_compression_keys_apply_to_elastic_only():
    rng = random.Random(14)

    def cycle(variant, compression):
        record = result(samples(rng, 20), inference=True, variant=variant,
                        compression=compression, compress_every=compression)
        record["variant"] = variant
        record["inference_cycle"] = {"variant": variant, "samples_ms": samples(rng, 20)}
        return record
    base = [cycle("cache", 2), cycle("elastic", 2)]
    new = [cycle("cache", 4), cycle("elastic", 4)]
    code, out, err = run(write_jsonl(path("cc_base.jsonl"), base),
                         write_jsonl(path("cc_new.jsonl"), new))
    assert code == 0, err
    assert len(rows(out)) == 1 and "variant=cache" in rows(out)[0][0], out
    assert "1 only in BASE" in out and "1 only in NEW" in out, out


def test_build_identity_notes():
    rng = random.Random(15)
    same = samples(rng, 50)

    def built(compiler, optimized, commit):
        record = result(same)
        record["ekv_version"] = "0.1.1"
        record["build"].update({"compiler": compiler, "optimized": optimized,
                                "flags": "-O2", "git_commit": commit})
        return record
    base = write_jsonl(path("b_base.jsonl"), [built("g++ 12.2", True, "abc1234")])
    new = write_jsonl(path("b_new.jsonl"), [built("g++ 12.2", False, None)])
    code, out, _ = run(base, new)
    assert code == 0, out  # a note, not a failure
    assert "build differs: optimized true -> false; git_commit abc1234 -> null" in out, out
    code, out, _ = run(base, base)
    assert "build differs" not in out and "not recorded" not in out, out
    # ekv_bench records its build (build.compiler, ...): the real result carries it
    assert isinstance(TEMPLATE["build"]["compiler"], str) and "git_commit" in TEMPLATE["build"]
    # older files have no build identity: said once, and nothing breaks
    unrecorded = result(same)
    for name in ("compiler", "optimized", "flags", "git_commit"):
        del unrecorded["build"][name]
    old = write_jsonl(path("b_old.jsonl"), [unrecorded])  # ekv_version only
    assert TEMPLATE["ekv_version"] == "0.1.0"
    code, out, _ = run(old, new)
    assert code == 0 and re.search(r"build identity \(.*git_commit\) not recorded in BASE",
                                   out), out
    assert "build differs: ekv_version 0.1.0 -> 0.1.1" in out, out
    code, out, _ = run(old, old)
    assert code == 0 and "not recorded in either file" in out, out


def test_device_note():
    rng = random.Random(16)
    other = result(samples(rng, 30))
    other["gpu"]["name"] = "another CPU"
    code, out, _ = run(write_jsonl(path("d_base.jsonl"), [result(samples(rng, 30))]),
                       write_jsonl(path("d_new.jsonl"), [other]))
    assert code == 0 and "device differs" in out and "another CPU" in out, out


# ---------------------------------------------------------------- formats

def test_single_object_and_pooled_duplicates():
    rng = random.Random(17)
    base = path("object.json")
    with open(base, "w", encoding="utf-8") as handle:
        json.dump(result(samples(rng, 50)), handle)
    new = write_jsonl(path("dups.jsonl"), [result(samples(rng, 30)), result(samples(rng, 20))])
    code, out, err = run(base, new)
    assert code == 0 and "pooling" in err, (code, err)
    assert rows(out)[0][1:3] == ["50", "50"], out


def test_markdown_table_is_valid():
    rng = random.Random(18)
    configs = [(s, p) for s in (128, 256) for p in ("stride", "pool")]
    base = write_jsonl(path("md_base.jsonl"), [result(samples(rng), seq_len=s, policy=p)
                                               for s, p in configs])
    new = write_jsonl(path("md_new.jsonl"), [result(samples(rng, scale=1.5), seq_len=s,
                                                    policy=p) for s, p in configs])
    code, out, _ = run(base, new, "--markdown")
    assert code == 1
    lines = out.splitlines()
    table = [line for line in lines if line.startswith("|")]
    start = lines.index(table[0])
    assert lines[start - 1] == "", "a markdown table needs a blank line before it"
    assert lines[start:start + len(table)] == table, "table rows must be contiguous"
    columns = [len(re.findall(r"(?<!\\)\|", line)) - 1 for line in table]
    assert len(set(columns)) == 1 and columns[0] == 10, columns
    assert re.fullmatch(r"\|( :?-{3,}:? \|)+", table[1]), table[1]
    assert len(table) == 2 + len(configs)
    assert all(line.split("|")[-2].strip() == "slower" for line in table[2:])


def test_progress_and_few_samples():
    rng = random.Random(19)
    base = write_jsonl(path("many_base.jsonl"), [result(samples(rng, 6), seq_len=s)
                                                 for s in range(1, 26)])
    new = write_jsonl(path("many_new.jsonl"), [result(samples(rng, 6), seq_len=s)
                                               for s in range(1, 26)])
    code, out, err = run(base, new, "--resamples", "100")
    assert code in (0, 1) and "25/25" in err, err
    assert "fewer than 10 samples" in out, out


def test_help():
    process = subprocess.run([sys.executable, COMPARE, "--help"], capture_output=True,
                             text=True, timeout=60)
    assert process.returncode == 0
    for word in ("--threshold", "--noise-factor", "--resamples", "seq_len"):
        assert word in process.stdout, word


# ---------------------------------------------------------------- bad input

def expect_error(arguments, words):
    code, out, err = run(*arguments)
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for word in words:
        assert word in lines[0], (word, lines[0])


def good_file():
    return write_jsonl(path("good.jsonl"), [result(samples(random.Random(20), 20))])


def test_missing_file_exits_2():
    expect_error([good_file(), path("absent.json")], ["absent.json", "cannot read"])


def write_text(name, text):
    with open(path(name), "w", encoding="utf-8") as handle:
        handle.write(text)
    return path(name)


def test_unparseable_json_exits_2():
    good = good_file()
    expect_error([write_text("garbage.json", "{not json"), good],
                 ["garbage.json", "not valid JSON"])
    broken = write_text("broken.jsonl", json.dumps(result([1.0, 2.0])) + "\n{oops\n")
    expect_error([good, broken], ["broken.jsonl", "line 2"])
    expect_error([good, write_text("empty.json", "")], ["empty.json", "empty"])
    expect_error([good, write_text("scalar.json", "[1, 2]")],
                 ["scalar.json", "expected a JSON object"])


def test_missing_samples_exit_2():
    good = good_file()
    record = result([1.0])
    del record["samples_ms"]
    expect_error([good, write_jsonl(path("nosamples.jsonl"), [record])],
                 ["nosamples.jsonl", "samples_ms"])
    expect_error([good, write_jsonl(path("emptysamples.jsonl"), [result([])])],
                 ["samples_ms"])
    expect_error([good, write_jsonl(path("nullsample.jsonl"), [result([1.0, None])])],
                 ["samples_ms"])


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
