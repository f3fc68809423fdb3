/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Tests of lib/crypto/pki.h and lib/cred/cred.h, against a test PKI made at
 * test time (tests/unit/data/cred/test_pki.h): no key is committed.
 */
#include <check.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/pkcs12.h>
#include <openssl/provider.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <m2mvpn/m2mvpn.h>

#include "cred/cred.h"
#include "crypto/pki.h"

#include "data/cred/test_pki.h"

/* ---------------------------------------------------------------- helpers */

static pki_cert *load_one(const char *name, size_t index)
{
    pki_cert **certs = NULL;
    size_t n = 0;
    char err[256] = "";
    ck_assert_msg(pki_cert_load_file(path_of(name), &certs, &n, err, sizeof err) == 0, "%s", err);
    ck_assert_uint_gt(n, index);
    pki_cert *c = pki_cert_ref(certs[index]);
    pki_cert_array_free(certs, n);
    return c;
}

static pki_trust *trust_root(void)
{
    pki_trust *t = NULL;
    char err[256];
    ck_assert_int_eq(pki_trust_new(&t), 0);
    ck_assert_msg(pki_trust_add_file(t, path_of("ca.pem"), err, sizeof err) == 0, "%s", err);
    return t;
}

static cred_provider *open_ok(const char *cert, const char *key, const char *pin)
{
    cred_provider *p = NULL;
    char err[256] = "";
    int rc = cred_file_open(path_of(cert), key ? path_of(key) : NULL, pin, pin ? strlen(pin) : 0,
                            &p, err, sizeof err);
    ck_assert_msg(rc == 0, "open %s: %d %s", cert, rc, err);
    return p;
}

static const uint8_t MSG[] = "IKE_AUTH signed octets: message | Nr | prf(SK_pi, IDi')";

/* ---------------------------------------------------- sign/verify matrix */

static const struct {
    const char *cert, *key;
    pki_auth_method method;
    pki_sig_scheme scheme;
} sign_cases[] = {
    { "rsa.pem", "rsa.key", PKI_AUTH_RSA_SIG, PKI_SIG_RSA_PKCS1_SHA1 },
    { "rsa.pem", "rsa.key", PKI_AUTH_DIGITAL_SIGNATURE, PKI_SIG_RSA_PKCS1_SHA256 },
    { "rsa.pem", "rsa.key", PKI_AUTH_DIGITAL_SIGNATURE, PKI_SIG_RSA_PKCS1_SHA384 },
    { "rsa.pem", "rsa.key", PKI_AUTH_DIGITAL_SIGNATURE, PKI_SIG_RSA_PKCS1_SHA512 },
    { "rsa.pem", "rsa.key", PKI_AUTH_DIGITAL_SIGNATURE, PKI_SIG_RSA_PSS_SHA256 },
    { "rsa.pem", "rsa.key", PKI_AUTH_DIGITAL_SIGNATURE, PKI_SIG_RSA_PSS_SHA384 },
    { "rsa.pem", "rsa.key", PKI_AUTH_DIGITAL_SIGNATURE, PKI_SIG_RSA_PSS_SHA512 },
    { "p256.pem", "p256.key", PKI_AUTH_ECDSA_SHA256_P256, PKI_SIG_ECDSA_SHA256 },
    { "p384.pem", "p384.key", PKI_AUTH_ECDSA_SHA384_P384, PKI_SIG_ECDSA_SHA384 },
    { "p521.pem", "p521.key", PKI_AUTH_ECDSA_SHA512_P521, PKI_SIG_ECDSA_SHA512 },
    { "p256.pem", "p256.key", PKI_AUTH_DIGITAL_SIGNATURE, PKI_SIG_ECDSA_SHA256 },
    { "p256.pem", "p256.key", PKI_AUTH_DIGITAL_SIGNATURE, PKI_SIG_ECDSA_SHA512 },
    { "p384.pem", "p384.key", PKI_AUTH_DIGITAL_SIGNATURE, PKI_SIG_ECDSA_SHA384 },
    { "p521.pem", "p521.key", PKI_AUTH_DIGITAL_SIGNATURE, PKI_SIG_ECDSA_SHA512 },
    { "ed25519.pem", "ed25519.key", PKI_AUTH_DIGITAL_SIGNATURE, PKI_SIG_ED25519 },
};
#define N_SIGN_CASES (int)(sizeof sign_cases / sizeof sign_cases[0])

START_TEST(sign_then_verify)
{
    build_pki();
    cred_provider *p = open_ok(sign_cases[_i].cert, sign_cases[_i].key, NULL);
    pki_auth_method m = sign_cases[_i].method;
    pki_sig_scheme s = sign_cases[_i].scheme;
    uint8_t auth[PKI_AUTH_MAX];
    size_t len = 0;
    char err[256] = "";
    ck_assert_msg(cred_sign_auth(p, m, s, MSG, sizeof MSG, auth, sizeof auth, &len, err,
                                 sizeof err) == 0, "%s", err);
    pki_cert *const *chain;
    size_t n;
    ck_assert_int_eq(cred_chain(p, &chain, &n, err, sizeof err), 0);
    ck_assert_uint_eq(n, 2);
    pki_sig_scheme used = PKI_SIG_NONE;
    ck_assert_msg(pki_auth_verify(chain[0], (uint8_t)m, auth, len, MSG, sizeof MSG, &used, err,
                                  sizeof err) == 0, "%s: %s", pki_sig_scheme_name(s), err);
    ck_assert_int_eq(used, s);
    /* Fixed sizes of RFC 4754 r||s */
    if (m == PKI_AUTH_ECDSA_SHA256_P256)
        ck_assert_uint_eq(len, 64);
    if (m == PKI_AUTH_ECDSA_SHA512_P521)
        ck_assert_uint_eq(len, 132);
    if (m == PKI_AUTH_RSA_SIG)
        ck_assert_uint_eq(len, 384); /* RSA-3072 */
    /* Tampered data and tampered signature must both fail. */
    uint8_t msg2[sizeof MSG];
    memcpy(msg2, MSG, sizeof MSG);
    msg2[3] ^= 0x01;
    ck_assert_int_eq(pki_auth_verify(chain[0], (uint8_t)m, auth, len, msg2, sizeof msg2, NULL,
                                     err, sizeof err), M2MVPN_E_AUTH_PEER);
    ck_assert_ptr_nonnull(strstr(err, "signature invalid"));
    auth[len - 1] ^= 0x80;
    ck_assert_int_ne(pki_auth_verify(chain[0], (uint8_t)m, auth, len, MSG, sizeof MSG, NULL,
                                     err, sizeof err), 0);
    /* Restored, it verifies again; but not with another P-256 key. */
    auth[len - 1] ^= 0x80;
    ck_assert_int_eq(pki_auth_verify(chain[0], (uint8_t)m, auth, len, MSG, sizeof MSG, NULL,
                                     err, sizeof err), 0);
    if (pki_cert_key_type(chain[0], NULL) == PKI_KEY_EC_P256) {
        pki_cert *other = load_one("evil.pem", 0);
        ck_assert_int_eq(pki_auth_verify(other, (uint8_t)m, auth, len, MSG, sizeof MSG, NULL,
                                         err, sizeof err), M2MVPN_E_AUTH_PEER);
        pki_cert_free(other);
    }
    cred_free(p);
}
END_TEST

