/* SPDX-License-Identifier: Apache-2.0 */
/* Certificates, trust anchors and chain verification (contract: pki.h). */
#include "pki.h"
#include "pki_internal.h"

#include <m2mvpn/m2mvpn.h>

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <openssl/x509_vfy.h>

/* A certificate file larger than this is not a certificate file. */
#define PKI_MAX_FILE (1024 * 1024)

struct pki_cert {
    atomic_int refs;
    X509 *x509;
    uint8_t *der;
    size_t der_len;
    uint8_t *subject_der;
    size_t subject_der_len;
};

struct pki_trust {
    X509_STORE *store;
    pki_cert **anchors;
    size_t n_anchors;
};

/* ------------------------------------------------------------ name tables */

const char *pki_auth_method_name(pki_auth_method m)
{
    switch (m) {
    case PKI_AUTH_RSA_SIG: return "rsa-sig";
    case PKI_AUTH_SHARED_KEY: return "shared-key";
    case PKI_AUTH_ECDSA_SHA256_P256: return "ecdsa-sha256-p256";
    case PKI_AUTH_ECDSA_SHA384_P384: return "ecdsa-sha384-p384";
    case PKI_AUTH_ECDSA_SHA512_P521: return "ecdsa-sha512-p521";
    case PKI_AUTH_DIGITAL_SIGNATURE: return "digital-signature";
    }
    return "unknown";
}

const char *pki_sig_scheme_name(pki_sig_scheme s)
{
    switch (s) {
    case PKI_SIG_NONE: return "none";
    case PKI_SIG_RSA_PKCS1_SHA1: return "rsa-pkcs1-sha1";
    case PKI_SIG_RSA_PKCS1_SHA256: return "rsa-pkcs1-sha256";
    case PKI_SIG_RSA_PKCS1_SHA384: return "rsa-pkcs1-sha384";
    case PKI_SIG_RSA_PKCS1_SHA512: return "rsa-pkcs1-sha512";
    case PKI_SIG_RSA_PSS_SHA256: return "rsa-pss-sha256";
    case PKI_SIG_RSA_PSS_SHA384: return "rsa-pss-sha384";
    case PKI_SIG_RSA_PSS_SHA512: return "rsa-pss-sha512";
    case PKI_SIG_ECDSA_SHA256: return "ecdsa-sha256";
    case PKI_SIG_ECDSA_SHA384: return "ecdsa-sha384";
    case PKI_SIG_ECDSA_SHA512: return "ecdsa-sha512";
    case PKI_SIG_ED25519: return "ed25519";
    case PKI_SIG_SCHEME_COUNT: break;
    }
    return "unknown";
}

const char *pki_hash_alg_name(pki_hash_alg h)
{
    switch (h) {
    case PKI_HASH_SHA1: return "sha1";
    case PKI_HASH_SHA2_256: return "sha2-256";
    case PKI_HASH_SHA2_384: return "sha2-384";
    case PKI_HASH_SHA2_512: return "sha2-512";
    case PKI_HASH_IDENTITY: return "identity";
    }
    return "unknown";
}

const char *pki_key_type_name(pki_key_type t)
{
    switch (t) {
    case PKI_KEY_UNKNOWN: return "unknown";
    case PKI_KEY_RSA: return "rsa";
    case PKI_KEY_EC_P256: return "ecdsa-p256";
    case PKI_KEY_EC_P384: return "ecdsa-p384";
    case PKI_KEY_EC_P521: return "ecdsa-p521";
    case PKI_KEY_ED25519: return "ed25519";
    }
    return "unknown";
}

const char *pki_id_type_name(pki_id_type t)
{
    switch (t) {
    case PKI_ID_IPV4_ADDR: return "ID_IPV4_ADDR";
    case PKI_ID_FQDN: return "ID_FQDN";
    case PKI_ID_RFC822_ADDR: return "ID_RFC822_ADDR";
    case PKI_ID_IPV6_ADDR: return "ID_IPV6_ADDR";
    case PKI_ID_DER_ASN1_DN: return "ID_DER_ASN1_DN";
    case PKI_ID_KEY_ID: return "ID_KEY_ID";
    }
    return "unknown";
}

/* ---------------------------------------------------------------- helpers */

void pki_set_err(char *err, size_t err_len, const char *fmt, ...)
{
    if (!err || !err_len)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, err_len, fmt, ap);
    va_end(ap);
}

