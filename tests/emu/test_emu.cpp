/* test_emu.cpp - the CPU execution emulator's own tests: indexing, barriers, shared and
   dynamic shared memory (0xff at the start of every block), every warp operation (partial
   warps too; poison from lanes outside the mask), atomics under contention, the seeded block
   order, fused multiply-add, bit-exact fp16/bf16/fp8 conversions against independent
   references, memory, streams, events, graphs, the fictitious device and its EKV_EMU_*
   overrides, launch errors, and barriers that not every thread reaches or that threads reach
   at different calls (reported, no hang). Prints PASS/FAIL per test and
   "N passed, N failed[, N skipped]"; exits 1 on any failure.
   `test_emu --device-info` prints the device the environment describes and exits.

       g++ -std=c++17 -O2 -Wall -Wextra -Werror -pthread -Itests/emu/include tests/emu/test_emu.cpp -x c++ tests/emu/sample_kernel.cu -o build/emu/test_emu
*/
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

int sample_kernel_check(void); /* sample_kernel.cu, the second translation unit */

/* >>harness ---------------------------------------------------------------------------- */

static std::string format(const char *fmt, ...)
{
    char text[512];
    va_list args;
    va_start(args, fmt);
    std::vsnprintf(text, sizeof text, fmt, args);
    va_end(args);
    return text;
}

