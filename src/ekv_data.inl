/* >>quant: storage dtypes, bit-exact conversions, row quantization ========== */

/* Every conversion here is the reference the GPU kernels are tested against bit for bit:
   f32 -> f16   == __float2half_rn      (RNE, subnormals, overflow -> inf, NaN -> 0x7fff)
   f32 -> bf16  == __float2bfloat16_rn  (RNE, subnormals, NaN -> 0x7fff)
   f32 -> e4m3  == __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3)
                   (RNE, subnormals, |x| beyond 448 and +-inf -> +-448, NaN -> 0x7f)
   They work on the bit patterns with integer arithmetic only, so they give the same
   answer under any floating-point environment (rounding mode, flush-to-zero, x87). */

#include <float.h>
#include <limits.h>

static uint32_t ekv__f32_bits(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static float ekv__bits_f32(uint32_t u)
{
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* m / 2^shift rounded to nearest, ties to even (shift >= 1). */
static uint32_t ekv__shift_round_even(uint32_t m, int shift)
{
    uint64_t quotient, remainder, half;
    if (shift > 32) return 0; /* m < 2^32 < half: rounds to zero */
    quotient = (uint64_t)m >> shift;
    remainder = (uint64_t)m & ((1ull << shift) - 1u);
    half = 1ull << (shift - 1);
    if (remainder > half || (remainder == half && (quotient & 1u))) quotient++;
    return (uint32_t)quotient;
}

EKV_DEF uint16_t ekv_f32_to_f16(float x)
{
    uint32_t u = ekv__f32_bits(x);
    uint32_t sign = (u >> 16) & 0x8000u, magnitude = u & 0x7fffffffu;
    int exponent;
    if (magnitude > 0x7f800000u) return 0x7fff;
    if (magnitude == 0x7f800000u) return (uint16_t)(sign | 0x7c00u);
    exponent = (int)(magnitude >> 23) - 127;
    if (exponent > 15) return (uint16_t)(sign | 0x7c00u);
    if (exponent >= -14) {
        /* normal in f16: keep 10 of the 23 mantissa bits; a carry out of the mantissa
           correctly bumps the exponent, and out of 0x7bff gives inf (65520 -> inf) */
        uint32_t mantissa = magnitude & 0x7fffffu;
        uint32_t result = ((uint32_t)(exponent + 15) << 10) | (mantissa >> 13);
        uint32_t remainder = mantissa & 0x1fffu;
        if (remainder > 0x1000u || (remainder == 0x1000u && (result & 1u))) result++;
        return (uint16_t)(sign | result);
    }
    if (magnitude < 0x00800000u) return (uint16_t)sign; /* f32 zero or subnormal */
    /* f16 subnormal: count units of 2^-24; value = m * 2^(exponent - 23) */
    return (uint16_t)(sign | ekv__shift_round_even((magnitude & 0x7fffffu) | 0x800000u,
                                                   -exponent - 1));
}

/* Decoding is on the CPU kernel's hot path, hence the branch-light form: moving the
   exponent and fraction into place and adding the bias difference (127 - 15) << 23 is
   right for every normal value; inf/NaN need the bias added twice (exponent 31 -> 255);
   zero and subnormals are m * 2^-24, an exact float product. */
EKV_DEF float ekv_f16_to_f32(uint16_t h)
{
    uint32_t magnitude = (uint32_t)h & 0x7fffu;
    uint32_t bits = (magnitude << 13) + 0x38000000u;
    if (magnitude >= 0x7c00u) bits += 0x38000000u;
    else if (magnitude < 0x0400u) bits = ekv__f32_bits((float)magnitude * 5.9604644775390625e-08f);
    return ekv__bits_f32(bits | (((uint32_t)h & 0x8000u) << 16));
}

EKV_DEF uint16_t ekv_f32_to_bf16(float x)
{
    uint32_t u = ekv__f32_bits(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fff;
    /* adding 0x7fff plus the lowest kept bit rounds half to even; the carry may run into
       the exponent, which is exactly right (max float -> inf) */
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

EKV_DEF float ekv_bf16_to_f32(uint16_t h)
{
    return ekv__bits_f32((uint32_t)h << 16);
}

EKV_DEF uint8_t ekv_f32_to_fp8(float x)
{
    uint32_t u = ekv__f32_bits(x);
    uint32_t sign = (u >> 24) & 0x80u, magnitude = u & 0x7fffffffu;
    int exponent;
    if (magnitude > 0x7f800000u) return 0x7f;
    exponent = (int)(magnitude >> 23) - 127;
    if (exponent > 8) return (uint8_t)(sign | 0x7eu); /* includes inf: SATFINITE */
    if (exponent >= -6) {
        uint32_t mantissa = magnitude & 0x7fffffu;
        uint32_t result = ((uint32_t)(exponent + 7) << 3) | (mantissa >> 20);
        uint32_t remainder = mantissa & 0xfffffu;
        if (remainder > 0x80000u || (remainder == 0x80000u && (result & 1u))) result++;
        if (result > 0x7eu) result = 0x7eu; /* 0x7f is NaN in e4m3: saturate to 448 */
        return (uint8_t)(sign | result);
    }
    if (magnitude < 0x00800000u) return (uint8_t)sign;
    /* e4m3 subnormal: count units of 2^-9; value = m * 2^(exponent - 23) */
    return (uint8_t)(sign | ekv__shift_round_even((magnitude & 0x7fffffu) | 0x800000u,
                                                  14 - exponent));
}

/* The same scheme as ekv_f16_to_f32: bias difference (127 - 7) << 23 for normal values,
   m * 2^-9 (exact) for zero and subnormals, 0x7f/0xff is NaN. */
EKV_DEF float ekv_fp8_to_f32(uint8_t v)
{
    uint32_t magnitude = (uint32_t)v & 0x7fu;
    uint32_t bits = (magnitude << 20) + 0x3c000000u;
    if (magnitude == 0x7fu) bits = 0x7fc00000u;
    else if (magnitude < 8u) bits = ekv__f32_bits((float)magnitude * 0.001953125f);
    return ekv__bits_f32(bits | (((uint32_t)v & 0x80u) << 24));
}

EKV_DEF size_t ekv_dtype_row_bytes(ekv_dtype dtype, int head_dim)
{
    size_t d = head_dim > 0 ? (size_t)head_dim : 0;
    switch (dtype) {
    case EKV_DTYPE_F32: return 4 * d;
    case EKV_DTYPE_F16:
    case EKV_DTYPE_BF16: return 2 * d;
    case EKV_DTYPE_INT8:
    case EKV_DTYPE_FP8: return d;
    case EKV_DTYPE_INT4: return (d + 1) / 2;
    default: return 0;
    }
}

static size_t ekv__int4_groups(int head_dim)
{
    return head_dim > 0 ? ((size_t)head_dim + EKV_INT4_GROUP - 1) / EKV_INT4_GROUP : 0;
}

EKV_DEF size_t ekv_dtype_row_scale_bytes(ekv_dtype dtype, int head_dim)
{
    if (dtype == EKV_DTYPE_INT8) return 4;
    if (dtype == EKV_DTYPE_INT4) return 4 * ekv__int4_groups(head_dim);
    return 0;
}

/* Round to nearest, ties to even, independent of the rounding mode (CUDA: rintf or
   __float2int_rn). For |v| < 2^23 the floor fits an int32 and v - floor(v) is exact;
   larger magnitudes are already integers. */
static float ekv__round_even(float v)
{
    int32_t i;
    float d;
    if (!(fabsf(v) < 8388608.0f)) return v;
    i = (int32_t)v;
    if ((float)i > v) i--;
    d = v - (float)i;
    if (d > 0.5f || (d == 0.5f && (i & 1))) i++;
    return (float)i;
}

/* Rounded quotient clamped to [lo, hi]; NaN gives 0 (as __float2int_rn does). */
static int ekv__quantize_value(float quotient, int lo, int hi)
{
    float r = ekv__round_even(quotient);
    if (r != r) return 0;
    if (r < (float)lo) return lo;
    if (r > (float)hi) return hi;
    return (int)r;
}

/* The exact float operation sequence of each dtype, for kernels that must match it:

   int8 (row of D):  amax  = max_i fabsf(x[i])               (float compares)
                     scale = amax / 127.0f                    (one IEEE float division)
                     q[i]  = scale == 0 ? 0
                           : clamp(rint(x[i] / scale), -127, 127)   (float division, RNE)
                     stored: int8 q[i], f32 scale
                     x'[i] = (float)q[i] * scale

   int4 (per group of 32 along D, the last group may be partial):
                     mn, mx = min_i x[i], max_i x[i]          (float compares)
                     scale_h = f16(   (mx - mn) / 15.0f   )   (float sub, float div, RNE)
                     zero_h  = f16(mn)
                     scale, zero = f32(scale_h), f32(zero_h)   (exact)
                     q[i] = scale == 0 ? 0
                          : clamp(rint((x[i] - zero) / scale), 0, 15)  (float sub, div)
                     stored: byte i/2 holds q[i] in its low nibble for even i, high nibble
                     for odd i; per group the f16 pair (scale_h, zero_h)
                     x'[i] = (float)q[i] * scale + zero       (product rounded, then sum)

   fp8 e4m3:         code[i] = e4m3( head_scale == 0 ? 0 : x[i] / head_scale )
                     x'[i]   = f32(code[i]) * head_scale
                     (head_scale = amax / 448.0f over the (sequence, kv head): see
                     ekv_cache_build)

   f16 / bf16:       RNE conversion of each value, x' exact widening.

   clamp(NaN) is 0. */
EKV_DEF void ekv_quantize_row(ekv_dtype dtype, const float *x, int head_dim, float fp8_scale,
                              void *row, void *row_scale)
{
    int i;
    if (!x || !row || head_dim <= 0) return;
    switch (dtype) {
    case EKV_DTYPE_F32:
        memcpy(row, x, (size_t)head_dim * sizeof(float));
        break;
    case EKV_DTYPE_F16: {
        uint16_t *out = (uint16_t *)row;
        for (i = 0; i < head_dim; i++) out[i] = ekv_f32_to_f16(x[i]);
        break;
    }
    case EKV_DTYPE_BF16: {
        uint16_t *out = (uint16_t *)row;
        for (i = 0; i < head_dim; i++) out[i] = ekv_f32_to_bf16(x[i]);
        break;
    }
    case EKV_DTYPE_INT8: {
        int8_t *out = (int8_t *)row;
        float amax = 0.0f, scale;
        for (i = 0; i < head_dim; i++) {
            float a = fabsf(x[i]);
            if (a > amax) amax = a;
        }
        scale = amax / 127.0f;
        for (i = 0; i < head_dim; i++)
            out[i] = (int8_t)(scale == 0.0f ? 0 : ekv__quantize_value(x[i] / scale, -127, 127));
        if (row_scale) memcpy(row_scale, &scale, sizeof scale);
        break;
    }
    case EKV_DTYPE_INT4: {
        unsigned char *out = (unsigned char *)row;
        uint16_t *pairs = (uint16_t *)row_scale;
        size_t group, groups = ekv__int4_groups(head_dim);
        memset(out, 0, ((size_t)head_dim + 1) / 2);
        for (group = 0; group < groups; group++) {
            int first = (int)group * EKV_INT4_GROUP;
            int last = first + EKV_INT4_GROUP < head_dim ? first + EKV_INT4_GROUP : head_dim;
            float mn = x[first], mx = x[first], scale, zero;
            uint16_t scale_h, zero_h;
            for (i = first + 1; i < last; i++) {
                if (x[i] < mn) mn = x[i];
                if (x[i] > mx) mx = x[i];
            }
            scale_h = ekv_f32_to_f16((mx - mn) / 15.0f);
            zero_h = ekv_f32_to_f16(mn);
            scale = ekv_f16_to_f32(scale_h);
            zero = ekv_f16_to_f32(zero_h);
            for (i = first; i < last; i++) {
                int q = scale == 0.0f ? 0 : ekv__quantize_value((x[i] - zero) / scale, 0, 15);
                out[i / 2] |= (unsigned char)((i & 1) ? q << 4 : q);
            }
            if (pairs) {
                pairs[2 * group] = scale_h;
                pairs[2 * group + 1] = zero_h;
            }
        }
        break;
    }
    case EKV_DTYPE_FP8: {
        uint8_t *out = (uint8_t *)row;
        for (i = 0; i < head_dim; i++)
            out[i] = ekv_f32_to_fp8(fp8_scale == 0.0f ? 0.0f : x[i] / fp8_scale);
        break;
    }
    default:
        break;
    }
}

EKV_DEF void ekv_dequantize_row(ekv_dtype dtype, const void *row, const void *row_scale,
                                int head_dim, float fp8_scale, float *out)
{
    int i;
    if (!row || !out || head_dim <= 0) return;
    switch (dtype) {
    case EKV_DTYPE_F32:
        memcpy(out, row, (size_t)head_dim * sizeof(float));
        break;
    case EKV_DTYPE_F16: {
        const uint16_t *in = (const uint16_t *)row;
        for (i = 0; i < head_dim; i++) out[i] = ekv_f16_to_f32(in[i]);
        break;
    }
    case EKV_DTYPE_BF16: {
        const uint16_t *in = (const uint16_t *)row;
        for (i = 0; i < head_dim; i++) out[i] = ekv_bf16_to_f32(in[i]);
        break;
    }
    case EKV_DTYPE_INT8: {
        const int8_t *in = (const int8_t *)row;
        float scale = 0.0f;
        if (row_scale) memcpy(&scale, row_scale, sizeof scale);
        for (i = 0; i < head_dim; i++) out[i] = (float)in[i] * scale;
        break;
    }
    case EKV_DTYPE_INT4: {
        const unsigned char *in = (const unsigned char *)row;
        const uint16_t *pairs = (const uint16_t *)row_scale;
        int first;
        for (first = 0; first < head_dim; first += EKV_INT4_GROUP) {
            const size_t group = (size_t)first / EKV_INT4_GROUP;
            const int last = first + EKV_INT4_GROUP < head_dim ? first + EKV_INT4_GROUP : head_dim;
            const float scale = pairs ? ekv_f16_to_f32(pairs[2 * group]) : 0.0f;
            const float zero = pairs ? ekv_f16_to_f32(pairs[2 * group + 1]) : 0.0f;
            for (i = first; i < last; i++) {
                int q = (i & 1) ? in[i / 2] >> 4 : in[i / 2] & 15;
                float product = (float)q * scale;
                out[i] = product + zero;
            }
        }
        break;
    }
    case EKV_DTYPE_FP8: {
        const uint8_t *in = (const uint8_t *)row;
        for (i = 0; i < head_dim; i++) out[i] = ekv_fp8_to_f32(in[i]) * fp8_scale;
        break;
    }
    default:
        break;
    }
}

/* >>data: generation, .npy/.npz input and output ============================ */

/* a * b into *out; 0 on overflow */
static int ekv__mul_size(size_t a, size_t b, size_t *out)
{
    if (b != 0 && a > (size_t)-1 / b) return 0;
    *out = a * b;
    return 1;
}

EKV_DEF size_t ekv_data_kv_index(const ekv_data *data, int b, int h, int t)
{
    return (((size_t)b * (size_t)data->kv_heads + (size_t)h) * (size_t)data->capacity +
            (size_t)t) * (size_t)data->head_dim;
}

EKV_DEF void ekv_data_free(ekv_data *data)
{
    if (!data) return;
    ekv__free(data->lengths);
    ekv__free(data->q);
    ekv__free(data->k);
    ekv__free(data->v);
    ekv__free(data->q_observe);
    memset(data, 0, sizeof *data);
}

/* Allocates the arrays of `data` for its dimensions (already set). */
static ekv_result ekv__data_allocate(ekv_data *data)
{
    size_t q_count, kv_count, observe_count;
    size_t bh = (size_t)data->batch * (size_t)data->heads;
    if (!ekv__mul_size(bh, (size_t)data->head_dim, &q_count) ||
        !ekv__mul_size((size_t)data->batch * (size_t)data->kv_heads, (size_t)data->capacity,
                       &kv_count) ||
        !ekv__mul_size(kv_count, (size_t)data->head_dim, &kv_count) ||
        !ekv__mul_size(q_count, (size_t)data->observe, &observe_count))
        return ekv_set_error(EKV_ERR_OUT_OF_MEMORY,
                             "data of batch %d, heads %d, kv_heads %d, seq_len %d, head_dim %d "
                             "is too large to address",
                             data->batch, data->heads, data->kv_heads, data->capacity,
                             data->head_dim);
    data->lengths = (int *)ekv__alloc((size_t)data->batch, sizeof(int));
    data->q = (float *)ekv__alloc(q_count, sizeof(float));
    data->k = (float *)ekv__alloc(kv_count, sizeof(float));
    data->v = (float *)ekv__alloc(kv_count, sizeof(float));
    if (data->observe > 0) data->q_observe = (float *)ekv__alloc(observe_count, sizeof(float));
    if (!data->lengths || !data->q || !data->k || !data->v ||
        (data->observe > 0 && !data->q_observe)) {
        ekv_data_free(data);
        return EKV_ERR_OUT_OF_MEMORY;
    }
    return EKV_SUCCESS;
}

/* The structured generator. Per (sequence, kv head) g:
     u_g         a random unit "topic" direction shared by the group's query heads;
     q_h         = QUERY_NORM * sqrt(D) * (c * u_g + sqrt(1 - c^2) * w_h), w_h a random
                   unit direction of head h (GQA: the heads of a group agree on u_g);
     k_t         = n_t + bonus_t * a * u_g, with n_t a unit-variance AR(1) process along
                   the sequence (neighbours correlated, so pooling them is meaningful)
                   and a = 1 / (QUERY_NORM * c), so that with scale 1/sqrt(D) the logit of
                   token t is about bonus_t + N(0, QUERY_NORM^2);
     bonus_t     sinks (the first tokens), recency (decaying over the newest tokens) and
                   heavy hitters (a few per cent of the tokens, random positions);
     v_t         an independent unit-variance AR(1) process plus a mean vector of the
                   (sequence, kv head) with components N(0, VALUE_MEAN^2): real values
                   share a common component, without which long-context outputs are
                   pure noise and every compression error looks catastrophic;
     q_observe   noisy copies of q_h (correlation OBSERVE_CORRELATION), so topk's ranking
                   is informative but not perfect.
   The constants were tuned with ekv_attention_profile (see tests/test_reference.c):
   top-5% mass >= 0.5 from 256 to 128K tokens, and no policy is exact at C = 2. */
#define EKV__GEN_QUERY_NORM 1.0
#define EKV__GEN_TOPIC_WEIGHT 0.8
#define EKV__GEN_AR_COEFFICIENT 0.9
#define EKV__GEN_SINKS 4
#define EKV__GEN_SINK_BONUS 6.0
#define EKV__GEN_RECENT_BONUS 3.0
#define EKV__GEN_RECENT_DECAY 12.0
#define EKV__GEN_RECENT_SPAN 64
#define EKV__GEN_HEAVY_FRACTION 0.02
#define EKV__GEN_HEAVY_BONUS_MIN 3.0
#define EKV__GEN_HEAVY_BONUS_MAX 5.5
#define EKV__GEN_OBSERVE_CORRELATION 0.8
#define EKV__GEN_VALUE_MEAN 0.5

/* Normal variates for bulk data: Marsaglia's polar method uses both values of each pair
   and needs no trigonometry, which makes generation about twice as fast as one
   Box-Muller value per call. */
typedef struct ekv__normals {
    ekv_rng *rng;
    double spare;
    int has_spare;
} ekv__normals;

static double ekv__normal(ekv__normals *n)
{
    double u, v, s, f;
    if (n->has_spare) {
        n->has_spare = 0;
        return n->spare;
    }
    do {
        u = 2.0 * ekv_rng_uniform(n->rng) - 1.0;
        v = 2.0 * ekv_rng_uniform(n->rng) - 1.0;
        s = u * u + v * v;
    } while (s >= 1.0 || s == 0.0);
    f = sqrt(-2.0 * log(s) / s);
    n->spare = v * f;
    n->has_spare = 1;
    return u * f;
}

/* A random unit vector. */
static void ekv__random_unit(ekv__normals *rng, double *out, int n)
{
    double norm = 0.0;
    int i;
    do {
        norm = 0.0;
        for (i = 0; i < n; i++) {
            out[i] = ekv__normal(rng);
            norm += out[i] * out[i];
        }
    } while (norm == 0.0);
    norm = 1.0 / sqrt(norm);
    for (i = 0; i < n; i++) out[i] *= norm;
}

/* Fills rows [0, count) of an AR(1) process with unit marginal variance. */
static void ekv__ar_rows(ekv__normals *rng, float *rows, int count, int dim)
{
    const double phi = EKV__GEN_AR_COEFFICIENT, innovation = sqrt(1.0 - phi * phi);
    int t, d;
    for (d = 0; d < dim; d++) rows[d] = (float)ekv__normal(rng);
    for (t = 1; t < count; t++) {
        const float *prev = rows + (size_t)(t - 1) * (size_t)dim;
        float *row = rows + (size_t)t * (size_t)dim;
        for (d = 0; d < dim; d++)
            row[d] = (float)(phi * prev[d] + innovation * ekv__normal(rng));
    }
}

static ekv_result ekv__generate_structured(ekv__normals *rng, ekv_data *data)
{
    const int D = data->head_dim, group = data->heads / data->kv_heads;
    const double c = EKV__GEN_TOPIC_WEIGHT, s = sqrt(1.0 - c * c);
    const double qnorm = EKV__GEN_QUERY_NORM * sqrt((double)D);
    const double key_gain = 1.0 / (EKV__GEN_QUERY_NORM * c);
    const double rho = EKV__GEN_OBSERVE_CORRELATION, rho_noise = sqrt(1.0 - rho * rho);
    double *topic = (double *)ekv__alloc((size_t)D, sizeof(double));
    double *own = (double *)ekv__alloc((size_t)D, sizeof(double));
    double *bonus = (double *)ekv__alloc((size_t)data->capacity, sizeof(double));
    int b, g, hh, t, d, o;
    if (!topic || !own || !bonus) {
        ekv__free(topic);
        ekv__free(own);
        ekv__free(bonus);
        return EKV_ERR_OUT_OF_MEMORY;
    }
    for (b = 0; b < data->batch; b++) {
        const int length = data->lengths[b];
        for (g = 0; g < data->kv_heads; g++) {
            float *k = data->k + ekv_data_kv_index(data, b, g, 0);
            float *v = data->v + ekv_data_kv_index(data, b, g, 0);
            ekv__random_unit(rng, topic, D);
            for (hh = 0; hh < group; hh++) {
                const int h = g * group + hh;
                float *q = data->q + ((size_t)b * (size_t)data->heads + (size_t)h) * (size_t)D;
                ekv__random_unit(rng, own, D);
                for (d = 0; d < D; d++) q[d] = (float)(qnorm * (c * topic[d] + s * own[d]));
                for (o = 0; o < data->observe; o++) {
                    float *qo = data->q_observe +
                                (((size_t)b * (size_t)data->heads + (size_t)h) *
                                     (size_t)data->observe + (size_t)o) * (size_t)D;
                    for (d = 0; d < D; d++)
                        qo[d] = (float)(rho * q[d] + rho_noise * EKV__GEN_QUERY_NORM *
                                                         ekv__normal(rng));
                }
            }
            for (t = 0; t < data->capacity; t++) {
                double extra = 0.0;
                if (t < length) {
                    int distance = length - 1 - t;
                    if (t < EKV__GEN_SINKS) extra = EKV__GEN_SINK_BONUS;
                    else if (distance < EKV__GEN_RECENT_SPAN)
                        extra = EKV__GEN_RECENT_BONUS *
                                exp(-(double)distance / EKV__GEN_RECENT_DECAY);
                    if (ekv_rng_uniform(rng->rng) < EKV__GEN_HEAVY_FRACTION) {
                        double heavy = EKV__GEN_HEAVY_BONUS_MIN +
                                       (EKV__GEN_HEAVY_BONUS_MAX - EKV__GEN_HEAVY_BONUS_MIN) *
                                           ekv_rng_uniform(rng->rng);
                        if (heavy > extra) extra = heavy;
                    }
                }
                bonus[t] = extra;
            }
            ekv__ar_rows(rng, k, data->capacity, D);
            ekv__ar_rows(rng, v, data->capacity, D);
            for (d = 0; d < D; d++) own[d] = EKV__GEN_VALUE_MEAN * ekv__normal(rng);
            for (t = 0; t < data->capacity; t++)
                for (d = 0; d < D; d++) v[(size_t)t * (size_t)D + d] += (float)own[d];
            for (t = 0; t < data->capacity; t++) {
                float *row = k + (size_t)t * (size_t)D;
                if (bonus[t] == 0.0) continue;
                for (d = 0; d < D; d++)
                    row[d] = (float)(row[d] + bonus[t] * key_gain * topic[d]);
            }
        }
    }
    ekv__free(topic);
    ekv__free(own);
    ekv__free(bonus);
    return EKV_SUCCESS;
}

static void ekv__fill_normal(ekv__normals *rng, float *values, size_t count)
{
    size_t i;
    for (i = 0; i < count; i++) values[i] = (float)ekv__normal(rng);
}

EKV_DEF ekv_result ekv_data_generate(const ekv_data_desc *desc, ekv_data *data)
{
    ekv_rng rng;
    ekv__normals normals;
    ekv_result result;
    int b, kv_heads;
    if (!desc || !data) return ekv_set_error(EKV_ERR_INVALID_ARG, "ekv_data_generate: NULL argument");
    memset(data, 0, sizeof *data);
    if (desc->kind != EKV_DATA_STRUCTURED && desc->kind != EKV_DATA_RANDOM)
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "ekv_data_generate: kind must be structured or random "
                             "(files are read by ekv_data_load)");
    if (desc->batch < 1)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "data: batch must be >= 1, got %d", desc->batch);
    if (desc->heads < 1)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "data: heads must be >= 1, got %d", desc->heads);
    kv_heads = desc->kv_heads == 0 ? desc->heads : desc->kv_heads;
    if (kv_heads < 1 || desc->heads % kv_heads != 0)
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "data: kv_heads must divide heads (%d), got %d (0 means heads)",
                             desc->heads, desc->kv_heads);
    if (desc->head_dim < 1)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "data: head_dim must be >= 1, got %d",
                             desc->head_dim);
    if (desc->seq_len < 1)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "data: seq_len must be >= 1, got %d",
                             desc->seq_len);
    if (desc->observe < 0)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "data: observe must be >= 0, got %d",
                             desc->observe);
    if (desc->lengths)
        for (b = 0; b < desc->batch; b++)
            if (desc->lengths[b] < 1 || desc->lengths[b] > desc->seq_len)
                return ekv_set_error(EKV_ERR_INVALID_ARG,
                                     "data: lengths[%d] = %d is outside [1, seq_len = %d]", b,
                                     desc->lengths[b], desc->seq_len);
    data->batch = desc->batch;
    data->heads = desc->heads;
    data->kv_heads = kv_heads;
    data->head_dim = desc->head_dim;
    data->capacity = desc->seq_len;
    data->observe = desc->observe;
    result = ekv__data_allocate(data);
    if (result != EKV_SUCCESS) return result;
    for (b = 0; b < data->batch; b++)
        data->lengths[b] = desc->lengths ? desc->lengths[b] : desc->seq_len;
    ekv_rng_seed(&rng, desc->seed);
    normals.rng = &rng;
    normals.spare = 0.0;
    normals.has_spare = 0;
    if (desc->kind == EKV_DATA_RANDOM) {
        size_t q_count = (size_t)data->batch * (size_t)data->heads * (size_t)data->head_dim;
        size_t kv_count = ekv_data_kv_index(data, data->batch, 0, 0);
        ekv__fill_normal(&normals, data->q, q_count);
        ekv__fill_normal(&normals, data->k, kv_count);
        ekv__fill_normal(&normals, data->v, kv_count);
        if (data->q_observe) ekv__fill_normal(&normals, data->q_observe, q_count * (size_t)data->observe);
        return EKV_SUCCESS;
    }
    result = ekv__generate_structured(&normals, data);
    if (result != EKV_SUCCESS) ekv_data_free(data);
    return result;
}

