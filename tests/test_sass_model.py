"""tests/test_sass_model.py - tests/sass_model.py held to answers known by hand: load widths,
instruction classes and mma shapes; the control-flow graph, main-loop choice and the walk
of one iteration (BRA.DIV, an if/else, a loop exit, an out-of-line path) on a hand-written
SASS listing; bytes in flight; occupancy; the ceiling arithmetic; the threshold check
failing where it must; its dtype table against ekv.h; and, when nvcc and cuobjdump are
here, the kernels of tests/sass_fixtures/fixtures.cu compiled for sm_90 and sm_80, whose
loops were counted by hand from their SASS (nvcc 13.0): a copy (memory bound), an FMA
chain (FP32-pipe bound on sm_80; issue bound with the FMA pipe 94% as busy on sm_90) and
an exp2 loop (XU bound).

Run: python3 tests/test_sass_model.py   ($BUILD, default build/; $NVCC as
     tests/check_static.sh; the fixture part is skipped without nvcc or cuobjdump)
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import sass_model as sm  # noqa: E402

BUILD = os.environ.get("BUILD", os.path.join(ROOT, "build"))
passed = failed = skipped = 0


def report(name, ok, why=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"PASS {name}")
    else:
        failed += 1
        print(f"FAIL {name}: {why}")


def skip(name, why):
    global skipped
    skipped += 1
    print(f"SKIP {name}: {why}")


def close(a, b, tol):
    return a is not None and abs(a - b) <= tol


def instr(text, addr=0):
    return sm.Instr(addr, text)


# ---- widths, classes, shapes ---------------------------------------------------------

widths = {"LDG.E R0, desc[UR4][R2.64]": 4, "LDG.E.64.CONSTANT R2, desc[UR4][R4.64]": 8,
          "LDG.E.128.CONSTANT R4, desc[UR4][R8.64+0x10]": 16, "LDG.E.U8 R1, desc[UR4][R2.64]": 1,
          "LDG.E.S16 R1, desc[UR4][R2.64]": 2, "STG.E.128 desc[UR4][R2.64], R4": 16,
          "LDSM.16.M88.4 R4, [R2]": 16}
wrong = {t: sm.lane_bytes(instr(t)) for t, w in widths.items() if sm.lane_bytes(instr(t)) != w}
report("load and store widths from the SASS modifiers", not wrong, wrong)

classes = {"FFMA R1, R2, R3, R4": "fp32", "HADD2.F32 R59, -RZ, R16.H0_H0": "fp16x2",
           "IMAD.MOV.U32 R32, RZ, RZ, RZ": "imad", "LOP3.LUT R0, R1, 0x7f, RZ, 0xc0, !PT": "alu",
           "FMNMX R1, R2, R3, !PT": "alu", "MUFU.EX2 R1, R2": "xu", "I2F.S8 R1, R2": "xu",
           "SHFL.BFLY PT, R60, R55, 0x8, 0x1f": "shuffle", "LDG.E R1, desc[UR4][R2.64]": "lsu",
           "HMMA.16816.F32 R4, R8, R12, R4": "tensor", "BSSY B0, 0x100": "branch",
           "ULDC.64 UR4, c[0x0][0x208]": "uniform", "LDC R1, c[0x0][0x28]": "other",
           "UFOOBAR UR1, UR2": "uniform", "FOOBAR R1": "other"}
wrong = {t: sm.instr_class(instr(t)) for t, c in classes.items() if sm.instr_class(instr(t)) != c}
report("instruction classes", not wrong, wrong)

shapes = {"HMMA.16816.F32 R4, R8, R12, R4": 2048, "HMMA.1688.F32 R4, R8, R12, R4": 1024,
          "IMMA.16832.S8.S8 R4, R8, R12, R4": 4096, "HMMA.884.F32.F16 R4, R8, R12, R4": 256,
          "HGMMA.64x128x16.F32 R24, gdesc[UR4], R24": None}
wrong = {t: sm.mma_fmas(instr(t)) for t, n in shapes.items() if sm.mma_fmas(instr(t)) != n}
report("mma shapes (multiply-adds per warp instruction)", not wrong, wrong)

w, r = instr("@!P3 LDG.E.128.CONSTANT R20, desc[UR10][R54.64+-0x400]").registers()
w2, r2 = instr("SHFL.BFLY PT, R60, R55, 0x8, 0x1f").registers()
w3, r3 = instr("ISETP.GE.AND P0, PT, R64, R33, PT").registers()
w4, r4 = instr("STG.E.128 desc[UR4][R4.64], R8").registers()
report("registers written and read",
       (w, r, w2, r2, w3, r3, w4, r4) == ({20, 21, 22, 23}, {54, 55}, {60}, {55}, set(), {64, 33},
                                          set(), {4, 5, 8}),
       (w, r, w2, r2, w3, r3, w4, r4))

# ---- the control-flow graph and the walk, on a hand-written listing -------------------
#
# 0x00-0x20 prologue; loop header 0x30; a BRA.DIV at 0x60 to out-of-line code at 0x150
# that rejoins at 0x70; an if/else at 0x90 (fall-through 0xa0-0xc0 ends in BRA 0xe0,
# taken side 0xd0); a loop exit at 0xf0; the back edge at 0x110. A second loop without
# loads at 0x180-0x1e0, after the first, is larger but is not the token loop.
LISTING = """
	code for sm_90
		Function : toy_kernel
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   S2R R0, SR_TID.X ;
        /*0020*/                   ISETP.GE.AND P0, PT, R0, 0x10, PT ;
        /*0030*/                   LDG.E.128.CONSTANT R4, desc[UR4][R2.64] ;
        /*0040*/                   LDG.E R8, desc[UR4][R2.64+0x10] ;
        /*0050*/                   FADD R9, R4, R5 ;
        /*0060*/                   BRA.DIV UR5, 0x150 ;
        /*0070*/                   SHFL.BFLY PT, R10, R9, 0x1, 0x1f ;
        /*0080*/                   ISETP.NE.AND P1, PT, R8, 0x7f, PT ;
        /*0090*/              @!P1 BRA 0xd0 ;
        /*00a0*/                   FFMA R11, R10, R6, R7 ;
        /*00b0*/                   FFMA R11, R11, R6, R7 ;
        /*00c0*/                   BRA 0xe0 ;
        /*00d0*/                   MOV R11, 0x7fc00000 ;
        /*00e0*/                   IADD3 R2, P2, R2, 0x20, RZ ;
        /*00f0*/               @P0 BRA 0x140 ;
        /*0100*/                   ISETP.LT.AND P3, PT, R2, R12, PT ;
        /*0110*/               @P3 BRA 0x30 ;
        /*0120*/                   STG.E desc[UR4][R2.64], R11 ;
        /*0130*/                   BRA 0x180 ;
        /*0140*/                   EXIT ;
        /*0150*/                   WARPSYNC.COLLECTIVE R13, 0x170 ;
        /*0160*/                   SHFL.BFLY P4, R10, R9, R14, R15 ;
        /*0170*/                   BRA 0x70 ;
        /*0180*/                   FADD R20, R20, R21 ;
        /*0190*/                   FADD R20, R20, R21 ;
        /*01a0*/                   FADD R20, R20, R21 ;
        /*01b0*/                   FADD R20, R20, R21 ;
        /*01c0*/                   FADD R20, R20, R21 ;
        /*01d0*/                   ISETP.LT.AND P5, PT, R20, R21, PT ;
        /*01e0*/               @P5 BRA 0x180 ;
        /*01f0*/                   EXIT ;
