/* SPDX-License-Identifier: Apache-2.0 */
/*
 * libFuzzer target for the profile-bundle verifier (lib/mgmt): the first
 * byte picks what the input is. Even: the bundle's DER itself (CMS parsing
 * and the signer checks). Odd: a manifest, signed here by the pinned
 * signer, so the manifest rules and the payload decoding are reached.
 */
#include <openssl/cms.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mgmt/mgmt.h"

static EVP_PKEY *key;
static X509 *cert;

static void signer_once(void)
{
    if (cert)
        return;
    key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    cert = X509_new();
    if (!key || !cert)
        abort();
    X509_set_version(cert, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(cert), 1);
    X509_NAME *n = X509_get_subject_name(cert);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)"signer", -1, -1, 0);
    X509_set_issuer_name(cert, n);
    X509_gmtime_adj(X509_getm_notBefore(cert), 0);
    X509_gmtime_adj(X509_getm_notAfter(cert), 86400);
    X509_set_pubkey(cert, key);
    if (!X509_sign(cert, key, EVP_sha256()))
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    signer_once();
    mgmt_bundle b = { 0 };
    char err[256];
    if (!(data[0] & 1)) {
        if (mgmt_bundle_verify(data + 1, size - 1, cert, "profile", "dev-0123456789abcdef", 0, 1000, &b, err,
                               sizeof(err)) == 0)
            mgmt_bundle_clear(&b);
        return 0;
    }
    BIO *in = BIO_new_mem_buf(data + 1, (int)(size - 1));
    CMS_ContentInfo *cms = in ? CMS_sign(cert, key, NULL, in, CMS_BINARY) : NULL;
    unsigned char *der = NULL;
    int n = cms ? i2d_CMS_ContentInfo(cms, &der) : 0;
    if (n > 0 && mgmt_bundle_verify(der, (size_t)n, cert, "profile", "dev-0123456789abcdef", 0, 1000, &b, err,
                                    sizeof(err)) == 0)
        mgmt_bundle_clear(&b);
    OPENSSL_free(der);
    CMS_ContentInfo_free(cms);
    BIO_free(in);
    return 0;
}
