/* cuda_fp16.h - ekv CPU execution emulator - __half and __half2 - same license as ekv (LICENSE)

   Conversions are bit-exact with CUDA's: round-to-nearest-even with subnormals, overflow to
   infinity, NaN to the canonical 0x7fff (and back to the float NaN 0x7fffffff). Arithmetic
   rounds the exact result once, as the f16 instructions do.
*/
#ifndef EKV_EMU_CUDA_FP16_H
#define EKV_EMU_CUDA_FP16_H

#include "cuda_runtime.h"

struct __half_raw { unsigned short x; };
struct __half2_raw { unsigned short x; unsigned short y; };

struct EKV_EMU_ALIGNED_MAY_ALIAS(2) __half {
protected:
    unsigned short __x;

public:
    __half() = default;
    constexpr __half(const __half_raw &raw) : __x(raw.x) {}
    __half &operator=(const __half_raw &raw) { __x = raw.x; return *this; }
    operator __half_raw() const { return __half_raw{__x}; }

    __half(float value) : __x(ekv_emu::float_to_half_bits(value)) {}
    __half(double value) : __x(ekv_emu::double_to_half_bits(value)) {}
    __half(short value) : __x(ekv_emu::integer_to_half_bits(value)) {}
    __half(unsigned short value) : __x(ekv_emu::integer_to_half_bits(value)) {}
    __half(int value) : __x(ekv_emu::integer_to_half_bits(value)) {}
    __half(unsigned int value) : __x(ekv_emu::integer_to_half_bits(value)) {}
    __half(long value) : __x(ekv_emu::integer_to_half_bits(value)) {}
    __half(unsigned long value) : __x(ekv_emu::integer_to_half_bits(value)) {}
    __half(long long value) : __x(ekv_emu::integer_to_half_bits(value)) {}
    __half(unsigned long long value) : __x(ekv_emu::integer_to_half_bits(value)) {}
    operator float() const { return ekv_emu::half_bits_to_float(__x); }
    __half &operator=(float value) { __x = ekv_emu::float_to_half_bits(value); return *this; }
    __half &operator=(double value) { __x = ekv_emu::double_to_half_bits(value); return *this; }
};

struct EKV_EMU_ALIGNED_MAY_ALIAS(4) __half2 {
    __half x;
    __half y;

    __half2() = default;
    constexpr __half2(const __half &a, const __half &b) : x(a), y(b) {}
    __half2(const __half2_raw &raw) : x(__half_raw{raw.x}), y(__half_raw{raw.y}) {}
    __half2 &operator=(const __half2_raw &raw) { *this = __half2(raw); return *this; }
    operator __half2_raw() const
    {
        return __half2_raw{static_cast<__half_raw>(x).x, static_cast<__half_raw>(y).x};
    }
};

typedef __half half;
typedef __half2 half2;

/* ---- conversions ---- */

inline unsigned short __half_as_ushort(__half h) { return static_cast<__half_raw>(h).x; }
inline short __half_as_short(__half h) { return static_cast<short>(static_cast<__half_raw>(h).x); }
inline __half __ushort_as_half(unsigned short bits) { return __half(__half_raw{bits}); }
inline __half __short_as_half(short bits) { return __half(__half_raw{static_cast<unsigned short>(bits)}); }

inline __half __float2half(float value) { return __half(__half_raw{ekv_emu::float_to_half_bits(value)}); }
inline __half __float2half_rn(float value) { return __float2half(value); }
inline __half __double2half(double value) { return __half(__half_raw{ekv_emu::double_to_half_bits(value)}); }
inline float __half2float(__half h) { return ekv_emu::half_bits_to_float(__half_as_ushort(h)); }
inline __half __int2half_rn(int value) { return __half(__half_raw{ekv_emu::integer_to_half_bits(value)}); }
inline __half __uint2half_rn(unsigned value) { return __half(__half_raw{ekv_emu::integer_to_half_bits(value)}); }
inline __half __ll2half_rn(long long value) { return __half(__half_raw{ekv_emu::integer_to_half_bits(value)}); }
inline int __half2int_rn(__half h) { return __float2int_rn(__half2float(h)); }
inline int __half2int_rz(__half h) { return __float2int_rz(__half2float(h)); }

