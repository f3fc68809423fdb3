/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Management, device side: profile bundles (CMS SignedData over a manifest,
 * signed here with OpenSSL) accepted only under every rule of the contract;
 * the bootstrap's "management" object in profiles; the state directory.
 *
 * JSON in this file is written with ' for " (see dq()).
 */
#include <check.h>
#include <m2mvpn/m2mvpn.h>
#include <openssl/cmp.h>
#include <openssl/cms.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "mgmt/mgmt.h"
#include "profile/profile.h"

#define DEV "dev-0123456789abcdef"
#define NOW ((int64_t)1800000000)

static const char *dq(const char *s)
{
    static char buf[4096];
    size_t n = strlen(s);
    ck_assert_uint_lt(n, sizeof(buf));
    for (size_t i = 0; i <= n; i++)
        buf[i] = s[i] == '\'' ? '"' : s[i];
    return buf;
}

/* ------------------------------------------------------------ signers */

typedef struct signer {
    EVP_PKEY *key;
    X509 *cert;
} signer;

static signer make_signer(const char *cn)
{
    signer s;
    s.key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    ck_assert_ptr_nonnull(s.key);
    s.cert = X509_new();
    X509_set_version(s.cert, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(s.cert), 7);
    X509_NAME *n = X509_get_subject_name(s.cert);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(s.cert, n);
    X509_gmtime_adj(X509_getm_notBefore(s.cert), -3600);
    X509_gmtime_adj(X509_getm_notAfter(s.cert), 86400L * 3650);
    X509_set_pubkey(s.cert, s.key);
    ck_assert_int_gt(X509_sign(s.cert, s.key, EVP_sha256()), 0);
    return s;
}

static void free_signer(signer *s)
{
    EVP_PKEY_free(s->key);
    X509_free(s->cert);
}

/* CMS SignedData DER of `content`, content attached. */
static uint8_t *sign(const signer *s, const char *content, size_t *len)
{
    BIO *in = BIO_new_mem_buf(content, (int)strlen(content));
    CMS_ContentInfo *cms = CMS_sign(s->cert, s->key, NULL, in, CMS_BINARY);
    ck_assert_ptr_nonnull(cms);
    unsigned char *der = NULL;
    int n = i2d_CMS_ContentInfo(cms, &der);
    ck_assert_int_gt(n, 0);
    CMS_ContentInfo_free(cms);
    BIO_free(in);
    *len = (size_t)n;
    return der;
}

static const char *PAYLOAD = "{\"version\": 1, \"name\": \"managed\"}";