/* .npy ---------------------------------------------------------------------- */

#define EKV__NPY_MAX_DIMS 8

typedef struct ekv__npy_info {
    int itemsize; /* 2: <f2, 4: <f4, 8: <f8 */
    int ndim;
    int64_t shape[EKV__NPY_MAX_DIMS];
    size_t count;
    size_t data_offset;
} ekv__npy_info;

static uint32_t ekv__load_le(const unsigned char *p, int bytes)
{
    uint32_t value = 0;
    int i;
    for (i = bytes - 1; i >= 0; i--) value = (value << 8) | p[i];
    return value;
}

static uint64_t ekv__load_le64(const unsigned char *p)
{
    return (uint64_t)ekv__load_le(p, 4) | ((uint64_t)ekv__load_le(p + 4, 4) << 32);
}

static void ekv__npy_skip_space(const char **p, const char *end)
{
    while (*p < end && (**p == ' ' || **p == '\t' || **p == '\n' || **p == '\r')) (*p)++;
}

static int ekv__npy_accept(const char **p, const char *end, char c)
{
    ekv__npy_skip_space(p, end);
    if (*p < end && **p == c) {
        (*p)++;
        return 1;
    }
    return 0;
}

/* A Python string literal without escapes: '...' or "...". */
static int ekv__npy_string(const char **p, const char *end, const char **text, size_t *length)
{
    char quote;
    const char *start;
    ekv__npy_skip_space(p, end);
    if (*p >= end || (**p != '\'' && **p != '"')) return 0;
    quote = **p;
    start = ++(*p);
    while (*p < end && **p != quote) {
        if (**p == '\\' || **p == '\n') return 0;
        (*p)++;
    }
    if (*p >= end) return 0;
    *text = start;
    *length = (size_t)(*p - start);
    (*p)++;
    return 1;
}

