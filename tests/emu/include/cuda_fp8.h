/* cuda_fp8.h - ekv CPU execution emulator - fp8 e4m3 and e5m2 - same license as ekv (LICENSE)

   Bit-exact with CUDA's conversions: round-to-nearest-even; e4m3 has no infinity, its
   largest finite value is 448 and its NaN is 0x7f (0xff); under __NV_SATFINITE values
   beyond the largest finite one (infinities too) become it, under __NV_NOSAT they become
   NaN (e4m3) or infinity (e5m2); a NaN input becomes 0x7f. fp8 to half is exact, NaN to
   the half 0x7fff.
*/
#ifndef EKV_EMU_CUDA_FP8_H
#define EKV_EMU_CUDA_FP8_H

#include "cuda_runtime.h"
#include "cuda_fp16.h"
#include "cuda_bf16.h"

typedef unsigned char __nv_fp8_storage_t;
typedef unsigned short __nv_fp8x2_storage_t;
typedef unsigned int __nv_fp8x4_storage_t;

typedef enum __nv_saturation_t { __NV_NOSAT, __NV_SATFINITE } __nv_saturation_t;
typedef enum __nv_fp8_interpretation_t { __NV_E4M3, __NV_E5M2 } __nv_fp8_interpretation_t;

namespace ekv_emu {

inline narrow_format fp8_format(__nv_saturation_t saturate, __nv_fp8_interpretation_t interpretation)
{
    const bool finite = saturate == __NV_SATFINITE;
    if (interpretation == __NV_E4M3) return narrow_format{3, -6, 0x7eu, finite ? 0x7eu : 0x7fu, 0x7fu, 0x80u};
    return narrow_format{2, -14, 0x7bu, finite ? 0x7bu : 0x7cu, 0x7fu, 0x80u};
}

inline unsigned short fp8_to_half_bits(__nv_fp8_storage_t x, __nv_fp8_interpretation_t interpretation)
{
    const unsigned short sign = static_cast<unsigned short>((x & 0x80u) << 8);
    if (interpretation == __NV_E5M2) /* e5m2 is the upper byte of a half */
        return (x & 0x7fu) > 0x7cu ? 0x7fffu : static_cast<unsigned short>(x << 8);
    const unsigned magnitude = x & 0x7fu;
    if (magnitude == 0x7fu) return 0x7fffu;
    const unsigned biased = magnitude >> 3, fraction = magnitude & 7u;
    /* Every e4m3 value is a normal half: re-bias the exponent, widen the fraction. */
    if (biased != 0) return static_cast<unsigned short>(sign | ((biased + 8u) << 10) | (fraction << 7));
    if (fraction == 0) return sign;
    return static_cast<unsigned short>(sign | float_to_half_bits(float(fraction) * 0x1p-9f));
}

} /* namespace ekv_emu */

inline __nv_fp8_storage_t __nv_cvt_float_to_fp8(float x, __nv_saturation_t saturate,
                                                __nv_fp8_interpretation_t interpretation)
{
    return static_cast<__nv_fp8_storage_t>(ekv_emu::narrow_from_float(x, ekv_emu::fp8_format(saturate, interpretation)));
}

inline __nv_fp8_storage_t __nv_cvt_double_to_fp8(double x, __nv_saturation_t saturate,
                                                 __nv_fp8_interpretation_t interpretation)
{
    return static_cast<__nv_fp8_storage_t>(ekv_emu::narrow_from_double(x, ekv_emu::fp8_format(saturate, interpretation)));
}

inline __nv_fp8x2_storage_t __nv_cvt_float2_to_fp8x2(float2 x, __nv_saturation_t saturate,
                                                     __nv_fp8_interpretation_t interpretation)
{
    return static_cast<__nv_fp8x2_storage_t>(__nv_cvt_float_to_fp8(x.x, saturate, interpretation) |
                                             (__nv_cvt_float_to_fp8(x.y, saturate, interpretation) << 8));
}

