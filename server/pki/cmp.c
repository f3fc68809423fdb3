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
 * rejected); certConf is accepted; p10cr and genm answer "not supported yet".
 *
 * kur and rr (day 1..N) are signature-protected with the device's current
 * certificate instead: check_sender() takes the first of extraCerts (RFC 9483
 * 3.3), checks that it chains to the device CA, is within its validity period
 * and names a device, and pins it as the one certificate OpenSSL verifies the
 * protection with (no other certificate of the message is trusted). The
 * callbacks then ask the store whether it is still good (hooks->cert_ok) before
 * renewing (hooks->renewed) or revoking it (hooks->revoke). A kur or rr with a
 * MAC is refused: a token enrols, only a certificate renews or revokes.
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
enum { BODY_IR = 0, BODY_CR = 2, BODY_KUR = 7, BODY_RR = 11, BODY_CERTCONF = 24, BODY_POLLREQ = 25 };

struct cmp_call {
    pki_signer *ca;
    const pki_cmp_hooks *hooks;
    void *hctx;
    int cert_days;
    int64_t cert_lifetime_s;
    const char *org;
    const char *crl_url;
    char token_id[17];
    /* a signature-protected KUR/RR: the protecting certificate (first of extraCerts), and
       whether check_sender() found it to be a valid device certificate (else why not) */
    X509 *sender;
    int sender_ok;
    char sender_why[CMP_REASON_LEN];
    char sender_id[64];
    char sender_serial[80];
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
        /* five minutes back: a device clock slightly behind still accepts it (a lifetime in
           seconds: a tenth of it at most, so that the device's 2/3 point stays ahead) */
        || !X509_gmtime_adj(X509_getm_notBefore(x), call->cert_lifetime_s > 0 && call->cert_lifetime_s < 3000
                                                         ? -(long)(call->cert_lifetime_s / 10) : -300)
        || !(call->cert_lifetime_s > 0 ? X509_gmtime_adj(X509_getm_notAfter(x), (long)call->cert_lifetime_s) != NULL
                                       : X509_time_adj_ex(X509_getm_notAfter(x), days, 0, NULL) != NULL)
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
    if (call->crl_url && *call->crl_url) {
        char cdp[600];
        if ((size_t)snprintf(cdp, sizeof(cdp), "URI:%s", call->crl_url) >= sizeof(cdp)
            || !add_ext(x, &v3, NID_crl_distribution_points, cdp))
            goto fail;
    }
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

/* The store's word on the protecting certificate (after OpenSSL verified the signature with it). */
static OSSL_CMP_PKISI *sender_refused(struct cmp_call *call)
{
    char reason[CMP_REASON_LEN] = "";
    if (!call->sender || !call->hooks->cert_ok)
        return rejection(OSSL_CMP_PKIFAILUREINFO_badMessageCheck,
                         "key update and revocation need a signature with the device's certificate");
    if (!call->sender_ok)
        return rejection(OSSL_CMP_PKIFAILUREINFO_signerNotTrusted, call->sender_why);
    int ok = call->hooks->cert_ok(call->hctx, call->sender_id, call->sender_serial, reason, sizeof(reason));
    if (ok == -2) /* the store failed: not a word on the certificate */
        return rejection(OSSL_CMP_PKIFAILUREINFO_systemFailure, reason[0] ? reason : "server error");
    if (ok == -1) /* revoked: a retried RR may read this as done */
        return rejection(OSSL_CMP_PKIFAILUREINFO_certRevoked, reason[0] ? reason : "certificate revoked");
    if (ok != 0) /* refused, but not revoked */
        return rejection(OSSL_CMP_PKIFAILUREINFO_badCertId, reason[0] ? reason : "certificate not accepted");
    return NULL;
}

/* KUR: a new certificate for the device whose certificate signed the request; CN = its device id
   (the requested subject is ignored), the requested key (new or the same). The old certificate
   stays valid. The oldCertID control, if present, must name the protecting certificate. */
static OSSL_CMP_PKISI *on_kur(struct cmp_call *call, const OSSL_CRMF_MSG *crm, X509 **certOut)
{
    if (call->mac_protected || !crm)
        return rejection(OSSL_CMP_PKIFAILUREINFO_badMessageCheck,
                         "key update needs a signature with the device's current certificate, not a MAC");
    OSSL_CMP_PKISI *si = sender_refused(call);
    if (si)
        return si;
    if (!call->hooks->renewed)
        return rejection(OSSL_CMP_PKIFAILUREINFO_badRequest, "key update is not supported");
    OSSL_CRMF_CERTID *old = OSSL_CRMF_MSG_get0_regCtrl_oldCertID(crm);
    if (old && (ASN1_INTEGER_cmp(OSSL_CRMF_CERTID_get0_serialNumber(old), X509_get0_serialNumber(call->sender))
                || X509_NAME_cmp(OSSL_CRMF_CERTID_get0_issuer(old), X509_get_issuer_name(call->sender))))
        return rejection(OSSL_CMP_PKIFAILUREINFO_badCertId,
                         "oldCertID does not name the certificate that signed the request");
    unsigned char *spki = NULL;
    int spki_len = 0;
    EVP_PKEY *pub = requested_key(crm, &spki, &spki_len);
    OPENSSL_free(spki);
    if (!pub)
        return rejection(OSSL_CMP_PKIFAILUREINFO_badCertTemplate, "the request carries no usable public key");
    X509 *cert = issue_cert(call, pub, call->sender_id);
    EVP_PKEY_free(pub);
    if (!cert)
        return rejection(OSSL_CMP_PKIFAILUREINFO_systemFailure, "server error: cannot issue the certificate");
    if (call->hooks->renewed(call->hctx, call->sender_id, call->sender_serial, cert) != 0) {
        X509_free(cert);
        return rejection(OSSL_CMP_PKIFAILUREINFO_systemFailure, "server error: cannot record the certificate");
    }
    *certOut = cert;
    return OSSL_CMP_STATUSINFO_new(OSSL_CMP_PKISTATUS_accepted, 0, NULL);
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
    if (type == BODY_KUR)
        return on_kur(call, crm, certOut);
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

/* RR: a device revokes its own certificate, the one that signed the request. */
static OSSL_CMP_PKISI *on_rr(OSSL_CMP_SRV_CTX *srv, const OSSL_CMP_MSG *req, const X509_NAME *issuer,
                             const ASN1_INTEGER *serial)
{
    struct cmp_call *call = OSSL_CMP_SRV_CTX_get0_custom_ctx(srv);
    (void)req;
    if (call->mac_protected)
        return rejection(OSSL_CMP_PKIFAILUREINFO_badMessageCheck,
                         "revocation needs a signature with the certificate to revoke, not a MAC");
    OSSL_CMP_PKISI *si = sender_refused(call);
    if (si)
        return si;
    if (!call->hooks->revoke)
        return rejection(OSSL_CMP_PKIFAILUREINFO_badRequest, "revocation is not supported");
    if (!issuer || !serial || X509_NAME_cmp(issuer, X509_get_issuer_name(call->sender))
        || ASN1_INTEGER_cmp(serial, X509_get0_serialNumber(call->sender)))
        return rejection(OSSL_CMP_PKIFAILUREINFO_badCertId,
                         "a device may only revoke the certificate that signs the request");
    char reason[CMP_REASON_LEN] = "";
    if (call->hooks->revoke(call->hctx, call->sender_id, call->sender_serial, PKI_CRL_REASON_CESSATION, reason,
                            sizeof(reason)) != 0)
        return rejection(OSSL_CMP_PKIFAILUREINFO_systemFailure, reason[0] ? reason : "server error");
    return OSSL_CMP_STATUSINFO_new(OSSL_CMP_PKISTATUS_accepted, 0, NULL);
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

/* ------------------------------------------------ signature protection */

/* The first certificate of extraCerts (PKIMessage [1] EXPLICIT SEQUENCE OF), or NULL. */
static X509 *first_extra_cert(const unsigned char *der, size_t len)
{
    const unsigned char *p = der, *end = der + len, *c, *v;
    long cl, vl;
    int tag, cls, cons;
    if (der_tlv(&p, end, &tag, &cls, &cons, &c, &cl) || tag != V_ASN1_SEQUENCE)
        return NULL;
    p = c;
    const unsigned char *cend = c + cl;
    for (int i = 0; i < 2; i++) /* header, body */
        if (der_tlv(&p, cend, &tag, &cls, &cons, &v, &vl))
            return NULL;
    while (p < cend) {
        if (der_tlv(&p, cend, &tag, &cls, &cons, &v, &vl))
            return NULL;
        if (cls == V_ASN1_CONTEXT_SPECIFIC && tag == 1) {
            const unsigned char *q = v, *s;
            long sl;
            if (der_tlv(&q, v + vl, &tag, &cls, &cons, &s, &sl) || tag != V_ASN1_SEQUENCE || sl <= 0)
                return NULL;
            const unsigned char *cp = s;
            return d2i_X509(NULL, &cp, sl);
        }
    }
    return NULL;
}

static void lower_hex_serial(X509 *x, char *out, size_t cap)
{
    BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
    char *h = bn ? BN_bn2hex(bn) : NULL;
    snprintf(out, cap, "%s", h ? h : "");
    for (char *p = out; *p; p++)
        if (*p >= 'A' && *p <= 'F')
            *p = (char)(*p - 'A' + 'a');
    OPENSSL_free(h);
    BN_free(bn);
}

/* A signature-protected request: OpenSSL checks its signature with the first of extraCerts, and
   only with it (srvCert, which in a server context is the expected sender's certificate). Whether
   that certificate is one of the device CA's, valid now, naming a device, is decided here:
   call->sender_ok, else call->sender_why, which the callbacks answer with before any hook runs
   (OpenSSL's own error answer would only say "no suitable sender cert"). 0, or -1 with the
   reason when there is no certificate at all. */
static int check_sender(struct cmp_call *call, OSSL_CMP_CTX *cc, const unsigned char *der, size_t len,
                        char *reason, size_t rcap)
{
    X509 *cert = first_extra_cert(der, len);
    if (!cert || !OSSL_CMP_CTX_set1_srvCert(cc, cert)) {
        X509_free(cert);
        snprintf(reason, rcap, "the request carries no certificate (extraCerts) to check its signature with");
        return -1;
    }
    call->sender = cert;
    X509_STORE *st = X509_STORE_new();
    X509_STORE_CTX *x = X509_STORE_CTX_new();
    char cn[64] = "";
    if (!st || !x || X509_STORE_add_cert(st, pki_signer_cert(call->ca)) != 1
        || X509_STORE_CTX_init(x, st, cert, NULL) != 1) {
        snprintf(call->sender_why, sizeof(call->sender_why), "server error");
    } else if (X509_STORE_CTX_set_purpose(x, X509_PURPOSE_SSL_CLIENT), X509_verify_cert(x) != 1) {
        snprintf(call->sender_why, sizeof(call->sender_why),
                 "the signing certificate is not a valid device certificate of this server (%s)",
                 X509_verify_cert_error_string(X509_STORE_CTX_get_error(x)));
    } else if (X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, sizeof(cn)) <= 0
               || !valid_device_id(cn)) {
        snprintf(call->sender_why, sizeof(call->sender_why), "the signing certificate names no device");
    } else {
        snprintf(call->sender_id, sizeof(call->sender_id), "%s", cn);
        lower_hex_serial(cert, call->sender_serial, sizeof(call->sender_serial));
        call->sender_ok = 1;
    }
    X509_STORE_CTX_free(x);
    X509_STORE_free(st);
    ERR_clear_error();
    return 0;
}

/* A signed certConf (a KUR client that did not ask for implicit confirmation): the
   transaction is primed as for a MAC-protected one, with a one-time random secret that
   only this priming knows, then the secret is dropped again, so that the real certConf is
   checked against its pinned signing certificate and the answer is signed by the CA. */
static void prime_signed_transaction(OSSL_CMP_SRV_CTX *srv, struct cmp_call *call, const OSSL_CMP_MSG *req)
{
    OSSL_CMP_CTX *cc = OSSL_CMP_SRV_CTX_get0_cmp_ctx(srv);
    unsigned char rnd[24];
    char secret[49];
    static const char kid[] = "0000000000000000"; /* only for the synthetic request */
    if (RAND_bytes(rnd, sizeof(rnd)) != 1)
        return;
    for (size_t i = 0; i < sizeof(rnd); i++)
        snprintf(secret + 2 * i, 3, "%02x", rnd[i]);
    OPENSSL_cleanse(rnd, sizeof(rnd));
    memcpy(call->token_id, kid, sizeof(kid));
    /* the pinned certificate would also be the expected sender of the synthetic request */
    if (OSSL_CMP_CTX_set1_srvCert(cc, NULL)
        && OSSL_CMP_CTX_set1_secretValue(cc, (const unsigned char *)secret, (int)strlen(secret))
        && OSSL_CMP_CTX_set1_referenceValue(cc, (const unsigned char *)kid, 16))
        prime_transaction(srv, call, req, secret);
    OSSL_CMP_CTX_set1_secretValue(cc, NULL, 0);
    OSSL_CMP_CTX_set1_referenceValue(cc, NULL, 0);
    OSSL_CMP_CTX_set1_srvCert(cc, call->sender);
    call->token_id[0] = '\0';
    OPENSSL_cleanse(secret, sizeof(secret));
}

/* ------------------------------------------------------------------ entry */

int pki_cmp_handle(pki_signer *ca, const pki_cmp_hooks *hooks, void *ctx, int cert_days, const char *org,
                   const unsigned char *req, size_t req_len, unsigned char **resp, size_t *resp_len)
{
    pki_cmp_options o = {.cert_days = cert_days, .org = org};
    return pki_cmp_handle_opts(ca, hooks, ctx, &o, req, req_len, resp, resp_len);
}

int pki_cmp_handle_opts(pki_signer *ca, const pki_cmp_hooks *hooks, void *ctx, const pki_cmp_options *opts,
                        const unsigned char *req, size_t req_len, unsigned char **resp, size_t *resp_len)
{
    if (!resp || !resp_len || !opts)
        return -1;
    *resp = NULL;
    *resp_len = 0;
    if (!ca || !hooks || !hooks->token_secret || !hooks->enrol || !hooks->issued || !req
        || req_len == 0 || req_len > 1 << 20)
        return -1;

    struct cmp_call call = {.ca = ca, .hooks = hooks, .hctx = ctx, .cert_days = opts->cert_days, .cert_lifetime_s = opts->cert_lifetime_s, .org = opts->org,
                            .crl_url = opts->crl_url};
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
    if (type == BODY_KUR || type == BODY_RR) {
        /* The answer is signed by the device CA, a self-signed certificate OpenSSL leaves out of
           extraCerts: sent along, so a device that holds no copy of the CA can check the answer
           against the issuer of its own certificate (which the device verifies itself). */
        STACK_OF(X509) *xc = sk_X509_new_null();
        int ok = xc && sk_X509_push(xc, pki_signer_cert(ca)) > 0 && OSSL_CMP_CTX_set1_extraCertsOut(cc, xc);
        sk_X509_free(xc);
        if (!ok)
            goto out;
    }
    if (type == BODY_POLLREQ || type == BODY_CERTCONF) {
        OSSL_CMP_PKIHEADER *hdr = OSSL_CMP_MSG_get0_header(msg);
        if (!OSSL_CMP_CTX_set1_transactionID(cc, OSSL_CMP_HDR_get0_transactionID(hdr)))
            goto out;
    }

    ERR_clear_error();
    if ((type == BODY_KUR || type == BODY_RR || type == BODY_CERTCONF) && !call.mac_protected) {
        /* Raised first so that OpenSSL's error answer carries it; no srvCert then, so the
           protection check fails and no callback runs. */
        if (check_sender(&call, cc, canon, (size_t)clen, reason, sizeof(reason)) != 0)
            ERR_raise_data(ERR_LIB_CMP, CMP_R_REQUEST_NOT_ACCEPTED, "%s", reason);
        else if (type == BODY_CERTCONF && !call.sender_ok)
            ERR_raise_data(ERR_LIB_CMP, CMP_R_REQUEST_NOT_ACCEPTED, "%s", call.sender_why);
        else if (type == BODY_CERTCONF)
            prime_signed_transaction(srv, &call, msg);
    } else if (!call.token_id[0]) {
        ERR_raise_data(ERR_LIB_CMP, CMP_R_REQUEST_NOT_ACCEPTED, "%s",
                       call.mac_protected ? "unknown enrolment token (senderKID)"
                                          : "only key update, revocation and certConf may be signed: "
                                            "other requests need a MAC with an enrolment token");
        /* Without a pinned certificate OpenSSL would search the message's certificates for a
           signer and empty the error queue first, answering "no suitable sender cert" instead.
           Pinned: the CA's own, which no device signs with (and should it ever verify, the
           callbacks still refuse: no token). */
        if (!call.mac_protected && !OSSL_CMP_CTX_set1_srvCert(cc, pki_signer_cert(ca)))
            goto out;
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
    X509_free(call.sender);
    OSSL_CMP_MSG_free(rsp);
    OSSL_CMP_MSG_free(msg);
    OPENSSL_free(canon);
    OSSL_CMP_SRV_CTX_free(srv); /* frees the CMP ctx, which cleanses the secret */
    ERR_clear_error(); /* the answer carries the errors; none left for the caller */
    return rc;
}
