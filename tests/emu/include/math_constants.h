/* math_constants.h - ekv CPU execution emulator - CUDART_* float constants - same license as ekv (LICENSE) */
#ifndef EKV_EMU_MATH_CONSTANTS_H
#define EKV_EMU_MATH_CONSTANTS_H

#include "cuda_runtime.h"

#define CUDART_INF_F __int_as_float(0x7f800000)
#define CUDART_NAN_F __int_as_float(0x7fffffff)
#define CUDART_MAX_NORMAL_F __int_as_float(0x7f7fffff)
#define CUDART_PI_F 3.141592654f
#define CUDART_L2E_F 1.442695041f
#define CUDART_LN2_F 0.693147181f
#define CUDART_INF __longlong_as_double(0x7ff0000000000000LL)
#define CUDART_NAN __longlong_as_double(0x7fffffffffffffffLL)

#endif /* EKV_EMU_MATH_CONSTANTS_H */
