/* ekv_test.h - the tiny test harness of ekv's C tests: CHECK records a failure with its
   file, line and a message; ekv_test_finish() prints the closing line
   "N passed, N failed" and returns the exit status. Include after ekv.h. */
#ifndef EKV_TEST_H
#define EKV_TEST_H
#include <stdio.h>

static int ekv_test_passed, ekv_test_failed, ekv_test_skipped;
static int ekv_test_case_failed;
static const char *ekv_test_case_name = "";

/* One named case: BEGIN, any number of CHECKs, END prints PASS or FAIL once. */
#define TEST_BEGIN(name) \
    do { ekv_test_case_name = (name); ekv_test_case_failed = 0; } while (0)
#define TEST_END()                                                          \
    do {                                                                    \
        if (ekv_test_case_failed) { ekv_test_failed++; printf("FAIL %s\n", ekv_test_case_name); } \
        else { ekv_test_passed++; printf("PASS %s\n", ekv_test_case_name); } \
    } while (0)
#define TEST_SKIP(name, why) \
    do { ekv_test_skipped++; printf("SKIP %s: %s\n", (name), (why)); } while (0)

/* CHECK(cond, fmt, ...): on failure prints where and why, marks the case failed. */
#define CHECK(cond, ...)                                                     \
    do {                                                                     \
        if (!(cond)) {                                                       \
            ekv_test_case_failed = 1;                                        \
            printf("  %s:%d: %s: check failed: %s: ", __FILE__, __LINE__,   \
                   ekv_test_case_name, #cond);                               \
            printf(__VA_ARGS__);                                             \
            printf("\n");                                                    \
        }                                                                    \
    } while (0)

/* |a - b| <= abs_tol + rel_tol * |b| */
#define CHECK_CLOSE(a, b, rel_tol, abs_tol, what)                                      \
    do {                                                                               \
        double ekv_t_a_ = (double)(a), ekv_t_b_ = (double)(b);                         \
        double ekv_t_d_ = ekv_t_a_ > ekv_t_b_ ? ekv_t_a_ - ekv_t_b_ : ekv_t_b_ - ekv_t_a_; \
        double ekv_t_m_ = ekv_t_b_ < 0 ? -ekv_t_b_ : ekv_t_b_;                         \
        CHECK(ekv_t_d_ <= (abs_tol) + (rel_tol) * ekv_t_m_, "%s: got %.17g want %.17g", \
              (what), ekv_t_a_, ekv_t_b_);                                             \
    } while (0)

static int ekv_test_finish(void)
{
    if (ekv_test_skipped)
        printf("%d passed, %d failed, %d skipped\n", ekv_test_passed, ekv_test_failed,
               ekv_test_skipped);
    else
        printf("%d passed, %d failed\n", ekv_test_passed, ekv_test_failed);
    return ekv_test_failed ? 1 : 0;
}
#endif
