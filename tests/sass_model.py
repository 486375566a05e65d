#!/usr/bin/env python3
"""tests/sass_model.py - the static throughput model: what each attention kernel's own
SASS permits, before any GPU has run it.

For every attention kernel instance in a cubin or executable it finds the main token loop
(the largest loop of the control-flow graph that holds the KV global loads), walks one
iteration along the common path, and counts issued instructions per class and per pipe,
the bytes the iteration loads from global memory (from the load widths, checked against
what the kernel source says it reads), registers, resident warps and bytes in flight. The
implied ceiling is bytes per clock per SM = bytes / max over pipes (instructions on the
pipe / pipe rate), capped by Little's law on the bytes in flight, and given as a share of
each listed GPU's peak DRAM bandwidth. It is an upper bound (no dependency stalls, no
cache misses beyond DRAM latency, no launch or tail effects), not a measurement.

Run: python3 tests/sass_model.py --arch sm_90 [--json FILE] [--check THRESHOLDS]
                                 [--branches] [--listing LABEL] BINARY
     BINARY: a cubin or executable built with -arch=sm_80, sm_89 or sm_90. Needs
     cuobjdump and nvdisasm (the toolkit's, or the NVIDIA wheels that tests/sass_tools.sh
     installs). Standard library only; tests/test_sass_model.py tests it.
"""
import argparse
import collections
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# ---- hardware ------------------------------------------------------------------------
#
# Rates are warp instructions per clock per SM. "doc" marks a documented figure, "assumed"
# one inferred or measured by others; the sources:
#   [PG]  CUDA C++ Programming Guide, "Arithmetic Instructions" table (results per clock
#         per SM, divided here by 32 lanes): FP32 add/mul/fma 64 (8.0) or 128 (8.6, 8.9,
#         9.0); 32-bit integer add, logic, shift, compare, min/max and integer multiply 64;
#         exp2/rcp/rsqrt/log2 16; "all other type conversions" 16; warp shuffle 32;
#         16-bit floating point 256 (8.0, 9.0).
#   [NC]  Nsight Compute Kernel Profiling Guide, "Pipelines": which pipe executes what
#         (alu: integer and logic except IMAD, compare/min/max/select, and fast
#         FP32-to-FP16 conversion; fma: FP32 and IMAD; xu: transcendentals and int<->float
#         conversions; lsu: loads, stores, shuffles, S2R; cbu: branches and barriers).
#   [NF]  NVIDIA developer forum, "Separate CUDA core pipeline for FP16 and FP32" (an
#         NVIDIA engineer's answer): GA100: FMA pipe = FP32 + IMAD, FP16 on the shared pipe
#         with tensor and FP64; GA10x and GH100: fmaheavy = FP32 + IMAD, fmalite = FP32,
#         FP16x2 issued to both.
#   [WP]  NVIDIA A100 / H100 / Ada whitepapers and datasheets (SM counts, clocks,
#         bandwidth, 4 SM sub-partitions each issuing one warp instruction per clock,
#         8 LD/ST units per sub-partition, L1 about 128 bytes per clock per SM).
# A pipe whose rate is not published (branch unit, uniform datapath, constant loads) is
# charged to issue only: optimistic, as an upper bound must be.
ARCHS = {
    "sm_80": dict(
        max_warps=64, max_blocks=32, regs=65536, smem=167936,  # [PG] technical specs
        rates={"issue": 4, "fma": 2, "fmaheavy": 2, "fp16": 4, "alu": 2, "xu": 0.5,
               "lsu": 1, "tensor": 1024},
        fp16_pipe="fp16", fp16_cost=1),
    "sm_89": dict(
        max_warps=48, max_blocks=24, regs=65536, smem=102400,
        rates={"issue": 4, "fma": 4, "fmaheavy": 2, "alu": 2, "xu": 0.5, "lsu": 1,
               "tensor": 512},
        # assumed: Ada's non-tensor FP16 rate equals its FP32 rate ([WP] Ada: RTX 4090
        # 82.6 TFLOPS for both), so an HFMA2 takes two FMA-pipe slots
        fp16_pipe="fma", fp16_cost=2),
    "sm_90": dict(
        max_warps=64, max_blocks=32, regs=65536, smem=233472,
        rates={"issue": 4, "fma": 4, "fmaheavy": 2, "alu": 2, "xu": 0.5, "lsu": 1,
               # assumed: mma.sync reaches about half of the wgmma peak of 2048 dense
               # FP16 FMA per clock per SM ([WP] H100: 989 TFLOPS dense FP16)
               "tensor": 1024},
        fp16_pipe="fma", fp16_cost=1),
}
RATE_NOTES = {
    "issue": "doc [WP]: 4 schedulers x 1 warp instruction per clock",
    "fma": "doc [PG]: FP32 64 (sm_80) or 128 (sm_89, sm_90) per clock; IMAD and (sm_89, "
           "sm_90) FP16x2 share it [NF]",
    "fmaheavy": "doc [PG]: integer multiply-add 64 per clock; IMAD only on fmaheavy [NF]",
    "fp16": "doc [PG]: FP16 256 results per clock (sm_80: its own pipe [NF])",
    "alu": "doc [PG]: integer add/logic/shift/compare/min/max 64 per clock; MOV, FSEL, "
           "FMNMX, FSETP, I2FP and F2FP placed here by [NC] (MOV and I2FP: assumed)",
    "xu": "doc [PG]: transcendentals and other conversions 16 per clock",
    "lsu": "assumed [WP]: 32 lanes per clock, L1 128 bytes per clock (an LDG.128 takes 4); "
           "[PG]: shuffle 32 per clock",
    "tensor": "assumed [WP]: dense FP16 FMA per clock per SM for mma.sync (sm_80 1024, "
              "sm_89 512, sm_90 1024 = half of wgmma); int8 at twice that",
}

# Peak DRAM bandwidth: documented (NVIDIA datasheets). SM counts: documented ([WP]; L40S:
# its datasheet's 18,176 CUDA cores / 128 per SM; H200: GH100 as in H100 SXM, assumed).
# Clocks: the maximum boost clock, so that the instruction rate, hence the ceiling, is an
# upper bound; NVIDIA's datasheets give none for H100 SXM, H200 and L40S, so those are the
# commonly listed maximum SM clocks (assumed).
GPUS = [
    # name, arch, SMs, boost MHz, peak GB/s, where the clock comes from
    ("H200", "sm_90", 132, 1980, 4800, "assumed: maximum SM clock of GH100 SXM boards"),
    ("H100 SXM", "sm_90", 132, 1980, 3350, "assumed: maximum SM clock of GH100 SXM boards"),
    ("A100 80GB", "sm_80", 108, 1410, 2039, "doc: A100 whitepaper boost clock"),
    ("L40S", "sm_89", 142, 2520, 864, "assumed: commonly listed maximum boost clock"),
]
# Loaded DRAM latency for Little's law, in SM clocks: assumed, not measured here.
# Pointer-chasing write-ups for A100 and H100 (e.g. Chips and Cheese, "Nvidia's H100:
# Funny L2, and Tons of Bandwidth", 2023) put unloaded HBM latency at several hundred
# cycles, and queueing near peak bandwidth raises it; 1000 cycles asks for generous bytes
# in flight. The first GPU session should measure it (--latency changes it).
LOADED_LATENCY_CYCLES = 1000
SMEM_RESERVED_PER_BLOCK = 1024  # [PG]: sm_80 and later reserve 1 KB per block


def gpu_table(names=None):
    out = []
    for name, arch, sms, mhz, gbs, clock_note in GPUS:
        if names and name not in names:
            continue
        out.append(dict(name=name, arch=arch, sms=sms, clock_hz=mhz * 1e6, peak_bytes_s=gbs * 1e9,
                        clock_note=clock_note,
                        peak_bytes_per_clock_per_sm=gbs * 1e9 / (sms * mhz * 1e6)))
    return out


