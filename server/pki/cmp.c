/* SPDX-License-Identifier: Apache-2.0 */
/*
 * server/pki: the CMP endpoint's message handler (RFC 4210/9480, Lightweight
 * CMP Profile RFC 9483) on OpenSSL's generic CMP server. One call handles one
 * request with a fresh server context: the HTTP layer and the database keep
 * all state, so several server instances can answer one device.
 *
 * Protection: an IR/CR carries senderKID = the token id and a MAC keyed with
 * the token's SECRET. We only pick the secret (hooks->token_secret); OpenSSL
 * checks the MAC before any of our callbacks run, and protects its answer with
 * the same secret (RFC 9483 5.1.3.1), so the device can check the answer with
 * what it already has. Errors that happen before a secret is known (unknown
 * token, expired token) are signed by the CA key: a device accepts them with
 * OSSL_CMP_OPT_UNPROTECTED_ERRORS, as RFC 9483 allows for negative answers.
 *
 * Body types: ir/cr issue; pollReq re-asks the enrol hook (still waiting, or
 * rejected); certConf is accepted; kur, p10cr, rr, genm answer "not supported
 * yet" (one case each in the switch below when they come).
 */
#include <openssl/asn1.h>
#include <openssl/bn.h>
#include <openssl/cmp.h>
#include <openssl/crmf.h>
#include <openssl/err.h>
#include <openssl/objects.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <string.h>

#include "pki_srv.h"
#include "pki_local.h"

#define CMP_REASON_LEN 256

/* PKIBody choice numbers (RFC 4210 5.1.2); OpenSSL 3.0 keeps its names private. */
enum { BODY_IR = 0, BODY_CR = 2, BODY_CERTCONF = 24, BODY_POLLREQ = 25 };

struct cmp_call {
    pki_signer *ca;
    const pki_cmp_hooks *hooks;
    void *hctx;
    int cert_days;
    const char *org;
    char token_id[17];
    int token_ok;      /* token_secret gave the secret OpenSSL checks the MAC with */
    int mac_protected; /* protectionAlg is a MAC (PBM) */
    int priming;       /* processing the synthetic request of prime_transaction() */
};

/* ------------------------------------------------------------- DER walking */

/* One TLV of [*p, end): its tag, class, constructed bit and content. 0 or -1. */
static int der_tlv(const unsigned char **p, const unsigned char *end, int *tag, int *cls, int *cons,
                   const unsigned char **content, long *clen)
{
    const unsigned char *q = *p;
    long len = 0;
    if (q >= end)
        return -1;
    int r = ASN1_get_object(&q, &len, tag, cls, (long)(end - q));
    if (r & 0x80 || r == 0x21 /* indefinite length */)
        return -1;
    *cons = (r & V_ASN1_CONSTRUCTED) != 0;
    *content = q;
    *clen = len;
    *p = q + len;
    return 0;
}

static const char MAC_PBM_OID[] = "1.2.840.113533.7.66.13";  /* id-PasswordBasedMac (RFC 4211) */
static const char MAC_PBMAC1_OID[] = "1.2.840.113549.1.5.14"; /* id-PBMAC1 (RFC 8018, RFC 9480) */

/* From the canonical DER of a PKIMessage: senderKID (if it is a token id) and whether the
   protection algorithm is a MAC. Fields per RFC 4210 5.1.1. */