static void sha_hex(const char *data, char out[65])
{
    unsigned char md[32];
    EVP_Digest(data, strlen(data), md, NULL, EVP_sha256(), NULL);
    for (int i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
}

/* A manifest; sha NULL: the payload's real digest. */
static char *manifest(const char *type, const char *dev, long long version, long long not_after, const char *sha)
{
    char hex[65], b64[256];
    sha_hex(PAYLOAD, hex);
    EVP_EncodeBlock((unsigned char *)b64, (const unsigned char *)PAYLOAD, (int)strlen(PAYLOAD));
    char *m = malloc(1024);
    snprintf(m, 1024, "{\"format\": 1, \"type\": \"%s\", \"device\": \"%s\", \"version\": %lld, "
             "\"not_after\": %lld, \"sha256\": \"%s\", \"payload\": \"%s\"}",
             type, dev, version, not_after, sha ? sha : hex, b64);
    return m;
}

static int verify(const uint8_t *der, size_t len, const signer *pinned, int64_t installed, mgmt_bundle *b,
                  char *err, size_t err_len)
{
    return mgmt_bundle_verify(der, len, pinned->cert, "profile", DEV, installed, NOW, b, err, err_len);
}

/* Sign this manifest with `by`, verify with `pinned`: the error text (""). */
static void expect_refused(const signer *by, const signer *pinned, const char *m, int64_t installed,
                           const char *why)
{
    size_t len;
    uint8_t *der = sign(by, m, &len);
    mgmt_bundle b = { .version = -5 };
    char err[256] = "";
    ck_assert_int_eq(verify(der, len, pinned, installed, &b, err, sizeof(err)), M2MVPN_E_BUNDLE);
    ck_assert_msg(strstr(err, why), "error '%s' lacks '%s'", err, why);
    ck_assert_int_eq(b.version, -5); /* untouched */
    ck_assert_ptr_null(b.payload);
    OPENSSL_free(der);
}

START_TEST(test_bundle_good)
{
    signer s = make_signer("bundle signer");
    char *m = manifest("profile", DEV, 3, NOW + 60, NULL);
    size_t len;
    uint8_t *der = sign(&s, m, &len);
    mgmt_bundle b = { 0 };
    char err[256] = "";
    ck_assert_int_eq(verify(der, len, &s, 2, &b, err, sizeof(err)), 0);
    ck_assert_int_eq(b.version, 3);
    ck_assert_int_eq(b.not_after, NOW + 60);
    ck_assert_uint_eq(b.payload_len, strlen(PAYLOAD));
    ck_assert_mem_eq(b.payload, PAYLOAD, b.payload_len);
    mgmt_bundle_clear(&b);
    OPENSSL_free(der);
    free(m);
    free_signer(&s);
}
END_TEST

START_TEST(test_bundle_tampered_byte)
{
    signer s = make_signer("bundle signer");
    char *m = manifest("profile", DEV, 3, NOW + 60, NULL);
    size_t len;
    uint8_t *der = sign(&s, m, &len);
    const uint8_t *content = memmem(der, len, m, strlen(m));
    ck_assert_ptr_nonnull(content);
    size_t c0 = (size_t)(content - der), c1 = c0 + strlen(m);
    uint8_t *copy = malloc(len);
    /* Every byte flipped in turn: a byte of the signed content is always
     * refused; elsewhere (the certificate bag is not signed) a flip may pass,
     * but then with exactly the original payload. */
    for (size_t i = 0; i < len; i++) {
        memcpy(copy, der, len);
        copy[i] ^= 0x01;
        mgmt_bundle b = { 0 };
        char err[256];
        int r = verify(copy, len, &s, 0, &b, err, sizeof(err));
        if (i >= c0 && i < c1)
            ck_assert_msg(r == M2MVPN_E_BUNDLE, "flip at %zu inside the content accepted", i);
        if (r == 0) {
            ck_assert_uint_eq(b.payload_len, strlen(PAYLOAD));
            ck_assert_mem_eq(b.payload, PAYLOAD, b.payload_len);
            ck_assert_int_eq(b.version, 3);
            mgmt_bundle_clear(&b);
        } else {
            ck_assert_int_eq(r, M2MVPN_E_BUNDLE);
        }
    }
    const uint8_t *v = memmem(der, len, "\"version\": 3", 12);
    ck_assert_ptr_nonnull(v);
    memcpy(copy, der, len);
    copy[v - der + 11] = '4';
    mgmt_bundle b = { 0 };
    char err[256] = "";
    ck_assert_int_eq(verify(copy, len, &s, 0, &b, err, sizeof(err)), M2MVPN_E_BUNDLE);
    ck_assert_msg(strstr(err, "signature does not verify"), "%s", err);
    free(copy);
    OPENSSL_free(der);
    free(m);
    free_signer(&s);
}
END_TEST

START_TEST(test_bundle_other_signer)
{
    signer s = make_signer("bundle signer"), other = make_signer("someone else");
    /* A look-alike: same name and serial number, another key. */
    signer twin = make_signer("bundle signer");
    char *m = manifest("profile", DEV, 3, NOW + 60, NULL);
    expect_refused(&other, &s, m, 0, "another key than the pinned bundle_signer");
    expect_refused(&twin, &s, m, 0, "signature does not verify with the pinned bundle_signer");
    free_signer(&twin);
    free(m);
    free_signer(&s);
    free_signer(&other);
}
END_TEST

START_TEST(test_bundle_unsigned_or_plain)
{
    signer s = make_signer("bundle signer");
    char *m = manifest("profile", DEV, 3, NOW + 60, NULL);
    mgmt_bundle b = { 0 };
    char err[256] = "";
    /* the plain manifest */
    ck_assert_int_eq(verify((const uint8_t *)m, strlen(m), &s, 0, &b, err, sizeof(err)), M2MVPN_E_BUNDLE);
    ck_assert_msg(strstr(err, "not a CMS message"), "%s", err);
    /* CMS, but data without a signature */
    BIO *in = BIO_new_mem_buf(m, (int)strlen(m));
    CMS_ContentInfo *cms = CMS_data_create(in, CMS_BINARY);
    unsigned char *der = NULL;
    int n = i2d_CMS_ContentInfo(cms, &der);
    ck_assert_int_eq(verify(der, (size_t)n, &s, 0, &b, err, sizeof(err)), M2MVPN_E_BUNDLE);
    ck_assert_msg(strstr(err, "not CMS SignedData"), "%s", err);
    OPENSSL_free(der);
    CMS_ContentInfo_free(cms);
    BIO_free(in);
    /* signed, content detached */
    in = BIO_new_mem_buf(m, (int)strlen(m));
    cms = CMS_sign(s.cert, s.key, NULL, in, CMS_BINARY | CMS_DETACHED);
    der = NULL;
    n = i2d_CMS_ContentInfo(cms, &der);
    ck_assert_int_eq(verify(der, (size_t)n, &s, 0, &b, err, sizeof(err)), M2MVPN_E_BUNDLE);
    ck_assert_msg(strstr(err, "not attached"), "%s", err);
    OPENSSL_free(der);
    CMS_ContentInfo_free(cms);
    BIO_free(in);
    /* empty and NULL */
    ck_assert_int_eq(verify(NULL, 0, &s, 0, &b, err, sizeof(err)), M2MVPN_E_BUNDLE);
    free(m);
    free_signer(&s);
}
END_TEST

START_TEST(test_bundle_manifest_rules)
{
    signer s = make_signer("bundle signer");
    struct {
        const char *type, *dev;
        long long version, not_after;
        const char *sha;
        int64_t installed;
        const char *why;
    } cases[] = {
        { "profile", "dev-ffffffffffffffff", 3, NOW + 60, NULL, 0, "made for another device" },
        { "profile", DEV, 3, NOW - 1, NULL, 0, "expired" },
        { "profile", DEV, 3, NOW, NULL, 0, "expired" },
        { "profile", DEV, 3, NOW + 60, NULL, 3, "not newer than the installed 3" },
        { "profile", DEV, 2, NOW + 60, NULL, 3, "not newer than the installed 3" },
        { "profile", DEV, 3, NOW + 60, "00000000000000000000000000000000000000000000000000000000000000ff", 0,
          "sha256 of the payload does not match" },
        { "software", DEV, 3, NOW + 60, NULL, 0, "type is not \"profile\"" },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *m = manifest(cases[i].type, cases[i].dev, cases[i].version, cases[i].not_after, cases[i].sha);
        expect_refused(&s, &s, m, cases[i].installed, cases[i].why);
        free(m);
    }
    free_signer(&s);
}
END_TEST

START_TEST(test_bundle_not_json)
{
    signer s = make_signer("bundle signer");
    static const char *const bad[] = {
        "not json at all",
        "[1, 2]",
        "{'format': 1, 'type': 'profile'",                 /* cut */
        "{'format': 2, 'type': 'profile', 'device': 'dev-0123456789abcdef', 'version': 3, "
        "'not_after': 1900000000, 'sha256': '', 'payload': ''}",
        "{'format': 1, 'type': 'profile', 'device': 'dev-0123456789abcdef', 'version': '3', "
        "'not_after': 1900000000, 'sha256': '', 'payload': ''}",
        "{'format': 1, 'extra': 1}",
        "{} trailing",
    };
    const char *why[] = { "not a JSON object", "not a JSON object", "not a JSON object", "format is not 1",
                          "not newer", "unknown key", "not a JSON object" };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        expect_refused(&s, &s, dq(bad[i]), 0, why[i]);
    free_signer(&s);
}
END_TEST

/* ------------------------------------------------------------ bootstrap */

#define TOKEN "0123456789abcdef.AAAAAAAAAAAAAAAAAAAAbbbbbbbbbbbbbbbbbbbb-_c"
#define BOOT_HEAD "{'version': 1, 'name': 'boot', 'management': {'url': 'https://198.51.100.9:8443/', " \
                  "'server_ca': 'mgmt-ca.pem', 'bundle_signer': 'signer.pem', 'enrolment_token': '" TOKEN "', "

START_TEST(test_bootstrap_good)
{
    profile_set *set = NULL;
    char err[512] = "";
    const char *j = dq(BOOT_HEAD "'key': {'provider': 'file'}, 'poll_s': 60}}");
    ck_assert_msg(profile_set_parse(j, strlen(j), "/etc/m2mvpn", &set, err, sizeof(err)) == 0, "%s", err);
    const profile *p = &set->items[0];
    ck_assert(p->mgmt.on);
    ck_assert_str_eq(p->mgmt.url, "https://198.51.100.9:8443");
    ck_assert_str_eq(p->mgmt.server_ca, "/etc/m2mvpn/mgmt-ca.pem");
    ck_assert_str_eq(p->mgmt.bundle_signer, "/etc/m2mvpn/signer.pem");
    ck_assert_str_eq(p->mgmt.token, TOKEN);
    ck_assert_int_eq(p->mgmt.provider, PROFILE_CERT_FILE);
    ck_assert_ptr_null(p->mgmt.key);
    ck_assert_uint_eq(p->mgmt.poll_s, 60);
    ck_assert_uint_eq(p->n_gateways, 0);
    profile_set_free(set);

    j = dq(BOOT_HEAD "'key': {'provider': 'pkcs11', 'pkcs11_module': 'libsofthsm2.so', "
                     "'pkcs11_uri': 'pkcs11:token=m2m;object=dev', 'pin': '1234'}}}");
    ck_assert_msg(profile_set_parse(j, strlen(j), "/", &set, err, sizeof(err)) == 0, "%s", err);
    ck_assert_int_eq(set->items[0].mgmt.provider, PROFILE_CERT_PKCS11);
    ck_assert_uint_eq(set->items[0].mgmt.poll_s, 300);
    profile_set_free(set);

    j = dq(BOOT_HEAD "'key': {'provider': 'tpm', 'tpm_key': '0x81000010', 'tpm_tcti': 'swtpm:port=2321'}}}");
    ck_assert_msg(profile_set_parse(j, strlen(j), "/", &set, err, sizeof(err)) == 0, "%s", err);
    ck_assert_str_eq(set->items[0].mgmt.tpm_key, "0x81000010");
    profile_set_free(set);

    /* A bootstrap may also carry a full profile. */
    j = dq("{'version': 1, 'name': 'both', 'gateways': [{'host': '198.51.100.1'}], 'remote_id': 'gw', "
           "'auth': {'method': 'psk', 'psk': 'aaaaaaaaaaaaaaaaaaaaaaaa'}, 'local_id': 'me', "
           "'management': {'url': 'https://m.example', 'server_ca': 'a.pem', 'bundle_signer': 'b.pem', "
           "'enrolment_token': '" TOKEN "', 'key': {'provider': 'file', 'key': 'k.pem'}}}");
    ck_assert_msg(profile_set_parse(j, strlen(j), "/x", &set, err, sizeof(err)) == 0, "%s", err);
    ck_assert_str_eq(set->items[0].mgmt.key, "/x/k.pem");
    ck_assert_uint_eq(set->items[0].n_gateways, 1);
    profile_set_free(set);
}
END_TEST

static const struct {
    const char *json;
    const char *err;
} bad_boot[] = {
    { BOOT_HEAD "'key': {'provider': 'file'}, 'pol_s': 5}}", "management.pol_s: unknown key" },
    { BOOT_HEAD "'key': {'provider': 'file', 'pkcs11_uri': 'pkcs11:x'}}}",
      "management.key.pkcs11_uri: not allowed when management.key.provider is \"file\"" },
    { BOOT_HEAD "'key': {'provider': 'machine'}}}", "management.key.provider" },
    { BOOT_HEAD "'key': {'provder': 'file'}}}", "management.key.provder: unknown key" },
    { BOOT_HEAD "'poll_s': 60}}", "management.key: required" },
    { BOOT_HEAD "'key': {'provider': 'file'}, 'poll_s': 5}}", "management.poll_s" },
    { BOOT_HEAD "'key': {'provider': 'pkcs11', 'pkcs11_module': 'x.so', 'pkcs11_uri': 'pkcs11:x'}}}",
      "management.key.pin: required" },
    { BOOT_HEAD "'key': {'provider': 'tpm', 'tpm_key': '0x01'}}}", "management.key.tpm_key" },
    { "{'version': 1, 'name': 'b', 'management': {'url': 'http://198.51.100.9', 'server_ca': 'a', "
      "'bundle_signer': 'b', 'enrolment_token': '" TOKEN "', 'key': {'provider': 'file'}}}",
      "management.url: must be an https:// URL" },
    { "{'version': 1, 'name': 'b', 'management': {'url': 'https://198.51.100.9', 'server_ca': 'a', "
      "'bundle_signer': 'b', 'enrolment_token': 'abc.def', 'key': {'provider': 'file'}}}",
      "management.enrolment_token: must be the token as m2mvpn-admin prints it" },
    { "{'version': 1, 'name': 'b', 'management': {'url': 'https://198.51.100.9', "
      "'bundle_signer': 'b', 'enrolment_token': '" TOKEN "', 'key': {'provider': 'file'}}}",
      "management.server_ca: required" },
    { "{'version': 1, 'name': 'b', 'management': {'url': 'https://198.51.100.9', 'server_ca': 'a', "
      "'enrolment_token': '" TOKEN "', 'key': {'provider': 'file'}}}",
      "management.bundle_signer: required" },
    { "{'version': 1, 'name': 'b', 'management': {'server_ca': 'a', 'bundle_signer': 'b', "
      "'enrolment_token': '" TOKEN "', 'key': {'provider': 'file'}}}",
      "management.url: required" },
    { "{'version': 1, 'name': 'b', 'management': {'url': 'https://198.51.100.9', 'server_ca': 'a', "
      "'bundle_signer': 'b', 'key': {'provider': 'file'}}}",
      "management.enrolment_token: required" },
    { "{'version': 1, 'name': 'b', 'management': 'https://x'}", "management: must be an object" },
    /* Without management, gateways are still required. */
    { "{'version': 1, 'name': 'b', 'remote_id': 'gw', 'auth': {'method': 'psk', 'psk': 'x'}}",
      "gateways: required" },
};

START_TEST(test_bootstrap_bad)
{
    profile_set *set = NULL;
    char err[512] = "";
    const char *j = dq(bad_boot[_i].json);
    int r = profile_set_parse(j, strlen(j), "/", &set, err, sizeof(err));
    ck_assert_msg(r == M2MVPN_E_PROFILE, "case %d: r=%d err='%s'", _i, r, err);
    ck_assert_msg(strstr(err, bad_boot[_i].err), "case %d: '%s' lacks '%s'", _i, err, bad_boot[_i].err);
    ck_assert_ptr_null(set);
    ck_assert_ptr_null(strstr(err, "AAAAAAAAAAAAAAAAAAAA")); /* never the token's secret */
}
END_TEST

/* ------------------------------------------------------------ state dir */

START_TEST(test_state_files)
{
    char dir[] = "/tmp/m2mvpn-mgmt-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char err[256] = "";
    mgmt_state st;
    ck_assert_int_eq(mgmt_state_load(dir, &st, err, sizeof(err)), 0);
    ck_assert_int_eq(st.phase, MGMT_UNENROLLED);
    st.phase = MGMT_ENROLLED;
    snprintf(st.device_id, sizeof(st.device_id), DEV);
    st.profile_version = 4;
    st.last_contact = NOW;
    snprintf(st.etag, sizeof(st.etag), "\"abc\"");
    ck_assert_int_eq(mgmt_state_save(dir, &st, err, sizeof(err)), 0);
    mgmt_state back;
    ck_assert_int_eq(mgmt_state_load(dir, &back, err, sizeof(err)), 0);
    ck_assert_int_eq(back.phase, MGMT_ENROLLED);
    ck_assert_str_eq(back.device_id, DEV);
    ck_assert_int_eq(back.profile_version, 4);
    ck_assert_int_eq(back.last_contact, NOW);
    ck_assert_str_eq(back.etag, "\"abc\"");
    char path[512];
    snprintf(path, sizeof(path), "%s/mgmt.json", dir);
    struct stat sb;
    ck_assert_int_eq(stat(path, &sb), 0);
    ck_assert_int_eq(sb.st_mode & 0777, 0600);
    /* replaced as a whole, no temporary left */
    ck_assert_int_eq(mgmt_write_file(dir, "mgmt.json", "garbage", 7, err, sizeof(err)), 0);
    ck_assert_int_eq(mgmt_state_load(dir, &back, err, sizeof(err)), M2MVPN_E_IO);
    ck_assert_ptr_nonnull(strstr(err, "remove it to enrol again"));
    snprintf(path, sizeof(path), "%s/.mgmt.json.tmp", dir);
    ck_assert_int_ne(access(path, F_OK), 0);
    ck_assert_int_eq(mgmt_write_file("/nonexistent-dir", "x", "y", 1, err, sizeof(err)), M2MVPN_E_IO);
    snprintf(path, sizeof(path), "rm -rf %s", dir);
    ck_assert_int_eq(system(path), 0);
}
END_TEST

static void on_mgmt_event(void *arg, m2mvpn_event_type type, int err, const char *detail)
{
    (void)arg, (void)type, (void)err, (void)detail;
}

static void on_mgmt_profile(void *arg, profile_set *set)
{
    (void)arg;
    profile_set_free(set);
}

/* A state directory other users may write to (or that belongs to another
 * user) is refused before anything is made or stored there: they could put
 * their own key, certificate, profile.json and mgmt.json there. */
START_TEST(test_state_dir_writable_by_others)
{
    char certs[] = "/tmp/m2mvpn-mgmt-XXXXXX", dir[] = "/tmp/m2mvpn-mgmt-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(certs));
    ck_assert_ptr_nonnull(mkdtemp(dir));
    signer s = make_signer("mgmt");
    char path[512];
    for (int i = 0; i < 2; i++) {
        snprintf(path, sizeof(path), "%s/%s", certs, i ? "signer.pem" : "mgmt-ca.pem");
        FILE *f = fopen(path, "w");
        ck_assert_ptr_nonnull(f);
        ck_assert_int_eq(PEM_write_X509(f, s.cert), 1);
        fclose(f);
    }
    profile_set *set = NULL;
    char err[512] = "";
    const char *j = dq(BOOT_HEAD "'key': {'provider': 'file'}}}");
    ck_assert_msg(profile_set_parse(j, strlen(j), certs, &set, err, sizeof(err)) == 0, "%s", err);
    core_log log;
    core_log_init(&log, NULL);
    core_loop loop;
    ck_assert_int_eq(core_loop_init(&loop, NULL, NULL), 0);
    mgmt_hooks hooks = { .on_event = on_mgmt_event, .on_profile = on_mgmt_profile };
    const mode_t modes[] = { 0777, 0770, 0703 };
    for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
        mgmt *m = NULL;
        ck_assert_int_eq(mgmt_new(&loop, &log, &hooks, &m), 0);
        ck_assert_int_eq(chmod(dir, modes[i]), 0);
        err[0] = '\0';
        ck_assert_int_eq(mgmt_run(m, set, &set->items[0], dir, err, sizeof(err)), M2MVPN_E_IO);
        ck_assert_msg(strstr(err, "writable by other users") != NULL, "%s", err);
        mgmt_free(m);
        snprintf(path, sizeof(path), "%s/device.key.pem", dir);
        ck_assert_int_ne(access(path, F_OK), 0);
    }
    core_loop_destroy(&loop);
    core_log_destroy(&log);
    profile_set_free(set);
    free_signer(&s);
    snprintf(path, sizeof(path), "rm -rf %s %s", dir, certs);
    ck_assert_int_eq(system(path), 0);
}
END_TEST

