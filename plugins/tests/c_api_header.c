/* Compiled (not run) as C99 by the build: include/pt_merge.h is a C header. */
#include "pt_merge.h"

pt_merge_status (*const pt_merge_c_api_check)(pt_merge_context*) = pt_merge_destroy;
