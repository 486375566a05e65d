/* cuda_runtime.h - ekv CPU execution emulator - stand-in for the CUDA runtime - same license as ekv (LICENSE)

   Put tests/emu/include first on the include path and CUDA source compiles with a host
   C++17 compiler and runs on the CPU: one OS thread per CUDA thread, real barriers, warp
   exchanges, atomics, host versions of the runtime calls. See tests/emu/README.md.

       g++ -std=c++17 -pthread -Itests/emu/include -x c++ program.cu

   Sections (grep ">>"):
       >>qualifiers     __global__, __shared__ (= static), ...
       >>vector-types   dim3, float4, uint4, ... with CUDA's alignment
       >>runtime-types  cudaError_t, enums, handles, cudaDeviceProp
       >>core           ekv_emu: fictitious device, bookkeeping, the block runner
       >>runtime-api    cudaMalloc, streams, events, graphs, attributes
       >>device         threadIdx, barriers, warp operations, atomics, math, loads
       >>launch         ekv_cuda_host_launch, ekv_cuda_host_dynamic_shared

   Only what real CUDA 13 also offers, with the same signatures, so that code which
   compiles here also compiles with nvcc. The exceptions are EKV_EMULATOR_ACTIVE,
   ekv_cuda_host_launch and ekv_cuda_host_dynamic_shared, which replace <<<>>> and
   `extern __shared__` in code that is not compiled by nvcc.
*/
#ifndef EKV_EMU_CUDA_RUNTIME_H
#define EKV_EMU_CUDA_RUNTIME_H

#if defined(__CUDACC__)
#error "tests/emu/include is for host compilers; nvcc must use the real CUDA headers"
#endif

#define EKV_EMULATOR_ACTIVE 1
#define CUDART_VERSION 13000
#define CUDARTAPI
#define CUDART_CB

/* Every standard header the emulator needs comes first: <memory> and <functional>
   contain __attribute__((__noinline__)), which must be parsed before __noinline__
   becomes a macro below. */
#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <cmath>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <math.h>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>
#include <deque>
#include <elf.h>
#include <fcntl.h>
#include <link.h>
#include <pthread.h>
#include <sys/mman.h>
#if !defined(__x86_64__)
#include <ucontext.h>
#endif
#include <unistd.h>

/* Which sanitizer the program is built with: both change how blocks run (see the block
   runner) and ThreadSanitizer must be told about the fibers. */
#if defined(__SANITIZE_THREAD__)
#define EKV_EMU_TSAN 1
#endif
#if defined(__SANITIZE_ADDRESS__)
#define EKV_EMU_ASAN 1
#endif
#if defined(__has_feature)
#if __has_feature(thread_sanitizer) && !defined(EKV_EMU_TSAN)
#define EKV_EMU_TSAN 1
#endif
#if __has_feature(address_sanitizer) && !defined(EKV_EMU_ASAN)
#define EKV_EMU_ASAN 1
#endif
#endif

#if defined(EKV_EMU_TSAN)
#include <sanitizer/tsan_interface.h>
extern "C" void __tsan_ignore_thread_begin(void);
extern "C" void __tsan_ignore_thread_end(void);
#endif
#if defined(EKV_EMU_ASAN)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

/* >>qualifiers ------------------------------------------------------------------------ */

/* Kernels contract a * b + c into fused multiply-adds, as nvcc does by default
   (-fmad=true); host code does not, as a host compiler for plain x86-64 does not. emu.mk
   builds with -ffp-contract=fast and, where the CPU has FMA, -DEKV_EMU_FMA, which gives
   kernels (only) the FMA instructions. A __device__ function contracts where it is inlined
   into a kernel, which __forceinline__ makes sure of; one compiled out of line does not. */
#if defined(EKV_EMU_FMA) && (defined(__x86_64__) || defined(__i386__))
#define __global__ __attribute__((target("fma")))
#else
#define __global__
#endif
#define __device__
#define __host__
#define __constant__
#define __managed__
#define __grid_constant__
#define __device_builtin__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)
/* Static shared memory: a thread_local static is one object per OS thread, and each block
   runs on an OS thread of its own, its CUDA threads as fibers on it. Under AddressSanitizer
   a plain static instead (ASan puts no redzones around thread_local variables), and blocks
   run one at a time. The marker before it lets the runner find the variable in the symbol
   table and fill it with 0xff bytes at the start of every block (see the block runner). */
#define EKV_EMU_SHARED_MARKER_(n) __attribute__((used, unused)) static char ekv_emu_shared_marker_##n;
#define EKV_EMU_SHARED_MARKER(n) EKV_EMU_SHARED_MARKER_(n)
#if defined(EKV_EMU_ASAN)
#define __shared__ EKV_EMU_SHARED_MARKER(__COUNTER__) static
#else
#define __shared__ EKV_EMU_SHARED_MARKER(__COUNTER__) static thread_local
#endif

/* >>vector-types ---------------------------------------------------------------------- */

/* CUDA code reads memory through other vector and half types than it was written with
   (a uint4 load viewed as four __half2); may_alias keeps that defined under GCC and Clang's
   strict aliasing. Scalars punned through unrelated scalar pointers still need
   -fno-strict-aliasing. */
#define EKV_EMU_ALIGNED_MAY_ALIAS(n) __attribute__((__aligned__(n), __may_alias__))

#define EKV_EMU_VEC1(T, name, align)                                                   \
    struct EKV_EMU_ALIGNED_MAY_ALIAS(align) name { T x; };                                               \
    inline name make_##name(T x) { name v; v.x = x; return v; }
#define EKV_EMU_VEC2(T, name, align)                                                   \
    struct EKV_EMU_ALIGNED_MAY_ALIAS(align) name { T x, y; };                                            \
    inline name make_##name(T x, T y) { name v; v.x = x; v.y = y; return v; }
#define EKV_EMU_VEC3(T, name, align)                                                   \
    struct EKV_EMU_ALIGNED_MAY_ALIAS(align) name { T x, y, z; };                                         \
    inline name make_##name(T x, T y, T z) { name v; v.x = x; v.y = y; v.z = z; return v; }
#define EKV_EMU_VEC4(T, name, align)                                                   \
    struct EKV_EMU_ALIGNED_MAY_ALIAS(align) name { T x, y, z, w; };                                      \
    inline name make_##name(T x, T y, T z, T w)                                        \
    { name v; v.x = x; v.y = y; v.z = z; v.w = w; return v; }

/* Alignments as in CUDA's vector_types.h; the 4-wide 64-bit types, deprecated in CUDA 13,
   are left out. */
EKV_EMU_VEC1(signed char, char1, 1)      EKV_EMU_VEC2(signed char, char2, 2)
EKV_EMU_VEC3(signed char, char3, 1)      EKV_EMU_VEC4(signed char, char4, 4)
EKV_EMU_VEC1(unsigned char, uchar1, 1)   EKV_EMU_VEC2(unsigned char, uchar2, 2)
EKV_EMU_VEC3(unsigned char, uchar3, 1)   EKV_EMU_VEC4(unsigned char, uchar4, 4)
EKV_EMU_VEC1(short, short1, 2)           EKV_EMU_VEC2(short, short2, 4)
EKV_EMU_VEC3(short, short3, 2)           EKV_EMU_VEC4(short, short4, 8)
EKV_EMU_VEC1(unsigned short, ushort1, 2) EKV_EMU_VEC2(unsigned short, ushort2, 4)
EKV_EMU_VEC3(unsigned short, ushort3, 2) EKV_EMU_VEC4(unsigned short, ushort4, 8)
EKV_EMU_VEC1(int, int1, 4)               EKV_EMU_VEC2(int, int2, 8)
EKV_EMU_VEC3(int, int3, 4)               EKV_EMU_VEC4(int, int4, 16)
EKV_EMU_VEC1(unsigned int, uint1, 4)     EKV_EMU_VEC2(unsigned int, uint2, 8)
EKV_EMU_VEC3(unsigned int, uint3, 4)     EKV_EMU_VEC4(unsigned int, uint4, 16)
EKV_EMU_VEC1(long, long1, sizeof(long))  EKV_EMU_VEC2(long, long2, 2 * sizeof(long))
EKV_EMU_VEC3(long, long3, sizeof(long))
EKV_EMU_VEC1(unsigned long, ulong1, sizeof(long))
EKV_EMU_VEC2(unsigned long, ulong2, 2 * sizeof(long))
EKV_EMU_VEC3(unsigned long, ulong3, sizeof(long))
EKV_EMU_VEC1(long long, longlong1, 8)    EKV_EMU_VEC2(long long, longlong2, 16)
EKV_EMU_VEC3(long long, longlong3, 8)
EKV_EMU_VEC1(unsigned long long, ulonglong1, 8)
EKV_EMU_VEC2(unsigned long long, ulonglong2, 16)
EKV_EMU_VEC3(unsigned long long, ulonglong3, 8)
EKV_EMU_VEC1(float, float1, 4)           EKV_EMU_VEC2(float, float2, 8)
EKV_EMU_VEC3(float, float3, 4)           EKV_EMU_VEC4(float, float4, 16)
EKV_EMU_VEC1(double, double1, 8)         EKV_EMU_VEC2(double, double2, 16)
EKV_EMU_VEC3(double, double3, 8)

#undef EKV_EMU_VEC1
#undef EKV_EMU_VEC2
#undef EKV_EMU_VEC3
#undef EKV_EMU_VEC4

struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
    constexpr operator uint3() const { return uint3{x, y, z}; }
};

/* >>runtime-types --------------------------------------------------------------------- */

/* One list gives the enum, cudaGetErrorName and cudaGetErrorString; codes as in CUDA. */
#define EKV_EMU_ERRORS(X)                                                                 \
    X(cudaSuccess, 0, "no error")                                                        \
    X(cudaErrorInvalidValue, 1, "invalid argument")                                      \
    X(cudaErrorMemoryAllocation, 2, "out of memory")                                     \
    X(cudaErrorInitializationError, 3, "initialization error")                           \
    X(cudaErrorInvalidConfiguration, 9, "invalid configuration argument")                \
    X(cudaErrorInvalidSymbol, 13, "invalid device symbol")                               \
    X(cudaErrorInvalidDevicePointer, 17, "invalid device pointer")                       \
    X(cudaErrorInvalidMemcpyDirection, 21, "invalid copy direction for memcpy")          \
    X(cudaErrorInsufficientDriver, 35,                                                   \
      "CUDA driver version is insufficient for CUDA runtime version")                    \
    X(cudaErrorInvalidDeviceFunction, 98, "invalid device function")                     \
    X(cudaErrorNoDevice, 100, "no CUDA-capable device is detected")                      \
    X(cudaErrorInvalidDevice, 101, "invalid device ordinal")                             \
    X(cudaErrorInvalidResourceHandle, 400, "invalid resource handle")                    \
    X(cudaErrorIllegalState, 401, "the operation cannot be performed in the present state") \
    X(cudaErrorNotReady, 600, "device not ready")                                        \
    X(cudaErrorIllegalAddress, 700, "an illegal memory access was encountered")          \
    X(cudaErrorLaunchOutOfResources, 701, "too many resources requested for launch")     \
    X(cudaErrorAssert, 710, "device-side assert triggered")                              \
    X(cudaErrorLaunchFailure, 719, "unspecified launch failure")                         \
    X(cudaErrorNotPermitted, 800, "operation not permitted")                             \
    X(cudaErrorNotSupported, 801, "operation not supported")                             \
    X(cudaErrorStreamCaptureUnsupported, 900, "operation not permitted when stream is capturing") \
    X(cudaErrorStreamCaptureInvalidated, 901,                                            \
      "operation failed due to a previous error during capture")                         \
    X(cudaErrorStreamCaptureUnmatched, 903, "capture was not initiated in this stream")  \
    X(cudaErrorStreamCaptureImplicit, 906,                                               \
      "operation would make the legacy stream depend on a capturing blocking stream")    \
    X(cudaErrorStreamCaptureWrongThread, 908,                                            \
      "attempt to terminate a thread-local capture sequence from another thread")        \
    X(cudaErrorUnknown, 999, "unknown error")

#define EKV_EMU_ERROR_ENUM(name, code, text) name = code,
enum cudaError : int { EKV_EMU_ERRORS(EKV_EMU_ERROR_ENUM) };
#undef EKV_EMU_ERROR_ENUM
typedef enum cudaError cudaError_t;

/* A fixed underlying type, so that any int a caller casts in is a valid value to reject. */
enum cudaMemcpyKind : int {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4
};

enum cudaStreamCaptureStatus : int {
    cudaStreamCaptureStatusNone = 0,
    cudaStreamCaptureStatusActive = 1,
    cudaStreamCaptureStatusInvalidated = 2
};

enum cudaStreamCaptureMode : int {
    cudaStreamCaptureModeGlobal = 0,
    cudaStreamCaptureModeThreadLocal = 1,
    cudaStreamCaptureModeRelaxed = 2
};

enum cudaFuncAttribute : int {
    cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
    cudaFuncAttributePreferredSharedMemoryCarveout = 9
};

enum cudaFuncCache : int {
    cudaFuncCachePreferNone = 0,
    cudaFuncCachePreferShared = 1,
    cudaFuncCachePreferL1 = 2,
    cudaFuncCachePreferEqual = 3
};

enum cudaGraphInstantiateFlags : int { cudaGraphInstantiateFlagAutoFreeOnLaunch = 1 };

enum cudaDeviceAttr : int {
    cudaDevAttrMaxThreadsPerBlock = 1,
    cudaDevAttrMaxBlockDimX = 2,
    cudaDevAttrMaxBlockDimY = 3,
    cudaDevAttrMaxBlockDimZ = 4,
    cudaDevAttrMaxGridDimX = 5,
    cudaDevAttrMaxGridDimY = 6,
    cudaDevAttrMaxGridDimZ = 7,
    cudaDevAttrMaxSharedMemoryPerBlock = 8,
    cudaDevAttrTotalConstantMemory = 9,
    cudaDevAttrWarpSize = 10,
    cudaDevAttrMaxRegistersPerBlock = 12,
    cudaDevAttrClockRate = 13,
    cudaDevAttrMultiProcessorCount = 16,
    cudaDevAttrIntegrated = 18,
    cudaDevAttrConcurrentKernels = 31,
    cudaDevAttrEccEnabled = 32,
    cudaDevAttrPciBusId = 33,
    cudaDevAttrPciDeviceId = 34,
    cudaDevAttrMemoryClockRate = 36,
    cudaDevAttrGlobalMemoryBusWidth = 37,
    cudaDevAttrL2CacheSize = 38,
    cudaDevAttrMaxThreadsPerMultiProcessor = 39,
    cudaDevAttrAsyncEngineCount = 40,
    cudaDevAttrUnifiedAddressing = 41,
    cudaDevAttrComputeCapabilityMajor = 75,
    cudaDevAttrComputeCapabilityMinor = 76,
    cudaDevAttrMaxSharedMemoryPerMultiprocessor = 81,
    cudaDevAttrMaxRegistersPerMultiprocessor = 82,
    cudaDevAttrManagedMemory = 83,
    cudaDevAttrCooperativeLaunch = 95,
    cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
    cudaDevAttrMaxBlocksPerMultiprocessor = 106,
    cudaDevAttrMaxPersistingL2CacheSize = 108
};

#define cudaHostAllocDefault 0x00
#define cudaHostAllocPortable 0x01
#define cudaHostAllocMapped 0x02
#define cudaHostAllocWriteCombined 0x04
#define cudaStreamDefault 0x00
#define cudaStreamNonBlocking 0x01
#define cudaEventDefault 0x00
#define cudaEventBlockingSync 0x01
#define cudaEventDisableTiming 0x02
#define cudaStreamLegacy ((cudaStream_t)0x1)
#define cudaStreamPerThread ((cudaStream_t)0x2)

typedef struct CUstream_st *cudaStream_t;
typedef struct CUevent_st *cudaEvent_t;
typedef struct CUgraph_st *cudaGraph_t;
typedef struct CUgraphExec_st *cudaGraphExec_t;
typedef struct CUgraphNode_st *cudaGraphNode_t;
typedef void (*cudaHostFn_t)(void *userData);

struct CUuuid_st { char bytes[16]; };
typedef struct CUuuid_st cudaUUID_t;

/* The fields of CUDA 13's cudaDeviceProp that describe this device; fields CUDA 13 dropped
   (clockRate, memoryClockRate, ...) are absent here too: read them as attributes. */
struct cudaDeviceProp {
    char name[256];
    cudaUUID_t uuid;
    size_t totalGlobalMem;
    size_t sharedMemPerBlock;
    int regsPerBlock;
    int warpSize;
    size_t memPitch;
    int maxThreadsPerBlock;
    int maxThreadsDim[3];
    int maxGridSize[3];
    size_t totalConstMem;
    int major;
    int minor;
    size_t textureAlignment;
    int multiProcessorCount;
    int integrated;
    int canMapHostMemory;
    int concurrentKernels;
    int ECCEnabled;
    int pciBusID;
    int pciDeviceID;
    int pciDomainID;
    int asyncEngineCount;
    int unifiedAddressing;
    int memoryBusWidth;
    int l2CacheSize;
    int persistingL2CacheMaxSize;
    int maxThreadsPerMultiProcessor;
    size_t sharedMemPerMultiprocessor;
    int regsPerMultiprocessor;
    int managedMemory;
    int isMultiGpuBoard;
    int cooperativeLaunch;
    size_t sharedMemPerBlockOptin;
    int maxBlocksPerMultiProcessor;
    size_t reservedSharedMemPerBlock;
};

struct cudaFuncAttributes {
    size_t sharedSizeBytes;
    size_t constSizeBytes;
    size_t localSizeBytes;
    int maxThreadsPerBlock;
    int numRegs;
    int ptxVersion;
    int binaryVersion;
    int cacheModeCA;
    int maxDynamicSharedSizeBytes;
    int preferredShmemCarveout;
};