/* A test returns "" when it passes, else why it failed. */
#define REQUIRE(condition)                                                                         \
    do {                                                                                           \
        if (!(condition)) return format("line %d: %s", __LINE__, #condition);                      \
    } while (0)
#define REQUIRE_MSG(condition, ...)                                                                \
    do {                                                                                           \
        if (!(condition)) return format("line %d: ", __LINE__) + format(__VA_ARGS__);              \
    } while (0)
#define CUDA_OK(call)                                                                              \
    do {                                                                                           \
        const cudaError_t status_ = (call);                                                        \
        if (status_ != cudaSuccess) return format("line %d: %s: %s", __LINE__, #call, cudaGetErrorName(status_)); \
    } while (0)
#define CUDA_FAILS(call, expected)                                                                 \
    do {                                                                                           \
        const cudaError_t status_ = (call);                                                        \
        if (status_ != (expected))                                                                 \
            return format("line %d: %s gave %s, expected %s", __LINE__, #call, cudaGetErrorName(status_), \
                          cudaGetErrorName(expected));                                             \
    } while (0)

static const char *const skip_prefix = "SKIP: ";

static unsigned fresh_seed()
{
    static const unsigned seed = std::random_device{}();
    return seed;
}

/* RAII device buffer so that a failing REQUIRE does not leak device memory. */
template <typename T>
struct device_buffer {
    T *data = nullptr;
    size_t count = 0;
    explicit device_buffer(size_t n) : count(n)
    {
        if (cudaMalloc(&data, n * sizeof(T)) != cudaSuccess) data = nullptr;
    }
    ~device_buffer() { cudaFree(data); }
    device_buffer(const device_buffer &) = delete;
    device_buffer &operator=(const device_buffer &) = delete;
    size_t bytes() const { return count * sizeof(T); }
};

template <typename T>
static std::vector<T> download(const device_buffer<T> &buffer)
{
    std::vector<T> host(buffer.count);
    if (cudaMemcpy(host.data(), buffer.data, buffer.bytes(), cudaMemcpyDeviceToHost) != cudaSuccess) host.clear();
    return host;
}

/* >>kernels ---------------------------------------------------------------------------- */

struct thread_record {
    unsigned thread[3], block[3], block_dim[3], grid_dim[3];
    int warp_size;
};

__global__ void record_indices(thread_record *out)
{
    const unsigned block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    const unsigned thread = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    thread_record &r = out[block * (blockDim.x * blockDim.y * blockDim.z) + thread];
    r = thread_record{{threadIdx.x, threadIdx.y, threadIdx.z}, {blockIdx.x, blockIdx.y, blockIdx.z},
                      {blockDim.x, blockDim.y, blockDim.z}, {gridDim.x, gridDim.y, gridDim.z}, warpSize};
}

template <int BLOCK>
__global__ void __launch_bounds__(BLOCK) block_sum(const float *in, float *out, int per_block)
{
    __shared__ float partial[BLOCK];
    const float *segment = in + static_cast<size_t>(blockIdx.x) * per_block;
    float sum = 0.0f;
    for (int i = threadIdx.x; i < per_block; i += BLOCK) sum += segment[i];
    partial[threadIdx.x] = sum;
    __syncthreads();
    for (int stride = BLOCK / 2; stride > 0; stride /= 2) {
        if (int(threadIdx.x) < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = partial[0];
}

/* Reverses each block's slice through dynamic shared memory; also reports whether the
   buffer was 16-byte aligned and held the poison pattern before this block wrote it. */
__global__ void reverse_in_block(const float *in, float *out, int *flags)
{
    float *slots = reinterpret_cast<float *>(ekv_cuda_host_dynamic_shared());
    const unsigned t = threadIdx.x, base = blockIdx.x * blockDim.x;
    const bool aligned = reinterpret_cast<std::uintptr_t>(slots) % 16 == 0;
    const bool poisoned = __float_as_uint(slots[t]) == 0xffffffffu;
    __syncthreads();
    slots[t] = in[base + t];
    __syncthreads();
    out[base + t] = slots[blockDim.x - 1 - t];
    flags[base + t] = (aligned ? 1 : 0) | (poisoned ? 2 : 0);
}

enum { shuffle_results = 14 };

__global__ void shuffle_kernel(long long *out)
{
    const unsigned full = 0xffffffffu;
    const int t = threadIdx.x, lane = t % 32, warp = t / 32;
    const int v = 1000 * warp + lane;
    long long *r = out + t * shuffle_results;
    r[0] = __shfl_sync(full, v, (lane * 7 + 3) % 32);
    r[1] = __shfl_up_sync(full, v, 3);
    r[2] = __shfl_down_sync(full, v, 5);
    r[3] = __shfl_xor_sync(full, v, 9);
    r[4] = __shfl_sync(full, v, 2, 8);
    r[5] = __shfl_up_sync(full, v, 1, 8);
    r[6] = __shfl_down_sync(full, v, 2, 8);
    r[7] = __shfl_xor_sync(full, v, 4, 8);
    r[8] = __shfl_xor_sync(full, v, 8, 8);
    r[9] = __float_as_int(__shfl_xor_sync(full, float(v) + 0.5f, 1));
    r[10] = __double_as_longlong(__shfl_down_sync(full, double(v) * 1.25, 1));
    r[11] = __shfl_sync(full, static_cast<long long>(v) << 33, 31);
    r[12] = __shfl_xor_sync(full, static_cast<unsigned>(v), 16);
    const __half2 pair = __shfl_xor_sync(full, __floats2half2_rn(float(lane), float(warp)), 2);
    r[13] = __half_as_ushort(pair.x) | (static_cast<long long>(__half_as_ushort(pair.y)) << 16);
}

/* Lanes 24-31 exit at once; the others read from lanes outside their mask or exited. */
__global__ void shuffle_poison_kernel(int *out)
{
    const int lane = threadIdx.x % 32;
    if (lane >= 24) return;
    int *r = out + lane * 3;
    r[0] = __shfl_down_sync(0xffffffffu, 100 + lane, 4);
    r[1] = lane < 16 ? __shfl_xor_sync(0x0000ffffu, 200 + lane, 16) : __shfl_xor_sync(0x00ff0000u, 200 + lane, 1);
    r[2] = __shfl_sync(0xffffffffu, 300 + lane, 30);
}

__global__ void warp_sum_kernel(const float *in, float *out)
{
    float v = in[threadIdx.x];
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
    out[threadIdx.x] = v;
}

enum { vote_results = 12 };

__global__ void vote_kernel(long long *out)
{
    const unsigned full = 0xffffffffu;
    const int t = threadIdx.x, lane = t % 32;
    long long *r = out + t * vote_results;
    r[0] = __ballot_sync(full, lane % 3 == 0);
    r[1] = __any_sync(full, lane == 7);
    r[2] = __all_sync(full, t < 40);
    r[3] = __activemask();
    r[4] = lane < 16 ? __ballot_sync(0x0000ffffu, lane & 1) : __ballot_sync(0xffff0000u, lane & 1);
    r[5] = __reduce_add_sync(full, static_cast<unsigned>(lane));
    r[6] = __reduce_max_sync(full, lane - 20);
    r[7] = __reduce_min_sync(full, static_cast<unsigned>(lane + 5));
    r[8] = __syncthreads_count(t % 4 == 0);
    r[9] = __syncthreads_and(t < 48);
    r[10] = __syncthreads_or(t == 47);
    r[11] = __syncthreads_and(t < 47);
    __syncwarp();
}

struct atomic_counters {
    int add_int, sub_int, max_int, cas_lock, locked_plain;
    unsigned min_unsigned, inc_wrap, exchanged;
    unsigned long long add_ull;
    float add_float;
    double add_double;
    int histogram[8];
};

__global__ void atomics_kernel(atomic_counters *c, int iterations)
{
    __shared__ int histogram[8];
    const int t = threadIdx.x, id = blockIdx.x * blockDim.x + t;
    if (t < 8) histogram[t] = 0;
    __syncthreads();
    for (int i = 0; i < iterations; ++i) {
        atomicAdd(&c->add_int, 1);
        atomicSub(&c->sub_int, 2);
        atomicAdd(&c->add_ull, 3ull);
        atomicAdd(&c->add_float, 1.0f);
        atomicAdd(&c->add_double, 0.5);
        atomicMax(&c->max_int, id * 7 + i);
        atomicMin(&c->min_unsigned, static_cast<unsigned>(1000000 - id - i));
        atomicInc(&c->inc_wrap, 9u);
        atomicAdd(&histogram[(t + i) % 8], 1);
        while (atomicCAS(&c->cas_lock, 0, 1) != 0) {
        }
        c->locked_plain += 1; /* mutual exclusion by the CAS lock */
        atomicExch(&c->cas_lock, 0);
    }
    atomicExch(&c->exchanged, static_cast<unsigned>(id));
    __syncthreads();
    if (t < 8) atomicAdd(&c->histogram[t], histogram[t]);
}

__global__ void add_to_counter(int *counter, int amount) { atomicAdd(counter, amount); }

/* Static shared memory in a kernel, a template kernel and a device function: each thread
   reads its word before writing it, and records whether it held the 0xff fill. */
__device__ unsigned first_read_of_helper_word(unsigned t)
{
    __shared__ unsigned words[64];
    const unsigned before = words[t];
    words[t] = t;
    return before;
}

__global__ void static_shared_first_reads(unsigned *out)
{
    __shared__ unsigned words[64];
    __shared__ double scalar;
    const unsigned t = threadIdx.x, i = blockIdx.x * blockDim.x + t;
    out[3 * i] = words[t];
    words[t] = i;
    out[3 * i + 1] = first_read_of_helper_word(t);
    unsigned long long bits = 0;
    if (t == 0) {
        std::memcpy(&bits, &scalar, sizeof bits);
        scalar = double(i);
    }
    out[3 * i + 2] = t == 0 ? unsigned(bits >> 32) : 0xffffffffu;
}

template <int N>
__global__ void static_shared_first_reads_template(unsigned *out)
{
    __shared__ unsigned words[N];
    const unsigned t = threadIdx.x;
    out[blockIdx.x * blockDim.x + t] = words[t];
    words[t] = t + 1;
}

/* Thread 0 of each block takes the next ticket: the order in which blocks started. */
__global__ void record_block_order(int *next, int *order)
{
    if (threadIdx.x == 0) order[atomicAdd(next, 1)] = int(blockIdx.x);
}

__global__ void barrier_in_two_branches(int *out)
{
    if (threadIdx.x < 32) __syncthreads();
    else __syncthreads();
    out[threadIdx.x] = 1;
}

__global__ void lane_waits_at_block_barrier(int *out)
{
    if (threadIdx.x == 5) __syncthreads();
    else out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, int(threadIdx.x), 1);
}

/* a * b + c for each element, which nvcc contracts to one fused multiply-add, and the same
   through the _rn intrinsics, which it never contracts. */
__global__ void multiply_add(const float *a, const float *b, const float *c, float *out)
{
    const unsigned i = threadIdx.x;
    out[i] = a[i] * b[i] + c[i];
    out[blockDim.x + i] = __fadd_rn(__fmul_rn(a[i], b[i]), c[i]);
}

__global__ void early_exit_before_barrier(int *out)
{
    if (blockIdx.x == 1 && threadIdx.x >= 32) return;
    __syncthreads();
    out[blockIdx.x * blockDim.x + threadIdx.x] = 1;
}

__global__ void mixed_barrier_kinds(int *out)
{
    if (threadIdx.x < 32) __syncthreads();
    else __syncwarp();
    out[threadIdx.x] = 1;
}

__global__ void divergent_warp_operations(int *out)
{
    if (threadIdx.x < 16) out[threadIdx.x] = __shfl_sync(0xffffffffu, 1, 0);
    else out[threadIdx.x] = int(__ballot_sync(0xffffffffu, 1));
}

__global__ void traps_in_block_two(int *out)
{
    if (blockIdx.x == 2 && threadIdx.x == 3) __trap();
    out[blockIdx.x * blockDim.x + threadIdx.x] = 1;
}

struct kernel_parameters {
    int scale;
    float offset;
    short tag[3];
};

template <int MULTIPLIER>
__global__ void by_value_arguments(kernel_parameters p, size_t count, const float *in, float *out)
{
    const size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x;
    if (i < count) out[i] = in[i] * float(p.scale * MULTIPLIER) + p.offset + float(p.tag[2]);
}

__global__ void cache_hint_kernel(const float4 *in, float4 *out, const __half *halves, float *half_out)
{
    const unsigned t = threadIdx.x;
    float4 v = __ldg(in + t);
    const float4 w = __ldcs(in + t);
    v.x += w.x;
    __stcs(out + t, v);
    half_out[t] = __half2float(__ldg(halves + t)) + __half2float(__ldcg(halves + t));
}

/* >>tests: execution ------------------------------------------------------------------- */

static std::string test_indexing_3d()
{
    const dim3 grid(3, 2, 2), block(4, 3, 2);
    const unsigned per_block = block.x * block.y * block.z, blocks = grid.x * grid.y * grid.z;
    device_buffer<thread_record> records(size_t(per_block) * blocks);
    REQUIRE(records.data != nullptr);
    CUDA_OK(ekv_cuda_host_launch(record_indices, grid, block, 0, nullptr, records.data));
    const std::vector<thread_record> host = download(records);
    REQUIRE(host.size() == records.count);
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx)
                for (unsigned tz = 0; tz < block.z; ++tz)
                    for (unsigned ty = 0; ty < block.y; ++ty)
                        for (unsigned tx = 0; tx < block.x; ++tx) {
                            const unsigned b = bx + grid.x * (by + grid.y * bz), t = tx + block.x * (ty + block.y * tz);
                            const thread_record &r = host[b * per_block + t];
                            REQUIRE_MSG(r.thread[0] == tx && r.thread[1] == ty && r.thread[2] == tz && r.block[0] == bx &&
                                            r.block[1] == by && r.block[2] == bz,
                                        "block (%u,%u,%u) thread (%u,%u,%u) recorded other indices", bx, by, bz, tx, ty, tz);
                            REQUIRE(r.block_dim[0] == 4 && r.block_dim[1] == 3 && r.block_dim[2] == 2);
                            REQUIRE(r.grid_dim[0] == 3 && r.grid_dim[1] == 2 && r.grid_dim[2] == 2);
                            REQUIRE(r.warp_size == 32);
                        }
    return "";
}

static std::string test_block_reduction()
{
    constexpr int block = 256, blocks = 6, per_block = 5000;
    std::mt19937 random(fresh_seed());
    std::uniform_int_distribution<int> value(-1000, 1000);
    std::vector<float> input(size_t(blocks) * per_block);
    std::vector<double> expected(blocks, 0.0);
    for (size_t i = 0; i < input.size(); ++i) {
        input[i] = float(value(random)); /* integers: every summation order is exact */
        expected[i / per_block] += input[i];
    }
    device_buffer<float> in(input.size()), out(blocks);
    REQUIRE(in.data && out.data);
    CUDA_OK(cudaMemcpy(in.data, input.data(), in.bytes(), cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemset(out.data, 0xff, out.bytes()));
    CUDA_OK(ekv_cuda_host_launch(block_sum<block>, dim3(blocks), dim3(block), 0, nullptr, in.data, out.data, per_block));
    const std::vector<float> sums = download(out);
    REQUIRE(sums.size() == size_t(blocks));
    for (int b = 0; b < blocks; ++b)
        REQUIRE_MSG(double(sums[b]) == expected[b], "block %d: %g, expected %g (seed %u)", b, double(sums[b]), expected[b],
                    fresh_seed());
    return "";
}

static std::string test_dynamic_shared_memory()
{
    constexpr int block = 64, blocks = 3;
    std::vector<float> input(block * blocks);
    for (size_t i = 0; i < input.size(); ++i) input[i] = float(i) * 0.5f;
    device_buffer<float> in(input.size()), out(input.size());
    device_buffer<int> flags(input.size());
    REQUIRE(in.data && out.data && flags.data);
    CUDA_OK(cudaMemcpy(in.data, input.data(), in.bytes(), cudaMemcpyHostToDevice));
    CUDA_OK(ekv_cuda_host_launch(reverse_in_block, dim3(blocks), dim3(block), block * sizeof(float), nullptr, in.data,
                                 out.data, flags.data));
    const std::vector<float> reversed = download(out);
    const std::vector<int> flag = download(flags);
    for (int b = 0; b < blocks; ++b)
        for (int t = 0; t < block; ++t) {
            REQUIRE(reversed[b * block + t] == input[b * block + block - 1 - t]);
            REQUIRE_MSG(flag[b * block + t] == 3, "block %d thread %d: aligned|poisoned flags %d", b, t, flag[b * block + t]);
        }

    /* Beyond 48 KiB needs cudaFuncSetAttribute, up to the sm's opt-in limit. */
    const size_t big = 64 * 1024;
    CUDA_FAILS(ekv_cuda_host_launch(reverse_in_block, dim3(1), dim3(block), big, nullptr, in.data, out.data, flags.data),
               cudaErrorInvalidValue);
    CUDA_FAILS(cudaGetLastError(), cudaErrorInvalidValue);
    CUDA_OK(cudaGetLastError());
    CUDA_OK(cudaFuncSetAttribute(reverse_in_block, cudaFuncAttributeMaxDynamicSharedMemorySize, int(big)));
    CUDA_OK(ekv_cuda_host_launch(reverse_in_block, dim3(1), dim3(block), big, nullptr, in.data, out.data, flags.data));
    cudaFuncAttributes attributes;
    CUDA_OK(cudaFuncGetAttributes(&attributes, reverse_in_block));
    REQUIRE(attributes.maxDynamicSharedSizeBytes == int(big));
    CUDA_FAILS(cudaFuncSetAttribute(reverse_in_block, cudaFuncAttributeMaxDynamicSharedMemorySize, 300 * 1024),
               cudaErrorInvalidValue);
    CUDA_OK(cudaFuncSetAttribute(reverse_in_block, cudaFuncAttributeMaxDynamicSharedMemorySize, 48 * 1024));
    (void)cudaGetLastError();
    return "";
}

/* Where a lane reads from, by the CUDA programming guide: within segments of `width`
   lanes; up or down out of the segment, or xor into a later segment, reads the caller's
   own value. A lane that does not exist (partial warp) is undefined: -1 here, for the
   emulator's all-ones poison. */
static int expected_source(int kind, int lane, int arg, int width, int lanes_in_warp)
{
    const int base = lane - lane % width;
    int source = lane;
    switch (kind) {
    case 0: source = base + arg % width; break;
    case 1: source = lane - arg >= base ? lane - arg : lane; break;
    case 2: source = lane + arg < base + width ? lane + arg : lane; break;
    default: source = (lane ^ arg) < base + width ? (lane ^ arg) : lane; break;
    }
    return source < lanes_in_warp ? source : -1;
}

static std::string test_shuffles()
{
    constexpr int threads = 48; /* a full warp and a partial one of 16 lanes */
    device_buffer<long long> out(size_t(threads) * shuffle_results);
    REQUIRE(out.data != nullptr);
    CUDA_OK(ekv_cuda_host_launch(shuffle_kernel, dim3(1), dim3(threads), 0, nullptr, out.data));
    const std::vector<long long> r = download(out);
    REQUIRE(r.size() == out.count);
    struct case_t { int kind, arg, width; };
    const case_t cases[] = {{0, -1, 32}, {1, 3, 32}, {2, 5, 32}, {3, 9, 32}, {0, 2, 8},
                            {1, 1, 8},   {2, 2, 8},  {3, 4, 8},  {3, 8, 8}};
    for (int t = 0; t < threads; ++t) {
        const int lane = t % 32, warp = t / 32, lanes = warp == 0 ? 32 : threads - 32;
        const long long *got = &r[size_t(t) * shuffle_results];
        for (int c = 0; c < 9; ++c) {
            const int arg = cases[c].arg < 0 ? (lane * 7 + 3) % 32 : cases[c].arg;
            const int source = expected_source(cases[c].kind, lane, arg, cases[c].width, lanes);
            const long long expected = source < 0 ? -1 : 1000 * warp + source;
            REQUIRE_MSG(got[c] == expected, "thread %d case %d: %lld, expected %lld", t, c, got[c], expected);
        }
        /* The poison is all one bits in every type: NaN for float and double. */
        const int xor1 = expected_source(3, lane, 1, 32, lanes), down1 = expected_source(2, lane, 1, 32, lanes);
        const int from31 = expected_source(0, lane, 31, 32, lanes), xor16 = expected_source(3, lane, 16, 32, lanes);
        const int xor2 = expected_source(3, lane, 2, 32, lanes);
        REQUIRE(got[9] == (xor1 < 0 ? -1 : __float_as_int(float(1000 * warp + xor1) + 0.5f)));
        REQUIRE(got[10] == (down1 < 0 ? -1 : __double_as_longlong(double(1000 * warp + down1) * 1.25)));
        REQUIRE(got[11] == (from31 < 0 ? -1 : static_cast<long long>(1000 * warp + from31) << 33));
        REQUIRE(got[12] == (xor16 < 0 ? 0xffffffffll : 1000 * warp + xor16));
        const long long pair = xor2 < 0 ? 0xffffffffll
                                        : __half_as_ushort(__float2half(float(xor2))) |
                                              (static_cast<long long>(__half_as_ushort(__float2half(float(warp)))) << 16);
        REQUIRE_MSG(got[13] == pair, "thread %d: half2 shuffle gave 0x%llx", t, got[13]);
    }

    /* A butterfly sum leaves the warp's total in every lane. */
    std::vector<float> values(64);
    for (int i = 0; i < 64; ++i) values[i] = float(i * i % 97);
    device_buffer<float> in(64), sums(64);
    REQUIRE(in.data && sums.data);
    CUDA_OK(cudaMemcpy(in.data, values.data(), in.bytes(), cudaMemcpyHostToDevice));
    CUDA_OK(ekv_cuda_host_launch(warp_sum_kernel, dim3(1), dim3(64), 0, nullptr, in.data, sums.data));
    const std::vector<float> total = download(sums);
    for (int w = 0; w < 2; ++w) {
        float expected = 0.0f;
        for (int l = 0; l < 32; ++l) expected += values[w * 32 + l];
        for (int l = 0; l < 32; ++l) REQUIRE(total[w * 32 + l] == expected);
    }
    return "";
}

static std::string test_shuffle_poison()
{
    device_buffer<int> out(32 * 3);
    REQUIRE(out.data != nullptr);
    CUDA_OK(cudaMemset(out.data, 0, out.bytes()));
    CUDA_OK(ekv_cuda_host_launch(shuffle_poison_kernel, dim3(1), dim3(32), 0, nullptr, out.data));
    const std::vector<int> r = download(out);
    REQUIRE(r.size() == out.count);
    for (int lane = 0; lane < 24; ++lane) {
        const int *got = &r[size_t(lane) * 3];
        REQUIRE_MSG(got[0] == (lane < 20 ? 100 + lane + 4 : -1), "lane %d: down from an exited lane gave %d", lane, got[0]);
        REQUIRE_MSG(got[1] == (lane < 16 ? -1 : 200 + (lane ^ 1)), "lane %d: xor outside the mask gave %d", lane, got[1]);
        REQUIRE_MSG(got[2] == -1, "lane %d: read of exited lane 30 gave %d", lane, got[2]);
    }
    return "";
}

static std::string test_votes_and_block_predicates()
{
    constexpr int threads = 48;
    device_buffer<long long> out(size_t(threads) * vote_results);
    REQUIRE(out.data != nullptr);
    CUDA_OK(ekv_cuda_host_launch(vote_kernel, dim3(1), dim3(threads), 0, nullptr, out.data));
    const std::vector<long long> r = download(out);
    REQUIRE(r.size() == out.count);
    for (int t = 0; t < threads; ++t) {
        const int lane = t % 32, warp = t / 32;
        const unsigned lanes_mask = warp == 0 ? 0xffffffffu : 0x0000ffffu;
        const long long *got = &r[size_t(t) * vote_results];
        REQUIRE_MSG(got[0] == (0x49249249ll & lanes_mask), "thread %d ballot 0x%llx", t, got[0]);
        REQUIRE(got[1] == 1);
        REQUIRE(got[2] == (warp == 0 ? 1 : 0));
        REQUIRE(got[3] == lanes_mask);
        REQUIRE_MSG(got[4] == (lane < 16 ? 0x0000aaaall : 0xaaaa0000ll), "thread %d subgroup ballot 0x%llx", t, got[4]);
        REQUIRE(got[5] == (warp == 0 ? 496 : 120));
        REQUIRE(got[6] == (warp == 0 ? 11 : -5));
        REQUIRE(got[7] == 5);
        REQUIRE(got[8] == 12);
        REQUIRE(got[9] == 1);
        REQUIRE(got[10] == 1);
        REQUIRE(got[11] == 0);
    }
    return "";
}

static std::string test_static_shared_memory_filled_per_block()
{
    constexpr int block = 64, blocks = 5;
    device_buffer<unsigned> out(size_t(3) * block * blocks), out_template(size_t(block) * blocks);
    REQUIRE(out.data && out_template.data);
    for (int launch = 0; launch < 2; ++launch) {
        CUDA_OK(cudaMemset(out.data, 0, out.bytes()));
        CUDA_OK(cudaMemset(out_template.data, 0, out_template.bytes()));
        CUDA_OK(ekv_cuda_host_launch(static_shared_first_reads, dim3(blocks), dim3(block), 0, nullptr, out.data));
        CUDA_OK(ekv_cuda_host_launch(static_shared_first_reads_template<block>, dim3(blocks), dim3(block), 0, nullptr,
                                     out_template.data));
        const std::vector<unsigned> got = download(out), got_template = download(out_template);
        REQUIRE(got.size() == out.count && got_template.size() == out_template.count);
        for (size_t i = 0; i < got.size(); ++i)
            REQUIRE_MSG(got[i] == 0xffffffffu, "launch %d, word %zu read 0x%08x before any write", launch, i, got[i]);
        for (size_t i = 0; i < got_template.size(); ++i)
            REQUIRE_MSG(got_template[i] == 0xffffffffu, "template kernel, launch %d, word %zu read 0x%08x", launch, i,
                        got_template[i]);
    }
    return "";
}

/* The launch order of blocks comes from EKV_EMU_SEED; EKV_EMU_SEQUENTIAL=1 keeps grid order. */
static std::string block_order(const char *seed, const char *sequential, std::vector<int> &order)
{
    constexpr int blocks = 24;
    setenv("EKV_EMU_SEED", seed, 1);
    setenv("EKV_EMU_SEQUENTIAL", sequential, 1);
    setenv("EKV_EMU_CONCURRENT_BLOCKS", "1", 1);
    CUDA_OK(cudaDeviceReset());
    device_buffer<int> next(1), out(blocks);
    REQUIRE(next.data && out.data);
    CUDA_OK(cudaMemset(next.data, 0, next.bytes()));
    CUDA_OK(ekv_cuda_host_launch(record_block_order, dim3(blocks), dim3(32), 0, nullptr, next.data, out.data));
    order = download(out);
    REQUIRE(order.size() == size_t(blocks));
    return "";
}

static std::string test_block_order()
{
    std::vector<int> grid_order(24), first, again, other, sequential;
    for (int b = 0; b < 24; ++b) grid_order[b] = b;
    std::string failure = block_order("7", "0", first);
    if (failure.empty()) failure = block_order("7", "0", again);
    if (failure.empty()) failure = block_order("8", "0", other);
    if (failure.empty()) failure = block_order("7", "1", sequential);
    unsetenv("EKV_EMU_SEED");
    unsetenv("EKV_EMU_SEQUENTIAL");
    unsetenv("EKV_EMU_CONCURRENT_BLOCKS");
    CUDA_OK(cudaDeviceReset());
    if (!failure.empty()) return failure;
    std::vector<int> sorted = first;
    std::sort(sorted.begin(), sorted.end());
    REQUIRE_MSG(sorted == grid_order, "seed 7 did not run every block once");
    REQUIRE_MSG(first != grid_order, "seed 7 ran the blocks in grid order");
    REQUIRE_MSG(first == again, "seed 7 gave two orders after a reset");
    REQUIRE_MSG(first != other, "seeds 7 and 8 gave the same order");
    REQUIRE_MSG(sequential == grid_order, "EKV_EMU_SEQUENTIAL=1 did not keep grid order");
    return "";
}

/* nvcc contracts a * b + c in kernels to one fused multiply-add (-fmad=true, its default),
   never across the _rn intrinsics, and host code built for plain x86-64 not at all.
   emu.mk's EMU_FMA does the same here where the CPU has FMA. With these inputs a * b is
   1 + 2^-11 + 2^-24, whose rounding to float loses the 2^-24 that only a fused operation
   keeps: fused gives 2^-24, unfused 0. */
static std::string test_multiply_add_contraction()
{
#if defined(EKV_EMU_FMA) || defined(__aarch64__) || defined(__ARM_FEATURE_FMA)
    const float a = 1.0f + 0x1p-12f, c = -(1.0f + 0x1p-11f);
    std::vector<float> as(32, a), cs(32, c);
    device_buffer<float> da(32), dc(32), out(64);
    REQUIRE(da.data && dc.data && out.data);
    CUDA_OK(cudaMemcpy(da.data, as.data(), da.bytes(), cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(dc.data, cs.data(), dc.bytes(), cudaMemcpyHostToDevice));
    CUDA_OK(ekv_cuda_host_launch(multiply_add, dim3(1), dim3(32), 0, nullptr, da.data, da.data, dc.data, out.data));
    const std::vector<float> got = download(out);
    REQUIRE(got.size() == 64);
    for (int i = 0; i < 32; ++i) {
        REQUIRE_MSG(got[i] == 0x1p-24f, "kernel a * b + c gave %a, fused %a, unfused 0", double(got[i]), 0x1p-24);
        REQUIRE_MSG(got[32 + i] == 0.0f, "kernel __fadd_rn(__fmul_rn(a, b), c) gave %a, expected 0 (no fusion)",
                    double(got[32 + i]));
    }
#if defined(EKV_EMU_FMA)
    volatile float host_a = a, host_c = c;
    const float host = host_a * host_a + host_c;
    REQUIRE_MSG(host == 0.0f, "host a * b + c gave %a: host code must not be contracted", double(host));
#endif
    return "";
#else
    return std::string(skip_prefix) + "no FMA instruction for the kernels (x86-64 without FMA), so nothing contracts";
#endif
}

static std::string test_atomics_under_contention()
{
    constexpr int blocks = 4, threads = 128, iterations = 40;
    constexpr int total = blocks * threads * iterations;
    atomic_counters initial{};
    initial.max_int = -5;
    initial.min_unsigned = 0xffffffffu;
    device_buffer<atomic_counters> counters(1);
    REQUIRE(counters.data != nullptr);
    CUDA_OK(cudaMemcpy(counters.data, &initial, sizeof initial, cudaMemcpyHostToDevice));
    CUDA_OK(ekv_cuda_host_launch(atomics_kernel, dim3(blocks), dim3(threads), 0, nullptr, counters.data, iterations));
    atomic_counters c;
    CUDA_OK(cudaMemcpy(&c, counters.data, sizeof c, cudaMemcpyDeviceToHost));
    REQUIRE(c.add_int == total);
    REQUIRE(c.sub_int == -2 * total);
    REQUIRE(c.add_ull == 3ull * total);
    REQUIRE(c.add_float == float(total));
    REQUIRE(c.add_double == 0.5 * total);
    REQUIRE(c.max_int == (blocks * threads - 1) * 7 + iterations - 1);
    REQUIRE(c.min_unsigned == unsigned(1000000 - (blocks * threads - 1) - (iterations - 1)));
    REQUIRE(c.inc_wrap == unsigned(total % 10));
    REQUIRE(c.locked_plain == total);
    REQUIRE(c.cas_lock == 0);
    REQUIRE(c.exchanged < unsigned(blocks * threads));
    for (int h = 0; h < 8; ++h) REQUIRE(c.histogram[h] == total / 8);
    return "";
}

static std::string test_kernel_arguments_and_cache_hints()
{
    const size_t count = 100;
    std::vector<float> input(count);
    for (size_t i = 0; i < count; ++i) input[i] = float(i);
    device_buffer<float> in(count), out(count);
    REQUIRE(in.data && out.data);
    CUDA_OK(cudaMemcpy(in.data, input.data(), in.bytes(), cudaMemcpyHostToDevice));
    const kernel_parameters p{3, 0.25f, {1, 2, 7}};
    const int as_int = int(count); /* converted to the size_t parameter, as a launch does */
    CUDA_OK(ekv_cuda_host_launch(by_value_arguments<2>, dim3(4), dim3(32), 0, nullptr, p, as_int, in.data, out.data));
    const std::vector<float> result = download(out);
    for (size_t i = 0; i < count; ++i) REQUIRE(result[i] == input[i] * 6.0f + 0.25f + 7.0f);

    std::vector<float4> vectors(32);
    std::vector<__half> halves(32);
    for (int i = 0; i < 32; ++i) {
        vectors[i] = make_float4(float(i), 1.0f, 2.0f, 3.0f);
        halves[i] = __float2half(float(i) * 0.5f);
    }
    device_buffer<float4> vin(32), vout(32);
    device_buffer<__half> hin(32);
    device_buffer<float> hout(32);
    REQUIRE(vin.data && vout.data && hin.data && hout.data);
    CUDA_OK(cudaMemcpy(vin.data, vectors.data(), vin.bytes(), cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(hin.data, halves.data(), hin.bytes(), cudaMemcpyHostToDevice));
    CUDA_OK(ekv_cuda_host_launch(cache_hint_kernel, dim3(1), dim3(32), 0, nullptr, vin.data, vout.data, hin.data, hout.data));
    const std::vector<float4> v = download(vout);
    const std::vector<float> h = download(hout);
    for (int i = 0; i < 32; ++i) {
        REQUIRE(v[i].x == 2.0f * float(i) && v[i].y == 1.0f && v[i].w == 3.0f);
        REQUIRE(h[i] == float(i));
    }
    return "";
}

/* >>tests: conversions ----------------------------------------------------------------- */

/* Round |x| to the nearest of `magnitudes` (ascending, index = encoding, the last one the
   value just past the largest finite one), ties to the even encoding; the last index
   stands for `overflow`. Independent of the emulator: midpoints are compared exactly. */
static unsigned reference_round(double x, const std::vector<double> &magnitudes, unsigned overflow, unsigned sign_bit)
{
    const double a = std::fabs(x);
    const size_t last = magnitudes.size() - 1;
    size_t index = last;
    if (a < magnitudes[last]) {
        const size_t high = size_t(std::upper_bound(magnitudes.begin(), magnitudes.end(), a) - magnitudes.begin());
        const size_t low = high - 1;
        const double middle = (magnitudes[low] + magnitudes[high]) / 2;
        index = a < middle ? low : a > middle ? high : (low % 2 == 0 ? low : high);
    }
    return (std::signbit(x) ? sign_bit : 0u) | (index == last ? overflow : unsigned(index));
}

static double half_value(unsigned bits)
{
    const unsigned exponent = (bits >> 10) & 31u, fraction = bits & 1023u;
    const double magnitude = exponent == 31 ? (fraction ? NAN : INFINITY)
                             : exponent == 0 ? std::ldexp(double(fraction), -24)
                                             : std::ldexp(double(fraction + 1024), int(exponent) - 25);
    return (bits & 0x8000u) ? -magnitude : magnitude;
}

static double bfloat16_value(unsigned bits)
{
    const unsigned exponent = (bits >> 7) & 255u, fraction = bits & 127u;
    const double magnitude = exponent == 255 ? (fraction ? NAN : INFINITY)
                             : exponent == 0 ? std::ldexp(double(fraction), -133)
                                             : std::ldexp(double(fraction + 128), int(exponent) - 134);
    return (bits & 0x8000u) ? -magnitude : magnitude;
}

static double e4m3_value(unsigned bits)
{
    const unsigned exponent = (bits >> 3) & 15u, fraction = bits & 7u;
    const double magnitude = (bits & 0x7fu) == 0x7fu ? NAN
                             : exponent == 0 ? std::ldexp(double(fraction), -9)
                                             : std::ldexp(double(fraction + 8), int(exponent) - 10);
    return (bits & 0x80u) ? -magnitude : magnitude;
}

/* Finite non-negative encodings 0..last, then the value one step beyond. */
static std::vector<double> magnitudes_of(double (*value)(unsigned), unsigned last, double beyond)
{
    std::vector<double> m;
    for (unsigned bits = 0; bits <= last; ++bits) m.push_back(value(bits));
    m.push_back(beyond);
    return m;
}

/* Inputs that exercise rounding: every representable value, every midpoint and the floats
   next to it, random bit patterns, both signs. */
static std::vector<float> rounding_inputs(const std::vector<double> &m, size_t random_count)
{
    std::vector<float> inputs;
    for (size_t i = 0; i + 1 < m.size(); ++i) {
        const float middle = float((m[i] + m[i + 1]) / 2);
        for (float x : {float(m[i]), middle, std::nextafter(middle, 0.0f), std::nextafter(middle, INFINITY)}) {
            inputs.push_back(x);
            inputs.push_back(-x);
        }
    }
    std::mt19937 random(fresh_seed());
    for (size_t i = 0; i < random_count; ++i) inputs.push_back(__uint_as_float(random()));
    std::uniform_real_distribution<float> near(-float(m.back()) * 1.5f, float(m.back()) * 1.5f);
    for (size_t i = 0; i < random_count; ++i) inputs.push_back(near(random));
    for (float x : {0.0f, -0.0f, INFINITY, -INFINITY, 3.4028235e38f, 1e-45f, -1e-45f}) inputs.push_back(x);
    return inputs;
}

static std::string test_half_conversions()
{
    for (unsigned bits = 0; bits < 65536; ++bits) {
        const __half h = __ushort_as_half(static_cast<unsigned short>(bits));
        const float f = __half2float(h);
        const double expected = half_value(bits);
        if (std::isnan(expected)) {
            REQUIRE_MSG(__float_as_uint(f) == 0x7fffffffu, "half 0x%04x gave float 0x%08x", bits, __float_as_uint(f));
            REQUIRE(__half_as_ushort(__float2half(f)) == 0x7fffu);
            continue;
        }
        REQUIRE_MSG(double(f) == expected && std::signbit(f) == std::signbit(expected), "half 0x%04x gave %g", bits, double(f));
        REQUIRE_MSG(__half_as_ushort(__float2half(f)) == bits, "half 0x%04x does not round-trip", bits);
        REQUIRE(__half_as_ushort(__half(f)) == bits && __half_as_ushort(__double2half(double(f))) == bits);
    }
    const std::vector<double> m = magnitudes_of(half_value, 0x7bffu, 65536.0);
    for (float x : rounding_inputs(m, 300000)) {
        if (std::isnan(x)) {
            REQUIRE(__half_as_ushort(__float2half(x)) == 0x7fffu && __half_as_ushort(__float2half_rn(-x)) == 0x7fffu);
            continue;
        }
        const unsigned expected = reference_round(x, m, 0x7c00u, 0x8000u);
        const unsigned got = __half_as_ushort(__float2half_rn(x));
        REQUIRE_MSG(got == expected, "float %a (0x%08x) gave half 0x%04x, expected 0x%04x", double(x), __float_as_uint(x), got,
                    expected);
    }
    /* Doubles closer to a midpoint than any float. */
    for (size_t i = 0; i + 1 < m.size(); ++i) {
        const double middle = (m[i] + m[i + 1]) / 2;
        for (double x : {middle, std::nextafter(middle, 0.0), std::nextafter(middle, INFINITY)})
            REQUIRE_MSG(__half_as_ushort(__double2half(x)) == reference_round(x, m, 0x7c00u, 0x8000u), "double %a", x);
    }
    for (int i = -70000; i <= 70000; i += 7)
        REQUIRE_MSG(__half_as_ushort(__int2half_rn(i)) == reference_round(double(i), m, 0x7c00u, 0x8000u), "int %d", i);
    return "";
}

static std::string test_half_against_compiler_float16()
{
#if defined(__FLT16_MANT_DIG__)
    std::mt19937 random(fresh_seed() ^ 0x5eedu);
    for (int i = 0; i < 1000000; ++i) {
        const float x = i % 2 ? __uint_as_float(random()) : std::ldexp(float(random() % 100000) - 50000.0f, int(random() % 40) - 36);
        if (std::isnan(x)) continue;
        const _Float16 compiler = static_cast<_Float16>(x);
        unsigned short bits;
        std::memcpy(&bits, &compiler, 2);
        REQUIRE_MSG(__half_as_ushort(__float2half(x)) == bits, "float %a: compiler's _Float16 gives 0x%04x", double(x), bits);
    }
    return "";
#else
    return std::string(skip_prefix) + "this compiler has no _Float16";
#endif
}

static std::string test_bfloat16_conversions()
{
    for (unsigned bits = 0; bits < 65536; ++bits) {
        const __nv_bfloat16 b = __ushort_as_bfloat16(static_cast<unsigned short>(bits));
        const float f = __bfloat162float(b);
        REQUIRE(__float_as_uint(f) == bits << 16);
        if (std::isnan(f)) {
            REQUIRE(__bfloat16_as_ushort(__float2bfloat16(f)) == 0x7fffu);
            continue;
        }
        REQUIRE_MSG(__bfloat16_as_ushort(__float2bfloat16(f)) == bits, "bf16 0x%04x does not round-trip", bits);
        REQUIRE(double(f) == bfloat16_value(bits));
    }
    const std::vector<double> m = magnitudes_of(bfloat16_value, 0x7f7fu, std::ldexp(1.0, 128));
    for (float x : rounding_inputs(m, 300000)) {
        if (std::isnan(x)) {
            REQUIRE(__bfloat16_as_ushort(__float2bfloat16_rn(x)) == 0x7fffu);
            continue;
        }
        const unsigned expected = reference_round(x, m, 0x7f80u, 0x8000u);
        const unsigned got = __bfloat16_as_ushort(__float2bfloat16_rn(x));
        REQUIRE_MSG(got == expected, "float %a gave bf16 0x%04x, expected 0x%04x", double(x), got, expected);
    }
    for (size_t i = 0; i + 1 < m.size(); i += 3) {
        const double middle = (m[i] + m[i + 1]) / 2;
        for (double x : {middle, std::nextafter(middle, 0.0), std::nextafter(middle, INFINITY)})
            REQUIRE_MSG(__bfloat16_as_ushort(__double2bfloat16(x)) == reference_round(x, m, 0x7f80u, 0x8000u), "double %a", x);
    }
    /* Integers beyond 2^53 must not round twice: 2^60 + 2^52 + 1 is just above a tie. */
    REQUIRE(__bfloat16_as_ushort(__ll2bfloat16_rn((1ll << 60) + (1ll << 52) + 1)) == 0x5d81u);
    REQUIRE(__bfloat16_as_ushort(__ll2bfloat16_rn((1ll << 60) + (1ll << 52))) == 0x5d80u);
    return "";
}

static std::string test_fp8_conversions()
{
    for (unsigned bits = 0; bits < 256; ++bits) {
        __nv_fp8_e4m3 v;
        v.__x = static_cast<__nv_fp8_storage_t>(bits);
        const double expected = e4m3_value(bits);
        const __half_raw raw = __nv_cvt_fp8_to_halfraw(static_cast<__nv_fp8_storage_t>(bits), __NV_E4M3);
        if (std::isnan(expected)) {
            REQUIRE(raw.x == 0x7fffu && std::isnan(static_cast<float>(v)));
            continue;
        }
        REQUIRE_MSG(double(static_cast<float>(v)) == expected, "e4m3 0x%02x gave %g", bits, double(static_cast<float>(v)));
        REQUIRE(half_value(raw.x) == expected && std::signbit(half_value(raw.x)) == std::signbit(expected));
        REQUIRE(__nv_cvt_float_to_fp8(static_cast<float>(v), __NV_SATFINITE, __NV_E4M3) == bits);
        REQUIRE(__nv_cvt_halfraw_to_fp8(raw, __NV_NOSAT, __NV_E4M3) == bits);
    }
    const std::vector<double> m = magnitudes_of(e4m3_value, 0x7eu, 480.0);
    for (float x : rounding_inputs(m, 200000)) {
        if (std::isnan(x)) {
            REQUIRE(__nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3) == 0x7fu);
            REQUIRE(__nv_cvt_float_to_fp8(-x, __NV_NOSAT, __NV_E4M3) == 0x7fu);
            continue;
        }
        const unsigned saturated = reference_round(x, m, 0x7eu, 0x80u);
        const unsigned unsaturated = reference_round(x, m, 0x7fu, 0x80u);
        REQUIRE_MSG(__nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3) == saturated, "float %a: satfinite", double(x));
        REQUIRE_MSG(__nv_cvt_float_to_fp8(x, __NV_NOSAT, __NV_E4M3) == unsaturated, "float %a: nosat", double(x));
        REQUIRE(__nv_fp8_e4m3(x).__x == saturated);
    }
    REQUIRE(__nv_fp8_e4m3(448.0f).__x == 0x7e && __nv_fp8_e4m3(464.0f).__x == 0x7e && __nv_fp8_e4m3(1e9f).__x == 0x7e);
    REQUIRE(__nv_cvt_float_to_fp8(464.0f, __NV_NOSAT, __NV_E4M3) == 0x7e);
    REQUIRE(__nv_cvt_float_to_fp8(465.0f, __NV_NOSAT, __NV_E4M3) == 0x7f);
    REQUIRE(__nv_cvt_float_to_fp8(-INFINITY, __NV_SATFINITE, __NV_E4M3) == 0xfe);
    REQUIRE(__nv_cvt_float_to_fp8(-INFINITY, __NV_NOSAT, __NV_E4M3) == 0xff);
    REQUIRE(__nv_cvt_float_to_fp8(0x1p-10f, __NV_SATFINITE, __NV_E4M3) == 0x00);
    REQUIRE(__nv_cvt_float_to_fp8(0x1.01p-10f, __NV_SATFINITE, __NV_E4M3) == 0x01);
    REQUIRE(__nv_cvt_float_to_fp8(-1e-30f, __NV_SATFINITE, __NV_E4M3) == 0x80);

    /* e5m2 is the top byte of a half. */
    for (unsigned bits = 0; bits < 256; ++bits) {
        const __half_raw raw = __nv_cvt_fp8_to_halfraw(static_cast<__nv_fp8_storage_t>(bits), __NV_E5M2);
        REQUIRE(raw.x == ((bits & 0x7fu) > 0x7cu ? 0x7fffu : bits << 8));
        if ((bits & 0x7fu) <= 0x7cu) REQUIRE(__nv_cvt_halfraw_to_fp8(raw, __NV_NOSAT, __NV_E5M2) == bits);
    }
    REQUIRE(__nv_cvt_float_to_fp8(1e6f, __NV_SATFINITE, __NV_E5M2) == 0x7b);
    REQUIRE(__nv_cvt_float_to_fp8(1e6f, __NV_NOSAT, __NV_E5M2) == 0x7c);

    const __nv_fp8x4_e4m3 quad(make_float4(1.0f, -2.0f, 0.5f, 448.0f));
    REQUIRE(quad.__x == 0x7e30c038u);
    const float4 back = static_cast<float4>(quad);
    REQUIRE(back.x == 1.0f && back.y == -2.0f && back.z == 0.5f && back.w == 448.0f);
    const __nv_fp8x2_e4m3 pair(make_float2(3.0f, -0.25f));
    const float2 pair_back = static_cast<float2>(pair);
    REQUIRE(pair_back.x == 3.0f && pair_back.y == -0.25f);
    return "";
}

static std::string test_half_helpers_and_arithmetic()
{
    const __half2 pair = __floats2half2_rn(1.5f, -2.25f);
    REQUIRE(__low2float(pair) == 1.5f && __high2float(pair) == -2.25f);
    const float2 both = __half22float2(__float22half2_rn(make_float2(0.1f, 70000.0f)));
    REQUIRE(both.x == __half2float(__float2half(0.1f)) && std::isinf(both.y));
    const __nv_bfloat162 bpair = __floats2bfloat162_rn(1.5f, -3.0f);
    REQUIRE(__low2float(bpair) == 1.5f && __high2float(bpair) == -3.0f);
    const float2 bboth = __bfloat1622float2(bpair);
    REQUIRE(bboth.x == 1.5f && bboth.y == -3.0f);
    REQUIRE(__half_as_ushort(__ushort_as_half(0x3c00)) == 0x3c00 && __half2float(__ushort_as_half(0x3c00)) == 1.0f);
    REQUIRE(__half_as_short(__short_as_half(-1)) == -1);
    REQUIRE(__float_as_int(1.0f) == 0x3f800000 && __int_as_float(0x40000000) == 2.0f);
    REQUIRE(__float_as_uint(-0.0f) == 0x80000000u && __uint_as_float(0x3f000000u) == 0.5f);

    const std::vector<double> m = magnitudes_of(half_value, 0x7bffu, 65536.0);
    std::mt19937 random(fresh_seed() ^ 0xa11u);
    for (int i = 0; i < 100000; ++i) {
        unsigned short bits[3];
        for (unsigned short &b : bits) {
            do b = static_cast<unsigned short>(random()); while ((b & 0x7c00u) == 0x7c00u);
        }
        const __half a = __ushort_as_half(bits[0]), b = __ushort_as_half(bits[1]), c = __ushort_as_half(bits[2]);
        const double x = half_value(bits[0]), y = half_value(bits[1]), z = half_value(bits[2]);
        REQUIRE_MSG(__half_as_ushort(__hadd(a, b)) == reference_round(x + y, m, 0x7c00u, 0x8000u) || x + y == 0,
                    "__hadd 0x%04x 0x%04x", bits[0], bits[1]);
        REQUIRE_MSG(__half_as_ushort(__hmul(a, b)) == reference_round(x * y, m, 0x7c00u, 0x8000u), "__hmul 0x%04x 0x%04x",
                    bits[0], bits[1]);
        REQUIRE_MSG(__half_as_ushort(__hfma(a, b, c)) == reference_round(std::fma(x, y, z), m, 0x7c00u, 0x8000u) ||
                        std::fma(x, y, z) == 0,
                    "__hfma 0x%04x 0x%04x 0x%04x", bits[0], bits[1], bits[2]);
    }
    const __half2 product = __hmul2(__floats2half2_rn(3.0f, 0.5f), __floats2half2_rn(2.0f, -4.0f));
    REQUIRE(__low2float(product) == 6.0f && __high2float(product) == -2.0f);
    const __half2 fused = __hfma2(__floats2half2_rn(3.0f, 0.5f), __floats2half2_rn(2.0f, -4.0f), __float2half2_rn(1.0f));
    REQUIRE(__low2float(fused) == 7.0f && __high2float(fused) == -1.0f);
    __half h = 1.5f;
    h += __half(2.0f);
    REQUIRE(float(h) == 3.5f && float(h * h) == 12.25f && h > __half(3.0f));
    REQUIRE(float(__hadd(__float2bfloat16(1.0f), __float2bfloat16(0.5f))) == 1.5f);
    return "";
}

static std::string test_math_and_types()
{
    REQUIRE(__float2int_rn(2.5f) == 2 && __float2int_rn(3.5f) == 4 && __float2int_rn(-2.5f) == -2);
    REQUIRE(__float2int_rz(-2.7f) == -2 && __float2int_rd(-2.1f) == -3 && __float2int_ru(2.1f) == 3);
    REQUIRE(__float2int_rn(1e20f) == INT_MAX && __float2int_rn(-1e20f) == INT_MIN && __float2int_rn(NAN) == 0);
    REQUIRE(__saturatef(-1.0f) == 0.0f && __saturatef(2.0f) == 1.0f && __saturatef(0.25f) == 0.25f && __saturatef(NAN) == 0.0f);
    REQUIRE(__popc(0xf0f0u) == 8 && __popcll(~0ull) == 64);
    REQUIRE(__clz(1) == 31 && __clz(0) == 32 && __clz(-1) == 0 && __clzll(1) == 63);
    REQUIRE(__ffs(0) == 0 && __ffs(8) == 4 && __ffsll(1ll << 40) == 41);
    REQUIRE(__brev(1u) == 0x80000000u && __byte_perm(0x33221100u, 0x77665544u, 0x5140u) == 0x55114400u);
    REQUIRE(__funnelshift_l(0x80000000u, 1u, 1u) == 3u && __funnelshift_r(1u, 1u, 1u) == 0x80000000u);
    REQUIRE(__umulhi(0xffffffffu, 2u) == 1u && __mulhi(-2, 0x40000000) == -1);
    REQUIRE(__umul64hi(1ull << 63, 4ull) == 2ull && __umul64hi(~0ull, ~0ull) == ~0ull - 1);
    REQUIRE(__mul24(-3, 5) == -15 && __umul24(0x1000002u, 3u) == 6u);
    REQUIRE(__dp4a(0x01020304, 0x01010101, 10) == 20 && __dp4a(int(0xff02ff01u), 0x01010101, 0) == 1);
    REQUIRE(__fdividef(1.0f, 4.0f) == 0.25f && rsqrtf(4.0f) == 0.5f && __frcp_rn(2.0f) == 0.5f);
    REQUIRE(__expf(0.0f) == 1.0f && __logf(1.0f) == 0.0f && std::fabs(__exp10f(2.0f) - 100.0f) < 1e-4f);
    REQUIRE(__fmaf_rn(2.0f, 3.0f, 1.0f) == 7.0f && exp2f(3.0f) == 8.0f && log2f(8.0f) == 3.0f);
    REQUIRE(max(3, 5) == 5 && min(-1, 2) == -1 && max(2u, 7u) == 7u && max(2.5f, 1.5f) == 2.5f && min(2.0, 1.0) == 1.0);
    REQUIRE(max(-1, 2u) == 0xffffffffu); /* CUDA's mixed overload compares as unsigned */

    static_assert(alignof(float4) == 16 && alignof(int4) == 16 && alignof(uint4) == 16 && alignof(double2) == 16,
                  "16-byte vector types");
    static_assert(alignof(float2) == 8 && alignof(uint2) == 8 && alignof(short2) == 4 && alignof(char4) == 4 &&
                      alignof(ushort4) == 8,
                  "smaller vector types");
    static_assert(sizeof(float3) == 12 && alignof(float3) == 4 && sizeof(uchar4) == 4, "unaligned 3-vectors");
    static_assert(sizeof(__half) == 2 && sizeof(__half2) == 4 && alignof(__half2) == 4 && sizeof(__nv_fp8_e4m3) == 1 &&
                      sizeof(__nv_fp8x4_e4m3) == 4,
                  "narrow float types");
    const dim3 defaults;
    const dim3 two(7, 3);
    REQUIRE(defaults.x == 1 && defaults.y == 1 && defaults.z == 1 && two.x == 7 && two.y == 3 && two.z == 1);
    const uint4 u = make_uint4(1, 2, 3, 4);
    const short2 s = make_short2(-1, 5);
    REQUIRE(u.w == 4 && s.x == -1 && make_char4(1, 2, 3, 4).w == 4);
    return "";
}

/* >>tests: runtime --------------------------------------------------------------------- */

static void increment_host_counter(void *counter) { ++*static_cast<int *>(counter); }

static std::string test_streams_events_memcpy()
{
    cudaStream_t blocking = nullptr, nonblocking = nullptr;
    CUDA_OK(cudaStreamCreate(&blocking));
    CUDA_OK(cudaStreamCreateWithFlags(&nonblocking, cudaStreamNonBlocking));
    std::vector<unsigned char> host(4096), back(4096);
    for (size_t i = 0; i < host.size(); ++i) host[i] = static_cast<unsigned char>(i * 13);
    device_buffer<unsigned char> a(4096), b(4096);
    REQUIRE(a.data && b.data);
    CUDA_OK(cudaMemcpyAsync(a.data, host.data(), a.bytes(), cudaMemcpyHostToDevice, blocking));
    CUDA_OK(cudaMemcpyAsync(b.data, a.data, a.bytes(), cudaMemcpyDeviceToDevice, nonblocking));
    CUDA_OK(cudaMemcpy(back.data(), b.data, b.bytes(), cudaMemcpyDeviceToHost));
    REQUIRE(back == host);
    CUDA_OK(cudaMemsetAsync(b.data + 100, 0x5a, 200, nonblocking));
    CUDA_OK(cudaMemcpyAsync(back.data(), b.data, b.bytes(), cudaMemcpyDefault, nonblocking));
    CUDA_OK(cudaStreamSynchronize(nonblocking));
    for (size_t i = 0; i < back.size(); ++i) REQUIRE(back[i] == ((i >= 100 && i < 300) ? 0x5a : host[i]));
    CUDA_OK(cudaMemset(a.data, 0, a.bytes()));
    CUDA_OK(cudaMemcpy(back.data(), a.data, 64, cudaMemcpyDeviceToHost));
    REQUIRE(back[0] == 0 && back[63] == 0);

    /* Copies whose device side is not device memory, or runs past it, fail. */
    std::vector<unsigned char> other(4096);
    CUDA_FAILS(cudaMemcpy(other.data(), host.data(), 16, cudaMemcpyHostToDevice), cudaErrorInvalidValue);
    CUDA_FAILS(cudaMemcpy(back.data(), a.data + 4000, 200, cudaMemcpyDeviceToHost), cudaErrorInvalidValue);
    CUDA_FAILS(cudaMemcpy(a.data, b.data, 16, cudaMemcpyHostToDevice), cudaErrorInvalidValue);
    CUDA_FAILS(cudaMemset(other.data(), 0, 16), cudaErrorInvalidValue);
    CUDA_FAILS(cudaMemcpy(a.data, host.data(), 16, static_cast<cudaMemcpyKind>(9)), cudaErrorInvalidMemcpyDirection);
    CUDA_FAILS(cudaGetLastError(), cudaErrorInvalidMemcpyDirection);

    unsigned char *pinned = nullptr;
    CUDA_OK(cudaMallocHost(&pinned, 256));
    CUDA_OK(cudaMemcpy(pinned, a.data, 256, cudaMemcpyDeviceToHost));
    REQUIRE(pinned[255] == 0);
    CUDA_OK(cudaFreeHost(pinned));

    int calls = 0;
    CUDA_OK(cudaLaunchHostFunc(blocking, increment_host_counter, &calls));
    REQUIRE(calls == 1);

    cudaEvent_t start = nullptr, stop = nullptr, untimed = nullptr, never = nullptr;
    CUDA_OK(cudaEventCreate(&start));
    CUDA_OK(cudaEventCreateWithFlags(&stop, cudaEventBlockingSync));
    CUDA_OK(cudaEventCreateWithFlags(&untimed, cudaEventDisableTiming));
    CUDA_OK(cudaEventCreate(&never));
    CUDA_OK(cudaEventRecord(start, blocking));
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    CUDA_OK(cudaEventRecord(stop, blocking));
    CUDA_OK(cudaEventRecord(untimed, blocking));
    CUDA_OK(cudaEventSynchronize(stop));
    CUDA_OK(cudaEventQuery(stop));
    float milliseconds = -1.0f;
    CUDA_OK(cudaEventElapsedTime(&milliseconds, start, stop));
    REQUIRE_MSG(milliseconds >= 29.0f && milliseconds < 5000.0f, "elapsed %g ms around a 30 ms sleep", double(milliseconds));
    CUDA_FAILS(cudaEventElapsedTime(&milliseconds, start, untimed), cudaErrorInvalidResourceHandle);
    CUDA_FAILS(cudaEventElapsedTime(&milliseconds, start, never), cudaErrorInvalidResourceHandle);
    CUDA_OK(cudaStreamWaitEvent(nonblocking, stop, 0));
    for (cudaEvent_t e : {start, stop, untimed, never}) CUDA_OK(cudaEventDestroy(e));
    CUDA_FAILS(cudaEventDestroy(start), cudaErrorInvalidResourceHandle);
    CUDA_OK(cudaStreamQuery(blocking));
    CUDA_OK(cudaStreamDestroy(blocking));
    CUDA_OK(cudaStreamDestroy(nonblocking));
    CUDA_FAILS(cudaStreamSynchronize(blocking), cudaErrorInvalidResourceHandle);
    (void)cudaGetLastError();
    return "";
}

static std::string test_graph_capture_and_replay()
{
    cudaStream_t stream = nullptr;
    CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    device_buffer<int> counter(1), snapshot(1), scratch(16);
    REQUIRE(counter.data && snapshot.data && scratch.data);
    CUDA_OK(cudaMemset(counter.data, 0, sizeof(int)));

    CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    CUDA_OK(cudaStreamIsCapturing(stream, &status));
    REQUIRE(status == cudaStreamCaptureStatusActive);
    CUDA_OK(cudaMemsetAsync(scratch.data, 0, scratch.bytes(), stream));
    CUDA_OK(ekv_cuda_host_launch(add_to_counter, dim3(2), dim3(64), 0, stream, counter.data, 1));
    CUDA_OK(ekv_cuda_host_launch(add_to_counter, dim3(1), dim3(32), 0, stream, counter.data, 4));
    CUDA_OK(cudaMemcpyAsync(snapshot.data, counter.data, sizeof(int), cudaMemcpyDeviceToDevice, stream));
    cudaGraph_t graph = nullptr;
    CUDA_OK(cudaStreamEndCapture(stream, &graph));
    CUDA_OK(cudaStreamIsCapturing(stream, &status));
    REQUIRE(status == cudaStreamCaptureStatusNone);
    int value = -1;
    CUDA_OK(cudaMemcpy(&value, counter.data, sizeof value, cudaMemcpyDeviceToHost));
    REQUIRE_MSG(value == 0, "captured work ran during capture: counter %d", value);
    size_t nodes = 0;
    CUDA_OK(cudaGraphGetNodes(graph, nullptr, &nodes));
    REQUIRE(nodes == 4);

    cudaGraphExec_t exec = nullptr;
    CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
    CUDA_OK(cudaGraphDestroy(graph)); /* the instance keeps its own copy */
    cudaEvent_t start = nullptr, stop = nullptr;
    CUDA_OK(cudaEventCreate(&start));
    CUDA_OK(cudaEventCreate(&stop));
    CUDA_OK(cudaEventRecord(start, stream));
    constexpr int replays = 5;
    for (int i = 0; i < replays; ++i) CUDA_OK(cudaGraphLaunch(exec, stream));
    CUDA_OK(cudaEventRecord(stop, stream));
    CUDA_OK(cudaStreamSynchronize(stream));
    float milliseconds = -1.0f;
    CUDA_OK(cudaEventElapsedTime(&milliseconds, start, stop));
    REQUIRE(milliseconds >= 0.0f);
    int snap = -1;
    CUDA_OK(cudaMemcpy(&value, counter.data, sizeof value, cudaMemcpyDeviceToHost));
    CUDA_OK(cudaMemcpy(&snap, snapshot.data, sizeof snap, cudaMemcpyDeviceToHost));
    REQUIRE_MSG(value == replays * (128 + 128) && snap == value, "after %d replays: counter %d, snapshot %d", replays, value, snap);
    CUDA_OK(cudaGraphExecDestroy(exec));
    CUDA_FAILS(cudaGraphLaunch(exec, stream), cudaErrorInvalidResourceHandle);
    CUDA_OK(cudaEventDestroy(start));
    CUDA_OK(cudaEventDestroy(stop));

    /* Calls that would synchronize invalidate a global-mode capture, as in CUDA. */
    CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
    void *p = nullptr;
    CUDA_FAILS(cudaMalloc(&p, 64), cudaErrorStreamCaptureUnsupported);
    CUDA_FAILS(cudaStreamEndCapture(stream, &graph), cudaErrorStreamCaptureInvalidated);
    REQUIRE(graph == nullptr);
    CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed));
    CUDA_OK(cudaMalloc(&p, 64));
    CUDA_OK(cudaFree(p));
    CUDA_OK(cudaStreamEndCapture(stream, &graph));
    CUDA_OK(cudaGraphDestroy(graph));
    CUDA_FAILS(cudaStreamBeginCapture(nullptr, cudaStreamCaptureModeGlobal), cudaErrorStreamCaptureUnsupported);

    /* The legacy stream waits for blocking streams: using it during their capture fails. */
    cudaStream_t blocking = nullptr;
    CUDA_OK(cudaStreamCreate(&blocking));
    CUDA_OK(cudaStreamBeginCapture(blocking, cudaStreamCaptureModeRelaxed));
    CUDA_FAILS(ekv_cuda_host_launch(add_to_counter, dim3(1), dim3(1), 0, nullptr, counter.data, 1),
               cudaErrorStreamCaptureImplicit);
    CUDA_FAILS(cudaStreamEndCapture(blocking, &graph), cudaErrorStreamCaptureInvalidated);
    CUDA_OK(cudaStreamDestroy(blocking));
    CUDA_OK(cudaStreamDestroy(stream));
    (void)cudaGetLastError();
    return "";
}

static std::string test_memory_accounting()
{
    size_t free_before = 0, total = 0, free_after = 0;
    CUDA_OK(cudaMemGetInfo(&free_before, &total));
    REQUIRE(total == size_t(1) << 30 && free_before <= total);
    void *p = nullptr;
    CUDA_OK(cudaMalloc(&p, 1000));
    REQUIRE(p != nullptr && reinterpret_cast<std::uintptr_t>(p) % 256 == 0);
    CUDA_OK(cudaMemGetInfo(&free_after, &total));
    REQUIRE_MSG(free_after == free_before - 1024, "free went from %zu to %zu", free_before, free_after);
    void *too_big = reinterpret_cast<void *>(1);
    CUDA_FAILS(cudaMalloc(&too_big, free_after + 1), cudaErrorMemoryAllocation);
    REQUIRE(too_big == nullptr);
    CUDA_FAILS(cudaGetLastError(), cudaErrorMemoryAllocation);
    CUDA_OK(cudaGetLastError());
    CUDA_OK(cudaFree(p));
    CUDA_OK(cudaMemGetInfo(&free_after, &total));
    REQUIRE(free_after == free_before);
    int on_stack = 0;
    CUDA_FAILS(cudaFree(&on_stack), cudaErrorInvalidValue);
    CUDA_OK(cudaFree(nullptr));
    void *empty = reinterpret_cast<void *>(1);
    CUDA_OK(cudaMalloc(&empty, 0));
    REQUIRE(empty == nullptr);
    (void)cudaGetLastError();
    return "";
}

static std::string test_device_description()
{
    int count = -1, device = -1, version = 0;
    CUDA_OK(cudaGetDeviceCount(&count));
    REQUIRE(count == 1);
    CUDA_OK(cudaSetDevice(0));
    CUDA_OK(cudaGetDevice(&device));
    REQUIRE(device == 0);
    CUDA_FAILS(cudaSetDevice(1), cudaErrorInvalidDevice);
    CUDA_OK(cudaRuntimeGetVersion(&version));
    REQUIRE(version == 13000 && CUDART_VERSION == 13000);
    CUDA_OK(cudaDriverGetVersion(&version));
    REQUIRE(version >= 13000);
    cudaDeviceProp prop;
    CUDA_OK(cudaGetDeviceProperties(&prop, 0));
    REQUIRE(std::strcmp(prop.name, "ekv CPU emulator") == 0);
    REQUIRE(prop.major == 9 && prop.minor == 0 && prop.multiProcessorCount == 4 && prop.warpSize == 32);
    REQUIRE(prop.l2CacheSize == 1 << 20 && prop.totalGlobalMem == size_t(1) << 30 && prop.sharedMemPerBlock == 48 * 1024);
    struct expectation { cudaDeviceAttr attribute; int value; };
    const expectation expected[] = {
        {cudaDevAttrMultiProcessorCount, 4},       {cudaDevAttrComputeCapabilityMajor, 9},
        {cudaDevAttrComputeCapabilityMinor, 0},    {cudaDevAttrL2CacheSize, 1 << 20},
        {cudaDevAttrWarpSize, 32},                 {cudaDevAttrMaxThreadsPerBlock, 1024},
        {cudaDevAttrMaxSharedMemoryPerBlock, 49152}, {cudaDevAttrMaxSharedMemoryPerBlockOptin, 232448},
        {cudaDevAttrMaxSharedMemoryPerMultiprocessor, 233472}, {cudaDevAttrMaxThreadsPerMultiProcessor, 2048},
    };
    for (const expectation &e : expected) {
        int value = -1;
        CUDA_OK(cudaDeviceGetAttribute(&value, e.attribute, 0));
        REQUIRE_MSG(value == e.value, "attribute %d is %d, expected %d", int(e.attribute), value, e.value);
    }
    int clock = 0, bus = 0, memory_clock = 0;
    CUDA_OK(cudaDeviceGetAttribute(&memory_clock, cudaDevAttrMemoryClockRate, 0));
    CUDA_OK(cudaDeviceGetAttribute(&bus, cudaDevAttrGlobalMemoryBusWidth, 0));
    CUDA_OK(cudaDeviceGetAttribute(&clock, cudaDevAttrClockRate, 0));
    REQUIRE(memory_clock > 0 && bus > 0 && clock > 0);
    CUDA_FAILS(cudaDeviceGetAttribute(&clock, cudaDevAttrWarpSize, 3), cudaErrorInvalidDevice);
    int blocks = 0;
    CUDA_OK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, block_sum<256>, 256, 0));
    REQUIRE(blocks >= 1 && blocks <= 32);
    REQUIRE(std::strcmp(cudaGetErrorString(cudaErrorMemoryAllocation), "out of memory") == 0);
    REQUIRE(std::strcmp(cudaGetErrorName(cudaErrorLaunchFailure), "cudaErrorLaunchFailure") == 0);
    (void)cudaGetLastError();
    return "";
}

