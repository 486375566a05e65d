/* tests/ekv_impl_emu.cpp - the one implementation of ekv.h and ekv_cuda.cuh (kernels
   included) that the emulator tests link, compiled once per flavour (plain, ASan+UBSan,
   TSan) instead of once per test.
   Build: g++ -std=c++17 -O1 -pthread -DEKV_EMULATOR -Itests/emu/include -I. -c \
              tests/ekv_impl_emu.cpp */
#define EKV_IMPLEMENTATION
#include "ekv_cuda.cuh"
