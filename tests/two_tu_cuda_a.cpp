/* tests/two_tu_cuda_a.cpp - with two_tu_cuda_b.cpp: ekv_cuda.cuh in two translation units
   (one with EKV_IMPLEMENTATION) links, and the other unit sees every public declaration
   (attention, elastic cache, cycle). Built on the emulator headers.
   Build: g++ -std=c++17 -pthread -DEKV_EMULATOR -Itests/emu/include -I. \
              tests/two_tu_cuda_a.cpp tests/two_tu_cuda_b.cpp */
#define EKV_IMPLEMENTATION
#include "ekv_cuda.cuh"

int two_tu_cuda_b(void);

int main(void)
{
    int ok = two_tu_cuda_b() == 0;
    printf("%s ekv_cuda.cuh in two translation units\n", ok ? "PASS" : "FAIL");
    printf("%d passed, %d failed\n", ok, !ok);
    return ok ? 0 : 1;
}
