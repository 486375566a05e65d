/* tests/two_tu_cuda_b.cpp - the declarations-only half of two_tu_cuda_a.cpp. */
#include <string.h>
#include "ekv_cuda.cuh"

int two_tu_cuda_b(void)
{
    ekv_cuda_elastic_cache cache;
    memset(&cache, 0, sizeof cache);
    /* head dim 96 is refused before any allocation */
    if (ekv_cuda_elastic_create(&cache, EKV_DTYPE_F16, 1, 1, 96, 16, 0) == EKV_SUCCESS) return 1;
    if (!ekv_cuda_supports_head_dim(128) || ekv_cuda_supports_head_dim(96)) return 1;
    /* taking the addresses makes the linker resolve them from the other unit */
    volatile const void *uses[2] = {(const void *)&ekv_cuda_attention, (const void *)&ekv_cuda_cycle_run};
    (void)uses;
    return 0;
}
