/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The test PKI of tests/unit/test_cred.c, made at test time with the OpenSSL
 * API in a mkdtemp() folder (no key is committed): a root CA, an intermediate,
 * RSA-3072 / P-256 / P-384 / P-521 / Ed25519 leaves with SANs, an expired
 * leaf, a leaf of another CA, encrypted keys and PKCS#12 files.
 * Included once, by that test only (static functions).
 */
#ifndef M2MVPN_TEST_CRED_TEST_PKI_H
#define M2MVPN_TEST_CRED_TEST_PKI_H

#include <check.h>

#include <ftw.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/pkcs12.h>
#include <openssl/provider.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#define DAY (24 * 3600L)

typedef struct test_pki {
    char dir[64];
    EVP_PKEY *root_key, *int_key, *other_key;
    X509 *root, *inter, *other;
    /* leaves: index by leaf_kind */
    EVP_PKEY *leaf_key[7];
    X509 *leaf[7];
    int64_t rsa_not_after;
} test_pki;

enum leaf_kind { LEAF_RSA, LEAF_P256, LEAF_P384, LEAF_P521, LEAF_EXPIRED, LEAF_EVIL, LEAF_ED25519,
                 N_LEAVES };

static test_pki T;
static bool T_built;

static char *path_of(const char *name)
{
    static char buf[8][256];
    static int i;
    char *p = buf[i++ % 8];
    snprintf(p, 256, "%s/%s", T.dir, name);
    return p;
}

static EVP_PKEY *gen_key(const char *kind)
{
    EVP_PKEY *k = !strcmp(kind, "rsa3072")   ? EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)3072)
                  : !strcmp(kind, "rsa1024") ? EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024)
                  : !strcmp(kind, "ED25519") ? EVP_PKEY_Q_keygen(NULL, NULL, "ED25519")
                                             : EVP_PKEY_Q_keygen(NULL, NULL, "EC", kind);
    ck_assert_ptr_nonnull(k);
    return k;
}

static void add_ext(X509 *x, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer, x, NULL, NULL, 0);
    X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    ck_assert_ptr_nonnull(e);
    ck_assert_int_eq(X509_add_ext(x, e, -1), 1);
    X509_EXTENSION_free(e);
}

/* A certificate for `key`, subject "C=CH, O=<o>, CN=<cn>", signed by
 * issuer/issuer_key (self-signed if NULL), valid [now+from, now+to]. */
static X509 *make_cert(EVP_PKEY *key, const char *o, const char *cn, X509 *issuer,
                       EVP_PKEY *issuer_key, bool ca, const char *san, long from, long to)
{
    static long serial = 1;
    X509 *x = X509_new();
    ck_assert_ptr_nonnull(x);
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), serial++);
    X509_NAME *n = X509_NAME_new();
    X509_NAME_add_entry_by_txt(n, "C", MBSTRING_ASC, (const unsigned char *)"CH", -1, -1, 0);
    X509_NAME_add_entry_by_txt(n, "O", MBSTRING_ASC, (const unsigned char *)o, -1, -1, 0);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_subject_name(x, n);
    X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : n);
    X509_NAME_free(n);
    X509_gmtime_adj(X509_getm_notBefore(x), from);
    X509_gmtime_adj(X509_getm_notAfter(x), to);
    X509_set_pubkey(x, key);
    X509 *iss = issuer ? issuer : x;
    add_ext(x, iss, NID_basic_constraints, ca ? "critical,CA:TRUE" : "CA:FALSE");
    add_ext(x, iss, NID_subject_key_identifier, "hash");
    add_ext(x, iss, NID_authority_key_identifier, "keyid:always");
    if (ca)
        add_ext(x, iss, NID_key_usage, "critical,keyCertSign,cRLSign");
    if (san)
        add_ext(x, iss, NID_subject_alt_name, san);
    ck_assert_int_gt(X509_sign(x, issuer_key ? issuer_key : key, EVP_sha256()), 0);
    return x;
}