static std::string test_environment_overrides()
{
    /* Read at first use and again at cudaDeviceReset; run_emu_tests.sh also checks them
       through the real environment with --device-info. */
    setenv("EKV_EMU_SM", "75", 1);
    setenv("EKV_EMU_SMS", "7", 1);
    setenv("EKV_EMU_MEMORY_BYTES", "64M", 1);
    CUDA_OK(cudaDeviceReset());
    int major = 0, minor = 0, sms = 0, optin = 0;
    CUDA_OK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0));
    CUDA_OK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, 0));
    CUDA_OK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    CUDA_OK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, 0));
    REQUIRE(major == 7 && minor == 5 && sms == 7 && optin == 65536);
    size_t free_bytes = 0, total = 0;
    CUDA_OK(cudaMemGetInfo(&free_bytes, &total));
    REQUIRE(total == size_t(64) << 20);
    void *p = nullptr;
    CUDA_FAILS(cudaMalloc(&p, size_t(65) << 20), cudaErrorMemoryAllocation);

    setenv("EKV_EMU_SM", "8.9", 1);
    CUDA_OK(cudaDeviceReset());
    CUDA_OK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0));
    CUDA_OK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, 0));
    REQUIRE(major == 8 && minor == 9);

    setenv("EKV_EMU_DEVICES", "2", 1);
    CUDA_OK(cudaDeviceReset());
    int count = 0;
    CUDA_OK(cudaGetDeviceCount(&count));
    REQUIRE(count == 2);
    CUDA_OK(cudaSetDevice(1));
    CUDA_OK(cudaSetDevice(0));

    setenv("EKV_EMU_DEVICES", "0", 1);
    CUDA_OK(cudaDeviceReset());
    count = -1;
    CUDA_FAILS(cudaGetDeviceCount(&count), cudaErrorNoDevice);
    REQUIRE(count == 0);
    CUDA_FAILS(cudaMalloc(&p, 16), cudaErrorNoDevice);
    CUDA_FAILS(ekv_cuda_host_launch(add_to_counter, dim3(1), dim3(1), 0, nullptr, static_cast<int *>(nullptr), 1),
               cudaErrorNoDevice);
    cudaDeviceProp prop;
    CUDA_FAILS(cudaGetDeviceProperties(&prop, 0), cudaErrorNoDevice);

    for (const char *name : {"EKV_EMU_SM", "EKV_EMU_SMS", "EKV_EMU_MEMORY_BYTES", "EKV_EMU_DEVICES"}) unsetenv(name);
    CUDA_OK(cudaDeviceReset());
    CUDA_OK(cudaGetDeviceProperties(&prop, 0));
    REQUIRE(prop.major == 9 && prop.minor == 0 && prop.multiProcessorCount == 4 && prop.totalGlobalMem == size_t(1) << 30);
    return "";
}