/* Handles. Graph nodes are closures: replaying a graph runs them in capture order. */
struct CUgraphNode_st { std::function<cudaError_t()> run; };
struct CUgraph_st { std::vector<std::unique_ptr<CUgraphNode_st>> nodes; };
struct CUgraphExec_st { std::vector<std::function<cudaError_t()>> nodes; };
struct CUstream_st {
    unsigned int flags;
    cudaStreamCaptureStatus capture_status;
    cudaStreamCaptureMode capture_mode;
    CUgraph_st *graph;
};
struct CUevent_st {
    unsigned int flags;
    bool recorded;
    std::chrono::steady_clock::time_point when;
};

/* >>core ------------------------------------------------------------------------------ */

namespace ekv_emu {

/* ---- the fictitious device ---- */

struct arch_limits {
    int sm;                /* compute capability x 10 */
    int shared_optin;      /* cudaDevAttrMaxSharedMemoryPerBlockOptin */
    int shared_per_sm;
    int threads_per_sm;
    int blocks_per_sm;
};

/* Per-architecture limits as the real parts report them; an unlisted sm gets the row of
   the nearest older one. */
inline arch_limits limits_for(int sm)
{
    static const arch_limits table[] = {
        {70, 98304, 98304, 2048, 32},   {75, 65536, 65536, 1024, 16},
        {80, 166912, 167936, 2048, 32}, {86, 101376, 102400, 1536, 16},
        {87, 166912, 167936, 1536, 16}, {89, 101376, 102400, 1536, 24},
        {90, 232448, 233472, 2048, 32}, {100, 232448, 233472, 2048, 32},
        {120, 101376, 102400, 1536, 32},
    };
    arch_limits pick = table[0];
    for (const arch_limits &row : table)
        if (row.sm <= sm) pick = row;
    return pick;
}

constexpr int default_shared_per_block = 48 * 1024;
constexpr int l2_bytes = 1 << 20;
constexpr int memory_clock_khz = 1500000;
constexpr int memory_bus_bits = 256;
constexpr int core_clock_khz = 1500000;

/* How a launch runs its blocks (see the block runner). ThreadSanitizer judges races by
   happens-before, not by overlap in time, so it reports races between blocks that run one
   after another just as well; its vector clocks grow with the threads alive, which makes
   one block at a time the faster default under it. */
struct schedule {
    std::uint64_t seed = 1;
#if defined(EKV_EMU_TSAN)
    unsigned concurrent_blocks = 1;
#else
    unsigned concurrent_blocks = 4;
#endif
    bool sequential = false;
};

struct device_config {
    int count = 1;
    int major = 9;
    int minor = 0;
    int sms = 4;
    size_t memory_bytes = size_t(1) << 30;
    schedule plan;
};

/* Accepts a decimal number with an optional K, M or G suffix (powers of 1024). */
inline bool parse_size(const char *text, unsigned long long *out)
{
    if (text == nullptr || *text < '0' || *text > '9') return false;
    char *end = nullptr;
    unsigned long long value = std::strtoull(text, &end, 10);
    unsigned shift = 0;
    if (*end == 'K' || *end == 'k') shift = 10;
    else if (*end == 'M' || *end == 'm') shift = 20;
    else if (*end == 'G' || *end == 'g') shift = 30;
    if (shift != 0) ++end;
    if (*end != '\0' || value > (~0ull >> shift)) return false;
    *out = value << shift;
    return true;
}

inline void ignore_variable(const char *name, const char *value, const char *expected)
{
    std::fprintf(stderr, "ekv emulator: ignoring %s=%s (expected %s)\n", name, value, expected);
}

/* The device as the environment describes it: read at first use and at cudaDeviceReset. */
inline device_config read_device_config()
{
    device_config config;
    unsigned long long number = 0;
    if (const char *sm = std::getenv("EKV_EMU_SM")) {
        const char *dot = std::strchr(sm, '.');
        unsigned long long minor = 0;
        bool ok;
        if (dot != nullptr) {
            std::string major_text(sm, size_t(dot - sm));
            ok = parse_size(major_text.c_str(), &number) && parse_size(dot + 1, &minor) && minor < 10;
        } else {
            ok = parse_size(sm, &number) && number >= 10;
            minor = number % 10;
            number /= 10;
        }
        if (ok && number >= 1 && number <= 99) {
            config.major = int(number);
            config.minor = int(minor);
        } else {
            ignore_variable("EKV_EMU_SM", sm, "a compute capability such as 75, 89, 90 or 8.9");
        }
    }
    if (const char *sms = std::getenv("EKV_EMU_SMS")) {
        if (parse_size(sms, &number) && number >= 1 && number <= 1024) config.sms = int(number);
        else ignore_variable("EKV_EMU_SMS", sms, "a multiprocessor count in [1, 1024]");
    }
    if (const char *bytes = std::getenv("EKV_EMU_MEMORY_BYTES")) {
        if (parse_size(bytes, &number) && number >= 1) config.memory_bytes = size_t(number);
        else ignore_variable("EKV_EMU_MEMORY_BYTES", bytes, "a byte count such as 1073741824 or 1G");
    }
    if (const char *devices = std::getenv("EKV_EMU_DEVICES")) {
        if (parse_size(devices, &number) && number <= 16) config.count = int(number);
        else ignore_variable("EKV_EMU_DEVICES", devices, "a device count in [0, 16]");
    }
    if (const char *seed = std::getenv("EKV_EMU_SEED")) {
        if (parse_size(seed, &number)) config.plan.seed = number;
        else ignore_variable("EKV_EMU_SEED", seed, "a non-negative integer");
    }
    if (const char *blocks = std::getenv("EKV_EMU_CONCURRENT_BLOCKS")) {
        if (parse_size(blocks, &number) && number >= 1 && number <= 64) config.plan.concurrent_blocks = unsigned(number);
        else ignore_variable("EKV_EMU_CONCURRENT_BLOCKS", blocks, "a block count in [1, 64]");
    }
    if (const char *sequential = std::getenv("EKV_EMU_SEQUENTIAL")) {
        if (std::strcmp(sequential, "0") == 0 || std::strcmp(sequential, "1") == 0)
            config.plan.sequential = sequential[0] == '1';
        else ignore_variable("EKV_EMU_SEQUENTIAL", sequential, "0 or 1");
    }
    return config;
}

/* ---- runtime bookkeeping ---- */

struct runtime_state {
    std::mutex mutex;
    bool configured = false;
    device_config device;
    std::map<std::uintptr_t, size_t> device_allocations; /* base -> requested bytes */
    std::map<std::uintptr_t, size_t> host_allocations;
    size_t device_bytes_used = 0;
    std::set<CUstream_st *> streams;
    std::set<CUevent_st *> events;
    std::set<CUgraph_st *> graphs;
    std::set<CUgraphExec_st *> graph_execs;
    std::map<std::uintptr_t, int> max_dynamic_shared; /* per kernel, set by cudaFuncSetAttribute */
    cudaError_t sticky_error = cudaSuccess;          /* a failed launch, until cudaDeviceReset */
    std::uint64_t launches = 0; /* since the last reset: with the seed, picks the block order */
};

/* Never destroyed, so that runtime calls from static destructors still work; everything it
   owns stays reachable, which keeps LeakSanitizer quiet about it. */
inline runtime_state &state()
{
    static runtime_state *instance = new runtime_state();
    return *instance;
}

inline cudaError_t &last_error()
{
    static thread_local cudaError_t error = cudaSuccess;
    return error;
}

inline int &current_device()
{
    static thread_local int device = 0;
    return device;
}

inline cudaError_t note(cudaError_t error)
{
    if (error != cudaSuccess) last_error() = error;
    return error;
}

inline const device_config &device(runtime_state &s)
{
    if (!s.configured) {
        s.device = read_device_config();
        s.configured = true;
    }
    return s.device;
}

inline cudaError_t check_device(runtime_state &s)
{
    return device(s).count == 0 ? cudaErrorNoDevice : cudaSuccess;
}

inline cudaError_t check_device_ordinal(runtime_state &s, int ordinal)
{
    if (device(s).count == 0) return cudaErrorNoDevice;
    return (ordinal < 0 || ordinal >= device(s).count) ? cudaErrorInvalidDevice : cudaSuccess;
}

template <typename T>
inline std::uintptr_t address_of(T *pointer)
{
    std::uintptr_t value = 0;
    static_assert(sizeof(pointer) == sizeof(value), "pointers must fit in uintptr_t");
    std::memcpy(&value, &pointer, sizeof(value));
    return value;
}

/* Whether [pointer, pointer + bytes) lies inside one allocation of `allocations`. */
inline bool inside(const std::map<std::uintptr_t, size_t> &allocations, const void *pointer, size_t bytes)
{
    const std::uintptr_t address = address_of(pointer);
    auto next = allocations.upper_bound(address);
    if (next == allocations.begin()) return false;
    --next;
    return address - next->first <= next->second && bytes <= next->second - (address - next->first);
}

inline bool touches(const std::map<std::uintptr_t, size_t> &allocations, const void *pointer)
{
    return inside(allocations, pointer, 1);
}

/* Strict captures forbid calls that would synchronize with the captured work. */
inline bool strict_capture_active(runtime_state &s)
{
    for (CUstream_st *stream : s.streams)
        if (stream->capture_status != cudaStreamCaptureStatusNone &&
            stream->capture_mode != cudaStreamCaptureModeRelaxed)
            return true;
    return false;
}

/* An unsafe call during a strict capture fails and invalidates the capture, as in CUDA. */
inline cudaError_t forbid_during_capture(runtime_state &s, cudaError_t error)
{
    if (!strict_capture_active(s)) return cudaSuccess;
    for (CUstream_st *stream : s.streams)
        if (stream->capture_status == cudaStreamCaptureStatusActive &&
            stream->capture_mode != cudaStreamCaptureModeRelaxed)
            stream->capture_status = cudaStreamCaptureStatusInvalidated;
    return error;
}

inline bool is_builtin_stream(cudaStream_t stream)
{
    return stream == nullptr || stream == cudaStreamLegacy || stream == cudaStreamPerThread;
}

inline cudaError_t find_stream(runtime_state &s, cudaStream_t stream, CUstream_st **out)
{
    *out = nullptr;
    if (is_builtin_stream(stream)) return cudaSuccess;
    if (s.streams.count(stream) == 0) return cudaErrorInvalidResourceHandle;
    *out = stream;
    return cudaSuccess;
}

/* Runs `operation` now (all work is synchronous), or records it when `stream` captures. */
inline cudaError_t enqueue(cudaStream_t stream, std::function<cudaError_t()> operation)
{
    runtime_state &s = state();
    std::unique_lock<std::mutex> lock(s.mutex);
    if (cudaError_t error = check_device(s)) return note(error);
    if (s.sticky_error != cudaSuccess) return note(s.sticky_error);
    CUstream_st *target = nullptr;
    if (cudaError_t error = find_stream(s, stream, &target)) return note(error);
    if (target != nullptr && target->capture_status == cudaStreamCaptureStatusActive) {
        target->graph->nodes.push_back(std::unique_ptr<CUgraphNode_st>(new CUgraphNode_st{std::move(operation)}));
        return cudaSuccess;
    }
    if (target != nullptr && target->capture_status == cudaStreamCaptureStatusInvalidated)
        return note(cudaErrorStreamCaptureInvalidated);
    if (target == nullptr && stream != cudaStreamPerThread) {
        /* The legacy stream waits for every blocking stream, a capturing one included. */
        bool blocking_capture = false;
        for (CUstream_st *other : s.streams)
            if (other->capture_status == cudaStreamCaptureStatusActive && (other->flags & cudaStreamNonBlocking) == 0) {
                other->capture_status = cudaStreamCaptureStatusInvalidated;
                blocking_capture = true;
            }
        if (blocking_capture) return note(cudaErrorStreamCaptureImplicit);
    }
    lock.unlock();
    return note(operation());
}

/* ---- sanitizer hooks ----

   CUDA threads are fibers (see the block runner below), which AddressSanitizer and
   ThreadSanitizer must be told about. For ThreadSanitizer each fiber is a thread of its
   own, and the runner's bookkeeping is hidden from it: the only happens-before edges it
   sees are the ones CUDA guarantees, made explicit with acquire and release. */

inline void tsan_acquire(const void *address)
{
#if defined(EKV_EMU_TSAN)
    __tsan_acquire(const_cast<void *>(address));
#else
    (void)address;
#endif
}

inline void tsan_release(const void *address)
{
#if defined(EKV_EMU_TSAN)
    __tsan_release(const_cast<void *>(address));
#else
    (void)address;
#endif
}

/* ThreadSanitizer neither checks nor records the memory accesses made in its scope. */
struct tsan_ignore_scope {
#if defined(EKV_EMU_TSAN)
    tsan_ignore_scope() { __tsan_ignore_thread_begin(); }
    ~tsan_ignore_scope() { __tsan_ignore_thread_end(); }
#else
    tsan_ignore_scope() {}
#endif
    tsan_ignore_scope(const tsan_ignore_scope &) = delete;
    tsan_ignore_scope &operator=(const tsan_ignore_scope &) = delete;
};

/* ---- the block runner: one fiber per CUDA thread, one OS thread per block ----

   Each block runs on an OS thread of its own, created for it, and each of its CUDA
   threads is a fiber on that OS thread (switched by switch_stack below on x86-64, by
   ucontext elsewhere). A fiber runs until it waits at a
   barrier or a warp operation, or exits; then the block's scheduler picks the next ready
   fiber, at random from the launch's seed. Several blocks run at once, each on its own OS
   thread, in a random order drawn from the same seed.

   Static __shared__ variables are thread_local (see >>qualifiers), so each block has its
   own; the block's fresh OS thread gives them fresh storage, which the runner fills with
   0xff bytes before the first fiber starts, as it does dynamic shared memory. Under
   AddressSanitizer they stay ordinary static variables, which keep their redzones; blocks
   then run one at a time (in the same random order).

   For ThreadSanitizer, fibers do not synchronize by switching: threads of a block
   synchronize at __syncthreads, lanes of a warp at warp operations, the host with the
   grid at the start and the end of a launch, and blocks with one another only through
   the kernel's own atomics. */

struct launch_abort {}; /* thrown through kernel code to end the threads of a failed launch */

enum fiber_state : unsigned char { fiber_ready, fiber_at_barrier, fiber_at_warp_op, fiber_exited };

enum warp_op : int {
    op_shfl_idx, op_shfl_up, op_shfl_down, op_shfl_xor, op_ballot, op_any, op_all, op_syncwarp,
    op_reduce_add, op_reduce_min_signed, op_reduce_max_signed, op_reduce_min_unsigned,
    op_reduce_max_unsigned, op_reduce_and, op_reduce_or, op_reduce_xor
};

inline const char *warp_op_name(int op)
{
    static const char *const names[] = {
        "__shfl_sync", "__shfl_up_sync", "__shfl_down_sync", "__shfl_xor_sync", "__ballot_sync",
        "__any_sync", "__all_sync", "__syncwarp", "__reduce_add_sync", "__reduce_min_sync",
        "__reduce_max_sync", "__reduce_min_sync", "__reduce_max_sync", "__reduce_and_sync",
        "__reduce_or_sync", "__reduce_xor_sync"};
    return names[op];
}

/* What a lane reads from a lane that does not take part in its shuffle: undefined in
   CUDA; here all one bits (NaN as a float or double, -1 as a signed integer). */
constexpr unsigned long long poison_bits = ~0ull;

/* Where a barrier was called from, for the divergent-barrier check and the diagnostics. */
struct source_site {
    const char *file = "";
    int line = 0;
};

inline bool same_site(const source_site &a, const source_site &b)
{
    return a.line == b.line && std::strcmp(a.file, b.file) == 0;
}

inline std::string site_text(const source_site &site) { return std::string(site.file) + ":" + std::to_string(site.line); }

/* One lane's side of a warp operation: what it brought and, once every lane of its group
   has arrived, what it gets back. The two sync bytes are ThreadSanitizer addresses. */
struct lane_slot {
    bool posted = false;
    bool done = false;
    int op = 0;
    unsigned group = 0;
    unsigned long long value = 0;
    int arg = 0;
    int width = 32;
    unsigned long long result = 0;
    char arrived_sync = 0; /* released by the lane when it arrives */
    char leave_sync = 0;   /* released for the lane when its operation completes */
};

struct block_run;

struct thread_context {
    uint3 thread_idx{};
    uint3 block_idx{};
    dim3 block_dim{};
    dim3 grid_dim{};
    unsigned linear = 0; /* threadIdx.x + threadIdx.y * blockDim.x + ... */
    block_run *block = nullptr;
};

struct fiber {
#if defined(__x86_64__)
    void *stack_pointer = nullptr; /* while it is not running */
#else
    ucontext_t context;
#endif
    thread_context where;
    fiber_state state = fiber_ready;
    bool started = false;
    unsigned char *stack = nullptr;
    size_t stack_bytes = 0;
    void *tsan_fiber = nullptr;
    void *asan_fake_stack = nullptr;
    const char *barrier_name = nullptr;
    source_site barrier_site;
    int barrier_result = 0;
    lane_slot slot;
};

/* The fiber this OS thread is running, or null outside kernel code. */
inline thread_local fiber *current_fiber = nullptr;

/* Kernel code reads its indices here; ThreadSanitizer need not see the runner's records. */
#if defined(EKV_EMU_TSAN)
__attribute__((no_sanitize("thread")))
#endif
inline const thread_context &context_view()
{
    static const thread_context outside_kernels;
    const fiber *f = current_fiber;
    return f != nullptr ? f->where : outside_kernels;
}

inline unsigned popcount(unsigned x) { return unsigned(__builtin_popcount(x)); }

/* "0-31,40,48-63" */
inline std::string id_ranges(const std::vector<unsigned> &ids)
{
    std::string text;
    for (size_t i = 0; i < ids.size();) {
        size_t j = i;
        while (j + 1 < ids.size() && ids[j + 1] == ids[j] + 1) ++j;
        char part[32];
        if (j == i) std::snprintf(part, sizeof part, "%u", ids[i]);
        else std::snprintf(part, sizeof part, "%u-%u", ids[i], ids[j]);
        if (!text.empty()) text += ",";
        text += part;
        i = j + 1;
    }
    return text;
}

/* splitmix64: a seed and a counter give every launch and block its own stream. */
inline std::uint64_t next_random(std::uint64_t &state)
{
    std::uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* ---- static __shared__ variables: found in the symbol table, filled per block ----

   `__shared__` also declares a marker, `ekv_emu_shared_marker_N`, next to the variable.
   The symbol table names both as locals of the same function (`_ZZ<function>E...`), so
   the variables to fill are the function-local statics of the functions that hold a
   marker. A stripped program has no symbol table: its static shared memory is not filled
   (one notice on stderr). */

struct shared_object {
    std::uintptr_t offset; /* from the module's TLS block (thread_local) or load address */
    size_t size;
};

struct shared_module {
    std::uintptr_t load_address;
    std::vector<shared_object> objects;
};

inline bool read_exactly(int fd, void *out, size_t bytes, off_t where)
{
    unsigned char *cursor = static_cast<unsigned char *>(out);
    while (bytes > 0) {
        const ssize_t got = pread(fd, cursor, bytes, where);
        if (got <= 0) return false;
        cursor += got;
        bytes -= size_t(got);
        where += got;
    }
    return true;
}

/* The __shared__ variables of one ELF file; false when it has no symbol table. */
inline bool find_shared_objects(const char *path, unsigned char symbol_type, std::vector<shared_object> &found)
{
    const int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    bool has_symbols = false;
    ElfW(Ehdr) header;
    if (read_exactly(fd, &header, sizeof header, 0) && std::memcmp(header.e_ident, ELFMAG, SELFMAG) == 0 &&
        header.e_shentsize == sizeof(ElfW(Shdr))) {
        std::vector<ElfW(Shdr)> sections(header.e_shnum);
        if (read_exactly(fd, sections.data(), sections.size() * sizeof(ElfW(Shdr)), off_t(header.e_shoff))) {
            for (const ElfW(Shdr) &table : sections) {
                if (table.sh_type != SHT_SYMTAB || table.sh_link >= sections.size()) continue;
                const ElfW(Shdr) &strings = sections[table.sh_link];
                std::vector<ElfW(Sym)> symbols(table.sh_size / sizeof(ElfW(Sym)));
                std::vector<char> names(strings.sh_size + 1, '\0');
                if (!read_exactly(fd, symbols.data(), symbols.size() * sizeof(ElfW(Sym)), off_t(table.sh_offset)) ||
                    !read_exactly(fd, names.data(), strings.sh_size, off_t(strings.sh_offset)))
                    continue;
                has_symbols = true;
                static const char marker[] = "ekv_emu_shared_marker_";
                std::vector<std::string> functions; /* "_ZZ<function>E" of each marker */
                for (const ElfW(Sym) &symbol : symbols) {
                    if (symbol.st_name >= strings.sh_size) continue;
                    const std::string name(&names[symbol.st_name]);
                    const size_t at = name.find(marker);
                    if (name.compare(0, 3, "_ZZ") != 0 || at == std::string::npos) continue;
                    size_t start = at;
                    while (start > 0 && name[start - 1] >= '0' && name[start - 1] <= '9') --start;
                    if (start > 3 && name[start - 1] == 'E') functions.push_back(name.substr(0, start));
                }
                std::sort(functions.begin(), functions.end());
                functions.erase(std::unique(functions.begin(), functions.end()), functions.end());
                for (const ElfW(Sym) &symbol : symbols) {
                    if (ELF64_ST_TYPE(symbol.st_info) != symbol_type || symbol.st_size == 0 ||
                        symbol.st_name >= strings.sh_size)
                        continue;
                    const char *name = &names[symbol.st_name];
                    if (std::strncmp(name, "_ZZ", 3) != 0 || std::strstr(name, marker) != nullptr) continue;
                    auto next = std::upper_bound(functions.begin(), functions.end(), std::string(name));
                    if (next != functions.begin() && std::strncmp(name, (next - 1)->c_str(), (next - 1)->size()) == 0)
                        found.push_back(shared_object{std::uintptr_t(symbol.st_value), size_t(symbol.st_size)});
                }
            }
        }
    }
    close(fd);
    return has_symbols;
}

#if defined(EKV_EMU_ASAN)
constexpr unsigned char shared_symbol_type = STT_OBJECT;
#else
constexpr unsigned char shared_symbol_type = STT_TLS;
#endif

inline int collect_shared_module(struct dl_phdr_info *info, size_t, void *argument)
{
    auto *modules = static_cast<std::vector<shared_module> *>(argument);
    const bool main_program = info->dlpi_name == nullptr || info->dlpi_name[0] == '\0';
    shared_module module{std::uintptr_t(info->dlpi_addr), {}};
    const bool has_symbols =
        find_shared_objects(main_program ? "/proc/self/exe" : info->dlpi_name, shared_symbol_type, module.objects);
    if (main_program && !has_symbols)
        std::fprintf(stderr, "ekv emulator: the program has no symbol table; static __shared__ memory is not "
                             "filled with 0xff bytes at each block\n");
    if (!module.objects.empty()) modules->push_back(std::move(module));
    return 0;
}

inline const std::vector<shared_module> &shared_modules()
{
    static const std::vector<shared_module> modules = [] {
        std::vector<shared_module> found;
        dl_iterate_phdr(collect_shared_module, &found);
        return found;
    }();
    return modules;
}

inline int fill_shared_module(struct dl_phdr_info *info, size_t, void *)
{
    for (const shared_module &module : shared_modules()) {
        if (module.load_address != std::uintptr_t(info->dlpi_addr)) continue;
#if defined(EKV_EMU_ASAN)
        unsigned char *base = reinterpret_cast<unsigned char *>(module.load_address);
#else
        unsigned char *base = static_cast<unsigned char *>(info->dlpi_tls_data);
        if (base == nullptr) continue;
#endif
        for (const shared_object &object : module.objects) {
            unsigned char *start = base + object.offset;
            size_t size = object.size;
#if defined(EKV_EMU_ASAN)
            /* Clang's symbol sizes include the redzone that follows the variable. */
            if (void *redzone = __asan_region_is_poisoned(start, size))
                size = size_t(static_cast<unsigned char *>(redzone) - start);
#endif
            std::memset(start, 0xff, size);
        }
    }
    return 0;
}

/* Fills this OS thread's static __shared__ variables with 0xff bytes. */
inline void poison_static_shared()
{
    if (!shared_modules().empty()) dl_iterate_phdr(fill_shared_module, nullptr);
}

/* ---- launches and blocks ---- */

/* Fibers in flight at most, over all the blocks that run at once. */
constexpr unsigned fiber_budget = 4096;
constexpr size_t fiber_stack_bytes = size_t(1) << 20;

struct launch_run {
    std::uintptr_t kernel = 0;
    dim3 grid, block;
    unsigned threads = 0;
    size_t dynamic_bytes = 0;
    const std::function<void()> *body = nullptr;
    schedule plan;
    std::uint64_t launch_number = 0;

    std::atomic<bool> aborted{false};
    std::atomic<int> error{cudaSuccess};
    char finished_sync = 0; /* every fiber releases it on exit; the host acquires it */

    std::mutex mutex; /* guards the two below; taken by schedulers and the host only */
    std::condition_variable wake;
    std::vector<unsigned> finished_workers;

    bool is_aborted() const { return aborted.load(std::memory_order_relaxed); }
};

struct block_run {
    launch_run *launch = nullptr;
    uint3 index{};
    std::vector<fiber> fibers;
    std::deque<unsigned> ready; /* threads that can run */
    unsigned exited = 0;
    std::uint64_t random_state = 0;

    unsigned barrier_arrived = 0;
    int barrier_count = 0;
    unsigned long long barrier_generation = 0;
    char barrier_sync[2] = {0, 0}; /* by generation parity, for ThreadSanitizer */

    unsigned char *dynamic_shared = nullptr;
    unsigned char *stacks = nullptr;
    size_t stacks_bytes = 0;

#if defined(__x86_64__)
    void *scheduler_stack_pointer = nullptr;
#else
    ucontext_t scheduler;
#endif
    void *scheduler_tsan = nullptr;
    void *scheduler_fake_stack = nullptr;
    const void *scheduler_stack_bottom = nullptr;
    size_t scheduler_stack_size = 0;

    unsigned existing_lanes(unsigned warp) const
    {
        const unsigned threads = launch->threads;
        const unsigned count = std::min(32u, threads - warp * 32u);
        return count == 32 ? 0xffffffffu : ((1u << count) - 1u);
    }
    fiber &lane(unsigned warp, unsigned l) { return fibers[warp * 32 + l]; }
    void make_ready(fiber &f)
    {
        f.state = fiber_ready;
        ready.push_back(f.where.linear);
    }
};

/* The first failure of a launch prints one line and ends the launch; the others are
   consequences. Called from fibers and schedulers, with no lock held. */
inline void abort_launch(launch_run &launch, uint3 block, const std::string &reason)
{
    if (launch.aborted.exchange(true, std::memory_order_relaxed)) return;
    launch.error.store(cudaErrorLaunchFailure, std::memory_order_relaxed);
    std::fprintf(stderr,
                 "ekv emulator: launch failed: kernel %#llx, block (%u,%u,%u) of grid (%u,%u,%u), blockDim (%u,%u,%u), "
                 "EKV_EMU_SEED=%llu%s: %s\n",
                 static_cast<unsigned long long>(launch.kernel), block.x, block.y, block.z, launch.grid.x,
                 launch.grid.y, launch.grid.z, launch.block.x, launch.block.y, launch.block.z,
                 static_cast<unsigned long long>(launch.plan.seed), launch.plan.sequential ? " (sequential)" : "",
                 reason.c_str());
}

inline void abort_launch(const fiber &f, const std::string &reason)
{
    abort_launch(*f.where.block->launch, f.where.block_idx, reason);
}

#if defined(__x86_64__)
/* Saves the callee-saved registers on the current stack and the stack pointer in *from,
   then resumes the context whose stack pointer is `to`: a function call, to the compiler.
   swapcontext would do the same plus a system call for the signal mask, each time. MXCSR
   and the x87 control word are left alone: kernel code does not change them. */
__attribute__((naked, noinline)) inline void switch_stack(void ** /* from */, void * /* to */)
{
    __asm__("pushq %rbp\n\t"
            "pushq %rbx\n\t"
            "pushq %r12\n\t"
            "pushq %r13\n\t"
            "pushq %r14\n\t"
            "pushq %r15\n\t"
            "movq %rsp, (%rdi)\n\t"
            "movq %rsi, %rsp\n\t"
            "popq %r15\n\t"
            "popq %r14\n\t"
            "popq %r13\n\t"
            "popq %r12\n\t"
            "popq %rbx\n\t"
            "popq %rbp\n\t"
            "ret\n\t");
}
#endif

/* From a fiber: back to its block's scheduler until the scheduler resumes it. */
inline void yield_to_scheduler(fiber &f)
{
    block_run &b = *f.where.block;
#if defined(EKV_EMU_TSAN)
    __tsan_switch_to_fiber(b.scheduler_tsan, __tsan_switch_to_fiber_no_sync);
#endif
#if defined(EKV_EMU_ASAN)
    __sanitizer_start_switch_fiber(f.state == fiber_exited ? nullptr : &f.asan_fake_stack, b.scheduler_stack_bottom,
                                   b.scheduler_stack_size);
#endif
#if defined(__x86_64__)
    switch_stack(&f.stack_pointer, b.scheduler_stack_pointer);
#else
    swapcontext(&f.context, &b.scheduler);
#endif
#if defined(EKV_EMU_ASAN)
    __sanitizer_finish_switch_fiber(f.asan_fake_stack, nullptr, nullptr);
#endif
}

/* From the scheduler: runs `f` until it waits or exits. */
inline void resume_fiber(block_run &b, fiber &f)
{
    current_fiber = &f;
#if defined(EKV_EMU_TSAN)
    /* The first switch orders the launch's start before the thread; later ones order nothing. */
    __tsan_switch_to_fiber(f.tsan_fiber, f.started ? __tsan_switch_to_fiber_no_sync : 0);
#endif
    f.started = true;
#if defined(EKV_EMU_ASAN)
    __sanitizer_start_switch_fiber(&b.scheduler_fake_stack, f.stack, f.stack_bytes);
#endif
#if defined(__x86_64__)
    switch_stack(&b.scheduler_stack_pointer, f.stack_pointer);
#else
    swapcontext(&b.scheduler, &f.context);
#endif
#if defined(EKV_EMU_ASAN)
    __sanitizer_finish_switch_fiber(b.scheduler_fake_stack, nullptr, nullptr);
#endif
    current_fiber = nullptr;
}

/* Lanes that wait at a warp operation look again at their group when a lane exits. */
inline void wake_warp_waiters(block_run &b, unsigned warp)
{
    for (unsigned l = 0; l < 32; ++l) {
        if ((b.existing_lanes(warp) & (1u << l)) == 0) continue;
        fiber &other = b.lane(warp, l);
        if (other.state == fiber_at_warp_op) b.make_ready(other);
    }
}

inline void fiber_main()
{
    fiber &f = *current_fiber;
    block_run &b = *f.where.block;
    launch_run &launch = *b.launch;
#if defined(EKV_EMU_ASAN)
    __sanitizer_finish_switch_fiber(nullptr, &b.scheduler_stack_bottom, &b.scheduler_stack_size);
#endif
    if (!launch.is_aborted()) {
        try {
            (*launch.body)();
        } catch (const launch_abort &) {
        } catch (...) {
            abort_launch(f, "thread " + std::to_string(f.where.linear) + ": kernel code threw a C++ exception");
        }
    }
    tsan_release(&launch.finished_sync);
    {
        tsan_ignore_scope ignore;
        f.state = fiber_exited;
        ++b.exited;
        wake_warp_waiters(b, f.where.linear / 32);
    }
    yield_to_scheduler(f); /* never resumed */
}

/* The diagnostic for a block whose unfinished threads all wait for one another. */
inline void report_stuck(block_run &b)
{
    std::vector<std::pair<std::string, std::vector<unsigned>>> groups;
    std::vector<unsigned> finished;
    for (fiber &f : b.fibers) {
        std::string what;
        if (f.state == fiber_exited) {
            finished.push_back(f.where.linear);
            continue;
        } else if (f.state == fiber_at_barrier) {
            what = std::string("wait at ") + f.barrier_name + " (" + site_text(f.barrier_site) + ")";
        } else {
            char text[128];
            std::snprintf(text, sizeof text, "wait at %s (warp %u, lanes 0x%08x)", warp_op_name(f.slot.op),
                          f.where.linear / 32, f.slot.group);
            what = text;
        }
        auto match = std::find_if(groups.begin(), groups.end(), [&](const auto &g) { return g.first == what; });
        if (match == groups.end()) groups.push_back({what, {f.where.linear}});
        else match->second.push_back(f.where.linear);
    }
    std::string reason = "deadlock, a barrier or warp operation that not every thread reaches:";
    for (const auto &group : groups) reason += " threads " + id_ranges(group.second) + " " + group.first + ";";
    if (!finished.empty()) reason += " threads " + id_ranges(finished) + " have exited;";
    reason.pop_back();
    abort_launch(*b.launch, b.index, reason);
}

#if defined(__x86_64__)
/* A fiber's first switch_stack pops six zero registers and returns into fiber_main, whose
   own return address is zero: the end of the stack for unwinders. */
inline bool prepare_context(fiber &f)
{
    void **frame = reinterpret_cast<void **>(f.stack + f.stack_bytes) - 8;
    for (int i = 0; i < 8; ++i) frame[i] = nullptr;
    void (*entry)() = fiber_main;
    std::memcpy(&frame[6], &entry, sizeof entry);
    f.stack_pointer = frame;
    return true;
}
#else
/* Out of line: getcontext returns twice, which its caller's variables must not see. */
__attribute__((noinline)) inline bool prepare_context(fiber &f)
{
    if (getcontext(&f.context) != 0) return false;
    f.context.uc_stack.ss_sp = f.stack;
    f.context.uc_stack.ss_size = f.stack_bytes;
    f.context.uc_link = nullptr;
    makecontext(&f.context, fiber_main, 0);
    /* Nothing reads the stack size after makecontext but AddressSanitizer's swapcontext,
       which would clear the shadow of the whole stack, live frames included, at every
       switch; the fiber annotations tell it what it needs. */
    f.context.uc_stack.ss_size = 0;
    return true;
}
#endif

/* Runs one block on the calling OS thread (created for it). */
#if defined(EKV_EMU_TSAN)
/* ThreadSanitizer's fiber contexts are reused across blocks and launches: creating one
   clears and pages in a large context, and that was 80% of a TSan suite's time (perf,
   test_cache_emu). A reused context keeps what its earlier lives synchronized with, which
   orders only those earlier accesses before its new ones, as the launch's mutex and
   thread creation already did; races between threads that are alive at once, within a
   block or between blocks, are seen as before. */
inline std::mutex &tsan_fiber_pool_mutex()
{
    static std::mutex m;
    return m;
}
inline std::vector<void *> &tsan_fiber_pool()
{
    static std::vector<void *> pool;
    return pool;
}
inline void *tsan_fiber_take()
{
    {
        std::lock_guard<std::mutex> lock(tsan_fiber_pool_mutex());
        std::vector<void *> &pool = tsan_fiber_pool();
        if (!pool.empty()) {
            void *f = pool.back();
            pool.pop_back();
            return f;
        }
    }
    return __tsan_create_fiber(0);
}
inline void tsan_fiber_give(void *f)
{
    std::lock_guard<std::mutex> lock(tsan_fiber_pool_mutex());
    tsan_fiber_pool().push_back(f);
}
#endif

inline void run_block(block_run &b)
{
    tsan_ignore_scope ignore;
    launch_run &launch = *b.launch;
    const unsigned threads = launch.threads;
    poison_static_shared();
    if (launch.dynamic_bytes > 0) {
        void *buffer = nullptr;
        /* Exactly the launch's size, so that AddressSanitizer sees any overrun. */
        if (posix_memalign(&buffer, 16, launch.dynamic_bytes) != 0) {
            abort_launch(launch, b.index, "no host memory for the block's dynamic shared memory");
            return;
        }
        b.dynamic_shared = static_cast<unsigned char *>(buffer);
        std::memset(buffer, 0xff, launch.dynamic_bytes);
    }
    /* One mapping for every stack, each with an inaccessible page below it. */
    const size_t page = size_t(sysconf(_SC_PAGESIZE));
    const size_t slot_bytes = fiber_stack_bytes + page;
    b.stacks_bytes = slot_bytes * threads;
    void *stacks = mmap(nullptr, b.stacks_bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (stacks == MAP_FAILED) {
        std::free(b.dynamic_shared);
        abort_launch(launch, b.index, "no address space for the block's thread stacks");
        return;
    }
    b.stacks = static_cast<unsigned char *>(stacks);
#if defined(EKV_EMU_ASAN)
    /* The mapping may sit where an earlier block's stacks were: their frames' redzones
       (threads end by a switch, never unwinding) would still be poisoned. */
    __asan_unpoison_memory_region(b.stacks, b.stacks_bytes);
#endif
#if defined(EKV_EMU_TSAN)
    b.scheduler_tsan = __tsan_get_current_fiber();
#endif
    b.fibers.resize(threads);
    for (unsigned t = 0; t < threads; ++t) {
        fiber &f = b.fibers[t];
        f.where.linear = t;
        f.where.thread_idx = uint3{t % launch.block.x, (t / launch.block.x) % launch.block.y,
                                   t / (launch.block.x * launch.block.y)};
        f.where.block_idx = b.index;
        f.where.block_dim = launch.block;
        f.where.grid_dim = launch.grid;
        f.where.block = &b;
        f.stack = b.stacks + t * slot_bytes + page;
        f.stack_bytes = fiber_stack_bytes;
        if (mprotect(f.stack, f.stack_bytes, PROT_READ | PROT_WRITE) != 0 || !prepare_context(f)) {
            abort_launch(launch, b.index, "could not prepare the stack of thread " + std::to_string(t));
            b.fibers.resize(t); /* none has started: nothing to unwind */
            b.ready.clear();
            break;
        }
#if defined(EKV_EMU_TSAN)
        f.tsan_fiber = tsan_fiber_take();
#endif
        b.ready.push_back(t);
    }

    while (b.fibers.size() == threads) {
        if (launch.is_aborted()) /* the waiting threads leave by launch_abort */
            for (fiber &f : b.fibers)
                if (f.state == fiber_at_barrier || f.state == fiber_at_warp_op) b.make_ready(f);
        if (b.ready.empty()) {
            if (b.exited == b.fibers.size()) break;
            report_stuck(b);
            continue;
        }
        if (!launch.plan.sequential)
            std::swap(b.ready.front(), b.ready[size_t(next_random(b.random_state) % b.ready.size())]);
        const unsigned chosen = b.ready.front();
        b.ready.pop_front();
        resume_fiber(b, b.fibers[chosen]);
    }

#if defined(EKV_EMU_TSAN)
    for (fiber &f : b.fibers) tsan_fiber_give(f.tsan_fiber);
#endif
#if defined(EKV_EMU_ASAN)
    __asan_unpoison_memory_region(b.stacks, b.stacks_bytes); /* the frames left behind */
#endif
    munmap(b.stacks, b.stacks_bytes);
    std::free(b.dynamic_shared);
}

struct worker_start {
    launch_run *launch;
    uint3 block;
    std::uint64_t random_state;
    unsigned worker;
};

inline void *worker_main(void *argument)
{
    const worker_start start = *static_cast<worker_start *>(argument);
    launch_run &launch = *start.launch;
    {
        /* Allocated and freed here, unseen by ThreadSanitizer: kernel threads read it. */
        tsan_ignore_scope ignore;
        std::unique_ptr<block_run> run(new block_run());
        run->launch = &launch;
        run->index = start.block;
        run->random_state = start.random_state;
        run_block(*run);
    }
    {
        std::lock_guard<std::mutex> lock(launch.mutex);
        launch.finished_workers.push_back(start.worker);
    }
    launch.wake.notify_all();
    return nullptr;
}

/* Bytes of static TLS of the loaded modules: every thread carries it on its stack. */
inline int add_tls_size(struct dl_phdr_info *info, size_t, void *total)
{
    for (int i = 0; i < info->dlpi_phnum; ++i)
        if (info->dlpi_phdr[i].p_type == PT_TLS) *static_cast<size_t *>(total) += size_t(info->dlpi_phdr[i].p_memsz);
    return 0;
}

/* Runs the whole grid: each block on a new OS thread, several at once. */
inline cudaError_t run_grid(std::uintptr_t kernel, dim3 grid, dim3 block, size_t dynamic_bytes, const schedule &plan,
                            std::uint64_t launch_number, const std::function<void()> &body)
{
    /* Static shared memory is one object per kernel under AddressSanitizer. */
    static std::mutex one_launch_at_a_time;
    std::lock_guard<std::mutex> serial(one_launch_at_a_time);

    launch_run launch;
    launch.kernel = kernel;
    launch.grid = grid;
    launch.block = block;
    launch.threads = block.x * block.y * block.z;
    launch.dynamic_bytes = dynamic_bytes;
    launch.body = &body;
    launch.plan = plan;
    launch.launch_number = launch_number;

    const unsigned long long plane = static_cast<unsigned long long>(grid.x) * grid.y;
    const unsigned long long blocks = plane * grid.z;
    std::vector<unsigned long long> order(blocks);
    for (unsigned long long i = 0; i < blocks; ++i) order[i] = i;
    std::uint64_t random_state = plan.seed ^ (launch_number * 0xd1b54a32d192ed03ull);
    if (!plan.sequential)
        for (unsigned long long i = blocks; i > 1; --i) std::swap(order[i - 1], order[next_random(random_state) % i]);
    unsigned long long concurrency = std::min<unsigned long long>(plan.concurrent_blocks, blocks);
    concurrency = std::min<unsigned long long>(concurrency, std::max(1u, fiber_budget / launch.threads));
#if defined(EKV_EMU_ASAN)
    concurrency = 1;
#endif
    if (plan.sequential) concurrency = 1;

    shared_modules(); /* read the symbol table here, not in the first block */
    static const size_t tls_bytes = [] {
        size_t total = 0;
        dl_iterate_phdr(add_tls_size, &total);
        return total;
    }();
    pthread_attr_t attributes;
    pthread_attr_init(&attributes);
    /* The scheduler needs little stack; glibc carves the static TLS out of it too. */
    pthread_attr_setstacksize(&attributes, (size_t(256) << 10) + tls_bytes * 2);

    std::vector<worker_start> starts(static_cast<size_t>(concurrency));
    std::vector<pthread_t> ids(static_cast<size_t>(concurrency));
    std::vector<unsigned> idle;
    for (unsigned w = 0; w < concurrency; ++w) idle.push_back(unsigned(concurrency) - 1 - w);
    cudaError_t start_error = cudaSuccess;
    unsigned long long next = 0;
    unsigned running = 0;
    std::unique_lock<std::mutex> lock(launch.mutex);
    while (running > 0 || (next < blocks && !launch.is_aborted() && start_error == cudaSuccess)) {
        if (!idle.empty() && next < blocks && !launch.is_aborted() && start_error == cudaSuccess) {
            const unsigned w = idle.back();
            idle.pop_back();
            const unsigned long long b = order[next++];
            starts[w] = worker_start{&launch,
                                     uint3{unsigned(b % grid.x), unsigned((b / grid.x) % grid.y), unsigned(b / plane)},
                                     plan.seed ^ (launch_number * 0xd1b54a32d192ed03ull) ^ (b * 0x9e3779b97f4a7c15ull),
                                     w};
            if (pthread_create(&ids[w], &attributes, worker_main, &starts[w]) != 0) {
                std::fprintf(stderr, "ekv emulator: could not start a thread for block %llu of a launch\n", b);
                start_error = cudaErrorLaunchOutOfResources;
                idle.push_back(w);
                continue;
            }
            ++running;
            continue;
        }
        launch.wake.wait(lock, [&] { return !launch.finished_workers.empty(); });
        std::vector<unsigned> finished;
        finished.swap(launch.finished_workers);
        lock.unlock();
        for (unsigned w : finished) pthread_join(ids[w], nullptr);
        lock.lock();
        for (unsigned w : finished) idle.push_back(w);
        running -= unsigned(finished.size());
    }
    lock.unlock();
    pthread_attr_destroy(&attributes);
    tsan_acquire(&launch.finished_sync);
    const cudaError_t error = cudaError_t(launch.error.load(std::memory_order_relaxed));
    return error != cudaSuccess ? error : start_error;
}

/* A launch failure poisons the context until cudaDeviceReset, as on a GPU. */
inline cudaError_t make_sticky(cudaError_t error)
{
    if (error == cudaErrorLaunchFailure) {
        runtime_state &s = state();
        std::lock_guard<std::mutex> lock(s.mutex);
        s.sticky_error = error;
    }
    return error;
}

inline cudaError_t launch(std::uintptr_t kernel, dim3 grid, dim3 block, size_t dynamic_bytes, cudaStream_t stream,
                          std::function<void()> body)
{
    schedule plan;
    {
        runtime_state &s = state();
        std::lock_guard<std::mutex> lock(s.mutex);
        if (cudaError_t error = check_device(s)) return note(error);
        const unsigned long long threads = static_cast<unsigned long long>(block.x) * block.y * block.z;
        if (threads == 0 || threads > 1024 || block.x > 1024 || block.y > 1024 || block.z > 64 || grid.x == 0 ||
            grid.y == 0 || grid.z == 0 || grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535)
            return note(cudaErrorInvalidConfiguration);
        auto custom = s.max_dynamic_shared.find(kernel);
        const size_t limit = size_t(custom != s.max_dynamic_shared.end() ? custom->second : default_shared_per_block);
        if (dynamic_bytes > limit) return note(cudaErrorInvalidValue);
        plan = device(s).plan;
    }
    auto shared_body = std::make_shared<std::function<void()>>(std::move(body));
    return enqueue(stream, [=]() {
        std::uint64_t number;
        {
            runtime_state &s = state();
            std::lock_guard<std::mutex> lock(s.mutex);
            number = s.launches++;
        }
        return make_sticky(run_grid(kernel, grid, block, dynamic_bytes, plan, number, *shared_body));
    });
}

/* ---- barriers and warp operations, called from kernel threads ---- */

inline int block_barrier(int predicate, const char *name, const source_site &site)
{
    fiber *f = current_fiber;
    if (f == nullptr) return predicate != 0;
    tsan_ignore_scope ignore;
    block_run &b = *f->where.block;
    if (b.launch->is_aborted()) throw launch_abort();
    f->barrier_name = name;
    f->barrier_site = site;
    b.barrier_count += predicate != 0;
    const unsigned long long generation = b.barrier_generation;
    tsan_release(&b.barrier_sync[generation & 1]);
    if (++b.barrier_arrived == b.fibers.size()) {
        /* Every thread has arrived, but a GPU counts arrivals per barrier instruction: threads
           waiting at different calls make undefined behaviour (a hang, or a mix-up). */
        bool divergent = false;
        for (const fiber &other : b.fibers)
            if (!same_site(other.barrier_site, site) || std::strcmp(other.barrier_name, name) != 0) divergent = true;
        std::vector<std::pair<std::string, std::vector<unsigned>>> sites;
        for (const fiber &other : b.fibers) {
            if (!divergent) break;
            const std::string where = std::string(other.barrier_name) + " at " + site_text(other.barrier_site);
            auto match = std::find_if(sites.begin(), sites.end(), [&](const auto &s) { return s.first == where; });
            if (match == sites.end()) sites.push_back({where, {other.where.linear}});
            else match->second.push_back(other.where.linear);
        }
        if (divergent) {
            std::string reason = "divergent barrier, threads of the block wait at different calls:";
            for (const auto &s : sites) reason += " threads " + id_ranges(s.second) + " at " + s.first + ";";
            reason.pop_back();
            abort_launch(*f, reason);
            throw launch_abort();
        }
        const int result = b.barrier_count;
        b.barrier_count = 0;
        b.barrier_arrived = 0;
        ++b.barrier_generation;
        for (fiber &other : b.fibers) {
            other.barrier_result = result;
            if (other.state == fiber_at_barrier) b.make_ready(other);
        }
    } else {
        f->state = fiber_at_barrier;
        yield_to_scheduler(*f);
        if (b.barrier_generation == generation) throw launch_abort(); /* woken by an abort */
    }
    tsan_acquire(&b.barrier_sync[generation & 1]);
    return f->barrier_result;
}

/* The lane a shuffle reads from, by the CUDA programming guide; up or down out of the
   segment of `width` lanes, or xor into a later one, reads the caller's own value. */
inline unsigned long long shuffle_source(block_run &b, unsigned warp, unsigned participants, unsigned lane)
{
    const lane_slot &self = b.lane(warp, lane).slot;
    const int width = (self.width >= 1 && self.width <= 32) ? self.width : 32;
    const int base = int(lane) & ~(width - 1);
    int source = int(lane);
    switch (self.op) {
    case op_shfl_idx: source = base + (self.arg & (width - 1)); break;
    case op_shfl_up: source = int(lane) - self.arg; if (source < base) source = int(lane); break;
    case op_shfl_down: source = int(lane) + self.arg; if (source >= base + width) source = int(lane); break;
    default: source = int(lane) ^ self.arg; if (source < 0 || source >= base + width) source = int(lane); break;
    }
    /* A lane outside the mask, exited or absent (partial warp): undefined in CUDA. */
    if (source < 0 || source > 31 || (participants & (1u << source)) == 0) return poison_bits;
    return b.lane(warp, unsigned(source)).slot.value;
}

inline unsigned long long reduce_group(const lane_slot *const *lanes, unsigned group, int op)
{
    if (op == op_ballot || op == op_any || op == op_all || op == op_syncwarp) {
        unsigned votes = 0;
        for (unsigned l = 0; l < 32; ++l)
            if ((group & (1u << l)) && lanes[l]->value != 0) votes |= 1u << l;
        if (op == op_any) return votes != 0;
        if (op == op_all) return votes == group;
        return votes;
    }
    bool first = true;
    unsigned total = 0;
    for (unsigned l = 0; l < 32; ++l) {
        if ((group & (1u << l)) == 0) continue;
        const unsigned v = unsigned(lanes[l]->value);
        if (first) {
            total = v;
            first = false;
            continue;
        }
        switch (op) {
        case op_reduce_add: total += v; break;
        case op_reduce_min_signed: total = unsigned(std::min(int(total), int(v))); break;
        case op_reduce_max_signed: total = unsigned(std::max(int(total), int(v))); break;
        case op_reduce_min_unsigned: total = std::min(total, v); break;
        case op_reduce_max_unsigned: total = std::max(total, v); break;
        case op_reduce_and: total &= v; break;
        case op_reduce_or: total |= v; break;
        default: total ^= v; break;
        }
    }
    return total;
}

/* Completes the warp operation `lane` waits at when every lane of its group that has not
   exited has arrived with the same group; the caller is one of them. False if not yet. */
inline bool try_complete(block_run &b, unsigned warp, unsigned lane)
{
    fiber &caller = b.lane(warp, lane);
    const unsigned group = caller.slot.group;
    unsigned participants = 0;
    bool same_op = true;
    for (unsigned l = 0; l < 32; ++l) {
        if ((group & (1u << l)) == 0) continue;
        const fiber &other = b.lane(warp, l);
        if (other.state == fiber_exited) continue;
        if (!other.slot.posted || other.slot.done || other.slot.group != group) return false;
        if (other.slot.op != caller.slot.op) same_op = false;
        participants |= 1u << l;
    }
    if (!same_op) {
        std::string reason = "threads of warp " + std::to_string(warp) + " reached different warp operations:";
        for (int kind = op_shfl_idx; kind <= op_reduce_xor; ++kind) {
            std::vector<unsigned> ids;
            for (unsigned l = 0; l < 32; ++l)
                if ((participants & (1u << l)) && b.lane(warp, l).slot.op == kind) ids.push_back(warp * 32 + l);
            if (!ids.empty()) reason += " threads " + id_ranges(ids) + " at " + warp_op_name(kind) + ";";
        }
        reason.pop_back();
        abort_launch(caller, reason);
        throw launch_abort();
    }
    const int op = caller.slot.op;
    const lane_slot *lanes[32] = {};
    for (unsigned l = 0; l < 32; ++l)
        if (participants & (1u << l)) lanes[l] = &b.lane(warp, l).slot;
    const unsigned long long combined = op > op_shfl_xor ? reduce_group(lanes, participants, op) : 0;
    unsigned long long results[32] = {};
    for (unsigned l = 0; l < 32; ++l)
        if (participants & (1u << l)) results[l] = op > op_shfl_xor ? combined : shuffle_source(b, warp, participants, l);
    /* Every lane leaves after every lane arrived: the caller gathers the arrivals and passes
       them on to each lane. */
    for (unsigned l = 0; l < 32; ++l)
        if (participants & (1u << l)) tsan_acquire(&b.lane(warp, l).slot.arrived_sync);
    for (unsigned l = 0; l < 32; ++l) {
        if ((participants & (1u << l)) == 0) continue;
        fiber &other = b.lane(warp, l);
        tsan_release(&other.slot.leave_sync);
        other.slot.result = results[l];
        other.slot.done = true;
        if (other.state == fiber_at_warp_op) b.make_ready(other);
    }
    return true;
}

inline unsigned long long warp_exchange(int op, unsigned mask, unsigned long long value, int arg, int width)
{
    fiber *f = current_fiber;
    if (f == nullptr) { /* outside a kernel: a warp of one lane */
        lane_slot solo;
        solo.op = op;
        solo.value = value;
        const lane_slot *lanes[32];
        for (const lane_slot *&l : lanes) l = &solo;
        return op <= op_shfl_xor ? value : reduce_group(lanes, 1u, op);
    }
    tsan_ignore_scope ignore;
    block_run &b = *f->where.block;
    if (b.launch->is_aborted()) throw launch_abort();
    const unsigned warp = f->where.linear / 32, lane = f->where.linear % 32;
    lane_slot &self = f->slot;
    self.posted = true;
    self.done = false;
    self.op = op;
    self.group = (mask | (1u << lane)) & b.existing_lanes(warp);
    self.value = value;
    self.arg = arg;
    self.width = width;
    tsan_release(&self.arrived_sync);
    while (!self.done && !try_complete(b, warp, lane)) {
        f->state = fiber_at_warp_op;
        yield_to_scheduler(*f);
        if (!self.done && b.launch->is_aborted()) throw launch_abort();
    }
    tsan_acquire(&self.leave_sync);
    self.posted = false;
    self.done = false;
    return self.result;
}

/* Lanes of the caller's warp that exist and have not finished the kernel. */
inline unsigned active_lanes()
{
    fiber *f = current_fiber;
    if (f == nullptr) return 1u;
    tsan_ignore_scope ignore;
    block_run &b = *f->where.block;
    const unsigned warp = f->where.linear / 32;
    unsigned mask = 0;
    for (unsigned l = 0; l < 32; ++l)
        if ((b.existing_lanes(warp) & (1u << l)) && b.lane(warp, l).state != fiber_exited) mask |= 1u << l;
    return mask;
}

inline void trap(const char *why)
{
    fiber *f = current_fiber;
    if (f == nullptr) {
        std::fprintf(stderr, "ekv emulator: %s outside a kernel\n", why);
        std::abort();
    }
    abort_launch(*f, "thread " + std::to_string(f->where.linear) + ": " + why);
    throw launch_abort();
}

template <typename T>
inline unsigned long long to_bits(T value)
{
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "warp exchanges carry at most 8 bytes");
    unsigned long long bits = 0;
    std::memcpy(&bits, &value, sizeof(T));
    return bits;
}

template <typename T>
inline T from_bits(unsigned long long bits)
{
    T value;
    std::memcpy(static_cast<void *>(&value), &bits, sizeof(T));
    return value;
}

template <typename T>
inline T shuffle(int op, unsigned mask, T value, int arg, int width)
{
    return from_bits<T>(warp_exchange(op, mask, to_bits(value), arg, width));
}

/* ---- exact conversions to narrow floating-point formats ---- */

/* Rounds significand * 2^exponent (significand > 0) to nearest-even in a format with
   `mantissa_bits` fraction bits and smallest normal exponent `min_exponent`. Returns the
   magnitude's encoding; one past the largest finite encoding or more means overflow. */
inline unsigned long long round_to_format(unsigned long long significand, int exponent, int mantissa_bits,
                                          int min_exponent)
{
    const int top_bit = 63 - __builtin_clzll(significand);
    const int value_exponent = std::max(exponent + top_bit, min_exponent);
    const int shift = value_exponent - mantissa_bits - exponent;
    unsigned long long units;
    if (shift <= 0) {
        units = significand << -shift;
    } else if (shift >= 64) {
        units = 0;
    } else {
        units = significand >> shift;
        const unsigned long long rest = significand & ((1ull << shift) - 1);
        const unsigned long long half = 1ull << (shift - 1);
        if (rest > half || (rest == half && (units & 1))) ++units;
    }
    return (static_cast<unsigned long long>(value_exponent - min_exponent) << mantissa_bits) + units;
}

struct narrow_format {
    int mantissa_bits;
    int min_exponent;
    unsigned largest_finite; /* magnitude encoding */
    unsigned overflow;       /* magnitude encoding for overflow and infinity */
    unsigned nan;            /* complete encoding, sign included */
    unsigned sign_bit;
};

inline unsigned narrow_from_parts(bool negative, bool is_nan, bool is_inf, unsigned long long significand,
                                  int exponent, const narrow_format &f)
{
    if (is_nan) return f.nan;
    const unsigned sign = negative ? f.sign_bit : 0u;
    if (is_inf) return sign | f.overflow;
    if (significand == 0) return sign;
    const unsigned long long magnitude = round_to_format(significand, exponent, f.mantissa_bits, f.min_exponent);
    return sign | (magnitude > f.largest_finite ? f.overflow : unsigned(magnitude));
}

/* Exact for every 64-bit integer, where a detour through double would round twice. */
inline unsigned narrow_from_integer(bool negative, unsigned long long magnitude, const narrow_format &f)
{
    return narrow_from_parts(negative, false, false, magnitude, 0, f);
}

template <typename I>
inline unsigned narrow_from_integer(I value, const narrow_format &f)
{
    const bool negative = std::is_signed<I>::value && static_cast<long long>(value) < 0;
    const unsigned long long magnitude =
        negative ? 0ull - static_cast<unsigned long long>(value) : static_cast<unsigned long long>(value);
    return narrow_from_integer(negative, magnitude, f);
}

inline unsigned narrow_from_float(float value, const narrow_format &f)
{
    std::uint32_t bits;
    std::memcpy(&bits, &value, 4);
    const unsigned biased = (bits >> 23) & 0xff, fraction = bits & 0x7fffff;
    const bool negative = (bits >> 31) != 0;
    if (biased == 0xff) return narrow_from_parts(negative, fraction != 0, fraction == 0, 0, 0, f);
    if (biased == 0) return narrow_from_parts(negative, false, false, fraction, -149, f);
    return narrow_from_parts(negative, false, false, fraction | 0x800000u, int(biased) - 150, f);
}

inline unsigned narrow_from_double(double value, const narrow_format &f)
{
    std::uint64_t bits;
    std::memcpy(&bits, &value, 8);
    const unsigned biased = unsigned(bits >> 52) & 0x7ff;
    const std::uint64_t fraction = bits & 0xfffffffffffffull;
    const bool negative = (bits >> 63) != 0;
    if (biased == 0x7ff) return narrow_from_parts(negative, fraction != 0, fraction == 0, 0, 0, f);
    if (biased == 0) return narrow_from_parts(negative, false, false, fraction, -1074, f);
    return narrow_from_parts(negative, false, false, fraction | (1ull << 52), int(biased) - 1075, f);
}

/* NaN becomes the canonical 0x7fff, as CUDA's conversions do. */
constexpr narrow_format half_format = {10, -14, 0x7bffu, 0x7c00u, 0x7fffu, 0x8000u};
constexpr narrow_format bfloat16_format = {7, -126, 0x7f7fu, 0x7f80u, 0x7fffu, 0x8000u};

inline unsigned short float_to_half_bits(float value) { return static_cast<unsigned short>(narrow_from_float(value, half_format)); }
inline unsigned short double_to_half_bits(double value) { return static_cast<unsigned short>(narrow_from_double(value, half_format)); }
inline unsigned short float_to_bfloat16_bits(float value) { return static_cast<unsigned short>(narrow_from_float(value, bfloat16_format)); }
inline unsigned short double_to_bfloat16_bits(double value) { return static_cast<unsigned short>(narrow_from_double(value, bfloat16_format)); }
template <typename I>
inline unsigned short integer_to_half_bits(I value) { return static_cast<unsigned short>(narrow_from_integer(value, half_format)); }
template <typename I>
inline unsigned short integer_to_bfloat16_bits(I value) { return static_cast<unsigned short>(narrow_from_integer(value, bfloat16_format)); }

inline float bits_to_float(std::uint32_t bits)
{
    float value;
    std::memcpy(&value, &bits, 4);
    return value;
}

inline std::uint32_t float_to_bits(float value)
{
    std::uint32_t bits;
    std::memcpy(&bits, &value, 4);
    return bits;
}

/* Exact; a NaN becomes the canonical float NaN, as in CUDA's host conversion. */
inline float half_bits_to_float(unsigned short h)
{
    const std::uint32_t sign = std::uint32_t(h & 0x8000u) << 16;
    const unsigned biased = (h >> 10) & 0x1fu;
    std::uint32_t fraction = h & 0x3ffu;
    if (biased == 0x1f) return bits_to_float(fraction != 0 ? 0x7fffffffu : (sign | 0x7f800000u));
    if (biased == 0) {
        if (fraction == 0) return bits_to_float(sign);
        int exponent = -14;
        while ((fraction & 0x400u) == 0) {
            fraction <<= 1;
            --exponent;
        }
        return bits_to_float(sign | (std::uint32_t(exponent + 127) << 23) | ((fraction & 0x3ffu) << 13));
    }
    return bits_to_float(sign | (std::uint32_t(biased + 112) << 23) | (fraction << 13));
}

inline float bfloat16_bits_to_float(unsigned short b) { return bits_to_float(std::uint32_t(b) << 16); }

} /* namespace ekv_emu */

/* >>runtime-api ----------------------------------------------------------------------- */

inline const char *cudaGetErrorName(cudaError_t error)
{
    switch (error) {
#define EKV_EMU_ERROR_NAME(name, code, text) case name: return #name;
        EKV_EMU_ERRORS(EKV_EMU_ERROR_NAME)
#undef EKV_EMU_ERROR_NAME
    }
    return "unrecognized error code";
}

inline const char *cudaGetErrorString(cudaError_t error)
{
    switch (error) {
#define EKV_EMU_ERROR_TEXT(name, code, text) case name: return text;
        EKV_EMU_ERRORS(EKV_EMU_ERROR_TEXT)
#undef EKV_EMU_ERROR_TEXT
    }
    return "unrecognized error code";
}

/* Returns and clears the last error; a launch failure keeps coming back until reset. */
inline cudaError_t cudaGetLastError()
{
    cudaError_t error = ekv_emu::last_error();
    ekv_emu::last_error() = cudaSuccess;
    if (error == cudaSuccess) {
        ekv_emu::runtime_state &s = ekv_emu::state();
        std::lock_guard<std::mutex> lock(s.mutex);
        error = s.sticky_error;
    }
    return error;
}

inline cudaError_t cudaPeekAtLastError()
{
    if (ekv_emu::last_error() != cudaSuccess) return ekv_emu::last_error();
    ekv_emu::runtime_state &s = ekv_emu::state();
    std::lock_guard<std::mutex> lock(s.mutex);
    return s.sticky_error;
}

inline cudaError_t cudaRuntimeGetVersion(int *version)
{
    if (version == nullptr) return ekv_emu::note(cudaErrorInvalidValue);
    *version = CUDART_VERSION;
    return cudaSuccess;
}

inline cudaError_t cudaDriverGetVersion(int *version)
{
    if (version == nullptr) return ekv_emu::note(cudaErrorInvalidValue);
    *version = CUDART_VERSION;
    return cudaSuccess;
}

inline cudaError_t cudaGetDeviceCount(int *count)
{
    if (count == nullptr) return ekv_emu::note(cudaErrorInvalidValue);
    ekv_emu::runtime_state &s = ekv_emu::state();
    std::lock_guard<std::mutex> lock(s.mutex);
    *count = ekv_emu::device(s).count;
    return *count == 0 ? ekv_emu::note(cudaErrorNoDevice) : cudaSuccess;
}

inline cudaError_t cudaSetDevice(int device)
{
    ekv_emu::runtime_state &s = ekv_emu::state();
    std::lock_guard<std::mutex> lock(s.mutex);
    if (cudaError_t error = ekv_emu::check_device_ordinal(s, device)) return ekv_emu::note(error);
    ekv_emu::current_device() = device;
    return cudaSuccess;
}

inline cudaError_t cudaGetDevice(int *device)
{
    if (device == nullptr) return ekv_emu::note(cudaErrorInvalidValue);
    ekv_emu::runtime_state &s = ekv_emu::state();
    std::lock_guard<std::mutex> lock(s.mutex);
    if (cudaError_t error = ekv_emu::check_device(s)) return ekv_emu::note(error);
    *device = ekv_emu::current_device();
    return cudaSuccess;
}

inline cudaError_t cudaSetDeviceFlags(unsigned int) { return cudaSuccess; }
inline cudaError_t cudaDeviceSetCacheConfig(cudaFuncCache) { return cudaSuccess; }

inline cudaError_t cudaDeviceSynchronize()
{
    ekv_emu::runtime_state &s = ekv_emu::state();
    std::lock_guard<std::mutex> lock(s.mutex);
    if (cudaError_t error = ekv_emu::check_device(s)) return ekv_emu::note(error);
    if (cudaError_t error = ekv_emu::forbid_during_capture(s, cudaErrorStreamCaptureUnsupported))
        return ekv_emu::note(error);
    return ekv_emu::note(s.sticky_error);
}

/* Frees every allocation and handle, clears errors, and reads the EKV_EMU_* variables
   again: a test can setenv() and reset to get another device. */
inline cudaError_t cudaDeviceReset()
{
    ekv_emu::runtime_state &s = ekv_emu::state();
    std::lock_guard<std::mutex> lock(s.mutex);
    for (auto &allocation : s.device_allocations) std::free(reinterpret_cast<void *>(allocation.first));
    for (auto &allocation : s.host_allocations) std::free(reinterpret_cast<void *>(allocation.first));
    for (CUstream_st *stream : s.streams) {
        delete stream->graph;
        delete stream;
    }
    for (CUevent_st *event : s.events) delete event;
    for (CUgraph_st *graph : s.graphs) delete graph;
    for (CUgraphExec_st *exec : s.graph_execs) delete exec;
    s.device_allocations.clear();
    s.host_allocations.clear();
    s.device_bytes_used = 0;
    s.streams.clear();
    s.events.clear();
    s.graphs.clear();
    s.graph_execs.clear();
    s.max_dynamic_shared.clear();
    s.sticky_error = cudaSuccess;
    s.launches = 0;
    s.configured = false;
    ekv_emu::last_error() = cudaSuccess;
    ekv_emu::current_device() = 0;
    return cudaSuccess;
}

inline cudaError_t cudaDeviceGetAttribute(int *value, cudaDeviceAttr attribute, int device)
{
    if (value == nullptr) return ekv_emu::note(cudaErrorInvalidValue);
    ekv_emu::runtime_state &s = ekv_emu::state();
    std::lock_guard<std::mutex> lock(s.mutex);
    if (cudaError_t error = ekv_emu::check_device_ordinal(s, device)) return ekv_emu::note(error);
    const ekv_emu::device_config &d = ekv_emu::device(s);
    const ekv_emu::arch_limits limits = ekv_emu::limits_for(d.major * 10 + d.minor);
    switch (attribute) {
    case cudaDevAttrMaxThreadsPerBlock: *value = 1024; break;
    case cudaDevAttrMaxBlockDimX: case cudaDevAttrMaxBlockDimY: *value = 1024; break;
    case cudaDevAttrMaxBlockDimZ: *value = 64; break;
    case cudaDevAttrMaxGridDimX: *value = 0x7fffffff; break;
    case cudaDevAttrMaxGridDimY: case cudaDevAttrMaxGridDimZ: *value = 65535; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = ekv_emu::default_shared_per_block; break;
    case cudaDevAttrTotalConstantMemory: *value = 65536; break;
    case cudaDevAttrWarpSize: *value = 32; break;
    case cudaDevAttrMaxRegistersPerBlock: case cudaDevAttrMaxRegistersPerMultiprocessor: *value = 65536; break;
    case cudaDevAttrClockRate: *value = ekv_emu::core_clock_khz; break;
    case cudaDevAttrMultiProcessorCount: *value = d.sms; break;
    case cudaDevAttrIntegrated: case cudaDevAttrEccEnabled: *value = 0; break;
    case cudaDevAttrConcurrentKernels: case cudaDevAttrUnifiedAddressing: case cudaDevAttrManagedMemory:
    case cudaDevAttrCooperativeLaunch: *value = 1; break;
    case cudaDevAttrPciBusId: *value = device + 1; break;
    case cudaDevAttrPciDeviceId: *value = 0; break;
    case cudaDevAttrMemoryClockRate: *value = ekv_emu::memory_clock_khz; break;
    case cudaDevAttrGlobalMemoryBusWidth: *value = ekv_emu::memory_bus_bits; break;
    case cudaDevAttrL2CacheSize: *value = ekv_emu::l2_bytes; break;
    case cudaDevAttrMaxThreadsPerMultiProcessor: *value = limits.threads_per_sm; break;
    case cudaDevAttrAsyncEngineCount: *value = 2; break;
    case cudaDevAttrComputeCapabilityMajor: *value = d.major; break;
    case cudaDevAttrComputeCapabilityMinor: *value = d.minor; break;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor: *value = limits.shared_per_sm; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = limits.shared_optin; break;
    case cudaDevAttrMaxBlocksPerMultiprocessor: *value = limits.blocks_per_sm; break;
    case cudaDevAttrMaxPersistingL2CacheSize: *value = ekv_emu::l2_bytes / 2; break;
    default: return ekv_emu::note(cudaErrorInvalidValue);
    }
    return cudaSuccess;
}

inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp *prop, int device)
{
    if (prop == nullptr) return ekv_emu::note(cudaErrorInvalidValue);
    ekv_emu::runtime_state &s = ekv_emu::state();
    std::lock_guard<std::mutex> lock(s.mutex);
    if (cudaError_t error = ekv_emu::check_device_ordinal(s, device)) return ekv_emu::note(error);
    const ekv_emu::device_config &d = ekv_emu::device(s);
    const ekv_emu::arch_limits limits = ekv_emu::limits_for(d.major * 10 + d.minor);
    std::memset(prop, 0, sizeof *prop);
    std::snprintf(prop->name, sizeof prop->name, "ekv CPU emulator");
    prop->uuid.bytes[0] = static_cast<char>(device + 1);
    prop->totalGlobalMem = d.memory_bytes;
    prop->sharedMemPerBlock = size_t(ekv_emu::default_shared_per_block);
    prop->regsPerBlock = 65536;
    prop->warpSize = 32;
    prop->memPitch = size_t(0x7fffffff);
    prop->maxThreadsPerBlock = 1024;
    prop->maxThreadsDim[0] = 1024; prop->maxThreadsDim[1] = 1024; prop->maxThreadsDim[2] = 64;
    prop->maxGridSize[0] = 0x7fffffff; prop->maxGridSize[1] = 65535; prop->maxGridSize[2] = 65535;
    prop->totalConstMem = 65536;
    prop->major = d.major;
    prop->minor = d.minor;
    prop->textureAlignment = 512;
    prop->multiProcessorCount = d.sms;
    prop->canMapHostMemory = 1;
    prop->concurrentKernels = 1;
    prop->pciBusID = device + 1;
    prop->asyncEngineCount = 2;
    prop->unifiedAddressing = 1;
    prop->memoryBusWidth = ekv_emu::memory_bus_bits;
    prop->l2CacheSize = ekv_emu::l2_bytes;
    prop->persistingL2CacheMaxSize = ekv_emu::l2_bytes / 2;
    prop->maxThreadsPerMultiProcessor = limits.threads_per_sm;
    prop->sharedMemPerMultiprocessor = size_t(limits.shared_per_sm);
    prop->regsPerMultiprocessor = 65536;
    prop->managedMemory = 1;
    prop->cooperativeLaunch = 1;
    prop->sharedMemPerBlockOptin = size_t(limits.shared_optin);
    prop->maxBlocksPerMultiProcessor = limits.blocks_per_sm;
    prop->reservedSharedMemPerBlock = 1024;
    return cudaSuccess;
}

