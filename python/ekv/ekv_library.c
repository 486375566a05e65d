/* ekv_library.c - the shared library the Python module `ekv` loads (libekv.so): the
   implementation of ekv.h, C ABI included (>>abi, >>abibench), no CUDA. setup.py builds it
   at `pip install .`:

       cc -std=c99 -O2 -fPIC -shared -pthread -I. -o libekv.so python/ekv/ekv_library.c -lm */
#define EKV_IMPLEMENTATION
#include "ekv.h"
