/* race_missing_barrier.cpp - each thread writes its shared-memory slot and reads its
   neighbour's, across two warps. ThreadSanitizer must report a data race when nothing
   separates the two (default, -DSYNC=0) and when only __syncwarp() does (-DSYNC=1: thread
   31 reads warp 1's slot); with __syncthreads() (-DSYNC=2) it must stay quiet, and the
   result is checked.

       g++ -std=c++17 -g -O1 -fsanitize=thread -pthread -Itests/emu/include -DSYNC=2 tests/emu/race_missing_barrier.cpp -o race
*/
#include <cuda_runtime.h>

#include <cstdio>

#ifndef SYNC
#define SYNC 0
#endif

constexpr int threads = 64;

__global__ void rotate_through_shared(const int *in, int *out)
{
    __shared__ int slots[threads];
    slots[threadIdx.x] = in[threadIdx.x] * 2;
#if SYNC == 1
    __syncwarp();
#elif SYNC == 2
    __syncthreads();
#endif
    out[threadIdx.x] = slots[(threadIdx.x + 1) % blockDim.x];
}

int main()
{
    int host[threads], *in = nullptr, *out = nullptr;
    for (int i = 0; i < threads; ++i) host[i] = i;
    if (cudaMalloc(&in, sizeof host) != cudaSuccess || cudaMalloc(&out, sizeof host) != cudaSuccess ||
        cudaMemcpy(in, host, sizeof host, cudaMemcpyHostToDevice) != cudaSuccess ||
        ekv_cuda_host_launch(rotate_through_shared, dim3(1), dim3(threads), 0, nullptr, in, out) != cudaSuccess ||
        cudaMemcpy(host, out, sizeof host, cudaMemcpyDeviceToHost) != cudaSuccess) {
        std::fprintf(stderr, "race_missing_barrier: a CUDA call failed\n");
        return 1;
    }
    for (int i = 0; SYNC == 2 && i < threads; ++i)
        if (host[i] != 2 * ((i + 1) % threads)) {
            std::fprintf(stderr, "race_missing_barrier: out[%d] = %d\n", i, host[i]);
            return 1;
        }
    cudaFree(in);
    cudaFree(out);
    return 0;
}
