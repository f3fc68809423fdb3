/* SPDX-License-Identifier: Apache-2.0 */
/* A group's profile template made into one device's profile. */
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mgmtd.h"

#define VAR "${device_id}"

static char *substitute(const char *s, const char *device_id)
{
    size_t vl = strlen(VAR), dl = strlen(device_id), n = 0;
    for (const char *p = strstr(s, VAR); p; p = strstr(p + vl, VAR))
        n++;
    char *out = malloc(strlen(s) + n * dl + 1), *o = out;
    if (!out)
        return NULL;
    for (const char *p = s;;) {
        const char *hit = strstr(p, VAR);
        size_t k = hit ? (size_t)(hit - p) : strlen(p);
        memcpy(o, p, k);
        o += k;
        if (!hit)
            break;
        memcpy(o, device_id, dl);
        o += dl;
        p = hit + vl;
    }
    *o = 0;
    return out;
}

/* Replaces, in place, every string value under v. */
static int walk(json_object *v, const char *device_id)
{
    if (json_object_is_type(v, json_type_object)) {
        json_object_object_foreach(v, key, val) {
            if (json_object_is_type(val, json_type_string)) {
                char *s = substitute(json_object_get_string(val), device_id);
                if (!s)
                    return -1;
                json_object_object_add(v, key, json_object_new_string(s));
                free(s);
            } else if (walk(val, device_id) < 0) {
                return -1;
            }
        }
    } else if (json_object_is_type(v, json_type_array)) {
        for (size_t i = 0; i < json_object_array_length(v); i++) {
            json_object *e = json_object_array_get_idx(v, i);
            if (json_object_is_type(e, json_type_string)) {
                char *s = substitute(json_object_get_string(e), device_id);
                if (!s)
                    return -1;
                json_object_array_put_idx(v, i, json_object_new_string(s));
                free(s);
            } else if (walk(e, device_id) < 0) {
                return -1;
            }
        }
    }
    return 0;
}

char *mgmtd_profile_for(const char *template_json, const char *device_id, char *err, size_t errlen)
{
    json_object *t = json_tokener_parse(template_json);
    if (!t || !json_object_is_type(t, json_type_object)) {
        snprintf(err, errlen, "the group's template is not a JSON object");
        json_object_put(t);
        return NULL;
    }
    char *out = NULL;
    json_object *auth = json_object_new_object();
    if (walk(t, device_id) == 0 && auth &&
        json_object_object_add(auth, "method", json_object_new_string("cert")) == 0) {
        json_object_object_add(t, "auth", auth);
        auth = NULL;
        out = strdup(json_object_to_json_string_ext(t, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
    }
    json_object_put(auth);
    json_object_put(t);
    if (!out)
        snprintf(err, errlen, "out of memory");
    return out;
}