static void header_fields(const unsigned char *der, size_t len, struct cmp_call *call)
{
    const unsigned char *p = der, *end = der + len, *c, *h;
    long cl, hl;
    int tag, cls, cons;
    if (der_tlv(&p, end, &tag, &cls, &cons, &c, &cl) || tag != V_ASN1_SEQUENCE)
        return;
    p = c;
    if (der_tlv(&p, c + cl, &tag, &cls, &cons, &h, &hl) || tag != V_ASN1_SEQUENCE)
        return;
    const unsigned char *hp = h, *hend = h + hl, *v;
    long vl;
    /* pvno, sender, recipient */
    for (int i = 0; i < 3; i++)
        if (der_tlv(&hp, hend, &tag, &cls, &cons, &v, &vl))
            return;
    while (hp < hend) {
        if (der_tlv(&hp, hend, &tag, &cls, &cons, &v, &vl) || cls != V_ASN1_CONTEXT_SPECIFIC)
            return;
        const unsigned char *ip = v, *iv;
        long il;
        int itag, icls, icons;
        if (tag == 1) { /* protectionAlg [1] AlgorithmIdentifier */
            const unsigned char *ap, *oid;
            long ol;
            if (der_tlv(&ip, v + vl, &itag, &icls, &icons, &iv, &il) || itag != V_ASN1_SEQUENCE)
                return;
            ap = iv;
            if (der_tlv(&ap, iv + il, &itag, &icls, &icons, &oid, &ol) || itag != V_ASN1_OBJECT)
                return;
            /* The OID's whole TLV starts where the AlgorithmIdentifier's content does. */
            const unsigned char *ostart = iv;
            ASN1_OBJECT *obj = d2i_ASN1_OBJECT(NULL, &ostart, (long)(oid + ol - iv));
            char txt[64] = "";
            if (obj)
                OBJ_obj2txt(txt, sizeof(txt), obj, 1);
            ASN1_OBJECT_free(obj);
            call->mac_protected = strcmp(txt, MAC_PBM_OID) == 0 || strcmp(txt, MAC_PBMAC1_OID) == 0;
        } else if (tag == 2) { /* senderKID [2] KeyIdentifier (OCTET STRING) */
            if (der_tlv(&ip, v + vl, &itag, &icls, &icons, &iv, &il) || itag != V_ASN1_OCTET_STRING)
                return;
            if (il != 16)
                continue;
            int hex = 1;
            for (long k = 0; k < 16; k++)
                hex &= (iv[k] >= '0' && iv[k] <= '9') || (iv[k] >= 'a' && iv[k] <= 'f');
            if (hex) {
                memcpy(call->token_id, iv, 16);
                call->token_id[16] = '\0';
            }
        }
    }
}

/* The requested key of a CertReqMsg: certTemplate publicKey [6] (RFC 4211 5), as SPKI DER.
   Returns the key (and its canonical SPKI DER in *spki, OPENSSL_free) or NULL. */
static EVP_PKEY *requested_key(const OSSL_CRMF_MSG *crm, unsigned char **spki, int *spki_len)
{
    unsigned char *der = NULL;
    int n = i2d_OSSL_CRMF_MSG(crm, &der);
    EVP_PKEY *key = NULL;
    *spki = NULL;
    if (n <= 0)
        return NULL;
    const unsigned char *p = der, *end = der + n, *c, *r, *t;
    long cl, rl, tl;
    int tag, cls, cons;
    if (der_tlv(&p, end, &tag, &cls, &cons, &c, &cl) || tag != V_ASN1_SEQUENCE) /* CertReqMsg */
        goto out;
    p = c;
    if (der_tlv(&p, c + cl, &tag, &cls, &cons, &r, &rl) || tag != V_ASN1_SEQUENCE) /* CertRequest */
        goto out;
    p = r;
    if (der_tlv(&p, r + rl, &tag, &cls, &cons, &t, &tl) || tag != V_ASN1_INTEGER) /* certReqId */
        goto out;
    if (der_tlv(&p, r + rl, &tag, &cls, &cons, &t, &tl) || tag != V_ASN1_SEQUENCE) /* certTemplate */
        goto out;
    p = t;
    while (p < t + tl) {
        const unsigned char *v;
        long vl;
        if (der_tlv(&p, t + tl, &tag, &cls, &cons, &v, &vl))
            goto out;
        if (cls != V_ASN1_CONTEXT_SPECIFIC || tag != 6 || !cons)
            continue;
        /* [6] IMPLICIT SubjectPublicKeyInfo: the same content under a SEQUENCE tag. */
        int hlen = ASN1_object_size(1, (int)vl, V_ASN1_SEQUENCE);
        if (hlen <= 0)
            goto out;
        unsigned char *buf = OPENSSL_malloc((size_t)hlen), *w = buf;
        if (!buf)
            goto out;
        ASN1_put_object(&w, 1, (int)vl, V_ASN1_SEQUENCE, V_ASN1_UNIVERSAL);
        memcpy(w, v, (size_t)vl);
        const unsigned char *kp = buf;
        key = d2i_PUBKEY(NULL, &kp, hlen);
        OPENSSL_free(buf);
        if (key && (*spki_len = i2d_PUBKEY(key, spki)) <= 0) {
            EVP_PKEY_free(key);
            key = NULL;
        }
        goto out;
    }
out:
    OPENSSL_free(der);
    return key;
}