static std::string test_invalid_launch_configurations()
{
    device_buffer<int> counter(1);
    REQUIRE(counter.data != nullptr);
    CUDA_OK(cudaMemset(counter.data, 0, sizeof(int)));
    const dim3 bad_blocks[] = {dim3(1025), dim3(32, 32, 2), dim3(1, 1, 65), dim3(0)};
    for (const dim3 &block : bad_blocks) {
        CUDA_FAILS(ekv_cuda_host_launch(add_to_counter, dim3(1), block, 0, nullptr, counter.data, 1),
                   cudaErrorInvalidConfiguration);
        CUDA_FAILS(cudaGetLastError(), cudaErrorInvalidConfiguration);
        CUDA_OK(cudaGetLastError());
    }
    CUDA_FAILS(ekv_cuda_host_launch(add_to_counter, dim3(0), dim3(32), 0, nullptr, counter.data, 1),
               cudaErrorInvalidConfiguration);
    CUDA_FAILS(ekv_cuda_host_launch(add_to_counter, dim3(1, 65536), dim3(32), 0, nullptr, counter.data, 1),
               cudaErrorInvalidConfiguration);
    cudaStream_t destroyed = nullptr;
    CUDA_OK(cudaStreamCreate(&destroyed));
    CUDA_OK(cudaStreamDestroy(destroyed));
    CUDA_FAILS(ekv_cuda_host_launch(add_to_counter, dim3(1), dim3(32), 0, destroyed, counter.data, 1),
               cudaErrorInvalidResourceHandle);
    (void)cudaGetLastError();
    /* The largest block is fine. */
    CUDA_OK(ekv_cuda_host_launch(add_to_counter, dim3(2), dim3(32, 32), 0, nullptr, counter.data, 1));
    int value = 0;
    CUDA_OK(cudaMemcpy(&value, counter.data, sizeof value, cudaMemcpyDeviceToHost));
    REQUIRE(value == 2048);
    return "";
}

