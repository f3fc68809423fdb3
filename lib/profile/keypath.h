/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Typed reading of json-c values with key-path errors (internal to
 * lib/profile). A keypath holds the path of the value being read
 * ("profiles[2].gateways[0].port"); every reader pushes its key, and on a
 * fault writes "<path>: <what>" into the caller's error buffer and returns
 * M2MVPN_E_PROFILE. Readers never echo a value, so a secret cannot reach an
 * error text. An absent key leaves *out as it was (the caller's default).
 */
#ifndef M2MVPN_PROFILE_KEYPATH_H
#define M2MVPN_PROFILE_KEYPATH_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KEYPATH_MAX 256

typedef struct keypath {
    char text[KEYPATH_MAX];
    size_t len;
    char *err;         /* caller's buffer; may be NULL */
    size_t err_len;
} keypath;

void keypath_init(keypath *kp, char *err, size_t err_len);
/* Append ".key" (or "key" at the start) / "[i]"; return a mark for keypath_pop.
 * Unprintable characters of a key are shown as '?', long keys are cut. */
size_t keypath_push_key(keypath *kp, const char *key);
size_t keypath_push_index(keypath *kp, size_t index);
void keypath_pop(keypath *kp, size_t mark);

/* Write "<path>: <what>" (just "<what>" at the empty path); returns M2MVPN_E_PROFILE. */
int keypath_fail(keypath *kp, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* As keypath_fail for the member `key` of the current path. */
int keypath_fail_at(keypath *kp, const char *key, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* The member `key` of object `obj`, or NULL. */
json_object *keypath_member(json_object *obj, const char *key);

/* Refuse the first key of obj not in the NULL-terminated list `known`:
 * "<path>.<key>: unknown key". */
int keypath_check_keys(keypath *kp, json_object *obj, const char *const *known);

/*
 * Member readers. A wrong JSON type (null included) gets "must be a string",
 * "must be an integer LO..HI", "must be a number LO..HI", "must be true or
 * false"; a number of the right type out of range gets "must be LO..HI".
 * Strings: length min..max (bytes), no NUL inside; a string is copied with
 * strdup, or with secure memory when `secret` (then wipe with
 * secure_free_str); a string already in *out is freed first.
 */
int keypath_string(keypath *kp, json_object *obj, const char *key, size_t min, size_t max,
                   bool secret, char **out);
int keypath_uint(keypath *kp, json_object *obj, const char *key, uint32_t lo, uint32_t hi, uint32_t *out);
/* The same for 64-bit counts (hi < INT64_MAX). */
int keypath_uint64(keypath *kp, json_object *obj, const char *key, uint64_t lo, uint64_t hi, uint64_t *out);
int keypath_double(keypath *kp, json_object *obj, const char *key, double lo, double hi, double *out);
int keypath_bool(keypath *kp, json_object *obj, const char *key, bool *out);
/* One of the n strings in names[] (indexed by enum value); *out gets the index. */
int keypath_enum(keypath *kp, json_object *obj, const char *key, const char *const *names, size_t n,
                 int *out);
/* Member that must be an object (NULL and 0 when absent). */
int keypath_object(keypath *kp, json_object *obj, const char *key, json_object **out);
/* Member that must be an array of min..max elements; `what` names them in
 * the error: "must be an array of 1..8 <what>" (NULL and 0 when absent). */
int keypath_array(keypath *kp, json_object *obj, const char *key, size_t min, size_t max,
                  const char *what, json_object **out);

#endif