/* ---- memory ---- */

/* Device memory is host memory from posix_memalign, exactly the size asked for (so that
   AddressSanitizer reports any overrun), filled with 0xff bytes (NaN for every float type)
   so that reading what was never written shows. Sizes are counted rounded up to 256. */
inline cudaError_t cudaMalloc(void **pointer, size_t bytes)
{
    if (pointer == nullptr) return ekv_emu::note(cudaErrorInvalidValue);
    *pointer = nullptr;
    ekv_emu::runtime_state &s = ekv_emu::state();
    std::lock_guard<std::mutex> lock(s.mutex);
    if (cudaError_t error = ekv_emu::check_device(s)) return ekv_emu::note(error);
    if (cudaError_t error = ekv_emu::forbid_during_capture(s, cudaErrorStreamCaptureUnsupported))
        return ekv_emu::note(error);
    if (bytes == 0) return cudaSuccess;
    const size_t counted = (bytes + 255) & ~size_t(255);
    if (counted < bytes || counted > ekv_emu::device(s).memory_bytes - s.device_bytes_used)
        return ekv_emu::note(cudaErrorMemoryAllocation);
    void *memory = nullptr;
    if (posix_memalign(&memory, 256, bytes) != 0) return ekv_emu::note(cudaErrorMemoryAllocation);
    std::memset(memory, 0xff, bytes);
    s.device_allocations[ekv_emu::address_of(memory)] = bytes;
    s.device_bytes_used += counted;
    *pointer = memory;
    return cudaSuccess;
}

