/* SPDX-License-Identifier: Apache-2.0 */
/* Enrolment: one CMP IR with OpenSSL's CMP client, MAC-protected with the
 * enrolment token (senderKID = token id, secret = the 43 characters after
 * the '.'), carried over HTTPS by mgmt_http(). */
#include "mgmt.h"

#include <openssl/cmp.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/secmem.h"

typedef struct cmp_io {
    const mgmt_tls *tls;
    X509 *old_cert;            /* KUR: the answer must be signed by its issuer */
    X509 *issuer;              /* KUR: that issuer, found in the answer (a reference) */
    const char *op;            /* KUR, RR: what the messages call it; NULL: KUR */
    const uint8_t *canned;     /* tests/fuzzing: this answer to every request */
    OSSL_CMP_SRV_CTX *srv;     /* tests: an in-process server answers */
    size_t canned_len;
    int answers;               /* CMP answers received in this transaction */
    int net_err;               /* the transfer's own failure, 0 none */
    char net_why[256];
    bool lose_answer;          /* tests: the server handles the request, its answer is lost */
    bool sent;                 /* a request was (or may have been) sent */
    bool keep_answer;          /* RR: keep a copy of the last answer in `last` */
    OSSL_CMP_MSG *last;        /* that copy */
} cmp_io;

/* KUR: the server signs its answer with the device CA's key, and the device
 * holds no copy of that CA. The one certificate we take as the answer's
 * signer (srvCert, checked by OpenSSL's client) is the one of the answer's
 * extraCerts that issued our current certificate (its signature on it
 * verifies): the CA that vouched for this device vouches for its renewal,
 * nothing else in the message is trusted. PKIMessage ::= SEQUENCE { header,
 * body, [0] protection OPTIONAL, [1] extraCerts OPTIONAL }. */
static void pin_issuer(OSSL_CMP_CTX *ctx, cmp_io *io, const uint8_t *der, size_t len)
{
    const unsigned char *p = der, *end;
    long l;
    int tag, cls;
    if (len > (size_t)LONG_MAX || (ASN1_get_object(&p, &l, &tag, &cls, (long)len) & 0x80) || tag != V_ASN1_SEQUENCE)
        return;
    end = p + l;
    while (p < end) {
        const unsigned char *q = p;
        if (ASN1_get_object(&q, &l, &tag, &cls, end - p) & 0x80)
            return;
        if (cls == V_ASN1_CONTEXT_SPECIFIC && tag == 1) {
            const unsigned char *in_end = q + l;
            if ((ASN1_get_object(&q, &l, &tag, &cls, in_end - q) & 0x80) || tag != V_ASN1_SEQUENCE)
                return;
            while (q < in_end) {
                X509 *c = d2i_X509(NULL, &q, in_end - q);
                if (!c)
                    break;
                EVP_PKEY *pk = X509_get0_pubkey(c);
                if (X509_check_issued(c, io->old_cert) == X509_V_OK && pk && X509_verify(io->old_cert, pk) == 1 &&
                    OSSL_CMP_CTX_set1_srvCert(ctx, c)) {
                    X509_free(io->issuer);
                    io->issuer = c;
                    break;
                }
                X509_free(c);
            }
            ERR_clear_error();
            return;
        }
        p = q + l;
    }
}

static OSSL_CMP_MSG *keep(cmp_io *io, OSSL_CMP_MSG *rsp)
{
    if (io->keep_answer && rsp) {
        /* a copy through DER: OpenSSL 3.0 has no OSSL_CMP_MSG_dup */
        unsigned char *der = NULL;
        int n = i2d_OSSL_CMP_MSG(rsp, &der);
        const unsigned char *p = der;
        OSSL_CMP_MSG_free(io->last);
        io->last = n > 0 ? d2i_OSSL_CMP_MSG(NULL, &p, n) : NULL;
        OPENSSL_free(der);
    }
    return rsp;
}

static OSSL_CMP_MSG *transfer_io(OSSL_CMP_CTX *ctx, const OSSL_CMP_MSG *req);