static int ekv__npy_word(const char **p, const char *end, const char *word)
{
    size_t n = strlen(word);
    ekv__npy_skip_space(p, end);
    if ((size_t)(end - *p) >= n && memcmp(*p, word, n) == 0) {
        *p += n;
        return 1;
    }
    return 0;
}

/* The shape tuple: "()", "(3,)", "(3, 4)", "(3, 4,)"; Python 2 wrote "3L". */
static ekv_result ekv__npy_shape(const char **p, const char *end, const char *name,
                                 ekv__npy_info *info)
{
    info->ndim = 0;
    if (!ekv__npy_accept(p, end, '('))
        return ekv_set_error(EKV_ERR_FORMAT, "%s: 'shape' is not a tuple", name);
    for (;;) {
        int64_t value = 0;
        int negative = 0, digits = 0;
        if (ekv__npy_accept(p, end, ')')) return EKV_SUCCESS;
        ekv__npy_skip_space(p, end);
        if (*p < end && **p == '-') {
            negative = 1;
            (*p)++;
        }
        while (*p < end && **p >= '0' && **p <= '9') {
            int digit = **p - '0';
            if (value > (INT64_MAX - digit) / 10)
                return ekv_set_error(EKV_ERR_FORMAT, "%s: dimension %d of 'shape' overflows",
                                     name, info->ndim);
            value = value * 10 + digit;
            digits++;
            (*p)++;
        }
        if (!digits)
            return ekv_set_error(EKV_ERR_FORMAT, "%s: 'shape' holds something other than integers",
                                 name);
        if (*p < end && **p == 'L') (*p)++;
        if (negative && value != 0)
            return ekv_set_error(EKV_ERR_FORMAT, "%s: negative dimension -%lld in 'shape'", name,
                                 (long long)value);
        if (info->ndim == EKV__NPY_MAX_DIMS)
            return ekv_set_error(EKV_ERR_UNSUPPORTED,
                                 "%s: 'shape' has more than %d dimensions", name,
                                 EKV__NPY_MAX_DIMS);
        info->shape[info->ndim++] = value;
        if (ekv__npy_accept(p, end, ',')) continue;
        if (ekv__npy_accept(p, end, ')')) {
            if (info->ndim == 1)
                return ekv_set_error(EKV_ERR_FORMAT, "%s: 'shape' (n) is not a tuple; "
                                     "expected (n,)", name);
            return EKV_SUCCESS;
        }
        return ekv_set_error(EKV_ERR_FORMAT, "%s: 'shape' tuple is malformed", name);
    }
}

/* Parses the magic, the version, the header dictionary, and checks that the data that
   follows has exactly the size the shape and dtype need. */
static ekv_result ekv__npy_header(const unsigned char *bytes, size_t size, const char *name,
                                  ekv__npy_info *info)
{
    static const unsigned char magic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
    size_t header_start, header_length, needed, available;
    const char *p, *end;
    int have_descr = 0, have_order = 0, have_shape = 0, i;
    memset(info, 0, sizeof *info);
    if (size < 10 || memcmp(bytes, magic, 6) != 0) {
        if (size < 6 && memcmp(bytes, magic, size) == 0)
            return ekv_set_error(EKV_ERR_FORMAT, "%s: truncated .npy: %zu bytes, not even the "
                                 "magic string", name, size);
        if (size >= 6 && memcmp(bytes, magic, 6) == 0)
            return ekv_set_error(EKV_ERR_FORMAT, "%s: truncated .npy header (%zu bytes)", name,
                                 size);
        return ekv_set_error(EKV_ERR_FORMAT, "%s: not a .npy file (bad magic; expected "
                             "\\x93NUMPY)", name);
    }
    if ((bytes[6] != 1 && bytes[6] != 2 && bytes[6] != 3) || bytes[7] != 0)
        return ekv_set_error(EKV_ERR_UNSUPPORTED,
                             "%s: .npy format version %d.%d is not supported (1.0, 2.0, 3.0)",
                             name, bytes[6], bytes[7]);
    if (bytes[6] == 1) {
        header_start = 10;
        header_length = ekv__load_le(bytes + 8, 2);
    } else {
        if (size < 12)
            return ekv_set_error(EKV_ERR_FORMAT, "%s: truncated .npy header (%zu bytes)", name,
                                 size);
        header_start = 12;
        header_length = ekv__load_le(bytes + 8, 4);
    }
    if (header_length > size - header_start)
        return ekv_set_error(EKV_ERR_FORMAT,
                             "%s: header length %zu runs past the end of the file (%zu bytes)",
                             name, header_length, size);
    p = (const char *)bytes + header_start;
    end = p + header_length;
    if (!ekv__npy_accept(&p, end, '{'))
        return ekv_set_error(EKV_ERR_FORMAT, "%s: header is not a dictionary", name);
    while (!ekv__npy_accept(&p, end, '}')) {
        const char *key;
        size_t key_length;
        if (!ekv__npy_string(&p, end, &key, &key_length) || !ekv__npy_accept(&p, end, ':'))
            return ekv_set_error(EKV_ERR_FORMAT, "%s: malformed header dictionary", name);
        if (key_length == 5 && memcmp(key, "descr", 5) == 0) {
            const char *text;
            size_t length;
            if (!ekv__npy_string(&p, end, &text, &length))
                return ekv_set_error(EKV_ERR_UNSUPPORTED,
                                     "%s: 'descr' is not a simple dtype string (structured "
                                     "arrays are not supported)", name);
            if (length == 3 && memcmp(text, "<f4", 3) == 0) info->itemsize = 4;
            else if (length == 3 && memcmp(text, "<f2", 3) == 0) info->itemsize = 2;
            else if (length == 3 && memcmp(text, "<f8", 3) == 0) info->itemsize = 8;
            else
                return ekv_set_error(EKV_ERR_UNSUPPORTED,
                                     "%s: dtype '%.*s' is not supported (expected '<f4', "
                                     "'<f2' or '<f8')", name, (int)(length > 32 ? 32 : length),
                                     text);
            have_descr = 1;
        } else if (key_length == 13 && memcmp(key, "fortran_order", 13) == 0) {
            if (ekv__npy_word(&p, end, "True"))
                return ekv_set_error(EKV_ERR_UNSUPPORTED,
                                     "%s: fortran_order is True; only C-order arrays are "
                                     "supported (save np.ascontiguousarray(x))", name);
            if (!ekv__npy_word(&p, end, "False"))
                return ekv_set_error(EKV_ERR_FORMAT, "%s: 'fortran_order' is not True or False",
                                     name);
            have_order = 1;
        } else if (key_length == 5 && memcmp(key, "shape", 5) == 0) {
            ekv_result result = ekv__npy_shape(&p, end, name, info);
            if (result != EKV_SUCCESS) return result;
            have_shape = 1;
        } else {
            return ekv_set_error(EKV_ERR_FORMAT, "%s: unexpected key '%.*s' in the header", name,
                                 (int)(key_length > 32 ? 32 : key_length), key);
        }
        if (!ekv__npy_accept(&p, end, ',')) {
            if (!ekv__npy_accept(&p, end, '}'))
                return ekv_set_error(EKV_ERR_FORMAT, "%s: malformed header dictionary", name);
            break;
        }
    }
    ekv__npy_skip_space(&p, end);
    if (p != end)
        return ekv_set_error(EKV_ERR_FORMAT, "%s: unexpected text after the header dictionary",
                             name);
    if (!have_descr || !have_order || !have_shape)
        return ekv_set_error(EKV_ERR_FORMAT, "%s: header lacks '%s'", name,
                             !have_descr ? "descr" : !have_order ? "fortran_order" : "shape");
    info->count = 1;
    for (i = 0; i < info->ndim; i++) {
        if ((uint64_t)info->shape[i] > (uint64_t)((size_t)-1) ||
            !ekv__mul_size(info->count, (size_t)info->shape[i], &info->count))
            return ekv_set_error(EKV_ERR_FORMAT, "%s: shape is too large to address", name);
    }
    if (!ekv__mul_size(info->count, 8, &needed))
        return ekv_set_error(EKV_ERR_FORMAT, "%s: shape is too large to address", name);
    needed = info->count * (size_t)info->itemsize;
    info->data_offset = header_start + header_length;
    available = size - info->data_offset;
    if (available != needed)
        return ekv_set_error(EKV_ERR_FORMAT,
                             "%s: %s: the shape and dtype need %zu data bytes, the file has %zu",
                             name, available < needed ? "data truncated" : "data size mismatch",
                             needed, available);
    return EKV_SUCCESS;
}