template <typename T>
inline cudaError_t cudaMalloc(T **pointer, size_t bytes)
{
    return cudaMalloc(reinterpret_cast<void **>(pointer), bytes);
}

inline cudaError_t cudaFree(void *pointer)
{
    ekv_emu::runtime_state &s = ekv_emu::state();
    std::lock_guard<std::mutex> lock(s.mutex);
    if (cudaError_t error = ekv_emu::check_device(s)) return ekv_emu::note(error);
    if (pointer == nullptr) return cudaSuccess;
    if (cudaError_t error = ekv_emu::forbid_during_capture(s, cudaErrorStreamCaptureUnsupported))
        return ekv_emu::note(error);
    auto found = s.device_allocations.find(ekv_emu::address_of(pointer));
    if (found == s.device_allocations.end()) return ekv_emu::note(cudaErrorInvalidValue);
    s.device_bytes_used -= (found->second + 255) & ~size_t(255);
    s.device_allocations.erase(found);
    std::free(pointer);
    return cudaSuccess;
}

inline cudaError_t cudaHostAlloc(void **pointer, size_t bytes, unsigned int)
{
    if (pointer == nullptr) return ekv_emu::note(cudaErrorInvalidValue);
    *pointer = nullptr;
    ekv_emu::runtime_state &s = ekv_emu::state();
    std::lock_guard<std::mutex> lock(s.mutex);
    if (cudaError_t error = ekv_emu::check_device(s)) return ekv_emu::note(error);
    if (cudaError_t error = ekv_emu::forbid_during_capture(s, cudaErrorStreamCaptureUnsupported))
        return ekv_emu::note(error);
    if (bytes == 0) return cudaSuccess;
    void *memory = nullptr;
    if (posix_memalign(&memory, 256, bytes) != 0) return ekv_emu::note(cudaErrorMemoryAllocation);
    std::memset(memory, 0xff, bytes);
    s.host_allocations[ekv_emu::address_of(memory)] = bytes;
    *pointer = memory;
    return cudaSuccess;
}

