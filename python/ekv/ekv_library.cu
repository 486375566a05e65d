/* ekv_library.cu - the shared library with CUDA (libekv_cuda.so): the implementation of
   ekv.h and ekv_cuda.cuh, C ABI included (ekv_cuda_abi_*). setup.py builds it at
   `pip install .` wherever nvcc exists (never required):

       nvcc -O3 -Xcompiler -fPIC -shared -I. -o libekv_cuda.so python/ekv/ekv_library.cu -lcublas */
#define EKV_IMPLEMENTATION
#include "ekv_cuda.cuh"