START_TEST(verify_rejects_wrong_key_type)
{
    build_pki();
    cred_provider *p = open_ok("p384.pem", "p384.key", NULL);
    uint8_t auth[PKI_AUTH_MAX];
    size_t len;
    char err[256];
    ck_assert_int_eq(cred_sign_auth(p, PKI_AUTH_ECDSA_SHA384_P384, PKI_SIG_ECDSA_SHA384, MSG,
                                    sizeof MSG, auth, sizeof auth, &len, err, sizeof err), 0);
    pki_cert *const *chain;
    size_t n;
    ck_assert_int_eq(cred_chain(p, &chain, &n, err, sizeof err), 0);
    /* Method 9 demands a P-256 key: a P-384 certificate is refused. */
    ck_assert_int_eq(pki_auth_verify(chain[0], PKI_AUTH_ECDSA_SHA256_P256, auth, len, MSG,
                                     sizeof MSG, NULL, err, sizeof err), M2MVPN_E_AUTH_PEER);
    /* Scheme that does not fit method/key is refused when signing. */
    ck_assert_int_eq(cred_sign_auth(p, PKI_AUTH_DIGITAL_SIGNATURE, PKI_SIG_RSA_PSS_SHA256, MSG,
                                    sizeof MSG, auth, sizeof auth, &len, err, sizeof err),
                     M2MVPN_E_INVAL);
    ck_assert_int_eq(cred_sign_auth(p, PKI_AUTH_ECDSA_SHA256_P256, PKI_SIG_ECDSA_SHA256, MSG,
                                    sizeof MSG, auth, sizeof auth, &len, err, sizeof err),
                     M2MVPN_E_INVAL);
    /* Unknown method */
    ck_assert_int_eq(pki_auth_verify(chain[0], 3, auth, len, MSG, sizeof MSG, NULL, err,
                                     sizeof err), M2MVPN_E_NOTSUPP);
    /* An RFC 7427 ECDSA AUTH verified with an RSA certificate is refused. */
    ck_assert_int_eq(cred_sign_auth(p, PKI_AUTH_DIGITAL_SIGNATURE, PKI_SIG_ECDSA_SHA384, MSG,
                                    sizeof MSG, auth, sizeof auth, &len, err, sizeof err), 0);
    pki_cert *rsa = load_one("rsa.pem", 0);
    ck_assert_int_eq(pki_auth_verify(rsa, PKI_AUTH_DIGITAL_SIGNATURE, auth, len, MSG, sizeof MSG,
                                     NULL, err, sizeof err), M2MVPN_E_AUTH_PEER);
    /* Truncated method-14 AUTH data */
    ck_assert_int_eq(pki_auth_verify(chain[0], PKI_AUTH_DIGITAL_SIGNATURE, auth, 5, MSG,
                                     sizeof MSG, NULL, err, sizeof err), M2MVPN_E_PROTOCOL);
    pki_cert_free(rsa);
    cred_free(p);
}
END_TEST

/* ---------------------------------------------------------------- chains */

/* A gateway-looking leaf (SAN gw.m2m.test) from the trusted intermediate,
 * with extra extensions (NULL: none) and a key of `kind`. */
static pki_cert *gw_leaf_with(const char *kind, int nid, const char *value, bool ca)
{
    EVP_PKEY *k = gen_key(kind);
    X509 *x = make_cert(k, "m2m", "gw.m2m.test", T.inter, T.int_key, ca, "DNS:gw.m2m.test", -DAY, DAY);
    if (value) {
        add_ext(x, T.inter, nid, value);
        ck_assert_int_gt(X509_sign(x, T.int_key, EVP_sha256()), 0);
    }
    unsigned char *der = NULL;
    int len = i2d_X509(x, &der);
    pki_cert *c = NULL;
    char err[128];
    ck_assert_int_eq(pki_cert_from_der(der, (size_t)len, &c, err, sizeof err), 0);
    OPENSSL_free(der);
    X509_free(x);
    EVP_PKEY_free(k);
    return c;
}

/* RFC 4945 §5.1.3.2/§5.1.3.12: a certificate of the trusted CA that carries
 * the gateway's name is not enough; it must be meant for it. */
START_TEST(chain_usage_and_strength)
{
    build_pki();
    pki_trust *t = trust_root();
    pki_cert *inter = load_one("int.pem", 0);
    char err[256] = "";
    struct {
        const char *kind;
        int nid;
        const char *value;
        bool ca;
        const char *refused; /* NULL: accepted */
    } cases[] = {
        { "P-256", 0, NULL, false, NULL },
        { "P-256", NID_ext_key_usage, "serverAuth", false, NULL },
        { "P-256", NID_ext_key_usage, "1.3.6.1.5.5.7.3.17", false, NULL }, /* id-kp-ipsecIKE */
        { "P-256", NID_key_usage, "digitalSignature", false, NULL },
        { "P-256", NID_ext_key_usage, "clientAuth,emailProtection", false, "extendedKeyUsage" },
        { "P-256", NID_key_usage, "keyEncipherment", false, "keyUsage" },
        { "P-256", 0, NULL, true, "may not authenticate a gateway" }, /* a CA as end entity */
        { "rsa1024", 0, NULL, false, "too weak" },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        pki_cert *gw = gw_leaf_with(cases[i].kind, cases[i].nid, cases[i].value, cases[i].ca);
        int r = pki_verify_chain(t, gw, &inter, 1, 0, err, sizeof err);
        if (!cases[i].refused) {
            ck_assert_msg(r == 0, "case %zu: %s", i, err);
        } else {
            ck_assert_msg(r == M2MVPN_E_AUTH_PEER, "case %zu accepted", i);
            ck_assert_msg(strstr(err, cases[i].refused) != NULL, "case %zu: %s", i, err);
        }
        pki_cert_free(gw);
    }
    pki_cert_free(inter);
    pki_trust_free(t);
}
END_TEST