inline cudaError_t cudaMallocHost(void **pointer, size_t bytes) { return cudaHostAlloc(pointer, bytes, cudaHostAllocDefault); }

template <typename T>
inline cudaError_t cudaMallocHost(T **pointer, size_t bytes, unsigned int flags = cudaHostAllocDefault)
{
    return cudaHostAlloc(reinterpret_cast<void **>(pointer), bytes, flags);
}

template <typename T>
inline cudaError_t cudaHostAlloc(T **pointer, size_t bytes, unsigned int flags)
{
    return cudaHostAlloc(reinterpret_cast<void **>(pointer), bytes, flags);
}

inline cudaError_t cudaFreeHost(void *pointer)
{
    ekv_emu::runtime_state &s = ekv_emu::state();
    std::lock_guard<std::mutex> lock(s.mutex);
    if (pointer == nullptr) return cudaSuccess;
    if (cudaError_t error = ekv_emu::forbid_during_capture(s, cudaErrorStreamCaptureUnsupported))
        return ekv_emu::note(error);
    auto found = s.host_allocations.find(ekv_emu::address_of(pointer));
    if (found == s.host_allocations.end()) return ekv_emu::note(cudaErrorInvalidValue);
    s.host_allocations.erase(found);
    std::free(pointer);
    return cudaSuccess;
}

