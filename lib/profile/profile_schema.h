/* SPDX-License-Identifier: Apache-2.0 */
/*
 * One profile object -> struct profile (internal to lib/profile): every key,
 * type, range and cross-field rule of docs/profile.md, and the defaults.
 */
#ifndef M2MVPN_PROFILE_SCHEMA_H
#define M2MVPN_PROFILE_SCHEMA_H

#include <json-c/json.h>
#include <stdbool.h>

#include "keypath.h"
#include "profile.h"
#include "profile_values.h"

/*
 * Read the profile object `obj` (the keypath names where it is) into *out,
 * which must be zeroed. `version_required`: a stand-alone profile must say
 * "version": 1; inside {"profiles": [...]} the wrapper says it. On failure
 * *out may hold some allocations: release them with profile_clear().
 */
int profile_read(keypath *kp, json_object *obj, path_base *base, bool version_required, profile *out);

/* Free (secrets: wipe) everything *p owns and zero it. */
void profile_clear(profile *p);

/* Check "version": a missing one is "version: required" if required. */
int profile_read_version(keypath *kp, json_object *obj, bool required);

#endif