static OSSL_CMP_MSG *transfer(OSSL_CMP_CTX *ctx, const OSSL_CMP_MSG *req)
{
    return keep(OSSL_CMP_CTX_get_transfer_cb_arg(ctx), transfer_io(ctx, req));
}

static OSSL_CMP_MSG *transfer_io(OSSL_CMP_CTX *ctx, const OSSL_CMP_MSG *req)
{
    cmp_io *io = OSSL_CMP_CTX_get_transfer_cb_arg(ctx);
    if (io->srv) {
        io->sent = true;
        OSSL_CMP_MSG *rsp = OSSL_CMP_SRV_process_request(io->srv, req);
        if (io->lose_answer) {
            OSSL_CMP_MSG_free(rsp);
            io->net_err = M2MVPN_E_NETWORK;
            snprintf(io->net_why, sizeof(io->net_why), "the answer was lost (test)");
            return NULL;
        }
        unsigned char *der = NULL;
        int der_len = rsp && io->old_cert ? i2d_OSSL_CMP_MSG(rsp, &der) : 0;
        if (der_len > 0)
            pin_issuer(ctx, io, der, (size_t)der_len);
        OPENSSL_free(der);
        if (rsp)
            io->answers++;
        return rsp;
    }
    if (io->canned) {
        io->sent = true;
        const unsigned char *p = io->canned;
        OSSL_CMP_MSG *rsp = d2i_OSSL_CMP_MSG(NULL, &p, (long)io->canned_len);
        if (rsp && io->old_cert)
            pin_issuer(ctx, io, io->canned, io->canned_len);
        return rsp;
    }
    unsigned char *der = NULL;
    int der_len = i2d_OSSL_CMP_MSG(req, &der);
    if (der_len <= 0) {
        io->net_err = M2MVPN_E_CRYPTO;
        snprintf(io->net_why, sizeof(io->net_why), "cannot encode the CMP request");
        return NULL;
    }
    long status = 0;
    uint8_t *body = NULL;
    size_t len = 0;
    bool unsent = false;
    mgmt_tls t = *io->tls;
    t.unsent = &unsent;
    int r = mgmt_http(&t, "/.well-known/cmp", "application/pkixcmp", der, (size_t)der_len, NULL, &status,
                      &body, &len, NULL, 0, io->net_why, sizeof(io->net_why));
    OPENSSL_free(der);
    if (r == 0 || !unsent)
        io->sent = true;
    if (r < 0) {
        /* A server that already answered this transaction (IR answered,
         * certConf under way) may have issued and bound the token to our
         * key: a failure now, even a foreign certificate from someone on
         * the path, is a network failure, so the key is kept and the
         * enrolment asked again, never given up. */
        io->net_err = r == M2MVPN_E_SERVER_CERT && io->answers > 0 ? M2MVPN_E_NETWORK : r;
        return NULL;
    }
    OSSL_CMP_MSG *rsp = NULL;
    if (status == 200) {
        const unsigned char *p = body;
        rsp = d2i_OSSL_CMP_MSG(NULL, &p, (long)len);
    }
    if (rsp && io->old_cert)
        pin_issuer(ctx, io, body, len);
    if (rsp)
        io->answers++;
    if (!rsp) {
        io->net_err = M2MVPN_E_PROTOCOL;
        snprintf(io->net_why, sizeof(io->net_why), "management server %s answered the CMP request with HTTP %ld%s",
                 io->tls->url, status, status == 200 ? " but no CMP message" : "");
    }
    secure_free(body, body ? len + 1 : 0);
    return rsp;
}

