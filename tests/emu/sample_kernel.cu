/* sample_kernel.cu - one CUDA source that builds with nvcc and, with tests/emu/include first
   on the include path, with a host compiler: templates, __launch_bounds__, __align__(16)
   static shared arrays, uint4/float4 loads through reinterpret_cast, __half2 conversions,
   __shfl_xor_sync. test_emu links it as a second translation unit and runs it.

       nvcc -arch=sm_80 -c tests/emu/sample_kernel.cu -o sample_kernel.o
       g++ -std=c++17 -Wall -Wextra -Werror -pthread -Itests/emu/include -x c++ -c tests/emu/sample_kernel.cu
*/
#include <cuda_runtime.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdio>
#include <vector>

/* Score of one fp32 query against each row of fp16 keys: a warp per row, eight halves per
   16-byte load, a butterfly reduction across the warp. */
template <int BLOCK, int DIM>
__global__ void __launch_bounds__(BLOCK)
sample_scores(const __half *__restrict__ keys, const float *__restrict__ query, float *__restrict__ scores, int rows)
{
    static_assert(DIM % 8 == 0, "rows are read 8 halves at a time");
    __shared__ __align__(16) float4 query_tile[DIM / 4];
    const float4 *query4 = reinterpret_cast<const float4 *>(query);
    for (int i = threadIdx.x; i < DIM / 4; i += BLOCK) query_tile[i] = __ldg(query4 + i);
    __syncthreads();

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int row = blockIdx.x * (BLOCK / 32) + warp;
    if (row >= rows) return; /* whole warps leave together, after the only barrier */
    const uint4 *row4 = reinterpret_cast<const uint4 *>(keys + static_cast<size_t>(row) * DIM);
    const float *tile = reinterpret_cast<const float *>(query_tile);
    float sum = 0.0f;
    for (int chunk = lane; chunk < DIM / 8; chunk += 32) {
        const uint4 packed = row4[chunk];
        const __half2 *pairs = reinterpret_cast<const __half2 *>(&packed);
        for (int p = 0; p < 4; ++p) {
            const float2 k = __half22float2(pairs[p]);
            sum += k.x * tile[chunk * 8 + 2 * p] + k.y * tile[chunk * 8 + 2 * p + 1];
        }
    }
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    if (lane == 0) scores[row] = sum;
}

/* The one launch helper, as the library has it: <<<>>> under nvcc, the emulator otherwise. */
template <typename... Params, typename... Args>
static cudaError_t sample_launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared, cudaStream_t stream,
                                 Args... args)
{
#if defined(__CUDACC__)
    kernel<<<grid, block, shared, stream>>>(args...);
    return cudaGetLastError();
#else
    return ekv_cuda_host_launch(kernel, grid, block, shared, stream, args...);
#endif
}

/* Runs the kernel on 37 rows (a partial last block) and compares with the CPU; returns
   the number of wrong scores, or -1 when a CUDA call fails. */
int sample_kernel_check(void)
{
    constexpr int block = 128, dim = 128, rows = 37;
    std::vector<__half2> keys(static_cast<size_t>(rows) * dim / 2);
    std::vector<float> query(dim), scores(rows), expected(rows, 0.0f);
    for (int d = 0; d < dim; ++d) query[d] = std::sin(0.37f * float(d));
    for (int r = 0; r < rows; ++r)
        for (int d = 0; d < dim; d += 2)
            keys[(static_cast<size_t>(r) * dim + d) / 2] =
                __floats2half2_rn(std::cos(0.11f * float(r * dim + d)), 0.25f * float((r + d) % 7) - 0.75f);
    for (int r = 0; r < rows; ++r)
        for (int d = 0; d < dim; d += 2) {
            const float2 k = __half22float2(keys[(static_cast<size_t>(r) * dim + d) / 2]);
            expected[r] += k.x * query[d] + k.y * query[d + 1];
        }

    __half *device_keys = nullptr;
    float *device_query = nullptr, *device_scores = nullptr;
    if (cudaMalloc(&device_keys, keys.size() * sizeof(__half2)) != cudaSuccess ||
        cudaMalloc(&device_query, query.size() * sizeof(float)) != cudaSuccess ||
        cudaMalloc(&device_scores, scores.size() * sizeof(float)) != cudaSuccess)
        return -1;
    int wrong = -1;
    if (cudaMemcpy(device_keys, keys.data(), keys.size() * sizeof(__half2), cudaMemcpyHostToDevice) == cudaSuccess &&
        cudaMemcpy(device_query, query.data(), query.size() * sizeof(float), cudaMemcpyHostToDevice) == cudaSuccess &&
        sample_launch(sample_scores<block, dim>, dim3((rows + block / 32 - 1) / (block / 32)), dim3(block), 0, nullptr,
                      static_cast<const __half *>(device_keys), static_cast<const float *>(device_query), device_scores,
                      rows) == cudaSuccess &&
        cudaMemcpy(scores.data(), device_scores, scores.size() * sizeof(float), cudaMemcpyDeviceToHost) == cudaSuccess) {
        wrong = 0;
        for (int r = 0; r < rows; ++r)
            if (!(std::fabs(scores[r] - expected[r]) <= 1e-4f * (1.0f + std::fabs(expected[r])))) {
                if (wrong == 0) std::fprintf(stderr, "sample kernel: row %d: %g, expected %g\n", r, scores[r], expected[r]);
                ++wrong;
            }
    }
    cudaFree(device_keys);
    cudaFree(device_query);
    cudaFree(device_scores);
    return wrong;
}