inline cudaError_t cudaHostGetDevicePointer(void **device_pointer, void *host_pointer, unsigned int)
{
    if (device_pointer == nullptr) return ekv_emu::note(cudaErrorInvalidValue);
    *device_pointer = host_pointer;
    return cudaSuccess;
}

inline cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes)
{
    if (free_bytes == nullptr || total_bytes == nullptr) return ekv_emu::note(cudaErrorInvalidValue);
    ekv_emu::runtime_state &s = ekv_emu::state();
    std::lock_guard<std::mutex> lock(s.mutex);
    if (cudaError_t error = ekv_emu::check_device(s)) return ekv_emu::note(error);
    *total_bytes = ekv_emu::device(s).memory_bytes;
    *free_bytes = *total_bytes - s.device_bytes_used;
    return cudaSuccess;
}

namespace ekv_emu {

/* The device side of a copy must lie inside one cudaMalloc allocation and the host side
   outside all of them: the mistakes that are undefined behaviour on a GPU fail here. */
inline cudaError_t check_copy(runtime_state &s, void *destination, const void *source, size_t bytes,
                              cudaMemcpyKind kind)
{
    if (bytes == 0) return cudaSuccess;
    if (destination == nullptr || source == nullptr) return cudaErrorInvalidValue;
    const bool destination_device = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
    const bool source_device = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
    switch (kind) {
    case cudaMemcpyHostToHost: case cudaMemcpyHostToDevice: case cudaMemcpyDeviceToHost: case cudaMemcpyDeviceToDevice:
        break;
    case cudaMemcpyDefault:
        if (touches(s.device_allocations, destination) && !inside(s.device_allocations, destination, bytes))
            return cudaErrorInvalidValue;
        if (touches(s.device_allocations, source) && !inside(s.device_allocations, source, bytes))
            return cudaErrorInvalidValue;
        return cudaSuccess;
    default:
        return cudaErrorInvalidMemcpyDirection;
    }
    if (destination_device ? !inside(s.device_allocations, destination, bytes) : touches(s.device_allocations, destination))
        return cudaErrorInvalidValue;
    if (source_device ? !inside(s.device_allocations, source, bytes) : touches(s.device_allocations, source))
        return cudaErrorInvalidValue;
    return cudaSuccess;
}

inline cudaError_t checked_copy(void *destination, const void *source, size_t bytes, cudaMemcpyKind kind,
                                cudaStream_t stream, bool synchronous)
{
    {
        runtime_state &s = state();
        std::lock_guard<std::mutex> lock(s.mutex);
        if (cudaError_t error = check_device(s)) return note(error);
        if (synchronous)
            if (cudaError_t error = forbid_during_capture(s, cudaErrorStreamCaptureImplicit)) return note(error);
        if (cudaError_t error = check_copy(s, destination, source, bytes, kind)) return note(error);
    }
    return enqueue(stream, [=]() {
        if (bytes > 0) std::memcpy(destination, source, bytes);
        return cudaSuccess;
    });
}

inline cudaError_t checked_set(void *destination, int value, size_t bytes, cudaStream_t stream, bool synchronous)
{
    {
        runtime_state &s = state();
        std::lock_guard<std::mutex> lock(s.mutex);
        if (cudaError_t error = check_device(s)) return note(error);
        if (synchronous)
            if (cudaError_t error = forbid_during_capture(s, cudaErrorStreamCaptureImplicit)) return note(error);
        if (bytes > 0 && !inside(s.device_allocations, destination, bytes)) return note(cudaErrorInvalidValue);
    }
    return enqueue(stream, [=]() {
        if (bytes > 0) std::memset(destination, value, bytes);
        return cudaSuccess;
    });
}

} /* namespace ekv_emu */

inline cudaError_t cudaMemcpy(void *destination, const void *source, size_t bytes, cudaMemcpyKind kind)
{
    return ekv_emu::checked_copy(destination, source, bytes, kind, nullptr, true);
}

inline cudaError_t cudaMemcpyAsync(void *destination, const void *source, size_t bytes, cudaMemcpyKind kind,
                                   cudaStream_t stream = nullptr)
{
    return ekv_emu::checked_copy(destination, source, bytes, kind, stream, false);
}

inline cudaError_t cudaMemset(void *destination, int value, size_t bytes)
{
    return ekv_emu::checked_set(destination, value, bytes, nullptr, true);
}

inline cudaError_t cudaMemsetAsync(void *destination, int value, size_t bytes, cudaStream_t stream = nullptr)
{
    return ekv_emu::checked_set(destination, value, bytes, stream, false);
}

/* __device__ and __constant__ variables are ordinary globals here. */
template <typename T>
inline cudaError_t cudaMemcpyToSymbol(const T &symbol, const void *source, size_t bytes, size_t offset = 0,
                                      cudaMemcpyKind = cudaMemcpyHostToDevice)
{
    if (offset > sizeof(T) || bytes > sizeof(T) - offset) return ekv_emu::note(cudaErrorInvalidValue);
    std::memcpy(reinterpret_cast<unsigned char *>(const_cast<T *>(&symbol)) + offset, source, bytes);
    return cudaSuccess;
}

template <typename T>
inline cudaError_t cudaMemcpyFromSymbol(void *destination, const T &symbol, size_t bytes, size_t offset = 0,
                                        cudaMemcpyKind = cudaMemcpyDeviceToHost)
{
    if (offset > sizeof(T) || bytes > sizeof(T) - offset) return ekv_emu::note(cudaErrorInvalidValue);
    std::memcpy(destination, reinterpret_cast<const unsigned char *>(&symbol) + offset, bytes);
    return cudaSuccess;
}

/* ---- streams ---- */

inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t *stream, unsigned int flags)
{
    if (stream == nullptr || (flags & ~unsigned(cudaStreamNonBlocking)) != 0) return ekv_emu::note(cudaErrorInvalidValue);
    ekv_emu::runtime_state &s = ekv_emu::state();
    std::lock_guard<std::mutex> lock(s.mutex);
    if (cudaError_t error = ekv_emu::check_device(s)) return ekv_emu::note(error);
    *stream = new CUstream_st{flags, cudaStreamCaptureStatusNone, cudaStreamCaptureModeGlobal, nullptr};
    s.streams.insert(*stream);
    return cudaSuccess;
}

inline cudaError_t cudaStreamCreate(cudaStream_t *stream) { return cudaStreamCreateWithFlags(stream, cudaStreamDefault); }

inline cudaError_t cudaStreamDestroy(cudaStream_t stream)
{
    ekv_emu::runtime_state &s = ekv_emu::state();
    std::lock_guard<std::mutex> lock(s.mutex);
    if (s.streams.count(stream) == 0) return ekv_emu::note(cudaErrorInvalidResourceHandle);
    s.streams.erase(stream);
    delete stream->graph;
    delete stream;
    return cudaSuccess;
}

inline cudaError_t cudaStreamSynchronize(cudaStream_t stream)
{
    ekv_emu::runtime_state &s = ekv_emu::state();
    std::lock_guard<std::mutex> lock(s.mutex);
    if (cudaError_t error = ekv_emu::check_device(s)) return ekv_emu::note(error);
    CUstream_st *target = nullptr;
    if (cudaError_t error = ekv_emu::find_stream(s, stream, &target)) return ekv_emu::note(error);
    if (target != nullptr && target->capture_status != cudaStreamCaptureStatusNone) {
        target->capture_status = cudaStreamCaptureStatusInvalidated;
        return ekv_emu::note(cudaErrorStreamCaptureUnsupported);
    }
    return ekv_emu::note(s.sticky_error);
}

inline cudaError_t cudaStreamQuery(cudaStream_t stream)
{
    ekv_emu::runtime_state &s = ekv_emu::state();
    std::lock_guard<std::mutex> lock(s.mutex);
    CUstream_st *target = nullptr;
    if (cudaError_t error = ekv_emu::find_stream(s, stream, &target)) return ekv_emu::note(error);
    return ekv_emu::note(s.sticky_error);
}

inline cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int = 0)
{
    ekv_emu::runtime_state &s = ekv_emu::state();
    std::lock_guard<std::mutex> lock(s.mutex);
    CUstream_st *target = nullptr;
    if (cudaError_t error = ekv_emu::find_stream(s, stream, &target)) return ekv_emu::note(error);
    if (s.events.count(event) == 0) return ekv_emu::note(cudaErrorInvalidResourceHandle);
    return cudaSuccess;
}

inline cudaError_t cudaLaunchHostFunc(cudaStream_t stream, cudaHostFn_t function, void *user_data)
{
    if (function == nullptr) return ekv_emu::note(cudaErrorInvalidValue);
    return ekv_emu::enqueue(stream, [=]() {
        function(user_data);
        return cudaSuccess;
    });
}

/* ---- events: host steady_clock at the moment of recording; all work is synchronous ---- */

inline cudaError_t cudaEventCreateWithFlags(cudaEvent_t *event, unsigned int flags)
{
    if (event == nullptr || (flags & ~unsigned(cudaEventBlockingSync | cudaEventDisableTiming)) != 0)
        return ekv_emu::note(cudaErrorInvalidValue);
    ekv_emu::runtime_state &s = ekv_emu::state();
    std::lock_guard<std::mutex> lock(s.mutex);
    if (cudaError_t error = ekv_emu::check_device(s)) return ekv_emu::note(error);
    *event = new CUevent_st{flags, false, std::chrono::steady_clock::time_point()};
    s.events.insert(*event);
    return cudaSuccess;
}

inline cudaError_t cudaEventCreate(cudaEvent_t *event) { return cudaEventCreateWithFlags(event, cudaEventDefault); }
inline cudaError_t cudaEventCreate(cudaEvent_t *event, unsigned int flags) { return cudaEventCreateWithFlags(event, flags); }

inline cudaError_t cudaEventDestroy(cudaEvent_t event)
{
    ekv_emu::runtime_state &s = ekv_emu::state();
    std::lock_guard<std::mutex> lock(s.mutex);
    if (s.events.count(event) == 0) return ekv_emu::note(cudaErrorInvalidResourceHandle);
    s.events.erase(event);
    delete event;
    return cudaSuccess;
}

/* Recording into a capturing stream only orders work in CUDA; it stamps nothing. */
inline cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream = nullptr)
{
    ekv_emu::runtime_state &s = ekv_emu::state();
    std::lock_guard<std::mutex> lock(s.mutex);
    if (cudaError_t error = ekv_emu::check_device(s)) return ekv_emu::note(error);
    if (s.events.count(event) == 0) return ekv_emu::note(cudaErrorInvalidResourceHandle);
    CUstream_st *target = nullptr;
    if (cudaError_t error = ekv_emu::find_stream(s, stream, &target)) return ekv_emu::note(error);
    if (target != nullptr && target->capture_status != cudaStreamCaptureStatusNone) return cudaSuccess;
    event->recorded = true;
    event->when = std::chrono::steady_clock::now();
    return cudaSuccess;
}