/* The failure in words a user can act on. */
static int classify(OSSL_CMP_CTX *ctx, cmp_io *io, char *err, size_t err_len)
{
    /* A key update (old_cert set) is signed with the device certificate:
     * no enrolment token is involved, so its failures never name one. */
    bool kur = io->old_cert != NULL;
    const char *op = io->op ? io->op : "certificate renewal (CMP KUR)";
    if (io->net_err) {
        if (kur && io->net_err == M2MVPN_E_NETWORK)
            snprintf(err, err_len, "%s: network failure, the management server could "
                     "not be reached: %s", op, io->net_why);
        else if (kur)
            snprintf(err, err_len, "%s: %s", op, io->net_why);
        else
            snprintf(err, err_len, "%s", io->net_why);
        return io->net_err;
    }
    /* What our own client found wrong comes first. */
    bool not_ours = false, bad_mac = false;
    unsigned long e;
    char why[160] = "malformed or unexpected answer";
    /* The server's error details (errorDetails of an error message) come
     * as the data of the client's "received error". */
    char details[200] = "";
    const char *data = NULL;
    int flags = 0;
    while ((e = ERR_get_error_all(NULL, NULL, NULL, &data, &flags)) != 0) {
        if (ERR_GET_LIB(e) != ERR_LIB_CMP)
            continue;
        if (ERR_GET_REASON(e) == CMP_R_RECEIVED_ERROR && data && (flags & ERR_TXT_STRING) && !details[0])
            snprintf(details, sizeof(details), "%s", data);
        if (ERR_GET_REASON(e) == CMP_R_CERTIFICATE_NOT_ACCEPTED)
            not_ours = true;
        else if (ERR_GET_REASON(e) == CMP_R_WRONG_PBM_VALUE)
            bad_mac = true;
        else if (ERR_GET_REASON(e) != CMP_R_RECEIVED_ERROR && ERR_GET_REASON(e) != CMP_R_REQUEST_REJECTED_BY_SERVER)
            ERR_error_string_n(e, why, sizeof(why));
    }
    if (kur && not_ours) {
        snprintf(err, err_len, "%s: the server's answer certifies another key than "
                 "the device's new key: refused", op);
        ERR_clear_error();
        return M2MVPN_E_CERT;
    }
    if (kur && bad_mac) {
        snprintf(err, err_len, "%s: the server's answer is MAC-protected instead of "
                 "signed by the device CA: refused", op);
        ERR_clear_error();
        return M2MVPN_E_PROTOCOL;
    }
    if (not_ours) {
        snprintf(err, err_len, "the enrolled certificate is not for this device's key: refused");
        return M2MVPN_E_CERT;
    }
    if (bad_mac) {
        snprintf(err, err_len, "the CMP answer's MAC does not verify with the enrolment token: check "
                 "enrolment_token in the bootstrap");
        return M2MVPN_E_TOKEN;
    }
    int status = OSSL_CMP_CTX_get_status(ctx);
    int fi = OSSL_CMP_CTX_get_failInfoCode(ctx);
    char text[400] = "";
    OSSL_CMP_PKIFREETEXT *ft = OSSL_CMP_CTX_get0_statusString(ctx);
    for (int i = 0; ft && i < sk_ASN1_UTF8STRING_num(ft); i++) {
        ASN1_UTF8STRING *s = sk_ASN1_UTF8STRING_value(ft, i);
        size_t used = strlen(text);
        snprintf(text + used, sizeof(text) - used, "%s%.*s", used ? "; " : "", ASN1_STRING_length(s),
                 (const char *)ASN1_STRING_get0_data(s));
    }
    if (details[0]) {
        size_t used = strlen(text);
        snprintf(text + used, sizeof(text) - used, "%s%s", used ? "; " : "", details);
    }
    for (char *c = text; *c; c++)
        if ((unsigned char)*c < 0x20)
            *c = ' ';
    if (kur) {
        ERR_clear_error();
        if ((status == OSSL_CMP_PKISTATUS_rejection || status == -1) && fi >= 0 &&
            (fi & (1 << OSSL_CMP_PKIFAILUREINFO_badMessageCheck))) {
            snprintf(err, err_len, "%s refused by the server: it did not accept the "
                     "request signed with the current device certificate (revoked, expired or not from its CA?)"
                     "%s%s", op, text[0] ? "; server: " : "", text);
            return M2MVPN_E_ENROL;
        }
        if (status == OSSL_CMP_PKISTATUS_rejection || (status == -1 && text[0])) {
            snprintf(err, err_len, "%s refused by the server%s%s", op,
                     text[0] ? ": " : "", text);
            return M2MVPN_E_ENROL;
        }
        snprintf(err, err_len, "%s: the server's answer was not accepted: %s", op, why);
        return M2MVPN_E_PROTOCOL;
    }
    if (status == OSSL_CMP_PKISTATUS_rejection || status == -1) {
        if (strstr(text, "expired")) {
            snprintf(err, err_len, "enrolment token expired: ask the operator for a new token (server: %s)", text);
            return M2MVPN_E_TOKEN;
        }
        if (strstr(text, "already used")) {
            snprintf(err, err_len, "enrolment token already used by another key: ask the operator for a new "
                     "token (server: %s)", text);
            return M2MVPN_E_TOKEN;
        }
        if ((fi >= 0 && (fi & (1 << OSSL_CMP_PKIFAILUREINFO_badMessageCheck))) || strstr(text, "pbm value")) {
            snprintf(err, err_len, "enrolment token not accepted (unknown token or wrong secret): check "
                     "enrolment_token in the bootstrap%s%s", text[0] ? "; server: " : "", text);
            return M2MVPN_E_TOKEN;
        }
        if (status == OSSL_CMP_PKISTATUS_rejection) {
            snprintf(err, err_len, "enrolment rejected%s%s", text[0] ? ": " : "", text[0] ? text : " by the server");
            return M2MVPN_E_ENROL;
        }
    }
    snprintf(err, err_len, "CMP enrolment failed: %s", why);
    ERR_clear_error();
    return M2MVPN_E_PROTOCOL;
}

