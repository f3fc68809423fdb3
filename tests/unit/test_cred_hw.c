/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Tests of the parts of the hardware credential providers that need no
 * hardware: the TSS2 PEM key file codec (lib/cred/tss2_pem.h), PKCS#11 URIs
 * (lib/cred/p11_uri.h) and key generation with a CSR for the file provider
 * (lib/cred/keygen.h), how token and TPM error codes are treated
 * (lib/cred/hw_class.h); which certificates a SoftHSM2 token keeps next to
 * its key (tcase pkcs11). Tokens and TPMs: tests/interop/test_hwcred.py.
 */
#include <check.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <m2mvpn/m2mvpn.h>

#include "cred/cred_hw.h"
#include "cred/hw_class.h"
#include "cred/keygen.h"
#include "cred/p11_uri.h"
#include "cred/tss2_pem.h"

/* ------------------------------------------------------------- TSS2 keys */

static tss2_key_blob sample(bool empty_auth, uint32_t parent)
{
    tss2_key_blob k;
    memset(&k, 0, sizeof k);
    k.empty_auth = empty_auth;
    k.parent = parent;
    k.pub_len = 90;
    for (size_t i = 0; i < k.pub_len; i++)
        k.pub[i] = (uint8_t)(i * 7 + 1);
    k.priv_len = 300; /* two length bytes in DER */
    for (size_t i = 0; i < k.priv_len; i++)
        k.priv[i] = (uint8_t)(i * 13 + 5);
    return k;
}

static void assert_same(const tss2_key_blob *a, const tss2_key_blob *b)
{
    ck_assert(a->empty_auth == b->empty_auth);
    ck_assert_uint_eq(a->parent, b->parent);
    ck_assert_uint_eq(a->pub_len, b->pub_len);
    ck_assert_uint_eq(a->priv_len, b->priv_len);
    ck_assert(memcmp(a->pub, b->pub, a->pub_len) == 0);
    ck_assert(memcmp(a->priv, b->priv, a->priv_len) == 0);
}

static const struct {
    bool empty_auth;
    uint32_t parent;
} roundtrips[] = {
    { true, 0x40000001 },   /* owner hierarchy: 4 bytes */
    { false, 0x40000001 },
    { false, 0x81000001 },  /* top bit set: 5 bytes with a 0x00 sign byte */
    { true, 0x00000001 },   /* minimal: 1 byte */
};

START_TEST(tss2_roundtrip)
{
    tss2_key_blob k = sample(roundtrips[_i].empty_auth, roundtrips[_i].parent), got;
    char *pem = NULL;
    char err[256] = "";
    ck_assert_int_eq(tss2_key_encode_pem(&k, &pem), 0);
    ck_assert(strncmp(pem, "-----BEGIN TSS2 PRIVATE KEY-----\n", 33) == 0);
    /* Text around the block (as in a file with comments) does not matter. */
    size_t n = strlen(pem) + 64;
    char *file = malloc(n);
    snprintf(file, n, "key of dev1\n%sfoo\n", pem);
    ck_assert_msg(tss2_key_parse_pem((const uint8_t *)file, strlen(file), &got, err, sizeof err) == 0, "%s", err);
    assert_same(&k, &got);
    free(file);
    free(pem);
}
END_TEST

/* DER of sample(empty_auth, 0x40000001) with small blobs, built by hand
 * from the ASN.1 (independent of our encoder). */
static const uint8_t HAND_DER[] = {
    0x30, 0x1c,
    0x06, 0x06, 0x67, 0x81, 0x05, 0x0a, 0x01, 0x03,     /* 2.23.133.10.1.3 */
    0xa0, 0x03, 0x01, 0x01, 0xff,                       /* emptyAuth TRUE */
    0x02, 0x04, 0x40, 0x00, 0x00, 0x01,                 /* parent */
    0x04, 0x02, 0x00, 0x00,                             /* pubkey */
    0x04, 0x03, 0x00, 0x01, 0xaa,                       /* privkey */
};

START_TEST(tss2_hand_made_der)
{
    tss2_key_blob k;
    char err[256] = "";
    ck_assert_msg(tss2_key_parse_der(HAND_DER, sizeof HAND_DER, &k, err, sizeof err) == 0, "%s", err);
    ck_assert(k.empty_auth);
    ck_assert_uint_eq(k.parent, 0x40000001);
    ck_assert_uint_eq(k.pub_len, 2);
    ck_assert_uint_eq(k.priv_len, 3);
    ck_assert_uint_eq(k.priv[2], 0xaa);
    /* Our encoder gives the same bytes. */
    uint8_t out[64];
    size_t len = 0;
    ck_assert_int_eq(tss2_key_encode_der(&k, out, sizeof out, &len), 0);
    ck_assert_uint_eq(len, sizeof HAND_DER);
    ck_assert(memcmp(out, HAND_DER, len) == 0);
}
END_TEST

