/* cuda_bf16.h - ekv CPU execution emulator - __nv_bfloat16 and __nv_bfloat162 - same license as ekv (LICENSE)

   Conversions are bit-exact with CUDA's: round-to-nearest-even with subnormals, overflow to
   infinity, NaN to the canonical 0x7fff. Arithmetic rounds the exact result once.
*/
#ifndef EKV_EMU_CUDA_BF16_H
#define EKV_EMU_CUDA_BF16_H

#include "cuda_runtime.h"

struct __nv_bfloat16_raw { unsigned short x; };
struct __nv_bfloat162_raw { unsigned short x; unsigned short y; };

struct EKV_EMU_ALIGNED_MAY_ALIAS(2) __nv_bfloat16 {
protected:
    unsigned short __x;

public:
    __nv_bfloat16() = default;
    constexpr __nv_bfloat16(const __nv_bfloat16_raw &raw) : __x(raw.x) {}
    __nv_bfloat16 &operator=(const __nv_bfloat16_raw &raw) { __x = raw.x; return *this; }
    operator __nv_bfloat16_raw() const { return __nv_bfloat16_raw{__x}; }

    __nv_bfloat16(float value) : __x(ekv_emu::float_to_bfloat16_bits(value)) {}
    __nv_bfloat16(double value) : __x(ekv_emu::double_to_bfloat16_bits(value)) {}
    __nv_bfloat16(short value) : __x(ekv_emu::integer_to_bfloat16_bits(value)) {}
    __nv_bfloat16(unsigned short value) : __x(ekv_emu::integer_to_bfloat16_bits(value)) {}
    __nv_bfloat16(int value) : __x(ekv_emu::integer_to_bfloat16_bits(value)) {}
    __nv_bfloat16(unsigned int value) : __x(ekv_emu::integer_to_bfloat16_bits(value)) {}
    __nv_bfloat16(long value) : __x(ekv_emu::integer_to_bfloat16_bits(value)) {}
    __nv_bfloat16(unsigned long value) : __x(ekv_emu::integer_to_bfloat16_bits(value)) {}
    __nv_bfloat16(long long value) : __x(ekv_emu::integer_to_bfloat16_bits(value)) {}
    __nv_bfloat16(unsigned long long value) : __x(ekv_emu::integer_to_bfloat16_bits(value)) {}
    operator float() const { return ekv_emu::bfloat16_bits_to_float(__x); }
    __nv_bfloat16 &operator=(float value) { __x = ekv_emu::float_to_bfloat16_bits(value); return *this; }
    __nv_bfloat16 &operator=(double value) { __x = ekv_emu::double_to_bfloat16_bits(value); return *this; }
};

struct EKV_EMU_ALIGNED_MAY_ALIAS(4) __nv_bfloat162 {
    __nv_bfloat16 x;
    __nv_bfloat16 y;

    __nv_bfloat162() = default;
    constexpr __nv_bfloat162(const __nv_bfloat16 &a, const __nv_bfloat16 &b) : x(a), y(b) {}
    __nv_bfloat162(const __nv_bfloat162_raw &raw) : x(__nv_bfloat16_raw{raw.x}), y(__nv_bfloat16_raw{raw.y}) {}
    __nv_bfloat162 &operator=(const __nv_bfloat162_raw &raw) { *this = __nv_bfloat162(raw); return *this; }
    operator __nv_bfloat162_raw() const
    {
        return __nv_bfloat162_raw{static_cast<__nv_bfloat16_raw>(x).x, static_cast<__nv_bfloat16_raw>(y).x};
    }
};

typedef __nv_bfloat16 nv_bfloat16;
typedef __nv_bfloat162 nv_bfloat162;

/* ---- conversions ---- */

inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return static_cast<__nv_bfloat16_raw>(h).x; }
inline short __bfloat16_as_short(__nv_bfloat16 h) { return static_cast<short>(static_cast<__nv_bfloat16_raw>(h).x); }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short bits) { return __nv_bfloat16(__nv_bfloat16_raw{bits}); }
inline __nv_bfloat16 __short_as_bfloat16(short bits)
{
    return __nv_bfloat16(__nv_bfloat16_raw{static_cast<unsigned short>(bits)});
}

inline __nv_bfloat16 __float2bfloat16(float value) { return __ushort_as_bfloat16(ekv_emu::float_to_bfloat16_bits(value)); }
inline __nv_bfloat16 __float2bfloat16_rn(float value) { return __float2bfloat16(value); }
inline __nv_bfloat16 __double2bfloat16(double value) { return __ushort_as_bfloat16(ekv_emu::double_to_bfloat16_bits(value)); }
inline float __bfloat162float(__nv_bfloat16 h) { return ekv_emu::bfloat16_bits_to_float(__bfloat16_as_ushort(h)); }
inline __nv_bfloat16 __int2bfloat16_rn(int value) { return __ushort_as_bfloat16(ekv_emu::integer_to_bfloat16_bits(value)); }
inline __nv_bfloat16 __ll2bfloat16_rn(long long value) { return __ushort_as_bfloat16(ekv_emu::integer_to_bfloat16_bits(value)); }