/* -------------------------------------------------------- the certificate */

static int valid_device_id(const char *id)
{
    size_t n = strlen(id);
    if (n == 0 || n > 63)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((id[i] >= 'a' && id[i] <= 'z') || (id[i] >= '0' && id[i] <= '9') || id[i] == '-'))
            return 0;
    return id[0] != '-' && id[n - 1] != '-';
}

static int add_ext(X509 *x, X509V3_CTX *v3, int nid, const char *value)
{
    X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, v3, nid, value);
    int ok = e && X509_add_ext(x, e, -1);
    X509_EXTENSION_free(e);
    return ok;
}

/* Subject CN=device id, O=org; SAN dNSName device id; EKU clientAuth; keyUsage
   digitalSignature; random 128-bit serial; cert_days; SHA-256 by the CA. */
static X509 *issue_cert(const struct cmp_call *call, EVP_PKEY *pub, const char *device_id)
{
    X509 *ca = pki_signer_cert(call->ca);
    X509 *x = X509_new();
    BIGNUM *bn = NULL;
    unsigned char rnd[16];
    char san[80];
    int days = call->cert_days > 0 ? call->cert_days : 365;
    const char *org = call->org && *call->org ? call->org : "m2mvpn";
    if (!x || RAND_bytes(rnd, sizeof(rnd)) != 1)
        goto fail;
    rnd[0] |= 0x01; /* never a zero serial; still 128 random-ish bits of which 127 are free */
    if (!(bn = BN_bin2bn(rnd, sizeof(rnd), NULL)) || !BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)))
        goto fail;
    X509_NAME *subj = X509_get_subject_name(x);
    if (!X509_set_version(x, X509_VERSION_3) || !X509_set_issuer_name(x, X509_get_subject_name(ca))
        || !X509_NAME_add_entry_by_txt(subj, "CN", MBSTRING_UTF8, (const unsigned char *)device_id, -1, -1, 0)
        || !X509_NAME_add_entry_by_txt(subj, "O", MBSTRING_UTF8, (const unsigned char *)org, -1, -1, 0)
        /* five minutes back: a device clock slightly behind still accepts it */
        || !X509_gmtime_adj(X509_getm_notBefore(x), -300)
        || !X509_time_adj_ex(X509_getm_notAfter(x), days, 0, NULL)
        || !X509_set_pubkey(x, pub))
        goto fail;
    X509V3_CTX v3;
    X509V3_set_ctx(&v3, ca, x, NULL, NULL, 0);
    snprintf(san, sizeof(san), "DNS:%s", device_id);
    if (!add_ext(x, &v3, NID_basic_constraints, "critical,CA:FALSE")
        || !add_ext(x, &v3, NID_key_usage, "critical,digitalSignature")
        || !add_ext(x, &v3, NID_ext_key_usage, "clientAuth")
        || !add_ext(x, &v3, NID_subject_alt_name, san)
        || !add_ext(x, &v3, NID_subject_key_identifier, "hash")
        || !add_ext(x, &v3, NID_authority_key_identifier, "keyid:always"))
        goto fail;
    if (!X509_sign(x, pki_signer_key(call->ca), EVP_sha256()))
        goto fail;
    BN_free(bn);
    return x;
fail:
    BN_free(bn);
    X509_free(x);
    return NULL;
}

/* ------------------------------------------------------ server callbacks */

static OSSL_CMP_PKISI *rejection(int fail_bit, const char *text)
{
    return OSSL_CMP_STATUSINFO_new(OSSL_CMP_PKISTATUS_rejection, 1 << fail_bit, text);
}