"""
ins = sm.instructions(sm.parse_sass(LISTING)["sm_90"]["toy_kernel"])
cfg = sm.Cfg(ins)
loops = cfg.natural_loops()
headers = sorted(cfg.ins[cfg.blocks[h][0]].addr for h in loops)
report("natural loops: the token loop and the load-free loop; the out-of-line path "
       "jumping back (0x170 -> 0x70) is no loop", headers == [0x30, 0x180], [hex(h) for h in headers])
header, body, size, tails = sm.main_loop(cfg)
report("main loop: the larger loop with global loads, not the larger loop without",
       cfg.ins[cfg.blocks[header][0]].addr == 0x30, hex(cfg.ins[cfg.blocks[header][0]].addr))
path, branches = sm.walk_iteration(cfg, header, body)
addrs = [x.addr for x in path]
want = [0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90, 0xa0, 0xb0, 0xc0, 0xe0, 0xf0, 0x100, 0x110]
report("walk: falls through the if, skips its else and the out-of-line shuffle, stays in "
       "the loop, ends at the back edge", addrs == want, [hex(a) for a in addrs])
treat = [(b["address"], b["treatment"].split(":")[0]) for b in branches]
report("every conditional branch of the iteration listed with its treatment",
       treat == [("0x0060", "divergence check"), ("0x0090", "inside the loop"),
                 ("0x00f0", "leaves the loop"), ("0x0110", "back edge")], treat)
sides = branches[1]["sides"]
report("if/else sides counted to where they meet (taken 1, fall-through 3, at 0x00e0)",
       sides == {"taken": 1, "fall_through": 3, "meet": "0x00e0"}, sides)
report("all arms: the if and its else, without the out-of-line path (15 instructions)",
       sm.all_arms(cfg, header, body) == 15, sm.all_arms(cfg, header, body))

# ---- bytes in flight -------------------------------------------------------------------


def share(lines):
    return sm.max_in_flight([instr(t, 16 * i) for i, t in enumerate(lines)])


both = share(["LDG.E.128 R4, desc[UR4][R2.64]", "LDG.E.128 R8, desc[UR4][R2.64+0x10]",
              "FADD R0, R4, R8"])
serial = share(["LDG.E.128 R4, desc[UR4][R2.64]", "FADD R0, R4, R5",
                "LDG.E.128 R8, desc[UR4][R2.64+0x10]", "FADD R0, R8, R9"])
carried = share(["FADD R0, R4, R4", "LDG.E R8, desc[UR4][R2.64]", "FADD R1, R8, R8",
                 "LDG.E.128 R4, desc[UR4][R2.64+0x10]"])
cp_async = share(["LDGSTS.E.128 [R1], desc[UR4][R2.64]", "DEPBAR.LE SB0, 0x0",
                  "LDGSTS.E.128 [R1+0x10], desc[UR4][R2.64+0x10]", "DEPBAR.LE SB0, 0x0"])
report("in flight: both loads before either use = 1.0; load, use, load, use = 0.5; a load "
       "used in the next iteration = 512 of 640 bytes; cp.async ended by its DEPBAR = 0.5",
       (both, serial, carried, cp_async) == (1.0, 0.5, 0.8, 0.5), (both, serial, carried, cp_async))

# loads issued for a later iteration: one used in the iteration, one only after the back
# edge (register double-buffering), and cp.async (no register: always ahead)
ahead = sm.ahead_share([instr(t, 16 * i) for i, t in enumerate([
    "LDG.E.128 R4, desc[UR4][R2.64]", "FADD R0, R4, R5",
    "LDG.E.128 R8, desc[UR4][R2.64+0x10]", "FADD R1, R12, R13",
    "LDGSTS.E.128 [R1], desc[UR4][R2.64+0x20]"])])
report("issued ahead: of three 512-byte loads, the one used in the iteration is not (2/3)",
       close(ahead, 2 / 3, 1e-9), ahead)

# a warp-vote branch (the tensor-core kernel's rare rescale): skipped by a family that
# declares such branches rare, walked through otherwise
VOTING = """
	code for sm_90
		Function : toy_vote
        /*0000*/                   LDG.E R4, desc[UR4][R2.64] ;
        /*0010*/                   FSETP.GT.AND P0, PT, R4, R5, PT ;
        /*0020*/                   VOTE.ANY P0, P0 ;
        /*0030*/              @!P0 BRA 0x70 ;
        /*0040*/                   SHFL.BFLY PT, R6, R4, 0x4, 0x1f ;
        /*0050*/                   FMUL R7, R7, R6 ;
        /*0060*/                   FMUL R8, R8, R6 ;
        /*0070*/                   FADD R9, R9, R4 ;
        /*0080*/                   ISETP.LT.AND P1, PT, R9, R10, PT ;
        /*0090*/               @P1 BRA 0x0 ;
        /*00a0*/                   EXIT ;