# ---- instruction classes -------------------------------------------------------------
#
# Class = what the table counts; pipes = the resources it consumes (see pipe_costs).
CLASS_BY_BASE = {}
for _cls, _ops in {
    "fp32": "FFMA FADD FMUL FFMA32I FADD32I FMUL32I FSWZADD",
    "fp16x2": "HFMA2 HADD2 HMUL2 HMNMX2 HFMA2_32I HADD2_32I HMUL2_32I",
    "imad": "IMAD IMUL IMAD32I IMUL32I IDP IDP4A",
    "alu": "IADD3 IADD LOP3 LOP SHF SHL SHR ISETP ISCADD LEA SEL MOV MOV32I CS2R PRMT "
           "IMNMX IABS FMNMX FSEL FSET FSETP FCHK PLOP3 PSETP P2R R2P SGXT BMSK "
           "VIADD VIMNMX VIADDMNMX IADD32I LOP32I I2FP F2FP I2I I2IP VOTE VOTEU HSETP2 "
           "HSET2 FLO2 BMOV",
    "xu": "MUFU I2F F2I F2F FRND POPC FLO BREV",
    "shuffle": "SHFL",
    "lsu": "LDG STG LD ST LDS STS LDL STL LDSM STSM LDGSTS ATOM ATOMG ATOMS RED REDG "
           "S2R CCTL MEMBAR LDGDEPBAR",
    "tensor": "HMMA IMMA DMMA BMMA HGMMA IGMMA QGMMA",
    "branch": "BRA BRX JMP JMX CALL RET EXIT BSSY BSYNC BREAK WARPSYNC BAR BPT YIELD "
              "ENDCOLLECTIVE KILL NANOSLEEP DEPBAR ERRBAR ARRIVES SYNCS",
    "uniform": "ULDC UMOV UIADD3 ULOP3 USHF ULEA UISETP UIMAD USEL UPRMT UFLO UPOPC "
               "UBREV S2UR R2UR UPLOP3 USETMAXREG UBMSK ULEPC",
    "other": "LDC NOP DADD DFMA DMUL DSETP",
}.items():
    for _op in _ops.split():
        CLASS_BY_BASE.setdefault(_op, _cls)
CLASSES = ["fp32", "fp16x2", "alu", "imad", "xu", "shuffle", "lsu", "tensor", "branch",
           "uniform", "other"]
PIPES = ["issue", "fma", "fmaheavy", "fp16", "alu", "xu", "lsu", "tensor"]

LOAD_BASES = {"LDG", "LD", "LDGSTS"}  # global (LD: generic, assumed global)
STORE_BASES = {"STG", "ST"}
GLOBAL_BULK = {"UTMALDG", "UBLKCP", "UTMAPF"}  # TMA: bytes not in the instruction


def instr_class(ins):
    if ins.base in CLASS_BY_BASE:
        return CLASS_BY_BASE[ins.base]
    if ins.base.startswith("U"):
        return "uniform"
    return "other"


def lane_bytes(ins):
    """Bytes one lane moves with a load or store, from the width modifier."""
    mods = set(ins.mods)
    if ins.base == "LDSM" or ins.base == "STSM":
        return 4 * (4 if "4" in mods else 2 if "2" in mods else 1)
    for mod, size in (("128", 16), ("64", 8), ("U8", 1), ("S8", 1), ("U16", 2), ("S16", 2)):
        if mod in mods:
            return size
    return 4


def mma_fmas(ins):
    """Multiply-adds of one warp-wide mma.sync from its shape modifier (HMMA.16816 is
    m16 n8 k16, HMMA.884 m8 n8 k4); None when there is no such modifier."""
    for mod in ins.mods:
        if not mod.isdigit() or len(mod) < 3:
            continue
        for m_len in (2, 1):
            for n_len in (1, 2):
                m, n, k = mod[:m_len], mod[m_len:m_len + n_len], mod[m_len + n_len:]
                if k and int(m) in (8, 16) and int(n) in (8, 16) and int(k) in (4, 8, 16, 32, 64):
                    return int(m) * int(n) * int(k)
    return None


def pipe_costs(ins, cls, arch):
    """(pipe, slots) pairs one instruction takes, beyond its issue slot."""
    a = ARCHS[arch]
    if cls == "fp32":
        return [("fma", 1)]
    if cls == "fp16x2":
        return [(a["fp16_pipe"], a["fp16_cost"])]
    if cls == "imad":
        return [("fma", 1), ("fmaheavy", 1)]
    if cls == "alu":
        return [("alu", 1)]
    if cls == "xu":
        return [("xu", 1)]
    if cls == "shuffle":
        return [("lsu", 1)]
    if cls == "lsu":
        # L1 moves 128 bytes per clock: a warp's 16-byte loads take 4 wavefronts
        return [("lsu", max(1.0, 32 * lane_bytes(ins) / 128.0))]
    if cls == "tensor":
        fmas = mma_fmas(ins) or 0  # analyse() reports an mma it cannot size
        return [("tensor", fmas * (0.5 if ins.base == "IMMA" else 1.0))]  # rate: FMA per clock
    return []


