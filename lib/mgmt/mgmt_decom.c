/* SPDX-License-Identifier: Apache-2.0 */
/* Decommissioning, the state directory's side: the intent file
 * decommission.json and the removal of the device's credential.
 *
 * Order (mgmt.c): intent "requested" is written before the CMP RR goes
 * out; an accepted RR moves it to "revoked" before anything is removed;
 * the files go; last the intent says "done" and stays, so a restart at any
 * point either sends the RR again (requested), finishes the removal
 * (revoked) or refuses to run the bootstrap (done): never a device that
 * thinks it is enrolled with a revoked certificate. */
#include "mgmt.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define DECOM_FILE "decommission.json"

static const char *const decom_names[] = {
    [MGMT_DECOM_NONE] = "none",
    [MGMT_DECOM_REQUESTED] = "requested",
    [MGMT_DECOM_REVOKED] = "revoked",
    [MGMT_DECOM_DONE] = "done",
};

const char *mgmt_decom_phase_name(mgmt_decom_phase p)
{
    return (size_t)p < sizeof(decom_names) / sizeof(decom_names[0]) ? decom_names[p] : "unknown";
}

static void sync_dir(const char *dir)
{
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
}

int mgmt_decom_load(const char *dir, mgmt_decom *d, char *err, size_t err_len)
{
    memset(d, 0, sizeof(*d));
    char path[4200];
    snprintf(path, sizeof(path), "%s/" DECOM_FILE, dir);
    if (access(path, F_OK) < 0 && errno == ENOENT)
        return 0;
    json_object *o = json_object_from_file(path);
    json_object *ph = NULL, *dev = NULL, *at = NULL;
    int r = M2MVPN_E_IO;
    if (o && json_object_object_get_ex(o, "phase", &ph) && json_object_is_type(ph, json_type_string)) {
        const char *s = json_object_get_string(ph);
        for (size_t i = MGMT_DECOM_REQUESTED; i < sizeof(decom_names) / sizeof(decom_names[0]); i++)
            if (!strcmp(s, decom_names[i])) {
                d->phase = (mgmt_decom_phase)i;
                r = 0;
            }
    }
    if (r == 0 && json_object_object_get_ex(o, "device", &dev) && json_object_is_type(dev, json_type_string))
        snprintf(d->device_id, sizeof(d->device_id), "%s", json_object_get_string(dev));
    if (r == 0 && json_object_object_get_ex(o, "time", &at) && json_object_is_type(at, json_type_int))
        d->time = json_object_get_int64(at);
    json_object_put(o);
    if (r < 0) {
        /* Unreadable: the safe reading is "a decommissioning was asked". */
        d->phase = MGMT_DECOM_REQUESTED;
        snprintf(err, err_len, "%s is malformed: taken as an unfinished decommissioning", path);
    }
    return r;
}

int mgmt_decom_save(const char *dir, const mgmt_decom *d, char *err, size_t err_len)
{
    if (d->phase == MGMT_DECOM_NONE) {
        char path[4200];
        snprintf(path, sizeof(path), "%s/" DECOM_FILE, dir);
        if (unlink(path) < 0 && errno != ENOENT) {
            snprintf(err, err_len, "cannot remove %s: %s", path, strerror(errno));
            return M2MVPN_E_IO;
        }
        sync_dir(dir);
        return 0;
    }
    json_object *o = json_object_new_object();
    if (!o)
        return M2MVPN_E_NOMEM;
    json_object_object_add(o, "phase", json_object_new_string(mgmt_decom_phase_name(d->phase)));
    json_object_object_add(o, "device", json_object_new_string(d->device_id));
    json_object_object_add(o, "time", json_object_new_int64(d->time));
    return mgmt_write_json(dir, DECOM_FILE, o, err, err_len);
}

/* Overwrite a regular file with zeros (its length), fsync, then unlink: the
 * key bytes do not stay in the freed blocks of a file system that writes
 * in place (journalling or flash translation layers may keep copies).
 * Anything else than a regular file (a link, a FIFO, a device) is only
 * unlinked, never opened: a FIFO would block the engine, a link would
 * send the zeros elsewhere. follow: `path` is the bootstrap's own key
 * path, which may be a link to the key file: that file goes too. */