START_TEST(test_cmp_answer_garbage)
{
    char err[256] = "";
    static const uint8_t junk[] = { 0x30, 0x03, 0x02, 0x01, 0x00 };
    int r = mgmt_cmp_check_answer(junk, sizeof(junk), err, sizeof(err));
    ck_assert_int_lt(r, 0);
    ck_assert_int_ne(r, M2MVPN_E_PENDING);
    ck_assert_str_ne(err, "");
}
END_TEST

/* ------------------------------------------------------- day N: versions */

START_TEST(test_version_rules)
{
    char err[256] = "";
    ck_assert_int_eq(mgmt_version_check(3, 4, NOW + 60, NOW, err, sizeof(err)), 0);
    ck_assert_int_eq(mgmt_version_check(0, 1, NOW + 1, NOW, err, sizeof(err)), 0);
    ck_assert_int_eq(mgmt_version_check(3, 3, NOW + 60, NOW, err, sizeof(err)), M2MVPN_E_BUNDLE);
    ck_assert_ptr_nonnull(strstr(err, "not newer than the installed version 3"));
    ck_assert_int_eq(mgmt_version_check(3, 2, NOW + 60, NOW, err, sizeof(err)), M2MVPN_E_BUNDLE);
    ck_assert_ptr_nonnull(strstr(err, "downgrade"));
    ck_assert_int_eq(mgmt_version_check(3, 4, NOW, NOW, err, sizeof(err)), M2MVPN_E_BUNDLE);
    ck_assert_ptr_nonnull(strstr(err, "expired"));
    ck_assert_int_eq(mgmt_version_check(3, 4, NOW - 1, NOW, err, sizeof(err)), M2MVPN_E_BUNDLE);
}
END_TEST

/* ------------------------------------------------------- day N: journal */

static char *read_text(const char *dir, const char *name)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    static char buf[4096];
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = 0;
    return buf;
}

static bool has_file(const char *dir, const char *name)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    return access(path, F_OK) == 0;
}

static void rm_dir(const char *dir)
{
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    ck_assert_int_eq(system(cmd), 0);
}

#define OLD_P "{\"old\": true}"
#define NEW_P "{\"new\": true}"

/* Apply steps 1..stop of 4 (stage, write, trying, commit), then "power
 * cut": what the next start makes of the state directory. */
START_TEST(test_journal_kill_each_step)
{
    int stop = _i; /* 0: killed inside staging (journal written, next half) */
    char dir[] = "/tmp/m2mvpn-apply-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char err[256] = "";
    mgmt_state st = { .phase = MGMT_ENROLLED, .profile_version = 3 };
    snprintf(st.device_id, sizeof(st.device_id), DEV);
    ck_assert_int_eq(mgmt_state_save(dir, &st, err, sizeof(err)), 0);
    ck_assert_int_eq(mgmt_write_file(dir, "profile.json", OLD_P, strlen(OLD_P), err, sizeof(err)), 0);
    mgmt_journal j;
    if (stop == 0) {
        j = (mgmt_journal){ .phase = MGMT_APPLY_STAGED, .deployment = 9, .from = 3, .to = 4, .had_prev = true };
        ck_assert_int_eq(mgmt_journal_save(dir, &j, err, sizeof(err)), 0);
        ck_assert_int_eq(mgmt_write_file(dir, "profile.next.json", "{\"ne", 4, err, sizeof(err)), 0);
    } else {
        ck_assert_int_eq(mgmt_apply_stage(dir, &j, 9, 3, 4, NEW_P, strlen(NEW_P), err, sizeof(err)), 0);
        ck_assert_str_eq(read_text(dir, "profile.json"), OLD_P); /* staged: nothing replaced yet */
        ck_assert_int_eq(st.profile_version, 3);
        if (stop >= 2) {
            ck_assert_int_eq(mgmt_apply_write(dir, &j, err, sizeof(err)), 0);
            ck_assert_str_eq(read_text(dir, "profile.json"), NEW_P);
        }
        if (stop >= 3)
            ck_assert_int_eq(mgmt_apply_trying(dir, &j, err, sizeof(err)), 0);
        if (stop >= 4)
            ck_assert_int_eq(mgmt_apply_commit(dir, &j, &st, err, sizeof(err)), 0);
    }
    /* next start */
    mgmt_state st2;
    ck_assert_int_eq(mgmt_state_load(dir, &st2, err, sizeof(err)), 0);
    mgmt_journal back;
    char what[256];
    ck_assert_int_eq(mgmt_apply_recover(dir, &back, &st2, what, sizeof(what), err, sizeof(err)), 0);
    ck_assert_int_eq(back.deployment, 9);
    ck_assert(!has_file(dir, "profile.next.json"));
    ck_assert(!has_file(dir, "profile.prev.json"));
    mgmt_state st3;
    ck_assert_int_eq(mgmt_state_load(dir, &st3, err, sizeof(err)), 0);
    if (stop >= 4) {
        ck_assert_int_eq(back.phase, MGMT_APPLY_COMMITTED);
        ck_assert_str_eq(read_text(dir, "profile.json"), NEW_P);
        ck_assert_int_eq(st3.profile_version, 4);
    } else {
        ck_assert_int_eq(back.phase, MGMT_APPLY_FAILED);
        ck_assert_str_eq(read_text(dir, "profile.json"), OLD_P);
        ck_assert_int_eq(st3.profile_version, 3); /* the version moves only at commit */
        ck_assert_msg(strstr(back.reason, "interrupted while"), "%s", back.reason);
    }
    /* recovering twice changes nothing more */
    ck_assert_int_eq(mgmt_apply_recover(dir, &back, &st2, what, sizeof(what), err, sizeof(err)), 0);
    ck_assert_str_eq(read_text(dir, "profile.json"), stop >= 4 ? NEW_P : OLD_P);
    rm_dir(dir);
}
END_TEST

/* A commit killed after the journal said COMMITTED but before mgmt.json
 * moved: the restart completes it. */
START_TEST(test_journal_commit_half)
{
    char dir[] = "/tmp/m2mvpn-apply-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char err[256] = "";
    mgmt_state st = { .phase = MGMT_ENROLLED, .profile_version = 3 };
    ck_assert_int_eq(mgmt_state_save(dir, &st, err, sizeof(err)), 0);
    ck_assert_int_eq(mgmt_write_file(dir, "profile.json", NEW_P, strlen(NEW_P), err, sizeof(err)), 0);
    ck_assert_int_eq(mgmt_write_file(dir, "profile.prev.json", OLD_P, strlen(OLD_P), err, sizeof(err)), 0);
    mgmt_journal j = { .phase = MGMT_APPLY_COMMITTED, .deployment = 5, .from = 3, .to = 4, .had_prev = true };
    ck_assert_int_eq(mgmt_journal_save(dir, &j, err, sizeof(err)), 0);
    char what[256];
    ck_assert_int_eq(mgmt_apply_recover(dir, &j, &st, what, sizeof(what), err, sizeof(err)), 0);
    ck_assert_int_eq(st.profile_version, 4);
    mgmt_state back;
    ck_assert_int_eq(mgmt_state_load(dir, &back, err, sizeof(err)), 0);
    ck_assert_int_eq(back.profile_version, 4);
    ck_assert(!has_file(dir, "profile.prev.json"));
    rm_dir(dir);
}
END_TEST

/* The first managed profile had no predecessor: a rollback removes it. */
START_TEST(test_journal_no_prev)
{
    char dir[] = "/tmp/m2mvpn-apply-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char err[256] = "";
    mgmt_journal j;
    ck_assert_int_eq(mgmt_apply_stage(dir, &j, 2, 0, 1, NEW_P, strlen(NEW_P), err, sizeof(err)), 0);
    ck_assert(!j.had_prev);
    ck_assert_int_eq(mgmt_apply_write(dir, &j, err, sizeof(err)), 0);
    ck_assert_int_eq(mgmt_apply_rollback(dir, &j, "gateway unreachable", err, sizeof(err)), 0);
    ck_assert(!has_file(dir, "profile.json"));
    mgmt_journal back;
    ck_assert_int_eq(mgmt_journal_load(dir, &back, err, sizeof(err)), 0);
    ck_assert_int_eq(back.phase, MGMT_APPLY_FAILED);
    ck_assert_str_eq(back.reason, "gateway unreachable");
    back.phase = MGMT_APPLY_NONE;
    ck_assert_int_eq(mgmt_journal_save(dir, &back, err, sizeof(err)), 0);
    ck_assert(!has_file(dir, "apply.json"));
    ck_assert_int_eq(mgmt_write_file(dir, "apply.json", "{\"phase\": \"sideways\"}", 21, err, sizeof(err)), 0);
    ck_assert_int_eq(mgmt_journal_load(dir, &back, err, sizeof(err)), M2MVPN_E_IO);
    ck_assert_msg(strstr(err, "apply.json") && strstr(err, "sideways"), "%s", err);
    rm_dir(dir);
}
END_TEST

/* renew.json and update.json: what a restart takes up again. A stored
 * update's file must stay a plain name in the state directory, its sha256
 * one the re-hash can compare with. */