inline cudaError_t cudaEventQuery(cudaEvent_t event)
{
    ekv_emu::runtime_state &s = ekv_emu::state();
    std::lock_guard<std::mutex> lock(s.mutex);
    if (s.events.count(event) == 0) return ekv_emu::note(cudaErrorInvalidResourceHandle);
    return cudaSuccess;
}

inline cudaError_t cudaEventSynchronize(cudaEvent_t event)
{
    ekv_emu::runtime_state &s = ekv_emu::state();
    std::lock_guard<std::mutex> lock(s.mutex);
    if (s.events.count(event) == 0) return ekv_emu::note(cudaErrorInvalidResourceHandle);
    return ekv_emu::note(s.sticky_error);
}

inline cudaError_t cudaEventElapsedTime(float *milliseconds, cudaEvent_t start, cudaEvent_t end)
{
    if (milliseconds == nullptr) return ekv_emu::note(cudaErrorInvalidValue);
    ekv_emu::runtime_state &s = ekv_emu::state();
    std::lock_guard<std::mutex> lock(s.mutex);
    if (s.events.count(start) == 0 || s.events.count(end) == 0) return ekv_emu::note(cudaErrorInvalidResourceHandle);
    if (!start->recorded || !end->recorded || ((start->flags | end->flags) & cudaEventDisableTiming))
        return ekv_emu::note(cudaErrorInvalidResourceHandle);
    *milliseconds = std::chrono::duration<float, std::milli>(end->when - start->when).count();
    return cudaSuccess;
}

/* ---- stream capture and graphs ---- */

inline cudaError_t cudaStreamBeginCapture(cudaStream_t stream, cudaStreamCaptureMode mode)
{
    ekv_emu::runtime_state &s = ekv_emu::state();
    std::lock_guard<std::mutex> lock(s.mutex);
    if (cudaError_t error = ekv_emu::check_device(s)) return ekv_emu::note(error);
    if (ekv_emu::is_builtin_stream(stream)) return ekv_emu::note(cudaErrorStreamCaptureUnsupported);
    if (s.streams.count(stream) == 0) return ekv_emu::note(cudaErrorInvalidResourceHandle);
    if (stream->capture_status != cudaStreamCaptureStatusNone) return ekv_emu::note(cudaErrorIllegalState);
    stream->capture_status = cudaStreamCaptureStatusActive;
    stream->capture_mode = mode;
    stream->graph = new CUgraph_st();
    return cudaSuccess;
}

inline cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t *graph)
{
    if (graph == nullptr) return ekv_emu::note(cudaErrorInvalidValue);
    *graph = nullptr;
    ekv_emu::runtime_state &s = ekv_emu::state();
    std::lock_guard<std::mutex> lock(s.mutex);
    if (ekv_emu::is_builtin_stream(stream) || s.streams.count(stream) == 0)
        return ekv_emu::note(cudaErrorInvalidResourceHandle);
    if (stream->capture_status == cudaStreamCaptureStatusNone) return ekv_emu::note(cudaErrorIllegalState);
    CUgraph_st *captured = stream->graph;
    const bool invalidated = stream->capture_status == cudaStreamCaptureStatusInvalidated;
    stream->graph = nullptr;
    stream->capture_status = cudaStreamCaptureStatusNone;
    if (invalidated) {
        delete captured;
        return ekv_emu::note(cudaErrorStreamCaptureInvalidated);
    }
    s.graphs.insert(captured);
    *graph = captured;
    return cudaSuccess;
}

inline cudaError_t cudaStreamIsCapturing(cudaStream_t stream, cudaStreamCaptureStatus *status)
{
    if (status == nullptr) return ekv_emu::note(cudaErrorInvalidValue);
    ekv_emu::runtime_state &s = ekv_emu::state();
    std::lock_guard<std::mutex> lock(s.mutex);
    CUstream_st *target = nullptr;
    if (cudaError_t error = ekv_emu::find_stream(s, stream, &target)) return ekv_emu::note(error);
    *status = target != nullptr ? target->capture_status : cudaStreamCaptureStatusNone;
    return cudaSuccess;
}

inline cudaError_t cudaGraphGetNodes(cudaGraph_t graph, cudaGraphNode_t *nodes, size_t *count)
{
    if (count == nullptr) return ekv_emu::note(cudaErrorInvalidValue);
    ekv_emu::runtime_state &s = ekv_emu::state();
    std::lock_guard<std::mutex> lock(s.mutex);
    if (s.graphs.count(graph) == 0) return ekv_emu::note(cudaErrorInvalidResourceHandle);
    if (nodes != nullptr)
        for (size_t i = 0; i < *count && i < graph->nodes.size(); ++i) nodes[i] = graph->nodes[i].get();
    *count = graph->nodes.size();
    return cudaSuccess;
}

inline cudaError_t cudaGraphInstantiate(cudaGraphExec_t *exec, cudaGraph_t graph, unsigned long long = 0)
{
    if (exec == nullptr) return ekv_emu::note(cudaErrorInvalidValue);
    ekv_emu::runtime_state &s = ekv_emu::state();
    std::lock_guard<std::mutex> lock(s.mutex);
    if (s.graphs.count(graph) == 0) return ekv_emu::note(cudaErrorInvalidResourceHandle);
    CUgraphExec_st *instance = new CUgraphExec_st();
    for (const auto &node : graph->nodes) instance->nodes.push_back(node->run);
    s.graph_execs.insert(instance);
    *exec = instance;
    return cudaSuccess;
}

inline cudaError_t cudaGraphInstantiateWithFlags(cudaGraphExec_t *exec, cudaGraph_t graph, unsigned long long flags = 0)
{
    return cudaGraphInstantiate(exec, graph, flags);
}

inline cudaError_t cudaGraphUpload(cudaGraphExec_t exec, cudaStream_t)
{
    ekv_emu::runtime_state &s = ekv_emu::state();
    std::lock_guard<std::mutex> lock(s.mutex);
    return s.graph_execs.count(exec) ? cudaSuccess : ekv_emu::note(cudaErrorInvalidResourceHandle);
}

/* Runs the nodes in capture order; stops at the first failing one. */
inline cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream)
{
    std::vector<std::function<cudaError_t()>> nodes;
    {
        ekv_emu::runtime_state &s = ekv_emu::state();
        std::lock_guard<std::mutex> lock(s.mutex);
        if (s.graph_execs.count(exec) == 0) return ekv_emu::note(cudaErrorInvalidResourceHandle);
        nodes = exec->nodes;
    }
    return ekv_emu::enqueue(stream, [nodes]() {
        for (const auto &node : nodes)
            if (cudaError_t error = node()) return error;
        return cudaSuccess;
    });
}

inline cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec)
{
    ekv_emu::runtime_state &s = ekv_emu::state();
    std::lock_guard<std::mutex> lock(s.mutex);
    if (s.graph_execs.erase(exec) == 0) return ekv_emu::note(cudaErrorInvalidResourceHandle);
    delete exec;
    return cudaSuccess;
}

inline cudaError_t cudaGraphDestroy(cudaGraph_t graph)
{
    ekv_emu::runtime_state &s = ekv_emu::state();
    std::lock_guard<std::mutex> lock(s.mutex);
    if (s.graphs.erase(graph) == 0) return ekv_emu::note(cudaErrorInvalidResourceHandle);
    delete graph;
    return cudaSuccess;
}

/* ---- kernel attributes and occupancy ---- */

inline cudaError_t cudaFuncSetAttribute(const void *function, cudaFuncAttribute attribute, int value)
{
    ekv_emu::runtime_state &s = ekv_emu::state();
    std::lock_guard<std::mutex> lock(s.mutex);
    if (cudaError_t error = ekv_emu::check_device(s)) return ekv_emu::note(error);
    if (function == nullptr) return ekv_emu::note(cudaErrorInvalidDeviceFunction);
    const ekv_emu::device_config &d = ekv_emu::device(s);
    if (attribute == cudaFuncAttributeMaxDynamicSharedMemorySize) {
        if (value < 0 || value > ekv_emu::limits_for(d.major * 10 + d.minor).shared_optin)
            return ekv_emu::note(cudaErrorInvalidValue);
        s.max_dynamic_shared[ekv_emu::address_of(function)] = value;
        return cudaSuccess;
    }
    if (attribute == cudaFuncAttributePreferredSharedMemoryCarveout)
        return (value >= -1 && value <= 100) ? cudaSuccess : ekv_emu::note(cudaErrorInvalidValue);
    return ekv_emu::note(cudaErrorInvalidValue);
}

template <typename T>
inline cudaError_t cudaFuncSetAttribute(T *function, cudaFuncAttribute attribute, int value)
{
    return cudaFuncSetAttribute(reinterpret_cast<const void *>(ekv_emu::address_of(function)), attribute, value);
}

inline cudaError_t cudaFuncGetAttributes(cudaFuncAttributes *attributes, const void *function)
{
    if (attributes == nullptr) return ekv_emu::note(cudaErrorInvalidValue);
    ekv_emu::runtime_state &s = ekv_emu::state();
    std::lock_guard<std::mutex> lock(s.mutex);
    if (cudaError_t error = ekv_emu::check_device(s)) return ekv_emu::note(error);
    if (function == nullptr) return ekv_emu::note(cudaErrorInvalidDeviceFunction);
    const ekv_emu::device_config &d = ekv_emu::device(s);
    std::memset(attributes, 0, sizeof *attributes);
    attributes->maxThreadsPerBlock = 1024;
    attributes->numRegs = 32;
    attributes->ptxVersion = d.major * 10 + d.minor;
    attributes->binaryVersion = attributes->ptxVersion;
    auto custom = s.max_dynamic_shared.find(ekv_emu::address_of(function));
    attributes->maxDynamicSharedSizeBytes =
        custom != s.max_dynamic_shared.end() ? custom->second : ekv_emu::default_shared_per_block;
    attributes->preferredShmemCarveout = -1;
    return cudaSuccess;
}

template <typename T>
inline cudaError_t cudaFuncGetAttributes(cudaFuncAttributes *attributes, T *function)
{
    return cudaFuncGetAttributes(attributes, reinterpret_cast<const void *>(ekv_emu::address_of(function)));
}

inline cudaError_t cudaFuncSetCacheConfig(const void *, cudaFuncCache) { return cudaSuccess; }

template <typename T>
inline cudaError_t cudaFuncSetCacheConfig(T *, cudaFuncCache) { return cudaSuccess; }

/* A plausible answer from the thread, block and shared-memory limits of the sm. */
inline cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int *blocks, const void *function, int block_size,
                                                                 size_t dynamic_shared)
{
    if (blocks == nullptr || block_size <= 0) return ekv_emu::note(cudaErrorInvalidValue);
    ekv_emu::runtime_state &s = ekv_emu::state();
    std::lock_guard<std::mutex> lock(s.mutex);
    if (cudaError_t error = ekv_emu::check_device(s)) return ekv_emu::note(error);
    if (function == nullptr) return ekv_emu::note(cudaErrorInvalidDeviceFunction);
    const ekv_emu::device_config &d = ekv_emu::device(s);
    const ekv_emu::arch_limits limits = ekv_emu::limits_for(d.major * 10 + d.minor);
    if (block_size > 1024 || dynamic_shared > size_t(limits.shared_optin)) {
        *blocks = 0;
        return cudaSuccess;
    }
    int count = std::min(limits.blocks_per_sm, limits.threads_per_sm / ((block_size + 31) / 32 * 32));
    if (dynamic_shared > 0)
        count = std::min(count, int(size_t(limits.shared_per_sm) / (dynamic_shared + 1024)));
    *blocks = count;
    return cudaSuccess;
}

template <typename T>
inline cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int *blocks, T *function, int block_size,
                                                                 size_t dynamic_shared)
{
    return cudaOccupancyMaxActiveBlocksPerMultiprocessor(
        blocks, reinterpret_cast<const void *>(ekv_emu::address_of(function)), block_size, dynamic_shared);
}

/* >>device ---------------------------------------------------------------------------- */

/* Per-thread, read-only, of CUDA's types: uint3 for the indices, dim3 for the sizes. */
#define threadIdx (::ekv_emu::context_view().thread_idx)
#define blockIdx (::ekv_emu::context_view().block_idx)
#define blockDim (::ekv_emu::context_view().block_dim)
#define gridDim (::ekv_emu::context_view().grid_dim)

/* An int that is not a constant expression, as in CUDA (and, unlike a macro, leaving
   cudaDeviceProp::warpSize alone). */
inline int warpSize = 32;

/* The defaulted arguments name the caller's source line: threads that meet at different
   __syncthreads calls are reported (a divergent barrier, undefined in CUDA). */
#define EKV_EMU_CALLER const char *caller_file = __builtin_FILE(), int caller_line = __builtin_LINE()
#define EKV_EMU_CALL_SITE (ekv_emu::source_site{caller_file, caller_line})
inline void __syncthreads(EKV_EMU_CALLER) { ekv_emu::block_barrier(1, "__syncthreads()", EKV_EMU_CALL_SITE); }
inline int __syncthreads_count(int predicate, EKV_EMU_CALLER)
{
    return ekv_emu::block_barrier(predicate, "__syncthreads_count()", EKV_EMU_CALL_SITE);
}
inline int __syncthreads_and(int predicate, EKV_EMU_CALLER)
{
    const int count = ekv_emu::block_barrier(predicate, "__syncthreads_and()", EKV_EMU_CALL_SITE);
    const dim3 b = blockDim;
    return count == int(b.x * b.y * b.z);
}
inline int __syncthreads_or(int predicate, EKV_EMU_CALLER)
{
    return ekv_emu::block_barrier(predicate, "__syncthreads_or()", EKV_EMU_CALL_SITE) != 0;
}
#undef EKV_EMU_CALLER
#undef EKV_EMU_CALL_SITE

inline void __syncwarp(unsigned mask = 0xffffffffu) { ekv_emu::warp_exchange(ekv_emu::op_syncwarp, mask, 0, 0, 32); }
inline unsigned __activemask() { return ekv_emu::active_lanes(); }
inline unsigned __ballot_sync(unsigned mask, int predicate)
{
    return unsigned(ekv_emu::warp_exchange(ekv_emu::op_ballot, mask, predicate != 0, 0, 32));
}
inline int __any_sync(unsigned mask, int predicate) { return int(ekv_emu::warp_exchange(ekv_emu::op_any, mask, predicate != 0, 0, 32)); }
inline int __all_sync(unsigned mask, int predicate) { return int(ekv_emu::warp_exchange(ekv_emu::op_all, mask, predicate != 0, 0, 32)); }

#define EKV_EMU_SHUFFLES(T)                                                                         \
    inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32)                        \
    { return ekv_emu::shuffle(ekv_emu::op_shfl_idx, mask, var, src_lane, width); }                  \
    inline T __shfl_up_sync(unsigned mask, T var, unsigned int delta, int width = 32)               \
    { return ekv_emu::shuffle(ekv_emu::op_shfl_up, mask, var, int(delta), width); }                 \
    inline T __shfl_down_sync(unsigned mask, T var, unsigned int delta, int width = 32)             \
    { return ekv_emu::shuffle(ekv_emu::op_shfl_down, mask, var, int(delta), width); }               \
    inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32)                   \
    { return ekv_emu::shuffle(ekv_emu::op_shfl_xor, mask, var, lane_mask, width); }
EKV_EMU_SHUFFLES(int)
EKV_EMU_SHUFFLES(unsigned int)
EKV_EMU_SHUFFLES(long)
EKV_EMU_SHUFFLES(unsigned long)
EKV_EMU_SHUFFLES(long long)
EKV_EMU_SHUFFLES(unsigned long long)
EKV_EMU_SHUFFLES(float)
EKV_EMU_SHUFFLES(double)

#define EKV_EMU_REDUCE(name, T, op)                                                                 \
    inline T name(unsigned mask, T value)                                                           \
    { return T(ekv_emu::warp_exchange(op, mask, unsigned(value), 0, 32)); }
EKV_EMU_REDUCE(__reduce_add_sync, unsigned, ekv_emu::op_reduce_add)
EKV_EMU_REDUCE(__reduce_add_sync, int, ekv_emu::op_reduce_add)
EKV_EMU_REDUCE(__reduce_min_sync, unsigned, ekv_emu::op_reduce_min_unsigned)
EKV_EMU_REDUCE(__reduce_min_sync, int, ekv_emu::op_reduce_min_signed)
EKV_EMU_REDUCE(__reduce_max_sync, unsigned, ekv_emu::op_reduce_max_unsigned)
EKV_EMU_REDUCE(__reduce_max_sync, int, ekv_emu::op_reduce_max_signed)
EKV_EMU_REDUCE(__reduce_and_sync, unsigned, ekv_emu::op_reduce_and)
EKV_EMU_REDUCE(__reduce_or_sync, unsigned, ekv_emu::op_reduce_or)
EKV_EMU_REDUCE(__reduce_xor_sync, unsigned, ekv_emu::op_reduce_xor)
#undef EKV_EMU_REDUCE

/* ---- memory fences and atomics: GCC __atomic builtins, visible to ThreadSanitizer ---- */

inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_system() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

namespace ekv_emu {
/* Applies `update` atomically with a compare-and-swap loop; returns the old value. */
template <typename T, typename F>
inline T atomic_update(T *address, F update)
{
    T old;
    __atomic_load(address, &old, __ATOMIC_RELAXED);
    T desired = update(old);
    while (!__atomic_compare_exchange(address, &old, &desired, false, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED))
        desired = update(old);
    return old;
}
} /* namespace ekv_emu */