/* Narrowing that is defined for every double: out of range gives +-inf. */
static float ekv__f64_to_f32(double x)
{
    if (x > FLT_MAX) return ekv__bits_f32(0x7f800000u);
    if (x < -FLT_MAX) return ekv__bits_f32(0xff800000u);
    return (float)x;
}

EKV_DEF ekv_result ekv_npy_parse(const unsigned char *bytes, size_t size, const char *name,
                                 ekv_npy_array *out)
{
    ekv__npy_info info;
    ekv_result result;
    const unsigned char *p;
    size_t i;
    int d;
    if (!out) return ekv_set_error(EKV_ERR_INVALID_ARG, "ekv_npy_parse: NULL output");
    memset(out, 0, sizeof *out);
    if (!name) name = "(memory)";
    if (!bytes && size > 0)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "ekv_npy_parse: %s: NULL bytes", name);
    if (!bytes) bytes = (const unsigned char *)"";
    result = ekv__npy_header(bytes, size, name, &info);
    if (result != EKV_SUCCESS) return result;
    out->values = (float *)ekv__alloc(info.count, sizeof(float));
    if (!out->values) return EKV_ERR_OUT_OF_MEMORY;
    out->ndim = info.ndim;
    for (d = 0; d < info.ndim; d++) out->shape[d] = info.shape[d];
    p = bytes + info.data_offset;
    for (i = 0; i < info.count; i++) {
        if (info.itemsize == 4) {
            out->values[i] = ekv__bits_f32(ekv__load_le(p + 4 * i, 4));
        } else if (info.itemsize == 2) {
            out->values[i] = ekv_f16_to_f32((uint16_t)ekv__load_le(p + 2 * i, 2));
        } else {
            uint64_t bits = ekv__load_le64(p + 8 * i);
            double x;
            memcpy(&x, &bits, sizeof x);
            out->values[i] = ekv__f64_to_f32(x);
        }
    }
    return EKV_SUCCESS;
}

EKV_DEF void ekv_npy_free(ekv_npy_array *array)
{
    if (!array) return;
    ekv__free(array->values);
    memset(array, 0, sizeof *array);
}

/* Reads a whole file into memory. */
static ekv_result ekv__read_file(const char *path, unsigned char **bytes, size_t *size)
{
    FILE *file;
    unsigned char *buffer = NULL;
    size_t length = 0, capacity = 0;
    *bytes = NULL;
    *size = 0;
    file = fopen(path, "rb");
    if (!file) return ekv_set_error(EKV_ERR_IO, "%s: cannot open for reading", path);
    for (;;) {
        size_t got;
        if (length == capacity) {
            size_t grown = capacity ? capacity * 2 : 65536;
            unsigned char *next;
            if (grown < capacity) {
                fclose(file);
                ekv__free(buffer);
                return ekv_set_error(EKV_ERR_OUT_OF_MEMORY, "%s: file too large", path);
            }
            next = (unsigned char *)EKV_REALLOC(buffer, grown);
            if (!next) {
                fclose(file);
                ekv__free(buffer);
                return ekv_set_error(EKV_ERR_OUT_OF_MEMORY,
                                     "%s: out of host memory reading the file", path);
            }
            buffer = next;
            capacity = grown;
        }
        got = fread(buffer + length, 1, capacity - length, file);
        length += got;
        if (got == 0) break;
    }
    if (ferror(file)) {
        fclose(file);
        ekv__free(buffer);
        return ekv_set_error(EKV_ERR_IO, "%s: read error (is it a directory?)", path);
    }
    fclose(file);
    *bytes = buffer;
    *size = length;
    return EKV_SUCCESS;
}

EKV_DEF ekv_result ekv_npy_read(const char *path, ekv_npy_array *out)
{
    unsigned char *bytes;
    size_t size;
    ekv_result result;
    if (!out) return ekv_set_error(EKV_ERR_INVALID_ARG, "ekv_npy_read: NULL output");
    memset(out, 0, sizeof *out);
    if (!path) return ekv_set_error(EKV_ERR_INVALID_ARG, "ekv_npy_read: NULL path");
    result = ekv__read_file(path, &bytes, &size);
    if (result != EKV_SUCCESS) return result;
    result = ekv_npy_parse(bytes, size, path, out);
    ekv__free(bytes);
    return result;
}

/* Writes the numpy 1.0 header (padded with spaces to a multiple of 64 bytes, ending in
   '\n', as numpy does) and the little-endian data. */
static ekv_result ekv__npy_write(const char *path, const void *values, int itemsize, int ndim,
                                 const int64_t *shape)
{
    char header[512], dims[256];
    size_t count = 1, used = 0, header_length, total, i;
    unsigned char prefix[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, 0, 0};
    unsigned char chunk[4096];
    FILE *file;
    int d, failed;
    if (!path) return ekv_set_error(EKV_ERR_INVALID_ARG, "ekv_npy_write: NULL path");
    if (ndim < 0 || ndim > EKV__NPY_MAX_DIMS || (ndim > 0 && !shape))
        return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: ndim must be in [0, %d] with a shape, got %d",
                             path, EKV__NPY_MAX_DIMS, ndim);
    dims[0] = '\0';
    for (d = 0; d < ndim; d++) {
        if (shape[d] < 0 || (uint64_t)shape[d] > (uint64_t)((size_t)-1) ||
            !ekv__mul_size(count, (size_t)shape[d], &count))
            return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: bad dimension %lld at index %d", path,
                                 (long long)shape[d], d);
        used += (size_t)snprintf(dims + used, sizeof dims - used, d + 1 < ndim || ndim == 1 ?
                                 "%lld," : "%lld", (long long)shape[d]);
        if (d + 1 < ndim) used += (size_t)snprintf(dims + used, sizeof dims - used, " ");
    }
    if (!ekv__mul_size(count, (size_t)itemsize, &total))
        return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: array too large", path);
    if (count > 0 && !values) return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: NULL values", path);
    header_length = (size_t)snprintf(header, sizeof header,
                                     "{'descr': '<f%d', 'fortran_order': False, 'shape': (%s), }",
                                     itemsize, dims);
    while ((10 + header_length + 1) % 64 != 0) header[header_length++] = ' ';
    header[header_length++] = '\n';
    prefix[8] = (unsigned char)(header_length & 0xff);
    prefix[9] = (unsigned char)(header_length >> 8);
    file = fopen(path, "wb");
    if (!file) return ekv_set_error(EKV_ERR_IO, "%s: cannot open for writing", path);
    failed = fwrite(prefix, 1, 10, file) != 10 ||
             fwrite(header, 1, header_length, file) != header_length;
    for (i = 0; i < count && !failed;) {
        size_t n = 0;
        while (i < count && n + (size_t)itemsize <= sizeof chunk) {
            uint64_t bits;
            int byte;
            if (itemsize == 4) {
                uint32_t b32;
                memcpy(&b32, (const float *)values + i, 4);
                bits = b32;
            } else {
                memcpy(&bits, (const double *)values + i, 8);
            }
            for (byte = 0; byte < itemsize; byte++) chunk[n++] = (unsigned char)(bits >> (8 * byte));
            i++;
        }
        failed = fwrite(chunk, 1, n, file) != n;
    }
    if (fclose(file) != 0) failed = 1;
    if (failed) return ekv_set_error(EKV_ERR_IO, "%s: write error", path);
    return EKV_SUCCESS;
}

EKV_DEF ekv_result ekv_npy_write(const char *path, const float *values, int ndim,
                                 const int64_t *shape)
{
    return ekv__npy_write(path, values, 4, ndim, shape);
}

EKV_DEF ekv_result ekv_npy_write_f64(const char *path, const double *values, int ndim,
                                     const int64_t *shape)
{
    return ekv__npy_write(path, values, 8, ndim, shape);
}

/* .npz ---------------------------------------------------------------------- */

/* A .npz is a zip archive of .npy members. np.savez stores them (method 0) and we read
   those through the central directory, zip64 included (numpy forces zip64 local headers);
   np.savez_compressed deflates them, which would need zlib: refused with a clear error. */

static void ekv__crc32_table(uint32_t table[256])
{
    uint32_t i, bit;
    for (i = 0; i < 256; i++) {
        uint32_t c = i;
        for (bit = 0; bit < 8; bit++) c = (c & 1u) ? 0xedb88320u ^ (c >> 1) : c >> 1;
        table[i] = c;
    }
}

static uint32_t ekv__crc32(const uint32_t table[256], const unsigned char *p, size_t n)
{
    uint32_t crc = 0xffffffffu;
    size_t i;
    for (i = 0; i < n; i++) crc = table[(crc ^ p[i]) & 0xffu] ^ (crc >> 8);
    return crc ^ 0xffffffffu;
}

/* Is [offset, offset + length) inside [0, size)? */
static int ekv__in_bounds(size_t size, uint64_t offset, uint64_t length)
{
    return offset <= size && length <= size - offset;
}

typedef struct ekv__zip {
    const unsigned char *bytes;
    size_t size;
    const char *name;
    uint64_t directory_offset, directory_size, entries;
    uint32_t crc_table[256];
} ekv__zip;

static ekv_result ekv__zip_open(ekv__zip *zip, const unsigned char *bytes, size_t size,
                                const char *name)
{
    size_t position, lowest;
    int found = 0;
    memset(zip, 0, sizeof *zip);
    zip->bytes = bytes;
    zip->size = size;
    zip->name = name;
    if (size < 22) return ekv_set_error(EKV_ERR_FORMAT, "%s: truncated .npz (%zu bytes)", name, size);
    /* the end-of-central-directory record: the last one whose comment ends the file */
    lowest = size - 22 > 65535 ? size - 22 - 65535 : 0;
    for (position = size - 22 + 1; position-- > lowest;) {
        if (ekv__load_le(bytes + position, 4) == 0x06054b50u &&
            position + 22 + ekv__load_le(bytes + position + 20, 2) == size) {
            found = 1;
            break;
        }
    }
    if (!found)
        return ekv_set_error(EKV_ERR_FORMAT, "%s: not a zip archive (no end of central directory)",
                             name);
    zip->entries = ekv__load_le(bytes + position + 10, 2);
    zip->directory_size = ekv__load_le(bytes + position + 12, 4);
    zip->directory_offset = ekv__load_le(bytes + position + 16, 4);
    if (zip->entries == 0xffffu || zip->directory_size == 0xffffffffu ||
        zip->directory_offset == 0xffffffffu) {
        uint64_t record;
        if (position < 20 || ekv__load_le(bytes + position - 20, 4) != 0x07064b50u)
            return ekv_set_error(EKV_ERR_FORMAT, "%s: zip64 end-of-directory locator missing", name);
        record = ekv__load_le64(bytes + position - 20 + 8);
        if (!ekv__in_bounds(size, record, 56) || ekv__load_le(bytes + record, 4) != 0x06064b50u)
            return ekv_set_error(EKV_ERR_FORMAT, "%s: zip64 end-of-directory record is invalid",
                                 name);
        zip->entries = ekv__load_le64(bytes + record + 32);
        zip->directory_size = ekv__load_le64(bytes + record + 40);
        zip->directory_offset = ekv__load_le64(bytes + record + 48);
    }
    if (!ekv__in_bounds(size, zip->directory_offset, zip->directory_size))
        return ekv_set_error(EKV_ERR_FORMAT, "%s: central directory lies outside the file", name);
    ekv__crc32_table(zip->crc_table);
    return EKV_SUCCESS;
}