static int check_cert(X509 *cert, EVP_PKEY *key, char *err, size_t err_len)
{
    if (EVP_PKEY_eq(X509_get0_pubkey(cert), key) != 1) {
        snprintf(err, err_len, "the enrolled certificate is not for this device's key");
        return M2MVPN_E_CERT;
    }
    if (X509_NAME_entry_count(X509_get_subject_name(cert)) == 0) {
        snprintf(err, err_len, "the enrolled certificate has an empty subject");
        return M2MVPN_E_CERT;
    }
    return 0;
}

static int cmp_run(cmp_io *io, const char *token, EVP_PKEY *key, X509 **ret_cert, int *ret_check_after_s,
                   char *err, size_t err_len)
{
    const char *dot = strchr(token, '.');
    if (!dot || dot == token || !dot[1]) {
        snprintf(err, err_len, "enrolment token is not ID.SECRET");
        return M2MVPN_E_INVAL;
    }
    OSSL_CMP_CTX *ctx = OSSL_CMP_CTX_new(NULL, NULL);
    X509_NAME *subj = X509_NAME_new();
    if (!ctx || !subj) {
        OSSL_CMP_CTX_free(ctx);
        X509_NAME_free(subj);
        return M2MVPN_E_NOMEM;
    }
    int r = M2MVPN_E_CRYPTO;
    /* The subject is only a hint; the server names the device. */
    X509_NAME_add_entry_by_txt(subj, "CN", MBSTRING_ASC, (const unsigned char *)"m2mvpn-device", -1, -1, 0);
    OSSL_CMP_CTX_set_log_cb(ctx, NULL);
    if (!OSSL_CMP_CTX_set1_referenceValue(ctx, (const unsigned char *)token, (int)(dot - token)) ||
        !OSSL_CMP_CTX_set1_secretValue(ctx, (const unsigned char *)dot + 1, (int)strlen(dot + 1)) ||
        !EVP_PKEY_up_ref(key) || !OSSL_CMP_CTX_set0_newPkey(ctx, 1, key) ||
        !OSSL_CMP_CTX_set1_subjectName(ctx, subj) || !OSSL_CMP_CTX_set_transfer_cb(ctx, transfer) ||
        !OSSL_CMP_CTX_set_transfer_cb_arg(ctx, io) ||
        /* An error answer to a bad MAC cannot carry our MAC: read its
         * status (never a certificate) to say what went wrong. */
        !OSSL_CMP_CTX_set_option(ctx, OSSL_CMP_OPT_UNPROTECTED_ERRORS, 1) ||
        !OSSL_CMP_CTX_set_option(ctx, OSSL_CMP_OPT_TOTAL_TIMEOUT, 120)) {
        snprintf(err, err_len, "cannot set up the CMP request");
        goto out;
    }
    int check_after = 0;
    X509 *cert = OSSL_CMP_try_certreq(ctx, OSSL_CMP_IR, NULL, &check_after) == 1 ? OSSL_CMP_CTX_get0_newCert(ctx)
                                                                                : NULL;
    if (cert) {
        r = check_cert(cert, key, err, err_len);
        if (r == 0) {
            X509_up_ref(cert);
            *ret_cert = cert;
        }
    } else if (OSSL_CMP_CTX_get_status(ctx) == OSSL_CMP_PKISTATUS_waiting && !io->net_err) {
        *ret_check_after_s = check_after > 0 ? check_after : 0;
        snprintf(err, err_len, "enrolment waits for the operator's approval (m2mvpn-admin device approve)");
        r = M2MVPN_E_PENDING;
        ERR_clear_error();
    } else {
        r = classify(ctx, io, err, err_len);
    }
out:
    X509_NAME_free(subj);
    OSSL_CMP_CTX_free(ctx); /* wipes the secret it copied */
    return r;
}

