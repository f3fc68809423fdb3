/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Management, decommissioning (device side): the CMP RR and which answers
 * it trusts (only an "accepted" signed by the device CA, of this very
 * transaction), and the state directory's decommission.json and removal.
 * The RR is answered by an in-process OpenSSL CMP server.
 */
#include <check.h>
#include <m2mvpn/m2mvpn.h>
#include <openssl/cmp.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mgmt/mgmt.h"

#define DEV "dev-0123456789abcdef"

typedef struct signer {
    EVP_PKEY *key;
    X509 *cert;
} signer;

static signer make_ca(const char *cn)
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

static X509 *issue(const signer *ca, EVP_PKEY *key)
{
    X509 *c = X509_new();
    X509_set_version(c, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(c), 9);
    X509_NAME_add_entry_by_txt(X509_get_subject_name(c), "CN", MBSTRING_ASC, (const unsigned char *)DEV, -1, -1,
                               0);
    X509_set_issuer_name(c, X509_get_subject_name(ca->cert));
    X509_gmtime_adj(X509_getm_notBefore(c), -3600);
    X509_gmtime_adj(X509_getm_notAfter(c), 86400);
    X509_set_pubkey(c, key);
    ck_assert_int_gt(X509_sign(c, ca->key, EVP_sha256()), 0);
    return c;
}

/* ------------------------------------------------------------ the server */

typedef struct rr_server {
    int status;               /* PKIStatus to answer */
    int failinfo;             /* bit number, -1 none */
    const char *text;
    int calls;
    int serial_seen;          /* the serial the RR named */
} rr_server;

static OSSL_CMP_PKISI *answer_rr(OSSL_CMP_SRV_CTX *srv, const OSSL_CMP_MSG *req, const X509_NAME *issuer,
                                 const ASN1_INTEGER *serial)
{
    (void)req, (void)issuer;
    rr_server *s = OSSL_CMP_SRV_CTX_get0_custom_ctx(srv);
    s->calls++;
    s->serial_seen = (int)ASN1_INTEGER_get(serial);
    return OSSL_CMP_STATUSINFO_new(s->status, s->failinfo >= 0 ? 1 << s->failinfo : 0, s->text);
}

/* A server signing its answers with `signer_of_answers` (the device CA, or
 * another one), checking the device's signature with `device`. */
static OSSL_CMP_SRV_CTX *server(rr_server *s, const signer *signer_of_answers, X509 *device, bool unprotected)
{
    OSSL_CMP_SRV_CTX *srv = OSSL_CMP_SRV_CTX_new(NULL, NULL);
    ck_assert_ptr_nonnull(srv);
    OSSL_CMP_CTX *sc = OSSL_CMP_SRV_CTX_get0_cmp_ctx(srv);
    ck_assert_int_eq(OSSL_CMP_SRV_CTX_init(srv, s, NULL, answer_rr, NULL, NULL, NULL, NULL), 1);
    ck_assert_int_eq(OSSL_CMP_CTX_set1_cert(sc, signer_of_answers->cert), 1);
    ck_assert_int_eq(OSSL_CMP_CTX_set1_pkey(sc, signer_of_answers->key), 1);
    ck_assert_int_eq(OSSL_CMP_CTX_set1_srvCert(sc, device), 1);
    /* OpenSSL leaves a self-signed signer out of extraCerts: the device
     * finds the CA there only when it is added (as the real server does) */
    STACK_OF(X509) *extra = sk_X509_new_null();
    ck_assert_ptr_nonnull(extra);
    ck_assert_int_gt(sk_X509_push(extra, signer_of_answers->cert), 0);
    ck_assert_int_eq(OSSL_CMP_CTX_set1_extraCertsOut(sc, extra), 1);
    sk_X509_free(extra);
    if (unprotected)
        ck_assert_int_eq(OSSL_CMP_CTX_set_option(sc, OSSL_CMP_OPT_UNPROTECTED_SEND, 1), 1);
    OSSL_CMP_CTX_set_log_cb(sc, NULL);
    return srv;
}

typedef struct fixture {
    signer ca;
    EVP_PKEY *key;
    X509 *cert;
} fixture;

static fixture setup(void)
{
    fixture f;
    f.ca = make_ca("device CA");
    f.key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    ck_assert_ptr_nonnull(f.key);
    f.cert = issue(&f.ca, f.key);
    return f;
}