inline __half2 make_half2(__half x, __half y) { return __half2(x, y); }
inline __half2 __halves2half2(__half low, __half high) { return __half2(low, high); }
inline __half2 __half2half2(__half value) { return __half2(value, value); }
inline __half2 __floats2half2_rn(float low, float high) { return __half2(__float2half(low), __float2half(high)); }
inline __half2 __float2half2_rn(float value) { return __half2(__float2half(value), __float2half(value)); }
inline __half2 __float22half2_rn(float2 value) { return __floats2half2_rn(value.x, value.y); }
inline float2 __half22float2(__half2 value) { return make_float2(__half2float(value.x), __half2float(value.y)); }
inline float __low2float(__half2 value) { return __half2float(value.x); }
inline float __high2float(__half2 value) { return __half2float(value.y); }
inline __half __low2half(__half2 value) { return value.x; }
inline __half __high2half(__half2 value) { return value.y; }
inline __half2 __lows2half2(__half2 a, __half2 b) { return __half2(a.x, b.x); }
inline __half2 __highs2half2(__half2 a, __half2 b) { return __half2(a.y, b.y); }
inline __half2 __lowhigh2highlow(__half2 value) { return __half2(value.y, value.x); }

/* ---- arithmetic: the exact result in double, rounded once to half ---- */

inline __half __hadd(__half a, __half b) { return __double2half(double(__half2float(a)) + double(__half2float(b))); }
inline __half __hsub(__half a, __half b) { return __double2half(double(__half2float(a)) - double(__half2float(b))); }
inline __half __hmul(__half a, __half b) { return __double2half(double(__half2float(a)) * double(__half2float(b))); }
inline __half __hdiv(__half a, __half b) { return __double2half(double(__half2float(a)) / double(__half2float(b))); }
inline __half __hfma(__half a, __half b, __half c)
{
    return __double2half(std::fma(double(__half2float(a)), double(__half2float(b)), double(__half2float(c))));
}
inline __half __hneg(__half a) { return __ushort_as_half(static_cast<unsigned short>(__half_as_ushort(a) ^ 0x8000u)); }
inline __half __habs(__half a) { return __ushort_as_half(static_cast<unsigned short>(__half_as_ushort(a) & 0x7fffu)); }
inline __half __hmax(__half a, __half b) { return __float2half(std::fmax(__half2float(a), __half2float(b))); }
inline __half __hmin(__half a, __half b) { return __float2half(std::fmin(__half2float(a), __half2float(b))); }
inline bool __hisnan(__half a) { return (__half_as_ushort(a) & 0x7fffu) > 0x7c00u; }
inline int __hisinf(__half a)
{
    const unsigned short bits = __half_as_ushort(a);
    return bits == 0x7c00u ? 1 : (bits == 0xfc00u ? -1 : 0);
}
inline bool __heq(__half a, __half b) { return __half2float(a) == __half2float(b); }
inline bool __hne(__half a, __half b) { return __half2float(a) != __half2float(b); }
inline bool __hlt(__half a, __half b) { return __half2float(a) < __half2float(b); }
inline bool __hle(__half a, __half b) { return __half2float(a) <= __half2float(b); }
inline bool __hgt(__half a, __half b) { return __half2float(a) > __half2float(b); }
inline bool __hge(__half a, __half b) { return __half2float(a) >= __half2float(b); }

