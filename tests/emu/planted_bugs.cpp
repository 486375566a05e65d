/* planted_bugs.cpp - kernels with bugs that a GPU exposes and a lenient emulator would hide,
   each next to its fixed twin. The emulator must catch every bug: run_emu_tests.sh runs
   each kernel both ways and checks that the bug fails the way it names below and that the
   fixed twin passes (also under ThreadSanitizer, with no report).

       planted_bugs KERNEL bug|fixed
       g++ -std=c++17 -g -O1 -pthread -Itests/emu/include tests/emu/planted_bugs.cpp -o planted_bugs

   KERNEL                  the bug                                     how it shows
   shared-before-write     only block 0 clears its static __shared__    a wrong total (0xff fill)
                           total; the others start from what the
                           previous block left, if they share memory
   dynamic-before-write    the same in dynamic shared memory            a wrong total (0xff fill)
   shuffle-outside-mask    a half-warp shuffle reads lane 16, outside    NaN in out[15]
                           its mask, expecting its own value back
                           (that is what width 16 would do)
   divergent-barrier       the two halves of a block wait at two        a failed launch naming
                           different __syncthreads calls                 both calls
   race-between-blocks     blocks number themselves with a plain        ThreadSanitizer reports
                           read-modify-write of a global counter         a data race

   Exit status 0: the output is right; 1: it is not, or the launch failed (one line says
   which); 2: usage.
*/
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

constexpr int block_threads = 64;
constexpr int blocks = 8;

__global__ void block_totals(const int *in, int *out, int fixed)
{
    __shared__ int total;
    if (threadIdx.x == 0 && (fixed || blockIdx.x == 0)) total = 0;
    __syncthreads();
    atomicAdd(&total, in[blockIdx.x * blockDim.x + threadIdx.x]);
    __syncthreads();
    if (threadIdx.x == 0) {
        out[blockIdx.x] = total;
        total = 0; /* "ready for the next block": on a GPU it may run anywhere else */
    }
}

__global__ void block_totals_dynamic(const int *in, int *out, int fixed)
{
    int *total = reinterpret_cast<int *>(ekv_cuda_host_dynamic_shared());
    if (threadIdx.x == 0 && (fixed || blockIdx.x == 0)) *total = 0;
    __syncthreads();
    atomicAdd(total, in[blockIdx.x * blockDim.x + threadIdx.x]);
    __syncthreads();
    if (threadIdx.x == 0) {
        out[blockIdx.x] = *total;
        *total = 0;
    }
}

/* Lanes 0-15 each want their right neighbour's value, lane 15 its own. */
__global__ void right_neighbour(const float *in, float *out, int fixed)
{
    if (threadIdx.x >= 16) return;
    const float v = in[threadIdx.x];
    out[threadIdx.x] = fixed ? __shfl_down_sync(0x0000ffffu, v, 1, 16) : __shfl_down_sync(0x0000ffffu, v, 1);
}

__global__ void swap_halves(const int *in, int *out, int fixed)
{
    __shared__ int slots[block_threads];
    const unsigned t = threadIdx.x;
    slots[t] = in[t];
    if (fixed) __syncthreads();
    if (t < block_threads / 2) {
        if (!fixed) __syncthreads();
        out[t] = slots[t + block_threads / 2];
    } else {
        if (!fixed) __syncthreads();
        out[t] = slots[t - block_threads / 2];
    }
}

__global__ void number_blocks(int *next, int *ticket, int fixed)
{
    if (threadIdx.x != 0) return;
    if (fixed) {
        ticket[blockIdx.x] = atomicAdd(next, 1);
    } else {
        const int mine = *next;
        *next = mine + 1;
        ticket[blockIdx.x] = mine;
    }
}

static int fail(const char *what)
{
    std::printf("planted_bugs: %s\n", what);
    return 1;
}