START_TEST(chain_verification)
{
    build_pki();
    pki_trust *t = trust_root();
    pki_cert *inter = load_one("int.pem", 0);
    pki_cert *gw = load_one("rsa.pem", 0);
    char err[256] = "";
    ck_assert_msg(pki_verify_chain(t, gw, &inter, 1, 0, err, sizeof err) == 0, "%s", err);

    /* Missing intermediate */
    ck_assert_int_eq(pki_verify_chain(t, gw, NULL, 0, 0, err, sizeof err), M2MVPN_E_AUTH_PEER);
    ck_assert_str_eq(err, "unable to get local issuer certificate for C=CH, O=m2m, CN=gw.m2m.test");

    /* Expired end-entity */
    pki_cert *old = load_one("expired.pem", 0);
    ck_assert_int_eq(pki_verify_chain(t, old, &inter, 1, 0, err, sizeof err), M2MVPN_E_AUTH_PEER);
    ck_assert_str_eq(err, "certificate has expired: C=CH, O=m2m, CN=old.m2m.test");

    /* The valid one, checked two years ahead, is expired as well; and
     * before its notBefore it is not yet valid. */
    ck_assert_int_eq(pki_verify_chain(t, gw, &inter, 1, (int64_t)time(NULL) + 730 * DAY, err,
                                      sizeof err), M2MVPN_E_AUTH_PEER);
    ck_assert_ptr_nonnull(strstr(err, "certificate has expired"));
    ck_assert_int_eq(pki_verify_chain(t, gw, &inter, 1, (int64_t)time(NULL) - 2 * DAY, err,
                                      sizeof err), M2MVPN_E_AUTH_PEER);
    ck_assert_ptr_nonnull(strstr(err, "not yet valid"));

    /* Certificate of another CA (its own CA sent along as "intermediate"). */
    pki_cert *evil = load_one("evil.pem", 0), *evil_ca = load_one("evil.pem", 1);
    ck_assert_int_eq(pki_verify_chain(t, evil, &evil_ca, 1, 0, err, sizeof err),
                     M2MVPN_E_AUTH_PEER);
    ck_assert_ptr_nonnull(strstr(err, "self-signed certificate in certificate chain"));
    ck_assert_int_eq(pki_verify_chain(t, evil, NULL, 0, 0, err, sizeof err), M2MVPN_E_AUTH_PEER);
    ck_assert_ptr_nonnull(strstr(err, "unable to get local issuer certificate for"));

    /* An intermediate CA configured as the only anchor ends the chain. */
    pki_trust *t_int = NULL;
    ck_assert_int_eq(pki_trust_new(&t_int), 0);
    ck_assert_int_eq(pki_trust_add_file(t_int, path_of("int.pem"), err, sizeof err), 0);
    ck_assert_msg(pki_verify_chain(t_int, gw, NULL, 0, 0, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(pki_verify_chain(t_int, old, NULL, 0, 0, err, sizeof err),
                     M2MVPN_E_AUTH_PEER);
    ck_assert_int_eq(pki_verify_chain(t_int, evil, NULL, 0, 0, err, sizeof err),
                     M2MVPN_E_AUTH_PEER);
    pki_trust_free(t_int);

    /* No anchors at all */
    pki_trust *empty = NULL;
    ck_assert_int_eq(pki_trust_new(&empty), 0);
    ck_assert_int_eq(pki_verify_chain(empty, gw, &inter, 1, 0, err, sizeof err), M2MVPN_E_INVAL);

    /* CERTREQ: SHA-1 of the root's SubjectPublicKeyInfo (RFC 7296 §3.7) */
    uint8_t req[64], want[20];
    size_t req_len = 0;
    unsigned int wl = 0;
    ck_assert_int_eq(pki_trust_certreq(t, req, sizeof req, &req_len), 0);
    ck_assert_uint_eq(req_len, 20);
    unsigned char *spki = NULL;
    int spki_len = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(T.root), &spki);
    ck_assert_int_gt(spki_len, 0);
    ck_assert_int_eq(EVP_Digest(spki, (size_t)spki_len, want, &wl, EVP_sha1(), NULL), 1);
    OPENSSL_free(spki);
    ck_assert_mem_eq(req, want, 20);
    ck_assert_int_eq(pki_trust_certreq(t, req, 10, &req_len), M2MVPN_E_INVAL);

    pki_trust_free(empty);
    pki_cert_free(evil);
    pki_cert_free(evil_ca);
    pki_cert_free(old);
    pki_cert_free(gw);
    pki_cert_free(inter);
    pki_trust_free(t);
}
END_TEST

START_TEST(cert_loading_and_fields)
{
    build_pki();
    pki_cert **certs = NULL;
    size_t n = 0;
    char err[256];
    ck_assert_int_eq(pki_cert_load_file(path_of("rsa.pem"), &certs, &n, err, sizeof err), 0);
    ck_assert_uint_eq(n, 2);
    char subj[256];
    pki_cert_subject_text(certs[0], subj, sizeof subj);
    ck_assert_str_eq(subj, "C=CH, O=m2m, CN=gw.m2m.test");
    pki_cert_subject_text(certs[1], subj, sizeof subj);
    ck_assert_str_eq(subj, "C=CH, O=m2m, CN=m2m Intermediate CA");
    unsigned bits = 0;
    ck_assert_int_eq(pki_cert_key_type(certs[0], &bits), PKI_KEY_RSA);
    ck_assert_uint_eq(bits, 3072);
    int64_t na = pki_cert_not_after(certs[0]);
    ck_assert(na > T.rsa_not_after - 300 && na <= T.rsa_not_after);

    /* DER of the cert round-trips; DER file loads; the subject DER is a Name. */
    const uint8_t *der;
    size_t der_len;
    pki_cert_der(certs[0], &der, &der_len);
    pki_cert *again = NULL;
    ck_assert_int_eq(pki_cert_from_der(der, der_len, &again, err, sizeof err), 0);
    ck_assert_int_eq(pki_cert_from_der(der, der_len - 1, &again, err, sizeof err), M2MVPN_E_CERT);
    pki_cert_free(again);
    pki_cert_array_free(certs, n);

    ck_assert_int_eq(pki_cert_load_file(path_of("p256.der"), &certs, &n, err, sizeof err), 0);
    ck_assert_uint_eq(n, 1);
    ck_assert_int_eq(pki_cert_key_type(certs[0], NULL), PKI_KEY_EC_P256);
    pki_id subj_id;
    ck_assert_int_eq(pki_id_from_cert_subject(certs[0], &subj_id), 0);
    ck_assert_int_eq(subj_id.type, PKI_ID_DER_ASN1_DN);
    pki_id text_id;
    ck_assert_int_eq(pki_id_from_string("C=CH, O=m2m, CN=dev1.m2m.test", &text_id, err,
                                        sizeof err), 0);
    ck_assert(pki_id_equal(&subj_id, &text_id));
    pki_cert_array_free(certs, n);

    ck_assert_int_eq(pki_cert_load_file(path_of("nonexistent.pem"), &certs, &n, err, sizeof err),
                     M2MVPN_E_IO);
    ck_assert_int_eq(pki_cert_load_file(path_of("p256.key"), &certs, &n, err, sizeof err),
                     M2MVPN_E_CERT);
    ck_assert_ptr_nonnull(strstr(err, "no certificate"));
}
END_TEST

/* ------------------------------------------------------------ identities */

static const struct {
    const char *text;
    pki_id_type type;
    size_t len;
} id_cases[] = {
    { "gw.m2m.test", PKI_ID_FQDN, 11 },
    { "@gw.m2m.test", PKI_ID_FQDN, 11 },
    { "gw@m2m.test", PKI_ID_RFC822_ADDR, 11 },
    { "198.51.100.1", PKI_ID_IPV4_ADDR, 4 },
    { "2001:db8::1", PKI_ID_IPV6_ADDR, 16 },
    { "C=CH, O=m2m, CN=gw.m2m.test", PKI_ID_DER_ASN1_DN, 0 },
    { "CN=a\\, b", PKI_ID_DER_ASN1_DN, 0 },
};

START_TEST(id_type_derivation)
{
    char err[128];
    for (size_t i = 0; i < sizeof id_cases / sizeof id_cases[0]; i++) {
        pki_id id;
        ck_assert_msg(pki_id_from_string(id_cases[i].text, &id, err, sizeof err) == 0, "%s: %s",
                      id_cases[i].text, err);
        ck_assert_msg(id.type == id_cases[i].type, "%s -> %s", id_cases[i].text,
                      pki_id_type_name(id.type));
        if (id_cases[i].len)
            ck_assert_uint_eq(id.len, id_cases[i].len);
    }
    pki_id id;
    ck_assert_int_eq(pki_id_from_string("198.51.100.1", &id, err, sizeof err), 0);
    ck_assert_mem_eq(id.data, "\xc6\x33\x64\x01", 4);
    char text[128];
    pki_id_to_string(&id, text, sizeof text);
    ck_assert_str_eq(text, "198.51.100.1");
    ck_assert_int_eq(pki_id_from_string("C=CH,O=m2m,  CN=gw.m2m.test", &id, err, sizeof err), 0);
    pki_id_to_string(&id, text, sizeof text);
    ck_assert_str_eq(text, "C=CH, O=m2m, CN=gw.m2m.test");
    /* Malformed */
    ck_assert_int_eq(pki_id_from_string("", &id, err, sizeof err), M2MVPN_E_INVAL);
    ck_assert_int_eq(pki_id_from_string("C=CH, nonsense", &id, err, sizeof err), M2MVPN_E_INVAL);
    ck_assert_int_eq(pki_id_from_string("XYZ=1", &id, err, sizeof err), M2MVPN_E_INVAL);
    ck_assert_ptr_nonnull(strstr(err, "unknown DN attribute 'XYZ'"));
    ck_assert_int_eq(pki_id_from_string("CN=", &id, err, sizeof err), M2MVPN_E_INVAL);
    /* Received payloads */
    ck_assert_int_eq(pki_id_from_payload(1, (const uint8_t *)"\xc6\x33\x64", 3, &id, err,
                                         sizeof err), M2MVPN_E_PROTOCOL);
    ck_assert_int_eq(pki_id_from_payload(2, (const uint8_t *)"a\0b", 3, &id, err, sizeof err),
                     M2MVPN_E_PROTOCOL);
    ck_assert_int_eq(pki_id_from_payload(9, (const uint8_t *)"\x30\x05\x31", 3, &id, err,
                                         sizeof err), M2MVPN_E_PROTOCOL);
    ck_assert_int_eq(pki_id_from_payload(4, (const uint8_t *)"x", 1, &id, err, sizeof err),
                     M2MVPN_E_NOTSUPP);
    pki_id rx, cfg;
    ck_assert_int_eq(pki_id_from_payload(2, (const uint8_t *)"GW.m2m.TEST", 11, &rx, err,
                                         sizeof err), 0);
    ck_assert_int_eq(pki_id_from_string("gw.m2m.test", &cfg, err, sizeof err), 0);
    ck_assert(pki_id_equal(&rx, &cfg));
    ck_assert_int_eq(pki_id_from_string("gw2.m2m.test", &cfg, err, sizeof err), 0);
    ck_assert(!pki_id_equal(&rx, &cfg));
    ck_assert_int_eq(pki_id_from_string("gw@m2m.test", &cfg, err, sizeof err), 0);
    ck_assert(!pki_id_equal(&rx, &cfg));
}
END_TEST

static const struct {
    const char *cert;
    const char *id;
    bool match;
} match_cases[] = {
    { "rsa.pem", "gw.m2m.test", true },
    { "rsa.pem", "GW.M2M.Test", true },
    { "rsa.pem", "198.51.100.1", true },
    { "rsa.pem", "2001:db8::1", true },
    { "rsa.pem", "gw@m2m.test", true },
    { "rsa.pem", "C=CH, O=m2m, CN=gw.m2m.test", true },
    { "rsa.pem", "c=ch,o=M2M,cn=GW.m2m.test", true },       /* DN compare folds case */
    { "rsa.pem", "O=m2m, C=CH, CN=gw.m2m.test", false },    /* order matters in a DN */
    { "rsa.pem", "C=CH, O=m2m, CN=gw.m2m.test, OU=x", false },
    { "rsa.pem", "C=CH, O=m2m", false },
    { "rsa.pem", "gw2.m2m.test", false },
    { "rsa.pem", "m2m.test", false },
    { "rsa.pem", "*.m2m.test", false },
    { "rsa.pem", "198.51.100.2", false },
    { "rsa.pem", "admin@m2m.test", false },
    { "p256.pem", "gw.m2m.test", false },
    { "p256.pem", "dev1.m2m.test", true },
    { "p256.pem", "198.51.100.1", false },                  /* no SAN of that type */
};

START_TEST(identity_matching)
{
    build_pki();
    pki_cert *c = load_one(match_cases[_i].cert, 0);
    pki_id id;
    char err[128];
    ck_assert_int_eq(pki_id_from_string(match_cases[_i].id, &id, err, sizeof err), 0);
    ck_assert_msg(pki_cert_matches_id(c, &id) == match_cases[_i].match, "%s vs %s",
                  match_cases[_i].cert, match_cases[_i].id);
    pki_cert_free(c);
}
END_TEST

/* -------------------------------------------------------------- providers */

START_TEST(p12_passwords)
{
    build_pki();
    char err[256];
    /* No password (NULL) and the empty password both open without a PIN. */
    cred_provider *p = open_ok("nopass.p12", NULL, NULL);
    ck_assert(!cred_pin_needed(p));
    pki_cert *const *chain;
    size_t n;
    ck_assert_int_eq(cred_chain(p, &chain, &n, err, sizeof err), 0);
    ck_assert_uint_eq(n, 2);
    pki_key_type kt;
    ck_assert_int_eq(cred_key_info(p, &kt, NULL, err, sizeof err), 0);
    ck_assert_int_eq(kt, PKI_KEY_EC_P256);
    cred_free(p);
    p = open_ok("empty.p12", NULL, NULL);
    ck_assert_int_eq(cred_key_info(p, &kt, NULL, err, sizeof err), 0);
    ck_assert_int_eq(kt, PKI_KEY_EC_P384);
    cred_free(p);

    /* With the right password from the profile. */
    p = open_ok("pass.p12", NULL, "s3cret");
    uint8_t auth[PKI_AUTH_MAX];
    size_t len;
    ck_assert_int_eq(cred_sign_auth(p, PKI_AUTH_DIGITAL_SIGNATURE, PKI_SIG_RSA_PSS_SHA256, MSG,
                                    sizeof MSG, auth, sizeof auth, &len, err, sizeof err), 0);
    ck_assert_int_eq(cred_chain(p, &chain, &n, err, sizeof err), 0);
    ck_assert_int_eq(pki_auth_verify(chain[0], PKI_AUTH_DIGITAL_SIGNATURE, auth, len, MSG,
                                     sizeof MSG, NULL, err, sizeof err), 0);
    cred_free(p);

    /* Wrong password from the profile: refused, nothing returned. */
    p = NULL;
    ck_assert_int_eq(cred_file_open(path_of("pass.p12"), NULL, "wrong", 5, &p, err, sizeof err),
                     M2MVPN_E_PIN);
    ck_assert_ptr_null(p);
    ck_assert_ptr_nonnull(strstr(err, "wrong PIN for "));
    ck_assert_ptr_nonnull(strstr(err, "pass.p12"));

    /* Right password, but an algorithm OpenSSL 3 does not load by default:
     * a certificate problem with a clear reason, not a PIN problem. */
    ck_assert_int_eq(cred_file_open(path_of("legacy.p12"), NULL, "s3cret", 6, &p, err,
                                    sizeof err), M2MVPN_E_CERT);
    ck_assert_ptr_nonnull(strstr(err, "cannot decrypt PKCS#12"));
    ck_assert_int_eq(cred_file_open(path_of("legacy.p12"), NULL, "bad", 3, &p, err, sizeof err),
                     M2MVPN_E_PIN);
    ck_assert_ptr_null(p);

    /* No password: provider comes back locked; uses say "PIN required". */
    p = open_ok("pass.p12", NULL, NULL);
    ck_assert(cred_pin_needed(p));
    ck_assert_int_eq(cred_chain(p, &chain, &n, err, sizeof err), M2MVPN_E_PIN);
    ck_assert_ptr_nonnull(strstr(err, "PIN required for "));
    ck_assert_int_eq(cred_sign_auth(p, PKI_AUTH_RSA_SIG, PKI_SIG_RSA_PKCS1_SHA1, MSG, sizeof MSG,
                                    auth, sizeof auth, &len, err, sizeof err), M2MVPN_E_PIN);
    /* A wrong PIN: E_PIN, still locked; then the right one unlocks. */
    ck_assert_int_eq(cred_set_pin(p, "nope", 4, err, sizeof err), M2MVPN_E_PIN);
    ck_assert_ptr_nonnull(strstr(err, "wrong PIN for "));
    ck_assert(cred_pin_needed(p));
    ck_assert_int_eq(cred_set_pin(p, "s3cret", 6, err, sizeof err), 0);
    ck_assert(!cred_pin_needed(p));
    ck_assert_int_eq(cred_sign_auth(p, PKI_AUTH_RSA_SIG, PKI_SIG_RSA_PKCS1_SHA1, MSG, sizeof MSG,
                                    auth, sizeof auth, &len, err, sizeof err), 0);
    ck_assert_int_eq(cred_chain(p, &chain, &n, err, sizeof err), 0);
    ck_assert_int_eq(pki_auth_verify(chain[0], PKI_AUTH_RSA_SIG, auth, len, MSG, sizeof MSG,
                                     NULL, err, sizeof err), 0);
    cred_free(p);
}
END_TEST

START_TEST(encrypted_pem_key)
{
    build_pki();
    char err[256];
    cred_provider *p = open_ok("p256.pem", "p256-enc.key", NULL);
    ck_assert(cred_pin_needed(p));
    /* The certificate is readable before the PIN. */
    pki_cert *const *chain;
    size_t n;
    ck_assert_int_eq(cred_chain(p, &chain, &n, err, sizeof err), 0);
    uint8_t auth[PKI_AUTH_MAX];
    size_t len;
    ck_assert_int_eq(cred_sign_auth(p, PKI_AUTH_ECDSA_SHA256_P256, PKI_SIG_ECDSA_SHA256, MSG,
                                    sizeof MSG, auth, sizeof auth, &len, err, sizeof err),
                     M2MVPN_E_PIN);
    ck_assert_ptr_nonnull(strstr(err, "PIN required for "));
    ck_assert_int_eq(cred_set_pin(p, "4321", 4, err, sizeof err), M2MVPN_E_PIN);
    ck_assert_ptr_nonnull(strstr(err, "wrong PIN for "));
    ck_assert_int_eq(cred_set_pin(p, "1234", 4, err, sizeof err), 0);
    ck_assert_int_eq(cred_sign_auth(p, PKI_AUTH_ECDSA_SHA256_P256, PKI_SIG_ECDSA_SHA256, MSG,
                                    sizeof MSG, auth, sizeof auth, &len, err, sizeof err), 0);
    ck_assert_int_eq(pki_auth_verify(chain[0], PKI_AUTH_ECDSA_SHA256_P256, auth, len, MSG,
                                     sizeof MSG, NULL, err, sizeof err), 0);
    cred_free(p);
    /* PIN given at open */
    p = open_ok("p256.pem", "p256-enc.key", "1234");
    ck_assert(!cred_pin_needed(p));
    cred_free(p);
    /* Certificate and key in one PEM file */
    p = open_ok("p256-combined.pem", NULL, NULL);
    ck_assert(!cred_pin_needed(p));
    cred_free(p);
}
END_TEST

START_TEST(key_cert_mismatch)
{
    build_pki();
    cred_provider *p = NULL;
    char err[256];
    ck_assert_int_eq(cred_file_open(path_of("rsa.pem"), path_of("p256.key"), NULL, 0, &p, err,
                                    sizeof err), M2MVPN_E_CERT);
    ck_assert_ptr_null(p);
    ck_assert_str_eq(err, "private key does not match certificate C=CH, O=m2m, CN=gw.m2m.test");
    ck_assert_int_eq(cred_file_open(path_of("p256.pem"), path_of("expired.key"), NULL, 0, &p,
                                    err, sizeof err), M2MVPN_E_CERT);
    ck_assert_int_eq(cred_file_open(path_of("p256.pem"), path_of("missing.key"), NULL, 0, &p,
                                    err, sizeof err), M2MVPN_E_IO);
    ck_assert_int_eq(cred_file_open(path_of("p256.pem"), NULL, NULL, 0, &p, err, sizeof err),
                     M2MVPN_E_CERT);
    ck_assert_ptr_null(p);
}
END_TEST

/* -------------------------------------------------- AlgorithmIdentifier */

/* Hand-encoded per RFC 7427 Appendix A / RFC 4055 §3.1 (hash parameters NULL). */
static const uint8_t ALGID_SHA256_RSA[] = {
    0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b, 0x05, 0x00 };
static const uint8_t ALGID_ECDSA_SHA384[] = {
    0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03 };
static const uint8_t ALGID_PSS_SHA256[] = {
    0x30, 0x41, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a,
    0x30, 0x34,
    0xa0, 0x0f, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
    0x05, 0x00,
    0xa1, 0x1c, 0x30, 0x1a, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x08,
    0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00,
    0xa2, 0x03, 0x02, 0x01, 0x20 };
/* The same without the NULL hash parameters (RFC 4055 §2.1 allows both). */
static const uint8_t ALGID_PSS_SHA256_ABSENT[] = {
    0x30, 0x3d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a,
    0x30, 0x30,
    0xa0, 0x0d, 0x30, 0x0b, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
    0xa1, 0x1a, 0x30, 0x18, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x08,
    0x30, 0x0b, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
    0xa2, 0x03, 0x02, 0x01, 0x20 };

START_TEST(algid_parse_and_encode)
{
    char err[128];
    pki_sig_scheme s;
    ck_assert_int_eq(pki_algid_parse(ALGID_SHA256_RSA, sizeof ALGID_SHA256_RSA, &s, err,
                                     sizeof err), 0);
    ck_assert_int_eq(s, PKI_SIG_RSA_PKCS1_SHA256);
    ck_assert_int_eq(pki_algid_parse(ALGID_ECDSA_SHA384, sizeof ALGID_ECDSA_SHA384, &s, err,
                                     sizeof err), 0);
    ck_assert_int_eq(s, PKI_SIG_ECDSA_SHA384);
    ck_assert_int_eq(pki_algid_parse(ALGID_PSS_SHA256, sizeof ALGID_PSS_SHA256, &s, err,
                                     sizeof err), 0);
    ck_assert_int_eq(s, PKI_SIG_RSA_PSS_SHA256);
    ck_assert_int_eq(pki_algid_parse(ALGID_PSS_SHA256_ABSENT, sizeof ALGID_PSS_SHA256_ABSENT, &s,
                                     err, sizeof err), 0);
    ck_assert_int_eq(s, PKI_SIG_RSA_PSS_SHA256);
    /* Our encoder writes exactly these bytes. */
    uint8_t out[128];
    size_t len;
    ck_assert_int_eq(pki_algid_encode(PKI_SIG_RSA_PSS_SHA256, out, sizeof out, &len), 0);
    ck_assert_uint_eq(len, sizeof ALGID_PSS_SHA256);
    ck_assert_mem_eq(out, ALGID_PSS_SHA256, len);
    ck_assert_int_eq(pki_algid_encode(PKI_SIG_RSA_PKCS1_SHA256, out, sizeof out, &len), 0);
    ck_assert_mem_eq(out, ALGID_SHA256_RSA, sizeof ALGID_SHA256_RSA);
    ck_assert_int_eq(pki_algid_encode(PKI_SIG_ECDSA_SHA384, out, 5, &len), M2MVPN_E_INVAL);
    ck_assert_int_eq(pki_algid_encode(PKI_SIG_RSA_PKCS1_SHA1, out, sizeof out, &len),
                     M2MVPN_E_INVAL);
    /* id-Ed25519 (RFC 8410 §3: parameters absent) */
    static const uint8_t ed25519[] = { 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70 };
    ck_assert_int_eq(pki_algid_parse(ed25519, sizeof ed25519, &s, err, sizeof err), 0);
    ck_assert_int_eq(s, PKI_SIG_ED25519);
    /* Every scheme round-trips. */
    for (int i = PKI_SIG_RSA_PKCS1_SHA256; i < PKI_SIG_SCHEME_COUNT; i++) {
        ck_assert_int_eq(pki_algid_encode((pki_sig_scheme)i, out, sizeof out, &len), 0);
        ck_assert_int_eq(pki_algid_parse(out, len, &s, err, sizeof err), 0);
        ck_assert_int_eq(s, i);
    }
    /* Every truncation of a valid encoding is malformed, never accepted. */
    for (size_t n = 0; n < sizeof ALGID_PSS_SHA256; n++)
        ck_assert_int_eq(pki_algid_parse(ALGID_PSS_SHA256, n, &s, err, sizeof err),
                         M2MVPN_E_PROTOCOL);
    /* Trailing byte */
    uint8_t longer[sizeof ALGID_SHA256_RSA + 1];
    memcpy(longer, ALGID_SHA256_RSA, sizeof ALGID_SHA256_RSA);
    longer[sizeof ALGID_SHA256_RSA] = 0;
    ck_assert_int_eq(pki_algid_parse(longer, sizeof longer, &s, err, sizeof err),
                     M2MVPN_E_PROTOCOL);
    /* Garbage and a length beyond the data */
    ck_assert_int_eq(pki_algid_parse((const uint8_t *)"\xff\xff\xff", 3, &s, err, sizeof err),
                     M2MVPN_E_PROTOCOL);
    ck_assert_int_eq(pki_algid_parse((const uint8_t *)"\x30\x84\xff\xff\xff\xff", 6, &s, err,
                                     sizeof err), M2MVPN_E_PROTOCOL);
    /* Well-formed but unknown: sha1WithRSAEncryption (1.2.840.113549.1.1.5) */
    static const uint8_t sha1rsa[] = { 0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7,
                                       0x0d, 0x01, 0x01, 0x05, 0x05, 0x00 };
    ck_assert_int_eq(pki_algid_parse(sha1rsa, sizeof sha1rsa, &s, err, sizeof err),
                     M2MVPN_E_NOTSUPP);
    ck_assert_ptr_nonnull(strstr(err, "1.2.840.113549.1.1.5"));
    /* PSS with salt 20 instead of 32 */
    uint8_t salt20[sizeof ALGID_PSS_SHA256];
    memcpy(salt20, ALGID_PSS_SHA256, sizeof salt20);
    salt20[sizeof salt20 - 1] = 20;
    ck_assert_int_eq(pki_algid_parse(salt20, sizeof salt20, &s, err, sizeof err),
                     M2MVPN_E_NOTSUPP);
    /* ECDSA with (forbidden) NULL parameters */
    static const uint8_t ecnull[] = { 0x30, 0x0c, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d,
                                      0x04, 0x03, 0x02, 0x05, 0x00 };
    ck_assert_int_eq(pki_algid_parse(ecnull, sizeof ecnull, &s, err, sizeof err),
                     M2MVPN_E_PROTOCOL);
}
END_TEST

/* The signature AlgorithmIdentifier OpenSSL writes into a certificate it signs
 * with `scheme`: an independent encoder our parser must understand. */
static pki_sig_scheme parse_openssl_algid(EVP_PKEY *key, const EVP_MD *md, bool pss)
{
    X509 *x = X509_new();
    X509_set_version(x, 2);
    X509_set_pubkey(x, key);
    X509_gmtime_adj(X509_getm_notBefore(x), 0);
    X509_gmtime_adj(X509_getm_notAfter(x), DAY);
    EVP_MD_CTX *mctx = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    ck_assert_int_eq(EVP_DigestSignInit(mctx, &pctx, md, NULL, key), 1);
    if (pss) {
        ck_assert_int_eq(EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING), 1);
        ck_assert_int_eq(EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST), 1);
    }
    ck_assert_int_gt(X509_sign_ctx(x, mctx), 0);
    unsigned char *der = NULL;
    int n = i2d_X509_ALGOR(X509_get0_tbs_sigalg(x), &der);
    ck_assert_int_gt(n, 0);
    pki_sig_scheme s = PKI_SIG_NONE;
    char err[128] = "";
    ck_assert_msg(pki_algid_parse(der, (size_t)n, &s, err, sizeof err) == 0, "%s", err);
    OPENSSL_free(der);
    EVP_MD_CTX_free(mctx);
    X509_free(x);
    return s;
}