static void teardown(fixture *f)
{
    X509_free(f->cert);
    EVP_PKEY_free(f->key);
    free_signer(&f->ca);
}

/* Accepted by the device CA: revoked; the RR named our certificate. */
START_TEST(test_rr_accepted)
{
    fixture f = setup();
    rr_server s = { OSSL_CMP_PKISTATUS_accepted, -1, NULL, 0, 0 };
    OSSL_CMP_SRV_CTX *srv = server(&s, &f.ca, f.cert, false);
    char err[600] = "";
    int r = mgmt_cmp_rr_local(srv, f.key, f.cert, false, false, NULL, err, sizeof(err));
    ck_assert_msg(r == 0, "accepted RR not taken: %d %s", r, err);
    ck_assert_int_eq(s.calls, 1);
    ck_assert_int_eq(s.serial_seen, 9);
    OSSL_CMP_SRV_CTX_free(srv);
    teardown(&f);
}
END_TEST

/* Refused: DECOMMISSION with the server's reason, never "enrolment". */
START_TEST(test_rr_refused)
{
    fixture f = setup();
    rr_server s = { OSSL_CMP_PKISTATUS_rejection, OSSL_CMP_PKIFAILUREINFO_badCertId, "no such certificate", 0, 0 };
    OSSL_CMP_SRV_CTX *srv = server(&s, &f.ca, f.cert, false);
    char err[600] = "";
    int r = mgmt_cmp_rr_local(srv, f.key, f.cert, false, false, NULL, err, sizeof(err));
    ck_assert_int_eq(r, M2MVPN_E_DECOMMISSION);
    ck_assert_msg(strstr(err, "decommissioning (CMP RR) refused by the server") && strstr(err, "no such certificate"),
                  "%s", err);
    ck_assert_msg(!strstr(err, "KUR") && !strstr(err, "token"), "%s", err);
    OSSL_CMP_SRV_CTX_free(srv);
    teardown(&f);
}
END_TEST

/* "accepted" but signed by someone else than the device CA (an attacker's
 * CA, a server of another fleet): not revoked as far as the device knows. */
START_TEST(test_rr_other_signer)
{
    fixture f = setup();
    signer other = make_ca("device CA"); /* same name, other key */
    rr_server s = { OSSL_CMP_PKISTATUS_accepted, -1, NULL, 0, 0 };
    OSSL_CMP_SRV_CTX *srv = server(&s, &other, f.cert, false);
    char err[600] = "";
    int r = mgmt_cmp_rr_local(srv, f.key, f.cert, false, false, NULL, err, sizeof(err));
    ck_assert_msg(r < 0, "an answer signed by another CA was taken as the revocation");
    ck_assert_int_ne(r, M2MVPN_E_DECOMMISSION);
    ck_assert_msg(strstr(err, "decommissioning (CMP RR)") != NULL, "%s", err);
    OSSL_CMP_SRV_CTX_free(srv);
    free_signer(&other);
    teardown(&f);
}
END_TEST

/* An unprotected "accepted": refused (only refusals may come unsigned). */
START_TEST(test_rr_unprotected)
{
    fixture f = setup();
    rr_server s = { OSSL_CMP_PKISTATUS_accepted, -1, NULL, 0, 0 };
    OSSL_CMP_SRV_CTX *srv = server(&s, &f.ca, f.cert, true);
    char err[600] = "";
    int r = mgmt_cmp_rr_local(srv, f.key, f.cert, false, false, NULL, err, sizeof(err));
    ck_assert_msg(r < 0, "an unprotected answer was taken as the revocation");
    OSSL_CMP_SRV_CTX_free(srv);
    teardown(&f);
}
END_TEST

/* The test's own client, to capture the DER of a real accepted answer. */
static uint8_t captured[8192];
static size_t captured_len;

static OSSL_CMP_MSG *capture(OSSL_CMP_CTX *ctx, const OSSL_CMP_MSG *req)
{
    OSSL_CMP_SRV_CTX *srv = OSSL_CMP_CTX_get_transfer_cb_arg(ctx);
    OSSL_CMP_MSG *rsp = OSSL_CMP_SRV_process_request(srv, req);
    unsigned char *der = NULL;
    int n = rsp ? i2d_OSSL_CMP_MSG(rsp, &der) : 0;
    ck_assert_int_gt(n, 0);
    ck_assert_uint_le((size_t)n, sizeof(captured));
    memcpy(captured, der, (size_t)n);
    captured_len = (size_t)n;
    OPENSSL_free(der);
    return rsp;
}

