/* tests/two_tu_b.c - the declarations-only half of the two-unit link test (see
   two_tu_a.c): calls into the implementation that the other unit holds. */
#include <string.h>
#include "ekv.h"

int two_tu_b(void)
{
    ekv_config c = ekv_config_default();
    c.head_dim = 2048; /* beyond the flag table's 1..1024 */
    if (ekv_config_validate(&c) != EKV_ERR_INVALID_ARG) return 1;
    if (strstr(ekv_last_error(), "--dim") == NULL) return 1;
    return 0;
}
