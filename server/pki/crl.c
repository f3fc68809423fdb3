/* SPDX-License-Identifier: Apache-2.0 */
/* server/pki: the device CA's CRL (for the gateway's revocation check). */
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <time.h>

#include "pki_srv.h"
#include "pki_local.h"

/* An ASN1_TIME for `when` (t, or a new one), through its text: OpenSSL's
 * calls that take a time_t would read 32 bits of ours on a 32-bit target
 * whose OpenSSL keeps a 32-bit time_t (meson.build builds with 64). */
static ASN1_TIME *time_at(ASN1_TIME *t, time_t when)
{
    struct tm tm;
    char text[32];
    if (!gmtime_r(&when, &tm) || !strftime(text, sizeof(text), "%Y%m%d%H%M%SZ", &tm))
        return NULL;
    ASN1_TIME *r = t ? t : ASN1_TIME_new();
    if (r && ASN1_TIME_set_string_X509(r, text) == 1)
        return r;
    if (!t)
        ASN1_TIME_free(r);
    return NULL;
}

int pki_crl_build(pki_signer *signer, const pki_crl_entry *entries, size_t n, time_t next_update,
                  unsigned char **der, size_t *der_len, char *err, size_t errlen)
{
    if (!signer || (!entries && n) || !der || !der_len) {
        snprintf(err, errlen, "pki_crl_build: missing signer, entries or output");
        return -1;
    }
    *der = NULL;
    *der_len = 0;
    int rc = -1;
    X509_CRL *crl = X509_CRL_new();
    ASN1_TIME *t = NULL;
    X509 *ca = pki_signer_cert(signer);
    if (!crl || !X509_CRL_set_version(crl, 1 /* v2 */)
        || !X509_CRL_set_issuer_name(crl, X509_get_subject_name(ca)))
        goto fail;
    if (!(t = X509_time_adj_ex(NULL, 0, 0, NULL)) || !X509_CRL_set1_lastUpdate(crl, t))
        goto fail;
    if (!time_at(t, next_update) || !X509_CRL_set1_nextUpdate(crl, t))
        goto fail;
    for (size_t i = 0; i < n; i++) {
        if (!entries[i].serial || entries[i].serial_len == 0 || entries[i].serial_len > 20) {
            snprintf(err, errlen, "CRL entry %zu: serial missing or longer than 20 bytes", i);
            goto out;
        }
        X509_REVOKED *r = X509_REVOKED_new();
        BIGNUM *bn = BN_bin2bn(entries[i].serial, (int)entries[i].serial_len, NULL);
        ASN1_INTEGER *sn = bn ? BN_to_ASN1_INTEGER(bn, NULL) : NULL;
        ASN1_TIME *rt = time_at(NULL, entries[i].revoked_at);
        int ok = r && sn && rt && X509_REVOKED_set_serialNumber(r, sn)
                 && X509_REVOKED_set_revocationDate(r, rt);
        if (ok && entries[i].reason > 0) {
            ASN1_ENUMERATED *rc = ASN1_ENUMERATED_new();
            ok = rc && ASN1_ENUMERATED_set(rc, entries[i].reason)
                 && X509_REVOKED_add1_ext_i2d(r, NID_crl_reason, rc, 0, 0) == 1;
            ASN1_ENUMERATED_free(rc);
        }
        ok = ok && X509_CRL_add0_revoked(crl, r);
        BN_free(bn);
        ASN1_INTEGER_free(sn);
        ASN1_TIME_free(rt);
        if (!ok) {
            X509_REVOKED_free(r);
            goto fail;
        }
    }
    /* authorityKeyIdentifier from the CA certificate, as RFC 5280 asks. */
    X509V3_CTX v3;
    X509V3_set_ctx(&v3, ca, NULL, NULL, crl, 0);
    X509_EXTENSION *aki = X509V3_EXT_conf_nid(NULL, &v3, NID_authority_key_identifier, "keyid:always");
    if (aki) {
        X509_CRL_add_ext(crl, aki, -1);
        X509_EXTENSION_free(aki);
    }
    ERR_clear_error();
    if (!X509_CRL_sort(crl) || !X509_CRL_sign(crl, pki_signer_key(signer), EVP_sha256()))
        goto fail;
    int len = i2d_X509_CRL(crl, der);
    if (len <= 0)
        goto fail;
    *der_len = (size_t)len;
    rc = 0;
    goto out;
fail:
    snprintf(err, errlen, "cannot build the CRL: %s", pki_err_reason());
out:
    ERR_clear_error();
    ASN1_TIME_free(t);
    X509_CRL_free(crl);
    return rc;
}