const char *pki_openssl_reason(char *buf, size_t len)
{
    unsigned long e = ERR_peek_last_error();
    if (!e) {
        snprintf(buf, len, "unknown reason");
    } else {
        const char *r = ERR_reason_error_string(e);
        if (r)
            snprintf(buf, len, "%s", r);
        else
            ERR_error_string_n(e, buf, len);
    }
    ERR_clear_error();
    return buf;
}

pki_key_type pki_pkey_type(const EVP_PKEY *pk, unsigned *bits)
{
    pki_key_type t = PKI_KEY_UNKNOWN;
    unsigned b = 0;
    if (pk && EVP_PKEY_is_a(pk, "RSA")) {
        t = PKI_KEY_RSA;
        b = (unsigned)EVP_PKEY_get_bits(pk);
    } else if (pk && EVP_PKEY_is_a(pk, "EC")) {
        char group[64];
        size_t glen = 0;
        if (EVP_PKEY_get_utf8_string_param(pk, "group", group, sizeof group, &glen)) {
            if (!strcmp(group, "prime256v1") || !strcmp(group, "P-256"))
                t = PKI_KEY_EC_P256;
            else if (!strcmp(group, "secp384r1") || !strcmp(group, "P-384"))
                t = PKI_KEY_EC_P384;
            else if (!strcmp(group, "secp521r1") || !strcmp(group, "P-521"))
                t = PKI_KEY_EC_P521;
        }
        if (t != PKI_KEY_UNKNOWN)
            b = (unsigned)EVP_PKEY_get_bits(pk);
    } else if (pk && EVP_PKEY_is_a(pk, "ED25519")) {
        t = PKI_KEY_ED25519;
        b = (unsigned)EVP_PKEY_get_bits(pk);
    }
    if (bits)
        *bits = b;
    return t;
}

int pki_read_file(const char *path, uint8_t **ret, size_t *ret_len, char *err, size_t err_len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        pki_set_err(err, err_len, "%s: %s", path, strerror(errno));
        return M2MVPN_E_IO;
    }
    uint8_t *data = malloc(PKI_MAX_FILE + 1);
    if (!data) {
        fclose(f);
        return M2MVPN_E_NOMEM;
    }
    size_t n = fread(data, 1, PKI_MAX_FILE + 1, f);
    int rerr = ferror(f);
    fclose(f);
    if (rerr) {
        free(data);
        pki_set_err(err, err_len, "%s: read error", path);
        return M2MVPN_E_IO;
    }
    if (n > PKI_MAX_FILE) {
        free(data);
        pki_set_err(err, err_len, "%s: larger than %d bytes", path, PKI_MAX_FILE);
        return M2MVPN_E_CERT;
    }
    *ret = data;
    *ret_len = n;
    return 0;
}

bool pki_looks_pem(const uint8_t *data, size_t len)
{
    static const char tag[] = "-----BEGIN ";
    for (size_t i = 0; i + sizeof tag - 1 <= len; i++)
        if (!memcmp(data + i, tag, sizeof tag - 1))
            return true;
    return false;
}

/* ----------------------------------------------------------- certificates */

/* Take ownership of `x` (also on failure) and cache its encodings. */
pki_cert *pki_cert_wrap(X509 *x)
{
    pki_cert *c = calloc(1, sizeof *c);
    if (!c) {
        X509_free(x);
        return NULL;
    }
    atomic_init(&c->refs, 1);
    c->x509 = x;
    unsigned char *der = NULL;
    int n = i2d_X509(x, &der);
    unsigned char *sder = NULL;
    int sn = i2d_X509_NAME(X509_get_subject_name(x), &sder);
    if (n <= 0 || sn <= 0) {
        OPENSSL_free(der);
        OPENSSL_free(sder);
        X509_free(x);
        free(c);
        return NULL;
    }
    c->der = der;
    c->der_len = (size_t)n;
    c->subject_der = sder;
    c->subject_der_len = (size_t)sn;
    return c;
}

int pki_cert_from_der(const uint8_t *der, size_t len, pki_cert **ret, char *err, size_t err_len)
{
    if (!der || !ret || len == 0 || len > PKI_MAX_FILE)
        return M2MVPN_E_INVAL;
    const unsigned char *p = der;
    X509 *x = d2i_X509(NULL, &p, (long)len);
    if (!x) {
        char why[128];
        pki_set_err(err, err_len, "not a DER certificate: %s", pki_openssl_reason(why, sizeof why));
        return M2MVPN_E_CERT;
    }
    if ((size_t)(p - der) != len) {
        X509_free(x);
        pki_set_err(err, err_len, "trailing data after DER certificate");
        return M2MVPN_E_CERT;
    }
    pki_cert *c = pki_cert_wrap(x);
    if (!c)
        return M2MVPN_E_NOMEM;
    *ret = c;
    return 0;
}