START_TEST(test_restart_marks)
{
    char dir[] = "/tmp/m2mvpn-marks-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char err[256] = "";
    mgmt_renew_mark rm = { .deployment = 7 }, rb;
    snprintf(rm.old_serial, sizeof(rm.old_serial), "0A1B");
    ck_assert_int_eq(mgmt_renew_mark_load(dir, &rb, err, sizeof(err)), 0);
    ck_assert_int_eq(rb.deployment, 0);
    ck_assert_int_eq(mgmt_renew_mark_save(dir, &rm, err, sizeof(err)), 0);
    ck_assert_int_eq(mgmt_renew_mark_load(dir, &rb, err, sizeof(err)), 0);
    ck_assert_int_eq(rb.deployment, 7);
    ck_assert_str_eq(rb.old_serial, "0A1B");
    /* a serial no certificate has (empty, not hex) would always differ
     * from the current one: a renewal reported done that never happened */
    static const char *const bad_renew[] = {
        "{\"deployment\": 7, \"old_serial\": \"\"}",
        "{\"deployment\": 7, \"old_serial\": \"not-a-serial\"}",
        "{\"deployment\": 7, \"old_serial\": \"0A 1B\"}",
        "{\"deployment\": 7, \"old_serial\": \"-\"}",
        "{\"deployment\": 7}",
    };
    for (size_t i = 0; i < sizeof(bad_renew) / sizeof(bad_renew[0]); i++) {
        ck_assert_int_eq(mgmt_write_file(dir, "renew.json", bad_renew[i], strlen(bad_renew[i]), err, sizeof(err)),
                         0);
        rb.deployment = 99;
        ck_assert_int_eq(mgmt_renew_mark_load(dir, &rb, err, sizeof(err)), M2MVPN_E_IO);
        ck_assert_msg(rb.deployment == 0 && strstr(err, "renew.json"), "case %zu: %s", i, err);
    }
    snprintf(rm.old_serial, sizeof(rm.old_serial), "-7F");
    ck_assert_int_eq(mgmt_renew_mark_save(dir, &rm, err, sizeof(err)), 0);
    ck_assert_int_eq(mgmt_renew_mark_load(dir, &rb, err, sizeof(err)), 0);
    ck_assert_str_eq(rb.old_serial, "-7F");
    rm.deployment = 0;
    ck_assert_int_eq(mgmt_renew_mark_save(dir, &rm, err, sizeof(err)), 0);
    ck_assert(!has_file(dir, "renew.json"));

    static const char sha[] = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    mgmt_update_mark um = { .deployment = 3, .version = 5, .size = 4 }, ub;
    snprintf(um.software_version, sizeof(um.software_version), "1.2.3");
    snprintf(um.file, sizeof(um.file), "update-1.2.3.bin");
    memcpy(um.sha256, sha, sizeof(um.sha256));
    ck_assert_int_eq(mgmt_update_mark_save(dir, &um, err, sizeof(err)), 0);
    ck_assert_int_eq(mgmt_update_mark_load(dir, &ub, err, sizeof(err)), 0);
    ck_assert_int_eq(ub.deployment, 3);
    ck_assert_int_eq(ub.version, 5);
    ck_assert_int_eq(ub.size, 4);
    ck_assert_str_eq(ub.file, "update-1.2.3.bin");
    ck_assert_str_eq(ub.sha256, sha);
    /* refused: a path out of the state directory, a hidden file, no hash */
    static const char *const bad[] = {
        "{\"deployment\": 3, \"version\": 5, \"size\": 4, \"software_version\": \"1\", "
        "\"file\": \"../../usr/bin/x\", \"sha256\": \"%s\"}",
        "{\"deployment\": 3, \"version\": 5, \"size\": 4, \"software_version\": \"1\", "
        "\"file\": \".update-1.bin.part\", \"sha256\": \"%s\"}",
        "{\"deployment\": 3, \"version\": 5, \"size\": 4, \"software_version\": \"1\", "
        "\"file\": \"update-1.bin\", \"sha256\": \"%.10s\"}",
        "{\"deployment\": 3, \"version\": 5, \"size\": 0, \"software_version\": \"1\", "
        "\"file\": \"update-1.bin\", \"sha256\": \"%s\"}",
        /* another file of the state directory (hashed, refused, removed) */
        "{\"deployment\": 3, \"version\": 5, \"size\": 4, \"software_version\": \"1\", "
        "\"file\": \"device.key.pem\", \"sha256\": \"%s\"}",
        "{\"deployment\": 3, \"version\": 5, \"size\": 4, \"software_version\": \"1\", "
        "\"file\": \"update-2.bin\", \"sha256\": \"%s\"}",
        /* a version that is an option or shell text for the installer */
        "{\"deployment\": 3, \"version\": 5, \"size\": 4, \"software_version\": \"-rf\", "
        "\"file\": \"update--rf.bin\", \"sha256\": \"%s\"}",
        "{\"deployment\": 3, \"version\": 5, \"size\": 4, \"software_version\": \"1;reboot\", "
        "\"file\": \"update-1;reboot.bin\", \"sha256\": \"%s\"}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char text[512];
        int n = snprintf(text, sizeof(text), bad[i], sha);
        ck_assert_int_eq(mgmt_write_file(dir, "update.json", text, (size_t)n, err, sizeof(err)), 0);
        ub.deployment = 99;
        ck_assert_int_eq(mgmt_update_mark_load(dir, &ub, err, sizeof(err)), M2MVPN_E_IO);
        ck_assert_int_eq(ub.deployment, 0);
        ck_assert_msg(strstr(err, "update.json"), "%s", err);
    }
    um.deployment = 0;
    ck_assert_int_eq(mgmt_update_mark_save(dir, &um, err, sizeof(err)), 0);
    ck_assert(!has_file(dir, "update.json"));
    rm_dir(dir);
}
END_TEST

/* The stored update hashed again before use: a changed byte is refused. */
START_TEST(test_stored_update_rehashed)
{
    char dir[] = "/tmp/m2mvpn-rehash-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char err[256] = "", path[300];
    static const char sha[] = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"; /* "test" */
    ck_assert_int_eq(mgmt_write_file(dir, "update-1.bin", "test", 4, err, sizeof(err)), 0);
    snprintf(path, sizeof(path), "%s/update-1.bin", dir);
    ck_assert_int_eq(mgmt_file_check(path, 4, sha, err, sizeof(err)), 0);
    ck_assert_int_eq(mgmt_write_file(dir, "update-1.bin", "tesT", 4, err, sizeof(err)), 0);
    ck_assert_int_eq(mgmt_file_check(path, 4, sha, err, sizeof(err)), M2MVPN_E_BUNDLE);
    ck_assert_msg(strstr(err, "changed on disk"), "%s", err);
    ck_assert_int_eq(mgmt_file_check(path, 5, sha, err, sizeof(err)), M2MVPN_E_BUNDLE);
    unlink(path);
    ck_assert_int_eq(symlink("/etc/hostname", path), 0);
    ck_assert_int_eq(mgmt_file_check(path, 4, sha, err, sizeof(err)), M2MVPN_E_IO);
    unlink(path);
    rm_dir(dir);
}
END_TEST

/* ---------------------------------------------------------- day N: poll */

START_TEST(test_poll_parse)
{
    char err[256] = "";
    mgmt_poll_answer a;
    const char *good = "{\"poll_s\": 60, \"deployments\": [{\"id\": 17, \"type\": \"profile\", \"href\": "
                       "\"/api/v1/device/deployments/17\", \"maintenance_window\": \"available\"}, {\"id\": 18, "
                       "\"type\": \"future-thing\", \"href\": \"/api/v1/device/deployments/18\"}, {\"id\": 19, "
                       "\"type\": \"software\", \"href\": \"/api/v1/device/deployments/19\", "
                       "\"maintenance_window\": \"unavailable\"}]}";
    ck_assert_int_eq(mgmt_poll_parse(good, strlen(good), &a, err, sizeof(err)), 0);
    ck_assert_uint_eq(a.poll_s, 60);
    ck_assert_uint_eq(a.n, 2); /* the unknown type skipped */
    ck_assert_int_eq(a.deps[0].id, 17);
    ck_assert_int_eq(a.deps[0].type, MGMT_DEP_PROFILE);
    ck_assert(a.deps[0].window_open);
    ck_assert_int_eq(a.deps[1].type, MGMT_DEP_SOFTWARE);
    ck_assert(!a.deps[1].window_open);
    static const struct {
        const char *text, *why;
    } bad[] = {
        { "{\"poll_s\": 60, \"deployments\": [{\"id\": 17, \"type\": \"profile\", \"href\": "
          "\"https://elsewhere.example/x\"}]}", "href is not" },
        { "{\"poll_s\": 60, \"deployments\": [{\"id\": 17, \"type\": \"profile\", \"href\": "
          "\"/api/v1/device/deployments/18\"}]}", "href is not" },
        { "{\"poll_s\": 0, \"deployments\": []}", "out of range" },
        { "{\"poll_s\": \"60\", \"deployments\": []}", "poll_s" },
        { "{\"poll_s\": 60}", "deployments" },
        { "{\"poll_s\": 60, \"deployments\": [{\"id\": -1, \"type\": \"profile\", \"href\": "
          "\"/api/v1/device/deployments/-1\"}]}", "id out of range" },
        { "{\"poll_s\": 60, \"deployments\": [{\"id\": 1, \"type\": \"profile\", \"href\": "
          "\"/api/v1/device/deployments/1\", \"maintenance_window\": \"maybe\"}]}", "maintenance_window" },
        { "{\"poll_s\": 60, \"deployments\": []} trailing", "not a JSON object" },
        { "[1]", "not a JSON object" },
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = 0;
        ck_assert_int_eq(mgmt_poll_parse(bad[i].text, strlen(bad[i].text), &a, err, sizeof(err)),
                         M2MVPN_E_PROTOCOL);
        ck_assert_msg(strstr(err, bad[i].why), "case %zu: %s", i, err);
        ck_assert_uint_eq(a.n, 0);
    }
    char q[256];
    ck_assert_int_eq(mgmt_poll_query(q, sizeof(q), "up", 4, NULL, 1700000000), 0);
    ck_assert_str_eq(q, "/api/v1/device/poll?tunnel=up&profile=4&cert_not_after=1700000000");
    ck_assert_int_eq(mgmt_poll_query(q, sizeof(q), "down", 1, "1.4.2 &x=", 5), 0);
    ck_assert_str_eq(q, "/api/v1/device/poll?tunnel=down&profile=1&software=1.4.2x&cert_not_after=5");
}
END_TEST

/* ------------------------------------------------------ day N: software */

static char *sw_manifest(const char *sha, long long size, const char *url, const char *sv, const char *payload)
{
    char *m = malloc(1024);
    snprintf(m, 1024, "{\"format\": 1, \"type\": \"software\", \"device\": \"%s\", \"version\": 3, "
             "\"not_after\": %lld, \"sha256\": \"%s\", \"payload\": \"%s\", \"deployment\": 7, "
             "\"software_version\": \"%s\", \"url\": \"%s\", \"size\": %lld}",
             DEV, (long long)NOW + 60, sha, payload, sv, url, size);
    return m;
}

START_TEST(test_software_bundle_and_artifact)
{
    signer s = make_signer("bundle signer");
    static const char file[] = "firmware image bytes";
    char sha[65], url[128], err[256] = "";
    sha_hex(file, sha);
    snprintf(url, sizeof(url), "/api/v1/device/artifacts/%s", sha);
    char *m = sw_manifest(sha, (long long)strlen(file), url, "1.4.2", "");
    size_t len;
    uint8_t *der = sign(&s, m, &len);
    mgmt_bundle b;
    ck_assert_int_eq(mgmt_bundle_verify(der, len, s.cert, "software", DEV, 2, NOW, &b, err, sizeof(err)), 0);
    ck_assert_str_eq(b.software_version, "1.4.2");
    ck_assert_str_eq(b.url, url);
    ck_assert_int_eq(b.size, (int64_t)strlen(file));
    ck_assert_int_eq(b.deployment, 7);
    ck_assert_int_eq(mgmt_artifact_check((const uint8_t *)file, strlen(file), &b, err, sizeof(err)), 0);
    /* one byte changed, one byte missing: refused */
    char bad[sizeof(file)];
    memcpy(bad, file, sizeof(file));
    bad[0] ^= 1;
    ck_assert_int_eq(mgmt_artifact_check((const uint8_t *)bad, strlen(file), &b, err, sizeof(err)), M2MVPN_E_BUNDLE);
    ck_assert_ptr_nonnull(strstr(err, "sha256 does not match"));
    ck_assert_int_eq(mgmt_artifact_check((const uint8_t *)file, strlen(file) - 1, &b, err, sizeof(err)),
                     M2MVPN_E_BUNDLE);
    ck_assert_ptr_nonnull(strstr(err, "bytes"));
    /* an older or replayed software bundle */
    mgmt_bundle b2;
    ck_assert_int_eq(mgmt_bundle_verify(der, len, s.cert, "software", DEV, 3, NOW, &b2, err, sizeof(err)),
                     M2MVPN_E_BUNDLE);
    ck_assert_ptr_nonnull(strstr(err, "not newer"));
    mgmt_bundle_clear(&b);
    free(m);
    OPENSSL_free(der);
    static const struct {
        const char *url, *sv, *payload, *why;
        long long size;
    } cases[] = {
        { "/api/v1/device/artifacts/00", "1.4.2", "", "url is not the artifact route", 20 },
        { NULL, "", "", "software_version", 20 },
        { NULL, "1/../x", "", "software_version", 20 },
        { NULL, "--force", "", "software_version", 20 },
        { NULL, "1.0;reboot", "", "software_version", 20 },
        { NULL, "1$(id)", "", "software_version", 20 },
        { NULL, ".hidden", "", "software_version", 20 },
        { NULL, "1.4.2", "", "size", 0 },
        { NULL, "1.4.2", "", "size", 1LL << 40 },
        { NULL, "1.4.2", "", "size", MGMT_ARTIFACT_MAX + 1 },
        { NULL, "1.4.2", "YQ==", "no payload", 20 },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *mm = sw_manifest(sha, cases[i].size, cases[i].url ? cases[i].url : url, cases[i].sv, cases[i].payload);
        uint8_t *d = sign(&s, mm, &len);
        err[0] = 0;
        ck_assert_int_eq(mgmt_bundle_verify(d, len, s.cert, "software", DEV, 0, NOW, &b, err, sizeof(err)),
                         M2MVPN_E_BUNDLE);
        ck_assert_msg(strstr(err, cases[i].why), "case %zu: %s", i, err);
        free(mm);
        OPENSSL_free(d);
    }
    free_signer(&s);
}
END_TEST

/* A restart takes up a stored update only as its signed bundle says:
 * update.json alone (written by whoever could write the state directory)
 * is not trusted for the hash, the size or the version. */