inline __nv_fp8x2_storage_t __nv_cvt_double2_to_fp8x2(double2 x, __nv_saturation_t saturate,
                                                      __nv_fp8_interpretation_t interpretation)
{
    return static_cast<__nv_fp8x2_storage_t>(__nv_cvt_double_to_fp8(x.x, saturate, interpretation) |
                                             (__nv_cvt_double_to_fp8(x.y, saturate, interpretation) << 8));
}

inline __nv_fp8_storage_t __nv_cvt_halfraw_to_fp8(__half_raw x, __nv_saturation_t saturate,
                                                  __nv_fp8_interpretation_t interpretation)
{
    return __nv_cvt_float_to_fp8(ekv_emu::half_bits_to_float(x.x), saturate, interpretation);
}

inline __nv_fp8x2_storage_t __nv_cvt_halfraw2_to_fp8x2(__half2_raw x, __nv_saturation_t saturate,
                                                       __nv_fp8_interpretation_t interpretation)
{
    return static_cast<__nv_fp8x2_storage_t>(__nv_cvt_halfraw_to_fp8(__half_raw{x.x}, saturate, interpretation) |
                                             (__nv_cvt_halfraw_to_fp8(__half_raw{x.y}, saturate, interpretation) << 8));
}

inline __nv_fp8_storage_t __nv_cvt_bfloat16raw_to_fp8(__nv_bfloat16_raw x, __nv_saturation_t saturate,
                                                      __nv_fp8_interpretation_t interpretation)
{
    return __nv_cvt_float_to_fp8(ekv_emu::bfloat16_bits_to_float(x.x), saturate, interpretation);
}

inline __half_raw __nv_cvt_fp8_to_halfraw(__nv_fp8_storage_t x, __nv_fp8_interpretation_t interpretation)
{
    return __half_raw{ekv_emu::fp8_to_half_bits(x, interpretation)};
}

inline __half2_raw __nv_cvt_fp8x2_to_halfraw2(__nv_fp8x2_storage_t x, __nv_fp8_interpretation_t interpretation)
{
    return __half2_raw{ekv_emu::fp8_to_half_bits(static_cast<__nv_fp8_storage_t>(x & 0xffu), interpretation),
                       ekv_emu::fp8_to_half_bits(static_cast<__nv_fp8_storage_t>(x >> 8), interpretation)};
}

namespace ekv_emu {

inline __nv_fp8x4_storage_t float4_to_fp8x4(float4 f, __nv_fp8_interpretation_t interpretation)
{
    return __nv_cvt_float2_to_fp8x2(make_float2(f.x, f.y), __NV_SATFINITE, interpretation) |
           (__nv_fp8x4_storage_t(__nv_cvt_float2_to_fp8x2(make_float2(f.z, f.w), __NV_SATFINITE, interpretation)) << 16);
}

inline __nv_fp8x4_storage_t halves_to_fp8x4(__half2 low, __half2 high, __nv_fp8_interpretation_t interpretation)
{
    return __nv_cvt_halfraw2_to_fp8x2(static_cast<__half2_raw>(low), __NV_SATFINITE, interpretation) |
           (__nv_fp8x4_storage_t(__nv_cvt_halfraw2_to_fp8x2(static_cast<__half2_raw>(high), __NV_SATFINITE,
                                                            interpretation)) << 16);
}

inline float2 fp8x2_to_float2(__nv_fp8x2_storage_t x, __nv_fp8_interpretation_t interpretation)
{
    return __half22float2(__half2(__nv_cvt_fp8x2_to_halfraw2(x, interpretation)));
}

inline float4 fp8x4_to_float4(__nv_fp8x4_storage_t x, __nv_fp8_interpretation_t interpretation)
{
    const float2 low = fp8x2_to_float2(static_cast<__nv_fp8x2_storage_t>(x & 0xffffu), interpretation);
    const float2 high = fp8x2_to_float2(static_cast<__nv_fp8x2_storage_t>(x >> 16), interpretation);
    return make_float4(low.x, low.y, high.x, high.y);
}

} /* namespace ekv_emu */