static int cert_array_push(pki_cert ***arr, size_t *n, pki_cert *c)
{
    pki_cert **na = realloc(*arr, (*n + 1) * sizeof *na);
    if (!na) {
        pki_cert_free(c);
        return M2MVPN_E_NOMEM;
    }
    na[(*n)++] = c;
    *arr = na;
    return 0;
}

int pki_certs_from_memory(const uint8_t *data, size_t len, const char *what,
                          pki_cert ***ret, size_t *ret_n, char *err, size_t err_len)
{
    pki_cert **arr = NULL;
    size_t n = 0;
    int rc = 0;
    if (pki_looks_pem(data, len)) {
        BIO *bio = BIO_new_mem_buf(data, (int)len);
        if (!bio)
            return M2MVPN_E_NOMEM;
        for (;;) {
            X509 *x = PEM_read_bio_X509(bio, NULL, NULL, NULL);
            if (!x) {
                unsigned long e = ERR_peek_last_error();
                /* End of input shows as "no start line"; anything else is a
                 * broken block. Blocks of other types (keys) are skipped. */
                if (ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE) {
                    ERR_clear_error();
                } else if (e) {
                    char why[128];
                    pki_set_err(err, err_len, "%s: bad PEM certificate: %s", what,
                                pki_openssl_reason(why, sizeof why));
                    rc = M2MVPN_E_CERT;
                }
                break;
            }
            pki_cert *c = pki_cert_wrap(x);
            if (!c || (rc = cert_array_push(&arr, &n, c)) < 0) {
                rc = M2MVPN_E_NOMEM;
                break;
            }
        }
        BIO_free(bio);
    } else if (len > 0) {
        pki_cert *c = NULL;
        rc = pki_cert_from_der(data, len, &c, err, err_len);
        if (rc == 0)
            rc = cert_array_push(&arr, &n, c);
    }
    if (rc == 0 && n == 0) {
        pki_set_err(err, err_len, "%s: no certificate found", what);
        rc = M2MVPN_E_CERT;
    }
    if (rc < 0) {
        pki_cert_array_free(arr, n);
        return rc;
    }
    *ret = arr;
    *ret_n = n;
    return 0;
}

int pki_cert_load_file(const char *path, pki_cert ***ret, size_t *ret_n, char *err, size_t err_len)
{
    if (!path || !ret || !ret_n)
        return M2MVPN_E_INVAL;
    uint8_t *data = NULL;
    size_t len = 0;
    int rc = pki_read_file(path, &data, &len, err, err_len);
    if (rc < 0)
        return rc;
    rc = pki_certs_from_memory(data, len, path, ret, ret_n, err, err_len);
    free(data);
    return rc;
}

pki_cert *pki_cert_ref(pki_cert *c)
{
    if (c)
        atomic_fetch_add(&c->refs, 1);
    return c;
}

void pki_cert_free(pki_cert *c)
{
    if (!c || atomic_fetch_sub(&c->refs, 1) != 1)
        return;
    X509_free(c->x509);
    OPENSSL_free(c->der);
    OPENSSL_free(c->subject_der);
    free(c);
}

void pki_cert_array_free(pki_cert **certs, size_t n)
{
    if (!certs)
        return;
    for (size_t i = 0; i < n; i++)
        pki_cert_free(certs[i]);
    free(certs);
}

void pki_cert_der(const pki_cert *c, const uint8_t **der, size_t *len)
{
    *der = c->der;
    *len = c->der_len;
}

void pki_cert_subject_der(const pki_cert *c, const uint8_t **der, size_t *len)
{
    *der = c->subject_der;
    *len = c->subject_der_len;
}

void pki_name_text(const X509_NAME *name, char *buf, size_t len)
{
    if (!len)
        return;
    buf[0] = '\0';
    BIO *bio = BIO_new(BIO_s_mem());
    if (!bio)
        return;
    /* "C=CH, O=m2m, CN=gw": encoding order, UTF-8 kept as is. */
    unsigned long flags = XN_FLAG_SEP_CPLUS_SPC | XN_FLAG_FN_SN |
                          ((ASN1_STRFLGS_RFC2253 & ~ASN1_STRFLGS_ESC_MSB));
    if (X509_NAME_print_ex(bio, name, 0, flags) >= 0) {
        char *p = NULL;
        long n = BIO_get_mem_data(bio, &p);
        if (n > 0) {
            size_t k = (size_t)n < len - 1 ? (size_t)n : len - 1;
            memcpy(buf, p, k);
            buf[k] = '\0';
        }
    }
    BIO_free(bio);
}

