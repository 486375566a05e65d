/* ekv_emu_warp_mma.h - ekv CPU execution emulator - the warp-level matrix instructions of the
   tensor-core path - same license as ekv (LICENSE)

   Host versions of the PTX instructions that ekv_cuda.cuh reaches through its one wrapper
   each (ekv_cuda__mma, ekv_cuda__transpose_8x8):

       mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32   D = A B + C
       movmatrix.sync.aligned.m8n8.trans.b16                              an 8x8 transpose

   Fragment layouts as the PTX ISA states them ("Matrix Fragments for mma.m16n8k16 with
   floating point type", "Warp-level matrix transpose instruction: movmatrix"), with
   groupID = laneid >> 2 and threadID_in_group = laneid % 4:
       A (16 x 16, row-major), four .b32 registers of two elements each, a0..a7:
           row = groupID      for a0, a1, a4, a5;  groupID + 8 for a2, a3, a6, a7
           col = threadID_in_group * 2 + (i & 1), plus 8 for a4..a7
       B (16 x 8, column-major), two registers, b0..b3:
           row = threadID_in_group * 2 + (i & 1), plus 8 for b2, b3;  col = groupID
       C and D (16 x 8, f32), c0..c3:
           row = groupID for c0, c1;  groupID + 8 for c2, c3
           col = threadID_in_group * 2 + (i & 1)
       movmatrix: lane l holds elements (l / 4, 2 (l % 4)) and (l / 4, 2 (l % 4) + 1) of the
           row-major 8 x 8 source in the low and high halves of a; d holds the same
           positions of the transpose.
   The element of a register with the lower index is in its low 16 bits.

   Arithmetic: the products of two f16 or bf16 values are exact in double, the sixteen of
   them and C are summed in double and D is rounded once to f32. A GPU's tensor core sums in
   its own order and precision, so D may differ from a GPU's in the last bits of f32.

   The lanes meet through the emulator's public warp operations: lane 0's gather area is
   shared with a shuffle, every lane writes its registers there, __syncwarp orders the
   writes before the reads, each lane computes its own D, and a second __syncwarp keeps
   the area alive until the last lane has read it. Every lane of the warp must take part,
   as .aligned requires.

   Fault injection for the tests that a wrong fragment index fails validation: with
   EKV_EMU_MMA_FAULT=swap-a-rows in the environment, mma reads A's registers 0 and 1 (rows
   groupID and groupID + 8 of columns 0..7) the wrong way round, which is what a kernel that
   put a row into the wrong register would compute. Read at every call, so a test can set
   and unset it.

   Included at the end of cuda_runtime.h; needs nothing else. */
#ifndef EKV_EMU_WARP_MMA_H
#define EKV_EMU_WARP_MMA_H

namespace ekv_emu {

struct mma_lane_registers {
    unsigned a[4], b[2];
};

/* Lane 0's area, filled by every lane. */
struct mma_gather {
    mma_lane_registers lanes[32];
};

inline unsigned warp_lane()
{
    const dim3 b = blockDim;
    return (threadIdx.x + threadIdx.y * b.x + threadIdx.z * b.x * b.y) % 32u;
}

inline double mma_element(unsigned word, unsigned half, bool bf16)
{
    const unsigned short bits = static_cast<unsigned short>(half ? word >> 16 : word & 0xffffu);
    return bf16 ? double(bfloat16_bits_to_float(bits)) : double(half_bits_to_float(bits));
}

/* Element (row, col) of A and of B, found from the layout above read backwards. */
inline double mma_a(const mma_gather &g, unsigned row, unsigned col, bool bf16, bool swap_rows)
{
    const unsigned lane = (row % 8) * 4 + (col % 8) / 2;
    unsigned reg = (row >= 8 ? 1u : 0u) + (col >= 8 ? 2u : 0u);
    if (swap_rows && reg < 2) reg ^= 1u;
    return mma_element(g.lanes[lane].a[reg], col & 1u, bf16);
}

inline double mma_b(const mma_gather &g, unsigned row, unsigned col, bool bf16)
{
    const unsigned lane = col * 4 + (row % 8) / 2;
    return mma_element(g.lanes[lane].b[row >= 8 ? 1 : 0], row & 1u, bf16);
}

inline bool mma_fault_swap_a_rows()
{
    const char *fault = std::getenv("EKV_EMU_MMA_FAULT");
    return fault != nullptr && std::strcmp(fault, "swap-a-rows") == 0;
}

/* .aligned: every thread of the warp executes the instruction. Asked after the first
   exchange of the instruction, when every lane of the warp has either arrived or exited
   and none that arrived can exit before the caller asks (the __syncwarp that follows). */
inline void require_whole_warp(const char *instruction)
{
    if (active_lanes() != 0xffffffffu) {
        char why[160];
        std::snprintf(why, sizeof why, "%s from lanes 0x%08x: .aligned needs all 32 threads of the warp",
                      instruction, active_lanes());
        trap(why);
    }
}

} /* namespace ekv_emu */