static int shred(const char *path, bool follow, char *err, size_t err_len)
{
    struct stat ls;
    if (lstat(path, &ls) < 0) {
        if (errno == ENOENT)
            return 0;
        goto fail;
    }
    if (S_ISLNK(ls.st_mode) && follow) {
        char *real = realpath(path, NULL);
        int r = real ? shred(real, false, err, err_len) : 0; /* a dangling link: nothing behind it */
        free(real);
        if (r < 0)
            return r;
    } else if (S_ISREG(ls.st_mode)) {
        int fd = open(path, O_WRONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY);
        struct stat sb;
        if (fd >= 0 && fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode) && sb.st_ino == ls.st_ino &&
            sb.st_dev == ls.st_dev) {
            static const char zero[4096];
            for (off_t done = 0; done < sb.st_size;) {
                size_t chunk = sb.st_size - done < (off_t)sizeof(zero) ? (size_t)(sb.st_size - done) : sizeof(zero);
                ssize_t w = write(fd, zero, chunk);
                if (w <= 0) {
                    if (w < 0 && errno == EINTR)
                        continue;
                    break;
                }
                done += w;
            }
            fsync(fd);
        }
        if (fd >= 0)
            close(fd);
    }
    if (unlink(path) < 0 && errno != ENOENT)
        goto fail;
    return 0;
fail:
    snprintf(err, err_len, "cannot remove %s: %s", path, strerror(errno));
    return M2MVPN_E_IO;
}

/* What the device keeps in its state directory (mgmt.c, mgmt_apply.c,
 * mgmt_update.c): the rest of the folder is the application's. */
static bool ours(const char *n)
{
    static const char *const exact[] = { "device.key.pem", "device.key.pem.next", "device.tss2.pem",
                                         "device.tss2.pem.next", "device.crt.pem", "device.crt.pem.next",
                                         "device.p11id.next", "mgmt.json", "apply.json", "profile.json",
                                         "profile.next.json", "profile.prev.json", "update.json",
                                         MGMT_UPDATE_BUNDLE, "renew.json" };
    for (size_t i = 0; i < sizeof(exact) / sizeof(exact[0]); i++) {
        size_t el = strlen(exact[i]);
        if (!strcmp(n, exact[i]))
            return true;
        /* a key file's generation stopped before its rename: NAME.tmp.XXXXXX
         * (lib/cred/keygen.c), a private key maybe */
        if (!strncmp(n, exact[i], el) && !strncmp(n + el, ".tmp.", 5) && strlen(n + el + 5) == 6)
            return true;
    }
    size_t l = strlen(n);
    if (!strncmp(n, "ca-", 3) && l > 7 && !strcmp(n + l - 4, ".pem"))
        return true;
    if (!strncmp(n, "update-", 7) && l > 11 && !strcmp(n + l - 4, ".bin"))
        return true;
    if (n[0] == '.' && (!strncmp(n + 1, "update-", 7) || strstr(n, ".tmp")))
        return true; /* half-written files of ours */
    return false;
}

int mgmt_decom_wipe(const char *dir, const char *key_file, char *err, size_t err_len)
{
    char path[4200];
    int r = 0;
    /* The key first: without it the certificate is of no use to anyone. */
    if (key_file && key_file[0]) {
        r = shred(key_file, true, err, err_len);
        if (r < 0)
            return r;
        snprintf(path, sizeof(path), "%s.next", key_file);
        if ((r = shred(path, true, err, err_len)) < 0)
            return r;
    }
    DIR *d = opendir(dir);
    if (!d) {
        snprintf(err, err_len, "cannot read the state directory %s: %s", dir, strerror(errno));
        return M2MVPN_E_IO;
    }
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!ours(e->d_name) || !strcmp(e->d_name, DECOM_FILE))
            continue;
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        if ((r = shred(path, false, err, err_len)) < 0)
            break;
    }
    closedir(d);
    sync_dir(dir);
    return r;
}
