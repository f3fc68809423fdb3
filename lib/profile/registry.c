/* SPDX-License-Identifier: Apache-2.0 */
#include "registry.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <m2mvpn/m2mvpn.h>

static bool hidden(const profile_registry *r, const char *name)
{
    for (size_t i = 0; i < r->n_unloaded; i++)
        if (strcmp(r->unloaded[i], name) == 0)
            return true;
    return false;
}

/* Hide one name of a set that keeps other profiles. Out of memory: it
 * stays visible (the caller removes the tunnel all the same). */
static void hide(profile_registry *r, const char *name)
{
    if (hidden(r, name))
        return;
    char(*grown)[64] = realloc(r->unloaded, (r->n_unloaded + 1) * sizeof(*grown));
    if (!grown)
        return;
    r->unloaded = grown;
    snprintf(r->unloaded[r->n_unloaded++], 64, "%s", name);
}

void profile_registry_clear(profile_registry *r)
{
    for (size_t i = 0; i < r->n_sets; i++)
        profile_set_free(r->sets[i]);
    free(r->sets);
    free(r->unloaded);
    memset(r, 0, sizeof(*r));
}

const profile *profile_registry_find(const profile_registry *r, const char *name, profile_set **set)
{
    if (hidden(r, name))
        return NULL;
    for (size_t i = r->n_sets; i-- > 0;) {
        const profile *p = profile_set_find(r->sets[i], name);
        if (p) {
            if (set)
                *set = r->sets[i];
            return p;
        }
    }
    return NULL;
}

int profile_registry_add(profile_registry *r, profile_set *set)
{
    profile_set **grown = realloc(r->sets, (r->n_sets + 1) * sizeof(*grown));
    if (!grown) {
        profile_set_free(set);
        return M2MVPN_E_NOMEM;
    }
    r->sets = grown;
    size_t kept = 0;
    for (size_t i = 0; i < r->n_sets; i++) {
        profile_set *old = r->sets[i];
        bool still_used = false;
        for (size_t j = 0; j < old->n && !still_used; j++)
            still_used = profile_set_find(set, old->items[j].name) == NULL;
        if (still_used)
            r->sets[kept++] = old;
        else
            profile_set_free(old);
    }
    r->sets[kept++] = set;
    r->n_sets = kept;
    for (size_t i = 0; i < set->n; i++) /* loaded again: visible again */
        for (size_t k = 0; k < r->n_unloaded; k++)
            if (strcmp(r->unloaded[k], set->items[i].name) == 0)
                memmove(r->unloaded[k], r->unloaded[--r->n_unloaded], 64);
    return 0;
}

bool profile_registry_remove(profile_registry *r, const char *name)
{
    profile_set *set = NULL;
    if (!profile_registry_find(r, name, &set))
        return false;
    /* Drop the whole set if this was its only profile still in use;
     * otherwise hide the name (a set is immutable). */
    size_t live = 0;
    for (size_t i = 0; i < set->n; i++) {
        profile_set *owner = NULL;
        if (profile_registry_find(r, set->items[i].name, &owner) && owner == set &&
            strcmp(set->items[i].name, name) != 0)
            live++;
    }
    if (live > 0) {
        hide(r, name);
        return true;
    }
    size_t k = 0;
    for (size_t i = 0; i < r->n_sets; i++)
        if (r->sets[i] != set)
            r->sets[k++] = r->sets[i];
    r->n_sets = k;
    profile_set_free(set); /* the supervisor may hold its own reference */
    return true;
}

const profile *profile_registry_newest(const profile_registry *r)
{
    for (size_t i = r->n_sets; i-- > 0;)
        for (size_t j = 0; j < r->sets[i]->n; j++)
            if (profile_registry_find(r, r->sets[i]->items[j].name, NULL))
                return &r->sets[i]->items[j];
    return NULL;
}
