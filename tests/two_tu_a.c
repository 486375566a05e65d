/* tests/two_tu_a.c - with two_tu_b.c: a program of two translation units links, one
   with EKV_IMPLEMENTATION and one with declarations only (no duplicate symbols).
   Build: cc -std=c99 -pedantic -Wall -Wextra -Werror -I. tests/two_tu_a.c tests/two_tu_b.c -lm */
#define EKV_IMPLEMENTATION
#include "ekv.h"

int two_tu_b(void);

int main(void)
{
    int ok = two_tu_b() == 0 && strcmp(ekv_version(), EKV_VERSION_STRING) == 0;
    printf("%s two translation units\n", ok ? "PASS" : "FAIL");
    printf("%d passed, %d failed\n", ok, !ok);
    return ok ? 0 : 1;
}
