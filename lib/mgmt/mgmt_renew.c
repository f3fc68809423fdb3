/* SPDX-License-Identifier: Apache-2.0 */
/* Certificate renewal, the schedule (issue 15): when to send the CMP KUR
 * and how long to wait after a failed one. Pure functions of the
 * certificate's validity and a random draw, so they are tested alone. */
#include "mgmt.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* The renewal point is at 2/3 of the lifetime, moved by up to ±1/18 of it
 * (so it stays between 11/18 and 13/18: at least 5/18 of the lifetime is
 * left for retries). `rnd` is a uniform draw in [0, 1). */
int64_t mgmt_renew_at(int64_t not_before, int64_t not_after, double rnd)
{
    if (not_after <= not_before)
        return not_before; /* nonsense validity: renew at once */
    int64_t life = not_after - not_before;
    if (rnd < 0.0)
        rnd = 0.0;
    if (rnd >= 1.0)
        rnd = 0.999999;
    int64_t base = not_before + life * 2 / 3;
    int64_t spread = life / 18;
    int64_t jitter = (int64_t)((rnd * 2.0 - 1.0) * (double)spread);
    return base + jitter;
}

/* After `failures` failed attempts (>= 1): 60 s doubling, at most 1 h; and
 * never past the point where half the time left before expiry is used, so
 * several more attempts fit before the certificate expires (at least 5 s). */
int64_t mgmt_renew_retry_s(unsigned failures, int64_t now, int64_t not_after)
{
    int64_t d = MGMT_RENEW_RETRY_MIN_S;
    for (unsigned i = 1; i < failures && d < MGMT_RENEW_RETRY_MAX_S; i++)
        d *= 2;
    if (d > MGMT_RENEW_RETRY_MAX_S)
        d = MGMT_RENEW_RETRY_MAX_S;
    int64_t left = not_after - now;
    if (left / 2 < d)
        d = left / 2;
    if (d < 5)
        d = 5;
    return d;
}

static bool cert_holds(const char *cert_path, EVP_PKEY *key)
{
    FILE *f = key ? fopen(cert_path, "r") : NULL;
    X509 *c = f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
    if (f)
        fclose(f);
    bool ok = c && EVP_PKEY_eq(X509_get0_pubkey(c), key) == 1;
    X509_free(c);
    ERR_clear_error();
    return ok;
}

static void sync_dir(const char *dir)
{
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
}

int mgmt_renew_swap(const char *dir, const char *key_path, bool new_key_file,
                    EVP_PKEY *(*key_of)(void *arg, const char *path), void *arg, bool *key_moved, char *err,
                    size_t err_len)
{
    char kn[4200], cn[4200], cp[4200];
    if (key_moved)
        *key_moved = false;
    if (snprintf(kn, sizeof(kn), "%s.next", key_path) >= (int)sizeof(kn) ||
        snprintf(cn, sizeof(cn), "%s/device.crt.pem.next", dir) >= (int)sizeof(cn) ||
        snprintf(cp, sizeof(cp), "%s/device.crt.pem", dir) >= (int)sizeof(cp)) {
        snprintf(err, err_len, "state directory or key path too long");
        return M2MVPN_E_INVAL;
    }
    bool has_next = new_key_file && access(kn, F_OK) == 0;
    if (key_of) {
        EVP_PKEY *k = key_of(arg, has_next ? kn : key_path);
        bool fits = cert_holds(cn, k);
        EVP_PKEY_free(k);
        if (!fits) {
            snprintf(err, err_len, "%s does not hold the public key of %s (tampered, or another attempt's): "
                     "removed, the current key and certificate stay", cn, has_next ? kn : key_path);
            if (has_next)
                unlink(kn);
            unlink(cn);
            sync_dir(dir);
            return M2MVPN_E_CERT;
        }
    }
    if (has_next && rename(kn, key_path) < 0) {
        snprintf(err, err_len, "cannot rename %s over %s: %s", kn, key_path, strerror(errno));
        /* the certificate is for the key that could not be put in place */
        unlink(kn);
        unlink(cn);
        sync_dir(dir);
        return M2MVPN_E_IO;
    }
    if (has_next && key_moved)
        *key_moved = true;
    if (rename(cn, cp) < 0) {
        snprintf(err, err_len, "cannot rename %s over %s: %s", cn, cp, strerror(errno));
        sync_dir(dir);
        return M2MVPN_E_IO;
    }
    sync_dir(dir);
    return 0;
}
