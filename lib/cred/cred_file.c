/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The file credential provider (profile cert.source "file"): PEM certificate
 * (+ chain) with a PEM/DER private key, or a PKCS#12 file. Contract: cred.h.
 *
 * The encrypted key (or .p12) stays in memory as read, so that a PIN entered
 * later can unlock it without touching the file again; the decrypted key lives
 * only in the EVP_PKEY, which OpenSSL wipes when freed.
 */
#include "cred.h"

#include <m2mvpn/m2mvpn.h>

#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/pkcs12.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "core/secmem.h"
#include "crypto/pki_internal.h"

typedef struct file_cred {
    char *cert_path;        /* names the credential in messages */
    char *key_path;         /* NULL for PKCS#12 */
    bool is_p12;
    uint8_t *locked_data;   /* the .p12 or key file while locked; wiped on free */
    size_t locked_len;
    pki_cert **chain;       /* end-entity first */
    size_t n_chain;
    EVP_PKEY *key;          /* NULL while locked */
} file_cred;

/* ------------------------------------------------------------- lifecycle */

static void file_destroy(void *ctx)
{
    file_cred *fc = ctx;
    if (!fc)
        return;
    free(fc->cert_path);
    free(fc->key_path);
    secure_free(fc->locked_data, fc->locked_len);
    pki_cert_array_free(fc->chain, fc->n_chain);
    EVP_PKEY_free(fc->key);
    free(fc);
}

static const char *pin_target(const file_cred *fc)
{
    return fc->key_path ? fc->key_path : fc->cert_path;
}

static bool file_pin_needed(void *ctx)
{
    return ((file_cred *)ctx)->key == NULL;
}

/* ----------------------------------------------------------- key loading */

/* Password callback state: the PIN to offer (or none) and whether OpenSSL
 * asked, which is how we learn that a key is encrypted. */
typedef struct pin_offer {
    const char *pin;
    size_t len;
    bool asked;
} pin_offer;

static int offer_pin(char *buf, int size, int rwflag, void *u)
{
    (void)rwflag;
    pin_offer *po = u;
    po->asked = true;
    if (!po->pin || po->len > (size_t)size)
        return -1;
    memcpy(buf, po->pin, po->len);
    return (int)po->len;
}

/* A PEM or DER private key from memory. Returns NULL on failure; *asked tells
 * whether it wanted a password. */
static EVP_PKEY *key_from_memory(const uint8_t *data, size_t len, const char *pin,
                                 size_t pin_len, bool *asked)
{
    pin_offer po = { pin, pin_len, false };
    EVP_PKEY *key = NULL;
    BIO *bio = BIO_new_mem_buf(data, (int)len);
    if (bio) {
        if (pki_looks_pem(data, len)) {
            key = PEM_read_bio_PrivateKey(bio, NULL, offer_pin, &po);
        } else {
            /* DER: plain PKCS#8 / traditional, else encrypted PKCS#8. */
            const unsigned char *p = data;
            key = d2i_AutoPrivateKey(NULL, &p, (long)len);
            if (!key) {
                ERR_clear_error();
                (void)BIO_reset(bio);
                key = d2i_PKCS8PrivateKey_bio(bio, NULL, offer_pin, &po);
            }
        }
        BIO_free(bio);
    }
    ERR_clear_error();
    *asked = po.asked;
    return key;
}

/* The key must be usable (RSA, EC P-256/384/521) and belong to the chain's
 * end-entity certificate. Takes ownership of `key`. */
static int adopt_key(file_cred *fc, EVP_PKEY *key, char *err, size_t err_len)
{
    if (pki_pkey_type(key, NULL) == PKI_KEY_UNKNOWN) {
        pki_set_err(err, err_len, "%s: unsupported key type (want RSA, ECDSA P-256/384/521 or Ed25519)",
                    pin_target(fc));
        EVP_PKEY_free(key);
        return M2MVPN_E_CERT;
    }
    if (EVP_PKEY_eq(pki_cert_pubkey(fc->chain[0]), key) != 1) {
        char subject[256];
        pki_cert_subject_text(fc->chain[0], subject, sizeof subject);
        pki_set_err(err, err_len, "private key does not match certificate %s", subject);
        EVP_PKEY_free(key);
        ERR_clear_error();
        return M2MVPN_E_CERT;
    }
    fc->key = key;
    secure_free(fc->locked_data, fc->locked_len);
    fc->locked_data = NULL;
    fc->locked_len = 0;
    return 0;
}