static OSSL_CMP_PKISI *on_cert_request(OSSL_CMP_SRV_CTX *srv, const OSSL_CMP_MSG *req, int certReqId,
                                       const OSSL_CRMF_MSG *crm, const X509_REQ *p10cr, X509 **certOut,
                                       STACK_OF(X509) **chainOut, STACK_OF(X509) **caPubs)
{
    struct cmp_call *call = OSSL_CMP_SRV_CTX_get0_custom_ctx(srv);
    (void)certReqId; (void)p10cr; (void)chainOut; (void)caPubs;
    *certOut = NULL;
    if (call->priming)
        return rejection(OSSL_CMP_PKIFAILUREINFO_badRequest, "synthetic request");
    int type = OSSL_CMP_MSG_get_bodytype(req);
    if (type != BODY_IR && type != BODY_CR)
        return rejection(OSSL_CMP_PKIFAILUREINFO_badRequest, "this request type is not supported yet");
    /* OpenSSL verified the MAC with the token's secret before calling us; this is a
       second lock, should that ever change (no token, or not a MAC: nothing happens). */
    if (!call->token_ok || !call->mac_protected || !crm)
        return rejection(OSSL_CMP_PKIFAILUREINFO_badMessageCheck, "enrolment needs a MAC with an enrolment token");

    unsigned char *spki = NULL;
    int spki_len = 0;
    EVP_PKEY *pub = requested_key(crm, &spki, &spki_len);
    if (!pub)
        return rejection(OSSL_CMP_PKIFAILUREINFO_badCertTemplate, "the request carries no usable public key");

    pki_enrol_verdict verdict = PKI_ENROL_REJECT;
    char device_id[128] = "", reason[CMP_REASON_LEN] = "";
    int check_after = 0;
    OSSL_CMP_PKISI *si = NULL;
    if (call->hooks->enrol(call->hctx, call->token_id, spki, (size_t)spki_len, &verdict, device_id,
                           sizeof(device_id), &check_after, reason, sizeof(reason)) != 0) {
        si = rejection(OSSL_CMP_PKIFAILUREINFO_systemFailure, reason[0] ? reason : "server error");
        goto out;
    }
    switch (verdict) {
    case PKI_ENROL_PENDING:
        si = OSSL_CMP_STATUSINFO_new(OSSL_CMP_PKISTATUS_waiting, 0, reason[0] ? reason : "waiting for approval");
        break;
    case PKI_ENROL_REJECT:
        si = rejection(OSSL_CMP_PKIFAILUREINFO_badRequest, reason[0] ? reason : "enrolment rejected");
        break;
    case PKI_ENROL_ISSUE: {
        device_id[sizeof(device_id) - 1] = '\0';
        if (!valid_device_id(device_id)) {
            si = rejection(OSSL_CMP_PKIFAILUREINFO_systemFailure, "server error: invalid device id");
            break;
        }
        X509 *cert = issue_cert(call, pub, device_id);
        if (!cert) {
            si = rejection(OSSL_CMP_PKIFAILUREINFO_systemFailure, "server error: cannot issue the certificate");
            break;
        }
        if (call->hooks->issued(call->hctx, call->token_id, device_id, cert) != 0) {
            X509_free(cert);
            si = rejection(OSSL_CMP_PKIFAILUREINFO_systemFailure, "server error: cannot record the certificate");
            break;
        }
        *certOut = cert;
        si = OSSL_CMP_STATUSINFO_new(OSSL_CMP_PKISTATUS_accepted, 0, NULL);
        break;
    }
    }
out:
    OPENSSL_cleanse(reason, sizeof(reason));
    OPENSSL_free(spki);
    EVP_PKEY_free(pub);
    return si;
}

/* Stateless polling: the key is the one the token was bound to at the first IR, so the
   enrol hook is asked with spki NULL. Still pending: pollRep with checkAfter. Decided
   (approved or rejected): an error answer that ends the transaction; the device sends
   a new IR (same key, same token), which the hook answers with ISSUE or REJECT. */
