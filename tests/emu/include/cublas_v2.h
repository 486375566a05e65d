/* cublas_v2.h - the emulator's stand-in for the few cuBLAS calls ekv makes (the inference
   cycle's projections, src/ekv_cuda_cycle.inl): cublasCreate, cublasDestroy,
   cublasSetStream and cublasSgemm, with cuBLAS's signatures, enums and column-major
   semantics, computed on the host (the emulator's device memory is host memory).

   Not cuBLAS: no other routine, no tensor-op or TF32 modes, no pointer-mode device
   scalars. Each element of C is alpha x (sum over p in increasing order of
   op(A)[i][p] x op(B)[p][j], accumulated in float from 0) + beta x C (C not read when
   beta is 0): the order of ekv's CPU projection, so the emulator's cycle reproduces the
   CPU cycle's k and v bit for bit. The call first waits for its stream, since emulated
   kernels of that stream may still be writing A or B. Used only with -DEKV_EMULATOR
   (tests/emu/include on the include path); a real build includes the toolkit's header. */
#ifndef EKV_EMU_CUBLAS_V2_H
#define EKV_EMU_CUBLAS_V2_H

#include "cuda_runtime.h"

typedef enum cublasStatus_t {
    CUBLAS_STATUS_SUCCESS = 0,
    CUBLAS_STATUS_NOT_INITIALIZED = 1,
    CUBLAS_STATUS_ALLOC_FAILED = 3,
    CUBLAS_STATUS_INVALID_VALUE = 7,
    CUBLAS_STATUS_ARCH_MISMATCH = 8,
    CUBLAS_STATUS_MAPPING_ERROR = 11,
    CUBLAS_STATUS_EXECUTION_FAILED = 13,
    CUBLAS_STATUS_INTERNAL_ERROR = 14,
    CUBLAS_STATUS_NOT_SUPPORTED = 15
} cublasStatus_t;

typedef enum cublasOperation_t {
    CUBLAS_OP_N = 0,
    CUBLAS_OP_T = 1,
    CUBLAS_OP_C = 2
} cublasOperation_t;

struct ekv_emu_cublas_context {
    cudaStream_t stream;
};
typedef struct ekv_emu_cublas_context *cublasHandle_t;

inline cublasStatus_t cublasCreate(cublasHandle_t *handle)
{
    if (!handle) return CUBLAS_STATUS_INVALID_VALUE;
    *handle = new ekv_emu_cublas_context();
    (*handle)->stream = nullptr;
    return CUBLAS_STATUS_SUCCESS;
}

inline cublasStatus_t cublasDestroy(cublasHandle_t handle)
{
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    delete handle;
    return CUBLAS_STATUS_SUCCESS;
}

inline cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream)
{
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    handle->stream = stream;
    return CUBLAS_STATUS_SUCCESS;
}

inline cublasStatus_t cublasSgemm(cublasHandle_t handle, cublasOperation_t transa,
                                  cublasOperation_t transb, int m, int n, int k, const float *alpha,
                                  const float *A, int lda, const float *B, int ldb, const float *beta,
                                  float *C, int ldc)
{
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (m < 0 || n < 0 || k < 0 || !alpha || !beta || ldc < (m > 1 ? m : 1) ||
        lda < ((transa == CUBLAS_OP_N ? m : k) > 1 ? (transa == CUBLAS_OP_N ? m : k) : 1) ||
        ldb < ((transb == CUBLAS_OP_N ? k : n) > 1 ? (transb == CUBLAS_OP_N ? k : n) : 1))
        return CUBLAS_STATUS_INVALID_VALUE;
    if (cudaStreamSynchronize(handle->stream) != cudaSuccess) return CUBLAS_STATUS_EXECUTION_FAILED;
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            float sum = 0.0f;
            for (int p = 0; p < k; p++) {
                const float a = transa == CUBLAS_OP_N ? A[(size_t)p * lda + i] : A[(size_t)i * lda + p];
                const float b = transb == CUBLAS_OP_N ? B[(size_t)j * ldb + p] : B[(size_t)p * ldb + j];
                sum += a * b;
            }
            float *c = C + (size_t)j * ldc + i;
            *c = *beta == 0.0f ? *alpha * sum : *alpha * sum + *beta * *c;
        }
    return CUBLAS_STATUS_SUCCESS;
}

#endif /* EKV_EMU_CUBLAS_V2_H */