int mgmt_cmp_enrol(const mgmt_tls *t, const char *token, EVP_PKEY *key, X509 **ret_cert, int *ret_check_after_s,
                   char *err, size_t err_len)
{
    cmp_io io = { .tls = t };
    *ret_check_after_s = 0;
    return cmp_run(&io, token, key, ret_cert, ret_check_after_s, err, err_len);
}

int mgmt_cmp_check_answer(const uint8_t *der, size_t len, char *err, size_t err_len)
{
    static const mgmt_tls none = { .url = "https://fuzz.invalid", .server_ca = "" };
    cmp_io io = { .tls = &none, .canned = der, .canned_len = len };
    EVP_PKEY *key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    if (!key)
        return M2MVPN_E_NOMEM;
    X509 *cert = NULL;
    int after = 0;
    int r = cmp_run(&io, "0123456789abcdef.fuzzfuzzfuzzfuzzfuzzfuzzfuzzfuzzfuzzfuzzfuz", key, &cert, &after, err,
                    err_len);
    X509_free(cert);
    EVP_PKEY_free(key);
    return r;
}

int mgmt_device_id(EVP_PKEY *key, char out[21])
{
    unsigned char *der = NULL;
    int n = i2d_PUBKEY(key, &der);
    if (n <= 0)
        return M2MVPN_E_CRYPTO;
    unsigned char md[32];
    EVP_Digest(der, (size_t)n, md, NULL, EVP_sha256(), NULL);
    OPENSSL_free(der);
    memcpy(out, "dev-", 4);
    for (int i = 0; i < 8; i++)
        snprintf(out + 4 + 2 * i, 3, "%02x", md[i]);
    return 0;
}

/* One CMP KUR: signed with (old_key, old_cert), oldCert = old_cert, the new
 * certificate for new_key. The answer must be signed by the issuer of
 * old_cert (pin_issuer); the new certificate must be for new_key, keep the
 * subject and come from that issuer. */