inline __nv_bfloat162 make_bfloat162(__nv_bfloat16 x, __nv_bfloat16 y) { return __nv_bfloat162(x, y); }
inline __nv_bfloat162 __halves2bfloat162(__nv_bfloat16 low, __nv_bfloat16 high) { return __nv_bfloat162(low, high); }
inline __nv_bfloat162 __bfloat162bfloat162(__nv_bfloat16 value) { return __nv_bfloat162(value, value); }
inline __nv_bfloat162 __floats2bfloat162_rn(float low, float high)
{
    return __nv_bfloat162(__float2bfloat16(low), __float2bfloat16(high));
}
inline __nv_bfloat162 __float2bfloat162_rn(float value) { return __floats2bfloat162_rn(value, value); }
inline __nv_bfloat162 __float22bfloat162_rn(float2 value) { return __floats2bfloat162_rn(value.x, value.y); }
inline float2 __bfloat1622float2(__nv_bfloat162 value)
{
    return make_float2(__bfloat162float(value.x), __bfloat162float(value.y));
}
inline float __low2float(__nv_bfloat162 value) { return __bfloat162float(value.x); }
inline float __high2float(__nv_bfloat162 value) { return __bfloat162float(value.y); }
inline __nv_bfloat16 __low2bfloat16(__nv_bfloat162 value) { return value.x; }
inline __nv_bfloat16 __high2bfloat16(__nv_bfloat162 value) { return value.y; }

/* ---- arithmetic: the exact result in double, rounded once to bf16 ---- */

inline __nv_bfloat16 __hadd(__nv_bfloat16 a, __nv_bfloat16 b)
{
    return __double2bfloat16(double(__bfloat162float(a)) + double(__bfloat162float(b)));
}
inline __nv_bfloat16 __hsub(__nv_bfloat16 a, __nv_bfloat16 b)
{
    return __double2bfloat16(double(__bfloat162float(a)) - double(__bfloat162float(b)));
}
inline __nv_bfloat16 __hmul(__nv_bfloat16 a, __nv_bfloat16 b)
{
    return __double2bfloat16(double(__bfloat162float(a)) * double(__bfloat162float(b)));
}
inline __nv_bfloat16 __hdiv(__nv_bfloat16 a, __nv_bfloat16 b)
{
    return __double2bfloat16(double(__bfloat162float(a)) / double(__bfloat162float(b)));
}
inline __nv_bfloat16 __hfma(__nv_bfloat16 a, __nv_bfloat16 b, __nv_bfloat16 c)
{
    return __double2bfloat16(std::fma(double(__bfloat162float(a)), double(__bfloat162float(b)), double(__bfloat162float(c))));
}
inline __nv_bfloat16 __hneg(__nv_bfloat16 a)
{
    return __ushort_as_bfloat16(static_cast<unsigned short>(__bfloat16_as_ushort(a) ^ 0x8000u));
}
inline __nv_bfloat16 __habs(__nv_bfloat16 a)
{
    return __ushort_as_bfloat16(static_cast<unsigned short>(__bfloat16_as_ushort(a) & 0x7fffu));
}
inline __nv_bfloat16 __hmax(__nv_bfloat16 a, __nv_bfloat16 b)
{
    return __float2bfloat16(std::fmax(__bfloat162float(a), __bfloat162float(b)));
}
inline __nv_bfloat16 __hmin(__nv_bfloat16 a, __nv_bfloat16 b)
{
    return __float2bfloat16(std::fmin(__bfloat162float(a), __bfloat162float(b)));
}
inline bool __hisnan(__nv_bfloat16 a) { return (__bfloat16_as_ushort(a) & 0x7fffu) > 0x7f80u; }