"""
vins = sm.instructions(sm.parse_sass(VOTING)["sm_90"]["toy_vote"])
vcfg = sm.Cfg(vins)
vheader, vbody, _, _ = sm.main_loop(vcfg)
rare, rare_branches = sm.walk_iteration(vcfg, vheader, vbody, rare_votes=True)
plain, _ = sm.walk_iteration(vcfg, vheader, vbody)
report("a branch on VOTE.ANY: skipped (7 instructions) where the family declares it rare, "
       "walked through (10) otherwise",
       (len(rare), len(plain), rare_branches[0]["treatment"].split(":")[0]) == (7, 10, "warp-vote branch"),
       (len(rare), len(plain), rare_branches))

# what the model cannot count fails the check instead of counting as nothing
CALLING = """
	code for sm_90
		Function : toy_call
        /*0000*/                   LDG.E R4, desc[UR4][R2.64] ;
        /*0010*/                   CALL.REL.NOINC 0x50 ;
        /*0020*/                   ISETP.LT.AND P0, PT, R4, R5, PT ;
        /*0030*/               @P0 BRA 0x0 ;
        /*0040*/                   EXIT ;
        /*0050*/                   RET.REL.NODEC R2 0x0 ;
"""
toy_family = dict(family="toy", pattern=re.compile(r"^toy_call$"), decode=lambda m: dict(path="toy"),
                  label=lambda k: "toy", source=None, read_source=None, tile_for_group=None,
                  iteration=lambda facts, k: dict(tokens=1, ldg_lane_bytes=128, kv_bytes=128,
                                                  block_threads=128))
toy = sm.analyse("toy_call", sm.instructions(sm.parse_sass(CALLING)["sm_90"]["toy_call"]),
                 {"REG": 32}, toy_family, None, "sm_90")
report("a CALL inside the loop is a problem (its callee is not counted)",
       any("CALL" in p for p in toy["problems"]), toy["problems"])
# sm_80 leaves a loop whose back edge is unconditional with a predicated CALL.REL.NOINC
# to the convergence point after it: a break, not a call
BREAKING = """
	code for sm_80
		Function : toy_call
        /*0000*/                   LDG.E R4, desc[UR4][R2.64] ;
        /*0010*/                   ISETP.LT.AND P0, PT, R4, R5, PT ;
        /*0020*/               @P0 CALL.REL.NOINC 0x40 ;
        /*0030*/                   BRA 0x0 ;
        /*0040*/                   BSYNC B0 ;
        /*0050*/                   EXIT ;