START_TEST(test_stored_update_bundle)
{
    char dir[] = "/tmp/m2mvpn-stored-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    signer s = make_signer("bundle signer"), other = make_signer("bundle signer");
    static const char file[] = "firmware image bytes";
    char sha[65], url[128], err[512] = "";
    sha_hex(file, sha);
    snprintf(url, sizeof(url), "/api/v1/device/artifacts/%s", sha);
    char *man = sw_manifest(sha, (long long)strlen(file), url, "1.4.2", ""); /* version 3, deployment 7 */
    size_t len, olen;
    uint8_t *der = sign(&s, man, &len), *oder = sign(&other, man, &olen);
    mgmt_update_mark mk = { .deployment = 7, .version = 3, .size = (int64_t)strlen(file) }, got;
    snprintf(mk.software_version, sizeof(mk.software_version), "1.4.2");
    snprintf(mk.file, sizeof(mk.file), "update-1.4.2.bin");
    memcpy(mk.sha256, sha, sizeof(mk.sha256));
    mgmt_bundle b;

    /* nothing stored */
    got.deployment = 5;
    ck_assert_int_eq(mgmt_update_stored(dir, s.cert, DEV, 3, NOW, &got, &b, err, sizeof(err)), 0);
    ck_assert_int_eq(got.deployment, 0);
    /* the honest one: the accepted version, or one newer (stopped before mgmt.json) */
    ck_assert_int_eq(mgmt_write_file(dir, MGMT_UPDATE_BUNDLE, der, len, err, sizeof(err)), 0);
    ck_assert_int_eq(mgmt_update_mark_save(dir, &mk, err, sizeof(err)), 0);
    for (int64_t seq = 2; seq <= 3; seq++) {
        memset(&b, 0, sizeof(b));
        ck_assert_int_eq(mgmt_update_stored(dir, s.cert, DEV, seq, NOW, &got, &b, err, sizeof(err)), 0);
        ck_assert_int_eq(got.deployment, 7);
        ck_assert_str_eq(got.file, "update-1.4.2.bin");
        ck_assert_int_eq(b.version, 3);
        ck_assert_int_eq(b.deployment, 7);
        ck_assert_str_eq(b.sha256, sha);
        ck_assert_int_eq(b.size, (int64_t)strlen(file));
        mgmt_bundle_clear(&b);
    }
    /* an older bundle than the one accepted since, an expired one, one for another device */
    ck_assert_int_eq(mgmt_update_stored(dir, s.cert, DEV, 4, NOW, &got, &b, err, sizeof(err)), M2MVPN_E_BUNDLE);
    ck_assert_msg(strstr(err, "not newer") && strstr(err, MGMT_UPDATE_BUNDLE), "%s", err);
    ck_assert_int_eq(mgmt_update_stored(dir, s.cert, DEV, 3, NOW + 61, &got, &b, err, sizeof(err)), M2MVPN_E_BUNDLE);
    ck_assert_msg(strstr(err, "expired"), "%s", err);
    ck_assert_int_eq(mgmt_update_stored(dir, s.cert, "dev-ffffffffffffffff", 3, NOW, &got, &b, err, sizeof(err)),
                     M2MVPN_E_BUNDLE);
    ck_assert_msg(strstr(err, "another device"), "%s", err);
    /* update.json rewritten to another file content, size, version or deployment */
    static const char other_sha[] = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    for (int i = 0; i < 4; i++) {
        mgmt_update_mark t = mk;
        if (i == 0)
            memcpy(t.sha256, other_sha, sizeof(t.sha256));
        else if (i == 1)
            t.size = 4;
        else if (i == 2)
            t.version = 1LL << 60; /* would refuse every real update later */
        else
            t.deployment = 8;
        ck_assert_int_eq(mgmt_update_mark_save(dir, &t, err, sizeof(err)), 0);
        b.version = -5;
        err[0] = 0;
        ck_assert_int_eq(mgmt_update_stored(dir, s.cert, DEV, 3, NOW, &got, &b, err, sizeof(err)), M2MVPN_E_BUNDLE);
        ck_assert_msg(strstr(err, "does not describe"), "case %d: %s", i, err);
        ck_assert_int_eq(b.version, -5); /* untouched */
    }
    ck_assert_int_eq(mgmt_update_mark_save(dir, &mk, err, sizeof(err)), 0);
    /* the bundle signed by another key, or not there */
    ck_assert_int_eq(mgmt_write_file(dir, MGMT_UPDATE_BUNDLE, oder, olen, err, sizeof(err)), 0);
    ck_assert_int_eq(mgmt_update_stored(dir, s.cert, DEV, 3, NOW, &got, &b, err, sizeof(err)), M2MVPN_E_BUNDLE);
    ck_assert_msg(strstr(err, "signature does not verify"), "%s", err);
    char path[300];
    snprintf(path, sizeof(path), "%s/" MGMT_UPDATE_BUNDLE, dir);
    ck_assert_int_eq(unlink(path), 0);
    ck_assert_int_eq(mgmt_update_stored(dir, s.cert, DEV, 3, NOW, &got, &b, err, sizeof(err)), M2MVPN_E_BUNDLE);
    ck_assert_msg(strstr(err, "missing"), "%s", err);
    ck_assert_str_eq(got.file, "update-1.4.2.bin"); /* what the caller removes */
    /* dropping the mark drops its bundle */
    ck_assert_int_eq(mgmt_write_file(dir, MGMT_UPDATE_BUNDLE, der, len, err, sizeof(err)), 0);
    mgmt_update_mark none = { 0 };
    ck_assert_int_eq(mgmt_update_mark_save(dir, &none, err, sizeof(err)), 0);
    ck_assert(!has_file(dir, "update.json") && !has_file(dir, MGMT_UPDATE_BUNDLE));
    free(man);
    OPENSSL_free(der);
    OPENSSL_free(oder);
    free_signer(&s);
    free_signer(&other);
    rm_dir(dir);
}
END_TEST

/* ------------------------------ day N: streamed download, installer */

static bool dir_has(const char *dir, const char *name)
{
    char p[512];
    snprintf(p, sizeof(p), "%s/%s", dir, name);
    return access(p, F_OK) == 0;
}

/* Bytes of a large artifact in chunks as libcurl hands them: stored only
 * once size and sha256 are the signed ones, 0600, no temporary left. */
START_TEST(test_dl_stream_verified)
{
    char dir[] = "/tmp/m2mvpn-dl-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    size_t n = 3u << 20; /* 3 MiB: more than any in-memory body (MGMT_BUNDLE_MAX) */
    uint8_t *data = malloc(n);
    for (size_t i = 0; i < n; i++)
        data[i] = (uint8_t)(i * 7 + (i >> 11));
    unsigned char md[32];
    char sha[65], err[300] = "";
    EVP_Digest(data, n, md, NULL, EVP_sha256(), NULL);
    for (int i = 0; i < 32; i++)
        snprintf(sha + 2 * i, 3, "%02x", md[i]);
    mgmt_dl d;
    ck_assert_msg(mgmt_dl_open(&d, dir, "update-2.0.bin", (int64_t)n, sha, err, sizeof(err)) == 0, "%s", err);
    ck_assert(dir_has(dir, ".update-2.0.bin.part"));
    ck_assert(!dir_has(dir, "update-2.0.bin")); /* nothing of the final name while it streams */
    for (size_t off = 0; off < n; off += 16384)
        ck_assert_int_eq(mgmt_dl_write(&d, data + off, n - off < 16384 ? n - off : 16384), 0);
    ck_assert_msg(mgmt_dl_finish(&d, err, sizeof(err)) == 0, "%s", err);
    ck_assert(!dir_has(dir, ".update-2.0.bin.part"));
    char path[512];
    snprintf(path, sizeof(path), "%s/update-2.0.bin", dir);
    struct stat st;
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert_int_eq((int)(st.st_mode & 0777), 0600);
    ck_assert_int_eq((long long)st.st_size, (long long)n);
    FILE *f = fopen(path, "rb");
    uint8_t *back = malloc(n);
    ck_assert_uint_eq(fread(back, 1, n, f), n);
    fclose(f);
    ck_assert(memcmp(back, data, n) == 0);
    unlink(path);
    rmdir(dir);
    free(back);
    free(data);
}
END_TEST

/* Refusals: a byte past the signed size (stopped at once, nothing of it
 * written), a changed byte (sha256), a short file; each leaves no file. */
START_TEST(test_dl_refused)
{
    char dir[] = "/tmp/m2mvpn-dl-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    static const char file[] = "firmware image bytes";
    size_t n = strlen(file);
    char sha[65], err[300] = "";
    sha_hex(file, sha);
    mgmt_dl d;

    /* more than signed */
    ck_assert_int_eq(mgmt_dl_open(&d, dir, "update-1.bin", (int64_t)n, sha, err, sizeof(err)), 0);
    ck_assert_int_eq(mgmt_dl_write(&d, file, n - 1), 0);
    ck_assert_int_eq(mgmt_dl_write(&d, "xy", 2), -1);
    ck_assert_ptr_nonnull(strstr(d.why, "more than the signed size"));
    ck_assert(!d.io_error);
    ck_assert_int_eq(mgmt_dl_write(&d, "x", 1), -1); /* stays refused */
    struct stat st;
    char tmp[512];
    snprintf(tmp, sizeof(tmp), "%s/.update-1.bin.part", dir);
    ck_assert_int_eq(stat(tmp, &st), 0);
    ck_assert_int_eq((long long)st.st_size, (long long)(n - 1));
    ck_assert_int_eq(mgmt_dl_finish(&d, err, sizeof(err)), M2MVPN_E_BUNDLE);
    ck_assert_ptr_nonnull(strstr(err, "more than the signed size"));
    ck_assert(!dir_has(dir, "update-1.bin") && !dir_has(dir, ".update-1.bin.part"));

    /* one byte changed */
    char bad[sizeof(file)];
    memcpy(bad, file, sizeof(file));
    bad[3] ^= 1;
    ck_assert_int_eq(mgmt_dl_open(&d, dir, "update-1.bin", (int64_t)n, sha, err, sizeof(err)), 0);
    ck_assert_int_eq(mgmt_dl_write(&d, bad, n), 0);
    ck_assert_int_eq(mgmt_dl_finish(&d, err, sizeof(err)), M2MVPN_E_BUNDLE);
    ck_assert_ptr_nonnull(strstr(err, "sha256 does not match"));
    ck_assert(!dir_has(dir, "update-1.bin") && !dir_has(dir, ".update-1.bin.part"));

    /* short */
    ck_assert_int_eq(mgmt_dl_open(&d, dir, "update-1.bin", (int64_t)n, sha, err, sizeof(err)), 0);
    ck_assert_int_eq(mgmt_dl_write(&d, file, n - 1), 0);
    ck_assert_int_eq(mgmt_dl_finish(&d, err, sizeof(err)), M2MVPN_E_BUNDLE);
    ck_assert_ptr_nonnull(strstr(err, "bytes"));
    ck_assert(!dir_has(dir, "update-1.bin") && !dir_has(dir, ".update-1.bin.part"));

    /* aborted (transfer failed), a stale temporary swept, bad arguments */
    ck_assert_int_eq(mgmt_dl_open(&d, dir, "update-1.bin", (int64_t)n, sha, err, sizeof(err)), 0);
    ck_assert_int_eq(mgmt_dl_write(&d, file, 4), 0);
    mgmt_dl_abort(&d);
    mgmt_dl_abort(&d);
    ck_assert(!dir_has(dir, ".update-1.bin.part"));
    ck_assert_int_eq(mgmt_dl_open(&d, dir, "update-9.bin", (int64_t)n, sha, err, sizeof(err)), 0);
    close(d.fd); /* as a SIGKILL leaves it */
    d.fd = -1;
    ck_assert(dir_has(dir, ".update-9.bin.part"));
    mgmt_dl_sweep(dir);
    ck_assert(!dir_has(dir, ".update-9.bin.part"));
    EVP_MD_CTX_free(d.md);
    ck_assert_int_eq(mgmt_dl_open(&d, dir, "../x.bin", 5, sha, err, sizeof(err)), M2MVPN_E_INVAL);
    ck_assert_int_eq(mgmt_dl_open(&d, dir, "u.bin", MGMT_ARTIFACT_MAX + 1, sha, err, sizeof(err)),
                     M2MVPN_E_INVAL);
    ck_assert_int_eq(mgmt_dl_open(&d, dir, "u.bin", 5, "00", err, sizeof(err)), M2MVPN_E_INVAL);
    ck_assert_int_eq(rmdir(dir), 0); /* empty: nothing left behind */
}
END_TEST

