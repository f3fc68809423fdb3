/* SPDX-License-Identifier: Apache-2.0 */
/* m2mvpn_bind_key(): machine-bound keys, see lib/cred/cred_machine.c. */
#include <m2mvpn/m2mvpn.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/secmem.h"
#include "cred/cred.h"

#define KEY_MAX (64 * 1024)

static int fail(char *err, size_t err_len, int code, const char *fmt, const char *a, const char *b)
{
    if (err && err_len)
        snprintf(err, err_len, fmt, a, b);
    return code;
}

static int read_key(const char *path, uint8_t **ret, size_t *ret_len, char *err, size_t err_len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return fail(err, err_len, M2MVPN_E_IO, "cannot read %s: %s", path, strerror(errno));
    uint8_t *buf = malloc(KEY_MAX + 1);
    size_t n = 0;
    ssize_t got = 0;
    while (buf && n <= KEY_MAX && (got = read(fd, buf + n, KEY_MAX + 1 - n)) > 0)
        n += (size_t)got;
    int e = errno;
    close(fd);
    if (!buf)
        return M2MVPN_E_NOMEM;
    if (got < 0 || n > KEY_MAX) {
        secure_free(buf, KEY_MAX + 1);
        return fail(err, err_len, got < 0 ? M2MVPN_E_IO : M2MVPN_E_CERT, "cannot read %s: %s", path,
                    got < 0 ? strerror(e) : "larger than 64 KiB");
    }
    buf[n] = '\0';
    if (!strstr((const char *)buf, "-----BEGIN ") || !strstr((const char *)buf, "PRIVATE KEY-----")) {
        secure_free(buf, KEY_MAX + 1);
        return fail(err, err_len, M2MVPN_E_CERT, "%s: no PEM private key%s", path, "");
    }
    *ret = buf;
    *ret_len = n;
    return 0;
}

int m2mvpn_bind_key(const char *key_path, const char *out_path, const char *sources, char *err, size_t err_len)
{
    if (err && err_len)
        err[0] = '\0';
    if (!key_path || !*key_path || !out_path || !*out_path)
        return fail(err, err_len, M2MVPN_E_INVAL, "m2mvpn_bind_key: key_path and out_path are required%s%s", "", "");
    char why[512] = "";
    if (sources && cred_machine_check_sources(sources, why, sizeof(why)) < 0)
        return fail(err, err_len, M2MVPN_E_INVAL, "m2mvpn_bind_key: %s%s", why, "");
    uint8_t *key = NULL, *bound = NULL;
    size_t key_len = 0, bound_len = 0;
    int r = read_key(key_path, &key, &key_len, err, err_len);
    if (r < 0)
        return r;
    r = cred_machine_bind(key, key_len, sources, &bound, &bound_len, why, sizeof(why));
    secure_free(key, KEY_MAX + 1);
    if (r < 0)
        return fail(err, err_len, r, "%s%s", why, "");
    /* Written beside the target, then renamed: never a half-written key file. */
    size_t tl = strlen(out_path) + 16;
    char *tmp = malloc(tl);
    if (!tmp) {
        free(bound);
        return M2MVPN_E_NOMEM;
    }
    snprintf(tmp, tl, "%s.tmpXXXXXX", out_path);
    int fd = mkstemp(tmp);
    bool ok = fd >= 0 && fchmod(fd, 0600) == 0;
    size_t done = 0;
    while (ok && done < bound_len) {
        ssize_t w = write(fd, bound + done, bound_len - done);
        ok = w > 0;
        done += ok ? (size_t)w : 0;
    }
    int e = errno;
    ok = ok && fsync(fd) == 0;
    if (fd >= 0 && close(fd) != 0)
        ok = false;
    if (ok && rename(tmp, out_path) != 0) {
        e = errno;
        ok = false;
    }
    if (!ok && fd >= 0)
        unlink(tmp);
    free(tmp);
    free(bound);
    if (!ok)
        return fail(err, err_len, M2MVPN_E_IO, "cannot write %s: %s", out_path, strerror(e ? e : EIO));
    return 0;
}