# ---- kernel families -----------------------------------------------------------------
#
# One entry per kernel family: a pattern on the mangled name, how its template arguments
# decode, and what the source says one iteration of its main loop reads. A new kernel
# (the tensor-core path, a new name) gets an entry here; an attention kernel that matches
# none is reported, never skipped.
DTYPES = {
    # enum value (ekv_dtype): name, bits per element, per-row scale bytes as a function of
    # head_dim (ekv_dtype_row_scale_bytes: int8 one f32; int4 an f16 scale and zero point
    # per group of 32; fp8's scale is per head, outside the loop)
    0: ("f32", 32, lambda d: 0),
    1: ("f16", 16, lambda d: 0),
    2: ("bf16", 16, lambda d: 0),
    3: ("int8", 8, lambda d: 4),
    4: ("int4", 4, lambda d: 4 * ((d + 31) // 32)),
    5: ("fp8", 8, lambda d: 0),
}
DTYPE_ENUM = {name: (value, bits, scale) for value, (name, bits, scale) in DTYPES.items()}


def row_bytes(dtype, head_dim):
    """Stored bytes of one K or V row, scales included (ekv_dtype_row_bytes + _scale_bytes)."""
    _, bits, scale = DTYPE_ENUM[dtype]
    return head_dim * bits // 8 + scale(head_dim)


class SourceError(Exception):
    pass


def read_cuda_core_source(path):
    """The numbers of ekv_cuda.cuh that fix what one warp reads per iteration of the
    CUDA-core kernel: per dtype (bits, in_flight, in_flight_grouped) of
    ekv_cuda__storage<>, the elements per lane (LANES_PER_ROW = HEAD_DIM / n), warps per
    CTA and the group tile."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    facts = {"storage": {}}
    for m in re.finditer(r"struct ekv_cuda__storage<EKV_DTYPE_(\w+)>\s*\{(.*?)\n\};", text, re.S):
        e = re.search(r"enum\s*\{\s*bits\s*=\s*(\d+),\s*in_flight\s*=\s*(\d+),\s*"
                      r"in_flight_grouped\s*=\s*(\d+)\s*[,}]", m.group(2))
        if e:
            facts["storage"][m.group(1).lower()] = tuple(int(x) for x in e.groups())
    for key, pattern in (("elements_per_lane", r"LANES_PER_ROW\s*=\s*HEAD_DIM\s*/\s*(\d+)"),
                         ("warps", r"#define\s+EKV_CUDA__WARPS\s+(\d+)"),
                         ("group_tile", r"#define\s+EKV_CUDA__GROUP_TILE\s+(\d+)")):
        m = re.search(pattern, text)
        if not m:
            raise SourceError(f"{path}: no match for {pattern!r}; update read_cuda_core_source")
        facts[key] = int(m.group(1))
    if re.search(r"IN_FLIGHT\s*=\s*GROUP_TILE\s*==\s*1\s*\?\s*storage::in_flight\s*:\s*"
                 r"storage::in_flight_grouped", text) is None:
        raise SourceError(f"{path}: IN_FLIGHT is no longer chosen by the group tile; "
                          "update read_cuda_core_source")
    facts.update(read_dispatch_rule(text, path))
    return facts


# The dispatch rule of ekv_cuda.cuh (ekv_cuda__tensor_cores), which the host's choice and
# each kernel's guard share: tensor cores for every dtype but f32 from sm_80 (fp8 from
# sm_89), CUDA cores otherwise. The model applies it to the binary's arch to know which
# kernels the dispatcher can launch there; any other text of the rule is an error, so that
# a changed rule cannot leave the model judging the wrong kernels.
DISPATCH_RULE = re.compile(r"ekv_cuda__tensor_cores\(int dtype, int arch\)\s*\{\s*return\s+"
                           r"dtype\s*!=\s*EKV_DTYPE_F32\s*&&\s*arch\s*>=\s*\(dtype\s*==\s*"
                           r"EKV_DTYPE_FP8\s*\?\s*(\d+)\s*:\s*(\d+)\)\s*;\s*\}")


def read_dispatch_rule(text, path):
    m = DISPATCH_RULE.search(text)
    if not m:
        raise SourceError(f"{path}: ekv_cuda__tensor_cores is not the rule the model knows; "
                          "update read_dispatch_rule and tensor_cores()")
    return {"tensor_core_arch": {"fp8": int(m.group(1)), "other": int(m.group(2))}}


def tensor_cores(facts, dtype, arch):
    """ekv_cuda__tensor_cores for a dtype name and an arch name ("sm_90" -> 900)."""
    number = int(arch.split("_")[1]) * 10
    if dtype == "f32":
        return False
    return number >= facts["tensor_core_arch"]["fp8" if dtype == "fp8" else "other"]


def read_mma_source(path):
    """The numbers of ekv_cuda.cuh that fix what one warp of the tensor-core kernel reads
    per iteration: per dtype (bits, row_scale, group_scale) of ekv_cuda__fragments<>, the
    spans that decide how many warps split head_dim (ekv_cuda__mma_shape), warps per CTA."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    facts = {"fragments": {}}
    for m in re.finditer(r"struct ekv_cuda__fragments<EKV_DTYPE_(\w+)>[^{]*\{\s*enum\s*\{([^}]*)\}", text):
        fields = dict((k, int(v)) for k, v in re.findall(r"(\w+)\s*=\s*(\d+)", m.group(2)))
        if not {"bits", "row_scale", "group_scale"} <= set(fields):
            raise SourceError(f"{path}: ekv_cuda__fragments<EKV_DTYPE_{m.group(1)}> lacks bits, "
                              "row_scale or group_scale; update read_mma_source")
        facts["fragments"][m.group(1).lower()] = fields
    for key, pattern in (("span", r"#define\s+EKV_CUDA__MMA_SPAN\s+(\d+)"),
                         ("span_16bit", r"#define\s+EKV_CUDA__MMA_SPAN_16BIT\s+(\d+)"),
                         ("warps", r"#define\s+EKV_CUDA__WARPS\s+(\d+)"),
                         ("heads_small", r"#define\s+EKV_CUDA__MMA_HEADS_SMALL\s+(\d+)"),
                         ("heads_large", r"#define\s+EKV_CUDA__MMA_HEADS_LARGE\s+(\d+)")):
        m = re.search(pattern, text)
        if not m:
            raise SourceError(f"{path}: no match for {pattern!r}; update read_mma_source")
        facts[key] = int(m.group(1))
    # ekv_cuda__mma_shape: SLICES = 1 up to the span, else head_dim x heads / span, at most
    # the warps of a CTA
    if re.search(r"SLICES\s*=\s*HEAD_DIM\s*\*\s*HEADS\s*<=\s*SPAN\s*\?\s*1", text) is None:
        raise SourceError(f"{path}: ekv_cuda__mma_shape's SLICES is not the formula the model "
                          "knows; update mma_iteration")
    facts.update(read_dispatch_rule(text, path))
    return facts


def cuda_core_iteration(facts, k):
    """What the source says one warp reads per iteration of the token loop: tokens,
    bytes per lane summed over lanes (what the load widths in the SASS must add up to),
    and the distinct KV bytes (what DRAM delivers)."""
    dtype, head_dim, tile = k["dtype"], k["head_dim"], k["tile"]
    if dtype not in facts["storage"]:
        raise SourceError(f"no ekv_cuda__storage<EKV_DTYPE_{dtype.upper()}> enum in the source")
    bits, in_flight, in_flight_grouped = facts["storage"][dtype]
    per_lane = facts["elements_per_lane"]
    lanes_per_row = head_dim // per_lane
    rows_per_warp = 32 // lanes_per_row
    steps = in_flight if tile == 1 else in_flight_grouped
    tokens = steps * rows_per_warp
    # per step and lane: the K and V chunks (per_lane elements); int8 and int4 also load
    # their row's (group's) scale word in load() (one 4-byte __ldg per lane each); and the
    # pool bias, 4 bytes, predicated on p.bias (off for every policy but pool)
    scale_word = 4 if dtype in ("int8", "int4") else 0
    chunk = per_lane * bits // 8
    lane_total = steps * 32 * (2 * (chunk + scale_word) + 4)
    return dict(tokens=tokens, in_flight_steps=steps, ldg_lane_bytes=lane_total,
                kv_bytes=tokens * 2 * row_bytes(dtype, head_dim),
                block_threads=facts["warps"] * 32)


def mma_shape(facts, dtype, head_dim, heads):
    """ekv_cuda__mma_shape: slices (warps sharing a step), width, K and V chunk words."""
    fr = facts["fragments"][dtype]
    span = facts["span_16bit"] if fr["bits"] == 16 else facts["span"]
    product = head_dim * heads
    slices = 1 if product <= span else min(facts["warps"], product // span)
    width = head_dim // slices
    k_elements, v_elements = width // 4, width // 8
    return dict(slices=slices, width=width, k_words=k_elements * fr["bits"] // 32,
                v_words=v_elements * fr["bits"] // 32, k_groups=max(1, k_elements // 32))


def mma_iteration(facts, k):
    """What the source says one warp of the tensor-core kernel reads per iteration (a step
    of 16 tokens over its part of head_dim): per lane K rows g, g + 8 (k_words each), V rows
    2c, 2c + 1, 2c + 8, 2c + 9 (v_words each), int8's K and V scale words of the K rows,
    int4's (scale, zero) words (k_groups per K row, one per V row), and the pool bias of the
    K rows (predicated on p.bias); the distinct KV bytes are the warp's share of the step's
    rows with their scales."""
    dtype, head_dim, heads = k["dtype"], k["head_dim"], k["tile"]
    if dtype not in facts["fragments"]:
        raise SourceError(f"no ekv_cuda__fragments<EKV_DTYPE_{dtype.upper()}> enum in the source")
    fr = facts["fragments"][dtype]
    shape = mma_shape(facts, dtype, head_dim, heads)
    lane = 4 * (2 * shape["k_words"] + 4 * shape["v_words"]) + 4 * 2
    if fr["row_scale"]:
        lane += 4 * (2 + 2)
    if fr["group_scale"]:
        lane += 4 * (2 * shape["k_groups"] + 4)
    return dict(tokens=16, in_flight_steps=1, ldg_lane_bytes=32 * lane,
                kv_bytes=16 * 2 * row_bytes(dtype, head_dim) // shape["slices"],
                block_threads=facts["warps"] * 32, slices=shape["slices"])


KERNEL_FAMILIES = [
    dict(
        family="ekv_cuda__attention_kernel<DTYPE, HEAD_DIM, GROUP_TILE> (CUDA cores)",
        label=lambda k: f"{k['dtype']} D={k['head_dim']} tile {k['tile']}",
        pattern=re.compile(r"^_Z\d+ekv_cuda__attention_kernelILi(?P<dtype>\d+)ELi(?P<head_dim>\d+)"
                           r"ELi(?P<tile>\d+)EEv"),
        decode=lambda m: dict(dtype=DTYPES[int(m["dtype"])][0], head_dim=int(m["head_dim"]),
                              tile=int(m["tile"]), path="cuda-core"),
        source="ekv_cuda.cuh",
        read_source=read_cuda_core_source,
        iteration=cuda_core_iteration,
        # ekv_cuda__group_tile: group 1 gets tile 1, any larger group the tile of
        # EKV_CUDA__GROUP_TILE heads; a group above the tile takes several CTAs, each
        # reading the KV rows again
        tile_for_group=lambda facts, group: 1 if group == 1 else facts["group_tile"],
        serves=lambda facts, dtype, arch: not tensor_cores(facts, dtype, arch),
    ),
    dict(
        family="ekv_cuda__attention_mma_kernel<DTYPE, HEAD_DIM, HEADS> (tensor cores)",
        label=lambda k: f"{k['dtype']} D={k['head_dim']} mma {k['tile']}",
        pattern=re.compile(r"^_Z\d+ekv_cuda__attention_mma_kernelILi(?P<dtype>\d+)ELi(?P<head_dim>\d+)"
                           r"ELi(?P<tile>\d+)EEv"),
        decode=lambda m: dict(dtype=DTYPES[int(m["dtype"])][0], head_dim=int(m["head_dim"]),
                              tile=int(m["tile"]), path="tensor-core"),
        source="ekv_cuda.cuh",
        read_source=read_mma_source,
        iteration=mma_iteration,
        # ekv_cuda__choose: the 8-head tile up to 8 query heads per KV head, else 16 (groups
        # above 16 take several tiles)
        tile_for_group=lambda facts, group: facts["heads_small"] if group <= facts["heads_small"]
        else facts["heads_large"],
        serves=tensor_cores,
        # ekv_cuda__attention_mma_kernel: "if (__any_sync(..., grow))" runs the max over the
        # step and the rescale only when a head's max moved by more than
        # EKV_CUDA__MAX_SLACK; the walk skips that block, the table's "rare" column is the
        # ceiling of a step that runs it
        rare_vote_branches=True,
    ),
]


def paged(family, table_reads):
    """The same kernel reading a paged cache (ekv_cuda__attention_paged_kernel,
    ekv_cuda__attention_mma_paged_kernel): its rows come through the block table, one
    4-byte table read per lane for each row lookup (ekv_cuda__kv_row<true>): per step
    of rows on CUDA cores; on tensor cores K's and V's lookups of a step are the same
    read (the compiler keeps one)."""
    name = family["pattern"].pattern.replace("attention_kernel", "attention_paged_kernel") \
        .replace("attention_mma_kernel", "attention_mma_paged_kernel")
    base_label, base_iteration, base_decode = family["label"], family["iteration"], family["decode"]

    def iteration(facts, k):
        it = dict(base_iteration(facts, k))
        it["ldg_lane_bytes"] += 32 * 4 * table_reads(it)
        return it
    # a path of its own: its load-ahead threshold, and tables that pair kernels by path
    # keep pairing the contiguous ones
    return dict(family, family=family["family"].replace("_kernel<", "_paged_kernel<"),
                label=lambda k: base_label(k) + " paged",
                decode=lambda m: dict(base_decode(m), path=base_decode(m)["path"] + " paged"),
                pattern=re.compile(name),
                iteration=iteration)


KERNEL_FAMILIES += [paged(KERNEL_FAMILIES[0], lambda it: it["in_flight_steps"]),
                    paged(KERNEL_FAMILIES[1], lambda it: 1)]
ATTENTION_LIKE = re.compile(r"attention|attn", re.I)


# ---- SASS ----------------------------------------------------------------------------

INSTR_RE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.+?)\s*;")
PRED_RE = re.compile(r"^@(!?U?P(?:T|\d+))\s+(.*)$")
REG_RE = re.compile(r"(?<![A-Za-z0-9_])R(\d+)(\.64|\.128)?")


class Instr:
    __slots__ = ("addr", "text", "pred", "opcode", "base", "mods", "args")

    def __init__(self, addr, text):
        self.addr = addr
        self.text = text
        m = PRED_RE.match(text)
        self.pred = m.group(1) if m else None
        body = m.group(2) if m else text
        parts = body.split(None, 1)
        self.opcode = parts[0]
        self.base = self.opcode.split(".")[0]
        self.mods = self.opcode.split(".")[1:]
        self.args = parts[1] if len(parts) > 1 else ""

    def target(self):
        hits = re.findall(r"0x[0-9a-f]+", self.args)
        return int(hits[-1], 16) if hits else None

    def condition(self):
        """'always', 'never' or 'cond' for a branch."""
        if self.pred == "!PT":
            return "never"
        if "DIV" in self.mods or re.match(r"!?U?P\d", self.args):
            return "cond"
        return "always" if self.pred in (None, "PT") else "cond"

    def registers(self):
        """(written, read) general registers; a 64/128-bit operand names 2/4."""
        ops = [o.strip() for o in self.args.split(",")]
        written, read = set(), set()
        has_dest = self.base not in STORE_BASES | {"STS", "STL", "RED", "REDG", "BRA", "BAR",
                                                   "EXIT", "RET", "CALL", "BSSY", "BSYNC",
                                                   "WARPSYNC", "SHFL"} \
            and not self.base.endswith("SETP") and self.base != "PLOP3"
        dest_width = 1
        if self.base in LOAD_BASES or self.base in ("LDS", "LDL", "LDSM"):
            dest_width = max(1, lane_bytes(self) // 4)
        elif "WIDE" in self.mods:
            dest_width = 2
        first = True
        for op in ops:
            regs = []
            for m in REG_RE.finditer(op):
                n = int(m.group(1))
                width = {".64": 2, ".128": 4}.get(m.group(2) or "", 1)
                regs.extend(range(n, n + width))
            if not regs:
                if re.fullmatch(r"!?U?P(T|\d+)", op) and first:
                    continue  # predicate destinations come before the register one
                first = False
                continue
            if first and has_dest and not op.startswith("["):
                n = regs[0]
                written.update(range(n, n + max(dest_width, len(regs))))
            else:
                read.update(regs)
            first = False
        if self.base == "SHFL":  # SHFL.BFLY P2, R60, R55, ...: R60 is written
            regs = [int(m.group(1)) for m in REG_RE.finditer(self.args)]
            if regs:
                written.add(regs[0])
                read.discard(regs[0])
        return written, read


def run_cuobjdump(cuobjdump, args, binary):
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(os.path.abspath(cuobjdump)) + os.pathsep + env.get("PATH", "")
    p = subprocess.run([cuobjdump] + args + [binary], capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"{cuobjdump} {' '.join(args)} {binary} failed: {p.stderr.strip()}")
    return p.stdout


def parse_sass(text):
    """{arch: {function name: [(address, text)]}} from cuobjdump -sass output; Instr
    objects are made only for the functions analysed (see instructions())."""
    out = collections.defaultdict(dict)
    current = None
    arch = None
    for line in text.splitlines():
        if "/*" in line and current is not None:
            m = INSTR_RE.search(line)
            if m:
                current.append((m.group(1), m.group(2)))
            continue
        if "code for sm_" in line:
            arch, current = re.search(r"code for (sm_\d+)", line).group(1), None
        elif "Function : " in line:
            current = out[arch].setdefault(line.split("Function : ", 1)[1].strip(), [])
    return out


def instructions(raw):
    return [Instr(int(addr, 16), text) for addr, text in raw]


def parse_res_usage(text):
    """{arch or None: {function: {REG, SHARED, STACK, LOCAL}}} from cuobjdump -res-usage."""
    out = collections.defaultdict(dict)
    arch, name = None, None
    for line in text.splitlines():
        m = re.search(r"arch = (sm_\d+)", line)
        if m:
            arch = m.group(1)
        m = re.match(r"\s*Function (\S+):", line)
        if m:
            name = m.group(1)
            continue
        if name and "REG:" in line:
            out[arch][name] = {k: int(v) for k, v in re.findall(r"(\w+)(?:\[\d+\])?:(\d+)", line)}
            name = None
    return out


# ---- control flow --------------------------------------------------------------------

TERMINATORS = {"BRA", "BRX", "JMP", "JMX", "EXIT", "RET", "CALL", "BPT", "KILL"}


class Cfg:
    def __init__(self, ins):
        self.ins = ins
        index = {x.addr: i for i, x in enumerate(ins)}
        leaders = {0}
        for i, x in enumerate(ins):
            if x.base in TERMINATORS:
                if i + 1 < len(ins):
                    leaders.add(i + 1)
                if x.base in ("BRA", "JMP", "CALL") and x.target() in index:
                    leaders.add(index[x.target()])
        starts = sorted(leaders)
        self.blocks = [(s, starts[k + 1] if k + 1 < len(starts) else len(ins))
                       for k, s in enumerate(starts)]
        block_at = {s: k for k, (s, _) in enumerate(self.blocks)}
        self.block_of_addr = {}
        for k, (s, e) in enumerate(self.blocks):
            for i in range(s, e):
                self.block_of_addr[ins[i].addr] = k
        self.succ = []
        for k, (s, e) in enumerate(self.blocks):
            last = ins[e - 1]
            fall = [k + 1] if k + 1 < len(self.blocks) else []
            if last.base in ("BRA", "JMP") and last.target() in index:
                t = block_at[index[last.target()]]
                c = last.condition()
                self.succ.append([t] if c == "always" else fall if c == "never" else [t] + fall)
            elif last.base == "CALL" and last.target() in index:
                # a subroutine returns to the next instruction; a predicated CALL.REL.NOINC
                # is also how sm_80 code leaves a convergence region (a loop's break)
                self.succ.append(fall + [block_at[index[last.target()]]])
            elif last.base in ("EXIT", "RET", "BPT", "KILL", "BRX", "JMX") and last.pred is None:
                self.succ.append([])
            else:
                self.succ.append(fall)
        self.preds = collections.defaultdict(list)
        for k, ss in enumerate(self.succ):
            for t in ss:
                self.preds[t].append(k)
        self._dominators()

    def size(self, k):
        s, e = self.blocks[k]
        return e - s

    def instrs(self, k):
        s, e = self.blocks[k]
        return self.ins[s:e]

    def _dominators(self):
        # Cooper, Harvey and Kennedy, "A Simple, Fast Dominance Algorithm"
        order, seen, stack = [], {0}, [(0, iter(self.succ[0]))]
        while stack:
            v, it = stack[-1]
            for w in it:
                if w not in seen:
                    seen.add(w)
                    stack.append((w, iter(self.succ[w])))
                    break
            else:
                order.append(v)
                stack.pop()
        rpo = order[::-1]
        number = {b: i for i, b in enumerate(rpo)}
        idom = {0: 0}
        changed = True
        while changed:
            changed = False
            for b in rpo[1:]:
                done = [p for p in self.preds[b] if p in idom]
                new = done[0]
                for p in done[1:]:
                    x, y = p, new
                    while x != y:
                        while number[x] > number[y]:
                            x = idom[x]
                        while number[y] > number[x]:
                            y = idom[y]
                    new = x
                if idom.get(b) != new:
                    idom[b] = new
                    changed = True
        self.idom, self.reachable = idom, set(rpo)

    def dominates(self, a, b):
        while True:
            if a == b:
                return True
            if b == 0:
                return False
            b = self.idom[b]

    def natural_loops(self):
        """{header: (body, back-edge sources)}: a back edge is u -> h with h dominating u."""
        loops = {}
        for u in self.reachable:
            for h in self.succ[u]:
                if self.dominates(h, u):
                    body, work = {h}, [u]
                    while work:
                        v = work.pop()
                        if v not in body:
                            body.add(v)
                            work.extend(p for p in self.preds[v] if p in self.reachable)
                    old_body, old_tails = loops.get(h, (set(), []))
                    loops[h] = (old_body | body, old_tails + [u])
        return loops


def main_loop(cfg):
    """The largest loop whose body holds global loads: the token loop."""
    best = None
    for header, (body, tails) in cfg.natural_loops().items():
        loads = sum(1 for b in body for x in cfg.instrs(b)
                    if x.base in LOAD_BASES or x.base in GLOBAL_BULK)
        size = sum(cfg.size(b) for b in body)
        if loads and (best is None or size > best[2]):
            best = (header, body, size, tails)
    return best


def vote_predicate(cfg, k, branch):
    """The predicate a VOTE.ANY of block k wrote, when `branch` (the block's last
    instruction) branches on it; else None."""
    if branch.pred is None:
        return None
    name = branch.pred.lstrip("!")
    for x in reversed(cfg.instrs(k)[:-1]):
        if x.base == "VOTE" and "ANY" in x.mods and x.args.split(",")[0].strip() == name:
            return name
    return None


def walk_iteration(cfg, header, body, rare_votes=False):
    """One iteration from the loop header back to it along the common path.

    Branch treatment: BRA.DIV (the compiler's check that the warp is converged before a
    shuffle) not taken, since the loop's trip count is uniform per warp; a branch out of
    the loop not taken; the back edge taken; with rare_votes (a family whose source states
    that a warp-vote branch guards a rare block: the tensor-core kernel's rescale when a
    head's max moves by more than its slack), a branch on a VOTE.ANY predicate goes the way
    that skips the block; any other conditional branch inside the loop
    falls through, the side nvcc lays out inline (in today's kernels the fp8 decode's NaN
    test, whose taken side is the NaN code); an inner loop is walked once. Every
    conditional branch met is returned with the treatment given and the instructions on
    each side up to where they meet again."""
    path, branches, seen = [], [], set()
    k = header
    while True:
        if k in seen:
            raise RuntimeError("walk revisited a block: irreducible loop")
        seen.add(k)
        path.extend(cfg.instrs(k))
        last = cfg.instrs(k)[-1]
        succ = cfg.succ[k]
        fall = k + 1
        if last.base == "BRA" and last.condition() == "cond":
            target = cfg.block_of_addr[last.target()]
            if target == header:
                why, nxt = "back edge: taken (ends the iteration)", None
            elif "DIV" in last.mods:
                why, nxt = "divergence check: not taken (warp converged)", fall
            elif rare_votes and target in body and fall in body and vote_predicate(cfg, k, last):
                # @!P BRA skips the block run when the vote is true; @P BRA jumps to it
                skip = last.pred.startswith("!")
                why = ("warp-vote branch: taken, skipping the rare block" if skip else
                       "warp-vote branch: not taken, the rare block out of line")
                nxt = target if skip else fall
            elif target not in body:
                why, nxt = "leaves the loop: not taken", fall
            elif fall not in body:
                why, nxt = "falls out of the loop: taken", target
            elif target in seen:
                why, nxt = "inner loop back edge: not taken (one trip)", fall
            else:
                why, nxt = "inside the loop: falls through", fall
            branches.append(dict(address=f"0x{last.addr:04x}", sass=last.text, treatment=why,
                                 conditional=True,
                                 sides=branch_sides(cfg, k, target, fall, header, body)))
            if nxt is None:
                return path, branches
            k = nxt
        elif last.base == "BRA" and last.condition() == "always":
            target = cfg.block_of_addr[last.target()]
            if target == header:
                return path, branches
            if target not in body:
                raise RuntimeError(f"unconditional branch at 0x{last.addr:x} leaves the loop")
            k = target
        elif last.base == "CALL":
            target = cfg.block_of_addr.get(last.target())
            if last.pred is not None and target not in body:
                branches.append(dict(address=f"0x{last.addr:04x}", sass=last.text, conditional=True,
                                     treatment="predicated CALL out of the loop (a break): not taken",
                                     sides=None))
            else:
                branches.append(dict(address=f"0x{last.addr:04x}", sass=last.text, conditional=False,
                                     treatment="call: the callee is not counted", sides=None,
                                     problem=f"CALL at 0x{last.addr:04x} inside the loop: the callee "
                                             f"is not counted"))
            k = fall
            if k == header:
                return path, branches
        elif not succ:
            raise RuntimeError(f"the loop ends at 0x{last.addr:x} without a back edge")
        else:
            if last.base == "EXIT":
                branches.append(dict(address=f"0x{last.addr:04x}", sass=last.text,
                                     treatment="predicated exit: not taken", conditional=False,
                                     sides=None))
            k = succ[-1] if len(succ) == 1 else fall
            if k == header:
                return path, branches


def branch_sides(cfg, k, target, fall, header, body):
    """Instructions from each successor of a branch to the first block both reach."""
    def reach(start):
        order, dist, work = [], {start: 0}, [start]
        while work:
            b = work.pop(0)
            order.append(b)
            if b == header:
                continue
            for s in cfg.succ[b]:
                if s in body and s not in dist:
                    dist[s] = dist[b] + cfg.size(b)
                    work.append(s)
        return dist
    if target not in body or fall not in body:
        return None
    a, b = reach(target), reach(fall)
    common = [x for x in a if x in b]
    if not common:
        return None
    meet = min(common, key=lambda x: a[x] + b[x])
    return dict(taken=a[meet], fall_through=b[meet], meet=f"0x{cfg.ins[cfg.blocks[meet][0]].addr:04x}")


def all_arms(cfg, header, body):
    """Instructions of every block of the loop that the common path can branch into,
    except the out-of-line code behind BRA.DIV: the cost if every data-dependent branch
    diverged and the warp ran both sides."""
    div_targets = set()
    for b in body:
        last = cfg.instrs(b)[-1]
        if last.base == "BRA" and "DIV" in last.mods:
            div_targets.add(cfg.block_of_addr[last.target()])
    keep, work = set(), [header]
    while work:
        b = work.pop()
        if b in keep:
            continue
        keep.add(b)
        for s in cfg.succ[b]:
            if s in body and s not in div_targets and s != header:
                work.append(s)
    return sum(cfg.size(b) for b in keep)


def max_in_flight(path):
    """Largest share of the iteration's global-load bytes outstanding at once: a load is
    in flight from its issue until an instruction reads or overwrites one of its
    registers (the scoreboard wait). Walked twice so that loads issued late in one
    iteration and used in the next count."""
    total = sum(32 * lane_bytes(x) for x in path if x.base in LOAD_BASES)
    if total == 0:
        return 0.0
    owner, loads, best = {}, {}, 0  # register -> load; load -> (registers, bytes)
    regs = [x.registers() for x in path]
    for rep in range(2):
        for x, (written, read) in zip(path, regs):
            # the first instruction to touch any register of a load waits for all of it;
            # cp.async (LDGSTS) writes no register: its DEPBAR wait ends it
            done = {owner[r] for r in written | read if r in owner}
            if x.base == "DEPBAR":
                done |= {load for load, (r, _) in loads.items() if not r}
            for load in done:
                for r in loads.pop(load)[0]:
                    owner.pop(r, None)
            if x.base in LOAD_BASES:
                loads[(rep, x.addr)] = (written, 32 * lane_bytes(x))
                for r in written:
                    owner[r] = (rep, x.addr)
            if rep == 1:
                best = max(best, sum(b for _, b in loads.values()))
    return best / total


def ahead_share(path):
    """Share of the iteration's global-load bytes issued for a later iteration: loads whose
    registers no later instruction of the walked iteration reads or overwrites (their first
    use comes after the back edge). Register double-buffering and cp.async rings show here;
    loads issued at the top of an iteration and used in it do not."""
    total = ahead = 0
    regs = [x.registers() for x in path]
    for i, x in enumerate(path):
        if x.base not in LOAD_BASES:
            continue
        nbytes = 32 * lane_bytes(x)
        total += nbytes
        mine = regs[i][0]
        if x.base == "LDGSTS" or not any(mine & (w | r) for w, r in regs[i + 1:]):
            ahead += nbytes
    return ahead / total if total else 0.0


# ---- the model -----------------------------------------------------------------------

def path_slots(path, arch):
    """Slots each pipe spends on one walked iteration; every instruction takes one issue slot."""
    slots = collections.Counter()
    for x in path:
        for pipe, n in pipe_costs(x, instr_class(x), arch):
            slots[pipe] += n
    slots["issue"] = len(path)
    return slots


def occupancy(arch, regs, shared, block_threads):
    a = ARCHS[arch]
    warps_per_block = math.ceil(block_threads / 32)
    regs_per_warp = math.ceil(max(regs, 1) * 32 / 256) * 256  # allocation unit: 256
    limits = {  # on a tie the first is named: the hardware's own limits first
        "threads": a["max_warps"] // warps_per_block,
        "blocks": a["max_blocks"],
        "registers": (a["regs"] // regs_per_warp) // warps_per_block,
        "shared memory": a["smem"] // (shared + SMEM_RESERVED_PER_BLOCK),
    }
    blocks = min(limits.values())
    limiter = min(limits, key=lambda key: limits[key])
    return blocks * warps_per_block, limiter


def analyse(name, ins, res, family, facts, arch):
    k = family["decode"](family["pattern"].match(name).groupdict())
    k.update(kernel=name, family=family["family"], arch=arch, problems=[])
    k["label"] = family["label"](k)
    cfg = Cfg(ins)
    found = main_loop(cfg)
    if found is None:
        k["problems"].append("no loop with global loads")
        return k
    header, body, size, tails = found
    rare_votes = family.get("rare_vote_branches", False)
    try:
        path, branches = walk_iteration(cfg, header, body, rare_votes)
        # the same iteration with every rare block run: the ceiling of a step that rescales
        rare_path = walk_iteration(cfg, header, body)[0] if rare_votes else path
    except RuntimeError as e:
        k["problems"].append(str(e))
        return k
    # what the model cannot count is a problem (a failed check), not a silent zero
    k["problems"].extend(b["problem"] for b in branches if "problem" in b)
    for x in path:
        if x.base in ("BRX", "JMX"):
            k["problems"].append(f"indirect branch at 0x{x.addr:04x} inside the loop")
        elif instr_class(x) == "tensor" and mma_fmas(x) is None:
            k["problems"].append(f"{x.opcode} at 0x{x.addr:04x}: no mma.sync shape, tensor cost unknown")
    counts = collections.Counter(instr_class(x) for x in path)
    pipe_slots = path_slots(path, arch)
    sass_lane_bytes = store_bytes = 0
    for x in path:
        if x.base in LOAD_BASES:
            sass_lane_bytes += 32 * lane_bytes(x)
        elif x.base in STORE_BASES:
            store_bytes += 32 * lane_bytes(x)
        elif x.base in GLOBAL_BULK:
            k["problems"].append(f"bulk copy {x.opcode}: bytes not counted")
    k["_path"], k["_rare_path"] = path, rare_path
    source = family["iteration"](facts, k)
    regs = res.get("REG", 0)
    shared = res.get("SHARED", 0)
    k.update(
        registers=regs, shared_bytes=shared, spill_bytes=res.get("LOCAL", 0),
        block_threads=source["block_threads"],
        loop=dict(header=f"0x{cfg.ins[cfg.blocks[header][0]].addr:04x}",
                  back_edges=[f"0x{cfg.instrs(t)[-1].addr:04x}" for t in tails],
                  instructions_in_body=size, instructions_all_arms=all_arms(cfg, header, body)),
        instructions=len(path),
        counts={c: counts[c] for c in CLASSES},
        pipe_slots={p: round(pipe_slots[p], 3) for p in PIPES if pipe_slots[p]},
        branches=branches,
        conditional_branches=sum(1 for b in branches if b["conditional"]),
        tokens_per_iteration=source["tokens"],
        ldg_lane_bytes_sass=sass_lane_bytes,
        ldg_lane_bytes_source=source["ldg_lane_bytes"],
        bytes_agree=sass_lane_bytes == source["ldg_lane_bytes"],
        kv_bytes_per_iteration=source["kv_bytes"],
        store_bytes_per_iteration=store_bytes,
        in_flight_share=round(max_in_flight(path), 4),
        ahead_share=round(ahead_share(path), 4),
    )
    if not k["bytes_agree"]:
        k["problems"].append(f"SASS loads {sass_lane_bytes} lane bytes per iteration, the "
                             f"source {source['ldg_lane_bytes']}")
    k["bytes_in_flight_per_warp"] = round(k["in_flight_share"] * k["kv_bytes_per_iteration"])
    return k


def dispatched(k, family, facts, arch):
    """Marks a kernel the dispatcher never launches on `arch` (its family does not serve
    the dtype there, by ekv_cuda__tensor_cores): such a kernel must be compiled empty, and
    is then left out of the ceilings and thresholds; one that has a main loop is a problem
    (compile time spent on dead code, or a rule the kernel's guard does not follow)."""
    serves = family.get("serves")
    k["dispatched"] = serves is None or "dtype" not in k or serves(facts, k["dtype"], arch)
    if k["dispatched"]:
        return
    if k["problems"] == ["no loop with global loads"]:
        k["problems"] = []
    elif "loop" in k:
        k["problems"] = [f"has a main loop on {arch}, where the dispatcher never launches it "
                         f"(ekv_cuda__tensor_cores)"]
    for x in k.pop("_path", []):
        if x.base in LOAD_BASES:
            k["problems"].append(f"global load at 0x{x.addr:04x} in a kernel never launched on {arch}")
            break


def ceilings(k, gpus, latency_cycles):
    """Per GPU: resident warps, the pipe-bound and latency-bound bytes per clock per SM,
    and the ceiling as a share of peak bandwidth (capped at 100%)."""
    k["per_gpu"], k["ceiling_pct"], k["binding_pipe"] = {}, {}, {}
    if "pipe_slots" not in k or not k.get("dispatched", True):
        return
    for g in gpus:
        arch = g["arch"]
        rates = ARCHS[arch]["rates"]
        # counts were taken with the binary's arch costs; other arches re-cost the path
        slots = k["pipe_slots"] if arch == k["arch"] else path_slots(k["_path"], arch)
        cycles = {p: slots[p] / rates[p] for p in slots if p in rates}
        binding = max(cycles, key=lambda p: (cycles[p], p != "issue"))
        warps, limiter = occupancy(arch, k["registers"], k["shared_bytes"], k["block_threads"])
        pipe_bpc = k["kv_bytes_per_iteration"] / cycles[binding]
        in_flight_sm = warps * k["bytes_in_flight_per_warp"]
        latency_bpc = in_flight_sm / latency_cycles
        peak = g["peak_bytes_per_clock_per_sm"]
        pipe_pct = 100.0 * pipe_bpc / peak
        latency_pct = 100.0 * latency_bpc / peak
        pct = min(100.0, pipe_pct, latency_pct)
        bound = ("DRAM" if pct >= 100.0 else binding if pipe_pct <= latency_pct else "latency")
        busiest_pipe = max((p for p in cycles if p != "issue"), key=lambda p: cycles[p], default=None)
        k["per_gpu"][g["name"]] = dict(
            arch=arch, same_arch=arch == k["arch"], warps_per_sm=warps, warps_limited_by=limiter,
            pipe_cycles={p: round(c, 2) for p, c in cycles.items()}, binding_pipe=binding,
            busiest_pipe=busiest_pipe,
            bytes_per_clock_per_sm=round(pipe_bpc, 2), bytes_in_flight_per_sm=in_flight_sm,
            latency_bytes_per_clock_per_sm=round(latency_bpc, 2),
            peak_bytes_per_clock_per_sm=round(peak, 2),
            pipe_pct=round(pipe_pct, 1), latency_pct=round(latency_pct, 1), bound=bound,
            ceiling_pct=round(pct, 1))
        k["ceiling_pct"][g["name"]] = round(pct, 1)
        k["binding_pipe"][g["name"]] = binding
        if k.get("_rare_path") is not k.get("_path"):
            rare = path_slots(k["_rare_path"], arch)
            rare_cycles = max(rare[p] / rates[p] for p in rare if p in rates)
            k["per_gpu"][g["name"]]["rare_ceiling_pct"] = round(
                min(100.0, latency_pct, 100.0 * k["kv_bytes_per_iteration"] / rare_cycles / peak), 1)


def model(binary, arch, cuobjdump, source_dir, gpus, latency_cycles, families=None):
    """Every kernel of BINARY's ARCH SASS that a family recognises, analysed; and the
    names of attention-like kernels none recognises."""
    families = KERNEL_FAMILIES if families is None else families
    sass_text = run_cuobjdump(cuobjdump, ["-sass"], binary)
    res_text = run_cuobjdump(cuobjdump, ["-res-usage"], binary)
    functions = parse_sass(sass_text)
    if arch not in functions:
        raise RuntimeError(f"{binary} has no SASS for {arch} (it has: "
                           f"{', '.join(sorted(a for a in functions if a)) or 'none'})")
    usage = parse_res_usage(res_text)
    usage_arch = usage.get(arch) or usage.get(None) or {}
    kernels, unknown, source_facts = [], [], {}
    for name, raw in functions[arch].items():
        family = next((f for f in families if f["pattern"].match(name)), None)
        if family is None:
            if ATTENTION_LIKE.search(name):
                unknown.append(name)
            continue
        key = (family["source"], family["read_source"])
        if family["source"] and key not in source_facts:
            source_facts[key] = family["read_source"](os.path.join(source_dir, family["source"]))
        facts = source_facts.get(key)
        k = analyse(name, instructions(raw), usage_arch.get(name, {}), family, facts, arch)
        k["_family"], k["_facts"] = family, facts
        dispatched(k, family, facts, arch)
        ceilings(k, gpus, latency_cycles)
        kernels.append(k)
    order = {name: i for i, name in enumerate(DTYPE_ENUM)}
    kernels.sort(key=lambda k: (k["path"], order.get(k.get("dtype"), 99), k.get("head_dim") or 0,
                                k.get("tile") or 0, k["label"]))
    return kernels, unknown


def speedups(kernels, gpus, head_dim=128, groups=(1, 4, 8), base="f16"):
    """Time per token of f16 over that of each quantized dtype, for GQA group sizes, from
    the bytes per token (K + V rows with scales, read once per group tile) and each
    kernel's ceiling: speedup = (bytes_f16 / ceiling_f16) / (bytes_q / ceiling_q)."""
    by = {(k["path"], k["dtype"], k["head_dim"], k["tile"]): k for k in kernels
          if k.get("dispatched") and "dtype" in k}
    if not by:
        return []
    rows = []
    for dtype in ("int8", "int4", "fp8"):
        row = dict(dtype=dtype, head_dim=head_dim, speedup={})
        for g in gpus:
            for group in groups:
                values = []
                for d in (base, dtype):
                    # the kernel the dispatcher launches for (d, group) on the binary's arch
                    some = next((k for k in kernels if k.get("dtype") == d and k.get("dispatched")), None)
                    if some is None:
                        break
                    tile = some["_family"]["tile_for_group"](some["_facts"], group)
                    k = by.get((some["path"], d, head_dim, tile))
                    if k is None or not k["ceiling_pct"].get(g["name"]):
                        break
                    tiles = math.ceil(group / tile)
                    values.append(tiles * 2 * row_bytes(d, head_dim) / k["ceiling_pct"][g["name"]])
                if len(values) == 2:
                    row["speedup"].setdefault(g["name"], {})[group] = round(values[0] / values[1], 2)
        rows.append(row)
    return rows


# ---- output --------------------------------------------------------------------------

def markdown(kernels, unknown, gpus, arch, latency_cycles, show_branches):
    lines = []
    first = gpus[0]["name"]
    other = [g for g in gpus if g["arch"] != arch]
    lines.append(f"Predicted ceilings from the {arch} SASS (an upper bound, not a measurement): "
                 f"one main-loop iteration per warp; loaded DRAM latency {latency_cycles} cycles"
                 + (f"; {', '.join(g['name'] for g in other)} (*) re-cost the {arch} instruction "
                    f"stream with their own rates" if other else "") + ".")
    lines.append("")
    head = ["kernel", "regs", f"warps/SM", "instr/iter", "cond br", "LDG B/iter (SASS = source)",
            "KV B/iter", "tokens/iter", f"bound ({first})", "B/clk/SM", "in flight B/SM",
            "issued ahead", f"rare step ({first})"]
    head += [f"{g['name']}{' *' if g['arch'] != arch else ''}" for g in gpus]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    empty = [k for k in kernels if not k.get("dispatched", True)]
    kernels = [k for k in kernels if k.get("dispatched", True)]
    for k in kernels:
        if "per_gpu" not in k or not k["per_gpu"]:
            lines.append(f"| {k['label']} | " + " | ".join(["?"] * (len(head) - 2)) +
                         f" | {'; '.join(k['problems'])} |")
            continue
        p = k["per_gpu"][first]
        agree = "=" if k["bytes_agree"] else "!="
        cells = [k["label"] + (" (!)" if k["problems"] else ""), str(k["registers"]), str(p["warps_per_sm"]), str(k["instructions"]),
                 str(k["conditional_branches"]),
                 f"{k['ldg_lane_bytes_sass']} {agree} {k['ldg_lane_bytes_source']}",
                 str(k["kv_bytes_per_iteration"]), str(k["tokens_per_iteration"]),
                 p["bound"] if p["bound"] != "DRAM" else f"DRAM ({p['binding_pipe']} {p['pipe_pct']:.0f}%)",
                 f"{p['bytes_per_clock_per_sm']:.1f}", str(p["bytes_in_flight_per_sm"]),
                 f"{100 * k['ahead_share']:.0f}%",
                 f"{p['rare_ceiling_pct']:.0f}%" if "rare_ceiling_pct" in p else "-"]
        cells += [f"{k['ceiling_pct'][g['name']]:.0f}%" for g in gpus]
        lines.append("| " + " | ".join(cells) + " |")
    if empty:
        lines.append("")
        lines.append(f"Compiled empty for {arch}, where the dispatcher never launches them "
                     f"(ekv_cuda__tensor_cores; checked: no global load): " +
                     ", ".join(k["label"] for k in empty if not k["problems"]) + ".")
    troubled = [k for k in kernels + empty if k["problems"]]
    if troubled:
        lines.append("")
        lines.append("(!) What the model could not count or check:")
        lines.extend(f"- {k['label']}: {'; '.join(k['problems'])}" for k in troubled)
    lines.append("")
    lines.append(f"Instructions per iteration per warp by class, and pipe cycles on {first} "
                 f"(slots / rate; the largest binds):")
    lines.append("")
    head = ["kernel"] + CLASSES + ["all arms"] + [f"{p} cyc" for p in PIPES]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for k in kernels:
        if not k.get("per_gpu"):
            continue
        cyc = k["per_gpu"][first]["pipe_cycles"]
        cells = [k["label"]] + [str(k["counts"][c]) for c in CLASSES]
        cells += [str(k["loop"]["instructions_all_arms"])]
        cells += [f"{cyc[p]:.1f}" if p in cyc else "-" for p in PIPES]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Conditional branches inside each main loop and the walk's treatment of each "
                 "(BRA.DIV convergence checks not taken: the trip count is uniform per warp; "
                 "branches out of the loop not taken; the back edge taken; any other branch "
                 "falls through; an inner loop walked once; 'all arms' above counts both sides "
                 "of every data-dependent branch; --branches lists each):")
    lines.append("")
    for k in kernels:
        if "branches" not in k:
            continue
        kinds = collections.Counter(b["treatment"] for b in k["branches"])
        lines.append(f"- {k['label']}: loop 0x{int(k['loop']['header'], 16):04x}.."
                     f"{', '.join(k['loop']['back_edges'])}: " +
                     "; ".join(f"{n} x {t}" for t, n in sorted(kinds.items())))
        if show_branches:
            for b in k["branches"]:
                sides = b["sides"]
                extra = (f" (taken side {sides['taken']}, fall-through {sides['fall_through']} "
                         f"instructions to {sides['meet']})" if sides else "")
                lines.append(f"    - {b['address']} `{b['sass']}`: {b['treatment']}{extra}")
    lines.append("")
    lines.append(f"Assumptions (tests/sass_model.py names each source): pipe rates for {arch} "
                 f"in warp instructions per clock per SM (tensor: FMA per clock), issue 1 per "
                 f"instruction:")
    lines.append("")
    for pipe, rate in ARCHS[arch]["rates"].items():
        lines.append(f"- {pipe} {rate}: {RATE_NOTES.get(pipe, '')}")
    for g in gpus:
        lines.append(f"- {g['name']} ({g['arch']}): {g['sms']} SMs, {g['clock_hz'] / 1e6:.0f} MHz "
                     f"({g['clock_note']}), {g['peak_bytes_s'] / 1e9:.0f} GB/s = "
                     f"{g['peak_bytes_per_clock_per_sm']:.2f} B/clk/SM")
    lines.append(f"- loaded DRAM latency {latency_cycles:.0f} cycles (assumed)")
    if unknown:
        lines.append("")
        lines.append("Attention-like kernels no family of tests/sass_model.py recognises "
                     "(add an entry to KERNEL_FAMILIES):")
        lines.extend(f"- {name}" for name in unknown)
    return "\n".join(lines)


def speedup_markdown(rows, gpus, groups=(1, 4, 8)):
    lines = ["Predicted speedup over f16 at D=128 from bytes per token and ceilings "
             "(GQA group g: tile 1 for g = 1, else the group tile):", ""]
    head = ["dtype"] + [f"{g['name']} g={n}" for g in gpus for n in groups]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for r in rows:
        cells = [r["dtype"]]
        for g in gpus:
            for n in groups:
                v = r["speedup"].get(g["name"], {}).get(n)
                cells.append(f"{v:.2f}x" if v is not None else "?")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def public(k):
    return {key: value for key, value in k.items() if not key.startswith("_")}


def check(kernels, unknown, thresholds_path, gpu):
    """PASS/FAIL lines: bytes agree, every attention kernel recognised, every kernel at or
    above its threshold (and every threshold names a kernel)."""
    with open(thresholds_path, encoding="utf-8") as f:
        spec = json.load(f)
    gpu = spec.get("gpu", gpu)
    minimum = spec["min_ceiling_pct"]
    results = []
    bad = [f"{k['label']}: {'; '.join(k['problems'])}" for k in kernels if k["problems"]]
    results.append((not bad, f"{len(kernels)} kernels: main loop found, SASS load bytes agree "
                             f"with the source", bad))
    results.append((not unknown, "every attention-like kernel is recognised", unknown))
    # kernels compiled empty where the dispatcher never launches them have no ceiling
    kernels = [k for k in kernels if k.get("dispatched", True)]
    labels = {k["label"] for k in kernels}
    heavy = [f"{k['label']}: {k.get('registers')} registers, {k.get('spill_bytes')} bytes of local memory"
             for k in kernels if "registers" in k and (k["registers"] > spec.get("max_registers", 128)
                                                       or k.get("spill_bytes"))]
    results.append((not heavy, f"at most {spec.get('max_registers', 128)} registers and no local "
                               f"memory (spills) in every attention kernel", heavy))
    ahead = spec.get("min_issued_ahead_pct", {})
    early = [f"{k['label']}: {100 * k['ahead_share']:.0f}% of the iteration's load bytes issued for a "
             f"later iteration, threshold {ahead[k['path']]}%" for k in kernels
             if k.get("path") in ahead and "ahead_share" in k and 100 * k["ahead_share"] < ahead[k["path"]]]
    flight = spec.get("min_in_flight_pct", {})
    early += [f"{k['label']}: at most {100 * k['in_flight_share']:.0f}% of the iteration's load bytes in "
              f"flight at once, threshold {flight[k['path']]}%" for k in kernels
              if k.get("path") in flight and "in_flight_share" in k and 100 * k["in_flight_share"] < flight[k["path"]]]
    results.append((not early, "loads issued ahead of use (" + ", ".join(
        [f"{path}: issued for a later iteration >= {pct}%" for path, pct in sorted(ahead.items())] +
        [f"{path}: in flight at once >= {pct}%" for path, pct in sorted(flight.items())]) + ")", early))
    low = []
    for k in kernels:
        have = k["ceiling_pct"].get(gpu)
        want = minimum.get(k["label"])
        if want is None:
            low.append(f"{k['label']}: no threshold in {thresholds_path} (predicted {have}%)")
        elif have is None or have < want:
            low.append(f"{k['label']}: predicted {have}% of {gpu}, threshold {want}%")
    stale = [f"{label}: threshold for a kernel the binary does not have" for label in minimum
             if label not in labels]
    results.append((not low and not stale and kernels,
                    f"predicted {gpu} ceilings at or above {thresholds_path}", low + stale))
    return results


def find_cuobjdump(explicit):
    if explicit:
        return explicit
    candidates = [os.environ.get("CUOBJDUMP"), shutil.which("cuobjdump")]
    nvcc = os.environ.get("NVCC") or shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    candidates.append(os.path.join(os.path.dirname(nvcc), "cuobjdump"))
    build = os.environ.get("BUILD", os.path.join(ROOT, "build"))
    candidates.append(os.path.join(build, "tools", "nvidia", "cu13", "bin", "cuobjdump"))
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            nvdisasm = shutil.which("nvdisasm", path=os.path.dirname(c) + os.pathsep +
                                    os.environ.get("PATH", ""))
            if nvdisasm:
                return c
    return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("binary", help="cubin or executable")
    ap.add_argument("--arch", default="sm_90", choices=sorted(ARCHS))
    ap.add_argument("--json", metavar="FILE", help="write one object per kernel")
    ap.add_argument("--markdown", metavar="FILE", help="also write the tables to FILE")
    ap.add_argument("--check", metavar="THRESHOLDS", help="fail below these ceilings")
    ap.add_argument("--gpu", action="append", help="only these GPUs (repeatable); first = bound column")
    ap.add_argument("--latency", type=float, default=LOADED_LATENCY_CYCLES,
                    help=f"loaded DRAM latency in SM clocks (default {LOADED_LATENCY_CYCLES})")
    ap.add_argument("--branches", action="store_true", help="list every conditional branch")
    ap.add_argument("--listing", metavar="LABEL", help='print the walked iteration of one kernel, e.g. "f16 D=128 tile 1"')
    ap.add_argument("--cuobjdump", help="path of cuobjdump (nvdisasm must sit beside it or on PATH)")
    ap.add_argument("--source-dir", default=ROOT, help="where ekv_cuda.cuh is (default: the repository)")
    args = ap.parse_args(argv)
    started = time.time()
    cuobjdump = find_cuobjdump(args.cuobjdump)
    if cuobjdump is None:
        print("sass_model: no cuobjdump with nvdisasm beside it (install: tests/sass_tools.sh)",
              file=sys.stderr)
        return 2
    gpus = gpu_table(args.gpu)
    if args.gpu:
        gpus.sort(key=lambda g: args.gpu.index(g["name"]))
    if not gpus:
        print(f"sass_model: unknown GPU; known: {', '.join(g[0] for g in GPUS)}", file=sys.stderr)
        return 2
    try:
        kernels, unknown = model(args.binary, args.arch, cuobjdump, args.source_dir, gpus, args.latency)
    except (RuntimeError, SourceError, OSError) as e:
        print(f"sass_model: {e}", file=sys.stderr)
        return 1
    if args.listing:
        return listing(kernels, args.listing, args.binary, args.arch, cuobjdump)
    text = markdown(kernels, unknown, gpus, args.arch, args.latency, args.branches)
    text += "\n\n" + speedup_markdown(speedups(kernels, gpus), gpus)
    text += f"\n\n{len(kernels)} kernels modelled in {time.time() - started:.1f} s.\n"
    print(text)
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write(text)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump([public(k) for k in kernels], f, indent=1)
            f.write("\n")
    if args.check:
        status = 0
        for ok, what, details in check(kernels, unknown, args.check, gpus[0]["name"]):
            print(("PASS " if ok else "FAIL ") + what)
            for d in details[:40]:
                print(f"    {d}")
            status |= 0 if ok else 1
        return status
    return 0


def listing(kernels, label, binary, arch, cuobjdump):
    k = next((k for k in kernels if k["label"] == label), None)
    if k is None:
        print(f"sass_model: no kernel {label!r}; have: {', '.join(k['label'] for k in kernels)}",
              file=sys.stderr)
        return 2
    ins = instructions(parse_sass(run_cuobjdump(cuobjdump, ["-sass", "-fun", k["kernel"]], binary))[arch][k["kernel"]])
    cfg = Cfg(ins)
    header, body, _, _ = main_loop(cfg)
    path, branches = walk_iteration(cfg, header, body, k["_family"].get("rare_vote_branches", False))
    notes = {b["address"]: b["treatment"] for b in branches}
    for x in path:
        cls = instr_class(x)
        extra = f"   <- {notes[f'0x{x.addr:04x}']}" if f"0x{x.addr:04x}" in notes else ""
        print(f"{x.addr:06x}  {cls:8s} {x.text}{extra}")
    print(f"{len(path)} instructions; {k['kv_bytes_per_iteration']} KV bytes; "
          f"{k['ldg_lane_bytes_sass']} LDG lane bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
