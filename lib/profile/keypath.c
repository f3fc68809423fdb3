/* SPDX-License-Identifier: Apache-2.0 */
#include "keypath.h"

#include <m2mvpn/m2mvpn.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/secmem.h"

/* Longest key shown in a path; longer ones end in "...". */
#define KEYPATH_MAX_KEY_SHOWN 40

void keypath_init(keypath *kp, char *err, size_t err_len)
{
    kp->text[0] = '\0';
    kp->len = 0;
    kp->err = err;
    kp->err_len = err_len;
}

static void append(keypath *kp, const char *s, size_t n)
{
    size_t room = KEYPATH_MAX - 1 - kp->len;
    if (n > room)
        n = room;
    memcpy(kp->text + kp->len, s, n);
    kp->len += n;
    kp->text[kp->len] = '\0';
}

size_t keypath_push_key(keypath *kp, const char *key)
{
    size_t mark = kp->len;
    if (kp->len)
        append(kp, ".", 1);
    char shown[KEYPATH_MAX_KEY_SHOWN + 4];
    size_t n = 0;
    for (; key[n] && n < KEYPATH_MAX_KEY_SHOWN; n++) {
        unsigned char c = (unsigned char)key[n];
        shown[n] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    if (key[n]) {
        memcpy(shown + n, "...", 3);
        n += 3;
    }
    append(kp, shown, n);
    return mark;
}

size_t keypath_push_index(keypath *kp, size_t index)
{
    size_t mark = kp->len;
    char idx[32];
    int n = snprintf(idx, sizeof(idx), "[%zu]", index);
    append(kp, idx, (size_t)n);
    return mark;
}

void keypath_pop(keypath *kp, size_t mark)
{
    if (mark <= kp->len) {
        kp->len = mark;
        kp->text[mark] = '\0';
    }
}

static int vfail(keypath *kp, const char *fmt, va_list ap)
{
    if (!kp->err || !kp->err_len)
        return M2MVPN_E_PROFILE;
    char what[256];
    vsnprintf(what, sizeof(what), fmt, ap);
    if (kp->len)
        snprintf(kp->err, kp->err_len, "%s: %s", kp->text, what);
    else
        snprintf(kp->err, kp->err_len, "%s", what);
    return M2MVPN_E_PROFILE;
}

int keypath_fail(keypath *kp, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int r = vfail(kp, fmt, ap);
    va_end(ap);
    return r;
}

int keypath_fail_at(keypath *kp, const char *key, const char *fmt, ...)
{
    size_t mark = keypath_push_key(kp, key);
    va_list ap;
    va_start(ap, fmt);
    int r = vfail(kp, fmt, ap);
    va_end(ap);
    keypath_pop(kp, mark);
    return r;
}

json_object *keypath_member(json_object *obj, const char *key)
{
    json_object *v = NULL;
    if (obj && json_object_object_get_ex(obj, key, &v))
        return v;
    return NULL;
}

/* json-c stores a JSON null member as a NULL value; keypath_member cannot
 * tell it from an absent key, so readers ask this first. */
static bool has_null_member(json_object *obj, const char *key)
{
    json_object *v = NULL;
    return obj && json_object_object_get_ex(obj, key, &v) && v == NULL;
}

int keypath_check_keys(keypath *kp, json_object *obj, const char *const *known)
{
    json_object_object_foreach(obj, key, val) {
        (void)val;
        bool ok = false;
        for (size_t i = 0; known[i]; i++)
            if (strcmp(key, known[i]) == 0) {
                ok = true;
                break;
            }
        if (!ok)
            return keypath_fail_at(kp, key, "unknown key");
    }
    return 0;
}

int keypath_string(keypath *kp, json_object *obj, const char *key, size_t min, size_t max,
                   bool secret, char **out)
{
    json_object *v = keypath_member(obj, key);
    if (!v && !has_null_member(obj, key))
        return 0;
    if (!v || !json_object_is_type(v, json_type_string))
        return keypath_fail_at(kp, key, "must be a string");
    const char *s = json_object_get_string(v);
    size_t len = (size_t)json_object_get_string_len(v);
    if (strlen(s) != len)
        return keypath_fail_at(kp, key, "must not contain a NUL character");
    if (len < min || len > max) {
        if (min == max)
            return keypath_fail_at(kp, key, "must be %zu characters", min);
        return keypath_fail_at(kp, key, "must be %zu..%zu characters", min, max);
    }
    char *copy = secret ? secure_memdup(s, len) : strdup(s);
    if (!copy)
        return M2MVPN_E_NOMEM;
    if (*out) {
        if (secret)
            secure_free_str(*out);
        else
            free(*out);
    }
    *out = copy;
    return 0;
}

int keypath_uint(keypath *kp, json_object *obj, const char *key, uint32_t lo, uint32_t hi, uint32_t *out)
{
    json_object *v = keypath_member(obj, key);
    if (!v && !has_null_member(obj, key))
        return 0;
    if (!v || !json_object_is_type(v, json_type_int))
        return keypath_fail_at(kp, key, "must be an integer %u..%u", (unsigned)lo, (unsigned)hi);
    /* json-c clamps integers beyond int64 to its limits: still out of range. */
    if (json_object_get_int64(v) < (int64_t)lo || json_object_get_int64(v) > (int64_t)hi)
        return keypath_fail_at(kp, key, "must be %u..%u", (unsigned)lo, (unsigned)hi);
    *out = (uint32_t)json_object_get_int64(v);
    return 0;
}

int keypath_uint64(keypath *kp, json_object *obj, const char *key, uint64_t lo, uint64_t hi, uint64_t *out)
{
    json_object *v = keypath_member(obj, key);
    if (!v && !has_null_member(obj, key))
        return 0;
    if (!v || !json_object_is_type(v, json_type_int))
        return keypath_fail_at(kp, key, "must be an integer %llu..%llu", (unsigned long long)lo,
                               (unsigned long long)hi);
    /* hi stays below INT64_MAX, where json-c clamps larger numbers. */
    int64_t n = json_object_get_int64(v);
    if (n < 0 || (uint64_t)n < lo || (uint64_t)n > hi)
        return keypath_fail_at(kp, key, "must be %llu..%llu", (unsigned long long)lo, (unsigned long long)hi);
    *out = (uint64_t)n;
    return 0;
}

int keypath_double(keypath *kp, json_object *obj, const char *key, double lo, double hi, double *out)
{
    json_object *v = keypath_member(obj, key);
    if (!v && !has_null_member(obj, key))
        return 0;
    double d = 0;
    bool number = v && (json_object_is_type(v, json_type_int) || json_object_is_type(v, json_type_double));
    if (number)
        d = json_object_get_double(v);
    if (!number)
        return keypath_fail_at(kp, key, "must be a number %g..%g", lo, hi);
    /* The comparison also refuses NaN and infinities. */
    if (!(d >= lo && d <= hi))
        return keypath_fail_at(kp, key, "must be %g..%g", lo, hi);
    *out = d;
    return 0;
}

int keypath_bool(keypath *kp, json_object *obj, const char *key, bool *out)
{
    json_object *v = keypath_member(obj, key);
    if (!v && !has_null_member(obj, key))
        return 0;
    if (!v || !json_object_is_type(v, json_type_boolean))
        return keypath_fail_at(kp, key, "must be true or false");
    *out = json_object_get_boolean(v);
    return 0;
}

int keypath_enum(keypath *kp, json_object *obj, const char *key, const char *const *names, size_t n,
                 int *out)
{
    json_object *v = keypath_member(obj, key);
    if (!v && !has_null_member(obj, key))
        return 0;
    if (v && json_object_is_type(v, json_type_string))
        for (size_t i = 0; i < n; i++)
            if (strcmp(json_object_get_string(v), names[i]) == 0 &&
                strlen(names[i]) == (size_t)json_object_get_string_len(v)) {
                *out = (int)i;
                return 0;
            }
    char list[192];
    size_t pos = 0;
    list[0] = '\0';
    for (size_t i = 0; i < n && pos < sizeof(list); i++) {
        int w = snprintf(list + pos, sizeof(list) - pos, "%s\"%s\"", i ? ", " : "", names[i]);
        if (w < 0)
            break;
        pos += (size_t)w;
    }
    return keypath_fail_at(kp, key, "must be one of %s", list);
}

int keypath_object(keypath *kp, json_object *obj, const char *key, json_object **out)
{
    json_object *v = keypath_member(obj, key);
    *out = NULL;
    if (!v && !has_null_member(obj, key))
        return 0;
    if (!v || !json_object_is_type(v, json_type_object))
        return keypath_fail_at(kp, key, "must be an object");
    *out = v;
    return 0;
}

int keypath_array(keypath *kp, json_object *obj, const char *key, size_t min, size_t max,
                  const char *what, json_object **out)
{
    json_object *v = keypath_member(obj, key);
    *out = NULL;
    if (!v && !has_null_member(obj, key))
        return 0;
    if (!v || !json_object_is_type(v, json_type_array) || json_object_array_length(v) < min ||
        json_object_array_length(v) > max)
        return keypath_fail_at(kp, key, "must be an array of %zu..%zu %s", min, max, what);
    *out = v;
    return 0;
}