/* Finds a member by name; *member = NULL when absent. */
static ekv_result ekv__zip_member(const ekv__zip *zip, const char *member_name,
                                  const unsigned char **member, size_t *member_size)
{
    const unsigned char *z = zip->bytes;
    uint64_t offset = zip->directory_offset, end = zip->directory_offset + zip->directory_size;
    uint64_t entry;
    size_t want = strlen(member_name);
    *member = NULL;
    *member_size = 0;
    for (entry = 0; entry < zip->entries; entry++) {
        uint32_t flags, method, crc, name_length, extra_length, comment_length;
        uint64_t compressed, uncompressed, local, data;
        if (offset > end || end - offset < 46 || ekv__load_le(z + offset, 4) != 0x02014b50u)
            return ekv_set_error(EKV_ERR_FORMAT, "%s: central directory entry %llu is invalid",
                                 zip->name, (unsigned long long)entry);
        flags = ekv__load_le(z + offset + 8, 2);
        method = ekv__load_le(z + offset + 10, 2);
        crc = ekv__load_le(z + offset + 16, 4);
        compressed = ekv__load_le(z + offset + 20, 4);
        uncompressed = ekv__load_le(z + offset + 24, 4);
        name_length = ekv__load_le(z + offset + 28, 2);
        extra_length = ekv__load_le(z + offset + 30, 2);
        comment_length = ekv__load_le(z + offset + 32, 2);
        local = ekv__load_le(z + offset + 42, 4);
        if (end - offset - 46 < (uint64_t)name_length + extra_length + comment_length)
            return ekv_set_error(EKV_ERR_FORMAT, "%s: central directory entry %llu is truncated",
                                 zip->name, (unsigned long long)entry);
        if (name_length != want || memcmp(z + offset + 46, member_name, want) != 0) {
            offset += 46 + (uint64_t)name_length + extra_length + comment_length;
            continue;
        }
        if (compressed == 0xffffffffu || uncompressed == 0xffffffffu || local == 0xffffffffu) {
            /* zip64 extended information: the 8-byte values present are those whose
               32-bit fields are saturated, in the order uncompressed, compressed, local */
            const unsigned char *extra = z + offset + 46 + name_length;
            uint32_t at = 0;
            int done = 0;
            while (!done && at + 4 <= extra_length) {
                uint32_t id = ekv__load_le(extra + at, 2), length = ekv__load_le(extra + at + 2, 2);
                uint32_t field = at + 4;
                if (length > extra_length - at - 4) break;
                if (id == 1) {
                    uint64_t *targets[3];
                    int count = 0, i;
                    if (uncompressed == 0xffffffffu) targets[count++] = &uncompressed;
                    if (compressed == 0xffffffffu) targets[count++] = &compressed;
                    if (local == 0xffffffffu) targets[count++] = &local;
                    if (length < 8u * (uint32_t)count)
                        return ekv_set_error(EKV_ERR_FORMAT, "%s: member %s: zip64 field too short",
                                             zip->name, member_name);
                    for (i = 0; i < count; i++) *targets[i] = ekv__load_le64(extra + field + 8 * i);
                    done = 1;
                }
                at += 4 + length;
            }
            if (!done)
                return ekv_set_error(EKV_ERR_FORMAT, "%s: member %s: zip64 sizes missing",
                                     zip->name, member_name);
        }
        if (flags & 1u)
            return ekv_set_error(EKV_ERR_UNSUPPORTED, "%s: member %s is encrypted", zip->name,
                                 member_name);
        if (method == 8)
            return ekv_set_error(EKV_ERR_UNSUPPORTED,
                                 "%s: member %s: compressed .npz not supported; use np.savez "
                                 "(not np.savez_compressed)", zip->name, member_name);
        if (method != 0)
            return ekv_set_error(EKV_ERR_UNSUPPORTED,
                                 "%s: member %s uses zip method %u; only stored members (np.savez) "
                                 "are supported", zip->name, member_name, (unsigned)method);
        if (compressed != uncompressed)
            return ekv_set_error(EKV_ERR_FORMAT, "%s: member %s is stored but its sizes differ",
                                 zip->name, member_name);
        if (!ekv__in_bounds(zip->size, local, 30) || ekv__load_le(z + local, 4) != 0x04034b50u)
            return ekv_set_error(EKV_ERR_FORMAT, "%s: member %s: local header is invalid",
                                 zip->name, member_name);
        data = local + 30 + ekv__load_le(z + local + 26, 2) + ekv__load_le(z + local + 28, 2);
        if (!ekv__in_bounds(zip->size, data, compressed))
            return ekv_set_error(EKV_ERR_FORMAT, "%s: member %s runs past the end of the file",
                                 zip->name, member_name);
        if (ekv__crc32(zip->crc_table, z + data, (size_t)compressed) != crc)
            return ekv_set_error(EKV_ERR_FORMAT, "%s: member %s: CRC-32 mismatch (corrupt file)",
                                 zip->name, member_name);
        *member = z + data;
        *member_size = (size_t)compressed;
        return EKV_SUCCESS;
    }
    return EKV_SUCCESS;
}

/* Checks the shapes of the loaded arrays and moves them into `data`. q_observe may be
   absent (values NULL): with observe > 0 every observed query is then a copy of q. With
   more observed queries in the file than `observe`, the last `observe` are kept. */
static ekv_result ekv__data_from_arrays(ekv_npy_array *arrays, int observe, const char *name,
                                        ekv_data *data)
{
    ekv_npy_array *q = &arrays[0], *k = &arrays[1], *v = &arrays[2], *qo = &arrays[3];
    int64_t B, H, Hkv, S, D, O = 0;
    int i;
    if (q->ndim != 3)
        return ekv_set_error(EKV_ERR_FORMAT, "%s: q must have 3 dimensions [B,H,D], has %d", name,
                             q->ndim);
    if (k->ndim != 4)
        return ekv_set_error(EKV_ERR_FORMAT, "%s: k must have 4 dimensions [B,H_kv,S,D], has %d",
                             name, k->ndim);
    for (i = 0; i < 4; i++)
        if (v->ndim != 4 || v->shape[i] != k->shape[i])
            return ekv_set_error(EKV_ERR_FORMAT, "%s: v must have the shape of k", name);
    B = q->shape[0];
    H = q->shape[1];
    D = q->shape[2];
    Hkv = k->shape[1];
    S = k->shape[2];
    if (k->shape[0] != B)
        return ekv_set_error(EKV_ERR_FORMAT, "%s: batch of k (%lld) differs from q (%lld)", name,
                             (long long)k->shape[0], (long long)B);
    if (k->shape[3] != D)
        return ekv_set_error(EKV_ERR_FORMAT, "%s: head_dim of k (%lld) differs from q (%lld)",
                             name, (long long)k->shape[3], (long long)D);
    if (B < 1 || H < 1 || D < 1 || S < 1 || Hkv < 1 || B > INT_MAX || H > INT_MAX ||
        D > INT_MAX || S > INT_MAX || Hkv > INT_MAX)
        return ekv_set_error(EKV_ERR_FORMAT, "%s: every dimension must be in [1, %d]", name,
                             INT_MAX);
    if (H % Hkv != 0)
        return ekv_set_error(EKV_ERR_FORMAT, "%s: kv heads of k (%lld) do not divide heads of q "
                             "(%lld)", name, (long long)Hkv, (long long)H);
    if (qo->values) {
        if (qo->ndim != 4 || qo->shape[0] != B || qo->shape[1] != H || qo->shape[3] != D)
            return ekv_set_error(EKV_ERR_FORMAT, "%s: q_observe must have shape [B,H,O,D] = "
                                 "[%lld,%lld,O,%lld]", name, (long long)B, (long long)H,
                                 (long long)D);
        O = qo->shape[2];
        if (O > INT_MAX)
            return ekv_set_error(EKV_ERR_FORMAT, "%s: q_observe has too many queries", name);
    }
    memset(data, 0, sizeof *data);
    data->batch = (int)B;
    data->heads = (int)H;
    data->kv_heads = (int)Hkv;
    data->head_dim = (int)D;
    data->capacity = (int)S;
    data->observe = observe <= 0 ? 0 : (qo->values && O > 0 && O < observe) ? (int)O : observe;
    data->lengths = (int *)ekv__alloc((size_t)B, sizeof(int));
    if (!data->lengths) return EKV_ERR_OUT_OF_MEMORY;
    if (data->observe > 0) {
        size_t bh, o, row = (size_t)D * sizeof(float);
        data->q_observe = (float *)ekv__alloc((size_t)B * (size_t)H * (size_t)data->observe,
                                              (size_t)D * sizeof(float));
        if (!data->q_observe) {
            ekv_data_free(data);
            return EKV_ERR_OUT_OF_MEMORY;
        }
        for (bh = 0; bh < (size_t)(B * H); bh++)
            for (o = 0; o < (size_t)data->observe; o++) {
                const float *source = qo->values && O > 0
                    ? qo->values + (bh * (size_t)O + (size_t)O - (size_t)data->observe + o) *
                                       (size_t)D
                    : q->values + bh * (size_t)D;
                memcpy(data->q_observe + (bh * (size_t)data->observe + o) * (size_t)D, source, row);
            }
    }
    for (i = 0; i < data->batch; i++) data->lengths[i] = (int)S;
    data->q = q->values;
    data->k = k->values;
    data->v = v->values;
    q->values = k->values = v->values = NULL;
    return EKV_SUCCESS;
}

static const char *const ekv__data_members[4] = {"q.npy", "k.npy", "v.npy", "q_observe.npy"};

/* ekv_data_load for a .npz image in memory. */
static ekv_result ekv__data_load_npz(const unsigned char *bytes, size_t size, const char *name,
                                     int observe, ekv_data *data)
{
    ekv__zip zip;
    ekv_npy_array arrays[4];
    ekv_result result;
    int i;
    memset(arrays, 0, sizeof arrays);
    memset(data, 0, sizeof *data);
    result = ekv__zip_open(&zip, bytes, size, name);
    for (i = 0; i < 4 && result == EKV_SUCCESS; i++) {
        const unsigned char *member;
        size_t member_size;
        char member_label[EKV_PATH_MAX + 32];
        result = ekv__zip_member(&zip, ekv__data_members[i], &member, &member_size);
        if (result != EKV_SUCCESS) break;
        if (!member) {
            if (i < 3)
                result = ekv_set_error(EKV_ERR_FORMAT, "%s: the archive has no member %s "
                                       "(expected q, k, v and optionally q_observe)", name,
                                       ekv__data_members[i]);
            continue;
        }
        snprintf(member_label, sizeof member_label, "%.1000s:%.20s", name, ekv__data_members[i]);
        result = ekv_npy_parse(member, member_size, member_label, &arrays[i]);
    }
    if (result == EKV_SUCCESS) result = ekv__data_from_arrays(arrays, observe, name, data);
    for (i = 0; i < 4; i++) ekv_npy_free(&arrays[i]);
    return result;
}

EKV_DEF ekv_result ekv_data_load(const char *path, int observe, ekv_data *data)
{
    char member_path[EKV_PATH_MAX + 32];
    ekv_npy_array arrays[4];
    ekv_result result = EKV_SUCCESS;
    FILE *probe;
    int i;
    if (!data) return ekv_set_error(EKV_ERR_INVALID_ARG, "ekv_data_load: NULL output");
    memset(data, 0, sizeof *data);
    if (!path || !*path) return ekv_set_error(EKV_ERR_INVALID_ARG, "ekv_data_load: empty path");
    if (strlen(path) >= EKV_PATH_MAX)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "ekv_data_load: path longer than %d bytes",
                             EKV_PATH_MAX - 1);
    snprintf(member_path, sizeof member_path, "%s/q.npy", path);
    probe = fopen(member_path, "rb");
    if (!probe) {
        unsigned char *bytes;
        size_t size;
        result = ekv__read_file(path, &bytes, &size);
        if (result != EKV_SUCCESS) return result;
        if (size >= 6 && memcmp(bytes, "\x93NUMPY", 6) == 0)
            result = ekv_set_error(EKV_ERR_FORMAT, "%s: a single .npy cannot hold q, k and v; "
                                   "give a .npz (np.savez) or a directory of q.npy, k.npy, v.npy",
                                   path);
        else if (size < 4 || bytes[0] != 'P' || bytes[1] != 'K')
            result = ekv_set_error(EKV_ERR_FORMAT, "%s: not a .npz archive or a directory holding "
                                   "q.npy, k.npy and v.npy", path);
        else
            result = ekv__data_load_npz(bytes, size, path, observe, data);
        ekv__free(bytes);
        return result;
    }
    fclose(probe);
    memset(arrays, 0, sizeof arrays);
    for (i = 0; i < 4 && result == EKV_SUCCESS; i++) {
        snprintf(member_path, sizeof member_path, "%s/%s", path, ekv__data_members[i]);
        if (i == 3) {
            probe = fopen(member_path, "rb");
            if (!probe) break;
            fclose(probe);
        }
        result = ekv_npy_read(member_path, &arrays[i]);
    }
    if (result == EKV_SUCCESS) result = ekv__data_from_arrays(arrays, observe, path, data);
    for (i = 0; i < 4; i++) ekv_npy_free(&arrays[i]);
    return result;
}

