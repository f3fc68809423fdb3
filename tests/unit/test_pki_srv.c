/* SPDX-License-Identifier: Apache-2.0 */
/*
 * server/pki: the management server's CA part. The CMP handler is driven by
 * OpenSSL's own CMP client (the one the device uses) whose transfer callback
 * calls pki_cmp_handle directly; the hooks are a scripted store.
 */
#include <check.h>
#include <openssl/cmp.h>
#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "pki_srv.h"

/* ---------------------------------------------------------------- helpers */

static char tmpdir[] = "/tmp/test_pki_srv.XXXXXX";
static const unsigned char token_key[32] = "0123456789abcdef0123456789abcde";
static const char token_id[] = "00112233aabbccdd";

static char *path(const char *name)
{
    static char buf[4][256];
    static int i;
    char *p = buf[i++ & 3];
    snprintf(p, 256, "%s/%s", tmpdir, name);
    return p;
}

/* A self-signed CA (or, with issuer/ikey, a certificate it signs) written as PEM files. */
static X509 *make_cert(const char *cn, long serial, EVP_PKEY *key, X509 *issuer, EVP_PKEY *ikey, int ca)
{
    X509 *x = X509_new();
    ck_assert_ptr_nonnull(x);
    X509_set_version(x, X509_VERSION_3);
    ASN1_INTEGER_set(X509_get_serialNumber(x), serial);
    X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : X509_get_subject_name(x));
    X509_gmtime_adj(X509_getm_notBefore(x), -60);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400);
    X509_set_pubkey(x, key);
    X509V3_CTX v3;
    X509V3_set_ctx(&v3, issuer ? issuer : x, x, NULL, NULL, 0);
    X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, &v3, NID_basic_constraints, ca ? "critical,CA:TRUE" : "CA:FALSE");
    X509_add_ext(x, e, -1);
    X509_EXTENSION_free(e);
    e = X509V3_EXT_conf_nid(NULL, &v3, NID_subject_key_identifier, "hash");
    X509_add_ext(x, e, -1);
    X509_EXTENSION_free(e);
    if (ca) {
        e = X509V3_EXT_conf_nid(NULL, &v3, NID_key_usage, "critical,keyCertSign,cRLSign,digitalSignature");
        X509_add_ext(x, e, -1);
        X509_EXTENSION_free(e);
    }
    ck_assert(X509_sign(x, ikey ? ikey : key, EVP_sha256()));
    return x;
}

static void write_pem(const char *name, X509 *x, EVP_PKEY *k)
{
    FILE *f = fopen(path(name), "w");
    ck_assert_ptr_nonnull(f);
    if (x)
        ck_assert(PEM_write_X509(f, x));
    if (k)
        ck_assert(PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL));
    fclose(f);
}

static EVP_PKEY *ec_key(void)
{
    EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    ck_assert_ptr_nonnull(k);
    return k;
}

/* CA: ca.crt + ca.key; another key other.key; a signer for bundles: signer.crt/.key. */
static EVP_PKEY *ca_key, *signer_key, *other_key;
static X509 *ca_cert, *signer_cert, *other_cert, *twin_cert;

static void setup(void)
{
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
    ca_key = ec_key();
    ca_cert = make_cert("m2mvpn test device CA", 1, ca_key, NULL, NULL, 1);
    write_pem("ca.crt", ca_cert, NULL);
    write_pem("ca.key", NULL, ca_key);
    signer_key = ec_key();
    signer_cert = make_cert("m2mvpn bundle signer", 7, signer_key, NULL, NULL, 0);
    write_pem("signer.crt", signer_cert, NULL);
    write_pem("signer.key", NULL, signer_key);
    other_key = ec_key();
    other_cert = make_cert("m2mvpn bundle signer", 8, other_key, NULL, NULL, 0); /* same name, another key */
    twin_cert = make_cert("m2mvpn bundle signer", 7, other_key, NULL, NULL, 0); /* same name and serial too */
    write_pem("other.crt", other_cert, NULL);
    write_pem("other.key", NULL, other_key);
}