static int on_poll(OSSL_CMP_SRV_CTX *srv, const OSSL_CMP_MSG *req, int certReqId, OSSL_CMP_MSG **certReq,
                   int64_t *check_after)
{
    struct cmp_call *call = OSSL_CMP_SRV_CTX_get0_custom_ctx(srv);
    (void)req; (void)certReqId;
    *certReq = NULL;
    if (!call->token_ok || !call->mac_protected) {
        ERR_raise_data(ERR_LIB_CMP, CMP_R_ERROR_VALIDATING_PROTECTION, "polling needs a MAC with an enrolment token");
        return 0;
    }
    pki_enrol_verdict verdict = PKI_ENROL_REJECT;
    char device_id[128] = "", reason[CMP_REASON_LEN] = "";
    int after = 0;
    int hrc = call->hooks->enrol(call->hctx, call->token_id, NULL, 0, &verdict, device_id, sizeof(device_id),
                                 &after, reason, sizeof(reason));
    ERR_clear_error(); /* the error answer reports the first error in the queue: ours below */
    if (hrc != 0) {
        ERR_raise_data(ERR_LIB_CMP, CMP_R_ERROR_PROCESSING_MESSAGE, "%s", reason[0] ? reason : "server error");
        return 0;
    }
    switch (verdict) {
    case PKI_ENROL_PENDING:
        *check_after = after > 0 ? after : 60;
        return 1;
    case PKI_ENROL_ISSUE:
        ERR_raise_data(ERR_LIB_CMP, CMP_R_ERROR_PROCESSING_MESSAGE,
                       "approved: send the initialization request again to receive the certificate");
        return 0;
    case PKI_ENROL_REJECT:
    default:
        ERR_raise_data(ERR_LIB_CMP, CMP_R_REQUEST_REJECTED_BY_SERVER, "%s",
                       reason[0] ? reason : "enrolment rejected");
        return 0;
    }
}

static int on_cert_conf(OSSL_CMP_SRV_CTX *srv, const OSSL_CMP_MSG *req, int certReqId,
                        const ASN1_OCTET_STRING *certHash, const OSSL_CMP_PKISI *si)
{
    (void)srv; (void)req; (void)certReqId; (void)certHash; (void)si;
    /* The certificate is already recorded (hooks->issued); a device that rejects it
       simply enrols again. Nothing to keep. */
    return 1;
}

static OSSL_CMP_PKISI *on_rr(OSSL_CMP_SRV_CTX *srv, const OSSL_CMP_MSG *req, const X509_NAME *issuer,
                             const ASN1_INTEGER *serial)
{
    (void)srv; (void)req; (void)issuer; (void)serial;
    return rejection(OSSL_CMP_PKIFAILUREINFO_badRequest, "revocation requests are not supported yet");
}

static int on_genm(OSSL_CMP_SRV_CTX *srv, const OSSL_CMP_MSG *req, const STACK_OF(OSSL_CMP_ITAV) *in,
                   STACK_OF(OSSL_CMP_ITAV) **out)
{
    (void)srv; (void)req; (void)in;
    *out = NULL;
    ERR_raise_data(ERR_LIB_CMP, CMP_R_UNEXPECTED_PKIBODY, "general messages are not supported yet");
    return 0;
}

static void on_error(OSSL_CMP_SRV_CTX *srv, const OSSL_CMP_MSG *req, const OSSL_CMP_PKISI *si,
                     const ASN1_INTEGER *errorCode, const OSSL_CMP_PKIFREETEXT *errorDetails)
{
    (void)srv; (void)req; (void)si; (void)errorCode; (void)errorDetails;
}

/* OpenSSL's CMP log lines would go to stderr; the server core logs what matters. */
static int quiet_log(const char *func, const char *file, int line, OSSL_CMP_severity level, const char *msg)
{
    (void)func; (void)file; (void)line; (void)level; (void)msg;
    return 1;
}

/* ------------------------------------------------- stateless transactions */