static int unlock_pem_key(file_cred *fc, const char *pin, size_t pin_len, char *err, size_t err_len)
{
    bool asked = false;
    EVP_PKEY *key = key_from_memory(fc->locked_data, fc->locked_len, pin, pin_len, &asked);
    if (!key) {
        if (asked && !pin) {
            pki_set_err(err, err_len, "PIN required for %s", fc->key_path);
            return M2MVPN_E_PIN;
        }
        if (asked) {
            pki_set_err(err, err_len, "wrong PIN for %s", fc->key_path);
            return M2MVPN_E_PIN;
        }
        pki_set_err(err, err_len, "%s: no usable private key", fc->key_path);
        return M2MVPN_E_CERT;
    }
    return adopt_key(fc, key, err, err_len);
}

/* PKCS#12: with the PIN (NULL: try no password and the empty one, which is
 * what "no password" means for most tools). */
static int unlock_p12(file_cred *fc, const char *pin, size_t pin_len, char *err, size_t err_len)
{
    const unsigned char *p = fc->locked_data;
    PKCS12 *p12 = d2i_PKCS12(NULL, &p, (long)fc->locked_len);
    if (!p12) {
        ERR_clear_error();
        pki_set_err(err, err_len, "%s: not a PKCS#12 file", fc->cert_path);
        return M2MVPN_E_CERT;
    }
    char *pass = NULL;
    if (pin && !(pass = secure_memdup(pin, pin_len))) {
        PKCS12_free(p12);
        return M2MVPN_E_NOMEM;
    }
    /* Candidates: the PIN, or else NULL and "". The MAC tells a wrong password
     * apart from a damaged file before anything is decrypted. */
    const char *cands[2] = { pass, pass ? NULL : "" };
    size_t n_cands = pass ? 1 : 2;
    bool mac = PKCS12_mac_present(p12);
    EVP_PKEY *key = NULL;
    X509 *x = NULL;
    STACK_OF(X509) *ca = NULL;
    bool parsed = false, mac_ok = false;
    char why[128] = "";
    for (size_t i = 0; i < n_cands && !parsed; i++) {
        const char *c = cands[i];
        if (mac && !PKCS12_verify_mac(p12, c, c ? (int)strlen(c) : 0))
            continue;
        mac_ok = mac;
        parsed = PKCS12_parse(p12, c, &key, &x, &ca) == 1;
        if (!parsed)
            pki_openssl_reason(why, sizeof why);
    }
    if (pass)
        secure_free_str(pass);
    PKCS12_free(p12);
    ERR_clear_error();
    if (!parsed && mac_ok) {
        /* The password is right (the MAC says so), yet decryption failed:
         * typically a legacy algorithm (RC2-40) that OpenSSL 3 has moved to
         * its legacy provider. Not a PIN problem: do not ask for another. */
        pki_set_err(err, err_len, "%s: cannot decrypt PKCS#12 (%s); re-export it with AES",
                    fc->cert_path, why);
        return M2MVPN_E_CERT;
    }
    if (!parsed) {
        pki_set_err(err, err_len, pin ? "wrong PIN for %s" : "PIN required for %s", fc->cert_path);
        return M2MVPN_E_PIN;
    }
    int rc = 0;
    if (!key || !x) {
        pki_set_err(err, err_len, "%s: PKCS#12 without %s", fc->cert_path,
                    key ? "certificate" : "private key");
        rc = M2MVPN_E_CERT;
    }
    /* Chain: end-entity, then the other certificates in file order. */
    int n_ca = ca ? sk_X509_num(ca) : 0;
    pki_cert **chain = rc ? NULL : calloc((size_t)n_ca + 1, sizeof *chain);
    size_t n = 0;
    if (!rc && !chain)
        rc = M2MVPN_E_NOMEM;
    if (!rc) {
        chain[n] = pki_cert_wrap(x);
        x = NULL;
        if (chain[n])
            n++;
        else
            rc = M2MVPN_E_NOMEM;
    }
    for (int i = 0; !rc && i < n_ca; i++) {
        X509 *c = sk_X509_value(ca, i);
        if (!X509_up_ref(c) || !(chain[n] = pki_cert_wrap(c)))
            rc = M2MVPN_E_NOMEM;
        else
            n++;
    }
    X509_free(x);
    sk_X509_pop_free(ca, X509_free);
    if (rc) {
        pki_cert_array_free(chain, n);
        EVP_PKEY_free(key);
        return rc;
    }
    pki_cert_array_free(fc->chain, fc->n_chain);
    fc->chain = chain;
    fc->n_chain = n;
    rc = adopt_key(fc, key, err, err_len);
    if (rc < 0) {
        pki_cert_array_free(fc->chain, fc->n_chain);
        fc->chain = NULL;
        fc->n_chain = 0;
    }
    return rc;
}