static void teardown(void)
{
    const char *names[] = {"ca.crt", "ca.key", "signer.crt", "signer.key", "other.crt", "other.key"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        unlink(path(names[i]));
    rmdir(tmpdir);
    strcpy(tmpdir + strlen(tmpdir) - 6, "XXXXXX");
    X509_free(ca_cert);
    X509_free(signer_cert);
    X509_free(other_cert);
    X509_free(twin_cert);
    EVP_PKEY_free(ca_key);
    EVP_PKEY_free(signer_key);
    EVP_PKEY_free(other_key);
}

static pki_signer *open_signer(const char *crt, const char *key)
{
    pki_signer *s = NULL;
    char err[256] = "", loc[300];
    snprintf(loc, sizeof(loc), "file:%s", path(key));
    ck_assert_msg(pki_signer_open(&s, path(crt), loc, err, sizeof(err)) == 0, "%s", err);
    return s;
}

/* ------------------------------------------------------- the scripted store */

struct store {
    pki_signer *ca;
    int expired;                 /* token_secret says the token expired */
    pki_enrol_verdict verdict;   /* what enrol answers */
    const char *reject_reason;
    int token_secret_calls, enrol_calls, enrol_null_spki, issued_calls;
    unsigned char bound[512];    /* the key the first IR bound the token to */
    size_t bound_len;
    X509 *issued;
    int last_answer_mac;         /* the last answer's protectionAlg was id-PasswordBasedMac */
    int leave_error;             /* token_secret and enrol leave an OpenSSL error in the queue */
    /* day 1..N */
    const char *revoked_serial;  /* cert_ok refuses this serial (hex) */
    const char *foreign_serial;  /* cert_ok refuses this serial as not the device's (-3) */
    int cert_ok_fails;           /* cert_ok: the store failed (-2) */
    int cert_ok_calls, renewed_calls, revoke_calls;
    char cert_ok_device[64], renewed_old[80], revoked[80];
    int revoke_reason;
};

static int h_token_secret(void *ctx, const char *id, char *secret, size_t cap, char *reason, size_t rcap)
{
    struct store *s = ctx;
    s->token_secret_calls++;
    if (s->leave_error)
        ERR_raise_data(ERR_LIB_EVP, ERR_R_INTERNAL_ERROR, "left over by the store");
    if (strcmp(id, token_id) != 0) {
        snprintf(reason, rcap, "unknown enrolment token");
        return -1;
    }
    if (s->expired) {
        snprintf(reason, rcap, "enrolment token expired");
        return -1;
    }
    char out[44];
    ck_assert_int_eq(pki_token_secret(token_key, sizeof(token_key), id, out), 0);
    ck_assert_uint_ge(cap, sizeof(out));
    memcpy(secret, out, sizeof(out));
    return 0;
}

static int h_enrol(void *ctx, const char *id, const unsigned char *spki, size_t spki_len, pki_enrol_verdict *v,
                   char *device_id, size_t idcap, int *check_after, char *reason, size_t rcap)
{
    struct store *s = ctx;
    s->enrol_calls++;
    if (s->leave_error)
        ERR_raise_data(ERR_LIB_EVP, ERR_R_INTERNAL_ERROR, "left over by the store");
    ck_assert_str_eq(id, token_id);
    if (!spki) {
        s->enrol_null_spki++;
    } else if (!s->bound_len) {
        ck_assert_uint_le(spki_len, sizeof(s->bound));
        memcpy(s->bound, spki, spki_len);
        s->bound_len = spki_len;
    } else if (spki_len != s->bound_len || memcmp(spki, s->bound, spki_len) != 0) {
        *v = PKI_ENROL_REJECT;
        snprintf(reason, rcap, "enrolment token already used");
        return 0;
    }
    *v = s->verdict;
    if (s->verdict == PKI_ENROL_ISSUE)
        snprintf(device_id, idcap, "dev-0123456789abcdef");
    else if (s->verdict == PKI_ENROL_PENDING)
        *check_after = 42;
    else
        snprintf(reason, rcap, "%s", s->reject_reason ? s->reject_reason : "enrolment rejected by the operator");
    return 0;
}

static int h_issued(void *ctx, const char *id, const char *device_id, X509 *cert)
{
    struct store *s = ctx;
    s->issued_calls++;
    ck_assert_str_eq(id, token_id);
    ck_assert_str_eq(device_id, "dev-0123456789abcdef");
    X509_free(s->issued);
    X509_up_ref(cert);
    s->issued = cert;
    return 0;
}

static int h_cert_ok(void *ctx, const char *device_id, const char *serial_hex, char *reason, size_t rcap)
{
    struct store *s = ctx;
    s->cert_ok_calls++;
    snprintf(s->cert_ok_device, sizeof(s->cert_ok_device), "%s", device_id);
    if (s->cert_ok_fails) {
        snprintf(reason, rcap, "server error");
        return -2;
    }
    if (s->revoked_serial && !strcmp(serial_hex, s->revoked_serial)) {
        snprintf(reason, rcap, "certificate %s of %s is revoked", serial_hex, device_id);
        return -1;
    }
    if (s->foreign_serial && !strcmp(serial_hex, s->foreign_serial)) {
        snprintf(reason, rcap, "certificate %s is not one of device %s", serial_hex, device_id);
        return -3;
    }
    return 0;
}

static int h_renewed(void *ctx, const char *device_id, const char *old_serial_hex, X509 *cert)
{
    struct store *s = ctx;
    s->renewed_calls++;
    snprintf(s->renewed_old, sizeof(s->renewed_old), "%s", old_serial_hex);
    ck_assert_str_eq(device_id, "dev-0123456789abcdef");
    X509_free(s->issued);
    X509_up_ref(cert);
    s->issued = cert;
    return 0;
}

static int h_revoke(void *ctx, const char *device_id, const char *serial_hex, int crl_reason, char *reason,
                    size_t rcap)
{
    struct store *s = ctx;
    (void)reason; (void)rcap;
    s->revoke_calls++;
    snprintf(s->revoked, sizeof(s->revoked), "%s/%s", device_id, serial_hex);
    s->revoke_reason = crl_reason;
    return 0;
}

static const pki_cmp_hooks hooks = {h_token_secret, h_enrol, h_issued, h_cert_ok, h_renewed, h_revoke};

/* ------------------------------------------------ the device's CMP client */

static OSSL_CMP_MSG *transfer(OSSL_CMP_CTX *c, const OSSL_CMP_MSG *req)
{
    struct store *s = OSSL_CMP_CTX_get_transfer_cb_arg(c);
    unsigned char *der = NULL, *resp = NULL;
    size_t resp_len = 0;
    int n = i2d_OSSL_CMP_MSG(req, &der);
    ck_assert_int_gt(n, 0);
    int rc = pki_cmp_handle(s->ca, &hooks, s, 30, "m2mvpn test", der, (size_t)n, &resp, &resp_len);
    OPENSSL_free(der);
    ck_assert_int_eq(rc, 0);
    /* id-PasswordBasedMac 1.2.840.113533.7.66.13, as DER */
    static const unsigned char pbm_oid[] = {0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf6, 0x7d, 0x07, 0x42, 0x0d};
    s->last_answer_mac = memmem(resp, resp_len, pbm_oid, sizeof(pbm_oid)) != NULL;
    const unsigned char *p = resp;
    OSSL_CMP_MSG *m = d2i_OSSL_CMP_MSG(NULL, &p, (long)resp_len);
    OPENSSL_free(resp);
    return m;
}

static int quiet(const char *f, const char *file, int line, OSSL_CMP_severity lvl, const char *msg)
{
    (void)f; (void)file; (void)line; (void)lvl; (void)msg;
    return 1;
}

/* A device client: MAC with `secret` under senderKID `kid`, new key `key`. */
static OSSL_CMP_CTX *client(struct store *s, const char *kid, const char *secret, EVP_PKEY *key)
{
    OSSL_CMP_CTX *c = OSSL_CMP_CTX_new(NULL, NULL);
    ck_assert_ptr_nonnull(c);
    OSSL_CMP_CTX_set_log_cb(c, quiet);
    ck_assert(OSSL_CMP_CTX_set_transfer_cb(c, transfer));
    ck_assert(OSSL_CMP_CTX_set_transfer_cb_arg(c, s));
    if (secret) {
        ck_assert(OSSL_CMP_CTX_set1_secretValue(c, (const unsigned char *)secret, (int)strlen(secret)));
        ck_assert(OSSL_CMP_CTX_set1_referenceValue(c, (const unsigned char *)kid, (int)strlen(kid)));
    }
    X509_NAME *hint = X509_NAME_new();
    X509_NAME_add_entry_by_txt(hint, "CN", MBSTRING_ASC, (const unsigned char *)"a device", -1, -1, 0);
    ck_assert(OSSL_CMP_CTX_set1_subjectName(c, hint));
    X509_NAME_free(hint);
    EVP_PKEY_up_ref(key);
    ck_assert(OSSL_CMP_CTX_set0_newPkey(c, 1, key));
    ck_assert(OSSL_CMP_CTX_set_option(c, OSSL_CMP_OPT_IMPLICIT_CONFIRM, 1));
    ck_assert(OSSL_CMP_CTX_set_option(c, OSSL_CMP_OPT_UNPROTECTED_ERRORS, 1));
    return c;
}

static char good_secret[44];

static struct store *new_store(pki_enrol_verdict v)
{
    struct store *s = calloc(1, sizeof(*s));
    s->ca = open_signer("ca.crt", "ca.key");
    s->verdict = v;
    ck_assert_int_eq(pki_token_secret(token_key, sizeof(token_key), token_id, good_secret), 0);
    return s;
}

static void free_store(struct store *s)
{
    pki_signer_free(s->ca);
    X509_free(s->issued);
    free(s);
}

/* The text of the client's last status (statusString and error details), for assertions. */
static const char *status_text(OSSL_CMP_CTX *c)
{
    static char buf[1024];
    buf[0] = '\0';
    OSSL_CMP_CTX_snprint_PKIStatus(c, buf, sizeof(buf));
    size_t n = strlen(buf);
    unsigned long e;
    const char *data;
    int flags;
    while ((e = ERR_get_error_all(NULL, NULL, NULL, &data, &flags)) != 0 && n + 2 < sizeof(buf)) {
        snprintf(buf + n, sizeof(buf) - n, " | %s", (flags & ERR_TXT_STRING) && data ? data : "");
        n = strlen(buf);
    }
    return buf;
}

/* -------------------------------------------------------------- the tests */

START_TEST(token_secret_derivation)
{
    char a[44], b[44];
    ck_assert_int_eq(pki_token_secret(token_key, sizeof(token_key), token_id, a), 0);
    ck_assert_uint_eq(strlen(a), 43);
    for (const char *p = a; *p; p++)
        ck_assert_msg(strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", *p), "char %c", *p);
    /* Independent computation: HMAC-SHA256 then base64 with the URL alphabet, no padding. */
    unsigned char mac[32];
    unsigned int ml;
    char msg[64];
    snprintf(msg, sizeof(msg), "m2mvpn-enrol:%s", token_id);
    HMAC(EVP_sha256(), token_key, sizeof(token_key), (unsigned char *)msg, strlen(msg), mac, &ml);
    unsigned char b64[64];
    EVP_EncodeBlock(b64, mac, 32);
    for (unsigned char *p = b64; *p; p++)
        *p = *p == '+' ? '-' : *p == '/' ? '_' : *p;
    b64[43] = '\0'; /* drop the one '=' */
    ck_assert_str_eq(a, (char *)b64);
    ck_assert_int_eq(pki_token_secret(token_key, sizeof(token_key), "00112233aabbccde", b), 0);
    ck_assert_str_ne(a, b);
    ck_assert_int_eq(pki_token_secret(token_key, sizeof(token_key), "0011223", b), -1);
    ck_assert_int_eq(pki_token_secret(token_key, sizeof(token_key), "00112233AABBCCDD", b), -1);
    char id1[17], id2[17];
    ck_assert_int_eq(pki_token_id_new(id1), 0);
    ck_assert_int_eq(pki_token_id_new(id2), 0);
    ck_assert_uint_eq(strlen(id1), 16);
    ck_assert_str_ne(id1, id2);
    ck_assert_int_eq(pki_token_secret(token_key, sizeof(token_key), id1, b), 0);
}
END_TEST

START_TEST(signer_open_errors)
{
    pki_signer *s = NULL;
    char err[256], loc[300];
    snprintf(loc, sizeof(loc), "file:%s", path("other.key"));
    ck_assert_int_eq(pki_signer_open(&s, path("ca.crt"), loc, err, sizeof(err)), -1);
    ck_assert_ptr_null(s);
    ck_assert_msg(strstr(err, "does not match"), "%s", err);
    ck_assert_int_eq(pki_signer_open(&s, path("ca.crt"), "pkcs11:token=ca", err, sizeof(err)), -1);
    ck_assert_msg(strstr(err, "not supported yet"), "%s", err);
    ck_assert_int_eq(pki_signer_open(&s, path("ca.crt"), path("ca.key"), err, sizeof(err)), -1);
    ck_assert_msg(strstr(err, "no scheme"), "%s", err);
    ck_assert_int_eq(pki_signer_open(&s, path("missing.crt"), "file:x", err, sizeof(err)), -1);
    ck_assert_msg(strstr(err, "missing.crt"), "%s", err);
    ck_assert_int_eq(pki_signer_open(&s, path("ca.key"), "file:x", err, sizeof(err)), -1);
    ck_assert_msg(strstr(err, "no PEM certificate"), "%s", err);
    s = open_signer("ca.crt", "ca.key");
    ck_assert_int_eq(X509_cmp(pki_signer_cert(s), ca_cert), 0);
    pki_signer_free(s);
}
END_TEST

/* IR with the right token -> pending (waiting) -> pollReq still waiting -> approved -> a new IR gets the certificate. */
START_TEST(enrol_pending_then_issue)
{
    struct store *s = new_store(PKI_ENROL_PENDING);
    EVP_PKEY *dev = ec_key();
    OSSL_CMP_CTX *c = client(s, token_id, good_secret, dev);
    int check_after = 0;
    int prc = OSSL_CMP_try_certreq(c, OSSL_CMP_IR, NULL, &check_after);
    ck_assert_msg(prc == -1, "%d %s", prc, status_text(c));
    ck_assert_int_eq(OSSL_CMP_CTX_get_status(c), OSSL_CMP_PKISTATUS_waiting);
    /* OpenSSL's client follows the waiting ip with a pollReq at once: answered with the hook's checkAfter */
    ck_assert_int_eq(check_after, 42);
    ck_assert_int_eq(s->enrol_calls, 2);
    ck_assert_int_eq(s->enrol_null_spki, 1);
    ck_assert_int_eq(s->issued_calls, 0);
    /* the bound key is the device's key */
    unsigned char *spki = NULL;
    int spki_len = i2d_PUBKEY(dev, &spki);
    ck_assert_int_eq((int)s->bound_len, spki_len);
    ck_assert_mem_eq(s->bound, spki, (size_t)spki_len);
    OPENSSL_free(spki);

    /* still pending: the next pollReq -> pollRep with checkAfter again */
    check_after = 0;
    prc = OSSL_CMP_try_certreq(c, OSSL_CMP_IR, NULL, &check_after);
    ck_assert_msg(prc == -1, "%d %s", prc, status_text(c));
    ck_assert_int_eq(check_after, 42);
    ck_assert_int_eq(s->enrol_null_spki, 2);

    /* approved: a pollReq is told to ask again, a new IR gets the certificate */
    s->verdict = PKI_ENROL_ISSUE;
    ck_assert_int_eq(OSSL_CMP_try_certreq(c, OSSL_CMP_IR, NULL, &check_after), 0);
    ck_assert_msg(strstr(status_text(c), "send the initialization request again"), "%s", status_text(c));
    ck_assert_int_eq(s->issued_calls, 0);
    ck_assert(OSSL_CMP_CTX_reinit(c));
    X509 *cert = OSSL_CMP_exec_IR_ses(c);
    ck_assert_msg(cert != NULL, "%s", status_text(c));
    ck_assert_int_eq(s->issued_calls, 1);
    ck_assert_int_eq(X509_cmp(cert, s->issued), 0);
    ck_assert_msg(s->last_answer_mac, "the ip is MAC-protected with the token secret (RFC 9483 5.1.3.1)");

    /* what a user checks: chains to the CA, subject, SAN, EKU, key usage, key, lifetime */
    X509_STORE *st = X509_STORE_new();
    X509_STORE_add_cert(st, ca_cert);
    X509_STORE_CTX *vc = X509_STORE_CTX_new();
    X509_STORE_CTX_init(vc, st, cert, NULL);
    X509_STORE_CTX_set_purpose(vc, X509_PURPOSE_SSL_CLIENT);
    ck_assert_msg(X509_verify_cert(vc) == 1, "%s", X509_verify_cert_error_string(X509_STORE_CTX_get_error(vc)));
    X509_STORE_CTX_free(vc);
    X509_STORE_free(st);
    char buf[256];
    X509_NAME_oneline(X509_get_subject_name(cert), buf, sizeof(buf));
    ck_assert_str_eq(buf, "/CN=dev-0123456789abcdef/O=m2mvpn test");
    ck_assert_int_eq(X509_check_host(cert, "dev-0123456789abcdef", 0, 0, NULL), 1);
    ck_assert(X509_get_extended_key_usage(cert) == XKU_SSL_CLIENT);
    ck_assert(X509_get_key_usage(cert) == KU_DIGITAL_SIGNATURE);
    ck_assert_int_eq(EVP_PKEY_eq(X509_get0_pubkey(cert), dev), 1);
    int days = 0, secs = 0;
    ck_assert(ASN1_TIME_diff(&days, &secs, NULL, X509_get0_notAfter(cert)));
    ck_assert(days == 29 || days == 30);
    const ASN1_INTEGER *sn = X509_get0_serialNumber(cert);
    BIGNUM *bn = ASN1_INTEGER_to_BN(sn, NULL);
    ck_assert_int_ge(BN_num_bits(bn), 120); /* random 128-bit: below 120 bits is 1 in 256 */
    BN_free(bn);
    ck_assert_int_eq(X509_get_signature_nid(cert), NID_ecdsa_with_SHA256);
    X509_free(cert);

    /* the same token with another key: rejected, nothing issued */
    EVP_PKEY *dev2 = ec_key();
    OSSL_CMP_CTX *c2 = client(s, token_id, good_secret, dev2);
    ck_assert_ptr_null(OSSL_CMP_exec_IR_ses(c2));
    ck_assert_int_eq(OSSL_CMP_CTX_get_status(c2), OSSL_CMP_PKISTATUS_rejection);
    ck_assert_msg(strstr(status_text(c2), "enrolment token already used"), "%s", status_text(c2));
    ck_assert_int_eq(s->issued_calls, 1);
    OSSL_CMP_CTX_free(c2);
    EVP_PKEY_free(dev2);
    OSSL_CMP_CTX_free(c);
    EVP_PKEY_free(dev);
    free_store(s);
}
END_TEST

/* Pending, then rejected while the device polls: the reason reaches it, even when the store
   left an OpenSSL error behind. */
START_TEST(enrol_pending_then_rejected)
{
    struct store *s = new_store(PKI_ENROL_PENDING);
    EVP_PKEY *dev = ec_key();
    OSSL_CMP_CTX *c = client(s, token_id, good_secret, dev);
    int check_after = 0;
    ck_assert_int_eq(OSSL_CMP_try_certreq(c, OSSL_CMP_IR, NULL, &check_after), -1);
    s->verdict = PKI_ENROL_REJECT;
    s->leave_error = 1;
    ck_assert_int_eq(OSSL_CMP_try_certreq(c, OSSL_CMP_IR, NULL, &check_after), 0);
    ck_assert_msg(strstr(status_text(c), "enrolment rejected by the operator"), "%s", status_text(c));
    ck_assert_int_eq(s->issued_calls, 0);
    OSSL_CMP_CTX_free(c);
    EVP_PKEY_free(dev);
    free_store(s);
}
END_TEST

/* Operator rejection: the reason reaches the device as the statusString. */
START_TEST(enrol_rejected)
{
    struct store *s = new_store(PKI_ENROL_REJECT);
    EVP_PKEY *dev = ec_key();
    OSSL_CMP_CTX *c = client(s, token_id, good_secret, dev);
    /* the rejection is MAC-protected: a device that accepts no unprotected error takes it */
    ck_assert(OSSL_CMP_CTX_set_option(c, OSSL_CMP_OPT_UNPROTECTED_ERRORS, 0));
    ck_assert_ptr_null(OSSL_CMP_exec_IR_ses(c));
    ck_assert_int_eq(OSSL_CMP_CTX_get_status(c), OSSL_CMP_PKISTATUS_rejection);
    OSSL_CMP_PKIFREETEXT *t = OSSL_CMP_CTX_get0_statusString(c);
    ck_assert_int_eq(sk_ASN1_UTF8STRING_num(t), 1);
    ck_assert_str_eq((const char *)ASN1_STRING_get0_data(sk_ASN1_UTF8STRING_value(t, 0)),
                     "enrolment rejected by the operator");
    ck_assert_int_eq(s->issued_calls, 0);
    OSSL_CMP_CTX_free(c);
    EVP_PKEY_free(dev);
    free_store(s);
}
END_TEST

/* The protection checks: each gets an error answer and neither enrol nor issued runs. */
START_TEST(enrol_wrong_secret)
{
    struct store *s = new_store(PKI_ENROL_ISSUE);
    EVP_PKEY *dev = ec_key();
    char bad[44];
    memcpy(bad, good_secret, sizeof(bad));
    bad[0] = bad[0] == 'A' ? 'B' : 'A';
    OSSL_CMP_CTX *c = client(s, token_id, bad, dev);
    ck_assert_ptr_null(OSSL_CMP_exec_IR_ses(c));
    ck_assert_int_eq(s->token_secret_calls, 1);
    ck_assert_int_eq(s->enrol_calls, 0);
    ck_assert_int_eq(s->issued_calls, 0);
    OSSL_CMP_CTX_free(c);
    EVP_PKEY_free(dev);
    free_store(s);
}
END_TEST

START_TEST(enrol_unknown_token)
{
    struct store *s = new_store(PKI_ENROL_ISSUE);
    EVP_PKEY *dev = ec_key();
    OSSL_CMP_CTX *c = client(s, "ffffffffffffffff", good_secret, dev);
    ck_assert_ptr_null(OSSL_CMP_exec_IR_ses(c));
    ck_assert_int_eq(OSSL_CMP_CTX_get_status(c), OSSL_CMP_PKISTATUS_rejection);
    ck_assert_msg(strstr(status_text(c), "unknown enrolment token"), "%s", status_text(c));
    ck_assert_msg(!s->last_answer_mac, "no secret known: the error is signed by the CA");
    ck_assert_int_eq(s->enrol_calls, 0);
    OSSL_CMP_CTX_free(c);
    /* a senderKID that is not a token id at all is not even looked up */
    c = client(s, "not a token id", good_secret, dev);
    ck_assert_ptr_null(OSSL_CMP_exec_IR_ses(c));
    ck_assert_int_eq(s->token_secret_calls, 1);
    ck_assert_int_eq(s->enrol_calls, 0);
    ck_assert_int_eq(s->issued_calls, 0);
    OSSL_CMP_CTX_free(c);
    EVP_PKEY_free(dev);
    free_store(s);
}
END_TEST

START_TEST(enrol_expired_token)
{
    struct store *s = new_store(PKI_ENROL_ISSUE);
    s->expired = 1;
    s->leave_error = 1; /* the reason still reaches the device */
    EVP_PKEY *dev = ec_key();
    OSSL_CMP_CTX *c = client(s, token_id, good_secret, dev);
    ck_assert_ptr_null(OSSL_CMP_exec_IR_ses(c));
    ck_assert_int_eq(OSSL_CMP_CTX_get_status(c), OSSL_CMP_PKISTATUS_rejection);
    const char *text = status_text(c);
    ck_assert_msg(strstr(text, "enrolment token expired"), "%s", text);
    ck_assert_int_eq(s->enrol_calls, 0);
    ck_assert_int_eq(s->issued_calls, 0);
    OSSL_CMP_CTX_free(c);
    EVP_PKEY_free(dev);
    free_store(s);
}
END_TEST

START_TEST(enrol_unprotected)
{
    struct store *s = new_store(PKI_ENROL_ISSUE);
    EVP_PKEY *dev = ec_key();
    OSSL_CMP_CTX *c = client(s, token_id, NULL, dev);
    ck_assert(OSSL_CMP_CTX_set1_referenceValue(c, (const unsigned char *)token_id, 16));
    ck_assert(OSSL_CMP_CTX_set_option(c, OSSL_CMP_OPT_UNPROTECTED_SEND, 1));
    ck_assert_ptr_null(OSSL_CMP_exec_IR_ses(c));
    ck_assert_int_eq(s->enrol_calls, 0);
    ck_assert_int_eq(s->issued_calls, 0);
    OSSL_CMP_CTX_free(c);
    EVP_PKEY_free(dev);
    free_store(s);
}
END_TEST

/* Signature protection by a certificate the server does not know (senderKID its key id,
   or the token id): refused. */
START_TEST(enrol_signed_by_unknown_cert)
{
    struct store *s = new_store(PKI_ENROL_ISSUE);
    EVP_PKEY *dev = ec_key();
    for (int with_kid = 0; with_kid < 2; with_kid++) {
        OSSL_CMP_CTX *c = client(s, token_id, NULL, dev);
        ck_assert(OSSL_CMP_CTX_set1_cert(c, other_cert));
        ck_assert(OSSL_CMP_CTX_set1_pkey(c, other_key));
        if (with_kid)
            ck_assert(OSSL_CMP_CTX_set1_referenceValue(c, (const unsigned char *)token_id, 16));
        ck_assert_ptr_null(OSSL_CMP_exec_IR_ses(c));
        if (!with_kid) /* no token at all: the answer says what is missing */
            ck_assert_msg(strstr(status_text(c), "other requests need a MAC with an enrolment token"), "%s",
                          status_text(c));
        OSSL_CMP_CTX_free(c);
    }
    ck_assert_int_eq(s->enrol_calls, 0);
    ck_assert_int_eq(s->issued_calls, 0);
    EVP_PKEY_free(dev);
    free_store(s);
}
END_TEST

/* A device that does not ask for implicit confirmation sends certConf; it is answered. */
START_TEST(enrol_explicit_confirm)
{
    struct store *s = new_store(PKI_ENROL_ISSUE);
    EVP_PKEY *dev = ec_key();
    OSSL_CMP_CTX *c = client(s, token_id, good_secret, dev);
    ck_assert(OSSL_CMP_CTX_set_option(c, OSSL_CMP_OPT_IMPLICIT_CONFIRM, 0));
    X509 *cert = OSSL_CMP_exec_IR_ses(c);
    ck_assert_msg(cert != NULL, "%s", status_text(c));
    ck_assert_int_eq(s->issued_calls, 1);
    X509_free(cert);
    OSSL_CMP_CTX_free(c);
    EVP_PKEY_free(dev);
    free_store(s);
}
END_TEST

START_TEST(cmp_garbage)
{
    struct store *s = new_store(PKI_ENROL_ISSUE);
    unsigned char *resp = (unsigned char *)"x";
    size_t len = 1;
    const unsigned char junk[] = {0x30, 0x03, 0x02, 0x01, 0x02};
    ck_assert_int_eq(pki_cmp_handle(s->ca, &hooks, s, 30, NULL, junk, sizeof(junk), &resp, &len), -1);
    ck_assert_ptr_null(resp);
    ck_assert_uint_eq(len, 0);
    ck_assert_int_eq(s->token_secret_calls, 0);
    free_store(s);
}
END_TEST

START_TEST(bundle_sign_verify)
{
    const char payload[] = "{\"version\": 1, \"name\": \"dev\"}";
    char *m = pki_bundle_manifest("profile", "dev-0123456789abcdef", 3, 2000000000LL,
                                  (const unsigned char *)payload, strlen(payload));
    ck_assert_ptr_nonnull(m);
    unsigned char md[32];
    EVP_Digest(payload, strlen(payload), md, NULL, EVP_sha256(), NULL);
    char hex[65], expect[512];
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    unsigned char b64[128];
    EVP_EncodeBlock(b64, (const unsigned char *)payload, (int)strlen(payload));
    snprintf(expect, sizeof(expect),
             "{\"format\":1,\"type\":\"profile\",\"device\":\"dev-0123456789abcdef\",\"version\":3,"
             "\"not_after\":2000000000,\"sha256\":\"%s\",\"payload\":\"%s\"}", hex, b64);
    ck_assert_str_eq(m, expect);

    pki_signer *signer = open_signer("signer.crt", "signer.key");
    pki_signer *other = open_signer("other.crt", "other.key");
    unsigned char *der = NULL;
    size_t der_len = 0;
    char err[256] = "", *content = NULL;
    size_t clen = 0;
    ck_assert_msg(pki_bundle_sign(signer, m, strlen(m), &der, &der_len, err, sizeof(err)) == 0, "%s", err);
    ck_assert_msg(pki_bundle_verify(der, der_len, signer_cert, &content, &clen, err, sizeof(err)) == 0, "%s", err);
    ck_assert_uint_eq(clen, strlen(m));
    ck_assert_str_eq(content, m);
    free(content);
    content = NULL;

    /* what the device's CMS parser sees: SignedData, id-data, attached, the signer certificate included */
    const unsigned char *p = der;
    CMS_ContentInfo *cms = d2i_CMS_ContentInfo(NULL, &p, (long)der_len);
    ck_assert_ptr_nonnull(cms);
    ck_assert_int_eq(OBJ_obj2nid(CMS_get0_type(cms)), NID_pkcs7_signed);
    ck_assert_int_eq(OBJ_obj2nid(CMS_get0_eContentType(cms)), NID_pkcs7_data);
    ck_assert_int_eq(CMS_is_detached(cms), 0);
    STACK_OF(X509) *certs = CMS_get1_certs(cms);
    ck_assert_int_eq(sk_X509_num(certs), 1);
    ck_assert_int_eq(X509_cmp(sk_X509_value(certs, 0), signer_cert), 0);
    sk_X509_pop_free(certs, X509_free);
    CMS_ContentInfo_free(cms);

    /* another pinned signer: refused */
    ck_assert_int_eq(pki_bundle_verify(der, der_len, other_cert, &content, &clen, err, sizeof(err)), -1);
    ck_assert_ptr_null(content);
    ck_assert_msg(strstr(err, "not signed by the pinned"), "%s", err);
    /* pinned: a certificate with the signer's issuer and serial but another key: the signature decides */
    ck_assert_int_eq(pki_bundle_verify(der, der_len, twin_cert, &content, &clen, err, sizeof(err)), -1);
    ck_assert_ptr_null(content);
    ck_assert_msg(strstr(err, "does not verify"), "%s", err);

    /* one byte of the content changed: refused */
    unsigned char *t = memmem(der, der_len, "\"version\":3", 11);
    ck_assert_ptr_nonnull(t);
    t[10] = '4';
    ck_assert_int_eq(pki_bundle_verify(der, der_len, signer_cert, &content, &clen, err, sizeof(err)), -1);
    ck_assert_ptr_null(content);
    ck_assert_msg(strstr(err, "does not verify"), "%s", err);
    t[10] = '3';
    ck_assert_int_eq(pki_bundle_verify(der, der_len, signer_cert, &content, &clen, err, sizeof(err)), 0);
    free(content);
    content = NULL;
    /* a byte of the signature changed: refused */
    der[der_len - 3] ^= 0x01;
    ck_assert_int_eq(pki_bundle_verify(der, der_len, signer_cert, &content, &clen, err, sizeof(err)), -1);
    OPENSSL_free(der);

    /* signed by another key whose certificate has the same name: refused */
    ck_assert_int_eq(pki_bundle_sign(other, m, strlen(m), &der, &der_len, err, sizeof(err)), 0);
    ck_assert_int_eq(pki_bundle_verify(der, der_len, signer_cert, &content, &clen, err, sizeof(err)), -1);
    ck_assert_ptr_null(content);
    OPENSSL_free(der);

    /* not CMS at all */
    ck_assert_int_eq(pki_bundle_verify((const unsigned char *)m, strlen(m), signer_cert, &content, &clen, err,
                                       sizeof(err)), -1);
    ck_assert_msg(strstr(err, "not a DER CMS"), "%s", err);
    pki_signer_free(signer);
    pki_signer_free(other);
    free(m);
}
END_TEST

/* An ASN1_TIME in seconds since 1970, without OpenSSL's time_t (32 bits on
 * a 32-bit target whose OpenSSL keeps it so, 64 here). */
static int64_t asn1_seconds(const ASN1_TIME *t)
{
    struct tm tm;
    ck_assert_int_eq(ASN1_TIME_to_tm(t, &tm), 1);
    return (int64_t)timegm(&tm);
}

START_TEST(crl_build)
{
    pki_signer *ca = open_signer("ca.crt", "ca.key");
    const unsigned char s1[] = {0x12, 0x34, 0x56}, s2[] = {0x7f, 0xff, 0x00, 0x01};
    pki_crl_entry e[] = {{s1, sizeof(s1), 1700000000, PKI_CRL_REASON_KEY_COMPROMISE}, {s2, sizeof(s2), 1700000100, 0}};
    unsigned char *der = NULL;
    size_t len = 0;
    char err[256] = "";
    time_t next = time(NULL) + 3600;
    ck_assert_msg(pki_crl_build(ca, e, 2, next, &der, &len, err, sizeof(err)) == 0, "%s", err);
    const unsigned char *p = der;
    X509_CRL *crl = d2i_X509_CRL(NULL, &p, (long)len);
    ck_assert_ptr_nonnull(crl);
    ck_assert_int_eq(X509_CRL_verify(crl, X509_get0_pubkey(ca_cert)), 1);
    ck_assert_int_eq(X509_NAME_cmp(X509_CRL_get_issuer(crl), X509_get_subject_name(ca_cert)), 0);
    ck_assert_int_eq(sk_X509_REVOKED_num(X509_CRL_get_REVOKED(crl)), 2);
    ck_assert_int_eq(asn1_seconds(X509_CRL_get0_nextUpdate(crl)), next);
    /* after January 2038 too, on 32-bit targets as well (their OpenSSL's time_t may be 32 bits) */
    unsigned char *der2 = NULL;
    size_t len2 = 0;
    ck_assert_msg(pki_crl_build(ca, e, 1, (time_t)2240000000, &der2, &len2, err, sizeof(err)) == 0, "%s", err);
    const unsigned char *p2 = der2;
    X509_CRL *late = d2i_X509_CRL(NULL, &p2, (long)len2);
    ck_assert_ptr_nonnull(late);
    ck_assert_int_eq(asn1_seconds(X509_CRL_get0_nextUpdate(late)), 2240000000);
    X509_CRL_free(late);
    OPENSSL_free(der2);
    /* a certificate with serial 0x123456 is listed */
    X509_REVOKED *r = NULL;
    ASN1_INTEGER *sn = ASN1_INTEGER_new();
    ASN1_INTEGER_set(sn, 0x123456);
    ck_assert_int_eq(X509_CRL_get0_by_serial(crl, &r, sn), 1);
    ck_assert_int_eq(asn1_seconds(X509_REVOKED_get0_revocationDate(r)), 1700000000);
    ASN1_ENUMERATED *why = X509_REVOKED_get_ext_d2i(r, NID_crl_reason, NULL, NULL);
    ck_assert_ptr_nonnull(why);
    ck_assert_int_eq(ASN1_ENUMERATED_get(why), PKI_CRL_REASON_KEY_COMPROMISE);
    ASN1_ENUMERATED_free(why);
    ASN1_INTEGER_set(sn, 0x123457);
    ck_assert_int_eq(X509_CRL_get0_by_serial(crl, &r, sn), 0);
    ASN1_INTEGER_free(sn);
    X509_CRL_free(crl);
    OPENSSL_free(der);
    /* an empty CRL is fine; a serial longer than 20 bytes is not */
    ck_assert_int_eq(pki_crl_build(ca, NULL, 0, next, &der, &len, err, sizeof(err)), 0);
    OPENSSL_free(der);
    unsigned char big[21] = {1};
    pki_crl_entry bad = {big, sizeof(big), 0, 0};
    ck_assert_int_eq(pki_crl_build(ca, &bad, 1, next, &der, &len, err, sizeof(err)), -1);
    ck_assert_msg(strstr(err, "entry 0"), "%s", err);
    pki_signer_free(ca);
}
END_TEST

/* ------------------------------------------------------- day 1..N: KUR, RR */

#define DEV_ID "dev-0123456789abcdef"

/* A device certificate issued by `issuer` (the device CA unless told), CN = DEV_ID (or cn),
   valid from `from` to `to` seconds relative to now. */
static X509 *device_cert(const char *cn, long serial, EVP_PKEY *key, X509 *issuer, EVP_PKEY *ikey, long from, long to)
{
    X509 *x = make_cert(cn, serial, key, issuer ? issuer : ca_cert, ikey ? ikey : ca_key, 0);
    X509_gmtime_adj(X509_getm_notBefore(x), from);
    X509_gmtime_adj(X509_getm_notAfter(x), to);
    X509V3_CTX v3;
    X509V3_set_ctx(&v3, issuer ? issuer : ca_cert, x, NULL, NULL, 0);
    X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, &v3, NID_ext_key_usage, "clientAuth");
    X509_add_ext(x, e, -1);
    X509_EXTENSION_free(e);
    ck_assert(X509_sign(x, ikey ? ikey : ca_key, EVP_sha256()));
    return x;
}

/* A device's client for KUR/RR: signature with (cert, key), the server's answers checked against the CA. */
static OSSL_CMP_CTX *cert_client(struct store *s, X509 *cert, EVP_PKEY *key, EVP_PKEY *newkey)
{
    OSSL_CMP_CTX *c = OSSL_CMP_CTX_new(NULL, NULL);
    ck_assert_ptr_nonnull(c);
    OSSL_CMP_CTX_set_log_cb(c, quiet);
    ck_assert(OSSL_CMP_CTX_set_transfer_cb(c, transfer));
    ck_assert(OSSL_CMP_CTX_set_transfer_cb_arg(c, s));
    ck_assert(OSSL_CMP_CTX_set1_cert(c, cert));
    ck_assert(OSSL_CMP_CTX_set1_pkey(c, key));
    ck_assert(OSSL_CMP_CTX_set1_oldCert(c, cert));
    ck_assert(OSSL_CMP_CTX_set1_srvCert(c, ca_cert));
    if (newkey) {
        EVP_PKEY_up_ref(newkey);
        ck_assert(OSSL_CMP_CTX_set0_newPkey(c, 1, newkey));
    }
    ck_assert(OSSL_CMP_CTX_set_option(c, OSSL_CMP_OPT_IMPLICIT_CONFIRM, 1));
    ck_assert(OSSL_CMP_CTX_set_option(c, OSSL_CMP_OPT_UNPROTECTED_ERRORS, 1));
    return c;
}

static void assert_chains_to_ca(X509 *cert)
{
    X509_STORE *st = X509_STORE_new();
    X509_STORE_add_cert(st, ca_cert);
    X509_STORE_CTX *vc = X509_STORE_CTX_new();
    X509_STORE_CTX_init(vc, st, cert, NULL);
    X509_STORE_CTX_set_purpose(vc, X509_PURPOSE_SSL_CLIENT);
    ck_assert_msg(X509_verify_cert(vc) == 1, "%s", X509_verify_cert_error_string(X509_STORE_CTX_get_error(vc)));
    X509_STORE_CTX_free(vc);
    X509_STORE_free(st);
}

START_TEST(kur_ok)
{
    struct store *s = new_store(PKI_ENROL_ISSUE);
    EVP_PKEY *key = ec_key(), *next = ec_key();
    X509 *old = device_cert(DEV_ID, 0x1234, key, NULL, NULL, -3600, 86400);
    OSSL_CMP_CTX *c = cert_client(s, old, key, next);
    X509 *cert = OSSL_CMP_exec_KUR_ses(c);
    ck_assert_msg(cert != NULL, "%s", status_text(c));
    ck_assert_int_eq(s->cert_ok_calls, 1);
    ck_assert_str_eq(s->cert_ok_device, DEV_ID);
    ck_assert_int_eq(s->renewed_calls, 1);
    ck_assert_str_eq(s->renewed_old, "1234");
    ck_assert_int_eq(X509_cmp(cert, s->issued), 0);
    ck_assert_int_eq(s->token_secret_calls + s->enrol_calls + s->issued_calls + s->revoke_calls, 0);
    assert_chains_to_ca(cert);
    char buf[256];
    X509_NAME_oneline(X509_get_subject_name(cert), buf, sizeof(buf));
    ck_assert_str_eq(buf, "/CN=" DEV_ID "/O=m2mvpn test");
    ck_assert_int_ne(ASN1_INTEGER_cmp(X509_get0_serialNumber(cert), X509_get0_serialNumber(old)), 0);
    ck_assert_int_eq(EVP_PKEY_eq(X509_get0_pubkey(cert), next), 1);
    ck_assert_int_eq(X509_check_host(cert, DEV_ID, 0, 0, NULL), 1);
    X509_free(cert);
    OSSL_CMP_CTX_free(c);

    /* a client that confirms explicitly (a signed certConf) gets the certificate too */
    c = cert_client(s, old, key, next);
    ck_assert(OSSL_CMP_CTX_set_option(c, OSSL_CMP_OPT_IMPLICIT_CONFIRM, 0));
    cert = OSSL_CMP_exec_KUR_ses(c);
    ck_assert_msg(cert != NULL, "%s", status_text(c));
    ck_assert_int_eq(s->renewed_calls, 2);
    ck_assert_int_eq(s->token_secret_calls + s->enrol_calls + s->issued_calls, 0);
    X509_free(cert);
    OSSL_CMP_CTX_free(c);

    /* the same key again (no new key) is allowed too */
    c = cert_client(s, old, key, NULL);
    cert = OSSL_CMP_exec_KUR_ses(c);
    ck_assert_msg(cert != NULL, "%s", status_text(c));
    ck_assert_int_eq(EVP_PKEY_eq(X509_get0_pubkey(cert), key), 1);
    ck_assert_int_eq(s->renewed_calls, 3);
    X509_free(cert);
    OSSL_CMP_CTX_free(c);
    X509_free(old);
    EVP_PKEY_free(key);
    EVP_PKEY_free(next);
    free_store(s);
}
END_TEST

/* A certificate distribution point from the options lands in every certificate issued. */
static struct store *cdp_store;
static OSSL_CMP_MSG *transfer_cdp(OSSL_CMP_CTX *c, const OSSL_CMP_MSG *req)
{
    struct store *s = OSSL_CMP_CTX_get_transfer_cb_arg(c);
    unsigned char *der = NULL, *resp = NULL;
    size_t resp_len = 0;
    int n = i2d_OSSL_CMP_MSG(req, &der);
    pki_cmp_options o = {.cert_days = 30, .org = "m2mvpn test", .crl_url = "http://198.51.100.9:8080/crl"};
    ck_assert_int_eq(pki_cmp_handle_opts(s->ca, &hooks, s, &o, der, (size_t)n, &resp, &resp_len), 0);
    OPENSSL_free(der);
    const unsigned char *p = resp;
    OSSL_CMP_MSG *m = d2i_OSSL_CMP_MSG(NULL, &p, (long)resp_len);
    OPENSSL_free(resp);
    return m;
}

START_TEST(kur_crl_distribution_point)
{
    struct store *s = cdp_store = new_store(PKI_ENROL_ISSUE);
    EVP_PKEY *key = ec_key();
    X509 *old = device_cert(DEV_ID, 0x1234, key, NULL, NULL, -3600, 86400);
    OSSL_CMP_CTX *c = cert_client(s, old, key, NULL);
    ck_assert(OSSL_CMP_CTX_set_transfer_cb(c, transfer_cdp));
    X509 *cert = OSSL_CMP_exec_KUR_ses(c);
    ck_assert_msg(cert != NULL, "%s", status_text(c));
    STACK_OF(DIST_POINT) *cdp = X509_get_ext_d2i(cert, NID_crl_distribution_points, NULL, NULL);
    ck_assert_ptr_nonnull(cdp);
    ck_assert_int_eq(sk_DIST_POINT_num(cdp), 1);
    GENERAL_NAME *gn = sk_GENERAL_NAME_value(sk_DIST_POINT_value(cdp, 0)->distpoint->name.fullname, 0);
    ck_assert_int_eq(gn->type, GEN_URI);
    ck_assert_str_eq((const char *)ASN1_STRING_get0_data(gn->d.uniformResourceIdentifier),
                     "http://198.51.100.9:8080/crl");
    CRL_DIST_POINTS_free(cdp);
    X509_free(cert);
    OSSL_CMP_CTX_free(c);
    X509_free(old);
    EVP_PKEY_free(key);
    free_store(s);
}
END_TEST

/* Refused: signed by a revoked certificate, an expired one, one of another CA (same CA name),
   MAC-protected with a token. No certificate, no hook with a side effect runs. */
START_TEST(kur_refused)
{
    EVP_PKEY *key = ec_key(), *next = ec_key(), *rogue_key = ec_key();
    X509 *rogue_ca = make_cert("m2mvpn test device CA", 1, rogue_key, NULL, NULL, 1);
    X509 *cases[3] = {
        device_cert(DEV_ID, 0x1234, key, NULL, NULL, -3600, 86400),                /* revoked */
        device_cert(DEV_ID, 0x1235, key, NULL, NULL, -7200, -3600),                /* expired */
        device_cert(DEV_ID, 0x1236, key, rogue_ca, rogue_key, -3600, 86400),       /* another CA */
    };
    const char *why[3] = {"revoked", "expired", "not a valid device certificate"};
    for (int i = 0; i < 4; i++) {
        struct store *s = new_store(PKI_ENROL_ISSUE);
        s->revoked_serial = "1234";
        OSSL_CMP_CTX *c = cert_client(s, cases[i < 3 ? i : 0], key, next);
        if (i == 1) { /* OpenSSL's client itself will not sign with an expired certificate: make it */
            X509_STORE *ts = X509_STORE_new();
            X509_STORE_add_cert(ts, ca_cert);
            X509_STORE_set_flags(ts, X509_V_FLAG_NO_CHECK_TIME);
            ck_assert(OSSL_CMP_CTX_set0_trustedStore(c, ts));
        }
        if (i == 3) { /* a MAC with a good enrolment token instead of a signature */
            X509 *good = device_cert(DEV_ID, 0x1237, key, NULL, NULL, -3600, 86400);
            ck_assert(OSSL_CMP_CTX_set1_oldCert(c, good));
            ck_assert(OSSL_CMP_CTX_set1_secretValue(c, (const unsigned char *)good_secret, 43));
            ck_assert(OSSL_CMP_CTX_set1_referenceValue(c, (const unsigned char *)token_id, 16));
            X509_free(good);
        }
        X509 *cert = OSSL_CMP_exec_KUR_ses(c);
        const char *txt = status_text(c);
        ck_assert_msg(cert == NULL, "case %d issued a certificate", i);
        if (i < 3)
            ck_assert_msg(strstr(txt, why[i]), "case %d: %s", i, txt);
        else
            ck_assert_msg(strstr(txt, "not a MAC"), "case %d: %s", i, txt);
        ck_assert_int_eq(s->renewed_calls, 0);
        ck_assert_int_eq(s->revoke_calls, 0);
        ck_assert_int_eq(s->issued_calls + s->enrol_calls, 0);
        ck_assert_int_eq(s->cert_ok_calls, i == 0 ? 1 : 0);
        OSSL_CMP_CTX_free(c);
        free_store(s);
    }
    for (int i = 0; i < 3; i++)
        X509_free(cases[i]);
    X509_free(rogue_ca);
    EVP_PKEY_free(key);
    EVP_PKEY_free(next);
    EVP_PKEY_free(rogue_key);
}
END_TEST

START_TEST(rr_ok)
{
    struct store *s = new_store(PKI_ENROL_ISSUE);
    EVP_PKEY *key = ec_key();
    X509 *cert = device_cert(DEV_ID, 0xabcdef, key, NULL, NULL, -3600, 86400);
    OSSL_CMP_CTX *c = cert_client(s, cert, key, NULL);
    ck_assert_msg(OSSL_CMP_exec_RR_ses(c) == 1, "%s", status_text(c));
    ck_assert_int_eq(OSSL_CMP_CTX_get_status(c), OSSL_CMP_PKISTATUS_accepted);
    ck_assert_int_eq(s->revoke_calls, 1);
    ck_assert_str_eq(s->revoked, DEV_ID "/abcdef");
    ck_assert_int_eq(s->revoke_reason, PKI_CRL_REASON_CESSATION);
    ck_assert_int_eq(s->renewed_calls + s->issued_calls, 0);
    OSSL_CMP_CTX_free(c);
    /* once revoked (the store says so), the certificate cannot revoke or renew anything */
    s->revoked_serial = "abcdef";
    c = cert_client(s, cert, key, NULL);
    ck_assert_int_ne(OSSL_CMP_exec_RR_ses(c), 1);
    ck_assert_msg(strstr(status_text(c), "revoked"), "%s", status_text(c));
    ck_assert(OSSL_CMP_CTX_get_failInfoCode(c) & (1 << OSSL_CMP_PKIFAILUREINFO_certRevoked));
    ck_assert_int_eq(s->revoke_calls, 1);
    OSSL_CMP_CTX_free(c);
    /* the store failing is a systemFailure, never certRevoked: a device
     * retrying its RR takes only certRevoked for "already revoked" */
    s->revoked_serial = NULL;
    s->cert_ok_fails = 1;
    c = cert_client(s, cert, key, NULL);
    ck_assert_int_ne(OSSL_CMP_exec_RR_ses(c), 1);
    int fi = OSSL_CMP_CTX_get_failInfoCode(c);
    ck_assert_msg(fi & (1 << OSSL_CMP_PKIFAILUREINFO_systemFailure), "failInfo %x", fi);
    ck_assert_msg(!(fi & (1 << OSSL_CMP_PKIFAILUREINFO_certRevoked)), "failInfo %x", fi);
    ck_assert_int_eq(s->revoke_calls, 1);
    OSSL_CMP_CTX_free(c);
    /* refused for another reason than a revocation (not the device's,
     * device not enrolled): badCertId, never certRevoked */
    s->cert_ok_fails = 0;
    s->foreign_serial = "abcdef";
    c = cert_client(s, cert, key, NULL);
    ck_assert_int_ne(OSSL_CMP_exec_RR_ses(c), 1);
    fi = OSSL_CMP_CTX_get_failInfoCode(c);
    ck_assert_msg(fi & (1 << OSSL_CMP_PKIFAILUREINFO_badCertId), "failInfo %x", fi);
    ck_assert_msg(!(fi & (1 << OSSL_CMP_PKIFAILUREINFO_certRevoked)), "failInfo %x", fi);
    ck_assert_msg(strstr(status_text(c), "not one of device"), "%s", status_text(c));
    ck_assert_int_eq(s->revoke_calls, 1);
    OSSL_CMP_CTX_free(c);
    X509_free(cert);
    EVP_PKEY_free(key);
    free_store(s);
}
END_TEST

/* A device signs an RR for another device's certificate (or another of the CA's): refused. */
START_TEST(rr_other_device)
{
    struct store *s = new_store(PKI_ENROL_ISSUE);
    EVP_PKEY *key = ec_key(), *key2 = ec_key();
    X509 *mine = device_cert(DEV_ID, 0x1111, key, NULL, NULL, -3600, 86400);
    X509 *theirs = device_cert("dev-fedcba9876543210", 0x2222, key2, NULL, NULL, -3600, 86400);
    OSSL_CMP_CTX *c = cert_client(s, mine, key, NULL);
    ck_assert(OSSL_CMP_CTX_set1_oldCert(c, theirs));
    ck_assert_int_ne(OSSL_CMP_exec_RR_ses(c), 1);
    ck_assert_msg(strstr(status_text(c), "only revoke the certificate that signs"), "%s", status_text(c));
    ck_assert_int_eq(s->revoke_calls, 0);
    OSSL_CMP_CTX_free(c);
    /* with a MAC (an enrolment token) instead of a signature: refused */
    c = cert_client(s, theirs, key2, NULL);
    ck_assert(OSSL_CMP_CTX_set1_secretValue(c, (const unsigned char *)good_secret, 43));
    ck_assert(OSSL_CMP_CTX_set1_referenceValue(c, (const unsigned char *)token_id, 16));
    ck_assert_int_ne(OSSL_CMP_exec_RR_ses(c), 1);
    ck_assert_int_eq(s->revoke_calls, 0);
    OSSL_CMP_CTX_free(c);
    X509_free(mine);
    X509_free(theirs);
    EVP_PKEY_free(key);
    EVP_PKEY_free(key2);
    free_store(s);
}
END_TEST

static Suite *pki_srv_suite(void)
{
    Suite *s = suite_create("pki_srv");
    TCase *t = tcase_create("token");
    tcase_add_test(t, token_secret_derivation);
    suite_add_tcase(s, t);
    t = tcase_create("signer");
    tcase_add_checked_fixture(t, setup, teardown);
    tcase_add_test(t, signer_open_errors);
    suite_add_tcase(s, t);
    t = tcase_create("cmp");
    tcase_add_checked_fixture(t, setup, teardown);
    tcase_add_test(t, enrol_pending_then_issue);
    tcase_add_test(t, enrol_rejected);
    tcase_add_test(t, enrol_pending_then_rejected);
    tcase_add_test(t, enrol_wrong_secret);
    tcase_add_test(t, enrol_unknown_token);
    tcase_add_test(t, enrol_expired_token);
    tcase_add_test(t, enrol_unprotected);
    tcase_add_test(t, enrol_signed_by_unknown_cert);
    tcase_add_test(t, enrol_explicit_confirm);
    tcase_add_test(t, cmp_garbage);
    suite_add_tcase(s, t);
    t = tcase_create("kur_rr");
    tcase_add_checked_fixture(t, setup, teardown);
    tcase_add_test(t, kur_ok);
    tcase_add_test(t, kur_crl_distribution_point);
    tcase_add_test(t, kur_refused);
    tcase_add_test(t, rr_ok);
    tcase_add_test(t, rr_other_device);
    suite_add_tcase(s, t);
    t = tcase_create("bundle");
    tcase_add_checked_fixture(t, setup, teardown);
    tcase_add_test(t, bundle_sign_verify);
    suite_add_tcase(s, t);
    t = tcase_create("crl");
    tcase_add_checked_fixture(t, setup, teardown);
    tcase_add_test(t, crl_build);
    suite_add_tcase(s, t);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(pki_srv_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