static void write_pem(const char *name, X509 *const *certs, size_t n, EVP_PKEY *key,
                      const char *key_pass)
{
    BIO *b = BIO_new_file(path_of(name), "w");
    ck_assert_ptr_nonnull(b);
    for (size_t i = 0; i < n; i++)
        ck_assert_int_eq(PEM_write_bio_X509(b, certs[i]), 1);
    if (key && key_pass)
        ck_assert_int_eq(PEM_write_bio_PKCS8PrivateKey(b, key, EVP_aes_256_cbc(), key_pass,
                                                       (int)strlen(key_pass), NULL, NULL), 1);
    else if (key)
        ck_assert_int_eq(PEM_write_bio_PrivateKey(b, key, NULL, NULL, 0, NULL, NULL), 1);
    BIO_free(b);
}

static void write_p12(const char *name, const char *pass, EVP_PKEY *key, X509 *cert, X509 *chain)
{
    STACK_OF(X509) *ca = sk_X509_new_null();
    sk_X509_push(ca, chain);
    PKCS12 *p12 = PKCS12_create(pass, "dev", key, cert, ca, 0, 0, 0, 0, 0);
    ck_assert_ptr_nonnull(p12);
    BIO *b = BIO_new_file(path_of(name), "wb");
    ck_assert_int_eq(i2d_PKCS12_bio(b, p12), 1);
    BIO_free(b);
    PKCS12_free(p12);
    sk_X509_free(ca);
}

/* A PKCS#12 the way old tools wrote it: certificate bag under RC2-40, which
 * OpenSSL 3 only has in its legacy provider (loaded here into a private
 * library context, so the code under test does not see it). */
static void write_legacy_p12(const char *name, const char *pass, EVP_PKEY *key, X509 *cert)
{
    OSSL_LIB_CTX *lc = OSSL_LIB_CTX_new();
    OSSL_PROVIDER *dflt = OSSL_PROVIDER_load(lc, "default");
    OSSL_PROVIDER *legacy = OSSL_PROVIDER_load(lc, "legacy");
    ck_assert_ptr_nonnull(legacy);
    PKCS12 *p12 = PKCS12_create_ex(pass, "dev", key, cert, NULL,
                                   NID_pbe_WithSHA1And3_Key_TripleDES_CBC,
                                   NID_pbe_WithSHA1And40BitRC2_CBC, 0, 0, 0, lc, NULL);
    ck_assert_ptr_nonnull(p12);
    BIO *b = BIO_new_file(path_of(name), "wb");
    ck_assert_int_eq(i2d_PKCS12_bio(b, p12), 1);
    BIO_free(b);
    PKCS12_free(p12);
    OSSL_PROVIDER_unload(legacy);
    OSSL_PROVIDER_unload(dflt);
    OSSL_LIB_CTX_free(lc);
}