/* The download through libcurl against openssl s_server -HTTP (each file
 * it serves is a whole HTTP answer): a correct file is stored; a
 * Content-Length above the signed size is refused before the body; a body
 * without one is stopped at its first byte beyond the signed size; a 404 is
 * no file. Nothing else is left in the folder. */
static void put_answer(const char *dir, const char *name, const char *head, const uint8_t *body, size_t n)
{
    char p[512];
    snprintf(p, sizeof(p), "%s/%s", dir, name);
    FILE *f = fopen(p, "wb");
    ck_assert_ptr_nonnull(f);
    fputs(head, f);
    fwrite(body, 1, n, f);
    fclose(f);
}

START_TEST(test_dl_over_https)
{
    char dir[] = "/tmp/m2mvpn-dlh-XXXXXX", srv[] = "/tmp/m2mvpn-dls-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    ck_assert_ptr_nonnull(mkdtemp(srv));
    char cmd[1024];
    snprintf(cmd, sizeof(cmd),
             "cd %s && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 "
             "-subj /CN=localhost -addext subjectAltName=DNS:localhost -keyout k.pem -out c.pem 2>/dev/null", srv);
    ck_assert_int_eq(system(cmd), 0);
    size_t n = 200000;
    uint8_t *data = malloc(n);
    for (size_t i = 0; i < n; i++)
        data[i] = (uint8_t)(i * 13 + 5);
    size_t small = 50000;
    unsigned char md[32];
    char sha[65], head[128], err[600] = "";
    EVP_Digest(data, small, md, NULL, EVP_sha256(), NULL);
    for (int i = 0; i < 32; i++)
        snprintf(sha + 2 * i, 3, "%02x", md[i]);
    snprintf(head, sizeof(head), "HTTP/1.0 200 OK\r\nContent-Length: %zu\r\n\r\n", small);
    put_answer(srv, "ok", head, data, small);
    snprintf(head, sizeof(head), "HTTP/1.0 200 OK\r\nContent-Length: %zu\r\n\r\n", n);
    put_answer(srv, "long", head, data, n);
    put_answer(srv, "nolen", "HTTP/1.0 200 OK\r\n\r\n", data, n);
    put_answer(srv, "gone", "HTTP/1.0 404 Not Found\r\n\r\n", (const uint8_t *)"{\"error\": \"no such artifact\"}", 29);
    int port = 20000 + (int)(getpid() % 20000);
    pid_t pid = fork();
    if (pid == 0) {
        char acc[32];
        snprintf(acc, sizeof(acc), "127.0.0.1:%d", port);
        if (chdir(srv) < 0)
            _exit(1);
        int nul = open("/dev/null", O_RDWR);
        dup2(nul, 0), dup2(nul, 1), dup2(nul, 2);
        execlp("openssl", "openssl", "s_server", "-quiet", "-HTTP", "-accept", acc, "-cert", "c.pem", "-key",
               "k.pem", (char *)NULL);
        _exit(127);
    }
    char url[64], ca[512];
    snprintf(url, sizeof(url), "https://localhost:%d", port);
    snprintf(ca, sizeof(ca), "%s/c.pem", srv);
    mgmt_tls t = { .url = url, .server_ca = ca };
    mgmt_dl d;
    long status = 0;
    int r = -1;
    for (int i = 0; i < 50 && r != 0; i++) { /* until s_server listens */
        usleep(100000);
        ck_assert_int_eq(mgmt_dl_open(&d, dir, "update-1.bin", (int64_t)small, sha, err, sizeof(err)), 0);
        r = mgmt_http_download(&t, "/ok", &d, &status, err, sizeof(err));
        if (r != 0)
            mgmt_dl_abort(&d);
    }
    ck_assert_msg(r == 0 && status == 200, "r=%d status=%ld %s", r, status, err);
    ck_assert_msg(mgmt_dl_finish(&d, err, sizeof(err)) == 0, "%s", err);
    ck_assert(dir_has(dir, "update-1.bin"));
    char p[512];
    snprintf(p, sizeof(p), "%s/update-1.bin", dir);
    unlink(p);

    const char *refused[] = { "/long", "/nolen" };
    for (size_t i = 0; i < 2; i++) {
        ck_assert_int_eq(mgmt_dl_open(&d, dir, "update-1.bin", (int64_t)small, sha, err, sizeof(err)), 0);
        r = mgmt_http_download(&t, refused[i], &d, &status, err, sizeof(err));
        ck_assert_msg(r == M2MVPN_E_BUNDLE, "%s: r=%d %s", refused[i], r, err);
        ck_assert_msg(strstr(err, "signed size"), "%s: %s", refused[i], err);
        /* the chunk carrying a byte too many was refused whole: no byte past the size written */
        ck_assert_int_le((long long)d.got, (long long)small);
        if (i == 0) /* refused on the announced length, before the body */
            ck_assert_int_eq((long long)d.got, 0);
        mgmt_dl_abort(&d);
        ck_assert(!dir_has(dir, "update-1.bin") && !dir_has(dir, ".update-1.bin.part"));
    }
    ck_assert_int_eq(mgmt_dl_open(&d, dir, "update-1.bin", (int64_t)small, sha, err, sizeof(err)), 0);
    r = mgmt_http_download(&t, "/gone", &d, &status, err, sizeof(err));
    ck_assert_int_eq(r, 0);
    ck_assert_int_eq(status, 404);
    ck_assert_msg(strstr(err, "HTTP 404") && strstr(err, "no such artifact"), "%s", err);
    mgmt_dl_abort(&d);
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
    ck_assert_int_eq(rmdir(dir), 0);
    snprintf(cmd, sizeof(cmd), "rm -rf %s", srv);
    ck_assert_int_eq(system(cmd), 0);
    free(data);
}
END_TEST

static void write_script(const char *path, const char *body)
{
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(body, f);
    fclose(f);
    chmod(path, 0700);
}

/* The installer: argv {installer, file, version}, no shell around it,
 * stdin /dev/null, output kept bounded, exit status the result, killed
 * (its whole group) after its time. */
START_TEST(test_install_run)
{
    char dir[] = "/tmp/m2mvpn-inst-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char sh[512], rec[512], out[MGMT_INSTALL_OUT_MAX], err[300] = "", body[1024];
    snprintf(sh, sizeof(sh), "%s/inst.sh", dir);
    snprintf(rec, sizeof(rec), "%s/rec", dir);
    snprintf(body, sizeof(body),
             "#!/bin/sh\nprintf '%%s|' \"$0\" \"$@\" > %s\nread x && echo stdin-not-empty\necho \"installing $2\"\n"
             "echo oops >&2\nexit 0\n", rec);
    write_script(sh, body);
    ck_assert_msg(mgmt_install_run(sh, "/var/lib/x/update-1.4.2.bin", -1, "1.4.2; rm -rf /", 30, NULL, out, sizeof(out),
                                   err, sizeof(err)) == 0, "%s", err);
    FILE *f = fopen(rec, "r");
    char got[1024] = "";
    ck_assert_ptr_nonnull(fgets(got, sizeof(got), f));
    fclose(f);
    char want[1024];
    snprintf(want, sizeof(want), "%s|/var/lib/x/update-1.4.2.bin|1.4.2; rm -rf /|", sh);
    ck_assert_str_eq(got, want);
    ck_assert_ptr_nonnull(strstr(out, "installing 1.4.2; rm -rf /"));
    ck_assert_ptr_nonnull(strstr(out, "oops"));
    ck_assert_ptr_null(strstr(out, "stdin-not-empty"));

    write_script(sh, "#!/bin/sh\necho failing\nexit 3\n");
    ck_assert_int_eq(mgmt_install_run(sh, "/f", -1, "1", 30, NULL, out, sizeof(out), err, sizeof(err)), M2MVPN_E_SYSTEM);
    ck_assert_ptr_nonnull(strstr(err, "exit status 3"));
    ck_assert_ptr_nonnull(strstr(out, "failing"));

    /* output beyond the bound: read and dropped, the run still ends */
    write_script(sh, "#!/bin/sh\nhead -c 300000 /dev/zero | tr '\\0' a\nexit 0\n");
    ck_assert_int_eq(mgmt_install_run(sh, "/f", -1, "1", 30, NULL, out, 100, err, sizeof(err)), 0);
    ck_assert_uint_eq(strlen(out), 99);

    /* too slow: killed with what it started */
    snprintf(body, sizeof(body), "#!/bin/sh\n(sleep 30; touch %s/late) &\nsleep 30\nexit 0\n", dir);
    write_script(sh, body);
    time_t t0 = time(NULL);
    ck_assert_int_eq(mgmt_install_run(sh, "/f", -1, "1", 1, NULL, out, sizeof(out), err, sizeof(err)), M2MVPN_E_SYSTEM);
    ck_assert_ptr_nonnull(strstr(err, "did not finish in time"));
    ck_assert_int_le((long)(time(NULL) - t0), 10);

    /* cancelled (the engine stops) */
    atomic_bool cancel = true;
    ck_assert_int_eq(mgmt_install_run(sh, "/f", -1, "1", 60, &cancel, out, sizeof(out), err, sizeof(err)),
                     M2MVPN_E_SYSTEM);
    ck_assert_ptr_nonnull(strstr(err, "stopped"));

    /* not there */
    snprintf(body, sizeof(body), "%s/none", dir);
    ck_assert_int_eq(mgmt_install_run(body, "/f", -1, "1", 5, NULL, out, sizeof(out), err, sizeof(err)), M2MVPN_E_SYSTEM);
    ck_assert_ptr_nonnull(strstr(err, "could not be started"));
    sleep(1);
    snprintf(body, sizeof(body), "%s/late", dir);
    ck_assert(access(body, F_OK) < 0); /* the background child went with the group */
    unlink(rec);
    unlink(sh);
    ck_assert_int_eq(rmdir(dir), 0);
}
END_TEST

/* The installer reads the file that was hashed, by the descriptor it is
 * given: a file renamed to the path after the check never reaches it. */
START_TEST(test_install_gets_the_verified_file)
{
    char dir[] = "/tmp/m2mvpn-instfd-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char sh[512], rec[512], path[512], out[MGMT_INSTALL_OUT_MAX], err[512] = "", body[1024];
    static const char sha[] = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"; /* "test" */
    snprintf(sh, sizeof(sh), "%s/inst.sh", dir);
    snprintf(rec, sizeof(rec), "%s/rec", dir);
    snprintf(path, sizeof(path), "%s/update-1.bin", dir);
    snprintf(body, sizeof(body), "#!/bin/sh\n{ printf '%%s|' \"$1\"; cat \"$1\"; } > %s\nexit 0\n", rec);
    write_script(sh, body);
    ck_assert_int_eq(mgmt_write_file(dir, "update-1.bin", "test", 4, err, sizeof(err)), 0);
    int fd = -1;
    ck_assert_msg(mgmt_file_open_verified(path, 4, sha, &fd, err, sizeof(err)) == 0, "%s", err);
    ck_assert_int_ge(fd, 0);
    /* swapped after the check (a rename over the path) */
    ck_assert_int_eq(mgmt_write_file(dir, "update-1.bin", "evil", 4, err, sizeof(err)), 0);
    ck_assert_msg(mgmt_install_run(sh, path, fd, "1", 30, NULL, out, sizeof(out), err, sizeof(err)) == 0, "%s", err);
    close(fd);
    FILE *f = fopen(rec, "r");
    ck_assert_ptr_nonnull(f);
    char got[256] = "";
    ck_assert_ptr_nonnull(fgets(got, sizeof(got), f));
    fclose(f);
    ck_assert_str_eq(got, "/dev/fd/3|test");
    /* the swapped file itself is refused, no descriptor given */
    fd = -1;
    ck_assert_int_eq(mgmt_file_open_verified(path, 4, sha, &fd, err, sizeof(err)), M2MVPN_E_BUNDLE);
    ck_assert_int_eq(fd, -1);
    unlink(path);
    ck_assert_int_eq(mgmt_file_open_verified(path, 4, sha, &fd, err, sizeof(err)), M2MVPN_E_IO);
    ck_assert_int_eq(fd, -1);
    unlink(rec);
    unlink(sh);
    ck_assert_int_eq(rmdir(dir), 0);
}
END_TEST