static int kur_run(cmp_io *io_in, EVP_PKEY *old_key, X509 *old_cert, EVP_PKEY *new_key, X509 **ret_cert,
                   char *err, size_t err_len)
{
    cmp_io io = *io_in;
    io.old_cert = old_cert;
    OSSL_CMP_CTX *ctx = OSSL_CMP_CTX_new(NULL, NULL);
    if (!ctx)
        return M2MVPN_E_NOMEM;
    int r = M2MVPN_E_CRYPTO;
    OSSL_CMP_CTX_set_log_cb(ctx, NULL);
    if (!OSSL_CMP_CTX_set1_cert(ctx, old_cert) || !OSSL_CMP_CTX_set1_pkey(ctx, old_key) ||
        !OSSL_CMP_CTX_set1_oldCert(ctx, old_cert) || !EVP_PKEY_up_ref(new_key) ||
        !OSSL_CMP_CTX_set0_newPkey(ctx, 1, new_key) || !OSSL_CMP_CTX_set_transfer_cb(ctx, transfer) ||
        !OSSL_CMP_CTX_set_transfer_cb_arg(ctx, &io) ||
        !OSSL_CMP_CTX_set_option(ctx, OSSL_CMP_OPT_IMPLICIT_CONFIRM, 1) ||
        !OSSL_CMP_CTX_set_option(ctx, OSSL_CMP_OPT_UNPROTECTED_ERRORS, 1) ||
        !OSSL_CMP_CTX_set_option(ctx, OSSL_CMP_OPT_TOTAL_TIMEOUT, 120)) {
        snprintf(err, err_len, "cannot set up the CMP key update request");
        goto out;
    }
    X509 *cert = OSSL_CMP_exec_KUR_ses(ctx);
    if (!cert) {
        r = classify(ctx, &io, err, err_len);
        goto out;
    }
    r = check_cert(cert, new_key, err, err_len);
    X509 *srv = io.issuer;
    if (r == 0 && (!srv || X509_NAME_cmp(X509_get_subject_name(cert), X509_get_subject_name(old_cert)) != 0 ||
                   X509_check_issued(srv, cert) != X509_V_OK || X509_verify(cert, X509_get0_pubkey(srv)) != 1)) {
        snprintf(err, err_len, "the renewed certificate does not keep the subject or does not come from the CA of "
                 "the current one: refused");
        r = M2MVPN_E_CERT;
    }
    if (r == 0) {
        X509_up_ref(cert);
        *ret_cert = cert;
    }
out:
    ERR_clear_error();
    X509_free(io.issuer);
    OSSL_CMP_CTX_free(ctx);
    return r;
}

int mgmt_cmp_kur(const mgmt_tls *t, EVP_PKEY *old_key, X509 *old_cert, EVP_PKEY *new_key, X509 **ret_cert,
                 char *err, size_t err_len)
{
    cmp_io io = { .tls = t };
    return kur_run(&io, old_key, old_cert, new_key, ret_cert, err, err_len);
}

int mgmt_cmp_kur_local(OSSL_CMP_SRV_CTX *srv, EVP_PKEY *old_key, X509 *old_cert, EVP_PKEY *new_key,
                       X509 **ret_cert, char *err, size_t err_len)
{
    static const mgmt_tls none = { .url = "(in-process test server)" };
    cmp_io io = { .tls = &none, .srv = srv };
    return kur_run(&io, old_key, old_cert, new_key, ret_cert, err, err_len);
}

/* The answer to a retried RR is a rejection with failInfo certRevoked of
 * this transaction (OpenSSL's client checked its transactionID and nonces
 * before reading its status) whose protection verifies with the issuer of
 * the device certificate (pin_issuer), as an accepted answer must: the
 * earlier RR, whose answer was lost, revoked it. */
static bool revoked_earlier(OSSL_CMP_CTX *ctx, const cmp_io *io)
{
    int fi = OSSL_CMP_CTX_get_failInfoCode(ctx);
    if (OSSL_CMP_CTX_get_status(ctx) != OSSL_CMP_PKISTATUS_rejection || fi < 0 ||
        !(fi & (1 << OSSL_CMP_PKIFAILUREINFO_certRevoked)))
        return false;
    /* io->issuer set: it is the srvCert, the one certificate checked */
    return io->issuer && io->last && OSSL_CMP_validate_msg(ctx, io->last) == 1;
}

/* One CMP RR (RFC 4210 5.3.9) for `cert`, signed with (key, cert), reason
 * cessationOfOperation. Success only for a positive answer the device can
 * trust: signed by the issuer of `cert` (pin_issuer; OpenSSL's client
 * verifies the signature with that one certificate and checks the
 * transactionID, the nonces and that the status is positive). An
 * unprotected answer is read only for a refusal's reason. A retry (an
 * earlier RR's answer was lost) succeeds too on revoked_earlier(). */