static OSSL_CMP_MSG *capture_request(OSSL_CMP_CTX *c, const OSSL_CMP_MSG *req)
{
    OSSL_CMP_MSG **out = OSSL_CMP_CTX_get_transfer_cb_arg(c);
    *out = OSSL_CMP_MSG_dup(req);
    return NULL; /* nothing is sent anywhere */
}

/* OpenSSL's server keeps a transaction's state (the certReqId of its ir, that it is still
   open) in its context and checks a pollReq or certConf against it; ours is fresh for each
   request, as the server instances keep no state. So the context is first taken through the
   start of the same transaction: a synthetic ir with the request's transactionID, MAC-
   protected with the same token secret, which is refused (raVerified proof of possession is
   not accepted, and on_cert_request refuses while priming: no hook is asked). Its refusal
   leaves the transaction open, as after a real ir. The real request is then checked
   (protection, transaction, certReqId) exactly as OpenSSL checks it in a stateful server. */
static void prime_transaction(OSSL_CMP_SRV_CTX *srv, struct cmp_call *call, const OSSL_CMP_MSG *req,
                              const char *secret)
{
    OSSL_CMP_MSG *ir = NULL;
    OSSL_CMP_CTX *c = OSSL_CMP_CTX_new(NULL, NULL);
    X509_NAME *name = X509_NAME_new();
    EVP_PKEY *pub = X509_get_pubkey(pki_signer_cert(call->ca)); /* any public key will do: never certified */
    if (!c || !name || !pub) {
        EVP_PKEY_free(pub);
        goto out;
    }
    if (!OSSL_CMP_CTX_set0_newPkey(c, 0, pub)) {
        EVP_PKEY_free(pub);
        goto out;
    }
    if (!OSSL_CMP_CTX_set_log_cb(c, quiet_log) || !OSSL_CMP_CTX_set_transfer_cb(c, capture_request)
        || !OSSL_CMP_CTX_set_transfer_cb_arg(c, &ir)
        || !OSSL_CMP_CTX_set1_secretValue(c, (const unsigned char *)secret, (int)strlen(secret))
        || !OSSL_CMP_CTX_set1_referenceValue(c, (const unsigned char *)call->token_id, 16)
        || !OSSL_CMP_CTX_set1_transactionID(c, OSSL_CMP_HDR_get0_transactionID(OSSL_CMP_MSG_get0_header(req)))
        || !X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"synthetic", -1, -1, 0)
        || !OSSL_CMP_CTX_set1_subjectName(c, name)
        || !OSSL_CMP_CTX_set_option(c, OSSL_CMP_OPT_POPO_METHOD, OSSL_CRMF_POPO_RAVERIFIED))
        goto out;
    (void)OSSL_CMP_exec_IR_ses(c);
    if (ir) {
        call->priming = 1;
        OSSL_CMP_MSG_free(OSSL_CMP_SRV_process_request(srv, ir));
        call->priming = 0;
        /* the real request answers the real previous message, not the synthetic answer */
        (void)OSSL_CMP_CTX_set1_senderNonce(OSSL_CMP_SRV_CTX_get0_cmp_ctx(srv), NULL);
    }
out:
    OSSL_CMP_MSG_free(ir);
    X509_NAME_free(name);
    OSSL_CMP_CTX_free(c);
    ERR_clear_error();
}

/* ------------------------------------------------------------------ entry */