void pki_cert_subject_text(const pki_cert *c, char *buf, size_t len)
{
    pki_name_text(X509_get_subject_name(c->x509), buf, len);
}

int pki_cert_spki_sha1(const pki_cert *c, uint8_t out[PKI_SHA1_LEN])
{
    unsigned char *spki = NULL;
    int n = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(c->x509), &spki);
    if (n <= 0)
        return M2MVPN_E_CRYPTO;
    unsigned int md_len = 0;
    int ok = EVP_Digest(spki, (size_t)n, out, &md_len, EVP_sha1(), NULL);
    OPENSSL_free(spki);
    return ok && md_len == PKI_SHA1_LEN ? 0 : M2MVPN_E_CRYPTO;
}

int64_t pki_cert_not_after(const pki_cert *c)
{
    const ASN1_TIME *t = X509_get0_notAfter(c->x509);
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    if (!t || !ASN1_TIME_to_tm(t, &tm))
        return 0;
    return (int64_t)timegm(&tm);
}

pki_key_type pki_cert_key_type(const pki_cert *c, unsigned *bits)
{
    return pki_pkey_type(X509_get0_pubkey(c->x509), bits);
}

X509 *pki_cert_x509(const pki_cert *c)
{
    return c->x509;
}

EVP_PKEY *pki_cert_pubkey(const pki_cert *c)
{
    return X509_get0_pubkey(c->x509);
}

/* ----------------------------------------------------------- trust anchors */

int pki_trust_new(pki_trust **ret)
{
    if (!ret)
        return M2MVPN_E_INVAL;
    pki_trust *t = calloc(1, sizeof *t);
    if (!t)
        return M2MVPN_E_NOMEM;
    t->store = X509_STORE_new();
    if (!t->store) {
        free(t);
        return M2MVPN_E_NOMEM;
    }
    /* Every configured CA is an anchor, also an intermediate one (as in
     * strongSwan): a profile may pin the issuing CA instead of the root. */
    X509_STORE_set_flags(t->store, X509_V_FLAG_PARTIAL_CHAIN);
    *ret = t;
    return 0;
}

void pki_trust_free(pki_trust *t)
{
    if (!t)
        return;
    X509_STORE_free(t->store);
    pki_cert_array_free(t->anchors, t->n_anchors);
    free(t);
}

int pki_trust_add_cert(pki_trust *t, pki_cert *ca)
{
    if (!t || !ca)
        return M2MVPN_E_INVAL;
    pki_cert **na = realloc(t->anchors, (t->n_anchors + 1) * sizeof *na);
    if (!na)
        return M2MVPN_E_NOMEM;
    t->anchors = na;
    /* The store takes its own reference; adding a duplicate is harmless. */
    if (!X509_STORE_add_cert(t->store, ca->x509)) {
        ERR_clear_error();
        return M2MVPN_E_NOMEM;
    }
    t->anchors[t->n_anchors++] = pki_cert_ref(ca);
    return 0;
}

int pki_trust_add_file(pki_trust *t, const char *path, char *err, size_t err_len)
{
    if (!t || !path)
        return M2MVPN_E_INVAL;
    pki_cert **certs = NULL;
    size_t n = 0;
    int rc = pki_cert_load_file(path, &certs, &n, err, err_len);
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < n && rc == 0; i++)
        rc = pki_trust_add_cert(t, certs[i]);
    pki_cert_array_free(certs, n);
    return rc;
}

size_t pki_trust_count(const pki_trust *t)
{
    return t ? t->n_anchors : 0;
}

int pki_trust_certreq(const pki_trust *t, uint8_t *out, size_t cap, size_t *ret_len)
{
    if (!t || !ret_len || (t->n_anchors && !out) || cap / PKI_SHA1_LEN < t->n_anchors)
        return M2MVPN_E_INVAL;
    for (size_t i = 0; i < t->n_anchors; i++) {
        int rc = pki_cert_spki_sha1(t->anchors[i], out + i * PKI_SHA1_LEN);
        if (rc < 0)
            return rc;
    }
    *ret_len = t->n_anchors * PKI_SHA1_LEN;
    return 0;
}

/* Verification errors that are about a missing issuer read "... for <cert>";
 * the others "...: <cert>". */