/* A host process running with fds 0-2 closed: the verified file, /dev/null
 * and the output pipe all come out below 3, and the installer still gets
 * each where it belongs (the file as fd 3, its output captured). */
START_TEST(test_install_with_std_fds_closed)
{
    char dir[] = "/tmp/m2mvpn-inst012-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char sh[512], rec[512], path[512], out[MGMT_INSTALL_OUT_MAX], err[512] = "", body[1024];
    static const char sha[] = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"; /* "test" */
    snprintf(sh, sizeof(sh), "%s/inst.sh", dir);
    snprintf(rec, sizeof(rec), "%s/rec", dir);
    snprintf(path, sizeof(path), "%s/update-1.bin", dir);
    snprintf(body, sizeof(body), "#!/bin/sh\n{ printf '%%s|' \"$1\"; cat \"$1\"; printf '|%%s' \"$(cat)\"; } > %s\n"
             "echo installed\nexit 0\n", rec);
    write_script(sh, body);
    ck_assert_int_eq(mgmt_write_file(dir, "update-1.bin", "test", 4, err, sizeof(err)), 0);
    int saved[3];
    for (int i = 0; i < 3; i++)
        ck_assert_int_ge(saved[i] = fcntl(i, F_DUPFD_CLOEXEC, 10), 10);
    close(0);
    close(1);
    close(2);
    int fd = -1;
    int r = mgmt_file_open_verified(path, 4, sha, &fd, err, sizeof(err));
    int fd_was = fd; /* 0: the lowest free */
    if (r == 0)
        r = mgmt_install_run(sh, path, fd, "1", 30, NULL, out, sizeof(out), err, sizeof(err));
    if (fd >= 0)
        close(fd);
    for (int i = 0; i < 3; i++) {
        dup2(saved[i], i);
        close(saved[i]);
    }
    ck_assert_msg(r == 0, "%s", err);
    ck_assert_int_eq(fd_was, 0);
    ck_assert_msg(strstr(out, "installed") != NULL, "output: %s", out);
    FILE *f = fopen(rec, "r");
    ck_assert_ptr_nonnull(f);
    char got[256] = "";
    ck_assert_ptr_nonnull(fgets(got, sizeof(got), f));
    fclose(f);
    ck_assert_str_eq(got, "/dev/fd/3|test|"); /* stdin: /dev/null, empty */
    unlink(path);
    unlink(rec);
    unlink(sh);
    ck_assert_int_eq(rmdir(dir), 0);
}
END_TEST

/* management.installer in the bootstrap: an absolute path of an executable. */
START_TEST(test_bootstrap_installer)
{
    char dir[] = "/tmp/m2mvpn-inst-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char sh[512], j[2048], err[512] = "";
    snprintf(sh, sizeof(sh), "%s/install", dir);
    write_script(sh, "#!/bin/sh\nexit 0\n");
    profile_set *set = NULL;
    snprintf(j, sizeof(j), "%s", dq(BOOT_HEAD "'key': {'provider': 'file'}, 'installer': '@', "
                                             "'installer_timeout_s': 60}}"));
    char full[2600];
    char *at = strchr(j, '@');
    snprintf(full, sizeof(full), "%.*s%s%s", (int)(at - j), j, sh, at + 1);
    ck_assert_msg(profile_set_parse(full, strlen(full), "/", &set, err, sizeof(err)) == 0, "%s", err);
    ck_assert_str_eq(set->items[0].mgmt.installer, sh);
    ck_assert_uint_eq(set->items[0].mgmt.installer_timeout_s, 60);
    profile_set_free(set);
    const char *plain = dq(BOOT_HEAD "'key': {'provider': 'file'}}}");
    ck_assert_int_eq(profile_set_parse(plain, strlen(plain), "/", &set, err, sizeof(err)), 0);
    ck_assert_ptr_null(set->items[0].mgmt.installer);
    ck_assert_uint_eq(set->items[0].mgmt.installer_timeout_s, 900);
    profile_set_free(set);

    const struct {
        const char *path, *why;
    } bad[] = {
        { "install", "management.installer: must be an absolute path" },
        { "/nonexistent/install", "management.installer: must name an executable file" },
        { "/tmp", "management.installer: must name an executable file (not a regular file)" },
        { "", "management.installer" },
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(full, sizeof(full), "%.*s%s%s", (int)(at - j), j, bad[i].path, at + 1);
        set = NULL;
        ck_assert_int_eq(profile_set_parse(full, strlen(full), "/", &set, err, sizeof(err)), M2MVPN_E_PROFILE);
        ck_assert_msg(strstr(err, bad[i].why), "case %zu: %s", i, err);
    }
    chmod(sh, 0600); /* no x bit: not even root may execute it */
    snprintf(full, sizeof(full), "%.*s%s%s", (int)(at - j), j, sh, at + 1);
    ck_assert_int_eq(profile_set_parse(full, strlen(full), "/", &set, err, sizeof(err)), M2MVPN_E_PROFILE);
    ck_assert_msg(strstr(err, "must name an executable file"), "%s", err);
    const char *t = dq(BOOT_HEAD "'key': {'provider': 'file'}, 'installer_timeout_s': 5}}");
    ck_assert_int_eq(profile_set_parse(t, strlen(t), "/", &set, err, sizeof(err)), M2MVPN_E_PROFILE);
    ck_assert_ptr_nonnull(strstr(err, "management.installer_timeout_s"));
    unlink(sh);
    rmdir(dir);
}
END_TEST

/* Renewal at about 2/3 of the lifetime, jitter bounded, never before the
 * middle nor after 3/4 of it, whatever the draw; 90 s certificates (the
 * interop test's) and a year alike. */
START_TEST(test_renew_schedule)
{
    const int64_t nb = 1700000000;
    const int64_t lifes[] = { 60, 90, 3600, 365 * 86400 };
    for (size_t k = 0; k < sizeof(lifes) / sizeof(lifes[0]); k++) {
        int64_t na = nb + lifes[k];
        int64_t lo = INT64_MAX, hi = INT64_MIN;
        for (int i = 0; i <= 100; i++) {
            double rnd = i / 100.0; /* 1.0 included: clamped */
            int64_t t = mgmt_renew_at(nb, na, rnd);
            ck_assert_int_ge(t, nb + lifes[k] / 2);
            ck_assert_int_le(t, nb + lifes[k] * 3 / 4);
            lo = t < lo ? t : lo;
            hi = t > hi ? t : hi;
        }
        /* the middle draw is 2/3; the draws do spread the devices */
        int64_t mid = mgmt_renew_at(nb, na, 0.5);
        ck_assert_int_le(llabs(mid - (nb + lifes[k] * 2 / 3)), 1);
        if (lifes[k] >= 90)
            ck_assert_int_gt(hi - lo, lifes[k] / 18);
    }
    /* a year: renewed about 243 days in, not days before expiry */
    int64_t y = mgmt_renew_at(nb, nb + 365 * 86400, 0.5);
    ck_assert_int_eq((y - nb) / 86400, 243);
    /* validity upside down: at once (not_before), never in the future */
    ck_assert_int_eq(mgmt_renew_at(nb, nb, 0.5), nb);
    ck_assert_int_eq(mgmt_renew_at(nb, nb - 10, 0.9), nb);
}
END_TEST

/* Back-off: 60 s doubling to 1 h, and a retry always long before expiry. */
START_TEST(test_renew_backoff)
{
    const int64_t now = 1700000000, far = now + 365 * 86400;
    ck_assert_int_eq(mgmt_renew_retry_s(1, now, far), 60);
    ck_assert_int_eq(mgmt_renew_retry_s(2, now, far), 120);
    ck_assert_int_eq(mgmt_renew_retry_s(3, now, far), 240);
    ck_assert_int_eq(mgmt_renew_retry_s(6, now, far), 1920);
    ck_assert_int_eq(mgmt_renew_retry_s(7, now, far), 3600);
    ck_assert_int_eq(mgmt_renew_retry_s(1000, now, far), 3600);
    /* 30 min left: never more than half of it, so attempts keep coming */
    ck_assert_int_eq(mgmt_renew_retry_s(7, now, now + 1800), 900);
    /* 20 s left (a 60 s test certificate): 10 s; expired: the floor */
    ck_assert_int_eq(mgmt_renew_retry_s(3, now, now + 20), 10);
    ck_assert_int_eq(mgmt_renew_retry_s(3, now, now - 5), 5);
}
END_TEST

/* ------------------------------------------- day N: renewal failure texts */

/* A device certificate issued by `ca` for `key`. */
static X509 *issue(const signer *ca, EVP_PKEY *key, const char *cn)
{
    X509 *c = X509_new();
    X509_set_version(c, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(c), 9);
    X509_NAME_add_entry_by_txt(X509_get_subject_name(c), "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(c, X509_get_subject_name(ca->cert));
    X509_gmtime_adj(X509_getm_notBefore(c), -3600);
    X509_gmtime_adj(X509_getm_notAfter(c), 86400);
    X509_set_pubkey(c, key);
    ck_assert_int_gt(X509_sign(c, ca->key, EVP_sha256()), 0);
    return c;
}

typedef struct kur_refusal {
    int failinfo;
    const char *text;
} kur_refusal;

static OSSL_CMP_PKISI *refuse_kur(OSSL_CMP_SRV_CTX *srv, const OSSL_CMP_MSG *req, int id, const OSSL_CRMF_MSG *crm,
                                  const X509_REQ *p10, X509 **cert, STACK_OF(X509) **chain, STACK_OF(X509) **capubs)
{
    (void)req, (void)id, (void)crm, (void)p10, (void)cert, (void)chain, (void)capubs;
    const kur_refusal *k = OSSL_CMP_SRV_CTX_get0_custom_ctx(srv);
    return OSSL_CMP_STATUSINFO_new(OSSL_CMP_PKISTATUS_rejection, 1 << k->failinfo, k->text);
}

static void no_token_named(const char *err)
{
    ck_assert_msg(!strstr(err, "token") && !strstr(err, "enrol") && !strstr(err, "bootstrap"),
                  "a renewal failure names the enrolment: %s", err);
    ck_assert_msg(strstr(err, "CMP KUR") != NULL, "the text does not say the key update failed: %s", err);
}

/* ---------------------------------------- renewal: the swap of files */

static void write_key(const char *dir, const char *name, EVP_PKEY *k)
{
    char p[512];
    snprintf(p, sizeof(p), "%s/%s", dir, name);
    FILE *f = fopen(p, "w");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL), 1);
    fclose(f);
}

/* A certificate for k (self-signed is enough here) in dir/name. */
static void write_cert_for(const char *dir, const char *name, EVP_PKEY *k)
{
    X509 *c = X509_new();
    X509_set_version(c, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(c), 11);
    X509_NAME_add_entry_by_txt(X509_get_subject_name(c), "CN", MBSTRING_ASC, (const unsigned char *)DEV, -1, -1,
                               0);
    X509_set_issuer_name(c, X509_get_subject_name(c));
    X509_gmtime_adj(X509_getm_notBefore(c), -60);
    X509_gmtime_adj(X509_getm_notAfter(c), 3600);
    X509_set_pubkey(c, k);
    ck_assert_int_gt(X509_sign(c, k, EVP_sha256()), 0);
    char p[512];
    snprintf(p, sizeof(p), "%s/%s", dir, name);
    FILE *f = fopen(p, "w");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(PEM_write_X509(f, c), 1);
    fclose(f);
    X509_free(c);
}

