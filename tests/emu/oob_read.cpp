/* oob_read.cpp - a kernel whose last thread reads one element past a cudaMalloc'd buffer.
   Device memory is host memory of exactly the requested size, so AddressSanitizer must
   stop the program with a heap-buffer-overflow.

       g++ -std=c++17 -g -O1 -fsanitize=address -pthread -Itests/emu/include tests/emu/oob_read.cpp -o oob_read
*/
#include <cuda_runtime.h>

#include <cstdio>

constexpr int count = 64;

__global__ void read_next(const float *in, float *out)
{
    out[threadIdx.x] = in[threadIdx.x + 1]; /* thread count-1 reads in[count] */
}

int main()
{
    float *in = nullptr, *out = nullptr;
    if (cudaMalloc(&in, count * sizeof(float)) != cudaSuccess || cudaMalloc(&out, count * sizeof(float)) != cudaSuccess ||
        cudaMemset(in, 0, count * sizeof(float)) != cudaSuccess)
        return 1;
    const cudaError_t status = ekv_cuda_host_launch(read_next, dim3(1), dim3(count), 0, nullptr, in, out);
    std::printf("launch returned %s: the overflow was not caught\n", cudaGetErrorName(status));
    return 0;
}