int pki_cmp_handle(pki_signer *ca, const pki_cmp_hooks *hooks, void *ctx, int cert_days, const char *org,
                   const unsigned char *req, size_t req_len, unsigned char **resp, size_t *resp_len)
{
    if (!resp || !resp_len)
        return -1;
    *resp = NULL;
    *resp_len = 0;
    if (!ca || !hooks || !hooks->token_secret || !hooks->enrol || !hooks->issued || !req
        || req_len == 0 || req_len > 1 << 20)
        return -1;

    struct cmp_call call = {.ca = ca, .hooks = hooks, .hctx = ctx, .cert_days = cert_days, .org = org};
    OSSL_CMP_SRV_CTX *srv = NULL;
    OSSL_CMP_MSG *msg = NULL, *rsp = NULL;
    unsigned char *canon = NULL;
    char secret[128] = "", reason[CMP_REASON_LEN] = "";
    int rc = -1;

    const unsigned char *p = req;
    msg = d2i_OSSL_CMP_MSG(NULL, &p, (long)req_len);
    if (!msg || p != req + req_len)
        goto out; /* not a PKIMessage at all: nothing to answer in CMP (HTTP 400) */
    int clen = i2d_OSSL_CMP_MSG(msg, &canon);
    if (clen <= 0)
        goto out;
    header_fields(canon, (size_t)clen, &call);

    if (!(srv = OSSL_CMP_SRV_CTX_new(NULL, NULL))
        || !OSSL_CMP_SRV_CTX_init(srv, &call, on_cert_request, on_rr, on_genm, on_error, on_cert_conf, on_poll)
        || !OSSL_CMP_SRV_CTX_set_grant_implicit_confirm(srv, 1)
        || !OSSL_CMP_SRV_CTX_set_send_unprotected_errors(srv, 0)
        || !OSSL_CMP_SRV_CTX_set_accept_unprotected(srv, 0)
        || !OSSL_CMP_SRV_CTX_set_accept_raverified(srv, 0))
        goto out;
    OSSL_CMP_CTX *cc = OSSL_CMP_SRV_CTX_get0_cmp_ctx(srv);
    if (!OSSL_CMP_CTX_set_log_cb(cc, quiet_log) || !OSSL_CMP_CTX_set1_cert(cc, pki_signer_cert(ca))
        || !OSSL_CMP_CTX_set1_pkey(cc, pki_signer_key(ca)))
        goto out;
    /* Stateless: a message inside a transaction (pollReq, certConf) continues the one it names. */
    int type = OSSL_CMP_MSG_get_bodytype(msg);
    if (type == BODY_POLLREQ || type == BODY_CERTCONF) {
        OSSL_CMP_PKIHEADER *hdr = OSSL_CMP_MSG_get0_header(msg);
        if (!OSSL_CMP_CTX_set1_transactionID(cc, OSSL_CMP_HDR_get0_transactionID(hdr)))
            goto out;
    }

    ERR_clear_error();
    if (!call.token_id[0]) {
        ERR_raise_data(ERR_LIB_CMP, CMP_R_REQUEST_NOT_ACCEPTED, "%s",
                       call.mac_protected ? "unknown enrolment token (senderKID)"
                                          : "only requests MAC-protected with an enrolment token are supported yet");
    } else if (hooks->token_secret(ctx, call.token_id, secret, sizeof(secret), reason, sizeof(reason)) != 0) {
        /* Raised first so that OpenSSL's error answer carries it (it reports the first error:
           anything the hook left in the queue goes first). */
        ERR_clear_error();
        ERR_raise_data(ERR_LIB_CMP, CMP_R_REQUEST_NOT_ACCEPTED, "%s",
                       reason[0] ? reason : "unknown enrolment token");
    } else {
        secret[sizeof(secret) - 1] = '\0';
        if (!OSSL_CMP_CTX_set1_secretValue(cc, (const unsigned char *)secret, (int)strlen(secret))
            || !OSSL_CMP_CTX_set1_referenceValue(cc, (const unsigned char *)call.token_id, 16))
            goto out;
        call.token_ok = 1;
        if (call.mac_protected && (type == BODY_POLLREQ || type == BODY_CERTCONF))
            prime_transaction(srv, &call, msg, secret);
    }

    rsp = OSSL_CMP_SRV_process_request(srv, msg);
    if (!rsp)
        goto out;
    int n = i2d_OSSL_CMP_MSG(rsp, resp);
    if (n <= 0) {
        *resp = NULL;
        goto out;
    }
    *resp_len = (size_t)n;
    rc = 0;
out:
    OPENSSL_cleanse(secret, sizeof(secret));
    OSSL_CMP_MSG_free(rsp);
    OSSL_CMP_MSG_free(msg);
    OPENSSL_free(canon);
    OSSL_CMP_SRV_CTX_free(srv); /* frees the CMP ctx, which cleanses the secret */
    ERR_clear_error(); /* the answer carries the errors; none left for the caller */
    return rc;
}
