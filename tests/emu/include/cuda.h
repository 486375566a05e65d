/* cuda.h - ekv CPU execution emulator - driver API version only - same license as ekv (LICENSE)

   The emulator has no driver API; this header exists so that `#include <cuda.h>` and
   CUDA_VERSION checks work.
*/
#ifndef EKV_EMU_CUDA_H
#define EKV_EMU_CUDA_H

#define CUDA_VERSION 13000

#endif /* EKV_EMU_CUDA_H */
