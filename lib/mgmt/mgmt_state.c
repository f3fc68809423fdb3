/* SPDX-License-Identifier: Apache-2.0 */
/* The state directory: atomic files and mgmt.json. */
#include "mgmt.h"

#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *const phase_names[] = {
    [MGMT_UNENROLLED] = "unenrolled",
    [MGMT_PENDING] = "pending",
    [MGMT_ENROLLED] = "enrolled",
    [MGMT_ERROR] = "error",
    [MGMT_DECOMMISSIONED] = "decommissioned",
};

const char *mgmt_phase_name(mgmt_phase p)
{
    return (size_t)p < sizeof(phase_names) / sizeof(phase_names[0]) ? phase_names[p] : "unknown";
}

int mgmt_write_file(const char *dir, const char *name, const void *data, size_t len, char *err, size_t err_len)
{
    char path[4096], tmp[4096];
    if (snprintf(path, sizeof(path), "%s/%s", dir, name) >= (int)sizeof(path) ||
        snprintf(tmp, sizeof(tmp), "%s/.%s.tmp", dir, name) >= (int)sizeof(tmp)) {
        snprintf(err, err_len, "state directory path too long");
        return M2MVPN_E_INVAL;
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        goto fail;
    const uint8_t *p = data;
    for (size_t done = 0; done < len;) {
        ssize_t n = write(fd, p + done, len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            goto fail_fd;
        done += (size_t)n;
    }
    if (fchmod(fd, 0600) < 0 || fsync(fd) < 0)
        goto fail_fd;
    if (close(fd) < 0) {
        fd = -1;
        goto fail;
    }
    fd = -1;
    if (rename(tmp, path) < 0)
        goto fail;
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    return 0;
fail_fd:
    close(fd);
fail:
    snprintf(err, err_len, "cannot write %s in the state directory %s: %s", name, dir, strerror(errno));
    unlink(tmp);
    return M2MVPN_E_IO;
}

int mgmt_write_json(const char *dir, const char *name, json_object *o, char *err, size_t err_len)
{
    if (!o)
        return M2MVPN_E_NOMEM;
    size_t n = 0;
    const char *text = json_object_to_json_string_length(o, JSON_C_TO_STRING_PRETTY, &n);
    int r = text ? mgmt_write_file(dir, name, text, n, err, err_len) : M2MVPN_E_NOMEM;
    json_object_put(o);
    return r;
}

int mgmt_read_json(const char *dir, const char *name, json_object **ret, char *err, size_t err_len)
{
    char path[4200];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    *ret = json_object_from_file(path);
    if (*ret || (access(path, F_OK) < 0 && errno == ENOENT))
        return 0;
    snprintf(err, err_len, "%s is unreadable or not JSON", path);
    return M2MVPN_E_IO;
}

int mgmt_state_load(const char *dir, mgmt_state *st, char *err, size_t err_len)
{
    memset(st, 0, sizeof(*st));
    json_object *o;
    if (mgmt_read_json(dir, "mgmt.json", &o, err, err_len) < 0) {
        snprintf(err + strlen(err), err_len - strlen(err), ": remove it to enrol again");
        return M2MVPN_E_IO;
    }
    if (!o)
        return 0;
    json_object *v;
    if (json_object_object_get_ex(o, "state", &v)) {
        const char *s = json_object_get_string(v);
        for (size_t i = 0; i < sizeof(phase_names) / sizeof(phase_names[0]); i++)
            if (s && strcmp(s, phase_names[i]) == 0)
                st->phase = (mgmt_phase)i;
    }
    if (json_object_object_get_ex(o, "device_id", &v))
        snprintf(st->device_id, sizeof(st->device_id), "%s", json_object_get_string(v));
    if (json_object_object_get_ex(o, "last_contact", &v))
        st->last_contact = json_object_get_int64(v);
    if (json_object_object_get_ex(o, "profile_version", &v))
        st->profile_version = json_object_get_int64(v);
    if (json_object_object_get_ex(o, "software_seq", &v))
        st->software_seq = json_object_get_int64(v);
    if (json_object_object_get_ex(o, "software_refetch", &v))
        st->software_refetch = json_object_get_int64(v);
    if (json_object_object_get_ex(o, "etag", &v))
        snprintf(st->etag, sizeof(st->etag), "%s", json_object_get_string(v));
    json_object_put(o);
    return 0;
}

int mgmt_state_save(const char *dir, const mgmt_state *st, char *err, size_t err_len)
{
    json_object *o = json_object_new_object();
    if (!o)
        return M2MVPN_E_NOMEM;
    json_object_object_add(o, "state", json_object_new_string(mgmt_phase_name(st->phase)));
    json_object_object_add(o, "device_id", json_object_new_string(st->device_id));
    json_object_object_add(o, "last_contact", json_object_new_int64(st->last_contact));
    json_object_object_add(o, "profile_version", json_object_new_int64(st->profile_version));
    json_object_object_add(o, "etag", json_object_new_string(st->etag));
    json_object_object_add(o, "software_seq", json_object_new_int64(st->software_seq));
    if (st->software_refetch)
        json_object_object_add(o, "software_refetch", json_object_new_int64(st->software_refetch));
    return mgmt_write_json(dir, "mgmt.json", o, err, err_len);
}

/* ------------------------------------------------------------ renew.json */

#define RENEW_MARK "renew.json"

static int drop_file(const char *dir, const char *name, char *err, size_t err_len)
{
    char path[4200];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    if (unlink(path) < 0 && errno != ENOENT) {
        snprintf(err, err_len, "cannot remove %s in the state directory %s: %s", name, dir, strerror(errno));
        return M2MVPN_E_IO;
    }
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    return 0;
}

/* A serial as cert_serial_hex writes it: hex digits (BN_bn2hex), a '-'
 * first for a negative one; never empty. */
static bool is_serial_hex(const char *s)
{
    if (*s == '-')
        s++;
    return *s && strspn(s, "0123456789ABCDEFabcdef") == strlen(s);
}

int mgmt_renew_mark_load(const char *dir, mgmt_renew_mark *mk, char *err, size_t err_len)
{
    memset(mk, 0, sizeof(*mk));
    json_object *o;
    int rr = mgmt_read_json(dir, RENEW_MARK, &o, err, err_len);
    if (rr < 0 || !o)
        return rr;
    json_object *d, *s;
    int r = 0;
    if (!json_object_object_get_ex(o, "deployment", &d) || !json_object_is_type(d, json_type_int) ||
        json_object_get_int64(d) <= 0 || !json_object_object_get_ex(o, "old_serial", &s) ||
        !json_object_is_type(s, json_type_string) ||
        (size_t)json_object_get_string_len(s) >= sizeof(mk->old_serial) ||
        !is_serial_hex(json_object_get_string(s))) {
        /* an empty or made-up serial would never equal the certificate's:
         * the renewal would be reported done without having happened */
        snprintf(err, err_len, "%s/%s: no positive \"deployment\" and \"old_serial\" (hex)", dir, RENEW_MARK);
        r = M2MVPN_E_IO;
    } else {
        mk->deployment = json_object_get_int64(d);
        snprintf(mk->old_serial, sizeof(mk->old_serial), "%s", json_object_get_string(s));
    }
    json_object_put(o);
    return r;
}

int mgmt_renew_mark_save(const char *dir, const mgmt_renew_mark *mk, char *err, size_t err_len)
{
    if (mk->deployment == 0)
        return drop_file(dir, RENEW_MARK, err, err_len);
    json_object *o = json_object_new_object();
    if (!o)
        return M2MVPN_E_NOMEM;
    json_object_object_add(o, "deployment", json_object_new_int64(mk->deployment));
    json_object_object_add(o, "old_serial", json_object_new_string(mk->old_serial));
    return mgmt_write_json(dir, RENEW_MARK, o, err, err_len);
}

/* ----------------------------------------------------------- update.json */

#define UPDATE_MARK "update.json"

static bool is_hex64(const char *s)
{
    return strlen(s) == 64 && strspn(s, "0123456789abcdef") == 64;
}

int mgmt_update_mark_load(const char *dir, mgmt_update_mark *mk, char *err, size_t err_len)
{
    memset(mk, 0, sizeof(*mk));
    char path[4200];
    snprintf(path, sizeof(path), "%s/" UPDATE_MARK, dir);
    json_object *o;
    int rr = mgmt_read_json(dir, UPDATE_MARK, &o, err, err_len);
    if (rr < 0 || !o)
        return rr;
    json_object *dep, *ver, *sv, *file, *sha, *size;
    int r = M2MVPN_E_IO;
    if (!json_object_object_get_ex(o, "deployment", &dep) || !json_object_is_type(dep, json_type_int) ||
        !json_object_object_get_ex(o, "version", &ver) || !json_object_is_type(ver, json_type_int) ||
        !json_object_object_get_ex(o, "size", &size) || !json_object_is_type(size, json_type_int) ||
        !json_object_object_get_ex(o, "software_version", &sv) || !json_object_is_type(sv, json_type_string) ||
        !json_object_object_get_ex(o, "file", &file) || !json_object_is_type(file, json_type_string) ||
        !json_object_object_get_ex(o, "sha256", &sha) || !json_object_is_type(sha, json_type_string)) {
        snprintf(err, err_len, "%s: deployment, version, size, software_version, file and sha256 expected", path);
        goto out;
    }
    const char *v = json_object_get_string(sv), *f = json_object_get_string(file),
               *h = json_object_get_string(sha);
    mk->deployment = json_object_get_int64(dep);
    mk->version = json_object_get_int64(ver);
    mk->size = json_object_get_int64(size);
    char want[128];
    /* the file is the download's name for that version and no other: a
     * mark naming another file of the folder (the device key) would have
     * it hashed, refused and removed */
    bool sv_ok = mgmt_software_version_ok(v);
    snprintf(want, sizeof(want), "update-%s.bin", sv_ok ? v : "");
    if (mk->deployment <= 0 || mk->version <= 0 || mk->size < 1 || mk->size > MGMT_ARTIFACT_MAX || !sv_ok ||
        strcmp(f, want) != 0 || !is_hex64(h)) {
        snprintf(err, err_len, "%s: a value is out of range (software_version a version string, file "
                 "\"update-<software_version>.bin\", sha256 64 hex)", path);
        memset(mk, 0, sizeof(*mk));
        goto out;
    }
    snprintf(mk->software_version, sizeof(mk->software_version), "%s", v);
    snprintf(mk->file, sizeof(mk->file), "%s", f);
    memcpy(mk->sha256, h, 65);
    r = 0;
out:
    json_object_put(o);
    return r;
}

int mgmt_update_mark_save(const char *dir, const mgmt_update_mark *mk, char *err, size_t err_len)
{
    if (mk->deployment == 0) {
        int r = drop_file(dir, UPDATE_MARK, err, err_len);
        return r < 0 ? r : drop_file(dir, MGMT_UPDATE_BUNDLE, err, err_len);
    }
    json_object *o = json_object_new_object();
    if (!o)
        return M2MVPN_E_NOMEM;
    json_object_object_add(o, "deployment", json_object_new_int64(mk->deployment));
    json_object_object_add(o, "version", json_object_new_int64(mk->version));
    json_object_object_add(o, "software_version", json_object_new_string(mk->software_version));
    json_object_object_add(o, "file", json_object_new_string(mk->file));
    json_object_object_add(o, "sha256", json_object_new_string(mk->sha256));
    json_object_object_add(o, "size", json_object_new_int64(mk->size));
    return mgmt_write_json(dir, UPDATE_MARK, o, err, err_len);
}

/* The stored bundle, read whole (a plain file, at most MGMT_BUNDLE_MAX). */
static uint8_t *read_bundle(const char *dir, size_t *len)
{
    char path[4200];
    snprintf(path, sizeof(path), "%s/" MGMT_UPDATE_BUNDLE, dir);
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    struct stat sb;
    uint8_t *der = NULL;
    if (fd < 0 || fstat(fd, &sb) < 0 || !S_ISREG(sb.st_mode) || sb.st_size < 1 || sb.st_size > MGMT_BUNDLE_MAX ||
        !(der = malloc((size_t)sb.st_size)))
        goto fail;
    size_t got = 0;
    while (got < (size_t)sb.st_size) {
        ssize_t n = read(fd, der + got, (size_t)sb.st_size - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            goto fail;
        got += (size_t)n;
    }
    close(fd);
    *len = got;
    return der;
fail:
    free(der);
    if (fd >= 0)
        close(fd);
    return NULL;
}

int mgmt_update_stored(const char *dir, X509 *signer, const char *device_id, int64_t software_seq, int64_t now,
                       mgmt_update_mark *mk, mgmt_bundle *ret, char *err, size_t err_len)
{
    int r = mgmt_update_mark_load(dir, mk, err, err_len);
    if (r < 0 || !mk->deployment)
        return r;
    size_t len = 0;
    uint8_t *der = read_bundle(dir, &len);
    if (!der) {
        snprintf(err, err_len, "%s/" MGMT_UPDATE_BUNDLE ": the signed bundle of the stored update is missing or "
                 "unreadable", dir);
        return M2MVPN_E_BUNDLE;
    }
    char why[400];
    mgmt_bundle b;
    /* the version accepted (software_seq) or a later one: never an older */
    int64_t installed = software_seq > 0 ? software_seq - 1 : 0;
    r = mgmt_bundle_verify(der, len, signer, "software", device_id, installed, now, &b, why, sizeof(why));
    free(der);
    if (r < 0) {
        snprintf(err, err_len, "%s/" MGMT_UPDATE_BUNDLE ": %s", dir, why);
        return r == M2MVPN_E_NOMEM ? r : M2MVPN_E_BUNDLE;
    }
    if (b.deployment != mk->deployment || b.version != mk->version || b.size != mk->size ||
        strcmp(b.software_version, mk->software_version) != 0 || strcmp(b.sha256, mk->sha256) != 0) {
        snprintf(err, err_len, "%s/" UPDATE_MARK " does not describe the update its signed bundle "
                 MGMT_UPDATE_BUNDLE " says", dir);
        mgmt_bundle_clear(&b);
        return M2MVPN_E_BUNDLE;
    }
    *ret = b;
    return 0;
}
