/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Profile sets: one profile object or {"profiles": [...]}, from a buffer or a
 * file. The per-profile schema is in profile_schema.c, the JSON text handling
 * in json_text.c.
 */
#include "profile.h"

#include <errno.h>
#include <fcntl.h>
#include <m2mvpn/m2mvpn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/secmem.h"
#include "json_text.h"
#include "keypath.h"
#include "profile_schema.h"
#include "profile_values.h"

#define PROFILE_SET_MAX 32

static void set_error(char *err, size_t err_len, const char *msg)
{
    if (err && err_len)
        snprintf(err, err_len, "%s", msg);
}

profile_set *profile_set_ref(profile_set *set)
{
    if (set)
        atomic_fetch_add(&set->extra_refs, 1);
    return set;
}

void profile_set_free(profile_set *set)
{
    if (!set)
        return;
    if (atomic_fetch_sub(&set->extra_refs, 1) != 0)
        return; /* another reference remains */
    for (size_t i = 0; i < set->n; i++)
        profile_clear(&set->items[i]);
    free(set->items);
    free(set);
}

const profile *profile_set_find(const profile_set *set, const char *name)
{
    if (!set || !name)
        return NULL;
    for (size_t i = 0; i < set->n; i++)
        if (strcmp(set->items[i].name, name) == 0)
            return &set->items[i];
    return NULL;
}

_Static_assert(PROFILE_PSK_MIN_CHARS == 20, "the warning text says 20");

size_t profile_warnings(const profile *p, const char **out, size_t max)
{
    size_t n = 0;
    if (p && p->auth == PROFILE_AUTH_PSK && p->psk && strlen(p->psk) < PROFILE_PSK_MIN_CHARS) {
        if (n < max)
            out[n] = "auth.psk has fewer than 20 characters: a man in the middle can guess a weak "
                     "pre-shared key offline from our first IKE_AUTH; use 20 or more random characters";
        n++;
    }
    return n;
}

static int check_unique_names(keypath *kp, const profile_set *set)
{
    for (size_t i = 1; i < set->n; i++)
        for (size_t j = 0; j < i; j++)
            if (strcmp(set->items[i].name, set->items[j].name) == 0) {
                size_t mark = keypath_push_key(kp, "profiles");
                keypath_push_index(kp, i);
                int r = keypath_fail_at(kp, "name", "\"%s\" is already the name of profiles[%zu]",
                                        set->items[i].name, j);
                keypath_pop(kp, mark);
                return r;
            }
    return 0;
}

/* {"profiles": [...]} as DESIGN.md writes it, each profile with its own
 * "version": 1; or {"version": 1, "profiles": [...]}, where the profiles
 * may leave it out. */
static int read_wrapper(keypath *kp, json_object *root, path_base *base, profile_set *set)
{
    static const char *const keys[] = { "version", "profiles", NULL };
    int r = keypath_check_keys(kp, root, keys);
    bool wrapper_version = json_object_object_get_ex(root, "version", NULL);
    if (r == 0)
        r = profile_read_version(kp, root, false);
    json_object *arr = NULL;
    if (r == 0)
        r = keypath_array(kp, root, "profiles", 1, PROFILE_SET_MAX, "profiles", &arr);
    if (r < 0)
        return r;
    size_t n = json_object_array_length(arr);
    set->items = calloc(n, sizeof(*set->items));
    if (!set->items)
        return M2MVPN_E_NOMEM;
    size_t mark = keypath_push_key(kp, "profiles");
    for (size_t i = 0; i < n; i++) {
        size_t m = keypath_push_index(kp, i);
        set->n = i + 1;
        r = profile_read(kp, json_object_array_get_idx(arr, i), base, !wrapper_version, &set->items[i]);
        if (r < 0)
            return r;
        keypath_pop(kp, m);
    }
    keypath_pop(kp, mark);
    return check_unique_names(kp, set);
}