/* >>cache: policies, building the stored cache ============================== */

static int ekv__policy_valid(const ekv_compress_desc *desc)
{
    return desc && (int)desc->policy >= 0 && desc->policy < EKV_POLICY_COUNT &&
           desc->compression >= 1 && desc->recent >= 0 && desc->sinks >= 0 &&
           !(desc->policy == EKV_POLICY_NONE && desc->compression != 1);
}

EKV_DEF int ekv_policy_kept(const ekv_compress_desc *desc, int length)
{
    int recent, old;
    if (!ekv__policy_valid(desc) || length < 0) return -1;
    recent = desc->recent < length ? desc->recent : length;
    old = length - recent;
    return old / desc->compression + (old % desc->compression != 0) + recent;
}

typedef struct ekv__ranked {
    double score;
    int token;
} ekv__ranked;

/* Highest score first, NaN last, ties to the older token. */
static int ekv__compare_ranked(const void *a, const void *b)
{
    const ekv__ranked *x = (const ekv__ranked *)a, *y = (const ekv__ranked *)b;
    int x_nan = x->score != x->score, y_nan = y->score != y->score;
    if (x_nan != y_nan) return x_nan - y_nan;
    if (!x_nan && x->score != y->score) return x->score > y->score ? -1 : 1;
    return (x->token > y->token) - (x->token < y->token);
}

EKV_DEF int ekv_policy_map(const ekv_compress_desc *desc, int length, const double *scores,
                           ekv_slot_source *slots)
{
    int kept = ekv_policy_kept(desc, length), recent, old, budget, sinks, count = 0, t;
    const int C = desc ? desc->compression : 1;
    if (kept < 0 || !slots) return -1;
    recent = desc->recent < length ? desc->recent : length;
    old = length - recent;
    budget = kept - recent;
    sinks = desc->sinks < budget ? desc->sinks : budget;
    switch (desc->policy) {
    case EKV_POLICY_NONE:
    case EKV_POLICY_STRIDE:
        for (t = old > 0 ? (old - 1) % C : 0; t < old; t += C) {
            slots[count].first = t;
            slots[count++].count = 1;
        }
        break;
    case EKV_POLICY_POOL:
        for (t = 0; t < old; t += C) {
            slots[count].first = t;
            slots[count++].count = old - t < C ? old - t : C;
        }
        break;
    case EKV_POLICY_WINDOW:
        for (t = 0; t < sinks; t++) {
            slots[count].first = t;
            slots[count++].count = 1;
        }
        for (t = old - (budget - sinks); t < old; t++) {
            slots[count].first = t;
            slots[count++].count = 1;
        }
        break;
    case EKV_POLICY_TOPK: {
        ekv__ranked *ranked;
        unsigned char *chosen;
        int candidates = old - sinks, i;
        if (!scores) {
            ekv_set_error(EKV_ERR_INVALID_ARG, "ekv_policy_map: topk needs scores");
            return -1;
        }
        ranked = (ekv__ranked *)ekv__alloc((size_t)(candidates > 0 ? candidates : 1),
                                           sizeof(ekv__ranked));
        chosen = (unsigned char *)ekv__alloc((size_t)(old > 0 ? old : 1), 1);
        if (!ranked || !chosen) {
            ekv__free(ranked);
            ekv__free(chosen);
            return -1;
        }
        for (i = 0; i < candidates; i++) {
            ranked[i].token = sinks + i;
            ranked[i].score = scores[sinks + i];
        }
        if (candidates > 1) qsort(ranked, (size_t)candidates, sizeof *ranked, ekv__compare_ranked);
        for (t = 0; t < sinks; t++) chosen[t] = 1;
        for (i = 0; i < budget - sinks; i++) chosen[ranked[i].token] = 1;
        for (t = 0; t < old; t++)
            if (chosen[t]) {
                slots[count].first = t;
                slots[count++].count = 1;
            }
        ekv__free(ranked);
        ekv__free(chosen);
        break;
    }
    default:
        return -1;
    }
    for (t = old; t < length; t++) {
        slots[count].first = t;
        slots[count++].count = 1;
    }
    return count;
}

EKV_DEF void ekv_cache_free(ekv_host_cache *cache)
{
    if (!cache) return;
    ekv__free(cache->lengths);
    ekv__free(cache->k);
    ekv__free(cache->v);
    ekv__free(cache->k_scales);
    ekv__free(cache->v_scales);
    ekv__free(cache->bias);
    ekv__free(cache->compressed);
    memset(cache, 0, sizeof *cache);
}

/* Row `slot` of (b, h) in K (which = 0) or V; scale pointers per the layout. */
static const unsigned char *ekv__cache_values(const ekv_host_cache *cache, int which, int b,
                                              int h, int slot)
{
    size_t row = ((size_t)b * (size_t)cache->kv_heads + (size_t)h) * (size_t)cache->capacity +
                 (size_t)slot;
    return (which ? cache->v : cache->k) + row * ekv_dtype_row_bytes(cache->dtype, cache->head_dim);
}

static const unsigned char *ekv__cache_row_scale(const ekv_host_cache *cache, int which, int b,
                                                 int h, int slot)
{
    size_t row = ((size_t)b * (size_t)cache->kv_heads + (size_t)h) * (size_t)cache->capacity +
                 (size_t)slot;
    const unsigned char *scales = which ? cache->v_scales : cache->k_scales;
    if (cache->dtype != EKV_DTYPE_INT8 && cache->dtype != EKV_DTYPE_INT4) return NULL;
    return scales + row * ekv_dtype_row_scale_bytes(cache->dtype, cache->head_dim);
}

static float ekv__cache_head_scale(const ekv_host_cache *cache, int which, int b, int h)
{
    float scale = 0.0f;
    if (cache->dtype == EKV_DTYPE_FP8)
        memcpy(&scale, (which ? cache->v_scales : cache->k_scales) +
                           ((size_t)b * (size_t)cache->kv_heads + (size_t)h) * sizeof(float),
               sizeof scale);
    return scale;
}

EKV_DEF void ekv_cache_row(const ekv_host_cache *cache, int which, int b, int h, int slot,
                           float *out)
{
    if (!cache || !out || b < 0 || b >= cache->batch || h < 0 || h >= cache->kv_heads ||
        slot < 0 || slot >= cache->capacity)
        return;
    ekv_dequantize_row(cache->dtype, ekv__cache_values(cache, which, b, h, slot),
                       ekv__cache_row_scale(cache, which, b, h, slot), cache->head_dim,
                       ekv__cache_head_scale(cache, which, b, h), out);
}

/* The f32 row a slot holds: the token's row, or the mean of a pooled group (in double,
   then rounded once to float). */
static void ekv__slot_row(const float *rows, int head_dim, ekv_slot_source source,
                          double *sum, float *out)
{
    int d, t;
    if (source.count == 1) {
        memcpy(out, rows + (size_t)source.first * (size_t)head_dim, (size_t)head_dim * sizeof(float));
        return;
    }
    for (d = 0; d < head_dim; d++) sum[d] = 0.0;
    for (t = source.first; t < source.first + source.count; t++) {
        const float *row = rows + (size_t)t * (size_t)head_dim;
        for (d = 0; d < head_dim; d++) sum[d] += row[d];
    }
    for (d = 0; d < head_dim; d++) out[d] = (float)(sum[d] / source.count);
}

static ekv_result ekv__check_data(const ekv_data *data, const char *function)
{
    int b;
    if (!data || !data->q || !data->k || !data->v || !data->lengths)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: data is NULL or not generated", function);
    if (data->batch < 1 || data->heads < 1 || data->kv_heads < 1 || data->head_dim < 1 ||
        data->capacity < 1 || data->heads % data->kv_heads != 0)
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "%s: bad data dimensions (batch %d, heads %d, kv_heads %d, "
                             "head_dim %d, capacity %d)", function, data->batch, data->heads,
                             data->kv_heads, data->head_dim, data->capacity);
    for (b = 0; b < data->batch; b++)
        if (data->lengths[b] < 0 || data->lengths[b] > data->capacity)
            return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: lengths[%d] = %d outside [0, %d]",
                                 function, b, data->lengths[b], data->capacity);
    return EKV_SUCCESS;
}

static ekv_result ekv__resolve_scale(double softmax_scale, int head_dim, const char *function,
                                     double *scale)
{
    if (softmax_scale != softmax_scale || softmax_scale > DBL_MAX || softmax_scale < -DBL_MAX)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: softmax_scale must be finite", function);
    *scale = softmax_scale == 0.0 ? 1.0 / sqrt((double)head_dim) : softmax_scale;
    return EKV_SUCCESS;
}

