/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Test helper for test_hwcred.py: opens a hardware credential provider
 * (lib/cred) and signs with every scheme its key allows (RSA PKCS#1 v1.5
 * and PSS with SHA-256/384/512, ECDSA with SHA-256/384/512), checking each
 * signature against the provider's certificate (pki_verify_native). Prints
 * one line per scheme ("rsa-pss-sha256 ok") and exits 1 if any failed.
 *   cred_probe pkcs11 MODULE URI PIN
 *   cred_probe tpm KEY CERT TCTI [PIN]
 * or writes a CSR for a token key that has no certificate yet (keygen_csr,
 * for keys made by other tools, e.g. P-384):
 *   cred_probe csr MODULE URI PIN SUBJECT
 * or checks the provider's key as an OpenSSL EVP_PKEY (cred_evp_key): a
 * SHA-256 signature by OpenSSL's EVP_DigestSign in the default library
 * context with no provider but the default loaded, verified with the
 * certificate's key; after the provider is freed, the key kept signs no more:
 *   cred_probe evp tpm KEY CERT TCTI
 */
#include <stdio.h>
#include <string.h>

#include <m2mvpn/m2mvpn.h>

#include <stdlib.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/provider.h>

#include "cred/cred.h"
#include "cred/cred_hw.h"
#include "cred/keygen.h"
#include "crypto/pki.h"

static int evp_sign(EVP_PKEY *k, const uint8_t *data, size_t len, uint8_t *sig, size_t *sig_len)
{
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    int ok = c && EVP_DigestSignInit_ex(c, NULL, "SHA256", NULL, NULL, k, NULL) == 1 &&
             EVP_DigestSign(c, sig, sig_len, data, len) == 1;
    EVP_MD_CTX_free(c);
    ERR_clear_error();
    return ok ? 0 : -1;
}

static int evp_probe(cred_provider *p, const char *cert_file)
{
    FILE *f = fopen(cert_file, "r");
    X509 *x = f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
    if (f)
        fclose(f);
    char err[256] = "";
    EVP_PKEY *k = x ? cred_evp_key(p, err, sizeof err) : NULL;
    static const uint8_t data[] = "CMP proof of possession stand-in";
    uint8_t sig[1024];
    size_t len = sizeof sig;
    int rc = k ? evp_sign(k, data, sizeof data, sig, &len) : -1;
    EVP_MD_CTX *v = EVP_MD_CTX_new();
    int ok = rc == 0 && v && EVP_DigestVerifyInit_ex(v, NULL, "SHA256", NULL, NULL, X509_get0_pubkey(x), NULL) == 1 &&
             EVP_DigestVerify(v, sig, len, data, sizeof data) == 1;
    EVP_MD_CTX_free(v);
    printf("evp-sign %s%s\n", ok ? "ok" : "FAILED ", err);
    printf("providers %s\n", OSSL_PROVIDER_available(NULL, "tpm2") || OSSL_PROVIDER_available(NULL, "pkcs11")
                                  ? "tpm2/pkcs11 loaded" : "default only");
    cred_free(p);
    len = sizeof sig;
    int after = k ? evp_sign(k, data, sizeof data, sig, &len) : -1;
    printf("evp-after-free %s\n", after == 0 ? "SIGNED" : "refused");
    EVP_PKEY_free(k);
    X509_free(x);
    return ok && after != 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
    cred_provider *p = NULL;
    char err[512] = "";
    int rc;
    if (argc == 6 && !strcmp(argv[1], "csr")) {
        char *csr = NULL;
        rc = cred_pkcs11_open_key(argv[2], argv[3], argv[4], strlen(argv[4]), &p, err, sizeof err);
        if (rc == 0)
            rc = keygen_csr(p, argv[5], &csr, err, sizeof err);
        cred_free(p);
        if (rc < 0) {
            fprintf(stderr, "csr: %s (%d)\n", err, rc);
            return 1;
        }
        fputs(csr, stdout);
        free(csr);
        return 0;
    }
    if (argc == 6 && !strcmp(argv[1], "evp") && !strcmp(argv[2], "tpm")) {
        rc = cred_tpm_open(argv[3], argv[4], argv[5], NULL, 0, &p, err, sizeof err);
        if (rc < 0) {
            fprintf(stderr, "open: %s (%d)\n", err, rc);
            return 1;
        }
        return evp_probe(p, argv[4]);
    }
    if (argc == 5 && !strcmp(argv[1], "pkcs11"))
        rc = cred_pkcs11_open(argv[2], argv[3], argv[4], strlen(argv[4]), &p, err, sizeof err);
    else if ((argc == 5 || argc == 6) && !strcmp(argv[1], "tpm"))
        rc = cred_tpm_open(argv[2], argv[3], argv[4], argc == 6 ? argv[5] : NULL,
                           argc == 6 ? strlen(argv[5]) : 0, &p, err, sizeof err);
    else {
        fprintf(stderr, "usage: cred_probe pkcs11 MODULE URI PIN | tpm KEY CERT TCTI [PIN]\n");
        return 2;
    }
    if (rc < 0) {
        fprintf(stderr, "open: %s (%d)\n", err, rc);
        return 1;
    }
    pki_cert *const *chain;
    size_t n;
    pki_key_type kt;
    if (cred_chain(p, &chain, &n, err, sizeof err) < 0 || cred_key_info(p, &kt, NULL, err, sizeof err) < 0) {
        fprintf(stderr, "chain: %s\n", err);
        cred_free(p);
        return 1;
    }
    static const uint8_t data[] = "IKE AUTH octets stand-in";
    int failed = 0;
    for (int s = PKI_SIG_RSA_PKCS1_SHA256; s < PKI_SIG_SCHEME_COUNT; s++) {
        if (!pki_auth_scheme_fits(PKI_AUTH_DIGITAL_SIGNATURE, (pki_sig_scheme)s, kt))
            continue;
        uint8_t sig[1024];
        size_t len = 0;
        rc = cred_sign(p, (pki_sig_scheme)s, data, sizeof data, sig, sizeof sig, &len, err, sizeof err);
        if (rc == 0)
            rc = pki_verify_native(chain[0], (pki_sig_scheme)s, data, sizeof data, sig, len, err, sizeof err);
        printf("%s %s%s%s\n", pki_sig_scheme_name((pki_sig_scheme)s), rc == 0 ? "ok" : "FAILED",
               rc ? ": " : "", rc ? err : "");
        failed |= rc != 0;
    }
    cred_free(p);
    return failed;
}
