/* tests/ekv_impl.c - the one implementation of ekv.h that the C tests link: each test
   includes ekv.h for declarations only, so the implementation is compiled once per build
   flavour (plain, ASan+UBSan) rather than once per test.
   Build: cc -std=c99 -pedantic -Wall -Wextra -Werror -O2 -I. -c tests/ekv_impl.c */
#define EKV_IMPLEMENTATION
#include "ekv.h"