START_TEST(algid_from_openssl)
{
    build_pki();
    EVP_PKEY *rsa = T.leaf_key[LEAF_RSA];
    ck_assert_int_eq(parse_openssl_algid(rsa, EVP_sha256(), true), PKI_SIG_RSA_PSS_SHA256);
    ck_assert_int_eq(parse_openssl_algid(rsa, EVP_sha512(), true), PKI_SIG_RSA_PSS_SHA512);
    ck_assert_int_eq(parse_openssl_algid(rsa, EVP_sha384(), false), PKI_SIG_RSA_PKCS1_SHA384);
    ck_assert_int_eq(parse_openssl_algid(T.leaf_key[LEAF_P384], EVP_sha384(), false),
                     PKI_SIG_ECDSA_SHA384);
    ck_assert_int_eq(parse_openssl_algid(T.leaf_key[LEAF_P256], EVP_sha512(), false),
                     PKI_SIG_ECDSA_SHA512);
    ck_assert_int_eq(parse_openssl_algid(T.leaf_key[LEAF_ED25519], NULL, false), PKI_SIG_ED25519);
}
END_TEST

START_TEST(ecdsa_format_conversion)
{
    /* r has a high bit (needs a 0x00 pad in DER), s has leading zero bytes. */
    uint8_t raw[64], der[80], back[64];
    memset(raw, 0, sizeof raw);
    for (int i = 0; i < 32; i++)
        raw[i] = (uint8_t)(0x80 + i);
    raw[32 + 30] = 0x01;
    raw[32 + 31] = 0x02;
    size_t dlen, blen;
    ck_assert_int_eq(pki_ecdsa_raw_to_der(raw, 64, der, sizeof der, &dlen), 0);
    ck_assert_uint_eq(dlen, 2 + (2 + 33) + (2 + 2));
    ck_assert_uint_eq(der[2 + 2], 0x00);
    ck_assert_int_eq(pki_ecdsa_der_to_raw(der, dlen, 32, back, sizeof back, &blen), 0);
    ck_assert_uint_eq(blen, 64);
    ck_assert_mem_eq(back, raw, 64);
    /* Integer longer than the field, odd raw length, truncations */
    ck_assert_int_eq(pki_ecdsa_der_to_raw(der, dlen, 16, back, sizeof back, &blen),
                     M2MVPN_E_PROTOCOL);
    ck_assert_int_eq(pki_ecdsa_raw_to_der(raw, 63, der, sizeof der, &dlen), M2MVPN_E_PROTOCOL);
    ck_assert_int_eq(pki_ecdsa_raw_to_der(raw, 64, der, sizeof der, &dlen), 0);
    for (size_t n = 0; n < dlen; n++)
        ck_assert_int_eq(pki_ecdsa_der_to_raw(der, n, 32, back, sizeof back, &blen),
                         M2MVPN_E_PROTOCOL);
}
END_TEST