static void build_pki(void)
{
    if (T_built)
        return;
    strcpy(T.dir, "/tmp/m2mvpn-cred-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(T.dir));
    T.root_key = gen_key("P-256");
    T.int_key = gen_key("P-256");
    T.other_key = gen_key("P-256");
    T.root = make_cert(T.root_key, "m2m", "m2m Root CA", NULL, NULL, true, NULL, -DAY, 3650 * DAY);
    T.inter = make_cert(T.int_key, "m2m", "m2m Intermediate CA", T.root, T.root_key, true, NULL,
                        -DAY, 1825 * DAY);
    T.other = make_cert(T.other_key, "evil", "Other CA", NULL, NULL, true, NULL, -DAY, 3650 * DAY);
    const char *kinds[N_LEAVES] = { "rsa3072", "P-256", "P-384", "P-521", "P-256", "P-256",
                                    "ED25519" };
    for (int i = 0; i < N_LEAVES; i++)
        T.leaf_key[i] = gen_key(kinds[i]);
    T.leaf[LEAF_RSA] = make_cert(T.leaf_key[LEAF_RSA], "m2m", "gw.m2m.test", T.inter, T.int_key,
        false, "DNS:gw.m2m.test,IP:198.51.100.1,IP:2001:db8::1,email:gw@m2m.test",
        -DAY, 365 * DAY);
    T.leaf[LEAF_P256] = make_cert(T.leaf_key[LEAF_P256], "m2m", "dev1.m2m.test", T.inter,
                                  T.int_key, false, "DNS:dev1.m2m.test", -DAY, 365 * DAY);
    T.leaf[LEAF_P384] = make_cert(T.leaf_key[LEAF_P384], "m2m", "dev2.m2m.test", T.inter,
                                  T.int_key, false, "DNS:dev2.m2m.test", -DAY, 365 * DAY);
    T.leaf[LEAF_P521] = make_cert(T.leaf_key[LEAF_P521], "m2m", "dev3.m2m.test", T.inter,
                                  T.int_key, false, "DNS:dev3.m2m.test", -DAY, 365 * DAY);
    T.leaf[LEAF_EXPIRED] = make_cert(T.leaf_key[LEAF_EXPIRED], "m2m", "old.m2m.test", T.inter,
                                     T.int_key, false, "DNS:old.m2m.test", -30 * DAY, -DAY);
    T.leaf[LEAF_EVIL] = make_cert(T.leaf_key[LEAF_EVIL], "m2m", "gw.m2m.test", T.other,
                                  T.other_key, false, "DNS:gw.m2m.test", -DAY, 365 * DAY);
    T.leaf[LEAF_ED25519] = make_cert(T.leaf_key[LEAF_ED25519], "m2m", "dev4.m2m.test", T.inter,
                                     T.int_key, false, "DNS:dev4.m2m.test", -DAY, 365 * DAY);
    write_pem("ca.pem", &T.root, 1, NULL, NULL);
    write_pem("other-ca.pem", &T.other, 1, NULL, NULL);
    write_pem("int.pem", &T.inter, 1, NULL, NULL);
    const char *names[N_LEAVES] = { "rsa", "p256", "p384", "p521", "expired", "evil", "ed25519" };
    for (int i = 0; i < N_LEAVES; i++) {
        char cert[32], key[32];
        snprintf(cert, sizeof cert, "%s.pem", names[i]);
        snprintf(key, sizeof key, "%s.key", names[i]);
        X509 *chain[2] = { T.leaf[i], i == LEAF_EVIL ? T.other : T.inter };
        write_pem(cert, chain, 2, NULL, NULL);
        write_pem(key, NULL, 0, T.leaf_key[i], NULL);
    }
    write_pem("p256-enc.key", NULL, 0, T.leaf_key[LEAF_P256], "1234");
    write_pem("p256-combined.pem", &T.leaf[LEAF_P256], 1, T.leaf_key[LEAF_P256], NULL);
    write_p12("nopass.p12", NULL, T.leaf_key[LEAF_P256], T.leaf[LEAF_P256], T.inter);
    write_p12("empty.p12", "", T.leaf_key[LEAF_P384], T.leaf[LEAF_P384], T.inter);
    write_p12("pass.p12", "s3cret", T.leaf_key[LEAF_RSA], T.leaf[LEAF_RSA], T.inter);
    write_legacy_p12("legacy.p12", "s3cret", T.leaf_key[LEAF_P256], T.leaf[LEAF_P256]);
    /* A DER certificate file, for pki_cert_load_file. */
    BIO *b = BIO_new_file(path_of("p256.der"), "wb");
    i2d_X509_bio(b, T.leaf[LEAF_P256]);
    BIO_free(b);
    T.rsa_not_after = (int64_t)time(NULL) + 365 * DAY;
    T_built = true;
}

static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st; (void)flag; (void)ftw;
    return remove(p);
}

static void destroy_pki(void)
{
    if (!T_built)
        return;
    nftw(T.dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
    for (int i = 0; i < N_LEAVES; i++) {
        X509_free(T.leaf[i]);
        EVP_PKEY_free(T.leaf_key[i]);
    }
    X509_free(T.root);
    X509_free(T.inter);
    X509_free(T.other);
    EVP_PKEY_free(T.root_key);
    EVP_PKEY_free(T.int_key);
    EVP_PKEY_free(T.other_key);
    memset(&T, 0, sizeof T);
    T_built = false;
}

#endif