/* Each of these launches must end with cudaErrorLaunchFailure and a diagnostic on stderr,
   not hang; the error is sticky until cudaDeviceReset. */
static std::string test_barrier_not_reached_is_reported()
{
    struct case_t {
        const char *what;
        void (*kernel)(int *);
        dim3 grid, block;
    };
    const case_t cases[] = {
        {"threads 32-63 of block 1 exit before __syncthreads", early_exit_before_barrier, dim3(3), dim3(64)},
        {"lane 5 waits at __syncthreads, its warp at __shfl_xor_sync", lane_waits_at_block_barrier, dim3(1), dim3(32)},
        {"threads wait at two different __syncthreads calls", barrier_in_two_branches, dim3(2), dim3(64)},
        {"warp 1 meets at __syncwarp, warp 0 waits at __syncthreads", mixed_barrier_kinds, dim3(1), dim3(64)},
        {"lanes at __shfl_sync and __ballot_sync at once", divergent_warp_operations, dim3(1), dim3(32)},
        {"__trap in block 2", traps_in_block_two, dim3(4), dim3(8)},
    };
    for (const case_t &c : cases) {
        device_buffer<int> out(256);
        REQUIRE(out.data != nullptr);
        const auto start = std::chrono::steady_clock::now();
        const cudaError_t launched = ekv_cuda_host_launch(c.kernel, c.grid, c.block, 0, nullptr, out.data);
        const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        REQUIRE_MSG(launched == cudaErrorLaunchFailure, "%s: launch gave %s", c.what, cudaGetErrorName(launched));
        REQUIRE_MSG(seconds < 10.0, "%s: took %.1f s to report", c.what, seconds);
        CUDA_FAILS(cudaGetLastError(), cudaErrorLaunchFailure);
        CUDA_FAILS(cudaDeviceSynchronize(), cudaErrorLaunchFailure);
        CUDA_FAILS(ekv_cuda_host_launch(add_to_counter, dim3(1), dim3(1), 0, nullptr, out.data, 1), cudaErrorLaunchFailure);
        CUDA_OK(cudaDeviceReset()); /* frees `out` too; its destructor's cudaFree then fails harmlessly */
        out.data = nullptr;
    }
    device_buffer<int> counter(1);
    REQUIRE(counter.data != nullptr);
    CUDA_OK(ekv_cuda_host_launch(add_to_counter, dim3(1), dim3(1), 0, nullptr, counter.data, 1));
    CUDA_OK(cudaDeviceSynchronize());
    return "";
}