inline __half2 __hadd2(__half2 a, __half2 b) { return __half2(__hadd(a.x, b.x), __hadd(a.y, b.y)); }
inline __half2 __hsub2(__half2 a, __half2 b) { return __half2(__hsub(a.x, b.x), __hsub(a.y, b.y)); }
inline __half2 __hmul2(__half2 a, __half2 b) { return __half2(__hmul(a.x, b.x), __hmul(a.y, b.y)); }
inline __half2 __h2div(__half2 a, __half2 b) { return __half2(__hdiv(a.x, b.x), __hdiv(a.y, b.y)); }
inline __half2 __hfma2(__half2 a, __half2 b, __half2 c) { return __half2(__hfma(a.x, b.x, c.x), __hfma(a.y, b.y, c.y)); }
inline __half2 __hneg2(__half2 a) { return __half2(__hneg(a.x), __hneg(a.y)); }
inline __half2 __habs2(__half2 a) { return __half2(__habs(a.x), __habs(a.y)); }
inline __half2 __hmax2(__half2 a, __half2 b) { return __half2(__hmax(a.x, b.x), __hmax(a.y, b.y)); }
inline __half2 __hmin2(__half2 a, __half2 b) { return __half2(__hmin(a.x, b.x), __hmin(a.y, b.y)); }

inline __half operator+(const __half &a, const __half &b) { return __hadd(a, b); }
inline __half operator-(const __half &a, const __half &b) { return __hsub(a, b); }
inline __half operator*(const __half &a, const __half &b) { return __hmul(a, b); }
inline __half operator/(const __half &a, const __half &b) { return __hdiv(a, b); }
inline __half &operator+=(__half &a, const __half &b) { return a = __hadd(a, b); }
inline __half &operator-=(__half &a, const __half &b) { return a = __hsub(a, b); }
inline __half &operator*=(__half &a, const __half &b) { return a = __hmul(a, b); }
inline __half &operator/=(__half &a, const __half &b) { return a = __hdiv(a, b); }
inline __half operator+(const __half &a) { return a; }
inline __half operator-(const __half &a) { return __hneg(a); }
inline bool operator==(const __half &a, const __half &b) { return __heq(a, b); }
inline bool operator!=(const __half &a, const __half &b) { return __hne(a, b); }
inline bool operator<(const __half &a, const __half &b) { return __hlt(a, b); }
inline bool operator<=(const __half &a, const __half &b) { return __hle(a, b); }
inline bool operator>(const __half &a, const __half &b) { return __hgt(a, b); }
inline bool operator>=(const __half &a, const __half &b) { return __hge(a, b); }

inline __half2 operator+(const __half2 &a, const __half2 &b) { return __hadd2(a, b); }
inline __half2 operator-(const __half2 &a, const __half2 &b) { return __hsub2(a, b); }
inline __half2 operator*(const __half2 &a, const __half2 &b) { return __hmul2(a, b); }
inline __half2 operator/(const __half2 &a, const __half2 &b) { return __h2div(a, b); }
inline __half2 &operator+=(__half2 &a, const __half2 &b) { return a = __hadd2(a, b); }
inline __half2 &operator-=(__half2 &a, const __half2 &b) { return a = __hsub2(a, b); }
inline __half2 &operator*=(__half2 &a, const __half2 &b) { return a = __hmul2(a, b); }
inline __half2 &operator/=(__half2 &a, const __half2 &b) { return a = __h2div(a, b); }
inline __half2 operator-(const __half2 &a) { return __hneg2(a); }
inline bool operator==(const __half2 &a, const __half2 &b) { return __heq(a.x, b.x) && __heq(a.y, b.y); }
inline bool operator!=(const __half2 &a, const __half2 &b) { return __hne(a.x, b.x) && __hne(a.y, b.y); }

/* ---- warp exchanges, cache-hinted accesses, atomics ---- */

EKV_EMU_SHUFFLES(__half)
EKV_EMU_SHUFFLES(__half2)

namespace ekv_emu {
EKV_EMU_CACHE_HINT_TYPE(__half)
EKV_EMU_CACHE_HINT_TYPE(__half2)
} /* namespace ekv_emu */

inline __half atomicAdd(__half *address, __half value)
{
    return ekv_emu::atomic_update(address, [value](__half old) { return __hadd(old, value); });
}
inline __half2 atomicAdd(__half2 *address, __half2 value)
{
    return ekv_emu::atomic_update(address, [value](__half2 old) { return __hadd2(old, value); });
}

#endif /* EKV_EMU_CUDA_FP16_H */