static int read_root(json_object *root, path_base *base, profile_set *set, char *err, size_t err_len)
{
    keypath kp;
    keypath_init(&kp, err, err_len);
    if (!json_object_is_type(root, json_type_object)) {
        set_error(err, err_len, "the top level must be a JSON object (a profile, or {\"profiles\": [...]})");
        return M2MVPN_E_PROFILE;
    }
    if (json_object_object_get_ex(root, "profiles", NULL))
        return read_wrapper(&kp, root, base, set);
    set->items = calloc(1, sizeof(*set->items));
    if (!set->items)
        return M2MVPN_E_NOMEM;
    set->n = 1;
    return profile_read(&kp, root, base, true, &set->items[0]);
}

int profile_set_parse(const char *json, size_t len, const char *base_dir,
                      profile_set **ret, char *err, size_t err_len)
{
    if (!json || !ret) {
        set_error(err, err_len, "profile_set_parse: json or ret is NULL");
        return M2MVPN_E_INVAL;
    }
    json_object *root = NULL;
    int r = json_text_parse(json, len, &root, err, err_len);
    if (r < 0)
        return r;

    profile_set *set = calloc(1, sizeof(*set));
    path_base base = { .given = base_dir, .abs = NULL };
    if (!set)
        r = M2MVPN_E_NOMEM;
    else
        r = read_root(root, &base, set, err, err_len);
    path_base_release(&base);
    json_text_free(root);
    if (r == M2MVPN_E_NOMEM)
        set_error(err, err_len, "out of memory");
    if (r < 0) {
        profile_set_free(set);
        return r;
    }
    *ret = set;
    return 0;
}

/* Reads the whole file into a buffer of *cap bytes (wipe it with
 * secure_free(data, cap)); more than JSON_TEXT_MAX_BYTES is refused. Plain
 * read(2) into one buffer sized from fstat: no stdio buffer and no realloc
 * leaves a copy of a secret in freed memory. */
static int read_file(const char *path, char **data, size_t *len, size_t *cap, char *err, size_t err_len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (err && err_len)
            snprintf(err, err_len, "cannot read %s: %s", path, strerror(errno));
        return M2MVPN_E_IO;
    }
    struct stat st;
    size_t size = JSON_TEXT_MAX_BYTES + 1;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && (uint64_t)st.st_size <= JSON_TEXT_MAX_BYTES)
        size = (size_t)st.st_size + 1; /* +1 notices a file that grew */
    char *buf = malloc(size);
    if (!buf) {
        close(fd);
        set_error(err, err_len, "out of memory");
        return M2MVPN_E_NOMEM;
    }
    size_t n = 0;
    int read_errno = 0;
    while (n < size) {
        ssize_t got = read(fd, buf + n, size - n);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            read_errno = errno;
        if (got <= 0)
            break;
        n += (size_t)got;
    }
    close(fd);
    if (read_errno || n == size) {
        const char *why = read_errno ? strerror(read_errno)
                          : size == JSON_TEXT_MAX_BYTES + 1 ? "larger than 1 MiB"
                                                            : "file changed while being read";
        if (err && err_len)
            snprintf(err, err_len, "cannot read %s: %s", path, why);
        secure_free(buf, size);
        return M2MVPN_E_IO;
    }
    *data = buf;
    *len = n;
    *cap = size;
    return 0;
}

/* The folder part of path ("." for a bare file name); newly allocated. */
static char *folder_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        return strdup(".");
    if (slash == path)
        return strdup("/");
    return strndup(path, (size_t)(slash - path));
}

int profile_set_load_file(const char *path, profile_set **ret, char *err, size_t err_len)
{
    if (!path || !*path || !ret) {
        set_error(err, err_len, "profile_set_load_file: path or ret is NULL or empty");
        return M2MVPN_E_INVAL;
    }
    char *data = NULL;
    size_t len = 0, cap = 0;
    int r = read_file(path, &data, &len, &cap, err, err_len);
    if (r < 0)
        return r;
    char *dir = folder_of(path);
    if (!dir) {
        secure_free(data, cap);
        set_error(err, err_len, "out of memory");
        return M2MVPN_E_NOMEM;
    }
    r = profile_set_parse(data, len, dir, ret, err, err_len);
    free(dir);
    /* The file may hold secrets (PSK, passwords, PINs). */
    secure_free(data, cap);
    return r;
}