static std::string test_second_translation_unit()
{
    const int wrong = sample_kernel_check();
    REQUIRE_MSG(wrong == 0, "sample_kernel_check() gave %d", wrong);
    return "";
}

/* >>main ------------------------------------------------------------------------------- */

static int print_device_info()
{
    int count = 0;
    const cudaError_t status = cudaGetDeviceCount(&count);
    if (status != cudaSuccess) {
        std::printf("devices=0 error=%s\n", cudaGetErrorName(status));
        return 0;
    }
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) return 1;
    std::printf("devices=%d name=\"%s\" sm=%d.%d sms=%d memory=%zu\n", count, prop.name, prop.major, prop.minor,
                prop.multiProcessorCount, prop.totalGlobalMem);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 2 && std::strcmp(argv[1], "--device-info") == 0) return print_device_info();
    if (argc != 1) {
        std::fprintf(stderr, "usage: %s [--device-info]\n", argv[0]);
        return 2;
    }
    struct test_t {
        const char *name;
        std::string (*run)();
    };
    const test_t tests[] = {
        {"indexing over a 3D grid", test_indexing_3d},
        {"block reduction with shared memory and __syncthreads", test_block_reduction},
        {"dynamic shared memory", test_dynamic_shared_memory},
        {"warp shuffles, partial warp included", test_shuffles},
        {"shuffles from lanes outside the mask or exited give poison", test_shuffle_poison},
        {"ballot, any, all, activemask, reduce, __syncthreads_count/and/or", test_votes_and_block_predicates},
        {"static shared memory holds 0xff bytes at the start of every block", test_static_shared_memory_filled_per_block},
        {"blocks run in the seeded order, or in grid order with EKV_EMU_SEQUENTIAL=1", test_block_order},
        {"kernels contract a * b + c to a fused multiply-add, not the _rn intrinsics, not host code",
         test_multiply_add_contraction},
        {"atomics under contention", test_atomics_under_contention},
        {"kernel arguments and cache-hinted loads", test_kernel_arguments_and_cache_hints},
        {"fp16 conversions, exhaustive", test_half_conversions},
        {"fp16 conversions against the compiler's _Float16", test_half_against_compiler_float16},
        {"bf16 conversions, exhaustive", test_bfloat16_conversions},
        {"fp8 conversions, exhaustive", test_fp8_conversions},
        {"half2/bf16 helpers and half arithmetic", test_half_helpers_and_arithmetic},
        {"math intrinsics and vector types", test_math_and_types},
        {"streams, events, memcpy, memset", test_streams_events_memcpy},
        {"graph capture and replay", test_graph_capture_and_replay},
        {"memory accounting and allocation failure", test_memory_accounting},
        {"device description", test_device_description},
        {"EKV_EMU_* overrides", test_environment_overrides},
        {"invalid launch configurations", test_invalid_launch_configurations},
        {"barrier not reached by every thread, or divergent, is reported", test_barrier_not_reached_is_reported},
        {"a second translation unit (sample_kernel.cu)", test_second_translation_unit},
    };
    int passed = 0, failed = 0, skipped = 0;
    for (const test_t &test : tests) {
        const std::string outcome = test.run();
        if (outcome.empty()) {
            std::printf("PASS %s\n", test.name);
            ++passed;
        } else if (outcome.compare(0, std::strlen(skip_prefix), skip_prefix) == 0) {
            std::printf("SKIP %s: %s\n", test.name, outcome.c_str() + std::strlen(skip_prefix));
            ++skipped;
        } else {
            std::printf("FAIL %s: %s\n", test.name, outcome.c_str());
            ++failed;
        }
        std::fflush(stdout);
    }
    if (skipped > 0) std::printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
    else std::printf("%d passed, %d failed\n", passed, failed);
    return failed > 0 ? 1 : 0;
}
