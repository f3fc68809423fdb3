/* server/pki: the management server's CA, CMP handler, bundle signing and CRL.
 * No HTTP, no database: the server core drives it through these functions and
 * answers its questions through pki_cmp_hooks. Contract: issue 14, mgmt-contract. */
#ifndef M2MVPN_PKI_SRV_H
#define M2MVPN_PKI_SRV_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>
#include <openssl/x509.h>

typedef struct pki_signer pki_signer;           /* a certificate + a private key at an abstract location */
int  pki_signer_open(pki_signer **out, const char *cert_path, const char *key_location /* "file:PATH" */,
                     char *err, size_t errlen);  /* 0 or -1 with a clear message in err */
void pki_signer_free(pki_signer *);
X509 *pki_signer_cert(const pki_signer *);      /* borrowed */

/* What the CMP handler asks the server core (which asks the store). All return 0 ok, -1 error. */
typedef enum { PKI_ENROL_ISSUE, PKI_ENROL_PENDING, PKI_ENROL_REJECT } pki_enrol_verdict;
typedef struct {
    /* Derive the MAC secret for token id; fill `secret` (NUL-terminated), return 0; -1 unknown/expired/revoked with reason. */
    int (*token_secret)(void *ctx, const char *token_id, char *secret, size_t cap, char *reason, size_t rcap);
    /* The IR was MAC-verified with that token; decide. spki = SubjectPublicKeyInfo DER of the requested key.
       On ISSUE fill device_id (the CN to certify); on PENDING fill check_after_s; on REJECT fill reason. */
    int (*enrol)(void *ctx, const char *token_id, const unsigned char *spki, size_t spki_len,
                 pki_enrol_verdict *verdict, char *device_id, size_t idcap, int *check_after_s,
                 char *reason, size_t rcap);
    /* The certificate was issued (record serial, not_after, mark token used). */
    int (*issued)(void *ctx, const char *token_id, const char *device_id, X509 *cert);

    /* ---- day 1..N (issue 15): KUR and RR, signature-protected with the device's certificate.
       NULL hooks: such requests are refused. Before any of these runs, the handler has checked that
       the protecting certificate (the first of extraCerts, RFC 9483 3.3) chains to the device CA (the
       CA signer's certificate), is within its validity period, has CN = a device id, and that the
       message's signature verifies with it. serial_hex: lowercase hex of the serial number. ---- */
    /* Is this a certificate the store issued to device_id, neither it nor the device revoked?
       0 yes; -1 no: it or the device is revoked, with the reason (sent to the device, failInfo
       certRevoked); -3 no for another reason (unknown device, not enrolled, not the device's,
       expired: failInfo badCertId, never taken for a revocation); -2 the store cannot tell (its own
       failure: failInfo systemFailure, so that no device takes it for a revocation). */
    int (*cert_ok)(void *ctx, const char *device_id, const char *serial_hex, char *reason, size_t rcap);
    /* KUR: new_cert was issued to device_id to replace old_serial_hex (which stays valid until it
       expires). Record it. 0 or -1. */
    int (*renewed)(void *ctx, const char *device_id, const char *old_serial_hex, X509 *new_cert);
    /* RR: device_id revokes its own certificate serial_hex (the one that signed the request),
       crl_reason a CRLReason code (RFC 5280 5.3.1). Mark it revoked, regenerate the CRL.
       0 or -1 with the reason. */
    int (*revoke)(void *ctx, const char *device_id, const char *serial_hex, int crl_reason,
                  char *reason, size_t rcap);
} pki_cmp_hooks;

/* Handle one DER PKIMessage, produce the DER answer (always an answer: errors become CMP error messages).
   Caller frees *resp with OPENSSL_free.
   Notes (implementation):
   - Returns -1 (no answer) only when the bytes are not a DER PKIMessage at all (or an argument is
     missing): the HTTP layer answers 400 then.
   - Stateless: each call is one message. A pollReq asks hooks->enrol with spki == NULL, meaning "the key
     this token is bound to": PENDING -> pollRep with checkAfter; REJECT -> error with the reason; ISSUE ->
     an error asking the device to send its ir again (the certificate needs the request's key), which
     the enrol hook then answers with ISSUE. certConf is accepted (the certificate is already recorded
     by hooks->issued or hooks->renewed); implicit confirmation is granted when asked.
   - Answers to a MAC-protected request are MAC-protected with the same token secret; errors before any
     secret is known (unknown or expired token) are signed with the CA key (a device accepts them with
     OSSL_CMP_OPT_UNPROTECTED_ERRORS). KUR, RR and the certConf after a KUR are signature-protected
     (the day 1..N hooks above) and answered signed with the CA key; any other request needs a MAC. */
int pki_cmp_handle(pki_signer *ca, const pki_cmp_hooks *hooks, void *ctx, int cert_days, const char *org,
                   const unsigned char *req, size_t req_len, unsigned char **resp, size_t *resp_len);

/* The same with the day 1..N options. crl_url (may be NULL or ""): the CRL distribution point
   (URI) put into every certificate issued. */
typedef struct {
    int cert_days;
    const char *org;
    const char *crl_url;
    int64_t cert_lifetime_s; /* > 0: validity in seconds instead of cert_days (tests: short-lived) */
} pki_cmp_options;
int pki_cmp_handle_opts(pki_signer *ca, const pki_cmp_hooks *hooks, void *ctx, const pki_cmp_options *opts,
                        const unsigned char *req, size_t req_len, unsigned char **resp, size_t *resp_len);

/* Sign a bundle manifest (JSON text) as CMS SignedData DER. */
int pki_bundle_sign(pki_signer *signer, const char *manifest_json, size_t len,
                    unsigned char **der, size_t *der_len, char *err, size_t errlen);
/* Build a manifest for a payload (computes sha256, base64). Returns malloc'd JSON text. */
char *pki_bundle_manifest(const char *type, const char *device_id, long long version, long long not_after,
                          const unsigned char *payload, size_t payload_len);
/* Token secret derivation (both the server core and tests use it). */
int pki_token_secret(const unsigned char *token_key, size_t key_len, const char *token_id, char out[44]);

/* ---- additions beyond the contract (extensions, nothing above changed) ---- */

/* New token id: 16 lowercase hex from RAND_bytes, NUL-terminated. 0 or -1 (no randomness). */
int pki_token_id_new(char out[17]);

/* Reference bundle check for server tests: CMS SignedData DER signed by exactly pinned_signer
   (no chain building), content returned malloc'd (NUL-terminated) in *content / *content_len.
   0 or -1 with a clear message in err. The device side has its own in lib/mgmt. */
int pki_bundle_verify(const unsigned char *der, size_t len, X509 *pinned_signer,
                      char **content, size_t *content_len, char *err, size_t errlen);

/* CRL (day 1..N): a v2 CRL signed by `signer` with SHA-256, lastUpdate now, nextUpdate = next_update. */
typedef struct {
    const unsigned char *serial;   /* big-endian magnitude, as in the certificate */
    size_t serial_len;
    time_t revoked_at;
    int reason;                    /* CRLReason (RFC 5280 5.3.1); 0 (unspecified): no reasonCode extension */
} pki_crl_entry;
#define PKI_CRL_REASON_KEY_COMPROMISE 1
#define PKI_CRL_REASON_CESSATION 5
int pki_crl_build(pki_signer *signer, const pki_crl_entry *entries, size_t n, time_t next_update,
                  unsigned char **der, size_t *der_len, char *err, size_t errlen);

#endif