/* A genuine "accepted" of another transaction (replayed by someone on the
 * path): its transactionID and nonce are not ours: refused. The same bytes
 * answer their own transaction (they are a good answer there). */
START_TEST(test_rr_replayed)
{
    fixture f = setup();
    rr_server s = { OSSL_CMP_PKISTATUS_accepted, -1, NULL, 0, 0 };
    OSSL_CMP_SRV_CTX *srv = server(&s, &f.ca, f.cert, false);
    OSSL_CMP_CTX *c = OSSL_CMP_CTX_new(NULL, NULL);
    ck_assert_ptr_nonnull(c);
    OSSL_CMP_CTX_set_log_cb(c, NULL);
    ck_assert_int_eq(OSSL_CMP_CTX_set1_cert(c, f.cert), 1);
    ck_assert_int_eq(OSSL_CMP_CTX_set1_pkey(c, f.key), 1);
    ck_assert_int_eq(OSSL_CMP_CTX_set1_oldCert(c, f.cert), 1);
    ck_assert_int_eq(OSSL_CMP_CTX_set1_srvCert(c, f.ca.cert), 1);
    ck_assert_int_eq(OSSL_CMP_CTX_set_transfer_cb(c, capture), 1);
    ck_assert_int_eq(OSSL_CMP_CTX_set_transfer_cb_arg(c, srv), 1);
    ck_assert_int_eq(OSSL_CMP_exec_RR_ses(c), 1); /* a good answer for its own request */
    OSSL_CMP_CTX_free(c);
    char err[600] = "";
    int r = mgmt_cmp_check_rr_answer(captured, captured_len, f.key, f.cert, err, sizeof(err));
    ck_assert_msg(r < 0, "a replayed answer of another transaction was taken as the revocation");
    ck_assert_msg(strstr(err, "decommissioning (CMP RR)") != NULL, "%s", err);
    OSSL_CMP_SRV_CTX_free(srv);
    teardown(&f);
}
END_TEST

/* Nobody listens: a network failure, said so. */
START_TEST(test_rr_unreachable)
{
    fixture f = setup();
    char ca_path[] = "/tmp/m2mvpn-test-rr-XXXXXX";
    int fd = mkstemp(ca_path);
    ck_assert_int_ge(fd, 0);
    FILE *fp = fdopen(fd, "w");
    PEM_write_X509(fp, f.ca.cert);
    fclose(fp);
    mgmt_tls t = { .url = "https://127.0.0.1:1", .server_ca = ca_path, .cert = f.cert, .key = f.key };
    char err[600] = "";
    bool maybe_sent = true;
    int r = mgmt_cmp_rr(&t, f.key, f.cert, false, &maybe_sent, err, sizeof(err));
    unlink(ca_path);
    ck_assert_int_eq(r, M2MVPN_E_NETWORK);
    ck_assert_msg(!maybe_sent, "a refused connection taken as a request that may have reached the server");
    ck_assert_msg(strstr(err, "decommissioning (CMP RR): network failure") && strstr(err, "127.0.0.1:1"), "%s",
                  err);
    teardown(&f);
}
END_TEST

/* A certRevoked refusal of the device's certificate, as the server gives
 * once an earlier RR revoked it. */
#define REVOKED_TEXT "certificate 09 of device " DEV " is revoked"

/* Refused by the server (signed by the device CA or not): it answered, it
 * did not revoke: not "maybe sent" (nothing changes); a first RR's
 * certRevoked refusal is a refusal, even signed. */