START_TEST(choose_auth_method)
{
    pki_auth_method m;
    pki_sig_scheme s;
    const uint16_t all[] = { 1, 2, 3, 4 }, only384[] = { 3 }, sha1[] = { 1 };
    /* RSA without a common SHA-2 hash would mean SHA-1 (method 1): refused
     * unless allowed (ike.allow_sha1_signatures), with or without a notify. */
    ck_assert_int_eq(pki_choose_auth(PKI_KEY_RSA, NULL, 0, false, false, &m, &s), M2MVPN_E_NOTSUPP);
    ck_assert_int_eq(pki_choose_auth(PKI_KEY_RSA, sha1, 1, true, false, &m, &s), M2MVPN_E_NOTSUPP);
    ck_assert_int_eq(pki_choose_auth(PKI_KEY_RSA, NULL, 0, false, true, &m, &s), 0);
    ck_assert(m == PKI_AUTH_RSA_SIG && s == PKI_SIG_RSA_PKCS1_SHA1);
    ck_assert_int_eq(pki_choose_auth(PKI_KEY_RSA, sha1, 1, false, true, &m, &s), 0);
    ck_assert(m == PKI_AUTH_RSA_SIG && s == PKI_SIG_RSA_PKCS1_SHA1);
    /* Allowing SHA-1 never takes it when the peer offers SHA-2. */
    ck_assert_int_eq(pki_choose_auth(PKI_KEY_RSA, all, 4, false, true, &m, &s), 0);
    ck_assert(m == PKI_AUTH_DIGITAL_SIGNATURE && s == PKI_SIG_RSA_PKCS1_SHA256);
    ck_assert_int_eq(pki_choose_auth(PKI_KEY_EC_P384, NULL, 0, false, false, &m, &s), 0);
    ck_assert(m == PKI_AUTH_ECDSA_SHA384_P384 && s == PKI_SIG_ECDSA_SHA384);
    ck_assert_int_eq(pki_choose_auth(PKI_KEY_EC_P521, sha1, 1, false, false, &m, &s), 0);
    ck_assert(m == PKI_AUTH_ECDSA_SHA512_P521 && s == PKI_SIG_ECDSA_SHA512);
    ck_assert_int_eq(pki_choose_auth(PKI_KEY_RSA, all, 4, false, false, &m, &s), 0);
    ck_assert(m == PKI_AUTH_DIGITAL_SIGNATURE && s == PKI_SIG_RSA_PKCS1_SHA256);
    ck_assert_int_eq(pki_choose_auth(PKI_KEY_RSA, all, 4, true, false, &m, &s), 0);
    ck_assert(m == PKI_AUTH_DIGITAL_SIGNATURE && s == PKI_SIG_RSA_PSS_SHA256);
    ck_assert_int_eq(pki_choose_auth(PKI_KEY_RSA, only384, 1, true, false, &m, &s), 0);
    ck_assert(m == PKI_AUTH_DIGITAL_SIGNATURE && s == PKI_SIG_RSA_PSS_SHA384);
    ck_assert_int_eq(pki_choose_auth(PKI_KEY_EC_P384, all, 4, false, false, &m, &s), 0);
    ck_assert(m == PKI_AUTH_DIGITAL_SIGNATURE && s == PKI_SIG_ECDSA_SHA384);
    ck_assert_int_eq(pki_choose_auth(PKI_KEY_EC_P256, only384, 1, false, false, &m, &s), 0);
    ck_assert(m == PKI_AUTH_DIGITAL_SIGNATURE && s == PKI_SIG_ECDSA_SHA384);
    ck_assert_int_eq(pki_choose_auth(PKI_KEY_UNKNOWN, all, 4, false, false, &m, &s), M2MVPN_E_NOTSUPP);
    /* Ed25519 (RFC 8420): only when the peer announced Identity (5). */
    const uint16_t with_identity[] = { 2, 5 };
    ck_assert_int_eq(pki_choose_auth(PKI_KEY_ED25519, all, 4, false, false, &m, &s), M2MVPN_E_NOTSUPP);
    ck_assert_int_eq(pki_choose_auth(PKI_KEY_ED25519, with_identity, 2, false, false, &m, &s), 0);
    ck_assert(m == PKI_AUTH_DIGITAL_SIGNATURE && s == PKI_SIG_ED25519);
    const uint16_t *ours;
    ck_assert_uint_eq(pki_hash_algs_supported(&ours), 4);
    ck_assert(ours[0] == 2 && ours[1] == 3 && ours[2] == 4 && ours[3] == 5);
}
END_TEST