EKV_DEF ekv_result ekv_cache_build(const ekv_data *data, const ekv_compress_desc *desc,
                                   ekv_dtype dtype, double softmax_scale,
                                   ekv_host_cache *cache)
{
    const char *fn = "ekv_cache_build";
    size_t row_bytes, scale_bytes, rows, cells, bh;
    double scale = 0.0, *scores = NULL, *sum = NULL;
    ekv_slot_source *slots = NULL;
    float *row = NULL;
    ekv_result result;
    int b, h, capacity = 0, D;
    if (!cache) return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: NULL cache", fn);
    memset(cache, 0, sizeof *cache);
    result = ekv__check_data(data, fn);
    if (result != EKV_SUCCESS) return result;
    if (!ekv__policy_valid(desc))
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "%s: bad compression settings (policy none needs compression 1; "
                             "compression >= 1, recent >= 0, sinks >= 0)", fn);
    if ((int)dtype < 0 || dtype >= EKV_DTYPE_COUNT)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: unknown dtype %d", fn, (int)dtype);
    if ((dtype == EKV_DTYPE_INT4 || dtype == EKV_DTYPE_F16 || dtype == EKV_DTYPE_BF16) &&
        data->head_dim % 2 != 0)
        return ekv_set_error(EKV_ERR_UNSUPPORTED, "%s: head_dim %d must be even for this dtype",
                             fn, data->head_dim);
    if (desc->policy == EKV_POLICY_TOPK && (data->observe < 1 || !data->q_observe))
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "%s: policy topk needs observed queries (data has observe = %d)", fn,
                             data->observe);
    result = ekv__resolve_scale(softmax_scale, data->head_dim, fn, &scale);
    if (result != EKV_SUCCESS) return result;
    D = data->head_dim;
    for (b = 0; b < data->batch; b++) {
        int kept = ekv_policy_kept(desc, data->lengths[b]);
        if (kept > capacity) capacity = kept;
    }
    if (capacity < 1) capacity = 1;
    cache->dtype = dtype;
    cache->batch = data->batch;
    cache->kv_heads = data->kv_heads;
    cache->head_dim = D;
    cache->capacity = capacity;
    row_bytes = ekv_dtype_row_bytes(dtype, D);
    scale_bytes = ekv_dtype_row_scale_bytes(dtype, D);
    bh = (size_t)data->batch * (size_t)data->kv_heads;
    rows = bh * (size_t)capacity;
    if (!ekv__mul_size(rows, row_bytes, &cells)) {
        ekv_cache_free(cache);
        return ekv_set_error(EKV_ERR_OUT_OF_MEMORY, "%s: cache too large to address", fn);
    }
    cache->lengths = (int *)ekv__alloc((size_t)data->batch, sizeof(int));
    cache->k = (unsigned char *)ekv__alloc(rows, row_bytes);
    cache->v = (unsigned char *)ekv__alloc(rows, row_bytes);
    if (dtype == EKV_DTYPE_FP8) {
        cache->k_scales = (unsigned char *)ekv__alloc(bh, sizeof(float));
        cache->v_scales = (unsigned char *)ekv__alloc(bh, sizeof(float));
    } else if (scale_bytes) {
        cache->k_scales = (unsigned char *)ekv__alloc(rows, scale_bytes);
        cache->v_scales = (unsigned char *)ekv__alloc(rows, scale_bytes);
    }
    if (desc->policy == EKV_POLICY_POOL) cache->bias = (float *)ekv__alloc(rows, sizeof(float));
    slots = (ekv_slot_source *)ekv__alloc((size_t)capacity, sizeof *slots);
    row = (float *)ekv__alloc((size_t)D, sizeof(float));
    sum = (double *)ekv__alloc((size_t)D, sizeof(double));
    if (desc->policy == EKV_POLICY_TOPK)
        scores = (double *)ekv__alloc(bh * (size_t)data->capacity, sizeof(double));
    if (!cache->lengths || !cache->k || !cache->v || !slots || !row || !sum ||
        ((dtype == EKV_DTYPE_FP8 || scale_bytes) && (!cache->k_scales || !cache->v_scales)) ||
        (desc->policy == EKV_POLICY_POOL && !cache->bias) ||
        (desc->policy == EKV_POLICY_TOPK && !scores)) {
        result = EKV_ERR_OUT_OF_MEMORY;
        goto done;
    }
    if (scores) {
        result = ekv_observed_scores(data, scale, scores);
        if (result != EKV_SUCCESS) goto done;
    }
    for (b = 0; b < data->batch; b++) {
        for (h = 0; h < data->kv_heads; h++) {
            const size_t head = (size_t)b * (size_t)data->kv_heads + (size_t)h;
            const double *head_scores = scores ? scores + head * (size_t)data->capacity : NULL;
            int kept = ekv_policy_map(desc, data->lengths[b], head_scores, slots), which, s, d;
            if (kept < 0) {
                result = ekv_set_error(EKV_ERR_OUT_OF_MEMORY, "%s: slot map failed", fn);
                goto done;
            }
            cache->lengths[b] = kept;
            for (which = 0; which < 2; which++) {
                const float *source = (which ? data->v : data->k) + ekv_data_kv_index(data, b, h, 0);
                unsigned char *values = which ? cache->v : cache->k;
                unsigned char *scales = which ? cache->v_scales : cache->k_scales;
                float head_scale = 0.0f;
                if (dtype == EKV_DTYPE_FP8) {
                    /* one scale per (sequence, kv head): amax over the rows as stored */
                    float amax = 0.0f;
                    for (s = 0; s < kept; s++) {
                        ekv__slot_row(source, D, slots[s], sum, row);
                        for (d = 0; d < D; d++)
                            if (fabsf(row[d]) > amax) amax = fabsf(row[d]);
                    }
                    head_scale = amax / EKV_FP8_MAX;
                    memcpy(scales + head * sizeof(float), &head_scale, sizeof head_scale);
                }
                for (s = 0; s < kept; s++) {
                    size_t r = head * (size_t)capacity + (size_t)s;
                    ekv__slot_row(source, D, slots[s], sum, row);
                    ekv_quantize_row(dtype, row, D, head_scale, values + r * row_bytes,
                                     scale_bytes ? scales + r * scale_bytes : NULL);
                    if (which == 0 && cache->bias) cache->bias[r] = (float)log((double)slots[s].count);
                }
            }
        }
    }
    result = EKV_SUCCESS;
done:
    ekv__free(slots);
    ekv__free(row);
    ekv__free(sum);
    ekv__free(scores);
    if (result != EKV_SUCCESS) ekv_cache_free(cache);
    return result;
}

EKV_DEF ekv_cache_bytes ekv_cache_bytes_of(ekv_dtype dtype, int batch, int kv_heads,
                                           int head_dim, const int *lengths, int has_bias)
{
    ekv_cache_bytes bytes;
    double rows = 0.0;
    int b;
    memset(&bytes, 0, sizeof bytes);
    if (!lengths || batch < 1 || kv_heads < 1) return bytes;
    for (b = 0; b < batch; b++) rows += (double)lengths[b] * kv_heads;
    bytes.k = rows * (double)ekv_dtype_row_bytes(dtype, head_dim);
    bytes.v = bytes.k;
    bytes.scales = 2.0 * rows * (double)ekv_dtype_row_scale_bytes(dtype, head_dim);
    if (dtype == EKV_DTYPE_FP8) bytes.scales = 2.0 * 4.0 * batch * kv_heads;
    bytes.bias = has_bias ? 4.0 * rows : 0.0;
    bytes.total = bytes.k + bytes.v + bytes.scales + bytes.bias;
    return bytes;
}

/* >>reference: double reference, the float CPU kernel, observed scores ======== */

static double ekv__dot_f64(const float *a, const float *b, int n)
{
    double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
    int i;
    for (i = 0; i + 3 < n; i += 4) {
        s0 += (double)a[i] * b[i];
        s1 += (double)a[i + 1] * b[i + 1];
        s2 += (double)a[i + 2] * b[i + 2];
        s3 += (double)a[i + 3] * b[i + 3];
    }
    for (; i < n; i++) s0 += (double)a[i] * b[i];
    return (s0 + s1) + (s2 + s3);
}

/* Softmax in place over n logits, with max subtraction. */
static void ekv__softmax(double *x, int n)
{
    double mx = -HUGE_VAL, total = 0.0;
    int i;
    for (i = 0; i < n; i++)
        if (x[i] > mx) mx = x[i];
    for (i = 0; i < n; i++) {
        x[i] = exp(x[i] - mx);
        total += x[i];
    }
    for (i = 0; i < n; i++) x[i] /= total;
}

/* Probabilities of the decode query of (b, h) over its sequence, into p[length]. */
static void ekv__attention_probs(const ekv_data *data, const float *q, int b, int h, double scale,
                                 double *p)
{
    const int g = h / (data->heads / data->kv_heads), length = data->lengths[b];
    const float *k = data->k + ekv_data_kv_index(data, b, g, 0);
    int t;
    for (t = 0; t < length; t++)
        p[t] = scale * ekv__dot_f64(q, k + (size_t)t * (size_t)data->head_dim, data->head_dim);
    ekv__softmax(p, length);
}

EKV_DEF ekv_result ekv_reference_attention(const ekv_data *data, double softmax_scale,
                                           double *out)
{
    const char *fn = "ekv_reference_attention";
    double scale = 0.0, *p;
    ekv_result result = ekv__check_data(data, fn);
    int b, h, t, d;
    if (result != EKV_SUCCESS) return result;
    if (!out) return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: NULL output", fn);
    result = ekv__resolve_scale(softmax_scale, data->head_dim, fn, &scale);
    if (result != EKV_SUCCESS) return result;
    p = (double *)ekv__alloc((size_t)data->capacity, sizeof(double));
    if (!p) return EKV_ERR_OUT_OF_MEMORY;
    for (b = 0; b < data->batch; b++)
        for (h = 0; h < data->heads; h++) {
            const size_t bh = (size_t)b * (size_t)data->heads + (size_t)h;
            const int g = h / (data->heads / data->kv_heads);
            const float *v = data->v + ekv_data_kv_index(data, b, g, 0);
            double *o = out + bh * (size_t)data->head_dim;
            for (d = 0; d < data->head_dim; d++) o[d] = 0.0;
            if (data->lengths[b] == 0) continue;
            ekv__attention_probs(data, data->q + bh * (size_t)data->head_dim, b, h, scale, p);
            for (t = 0; t < data->lengths[b]; t++) {
                const float *row = v + (size_t)t * (size_t)data->head_dim;
                for (d = 0; d < data->head_dim; d++) o[d] += p[t] * row[d];
            }
        }
    ekv__free(p);
    return EKV_SUCCESS;
}

static ekv_result ekv__check_cache(const ekv_host_cache *cache, const float *q, int heads,
                                   const void *out, const char *function)
{
    int b;
    if (!cache || !cache->k || !cache->v || !cache->lengths || !q || !out)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: NULL cache, query or output", function);
    if ((int)cache->dtype < 0 || cache->dtype >= EKV_DTYPE_COUNT || cache->batch < 1 ||
        cache->kv_heads < 1 || cache->head_dim < 1 || cache->capacity < 1)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: the cache is not built", function);
    if (heads < 1 || heads % cache->kv_heads != 0)
        return ekv_set_error(EKV_ERR_INVALID_ARG,
                             "%s: heads (%d) must be a positive multiple of kv_heads (%d)",
                             function, heads, cache->kv_heads);
    for (b = 0; b < cache->batch; b++)
        if (cache->lengths[b] < 0 || cache->lengths[b] > cache->capacity)
            return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: cache lengths[%d] = %d outside [0, %d]",
                                 function, b, cache->lengths[b], cache->capacity);
    return EKV_SUCCESS;
}

EKV_DEF ekv_result ekv_reference_attention_cache(const ekv_host_cache *cache, const float *q,
                                                 int heads, double softmax_scale, double *out)
{
    const char *fn = "ekv_reference_attention_cache";
    ekv_result result = ekv__check_cache(cache, q, heads, out, fn);
    double scale = 0.0, *logits, *acc;
    float *row;
    int group, b, g, hh, s, d, D;
    if (result != EKV_SUCCESS) return result;
    result = ekv__resolve_scale(softmax_scale, cache->head_dim, fn, &scale);
    if (result != EKV_SUCCESS) return result;
    D = cache->head_dim;
    group = heads / cache->kv_heads;
    logits = (double *)ekv__alloc((size_t)group * (size_t)cache->capacity, sizeof(double));
    acc = (double *)ekv__alloc((size_t)group * (size_t)D, sizeof(double));
    row = (float *)ekv__alloc((size_t)D, sizeof(float));
    if (!logits || !acc || !row) {
        ekv__free(logits);
        ekv__free(acc);
        ekv__free(row);
        return EKV_ERR_OUT_OF_MEMORY;
    }
    for (b = 0; b < cache->batch; b++)
        for (g = 0; g < cache->kv_heads; g++) {
            const int length = cache->lengths[b];
            const size_t first_head = (size_t)b * (size_t)heads + (size_t)g * (size_t)group;
            const float *bias = cache->bias ? cache->bias + ((size_t)b * (size_t)cache->kv_heads +
                                                             (size_t)g) * (size_t)cache->capacity
                                            : NULL;
            for (s = 0; s < length; s++) {
                ekv_cache_row(cache, 0, b, g, s, row);
                for (hh = 0; hh < group; hh++)
                    logits[(size_t)hh * (size_t)length + (size_t)s] =
                        scale * ekv__dot_f64(q + (first_head + (size_t)hh) * (size_t)D, row, D) +
                        (bias ? bias[s] : 0.0);
            }
            for (hh = 0; hh < group; hh++) {
                if (length > 0) ekv__softmax(logits + (size_t)hh * (size_t)length, length);
                for (d = 0; d < D; d++) acc[(size_t)hh * (size_t)D + (size_t)d] = 0.0;
            }
            for (s = 0; s < length; s++) {
                ekv_cache_row(cache, 1, b, g, s, row);
                for (hh = 0; hh < group; hh++) {
                    const double p = logits[(size_t)hh * (size_t)length + (size_t)s];
                    double *a = acc + (size_t)hh * (size_t)D;
                    for (d = 0; d < D; d++) a[d] += p * row[d];
                }
            }
            memcpy(out + first_head * (size_t)D, acc, (size_t)group * (size_t)D * sizeof(double));
        }
    ekv__free(logits);
    ekv__free(acc);
    ekv__free(row);
    return EKV_SUCCESS;
}

/* The CPU kernel streams each (sequence, kv head) once in blocks of rows: it dequantizes a
   block of K (f32 is read in place), scores it for every query head of the GQA group,
   folds the block into a running max and sum (rescaling the accumulators once per block),
   then streams the block of V. */
#define EKV__CPU_BLOCK 32

#if !defined(__cplusplus)
#define EKV__RESTRICT restrict
#elif defined(__GNUC__) || defined(__clang__) || defined(_MSC_VER)
#define EKV__RESTRICT __restrict
#else
#define EKV__RESTRICT
#endif

/* Eight independent partial sums (and, below, eight independent updates) per step: the
   compiler turns each group of eight into vector instructions without -ffast-math. */
