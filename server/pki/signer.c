/* SPDX-License-Identifier: Apache-2.0 */
/*
 * server/pki: a signer is a certificate and its private key at an abstract
 * location. Only "file:PATH" (a PEM key) today; an HSM ("pkcs11:...") adds a
 * case to the scheme switch and nothing else changes for the callers.
 */
#include <errno.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pki_srv.h"
#include "pki_local.h"

struct pki_signer {
    X509 *cert;
    EVP_PKEY *key;
};

static X509 *load_cert(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "cannot open certificate %s: %s", path, strerror(errno));
        return NULL;
    }
    X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    if (!x)
        snprintf(err, errlen, "%s holds no PEM certificate", path);
    ERR_clear_error();
    return x;
}

static EVP_PKEY *load_file_key(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "cannot open private key %s: %s", path, strerror(errno));
        return NULL;
    }
    /* An empty passphrase callback: an encrypted key is refused, not prompted for. */
    EVP_PKEY *k = PEM_read_PrivateKey(f, NULL, pki_no_passphrase, NULL);
    fclose(f);
    if (!k)
        snprintf(err, errlen, "%s holds no unencrypted PEM private key", path);
    ERR_clear_error();
    return k;
}

int pki_signer_open(pki_signer **out, const char *cert_path, const char *key_location,
                    char *err, size_t errlen)
{
    if (!out || !cert_path || !key_location) {
        snprintf(err, errlen, "pki_signer_open: missing certificate path or key location");
        return -1;
    }
    *out = NULL;
    const char *colon = strchr(key_location, ':');
    if (!colon) {
        snprintf(err, errlen, "key location \"%s\" has no scheme (expected file:PATH)", key_location);
        return -1;
    }
    size_t slen = (size_t)(colon - key_location);
    const char *rest = colon + 1;

    X509 *cert = load_cert(cert_path, err, errlen);
    if (!cert)
        return -1;
    EVP_PKEY *key = NULL;
    if (slen == 4 && memcmp(key_location, "file", 4) == 0) {
        if (!*rest) {
            snprintf(err, errlen, "key location \"file:\" names no file");
            X509_free(cert);
            return -1;
        }
        key = load_file_key(rest, err, errlen);
    } else {
        /* pkcs11: and others come here until they are written. */
        snprintf(err, errlen, "key location scheme \"%.*s\" is not supported yet (only file:PATH)",
                 (int)slen, key_location);
    }
    if (!key) {
        X509_free(cert);
        return -1;
    }
    if (X509_check_private_key(cert, key) != 1) {
        ERR_clear_error();
        snprintf(err, errlen, "private key at %s does not match certificate %s", key_location, cert_path);
        EVP_PKEY_free(key);
        X509_free(cert);
        return -1;
    }
    pki_signer *s = calloc(1, sizeof(*s));
    if (!s) {
        snprintf(err, errlen, "out of memory");
        EVP_PKEY_free(key);
        X509_free(cert);
        return -1;
    }
    s->cert = cert;
    s->key = key;
    *out = s;
    return 0;
}

void pki_signer_free(pki_signer *s)
{
    if (!s)
        return;
    EVP_PKEY_free(s->key);
    X509_free(s->cert);
    free(s);
}

X509 *pki_signer_cert(const pki_signer *s)
{
    return s ? s->cert : NULL;
}

EVP_PKEY *pki_signer_key(const pki_signer *s)
{
    return s ? s->key : NULL;
}

int pki_no_passphrase(char *buf, int size, int rwflag, void *u)
{
    (void)buf; (void)size; (void)rwflag; (void)u;
    return 0;
}

const char *pki_err_reason(void)
{
    unsigned long e = ERR_peek_last_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    return r ? r : "out of memory or an internal error";
}