/* The scalar, pair and quad classes; conversions into them saturate (__NV_SATFINITE), as
   CUDA's do, and conversions out of them are explicit. */
#define EKV_EMU_FP8_TYPES(name, name2, name4, kind)                                                  \
    struct EKV_EMU_ALIGNED_MAY_ALIAS(1) name {                                                      \
        __nv_fp8_storage_t __x;                                                                     \
        name() = default;                                                                           \
        explicit name(float f) : __x(__nv_cvt_float_to_fp8(f, __NV_SATFINITE, kind)) {}             \
        explicit name(double f) : __x(__nv_cvt_double_to_fp8(f, __NV_SATFINITE, kind)) {}           \
        explicit name(__half f) : __x(__nv_cvt_halfraw_to_fp8(f, __NV_SATFINITE, kind)) {}          \
        explicit name(__nv_bfloat16 f) : __x(__nv_cvt_bfloat16raw_to_fp8(f, __NV_SATFINITE, kind)) {} \
        explicit name(int v) : name(float(v)) {}                                                    \
        explicit name(unsigned int v) : name(float(v)) {}                                           \
        explicit name(long long v) : name(float(v)) {}                                              \
        explicit name(unsigned long long v) : name(float(v)) {}                                     \
        explicit operator __half() const { return __half(__nv_cvt_fp8_to_halfraw(__x, kind)); }    \
        explicit operator float() const { return __half2float(static_cast<__half>(*this)); }       \
        explicit operator double() const { return double(static_cast<float>(*this)); }             \
        explicit operator __nv_bfloat16() const { return __float2bfloat16(static_cast<float>(*this)); } \
    };                                                                                              \
    struct EKV_EMU_ALIGNED_MAY_ALIAS(2) name2 {                                                     \
        __nv_fp8x2_storage_t __x;                                                                   \
        name2() = default;                                                                          \
        explicit name2(float2 f) : __x(__nv_cvt_float2_to_fp8x2(f, __NV_SATFINITE, kind)) {}        \
        explicit name2(double2 f) : __x(__nv_cvt_double2_to_fp8x2(f, __NV_SATFINITE, kind)) {}      \
        explicit name2(__half2 f) : __x(__nv_cvt_halfraw2_to_fp8x2(f, __NV_SATFINITE, kind)) {}     \
        explicit operator __half2() const { return __half2(__nv_cvt_fp8x2_to_halfraw2(__x, kind)); } \
        explicit operator float2() const { return ekv_emu::fp8x2_to_float2(__x, kind); }           \
    };                                                                                              \
    struct EKV_EMU_ALIGNED_MAY_ALIAS(4) name4 {                                                     \
        __nv_fp8x4_storage_t __x;                                                                   \
        name4() = default;                                                                          \
        explicit name4(float4 f) : __x(ekv_emu::float4_to_fp8x4(f, kind)) {}                        \
        explicit name4(__half2 low, __half2 high) : __x(ekv_emu::halves_to_fp8x4(low, high, kind)) {} \
        explicit operator float4() const { return ekv_emu::fp8x4_to_float4(__x, kind); }           \
    };

EKV_EMU_FP8_TYPES(__nv_fp8_e4m3, __nv_fp8x2_e4m3, __nv_fp8x4_e4m3, __NV_E4M3)
EKV_EMU_FP8_TYPES(__nv_fp8_e5m2, __nv_fp8x2_e5m2, __nv_fp8x4_e5m2, __NV_E5M2)
#undef EKV_EMU_FP8_TYPES

typedef __nv_fp8_e4m3 nv_fp8_e4m3;
typedef __nv_fp8_e5m2 nv_fp8_e5m2;
typedef __nv_fp8x2_e4m3 nv_fp8x2_e4m3;
typedef __nv_fp8x4_e4m3 nv_fp8x4_e4m3;

#endif /* EKV_EMU_CUDA_FP8_H */
