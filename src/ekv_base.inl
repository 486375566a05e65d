/* >>base: allocation, errors, small helpers shared by every section ========= */

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(EKV_MALLOC) && defined(EKV_FREE) && defined(EKV_REALLOC)
/* user-provided allocator */
#elif !defined(EKV_MALLOC) && !defined(EKV_FREE) && !defined(EKV_REALLOC)
#define EKV_MALLOC(n) malloc(n)
#define EKV_FREE(p) free(p)
#define EKV_REALLOC(p, n) realloc(p, n)
#else
#error "ekv.h: define all of EKV_MALLOC, EKV_FREE and EKV_REALLOC, or none"
#endif

#if defined(__cplusplus) && __cplusplus >= 201103L
#define EKV__THREAD_LOCAL thread_local
#elif defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L && !defined(__STDC_NO_THREADS__)
#define EKV__THREAD_LOCAL _Thread_local
#elif defined(__GNUC__) || defined(__clang__)
#define EKV__THREAD_LOCAL __thread
#elif defined(_MSC_VER)
#define EKV__THREAD_LOCAL __declspec(thread)
#else
#define EKV__THREAD_LOCAL
#endif

#define EKV__PI 3.14159265358979323846

static EKV__THREAD_LOCAL char ekv__error_message[1024];

EKV_DEF const char *ekv_result_string(ekv_result result)
{
    switch (result) {
#define EKV__RESULT_CASE(name, value, message) \
    case name:                                 \
        return message;
        EKV_RESULT_LIST(EKV__RESULT_CASE)
#undef EKV__RESULT_CASE
    default:
        return "unknown result code";
    }
}

EKV_DEF const char *ekv_last_error(void)
{
    return ekv__error_message;
}

EKV_DEF ekv_result ekv_set_error(ekv_result code, const char *format, ...)
{
    va_list args;
    va_start(args, format);
    vsnprintf(ekv__error_message, sizeof ekv__error_message, format, args);
    va_end(args);
    return code;
}

EKV_DEF const char *ekv_version(void)
{
    return EKV_VERSION_STRING;
}

/* calloc through the configured allocator; NULL (with the error set) on overflow or
   failure. */
#if defined(__GNUC__) || defined(__clang__)
#define EKV__UNUSED __attribute__((unused))
#else
#define EKV__UNUSED
#endif

static EKV__UNUSED void *ekv__alloc(size_t count, size_t size)
{
    void *p;
    size_t bytes;
    if (size != 0 && count > (size_t)-1 / size) {
        ekv_set_error(EKV_ERR_OUT_OF_MEMORY, "allocation of %zu x %zu bytes overflows", count, size);
        return NULL;
    }
    bytes = count * size;
    p = EKV_MALLOC(bytes > 0 ? bytes : 1);
    if (!p) {
        ekv_set_error(EKV_ERR_OUT_OF_MEMORY, "out of host memory allocating %zu bytes",
                      count * size);
        return NULL;
    }
    memset(p, 0, count * size);
    return p;
}

static EKV__UNUSED void ekv__free(void *p)
{
    if (p) EKV_FREE(p);
}

static EKV__UNUSED int ekv__compare_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}