inline __nv_bfloat162 __hadd2(__nv_bfloat162 a, __nv_bfloat162 b) { return __nv_bfloat162(__hadd(a.x, b.x), __hadd(a.y, b.y)); }
inline __nv_bfloat162 __hsub2(__nv_bfloat162 a, __nv_bfloat162 b) { return __nv_bfloat162(__hsub(a.x, b.x), __hsub(a.y, b.y)); }
inline __nv_bfloat162 __hmul2(__nv_bfloat162 a, __nv_bfloat162 b) { return __nv_bfloat162(__hmul(a.x, b.x), __hmul(a.y, b.y)); }
inline __nv_bfloat162 __h2div(__nv_bfloat162 a, __nv_bfloat162 b) { return __nv_bfloat162(__hdiv(a.x, b.x), __hdiv(a.y, b.y)); }
inline __nv_bfloat162 __hfma2(__nv_bfloat162 a, __nv_bfloat162 b, __nv_bfloat162 c)
{
    return __nv_bfloat162(__hfma(a.x, b.x, c.x), __hfma(a.y, b.y, c.y));
}
inline __nv_bfloat162 __hmax2(__nv_bfloat162 a, __nv_bfloat162 b) { return __nv_bfloat162(__hmax(a.x, b.x), __hmax(a.y, b.y)); }
inline __nv_bfloat162 __hmin2(__nv_bfloat162 a, __nv_bfloat162 b) { return __nv_bfloat162(__hmin(a.x, b.x), __hmin(a.y, b.y)); }

inline __nv_bfloat16 operator+(const __nv_bfloat16 &a, const __nv_bfloat16 &b) { return __hadd(a, b); }
inline __nv_bfloat16 operator-(const __nv_bfloat16 &a, const __nv_bfloat16 &b) { return __hsub(a, b); }
inline __nv_bfloat16 operator*(const __nv_bfloat16 &a, const __nv_bfloat16 &b) { return __hmul(a, b); }
inline __nv_bfloat16 operator/(const __nv_bfloat16 &a, const __nv_bfloat16 &b) { return __hdiv(a, b); }
inline __nv_bfloat16 &operator+=(__nv_bfloat16 &a, const __nv_bfloat16 &b) { return a = __hadd(a, b); }
inline __nv_bfloat16 &operator-=(__nv_bfloat16 &a, const __nv_bfloat16 &b) { return a = __hsub(a, b); }
inline __nv_bfloat16 &operator*=(__nv_bfloat16 &a, const __nv_bfloat16 &b) { return a = __hmul(a, b); }
inline __nv_bfloat16 &operator/=(__nv_bfloat16 &a, const __nv_bfloat16 &b) { return a = __hdiv(a, b); }
inline __nv_bfloat16 operator-(const __nv_bfloat16 &a) { return __hneg(a); }
inline bool operator==(const __nv_bfloat16 &a, const __nv_bfloat16 &b) { return __bfloat162float(a) == __bfloat162float(b); }
inline bool operator!=(const __nv_bfloat16 &a, const __nv_bfloat16 &b) { return __bfloat162float(a) != __bfloat162float(b); }
inline bool operator<(const __nv_bfloat16 &a, const __nv_bfloat16 &b) { return __bfloat162float(a) < __bfloat162float(b); }
inline bool operator<=(const __nv_bfloat16 &a, const __nv_bfloat16 &b) { return __bfloat162float(a) <= __bfloat162float(b); }
inline bool operator>(const __nv_bfloat16 &a, const __nv_bfloat16 &b) { return __bfloat162float(a) > __bfloat162float(b); }
inline bool operator>=(const __nv_bfloat16 &a, const __nv_bfloat16 &b) { return __bfloat162float(a) >= __bfloat162float(b); }

inline __nv_bfloat162 operator+(const __nv_bfloat162 &a, const __nv_bfloat162 &b) { return __hadd2(a, b); }
inline __nv_bfloat162 operator-(const __nv_bfloat162 &a, const __nv_bfloat162 &b) { return __hsub2(a, b); }
inline __nv_bfloat162 operator*(const __nv_bfloat162 &a, const __nv_bfloat162 &b) { return __hmul2(a, b); }
inline __nv_bfloat162 &operator+=(__nv_bfloat162 &a, const __nv_bfloat162 &b) { return a = __hadd2(a, b); }
inline __nv_bfloat162 &operator*=(__nv_bfloat162 &a, const __nv_bfloat162 &b) { return a = __hmul2(a, b); }

/* ---- warp exchanges, cache-hinted accesses, atomics ---- */

EKV_EMU_SHUFFLES(__nv_bfloat16)
EKV_EMU_SHUFFLES(__nv_bfloat162)

namespace ekv_emu {
EKV_EMU_CACHE_HINT_TYPE(__nv_bfloat16)
EKV_EMU_CACHE_HINT_TYPE(__nv_bfloat162)
} /* namespace ekv_emu */

inline __nv_bfloat16 atomicAdd(__nv_bfloat16 *address, __nv_bfloat16 value)
{
    return ekv_emu::atomic_update(address, [value](__nv_bfloat16 old) { return __hadd(old, value); });
}
inline __nv_bfloat162 atomicAdd(__nv_bfloat162 *address, __nv_bfloat162 value)
{
    return ekv_emu::atomic_update(address, [value](__nv_bfloat162 old) { return __hadd2(old, value); });
}

#endif /* EKV_EMU_CUDA_BF16_H */
