/* SPDX-License-Identifier: Apache-2.0 */
/* PLACEHOLDER until the profile parser lands (issue 2). */
#include <m2mvpn/m2mvpn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "profile.h"
int profile_set_parse(const char *json, size_t len, const char *base_dir,
                      profile_set **ret, char *err, size_t err_len)
{
    (void)json; (void)len; (void)base_dir; (void)ret;
    snprintf(err, err_len, "profile parser not built");
    return M2MVPN_E_NOTSUPP;
}
int profile_set_load_file(const char *path, profile_set **ret, char *err, size_t err_len)
{
    return profile_set_parse(path, 0, NULL, ret, err, err_len);
}
void profile_set_free(profile_set *set) { free(set); }
const profile *profile_set_find(const profile_set *set, const char *name)
{
    for (size_t i = 0; set && i < set->n; i++)
        if (strcmp(set->items[i].name, name) == 0)
            return &set->items[i];
    return NULL;
}