START_TEST(tss2_ber_true_and_false)
{
    /* tpm2-openssl writes emptyAuth TRUE as 0x01 (BER): accepted as TRUE;
     * an explicit FALSE (0x00) is FALSE. */
    uint8_t d[sizeof HAND_DER];
    memcpy(d, HAND_DER, sizeof d);
    tss2_key_blob k;
    char err[256] = "";
    d[14] = 0x01;
    ck_assert_msg(tss2_key_parse_der(d, sizeof d, &k, err, sizeof err) == 0, "%s", err);
    ck_assert(k.empty_auth);
    d[14] = 0x00;
    ck_assert_msg(tss2_key_parse_der(d, sizeof d, &k, err, sizeof err) == 0, "%s", err);
    ck_assert(!k.empty_auth);
}
END_TEST

START_TEST(tss2_every_truncation_fails)
{
    tss2_key_blob k;
    char err[256];
    for (size_t n = 0; n < sizeof HAND_DER; n++) {
        memset(&k, 0x5a, sizeof k);
        ck_assert_int_eq(tss2_key_parse_der(HAND_DER, n, &k, err, sizeof err), M2MVPN_E_CERT);
        ck_assert_msg(strncmp(err, "TSS2 key: ", 10) == 0, "%s", err);
        ck_assert_uint_eq(k.parent, 0x5a5a5a5a); /* untouched */
    }
}
END_TEST

/* One mutation of HAND_DER at `at` (or appended when at == -1), and the reason. */
static const struct {
    int at;
    uint8_t value;
    const char *why;
} bad_der[] = {
    { 9, 0x04, "not a loadable key" },              /* importable key OID */
    { 9, 0x05, "not a loadable key" },              /* sealed data OID */
    { 4, 0x2b, "not a TPM key OID" },
    { 10, 0xa1, "policy" },                         /* [1] policy */
    { 10, 0xa3, "policy" },                         /* [3] authPolicy */
    { 10, 0xa2, "import secret" },                  /* [2] secret */
    { 12, 0x02, "malformed emptyAuth" },            /* [0] holds an INTEGER */
    { 17, 0xc0, "parent is not a 32-bit handle" },  /* negative INTEGER */
    { 15, 0x03, "" },                               /* tag: not an INTEGER */
    { 1, 0x1d, "" },                                /* length beyond the end */
    { -1, 0x00, "trailing bytes" },
};

START_TEST(tss2_bad_der)
{
    uint8_t d[sizeof HAND_DER + 1];
    size_t n = sizeof HAND_DER;
    memcpy(d, HAND_DER, n);
    if (bad_der[_i].at < 0)
        d[n++] = bad_der[_i].value;
    else
        d[bad_der[_i].at] = bad_der[_i].value;
    tss2_key_blob k;
    char err[256] = "";
    ck_assert_int_eq(tss2_key_parse_der(d, n, &k, err, sizeof err), M2MVPN_E_CERT);
    ck_assert_msg(strstr(err, bad_der[_i].why) != NULL, "case %d: %s", _i, err);
}
END_TEST

START_TEST(tss2_parent_forms)
{
    /* Non-minimal INTEGER (leading 0x00 without need) and a 6-byte one. */
    static const uint8_t padded[] = { 0x30, 0x12, 0x06, 0x06, 0x67, 0x81, 0x05, 0x0a, 0x01, 0x03,
                                      0x02, 0x02, 0x00, 0x01, 0x04, 0x01, 0x00, 0x04, 0x01, 0x00 };
    tss2_key_blob k;
    char err[256] = "";
    ck_assert_int_eq(tss2_key_parse_der(padded, sizeof padded, &k, err, sizeof err), M2MVPN_E_CERT);
    ck_assert_msg(strstr(err, "32-bit handle"), "%s", err);
    /* Blobs shorter than a TPM2B size field are refused too (here 1 byte). */
    static const uint8_t tiny[] = { 0x30, 0x11, 0x06, 0x06, 0x67, 0x81, 0x05, 0x0a, 0x01, 0x03,
                                    0x02, 0x01, 0x01, 0x04, 0x01, 0x00, 0x04, 0x01, 0x00 };
    ck_assert_int_eq(tss2_key_parse_der(tiny, sizeof tiny, &k, err, sizeof err), M2MVPN_E_CERT);
    ck_assert_msg(strstr(err, "impossible size"), "%s", err);
}
END_TEST

START_TEST(tss2_pem_without_block)
{
    static const char other[] = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
    tss2_key_blob k;
    char err[256] = "";
    ck_assert_int_eq(tss2_key_parse_pem((const uint8_t *)other, strlen(other), &k, err, sizeof err),
                     M2MVPN_E_CERT);
    ck_assert_msg(strstr(err, "no \"-----BEGIN TSS2 PRIVATE KEY-----\" block"), "%s", err);
    ck_assert_int_eq(tss2_key_parse_pem((const uint8_t *)"", 0, &k, err, sizeof err), M2MVPN_E_CERT);
}
END_TEST