/* mma.sync.aligned.m16n8k16.row.col.f32.T.T.f32 {d}, {a}, {b}, {c} with T = bf16 when `bf16`
   is nonzero, else f16; d and c may be the same array. */
inline void ekv_emu_mma_m16n8k16(int bf16, float d[4], const unsigned a[4], const unsigned b[2],
                                 const float c[4])
{
    ekv_emu::mma_gather mine;
    const unsigned lane = ekv_emu::warp_lane();
    const bool swap_rows = ekv_emu::mma_fault_swap_a_rows();
    ekv_emu::mma_gather *area = reinterpret_cast<ekv_emu::mma_gather *>(static_cast<std::uintptr_t>(
        __shfl_sync(0xffffffffu, static_cast<unsigned long long>(reinterpret_cast<std::uintptr_t>(&mine)), 0)));
    float result[4];
    ekv_emu::require_whole_warp("mma.sync.aligned.m16n8k16");
    for (int i = 0; i < 4; ++i) area->lanes[lane].a[i] = a[i];
    for (int i = 0; i < 2; ++i) area->lanes[lane].b[i] = b[i];
    __syncwarp();
    for (unsigned i = 0; i < 4; ++i) {
        const unsigned row = lane / 4 + (i >= 2 ? 8u : 0u), col = (lane % 4) * 2 + (i & 1u);
        double sum = double(c[i]);
        for (unsigned k = 0; k < 16; ++k)
            sum += ekv_emu::mma_a(*area, row, k, bf16 != 0, swap_rows) * ekv_emu::mma_b(*area, k, col, bf16 != 0);
        result[i] = float(sum);
    }
    __syncwarp();
    for (int i = 0; i < 4; ++i) d[i] = result[i];
}

/* movmatrix.sync.aligned.m8n8.trans.b16 d, a */
inline unsigned ekv_emu_movmatrix_m8n8_trans_b16(unsigned a)
{
    const unsigned lane = ekv_emu::warp_lane(), row = lane / 4, col = (lane % 4) * 2;
    /* d's element (row, col + h) is the source's (col + h, row): lane 4 (col + h) + row / 2,
       half row % 2 */
    const unsigned low = __shfl_sync(0xffffffffu, a, int(4 * col + row / 2));
    /* between the two exchanges: no lane that took part in the first can exit before the
       caller reaches the second */
    ekv_emu::require_whole_warp("movmatrix.sync.aligned.m8n8");
    const unsigned high = __shfl_sync(0xffffffffu, a, int(4 * (col + 1) + row / 2));
    const unsigned shift = (row % 2) * 16;
    return ((low >> shift) & 0xffffu) | (((high >> shift) & 0xffffu) << 16);
}

#endif /* EKV_EMU_WARP_MMA_H */