START_TEST(name_tables)
{
    for (int i = 0; i < PKI_SIG_SCHEME_COUNT; i++)
        ck_assert_str_ne(pki_sig_scheme_name((pki_sig_scheme)i), "unknown");
    ck_assert_str_eq(pki_auth_method_name(PKI_AUTH_DIGITAL_SIGNATURE), "digital-signature");
    ck_assert_str_eq(pki_id_type_name(PKI_ID_DER_ASN1_DN), "ID_DER_ASN1_DN");
    ck_assert_str_eq(pki_hash_alg_name(PKI_HASH_SHA2_384), "sha2-384");
    ck_assert_str_eq(pki_key_type_name(PKI_KEY_EC_P521), "ecdsa-p521");
    ck_assert_str_eq(pki_auth_method_name((pki_auth_method)99), "unknown");
}
END_TEST

static Suite *cred_suite(void)
{
    Suite *s = suite_create("cred");
    TCase *tc = tcase_create("pki");
    tcase_set_timeout(tc, 120);
    /* Build the PKI once in the parent: forked tests inherit it. */
    tcase_add_unchecked_fixture(tc, build_pki, NULL);
    tcase_add_loop_test(tc, sign_then_verify, 0, N_SIGN_CASES);
    tcase_add_test(tc, verify_rejects_wrong_key_type);
    tcase_add_test(tc, chain_verification);
    tcase_add_test(tc, chain_usage_and_strength);
    tcase_add_test(tc, cert_loading_and_fields);
    tcase_add_test(tc, id_type_derivation);
    tcase_add_loop_test(tc, identity_matching, 0,
                        (int)(sizeof match_cases / sizeof match_cases[0]));
    tcase_add_test(tc, p12_passwords);
    tcase_add_test(tc, encrypted_pem_key);
    tcase_add_test(tc, key_cert_mismatch);
    tcase_add_test(tc, algid_parse_and_encode);
    tcase_add_test(tc, algid_from_openssl);
    tcase_add_test(tc, ecdsa_format_conversion);
    tcase_add_test(tc, choose_auth_method);
    tcase_add_test(tc, name_tables);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(cred_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    destroy_pki();
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
