/* SPDX-License-Identifier: Apache-2.0 */
/*
 * libFuzzer target for the public-key parsers the gateway's data reaches
 * (lib/crypto/pki.h): DER certificates (CERT payloads), RFC 7427
 * AlgorithmIdentifiers, ECDSA DER <-> r||s, ID payloads and id strings, and
 * AUTH verification framing. The first byte picks the parser, the second is
 * a small argument (field size, ID type, AUTH method).
 */
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "crypto/pki.h"

/* A self-signed P-256 certificate with SANs, made once. */
static pki_cert *test_cert(void)
{
    static pki_cert *cert;
    if (cert)
        return cert;
    EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    X509 *x = X509_new();
    if (!k || !x)
        abort();
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_NAME *n = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)"gw.m2m.test", -1, -1, 0);
    X509_set_issuer_name(x, n);
    X509_gmtime_adj(X509_getm_notBefore(x), 0);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400);
    X509_set_pubkey(x, k);
    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, x, x, NULL, NULL, 0);
    X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, &ctx, NID_subject_alt_name,
                                            "DNS:gw.m2m.test,IP:198.51.100.1,email:gw@m2m.test");
    if (!e || !X509_add_ext(x, e, -1) || !X509_sign(x, k, EVP_sha256()))
        abort();
    X509_EXTENSION_free(e);
    unsigned char *der = NULL;
    int len = i2d_X509(x, &der);
    if (len <= 0 || pki_cert_from_der(der, (size_t)len, &cert, NULL, 0) < 0)
        abort();
    OPENSSL_free(der);
    X509_free(x);
    EVP_PKEY_free(k);
    return cert;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    pki_cert *cert = test_cert();
    if (size < 2)
        return 0;
    uint8_t sel = data[0], arg = data[1];
    data += 2;
    size -= 2;
    char err[256];
    switch (sel % 7) {
    case 0: {
        pki_sig_scheme s;
        pki_algid_parse(data, size, &s, err, sizeof err);
        break;
    }
    case 1: {
        uint8_t raw[200], der[200];
        size_t n, n2, field = arg % 3 == 0 ? 32 : arg % 3 == 1 ? 48 : 66;
        /* What converts one way must convert back. */
        if (pki_ecdsa_der_to_raw(data, size, field, raw, sizeof raw, &n) == 0 &&
            pki_ecdsa_raw_to_der(raw, n, der, sizeof der, &n2) < 0)
            abort();
        break;
    }
    case 2: {
        uint8_t der[200];
        size_t n;
        pki_ecdsa_raw_to_der(data, size, der, sizeof der, &n);
        break;
    }
    case 3: {
        pki_id id;
        char text[300];
        if (pki_id_from_payload(arg, data, size, &id, err, sizeof err) == 0) {
            pki_id_to_string(&id, text, sizeof text);
            pki_id_to_string(&id, text, 5); /* truncation */
            if (!pki_id_equal(&id, &id))
                abort();
            pki_cert_matches_id(cert, &id);
        }
        break;
    }
    case 4: {
        char *t = malloc(size + 1);
        if (!t)
            return 0;
        memcpy(t, data, size);
        t[size] = 0;
        pki_id id;
        char text[600];
        if (pki_id_from_string(t, &id, err, sizeof err) == 0)
            pki_id_to_string(&id, text, sizeof text);
        free(t);
        break;
    }
    case 5:
        pki_auth_verify(cert, arg, data, size, (const uint8_t *)"signed octets", 13, NULL, err, sizeof err);
        break;
    case 6: {
        pki_cert *c = NULL;
        if (pki_cert_from_der(data, size, &c, err, sizeof err) == 0) {
            char subj[256];
            uint8_t h[PKI_SHA1_LEN];
            unsigned bits;
            pki_cert_subject_text(c, subj, sizeof subj);
            pki_cert_spki_sha1(c, h);
            pki_cert_key_type(c, &bits);
            pki_cert_free(c);
        }
        break;
    }
    }
    return 0;
}