static int rr_run(cmp_io *io_in, EVP_PKEY *key, X509 *cert, bool retry, bool *ret_maybe_sent, char *err,
                  size_t err_len)
{
    cmp_io io = *io_in;
    io.old_cert = cert;
    io.op = "decommissioning (CMP RR)";
    io.keep_answer = true;
    bool maybe_sent = false;
    OSSL_CMP_CTX *ctx = OSSL_CMP_CTX_new(NULL, NULL);
    if (!ctx)
        return M2MVPN_E_NOMEM;
    int r = M2MVPN_E_CRYPTO;
    OSSL_CMP_CTX_set_log_cb(ctx, NULL);
    if (!OSSL_CMP_CTX_set1_cert(ctx, cert) || !OSSL_CMP_CTX_set1_pkey(ctx, key) ||
        !OSSL_CMP_CTX_set1_oldCert(ctx, cert) || !OSSL_CMP_CTX_set_transfer_cb(ctx, transfer) ||
        !OSSL_CMP_CTX_set_transfer_cb_arg(ctx, &io) ||
        !OSSL_CMP_CTX_set_option(ctx, OSSL_CMP_OPT_REVOCATION_REASON, CRL_REASON_CESSATION_OF_OPERATION) ||
        !OSSL_CMP_CTX_set_option(ctx, OSSL_CMP_OPT_UNPROTECTED_ERRORS, retry ? 0 : 1) ||
        !OSSL_CMP_CTX_set_option(ctx, OSSL_CMP_OPT_TOTAL_TIMEOUT, 120)) {
        snprintf(err, err_len, "cannot set up the CMP revocation request");
        goto out;
    }
    if (OSSL_CMP_exec_RR_ses(ctx) != 1) {
        if (retry && revoked_earlier(ctx, &io)) {
            snprintf(err, err_len, "decommissioning (CMP RR): the server says the certificate is already "
                     "revoked (by the earlier request, whose answer was lost)");
            r = 0;
            goto out;
        }
        r = classify(ctx, &io, err, err_len);
        if (r == M2MVPN_E_ENROL)
            r = M2MVPN_E_DECOMMISSION;
        /* a refusal the device could read: not revoked */
        maybe_sent = io.sent && r != M2MVPN_E_DECOMMISSION;
        goto out;
    }
    if (!io.issuer) {
        maybe_sent = true;
        /* cannot happen while OpenSSL verifies with srvCert only: said
         * here so that no future option makes another signer enough */
        snprintf(err, err_len, "decommissioning (CMP RR): the answer is not signed by the CA of the device "
                 "certificate: refused");
        r = M2MVPN_E_PROTOCOL;
        goto out;
    }
    r = 0;
out:
    ERR_clear_error();
    X509_free(io.issuer);
    OSSL_CMP_MSG_free(io.last);
    OSSL_CMP_CTX_free(ctx);
    if (ret_maybe_sent)
        *ret_maybe_sent = r < 0 && maybe_sent;
    return r;
}

int mgmt_cmp_rr(const mgmt_tls *t, EVP_PKEY *key, X509 *cert, bool retry, bool *ret_maybe_sent, char *err,
                size_t err_len)
{
    cmp_io io = { .tls = t };
    return rr_run(&io, key, cert, retry, ret_maybe_sent, err, err_len);
}

int mgmt_cmp_rr_local(OSSL_CMP_SRV_CTX *srv, EVP_PKEY *key, X509 *cert, bool retry, bool lose_answer,
                      bool *ret_maybe_sent, char *err, size_t err_len)
{
    static const mgmt_tls none = { .url = "(in-process test server)" };
    cmp_io io = { .tls = &none, .srv = srv, .lose_answer = lose_answer };
    return rr_run(&io, key, cert, retry, ret_maybe_sent, err, err_len);
}

int mgmt_cmp_check_rr_answer(const uint8_t *der, size_t len, EVP_PKEY *key, X509 *cert, char *err,
                             size_t err_len)
{
    static const mgmt_tls none = { .url = "https://fuzz.invalid", .server_ca = "" };
    cmp_io io = { .tls = &none, .canned = der, .canned_len = len };
    return rr_run(&io, key, cert, false, NULL, err, err_len);
}
