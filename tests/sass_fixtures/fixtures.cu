/* tests/sass_fixtures/fixtures.cu - three tiny kernels whose main loop can be counted by
   hand, so that tests/test_sass_model.py can hold tests/sass_model.py to known answers:
   a copy (one 16-byte load and one 16-byte store per lane: memory bound), an FMA chain
   (one 4-byte load, 64 FFMA: FP32 pipe bound on sm_80, issue bound with the FMA pipe as
   busy as issue on sm_90) and an exp2 loop (one 4-byte load, 16 MUFU.EX2: XU bound).
   `#pragma unroll 1` keeps each grid-stride loop at one iteration per trip.
   Build: nvcc -arch=sm_90 -cubin -o build/sass_fixtures/fixtures_sm_90.cubin tests/sass_fixtures/fixtures.cu */

extern "C" __global__ void __launch_bounds__(128)
    sass_fixture_copy(const uint4 *__restrict__ in, uint4 *__restrict__ out, int n)
{
    const int stride = (int)(gridDim.x * blockDim.x);
#pragma unroll 1
    for (int i = (int)(blockIdx.x * blockDim.x + threadIdx.x); i < n; i += stride)
        out[i] = __ldg(in + i);
}

extern "C" __global__ void __launch_bounds__(128)
    sass_fixture_fma(const float *__restrict__ in, float *__restrict__ out, int n, float c)
{
    const int stride = (int)(gridDim.x * blockDim.x), first = (int)(blockIdx.x * blockDim.x + threadIdx.x);
    float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f}, sum = 0.0f;
#pragma unroll 1
    for (int i = first; i < n; i += stride) {
        const float x = __ldg(in + i);
#pragma unroll
        for (int j = 0; j < 64; j++) acc[j % 8] = fmaf(acc[j % 8], x, c);
    }
#pragma unroll
    for (int j = 0; j < 8; j++) sum += acc[j];
    out[first] = sum;
}

/* ex2.approx.ftz is one MUFU.EX2; exp2f() would add range handling around it */
static __device__ __forceinline__ float sass_fixture_ex2(float x)
{
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

extern "C" __global__ void __launch_bounds__(128)
    sass_fixture_exp2(const float *__restrict__ in, float *__restrict__ out, int n)
{
    const int stride = (int)(gridDim.x * blockDim.x), first = (int)(blockIdx.x * blockDim.x + threadIdx.x);
    float sum = 0.0f;
#pragma unroll 1
    for (int i = first; i < n; i += stride) {
        const float x = __ldg(in + i);
#pragma unroll
        for (int j = 0; j < 16; j++) sum += sass_fixture_ex2(x * (float)(j + 1));
    }
    out[first] = sum;
}

extern "C" __global__ void sass_fixture_attention_stub(float *out)
{
    out[threadIdx.x] = 0.0f;
}