START_TEST(test_rr_refusal_is_an_answer)
{
    fixture f = setup();
    rr_server s = { OSSL_CMP_PKISTATUS_rejection, OSSL_CMP_PKIFAILUREINFO_certRevoked, REVOKED_TEXT, 0, 0 };
    OSSL_CMP_SRV_CTX *srv = server(&s, &f.ca, f.cert, false);
    char err[600] = "";
    bool maybe_sent = true;
    int r = mgmt_cmp_rr_local(srv, f.key, f.cert, false, false, &maybe_sent, err, sizeof(err));
    ck_assert_int_eq(r, M2MVPN_E_DECOMMISSION);
    ck_assert_msg(!maybe_sent, "a refusal taken as a request without answer");
    ck_assert_msg(strstr(err, "is revoked") != NULL, "%s", err);
    OSSL_CMP_SRV_CTX_free(srv);
    teardown(&f);
}
END_TEST

/* The server revokes but its answer is lost: "maybe sent", so the intent
 * stays "requested" and the certificate unused. The retried RR is refused
 * with certRevoked, signed by the device CA: that counts as revoked, and
 * the removal goes as for an accepted answer. */
START_TEST(test_rr_answer_lost_then_revoked)
{
    char dir[] = "/tmp/m2mvpn-test-decom-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    fixture f = setup();
    rr_server s = { OSSL_CMP_PKISTATUS_accepted, -1, NULL, 0, 0 };
    OSSL_CMP_SRV_CTX *srv = server(&s, &f.ca, f.cert, false);
    mgmt_decom d = { .phase = MGMT_DECOM_REQUESTED, .time = 1 };
    snprintf(d.device_id, sizeof(d.device_id), "%s", DEV);
    char err[600] = "";
    ck_assert_int_eq(mgmt_decom_save(dir, &d, err, sizeof(err)), 0);
    bool maybe_sent = false;
    int r = mgmt_cmp_rr_local(srv, f.key, f.cert, false, true, &maybe_sent, err, sizeof(err));
    ck_assert_int_eq(r, M2MVPN_E_NETWORK);
    ck_assert_int_eq(s.calls, 1); /* the server had it */
    ck_assert_msg(maybe_sent, "an RR whose answer was lost taken as never sent: %s", err);

    /* the retry: the server now refuses, the certificate being revoked */
    s.status = OSSL_CMP_PKISTATUS_rejection;
    s.failinfo = OSSL_CMP_PKIFAILUREINFO_certRevoked;
    s.text = REVOKED_TEXT;
    err[0] = '\0';
    r = mgmt_cmp_rr_local(srv, f.key, f.cert, true, false, &maybe_sent, err, sizeof(err));
    ck_assert_msg(r == 0, "a CA-signed certRevoked answer to the retry not taken as revoked: %d %s", r, err);
    ck_assert_int_eq(s.calls, 2);
    ck_assert_msg(strstr(err, "already revoked") != NULL, "%s", err);

    /* what the engine does then: "revoked", the credential removed, "done" */
    char p[512];
    snprintf(p, sizeof(p), "%s/device.key.pem", dir);
    FILE *fp = fopen(p, "w");
    ck_assert_ptr_nonnull(fp);
    PEM_write_PrivateKey(fp, f.key, NULL, NULL, 0, NULL, NULL);
    fclose(fp);
    d.phase = MGMT_DECOM_REVOKED;
    ck_assert_int_eq(mgmt_decom_save(dir, &d, err, sizeof(err)), 0);
    ck_assert_int_eq(mgmt_decom_wipe(dir, p, err, sizeof(err)), 0);
    ck_assert_int_ne(access(p, F_OK), 0);
    OSSL_CMP_SRV_CTX_free(srv);
    teardown(&f);
    snprintf(p, sizeof(p), "rm -rf %s", dir);
    ck_assert_int_eq(system(p), 0);
}
END_TEST

/* The retry's certRevoked refusal unsigned, or signed by another CA: not
 * revoked as far as the device knows (it stays unfinished, "maybe sent"). */
START_TEST(test_rr_retry_revoked_untrusted)
{
    fixture f = setup();
    signer other = make_ca("device CA"); /* same name, other key */
    for (int i = 0; i < 2; i++) {
        rr_server s = { OSSL_CMP_PKISTATUS_rejection, OSSL_CMP_PKIFAILUREINFO_certRevoked, REVOKED_TEXT, 0, 0 };
        OSSL_CMP_SRV_CTX *srv = i == 0 ? server(&s, &f.ca, f.cert, true) : server(&s, &other, f.cert, false);
        char err[600] = "";
        bool maybe_sent = false;
        int r = mgmt_cmp_rr_local(srv, f.key, f.cert, true, false, &maybe_sent, err, sizeof(err));
        ck_assert_msg(r < 0, "an %s certRevoked refusal taken as the revocation", i == 0 ? "unsigned" : "other-signed");
        ck_assert_int_eq(s.calls, 1);
        ck_assert_msg(maybe_sent, "%s", err);
        OSSL_CMP_SRV_CTX_free(srv);
    }
    free_signer(&other);
    teardown(&f);
}
END_TEST