/* The public key of a TSS2 key file, read with no TPM and before any TPM
 * was used in the process (a restart finishing a TPM key renewal checks
 * the new key file against its certificate first: lib/mgmt renew_swap).
 * TPM2B_PUBLIC of an ECC P-256 key (TPM 2.0 Part 2 12.2.4): type, nameAlg,
 * objectAttributes, authPolicy, TPMS_ECC_PARMS (symmetric, scheme, curve,
 * kdf), unique (x, y). */
static size_t put16(uint8_t *p, size_t o, unsigned v)
{
    p[o] = (uint8_t)(v >> 8);
    p[o + 1] = (uint8_t)v;
    return o + 2;
}

START_TEST(tss2_key_public_without_tpm_use)
{
    EVP_PKEY *ec = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    ck_assert_ptr_nonnull(ec);
    uint8_t pt[65];
    size_t ptlen = 0;
    ck_assert_int_eq(EVP_PKEY_get_octet_string_param(ec, "encoded-pub-key", pt, sizeof pt, &ptlen), 1);
    ck_assert_uint_eq(ptlen, 65);
    tss2_key_blob k = sample(true, 0x40000001);
    size_t o = 2;
    o = put16(k.pub, o, 0x0023); /* TPM2_ALG_ECC */
    o = put16(k.pub, o, 0x000b); /* SHA-256 */
    o = put16(k.pub, o, 0x0004);
    o = put16(k.pub, o, 0x0072); /* sign, userWithAuth, sensitiveDataOrigin, fixed* */
    o = put16(k.pub, o, 0);      /* authPolicy: empty */
    o = put16(k.pub, o, 0x0010); /* symmetric: TPM2_ALG_NULL */
    o = put16(k.pub, o, 0x0010); /* scheme: NULL */
    o = put16(k.pub, o, 0x0003); /* TPM2_ECC_NIST_P256 */
    o = put16(k.pub, o, 0x0010); /* kdf: NULL */
    o = put16(k.pub, o, 32);
    memcpy(k.pub + o, pt + 1, 32);
    o = put16(k.pub, o + 32, 32);
    memcpy(k.pub + o, pt + 33, 32);
    o += 32;
    put16(k.pub, 0, (unsigned)(o - 2));
    k.pub_len = o;
    char dir[] = "/tmp/m2mvpn-test-tss2pub-XXXXXX", path[128], err[512] = "";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/key.tss2.pem", dir);
    char *pem = NULL;
    ck_assert_int_eq(tss2_key_encode_pem(&k, &pem), 0);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(pem, f);
    fclose(f);
    free(pem);
    EVP_PKEY *got = NULL;
    int r = cred_tpm_key_public(path, &got, err, sizeof err);
    const char *tpm = getenv("M2MVPN_TPM");
    if (tpm && !strcmp(tpm, "0")) {
        ck_assert_int_eq(r, M2MVPN_E_NOTSUPP);
    } else {
        ck_assert_msg(r == 0, "%s", err);
        ck_assert_int_eq(EVP_PKEY_eq(got, ec), 1);
        /* a damaged public part: refused, naming the file */
        k.pub[3] ^= 0xff;
        ck_assert_int_eq(tss2_key_encode_pem(&k, &pem), 0);
        f = fopen(path, "w");
        ck_assert_ptr_nonnull(f);
        fputs(pem, f);
        fclose(f);
        free(pem);
        EVP_PKEY_free(got);
        got = NULL;
        ck_assert_int_eq(cred_tpm_key_public(path, &got, err, sizeof err), M2MVPN_E_CERT);
        ck_assert_msg(strstr(err, path), "%s", err);
        ck_assert_ptr_null(got);
    }
    EVP_PKEY_free(got);
    EVP_PKEY_free(ec);
    unlink(path);
    rmdir(dir);
}
END_TEST

/* Opening a TPM key that fails before any TPM was reached (here: its
 * certificate file is missing) reports that, with nothing loaded yet: the
 * clean-up calls no tpm2-tss function it has not loaded. */
START_TEST(tpm_open_fails_before_any_tpm_use)
{
    char err[512] = "";
    cred_provider *p = NULL;
    int r = cred_tpm_open("/nonexistent/m2mvpn-test.tss2.pem", "/nonexistent/m2mvpn-test.crt.pem", NULL, NULL, 0,
                          &p, err, sizeof err);
    ck_assert_int_lt(r, 0);
    ck_assert_ptr_null(p);
    const char *tpm = getenv("M2MVPN_TPM");
    if (!tpm || strcmp(tpm, "0") != 0)
        ck_assert_msg(strstr(err, "/nonexistent/m2mvpn-test.crt.pem"), "%s", err);
}
END_TEST

/* ------------------------------------------------------------ PKCS#11 URIs */