static bool error_is_about_issuer(int e)
{
    return e == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT ||
           e == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY ||
           e == X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE;
}

/* May this end-entity certificate authenticate an IKE peer (RFC 4945
 * §5.1.3.2, §5.1.3.12)? keyUsage, if present, must allow signatures; an
 * extendedKeyUsage, if present, must name serverAuth, id-kp-ipsecIKE or
 * anyExtendedKeyUsage (serverAuth: strongSwan-style gateway certificates);
 * and a CA certificate is no end entity. Without this a terminal's own
 * client certificate from the same fleet CA could pose as the gateway. */
static const char *ee_usage_problem(X509 *x)
{
    uint32_t ku = X509_get_key_usage(x); /* UINT32_MAX when absent */
    if (ku != UINT32_MAX && !(ku & (KU_DIGITAL_SIGNATURE | KU_NON_REPUDIATION)))
        return "its keyUsage does not allow signatures";
    uint32_t xku = X509_get_extended_key_usage(x); /* UINT32_MAX when absent */
    if (xku != UINT32_MAX && !(xku & (XKU_SSL_SERVER | XKU_ANYEKU))) {
        /* id-kp-ipsecIKE (1.3.6.1.5.5.7.3.17) has no flag in OpenSSL: look for it. */
        bool ike = false;
        EXTENDED_KEY_USAGE *eku = X509_get_ext_d2i(x, NID_ext_key_usage, NULL, NULL);
        ASN1_OBJECT *ipsec_ike = OBJ_txt2obj("1.3.6.1.5.5.7.3.17", 1);
        for (int i = 0; eku && ipsec_ike && i < sk_ASN1_OBJECT_num(eku) && !ike; i++)
            ike = OBJ_cmp(sk_ASN1_OBJECT_value(eku, i), ipsec_ike) == 0;
        ASN1_OBJECT_free(ipsec_ike);
        EXTENDED_KEY_USAGE_free(eku);
        if (!ike)
            return "its extendedKeyUsage allows neither serverAuth nor ipsecIKE";
    }
    if (X509_check_ca(x) == 1)
        return "it is a CA certificate, not an end entity";
    return NULL;
}

int pki_verify_chain(const pki_trust *t, const pki_cert *ee,
                     pki_cert *const *untrusted, size_t n_untrusted,
                     int64_t at_time, char *err, size_t err_len)
{
    if (!t || !ee || (n_untrusted && !untrusted))
        return M2MVPN_E_INVAL;
    if (t->n_anchors == 0) {
        pki_set_err(err, err_len, "no trust anchors");
        return M2MVPN_E_INVAL;
    }
    int rc = M2MVPN_E_NOMEM;
    STACK_OF(X509) *chain = sk_X509_new_null();
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    if (!chain || !ctx)
        goto out;
    for (size_t i = 0; i < n_untrusted; i++)
        if (!sk_X509_push(chain, untrusted[i]->x509))
            goto out;
    if (!X509_STORE_CTX_init(ctx, t->store, ee->x509, chain))
        goto out;
    if (at_time)
        X509_STORE_CTX_set_time(ctx, 0, (time_t)at_time);
    /* At least 112-bit security for every key and signature of the chain
     * (no RSA below 2048 bits, no SHA-1 signatures). */
    X509_VERIFY_PARAM_set_auth_level(X509_STORE_CTX_get0_param(ctx), 2);
    if (X509_verify_cert(ctx) == 1) {
        const char *why = ee_usage_problem(ee->x509);
        if (!why) {
            rc = 0;
            goto out;
        }
        char subject[256];
        pki_name_text(X509_get_subject_name(ee->x509), subject, sizeof subject);
        pki_set_err(err, err_len, "certificate %s may not authenticate a gateway: %s", subject, why);
        rc = M2MVPN_E_AUTH_PEER;
        goto out;
    }
    int e = X509_STORE_CTX_get_error(ctx);
    X509 *bad = X509_STORE_CTX_get_current_cert(ctx);
    char subject[256];
    pki_name_text(X509_get_subject_name(bad ? bad : ee->x509), subject, sizeof subject);
    pki_set_err(err, err_len, "%s%s%s", X509_verify_cert_error_string(e),
                error_is_about_issuer(e) ? " for " : ": ", subject);
    rc = M2MVPN_E_AUTH_PEER;
out:
    ERR_clear_error();
    X509_STORE_CTX_free(ctx);
    sk_X509_free(chain); /* the certificates belong to their pki_cert */
    return rc;
}