/* --------------------------------------------------- the state directory */

static void touch(const char *dir, const char *name, const char *text)
{
    char p[512];
    snprintf(p, sizeof(p), "%s/%s", dir, name);
    FILE *fp = fopen(p, "w");
    ck_assert_ptr_nonnull(fp);
    fputs(text, fp);
    fclose(fp);
}

static bool exists(const char *dir, const char *name)
{
    char p[512];
    snprintf(p, sizeof(p), "%s/%s", dir, name);
    return access(p, F_OK) == 0;
}

START_TEST(test_decom_file)
{
    char dir[] = "/tmp/m2mvpn-test-decom-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char err[512];
    mgmt_decom d;
    ck_assert_int_eq(mgmt_decom_load(dir, &d, err, sizeof(err)), 0);
    ck_assert_int_eq(d.phase, MGMT_DECOM_NONE);
    mgmt_decom w = { MGMT_DECOM_REVOKED, DEV, 1800000000 };
    ck_assert_int_eq(mgmt_decom_save(dir, &w, err, sizeof(err)), 0);
    ck_assert_int_eq(mgmt_decom_load(dir, &d, err, sizeof(err)), 0);
    ck_assert_int_eq(d.phase, MGMT_DECOM_REVOKED);
    ck_assert_str_eq(d.device_id, DEV);
    ck_assert_int_eq(d.time, 1800000000);
    /* A damaged file is read as an unfinished decommissioning, never as none. */
    touch(dir, "decommission.json", "{\"phase\": \"revok");
    ck_assert_int_eq(mgmt_decom_load(dir, &d, err, sizeof(err)), M2MVPN_E_IO);
    ck_assert_int_eq(d.phase, MGMT_DECOM_REQUESTED);
    w.phase = MGMT_DECOM_NONE;
    ck_assert_int_eq(mgmt_decom_save(dir, &w, err, sizeof(err)), 0);
    ck_assert(!exists(dir, "decommission.json"));
    rmdir(dir);
}
END_TEST

/* The removal takes the device's files (the key outside the folder too),
 * leaves the application's and decommission.json, and can run twice. */
START_TEST(test_decom_wipe)
{
    char dir[] = "/tmp/m2mvpn-test-decom-XXXXXX", other[] = "/tmp/m2mvpn-test-decomk-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    ck_assert_ptr_nonnull(mkdtemp(other));
    static const char *const ours[] = { "device.key.pem", "device.crt.pem", "mgmt.json", "apply.json",
                                        "profile.json", "profile.prev.json", "ca-0.pem", "ca-v3-1.pem",
                                        "update-1.2.bin", "update.json", "update.p7m", "renew.json",
                                        "device.crt.pem.next", "device.p11id.next",
                                        /* a key generation stopped before its rename (lib/cred/keygen.c) */
                                        "device.key.pem.tmp.Ab12Cd", "device.tss2.pem.next.tmp.Zz9aB1" };
    for (size_t i = 0; i < sizeof(ours) / sizeof(ours[0]); i++)
        touch(dir, ours[i], "secret bytes");
    touch(dir, "app-settings.json", "{}");
    touch(dir, "decommission.json", "{\"phase\": \"revoked\"}");
    touch(other, "boot.key.pem", "key");
    char key[512], err[512];
    snprintf(key, sizeof(key), "%s/boot.key.pem", other);
    ck_assert_int_eq(mgmt_decom_wipe(dir, key, err, sizeof(err)), 0);
    for (size_t i = 0; i < sizeof(ours) / sizeof(ours[0]); i++)
        ck_assert_msg(!exists(dir, ours[i]), "%s left behind", ours[i]);
    ck_assert(!exists(other, "boot.key.pem"));
    ck_assert(exists(dir, "app-settings.json"));
    ck_assert(exists(dir, "decommission.json"));
    ck_assert_int_eq(mgmt_decom_wipe(dir, key, err, sizeof(err)), 0);
    char p[512];
    snprintf(p, sizeof(p), "%s/app-settings.json", dir);
    unlink(p);
    snprintf(p, sizeof(p), "%s/decommission.json", dir);
    unlink(p);
    ck_assert_int_eq(rmdir(dir), 0);
    ck_assert_int_eq(rmdir(other), 0);
}
END_TEST

