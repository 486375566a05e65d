/* test_mma_emu.cpp - the emulator's host versions of mma.sync m16n8k16 (f16 and bf16 in, f32
   accumulate) and movmatrix.m8n8.trans.b16 (tests/emu/include/ekv_emu_warp_mma.h) against a
   plain matrix product and a plain transpose. The fragments are filled here from the PTX
   ISA's tables ("Matrix Fragments for mma.m16n8k16 with floating point type", Figures
   79-81; "movmatrix", Figures 109-110), written out below as lane -> (row, col) tables and
   independently of both the emulator (which reads the layout backwards, (row, col) ->
   lane) and the kernels of ekv_cuda.cuh, so that no two of them can share one misreading.
   Also: the fault injection that the kernel tests use (EKV_EMU_MMA_FAULT) changes the
   result, and a warp that calls mma from divergent lanes is refused.

   Build: g++ -std=c++17 -O1 -pthread -Itests/emu/include -DEKV_EMULATOR -I. \
              tests/test_mma_emu.cpp -o build/test_mma_emu */
#include "../ekv.h"
#include "ekv_test.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* The PTX ISA's m16n8k16 tables, one entry per (lane, element): element i of a thread's
   fragment sits in register i / 2, low half for even i. */
typedef struct mt_position {
    int row, col;
} mt_position;

/* A: "row = groupID for ai where 0 <= i < 2 || 4 <= i < 6, groupID + 8 otherwise;
       col = (threadID_in_group * 2) + (i & 0x1) for ai where i < 4, + 8 for i >= 4" */
static mt_position mt_a_position(int lane, int i)
{
    const int group = lane >> 2, in_group = lane % 4;
    mt_position p;
    p.row = ((i >= 0 && i < 2) || (i >= 4 && i < 6)) ? group : group + 8;
    p.col = in_group * 2 + (i & 1) + (i >= 4 ? 8 : 0);
    return p;
}

/* B: "row = (threadID_in_group * 2) + (i & 0x1) for bi where i < 2, + 8 for i >= 2;
       col = groupID" */
static mt_position mt_b_position(int lane, int i)
{
    mt_position p;
    p.row = (lane % 4) * 2 + (i & 1) + (i >= 2 ? 8 : 0);
    p.col = lane >> 2;
    return p;
}

/* C, D: "row = groupID for ci where i < 2, groupID + 8 for i >= 2;
          col = (threadID_in_group * 2) + (i & 0x1)" */
static mt_position mt_c_position(int lane, int i)
{
    mt_position p;
    p.row = (lane >> 2) + (i >= 2 ? 8 : 0);
    p.col = (lane % 4) * 2 + (i & 1);
    return p;
}

/* movmatrix source (Figure 109): a group of four threads holds a row, two elements each */
static mt_position mt_movmatrix_position(int lane, int i)
{
    mt_position p;
    p.row = lane / 4;
    p.col = (lane % 4) * 2 + i;
    return p;
}

typedef struct mt_fragments {
    unsigned a[32][4], b[32][2];
    float c[32][4], d[32][4];
    unsigned trans_in[32], trans_out[32];
    int bf16;
} mt_fragments;

__global__ void mt_kernel(mt_fragments *f)
{
    const int lane = (int)threadIdx.x;
    ekv_emu_mma_m16n8k16(f->bf16, f->d[lane], f->a[lane], f->b[lane], f->c[lane]);
    f->trans_out[lane] = ekv_emu_movmatrix_m8n8_trans_b16(f->trans_in[lane]);
}

/* Lanes 0-15 call mma, 16-31 do not: must end the launch, not hang. */
__global__ void mt_divergent_kernel(mt_fragments *f)
{
    const int lane = (int)threadIdx.x;
    if (lane < 16) ekv_emu_mma_m16n8k16(0, f->d[lane], f->a[lane], f->b[lane], f->c[lane]);
}

__global__ void mt_divergent_transpose_kernel(unsigned *out)
{
    const int lane = (int)threadIdx.x;
    if (lane >= 8) out[lane] = ekv_emu_movmatrix_m8n8_trans_b16((unsigned)lane);
}

static uint64_t mt_state = 0x2545f4914f6cdd1dull;

/* a value exact in both f16 and bf16: k/64 for k in [-128, 128] */
static float mt_value(void)
{
    mt_state = mt_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((int)((mt_state >> 33) % 257u) - 128) / 64.0f;
}

static unsigned short mt_bits(float x, int bf16)
{
    return bf16 ? __bfloat16_as_ushort(__float2bfloat16(x)) : __half_as_ushort(__float2half(x));
}

static void mt_set(unsigned *word, int i, unsigned short bits)
{
    if (i & 1) *word = (*word & 0xffffu) | ((unsigned)bits << 16);
    else *word = (*word & 0xffff0000u) | bits;
}

/* Fills the fragments of random A, B, C, runs one warp, compares D with A B + C. Returns
   the largest |D - (A B + C)|. */
