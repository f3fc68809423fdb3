/* SPDX-License-Identifier: Apache-2.0 */
/*
 * server/pki: profile bundles. A manifest (JSON: format, type, device,
 * version, not_after, sha256 and base64 of the payload) signed as CMS
 * SignedData, content attached, eContentType id-data, SHA-256, the signer's
 * certificate included. pki_bundle_verify is the server tests' reference
 * check: the pinned certificate is the one allowed signer, no chain building.
 */
#include <json-c/json.h>
#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pki_srv.h"
#include "pki_local.h"

char *pki_bundle_manifest(const char *type, const char *device_id, long long version, long long not_after,
                          const unsigned char *payload, size_t payload_len)
{
    if (!type || !device_id || (!payload && payload_len) || payload_len > (size_t)INT32_MAX / 2)
        return NULL;
    unsigned char md[SHA256_DIGEST_LENGTH];
    SHA256(payload ? payload : (const unsigned char *)"", payload_len, md);
    char hex[2 * SHA256_DIGEST_LENGTH + 1];
    for (size_t i = 0; i < sizeof(md); i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    size_t b64cap = 4 * ((payload_len + 2) / 3) + 1;
    char *b64 = malloc(b64cap);
    if (!b64)
        return NULL;
    int n = EVP_EncodeBlock((unsigned char *)b64, payload ? payload : (const unsigned char *)"", (int)payload_len);
    if (n < 0) {
        free(b64);
        return NULL;
    }
    b64[n] = '\0';

    char *out = NULL;
    json_object *o = json_object_new_object();
    if (o && !json_object_object_add(o, "format", json_object_new_int(1))
        && !json_object_object_add(o, "type", json_object_new_string(type))
        && !json_object_object_add(o, "device", json_object_new_string(device_id))
        && !json_object_object_add(o, "version", json_object_new_int64(version))
        && !json_object_object_add(o, "not_after", json_object_new_int64(not_after))
        && !json_object_object_add(o, "sha256", json_object_new_string(hex))
        && !json_object_object_add(o, "payload", json_object_new_string(b64))) {
        const char *s = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
        out = s ? strdup(s) : NULL;
    }
    json_object_put(o);
    free(b64);
    return out;
}

int pki_bundle_sign(pki_signer *signer, const char *manifest_json, size_t len,
                    unsigned char **der, size_t *der_len, char *err, size_t errlen)
{
    if (!signer || !manifest_json || !der || !der_len || len > INT32_MAX) {
        snprintf(err, errlen, "pki_bundle_sign: missing signer, manifest or output");
        return -1;
    }
    *der = NULL;
    *der_len = 0;
    int rc = -1;
    BIO *in = BIO_new_mem_buf(manifest_json, (int)len);
    CMS_ContentInfo *cms = NULL;
    if (!in)
        goto fail;
    /* PARTIAL: choose the digest before finalising. BINARY: the JSON bytes as they are. */
    cms = CMS_sign(NULL, NULL, NULL, NULL, CMS_BINARY | CMS_PARTIAL);
    if (!cms || !CMS_add1_signer(cms, pki_signer_cert(signer), pki_signer_key(signer), EVP_sha256(),
                                 CMS_BINARY))
        goto fail;
    if (!CMS_final(cms, in, NULL, CMS_BINARY))
        goto fail;
    int n = i2d_CMS_ContentInfo(cms, der);
    if (n <= 0)
        goto fail;
    *der_len = (size_t)n;
    rc = 0;
fail:
    if (rc != 0) {
        snprintf(err, errlen, "cannot sign the bundle: %s", pki_err_reason());
    }
    ERR_clear_error();
    CMS_ContentInfo_free(cms);
    BIO_free(in);
    return rc;
}

int pki_bundle_verify(const unsigned char *der, size_t len, X509 *pinned_signer,
                      char **content, size_t *content_len, char *err, size_t errlen)
{
    if (!der || !pinned_signer || !content || !content_len || len > INT32_MAX) {
        snprintf(err, errlen, "pki_bundle_verify: missing bundle, pinned signer or output");
        return -1;
    }
    *content = NULL;
    *content_len = 0;
    int rc = -1;
    const unsigned char *p = der;
    CMS_ContentInfo *cms = d2i_CMS_ContentInfo(NULL, &p, (long)len);
    STACK_OF(X509) *signers = sk_X509_new_null();
    BIO *out = BIO_new(BIO_s_mem());
    if (!signers || !out) {
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    if (!cms || p != der + len) {
        snprintf(err, errlen, "the bundle is not a DER CMS message");
        goto done;
    }
    if (OBJ_obj2nid(CMS_get0_type(cms)) != NID_pkcs7_signed
        || OBJ_obj2nid(CMS_get0_eContentType(cms)) != NID_pkcs7_data) {
        snprintf(err, errlen, "the bundle is not CMS SignedData over id-data");
        goto done;
    }
    STACK_OF(CMS_SignerInfo) *sis = CMS_get0_SignerInfos(cms);
    if (sk_CMS_SignerInfo_num(sis) != 1) {
        snprintf(err, errlen, "the bundle must have exactly one signer");
        goto done;
    }
    if (CMS_SignerInfo_cert_cmp(sk_CMS_SignerInfo_value(sis, 0), pinned_signer) != 0) {
        snprintf(err, errlen, "the bundle is not signed by the pinned bundle signer");
        goto done;
    }
    if (!sk_X509_push(signers, pinned_signer))
        goto done;
    /* NOINTERN: only the pinned certificate; NO_SIGNER_CERT_VERIFY: no chain, the pin is the trust. */
    if (CMS_verify(cms, signers, NULL, NULL, out, CMS_BINARY | CMS_NOINTERN | CMS_NO_SIGNER_CERT_VERIFY) != 1) {
        snprintf(err, errlen, "the bundle's signature does not verify with the pinned bundle signer");
        goto done;
    }
    char *data = NULL;
    long n = BIO_get_mem_data(out, &data);
    char *copy = malloc((size_t)n + 1);
    if (!copy) {
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    memcpy(copy, data, (size_t)n);
    copy[n] = '\0';
    *content = copy;
    *content_len = (size_t)n;
    rc = 0;
done:
    ERR_clear_error();
    BIO_free(out);
    sk_X509_free(signers);
    CMS_ContentInfo_free(cms);
    return rc;
}