static float ekv__dot_f32(const float *EKV__RESTRICT a, const float *EKV__RESTRICT b, int n)
{
    float s[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    int i, j;
    for (i = 0; i + 7 < n; i += 8)
        for (j = 0; j < 8; j++) s[j] += a[i + j] * b[i + j];
    for (; i < n; i++) s[0] += a[i] * b[i];
    return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
}

/* acc += p * x */
static void ekv__axpy_f32(float *EKV__RESTRICT acc, float p, const float *EKV__RESTRICT x, int n)
{
    int i, j;
    for (i = 0; i + 7 < n; i += 8)
        for (j = 0; j < 8; j++) acc[i + j] += p * x[i + j];
    for (; i < n; i++) acc[i] += p * x[i];
}

/* Rows [first, first + n) of K or V of (b, g) as floats: in place for f32, else
   dequantized into `buffer`. */
static const float *ekv__cache_block(const ekv_host_cache *cache, int which, int b, int g,
                                     int first, int n, float *buffer)
{
    int j;
    if (cache->dtype == EKV_DTYPE_F32)
        return (const float *)(const void *)ekv__cache_values(cache, which, b, g, first);
    for (j = 0; j < n; j++)
        ekv_dequantize_row(cache->dtype, ekv__cache_values(cache, which, b, g, first + j),
                           ekv__cache_row_scale(cache, which, b, g, first + j), cache->head_dim,
                           ekv__cache_head_scale(cache, which, b, g),
                           buffer + (size_t)j * (size_t)cache->head_dim);
    return buffer;
}

EKV_DEF ekv_result ekv_cpu_attention(const ekv_host_cache *cache, const float *q, int heads,
                                     float softmax_scale, float *out)
{
    const char *fn = "ekv_cpu_attention";
    ekv_result result = ekv__check_cache(cache, q, heads, out, fn);
    float *kbuf, *vbuf, *probs, *running_max, *running_sum, *acc, scale;
    int group, b, g, hh, j, d, D, first;
    if (result != EKV_SUCCESS) return result;
    if (softmax_scale != softmax_scale || softmax_scale > FLT_MAX || softmax_scale < -FLT_MAX)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: softmax_scale must be finite", fn);
    D = cache->head_dim;
    scale = softmax_scale == 0.0f ? (float)(1.0 / sqrt((double)D)) : softmax_scale;
    group = heads / cache->kv_heads;
    kbuf = (float *)ekv__alloc((size_t)EKV__CPU_BLOCK * (size_t)D, sizeof(float));
    vbuf = (float *)ekv__alloc((size_t)EKV__CPU_BLOCK * (size_t)D, sizeof(float));
    probs = (float *)ekv__alloc((size_t)group * EKV__CPU_BLOCK, sizeof(float));
    running_max = (float *)ekv__alloc((size_t)group, sizeof(float));
    running_sum = (float *)ekv__alloc((size_t)group, sizeof(float));
    acc = (float *)ekv__alloc((size_t)group * (size_t)D, sizeof(float));
    if (!kbuf || !vbuf || !probs || !running_max || !running_sum || !acc) {
        result = EKV_ERR_OUT_OF_MEMORY;
        goto done;
    }
    for (b = 0; b < cache->batch; b++)
        for (g = 0; g < cache->kv_heads; g++) {
            const int length = cache->lengths[b];
            const size_t first_head = (size_t)b * (size_t)heads + (size_t)g * (size_t)group;
            const float *bias = cache->bias ? cache->bias + ((size_t)b * (size_t)cache->kv_heads +
                                                             (size_t)g) * (size_t)cache->capacity
                                            : NULL;
            for (hh = 0; hh < group; hh++) {
                running_max[hh] = -HUGE_VALF;
                running_sum[hh] = 0.0f;
            }
            memset(acc, 0, (size_t)group * (size_t)D * sizeof(float));
            for (first = 0; first < length; first += EKV__CPU_BLOCK) {
                const int n = length - first < EKV__CPU_BLOCK ? length - first : EKV__CPU_BLOCK;
                const float *keys = ekv__cache_block(cache, 0, b, g, first, n, kbuf);
                const float *values;
                for (hh = 0; hh < group; hh++) {
                    const float *qh = q + (first_head + (size_t)hh) * (size_t)D;
                    float *p = probs + (size_t)hh * EKV__CPU_BLOCK, block_max = -HUGE_VALF;
                    float new_max, correction;
                    for (j = 0; j < n; j++) {
                        p[j] = scale * ekv__dot_f32(qh, keys + (size_t)j * (size_t)D, D);
                        if (bias) p[j] += bias[first + j];
                        if (p[j] > block_max) block_max = p[j];
                    }
                    new_max = block_max > running_max[hh] ? block_max : running_max[hh];
                    if (new_max == -HUGE_VALF) new_max = 0.0f; /* every logit -inf so far */
                    correction = expf(running_max[hh] - new_max);
                    if (correction != 1.0f) {
                        float *a = acc + (size_t)hh * (size_t)D;
                        running_sum[hh] *= correction;
                        for (d = 0; d < D; d++) a[d] *= correction;
                    }
                    running_max[hh] = new_max;
                    for (j = 0; j < n; j++) {
                        p[j] = expf(p[j] - new_max);
                        running_sum[hh] += p[j];
                    }
                }
                values = ekv__cache_block(cache, 1, b, g, first, n, vbuf);
                for (hh = 0; hh < group; hh++) {
                    const float *p = probs + (size_t)hh * EKV__CPU_BLOCK;
                    float *a = acc + (size_t)hh * (size_t)D;
                    for (j = 0; j < n; j++) ekv__axpy_f32(a, p[j], values + (size_t)j * (size_t)D, D);
                }
            }
            for (hh = 0; hh < group; hh++) {
                const float inverse = running_sum[hh] > 0.0f ? 1.0f / running_sum[hh] : 0.0f;
                float *o = out + (first_head + (size_t)hh) * (size_t)D;
                const float *a = acc + (size_t)hh * (size_t)D;
                for (d = 0; d < D; d++) o[d] = a[d] * inverse;
            }
        }
    result = EKV_SUCCESS;
done:
    ekv__free(kbuf);
    ekv__free(vbuf);
    ekv__free(probs);
    ekv__free(running_max);
    ekv__free(running_sum);
    ekv__free(acc);
    return result;
}

/* Observed queries are scored in batches, so that each K row is read once per batch
   rather than once per query (group x observe queries per kv head). */
#define EKV__SCORE_BATCH 16

EKV_DEF ekv_result ekv_observed_scores(const ekv_data *data, double softmax_scale,
                                       double *scores)
{
    const char *fn = "ekv_observed_scores";
    ekv_result result = ekv__check_data(data, fn);
    double scale = 0.0, *logits;
    int b, g, t, j, group, queries, first, D;
    if (result != EKV_SUCCESS) return result;
    if (!scores) return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: NULL output", fn);
    if (data->observe < 1 || !data->q_observe)
        return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: the data has no observed queries", fn);
    result = ekv__resolve_scale(softmax_scale, data->head_dim, fn, &scale);
    if (result != EKV_SUCCESS) return result;
    logits = (double *)ekv__alloc((size_t)EKV__SCORE_BATCH * (size_t)data->capacity, sizeof(double));
    if (!logits) return EKV_ERR_OUT_OF_MEMORY;
    D = data->head_dim;
    group = data->heads / data->kv_heads;
    queries = group * data->observe;
    memset(scores, 0, (size_t)data->batch * (size_t)data->kv_heads * (size_t)data->capacity *
                          sizeof(double));
    for (b = 0; b < data->batch; b++)
        for (g = 0; g < data->kv_heads; g++) {
            const int length = data->lengths[b];
            const float *k = data->k + ekv_data_kv_index(data, b, g, 0);
            /* the group's observed queries are contiguous: [heads of g][observe][D] */
            const float *q = data->q_observe + ((size_t)b * (size_t)data->heads +
                                                (size_t)g * (size_t)group) *
                                                   (size_t)data->observe * (size_t)D;
            double *s = scores + ((size_t)b * (size_t)data->kv_heads + (size_t)g) *
                                     (size_t)data->capacity;
            if (length == 0) continue;
            for (first = 0; first < queries; first += EKV__SCORE_BATCH) {
                const int n = queries - first < EKV__SCORE_BATCH ? queries - first : EKV__SCORE_BATCH;
                for (t = 0; t < length; t++) {
                    const float *row = k + (size_t)t * (size_t)D;
                    for (j = 0; j < n; j++)
                        logits[(size_t)j * (size_t)length + (size_t)t] =
                            scale * ekv__dot_f64(q + (size_t)(first + j) * (size_t)D, row, D);
                }
                for (j = 0; j < n; j++) {
                    double *p = logits + (size_t)j * (size_t)length;
                    ekv__softmax(p, length);
                    for (t = 0; t < length; t++) s[t] += p[t];
                }
            }
        }
    ekv__free(logits);
    return EKV_SUCCESS;
}

/* >>accuracy: error metrics, attention profile of the data ================== */

typedef struct ekv__error_sums {
    double diff2, ref2, x2, dot, max_abs;
    int nan_seen;
} ekv__error_sums;

static void ekv__error_add(ekv__error_sums *sums, double r, double y)
{
    double e = y - r, a = fabs(e);
    sums->diff2 += e * e;
    sums->ref2 += r * r;
    sums->x2 += y * y;
    sums->dot += r * y;
    if (a != a) sums->nan_seen = 1;
    else if (a > sums->max_abs) sums->max_abs = a;
}

/* NaN anywhere makes max_abs NaN (as it does the sums): an error must never look small. */
static ekv_error_stats ekv__error_finish(const ekv__error_sums *sums)
{
    ekv_error_stats stats;
    stats.rel_l2 = sums->ref2 > 0.0 ? sqrt(sums->diff2 / sums->ref2) : sqrt(sums->diff2);
    stats.max_abs = sums->nan_seen ? (double)NAN : sums->max_abs;
    if (sums->ref2 > 0.0 && sums->x2 > 0.0)
        stats.cosine = sums->dot / (sqrt(sums->ref2) * sqrt(sums->x2));
    else if (sums->ref2 == 0.0 && sums->x2 == 0.0)
        stats.cosine = 1.0;
    else
        stats.cosine = sums->ref2 == sums->ref2 && sums->x2 == sums->x2 ? 0.0 : (double)NAN;
    return stats;
}

EKV_DEF ekv_error_stats ekv_compare_f32(const double *ref, const float *x, size_t n)
{
    ekv__error_sums sums;
    size_t i;
    memset(&sums, 0, sizeof sums);
    for (i = 0; ref && x && i < n; i++) ekv__error_add(&sums, ref[i], (double)x[i]);
    return ekv__error_finish(&sums);
}

EKV_DEF ekv_error_stats ekv_compare_f64(const double *ref, const double *x, size_t n)
{
    ekv__error_sums sums;
    size_t i;
    memset(&sums, 0, sizeof sums);
    for (i = 0; ref && x && i < n; i++) ekv__error_add(&sums, ref[i], x[i]);
    return ekv__error_finish(&sums);
}

EKV_DEF ekv_result ekv_attention_profile(const ekv_data *data, double softmax_scale,
                                         double *entropy, double *top5pct_mass)
{
    const char *fn = "ekv_attention_profile";
    ekv_result result = ekv__check_data(data, fn);
    double scale = 0.0, *p, entropy_sum = 0.0, mass_sum = 0.0;
    int b, h, t, count = 0;
    if (result != EKV_SUCCESS) return result;
    if (!entropy || !top5pct_mass) return ekv_set_error(EKV_ERR_INVALID_ARG, "%s: NULL output", fn);
    result = ekv__resolve_scale(softmax_scale, data->head_dim, fn, &scale);
    if (result != EKV_SUCCESS) return result;
    p = (double *)ekv__alloc((size_t)data->capacity, sizeof(double));
    if (!p) return EKV_ERR_OUT_OF_MEMORY;
    for (b = 0; b < data->batch; b++) {
        const int length = data->lengths[b];
        const int top = (int)ceil(0.05 * length) > 1 ? (int)ceil(0.05 * length) : 1;
        if (length == 0) continue;
        for (h = 0; h < data->heads; h++) {
            double e = 0.0, mass = 0.0;
            ekv__attention_probs(data, data->q + ((size_t)b * (size_t)data->heads + (size_t)h) *
                                                     (size_t)data->head_dim,
                                 b, h, scale, p);
            for (t = 0; t < length; t++)
                if (p[t] > 0.0) e -= p[t] * log(p[t]);
            qsort(p, (size_t)length, sizeof *p, ekv__compare_double);
            for (t = length - top; t < length; t++) mass += p[t];
            entropy_sum += e;
            mass_sum += mass;
            count++;
        }
    }
    ekv__free(p);
    *entropy = count ? entropy_sum / count : 0.0;
    *top5pct_mass = count ? mass_sum / count : 0.0;
    return EKV_SUCCESS;
}