static double mt_run(int bf16, int *transpose_ok)
{
    static float a[16][16], b[16][8], c[16][8];
    static unsigned short m[8][8];
    mt_fragments *f = NULL;
    double worst = 0.0;
    int lane, i, r, k;
    *transpose_ok = 0;
    /* emulator device memory is host memory: filled and read here directly */
    if (cudaMalloc((void **)&f, sizeof *f) != cudaSuccess) return 1e30;
    memset(f, 0, sizeof *f);
    f->bf16 = bf16;
    for (r = 0; r < 16; r++)
        for (k = 0; k < 16; k++) a[r][k] = mt_value();
    for (k = 0; k < 16; k++)
        for (i = 0; i < 8; i++) b[k][i] = mt_value();
    for (r = 0; r < 16; r++)
        for (i = 0; i < 8; i++) c[r][i] = mt_value() * 4.0f;
    for (r = 0; r < 8; r++)
        for (i = 0; i < 8; i++) m[r][i] = (unsigned short)(r * 8 + i + 1);
    for (lane = 0; lane < 32; lane++) {
        for (i = 0; i < 8; i++) {
            const mt_position p = mt_a_position(lane, i);
            mt_set(&f->a[lane][i / 2], i, mt_bits(a[p.row][p.col], bf16));
        }
        for (i = 0; i < 4; i++) {
            const mt_position p = mt_b_position(lane, i);
            mt_set(&f->b[lane][i / 2], i, mt_bits(b[p.row][p.col], bf16));
        }
        for (i = 0; i < 4; i++) {
            const mt_position p = mt_c_position(lane, i);
            f->c[lane][i] = c[p.row][p.col];
        }
        for (i = 0; i < 2; i++) {
            const mt_position p = mt_movmatrix_position(lane, i);
            mt_set(&f->trans_in[lane], i, m[p.row][p.col]);
        }
    }
    if (ekv_cuda_host_launch(mt_kernel, dim3(1), dim3(32), 0, 0, f) != cudaSuccess ||
        cudaDeviceSynchronize() != cudaSuccess) {
        cudaFree(f);
        return 1e30;
    }
    *transpose_ok = 1;
    for (lane = 0; lane < 32; lane++) {
        for (i = 0; i < 4; i++) {
            const mt_position p = mt_c_position(lane, i);
            double want = c[p.row][p.col], d;
            for (k = 0; k < 16; k++) want += (double)a[p.row][k] * (double)b[k][p.col];
            d = fabs((double)f->d[lane][i] - want);
            if (!(d <= worst)) worst = d; /* NaN stays the worst */
        }
        for (i = 0; i < 2; i++) {
            /* the transpose's element (row, col) is the source's (col, row) */
            const mt_position p = mt_movmatrix_position(lane, i);
            const unsigned short got = (unsigned short)(i ? f->trans_out[lane] >> 16 : f->trans_out[lane] & 0xffffu);
            if (got != m[p.col][p.row]) *transpose_ok = 0;
        }
    }
    cudaFree(f);
    return worst;
}

int main(void)
{
    int transpose_ok = 0, bf16;
    for (bf16 = 0; bf16 <= 1; bf16++) {
        char name[96];
        int trial;
        double worst = 0.0;
        snprintf(name, sizeof name, "mma m16n8k16 %s: D = A B + C from the PTX ISA's fragment tables",
                 bf16 ? "bf16" : "f16");
        TEST_BEGIN(name);
        for (trial = 0; trial < 4; trial++) {
            const double w = mt_run(bf16, &transpose_ok);
            if (!(w <= worst)) worst = w;
        }
        /* exact products of k/64 values, 17 terms: the sum is exact in f32 up to |D| < 2^16 */
        CHECK(worst == 0.0, "largest |D - (A B + C)| = %g", worst);
        TEST_END();
    }
    TEST_BEGIN("movmatrix m8n8 trans b16: the transpose of the PTX ISA's source layout");
    mt_run(0, &transpose_ok);
    CHECK(transpose_ok, "some element of the transpose is misplaced");
    TEST_END();

    TEST_BEGIN("EKV_EMU_MMA_FAULT=swap-a-rows changes D (the kernel tests' planted fragment bug)");
    setenv("EKV_EMU_MMA_FAULT", "swap-a-rows", 1);
    {
        const double w = mt_run(0, &transpose_ok);
        CHECK(w > 0.1, "a swapped fragment register went unnoticed (largest error %g)", w);
    }
    unsetenv("EKV_EMU_MMA_FAULT");
    CHECK(mt_run(0, &transpose_ok) == 0.0, "the fault stays after unsetenv");
    TEST_END();

    TEST_BEGIN("mma from half a warp ends the launch with an error instead of hanging");
    {
        mt_fragments *f = NULL;
        cudaError_t e;
        CHECK(cudaMalloc((void **)&f, sizeof *f) == cudaSuccess, "cudaMalloc");
        e = ekv_cuda_host_launch(mt_divergent_kernel, dim3(1), dim3(32), 0, 0, f);
        if (e == cudaSuccess) e = cudaDeviceSynchronize();
        CHECK(e != cudaSuccess, "a divergent mma completed");
        cudaFree(f);
        cudaDeviceReset();
    }
    TEST_END();
    TEST_BEGIN("movmatrix from 24 lanes ends the launch with an error naming the instruction");
    {
        unsigned *out = NULL;
        cudaError_t e;
        CHECK(cudaMalloc((void **)&out, 32 * sizeof *out) == cudaSuccess, "cudaMalloc");
        e = ekv_cuda_host_launch(mt_divergent_transpose_kernel, dim3(1), dim3(32), 0, 0, out);
        if (e == cudaSuccess) e = cudaDeviceSynchronize();
        CHECK(e != cudaSuccess, "a divergent movmatrix completed");
        cudaFree(out);
        cudaDeviceReset();
    }
    TEST_END();
    return ekv_test_finish();
}
