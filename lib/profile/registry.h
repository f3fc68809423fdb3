/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The loaded profiles of a handle: every loaded set, newest last, and the
 * names unloaded from sets that still hold other profiles (a set is
 * immutable). A name loaded again replaces the older profile of that name;
 * a set none of whose profiles is visible any more is freed. Not
 * thread-safe: the API holds its lock around every call.
 */
#ifndef M2MVPN_PROFILE_REGISTRY_H
#define M2MVPN_PROFILE_REGISTRY_H

#include <stdbool.h>
#include <stddef.h>

#include "profile.h"

typedef struct profile_registry {
    profile_set **sets;           /* newest last */
    size_t n_sets;
    char (*unloaded)[64];         /* names hidden in sets still holding others */
    size_t n_unloaded;
} profile_registry;

/* Free every set (the supervisor may hold its own references) and the lists. */
void profile_registry_clear(profile_registry *r);
/* The visible profile of this name, newest first; *set (if not NULL) gets
 * the set holding it. NULL when unknown or unloaded. */
const profile *profile_registry_find(const profile_registry *r, const char *name, profile_set **set);
/* Take a parsed set (ownership moves here, also on failure): older profiles
 * of the same names are replaced, unloaded names of it visible again.
 * Errors: NOMEM (the set is freed). */
int profile_registry_add(profile_registry *r, profile_set *set);
/* Unload one profile: its set is freed when nothing else of it is visible,
 * else the name is hidden. False when no visible profile has that name. */
bool profile_registry_remove(profile_registry *r, const char *name);
/* The newest visible profile, or NULL (the next active one after an unload). */
const profile *profile_registry_newest(const profile_registry *r);

#endif