static bool check(cudaError_t status, const char *call)
{
    if (status == cudaSuccess) return true;
    std::printf("planted_bugs: %s gave %s\n", call, cudaGetErrorName(status));
    return false;
}
#define CHECK(call)                                                                                \
    do {                                                                                           \
        if (!check((call), #call)) return 1;                                                       \
    } while (0)

static int run_block_totals(bool dynamic, int fixed)
{
    const int count = blocks * block_threads;
    std::vector<int> host(count), totals(blocks);
    for (int i = 0; i < count; ++i) host[i] = i % 7;
    int *in = nullptr, *out = nullptr;
    CHECK(cudaMalloc(&in, count * sizeof(int)));
    CHECK(cudaMalloc(&out, blocks * sizeof(int)));
    CHECK(cudaMemcpy(in, host.data(), count * sizeof(int), cudaMemcpyHostToDevice));
    if (dynamic)
        CHECK(ekv_cuda_host_launch(block_totals_dynamic, dim3(blocks), dim3(block_threads), sizeof(int), nullptr, in,
                                   out, fixed));
    else
        CHECK(ekv_cuda_host_launch(block_totals, dim3(blocks), dim3(block_threads), 0, nullptr, in, out, fixed));
    CHECK(cudaMemcpy(totals.data(), out, blocks * sizeof(int), cudaMemcpyDeviceToHost));
    for (int b = 0; b < blocks; ++b) {
        int expected = 0;
        for (int t = 0; t < block_threads; ++t) expected += host[b * block_threads + t];
        if (totals[b] != expected) {
            std::printf("planted_bugs: block %d: total %d, expected %d\n", b, totals[b], expected);
            return 1;
        }
    }
    return 0;
}

static int run_right_neighbour(int fixed)
{
    float host[32], result[32];
    for (int i = 0; i < 32; ++i) host[i] = float(i);
    float *in = nullptr, *out = nullptr;
    CHECK(cudaMalloc(&in, sizeof host));
    CHECK(cudaMalloc(&out, sizeof result));
    CHECK(cudaMemcpy(in, host, sizeof host, cudaMemcpyHostToDevice));
    CHECK(ekv_cuda_host_launch(right_neighbour, dim3(1), dim3(32), 0, nullptr, in, out, fixed));
    CHECK(cudaMemcpy(result, out, sizeof result, cudaMemcpyDeviceToHost));
    for (int i = 0; i < 16; ++i) {
        const float expected = host[i < 15 ? i + 1 : i];
        if (!(result[i] == expected)) {
            std::printf("planted_bugs: out[%d] = %g, expected %g\n", i, double(result[i]), double(expected));
            return 1;
        }
    }
    return 0;
}

static int run_swap_halves(int fixed)
{
    int host[block_threads], result[block_threads];
    for (int i = 0; i < block_threads; ++i) host[i] = 100 + i;
    int *in = nullptr, *out = nullptr;
    CHECK(cudaMalloc(&in, sizeof host));
    CHECK(cudaMalloc(&out, sizeof result));
    CHECK(cudaMemcpy(in, host, sizeof host, cudaMemcpyHostToDevice));
    CHECK(ekv_cuda_host_launch(swap_halves, dim3(1), dim3(block_threads), 0, nullptr, in, out, fixed));
    CHECK(cudaMemcpy(result, out, sizeof result, cudaMemcpyDeviceToHost));
    for (int i = 0; i < block_threads; ++i)
        if (result[i] != host[(i + block_threads / 2) % block_threads]) return fail("swap_halves: wrong output");
    return 0;
}

static int run_number_blocks(int fixed)
{
    constexpr int many = 32;
    int *next = nullptr, *ticket = nullptr;
    CHECK(cudaMalloc(&next, sizeof(int)));
    CHECK(cudaMalloc(&ticket, many * sizeof(int)));
    CHECK(cudaMemset(next, 0, sizeof(int)));
    CHECK(ekv_cuda_host_launch(number_blocks, dim3(many), dim3(32), 0, nullptr, next, ticket, fixed));
    int count = 0, host[many];
    CHECK(cudaMemcpy(&count, next, sizeof count, cudaMemcpyDeviceToHost));
    CHECK(cudaMemcpy(host, ticket, sizeof host, cudaMemcpyDeviceToHost));
    bool seen[many] = {};
    for (int b = 0; b < many; ++b) {
        if (host[b] < 0 || host[b] >= many || seen[host[b]]) return fail("number_blocks: two blocks took one number");
        seen[host[b]] = true;
    }
    if (count != many) return fail("number_blocks: the counter lost an increment");
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 3 || (std::strcmp(argv[2], "bug") != 0 && std::strcmp(argv[2], "fixed") != 0)) {
        std::fprintf(stderr, "usage: %s KERNEL bug|fixed\n", argv[0]);
        return 2;
    }
    const int fixed = std::strcmp(argv[2], "fixed") == 0;
    const char *kernel = argv[1];
    if (std::strcmp(kernel, "shared-before-write") == 0) return run_block_totals(false, fixed);
    if (std::strcmp(kernel, "dynamic-before-write") == 0) return run_block_totals(true, fixed);
    if (std::strcmp(kernel, "shuffle-outside-mask") == 0) return run_right_neighbour(fixed);
    if (std::strcmp(kernel, "divergent-barrier") == 0) return run_swap_halves(fixed);
    if (std::strcmp(kernel, "race-between-blocks") == 0) return run_number_blocks(fixed);
    std::fprintf(stderr, "%s: unknown kernel %s\n", argv[0], kernel);
    return 2;
}