START_TEST(p11_uri_good)
{
    p11_uri u;
    char err[256] = "";
    ck_assert_msg(p11_uri_parse("pkcs11:token=m2m%20card;object=dev1;id=%01%a0;type=private;slot-id=3;"
                                "serial=42;model=SoftHSM%20v2;manufacturer=SoftHSM%20project",
                                &u, err, sizeof err) == 0, "%s", err);
    ck_assert_str_eq(u.token, "m2m card");
    ck_assert_str_eq(u.object, "dev1");
    ck_assert(u.has_id);
    ck_assert_uint_eq(u.id_len, 2);
    ck_assert_uint_eq(u.id[0], 0x01);
    ck_assert_uint_eq(u.id[1], 0xa0);
    ck_assert_int_eq(u.type, P11_TYPE_PRIVATE);
    ck_assert(u.has_slot_id);
    ck_assert_uint_eq(u.slot_id, 3);
    ck_assert_str_eq(u.serial, "42");
    ck_assert_str_eq(u.model, "SoftHSM v2");
    ck_assert_str_eq(u.manufacturer, "SoftHSM project");
    ck_assert_int_eq(p11_uri_parse("pkcs11:", &u, err, sizeof err), 0);
    ck_assert_str_eq(u.token, "");
    ck_assert(!u.has_id);
}
END_TEST

/* The renewal's URI of the new key: the token part kept, object and id
 * replaced, everything parses back to the same values. */
START_TEST(p11_uri_compose_roundtrip)
{
    p11_uri u, v;
    char err[256] = "", out[512];
    ck_assert_int_eq(p11_uri_parse("pkcs11:token=m2m%20card;object=dev;id=%07;slot-id=3;serial=42;"
                                   "manufacturer=A%3bB", &u, err, sizeof err), 0);
    const uint8_t id[] = { 0x00, 0xff, 0x41 };
    ck_assert_int_eq(p11_uri_compose(&u, "dev.next", id, sizeof id, out, sizeof out), 0);
    ck_assert_str_eq(out, "pkcs11:token=m2m%20card;manufacturer=A%3bB;serial=42;object=dev.next;id=%00%ffA;"
                          "slot-id=3");
    ck_assert_msg(p11_uri_parse(out, &v, err, sizeof err) == 0, "%s", err);
    ck_assert_str_eq(v.token, "m2m card");
    ck_assert_str_eq(v.manufacturer, "A;B");
    ck_assert_str_eq(v.object, "dev.next");
    ck_assert(v.has_id && v.id_len == 3 && memcmp(v.id, id, 3) == 0);
    ck_assert(v.has_slot_id && v.slot_id == 3);
    /* no object, no id */
    ck_assert_int_eq(p11_uri_compose(&u, NULL, NULL, 0, out, sizeof out), 0);
    ck_assert_str_eq(out, "pkcs11:token=m2m%20card;manufacturer=A%3bB;serial=42;slot-id=3");
    /* too small: refused, never cut */
    ck_assert_int_eq(p11_uri_compose(&u, "dev.next", id, sizeof id, out, 40), M2MVPN_E_INVAL);
}
END_TEST

static const struct {
    const char *uri;
    const char *why;
} bad_uris[] = {
    { "pkcs12:token=a", "must start with \"pkcs11:\"" },
    { "pkcs11:tokn=a", "unknown attribute 'tokn'" },
    { "pkcs11:token=a?pin-value=1234", "query attributes" },
    { "pkcs11:token", "without '='" },
    { "pkcs11:token=a%2", "bad or too long value of 'token'" },
    { "pkcs11:token=a%zz", "bad or too long value of 'token'" },
    { "pkcs11:token=a%00b", "bad or too long value of 'token'" },
    { "pkcs11:token=123456789012345678901234567890123", "bad or too long value of 'token'" },
    { "pkcs11:id=", "bad id" },
    { "pkcs11:type=secret-key", "type must be" },
    { "pkcs11:slot-id=x", "slot-id must be a decimal" },
    { "pkcs11:slot-id=99999999999999999999999", "slot-id" },
};

START_TEST(p11_uri_bad)
{
    p11_uri u;
    memset(&u, 0x5a, sizeof u);
    char err[256] = "";
    ck_assert_int_eq(p11_uri_parse(bad_uris[_i].uri, &u, err, sizeof err), M2MVPN_E_INVAL);
    ck_assert_msg(strstr(err, bad_uris[_i].why) != NULL, "%s: %s", bad_uris[_i].uri, err);
    ck_assert_uint_eq((uint8_t)u.token[0], 0x5a); /* untouched */
}
END_TEST

/* ------------------------------------------------------ keygen: file keys */

static char tmpdir[64];