static int unlock(file_cred *fc, const char *pin, size_t pin_len, char *err, size_t err_len)
{
    return fc->is_p12 ? unlock_p12(fc, pin, pin_len, err, err_len)
                      : unlock_pem_key(fc, pin, pin_len, err, err_len);
}

/* ------------------------------------------------------------ operations */

static int file_chain(void *ctx, pki_cert *const **ret_certs, size_t *ret_n,
                      char *err, size_t err_len)
{
    file_cred *fc = ctx;
    if (!fc->n_chain) {
        pki_set_err(err, err_len, "PIN required for %s", pin_target(fc));
        return M2MVPN_E_PIN;
    }
    *ret_certs = fc->chain;
    *ret_n = fc->n_chain;
    return 0;
}

static int file_key_info(void *ctx, pki_key_type *ret_type, unsigned *ret_bits,
                         char *err, size_t err_len)
{
    file_cred *fc = ctx;
    if (!fc->n_chain) {
        pki_set_err(err, err_len, "PIN required for %s", pin_target(fc));
        return M2MVPN_E_PIN;
    }
    /* The certificate's key is the private key's public half (checked). */
    *ret_type = pki_cert_key_type(fc->chain[0], ret_bits);
    return 0;
}

static int file_set_pin(void *ctx, const char *pin, size_t len, char *err, size_t err_len)
{
    file_cred *fc = ctx;
    if (fc->key)
        return 0; /* already unlocked: nothing to do */
    return unlock(fc, pin, len, err, err_len);
}

static int file_sign(void *ctx, pki_sig_scheme scheme, const uint8_t *data, size_t len,
                     uint8_t *sig, size_t cap, size_t *ret_len, char *err, size_t err_len)
{
    file_cred *fc = ctx;
    if (!fc->key) {
        pki_set_err(err, err_len, "PIN required for %s", pin_target(fc));
        return M2MVPN_E_PIN;
    }
    const EVP_MD *md = pki_scheme_md(scheme);
    pki_key_type kt = pki_pkey_type(fc->key, NULL);
    if (!pki_auth_scheme_fits(PKI_AUTH_DIGITAL_SIGNATURE, scheme, kt) &&
        !(scheme == PKI_SIG_RSA_PKCS1_SHA1 && kt == PKI_KEY_RSA)) {
        pki_set_err(err, err_len, "cannot sign %s with a %s key", pki_sig_scheme_name(scheme),
                    pki_key_type_name(kt));
        return M2MVPN_E_INVAL;
    }
    int rc = M2MVPN_E_CRYPTO;
    EVP_PKEY_CTX *pctx = NULL;
    EVP_MD_CTX *mdctx = EVP_MD_CTX_new();
    size_t need = 0;
    if (!mdctx || EVP_DigestSignInit(mdctx, &pctx, md, NULL, fc->key) != 1 ||
        !pki_scheme_set_padding(pctx, scheme))
        goto out;
    if (EVP_DigestSign(mdctx, NULL, &need, data, len) != 1)
        goto out;
    if (need > cap) {
        pki_set_err(err, err_len, "signature buffer too small (%zu < %zu)", cap, need);
        rc = M2MVPN_E_INVAL;
        goto out;
    }
    size_t got = cap;
    if (EVP_DigestSign(mdctx, sig, &got, data, len) != 1)
        goto out;
    *ret_len = got;
    rc = 0;
out:
    if (rc == M2MVPN_E_CRYPTO) {
        char why[96];
        pki_set_err(err, err_len, "signing failed: %s", pki_openssl_reason(why, sizeof why));
    }
    ERR_clear_error();
    EVP_MD_CTX_free(mdctx);
    return rc;
}

static const cred_ops file_ops = {
    .name = "file",
    .chain = file_chain,
    .key_info = file_key_info,
    .pin_needed = file_pin_needed,
    .set_pin = file_set_pin,
    .sign = file_sign,
    .destroy = file_destroy,
};