/* The bootstrap's key path may be a link to the key file (configuration
 * management often places them so): the key bytes themselves go, not just
 * the link. A link inside the state directory is removed, never followed:
 * what it points to stays as it was. */
START_TEST(test_decom_wipe_links)
{
    char dir[] = "/tmp/m2mvpn-test-decom-XXXXXX", other[] = "/tmp/m2mvpn-test-decomk-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    ck_assert_ptr_nonnull(mkdtemp(other));
    touch(other, "real.key.pem", "secret key bytes");
    touch(other, "victim.txt", "not ours");
    char key[512], target[512], victim[512], link_in[512], err[512] = "";
    snprintf(target, sizeof(target), "%s/real.key.pem", other);
    snprintf(key, sizeof(key), "%s/boot.key.pem", other);
    ck_assert_int_eq(symlink(target, key), 0);
    snprintf(victim, sizeof(victim), "%s/victim.txt", other);
    snprintf(link_in, sizeof(link_in), "%s/profile.json", dir);
    ck_assert_int_eq(symlink(victim, link_in), 0);
    ck_assert_msg(mgmt_decom_wipe(dir, key, err, sizeof(err)) == 0, "%s", err);
    struct stat sb;
    ck_assert_msg(lstat(key, &sb) < 0, "the key's link is left");
    ck_assert_msg(lstat(target, &sb) < 0, "the key file behind the link is left");
    ck_assert_msg(lstat(link_in, &sb) < 0, "the link in the state directory is left");
    FILE *f = fopen(victim, "r");
    ck_assert_ptr_nonnull(f);
    char buf[32] = "";
    ck_assert_ptr_nonnull(fgets(buf, sizeof(buf), f));
    fclose(f);
    ck_assert_str_eq(buf, "not ours");
    unlink(victim);
    ck_assert_int_eq(rmdir(dir), 0);
    ck_assert_int_eq(rmdir(other), 0);
}
END_TEST

/* Something else than a file under one of our names (a FIFO nobody reads)
 * is removed, not opened: the engine thread never blocks on it. */
START_TEST(test_decom_wipe_fifo)
{
    char dir[] = "/tmp/m2mvpn-test-decom-XXXXXX", p[512], err[512] = "";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(p, sizeof(p), "%s/mgmt.json", dir);
    ck_assert_int_eq(mkfifo(p, 0600), 0);
    touch(dir, "device.crt.pem", "cert");
    ck_assert_msg(mgmt_decom_wipe(dir, NULL, err, sizeof(err)) == 0, "%s", err);
    ck_assert(!exists(dir, "mgmt.json"));
    ck_assert(!exists(dir, "device.crt.pem"));
    ck_assert_int_eq(rmdir(dir), 0);
}
END_TEST

static Suite *decom_suite(void)
{
    Suite *s = suite_create("mgmt_decom");
    TCase *tc = tcase_create("rr");
    tcase_add_test(tc, test_rr_accepted);
    tcase_add_test(tc, test_rr_refused);
    tcase_add_test(tc, test_rr_other_signer);
    tcase_add_test(tc, test_rr_unprotected);
    tcase_add_test(tc, test_rr_replayed);
    tcase_add_test(tc, test_rr_unreachable);
    tcase_add_test(tc, test_rr_refusal_is_an_answer);
    tcase_add_test(tc, test_rr_answer_lost_then_revoked);
    tcase_add_test(tc, test_rr_retry_revoked_untrusted);
    suite_add_tcase(s, tc);
    tc = tcase_create("state");
    tcase_add_test(tc, test_decom_file);
    tcase_add_test(tc, test_decom_wipe);
    tcase_add_test(tc, test_decom_wipe_links);
    tcase_add_test(tc, test_decom_wipe_fifo);
    tcase_set_timeout(tc, 10);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(decom_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