#define EKV_EMU_ATOMIC_INTEGER(T)                                                                   \
    inline T atomicAdd(T *address, T value) { return __atomic_fetch_add(address, value, __ATOMIC_SEQ_CST); } \
    inline T atomicExch(T *address, T value) { return __atomic_exchange_n(address, value, __ATOMIC_SEQ_CST); } \
    inline T atomicAnd(T *address, T value) { return __atomic_fetch_and(address, value, __ATOMIC_SEQ_CST); } \
    inline T atomicOr(T *address, T value) { return __atomic_fetch_or(address, value, __ATOMIC_SEQ_CST); } \
    inline T atomicXor(T *address, T value) { return __atomic_fetch_xor(address, value, __ATOMIC_SEQ_CST); } \
    inline T atomicMax(T *address, T value)                                                         \
    { return ekv_emu::atomic_update(address, [value](T old) { return old > value ? old : value; }); } \
    inline T atomicMin(T *address, T value)                                                         \
    { return ekv_emu::atomic_update(address, [value](T old) { return old < value ? old : value; }); } \
    inline T atomicCAS(T *address, T compare, T value)                                              \
    {                                                                                               \
        __atomic_compare_exchange_n(address, &compare, value, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST); \
        return compare;                                                                             \
    }
EKV_EMU_ATOMIC_INTEGER(int)
EKV_EMU_ATOMIC_INTEGER(unsigned int)
EKV_EMU_ATOMIC_INTEGER(unsigned long long)
#undef EKV_EMU_ATOMIC_INTEGER

inline long long atomicMax(long long *address, long long value)
{
    return ekv_emu::atomic_update(address, [value](long long old) { return old > value ? old : value; });
}
inline long long atomicMin(long long *address, long long value)
{
    return ekv_emu::atomic_update(address, [value](long long old) { return old < value ? old : value; });
}
inline unsigned short atomicCAS(unsigned short *address, unsigned short compare, unsigned short value)
{
    __atomic_compare_exchange_n(address, &compare, value, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return compare;
}
inline int atomicSub(int *address, int value) { return __atomic_fetch_sub(address, value, __ATOMIC_SEQ_CST); }
inline unsigned atomicSub(unsigned *address, unsigned value) { return __atomic_fetch_sub(address, value, __ATOMIC_SEQ_CST); }
inline unsigned atomicInc(unsigned *address, unsigned limit)
{
    return ekv_emu::atomic_update(address, [limit](unsigned old) { return old >= limit ? 0u : old + 1u; });
}
inline unsigned atomicDec(unsigned *address, unsigned limit)
{
    return ekv_emu::atomic_update(address, [limit](unsigned old) { return (old == 0 || old > limit) ? limit : old - 1u; });
}
inline float atomicAdd(float *address, float value)
{
    return ekv_emu::atomic_update(address, [value](float old) { return old + value; });
}
inline double atomicAdd(double *address, double value)
{
    return ekv_emu::atomic_update(address, [value](double old) { return old + value; });
}
inline float atomicExch(float *address, float value)
{
    float old;
    __atomic_exchange(address, &value, &old, __ATOMIC_SEQ_CST);
    return old;
}

/* Scoped variants: every scope is the whole machine here. */
#define EKV_EMU_SCOPED_ATOMIC(name)                                                                 \
    template <typename T, typename... V>                                                            \
    inline auto name##_block(T *address, V... values) -> decltype(name(address, values...))         \
    { return name(address, values...); }                                                            \
    template <typename T, typename... V>                                                            \
    inline auto name##_system(T *address, V... values) -> decltype(name(address, values...))        \
    { return name(address, values...); }
EKV_EMU_SCOPED_ATOMIC(atomicAdd)
EKV_EMU_SCOPED_ATOMIC(atomicSub)
EKV_EMU_SCOPED_ATOMIC(atomicExch)
EKV_EMU_SCOPED_ATOMIC(atomicMax)
EKV_EMU_SCOPED_ATOMIC(atomicMin)
EKV_EMU_SCOPED_ATOMIC(atomicCAS)
EKV_EMU_SCOPED_ATOMIC(atomicAnd)
EKV_EMU_SCOPED_ATOMIC(atomicOr)
EKV_EMU_SCOPED_ATOMIC(atomicXor)
#undef EKV_EMU_SCOPED_ATOMIC

/* ---- bit casts ---- */

inline int __float_as_int(float x) { int r; std::memcpy(&r, &x, 4); return r; }
inline float __int_as_float(int x) { float r; std::memcpy(&r, &x, 4); return r; }
inline unsigned int __float_as_uint(float x) { unsigned int r; std::memcpy(&r, &x, 4); return r; }
inline float __uint_as_float(unsigned int x) { float r; std::memcpy(&r, &x, 4); return r; }
inline long long __double_as_longlong(double x) { long long r; std::memcpy(&r, &x, 8); return r; }
inline double __longlong_as_double(long long x) { double r; std::memcpy(&r, &x, 8); return r; }

/* ---- math ---- */

/* glibc's <math.h> declares __expf, __logf, ... itself, so these are macros. The fast
   intrinsics are computed accurately here: expect last-bit differences from a GPU. */
#define __expf(x) (::expf(x))
#define __exp10f(x) (::powf(10.0f, (x)))
#define __logf(x) (::logf(x))
#define __log2f(x) (::log2f(x))
#define __log10f(x) (::log10f(x))
#define __powf(x, y) (::powf((x), (y)))
#define __sinf(x) (::sinf(x))
#define __cosf(x) (::cosf(x))
#define __tanf(x) (::tanf(x))

namespace ekv_emu {
/* CUDA never merges the _rn additions and multiplications into a fused multiply-add, and
   kernel code is compiled to contract (see >>qualifiers): their operands and products go
   through a volatile, which no contraction crosses. */
template <typename T>
inline T uncontracted(T value)
{
    volatile T kept = value;
    return kept;
}
} /* namespace ekv_emu */

inline float __fdividef(float x, float y) { return x / y; }
inline float __fdiv_rn(float x, float y) { return x / y; }
inline float __fadd_rn(float x, float y) { return ekv_emu::uncontracted(x) + ekv_emu::uncontracted(y); }
inline float __fsub_rn(float x, float y) { return ekv_emu::uncontracted(x) - ekv_emu::uncontracted(y); }
inline float __fmul_rn(float x, float y) { return ekv_emu::uncontracted(x * y); }
inline float __fmaf_rn(float x, float y, float z) { return std::fma(x, y, z); }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return std::sqrt(x); }
inline float __frsqrt_rn(float x) { return 1.0f / std::sqrt(x); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline double __dadd_rn(double x, double y) { return ekv_emu::uncontracted(x) + ekv_emu::uncontracted(y); }
inline double __dmul_rn(double x, double y) { return ekv_emu::uncontracted(x * y); }
inline double __fma_rn(double x, double y, double z) { return std::fma(x, y, z); }
inline float __saturatef(float x) { return x >= 1.0f ? 1.0f : (x > 0.0f ? x : 0.0f); }

namespace ekv_emu {
/* float -> integer as the GPU's cvt does: NaN gives 0, out-of-range saturates. */
template <typename I>
inline I saturate_to(double rounded)
{
    if (rounded != rounded) return 0;
    if (rounded <= double(std::numeric_limits<I>::min())) return std::numeric_limits<I>::min();
    if (rounded >= double(std::numeric_limits<I>::max())) return std::numeric_limits<I>::max();
    return I(rounded);
}
} /* namespace ekv_emu */

inline int __float2int_rn(float x) { return ekv_emu::saturate_to<int>(std::nearbyint(double(x))); }
inline int __float2int_rz(float x) { return ekv_emu::saturate_to<int>(std::trunc(double(x))); }
inline int __float2int_rd(float x) { return ekv_emu::saturate_to<int>(std::floor(double(x))); }
inline int __float2int_ru(float x) { return ekv_emu::saturate_to<int>(std::ceil(double(x))); }
inline unsigned __float2uint_rn(float x) { return ekv_emu::saturate_to<unsigned>(std::nearbyint(double(x))); }
inline unsigned __float2uint_rz(float x) { return ekv_emu::saturate_to<unsigned>(std::trunc(double(x))); }
inline long long __float2ll_rn(float x) { return ekv_emu::saturate_to<long long>(std::nearbyint(double(x))); }
inline float __int2float_rn(int x) { return float(x); }
inline float __uint2float_rn(unsigned x) { return float(x); }
inline float __ll2float_rn(long long x) { return float(x); }
inline int __double2int_rn(double x) { return ekv_emu::saturate_to<int>(std::nearbyint(x)); }
inline float __double2float_rn(double x) { return float(x); }

inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(unsigned(x)); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(x)); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x)
{
    unsigned r = 0;
    for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
    return r;
}
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned selector)
{
    const unsigned long long bytes = (static_cast<unsigned long long>(y) << 32) | x;
    unsigned r = 0;
    for (int i = 0; i < 4; ++i) r |= unsigned((bytes >> (((selector >> (4 * i)) & 7u) * 8)) & 0xffu) << (8 * i);
    return r;
}
inline unsigned __funnelshift_l(unsigned lo, unsigned hi, unsigned shift)
{
    const unsigned long long both = (static_cast<unsigned long long>(hi) << 32) | lo;
    return unsigned((both << (shift & 31u)) >> 32);
}
inline unsigned __funnelshift_r(unsigned lo, unsigned hi, unsigned shift)
{
    const unsigned long long both = (static_cast<unsigned long long>(hi) << 32) | lo;
    return unsigned(both >> (shift & 31u));
}
inline unsigned __umulhi(unsigned x, unsigned y) { return unsigned((static_cast<unsigned long long>(x) * y) >> 32); }
inline int __mulhi(int x, int y) { return int((static_cast<long long>(x) * y) >> 32); }
inline unsigned long long __umul64hi(unsigned long long x, unsigned long long y)
{
    const unsigned long long x_lo = x & 0xffffffffu, x_hi = x >> 32, y_lo = y & 0xffffffffu, y_hi = y >> 32;
    const unsigned long long middle = (x_lo * y_lo >> 32) + (x_hi * y_lo & 0xffffffffu) + x_lo * y_hi;
    return x_hi * y_hi + (x_hi * y_lo >> 32) + (middle >> 32);
}
/* Products of the low 24 bits, sign-extended. */
inline int __mul24(int x, int y)
{
    const long long a = ((long long)(unsigned(x) & 0xffffffu) ^ 0x800000) - 0x800000;
    const long long b = ((long long)(unsigned(y) & 0xffffffu) ^ 0x800000) - 0x800000;
    return int(unsigned(a * b));
}
inline unsigned __umul24(unsigned x, unsigned y) { return (x & 0xffffffu) * (y & 0xffffffu); }
inline int __dp4a(int a, int b, int c)
{
    int sum = c;
    for (int i = 0; i < 4; ++i) sum += int(static_cast<signed char>(a >> (8 * i))) * int(static_cast<signed char>(b >> (8 * i)));
    return sum;
}
inline unsigned __dp4a(unsigned a, unsigned b, unsigned c)
{
    unsigned sum = c;
    for (int i = 0; i < 4; ++i) sum += ((a >> (8 * i)) & 0xffu) * ((b >> (8 * i)) & 0xffu);
    return sum;
}

/* CUDA's integer and mixed min/max overloads. */
#define EKV_EMU_MIN_MAX(A, B, R)                                                                    \
    inline R min(A a, B b) { return static_cast<R>(a) < static_cast<R>(b) ? static_cast<R>(a) : static_cast<R>(b); } \
    inline R max(A a, B b) { return static_cast<R>(a) > static_cast<R>(b) ? static_cast<R>(a) : static_cast<R>(b); }
EKV_EMU_MIN_MAX(int, int, int)
EKV_EMU_MIN_MAX(unsigned int, unsigned int, unsigned int)
EKV_EMU_MIN_MAX(int, unsigned int, unsigned int)
EKV_EMU_MIN_MAX(unsigned int, int, unsigned int)
EKV_EMU_MIN_MAX(long, long, long)
EKV_EMU_MIN_MAX(unsigned long, unsigned long, unsigned long)
EKV_EMU_MIN_MAX(long long, long long, long long)
EKV_EMU_MIN_MAX(unsigned long long, unsigned long long, unsigned long long)
EKV_EMU_MIN_MAX(long long, unsigned long long, unsigned long long)
EKV_EMU_MIN_MAX(unsigned long long, long long, unsigned long long)
#undef EKV_EMU_MIN_MAX
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }
inline double min(float a, double b) { return std::fmin(double(a), b); }
inline double max(float a, double b) { return std::fmax(double(a), b); }
inline double min(double a, float b) { return std::fmin(a, double(b)); }
inline double max(double a, float b) { return std::fmax(a, double(b)); }
inline unsigned umin(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned umax(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long llmin(long long a, long long b) { return a < b ? a : b; }
inline long long llmax(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long ullmin(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long ullmax(unsigned long long a, unsigned long long b) { return a > b ? a : b; }

/* ---- loads and stores with cache hints: plain accesses, for CUDA's list of types ---- */

namespace ekv_emu {
template <typename T> struct cache_hint_type : std::false_type {};
template <typename T> struct identity { typedef T type; };
#define EKV_EMU_CACHE_HINT_TYPE(T) template <> struct cache_hint_type<T> : std::true_type {};
EKV_EMU_CACHE_HINT_TYPE(char) EKV_EMU_CACHE_HINT_TYPE(signed char) EKV_EMU_CACHE_HINT_TYPE(unsigned char)
EKV_EMU_CACHE_HINT_TYPE(short) EKV_EMU_CACHE_HINT_TYPE(unsigned short) EKV_EMU_CACHE_HINT_TYPE(int)
EKV_EMU_CACHE_HINT_TYPE(unsigned int) EKV_EMU_CACHE_HINT_TYPE(long) EKV_EMU_CACHE_HINT_TYPE(unsigned long)
EKV_EMU_CACHE_HINT_TYPE(long long) EKV_EMU_CACHE_HINT_TYPE(unsigned long long) EKV_EMU_CACHE_HINT_TYPE(float)
EKV_EMU_CACHE_HINT_TYPE(double) EKV_EMU_CACHE_HINT_TYPE(char2) EKV_EMU_CACHE_HINT_TYPE(char4)
EKV_EMU_CACHE_HINT_TYPE(uchar2) EKV_EMU_CACHE_HINT_TYPE(uchar4) EKV_EMU_CACHE_HINT_TYPE(short2)
EKV_EMU_CACHE_HINT_TYPE(short4) EKV_EMU_CACHE_HINT_TYPE(ushort2) EKV_EMU_CACHE_HINT_TYPE(ushort4)
EKV_EMU_CACHE_HINT_TYPE(int2) EKV_EMU_CACHE_HINT_TYPE(int4) EKV_EMU_CACHE_HINT_TYPE(uint2)
EKV_EMU_CACHE_HINT_TYPE(uint4) EKV_EMU_CACHE_HINT_TYPE(longlong2) EKV_EMU_CACHE_HINT_TYPE(ulonglong2)
EKV_EMU_CACHE_HINT_TYPE(float2) EKV_EMU_CACHE_HINT_TYPE(float4) EKV_EMU_CACHE_HINT_TYPE(double2)
} /* namespace ekv_emu */

#define EKV_EMU_LOAD(name)                                                                          \
    template <typename T, typename std::enable_if<ekv_emu::cache_hint_type<T>::value, int>::type = 0> \
    inline T name(const T *address) { return *address; }
#define EKV_EMU_STORE(name)                                                                         \
    template <typename T, typename std::enable_if<ekv_emu::cache_hint_type<T>::value, int>::type = 0> \
    inline void name(T *address, typename ekv_emu::identity<T>::type value) { *address = value; }
EKV_EMU_LOAD(__ldg)
EKV_EMU_LOAD(__ldca)
EKV_EMU_LOAD(__ldcg)
EKV_EMU_LOAD(__ldcs)
EKV_EMU_LOAD(__ldlu)
EKV_EMU_LOAD(__ldcv)
EKV_EMU_STORE(__stwb)
EKV_EMU_STORE(__stcg)
EKV_EMU_STORE(__stcs)
EKV_EMU_STORE(__stwt)
#undef EKV_EMU_LOAD
#undef EKV_EMU_STORE

/* ---- miscellany ---- */

inline long long clock64()
{
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
inline void __nanosleep(unsigned nanoseconds) { std::this_thread::sleep_for(std::chrono::nanoseconds(nanoseconds)); }
/* Ends the launch with cudaErrorLaunchFailure and a diagnostic naming the thread. */
inline void __trap() { ekv_emu::trap("__trap() called"); }

/* >>launch ---------------------------------------------------------------------------- */

/* The current block's dynamic shared memory (16-byte aligned, the launch's size), or null
   outside a kernel. Replaces `extern __shared__` for code not compiled by nvcc. */
inline unsigned char *ekv_cuda_host_dynamic_shared()
{
    const ekv_emu::fiber *f = ekv_emu::current_fiber;
    return f != nullptr ? f->where.block->dynamic_shared : nullptr;
}

/* Replaces kernel<<<grid, block, dynamic_shared, stream>>>(args...): runs the whole grid
   before returning, or records it when `stream` captures. Errors as the launch would
   report them (also through cudaGetLastError); a launch that fails while running (a
   barrier not every thread reaches, __trap) gives cudaErrorLaunchFailure, sticky. */
template <typename... Params, typename... Args>
inline cudaError_t ekv_cuda_host_launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t dynamic_shared,
                                        cudaStream_t stream, Args &&...args)
{
    static_assert(sizeof...(Params) == sizeof...(Args), "the kernel takes a different number of arguments");
    /* Converted once to the parameter types, as a launch does; each thread gets copies. */
    auto arguments = std::make_shared<std::tuple<typename std::decay<Params>::type...>>(std::forward<Args>(args)...);
    return ekv_emu::launch(ekv_emu::address_of(kernel), grid, block, dynamic_shared, stream,
                           [kernel, arguments]() { std::apply(kernel, *arguments); });
}

#include "ekv_emu_warp_mma.h" /* mma.sync and movmatrix of the tensor-core path */

#endif /* EKV_EMU_CUDA_RUNTIME_H */