"""
brk = sm.analyse("toy_call", sm.instructions(sm.parse_sass(BREAKING)["sm_80"]["toy_call"]),
                 {"REG": 32}, toy_family, None, "sm_80")
report("a predicated CALL out of a loop is its exit, not taken, and no problem",
       brk["instructions"] == 4 and not brk["problems"]
       and [b["treatment"].split(":")[0] for b in brk["branches"]] == ["predicated CALL out of the loop (a break)"],
       (brk.get("instructions"), brk["problems"], brk.get("branches")))

# ---- occupancy and the ceiling arithmetic ------------------------------------------------

occ = [sm.occupancy("sm_90", 72, 3104, 128), sm.occupancy("sm_90", 255, 17664, 128),
       sm.occupancy("sm_90", 32, 0, 128), sm.occupancy("sm_90", 32, 100000, 128),
       sm.occupancy("sm_89", 32, 0, 128)]
report("resident warps: 72 regs 28 (registers), 255 regs 8, 32 regs 64 (threads), 100 kB "
       "shared 8 (shared memory), sm_89 48 (threads)",
       occ == [(28, "registers"), (8, "registers"), (64, "threads"), (8, "shared memory"),
               (48, "threads")], occ)

h200 = sm.gpu_table(["H200"])
fake = dict(arch="sm_90", registers=255, shared_bytes=17664, block_threads=128,
            kv_bytes_per_iteration=4096, bytes_in_flight_per_warp=4096,
            pipe_slots={"issue": 1573, "fma": 965, "alu": 425})
sm.ceilings(fake, h200, 1000)
# by hand: 1573 / 4 = 393.25 clocks; 4096 / 393.25 = 10.416 B/clk/SM; H200 peak
# 4.8e12 / (132 x 1.98e9) = 18.365 B/clk/SM; 10.416 / 18.365 = 56.7 %
p = fake["per_gpu"]["H200"]
report("ceiling: issue bound, 10.4 B/clk/SM = 56.7% of H200",
       p["binding_pipe"] == "issue" and close(p["bytes_per_clock_per_sm"], 10.42, 0.01)
       and close(fake["ceiling_pct"]["H200"], 56.7, 0.05), p)
fake_latency = dict(fake, bytes_in_flight_per_warp=1024, pipe_slots={"issue": 301})
sm.ceilings(fake_latency, h200, 1000)
# by hand: 8 warps x 1024 B = 8192 B in flight / 1000 clocks = 8.19 B/clk = 44.6 %
q = fake_latency["per_gpu"]["H200"]
report("ceiling: latency bound when too few bytes are in flight (44.6%)",
       q["bound"] == "latency" and close(fake_latency["ceiling_pct"]["H200"], 44.6, 0.05), q)
fake_fast = dict(fake, pipe_slots={"issue": 301})
sm.ceilings(fake_fast, h200, 1000)
report("ceiling capped at 100% (DRAM bound)",
       fake_fast["ceiling_pct"]["H200"] == 100.0 and fake_fast["per_gpu"]["H200"]["bound"] == "DRAM",
       fake_fast["per_gpu"]["H200"])

# ---- the threshold check -----------------------------------------------------------------

tmp = tempfile.mkdtemp(prefix="ekv_sass_")


def run_check(kernels, unknown, minimum):
    path = os.path.join(tmp, "thresholds.json")
    with open(path, "w") as f:
        json.dump({"gpu": "H200", "min_ceiling_pct": minimum}, f)
    return [(ok, what) for ok, what, _ in sm.check(kernels, unknown, path, "H200")]


good = dict(label="f16 D=128 tile 8", problems=[], ceiling_pct={"H200": 56.7})
res = run_check([good], [], {"f16 D=128 tile 8": 56})
report("check passes at or above every threshold", all(ok for ok, _ in res), res)
res = run_check([good], [], {"f16 D=128 tile 8": 57})
report("check fails below a threshold", not res[-1][0], res)
res = run_check([good], [], {})
report("check fails on a kernel without a threshold", not res[-1][0], res)
res = run_check([good], [], {"f16 D=128 tile 8": 56, "f16 D=64 tile 8": 50})
report("check fails on a threshold without a kernel", not res[-1][0], res)
res = run_check([dict(good, problems=["SASS loads 4096 lane bytes, the source 4608"])], [],
                {"f16 D=128 tile 8": 56})
report("check fails when the SASS bytes disagree with the source", not res[0][0], res)
res = run_check([good], ["_Z20my_attention_mma_kernelv"], {"f16 D=128 tile 8": 56})
report("check fails on an attention kernel no family recognises", not res[1][0], res)
res = run_check([], [], {})
report("check fails when no kernel was found", not res[-1][0], res)
heavy = dict(good, registers=168, spill_bytes=0, path="tensor-core", ahead_share=0.4)
path = os.path.join(tmp, "limits.json")
with open(path, "w") as f:
    json.dump({"gpu": "H200", "min_ceiling_pct": {"f16 D=128 tile 8": 56},
               "min_issued_ahead_pct": {"tensor-core": 50}}, f)
res = [(ok, what) for ok, what, _ in sm.check([heavy], [], path, "H200")]
report("check fails above 128 registers and below the issued-ahead share of the path",
       [ok for ok, what in res if what.startswith("at most 128 registers")] == [False]
       and [ok for ok, what in res if what.startswith("loads issued ahead")] == [False], res)

# ---- what the model reads from the source ------------------------------------------------

facts = sm.read_cuda_core_source(os.path.join(ROOT, "ekv_cuda.cuh"))
names = sorted(facts["storage"])
report("ekv_cuda.cuh: storage constants of all six dtypes, warps, group tile, elements per lane",
       names == sorted(sm.DTYPE_ENUM) and all(facts[k] > 0 for k in ("warps", "group_tile", "elements_per_lane")),
       facts)
toy = dict(storage={"f16": (16, 4, 4), "int4": (4, 8, 4)}, elements_per_lane=8, warps=4, group_tile=8)
f16 = sm.cuda_core_iteration(toy, dict(dtype="f16", head_dim=128, tile=1))
int4 = sm.cuda_core_iteration(toy, dict(dtype="int4", head_dim=128, tile=8))
# by hand: f16 D=128: 16 lanes a row, 2 rows a step, 4 steps = 8 tokens of 2 x 256 B;
# lanes: 4 steps x 32 x (2 x 16 + 4 bias) = 4608. int4 tile 8: 4 steps x 2 rows = 8
# tokens of 2 x (64 + 16) B; lanes: 4 x 32 x (2 x (4 + 4) + 4) = 2560
report("bytes per iteration from the source constants (f16 tile 1, int4 tile 8)",
       (f16["tokens"], f16["ldg_lane_bytes"], f16["kv_bytes"], int4["tokens"],
        int4["ldg_lane_bytes"], int4["kv_bytes"]) == (8, 4608, 4096, 8, 2560, 1280), (f16, int4))
with open(os.path.join(ROOT, "ekv_cuda.cuh"), encoding="utf-8") as f:
    source = f.read()
broken = os.path.join(tmp, "ekv_cuda.cuh")
with open(broken, "w", encoding="utf-8") as f:
    f.write(source.replace("LANES_PER_ROW = HEAD_DIM / 8", "LANES_PER_ROW = HEAD_DIM >> 3"))
try:
    sm.read_cuda_core_source(broken)
    report("a source the model cannot read is an error, not a guess", False, "no SourceError")
except sm.SourceError as e:
    report("a source the model cannot read is an error, not a guess", True)

mma_facts = sm.read_mma_source(os.path.join(ROOT, "ekv_cuda.cuh"))
report("ekv_cuda.cuh: tensor-core fragments of the five dtypes but f32, spans, tiles",
       sorted(mma_facts["fragments"]) == sorted(set(sm.DTYPE_ENUM) - {"f32"})
       and mma_facts["fragments"]["int8"]["row_scale"] == 1 and mma_facts["fragments"]["int4"]["group_scale"] == 1
       and mma_facts["span"] > mma_facts["span_16bit"] > 0 and mma_facts["heads_small"] == 8, mma_facts)
# by hand, with spans 1024 / 512: int4 D=128 8 heads: one warp, 128 elements; per lane K
# 2 rows x 4 words, V 4 rows x 2 words, (scale, zero) 2 + 4 words, bias 2 words:
# 4 x (8 + 8 + 6 + 2) = 96 bytes, x 32 = 3072; KV 16 tokens x 2 x (64 + 16) = 2560.
# f16 D=128 8 heads: 1024 > 512, two warps of 64: K 2 x 8 words, V 4 x 4, bias 2:
# 4 x 34 x 32 = 4352; KV 16 x 2 x 256 / 2 = 4096
toy_mma = dict(mma_facts, span=1024, span_16bit=512, warps=4)
i4 = sm.mma_iteration(toy_mma, dict(dtype="int4", head_dim=128, tile=8))
f16m = sm.mma_iteration(toy_mma, dict(dtype="f16", head_dim=128, tile=8))
report("tensor-core bytes per iteration from the source constants (int4 and f16, D=128, 8 heads)",
       (i4["slices"], i4["ldg_lane_bytes"], i4["kv_bytes"], f16m["slices"], f16m["ldg_lane_bytes"],
        f16m["kv_bytes"]) == (1, 3072, 2560, 2, 4352, 4096), (i4, f16m))
rule = [sm.tensor_cores(mma_facts, d, a) for d, a in
        (("f32", "sm_90"), ("int4", "sm_80"), ("fp8", "sm_80"), ("fp8", "sm_89"), ("f16", "sm_75"))]
report("dispatch rule read from ekv_cuda__tensor_cores: f32 never, int4 from sm_80, fp8 from "
       "sm_89, nothing on sm_75", rule == [False, True, False, True, False], rule)
with open(broken, "w", encoding="utf-8") as f:
    f.write(source.replace("arch >= (dtype == EKV_DTYPE_FP8 ? 890 : 800)", "arch >= 800"))
try:
    sm.read_mma_source(broken)
    report("a changed dispatch rule is an error until the model learns it", False, "no SourceError")
except sm.SourceError:
    report("a changed dispatch rule is an error until the model learns it", True)
empty = dict(label="f16 D=128 tile 1", dtype="f16", problems=["no loop with global loads"])
looped = dict(label="f16 D=128 tile 4", dtype="f16", problems=[], loop={}, _path=[])
served = dict(label="f32 D=128 tile 1", dtype="f32", problems=[])
for k in (empty, looped, served):
    sm.dispatched(k, sm.KERNEL_FAMILIES[0], mma_facts, "sm_90")
report("a kernel never launched on the arch must be empty: then no problem; with a main loop, "
       "a problem; a served one stays dispatched",
       (empty["dispatched"], empty["problems"], looped["dispatched"], bool(looped["problems"]),
        served["dispatched"]) == (False, [], False, True, True), (empty, looped, served))

cc = shutil.which("cc") or shutil.which("gcc")
if cc:
    prog = os.path.join(tmp, "rows.c")
    with open(prog, "w") as f:
        f.write('#define EKV_IMPLEMENTATION\n#include "ekv.h"\n#include <stdio.h>\n'
                "int main(void) { int t, d; for (t = 0; t < EKV_DTYPE_COUNT; t++) for (d = 64; d <= 256; d *= 2)\n"
                '  printf("%d %s %d %zu\\n", t, ekv_dtype_name((ekv_dtype)t), d,\n'
                "         ekv_dtype_row_bytes((ekv_dtype)t, d) + ekv_dtype_row_scale_bytes((ekv_dtype)t, d));\n"
                "  return 0; }\n")
    exe = os.path.join(tmp, "rows")
    out = subprocess.run([cc, "-std=c99", "-O0", "-I", ROOT, prog, "-o", exe, "-lm"],
                         capture_output=True, text=True)
    if out.returncode != 0:
        report("dtype table agrees with ekv.h", False, out.stderr[-500:])
    else:
        rows = [line.split() for line in subprocess.run([exe], capture_output=True, text=True).stdout.split("\n") if line]
        bad = [r for r in rows if sm.DTYPES[int(r[0])][0] != r[1]
               or sm.row_bytes(r[1], int(r[2])) != int(r[3])]
        report("dtype table (enum values, names, row bytes with scales) agrees with ekv.h",
               len(rows) == 18 and not bad, bad or len(rows))
else:
    skip("dtype table agrees with ekv.h", "no C compiler")

# ---- hand-counted fixture kernels ---------------------------------------------------------


def fixture_iteration(lane_bytes):
    # one element per lane per iteration: lane_bytes x 32, all distinct
    return lambda facts, k: dict(tokens=32, ldg_lane_bytes=lane_bytes * 32, kv_bytes=lane_bytes * 32,
                                 block_threads=128)


def fixture_family(claims):
    return dict(family="fixtures", pattern=re.compile(r"^sass_fixture_(?P<name>copy|fma|exp2)$"),
                decode=lambda m: dict(name=m["name"], path="fixture"), label=lambda k: k["name"],
                source=None, read_source=None,
                iteration=lambda facts, k: fixture_iteration(claims[k["name"]])(facts, k),
                tile_for_group=None)


# by hand from the listings (loop bodies: sm_90 copy 0x0d0-0x130, fma 0x180-0x5c0, exp2
# 0x110-0x440; sm_80 copy 0x070-0x0f0, fma 0x120-0x580, exp2 0x0c0-0x410)
HAND = {
    "sm_90": {
        "copy": dict(instructions=7, counts=dict(imad=2, lsu=2, alu=2, branch=1), ldg=512, stg=512),
        "fma": dict(instructions=69, counts=dict(fp32=64, imad=1, lsu=1, alu=2, branch=1), ldg=128, stg=0),
        "exp2": dict(instructions=52, counts=dict(fp32=31, xu=16, imad=1, lsu=1, alu=2, branch=1), ldg=128, stg=0),
    },
    "sm_80": {
        "copy": dict(instructions=9, counts=dict(fp16x2=1, imad=3, lsu=2, alu=2, branch=1), ldg=512, stg=512),
        "fma": dict(instructions=71, counts=dict(fp32=64, fp16x2=1, imad=2, lsu=1, alu=2, branch=1), ldg=128, stg=0),
        "exp2": dict(instructions=54, counts=None, xu=16, ldg=128, stg=0),
    },
}
# on the GPU of the same arch: (bound, binding pipe, busiest pipe, ceiling %), by hand:
# sm_90 copy: LDG.128 + STG.128 = 8 L1 wavefronts -> 64 B/clk, over H200's 18.37: 100%;
# fma: 69 / 4 = 17.25 issue clocks (FMA pipe 65 / 4 = 16.25) -> 128 / 17.25 = 7.42 B/clk
# = 40.4%; exp2: 16 MUFU / 0.5 = 32 clocks -> 4 B/clk = 21.8%. sm_80 fma: (64 FFMA + 2
# IMAD) / 2 = 33 clocks -> 3.88 B/clk over A100's 13.39 = 29.0%.
BOUND = {
    ("sm_90", "copy"): ("DRAM", "lsu", "lsu", 100.0),
    ("sm_90", "fma"): ("issue", "issue", "fma", 40.4),
    ("sm_90", "exp2"): ("xu", "xu", "xu", 21.8),
    ("sm_80", "fma"): ("fma", "fma", "fma", 29.0),
}

nvcc = os.environ.get("NVCC") or shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
tools = subprocess.run([os.path.join(HERE, "sass_tools.sh")], capture_output=True, text=True,
                       env=dict(os.environ, NVCC=nvcc, BUILD=BUILD), cwd=ROOT)
cuobjdump = tools.stdout.strip()
if not os.path.exists(nvcc) or tools.returncode != 0 or not cuobjdump:
    skip("fixture kernels", f"needs nvcc and cuobjdump: {tools.stderr.strip() or nvcc + ' missing'}")
else:
    outdir = os.path.join(BUILD, "sass_fixtures")
    os.makedirs(outdir, exist_ok=True)
    claims = {"copy": 16, "fma": 4, "exp2": 4}
    for arch in ("sm_90", "sm_80"):
        cubin = os.path.join(outdir, f"fixtures_{arch}.cubin")
        build = subprocess.run([nvcc, f"-arch={arch}", "-cubin", "-o", cubin,
                                os.path.join(HERE, "sass_fixtures", "fixtures.cu")],
                               capture_output=True, text=True)
        if build.returncode != 0:
            report(f"fixtures build for {arch}", False, build.stderr[-800:])
            continue
        gpus = sm.gpu_table(["H200" if arch == "sm_90" else "A100 80GB"])
        kernels, unknown = sm.model(cubin, arch, cuobjdump, ROOT, gpus, sm.LOADED_LATENCY_CYCLES,
                                    families=[fixture_family(claims)])
        by = {k["label"]: k for k in kernels}
        report(f"{arch}: three fixture kernels found, and the attention-like stub reported "
               f"as unrecognised", sorted(by) == ["copy", "exp2", "fma"]
               and unknown == ["sass_fixture_attention_stub"], (sorted(by), unknown))
        for name, want in HAND[arch].items():
            k = by.get(name)
            if k is None:
                report(f"{arch} {name}", False, "not found")
                continue
            got = {c: n for c, n in k["counts"].items() if n}
            counts_ok = got == want["counts"] if want["counts"] else got.get("xu") == want["xu"]
            report(f"{arch} {name}: {want['instructions']} instructions per iteration, by class "
                   f"as counted by hand", k["instructions"] == want["instructions"] and counts_ok,
                   (k["instructions"], got))
            report(f"{arch} {name}: {want['ldg']} bytes loaded and {want['stg']} stored per "
                   f"iteration, agreeing with the source", k["ldg_lane_bytes_sass"] == want["ldg"]
                   and k["store_bytes_per_iteration"] == want["stg"] and k["bytes_agree"],
                   (k["ldg_lane_bytes_sass"], k["store_bytes_per_iteration"], k["problems"]))
            if (arch, name) in BOUND:
                bound, binding, busiest, pct = BOUND[(arch, name)]
                p = k["per_gpu"][gpus[0]["name"]]
                got = (p["bound"], p["binding_pipe"], p["busiest_pipe"], k["ceiling_pct"][gpus[0]["name"]])
                report(f"{arch} {name}: bound by {bound} (pipe {binding}, busiest {busiest}), "
                       f"ceiling {pct}% of {gpus[0]['name']}",
                       got[:3] == (bound, binding, busiest) and close(got[3], pct, 0.05), got)
        if arch == "sm_90":
            fma = by["fma"]["per_gpu"]["H200"]["pipe_cycles"]
            report("sm_90 fma: the FMA pipe is at least 90% as busy as issue",
                   fma["fma"] >= 0.9 * fma["issue"], fma)
            liars, _ = sm.model(cubin, arch, cuobjdump, ROOT, gpus, sm.LOADED_LATENCY_CYCLES,
                                families=[fixture_family(dict(claims, copy=8))])
            liar = next(k for k in liars if k["label"] == "copy")
            report("a source that claims 8-byte loads where the SASS has 16 disagrees",
                   not liar["bytes_agree"] and liar["problems"], liar["problems"])
    # the command line in-process, with the fixture family added to the model's table
    import contextlib
    import io
    sm.KERNEL_FAMILIES.append(fixture_family(claims))
    cubin90 = os.path.join(outdir, "fixtures_sm_90.cubin")
    json_path = os.path.join(tmp, "model.json")
    outs = []
    for argv in (["--arch", "sm_90", "--cuobjdump", cuobjdump, "--branches", "--json", json_path, cubin90],
                 ["--arch", "sm_90", "--cuobjdump", cuobjdump, "--listing", "fma", cubin90]):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            status = sm.main(argv)
        outs.append((status, buf.getvalue()))
    sm.KERNEL_FAMILIES.pop()
    with open(json_path) as f:
        objects = json.load(f)
    keys = {"label", "instructions", "counts", "binding_pipe", "ceiling_pct", "kv_bytes_per_iteration",
            "ldg_lane_bytes_sass", "ldg_lane_bytes_source", "registers", "branches"}
    report("command line: --json writes one object per kernel with counts, binding pipe and "
           "ceiling per GPU", outs[0][0] == 0 and len(objects) == 3
           and all(keys <= set(o) and set(o["ceiling_pct"]) == {g[0] for g in sm.GPUS} for o in objects),
           [sorted(keys - set(o)) for o in objects])
    report("command line: --branches lists each branch of the loop with its treatment",
           "`@!P0 BRA 0x180`: back edge: taken" in outs[0][1], outs[0][1][-800:])
    lines = [line for line in outs[1][1].splitlines() if re.match(r"^[0-9a-f]{6}  ", line)]
    report("command line: --listing prints the 69 walked instructions of the fma loop",
           outs[1][0] == 0 and len(lines) == 69 and sum("FFMA" in line for line in lines) == 64,
           len(lines))
    cli = subprocess.run([sys.executable, os.path.join(HERE, "sass_model.py"), "--arch", "sm_90",
                          "--cuobjdump", cuobjdump, "--check", os.path.join(HERE, "sass_thresholds.json"),
                          os.path.join(outdir, "fixtures_sm_90.cubin")], capture_output=True, text=True)
    report("command line: a binary whose only attention-like kernel is unknown fails --check",
           cli.returncode == 1 and "FAIL every attention-like kernel is recognised" in cli.stdout
           and "sass_fixture_attention_stub" in cli.stdout, cli.stdout[-600:] + cli.stderr[-300:])

shutil.rmtree(tmp, ignore_errors=True)
tail = f", {skipped} skipped" if skipped else ""
print(f"{passed} passed, {failed} failed{tail}")
sys.exit(1 if failed else 0)