/* Does dir/name (a certificate or a key file) hold the public key of k? */
static bool file_holds(const char *dir, const char *name, EVP_PKEY *k)
{
    char p[512];
    snprintf(p, sizeof(p), "%s/%s", dir, name);
    FILE *f = fopen(p, "r");
    if (!f)
        return false;
    EVP_PKEY *got = NULL;
    X509 *c = PEM_read_X509(f, NULL, NULL, NULL);
    if (!c) {
        rewind(f);
        got = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    }
    fclose(f);
    bool eq = EVP_PKEY_eq(c ? X509_get0_pubkey(c) : got, k) == 1;
    X509_free(c);
    EVP_PKEY_free(got);
    return eq;
}

static int key_reads;

static EVP_PKEY *pem_key_of(void *arg, const char *path)
{
    (void)arg;
    key_reads++;
    FILE *f = fopen(path, "r");
    EVP_PKEY *k = f ? PEM_read_PrivateKey(f, NULL, NULL, NULL) : NULL;
    if (f)
        fclose(f);
    return k;
}

/* The renewal's swap puts in a certificate only next to its own key: a
 * device.crt.pem.next left by a failed or stopped attempt, or written by
 * someone else, is removed and the current pair stays usable. */
START_TEST(test_renew_swap_checks_the_key)
{
    char dir[] = "/tmp/m2mvpn-swap-XXXXXX", kp[300], err[1024] = "";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(kp, sizeof(kp), "%s/device.key.pem", dir);
    EVP_PKEY *old = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256"), *new = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256"),
             *third = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    bool moved = true;

    /* 1. the honest swap */
    write_key(dir, "device.key.pem", old);
    write_cert_for(dir, "device.crt.pem", old);
    write_key(dir, "device.key.pem.next", new);
    write_cert_for(dir, "device.crt.pem.next", new);
    ck_assert_int_eq(mgmt_renew_swap(dir, kp, true, pem_key_of, NULL, &moved, err, sizeof(err)), 0);
    ck_assert(moved);
    ck_assert(file_holds(dir, "device.key.pem", new) && file_holds(dir, "device.crt.pem", new));
    ck_assert(!has_file(dir, "device.key.pem.next") && !has_file(dir, "device.crt.pem.next"));

    /* 2. a certificate of another key next to the new key: neither is used */
    write_key(dir, "device.key.pem", old);
    write_cert_for(dir, "device.crt.pem", old);
    write_key(dir, "device.key.pem.next", new);
    write_cert_for(dir, "device.crt.pem.next", third);
    ck_assert_int_eq(mgmt_renew_swap(dir, kp, true, pem_key_of, NULL, &moved, err, sizeof(err)), M2MVPN_E_CERT);
    ck_assert_msg(strstr(err, "does not hold the public key of"), "%s", err);
    ck_assert(!moved);
    ck_assert(file_holds(dir, "device.key.pem", old) && file_holds(dir, "device.crt.pem", old));
    ck_assert(!has_file(dir, "device.key.pem.next") && !has_file(dir, "device.crt.pem.next"));

    /* 3. <key>.next gone (a failed rename removed it), its certificate
     * left: never renamed over device.crt.pem next to the old key */
    write_cert_for(dir, "device.crt.pem.next", new);
    key_reads = 0;
    ck_assert_int_eq(mgmt_renew_swap(dir, kp, true, pem_key_of, NULL, &moved, err, sizeof(err)), M2MVPN_E_CERT);
    ck_assert_int_eq(key_reads, 1);
    ck_assert(file_holds(dir, "device.key.pem", old) && file_holds(dir, "device.crt.pem", old));
    ck_assert(!has_file(dir, "device.crt.pem.next"));

    /* 4. stopped between the two renames: the key is in, the certificate follows */
    write_key(dir, "device.key.pem", new);
    write_cert_for(dir, "device.crt.pem.next", new);
    ck_assert_int_eq(mgmt_renew_swap(dir, kp, true, pem_key_of, NULL, &moved, err, sizeof(err)), 0);
    ck_assert(!moved);
    ck_assert(file_holds(dir, "device.crt.pem", new) && !has_file(dir, "device.crt.pem.next"));

    /* 5. the key cannot be renamed in: both .next files go */
    char cp[300], kdir[300];
    snprintf(cp, sizeof(cp), "%s/device.crt.pem", dir);
    snprintf(kdir, sizeof(kdir), "%s/keydir", dir);
    ck_assert_int_eq(mkdir(kdir, 0700), 0);
    char kdir_file[400];
    snprintf(kdir_file, sizeof(kdir_file), "%s/x", kdir);
    FILE *f = fopen(kdir_file, "w"); /* a non-empty folder: rename(file, folder) fails */
    ck_assert_ptr_nonnull(f);
    fclose(f);
    write_key(dir, "keydir.next", third);
    write_cert_for(dir, "device.crt.pem.next", third);
    ck_assert_int_eq(mgmt_renew_swap(dir, kdir, true, pem_key_of, NULL, &moved, err, sizeof(err)), M2MVPN_E_IO);
    ck_assert(!moved);
    ck_assert(!has_file(dir, "keydir.next") && !has_file(dir, "device.crt.pem.next"));
    ck_assert(file_holds(dir, "device.crt.pem", new));

    /* 6. the certificate cannot be renamed after the key moved: it stays
     * for the next start (the new key's only certificate) */
    write_key(dir, "device.key.pem", old);
    write_key(dir, "device.key.pem.next", third);
    write_cert_for(dir, "device.crt.pem.next", third);
    ck_assert_int_eq(unlink(cp), 0);
    ck_assert_int_eq(mkdir(cp, 0700), 0);
    char cp_file[400];
    snprintf(cp_file, sizeof(cp_file), "%s/x", cp);
    f = fopen(cp_file, "w");
    ck_assert_ptr_nonnull(f);
    fclose(f);
    ck_assert_int_eq(mgmt_renew_swap(dir, kp, true, pem_key_of, NULL, &moved, err, sizeof(err)), M2MVPN_E_IO);
    ck_assert(moved);
    ck_assert(file_holds(dir, "device.key.pem", third) && file_holds(dir, "device.crt.pem.next", third));

    EVP_PKEY_free(old);
    EVP_PKEY_free(new);
    EVP_PKEY_free(third);
    rm_dir(dir);
}
END_TEST

/* A failed renewal says what failed: the server's refusal (with its reason),
 * the network; never the enrolment token, which plays no part in a KUR. */
START_TEST(test_renew_failure_text)
{
    signer ca = make_signer("device CA");
    EVP_PKEY *old = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256"), *nk = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    ck_assert_ptr_nonnull(old);
    ck_assert_ptr_nonnull(nk);
    X509 *cert = issue(&ca, old, DEV), *got = NULL;
    char err[600] = "";
    int r;
    if (_i < 2) {
        /* the server refuses: badMessageCheck (what it answers a revoked
         * or unknown certificate) and a plain refusal */
        kur_refusal k = _i == 0 ? (kur_refusal){ OSSL_CMP_PKIFAILUREINFO_badMessageCheck, "certificate revoked" }
                                : (kur_refusal){ OSSL_CMP_PKIFAILUREINFO_badRequest, "no such device" };
        OSSL_CMP_SRV_CTX *srv = OSSL_CMP_SRV_CTX_new(NULL, NULL);
        ck_assert_ptr_nonnull(srv);
        OSSL_CMP_CTX *sc = OSSL_CMP_SRV_CTX_get0_cmp_ctx(srv);
        ck_assert_int_eq(OSSL_CMP_SRV_CTX_init(srv, &k, refuse_kur, NULL, NULL, NULL, NULL, NULL), 1);
        ck_assert_int_eq(OSSL_CMP_CTX_set1_cert(sc, ca.cert), 1);
        ck_assert_int_eq(OSSL_CMP_CTX_set1_pkey(sc, ca.key), 1);
        ck_assert_int_eq(OSSL_CMP_CTX_set1_srvCert(sc, cert), 1); /* the device's signature verifies */
        OSSL_CMP_CTX_set_log_cb(sc, NULL);
        r = mgmt_cmp_kur_local(srv, old, cert, nk, &got, err, sizeof(err));
        OSSL_CMP_SRV_CTX_free(srv);
        ck_assert_int_eq(r, M2MVPN_E_ENROL);
        no_token_named(err);
        ck_assert_msg(strstr(err, "refused by the server") && strstr(err, k.text), "%s", err);
        if (_i == 0)
            ck_assert_msg(strstr(err, "signed with the current device certificate") != NULL, "%s", err);
    } else {
        /* nobody listens: a network failure, said so */
        char ca_path[] = "/tmp/m2mvpn-test-kur-XXXXXX";
        int fd = mkstemp(ca_path);
        ck_assert_int_ge(fd, 0);
        FILE *f = fdopen(fd, "w");
        PEM_write_X509(f, ca.cert);
        fclose(f);
        mgmt_tls t = { .url = "https://127.0.0.1:1", .server_ca = ca_path, .cert = cert, .key = old };
        r = mgmt_cmp_kur(&t, old, cert, nk, &got, err, sizeof(err));
        unlink(ca_path);
        ck_assert_int_eq(r, M2MVPN_E_NETWORK);
        no_token_named(err);
        ck_assert_msg(strstr(err, "network failure") && strstr(err, "127.0.0.1:1"), "%s", err);
    }
    ck_assert_ptr_null(got);
    X509_free(cert);
    EVP_PKEY_free(old);
    EVP_PKEY_free(nk);
    free_signer(&ca);
}
END_TEST

static Suite *mgmt_suite(void)
{
    Suite *s = suite_create("mgmt");
    TCase *tc = tcase_create("bundle");
    tcase_add_test(tc, test_bundle_good);
    tcase_add_test(tc, test_bundle_tampered_byte);
    tcase_add_test(tc, test_bundle_other_signer);
    tcase_add_test(tc, test_bundle_unsigned_or_plain);
    tcase_add_test(tc, test_bundle_manifest_rules);
    tcase_add_test(tc, test_bundle_not_json);
    suite_add_tcase(s, tc);
    tc = tcase_create("bootstrap");
    tcase_add_test(tc, test_bootstrap_good);
    tcase_add_loop_test(tc, test_bootstrap_bad, 0, (int)(sizeof(bad_boot) / sizeof(bad_boot[0])));
    suite_add_tcase(s, tc);
    tc = tcase_create("state");
    tcase_add_test(tc, test_state_files);
    tcase_add_test(tc, test_state_dir_writable_by_others);
    tcase_add_test(tc, test_cmp_answer_garbage);
    suite_add_tcase(s, tc);
    tc = tcase_create("dayn");
    tcase_add_test(tc, test_version_rules);
    tcase_add_loop_test(tc, test_journal_kill_each_step, 0, 5);
    tcase_add_test(tc, test_journal_commit_half);
    tcase_add_test(tc, test_journal_no_prev);
    tcase_add_test(tc, test_restart_marks);
    tcase_add_test(tc, test_stored_update_rehashed);
    tcase_add_test(tc, test_poll_parse);
    tcase_add_test(tc, test_software_bundle_and_artifact);
    tcase_add_test(tc, test_stored_update_bundle);
    tcase_add_test(tc, test_dl_stream_verified);
    tcase_add_test(tc, test_dl_refused);
    tcase_add_test(tc, test_dl_over_https);
    tcase_add_test(tc, test_install_run);
    tcase_add_test(tc, test_install_gets_the_verified_file);
    tcase_add_test(tc, test_install_with_std_fds_closed);
    tcase_add_test(tc, test_bootstrap_installer);
    tcase_add_test(tc, test_renew_schedule);
    tcase_add_test(tc, test_renew_backoff);
    tcase_add_test(tc, test_renew_swap_checks_the_key);
    tcase_add_loop_test(tc, test_renew_failure_text, 0, 3);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(mgmt_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