static void make_tmpdir(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/m2mvpn-keygen-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static X509_REQ *read_csr(const char *pem)
{
    BIO *b = BIO_new_mem_buf(pem, -1);
    X509_REQ *r = PEM_read_bio_X509_REQ(b, NULL, NULL, NULL);
    BIO_free(b);
    ck_assert_ptr_nonnull(r);
    return r;
}

START_TEST(keygen_file_key_and_csr)
{
    make_tmpdir();
    char key[128], text[256];
    snprintf(key, sizeof key, "%s/%s.pem", tmpdir, _i ? "rsa" : "ec");
    keygen_request rq = { .provider = KEYGEN_FILE, .rsa = _i == 1, .out = key,
                          .subject = "/O=m2m/CN=dev1.m2m.test" };
    char *csr = NULL, err[256] = "";
    ck_assert_msg(keygen_run(&rq, &csr, err, sizeof err) == 0, "%s", err);
    X509_REQ *r = read_csr(csr);
    EVP_PKEY *pub = X509_REQ_get0_pubkey(r);
    ck_assert_int_eq(X509_REQ_verify(r, pub), 1);
    ck_assert_int_eq(EVP_PKEY_get_base_id(pub), _i ? EVP_PKEY_RSA : EVP_PKEY_EC);
    ck_assert_int_eq(EVP_PKEY_get_bits(pub), _i ? 2048 : 256);
    X509_NAME_oneline(X509_REQ_get_subject_name(r), text, sizeof text);
    ck_assert_str_eq(text, "/O=m2m/CN=dev1.m2m.test");
    /* The key file: mode 0600, its key is the CSR's. */
    struct stat st;
    ck_assert_int_eq(stat(key, &st), 0);
    ck_assert_uint_eq(st.st_mode & 0777, 0600);
    FILE *f = fopen(key, "r");
    EVP_PKEY *priv = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    ck_assert_ptr_nonnull(priv);
    ck_assert_int_eq(EVP_PKEY_eq(priv, pub), 1);
    EVP_PKEY_free(priv);
    X509_REQ_free(r);
    free(csr);
    /* A second run never replaces the key. */
    csr = NULL;
    ck_assert_int_eq(keygen_run(&rq, &csr, err, sizeof err), M2MVPN_E_IO);
    ck_assert_msg(strstr(err, "exists: not replaced"), "%s", err);
    ck_assert_ptr_null(csr);
    unlink(key);
    rmdir(tmpdir);
}
END_TEST

START_TEST(keygen_file_key_with_passphrase)
{
    make_tmpdir();
    char key[128];
    snprintf(key, sizeof key, "%s/enc.pem", tmpdir);
    keygen_request rq = { .provider = KEYGEN_FILE, .out = key, .subject = "/CN=a\\/b",
                          .pin = "secret", .pin_len = 6 };
    char *csr = NULL, err[256] = "";
    ck_assert_msg(keygen_run(&rq, &csr, err, sizeof err) == 0, "%s", err);
    X509_REQ *r = read_csr(csr);
    char text[128];
    X509_NAME_oneline(X509_REQ_get_subject_name(r), text, sizeof text);
    ck_assert_str_eq(text, "/CN=a\\/b"); /* one CN "a/b", shown escaped */
    FILE *f = fopen(key, "r");
    char head[64] = "";
    ck_assert_ptr_nonnull(fgets(head, sizeof head, f));
    fclose(f);
    ck_assert_str_eq(head, "-----BEGIN ENCRYPTED PRIVATE KEY-----\n");
    X509_REQ_free(r);
    free(csr);
    unlink(key);
    rmdir(tmpdir);
}
END_TEST

static const char *const bad_subjects[] = { "CN=x", "/", "/CN", "/=x", "/CN=", "/NOSUCHTYPE=x" };

START_TEST(keygen_bad_subject_makes_nothing)
{
    make_tmpdir();
    char key[128];
    snprintf(key, sizeof key, "%s/k.pem", tmpdir);
    keygen_request rq = { .provider = KEYGEN_FILE, .out = key, .subject = bad_subjects[_i] };
    char *csr = NULL, err[256] = "";
    ck_assert_int_eq(keygen_run(&rq, &csr, err, sizeof err), M2MVPN_E_INVAL);
    ck_assert_msg(strstr(err, "subject"), "%s", err);
    ck_assert_int_ne(access(key, F_OK), 0);
    ck_assert_int_eq(rmdir(tmpdir), 0); /* nothing left behind */
}
END_TEST

/* ------------------------------------------------ error classification */

/* What a user sees: a wrong PIN or a login that may have been counted is
 * final (PIN); a transient device condition is retried (IO); values from
 * PKCS#11 v2.40 §5.1 (pkcs11t.h) and TPM 2.0 Part 2 §6.6 / TSS2 layers. */
static const struct {
    unsigned long ckr;
    bool login;
    cred_hw_class want;
} ckr_table[] = {
    { 0xa0, true, CRED_HW_PIN },       /* PIN_INCORRECT */
    { 0xa4, true, CRED_HW_PIN },       /* PIN_LOCKED */
    { 0xe0, true, CRED_HW_GONE },      /* TOKEN_NOT_PRESENT: nothing reached the token */
    { 0x32, true, CRED_HW_GONE },      /* DEVICE_REMOVED */
    { 0x05, true, CRED_HW_PIN },       /* GENERAL_ERROR during C_Login: may have counted */
    { 0x30, true, CRED_HW_PIN },       /* DEVICE_ERROR during C_Login */
    { 0x101, true, CRED_HW_PIN },      /* USER_NOT_LOGGED_IN during C_Login */
    { 0xb3, true, CRED_HW_PIN },       /* SESSION_HANDLE_INVALID during C_Login */
    { 0xb1, true, CRED_HW_PIN },       /* SESSION_COUNT during C_Login */
    { 0x06, true, CRED_HW_PIN },       /* FUNCTION_FAILED during C_Login */
    { 0x30, false, CRED_HW_GONE },     /* DEVICE_ERROR while signing */
    { 0xb3, false, CRED_HW_GONE },     /* SESSION_HANDLE_INVALID */
    { 0x101, false, CRED_HW_GONE },    /* USER_NOT_LOGGED_IN (token reset) */
    { 0xb1, false, CRED_HW_RETRY },    /* SESSION_COUNT */
    { 0x31, false, CRED_HW_RETRY },    /* DEVICE_MEMORY */
    { 0x02, false, CRED_HW_RETRY },    /* HOST_MEMORY */
    { 0x06, false, CRED_HW_RETRY },    /* FUNCTION_FAILED */
    { 0x70, false, CRED_HW_REFUSED },  /* MECHANISM_INVALID */
    { 0x68, false, CRED_HW_REFUSED },  /* KEY_FUNCTION_NOT_PERMITTED */
};

START_TEST(p11_ckr_classes)
{
    cred_hw_class got = cred_hw_ckr_class(ckr_table[_i].ckr, ckr_table[_i].login);
    ck_assert_msg(got == ckr_table[_i].want, "CKR 0x%lx (login %d): class %d, want %d",
                  ckr_table[_i].ckr, ckr_table[_i].login, got, ckr_table[_i].want);
}
END_TEST

static const struct {
    uint32_t rc;
    bool auth_sent;
    cred_hw_class want;
} tpm_table[] = {
    { 0x08e, true, CRED_HW_PIN },      /* TPM_RC_AUTH_FAIL */
    { 0x98e, true, CRED_HW_PIN },      /* AUTH_FAIL for session 1 (format 1 with a number) */
    { 0x0a2, true, CRED_HW_PIN },      /* TPM_RC_BAD_AUTH */
    { 0x9a2, true, CRED_HW_PIN },      /* BAD_AUTH for session 1 */
    { 0x921, true, CRED_HW_LOCKOUT },  /* TPM_RC_LOCKOUT: retried later, never E_PIN */
    { 0x921, false, CRED_HW_LOCKOUT },
    { 0x902, false, CRED_HW_RETRY },   /* OBJECT_MEMORY */
    { 0x903, false, CRED_HW_RETRY },   /* SESSION_MEMORY */
    { 0x904, false, CRED_HW_RETRY },   /* MEMORY */
    { 0x906, false, CRED_HW_RETRY },   /* OBJECT_HANDLES */
    { 0x908, true, CRED_HW_RETRY },    /* YIELDED */
    { 0x909, true, CRED_HW_RETRY },    /* CANCELED */
    { 0x90a, true, CRED_HW_RETRY },    /* TESTING */
    { 0x920, false, CRED_HW_RETRY },   /* NV_RATE */
    { 0x922, true, CRED_HW_RETRY },    /* RETRY */
    { 0x923, false, CRED_HW_RETRY },   /* NV_UNAVAILABLE */
    { 0x100, false, CRED_HW_GONE },    /* TPM_RC_INITIALIZE: not started up */
    { 0x101, false, CRED_HW_REFUSED }, /* TPM_RC_FAILURE */
    { 0x18b, false, CRED_HW_REFUSED }, /* HANDLE for handle 1 (format 1) */
    { 0x0a000a, false, CRED_HW_GONE }, /* TCTI layer, IO error */
    { 0x0a000a, true, CRED_HW_PIN },   /* ... with the authValue sent: the answer is lost */
    { 0x070001, true, CRED_HW_PIN },   /* ESYS layer with the authValue sent */
    { 0x0b0921, false, CRED_HW_GONE }, /* resource manager layer */
};

START_TEST(tpm_rc_classes)
{
    cred_hw_class got = cred_hw_tpm_class(tpm_table[_i].rc, tpm_table[_i].auth_sent);
    ck_assert_msg(got == tpm_table[_i].want, "TPM RC 0x%x (auth sent %d): class %d, want %d",
                  tpm_table[_i].rc, tpm_table[_i].auth_sent, got, tpm_table[_i].want);
}
END_TEST

START_TEST(class_errors)
{
    ck_assert_int_eq(cred_hw_class_error(CRED_HW_PIN), M2MVPN_E_PIN);
    ck_assert_int_eq(cred_hw_class_error(CRED_HW_REFUSED), M2MVPN_E_CERT);
    ck_assert_int_eq(cred_hw_class_error(CRED_HW_RETRY), M2MVPN_E_IO);
    ck_assert_int_eq(cred_hw_class_error(CRED_HW_GONE), M2MVPN_E_IO);
    ck_assert_int_eq(cred_hw_class_error(CRED_HW_LOCKOUT), M2MVPN_E_IO);
}
END_TEST

/* ------------------------------------------- PKCS#11 against SoftHSM2 */

#define SOFTHSM "/usr/lib/softhsm/libsofthsm2.so"
#define HSM_PIN "1234"
static char hsm_dir[64];

/* One SoftHSM2 token "m2m" for the test case (SOFTHSM2_CONF set before any
 * module is loaded); each test uses its own key label. */
static void hsm_setup(void)
{
    snprintf(hsm_dir, sizeof hsm_dir, "/tmp/m2mvpn-hsm-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(hsm_dir));
    ck_assert_msg(access(SOFTHSM, R_OK) == 0, "SoftHSM2 module %s missing: install softhsm2", SOFTHSM);
    char path[128], cmd[512];
    snprintf(path, sizeof path, "%s/softhsm2.conf", hsm_dir);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fprintf(f, "directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n", hsm_dir);
    fclose(f);
    setenv("SOFTHSM2_CONF", path, 1);
    snprintf(cmd, sizeof cmd, "softhsm2-util --init-token --free --label m2m --pin %s --so-pin 5678 >/dev/null",
             HSM_PIN);
    ck_assert_int_eq(system(cmd), 0);
}

static void hsm_teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", hsm_dir);
    if (system(cmd) != 0) {
        /* a temporary folder left */
    }
}

/* A certificate (DER, caller frees) for `key`, subject CN=cn, issued by
 * `ca`, valid from now + nb_s. */
static uint8_t *cert_der(EVP_PKEY *key, EVP_PKEY *ca, const char *cn, long serial, long nb_s, size_t *len)
{
    X509 *c = X509_new();
    X509_set_version(c, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(c), serial);
    X509_NAME_add_entry_by_txt(X509_get_subject_name(c), "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1,
                               0);
    X509_NAME_add_entry_by_txt(X509_get_issuer_name(c), "CN", MBSTRING_ASC, (const unsigned char *)"test CA", -1,
                               -1, 0);
    X509_gmtime_adj(X509_getm_notBefore(c), nb_s);
    X509_gmtime_adj(X509_getm_notAfter(c), 86400);
    X509_set_pubkey(c, key);
    ck_assert_int_gt(X509_sign(c, ca, EVP_sha256()), 0);
    unsigned char *der = NULL;
    int n = i2d_X509(c, &der);
    ck_assert_int_gt(n, 0);
    X509_free(c);
    *len = (size_t)n;
    return der;
}

/* The subjects of the token's certificates, as pkcs11-tool lists them. */
static void token_certs(char *out, size_t cap)
{
    char cmd[256];
    snprintf(cmd, sizeof cmd, "pkcs11-tool --module %s --token-label m2m --list-objects --type cert 2>/dev/null",
             SOFTHSM);
    FILE *p = popen(cmd, "r");
    ck_assert_ptr_nonnull(p);
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = '\0';
    pclose(p);
}

/* The public key of the token key `uri` (made here). */
static EVP_PKEY *hsm_key(const char *uri)
{
    char err[512] = "";
    ck_assert_msg(cred_pkcs11_generate(SOFTHSM, uri, HSM_PIN, strlen(HSM_PIN), false, err, sizeof err) == 0, "%s",
                  err);
    cred_provider *p = NULL;
    ck_assert_msg(cred_pkcs11_open_key(SOFTHSM, uri, HSM_PIN, strlen(HSM_PIN), &p, err, sizeof err) == 0, "%s",
                  err);
    EVP_PKEY *k = cred_evp_key(p, err, sizeof err);
    ck_assert_ptr_nonnull(k);
    EVP_PKEY *pub = cred_public_copy(k);
    ck_assert_ptr_nonnull(pub);
    EVP_PKEY_free(k);
    cred_free(p);
    return pub;
}

/* A renewed certificate of the same key replaces the old one on the token:
 * never one of another public key (it would destroy the key's own), and
 * only certificates of that key are deleted, not another key's that
 * shares the label. Opening the key takes its own certificate even when a
 * newer one of another key carries the same label and id. */
START_TEST(p11_replace_cert_is_the_keys)
{
    static const char uri[] = "pkcs11:token=m2m;object=dev1";
    char err[512] = "", list[8192];
    EVP_PKEY *pub = hsm_key(uri), *ca = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256"),
             *other = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    size_t la, lp, ln;
    uint8_t *a = cert_der(pub, ca, "cert-old", 1, -3600, &la);
    uint8_t *planted = cert_der(other, ca, "planted", 2, -600, &lp);
    uint8_t *a2 = cert_der(pub, ca, "cert-new", 3, -60, &ln);

    ck_assert_msg(cred_pkcs11_replace_cert(SOFTHSM, uri, HSM_PIN, strlen(HSM_PIN), a, la, pub, err, sizeof err) == 0,
                  "%s", err);
    /* a certificate of another key: refused, nothing changed */
    ck_assert_int_eq(cred_pkcs11_replace_cert(SOFTHSM, uri, HSM_PIN, strlen(HSM_PIN), planted, lp, pub, err,
                                              sizeof err), M2MVPN_E_CERT);
    ck_assert_msg(strstr(err, "not for key"), "%s", err);
    token_certs(list, sizeof list);
    ck_assert_msg(strstr(list, "cert-old") && !strstr(list, "planted"), "%s", list);

    /* planted by someone with the PIN: newer, same label and id, another key */
    cred_provider *p = NULL;
    ck_assert_msg(cred_pkcs11_open_key(SOFTHSM, uri, HSM_PIN, strlen(HSM_PIN), &p, err, sizeof err) == 0, "%s", err);
    ck_assert_msg(cred_pkcs11_store_cert(p, planted, lp, err, sizeof err) == 0, "%s", err);
    cred_free(p);
    p = NULL;
    ck_assert_msg(cred_pkcs11_open(SOFTHSM, uri, HSM_PIN, strlen(HSM_PIN), &p, err, sizeof err) == 0, "%s", err);
    cred_free(p);

    /* the same key renewed: its old certificate goes, the planted one of
     * another key is not this renewal's to delete */
    ck_assert_msg(cred_pkcs11_replace_cert(SOFTHSM, uri, HSM_PIN, strlen(HSM_PIN), a2, ln, pub, err, sizeof err) == 0,
                  "%s", err);
    token_certs(list, sizeof list);
    ck_assert_msg(strstr(list, "cert-new") && !strstr(list, "cert-old") && strstr(list, "planted"), "%s", list);
    p = NULL;
    ck_assert_msg(cred_pkcs11_open(SOFTHSM, uri, HSM_PIN, strlen(HSM_PIN), &p, err, sizeof err) == 0, "%s", err);
    cred_free(p);

    OPENSSL_free(a);
    OPENSSL_free(planted);
    OPENSSL_free(a2);
    EVP_PKEY_free(pub);
    EVP_PKEY_free(ca);
    EVP_PKEY_free(other);
}
END_TEST

Suite *cred_hw_suite(void)
{
    Suite *s = suite_create("cred_hw");
    TCase *tc = tcase_create("tss2");
    tcase_add_loop_test(tc, tss2_roundtrip, 0, sizeof roundtrips / sizeof roundtrips[0]);
    tcase_add_test(tc, tss2_hand_made_der);
    tcase_add_test(tc, tss2_key_public_without_tpm_use);
    tcase_add_test(tc, tpm_open_fails_before_any_tpm_use);
    tcase_add_test(tc, tss2_ber_true_and_false);
    tcase_add_test(tc, tss2_every_truncation_fails);
    tcase_add_loop_test(tc, tss2_bad_der, 0, sizeof bad_der / sizeof bad_der[0]);
    tcase_add_test(tc, tss2_parent_forms);
    tcase_add_test(tc, tss2_pem_without_block);
    suite_add_tcase(s, tc);
    tc = tcase_create("p11_uri");
    tcase_add_test(tc, p11_uri_good);
    tcase_add_test(tc, p11_uri_compose_roundtrip);
    tcase_add_loop_test(tc, p11_uri_bad, 0, sizeof bad_uris / sizeof bad_uris[0]);
    suite_add_tcase(s, tc);
    tc = tcase_create("classes");
    tcase_add_loop_test(tc, p11_ckr_classes, 0, sizeof ckr_table / sizeof ckr_table[0]);
    tcase_add_loop_test(tc, tpm_rc_classes, 0, sizeof tpm_table / sizeof tpm_table[0]);
    tcase_add_test(tc, class_errors);
    suite_add_tcase(s, tc);
    const char *p11 = getenv("M2MVPN_PKCS11");
    if (p11 && !strcmp(p11, "1")) { /* the build has the pkcs11 provider */
        tc = tcase_create("pkcs11");
        tcase_set_timeout(tc, 60);
        tcase_add_unchecked_fixture(tc, hsm_setup, hsm_teardown);
        tcase_add_test(tc, p11_replace_cert_is_the_keys);
        suite_add_tcase(s, tc);
    }
    tc = tcase_create("keygen");
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, keygen_file_key_and_csr, 0, 2);
    tcase_add_test(tc, keygen_file_key_with_passphrase);
    tcase_add_loop_test(tc, keygen_bad_subject_makes_nothing, 0, sizeof bad_subjects / sizeof bad_subjects[0]);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(cred_hw_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