/* ------------------------------------------------------------------ open */

/* PEM certificate(s) + key (key_file, or the certificate file itself if it
 * holds a key block). */
static int open_pem(file_cred *fc, const uint8_t *data, size_t len, const char *key_file,
                    char *err, size_t err_len)
{
    int rc = pki_certs_from_memory(data, len, fc->cert_path, &fc->chain, &fc->n_chain,
                                   err, err_len);
    if (rc < 0)
        return rc;
    if (key_file) {
        rc = pki_read_file(key_file, &fc->locked_data, &fc->locked_len, err, err_len);
        if (rc < 0)
            return rc;
        if (!(fc->key_path = strdup(key_file)))
            return M2MVPN_E_NOMEM;
    } else {
        if (!(fc->locked_data = malloc(len)))
            return M2MVPN_E_NOMEM;
        memcpy(fc->locked_data, data, len);
        fc->locked_len = len;
        if (!(fc->key_path = strdup(fc->cert_path)))
            return M2MVPN_E_NOMEM;
    }
    return 0;
}

int cred_file_open(const char *cert_file, const char *key_file,
                   const char *pin, size_t pin_len,
                   cred_provider **ret, char *err, size_t err_len)
{
    if (!cert_file || !ret || (pin && pin_len == 0))
        return M2MVPN_E_INVAL;
    file_cred *fc = calloc(1, sizeof *fc);
    cred_provider *p = calloc(1, sizeof *p);
    uint8_t *data = NULL;
    size_t len = 0;
    int rc = M2MVPN_E_NOMEM;
    if (!fc || !p || !(fc->cert_path = strdup(cert_file)))
        goto fail;
    rc = pki_read_file(cert_file, &data, &len, err, err_len);
    if (rc < 0)
        goto fail;
    if (key_file || pki_looks_pem(data, len)) {
        rc = open_pem(fc, data, len, key_file, err, err_len);
    } else {
        fc->is_p12 = true;
        fc->locked_data = data;
        fc->locked_len = len;
        data = NULL;
    }
    if (rc < 0)
        goto fail;
    /* Unlock now: with the PIN if given, else try without one. */
    rc = unlock(fc, pin, pin_len, err, err_len);
    if (rc == M2MVPN_E_PIN && !pin)
        rc = 0; /* locked: the caller asks for the PIN (cred_pin_needed) */
    if (rc < 0)
        goto fail;
    if (err && err_len)
        err[0] = '\0';
    secure_free(data, len);
    p->ops = &file_ops;
    p->ctx = fc;
    *ret = p;
    return 0;
fail:
    secure_free(data, len);
    file_destroy(fc);
    free(p);
    return rc;
}

int cred_file_open_key_mem(const char *cert_file, const uint8_t *key, size_t key_len, const char *key_name,
                           const char *pin, size_t pin_len,
                           cred_provider **ret, char *err, size_t err_len)
{
    if (!cert_file || !key || !key_len || !key_name || !ret || (pin && pin_len == 0))
        return M2MVPN_E_INVAL;
    file_cred *fc = calloc(1, sizeof *fc);
    cred_provider *p = calloc(1, sizeof *p);
    uint8_t *data = NULL;
    size_t len = 0;
    int rc = M2MVPN_E_NOMEM;
    if (!fc || !p || !(fc->cert_path = strdup(cert_file)) || !(fc->key_path = strdup(key_name)) ||
        !(fc->locked_data = (uint8_t *)secure_memdup(key, key_len)))
        goto fail;
    fc->locked_len = key_len;
    if ((rc = pki_read_file(cert_file, &data, &len, err, err_len)) < 0 ||
        (rc = pki_certs_from_memory(data, len, fc->cert_path, &fc->chain, &fc->n_chain, err, err_len)) < 0)
        goto fail;
    rc = unlock(fc, pin, pin_len, err, err_len);
    if (rc == M2MVPN_E_PIN && !pin)
        rc = 0; /* locked: the caller asks for the PIN (cred_pin_needed) */
    if (rc < 0)
        goto fail;
    if (err && err_len)
        err[0] = '\0';
    free(data);
    p->ops = &file_ops;
    p->ctx = fc;
    *ret = p;
    return 0;
fail:
    free(data);
    file_destroy(fc);
    free(p);
    return rc;
}
